//! Settings: flags, environment variables, an optional TOML file, defaults.
//!
//! Precedence is flag > environment > file > default. clap merges the first
//! two (each flag names its variable); the file is read through
//! [`crate::util::file_read`] and parsed as TOML, and
//! [`PortalConfig::resolve`] / [`SendConfig::resolve`] fill in the rest.
//! Invalid values fail at start with a message naming the setting.

pub mod completions;
pub mod health;
pub mod show;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};

use crate::kafka::security::{KafkaSecurity, SaslCredentials, SaslMechanism, SecurityProtocol};
use crate::logging::LogFormat;
use crate::portal::http_dispatch::tls::ApiTls;
use crate::portal::http_dispatch::token_cache::{AssertionSigner, AuthMethod, ClientCredentials};
use crate::protocol::chunker::{DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE};

/// Longest wait any setting may ask for: a week.
pub const MAX_WAIT_SECS: u64 = 7 * 24 * 3600;

/// Largest spool threshold: bodies above it always go to disk.
pub const MAX_SPOOL_THRESHOLD: usize = 64 * 1024 * 1024;

const AFTER_HELP: &str = "\
Environment variables (each also a flag, and a key of the --config file):
  KAFKA_BOOTSTRAP_SERVERS, KAFKA_REQUEST_TOPIC, KAFKA_RESPONSE_TOPIC,
  PORTAL_TARGET_API_URL, PORTAL_USE_OAUTH, OAUTH2_TOKEN_URL, OAUTH2_CLIENT_ID, ...
See docs/configuration.md for the full table.";

/// Command line of `kafkasend`.
#[derive(Debug, Parser)]
#[command(
    name = "kafkasend",
    version,
    about = "Call a REST API across a network boundary that only Kafka crosses",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run next to the REST API: consume requests, call the API, stream responses back.
    #[command(
        after_help = "Example:\n  PORTAL_TARGET_API_URL=http://127.0.0.1:8080 PORTAL_USE_OAUTH=false \\\n    PORTAL_ALLOWED_ENDPOINTS='POST /api/upload, GET /api/items/*' kafkasend portal"
    )]
    Portal(Box<PortalArgs>),
    /// Send one HTTP request (and a file) through Kafka and print the response.
    #[command(
        after_help = "Examples:\n  kafkasend send report.pdf --endpoint /api/upload\n  kafkasend send --endpoint '/api/items?limit=5' -H 'Accept: application/json'\n  kafkasend send big.iso --endpoint /api/upload --multipart --field file -o reply.json"
    )]
    Send(Box<SendArgs>),
    /// Wait for the response to a job sent earlier with `send --no-wait`.
    #[command(
        after_help = "Examples:\n  JOB=$(kafkasend send big.iso --endpoint /api/upload --no-wait)\n  kafkasend wait \"$JOB\" -o reply.json"
    )]
    Wait(Box<WaitArgs>),
    /// Inspect settings.
    #[command(
        subcommand,
        after_help = "Example:\n  kafkasend config show portal --config portal.toml"
    )]
    Config(crate::cli::show::ConfigCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(
        after_help = "Examples:\n  kafkasend completions bash > /etc/bash_completion.d/kafkasend\n  kafkasend completions zsh > \"${fpath[1]}/_kafkasend\"\n  kafkasend completions fish > ~/.config/fish/completions/kafkasend.fish"
    )]
    Completions(crate::cli::completions::CompletionsArgs),
    /// GET a health URL and exit 0 on a 2xx answer, 1 otherwise (for container health checks).
    #[command(
        after_help = "Examples:\n  kafkasend health\n  kafkasend health --url http://127.0.0.1:9464/readyz --timeout 3"
    )]
    Health(crate::cli::health::HealthArgs),
}

/// Kafka settings shared by both sides.
#[derive(Debug, Args, Clone, Default)]
pub struct KafkaArgs {
    /// Kafka brokers, `host:port[,host:port...]` [default: localhost:9092]
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS", value_name = "HOSTS")]
    pub bootstrap_servers: Option<String>,
    /// Topic requests travel on [default: api-requests]
    #[arg(long, env = "KAFKA_REQUEST_TOPIC", value_name = "TOPIC")]
    pub request_topic: Option<String>,
    /// Topic responses travel on [default: api-responses]
    #[arg(long, env = "KAFKA_RESPONSE_TOPIC", value_name = "TOPIC")]
    pub response_topic: Option<String>,
    /// Seconds to wait for the broker to connect or acknowledge [default: 30]
    #[arg(long, env = "KAFKA_TIMEOUT_SECS", value_name = "SECS")]
    pub kafka_timeout_secs: Option<u64>,
    /// Chunk payload size in bytes; must fit the broker's message.max.bytes [default: 921600]
    #[arg(long, env = "KAFKASEND_CHUNK_SIZE", value_name = "BYTES")]
    pub chunk_size: Option<usize>,
    /// PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL [default: PLAINTEXT]
    #[arg(long, env = "KAFKA_SECURITY_PROTOCOL", value_name = "PROTOCOL")]
    pub security_protocol: Option<String>,
    /// PEM file of CA certificates trusted for the brokers, besides the bundled web PKI roots
    #[arg(long, env = "KAFKA_SSL_CA_FILE", value_name = "FILE")]
    pub ssl_ca_file: Option<PathBuf>,
    /// SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (required with SASL_*)
    #[arg(long, env = "KAFKA_SASL_MECHANISM", value_name = "MECHANISM")]
    pub sasl_mechanism: Option<String>,
    /// SASL user name
    #[arg(long, env = "KAFKA_SASL_USERNAME", value_name = "USER")]
    pub sasl_username: Option<String>,
    /// SASL password (prefer the environment variable)
    #[arg(
        long,
        env = "KAFKA_SASL_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub sasl_password: Option<String>,
    /// TOML file with settings (keys are the flag names with '_' for '-')
    #[arg(long, env = "KAFKASEND_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Flags of `kafkasend portal`.
#[derive(Debug, Args, Clone, Default)]
pub struct PortalArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub kafka: KafkaArgs,
    /// Base URL of the REST API the portal calls (required)
    #[arg(long, env = "PORTAL_TARGET_API_URL", value_name = "URL")]
    pub target_api_url: Option<String>,
    /// Get an OAuth2 client-credentials token for the API [default: true]
    #[arg(long, env = "PORTAL_USE_OAUTH", value_name = "BOOL", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub use_oauth: Option<bool>,
    /// Log level: DEBUG, INFO, WARNING, ERROR [default: INFO]
    #[arg(long, env = "PORTAL_LOG_LEVEL", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log lines as text or json (one JSON object per line) [default: text]
    #[arg(long, env = "PORTAL_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Serve /healthz, /readyz and /metrics on this address, e.g. 0.0.0.0:9464 [default: off]
    #[arg(long, env = "PORTAL_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// REST calls running at once [default: 10]
    #[arg(long, env = "PORTAL_MAX_CONCURRENT_JOBS", value_name = "N")]
    pub max_concurrent_jobs: Option<usize>,
    /// Seconds the API may take to answer one call [default: 1800]
    #[arg(long, env = "PORTAL_REQUEST_TIMEOUT_SECS", value_name = "SECS")]
    pub request_timeout_secs: Option<u64>,
    /// Request headers forwarded to the API, comma-separated [default: Content-Type,Accept,X-Request-ID,X-Correlation-ID]
    #[arg(long, env = "PORTAL_ALLOWED_HEADERS", value_name = "NAMES")]
    pub allowed_headers: Option<String>,
    /// Endpoints the portal may call: comma-separated '[METHODS ]PATTERN', '*' within a segment, '**' across (e.g. 'POST /api/upload, GET,DELETE /api/items/*') [default: none]
    #[arg(long, env = "PORTAL_ALLOWED_ENDPOINTS", value_name = "PATTERNS")]
    pub allowed_endpoints: Option<String>,
    /// Refuse requests outside PORTAL_ALLOWED_ENDPOINTS; false only logs them [default: true]
    #[arg(long, env = "PORTAL_STRICT_SECURITY", value_name = "BOOL", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub strict_security: Option<bool>,
    /// Most headers one request may carry [default: 64]
    #[arg(long, env = "PORTAL_MAX_HEADER_COUNT", value_name = "N")]
    pub max_header_count: Option<usize>,
    /// Most bytes of header names and values one request may carry [default: 16384]
    #[arg(long, env = "PORTAL_MAX_HEADER_BYTES", value_name = "BYTES")]
    pub max_header_bytes: Option<usize>,
    /// Most chunks one request body may have [default: 100000]
    #[arg(long, env = "PORTAL_MAX_CHUNKS", value_name = "N")]
    pub max_chunks: Option<usize>,
    /// Most bytes of spool files on disk at once, all jobs together [default: 21474836480]
    #[arg(long, env = "PORTAL_MAX_SPOOL_BYTES", value_name = "BYTES")]
    pub max_spool_bytes: Option<u64>,
    /// Most bytes of memory held for requests at once, all jobs together; beyond it bodies spool to disk [default: 268435456]
    #[arg(long, env = "PORTAL_MAX_ASSEMBLY_MEMORY_BYTES", value_name = "BYTES")]
    pub max_assembly_memory_bytes: Option<u64>,
    /// Refuse a request older than this, counted from its job id's time [default: 3600]
    #[arg(long, env = "PORTAL_MAX_JOB_AGE_SECS", value_name = "SECS")]
    pub max_job_age_secs: Option<u64>,
    /// Largest request body accepted, in bytes [default: 10737418240]
    #[arg(long, env = "PORTAL_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<u64>,
    /// Bodies above this many bytes spool to disk [default: 1048576]
    #[arg(long, env = "PORTAL_SPOOL_THRESHOLD_BYTES", value_name = "BYTES")]
    pub spool_threshold_bytes: Option<usize>,
    /// Directory for spool files [default: the system temporary directory]
    #[arg(long, env = "PORTAL_SPOOL_DIR", value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Jobs assembling at once per partition [default: 256]
    #[arg(long, env = "PORTAL_MAX_ASSEMBLING_JOBS", value_name = "N")]
    pub max_assembling_jobs: Option<usize>,
    /// Drop a job when nothing of it arrives for this long [default: 300]
    #[arg(long, env = "PORTAL_JOB_IDLE_TIMEOUT_SECS", value_name = "SECS")]
    pub job_idle_timeout_secs: Option<u64>,
    /// Partitions of topics the portal creates [default: 3]
    #[arg(long, env = "KAFKA_TOPIC_PARTITIONS", value_name = "N")]
    pub topic_partitions: Option<i32>,
    /// Replication factor of topics the portal creates [default: 1]
    #[arg(long, env = "KAFKA_REPLICATION_FACTOR", value_name = "N")]
    pub replication_factor: Option<i16>,
    /// Where to start reading the request topic: latest or earliest [default: latest]
    #[arg(long, env = "PORTAL_START_FROM", value_name = "WHERE")]
    pub start_from: Option<String>,
    /// Consumer group the portals share [default: kafkasend-portal]
    #[arg(long, env = "KAFKA_CONSUMER_GROUP", value_name = "GROUP")]
    pub consumer_group: Option<String>,
    /// The group drops a portal not heard from for this long, 6 to 1800 [default: 30]
    #[arg(long, env = "PORTAL_SESSION_TIMEOUT_SECS", value_name = "SECS")]
    pub session_timeout_secs: Option<u64>,
    /// On shutdown or rebalance, how long jobs in flight may finish [default: 30]
    #[arg(long, env = "PORTAL_SHUTDOWN_GRACE_SECS", value_name = "SECS")]
    pub shutdown_grace_secs: Option<u64>,
    /// Header carrying the job id on every API call; empty turns it off [default: Idempotency-Key]
    #[arg(long, env = "PORTAL_IDEMPOTENCY_HEADER", value_name = "NAME")]
    pub idempotency_header: Option<String>,
    /// Accept only requests signed by one of these PEM public keys (comma-separated files)
    #[arg(long, env = "PORTAL_TRUSTED_KEYS", value_name = "FILES")]
    pub trusted_keys: Option<String>,
    /// Longest lifetime a request signature may have, in seconds [default: 3600]
    #[arg(long, env = "PORTAL_SIGNATURE_MAX_TTL_SECS", value_name = "SECS")]
    pub signature_max_ttl_secs: Option<u64>,
    /// OAuth2 token endpoint URL
    #[arg(long, env = "OAUTH2_TOKEN_URL", value_name = "URL")]
    pub oauth2_token_url: Option<String>,
    /// OAuth2 client id
    #[arg(long, env = "OAUTH2_CLIENT_ID", value_name = "ID")]
    pub oauth2_client_id: Option<String>,
    /// OAuth2 client secret (prefer the environment variable)
    #[arg(
        long,
        env = "OAUTH2_CLIENT_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub oauth2_client_secret: Option<String>,
    /// OAuth2 scope
    #[arg(long, env = "OAUTH2_SCOPE", value_name = "SCOPE")]
    pub oauth2_scope: Option<String>,
    /// OAuth2 audience
    #[arg(long, env = "OAUTH2_AUDIENCE", value_name = "AUDIENCE")]
    pub oauth2_audience: Option<String>,
    /// client_secret_basic, client_secret_post or private_key_jwt [default: private_key_jwt with an assertion key file, else client_secret_basic]
    #[arg(long, env = "OAUTH2_AUTH_METHOD", value_name = "METHOD")]
    pub oauth2_auth_method: Option<String>,
    /// PEM private key (EC P-256/P-384 in PKCS#8, or RSA) that signs private_key_jwt client assertions
    #[arg(long, env = "OAUTH2_CLIENT_ASSERTION_KEY_FILE", value_name = "FILE")]
    pub oauth2_client_assertion_key_file: Option<PathBuf>,
    /// Client assertion algorithm: ES256, ES384, RS256, RS384, RS512, PS256, PS384, PS512 [default: ES256 for EC keys (ES384 for P-384), RS256 for RSA keys]
    #[arg(long, env = "OAUTH2_CLIENT_ASSERTION_ALG", value_name = "ALG")]
    pub oauth2_client_assertion_alg: Option<String>,
    /// `kid` header of client assertions, naming the key registered at the authorization server
    #[arg(long, env = "OAUTH2_CLIENT_ASSERTION_KID", value_name = "KID")]
    pub oauth2_client_assertion_kid: Option<String>,
    /// `aud` claim of client assertions [default: the token URL]
    #[arg(
        long,
        env = "OAUTH2_CLIENT_ASSERTION_AUDIENCE",
        value_name = "AUDIENCE"
    )]
    pub oauth2_client_assertion_audience: Option<String>,
    /// API statuses that mean the token was refused: refresh it and retry once, comma-separated 4xx [default: 401]
    #[arg(long, env = "PORTAL_TOKEN_REFRESH_STATUSES", value_name = "CODES")]
    pub token_refresh_statuses: Option<String>,
    /// PEM file of CA certificates trusted for the API and token endpoint, besides the web PKI and system roots
    #[arg(long, env = "PORTAL_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) the portal presents to the API and token endpoint (mTLS); needs PORTAL_CLIENT_KEY_FILE
    #[arg(long, env = "PORTAL_CLIENT_CERT_FILE", value_name = "FILE")]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of PORTAL_CLIENT_CERT_FILE
    #[arg(long, env = "PORTAL_CLIENT_KEY_FILE", value_name = "FILE")]
    pub client_key_file: Option<PathBuf>,
}

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

