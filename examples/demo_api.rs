//! A small REST API to try KafkaSend against.
//!
//! `cargo run --example demo_api -- 127.0.0.1:8080`
//!
//! - any method on any path: answers JSON with what it received (method,
//!   path, query, headers, body length and SHA-256), reading the body as a
//!   stream, so uploads of any size work;
//! - `GET /bytes/N`: streams N bytes of a repeating pattern back.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn json_escape(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

async fn handle(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<u64>().ok())
    {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        tokio::spawn(async move {
            let block: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
            let mut left = n;
            while left > 0 {
                let take = left.min(block.len() as u64) as usize;
                if tx
                    .send(Ok(Frame::data(Bytes::copy_from_slice(&block[..take]))))
                    .await
                    .is_err()
                {
                    return;
                }
                left -= take as u64;
            }
        });
        let stream = futures_like::ReceiverStream(rx);
        let resp = Response::builder()
            .header("content-type", "application/octet-stream")
            .header("content-length", n)
            .body(StreamBody::new(stream).boxed())
            .unwrap_or_default();
        return Ok(resp);
    }
    let method = req.method().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let headers: Vec<String> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            format!(
                "{}: {}",
                json_escape(n.as_str()),
                json_escape(v.to_str().unwrap_or("?"))
            )
        })
        .collect();
    let mut body = req.into_body();
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(data) = f.into_data() {
                    len += data.len() as u64;
                    hasher.update(&data);
                }
            }
            Err(_) => break,
        }
    }
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let text = format!(
        "{{\"method\": {}, \"path\": {}, \"query\": {}, \"headers\": {{{}}}, \"body_bytes\": {len}, \"body_sha256\": \"{digest}\"}}\n",
        json_escape(&method),
        json_escape(&path),
        json_escape(&query),
        headers.join(", ")
    );
    let resp = Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(text)).boxed())
        .unwrap_or_default();
    Ok(resp)
}

/// A minimal `Stream` over a tokio receiver, so the example needs no stream crate.
mod futures_like {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    pub struct ReceiverStream<T>(pub tokio::sync::mpsc::Receiver<T>);

    impl<T> futures_core::Stream for ReceiverStream<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into())
        .parse()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("demo API listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(handle))
                .await;
        });
    }
}
