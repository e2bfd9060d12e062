//! `kafkasend send`: one HTTP request through Kafka, curl-like; and
//! `kafkasend wait`, which picks up the answer to one sent earlier.
//!
//! # How a send runs
//!
//! 1. [`request`] checks the [`Request`] and prepares it: endpoint, method,
//!    headers (those no portal forwards are left out, and named in a
//!    [`Notice::DroppedHeaders`]), the body's sources (a FILE, `-d` data,
//!    or the files and fields of a `-F` or `--multipart` form). The output is opened next, so a bad request, an
//!    unreadable body or an output that cannot be written fails before the
//!    broker is asked anything. A signed request's body is read once here for
//!    its digest (`--digest`).
//! 2. [`upload`] connects ([`Link`]), picks the request and reply partitions
//!    from the job id, and notes where the reply partition ends *before*
//!    producing anything, so even an instant answer lands after that offset.
//!    A reader task follows the reply partition from there while the start
//!    record, the body's chunks (a few produce calls in flight, read from
//!    disk as they go) and the end record are produced. A portal that
//!    refuses the job says so during the upload, which then stops.
//! 3. [`reply`] receives the answer in record order: the status (with the
//!    request headers the portal did not forward, named in a
//!    [`Notice::PortalDroppedHeaders`]), then each
//!    chunk checked and streamed to its destination, then the end record,
//!    which must agree on length and digest before a file output is renamed
//!    into place. Two portals may answer one job at once: [`attempts`]
//!    picks one answer and [`reply`] reads another again from its start if
//!    that one fails or stalls. The wait ends `--timeout` after the last
//!    record of the job.
//!
//! [`wait`] skips the first two steps: the job id names the reply partition
//! and, being a ULID, the time from which to read it.
//!
//! Nothing here prints lines or watches signals (only the progress bars
//! draw on stderr): what to show arrives as a
//! [`Show`], and an interrupt as a future that resolves with the signal's
//! name; whatever is under way is dropped then (and with it a part file).

mod attempts;
mod decode;
mod destination;
mod head;
mod job_key;
mod landed;
pub(crate) mod output;
mod reply;
mod request;
mod sealed;
mod types;
pub mod ui;
mod upload;

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

pub(crate) use crate::send::head::status_line;
pub use crate::send::types::{
    Notice, Outcome, Request, ResponseOptions, SendError, Settings, Show, Verbose,
};
pub(crate) use crate::send::types::{Pickup, EXIT_HTTP_ERROR};
pub use crate::send::upload::Link;

use crate::protocol::trace::SpanId;
use crate::protocol::wire::JobId;
use crate::send::destination::Destination;
use crate::send::reply::follow_job;
use crate::send::request::{body_digest, prepare, replayable, Prepared};
use crate::send::sealed::Reading;
use crate::send::types::usage;
use crate::send::types::SendTrace;
use crate::send::ui::Report;
use crate::send::upload::transmit;
use crate::telemetry::{self, Kind, Span};

/// Runs one send; `report` collects what `--json` prints, also on failure.
/// `interrupt` resolves, with the signal's name, when the user asks to stop;
/// the work under way is dropped then (and with it a part file).
pub(crate) async fn run(
    request: &Request,
    cfg: &Settings,
    report: &mut Report,
    interrupt: impl Future<Output = &'static str>,
) -> Result<Outcome, SendError> {
    send_over(None, request, cfg, report, interrupt).await
}

/// Sends one request over an open [`Link`], as [`run`] does: for programs
/// that send many requests from one process and would rather not connect to
/// Kafka for each.
pub async fn run_on(
    link: &Link,
    request: &Request,
    cfg: &Settings,
    report: &mut Report,
    interrupt: impl Future<Output = &'static str>,
) -> Result<Outcome, SendError> {
    send_over(Some(link), request, cfg, report, interrupt).await
}

