//! OpenTelemetry export over OTLP/HTTP with protobuf bodies: the standard
//! `OTEL_*` environment variables resolved, and the task that takes the
//! spans `telemetry` queues, batches them and posts them to the collector.
//!
//! Our own small exporter over the portal's hyper client rather than the
//! `opentelemetry` SDK and `opentelemetry-otlp` (which can run over hyper
//! through `opentelemetry-http` and ships its protobuf types pre-generated,
//! and whose SDK has `shutdown_with_timeout`): chosen for dependency weight
//! (the SDK, its batch processor and prost for the one message this sends,
//! `telemetry::otlp`) and for control of exactly what runs at exit (one
//! post, at most [`EXIT_LIMIT`]). What that costs is listed in
//! docs/operations.md: no retry, no gzip, no `OTEL_EXPORTER_OTLP_TIMEOUT`,
//! `_CERTIFICATE` or `_COMPRESSION`, `partial_success` not read.

use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::portal::http_dispatch::client::{build_client, full_body, HttpClient};
use crate::portal::http_dispatch::tls::ApiTls;
use crate::telemetry::{self, otlp, Span};

/// Longest a command waits at exit for its last spans to be exported.
pub(crate) const EXIT_LIMIT: Duration = Duration::from_secs(2);

/// Most spans in one export request.
const MAX_BATCH: usize = 512;

/// How long spans wait to be exported with others.
const BATCH_DELAY: Duration = Duration::from_secs(1);

/// Longest one export request may take (OTLP's default timeout).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how spans are exported, from the environment. Its `Debug`
/// shows the endpoint's origin and the header names only: header values
/// are often credentials, and a URL may hold some too.
#[derive(Clone)]
pub(crate) struct OtlpConfig {
    /// The traces endpoint, `.../v1/traces`.
    pub(crate) url: Uri,
    /// Extra request headers (`OTEL_EXPORTER_OTLP_HEADERS`).
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    /// `service.name` of the spans' resource.
    pub(crate) service: String,
}

impl OtlpConfig {
    /// The endpoint as logs show it: `scheme://host:port`, never userinfo,
    /// path or query.
    pub(crate) fn origin(&self) -> String {
        let scheme = self.url.scheme_str().unwrap_or("http");
        let host = self.url.host().unwrap_or("");
        match self.url.port_u16() {
            Some(port) => format!("{scheme}://{host}:{port}"),
            None => format!("{scheme}://{host}"),
        }
    }
}

impl std::fmt::Debug for OtlpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(|(name, _)| format!("{name}: <redacted>"))
            .collect();
        f.debug_struct("OtlpConfig")
            .field("endpoint", &self.origin())
            .field("headers", &headers)
            .field("service", &self.service)
            .finish()
    }
}

/// Reads the `OTEL_*` variables through `get`: `None` when export is off
/// (no endpoint, `OTEL_SDK_DISABLED=true`, `OTEL_TRACES_EXPORTER=none`).
/// Settings that cannot work turn export off with a warning in the
/// returned list: tracing never stops a request.
pub(crate) fn resolve(
    get: impl Fn(&str) -> Option<String>,
    default_service: &str,
) -> (Option<OtlpConfig>, Vec<String>) {
    let mut warnings = Vec::new();
    let var = |name: &str| {
        get(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return (None, warnings);
    }
    if let Some(exporters) = var("OTEL_TRACES_EXPORTER") {
        let names: Vec<&str> = exporters.split(',').map(str::trim).collect();
        if names.contains(&"none") {
            return (None, warnings);
        }
        if !names.contains(&"otlp") {
            warnings.push(format!(
                "OTEL_TRACES_EXPORTER={exporters}: only otlp (or none) is supported; traces are not exported"
            ));
            return (None, warnings);
        }
    }
    let url = match (
        var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        var("OTEL_EXPORTER_OTLP_ENDPOINT"),
    ) {
        (Some(url), _) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url),
        (None, Some(base)) => (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("{}/v1/traces", base.trim_end_matches('/')),
        ),
        (None, None) => return (None, warnings),
    };
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(p) = var(name) {
            if p != "http/protobuf" {
                warnings.push(format!(
                    "{name}={p}: only http/protobuf is supported; traces are not exported"
                ));
                return (None, warnings);
            }
            break;
        }
    }
    let parsed =
        url.1.parse::<Uri>().ok().filter(|u| {
            matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
        });
    let Some(parsed) = parsed else {
        warnings.push(format!(
            "{}: '{}' is not an http:// or https:// URL; traces are not exported",
            url.0, url.1
        ));
        return (None, warnings);
    };
    let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::new();
    for name in [
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    ] {
        for (k, v) in parse_headers(&var(name).unwrap_or_default(), name, &mut warnings) {
            // The traces-only list wins over the general one.
            headers.retain(|(n, _)| n != k);
            headers.push((k, v));
        }
    }
    let service = var("OTEL_SERVICE_NAME").unwrap_or_else(|| default_service.to_string());
    (
        Some(OtlpConfig {
            url: parsed,
            headers,
            service,
        }),
        warnings,
    )
}

