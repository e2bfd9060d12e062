//! The portal's admin listener (`PORTAL_ADMIN_LISTEN`): `/healthz`,
//! `/readyz` and `/metrics` in the Prometheus text format.
//!
//! [`Metrics`] holds every counter the portal updates; [`Readiness`] what
//! `/readyz` answers from. Both are shared with [`crate::portal`], which
//! updates them at a few call sites. Values that live elsewhere (spool and
//! memory bytes, token fetches) are read at scrape time by a collector, so
//! their owners need not know about metrics at all.
//!
//! The listener is small on purpose: at most [`MAX_CONNECTIONS`] connections,
//! one request each, a deadline for reading the head and for the whole
//! exchange, and no request bodies.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::portal::budget::Budgets;
use crate::portal::http_dispatch::backpressure::{Backpressure, Pushback};
use crate::portal::http_dispatch::token_cache::TokenCache;
use crate::protocol::ErrorCategory;

/// Connections the admin listener serves at once; more are closed at once.
pub(crate) const MAX_CONNECTIONS: usize = 16;

/// How long a client may take to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one connection (one request and its answer) may take.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// Job duration buckets, in seconds: 10 ms to about 45 minutes.
const DURATION_BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 120.0, 600.0, 2700.0,
];

/// Label of a failed job: its error category (a closed set).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabel {
    category: String,
}

/// Labels of a job called through a route: the route's name (from the
/// start-up settings, so a closed set) and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
    outcome: &'static str,
}

/// Label of a sealed start record: `opened` or `unopened`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SealedLabel {
    outcome: &'static str,
}

/// Label of a Kafka error: `produce` or `fetch`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

/// Label of skipped request records: why they were skipped (a closed set).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// Label of a request partition (bounded by the topic's partition count).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabel {
    partition: i32,
}

/// Every metric of a portal, registered once; cheap to update from any task.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    jobs_started: Counter,
    jobs_completed: Counter,
    jobs_failed: Family<CategoryLabel, Counter>,
    /// Jobs called through each route, by outcome.
    route_jobs: Family<RouteLabel, Counter>,
    request_bytes: Counter,
    response_bytes: Counter,
    job_duration: Histogram,
    jobs_in_flight: Gauge,
    jobs_assembling: Gauge,
    kafka_errors: Family<OpLabel, Counter>,
    partition_lag: Family<PartitionLabel, Gauge>,
    records_skipped: Family<ReasonLabel, Counter>,
    jobs_cancelled: Counter,
    jobs_pipelined: Counter,
    sealed_jobs: Family<SealedLabel, Counter>,
    sampled: Arc<Sampled>,
}

/// Values read from their owners at scrape time.
#[derive(Debug)]
struct Sampled {
    budgets: Budgets,
    /// Set once the portal has made its token cache (OAuth on).
    tokens: OnceLock<Arc<TokenCache>>,
    /// Set once the portal has made its dispatcher.
    backpressure: OnceLock<Arc<Backpressure>>,
}

/// Label of an API call made again: the status that pushed it back.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    reason: &'static str,
}

impl Collector for Sampled {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let spool = ConstGauge::new(i64::try_from(self.budgets.spool.used()).unwrap_or(i64::MAX));
        let m = encoder.encode_descriptor(
            "spool_bytes",
            "Bytes of spool files on disk, all jobs together",
            None,
            spool.metric_type(),
        )?;
        spool.encode(m)?;
        let memory = ConstGauge::new(i64::try_from(self.budgets.memory.used()).unwrap_or(i64::MAX));
        let m = encoder.encode_descriptor(
            "assembly_memory_bytes",
            "Bytes of memory held for requests, all jobs together",
            None,
            memory.metric_type(),
        )?;
        memory.encode(m)?;
        let (fetches, failures) = self
            .tokens
            .get()
            .map_or((0, 0), |t| (t.fetch_count(), t.failure_count()));
        let fetches = ConstCounter::new(fetches);
        let m = encoder.encode_descriptor(
            "token_fetches",
            "OAuth2 token requests made",
            None,
            fetches.metric_type(),
        )?;
        fetches.encode(m)?;
        let failures = ConstCounter::new(failures);
        let m = encoder.encode_descriptor(
            "token_fetch_failures",
            "OAuth2 token requests that failed",
            None,
            failures.metric_type(),
        )?;
        failures.encode(m)?;
        let Some(bp) = self.backpressure.get() else {
            return Ok(());
        };
        let mut m = encoder.encode_descriptor(
            "api_retries",
            "API calls made again after a pushback, by the status that pushed back",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for kind in Pushback::ALL {
            let label = StatusLabel {
                reason: kind.label(),
            };
            ConstCounter::new(bp.retries(kind)).encode(m.encode_family(&label)?)?;
        }
        let limit = ConstGauge::new(i64::try_from(bp.limiter.limit()).unwrap_or(i64::MAX));
        let m = encoder.encode_descriptor(
            "api_concurrency_limit",
            "API calls allowed at once now: PORTAL_MAX_CONCURRENT_JOBS, less while the API pushes back",
            None,
            limit.metric_type(),
        )?;
        limit.encode(m)
    }
}

