//! Running one job: wait for a call permit, call the API, and stream its
//! response to the reply partition as a start record, chunks and an end
//! record, held and flushed so a small answer leaves in one produce request
//! and a slow one still reaches the client promptly.
//!
//! A pipelined job's task starts at its start record and calls the API
//! while the body arrives. Its answer is relayed only once the body is
//! verified; if the body fails first, the task answers with the failure
//! instead, and if the reader lets the job go, it answers nothing and
//! leaves the job to be read again.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http_body_util::BodyExt;
use tokio::sync::watch;

use crate::kafka::window::{ReplyWriter, Unsent};
use crate::kafka::{KafkaError, Partition};
use crate::portal::assembler::CompletedJob;
use crate::portal::context::{queue_slot, spawn_tracked, Ctx};
use crate::portal::http_dispatch::Called;
use crate::portal::ledger::Progress;
use crate::portal::pipe::{Deadline, Pipe, PipeState};
use crate::portal::replies::{reply_partition, report_error_reply, send_error, ReplyTo};
use crate::portal::spans::{record_run, shown, JobTrace, RunMarks};
use crate::portal::spool::SpooledBody;
use crate::protocol::chunker::Chunker;
use crate::protocol::wire::{
    new_attempt, Body, Frame, ResponseStart, ATTEMPT_HEADER, DROPPED_HEADERS_HEADER,
};
use crate::protocol::{ErrorCategory, Failure};

/// How long a partial response chunk waits, from its first bytes, before it
/// is sent anyway, so a slowly streaming API still reaches the client promptly.
const FLUSH_AFTER: Duration = Duration::from_millis(200);

/// How long a response's start record waits for the first body bytes, so
/// that a small response leaves in one produce request.
const START_HOLD: Duration = Duration::from_millis(20);

/// Most bytes of response headers relayed.
const MAX_RESPONSE_HEADER_BYTES: usize = 64 * 1024;

/// Response headers not relayed: they describe the hop, not the content.
const HOP_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
];

/// Runs a completed job in a task of its own, once a slot in the job queue
/// is free, and settles it in the ledger when the task ends or is cancelled.
pub(crate) async fn spawn_job(
    ctx: &Arc<Ctx>,
    progress: &Arc<Mutex<Progress>>,
    job: CompletedJob,
    stop: &watch::Receiver<bool>,
) {
    // Backpressure: wait here, not in memory, when too many jobs queue.
    let Some(queued) = queue_slot(ctx, progress, job.first_offset, stop).await else {
        return;
    };
    log::info!(
        "job {}: {} ({} bytes) assembled{}",
        job.job,
        request_line(&job),
        job.body.len(),
        sealed_note(&job)
    );
    let ctx2 = Arc::clone(ctx);
    let stop = stop.clone();
    let (id, first) = (job.job, job.first_offset);
    spawn_tracked(ctx, progress, id, first, queued, async move {
        run_job(&ctx2, job, stop).await
    });
}

/// Runs a pipelined job (its body still arriving) in a task of its own,
/// holding the job queue slot `queued` the reader took without waiting,
/// and settles it in the ledger when the task ends or is cancelled.
pub(crate) fn spawn_pipelined(
    ctx: &Arc<Ctx>,
    progress: &Arc<Mutex<Progress>>,
    job: CompletedJob,
    queued: tokio::sync::OwnedSemaphorePermit,
    stop: &watch::Receiver<bool>,
) {
    log::info!(
        "job {}: {} ({} bytes){} pipelined: calling the API while the body arrives",
        job.job,
        request_line(&job),
        job.body.len(),
        sealed_note(&job)
    );
    ctx.metrics.job_pipelined();
    let ctx2 = Arc::clone(ctx);
    let stop = stop.clone();
    let (id, first) = (job.job, job.first_offset);
    spawn_tracked(ctx, progress, id, first, queued, async move {
        run_job(&ctx2, job, stop).await
    });
}

