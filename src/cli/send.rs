//! `kafkasend send` and `kafkasend wait`: their flags, resolved into
//! [`crate::send::Settings`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::Args;

use crate::cli::defaults;
use crate::cli::file::{load_file, FileConfig};
use crate::cli::file::{pick, MAX_WAIT_SECS};
use crate::cli::kafka::{resolve_kafka, KafkaArgs};
use crate::cli::portal::log_filter;
use crate::cli::python::{fill, process_env, Env, Filled, Role, Slot};
use crate::kafka;
use crate::kafka::compression::Codec;
use crate::protocol::digest::DigestKind;
use std::process::ExitCode;

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::logging::{self, LogFormat};
use crate::send::ui::{one_line, Report};
use crate::send::{
    Notice, Outcome, Pickup, Request, ResponseOptions, SendError, Settings, Show, Verbose,
};

/// `-A`'s help, naming the default with this build's version.
const USER_AGENT_HELP: &str = concat!(
    "User-Agent header; '' sends none (the portal then sends its own) [default: kafkasend/",
    env!("CARGO_PKG_VERSION"),
    "]"
);

/// Flags of `kafkasend send`.
#[derive(Debug, Args, Clone, Default)]
pub struct SendArgs {
    /// File to send as the body; '-' reads standard input; none sends no body
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Path and query on the target API, e.g. /api/upload (curl's -e is --referer; here it is the endpoint)
    #[arg(short = 'e', long, value_name = "PATH")]
    pub endpoint: String,
    /// HTTP method [default: POST with a file, GET without]
    #[arg(short = 'X', long, value_name = "METHOD")]
    pub method: Option<String>,
    /// Request header 'Name: value' (repeatable)
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    pub headers: Vec<String>,
    /// Content type of the file [default: guessed from its extension]
    #[arg(long, value_name = "TYPE")]
    pub content_type: Option<String>,
    /// Send the file as a multipart/form-data part
    #[arg(long)]
    pub multipart: bool,
    /// Form field name of the multipart part
    #[arg(
        long,
        value_name = "NAME",
        default_value = "file",
        requires = "multipart"
    )]
    pub field: String,
    // curl's request-side flags (-d, --data-binary, -F, -A, -u).
    /// Body text as curl's -d: '@FILE' reads a file ('@-' standard input) without its line breaks; several are joined with '&'; Content-Type application/x-www-form-urlencoded unless set
    #[arg(short = 'd', long = "data", value_name = "DATA")]
    pub data: Vec<String>,
    /// Body bytes exactly as given: text, or '@FILE' ('@-' standard input), streamed; several are joined with '&'; not with -d
    #[arg(long, value_name = "DATA")]
    pub data_binary: Vec<String>,
    /// A multipart/form-data part (repeatable): 'name=text', 'name=@FILE' (a file upload, streamed), 'name=<FILE' (a text field from a file), each with optional ';type=TYPE' and ';filename=NAME'
    #[arg(short = 'F', long = "form", value_name = "NAME=CONTENT")]
    pub form: Vec<String>,
    /// User-Agent header; '' sends none (the portal then sends its own)
    #[arg(short = 'A', long, value_name = "NAME", help = USER_AGENT_HELP)]
    pub user_agent: Option<String>,
    /// Refused: no portal forwards Authorization; the portal authenticates to the API itself
    #[arg(short = 'u', long = "user", value_name = "USER:PASSWORD")]
    pub user: Option<String>,
    /// Write the response body to this regular file (replaced once the body is verified); '-' is standard output
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Print the job id and exit once the broker has every record; `kafkasend wait JOB_ID` picks the response up later
    #[arg(long)]
    pub no_wait: bool,
    /// Finish the upload of an earlier send of this job id (killed, or its connection lost): the chunks already in Kafka are checked against FILE and only the missing ones are sent; give the same request flags and FILE
    #[arg(long, value_name = "JOB_ID")]
    pub resume: Option<String>,
    /// No progress bars, no status line and no job id line on stderr; errors still show (also -s, as curl's; curl's -q skips .curlrc)
    #[arg(short = 'q', long, short_alias = 's')]
    pub quiet: bool,
    /// Print a one-line JSON summary on stdout (job, status, response headers, bytes each way, duration, digest verified); needs --output or --no-wait. Not curl's --json, which sends a JSON body
    #[arg(long)]
    pub json: bool,
    /// Write the status line and response headers, then a blank line, before the body (into the -o file too). The line always says HTTP/1.1 and the standard reason phrase: the portal relays only the status code and the headers
    #[arg(short = 'i', long)]
    pub include: bool,
    /// Write the status line and response headers to FILE ('-' is standard output); like -o, FILE appears once the response is verified
    #[arg(short = 'D', long, value_name = "FILE")]
    pub dump_header: Option<PathBuf>,
    /// Show the request's and the response's heads ('>' and '<' lines) and the job's steps ('*' lines) on stderr
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// Ask for a compressed response (Accept-Encoding: gzip, deflate, br) and decode it by its Content-Encoding. The portal passes Accept-Encoding on when its PORTAL_ALLOWED_HEADERS lists it (the default list does); otherwise the body arrives uncompressed
    #[arg(long)]
    pub compressed: bool,
    /// Seconds to wait for the response, counted from the last record received
    #[arg(long, env = "KAFKASEND_TIMEOUT_SECS", value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Sign the request with this PEM private key (Ed25519 or EC P-256)
    #[arg(long, env = "KAFKASEND_SIGNING_KEY_FILE", value_name = "FILE")]
    pub signing_key: Option<PathBuf>,
    /// Seconds a request signature stays valid
    #[arg(long, env = "KAFKASEND_SIGNATURE_TTL_SECS", value_name = "SECS")]
    pub signature_ttl_secs: Option<u64>,
    /// Log level: DEBUG, INFO, WARNING, ERROR; RUST_LOG overrides it
    #[arg(long = "log-level", env = "KAFKASEND_LOG_LEVEL", value_name = "LEVEL")]
    pub client_log_level: Option<String>,
    /// Codec of the request's chunk records: zstd, lz4, none, or auto (lz4); chunks a quick probe finds incompressible go uncompressed
    #[arg(
        long = "compression",
        env = "KAFKASEND_COMPRESSION",
        value_name = "CODEC"
    )]
    pub client_compression: Option<String>,
    /// Digest of the request and response bodies: blake3 (protocol version 2, faster) or sha256 (version 1, for portals that speak only version 1)
    #[arg(long = "digest", env = "KAFKASEND_DIGEST", value_name = "ALGORITHM")]
    pub client_digest: Option<String>,
    /// Seal the request for the portal whose public key (its PEM .pub file, from `kafkasend keygen`) this is: only that portal can read it, and only this sender the answer
    #[arg(long, env = "KAFKASEND_SEAL_TO", value_name = "FILE")]
    pub seal_to: Option<PathBuf>,
    /// Private folder where a sealed job's secret is kept until its answer is read [default: $XDG_STATE_HOME/kafkasend/job-keys, else ~/.local/state/kafkasend/job-keys]
    #[arg(long, env = "KAFKASEND_JOB_KEY_DIR", value_name = "DIR")]
    pub job_key_dir: Option<PathBuf>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub kafka: KafkaArgs,
}