impl Metrics {
    /// Registers every metric; spool and memory bytes are read from
    /// `budgets` on each scrape.
    pub(crate) fn new(budgets: Budgets) -> Self {
        let mut registry = Registry::with_prefix("kafkasend");
        let jobs_started = Counter::default();
        let jobs_completed = Counter::default();
        let jobs_failed = Family::<CategoryLabel, Counter>::default();
        let route_jobs = Family::<RouteLabel, Counter>::default();
        let request_bytes = Counter::default();
        let response_bytes = Counter::default();
        let job_duration = Histogram::new(DURATION_BUCKETS);
        let jobs_in_flight = Gauge::default();
        let jobs_assembling = Gauge::default();
        let kafka_errors = Family::<OpLabel, Counter>::default();
        let partition_lag = Family::<PartitionLabel, Gauge>::default();
        let records_skipped = Family::<ReasonLabel, Counter>::default();
        let jobs_cancelled = Counter::default();
        let jobs_pipelined = Counter::default();
        let sealed_jobs = Family::<SealedLabel, Counter>::default();
        registry.register(
            "sealed_jobs",
            "Sealed start records read, by outcome (opened, or unopened: refused or ignored)",
            sealed_jobs.clone(),
        );
        registry.register(
            "jobs_started",
            "Jobs taken up: assembled, or refused before assembly",
            jobs_started.clone(),
        );
        registry.register(
            "jobs_completed",
            "Jobs whose API response was relayed in full (any HTTP status)",
            jobs_completed.clone(),
        );
        registry.register(
            "jobs_failed",
            "Jobs answered with an error record, by error category",
            jobs_failed.clone(),
        );
        registry.register(
            "route_jobs",
            "Jobs that reached their route's call, by route and outcome (completed: the API's answer relayed; failed: an error record)",
            route_jobs.clone(),
        );
        registry.register_with_unit(
            "request_body",
            "Request body bytes sent to the API",
            Unit::Bytes,
            request_bytes.clone(),
        );
        registry.register_with_unit(
            "response_body",
            "Response body bytes relayed back to clients",
            Unit::Bytes,
            response_bytes.clone(),
        );
        registry.register_with_unit(
            "job_duration",
            "Time from a job's API call slot to its last reply record",
            Unit::Seconds,
            job_duration.clone(),
        );
        registry.register(
            "jobs_in_flight",
            "API calls running now",
            jobs_in_flight.clone(),
        );
        registry.register(
            "jobs_assembling",
            "Jobs whose request records are still arriving",
            jobs_assembling.clone(),
        );
        registry.register(
            "kafka_errors",
            "Failed Kafka produce and fetch requests",
            kafka_errors.clone(),
        );
        registry.register(
            "partition_lag",
            "Request records not yet read, per request partition this portal holds",
            partition_lag.clone(),
        );
        registry.register(
            "records_skipped",
            "Request records skipped unread, by reason",
            records_skipped.clone(),
        );
        registry.register(
            "jobs_pipelined",
            "Jobs whose API call started while their request body was still arriving (PORTAL_PIPELINE)",
            jobs_pipelined.clone(),
        );
        registry.register(
            "jobs_cancelled",
            "Jobs whose API call was cancelled because the grace for releasing their partition ran out",
            jobs_cancelled.clone(),
        );
        let sampled = Arc::new(Sampled {
            budgets,
            tokens: OnceLock::new(),
            backpressure: OnceLock::new(),
        });
        registry.register_collector(Box::new(Arc::clone(&sampled)));
        Self {
            registry,
            jobs_started,
            jobs_completed,
            jobs_failed,
            route_jobs,
            request_bytes,
            response_bytes,
            job_duration,
            jobs_in_flight,
            jobs_assembling,
            kafka_errors,
            partition_lag,
            records_skipped,
            jobs_cancelled,
            jobs_pipelined,
            sealed_jobs,
            sampled,
        }
    }