/// The method and path, as a job's log lines name its request: a sealed
/// job's are withheld (its request's plaintext is never logged).
fn request_line(job: &CompletedJob) -> String {
    if job.sealed.is_some() {
        "a request".to_string()
    } else {
        format!("{} {}", job.start.method, job.start.path)
    }
}

/// What a job's log lines add when it is sealed.
fn sealed_note(job: &CompletedJob) -> &'static str {
    if job.sealed.is_some() {
        " (sealed)"
    } else {
        ""
    }
}

/// The pipe of a job whose body is still arriving.
fn pipe_of(job: &CompletedJob) -> Option<Arc<Pipe>> {
    match &job.body {
        SpooledBody::Piped(pipe) => Some(Arc::clone(pipe)),
        _ => None,
    }
}

/// Runs one job; returns whether it is settled (see `context::settle`).
/// A pipelined one ends as soon as its body fails or is let go.
async fn run_job(ctx: &Ctx, mut job: CompletedJob, stop: watch::Receiver<bool>) -> bool {
    let run_at = SystemTime::now();
    // Every job read from a start record has its trace; one made another
    // way starts a trace here.
    let trace = *job
        .trace
        .take()
        .unwrap_or_else(|| Box::new(JobTrace::new(None, run_at)));
    job.trace = Some(Box::new(trace.clone()));
    let pc = match reply_partition(
        ctx,
        job.job,
        &job.start.reply_topic,
        job.start.reply_partition,
    )
    .await
    {
        ReplyTo::Partition(pc) => pc,
        ReplyTo::Nowhere => return true,
        ReplyTo::Unavailable => return false,
    };
    // Drawn as the run begins: another portal (or this one, later) running
    // the job again tags its answer differently, so the client can keep
    // the two apart.
    let attempt = new_attempt();
    let Some(pipe) = pipe_of(&job) else {
        return call_and_answer(ctx, &pc, &job, &trace, &attempt, stop).await;
    };
    // Nothing of the answer goes out before the body is verified, and a
    // body verified never breaks: ending the call here leaves no reply half sent.
    tokio::select! {
        biased;
        broken = pipe.broken() => match broken {
            Some(failure) => {
                let id = job.job;
                let why = shown(job.sealed.is_some(), &failure.message);
                log::warn!("job {id}: the pipelined call is aborted: {why} ({})", failure.category);
                record_aborted(ctx, &job, &trace, run_at, why.to_string());
                let category = failure.category;
                let sent = send_error(&pc, id, 0, failure, &attempt, job.sealed.as_deref()).await;
                report_error_reply(ctx, id, sent, category)
            }
            None => {
                log::info!(
                    "job {}: let go while its body arrived; the pipelined call is aborted and the job left to be read again",
                    job.job
                );
                record_aborted(ctx, &job, &trace, run_at, "let go while its body arrived".into());
                false
            }
        },
        settled = call_and_answer(ctx, &pc, &job, &trace, &attempt, stop) => settled,
    }
}

/// Records the spans of a pipelined run aborted because its body failed or
/// was let go, with `why` as the job's error (the call's own span, if a
/// request was out, records itself as abandoned when it is dropped).
fn record_aborted(
    ctx: &Ctx,
    job: &CompletedJob,
    trace: &JobTrace,
    run_at: SystemTime,
    why: String,
) {
    let route = ctx
        .routes
        .pick(&job.start)
        .map_or("none", |(_, d)| d.route());
    let marks = RunMarks {
        run: Some(run_at),
        ..RunMarks::default()
    };
    record_run(
        trace,
        job.job,
        route,
        shown(job.sealed.is_some(), &job.start.method),
        job.body.len(),
        &marks,
        Some(why),
    );
}

/// How often a pipelined job whose body still arrives looks for a spare
/// call permit (a semaphore tells no one when one is given back).
const SPARE_POLL: Duration = Duration::from_millis(20);

