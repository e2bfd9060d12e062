//! Settings resolution, the file and the documented tables.

use std::path::Path;

use clap::Parser as _;

use super::*;
use crate::cli::file::*;
use crate::cli::portal::*;
use crate::cli::send::*;
use crate::kafka::security::{SaslMechanism, SecurityProtocol};
use crate::logging::LogFormat;
use crate::portal::http_dispatch::token_cache::ClientCredentials;
use std::io::Write;

/// A portal's settings for a local API without OAuth, plus `extra` flags.
fn local_portal(extra: &[&str]) -> anyhow::Result<crate::portal::Settings> {
    let mut argv = vec![
        "--target-api-url",
        "http://127.0.0.1:1",
        "--use-oauth",
        "false",
    ];
    argv.extend_from_slice(extra);
    resolve_portal(&portal_args(&argv))
}

fn portal_args(extra: &[&str]) -> PortalArgs {
    let mut argv = vec!["kafkasend", "portal"];
    argv.extend_from_slice(extra);
    match Cli::try_parse_from(argv).unwrap().command {
        Command::Portal(p) => *p,
        _ => unreachable!(),
    }
}

#[test]
fn flag_beats_file_beats_default() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        file,
        "target_api_url = \"http://file.example\"\nmax_concurrent_jobs = 4\nuse_oauth = false\nrequest_topic = \"from-file\""
    )
    .unwrap();
    let path = file.path().to_str().unwrap().to_string();
    let a = portal_args(&["--config", &path, "--max-concurrent-jobs", "7"]);
    let c = resolve_portal(&a).unwrap();
    assert_eq!(c.max_concurrent_jobs, 7);
    assert_eq!(c.target_api_url, "http://file.example");
    assert_eq!(c.kafka.request_topic, "from-file");
    assert_eq!(c.kafka.response_topic, "api-responses");
    assert!(c.oauth().is_none());
}

