//! Secrets never show: not in logs at the most verbose level, not in
//! error replies, not in `--help`.

use std::process::Stdio;

use base64::Engine as _;

use crate::support::api::Servers;
use crate::support::broker::{records_in, Topics};
use crate::support::payload::pattern_file;
use crate::support::pki::{pem_body_lines, sender_key_files};
use crate::support::run::{kafkasend, send_with_env, Portal};
use crate::support::WAIT;

/// Each secret, and what it is, for failure messages.
fn leaks<'a>(text: &str, secrets: &'a [(String, &'static str)]) -> Vec<&'a str> {
    secrets
        .iter()
        .filter(|(s, _)| text.contains(s.as_str()))
        .map(|(_, what)| *what)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_stay_out_of_logs_at_trace_level() {
    let servers = Servers::start().await;
    // Tokens that nothing else could contain, so one shows however it leaks
    // (`access_token=...`, a JSON field, a bare value): every token starts
    // with this prefix.
    let token_prefix = format!("tok{}x", ulid::Ulid::new());
    *servers.state.token_prefix.lock().unwrap() = Some(token_prefix.clone());
    let topics = Topics::new("secrets");

    // Requests are signed, so the sender's private key is in play too.
    let keys = tempfile::tempdir().unwrap();
    let (signing_pem, signing_key, public_key) = sender_key_files(keys.path());

    let mut env = servers.oauth_env();
    env.push(("PORTAL_LOG_LEVEL", "TRACE".into()));
    env.push(("RUST_LOG", "trace".into()));
    env.push(("PORTAL_TRUSTED_KEYS", public_key.to_str().unwrap().into()));
    let portal = Portal::start(&topics, &env);
    let send_env = [
        ("RUST_LOG", "trace".to_string()),
        (
            "KAFKASEND_SIGNING_KEY_FILE",
            signing_key.to_str().unwrap().to_string(),
        ),
    ];

    let dir = tempfile::tempdir().unwrap();
    let (file, _) = pattern_file(dir.path(), "body.bin", 9, 2_000_000);
    let mut cmd = tokio::process::Command::from(kafkasend(&topics));
    cmd.envs(send_env.iter().map(|(k, v)| (k, v)))
        .arg("send")
        .arg(&file)
        .args(["--endpoint", "/api/upload"])
        .args(["-H", "Authorization: Bearer caller-token-7f3a9"])
        .args(["-H", "Cookie: session=caller-cookie-51c2"])
        .args(["-H", "X-Unlisted: 1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("send finished in time")
        .expect("run send");
    let send_log = String::from_utf8_lossy(&out.stderr).into_owned();
    // The portal runs only signed requests, so this shows signing was on.
    assert!(out.status.success(), "{send_log}");

    // A second call whose token the API refuses, so the 401 path logs too.
    servers
        .state
        .reject_all_tokens
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let refused = send_with_env(&topics, &send_env, &["--endpoint", "/api/after"]).await;
    assert_eq!(refused.code, 22, "{}", refused.stderr);

    let tokens: Vec<String> = servers
        .state
        .valid_tokens
        .lock()
        .unwrap()
        .iter()
        .cloned()
        .collect();
    assert!(tokens.len() >= 2, "the portal fetched tokens: {tokens:?}");
    assert!(tokens.iter().all(|t| t.starts_with(&token_prefix)));
    let mut secrets: Vec<(String, &'static str)> = vec![
        ("s3cret/x".into(), "client secret"),
        ("s3cret%2Fx".into(), "client secret, form-encoded"),
        (
            base64::engine::general_purpose::STANDARD.encode("test-client:s3cret%2Fx"),
            "basic auth credentials",
        ),
        ("caller-token-7f3a9".into(), "caller's Authorization header"),
        ("caller-cookie-51c2".into(), "caller's Cookie header"),
        (token_prefix, "access token"),
    ];
    for line in pem_body_lines(&signing_pem) {
        secrets.push((line, "sender's signing key"));
    }

    let portal_log = portal.log();
    // Our crate has nothing below DEBUG to say; the filter was at TRACE.
    assert!(
        portal_log.contains("not forwarding headers X-Unlisted"),
        "the portal logged at its most verbose level:\n{portal_log}"
    );
    assert!(
        send_log.contains("not sending Authorization, Cookie"),
        "{send_log}"
    );
    let mut in_kafka = Vec::new();
    for p in 0..3 {
        for r in records_in(&topics, &topics.request, p).await {
            in_kafka.extend(r.value.unwrap_or_default());
            for (k, v) in r.headers {
                in_kafka.extend(k.into_bytes());
                in_kafka.extend(v);
            }
        }
    }
    assert_eq!(
        leaks(&String::from_utf8_lossy(&in_kafka), &secrets),
        Vec::<&str>::new(),
        "request records"
    );
    assert_eq!(
        leaks(&portal_log, &secrets),
        Vec::<&str>::new(),
        "portal log"
    );
    assert_eq!(leaks(&send_log, &secrets), Vec::<&str>::new(), "send log");
    assert_eq!(
        leaks(&refused.stderr, &secrets),
        Vec::<&str>::new(),
        "error reply"
    );
}

/// Every setting whose value is a secret: the ones declared with
/// `hide_env_values` in `src/config.rs`. Key files are settings by path and
/// their paths are not secret.
const SECRET_SETTINGS: [&str; 2] = ["OAUTH2_CLIENT_SECRET", "KAFKA_SASL_PASSWORD"];

#[test]
fn help_never_shows_secret_values() {
    // Each command whose help lists a secret setting, and the ones it lists.
    let commands: [(&[&str], &[&str]); 4] = [
        (&["portal"], &SECRET_SETTINGS),
        (&["send"], &["KAFKA_SASL_PASSWORD"]),
        (&["wait"], &["KAFKA_SASL_PASSWORD"]),
        (&["config", "show"], &SECRET_SETTINGS),
    ];
    for (sub, listed) in commands {
        for help_flag in ["--help", "-h"] {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kafkasend"));
            cmd.env_clear().args(sub).arg(help_flag);
            for (i, var) in SECRET_SETTINGS.iter().enumerate() {
                cmd.env(var, format!("hunter{i}-value"));
            }
            let out = cmd.output().unwrap();
            assert!(out.status.success());
            let help = String::from_utf8_lossy(&out.stdout);
            for var in listed {
                assert!(
                    help.contains(&format!("[env: {var}]")),
                    "{sub:?} {help_flag} lists {var} without a value:\n{help}"
                );
            }
            assert!(
                !help.contains("hunter"),
                "{sub:?} {help_flag} shows a secret:\n{help}"
            );
        }
    }
}
