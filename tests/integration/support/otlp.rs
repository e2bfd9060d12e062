//! A real OTLP/HTTP receiver on loopback: `tests/otlp_receiver.py`, which
//! decodes each export with the OpenTelemetry protocol package and writes
//! one JSON line per span. Its Python comes from the venv
//! `scripts/otlp-receiver` installs (`KAFKASEND_OTLP_PYTHON` names another).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::WAIT;

/// The receiver process, killed on drop.
pub struct Receiver {
    child: Child,
    port: u16,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    /// Starts the receiver on a fresh loopback port. Panics, naming the
    /// script that installs them, when its Python packages are missing.
    pub fn start() -> Self {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let python = std::env::var_os("KAFKASEND_OTLP_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/otlp-receiver/venv/bin/python"));
        assert!(
            python.exists(),
            "{} is missing: run scripts/otlp-receiver to install the OTLP receiver's packages",
            python.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("spans.jsonl");
        let mut child = Command::new(&python)
            .arg(root.join("tests/otlp_receiver.py"))
            .arg(&out)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut first = String::new();
            let _ = BufReader::new(stdout).read_line(&mut first);
            let _ = tx.send(first);
        });
        let first = rx
            .recv_timeout(WAIT)
            .expect("the OTLP receiver did not start");
        let port = first
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the OTLP receiver did not start: {first:?}"));
        Self {
            child,
            port,
            out,
            _dir: dir,
        }
    }

    /// The base endpoint, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far. A last line without its newline is
    /// still being written, and is left for the next look.
    pub fn spans(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .split_inclusive('\n')
            .filter_map(|l| l.strip_suffix('\n'))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits (bounded) until the spans of `trace_id` include every name in
    /// `names`, and returns them.
    pub async fn wait_for(&self, trace_id: &str, names: &[&str]) -> Vec<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let spans: Vec<_> = self
                .spans()
                .into_iter()
                .filter(|s| s["trace_id"] == trace_id)
                .collect();
            if names.iter().all(|n| spans.iter().any(|s| s["name"] == *n)) {
                return spans;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "spans {names:?} of trace {trace_id} never arrived; got {spans:#?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