#[test]
fn unknown_file_key_is_named() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        file,
        "target_api_url = \"http://x\"\nmax_concurent_jobs = 4"
    )
    .unwrap();
    let path = file.path().to_str().unwrap().to_string();
    let err = resolve_portal(&portal_args(&["--config", &path]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_concurent_jobs"), "{err}");
    assert!(err.contains("line 2"), "{err}");
    assert!(err.contains("did you mean `max_concurrent_jobs`?"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn bad_file_values_and_syntax_name_the_line_and_key() {
    let cases = [
        (
            "kafka_timeout_secs = \"ten\"",
            "line 1: bad value for `kafka_timeout_secs`: invalid type: string \"ten\", expected a whole number, 0 or more",
        ),
        (
            "# comment\n'use_oauth' = \"yes\"",
            "line 2: bad value for `use_oauth`: invalid type: string \"yes\", expected a boolean",
        ),
        (
            "chunk_size = 1\nchunk_size = 2",
            "line 2: duplicate key `chunk_size`",
        ),
        ("request_topic = \"open", "line 1: not valid TOML: "),
        ("xyzzy = 1", "line 1: unknown key `xyzzy`; the keys are the flag names"),
    ];
    for (toml, want) in cases {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "{toml}").unwrap();
        let err = load_file(Some(file.path())).unwrap_err().to_string();
        assert!(err.contains(want), "{toml:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{toml:?}: {err}");
    }
}

#[test]
fn a_config_path_that_is_no_toml_file_says_what_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("binary.toml");
    std::fs::write(&binary, b"timeout = 5\n\xff\xfe").unwrap();
    let cases = [
        (
            Path::new("/dev/zero"),
            "is a character device, not a regular file",
        ),
        (dir.path(), "is a directory, not a file"),
        (&dir.path().join("absent.toml"), "does not exist"),
        (&binary, "is not UTF-8 text (byte 12 is not)"),
    ];
    for (path, problem) in cases {
        let err = load_file(Some(path)).unwrap_err().to_string();
        let want = format!("--config (KAFKASEND_CONFIG): {} {problem}", path.display());
        assert!(err.starts_with(&want), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

/// Every variable a flag reads has its row in docs/configuration.md
/// tables, with that flag and its file key; every row names a variable
/// the code reads.
#[test]
fn readme_configuration_tables_match_the_flags() {
    use clap::CommandFactory as _;
    let readme = include_str!("../../docs/configuration.md");
    let rows: Vec<&str> = readme
        .lines()
        .filter(|l| {
            let first = l.strip_prefix("| `").and_then(|r| r.split('`').next());
            first.is_some_and(|v| {
                !v.is_empty()
                    && v.bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                    && l.starts_with(&format!("| `{v}` | `--"))
            })
        })
        .collect();
    let mut declared = std::collections::BTreeSet::new();
    let mut commands = vec![Cli::command()];
    while let Some(cmd) = commands.pop() {
        for arg in cmd.get_arguments() {
            let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) else {
                continue;
            };
            let env = env.to_string_lossy().into_owned();
            let row = rows
                .iter()
                .find(|r| r.starts_with(&format!("| `{env}` |")))
                .unwrap_or_else(|| panic!("docs/configuration.md has no row for {env}"));
            assert!(
                row.contains(&format!("`--{long}")),
                "docs/configuration.md row of {env} does not name --{long}: {row}"
            );
            // The file key is the arg's id: the long name with `_` for `-`,
            // except `client_log_level`, which `--log-level` of send and
            // wait keeps apart from the portal's `log_level`.
            let key = arg.get_id().as_str();
            assert!(
                env == "KAFKASEND_CONFIG" || row.contains(&format!("| `{key}` |")),
                "docs/configuration.md row of {env} does not name the file key {key}: {row}"
            );
            declared.insert(env);
        }
        commands.extend(cmd.get_subcommands().cloned());
    }
    for row in rows {
        let env = row.split('`').nth(1).unwrap_or_default();
        assert!(
            declared.contains(env),
            "docs/configuration.md documents {env}, which no flag reads: {row}"
        );
    }
}

/// docs/configuration.md's table of the Python tool's variables is the
/// table in `cli::python`: each mapped name with the setting it fills, each
/// unused one with a dash, and nothing else.
#[test]
fn python_variable_table_matches_the_code() {
    use crate::cli::python::{ALIASES, UNUSED};
    let doc = include_str!("../../docs/configuration.md");
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("The Python tool's variables"))
        .expect("docs/configuration.md has a section \"The Python tool's variables\"");
    let rows: Vec<(&str, &str)> = section
        .lines()
        .filter_map(|l| {
            let mut cells = l.strip_prefix("| `")?.split(" | ");
            let python = cells.next()?.strip_suffix('`')?;
            Some((python, cells.next()?))
        })
        .collect();
    for a in ALIASES {
        assert!(
            rows.contains(&(a.python, &format!("`{}`", a.rust))),
            "docs/configuration.md: no row `{}` | `{}`",
            a.python,
            a.rust
        );
    }
    for u in UNUSED {
        assert!(
            rows.contains(&(u.python, "—")),
            "docs/configuration.md: no row `{}` | —",
            u.python
        );
    }
    assert_eq!(rows.len(), ALIASES.len() + UNUSED.len(), "{rows:?}");
}

/// The Python variables `send` and `wait` read: each fills its field, a
/// bad one is named, the portal's are none of their business.
#[test]
fn python_variables_of_the_client() {
    use crate::cli::python::{Role, ALIASES};
    let env = |k: &str| {
        [
            ("CLIENT_LOG_LEVEL", "debug"),
            ("KAFKA_REQUEST_TIMEOUT_MS", "1500"),
            ("KAFKA_MAX_POLL_RECORDS", "10"),
            ("PORTAL_JOB_TIMEOUT_SECONDS", "5"),
        ]
        .iter()
        .find(|(n, _)| *n == k)
        .map(|(_, v)| v.to_string())
    };
    let mut s = SendArgs::default();
    let filled = fill_send(&mut s, &env).unwrap();
    assert_eq!(s.client_log_level.as_deref(), Some("DEBUG"));
    assert_eq!(s.kafka.kafka_timeout_secs, Some(2));
    assert!(filled.notes.is_empty(), "{:?}", filled.notes);
    let mut w = WaitArgs::default();
    fill_wait(&mut w, &env).unwrap();
    assert_eq!(w.client_log_level.as_deref(), Some("DEBUG"));
    let client = ALIASES
        .iter()
        .filter(|a| a.role.concerns(Role::Client))
        .count();
    assert_eq!(filled.applied.len(), client);

    let bad = |k: &str| (k == "CLIENT_LOG_LEVEL").then(|| "LOUD".to_string());
    let err = format!(
        "{:#}",
        fill_send(&mut SendArgs::default(), &bad).unwrap_err()
    );
    assert!(
        err.starts_with(
            "CLIENT_LOG_LEVEL is read as KAFKASEND_LOG_LEVEL: CLIENT_LOG_LEVEL must be"
        ),
        "{err}"
    );
    // The flag wins over the Python name.
    let mut s = SendArgs {
        client_log_level: Some("ERROR".into()),
        ..SendArgs::default()
    };
    let filled = fill_send(&mut s, &env).unwrap();
    assert_eq!(s.client_log_level.as_deref(), Some("ERROR"));
    assert_eq!(filled.notes.len(), 1);
    let err = resolve_send(&SendArgs {
        client_log_level: Some("chatty".into()),
        ..SendArgs::default()
    })
    .unwrap_err();
    assert!(
        err.to_string().starts_with("KAFKASEND_LOG_LEVEL must be"),
        "{err}"
    );
}

#[test]
fn typo_suggestions_stay_close() {
    let known = ["bootstrap_servers", "timeout", "kafka_timeout_secs"];
    assert_eq!(
        closest_key("bootstrap_server", known.into_iter()),
        Some("bootstrap_servers")
    );
    assert_eq!(closest_key("timout", known.into_iter()), Some("timeout"));
    assert_eq!(closest_key("xyzzy", known.into_iter()), None);
    assert_eq!(edit_distance("kitten", "sitting"), 3);
}

#[test]
fn oauth_without_settings_names_the_variables() {
    let a = portal_args(&[
        "--target-api-url",
        "http://127.0.0.1:1",
        "--use-oauth",
        "true",
    ]);
    let a = PortalArgs {
        oauth2_token_url: None,
        oauth2_client_id: None,
        oauth2_client_secret: None,
        ..a
    };
    let err = resolve_portal(&a).unwrap_err().to_string();
    assert!(err.contains("OAUTH2_TOKEN_URL"), "{err}");
    assert!(err.contains("PORTAL_USE_OAUTH=false"), "{err}");
}

#[test]
fn urls_with_credentials_are_refused_without_showing_them() {
    let base = portal_args(&[
        "--target-api-url",
        "http://127.0.0.1:1",
        "--oauth2-token-url",
        "https://idp.example/token",
        "--oauth2-client-id",
        "kafkasend",
        "--oauth2-client-secret",
        "s",
    ]);
    assert!(resolve_portal(&base).is_ok());
    let cases = [
        PortalArgs {
            target_api_url: Some("http://api:pw-4711@127.0.0.1:1".into()),
            ..base.clone()
        },
        PortalArgs {
            oauth2_token_url: Some("https://client:pw-4711@idp.example/token".into()),
            ..base.clone()
        },
    ];
    // Whatever else is wrong with them, too.
    for bad in [
        "ftp://u:pw-4711@h/",
        "http://u:pw-4711@h/?q=1",
        "http://u:pw-4711@h/ x",
    ] {
        for a in [
            PortalArgs {
                target_api_url: Some(bad.into()),
                ..base.clone()
            },
            PortalArgs {
                oauth2_token_url: Some(bad.into()),
                ..base.clone()
            },
        ] {
            let err = resolve_portal(&a).unwrap_err().to_string();
            assert!(!err.contains("pw-4711"), "{err}");
        }
    }
    assert_eq!(
        crate::cli::routes::without_userinfo("https://u:p@h:1/a@b?x=@"),
        "https://***@h:1/a@b?x=@"
    );
    assert_eq!(
        crate::cli::routes::without_userinfo("http://h/a@b"),
        "http://h/a@b"
    );
    assert_eq!(
        crate::cli::routes::without_userinfo("alice@corp.example"),
        "alice@corp.example"
    );
    for (a, setting) in cases
        .iter()
        .zip(["PORTAL_TARGET_API_URL", "OAUTH2_TOKEN_URL"])
    {
        let err = resolve_portal(a).unwrap_err().to_string();
        assert!(err.starts_with(setting), "{err}");
        assert!(err.contains("must not hold credentials"), "{err}");
        assert!(!err.contains("pw-4711"), "{err}");
    }
}

#[test]
fn refresh_statuses_are_4xx_codes() {
    let codes = parse_refresh_statuses(" 401, 403,401").unwrap();
    assert_eq!(
        codes,
        [401, 403].map(|c| hyper::StatusCode::from_u16(c).unwrap())
    );
    for bad in ["", "200", "401,,403", "abc", "4011", "500"] {
        let err = parse_refresh_statuses(bad).unwrap_err().to_string();
        assert!(
            err.starts_with("PORTAL_TOKEN_REFRESH_STATUSES"),
            "{bad}: {err}"
        );
    }
    let a = portal_args(&[
        "--target-api-url",
        "http://127.0.0.1:1",
        "--use-oauth",
        "false",
        "--token-refresh-statuses",
        "401,302",
    ]);
    let err = resolve_portal(&a).unwrap_err().to_string();
    assert!(err.contains("'302'"), "{err}");
}

fn jwt_args(extra: &[&str]) -> PortalArgs {
    let mut argv = vec![
        "--target-api-url",
        "http://127.0.0.1:1",
        "--use-oauth",
        "true",
        "--oauth2-token-url",
        "https://idp.example/token",
        "--oauth2-client-id",
        "portal",
    ];
    argv.extend_from_slice(extra);
    portal_args(&argv)
}

#[test]
fn private_key_jwt_settings() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(key.serialize_pem().as_bytes()).unwrap();
    let path = file.path().to_str().unwrap().to_string();
    let mut garbage = tempfile::NamedTempFile::new().unwrap();
    garbage.write_all(b"not a key\n").unwrap();
    let garbage = garbage.path().to_str().unwrap().to_string();

    // A key file alone picks private_key_jwt; no secret is needed.
    let c = resolve_portal(&jwt_args(&[
        "--oauth2-client-assertion-key-file",
        &path,
        "--oauth2-audience",
        "https://api.example",
    ]))
    .unwrap();
    let oauth = c.oauth().unwrap().clone();
    let ClientCredentials::PrivateKeyJwt(signer) = &oauth.credentials else {
        panic!("{:?}", oauth.credentials);
    };
    assert_eq!(signer.algorithm(), jsonwebtoken::Algorithm::ES256);
    assert_eq!(signer.audience(), "https://idp.example/token");
    assert_eq!(oauth.audience.as_deref(), Some("https://api.example"));
    assert_eq!(oauth.refresh_statuses, [hyper::StatusCode::UNAUTHORIZED]);

    let c = resolve_portal(&jwt_args(&[
        "--oauth2-client-assertion-key-file",
        &path,
        "--oauth2-client-assertion-audience",
        "https://idp.example/",
    ]))
    .unwrap();
    let ClientCredentials::PrivateKeyJwt(signer) = &c.oauth().unwrap().credentials else {
        panic!("not private_key_jwt");
    };
    assert_eq!(signer.audience(), "https://idp.example/");

    let cases: &[(&[&str], &str)] = &[
        (
            &["--oauth2-auth-method", "private_key_jwt"],
            "OAUTH2_CLIENT_ASSERTION_KEY_FILE is not set",
        ),
        (
            &[
                "--oauth2-auth-method",
                "client_secret_post",
                "--oauth2-client-secret",
                "x",
                "--oauth2-client-assertion-key-file",
                &path,
            ],
            "OAUTH2_CLIENT_ASSERTION_KEY_FILE is set but OAUTH2_AUTH_METHOD",
        ),
        (
            &["--oauth2-client-assertion-key-file", "/nonexistent/key.pem"],
            "OAUTH2_CLIENT_ASSERTION_KEY_FILE: /nonexistent/key.pem does not exist",
        ),
        (
            &["--oauth2-client-assertion-key-file", &garbage],
            "OAUTH2_CLIENT_ASSERTION_KEY_FILE: not an EC private key",
        ),
        (
            &[
                "--oauth2-client-assertion-key-file",
                &path,
                "--oauth2-client-assertion-alg",
                "HS256",
            ],
            "OAUTH2_CLIENT_ASSERTION_ALG",
        ),
        (
            &[
                "--oauth2-client-assertion-key-file",
                &path,
                "--oauth2-client-assertion-alg",
                "RS256",
            ],
            "OAUTH2_CLIENT_ASSERTION_KEY_FILE: not a private key for RS256",
        ),
        (&["--oauth2-auth-method", "mtls"], "OAUTH2_AUTH_METHOD"),
    ];
    for (extra, expected) in cases {
        let err = resolve_portal(&jwt_args(extra)).unwrap_err().to_string();
        assert!(err.contains(expected), "{extra:?}: {err}");
    }
}

#[test]
fn debug_output_hides_secrets() {
    let c = resolve_portal(&jwt_args(&["--oauth2-client-secret", "very-s3cret-value"])).unwrap();
    let text = format!("{c:?}");
    assert!(text.contains("SecretBasic"), "{text}");
    assert!(!text.contains("very-s3cret-value"), "{text}");
}

#[test]
fn tls_files_are_checked_at_start() {
    let mut garbage = tempfile::NamedTempFile::new().unwrap();
    garbage.write_all(b"not PEM\n").unwrap();
    let garbage = garbage.path().to_str().unwrap().to_string();
    let base = [
        "--target-api-url",
        "https://127.0.0.1:1",
        "--use-oauth",
        "false",
    ];
    let cases: &[(&[&str], &str)] = &[
        (&["--ca-file", "/nonexistent/ca.pem"], "PORTAL_CA_FILE"),
        (&["--ca-file", &garbage], "PORTAL_CA_FILE"),
        (&["--client-cert-file", &garbage], "PORTAL_CLIENT_KEY_FILE"),
        (&["--client-key-file", &garbage], "PORTAL_CLIENT_CERT_FILE"),
    ];
    for (extra, name) in cases {
        let mut argv = base.to_vec();
        argv.extend_from_slice(extra);
        let err = resolve_portal(&portal_args(&argv)).unwrap_err().to_string();
        assert!(err.starts_with(name), "{extra:?}: {err}");
    }
}

#[test]
fn bad_values_name_the_setting() {
    let base = [
        "--target-api-url",
        "http://127.0.0.1:1",
        "--use-oauth",
        "false",
    ];
    let cases: &[(&[&str], &str)] = &[
        (
            &["--max-concurrent-jobs", "0"],
            "PORTAL_MAX_CONCURRENT_JOBS",
        ),
        (
            &["--bootstrap-servers", "nohost"],
            "KAFKA_BOOTSTRAP_SERVERS",
        ),
        (&["--request-topic", "bad topic"], "KAFKA_REQUEST_TOPIC"),
        (&["--log-level", "LOUD"], "PORTAL_LOG_LEVEL"),
        (&["--start-from", "middle"], "PORTAL_START_FROM"),
        (&["--chunk-size", "10"], "KAFKASEND_CHUNK_SIZE"),
        (
            &["--max-assembly-memory-bytes", "1048575"],
            "PORTAL_MAX_ASSEMBLY_MEMORY_BYTES must be at least 1048576",
        ),
        (
            &["--max-header-count", "10001"],
            "PORTAL_MAX_HEADER_COUNT must be between 1 and 10000",
        ),
        (
            &["--max-header-bytes", "131073"],
            "PORTAL_MAX_HEADER_BYTES must be between 256 and 131072",
        ),
    ];
    for (extra, name) in cases {
        let mut argv = base.to_vec();
        argv.extend_from_slice(extra);
        let err = resolve_portal(&portal_args(&argv)).unwrap_err().to_string();
        assert!(err.contains(name), "{extra:?}: {err}");
    }
    for bad in [
        "ftp://x",
        "http://u:p@x/",
        "http://x/v1#frag",
        "http://x/?q=1",
    ] {
        let mut argv = vec!["--use-oauth", "false", "--target-api-url", bad];
        argv.extend_from_slice(&["--allowed-endpoints", "/**"]);
        let err = resolve_portal(&portal_args(&argv)).unwrap_err().to_string();
        assert!(err.contains("PORTAL_TARGET_API_URL"), "{bad}: {err}");
    }
    let err = resolve_portal(&portal_args(&[
        "--use-oauth",
        "false",
        "--target-api-url",
        "http://x",
        "--allowed-endpoints",
        "GET",
    ]))
    .unwrap_err()
    .to_string();
    assert!(err.contains("PORTAL_ALLOWED_ENDPOINTS"), "{err}");
}

#[test]
fn a_memory_budget_that_cannot_hold_one_job_is_a_start_error() {
    let resolve = local_portal;
    // 1 MiB cannot hold the default 100000 chunks at 24 bytes each.
    let err = resolve(&["--max-assembly-memory-bytes", "1048576"])
        .unwrap_err()
        .to_string();
    for wanted in [
        "PORTAL_MAX_ASSEMBLY_MEMORY_BYTES (1048576) is too small for PORTAL_MAX_CHUNKS (100000)",
        "PORTAL_MAX_HEADER_COUNT 64",
        "PORTAL_MAX_HEADER_BYTES 16384",
    ] {
        assert!(err.contains(wanted), "{err}");
    }
    // Both remedies the message offers work, and not a byte or chunk less.
    let number_after = |text: &str| -> String {
        let at = err.find(text).unwrap_or_else(|| panic!("{text} in {err}")) + text.len();
        err[at..].chars().take_while(char::is_ascii_digit).collect()
    };
    let budget = number_after("to at least ");
    let chunks = number_after("PORTAL_MAX_CHUNKS to at most ");
    let cfg = resolve(&["--max-assembly-memory-bytes", &budget]).unwrap();
    assert_eq!(cfg.limits.memory_reserve, cfg.limits.max_memory_bytes);
    let less = (budget.parse::<u64>().unwrap() - 1).to_string();
    assert!(resolve(&["--max-assembly-memory-bytes", &less]).is_err());
    let small = ["--max-assembly-memory-bytes", "1048576", "--max-chunks"];
    let cfg = resolve(&[&small[..], &[chunks.as_str()]].concat()).unwrap();
    assert!(cfg.limits.memory_reserve <= 1048576);
    let more = (chunks.parse::<u64>().unwrap() + 1).to_string();
    assert!(resolve(&[&small[..], &[more.as_str()]].concat()).is_err());

    // The reserve follows the header settings, and even the largest
    // leave room for chunks in the smallest budget.
    let largest = [
        "--max-assembly-memory-bytes",
        "1048576",
        "--max-header-count",
        "10000",
        "--max-header-bytes",
        "131072",
        "--max-chunks",
        "1000",
    ];
    let cfg = resolve(&largest).unwrap();
    assert_eq!(
        cfg.limits.memory_reserve,
        crate::portal::assembler::bookkeeping_bound(1000, 10_000, 131_072)
    );
    // The default budget takes the largest chunk count.
    let cfg = resolve(&["--max-chunks", "10000000"]).unwrap();
    assert!(cfg.limits.memory_reserve > 240_000_000);
    assert!(cfg.limits.memory_reserve < cfg.limits.max_memory_bytes);
}

#[test]
fn signature_settings_name_their_variables() {
    let base = [
        "--target-api-url",
        "http://127.0.0.1:1",
        "--use-oauth",
        "false",
    ];
    let cases: &[(&[&str], &str)] = &[
        (
            &["--trusted-keys", "/nonexistent/k.pem"],
            "PORTAL_TRUSTED_KEYS",
        ),
        (
            &["--signature-max-ttl-secs", "0"],
            "PORTAL_SIGNATURE_MAX_TTL_SECS",
        ),
    ];
    for (extra, name) in cases {
        let mut argv = base.to_vec();
        argv.extend_from_slice(extra);
        let err = resolve_portal(&portal_args(&argv)).unwrap_err().to_string();
        assert!(err.contains(name), "{extra:?}: {err}");
    }
    let unset = resolve_portal(&portal_args(&base)).unwrap();
    assert!(unset.trusted_keys.is_none());
    let send = |extra: &[&str]| {
        let mut argv = vec!["kafkasend", "send", "--endpoint", "/x"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Send(a) => resolve_send(&a),
            _ => unreachable!(),
        }
    };
    let err = send(&["--signing-key", "/nonexistent/k.pem"]).unwrap_err();
    assert!(
        err.to_string().contains("KAFKASEND_SIGNING_KEY_FILE"),
        "{err}"
    );
    let err = send(&["--signature-ttl-secs", "0"]).unwrap_err();
    assert!(
        err.to_string().contains("KAFKASEND_SIGNATURE_TTL_SECS"),
        "{err}"
    );
    assert!(send(&[]).unwrap().signer.is_none());
}

#[test]
fn kafka_security_combinations_are_checked() {
    let base = [
        "--target-api-url",
        "http://127.0.0.1:1",
        "--use-oauth",
        "false",
    ];
    let resolve = |extra: &[&str]| {
        let mut argv = base.to_vec();
        argv.extend_from_slice(extra);
        resolve_portal(&portal_args(&argv)).map(|c| c.kafka.security)
    };
    let sasl = [
        "--security-protocol",
        "SASL_SSL",
        "--sasl-mechanism",
        "SCRAM-SHA-512",
        "--sasl-username",
        "alice",
        "--sasl-password",
        "pw-secret-1",
    ];
    let ok = resolve(&sasl).unwrap();
    assert_eq!(ok.protocol, SecurityProtocol::SaslSsl);
    assert!(ok.tls.is_some());
    assert_eq!(
        ok.sasl.as_ref().unwrap().mechanism,
        SaslMechanism::ScramSha512
    );
    let plain = resolve(&[]).unwrap();
    assert!(plain.tls.is_none() && plain.sasl.is_none());

    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--security-protocol", "TLS"],
            &["KAFKA_SECURITY_PROTOCOL", "'TLS'"],
        ),
        (&sasl[..6], &["KAFKA_SASL_PASSWORD"]),
        (
            &[
                "--security-protocol",
                "SASL_PLAINTEXT",
                "--sasl-username",
                "a",
                "--sasl-password",
                "b",
            ],
            &["KAFKA_SASL_MECHANISM"],
        ),
        (
            &[
                "--security-protocol",
                "SASL_SSL",
                "--sasl-mechanism",
                "GSSAPI",
                "--sasl-username",
                "a",
                "--sasl-password",
                "b",
            ],
            &["KAFKA_SASL_MECHANISM", "GSSAPI"],
        ),
        (
            &[
                "--sasl-mechanism",
                "PLAIN",
                "--sasl-password",
                "pw-secret-2",
            ],
            &[
                "KAFKA_SASL_MECHANISM, KAFKA_SASL_PASSWORD are set",
                "PLAINTEXT",
            ],
        ),
        (
            &["--ssl-ca-file", "/etc/hostname"],
            &["KAFKA_SSL_CA_FILE", "PLAINTEXT"],
        ),
        (
            &[
                "--security-protocol",
                "SSL",
                "--ssl-ca-file",
                "/nonexistent/ca.pem",
            ],
            &["KAFKA_SSL_CA_FILE", "/nonexistent/ca.pem"],
        ),
    ];
    for (extra, needles) in cases {
        let err = format!("{:#}", resolve(extra).unwrap_err());
        for n in *needles {
            assert!(err.contains(n), "{extra:?}: {err}");
        }
        assert!(!err.contains("pw-secret"), "{extra:?}: {err}");
    }
}

