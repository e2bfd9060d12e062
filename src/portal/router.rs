//! The route table at work: each route's `Dispatcher`, made at start,
//! and the choice of route for a request (`portal::routes` says what a
//! route is and how one is chosen).

use std::sync::Arc;
use std::time::Duration;

use crate::portal::admin::Metrics;
use crate::portal::http_dispatch::client::build_client;
use crate::portal::http_dispatch::token_cache::TokenCache;
use crate::portal::http_dispatch::Dispatcher;
use crate::portal::routes::{select, too_large, Route, RouteAuth, DEFAULT_ROUTE};
use crate::portal::settings::Settings;
use crate::protocol::wire::RequestStart;
use crate::protocol::Failure;

/// Every route with its dispatcher, in the order they are tried.
#[derive(Debug)]
pub(crate) struct Routes {
    /// Routes and their dispatchers, same order; never empty.
    table: Vec<(Route, Dispatcher)>,
    /// Each route's call slots (its `max_concurrent_jobs`), same order: a
    /// job takes one before one of the portal's `call_permits`.
    slots: Vec<tokio::sync::Semaphore>,
    /// The routes alone, for [`select`].
    routes: Vec<Route>,
    /// `PORTAL_MAX_BODY_BYTES`: a body over it is the assembler's to refuse,
    /// with its own message.
    portal_max_body: u64,
}

impl Routes {
    /// Routes with the dispatchers made for them.
    pub(crate) fn new(table: Vec<(Route, Dispatcher)>, portal_max_body: u64) -> Self {
        let routes = table.iter().map(|(r, _)| r.clone()).collect();
        let slots = table
            .iter()
            .map(|(r, _)| tokio::sync::Semaphore::new(r.max_concurrent_jobs))
            .collect();
        Self {
            table,
            slots,
            routes,
            portal_max_body,
        }
    }

    /// The route and dispatcher that take this request, or why none does.
    pub(crate) fn pick(&self, start: &RequestStart) -> Result<(&Route, &Dispatcher), Failure> {
        let i = select(&self.routes, &start.method, &start.path)?;
        let (route, dispatcher) = &self.table[i];
        Ok((route, dispatcher))
    }

    /// The call slots of the route that takes this request, if any.
    pub(crate) fn slots(&self, start: &RequestStart) -> Option<&tokio::sync::Semaphore> {
        let i = select(&self.routes, &start.method, &start.path).ok()?;
        self.slots.get(i)
    }

    /// Refuses at the start record what its route will not take: no route,
    /// or a declared body over the route's limit.
    pub(crate) fn admit(&self, start: &RequestStart) -> Result<(), Failure> {
        let (route, _) = self.pick(start)?;
        match start.body_len {
            Some(len) if len > route.max_body_bytes && len <= self.portal_max_body => {
                Err(too_large(route, len))
            }
            _ => Ok(()),
        }
    }
}

/// How long the start-up check of a listed route's token endpoint waits.
const TOKEN_CHECK: Duration = Duration::from_secs(5);

/// Builds every route's dispatcher (its client, token cache and limits),
/// logs the table, and tries each listed OAuth2 route's token endpoint
/// once. A failed try is a warning, not an error: a token endpoint
/// briefly down must not keep the portal (and every other route) from
/// serving; its jobs fail with an auth error until it answers.
pub(crate) async fn start(cfg: &Settings, metrics: &Metrics) -> anyhow::Result<Routes> {
    if let Some((wide, default)) = crate::portal::routes::shadowed(&cfg.routes) {
        // Listed routes were checked at start; only the default route,
        // added last, can be left nothing.
        log::warn!(
            "{} takes every request {} could, so {} is never chosen",
            wide.label(),
            default.label(),
            default.label()
        );
    }
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
                log::warn!(
                    "OAuth2 is off (PORTAL_USE_OAUTH=false): calling the API without a token"
                );
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
    Ok(Routes::new(table, cfg.limits.max_body_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::portal::routes::tests::dispatcher;
    use crate::protocol::ErrorCategory;

    fn route(name: &str, spec: &str) -> Route {
        crate::portal::routes::tests::route(name, spec, "http://api.example", None)
    }

    fn start(method: &str, path: &str, body_len: Option<u64>) -> RequestStart {
        RequestStart {
            method: method.into(),
            path: path.into(),
            headers: Vec::new(),
            body_len,
            has_body: body_len.is_some(),
            reply_topic: "r".into(),
            reply_partition: 0,
            digest: crate::protocol::digest::DigestKind::Sha256,
        }
    }

    fn routes(list: Vec<Route>) -> Routes {
        Routes::new(
            list.into_iter()
                .map(|r| {
                    let d = dispatcher(&r);
                    (r, d)
                })
                .collect(),
            1000,
        )
    }

    #[test]
    fn admission_refuses_no_route_and_a_declared_body_over_the_route_limit() {
        let table = routes(vec![route("small", "POST /small/**"), route("rest", "/**")]);
        assert!(table.admit(&start("POST", "/small/x", Some(100))).is_ok());
        let e = table
            .admit(&start("POST", "/small/x", Some(101)))
            .unwrap_err();
        assert_eq!(e.category, ErrorCategory::Rejected);
        assert!(e.message.contains("route 'small'"), "{e}");
        // Over the portal's own limit: the assembler refuses it, naming that.
        assert!(table.admit(&start("POST", "/small/x", Some(1001))).is_ok());
        let (r, d) = table.pick(&start("PUT", "/small/x", None)).unwrap();
        assert_eq!((r.name.as_str(), d.route()), ("rest", "rest"));

        let only = routes(vec![route("small", "POST /small/**")]);
        let e = only.admit(&start("GET", "/small/x", None)).unwrap_err();
        assert!(e.message.contains("GET /small/x"), "{e}");
    }
}
