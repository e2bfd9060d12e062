//! A target API that shows how far each request's body has come while it
//! still arrives, and how it ended: complete (with its digest), broken off
//! before `Content-Length` bytes, or refused early (a 401, say). What the
//! pipelined relay's tests look at.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use sha2::{Digest, Sha256};

use super::payload::hex;

/// How a call's request body ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Every byte `Content-Length` announced arrived; the body's SHA-256 in hex.
    Complete(String),
    /// The connection broke before the body was complete.
    BrokeOff(String),
    /// The API answered with its [`Refusal`] before the body was complete.
    Refused,
}

/// One call as the API saw it.
#[derive(Debug)]
pub struct Call {
    /// The request path.
    pub path: String,
    /// Its `Content-Length`.
    pub declared: Option<u64>,
    /// Its `Authorization` header.
    pub authorization: Option<String>,
    received: AtomicU64,
    ended: Mutex<Option<Ended>>,
}

impl Call {
    /// Body bytes received so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    /// How the body ended, once it did.
    pub fn ended(&self) -> Option<Ended> {
        self.ended.lock().unwrap().clone()
    }
}

/// Calls the API answers early, before their body is complete.
#[derive(Debug, Clone, Copy)]
pub struct Refusal {
    /// How many calls, the first ones, are refused.
    pub calls: usize,
    /// Body bytes a call gets to send before it is refused.
    pub after: u64,
    /// The status they are answered with.
    pub status: u16,
}

/// What the API saw, and how it behaves.
#[derive(Default)]
pub struct StreamState {
    calls: Mutex<Vec<Arc<Call>>>,
    /// When set, calls are answered early (the rest of their body drained
    /// in the background, as real servers do).
    pub refusal: Mutex<Option<Refusal>>,
}

impl StreamState {
    /// Every call so far, in order of arrival.
    pub fn calls(&self) -> Vec<Arc<Call>> {
        self.calls.lock().unwrap().clone()
    }

    /// The calls to `path`.
    pub fn calls_to(&self, path: &str) -> Vec<Arc<Call>> {
        self.calls()
            .into_iter()
            .filter(|c| c.path == path)
            .collect()
    }
}

fn answer(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(body.into()))
        .unwrap()
}

/// Serves one call: reads its body frame by frame, noting each, and
/// answers 200 with the body's SHA-256 in hex once it is complete.
pub async fn handler(
    state: Arc<StreamState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let call = Arc::new(Call {
        path: req.uri().path().to_string(),
        declared: header("content-length").and_then(|v| v.parse().ok()),
        authorization: header("authorization"),
        received: AtomicU64::new(0),
        ended: Mutex::new(None),
    });
    let nth = {
        let mut calls = state.calls.lock().unwrap();
        calls.push(Arc::clone(&call));
        calls.len()
    };
    let refusal = (*state.refusal.lock().unwrap()).filter(|r| nth <= r.calls);
    let mut body = req.into_body();
    let mut hasher = Sha256::new();
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                hasher.update(&data);
                let got = call.received.fetch_add(data.len() as u64, Ordering::SeqCst)
                    + data.len() as u64;
                if let Some(r) = refusal.filter(|r| got >= r.after) {
                    *call.ended.lock().unwrap() = Some(Ended::Refused);
                    tokio::spawn(async move { while let Some(Ok(_)) = body.frame().await {} });
                    let status = StatusCode::from_u16(r.status).unwrap();
                    return Ok(answer(status, "refused"));
                }
            }
            Some(Err(e)) => {
                *call.ended.lock().unwrap() = Some(Ended::BrokeOff(e.to_string()));
                return Ok(answer(StatusCode::BAD_REQUEST, "broken body"));
            }
        }
    }
    let digest = hex(&hasher.finalize());
    *call.ended.lock().unwrap() = Some(Ended::Complete(digest.clone()));
    Ok(answer(StatusCode::OK, digest))
}
