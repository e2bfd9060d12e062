//! Everything the portal runs with, as `cli` resolved it.

use std::time::Duration;

use crate::kafka;
use crate::kafka::group::GroupConfig;
use crate::logging::LogFormat;

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
    /// API base URL of the default route; with only listed routes, their
    /// names (it is shown in the "portal ready" line).
    pub(crate) target_api_url: String,
    /// env_logger filter.
    pub(crate) log_filter: String,
    /// How log lines look.
    pub(crate) log_format: LogFormat,
    /// Where the admin listener serves, when on.
    pub(crate) admin_listen: Option<std::net::SocketAddr>,
    /// REST calls at once.
    pub(crate) max_concurrent_jobs: usize,
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
    /// Every route in the order they are tried: the `[[routes]]` of the
    /// config file, then the default route when `PORTAL_TARGET_API_URL` is set.
    pub(crate) routes: Vec<crate::portal::routes::Route>,
    /// The keys sealed requests are opened with (`PORTAL_SEALING_KEY_FILE`).
    pub(crate) sealing: Option<SealingKeys>,
    /// Refuse clear requests (`PORTAL_REQUIRE_SEALED`).
    pub(crate) require_sealed: bool,
}

/// The portal's sealing keys and the files they came from, for its logs and
/// `config show`: ids only, never key bytes.
#[derive(Debug, Clone)]
pub(crate) struct SealingKeys {
    /// Every key, the advertised one first.
    pub(crate) keyring: std::sync::Arc<crate::protocol::seal::Keyring>,
    /// Each file's name and the ids of the keys it holds, in setting order.
    pub(crate) files: Vec<(String, Vec<crate::protocol::seal::KeyId>)>,
}

impl SealingKeys {
    /// One line: the advertised key id, the other accepted ids, the files.
    pub(crate) fn describe(&self) -> String {
        let ids = self.keyring.ids();
        let others: Vec<String> = ids.iter().skip(1).map(ToString::to_string).collect();
        let files: Vec<String> = self
            .files
            .iter()
            .map(|(name, ids)| {
                let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
                format!("{name} ({})", ids.join(", "))
            })
            .collect();
        format!(
            "advertised key {}; also accepted: {}; files: {}",
            self.keyring.advertised().id(),
            if others.is_empty() {
                "none".into()
            } else {
                others.join(", ")
            },
            files.join(", ")
        )
    }
}

#[cfg(test)]
impl Settings {
    /// The default route's OAuth2 settings, when it has them.
    pub(crate) fn oauth(&self) -> Option<&crate::portal::http_dispatch::token_cache::OAuthConfig> {
        use crate::portal::routes::{RouteAuth, DEFAULT_ROUTE};
        self.routes
            .iter()
            .filter(|r| r.name == DEFAULT_ROUTE)
            .find_map(|r| match &r.auth {
                RouteAuth::OAuth2(o) => Some(o),
                _ => None,
            })
    }
}
