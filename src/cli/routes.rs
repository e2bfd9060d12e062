//! The `[[routes]]` tables of the `--config` file (their keys are in
//! `cli::file`) resolved into checked [`Route`]s. Every error names the
//! route and the line of its table.

use std::path::Path;
use std::time::Duration;

use anyhow::bail;

use crate::cli::file::{RouteFile, RouteHeader, RouteOAuth2, MAX_WAIT_SECS};
use crate::portal::http_dispatch::tls::ApiTls;
use crate::portal::http_dispatch::token_cache::{
    parse_assertion_alg, AssertionSigner, AuthMethod, ClientCredentials, OAuthConfig,
};
use crate::portal::routes::{shadowed, Route, RouteAuth, DEFAULT_ROUTE};
use crate::util::file_read::{self, Kind};

/// What a route takes from the portal-wide settings when it does not say.
pub(crate) struct Inherited<'a> {
    /// `PORTAL_ALLOWED_HEADERS`, lower-case.
    pub(crate) allowed_headers: &'a [String],
    /// `PORTAL_REQUEST_TIMEOUT_SECS`.
    pub(crate) timeout: Duration,
    /// `PORTAL_MAX_BODY_BYTES`; no route may take more.
    pub(crate) max_body_bytes: u64,
    /// `PORTAL_MAX_CONCURRENT_JOBS`; no route may call more at once.
    pub(crate) max_concurrent_jobs: usize,
    /// `PORTAL_CA_FILE`, trusted by a route without `[routes.tls]`.
    pub(crate) ca_file: Option<&'a Path>,
    /// `PORTAL_TOKEN_REFRESH_STATUSES`.
    pub(crate) refresh_statuses: &'a [hyper::StatusCode],
}

/// Resolves and checks the listed routes, in order; a route that can never
/// be chosen (an earlier one has its pattern and one of its methods) is an
/// error naming both.
pub(crate) fn resolve_routes(
    files: &[RouteFile],
    inh: &Inherited<'_>,
) -> anyhow::Result<Vec<Route>> {
    let mut routes: Vec<Route> = Vec::with_capacity(files.len());
    // Made once: loading the system roots for every route costs time.
    let mut shared_tls: Option<ApiTls> = None;
    for f in files {
        let at = match f.line {
            Some(n) => format!("route '{}' (line {n})", f.name.escape_debug()),
            None => format!("route '{}'", f.name.escape_debug()),
        };
        let route =
            resolve_route(f, inh, &mut shared_tls).map_err(|e| anyhow::anyhow!("{at}: {e:#}"))?;
        if let Some(first) = routes.iter().find(|r| r.name == route.name) {
            bail!("{at}: the name is taken by {}", first.label());
        }
        routes.push(route);
    }
    if let Some((earlier, later)) = shadowed(&routes) {
        bail!(
            "{}: it can never be chosen: {} comes first and takes every request it could (pattern '{}' covers '{}', and every method of it); the first route that matches takes a request, so list the narrower route first",
            later.label(),
            earlier.label(),
            earlier.rule.pattern,
            later.rule.pattern
        );
    }
    Ok(routes)
}