/// Flags of `kafkasend wait`.
#[derive(Debug, Args, Clone, Default)]
pub struct WaitArgs {
    /// The job id `send --no-wait` printed
    #[arg(value_name = "JOB_ID")]
    pub job: String,
    /// Write the response body to this regular file (replaced once the body is verified); '-' is standard output
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Seconds to wait for the response, counted from the last record received
    #[arg(long, env = "KAFKASEND_TIMEOUT_SECS", value_name = "SECS")]
    pub timeout: Option<u64>,
    /// No progress bar and no status line on stderr; errors still show
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Print a one-line JSON summary on stdout (as send's); needs --output. Not curl's --json
    #[arg(long)]
    pub json: bool,
    /// Log level: DEBUG, INFO, WARNING, ERROR; RUST_LOG overrides it
    #[arg(long = "log-level", env = "KAFKASEND_LOG_LEVEL", value_name = "LEVEL")]
    pub client_log_level: Option<String>,
    /// Write the status line and response headers, then a blank line, before the body (into the -o file too); always HTTP/1.1 and the standard reason phrase
    #[arg(short = 'i', long)]
    pub include: bool,
    /// Write the status line and response headers to FILE ('-' is standard output)
    #[arg(short = 'D', long, value_name = "FILE")]
    pub dump_header: Option<PathBuf>,
    /// Show the response's head ('<' lines) and the job's steps ('*' lines) on stderr
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// Decode a body compressed with gzip, deflate or br by its Content-Encoding (ask for one with send --compressed --no-wait)
    #[arg(long)]
    pub compressed: bool,
    /// The portal public key sends are sealed to: the answer must then be sealed, and only the job's key file opens it
    #[arg(long, env = "KAFKASEND_SEAL_TO", value_name = "FILE")]
    pub seal_to: Option<PathBuf>,
    /// Folder where send kept the job's secret, for a sealed answer [default: $XDG_STATE_HOME/kafkasend/job-keys, else ~/.local/state/kafkasend/job-keys]
    #[arg(long, env = "KAFKASEND_JOB_KEY_DIR", value_name = "DIR")]
    pub job_key_dir: Option<PathBuf>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub kafka: KafkaArgs,
}

/// Resolves the settings of `kafkasend send`.
pub fn resolve_send(a: &SendArgs) -> anyhow::Result<Settings> {
    if a.user.is_some() {
        // The value is a password: it is named, never repeated.
        bail!("-u/--user is refused: no portal forwards an Authorization header, since the portal authenticates to the API with its own credentials (PORTAL_USE_OAUTH), and a password given here would be written into the Kafka topic; ask the portal's operator for the API's credentials");
    }
    if a.no_wait {
        if let Some(path) = &a.output {
            bail!(
                "--output {} has no effect with --no-wait, which takes no response; write the answer later with: kafkasend wait JOB_ID -o {}",
                path.display(),
                path.display()
            );
        }
    }
    if a.json && crate::send::output::is_stdout(a.output.as_deref()) && !a.no_wait {
        bail!("--json needs --output FILE (or --no-wait), so the response body and the summary do not mix on stdout");
    }
    check_head_flags(
        a.no_wait,
        a.json,
        a.include,
        a.dump_header.as_deref(),
        a.output.as_deref(),
    )?;
    let f = load_file(a.kafka.config.as_deref())?;
    client_log_filter(&a.client_log_level, &f)?;
    let (kafka, timeout) = resolve_wait_parts(&a.kafka, &a.timeout, &f, "kafkasend-send")?;
    let ttl =
        pick(&a.signature_ttl_secs, &f.signature_ttl_secs).unwrap_or(defaults::SIGNATURE_TTL_SECS);
    let cap = crate::protocol::signing::MAX_SIGNATURE_TTL_SECS;
    if !(1..=cap).contains(&ttl) {
        bail!("--signature-ttl-secs (KAFKASEND_SIGNATURE_TTL_SECS) must be between 1 and {cap}, not {ttl}");
    }
    let signer = match pick(&a.signing_key, &f.signing_key).filter(|p| !p.as_os_str().is_empty()) {
        Some(path) => Some(crate::protocol::signing::Signer::from_pem_file(
            &path,
            Duration::from_secs(ttl),
        )?),
        None => None,
    };
    let compression = crate::cli::portal::resolve_compression(
        "--compression (KAFKASEND_COMPRESSION)",
        pick(&a.client_compression, &f.client_compression).as_deref(),
    )?;
    let digest = pick(&a.client_digest, &f.client_digest)
        .as_deref()
        .unwrap_or(defaults::DIGEST)
        .parse::<DigestKind>()
        .map_err(|why| anyhow::anyhow!("--digest (KAFKASEND_DIGEST): {why}"))?;
    let seal_to = read_seal_to(pick(&a.seal_to, &f.seal_to))?;
    if seal_to.is_some() && digest != DigestKind::Blake3 {
        bail!("--seal-to (KAFKASEND_SEAL_TO) cannot be used with --digest {} (KAFKASEND_DIGEST): sealed jobs use BLAKE3 (protocol version 3); drop --digest", digest.name());
    }
    Ok(Settings {
        kafka,
        timeout,
        signer,
        compression,
        digest,
        seal_to,
        job_key_dir: job_key_dir(pick(&a.job_key_dir, &f.job_key_dir), &process_env),
    })
}

/// Resolves the settings of `kafkasend wait`.
pub fn resolve_wait(a: &WaitArgs) -> anyhow::Result<Settings> {
    if a.json && crate::send::output::is_stdout(a.output.as_deref()) {
        bail!(
            "--json needs --output FILE, so the response body and the summary do not mix on stdout"
        );
    }
    check_head_flags(
        false,
        a.json,
        a.include,
        a.dump_header.as_deref(),
        a.output.as_deref(),
    )?;
    let f = load_file(a.kafka.config.as_deref())?;
    client_log_filter(&a.client_log_level, &f)?;
    let (kafka, timeout) = resolve_wait_parts(&a.kafka, &a.timeout, &f, "kafkasend-wait")?;
    Ok(Settings {
        kafka,
        timeout,
        signer: None,
        compression: Codec::None,
        // Nothing is sent; the answer is checked with the digest it names.
        digest: DigestKind::default(),
        seal_to: read_seal_to(pick(&a.seal_to, &f.seal_to))?,
        job_key_dir: job_key_dir(pick(&a.job_key_dir, &f.job_key_dir), &process_env),
    })
}

/// The portal public key `--seal-to` names, if it names a file; the error
/// says what is wrong with the file.
fn read_seal_to(path: Option<PathBuf>) -> anyhow::Result<Option<crate::protocol::seal::PublicKey>> {
    use crate::util::file_read::{read, Kind};
    let Some(path) = path.filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(None);
    };
    let pem = read("KAFKASEND_SEAL_TO", &path, Kind::Key)?;
    crate::protocol::seal::PublicKey::from_pem(&pem)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("--seal-to (KAFKASEND_SEAL_TO): {} {e}", path.display()))
}

