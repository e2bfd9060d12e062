//! Preparing a request before anything reaches Kafka: the endpoint
//! percent-encoded, the `-H` headers and the method checked, the headers no
//! portal forwards left out, the User-Agent, the body as a list of pieces
//! (a FILE, curl's `-d`/`--data-binary` data, or a multipart form built from
//! `-F` parts or `--multipart`) with its content type, and, for a signed
//! request, the digest of the very bytes that will be sent.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use crate::protocol::digest::{Digest, DigestKind};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use crate::protocol::request::MAX_PATH_BYTES;
use crate::protocol::trace::{self, SpanId, TraceContext, TraceParent};
use crate::protocol::wire::JobId;
use crate::send::types::{usage, Request, SendError, SendTrace};

/// The User-Agent sent when `-A` is not given: some APIs refuse requests
/// without one.
pub(crate) const DEFAULT_USER_AGENT: &str = concat!("kafkasend/", env!("CARGO_PKG_VERSION"));

/// Most bytes all `-d @FILE` and `-d @-` values may read, together. They are
/// read into memory to drop their line breaks (as curl does) and to know the
/// body's length; large bodies belong in `--data-binary @FILE`, streamed.
const MAX_DATA_IN_MEMORY: u64 = 16 * 1024 * 1024;

/// One stretch of the body, sent in order.
#[derive(Debug)]
enum Piece {
    /// Bytes known before sending: command-line text, form framing.
    Bytes(Vec<u8>),
    /// Standard input, streamed.
    Stdin,
    /// A file, streamed; its length when it is a regular file.
    File(PathBuf, Option<u64>),
}

/// The body's pieces as they are gathered; adjacent bytes are merged.
#[derive(Debug, Default)]
struct Pieces(Vec<Piece>);

impl Pieces {
    fn bytes(&mut self, b: &[u8]) {
        match self.0.last_mut() {
            Some(Piece::Bytes(last)) => last.extend_from_slice(b),
            _ => self.0.push(Piece::Bytes(b.to_vec())),
        }
    }

    fn push(&mut self, piece: Piece) {
        match piece {
            Piece::Bytes(b) => self.bytes(&b),
            other => self.0.push(other),
        }
    }

    /// The total length, when every piece has one.
    fn len(&self) -> Option<u64> {
        self.0.iter().try_fold(0u64, |sum, p| match p {
            Piece::Bytes(b) => Some(sum + b.len() as u64),
            Piece::File(_, len) => len.map(|n| sum + n),
            Piece::Stdin => None,
        })
    }
}

/// One `-F` part as written on the command line.
#[derive(Debug, PartialEq, Eq)]
struct FormPart {
    name: String,
    content: PartContent,
    content_type: Option<String>,
    filename: Option<String>,
}

/// What a `-F` part holds.
#[derive(Debug, PartialEq, Eq)]
enum PartContent {
    /// `name=text`.
    Text(String),
    /// `name=@FILE`: a file upload, with a filename and a content type.
    File(PathBuf),
    /// `name=<FILE`: a text field whose value is the file's content.
    Contents(PathBuf),
}

/// Splits off the first word of `s`, up to a `;` outside double quotes. A
/// word in double quotes (with `\"` and `\\` escapes inside) may hold `;`;
/// what follows its closing quote must be `;` or nothing.
fn param_word(s: &str) -> Result<(String, Option<&str>), String> {
    let Some(quoted) = s.strip_prefix('"') else {
        return Ok(match s.split_once(';') {
            Some((word, rest)) => (word.to_string(), Some(rest)),
            None => (s.to_string(), None),
        });
    };
    let mut word = String::new();
    let mut chars = quoted.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, e @ ('"' | '\\'))) => word.push(e),
                Some((_, other)) => {
                    word.push('\\');
                    word.push(other);
                }
                None => word.push('\\'),
            },
            '"' => {
                let rest = &quoted[i + 1..];
                return match rest.strip_prefix(';') {
                    Some(rest) => Ok((word, Some(rest))),
                    None if rest.is_empty() => Ok((word, None)),
                    None => Err(format!(
                        "'{rest}' follows the closing quote; put a ';' before the next parameter"
                    )),
                };
            }
            c => word.push(c),
        }
    }
    Err("a double quote is not closed".into())
}

/// Parses one `-F` value as curl does: `name=text`, `name=@FILE` (`@-` is
/// standard input), `name=<FILE`, then `;type=TYPE` and `;filename=NAME`
/// parameters. Values holding `;` (or text starting with `@` or `<`) are
/// written in double quotes. Unknown parameters are refused, not skipped.
fn parse_form_part(spec: &str) -> Result<FormPart, SendError> {
    let bad = |why: String| usage(format!("-F '{spec}': {why}"));
    let Some((name, value)) = spec.split_once('=') else {
        return Err(bad(
            "a part is 'name=text', 'name=@FILE' or 'name=<FILE'".into()
        ));
    };
    if name.is_empty() {
        return Err(bad("the part has no name before '='".into()));
    }
    // `@` uploads a file, `<` reads a text field's value from one.
    let sigil = value.chars().next().filter(|c| matches!(c, '@' | '<'));
    let value = if sigil.is_some() { &value[1..] } else { value };
    let (word, mut rest) = param_word(value).map_err(bad)?;
    let mut content_type = None;
    let mut filename = None;
    while let Some(params) = rest {
        let params = params.trim_start();
        if params.is_empty() {
            // A trailing ';' names no parameter.
            break;
        }
        let (key, val) = params.split_once('=').unwrap_or((params, ""));
        let (val, next) = param_word(val).map_err(bad)?;
        match key.to_ascii_lowercase().as_str() {
            "type" => {
                if !val.contains('/') || val.bytes().any(|b| b.is_ascii_control()) {
                    return Err(bad(format!("';type={val}' is not a content type such as text/plain")));
                }
                content_type = Some(val);
            }
            "filename" => filename = Some(val),
            "headers" | "encoder" => {
                return Err(bad(format!("';{key}=' is not supported")));
            }
            _ => {
                return Err(bad(format!(
                    "';{params}' is not ';type=TYPE' or ';filename=NAME'; to send a ';' in a value, put the value in double quotes: {name}=\"a;b\""
                )))
            }
        }
        rest = next;
    }
    let content = match sigil {
        Some(_) if word.is_empty() => {
            return Err(bad(
                "no file name after '@' or '<' ('-' is standard input)".into()
            ))
        }
        Some('@') => PartContent::File(PathBuf::from(word)),
        Some(_) => PartContent::Contents(PathBuf::from(word)),
        None => PartContent::Text(word),
    };
    Ok(FormPart {
        name: name.to_string(),
        content,
        content_type,
        filename,
    })
}

