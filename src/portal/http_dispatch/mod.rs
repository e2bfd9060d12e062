//! Calls the target REST API for a completed job, with a token from
//! `token_cache` over the client `client` builds with the `tls` settings.
//!
//! One `Dispatcher` serves one route: the URL is always the route's target
//! (`PORTAL_TARGET_API_URL` for the default route) joined with the request's
//! path less the route's prefix; the request can name a path and query
//! only. Redirects are not followed.
//! Bodies stream from the spool, so a retry after a refused token re-reads it;
//! a pipelined body streams while it still arrives (`PipeBody`).
//! An answer that pushes back (429, 503, or 409 to a repeated idempotency
//! key) is called again where that is safe, as `backpressure` decides.

pub(crate) mod backpressure;
pub(crate) mod client;
pub(crate) mod tls;
// Public for `examples/demo_api.rs`, which uses `form_encode`.
pub mod token_cache;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{
    HeaderName, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, RETRY_AFTER, USER_AGENT,
};
use hyper::{Method, Request, Response};
use std::future::Future as _;
use tokio::time::Instant;

use crate::portal::assembler::CompletedJob;
use crate::portal::http_dispatch::backpressure::{
    retry_after, Backpressure, Pushback, RetryPolicy, Slot,
};
use crate::portal::http_dispatch::client::{full_body, with_tls_hint, DispatchBody, HttpClient};
use crate::portal::http_dispatch::token_cache::TokenCache;
use crate::portal::pipe::{Deadline, Pipe, PipeState};
use crate::portal::policy::{plan_headers, HeaderPlan};
use crate::portal::spans::{shown, CallSpan};
use crate::portal::spool::{SpoolFile, SpooledBody};
use crate::protocol::trace::{self, SpanId};
use crate::protocol::wire::RequestStart;
use crate::protocol::{ErrorCategory, Failure};
use crate::util::error_chain;

/// The User-Agent of API calls whose sender's is not forwarded (not in
/// `PORTAL_ALLOWED_HEADERS`, or none sent): some APIs refuse a request
/// without one, and it tells the API's operators who calls.
const PORTAL_USER_AGENT: &str = concat!("kafkasend-portal/", env!("CARGO_PKG_VERSION"));

/// Streams `len` bytes of a spool file from its start. Reads are positional
/// (`pread`), so each body keeps its own position: a retry after a 401 reads
/// the file afresh even while the first attempt's body is still draining.
struct FileBody {
    file: Arc<SpoolFile>,
    pos: u64,
    end: u64,
    pending: Option<tokio::task::JoinHandle<std::io::Result<Vec<u8>>>>,
}

const FILE_READ: u64 = 256 * 1024;

/// A body's read under way, spawned by `start` when there is none: its
/// bytes become the next frame (and `pos` moves past them), or its error
/// the frame that aborts the request.
fn poll_read(
    pending: &mut Option<tokio::task::JoinHandle<std::io::Result<Vec<u8>>>>,
    pos: &mut u64,
    cx: &mut Context<'_>,
    start: impl FnOnce() -> tokio::task::JoinHandle<std::io::Result<Vec<u8>>>,
) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
    let handle = pending.get_or_insert_with(start);
    let Poll::Ready(joined) = Pin::new(handle).poll(cx) else {
        return Poll::Pending;
    };
    *pending = None;
    let read = joined.unwrap_or_else(|e| {
        Err(std::io::Error::other(format!(
            "spool read task failed: {e}"
        )))
    });
    Poll::Ready(Some(read.map(|buf| {
        *pos += buf.len() as u64;
        Frame::data(Bytes::from(buf))
    })))
}

impl hyper::body::Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if this.pos >= this.end {
            return Poll::Ready(None);
        }
        let (file, pos) = (Arc::clone(&this.file), this.pos);
        let len = (this.end - pos).min(FILE_READ) as usize;
        poll_read(&mut this.pending, &mut this.pos, cx, || {
            tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; len];
                file.file.read_exact_at(&mut buf, pos)?;
                Ok(buf)
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        self.pos >= self.end
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.end.saturating_sub(self.pos))
    }
}

