//! Everything the portal runs with, as `cli` resolved it.

use std::time::Duration;

use crate::kafka;
use crate::logging::LogFormat;
use crate::portal::http_dispatch::tls::ApiTls;
use crate::portal::http_dispatch::token_cache::OAuthConfig;

/// Where a new portal starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// Only requests sent after the portal started.
    Latest,
    /// Everything the topic still holds.
    Earliest,
}

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

/// Everything the portal runs with, resolved and checked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Consumer group.
    pub group: GroupConfig,
    /// Header carrying the job id, if any.
    pub idempotency_header: Option<String>,
    /// Kafka side.
    pub kafka: kafka::Config,
    /// API base URL.
    pub target_api_url: String,
    /// OAuth settings, when on.
    pub oauth: Option<OAuthConfig>,
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
