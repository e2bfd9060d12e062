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

#[cfg(test)]
mod tests;

/// Methods refused whatever the allow-list says: `TRACE` (and IIS's `TRACK`)
/// would echo the portal's `Authorization` header back to the sender,
/// `CONNECT` opens a tunnel.
const FORBIDDEN_METHODS: &[&str] = &["TRACE", "TRACK", "CONNECT"];

/// One entry of `PORTAL_ALLOWED_ENDPOINTS`: optional methods and a path glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EndpointRule {
    /// Upper-case methods allowed; empty allows every method.
    pub(crate) methods: Vec<String>,
    /// Path pattern: `*` matches within one segment, `**` across segments;
    /// a pattern ending in `/**` also matches the path without that suffix.
    pub(crate) pattern: String,
}

impl EndpointRule {
    /// Whether the rule takes `method` on `path` (without its query).
    pub(crate) fn allows(&self, method: &str, path: &str) -> bool {
        let base = self.pattern.strip_suffix("/**");
        (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
            && (glob_match(self.pattern.as_bytes(), path.as_bytes())
                || base.is_some_and(|b| glob_match(b.as_bytes(), path.as_bytes())))
    }
}

impl EndpointRule {
    /// When this pattern means something else than the Python tool's
    /// shell-style one (whose `*` also matched `/`): what it matches now
    /// and how to write the old meaning.
    pub(crate) fn python_difference(&self) -> Option<String> {
        let p = self.pattern.as_bytes();
        let single = (0..p.len())
            .any(|i| p[i] == b'*' && (i == 0 || p[i - 1] != b'*') && p.get(i + 1) != Some(&b'*'));
        if !single {
            return None;
        }
        let old = python_meaning(&self.pattern);
        let methods = if self.methods.is_empty() {
            String::new()
        } else {
            format!("{} ", self.methods.join(","))
        };
        Some(format!(
            "PORTAL_ALLOWED_ENDPOINTS entry '{self}': its '*' matches within one path segment here, so it allows no deeper path (e.g. '/api/*' allows /api/a but not /api/a/b), while the Python tool's '*' also matched '/'; for that meaning write '{methods}{old}'"
        ))
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
pub(crate) fn parse_endpoints(spec: &str) -> Result<Vec<EndpointRule>, String> {
    let mut rules = Vec::new();
    let mut methods: Vec<String> = Vec::new();
    for piece in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let pattern = match piece.split_once(char::is_whitespace) {
            Some((method, pattern)) => {
                methods.push(parse_method(method)?);
                pattern.trim()
            }
            None if piece.starts_with('/') => piece,
            None if piece != "*" && piece.contains(['/', '*']) => {
                return Err(format!(
                    "'{piece}' is not a path pattern; patterns start with '/' (write {})",
                    slash_advice(piece)
                ));
            }
            None => {
                methods.push(parse_method(piece)?);
                continue;
            }
        };
        if !pattern.starts_with('/') || pattern.contains(char::is_whitespace) {
            let advice = if pattern.contains(char::is_whitespace) {
                "e.g. 'POST /api/upload'".to_string()
            } else {
                format!("write {}", slash_advice(pattern))
            };
            return Err(format!(
                "'{pattern}' is not a path pattern; patterns start with '/' ({advice})"
            ));
        }
        unsupported_glob(pattern)?;
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
    if methods.iter().any(|m| m == "*") {
        // The Python tool's way of allowing everything.
        return Err(
            "'*' alone is not a path pattern; patterns start with '/': to allow every path write '/**'"
                .into(),
        );
    }
    if !methods.is_empty() {
        return Err(format!(
            "methods {} are not followed by a path pattern",
            methods.join(",")
        ));
    }
    Ok(rules)
}

/// What to write for a pattern the Python tool took without its leading
/// `/`: its `*` also matched `/`, so `*.json` meant any path ending in
/// `.json`, here `/**.json`, and `*` alone every path, `/**`.
fn slash_advice(piece: &str) -> String {
    if piece == "*" {
        return "'/**'".into();
    }
    format!("'{}'", python_meaning(&format!("/{piece}")))
}

/// The pattern here that matches what the Python tool's fnmatch matched for
/// `pattern`: each single `*` doubled (so it crosses `/` again), and a
/// trailing `/*` written `/*/**`, because a pattern ending in `/**` also
/// matches the path above it, which the Python `/api/*` never did.
fn python_meaning(pattern: &str) -> String {
    let mut old = String::with_capacity(pattern.len() + 4);
    let mut rest = pattern;
    while let Some(at) = rest.find('*') {
        old.push_str(&rest[..at]);
        let run = rest[at..].bytes().take_while(|&b| b == b'*').count();
        old.push_str(if run == 1 { "**" } else { &rest[at..at + run] });
        rest = &rest[at + run..];
    }
    old.push_str(rest);
    if pattern.ends_with("/*") && !pattern.ends_with("/**") {
        old.truncate(old.len() - "/**".len());
        old.push_str("/*/**");
    }
    old
}

/// Refuses glob syntax the Python tool's shell-style patterns had and these
/// do not, rather than matching it literally: a pattern copied over must
/// not silently stop allowing what it allowed there.
fn unsupported_glob(pattern: &str) -> Result<(), String> {
    if pattern.contains('?') {
        return Err(format!(
            "'{pattern}': '?' is not supported: patterns match the path only (leave a query out), and there is no one-character wildcard; write '*' (any characters within one segment)"
        ));
    }
    if pattern.contains(['[', ']']) {
        return Err(format!(
            "'{pattern}': character classes ('[...]') are not supported; write one entry per path, or '*' (any characters within one segment)"
        ));
    }
    if pattern.contains(['{', '}']) {
        return Err(format!(
            "'{pattern}': alternatives ('{{a,b}}') are not supported; write one entry per alternative"
        ));
    }
    Ok(())
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
pub(crate) struct Policy {
    /// Endpoints allowed; empty allows none in strict mode.
    pub(crate) endpoints: Vec<EndpointRule>,
    /// Refuse what the endpoint allow-list does not name (otherwise log it).
    pub(crate) strict: bool,
    /// Lower-case names of the request headers forwarded.
    pub(crate) allowed_headers: Vec<String>,
    /// Most headers one request may carry.
    pub(crate) max_header_count: usize,
    /// Most bytes of header names and values one request may carry.
    pub(crate) max_header_bytes: usize,
}

/// Request headers forwarded to the API unless `PORTAL_ALLOWED_HEADERS` says otherwise.
pub(crate) const DEFAULT_ALLOWED_HEADERS: &str =
    "Content-Type,Accept,Accept-Encoding,User-Agent,X-Request-ID,X-Correlation-ID";

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
    /// [`Policy::check_as`] for a clear job.
    #[cfg(test)]
    pub(crate) fn check(&self, job: JobId, start: &RequestStart) -> Result<(), Failure> {
        self.check_as(job, start, false)
    }

    /// Decides whether the request a start record describes may reach the
    /// API; for a `sealed` job, its method and path stay out of the log.
    pub(crate) fn check_as(
        &self,
        job: JobId,
        start: &RequestStart,
        sealed: bool,
    ) -> Result<(), Failure> {
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
        self.check_content_type(start)?;
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
            if sealed {
                log::warn!(
                    "job {job} (sealed): its request let through although {why} (PORTAL_STRICT_SECURITY=false)"
                );
            } else {
                log::warn!(
                    "job {job}: {method} {path} let through although {why} (PORTAL_STRICT_SECURITY=false)"
                );
            }
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

    /// Checks the Content-Type the API will receive: for a request with a
    /// body it is the body's type and always forwarded, so it must be one
    /// well-formed media type; without a body only when the allow-list
    /// forwards it.
    fn check_content_type(&self, start: &RequestStart) -> Result<(), Failure> {
        if !(start.has_body || forwards(CONTENT_TYPE, &self.allowed_headers)) {
            return Ok(());
        }
        let mut types = start
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(CONTENT_TYPE))
            .map(|(_, v)| v.as_str());
        let Some(first) = types.next() else {
            return Ok(());
        };
        let more = types.count();
        if more > 0 {
            return Err(Failure::bad_request(format!(
                "the request has {} Content-Type headers; a body has one type, so send one",
                more + 1
            )));
        }
        crate::protocol::request::media_type(first).map_err(|why| {
            let shown: String = first.chars().take(200).collect();
            Failure::bad_request(format!(
                "Content-Type '{}' is not a valid media type: {why}",
                shown.escape_debug()
            ))
        })
    }

    /// Says loudly at start what the policy allows.
    pub(crate) fn announce(&self) {
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
        for rule in &self.endpoints {
            if let Some(note) = rule.python_difference() {
                log::warn!("{note}");
            }
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

/// The header that names a body's media type.
const CONTENT_TYPE: &str = "content-type";

/// Most bytes of header names reported back as not forwarded; the rest are
/// counted, not named.
pub(crate) const MAX_DROPPED_NAMES_BYTES: usize = 1024;

/// A request's headers sorted into those the API receives and the names of
/// those it does not.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct HeaderPlan<'a> {
    /// Headers forwarded, in the order sent.
    pub(crate) forward: Vec<(&'a str, &'a str)>,
    /// Names of the headers left out, each once, as the sender spelled it.
    pub(crate) dropped: Vec<&'a str>,
}

impl HeaderPlan<'_> {
    /// The dropped names as one line, `A, B`, at most
    /// [`MAX_DROPPED_NAMES_BYTES`] of names, then how many more; `None`
    /// when nothing was dropped.
    pub(crate) fn dropped_line(&self) -> Option<String> {
        let (&first, rest) = self.dropped.split_first()?;
        let mut line = first
            .chars()
            .take(MAX_DROPPED_NAMES_BYTES)
            .collect::<String>();
        let mut left = rest.len();
        for name in rest {
            if line.len() + 2 + name.len() > MAX_DROPPED_NAMES_BYTES {
                break;
            }
            line.push_str(", ");
            line.push_str(name);
            left -= 1;
        }
        if left > 0 {
            line.push_str(&format!(" and {left} more"));
        }
        Some(line)
    }
}

/// Sorts a request's headers: the body's Content-Type always passes with a
/// body (it is the body's, as the Python portal set it itself), the others
/// as the allow-list `allowed` says; `replaced`, the header the portal
/// fills itself (the idempotency key), never passes.
pub(crate) fn plan_headers<'a>(
    start: &'a RequestStart,
    allowed: &[String],
    replaced: Option<&str>,
) -> HeaderPlan<'a> {
    let mut plan = HeaderPlan::default();
    for (name, value) in &start.headers {
        let lower = name.to_ascii_lowercase();
        let passes = replaced != Some(lower.as_str())
            && ((start.has_body && lower == CONTENT_TYPE) || forwards(&lower, allowed));
        if passes {
            plan.forward.push((name, value));
        } else if lower == "user-agent" && value.starts_with("kafkasend/") {
            // `send`'s own default, not the caller's choice: naming it would
            // warn on every request to a portal whose list leaves it out,
            // and the API gets the portal's User-Agent instead.
        } else if !plan.dropped.iter().any(|d| d.eq_ignore_ascii_case(name)) {
            plan.dropped.push(name);
        }
    }
    plan
}

/// Whether a header named `name` is forwarded under the allow-list
/// `allowed` (lower-case names): never for the always-stripped ones.
pub(crate) fn forwards(name: &str, allowed: &[String]) -> bool {
    !never_forwarded(name) && allowed.contains(&name.to_ascii_lowercase())
}

/// Checks that a request path is a plain absolute path with an optional
/// query that, joined to the target URL, stays on the target's origin and
/// under its base path.
pub(crate) fn validate_path(path: &str) -> Result<(), Failure> {
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
