//! `kafkasend send`: one HTTP request through Kafka, curl-like.
//!
//! The reply partition's end offset is noted before anything is produced,
//! and a reader task follows that partition from there, so even an instant
//! reply is never missed. The body streams from disk chunk by chunk; the
//! response streams to its destination as it arrives and is verified at the end.

pub mod output;
pub mod ui;

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use crate::kafka::fetcher::Fetcher;
use crate::kafka::partitioner::partition_for_key;
use crate::kafka::record_batch::Item;
use crate::kafka::window::ProduceWindow;
use crate::kafka::{self, KafkaError, KafkaSettings, PartitionCache};
use crate::protocol::chunker::{hex, read_chunk, Chunker};
use crate::protocol::wire::{self, Body, Frame, JobId, RequestStart};
use crate::protocol::ErrorCategory;
use crate::send::output::{OutputError, Sink};
use crate::send::ui::{Progress, Report};

/// Exit status for a response with HTTP status 400 or above (as curl's `--fail-with-body`).
pub const EXIT_HTTP_ERROR: u8 = 22;

/// What `send` and `wait` run with, resolved and checked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Kafka side.
    pub kafka: kafka::Config,
    /// Wait for the response this long after the last record received.
    pub timeout: Duration,
    /// Signs each request, when a signing key is set.
    pub signer: Option<crate::protocol::signing::Signer>,
}

/// One request as `send` takes it: plain values, whoever gathered them.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The body: a file, `-` for standard input, none for no body.
    pub file: Option<PathBuf>,
    /// Path and query on the target API, starting with `/`.
    pub endpoint: String,
    /// HTTP method; POST with a body, GET without when not given.
    pub method: Option<String>,
    /// Headers as `Name: value`.
    pub headers: Vec<String>,
    /// Content type of the body; guessed from the file name when not given.
    pub content_type: Option<String>,
    /// Send the body as one part of a multipart/form-data form.
    pub multipart: bool,
    /// Form field name of that part.
    pub field: String,
    /// Where the response body goes: a regular file, or standard output for
    /// none or `-`.
    pub output: Option<PathBuf>,
    /// Return once the request is wholly sent, without waiting for the answer.
    pub no_wait: bool,
    /// What to show while it runs.
    pub show: Show,
}

/// The answer to pick up for a job sent earlier without waiting.
#[derive(Debug, Clone, Default)]
pub struct Pickup {
    /// The job id as given, checked before anything else.
    pub job: String,
    /// Where the response body goes, as in [`Request::output`].
    pub output: Option<PathBuf>,
    /// What to show while it runs.
    pub show: Show,
}

/// What `send` and `wait` show their user while they run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Show {
    /// Progress bars on stderr (when it is a terminal), and the response's
    /// status line as a [`Notice::Status`].
    pub progress: bool,
    /// Receives the notices; `None` drops them.
    pub notices: Option<fn(Notice<'_>)>,
}

impl Show {
    fn notice(&self, n: Notice<'_>) {
        if let Some(f) = self.notices {
            f(n);
        }
    }
}

/// Something the user should hear about while a request runs.
#[derive(Debug, Clone, Copy)]
pub enum Notice<'a> {
    /// These `-H` headers were left out: no portal forwards them. Names
    /// only, since their values may be credentials.
    DroppedHeaders(&'a [String]),
    /// The response arrived with this HTTP status; its body follows.
    Status(u16),
}

