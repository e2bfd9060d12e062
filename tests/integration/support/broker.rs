//! The Kafka broker the tests run against: the shared one or a private one
//! a test may stop, unique topic names, its SASL_SSL facts, and the records
//! tests read from it or write to it themselves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use kafkasend::kafka::{self, Record};
use kafkasend::protocol::wire::{Body, ChunkInfo, Frame, JobId, RequestStart};
use kafkasend::protocol::ErrorCategory;

use super::run::Portal;
use super::WAIT;

/// `scripts/kafka`, which starts brokers and runs Kafka's own tools.
pub fn kafka_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka")
}

/// The broker address: `KAFKA_BOOTSTRAP_SERVERS` when set, else the one
/// `scripts/kafka start` starts (or finds running).
pub fn broker() -> &'static str {
    static BROKER: OnceLock<String> = OnceLock::new();
    BROKER.get_or_init(|| {
        if let Ok(b) = std::env::var("KAFKA_BOOTSTRAP_SERVERS") {
            if !b.trim().is_empty() {
                return b;
            }
        }
        let script = kafka_script();
        let out = Command::new(&script)
            .arg("start")
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "scripts/kafka start failed ({}); the integration tests need a real broker",
            out.status
        );
        let addr = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(!addr.is_empty(), "scripts/kafka start printed no address");
        addr
    })
}

/// Request and response topic names unique to one test.
#[derive(Clone, Debug)]
pub struct Topics {
    /// The request topic.
    pub request: String,
    /// The response topic.
    pub response: String,
    /// The portals' consumer group.
    pub group: String,
    /// A broker of the test's own instead of the shared one.
    pub bootstrap: Option<String>,
}

impl Topics {
    /// The broker these topics live on.
    pub fn broker(&self) -> &str {
        self.bootstrap.as_deref().unwrap_or_else(|| broker())
    }

    /// Fresh names containing `name`, on the shared broker.
    pub fn new(name: &str) -> Self {
        let id = ulid::Ulid::new().to_string().to_ascii_lowercase();
        Self {
            request: format!("it-{name}-{id}-req"),
            response: format!("it-{name}-{id}-resp"),
            group: format!("it-{name}-{id}-group"),
            bootstrap: None,
        }
    }
}

/// A broker of one test's own, for tests that stop or restart it.
pub struct PrivateBroker {
    /// `host:port` of its plaintext listener.
    pub addr: String,
    env: Vec<(&'static str, String)>,
    _dir: tempfile::TempDir,
}

/// Four free ports below Linux's ephemeral range (32768-60999) and apart
/// from the CI brokers' (9092-9095, 29092-29095): a broker restarted on a
/// port of that range can find it taken by some client connection's local
/// end. Each is held until all are found, so they differ.
fn free_ports() -> (u16, u16, u16, u16) {
    let mut held = Vec::new();
    for _ in 0..10_000 {
        let port = fastrand::u16(20_000..29_000);
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push((port, l));
            if held.len() == 4 {
                return (held[0].0, held[1].0, held[2].0, held[3].0);
            }
        }
    }
    panic!("no four free ports found in 20000-28999");
}

impl PrivateBroker {
    fn script(&self, cmd: &str) -> std::process::Output {
        self.script_with(cmd, &[])
    }

    fn script_with(&self, cmd: &str, extra: &[(&str, &str)]) -> std::process::Output {
        let out = Command::new(kafka_script())
            .arg(cmd)
            .env_remove("KAFKA_BOOTSTRAP_SERVERS")
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .envs(extra.iter().copied())
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/kafka");
        assert!(out.status.success(), "scripts/kafka {cmd} failed");
        out
    }

    /// Starts a broker on free ports with its state in a temp directory.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (port, controller, sasl, ssl) = free_ports();
        let env = vec![
            ("KAFKA_PORT", port.to_string()),
            ("KAFKA_CONTROLLER_PORT", controller.to_string()),
            ("KAFKA_SASL_SSL_PORT", sasl.to_string()),
            ("KAFKA_SSL_PORT", ssl.to_string()),
            ("KAFKA_STATE_DIR", dir.path().to_str().unwrap().to_string()),
        ];
        let mut b = Self {
            addr: String::new(),
            env,
            _dir: dir,
        };
        let out = b.script("start");
        b.addr = String::from_utf8_lossy(&out.stdout).trim().to_string();
        b
    }

    /// Stops the broker (from a multi-threaded runtime's worker).
    pub fn stop(&self) {
        tokio::task::block_in_place(|| self.script("stop"));
    }

    /// Stops the broker and starts it again with its data.
    pub fn restart(&self) {
        tokio::task::block_in_place(|| self.script("restart"));
    }

    /// Stops the broker and starts it again with its data, blocking the
    /// calling thread (for a thread of its own, while the test goes on)
    /// only until it accepts connections, not until it answers.
    pub fn restart_blocking(&self) {
        self.script_with("restart", &[("KAFKA_START_PROBE", "port")]);
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = Command::new(kafka_script())
            .arg("stop")
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .output();
    }
}