fn resolve_route(
    f: &RouteFile,
    inh: &Inherited<'_>,
    shared_tls: &mut Option<ApiTls>,
) -> anyhow::Result<Route> {
    let name = f.name.trim();
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        bail!("name: use 1 to 64 letters, digits, '-', '_' or '.'");
    }
    if name == DEFAULT_ROUTE {
        bail!("name: '{DEFAULT_ROUTE}' is the route PORTAL_TARGET_API_URL defines; choose another");
    }
    let rule = match_rule(&f.methods, &f.path_match)?;
    let target = check_target(&f.target)?;
    let strip_prefix = f
        .strip_prefix
        .as_deref()
        .map(check_strip_prefix)
        .transpose()?;
    if let Some(prefix) = &strip_prefix {
        // A prefix no path of the pattern can start with is never
        // stripped: a mistake, not a choice. The pattern's whole segments
        // before its first wildcard and the prefix must be one within the other.
        let literal = rule.pattern.split('*').next().unwrap_or_default();
        let whole = &literal[..literal.rfind('/').unwrap_or(0)];
        let within = |a: &str, b: &str| {
            b.strip_prefix(a)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        let whole = if rule.pattern.contains('*') {
            whole
        } else {
            rule.pattern.as_str()
        };
        if !within(prefix, whole) && !within(whole, prefix) {
            bail!(
                "strip_prefix: '{}' is not where the paths of match '{}' start; a request's path loses the prefix only when it starts with it",
                prefix.escape_debug(),
                rule.pattern.escape_debug()
            );
        }
    }
    let allowed_headers = match &f.allowed_headers {
        None => inh.allowed_headers.to_vec(),
        Some(list) => {
            let names: Vec<String> = list
                .split(',')
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect();
            if let Some(bad) = names
                .iter()
                .find(|h| hyper::header::HeaderName::from_bytes(h.as_bytes()).is_err())
            {
                bail!("allowed_headers: '{bad}' is not a valid header name");
            }
            names
        }
    };
    let timeout = match f.timeout_secs {
        None => inh.timeout,
        Some(t) if (1..=MAX_WAIT_SECS).contains(&t) => Duration::from_secs(t),
        Some(t) => bail!("timeout_secs must be between 1 and {MAX_WAIT_SECS}, not {t}"),
    };
    let max_body_bytes = match f.max_body_bytes {
        None => inh.max_body_bytes,
        Some(b) if (1..=inh.max_body_bytes).contains(&b) => b,
        Some(b) => bail!(
            "max_body_bytes must be between 1 and PORTAL_MAX_BODY_BYTES ({}), not {b}",
            inh.max_body_bytes
        ),
    };
    let max_concurrent_jobs = match f.max_concurrent_jobs {
        None => inh.max_concurrent_jobs,
        Some(n) if (1..=inh.max_concurrent_jobs).contains(&n) => n,
        Some(n) => bail!(
            "max_concurrent_jobs must be between 1 and PORTAL_MAX_CONCURRENT_JOBS ({}), not {n}",
            inh.max_concurrent_jobs
        ),
    };
    let auth = match (&f.oauth2, &f.header) {
        (Some(_), Some(_)) => {
            bail!("[routes.oauth2] and [routes.header] are both set; a route has one of them")
        }
        (Some(o), None) => RouteAuth::OAuth2(resolve_oauth2(o, inh.refresh_statuses)?),
        (None, Some(h)) => resolve_header(h)?,
        (None, None) => RouteAuth::None,
    };
    let tls = match &f.tls {
        Some(t) => ApiTls::load(
            t.ca_file.as_deref(),
            t.client_cert_file.as_deref(),
            t.client_key_file.as_deref(),
        )
        .map_err(|e| {
            let key = match e.setting {
                "PORTAL_CLIENT_CERT_FILE" => "client_cert_file",
                "PORTAL_CLIENT_KEY_FILE" => "client_key_file",
                _ => "ca_file",
            };
            // The detail may name the portal-wide settings the checks share.
            let detail = e
                .detail
                .replace("PORTAL_CLIENT_CERT_FILE", "client_cert_file")
                .replace("PORTAL_CLIENT_KEY_FILE", "client_key_file")
                .replace("PORTAL_CA_FILE", "ca_file");
            anyhow::anyhow!("[routes.tls] {key}: {detail}")
        })?,
        None => match shared_tls {
            Some(t) => t.clone(),
            None => {
                // The default route's client certificate is its own
                // credential, never shown to another route's host.
                let t = ApiTls::load(inh.ca_file, None, None)?;
                *shared_tls = Some(t.clone());
                t
            }
        },
    };
    Ok(Route {
        name: name.to_string(),
        line: f.line,
        rule,
        target,
        strip_prefix,
        allowed_headers,
        timeout,
        max_body_bytes,
        max_concurrent_jobs,
        auth,
        tls,
    })
}

