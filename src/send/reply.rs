//! Following the reply partition and receiving the answer: a reader task
//! passes this job's records on ([`follow_replies`]), and [`receive`] takes
//! them in order, checks the body as it streams to the output, and turns a
//! portal's error or a silent partition into a [`SendError`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::kafka::fetcher::Fetcher;
use crate::kafka::partitioner::partition_for_key;
use crate::kafka::record_batch::Item;
use crate::kafka::{self, KafkaError};
use crate::protocol::body::{BodyCheck, BodyFault};
use crate::protocol::chunker::hex;
use crate::protocol::wire::{self, Body, ChunkInfo, EndInfo, Frame, JobId};
use crate::protocol::ErrorCategory;
use crate::send::destination::Destination;
use crate::send::types::{Notice, Outcome, SendError, Settings, Show, Verbose};
use crate::send::ui::{Progress, Report};

/// Aborts a task when dropped.
pub(super) struct AbortOnDrop(tokio::task::JoinHandle<()>);

/// Starts [`follow_replies`] on a task of its own, which runs until the
/// returned guard is dropped.
pub(super) fn spawn_follower(
    fetcher: Fetcher,
    from: i64,
    job: JobId,
    tx: mpsc::Sender<Reply>,
    limit: Duration,
) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(follow_replies(fetcher, from, job, tx, limit)))
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One item from the reply reader.
pub(super) enum Reply {
    Frame(Frame, Vec<u8>),
    /// The portal did not forward these request headers (the
    /// `kafkasend-dropped-headers` value of the start record that follows).
    Dropped(String),
    Broken(String),
    /// Reading the reply partition fails; the reader keeps retrying.
    Trouble(Trouble),
}

/// Why reading the reply partition failed last.
#[derive(Debug)]
pub(super) struct Trouble {
    detail: String,
    /// The broker could not be reached, rather than answering with
    /// something unusable.
    unreachable: bool,
}

/// How far before a job's creation `wait` starts looking for its answer:
/// the portal's clock, which stamps the answer, may run behind the sender's.
const WAIT_CLOCK_SLACK: Duration = Duration::from_secs(300);

/// Reads the reply partition of `job` from shortly before its time, and
/// receives its answer into `sink`.
pub(super) async fn follow_job(
    job: JobId,
    sink: Destination,
    show: Show,
    cfg: &Settings,
    report: &mut Report,
) -> Result<Outcome, SendError> {
    let kcfg = &cfg.kafka;
    let limit = kcfg.timeout;
    let cluster = kafka::connect(kcfg).await?;
    let resp_parts = cluster
        .partition_count(&kcfg.response_topic)
        .await?
        .ok_or_else(|| KafkaError::MissingTopic(kcfg.response_topic.clone()))?;
    let reply_partition = partition_for_key(&job.key(), resp_parts);
    let reply_pc = cluster
        .partition(&kcfg.response_topic, reply_partition)
        .await?;
    let since_ms = job
        .timestamp_ms()
        .saturating_sub(WAIT_CLOCK_SLACK.as_millis() as u64);
    let from = reply_pc.offset_since(since_ms).await?;
    log::debug!("job {job}: reading reply partition {reply_partition} from offset {from}");
    show.info(|| {
        format!(
            "job {job}: reading reply partition {reply_partition} of topic {} from offset {from}",
            kcfg.response_topic
        )
    });
    let (reply_tx, mut reply_rx) = mpsc::channel(8);
    let fetcher = Fetcher::new(kcfg, &kcfg.response_topic, reply_partition);
    let reader = spawn_follower(fetcher, from, job, reply_tx, limit);
    let result = receive(sink, show, cfg, job, VecDeque::new(), &mut reply_rx, report).await;
    drop(reader);
    result
}

