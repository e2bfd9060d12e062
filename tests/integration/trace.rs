//! Trace context end to end: `send` starts or continues a W3C trace, the
//! start record carries it, the portal calls the API under a span of its
//! own and tells `send` the trace id on the response's start record.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use kafkasend::kafka;
use kafkasend::kafka::partitioner::partition_for_key;
use kafkasend::protocol::trace::TraceParent;
use kafkasend::protocol::wire::{self, Body, Frame, JobId, RequestStart};

use crate::support::api::{Recorded, Servers};
use crate::support::broker::{kafka_settings, records_in, Topics};
use crate::support::otlp::Receiver;
use crate::support::run::{send_with_env, Portal};
use crate::support::wait_until;

const GIVEN: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// The `traceparent` the API received, parsed; fails when there is none or
/// it is invalid.
fn api_traceparent(req: &Recorded) -> TraceParent {
    let value = req
        .headers
        .get("traceparent")
        .unwrap_or_else(|| panic!("the API got no traceparent: {:?}", req.headers));
    assert_eq!(
        req.headers.get_all("traceparent").iter().count(),
        1,
        "{:?}",
        req.headers
    );
    TraceParent::parse(value.as_bytes()).expect("the API's traceparent is valid")
}

/// The `traceparent` on the request's start record, as `send` wrote it.
async fn start_record_traceparent(topics: &Topics, job: JobId) -> (TraceParent, Option<Vec<u8>>) {
    let partition = partition_for_key(&job.key(), 3);
    for r in records_in(topics, &topics.request, partition).await {
        let Some(Ok((frame, _))) = r.value.as_deref().map(wire::decode) else {
            continue;
        };
        if frame.job == job && matches!(frame.body, Body::RequestStart(_)) {
            let tp = r
                .headers
                .get("traceparent")
                .expect("the start record carries a traceparent");
            return (
                TraceParent::parse(tp).expect("send wrote a valid traceparent"),
                r.headers.get("tracestate").cloned(),
            );
        }
    }
    panic!("no start record of job {job}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_trace_links_send_the_portal_and_the_api() {
    let servers = Servers::start().await;
    let topics = Topics::new("trace-new");
    let portal = Portal::start(&topics, &servers.plain_env());
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("out.json");
    let out = send_with_env(
        &topics,
        &[],
        &[
            "--endpoint",
            "/api/items",
            "-o",
            out_file.to_str().unwrap(),
            "--json",
            "-v",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let summary = crate::support::api::json(&out.stdout);
    let trace_id = summary["trace_id"].as_str().expect("--json has trace_id");
    let job: JobId = summary["job"].as_str().unwrap().parse().unwrap();
    assert!(
        out.stderr.contains(&format!("trace_id={trace_id}")),
        "-v shows the trace id: {}",
        out.stderr
    );

    let reqs = servers.state.requests();
    assert_eq!(reqs.len(), 1);
    let api = api_traceparent(&reqs[0]);
    assert_eq!(api.trace_id.to_string(), trace_id);
    assert!(api.sampled(), "send starts a sampled trace");
    let (sent, state) = start_record_traceparent(&topics, job).await;
    assert_eq!(sent.trace_id, api.trace_id);
    assert_eq!(state, None, "no tracestate when none was given");
    // The API's parent is the portal's call span, not send's span.
    assert_ne!(sent.parent_id, api.parent_id);
    portal
        .wait_for_log(&format!("job {job}: GET /api/items -> 200"))
        .await;
    assert!(
        portal.log().contains(&format!("trace_id={trace_id}")),
        "the portal's job line carries the trace id: {}",
        portal.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_given_trace_is_continued_and_minus_h_wins_over_the_environment() {
    let servers = Servers::start().await;
    let topics = Topics::new("trace-given");
    let _portal = Portal::start(&topics, &servers.plain_env());
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("out.json");
    let o = out_file.to_str().unwrap();

    let from_env = [
        ("TRACEPARENT", GIVEN.to_string()),
        (
            "TRACESTATE",
            "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7".to_string(),
        ),
    ];
    let out = send_with_env(&topics, &from_env, &["--endpoint", "/e", "-o", o, "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let summary = crate::support::api::json(&out.stdout);
    assert_eq!(summary["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    let reqs = servers.state.requests();
    let api = api_traceparent(&reqs[0]);
    assert_eq!(api.trace_id.to_string(), "0af7651916cd43dd8448eb211c80319c");
    assert_ne!(api.parent_id.to_string(), "b7ad6b7169203331");
    assert_eq!(
        reqs[0].headers["tracestate"],
        "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    );
    let job: JobId = summary["job"].as_str().unwrap().parse().unwrap();
    let (sent, _) = start_record_traceparent(&topics, job).await;
    // send's own span is the portal's parent, a child of the given one.
    assert_ne!(sent.parent_id.to_string(), "b7ad6b7169203331");

    let minus_h = "00-11111111111111111111111111111111-2222222222222222-00";
    let out = send_with_env(
        &topics,
        &from_env,
        &[
            "--endpoint",
            "/e",
            "-o",
            o,
            "--json",
            "-H",
            &format!("traceparent: {minus_h}"),
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let summary = crate::support::api::json(&out.stdout);
    assert_eq!(summary["trace_id"], "11111111111111111111111111111111");
    let reqs = servers.state.requests();
    let api = api_traceparent(&reqs[1]);
    assert_eq!(api.trace_id.to_string(), "11111111111111111111111111111111");
    assert!(!api.sampled(), "the caller's flags are kept");
    // The environment's tracestate belongs to the environment's trace.
    assert!(reqs[1].headers.get("tracestate").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_trace_context_is_refused_on_the_command_line_and_ignored_from_the_environment() {
    let servers = Servers::start().await;
    let topics = Topics::new("trace-invalid");
    let _portal = Portal::start(&topics, &servers.plain_env());
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("out.json");
    let o = out_file.to_str().unwrap();
    for bad in [
        "traceparent: 00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "traceparent: 00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        "traceparent: nonsense",
    ] {
        let out = send_with_env(&topics, &[], &["--endpoint", "/e", "-o", o, "-H", bad]).await;
        assert_eq!(out.code, 2, "{bad}: {}", out.stderr);
        assert!(out.stderr.contains("traceparent"), "{}", out.stderr);
    }
    let out = send_with_env(
        &topics,
        &[],
        &["--endpoint", "/e", "-o", o, "-H", "tracestate: a=1"],
    )
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        servers.state.requests().is_empty(),
        "nothing is sent on a refused trace context"
    );

    let env = [("TRACEPARENT", "00-zz-zz-01".to_string())];
    let out = send_with_env(&topics, &env, &["--endpoint", "/e", "-o", o, "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("TRACEPARENT/TRACESTATE ignored"),
        "{}",
        out.stderr
    );
    let summary = crate::support::api::json(&out.stdout);
    let api = api_traceparent(&servers.state.requests()[0]);
    assert_eq!(summary["trace_id"], api.trace_id.to_string().as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_trace_headers_on_a_start_record_are_ignored_and_the_portal_starts_a_trace() {
    let servers = Servers::start().await;
    let topics = Topics::new("trace-hostile");
    let mut env = servers.plain_env();
    // A forwarded traceparent would be the caller's; the portal sends its own.
    env.push(("PORTAL_ALLOWED_HEADERS", "traceparent,tracestate".into()));
    let _portal = Portal::start(&topics, &env);
    let client = kafka::connect(&kafka_settings(&topics, "it-forger"))
        .await
        .unwrap();
    let hostile: [(&[u8], &[u8]); 3] = [
        (
            b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            b"a=1",
        ),
        (&[0xff; 300], &[0; 9000]),
        (GIVEN.as_bytes(), b"bad\r\nstate"),
    ];
    for (i, (tp, ts)) in hostile.iter().enumerate() {
        let job = JobId::new();
        let start = Frame {
            job,
            seq: 0,
            body: Body::RequestStart(RequestStart {
                method: "GET".into(),
                path: format!("/hostile/{i}"),
                headers: vec![
                    (
                        "traceparent".into(),
                        "00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-01".into(),
                    ),
                    ("tracestate".into(), "forwarded=1".into()),
                ],
                body_len: None,
                has_body: false,
                reply_topic: topics.response.clone(),
                reply_partition: 0,
                digest: kafkasend::protocol::digest::DigestKind::Sha256,
            }),
        };
        let headers = [
            (
                wire::REPLY_TO_HEADER,
                wire::reply_to_header(&topics.response, 0),
            ),
            ("traceparent", tp.to_vec()),
            ("tracestate", ts.to_vec()),
        ];
        let pc = client
            .partition(&topics.request, partition_for_key(&job.key(), 3))
            .await
            .unwrap();
        pc.produce(kafka::record(&start, &[], &headers))
            .await
            .unwrap();
    }
    wait_until("the API gets all three requests", || {
        servers.state.requests().len() == 3
    })
    .await;
    for req in servers.state.requests() {
        let api = api_traceparent(&req);
        assert_ne!(
            api.trace_id.to_string(),
            "f".repeat(32),
            "forwarded one replaced"
        );
        if req.path == "/hostile/2" {
            // A good traceparent is kept though its tracestate is bad.
            assert_eq!(api.trace_id.to_string(), "0af7651916cd43dd8448eb211c80319c");
        } else {
            assert_ne!(api.trace_id.to_string(), "0af7651916cd43dd8448eb211c80319c");
        }
        assert!(req.headers.get("tracestate").is_none(), "{:?}", req.headers);
    }
    // The answers name the trace the API saw.
    let mut seen = 0;
    for r in records_in(&topics, &topics.response, 0).await {
        if let Some(Ok((
            Frame {
                body: Body::ResponseStart(_),
                ..
            },
            _,
        ))) = r.value.as_deref().map(wire::decode)
        {
            let tp = r
                .headers
                .get("traceparent")
                .expect("answer has traceparent");
            assert!(TraceParent::parse(tp).is_ok());
            seen += 1;
        }
    }
    assert_eq!(seen, 3);
}

/// The one span named `name`.
fn one<'a>(spans: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    let found: Vec<_> = spans.iter().filter(|s| s["name"] == name).collect();
    assert_eq!(found.len(), 1, "{name}: {spans:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread")]
async fn one_trace_links_send_the_portal_and_the_api_in_a_real_otlp_receiver() {
    let receiver = Receiver::start();
    let servers = Servers::start().await;
    let topics = Topics::new("trace-otlp");
    let mut env = servers.oauth_env();
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()));
    let _portal = Portal::start(&topics, &env);
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("out.json");
    let send_env = [
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("{}/v1/traces", receiver.endpoint()),
        ),
        ("OTEL_SERVICE_NAME", "billing-batch".to_string()),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "x-tenant=team%20a".to_string(),
        ),
    ];
    let out = send_with_env(
        &topics,
        &send_env,
        &[
            "--endpoint",
            "/api/upload",
            "--data-binary",
            "hello, trace",
            "-o",
            out_file.to_str().unwrap(),
            "--json",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let summary = crate::support::api::json(&out.stdout);
    let trace_id = summary["trace_id"].as_str().unwrap().to_string();
    let job = summary["job"].as_str().unwrap();
    let spans = receiver
        .wait_for(
            &trace_id,
            &[
                "send", "prepare", "upload", "wait", "download", "job", "assemble", "policy",
                "token", "call", "respond",
            ],
        )
        .await;

    let send = one(&spans, "send");
    assert_eq!(send["service"], "billing-batch");
    assert_eq!(send["parent_span_id"], "", "send starts the trace");
    assert_eq!(send["attributes"]["kafkasend.job_id"], job);
    assert_eq!(send["attributes"]["http.response.status_code"], 200);
    assert_eq!(send["attributes"]["kafkasend.request.body_bytes"], 12);
    assert_eq!(send["headers"]["x-tenant"], "team a");
    for step in ["prepare", "upload", "wait", "download"] {
        let s = one(&spans, step);
        assert_eq!(s["parent_span_id"], send["span_id"], "{step}");
        assert_eq!(s["service"], "billing-batch");
        assert!(s["start"].as_u64() >= send["start"].as_u64(), "{step}");
        assert!(s["end"].as_u64() <= send["end"].as_u64(), "{step}");
    }

    let job_span = one(&spans, "job");
    assert_eq!(job_span["service"], "kafkasend-portal");
    assert_eq!(
        job_span["parent_span_id"], send["span_id"],
        "the portal's job hangs under send"
    );
    assert_eq!(job_span["attributes"]["kafkasend.job_id"], job);
    assert_eq!(job_span["attributes"]["kafkasend.route"], "default");
    assert_eq!(job_span["attributes"]["http.response.status_code"], 200);
    assert_eq!(job_span["attributes"]["kafkasend.request.body_bytes"], 12);
    for step in ["assemble", "policy", "token", "call", "respond"] {
        assert_eq!(
            one(&spans, step)["parent_span_id"],
            job_span["span_id"],
            "{step}"
        );
    }
    // The API's traceparent names the portal's call span as its parent.
    let reqs = servers.state.requests();
    let api = api_traceparent(&reqs[0]);
    assert_eq!(api.trace_id.to_string(), trace_id);
    assert_eq!(
        one(&spans, "call")["span_id"],
        api.parent_id.to_string().as_str()
    );
    // Kinds as OTLP numbers them (client 3, producer 4, consumer 5, internal
    // 1); no span failed, so none has an error status (2).
    assert_eq!(send["kind"], 4);
    assert_eq!(job_span["kind"], 5);
    assert_eq!(one(&spans, "call")["kind"], 3);
    assert_eq!(one(&spans, "token")["kind"], 1);
    assert!(spans.iter().all(|s| s["status"] != 2), "{spans:#?}");
    // Only this trace's spans, each once.
    let mut ids: Vec<_> = spans.iter().map(|s| s["span_id"].to_string()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), spans.len(), "{spans:#?}");

    // The token is cached now: a second job has no `token` span. Then the
    // API refuses it: the call refreshes it (a `token` span) and is sent
    // again, each request with a `call` span of its own, which its
    // `traceparent` names.
    let second = |topics: &Topics| {
        let o = out_file.to_str().unwrap().to_string();
        let topics = topics.clone();
        let env = send_env.clone();
        async move {
            let out = send_with_env(
                &topics,
                &env,
                &["--endpoint", "/api/again", "-o", &o, "--json"],
            )
            .await;
            assert_eq!(out.code, 0, "{}", out.stderr);
            crate::support::api::json(&out.stdout)["trace_id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let cached = second(&topics).await;
    let spans = receiver.wait_for(&cached, &["send", "job", "call"]).await;
    assert!(spans.iter().all(|s| s["name"] != "token"), "{spans:#?}");
    servers.state.valid_tokens.lock().unwrap().clear();
    let refreshed = second(&topics).await;
    let spans = receiver
        .wait_for(&refreshed, &["send", "job", "call", "token"])
        .await;
    let calls: Vec<_> = spans.iter().filter(|s| s["name"] == "call").collect();
    assert_eq!(calls.len(), 2, "{spans:#?}");
    let reqs = servers.state.requests();
    let tried: Vec<_> = reqs
        .iter()
        .filter(|r| r.path == "/api/again")
        .map(api_traceparent)
        .filter(|tp| tp.trace_id.to_string() == refreshed)
        .collect();
    assert_eq!(tried.len(), 2);
    assert_ne!(tried[0].parent_id, tried[1].parent_id);
    for (n, tp) in tried.iter().enumerate() {
        let call = calls
            .iter()
            .find(|c| c["span_id"] == tp.parent_id.to_string().as_str())
            .unwrap_or_else(|| panic!("no call span for request {n}: {calls:#?}"));
        assert_eq!(call["kind"], 3);
        if n == 0 {
            assert_eq!(call["attributes"]["http.response.status_code"], 401);
            assert!(call["attributes"]
                .get("http.request.resend_count")
                .is_none());
        } else {
            assert_eq!(call["attributes"]["http.response.status_code"], 200);
            assert_eq!(call["attributes"]["http.request.resend_count"], 1);
        }
    }
    let token = one(&spans, "token");
    assert!(token["start"].as_u64() >= calls.iter().map(|c| c["end"].as_u64()).min().unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_that_fails_exports_error_spans() {
    let receiver = Receiver::start();
    let servers = Servers::start().await;
    let topics = Topics::new("trace-otlp-error");
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let mut env: Vec<_> = servers
        .plain_env()
        .into_iter()
        .filter(|(k, _)| *k != "PORTAL_TARGET_API_URL")
        .collect();
    env.push(("PORTAL_TARGET_API_URL", closed));
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()));
    let _portal = Portal::start(&topics, &env);
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("out.json");
    let out = send_with_env(
        &topics,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
            ("TRACEPARENT", GIVEN.to_string()),
        ],
        &["--endpoint", "/nowhere", "-o", out_file.to_str().unwrap()],
    )
    .await;
    assert_ne!(out.code, 0, "{}", out.stderr);
    let spans = receiver
        .wait_for("0af7651916cd43dd8448eb211c80319c", &["send", "job", "call"])
        .await;
    for name in ["send", "job", "call"] {
        assert_eq!(one(&spans, name)["status"], 2, "{name}: {spans:#?}");
    }
    assert!(spans.iter().all(|s| s["name"] != "respond"), "{spans:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_continued_trace_keeps_its_trace_id_and_parent_in_the_exported_spans() {
    let receiver = Receiver::start();
    let servers = Servers::start().await;
    let topics = Topics::new("trace-otlp-given");
    let mut env = servers.plain_env();
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()));
    let _portal = Portal::start(&topics, &env);
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("out.json");
    let send_env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("TRACEPARENT", GIVEN.to_string()),
        ("TRACESTATE", "vendor=1".to_string()),
    ];
    let out = send_with_env(
        &topics,
        &send_env,
        &["--endpoint", "/e", "-o", out_file.to_str().unwrap()],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let spans = receiver
        .wait_for("0af7651916cd43dd8448eb211c80319c", &["send", "job", "call"])
        .await;
    let send = one(&spans, "send");
    assert_eq!(send["parent_span_id"], "b7ad6b7169203331");
    assert_eq!(send["trace_state"], "vendor=1");
    assert_eq!(send["service"], "kafkasend-send");
    assert_eq!(one(&spans, "job")["parent_span_id"], send["span_id"]);
}

/// A loopback listener that counts the connections made to it and never
/// answers (a collector that hangs).
async fn silent_listener() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            held.push(conn);
        }
    });
    (format!("http://{addr}"), count)
}

#[tokio::test(flavor = "multi_thread")]
async fn export_turned_off_makes_no_connection() {
    let (endpoint, connections) = silent_listener().await;
    let servers = Servers::start().await;
    let topics = Topics::new("trace-off");
    let mut env = servers.plain_env();
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()));
    env.push(("OTEL_SDK_DISABLED", "true".into()));
    let portal = Portal::start(&topics, &env);
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("out.json");
    let o = out_file.to_str().unwrap();
    for off in [
        ("OTEL_SDK_DISABLED", "true"),
        ("OTEL_TRACES_EXPORTER", "none"),
    ] {
        let send_env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
            (off.0, off.1.to_string()),
        ];
        let out = send_with_env(&topics, &send_env, &["--endpoint", "/e", "-o", o]).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    let out = send_with_env(&topics, &[], &["--endpoint", "/e", "-o", o]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(servers.state.requests().len(), 3);
    // The portal's batches would have gone out within a second.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(connections.load(Ordering::SeqCst), 0);
    assert!(!portal.log().contains("OpenTelemetry"), "{}", portal.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_or_hanging_collector_neither_fails_nor_holds_send() {
    let (hanging, connections) = silent_listener().await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let servers = Servers::start().await;
    let topics = Topics::new("trace-dead");
    let mut env = servers.plain_env();
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", closed.clone()));
    let portal = Portal::start(&topics, &env);
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("out.json");
    let o = out_file.to_str().unwrap();
    for (n, endpoint) in [closed, hanging].into_iter().enumerate() {
        let run = {
            let (topics, endpoint, o) = (topics.clone(), endpoint.clone(), o.to_string());
            tokio::spawn(async move {
                send_with_env(
                    &topics,
                    &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)],
                    &["--endpoint", "/e", "-o", &o, "--json"],
                )
                .await
            })
        };
        wait_until("the API gets the request", || {
            servers.state.requests().len() > n
        })
        .await;
        let done = std::time::Instant::now();
        let out = run.await.unwrap();
        assert_eq!(out.code, 0, "{endpoint}: {}", out.stderr);
        // From the API's answer to exit: the answer's way back and at most
        // the 2 s exit limit, not the 10 s an export may take.
        assert!(
            done.elapsed() <= std::time::Duration::from_secs(5),
            "{endpoint}: send exited {:?} after the API had the request",
            done.elapsed()
        );
        let summary = crate::support::api::json(&out.stdout);
        assert_eq!(summary["status"], 200);
    }
    assert!(
        connections.load(Ordering::SeqCst) >= 1,
        "send tried the hanging collector"
    );
    portal.wait_for_log("OpenTelemetry export to").await;
    assert_eq!(servers.state.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pipelined_call_carries_the_trace_too() {
    let servers = Servers::start().await;
    let topics = Topics::new("trace-piped");
    let portal = Portal::start(&topics, &servers.plain_env());
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = crate::support::payload::pattern_file(dir.path(), "big.bin", 7, 3_000_000);
    let out_file = dir.path().join("out.json");
    let out = send_with_env(
        &topics,
        &[("TRACEPARENT", GIVEN.to_string())],
        &[
            file.to_str().unwrap(),
            "--endpoint",
            "/api/upload",
            "-o",
            out_file.to_str().unwrap(),
            "--json",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let summary = crate::support::api::json(&out.stdout);
    let job = summary["job"].as_str().unwrap();
    assert!(
        portal.log().contains(&format!("job {job}")) && portal.log().contains("pipelined"),
        "{}",
        portal.log()
    );
    let api = api_traceparent(&servers.state.requests()[0]);
    assert_eq!(api.trace_id.to_string(), "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(summary["trace_id"], "0af7651916cd43dd8448eb211c80319c");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_or_hostile_tracestate_is_cut_or_dropped_and_the_trace_kept() {
    let servers = Servers::start().await;
    let topics = Topics::new("trace-state");
    let _portal = Portal::start(&topics, &servers.plain_env());
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("out.json");
    let o = out_file.to_str().unwrap();

    // Over 8 KiB: four small members first, then 28 of 256 bytes, with
    // spaces and tabs around the commas. The large ones go first, and what
    // is left fits in 512 bytes, so the small ones reach the API unchanged.
    let small: Vec<String> = (0..4)
        .map(|n| format!("s{n}={}", "x".repeat(117)))
        .collect();
    let large: Vec<String> = (0..28)
        .map(|n| format!("l{n:02}={}", "y".repeat(252)))
        .collect();
    let long = [small.clone(), large]
        .concat()
        .join(" \t       ,\t        ");
    assert!(long.len() > 8192, "{}", long.len());
    let out = send_with_env(
        &topics,
        &[],
        &[
            "--endpoint",
            "/long",
            "-o",
            o,
            "--json",
            "-H",
            &format!("traceparent: {GIVEN}"),
            "-H",
            &format!("tracestate: {long}"),
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let reqs = servers.state.requests();
    let api = api_traceparent(&reqs[0]);
    assert_eq!(api.trace_id.to_string(), "0af7651916cd43dd8448eb211c80319c");
    let state = reqs[0].headers["tracestate"].to_str().unwrap();
    assert_eq!(state, small.join(","));
    assert!(state.len() <= 512);
    let job: JobId = crate::support::api::json(&out.stdout)["job"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let (_, on_record) = start_record_traceparent(&topics, job).await;
    assert_eq!(on_record.as_deref(), Some(small.join(",").as_bytes()));

    // Hostile or invalid lists are dropped whole, with a warning; the
    // trace goes on. From -H and from the environment alike.
    let hostile = [
        "a=1,a=2",
        "Upper=1",
        "a=1,x=y\u{1}",
        "a=1,no-equals",
        "a=1,b=2,c=three=3",
    ];
    for (i, bad) in hostile.iter().enumerate() {
        let path = format!("/hostile-h/{i}");
        let out = send_with_env(
            &topics,
            &[],
            &[
                "--endpoint",
                &path,
                "-o",
                o,
                "-H",
                &format!("traceparent: {GIVEN}"),
                "-H",
                &format!("tracestate: {bad}"),
            ],
        )
        .await;
        assert_eq!(out.code, 0, "{bad:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("tracestate dropped"),
            "{bad:?}: {}",
            out.stderr
        );
        let path_env = format!("/hostile-env/{i}");
        let env = [
            ("TRACEPARENT", GIVEN.to_string()),
            ("TRACESTATE", bad.to_string()),
        ];
        let out = send_with_env(&topics, &env, &["--endpoint", &path_env, "-o", o]).await;
        assert_eq!(out.code, 0, "{bad:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("TRACESTATE ignored"),
            "{bad:?}: {}",
            out.stderr
        );
    }
    let reqs = servers.state.requests();
    assert_eq!(reqs.len(), 1 + 2 * hostile.len());
    for req in &reqs[1..] {
        let api = api_traceparent(req);
        assert_eq!(
            api.trace_id.to_string(),
            "0af7651916cd43dd8448eb211c80319c",
            "{}",
            req.path
        );
        assert!(req.headers.get("tracestate").is_none(), "{}", req.path);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unsampled_trace_is_carried_on_but_not_exported() {
    let receiver = Receiver::start();
    let servers = Servers::start().await;
    let topics = Topics::new("trace-unsampled");
    let mut env = servers.plain_env();
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()));
    let _portal = Portal::start(&topics, &env);
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("out.json");
    let o = out_file.to_str().unwrap();
    let unsampled = "00-3333333333333333333333333333aaaa-4444444444444444-00";
    let out = send_with_env(
        &topics,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
            ("TRACEPARENT", unsampled.to_string()),
        ],
        &["--endpoint", "/quiet", "-o", o, "--json"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let summary = crate::support::api::json(&out.stdout);
    assert_eq!(summary["trace_id"], "3333333333333333333333333333aaaa");
    let api = api_traceparent(&servers.state.requests()[0]);
    assert_eq!(api.trace_id.to_string(), "3333333333333333333333333333aaaa");
    assert!(!api.sampled(), "flags 00 are carried on");
    assert!(api.to_string().ends_with("-00"));

    // A sampled send after it: once its spans are in, the unsampled ones
    // would have been too (send exports at exit, the portal in order).
    let out = send_with_env(
        &topics,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
            ("TRACEPARENT", GIVEN.to_string()),
        ],
        &["--endpoint", "/loud", "-o", o],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    receiver
        .wait_for("0af7651916cd43dd8448eb211c80319c", &["send", "job", "call"])
        .await;
    let leaked: Vec<_> = receiver
        .spans()
        .into_iter()
        .filter(|s| s["trace_id"] == "3333333333333333333333333333aaaa")
        .collect();
    assert!(leaked.is_empty(), "{leaked:#?}");
}
