//! `kafkasend portal`'s flags, resolved into [`crate::portal::Settings`].

use crate::cli::routes::parse_url;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args};

use crate::cli::defaults;
use crate::cli::file::{load_file, FileConfig};
use crate::cli::file::{pick, MAX_SPOOL_THRESHOLD, MAX_WAIT_SECS};
use crate::cli::kafka::{resolve_kafka, KafkaArgs};
use crate::kafka::group::{GroupConfig, GroupProtocol};
use crate::logging::LogFormat;
use crate::portal::http_dispatch::backpressure::RetryPolicy;
use crate::portal::http_dispatch::tls::ApiTls;
use crate::portal::http_dispatch::token_cache::{AssertionSigner, AuthMethod, ClientCredentials};
use crate::portal::{Settings, StartFrom};

/// Flags of `kafkasend portal`.
#[derive(Debug, Args, Clone, Default)]
pub struct PortalArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub kafka: KafkaArgs,
    /// Base URL of the REST API the portal calls (required)
    #[arg(long, env = "PORTAL_TARGET_API_URL", value_name = "URL")]
    pub target_api_url: Option<String>,
    /// Get an OAuth2 client-credentials token for the API
    #[arg(long, env = "PORTAL_USE_OAUTH", value_name = "BOOL", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub use_oauth: Option<bool>,
    /// Log level: DEBUG, INFO, WARNING, ERROR
    #[arg(long, env = "PORTAL_LOG_LEVEL", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log lines as text or json (one JSON object per line)
    #[arg(long, env = "PORTAL_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Serve /healthz, /readyz and /metrics on this address, e.g. 0.0.0.0:9464 [default: off]
    #[arg(long, env = "PORTAL_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// REST calls running at once
    #[arg(long, env = "PORTAL_MAX_CONCURRENT_JOBS", value_name = "N")]
    pub max_concurrent_jobs: Option<usize>,
    /// Seconds the API may take to answer one call
    #[arg(long, env = "PORTAL_REQUEST_TIMEOUT_SECS", value_name = "SECS")]
    pub request_timeout_secs: Option<u64>,
    /// Request headers forwarded to the API, comma-separated
    #[arg(long, env = "PORTAL_ALLOWED_HEADERS", value_name = "NAMES")]
    pub allowed_headers: Option<String>,
    /// Endpoints the portal may call: comma-separated '[METHODS ]PATTERN', '*' within a segment, '**' across (e.g. 'POST /api/upload, GET,DELETE /api/items/*') [default: none]
    #[arg(long, env = "PORTAL_ALLOWED_ENDPOINTS", value_name = "PATTERNS")]
    pub allowed_endpoints: Option<String>,
    /// Refuse requests outside PORTAL_ALLOWED_ENDPOINTS; false only logs them
    #[arg(long, env = "PORTAL_STRICT_SECURITY", value_name = "BOOL", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub strict_security: Option<bool>,
    /// Most headers one request may carry
    #[arg(long, env = "PORTAL_MAX_HEADER_COUNT", value_name = "N")]
    pub max_header_count: Option<usize>,
    /// Most bytes of header names and values one request may carry
    #[arg(long, env = "PORTAL_MAX_HEADER_BYTES", value_name = "BYTES")]
    pub max_header_bytes: Option<usize>,
    /// Most chunks one request body may have
    #[arg(long, env = "PORTAL_MAX_CHUNKS", value_name = "N")]
    pub max_chunks: Option<usize>,
    /// Most bytes of spool files on disk at once, all jobs together
    #[arg(long, env = "PORTAL_MAX_SPOOL_BYTES", value_name = "BYTES")]
    pub max_spool_bytes: Option<u64>,
    /// Most bytes of memory held for requests at once, all jobs together; beyond it bodies spool to disk
    #[arg(long, env = "PORTAL_MAX_ASSEMBLY_MEMORY_BYTES", value_name = "BYTES")]
    pub max_assembly_memory_bytes: Option<u64>,
    /// Refuse a request older than this, counted from its job id's time
    #[arg(long, env = "PORTAL_MAX_JOB_AGE_SECS", value_name = "SECS")]
    pub max_job_age_secs: Option<u64>,
    /// Largest request body accepted, in bytes
    #[arg(long, env = "PORTAL_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<u64>,
    /// Bodies above this many bytes spool to disk
    #[arg(long, env = "PORTAL_SPOOL_THRESHOLD_BYTES", value_name = "BYTES")]
    pub spool_threshold_bytes: Option<usize>,
    /// Directory for spool files [default: the system temporary directory]
    #[arg(long, env = "PORTAL_SPOOL_DIR", value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Call the API while a body above the spool threshold still arrives; false waits for the whole body
    #[arg(long, env = "PORTAL_PIPELINE", value_name = "BOOL", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub pipeline: Option<bool>,
    /// Jobs assembling at once per partition
    #[arg(long, env = "PORTAL_MAX_ASSEMBLING_JOBS", value_name = "N")]
    pub max_assembling_jobs: Option<usize>,
    /// Drop a job when nothing of it arrives for this long
    #[arg(long, env = "PORTAL_JOB_IDLE_TIMEOUT_SECS", value_name = "SECS")]
    pub job_idle_timeout_secs: Option<u64>,
    /// Partitions of topics the portal creates
    #[arg(long, env = "KAFKA_TOPIC_PARTITIONS", value_name = "N")]
    pub topic_partitions: Option<i32>,
    /// Replication factor of topics the portal creates
    #[arg(long, env = "KAFKA_REPLICATION_FACTOR", value_name = "N")]
    pub replication_factor: Option<i16>,
    /// Where to start reading the request topic: latest or earliest
    #[arg(long, env = "PORTAL_START_FROM", value_name = "WHERE")]
    pub start_from: Option<String>,
    /// Consumer group the portals share
    #[arg(long, env = "KAFKA_CONSUMER_GROUP", value_name = "GROUP")]
    pub consumer_group: Option<String>,
    /// Static group membership: this portal's own id in the group, or 'auto' for the host name; empty is dynamic membership [default: off]
    #[arg(long, env = "KAFKA_GROUP_INSTANCE_ID", value_name = "ID")]
    pub group_instance_id: Option<String>,
    /// Group protocol: consumer (KIP-848, Kafka 4.0 and later), classic, or auto (consumer when the broker serves it)
    #[arg(long, env = "KAFKA_GROUP_PROTOCOL", value_name = "PROTOCOL")]
    pub group_protocol: Option<String>,
    /// The group drops a portal not heard from for this long, 6 to 1800
    #[arg(long, env = "PORTAL_SESSION_TIMEOUT_SECS", value_name = "SECS")]
    pub session_timeout_secs: Option<u64>,
    /// On shutdown or rebalance, how long jobs in flight may finish
    #[arg(long, env = "PORTAL_SHUTDOWN_GRACE_SECS", value_name = "SECS")]
    pub shutdown_grace_secs: Option<u64>,
    /// Header carrying the job id on every API call; empty turns it off
    #[arg(long, env = "PORTAL_IDEMPOTENCY_HEADER", value_name = "NAME")]
    pub idempotency_header: Option<String>,
    /// API calls one job may make while the API answers 429, 503 or 409, the first included; 1 turns retrying off
    #[arg(long, env = "PORTAL_RETRY_MAX_ATTEMPTS", value_name = "N")]
    pub retry_max_attempts: Option<u32>,
    /// Longest wait before calling again, in seconds; a longer Retry-After is cut to it
    #[arg(long, env = "PORTAL_RETRY_MAX_DELAY_SECS", value_name = "SECS")]
    pub retry_max_delay_secs: Option<u64>,
    /// How long after a job's first call a 409 is still called again (with the idempotency header on); 0 never
    #[arg(long, env = "PORTAL_RETRY_CONFLICT_SECS", value_name = "SECS")]
    pub retry_conflict_secs: Option<u64>,
    /// Accept only requests signed by one of these PEM public keys (comma-separated files)
    #[arg(long, env = "PORTAL_TRUSTED_KEYS", value_name = "FILES")]
    pub trusted_keys: Option<String>,
    /// PEM files of the X25519 private keys sealed requests are opened with (comma-separated); the first key is advertised, all are accepted
    #[arg(long, env = "PORTAL_SEALING_KEY_FILE", value_name = "FILES")]
    pub sealing_key_file: Option<String>,
    /// Refuse requests that are not sealed (needs PORTAL_SEALING_KEY_FILE)
    #[arg(long, env = "PORTAL_REQUIRE_SEALED", value_name = "BOOL", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub require_sealed: Option<bool>,
    /// Longest lifetime a request signature may have, in seconds
    #[arg(long, env = "PORTAL_SIGNATURE_MAX_TTL_SECS", value_name = "SECS")]
    pub signature_max_ttl_secs: Option<u64>,
    /// Codec of the answers' records: zstd, lz4, none, or auto (lz4); batches a quick probe finds incompressible go uncompressed
    #[arg(long, env = "PORTAL_COMPRESSION", value_name = "CODEC")]
    pub compression: Option<String>,
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
    /// API statuses that mean the token was refused: refresh it and retry once, comma-separated 4xx
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

