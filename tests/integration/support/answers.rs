//! A target API on loopback whose answers exercise how `send` shows a
//! response: a head with repeated headers, bodies compressed with each
//! coding (whole, cut short, or not what they claim), one compressed only
//! when asked, and one that drips until the test lets it finish.

use std::convert::Infallible;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use tokio::sync::{mpsc, Notify};

use super::WAIT;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// The headers `/head` answers with, in order: names repeat.
pub const HEAD_HEADERS: &[(&str, &str)] = &[
    ("content-type", "text/plain"),
    ("set-cookie", "a=1; Path=/"),
    ("x-multi", "one"),
    ("set-cookie", "b=2"),
    ("x-multi", "two"),
];

/// The body `/head` answers with.
pub const HEAD_BODY: &str = "created\n";

/// What `/drip` sends first, and last once the test lets it.
pub const DRIP_FIRST: &str = "first;";
/// See [`DRIP_FIRST`].
pub const DRIP_LAST: &str = "last.";

/// What the API saw and the switch a test flips.
#[derive(Default)]
pub struct AnswersState {
    /// The `Accept-Encoding` of each request, in order.
    pub accept_encoding: Mutex<Vec<Option<String>>>,
    /// Set just before `/drip` sends its last bytes.
    pub drip_last_sent: AtomicBool,
    /// Set to let `/drip` finish.
    drip_released: AtomicBool,
    drip_go: Notify,
}

impl AnswersState {
    /// Lets `/drip` send its last bytes.
    pub fn release_drip(&self) {
        self.drip_released.store(true, Ordering::SeqCst);
        self.drip_go.notify_waiters();
    }
}

/// The API, running for the rest of the test's runtime.
pub type AnswersApi = super::LoopbackApi<AnswersState>;

impl AnswersApi {
    /// Starts it on a fresh loopback port.
    pub async fn start() -> Self {
        super::LoopbackApi::serve(answer).await
    }
}

/// The text the `/encoded/...` and `/negotiated` routes send, compressed or
/// not: a few hundred KiB that compress well.
pub fn plain_text() -> Vec<u8> {
    (0..20_000)
        .flat_map(|i| {
            format!("line {i}: the quick brown fox jumps over the lazy dog\n").into_bytes()
        })
        .collect()
}

/// `data` compressed as `coding` (`gzip`, `zlib`, `raw`, `br`).
pub fn compress(coding: &str, data: &[u8]) -> Vec<u8> {
    use flate2::Compression;
    let level = Compression::default();
    match coding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), level);
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "zlib" => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), level);
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "raw" => {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), level);
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "br" => {
            let mut out = Vec::new();
            let params = brotli::enc::BrotliEncoderParams::default();
            brotli::BrotliCompress(&mut &data[..], &mut out, &params).unwrap();
            out
        }
        other => panic!("no coding {other}"),
    }
}

/// What `/encoded/KIND` sends: its `Content-Encoding` and body. KIND is a
/// coding of [`compress`] (`zlib` and `raw` are both called `deflate`),
/// `gzip-cut` (the gzip stream's last half missing), `gzip-garbage`
/// (not gzip at all) or `zstd` (a coding `send` does not decode).
pub fn encoded(kind: &str) -> (&'static str, Vec<u8>) {
    let text = plain_text();
    match kind {
        "gzip" => ("gzip", compress("gzip", &text)),
        "zlib" => ("deflate", compress("zlib", &text)),
        "raw" => ("deflate", compress("raw", &text)),
        "br" => ("br", compress("br", &text)),
        "gzip-cut" => {
            let mut body = compress("gzip", &text);
            body.truncate(body.len() / 2);
            ("gzip", body)
        }
        "gzip-garbage" => ("gzip", b"this is not a gzip stream at all".repeat(100)),
        "zstd" => ("zstd", text),
        other => panic!("no route /encoded/{other}"),
    }
}

async fn answer(
    state: Arc<AnswersState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let accept = req
        .headers()
        .get("accept-encoding")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    state.accept_encoding.lock().unwrap().push(accept.clone());
    let path = req.uri().path().to_string();
    let mut body = req.into_body();
    while let Some(Ok(_)) = body.frame().await {}
    let full = |status: u16, headers: &[(&str, &str)], body: Vec<u8>| {
        let mut r = Response::builder().status(status);
        for (n, v) in headers {
            r = r.header(*n, *v);
        }
        Ok(r.body(Full::new(Bytes::from(body)).boxed()).unwrap())
    };
    if path == "/head" {
        return full(201, HEAD_HEADERS, HEAD_BODY.into());
    }
    if let Some(kind) = path.strip_prefix("/encoded/") {
        let (coding, body) = encoded(kind);
        return full(
            200,
            &[("content-type", "text/plain"), ("content-encoding", coding)],
            body,
        );
    }
    if path == "/negotiated" {
        let text = plain_text();
        return match accept.is_some_and(|a| a.contains("gzip")) {
            true => full(
                200,
                &[("content-encoding", "gzip")],
                compress("gzip", &text),
            ),
            false => full(200, &[("content-type", "text/plain")], text),
        };
    }
    if path == "/drip" {
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
        tokio::spawn(async move {
            let _ = tx.send(Ok(Frame::data(Bytes::from(DRIP_FIRST)))).await;
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let go = state.drip_go.notified();
                if state.drip_released.load(Ordering::SeqCst) {
                    break;
                }
                if tokio::time::timeout_at(deadline, go).await.is_err() {
                    break;
                }
            }
            state.drip_last_sent.store(true, Ordering::SeqCst);
            let _ = tx.send(Ok(Frame::data(Bytes::from(DRIP_LAST)))).await;
        });
        return Ok(Response::builder()
            .header("content-type", "text/plain")
            .body(StreamBody::new(Frames(rx)).boxed())
            .unwrap());
    }
    full(404, &[], b"no such route".to_vec())
}

/// A body's frames as they come through a channel.
struct Frames(mpsc::Receiver<Result<Frame<Bytes>, Infallible>>);

impl futures_core::Stream for Frames {
    type Item = Result<Frame<Bytes>, Infallible>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}
