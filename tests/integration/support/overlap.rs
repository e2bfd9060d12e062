//! A target API that keeps the first call for each `Idempotency-Key` going
//! for ever (a byte every 100 ms) and answers later calls at once; it notes
//! when each call began and when its connection was dropped, and how many
//! calls for one key ran at the same time.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};

/// The body later calls for a key are answered with.
pub const ANSWER: &[u8] = b"the one complete answer\n";

/// One call as the API saw it.
#[derive(Debug, Clone)]
pub struct Call {
    /// The `Idempotency-Key` header, if sent.
    pub key: Option<String>,
    /// When it arrived.
    pub began: Instant,
    /// When its answer was done with: sent in full, or its connection gone.
    pub ended: Option<Instant>,
    /// Whether it was the never-ending kind.
    pub endless: bool,
}

/// What the API saw.
#[derive(Default)]
pub struct OverlapState {
    calls: Mutex<Vec<Call>>,
    /// Calls running now and the most ever running at once, per key.
    running: Mutex<HashMap<Option<String>, (usize, usize)>>,
}

impl OverlapState {
    /// Every call so far, in order of arrival.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The most calls for one key that ever ran at once.
    pub fn most_at_once(&self) -> usize {
        self.running
            .lock()
            .unwrap()
            .values()
            .map(|&(_, most)| most)
            .max()
            .unwrap_or(0)
    }
}

/// The API, running for the rest of the test's runtime.
pub type OverlapApi = super::LoopbackApi<OverlapState>;

impl OverlapApi {
    /// Starts it on a fresh loopback port.
    pub async fn start() -> Self {
        super::LoopbackApi::serve(answer).await
    }
}

async fn answer(
    state: Arc<OverlapState>,
    req: Request<Incoming>,
) -> Result<Response<Answer>, Infallible> {
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let index = {
        let mut calls = state.calls.lock().unwrap();
        let endless = !calls.iter().any(|c| c.key == key);
        calls.push(Call {
            key: key.clone(),
            began: Instant::now(),
            ended: None,
            endless,
        });
        calls.len() - 1
    };
    {
        let mut running = state.running.lock().unwrap();
        let (now, most) = running.entry(key.clone()).or_default();
        *now += 1;
        *most = (*most).max(*now);
    }
    let endless = state.calls.lock().unwrap()[index].endless;
    let body = Answer {
        left: if endless { None } else { Some(ANSWER) },
        tick: tokio::time::interval(Duration::from_millis(100)),
        _done: Done { state, index, key },
    };
    Ok(Response::builder()
        .header("content-type", "text/plain")
        .body(body)
        .unwrap())
}

/// A response body: `ANSWER` at once, or a byte every tick for ever.
pub struct Answer {
    left: Option<&'static [u8]>,
    tick: tokio::time::Interval,
    _done: Done,
}

impl hyper::body::Body for Answer {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(all) = self.left {
            self.left = Some(&[]);
            return Poll::Ready(
                (!all.is_empty()).then(|| Ok(Frame::data(Bytes::from_static(all)))),
            );
        }
        match self.tick.poll_tick(cx) {
            Poll::Ready(_) => Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"."))))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Notes the end of a call when its body is dropped: hyper drops it once
/// sent, or when the connection is gone.
struct Done {
    state: Arc<OverlapState>,
    index: usize,
    key: Option<String>,
}

impl Drop for Done {
    fn drop(&mut self) {
        if let Ok(mut calls) = self.state.calls.lock() {
            calls[self.index].ended = Some(Instant::now());
        }
        if let Ok(mut running) = self.state.running.lock() {
            if let Some((now, _)) = running.get_mut(&self.key) {
                *now -= 1;
            }
        }
    }
}