/// Keys of the optional `--config` TOML file; every one optional.
/// Its `Debug` leaves out the secrets.
#[derive(Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct FileConfig {
    pub bootstrap_servers: Option<String>,
    pub request_topic: Option<String>,
    pub response_topic: Option<String>,
    pub kafka_timeout_secs: Option<u64>,
    pub chunk_size: Option<usize>,
    pub security_protocol: Option<String>,
    pub ssl_ca_file: Option<PathBuf>,
    pub sasl_mechanism: Option<String>,
    pub sasl_username: Option<String>,
    pub sasl_password: Option<String>,
    pub target_api_url: Option<String>,
    pub use_oauth: Option<bool>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    pub admin_listen: Option<String>,
    pub max_concurrent_jobs: Option<usize>,
    pub request_timeout_secs: Option<u64>,
    pub allowed_headers: Option<String>,
    pub allowed_endpoints: Option<String>,
    pub strict_security: Option<bool>,
    pub max_header_count: Option<usize>,
    pub max_header_bytes: Option<usize>,
    pub max_chunks: Option<usize>,
    pub max_spool_bytes: Option<u64>,
    pub max_assembly_memory_bytes: Option<u64>,
    pub max_job_age_secs: Option<u64>,
    pub max_body_bytes: Option<u64>,
    pub spool_threshold_bytes: Option<usize>,
    pub spool_dir: Option<PathBuf>,
    pub max_assembling_jobs: Option<usize>,
    pub job_idle_timeout_secs: Option<u64>,
    pub topic_partitions: Option<i32>,
    pub replication_factor: Option<i16>,
    pub start_from: Option<String>,
    pub consumer_group: Option<String>,
    pub session_timeout_secs: Option<u64>,
    pub shutdown_grace_secs: Option<u64>,
    pub idempotency_header: Option<String>,
    pub oauth2_token_url: Option<String>,
    pub oauth2_client_id: Option<String>,
    pub oauth2_client_secret: Option<String>,
    pub oauth2_scope: Option<String>,
    pub oauth2_audience: Option<String>,
    pub oauth2_auth_method: Option<String>,
    pub oauth2_client_assertion_key_file: Option<PathBuf>,
    pub oauth2_client_assertion_alg: Option<String>,
    pub oauth2_client_assertion_kid: Option<String>,
    pub oauth2_client_assertion_audience: Option<String>,
    pub token_refresh_statuses: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    pub timeout: Option<u64>,
    pub trusted_keys: Option<String>,
    pub signature_max_ttl_secs: Option<u64>,
    pub signing_key: Option<PathBuf>,
    pub signature_ttl_secs: Option<u64>,
}

impl std::fmt::Debug for FileConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("security_protocol", &self.security_protocol)
            .field("sasl_username", &self.sasl_username)
            .field("target_api_url", &self.target_api_url)
            .finish_non_exhaustive()
    }
}

/// The setting that names the config file, as its errors say.
const CONFIG_SETTING: &str = "--config (KAFKASEND_CONFIG)";

/// Reads the `--config` file. A file that is missing, is not a regular file
/// or is too large, a TOML syntax error, an unknown key or a bad value is an
/// error of one line naming the file (and the line and the key).
pub fn load_file(path: Option<&Path>) -> anyhow::Result<FileConfig> {
    let Some(path) = path else {
        return Ok(FileConfig::default());
    };
    // Not confy::load_path: it reads whatever the path holds, without a cap,
    // and writes a default file where none exists.
    let bytes =
        crate::util::file_read::read(CONFIG_SETTING, path, crate::util::file_read::Kind::Config)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{CONFIG_SETTING}: {} is not UTF-8 text (byte {} is not), so it is not a TOML file",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: {}",
            path.display(),
            describe_toml_error(&text, e.message(), e.span())
        )
    })
}