    /// Reports the token cache's fetches and failures from now on.
    pub(crate) fn watch_tokens(&self, tokens: Arc<TokenCache>) {
        let _ = self.sampled.tokens.set(tokens);
    }

    /// Reports the API retries and concurrency limit from now on.
    pub(crate) fn watch_backpressure(&self, backpressure: Arc<Backpressure>) {
        let _ = self.sampled.backpressure.set(backpressure);
    }

    /// A job was taken up; `request_bytes` is its body's size.
    pub(crate) fn job_started(&self, request_bytes: u64) {
        self.jobs_started.inc();
        self.request_bytes.inc_by(request_bytes);
    }

    /// A job's API call started while its body was still arriving.
    pub(crate) fn job_pipelined(&self) {
        self.jobs_pipelined.inc();
    }

    /// A sealed start record was read: `opened` or `unopened`.
    pub(crate) fn sealed_job(&self, outcome: &'static str) {
        self.sealed_jobs
            .get_or_create(&SealedLabel { outcome })
            .inc();
    }

    /// A job's API call was cancelled so its partition could be released.
    pub(crate) fn job_cancelled(&self) {
        self.jobs_cancelled.inc();
    }

    /// A job's response was relayed in full.
    pub(crate) fn job_completed(&self, response_bytes: u64, took: Duration) {
        self.jobs_completed.inc();
        self.response_bytes.inc_by(response_bytes);
        self.job_duration.observe(took.as_secs_f64());
    }

    /// A job was answered with an error of `category`.
    pub(crate) fn job_failed(&self, category: ErrorCategory) {
        self.jobs_failed
            .get_or_create(&CategoryLabel {
                category: category_label(category),
            })
            .inc();
    }

    /// A job called through `route` ended: `completed` or `failed`.
    pub(crate) fn route_job(&self, route: &str, outcome: &'static str) {
        self.route_jobs
            .get_or_create(&RouteLabel {
                route: route.to_string(),
                outcome,
            })
            .inc();
    }

    /// Records how long a failed job took.
    pub(crate) fn job_took(&self, took: Duration) {
        self.job_duration.observe(took.as_secs_f64());
    }

    /// Counts an API call for as long as the returned guard lives.
    pub(crate) fn in_flight(&self) -> GaugeGuard {
        self.jobs_in_flight.inc();
        GaugeGuard(self.jobs_in_flight.clone())
    }

    /// A produce request to Kafka failed.
    pub(crate) fn produce_error(&self) {
        self.kafka_errors
            .get_or_create(&OpLabel { op: "produce" })
            .inc();
    }

    /// A fetch request to Kafka failed.
    pub(crate) fn fetch_error(&self) {
        self.kafka_errors
            .get_or_create(&OpLabel { op: "fetch" })
            .inc();
    }

    /// The reader of `partition` is at `next`; what it can read of the
    /// partition ends at `end` (its last stable offset).
    pub(crate) fn partition_position(&self, partition: i32, next: i64, end: i64) {
        self.partition_lag
            .get_or_create(&PartitionLabel { partition })
            .set(end.saturating_sub(next).max(0));
    }

    /// `n` request records were skipped unread, for `reason` (a fixed
    /// label such as `not_kafkasend` or `too_large`).
    pub(crate) fn records_skipped(&self, reason: &'static str, n: u64) {
        self.records_skipped
            .get_or_create(&ReasonLabel { reason })
            .inc_by(n);
    }

    /// This portal no longer reads `partition`.
    pub(crate) fn partition_released(&self, partition: i32) {
        self.partition_lag.remove(&PartitionLabel { partition });
    }

