//! Shared fixtures: the real broker, the real `kafkasend` binary, an
//! in-process target API that records what it receives, and an in-process
//! OAuth2 token endpoint.

use std::collections::HashSet;
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

/// Every wait in these tests is bounded by this: generous, because a
/// private broker restarting on a loaded 2-core machine can take a minute.
pub const WAIT: Duration = Duration::from_secs(180);

/// Waits (bounded by [`WAIT`]) until `done` holds, failing with `what`.
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts `kafkasend send ARGS` in the background.
pub fn spawn_send(topics: &Topics, args: &[&str]) -> tokio::task::JoinHandle<SendResult> {
    let topics = topics.clone();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::spawn(async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        send(&topics, &args).await
    })
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
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka");
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
    pub request: String,
    pub response: String,
    pub group: String,
    /// A broker of the test's own instead of the shared one.
    pub bootstrap: Option<String>,
}

impl Topics {
    /// The broker these topics live on.
    pub fn broker(&self) -> &str {
        self.bootstrap.as_deref().unwrap_or_else(|| broker())
    }

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

/// The `kafkasend` binary with a clean environment pointing at the broker and `topics`.
pub fn kafkasend(topics: &Topics) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kafkasend"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KAFKA_BOOTSTRAP_SERVERS", topics.broker())
        .env("KAFKA_REQUEST_TOPIC", &topics.request)
        .env("KAFKA_RESPONSE_TOPIC", &topics.response)
        .env("KAFKA_CONSUMER_GROUP", &topics.group);
    cmd
}

