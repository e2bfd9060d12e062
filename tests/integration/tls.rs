//! HTTPS to the target API: a private CA added with `PORTAL_CA_FILE`, an
//! untrusted certificate refused clearly, and client certificates (mTLS).

use std::sync::atomic::Ordering;

use crate::support::api::{json, Servers};
use crate::support::broker::Topics;
use crate::support::pki::{openssl_self_signed, pem_body_lines, TestPki};
use crate::support::run::{kafkasend, send, Portal};

fn https_env(
    servers: &Servers,
    extra: &[(&'static str, &std::path::Path)],
) -> Vec<(&'static str, String)> {
    let mut env = servers.plain_env();
    for (k, path) in extra {
        env.push((k, path.to_str().unwrap().to_string()));
    }
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_api_signed_by_the_ca_in_portal_ca_file_is_trusted() {
    let pki = TestPki::new();
    let servers = Servers::start_tls(&pki, false).await;
    let topics = Topics::new("tls-ca");
    let _portal = Portal::start(
        &topics,
        &https_env(&servers, &[("PORTAL_CA_FILE", &pki.ca_file)]),
    );
    let out = send(&topics, &["--endpoint", "/api/over-tls"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(json(&out.stdout)["path"], "/api/over-tls");
    assert_eq!(servers.state.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_certificate_is_a_clear_error_and_the_portal_keeps_serving() {
    let pki = TestPki::new();
    let servers = Servers::start_tls(&pki, false).await;
    let topics = Topics::new("tls-untrusted");
    let portal = Portal::start(&topics, &https_env(&servers, &[]));
    for endpoint in ["/api/first", "/api/second"] {
        let out = send(&topics, &["--endpoint", endpoint]).await;
        assert_eq!(out.code, 5, "{}", out.stderr);
        assert!(
            out.stderr.contains("upstream unreachable"),
            "{}",
            out.stderr
        );
        assert!(out.stderr.contains("certificate"), "{}", out.stderr);
        assert!(out.stderr.contains("UnknownIssuer"), "{}", out.stderr);
        assert!(out.stderr.contains("PORTAL_CA_FILE"), "{}", out.stderr);
    }
    assert!(servers.state.requests().is_empty());
    assert!(!portal.log().contains("panicked"), "{}", portal.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_is_presented_to_the_api_and_the_token_endpoint() {
    let pki = TestPki::new();
    let servers = Servers::start_tls(&pki, true).await;
    let topics = Topics::new("tls-mtls");
    let mut env = servers.oauth_env();
    for (k, path) in [
        ("PORTAL_CA_FILE", &pki.ca_file),
        ("PORTAL_CLIENT_CERT_FILE", &pki.client_cert_file),
        ("PORTAL_CLIENT_KEY_FILE", &pki.client_key_file),
    ] {
        env.push((k, path.to_str().unwrap().to_string()));
    }
    // The most verbose level, where the TLS libraries say the most.
    env.push(("PORTAL_LOG_LEVEL", "TRACE".into()));
    env.push(("RUST_LOG", "trace".into()));
    let portal = Portal::start(&topics, &env);
    let out = send(&topics, &["--endpoint", "/api/mtls"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(json(&out.stdout)["path"], "/api/mtls");
    assert_eq!(servers.state.token_fetches.load(Ordering::SeqCst), 1);
    let reqs = servers.state.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].headers["authorization"], "Bearer token-1");

    let log = portal.log();
    assert!(
        log.contains(" TRACE]"),
        "the portal logged at TRACE:\n{log}"
    );
    let key = std::fs::read_to_string(&pki.client_key_file).unwrap();
    for line in pem_body_lines(&key) {
        assert!(
            !log.contains(&line),
            "the portal log shows the client key ({line}):\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_client_certificate_an_mtls_api_fails_clearly() {
    let pki = TestPki::new();
    let servers = Servers::start_tls(&pki, true).await;
    let topics = Topics::new("tls-no-client-cert");
    let _portal = Portal::start(
        &topics,
        &https_env(&servers, &[("PORTAL_CA_FILE", &pki.ca_file)]),
    );
    let out = send(&topics, &["--endpoint", "/api/mtls"]).await;
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(out.stderr.contains("CertificateRequired"), "{}", out.stderr);
    assert!(
        out.stderr.contains("PORTAL_CLIENT_CERT_FILE"),
        "{}",
        out.stderr
    );
    assert!(servers.state.requests().is_empty());
}

#[test]
fn unusable_tls_files_stop_the_portal_at_start_naming_the_setting() {
    let pki = TestPki::new();
    let garbage = pki.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = pki.dir.path().join("missing.pem");
    let cases: &[(&[(&str, &std::path::Path)], &str)] = &[
        (&[("PORTAL_CA_FILE", &garbage)], "PORTAL_CA_FILE"),
        (&[("PORTAL_CA_FILE", &missing)], "PORTAL_CA_FILE"),
        (
            &[("PORTAL_CLIENT_CERT_FILE", &pki.client_cert_file)],
            "PORTAL_CLIENT_KEY_FILE",
        ),
        (
            &[
                ("PORTAL_CLIENT_CERT_FILE", &pki.client_cert_file),
                ("PORTAL_CLIENT_KEY_FILE", &garbage),
            ],
            "PORTAL_CLIENT_KEY_FILE",
        ),
        (
            // A key that does not belong to the certificate.
            &[
                ("PORTAL_CLIENT_CERT_FILE", &pki.ca_file),
                ("PORTAL_CLIENT_KEY_FILE", &pki.client_key_file),
            ],
            "PORTAL_CLIENT_KEY_FILE",
        ),
    ];
    let topics = Topics::new("tls-bad-files");
    for (env, setting) in cases {
        let mut cmd = kafkasend(&topics);
        cmd.arg("portal")
            .env("PORTAL_TARGET_API_URL", "https://127.0.0.1:9")
            .env("PORTAL_USE_OAUTH", "false");
        for (k, v) in *env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env:?}: {stderr}");
        assert!(stderr.contains(setting), "{env:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{env:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_self_signed_ca_true_certificate_listed_in_portal_ca_file_is_trusted() {
    // The openssl one-liner's certificate, for both the API and the token
    // endpoint, listed as itself in PORTAL_CA_FILE (as curl --cacert takes it).
    let dir = tempfile::tempdir().unwrap();
    let (cert, config) = openssl_self_signed(dir.path(), "DNS:localhost,IP:127.0.0.1");
    let servers = Servers::start_tls_with(config).await;
    let topics = Topics::new("tls-self-signed");
    let mut env = servers.oauth_env();
    env.push(("PORTAL_CA_FILE", cert.to_str().unwrap().into()));
    let _portal = Portal::start(&topics, &env);
    let out = send(&topics, &["--endpoint", "/api/self-signed"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(json(&out.stdout)["path"], "/api/self-signed");
    assert_eq!(servers.state.token_fetches.load(Ordering::SeqCst), 1);
    assert_eq!(servers.state.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_self_signed_certificate_is_still_checked_and_an_unlisted_one_explained() {
    let dir = tempfile::tempdir().unwrap();
    // Listed, but made for another name: the name check still applies.
    let (wrong_name, config) = openssl_self_signed(dir.path(), "DNS:api.example");
    let servers = Servers::start_tls_with(config).await;
    let topics = Topics::new("tls-self-signed-name");
    let portal = Portal::start(
        &topics,
        &https_env(&servers, &[("PORTAL_CA_FILE", &wrong_name)]),
    );
    let out = send(&topics, &["--endpoint", "/api/x"]).await;
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(out.stderr.contains("not valid for name"), "{}", out.stderr);
    assert!(servers.state.requests().is_empty());
    drop(portal);

    // Not listed (PORTAL_CA_FILE holds another CA): the message says what a
    // CA:TRUE server certificate means and what to do, and does not tell the
    // user to add "its CA", which is what they may already have done.
    let (_cert, config) = openssl_self_signed(dir.path(), "DNS:localhost,IP:127.0.0.1");
    let servers = Servers::start_tls_with(config).await;
    let pki = TestPki::new();
    let topics = Topics::new("tls-self-signed-unlisted");
    let _portal = Portal::start(
        &topics,
        &https_env(&servers, &[("PORTAL_CA_FILE", &pki.ca_file)]),
    );
    let out = send(&topics, &["--endpoint", "/api/x"]).await;
    assert_eq!(out.code, 5, "{}", out.stderr);
    for part in [
        "CaUsedAsEndEntity",
        "CA:TRUE",
        "PORTAL_CA_FILE",
        "certificate itself",
    ] {
        assert!(out.stderr.contains(part), "{part}: {}", out.stderr);
    }
    assert!(
        !out.stderr.contains("put its CA certificate"),
        "{}",
        out.stderr
    );
    assert!(servers.state.requests().is_empty());
}
