//! Reading every record Kafka can hold: batches other producers compressed
//! with each codec, transactions committed and aborted, compressed topics,
//! records too large to read, and a reader that cannot move on. What
//! KafkaSend would not write itself, Kafka's own Java client writes:
//! `scripts/kafka produce`, and `testdata/TestProducer.java` for
//! transactions and odd records.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use kafkasend::kafka::{self, Compression};
use kafkasend::protocol::chunker::Chunker;
use kafkasend::protocol::wire::{self, Body, Frame, JobId};
use kafkasend::protocol::ErrorCategory;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::support::api::{bytes_route_body, json, Servers};
use crate::support::broker::{
    broker, kafka_script, kafka_settings, post_start, records_in, Topics,
};
use crate::support::payload::{hex, pattern, pattern_file, sha256_hex};
use crate::support::run::{admin_addr, get, kafkasend_cmd, sample, send, spawn_send, Portal};
use crate::support::{wait_until, WAIT};

/// The codecs Kafka has, as its tools name them.
const CODECS: [&str; 4] = ["gzip", "snappy", "lz4", "zstd"];

/// Larger than the 16 MiB a batch may hold once decompressed, and than
/// the largest fetch response a reader takes.
const TOO_LARGE: usize = 17_000_000;

/// Runs `scripts/kafka ARGS` with `input` on stdin; its stdout.
fn kafka_tool(args: &[&str], input: &str) -> String {
    let mut child = Command::new(kafka_script())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run scripts/kafka");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The console producer logs a failed send and still exits 0.
    assert!(
        out.status.success() && !stderr.contains("ERROR"),
        "scripts/kafka {args:?} failed: {stderr}"
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Creates `topic` with `partitions` and topic settings `configs` (`name=value`).
fn create_topic(topic: &str, partitions: u32, configs: &[&str]) {
    let partitions = partitions.to_string();
    let mut args = vec![
        "topics",
        "--bootstrap-server",
        broker(),
        "--create",
        "--topic",
        topic,
        "--partitions",
        &partitions,
        "--replication-factor",
        "1",
    ];
    for c in configs {
        args.extend(["--config", c]);
    }
    kafka_tool(&args, "");
}

/// Kafka's console producer writes each line of `lines` as a record,
/// compressed with `codec`.
fn console_produce(topic: &str, codec: &str, lines: &str) {
    kafka_tool(
        &[
            "produce",
            "--bootstrap-server",
            broker(),
            "--topic",
            topic,
            "--compression-codec",
            codec,
        ],
        lines,
    );
}

/// `testdata/TestProducer.java`, compiled once per test run; the classpath
/// to run it with.
fn test_producer_classpath() -> &'static str {
    static CLASSPATH: OnceLock<String> = OnceLock::new();
    CLASSPATH.get_or_init(|| {
        let out = kafka_tool(&["classpath"], "");
        let libs = out
            .lines()
            .last()
            .expect("scripts/kafka classpath printed nothing");
        let classes = Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-producer");
        std::fs::create_dir_all(&classes).unwrap();
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/TestProducer.java");
        let status = Command::new("javac")
            .arg("-cp")
            .arg(format!("{libs}/*"))
            .arg("-d")
            .arg(&classes)
            .arg(&source)
            .status()
            .expect("run javac (the tests need a JDK, as scripts/kafka does)");
        assert!(status.success(), "javac {} failed", source.display());
        format!("{libs}/*:{}", classes.display())
    })
}

/// Kafka's Java producer, writing to one partition as the test says.
struct JavaProducer {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    stderr: Arc<Mutex<String>>,
}

impl JavaProducer {
    /// Starts one with producer `settings` (`name=value`) and waits until it is ready.
    async fn start(topic: &str, partition: i32, settings: &[&str]) -> Self {
        let mut child = tokio::process::Command::new("java")
            .args(["-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"])
            .arg("-cp")
            .arg(test_producer_classpath())
            .arg("TestProducer")
            .arg(broker())
            .arg(topic)
            .arg(partition.to_string())
            .args(settings)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run java");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = err.read_to_end(&mut buf).await;
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf));
        });
        let mut p = Self {
            child,
            stdin,
            stdout,
            stderr,
        };
        p.expect("ready").await;
        p
    }

    async fn expect(&mut self, what: &str) {
        let line = tokio::time::timeout(WAIT, self.stdout.next_line())
            .await
            .expect("the Java producer did not answer in time")
            .unwrap();
        assert_eq!(
            line.as_deref(),
            Some(what),
            "Java producer; its stderr:\n{}",
            self.stderr.lock().unwrap()
        );
    }

    /// Runs one command (see the Java file) and waits until it is done.
    async fn run(&mut self, command: &str) {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
        self.expect("ok").await;
    }

    /// Writes `records` (value and headers) under `key`, each acknowledged.
    async fn send(&mut self, key: &str, records: &[Rec]) {
        for (value, headers) in records {
            let mut line = format!("send {key} {}", hex(value));
            for (name, v) in headers {
                line.push_str(&format!(" {name} {}", hex(v)));
            }
            self.run(&line).await;
        }
    }
}

