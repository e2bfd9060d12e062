//! OAuth2 client credentials: one token shared, refreshed on expiry and when
//! the API refuses it; client secrets and `private_key_jwt` assertions.

use std::sync::atomic::Ordering;
use std::time::Duration;

use jsonwebtoken::Algorithm;

use crate::support::api::{json, Servers};
use crate::support::broker::Topics;
use crate::support::payload::pattern_file;
use crate::support::pki::{ec_key_pair, rsa_key_pair};
use crate::support::run::{send, Portal, SendResult};
use crate::support::WAIT;

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

/// Posts a form to the token endpoint as some other client would; returns
/// the status and body.
async fn post_token_form(token_url: &str, form: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = token_url.strip_prefix("http://").unwrap();
    let (addr, path) = rest.split_at(rest.find('/').unwrap());
    let mut stream = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
        form.len()
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

/// Runs jobs through a portal that signs its client assertions with
/// `private_pem`; checks each fetch used a fresh, valid assertion and that
/// the token endpoint refuses one used again.
async fn private_key_jwt_round_trip(
    name: &str,
    private_pem: &str,
    public_pem: &str,
    alg: Algorithm,
) {
    let servers = Servers::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("assertion-key.pem");
    std::fs::write(&key_file, private_pem).unwrap();
    let topics = Topics::new(name);
    let mut env = servers.jwt_env(&key_file, public_pem, alg);
    env.push(("PORTAL_LOG_LEVEL", "TRACE".into()));
    env.push(("RUST_LOG", "trace".into()));
    let portal = Portal::start(&topics, &env);

    let out = send(&topics, &["--endpoint", "/api/first"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(json(&out.stdout)["path"], "/api/first");
    // The API refuses token-1 from now on: the portal must fetch again,
    // with a new assertion.
    servers.state.valid_tokens.lock().unwrap().remove("token-1");
    let out = send(&topics, &["--endpoint", "/api/second"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    assert_eq!(servers.state.token_fetches.load(Ordering::SeqCst), 2);
    assert!(servers.state.token_refusals.lock().unwrap().is_empty());
    let assertions = servers.state.assertions.lock().unwrap().clone();
    assert_eq!(assertions.len(), 2);
    for a in &assertions {
        let header = jsonwebtoken::decode_header(a).unwrap();
        assert_eq!(header.alg, alg);
    }
    assert_eq!(servers.state.seen_jti.lock().unwrap().len(), 2);
    let last = servers.state.requests().pop().unwrap();
    assert_eq!(last.headers["authorization"], "Bearer token-2");

    // Someone who captured an assertion cannot use it again.
    let replay = format!(
        "grant_type=client_credentials&client_id=test-client&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={}",
        assertions[0]
    );
    let (status, body) = post_token_form(&servers.token_url, &replay).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("used before"), "{body}");

    // Neither the key nor an assertion reaches the log, even at TRACE.
    let log = portal.log();
    let key_body: String = private_pem.lines().nth(1).unwrap().to_string();
    assert!(!log.contains(&key_body), "private key in the log");
    for a in &assertions {
        assert!(!log.contains(a.as_str()), "assertion in the log");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn private_key_jwt_with_an_es256_key() {
    let (private, public) = ec_key_pair();
    private_key_jwt_round_trip("jwt-es256", &private, &public, Algorithm::ES256).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn private_key_jwt_with_an_rs256_key() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = rsa_key_pair(dir.path());
    private_key_jwt_round_trip("jwt-rs256", &private, &public, Algorithm::RS256).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_assertion_signed_with_the_wrong_key_is_a_clear_auth_error() {
    let servers = Servers::start().await;
    let (private, _) = ec_key_pair();
    let (_, registered_public) = ec_key_pair();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("assertion-key.pem");
    std::fs::write(&key_file, &private).unwrap();
    let topics = Topics::new("jwt-wrong-key");
    let portal = Portal::start(
        &topics,
        &servers.jwt_env(&key_file, &registered_public, Algorithm::ES256),
    );
    let out = send(&topics, &["--endpoint", "/api/never"]).await;
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(out.stderr.contains("OAuth2 token"), "{}", out.stderr);
    assert!(out.stderr.contains("HTTP 401"), "{}", out.stderr);
    // The OAuth error code is for the operator, in the portal's log.
    assert!(!out.stderr.contains("invalid_client"), "{}", out.stderr);
    portal.wait_for_log("OAuth error 'invalid_client'").await;
    assert!(servers.state.requests().is_empty(), "the API was called");
    let refusals = servers.state.token_refusals.lock().unwrap().clone();
    assert!(
        refusals.iter().all(|r| r.contains("InvalidSignature")),
        "{refusals:?}"
    );
}

/// An API that answers 403 to a token it no longer accepts: the first job
/// gets token-1 accepted, then the API drops token-1 and a second job runs.
async fn api_refusing_with_403(
    name: &str,
    extra: &[(&'static str, String)],
) -> (Servers, SendResult) {
    let servers = Servers::start().await;
    servers.state.refuse_status.store(403, Ordering::SeqCst);
    let topics = Topics::new(name);
    let mut env = servers.oauth_env();
    env.extend_from_slice(extra);
    let _portal = Portal::start(&topics, &env);
    let out = send(&topics, &["--endpoint", "/api/first"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    servers.state.valid_tokens.lock().unwrap().remove("token-1");
    let out = send(&topics, &["--endpoint", "/api/second"]).await;
    (servers, out)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_403_refreshes_the_token_when_listed_in_the_refresh_statuses() {
    let (servers, out) = api_refusing_with_403(
        "refresh-403",
        &[("PORTAL_TOKEN_REFRESH_STATUSES", "401, 403".into())],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(json(&out.stdout)["path"], "/api/second");
    assert_eq!(servers.state.token_fetches.load(Ordering::SeqCst), 2);
    let second: Vec<_> = servers
        .state
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/second")
        .collect();
    assert_eq!(second.len(), 2, "one call with each token");
    assert_eq!(second[0].status, 403);
    assert_eq!(second[0].headers["authorization"], "Bearer token-1");
    assert_eq!(second[1].status, 200);
    assert_eq!(second[1].headers["authorization"], "Bearer token-2");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_403_reaches_the_client_by_default() {
    let (servers, out) = api_refusing_with_403("refresh-default", &[]).await;
    assert_eq!(out.code, 22, "{}", out.stderr);
    assert!(out.stderr.contains("403"), "{}", out.stderr);
    assert_eq!(servers.state.token_fetches.load(Ordering::SeqCst), 1);
    let second: Vec<_> = servers
        .state
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/second")
        .collect();
    assert_eq!(second.len(), 1, "no retry");
    assert_eq!(second[0].status, 403);
}