/// One line for a TOML/serde error in the config file: the line, the key
/// and what is wrong with it. `message` is the toml crate's, which for an
/// unknown key is serde's "unknown field `k`, expected one of `a`, `b`...".
fn describe_toml_error(text: &str, message: &str, span: Option<std::ops::Range<usize>>) -> String {
    let line_no = span.map(|s| {
        let start = s.start.min(text.len());
        text.as_bytes()[..start]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    });
    let at = line_no.map(|n| format!("line {n}: ")).unwrap_or_default();
    let one_line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    if message.starts_with("unknown field `") {
        let mut quoted = message.split('`').skip(1).step_by(2);
        let unknown = quoted.next().unwrap_or_default();
        let hint = match closest_key(unknown, quoted) {
            Some(k) => format!("did you mean `{k}`?"),
            None => "the keys are the flag names with `_` for `-` (see docs/configuration.md)"
                .to_string(),
        };
        return format!("{at}unknown key `{unknown}`; {hint}");
    }
    let key = line_no
        .and_then(|n| text.lines().nth(n - 1))
        .and_then(|l| l.split_once('='))
        .map(|(k, _)| k.trim().trim_matches(|c| c == '"' || c == '\''))
        .filter(|k| !k.is_empty());
    // serde's own wording; anything else comes from the TOML parser.
    let serde_value_error = ["invalid type:", "invalid value:", "invalid length"]
        .iter()
        .any(|p| message.starts_with(p));
    match key {
        Some(key) if serde_value_error => {
            format!("{at}bad value for `{key}`: {}", plain_types(&one_line))
        }
        Some(key) if one_line == "duplicate key" => format!("{at}duplicate key `{key}`"),
        _ => format!("{at}not valid TOML: {one_line}"),
    }
}

/// Says serde's Rust type names in words.
fn plain_types(message: &str) -> String {
    let mut out = message.to_string();
    for (rust, words) in [
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected usize", "expected a whole number, 0 or more"),
        ("expected i32", "expected a whole number"),
        ("expected i16", "expected a whole number up to 32767"),
    ] {
        if out.ends_with(rust) {
            out.truncate(out.len() - rust.len());
            out.push_str(words);
        }
    }
    out
}

/// The known key most like `unknown`, if one is close enough to be a typo.
fn closest_key<'a>(unknown: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (unknown.len() / 3).max(2);
    known
        .map(|k| (edit_distance(unknown, k), k))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, k)| k)
}

/// Levenshtein distance over bytes (keys are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// Kafka settings, resolved.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Brokers.
    pub bootstrap_servers: String,
    /// Request topic.
    pub request_topic: String,
    /// Response topic.
    pub response_topic: String,
    /// Broker deadline.
    pub timeout: Duration,
    /// Chunk payload size.
    pub chunk_size: usize,
    /// TLS and SASL.
    pub security: KafkaSecurity,
}

impl KafkaConfig {
    fn resolve(a: &KafkaArgs, f: &FileConfig) -> anyhow::Result<Self> {
        let servers = pick(&a.bootstrap_servers, &f.bootstrap_servers)
            .unwrap_or_else(|| "localhost:9092".into());
        if servers.split(',').all(|s| s.trim().is_empty()) {
            bail!("KAFKA_BOOTSTRAP_SERVERS is empty; name at least one broker as host:port");
        }
        for s in servers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let port_ok = s
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !port_ok {
                bail!("KAFKA_BOOTSTRAP_SERVERS: '{s}' is not host:port");
            }
        }
        let request_topic =
            pick(&a.request_topic, &f.request_topic).unwrap_or_else(|| "api-requests".into());
        let response_topic =
            pick(&a.response_topic, &f.response_topic).unwrap_or_else(|| "api-responses".into());
        check_topic("KAFKA_REQUEST_TOPIC", &request_topic)?;
        check_topic("KAFKA_RESPONSE_TOPIC", &response_topic)?;
        if request_topic == response_topic {
            bail!("KAFKA_REQUEST_TOPIC and KAFKA_RESPONSE_TOPIC must differ (both are '{request_topic}')");
        }
        let secs = pick(&a.kafka_timeout_secs, &f.kafka_timeout_secs).unwrap_or(30);
        if !(1..=3600).contains(&secs) {
            bail!("KAFKA_TIMEOUT_SECS must be between 1 and 3600, not {secs}");
        }
        let chunk_size = pick(&a.chunk_size, &f.chunk_size).unwrap_or(DEFAULT_CHUNK_SIZE);
        if !(1024..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            bail!("KAFKASEND_CHUNK_SIZE must be between 1024 and {MAX_CHUNK_SIZE} bytes, not {chunk_size}");
        }
        Ok(Self {
            bootstrap_servers: servers,
            request_topic,
            response_topic,
            timeout: Duration::from_secs(secs),
            chunk_size,
            security: resolve_security(a, f)?,
        })
    }

    /// Connection settings for the `kafka` module.
    pub fn settings(&self, client_id: &str) -> crate::kafka::KafkaSettings {
        crate::kafka::KafkaSettings {
            bootstrap_servers: self.bootstrap_servers.clone(),
            op_timeout: self.timeout,
            client_id: client_id.to_string(),
            security: self.security.clone(),
        }
    }
}

/// Checks that the TLS and SASL settings fit the protocol and together, and
/// loads the CA file, so mistakes show at start with the setting named.
fn resolve_security(a: &KafkaArgs, f: &FileConfig) -> anyhow::Result<KafkaSecurity> {
    let protocol: SecurityProtocol = match pick(&a.security_protocol, &f.security_protocol) {
        Some(p) => p
            .parse()
            .map_err(|e| anyhow::anyhow!("KAFKA_SECURITY_PROTOCOL: {e}"))?,
        None => SecurityProtocol::Plaintext,
    };
    let ca_file = pick(&a.ssl_ca_file, &f.ssl_ca_file);
    let mechanism = pick(&a.sasl_mechanism, &f.sasl_mechanism);
    let username = pick(&a.sasl_username, &f.sasl_username);
    let password = pick(&a.sasl_password, &f.sasl_password);

    let tls = if protocol.uses_tls() {
        Some(crate::kafka::security::tls_config(ca_file.as_deref()).map_err(anyhow::Error::msg)?)
    } else {
        if ca_file.is_some() {
            bail!("KAFKA_SSL_CA_FILE is set but KAFKA_SECURITY_PROTOCOL is {protocol}, which does not use TLS; set KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL, or unset KAFKA_SSL_CA_FILE");
        }
        None
    };

    let sasl = if protocol.uses_sasl() {
        let mechanism: SaslMechanism = mechanism
            .with_context(|| format!("KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_MECHANISM (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"))?
            .parse()
            .map_err(|e| anyhow::anyhow!("KAFKA_SASL_MECHANISM: {e}"))?;
        let username = username.filter(|u| !u.is_empty()).with_context(|| {
            format!("KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME")
        })?;
        let password = password.filter(|p| !p.is_empty()).with_context(|| {
            format!("KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_PASSWORD")
        })?;
        Some(SaslCredentials {
            mechanism,
            username,
            password,
        })
    } else {
        let stray: Vec<&str> = [
            ("KAFKA_SASL_MECHANISM", mechanism.is_some()),
            ("KAFKA_SASL_USERNAME", username.is_some()),
            ("KAFKA_SASL_PASSWORD", password.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| *name)
        .collect();
        if !stray.is_empty() {
            bail!(
                "{} set but KAFKA_SECURITY_PROTOCOL is {protocol}, which does not use SASL; set KAFKA_SECURITY_PROTOCOL=SASL_SSL (or SASL_PLAINTEXT), or unset them",
                stray.join(", ") + if stray.len() == 1 { " is" } else { " are" }
            );
        }
        None
    };
    Ok(KafkaSecurity {
        protocol,
        tls,
        sasl,
    })
}

fn check_topic(setting: &str, t: &str) -> anyhow::Result<()> {
    let valid = !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if !valid {
        bail!("{setting}: '{t}' is not a valid Kafka topic name (letters, digits, '.', '_', '-'; at most 249)");
    }
    Ok(())
}

fn pick<T: Clone>(flag_or_env: &Option<T>, file: &Option<T>) -> Option<T> {
    flag_or_env.clone().or_else(|| file.clone())
}

/// Where a new portal starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// Only requests sent after the portal started.
    Latest,
    /// Everything the topic still holds.
    Earliest,
}

/// OAuth settings, resolved.
pub type OAuthSettings = crate::portal::http_dispatch::token_cache::OAuthConfig;

/// Consumer-group settings of the portal, resolved.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Group id.
    pub group_id: String,
    /// Session timeout.
    pub session_timeout: Duration,
    /// Time members have to rejoin in a rebalance.
    pub rebalance_timeout: Duration,
    /// Time jobs in flight get on shutdown or revocation.
    pub shutdown_grace: Duration,
}

/// Portal settings, resolved.
#[derive(Debug, Clone)]
pub struct PortalConfig {
    /// Consumer group.
    pub group: GroupConfig,
    /// Header carrying the job id, if any.
    pub idempotency_header: Option<String>,
    /// Kafka side.
    pub kafka: KafkaConfig,
    /// API base URL.
    pub target_api_url: String,
    /// OAuth settings, when on.
    pub oauth: Option<OAuthSettings>,
    /// TLS of the calls to the API and the token endpoint.
    pub api_tls: ApiTls,
    /// env_logger filter.
    pub log_filter: String,
    /// How log lines look.
    pub log_format: LogFormat,
    /// Where the admin listener serves, when on.
    pub admin_listen: Option<std::net::SocketAddr>,
    /// REST calls at once.
    pub max_concurrent_jobs: usize,
    /// API deadline.
    pub request_timeout: Duration,
    /// What may reach the API.
    pub policy: crate::portal::policy::Policy,
    /// Assembly limits.
    pub limits: crate::portal::assembler::Limits,
    /// Partitions of created topics.
    pub topic_partitions: i32,
    /// Replication of created topics.
    pub replication_factor: i16,
    /// Where to start reading.
    pub start_from: StartFrom,
    /// Keys whose signatures the portal requires, when set.
    pub trusted_keys: Option<crate::protocol::signing::TrustedKeys>,
}