/// Streams a pipelined body from byte 0 while it still arrives: from its
/// spool file, as far as its [`Pipe`] says may be sent, waiting for more.
/// When the body fails, or its job is let go, a frame is an error: hyper
/// then aborts the request, and the API, counting toward `Content-Length`,
/// never has it complete. Each attempt at the call reads with a body of its own.
struct PipeBody {
    pipe: Arc<Pipe>,
    pos: u64,
    pending: Option<tokio::task::JoinHandle<std::io::Result<Vec<u8>>>>,
}

impl PipeBody {
    /// Waits until bytes past `pos` may be sent, then reads up to
    /// [`FILE_READ`] of them.
    async fn next(pipe: Arc<Pipe>, pos: u64) -> std::io::Result<Vec<u8>> {
        let upto = pipe
            .sendable_beyond(pos)
            .await
            .map_err(|state| match state {
                PipeState::Failed(f) => {
                    std::io::Error::other(format!("the request body failed: {}", f.message))
                }
                _ => {
                    std::io::Error::other("the portal let the job go before its body was complete")
                }
            })?;
        let len = (upto - pos).min(FILE_READ) as usize;
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            pipe.file().read_exact_at(&mut buf, pos)?;
            Ok(buf)
        });
        read.await.unwrap_or_else(|e| {
            Err(std::io::Error::other(format!(
                "spool read task failed: {e}"
            )))
        })
    }
}

impl hyper::body::Body for PipeBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if this.pos >= this.pipe.len() {
            return Poll::Ready(None);
        }
        let (pipe, pos) = (Arc::clone(&this.pipe), this.pos);
        poll_read(&mut this.pending, &mut this.pos, cx, || {
            tokio::spawn(Self::next(pipe, pos))
        })
    }

    fn is_end_stream(&self) -> bool {
        self.pos >= self.pipe.len()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.pipe.len().saturating_sub(self.pos))
    }
}

impl Drop for PipeBody {
    fn drop(&mut self) {
        // A request dropped (hyper gave up, or the call was cancelled)
        // leaves no task waiting on the pipe.
        if let Some(pending) = self.pending.take() {
            pending.abort();
        }
    }
}

fn body_of(spool: &SpooledBody) -> DispatchBody {
    match spool {
        SpooledBody::Empty => full_body(Bytes::new()),
        SpooledBody::Memory(b) => full_body(b.clone()),
        SpooledBody::File { file, len, .. } => FileBody {
            file: Arc::clone(file),
            pos: 0,
            end: *len,
            pending: None,
        }
        .boxed(),
        SpooledBody::Piped(pipe) => PipeBody {
            pipe: Arc::clone(pipe),
            pos: 0,
            pending: None,
        }
        .boxed(),
    }
}

/// Most bytes of a pushed-back answer's body held while the call waits to
/// be made again; a larger one is relayed instead, as it is.
const MAX_HELD_BODY: usize = 64 * 1024;

/// How long a pushed-back answer's body may take to arrive before it is
/// relayed instead of held.
const HOLD_READ: Duration = Duration::from_secs(5);

/// An API response's body: the bytes already read (a pushed-back answer
/// held while the portal waited to call again), then the rest, if any.
#[derive(Debug)]
pub(crate) struct ApiBody {
    held: Option<Bytes>,
    /// The error that ended reading while the answer was held.
    failed: Option<hyper::Error>,
    rest: Option<Incoming>,
}

impl ApiBody {
    fn streaming(body: Incoming) -> Self {
        Self {
            held: None,
            failed: None,
            rest: Some(body),
        }
    }
}

impl hyper::body::Body for ApiBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(held) = this.held.take() {
            return Poll::Ready(Some(Ok(Frame::data(held))));
        }
        if let Some(e) = this.failed.take() {
            this.rest = None;
            return Poll::Ready(Some(Err(e)));
        }
        match &mut this.rest {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }
}

/// What a call gives the job: the API's answer and the call's place under
/// the concurrency limit, held until the answer has been relayed.
#[derive(Debug)]
pub(crate) struct Called {
    /// The answer to relay.
    pub(crate) response: Response<ApiBody>,
    /// `None` when the answer was held while no slot came free.
    pub(crate) slot: Option<Slot>,
}