/// Resolves the portal's flags, environment, file and defaults.
pub fn resolve_portal(a: &PortalArgs) -> anyhow::Result<Settings> {
    let f = load_file(a.kafka.config.as_deref())?;
    let kafka = resolve_kafka(&a.kafka, &f, "kafkasend-portal")?;
    let target = pick(&a.target_api_url, &f.target_api_url);
    match &target {
        Some(target) => check_default_target(target)?,
        None if f.routes.as_ref().is_some_and(|r| !r.is_empty()) => {}
        None => bail!("PORTAL_TARGET_API_URL is not set; set it to the base URL of the REST API (e.g. http://127.0.0.1:8080), or list [[routes]] in the config file"),
    }
    let use_oauth = pick(&a.use_oauth, &f.use_oauth).unwrap_or(defaults::USE_OAUTH);
    let refresh_statuses = parse_refresh_statuses(
        &pick(&a.token_refresh_statuses, &f.token_refresh_statuses)
            .unwrap_or_else(|| defaults::TOKEN_REFRESH_STATUSES.into()),
    )?;
    // OAuth2 settings belong to the default route; without
    // PORTAL_TARGET_API_URL there is none, and each listed route has its own.
    let oauth = if use_oauth && target.is_some() {
        Some(resolve_oauth(a, &f, refresh_statuses.clone())?)
    } else {
        None
    };
    let ca_file = pick(&a.ca_file, &f.ca_file);
    let api_tls = ApiTls::load(
        ca_file.as_deref(),
        pick(&a.client_cert_file, &f.client_cert_file).as_deref(),
        pick(&a.client_key_file, &f.client_key_file).as_deref(),
    )?;
    let level = pick(&a.log_level, &f.log_level).unwrap_or_else(|| defaults::LOG_LEVEL.into());
    let log_filter = log_filter("PORTAL_LOG_LEVEL", &level)?;
    let log_format = parse_log_format(
        &pick(&a.log_format, &f.log_format).unwrap_or_else(|| defaults::LOG_FORMAT.into()),
    )?;
    let admin_listen = pick(&a.admin_listen, &f.admin_listen)
        .map(|s| parse_admin_listen(&s))
        .transpose()?;
    let max_concurrent_jobs = pick(&a.max_concurrent_jobs, &f.max_concurrent_jobs)
        .unwrap_or(defaults::MAX_CONCURRENT_JOBS);
    if !(1..=10_000).contains(&max_concurrent_jobs) {
        bail!("PORTAL_MAX_CONCURRENT_JOBS must be between 1 and 10000, not {max_concurrent_jobs}");
    }
    let timeout = pick(&a.request_timeout_secs, &f.request_timeout_secs)
        .unwrap_or(defaults::REQUEST_TIMEOUT_SECS);
    if !(1..=MAX_WAIT_SECS).contains(&timeout) {
        bail!("PORTAL_REQUEST_TIMEOUT_SECS must be between 1 and {MAX_WAIT_SECS}, not {timeout}");
    }
    let policy = resolve_policy(a, &f)?;
    let limit_defaults = crate::portal::assembler::Limits::default();
    let max_jobs =
        pick(&a.max_assembling_jobs, &f.max_assembling_jobs).unwrap_or(limit_defaults.max_jobs);
    if max_jobs == 0 {
        bail!("PORTAL_MAX_ASSEMBLING_JOBS must be at least 1");
    }
    let idle = pick(&a.job_idle_timeout_secs, &f.job_idle_timeout_secs)
        .unwrap_or(limit_defaults.idle_timeout.as_secs());
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
        .unwrap_or(limit_defaults.spool_threshold);
    if spool_threshold > MAX_SPOOL_THRESHOLD {
        bail!("PORTAL_SPOOL_THRESHOLD_BYTES must be at most {MAX_SPOOL_THRESHOLD}, not {spool_threshold}");
    }
    let max_chunks = pick(&a.max_chunks, &f.max_chunks).unwrap_or(limit_defaults.max_chunks);
    if !(1..=10_000_000).contains(&max_chunks) {
        bail!("PORTAL_MAX_CHUNKS must be between 1 and 10000000, not {max_chunks}");
    }
    let max_spool_bytes =
        pick(&a.max_spool_bytes, &f.max_spool_bytes).unwrap_or(limit_defaults.max_spool_bytes);
    if max_spool_bytes < 1024 * 1024 {
        bail!("PORTAL_MAX_SPOOL_BYTES must be at least 1048576 (1 MiB), not {max_spool_bytes}");
    }
    let max_memory_bytes = pick(&a.max_assembly_memory_bytes, &f.max_assembly_memory_bytes)
        .unwrap_or(limit_defaults.max_memory_bytes);
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
        .unwrap_or(limit_defaults.max_job_age.as_secs());
    if !(1..=MAX_WAIT_SECS).contains(&max_age) {
        bail!("PORTAL_MAX_JOB_AGE_SECS must be between 1 and {MAX_WAIT_SECS}, not {max_age}");
    }
    let limits = crate::portal::assembler::Limits {
        max_body_bytes: pick(&a.max_body_bytes, &f.max_body_bytes)
            .unwrap_or(limit_defaults.max_body_bytes),
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
    let topic_partitions =
        pick(&a.topic_partitions, &f.topic_partitions).unwrap_or(defaults::TOPIC_PARTITIONS);
    if topic_partitions < 1 {
        bail!("KAFKA_TOPIC_PARTITIONS must be at least 1");
    }
    let replication_factor =
        pick(&a.replication_factor, &f.replication_factor).unwrap_or(defaults::REPLICATION_FACTOR);
    if replication_factor < 1 {
        bail!("KAFKA_REPLICATION_FACTOR must be at least 1");
    }
    let start_from = match pick(&a.start_from, &f.start_from)
        .unwrap_or_else(|| defaults::START_FROM.into())
        .to_ascii_lowercase()
        .as_str()
    {
        "latest" => StartFrom::Latest,
        "earliest" => StartFrom::Earliest,
        other => bail!("PORTAL_START_FROM must be latest or earliest, not '{other}'"),
    };
    let group_id = pick(&a.consumer_group, &f.consumer_group)
        .unwrap_or_else(|| defaults::CONSUMER_GROUP.into());
    if group_id.trim().is_empty() || group_id.len() > 249 {
        bail!("KAFKA_CONSUMER_GROUP must be a non-empty name of at most 249 characters");
    }
    let session_timeout_set = pick(&a.session_timeout_secs, &f.session_timeout_secs).is_some();
    let session = pick(&a.session_timeout_secs, &f.session_timeout_secs)
        .unwrap_or(defaults::SESSION_TIMEOUT_SECS);
    if !(6..=1800).contains(&session) {
        bail!("PORTAL_SESSION_TIMEOUT_SECS must be between 6 and 1800 (the broker's group.min/max.session.timeout.ms), not {session}");
    }
    let grace = pick(&a.shutdown_grace_secs, &f.shutdown_grace_secs)
        .unwrap_or(defaults::SHUTDOWN_GRACE_SECS);
    if grace > 3600 {
        bail!("PORTAL_SHUTDOWN_GRACE_SECS must be at most 3600, not {grace}");
    }
    let idempotency_header = pick(&a.idempotency_header, &f.idempotency_header)
        .unwrap_or_else(|| defaults::IDEMPOTENCY_HEADER.into());
    let idempotency_header = match idempotency_header.trim() {
        "" => None,
        h if hyper::header::HeaderName::from_bytes(h.as_bytes()).is_ok() => Some(h.to_string()),
        h => bail!("PORTAL_IDEMPOTENCY_HEADER: '{h}' is not a valid header name"),
    };
    let instance_id = resolve_instance_id(
        pick(&a.group_instance_id, &f.group_instance_id).as_deref(),
        host_name,
    )?;
    let protocol = resolve_group_protocol(pick(&a.group_protocol, &f.group_protocol).as_deref())?;
    let retry = resolve_retry(a, &f)?;
    let group = GroupConfig {
        group_id,
        instance_id,
        session_timeout: Duration::from_secs(session),
        rebalance_timeout: Duration::from_secs(grace + 30),
        protocol,
    };
    let trusted_keys = resolve_trusted_keys(a, &f)?;
    let (sealing, require_sealed) = resolve_sealing(a, &f)?;
    let compression = resolve_compression(
        "PORTAL_COMPRESSION",
        pick(&a.compression, &f.compression).as_deref(),
    )?;
    let routes = resolve_route_table(
        &f,
        target.as_deref(),
        &policy,
        Duration::from_secs(timeout),
        limits.max_body_bytes,
        max_concurrent_jobs,
        ca_file.as_deref(),
        &refresh_statuses,
        oauth.as_ref(),
        &api_tls,
    )?;
    let target = target.unwrap_or_else(|| {
        let names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
        format!("routes {}", names.join(", "))
    });
    Ok(Settings {
        routes,
        pipeline: pick(&a.pipeline, &f.pipeline).unwrap_or(defaults::PIPELINE),
        compression,
        shutdown_grace: Duration::from_secs(grace),
        session_timeout_set,
        trusted_keys,
        sealing,
        require_sealed,
        group,
        idempotency_header,
        retry,
        kafka,
        target_api_url: target,
        log_filter,
        log_format,
        admin_listen,
        max_concurrent_jobs,
        policy,
        limits,
        topic_partitions,
        replication_factor,
        start_from,
    })
}

/// Checks `PORTAL_TARGET_API_URL`.
fn check_default_target(target: &str) -> anyhow::Result<()> {
    let target_uri = parse_url(
        "PORTAL_TARGET_API_URL",
        target,
        "the portal authenticates with OAuth2",
    )?;
    if !matches!(target_uri.scheme_str(), Some("http" | "https")) || target_uri.host().is_none() {
        bail!("PORTAL_TARGET_API_URL: '{target}' must be an http:// or https:// URL with a host");
    }
    if target_uri.query().is_some() || target.contains('#') {
        bail!("PORTAL_TARGET_API_URL: '{target}' must not have a query string or fragment");
    }
    Ok(())
}

/// The route table: the listed routes, then the default route when
/// `PORTAL_TARGET_API_URL` is set (it takes every path and method).
#[allow(clippy::too_many_arguments)]
fn resolve_route_table(
    f: &FileConfig,
    target: Option<&str>,
    policy: &crate::portal::policy::Policy,
    timeout: Duration,
    max_body_bytes: u64,
    max_concurrent_jobs: usize,
    ca_file: Option<&Path>,
    refresh_statuses: &[hyper::StatusCode],
    oauth: Option<&crate::portal::http_dispatch::token_cache::OAuthConfig>,
    api_tls: &ApiTls,
) -> anyhow::Result<Vec<crate::portal::routes::Route>> {
    use crate::portal::routes::{Route, RouteAuth, DEFAULT_ROUTE};
    let inherited = crate::cli::routes::Inherited {
        allowed_headers: &policy.allowed_headers,
        timeout,
        max_body_bytes,
        max_concurrent_jobs,
        ca_file,
        refresh_statuses,
    };
    let mut routes =
        crate::cli::routes::resolve_routes(f.routes.as_deref().unwrap_or_default(), &inherited)?;
    if let Some(target) = target {
        routes.push(Route {
            name: DEFAULT_ROUTE.to_string(),
            line: None,
            rule: crate::portal::policy::EndpointRule {
                methods: Vec::new(),
                pattern: "/**".to_string(),
            },
            target: target.trim_end_matches('/').to_string(),
            strip_prefix: None,
            allowed_headers: policy.allowed_headers.clone(),
            timeout,
            max_body_bytes,
            max_concurrent_jobs,
            auth: oauth.map_or(RouteAuth::None, |o| RouteAuth::OAuth2(o.clone())),
            tls: api_tls.clone(),
        });
    }
    Ok(routes)
}

/// `KAFKA_GROUP_PROTOCOL`: `consumer`, `classic` or `auto` (the default,
/// settled against the broker at start-up), in any case.
pub(crate) fn resolve_group_protocol(value: Option<&str>) -> anyhow::Result<GroupProtocol> {
    let value = value.map(str::trim).filter(|v| !v.is_empty());
    match value.map(str::to_ascii_lowercase).as_deref() {
        None => resolve_group_protocol(Some(defaults::GROUP_PROTOCOL)),
        Some("auto") => Ok(GroupProtocol::Auto),
        Some("consumer") => Ok(GroupProtocol::Consumer),
        Some("classic") => Ok(GroupProtocol::Classic),
        Some(_) => bail!(
            "KAFKA_GROUP_PROTOCOL: {:?} is not a group protocol; use consumer, classic or auto",
            value.unwrap_or_default()
        ),
    }
}

/// A `--compression` value of either side, `setting` naming it in an
/// error; unset or blank is the default, `auto`.
pub(crate) fn resolve_compression(
    setting: &str,
    value: Option<&str>,
) -> anyhow::Result<crate::kafka::compression::Codec> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(defaults::COMPRESSION.parse().map_err(anyhow::Error::msg)?),
        Some(v) => v.parse().map_err(|e| anyhow::anyhow!("{setting}: {e}")),
    }
}

