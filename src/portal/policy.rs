//! What the portal lets through to the API: which endpoints, which methods,
//! which headers, and which paths are safe to join to the target URL.
//!
//! Anyone who can write the request topic can ask the portal to call the API
//! with the portal's identity, so every start record passes [`Policy::check`]
//! before its body is assembled. Path safety and header stripping hold
//! whatever the settings say; the endpoint allow-list is enforced in strict
//! mode (the default) and only logged when strict mode is off.

use hyper::header::{HeaderName, HeaderValue};
use unicode_normalization::UnicodeNormalization as _;

use crate::protocol::request::{never_forwarded, MAX_PATH_BYTES};
use crate::protocol::wire::{JobId, RequestStart};
use crate::protocol::Failure;

/// Methods refused whatever the allow-list says: `TRACE` (and IIS's `TRACK`)
/// would echo the portal's `Authorization` header back to the sender,
/// `CONNECT` opens a tunnel.
const FORBIDDEN_METHODS: &[&str] = &["TRACE", "TRACK", "CONNECT"];

/// One entry of `PORTAL_ALLOWED_ENDPOINTS`: optional methods and a path glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRule {
    /// Upper-case methods allowed; empty allows every method.
    pub methods: Vec<String>,
    /// Path pattern: `*` matches within one segment, `**` across segments;
    /// a pattern ending in `/**` also matches the path without that suffix.
    pub pattern: String,
}

impl EndpointRule {
    fn allows(&self, method: &str, path: &str) -> bool {
        let base = self.pattern.strip_suffix("/**");
        (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
            && (glob_match(self.pattern.as_bytes(), path.as_bytes())
                || base.is_some_and(|b| glob_match(b.as_bytes(), path.as_bytes())))
    }
}

impl std::fmt::Display for EndpointRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.methods.is_empty() {
            f.write_str(&self.pattern)
        } else {
            write!(f, "{} {}", self.methods.join(","), self.pattern)
        }
    }
}

/// Parses `PORTAL_ALLOWED_ENDPOINTS`: comma-separated patterns, each
/// optionally preceded by methods, e.g. `POST /api/upload, GET,DELETE /api/items/*`.
pub fn parse_endpoints(spec: &str) -> Result<Vec<EndpointRule>, String> {
    let mut rules = Vec::new();
    let mut methods: Vec<String> = Vec::new();
    for piece in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let pattern = match piece.split_once(char::is_whitespace) {
            Some((method, pattern)) => {
                methods.push(parse_method(method)?);
                pattern.trim()
            }
            None if piece.starts_with('/') => piece,
            None => {
                methods.push(parse_method(piece)?);
                continue;
            }
        };
        if !pattern.starts_with('/') || pattern.contains(char::is_whitespace) {
            return Err(format!(
                "'{pattern}' is not a path pattern; patterns start with '/' (e.g. 'POST /api/upload')"
            ));
        }
        if pattern.contains('?') {
            return Err(format!(
                "'{pattern}': patterns match the path only; leave the query out"
            ));
        }
        let named = std::mem::take(&mut methods);
        let methods = if named.iter().any(|m| m == "*") {
            Vec::new()
        } else {
            named
        };
        rules.push(EndpointRule {
            methods,
            pattern: pattern.to_string(),
        });
    }
    if !methods.is_empty() {
        return Err(format!(
            "methods {} are not followed by a path pattern",
            methods.join(",")
        ));
    }
    Ok(rules)
}

fn parse_method(m: &str) -> Result<String, String> {
    let upper = m.trim().to_ascii_uppercase();
    if upper == "*" || (!upper.is_empty() && upper.bytes().all(|b| b.is_ascii_uppercase())) {
        Ok(upper)
    } else {
        Err(format!("'{m}' is not an HTTP method"))
    }
}