/// Runs Kafka's consumer-group tool against the test broker and returns its output.
pub fn group_tool(args: &[&str]) -> String {
    let out = Command::new(kafka_script())
        .arg("groups")
        .arg("--bootstrap-server")
        .arg(broker())
        .args(args)
        .output()
        .expect("run scripts/kafka groups");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Plain-text Kafka client settings for a test reading or writing `topics` directly.
pub fn kafka_settings(topics: &Topics, client_id: &str) -> kafka::Config {
    kafka::Config {
        bootstrap_servers: topics.broker().to_string(),
        request_topic: topics.request.clone(),
        response_topic: topics.response.clone(),
        timeout: Duration::from_secs(30),
        chunk_size: kafkasend::protocol::chunker::DEFAULT_CHUNK_SIZE,
        security: Default::default(),
        client_id: client_id.into(),
    }
}

/// Checks with Kafka's group tool that the group of `topics` has committed
/// every request partition up to its log end; returns the log ends.
pub fn assert_committed_to_end(topics: &Topics) -> Vec<i64> {
    let out = group_tool(&["--describe", "--group", &topics.group]);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .filter(|l| l.starts_with(&topics.group))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "{out}");
    rows.iter()
        .map(|r| {
            assert_eq!(r[3], r[4], "committed offset is not the log end: {out}");
            r[4].parse::<i64>().unwrap()
        })
        .collect()
}

/// Every record in `partition` of `topic`, from the start to the end it has
/// now, as a read_committed consumer sees them. Panics on a batch that
/// cannot be read.
pub async fn records_in(topics: &Topics, topic: &str, partition: i32) -> Vec<Record> {
    use kafkasend::kafka::record_batch::Item;
    let limit = Duration::from_secs(30);
    let settings = kafka_settings(topics, "it-reader");
    let client = kafka::connect(&settings).await.unwrap();
    let pc = client.partition(topic, partition).await.unwrap();
    let end = pc.end_offset().await.unwrap();
    let mut fetcher = kafkasend::kafka::fetcher::Fetcher::new(&settings, topic, partition);
    let mut out = Vec::new();
    let mut offset = 0;
    // An open transaction holds read_committed readers back.
    let deadline = tokio::time::Instant::now() + WAIT;
    while offset < end {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{topic}[{partition}] stays unread at offset {offset} (end {end})"
        );
        let fetched = fetcher
            .fetch(offset, Duration::from_millis(100), limit)
            .await
            .unwrap();
        for item in fetched.items {
            match item {
                Item::Record(r) => out.push(r.record),
                Item::Unreadable(u) => panic!("{topic}[{partition}]: {u:?}"),
            }
        }
        offset = fetched.next_offset;
    }
    out
}

/// Every frame on the response topic (all 3 partitions the tests create).
pub async fn response_frames(topics: &Topics) -> Vec<Frame> {
    let mut out = Vec::new();
    for p in 0..3 {
        for r in records_in(topics, &topics.response, p).await {
            let (frame, _) =
                kafkasend::protocol::wire::decode(r.value.as_deref().unwrap()).unwrap();
            out.push(frame);
        }
    }
    out
}

/// Every final response record (`End` or `Error`) on the response topic, by job.
pub async fn final_responses(topics: &Topics) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for frame in response_frames(topics).await {
        if matches!(frame.body, Body::End(_) | Body::Error(_)) {
            *out.entry(frame.job.to_string()).or_default() += 1;
        }
    }
    out
}

/// Connection facts of the broker's SASL_SSL listener, as `scripts/kafka
/// sasl-env` prints them.
#[derive(Debug)]
pub struct SaslFacts {
    /// `host:port` of the SASL_SSL listener.
    pub bootstrap: String,
    /// `host:port` of the SSL listener (TLS without SASL); brokers started
    /// before scripts/kafka had one lack it, which fails only the SSL test.
    pub ssl_bootstrap: Option<String>,
    /// PEM file of the CA that signed the broker's certificate.
    pub ca_file: String,
    /// SCRAM user (SHA-256 and SHA-512 credentials).
    pub scram_user: String,
    /// That SCRAM user's password.
    pub scram_password: String,
    /// SASL/PLAIN user.
    pub plain_user: String,
    /// That PLAIN user's password.
    pub plain_password: String,
}