/// Why a send failed; each maps to one exit code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The command line asks for something impossible.
    #[error("{0}")]
    Usage(String),
    /// A local file could not be read or written.
    #[error("{0}")]
    Io(String),
    /// Kafka could not be reached or refused us.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// No response in time.
    #[error("no response for job {job} within {secs} s; the portal may be down or busy (check it is running, or raise --timeout)")]
    Timeout {
        /// Job id.
        job: JobId,
        /// Timeout.
        secs: u64,
    },
    /// The broker went away while we waited, and did not come back in time.
    #[error(
        "no response for job {job} within {secs} s, and the Kafka broker is unreachable: {detail}"
    )]
    BrokerLost {
        /// Job id.
        job: JobId,
        /// Timeout.
        secs: u64,
        /// Last error seen.
        detail: String,
    },
    /// Reading the reply partition kept failing (the broker answered, but
    /// with something unusable), and no answer came in time.
    #[error(
        "no response for job {job} within {secs} s; reading the reply partition failed: {detail}"
    )]
    ReplyUnreadable {
        /// Job id.
        job: JobId,
        /// Timeout.
        secs: u64,
        /// Last error seen.
        detail: String,
    },
    /// The user interrupted (Ctrl-C), or the process was told to stop
    /// (SIGTERM, SIGHUP).
    #[error("interrupted by {signal}{}", match job {
        Some(job) => format!(" during job {job}; the portal may still answer it (kafkasend wait {job})"),
        None => " before the request was completely sent; the portal will not answer it".to_string(),
    })]
    Interrupted {
        /// Job id, when the request had been wholly sent.
        job: Option<JobId>,
        /// The signal's name, e.g. `SIGINT`.
        signal: &'static str,
    },
    /// The portal refused the request.
    #[error("the portal refused the request ({category}): {message}")]
    Refused {
        /// Category reported.
        category: ErrorCategory,
        /// Portal's message.
        message: String,
    },
    /// The portal could not get an answer from the API.
    #[error("the portal could not complete the call ({category}): {message}")]
    Upstream {
        /// Category reported.
        category: ErrorCategory,
        /// Portal's message.
        message: String,
    },
    /// Data was corrupted on the way.
    #[error("integrity check failed: {0}")]
    Integrity(String),
}

impl SendError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Io(_) => 1,
            Self::Refused { .. } => 3,
            Self::Integrity(_) => 4,
            Self::Upstream { .. } => 5,
            Self::Kafka(_) | Self::BrokerLost { .. } | Self::ReplyUnreadable { .. } => 7,
            Self::Timeout { .. } => 28,
            Self::Interrupted { signal, .. } => 128 + signal_number(signal),
        }
    }
}

impl From<OutputError> for SendError {
    fn from(e: OutputError) -> Self {
        match e {
            OutputError::Refused(why) => Self::Usage(why),
            OutputError::Io(why) => Self::Io(why),
        }
    }
}

fn usage(msg: impl Into<String>) -> SendError {
    SendError::Usage(msg.into())
}

/// What the body is read from.
enum Source {
    None,
    Stdin,
    File(PathBuf),
}

/// Parses `Name: value`.
pub fn parse_header(h: &str) -> Result<(String, String), SendError> {
    let (name, value) = h
        .split_once(':')
        .ok_or_else(|| usage(format!("header '{h}' must look like 'Name: value'")))?;
    let name = name.trim();
    let valid_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid_name {
        return Err(usage(format!(
            "header name '{name}' is not a valid HTTP header name"
        )));
    }
    let value = value.trim();
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(usage(format!(
            "header '{name}' has a line break or NUL in its value"
        )));
    }
    Ok((name.to_string(), value.to_string()))
}

