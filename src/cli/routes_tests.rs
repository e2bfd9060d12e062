//! The `[[routes]]` tables: parsing, checks, and the messages that name
//! the route and its line.

use crate::cli::args::{Cli, Command};
use crate::portal::routes::RouteAuth;
use clap::Parser as _;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

/// Resolves a portal whose config file is `toml` (plus `extra` flags).
fn portal(toml: &str, extra: &[&str]) -> anyhow::Result<crate::portal::Settings> {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(toml.as_bytes()).unwrap();
    let path = file.path().to_str().unwrap().to_string();
    let mut argv = vec![
        "kafkasend",
        "portal",
        "--config",
        &path,
        "--use-oauth",
        "false",
    ];
    argv.extend_from_slice(extra);
    let Command::Portal(args) = Cli::try_parse_from(argv).unwrap().command else {
        unreachable!()
    };
    crate::cli::portal::resolve_portal(&args)
}

fn err(toml: &str) -> String {
    format!("{:#}", portal(toml, &[]).unwrap_err())
}

fn secret_file(dir: &Path, text: &str) -> String {
    let path = dir.join(format!("secret-{}", ulid::Ulid::new()));
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn listed_routes_come_first_then_the_default_route() {
    let dir = tempfile::tempdir().unwrap();
    let key = secret_file(dir.path(), "k-123\n");
    let toml = format!(
        r#"target_api_url = "http://default.example"

[[routes]]
name = "orders"
match = "/orders/**"
methods = ["GET", "post"]
target = "https://orders.example/v2/"
strip_prefix = "/orders"
allowed_headers = "Content-Type, X-Tenant"
timeout_secs = 7
max_body_bytes = 1000
max_concurrent_jobs = 3
[routes.oauth2]
token_url = "https://login.example/token"
client_id = "portal"
client_secret = "s3cret"
auth_method = "client_secret_post"
scope = "orders"

[[routes]]
name = "legacy"
match = "/legacy/**"
target = "http://legacy.example"
[routes.header]
name = "X-Api-Key"
value_file = "{key}"
"#
    );
    let s = portal(&toml, &[]).unwrap();
    let names: Vec<_> = s.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["orders", "legacy", "default"]);
    let orders = &s.routes[0];
    assert_eq!(orders.line, Some(3));
    assert_eq!(orders.target, "https://orders.example/v2");
    assert_eq!(orders.rule.methods, ["GET", "POST"]);
    assert_eq!(orders.strip_prefix.as_deref(), Some("/orders"));
    assert_eq!(orders.allowed_headers, ["content-type", "x-tenant"]);
    assert_eq!(orders.timeout, Duration::from_secs(7));
    assert_eq!(
        (orders.max_body_bytes, orders.max_concurrent_jobs),
        (1000, 3)
    );
    let RouteAuth::OAuth2(o) = &orders.auth else {
        panic!("not OAuth2: {:?}", orders.auth)
    };
    assert_eq!(o.credentials.method_name(), "client_secret_post");
    assert!(!orders.summary().contains("s3cret"), "{}", orders.summary());
    let legacy = &s.routes[1];
    assert_eq!(legacy.line, Some(20));
    let RouteAuth::Header { name, value } = &legacy.auth else {
        panic!("not a header: {:?}", legacy.auth)
    };
    assert_eq!((name.as_str(), value.as_str()), ("X-Api-Key", "k-123"));
    assert!(!legacy.summary().contains("k-123"));
    let debug = format!("{:?}", s.routes);
    assert!(
        !debug.contains("s3cret") && !debug.contains("k-123"),
        "{debug}"
    );
    assert_eq!(s.routes[2].target, "http://default.example");
}

#[test]
fn with_routes_listed_the_default_target_is_optional() {
    let s = portal(
        "[[routes]]\nname = \"a\"\nmatch = \"/a/**\"\ntarget = \"http://a.example\"\n",
        &[],
    )
    .unwrap();
    assert_eq!(s.routes.len(), 1);
    let e = format!("{:#}", portal("", &[]).unwrap_err());
    assert!(e.contains("PORTAL_TARGET_API_URL is not set"), "{e}");
    assert!(e.contains("[[routes]]"), "{e}");
}

