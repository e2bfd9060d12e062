//! Following the reply partition and receiving the answer: a reader task
//! passes this job's records on ([`follow_replies`], owned by a
//! [`Follower`]), and [`receive`] takes them in order, checks the body as it
//! streams to the output, and turns a portal's error or a silent partition
//! into a [`SendError`]. A job answered more than once at the same time
//! (two portals ran it) has its answers told apart by attempt
//! ([`crate::send::attempts`]): one is followed, and another taken instead,
//! read again from its start, when the followed one fails or stalls.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::kafka::fetcher::Fetcher;
use crate::kafka::partitioner::partition_for_key;
use crate::kafka::record_batch::Item;
use crate::kafka::{self, KafkaError};
use crate::protocol::body::{BodyCheck, BodyFault};
use crate::protocol::digest::{Digest, DigestKind};
use crate::protocol::trace;
use crate::protocol::wire::{self, Body, ChunkInfo, EndInfo, Frame, JobId};
use crate::protocol::ErrorCategory;
use crate::send::attempts::{Attempt, Attempts, Kind, Reason, Whose};
use crate::send::destination::Destination;
use crate::send::sealed::{is_unauthenticated, Reading};
use crate::send::types::{Notice, Outcome, SendError, Settings, Show, Verbose};
use crate::send::ui::{Progress, Report};

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Most reply records held while the upload runs (see [`Follower::hold`]).
pub(super) const MAX_EARLY: usize = 64;

/// Where [`receive`] takes a job's reply items from: in partition order,
/// and again from an earlier offset when asked.
pub(super) trait Replies {
    /// The next item; `None` once the reader has stopped.
    async fn next(&mut self) -> Option<Reply>;
    /// Reads the reply partition again from `offset`; items not yet taken
    /// are dropped.
    fn reread_from(&mut self, offset: i64);
}

/// The reader of one job's reply partition: a task running
/// [`follow_replies`] until this is dropped, the channel it passes items
/// through, and the items taken early (during the upload) to be received
/// first.
pub(super) struct Follower {
    settings: kafka::Config,
    topic: String,
    partition: i32,
    job: JobId,
    /// Bound on each fetch, as the settings give it.
    limit: Duration,
    /// How the job's records are read (opened, for a sealed job).
    reading: Reading,
    rx: mpsc::Receiver<Reply>,
    /// Stops the task however the follower is dropped: left running, it
    /// would long-poll the broker for nothing.
    _task: AbortOnDrop,
    /// At most [`MAX_EARLY`].
    early: VecDeque<Reply>,
}

impl Follower {
    /// Starts following `partition` of `topic` from `from` for `job`.
    pub(super) fn spawn(
        settings: &kafka::Config,
        topic: &str,
        partition: i32,
        from: i64,
        job: JobId,
        reading: Reading,
    ) -> Self {
        let limit = settings.timeout;
        let (rx, task) = start_reader(settings, topic, partition, from, job, limit, &reading);
        Self {
            settings: settings.clone(),
            topic: topic.to_string(),
            partition,
            job,
            limit,
            reading,
            rx,
            _task: task,
            early: VecDeque::new(),
        }
    }

    /// An item that arrived already, if any (used while uploading).
    pub(super) fn try_next(&mut self) -> Option<Reply> {
        self.rx.try_recv().ok()
    }

    /// Keeps `item` to be received first; `false`, with nothing kept, when
    /// [`MAX_EARLY`] are held already.
    pub(super) fn hold(&mut self, item: Reply) -> bool {
        if self.early.len() >= MAX_EARLY {
            return false;
        }
        self.early.push_back(item);
        true
    }
}

/// Spawns [`follow_replies`] with a fresh connection and channel.
fn start_reader(
    settings: &kafka::Config,
    topic: &str,
    partition: i32,
    from: i64,
    job: JobId,
    limit: Duration,
    reading: &Reading,
) -> (mpsc::Receiver<Reply>, AbortOnDrop) {
    let (tx, rx) = mpsc::channel(8);
    let fetcher = Fetcher::new(settings, topic, partition);
    let task = tokio::spawn(follow_replies(
        fetcher,
        from,
        job,
        tx,
        limit,
        reading.clone(),
    ));
    (rx, AbortOnDrop(task))
}

impl Replies for Follower {
    async fn next(&mut self) -> Option<Reply> {
        match self.early.pop_front() {
            Some(item) => Some(item),
            None => self.rx.recv().await,
        }
    }

    fn reread_from(&mut self, offset: i64) {
        // A new reader, not a message to the old one: nothing it had
        // fetched already can slip in after the rewind.
        let (rx, task) = start_reader(
            &self.settings,
            &self.topic,
            self.partition,
            offset,
            self.job,
            self.limit,
            &self.reading,
        );
        self.rx = rx;
        self._task = task;
        self.early.clear();
    }
}

/// One item from the reply reader.
#[derive(Debug, Clone)]
pub(super) enum Reply {
    /// A record of this job.
    Record(Box<Arrived>),
    /// A record of this job that cannot be read: with its attempt and
    /// offset when the record itself was read (its value is what is
    /// wrong), without when its whole batch was unreadable.
    Broken {
        why: String,
        at: Option<(Attempt, i64)>,
    },
    /// Reading the reply partition fails; the reader keeps retrying.
    Trouble(Trouble),
    /// A record of this job that ends the whole wait, whatever other
    /// attempts may bring: a sealed one read without the job's secret.
    Fatal(String),
}

/// A reply record of this job, decoded.
#[derive(Debug, Clone)]
pub(super) struct Arrived {
    pub frame: Frame,
    pub payload: Vec<u8>,
    /// The attempt that wrote it (its `kafkasend-attempt` header).
    pub attempt: Attempt,
    /// Its offset in the reply partition.
    pub offset: i64,
    /// The request headers the portal did not forward: the
    /// `kafkasend-dropped-headers` value of a start record.
    pub dropped: Option<String>,
    /// The trace id of a start record's `traceparent`, when it holds a
    /// valid one.
    pub trace_id: Option<String>,
}

/// Why reading the reply partition failed last.
#[derive(Debug, Clone)]
pub(super) struct Trouble {
    detail: String,
    /// The broker could not be reached, rather than answering with
    /// something unusable.
    unreachable: bool,
}

/// How far before a job's creation `wait` starts looking for its answer:
/// the portal's clock, which stamps the answer, may run behind the sender's.
pub(super) const WAIT_CLOCK_SLACK: Duration = Duration::from_secs(300);

