//! Secrets never show: not in logs at the most verbose level, not in
//! error replies, not in `--help`.

use std::process::Stdio;

use base64::Engine as _;

use crate::common::*;

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
    let topics = Topics::new("secrets");
    let mut env = servers.oauth_env();
    env.push(("PORTAL_LOG_LEVEL", "TRACE".into()));
    env.push(("RUST_LOG", "trace".into()));
    let portal = Portal::start(&topics, &env);

    let dir = tempfile::tempdir().unwrap();
    let (file, _) = pattern_file(dir.path(), "body.bin", 9, 2_000_000);
    let mut cmd = tokio::process::Command::from(kafkasend(&topics));
    cmd.env("RUST_LOG", "trace")
        .arg("send")
        .arg(&file)
        .args(["--endpoint", "/api/upload"])
        .args(["-H", "Authorization: Bearer caller-token-7f3a9"])
        .args(["-H", "Cookie: session=caller-cookie-51c2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("send finished in time")
        .expect("run send");
    let send_log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{send_log}");

    // A second call whose token the API refuses, so the 401 path logs too.
    servers
        .state
        .reject_all_tokens
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let refused = send(&topics, &["--endpoint", "/api/after"]).await;
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
    let mut secrets: Vec<(String, &'static str)> = vec![
        ("s3cret/x".into(), "client secret"),
        ("s3cret%2Fx".into(), "client secret, form-encoded"),
        (
            base64::engine::general_purpose::STANDARD.encode("test-client:s3cret%2Fx"),
            "basic auth credentials",
        ),
        ("caller-token-7f3a9".into(), "caller's Authorization header"),
        ("caller-cookie-51c2".into(), "caller's Cookie header"),
    ];
    for t in tokens {
        secrets.push((format!("Bearer {t}"), "bearer token"));
        secrets.push((format!("\"{t}\""), "access token"));
    }
    let portal_log = portal.log();
    // Our crate has nothing below DEBUG to say; the filter was at TRACE.
    assert!(
        portal_log.contains("dropping header Authorization"),
        "the portal logged at its most verbose level:\n{portal_log}"
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

#[test]
fn help_never_shows_secret_values() {
    let secret_vars = ["OAUTH2_CLIENT_SECRET", "KAFKA_SASL_PASSWORD"];
    for sub in ["portal", "send"] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kafkasend"));
        cmd.env_clear().args([sub, "--help"]);
        for (i, var) in secret_vars.iter().enumerate() {
            cmd.env(var, format!("hunter{i}-value"));
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            !help.contains("hunter"),
            "{sub} --help shows a secret:\n{help}"
        );
    }
}
