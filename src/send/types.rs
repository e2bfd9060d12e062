//! The values `send` and `wait` take and give back: the request, its
//! settings, what to show, and how it ends. Every step of the role uses them,
//! so they sit below the steps; [`crate::send`] re-exports them.

use std::path::PathBuf;
use std::time::Duration;

use crate::kafka::{self, KafkaError};
use crate::protocol::trace::{SpanId, TraceContext};
use crate::protocol::wire::JobId;
use crate::protocol::ErrorCategory;
use crate::send::output::OutputError;

/// Exit status for a response with HTTP status 400 or above (as curl's `--fail-with-body`).
pub(crate) const EXIT_HTTP_ERROR: u8 = 22;

/// What `send` and `wait` run with, resolved and checked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Kafka side.
    pub kafka: kafka::Config,
    /// Wait for the response this long after the last record received.
    pub timeout: Duration,
    /// Signs each request, when a signing key is set.
    pub signer: Option<crate::protocol::signing::Signer>,
    /// How the request's chunk records are compressed.
    pub compression: crate::kafka::compression::Codec,
    /// The digest of a new job's bodies (and so its frame version).
    pub digest: crate::protocol::digest::DigestKind,
    /// The portal key new jobs are sealed to (`--seal-to`); clear jobs
    /// when `None`.
    pub seal_to: Option<crate::protocol::seal::PublicKey>,
    /// Where sealed jobs' secrets are kept until their answers are read
    /// (`KAFKASEND_JOB_KEY_DIR`); `None` when neither it nor a home folder
    /// is set, which only a sealed job minds.
    pub job_key_dir: Option<PathBuf>,
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
    /// `-d` values as curl takes them: text, or `@FILE` / `@-` read with
    /// their line breaks dropped; several are joined with `&`.
    pub data: Vec<String>,
    /// `--data-binary` values: text, or `@FILE` / `@-` streamed as they are;
    /// several are joined with `&`.
    pub data_binary: Vec<String>,
    /// `-F` parts of one multipart form: `name=text`, `name=@FILE`,
    /// `name=<FILE`, each optionally with `;type=TYPE` and `;filename=NAME`.
    pub form: Vec<String>,
    /// The User-Agent: `None` sends `kafkasend/VERSION`, an empty one none.
    pub user_agent: Option<String>,
    /// Where the response body goes: a regular file, or standard output for
    /// none or `-`.
    pub output: Option<PathBuf>,
    /// Return once the request is wholly sent, without waiting for the answer.
    pub no_wait: bool,
    /// The id of a job whose upload to finish (`--resume`): the chunks
    /// already in the request topic are checked against the body and only
    /// the missing ones produced.
    pub resume: Option<String>,
    /// What to show while it runs.
    pub show: Show,
    /// What is done with the response's head and encoding (`-i`, `-D`,
    /// `--compressed`).
    pub response: ResponseOptions,
    /// The trace to continue, from the environment (`TRACEPARENT`,
    /// `TRACESTATE`); a `-H traceparent` wins over it.
    pub trace: Option<crate::protocol::trace::TraceContext>,
}

/// The answer to pick up for a job sent earlier without waiting.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pickup {
    /// The job id as given, checked before anything else.
    pub job: String,
    /// Where the response body goes, as in [`Request::output`].
    pub output: Option<PathBuf>,
    /// What to show while it runs.
    pub show: Show,
    /// What is done with the response's head and encoding, as in
    /// [`Request::response`].
    pub response: ResponseOptions,
}

/// curl's response-side options: where the status line and headers go, and
/// whether a compressed body is asked for and decoded.
#[derive(Debug, Clone, Default)]
pub struct ResponseOptions {
    /// Write the status line and headers before the body, on its
    /// destination (curl's `-i`).
    pub include: bool,
    /// Also write them to this file, or to standard output for `-` (curl's
    /// `-D`).
    pub dump_header: Option<PathBuf>,
    /// Ask for `gzip, deflate, br` and decode the body by its
    /// `Content-Encoding` (curl's `--compressed`).
    pub compressed: bool,
}

/// What `send` and `wait` show their user while they run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Show {
    /// Progress bars on stderr (when it is a terminal), and the response's
    /// status line as a [`Notice::Status`].
    pub progress: bool,
    /// Receives the notices; `None` drops them.
    pub notices: Option<fn(Notice<'_>)>,
    /// The request's and the response's heads, and what happens between,
    /// as [`Notice::Verbose`] (curl's `-v`).
    pub verbose: bool,
    /// The job id as an upload starts, and each resume, as
    /// [`Notice::Uploading`] and [`Notice::Resumed`].
    pub job_lines: bool,
}