#[test]
fn each_mistake_names_the_route_and_its_line() {
    let head = "target_api_url = \"http://d.example\"\n\n[[routes]]\nname = \"r1\"\n";
    for (rest, want) in [
        ("match = \"/a\"\ntarget = \"http://a\"\ncolour = 1\n", "line 7: unknown key `colour`; see the keys of a route in docs/configuration.md, \"Routes\""),
        ("match = \"/a\"\ntarget = \"http://a\"\n[routes.oauth2]\ntoken_ur = \"x\"\n", "unknown key `token_ur`; did you mean `token_url`?"),
        ("match = \"/a\"\n", "key `target` is missing"),
        ("match = \"/a\"\ntarget = \"ftp://a\"\n", "route 'r1' (line 3): target: 'ftp://a' must be an http:// or https:// URL"),
        ("match = \"/a\"\ntarget = \"http://u:pw@a\"\n", "must not hold credentials"),
        ("match = \"/a\"\ntarget = \"http://a?x=1\"\n", "query string"),
        ("match = \"a/**\"\ntarget = \"http://a\"\n", "route 'r1' (line 3): match: 'a/**' is not a path pattern"),
        ("match = \"/a, /b\"\ntarget = \"http://a\"\n", "is not a path pattern"),
        ("match = \"/a\"\nmethods = [\"GE T\"]\ntarget = \"http://a\"\n", "methods: 'GE T' is not an HTTP method"),
        ("match = \"/a\"\ntarget = \"http://a\"\nstrip_prefix = \"/a/\"\n", "strip_prefix"),
        ("match = \"/a\"\ntarget = \"http://a\"\nstrip_prefix = \"/a/../b\"\n", "strip_prefix"),
        ("match = \"/a\"\ntarget = \"http://a\"\ntimeout_secs = 0\n", "timeout_secs must be between 1"),
        ("match = \"/a\"\ntarget = \"http://a\"\nmax_concurrent_jobs = 100000\n", "max_concurrent_jobs must be between 1 and PORTAL_MAX_CONCURRENT_JOBS"),
        ("match = \"/a\"\ntarget = \"http://a\"\nallowed_headers = \"a b\"\n", "allowed_headers: 'a b'"),
        ("match = \"/a\"\ntarget = \"http://a\"\n[routes.oauth2]\ntoken_url = \"http://t\"\n", "[routes.oauth2] lacks client_id, client_secret (or client_secret_file)"),
        ("match = \"/a\"\ntarget = \"http://a\"\n[routes.oauth2]\ntoken_url = \"http://t\"\nclient_id = \"c\"\nauth_method = \"private_key_jwt\"\n", "lacks client_assertion_key_file"),
        ("match = \"/a\"\ntarget = \"http://a\"\n[routes.oauth2]\ntoken_url = \"http://t\"\nclient_id = \"c\"\nclient_assertion_key_file = \"/nonexistent/key.pem\"\n", "/nonexistent/key.pem"),
        ("match = \"/a\"\ntarget = \"http://a\"\n[routes.oauth2]\ntoken_url = \"http://t\"\nclient_id = \"c\"\nclient_secret_file = \"/nonexistent/secret\"\n", "client_secret_file"),
        ("match = \"/a\"\ntarget = \"http://a\"\n[routes.oauth2]\ntoken_url = \"not a url\"\nclient_id = \"c\"\nclient_secret = \"s\"\n", "token_url"),
        ("match = \"/a\"\ntarget = \"http://a\"\n[routes.header]\nname = \"X-Key\"\nvalue_file = \"/nonexistent/v\"\n", "[routes.header] value_file"),
        ("match = \"/a\"\ntarget = \"http://a\"\n[routes.header]\nname = \"X Key\"\nvalue_file = \"/dev/null\"\n", "is not a header name"),
        ("match = \"/a\"\ntarget = \"http://a\"\n[routes.tls]\nclient_cert_file = \"/nonexistent/c.pem\"\n", "[routes.tls] client_key_file: not set, but client_cert_file is"),
        ("match = \"/a\"\ntarget = \"http://a\"\n[routes.tls]\nclient_cert_file = \"/nonexistent/c.pem\"\nclient_key_file = \"/nonexistent/k.pem\"\n", "[routes.tls] client_cert_file: "),
        ("match = \"/a\"\ntarget = \"http://a\"\n[routes.header]\nname = \"Host\"\nvalue_file = \"/dev/null\"\n", "frames the request"),
        ("match = \"/orders/**\"\ntarget = \"http://a\"\nstrip_prefix = \"/ord\"\n", "is not where the paths of match '/orders/**' start"),
        ("match = \"/orders\"\ntarget = \"http://a\"\nstrip_prefix = \"/api\"\n", "is not where the paths"),
        ("name2 = 1\n", "line 5: unknown key `name2`"),
    ] {
        let e = err(&format!("{head}{rest}"));
        assert!(e.contains(want), "{rest:?}: got {e}");
    }
    let e = err("[[routes]]\nname = \"default\"\nmatch = \"/a\"\ntarget = \"http://a\"\n");
    assert!(
        e.contains("'default' is the route PORTAL_TARGET_API_URL defines"),
        "{e}"
    );
    let e = err("[[routes]]\nname = \"a b\"\nmatch = \"/a\"\ntarget = \"http://a\"\n");
    assert!(e.contains("route 'a b' (line 1): name:"), "{e}");
}

