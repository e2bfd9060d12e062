//! The upload: a [`Link`] to both topics, and [`transmit`], which notes where
//! the reply partition ends, starts following it, then produces the start
//! record, the body's chunks through a produce window, and the end record.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::kafka::compression::Codec;
use crate::kafka::partitioner::partition_for_key;
use crate::kafka::window::ProduceWindow;
use crate::kafka::{self, KafkaError, PartitionCache};
use crate::protocol::chunker::{Chunker, MAX_CHUNK_SIZE};
use crate::protocol::digest::{Digest, DigestKind};
use crate::protocol::seal::{seal_start, JobKeys, RecordKey, NONCE_BYTES, OVERHEAD};
use crate::protocol::wire::{self, Body, Frame, JobId, RequestStart};
use crate::protocol::ErrorCategory;
use crate::send::destination::Destination;
use crate::send::job_key;
use crate::send::landed::{self, Answered, Landed};
use crate::send::reply::{
    error_from_portal, receive, Follower, Reply, MAX_EARLY, WAIT_CLOCK_SLACK,
};
use crate::send::request::{open_body, replayable, BodyReader, Prepared};
use crate::send::sealed::Reading;
use crate::send::types::SendTrace;
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

/// Uploads the request and, unless it is not to be waited for, receives
/// the answer. With `resume`, the job's records already in the request
/// topic are found first ([`landed::find`]) and only what is missing is
/// produced; an upload broken by a lost connection is resumed that way
/// too, at most [`MAX_AUTO_RESUMES`] times.
#[allow(clippy::too_many_arguments)]
pub(super) async fn transmit(
    link: &Link,
    mut prepared: Prepared,
    body_digest: Option<Digest>,
    sink: Option<Destination>,
    request: &Request,
    cfg: &Settings,
    report: &mut Report,
    resume: Option<JobId>,
) -> Result<Outcome, SendError> {
    let mut body = open_body(&prepared).await?;
    let kcfg = &cfg.kafka;
    let (req_parts, resp_parts) = (link.request_partitions, link.reply_partitions);

    // A new job's id is a fresh ULID (`JobId::default`).
    let job = resume.unwrap_or_default();
    report.job = Some(job);
    report.marks.upload = Some(SystemTime::now());
    report.trace_id = Some(prepared.trace.context.parent.trace_id.to_string());
    let show = request.show;
    let key = job.key();
    let mut reply_partition = partition_for_key(&key, resp_parts);
    let request_partition = partition_for_key(&key, req_parts);
    let request_pc = link.requests.get(request_partition).await?;
    let shown = body_name(request);

    let mut landed = Landed::default();
    // What a resume found, told once the portal is known not to have
    // answered the job already.
    let mut found_note = None;
    // A sealed job's keys, from the secret the send that started it kept:
    // they open what it left in the request topic.
    let mut resumed_keys: Option<Arc<JobKeys>> = None;
    if resume.is_some() {
        report.resumed += 1;
        if cfg.seal_to.is_some() {
            let secret = job_key::read(key_dir(cfg)?, job)?;
            resumed_keys = secret.map(|s| Arc::new(s.keys(job)));
        }
        let to = request_pc.end_offset().await?;
        let from = request_pc.offset_since(clock_slack_before(job)).await?;
        let has_body = body.is_some();
        landed = landed::find(
            &link.settings,
            request_partition,
            job,
            from,
            to,
            &prepared,
            &shown,
            resumed_keys.as_ref().map(|k| &k.request),
            |start| same_request(job, start, &prepared, has_body),
        )
        .await?;
        sealed_as_resumed(job, cfg, &landed, resumed_keys.is_some())?;
        // Chunks out of place are refused before anything is said or sent.
        chunk_size(job, &landed, &prepared, kcfg.chunk_size)?;
        match &landed.start {
            Some((start, _)) => {
                if start.reply_topic != kcfg.response_topic {
                    return Err(usage(format!(
                        "job {job} is answered on topic '{}', not '{}': resume it with --response-topic {} (KAFKA_RESPONSE_TOPIC)",
                        start.reply_topic, kcfg.response_topic, start.reply_topic
                    )));
                }
                if !(0..resp_parts).contains(&start.reply_partition) {
                    return Err(usage(format!(
                        "job {job} is answered on partition {} of topic '{}', which has {resp_parts}",
                        start.reply_partition, start.reply_topic
                    )));
                }
                reply_partition = start.reply_partition;
                report.bytes_found = landed.bytes();
                // The start record is not produced again, so the portal
                // continues the trace it carries: this run does too.
                if let Some(found) = landed.trace.take() {
                    prepared.trace = SendTrace::under(found);
                    report.trace_id = Some(prepared.trace.context.parent.trace_id.to_string());
                    report.continued = Some(prepared.trace.clone());
                }
                let what = match (&landed.end, prepared.body_len) {
                    (Some(_), _) => "its request is wholly in the request topic already: nothing is sent again".to_string(),
                    (None, Some(total)) => format!(
                        "{} of {total} body bytes are in the request topic already, checked against {shown}; sending the rest",
                        report.bytes_found
                    ),
                    (None, None) => "its start record is in the request topic; sending the rest".to_string(),
                };
                found_note = Some(what);
            }
            None if !landed.chunks.is_empty() || landed.end.is_some() => {
                let kept = request_pc.start_offset().await?;
                return Err(usage(format!(
                    "job {job}: some of its chunks are in partition {request_partition} of the request topic but its start record is not{}; it cannot be resumed: send the request again without --resume",
                    if kept > 0 && kept >= from {
                        format!(" (records below offset {kept} were deleted by the topic's retention)")
                    } else {
                        String::new()
                    }
                )));
            }
            None => show.notice(Notice::Resumed {
                job,
                what: "nothing of this job is in the request topic; uploading it from the start under this id",
            }),
        }
    }
    // A resumed job keeps the digest it was started with, whatever --digest
    // says now; a sealed job's is always BLAKE3.
    let digest = match (&landed.start, &cfg.seal_to) {
        (Some((start, _)), _) => start.digest,
        (None, Some(_)) => DigestKind::Blake3,
        (None, None) => cfg.digest,
    };
    log::debug!(
        "job {job}: request partition {request_partition}, reply partition {reply_partition}, {} digest",
        digest.label()
    );

    // The start record is made (and a sealed job's secret kept on disk)
    // before anything is produced or followed: the reader of the answer
    // opens what it reads with the job's keys.
    let mut reading = Reading::Clear;
    let mut sealing = None;
    let start_record = match &landed.start {
        // Found: not produced, nor signed, again. Its signature covers
        // the body's digest, which the chunks checked against the body,
        // and the end record computed from it, keep.
        Some(_) => {
            if let (true, Some(keys), Some(to)) = (landed.sealed, &resumed_keys, &cfg.seal_to) {
                // The key the job was sealed to, which --seal-to may no
                // longer name (the portal's keys rotated since).
                let id = landed.key_id.unwrap_or(to.id());
                show.info(|| {
                    format!("job {job}: sealed to portal key {id}, as its start record says")
                });
                report.sealed = Some(id.to_string());
                reading = Reading::Sealed(keys.clone());
                sealing = Some(keys.clone());
            }
            None
        }
        None => {
            let start = RequestStart {
                method: prepared.method.clone(),
                path: prepared.path.clone(),
                headers: prepared.headers.clone(),
                body_len: prepared.body_len,
                has_body: body.is_some(),
                reply_topic: kcfg.response_topic.clone(),
                reply_partition,
                digest,
            };
            let reply_to = (
                wire::REPLY_TO_HEADER,
                wire::reply_to_header(&kcfg.response_topic, reply_partition),
            );
            // Outside the frame and the signature, as OpenTelemetry's Kafka
            // instrumentation carries it: a portal that knows nothing of
            // traces ignores it (PROTOCOL.md "Trace context").
            let mut headers = prepared.trace.context.headers();
            if let Some(signer) = &cfg.signer {
                let signature = signer
                    .sign(
                        job,
                        &kcfg.request_topic,
                        request_partition,
                        &start,
                        body_digest,
                        crate::protocol::signing::unix_now(),
                    )
                    .map_err(|e| usage(e.to_string()))?;
                headers.push((wire::SIGNATURE_HEADER, signature.into_bytes()));
            }
            match &cfg.seal_to {
                None => {
                    let mut all = vec![reply_to];
                    all.extend(headers);
                    let frame = Frame {
                        job,
                        seq: 0,
                        body: Body::RequestStart(start),
                    };
                    Some(kafka::record_in(digest, &frame, &[], &all))
                }
                Some(to) => {
                    // Signed first, over the clear start, then sealed with
                    // it (PROTOCOL.md section 11.5).
                    let sealed_headers = headers
                        .into_iter()
                        .map(|(name, value)| (name.to_string(), value))
                        .collect();
                    let (value, secret, keys) = seal_start(
                        to,
                        job,
                        &start,
                        sealed_headers,
                        &kcfg.request_topic,
                        request_partition,
                    )
                    .map_err(|e| usage(format!("--seal-to (KAFKASEND_SEAL_TO): {e}")))?;
                    // A resumed job of which nothing landed gets a new
                    // secret: the one kept, if any, opens nothing.
                    let file = job_key::write(
                        key_dir(cfg)?,
                        job,
                        &secret,
                        resume.is_some(),
                        request.no_wait,
                    )?;
                    let id = to.id();
                    show.info(|| {
                        format!(
                            "job {job}: sealed to portal key {id}; its secret is kept in {} until the answer is read",
                            file.display()
                        )
                    });
                    report.sealed = Some(id.to_string());
                    let keys = Arc::new(keys);
                    reading = Reading::Sealed(keys.clone());
                    sealing = Some(keys);
                    Some(kafka::record_of_value(job, value, &[reply_to]))
                }
            }
        }
    };

    // Where to follow the answer from. A new job's answer lands after the
    // end noted now, before anything is produced, however quick it is; a
    // resumed one's may be there already (an Error, when the portal
    // dropped the partial job), so its reply partition is read from the
    // job's time, as `wait` reads it.
    let mut answered = Answered::default();
    let reply_from = if landed.start.is_some() {
        let reply_pc = link.replies.get(reply_partition).await?;
        let to = reply_pc.end_offset().await?;
        let from = reply_pc.offset_since(clock_slack_before(job)).await?;
        answered =
            landed::answered(&link.settings, reply_partition, job, from, to, &reading).await?;
        if let Some(failure) = answered.error.take() {
            return Err(answered_already(job, failure.category, failure.message));
        }
        if let Some(what) = &found_note {
            show.notice(Notice::Resumed { job, what });
        }
        Some(from)
    } else if sink.is_some() {
        Some(
            link.replies
                .get(reply_partition)
                .await?
                .end_offset()
                .await?,
        )
    } else {
        None
    };
    let mut waiting = match (sink, reply_from) {
        (Some(sink), Some(from)) => {
            let follower = Follower::spawn(
                &link.settings,
                &kcfg.response_topic,
                reply_partition,
                from,
                job,
                reading,
            );
            Some((sink, follower))
        }
        _ => None,
    };
    let trace_id = prepared.trace.context.parent.trace_id;
    log::debug!(
        "job {job}: trace_id={trace_id} span_id={} parent={}",
        prepared.trace.context.parent.parent_id,
        prepared
            .trace
            .parent
            .map_or_else(|| "none".into(), |p| p.to_string())
    );
    show.info(|| format!("job {job}: trace_id={trace_id}"));
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

    let start_at = match start_record {
        Some(record) => request_pc.produce(record).await?,
        None => landed.start.as_ref().map_or(0, |(_, offset)| *offset),
    };

    let complete = landed.end.is_some() || answered.response;
    if let Some(mut reader) = body.take().filter(|_| !complete) {
        let replay = replayable(&prepared);
        // A body of one chunk is produced in one call: nothing to resume.
        if prepared
            .body_len
            .is_some_and(|n| n > kcfg.chunk_size as u64)
        {
            show.notice(Notice::Uploading {
                job,
                bytes: prepared.body_len,
                resumable: replay,
            });
        }
        let upload_started = Instant::now();
        let progress = Progress::new("upload", prepared.body_len, show.progress);
        let mut partition = request_pc;
        let mut first_failure: Option<Instant> = None;
        let mut resumes = 0;
        let compressed: String;
        loop {
            let mut place = Place {
                job,
                partition: &partition,
                landed: &landed,
                chunk_size: chunk_size(job, &landed, &prepared, kcfg.chunk_size)?,
                waiting: &mut waiting,
                progress: &progress,
                compression: cfg.compression,
                digest,
                seal: sealing.as_ref().map(|keys| &keys.request),
            };
            let failed = match place.body(&mut reader, &prepared, report).await {
                Ok(how) => {
                    compressed = how;
                    break;
                }
                Err(SendError::Kafka(e)) if e.passes() && replay => e,
                Err(e) => return Err(e),
            };
            let since = *first_failure.get_or_insert_with(Instant::now);
            if resumes >= MAX_AUTO_RESUMES || since.elapsed() >= AUTO_RESUME_WITHIN {
                return Err(failed.into());
            }
            resumes += 1;
            report.resumed += 1;
            let why = failed.to_string();
            log::info!(
                "job {job}: {why}; resuming the upload ({resumes} of at most {MAX_AUTO_RESUMES})"
            );
            let deadline = since + AUTO_RESUME_WITHIN;
            (partition, landed) = loop {
                let found = async {
                    let partition = reopen(link, request_partition, deadline).await?;
                    let to = partition.end_offset().await?;
                    let found = landed::find(
                        &link.settings,
                        request_partition,
                        job,
                        start_at,
                        to,
                        &prepared,
                        &shown,
                        sealing.as_ref().map(|k| &k.request),
                        |_| Ok(()),
                    )
                    .await?;
                    Ok::<_, SendError>((partition, found))
                };
                match found.await {
                    Ok(found) => break found,
                    Err(SendError::Kafka(e)) if e.passes() && Instant::now() < deadline => {
                        log::info!("job {job}: finding what landed: {e}; trying again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => return Err(e),
                }
            };
            let what = format!(
                "the upload broke ({why}); resumed ({resumes} of at most {MAX_AUTO_RESUMES}) with {} body bytes in the request topic",
                landed.bytes()
            );
            show.notice(Notice::Resumed { job, what: &what });
            progress.reset();
            reader = open_body(&prepared)
                .await?
                .ok_or_else(|| SendError::Io("the body went away".into()))?;
        }
        progress.finish();
        let secs = upload_started.elapsed().as_secs_f64();
        log::info!(
            "job {job}: sent {} bytes in {secs:.2} s ({:.1} MB/s), {compressed}",
            report.bytes_sent,
            report.bytes_sent as f64 / 1e6 / secs.max(1e-9)
        );
    }

    report.request_sent = true;
    report.marks.sent = Some(SystemTime::now());
    show.info(|| format!("request sent: {} body bytes", report.bytes_sent));

    let Some((sink, mut follower)) = waiting else {
        return Ok(Outcome { job, status: None });
    };
    // A clear Error ends `send` (the secret stays, for `wait`).
    receive(
        sink,
        show,
        cfg,
        job,
        Some(digest),
        &mut follower,
        report,
        false,
    )
    .await
}

/// Most times one run resumes an upload broken by a lost connection.
const MAX_AUTO_RESUMES: u32 = 3;

/// Automatic resumes end this long after the first failure of the upload.
const AUTO_RESUME_WITHIN: Duration = Duration::from_secs(120);

/// Where one pass over the body goes, and what it may skip.
struct Place<'a> {
    job: JobId,
    partition: &'a kafka::Partition,
    /// The chunks already in the request topic: read and hashed, not produced.
    landed: &'a Landed,
    chunk_size: usize,
    /// The answer's destination and follower, watched for an early refusal.
    waiting: &'a mut Option<(Destination, Follower)>,
    progress: &'a Progress,
    /// How the chunk records may be compressed.
    compression: Codec,
    /// The job's body digest, and so its frames' version.
    digest: DigestKind,
    /// A sealed job's request key: chunks and end record are sealed with it.
    seal: Option<&'a RecordKey>,
}

impl Place<'_> {
    /// One pass over the body from its start: every chunk read and hashed,
    /// those not yet in the request topic produced (a few in flight), then
    /// the end record; says how its chunks were compressed. Stops early
    /// when the portal refuses the job.
    async fn body(
        &mut self,
        reader: &mut BodyReader,
        prepared: &Prepared,
        report: &mut Report,
    ) -> Result<String, SendError> {
        let job = self.job;
        let mut chunker = Chunker::new(job, 1, self.digest);
        let capacity = produce_window(self.chunk_size);
        let mut window = ProduceWindow::new(self.partition, capacity).compressing(self.compression);
        // Lengths of the chunks in flight, oldest first.
        let mut in_flight: VecDeque<u64> = VecDeque::with_capacity(capacity);
        let mut read_all = false;
        loop {
            if !read_all && window.has_room() {
                // Never past the declared length: a file that grows while it
                // is sent is refused when its declared bytes are read, not
                // sent on for as long as it grows.
                let size = match prepared.body_len {
                    Some(declared) => {
                        let left = declared.saturating_sub(chunker.bytes());
                        left.min(self.chunk_size as u64) as usize
                    }
                    None => self.chunk_size,
                };
                if size == 0 {
                    let mut probe = Vec::with_capacity(1);
                    reader
                        .read_chunk(&mut probe, 1)
                        .await
                        .map_err(|e| SendError::Io(format!("reading the body failed: {e}")))?;
                    if !probe.is_empty() {
                        return Err(SendError::Io(format!(
                            "the file changed while it was sent (it grew past the {} bytes it had when the upload began)",
                            chunker.bytes()
                        )));
                    }
                    read_all = true;
                    continue;
                }
                // Read the next chunk, straight into its record, while the
                // ones before it are in flight.
                let read = match self.seal {
                    None => {
                        let mut value = chunker.next_value(size);
                        window
                            .alongside(reader.read_chunk(value.buf_mut(), size))
                            .await
                            .map_err(|e| SendError::Io(format!("reading the body failed: {e}")))?;
                        let len = value.payload().len() as u64;
                        match len {
                            0 => None,
                            _ => Some((chunker.seal(value), len)),
                        }
                    }
                    Some(key) => {
                        let mut value = sealed_chunk_value(job, &chunker, size);
                        let at = value.len();
                        window
                            .alongside(reader.read_chunk(&mut value, size))
                            .await
                            .map_err(|e| SendError::Io(format!("reading the body failed: {e}")))?;
                        let plain = &value[at..];
                        let len = plain.len() as u64;
                        match len {
                            0 => None,
                            _ => {
                                let frame = chunker.take(plain);
                                key.seal_in_place(&mut value, at - NONCE_BYTES, &[]);
                                Some(((frame, value), len))
                            }
                        }
                    }
                };
                let Some(((frame, value), len)) = read else {
                    read_all = true;
                    continue;
                };
                if let Some(found) = self.landed.chunks.get(&frame.seq) {
                    let crc = match &frame.body {
                        Body::Chunk(info) => info.crc32c,
                        _ => 0,
                    };
                    if found.len != len || found.crc32c != crc {
                        return Err(SendError::Io(format!(
                            "job {job}: the body changed while it was resumed (chunk {} differs from the one checked moments ago)",
                            frame.seq
                        )));
                    }
                    self.progress.add(len);
                    continue;
                }
                in_flight.push_back(len);
                window.push_value(frame.job, value);
                continue;
            }
            let Some(acked) = window.next().await else {
                break;
            };
            acked?;
            let len = in_flight.pop_front().unwrap_or(0);
            self.progress.add(len);
            report.bytes_sent += len;
            // A portal that refuses the job says so at once; stop uploading then.
            let Some((_, follower)) = self.waiting.as_mut() else {
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
        let end = chunker.finish();
        let record = match self.seal {
            None => kafka::record_in(self.digest, &end, &[], &[]),
            Some(key) => {
                kafka::record_of_value(job, key.seal_clear(&end, &[], Vec::new(), &[]), &[])
            }
        };
        self.partition.produce(record).await?;
        Ok(window.compression())
    }
}

/// The folder of job key files, which a sealed job needs.
fn key_dir(cfg: &Settings) -> Result<&std::path::Path, SendError> {
    cfg.job_key_dir.as_deref().ok_or_else(|| {
        usage(format!(
            "a sealed job keeps its secret in {}, and neither it nor HOME is set: set it to a private folder",
            job_key::DIR_SETTING
        ))
    })
}

/// Refuses to resume a job sealed otherwise than this run would: sealed
/// records that did not open (no `--seal-to`, no job key file, or another
/// secret), or a clear start when `--seal-to` is given.
fn sealed_as_resumed(
    job: JobId,
    cfg: &Settings,
    landed: &Landed,
    have_secret: bool,
) -> Result<(), SendError> {
    let again = "it cannot be resumed: send the request again without --resume";
    if landed.unopened > 0 {
        let file = || {
            cfg.job_key_dir
                .as_deref()
                .map(|d| job_key::path(d, job).display().to_string())
                .unwrap_or_default()
        };
        return Err(usage(match (&cfg.seal_to, have_secret) {
            (None, _) => format!(
                "job {job} is sealed: resume it with --seal-to (KAFKASEND_SEAL_TO), the job key file of the send that started it in place"
            ),
            (Some(_), false) => format!(
                "job {job} is sealed and its secret is not in {}; {again}",
                file()
            ),
            (Some(_), true) => format!(
                "job {job}: {} of its sealed records in the request topic do not open with the secret in {}; {again}",
                landed.unopened,
                file()
            ),
        }));
    }
    if landed.start.is_some() && cfg.seal_to.is_some() && !landed.sealed {
        return Err(usage(format!(
            "job {job} was sent in clear: resume it without --seal-to (KAFKASEND_SEAL_TO)"
        )));
    }
    Ok(())
}

/// An empty sealed chunk record for the chunker's next chunk: the header,
/// then room for the nonce; up to `size` bytes are read in after it, and
/// sealed where they lie (no copy), the tag appended.
fn sealed_chunk_value(job: JobId, chunker: &Chunker, size: usize) -> Vec<u8> {
    let frame = Frame {
        job,
        seq: chunker.next_seq(),
        body: Body::SealedChunk(wire::SealedChunk {
            offset: chunker.bytes(),
        }),
    };
    let mut value = wire::encode_in(DigestKind::Blake3, &frame, &[]);
    // Room for the tag, and for a reader's last probe for more, so the
    // buffer never grows (and so never copies) once read into.
    value.reserve(NONCE_BYTES + size + OVERHEAD + 64);
    value.resize(value.len() + NONCE_BYTES, 0);
    value
}

/// The chunk size of an upload: that of the chunks already in the request
/// topic, which the rest must match, else the configured one.
fn chunk_size(
    job: JobId,
    landed: &Landed,
    prepared: &Prepared,
    configured: usize,
) -> Result<usize, SendError> {
    let Some(found) = landed.chunk_size(job, prepared.body_len.unwrap_or(0))? else {
        return Ok(configured);
    };
    match usize::try_from(found) {
        Ok(n) if n <= MAX_CHUNK_SIZE => {
            if n != configured {
                log::info!("job {job}: continuing with the chunks' size in the request topic, {n} bytes");
            }
            Ok(n)
        }
        _ => Err(SendError::Integrity(format!(
            "job {job}: its chunks in the request topic are {found} bytes long, more than any chunk size send uses"
        ))),
    }
}

/// A new connection to the request partition after the old one failed,
/// tried again until `deadline` while the failure is one that passes.
async fn reopen(
    link: &Link,
    partition: i32,
    deadline: Instant,
) -> Result<kafka::Partition, SendError> {
    loop {
        let opened = match kafka::connect(&link.settings).await {
            Ok(cluster) => {
                cluster
                    .partition(&link.settings.request_topic, partition)
                    .await
            }
            Err(e) => Err(e),
        };
        match opened {
            Ok(p) => return Ok(p),
            Err(e) if e.passes() && Instant::now() < deadline => {
                log::info!("reconnecting to Kafka: {e}; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The Unix time in milliseconds from which a job's records are looked
/// for: its id's time, less the clocks' possible disagreement.
fn clock_slack_before(job: JobId) -> u64 {
    job.timestamp_ms()
        .saturating_sub(WAIT_CLOCK_SLACK.as_millis() as u64)
}

/// How the body is named in messages: its file, or what made it.
fn body_name(request: &Request) -> String {
    match (
        &request.file,
        request.data_binary.first(),
        request.data.first(),
    ) {
        (Some(file), _, _) => file.display().to_string(),
        (None, Some(d), _) | (None, None, Some(d)) if d.starts_with('@') => d[1..].to_string(),
        _ => "the body given".to_string(),
    }
}

/// Refuses to resume a job whose start record is another request's: the
/// portal would call the API with the start record found, so the flags
/// given must describe the same request.
fn same_request(
    job: JobId,
    found: &RequestStart,
    prepared: &Prepared,
    has_body: bool,
) -> Result<(), SendError> {
    let mut differs = Vec::new();
    if found.method != prepared.method {
        differs.push(format!(
            "method {} (here {})",
            found.method, prepared.method
        ));
    }
    if found.path != prepared.path {
        differs.push(format!("endpoint {} (here {})", found.path, prepared.path));
    }
    if found.has_body != has_body || found.body_len != prepared.body_len {
        let len = |l: Option<u64>, b: bool| match (l, b) {
            (_, false) => "none".to_string(),
            (Some(n), true) => format!("{n} bytes"),
            (None, true) => "of unknown length".to_string(),
        };
        differs.push(format!(
            "body {} (here {})",
            len(found.body_len, found.has_body),
            len(prepared.body_len, has_body)
        ));
    }
    if differs.is_empty() {
        return Ok(());
    }
    Err(usage(format!(
        "job {job} in the request topic is a different request: {}; resume it with the flags and body it was started with",
        differs.join(", ")
    )))
}

/// The error for a resumed job the portal has answered with an Error
/// already: nothing more is produced for it.
fn answered_already(job: JobId, category: ErrorCategory, message: String) -> SendError {
    let hint = if message.contains("PORTAL_JOB_IDLE_TIMEOUT_SECS") {
        "; a portal keeps a partial upload only while its records keep coming within PORTAL_JOB_IDLE_TIMEOUT_SECS (300 s by default): send the request again without --resume"
    } else {
        ""
    };
    error_from_portal(
        category,
        format!("job {job} cannot be resumed, the portal answered it already: {message}{hint}"),
    )
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