impl Show {
    pub(super) fn notice(&self, n: Notice<'_>) {
        if !self.job_lines && matches!(n, Notice::Uploading { .. } | Notice::Resumed { .. }) {
            return;
        }
        if let Some(f) = self.notices {
            f(n);
        }
    }

    /// With `-v`, a line about what happens; `text` is made only then.
    pub(super) fn info(&self, text: impl FnOnce() -> String) {
        if self.verbose {
            self.notice(Notice::Verbose(Verbose::Info(&text())));
        }
    }
}

/// Something the user should hear about while a request runs.
#[derive(Debug, Clone, Copy)]
pub enum Notice<'a> {
    /// These `-H` headers were left out: no portal forwards them. Names
    /// only, since their values may be credentials.
    DroppedHeaders(&'a [String]),
    /// The portal did not forward these request headers to the API, as it
    /// reported them (names only, from the network: show it as one safe line).
    PortalDroppedHeaders(&'a str),
    /// The response arrived with this HTTP status; its body follows.
    Status(u16),
    /// An invalid `tracestate` was dropped; the trace goes on without it.
    TraceStateDropped(&'a str),
    /// With [`Show::verbose`]: what curl's `-v` shows.
    Verbose(Verbose<'a>),
    /// With [`Show::job_lines`]: the upload of a body of more than one
    /// chunk starts under this job id.
    Uploading {
        /// The job.
        job: JobId,
        /// Body bytes to upload, when known.
        bytes: Option<u64>,
        /// Whether `--resume` could finish it if this run stops.
        resumable: bool,
    },
    /// With [`Show::job_lines`]: an upload taken up again, and what of it
    /// was found in the request topic.
    Resumed {
        /// The job.
        job: JobId,
        /// What was found and what happens next.
        what: &'a str,
    },
}

/// The lines of curl's `-v`, before they are given their `* `, `> ` or `< `.
#[derive(Debug, Clone, Copy)]
pub enum Verbose<'a> {
    /// What happens: the job id, the partitions, the checks.
    Info(&'a str),
    /// The request as it goes to Kafka: method, path and headers.
    Request {
        /// HTTP method.
        method: &'a str,
        /// Path and query.
        path: &'a str,
        /// Headers, as written to the start record.
        headers: &'a [(String, String)],
    },
    /// The response's status and headers, as the portal relayed them.
    Response {
        /// HTTP status.
        status: u16,
        /// Headers, in the order the API sent them.
        headers: &'a [(String, String)],
    },
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
    /// `--compressed` could not decode the body as its `Content-Encoding`
    /// says (curl's exit code 61).
    #[error("{0}")]
    Decoding(String),
}

impl SendError {
    /// The process exit code for this failure.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Io(_) => 1,
            Self::Refused { .. } => 3,
            Self::Integrity(_) => 4,
            Self::Upstream { .. } => 5,
            Self::Kafka(_) | Self::BrokerLost { .. } | Self::ReplyUnreadable { .. } => 7,
            Self::Timeout { .. } => 28,
            Self::Decoding(_) => 61,
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

/// A usage error: the request as given cannot be sent.
pub(super) fn usage(msg: impl Into<String>) -> SendError {
    SendError::Usage(msg.into())
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

/// The number of a signal an interrupt names, for the exit code (128 +
/// number, as a shell reports a process the signal ended).
fn signal_number(name: &str) -> u8 {
    match name {
        "SIGHUP" => 1,
        "SIGTERM" => 15,
        _ => 2,
    }
}

/// The trace a run of `send` is part of.
#[derive(Debug, Clone)]
pub(crate) struct SendTrace {
    /// What the start record carries: the trace, `send`'s own span as the
    /// parent, the flags and the caller's `tracestate`.
    pub(crate) context: TraceContext,
    /// The span `send` continues, when it was given one.
    pub(crate) parent: Option<SpanId>,
    /// Why a `-H tracestate` was dropped (the trace kept), for a warning.
    pub(crate) state_dropped: Option<String>,
}

impl SendTrace {
    /// `send`'s own span under `given`: same trace, flags and state.
    pub(crate) fn under(given: TraceContext) -> Self {
        Self {
            parent: Some(given.parent.parent_id),
            context: TraceContext {
                parent: given.parent.child(SpanId::random()),
                state: given.state,
            },
            state_dropped: None,
        }
    }
}