/// A running portal process, killed on drop.
pub struct Portal {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Portal {
    /// Starts a portal with `env` and waits until it says it is ready.
    pub fn start(topics: &Topics, env: &[(&str, String)]) -> Self {
        let mut cmd = kafkasend(topics);
        cmd.arg("portal")
            .env("PORTAL_LOG_LEVEL", "DEBUG")
            .env("KAFKA_TOPIC_PARTITIONS", "3")
            // Tests that exercise the policy set their own list.
            .env("PORTAL_ALLOWED_ENDPOINTS", "/**")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn kafkasend portal");
        let stderr = child.stderr.take().expect("portal stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let log2 = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("portal ready") {
                    let _ = ready_tx.send(());
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let mut portal = Self { child, log };
        if ready_rx.recv_timeout(WAIT).is_err() {
            let status = portal.child.try_wait().ok().flatten();
            panic!(
                "portal did not become ready (exit: {status:?}); log:\n{}",
                portal.log()
            );
        }
        portal
    }

    /// The portal's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the portal logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits (bounded) until the log contains `needle`.
    pub async fn wait_for_log(&self, needle: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.log().contains(needle) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "portal never logged {needle:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a signal (`TERM`, `KILL`, ...) to the portal process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits (bounded) for the portal to exit and returns its exit code.
    pub async fn wait_exit(&mut self) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for portal") {
                return status.code();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "portal did not exit; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A broker of one test's own, for tests that stop or restart it.
pub struct PrivateBroker {
    pub addr: String,
    env: Vec<(&'static str, String)>,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PrivateBroker {
    fn script(&self, cmd: &str) -> std::process::Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka");
        let out = Command::new(script)
            .arg(cmd)
            .env_remove("KAFKA_BOOTSTRAP_SERVERS")
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/kafka");
        assert!(out.status.success(), "scripts/kafka {cmd} failed");
        out
    }

    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (port, controller, sasl, ssl) = (free_port(), free_port(), free_port(), free_port());
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
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka");
        let _ = Command::new(script)
            .arg("stop")
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .output();
    }
}

/// Runs Kafka's consumer-group tool against the test broker and returns its output.
pub fn group_tool(args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka");
    let out = Command::new(&script)
        .arg("groups")
        .arg("--bootstrap-server")
        .arg(broker())
        .args(args)
        .output()
        .expect("run scripts/kafka groups");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Plain-text Kafka client settings for a test reading or writing `topics` directly.
pub fn kafka_settings(topics: &Topics, client_id: &str) -> kafkasend::kafka::KafkaSettings {
    kafkasend::kafka::KafkaSettings {
        bootstrap_servers: topics.broker().to_string(),
        op_timeout: Duration::from_secs(30),
        client_id: client_id.into(),
        security: Default::default(),
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
pub async fn records_in(
    topics: &Topics,
    topic: &str,
    partition: i32,
) -> Vec<kafkasend::kafka::Record> {
    use kafkasend::kafka;
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
pub async fn response_frames(topics: &Topics) -> Vec<kafkasend::protocol::wire::Frame> {
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
pub async fn final_responses(topics: &Topics) -> std::collections::BTreeMap<String, usize> {
    use kafkasend::protocol::wire::Body;
    let mut out = std::collections::BTreeMap::new();
    for frame in response_frames(topics).await {
        if matches!(frame.body, Body::End(_) | Body::Error(_)) {
            *out.entry(frame.job.to_string()).or_default() += 1;
        }
    }
    out
}

impl Drop for Portal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- portal log ----\n{}", self.log());
        }
    }
}

/// What one `kafkasend send` did.
#[derive(Debug)]
pub struct SendResult {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl SendResult {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Runs `kafkasend send ARGS` to completion, within [`WAIT`].
pub async fn send(topics: &Topics, args: &[&str]) -> SendResult {
    send_with_env(topics, &[], args).await
}

/// Runs `kafkasend send ARGS` with extra environment variables.
pub async fn send_with_env(topics: &Topics, env: &[(&str, String)], args: &[&str]) -> SendResult {
    let mut cmd = tokio::process::Command::from(kafkasend(topics));
    cmd.arg("send").args(args).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("kafkasend send did not finish in time")
        .expect("run kafkasend send");
    SendResult {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A deterministic pseudo-random byte stream (xorshift), so large bodies
/// need not be stored to be checked.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

pub fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `len` pattern bytes to a new file in `dir`; returns path and digest.
pub fn pattern_file(dir: &Path, name: &str, seed: u64, len: usize) -> (PathBuf, String) {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    let mut hasher = Sha256::new();
    let mut left = len;
    let mut block_seed = seed;
    while left > 0 {
        let n = left.min(4 << 20);
        let block = pattern(block_seed, n);
        hasher.update(&block);
        f.write_all(&block).unwrap();
        left -= n;
        block_seed = block_seed.wrapping_add(1);
    }
    (path, hex(&hasher.finalize()))
}

/// One request as the target API saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body_len: u64,
    pub body_sha256: String,
    /// For multipart requests: (field name, file name, file bytes length, file digest).
    pub parts: Vec<(String, Option<String>, u64, String)>,
    /// The status the API answered.
    pub status: u16,
}

/// State shared by the target API and the token endpoint.
#[derive(Default)]
pub struct ApiState {
    pub requests: Mutex<Vec<Recorded>>,
    /// Requests to `/slow` wait for this.
    pub release_slow: Notify,
    pub slow_released: AtomicBool,
    /// Tokens the token endpoint issued and the API accepts.
    pub valid_tokens: Mutex<HashSet<String>>,
    /// When set, the API demands a valid bearer token.
    pub require_auth: AtomicBool,
    /// Token requests received.
    pub token_fetches: AtomicU64,
    /// Lifetime stated in token responses, seconds.
    pub token_lifetime: AtomicU64,
    /// When set, the API refuses every token, as if it did not trust the issuer.
    pub reject_all_tokens: AtomicBool,
    /// Requests that arrived at `/slow` so far.
    pub slow_arrived: AtomicU64,
    /// While set, requests to `/held/...` wait before the API processes them.
    pub hold: AtomicBool,
    /// Requests waiting at the hold right now.
    pub held_now: AtomicU64,
    /// Bumped to send every waiting request away unprocessed (its caller died).
    pub abandon_generation: AtomicU64,
    /// Wakes requests waiting at the hold.
    pub wake: Notify,
    /// The status the API refuses a token with; 0 means 401.
    pub refuse_status: AtomicU16,
    /// Public key and algorithm that `private_key_jwt` assertions must verify with.
    pub assertion_key: Mutex<Option<(jsonwebtoken::DecodingKey, jsonwebtoken::Algorithm)>>,
    /// `jti` of every assertion accepted so far; a repeat is refused.
    pub seen_jti: Mutex<HashSet<String>>,
    /// Client assertions the token endpoint accepted, in order.
    pub assertions: Mutex<Vec<String>>,
    /// Why the token endpoint refused requests, in order.
    pub token_refusals: Mutex<Vec<String>>,
    /// The token endpoint's URL: the `aud` assertions must carry.
    pub token_url: Mutex<String>,
    /// What issued tokens start with, before their serial number; `token-`
    /// when unset. A test searching logs for tokens sets a distinctive one.
    pub token_prefix: Mutex<Option<String>>,
    /// When non-zero, the token endpoint refuses every request with this
    /// status and a body that repeats the request, headers included, as some
    /// endpoints do: JSON whose `error` is the `Authorization` value for 400,
    /// an OAuth error with the request in `error_description` for 401, plain
    /// text otherwise. Each body contains [`ECHO_MARKER`].
    pub echo_refusal: AtomicU16,
}

/// Text in every body the echoing token endpoint sends.
pub const ECHO_MARKER: &str = "echoed-by-the-token-endpoint";

impl ApiState {
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits (bounded) until `n` requests wait at the hold.
    pub async fn wait_held(&self, n: u64) {
        wait_until("requests did not reach the API", || {
            self.held_now.load(Ordering::SeqCst) >= n
        })
        .await;
    }

    /// Lets held requests through.
    pub fn release_hold(&self) {
        self.hold.store(false, Ordering::SeqCst);
        self.wake.notify_waiters();
    }

    /// Sends requests waiting at the hold away without processing them.
    pub fn abandon_held(&self) {
        self.abandon_generation.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_waiters();
    }

    /// Idempotency keys of the requests the API processed.
    pub fn idempotency_keys(&self) -> Vec<String> {
        self.requests()
            .iter()
            .filter_map(|r| r.headers.get("idempotency-key"))
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    pub fn release_slow(&self) {
        self.slow_released.store(true, Ordering::SeqCst);
        self.release_slow.notify_waiters();
    }
}

/// The body of a `/bytes/N?seed=S` response.
pub fn bytes_route_body(n: usize, seed: u64) -> Vec<u8> {
    pattern(seed, n)
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<BoxBody> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(body.into()).boxed())
        .unwrap()
}

async fn api(
    state: Arc<ApiState>,
    req: Request<Incoming>,
) -> Result<Response<BoxBody>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let headers = req.headers().clone();
    if path.starts_with("/held/") {
        let generation = state.abandon_generation.load(Ordering::SeqCst);
        state.held_now.fetch_add(1, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = state.wake.notified();
            if state.abandon_generation.load(Ordering::SeqCst) != generation
                || tokio::time::Instant::now() >= deadline
            {
                state.held_now.fetch_sub(1, Ordering::SeqCst);
                return Ok(text(StatusCode::SERVICE_UNAVAILABLE, "abandoned"));
            }
            if !state.hold.load(Ordering::SeqCst) {
                break;
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
        state.held_now.fetch_sub(1, Ordering::SeqCst);
    }
    let mut status = StatusCode::OK;
    if state.require_auth.load(Ordering::SeqCst) {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string);
        let ok = token.is_some_and(|t| state.valid_tokens.lock().unwrap().contains(&t));
        if !ok || state.reject_all_tokens.load(Ordering::SeqCst) {
            status = match state.refuse_status.load(Ordering::SeqCst) {
                0 => StatusCode::UNAUTHORIZED,
                s => StatusCode::from_u16(s).unwrap(),
            };
        }
    }
    if status.is_client_error() {
        // Refuse at once and drain the body in the background, as real
        // servers do: the portal sees the 401 while its first attempt is
        // still uploading, and its retry must send the whole body again.
        let mut body = req.into_body();
        tokio::spawn(async move { while let Some(Ok(_)) = body.frame().await {} });
        state.requests.lock().unwrap().push(Recorded {
            method,
            path,
            query,
            headers,
            body_len: 0,
            body_sha256: String::new(),
            parts: Vec::new(),
            status: status.as_u16(),
        });
        return Ok(text(status, "token refused"));
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut parts = Vec::new();
    let (body_len, body_sha256) =
        if content_type.starts_with("multipart/form-data") && status == StatusCode::OK {
            let boundary = multer::parse_boundary(&content_type).unwrap();
            let mut mp = multer::Multipart::new(req.into_body().into_data_stream(), boundary);
            let mut total = 0;
            while let Some(mut field) = mp.next_field().await.unwrap() {
                let name = field.name().unwrap_or("").to_string();
                let file_name = field.file_name().map(str::to_string);
                let mut h = Sha256::new();
                let mut n = 0u64;
                while let Some(chunk) = field.chunk().await.unwrap() {
                    n += chunk.len() as u64;
                    h.update(&chunk);
                }
                total += n;
                parts.push((name, file_name, n, hex(&h.finalize())));
            }
            (total, String::new())
        } else {
            let mut body = req.into_body();
            let mut h = Sha256::new();
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                // A body cut off (its sender died) is not a request the API processed.
                let Ok(frame) = frame else {
                    return Ok(text(StatusCode::BAD_REQUEST, "body cut off"));
                };
                if let Ok(d) = frame.into_data() {
                    n += d.len() as u64;
                    h.update(&d);
                }
            }
            (n, hex(&h.finalize()))
        };
    if path == "/missing" && status == StatusCode::OK {
        status = StatusCode::NOT_FOUND;
    }
    // Redirects to `/elsewhere`, which a client that followed them would
    // ask for next: `302` to a relative path, and `307` (which keeps the
    // method and body) to this API's own absolute URL.
    let redirect = match path.as_str() {
        _ if status != StatusCode::OK => None,
        "/redirect" => Some((StatusCode::FOUND, "/elsewhere".to_string())),
        "/redirect-absolute" => {
            let host = headers.get("host").expect("a request names its Host");
            let host = host.to_str().unwrap();
            Some((
                StatusCode::TEMPORARY_REDIRECT,
                format!("http://{host}/elsewhere"),
            ))
        }
        _ => None,
    };
    if let Some((code, _)) = &redirect {
        status = *code;
    }
    state.requests.lock().unwrap().push(Recorded {
        method,
        path: path.clone(),
        query: query.clone(),
        headers,
        body_len,
        body_sha256: body_sha256.clone(),
        parts,
        status: status.as_u16(),
    });
    if status == StatusCode::NOT_FOUND {
        return Ok(text(status, "no such thing here"));
    }
    if let Some((code, location)) = redirect {
        let mut reply = text(code, "moved to /elsewhere");
        reply
            .headers_mut()
            .insert("location", location.parse().unwrap());
        return Ok(reply);
    }
    if path == "/slow" {
        state.slow_arrived.fetch_add(1, Ordering::SeqCst);
        loop {
            let notified = state.release_slow.notified();
            if state.slow_released.load(Ordering::SeqCst) {
                break;
            }
            if tokio::time::timeout(WAIT, notified).await.is_err() {
                break;
            }
        }
        return Ok(text(StatusCode::OK, "slow done"));
    }
    if path == "/trickle" {
        // Some bytes now, the rest once `/slow` requests are released.
        state.slow_arrived.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        let st = Arc::clone(&state);
        tokio::spawn(async move {
            let _ = tx
                .send(Ok(Frame::data(Bytes::from(vec![b'a'; 1000]))))
                .await;
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let notified = st.release_slow.notified();
                if st.slow_released.load(Ordering::SeqCst) {
                    break;
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    break;
                }
            }
            let _ = tx
                .send(Ok(Frame::data(Bytes::from(vec![b'b'; 1000]))))
                .await;
        });
        return Ok(Response::builder()
            .header("content-type", "application/octet-stream")
            .body(StreamBody::new(RxStream(rx)).boxed())
            .unwrap());
    }
    if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        let seed = query
            .as_deref()
            .and_then(|q| q.strip_prefix("seed="))
            .and_then(|s| s.parse().ok())
            .unwrap_or(7);
        // Stream it in pieces, as a real large download would arrive.
        let body = bytes_route_body(n, seed);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        tokio::spawn(async move {
            for piece in body.chunks(100_000) {
                if tx
                    .send(Ok(Frame::data(Bytes::copy_from_slice(piece))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        let stream = RxStream(rx);
        return Ok(Response::builder()
            .header("content-type", "application/octet-stream")
            .body(StreamBody::new(stream).boxed())
            .unwrap());
    }
    let json = serde_json::json!({
        "body_bytes": body_len,
        "body_sha256": body_sha256,
        "path": path,
    });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json.to_string())).boxed())
        .unwrap())
}

struct RxStream<T>(tokio::sync::mpsc::Receiver<T>);

impl<T> futures_core::Stream for RxStream<T> {
    type Item = T;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

/// Decodes an `application/x-www-form-urlencoded` body.
pub fn form_decode(body: &str) -> std::collections::HashMap<String, String> {
    let decode = |s: &str| {
        let bytes = s.replace('+', " ").into_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            if let (b'%', Some(Ok(b))) = (bytes[i], hex.map(|h| u8::from_str_radix(h, 16))) {
                out.push(b);
                i += 3;
                continue;
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// The claims a client assertion must carry.
#[derive(serde::Deserialize)]
struct AssertionClaims {
    iss: String,
    sub: String,
    exp: u64,
    iat: u64,
    jti: String,
}

/// Checks a `private_key_jwt` token request the way an authorization server
/// would: signature with the registered public key, then every claim.
fn check_assertion(
    state: &ApiState,
    form: &std::collections::HashMap<String, String>,
) -> Result<String, String> {
    let client_id = form.get("client_id").map(String::as_str).unwrap_or("");
    if client_id != "test-client" {
        return Err(format!("unknown client_id '{client_id}'"));
    }
    if form.get("client_assertion_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    {
        return Err("wrong client_assertion_type".into());
    }
    let assertion = form.get("client_assertion").ok_or("no client_assertion")?;
    let Some((key, alg)) = state.assertion_key.lock().unwrap().clone() else {
        return Err("no key registered for private_key_jwt".into());
    };
    let mut v = jsonwebtoken::Validation::new(alg);
    v.set_audience(&[state.token_url.lock().unwrap().clone()]);
    v.set_issuer(&["test-client"]);
    v.sub = Some("test-client".into());
    v.leeway = 0;
    v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    let data = jsonwebtoken::decode::<AssertionClaims>(assertion, &key, &v)
        .map_err(|e| format!("assertion refused: {e}"))?;
    let c = data.claims;
    if c.iss != client_id || c.sub != client_id {
        return Err("iss and sub must be the client id".into());
    }
    if c.exp <= c.iat || c.exp - c.iat > 300 {
        return Err("the assertion must be short-lived".into());
    }
    if c.jti.is_empty() || !state.seen_jti.lock().unwrap().insert(c.jti.clone()) {
        return Err(format!("jti '{}' used before", c.jti));
    }
    Ok(assertion.clone())
}

async fn token_endpoint(
    state: Arc<ApiState>,
    req: Request<Incoming>,
) -> Result<Response<BoxBody>, Infallible> {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("test-client:s3cret%2Fx")
    );
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let auth_ok = authorization == expected;
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let echo = state.echo_refusal.load(Ordering::SeqCst);
    if echo != 0 {
        state.token_refusals.lock().unwrap().push("echoed".into());
        let request = format!(
            "{ECHO_MARKER}: POST /oauth/token\r\nAuthorization: {authorization}\r\n\u{1b}[2J\r\n{}",
            String::from_utf8_lossy(&body)
        );
        let answer = match echo {
            400 => serde_json::json!({"error": authorization, "request": request}).to_string(),
            401 => serde_json::json!({"error": "invalid_client", "error_description": request})
                .to_string(),
            _ => request,
        };
        return Ok(text(StatusCode::from_u16(echo).unwrap(), answer));
    }
    let form = form_decode(&String::from_utf8_lossy(&body));
    let refuse = |why: String| {
        state.token_refusals.lock().unwrap().push(why.clone());
        let json = serde_json::json!({"error": "invalid_client", "error_description": why});
        Ok(text(StatusCode::UNAUTHORIZED, json.to_string()))
    };
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return refuse("grant_type must be client_credentials".into());
    }
    if form.contains_key("client_assertion") || form.contains_key("client_assertion_type") {
        match check_assertion(&state, &form) {
            Ok(assertion) => state.assertions.lock().unwrap().push(assertion),
            Err(why) => return refuse(why),
        }
    } else if !auth_ok {
        return refuse("bad client credentials".into());
    }
    let n = state.token_fetches.fetch_add(1, Ordering::SeqCst) + 1;
    let token = match state.token_prefix.lock().unwrap().as_deref() {
        Some(prefix) => format!("{prefix}{n}"),
        None => format!("token-{n}"),
    };
    state.valid_tokens.lock().unwrap().insert(token.clone());
    let json = serde_json::json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": state.token_lifetime.load(Ordering::SeqCst),
    });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json.to_string())).boxed())
        .unwrap())
}

/// Serves `handler` on a fresh loopback port; the server lives as long as the runtime.
async fn serve<F, Fut>(state: Arc<ApiState>, handler: F) -> SocketAddr
where
    F: Fn(Arc<ApiState>, Request<Incoming>) -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<BoxBody>, Infallible>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                let svc = service_fn(move |req| handler(Arc::clone(&state), req));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// Serves `handler` over TLS (`config`) on a fresh loopback port. A failed
/// handshake closes that connection only.
async fn serve_tls<F, Fut>(
    state: Arc<ApiState>,
    handler: F,
    config: Arc<rustls::ServerConfig>,
) -> SocketAddr
where
    F: Fn(Arc<ApiState>, Request<Incoming>) -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<BoxBody>, Infallible>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let state = Arc::clone(&state);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(Ok(tls)) = tokio::time::timeout(WAIT, acceptor.accept(stream)).await else {
                    return;
                };
                let svc = service_fn(move |req| handler(Arc::clone(&state), req));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

/// A throwaway CA, made at test time, with a server certificate for
/// 127.0.0.1 and a client certificate, as PEM files in a temp directory.
pub struct TestPki {
    pub dir: tempfile::TempDir,
    pub ca_file: PathBuf,
    pub client_cert_file: PathBuf,
    pub client_key_file: PathBuf,
    ca: rustls::pki_types::CertificateDer<'static>,
    server_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    server_key_pkcs8: Vec<u8>,
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TestPki {
    pub fn new() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "KafkaSend test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().unwrap();
        let mut sp =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()]).unwrap();
        sp.distinguished_name.push(DnType::CommonName, "test API");
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = sp.signed_by(&server_key, &issuer).unwrap();

        let client_key = KeyPair::generate().unwrap();
        let mut cp = CertificateParams::new(Vec::<String>::new()).unwrap();
        cp.distinguished_name
            .push(DnType::CommonName, "kafkasend portal");
        cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = cp.signed_by(&client_key, &issuer).unwrap();

        let write = |name: &str, pem: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        Self {
            ca_file: write("ca.pem", &ca_cert.pem()),
            client_cert_file: write("client.pem", &client_cert.pem()),
            client_key_file: write("client-key.pem", &client_key.serialize_pem()),
            ca: ca_cert.der().clone(),
            server_chain: vec![server_cert.der().clone()],
            server_key_pkcs8: server_key.serialize_der(),
            dir,
        }
    }

