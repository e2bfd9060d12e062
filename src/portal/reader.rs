//! A reader per assigned request partition: it fetches records, decodes
//! them, skips what the ledger already knows, opens sealed start records,
//! checks signatures and the policy on start records, feeds its own
//! assembler, and starts a task for each completed or failed job. A
//! reader that cannot read a batch, or cannot fetch at all, says so (an
//! error reply, `/readyz`) instead of going quiet.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use crate::kafka::code;
use crate::kafka::fetcher::Fetcher;
use crate::kafka::partitioner::partition_for_key;
use crate::kafka::record_batch::{Item, Unreadable};
use crate::kafka::{KafkaError, Partition, RecordAndOffset};
use crate::portal::admin::{Metrics, Readiness};
use crate::portal::assembler::{Assembler, FailedJob, Outcome};
use crate::portal::context::{lock, Ctx};
use crate::portal::job::{spawn_job, spawn_pipelined};
use crate::portal::ledger::Progress;
use crate::portal::replies::spawn_error_reply;
use crate::portal::settings::StartFrom;
use crate::portal::spans::{shown, JobTrace};
use crate::protocol::seal::{JobKeys, OpenedStart};
use crate::protocol::trace::{self, TraceContext, TraceParent};
use crate::protocol::wire::{self, Body, Frame, JobId};
use crate::protocol::ErrorCategory;

/// How long a fetch waits on the broker for new records.
const FETCH_WAIT: Duration = Duration::from_millis(500);

/// How long a reader's fetches may keep failing at one offset before it
/// counts as stuck: `/readyz` names its partition (and an ERROR is logged)
/// until it moves again. Routine trouble heals sooner: a leader election or
/// a broker restart moves leadership within seconds, and the reader's next
/// fetch after it finds the new leader. A reader stuck this long is still
/// reported well within a client's default `--timeout` (300 s).
const STALLED_AFTER: Duration = Duration::from_secs(15);

