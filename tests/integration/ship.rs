//! The shipping conveniences, run as a person would: shell completions,
//! `config show`, and the `health` probe a container's HEALTHCHECK runs.

use std::process::{Command, Output};

use crate::support::api::Servers;
use crate::support::pki::ec_key_pair;

/// The binary with an empty environment but PATH, so that only what a test
/// sets is seen.
fn bare() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kafkasend"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `config show` line of one setting, split into its columns.
fn setting<'a>(stdout: &'a str, name: &str) -> Vec<&'a str> {
    let line = stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("{name} not shown:\n{stdout}"));
    line.split_whitespace().collect()
}

#[test]
fn completions_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = bare().args(["completions", shell]).output().unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{shell}: {stderr}");
        // The script knows the subcommands and the flags of send.
        // (fish writes flags as `-l endpoint`.)
        for word in ["kafkasend", "portal", "send", "endpoint", "config"] {
            assert!(stdout.contains(word), "{shell} script lacks {word}");
        }
    }
    let out = bare().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("tcsh"));
}

#[test]
fn every_subcommand_help_has_examples() {
    let out = bare().arg("--help").output().unwrap();
    let (stdout, _) = text(&out);
    let subcommands: Vec<String> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    assert!(subcommands.len() >= 5, "{stdout}");
    for sub in subcommands {
        let out = bare().args([sub.as_str(), "--help"]).output().unwrap();
        let (help, stderr) = text(&out);
        assert!(out.status.success(), "{sub}: {stderr}");
        assert!(
            help.contains("Example"),
            "kafkasend {sub} --help has no example:\n{help}"
        );
    }
    let out = bare().args(["config", "show", "--help"]).output().unwrap();
    assert!(text(&out).0.contains("Examples:"));
}

#[test]
fn config_show_says_where_each_value_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kafkasend.toml");
    std::fs::write(
        &file,
        "response_topic = \"replies-from-file\"\n\
         oauth2_client_secret = \"file-secret-7f3a\"\n\
         request_topic = \"overridden-by-env\"\n",
    )
    .unwrap();
    let out = bare()
        .args(["config", "show", "--max-concurrent-jobs", "7", "--config"])
        .arg(&file)
        .env("KAFKA_BOOTSTRAP_SERVERS", "kafka.example:9092")
        .env("KAFKA_REQUEST_TOPIC", "requests-from-env")
        .env("KAFKA_SASL_PASSWORD", "env-secret-91c2")
        .env("KAFKASEND_SIGNING_KEY_FILE", "/keys/signing.pem")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        setting(&stdout, "KAFKA_BOOTSTRAP_SERVERS"),
        ["KAFKA_BOOTSTRAP_SERVERS", "env", "kafka.example:9092"]
    );
    assert_eq!(
        setting(&stdout, "KAFKA_REQUEST_TOPIC"),
        ["KAFKA_REQUEST_TOPIC", "env", "requests-from-env"]
    );
    assert_eq!(
        setting(&stdout, "KAFKA_RESPONSE_TOPIC"),
        ["KAFKA_RESPONSE_TOPIC", "file", "replies-from-file"]
    );
    assert_eq!(
        setting(&stdout, "PORTAL_MAX_CONCURRENT_JOBS"),
        ["PORTAL_MAX_CONCURRENT_JOBS", "flag", "7"]
    );
    assert_eq!(
        setting(&stdout, "KAFKA_TIMEOUT_SECS"),
        ["KAFKA_TIMEOUT_SECS", "default", "30"]
    );
    assert_eq!(
        setting(&stdout, "KAFKASEND_SIGNING_KEY_FILE"),
        ["KAFKASEND_SIGNING_KEY_FILE", "env", "/keys/signing.pem"]
    );
    assert_eq!(
        setting(&stdout, "KAFKA_SASL_PASSWORD"),
        ["KAFKA_SASL_PASSWORD", "env", "(redacted)"]
    );
    assert_eq!(
        setting(&stdout, "OAUTH2_CLIENT_SECRET"),
        ["OAUTH2_CLIENT_SECRET", "file", "(redacted)"]
    );
    assert_eq!(
        setting(&stdout, "KAFKASEND_CONFIG"),
        ["KAFKASEND_CONFIG", "flag", file.to_str().unwrap()]
    );
    for secret in ["env-secret-91c2", "file-secret-7f3a"] {
        assert!(!stdout.contains(secret), "{secret} printed:\n{stdout}");
        assert!(!stderr.contains(secret), "{secret} printed:\n{stderr}");
    }
}

