//! `kafkasend send` and `kafkasend wait`: their flags, resolved into
//! [`crate::send::Settings`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::Args;

use crate::cli::file::{load_file, FileConfig};
use crate::cli::kafka::{resolve_kafka, KafkaArgs};
use crate::cli::{pick, MAX_WAIT_SECS};
use crate::kafka;
use crate::send::Settings;

/// Flags of `kafkasend send`.
#[derive(Debug, Args, Clone, Default)]
pub struct SendArgs {
    /// File to send as the body; '-' reads standard input; none sends no body
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Path and query on the target API, e.g. /api/upload
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
    /// Write the response body to this regular file (replaced once the body is verified); '-' is standard output
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Print the job id and exit once the broker has every record; `kafkasend wait JOB_ID` picks the response up later
    #[arg(long)]
    pub no_wait: bool,
    /// No progress bars and no status line on stderr; errors still show
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Print a one-line JSON summary on stdout (job, status, bytes each way, duration, digest verified); needs --output or --no-wait
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait for the response, counted from the last record received [default: 300]
    #[arg(long, env = "KAFKASEND_TIMEOUT_SECS", value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Sign the request with this PEM private key (Ed25519 or EC P-256)
    #[arg(long, env = "KAFKASEND_SIGNING_KEY_FILE", value_name = "FILE")]
    pub signing_key: Option<PathBuf>,
    /// Seconds a request signature stays valid [default: 300]
    #[arg(long, env = "KAFKASEND_SIGNATURE_TTL_SECS", value_name = "SECS")]
    pub signature_ttl_secs: Option<u64>,
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
    /// Seconds to wait for the response, counted from the last record received [default: 300]
    #[arg(long, env = "KAFKASEND_TIMEOUT_SECS", value_name = "SECS")]
    pub timeout: Option<u64>,
    /// No progress bar and no status line on stderr; errors still show
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Print a one-line JSON summary on stdout; needs --output
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub kafka: KafkaArgs,
}

/// Resolves the settings of `kafkasend send`.
pub fn resolve_send(a: &SendArgs) -> anyhow::Result<Settings> {
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
    let f = load_file(a.kafka.config.as_deref())?;
    let (kafka, timeout) = resolve_wait_parts(&a.kafka, &a.timeout, &f)?;
    let ttl = pick(&a.signature_ttl_secs, &f.signature_ttl_secs).unwrap_or(300);
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
    Ok(Settings {
        kafka,
        timeout,
        signer,
    })
}

/// Resolves the settings of `kafkasend wait`.
pub fn resolve_wait(a: &WaitArgs) -> anyhow::Result<Settings> {
    if a.json && crate::send::output::is_stdout(a.output.as_deref()) {
        bail!(
            "--json needs --output FILE, so the response body and the summary do not mix on stdout"
        );
    }
    let f = load_file(a.kafka.config.as_deref())?;
    let (kafka, timeout) = resolve_wait_parts(&a.kafka, &a.timeout, &f)?;
    Ok(Settings {
        kafka,
        timeout,
        signer: None,
    })
}

fn resolve_wait_parts(
    kafka: &KafkaArgs,
    timeout: &Option<u64>,
    f: &FileConfig,
) -> anyhow::Result<(kafka::Config, Duration)> {
    let kafka = resolve_kafka(kafka, f)?;
    let timeout = pick(timeout, &f.timeout).unwrap_or(300);
    if !(1..=MAX_WAIT_SECS).contains(&timeout) {
        bail!("--timeout (KAFKASEND_TIMEOUT_SECS) must be between 1 and {MAX_WAIT_SECS} seconds, not {timeout}");
    }
    Ok((kafka, Duration::from_secs(timeout)))
}