/// The endpoint as sent: characters outside ASCII percent-encoded as their
/// UTF-8 bytes (`%XX` escapes already there are kept). Spaces and control
/// characters are refused rather than encoded: in a command line they are
/// more likely a quoting mistake than part of the path.
fn encode_endpoint(endpoint: &str) -> Result<String, SendError> {
    if !endpoint.starts_with('/') {
        return Err(usage(format!(
            "--endpoint '{endpoint}' must be a path starting with '/', e.g. /api/upload"
        )));
    }
    let mut out = String::with_capacity(endpoint.len());
    for (i, c) in endpoint.char_indices() {
        if c.is_control() {
            return Err(usage(format!(
                "--endpoint must not contain control characters (U+{:04X} at byte {i}); percent-encode them",
                u32::from(c)
            )));
        }
        match c {
            ' ' => return Err(usage(
                "--endpoint must not contain spaces: write a space as %20 (in a query also as +)",
            )),
            '%' => {
                let escape = endpoint.get(i + 1..i + 3);
                if !escape.is_some_and(|e| e.bytes().all(|b| b.is_ascii_hexdigit())) {
                    return Err(usage(format!(
                        "--endpoint has a '%' at byte {i} that does not start a %XX escape; write a literal '%' as %25"
                    )));
                }
                out.push('%');
            }
            c if c.is_ascii() => out.push(c),
            c => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
        }
    }
    if out.len() > MAX_PATH_BYTES {
        return Err(usage(format!(
            "--endpoint is {} bytes long once encoded; no portal takes more than {MAX_PATH_BYTES}",
            out.len()
        )));
    }
    Ok(out)
}

/// A file to stream as (part of) the body: it must exist and not be a
/// directory; a regular file's length is known now.
fn file_piece(path: &Path) -> Result<Piece, SendError> {
    if path.as_os_str() == "-" {
        return Ok(Piece::Stdin);
    }
    let meta = std::fs::metadata(path)
        .map_err(|e| SendError::Io(format!("cannot read {}: {e}", path.display())))?;
    if meta.is_dir() {
        return Err(usage(format!(
            "{} is a directory; send a file",
            path.display()
        )));
    }
    // Special files (a FIFO, /dev/stdin) have no meaningful length.
    Ok(Piece::File(
        path.to_path_buf(),
        meta.is_file().then_some(meta.len()),
    ))
}

/// Reads what a `-d @FILE` (or `@-`) names into memory, within `budget`
/// bytes (reduced by what was read), and drops its CR and LF bytes as curl does.
async fn read_data_file(path: &Path, budget: &mut u64) -> Result<Vec<u8>, SendError> {
    let limit = *budget;
    let mut bytes = Vec::new();
    let failed = |e: std::io::Error| {
        SendError::Io(format!(
            "-d @{}: cannot read it: {e} (to send text starting with '@', write the '@' as %40)",
            path.display()
        ))
    };
    if path.as_os_str() == "-" {
        tokio::io::stdin()
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(failed)?;
    } else {
        if std::fs::metadata(path).map_err(failed)?.is_dir() {
            return Err(usage(format!(
                "-d @{}: it is a directory; send a file",
                path.display()
            )));
        }
        tokio::fs::File::open(path)
            .await
            .map_err(failed)?
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(failed)?;
    }
    if bytes.len() as u64 > limit {
        return Err(usage(format!(
            "-d @{}: the -d files hold more than {} MiB together; -d reads them into memory to drop their line breaks, as curl does. Send large files with --data-binary @FILE, which streams them (line breaks kept)",
            path.display(),
            MAX_DATA_IN_MEMORY / (1024 * 1024)
        )));
    }
    *budget -= bytes.len() as u64;
    bytes.retain(|&b| b != b'\r' && b != b'\n');
    Ok(bytes)
}

/// The body of `-d` (`binary` false) or `--data-binary` values, joined with
/// `&` as curl joins them.
async fn data_body(values: &[String], binary: bool) -> Result<Pieces, SendError> {
    let mut pieces = Pieces::default();
    let mut budget = MAX_DATA_IN_MEMORY;
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            pieces.bytes(b"&");
        }
        match value.strip_prefix('@') {
            None => pieces.bytes(value.as_bytes()),
            Some("") => {
                let flag = if binary { "--data-binary" } else { "-d" };
                return Err(usage(format!(
                    "{flag} @: no file name after '@' ('@-' is standard input)"
                )));
            }
            Some(path) if binary => pieces.push(file_piece(Path::new(path))?),
            Some(path) => pieces.bytes(&read_data_file(Path::new(path), &mut budget).await?),
        }
    }
    Ok(pieces)
}