/// Reads the reply partition of `job` from shortly before its time, and
/// receives its answer into `sink`.
pub(super) async fn follow_job(
    job: JobId,
    sink: Destination,
    show: Show,
    cfg: &Settings,
    report: &mut Report,
    reading: Reading,
) -> Result<Outcome, SendError> {
    let kcfg = &cfg.kafka;
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
    let mut follower = Follower::spawn(
        kcfg,
        &kcfg.response_topic,
        reply_partition,
        from,
        job,
        reading,
    );
    receive(sink, show, cfg, job, None, &mut follower, report, true).await
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
    reading: Reading,
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
        // Whether the last record passed on ended an answer.
        let mut last_final = false;
        for item in fetched.items {
            let rec = match item {
                Item::Record(rec) => rec,
                Item::Unreadable(batch) if batch.keys.contains(&key) => {
                    let why = format!("a reply record is unreadable: {}", batch.detail);
                    if tx.send(Reply::Broken { why, at: None }).await.is_err() {
                        return;
                    }
                    last_final = false;
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
            let headers = &rec.record.headers;
            let attempt =
                Attempt::from_header(headers.get(wire::ATTEMPT_HEADER).map(Vec::as_slice));
            let broken = |why: String| Reply::Broken {
                why,
                at: Some((attempt.clone(), rec.offset)),
            };
            let attempt_value = headers.get(wire::ATTEMPT_HEADER).map(Vec::as_slice);
            let value = rec.record.value.as_deref();
            if let Some(why) = value.and_then(|v| reading.without_secret(v, job)) {
                let _ = tx.send(Reply::Fatal(why.to_string())).await;
                return;
            }
            let item = match rec
                .record
                .value
                .as_deref()
                .map(|v| reading.read(v, attempt_value))
            {
                Some(Ok(read)) if read.frame.job == job => {
                    let frame = read.frame;
                    last_final = matches!(frame.body, Body::End(_) | Body::Error(_));
                    let is_start = matches!(frame.body, Body::ResponseStart(_));
                    // A sealed start carries these headers sealed inside it.
                    let header = |name: &str| -> Option<&[u8]> {
                        if !is_start {
                            return None;
                        }
                        match &read.sealed_headers {
                            Some(sealed) => sealed
                                .iter()
                                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                                .map(|(_, v)| v.as_slice()),
                            None => headers.get(name).map(Vec::as_slice),
                        }
                    };
                    let dropped =
                        header(wire::DROPPED_HEADERS_HEADER).and_then(wire::parse_dropped_headers);
                    // A hostile or broken value names no trace; the answer
                    // itself is still good.
                    let trace_id = header(trace::TRACEPARENT)
                        .and_then(|v| trace::TraceParent::parse(v).ok())
                        .map(|tp| tp.trace_id.to_string());
                    Reply::Record(Box::new(Arrived {
                        frame,
                        payload: read.payload,
                        attempt: attempt.clone(),
                        offset: rec.offset,
                        dropped,
                        trace_id,
                    }))
                }
                Some(Ok(_)) => broken("a reply record's key and job id disagree".into()),
                Some(Err(why)) => broken(why),
                None => broken("a reply record has no value".into()),
            };
            if tx.send(item).await.is_err() {
                return;
            }
        }
        // A final record normally ends the answer. Fetch no further while
        // the waiting side finishes, so no long poll is left waiting on the
        // broker for nothing; go on only if it still waits. (Once per fetch,
        // so the final records of answers it passes over cost no more.)
        if last_final {
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(AFTER_FINAL_RECORD) => {}
            }
        }
        from = fetched.next_offset;
    }
}

/// How long the reply reader pauses after a final record before it reads
/// on, for the rare answer that needs more (a second answer, say).
const AFTER_FINAL_RECORD: Duration = Duration::from_secs(1);

/// How long the followed answer may be silent, once another answer to the
/// job has come to its end, before the client takes that one instead.
const STALLED_AFTER: Duration = Duration::from_secs(3);

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
            "response {computed} does not match the portal's {}",
            end.digest
        ),
        // A chunk fails only its CRC, an end record only the rest; should
        // that change, the fault is still reported, if less precisely.
        (fault, _) => format!("response failed its body check: {fault:?}"),
    })
}

/// Whether a failure belongs to the answer followed, so that another
/// attempt's answer may still do: a portal's error, or a broken record or
/// body. Local failures (the output, decoding) end the wait.
fn attempt_failure(e: &SendError) -> bool {
    matches!(
        e,
        SendError::Integrity(_) | SendError::Refused { .. } | SendError::Upstream { .. }
    )
}

/// What ends the wait when no attempt gives a whole answer, in order of
/// preference: an answer the portal gave (an `Error`) before a fault.
#[derive(Default)]
struct Fallback {
    /// The `Error` of the attempt followed last that ended with one.
    followed_error: Option<SendError>,
    /// The first `Error` of another attempt.
    other_error: Option<SendError>,
    /// The first broken record or body, or unreadable batch.
    fault: Option<SendError>,
}

impl Fallback {
    /// Keeps `e`, the followed answer's failure (`is_error`: its `Error`).
    fn keep(&mut self, e: SendError, is_error: bool) {
        match is_error {
            true => self.followed_error = Some(e),
            false => {
                self.fault.get_or_insert(e);
            }
        }
    }

    /// What to report when nothing else is left to wait for.
    fn take(self) -> Option<SendError> {
        self.followed_error.or(self.other_error).or(self.fault)
    }

    /// What to report when the followed answer failed with `e` and there
    /// is no other to take.
    fn settle(self, e: SendError, is_error: bool) -> SendError {
        match is_error {
            true => e,
            false => self
                .followed_error
                .or(self.other_error)
                .or(self.fault)
                .unwrap_or(e),
        }
    }
}

/// How far the answer followed has got.
struct Answer {
    /// The `seq` the next record should have.
    expected_seq: u32,
    /// Set by its start record.
    status: Option<u16>,
    check: BodyCheck,
    progress: Progress,
}

impl Answer {
    fn new() -> Self {
        Self {
            expected_seq: 0,
            status: None,
            // Replaced by the start record, which says the digest.
            check: BodyCheck::new(DigestKind::Sha256),
            progress: Progress::new("download", None, false),
        }
    }
}