    /// The test API's TLS settings; with `client_auth`, it demands a client
    /// certificate issued by the test CA.
    pub fn server_config(&self, client_auth: bool) -> Arc<rustls::ServerConfig> {
        let builder = rustls::ServerConfig::builder_with_provider(ring())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if client_auth {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca.clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                ring(),
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = rustls::pki_types::PrivatePkcs8KeyDer::from(self.server_key_pkcs8.clone());
        let mut config = builder
            .with_single_cert(self.server_chain.clone(), key.into())
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// A self-signed certificate for `san` made in `dir` by the usual
/// `openssl req -x509` one-liner, which marks it `CA:TRUE`: the certificate
/// file and the server TLS settings that present it.
pub fn openssl_self_signed(dir: &Path, san: &str) -> (PathBuf, Arc<rustls::ServerConfig>) {
    use rustls::pki_types::pem::PemObject;
    let stem = format!("self-signed-{}", ulid::Ulid::new());
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}-key.pem"));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=localhost",
        "-addext",
        &format!("subjectAltName={san}"),
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
    let text = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-text"]);
    assert!(
        String::from_utf8_lossy(&text).contains("CA:TRUE"),
        "openssl req -x509 made no CA:TRUE certificate; the test needs one"
    );
    let chain = vec![rustls::pki_types::CertificateDer::from_pem_file(&cert).unwrap()];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (cert, Arc::new(config))
}

#[path = "../../src/test_support.rs"]
mod test_support;
pub use test_support::{ec_key_pair, openssl, rsa_key_pair};

/// The base64 lines of a PEM file, without its `-----BEGIN/END` lines: what
/// a leaked key would show in a log, whole or in part.
pub fn pem_body_lines(pem: &str) -> Vec<String> {
    let lines: Vec<String> = pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("-----"))
        .map(str::to_string)
        .collect();
    assert!(!lines.is_empty(), "no PEM body in {pem:?}");
    lines
}

/// The target API and token endpoint of one test.
pub struct Servers {
    pub state: Arc<ApiState>,
    pub api_url: String,
    pub token_url: String,
}

impl Servers {
    pub async fn start() -> Self {
        let state = Arc::new(ApiState::default());
        state.token_lifetime.store(3600, Ordering::SeqCst);
        let api = serve(Arc::clone(&state), api).await;
        let tok = serve(Arc::clone(&state), token_endpoint).await;
        let token_url = format!("http://{tok}/oauth/token");
        *state.token_url.lock().unwrap() = token_url.clone();
        Self {
            state,
            api_url: format!("http://{api}"),
            token_url,
        }
    }