/// A multipart/form-data body of `parts`, separated by `boundary`. Files
/// are streamed: only the framing is built here.
fn form_body(parts: &[FormPart], boundary: &str) -> Result<Pieces, SendError> {
    let mut pieces = Pieces::default();
    for part in parts {
        let (piece, filename, content_type) = match &part.content {
            PartContent::Text(text) => (
                Piece::Bytes(text.as_bytes().to_vec()),
                part.filename.clone(),
                part.content_type.clone(),
            ),
            PartContent::File(path) => {
                let filename = part
                    .filename
                    .clone()
                    .unwrap_or_else(|| match path.file_name() {
                        Some(n) if path.as_os_str() != "-" => n.to_string_lossy().into_owned(),
                        _ => "stdin".into(),
                    });
                let content_type = part.content_type.clone().unwrap_or_else(|| {
                    mime_guess::from_path(path)
                        .first_raw()
                        .unwrap_or("application/octet-stream")
                        .to_string()
                });
                (file_piece(path)?, Some(filename), Some(content_type))
            }
            PartContent::Contents(path) => (
                file_piece(path)?,
                part.filename.clone(),
                part.content_type.clone(),
            ),
        };
        let mut head = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"",
            quote_param(&part.name)
        );
        if let Some(f) = filename {
            head.push_str(&format!("; filename=\"{}\"", quote_param(&f)));
        }
        head.push_str("\r\n");
        if let Some(t) = content_type {
            head.push_str(&format!("Content-Type: {t}\r\n"));
        }
        head.push_str("\r\n");
        pieces.bytes(head.as_bytes());
        pieces.push(piece);
        pieces.bytes(b"\r\n");
    }
    pieces.bytes(format!("--{boundary}--\r\n").as_bytes());
    Ok(pieces)
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
    /// The endpoint, percent-encoded.
    pub(super) path: String,
    pub(super) headers: Vec<(String, String)>,
    /// Names of the `-H` headers left out because no portal forwards them.
    pub(super) dropped: Vec<String>,
    /// This run's trace: the context its start record carries.
    pub(super) trace: SendTrace,
    /// The body's pieces in order; `None` for a request without a body.
    body: Option<Vec<Piece>>,
    pub(super) body_len: Option<u64>,
}

/// Refuses flags that would each make the body (curl refuses `-d` with
/// `-F` too), and a second reader of standard input.
fn check_body_flags(r: &Request, parts: &[FormPart]) -> Result<(), SendError> {
    let (data, binary, form) = (
        !r.data.is_empty(),
        !r.data_binary.is_empty(),
        !r.form.is_empty(),
    );
    if data && binary {
        return Err(usage(
            "-d and --data-binary cannot be mixed: curl joins them in command-line order, which is not kept here; use one of them for every value (--data-binary @FILE sends a file exactly)",
        ));
    }
    let data_flag = if data { "-d" } else { "--data-binary" };
    if (data || binary) && form {
        return Err(usage(format!(
            "{data_flag} and -F cannot be combined (as in curl): -F sends a multipart form, {data_flag} the body as given"
        )));
    }
    if r.multipart && (data || binary || form) {
        return Err(usage(
            "--multipart wraps FILE as the only part of a form; with -d, --data-binary or -F drop it (-F file=@FILE makes a form of several parts)",
        ));
    }
    if let Some(file) = &r.file {
        let shown = file.display();
        if form {
            return Err(usage(format!(
                "-F builds the whole body, so FILE ({shown}) would be a second one; send it as a part: -F file=@{shown}"
            )));
        }
        if data || binary {
            return Err(usage(format!(
                "{data_flag} is the body, so FILE ({shown}) would be a second one; send the file alone, or as --data-binary @{shown}"
            )));
        }
    }
    if r.multipart && r.file.is_none() {
        return Err(usage("--multipart needs a FILE to send"));
    }
    if form && r.content_type.is_some() {
        return Err(usage(
            "--content-type is the type of a FILE; with -F give each part its own: -F 'name=@FILE;type=TYPE'",
        ));
    }
    let names_stdin = |p: &PathBuf| p.as_os_str() == "-";
    let stdin_readers = usize::from(r.file.as_ref().is_some_and(names_stdin))
        + r.data
            .iter()
            .chain(&r.data_binary)
            .filter(|v| *v == "@-")
            .count()
        + parts
            .iter()
            .filter(|p| match &p.content {
                PartContent::File(f) | PartContent::Contents(f) => names_stdin(f),
                PartContent::Text(_) => false,
            })
            .count();
    if stdin_readers > 1 {
        return Err(usage(
            "standard input can be read only once: at most one of FILE '-', '@-' and '<-' may name it",
        ));
    }
    Ok(())
}

/// The User-Agent header to add, if any: `-H User-Agent` wins over `-A` (as
/// in curl), an empty one sends none, and without either it is
/// [`DEFAULT_USER_AGENT`].
fn user_agent(request: &Request, headers: &mut Vec<(String, String)>) -> Result<(), SendError> {
    if let Some(agent) = &request.user_agent {
        if !agent
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
        {
            return Err(usage(
                "-A/--user-agent must be printable ASCII (no line breaks or control characters)",
            ));
        }
    }
    let is_agent = |n: &str| n.eq_ignore_ascii_case("user-agent");
    if headers.iter().any(|(n, _)| is_agent(n)) {
        // `-H 'User-Agent:'` asks for none, as in curl.
        headers.retain(|(n, v)| !is_agent(n) || !v.is_empty());
        return Ok(());
    }
    let agent = request.user_agent.as_deref().unwrap_or(DEFAULT_USER_AGENT);
    if !agent.is_empty() {
        headers.push(("User-Agent".into(), agent.to_string()));
    }
    Ok(())
}

/// Refuses here, before anything is sent, the Content-Type a portal would
/// refuse: with a body it is the body's one media type.
fn check_content_type(headers: &[(String, String)], has_body: bool) -> Result<(), SendError> {
    let types: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.as_str())
        .collect();
    if types.len() > 1 {
        return Err(usage(format!(
            "{} Content-Type headers given; a body has one type, so give one",
            types.len()
        )));
    }
    match types.first() {
        Some(t) if has_body => crate::protocol::request::media_type(t).map_err(|why| {
            usage(format!(
                "Content-Type '{}' is not a valid media type: {why}",
                crate::send::ui::one_line(t)
            ))
        }),
        _ => Ok(()),
    }
}