/// Follows the reply partition from `from`, passing on this job's frames.
/// Other jobs' records, and batches that cannot be read and hold none of
/// this job's records, are passed over.
async fn follow_replies(
    mut fetcher: Fetcher,
    mut from: i64,
    job: JobId,
    tx: mpsc::Sender<Reply>,
    limit: Duration,
) {
    let mut failures = 0u32;
    let key = job.key();
    loop {
        // A short bound per fetch, so an unreachable broker shows up as
        // trouble well before the waiting side's timeout.
        let bound = limit.min(Duration::from_secs(4));
        let fetched = match fetcher.fetch(from, Duration::from_millis(500), bound).await {
            Ok(f) => {
                failures = 0;
                f
            }
            Err(e) => {
                // A broker restart or a coordinator move is survived: keep
                // trying with backoff; the waiting side's timeout decides.
                failures += 1;
                log::debug!("reading replies: {e}; retrying");
                let trouble = Trouble {
                    unreachable: e.is_connection_problem(),
                    detail: e.to_string(),
                };
                if tx.try_send(Reply::Trouble(trouble)).is_err() && tx.is_closed() {
                    return;
                }
                let wait = Duration::from_millis(200 * u64::from(failures.min(10)));
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        for item in fetched.items {
            let rec = match item {
                Item::Record(rec) => rec,
                Item::Unreadable(batch) if batch.keys.contains(&key) => {
                    let why = format!("a reply record is unreadable: {}", batch.detail);
                    if tx.send(Reply::Broken(why)).await.is_err() {
                        return;
                    }
                    continue;
                }
                Item::Unreadable(batch) => {
                    // Another job's, as far as its keys tell; with none to
                    // tell, this job's answer may have been in it.
                    let level = if batch.keys.is_empty() {
                        log::Level::Warn
                    } else {
                        log::Level::Debug
                    };
                    log::log!(
                        level,
                        "job {job}: reply partition offsets {}..={} skipped: {}",
                        batch.first_offset,
                        batch.last_offset,
                        batch.detail
                    );
                    continue;
                }
            };
            if !kafka::is_for_job(&rec.record, &job) {
                continue;
            }
            let mut last = false;
            let item = match rec.record.value.as_deref().map(wire::decode) {
                Some(Ok((frame, payload))) if frame.job == job => {
                    last = matches!(frame.body, Body::End(_) | Body::Error(_));
                    let dropped = rec
                        .record
                        .headers
                        .get(wire::DROPPED_HEADERS_HEADER)
                        .filter(|_| matches!(frame.body, Body::ResponseStart(_)))
                        .and_then(|v| wire::parse_dropped_headers(v));
                    if let Some(names) = dropped {
                        if tx.send(Reply::Dropped(names)).await.is_err() {
                            return;
                        }
                    }
                    Reply::Frame(frame, payload.to_vec())
                }
                Some(Ok(_)) => Reply::Broken("a reply record's key and job id disagree".into()),
                Some(Err(e)) => Reply::Broken(format!("a reply record is unreadable: {e}")),
                None => Reply::Broken("a reply record has no value".into()),
            };
            if tx.send(item).await.is_err() {
                return;
            }
            // A final record normally ends the answer. Fetch no further
            // while the waiting side finishes, so no long poll is left
            // waiting on the broker for nothing; go on only if it still waits.
            if last {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(AFTER_FINAL_RECORD) => {}
                }
            }
        }
        from = fetched.next_offset;
    }
}

/// How long the reply reader pauses after a final record before it reads
/// on, for the rare answer that needs more (a second answer, say).
const AFTER_FINAL_RECORD: Duration = Duration::from_secs(1);

pub(super) fn error_from_portal(category: ErrorCategory, message: String) -> SendError {
    match category {
        ErrorCategory::Rejected | ErrorCategory::BadRequest => {
            SendError::Refused { category, message }
        }
        ErrorCategory::Integrity => SendError::Integrity(message),
        ErrorCategory::UpstreamUnreachable
        | ErrorCategory::UpstreamTimeout
        | ErrorCategory::Auth
        | ErrorCategory::Internal => SendError::Upstream { category, message },
    }
}

/// The record whose check found a fault in the response body.
enum Checked<'a> {
    Chunk(&'a ChunkInfo),
    End(&'a EndInfo),
}

/// Words what the body check found wrong, naming the record it checked.
fn body_fault(fault: BodyFault, checked: Checked<'_>) -> SendError {
    SendError::Integrity(match (fault, checked) {
        (BodyFault::Crc, Checked::Chunk(info)) => format!(
            "response chunk at byte {} failed its CRC32C check",
            info.offset
        ),
        (BodyFault::Length { received, chunks }, Checked::End(end)) => format!(
            "response is {received} bytes in {chunks} chunks, the portal sent {} bytes in {}",
            end.total_len, end.chunks
        ),
        (BodyFault::Digest { computed }, Checked::End(end)) => format!(
            "response SHA-256 {} does not match the portal's {}",
            hex(&computed),
            hex(&end.sha256)
        ),
        // A chunk fails only its CRC, an end record only the rest; should
        // that change, the fault is still reported, if less precisely.
        (fault, _) => format!("response failed its body check: {fault:?}"),
    })
}

/// A response's head arrived (the first, or a second answer's): kept for
/// `--json`, written where `-i` and `-D` ask, its decoding chosen.
async fn head_arrived(
    sink: &mut Destination,
    show: Show,
    report: &mut Report,
    status: u16,
    headers: &[(String, String)],
) -> Result<(), SendError> {
    report.headers = Some(headers.to_vec());
    if let Some(coding) = sink.start(status, headers).await? {
        show.info(|| format!("decoding the {coding} body (--compressed)"));
    }
    Ok(())
}

/// Receives the answer to `job` into `sink`; `show` decides whether the
/// status line is announced and a progress bar drawn.
pub(super) async fn receive(
    mut sink: Destination,
    show: Show,
    cfg: &Settings,
    job: JobId,
    mut early: VecDeque<Reply>,
    rx: &mut mpsc::Receiver<Reply>,
    report: &mut Report,
) -> Result<Outcome, SendError> {
    let mut progress = Progress::new("download", None, false);
    let mut expected_seq = 0u32;
    // The last error reading the reply partition, until a record arrives.
    let mut trouble: Option<Trouble> = None;
    // Waiting ends `--timeout` after the last record of this job, however
    // many retries the reader reports meanwhile.
    let mut idle_deadline = tokio::time::Instant::now() + cfg.timeout;
    let mut status: Option<u16> = None;
    let mut check = BodyCheck::new();
    let started = Instant::now();
    let mut warned_dropped = false;
    loop {
        let item = match early.pop_front() {
            Some(r) => r,
            None => match tokio::time::timeout_at(idle_deadline, rx.recv()).await {
                Ok(Some(r)) => r,
                Ok(None) => return Err(SendError::Io("the reply reader stopped".into())),
                Err(_) => {
                    return Err(match trouble {
                        Some(Trouble {
                            detail,
                            unreachable: true,
                        }) => SendError::BrokerLost {
                            job,
                            secs: cfg.timeout.as_secs(),
                            detail,
                        },
                        Some(Trouble { detail, .. }) => SendError::ReplyUnreadable {
                            job,
                            secs: cfg.timeout.as_secs(),
                            detail,
                        },
                        None => SendError::Timeout {
                            job,
                            secs: cfg.timeout.as_secs(),
                        },
                    })
                }
            },
        };
        let (frame, payload) = match item {
            Reply::Frame(f, p) => {
                trouble = None;
                idle_deadline = tokio::time::Instant::now() + cfg.timeout;
                (f, p)
            }
            Reply::Dropped(names) => {
                // Once, though a second answer may say it again.
                if !warned_dropped {
                    show.notice(Notice::PortalDroppedHeaders(&names));
                    warned_dropped = true;
                    report.dropped_headers = Some(names);
                }
                continue;
            }
            Reply::Broken(why) => return Err(SendError::Integrity(why)),
            Reply::Trouble(why) => {
                trouble = Some(why);
                continue;
            }
        };
        // An error is final whatever its number: a portal that took the job
        // over after another failed part-way numbers its answer from 0 again.
        if let Body::Error(e) = frame.body {
            return Err(error_from_portal(e.category, e.message));
        }
        // A start record after body chunks is a second answer (a producer's
        // retry duplicates a record right after itself, never later): start
        // over where the output allows it, else keep to the first answer.
        let second_answer = frame.seq == 0 && check.received() > 0;
        if let (true, Body::ResponseStart(rs)) = (second_answer, &frame.body) {
            if sink.restart().await? {
                log::info!(
                    "job {job}: a second answer arrived (the job was taken over); starting over"
                );
                status = Some(rs.status);
                report.status = status;
                check = BodyCheck::new();
                expected_seq = 1;
                progress.reset();
                head_arrived(&mut sink, show, report, rs.status, &rs.headers).await?;
                continue;
            }
        }
        if frame.seq < expected_seq {
            log::debug!("job {job}: duplicate reply record {} ignored", frame.seq);
            continue;
        }
        if frame.seq > expected_seq {
            return Err(SendError::Integrity(format!(
                "reply record {expected_seq} is missing (got {})",
                frame.seq
            )));
        }
        expected_seq += 1;
        match frame.body {
            Body::ResponseStart(rs) if status.is_none() => {
                if show.verbose {
                    show.notice(Notice::Verbose(Verbose::Response {
                        status: rs.status,
                        headers: &rs.headers,
                    }));
                } else if show.progress {
                    show.notice(Notice::Status(rs.status));
                }
                status = Some(rs.status);
                report.status = status;
                head_arrived(&mut sink, show, report, rs.status, &rs.headers).await?;
                // A bar on stderr while the body goes to a file; not over a
                // body streaming to the same terminal.
                progress = Progress::new("download", rs.body_len, show.progress && sink.is_file());
            }
            Body::Chunk(info) if status.is_some() => {
                let expected = check.received();
                if let Err(fault) = check.chunk(&info, &payload) {
                    return Err(body_fault(fault, Checked::Chunk(&info)));
                }
                // The output is written as chunks arrive, so they must come
                // in order: no gap, no overlap.
                if !check.in_order() {
                    return Err(SendError::Integrity(format!(
                        "response chunk at byte {} arrived when {expected} bytes were expected",
                        info.offset
                    )));
                }
                progress.add(payload.len() as u64);
                sink.body(&payload).await?;
            }
            Body::End(end) if status.is_some() => {
                // Every chunk came in order, or receiving stopped at the first
                // that did not; so the digest was taken on the way.
                let Some(digest) = check.digest() else {
                    return Err(SendError::Integrity(
                        "response chunks arrived out of order".into(),
                    ));
                };
                if let Err(fault) = check.verify_end(&end, &digest) {
                    return Err(body_fault(fault, Checked::End(&end)));
                }
                let received = check.received();
                let written = sink.commit().await?;
                progress.finish();
                report.bytes_received = received;
                report.digest_verified = true;
                show.info(|| {
                    let decoded = match written == received {
                        true => String::new(),
                        false => format!(", {written} bytes once decoded"),
                    };
                    format!(
                        "{received} bytes received, SHA-256 {} verified{decoded}",
                        hex(&digest)
                    )
                });
                log::info!(
                    "job {job}: {received} bytes received in {:.2} s, SHA-256 {} verified",
                    started.elapsed().as_secs_f64(),
                    hex(&digest)
                );
                return Ok(Outcome { job, status });
            }
            other => {
                return Err(SendError::Integrity(format!(
                    "unexpected reply record {}: {other:?}",
                    frame.seq
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::chunker::Chunker;
    use crate::send::types::ResponseOptions;
    use std::path::Path;

    fn frames_of(job: JobId, status: u16, body: &[u8]) -> Vec<Reply> {
        frames_with(job, status, vec![], body)
    }

    fn frames_with(
        job: JobId,
        status: u16,
        headers: Vec<(String, String)>,
        body: &[u8],
    ) -> Vec<Reply> {
        let mut out = vec![Reply::Frame(
            Frame {
                job,
                seq: 0,
                body: Body::ResponseStart(crate::protocol::wire::ResponseStart {
                    status,
                    headers,
                    body_len: Some(body.len() as u64),
                }),
            },
            vec![],
        )];
        let mut c = Chunker::new(job, 1);
        for piece in body.chunks(4) {
            let ch = c.chunk(piece.to_vec());
            out.push(Reply::Frame(ch.frame, ch.payload));
        }
        out.push(Reply::Frame(c.finish(), vec![]));
        out
    }

    fn config() -> Settings {
        Settings {
            kafka: crate::kafka::Config {
                bootstrap_servers: "127.0.0.1:9".into(),
                request_topic: "rq".into(),
                response_topic: "rs".into(),
                timeout: Duration::from_secs(5),
                chunk_size: 1024,
                security: Default::default(),
                client_id: "test".into(),
            },
            timeout: Duration::from_secs(5),
            signer: None,
        }
    }

    async fn receive_all(items: Vec<Reply>, output: &Path) -> Result<Outcome, SendError> {
        receive_with(
            items,
            output,
            &ResponseOptions::default(),
            &mut Report::default(),
        )
        .await
    }

    async fn receive_with(
        items: Vec<Reply>,
        output: &Path,
        options: &ResponseOptions,
        report: &mut Report,
    ) -> Result<Outcome, SendError> {
        let job = match &items[0] {
            Reply::Frame(f, _) => f.job,
            _ => unreachable!(),
        };
        let (tx, mut rx) = mpsc::channel(items.len() + 1);
        for i in items {
            tx.send(i).await.unwrap();
        }
        let sink = Destination::open(Some(output), options)?;
        receive(
            sink,
            Show::default(),
            &config(),
            job,
            VecDeque::new(),
            &mut rx,
            report,
        )
        .await
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn the_head_goes_before_the_body_and_to_its_own_file_and_a_second_answer_replaces_both() {
        let job = JobId::new();
        let dir = tempfile::tempdir().unwrap();
        let (out, head) = (dir.path().join("out.txt"), dir.path().join("head.txt"));
        let options = ResponseOptions {
            include: true,
            dump_header: Some(head.clone()),
            compressed: false,
        };
        let first = pairs(&[("x-try", "1"), ("set-cookie", "a=1"), ("set-cookie", "b=2")]);
        let mut items = frames_with(job, 500, first, b"first answer, cut short");
        items.truncate(3);
        items.extend(frames_with(job, 201, pairs(&[("x-try", "2")]), b"created"));
        let mut report = Report::default();
        let outcome = receive_with(items, &out, &options, &mut report)
            .await
            .unwrap();
        assert_eq!(outcome.status, Some(201));
        let head_text = "HTTP/1.1 201 Created\r\nx-try: 2\r\n\r\n";
        assert_eq!(std::fs::read_to_string(&head).unwrap(), head_text);
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            format!("{head_text}created")
        );
        // What was received and verified is the body, not the head.
        assert_eq!(report.bytes_received, 7);
        assert_eq!(report.headers, Some(pairs(&[("x-try", "2")])));

        // A failed answer leaves neither file.
        let (out, head) = (dir.path().join("bad.txt"), dir.path().join("bad-head.txt"));
        let options = ResponseOptions {
            dump_header: Some(head.clone()),
            ..options
        };
        let mut items = frames_of(job, 200, b"abcdefgh");
        if let Reply::Frame(_, payload) = &mut items[1] {
            payload[0] ^= 1;
        }
        let err = receive_with(items, &out, &options, &mut Report::default())
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 4, "{err}");
        assert!(!out.exists() && !head.exists());
    }

    #[tokio::test]
    async fn a_compressed_body_is_checked_as_sent_and_written_decoded() {
        use std::io::Write as _;
        let text = b"a body that compresses well, well, well, well, well".repeat(50);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&text).unwrap();
        let gz = gz.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.txt");
        let options = ResponseOptions {
            compressed: true,
            ..ResponseOptions::default()
        };
        let headers = pairs(&[("Content-Encoding", "gzip")]);
        let items = frames_with(JobId::new(), 200, headers.clone(), &gz);
        let mut report = Report::default();
        receive_with(items, &out, &options, &mut report)
            .await
            .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), text);
        assert_eq!(report.bytes_received, gz.len() as u64);
        assert!(report.digest_verified);

        // Cut short, with a matching digest: verified, yet not decodable.
        let cut = &gz[..gz.len() - 10];
        let items = frames_with(JobId::new(), 200, headers.clone(), cut);
        let err = receive_with(items, &out, &options, &mut Report::default())
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 61, "{err}");
        assert_eq!(std::fs::read(&out).unwrap(), text, "the old file stays");

        // Without --compressed, the bytes as sent.
        let items = frames_with(JobId::new(), 200, headers, &gz);
        receive_with(
            items,
            &out,
            &ResponseOptions::default(),
            &mut Report::default(),
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), gz);
    }

    #[tokio::test]
    async fn a_second_answer_after_a_partial_one_replaces_it() {
        let job = JobId::new();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.bin");
        let mut items = frames_of(job, 200, b"first answer, cut short");
        items.truncate(3); // start and two chunks, then the portal died
        items.extend(frames_of(job, 201, b"second answer, complete"));
        let outcome = receive_all(items, &out).await.unwrap();
        assert_eq!(outcome.status, Some(201));
        assert_eq!(std::fs::read(&out).unwrap(), b"second answer, complete");
    }

    #[tokio::test]
    async fn duplicates_are_ignored_and_an_error_is_final_whatever_its_number() {
        let job = JobId::new();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.bin");
        let mut items = frames_of(job, 200, b"abcdefgh");
        let dup = match &items[1] {
            Reply::Frame(f, p) => Reply::Frame(f.clone(), p.clone()),
            _ => unreachable!(),
        };
        items.insert(2, dup);
        receive_all(items, &out).await.unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"abcdefgh");

        let mut items = frames_of(job, 200, b"abcdefgh");
        items.truncate(2);
        items.push(Reply::Frame(
            Frame {
                job,
                seq: 0,
                body: Body::Error(crate::protocol::Failure {
                    category: ErrorCategory::UpstreamTimeout,
                    message: "took too long".into(),
                }),
            },
            vec![],
        ));
        let err = receive_all(items, &dir.path().join("err.bin"))
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 5, "{err}");
        assert!(!dir.path().join("err.bin").exists());
    }

    /// Receives `abcdefgh` in chunks of 4 (records: start, two chunks, end),
    /// after `damage`; what fails, and whether the output appeared.
    async fn damaged(damage: impl FnOnce(&mut Vec<Reply>)) -> (SendError, bool) {
        let mut items = frames_of(JobId::new(), 200, b"abcdefgh");
        damage(&mut items);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.bin");
        let err = receive_all(items, &out).await.unwrap_err();
        (err, out.exists())
    }

    fn frame_at(items: &mut [Reply], i: usize) -> (&mut Frame, &mut Vec<u8>) {
        match &mut items[i] {
            Reply::Frame(f, p) => (f, p),
            _ => unreachable!(),
        }
    }

    #[tokio::test]
    async fn a_damaged_body_fails_with_what_is_wrong_and_leaves_no_output() {
        let (err, written) = damaged(|items| frame_at(items, 2).1[0] ^= 1).await;
        assert_eq!(
            err.to_string(),
            "integrity check failed: response chunk at byte 4 failed its CRC32C check"
        );
        assert_eq!((err.exit_code(), written), (4, false));

        // In sequence by record number, but not where the body goes on.
        for (offset, expected) in [(8, 4), (0, 4)] {
            let (err, written) = damaged(|items| {
                if let Body::Chunk(info) = &mut frame_at(items, 2).0.body {
                    info.offset = offset;
                }
            })
            .await;
            assert_eq!(
                err.to_string(),
                format!("integrity check failed: response chunk at byte {offset} arrived when {expected} bytes were expected")
            );
            assert_eq!((err.exit_code(), written), (4, false));
        }

        let (err, written) = damaged(|items| {
            if let Body::End(end) = &mut frame_at(items, 3).0.body {
                end.total_len = 9;
            }
        })
        .await;
        assert_eq!(
            err.to_string(),
            "integrity check failed: response is 8 bytes in 2 chunks, the portal sent 9 bytes in 2"
        );
        assert_eq!((err.exit_code(), written), (4, false));

        let (err, written) = damaged(|items| {
            if let Body::End(end) = &mut frame_at(items, 3).0.body {
                end.chunks = 3;
            }
        })
        .await;
        assert_eq!(
            err.to_string(),
            "integrity check failed: response is 8 bytes in 2 chunks, the portal sent 8 bytes in 3"
        );
        assert_eq!((err.exit_code(), written), (4, false));

        let (err, written) = damaged(|items| {
            if let Body::End(end) = &mut frame_at(items, 3).0.body {
                end.sha256 = [7; 32];
            }
        })
        .await;
        let computed = hex(&<sha2::Sha256 as sha2::Digest>::digest(b"abcdefgh"));
        assert_eq!(
            err.to_string(),
            format!(
                "integrity check failed: response SHA-256 {computed} does not match the portal's {}",
                "07".repeat(32)
            )
        );
        assert_eq!((err.exit_code(), written), (4, false));
    }
}
