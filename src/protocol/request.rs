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
