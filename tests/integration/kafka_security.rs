//! Portal and send over the broker's SASL_SSL and SSL listeners: TLS against
//! the test CA, SASL PLAIN and SCRAM, and the errors a user sees when a
//! password or CA is wrong.

use std::process::Stdio;

use crate::support::api::{json, Servers};
use crate::support::broker::{sasl_facts, Topics};
use crate::support::payload::pattern_file;
use crate::support::pki::openssl;
use crate::support::run::{kafkasend, send, send_with_env, Portal};
use crate::support::WAIT;

/// Topics on the SASL_SSL listener.
fn sasl_topics(name: &str) -> Topics {
    Topics {
        bootstrap: Some(sasl_facts().bootstrap.clone()),
        ..Topics::new(name)
    }
}

/// Environment for SASL_SSL with `mechanism` as `user`.
fn sasl_env(mechanism: &str, user: &str, password: &str) -> Vec<(&'static str, String)> {
    vec![
        ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL".into()),
        ("KAFKA_SSL_CA_FILE", sasl_facts().ca_file.clone()),
        ("KAFKA_SASL_MECHANISM", mechanism.into()),
        ("KAFKA_SASL_USERNAME", user.into()),
        ("KAFKA_SASL_PASSWORD", password.into()),
    ]
}

fn scram_env(mechanism: &str) -> Vec<(&'static str, String)> {
    let f = sasl_facts();
    sasl_env(mechanism, &f.scram_user, &f.scram_password)
}

fn plain_env() -> Vec<(&'static str, String)> {
    let f = sasl_facts();
    sasl_env("PLAIN", &f.plain_user, &f.plain_password)
}

/// Runs a portal that is expected to stop by itself (bounded): its exit
/// code and standard error.
async fn portal_that_stops(topics: &Topics, env: Vec<(&str, String)>) -> (Option<i32>, String) {
    let mut cmd = tokio::process::Command::from(kafkasend(topics));
    cmd.arg("portal")
        .envs(env)
        .stdout(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("the portal kept running")
        .expect("run kafkasend portal");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), stderr)
}

/// Relays one POST with a body through a portal logged in with
/// `portal_mechanism`, once per sender environment in `senders`.
async fn relay_over_sasl_ssl(
    name: &str,
    portal_mechanism: &str,
    senders: &[(&str, Vec<(&str, String)>)],
) {
    let servers = Servers::start().await;
    let topics = sasl_topics(name);
    let mut env = servers.plain_env();
    env.extend(scram_env(portal_mechanism));
    // The most verbose logging there is, to show the passwords stay out.
    env.push(("PORTAL_LOG_LEVEL", "TRACE".into()));
    env.push(("RUST_LOG", "trace".into()));
    let portal = Portal::start(&topics, &env);
    let f = sasl_facts();
    let mut send_logs = String::new();
    let dir = tempfile::tempdir().unwrap();
    for (i, (label, send_env)) in senders.iter().enumerate() {
        let (file, digest) = pattern_file(dir.path(), "body.bin", i as u64 + 7, 300_000);
        let mut send_env = send_env.clone();
        send_env.push(("RUST_LOG", "trace".into()));
        let out = send_with_env(
            &topics,
            &send_env,
            &[file.to_str().unwrap(), "--endpoint", "/api/upload"],
        )
        .await;
        send_logs.push_str(&out.stderr);
        assert_eq!(out.code, 0, "{label}: stderr: {}", out.stderr);
        let reply = json(&out.stdout);
        assert_eq!(reply["body_sha256"], digest.as_str(), "{label}");
        let reqs = servers.state.requests();
        assert_eq!(reqs.len(), i + 1, "{label}");
        assert_eq!(reqs[i].body_sha256, digest, "{label}");
    }
    // No password in either side's log at its most verbose.
    let log = portal.log() + &send_logs;
    assert!(
        log.contains("signed in") || log.contains("DEBUG]"),
        "the logs are verbose:\n{log}"
    );
    assert!(!log.contains(&f.scram_password), "SCRAM password in a log");
    assert!(!log.contains(&f.plain_password), "PLAIN password in a log");
}

