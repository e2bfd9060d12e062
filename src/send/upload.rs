//! The upload: a [`Link`] to both topics, and [`transmit`], which notes where
//! the reply partition ends, starts following it, then produces the start
//! record, the body's chunks through a produce window, and the end record.

use std::collections::VecDeque;
use std::time::Instant;

use crate::kafka::partitioner::partition_for_key;
use crate::kafka::window::ProduceWindow;
use crate::kafka::{self, KafkaError, PartitionCache};
use crate::protocol::chunker::{read_chunk, Chunker};
use crate::protocol::wire::{self, Body, Frame, JobId, RequestStart};
use crate::send::destination::Destination;
use crate::send::reply::{error_from_portal, receive, Follower, Reply, MAX_EARLY};
use crate::send::request::{open_body, Prepared};
use crate::send::types::{usage, Notice, Outcome, Request, SendError, Settings, Verbose};
use crate::send::ui::{Progress, Report};

/// A client connected to the request and response topics, with the
/// partitions it has used kept open; each request reads its replies over a
/// connection of its own (a `Fetcher`). Meant for one request at a time.
/// The partition counts are read once, when it opens.
pub struct Link {
    settings: kafka::Config,
    requests: PartitionCache,
    replies: PartitionCache,
    request_partitions: i32,
    reply_partitions: i32,
}

impl Link {
    /// Connects and reads both topics' partition counts (one metadata
    /// request); a missing topic is an error.
    pub async fn open(kcfg: &kafka::Config) -> Result<Self, SendError> {
        let settings = kcfg.clone();
        let cluster = kafka::connect(&settings).await?;
        let counts = cluster
            .partition_counts(&[&kcfg.request_topic, &kcfg.response_topic])
            .await?;
        let count = |topic: &str, n: Option<i32>| {
            n.ok_or_else(|| SendError::from(KafkaError::MissingTopic(topic.to_string())))
        };
        Ok(Self {
            settings,
            request_partitions: count(&kcfg.request_topic, counts[0])?,
            reply_partitions: count(&kcfg.response_topic, counts[1])?,
            requests: PartitionCache::new(cluster.clone(), kcfg.request_topic.clone()),
            replies: PartitionCache::new(cluster, kcfg.response_topic.clone()),
        })
    }
}