/// Reads a pushed-back answer's body into memory, up to [`MAX_HELD_BODY`]
/// bytes and [`HOLD_READ`] (at most until `deadline`); whether all of it
/// came. An incomplete one keeps what is still to come, to be relayed.
async fn hold(resp: Response<Incoming>, deadline: Instant) -> (Response<ApiBody>, bool) {
    let (parts, mut body) = resp.into_parts();
    let until = deadline.min(Instant::now() + HOLD_READ);
    let mut buf = Vec::new();
    let mut failed = None;
    let complete = loop {
        match tokio::time::timeout_at(until, body.frame()).await {
            Ok(None) => break true,
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                    if buf.len() > MAX_HELD_BODY {
                        break false;
                    }
                }
            }
            Ok(Some(Err(e))) => {
                failed = Some(e);
                break false;
            }
            Err(_) => break false,
        }
    };
    let body = ApiBody {
        held: (!buf.is_empty()).then(|| Bytes::from(buf)),
        rest: (!complete && failed.is_none()).then_some(body),
        failed,
    };
    (Response::from_parts(parts, body), complete)
}

/// Calls the target API.
#[derive(Debug)]
pub(crate) struct Dispatcher {
    client: HttpClient,
    /// Target base URL without a trailing slash.
    base: String,
    tokens: Option<Arc<TokenCache>>,
    /// Deadline for the API to send its response headers.
    timeout: Duration,
    /// Lower-case names of the request headers forwarded.
    allowed_headers: Vec<String>,
    /// Header that carries the job id, so an API honouring idempotency keys
    /// turns a repeated call into a no-op.
    idempotency_header: Option<HeaderName>,
    /// Which pushed-back calls are made again, and when.
    retry: RetryPolicy,
    /// The concurrency limit toward the API and the retry counters.
    backpressure: Arc<Backpressure>,
    /// The route this dispatcher serves, for messages and logs.
    route: String,
    /// Removed from the front of a request's path before it is joined.
    strip_prefix: Option<String>,
    /// A static credential header sent on every call (`[routes.header]`).
    static_header: Option<(HeaderName, HeaderValue)>,
    /// Largest body this route takes, checked again before the call for a
    /// body whose length its start record did not declare.
    max_body_bytes: Option<u64>,
}