#[test]
fn file_config_debug_hides_the_password() {
    let f = FileConfig {
        sasl_username: Some("alice".into()),
        sasl_password: Some("pw-secret-3".into()),
        ..Default::default()
    };
    let shown = format!("{f:?}");
    assert!(
        shown.contains("alice") && !shown.contains("pw-secret"),
        "{shown}"
    );
}

#[test]
fn bad_target_url_is_named() {
    let mut argv = vec!["--use-oauth", "false"];
    argv.extend_from_slice(&["--target-api-url", "ftp://x"]);
    let err = resolve_portal(&portal_args(&argv)).unwrap_err().to_string();
    assert!(err.contains("PORTAL_TARGET_API_URL"), "{err}");
}

#[test]
fn admin_listen_and_log_format() {
    let base = [
        "--target-api-url",
        "http://127.0.0.1:1",
        "--use-oauth",
        "false",
    ];
    let c = resolve_portal(&portal_args(&base)).unwrap();
    assert_eq!(c.admin_listen, None);
    assert_eq!(c.log_format, LogFormat::Text);
    let mut argv = base.to_vec();
    argv.extend(["--admin-listen", "0.0.0.0:9464", "--log-format", "JSON"]);
    let c = resolve_portal(&portal_args(&argv)).unwrap();
    assert_eq!(c.admin_listen, Some("0.0.0.0:9464".parse().unwrap()));
    assert_eq!(c.log_format, LogFormat::Json);
    for (flag, bad, name) in [
        ("--admin-listen", "9464", "PORTAL_ADMIN_LISTEN"),
        ("--admin-listen", "localhost:9464", "PORTAL_ADMIN_LISTEN"),
        ("--admin-listen", "0.0.0.0:99999", "PORTAL_ADMIN_LISTEN"),
        ("--log-format", "yaml", "PORTAL_LOG_FORMAT"),
    ] {
        let mut argv = base.to_vec();
        argv.extend([flag, bad]);
        let err = resolve_portal(&portal_args(&argv)).unwrap_err().to_string();
        assert!(err.contains(name) && err.contains(bad), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn every_send_and_portal_setting_is_shown() {
    let shown = crate::cli::show::ids(&<crate::cli::show::ShowArgs as clap::Args>::augment_args(
        clap::Command::new("show"),
    ));
    let cli = <Cli as clap::CommandFactory>::command();
    for sub in ["portal", "send"] {
        let sub = cli.find_subcommand(sub).unwrap();
        for a in sub.get_arguments().filter(|a| a.get_env().is_some()) {
            assert!(shown.contains(a.get_id()), "{} not shown", a.get_id());
        }
    }
}

#[test]
fn each_flag_names_one_default_at_most() {
    let mut commands = vec![crate::cli::args::command()];
    while let Some(cmd) = commands.pop() {
        for arg in cmd.get_arguments() {
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            let defaults = help.matches("[default: ").count()
                + usize::from(!arg.get_default_values().is_empty());
            assert!(defaults <= 1, "{} {}: {help}", cmd.get_name(), arg.get_id());
        }
        commands.extend(cmd.get_subcommands().cloned());
    }
}

#[test]
fn every_default_names_a_flag_and_reaches_its_help() {
    let cli = crate::cli::args::command();
    for (id, value) in crate::cli::defaults::shown() {
        let helps: Vec<String> = ["portal", "send", "wait"]
            .iter()
            .filter_map(|sub| cli.find_subcommand(sub))
            .flat_map(|sub| sub.get_arguments())
            .filter(|a| a.get_id() == id)
            .map(|a| a.get_help().map(|h| h.to_string()).unwrap_or_default())
            .collect();
        assert!(!helps.is_empty(), "no flag has the id {id}");
        for help in helps {
            assert!(
                help.ends_with(&format!("[default: {value}]")),
                "{id}: {help}"
            );
        }
    }
}

/// The Python client's command lines parse as it took them: `-h` is a
/// header, `-m` any case, the last of `--wait`/`--no-wait` wins, and
/// `--help` is still help.
#[test]
fn python_command_lines_parse() {
    let parse = |argv: &[&str]| Cli::try_parse_from(argv).map(|c| c.command);
    let Ok(Command::SendFile(a)) = parse(&[
        "kafkasend",
        "send-file",
        "/testdata/hello.txt",
        "--endpoint",
        "api/upload",
        "-m",
        "patch",
        "-h",
        "X-Request-ID: 1",
        "-h",
        "x-request-id: 2",
        "-t",
        "text/plain",
        "--no-wait",
        "--wait",
    ]) else {
        panic!("send-file did not parse");
    };
    let (s, dropped) = a.to_send();
    assert!(dropped.is_empty());
    assert_eq!(s.headers, ["X-Request-ID: 2"]);
    assert_eq!(s.method.as_deref(), Some("PATCH"));
    assert!(!s.no_wait && s.multipart);
    assert_eq!(s.content_type.as_deref(), Some("text/plain"));
    let Ok(Command::SendRequest(a)) = parse(&["kafkasend", "send-request", "-e", "/x"]) else {
        panic!("send-request did not parse");
    };
    let (s, _) = a.to_send();
    assert_eq!(s.method.as_deref(), Some("GET"));
    assert!(s.file.is_none() && !s.multipart);
    let wrong = parse(&["kafkasend", "send-file", "f", "-e", "/x", "-m", "GET"]);
    assert!(wrong.is_err());
    let help = parse(&["kafkasend", "send-request", "--help"]).unwrap_err();
    assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
}

#[test]
fn response_head_flags_are_refused_where_they_cannot_work() {
    let resolve = |sub: &str, extra: &[&str]| {
        let mut argv = vec!["kafkasend", sub];
        if sub == "send" {
            argv.extend(["--endpoint", "/x"]);
        } else {
            argv.push("01JABCDEFGHJKMNPQRSTVWXYZ0");
        }
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Send(a) => resolve_send(&a).map(|_| ()),
            Command::Wait(a) => resolve_wait(&a).map(|_| ()),
            _ => unreachable!(),
        }
    };
    let refused = [
        (&["--no-wait", "-i"][..], "kafkasend wait JOB_ID -i"),
        (
            &["--no-wait", "-D", "h.txt"],
            "kafkasend wait JOB_ID -D h.txt",
        ),
        (&["-o", "out.txt", "-D", "out.txt"], "use -i"),
        (&["-o", "out.txt", "-D", "./out.txt"], "use -i"),
        (&["-o", "src/../out.txt", "-D", "out.txt"], "use -i"),
        (&["-o", "out.txt", "--json", "-D", "-"], "give -D a file"),
    ];
    for (extra, hint) in refused {
        let err = resolve("send", extra).unwrap_err().to_string();
        assert!(err.contains(hint), "{extra:?}: {err}");
    }
    for (extra, hint) in &refused[2..] {
        let err = resolve("wait", extra).unwrap_err().to_string();
        assert!(err.contains(hint), "wait {extra:?}: {err}");
    }
    for ok in [
        &["-i", "-D", "-", "-v", "--compressed"][..],
        &["-o", "out.txt", "-i", "-D", "h.txt", "--json"],
        &["-o", "-", "-D", "-"],
    ] {
        resolve("send", ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        resolve("wait", ok).unwrap_or_else(|e| panic!("wait {ok:?}: {e}"));
    }
    resolve("send", &["--no-wait", "--compressed", "-v"]).unwrap();
}

/// curl's habits of repeating a flag: a repeated single-value flag is the
/// last one given (`-A a -A b`, `-vv`, `-i -i`), the list flags still
/// collect each one, and `-s` is `-q`.
#[test]
fn repeated_flags_behave_as_in_curl() {
    let argv = [
        "kafkasend",
        "send",
        "-e",
        "/x",
        "-vv",
        "-i",
        "-i",
        "-s",
        "-A",
        "a",
        "-A",
        "b",
        "-H",
        "X: 1",
        "-H",
        "Y: 2",
        "-F",
        "a=1",
        "-F",
        "b=2",
    ];
    let Command::Send(a) = Cli::try_parse_from(argv).unwrap().command else {
        panic!("not send");
    };
    assert!(a.verbose && a.include && a.quiet);
    assert_eq!(a.user_agent.as_deref(), Some("b"));
    assert_eq!(a.headers, ["X: 1", "Y: 2"]);
    assert_eq!(a.form, ["a=1", "b=2"]);
    let argv = [
        "kafkasend",
        "wait",
        "01JABCDEFGHJKMNPQRSTVWXYZ0",
        "-vv",
        "-q",
        "-q",
    ];
    assert!(Cli::try_parse_from(argv).is_ok());
}

#[test]
fn group_protocol_is_auto_consumer_or_classic() {
    use crate::kafka::group::GroupProtocol;
    let resolve = |extra: &[&str]| local_portal(extra).map(|c| c.group.protocol);
    assert_eq!(resolve(&[]).unwrap(), GroupProtocol::Auto);
    assert_eq!(
        resolve(&["--group-protocol", " "]).unwrap(),
        GroupProtocol::Auto
    );
    for (value, want) in [
        ("consumer", GroupProtocol::Consumer),
        ("CLASSIC", GroupProtocol::Classic),
        (" auto ", GroupProtocol::Auto),
    ] {
        assert_eq!(resolve(&["--group-protocol", value]).unwrap(), want);
    }
    let err = resolve(&["--group-protocol", "eager\u{1b}"])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("KAFKA_GROUP_PROTOCOL: \"eager\\u{1b}\" is not a group protocol"),
        "{err}"
    );
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "group_protocol = \"classic\"").unwrap();
    let path = file.path().to_str().unwrap().to_string();
    assert_eq!(
        resolve(&["--config", &path]).unwrap(),
        GroupProtocol::Classic
    );
}

#[test]
fn group_instance_id_is_off_auto_or_checked() {
    let base = [
        "--target-api-url",
        "http://127.0.0.1:1",
        "--use-oauth",
        "false",
    ];
    let resolve = |extra: &[&str]| {
        let mut argv = base.to_vec();
        argv.extend_from_slice(extra);
        resolve_portal(&portal_args(&argv)).map(|c| c.group.instance_id)
    };
    assert_eq!(resolve(&[]).unwrap(), None);
    assert_eq!(resolve(&["--group-instance-id", " "]).unwrap(), None);
    assert_eq!(
        resolve(&["--group-instance-id", "portal-1.eu_west"]).unwrap(),
        Some("portal-1.eu_west".into())
    );
    for (bad, why) in [
        ("two words", "it contains ' '"),
        ("..", "'.' and '..' are not allowed"),
        ("x\u{1b}[31m", "it contains '\\u{1b}'"),
    ] {
        let err = resolve(&["--group-instance-id", bad])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("KAFKA_GROUP_INSTANCE_ID: "), "{err}");
        assert!(err.contains(why), "{bad:?}: {err}");
        // The id is quoted escaped: no terminal control reaches the log.
        assert!(!err.contains('\u{1b}'), "{err}");
    }
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "group_instance_id = \"from-file\"").unwrap();
    let path = file.path().to_str().unwrap().to_string();
    assert_eq!(
        resolve(&["--config", &path]).unwrap(),
        Some("from-file".into())
    );
}

