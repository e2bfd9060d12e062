//! The route table: which target API, with which credentials and limits,
//! a request that passed the policy is sent to.
//!
//! Routes come from the `[[routes]]` tables of the config file, in their
//! order, and the first whose methods and path pattern fit a request takes
//! it; the default route (`PORTAL_TARGET_API_URL` and the settings around
//! it), when set, comes last and takes every request. A request no route
//! takes is refused before its body is assembled. Each route has its own
//! `Dispatcher` (`portal::router`): its own HTTP client (so its own TLS identity), token
//! cache, header allow-list, deadline and concurrency limit. The URL a
//! route calls is its base URL joined with the request's path (less
//! `strip_prefix`) by `http_dispatch::join_url`, which refuses any result whose scheme,
//! host, port or base path differ from the route's.

use std::time::Duration;

use crate::portal::http_dispatch::tls::ApiTls;
use crate::portal::http_dispatch::token_cache::OAuthConfig;
use crate::portal::policy::EndpointRule;
use crate::protocol::{ErrorCategory, Failure};

#[cfg(test)]
pub(crate) mod tests;

pub(crate) use crate::portal::http_dispatch::DEFAULT_ROUTE;

/// How a route proves who the portal is to its API. Its `Debug` leaves
/// the header value out.
#[derive(Clone)]
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

impl std::fmt::Debug for RouteAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::OAuth2(o) => f.debug_tuple("OAuth2").field(o).finish(),
            Self::Header { name, .. } => f
                .debug_struct("Header")
                .field("name", name)
                .finish_non_exhaustive(),
        }
    }
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
            RouteAuth::Header { name, .. } => s.push_str(&format!(", header {name}: (redacted)")),
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

/// A route that can never be chosen, and the earlier one that takes
/// every request it could take (see [`covers`]).
pub(crate) fn shadowed(routes: &[Route]) -> Option<(&Route, &Route)> {
    for (i, later) in routes.iter().enumerate() {
        if let Some(earlier) = routes[..i].iter().find(|e| covers(&e.rule, &later.rule)) {
            return Some((earlier, later));
        }
    }
    None
}

/// Whether `earlier` takes every request `later` could: each of its
/// methods (no methods = every method) and each path its pattern matches.
/// True only where that is certain from the patterns' text: the same
/// pattern, or `earlier` is `BASE/**` and `later` is `BASE` or lies under
/// `BASE/`; other overlaps are first-match-wins and allowed.
pub(crate) fn covers(earlier: &EndpointRule, later: &EndpointRule) -> bool {
    let methods = earlier.methods.is_empty()
        || (!later.methods.is_empty() && later.methods.iter().all(|m| earlier.methods.contains(m)));
    if !methods {
        return false;
    }
    if earlier.pattern == later.pattern {
        return true;
    }
    match earlier.pattern.strip_suffix("/**") {
        Some(base) => {
            later.pattern == base
                || later
                    .pattern
                    .strip_prefix(base)
                    .is_some_and(|rest| rest.starts_with('/'))
        }
        None => false,
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