/// Where job key files go: the setting, else the XDG state folder, else
/// `~/.local/state`; `None` when no home is known either.
fn job_key_dir(given: Option<PathBuf>, env: Env<'_>) -> Option<PathBuf> {
    let set = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = given.filter(|p| !p.as_os_str().is_empty()) {
        return Some(dir);
    }
    // XDG: a relative value is invalid and ignored.
    let state = set("XDG_STATE_HOME")
        .filter(|p| p.is_absolute())
        .or_else(|| set("HOME").map(|home| home.join(".local/state")))?;
    Some(state.join("kafkasend/job-keys"))
}

/// Refuses `-i` and `-D` where they cannot work: without a response to
/// show (`--no-wait`), with `-D` and `-o` naming one file, or `-D -` mixing
/// the head into the `--json` summary.
fn check_head_flags(
    no_wait: bool,
    json: bool,
    include: bool,
    dump_header: Option<&std::path::Path>,
    output: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use crate::send::output::is_stdout;
    if no_wait && include {
        bail!("--include has no effect with --no-wait, which takes no response; show the headers later with: kafkasend wait JOB_ID -i");
    }
    let Some(dump) = dump_header else {
        return Ok(());
    };
    if no_wait {
        bail!(
            "--dump-header {} has no effect with --no-wait, which takes no response; write the headers later with: kafkasend wait JOB_ID -D {}",
            dump.display(),
            dump.display()
        );
    }
    if is_stdout(Some(dump)) && json {
        bail!("--json prints its summary on stdout, where -D - would write the headers too; give -D a file, or read the headers from the summary");
    }
    if !is_stdout(Some(dump)) && output.is_some_and(|o| same_file(o, dump)) {
        bail!(
            "-D and -o both name {}; to write the headers into the output file, use -i",
            dump.display()
        );
    }
    Ok(())
}

