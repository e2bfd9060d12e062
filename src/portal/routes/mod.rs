//! The route table: which target API, with which credentials and limits,
//! a request that passed the policy is sent to.
//!
//! Routes come from the `[[routes]]` tables of the config file, in their
//! order, and the first whose methods and path pattern fit a request takes
//! it; the default route (`PORTAL_TARGET_API_URL` and the settings around
//! it), when set, comes last and takes every request. A request no route
//! takes is refused before its body is assembled. Each route has its own
//! [`Dispatcher`]: its own HTTP client (so its own TLS identity), token
//! cache, header allow-list, deadline and concurrency limit. The URL a
//! route calls is its base URL joined with the request's path (less
//! `strip_prefix`) by [`join_url`], which refuses any result whose scheme,
//! host, port or base path differ from the route's.

use std::sync::Arc;
use std::time::Duration;

use crate::portal::admin::Metrics;
use crate::portal::http_dispatch::client::build_client;
use crate::portal::http_dispatch::token_cache::TokenCache;
use crate::portal::settings::Settings;
use crate::portal::http_dispatch::tls::ApiTls;
use crate::portal::http_dispatch::token_cache::OAuthConfig;
use crate::portal::http_dispatch::Dispatcher;
use crate::portal::policy::EndpointRule;
use crate::protocol::wire::RequestStart;
use crate::protocol::{ErrorCategory, Failure};

#[cfg(test)]
mod tests;

/// The name of the route the single-target settings define.
pub(crate) const DEFAULT_ROUTE: &str = "default";

/// How a route proves who the portal is to its API.
#[derive(Debug, Clone)]
pub(crate) enum RouteAuth {
    /// No credentials beyond the TLS client certificate, if any.
    None,
    /// A bearer token from an OAuth2 token endpoint.
    OAuth2(OAuthConfig),
    /// A static header; the value came from a file and is never shown.
    Header {
        /// Header name, as written.
        name: String,
        /// Header value (a secret).
        value: String,
    },
}

/// One route, resolved and checked.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    /// Unique name, for logs, metrics and messages.
    pub(crate) name: String,
    /// Line of its `[[routes]]` table in the config file; `None` for the default.
    pub(crate) line: Option<usize>,
    /// Methods (empty: all) and path pattern the route takes.
    pub(crate) rule: EndpointRule,
    /// Base URL, without a trailing slash.
    pub(crate) target: String,
    /// Removed from the front of the path (at a segment boundary) before joining.
    pub(crate) strip_prefix: Option<String>,
    /// Lower-case names of the request headers forwarded.
    pub(crate) allowed_headers: Vec<String>,
    /// Deadline of one call.
    pub(crate) timeout: Duration,
    /// Largest request body taken, in bytes.
    pub(crate) max_body_bytes: u64,
    /// Calls to this route at once.
    pub(crate) max_concurrent_jobs: usize,
    /// Credentials.
    pub(crate) auth: RouteAuth,
    /// TLS toward the API and the token endpoint.
    pub(crate) tls: ApiTls,
}

impl Route {
    /// Whether the route takes `method` on `path` (the path without its query).
    pub(crate) fn takes(&self, method: &str, path: &str) -> bool {
        self.rule.allows(method, path)
    }

    /// "name" or "name (line N)", for messages.
    pub(crate) fn label(&self) -> String {
        match self.line {
            Some(n) => format!("route '{}' (line {n})", self.name),
            None => format!("route '{}'", self.name),
        }
    }

    /// One line describing the route, secrets left out, for `config show`
    /// and the start-up log.
    pub(crate) fn summary(&self) -> String {
        let mut s = format!("{} -> {}", self.rule, self.target);
        if let Some(p) = &self.strip_prefix {
            s.push_str(&format!(" (strip {p})"));
        }
        match &self.auth {
            RouteAuth::None => s.push_str(", no token"),
            RouteAuth::OAuth2(o) => s.push_str(&format!(
                ", OAuth2 {} as {} at {}",
                o.credentials.method_name(),
                o.client_id,
                o.token_url
            )),
            RouteAuth::Header { name, .. } => {
                s.push_str(&format!(", header {name}: (redacted)"))
            }
        }
        s.push_str(&format!(
            ", TLS: {}; timeout {} s, body limit {} bytes, {} calls at once",
            self.tls.summary(),
            self.timeout.as_secs(),
            self.max_body_bytes,
            self.max_concurrent_jobs
        ));
        s
    }
}

/// `path` (with its query) less `prefix`, when it starts with it at a
/// segment boundary; "/" when nothing is left of the path.
pub(crate) fn strip(prefix: Option<&str>, path: &str) -> String {
    let Some(prefix) = prefix else {
        return path.to_string();
    };
    match path.strip_prefix(prefix) {
        Some(rest) if rest.is_empty() => "/".to_string(),
        Some(rest) if rest.starts_with('?') => format!("/{rest}"),
        Some(rest) if rest.starts_with('/') => rest.to_string(),
        _ => path.to_string(),
    }
}

/// The first of `routes` that takes the request, by index.
pub(crate) fn select(routes: &[Route], method: &str, path: &str) -> Result<usize, Failure> {
    let only_path = path.split('?').next().unwrap_or(path);
    routes
        .iter()
        .position(|r| r.takes(method, only_path))
        .ok_or_else(|| {
            Failure::rejected(format!(
                "{method} {} is refused: no route matches it",
                only_path.escape_debug()
            ))
        })
}