    /// One reader's count of jobs being assembled changed from `before` to `now`.
    pub(crate) fn assembling_changed(&self, before: usize, now: usize) {
        let delta = i64::try_from(now).unwrap_or(i64::MAX) - i64::try_from(before).unwrap_or(0);
        self.jobs_assembling.inc_by(delta);
    }

    /// The metrics in the Prometheus text format (version 0.0.4).
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// The label value of an error category: the wire name, spaces as underscores.
fn category_label(category: ErrorCategory) -> String {
    category.to_string().replace(' ', "_")
}

/// Decrements a gauge when dropped.
#[derive(Debug)]
pub(crate) struct GaugeGuard(Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What `/readyz` answers from: the portal sets it as it connects, joins
/// and loses its partitions, and as its readers get stuck and move again.
#[derive(Debug, Default)]
pub(crate) struct Readiness {
    connected: AtomicBool,
    /// Request partitions of the current generation this portal reads.
    partitions: AtomicUsize,
    /// Partitions whose reader cannot get past an offset, with why. Holds
    /// at most one entry per request partition; an entry goes when its
    /// reader moves on or ends.
    stalled: Mutex<BTreeMap<i32, String>>,
}

impl Readiness {
    /// The portal reached Kafka and has its topics.
    pub(crate) fn set_connected(&self) {
        self.connected.store(true, Ordering::SeqCst);
    }

    /// The portal reads `n` partitions of the current generation.
    pub(crate) fn set_partitions(&self, n: usize) {
        self.partitions.store(n, Ordering::SeqCst);
    }

    /// The reader of `partition` cannot make progress, for `why`.
    pub(crate) fn set_stalled(&self, partition: i32, why: String) {
        self.stalled_map().insert(partition, why);
    }

    /// The reader of `partition` moves again, or has ended.
    pub(crate) fn clear_stalled(&self, partition: i32) {
        self.stalled_map().remove(&partition);
    }

    fn stalled_map(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, String>> {
        self.stalled.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Ok` when ready; otherwise why not, in one line.
    pub(crate) fn check(&self) -> Result<(), String> {
        if !self.connected.load(Ordering::SeqCst) {
            return Err("not connected to Kafka yet".into());
        }
        if self.partitions.load(Ordering::SeqCst) == 0 {
            return Err("holds no request partition (joining the consumer group, or more portals than partitions)".into());
        }
        let stalled = self.stalled_map();
        if !stalled.is_empty() {
            let each: Vec<String> = stalled
                .iter()
                .map(|(p, why)| format!("partition {p}: {why}"))
                .collect();
            return Err(format!(
                "cannot read request partitions: {}",
                each.join("; ")
            ));
        }
        Ok(())
    }
}

/// The running admin listener; dropping it stops the listener.
#[derive(Debug)]
pub(crate) struct AdminServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl AdminServer {
    /// The address it listens on (the real port when 0 was asked for).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` and serves the admin endpoints until the result is dropped.
pub(crate) async fn start(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    sealing_key: Option<Arc<str>>,
) -> anyhow::Result<AdminServer> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("PORTAL_ADMIN_LISTEN: cannot listen on {addr}: {e}"))?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(accept_loop(listener, metrics, readiness, sealing_key));
    Ok(AdminServer { addr, task })
}

async fn accept_loop(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    sealing_key: Option<Arc<str>>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                log::warn!("admin listener: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            log::debug!("admin listener: {MAX_CONNECTIONS} connections open; closed {peer}");
            continue;
        };
        let metrics = Arc::clone(&metrics);
        let readiness = Arc::clone(&readiness);
        let sealing_key = sealing_key.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = respond(&req, &metrics, &readiness, sealing_key.as_deref());
                async move { Ok::<_, Infallible>(answer) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(false)
                .max_buf_size(16 * 1024)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            match tokio::time::timeout(REQUEST_DEADLINE, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log::debug!("admin listener: connection from {peer}: {e}"),
                Err(_) => log::debug!("admin listener: connection from {peer} timed out"),
            }
            drop(permit);
        });
    }
}

/// The answer to one admin request.
fn respond(
    req: &Request<Incoming>,
    metrics: &Metrics,
    readiness: &Readiness,
    sealing_key: Option<&str>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    let has_body = req.headers().contains_key(hyper::header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if has_body {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "requests have no body here\n",
        );
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match readiness.check() {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => {
            let mut resp = Response::new(Full::new(Bytes::from(metrics.render())));
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        // The public half only: what senders seal to (`send --seal-to`).
        "/sealing-key" => match sealing_key {
            Some(pem) => {
                let mut resp = text(StatusCode::OK, pem);
                resp.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/x-pem-file"),
                );
                resp
            }
            None => text(
                StatusCode::NOT_FOUND,
                "this portal has no sealing key (PORTAL_SEALING_KEY_FILE); it opens no sealed request\n",
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /healthz, /readyz, /metrics or /sealing-key\n",
        ),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_owned())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::portal::assembler::Limits;

    #[test]
    fn metrics_render_with_labels_and_units() {
        let m = Metrics::new(Limits::default().budgets());
        m.job_started(100);
        m.job_completed(42, Duration::from_millis(30));
        m.job_started(5);
        m.job_failed(ErrorCategory::UpstreamTimeout);
        m.fetch_error();
        m.partition_position(2, 10, 15);
        m.records_skipped("too_large", 3);
        m.records_skipped("too_large", 1);
        m.job_cancelled();
        let text = m.render();
        for line in [
            "kafkasend_jobs_started_total 2",
            "kafkasend_jobs_completed_total 1",
            "kafkasend_jobs_failed_total{category=\"upstream_timeout\"} 1",
            "kafkasend_request_body_bytes_total 105",
            "kafkasend_response_body_bytes_total 42",
            "kafkasend_job_duration_seconds_count 1",
            "kafkasend_kafka_errors_total{op=\"fetch\"} 1",
            "kafkasend_partition_lag{partition=\"2\"} 5",
            "kafkasend_records_skipped_total{reason=\"too_large\"} 4",
            "kafkasend_spool_bytes 0",
            "kafkasend_assembly_memory_bytes 0",
            "kafkasend_token_fetches_total 0",
            "kafkasend_jobs_in_flight 0",
            "kafkasend_jobs_cancelled_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no '{line}' in:\n{text}");
        }
        m.partition_released(2);
        assert!(!m.render().contains("partition=\"2\""));
    }

    #[test]
    fn gauges_follow_guards_and_deltas() {
        let m = Metrics::new(Limits::default().budgets());
        let g = m.in_flight();
        assert!(m
            .render()
            .lines()
            .any(|l| l == "kafkasend_jobs_in_flight 1"));
        drop(g);
        assert!(m
            .render()
            .lines()
            .any(|l| l == "kafkasend_jobs_in_flight 0"));
        m.assembling_changed(0, 3);
        m.assembling_changed(3, 1);
        assert!(m
            .render()
            .lines()
            .any(|l| l == "kafkasend_jobs_assembling 1"));
    }

    #[test]
    fn readiness_says_why_not() {
        let r = Readiness::default();
        assert_eq!(r.check(), Err("not connected to Kafka yet".to_string()));
        r.set_connected();
        assert!(r.check().unwrap_err().contains("no request partition"));
        r.set_partitions(2);
        assert_eq!(r.check(), Ok(()));
        r.set_partitions(0);
        assert!(r.check().is_err());
    }

    #[test]
    fn a_stalled_partition_makes_the_portal_not_ready_until_it_moves() {
        let r = Readiness::default();
        r.set_connected();
        r.set_partitions(3);
        r.set_stalled(2, "stuck at offset 7: the answer is too large".into());
        r.set_stalled(0, "stuck at offset 1: broker gone".into());
        let why = r.check().unwrap_err();
        assert_eq!(
            why,
            "cannot read request partitions: partition 0: stuck at offset 1: broker gone; partition 2: stuck at offset 7: the answer is too large"
        );
        // A second report replaces the first: one entry per partition.
        r.set_stalled(2, "stuck at offset 9".into());
        assert!(r
            .check()
            .unwrap_err()
            .contains("partition 2: stuck at offset 9"));
        r.clear_stalled(0);
        r.clear_stalled(2);
        assert_eq!(r.check(), Ok(()));
    }
}