impl Drop for JavaProducer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Record headers: name and value.
type Headers = Vec<(&'static str, Vec<u8>)>;

/// One record: a frame's value and its headers.
type Rec = (Vec<u8>, Headers);

/// The frames of a whole job, as `send` would write them: a `POST` to
/// `path` with `body`, answered on partition 0 of the response topic; the
/// start frame with its reply-to header.
fn job_frames(
    job: JobId,
    path: &str,
    body: &[u8],
    topics: &Topics,
) -> Vec<(Frame, Vec<u8>, Headers)> {
    let start = post_start(
        job,
        path,
        Some(body.len() as u64),
        vec![("content-type".into(), "application/octet-stream".into())],
        &topics.response,
    );
    let reply_to = wire::reply_to_header(&topics.response, 0);
    let mut out = vec![(start, Vec::new(), vec![(wire::REPLY_TO_HEADER, reply_to)])];
    let mut chunker = Chunker::new(job, 1, kafkasend::protocol::digest::DigestKind::Sha256);
    for piece in body.chunks(40_000) {
        let c = chunker.chunk(piece.to_vec());
        out.push((c.frame, c.payload, Vec::new()));
    }
    out.push((chunker.finish(), Vec::new(), Vec::new()));
    out
}

/// [`job_frames`] as record values, for the Java producer.
fn job_records(job: JobId, path: &str, body: &[u8], topics: &Topics) -> Vec<Rec> {
    job_frames(job, path, body, topics)
        .into_iter()
        .map(|(frame, payload, headers)| (wire::encode(&frame, &payload), headers))
        .collect()
}

/// Waits (bounded by [`WAIT`]) until `check` holds, failing with `what`.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A portal on one-partition topics with its admin listener; its address.
fn portal_with_admin(topics: &Topics, servers: &Servers) -> (Portal, String) {
    let mut env = servers.plain_env();
    env.push(("KAFKA_TOPIC_PARTITIONS", "1".into()));
    env.push(("PORTAL_ADMIN_LISTEN", "127.0.0.1:0".into()));
    let portal = Portal::start(topics, &env);
    let admin = admin_addr(&portal.log());
    (portal, admin)
}

/// The jobs with a final record (`End` or `Error`) on the one response partition.
async fn final_answers(topics: &Topics) -> Vec<JobId> {
    records_in(topics, &topics.response, 0)
        .await
        .iter()
        .filter_map(|r| wire::decode(r.value.as_deref()?).ok())
        .filter(|(f, _)| matches!(f.body, Body::End(_) | Body::Error(_)))
        .map(|(f, _)| f.job)
        .collect()
}

async fn metric(admin: &str, name: &str) -> Option<f64> {
    sample(&get(admin, "/metrics").await.1, name)
}

/// Waits until the API has seen a request to `path`.
async fn api_saw(servers: &Servers, path: &str) {
    wait_until(&format!("the API never saw {path}"), || {
        servers.state.requests().iter().any(|r| r.path == path)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn foreign_batches_of_every_codec_before_a_job_are_read_and_passed_over() {
    let servers = Servers::start().await;
    let topics = Topics::new("codecs");
    let (portal, admin) = portal_with_admin(&topics, &servers);
    for codec in CODECS {
        console_produce(
            &topics.request,
            codec,
            &format!("not a KafkaSend record ({codec})\n"),
        );
        let path = format!("/after/{codec}");
        let out = send(&topics, &["--endpoint", &path, "--timeout", "60"]).await;
        assert_eq!(out.code, 0, "after a {codec} batch: {}", out.stderr);
        assert_eq!(json(&out.stdout)["path"], path.as_str());
    }
    // Each was decompressed and read (a batch that cannot be is counted
    // under another reason), found not to be a KafkaSend frame, and passed over.
    let skipped = r#"kafkasend_records_skipped_total{reason="not_kafkasend"}"#;
    assert_eq!(metric(&admin, skipped).await, Some(4.0));
    let metrics = get(&admin, "/metrics").await.1;
    assert!(
        !metrics.contains(r#"reason="codec""#),
        "a batch could not be read:\n{metrics}\n{}",
        portal.log()
    );
    assert_eq!(
        portal.log().matches("; skipped").count(),
        4,
        "{}",
        portal.log()
    );
    assert_eq!(get(&admin, "/readyz").await, (200, "ready\n".to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_written_with_every_codec_are_answered() {
    let servers = Servers::start().await;
    let topics = Topics::new("written");
    let (_portal, _admin) = portal_with_admin(&topics, &servers);
    let client = kafka::connect(&kafka_settings(&topics, "it-writer"))
        .await
        .unwrap();
    let pc = client.partition(&topics.request, 0).await.unwrap();
    let mut jobs = Vec::new();
    for (n, compression) in [
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ]
    .into_iter()
    .enumerate()
    {
        let job = JobId::new();
        let path = format!("/written/{n}");
        let body = pattern(n as u64 + 1, 300_000);
        // The whole job in one batch, compressed by our own producer.
        let records = job_frames(job, &path, &body, &topics)
            .iter()
            .map(|(frame, payload, headers)| kafka::record(frame, payload, headers))
            .collect();
        pc.produce_with(records, compression).await.unwrap();
        jobs.push((job, path, sha256_hex(&body)));
    }
    for (_, path, digest) in &jobs {
        api_saw(&servers, path).await;
        let seen = servers.state.requests();
        let r = seen.iter().find(|r| &r.path == path).unwrap();
        assert_eq!(&r.body_sha256, digest, "{path}");
    }
    // The answers, read back from the reply partition.
    eventually("not every job was answered", || async {
        final_answers(&topics).await.len() == jobs.len()
    })
    .await;
    let answered = final_answers(&topics).await;
    for (job, path, _) in &jobs {
        assert!(answered.contains(job), "{path}: {answered:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn transactions_interleaved_with_jobs_are_read_committed() {
    let servers = Servers::start().await;
    let topics = Topics::new("txn");
    let (portal, admin) = portal_with_admin(&topics, &servers);
    let id = format!("transactional.id={}", topics.group);
    let mut txn = JavaProducer::start(&topics.request, 0, &[&id, "compression.type=snappy"]).await;
    // A whole job inside a transaction that is aborted later: it must never
    // reach the API.
    let aborted = JobId::new();
    let aborted_records = job_records(aborted, "/aborted", &pattern(3, 100_000), &topics);
    txn.run("begin").await;
    txn.send(&aborted.to_string(), &aborted_records[..2]).await;
    // A job sent meanwhile lands among the transaction's records (`--no-wait`
    // returns once they are written); a read_committed reader holds it
    // until the transaction ends.
    let out = send(&topics, &["--endpoint", "/plain/1", "--no-wait"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let plain = out.stdout_text().trim().to_string();
    txn.send(&aborted.to_string(), &aborted_records[2..]).await;
    assert!(
        servers.state.requests().is_empty(),
        "read past an open transaction"
    );
    txn.run("abort").await;
    let out = kafkasend_cmd(&topics, &["wait", &plain, "--timeout", "60"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(json(&out.stdout)["path"], "/plain/1");

    // The same producer's next transaction commits a job: that one runs.
    let committed = JobId::new();
    let body = pattern(4, 100_000);
    txn.run("begin").await;
    txn.send(
        &committed.to_string(),
        &job_records(committed, "/committed", &body, &topics),
    )
    .await;
    txn.run("commit").await;
    api_saw(&servers, "/committed").await;
    let out = send(&topics, &["--endpoint", "/plain/2", "--timeout", "60"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    let paths: Vec<String> = servers
        .state
        .requests()
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(paths, ["/plain/1", "/committed", "/plain/2"]);
    let committed_call = &servers.state.requests()[1];
    assert_eq!(committed_call.body_sha256, sha256_hex(&body));
    let answered = final_answers(&topics).await;
    assert!(answered.contains(&committed), "{answered:?}");
    assert!(!answered.contains(&aborted), "{answered:?}");
    // Markers and aborted records are Kafka's to drop, not unreadable.
    let metrics = get(&admin, "/metrics").await.1;
    assert!(
        !metrics.contains("records_skipped_total{"),
        "{metrics}\n{}",
        portal.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_round_trip_through_lz4_topics() {
    let servers = Servers::start().await;
    let topics = Topics::new("lz4topic");
    // The broker recompresses every batch written to these, ours included.
    create_topic(&topics.request, 3, &["compression.type=lz4"]);
    create_topic(&topics.response, 3, &["compression.type=lz4"]);
    let _portal = Portal::start(&topics, &servers.plain_env());
    let dir = tempfile::tempdir().unwrap();
    let (file, digest) = pattern_file(dir.path(), "in.bin", 5, 3_000_000);
    let out = send(
        &topics,
        &[
            file.to_str().unwrap(),
            "--endpoint",
            "/upload",
            "--timeout",
            "60",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(json(&out.stdout)["body_sha256"], digest.as_str());
    let output = dir.path().join("out.bin");
    let out = send(
        &topics,
        &[
            "--endpoint",
            "/bytes/2500000?seed=9",
            "-o",
            output.to_str().unwrap(),
            "--timeout",
            "60",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        std::fs::read(&output).unwrap(),
        bytes_route_body(2_500_000, 9)
    );
    let described = kafka_tool(
        &[
            "topics",
            "--bootstrap-server",
            broker(),
            "--describe",
            "--topic",
            &topics.response,
        ],
        "",
    );
    assert!(described.contains("compression.type=lz4"), "{described}");
}

#[tokio::test(flavor = "multi_thread")]
async fn foreign_compressed_records_on_the_reply_partition_do_not_fail_send() {
    let servers = Servers::start().await;
    let topics = Topics::new("replycodecs");
    let (_portal, _admin) = portal_with_admin(&topics, &servers);
    servers
        .state
        .hold
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("answer.json");
    let client = spawn_send(
        &topics,
        &[
            "--endpoint",
            "/held/x",
            "-o",
            output.to_str().unwrap(),
            "--json",
            "--timeout",
            "120",
        ],
    );
    servers.state.wait_held(1).await;
    // While the API holds the call, others write to the reply partition
    // ahead of the answer: Kafka's console producer, and our own producer
    // with every codec, as another job's records.
    console_produce(&topics.response, "zstd", "not a KafkaSend record\n");
    let kc = kafka::connect(&kafka_settings(&topics, "it-other"))
        .await
        .unwrap();
    let pc = kc.partition(&topics.response, 0).await.unwrap();
    let other = JobId::new();
    for compression in [
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let frame = Frame {
            job: other,
            seq: 0,
            body: Body::Error(kafkasend::protocol::Failure {
                category: ErrorCategory::Internal,
                message: "someone else's answer".into(),
            }),
        };
        pc.produce_with(vec![kafka::record(&frame, &[], &[])], compression)
            .await
            .unwrap();
    }
    servers.state.release_hold();
    let out = client.await.unwrap();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let summary = json(&out.stdout);
    assert_eq!(summary["status"], 200);
    // `wait` reads the partition from before the job: past the same records.
    assert_eq!(json(&std::fs::read(&output).unwrap())["path"], "/held/x");
    let job = summary["job"].as_str().unwrap();
    let out = kafkasend_cmd(&topics, &["wait", job, "--timeout", "60"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(json(&out.stdout)["path"], "/held/x");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_record_of_the_job_that_cannot_be_read_fails_it_clearly() {
    // No portal: the test writes the job's "answer" itself.
    let topics = Topics::new("badreply");
    create_topic(&topics.request, 1, &[]);
    create_topic(&topics.response, 1, &[]);
    let out = send(&topics, &["--endpoint", "/x", "--no-wait"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let job = out.stdout_text().trim().to_string();
    let mut java = JavaProducer::start(
        &topics.response,
        0,
        &[
            "compression.type=zstd",
            "max.request.size=20000000",
            "buffer.memory=40000000",
        ],
    )
    .await;
    // A few hundred bytes compressed, too large once decompressed.
    java.run(&format!("zeros {job} {TOO_LARGE}")).await;
    let out = kafkasend_cmd(&topics, &["wait", &job, "--timeout", "60"]).await;
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr.contains("a reply record is unreadable")
            && out.stderr.contains("more than 16 MiB once decompressed"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_batch_holding_a_start_record_gets_its_job_an_error_reply() {
    let servers = Servers::start().await;
    let topics = Topics::new("badstart");
    let (portal, admin) = portal_with_admin(&topics, &servers);
    // One gzip batch with the job's start record first, then a record too
    // large to decompress: the start record's reply-to header is still
    // legible, so the job is answered instead of left to time out.
    let mut java = JavaProducer::start(
        &topics.request,
        0,
        &[
            "compression.type=gzip",
            "max.request.size=20000000",
            "buffer.memory=40000000",
            "batch.size=30000000",
            "linger.ms=60000",
        ],
    )
    .await;
    let job = JobId::new();
    let records = job_records(job, "/never", &pattern(6, 1000), &topics);
    let (start, headers) = &records[0];
    let mut line = format!("queue {job} {}", hex(start));
    for (name, v) in headers {
        line.push_str(&format!(" {name} {}", hex(v)));
    }
    java.run(&line).await;
    java.run(&format!("queue-zeros {job} {TOO_LARGE}")).await;
    java.run("flush").await;
    let out = kafkasend_cmd(&topics, &["wait", &job.to_string(), "--timeout", "60"]).await;
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr.contains("more than 16 MiB once decompressed"),
        "{}",
        out.stderr
    );
    assert!(servers.state.requests().is_empty());
    // Both records of the batch were passed over.
    let too_large = r#"kafkasend_records_skipped_total{reason="too_large"}"#;
    assert_eq!(metric(&admin, too_large).await, Some(2.0));
    // The reader went on past it.
    let out = send(&topics, &["--endpoint", "/after", "--timeout", "60"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!portal.log().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_record_of_a_job_being_assembled_gets_an_error_reply() {
    let servers = Servers::start().await;
    let topics = Topics::new("badrequest");
    let (portal, admin) = portal_with_admin(&topics, &servers);
    let mut java = JavaProducer::start(
        &topics.request,
        0,
        &[
            "compression.type=zstd",
            "max.request.size=20000000",
            "buffer.memory=40000000",
        ],
    )
    .await;
    let job = JobId::new();
    let records = job_records(job, "/never", &pattern(6, 1000), &topics);
    // Its start record arrives, then a record of the job the portal cannot read.
    java.send(&job.to_string(), &records[..1]).await;
    java.run(&format!("zeros {job} {TOO_LARGE}")).await;
    let out = kafkasend_cmd(&topics, &["wait", &job.to_string(), "--timeout", "60"]).await;
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("a record of this request is unreadable")
            && out.stderr.contains("more than 16 MiB once decompressed"),
        "{}",
        out.stderr
    );
    assert!(servers.state.requests().is_empty());
    let too_large = r#"kafkasend_records_skipped_total{reason="too_large"}"#;
    assert_eq!(metric(&admin, too_large).await, Some(1.0));
    let log = portal.log();
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("more than 16 MiB")
            && l.contains("skipped")),
        "{log}"
    );
    // The reader went on past it.
    let out = send(&topics, &["--endpoint", "/after", "--timeout", "60"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(get(&admin, "/readyz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_that_cannot_move_on_says_so_and_its_lag_stays_true() {
    let servers = Servers::start().await;
    let topics = Topics::new("stuck");
    // The topic takes records larger than a reader takes in one response.
    create_topic(&topics.request, 1, &["max.message.bytes=20000000"]);
    let (portal, admin) = portal_with_admin(&topics, &servers);
    assert_eq!(get(&admin, "/readyz").await.0, 200);
    let mut java = JavaProducer::start(
        &topics.request,
        0,
        &["max.request.size=20000000", "buffer.memory=40000000"],
    )
    .await;
    java.run(&format!("zeros - {TOO_LARGE}")).await;
    // A job behind it, which the reader cannot reach.
    let out = send(&topics, &["--endpoint", "/behind", "--no-wait"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let job = out.stdout_text().trim().to_string();

    let readyz = Mutex::new((0, String::new()));
    eventually("/readyz kept saying ready", || async {
        let now = get(&admin, "/readyz").await;
        let stalled = now.0 == 503;
        *readyz.lock().unwrap() = now;
        stalled
    })
    .await;
    let readyz = readyz.into_inner().unwrap();
    assert!(
        readyz.1.starts_with(
            "not ready: cannot read request partitions: partition 0: no progress past offset 0"
        ) && readyz.1.contains("bytes accepted"),
        "{readyz:?}"
    );
    // The big record and the job's start record are both unread.
    let lag = r#"kafkasend_partition_lag{partition="0"}"#;
    eventually("the lag never counted the unread records", || async {
        metric(&admin, lag).await == Some(2.0)
    })
    .await;
    assert!(portal.log().contains("ERROR"), "{}", portal.log());

    // An operator deletes the record; the reader goes on and is ready again.
    let offsets = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        offsets.path(),
        format!(
            r#"{{"partitions":[{{"topic":"{}","partition":0,"offset":1}}],"version":1}}"#,
            topics.request
        ),
    )
    .unwrap();
    kafka_tool(
        &[
            "tool",
            "org.apache.kafka.tools.DeleteRecordsCommand",
            "--bootstrap-server",
            broker(),
            "--offset-json-file",
            offsets.path().to_str().unwrap(),
        ],
        "",
    );
    let out = kafkasend_cmd(&topics, &["wait", &job, "--timeout", "60"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    api_saw(&servers, "/behind").await;
    assert_eq!(get(&admin, "/readyz").await, (200, "ready\n".to_string()));
    assert_eq!(metric(&admin, lag).await, Some(0.0));
}

/// A loopback address that takes connections and never says a word, like
/// a broker host that drops packets once connected; closed on drop.
struct SilentServer {
    addr: String,
    _held: tokio::task::JoinHandle<()>,
}

impl SilentServer {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                conns.push(conn);
            }
        });
        Self { addr, _held: held }
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self._held.abort();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_first_bootstrap_server_does_not_stop_readers() {
    let silent = SilentServer::start().await;
    let servers = Servers::start().await;
    let mut topics = Topics::new("silentboot");
    // Both sides are given the silent server first.
    topics.bootstrap = Some(format!("{},{}", silent.addr, broker()));
    let (portal, admin) = portal_with_admin(&topics, &servers);
    for path in ["/first", "/second"] {
        let out = send(&topics, &["--endpoint", path, "--timeout", "90"]).await;
        assert_eq!(out.code, 0, "{}\n{}", out.stderr, portal.log());
        assert_eq!(json(&out.stdout)["path"], path);
    }
    assert_eq!(get(&admin, "/readyz").await, (200, "ready\n".to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_job_is_expired_while_another_producers_transaction_hangs() {
    let servers = Servers::start().await;
    let topics = Topics::new("hangingtxn");
    let mut env = servers.plain_env();
    env.push(("KAFKA_TOPIC_PARTITIONS", "1".into()));
    env.push(("PORTAL_ADMIN_LISTEN", "127.0.0.1:0".into()));
    env.push(("PORTAL_JOB_IDLE_TIMEOUT_SECS", "3".into()));
    let portal = Portal::start(&topics, &env);
    let admin = admin_addr(&portal.log());
    // A job whose sender wrote its start record and went quiet.
    let mut plain = JavaProducer::start(&topics.request, 0, &[]).await;
    let job = JobId::new();
    let records = job_records(job, "/abandoned", &pattern(7, 1000), &topics);
    plain.send(&job.to_string(), &records[..1]).await;
    // Then a transaction is opened after it and left hanging: the reader
    // has read all it can (up to the last stable offset), below the high
    // watermark for as long as the transaction stays open.
    let id = format!("transactional.id={}", topics.group);
    let mut txn = JavaProducer::start(&topics.request, 0, &[&id]).await;
    txn.run("begin").await;
    txn.send("foreign", &[(b"not a KafkaSend record".to_vec(), vec![])])
        .await;

    let out = kafkasend_cmd(&topics, &["wait", &job.to_string(), "--timeout", "60"]).await;
    assert_ne!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("PORTAL_JOB_IDLE_TIMEOUT_SECS"),
        "{}\n{}",
        out.stderr,
        portal.log()
    );
    // Nothing it can read is left: no lag while the transaction hangs.
    let lag = r#"kafkasend_partition_lag{partition="0"}"#;
    assert_eq!(metric(&admin, lag).await, Some(0.0));
    assert!(servers.state.requests().is_empty());
    txn.run("abort").await;
}
