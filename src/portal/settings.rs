//! Everything the portal runs with, as `cli` resolved it.

use std::time::Duration;

use crate::kafka;
use crate::kafka::group::GroupConfig;
use crate::logging::LogFormat;
use crate::portal::http_dispatch::tls::ApiTls;
use crate::portal::http_dispatch::token_cache::OAuthConfig;

/// Where a new portal starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartFrom {
    /// Only requests sent after the portal started.
    Latest,
    /// Everything the topic still holds.
    Earliest,
}

/// Everything the portal runs with, resolved and checked.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Consumer group.
    pub(crate) group: GroupConfig,
    /// Time jobs in flight get on shutdown or revocation.
    pub(crate) shutdown_grace: Duration,
    /// `PORTAL_SESSION_TIMEOUT_SECS` (or its Python name) was set, not
    /// defaulted: the consumer protocol, where the broker decides, says so.
    pub(crate) session_timeout_set: bool,
    /// Header carrying the job id, if any.
    pub(crate) idempotency_header: Option<String>,
    /// Which calls the API pushes back are made again, and when.
    pub(crate) retry: crate::portal::http_dispatch::backpressure::RetryPolicy,
    /// Kafka side.
    pub(crate) kafka: kafka::Config,
    /// API base URL.
    pub(crate) target_api_url: String,
    /// OAuth settings, when on.
    pub(crate) oauth: Option<OAuthConfig>,
    /// TLS of the calls to the API and the token endpoint.
    pub(crate) api_tls: ApiTls,
    /// env_logger filter.
    pub(crate) log_filter: String,
    /// How log lines look.
    pub(crate) log_format: LogFormat,
    /// Where the admin listener serves, when on.
    pub(crate) admin_listen: Option<std::net::SocketAddr>,
    /// REST calls at once.
    pub(crate) max_concurrent_jobs: usize,
    /// API deadline.
    pub(crate) request_timeout: Duration,
    /// What may reach the API.
    pub(crate) policy: crate::portal::policy::Policy,
    /// Assembly limits.
    pub(crate) limits: crate::portal::assembler::Limits,
    /// Partitions of created topics.
    pub(crate) topic_partitions: i32,
    /// Replication of created topics.
    pub(crate) replication_factor: i16,
    /// Where to start reading.
    pub(crate) start_from: StartFrom,
    /// Keys whose signatures the portal requires, when set.
    pub(crate) trusted_keys: Option<crate::protocol::signing::TrustedKeys>,
    /// Call the API while a spooled body still arrives (`PORTAL_PIPELINE`).
    pub(crate) pipeline: bool,
    /// How the answers' records are compressed.
    pub(crate) compression: crate::kafka::compression::Codec,
}