/// Checks the request and gathers its body, reading only what `-d @FILE`
/// (or `-d @-`) names; files to stream are only looked at.
pub(super) async fn prepare(request: &Request) -> Result<Prepared, SendError> {
    let path = encode_endpoint(&request.endpoint)?;
    let form = request
        .form
        .iter()
        .map(|f| parse_form_part(f))
        .collect::<Result<Vec<_>, _>>()?;
    check_body_flags(request, &form)?;
    let has_body = request.file.is_some()
        || !request.data.is_empty()
        || !request.data_binary.is_empty()
        || !form.is_empty();
    let method = request
        .method
        .clone()
        .unwrap_or_else(|| if has_body { "POST" } else { "GET" }.into())
        .to_ascii_uppercase();
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(usage(format!("-X '{method}' is not an HTTP method")));
    }
    let given = request
        .headers
        .iter()
        .map(|h| parse_header(h))
        .collect::<Result<Vec<_>, _>>()?;
    let (trace, given) = take_trace(given, request.trace.as_ref())?;
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
    user_agent(request, &mut headers)?;
    let is_type = |n: &str| n.eq_ignore_ascii_case("content-type");
    // `-H 'Content-Type:'` asks for none, as in curl (so no guessed one).
    let declared_type = headers
        .iter()
        .find(|(n, _)| is_type(n))
        .map(|(_, v)| v.clone());
    let mut content_type = None;
    let pieces = if !form.is_empty() || request.multipart {
        let boundary = format!("kafkasend-{}", JobId::new());
        let pieces = if request.multipart {
            let file = request.file.clone().unwrap_or_default();
            let part = FormPart {
                name: request.field.clone(),
                content: PartContent::File(file),
                content_type: request.content_type.clone(),
                filename: None,
            };
            // `--multipart` has always set the form's type itself.
            headers.retain(|(n, _)| !is_type(n));
            form_body(&[part], &boundary)?
        } else {
            match &declared_type {
                // As curl: a multipart type of one's own gets the boundary.
                Some(t) if t.is_empty() => {}
                Some(t) if t.to_ascii_lowercase().starts_with("multipart/") => {
                    headers.retain(|(n, _)| !is_type(n));
                    content_type = Some(format!("{t}; boundary={boundary}"));
                }
                Some(t) => {
                    return Err(usage(format!(
                        "-F sends a multipart form, so -H 'Content-Type: {t}' would make it unreadable; leave it out (or give a multipart/* type)"
                    )))
                }
                None => {}
            }
            form_body(&form, &boundary)?
        };
        content_type = content_type.or(Some(format!("multipart/form-data; boundary={boundary}")));
        Some(pieces)
    } else if !request.data.is_empty() || !request.data_binary.is_empty() {
        let binary = request.data.is_empty();
        let values = if binary {
            &request.data_binary
        } else {
            &request.data
        };
        let pieces = data_body(values, binary).await?;
        if declared_type.is_none() {
            content_type = Some(
                request
                    .content_type
                    .clone()
                    .unwrap_or_else(|| "application/x-www-form-urlencoded".into()),
            );
        }
        Some(pieces)
    } else if let Some(file) = &request.file {
        let mut pieces = Pieces::default();
        pieces.push(file_piece(file)?);
        if declared_type.is_none() {
            content_type = Some(request.content_type.clone().unwrap_or_else(|| {
                mime_guess::from_path(file)
                    .first_raw()
                    .unwrap_or("application/octet-stream")
                    .to_string()
            }));
        }
        Some(pieces)
    } else {
        None
    };
    if let Some(t) = content_type {
        headers.push(("Content-Type".into(), t));
    }
    // `-H 'Name:'` sends no such header, as in curl.
    headers.retain(|(_, v)| !v.is_empty());
    check_content_type(&headers, pieces.is_some())?;
    Ok(Prepared {
        method,
        path,
        headers,
        dropped,
        trace,
        body_len: pieces.as_ref().and_then(Pieces::len),
        body: pieces.map(|p| p.0),
    })
}

/// Takes `-H traceparent` and `-H tracestate` out of the headers: they go
/// on the start record as the trace context, not to the API as they are
/// (the portal sends its own). A `-H traceparent` wins over the one from the
/// environment (`env`); an invalid one is refused, since the caller typed it.
/// An invalid `-H tracestate` is dropped with a warning and the trace kept,
/// as everywhere else a trace is read: the state is optional vendor data.
fn take_trace(
    given: Vec<(String, String)>,
    env: Option<&TraceContext>,
) -> Result<(SendTrace, Vec<(String, String)>), SendError> {
    let (trace_headers, rest): (Vec<_>, Vec<_>) = given.into_iter().partition(|(n, _)| {
        n.eq_ignore_ascii_case(trace::TRACEPARENT) || n.eq_ignore_ascii_case(trace::TRACESTATE)
    });
    let pick = |name: &str| {
        trace_headers
            .iter()
            .rev()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_bytes())
    };
    let (tp, ts) = (pick(trace::TRACEPARENT), pick(trace::TRACESTATE));
    if tp.is_none() && ts.is_some() {
        return Err(usage(
            "-H tracestate needs a -H traceparent: a trace's state belongs to its trace",
        ));
    }
    let (given, state_dropped) = match TraceContext::from_values(tp, ts) {
        Ok(Some((ctx, dropped))) => (Some(ctx), dropped.map(|e| format!("-H {e}"))),
        Ok(None) => (env.cloned(), None),
        Err(e) => return Err(usage(format!("-H {e}"))),
    };
    let mut trace = match given {
        Some(ctx) => SendTrace::under(ctx),
        None => SendTrace {
            parent: None,
            context: TraceContext {
                parent: TraceParent::start(SpanId::random()),
                state: None,
            },
            state_dropped: None,
        },
    };
    trace.state_dropped = state_dropped;
    Ok((trace, rest))
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

/// Reads a list of readers one after the other.
struct Concat(VecDeque<Box<dyn AsyncRead + Unpin + Send>>);

impl AsyncRead for Concat {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        while let Some(front) = self.0.front_mut() {
            let before = buf.filled().len();
            ready!(Pin::new(front).poll_read(cx, buf))?;
            if buf.filled().len() > before || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            // This reader is at its end; go on with the next.
            self.0.pop_front();
        }
        Poll::Ready(Ok(()))
    }
}

/// A body being read for upload, one chunk at a time.
pub(super) enum BodyReader {
    /// One regular file (the common `send FILE`): read on a blocking
    /// thread straight into the chunk's record value, past the copy
    /// through tokio's file buffer. `None` only while a read is under way.
    File(Option<std::fs::File>),
    /// Anything else: the pieces one after the other.
    Stream(Box<dyn AsyncRead + Unpin + Send>),
}