/// Picks up the answer to a job sent earlier with `--no-wait`. The job id
/// says which reply partition holds it and, being a ULID, when it was made,
/// so reading starts at the first record stamped shortly before that.
pub(crate) async fn wait(
    pickup: &Pickup,
    cfg: &Settings,
    report: &mut Report,
    interrupt: impl Future<Output = &'static str>,
) -> Result<Outcome, SendError> {
    let job: JobId = pickup.job.trim().parse().map_err(|why| {
        usage(format!(
            "'{}' is not a job id: {why}; use the id `send --no-wait` printed",
            pickup.job.escape_debug()
        ))
    })?;
    report.job = Some(job);
    let sink = Destination::open(pickup.output.as_deref(), &pickup.response)?;
    let reading = wait_reading(job, cfg)?;
    if let Reading::Sealed(_) = reading {
        pickup.show.info(|| {
            format!("job {job}: its secret is in its job key file; the answer is opened with it")
        });
    }
    let result = tokio::select! {
        biased;
        signal = interrupt => Err(SendError::Interrupted { job: Some(job), signal }),
        // The hint holds here too: after `--no-wait` the whole body went
        // out before the older portal's refusal could be read.
        r = follow_job(job, sink, pickup.show, cfg, report, reading.clone()) => r.map_err(older_portal_hint),
    };
    if let (Reading::Sealed(_), Some(dir)) = (&reading, &cfg.job_key_dir) {
        if answer_final(&result, job) {
            job_key::remove(dir, job);
        }
    }
    result
}

/// How `wait` reads `job`'s answer: opened with the secret in its job key
/// file when there is one (the job was sealed); as it is otherwise, a
/// sealed record then failing with a message that says where the secret
/// should have been.
fn wait_reading(job: JobId, cfg: &Settings) -> Result<Reading, SendError> {
    let Some(dir) = &cfg.job_key_dir else {
        return Ok(Reading::NoSecret(format!(
            "the answer is sealed and its secret cannot be looked for: neither {} nor HOME is set (set it to the folder send kept the job's secret in)",
            job_key::DIR_SETTING
        )));
    };
    // A key file that cannot be read says nothing of the job: a clear
    // job's answer is still read; only a sealed one fails, saying why.
    Ok(match job_key::read(dir, job) {
        Ok(Some(secret)) => Reading::Sealed(Arc::new(secret.keys(job))),
        // With a seal-to setting the job is sealed as the user's sends
        // are: without its secret no answer can be told from a forgery.
        Ok(None) if cfg.seal_to.is_some() => {
            return Err(SendError::Integrity(format!(
                "the answer is sealed (KAFKASEND_SEAL_TO is set) and its secret is not in {} (send keeps it there until the answer is read); for a job sent in clear, run wait without that setting",
                job_key::path(dir, job).display()
            )))
        }
        Ok(None) => Reading::NoSecret(format!(
            "the answer is sealed and its secret is not in {} (send keeps it there until the answer is read)",
            job_key::path(dir, job).display()
        )),
        Err(e) => Reading::NoSecret(format!(
            "the answer is sealed and its secret cannot be read: {e}"
        )),
    })
}

/// Whether `job`'s answer has been read for good: whole, or an `Error` of
/// the portal that is authenticated. Only then is a sealed job's secret no
/// longer needed; a clear `Error` leaves it for the sealed answer.
fn answer_final(result: &Result<Outcome, SendError>, job: JobId) -> bool {
    match result {
        Ok(outcome) => outcome.status.is_some(),
        Err(e) => {
            matches!(e, SendError::Refused { .. } | SendError::Upstream { .. })
                && !sealed::is_unauthenticated(e, job)
        }
    }
}