impl Dispatcher {
    /// A dispatcher for `base_url`; `tokens` when OAuth is on; at most
    /// `max_calls` calls at once, fewer while the API pushes back.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        client: HttpClient,
        base_url: &str,
        tokens: Option<Arc<TokenCache>>,
        timeout: Duration,
        allowed_headers: &[String],
        idempotency_header: Option<&str>,
        retry: RetryPolicy,
        max_calls: usize,
    ) -> Self {
        Self {
            retry,
            backpressure: Arc::new(Backpressure::new(max_calls)),
            client,
            base: base_url.trim_end_matches('/').to_string(),
            tokens,
            timeout,
            allowed_headers: allowed_headers
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
            idempotency_header: idempotency_header
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
            route: DEFAULT_ROUTE.to_string(),
            strip_prefix: None,
            static_header: None,
            max_body_bytes: None,
        }
    }

    /// This dispatcher for route `name`: `strip_prefix` taken off each path,
    /// `header` (name, value) sent on each call, bodies over
    /// `max_body_bytes` refused. Errors say which piece is unusable.
    pub(crate) fn routed(
        mut self,
        name: &str,
        strip_prefix: Option<&str>,
        header: Option<(&str, &str)>,
        max_body_bytes: u64,
    ) -> Result<Self, String> {
        self.route = name.to_string();
        self.strip_prefix = strip_prefix.map(str::to_string);
        self.max_body_bytes = Some(max_body_bytes);
        if let Some((n, v)) = header {
            let n = HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| format!("'{}' is not a header name", n.escape_debug()))?;
            let mut v = HeaderValue::from_str(v).map_err(|_| {
                "the value is not a valid header value (one line of visible ASCII)".to_string()
            })?;
            v.set_sensitive(true);
            self.static_header = Some((n, v));
        }
        Ok(self)
    }

    /// The setting that gave this dispatcher's deadline, for messages.
    pub(crate) fn timeout_setting(&self) -> String {
        if self.route == DEFAULT_ROUTE {
            "PORTAL_REQUEST_TIMEOUT_SECS".to_string()
        } else {
            format!("timeout_secs of route '{}'", self.route)
        }
    }

    /// The name of the route this dispatcher serves.
    pub(crate) fn route(&self) -> &str {
        &self.route
    }

    /// The deadline for response headers.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The concurrency limit and retry counters, for the metrics.
    pub(crate) fn backpressure(&self) -> &Arc<Backpressure> {
        &self.backpressure
    }

    /// Sends the job's request, all by `deadline`. When the API refuses the
    /// token (a status in `PORTAL_TOKEN_REFRESH_STATUSES`, 401 by default),
    /// refreshes it and retries once. When it pushes back (429, 503, 409),
    /// calls again with the same idempotency key where [`RetryPolicy`]
    /// allows and the wait ends before `deadline`; otherwise the answer is
    /// relayed as it is. Each call first waits for a slot under the
    /// concurrency limit.
    pub(crate) async fn call(
        &self,
        job: &CompletedJob,
        deadline: &Deadline,
    ) -> Result<Called, Failure> {
        let url = self.url_for(&job.start.path)?;
        if let Some(max) = self.max_body_bytes {
            let len = job.body.len();
            if len > max {
                return Err(Failure::new(
                    ErrorCategory::Rejected,
                    format!(
                        "request body of {len} bytes exceeds the limit of {max} bytes of route '{}' (max_body_bytes)",
                        self.route
                    ),
                ));
            }
        }
        let method = Method::from_bytes(job.start.method.as_bytes()).map_err(|_| {
            Failure::new(
                ErrorCategory::BadRequest,
                format!("'{}' is not an HTTP method", job.start.method),
            )
        })?;
        let mut retried = false;
        // Requests sent so far: the next one's `http.request.resend_count`.
        let mut sent = 0u32;
        // When the first call went out: a 409's window counts from there.
        let mut first_call: Option<Instant> = None;
        // Calls answered with a pushback so far.
        let mut pushed = 0u32;
        // The last pushed-back answer, relayed if no slot comes free in time.
        let mut held: Option<Response<ApiBody>> = None;
        let limiter = Arc::clone(&self.backpressure.limiter);
        loop {
            let waited = match deadline.arriving() {
                Some(pipe) => {
                    let spare = limiter.acquire_spare_until(deadline.bound(), pipe.verified());
                    deadline.run(spare).await
                }
                None => deadline.run(limiter.acquire_until(deadline.bound())).await,
            };
            let Some(slot) = waited.flatten() else {
                return match held {
                    Some(response) => Ok(Called {
                        response,
                        slot: None,
                    }),
                    None => Err(Failure::new(
                        ErrorCategory::UpstreamTimeout,
                        format!(
                            "{method} {url}: no call slot came free within {} s ({}) while the API pushed back",
                            self.timeout.as_secs(),
                            self.timeout_setting()
                        ),
                    )),
                };
            };
            held = None;
            let token = match &self.tokens {
                Some(t) => {
                    let (from, mut fetched) = (std::time::SystemTime::now(), false);
                    let got = t.token_noting(&mut fetched).await;
                    if let (Some(trace), true) = (&job.trace, fetched || got.is_err()) {
                        trace.token(from, got.as_ref().err().map(|e| e.to_string()));
                    }
                    Some(got.map_err(|e| {
                        log::warn!("job {}: cannot get an OAuth2 token: {e}", job.job);
                        Failure::new(ErrorCategory::Auth, e.for_sender())
                    })?)
                }
                None => None,
            };
            // Each request sent has a `call` span of its own, its parent in
            // the API's trace.
            let span = CallSpan::start(job.trace.as_deref(), &self.route, sent);
            let req = match self
                .build(&method, &url, job, token.as_deref(), span.id())
                .await
            {
                Ok(req) => req,
                Err(failure) => {
                    span.unsent();
                    return Err(failure);
                }
            };
            sent += 1;
            let first_call = *first_call.get_or_insert_with(Instant::now);
            let resp = match deadline.run(self.client.request(req)).await {
                None => {
                    let failure = Failure::new(
                        ErrorCategory::UpstreamTimeout,
                        format!(
                            "{method} {url}: no response within {} s ({})",
                            self.timeout.as_secs(),
                            self.timeout_setting()
                        ),
                    );
                    span.finish(Err(shown(job.sealed.is_some(), &failure.message).into()));
                    return Err(failure);
                }
                Some(Err(e)) => {
                    // Connection refused, reset or TLS failure: the API is not there for us.
                    let category = ErrorCategory::UpstreamUnreachable;
                    let failure = Failure::new(
                        category,
                        format!("{method} {url} failed: {}", with_tls_hint(error_chain(&e))),
                    );
                    span.finish(Err(shown(job.sealed.is_some(), &failure.message).into()));
                    return Err(failure);
                }
                Some(Ok(resp)) => resp,
            };
            span.finish(Ok(resp.status().as_u16()));
            if let (false, Some(tokens), Some(token)) = (retried, &self.tokens, token) {
                if tokens.refreshes_on(resp.status()) {
                    log::info!(
                        "job {}: API answered {} (PORTAL_TOKEN_REFRESH_STATUSES); refreshing the token and retrying once",
                        job.job,
                        resp.status().as_u16()
                    );
                    tokens.invalidate(&token);
                    retried = true;
                    continue;
                }
            }
            let Some(kind) = Pushback::of(resp.status()) else {
                slot.answered();
                return Ok(Called {
                    response: resp.map(ApiBody::streaming),
                    slot: Some(slot),
                });
            };
            if kind.is_overload() {
                slot.overloaded();
            }
            pushed += 1;
            let keyed = self.idempotency_header.is_some();
            let relay = |resp: Response<ApiBody>, slot| {
                Ok(Called {
                    response: resp,
                    slot,
                })
            };
            if !self
                .retry
                .may_retry(kind, &method, keyed, pushed, first_call.elapsed())
            {
                return relay(resp.map(ApiBody::streaming), Some(slot));
            }
            let asked = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| retry_after(v.as_bytes(), SystemTime::now()));
            let delay = self.retry.delay(pushed, asked, fastrand::f64());
            if deadline.would_pass(delay) {
                log::info!(
                    "job {}: API answered {}; not calling again, the wait of {:.1} s would pass the job's deadline ({})",
                    job.job,
                    resp.status().as_u16(),
                    delay.as_secs_f64(),
                    self.timeout_setting()
                );
                return relay(resp.map(ApiBody::streaming), Some(slot));
            }
            let (resp, complete) = hold(resp, deadline.bound()).await;
            if !complete {
                log::info!(
                    "job {}: API answered {} with a body over {MAX_HELD_BODY} bytes or slower than {} s; relaying it instead of calling again",
                    job.job,
                    resp.status().as_u16(),
                    HOLD_READ.as_secs()
                );
                return relay(resp, Some(slot));
            }
            // Others may call while this job waits.
            drop(slot);
            self.backpressure.retried(kind);
            log::info!(
                "job {}: API answered {} (call {pushed} of at most {}); calling again in {:.2} s{}",
                job.job,
                resp.status().as_u16(),
                self.retry.max_attempts,
                delay.as_secs_f64(),
                if keyed {
                    " with the same idempotency key"
                } else {
                    ""
                }
            );
            tokio::time::sleep(delay).await;
            held = Some(resp);
        }
    }

    async fn build(
        &self,
        method: &Method,
        url: &str,
        job: &CompletedJob,
        token: Option<&str>,
        span: SpanId,
    ) -> Result<Request<DispatchBody>, Failure> {
        let mut builder = Request::builder().method(method.clone()).uri(url);
        let mut agent_forwarded = false;
        let plan = self.header_plan(&job.start);
        if let Some(line) = plan.dropped_line() {
            let line = shown(job.sealed.is_some(), &line);
            log::debug!("job {}: not forwarding headers {line}", job.job);
        }
        for (name, value) in plan.forward {
            // The portal's own context replaces a forwarded one.
            if job.trace.is_some() && trace::is_trace_header(name) {
                continue;
            }
            let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) else {
                return Err(Failure::new(
                    ErrorCategory::BadRequest,
                    format!("header '{name}' is not a valid HTTP header"),
                ));
            };
            agent_forwarded |= n == USER_AGENT;
            builder = builder.header(n, v);
        }
        if !agent_forwarded {
            builder = builder.header(USER_AGENT, HeaderValue::from_static(PORTAL_USER_AGENT));
        }
        for (name, value) in job
            .trace
            .iter()
            .flat_map(|t| t.call_context(span).headers())
        {
            builder = builder.header(name, value);
        }
        if let Some(name) = &self.idempotency_header {
            let id = HeaderValue::from_str(&job.job.to_string()).map_err(|_| {
                Failure::new(ErrorCategory::Internal, "job id is not a header value")
            })?;
            builder = builder.header(name.clone(), id);
        }
        if let Some(t) = token {
            let v = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                Failure::new(
                    ErrorCategory::Auth,
                    "the OAuth2 token is not a valid header value",
                )
            })?;
            builder = builder.header(AUTHORIZATION, v);
        }
        if let (Some((name, value)), Some(headers)) = (&self.static_header, builder.headers_mut()) {
            // Replaces any forwarded header of the same name: the sender
            // must not choose the route's credential.
            headers.insert(name.clone(), value.clone());
        }
        if job.start.has_body || method_expects_body(method) {
            builder = builder.header(CONTENT_LENGTH, job.body.len());
        }
        let body = body_of(&job.body);
        builder
            .body(body)
            .map_err(|e| Failure::new(ErrorCategory::BadRequest, format!("invalid request: {e}")))
    }

    /// Which of the request's headers the API receives, and which it does not.
    pub(crate) fn header_plan<'a>(&self, start: &'a RequestStart) -> HeaderPlan<'a> {
        plan_headers(
            start,
            &self.allowed_headers,
            self.idempotency_header.as_ref().map(HeaderName::as_str),
        )
    }

    /// Joins the target URL and a request path, refusing paths that could
    /// leave the target's origin or base path.
    pub(crate) fn url_for(&self, path: &str) -> Result<String, Failure> {
        let path = strip(self.strip_prefix.as_deref(), path);
        join_url(&self.base, &path)
    }
}

