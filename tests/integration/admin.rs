//! The portal's admin listener (/healthz, /readyz, /metrics) and JSON logs.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use crate::support::api::Servers;
use crate::support::broker::Topics;
use crate::support::payload::pattern_file;
use crate::support::run::{admin_addr, admin_get, get, kafkasend, sample, send, Portal};
use crate::support::WAIT;

#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_and_metrics_of_a_working_portal() {
    let servers = Servers::start().await;
    let topics = Topics::new("admin");
    let mut env = servers.plain_env();
    env.push(("PORTAL_ADMIN_LISTEN", "127.0.0.1:0".into()));
    env.push(("PORTAL_ALLOWED_ENDPOINTS", "POST /api/upload".into()));
    let portal = Portal::start(&topics, &env);
    let addr = admin_addr(&portal.log());

    assert_eq!(get(&addr, "/healthz").await.0, 200);
    // Ready once every partition is positioned, which "portal ready" says.
    let (status, body) = get(&addr, "/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));

    let dir = tempfile::tempdir().unwrap();
    let (file, _) = pattern_file(dir.path(), "m.bin", 7, 12_345);
    let ok = send(
        &topics,
        &[file.to_str().unwrap(), "--endpoint", "/api/upload"],
    )
    .await;
    assert_eq!(ok.code, 0, "stderr: {}", ok.stderr);
    let refused = send(&topics, &["--endpoint", "/api/items/1"]).await;
    assert_ne!(refused.code, 0, "stdout: {}", refused.stdout_text());

    // The client may read a reply before the portal has its acknowledgement
    // and counts the job: wait until both jobs are counted as ended.
    let deadline = tokio::time::Instant::now() + WAIT;
    let metrics = loop {
        let (status, metrics) = get(&addr, "/metrics").await;
        assert_eq!(status, 200);
        let ended = sample(&metrics, "kafkasend_jobs_completed_total").unwrap_or(0.0)
            + sample(
                &metrics,
                "kafkasend_jobs_failed_total{category=\"rejected\"}",
            )
            .unwrap_or(0.0);
        if ended >= 2.0 {
            break metrics;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the jobs were never counted:\n{metrics}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let value =
        |name: &str| sample(&metrics, name).unwrap_or_else(|| panic!("no {name} in:\n{metrics}"));
    assert_eq!(value("kafkasend_jobs_started_total"), 2.0);
    assert_eq!(value("kafkasend_jobs_completed_total"), 1.0);
    assert_eq!(
        value("kafkasend_jobs_failed_total{category=\"rejected\"}"),
        1.0
    );
    assert_eq!(value("kafkasend_request_body_bytes_total"), 12_345.0);
    assert_eq!(
        value("kafkasend_response_body_bytes_total"),
        ok.stdout.len() as f64
    );
    assert_eq!(value("kafkasend_job_duration_seconds_count"), 1.0);
    assert_eq!(value("kafkasend_jobs_in_flight"), 0.0);
    assert_eq!(value("kafkasend_jobs_assembling"), 0.0);
    assert_eq!(value("kafkasend_spool_bytes"), 0.0);
    assert_eq!(value("kafkasend_token_fetches_total"), 0.0);
    // Three partitions, each read to its end once its reader's fetch returns.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let metrics = get(&addr, "/metrics").await.1;
        let lags: Vec<Option<f64>> = (0..3)
            .map(|p| {
                sample(
                    &metrics,
                    &format!("kafkasend_partition_lag{{partition=\"{p}\"}}"),
                )
            })
            .collect();
        if lags.iter().all(|l| *l == Some(0.0)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "partition lags never all 0: {lags:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // The listener takes no bodies and only GET/HEAD.
    let (status, _) = admin_get(
        &addr,
        "GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc",
    )
    .await;
    assert_eq!(status, 413);
    let (status, _) = admin_get(
        &addr,
        "POST /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 405);
    assert_eq!(get(&addr, "/nothing").await.0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn not_ready_until_kafka_is_reached() {
    let topics = Topics::new("admin-unready");
    // Nothing listens on port 1: the portal keeps trying for KAFKA_TIMEOUT_SECS.
    let mut child = kafkasend(&topics)
        .arg("portal")
        .env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
        .env("KAFKA_TIMEOUT_SECS", "120")
        .env("PORTAL_TARGET_API_URL", "http://127.0.0.1:9")
        .env("PORTAL_USE_OAUTH", "false")
        .env("PORTAL_ADMIN_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kafkasend portal");
    let stderr = child.stderr.take().expect("portal stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("admin listener on") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx.recv_timeout(WAIT).expect("the admin listener came up");
    let addr = admin_addr(&line);
    assert_eq!(get(&addr, "/healthz").await.0, 200);
    let (status, body) = get(&addr, "/readyz").await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 503);
    assert_eq!(body, "not ready: not connected to Kafka yet\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line_with_the_job() {
    let servers = Servers::start().await;
    let topics = Topics::new("jsonlog");
    let mut env = servers.plain_env();
    env.push(("PORTAL_LOG_FORMAT", "json".into()));
    let portal = Portal::start(&topics, &env);
    let ok = send(&topics, &["--endpoint", "/api/items/1"]).await;
    assert_eq!(ok.code, 0, "stderr: {}", ok.stderr);
    let job = servers.state.idempotency_keys()[0].clone();
    portal
        .wait_for_log(&format!("job {job}: GET /api/items/1 ->"))
        .await;

    let log = portal.log();
    let mut about_the_job = 0;
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for key in ["ts", "level", "target", "msg"] {
            assert!(v[key].is_string(), "no {key} in {line}");
        }
        let msg = v["msg"].as_str().unwrap();
        if msg.contains(&job) {
            about_the_job += 1;
            assert_eq!(v["job"], job.as_str(), "{line}");
        }
    }
    // Assembled and answered at least.
    assert!(about_the_job >= 2, "{log}");
}
