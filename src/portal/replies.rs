//! Where a job's answer goes, and the error replies: a job that fails
//! before it reaches the API, or whose call fails, ends with one `Error`
//! record to the reply partition its start record names.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::kafka::{self, KafkaError, Partition};
use crate::portal::assembler::FailedJob;
use crate::portal::context::{queue_slot, spawn_tracked, Ctx};
use crate::portal::ledger::Progress;
use crate::protocol::seal::JobKeys;
use crate::protocol::wire::{new_attempt, Body, Frame, JobId, ATTEMPT_HEADER};
use crate::protocol::{ErrorCategory, Failure};

/// Tells the client of `failed` why, with one error record sent from a
/// task of its own once a slot in the job queue is free. The job is settled
/// when the record is acknowledged, or when its start record named no valid
/// reply address; otherwise it is left to be read again.
pub(crate) async fn spawn_error_reply(
    ctx: &Arc<Ctx>,
    progress: &Arc<Mutex<Progress>>,
    failed: FailedJob,
    stop: &watch::Receiver<bool>,
) {
    if failed.pipelined {
        // The job's own task, calling the API, answers it.
        return;
    }
    // Error replies queue like jobs, so a flood of bad requests cannot pile up tasks.
    let Some(queued) = queue_slot(ctx, progress, failed.first_offset, stop).await else {
        return;
    };
    ctx.metrics.job_started(0);
    let ctx2 = Arc::clone(ctx);
    let (id, first) = (failed.job, failed.first_offset);
    spawn_tracked(ctx, progress, id, first, queued, async move {
        let target = reply_partition(
            &ctx2,
            failed.job,
            &failed.reply_topic,
            failed.reply_partition,
        )
        .await;
        match target {
            ReplyTo::Partition(pc) => {
                let info = Failure {
                    category: failed.category,
                    message: failed.message,
                };
                report_error_reply(
                    &ctx2,
                    failed.job,
                    send_error(
                        &pc,
                        failed.job,
                        0,
                        info,
                        &new_attempt(),
                        failed.sealed.as_deref(),
                    )
                    .await,
                    failed.category,
                )
            }
            ReplyTo::Nowhere => true,
            ReplyTo::Unavailable => false,
        }
    });
}

/// Where a job's answer can go.
pub(crate) enum ReplyTo {
    /// The reply partition, open.
    Partition(Partition),
    /// The start record names no valid reply address: no answer is possible.
    Nowhere,
    /// The reply partition could not be opened now; try again later.
    Unavailable,
}

/// The client for a job's reply partition, if the start record named a valid one.
pub(crate) async fn reply_partition(ctx: &Ctx, job: JobId, topic: &str, partition: i32) -> ReplyTo {
    if topic != ctx.replies.topic() {
        log::error!(
            "job {job}: the client listens on topic '{topic}' but this portal answers on '{}'; check KAFKA_RESPONSE_TOPIC on both sides",
            ctx.replies.topic()
        );
        return ReplyTo::Nowhere;
    }
    if !(0..ctx.response_partitions).contains(&partition) {
        log::error!(
            "job {job}: reply partition {partition} does not exist ({} has {})",
            topic,
            ctx.response_partitions
        );
        return ReplyTo::Nowhere;
    }
    match ctx.replies.get(partition).await {
        Ok(pc) => ReplyTo::Partition(pc),
        Err(e) => {
            log::error!("job {job}: cannot open reply partition {partition}: {e}");
            ReplyTo::Unavailable
        }
    }
}

/// Produces one `Error` record numbered `seq` for `job`, tagged with the
/// `attempt` whose answer it ends (or is); sealed with the response key of
/// a sealed job (`sealed`), so its category and message stay the sender's.
pub(crate) async fn send_error(
    pc: &Partition,
    job: JobId,
    seq: u32,
    info: Failure,
    attempt: &[u8],
    sealed: Option<&JobKeys>,
) -> Result<i64, KafkaError> {
    pc.produce(error_record(job, seq, info, attempt, sealed))
        .await
}

/// The `Error` record [`send_error`] produces.
pub(crate) fn error_record(
    job: JobId,
    seq: u32,
    info: Failure,
    attempt: &[u8],
    sealed: Option<&JobKeys>,
) -> kafka::Record {
    let frame = Frame {
        job,
        seq,
        body: Body::Error(info),
    };
    let headers = [(ATTEMPT_HEADER, attempt.to_vec())];
    match sealed {
        Some(keys) => {
            let value = keys.response.seal_clear(&frame, &[], Vec::new(), attempt);
            kafka::record_of_value(job, value, &headers)
        }
        None => kafka::record(&frame, &[], &headers),
    }
}

/// Counts and logs how sending a job's error reply went; whether it is settled.
pub(crate) fn report_error_reply(
    ctx: &Ctx,
    job: JobId,
    sent: Result<i64, KafkaError>,
    category: ErrorCategory,
) -> bool {
    match sent {
        Ok(_) => {
            ctx.metrics.job_failed(category);
            true
        }
        Err(e) => {
            ctx.metrics.produce_error();
            log::error!("job {job}: could not send the error reply: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::seal::JobKeys;
    use crate::protocol::wire;

    #[test]
    fn a_sealed_jobs_error_opens_only_with_its_response_key_and_attempt() {
        let job = JobId::new();
        let keys = JobKeys::random(job);
        let message = "the route refused /x/secret-path";
        let info = Failure::new(ErrorCategory::Rejected, message.to_string());
        let attempt = new_attempt();
        let rec = error_record(job, 2, info.clone(), &attempt, Some(&keys));
        let value = rec.value.unwrap_or_default();
        assert!(!value.windows(11).any(|w| w == b"secret-path"));
        assert_eq!(
            rec.headers.keys().collect::<Vec<_>>(),
            vec![ATTEMPT_HEADER],
            "the record carries only its attempt"
        );
        let (frame, payload) = wire::decode(&value).unwrap();
        assert!(matches!(frame.body, Body::SealedError));
        assert_eq!(frame.seq, 2);
        let opened = keys
            .response
            .open_frame(&value, frame.clone(), payload, &attempt)
            .unwrap();
        assert_eq!(opened.frame.body, Body::Error(info.clone()));
        // Bound to the attempt and the direction.
        assert!(keys
            .response
            .open_frame(&value, frame.clone(), payload, b"other")
            .is_err());
        assert!(keys
            .request
            .open_frame(&value, frame, payload, &attempt)
            .is_err());
        // A clear job's error is a clear version 1 Error.
        let rec = error_record(job, 0, info.clone(), &attempt, None);
        let value = rec.value.unwrap_or_default();
        assert_eq!(value[4], 1);
        let (frame, _) = wire::decode(&value).unwrap();
        assert_eq!(frame.body, Body::Error(info));
    }
}
