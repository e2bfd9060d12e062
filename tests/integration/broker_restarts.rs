//! A broker restarted again and again while sends start and a portal's
//! partitions serve: every send started around a restart is answered, or
//! (only when every bootstrap server refused it for 3 s) fails with the
//! refusal, and nothing is lost or called twice.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::api::{json, Servers};
use crate::support::broker::{kafka_settings, PrivateBroker, Topics};
use crate::support::payload::pattern_file;
use crate::support::run::{spawn_send, Portal, SendResult};
use crate::support::WAIT;

/// Restarts in one run.
const ROUNDS: usize = 5;

/// Whether the broker's port accepts connections, as a client's first
/// connection attempt sees it: each change, with when it was seen.
#[derive(Clone, Default)]
struct PortWatch {
    changes: Arc<Mutex<Vec<(Instant, bool)>>>,
}

impl PortWatch {
    /// Probes `addr` every 20 ms for as long as the runtime runs.
    fn start(addr: &str) -> Self {
        let watch = Self::default();
        let (w, addr) = (watch.clone(), addr.to_string());
        tokio::spawn(async move {
            loop {
                let probe = tokio::net::TcpStream::connect(&addr);
                // Only a refusal counts as closed: it is what `send` gives up on.
                let open = !matches!(
                    tokio::time::timeout(Duration::from_millis(500), probe).await,
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
                );
                {
                    let mut changes = w.changes.lock().unwrap();
                    if changes.last().map(|c| c.1) != Some(open) {
                        changes.push((Instant::now(), open));
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        watch
    }

    fn is_open(&self) -> Option<bool> {
        self.changes.lock().unwrap().last().map(|c| c.1)
    }

    /// Waits (bounded) until the port is seen `open` (or closed).
    async fn wait_for(&self, open: bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.is_open() != Some(open) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the broker's port never became {}",
                if open { "open" } else { "closed" }
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether the port refused connections all the way from `from` to `to`.
    fn closed_throughout(&self, from: Instant, to: Instant) -> bool {
        let changes = self.changes.lock().unwrap();
        let before = changes.iter().rev().find(|c| c.0 <= from);
        before.is_some_and(|c| !c.1) && !changes.iter().any(|c| c.0 > from && c.0 <= to)
    }

    /// How many times the port was seen to close.
    fn closures(&self) -> usize {
        self.changes.lock().unwrap().iter().filter(|c| !c.1).count()
    }
}

/// Waits (bounded) until the broker answers and every partition of both
/// topics has a leader again: the restart script returns as soon as the
/// broker listens, and restarting it again before it serves would keep
/// the cluster away for longer than any deadline.
async fn wait_for_leaders(topics: &Topics) {
    let settings = kafka_settings(topics, "it-restart-probe");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ready = async {
            let cluster = kafkasend::kafka::connect(&settings).await?;
            for topic in [&topics.request, &topics.response] {
                for p in 0..3 {
                    cluster.partition(topic, p).await?.end_offset().await?;
                }
            }
            Ok::<_, kafkasend::kafka::KafkaError>(())
        };
        let Err(e) = ready.await else {
            return;
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broker did not serve again: {e}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One send, as launched.
struct Launched {
    endpoint: String,
    /// The body's file and SHA-256, for sends that upload one.
    body: Option<(PathBuf, String)>,
    started: Instant,
    out: tokio::task::JoinHandle<SendResult>,
}

#[tokio::test(flavor = "multi_thread")]
async fn sends_and_portal_partitions_ride_out_repeated_broker_restarts() {
    let kafka = Arc::new(PrivateBroker::start());
    let servers = Servers::start().await;
    let mut topics = Topics::new("restarts");
    topics.bootstrap = Some(kafka.addr.clone());
    let mut env = servers.plain_env();
    env.push(("PORTAL_SESSION_TIMEOUT_SECS", "6".into()));
    env.push(("PORTAL_SHUTDOWN_GRACE_SECS", "20".into()));
    env.push(("PORTAL_MAX_CONCURRENT_JOBS", "64".into()));
    let portal = Portal::start(&topics, &env);
    let watch = PortWatch::start(&kafka.addr);
    watch.wait_for(true).await;

    // Every fourth send uploads a body of two chunks, through the produce window.
    let dir = tempfile::tempdir().unwrap();
    let upload = pattern_file(dir.path(), "upload.bin", 77, 1_200_000);
    let mut launched: Vec<Launched> = Vec::new();
    let launch = |round: usize, launched: &mut Vec<Launched>| {
        let n = launched.len();
        let endpoint = format!("/api/round{round}/send{n}");
        let body = (n % 4 == 0).then(|| upload.clone());
        let path = body.as_ref().map(|(file, _)| file.to_str().unwrap());
        let mut args = vec!["--endpoint", endpoint.as_str()];
        args.extend(path);
        launched.push(Launched {
            started: Instant::now(),
            out: spawn_send(&topics, &args),
            endpoint: endpoint.clone(),
            body,
        });
    };

    for round in 0..ROUNDS {
        launch(round, &mut launched);
        tokio::time::sleep(Duration::from_millis(50)).await;
        launch(round, &mut launched);
        let broker = Arc::clone(&kafka);
        let restarting = std::thread::spawn(move || broker.restart_blocking());
        // While the broker shuts down it still answers, and its metadata
        // may name no leader: the window the issue saw sends fail in.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            launch(round, &mut launched);
        }
        watch.wait_for(false).await;
        // Down: a send that meets nothing but refusals for 3 s gives up.
        while watch.is_open() == Some(false) {
            launch(round, &mut launched);
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if watch.is_open() == Some(true) {
                    break;
                }
            }
        }
        // Back: the partitions' leaders are being elected.
        let back = tokio::time::Instant::now();
        for at in [0, 50, 100, 200, 400, 800] {
            tokio::time::sleep_until(back + Duration::from_millis(at)).await;
            launch(round, &mut launched);
        }
        let joined =
            tokio::time::timeout(WAIT, tokio::task::spawn_blocking(move || restarting.join()))
                .await
                .expect("the broker restart did not finish in time")
                .unwrap();
        assert!(joined.is_ok(), "scripts/kafka restart failed");
        wait_for_leaders(&topics).await;
    }
    assert_eq!(
        watch.closures(),
        ROUNDS,
        "the broker went down once a round"
    );

    let (mut answered, mut refused) = (Vec::new(), Vec::new());
    for job in launched {
        let out = job.out.await.unwrap();
        let at = job.started;
        match out.code {
            0 => {
                let reply = json(&out.stdout);
                assert_eq!(reply["path"], job.endpoint.as_str(), "{}", out.stderr);
                match &job.body {
                    Some((_, digest)) => {
                        assert_eq!(reply["body_sha256"], digest.as_str(), "{}", job.endpoint)
                    }
                    None => assert_eq!(reply["body_bytes"], 0, "{}", job.endpoint),
                }
                answered.push(job.endpoint);
            }
            7 => {
                assert!(
                    out.stderr.contains("connection refused for")
                        && out.stderr.contains(&kafka.addr),
                    "{} failed otherwise than on refusals at its start: {}",
                    job.endpoint,
                    out.stderr
                );
                // It made its first attempt within 1.5 s of starting, and
                // gave up 3 s later: the port refused all that time.
                assert!(
                    watch.closed_throughout(
                        at + Duration::from_millis(1500),
                        at + Duration::from_millis(2500)
                    ),
                    "{} gave up on refusals, but the broker listened within 3 s of its start: {}",
                    job.endpoint,
                    out.stderr
                );
                refused.push(job.endpoint);
            }
            code => panic!(
                "{} exited {code}: {}\nportal log:\n{}",
                job.endpoint,
                out.stderr,
                portal.log()
            ),
        }
    }
    // Nothing lost, nothing twice: the API saw each answered send once and
    // none of the refused ones.
    let mut calls: BTreeMap<String, usize> = BTreeMap::new();
    for r in servers.state.requests() {
        *calls.entry(r.path).or_default() += 1;
    }
    for endpoint in &answered {
        assert_eq!(calls.remove(endpoint), Some(1), "{endpoint}");
    }
    assert!(calls.is_empty(), "calls no answered send made: {calls:?}");
    assert!(!portal.log().contains("panicked"), "{}", portal.log());
    eprintln!(
        "broker restarts: {} sends answered, {} refused at their start",
        answered.len(),
        refused.len()
    );
}