/// Escapes a value for a quoted multipart parameter (as browsers do).
fn quote_param(s: &str) -> String {
    s.replace('"', "%22")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// The request as it will be framed, before anything is sent.
struct Prepared {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    /// Names of the `-H` headers left out because no portal forwards them.
    dropped: Vec<String>,
    source: Source,
    body_len: Option<u64>,
    /// Multipart framing around the file, when `--multipart`.
    envelope: Option<(Vec<u8>, Vec<u8>)>,
}

fn prepare(request: &Request) -> Result<Prepared, SendError> {
    if !request.endpoint.starts_with('/') {
        return Err(usage(format!(
            "--endpoint '{}' must be a path starting with '/', e.g. /api/upload",
            request.endpoint
        )));
    }
    if request
        .endpoint
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ')
    {
        return Err(usage(
            "--endpoint must not contain spaces or control characters (percent-encode them)",
        ));
    }
    let source = match &request.file {
        None => Source::None,
        Some(p) if p.as_os_str() == "-" => Source::Stdin,
        Some(p) => Source::File(p.clone()),
    };
    let method = request
        .method
        .clone()
        .unwrap_or_else(|| {
            if matches!(source, Source::None) {
                "GET"
            } else {
                "POST"
            }
            .into()
        })
        .to_ascii_uppercase();
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(usage(format!("-X '{method}' is not an HTTP method")));
    }
    if request.multipart && matches!(source, Source::None) {
        return Err(usage("--multipart needs a FILE to send"));
    }
    let given = request
        .headers
        .iter()
        .map(|h| parse_header(h))
        .collect::<Result<Vec<_>, _>>()?;
    // No portal forwards these, so writing them to Kafka would only leave
    // the caller's credentials in the topic for anyone who can read it.
    let (mut headers, stripped): (Vec<_>, Vec<_>) = given
        .into_iter()
        .partition(|(name, _)| !crate::protocol::request::never_forwarded(name));
    let mut dropped: Vec<String> = Vec::new();
    for (name, _) in stripped {
        if !dropped.iter().any(|d| d.eq_ignore_ascii_case(&name)) {
            dropped.push(name);
        }
    }
    let file_len = match &source {
        Source::File(p) => {
            let meta = std::fs::metadata(p)
                .map_err(|e| SendError::Io(format!("cannot read {}: {e}", p.display())))?;
            if meta.is_dir() {
                return Err(usage(format!(
                    "{} is a directory; send a file",
                    p.display()
                )));
            }
            // Special files (a FIFO, /dev/stdin) have no meaningful length.
            meta.is_file().then_some(meta.len())
        }
        _ => None,
    };
    let has_content_type = headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-type"));
    let file_type = request
        .content_type
        .clone()
        .unwrap_or_else(|| match &source {
            Source::File(p) => mime_guess::from_path(p)
                .first_raw()
                .unwrap_or("application/octet-stream")
                .to_string(),
            _ => "application/octet-stream".into(),
        });
    let mut envelope = None;
    let mut body_len = file_len;
    if request.multipart {
        let boundary = format!("kafkasend-{}", JobId::new());
        let filename = match &source {
            Source::File(p) => p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "file".into()),
            _ => "stdin".into(),
        };
        let head = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"; filename=\"{}\"\r\nContent-Type: {file_type}\r\n\r\n",
            quote_param(&request.field),
            quote_param(&filename)
        )
        .into_bytes();
        let tail = format!("\r\n--{boundary}--\r\n").into_bytes();
        body_len = body_len.map(|n| n + head.len() as u64 + tail.len() as u64);
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case("content-type"));
        headers.push((
            "Content-Type".into(),
            format!("multipart/form-data; boundary={boundary}"),
        ));
        envelope = Some((head, tail));
    } else if !matches!(source, Source::None) && !has_content_type {
        headers.push(("Content-Type".into(), file_type));
    }
    Ok(Prepared {
        method,
        path: request.endpoint.clone(),
        headers,
        dropped,
        source,
        body_len,
        envelope,
    })
}

async fn open_body(p: &Prepared) -> Result<Option<Box<dyn AsyncRead + Unpin + Send>>, SendError> {
    let inner: Box<dyn AsyncRead + Unpin + Send> = match &p.source {
        Source::None => return Ok(None),
        Source::Stdin => Box::new(tokio::io::stdin()),
        Source::File(path) => Box::new(
            tokio::fs::File::open(path)
                .await
                .map_err(|e| SendError::Io(format!("cannot open {}: {e}", path.display())))?,
        ),
    };
    Ok(Some(match &p.envelope {
        None => inner,
        Some((head, tail)) => Box::new(
            std::io::Cursor::new(head.clone())
                .chain(inner)
                .chain(std::io::Cursor::new(tail.clone())),
        ),
    }))
}