pub(super) async fn transmit(
    link: &Link,
    prepared: Prepared,
    body_sha256: Option<[u8; 32]>,
    sink: Option<Destination>,
    request: &Request,
    cfg: &Settings,
    report: &mut Report,
) -> Result<Outcome, SendError> {
    let mut body = open_body(&prepared).await?;
    let kcfg = &cfg.kafka;
    let (req_parts, resp_parts) = (link.request_partitions, link.reply_partitions);

    let job = JobId::new();
    report.job = Some(job);
    let show = request.show;
    let key = job.key();
    let reply_partition = partition_for_key(&key, resp_parts);
    let request_partition = partition_for_key(&key, req_parts);
    log::debug!(
        "job {job}: request partition {request_partition}, reply partition {reply_partition}"
    );

    // Note where the reply partition ends before producing anything, so a
    // reply however quick lands after this offset.
    let mut waiting = match sink {
        None => None,
        Some(sink) => {
            let reply_pc = link.replies.get(reply_partition).await?;
            let from = reply_pc.end_offset().await?;
            let follower = Follower::spawn(
                &link.settings,
                &kcfg.response_topic,
                reply_partition,
                from,
                job,
            );
            Some((sink, follower))
        }
    };
    let request_pc = link.requests.get(request_partition).await?;
    show.info(|| {
        format!(
            "job {job}: request partition {request_partition} of topic {}, reply partition {reply_partition} of topic {}",
            kcfg.request_topic, kcfg.response_topic
        )
    });
    if show.verbose {
        show.notice(Notice::Verbose(Verbose::Request {
            method: &prepared.method,
            path: &prepared.path,
            headers: &prepared.headers,
        }));
    }

    let start = Frame {
        job,
        seq: 0,
        body: Body::RequestStart(RequestStart {
            method: prepared.method.clone(),
            path: prepared.path.clone(),
            headers: prepared.headers.clone(),
            body_len: prepared.body_len,
            has_body: body.is_some(),
            reply_topic: kcfg.response_topic.clone(),
            reply_partition,
        }),
    };
    let mut headers = vec![(
        wire::REPLY_TO_HEADER,
        wire::reply_to_header(&kcfg.response_topic, reply_partition),
    )];
    if let (Some(signer), Body::RequestStart(rs)) = (&cfg.signer, &start.body) {
        let signature = signer
            .sign(
                job,
                &kcfg.request_topic,
                request_partition,
                rs,
                body_sha256,
                crate::protocol::signing::unix_now(),
            )
            .map_err(|e| usage(e.to_string()))?;
        headers.push((wire::SIGNATURE_HEADER, signature.into_bytes()));
    }
    request_pc
        .produce(kafka::record(&start, &[], &headers))
        .await?;

    let upload_started = Instant::now();
    if let Some(reader) = body.as_mut() {
        let progress = Progress::new("upload", prepared.body_len, show.progress);
        let mut chunker = Chunker::new(job, 1);
        let capacity = produce_window(kcfg.chunk_size);
        let mut window = ProduceWindow::new(&request_pc, capacity).compressing(cfg.compression);
        // Lengths of the chunks in flight, oldest first.
        let mut in_flight: VecDeque<u64> = VecDeque::with_capacity(capacity);
        let mut read_all = false;
        loop {
            if !read_all && window.has_room() {
                // Read the next chunk while the ones before it are in flight.
                let data = window
                    .alongside(read_chunk(reader, kcfg.chunk_size))
                    .await
                    .map_err(|e| SendError::Io(format!("reading the body failed: {e}")))?;
                if data.is_empty() {
                    read_all = true;
                    continue;
                }
                let out = chunker.chunk(data);
                in_flight.push_back(out.payload.len() as u64);
                window.push(&out.frame, &out.payload);
                continue;
            }
            let Some(acked) = window.next().await else {
                break;
            };
            acked?;
            let len = in_flight.pop_front().unwrap_or(0);
            progress.add(len);
            report.bytes_sent += len;
            // A portal that refuses the job says so at once; stop uploading then.
            let Some((_, follower)) = waiting.as_mut() else {
                continue;
            };
            while let Some(r) = follower.try_next() {
                if matches!(r, Reply::Trouble(_)) {
                    continue;
                }
                if let Reply::Record(rec) = &r {
                    if let Body::Error(e) = &rec.frame.body {
                        return Err(error_from_portal(e.category, e.message.clone()));
                    }
                }
                if !follower.hold(r) {
                    return Err(SendError::Integrity(format!(
                        "job {job}: the portal answered before the upload finished with more than {MAX_EARLY} records"
                    )));
                }
            }
        }
        if let Some(declared) = prepared.body_len {
            if declared != chunker.bytes() {
                return Err(SendError::Io(format!(
                    "the file changed while it was sent ({declared} bytes expected, {} read)",
                    chunker.bytes()
                )));
            }
        }
        let sent = chunker.bytes();
        progress.finish();
        let end = chunker.finish();
        request_pc.produce(kafka::record(&end, &[], &[])).await?;
        let secs = upload_started.elapsed().as_secs_f64();
        log::info!(
            "job {job}: sent {sent} bytes in {secs:.2} s ({:.1} MB/s), {}",
            sent as f64 / 1e6 / secs.max(1e-9),
            window.compression()
        );
    }

    report.request_sent = true;
    show.info(|| format!("request sent: {} body bytes", report.bytes_sent));

    let Some((sink, mut follower)) = waiting else {
        return Ok(Outcome { job, status: None });
    };
    receive(sink, show, cfg, job, &mut follower, report).await
}

/// Most chunk records in flight at once: enough to keep the broker busy
/// while the next chunk is read and the last acknowledgement travels back.
const PRODUCE_WINDOW: usize = 4;

/// Most chunk bytes in flight at once. Each call in flight holds its chunk
/// about three times over (the record, a copy kept for a second try, the
/// request's bytes), and its timeout also covers the calls queued ahead of
/// it, so large chunks get fewer calls in flight (one from 4 MiB up).
const PRODUCE_WINDOW_BYTES: usize = 4 * 1024 * 1024;

/// Produce calls in flight for chunks of `chunk_size` bytes.
fn produce_window(chunk_size: usize) -> usize {
    (PRODUCE_WINDOW_BYTES / chunk_size.max(1)).clamp(1, PRODUCE_WINDOW)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_chunks_get_fewer_produce_calls_in_flight() {
        assert_eq!(
            produce_window(crate::protocol::chunker::DEFAULT_CHUNK_SIZE),
            4
        );
        assert_eq!(produce_window(1024), 4);
        assert_eq!(produce_window(2 * 1024 * 1024), 2);
        assert_eq!(produce_window(crate::protocol::chunker::MAX_CHUNK_SIZE), 1);
    }
}
