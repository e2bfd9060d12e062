//! The real `kafkasend` binary: `send` runs to completion, portal processes
//! with their logs, the portal's admin listener, and what `/proc` shows of
//! a process.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::broker::Topics;
use super::WAIT;

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
        Self::start_as(kafkasend(topics), &["portal"], env)
    }

    /// Starts `cmd ARGS` (the binary, or a link to it under another name)
    /// as a portal with `env` and waits until it says it is ready.
    pub fn start_as(mut cmd: Command, args: &[&str], env: &[(&str, String)]) -> Self {
        cmd.args(args)
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
    /// Exit code; -1 when a signal ended it.
    pub code: i32,
    /// Everything it wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr (lossy UTF-8).
    pub stderr: String,
}

impl SendResult {
    /// Stdout as text (lossy UTF-8).
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
    let args: Vec<&str> = std::iter::once("send")
        .chain(args.iter().copied())
        .collect();
    run_with_env(topics, env, &args).await
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

/// Runs `kafkasend ARGS` (any subcommand) to completion, within [`WAIT`].
pub async fn kafkasend_cmd(topics: &Topics, args: &[&str]) -> SendResult {
    run_with_env(topics, &[], args).await
}

/// Runs `kafkasend ARGS` with extra environment variables to completion,
/// within [`WAIT`]; the process is killed if the test gives up first.
pub async fn run_with_env(topics: &Topics, env: &[(&str, String)], args: &[&str]) -> SendResult {
    let mut cmd = tokio::process::Command::from(kafkasend(topics));
    cmd.args(args).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(WAIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("kafkasend {args:?} did not finish in time"))
        .unwrap_or_else(|e| panic!("cannot run kafkasend {args:?}: {e}"));
    SendResult {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Files under `dir` that process `pid` holds open (spool files are unlinked
/// at once, so they show only here).
pub fn open_files_under(pid: u32, dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    entries
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .count()
}

/// One plain HTTP/1.1 request to the admin listener: (status, body).
pub async fn admin_get(addr: &str, request: &str) -> (u16, String) {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        raw
    };
    let raw = tokio::time::timeout(WAIT, exchange)
        .await
        .expect("the admin listener did not answer in time");
    let text = String::from_utf8(raw).expect("admin answers are text");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_string())
}

/// `GET path` from the admin listener at `addr`: (status, body).
pub async fn get(addr: &str, path: &str) -> (u16, String) {
    admin_get(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// The address the portal logged for its admin listener.
pub fn admin_addr(log: &str) -> String {
    let line = log
        .lines()
        .find(|l| l.contains("admin listener on http://"))
        .unwrap_or_else(|| panic!("no admin listener line in:\n{log}"));
    let rest = &line[line.find("http://").unwrap() + "http://".len()..];
    rest.split(' ').next().unwrap().to_string()
}

/// The value of the sample `name` (with labels, exactly) in a metrics text.
pub fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}