/// The SHA-256 of exactly the body bytes that will be sent (multipart
/// framing included), read in a first pass so the signature can cover it
/// before the start record goes out. Only a regular file can be read twice.
async fn body_digest(p: &Prepared) -> Result<Option<[u8; 32]>, SendError> {
    match &p.source {
        Source::None => return Ok(None),
        Source::Stdin => {
            return Err(usage(
                "a signed request cannot read its body from standard input: the body is hashed before it is sent, so it must be a file; save it to one, or send without --signing-key (KAFKASEND_SIGNING_KEY_FILE)",
            ))
        }
        Source::File(path) if p.body_len.is_none() => {
            return Err(usage(format!(
                "{} is not a regular file; a signed request's body is hashed before it is sent, so it must be a file that can be read twice",
                path.display()
            )))
        }
        Source::File(_) => {}
    }
    let Some(mut reader) = open_body(p).await? else {
        return Ok(None);
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .await
            .map_err(|e| SendError::Io(format!("reading the body failed: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    if p.body_len != Some(total) {
        return Err(SendError::Io(format!(
            "the file changed while it was read ({} bytes expected, {total} read)",
            p.body_len.unwrap_or(0)
        )));
    }
    Ok(Some(hasher.finalize().into()))
}

/// What a finished send reports.
#[derive(Debug)]
pub struct Outcome {
    /// Job id.
    pub job: JobId,
    /// HTTP status, when a response was awaited.
    pub status: Option<u16>,
}

impl Outcome {
    /// Exit code: 0, or 22 for an HTTP error status.
    pub fn exit_code(&self) -> u8 {
        match self.status {
            Some(s) if s >= 400 => EXIT_HTTP_ERROR,
            _ => 0,
        }
    }
}

/// Runs one send; `report` collects what `--json` prints, also on failure.
/// `interrupt` resolves, with the signal's name, when the user asks to stop;
/// the work under way is dropped then (and with it a part file).
pub async fn run(
    request: &Request,
    cfg: &Settings,
    report: &mut Report,
    interrupt: impl Future<Output = &'static str>,
) -> Result<Outcome, SendError> {
    send_over(None, request, cfg, report, interrupt).await
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
    let prepared = prepare(request)?;
    if !prepared.dropped.is_empty() {
        request
            .show
            .notice(Notice::DroppedHeaders(&prepared.dropped));
    }
    let sink = open_sink(request)?;
    let result = tokio::select! {
        biased;
        signal = interrupt => Err(SendError::Interrupted { job: None, signal }),
        r = async {
            let body_sha256 = signed_digest(&prepared, cfg).await?;
            let opened;
            let link = match link {
                Some(link) => link,
                None => {
                    opened = Link::open(&cfg.kafka, "kafkasend-send").await?;
                    &opened
                }
            };
            transmit(link, prepared, body_sha256, sink, request, cfg, report).await
        } => r,
    };
    with_job(result, report)
}

/// Where the response goes, opened before the request is sent; none
/// without waiting, which takes no response.
fn open_sink(request: &Request) -> Result<Option<Sink>, SendError> {
    if request.no_wait {
        return Ok(None);
    }
    Ok(Some(Sink::open(request.output.as_deref())?))
}

/// The number of a signal an interrupt names, for the exit code (128 +
/// number, as a shell reports a process the signal ended).
fn signal_number(name: &str) -> u8 {
    match name {
        "SIGHUP" => 1,
        "SIGTERM" => 15,
        _ => 2,
    }
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
async fn signed_digest(prepared: &Prepared, cfg: &Settings) -> Result<Option<[u8; 32]>, SendError> {
    match &cfg.signer {
        Some(_) => body_digest(prepared).await,
        None => Ok(None),
    }
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

/// A client connected to the request and response topics, with the
/// partitions it has used kept open; each request reads its replies over a
/// connection of its own (a `Fetcher`). Meant for one request at a time.
/// The partition counts are read once, when it opens.
pub struct Link {
    settings: KafkaSettings,
    requests: PartitionCache,
    replies: PartitionCache,
    request_partitions: i32,
    reply_partitions: i32,
}

impl Link {
    /// Connects and reads both topics' partition counts (one metadata
    /// request); a missing topic is an error.
    pub async fn open(kcfg: &kafka::Config, client_id: &str) -> Result<Self, SendError> {
        let settings = kcfg.settings(client_id);
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

async fn transmit(
    link: &Link,
    prepared: Prepared,
    body_sha256: Option<[u8; 32]>,
    sink: Option<Sink>,
    request: &Request,
    cfg: &Settings,
    report: &mut Report,
) -> Result<Outcome, SendError> {
    let mut body = open_body(&prepared).await?;
    let kcfg = &cfg.kafka;
    let limit = kcfg.timeout;
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
    let (reply_tx, mut reply_rx) = mpsc::channel(8);
    let waiting = match sink {
        None => None,
        Some(sink) => {
            let reply_pc = link.replies.get(reply_partition).await?;
            let from = reply_pc.end_offset().await?;
            let fetcher = Fetcher::new(&link.settings, &kcfg.response_topic, reply_partition);
            // Stopped however this function returns: left running, it would
            // long-poll the broker for nothing.
            let reader = AbortOnDrop(tokio::spawn(follow_replies(
                fetcher, from, job, reply_tx, limit,
            )));
            Some((sink, reader))
        }
    };
    let request_pc = link.requests.get(request_partition).await?;

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

    let mut early: VecDeque<Reply> = VecDeque::new();
    let upload_started = Instant::now();
    if let Some(reader) = body.as_mut() {
        let progress = Progress::new("upload", prepared.body_len, show.progress);
        let mut chunker = Chunker::new(job, 1);
        let capacity = produce_window(kcfg.chunk_size);
        let mut window = ProduceWindow::new(&request_pc, capacity);
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
            while let Ok(r) = reply_rx.try_recv() {
                if matches!(r, Reply::Trouble(_)) {
                    continue;
                }
                if let Reply::Frame(
                    Frame {
                        body: Body::Error(e),
                        ..
                    },
                    _,
                ) = &r
                {
                    return Err(error_from_portal(e.category, e.message.clone()));
                }
                if early.len() >= 64 {
                    return Err(SendError::Integrity(format!(
                        "job {job}: the portal answered before the upload finished with more than 64 records"
                    )));
                }
                early.push_back(r);
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
            "job {job}: sent {sent} bytes in {secs:.2} s ({:.1} MB/s)",
            sent as f64 / 1e6 / secs.max(1e-9)
        );
    }

    report.request_sent = true;

    let Some((sink, reader)) = waiting else {
        return Ok(Outcome { job, status: None });
    };
    let result = receive(sink, show, cfg, job, early, &mut reply_rx, report).await;
    drop(reader);
    result
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Most chunk records in flight at once: enough to keep the broker busy
/// while the next chunk is read and the last acknowledgement travels back.
const PRODUCE_WINDOW: usize = 4;

/// Most chunk bytes in flight at once. Each call in flight holds its chunk
/// about twice over, and its timeout also covers the calls queued ahead of
/// it, so large chunks get fewer calls in flight (one from 4 MiB up).
const PRODUCE_WINDOW_BYTES: usize = 4 * 1024 * 1024;

/// Produce calls in flight for chunks of `chunk_size` bytes.
fn produce_window(chunk_size: usize) -> usize {
    (PRODUCE_WINDOW_BYTES / chunk_size.max(1)).clamp(1, PRODUCE_WINDOW)
}

/// One item from the reply reader.
enum Reply {
    Frame(Frame, Vec<u8>),
    Broken(String),
    /// Reading the reply partition fails; the reader keeps retrying.
    Trouble(Trouble),
}

/// Why reading the reply partition failed last.
#[derive(Debug)]
struct Trouble {
    detail: String,
    /// The broker could not be reached, rather than answering with
    /// something unusable.
    unreachable: bool,
}

/// How far before a job's creation `wait` starts looking for its answer:
/// the portal's clock, which stamps the answer, may run behind the sender's.
const WAIT_CLOCK_SLACK: Duration = Duration::from_secs(300);

/// Picks up the answer to a job sent earlier with `--no-wait`. The job id
/// says which reply partition holds it and, being a ULID, when it was made,
/// so reading starts at the first record stamped shortly before that.
pub async fn wait(
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
    let sink = Sink::open(pickup.output.as_deref())?;
    tokio::select! {
        biased;
        signal = interrupt => Err(SendError::Interrupted { job: Some(job), signal }),
        r = follow_job(job, sink, pickup.show, cfg, report) => r,
    }
}

/// Reads the reply partition of `job` from shortly before its time, and
/// receives its answer into `sink`.
async fn follow_job(
    job: JobId,
    sink: Sink,
    show: Show,
    cfg: &Settings,
    report: &mut Report,
) -> Result<Outcome, SendError> {
    let kcfg = &cfg.kafka;
    let limit = kcfg.timeout;
    let settings = kcfg.settings("kafkasend-wait");
    let cluster = kafka::connect(&settings).await?;
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
    let (reply_tx, mut reply_rx) = mpsc::channel(8);
    let fetcher = Fetcher::new(&settings, &kcfg.response_topic, reply_partition);
    let reader = AbortOnDrop(tokio::spawn(follow_replies(
        fetcher, from, job, reply_tx, limit,
    )));
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

fn error_from_portal(category: ErrorCategory, message: String) -> SendError {
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

/// Receives the answer to `job` into `sink`; `show` decides whether the
/// status line is announced and a progress bar drawn.
async fn receive(
    mut sink: Sink,
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
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    let mut chunks = 0u32;
    let started = Instant::now();
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
        let second_answer = frame.seq == 0 && received > 0;
        if let (true, Body::ResponseStart(rs)) = (second_answer, &frame.body) {
            if sink.restart().await? {
                log::info!(
                    "job {job}: a second answer arrived (the job was taken over); starting over"
                );
                status = Some(rs.status);
                report.status = status;
                hasher = Sha256::new();
                received = 0;
                chunks = 0;
                expected_seq = 1;
                progress.reset();
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
                if show.progress {
                    show.notice(Notice::Status(rs.status));
                }
                status = Some(rs.status);
                report.status = status;
                // A bar on stderr while the body goes to a file; not over a
                // body streaming to the same terminal.
                progress = Progress::new("download", rs.body_len, show.progress && sink.is_file());
            }
            Body::Chunk(info) if status.is_some() => {
                if wire::checksum(&payload) != info.crc32c {
                    return Err(SendError::Integrity(format!(
                        "response chunk at byte {} failed its CRC32C check",
                        info.offset
                    )));
                }
                if info.offset != received {
                    return Err(SendError::Integrity(format!(
                        "response chunk at byte {} arrived when {received} bytes were expected",
                        info.offset
                    )));
                }
                hasher.update(&payload);
                received += payload.len() as u64;
                chunks += 1;
                progress.add(payload.len() as u64);
                sink.write(&payload).await?;
            }
            Body::End(end) if status.is_some() => {
                let digest: [u8; 32] = std::mem::take(&mut hasher).finalize().into();
                if end.total_len != received || end.chunks != chunks {
                    return Err(SendError::Integrity(format!(
                        "response is {received} bytes in {chunks} chunks, the portal sent {} bytes in {}",
                        end.total_len, end.chunks
                    )));
                }
                if digest != end.sha256 {
                    return Err(SendError::Integrity(format!(
                        "response SHA-256 {} does not match the portal's {}",
                        hex(&digest),
                        hex(&end.sha256)
                    )));
                }
                sink.commit().await?;
                progress.finish();
                report.bytes_received = received;
                report.digest_verified = true;
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
    use std::path::Path;

    #[test]
    fn headers_parse_or_explain() {
        assert_eq!(
            parse_header("X-Request-ID:  abc ").unwrap(),
            ("X-Request-ID".into(), "abc".into())
        );
        assert!(parse_header("no colon").is_err());
        assert!(parse_header("Bad Name: x").is_err());
        assert!(parse_header(": x").is_err());
    }

    fn frames_of(job: JobId, status: u16, body: &[u8]) -> Vec<Reply> {
        let mut out = vec![Reply::Frame(
            Frame {
                job,
                seq: 0,
                body: Body::ResponseStart(crate::protocol::wire::ResponseStart {
                    status,
                    headers: vec![],
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
            },
            timeout: Duration::from_secs(5),
            signer: None,
        }
    }

    async fn receive_all(items: Vec<Reply>, output: &Path) -> Result<Outcome, SendError> {
        let job = match &items[0] {
            Reply::Frame(f, _) => f.job,
            _ => unreachable!(),
        };
        let (tx, mut rx) = mpsc::channel(items.len() + 1);
        for i in items {
            tx.send(i).await.unwrap();
        }
        let sink = Sink::open(Some(output))?;
        let mut report = Report::default();
        receive(
            sink,
            Show::default(),
            &config(),
            job,
            VecDeque::new(),
            &mut rx,
            &mut report,
        )
        .await
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

    /// A request to `/x` with these `-H` headers.
    fn with_headers(headers: &[&str]) -> Request {
        Request {
            endpoint: "/x".into(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            field: "file".into(),
            ..Request::default()
        }
    }

    #[test]
    fn headers_no_portal_forwards_are_left_out_and_named_once() {
        let args = with_headers(&[
            "Authorization: Bearer secret-1",
            "X-Request-ID: r-1",
            "cookie: a=b",
            "Cookie: c=d",
            "X-Forwarded-For: 10.0.0.1",
            "Accept: application/json",
        ]);
        let p = prepare(&args).unwrap();
        assert_eq!(
            p.headers,
            vec![
                ("X-Request-ID".to_string(), "r-1".to_string()),
                ("Accept".to_string(), "application/json".to_string()),
            ]
        );
        assert_eq!(p.dropped, ["Authorization", "cookie", "X-Forwarded-For"]);
        let plain = prepare(&with_headers(&["X-A: 1"])).unwrap();
        assert!(plain.dropped.is_empty());
    }

    #[test]
    fn multipart_parameters_are_quoted() {
        assert_eq!(quote_param("a\"b\r\nc"), "a%22b%0D%0Ac");
    }
}