/// What a record of the followed answer led to.
enum Step {
    /// Wait for the next.
    More,
    /// The answer is whole: `received` bytes with `digest`, checked.
    Whole { received: u64, digest: Digest },
}

/// One answer being received, and where it goes.
struct Receiving<'a> {
    sink: Destination,
    show: Show,
    report: &'a mut Report,
    job: JobId,
    answer: Answer,
    warned_dropped: bool,
    /// The digest of the request sent, which the answer must use; `None`
    /// for `wait`, which takes the one the answer's start record says.
    expect: Option<DigestKind>,
}

impl Receiving<'_> {
    /// A response's head arrived (the first, or a second answer's): kept
    /// for `--json`, written where `-i` and `-D` ask, its decoding chosen.
    async fn head_arrived(
        &mut self,
        status: u16,
        headers: &[(String, String)],
    ) -> Result<(), SendError> {
        self.report.headers = Some(headers.to_vec());
        if let Some(coding) = self.sink.start(status, headers).await? {
            self.show
                .info(|| format!("decoding the {coding} body (--compressed)"));
        }
        Ok(())
    }

    /// Takes one record of the followed answer.
    async fn take(&mut self, rec: Arrived) -> Result<Step, SendError> {
        let Arrived {
            frame,
            payload,
            dropped,
            trace_id,
            ..
        } = rec;
        let job = self.job;
        if let Some(id) = trace_id {
            if self.report.trace_id.as_ref() != Some(&id) {
                log::debug!("job {job}: trace_id={id} (the portal's)");
                self.show
                    .info(|| format!("job {job}: trace_id={id} (the portal's)"));
            }
            self.report.trace_id = Some(id);
        }
        if let Some(names) = dropped {
            // Once, though a second answer may say it again.
            if !self.warned_dropped {
                self.show.notice(Notice::PortalDroppedHeaders(&names));
                self.warned_dropped = true;
                self.report.dropped_headers = Some(names);
            }
        }
        // An error ends this answer whatever its number: a portal that took
        // the job over after another failed part-way numbers its answer
        // from 0 again.
        if let Body::Error(e) = frame.body {
            return Err(error_from_portal(e.category, e.message));
        }
        // A start record after body chunks is a second answer of the same
        // attempt (untagged answers of older portals, or a producer's retry
        // of a whole batch): start over where the output allows it, else
        // keep to the first answer.
        let second_answer = frame.seq == 0 && self.answer.check.received() > 0;
        if let (true, Body::ResponseStart(rs)) = (second_answer, &frame.body) {
            if self.sink.restart().await? {
                log::info!(
                    "job {job}: a second answer arrived (the job was taken over); starting over"
                );
                let answer = &mut self.answer;
                answer.status = Some(rs.status);
                answer.check = BodyCheck::new(self.expect.unwrap_or(rs.digest));
                answer.expected_seq = 1;
                answer.progress.reset();
                self.report.status = Some(rs.status);
                self.report.marks.answered = Some(std::time::SystemTime::now());
                self.head_arrived(rs.status, &rs.headers).await?;
                return Ok(Step::More);
            }
        }
        let answer = &mut self.answer;
        if frame.seq < answer.expected_seq {
            log::debug!("job {job}: duplicate reply record {} ignored", frame.seq);
            return Ok(Step::More);
        }
        if frame.seq > answer.expected_seq {
            return Err(SendError::Integrity(format!(
                "reply record {} is missing (got {})",
                answer.expected_seq, frame.seq
            )));
        }
        answer.expected_seq += 1;
        match frame.body {
            Body::ResponseStart(rs) if answer.status.is_none() => {
                // The body is checked with the request's digest: an answer in
                // another then fails at its end record, naming both.
                answer.check = BodyCheck::new(self.expect.unwrap_or(rs.digest));
                if self.show.verbose {
                    self.show.notice(Notice::Verbose(Verbose::Response {
                        status: rs.status,
                        headers: &rs.headers,
                    }));
                } else if self.show.progress {
                    self.show.notice(Notice::Status(rs.status));
                }
                answer.status = Some(rs.status);
                self.report.status = Some(rs.status);
                self.report.marks.answered = Some(std::time::SystemTime::now());
                self.head_arrived(rs.status, &rs.headers).await?;
                // A bar on stderr while the body goes to a file; not over a
                // body streaming to the same terminal.
                let shown = self.show.progress && self.sink.is_file();
                self.answer.progress = Progress::new("download", rs.body_len, shown);
                Ok(Step::More)
            }
            Body::Chunk(info) if answer.status.is_some() => {
                let expected = answer.check.received();
                if let Err(fault) = answer.check.chunk(&info, &payload) {
                    return Err(body_fault(fault, Checked::Chunk(&info)));
                }
                // The output is written as chunks arrive, so they must come
                // in order: no gap, no overlap.
                if !answer.check.in_order() {
                    return Err(SendError::Integrity(format!(
                        "response chunk at byte {} arrived when {expected} bytes were expected",
                        info.offset
                    )));
                }
                answer.progress.add(payload.len() as u64);
                self.sink.body(&payload).await?;
                Ok(Step::More)
            }
            Body::End(end) if answer.status.is_some() => {
                // Every chunk came in order, or receiving stopped at the first
                // that did not; so the digest was taken on the way.
                let Some(digest) = answer.check.digest() else {
                    return Err(SendError::Integrity(
                        "response chunks arrived out of order".into(),
                    ));
                };
                if let Err(fault) = answer.check.verify_end(&end, &digest) {
                    return Err(body_fault(fault, Checked::End(&end)));
                }
                Ok(Step::Whole {
                    received: answer.check.received(),
                    digest,
                })
            }
            other => Err(SendError::Integrity(format!(
                "unexpected reply record {}: {other:?}",
                frame.seq
            ))),
        }
    }

    /// Gives up the followed answer, for `reason`, for another attempt's,
    /// read again from its start into emptied outputs; `false`, with
    /// nothing changed, when there is none to take or the output cannot
    /// start over (body bytes already went to standard output).
    async fn switch(
        &mut self,
        attempts: &mut Attempts,
        reason: Reason,
        replies: &mut impl Replies,
    ) -> Result<bool, SendError> {
        if !self.sink.can_restart() {
            return Ok(false);
        }
        let Some((attempt, from)) = attempts.switch(reason) else {
            return Ok(false);
        };
        self.sink.restart().await?;
        let why = match reason {
            Reason::Failed => "the answer followed failed",
            Reason::Stalled => "the answer followed stalled",
        };
        // Not a warning: two portals answering one job is expected around
        // a rebalance, and the answer taken is checked like any other.
        log::info!(
            "job {}: {why}; taking the answer of attempt {attempt} instead, read again from offset {from}",
            self.job
        );
        self.show.info(|| {
            format!("{why}; taking another portal's answer to the job (attempt {attempt})")
        });
        self.answer = Answer::new();
        self.report.status = None;
        self.report.headers = None;
        replies.reread_from(from);
        Ok(true)
    }
}