#[test]
fn config_show_never_prints_key_file_contents() {
    let dir = tempfile::tempdir().unwrap();
    let (private_pem, _) = ec_key_pair();
    let key = dir.path().join("assertion.pem");
    std::fs::write(&key, &private_pem).unwrap();
    let out = bare()
        .args(["config", "show", "portal"])
        .env("PORTAL_TARGET_API_URL", "http://127.0.0.1:9")
        .env("OAUTH2_TOKEN_URL", "http://127.0.0.1:9/token")
        .env("OAUTH2_CLIENT_ID", "portal")
        .env("OAUTH2_CLIENT_ASSERTION_KEY_FILE", &key)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        setting(&stdout, "OAUTH2_CLIENT_ASSERTION_KEY_FILE"),
        [
            "OAUTH2_CLIENT_ASSERTION_KEY_FILE",
            "env",
            key.to_str().unwrap()
        ]
    );
    let body_line = private_pem.lines().nth(1).unwrap();
    assert!(!stdout.contains(body_line), "key contents printed");
    assert!(
        !stdout.contains("[send]"),
        "portal side shows send settings"
    );
}

#[test]
fn config_show_with_a_side_checks_values_and_names_the_setting() {
    // (environment, side, the setting the error must name)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: &[Case] = &[
        (
            &[("PORTAL_MAX_CONCURRENT_JOBS", "0")],
            "portal",
            "PORTAL_MAX_CONCURRENT_JOBS",
        ),
        (
            &[("KAFKASEND_TIMEOUT_SECS", "0")],
            "send",
            "KAFKASEND_TIMEOUT_SECS",
        ),
        (
            &[("KAFKA_TIMEOUT_SECS", "soon")],
            "send",
            "--kafka-timeout-secs",
        ),
    ];
    for (env, side, named) in cases {
        let mut cmd = bare();
        cmd.args(["config", "show", side])
            .env("PORTAL_TARGET_API_URL", "http://127.0.0.1:9")
            .env("PORTAL_USE_OAUTH", "false");
        for (k, v) in *env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{env:?}: {stderr}");
        assert!(stderr.contains(named), "{env:?}: {stderr}");
    }
}

#[test]
fn config_file_mistakes_are_one_line_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    // (file text, what the one line must say)
    let cases = [
        (
            "request_topic = \"requests\"\n\nbootstrap_server = \"typo:9092\"\n",
            "line 3: unknown key `bootstrap_server`; did you mean `bootstrap_servers`?",
        ),
        (
            "timeout = \"ten\"\n",
            "line 1: bad value for `timeout`: invalid type: string \"ten\", expected a whole number",
        ),
    ];
    for (contents, want) in cases {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, contents).unwrap();
        let shown = file.display().to_string();
        let runs: [&[&str]; 3] = [
            &["config", "show"],
            &["send", "--endpoint", "/x"],
            &["portal", "--target-api-url", "http://127.0.0.1:9"],
        ];
        for args in runs {
            let out = bare()
                .args(args)
                .arg("--config")
                .arg(&file)
                .output()
                .unwrap();
            let (_, stderr) = text(&out);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
            assert!(
                stderr.contains(&format!("{shown}: {want}")),
                "{args:?}: {stderr}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn health_exits_0_on_2xx_and_1_otherwise() {
    let servers = Servers::start().await;
    let ok_url = format!("{}/healthz", servers.api_url);
    let out = bare().args(["health", "--url", &ok_url]).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("200"), "{stdout}");

    let missing = format!("{}/missing", servers.api_url);
    let out = bare().args(["health", "--url", &missing]).output().unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("404"), "{stderr}");

    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/healthz", dead.local_addr().unwrap());
    drop(dead);
    let out = bare()
        .args(["health", "--url", &dead_url, "--timeout", "3"])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot reach"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}
