//! The portal's place in a job's trace and the spans it exports: `job`
//! (from the start record to the last answer record, under the sender's
//! span) with `assemble`, `policy`, `token`, `call` (the API's parent) and
//! `respond` under it.

use std::time::SystemTime;

use crate::protocol::trace::{SpanId, TraceContext, TraceParent};
use crate::protocol::wire::JobId;
use crate::telemetry::{self, Kind, Span};

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
    /// The span of the API call.
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

    /// What the API request carries: its parent is the call span.
    pub(crate) fn call_context(&self) -> TraceContext {
        TraceContext {
            parent: self.job.child(self.call),
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

    /// Records the `token` span of a call that waited for an OAuth2 token
    /// from `from` until now.
    pub(crate) fn token(&self, from: SystemTime) {
        if self.recorded() {
            telemetry::record(self.child(SpanId::random(), "token", from, SystemTime::now()));
        }
    }
}

/// What one run of a job did, for its spans.
#[derive(Debug, Default)]
pub(crate) struct RunMarks {
    /// When the job started running (its body assembled, a slot taken).
    pub(crate) run: Option<SystemTime>,
    /// When the API call began.
    pub(crate) call: Option<SystemTime>,
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
    if let Some(call) = marks.call {
        let mut span = trace
            .child(trace.call, "call", call, marks.head.unwrap_or(end))
            .kind(Kind::Client)
            .attr("kafkasend.route", route);
        if let Some(status) = marks.status {
            span = span.attr("http.response.status_code", status);
        }
        telemetry::record(span);
    }
    if let Some(head) = marks.head {
        telemetry::record(
            trace
                .child(SpanId::random(), "respond", head, end)
                .attr("kafkasend.response.body_bytes", marks.bytes_back),
        );
    }
}
