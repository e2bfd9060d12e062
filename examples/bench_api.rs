//! The target API of `bench/run`: as little work per byte as a real API could do.
//!
//! `cargo run --release --example bench_api -- 127.0.0.1:0`
//!
//! - `GET /ping`: answers `pong` (5 bytes), for latency runs;
//! - any other request: reads the body as it arrives, hashes it with SHA-256
//!   and drops it, then answers `{"bytes": N, "sha256": "…"}`. Nothing is
//!   buffered, so uploads of any size take the same memory.
//!
//! It prints `listening on http://ADDR` on stderr once it accepts connections.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() == Method::GET && req.uri().path() == "/ping" {
        return Ok(text(StatusCode::OK, "text/plain", "pong\n".into()));
    }
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
            Err(e) => {
                let msg = format!("reading the body failed after {len} bytes: {e}\n");
                return Ok(text(StatusCode::BAD_REQUEST, "text/plain", msg));
            }
        }
    }
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let json = format!("{{\"bytes\": {len}, \"sha256\": \"{digest}\"}}\n");
    Ok(text(StatusCode::OK, "application/json", json))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into())
        .parse()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(handle))
                .await;
        });
    }
}
