//! Spans for OpenTelemetry export: what `send` and the portal record, a
//! bounded queue they record into without ever waiting, and the OTLP
//! protobuf encoding of a batch (`otlp`). The HTTP export itself is in
//! `cli::otlp`, which owns the HTTP client.
//!
//! Recording is off until [`install`] is called (export configured); then a
//! span is one `try_send` into a bounded channel, and a full channel drops
//! the span and counts it ([`dropped`]): the data path never waits on a
//! collector.

pub mod otlp;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::SystemTime;

use tokio::sync::mpsc;

use crate::protocol::trace::{SpanId, TraceId};

/// Most spans waiting for export; more are dropped and counted.
pub const QUEUE_SPANS: usize = 4096;

/// What a span is, in OTLP's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Work inside the process.
    Internal,
    /// A call to another service (the API call).
    Client,
    /// A message sent for another process to take (send's request).
    Producer,
    /// A message taken from another process (the portal's job).
    Consumer,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Text.
    Str(String),
    /// A whole number.
    Int(i64),
}

/// One finished span.
#[derive(Debug, Clone)]
pub struct Span {
    /// The trace it belongs to.
    pub trace_id: TraceId,
    /// Its own id.
    pub span_id: SpanId,
    /// Its parent, if any.
    pub parent: Option<SpanId>,
    /// The vendors' `tracestate`, as carried.
    pub trace_state: Option<String>,
    /// Its name (`send`, `upload`, `job`, `call`, ...).
    pub name: &'static str,
    /// Its kind.
    pub kind: Kind,
    /// When it started.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// Its attributes.
    pub attributes: Vec<(&'static str, Value)>,
    /// An error message when it failed.
    pub error: Option<String>,
}

impl Span {
    /// A span of `name` from `start` to `end`, with no attributes.
    pub fn new(
        trace_id: TraceId,
        span_id: SpanId,
        parent: Option<SpanId>,
        name: &'static str,
        start: SystemTime,
        end: SystemTime,
    ) -> Self {
        Self {
            trace_id,
            span_id,
            parent,
            trace_state: None,
            name,
            kind: Kind::Internal,
            start,
            end,
            attributes: Vec::new(),
            error: None,
        }
    }

    /// The same span with `kind`.
    pub fn kind(mut self, kind: Kind) -> Self {
        self.kind = kind;
        self
    }

    /// The same span with one more attribute.
    pub fn attr(mut self, key: &'static str, value: impl Into<Value>) -> Self {
        self.attributes.push((key, value.into()));
        self
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_string())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}

impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl From<u16> for Value {
    fn from(n: u16) -> Self {
        Value::Int(n.into())
    }
}

/// Where recorded spans go once export is on: the sending half of the
/// exporter's bounded queue.
static QUEUE: OnceLock<mpsc::Sender<Span>> = OnceLock::new();

/// Spans dropped because the queue was full (or the exporter gone).
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Turns recording on: spans go to the returned receiver, at most
/// [`QUEUE_SPANS`] waiting. `None` when it is on already (once per process).
pub fn install() -> Option<mpsc::Receiver<Span>> {
    let (tx, rx) = mpsc::channel(QUEUE_SPANS);
    QUEUE.set(tx).ok().map(|()| rx)
}

/// Whether spans are recorded: callers skip building them otherwise.
pub fn enabled() -> bool {
    QUEUE.get().is_some()
}

/// Records a finished span; never waits. Dropped and counted when the queue
/// is full.
pub fn record(span: Span) {
    if let Some(tx) = QUEUE.get() {
        push(tx, span, &DROPPED);
    }
}

/// Queues `span` without waiting, counting it in `dropped` when `tx` is
/// full or closed.
fn push(tx: &mpsc::Sender<Span>, span: Span, dropped: &AtomicU64) {
    if tx.try_send(span).is_err() {
        dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Spans dropped so far because the queue was full or export had stopped.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Counts spans lost elsewhere (a batch the collector did not take).
pub fn count_dropped(n: u64) {
    DROPPED.fetch_add(n, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let span = |n: u64| {
            let t = SystemTime::now();
            Span::new(TraceId::random(), SpanId::random(), None, "x", t, t).attr("n", n)
        };
        // Recording stays off for the test binary: a span recorded is
        // nowhere, and counted nowhere.
        assert!(!enabled());
        record(span(0));
        assert_eq!(dropped(), 0);
        // The queue's behaviour, on a queue of this test's own.
        let (tx, mut rx) = mpsc::channel(QUEUE_SPANS);
        let lost = AtomicU64::new(0);
        for n in 0..(QUEUE_SPANS as u64 + 10) {
            push(&tx, span(n), &lost);
        }
        assert_eq!(lost.load(Ordering::Relaxed), 10);
        // The queued ones are the first, in order, no more than the bound.
        let mut got = 0;
        while let Ok(s) = rx.try_recv() {
            assert_eq!(s.attributes[0].1, Value::Int(got));
            got += 1;
        }
        assert_eq!(got as usize, QUEUE_SPANS);
        drop(rx);
        push(&tx, span(0), &lost);
        assert_eq!(
            lost.load(Ordering::Relaxed),
            11,
            "a closed queue counts too"
        );
    }
}
