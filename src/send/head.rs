//! A response's head as curl's `-i` and `-D` write it: a status line, one
//! line per header, a blank line, each ending in CRLF.
//!
//! The portal relays the status code and the headers, not the HTTP version
//! or the reason phrase the API sent (it may speak HTTP/2 to the API), so
//! the status line always says `HTTP/1.1` and the standard reason phrase.
//! Headers keep their order and repeats. A record anyone can forge on the
//! response topic may carry any text, so what would break a line or forge
//! one (control characters; in a name, anything outside a token) is
//! written escaped, `\r` as `\u{d}`.

use std::fmt::Write as _;

/// `HTTP/1.1 404 Not Found`, the reason left empty for a code without one.
pub(crate) fn status_line(status: u16) -> String {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    format!("HTTP/1.1 {status} {reason}")
}

/// The status line and headers, each line ending in CRLF, then an empty line.
pub(crate) fn head_block(status: u16, headers: &[(String, String)]) -> Vec<u8> {
    let mut out = status_line(status);
    out.push_str("\r\n");
    for (name, value) in headers {
        let _ = write!(out, "{}: {}\r\n", escaped_name(name), escaped_value(value));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// A header name as written: token characters as they are, others escaped.
pub(crate) fn escaped_name(name: &str) -> String {
    escape(name, |c| {
        c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
    })
}

/// A header value as written: control characters (but tab) escaped.
pub(crate) fn escaped_value(value: &str) -> String {
    escape(value, |c| c == '\t' || !c.is_control())
}

fn escape(text: &str, keep: impl Fn(char) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if keep(c) {
            out.push(c);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_head_is_an_http_head_with_every_header_in_order() {
        let headers = pairs(&[
            ("content-type", "text/plain"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2; Path=/"),
            ("x-empty", ""),
        ]);
        assert_eq!(
            String::from_utf8(head_block(201, &headers)).unwrap(),
            "HTTP/1.1 201 Created\r\ncontent-type: text/plain\r\nset-cookie: a=1\r\nset-cookie: b=2; Path=/\r\nx-empty: \r\n\r\n"
        );
        assert_eq!(head_block(204, &[]), b"HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(status_line(599), "HTTP/1.1 599 ");
    }

    #[test]
    fn forged_headers_cannot_add_lines() {
        let headers = pairs(&[
            ("x-a\r\nx-forged", "1"),
            ("x-b", "v\r\n\r\nbody\u{1b}[2J\u{0}"),
            ("x-c", "tab\tand café ✓"),
            ("x d:", "e"),
        ]);
        let text = String::from_utf8(head_block(200, &headers)).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nx-a\\u{d}\\u{a}x-forged: 1\r\nx-b: v\\u{d}\\u{a}\\u{d}\\u{a}body\\u{1b}[2J\\u{0}\r\nx-c: tab\tand café ✓\r\nx\\u{20}d\\u{3a}: e\r\n\r\n"
        );
        assert_eq!(text.matches("\r\n").count(), 6);
    }
}