    /// Like [`Servers::start`], but the API and the token endpoint speak
    /// HTTPS with certificates from `pki`, demanding a client certificate
    /// when `client_auth`.
    pub async fn start_tls(pki: &TestPki, client_auth: bool) -> Self {
        Self::start_tls_with(pki.server_config(client_auth)).await
    }

    /// Like [`Servers::start_tls`], with the server TLS settings `config`.
    pub async fn start_tls_with(config: Arc<rustls::ServerConfig>) -> Self {
        let state = Arc::new(ApiState::default());
        state.token_lifetime.store(3600, Ordering::SeqCst);
        let api = serve_tls(Arc::clone(&state), api, Arc::clone(&config)).await;
        let tok = serve_tls(Arc::clone(&state), token_endpoint, config).await;
        let token_url = format!("https://{tok}/oauth/token");
        *state.token_url.lock().unwrap() = token_url.clone();
        Self {
            state,
            api_url: format!("https://{api}"),
            token_url,
        }
    }

    /// Portal environment with OAuth `private_key_jwt`: assertions signed with
    /// the key in `key_file`, verified by the token endpoint with `public_pem`.
    pub fn jwt_env(
        &self,
        key_file: &Path,
        public_pem: &str,
        alg: jsonwebtoken::Algorithm,
    ) -> Vec<(&'static str, String)> {
        let key = match alg {
            jsonwebtoken::Algorithm::ES256 => {
                jsonwebtoken::DecodingKey::from_ec_pem(public_pem.as_bytes())
            }
            _ => jsonwebtoken::DecodingKey::from_rsa_pem(public_pem.as_bytes()),
        }
        .unwrap();
        *self.state.assertion_key.lock().unwrap() = Some((key, alg));
        self.state.require_auth.store(true, Ordering::SeqCst);
        vec![
            ("PORTAL_TARGET_API_URL", self.api_url.clone()),
            ("PORTAL_USE_OAUTH", "true".into()),
            ("OAUTH2_TOKEN_URL", self.token_url.clone()),
            ("OAUTH2_CLIENT_ID", "test-client".into()),
            ("OAUTH2_AUTH_METHOD", "private_key_jwt".into()),
            (
                "OAUTH2_CLIENT_ASSERTION_KEY_FILE",
                key_file.to_str().unwrap().into(),
            ),
        ]
    }

    /// Portal environment without OAuth.
    pub fn plain_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("PORTAL_TARGET_API_URL", self.api_url.clone()),
            ("PORTAL_USE_OAUTH", "false".into()),
        ]
    }

    /// Portal environment with OAuth against the test token endpoint.
    pub fn oauth_env(&self) -> Vec<(&'static str, String)> {
        self.state.require_auth.store(true, Ordering::SeqCst);
        vec![
            ("PORTAL_TARGET_API_URL", self.api_url.clone()),
            ("PORTAL_USE_OAUTH", "true".into()),
            ("OAUTH2_TOKEN_URL", self.token_url.clone()),
            ("OAUTH2_CLIENT_ID", "test-client".into()),
            ("OAUTH2_CLIENT_SECRET", "s3cret/x".into()),
        ]
    }
}

/// Parses the JSON the test API answers with.
pub fn json(out: &[u8]) -> serde_json::Value {
    serde_json::from_slice(out)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(out)))
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
    pub scram_user: String,
    pub scram_password: String,
    pub plain_user: String,
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
                let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka");
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
