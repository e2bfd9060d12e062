//! The target API of `bench/run`: as little work per byte as a real API could do.
//!
//! `cargo run --release --example bench_api -- 127.0.0.1:0 [--rate-mbps N] [--latency-ms N]`
//!
//! - `GET /ping`: answers `pong` (5 bytes), for latency runs;
//! - any other request: reads the body as it arrives, hashes it with SHA-256
//!   and drops it, then answers `{"bytes": N, "sha256": "…"}`. Nothing is
//!   buffered, so uploads of any size take the same memory.
//!
//! `--rate-mbps N` makes it a slower, more distant API: each request's body
//! is read at most N MB/s (10^6 bytes), paced as it arrives, so the sender
//! is held back by TCP as it would be by a real API; `--latency-ms N` waits
//! N ms before reading a request and again before answering it.
//!
//! It prints `listening on http://ADDR` on stderr once it accepts connections.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

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

/// How the API slows down, from the command line.
#[derive(Clone, Copy, Default)]
struct Pace {
    /// Bytes per second a body is read at; none: as fast as it comes.
    rate: Option<f64>,
    /// Wait before reading a request and before answering it.
    latency: Duration,
}

async fn handle(req: Request<Incoming>, pace: Pace) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() == Method::GET && req.uri().path() == "/ping" {
        return Ok(text(StatusCode::OK, "text/plain", "pong\n".into()));
    }
    tokio::time::sleep(pace.latency).await;
    let mut body = req.into_body();
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let started = Instant::now();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(data) = f.into_data() {
                    len += data.len() as u64;
                    hasher.update(&data);
                    // Not reading the next frame until the bytes so far are
                    // due leaves the rest in TCP's buffers: the sender feels
                    // the rate as backpressure.
                    if let Some(rate) = pace.rate {
                        let due = started + Duration::from_secs_f64(len as f64 / rate);
                        tokio::time::sleep_until(due.into()).await;
                    }
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
    tokio::time::sleep(pace.latency).await;
    Ok(text(StatusCode::OK, "application/json", json))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut addr: SocketAddr = "127.0.0.1:0".parse()?;
    let mut pace = Pace::default();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> Result<f64, String> {
            let v = args.next().ok_or(format!("{name} needs a value"))?;
            v.parse::<f64>()
                .ok()
                .filter(|n| n.is_finite() && *n > 0.0)
                .ok_or(format!("{name}: '{v}' is not a positive number"))
        };
        match arg.as_str() {
            "--rate-mbps" => pace.rate = Some(value("--rate-mbps")? * 1e6),
            "--latency-ms" => pace.latency = Duration::from_secs_f64(value("--latency-ms")? / 1e3),
            _ => addr = arg.parse()?,
        }
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |req| handle(req, pace)),
                )
                .await;
        });
    }
}