impl PortalConfig {
    /// Resolves flags, environment, file and defaults.
    pub fn resolve(a: &PortalArgs) -> anyhow::Result<Self> {
        let f = load_file(a.kafka.config.as_deref())?;
        let kafka = KafkaConfig::resolve(&a.kafka, &f)?;
        let target = pick(&a.target_api_url, &f.target_api_url).context(
            "PORTAL_TARGET_API_URL is not set; set it to the base URL of the REST API (e.g. http://127.0.0.1:8080)",
        )?;
        let target_uri = parse_url(
            "PORTAL_TARGET_API_URL",
            &target,
            "the portal authenticates with OAuth2",
        )?;
        if !matches!(target_uri.scheme_str(), Some("http" | "https")) || target_uri.host().is_none()
        {
            bail!(
                "PORTAL_TARGET_API_URL: '{target}' must be an http:// or https:// URL with a host"
            );
        }
        if target_uri.query().is_some() || target.contains('#') {
            bail!("PORTAL_TARGET_API_URL: '{target}' must not have a query string or fragment");
        }
        let use_oauth = pick(&a.use_oauth, &f.use_oauth).unwrap_or(true);
        let refresh_statuses = parse_refresh_statuses(
            &pick(&a.token_refresh_statuses, &f.token_refresh_statuses)
                .unwrap_or_else(|| "401".into()),
        )?;
        let oauth = if use_oauth {
            Some(resolve_oauth(a, &f, refresh_statuses)?)
        } else {
            None
        };
        let api_tls = ApiTls::load(
            pick(&a.ca_file, &f.ca_file).as_deref(),
            pick(&a.client_cert_file, &f.client_cert_file).as_deref(),
            pick(&a.client_key_file, &f.client_key_file).as_deref(),
        )?;
        let level = pick(&a.log_level, &f.log_level).unwrap_or_else(|| "INFO".into());
        let log_filter = log_filter(&level)?;
        let log_format =
            parse_log_format(&pick(&a.log_format, &f.log_format).unwrap_or_else(|| "text".into()))?;
        let admin_listen = pick(&a.admin_listen, &f.admin_listen)
            .map(|s| parse_admin_listen(&s))
            .transpose()?;
        let max_concurrent_jobs =
            pick(&a.max_concurrent_jobs, &f.max_concurrent_jobs).unwrap_or(10);
        if !(1..=10_000).contains(&max_concurrent_jobs) {
            bail!(
                "PORTAL_MAX_CONCURRENT_JOBS must be between 1 and 10000, not {max_concurrent_jobs}"
            );
        }
        let timeout = pick(&a.request_timeout_secs, &f.request_timeout_secs).unwrap_or(1800);
        if !(1..=MAX_WAIT_SECS).contains(&timeout) {
            bail!(
                "PORTAL_REQUEST_TIMEOUT_SECS must be between 1 and {MAX_WAIT_SECS}, not {timeout}"
            );
        }
        let policy = resolve_policy(a, &f)?;
        let defaults = crate::portal::assembler::Limits::default();
        let max_jobs =
            pick(&a.max_assembling_jobs, &f.max_assembling_jobs).unwrap_or(defaults.max_jobs);
        if max_jobs == 0 {
            bail!("PORTAL_MAX_ASSEMBLING_JOBS must be at least 1");
        }
        let idle = pick(&a.job_idle_timeout_secs, &f.job_idle_timeout_secs).unwrap_or(300);
        if !(1..=MAX_WAIT_SECS).contains(&idle) {
            bail!("PORTAL_JOB_IDLE_TIMEOUT_SECS must be between 1 and {MAX_WAIT_SECS}, not {idle}");
        }
        let spool_dir = pick(&a.spool_dir, &f.spool_dir);
        if let Some(d) = &spool_dir {
            if !d.is_dir() {
                bail!("PORTAL_SPOOL_DIR: {} is not a directory", d.display());
            }
        }
        let spool_threshold = pick(&a.spool_threshold_bytes, &f.spool_threshold_bytes)
            .unwrap_or(defaults.spool_threshold);
        if spool_threshold > MAX_SPOOL_THRESHOLD {
            bail!("PORTAL_SPOOL_THRESHOLD_BYTES must be at most {MAX_SPOOL_THRESHOLD}, not {spool_threshold}");
        }
        let max_chunks = pick(&a.max_chunks, &f.max_chunks).unwrap_or(defaults.max_chunks);
        if !(1..=10_000_000).contains(&max_chunks) {
            bail!("PORTAL_MAX_CHUNKS must be between 1 and 10000000, not {max_chunks}");
        }
        let max_spool_bytes =
            pick(&a.max_spool_bytes, &f.max_spool_bytes).unwrap_or(defaults.max_spool_bytes);
        if max_spool_bytes < 1024 * 1024 {
            bail!("PORTAL_MAX_SPOOL_BYTES must be at least 1048576 (1 MiB), not {max_spool_bytes}");
        }
        let max_memory_bytes = pick(&a.max_assembly_memory_bytes, &f.max_assembly_memory_bytes)
            .unwrap_or(defaults.max_memory_bytes);
        if max_memory_bytes < 1024 * 1024 {
            bail!("PORTAL_MAX_ASSEMBLY_MEMORY_BYTES must be at least 1048576 (1 MiB), not {max_memory_bytes}");
        }
        // Start records and chunk tables cannot move to disk: a budget that
        // cannot hold one job of the most chunks and the largest start
        // record the settings allow would refuse such a job forever.
        let memory_reserve = crate::portal::assembler::bookkeeping_bound(
            max_chunks,
            policy.max_header_count,
            policy.max_header_bytes,
        );
        if max_memory_bytes < memory_reserve {
            let start = crate::portal::assembler::largest_start_cost(
                policy.max_header_count,
                policy.max_header_bytes,
            );
            let chunks =
                max_memory_bytes.saturating_sub(start) / crate::portal::assembler::CHUNK_ENTRY_COST;
            bail!(
                "PORTAL_MAX_ASSEMBLY_MEMORY_BYTES ({max_memory_bytes}) is too small for PORTAL_MAX_CHUNKS ({max_chunks}): one request's chunk table ({} bytes a chunk) and largest start record (PORTAL_MAX_HEADER_COUNT {}, PORTAL_MAX_HEADER_BYTES {}) take up to {memory_reserve} bytes, which cannot move to disk; raise PORTAL_MAX_ASSEMBLY_MEMORY_BYTES to at least {memory_reserve} or lower PORTAL_MAX_CHUNKS to at most {chunks}",
                crate::portal::assembler::CHUNK_ENTRY_COST,
                policy.max_header_count,
                policy.max_header_bytes
            );
        }
        let max_age = pick(&a.max_job_age_secs, &f.max_job_age_secs)
            .unwrap_or(defaults.max_job_age.as_secs());
        if !(1..=MAX_WAIT_SECS).contains(&max_age) {
            bail!("PORTAL_MAX_JOB_AGE_SECS must be between 1 and {MAX_WAIT_SECS}, not {max_age}");
        }
        let limits = crate::portal::assembler::Limits {
            max_body_bytes: pick(&a.max_body_bytes, &f.max_body_bytes)
                .unwrap_or(defaults.max_body_bytes),
            spool_threshold,
            spool_dir,
            max_jobs,
            idle_timeout: Duration::from_secs(idle),
            max_chunks,
            max_spool_bytes,
            max_memory_bytes,
            memory_reserve,
            max_job_age: Duration::from_secs(max_age),
        };
        let topic_partitions = pick(&a.topic_partitions, &f.topic_partitions).unwrap_or(3);
        if topic_partitions < 1 {
            bail!("KAFKA_TOPIC_PARTITIONS must be at least 1");
        }
        let replication_factor = pick(&a.replication_factor, &f.replication_factor).unwrap_or(1);
        if replication_factor < 1 {
            bail!("KAFKA_REPLICATION_FACTOR must be at least 1");
        }
        let start_from = match pick(&a.start_from, &f.start_from)
            .unwrap_or_else(|| "latest".into())
            .to_ascii_lowercase()
            .as_str()
        {
            "latest" => StartFrom::Latest,
            "earliest" => StartFrom::Earliest,
            other => bail!("PORTAL_START_FROM must be latest or earliest, not '{other}'"),
        };
        let group_id =
            pick(&a.consumer_group, &f.consumer_group).unwrap_or_else(|| "kafkasend-portal".into());
        if group_id.trim().is_empty() || group_id.len() > 249 {
            bail!("KAFKA_CONSUMER_GROUP must be a non-empty name of at most 249 characters");
        }
        let session = pick(&a.session_timeout_secs, &f.session_timeout_secs).unwrap_or(30);
        if !(6..=1800).contains(&session) {
            bail!("PORTAL_SESSION_TIMEOUT_SECS must be between 6 and 1800 (the broker's group.min/max.session.timeout.ms), not {session}");
        }
        let grace = pick(&a.shutdown_grace_secs, &f.shutdown_grace_secs).unwrap_or(30);
        if grace > 3600 {
            bail!("PORTAL_SHUTDOWN_GRACE_SECS must be at most 3600, not {grace}");
        }
        let idempotency_header = pick(&a.idempotency_header, &f.idempotency_header)
            .unwrap_or_else(|| "Idempotency-Key".into());
        let idempotency_header = match idempotency_header.trim() {
            "" => None,
            h if hyper::header::HeaderName::from_bytes(h.as_bytes()).is_ok() => Some(h.to_string()),
            h => bail!("PORTAL_IDEMPOTENCY_HEADER: '{h}' is not a valid header name"),
        };
        let group = GroupConfig {
            group_id,
            session_timeout: Duration::from_secs(session),
            rebalance_timeout: Duration::from_secs(grace + 30),
            shutdown_grace: Duration::from_secs(grace),
        };
        let trusted_keys = resolve_trusted_keys(a, &f)?;
        Ok(Self {
            trusted_keys,
            group,
            idempotency_header,
            kafka,
            target_api_url: target,
            oauth,
            api_tls,
            log_filter,
            log_format,
            admin_listen,
            max_concurrent_jobs,
            request_timeout: Duration::from_secs(timeout),
            policy,
            limits,
            topic_partitions,
            replication_factor,
            start_from,
        })
    }
}