/// `KAFKA_GROUP_INSTANCE_ID`: unset or blank is dynamic membership; `auto`
/// (any case) is the host name `host` finds; anything else is the id itself.
/// Each is checked with Kafka's rule for instance ids.
pub(crate) fn resolve_instance_id(
    value: Option<&str>,
    host: impl FnOnce() -> Option<String>,
) -> anyhow::Result<Option<String>> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if value.eq_ignore_ascii_case("auto") {
        let Some(name) = host() else {
            bail!("KAFKA_GROUP_INSTANCE_ID=auto: the host name is unknown (/proc/sys/kernel/hostname cannot be read and HOSTNAME is not set); set the id itself");
        };
        if let Err(why) = crate::kafka::group::check_instance_id(&name) {
            bail!("KAFKA_GROUP_INSTANCE_ID=auto: the host name {name:?} is not a valid group instance id: {why}; set the id itself");
        }
        return Ok(Some(name));
    }
    if let Err(why) = crate::kafka::group::check_instance_id(value) {
        bail!("KAFKA_GROUP_INSTANCE_ID: {value:?} is not a valid group instance id: {why}");
    }
    Ok(Some(value.to_string()))
}

/// The host name as `hostname` prints it: the kernel's (per UTS namespace,
/// so a container's own), else the `HOSTNAME` variable where there is no
/// `/proc`. Reading the kernel's needs no `unsafe` `gethostname` call.
fn host_name() -> Option<String> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    kernel
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// Resolves which calls the API pushes back are made again, and when.
fn resolve_retry(a: &PortalArgs, f: &FileConfig) -> anyhow::Result<RetryPolicy> {
    let d = RetryPolicy::default();
    let max_attempts = pick(&a.retry_max_attempts, &f.retry_max_attempts).unwrap_or(d.max_attempts);
    if !(1..=100).contains(&max_attempts) {
        bail!(
            "PORTAL_RETRY_MAX_ATTEMPTS must be between 1 (no retries) and 100, not {max_attempts}"
        );
    }
    let max_delay =
        pick(&a.retry_max_delay_secs, &f.retry_max_delay_secs).unwrap_or(d.max_delay.as_secs());
    if !(1..=3600).contains(&max_delay) {
        bail!("PORTAL_RETRY_MAX_DELAY_SECS must be between 1 and 3600, not {max_delay}");
    }
    let conflict =
        pick(&a.retry_conflict_secs, &f.retry_conflict_secs).unwrap_or(d.conflict_window.as_secs());
    if conflict > MAX_WAIT_SECS {
        bail!("PORTAL_RETRY_CONFLICT_SECS must be at most {MAX_WAIT_SECS}, not {conflict}");
    }
    Ok(RetryPolicy {
        max_attempts,
        max_delay: Duration::from_secs(max_delay),
        conflict_window: Duration::from_secs(conflict),
    })
}