/// Two routes that could take the same request, where the later can
/// never be chosen: the same pattern and methods that overlap.
pub(crate) fn shadowed(routes: &[Route]) -> Option<(&Route, &Route)> {
    for (i, later) in routes.iter().enumerate() {
        for earlier in &routes[..i] {
            let methods_meet = earlier.rule.methods.is_empty()
                || later.rule.methods.is_empty()
                || later
                    .rule
                    .methods
                    .iter()
                    .any(|m| earlier.rule.methods.contains(m));
            if earlier.rule.pattern == later.rule.pattern && methods_meet {
                return Some((earlier, later));
            }
        }
    }
    None
}

/// Every route with its dispatcher, in the order they are tried.
#[derive(Debug)]
pub(crate) struct Routes {
    /// Routes and their dispatchers, same order; never empty.
    table: Vec<(Route, Dispatcher)>,
    /// The routes alone, for [`select`].
    routes: Vec<Route>,
}

impl Routes {
    /// Routes with the dispatchers made for them.
    pub(crate) fn new(table: Vec<(Route, Dispatcher)>) -> Self {
        let routes = table.iter().map(|(r, _)| r.clone()).collect();
        Self { table, routes }
    }

    /// The route and dispatcher that take this request, or why none does.
    pub(crate) fn pick(&self, start: &RequestStart) -> Result<(&Route, &Dispatcher), Failure> {
        let i = select(&self.routes, &start.method, &start.path)?;
        let (route, dispatcher) = &self.table[i];
        Ok((route, dispatcher))
    }

    /// Refuses at the start record what its route will not take: no route,
    /// or a declared body over the route's limit.
    pub(crate) fn admit(&self, start: &RequestStart) -> Result<(), Failure> {
        let (route, _) = self.pick(start)?;
        match start.body_len {
            Some(len) if len > route.max_body_bytes => Err(too_large(route, len)),
            _ => Ok(()),
        }
    }
}

/// The refusal of a body over a route's limit.
pub(crate) fn too_large(route: &Route, len: u64) -> Failure {
    Failure::new(
        ErrorCategory::Rejected,
        format!(
            "request body of {len} bytes exceeds the limit of {} bytes of {} (max_body_bytes)",
            route.max_body_bytes,
            route.label()
        ),
    )
}

/// How long the start-up check of a listed route's token endpoint waits.
const TOKEN_CHECK: Duration = Duration::from_secs(5);

/// Builds every route's dispatcher (its client, token cache and limits),
/// logs the table, and tries each listed OAuth2 route's token endpoint
/// once. A failed try is a warning, not an error: a token endpoint
/// briefly down must not keep the portal (and every other route) from
/// serving; its jobs fail with an auth error until it answers.
pub(crate) async fn start(cfg: &Settings, metrics: &Metrics) -> anyhow::Result<Routes> {
    let mut table = Vec::with_capacity(cfg.routes.len());
    let mut checks = tokio::task::JoinSet::new();
    for route in &cfg.routes {
        let http = build_client(&route.tls);
        let tokens = match &route.auth {
            RouteAuth::OAuth2(o) => Some(Arc::new(TokenCache::new(o.clone(), http.clone()))),
            _ => None,
        };
        let header = match &route.auth {
            RouteAuth::Header { name, value } => Some((name.as_str(), value.as_str())),
            _ => None,
        };
        let dispatcher = Dispatcher::new(
            http,
            &route.target,
            tokens.clone(),
            route.timeout,
            &route.allowed_headers,
            cfg.idempotency_header.as_deref(),
            cfg.retry,
            route.max_concurrent_jobs,
        )
        .routed(
            &route.name,
            route.strip_prefix.as_deref(),
            header,
            route.max_body_bytes,
        )
        .map_err(|e| anyhow::anyhow!("{}: [routes.header] {e}", route.label()))?;
        if route.name == DEFAULT_ROUTE {
            // The portal-wide token and pushback metrics stay the default
            // route's, as they were before routes.
            if let Some(t) = &tokens {
                metrics.watch_tokens(Arc::clone(t));
            } else {
                log::warn!("OAuth2 is off (PORTAL_USE_OAUTH=false): calling the API without a token");
            }
            metrics.watch_backpressure(Arc::clone(dispatcher.backpressure()));
        } else {
            log::info!("{}: {}", route.label(), route.summary());
            if let Some(t) = tokens {
                let label = route.label();
                checks.spawn(async move {
                    match tokio::time::timeout(TOKEN_CHECK, t.token()).await {
                        Ok(Ok(_)) => log::info!("{label}: its token endpoint gave a token"),
                        Ok(Err(e)) => log::warn!("{label}: no token from its token endpoint at start: {e}; its jobs fail until it gives one"),
                        Err(_) => log::warn!("{label}: its token endpoint did not answer within {} s at start; its jobs fail until it gives a token", TOKEN_CHECK.as_secs()),
                    }
                });
            }
        }
        table.push((route.clone(), dispatcher));
    }
    if table.is_empty() {
        anyhow::bail!("no route: set PORTAL_TARGET_API_URL or list [[routes]] in the config file");
    }
    // Each check ends within TOKEN_CHECK.
    while checks.join_next().await.is_some() {}
    Ok(Routes::new(table))
}
