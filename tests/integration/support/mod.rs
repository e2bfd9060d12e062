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
//! - [`pushback`]: a target API answering 429, 503 and 409 from a script,
//!   and counting calls that arrive at once;
//! - [`overlap`]: a target API whose first call for a key never ends,
//!   noting when each call began and when its connection was dropped;
//! - [`pki`]: throwaway certificates and keys;
//! - [`payload`]: deterministic bodies and their digests.

pub mod answers;
pub mod api;
pub mod broker;
pub mod oauth;
pub mod overlap;
pub mod payload;
pub mod pki;
pub mod pushback;
pub mod run;

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