/// A call permit; `None` if the portal is closing them. A job whose
/// pipelined body still arrives takes one only while another stays free:
/// the reader that brings the rest of its body may be waiting for a queue
/// slot that only jobs needing a permit can give back, so pipelined calls
/// taking the last one could stop the partition for good. Once its body is
/// verified it waits like any other job.
async fn call_permit<'a>(
    permits: &'a tokio::sync::Semaphore,
    pipe: Option<&Pipe>,
) -> Option<tokio::sync::SemaphorePermit<'a>> {
    let Some(pipe) = pipe else {
        return permits.acquire().await.ok();
    };
    loop {
        if pipe.verified_at().is_some() {
            return permits.acquire().await.ok();
        }
        if let Ok(permit) = permits.try_acquire() {
            if permits.available_permits() > 0 {
                return Some(permit);
            }
        }
        tokio::select! {
            () = pipe.verified() => {}
            () = tokio::time::sleep(SPARE_POLL) => {}
        }
    }
}

/// The job's route's call permit, then the portal's: a job waiting for its
/// route's slot holds none of the portal's, so a route at its limit with a
/// backlog does not starve the others. Every job holding a portal permit
/// holds its route's, so it is calling (or its body arriving) and will
/// give both back. `None` if the portal is closing them.
async fn call_permits<'a>(
    ctx: &'a Ctx,
    job: &CompletedJob,
    pipe: Option<&Pipe>,
) -> Option<(
    Option<tokio::sync::SemaphorePermit<'a>>,
    tokio::sync::SemaphorePermit<'a>,
)> {
    let route = match ctx.routes.slots(&job.start) {
        Some(slots) => Some(call_permit(slots, pipe).await?),
        None => None,
    };
    let portal = call_permit(&ctx.call_permits, pipe).await?;
    Some((route, portal))
}

/// Calls the API for `job` once a call permit is free and relays its
/// answer to `pc`, or an error; returns whether the job is settled.
async fn call_and_answer(
    ctx: &Ctx,
    pc: &Partition,
    job: &CompletedJob,
    trace: &JobTrace,
    attempt: &[u8],
    mut stop: watch::Receiver<bool>,
) -> bool {
    // A job whose partition was revoked before it got a call slot is left
    // to the partition's next reader instead of calling the API from here.
    let pipe = pipe_of(job);
    let permit = tokio::select! {
        biased;
        _ = stop.wait_for(|stopped| *stopped) => return false,
        p = call_permits(ctx, job, pipe.as_deref()) => match p {
            Some(p) => p,
            None => return false,
        },
    };
    let started = Instant::now();
    let now = SystemTime::now();
    let mut marks = RunMarks {
        run: Some(now),
        ..RunMarks::default()
    };
    let id = job.job;
    let how = match (pipe_of(job).is_some(), job.sealed.is_some()) {
        (true, true) => " (pipelined, sealed)",
        (true, false) => " (pipelined)",
        (false, true) => " (sealed)",
        (false, false) => "",
    };
    let trace_id = trace.job.trace_id;
    log::debug!(
        "job {id}: answering as attempt {} (trace_id={trace_id} job span {}, call span {}, parent {})",
        String::from_utf8_lossy(attempt),
        trace.job.parent_id,
        trace.call,
        trace.parent.map_or_else(|| "none".into(), |p| p.to_string()),
    );
    ctx.metrics.job_started(job.body.len());
    let calling = ctx.metrics.in_flight();
    let route = ctx
        .routes
        .pick(&job.start)
        .map_or("none", |(_, d)| d.route());
    let result = answer(ctx, pc, job, trace, attempt, &mut marks).await;
    let sealed = job.sealed.is_some();
    let error = match &result {
        Ok(_) => None,
        Err(AnswerError::Failed { error, .. }) => Some(shown(sealed, &error.message).to_string()),
        Err(AnswerError::Kafka { error, .. }) => Some(error.to_string()),
    };
    record_run(
        trace,
        id,
        route,
        shown(sealed, &job.start.method),
        job.body.len(),
        &marks,
        error,
    );
    let settled = match result {
        Ok((status, bytes)) => {
            log::info!(
                "job {id}: {} -> {status}, {bytes} bytes back in {:.2} s{how} (route {route}) trace_id={trace_id}",
                request_line(job),
                started.elapsed().as_secs_f64()
            );
            ctx.metrics.job_completed(bytes, started.elapsed());
            ctx.metrics.route_job(route, "completed");
            true
        }
        Err(AnswerError::Failed { seq, error }) => {
            log::warn!(
                "job {id}: {} ({}){how} (route {route}) trace_id={trace_id}",
                shown(sealed, &error.message),
                error.category
            );
            ctx.metrics.route_job(route, "failed");
            ctx.metrics.job_took(started.elapsed());
            let category = error.category;
            let info = Failure {
                category,
                message: error.message,
            };
            let sent = send_error(pc, id, seq, info, attempt, job.sealed.as_deref()).await;
            report_error_reply(ctx, id, sent, category)
        }
        Err(AnswerError::Kafka { seq, error }) => {
            log::error!("job {id}: could not send the response: {error}");
            ctx.metrics.produce_error();
            ctx.metrics.route_job(route, "failed");
            ctx.metrics.job_took(started.elapsed());
            // An error record is small; it may get through where a chunk did not.
            let category = ErrorCategory::Internal;
            let info = Failure {
                category,
                message: format!("the portal could not send the response: {error}"),
            };
            let sent = send_error(pc, id, seq, info, attempt, job.sealed.as_deref()).await;
            report_error_reply(ctx, id, sent, category)
        }
    };
    drop(calling);
    drop(permit);
    settled
}