#[test]
fn group_instance_id_auto_is_the_host_name() {
    let host = |name: Option<&str>| {
        let name = name.map(str::to_string);
        move || name
    };
    assert_eq!(
        resolve_instance_id(Some("auto"), host(Some("web-3.example"))).unwrap(),
        Some("web-3.example".into())
    );
    assert_eq!(
        resolve_instance_id(Some("AUTO"), host(Some("web-3"))).unwrap(),
        Some("web-3".into())
    );
    let err = resolve_instance_id(Some("auto"), host(None))
        .unwrap_err()
        .to_string();
    assert!(err.contains("host name is unknown"), "{err}");
    let err = resolve_instance_id(Some("auto"), host(Some("my host")))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("KAFKA_GROUP_INSTANCE_ID=auto: the host name \"my host\""),
        "{err}"
    );
    // The host is not asked for when the id is given or off.
    let never = || -> Option<String> { panic!("host name read") };
    assert_eq!(resolve_instance_id(None, never).unwrap(), None);
    assert_eq!(
        resolve_instance_id(Some("p1"), never).unwrap(),
        Some("p1".into())
    );
    // On this machine: the same name `hostname` prints.
    let real = resolve_portal(&portal_args(&[
        "--target-api-url",
        "http://127.0.0.1:1",
        "--use-oauth",
        "false",
        "--group-instance-id",
        "auto",
    ]))
    .unwrap()
    .group
    .instance_id;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(real.as_deref(), Some(kernel.trim()));
}