/// `match` and `methods` as one endpoint rule, with the syntax and checks
/// of `PORTAL_ALLOWED_ENDPOINTS`.
fn match_rule(
    methods: &[String],
    pattern: &str,
) -> anyhow::Result<crate::portal::policy::EndpointRule> {
    let pattern = pattern.trim();
    if !pattern.starts_with('/') || pattern.contains([',', ' ', '\t']) {
        bail!("match: '{}' is not a path pattern; write one pattern starting with '/', e.g. '/api/orders/**'", pattern.escape_debug());
    }
    if let Some(bad) = methods
        .iter()
        .find(|m| m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()))
    {
        bail!("methods: '{}' is not an HTTP method", bad.escape_debug());
    }
    let spec = if methods.is_empty() {
        pattern.to_string()
    } else {
        format!("{} {pattern}", methods.join(","))
    };
    let mut rules = crate::portal::policy::parse_endpoints(&spec)
        .map_err(|e| anyhow::anyhow!("match/methods: {e}"))?;
    match (rules.pop(), rules.is_empty()) {
        (Some(rule), true) => Ok(rule),
        _ => bail!(
            "match: '{}' is not one path pattern",
            pattern.escape_debug()
        ),
    }
}

/// A route's `target`: an http(s) URL with a host, no credentials, query
/// or fragment; returned without a trailing slash.
pub(crate) fn check_target(target: &str) -> anyhow::Result<String> {
    let uri = parse_url(
        "target",
        target,
        "give credentials in [routes.oauth2] or [routes.header]",
    )?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        bail!("target: '{target}' must be an http:// or https:// URL with a host");
    }
    if uri.query().is_some() || target.contains('#') {
        bail!("target: '{target}' must not have a query string or fragment");
    }
    Ok(target.trim_end_matches('/').to_string())
}

/// A `strip_prefix`: a plain path of whole segments, no trailing '/'.
pub(crate) fn check_strip_prefix(prefix: &str) -> anyhow::Result<String> {
    let plain = prefix.len() > 1
        && prefix.starts_with('/')
        && !prefix.ends_with('/')
        && !prefix.contains(['*', '?', '#', '%', '\\'])
        && crate::portal::policy::validate_path(prefix).is_ok();
    if !plain {
        bail!(
            "strip_prefix: '{}' must be a path such as '/orders': starting with '/', not ending with it, without '*', '?', '#', '%' or dot segments",
            prefix.escape_debug()
        );
    }
    Ok(prefix.to_string())
}

fn resolve_oauth2(
    o: &RouteOAuth2,
    refresh_statuses: &[hyper::StatusCode],
) -> anyhow::Result<OAuthConfig> {
    let given = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
    let secret = match (given(&o.client_secret), &o.client_secret_file) {
        (Some(_), Some(_)) => {
            bail!("[routes.oauth2] client_secret and client_secret_file are both set; use one")
        }
        (Some(s), None) => Some(s),
        (None, Some(path)) => Some(read_secret("[routes.oauth2] client_secret_file", path)?),
        (None, None) => None,
    };
    let key_file = o.client_assertion_key_file.clone();
    let method = match given(&o.auth_method) {
        Some(m) => m
            .parse::<AuthMethod>()
            .map_err(|e| anyhow::anyhow!("[routes.oauth2] auth_method: {e}"))?,
        None if key_file.is_some() => AuthMethod::PrivateKeyJwt,
        None => AuthMethod::ClientSecretBasic,
    };
    let mut missing = Vec::new();
    let url = given(&o.token_url);
    let id = given(&o.client_id);
    if url.is_none() {
        missing.push("token_url");
    }
    if id.is_none() {
        missing.push("client_id");
    }
    match method {
        AuthMethod::PrivateKeyJwt if key_file.is_none() => {
            missing.push("client_assertion_key_file")
        }
        AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost if secret.is_none() => {
            missing.push("client_secret (or client_secret_file)")
        }
        _ => {}
    }
    if !missing.is_empty() {
        bail!("[routes.oauth2] lacks {}", missing.join(", "));
    }
    if key_file.is_some() && method != AuthMethod::PrivateKeyJwt {
        bail!("[routes.oauth2] client_assertion_key_file is set but auth_method is not private_key_jwt");
    }
    if secret.is_some() && method == AuthMethod::PrivateKeyJwt {
        bail!(
            "[routes.oauth2] a client secret is set but auth_method is private_key_jwt; remove one"
        );
    }
    let url = url.unwrap_or_default();
    let uri = parse_url(
        "[routes.oauth2] token_url",
        &url,
        "give them as client_id and client_secret",
    )?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        bail!("[routes.oauth2] token_url: '{url}' must be an http:// or https:// URL with a host");
    }
    let credentials = match (method, key_file) {
        (AuthMethod::PrivateKeyJwt, Some(path)) => {
            let alg = given(&o.client_assertion_alg)
                .map(|a| parse_assertion_alg(&a))
                .transpose()?;
            let audience = given(&o.client_assertion_audience).unwrap_or_else(|| url.clone());
            let pem = file_read::read(
                "[routes.oauth2] client_assertion_key_file",
                &path,
                Kind::Key,
            )?;
            ClientCredentials::PrivateKeyJwt(AssertionSigner::from_pem(
                &pem,
                alg,
                given(&o.client_assertion_kid),
                audience,
            )?)
        }
        (AuthMethod::ClientSecretPost, _) => {
            ClientCredentials::SecretPost(secret.unwrap_or_default())
        }
        _ => ClientCredentials::SecretBasic(secret.unwrap_or_default()),
    };
    Ok(OAuthConfig {
        token_url: url,
        client_id: id.unwrap_or_default(),
        credentials,
        scope: given(&o.scope),
        audience: given(&o.audience),
        refresh_statuses: refresh_statuses.to_vec(),
        timeout: Duration::from_secs(30),
    })
}