/// The failure when no record of the job came for `--timeout`: the last
/// trouble reading the partition, if any, says why.
fn no_answer(trouble: Option<Trouble>, job: JobId, secs: u64) -> SendError {
    match trouble {
        Some(Trouble {
            detail,
            unreachable: true,
        }) => SendError::BrokerLost { job, secs, detail },
        Some(Trouble { detail, .. }) => SendError::ReplyUnreadable { job, secs, detail },
        None => SendError::Timeout { job, secs },
    }
}

/// Receives the answer to `job` into `sink`; `show` decides whether the
/// status line is announced and a progress bar drawn.
///
/// The first attempt seen is followed; the others are noted
/// ([`Attempts`]). When the followed answer fails (an `Error`, a broken
/// record or body), another that has not failed is taken instead, finished
/// ones first; when it is silent for [`STALLED_AFTER`] while another has
/// come to its `End`, that one is. The wait ends `--timeout` after the last
/// record of any attempt of the job; with no whole answer, the followed
/// answer's `Error`, else another's, else the first fault, else the timeout
/// is reported. With `past_clear_error` (`wait`), a sealed job's clear
/// `Error`, which anyone could have written, does not end the wait either:
/// a sealed answer may still come, until `--timeout`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn receive(
    sink: Destination,
    show: Show,
    cfg: &Settings,
    job: JobId,
    expect: Option<DigestKind>,
    replies: &mut impl Replies,
    report: &mut Report,
    past_clear_error: bool,
) -> Result<Outcome, SendError> {
    let started = Instant::now();
    let mut r = Receiving {
        sink,
        show,
        report,
        job,
        answer: Answer::new(),
        warned_dropped: false,
        expect,
    };
    let mut attempts = Attempts::default();
    let mut fallback = Fallback::default();
    // The last error reading the reply partition, until a record arrives.
    let mut trouble: Option<Trouble> = None;
    let now = tokio::time::Instant::now;
    // Waiting ends `--timeout` after the last record of the job, of any
    // attempt, however many retries the reader reports meanwhile.
    let mut idle_deadline = now() + cfg.timeout;
    // When the followed answer was last heard from.
    let mut followed_heard = now();
    let stalled_after = STALLED_AFTER.min(cfg.timeout);
    // Set once a stall cannot be helped (the output cannot start over).
    let mut stuck = false;
    let (received, digest) = loop {
        let stall_at =
            (!stuck && attempts.another_answered()).then(|| followed_heard + stalled_after);
        let wake = stall_at.map_or(idle_deadline, |at| at.min(idle_deadline));
        let item = match tokio::time::timeout_at(wake, replies.next()).await {
            Ok(Some(item)) => item,
            Ok(None) => return Err(SendError::Io("the reply reader stopped".into())),
            Err(_) => {
                if r.switch(&mut attempts, Reason::Stalled, replies).await? {
                    idle_deadline = now() + cfg.timeout;
                    followed_heard = now();
                    continue;
                }
                if now() < idle_deadline {
                    stuck = true;
                    continue;
                }
                let secs = cfg.timeout.as_secs();
                return Err(fallback
                    .take()
                    .unwrap_or_else(|| no_answer(trouble, job, secs)));
            }
        };
        let (attempt, offset, kind, rec) = match item {
            Reply::Trouble(why) => {
                trouble = Some(why);
                continue;
            }
            Reply::Fatal(why) => return Err(SendError::Integrity(why)),
            Reply::Broken { why, at: None } => {
                // A batch that cannot be read does not say whose records it
                // held. With an answer followed, its own checks (numbering,
                // length, digest) show whether it lost any; until then this
                // is only what to report if nothing better comes.
                if !attempts.following() {
                    return Err(SendError::Integrity(why));
                }
                log::warn!("job {job}: {why}");
                fallback.fault.get_or_insert(SendError::Integrity(why));
                continue;
            }
            Reply::Broken {
                why,
                at: Some((attempt, offset)),
            } => (attempt, offset, Kind::Broken, Err(why)),
            Reply::Record(rec) => {
                let kind = match rec.frame.body {
                    Body::End(_) => Kind::End,
                    Body::Error(_) => Kind::Error,
                    _ => Kind::Other,
                };
                (rec.attempt.clone(), rec.offset, kind, Ok(rec))
            }
        };
        trouble = None;
        idle_deadline = now() + cfg.timeout;
        let step = match attempts.note(&attempt, offset, kind) {
            Whose::Ignored => continue,
            Whose::Other => {
                note_other(job, &attempt, rec, &mut fallback);
                continue;
            }
            Whose::Followed => {
                followed_heard = now();
                match rec {
                    Err(why) => Err(SendError::Integrity(why)),
                    Ok(rec) => r.take(*rec).await,
                }
            }
        };
        match step {
            Ok(Step::More) => {}
            Ok(Step::Whole { received, digest }) => break (received, digest),
            Err(e) if attempt_failure(&e) => {
                log::debug!("job {job}: attempt {attempt} failed: {e}");
                let is_error = kind == Kind::Error;
                if r.switch(&mut attempts, Reason::Failed, replies).await? {
                    fallback.keep(e, is_error);
                    idle_deadline = now() + cfg.timeout;
                    followed_heard = now();
                    continue;
                }
                if past_clear_error && is_unauthenticated(&e, job) {
                    log::info!("job {job}: {e}; waiting on for a sealed answer");
                    fallback.keep(e, is_error);
                    continue;
                }
                return Err(fallback.settle(e, is_error));
            }
            Err(e) => return Err(e),
        }
    };
    let Receiving {
        sink,
        show,
        report,
        answer,
        ..
    } = r;
    let written = sink.commit().await?;
    answer.progress.finish();
    report.bytes_received = received;
    report.digest_verified = true;
    report.digest = Some(digest.kind);
    show.info(|| {
        let decoded = match written == received {
            true => String::new(),
            false => format!(", {written} bytes once decoded"),
        };
        format!("{received} bytes received, {digest} verified{decoded}")
    });
    log::info!(
        "job {job}: {received} bytes received in {:.2} s, {digest} verified",
        started.elapsed().as_secs_f64(),
    );
    Ok(Outcome {
        job,
        status: answer.status,
    })
}

