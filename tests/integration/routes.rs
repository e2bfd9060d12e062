//! The route table: one portal serving two APIs on two routes, each with its
//! own credentials, target and limits; requests no route takes refused with
//! nothing called; the single-target settings serving as before.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use jsonwebtoken::Algorithm;

use crate::support::api::Servers;
use crate::support::broker::Topics;
use crate::support::payload::pattern_file;
use crate::support::pki::{ec_key_pair, TestPki};
use crate::support::run::{kafkasend_cmd, send, spawn_send, Portal};
use crate::support::wait_until;

/// Two loopback APIs, each with its own token endpoint: `alpha` takes a
/// client secret (HTTP Basic), `beta` a `private_key_jwt` assertion; each
/// API accepts only the tokens its own endpoint issued.
struct TwoApis {
    alpha: Servers,
    beta: Servers,
    dir: tempfile::TempDir,
    key_file: PathBuf,
}

impl TwoApis {
    async fn start() -> Self {
        let alpha = Servers::start().await;
        let beta = Servers::start().await;
        *alpha.state.token_prefix.lock().unwrap() = Some("alpha-".into());
        *beta.state.token_prefix.lock().unwrap() = Some("beta-".into());
        // Only for their side effects: each API now demands its own token,
        // and beta's token endpoint knows the assertion key.
        let _ = alpha.oauth_env();
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = ec_key_pair();
        let key_file = dir.path().join("assertion.pem");
        std::fs::write(&key_file, private).unwrap();
        let _ = beta.jwt_env(&key_file, &public, Algorithm::ES256);
        Self {
            alpha,
            beta,
            dir,
            key_file,
        }
    }

    /// The two routes as config file tables.
    fn routes_toml(&self) -> String {
        format!(
            r#"
[[routes]]
name = "alpha"
match = "/alpha/**"
target = "{alpha}"
strip_prefix = "/alpha"
[routes.oauth2]
token_url = "{alpha_token}"
client_id = "test-client"
client_secret = "s3cret/x"

[[routes]]
name = "beta"
match = "/beta/**"
methods = ["GET", "POST"]
target = "{beta}/v2"
max_body_bytes = 1000
[routes.oauth2]
token_url = "{beta_token}"
client_id = "test-client"
auth_method = "private_key_jwt"
client_assertion_key_file = "{key}"
"#,
            alpha = self.alpha.api_url,
            alpha_token = self.alpha.token_url,
            beta = self.beta.api_url,
            beta_token = self.beta.token_url,
            key = self.key_file.display(),
        )
    }