/// Resolves the request policy settings.
fn resolve_policy(a: &PortalArgs, f: &FileConfig) -> anyhow::Result<crate::portal::policy::Policy> {
    let policy_defaults = crate::portal::policy::Policy::default();
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
        pick(&a.max_header_count, &f.max_header_count).unwrap_or(policy_defaults.max_header_count);
    // Headers travel in one frame header, whose decoding the wire bounds: up
    // to these maxima every request decodes and meets the policy.
    let most = crate::protocol::wire::MAX_HEADERS;
    if !(1..=most).contains(&max_header_count) {
        bail!("PORTAL_MAX_HEADER_COUNT must be between 1 and {most}, not {max_header_count}");
    }
    let max_header_bytes =
        pick(&a.max_header_bytes, &f.max_header_bytes).unwrap_or(policy_defaults.max_header_bytes);
    let ceiling = crate::protocol::wire::MAX_HEADER_TEXT;
    if !(256..=ceiling).contains(&max_header_bytes) {
        bail!("PORTAL_MAX_HEADER_BYTES must be between 256 and {ceiling}, not {max_header_bytes}");
    }
    Ok(crate::portal::policy::Policy {
        endpoints,
        strict: pick(&a.strict_security, &f.strict_security).unwrap_or(policy_defaults.strict),
        allowed_headers,
        max_header_count,
        max_header_bytes,
    })
}