/// Whether two paths name one file, however they are spelt (`h`, `./h`,
/// `dir/../h`): their parent folders resolved, then the names compared.
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    let place = |p: &std::path::Path| {
        let parent = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        (
            std::fs::canonicalize(&parent).ok(),
            p.file_name().map(|n| n.to_owned()),
        )
    };
    a == b || {
        let (pa, na) = place(a);
        pa.is_some() && na.is_some() && (pa, na) == place(b)
    }
}

fn resolve_wait_parts(
    kafka: &KafkaArgs,
    timeout: &Option<u64>,
    f: &FileConfig,
    client_id: &str,
) -> anyhow::Result<(kafka::Config, Duration)> {
    let kafka = resolve_kafka(kafka, f, client_id)?;
    let timeout = pick(timeout, &f.timeout).unwrap_or(defaults::TIMEOUT_SECS);
    if !(1..=MAX_WAIT_SECS).contains(&timeout) {
        bail!("--timeout (KAFKASEND_TIMEOUT_SECS) must be between 1 and {MAX_WAIT_SECS} seconds, not {timeout}");
    }
    Ok((kafka, Duration::from_secs(timeout)))
}

/// The log filter of `send` and `wait`: `--log-level`, else the file's
/// `client_log_level`, else WARNING.
fn client_log_filter(level: &Option<String>, f: &FileConfig) -> anyhow::Result<String> {
    let level =
        pick(level, &f.client_log_level).unwrap_or_else(|| defaults::CLIENT_LOG_LEVEL.into());
    log_filter("KAFKASEND_LOG_LEVEL", &level)
}