/// The name of the route the single-target settings define.
pub(crate) const DEFAULT_ROUTE: &str = "default";

/// `path` (with its query) less `prefix`, when it starts with it at a
/// segment boundary; "/" when nothing is left of the path.
pub(crate) fn strip(prefix: Option<&str>, path: &str) -> String {
    let Some(prefix) = prefix else {
        return path.to_string();
    };
    match path.strip_prefix(prefix) {
        Some("") => "/".to_string(),
        Some(rest) if rest.starts_with('?') => format!("/{rest}"),
        Some(rest) if rest.starts_with('/') => rest.to_string(),
        _ => path.to_string(),
    }
}

/// Joins a target base URL (no trailing slash) and a request path that
/// passed [`crate::portal::policy::validate_path`]; the joined URL is parsed again
/// and must keep the target's scheme, authority and base path.
pub(crate) fn join_url(base: &str, path: &str) -> Result<String, Failure> {
    crate::portal::policy::validate_path(path)?;
    let url = format!("{base}{path}");
    let base: hyper::Uri = base
        .parse()
        .map_err(|_| Failure::new(ErrorCategory::Internal, "target URL does not parse"))?;
    let base_path = base.path().trim_end_matches('/');
    let same_origin = url.parse::<hyper::Uri>().is_ok_and(|u| {
        u.scheme() == base.scheme()
            && u.authority() == base.authority()
            && (u.path() == base_path || u.path().starts_with(&format!("{base_path}/")))
    });
    if !same_origin {
        return Err(Failure::new(
            ErrorCategory::Rejected,
            format!(
                "endpoint '{}' refused: it would leave the target API",
                path.escape_debug()
            ),
        ));
    }
    Ok(url)
}

