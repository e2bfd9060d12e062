//! The portal's place in a job's trace and the spans it exports: `job`
//! (from the start record to the last answer record, under the sender's
//! span) with `assemble`, `policy`, `token` (each token fetch), `call` (one
//! per request sent to the API, each the parent the API is given) and
//! `respond` under it.

use std::time::SystemTime;

use crate::protocol::trace::{SpanId, TraceContext, TraceParent};
use crate::protocol::wire::JobId;
use crate::telemetry::{self, Kind, Span};

/// What logs and spans show in place of text built from a sealed job's
/// request (its method, path, header values, or a message quoting them).
pub(crate) const WITHHELD: &str = "(sealed: withheld)";

/// `text`, built from a job's request, as logs and exported spans may show
/// it: as it is for a clear job; [`WITHHELD`] for a sealed one, whose
/// request is secret from everything but the API call, the portal's logs
/// and its trace collector included. A sealed job's full messages go to its
/// sender only, sealed.
pub(crate) fn shown(sealed: bool, text: &str) -> &str {
    if sealed {
        WITHHELD
    } else {
        text
    }
}

/// One job's trace as the portal runs it: the trace its start record
/// carried (or a new one for a request that carried none), the job span
/// under the sender's span, and the call span under it. Drawn when the start
/// record is read, so each reading of a job (another portal, or this one
/// again) has spans of its own.
#[derive(Debug, Clone)]
pub(crate) struct JobTrace {
    /// The trace, the job span's id, the flags.
    pub(crate) job: TraceParent,
    /// The sender's span, when the request carried one.
    pub(crate) parent: Option<SpanId>,
    /// The `tracestate`, carried on unchanged.
    pub(crate) state: Option<String>,
    /// The span of the first API request; a request sent again (a token
    /// refreshed, a pushback) has a span of its own.
    pub(crate) call: SpanId,
    /// When the start record was read.
    pub(crate) received: SystemTime,
    /// When the policy check began and ended.
    pub(crate) policy: Option<(SystemTime, SystemTime)>,
}

impl JobTrace {
    /// The portal's spans under `given` (what the start record carried), or
    /// in a new trace.
    pub(crate) fn new(given: Option<TraceContext>, received: SystemTime) -> Self {
        let span = SpanId::random();
        let (job, parent, state) = match given {
            Some(t) => (t.parent.child(span), Some(t.parent.parent_id), t.state),
            None => (TraceParent::start(span), None, None),
        };
        Self {
            job,
            parent,
            state,
            call: SpanId::random(),
            received,
            policy: None,
        }
    }

    /// What the API request carries: its parent is that request's `call`
    /// span, `span`.
    pub(crate) fn call_context(&self, span: SpanId) -> TraceContext {
        TraceContext {
            parent: self.job.child(span),
            state: self.state.clone(),
        }
    }

    /// What the response's start record carries: its parent is the job
    /// span, and it tells `send` the trace id even when it started none.
    pub(crate) fn job_context(&self) -> TraceContext {
        TraceContext {
            parent: self.job,
            state: self.state.clone(),
        }
    }

    /// Whether this job's spans are recorded: export is on and the trace
    /// is sampled (parent-based, as OpenTelemetry's default sampler). An
    /// unsampled trace is still carried on, its flags unchanged.
    pub(crate) fn recorded(&self) -> bool {
        telemetry::enabled() && self.job.sampled()
    }

    /// A span under the job span.
    pub(crate) fn child(
        &self,
        id: SpanId,
        name: &'static str,
        from: SystemTime,
        to: SystemTime,
    ) -> Span {
        Span::new(
            self.job.trace_id,
            id,
            Some(self.job.parent_id),
            name,
            from,
            to,
        )
    }

    /// Records the `token` span of an OAuth2 token fetch from `from` until
    /// now; `error` when it failed.
    pub(crate) fn token(&self, from: SystemTime, error: Option<String>) {
        if self.recorded() {
            let mut span = self.child(SpanId::random(), "token", from, SystemTime::now());
            span.error = error;
            telemetry::record(span);
        }
    }
}