/// Matches `path` against a glob where `*` stands for any run of characters
/// other than `/` and `**` for any run at all. Linear in the product of the
/// lengths, so a hostile path cannot make it backtrack exponentially.
fn glob_match(pattern: &[u8], path: &[u8]) -> bool {
    // reach[j]: the pattern prefix consumed so far can match path[..j].
    let mut reach = vec![false; path.len() + 1];
    reach[0] = true;
    let mut i = 0;
    while i < pattern.len() {
        let mut next = vec![false; path.len() + 1];
        if pattern[i] == b'*' {
            let cross = pattern.get(i + 1) == Some(&b'*');
            let mut open = false;
            for j in 0..=path.len() {
                if reach[j] {
                    open = true;
                }
                next[j] = open;
                if j < path.len() && path[j] == b'/' && !cross {
                    open = false;
                }
            }
            i += if cross { 2 } else { 1 };
        } else {
            for j in 0..path.len() {
                next[j + 1] = reach[j] && path[j] == pattern[i];
            }
            i += 1;
        }
        reach = next;
    }
    reach[path.len()]
}

/// The portal's request policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Endpoints allowed; empty allows none in strict mode.
    pub endpoints: Vec<EndpointRule>,
    /// Refuse what the endpoint allow-list does not name (otherwise log it).
    pub strict: bool,
    /// Lower-case names of the request headers forwarded.
    pub allowed_headers: Vec<String>,
    /// Most headers one request may carry.
    pub max_header_count: usize,
    /// Most bytes of header names and values one request may carry.
    pub max_header_bytes: usize,
}

/// Request headers forwarded to the API unless `PORTAL_ALLOWED_HEADERS` says otherwise.
pub const DEFAULT_ALLOWED_HEADERS: &str = "Content-Type,Accept,X-Request-ID,X-Correlation-ID";

impl Default for Policy {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            strict: true,
            allowed_headers: DEFAULT_ALLOWED_HEADERS
                .split(',')
                .map(str::to_ascii_lowercase)
                .collect(),
            max_header_count: 64,
            max_header_bytes: 16 * 1024,
        }
    }
}

impl Policy {
    /// Decides whether the request a start record describes may reach the API.
    pub fn check(&self, job: JobId, start: &RequestStart) -> Result<(), Failure> {
        let method = start.method.as_str();
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(Failure::bad_request(format!(
                "'{}' is not an HTTP method (upper-case letters only)",
                method.escape_debug()
            )));
        }
        if FORBIDDEN_METHODS.contains(&method) {
            return Err(Failure::rejected(format!(
                "method {method} is never forwarded"
            )));
        }
        validate_path(&start.path)?;
        self.check_headers(&start.headers)?;
        let path = start.path.split('?').next().unwrap_or(&start.path);
        if !self.endpoints.iter().any(|r| r.allows(method, path)) {
            let why = if self.endpoints.is_empty() {
                "PORTAL_ALLOWED_ENDPOINTS is empty".to_string()
            } else {
                "it is not in PORTAL_ALLOWED_ENDPOINTS".to_string()
            };
            if self.strict {
                return Err(Failure::rejected(format!(
                    "{method} {path} is not allowed: {why}"
                )));
            }
            log::warn!(
                "job {job}: {method} {path} let through although {why} (PORTAL_STRICT_SECURITY=false)"
            );
        }
        Ok(())
    }

    fn check_headers(&self, headers: &[(String, String)]) -> Result<(), Failure> {
        if headers.len() > self.max_header_count {
            return Err(Failure::rejected(format!(
                "request has {} headers; the portal accepts at most {} (PORTAL_MAX_HEADER_COUNT)",
                headers.len(),
                self.max_header_count
            )));
        }
        let bytes: usize = headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        if bytes > self.max_header_bytes {
            return Err(Failure::rejected(format!(
                "request headers take {bytes} bytes; the portal accepts at most {} (PORTAL_MAX_HEADER_BYTES)",
                self.max_header_bytes
            )));
        }
        for (name, value) in headers {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(Failure::bad_request(format!(
                    "header name '{}' is not a valid HTTP header name",
                    name.escape_debug()
                )));
            }
            if HeaderValue::from_str(value).is_err() {
                return Err(Failure::bad_request(format!(
                    "header '{name}' has a value that is not valid in HTTP (control characters?)"
                )));
            }
        }
        Ok(())
    }

    /// Says loudly at start what the policy allows.
    pub fn announce(&self) {
        if self.endpoints.is_empty() && self.strict {
            log::error!(
                "PORTAL_ALLOWED_ENDPOINTS is empty and PORTAL_STRICT_SECURITY=true: every request will be refused. Set PORTAL_ALLOWED_ENDPOINTS, e.g. 'POST /api/upload, GET /api/items/*'"
            );
        } else if !self.strict {
            log::warn!(
                "PORTAL_STRICT_SECURITY=false: requests outside PORTAL_ALLOWED_ENDPOINTS are logged and let through"
            );
        }
        if !self.endpoints.is_empty() {
            let list: Vec<String> = self.endpoints.iter().map(ToString::to_string).collect();
            log::info!("allowed endpoints: {}", list.join(", "));
        }
        let useless: Vec<&str> = self
            .allowed_headers
            .iter()
            .map(String::as_str)
            .filter(|h| never_forwarded(h))
            .collect();
        if !useless.is_empty() {
            log::warn!(
                "PORTAL_ALLOWED_HEADERS lists {}, which will never be forwarded: credentials, routing and framing headers are always stripped (and kafkasend send does not even write them to Kafka)",
                useless.join(", ")
            );
        }
    }
}

