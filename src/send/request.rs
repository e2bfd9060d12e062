//! Preparing a request before anything reaches Kafka: the `-H` headers and
//! the method checked, the headers no portal forwards left out, the body's
//! source and content type, the multipart envelope around it, and, for a
//! signed request, the digest of the very bytes that will be sent.

use std::path::PathBuf;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::protocol::wire::JobId;
use crate::send::types::{usage, Request, SendError};

/// What the body is read from.
enum Source {
    None,
    Stdin,
    File(PathBuf),
}

/// Parses `Name: value`.
fn parse_header(h: &str) -> Result<(String, String), SendError> {
    let (name, value) = h
        .split_once(':')
        .ok_or_else(|| usage(format!("header '{h}' must look like 'Name: value'")))?;
    let name = name.trim();
    let valid_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid_name {
        return Err(usage(format!(
            "header name '{name}' is not a valid HTTP header name"
        )));
    }
    let value = value.trim();
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(usage(format!(
            "header '{name}' has a line break or NUL in its value"
        )));
    }
    Ok((name.to_string(), value.to_string()))
}

/// Escapes a value for a quoted multipart parameter (as browsers do).
fn quote_param(s: &str) -> String {
    s.replace('"', "%22")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// The request as it will be framed, before anything is sent.
pub(super) struct Prepared {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) headers: Vec<(String, String)>,
    /// Names of the `-H` headers left out because no portal forwards them.
    pub(super) dropped: Vec<String>,
    source: Source,
    pub(super) body_len: Option<u64>,
    /// Multipart framing around the file, when `--multipart`.
    envelope: Option<(Vec<u8>, Vec<u8>)>,
}

pub(super) fn prepare(request: &Request) -> Result<Prepared, SendError> {
    if !request.endpoint.starts_with('/') {
        return Err(usage(format!(
            "--endpoint '{}' must be a path starting with '/', e.g. /api/upload",
            request.endpoint
        )));
    }
    if request
        .endpoint
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ')
    {
        return Err(usage(
            "--endpoint must not contain spaces or control characters (percent-encode them)",
        ));
    }
    let source = match &request.file {
        None => Source::None,
        Some(p) if p.as_os_str() == "-" => Source::Stdin,
        Some(p) => Source::File(p.clone()),
    };
    let method = request
        .method
        .clone()
        .unwrap_or_else(|| {
            if matches!(source, Source::None) {
                "GET"
            } else {
                "POST"
            }
            .into()
        })
        .to_ascii_uppercase();
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(usage(format!("-X '{method}' is not an HTTP method")));
    }
    if request.multipart && matches!(source, Source::None) {
        return Err(usage("--multipart needs a FILE to send"));
    }
    let given = request
        .headers
        .iter()
        .map(|h| parse_header(h))
        .collect::<Result<Vec<_>, _>>()?;
    // No portal forwards these, so writing them to Kafka would only leave
    // the caller's credentials in the topic for anyone who can read it.
    let (mut headers, stripped): (Vec<_>, Vec<_>) = given
        .into_iter()
        .partition(|(name, _)| !crate::protocol::request::never_forwarded(name));
    accept_encoding(request, &mut headers);
    let mut dropped: Vec<String> = Vec::new();
    for (name, _) in stripped {
        if !dropped.iter().any(|d| d.eq_ignore_ascii_case(&name)) {
            dropped.push(name);
        }
    }
    let file_len = match &source {
        Source::File(p) => {
            let meta = std::fs::metadata(p)
                .map_err(|e| SendError::Io(format!("cannot read {}: {e}", p.display())))?;
            if meta.is_dir() {
                return Err(usage(format!(
                    "{} is a directory; send a file",
                    p.display()
                )));
            }
            // Special files (a FIFO, /dev/stdin) have no meaningful length.
            meta.is_file().then_some(meta.len())
        }
        _ => None,
    };
    let has_content_type = headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-type"));
    let file_type = request
        .content_type
        .clone()
        .unwrap_or_else(|| match &source {
            Source::File(p) => mime_guess::from_path(p)
                .first_raw()
                .unwrap_or("application/octet-stream")
                .to_string(),
            _ => "application/octet-stream".into(),
        });
    let mut envelope = None;
    let mut body_len = file_len;
    if request.multipart {
        let boundary = format!("kafkasend-{}", JobId::new());
        let filename = match &source {
            Source::File(p) => p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "file".into()),
            _ => "stdin".into(),
        };
        let head = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"; filename=\"{}\"\r\nContent-Type: {file_type}\r\n\r\n",
            quote_param(&request.field),
            quote_param(&filename)
        )
        .into_bytes();
        let tail = format!("\r\n--{boundary}--\r\n").into_bytes();
        body_len = body_len.map(|n| n + head.len() as u64 + tail.len() as u64);
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case("content-type"));
        headers.push((
            "Content-Type".into(),
            format!("multipart/form-data; boundary={boundary}"),
        ));
        envelope = Some((head, tail));
    } else if !matches!(source, Source::None) && !has_content_type {
        headers.push(("Content-Type".into(), file_type));
    }
    Ok(Prepared {
        method,
        path: request.endpoint.clone(),
        headers,
        dropped,
        source,
        body_len,
        envelope,
    })
}