#[test]
fn pipelining_is_on_unless_a_flag_or_the_file_turns_it_off() {
    let base = [
        "--target-api-url",
        "http://api.example",
        "--use-oauth",
        "false",
    ];
    assert!(resolve_portal(&portal_args(&base)).unwrap().pipeline);
    let mut off = base.to_vec();
    off.extend(["--pipeline", "false"]);
    assert!(!resolve_portal(&portal_args(&off)).unwrap().pipeline);

    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "pipeline = false").unwrap();
    let path = file.path().to_str().unwrap().to_string();
    let mut from_file = base.to_vec();
    from_file.extend(["--config", &path]);
    assert!(!resolve_portal(&portal_args(&from_file)).unwrap().pipeline);
    from_file.extend(["--pipeline", "true"]);
    assert!(resolve_portal(&portal_args(&from_file)).unwrap().pipeline);
}

#[test]
fn compression_of_each_side_by_flag_file_key_or_default() {
    use crate::kafka::compression::Codec;
    let send = |extra: &[&str]| {
        let mut argv = vec!["kafkasend", "send", "--endpoint", "/x"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Send(a) => resolve_send(&a).map(|s| s.compression),
            _ => unreachable!(),
        }
    };
    let portal = |extra: &[&str]| local_portal(extra).map(|c| c.compression);
    assert_eq!(send(&[]).unwrap(), Codec::Auto);
    assert_eq!(portal(&[]).unwrap(), Codec::Auto);
    assert_eq!(send(&["--compression", " "]).unwrap(), Codec::Auto);
    assert_eq!(send(&["--compression", "LZ4"]).unwrap(), Codec::Lz4);
    assert_eq!(portal(&["--compression", "none"]).unwrap(), Codec::None);

    // One file, two keys: each side reads its own.
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "compression = \"lz4\"\nclient_compression = \"none\"").unwrap();
    let path = file.path().to_str().unwrap().to_string();
    assert_eq!(send(&["--config", &path]).unwrap(), Codec::None);
    assert_eq!(portal(&["--config", &path]).unwrap(), Codec::Lz4);
    assert_eq!(
        send(&["--config", &path, "--compression", "zstd"]).unwrap(),
        Codec::Zstd
    );

    let err = send(&["--compression", "gzip"]).unwrap_err().to_string();
    assert_eq!(
        err,
        "--compression (KAFKASEND_COMPRESSION): \"gzip\" is not a codec; use auto, zstd, lz4 or none"
    );
    let err = portal(&["--compression", "zstd-19"])
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "PORTAL_COMPRESSION: \"zstd-19\" is not a codec; use auto, zstd, lz4 or none"
    );
}

