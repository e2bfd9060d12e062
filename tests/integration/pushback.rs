//! An API that pushes back: 429 and 503 (with and without `Retry-After`)
//! and 409 to a repeated idempotency key are called again where that is
//! safe, within the job's deadline and the attempts allowed, and otherwise
//! relayed as they are; calls toward the API shrink while it pushes back.

use std::time::Duration;

use crate::support::broker::Topics;
use crate::support::payload::pattern_file;
use crate::support::pushback::PushbackApi;
use crate::support::run::{admin_addr, get, sample, send, spawn_send, Portal, SendResult};
use crate::support::WAIT;

/// The status and body of a `send -i` run.
fn status_and_body(out: &SendResult) -> (u16, String) {
    let text = out.stdout_text();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in the output: {text:?}; stderr: {}", out.stderr));
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    (status, body.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_api_is_called_again_with_the_same_key_until_it_answers() {
    let api = PushbackApi::start().await;
    let topics = Topics::new("pushback-busy");
    let mut env = api.env();
    // The body goes to a spool file, so each call reads it from disk again.
    env.push(("PORTAL_SPOOL_THRESHOLD_BYTES", "1024".into()));
    let _portal = Portal::start(&topics, &env);
    let dir = tempfile::tempdir().unwrap();
    let (file, digest) = pattern_file(dir.path(), "up.bin", 3, 300_000);

    // A POST is safe to repeat while the idempotency header is on.
    let path = "/script/503,503,200";
    let endpoint = format!("{path}?ra=1");
    let out = send(
        &topics,
        &[
            file.to_str().unwrap(),
            "--endpoint",
            &endpoint,
            "-X",
            "POST",
            "-i",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    assert_eq!(status_and_body(&out), (200, "call 3: 200\n".into()));
    let calls = api.state.calls_to(path);
    assert_eq!(
        calls.iter().map(|c| c.status).collect::<Vec<_>>(),
        [503, 503, 200]
    );
    let key = calls[0].key.clone().expect("an idempotency key");
    for c in &calls {
        assert_eq!(c.method, "POST");
        assert_eq!(c.key.as_ref(), Some(&key), "one key for every call");
        assert_eq!(c.body_sha256, digest, "every call carries the whole body");
    }

    // A 409 to the repeated key, as while the first call still runs, is
    // called again (no Retry-After: backoff) until the API replays its answer.
    let path = "/script/409,409,200";
    let out = send(
        &topics,
        &["--endpoint", path, "-X", "POST", "-d", "x", "-i"],
    )
    .await;
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    assert_eq!(status_and_body(&out), (200, "call 3: 200\n".into()));
    let calls = api.state.calls_to(path);
    assert_eq!(calls.len(), 3);
    assert!(calls
        .iter()
        .all(|c| c.key.is_some() && c.key == calls[0].key));

    // A 429 with an unreadable Retry-After still gets the backoff.
    let path = "/script/429,200";
    let out = send(
        &topics,
        &["--endpoint", &format!("{path}?ra=garbage"), "-i"],
    )
    .await;
    assert_eq!(status_and_body(&out), (200, "call 2: 200\n".into()));
    assert_eq!(api.state.calls_to(path).len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_an_idempotency_key_only_idempotent_methods_are_repeated() {
    let api = PushbackApi::start().await;
    let topics = Topics::new("pushback-unkeyed");
    let mut env = api.env();
    env.push(("PORTAL_IDEMPOTENCY_HEADER", String::new()));
    let _portal = Portal::start(&topics, &env);

    // A POST answered 429 might have been acted on: the client gets the 429.
    let path = "/script/429,200";
    let out = send(
        &topics,
        &[
            "--endpoint",
            &format!("{path}?ra=1"),
            "-X",
            "POST",
            "-d",
            "x",
            "-i",
        ],
    )
    .await;
    assert_eq!(out.code, 22, "stderr: {}", out.stderr);
    assert_eq!(status_and_body(&out), (429, "call 1: 429\n".into()));
    let calls = api.state.calls_to(path);
    assert_eq!(calls.len(), 1, "not called again: {calls:?}");
    assert_eq!(calls[0].key, None);

    // A PUT is idempotent by definition, key or not.
    let path = "/script/503,200";
    let out = send(
        &topics,
        &[
            "--endpoint",
            &format!("{path}?ra=1"),
            "-X",
            "PUT",
            "-d",
            "x",
            "-i",
        ],
    )
    .await;
    assert_eq!(status_and_body(&out), (200, "call 2: 200\n".into()));
    assert_eq!(api.state.calls_to(path).len(), 2);

    // Without a key a 409 cannot be the API's "still running": relayed.
    let path = "/script/409,200";
    let out = send(&topics, &["--endpoint", path, "-X", "PUT", "-d", "x", "-i"]).await;
    assert_eq!(status_and_body(&out), (409, "call 1: 409\n".into()));
    assert_eq!(api.state.calls_to(path).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_end_at_the_attempts_allowed_and_before_the_deadline() {
    let api = PushbackApi::start().await;
    let topics = Topics::new("pushback-bounded");
    let mut env = api.env();
    env.push(("PORTAL_REQUEST_TIMEOUT_SECS", "6".into()));
    env.push(("PORTAL_RETRY_MAX_DELAY_SECS", "3".into()));
    env.push(("PORTAL_RETRY_MAX_ATTEMPTS", "3".into()));
    env.push(("PORTAL_RETRY_CONFLICT_SECS", "0".into()));
    let _portal = Portal::start(&topics, &env);

    // A 503 that never ends, asking to come back at once (a date long
    // past): three calls, then the API's own 503 reaches the client.
    let path = "/script/503";
    let out = send(&topics, &["--endpoint", &format!("{path}?ra=past"), "-i"]).await;
    assert_eq!(out.code, 22, "stderr: {}", out.stderr);
    assert_eq!(status_and_body(&out), (503, "call 3: 503\n".into()));
    assert_eq!(api.state.calls_to(path).len(), 3);

    // Asking for more seconds than fit in 64 bits: the wait is cut to 3 s,
    // and after the second call another wait would pass the 6 s deadline,
    // so the second 503 is relayed (not an error of the portal's own).
    let path = "/script/503,503,503,200";
    let out = send(&topics, &["--endpoint", &format!("{path}?ra=huge"), "-i"]).await;
    assert_eq!(out.code, 22, "stderr: {}", out.stderr);
    assert_eq!(status_and_body(&out), (503, "call 2: 503\n".into()));
    assert_eq!(api.state.calls_to(path).len(), 2);

    // With no conflict window a 409 is a genuine conflict, relayed at once.
    let path = "/script/409,200";
    let out = send(
        &topics,
        &["--endpoint", path, "-X", "POST", "-d", "x", "-i"],
    )
    .await;
    assert_eq!(status_and_body(&out), (409, "call 1: 409\n".into()));
    assert_eq!(api.state.calls_to(path).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_toward_the_api_shrink_while_it_pushes_back() {
    let api = PushbackApi::start().await;
    let topics = Topics::new("pushback-crowd");
    let mut env = api.env();
    env.push(("PORTAL_MAX_CONCURRENT_JOBS", "8".into()));
    env.push(("PORTAL_ADMIN_LISTEN", "127.0.0.1:0".into()));
    let portal = Portal::start(&topics, &env);
    let admin = admin_addr(&portal.log());

    let sends: Vec<_> = (0..8)
        .map(|_| spawn_send(&topics, &["--endpoint", "/crowd", "-i"]))
        .collect();
    // Round 0: all eight call at once, and are answered 503.
    api.state.wait_crowd(8).await;
    api.state.end_round(503);
    // Round 1: the limit is halved, so only four call again; the others
    // wait for a slot although their Retry-After has long passed.
    api.state.wait_crowd(4).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(api.state.arrived_in(1), 4, "calls at once after a 503");
    let metrics = get(&admin, "/metrics").await.1;
    assert_eq!(
        sample(&metrics, "kafkasend_api_concurrency_limit"),
        Some(4.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "kafkasend_api_retries_total{reason=\"503\"}"),
        Some(8.0),
        "{metrics}"
    );
    api.state.end_round(200);
    // Round 2: the other four, once slots are free.
    api.state.wait_crowd(4).await;
    api.state.end_round(200);
    for s in sends {
        let out = tokio::time::timeout(WAIT, s).await.unwrap().unwrap();
        assert_eq!(out.code, 0, "stderr: {}", out.stderr);
        let (status, body) = status_and_body(&out);
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(api.state.arrived_in(2), 4);
    let calls = api.state.calls_to("/crowd");
    assert_eq!(calls.len(), 16);
    let mut keys: Vec<_> = calls.iter().map(|c| c.key.clone().unwrap()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 8, "each job called twice with its own key");
    // Four good answers in a row at a limit of four: one slot more.
    let metrics = get(&admin, "/metrics").await.1;
    assert_eq!(
        sample(&metrics, "kafkasend_api_concurrency_limit"),
        Some(5.0),
        "{metrics}"
    );
}
