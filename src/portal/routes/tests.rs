use super::*;
use crate::portal::http_dispatch::backpressure::RetryPolicy;
use crate::portal::http_dispatch::{strip, Dispatcher};
use crate::portal::policy::parse_endpoints;

/// A route for tests: `spec` is a PORTAL_ALLOWED_ENDPOINTS entry.
pub(crate) fn route(name: &str, spec: &str, target: &str, strip_prefix: Option<&str>) -> Route {
    let mut rules = parse_endpoints(spec).unwrap();
    assert_eq!(rules.len(), 1, "{spec}");
    Route {
        name: name.into(),
        line: Some(1),
        rule: rules.remove(0),
        target: target.into(),
        strip_prefix: strip_prefix.map(str::to_string),
        allowed_headers: vec!["content-type".into()],
        timeout: Duration::from_secs(5),
        max_body_bytes: 100,
        max_concurrent_jobs: 2,
        auth: RouteAuth::None,
        tls: ApiTls::load(None, None, None).unwrap(),
    }
}

/// The dispatcher the portal would make for `r`, without auth.
pub(crate) fn dispatcher(r: &Route) -> Dispatcher {
    Dispatcher::new(
        crate::portal::http_dispatch::client::build_client(&r.tls),
        &r.target,
        None,
        r.timeout,
        &r.allowed_headers,
        None,
        RetryPolicy::default(),
        r.max_concurrent_jobs,
    )
    .routed(&r.name, r.strip_prefix.as_deref(), None, r.max_body_bytes)
    .unwrap()
}

#[test]
fn the_first_route_that_fits_takes_the_request() {
    let list = vec![
        route("orders-read", "GET /orders/**", "http://a.example", None),
        route("orders", "/orders/**", "http://b.example", None),
        route("all", "/**", "http://c.example", None),
    ];
    let pick = |m, p| list[select(&list, m, p).unwrap()].name.clone();
    assert_eq!(pick("GET", "/orders/1"), "orders-read");
    assert_eq!(pick("GET", "/orders"), "orders-read");
    assert_eq!(pick("POST", "/orders/1"), "orders");
    assert_eq!(pick("POST", "/ordersx"), "all");
    // The query plays no part in matching.
    assert_eq!(pick("GET", "/orders/1?x=/y"), "orders-read");
}

#[test]
fn a_request_no_route_takes_is_refused_naming_method_and_path() {
    let list = vec![route("a", "POST /a/*", "http://a.example", None)];
    for (m, p) in [
        ("GET", "/a/1"),
        ("POST", "/a/1/2"),
        ("POST", "/b"),
        ("POST", "/a"),
    ] {
        let e = select(&list, m, p).unwrap_err();
        assert_eq!(e.category, ErrorCategory::Rejected);
        assert!(e.message.contains(&format!("{m} {p}")), "{e}");
        assert!(e.message.contains("no route matches"), "{e}");
    }
}

#[test]
fn only_a_route_that_can_never_be_chosen_is_a_conflict() {
    let same = vec![
        route("a", "GET,POST /x/**", "http://a.example", None),
        route("b", "POST /x/**", "http://b.example", None),
    ];
    let (earlier, later) = shadowed(&same).unwrap();
    assert_eq!((earlier.name.as_str(), later.name.as_str()), ("a", "b"));
    let any_method = vec![
        route("a", "/x/**", "http://a.example", None),
        route("b", "DELETE /x/**", "http://b.example", None),
    ];
    assert!(shadowed(&any_method).is_some());
    // A wider pattern first takes every path of a narrower one.
    for (wide, narrow) in [
        ("/**", "/x/*"),
        ("/x/**", "/x/y/**"),
        ("/x/**", "/x"),
        ("/a/*/**", "/a/*/b"),
    ] {
        let list = vec![
            route("wide", wide, "http://a.example", None),
            route("narrow", narrow, "http://b.example", None),
        ];
        assert!(shadowed(&list).is_some(), "{wide} before {narrow}");
    }
    // Overlaps that leave the later route some requests are
    // first-match-wins: disjoint methods, methods the earlier route does
    // not all take, narrow before wide, and prefixes that are not whole
    // segments.
    let fine = vec![
        route("a", "GET /x/**", "http://a.example", None),
        route("b", "POST /x/**", "http://b.example", None),
        route("c", "GET,POST /y/**", "http://c.example", None),
        route("d", "POST,PUT /y/**", "http://d.example", None),
        route("e", "GET /z/**", "http://e.example", None),
        route("f", "/z/**", "http://f.example", None),
        route("g", "/x/*", "http://g.example", None),
        route("h", "/ab/**", "http://h.example", None),
        route("i", "/abc/**", "http://i.example", None),
        route("j", "/**", "http://j.example", None),
    ];
    assert!(shadowed(&fine).is_none());
}

#[test]
fn a_prefix_is_stripped_only_at_a_segment_boundary() {
    for (path, want) in [
        ("/svc/items", "/items"),
        ("/svc", "/"),
        ("/svc?q=1", "/?q=1"),
        ("/svc/", "/"),
        ("/svcx/items", "/svcx/items"),
        ("/other/svc/items", "/other/svc/items"),
    ] {
        assert_eq!(strip(Some("/svc"), path), want, "{path}");
    }
    assert_eq!(strip(None, "/svc/items"), "/svc/items");
}

#[test]
fn a_route_calls_only_under_its_own_base_url() {
    let r = route("a", "/svc/**", "https://api.example/v1", Some("/svc"));
    let d = dispatcher(&r);
    assert_eq!(
        d.url_for("/svc/items?x=1").unwrap(),
        "https://api.example/v1/items?x=1"
    );
    assert_eq!(d.url_for("/svc").unwrap(), "https://api.example/v1/");
    for hostile in [
        "/svc//evil.example/x",
        "//evil.example/x",
        "/svc/../admin",
        "/svc/%2e%2e/admin",
        "/svc/a%2f..%2f..%2fadmin",
        "http://evil.example/x",
        "/svc/x\r\nHost: evil.example",
        "/svc\\..\\admin",
    ] {
        let e = d.url_for(hostile).unwrap_err();
        assert_eq!(e.category, ErrorCategory::Rejected, "{hostile}: {e}");
    }
    // Not stripped (no segment boundary), and still under the base URL.
    for odd in [
        "/svc@evil.example/x",
        "/svc:443@evil.example",
        "/svc/@evil.example",
    ] {
        let url = d.url_for(odd).unwrap();
        let uri: hyper::Uri = url.parse().unwrap();
        assert_eq!(uri.host(), Some("api.example"), "{odd}: {url}");
        assert!(uri.path().starts_with("/v1/"), "{odd}: {url}");
    }
}
