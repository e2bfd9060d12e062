//! The target API of `bench/soak`: answers what a job asks for and writes
//! down every call, so the harness can tell lost, duplicated and corrupted
//! jobs apart.
//!
//! `cargo run --release --example soak_api -- 127.0.0.1:0 LEDGER_FILE`
//!
//! - `GET|POST|PUT /soak/JOB/STATUS/BYTES`: reads the request body as it
//!   arrives (hashing it), then answers STATUS with BYTES of pseudo-random
//!   data seeded by JOB, so every call for one job sends the same body;
//! - `PUT /_soak/mode/MODE`: `normal`, `slow` (each job call waits 2 to 6 s
//!   before answering) or `busy` (each job call is answered 503 with
//!   `Retry-After: 1`); the harness switches modes on its fault schedule;
//! - `GET /_soak/ping`: `pong`.
//!
//! Each job call appends one JSON line to LEDGER_FILE when it ends: its
//! times (Unix seconds), the job, the `Idempotency-Key`, the status sent,
//! the request body's size and SHA-256, the response body's size and SHA-256,
//! and `"aborted": true` when the request body broke off (the caller went
//! away mid-call, e.g. a portal killed). It prints `listening on http://ADDR`
//! on stderr once it accepts connections.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};

const NORMAL: u8 = 0;
const SLOW: u8 = 1;
const BUSY: u8 = 2;

/// Largest response body a job may ask for; more would only cost memory.
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// What every connection shares: the mode and the ledger file.
struct Api {
    mode: AtomicU8,
    /// One line per call, written with a single `write_all` under the lock so
    /// lines of concurrent calls never interleave.
    ledger: Mutex<std::fs::File>,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    resp
}

/// `len` bytes of xorshift64* output seeded by `job`: cheap, incompressible,
/// and the same for every call of one job.
fn body_for(job: u64, len: usize) -> Vec<u8> {
    let mut state = job.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The job, status and response size of `/soak/JOB/STATUS/BYTES`.
fn parse_job_path(path: &str) -> Option<(u64, StatusCode, usize)> {
    let mut parts = path.strip_prefix("/soak/")?.split('/');
    let job = parts.next()?.parse().ok()?;
    let status = StatusCode::from_u16(parts.next()?.parse().ok()?).ok()?;
    let bytes: usize = parts.next()?.parse().ok()?;
    if parts.next().is_some() || bytes > MAX_RESPONSE_BYTES {
        return None;
    }
    Some((job, status, bytes))
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

async fn handle(
    api: Arc<Api>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/_soak/ping" {
        return Ok(text(StatusCode::OK, "pong\n"));
    }
    if let Some(mode) = path.strip_prefix("/_soak/mode/") {
        let m = match mode {
            "normal" => NORMAL,
            "slow" => SLOW,
            "busy" => BUSY,
            _ => return Ok(text(StatusCode::NOT_FOUND, "modes: normal, slow, busy\n")),
        };
        api.mode.store(m, Ordering::SeqCst);
        return Ok(text(StatusCode::OK, format!("mode {mode}\n")));
    }
    let Some((job, status, resp_len)) = parse_job_path(&path) else {
        return Ok(text(
            StatusCode::NOT_FOUND,
            "expected /soak/JOB/STATUS/BYTES\n",
        ));
    };
    let started = now();
    let method = req.method().to_string();
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut body = req.into_body();
    let mut hasher = Sha256::new();
    let mut req_len = 0u64;
    let mut aborted = false;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(data) = f.into_data() {
                    req_len += data.len() as u64;
                    hasher.update(&data);
                }
            }
            Err(_) => {
                aborted = true;
                break;
            }
        }
    }
    let mode = api.mode.load(Ordering::SeqCst);
    if mode == SLOW && !aborted {
        tokio::time::sleep(Duration::from_millis(2000 + job % 4001)).await;
    }
    let busy = mode == BUSY;
    let (status, resp_body) = if busy {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Bytes::from_static(b"busy, retry later\n"),
        )
    } else {
        (status, Bytes::from(body_for(job, resp_len)))
    };
    let mut resp = Response::new(Full::new(resp_body.clone()));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/octet-stream"),
    );
    if busy {
        headers.insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from_static("1"),
        );
    }
    let line = format!(
        "{{\"job\": {job}, \"key\": {}, \"method\": {}, \"start\": {started:.3}, \"end\": {:.3}, \
         \"status\": {}, \"aborted\": {aborted}, \"busy\": {}, \"req_bytes\": {req_len}, \
         \"req_sha256\": \"{}\", \"resp_bytes\": {}, \"resp_sha256\": \"{}\"}}\n",
        json_str(&key),
        json_str(&method),
        now(),
        status.as_u16(),
        busy,
        hex(&hasher.finalize()),
        resp_body.len(),
        hex(&Sha256::digest(&resp_body)),
    );
    if let Ok(mut f) = api.ledger.lock() {
        if let Err(e) = f.write_all(line.as_bytes()) {
            eprintln!("soak_api: writing the ledger failed: {e}");
        }
    }
    Ok(resp)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:0".into())
        .parse()?;
    let ledger_path = args.next().ok_or("usage: soak_api ADDR LEDGER_FILE")?;
    let ledger = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&ledger_path)?;
    let api = Arc::new(Api {
        mode: AtomicU8::new(NORMAL),
        ledger: Mutex::new(ledger),
    });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let api = Arc::clone(&api);
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(Arc::clone(&api), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