impl BodyReader {
    /// Appends up to `size` bytes to `buf`; fewer only at the end of the
    /// body. `buf`'s spare capacity is read into as it is, not zeroed first.
    pub(super) async fn read_chunk(
        &mut self,
        buf: &mut Vec<u8>,
        size: usize,
    ) -> std::io::Result<()> {
        use std::io::Read as _;
        use tokio::io::AsyncReadExt as _;
        let limit = size as u64;
        match self {
            Self::Stream(reader) => {
                reader.take(limit).read_to_end(buf).await?;
                Ok(())
            }
            Self::File(slot) => {
                let file = slot
                    .take()
                    .ok_or_else(|| std::io::Error::other("an earlier read of the body failed"))?;
                let mut taken = std::mem::take(buf);
                let (file, read, taken) = tokio::task::spawn_blocking(move || {
                    let read = (&file).take(limit).read_to_end(&mut taken);
                    (file, read, taken)
                })
                .await
                .map_err(|e| std::io::Error::other(format!("the read task failed: {e}")))?;
                *buf = taken;
                *slot = Some(file);
                read.map(drop)
            }
        }
    }

    /// Reads the rest of the body to `out` (tests and the digest pass).
    #[cfg(test)]
    pub(super) async fn read_to_end(&mut self, out: &mut Vec<u8>) -> std::io::Result<()> {
        loop {
            let before = out.len();
            self.read_chunk(out, 64 * 1024).await?;
            if out.len() == before {
                return Ok(());
            }
        }
    }
}

/// Opens the body for one pass over it, every file opened now; `None` when
/// there is none.
pub(super) async fn open_body(p: &Prepared) -> Result<Option<BodyReader>, SendError> {
    let Some(pieces) = &p.body else {
        return Ok(None);
    };
    let open = |path: &Path| {
        std::fs::File::open(path)
            .map_err(|e| SendError::Io(format!("cannot open {}: {e}", path.display())))
    };
    if let [Piece::File(path, Some(_))] = pieces.as_slice() {
        return Ok(Some(BodyReader::File(Some(open(path)?))));
    }
    let mut readers: VecDeque<Box<dyn AsyncRead + Unpin + Send>> = VecDeque::new();
    for piece in pieces {
        readers.push_back(match piece {
            Piece::Bytes(b) => Box::new(std::io::Cursor::new(b.clone())),
            Piece::Stdin => Box::new(tokio::io::stdin()),
            // Opened off the runtime's threads: opening a FIFO waits for its writer.
            Piece::File(path, _) => Box::new(
                tokio::fs::File::open(path)
                    .await
                    .map_err(|e| SendError::Io(format!("cannot open {}: {e}", path.display())))?,
            ),
        });
    }
    Ok(Some(BodyReader::Stream(Box::new(Concat(readers)))))
}

/// Whether the body can be read again, from the start or at any byte: no
/// standard input, every file a regular one of known length. Only such a
/// body can be checked against what an earlier upload left in Kafka and
/// resumed.
pub(super) fn replayable(p: &Prepared) -> bool {
    p.body.as_ref().is_none_or(|pieces| {
        pieces
            .iter()
            .all(|piece| !matches!(piece, Piece::Stdin | Piece::File(_, None)))
    })
}

/// `len` bytes of a [`replayable`] body from byte `at`; fewer only at its
/// end. Each file is opened for the read, so one that changed shows.
pub(super) async fn read_at(p: &Prepared, at: u64, len: usize) -> Result<Vec<u8>, SendError> {
    use tokio::io::AsyncSeekExt as _;
    let mut out = Vec::with_capacity(len);
    let mut start = 0u64;
    for piece in p.body.iter().flatten() {
        let want = len - out.len();
        if want == 0 {
            break;
        }
        let piece_len = match piece {
            Piece::Bytes(b) => b.len() as u64,
            Piece::File(_, Some(n)) => *n,
            Piece::Stdin | Piece::File(_, None) => {
                return Err(usage(
                    "a body read from standard input or a stream cannot be read again",
                ))
            }
        };
        let end = start.saturating_add(piece_len);
        let from = at + out.len() as u64;
        if from < end {
            let skip = from - start;
            let take = (end - from).min(want as u64) as usize;
            match piece {
                Piece::Bytes(b) => {
                    let skip = skip as usize;
                    out.extend_from_slice(&b[skip..skip + take]);
                }
                Piece::File(path, _) => {
                    let failed = |e: std::io::Error| {
                        SendError::Io(format!("cannot read {}: {e}", path.display()))
                    };
                    let mut f = tokio::fs::File::open(path).await.map_err(failed)?;
                    f.seek(std::io::SeekFrom::Start(skip))
                        .await
                        .map_err(failed)?;
                    let mut buf = vec![0u8; take];
                    let mut filled = 0;
                    while filled < take {
                        let n = f.read(&mut buf[filled..]).await.map_err(failed)?;
                        if n == 0 {
                            break;
                        }
                        filled += n;
                    }
                    buf.truncate(filled);
                    let short = filled < take;
                    out.extend_from_slice(&buf);
                    if short {
                        // The file shrank: what follows is not where it was.
                        break;
                    }
                }
                Piece::Stdin => {}
            }
        }
        start = end;
    }
    Ok(out)
}