/// Resolves the request policy settings.
fn resolve_policy(a: &PortalArgs, f: &FileConfig) -> anyhow::Result<crate::portal::policy::Policy> {
    let defaults = crate::portal::policy::Policy::default();
    let allowed_headers = pick(&a.allowed_headers, &f.allowed_headers)
        .unwrap_or_else(|| crate::portal::policy::DEFAULT_ALLOWED_HEADERS.into())
        .split(',')
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect::<Vec<_>>();
    if let Some(bad) = allowed_headers
        .iter()
        .find(|h| hyper::header::HeaderName::from_bytes(h.as_bytes()).is_err())
    {
        bail!("PORTAL_ALLOWED_HEADERS: '{bad}' is not a valid header name");
    }
    let endpoints = crate::portal::policy::parse_endpoints(
        &pick(&a.allowed_endpoints, &f.allowed_endpoints).unwrap_or_default(),
    )
    .map_err(|e| anyhow::anyhow!("PORTAL_ALLOWED_ENDPOINTS: {e}"))?;
    let max_header_count =
        pick(&a.max_header_count, &f.max_header_count).unwrap_or(defaults.max_header_count);
    // Headers travel in one frame header, whose decoding the wire bounds: up
    // to these maxima every request decodes and meets the policy.
    let most = crate::protocol::wire::MAX_HEADERS;
    if !(1..=most).contains(&max_header_count) {
        bail!("PORTAL_MAX_HEADER_COUNT must be between 1 and {most}, not {max_header_count}");
    }
    let max_header_bytes =
        pick(&a.max_header_bytes, &f.max_header_bytes).unwrap_or(defaults.max_header_bytes);
    let ceiling = crate::protocol::wire::MAX_HEADER_TEXT;
    if !(256..=ceiling).contains(&max_header_bytes) {
        bail!("PORTAL_MAX_HEADER_BYTES must be between 256 and {ceiling}, not {max_header_bytes}");
    }
    Ok(crate::portal::policy::Policy {
        endpoints,
        strict: pick(&a.strict_security, &f.strict_security).unwrap_or(true),
        allowed_headers,
        max_header_count,
        max_header_bytes,
    })
}

fn resolve_oauth(
    a: &PortalArgs,
    f: &FileConfig,
    refresh_statuses: Vec<hyper::StatusCode>,
) -> anyhow::Result<OAuthSettings> {
    let url = pick(&a.oauth2_token_url, &f.oauth2_token_url);
    let id = pick(&a.oauth2_client_id, &f.oauth2_client_id);
    let secret = pick(&a.oauth2_client_secret, &f.oauth2_client_secret);
    let key_file = pick(
        &a.oauth2_client_assertion_key_file,
        &f.oauth2_client_assertion_key_file,
    );
    let auth_method = match pick(&a.oauth2_auth_method, &f.oauth2_auth_method) {
        Some(m) => m
            .parse::<AuthMethod>()
            .map_err(|e| anyhow::anyhow!("OAUTH2_AUTH_METHOD: {e}"))?,
        None if key_file.is_some() => AuthMethod::PrivateKeyJwt,
        None => AuthMethod::ClientSecretBasic,
    };
    let mut missing = Vec::new();
    if url.is_none() {
        missing.push("OAUTH2_TOKEN_URL");
    }
    if id.is_none() {
        missing.push("OAUTH2_CLIENT_ID");
    }
    match auth_method {
        AuthMethod::PrivateKeyJwt if key_file.is_none() => {
            missing.push("OAUTH2_CLIENT_ASSERTION_KEY_FILE")
        }
        AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost if secret.is_none() => {
            missing.push("OAUTH2_CLIENT_SECRET")
        }
        _ => {}
    }
    if !missing.is_empty() {
        bail!(
            "OAuth2 is on (PORTAL_USE_OAUTH=true) but {} not set; set them, or set PORTAL_USE_OAUTH=false to call the API without a token",
            missing.join(", ") + if missing.len() == 1 { " is" } else { " are" }
        );
    }
    if key_file.is_some() && auth_method != AuthMethod::PrivateKeyJwt {
        bail!("OAUTH2_CLIENT_ASSERTION_KEY_FILE is set but OAUTH2_AUTH_METHOD is not private_key_jwt; set OAUTH2_AUTH_METHOD=private_key_jwt to sign client assertions, or unset the key file");
    }
    let url = url.unwrap_or_default();
    let uri = parse_url(
        "OAUTH2_TOKEN_URL",
        &url,
        "give them as OAUTH2_CLIENT_ID and OAUTH2_CLIENT_SECRET",
    )?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        bail!("OAUTH2_TOKEN_URL: '{url}' must be an http:// or https:// URL");
    }
    let credentials = match (auth_method, key_file) {
        (AuthMethod::PrivateKeyJwt, Some(path)) => {
            let alg = pick(
                &a.oauth2_client_assertion_alg,
                &f.oauth2_client_assertion_alg,
            )
            .filter(|s| !s.trim().is_empty())
            .map(|s| crate::portal::http_dispatch::token_cache::parse_assertion_alg(&s))
            .transpose()?;
            let kid = pick(
                &a.oauth2_client_assertion_kid,
                &f.oauth2_client_assertion_kid,
            )
            .filter(|s| !s.is_empty());
            let audience = pick(
                &a.oauth2_client_assertion_audience,
                &f.oauth2_client_assertion_audience,
            )
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| url.clone());
            let pem = read_key_file(&path)?;
            ClientCredentials::PrivateKeyJwt(AssertionSigner::from_pem(&pem, alg, kid, audience)?)
        }
        (AuthMethod::ClientSecretPost, _) => {
            ClientCredentials::SecretPost(secret.unwrap_or_default())
        }
        _ => ClientCredentials::SecretBasic(secret.unwrap_or_default()),
    };
    Ok(OAuthSettings {
        token_url: url,
        client_id: id.unwrap_or_default(),
        credentials,
        scope: pick(&a.oauth2_scope, &f.oauth2_scope).filter(|s| !s.is_empty()),
        audience: pick(&a.oauth2_audience, &f.oauth2_audience).filter(|s| !s.is_empty()),
        refresh_statuses,
        timeout: Duration::from_secs(30),
    })
}

/// Reads `OAUTH2_CLIENT_ASSERTION_KEY_FILE`; errors never quote the file.
fn read_key_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    Ok(crate::util::file_read::read(
        "OAUTH2_CLIENT_ASSERTION_KEY_FILE",
        path,
        crate::util::file_read::Kind::Key,
    )?)
}

/// Parses `PORTAL_TOKEN_REFRESH_STATUSES`: comma-separated 4xx codes, at least one.
pub fn parse_refresh_statuses(list: &str) -> anyhow::Result<Vec<hyper::StatusCode>> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim) {
        let code = item
            .parse::<u16>()
            .ok()
            .filter(|c| (400..=499).contains(c))
            .and_then(|c| hyper::StatusCode::from_u16(c).ok());
        match code {
            Some(c) if !out.contains(&c) => out.push(c),
            Some(_) => {}
            None => bail!(
                "PORTAL_TOKEN_REFRESH_STATUSES: '{item}' is not a 4xx HTTP status; give comma-separated codes such as 401,403"
            ),
        }
    }
    Ok(out)
}

/// `PORTAL_TRUSTED_KEYS` and `PORTAL_SIGNATURE_MAX_TTL_SECS`, loaded and checked.
fn resolve_trusted_keys(
    a: &PortalArgs,
    f: &FileConfig,
) -> anyhow::Result<Option<crate::protocol::signing::TrustedKeys>> {
    let max_ttl = pick(&a.signature_max_ttl_secs, &f.signature_max_ttl_secs).unwrap_or(3600);
    let cap = crate::protocol::signing::MAX_SIGNATURE_TTL_SECS;
    if !(1..=cap).contains(&max_ttl) {
        bail!("PORTAL_SIGNATURE_MAX_TTL_SECS must be between 1 and {cap}, not {max_ttl}");
    }
    let Some(list) = pick(&a.trusted_keys, &f.trusted_keys).filter(|l| !l.trim().is_empty()) else {
        return Ok(None);
    };
    Ok(Some(crate::protocol::signing::TrustedKeys::load(
        &list,
        Duration::from_secs(max_ttl),
    )?))
}

/// Parses `PORTAL_LOG_FORMAT`.
pub fn parse_log_format(s: &str) -> anyhow::Result<LogFormat> {
    match s.trim().to_ascii_lowercase().as_str() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => bail!("PORTAL_LOG_FORMAT must be text or json, not '{other}'"),
    }
}

/// Parses `PORTAL_ADMIN_LISTEN`: an IP address and port.
pub fn parse_admin_listen(s: &str) -> anyhow::Result<std::net::SocketAddr> {
    s.trim().parse().map_err(|_| {
        anyhow::anyhow!(
            "PORTAL_ADMIN_LISTEN: '{s}' is not an address and port; use e.g. 0.0.0.0:9464 or [::1]:9464"
        )
    })
}

/// Maps the Python tool's level names to an env_logger filter.
pub fn log_filter(level: &str) -> anyhow::Result<String> {
    let l = match level.trim().to_ascii_uppercase().as_str() {
        "TRACE" => "trace",
        "DEBUG" => "debug",
        "INFO" => "info",
        "WARN" | "WARNING" => "warn",
        "ERROR" | "CRITICAL" => "error",
        "OFF" => "off",
        _ => bail!("PORTAL_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, not '{level}'"),
    };
    // Our own messages at the chosen level; the Kafka client's only when they matter.
    Ok(format!("warn,kafkasend={l}"))
}