/// Headers the portal writes itself, which a route's static header may
/// not replace: they frame the request or name its host.
const FRAMING_HEADERS: [&str; 7] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "trailer",
    "upgrade",
];

fn resolve_header(h: &RouteHeader) -> anyhow::Result<RouteAuth> {
    if hyper::header::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
        bail!(
            "[routes.header] name: '{}' is not a header name",
            h.name.escape_debug()
        );
    }
    if FRAMING_HEADERS.contains(&h.name.to_ascii_lowercase().as_str()) {
        bail!(
            "[routes.header] name: '{}' frames the request and is the portal's to write; use a header such as Authorization or X-Api-Key",
            h.name
        );
    }
    let value = read_secret("[routes.header] value_file", &h.value_file)?;
    if hyper::header::HeaderValue::from_str(&value).is_err() {
        bail!(
            "[routes.header] value_file: {} does not hold one line of visible ASCII",
            h.value_file.display()
        );
    }
    Ok(RouteAuth::Header {
        name: h.name.clone(),
        value,
    })
}

/// A secret file's text without its final line break; never quoted in errors.
fn read_secret(setting: &'static str, path: &Path) -> anyhow::Result<String> {
    let bytes = file_read::read(setting, path, Kind::Key)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{setting}: {} is not UTF-8 text", path.display()))?;
    let value = text.trim_end_matches(['\r', '\n']).to_string();
    if value.is_empty() {
        bail!("{setting}: {} is empty", path.display());
    }
    Ok(value)
}

/// The URL of `setting`, refused when it holds credentials (`user@host`,
/// `instead` says what to do) before any message could quote them.
pub(crate) fn parse_url(setting: &str, url: &str, instead: &str) -> anyhow::Result<hyper::Uri> {
    let uri: hyper::Uri = url.parse().map_err(|e| {
        let shown = without_userinfo(url);
        anyhow::anyhow!("{setting}: '{shown}' is not a URL: {e}")
    })?;
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        bail!("{setting} must not hold credentials (user@host); {instead}");
    }
    Ok(uri)
}

/// `url` with any `user:password@` before its host replaced by `***@`, for
/// messages and `config show`; text without `://` is returned as is.
pub fn without_userinfo(url: &str) -> std::borrow::Cow<'_, str> {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.into();
    };
    let rest = &url[start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_len].rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &url[start + at..]).into(),
        None => url.into(),
    }
}