#[tokio::test(flavor = "multi_thread")]
async fn scram_sha_512_portal_serves_scram_and_plain_senders_over_sasl_ssl() {
    relay_over_sasl_ssl(
        "sasl512",
        "SCRAM-SHA-512",
        &[
            ("SCRAM-SHA-512", scram_env("SCRAM-SHA-512")),
            ("PLAIN", plain_env()),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scram_sha_256_portal_and_sender_over_sasl_ssl() {
    relay_over_sasl_ssl(
        "sasl256",
        "SCRAM-SHA-256",
        &[("SCRAM-SHA-256", scram_env("SCRAM-SHA-256"))],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn portal_and_sender_over_the_ssl_listener_without_sasl() {
    let f = sasl_facts();
    let ssl_bootstrap = f.ssl_bootstrap.clone().expect(
        "the SASL facts name no KAFKA_SSL_BOOTSTRAP: restart the broker with scripts/kafka restart, which adds the SSL listener",
    );
    let servers = Servers::start().await;
    let topics = Topics {
        bootstrap: Some(ssl_bootstrap.clone()),
        ..Topics::new("ssl")
    };
    let tls = vec![
        ("KAFKA_SECURITY_PROTOCOL", "SSL".to_string()),
        ("KAFKA_SSL_CA_FILE", f.ca_file.clone()),
    ];
    let mut env = servers.plain_env();
    env.extend(tls.clone());
    let _portal = Portal::start(&topics, &env);
    let dir = tempfile::tempdir().unwrap();
    let (file, digest) = pattern_file(dir.path(), "body.bin", 31, 1_500_000);
    let out = send_with_env(
        &topics,
        &tls,
        &[file.to_str().unwrap(), "--endpoint", "/api/upload"],
    )
    .await;
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    assert_eq!(json(&out.stdout)["body_sha256"], digest.as_str());
    let reqs = servers.state.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].body_sha256, digest);

    // The same listener without TLS: one clear line at once, not retries
    // until the timeout, from send and from the portal.
    let expected = format!(
        "the Kafka broker at {} answered with TLS; set KAFKA_SECURITY_PROTOCOL to SSL or SASL_SSL",
        ssl_bootstrap
    );
    let out = send(&topics, &["--endpoint", "/api/items"]).await;
    assert_eq!(out.code, 7, "stderr: {}", out.stderr);
    assert_eq!(out.stderr.trim(), format!("kafkasend send: {expected}"));
    let (code, stderr) = portal_that_stops(&topics, servers.plain_env()).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&expected), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_fails_send_and_portal_with_one_clear_line() {
    let topics = sasl_topics("badpw");
    let f = sasl_facts();
    let wrong = "not-the-password-4711";
    let env = sasl_env("SCRAM-SHA-256", &f.scram_user, wrong);

    let out = send_with_env(&topics, &env, &["--endpoint", "/api/items"]).await;
    assert_eq!(out.code, 7, "stderr: {}", out.stderr);
    let stderr = out.stderr.trim();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "Kafka authentication failed for user '{}' (SCRAM-SHA-256)",
            f.scram_user
        )),
        "{stderr}"
    );
    assert!(!stderr.contains(wrong), "{stderr}");

    let servers = Servers::start().await;
    let mut env = servers.plain_env();
    env.extend(sasl_env("PLAIN", &f.plain_user, wrong));
    let (code, stderr) = portal_that_stops(&topics, env).await;
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "kafkasend portal: Kafka authentication failed for user '{}' (PLAIN)",
            f.plain_user
        )),
        "{stderr}"
    );
    assert!(!stderr.contains(wrong), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ca_that_did_not_sign_the_broker_gives_a_tls_error() {
    let dir = tempfile::tempdir().unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    let key = dir.path().join("other-ca.key");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=not the broker's CA",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        other_ca.to_str().unwrap(),
    ]);

    let topics = sasl_topics("badca");
    let env = [
        ("KAFKA_SECURITY_PROTOCOL", "SSL".to_string()),
        ("KAFKA_SSL_CA_FILE", other_ca.to_str().unwrap().to_string()),
    ];
    let out = send_with_env(&topics, &env, &["--endpoint", "/api/items"]).await;
    assert_eq!(out.code, 7, "stderr: {}", out.stderr);
    let stderr = out.stderr.trim();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "TLS handshake with the Kafka broker at {} failed",
            sasl_facts().bootstrap
        )),
        "{stderr}"
    );
    assert!(stderr.contains("KAFKA_SSL_CA_FILE"), "{stderr}");
}

#[test]
fn help_does_not_show_the_sasl_password() {
    let secret = "help-must-not-show-4712";
    for sub in ["send", "portal"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kafkasend"))
            .args([sub, "--help"])
            .env("KAFKA_SASL_PASSWORD", secret)
            .env("KAFKA_SASL_USERNAME", "visible-user")
            .output()
            .expect("run kafkasend --help");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{help}");
        assert!(help.contains("KAFKA_SASL_PASSWORD"), "{help}");
        assert!(help.contains("visible-user"), "{help}");
        assert!(!help.contains(secret), "{help}");
    }
}