fn method_expects_body(m: &Method) -> bool {
    matches!(*m, Method::POST | Method::PUT | Method::PATCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::body::Body as _;

    /// Whether `body` has a frame ready after its waiting tasks had their turn.
    async fn frame_ready(body: &mut DispatchBody) -> bool {
        for _ in 0..20 {
            let polled =
                std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await;
            match polled {
                Poll::Pending => tokio::task::yield_now().await,
                Poll::Ready(Some(Ok(frame))) => panic!("a frame came: {frame:?}"),
                Poll::Ready(other) => panic!("the body ended: {other:?}"),
            }
        }
        false
    }

    async fn next_data(body: &mut DispatchBody) -> Bytes {
        match body.frame().await {
            Some(Ok(frame)) => frame.into_data().unwrap_or_else(|_| panic!("not data")),
            other => panic!("expected data, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_pipe_body_streams_what_arrived_and_holds_the_last_byte_for_the_verdict() {
        let (pipe, mut feed) = Pipe::new(tempfile::tempfile().unwrap().into(), 10);
        let mut body = body_of(&SpooledBody::Piped(Arc::clone(&pipe)));
        assert_eq!(body.size_hint().exact(), Some(10));
        assert!(!frame_ready(&mut body).await, "nothing arrived yet");
        pipe.file().write_all_at(b"hello", 0).unwrap();
        feed.took(0, 5);
        assert_eq!(next_data(&mut body).await, "hello");
        pipe.file().write_all_at(b"world", 5).unwrap();
        feed.took(5, 10);
        assert_eq!(next_data(&mut body).await, "worl");
        assert!(
            !frame_ready(&mut body).await,
            "the last byte waits for the verdict"
        );
        // A retry reads from the start, up to the same point.
        let mut again = body_of(&SpooledBody::Piped(Arc::clone(&pipe)));
        assert_eq!(next_data(&mut again).await, "helloworl");
        let budget = crate::portal::budget::Budget::new(1 << 20);
        feed.verified(crate::portal::budget::Lease::new(&budget));
        assert_eq!(next_data(&mut body).await, "d");
        assert!(body.frame().await.is_none());
        assert!(body.is_end_stream());
        assert_eq!(next_data(&mut again).await, "d");
    }

    #[tokio::test]
    async fn a_pipe_body_breaks_off_when_its_body_fails_or_is_let_go() {
        let (pipe, mut feed) = Pipe::new(tempfile::tempfile().unwrap().into(), 10);
        let mut body = body_of(&SpooledBody::Piped(Arc::clone(&pipe)));
        pipe.file().write_all_at(b"hello", 0).unwrap();
        feed.took(0, 5);
        assert_eq!(next_data(&mut body).await, "hello");
        feed.failed(Failure::new(ErrorCategory::Integrity, "SHA-256 mismatch"));
        match body.frame().await {
            Some(Err(e)) => assert!(e.to_string().contains("SHA-256 mismatch"), "{e}"),
            other => panic!("expected an error, got {other:?}"),
        }

        let (pipe, feed) = Pipe::new(tempfile::tempfile().unwrap().into(), 10);
        let mut body = body_of(&SpooledBody::Piped(Arc::clone(&pipe)));
        drop(feed);
        assert!(matches!(body.frame().await, Some(Err(_))));
    }

    #[test]
    fn urls_join_under_the_base_path() {
        for (base, path, want) in [
            (
                "https://api.example",
                "/items?x=1",
                "https://api.example/items?x=1",
            ),
            (
                "https://api.example/v1",
                "/items",
                "https://api.example/v1/items",
            ),
            (
                "http://127.0.0.1:8080/a/b",
                "/",
                "http://127.0.0.1:8080/a/b/",
            ),
        ] {
            assert_eq!(join_url(base, path).unwrap(), want);
        }
        for (base, path) in [
            ("https://api.example/v1", "/../admin"),
            ("https://api.example/v1", "//evil.example/x"),
            ("https://api.example/v1", "@evil.example/x"),
            ("https://api.example", "/a%2f..%2fb"),
            ("https://api.example", "/x\r\nHost: evil"),
        ] {
            let e = join_url(base, path).unwrap_err();
            assert_eq!(e.category, ErrorCategory::Rejected, "{path}: {e}");
        }
    }
}
