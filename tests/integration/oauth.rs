//! OAuth2 client credentials: one token shared, refreshed on expiry and on a 401.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn one_token_serves_many_requests_and_is_refreshed_after_expiry() {
    let servers = Servers::start().await;
    servers.state.token_lifetime.store(3, Ordering::SeqCst);
    let topics = Topics::new("token");
    let _portal = Portal::start(&topics, &servers.oauth_env());
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let topics = topics.clone();
            tokio::spawn(async move { send(&topics, &["--endpoint", &format!("/api/t{i}")]).await })
        })
        .collect();
    for t in tasks {
        let out = t.await.unwrap();
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    assert_eq!(servers.state.token_fetches.load(Ordering::SeqCst), 1);
    let reqs = servers.state.requests();
    assert_eq!(reqs.len(), 6);
    assert!(reqs
        .iter()
        .all(|r| r.headers["authorization"] == "Bearer token-1"));

    // Let the 3-second token run out, then call again.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let out = send(&topics, &["--endpoint", "/api/after-expiry"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(servers.state.token_fetches.load(Ordering::SeqCst), 2);
    let last = servers.state.requests().pop().unwrap();
    assert_eq!(last.headers["authorization"], "Bearer token-2");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_401_causes_one_refresh_and_one_retry() {
    let servers = Servers::start().await;
    let topics = Topics::new("unauthorized");
    let _portal = Portal::start(&topics, &servers.oauth_env());
    let dir = tempfile::tempdir().unwrap();
    let (file, digest) = pattern_file(dir.path(), "body.bin", 3, 20_000_000);
    let out = send(
        &topics,
        &[file.to_str().unwrap(), "--endpoint", "/api/first"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(servers.state.token_fetches.load(Ordering::SeqCst), 1);

    // The API stops honouring token-1, as after a key rotation.
    servers.state.valid_tokens.lock().unwrap().remove("token-1");
    let out = send(
        &topics,
        &[file.to_str().unwrap(), "--endpoint", "/api/second"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(json(&out.stdout)["body_sha256"], digest.as_str());
    assert_eq!(servers.state.token_fetches.load(Ordering::SeqCst), 2);
    let second: Vec<_> = servers
        .state
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/second")
        .collect();
    assert_eq!(second.len(), 2, "exactly one retry");
    assert_eq!(second[0].status, 401);
    assert_eq!(second[0].headers["authorization"], "Bearer token-1");
    assert_eq!(second[1].status, 200);
    assert_eq!(second[1].headers["authorization"], "Bearer token-2");
    assert_eq!(
        second[1].body_sha256, digest,
        "the retry resends the whole body"
    );

    // A token the API never accepts: one retry, then the 401 reaches the client.
    servers
        .state
        .reject_all_tokens
        .store(true, Ordering::SeqCst);
    let before = servers.state.token_fetches.load(Ordering::SeqCst);
    let out = send(&topics, &["--endpoint", "/api/third"]).await;
    assert_eq!(out.code, 22, "{}", out.stderr);
    assert_eq!(
        servers.state.token_fetches.load(Ordering::SeqCst),
        before + 1
    );
    let third = servers
        .state
        .requests()
        .iter()
        .filter(|r| r.path == "/api/third")
        .count();
    assert_eq!(third, 2);
}