fn resolve_oauth(
    a: &PortalArgs,
    f: &FileConfig,
    refresh_statuses: Vec<hyper::StatusCode>,
) -> anyhow::Result<crate::portal::http_dispatch::token_cache::OAuthConfig> {
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
    Ok(crate::portal::http_dispatch::token_cache::OAuthConfig {
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
    let max_ttl = pick(&a.signature_max_ttl_secs, &f.signature_max_ttl_secs)
        .unwrap_or(defaults::SIGNATURE_MAX_TTL_SECS);
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

/// `PORTAL_SEALING_KEY_FILE` and `PORTAL_REQUIRE_SEALED`: every key file
/// read and checked now, so a portal never starts unable to open what it
/// advertises. Errors name the setting and the file, never key bytes.
fn resolve_sealing(
    a: &PortalArgs,
    f: &FileConfig,
) -> anyhow::Result<(Option<crate::portal::SealingKeys>, bool)> {
    use crate::protocol::seal::{Keyring, SecretKey};
    const SETTING: &str = "PORTAL_SEALING_KEY_FILE";
    let require = pick(&a.require_sealed, &f.require_sealed).unwrap_or(defaults::REQUIRE_SEALED);
    let list = pick(&a.sealing_key_file, &f.sealing_key_file).unwrap_or_default();
    let mut keys: Vec<SecretKey> = Vec::new();
    let mut files = Vec::new();
    for file in list.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        let pem = zeroize::Zeroizing::new(
            crate::util::file_read::read(
                SETTING,
                std::path::Path::new(file),
                crate::util::file_read::Kind::Key,
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        );
        let held =
            SecretKey::all_from_pem(&pem).map_err(|e| anyhow::anyhow!("{SETTING}: {file} {e}"))?;
        let mut ids = Vec::new();
        for key in held {
            let id = key.public().id();
            if keys.iter().any(|k| k.public().id() == id) {
                bail!("{SETTING}: {file} holds key {id} a second time; list each key once");
            }
            ids.push(id);
            keys.push(key);
        }
        files.push((file.to_string(), ids));
    }
    let Some(keyring) = Keyring::new(keys) else {
        if require {
            bail!("PORTAL_REQUIRE_SEALED=true needs PORTAL_SEALING_KEY_FILE: without a sealing key the portal can open no request");
        }
        if !list.trim().is_empty() {
            bail!("{SETTING} names no key file; list PEM private key files, comma-separated, or leave it unset");
        }
        return Ok((None, false));
    };
    let sealing = crate::portal::SealingKeys {
        keyring: std::sync::Arc::new(keyring),
        files,
    };
    Ok((Some(sealing), require))
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

/// Maps the Python tool's level names to an env_logger filter; errors name
/// `setting`.
pub fn log_filter(setting: &str, level: &str) -> anyhow::Result<String> {
    let l = match level.trim().to_ascii_uppercase().as_str() {
        "TRACE" => "trace",
        "DEBUG" => "debug",
        "INFO" => "info",
        "WARN" | "WARNING" => "warn",
        "ERROR" | "CRITICAL" => "error",
        "OFF" => "off",
        _ => bail!("{setting} must be DEBUG, INFO, WARNING or ERROR, not '{level}'"),
    };
    // Our own messages at the chosen level; the Kafka client's only when they matter.
    Ok(format!("warn,kafkasend={l}"))
}
