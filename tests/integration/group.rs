//! Portals as members of one consumer group: scale-out, shutdown and crashes.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::api::{json, Servers};
use crate::support::broker::{
    assert_committed_to_end, final_responses, group_tool, PrivateBroker, Topics,
};
use crate::support::payload::pattern_file;
use crate::support::run::{send, spawn_send, Portal};
use crate::support::{wait_until, WAIT};

/// Waits until Kafka's group tool shows two members sharing the three
/// request partitions; returns each member's partition count.
async fn wait_for_two_members(topics: &Topics) -> Vec<u32> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let out = group_tool(&["--describe", "--group", &topics.group, "--members"]);
        let members: Vec<u32> = out
            .lines()
            .filter(|l| l.starts_with(&topics.group))
            .filter_map(|l| l.split_whitespace().last()?.parse().ok())
            .collect();
        if members.len() == 2 && members.iter().sum::<u32>() == 3 && !members.contains(&0) {
            return members;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "group never showed two members:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Settings that make failover quick enough for a test: the classic
/// protocol, whose session timeout the portal sets (under the consumer
/// protocol the broker's, at least 45 s by default, decides).
fn fast_group(servers: &Servers) -> Vec<(&'static str, String)> {
    let mut env = servers.plain_env();
    env.push(("KAFKA_GROUP_PROTOCOL", "classic".into()));
    env.push(("PORTAL_SESSION_TIMEOUT_SECS", "6".into()));
    env.push(("PORTAL_SHUTDOWN_GRACE_SECS", "20".into()));
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn two_portals_split_the_partitions_and_the_group_tool_shows_both() {
    let servers = Servers::start().await;
    let topics = Topics::new("twoportals");
    let env = fast_group(&servers);
    let _a = Portal::start(&topics, &env);
    let _b = Portal::start(&topics, &env);
    let members = wait_for_two_members(&topics).await;
    assert_eq!(members.len(), 2);
    for i in 0..6 {
        let out = send(&topics, &["--endpoint", &format!("/api/spread{i}")]).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    assert_eq!(servers.state.requests().len(), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_jobs_in_flight_and_commits_to_the_end() {
    let servers = Servers::start().await;
    let topics = Topics::new("sigterm");
    let mut portal = Portal::start(&topics, &fast_group(&servers));
    let clients: Vec<_> = (0..3)
        .map(|_| spawn_send(&topics, &["--endpoint", "/slow"]))
        .collect();
    wait_until("slow calls never arrived", || {
        servers.state.slow_arrived.load(Ordering::SeqCst) >= 3
    })
    .await;
    portal.signal("TERM");
    portal.wait_for_log("shutting down").await;
    servers.state.release_slow();
    assert_eq!(portal.wait_exit().await, Some(0), "{}", portal.log());
    for c in clients {
        let out = c.await.unwrap();
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(out.stdout_text(), "slow done");
    }
    // Every partition committed up to its end: nothing is owed.
    let ends = assert_committed_to_end(&topics);
    assert_eq!(ends.iter().sum::<i64>(), 3, "{ends:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_a_portal_mid_upload_moves_the_job_to_the_other() {
    let servers = Servers::start().await;
    let topics = Topics::new("failover");
    let env = fast_group(&servers);
    let mut a = Portal::start(&topics, &env);
    let mut b = Portal::start(&topics, &env);
    // Both must hold partitions before the upload starts.
    wait_for_two_members(&topics).await;
    let dir = tempfile::tempdir().unwrap();
    let (file, digest) = pattern_file(dir.path(), "big.bin", 200, 200_000_000);
    let client = {
        let topics = topics.clone();
        let file = file.to_str().unwrap().to_string();
        tokio::spawn(async move { send(&topics, &[&file, "--endpoint", "/api/big"]).await })
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    let (victim, survivor) = loop {
        if a.log().contains("receiving a request") {
            break (&mut a, &mut b);
        }
        if b.log().contains("receiving a request") {
            break (&mut b, &mut a);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no portal received the upload"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let killed_at = std::time::Instant::now();
    victim.signal("KILL");
    victim.wait_exit().await;
    let out = client.await.unwrap();
    let took = killed_at.elapsed();
    assert_eq!(
        out.code,
        0,
        "{}\nsurvivor log:\n{}",
        out.stderr,
        survivor.log()
    );
    assert_eq!(json(&out.stdout)["body_sha256"], digest.as_str());
    let reqs = servers.state.requests();
    assert_eq!(reqs.len(), 1, "the API was called once");
    assert_eq!(reqs[0].body_sha256, digest);
    let finals = final_responses(&topics).await;
    assert_eq!(
        finals.values().copied().collect::<Vec<_>>(),
        vec![1],
        "{finals:?}"
    );
    eprintln!(
        "failover: job completed {:.1} s after kill -9",
        took.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_portal_restarts_and_every_job_is_answered_once() {
    let servers = Servers::start().await;
    let topics = Topics::new("restart");
    let mut env = fast_group(&servers);
    // Room for every job at once: held calls must not block the others.
    env.push(("PORTAL_MAX_CONCURRENT_JOBS", "60".into()));
    let mut portal = Portal::start(&topics, &env);
    let dir = tempfile::tempdir().unwrap();
    let sizes = [0usize, 1_000, 100_000, 1_000_000, 3_000_000];
    let jobs: Vec<(String, std::path::PathBuf, String)> = (0..50)
        .map(|i| {
            let (path, digest) = pattern_file(
                dir.path(),
                &format!("j{i}.bin"),
                500 + i as u64,
                sizes[i % 5],
            );
            // The first 20 are answered at once; the API holds the rest.
            let endpoint = if i < 20 {
                format!("/api/j{i}")
            } else {
                format!("/held/j{i}")
            };
            (endpoint, path, digest)
        })
        .collect();
    servers.state.hold.store(true, Ordering::SeqCst);
    let mut clients: Vec<_> = jobs
        .iter()
        .map(|(endpoint, path, _)| {
            spawn_send(&topics, &[path.to_str().unwrap(), "--endpoint", endpoint])
        })
        .collect();
    // The first 20 are answered before the crash; some held ones reach the API.
    let held_clients = clients.split_off(20);
    let mut results = Vec::new();
    for c in clients {
        results.push(c.await.unwrap());
    }
    servers.state.wait_held(1).await;
    // Let the periodic commit (every second) record the answered jobs, then crash.
    tokio::time::sleep(Duration::from_secs(3)).await;
    portal.signal("KILL");
    portal.wait_exit().await;
    servers.state.abandon_held();
    servers.state.release_hold();
    let _restarted = Portal::start(&topics, &env);
    for c in held_clients {
        results.push(c.await.unwrap());
    }
    for (out, (endpoint, _, digest)) in results.into_iter().zip(&jobs) {
        assert_eq!(out.code, 0, "{endpoint}: {}", out.stderr);
        assert_eq!(
            json(&out.stdout)["body_sha256"],
            digest.as_str(),
            "{endpoint}"
        );
    }
    let keys = servers.state.idempotency_keys();
    let unique: BTreeSet<&String> = keys.iter().collect();
    assert_eq!(keys.len(), 50, "every job processed once by the API");
    assert_eq!(unique.len(), 50, "no Idempotency-Key twice");
    let finals = final_responses(&topics).await;
    assert_eq!(finals.len(), 50);
    assert!(finals.values().all(|n| *n == 1), "{finals:?}");
}

/// A broker of the test's own with a portal on it, for tests that stop it.
async fn on_private_broker(name: &str) -> (PrivateBroker, Servers, Topics, Portal) {
    let kafka = PrivateBroker::start();
    let servers = Servers::start().await;
    let mut topics = Topics::new(name);
    topics.bootstrap = Some(kafka.addr.clone());
    let portal = Portal::start(&topics, &fast_group(&servers));
    (kafka, servers, topics, portal)
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_survive_a_broker_restart() {
    let (kafka, servers, topics, portal) = on_private_broker("brokerrestart").await;
    let dir = tempfile::tempdir().unwrap();
    let jobs: Vec<(String, std::path::PathBuf, String)> = (0..8)
        .map(|i| {
            let (path, digest) = pattern_file(dir.path(), &format!("r{i}.bin"), 900 + i, 2_000_000);
            (format!("/held/r{i}"), path, digest)
        })
        .collect();
    servers.state.hold.store(true, Ordering::SeqCst);
    let clients: Vec<_> = jobs
        .iter()
        .map(|(endpoint, path, _)| {
            spawn_send(&topics, &[path.to_str().unwrap(), "--endpoint", endpoint])
        })
        .collect();
    servers.state.wait_held(3).await;
    // The broker goes away with calls in flight, uploads running and
    // clients waiting, and comes back with its data.
    kafka.restart();
    servers.state.release_hold();
    for (client, (endpoint, _, digest)) in clients.into_iter().zip(&jobs) {
        let out = client.await.unwrap();
        assert_eq!(out.code, 0, "{endpoint}: {}", out.stderr);
        assert_eq!(
            json(&out.stdout)["body_sha256"],
            digest.as_str(),
            "{endpoint}"
        );
    }
    assert!(
        portal.log().contains("retrying"),
        "the portal said nothing of the outage"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_that_stays_down_gives_the_client_a_clear_error_at_its_timeout() {
    let (kafka, servers, topics, _portal) = on_private_broker("brokerdown").await;
    servers.state.hold.store(true, Ordering::SeqCst);
    let client = spawn_send(&topics, &["--endpoint", "/held/x", "--timeout", "30"]);
    servers.state.wait_held(1).await;
    kafka.stop();
    let out = client.await.unwrap();
    servers.state.release_hold();
    assert_eq!(out.code, 7, "{}", out.stderr);
    assert!(
        out.stderr.contains("Kafka broker is unreachable"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_exits_at_once() {
    let servers = Servers::start().await;
    let topics = Topics::new("twosignals");
    let mut portal = Portal::start(&topics, &fast_group(&servers));
    let client = spawn_send(&topics, &["--endpoint", "/slow", "--timeout", "5"]);
    wait_until("the slow call never arrived", || {
        servers.state.slow_arrived.load(Ordering::SeqCst) >= 1
    })
    .await;
    portal.signal("TERM");
    portal.wait_for_log("shutting down").await;
    portal.signal("INT");
    // The slow call is still held: only the second signal can end the portal.
    assert_eq!(portal.wait_exit().await, Some(130), "{}", portal.log());
    assert!(!servers.state.slow_released.load(Ordering::SeqCst));
    servers.state.release_slow();
    let _ = client.await;
}