#[test]
fn a_route_that_can_never_be_chosen_or_a_taken_name_is_an_error() {
    let e = err("[[routes]]\nname = \"a\"\nmatch = \"/x/**\"\nmethods = [\"GET\", \"POST\"]\ntarget = \"http://a\"\n\n[[routes]]\nname = \"b\"\nmatch = \"/x/**\"\nmethods = [\"POST\"]\ntarget = \"http://b\"\n");
    assert!(
        e.contains("route 'b' (line 7): it can never be chosen: route 'a' (line 1) comes first"),
        "{e}"
    );
    let e = err("[[routes]]\nname = \"a\"\nmatch = \"/x\"\ntarget = \"http://a\"\n[[routes]]\nname = \"a\"\nmatch = \"/y\"\ntarget = \"http://a\"\n");
    assert!(
        e.contains("route 'a' (line 5): the name is taken by route 'a' (line 1)"),
        "{e}"
    );
    // Same pattern, other methods: both can be chosen.
    portal("[[routes]]\nname = \"a\"\nmatch = \"/x\"\nmethods = [\"GET\"]\ntarget = \"http://a\"\n[[routes]]\nname = \"b\"\nmatch = \"/x\"\nmethods = [\"POST\"]\ntarget = \"http://b\"\n", &[]).unwrap();
}

#[test]
fn a_private_key_jwt_route_reads_its_key_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (private, _public) = crate::test_support::ec_key_pair();
    let key = secret_file(dir.path(), &private);
    let s = portal(&format!("[[routes]]\nname = \"j\"\nmatch = \"/j/**\"\ntarget = \"https://j.example\"\n[routes.oauth2]\ntoken_url = \"https://t.example/token\"\nclient_id = \"c\"\nclient_assertion_key_file = \"{key}\"\n"), &[]).unwrap();
    let RouteAuth::OAuth2(o) = &s.routes[0].auth else {
        panic!("not OAuth2")
    };
    assert_eq!(o.credentials.method_name(), "private_key_jwt");
    let garbage = secret_file(dir.path(), "not a key");
    let e = err(&format!("[[routes]]\nname = \"j\"\nmatch = \"/j/**\"\ntarget = \"https://j.example\"\n[routes.oauth2]\ntoken_url = \"https://t.example/token\"\nclient_id = \"c\"\nclient_assertion_key_file = \"{garbage}\"\n"));
    assert!(e.contains("route 'j' (line 1)"), "{e}");
    assert!(
        !e.contains("not a key"),
        "the key file is never quoted: {e}"
    );
}

#[test]
fn the_routes_section_of_the_docs_names_every_route_key() {
    use crate::cli::file::{RouteFile, RouteHeader, RouteOAuth2, RouteTls};
    let doc = include_str!("../../docs/configuration.md");
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("Routes"))
        .expect("docs/configuration.md has a section \"Routes\"");
    let keys =
        |v: serde_json::Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    let mut all = keys(serde_json::to_value(RouteFile::default()).unwrap());
    all.extend(keys(serde_json::to_value(RouteOAuth2::default()).unwrap()));
    all.extend(keys(serde_json::to_value(RouteTls::default()).unwrap()));
    all.extend(keys(serde_json::to_value(RouteHeader::default()).unwrap()));
    for key in all {
        let named = match key.as_str() {
            "oauth2" | "tls" | "header" => format!("`[routes.{key}]`"),
            _ => format!("`{key}`"),
        };
        assert!(
            section.contains(&named),
            "the Routes section does not name {named}"
        );
    }
}

#[test]
fn listed_routes_alone_start_with_the_default_oauth_setting() {
    // PORTAL_USE_OAUTH defaults to true: its OAUTH2_* settings belong to the
    // default route, which does not exist without PORTAL_TARGET_API_URL.
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(b"[[routes]]\nname = \"a\"\nmatch = \"/a/**\"\ntarget = \"http://a.example\"\n")
        .unwrap();
    let path = file.path().to_str().unwrap().to_string();
    let argv = ["kafkasend", "portal", "--config", &path];
    let Command::Portal(args) = Cli::try_parse_from(argv).unwrap().command else {
        unreachable!()
    };
    let s = crate::cli::portal::resolve_portal(&args).unwrap();
    let names: Vec<_> = s.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["a"]);
    assert!(matches!(s.routes[0].auth, RouteAuth::None));
}
