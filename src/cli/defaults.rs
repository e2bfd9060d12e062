//! Every setting's default, written once. The resolution in [`super::kafka`],
//! [`super::portal`] and [`super::send`] falls back to these (or to the
//! defaults of the layer that owns the setting: chunk size, assembly limits,
//! header policy), and [`annotate`] ends each flag's help with the same value
//! as `[default: ...]`, where `--help` and `config show` read it.

use clap::Command;

use crate::kafka::security::SecurityProtocol;
use crate::portal::assembler::Limits;
use crate::portal::http_dispatch::backpressure::RetryPolicy;
use crate::portal::policy::{Policy, DEFAULT_ALLOWED_HEADERS};
use crate::protocol::chunker::DEFAULT_CHUNK_SIZE;

pub(crate) const BOOTSTRAP_SERVERS: &str = "localhost:9092";
pub(crate) const REQUEST_TOPIC: &str = "api-requests";
pub(crate) const RESPONSE_TOPIC: &str = "api-responses";
pub(crate) const KAFKA_TIMEOUT_SECS: u64 = 30;
pub(crate) const USE_OAUTH: bool = true;
/// `PORTAL_PIPELINE`: large bodies are streamed to the API as they arrive.
pub(crate) const PIPELINE: bool = true;
/// `PORTAL_REQUIRE_SEALED`: clear requests are accepted.
pub(crate) const REQUIRE_SEALED: bool = false;
pub(crate) const TOKEN_REFRESH_STATUSES: &str = "401";
pub(crate) const LOG_LEVEL: &str = "INFO";
pub(crate) const LOG_FORMAT: &str = "text";
pub(crate) const MAX_CONCURRENT_JOBS: usize = 10;
pub(crate) const REQUEST_TIMEOUT_SECS: u64 = 1800;
pub(crate) const TOPIC_PARTITIONS: i32 = 3;
pub(crate) const REPLICATION_FACTOR: i16 = 1;
pub(crate) const START_FROM: &str = "latest";
pub(crate) const CONSUMER_GROUP: &str = "kafkasend-portal";
pub(crate) const SESSION_TIMEOUT_SECS: u64 = 30;
pub(crate) const GROUP_PROTOCOL: &str = "auto";
pub(crate) const SHUTDOWN_GRACE_SECS: u64 = 30;
pub(crate) const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
pub(crate) const SIGNATURE_MAX_TTL_SECS: u64 = 3600;
pub(crate) const SIGNATURE_TTL_SECS: u64 = 300;
/// `send` and `wait`: how long to wait for the answer after the last record.
pub(crate) const TIMEOUT_SECS: u64 = 300;
/// `send` and `wait`: their log level.
pub(crate) const CLIENT_LOG_LEVEL: &str = "WARNING";
/// Both sides' `--compression`.
pub(crate) const COMPRESSION: &str = "auto";
/// `send --digest`.
pub(crate) const DIGEST: &str = "blake3";

/// Each flag with a default value, by arg id, as its help shows it.
pub(crate) fn shown() -> Vec<(&'static str, String)> {
    let limits = Limits::default();
    let policy = Policy::default();
    let retry = RetryPolicy::default();
    vec![
        ("bootstrap_servers", BOOTSTRAP_SERVERS.into()),
        ("request_topic", REQUEST_TOPIC.into()),
        ("response_topic", RESPONSE_TOPIC.into()),
        ("kafka_timeout_secs", KAFKA_TIMEOUT_SECS.to_string()),
        ("chunk_size", DEFAULT_CHUNK_SIZE.to_string()),
        ("security_protocol", SecurityProtocol::default().to_string()),
        ("use_oauth", USE_OAUTH.to_string()),
        ("log_level", LOG_LEVEL.into()),
        ("log_format", LOG_FORMAT.into()),
        ("max_concurrent_jobs", MAX_CONCURRENT_JOBS.to_string()),
        ("request_timeout_secs", REQUEST_TIMEOUT_SECS.to_string()),
        ("allowed_headers", DEFAULT_ALLOWED_HEADERS.into()),
        ("strict_security", policy.strict.to_string()),
        ("max_header_count", policy.max_header_count.to_string()),
        ("max_header_bytes", policy.max_header_bytes.to_string()),
        ("max_chunks", limits.max_chunks.to_string()),
        ("max_spool_bytes", limits.max_spool_bytes.to_string()),
        (
            "max_assembly_memory_bytes",
            limits.max_memory_bytes.to_string(),
        ),
        ("max_job_age_secs", limits.max_job_age.as_secs().to_string()),
        ("max_body_bytes", limits.max_body_bytes.to_string()),
        ("spool_threshold_bytes", limits.spool_threshold.to_string()),
        ("pipeline", PIPELINE.to_string()),
        ("max_assembling_jobs", limits.max_jobs.to_string()),
        (
            "job_idle_timeout_secs",
            limits.idle_timeout.as_secs().to_string(),
        ),
        ("topic_partitions", TOPIC_PARTITIONS.to_string()),
        ("replication_factor", REPLICATION_FACTOR.to_string()),
        ("start_from", START_FROM.into()),
        ("consumer_group", CONSUMER_GROUP.into()),
        ("session_timeout_secs", SESSION_TIMEOUT_SECS.to_string()),
        ("shutdown_grace_secs", SHUTDOWN_GRACE_SECS.to_string()),
        ("group_protocol", GROUP_PROTOCOL.into()),
        ("idempotency_header", IDEMPOTENCY_HEADER.into()),
        ("retry_max_attempts", retry.max_attempts.to_string()),
        (
            "retry_max_delay_secs",
            retry.max_delay.as_secs().to_string(),
        ),
        (
            "retry_conflict_secs",
            retry.conflict_window.as_secs().to_string(),
        ),
        ("signature_max_ttl_secs", SIGNATURE_MAX_TTL_SECS.to_string()),
        ("require_sealed", REQUIRE_SEALED.to_string()),
        ("token_refresh_statuses", TOKEN_REFRESH_STATUSES.into()),
        ("timeout", TIMEOUT_SECS.to_string()),
        ("signature_ttl_secs", SIGNATURE_TTL_SECS.to_string()),
        ("client_log_level", CLIENT_LOG_LEVEL.into()),
        ("compression", COMPRESSION.into()),
        ("client_compression", COMPRESSION.into()),
        ("client_digest", DIGEST.into()),
    ]
}

/// `cmd`'s own flags (not its subcommands') with each help ending in the
/// flag's default value; help that already names a default (in words), and
/// flags clap itself fills in, are left as they are.
pub(crate) fn annotate(cmd: Command) -> Command {
    let defaults = shown();
    // In place, so the flags keep their order (config show lists them so).
    cmd.mut_args(|arg| {
        let value = defaults.iter().find(|(id, _)| arg.get_id() == id);
        let help = arg.get_help().map(|h| h.to_string());
        match (value, help) {
            (Some((_, value)), Some(help))
                if !help.contains("[default: ") && arg.get_default_values().is_empty() =>
            {
                arg.help(format!("{help} [default: {value}]"))
            }
            _ => arg,
        }
    })
}
