//! A target API on loopback that pushes back: it answers each call from a
//! script of statuses (429, 503, 409, then 200), with the `Retry-After` a
//! test asks for, and holds calls in rounds to count how many arrive at once.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use super::payload::hex;
use super::{wait_until, WAIT};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// One call as the API saw it.
#[derive(Debug, Clone)]
pub struct Call {
    /// Method.
    pub method: String,
    /// Path, without the query.
    pub path: String,
    /// The `Idempotency-Key` header, if sent.
    pub key: Option<String>,
    /// Hex SHA-256 of the body received.
    pub body_sha256: String,
    /// The status answered.
    pub status: u16,
}

/// What the API saw, and the rounds of `/crowd`.
#[derive(Default)]
pub struct PushbackState {
    calls: Mutex<Vec<Call>>,
    /// Calls so far per (path, key or none).
    counts: Mutex<HashMap<(String, Option<String>), usize>>,
    /// `/crowd`: the status each finished round was answered with; calls
    /// arriving now belong to round `len()`.
    rounds: Mutex<Vec<u16>>,
    /// `/crowd`: calls that arrived in each round.
    arrived: Mutex<Vec<u64>>,
    round_over: Notify,
}

impl PushbackState {
    /// Every call so far, in order of arrival.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The calls to `path`.
    pub fn calls_to(&self, path: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.path == path)
            .collect()
    }

    /// Waits (bounded) until `n` `/crowd` calls wait in the round still
    /// open (calls of an ended round may not have left yet).
    pub async fn wait_crowd(&self, n: u64) {
        wait_until("calls did not reach /crowd", || {
            let open = self.rounds.lock().unwrap().len();
            self.arrived_in(open) >= n
        })
        .await;
    }

    /// How many `/crowd` calls arrived in round `r`.
    pub fn arrived_in(&self, r: usize) -> u64 {
        self.arrived.lock().unwrap().get(r).copied().unwrap_or(0)
    }

    /// Ends the current `/crowd` round: its calls are answered with
    /// `status` (503 and 429 with `Retry-After: 1`); later calls wait for
    /// the next round.
    pub fn end_round(&self, status: u16) {
        self.rounds.lock().unwrap().push(status);
        self.round_over.notify_waiters();
    }
}

/// The API, running for the rest of the test's runtime.
pub type PushbackApi = super::LoopbackApi<PushbackState>;

impl PushbackApi {
    /// Starts it on a fresh loopback port.
    pub async fn start() -> Self {
        super::LoopbackApi::serve(answer).await
    }
}

/// The `Retry-After` a query's `ra=` names: `past` (a date long gone),
/// `huge` (more seconds than fit in 64 bits), `garbage`, or the value itself.
fn retry_after_of(query: Option<&str>) -> Option<String> {
    let ra = query?.split('&').find_map(|p| p.strip_prefix("ra="))?;
    Some(match ra {
        "past" => "Thu, 01 Jan 1970 00:00:00 GMT".into(),
        "huge" => "99999999999999999999999999".into(),
        "garbage" => "soon-ish".into(),
        other => other.into(),
    })
}

fn reply(status: u16, retry_after: Option<&str>, body: String) -> Response<Body> {
    let mut r = Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "text/plain");
    if let (Some(ra), 429 | 503) = (retry_after, status) {
        r = r.header("retry-after", ra);
    }
    r.body(Full::new(Bytes::from(body)).boxed()).unwrap()
}

/// `/script/S1,S2,...?ra=V`: the n-th call with one idempotency key (or,
/// without one, to one path) is answered with Sn, the last status repeating,
/// and a body naming the call. `/crowd`: held until the test ends the round.
async fn answer(
    state: Arc<PushbackState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let key = req
        .headers()
        .get("idempotency-key")
        .map(|v| v.to_str().unwrap().to_string());
    let mut body = req.into_body();
    let mut h = Sha256::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Ok(reply(400, None, "body cut off".into()));
        };
        if let Ok(d) = frame.into_data() {
            h.update(&d);
        }
    }
    let body_sha256 = hex(&h.finalize());
    let crowd = path == "/crowd";
    // `/crowd` asks for one second, so its rounds come back together.
    let ra = if crowd {
        Some("1".to_string())
    } else {
        retry_after_of(query.as_deref())
    };
    let (status, text) = if crowd {
        let round = {
            let rounds = state.rounds.lock().unwrap();
            let mut arrived = state.arrived.lock().unwrap();
            let r = rounds.len();
            if arrived.len() <= r {
                arrived.resize(r + 1, 0);
            }
            arrived[r] += 1;
            r
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        let status = loop {
            let over = state.round_over.notified();
            tokio::pin!(over);
            over.as_mut().enable();
            if let Some(s) = state.rounds.lock().unwrap().get(round) {
                break *s;
            }
            if tokio::time::timeout_at(deadline, over).await.is_err() {
                break 500;
            }
        };
        (status, format!("crowd round {round}: {status}\n"))
    } else if let Some(script) = path.strip_prefix("/script/") {
        let statuses: Vec<u16> = script.split(',').map(|s| s.parse().unwrap()).collect();
        let n = {
            let mut counts = state.counts.lock().unwrap();
            let n = counts.entry((path.clone(), key.clone())).or_default();
            *n += 1;
            *n
        };
        let status = statuses[(n - 1).min(statuses.len() - 1)];
        (status, format!("call {n}: {status}\n"))
    } else {
        (404, "no such route\n".to_string())
    };
    state.calls.lock().unwrap().push(Call {
        method,
        path,
        key,
        body_sha256,
        status,
    });
    Ok(reply(status, ra.as_deref(), text))
}