/// Why a job's answer did not reach its end.
enum AnswerError {
    /// The job failed; `seq` is the next sequence number of the reply.
    Failed { seq: u32, error: Failure },
    /// The reply record numbered `seq` could not be produced.
    Kafka { seq: u32, error: KafkaError },
}

impl From<Unsent> for AnswerError {
    fn from(Unsent { seq, error }: Unsent) -> Self {
        Self::Kafka { seq, error }
    }
}

/// Calls the API and streams its response, every record tagged with
/// `attempt`; returns status and body bytes.
async fn answer(
    ctx: &Ctx,
    pc: &Partition,
    job: &CompletedJob,
    trace: &JobTrace,
    attempt: &[u8],
    marks: &mut RunMarks,
) -> Result<(u16, u64), AnswerError> {
    // One deadline for the whole call, headers and body alike; for a
    // pipelined body it counts from the later of now and the body's
    // verification, so a long upload through Kafka does not eat into the
    // API's time.
    let pipe = pipe_of(job);
    let (_, dispatcher) = ctx
        .routes
        .pick(&job.start)
        .map_err(|error| AnswerError::Failed { seq: 0, error })?;
    let deadline = Deadline::new(dispatcher.timeout(), pipe.clone());
    // The slot stays taken until the answer is relayed: a call streaming
    // its answer still counts toward the API's concurrency.
    let Called {
        response: resp,
        slot: _slot,
    } = match dispatcher.call(job, &deadline).await {
        Ok(called) => called,
        // The call broke because its body did: that failure is the answer
        // (`run_job`), not the broken connection it caused.
        Err(_) if pipe.as_ref().is_some_and(|p| p.is_broken()) => std::future::pending().await,
        Err(error) => return Err(AnswerError::Failed { seq: 0, error }),
    };
    // An API may answer before it has the whole body (refusing it early,
    // say). That answer is relayed only once the body is verified: had the
    // body failed, the client gets the failure instead (`run_job`), never
    // an answer to a request it did not send.
    if let Some(pipe) = &pipe {
        if pipe.ended().await != PipeState::Verified {
            std::future::pending::<()>().await;
        }
    }
    let deadline = deadline.bound();
    let status = resp.status().as_u16();
    marks.head = Some(SystemTime::now());
    marks.status = Some(status);
    // Response headers travel in one frame header; keep them well inside
    // wire::MAX_HEADER_BYTES and say what was dropped.
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut header_bytes = 0usize;
    for (n, v) in resp.headers() {
        if HOP_HEADERS.contains(&n.as_str()) {
            continue;
        }
        let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
        header_bytes += n.as_str().len() + value.len();
        if header_bytes > MAX_RESPONSE_HEADER_BYTES {
            log::warn!(
                "job {}: response headers exceed {MAX_RESPONSE_HEADER_BYTES} bytes; header {n} and later ones dropped",
                job.job
            );
            break;
        }
        headers.push((n.as_str().to_string(), value));
    }
    let body_len = resp
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let start = Frame {
        job: job.job,
        seq: 0,
        body: Body::ResponseStart(ResponseStart {
            status,
            headers,
            body_len,
            digest: job.start.digest,
        }),
    };
    let chunk_size = ctx.cfg.kafka.chunk_size;
    let mut out = ReplyWriter::new(pc, chunk_size, vec![(ATTEMPT_HEADER, attempt.to_vec())])
        .compressing(ctx.cfg.compression)
        .digesting(job.start.digest)
        .sealing(job.sealed.clone(), attempt);
    // Names only: values the caller sent may be credentials.
    let dropped = dispatcher.header_plan(&job.start).dropped_line();
    let mut record_headers: Vec<(&str, Vec<u8>)> = dropped
        .map(|line| (DROPPED_HEADERS_HEADER, line.into_bytes()))
        .into_iter()
        .collect();
    record_headers.extend(trace.job_context().headers());
    out.push_with_headers(&start, &[], &record_headers).await?;

    let mut chunker = Chunker::new(job.job, 1, job.start.digest);
    let mut buf: Vec<u8> = Vec::with_capacity(chunk_size);
    let mut body = resp.into_body();
    // When what waits (held records, a partial chunk) must go out: set when
    // something starts waiting, so a trickle of small body frames cannot
    // postpone it.
    let mut flush_at = Some(tokio::time::Instant::now() + START_HOLD);
    loop {
        if flush_at.is_none() && !buf.is_empty() {
            flush_at = Some(tokio::time::Instant::now() + FLUSH_AFTER);
        }
        let wait = flush_at.map_or(deadline, |at| at.min(deadline));
        let next = match tokio::time::timeout_at(wait, body.frame()).await {
            Ok(n) => n,
            Err(_) if flush_at.is_some() && tokio::time::Instant::now() < deadline => {
                if !buf.is_empty() {
                    let chunk = chunker.chunk(std::mem::take(&mut buf));
                    out.push(&chunk.frame, &chunk.payload).await?;
                }
                out.flush().await?;
                flush_at = None;
                continue;
            }
            Err(_) => {
                out.flush().await?;
                return Err(AnswerError::Failed {
                    seq: chunker.next_seq(),
                    error: Failure {
                        category: ErrorCategory::UpstreamTimeout,
                        message: format!(
                            "the API did not finish its response within {} s ({})",
                            dispatcher.timeout().as_secs(),
                            dispatcher.timeout_setting()
                        ),
                    },
                });
            }
        };
        match next {
            None => break,
            Some(Err(e)) => {
                out.flush().await?;
                return Err(AnswerError::Failed {
                    seq: chunker.next_seq(),
                    error: Failure {
                        category: ErrorCategory::UpstreamUnreachable,
                        message: format!(
                            "the API's response broke off after {} bytes: {}",
                            chunker.bytes() + buf.len() as u64,
                            crate::util::error_chain(&e)
                        ),
                    },
                });
            }
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let mut data = &data[..];
                while !data.is_empty() {
                    let take = (chunk_size - buf.len()).min(data.len());
                    buf.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if buf.len() == chunk_size {
                        let chunk = chunker
                            .chunk(std::mem::replace(&mut buf, Vec::with_capacity(chunk_size)));
                        out.push(&chunk.frame, &chunk.payload).await?;
                        out.flush().await?;
                        flush_at = None;
                    }
                }
            }
        }
    }
    if !buf.is_empty() {
        let chunk = chunker.chunk(buf);
        out.push(&chunk.frame, &chunk.payload).await?;
    }
    let total = chunker.bytes();
    let end = chunker.finish();
    out.push(&end, &[]).await?;
    out.flush().await?;
    log::debug!("job {}: answer sent, {}", job.job, out.compression());
    marks.bytes_back = total;
    Ok((status, total))
}