/// `key=value,key2=value2`, values percent-decoded, as OTLP's
/// specification writes them; a broken entry is left out with a warning
/// (never quoting its value, which may be a credential).
fn parse_headers(
    text: &str,
    var: &str,
    warnings: &mut Vec<String>,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let parsed = entry.split_once('=').and_then(|(k, v)| {
            let name = HeaderName::from_bytes(k.trim().as_bytes()).ok()?;
            let value = HeaderValue::from_bytes(&percent_decode(v.trim())?).ok()?;
            Some((name, value))
        });
        match parsed {
            Some(h) => out.push(h),
            None => warnings.push(format!(
                "{var}: an entry is not NAME=VALUE with a valid header name and value; left out"
            )),
        }
    }
    out
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Starts export on the current runtime when the environment asks for it,
/// logging what in the settings was wrong.
pub(crate) fn from_env(default_service: &str) -> Option<Exporter> {
    let (cfg, warnings) = resolve(|name| std::env::var(name).ok(), default_service);
    for w in warnings {
        log::warn!("{w}");
    }
    start(cfg?)
}

/// The running exporter; [`Exporter::shutdown`] sends what is left.
pub(crate) struct Exporter {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Turns span recording on and starts the export task on the current
/// runtime. `None` if recording was on already.
pub(crate) fn start(cfg: OtlpConfig) -> Option<Exporter> {
    let rx = telemetry::install()?;
    let tls = match ApiTls::load(None, None, None) {
        Ok(t) => t,
        Err(e) => {
            log::warn!("OpenTelemetry export: cannot set up TLS ({e}); traces are not exported");
            return None;
        }
    };
    let client = build_client(&tls);
    log::info!(
        "OpenTelemetry: exporting spans of service {} to {}",
        cfg.service,
        cfg.origin()
    );
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(run(cfg, client, rx, stopped));
    Some(Exporter { stop, task })
}

impl Exporter {
    /// Exports the spans still queued, waiting at most `limit`: a dead or
    /// slow collector costs an exiting command no more than that.
    pub(crate) async fn shutdown(self, limit: Duration) {
        let _ = self.stop.send(());
        let abort = self.task.abort_handle();
        if tokio::time::timeout(limit, self.task).await.is_err() {
            abort.abort();
            log::debug!("OpenTelemetry export: the last spans were not sent within {limit:?}");
        }
        let dropped = telemetry::dropped();
        if dropped > 0 {
            log::warn!("OpenTelemetry export: {dropped} spans were dropped (queue full or collector unavailable)");
        }
    }
}

async fn run(
    cfg: OtlpConfig,
    client: HttpClient,
    mut rx: mpsc::Receiver<Span>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut batch: Vec<Span> = Vec::with_capacity(MAX_BATCH);
    let mut failing = false;
    loop {
        let flush_at = tokio::time::Instant::now() + BATCH_DELAY;
        while batch.len() < MAX_BATCH {
            tokio::select! {
                biased;
                _ = &mut stopped => {
                    while batch.len() < telemetry::QUEUE_SPANS {
                        let Ok(span) = rx.try_recv() else { break };
                        batch.push(span);
                    }
                    for part in batch.chunks(MAX_BATCH) {
                        export(&cfg, &client, part, &mut failing).await;
                    }
                    return;
                }
                span = rx.recv() => match span {
                    Some(span) => batch.push(span),
                    None => return,
                },
                () = tokio::time::sleep_until(flush_at) => break,
            }
        }
        if !batch.is_empty() {
            export(&cfg, &client, &batch, &mut failing).await;
            batch.clear();
        }
    }
}

/// Posts one batch; a failure drops it (counted) and is logged once per run
/// of failures.
async fn export(cfg: &OtlpConfig, client: &HttpClient, spans: &[Span], failing: &mut bool) {
    let body = Bytes::from(otlp::encode(&cfg.service, spans));
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(cfg.url.clone())
        .header(CONTENT_TYPE, "application/x-protobuf");
    for (k, v) in &cfg.headers {
        req = req.header(k, v);
    }
    let outcome = match req.body(full_body(body)) {
        Ok(req) => match tokio::time::timeout(EXPORT_TIMEOUT, client.request(req)).await {
            Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
            Ok(Ok(resp)) => Err(format!("the collector answered {}", resp.status())),
            Ok(Err(e)) => Err(crate::util::error_chain(&e)),
            Err(_) => Err(format!("no answer within {EXPORT_TIMEOUT:?}")),
        },
        Err(e) => Err(e.to_string()),
    };
    match outcome {
        Ok(()) => {
            if *failing {
                log::info!("OpenTelemetry export to {} works again", cfg.origin());
            }
            *failing = false;
        }
        Err(why) => {
            telemetry::count_dropped(spans.len() as u64);
            if *failing {
                log::debug!("OpenTelemetry export to {} failed: {why}", cfg.origin());
            } else {
                log::warn!(
                    "OpenTelemetry export to {} failed: {why}; {} spans dropped",
                    cfg.origin(),
                    spans.len()
                );
            }
            *failing = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn export_is_off_by_default_and_when_disabled() {
        assert!(resolve(env(&[]), "s").0.is_none());
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        assert!(resolve(env(&[base, ("OTEL_SDK_DISABLED", "true")]), "s")
            .0
            .is_none());
        assert!(resolve(env(&[base, ("OTEL_TRACES_EXPORTER", "none")]), "s")
            .0
            .is_none());
        let (cfg, warnings) = resolve(env(&[base, ("OTEL_TRACES_EXPORTER", "zipkin")]), "s");
        assert!(cfg.is_none());
        assert!(warnings[0].contains("only otlp"), "{warnings:?}");
        let (cfg, warnings) = resolve(env(&[base, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]), "s");
        assert!(cfg.is_none());
        assert!(warnings[0].contains("http/protobuf"), "{warnings:?}");
    }

    #[test]
    fn endpoints_headers_and_service_follow_the_specification() {
        let (cfg, warnings) = resolve(
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
                (
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    "api-key=a%20b, x-tenant=t1,broken",
                ),
                ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-tenant=t2"),
                ("OTEL_SERVICE_NAME", "billing"),
            ]),
            "kafkasend-send",
        );
        let cfg = cfg.unwrap();
        assert_eq!(cfg.url.to_string(), "http://collector:4318/v1/traces");
        assert_eq!(cfg.service, "billing");
        let shown: Vec<(String, String)> = cfg
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        assert_eq!(
            shown,
            [
                ("api-key".to_string(), "a b".to_string()),
                ("x-tenant".to_string(), "t2".to_string())
            ]
        );
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(!warnings[0].contains("broken"));

        let (cfg, _) = resolve(
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "https://c.example/custom",
                ),
            ]),
            "kafkasend-portal",
        );
        let cfg = cfg.unwrap();
        assert_eq!(cfg.url.to_string(), "https://c.example/custom");
        assert_eq!(cfg.service, "kafkasend-portal");

        for bad in ["ftp://x/", "not a url", "/v1/traces"] {
            let (cfg, warnings) = resolve(env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", bad)]), "s");
            assert!(cfg.is_none(), "{bad}");
            assert_eq!(warnings.len(), 1);
        }
        // Logs and Debug show no secret: no userinfo, path, query or
        // header value.
        let (cfg, _) = resolve(
            env(&[
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    "https://user:pw-secret@c.example:4318/base?key=q-secret",
                ),
                (
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    "authorization=Bearer%20h-secret",
                ),
            ]),
            "s",
        );
        let cfg = cfg.unwrap();
        assert_eq!(cfg.origin(), "https://c.example:4318");
        let shown = format!("{cfg:?}");
        assert!(shown.contains("https://c.example:4318"), "{shown}");
        assert!(shown.contains("authorization: <redacted>"), "{shown}");
        assert!(!shown.contains("secret"), "{shown}");
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
    }
}