    /// Writes `text` as the portal's config file.
    fn config(&self, text: &str) -> PathBuf {
        let path = self
            .dir
            .path()
            .join(format!("portal-{}.toml", ulid::Ulid::new()));
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn config_env(config: &Path, extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("KAFKASEND_CONFIG", config.to_str().unwrap().to_string()),
        ("PORTAL_USE_OAUTH", "false".to_string()),
    ];
    env.extend_from_slice(extra);
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn one_portal_serves_two_apis_each_with_its_own_credentials() {
    let apis = TwoApis::start().await;
    let config = apis.config(&apis.routes_toml());
    let topics = Topics::new("routes-two");
    let portal = Portal::start(&topics, &config_env(&config, &[]));

    let out = send(&topics, &["--endpoint", "/alpha/items/7?x=1"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = send(
        &topics,
        &["-X", "POST", "-d", "hello", "--endpoint", "/beta/things"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = send(&topics, &["--endpoint", "/alpha"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    let alpha = apis.alpha.state.requests();
    let beta = apis.beta.state.requests();
    let seen = |reqs: &[crate::support::api::Recorded]| {
        reqs.iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect::<Vec<_>>()
    };
    // alpha's prefix is stripped; beta's path goes under its base path.
    assert_eq!(seen(&alpha), ["GET /items/7", "GET /"], "alpha");
    assert_eq!(alpha[0].query.as_deref(), Some("x=1"));
    assert_eq!(seen(&beta), ["POST /v2/beta/things"], "beta");
    for r in &alpha {
        assert_eq!(r.status, 200);
        assert!(
            r.headers["authorization"]
                .to_str()
                .unwrap()
                .starts_with("Bearer alpha-"),
            "{r:?}"
        );
    }
    assert_eq!(beta[0].status, 200);
    assert!(beta[0].headers["authorization"]
        .to_str()
        .unwrap()
        .starts_with("Bearer beta-"));
    // One token each, fetched with each route's own client authentication.
    assert_eq!(apis.alpha.state.token_fetches.load(Ordering::SeqCst), 1);
    assert!(apis.alpha.state.assertions.lock().unwrap().is_empty());
    assert_eq!(apis.beta.state.assertions.lock().unwrap().len(), 1);
    assert!(apis.beta.state.token_refusals.lock().unwrap().is_empty());

    let log = portal.log();
    assert!(
        log.contains("GET /alpha/items/7?x=1 -> 200") && log.contains("(route alpha)"),
        "{log}"
    );
    assert!(log.contains("(route beta)"), "{log}");
    assert!(!log.contains("s3cret"), "the client secret is never logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_no_route_takes_or_that_would_leave_a_route_are_refused_with_nothing_called() {
    let apis = TwoApis::start().await;
    let config = apis.config(&apis.routes_toml());
    let topics = Topics::new("routes-none");
    let _portal = Portal::start(&topics, &config_env(&config, &[]));
    let dir = tempfile::tempdir().unwrap();
    let (big, _) = pattern_file(dir.path(), "big.bin", 1, 1001);
    let (small, _) = pattern_file(dir.path(), "small.bin", 2, 1000);
    let refused: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--endpoint", "/gamma/x"],
            "GET /gamma/x is refused: no route matches it",
        ),
        // beta takes GET and POST only.
        (
            vec!["-X", "DELETE", "--endpoint", "/beta/x"],
            "DELETE /beta/x is refused: no route matches it",
        ),
        // Outside the pattern by one character.
        (vec!["--endpoint", "/alphabet"], "no route matches"),
        // With its prefix stripped this would name another host; the
        // policy refuses it before any route is chosen.
        (
            vec!["--endpoint", "/alpha//evil.example/x"],
            "empty segment",
        ),
        (vec!["--endpoint", "/alpha/%2e%2e/x"], "dot segments"),
        // Over beta's body limit, though far under the portal's.
        (
            vec![big.to_str().unwrap(), "--endpoint", "/beta/upload"],
            "exceeds the limit of 1000 bytes of route 'beta'",
        ),
    ];
    // The token each OAuth2 route fetched at start; a refusal asks for none.
    let tokens = || {
        (
            apis.alpha.state.token_fetches.load(Ordering::SeqCst),
            apis.beta.state.assertions.lock().unwrap().len(),
        )
    };
    let before = tokens();
    for (args, why) in &refused {
        let out = send(&topics, args).await;
        assert_eq!(out.code, 3, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(why), "{args:?}: {}", out.stderr);
    }
    assert!(apis.alpha.state.requests().is_empty(), "alpha was called");
    assert!(apis.beta.state.requests().is_empty(), "beta was called");
    assert_eq!(
        tokens(),
        before,
        "a token endpoint was called for a refused request"
    );

    // At the limit it goes through.
    let out = send(
        &topics,
        &[small.to_str().unwrap(), "--endpoint", "/beta/upload"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let beta = apis.beta.state.requests();
    assert_eq!(beta.len(), 1);
    assert_eq!(beta[0].body_len, 1000);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_single_target_settings_are_the_default_route_tried_last() {
    // No config file: the environment alone, as before routes.
    let servers = Servers::start().await;
    let topics = Topics::new("routes-env");
    let portal = Portal::start(&topics, &servers.oauth_env());
    let out = send(&topics, &["--endpoint", "/api/plain"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let reqs = servers.state.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path, "/api/plain");
    assert_eq!(reqs[0].headers["authorization"], "Bearer token-1");
    portal.wait_for_log("(route default)").await;
    drop(portal);

    // Listed routes come first; the default route takes the rest.
    let apis = TwoApis::start().await;
    let config = apis.config(&apis.routes_toml());
    let fallback = Servers::start().await;
    let topics = Topics::new("routes-default");
    let _portal = Portal::start(
        &topics,
        &config_env(
            &config,
            &[("PORTAL_TARGET_API_URL", fallback.api_url.clone())],
        ),
    );
    for endpoint in ["/alpha/a", "/elsewhere", "/beta/b"] {
        let out = send(&topics, &["--endpoint", endpoint]).await;
        assert_eq!(out.code, 0, "{endpoint}: {}", out.stderr);
    }
    let paths = |s: &Servers| {
        s.state
            .requests()
            .into_iter()
            .map(|r| r.path)
            .collect::<Vec<_>>()
    };
    assert_eq!(paths(&apis.alpha), ["/a"]);
    assert_eq!(paths(&apis.beta), ["/v2/beta/b"]);
    assert_eq!(paths(&fallback), ["/elsewhere"]);
    // The default route has no token: the portal's OAuth is off.
    assert!(fallback.state.requests()[0]
        .headers
        .get("authorization")
        .is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn config_show_lists_the_routes_without_their_secrets_and_mistakes_name_the_route() {
    let apis = TwoApis::start().await;
    let topics = Topics::new("routes-show");
    let config = apis.config(&apis.routes_toml());
    let path = config.to_str().unwrap();
    let out = kafkasend_cmd(
        &topics,
        &[
            "config",
            "show",
            "portal",
            "--config",
            path,
            "--use-oauth",
            "false",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = out.stdout_text();
    let alpha = text
        .lines()
        .find(|l| l.starts_with("route alpha"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(alpha.contains("line 2"), "{alpha}");
    assert!(
        alpha.contains(&format!(
            "/alpha/** -> {} (strip /alpha)",
            apis.alpha.api_url
        )),
        "{alpha}"
    );
    assert!(
        alpha.contains("OAuth2 client_secret_basic as test-client"),
        "{alpha}"
    );
    let beta = text
        .lines()
        .find(|l| l.starts_with("route beta"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(beta.contains("GET,POST /beta/**"), "{beta}");
    assert!(beta.contains("private_key_jwt"), "{beta}");
    assert!(!text.contains("s3cret"), "{text}");

    // Without a side the routes are listed as written, unchecked.
    let out = kafkasend_cmd(&topics, &["config", "show", "--config", path]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = out.stdout_text();
    assert!(
        text.lines().any(|l| l.starts_with("route beta")
            && l.contains("GET,POST /beta/**")
            && l.contains("unchecked")),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "{text}");

    // A route that can never be chosen stops the portal from starting.
    let shadowing = format!(
        "{}\n[[routes]]\nname = \"again\"\nmatch = \"/beta/**\"\nmethods = [\"POST\"]\ntarget = \"http://127.0.0.1:1\"\n",
        apis.routes_toml()
    );
    let bad = apis.config(&shadowing);
    let out = kafkasend_cmd(
        &topics,
        &[
            "portal",
            "--config",
            bad.to_str().unwrap(),
            "--use-oauth",
            "false",
        ],
    )
    .await;
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains(
            "route 'again' (line 24): it can never be chosen: route 'beta' (line 12) comes first"
        ),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_mtls_route_with_a_static_header_its_own_timeout_and_no_borrowed_certificate() {
    let pki = TestPki::new();
    let api = Servers::start_tls(&pki, true).await;
    let key_file = pki.dir.path().join("api-key");
    std::fs::write(&key_file, "key-from-file\n").unwrap();
    let config = pki.dir.path().join("portal.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[routes]]
name = "ledger"
match = "/ledger/**"
target = "{api}"
strip_prefix = "/ledger"
allowed_headers = "X-Api-Key, X-Request-ID"
timeout_secs = 1
[routes.tls]
ca_file = "{ca}"
client_cert_file = "{cert}"
client_key_file = "{key}"
[routes.header]
name = "X-Api-Key"
value_file = "{value}"

[[routes]]
name = "bare"
match = "/bare/**"
target = "{api}"
"#,
            api = api.api_url,
            ca = pki.ca_file.display(),
            cert = pki.client_cert_file.display(),
            key = pki.client_key_file.display(),
            value = key_file.display(),
        ),
    )
    .unwrap();
    let topics = Topics::new("routes-mtls");
    let path = |p: &Path| p.to_str().unwrap().to_string();
    // The default route is the same API with the portal-wide certificate.
    let portal = Portal::start(
        &topics,
        &config_env(
            &config,
            &[
                ("PORTAL_TARGET_API_URL", api.api_url.clone()),
                ("PORTAL_CA_FILE", path(&pki.ca_file)),
                ("PORTAL_CLIENT_CERT_FILE", path(&pki.client_cert_file)),
                ("PORTAL_CLIENT_KEY_FILE", path(&pki.client_key_file)),
            ],
        ),
    );

    // The sender's own X-Api-Key is replaced by the route's.
    let out = send(
        &topics,
        &[
            "--endpoint",
            "/ledger/entries",
            "-H",
            "X-Api-Key: forged",
            "-H",
            "X-Request-ID: r-9",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let reqs = api.state.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path, "/entries");
    let keys: Vec<_> = reqs[0].headers.get_all("x-api-key").iter().collect();
    assert_eq!(keys, ["key-from-file"]);
    assert_eq!(reqs[0].headers["x-request-id"], "r-9");

    // A route without [routes.tls] does not borrow the default route's
    // certificate: the mTLS API refuses the handshake.
    let out = send(&topics, &["--endpoint", "/bare/x"]).await;
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(out.stderr.contains("CertificateRequired"), "{}", out.stderr);
    // The default route presents it.
    let out = send(&topics, &["--endpoint", "/elsewhere"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(api.state.requests().len(), 2);

    // The route's 1-second deadline, not the portal's 300 seconds.
    let out = send(&topics, &["--endpoint", "/ledger/slow"]).await;
    api.state.release_slow();
    assert_ne!(out.code, 0);
    assert!(
        out.stderr
            .contains("within 1 s (timeout_secs of route 'ledger')"),
        "{}",
        out.stderr
    );
    assert!(
        !portal.log().contains("key-from-file"),
        "the header value is never logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_endpoint_down_at_start_is_a_warning_and_fails_only_its_route() {
    let apis = TwoApis::start().await;
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("http://{}/token", closed.local_addr().unwrap());
    drop(closed);
    let config = apis.config(&format!(
        "[[routes]]\nname = \"down\"\nmatch = \"/down/**\"\ntarget = \"{}\"\n[routes.oauth2]\ntoken_url = \"{down}\"\nclient_id = \"c\"\nclient_secret = \"s\"\n{}",
        apis.alpha.api_url,
        apis.routes_toml()
    ));
    let topics = Topics::new("routes-token-down");
    let portal = Portal::start(&topics, &config_env(&config, &[]));
    assert!(
        portal
            .log()
            .contains("route 'down' (line 1): no token from its token endpoint at start"),
        "{}",
        portal.log()
    );
    let out = send(&topics, &["--endpoint", "/down/x"]).await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("(auth)"), "{}", out.stderr);
    let out = send(&topics, &["--endpoint", "/alpha/x"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let paths: Vec<_> = apis
        .alpha
        .state
        .requests()
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(paths, ["/x"], "the route whose token failed called nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_at_its_limit_with_a_backlog_does_not_starve_another_route() {
    let apis = TwoApis::start().await;
    let config = apis.config(&apis.routes_toml().replacen(
        "strip_prefix = \"/alpha\"",
        "strip_prefix = \"/alpha\"\nmax_concurrent_jobs = 1",
        1,
    ));
    let topics = Topics::new("routes-starve");
    let portal = Portal::start(
        &topics,
        &config_env(&config, &[("PORTAL_MAX_CONCURRENT_JOBS", "2".into())]),
    );
    let held: Vec<_> = (0..3)
        .map(|_| spawn_send(&topics, &["--endpoint", "/alpha/slow"]))
        .collect();
    wait_until("alpha's first call arrives", || {
        apis.alpha.state.slow_arrived.load(Ordering::SeqCst) == 1
    })
    .await;
    // The other two reached the portal and wait for a slot (had they not,
    // beta's call below would go through all the same).
    wait_until("all three alpha jobs are assembled", || {
        portal
            .log()
            .matches("GET /alpha/slow (0 bytes) assembled")
            .count()
            == 3
    })
    .await;
    // Two alpha jobs wait for alpha's one slot; beta still gets a call.
    let out = send(&topics, &["--endpoint", "/beta/x"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(apis.alpha.state.slow_arrived.load(Ordering::SeqCst), 1);
    apis.alpha.state.release_slow();
    for h in held {
        let out = h.await.unwrap();
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    assert_eq!(apis.alpha.state.slow_arrived.load(Ordering::SeqCst), 3);
}