/// Applies the Python tool's variables to `args`, starts the log at the
/// level that results (warnings when it cannot be known), shows what the
/// Python variables did, and resolves the settings with `resolve`.
fn start_client<A: Clone>(
    args: &A,
    fill: fn(&mut A, Env<'_>) -> anyhow::Result<Filled>,
    resolve: fn(&A) -> anyhow::Result<Settings>,
    level: fn(&A) -> (Option<String>, Option<PathBuf>),
) -> (A, anyhow::Result<Settings>) {
    let mut args = args.clone();
    let filled = fill(&mut args, &process_env);
    let (given, config) = level(&args);
    let filter = load_file(config.as_deref())
        .ok()
        .and_then(|f| client_log_filter(&given, &f).ok())
        .unwrap_or_else(|| "warn".into());
    logging::init(&filter, LogFormat::Text);
    let cfg = filled.and_then(|filled| {
        for note in &filled.notes {
            if note.warn {
                log::warn!("{}", note.text);
            } else {
                log::info!("{}", note.text);
            }
        }
        resolve(&args).map_err(|e| filled.explain(e))
    });
    (args, cfg)
}

/// Fills `kafkasend send`'s settings from the Python tool's variables.
pub(crate) fn fill_send(a: &mut SendArgs, env: Env<'_>) -> anyhow::Result<Filled> {
    fill(a, Role::Client, env, |a, rust| {
        Some(match rust {
            "KAFKASEND_LOG_LEVEL" => Slot::Text(&mut a.client_log_level),
            "KAFKA_TIMEOUT_SECS" => Slot::Secs(&mut a.kafka.kafka_timeout_secs),
            _ => return None,
        })
    })
}

/// Fills `kafkasend wait`'s settings from the Python tool's variables.
pub(crate) fn fill_wait(a: &mut WaitArgs, env: Env<'_>) -> anyhow::Result<Filled> {
    fill(a, Role::Client, env, |a, rust| {
        Some(match rust {
            "KAFKASEND_LOG_LEVEL" => Slot::Text(&mut a.client_log_level),
            "KAFKA_TIMEOUT_SECS" => Slot::Secs(&mut a.kafka.kafka_timeout_secs),
            _ => return None,
        })
    })
}

/// `kafkasend send`: runs the request, prints the job id when it does not
/// wait, and exits with the outcome's code.
pub(crate) fn run_send(args: &SendArgs) -> ExitCode {
    let (args, cfg) = start_client(args, fill_send, resolve_send, |a| {
        (a.client_log_level.clone(), a.kafka.config.clone())
    });
    let args = &args;
    let request = request(args);
    run_client("send", args.json, cfg, async |cfg, report| {
        let interrupt = Interrupts::watch()?;
        let outcome = crate::send::run(&request, cfg, report, interrupt.first()).await?;
        if request.no_wait && !args.json {
            println!("{}", outcome.job);
        }
        Ok(outcome)
    })
}

/// `kafkasend wait`: picks up an answer sent for earlier.
pub(crate) fn run_wait(args: &WaitArgs) -> ExitCode {
    let (args, cfg) = start_client(args, fill_wait, resolve_wait, |a| {
        (a.client_log_level.clone(), a.kafka.config.clone())
    });
    let args = &args;
    let pickup = Pickup {
        job: args.job.clone(),
        output: args.output.clone(),
        show: show(args.quiet, args.json, args.verbose),
        response: ResponseOptions {
            include: args.include,
            dump_header: args.dump_header.clone(),
            compressed: args.compressed,
        },
    };
    run_client("wait", args.json, cfg, async |cfg, report| {
        let interrupt = Interrupts::watch()?;
        crate::send::wait(&pickup, cfg, report, interrupt.first()).await
    })
}

/// The request `send`'s flags describe.
pub fn request(a: &SendArgs) -> Request {
    Request {
        file: a.file.clone(),
        endpoint: a.endpoint.clone(),
        method: a.method.clone(),
        headers: a.headers.clone(),
        content_type: a.content_type.clone(),
        multipart: a.multipart,
        field: a.field.clone(),
        data: a.data.clone(),
        data_binary: a.data_binary.clone(),
        form: a.form.clone(),
        user_agent: a.user_agent.clone(),
        output: a.output.clone(),
        no_wait: a.no_wait,
        resume: a.resume.clone(),
        show: Show {
            job_lines: !a.quiet,
            ..show(a.quiet, a.json, a.verbose)
        },
        response: ResponseOptions {
            include: a.include,
            dump_header: a.dump_header.clone(),
            compressed: a.compressed,
        },
        trace: trace_from_env(),
    }
}

/// The trace to continue from `TRACEPARENT` and `TRACESTATE`, OpenTelemetry's
/// environment carriers. An invalid one is ignored with a warning, not
/// refused: it was set by whatever started this process, not typed here, and
/// a broken trace must not stop a request (an invalid `-H traceparent` is
/// refused instead).
fn trace_from_env() -> Option<crate::protocol::trace::TraceContext> {
    use std::os::unix::ffi::OsStrExt;
    let tp = std::env::var_os("TRACEPARENT")?;
    let ts = std::env::var_os("TRACESTATE");
    match crate::protocol::trace::TraceContext::from_values(
        Some(tp.as_bytes()),
        ts.as_ref().map(|v| v.as_bytes()),
    ) {
        Ok(Some((ctx, dropped))) => {
            if let Some(e) = dropped {
                eprintln!(
                    "kafkasend send: warning: TRACESTATE ignored, the trace goes on without it: {e}"
                );
            }
            Some(ctx)
        }
        Ok(None) => None,
        Err(e) => {
            eprintln!(
                "kafkasend send: warning: TRACEPARENT/TRACESTATE ignored, a new trace starts: {e}"
            );
            None
        }
    }
}

/// Progress and the status line unless `--quiet` or `--json`; warnings
/// always; `-v`'s lines when asked for, whatever else is.
fn show(quiet: bool, json: bool, verbose: bool) -> Show {
    Show {
        progress: !quiet && !json,
        notices: Some(print_notice),
        verbose,
        job_lines: false,
    }
}

/// Prints a notice on stderr; text from the network is made one safe line.
fn print_notice(n: Notice<'_>) {
    match n {
        Notice::DroppedHeaders(names) => eprintln!(
            "kafkasend send: warning: not sending {}: no portal forwards {} (credentials, routing and framing headers are always stripped)",
            names.join(", "),
            if names.len() == 1 { "it" } else { "them" }
        ),
        Notice::PortalDroppedHeaders(names) => eprintln!(
            "{}",
            one_line(&format!(
                "kafkasend: warning: the portal did not forward {names} to the API (not in its PORTAL_ALLOWED_HEADERS, or never forwarded)"
            ))
        ),
        Notice::Status(status) => {
            let reason = hyper::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("");
            eprintln!("{}", one_line(&format!("HTTP {status} {reason}")));
        }
        Notice::TraceStateDropped(why) => eprintln!(
            "kafkasend send: warning: tracestate dropped, the trace goes on without it: {why}"
        ),
        Notice::Verbose(lines) => print_verbose(lines),
        Notice::Uploading {
            job,
            bytes,
            resumable,
        } => {
            let size = bytes.map_or("a body of unknown length".into(), |n| format!("{n} bytes"));
            let hint = if resumable {
                format!(" (resume with --resume {job})")
            } else {
                String::new()
            };
            eprintln!("kafkasend: job {job}: uploading {size}{hint}");
        }
        Notice::Resumed { job, what } => eprintln!("{}", one_line(&format!("kafkasend: job {job}: {what}"))),
    }
}

/// curl's `-v` lines: `* ` for steps, `> ` for the request's head as it goes
/// to Kafka, `< ` for the response's as the portal relayed it. Each is
/// made one safe line: the response's come from the network.
fn print_verbose(lines: Verbose<'_>) {
    let header = |(name, value): &(String, String)| {
        // Never sent (send leaves them out), but never shown either.
        let value = match name.to_ascii_lowercase().as_str() {
            "authorization" | "proxy-authorization" | "cookie" => "(hidden)",
            _ => value.as_str(),
        };
        one_line(&format!("{name}: {value}"))
    };
    match lines {
        Verbose::Info(text) => eprintln!("* {}", one_line(text)),
        Verbose::Request {
            method,
            path,
            headers,
        } => {
            eprintln!("> {}", one_line(&format!("{method} {path} HTTP/1.1")));
            for h in headers {
                eprintln!("> {}", header(h));
            }
            eprintln!(">");
            eprintln!("* the portal forwards only the headers its PORTAL_ALLOWED_HEADERS lists, and sets Host, Content-Length and an idempotency key itself");
        }
        Verbose::Response { status, headers } => {
            eprintln!("< {}", crate::send::status_line(status).trim_end());
            for h in headers {
                eprintln!("< {}", header(h));
            }
            eprintln!("<");
        }
    }
}

/// The signals that stop `send` and `wait`: Ctrl-C, `kill` (and `timeout`,
/// systemd, CI cancelling) and a closed terminal. Taken from the moment
/// they are watched, so that stopping drops the work under way (and with it
/// a part file) instead of ending the process on the spot.
pub struct Interrupts {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Interrupts {
    /// Starts taking the three signals; the runtime must be running.
    pub fn watch() -> Result<Self, SendError> {
        let watch = |kind: SignalKind| {
            signal(kind).map_err(|e| SendError::Io(format!("cannot watch for signals: {e}")))
        };
        Ok(Self {
            int: watch(SignalKind::interrupt())?,
            term: watch(SignalKind::terminate())?,
            hup: watch(SignalKind::hangup())?,
        })
    }

    /// The first of the three signals to arrive, by name.
    pub async fn first(mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

/// Runs `send` or `wait`: one line on stderr for an error, the JSON summary
/// on stdout when asked for, and the exit code of the outcome.
fn run_client(
    name: &str,
    json: bool,
    cfg: anyhow::Result<Settings>,
    run: impl AsyncFnOnce(&Settings, &mut Report) -> Result<Outcome, SendError>,
) -> ExitCode {
    let mut report = Report::default();
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            let shown = one_line(&format!("{e:#}"));
            eprintln!("kafkasend {name}: {shown}");
            if json {
                println!("{}", report.to_json(2, Some(&shown)));
            }
            return ExitCode::from(2);
        }
    };
    let rt = match crate::util::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kafkasend {name}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let exporter = rt.block_on(async { crate::cli::otlp::from_env("kafkasend-send") });
    let result = rt.block_on(run(&cfg, &mut report));
    // Bounded: a dead collector must not hold the command's exit.
    if let Some(exporter) = exporter {
        rt.block_on(exporter.shutdown(crate::cli::otlp::EXIT_LIMIT));
    }
    // Background retries of the Kafka client must not hold the exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    let (code, error) = match result {
        Ok(outcome) => (outcome.exit_code(), None),
        Err(e) => {
            // Portal messages, and Kafka's, arrive over the network.
            let shown = one_line(&e.to_string());
            eprintln!("kafkasend {name}: {shown}");
            (e.exit_code(), Some(shown))
        }
    };
    if json {
        println!("{}", report.to_json(code, error.as_deref()));
    }
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_key_folder_is_the_setting_else_xdg_state_else_home() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let given = Some(PathBuf::from("/keys"));
        let all = env(&[("XDG_STATE_HOME", "/state"), ("HOME", "/home/u")]);
        assert_eq!(job_key_dir(given, &all), Some(PathBuf::from("/keys")));
        assert_eq!(
            job_key_dir(None, &all),
            Some(PathBuf::from("/state/kafkasend/job-keys"))
        );
        // A relative XDG_STATE_HOME is invalid, and passed over.
        let relative = env(&[("XDG_STATE_HOME", "state"), ("HOME", "/home/u")]);
        assert_eq!(
            job_key_dir(Some(PathBuf::new()), &relative),
            Some(PathBuf::from("/home/u/.local/state/kafkasend/job-keys"))
        );
        assert_eq!(job_key_dir(None, &env(&[])), None);
    }
}