#[test]
fn sealing_keys_are_read_at_start_and_named_by_id_only() {
    use crate::protocol::seal::SecretKey;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, keys: &[&SecretKey]| {
        let path = dir.path().join(name);
        let pem: String = keys.iter().map(|k| k.to_pem().to_string()).collect();
        std::fs::write(&path, pem).unwrap();
        path.to_string_lossy().into_owned()
    };
    let (new, old, older) = (
        SecretKey::generate(),
        SecretKey::generate(),
        SecretKey::generate(),
    );
    let current = write("current.key", &[&new]);
    let retired = write("retired.key", &[&old, &older]);
    let base = [
        "--target-api-url",
        "http://127.0.0.1:1",
        "--use-oauth",
        "false",
    ];
    let resolve = |extra: &[&str]| {
        let mut argv = base.to_vec();
        argv.extend_from_slice(extra);
        resolve_portal(&portal_args(&argv))
    };
    let both = format!("{current}, {retired}");
    let cfg = resolve(&["--sealing-key-file", &both, "--require-sealed", "true"]).unwrap();
    assert!(cfg.require_sealed);
    let sealing = cfg.sealing.unwrap();
    assert_eq!(sealing.keyring.advertised().id(), new.public().id());
    assert_eq!(
        sealing.keyring.ids(),
        vec![new.public().id(), old.public().id(), older.public().id()]
    );
    let line = sealing.describe();
    for id in sealing.keyring.ids() {
        assert!(line.contains(&id.to_string()), "{line}");
    }
    assert!(line.contains("retired.key"), "{line}");
    assert!(!line.contains("PRIVATE"), "{line}");
    // Unset: no key, clear requests accepted.
    let cfg = resolve(&[]).unwrap();
    assert!(cfg.sealing.is_none() && !cfg.require_sealed);

    let public = dir.path().join("portal.pub");
    std::fs::write(&public, new.public().to_pem()).unwrap();
    let public = public.to_string_lossy().into_owned();
    let twice = format!("{current},{current}");
    let missing = dir
        .path()
        .join("missing.key")
        .to_string_lossy()
        .into_owned();
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["--sealing-key-file", &missing],
            vec!["PORTAL_SEALING_KEY_FILE", "missing.key"],
        ),
        (
            vec!["--sealing-key-file", &public],
            vec![
                "PORTAL_SEALING_KEY_FILE",
                "portal.pub",
                "no PEM private key",
            ],
        ),
        (
            vec!["--sealing-key-file", &twice],
            vec!["PORTAL_SEALING_KEY_FILE", "a second time"],
        ),
        (
            vec!["--require-sealed", "true"],
            vec!["PORTAL_REQUIRE_SEALED", "PORTAL_SEALING_KEY_FILE"],
        ),
        (
            vec!["--sealing-key-file", " , "],
            vec!["PORTAL_SEALING_KEY_FILE", "names no key file"],
        ),
    ];
    for (extra, words) in cases {
        let err = format!("{:#}", resolve(&extra).unwrap_err());
        for w in words {
            assert!(err.contains(w), "{extra:?}: {err}");
        }
        // Never a byte of a key: no line of either file's base64.
        for pem in [new.to_pem().to_string(), new.public().to_pem()] {
            for line in pem.lines().filter(|l| !l.starts_with("-----")) {
                assert!(!err.contains(line), "{err}");
            }
        }
    }
}