/// `--compressed` asks for what it can decode, unless a `-H
/// Accept-Encoding` already says what to ask for.
fn accept_encoding(request: &Request, headers: &mut Vec<(String, String)>) {
    let given = headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("accept-encoding"));
    if request.response.compressed && !given {
        headers.push((
            "Accept-Encoding".into(),
            crate::send::decode::ACCEPT_ENCODING.into(),
        ));
    }
}

pub(super) async fn open_body(
    p: &Prepared,
) -> Result<Option<Box<dyn AsyncRead + Unpin + Send>>, SendError> {
    let inner: Box<dyn AsyncRead + Unpin + Send> = match &p.source {
        Source::None => return Ok(None),
        Source::Stdin => Box::new(tokio::io::stdin()),
        Source::File(path) => Box::new(
            tokio::fs::File::open(path)
                .await
                .map_err(|e| SendError::Io(format!("cannot open {}: {e}", path.display())))?,
        ),
    };
    Ok(Some(match &p.envelope {
        None => inner,
        Some((head, tail)) => Box::new(
            std::io::Cursor::new(head.clone())
                .chain(inner)
                .chain(std::io::Cursor::new(tail.clone())),
        ),
    }))
}

/// The SHA-256 of exactly the body bytes that will be sent (multipart
/// framing included), read in a first pass so the signature can cover it
/// before the start record goes out. Only a regular file can be read twice.
pub(super) async fn body_digest(p: &Prepared) -> Result<Option<[u8; 32]>, SendError> {
    match &p.source {
        Source::None => return Ok(None),
        Source::Stdin => {
            return Err(usage(
                "a signed request cannot read its body from standard input: the body is hashed before it is sent, so it must be a file; save it to one, or send without --signing-key (KAFKASEND_SIGNING_KEY_FILE)",
            ))
        }
        Source::File(path) if p.body_len.is_none() => {
            return Err(usage(format!(
                "{} is not a regular file; a signed request's body is hashed before it is sent, so it must be a file that can be read twice",
                path.display()
            )))
        }
        Source::File(_) => {}
    }
    let Some(mut reader) = open_body(p).await? else {
        return Ok(None);
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .await
            .map_err(|e| SendError::Io(format!("reading the body failed: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    if p.body_len != Some(total) {
        return Err(SendError::Io(format!(
            "the file changed while it was read ({} bytes expected, {total} read)",
            p.body_len.unwrap_or(0)
        )));
    }
    Ok(Some(hasher.finalize().into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_or_explain() {
        assert_eq!(
            parse_header("X-Request-ID:  abc ").unwrap(),
            ("X-Request-ID".into(), "abc".into())
        );
        assert!(parse_header("no colon").is_err());
        assert!(parse_header("Bad Name: x").is_err());
        assert!(parse_header(": x").is_err());
    }

    /// A request to `/x` with these `-H` headers.
    fn with_headers(headers: &[&str]) -> Request {
        Request {
            endpoint: "/x".into(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            field: "file".into(),
            ..Request::default()
        }
    }

    #[test]
    fn headers_no_portal_forwards_are_left_out_and_named_once() {
        let args = with_headers(&[
            "Authorization: Bearer secret-1",
            "X-Request-ID: r-1",
            "cookie: a=b",
            "Cookie: c=d",
            "X-Forwarded-For: 10.0.0.1",
            "Accept: application/json",
        ]);
        let p = prepare(&args).unwrap();
        assert_eq!(
            p.headers,
            vec![
                ("X-Request-ID".to_string(), "r-1".to_string()),
                ("Accept".to_string(), "application/json".to_string()),
            ]
        );
        assert_eq!(p.dropped, ["Authorization", "cookie", "X-Forwarded-For"]);
        let plain = prepare(&with_headers(&["X-A: 1"])).unwrap();
        assert!(plain.dropped.is_empty());
    }

    #[test]
    fn compressed_asks_for_what_it_decodes_unless_told_otherwise() {
        let mut request = with_headers(&["Accept: text/plain"]);
        request.response.compressed = true;
        let p = prepare(&request).unwrap();
        assert_eq!(
            p.headers[1],
            (
                "Accept-Encoding".to_string(),
                "gzip, deflate, br".to_string()
            )
        );
        let mut request = with_headers(&["accept-encoding: gzip"]);
        request.response.compressed = true;
        assert_eq!(
            prepare(&request).unwrap().headers,
            [("accept-encoding".to_string(), "gzip".to_string())]
        );
        let plain = prepare(&with_headers(&[])).unwrap();
        assert!(plain.headers.is_empty());
    }

    #[test]
    fn multipart_parameters_are_quoted() {
        assert_eq!(quote_param("a\"b\r\nc"), "a%22b%0D%0Ac");
    }
}
