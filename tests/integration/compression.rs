//! Compressed records: `send --compression` on the request's chunks and the
//! portal's PORTAL_COMPRESSION on its answers, checked where a user would
//! look: the exact bytes at the API and back at the client, and the bytes
//! the topics take on the broker (Kafka's own log-dirs tool).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::support::broker::{kafka_script, Topics};
use crate::support::payload::{pattern, sha256_hex};
use crate::support::run::{kafkasend, send_with_env, Portal};
use crate::support::LoopbackApi;

/// What the echo API received: each body's length and digest.
#[derive(Default)]
struct Echoed {
    bodies: Mutex<Vec<(usize, String)>>,
}

/// Answers every request with its own body, so one round trip carries the
/// same bytes each way.
async fn echo(
    state: Arc<Echoed>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    state
        .bodies
        .lock()
        .unwrap()
        .push((body.len(), sha256_hex(&body)));
    Ok(Response::builder()
        .header("content-type", "application/octet-stream")
        .body(Full::new(body))
        .unwrap())
}

/// CSV-like text with varying numbers, as an export or a log has: it
/// compresses several times over, though no two lines are alike.
fn text_body(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 128);
    let mut i = 0u64;
    while out.len() < len {
        let line = format!(
            "{i},customer-{},{}.{:02},2026-12-{:02}T{:02}:{:02}:00Z,\"order placed\",{}\n",
            i * 7919 % 100_003,
            i * 37 % 5000,
            i % 100,
            i % 28 + 1,
            i % 24,
            i % 60,
            i % 7
        );
        out.extend_from_slice(line.as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// Bytes `topic` takes in the broker's log, all partitions together.
fn topic_bytes(topics: &Topics, topic: &str) -> u64 {
    let out = std::process::Command::new(kafka_script())
        .args(["tool", "org.apache.kafka.tools.LogDirsCommand"])
        .args(["--bootstrap-server", topics.broker()])
        .args(["--describe", "--topic-list", topic])
        .output()
        .expect("run Kafka's log-dirs tool");
    let text = String::from_utf8_lossy(&out.stdout);
    let json = text
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no answer from the log-dirs tool: {text}"));
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let mut total = 0;
    for broker in v["brokers"].as_array().unwrap() {
        for dir in broker["logDirs"].as_array().unwrap() {
            for p in dir["partitions"].as_array().unwrap() {
                let name = p["partition"].as_str().unwrap();
                if name.rsplit_once('-').map(|(t, _)| t) == Some(topic) {
                    total += p["size"].as_u64().unwrap();
                }
            }
        }
    }
    total
}

/// The batches a log line says were compressed with `codec`, and all those
/// decided: `compression zstd on 7 of 7 batches` is (7, 7).
fn counts(log: &str, prefix: &str, codec: &str) -> (u64, u64) {
    let needle = format!("{prefix}compression {codec} on ");
    let at = log
        .find(&needle)
        .unwrap_or_else(|| panic!("no {needle:?} in the log:\n{log}"));
    let words: Vec<&str> = log[at + needle.len()..].split_whitespace().collect();
    assert_eq!((words[1], words[3]), ("of", "batches"), "{log}");
    (words[0].parse().unwrap(), words[2].parse().unwrap())
}

/// Sizes of the request and response topics after one round trip.
struct Trip {
    request_bytes: u64,
    response_bytes: u64,
    send_log: String,
    portal_log: String,
}

/// Sends `body` with `send --compression SEND` through a portal with
/// PORTAL_COMPRESSION=`portal` (unset when `None`) to the echo API, and
/// checks that the API and the client got exactly `body`.
async fn round_trip(name: &str, send: Option<&str>, portal: Option<&str>, body: &[u8]) -> Trip {
    let api = LoopbackApi::<Echoed>::serve(echo).await;
    let topics = Topics::new(name);
    let mut env = vec![
        ("PORTAL_TARGET_API_URL", api.url.clone()),
        ("PORTAL_USE_OAUTH", "false".to_string()),
    ];
    if let Some(codec) = portal {
        env.push(("PORTAL_COMPRESSION", codec.to_string()));
    }
    let portal = Portal::start(&topics, &env);
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.csv"), dir.path().join("out.csv"));
    std::fs::write(&input, body).unwrap();
    let mut args = vec![
        input.to_str().unwrap(),
        "--endpoint",
        "/echo",
        "-o",
        output.to_str().unwrap(),
        "--log-level",
        "INFO",
    ];
    if let Some(codec) = send {
        args.extend(["--compression", codec]);
    }
    let out = send_with_env(&topics, &[], &args).await;
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let digest = sha256_hex(body);
    assert_eq!(
        api.state.bodies.lock().unwrap().clone(),
        vec![(body.len(), digest.clone())],
        "the API received other bytes"
    );
    let back = std::fs::read(&output).unwrap();
    assert!(back == body, "the client got {} other bytes", back.len());
    portal.wait_for_log("answer sent, compression").await;
    Trip {
        request_bytes: topic_bytes(&topics, &topics.request),
        response_bytes: topic_bytes(&topics, &topics.response),
        send_log: out.stderr,
        portal_log: portal.log(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn text_crosses_compressed_with_each_codec_both_ways() {
    let body = text_body(6 * 1024 * 1024);
    let len = body.len() as u64;
    // 6 MiB in 900 KiB chunks: 7 chunk records, and as many chunks back.
    for (send, portal, request_codec, answer_codec) in [
        (Some("zstd"), Some("lz4"), "zstd", "lz4"),
        (Some("lz4"), Some("zstd"), "lz4", "zstd"),
        // Neither set: the default, auto.
        (None, None, "lz4", "lz4"),
    ] {
        let trip = round_trip("compressed", send, portal, &body).await;
        let case = format!("--compression {send:?}, PORTAL_COMPRESSION {portal:?}");
        assert_eq!(counts(&trip.send_log, "", request_codec), (7, 7), "{case}");
        // The answer's batches follow the API's pace; a body frame late
        // enough sends a partial chunk on its own, so count at least 7.
        let (packed, all) = counts(&trip.portal_log, "answer sent, ", answer_codec);
        assert!(packed == all && all >= 7, "{case}: {packed} of {all}");
        // What the broker keeps is what crossed the network.
        assert!(
            trip.request_bytes < len / 2,
            "{case}: the request topic takes {} bytes for a {len}-byte text",
            trip.request_bytes
        );
        assert!(
            trip.response_bytes < len / 2,
            "{case}: the response topic takes {} bytes for a {len}-byte text",
            trip.response_bytes
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn none_and_incompressible_data_go_uncompressed() {
    let text = text_body(3 * 1024 * 1024);
    let trip = round_trip("uncompressed", Some("none"), Some("none"), &text).await;
    assert!(
        trip.send_log.contains("compression none"),
        "{}",
        trip.send_log
    );
    assert!(
        trip.portal_log.contains("answer sent, compression none"),
        "{}",
        trip.portal_log
    );
    let len = text.len() as u64;
    assert!(trip.request_bytes >= len, "{} < {len}", trip.request_bytes);
    assert!(
        trip.response_bytes >= len,
        "{} < {len}",
        trip.response_bytes
    );

    // Random bytes under the default: every batch probed, none compressed.
    let noise = pattern(15, 3 * 1024 * 1024);
    let trip = round_trip("incompressible", None, None, &noise).await;
    assert_eq!(counts(&trip.send_log, "", "lz4"), (0, 4));
    let (packed, all) = counts(&trip.portal_log, "answer sent, ", "lz4");
    assert!(packed == 0 && all >= 4, "{packed} of {all}");
    let len = noise.len() as u64;
    assert!(trip.request_bytes >= len, "{} < {len}", trip.request_bytes);
    assert!(
        trip.response_bytes >= len,
        "{} < {len}",
        trip.response_bytes
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_codec_is_a_usage_error_naming_the_choices() {
    let topics = Topics::new("badcodec");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body.txt");
    std::fs::write(&file, b"hello").unwrap();
    let file = file.to_str().unwrap();
    for (env, args) in [
        (vec![], vec![file, "-e", "/x", "--compression", "gzip"]),
        (
            vec![("KAFKASEND_COMPRESSION", "zstd:19".to_string())],
            vec![file, "-e", "/x"],
        ),
    ] {
        let out = send_with_env(&topics, &env, &args).await;
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(
            out.stderr
                .contains("--compression (KAFKASEND_COMPRESSION): ")
                && out
                    .stderr
                    .contains("is not a codec; use auto, zstd, lz4 or none"),
            "{args:?}: {}",
            out.stderr
        );
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    }

    let out = kafkasend(&topics)
        .args(["portal", "--target-api-url", "http://127.0.0.1:9"])
        .args(["--use-oauth", "false", "--compression", "brotli"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr
            .contains("PORTAL_COMPRESSION: \"brotli\" is not a codec; use auto, zstd, lz4 or none"),
        "{stderr}"
    );
}