/// Whether a header named `name` is forwarded under the allow-list
/// `allowed` (lower-case names): never for the always-stripped ones.
pub fn forwards(name: &str, allowed: &[String]) -> bool {
    !never_forwarded(name) && allowed.contains(&name.to_ascii_lowercase())
}

/// Checks that a request path is a plain absolute path with an optional
/// query that, joined to the target URL, stays on the target's origin and
/// under its base path.
pub fn validate_path(path: &str) -> Result<(), Failure> {
    let reject = |why: &str| {
        let shown: String = path.chars().take(200).collect();
        Err(Failure::rejected(format!(
            "endpoint '{}' refused: {why}",
            shown.escape_debug()
        )))
    };
    if path.len() > MAX_PATH_BYTES {
        return reject(&format!("it is longer than {MAX_PATH_BYTES} bytes"));
    }
    if !path.starts_with('/') {
        return reject("it must be a path starting with '/', not a URL");
    }
    if path.starts_with("//") {
        return reject("it names another host");
    }
    if !path.is_ascii() {
        return reject("it contains non-ASCII characters; percent-encode them");
    }
    if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return reject("it contains control characters or spaces");
    }
    if path.contains('\\') || path.contains('#') {
        return reject("it contains '\\' or '#'");
    }
    if path.parse::<hyper::http::uri::PathAndQuery>().is_err() {
        return reject("it has characters a URI path cannot hold (percent-encode them)");
    }
    let only_path = path.split('?').next().unwrap_or(path);
    let decoded = match percent_decode(only_path) {
        Ok(d) => d,
        Err(why) => return reject(why),
    };
    if decoded.contains(&b'%') {
        return reject("it contains doubly encoded characters");
    }
    if decoded
        .iter()
        .any(|&b| b.is_ascii_control() || b == b'\\' || b == b'#' || b == b'?')
    {
        return reject("it contains an encoded control character, backslash, '#' or '?'");
    }
    if only_path.to_ascii_lowercase().contains("%2f") {
        // Servers that decode before routing would see another path than
        // the allow-list matched.
        return reject("it contains an encoded '/' (%2F)");
    }
    if only_path.contains("//") {
        return reject("it contains an empty segment ('//')");
    }
    // Overlong encodings are not UTF-8.
    let Ok(text) = std::str::from_utf8(&decoded) else {
        return reject("it contains percent-encoded bytes that are not UTF-8 (overlong forms?)");
    };
    // ASCII controls were refused above; this catches C1 ones such as NEL.
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return reject(&format!(
            "it contains an encoded control character (U+{:04X})",
            u32::from(c)
        ));
    }
    if let Some((c, seen_as)) = text.chars().find_map(|c| lookalike(c).map(|l| (c, l))) {
        return reject(&format!(
            "it contains an encoded look-alike of path syntax: U+{:04X}, {seen_as}",
            u32::from(c)
        ));
    }
    // `..;x` is a dot segment to servers that strip path parameters, and
    // `.. ` or `...` to servers that trim trailing dots and spaces.
    if text
        .split('/')
        .map(|seg| seg.split(';').next().unwrap_or(seg))
        .any(|seg| seg.contains('.') && seg.trim_end_matches([' ', '.']).is_empty())
    {
        return reject("it contains dot segments ('.' or '..'), also when encoded");
    }
    if path.split('?').skip(1).any(|q| percent_decode(q).is_err()) {
        return reject("its query has malformed percent-encoding");
    }
    Ok(())
}