/// One request to the API, from when it is sent to its answer's head: its
/// `call` span is recorded when it is [`finish`](CallSpan::finish)ed, or,
/// with an error, when it is dropped unfinished (the call abandoned: its
/// job's body failed, its partition was revoked, the deadline passed).
pub(crate) struct CallSpan<'a> {
    trace: Option<&'a JobTrace>,
    id: SpanId,
    route: &'a str,
    from: SystemTime,
    resend: u32,
    outcome: Option<Result<u16, String>>,
}

impl<'a> CallSpan<'a> {
    /// The span of request number `resend` (0 for the first) of a job on
    /// `route`, starting now; the first has the id the job's log line names.
    pub(crate) fn start(trace: Option<&'a JobTrace>, route: &'a str, resend: u32) -> Self {
        let id = match trace {
            Some(t) if resend == 0 => t.call,
            _ => SpanId::random(),
        };
        Self {
            trace,
            id,
            route,
            from: SystemTime::now(),
            resend,
            outcome: None,
        }
    }

    /// The span's id, which the request's `traceparent` names.
    pub(crate) fn id(&self) -> SpanId {
        self.id
    }

    /// Drops the span unrecorded: no request went out.
    pub(crate) fn unsent(mut self) {
        self.trace = None;
    }

    /// Ends the span: the API's status, or why the request failed.
    pub(crate) fn finish(mut self, outcome: Result<u16, String>) {
        self.outcome = Some(outcome);
    }
}

impl Drop for CallSpan<'_> {
    fn drop(&mut self) {
        let Some(trace) = self.trace.filter(|t| t.recorded()) else {
            return;
        };
        let mut span = trace
            .child(self.id, "call", self.from, SystemTime::now())
            .kind(Kind::Client)
            .attr("kafkasend.route", self.route);
        if self.resend > 0 {
            span = span.attr("http.request.resend_count", u64::from(self.resend));
        }
        match self.outcome.take() {
            Some(Ok(status)) => span = span.attr("http.response.status_code", status),
            Some(Err(why)) => span.error = Some(why),
            None => span.error = Some("the call was abandoned before the API answered".into()),
        }
        telemetry::record(span);
    }
}

/// What one run of a job did, for its spans.
#[derive(Debug, Default)]
pub(crate) struct RunMarks {
    /// When the job started running (its body assembled, a slot taken).
    pub(crate) run: Option<SystemTime>,
    /// When the API's answer head arrived.
    pub(crate) head: Option<SystemTime>,
    /// The API's status.
    pub(crate) status: Option<u16>,
    /// Response body bytes relayed.
    pub(crate) bytes_back: u64,
}

/// Records a finished run's spans: `job` and its steps, on `route`;
/// `error` when the job ended in a failure.
pub(crate) fn record_run(
    trace: &JobTrace,
    job: JobId,
    route: &str,
    method: &str,
    body_len: u64,
    marks: &RunMarks,
    error: Option<String>,
) {
    if !trace.recorded() {
        return;
    }
    let end = SystemTime::now();
    let mut root = Span::new(
        trace.job.trace_id,
        trace.job.parent_id,
        trace.parent,
        "job",
        trace.received,
        end,
    )
    .kind(Kind::Consumer)
    .attr("kafkasend.job_id", job.to_string())
    .attr("kafkasend.route", route)
    .attr("http.request.method", method)
    .attr("kafkasend.request.body_bytes", body_len)
    .attr("kafkasend.response.body_bytes", marks.bytes_back);
    root.trace_state = trace.state.clone();
    if let Some(status) = marks.status {
        root = root.attr("http.response.status_code", status);
    }
    root.error = error;
    telemetry::record(root);
    let run = marks.run.unwrap_or(end);
    telemetry::record(trace.child(SpanId::random(), "assemble", trace.received, run));
    if let Some((from, to)) = trace.policy {
        telemetry::record(trace.child(SpanId::random(), "policy", from, to));
    }
    if let Some(head) = marks.head {
        telemetry::record(
            trace
                .child(SpanId::random(), "respond", head, end)
                .attr("kafkasend.response.body_bytes", marks.bytes_back),
        );
    }
}