/// Notes a record of an attempt not followed: only how it ended matters.
fn note_other(
    job: JobId,
    attempt: &Attempt,
    rec: Result<Box<Arrived>, String>,
    fallback: &mut Fallback,
) {
    match rec {
        Err(why) => {
            log::warn!("job {job}: another answer (attempt {attempt}) is broken: {why}");
            fallback.fault.get_or_insert(SendError::Integrity(why));
        }
        Ok(rec) => {
            match rec.frame.body {
                Body::Error(e) => {
                    log::info!("job {job}: another answer (attempt {attempt}) is an error; kept in reserve");
                    fallback
                        .other_error
                        .get_or_insert_with(|| error_from_portal(e.category, e.message));
                }
                Body::End(_) => {
                    log::info!("job {job}: another answer (attempt {attempt}) has come to its end");
                }
                _ => log::debug!(
                    "job {job}: record {} of another answer (attempt {attempt})",
                    rec.frame.seq
                ),
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

    /// A reply record as the reader passes it on: untagged, its offset set
    /// by [`Script`].
    fn record(frame: Frame, payload: Vec<u8>) -> Reply {
        Reply::Record(Box::new(Arrived {
            frame,
            payload,
            attempt: Attempt::Untagged,
            offset: 0,
            dropped: None,
            trace_id: None,
        }))
    }

    fn frames_with(
        job: JobId,
        status: u16,
        headers: Vec<(String, String)>,
        body: &[u8],
    ) -> Vec<Reply> {
        let mut out = vec![record(
            Frame {
                job,
                seq: 0,
                body: Body::ResponseStart(crate::protocol::wire::ResponseStart {
                    status,
                    headers,
                    body_len: Some(body.len() as u64),
                    digest: DigestKind::Sha256,
                }),
            },
            vec![],
        )];
        let mut c = Chunker::new(job, 1, DigestKind::Sha256);
        for piece in body.chunks(4) {
            let ch = c.chunk(piece.to_vec());
            out.push(record(ch.frame, ch.payload));
        }
        out.push(record(c.finish(), vec![]));
        out
    }

    /// An `Error` record numbered `seq`.
    fn error_record(job: JobId, seq: u32, category: ErrorCategory, message: &str) -> Reply {
        record(
            Frame {
                job,
                seq,
                body: Body::Error(crate::protocol::Failure {
                    category,
                    message: message.into(),
                }),
            },
            vec![],
        )
    }

    /// `items`, each tagged as written by attempt `tag`.
    fn tagged(tag: &str, mut items: Vec<Reply>) -> Vec<Reply> {
        for item in &mut items {
            if let Reply::Record(rec) = item {
                rec.attempt = Attempt::from_header(Some(tag.as_bytes()));
            }
        }
        items
    }

    /// The records of several answers merged in the order `pattern` gives:
    /// each letter takes the next record of that answer (`a` the first).
    fn merge(answers: Vec<Vec<Reply>>, pattern: &str) -> Vec<Reply> {
        let mut answers: Vec<VecDeque<Reply>> = answers.into_iter().map(Into::into).collect();
        let mut out = Vec::new();
        for c in pattern.bytes() {
            let i = usize::from(c - b'a');
            out.extend(answers[i].pop_front());
        }
        out
    }

    /// A reply partition in memory: the items in order (each record's
    /// offset its place), read again from an offset when asked. At its end
    /// it waits forever, as a quiet partition does, until the receiver's
    /// timers fire.
    struct Script {
        items: Vec<Reply>,
        at: usize,
        /// The offsets read again from, in order.
        rereads: Vec<i64>,
    }

    impl Script {
        fn new(mut items: Vec<Reply>) -> Self {
            for (i, item) in items.iter_mut().enumerate() {
                match item {
                    Reply::Record(rec) => rec.offset = i as i64,
                    Reply::Broken { at: Some(at), .. } => at.1 = i as i64,
                    _ => {}
                }
            }
            Self {
                items,
                at: 0,
                rereads: vec![],
            }
        }
    }

    fn offset_of(item: &Reply) -> Option<i64> {
        match item {
            Reply::Record(rec) => Some(rec.offset),
            Reply::Broken { at: Some(at), .. } => Some(at.1),
            _ => None,
        }
    }

    impl Replies for Script {
        async fn next(&mut self) -> Option<Reply> {
            match self.items.get(self.at) {
                Some(item) => {
                    self.at += 1;
                    Some(item.clone())
                }
                None => std::future::pending().await,
            }
        }

        fn reread_from(&mut self, offset: i64) {
            self.rereads.push(offset);
            self.at = self
                .items
                .iter()
                .position(|i| offset_of(i).is_some_and(|o| o >= offset))
                .unwrap_or(self.items.len());
        }
    }

    fn config() -> Settings {
        config_with(Duration::from_secs(5))
    }

    /// Settings with `--timeout` of `timeout`; the stall switch then comes
    /// after at most as long.
    fn config_with(timeout: Duration) -> Settings {
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
            timeout,
            signer: None,
            compression: Default::default(),
            digest: DigestKind::Sha256,
            seal_to: None,
            job_key_dir: None,
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
        let cfg = config();
        receive_script(&mut Script::new(items), output, options, &cfg, report).await
    }

    async fn receive_script(
        script: &mut Script,
        output: &Path,
        options: &ResponseOptions,
        cfg: &Settings,
        report: &mut Report,
    ) -> Result<Outcome, SendError> {
        let job = job_of(&script.items);
        let sink = Destination::open(Some(output), options)?;
        receive(sink, Show::default(), cfg, job, None, script, report, false).await
    }

    /// The job of the first record in `items`.
    fn job_of(items: &[Reply]) -> JobId {
        items
            .iter()
            .find_map(|i| match i {
                Reply::Record(rec) => Some(rec.frame.job),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// An answer of `body` whose bodies are digested with `kind`, as a
    /// portal writes it for a request of that digest.
    fn frames_digested(kind: DigestKind, job: JobId, body: &[u8]) -> Vec<Reply> {
        let mut items = frames_with(job, 200, vec![], &[]);
        items.truncate(1);
        if let Reply::Record(rec) = &mut items[0] {
            if let Body::ResponseStart(rs) = &mut rec.frame.body {
                rs.digest = kind;
                rs.body_len = Some(body.len() as u64);
            }
        }
        let mut c = Chunker::new(job, 1, kind);
        for piece in body.chunks(4) {
            let ch = c.chunk(piece.to_vec());
            items.push(record(ch.frame, ch.payload));
        }
        items.push(record(c.finish(), vec![]));
        items
    }

    /// Receives `items` as `send` of a request digested with `expect`
    /// does, or as `wait` does when `None`.
    async fn receive_expecting(
        expect: Option<DigestKind>,
        items: Vec<Reply>,
        output: &Path,
        report: &mut Report,
    ) -> Result<Outcome, SendError> {
        let sink = Destination::open(Some(output), &ResponseOptions::default())?;
        let mut script = Script::new(items);
        let job = job_of(&script.items);
        let cfg = config();
        receive(
            sink,
            Show::default(),
            &cfg,
            job,
            expect,
            &mut script,
            report,
            expect.is_none(),
        )
        .await
    }

    #[tokio::test]
    async fn an_answer_is_checked_with_its_request_digest_or_for_wait_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.bin");
        let body = b"an answer digested either way".repeat(9);
        for kind in [DigestKind::Sha256, DigestKind::Blake3] {
            for expect in [None, Some(kind)] {
                let mut report = Report::default();
                let items = frames_digested(kind, JobId::new(), &body);
                receive_expecting(expect, items, &out, &mut report)
                    .await
                    .unwrap();
                assert_eq!(std::fs::read(&out).unwrap(), body);
                assert_eq!(report.digest, Some(kind), "{expect:?}");
                assert!(report.digest_verified);
            }
        }
        std::fs::remove_file(&out).unwrap();
        // An answer in another digest than the request's fails at its end
        // record, naming both, and leaves no output.
        for (asked, answered) in [
            (DigestKind::Sha256, DigestKind::Blake3),
            (DigestKind::Blake3, DigestKind::Sha256),
        ] {
            let mut report = Report::default();
            let items = frames_digested(answered, JobId::new(), &body);
            let err = receive_expecting(Some(asked), items, &out, &mut report)
                .await
                .unwrap_err();
            let (computed, claimed) = (asked.of(&body), answered.of(&body));
            assert_eq!(
                err.to_string(),
                format!("integrity check failed: response {computed} does not match the portal's {claimed}")
            );
            assert_eq!(err.exit_code(), 4);
            assert!(!report.digest_verified);
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        }
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
        frame_at(&mut items, 1).1[0] ^= 1;
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
        let dup = items[1].clone();
        items.insert(2, dup);
        receive_all(items, &out).await.unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"abcdefgh");

        let mut items = frames_of(job, 200, b"abcdefgh");
        items.truncate(2);
        items.push(error_record(
            job,
            0,
            ErrorCategory::UpstreamTimeout,
            "took too long",
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
            Reply::Record(rec) => (&mut rec.frame, &mut rec.payload),
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
                end.digest.bytes = [7; 32];
            }
        })
        .await;
        let computed = DigestKind::Sha256.of(b"abcdefgh").hex();
        assert_eq!(
            err.to_string(),
            format!(
                "integrity check failed: response SHA-256 {computed} does not match the portal's SHA-256 {}",
                "07".repeat(32)
            )
        );
        assert_eq!((err.exit_code(), written), (4, false));
    }

    /// What [`run`] gives back: the outcome, the offsets read again from,
    /// and the output file's bytes if it was written.
    struct Ran {
        result: Result<Outcome, SendError>,
        rereads: Vec<i64>,
        output: Option<Vec<u8>>,
        /// Files left in the output's directory (no part file may stay).
        files: usize,
    }

    /// Receives `items` into a fresh file with `--timeout` `timeout`.
    async fn run(items: Vec<Reply>, timeout: Duration) -> Ran {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.bin");
        let mut script = Script::new(items);
        let result = receive_script(
            &mut script,
            &out,
            &ResponseOptions::default(),
            &config_with(timeout),
            &mut Report::default(),
        )
        .await;
        Ran {
            result,
            rereads: script.rereads,
            output: std::fs::read(&out).ok(),
            files: std::fs::read_dir(dir.path()).unwrap().count(),
        }
    }

    /// Each interleaving of `a` and `b` records that keeps each in order:
    /// every way to place `b` of `a + b` records.
    fn interleavings(a: usize, b: usize) -> Vec<String> {
        let n = a + b;
        (0u32..1 << n)
            .filter(|m| m.count_ones() as usize == b)
            .map(|m| {
                (0..n)
                    .map(|i| if m & (1 << i) != 0 { 'b' } else { 'a' })
                    .collect()
            })
            .collect()
    }

    #[tokio::test]
    async fn two_whole_answers_in_any_interleaving_give_the_first_seen_one_intact() {
        let job = JobId::new();
        let a = tagged(
            "aaaa000000000001",
            frames_of(job, 200, b"the first attempt's body"),
        );
        let b = tagged("bbbb000000000002", frames_of(job, 201, b"second's body"));
        let patterns = interleavings(a.len(), b.len());
        assert_eq!(patterns.len(), 3003); // 14 choose 6: every order there is
                                          // A start, B start, A chunk, B chunk, ..., B end, A end; A nearly
                                          // done when B comes and ends; B entirely first; a spread of the rest.
        let named = [
            "ab".repeat(6) + "aa",
            "a".repeat(7) + &"b".repeat(6) + "a",
            "b".repeat(6) + &"a".repeat(8),
        ];
        for pattern in named.iter().chain(patterns.iter().step_by(13)) {
            let items = merge(vec![a.clone(), b.clone()], pattern);
            let ran = run(items, Duration::from_secs(30)).await;
            let outcome = ran.result.unwrap_or_else(|e| panic!("{pattern}: {e}"));
            let (status, body) = match pattern.starts_with('a') {
                true => (200, &b"the first attempt's body"[..]),
                false => (201, &b"second's body"[..]),
            };
            assert_eq!(outcome.status, Some(status), "{pattern}");
            assert_eq!(ran.output.as_deref(), Some(body), "{pattern}");
            assert!(ran.rereads.is_empty(), "{pattern}: no reason to switch");
            assert_eq!(ran.files, 1, "{pattern}");
        }
    }

    #[tokio::test]
    async fn an_answer_cut_short_gives_way_to_one_that_ended() {
        let job = JobId::new();
        let mut a = tagged("a", frames_of(job, 200, b"first answer, cut short"));
        a.truncate(3); // its portal stopped after two chunks
        let b = tagged("b", frames_of(job, 201, b"the whole second answer"));
        for pattern in ["aaabbbbbbbb", "abababbbbbb", "bbbaaabbbbb"] {
            let items = merge(vec![a.clone(), b.clone()], pattern);
            let b_start = pattern.find('b').unwrap() as i64;
            let first = &pattern[..1];
            let ran = run(items, Duration::from_secs(1)).await;
            if first == "b" {
                // B was first seen and whole: A is never needed.
                assert!(ran.rereads.is_empty(), "{pattern}");
            } else {
                assert_eq!(ran.rereads, vec![b_start], "{pattern}");
            }
            let outcome = ran.result.unwrap_or_else(|e| panic!("{pattern}: {e}"));
            assert_eq!(outcome.status, Some(201), "{pattern}");
            assert_eq!(
                ran.output.as_deref(),
                Some(&b"the whole second answer"[..]),
                "{pattern}"
            );
            assert_eq!(ran.files, 1, "{pattern}: no part file left");
        }

        // Only the answer cut short: the wait times out, and no file appears.
        let ran = run(a, Duration::from_secs(1)).await;
        let err = ran.result.unwrap_err();
        assert_eq!(err.exit_code(), 28, "{err}");
        assert_eq!((ran.output, ran.files), (None, 0));
    }

    #[tokio::test]
    async fn a_whole_answer_wins_over_an_error_from_another_attempt() {
        let job = JobId::new();
        let whole = frames_of(job, 200, b"the answer itself");
        let mut cut = frames_of(job, 200, b"the answer, broken off");
        cut.truncate(3);
        cut.push(error_record(
            job,
            3,
            ErrorCategory::UpstreamUnreachable,
            "broke off",
        ));
        let refused = vec![error_record(
            job,
            0,
            ErrorCategory::UpstreamTimeout,
            "too slow",
        )];
        let cases = [
            // The followed answer ends in an Error after another ended whole.
            (cut.clone(), whole.clone(), "aabbbbbbbaa"),
            // ... while the other is still running: that one is followed on.
            (cut.clone(), whole.clone(), "aabbaabbbbb"),
            // The other attempt's Error comes while the first runs whole.
            (whole.clone(), refused.clone(), "aabaaaaa"),
        ];
        for (a, b, pattern) in cases {
            let items = merge(vec![tagged("a", a), tagged("b", b)], pattern);
            let ran = run(items, Duration::from_secs(30)).await;
            let outcome = ran.result.unwrap_or_else(|e| panic!("{pattern}: {e}"));
            assert_eq!(outcome.status, Some(200), "{pattern}");
            assert_eq!(
                ran.output.as_deref(),
                Some(&b"the answer itself"[..]),
                "{pattern}"
            );
            assert_eq!(ran.files, 1);
        }

        // The answer switched to never comes to its end: after --timeout
        // from the last record, the Error stands (exit 5, not a timeout).
        let mut stalled = whole.clone();
        stalled.truncate(3);
        let mut failing = frames_of(job, 200, b"")[..1].to_vec();
        failing.push(error_record(
            job,
            1,
            ErrorCategory::UpstreamTimeout,
            "too slow",
        ));
        let items = merge(vec![tagged("a", failing), tagged("b", stalled)], "ababb");
        let ran = run(items, Duration::from_secs(1)).await;
        assert_eq!(ran.rereads, vec![1]);
        let err = ran.result.unwrap_err();
        assert_eq!(err.exit_code(), 5, "{err}");
        assert!(err.to_string().contains("too slow"), "{err}");
        assert_eq!((ran.output, ran.files), (None, 0));

        // Two Errors: the followed one's is reported, at once.
        let other = vec![error_record(job, 0, ErrorCategory::Rejected, "no")];
        let items = merge(vec![tagged("a", refused), tagged("b", other)], "ba");
        let ran = run(items, Duration::from_secs(30)).await;
        let err = ran.result.unwrap_err();
        assert_eq!(err.exit_code(), 3, "{err}");
    }

    #[tokio::test]
    async fn a_broken_answer_gives_way_to_the_next_and_the_next() {
        let job = JobId::new();
        let mut bad_crc = frames_of(job, 200, b"abcdefgh");
        frame_at(&mut bad_crc, 1).1[0] ^= 1;
        let mut bad_digest = frames_of(job, 202, b"abcdefgh");
        if let Body::End(end) = &mut frame_at(&mut bad_digest, 3).0.body {
            end.digest.bytes = [1; 32];
        }
        let good = frames_of(job, 203, b"abcdefgh");
        // A fails its CRC; B (ended first) fails its digest; C is whole.
        let items = merge(
            vec![
                tagged("a", bad_crc.clone()),
                tagged("b", bad_digest),
                tagged("c", good),
            ],
            "abbbbcccca",
        );
        let ran = run(items, Duration::from_secs(30)).await;
        assert_eq!(ran.rereads, vec![1, 5]);
        assert_eq!(ran.result.unwrap().status, Some(203));
        assert_eq!(ran.output.as_deref(), Some(&b"abcdefgh"[..]));

        // Nothing to switch to: the fault is reported as before.
        let ran = run(tagged("a", bad_crc.clone()), Duration::from_secs(30)).await;
        let err = ran.result.unwrap_err();
        assert!(err.to_string().contains("CRC32C"), "{err}");
        assert_eq!((ran.output, ran.files), (None, 0));

        // A broken answer and another's Error: the Error is the answer.
        let items = merge(
            vec![
                tagged("a", bad_crc),
                vec![error_record(job, 0, ErrorCategory::Auth, "no token")],
            ],
            "aba",
        );
        let err = run(items, Duration::from_secs(30))
            .await
            .result
            .unwrap_err();
        assert_eq!(err.exit_code(), 5, "{err}");
        assert!(err.to_string().contains("no token"), "{err}");
    }

    #[tokio::test]
    async fn untagged_records_are_one_attempt_beside_tagged_ones() {
        let job = JobId::new();
        // An older portal's answer cut short, then its second answer, both
        // untagged: one attempt, started over as before.
        let mut first = frames_of(job, 200, b"old portal, cut");
        first.truncate(2);
        let mut items = first.clone();
        items.extend(frames_of(job, 201, b"old portal, whole"));
        let ran = run(items, Duration::from_secs(30)).await;
        assert_eq!(ran.result.unwrap().status, Some(201));
        assert_eq!(ran.output.as_deref(), Some(&b"old portal, whole"[..]));
        assert!(ran.rereads.is_empty());

        // An older portal's answer stalls; a newer portal's tagged one,
        // interleaved with it, is taken.
        let tagged_whole = tagged("new", frames_of(job, 202, b"new portal"));
        let items = merge(vec![first, tagged_whole], "abbabbb");
        let ran = run(items, Duration::from_secs(1)).await;
        assert_eq!(ran.rereads, vec![1]);
        assert_eq!(ran.result.unwrap().status, Some(202));
        assert_eq!(ran.output.as_deref(), Some(&b"new portal"[..]));
    }

    #[tokio::test]
    async fn hostile_attempt_tags_cannot_break_or_bloat_the_answer() {
        let job = JobId::new();
        let huge = "x".repeat(1 << 20);
        let strange = "é\u{202e}\n\x1b[2J\0";
        let with_tag = |tag: &[u8], items: Vec<Reply>| -> Vec<Reply> {
            items
                .into_iter()
                .map(|mut item| {
                    if let Reply::Record(rec) = &mut item {
                        rec.attempt = Attempt::from_header(Some(tag));
                    }
                    item
                })
                .collect()
        };
        // The real answer under a huge tag, another under a strange one
        // cut short, interleaved.
        let real = with_tag(huge.as_bytes(), frames_of(job, 200, b"real body"));
        let mut junk = with_tag(strange.as_bytes(), frames_of(job, 500, b"junk body"));
        junk.truncate(2);
        let items = merge(vec![real.clone(), junk.clone()], "ababaaa");
        let ran = run(items, Duration::from_secs(30)).await;
        assert_eq!(ran.result.unwrap().status, Some(200));
        assert_eq!(ran.output.as_deref(), Some(&b"real body"[..]));
        let items = merge(vec![real.clone(), junk], "bbaaaaa");
        let ran = run(items, Duration::from_secs(1)).await;
        assert_eq!(ran.result.unwrap().status, Some(200));
        assert_eq!(ran.output.as_deref(), Some(&b"real body"[..]));

        // 10000 distinct attempts, each a start record or an Error, around
        // the real answer: followed first, it is received intact.
        let noise = |n: usize| -> Vec<Reply> {
            (0..n)
                .flat_map(|i| {
                    let tag = format!("junk-{i}");
                    let item = match i % 2 {
                        0 => frames_of(job, 500, b"")[..1].to_vec(),
                        _ => vec![error_record(job, 0, ErrorCategory::Internal, "junk")],
                    };
                    with_tag(tag.as_bytes(), item)
                })
                .collect()
        };
        let mut items = real[..2].to_vec();
        items.extend(noise(10_000));
        items.extend(real[2..].to_vec());
        let ran = run(items, Duration::from_secs(30)).await;
        assert_eq!(ran.result.unwrap().status, Some(200));
        assert_eq!(ran.output.as_deref(), Some(&b"real body"[..]));

        // The noise first (one of it is followed and goes nowhere), the
        // real answer after it: still found and taken, read again from its
        // start.
        let mut items = noise(10_000);
        let real_start = items.len() as i64;
        items.extend(real);
        let ran = run(items, Duration::from_secs(1)).await;
        assert_eq!(ran.rereads, vec![real_start]);
        assert_eq!(ran.result.unwrap().status, Some(200));
        assert_eq!(ran.output.as_deref(), Some(&b"real body"[..]));
    }

    #[tokio::test]
    async fn a_broken_record_of_another_attempt_or_an_unreadable_batch_is_survived() {
        let job = JobId::new();
        let a = tagged("a", frames_of(job, 200, b"abcdefgh"));
        let broken = Reply::Broken {
            why: "a reply record is unreadable: bad magic".into(),
            at: Some((Attempt::from_header(Some(b"b")), 0)),
        };
        let batch = Reply::Broken {
            why: "a reply record is unreadable: CRC32C mismatch".into(),
            at: None,
        };
        let mut items = a.clone();
        items.insert(1, broken);
        items.insert(3, batch.clone());
        let ran = run(items, Duration::from_secs(30)).await;
        assert_eq!(ran.result.unwrap().status, Some(200));
        assert_eq!(ran.output.as_deref(), Some(&b"abcdefgh"[..]));

        // An unreadable batch before any answer: it may have held the
        // start, so it fails the job at once, as it always did.
        let mut items = vec![batch];
        items.extend(a);
        let err = run(items, Duration::from_secs(30))
            .await
            .result
            .unwrap_err();
        assert_eq!(err.exit_code(), 4, "{err}");
        assert!(err.to_string().contains("CRC32C mismatch"), "{err}");
    }

    #[tokio::test]
    async fn a_switch_empties_the_head_file_and_the_head_before_the_body() {
        let job = JobId::new();
        let dir = tempfile::tempdir().unwrap();
        let (out, head) = (dir.path().join("out.txt"), dir.path().join("head.txt"));
        let options = ResponseOptions {
            include: true,
            dump_header: Some(head.clone()),
            compressed: false,
        };
        let mut a = frames_with(job, 500, pairs(&[("x-try", "1")]), b"first, cut short");
        a.truncate(3);
        let b = frames_with(job, 201, pairs(&[("x-try", "2")]), b"created");
        let items = merge(vec![tagged("a", a), tagged("b", b)], "aababbb");
        let mut report = Report::default();
        let cfg = config_with(Duration::from_secs(1));
        let mut script = Script::new(items);
        let outcome = receive_script(&mut script, &out, &options, &cfg, &mut report)
            .await
            .unwrap();
        assert_eq!(outcome.status, Some(201));
        let head_text = "HTTP/1.1 201 Created\r\nx-try: 2\r\n\r\n";
        assert_eq!(std::fs::read_to_string(&head).unwrap(), head_text);
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            format!("{head_text}created")
        );
        assert_eq!(report.status, Some(201));
        assert_eq!(report.headers, Some(pairs(&[("x-try", "2")])));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
