//! Shared fixtures of the integration tests, cut along their concerns:
//!
//! - [`broker`]: the Kafka broker (the shared one, or a private one a test
//!   may stop), topic names, and the records tests read or write themselves;
//! - [`run`]: the real `kafkasend` binary, as `send` runs and as portal
//!   processes, and the portal's admin listener;
//! - [`answers`]: a second target API, whose answers exercise how `send`
//!   shows a response (heads, compressed bodies, a body that drips);
//! - [`api`]: the in-process target API on loopback that records what it
//!   receives, started together with the token endpoint as [`api::Servers`];
//! - [`oauth`]: that OAuth2 token endpoint;
//! - [`otlp`]: a real OTLP/HTTP receiver (Python, opentelemetry-proto) that
//!   writes down the spans it receives;
//! - [`pushback`]: a target API answering 429, 503 and 409 from a script,
//!   and counting calls that arrive at once;
//! - [`overlap`]: a target API whose first call for a key never ends,
//!   noting when each call began and when its connection was dropped;
//! - [`stream`]: a target API showing how far each request body has come
//!   while it arrives, and whether it arrived complete;
//! - [`pki`]: throwaway certificates and keys;
//! - [`payload`]: deterministic bodies and their digests.

pub mod answers;
pub mod api;
pub mod broker;
pub mod oauth;
pub mod otlp;
pub mod overlap;
pub mod payload;
pub mod pki;
pub mod pushback;
pub mod run;
pub mod stream;

use std::time::Duration;

/// Every wait in these tests is bounded by this: generous, because a
/// private broker restarting on a loaded 2-core machine can take a minute.
pub const WAIT: Duration = Duration::from_secs(180);

/// Waits (bounded by [`WAIT`]) until `done` holds, failing with `what`.
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A target API on a fresh loopback port, answering with `handler` over
/// the state it shares with the test, for the rest of the test's runtime.
pub struct LoopbackApi<S> {
    /// Base URL.
    pub url: String,
    /// What it saw.
    pub state: std::sync::Arc<S>,
}

impl<S: Default + Send + Sync + 'static> LoopbackApi<S> {
    /// Starts it; each connection is served by hyper's HTTP/1 server.
    pub async fn serve<F, Fut, B>(handler: F) -> Self
    where
        F: Fn(std::sync::Arc<S>, hyper::Request<hyper::body::Incoming>) -> Fut
            + Copy
            + Send
            + 'static,
        Fut: std::future::Future<Output = Result<hyper::Response<B>, std::convert::Infallible>>
            + Send
            + 'static,
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let state = std::sync::Arc::new(S::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = std::sync::Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = std::sync::Arc::clone(&shared);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        handler(std::sync::Arc::clone(&state), req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            url: format!("http://{addr}"),
            state,
        }
    }

    /// Portal environment for this API.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("PORTAL_TARGET_API_URL", self.url.clone()),
            ("PORTAL_USE_OAUTH", "false".into()),
        ]
    }
}