/// Send settings, resolved.
#[derive(Debug, Clone)]
pub struct SendConfig {
    /// Kafka side.
    pub kafka: KafkaConfig,
    /// Wait for the response this long after the last record received.
    pub timeout: Duration,
    /// Signs each request, when a signing key is set.
    pub signer: Option<crate::protocol::signing::Signer>,
}

impl SendConfig {
    /// Resolves flags, environment, file and defaults.
    pub fn resolve(a: &SendArgs) -> anyhow::Result<Self> {
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
        let (kafka, timeout) = Self::resolve_wait_parts(&a.kafka, &a.timeout, &f)?;
        let ttl = pick(&a.signature_ttl_secs, &f.signature_ttl_secs).unwrap_or(300);
        let cap = crate::protocol::signing::MAX_SIGNATURE_TTL_SECS;
        if !(1..=cap).contains(&ttl) {
            bail!("--signature-ttl-secs (KAFKASEND_SIGNATURE_TTL_SECS) must be between 1 and {cap}, not {ttl}");
        }
        let signer =
            match pick(&a.signing_key, &f.signing_key).filter(|p| !p.as_os_str().is_empty()) {
                Some(path) => Some(crate::protocol::signing::Signer::from_pem_file(
                    &path,
                    Duration::from_secs(ttl),
                )?),
                None => None,
            };
        Ok(Self {
            kafka,
            timeout,
            signer,
        })
    }

    /// Resolves the settings of `kafkasend wait`.
    pub fn resolve_wait(a: &WaitArgs) -> anyhow::Result<Self> {
        if a.json && crate::send::output::is_stdout(a.output.as_deref()) {
            bail!("--json needs --output FILE, so the response body and the summary do not mix on stdout");
        }
        let f = load_file(a.kafka.config.as_deref())?;
        let (kafka, timeout) = Self::resolve_wait_parts(&a.kafka, &a.timeout, &f)?;
        Ok(Self {
            kafka,
            timeout,
            signer: None,
        })
    }

    fn resolve_wait_parts(
        kafka: &KafkaArgs,
        timeout: &Option<u64>,
        f: &FileConfig,
    ) -> anyhow::Result<(KafkaConfig, Duration)> {
        let kafka = KafkaConfig::resolve(kafka, f)?;
        let timeout = pick(timeout, &f.timeout).unwrap_or(300);
        if !(1..=MAX_WAIT_SECS).contains(&timeout) {
            bail!("--timeout (KAFKASEND_TIMEOUT_SECS) must be between 1 and {MAX_WAIT_SECS} seconds, not {timeout}");
        }
        Ok((kafka, Duration::from_secs(timeout)))
    }
}

/// The URL of `setting`, refused when it holds credentials (`user@host`,
/// `instead` says what to do) before any message could quote them.
fn parse_url(setting: &str, url: &str, instead: &str) -> anyhow::Result<hyper::Uri> {
    let uri: hyper::Uri = url.parse().map_err(|e| {
        let shown = without_userinfo(url);
        anyhow::anyhow!("{setting}: '{shown}' is not a URL: {e}")
    })?;
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        bail!("{setting} must not hold credentials (user@host); {instead}");
    }
    Ok(uri)
}