/// One send over `link`, or over a link opened for it when `None`: the
/// request is prepared and its output opened first (a bad request, an
/// unreadable body or an output that cannot be written is reported before
/// the broker), and `interrupt` stops it at any point after that.
async fn send_over(
    link: Option<&Link>,
    request: &Request,
    cfg: &Settings,
    report: &mut Report,
    interrupt: impl Future<Output = &'static str>,
) -> Result<Outcome, SendError> {
    let began = SystemTime::now();
    let prepared = prepare(request).await?;
    let prepared_at = SystemTime::now();
    let trace = prepared.trace.clone();
    if !prepared.dropped.is_empty() {
        request
            .show
            .notice(Notice::DroppedHeaders(&prepared.dropped));
    }
    if let Some(why) = &prepared.trace.state_dropped {
        request.show.notice(Notice::TraceStateDropped(why));
    }
    let resume = resumed_job(request, &prepared)?;
    let sink = open_sink(request)?;
    let result = tokio::select! {
        biased;
        signal = interrupt => Err(SendError::Interrupted { job: None, signal }),
        r = async {
            let body_digest = signed_digest(&prepared, cfg).await?;
            let opened;
            let link = match link {
                Some(link) => link,
                None => {
                    opened = Link::open(&cfg.kafka).await?;
                    &opened
                }
            };
            transmit(link, prepared, body_digest, sink, request, cfg, report, resume)
                .await
                .map_err(older_portal_hint)
        } => r,
    };
    if let (Some(_), Some(job), Some(dir)) = (&report.sealed, report.job, &cfg.job_key_dir) {
        if answer_final(&result, job) {
            job_key::remove(dir, job);
        } else {
            job_key::keep(dir, job);
        }
    }
    // A resumed job continues the trace its start record, found in Kafka,
    // carries.
    let trace = report.continued.take().unwrap_or(trace);
    // Parent-based sampling: an unsampled trace is carried on, not recorded.
    if telemetry::enabled() && trace.context.parent.sampled() {
        record_spans(&trace, report, &result, [began, prepared_at]);
    }
    with_job(result, report)
}

/// Records this send's spans for export: `send`, whose id the start record
/// names as the portal's parent, and its steps.
fn record_spans(
    trace: &SendTrace,
    report: &Report,
    result: &Result<Outcome, SendError>,
    [began, prepared_at]: [SystemTime; 2],
) {
    let end = SystemTime::now();
    let tp = trace.context.parent;
    let step = |name, from: Option<SystemTime>, to: Option<SystemTime>| {
        let from = from?;
        Some(Span::new(
            tp.trace_id,
            SpanId::random(),
            Some(tp.parent_id),
            name,
            from,
            to.unwrap_or(end),
        ))
    };
    let marks = report.marks;
    let steps = [
        step("prepare", Some(began), Some(prepared_at)),
        step("upload", marks.upload, marks.sent),
        step("wait", marks.sent, marks.answered),
        step("download", marks.answered, None),
    ];
    let mut root = Span::new(tp.trace_id, tp.parent_id, trace.parent, "send", began, end)
        .kind(Kind::Producer)
        .attr(
            "kafkasend.request.body_bytes",
            report.bytes_sent + report.bytes_found,
        )
        .attr("kafkasend.response.body_bytes", report.bytes_received);
    root.trace_state = trace.context.state.clone();
    if let Some(job) = report.job {
        root = root.attr("kafkasend.job_id", job.to_string());
    }
    if let Some(status) = report.status {
        root = root.attr("http.response.status_code", status);
    }
    if let Err(e) = result {
        root.error = Some(e.to_string());
    }
    telemetry::record(root);
    for span in steps.into_iter().flatten() {
        telemetry::record(span);
    }
}

/// A portal that speaks only frame version 1 refuses a BLAKE3 request
/// naming the versions; the user also learns the flag that works with it.
fn older_portal_hint(e: SendError) -> SendError {
    match e {
        SendError::Refused { category, message }
            if message.contains("protocol version 2 is not supported") =>
        {
            SendError::Refused {
                category,
                message: format!(
                    "{message}, or send with --digest sha256 (KAFKASEND_DIGEST=sha256), which that portal reads"
                ),
            }
        }
        e => e,
    }
}