/// Characters that mean something in a path once decoded: segments, dot
/// segments, escapes, query and fragment, path parameters (`..;x`) and the
/// trailing spaces some servers trim (`.. `).
const PATH_SYNTAX: &[char] = &['.', '/', '\\', '%', '?', '#', ';', ' '];

/// Look-alikes of `/` and `\` that NFKC leaves as they are, each with the
/// character it passes for.
const CONFUSABLES: &[(char, char)] = &[
    ('\u{2215}', '/'),
    ('\u{2044}', '/'),
    ('\u{29F8}', '/'),
    ('\u{29F5}', '\\'),
];

/// How a non-ASCII character could pass for path syntax, if it could.
///
/// A server that applies Unicode compatibility normalisation (NFKC) before
/// routing would see U+FE30 as `..` and U+2100 as `a/c`, a path other than
/// the one the allow-list matched. Matching the normalised path instead
/// would only help if the portal also forwarded it normalised (a server that
/// does not normalise sees the path as sent), and that would rewrite
/// legitimate names (NFKC turns `ﬁ` into `fi`, `²` into `2`). Refusing just
/// the characters that fold into path syntax leaves every other path as it
/// came and is safe with servers of both kinds.
fn lookalike(c: char) -> Option<String> {
    if c.is_ascii() {
        return None;
    }
    if let Some((_, like)) = CONFUSABLES.iter().find(|(l, _)| *l == c) {
        return Some(format!("which looks like '{like}'"));
    }
    let folded: String = std::iter::once(c).nfkc().collect();
    // `½` folds into `1⁄2`, whose fraction slash is itself a look-alike.
    let confusable = folded
        .chars()
        .any(|f| CONFUSABLES.iter().any(|(l, _)| *l == f));
    (folded.contains(PATH_SYNTAX) || confusable).then(|| {
        format!(
            "which Unicode normalisation (NFKC) turns into '{}'",
            folded.escape_debug()
        )
    })
}

