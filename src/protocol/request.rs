//! What a request may carry whatever a portal's settings say: the longest
//! path, and the headers that never cross. `send` drops those headers
//! before they reach Kafka; every portal strips them again.

/// Headers never forwarded, whatever the allow-list says: credentials,
/// routing, hop-by-hop headers and the framing the portal computes itself.
pub(crate) const ALWAYS_STRIPPED: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "host",
    "x-real-ip",
    "forwarded",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "proxy-authenticate",
    "trailers",
    "via",
    "true-client-ip",
    "x-client-ip",
    // These re-route or re-method a request behind some proxies and
    // frameworks, which would walk around the endpoint allow-list.
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Longest request path (with query) accepted.
pub(crate) const MAX_PATH_BYTES: usize = 8 * 1024;

/// Whether a header named `name` is never forwarded, whatever the
/// allow-list: the always-stripped names and the `X-Forwarded-*` and
/// `Proxy-*` families.
pub(crate) fn never_forwarded(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    ALWAYS_STRIPPED.contains(&lower.as_str())
        || lower.starts_with("x-forwarded-")
        || lower.starts_with("proxy-")
}

/// Checks a media type as RFC 9110 writes it: `type/subtype`, then
/// `; name=value` parameters whose value is a token or a quoted string,
/// printable ASCII only; a multipart type must name its boundary. `send`
/// checks a request's type with it before anything is sent, and a portal
/// again on every request with a body.
pub(crate) fn media_type(value: &str) -> Result<(), String> {
    fn is_tchar(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
    }
    fn token(s: &[u8], at: &mut usize) -> usize {
        let start = *at;
        while s.get(*at).copied().is_some_and(is_tchar) {
            *at += 1;
        }
        *at - start
    }
    fn skip_ows(s: &[u8], at: &mut usize) {
        while matches!(s.get(*at), Some(b' ' | b'\t')) {
            *at += 1;
        }
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_graphic() || *c == ' ' || *c == '\t'))
    {
        return Err(format!(
            "it contains {}; only printable ASCII is allowed",
            if c.is_control() {
                "a control character".to_string()
            } else {
                format!("'{c}'")
            }
        ));
    }
    let s = value.trim_matches([' ', '\t']).as_bytes();
    let mut at = 0;
    let kind_at = at;
    if token(s, &mut at) == 0 || s.get(at) != Some(&b'/') {
        return Err("it must start with type/subtype, e.g. 'text/plain'".into());
    }
    let kind = &s[kind_at..at];
    at += 1;
    if token(s, &mut at) == 0 {
        return Err("it must start with type/subtype, e.g. 'text/plain'".into());
    }
    let mut boundary = false;
    loop {
        skip_ows(s, &mut at);
        if at == s.len() {
            break;
        }
        if s[at] != b';' {
            return Err(format!(
                "unexpected '{}' after the type; parameters follow ';' as name=value",
                s[at] as char
            ));
        }
        at += 1;
        skip_ows(s, &mut at);
        if at == s.len() || s[at] == b';' {
            continue;
        }
        let name_at = at;
        if token(s, &mut at) == 0 || s.get(at) != Some(&b'=') {
            return Err("a parameter must be name=value".into());
        }
        boundary |= s[name_at..at].eq_ignore_ascii_case(b"boundary");
        at += 1;
        if s.get(at) == Some(&b'"') {
            at += 1;
            loop {
                match s.get(at) {
                    None => return Err("a quoted parameter value is not closed".into()),
                    Some(b'"') => break,
                    Some(b'\\') => at += 2,
                    Some(_) => at += 1,
                }
            }
            at += 1;
        } else if token(s, &mut at) == 0 {
            return Err("a parameter has no value".into());
        }
    }
    if kind.eq_ignore_ascii_case(b"multipart") && !boundary {
        return Err("a multipart type must name its boundary (boundary=...)".into());
    }
    Ok(())
}