/// The job `--resume` names, checked, with a body that can be resumed: one
/// read again as it was (a multipart form gets a new boundary each time,
/// standard input cannot be read twice).
fn resumed_job(request: &Request, prepared: &Prepared) -> Result<Option<JobId>, SendError> {
    let Some(given) = &request.resume else {
        return Ok(None);
    };

    let job: JobId = given.trim().parse().map_err(|why| {
        usage(format!(
            "--resume '{}' is not a job id: {why}; use the id send printed (kafkasend: job ID: uploading ...)",
            given.escape_debug()
        ))
    })?;
    if request.multipart || !request.form.is_empty() {
        return Err(usage(
            "--resume cannot finish a multipart form (-F, --multipart): each send frames it with a new boundary, so its bytes differ from the first upload's; send it again without --resume",
        ));
    }
    if !replayable(prepared) {
        return Err(usage(
            "--resume needs a body that can be read again (FILE, --data-binary @FILE, -d): standard input and pipes cannot be checked against what the first upload sent",
        ));
    }
    Ok(Some(job))
}

/// Where the response goes, opened before the request is sent; none
/// without waiting, which takes no response.
fn open_sink(request: &Request) -> Result<Option<Destination>, SendError> {
    if request.no_wait {
        return Ok(None);
    }
    Ok(Some(Destination::open(
        request.output.as_deref(),
        &request.response,
    )?))
}

/// Names the job in an interruption once its request was wholly sent: only
/// then may the portal answer it, and `wait` pick the answer up.
fn with_job(result: Result<Outcome, SendError>, report: &Report) -> Result<Outcome, SendError> {
    match result {
        Err(SendError::Interrupted { job: None, signal }) if report.request_sent => {
            Err(SendError::Interrupted {
                job: report.job,
                signal,
            })
        }
        other => other,
    }
}

/// The body's digest when the request is to be signed.
async fn signed_digest(
    prepared: &Prepared,
    cfg: &Settings,
) -> Result<Option<crate::protocol::digest::Digest>, SendError> {
    match &cfg.signer {
        Some(_) => body_digest(prepared, cfg.digest).await,
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCategory;

    #[test]
    fn a_portal_too_old_for_blake3_is_met_with_the_flag_it_reads() {
        let refused = |message: &str| SendError::Refused {
            category: ErrorCategory::BadRequest,
            message: message.into(),
        };
        let old = "the portal cannot read this request: protocol version 2 is not supported (this build speaks version 1); upgrade the older side";
        match older_portal_hint(refused(old)) {
            SendError::Refused { message, .. } => {
                assert!(message.starts_with(old), "{message}");
                assert!(
                    message.ends_with(
                        "--digest sha256 (KAFKASEND_DIGEST=sha256), which that portal reads"
                    ),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        // Any other refusal is left as it is.
        match older_portal_hint(refused("path not allowed")) {
            SendError::Refused { message, .. } => assert_eq!(message, "path not allowed"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_an_authenticated_final_record_ends_a_sealed_job_for_good() {
        let job = JobId::new();
        let refused = |message: String| SendError::Refused {
            category: ErrorCategory::Rejected,
            message,
        };
        // A sealed Error, opened: the portal's own word.
        assert!(answer_final(&Err(refused("no such path".into())), job));
        // A clear Error as a sealed job's reading words it: anyone may
        // have written it, so the secret stays.
        let keys = crate::protocol::seal::JobKeys::random(job);
        let frame = crate::protocol::wire::Frame {
            job,
            seq: 0,
            body: crate::protocol::wire::Body::Error(crate::protocol::Failure {
                category: ErrorCategory::Rejected,
                message: "forged".into(),
            }),
        };
        let read = Reading::Sealed(Arc::new(keys))
            .read(&crate::protocol::wire::encode(&frame, &[]), None)
            .unwrap();
        let crate::protocol::wire::Body::Error(f) = read.frame.body else {
            panic!("{:?}", read.frame)
        };
        let forged = older_portal_hint(reply::error_from_portal(f.category, f.message));
        assert_eq!(forged.exit_code(), 3);
        assert!(!answer_final(&Err(forged), job));
        // Neither does a failure that is no answer.
        assert!(!answer_final(&Err(SendError::Integrity("x".into())), job));
    }
}