/// The SASL_SSL facts of the suite's broker: from the file
/// `KAFKA_SASL_ENV_FILE` names, else from `scripts/kafka sasl-env` (same
/// `KAFKA_STATE_DIR` as the broker's). Fails, never skips, when neither
/// describes the broker at [`broker()`].
pub fn sasl_facts() -> &'static SaslFacts {
    static FACTS: OnceLock<SaslFacts> = OnceLock::new();
    FACTS.get_or_init(|| {
        let broker = broker();
        let how = "the Kafka security tests need the broker's SASL_SSL listener: run the \
            broker with scripts/kafka start (it writes $KAFKA_STATE_DIR/sasl.env), or set \
            KAFKA_SASL_ENV_FILE to a file with the lines KAFKA_PLAINTEXT_BOOTSTRAP, \
            KAFKA_SASL_SSL_BOOTSTRAP, KAFKA_SSL_BOOTSTRAP, KAFKA_SSL_CA_FILE, KAFKA_SCRAM_USERNAME, \
            KAFKA_SCRAM_PASSWORD, KAFKA_PLAIN_USERNAME, KAFKA_PLAIN_PASSWORD \
            (SCRAM user with SHA-256 and SHA-512 credentials)";
        let text = match std::env::var("KAFKA_SASL_ENV_FILE") {
            Ok(path) if !path.is_empty() => std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("KAFKA_SASL_ENV_FILE={path}: {e}; {how}")),
            _ => {
                let script = kafka_script();
                let out = Command::new(&script)
                    .arg("sasl-env")
                    .output()
                    .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
                assert!(
                    out.status.success(),
                    "scripts/kafka sasl-env failed: {}; {how}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
        };
        let get = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| panic!("no {key} in the SASL facts; {how}"))
        };
        let plaintext = get("KAFKA_PLAINTEXT_BOOTSTRAP");
        assert!(
            broker.split(',').any(|b| b.trim() == plaintext),
            "the SASL facts describe the broker at {plaintext}, but the tests use {broker}; {how}"
        );
        SaslFacts {
            bootstrap: get("KAFKA_SASL_SSL_BOOTSTRAP"),
            ssl_bootstrap: text
                .lines()
                .find_map(|l| l.strip_prefix("KAFKA_SSL_BOOTSTRAP="))
                .map(|v| v.trim().to_string()),
            ca_file: get("KAFKA_SSL_CA_FILE"),
            scram_user: get("KAFKA_SCRAM_USERNAME"),
            scram_password: get("KAFKA_SCRAM_PASSWORD"),
            plain_user: get("KAFKA_PLAIN_USERNAME"),
            plain_password: get("KAFKA_PLAIN_PASSWORD"),
        }
    })
}

/// The start record of a POST to `path` with a body, answered on partition 0
/// of `reply_topic`.
pub fn post_start(
    job: JobId,
    path: &str,
    body_len: Option<u64>,
    headers: Vec<(String, String)>,
    reply_topic: &str,
) -> Frame {
    Frame {
        job,
        seq: 0,
        body: Body::RequestStart(RequestStart {
            method: "POST".into(),
            path: path.into(),
            headers,
            body_len,
            has_body: true,
            reply_topic: reply_topic.into(),
            reply_partition: 0,
            digest: kafkasend::protocol::digest::DigestKind::Sha256,
        }),
    }
}

/// A chunk record of `job`.
pub fn chunk_record(job: JobId, seq: u32, offset: u64, data: &[u8], crc32c: u32) -> Record {
    let frame = Frame {
        job,
        seq,
        body: Body::Chunk(ChunkInfo { offset, crc32c }),
    };
    kafka::record(&frame, data, &[])
}

/// Every error reply on the response topic, by job: category and message.
pub async fn error_replies(topics: &Topics) -> BTreeMap<JobId, (ErrorCategory, String)> {
    response_frames(topics)
        .await
        .into_iter()
        .filter_map(|frame| match frame.body {
            Body::Error(e) => Some((frame.job, (e.category, e.message))),
            _ => None,
        })
        .collect()
}

/// Waits (bounded by [`WAIT`]) for the error reply to `job`.
pub async fn wait_error(topics: &Topics, job: JobId, portal: &Portal) -> (ErrorCategory, String) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(e) = error_replies(topics).await.remove(&job) {
            return e;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no error reply for job {job}; portal log:\n{}",
            portal.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