/// The `kind` digest of exactly the body bytes that will be sent (multipart
/// framing included), read in a first pass so the signature can cover it
/// before the start record goes out. Only regular files can be read twice.
pub(super) async fn body_digest(
    p: &Prepared,
    kind: DigestKind,
) -> Result<Option<Digest>, SendError> {
    let Some(pieces) = &p.body else {
        return Ok(None);
    };
    for piece in pieces {
        match piece {
            Piece::Stdin => {
                return Err(usage(
                    "a signed request cannot read its body from standard input: the body is hashed before it is sent, so it must be a file; save it to one, or send without --signing-key (KAFKASEND_SIGNING_KEY_FILE)",
                ))
            }
            Piece::File(path, None) => {
                return Err(usage(format!(
                    "{} is not a regular file; a signed request's body is hashed before it is sent, so it must be a file that can be read twice",
                    path.display()
                )))
            }
            _ => {}
        }
    }
    let Some(mut reader) = open_body(p).await? else {
        return Ok(None);
    };
    let mut hasher = kind.hasher();
    let mut buf = Vec::with_capacity(1024 * 1024 + 64);
    let mut total = 0u64;
    loop {
        buf.clear();
        reader
            .read_chunk(&mut buf, 1024 * 1024)
            .await
            .map_err(|e| SendError::Io(format!("reading the body failed: {e}")))?;
        if buf.is_empty() {
            break;
        }
        hasher.update(&buf);
        total += buf.len() as u64;
    }
    if p.body_len != Some(total) {
        return Err(SendError::Io(format!(
            "the file changed while it was read ({} bytes expected, {total} read)",
            p.body_len.unwrap_or(0)
        )));
    }
    Ok(Some(hasher.finalize()))
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

    /// The message of a usage error, failing on anything else.
    fn usage_text(r: Result<Prepared, SendError>) -> String {
        match r {
            Err(SendError::Usage(m)) => m,
            Err(other) => panic!("not a usage error: {other}"),
            Ok(p) => panic!("accepted: {} {}", p.method, p.path),
        }
    }

    /// Every byte of the prepared body, read as it would be sent.
    async fn body_of(p: &Prepared) -> Vec<u8> {
        let mut out = Vec::new();
        let mut reader = open_body(p).await.unwrap().expect("a body");
        reader.read_to_end(&mut out).await.unwrap();
        out
    }

    fn header<'a>(p: &'a Prepared, name: &str) -> Option<&'a str> {
        p.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[tokio::test]
    async fn headers_no_portal_forwards_are_left_out_and_named_once() {
        let args = with_headers(&[
            "Authorization: Bearer secret-1",
            "X-Request-ID: r-1",
            "cookie: a=b",
            "Cookie: c=d",
            "X-Forwarded-For: 10.0.0.1",
            "Accept: application/json",
        ]);
        let p = prepare(&args).await.unwrap();
        assert_eq!(
            p.headers,
            vec![
                ("X-Request-ID".to_string(), "r-1".to_string()),
                ("Accept".to_string(), "application/json".to_string()),
                ("User-Agent".to_string(), DEFAULT_USER_AGENT.to_string()),
            ]
        );
        assert_eq!(p.dropped, ["Authorization", "cookie", "X-Forwarded-For"]);
        let plain = prepare(&with_headers(&["X-A: 1"])).await.unwrap();
        assert!(plain.dropped.is_empty());
    }

    #[tokio::test]
    async fn compressed_asks_for_what_it_decodes_unless_told_otherwise() {
        let encodings = |p: &Prepared| -> Vec<(String, String)> {
            p.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("accept-encoding"))
                .cloned()
                .collect()
        };
        let mut request = with_headers(&["Accept: text/plain"]);
        request.response.compressed = true;
        let p = prepare(&request).await.unwrap();
        assert_eq!(
            encodings(&p),
            [(
                "Accept-Encoding".to_string(),
                "gzip, deflate, br".to_string()
            )]
        );
        let mut request = with_headers(&["accept-encoding: gzip"]);
        request.response.compressed = true;
        assert_eq!(
            encodings(&prepare(&request).await.unwrap()),
            [("accept-encoding".to_string(), "gzip".to_string())]
        );
        let plain = prepare(&with_headers(&[])).await.unwrap();
        assert!(encodings(&plain).is_empty());
    }

    #[test]
    fn multipart_parameters_are_quoted() {
        assert_eq!(quote_param("a\"b\r\nc"), "a%22b%0D%0Ac");
    }

    #[tokio::test]
    async fn user_agent_is_the_default_or_a_flag_and_a_header_wins() {
        let agent = |p: &Prepared| header(p, "user-agent").map(str::to_string);
        let p = prepare(&with_headers(&[])).await.unwrap();
        assert_eq!(
            agent(&p).unwrap(),
            format!("kafkasend/{}", env!("CARGO_PKG_VERSION"))
        );
        let mut r = with_headers(&[]);
        r.user_agent = Some("probe/2".into());
        assert_eq!(agent(&prepare(&r).await.unwrap()).unwrap(), "probe/2");
        r.user_agent = Some(String::new());
        assert_eq!(agent(&prepare(&r).await.unwrap()), None);
        let mut r = with_headers(&["user-agent: mine/1"]);
        r.user_agent = Some("probe/2".into());
        let p = prepare(&r).await.unwrap();
        assert_eq!(agent(&p).unwrap(), "mine/1");
        assert_eq!(p.headers.len(), 1, "{:?}", p.headers);
        let p = prepare(&with_headers(&["User-Agent:"])).await.unwrap();
        assert_eq!(agent(&p), None, "an empty -H User-Agent asks for none");
        r.user_agent = Some("bad\u{7f}agent".into());
        assert!(usage_text(prepare(&r).await).contains("printable ASCII"));
        r.user_agent = Some("caf\u{e9}/1".into());
        assert!(usage_text(prepare(&r).await).contains("printable ASCII"));
    }

    #[test]
    fn endpoints_are_percent_encoded_or_refused() {
        let ok = |e: &str| encode_endpoint(e).unwrap();
        assert_eq!(
            ok("/api/items?limit=5&q=a%20b"),
            "/api/items?limit=5&q=a%20b"
        );
        assert_eq!(ok("/api/caf\u{e9}"), "/api/caf%C3%A9");
        assert_eq!(
            ok("/\u{65e5}\u{672c}?q=\u{e9}%2a"),
            "/%E6%97%A5%E6%9C%AC?q=%C3%A9%2a"
        );
        assert_eq!(ok("/emoji/\u{1f600}"), "/emoji/%F0%9F%98%80");
        let refused = |e: &str| match encode_endpoint(e) {
            Err(SendError::Usage(m)) => m,
            other => panic!("{e:?} gave {other:?}"),
        };
        assert!(refused("api/x").contains("starting with '/'"));
        assert!(refused("https://host/x").contains("starting with '/'"));
        assert!(refused("/a b").contains("%20"));
        assert!(refused("/a\tb").contains("U+0009"));
        assert!(refused("/a\nb").contains("U+000A"));
        assert!(refused("/a\u{7f}").contains("U+007F"));
        assert!(refused("/a\u{85}b").contains("U+0085"), "C1 controls too");
        assert!(refused("/100%").contains("%25"));
        assert!(refused("/a%zz").contains("%25"));
        assert!(refused("/a%4").contains("%25"));
        assert!(refused(&format!("/{}", "\u{e9}".repeat(3000))).contains("8192"));
    }

    #[test]
    fn form_parts_parse_as_curl_writes_them() {
        let part = |s: &str| parse_form_part(s).unwrap();
        assert_eq!(
            part("title=Annual report"),
            FormPart {
                name: "title".into(),
                content: PartContent::Text("Annual report".into()),
                content_type: None,
                filename: None,
            }
        );
        assert_eq!(
            part("doc=@/tmp/a b.pdf;type=application/pdf;filename=x.pdf"),
            FormPart {
                name: "doc".into(),
                content: PartContent::File("/tmp/a b.pdf".into()),
                content_type: Some("application/pdf".into()),
                filename: Some("x.pdf".into()),
            }
        );
        assert_eq!(
            part("n=<notes.txt").content,
            PartContent::Contents("notes.txt".into())
        );
        assert_eq!(part("n=@-").content, PartContent::File("-".into()));
        assert_eq!(part("eq=a=b").content, PartContent::Text("a=b".into()));
        assert_eq!(part("empty=").content, PartContent::Text(String::new()));
        assert_eq!(part("f=@x.bin;").content, PartContent::File("x.bin".into()));
        assert_eq!(
            part(r#"q="a;b \"c\" \\""#).content,
            PartContent::Text(r#"a;b "c" \"#.into())
        );
        assert_eq!(
            part(r#"at="@home""#).content,
            PartContent::Text("@home".into())
        );
        let p = part(r#"f=@"x;y.bin"; TYPE="text/plain; charset=utf-8";filename="r;1""#);
        assert_eq!(p.content, PartContent::File("x;y.bin".into()));
        assert_eq!(p.content_type.as_deref(), Some("text/plain; charset=utf-8"));
        assert_eq!(p.filename.as_deref(), Some("r;1"));
        assert_eq!(
            part("t=hi;type=text/x-note").content_type.as_deref(),
            Some("text/x-note")
        );

        let refused = |s: &str| match parse_form_part(s) {
            Err(SendError::Usage(m)) => m,
            other => panic!("{s:?} gave {other:?}"),
        };
        assert!(refused("novalue").contains("name=text"));
        assert!(refused("=x").contains("no name"));
        assert!(refused("f=@").contains("no file name"));
        assert!(refused("f=<;type=a/b").contains("no file name"));
        assert!(refused("q=a;b").contains("double quotes"));
        assert!(refused("f=@a;typo=x/y").contains("';typo=x/y'"));
        assert!(refused("f=@a;type=plain").contains("not a content type"));
        assert!(refused("f=@a;headers=X: 1").contains("not supported"));
        assert!(refused(r#"q="open"#).contains("not closed"));
        assert!(refused(r#"q="a"b"#).contains("closing quote"));
    }

    #[tokio::test]
    async fn data_is_joined_with_ampersands_and_files_lose_their_line_breaks() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("form.txt");
        std::fs::write(&file, "a=1\r\nb=2\n").unwrap();
        let mut r = with_headers(&[]);
        r.data = vec![
            "x=1".into(),
            format!("@{}", file.display()),
            "y=caf\u{e9}".into(),
        ];
        let p = prepare(&r).await.unwrap();
        assert_eq!(p.method, "POST");
        assert_eq!(
            header(&p, "content-type"),
            Some("application/x-www-form-urlencoded")
        );
        let body = body_of(&p).await;
        assert_eq!(body, "x=1&a=1b=2&y=caf\u{e9}".as_bytes());
        assert_eq!(p.body_len, Some(body.len() as u64));

        // An empty -d is a POST with an empty body, as in curl.
        r.data = vec![String::new()];
        let p = prepare(&r).await.unwrap();
        assert_eq!((p.method.as_str(), p.body_len), ("POST", Some(0)));
        assert!(body_of(&p).await.is_empty());

        // A declared type wins, from -H first, then --content-type.
        r.content_type = Some("text/plain".into());
        assert_eq!(
            header(&prepare(&r).await.unwrap(), "content-type"),
            Some("text/plain")
        );
        r.headers = vec!["Content-Type: application/json".into()];
        let p = prepare(&r).await.unwrap();
        let types: Vec<_> = p
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("content-type"))
            .collect();
        assert_eq!(types.len(), 1);
        assert_eq!(types[0].1, "application/json");
    }

    #[tokio::test]
    async fn data_binary_streams_files_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("blob.bin");
        let bytes: Vec<u8> = (0..=255u8).chain(*b"\r\n\r\n").collect();
        std::fs::write(&file, &bytes).unwrap();
        let mut r = with_headers(&[]);
        r.method = Some("put".into());
        r.data_binary = vec![format!("@{}", file.display()), "tail\n".into()];
        let p = prepare(&r).await.unwrap();
        assert_eq!(p.method, "PUT");
        let mut want = bytes.clone();
        want.extend_from_slice(b"&tail\n");
        assert_eq!(body_of(&p).await, want);
        assert_eq!(p.body_len, Some(want.len() as u64));
        // The file is streamed, not held: the pieces name it.
        assert!(p
            .body
            .as_ref()
            .unwrap()
            .iter()
            .any(|x| matches!(x, Piece::File(..))));
        for kind in [DigestKind::Sha256, DigestKind::Blake3] {
            assert_eq!(body_digest(&p, kind).await.unwrap(), Some(kind.of(&want)));
        }
    }

    #[tokio::test]
    async fn data_files_are_checked_and_capped() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = with_headers(&[]);
        r.data = vec![format!("@{}", dir.path().join("missing").display())];
        match prepare(&r).await {
            Err(SendError::Io(m)) => assert!(m.contains("%40"), "{m}"),
            other => panic!("{:?}", other.map(|p| p.path)),
        }
        r.data = vec![format!("@{}", dir.path().display())];
        assert!(usage_text(prepare(&r).await).contains("directory"));
        r.data = vec!["@".into()];
        assert!(usage_text(prepare(&r).await).contains("no file name"));
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; 9 * 1024 * 1024]).unwrap();
        r.data = vec![format!("@{}", big.display()); 2];
        let m = usage_text(prepare(&r).await);
        assert!(m.contains("16 MiB") && m.contains("--data-binary"), "{m}");
        r.data = vec![format!("@{}", big.display())];
        assert_eq!(prepare(&r).await.unwrap().body_len, Some(9 * 1024 * 1024));
    }

    #[tokio::test]
    async fn body_flags_that_clash_are_refused() {
        let refused = |f: &dyn Fn(&mut Request)| {
            let mut r = with_headers(&[]);
            f(&mut r);
            async move { usage_text(prepare(&r).await) }
        };
        let m = refused(&|r| {
            r.data = vec!["a".into()];
            r.data_binary = vec!["b".into()];
        })
        .await;
        assert!(m.contains("cannot be mixed"), "{m}");
        let m = refused(&|r| {
            r.data = vec!["a".into()];
            r.form = vec!["f=1".into()];
        })
        .await;
        assert!(m.contains("-d and -F"), "{m}");
        let m = refused(&|r| {
            r.data_binary = vec!["a".into()];
            r.file = Some("x.bin".into());
        })
        .await;
        assert!(m.contains("--data-binary @x.bin"), "{m}");
        let m = refused(&|r| {
            r.form = vec!["f=1".into()];
            r.file = Some("x.bin".into());
        })
        .await;
        assert!(m.contains("-F file=@x.bin"), "{m}");
        let m = refused(&|r| {
            r.form = vec!["f=1".into()];
            r.multipart = true;
            r.file = Some("x.bin".into());
        })
        .await;
        assert!(m.contains("--multipart"), "{m}");
        let m = refused(&|r| {
            r.form = vec!["f=@a.png".into()];
            r.content_type = Some("image/png".into());
        })
        .await;
        assert!(m.contains(";type=TYPE"), "{m}");
        let m = refused(&|r| {
            r.form = vec!["f=1".into()];
            r.headers = vec!["Content-Type: application/json".into()];
        })
        .await;
        assert!(m.contains("unreadable"), "{m}");
        let twice: [(&[&str], &[&str]); 3] = [
            (&[], &["a=@-", "b=<-"]),
            (&[], &["a=<-", "b=@-;type=a/b"]),
            (&["@-", "@-"], &[]),
        ];
        for (data, form) in twice {
            let m = refused(&|r| {
                r.data = data.iter().map(|s| s.to_string()).collect();
                r.form = form.iter().map(|s| s.to_string()).collect();
            })
            .await;
            assert!(m.contains("only once"), "{m}");
        }
    }

    #[tokio::test]
    async fn a_form_holds_text_fields_and_streamed_files_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let pdf = dir.path().join("report.pdf");
        std::fs::write(&pdf, b"%PDF-1.7 fake").unwrap();
        let notes = dir.path().join("notes");
        std::fs::write(&notes, b"line 1\nline 2").unwrap();
        let mut r = with_headers(&["X-Request-ID: 7"]);
        r.form = vec![
            "title=Q3 \"final\"".into(),
            format!("doc=@{}", pdf.display()),
            format!(
                "raw=@{};type=text/csv;filename=data\r\n.csv",
                notes.display()
            ),
            format!("notes=<{}", notes.display()),
        ];
        let p = prepare(&r).await.unwrap();
        assert_eq!(p.method, "POST");
        let ct = header(&p, "content-type").unwrap().to_string();
        let boundary = ct.strip_prefix("multipart/form-data; boundary=").unwrap();
        let body = String::from_utf8(body_of(&p).await).unwrap();
        let want = format!(
            "--{b}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nQ3 \"final\"\r\n\
             --{b}\r\nContent-Disposition: form-data; name=\"doc\"; filename=\"report.pdf\"\r\nContent-Type: application/pdf\r\n\r\n%PDF-1.7 fake\r\n\
             --{b}\r\nContent-Disposition: form-data; name=\"raw\"; filename=\"data%0D%0A.csv\"\r\nContent-Type: text/csv\r\n\r\nline 1\nline 2\r\n\
             --{b}\r\nContent-Disposition: form-data; name=\"notes\"\r\n\r\nline 1\nline 2\r\n\
             --{b}--\r\n",
            b = boundary
        );
        assert_eq!(body, want);
        assert_eq!(p.body_len, Some(want.len() as u64));
        let files = p
            .body
            .as_ref()
            .unwrap()
            .iter()
            .filter(|x| matches!(x, Piece::File(..)))
            .count();
        assert_eq!(files, 3, "files are streamed from disk, not read now");

        // A multipart type of one's own keeps the boundary.
        r.headers = vec!["content-type: multipart/mixed".into()];
        let p = prepare(&r).await.unwrap();
        assert!(header(&p, "content-type")
            .unwrap()
            .starts_with("multipart/mixed; boundary=kafkasend-"));
        // A part whose file is missing fails before anything is sent.
        r.form = vec![format!("doc=@{}", dir.path().join("gone").display())];
        assert!(matches!(prepare(&r).await, Err(SendError::Io(m)) if m.contains("gone")));
    }

    #[tokio::test]
    async fn multipart_flag_is_a_form_of_one_part() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.json");
        std::fs::write(&file, b"{}").unwrap();
        let mut r = with_headers(&["Content-Type: text/plain"]);
        r.file = Some(file);
        r.multipart = true;
        r.field = "upload".into();
        let p = prepare(&r).await.unwrap();
        let ct = header(&p, "content-type").unwrap().to_string();
        let b = ct.strip_prefix("multipart/form-data; boundary=").unwrap();
        assert_eq!(
            String::from_utf8(body_of(&p).await).unwrap(),
            format!("--{b}\r\nContent-Disposition: form-data; name=\"upload\"; filename=\"a.json\"\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{b}--\r\n")
        );
    }

    #[tokio::test]
    async fn a_fifo_part_has_no_length_and_cannot_be_signed() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        crate::test_support::mkfifo(&fifo);
        let mut r = with_headers(&[]);
        r.form = vec!["a=1".into(), format!("f=@{}", fifo.display())];
        let p = prepare(&r).await.unwrap();
        assert_eq!(p.body_len, None);
        let m = match body_digest(&p, DigestKind::Blake3).await {
            Err(SendError::Usage(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(m.contains("not a regular file"), "{m}");
    }
}