/// Decodes `%XX` escapes once; `%` not followed by two hex digits is an error.
fn percent_decode(s: &str) -> Result<Vec<u8>, &'static str> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |b: u8| (b as char).to_digit(16);
            match (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                _ => return Err("it has malformed percent-encoding"),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::request::ALWAYS_STRIPPED;
    use crate::protocol::ErrorCategory;

    /// Paths an attacker might send, each with the reason it must be refused.
    const HOSTILE_PATHS: &[(&str, &str)] = &[
        ("", "must be a path"),
        ("api/upload", "must be a path"),
        ("http://evil.example/x", "must be a path"),
        ("https://user:pw@evil.example/", "must be a path"),
        ("user@evil.example/x", "must be a path"),
        ("//evil.example/x", "another host"),
        ("///evil.example/x", "another host"),
        ("/a/../b", "dot segments"),
        ("/..", "dot segments"),
        ("/a/./b", "dot segments"),
        ("/a/..;/admin", "dot segments"),
        ("/a/.;x/b", "dot segments"),
        ("/a/%2e%2e/b", "dot segments"),
        ("/a/%2E%2E/b", "dot segments"),
        ("/a/.%2e/b", "dot segments"),
        ("/a/%2e./b", "dot segments"),
        ("/a/%2e%2e%2fb", "encoded '/'"),
        ("/a%2f..%2fadmin", "encoded '/'"),
        ("/a/..%20/b", "dot segments"),
        ("/a/.../b", "dot segments"),
        ("/api/items/7%2Fsecret", "encoded '/'"),
        ("/a/b<c", "a URI path cannot hold"),
        ("/a/%e2%80%a5/b", "look-alike"),
        ("/a/%e2%80%a4%e2%80%a4/b", "look-alike"),
        ("/a/%ef%b9%92%ef%b9%92/b", "look-alike"),
        ("/a/%ef%bc%bcb", "look-alike"),
        ("/a/%f0%80%80%ae%f0%80%80%ae/b", "not UTF-8"),
        ("/a//b", "empty segment"),
        ("/%252e%252e/x", "doubly encoded"),
        ("/a/%25%32%65%25%32%65/x", "doubly encoded"),
        ("/a\\..\\b", "'\\'"),
        ("/a/..%5cadmin", "encoded control character, backslash"),
        ("/a/%5c%5cevil", "encoded control character, backslash"),
        ("/a\r\nHost: evil", "control characters"),
        ("/a%0d%0aHost:%20evil", "encoded control character"),
        ("/a%00.json", "encoded control character"),
        ("/a\0b", "control characters"),
        ("/a\tb", "control characters"),
        ("/a b", "control characters or spaces"),
        ("/a\x7fb", "control characters"),
        ("/a#fragment", "'#'"),
        ("/a%23/b", "'#' or '?'"),
        ("/a%3fx=1", "'#' or '?'"),
        ("/a/%2f%2fevil.example", "encoded '/'"),
        ("/a/%c0%ae%c0%ae/b", "not UTF-8"),
        ("/a/%e0%80%ae%e0%80%ae/b", "not UTF-8"),
        ("/a/%ef%bc%8e%ef%bc%8e/b", "look-alike"),
        ("/a/%c0%afetc", "not UTF-8"),
        ("/a/%zz", "malformed percent-encoding"),
        ("/a/%2", "malformed percent-encoding"),
        ("/a/%u002e%u002e/b", "malformed percent-encoding"),
        ("/a?q=%zz", "malformed percent-encoding"),
        ("/caf\u{e9}", "non-ASCII"),
        ("/a/\u{ff0e}\u{ff0e}/b", "non-ASCII"),
        // Compatibility forms NFKC folds into path syntax: U+FE30 is `..`,
        // U+FE19 `...`, U+2100 `a/c`, U+2488 `1.`, U+FE54 `;`, U+00A0 and
        // U+3000 a space, U+FF05 `%`, U+FF1F `?`, U+FE5F `#`.
        ("/api/%EF%B8%B0", "look-alike"),
        ("/api/%ef%b8%99", "look-alike"),
        ("/api/x%E2%84%80admin", "look-alike"),
        ("/a/%E2%92%88/b", "look-alike"),
        ("/a/..%EF%B9%94x/b", "look-alike"),
        ("/a/..%C2%A0/b", "look-alike"),
        ("/a/..%E3%80%80/b", "look-alike"),
        ("/a/%EF%BC%852e%EF%BC%852e/b", "look-alike"),
        ("/a/x%EF%BC%9Fy", "look-alike"),
        ("/a/x%EF%B9%9Fy", "look-alike"),
        // Look-alikes NFKC leaves alone.
        ("/a/%E2%88%95etc", "look-alike"),
        ("/a/x%E2%81%84y", "look-alike"),
        ("/a/%E2%A7%B8b", "look-alike"),
        // `½`, which NFKC turns into `1⁄2`, with the fraction slash above.
        ("/a/%C2%BD", "look-alike"),
        ("/a/%E2%A7%B5b", "look-alike"),
        // C1 controls: NEL ends a line for some parsers.
        ("/a%C2%85b", "control character (U+0085)"),
        ("/a%C2%9Bb", "control character (U+009B)"),
    ];

    #[test]
    fn hostile_paths_are_refused_with_the_reason() {
        assert!(HOSTILE_PATHS.len() >= 30);
        for (path, why) in HOSTILE_PATHS {
            match validate_path(path) {
                Ok(()) => panic!("{path:?} was accepted"),
                Err(r) => {
                    assert_eq!(r.category, ErrorCategory::Rejected, "{path:?}");
                    assert!(r.message.contains(why), "{path:?}: {}", r.message);
                }
            }
        }
        let long = format!("/{}", "a".repeat(MAX_PATH_BYTES));
        assert!(validate_path(&long).unwrap_err().message.contains("longer"));
    }

    #[test]
    fn ordinary_paths_pass() {
        for ok in [
            "/",
            "/api/upload",
            "/a/b?x=1&y=%20",
            "/files/report.v2.pdf",
            "/files/...hidden",
            "/files/v1.2..3",
            "/a/.well-known/x",
            "/users/@me",
            "/search?q=a/../b",
            "/caf%C3%A9",
            "/a;v=1/b",
            // NFKC changes these, but into nothing with meaning in a path.
            "/files/%EF%AC%81le",
            "/x%C2%B2",
            "/%E6%97%A5%E6%9C%AC/%F0%9F%93%84",
        ] {
            assert!(validate_path(ok).is_ok(), "{ok}: {:?}", validate_path(ok));
        }
    }

    /// Percent-encodes every byte of `c`'s UTF-8 form.
    fn encoded(c: char) -> String {
        c.to_string().bytes().map(|b| format!("%{b:02X}")).collect()
    }

    /// Every non-ASCII character whose NFKC form holds `.`, `/` or `\\`.
    fn folding_into_separators() -> Vec<char> {
        (0x80..=0x10FFFF_u32)
            .filter_map(char::from_u32)
            .filter(|c| {
                std::iter::once(*c)
                    .nfkc()
                    .any(|n| matches!(n, '.' | '/' | '\\'))
            })
            .collect()
    }

    #[test]
    fn the_named_look_alikes_are_among_the_folding_characters() {
        let all = folding_into_separators();
        for c in [
            '\u{FE30}', '\u{FE19}', '\u{2100}', '\u{FF0E}', '\u{FF0F}', '\u{FF3C}',
        ] {
            assert!(all.contains(&c), "U+{:04X}", u32::from(c));
        }
        assert!(all.len() > 30, "{}", all.len());
    }

    proptest::proptest! {
        #[test]
        fn characters_folding_into_separators_are_refused(
            c in proptest::sample::select(folding_into_separators()),
            before in "[a-z0-9]{0,3}",
            after in "[a-z0-9]{0,3}",
        ) {
            let enc = encoded(c);
            for path in [
                format!("/api/{before}{enc}{after}"),
                format!("/api/{enc}/x"),
                format!("/api/{before}{enc}{after}?q=1"),
            ] {
                let refused = validate_path(&path);
                proptest::prop_assert!(
                    refused.as_ref().is_err_and(|r| r.message.contains("look-alike")),
                    "{path}: {refused:?}"
                );
            }
            let raw = format!("/api/{before}{c}{after}");
            proptest::prop_assert!(validate_path(&raw).is_err(), "{raw}");
        }

        #[test]
        fn other_encoded_characters_pass(c in proptest::prelude::any::<char>()) {
            proptest::prop_assume!(!c.is_ascii());
            let folded: String = std::iter::once(c).nfkc().collect();
            let plain = !c.is_control()
                && !folded.contains(['.', '/', '\\', '%', '?', '#', ';', ' '])
                && !folded.contains(['\u{2215}', '\u{2044}', '\u{29F8}', '\u{29F5}']);
            let path = format!("/api/x{}y", encoded(c));
            proptest::prop_assert_eq!(validate_path(&path).is_ok(), plain, "{}", path);
        }
    }

    #[test]
    fn endpoint_patterns_parse() {
        let rules = parse_endpoints("POST /api/upload, GET,DELETE /api/items/*, /health").unwrap();
        assert_eq!(
            rules,
            vec![
                EndpointRule {
                    methods: vec!["POST".into()],
                    pattern: "/api/upload".into()
                },
                EndpointRule {
                    methods: vec!["GET".into(), "DELETE".into()],
                    pattern: "/api/items/*".into()
                },
                EndpointRule {
                    methods: vec![],
                    pattern: "/health".into()
                },
            ]
        );
        assert_eq!(parse_endpoints(" ").unwrap(), vec![]);
        assert_eq!(
            parse_endpoints("* /x").unwrap()[0].methods,
            Vec::<String>::new()
        );
        for bad in [
            "POST",
            "GET,",
            "api/upload",
            "P0ST /x",
            "GET /x?y=1",
            "GET http://x/",
        ] {
            assert!(parse_endpoints(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn globs_match_segments_and_subtrees() {
        let cases: &[(&str, &str, bool)] = &[
            ("/api/upload", "/api/upload", true),
            ("/api/upload", "/api/upload2", false),
            ("/api/upload", "/api/uploa", false),
            ("/api/items/*", "/api/items/42", true),
            ("/api/items/*", "/api/items/", true),
            ("/api/items/*", "/api/items/42/delete", false),
            ("/api/items/*/tags", "/api/items/42/tags", true),
            ("/api/**", "/api/a/b/c", true),
            ("/api/**", "/apix", false),
            ("/**", "/anything/at/all", true),
            ("/a*b", "/aXXb", true),
            ("/a*b", "/a/b", false),
            ("/*.pdf", "/x.pdf", true),
        ];
        for (pattern, path, want) in cases {
            assert_eq!(
                glob_match(pattern.as_bytes(), path.as_bytes()),
                *want,
                "{pattern} ~ {path}"
            );
        }
        // A pathological pattern stays fast.
        let path = format!("/{}", "a".repeat(8000));
        assert!(!glob_match(b"/*a*a*a*a*a*a*a*a*a*b", path.as_bytes()));
    }

    fn start(method: &str, path: &str, headers: &[(&str, &str)]) -> RequestStart {
        RequestStart {
            method: method.into(),
            path: path.into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body_len: None,
            has_body: false,
            reply_topic: "r".into(),
            reply_partition: 0,
        }
    }

    #[test]
    fn strict_policy_allows_only_what_it_names() {
        let policy = Policy {
            endpoints: parse_endpoints("POST /api/upload, GET /api/items/*").unwrap(),
            ..Policy::default()
        };
        let job = JobId::new();
        assert!(policy
            .check(job, &start("POST", "/api/upload", &[]))
            .is_ok());
        assert!(policy
            .check(job, &start("GET", "/api/items/7?full=1", &[]))
            .is_ok());
        for (m, p) in [
            ("GET", "/api/upload"),
            ("DELETE", "/api/items/7"),
            ("GET", "/api/items/7/secret"),
            ("POST", "/admin"),
        ] {
            let r = policy.check(job, &start(m, p, &[])).unwrap_err();
            assert_eq!(r.category, ErrorCategory::Rejected);
            assert!(r.message.contains("PORTAL_ALLOWED_ENDPOINTS"), "{r}");
        }
        let empty = Policy::default();
        let r = empty.check(job, &start("GET", "/", &[])).unwrap_err();
        assert!(r.message.contains("is empty"), "{r}");
        let lax = Policy {
            strict: false,
            ..Policy::default()
        };
        assert!(lax.check(job, &start("GET", "/anything", &[])).is_ok());
        // Path safety and forbidden methods hold in lax mode too.
        assert!(lax.check(job, &start("GET", "/a/../b", &[])).is_err());
        for m in ["TRACE", "TRACK", "CONNECT", "trace", "Get"] {
            assert!(lax.check(job, &start(m, "/", &[])).is_err(), "{m}");
        }
        let subtree = Policy {
            endpoints: parse_endpoints("GET /api/**").unwrap(),
            ..Policy::default()
        };
        assert!(subtree.check(job, &start("GET", "/api", &[])).is_ok());
        assert!(subtree.check(job, &start("GET", "/api/a/b", &[])).is_ok());
        assert!(subtree.check(job, &start("GET", "/apix", &[])).is_err());
        assert!(lax.check(job, &start("GE T", "/", &[])).is_err());
    }

    #[test]
    fn header_limits_and_validity() {
        let policy = Policy {
            strict: false,
            max_header_count: 3,
            max_header_bytes: 40,
            ..Policy::default()
        };
        let job = JobId::new();
        let four = [("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")];
        let r = policy.check(job, &start("GET", "/", &four)).unwrap_err();
        assert!(r.message.contains("PORTAL_MAX_HEADER_COUNT"), "{r}");
        let big = "x".repeat(50);
        let r = policy
            .check(job, &start("GET", "/", &[("a", big.as_str())]))
            .unwrap_err();
        assert!(r.message.contains("PORTAL_MAX_HEADER_BYTES"), "{r}");
        let r = policy
            .check(job, &start("GET", "/", &[("X-A", "1\r\nHost: evil")]))
            .unwrap_err();
        assert_eq!(r.category, ErrorCategory::BadRequest);
        let r = policy
            .check(job, &start("GET", "/", &[("Bad Name", "1")]))
            .unwrap_err();
        assert_eq!(r.category, ErrorCategory::BadRequest);
    }

    #[test]
    fn stripped_headers_never_pass_whatever_the_list() {
        let prefixed = ["x-forwarded-for", "x-forwarded-host", "proxy-foo"];
        // An allow-list that names every one of them, and Content-Type.
        let all: Vec<String> = ALWAYS_STRIPPED
            .iter()
            .chain(&prefixed)
            .chain(&["content-type"])
            .map(|s| s.to_string())
            .collect();
        for name in ALWAYS_STRIPPED.iter().chain(&prefixed) {
            assert!(!forwards(name, &all), "{name}");
            assert!(!forwards(&name.to_ascii_uppercase(), &all), "{name}");
        }
        // What the issue names, written out rather than taken from the
        // constant and listed as allowed, so dropping a name from the
        // constant fails here.
        let required = [
            "Authorization",
            "Proxy-Authorization",
            "Cookie",
            "Host",
            "X-Forwarded-For",
            "X-Forwarded-Host",
            "X-Forwarded-Proto",
            "X-Real-IP",
            "Connection",
            "Keep-Alive",
            "TE",
            "Trailer",
            "Upgrade",
            "Proxy-Connection",
            "Content-Length",
            "Transfer-Encoding",
        ];
        let listed: Vec<String> = required.iter().map(|n| n.to_ascii_lowercase()).collect();
        for name in required {
            assert!(!forwards(name, &listed), "{name}");
        }
        assert!(forwards("Content-Type", &all));
        assert!(!forwards("X-Other", &all));
    }
}