/// Reads one request partition from `committed` (or where `PORTAL_START_FROM`
/// says) until `stop`, and says on `ready` once it has found its position.
pub(crate) async fn read_partition(
    ctx: Arc<Ctx>,
    partition: i32,
    committed: Option<i64>,
    progress: Arc<Mutex<Progress>>,
    mut stop: watch::Receiver<bool>,
    ready: tokio::sync::mpsc::Sender<i32>,
) -> Result<(), KafkaError> {
    let topic = ctx.cfg.kafka.request_topic.clone();
    let limit = ctx.cfg.kafka.timeout;
    let pc = ctx.cluster.partition(&topic, partition).await?;
    let mut offset = match (committed, ctx.cfg.start_from) {
        (Some(o), _) => o,
        (None, StartFrom::Latest) => pc.end_offset().await?,
        (None, StartFrom::Earliest) => pc.start_offset().await?,
    };
    if *stop.borrow() {
        // Told to stop while finding its place (the partition moved on at
        // once): it never served, so it must not say it does.
        return Ok(());
    }
    // bench/soak reads this line (and "stopped reading") for its pauses.
    log::info!("partition {partition} of {topic}: reading from offset {offset}");
    lock(&progress).set_start(offset);
    let _ = ready.send(partition).await;
    drop(ready);

    let mut held = ReaderJobs {
        asm: Assembler::with_budgets(ctx.cfg.limits.clone(), ctx.budgets.clone()),
        progress: Arc::clone(&progress),
    };
    let mut last_sweep = Instant::now();
    let mut failures = 0u32;
    // When fetches started failing at `offset`, and whether that is now a stall.
    let mut failing_since: Option<Instant> = None;
    let mut stalled = false;
    let mut gauges = ReaderGauges {
        metrics: Arc::clone(&ctx.metrics),
        readiness: Arc::clone(&ctx.readiness),
        partition,
        assembling: 0,
    };
    let mut fetcher = Fetcher::new(&ctx.cfg.kafka, &topic, partition);
    loop {
        let fetched = tokio::select! {
            _ = stop.changed() => break,
            r = fetcher.fetch(offset, FETCH_WAIT, limit) => r,
        };
        let fetched = match fetched {
            Ok(r) => {
                if stalled {
                    log::info!("{topic}[{partition}]: reading again from offset {offset}");
                    ctx.readiness.clear_stalled(partition);
                }
                failures = 0;
                failing_since = None;
                stalled = false;
                r
            }
            Err(KafkaError::OffsetOutOfRange { .. }) => {
                // Below the log start: records were deleted, go on from the
                // oldest kept. Past the end: the topic was truncated or
                // recreated; replaying it could repeat old calls, so skip to the end.
                let earliest = pc.start_offset().await;
                let next = match earliest {
                    Ok(earliest) if offset < earliest => Ok(earliest),
                    Ok(_) => pc.end_offset().await,
                    Err(e) => Err(e),
                };
                let next = match next {
                    Ok(n) => n,
                    Err(e) => {
                        log::warn!("{topic}[{partition}]: {e}; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                log::warn!(
                    "{topic}[{partition}]: offset {offset} is out of range; continuing at {next}"
                );
                offset = next;
                continue;
            }
            Err(e) => {
                ctx.metrics.fetch_error();
                failures = failures.saturating_add(1);
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= STALLED_AFTER {
                    report_stalled(&ctx, &pc, partition, offset, since, !stalled, &e).await;
                    stalled = true;
                }
                let wait = Duration::from_millis(200 * u64::from(failures.min(25)));
                log::log!(
                    code::log_level(e.is_startup_state(), since.elapsed()),
                    "{topic}[{partition}]: {e}; retrying in {} ms",
                    wait.as_millis()
                );
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        for item in fetched.items {
            match item {
                Item::Record(rec) => {
                    handle_record(&ctx, &mut held.asm, &progress, partition, rec, &stop).await;
                }
                Item::Unreadable(batch) => {
                    skip_unreadable(&ctx, &mut held.asm, &progress, partition, batch, &stop).await;
                }
            }
        }
        offset = fetched.next_offset;
        // A read_committed reader reads up to the last stable offset: what
        // lies past it (an open transaction and all after it) is not yet
        // readable, so it counts neither as lag nor against being caught up.
        let end = fetched.last_stable_offset;
        lock(&progress).set_next(offset);
        ctx.metrics.partition_position(partition, offset, end);
        // Judge idleness only once caught up: records still unread in Kafka
        // (say, while this reader waited for a queue slot) are not idleness.
        let caught_up = offset >= end;
        if caught_up && last_sweep.elapsed() >= Duration::from_secs(1) {
            last_sweep = Instant::now();
            for failed in held.asm.expire(Instant::now()) {
                log_failed(&failed);
                spawn_error_reply(&ctx, &progress, failed, &stop).await;
            }
        }
        ctx.metrics
            .assembling_changed(gauges.assembling, held.asm.len());
        gauges.assembling = held.asm.len();
    }
    drop(held);
    log::debug!(
        "{topic}[{partition}] stopped at offset {offset}; answered below {}",
        lock(&progress).committable()
    );
    Ok(())
}

/// The jobs a reader is assembling. However the reader ends (stopped,
/// failed, or aborted at the end of a grace period), they go with it:
/// whoever reads the partition next starts them again from their first record.
struct ReaderJobs {
    asm: Assembler,
    progress: Arc<Mutex<Progress>>,
}

impl Drop for ReaderJobs {
    fn drop(&mut self) {
        let offsets: Vec<i64> = self.asm.first_offsets().collect();
        lock(&self.progress).forget(offsets);
    }
}

/// A reader's share of the metrics (its partition's lag, its jobs being
/// assembled) and of readiness (a stall), taken out however the reader ends.
struct ReaderGauges {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    partition: i32,
    assembling: usize,
}

impl Drop for ReaderGauges {
    fn drop(&mut self) {
        self.metrics.assembling_changed(self.assembling, 0);
        self.metrics.partition_released(self.partition);
        self.readiness.clear_stalled(self.partition);
    }
}

/// A reader whose fetches keep failing at one offset says so on `/readyz`
/// (logged as an ERROR the `first` time), and its lag metric keeps
/// following the partition's end (read with ListOffsets, which does not go
/// through the failing fetch).
async fn report_stalled(
    ctx: &Ctx,
    pc: &Partition,
    partition: i32,
    offset: i64,
    since: Instant,
    first: bool,
    e: &KafkaError,
) {
    let topic = &ctx.cfg.kafka.request_topic;
    let why = format!(
        "no progress past offset {offset} in {} s: {e}",
        since.elapsed().as_secs()
    );
    if first {
        log::error!("{topic}[{partition}]: {why}");
    }
    ctx.readiness.set_stalled(partition, why);
    match pc.end_offset().await {
        Ok(end) => ctx.metrics.partition_position(partition, offset, end),
        Err(e) => log::debug!("{topic}[{partition}]: end offset: {e}"),
    }
}

/// A batch the reader could not read is logged, counted and passed over.
/// A job being assembled that had a record in it fails now, with an error
/// reply, instead of at its idle timeout; so does a job whose start record
/// was in it, when that record's reply-to header is still legible (else its
/// client waits out its timeout: nothing says where to answer).
async fn skip_unreadable(
    ctx: &Arc<Ctx>,
    asm: &mut Assembler,
    progress: &Arc<Mutex<Progress>>,
    partition: i32,
    batch: Unreadable,
    stop: &watch::Receiver<bool>,
) {
    log::error!(
        "{}[{partition}] offsets {}..={}: {}; skipped",
        ctx.cfg.kafka.request_topic,
        batch.first_offset,
        batch.last_offset,
        batch.detail
    );
    ctx.metrics
        .records_skipped(batch.reason.label(), batch.records());
    let jobs = batch
        .keys
        .iter()
        .filter_map(|k| Some((k, std::str::from_utf8(k).ok()?.parse::<JobId>().ok()?)));
    for (key, job) in jobs {
        let message = format!("a record of this request is unreadable: {}", batch.detail);
        let new = !asm.knows(&job);
        if let Some(failed) = asm.abort(job, ErrorCategory::Integrity, message.clone()) {
            spawn_error_reply(ctx, progress, failed, stop).await;
            continue;
        }
        // Its start record was in the batch: answer where its reply-to
        // header, if still legible, says, as for a start that cannot be decoded.
        let reply_to = batch
            .reply_to
            .iter()
            .filter(|(k, _)| k == key)
            .find_map(|(_, to)| wire::parse_reply_to(to));
        let answered = lock(progress).known(batch.first_offset);
        if let (true, false, Some((reply_topic, reply_partition))) = (new, answered, reply_to) {
            lock(progress).add(batch.first_offset);
            let failed = FailedJob {
                job,
                reply_topic,
                reply_partition,
                first_offset: batch.first_offset,
                category: ErrorCategory::Integrity,
                message,
                pipelined: false,
                sealed: None,
            };
            spawn_error_reply(ctx, progress, failed, stop).await;
        }
    }
}

/// Judges one record: skipped, refused, or passed to the assembler, whose
/// outcome may start a job task or an error reply.
async fn handle_record(
    ctx: &Arc<Ctx>,
    asm: &mut Assembler,
    progress: &Arc<Mutex<Progress>>,
    partition: i32,
    mut rec: RecordAndOffset,
    stop: &watch::Receiver<bool>,
) {
    let offset = rec.offset;
    let Some(value) = rec.record.value.as_deref() else {
        log::warn!("partition {partition} offset {offset}: record without a value; skipped");
        ctx.metrics.records_skipped("not_kafkasend", 1);
        return;
    };
    let (frame, payload) = match wire::decode(value) {
        Ok(x) => x,
        Err(e) => {
            log::warn!("partition {partition} offset {offset}: {e}; skipped");
            ctx.metrics.records_skipped("not_kafkasend", 1);
            // A broken record of a job being assembled dooms that job: say so now.
            let job = job_of(&rec);
            // Judged before `abort`, which marks the job finished.
            let forged = job.is_some_and(|j| may_be_forged(ctx, asm, partition, j));
            if let Some(failed) = job.and_then(|j| {
                asm.abort(
                    j,
                    ErrorCategory::Integrity,
                    format!("a record of this request is unreadable: {e}"),
                )
            }) {
                spawn_error_reply(ctx, progress, failed, stop).await;
            } else {
                answer_undecodable(ctx, forged, progress, partition, &rec, e, stop).await;
            }
            return;
        }
    };
    if rec.record.key.as_deref() != Some(frame.job.key().as_slice()) {
        log::warn!(
            "job {}: record key does not match (partition {partition} offset {offset}); skipped",
            frame.job
        );
        return;
    }
    let is_start = matches!(frame.body, Body::RequestStart(_) | Body::SealedStart(_));
    if is_start && lock(progress).known(offset) {
        // Running since an earlier generation, or answered by an earlier
        // owner of this partition: never call the API for it again.
        log::debug!("job {}: already running or answered; skipped", frame.job);
        asm.skip(frame.job);
        return;
    }
    // A sealed start is opened before anything else reads it: from here on
    // it is the clear start it seals, with the record headers it sealed
    // (signature, trace context) in place of its own, so the signature
    // check and the trace read it as they read a clear one.
    let mut sealed: Option<Arc<JobKeys>> = None;
    let frame = match &frame.body {
        Body::SealedStart(_) => {
            let topic = &ctx.cfg.kafka.request_topic;
            let Some(opened) = open_start(
                ctx, asm, progress, partition, &rec, value, &frame, payload, stop,
            )
            .await
            else {
                return;
            };
            let mut headers: std::collections::BTreeMap<String, Vec<u8>> =
                opened.record_headers.into_iter().collect();
            if let Some(to) = rec.record.headers.get(wire::REPLY_TO_HEADER) {
                headers.insert(wire::REPLY_TO_HEADER.to_string(), to.clone());
            }
            rec.record.headers = headers;
            log::debug!(
                "job {}: sealed request opened with key {} ({topic}[{partition}] offset {offset})",
                frame.job,
                opened.key
            );
            sealed = Some(Arc::new(opened.keys));
            Frame {
                job: frame.job,
                seq: frame.seq,
                body: Body::RequestStart(opened.start),
            }
        }
        Body::RequestStart(start) if ctx.cfg.require_sealed && !asm.knows(&frame.job) => {
            // A clear start under the id of a sealed job run or accepted
            // before, or off its partition, is a forgery's way to end it.
            if may_be_forged(ctx, asm, partition, frame.job) {
                log::warn!(
                    "job {}: ignored a clear start record at partition {partition} offset {offset} (PORTAL_REQUIRE_SEALED is on): an answer could end another job of that id",
                    frame.job
                );
                return;
            }
            log::warn!(
                "job {}: refused a clear request (partition {partition} offset {offset}): PORTAL_REQUIRE_SEALED is on",
                frame.job
            );
            asm.skip(frame.job);
            lock(progress).add(offset);
            let failed = FailedJob {
                job: frame.job,
                reply_topic: start.reply_topic.clone(),
                reply_partition: start.reply_partition,
                first_offset: offset,
                category: ErrorCategory::Rejected,
                message: "this portal accepts only sealed requests; seal them with `kafkasend send --seal-to PORTAL_PUBLIC_KEY_FILE`".into(),
                pipelined: false,
                sealed: None,
            };
            spawn_error_reply(ctx, progress, failed, stop).await;
            return;
        }
        _ => frame,
    };
    let Some(signed_digest) = check_signature(
        ctx,
        asm,
        progress,
        partition,
        &rec,
        &frame,
        sealed.as_ref(),
        stop,
    )
    .await
    else {
        return;
    };
    let job = frame.job;
    let received = SystemTime::now();
    let mut policy_span = None;
    let outcome = match &frame.body {
        // A start of a job already assembling or finished is the assembler's
        // to judge (a duplicate, or a conflicting repeat); only a new job
        // meets the policy, so a refusal never touches another job's records.
        Body::RequestStart(start) if !asm.knows(&frame.job) => {
            let checked = ctx
                .cfg
                .policy
                .check_as(frame.job, start, sealed.is_some())
                .and_then(|()| ctx.routes.admit(start));
            policy_span = Some((received, SystemTime::now()));
            match checked {
                Ok(()) => asm.accept_with(frame, payload, offset, Instant::now(), sealed.clone()),
                Err(refusal) => {
                    asm.skip(frame.job);
                    Outcome::Failed(FailedJob {
                        job: frame.job,
                        reply_topic: start.reply_topic.clone(),
                        reply_partition: start.reply_partition,
                        first_offset: offset,
                        category: refusal.category,
                        message: refusal.message,
                        pipelined: false,
                        sealed: sealed.clone(),
                    })
                }
            }
        }
        Body::RequestStart(_) => {
            asm.accept_with(frame, payload, offset, Instant::now(), sealed.clone())
        }
        _ => asm.accept_record(value, frame, payload, offset, Instant::now()),
    };
    // Track this offset only when it starts the job the outcome is about:
    // a repeated start fails the job that began at an earlier offset.
    let starts_job = match &outcome {
        Outcome::Pending => true,
        Outcome::Complete(c) => c.first_offset == offset,
        Outcome::Failed(f) => f.first_offset == offset,
        Outcome::Streamed(_) | Outcome::Ignored(_) | Outcome::Stray(_) => false,
    };
    if let (Some(digest), Outcome::Pending) = (signed_digest, &outcome) {
        asm.expect_digest(job, digest);
    }
    if is_start && starts_job {
        lock(progress).add(offset);
    }
    let mut outcome = outcome;
    if is_start && starts_job {
        let mut trace = JobTrace::new(trace_of(&rec, job), received);
        trace.policy = policy_span;
        match &mut outcome {
            Outcome::Pending => {
                asm.set_trace(job, trace);
            }
            Outcome::Complete(c) => c.trace = Some(Box::new(trace)),
            _ => {}
        }
    }
    match outcome {
        Outcome::Pending if is_start => {
            let how = if sealed.is_some() { " (sealed)" } else { "" };
            log::debug!(
                "job {job}: receiving a request{how} (partition {partition} offset {offset})"
            );
            if ctx.cfg.pipeline {
                pipeline(ctx, asm, progress, job, stop);
            }
        }
        Outcome::Pending => {}
        Outcome::Streamed(job) => {
            log::debug!("job {job}: request body complete and verified; its pipelined call goes on");
        }
        Outcome::Ignored(why) => log::debug!("partition {partition} offset {offset}: {why}"),
        Outcome::Stray(what) => log::warn!(
            "partition {partition} offset {offset}: ignoring job {job}: {what} (not a request, or one answered before this portal took the partition over); its later records are ignored quietly"
        ),
        Outcome::Failed(failed) => {
            log_failed(&failed);
            spawn_error_reply(ctx, progress, failed, stop).await;
        }
        Outcome::Complete(job) => spawn_job(ctx, progress, job, stop).await,
    }
}

/// Starts the call of a job just accepted while its body still arrives,
/// when it qualifies (see [`Assembler::pipeline`]) and a job queue slot is
/// free now: the reader never waits for one here. Otherwise the job is
/// called once complete, as any other.
fn pipeline(
    ctx: &Arc<Ctx>,
    asm: &mut Assembler,
    progress: &Arc<Mutex<Progress>>,
    job: JobId,
    stop: &watch::Receiver<bool>,
) {
    let Ok(queued) = Arc::clone(&ctx.queue_permits).try_acquire_owned() else {
        log::debug!("job {job}: no job queue slot free; it is called once its body is complete");
        return;
    };
    if let Some(piped) = asm.pipeline(job) {
        spawn_pipelined(ctx, progress, piped, queued, stop);
    }
}

/// Opens a sealed start record with the portal's keys. `None` when it does
/// not open: its sender is told why, in a clear `Error` (nothing can be
/// sealed to it without the job's secret), and the job's records are
/// ignored from now on; or, as for a failed signature, the failure is only
/// logged when it could be a forgery aimed at someone else's job.
#[allow(clippy::too_many_arguments)]
async fn open_start(
    ctx: &Arc<Ctx>,
    asm: &mut Assembler,
    progress: &Arc<Mutex<Progress>>,
    partition: i32,
    rec: &RecordAndOffset,
    value: &[u8],
    frame: &Frame,
    payload: &[u8],
    stop: &watch::Receiver<bool>,
) -> Option<OpenedStart> {
    let Body::SealedStart(start) = &frame.body else {
        return None;
    };
    let topic = &ctx.cfg.kafka.request_topic;
    let opened = match &ctx.cfg.sealing {
        Some(keys) => keys
            .keyring
            .open_start(value, frame, payload, topic, partition)
            .map_err(|e| (e.category(), e.to_string())),
        None => Err((
            ErrorCategory::Rejected,
            "this portal has no sealing key (PORTAL_SEALING_KEY_FILE); it cannot open sealed requests".to_string(),
        )),
    };
    let (category, why) = match opened {
        Ok(opened) => {
            ctx.metrics.sealed_job("opened");
            return Some(opened);
        }
        Err(e) => e,
    };
    ctx.metrics.sealed_job("unopened");
    if may_be_forged(ctx, asm, partition, frame.job) {
        log::warn!(
            "job {}: ignored a sealed start record at partition {partition} offset {} that does not open: {why}",
            frame.job,
            rec.offset
        );
        return None;
    }
    log::warn!(
        "job {}: refused (partition {partition} offset {}): {why}",
        frame.job,
        rec.offset
    );
    asm.skip(frame.job);
    lock(progress).add(rec.offset);
    let failed = FailedJob {
        job: frame.job,
        reply_topic: start.reply_topic.clone(),
        reply_partition: start.reply_partition,
        first_offset: rec.offset,
        category,
        message: why,
        pipelined: false,
        sealed: None,
    };
    spawn_error_reply(ctx, progress, failed, stop).await;
    None
}

/// With `PORTAL_TRUSTED_KEYS` set, checks a start record's signature before
/// the assembler sees it. `None` when the request is refused: the client is
/// told and the job's records are ignored from now on. Otherwise the body
/// digest the sender signed, if any, which the body must then match.
/// `sealed`: the job's keys, when its start opened from a sealed one.
#[allow(clippy::too_many_arguments)]
async fn check_signature(
    ctx: &Arc<Ctx>,
    asm: &mut Assembler,
    progress: &Arc<Mutex<Progress>>,
    partition: i32,
    rec: &RecordAndOffset,
    frame: &Frame,
    sealed: Option<&Arc<JobKeys>>,
    stop: &watch::Receiver<bool>,
) -> Option<Option<crate::protocol::digest::Digest>> {
    let (Some(verifier), Body::RequestStart(start)) = (&ctx.verifier, &frame.body) else {
        return Some(None);
    };
    let signature = rec.record.headers.get(wire::SIGNATURE_HEADER);
    let now = crate::protocol::signing::unix_now();
    match verifier.verify(
        frame.job,
        start,
        signature.map(Vec::as_slice),
        partition,
        rec.offset,
        now,
    ) {
        Ok(v) => {
            log::debug!("job {}: signature by {} verified", frame.job, v.key);
            Some(v.body_digest)
        }
        // Answer only a start that could be its sender's own. One for a job
        // this portal holds or accepted signed, or one off the partition its
        // key hashes to, may be a forgery aimed at someone else's job, and an
        // error reply would end that job for its client.
        Err(why) if may_be_forged(ctx, asm, partition, frame.job) => {
            let why = why.to_string();
            log::warn!(
                "job {}: ignored a start record at partition {partition} offset {} that fails its signature check: {}",
                frame.job,
                rec.offset,
                shown(sealed.is_some(), &why)
            );
            None
        }
        Err(why) => {
            let why = why.to_string();
            log::warn!(
                "job {}: refused (partition {partition} offset {}): {}",
                frame.job,
                rec.offset,
                shown(sealed.is_some(), &why)
            );
            asm.skip(frame.job);
            lock(progress).add(rec.offset);
            let failed = FailedJob {
                job: frame.job,
                reply_topic: start.reply_topic.clone(),
                reply_partition: start.reply_partition,
                first_offset: rec.offset,
                category: ErrorCategory::Rejected,
                message: why,
                pipelined: false,
                sealed: sealed.cloned(),
            };
            spawn_error_reply(ctx, progress, failed, stop).await;
            None
        }
    }
}

/// Whether a start or a record that fails its checks, naming `job`, may be
/// a forgery aimed at someone else's job, so that it is only logged: an
/// error reply would end that job for its client. It is when the job is
/// assembling here or was handed to its call (the assembler's recent
/// finished set is how the reader knows a job runs or was answered; the
/// ledger knows only offsets), when a signed start of it was accepted, or
/// when the record is off the partition its key hashes to. Only what is
/// left can be its sender's own, and is answered.
fn may_be_forged(ctx: &Ctx, asm: &Assembler, partition: i32, job: JobId) -> bool {
    forged_suspect(
        asm.knows(&job),
        ctx.verifier.as_ref().is_some_and(|v| v.has_seen(job)),
        partition,
        partition_for_key(&job.key(), ctx.request_partitions),
    )
}

/// [`may_be_forged`]'s rule on what the reader knows of the job.
fn forged_suspect(held: bool, seen_signed: bool, partition: i32, home: i32) -> bool {
    held || seen_signed || partition != home
}

/// Logs why a job failed before its call; a sealed job's message, which may
/// quote its request (a refused path, a header), is withheld.
fn log_failed(failed: &FailedJob) {
    let sealed = failed.sealed.is_some();
    let how = if sealed { " (sealed)" } else { "" };
    log::warn!(
        "job {}{how}: {} ({})",
        failed.job,
        shown(sealed, &failed.message),
        failed.category
    );
}

/// The trace context a start record's headers carry. A hostile or broken
/// one is left out with a debug line, never fatal: the job then gets a
/// trace of its own from the portal.
fn trace_of(rec: &RecordAndOffset, job: JobId) -> Option<TraceContext> {
    let headers = &rec.record.headers;
    let parent = match TraceParent::parse(headers.get(trace::TRACEPARENT)?) {
        Ok(p) => p,
        Err(e) => {
            log::debug!("job {job}: traceparent on its start record ignored: {e}");
            return None;
        }
    };
    // As the specification allows, a bad tracestate alone is dropped and the
    // trace kept.
    let state = match headers
        .get(trace::TRACESTATE)
        .map(|v| trace::parse_tracestate(v))
    {
        Some(Ok(state)) => state,
        Some(Err(e)) => {
            log::debug!("job {job}: tracestate on its start record ignored: {e}");
            None
        }
        None => None,
    };
    Some(TraceContext { parent, state })
}

/// The job a record's key names, if it names one.
fn job_of(rec: &RecordAndOffset) -> Option<JobId> {
    let key = std::str::from_utf8(rec.record.key.as_deref()?).ok()?;
    key.parse().ok()
}

/// A record we cannot read may still say who sent it and where they listen;
/// if so, and it cannot be a forgery aimed at another job (`forged`, from
/// [`may_be_forged`]), tell them instead of letting them time out.
#[allow(clippy::too_many_arguments)]
async fn answer_undecodable(
    ctx: &Arc<Ctx>,
    forged: bool,
    progress: &Arc<Mutex<Progress>>,
    partition: i32,
    rec: &RecordAndOffset,
    e: wire::WireError,
    stop: &watch::Receiver<bool>,
) {
    let Some(reply) = rec.record.headers.get(wire::REPLY_TO_HEADER) else {
        return;
    };
    let Some((reply_topic, reply_partition)) = wire::parse_reply_to(reply) else {
        return;
    };
    let Some(job) = job_of(rec) else {
        return;
    };
    if forged {
        log::warn!(
            "job {job}: not answering an unreadable record at partition {partition} offset {}: the job is held, running or signed here, or the record is off its partition",
            rec.offset
        );
        return;
    }
    lock(progress).add(rec.offset);
    spawn_error_reply(
        ctx,
        progress,
        FailedJob {
            job,
            reply_topic,
            reply_partition,
            first_offset: rec.offset,
            category: ErrorCategory::BadRequest,
            message: format!("the portal cannot read this request: {e}"),
            pipelined: false,
            sealed: None,
        },
        stop,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::forged_suspect;

    /// Only a record of a job unknown here, on its own partition, is answered.
    #[test]
    fn a_failing_record_is_answered_only_for_an_unknown_job_on_its_partition() {
        assert!(!forged_suspect(false, false, 3, 3));
        assert!(forged_suspect(true, false, 3, 3), "held or running");
        assert!(forged_suspect(false, true, 3, 3), "seen signed");
        assert!(forged_suspect(false, false, 2, 3), "off its partition");
    }
}