/// `url` with any `user:password@` before its host replaced by `***@`, for
/// messages and `config show`; text without `://` is returned as is.
pub fn without_userinfo(url: &str) -> std::borrow::Cow<'_, str> {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.into();
    };
    let rest = &url[start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_len].rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &url[start + at..]).into(),
        None => url.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn portal_args(extra: &[&str]) -> PortalArgs {
        let mut argv = vec!["kafkasend", "portal"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Portal(p) => *p,
            _ => unreachable!(),
        }
    }

    #[test]
    fn flag_beats_file_beats_default() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "target_api_url = \"http://file.example\"\nmax_concurrent_jobs = 4\nuse_oauth = false\nrequest_topic = \"from-file\""
        )
        .unwrap();
        let path = file.path().to_str().unwrap().to_string();
        let a = portal_args(&["--config", &path, "--max-concurrent-jobs", "7"]);
        let c = PortalConfig::resolve(&a).unwrap();
        assert_eq!(c.max_concurrent_jobs, 7);
        assert_eq!(c.target_api_url, "http://file.example");
        assert_eq!(c.kafka.request_topic, "from-file");
        assert_eq!(c.kafka.response_topic, "api-responses");
        assert!(c.oauth.is_none());
    }

    #[test]
    fn unknown_file_key_is_named() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "target_api_url = \"http://x\"\nmax_concurent_jobs = 4"
        )
        .unwrap();
        let path = file.path().to_str().unwrap().to_string();
        let err = PortalConfig::resolve(&portal_args(&["--config", &path]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_concurent_jobs"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("did you mean `max_concurrent_jobs`?"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    #[test]
    fn bad_file_values_and_syntax_name_the_line_and_key() {
        let cases = [
            (
                "kafka_timeout_secs = \"ten\"",
                "line 1: bad value for `kafka_timeout_secs`: invalid type: string \"ten\", expected a whole number, 0 or more",
            ),
            (
                "# comment\n'use_oauth' = \"yes\"",
                "line 2: bad value for `use_oauth`: invalid type: string \"yes\", expected a boolean",
            ),
            (
                "chunk_size = 1\nchunk_size = 2",
                "line 2: duplicate key `chunk_size`",
            ),
            ("request_topic = \"open", "line 1: not valid TOML: "),
            ("xyzzy = 1", "line 1: unknown key `xyzzy`; the keys are the flag names"),
        ];
        for (toml, want) in cases {
            let mut file = tempfile::NamedTempFile::new().unwrap();
            writeln!(file, "{toml}").unwrap();
            let err = load_file(Some(file.path())).unwrap_err().to_string();
            assert!(err.contains(want), "{toml:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{toml:?}: {err}");
        }
    }

    #[test]
    fn a_config_path_that_is_no_toml_file_says_what_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("binary.toml");
        std::fs::write(&binary, b"timeout = 5\n\xff\xfe").unwrap();
        let cases = [
            (
                Path::new("/dev/zero"),
                "is a character device, not a regular file",
            ),
            (dir.path(), "is a directory, not a file"),
            (&dir.path().join("absent.toml"), "does not exist"),
            (&binary, "is not UTF-8 text (byte 12 is not)"),
        ];
        for (path, problem) in cases {
            let err = load_file(Some(path)).unwrap_err().to_string();
            let want = format!("--config (KAFKASEND_CONFIG): {} {problem}", path.display());
            assert!(err.starts_with(&want), "{err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }

    /// Every variable a flag reads has its row in docs/configuration.md
    /// tables, with that flag and its file key; every row names a variable
    /// the code reads.
    #[test]
    fn readme_configuration_tables_match_the_flags() {
        use clap::CommandFactory as _;
        let readme = include_str!("../../docs/configuration.md");
        let rows: Vec<&str> = readme
            .lines()
            .filter(|l| {
                let first = l.strip_prefix("| `").and_then(|r| r.split('`').next());
                first.is_some_and(|v| {
                    !v.is_empty()
                        && v.bytes()
                            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                        && l.starts_with(&format!("| `{v}` | `--"))
                })
            })
            .collect();
        let mut declared = std::collections::BTreeSet::new();
        let mut commands = vec![Cli::command()];
        while let Some(cmd) = commands.pop() {
            for arg in cmd.get_arguments() {
                let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) else {
                    continue;
                };
                let env = env.to_string_lossy().into_owned();
                let row = rows
                    .iter()
                    .find(|r| r.starts_with(&format!("| `{env}` |")))
                    .unwrap_or_else(|| panic!("docs/configuration.md has no row for {env}"));
                assert!(
                    row.contains(&format!("| `--{long}")),
                    "docs/configuration.md row of {env} does not name --{long}: {row}"
                );
                let key = long.replace('-', "_");
                assert!(
                    env == "KAFKASEND_CONFIG" || row.contains(&format!("| `{key}` |")),
                    "docs/configuration.md row of {env} does not name the file key {key}: {row}"
                );
                declared.insert(env);
            }
            commands.extend(cmd.get_subcommands().cloned());
        }
        for row in rows {
            let env = row.split('`').nth(1).unwrap_or_default();
            assert!(
                declared.contains(env),
                "docs/configuration.md documents {env}, which no flag reads: {row}"
            );
        }
    }

    #[test]
    fn typo_suggestions_stay_close() {
        let known = ["bootstrap_servers", "timeout", "kafka_timeout_secs"];
        assert_eq!(
            closest_key("bootstrap_server", known.into_iter()),
            Some("bootstrap_servers")
        );
        assert_eq!(closest_key("timout", known.into_iter()), Some("timeout"));
        assert_eq!(closest_key("xyzzy", known.into_iter()), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn oauth_without_settings_names_the_variables() {
        let a = portal_args(&[
            "--target-api-url",
            "http://127.0.0.1:1",
            "--use-oauth",
            "true",
        ]);
        let a = PortalArgs {
            oauth2_token_url: None,
            oauth2_client_id: None,
            oauth2_client_secret: None,
            ..a
        };
        let err = PortalConfig::resolve(&a).unwrap_err().to_string();
        assert!(err.contains("OAUTH2_TOKEN_URL"), "{err}");
        assert!(err.contains("PORTAL_USE_OAUTH=false"), "{err}");
    }

    #[test]
    fn urls_with_credentials_are_refused_without_showing_them() {
        let base = portal_args(&[
            "--target-api-url",
            "http://127.0.0.1:1",
            "--oauth2-token-url",
            "https://idp.example/token",
            "--oauth2-client-id",
            "kafkasend",
            "--oauth2-client-secret",
            "s",
        ]);
        assert!(PortalConfig::resolve(&base).is_ok());
        let cases = [
            PortalArgs {
                target_api_url: Some("http://api:pw-4711@127.0.0.1:1".into()),
                ..base.clone()
            },
            PortalArgs {
                oauth2_token_url: Some("https://client:pw-4711@idp.example/token".into()),
                ..base.clone()
            },
        ];
        // Whatever else is wrong with them, too.
        for bad in [
            "ftp://u:pw-4711@h/",
            "http://u:pw-4711@h/?q=1",
            "http://u:pw-4711@h/ x",
        ] {
            for a in [
                PortalArgs {
                    target_api_url: Some(bad.into()),
                    ..base.clone()
                },
                PortalArgs {
                    oauth2_token_url: Some(bad.into()),
                    ..base.clone()
                },
            ] {
                let err = PortalConfig::resolve(&a).unwrap_err().to_string();
                assert!(!err.contains("pw-4711"), "{err}");
            }
        }
        assert_eq!(
            without_userinfo("https://u:p@h:1/a@b?x=@"),
            "https://***@h:1/a@b?x=@"
        );
        assert_eq!(without_userinfo("http://h/a@b"), "http://h/a@b");
        assert_eq!(without_userinfo("alice@corp.example"), "alice@corp.example");
        for (a, setting) in cases
            .iter()
            .zip(["PORTAL_TARGET_API_URL", "OAUTH2_TOKEN_URL"])
        {
            let err = PortalConfig::resolve(a).unwrap_err().to_string();
            assert!(err.starts_with(setting), "{err}");
            assert!(err.contains("must not hold credentials"), "{err}");
            assert!(!err.contains("pw-4711"), "{err}");
        }
    }

    #[test]
    fn refresh_statuses_are_4xx_codes() {
        let codes = parse_refresh_statuses(" 401, 403,401").unwrap();
        assert_eq!(
            codes,
            [401, 403].map(|c| hyper::StatusCode::from_u16(c).unwrap())
        );
        for bad in ["", "200", "401,,403", "abc", "4011", "500"] {
            let err = parse_refresh_statuses(bad).unwrap_err().to_string();
            assert!(
                err.starts_with("PORTAL_TOKEN_REFRESH_STATUSES"),
                "{bad}: {err}"
            );
        }
        let a = portal_args(&[
            "--target-api-url",
            "http://127.0.0.1:1",
            "--use-oauth",
            "false",
            "--token-refresh-statuses",
            "401,302",
        ]);
        let err = PortalConfig::resolve(&a).unwrap_err().to_string();
        assert!(err.contains("'302'"), "{err}");
    }

    fn jwt_args(extra: &[&str]) -> PortalArgs {
        let mut argv = vec![
            "--target-api-url",
            "http://127.0.0.1:1",
            "--use-oauth",
            "true",
            "--oauth2-token-url",
            "https://idp.example/token",
            "--oauth2-client-id",
            "portal",
        ];
        argv.extend_from_slice(extra);
        portal_args(&argv)
    }

    #[test]
    fn private_key_jwt_settings() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(key.serialize_pem().as_bytes()).unwrap();
        let path = file.path().to_str().unwrap().to_string();
        let mut garbage = tempfile::NamedTempFile::new().unwrap();
        garbage.write_all(b"not a key\n").unwrap();
        let garbage = garbage.path().to_str().unwrap().to_string();

        // A key file alone picks private_key_jwt; no secret is needed.
        let c = PortalConfig::resolve(&jwt_args(&[
            "--oauth2-client-assertion-key-file",
            &path,
            "--oauth2-audience",
            "https://api.example",
        ]))
        .unwrap();
        let oauth = c.oauth.unwrap();
        let ClientCredentials::PrivateKeyJwt(signer) = &oauth.credentials else {
            panic!("{:?}", oauth.credentials);
        };
        assert_eq!(signer.algorithm(), jsonwebtoken::Algorithm::ES256);
        assert_eq!(signer.audience(), "https://idp.example/token");
        assert_eq!(oauth.audience.as_deref(), Some("https://api.example"));
        assert_eq!(oauth.refresh_statuses, [hyper::StatusCode::UNAUTHORIZED]);

        let c = PortalConfig::resolve(&jwt_args(&[
            "--oauth2-client-assertion-key-file",
            &path,
            "--oauth2-client-assertion-audience",
            "https://idp.example/",
        ]))
        .unwrap();
        let ClientCredentials::PrivateKeyJwt(signer) = &c.oauth.unwrap().credentials else {
            panic!("not private_key_jwt");
        };
        assert_eq!(signer.audience(), "https://idp.example/");

        let cases: &[(&[&str], &str)] = &[
            (
                &["--oauth2-auth-method", "private_key_jwt"],
                "OAUTH2_CLIENT_ASSERTION_KEY_FILE is not set",
            ),
            (
                &[
                    "--oauth2-auth-method",
                    "client_secret_post",
                    "--oauth2-client-secret",
                    "x",
                    "--oauth2-client-assertion-key-file",
                    &path,
                ],
                "OAUTH2_CLIENT_ASSERTION_KEY_FILE is set but OAUTH2_AUTH_METHOD",
            ),
            (
                &["--oauth2-client-assertion-key-file", "/nonexistent/key.pem"],
                "OAUTH2_CLIENT_ASSERTION_KEY_FILE: /nonexistent/key.pem does not exist",
            ),
            (
                &["--oauth2-client-assertion-key-file", &garbage],
                "OAUTH2_CLIENT_ASSERTION_KEY_FILE: not an EC private key",
            ),
            (
                &[
                    "--oauth2-client-assertion-key-file",
                    &path,
                    "--oauth2-client-assertion-alg",
                    "HS256",
                ],
                "OAUTH2_CLIENT_ASSERTION_ALG",
            ),
            (
                &[
                    "--oauth2-client-assertion-key-file",
                    &path,
                    "--oauth2-client-assertion-alg",
                    "RS256",
                ],
                "OAUTH2_CLIENT_ASSERTION_KEY_FILE: not a private key for RS256",
            ),
            (&["--oauth2-auth-method", "mtls"], "OAUTH2_AUTH_METHOD"),
        ];
        for (extra, expected) in cases {
            let err = PortalConfig::resolve(&jwt_args(extra))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{extra:?}: {err}");
        }
    }

    #[test]
    fn debug_output_hides_secrets() {
        let c = PortalConfig::resolve(&jwt_args(&["--oauth2-client-secret", "very-s3cret-value"]))
            .unwrap();
        let text = format!("{c:?}");
        assert!(text.contains("SecretBasic"), "{text}");
        assert!(!text.contains("very-s3cret-value"), "{text}");
    }

    #[test]
    fn tls_files_are_checked_at_start() {
        let mut garbage = tempfile::NamedTempFile::new().unwrap();
        garbage.write_all(b"not PEM\n").unwrap();
        let garbage = garbage.path().to_str().unwrap().to_string();
        let base = [
            "--target-api-url",
            "https://127.0.0.1:1",
            "--use-oauth",
            "false",
        ];
        let cases: &[(&[&str], &str)] = &[
            (&["--ca-file", "/nonexistent/ca.pem"], "PORTAL_CA_FILE"),
            (&["--ca-file", &garbage], "PORTAL_CA_FILE"),
            (&["--client-cert-file", &garbage], "PORTAL_CLIENT_KEY_FILE"),
            (&["--client-key-file", &garbage], "PORTAL_CLIENT_CERT_FILE"),
        ];
        for (extra, name) in cases {
            let mut argv = base.to_vec();
            argv.extend_from_slice(extra);
            let err = PortalConfig::resolve(&portal_args(&argv))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(name), "{extra:?}: {err}");
        }
    }

    #[test]
    fn bad_values_name_the_setting() {
        let base = [
            "--target-api-url",
            "http://127.0.0.1:1",
            "--use-oauth",
            "false",
        ];
        let cases: &[(&[&str], &str)] = &[
            (
                &["--max-concurrent-jobs", "0"],
                "PORTAL_MAX_CONCURRENT_JOBS",
            ),
            (
                &["--bootstrap-servers", "nohost"],
                "KAFKA_BOOTSTRAP_SERVERS",
            ),
            (&["--request-topic", "bad topic"], "KAFKA_REQUEST_TOPIC"),
            (&["--log-level", "LOUD"], "PORTAL_LOG_LEVEL"),
            (&["--start-from", "middle"], "PORTAL_START_FROM"),
            (&["--chunk-size", "10"], "KAFKASEND_CHUNK_SIZE"),
            (
                &["--max-assembly-memory-bytes", "1048575"],
                "PORTAL_MAX_ASSEMBLY_MEMORY_BYTES must be at least 1048576",
            ),
            (
                &["--max-header-count", "10001"],
                "PORTAL_MAX_HEADER_COUNT must be between 1 and 10000",
            ),
            (
                &["--max-header-bytes", "131073"],
                "PORTAL_MAX_HEADER_BYTES must be between 256 and 131072",
            ),
        ];
        for (extra, name) in cases {
            let mut argv = base.to_vec();
            argv.extend_from_slice(extra);
            let err = PortalConfig::resolve(&portal_args(&argv))
                .unwrap_err()
                .to_string();
            assert!(err.contains(name), "{extra:?}: {err}");
        }
        for bad in [
            "ftp://x",
            "http://u:p@x/",
            "http://x/v1#frag",
            "http://x/?q=1",
        ] {
            let mut argv = vec!["--use-oauth", "false", "--target-api-url", bad];
            argv.extend_from_slice(&["--allowed-endpoints", "/**"]);
            let err = PortalConfig::resolve(&portal_args(&argv))
                .unwrap_err()
                .to_string();
            assert!(err.contains("PORTAL_TARGET_API_URL"), "{bad}: {err}");
        }
        let err = PortalConfig::resolve(&portal_args(&[
            "--use-oauth",
            "false",
            "--target-api-url",
            "http://x",
            "--allowed-endpoints",
            "GET",
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("PORTAL_ALLOWED_ENDPOINTS"), "{err}");
    }

    #[test]
    fn a_memory_budget_that_cannot_hold_one_job_is_a_start_error() {
        let resolve = |extra: &[&str]| {
            let mut argv = vec![
                "--target-api-url",
                "http://127.0.0.1:1",
                "--use-oauth",
                "false",
            ];
            argv.extend_from_slice(extra);
            PortalConfig::resolve(&portal_args(&argv))
        };
        // 1 MiB cannot hold the default 100000 chunks at 24 bytes each.
        let err = resolve(&["--max-assembly-memory-bytes", "1048576"])
            .unwrap_err()
            .to_string();
        for wanted in [
            "PORTAL_MAX_ASSEMBLY_MEMORY_BYTES (1048576) is too small for PORTAL_MAX_CHUNKS (100000)",
            "PORTAL_MAX_HEADER_COUNT 64",
            "PORTAL_MAX_HEADER_BYTES 16384",
        ] {
            assert!(err.contains(wanted), "{err}");
        }
        // Both remedies the message offers work, and not a byte or chunk less.
        let number_after = |text: &str| -> String {
            let at = err.find(text).unwrap_or_else(|| panic!("{text} in {err}")) + text.len();
            err[at..].chars().take_while(char::is_ascii_digit).collect()
        };
        let budget = number_after("to at least ");
        let chunks = number_after("PORTAL_MAX_CHUNKS to at most ");
        let cfg = resolve(&["--max-assembly-memory-bytes", &budget]).unwrap();
        assert_eq!(cfg.limits.memory_reserve, cfg.limits.max_memory_bytes);
        let less = (budget.parse::<u64>().unwrap() - 1).to_string();
        assert!(resolve(&["--max-assembly-memory-bytes", &less]).is_err());
        let small = ["--max-assembly-memory-bytes", "1048576", "--max-chunks"];
        let cfg = resolve(&[&small[..], &[chunks.as_str()]].concat()).unwrap();
        assert!(cfg.limits.memory_reserve <= 1048576);
        let more = (chunks.parse::<u64>().unwrap() + 1).to_string();
        assert!(resolve(&[&small[..], &[more.as_str()]].concat()).is_err());

        // The reserve follows the header settings, and even the largest
        // leave room for chunks in the smallest budget.
        let largest = [
            "--max-assembly-memory-bytes",
            "1048576",
            "--max-header-count",
            "10000",
            "--max-header-bytes",
            "131072",
            "--max-chunks",
            "1000",
        ];
        let cfg = resolve(&largest).unwrap();
        assert_eq!(
            cfg.limits.memory_reserve,
            crate::portal::assembler::bookkeeping_bound(1000, 10_000, 131_072)
        );
        // The default budget takes the largest chunk count.
        let cfg = resolve(&["--max-chunks", "10000000"]).unwrap();
        assert!(cfg.limits.memory_reserve > 240_000_000);
        assert!(cfg.limits.memory_reserve < cfg.limits.max_memory_bytes);
    }

    #[test]
    fn signature_settings_name_their_variables() {
        let base = [
            "--target-api-url",
            "http://127.0.0.1:1",
            "--use-oauth",
            "false",
        ];
        let cases: &[(&[&str], &str)] = &[
            (
                &["--trusted-keys", "/nonexistent/k.pem"],
                "PORTAL_TRUSTED_KEYS",
            ),
            (
                &["--signature-max-ttl-secs", "0"],
                "PORTAL_SIGNATURE_MAX_TTL_SECS",
            ),
        ];
        for (extra, name) in cases {
            let mut argv = base.to_vec();
            argv.extend_from_slice(extra);
            let err = PortalConfig::resolve(&portal_args(&argv))
                .unwrap_err()
                .to_string();
            assert!(err.contains(name), "{extra:?}: {err}");
        }
        let unset = PortalConfig::resolve(&portal_args(&base)).unwrap();
        assert!(unset.trusted_keys.is_none());
        let send = |extra: &[&str]| {
            let mut argv = vec!["kafkasend", "send", "--endpoint", "/x"];
            argv.extend_from_slice(extra);
            match Cli::try_parse_from(argv).unwrap().command {
                Command::Send(a) => SendConfig::resolve(&a),
                _ => unreachable!(),
            }
        };
        let err = send(&["--signing-key", "/nonexistent/k.pem"]).unwrap_err();
        assert!(
            err.to_string().contains("KAFKASEND_SIGNING_KEY_FILE"),
            "{err}"
        );
        let err = send(&["--signature-ttl-secs", "0"]).unwrap_err();
        assert!(
            err.to_string().contains("KAFKASEND_SIGNATURE_TTL_SECS"),
            "{err}"
        );
        assert!(send(&[]).unwrap().signer.is_none());
    }

    #[test]
    fn kafka_security_combinations_are_checked() {
        let base = [
            "--target-api-url",
            "http://127.0.0.1:1",
            "--use-oauth",
            "false",
        ];
        let resolve = |extra: &[&str]| {
            let mut argv = base.to_vec();
            argv.extend_from_slice(extra);
            PortalConfig::resolve(&portal_args(&argv)).map(|c| c.kafka.security)
        };
        let sasl = [
            "--security-protocol",
            "SASL_SSL",
            "--sasl-mechanism",
            "SCRAM-SHA-512",
            "--sasl-username",
            "alice",
            "--sasl-password",
            "pw-secret-1",
        ];
        let ok = resolve(&sasl).unwrap();
        assert_eq!(ok.protocol, SecurityProtocol::SaslSsl);
        assert!(ok.tls.is_some());
        assert_eq!(
            ok.sasl.as_ref().unwrap().mechanism,
            SaslMechanism::ScramSha512
        );
        let plain = resolve(&[]).unwrap();
        assert!(plain.tls.is_none() && plain.sasl.is_none());

        let cases: &[(&[&str], &[&str])] = &[
            (
                &["--security-protocol", "TLS"],
                &["KAFKA_SECURITY_PROTOCOL", "'TLS'"],
            ),
            (&sasl[..6], &["KAFKA_SASL_PASSWORD"]),
            (
                &[
                    "--security-protocol",
                    "SASL_PLAINTEXT",
                    "--sasl-username",
                    "a",
                    "--sasl-password",
                    "b",
                ],
                &["KAFKA_SASL_MECHANISM"],
            ),
            (
                &[
                    "--security-protocol",
                    "SASL_SSL",
                    "--sasl-mechanism",
                    "GSSAPI",
                    "--sasl-username",
                    "a",
                    "--sasl-password",
                    "b",
                ],
                &["KAFKA_SASL_MECHANISM", "GSSAPI"],
            ),
            (
                &[
                    "--sasl-mechanism",
                    "PLAIN",
                    "--sasl-password",
                    "pw-secret-2",
                ],
                &[
                    "KAFKA_SASL_MECHANISM, KAFKA_SASL_PASSWORD are set",
                    "PLAINTEXT",
                ],
            ),
            (
                &["--ssl-ca-file", "/etc/hostname"],
                &["KAFKA_SSL_CA_FILE", "PLAINTEXT"],
            ),
            (
                &[
                    "--security-protocol",
                    "SSL",
                    "--ssl-ca-file",
                    "/nonexistent/ca.pem",
                ],
                &["KAFKA_SSL_CA_FILE", "/nonexistent/ca.pem"],
            ),
        ];
        for (extra, needles) in cases {
            let err = format!("{:#}", resolve(extra).unwrap_err());
            for n in *needles {
                assert!(err.contains(n), "{extra:?}: {err}");
            }
            assert!(!err.contains("pw-secret"), "{extra:?}: {err}");
        }
    }

    #[test]
    fn file_config_debug_hides_the_password() {
        let f = FileConfig {
            sasl_username: Some("alice".into()),
            sasl_password: Some("pw-secret-3".into()),
            ..Default::default()
        };
        let shown = format!("{f:?}");
        assert!(
            shown.contains("alice") && !shown.contains("pw-secret"),
            "{shown}"
        );
    }

    #[test]
    fn bad_target_url_is_named() {
        let mut argv = vec!["--use-oauth", "false"];
        argv.extend_from_slice(&["--target-api-url", "ftp://x"]);
        let err = PortalConfig::resolve(&portal_args(&argv))
            .unwrap_err()
            .to_string();
        assert!(err.contains("PORTAL_TARGET_API_URL"), "{err}");
    }

    #[test]
    fn admin_listen_and_log_format() {
        let base = [
            "--target-api-url",
            "http://127.0.0.1:1",
            "--use-oauth",
            "false",
        ];
        let c = PortalConfig::resolve(&portal_args(&base)).unwrap();
        assert_eq!(c.admin_listen, None);
        assert_eq!(c.log_format, LogFormat::Text);
        let mut argv = base.to_vec();
        argv.extend(["--admin-listen", "0.0.0.0:9464", "--log-format", "JSON"]);
        let c = PortalConfig::resolve(&portal_args(&argv)).unwrap();
        assert_eq!(c.admin_listen, Some("0.0.0.0:9464".parse().unwrap()));
        assert_eq!(c.log_format, LogFormat::Json);
        for (flag, bad, name) in [
            ("--admin-listen", "9464", "PORTAL_ADMIN_LISTEN"),
            ("--admin-listen", "localhost:9464", "PORTAL_ADMIN_LISTEN"),
            ("--admin-listen", "0.0.0.0:99999", "PORTAL_ADMIN_LISTEN"),
            ("--log-format", "yaml", "PORTAL_LOG_FORMAT"),
        ] {
            let mut argv = base.to_vec();
            argv.extend([flag, bad]);
            let err = PortalConfig::resolve(&portal_args(&argv))
                .unwrap_err()
                .to_string();
            assert!(err.contains(name) && err.contains(bad), "{err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }
}
