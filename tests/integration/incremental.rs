//! Portals under the consumer group protocol (KIP-848): a portal joining
//! takes only its share while the other keeps serving the rest, a portal
//! leaving hands its partitions over, and a static portal restarted gets
//! its own back with nothing else moving. Read from the portals' own
//! per-partition log lines ("reading from offset", "stopped reading").

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::api::Servers;
use crate::support::broker::{group_tool, Topics};
use crate::support::run::{send, Portal};
use crate::support::{wait_until, WAIT};

/// Whether the broker under test serves the consumer protocol (CI's
/// compatibility pass names its 3.9 broker in `KAFKA_VERSION`).
fn broker_is_kafka_4() -> bool {
    let version = std::env::var("KAFKA_VERSION").unwrap_or_else(|_| "4.1.2".into());
    version
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok())
        >= Some(4)
}

fn consumer_env(servers: &Servers, instance: Option<&str>) -> Vec<(&'static str, String)> {
    let mut env = servers.plain_env();
    env.push(("KAFKA_GROUP_PROTOCOL", "consumer".into()));
    env.push(("PORTAL_SHUTDOWN_GRACE_SECS", "20".into()));
    if let Some(id) = instance {
        env.push(("KAFKA_GROUP_INSTANCE_ID", id.into()));
    }
    env
}

/// The partitions of `topic` for which `log` has a line saying `what`
/// ("reading from offset" or "stopped reading"), in the order logged, each
/// time it was logged.
fn logged(log: &str, topic: &str, what: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for line in log.lines() {
        let Some(at) = line.find(&format!(" of {topic}: {what}")) else {
            continue;
        };
        let head = &line[..at];
        if let Some(p) = head
            .rsplit("partition ")
            .next()
            .and_then(|n| n.parse().ok())
        {
            out.push(p);
        }
    }
    out
}

/// The partitions `portal` serves now: started and not stopped since.
fn serving(portal: &Portal, topic: &str) -> BTreeSet<i32> {
    let log = portal.log();
    let mut now = BTreeSet::new();
    for line in log.lines() {
        for (what, on) in [("reading from offset", true), ("stopped reading", false)] {
            let one = logged(line, topic, what);
            for p in one {
                if on {
                    now.insert(p);
                } else {
                    now.remove(&p);
                }
            }
        }
    }
    now
}

/// Waits until the two portals serve disjoint sets covering all three
/// partitions, each at least one; returns them.
async fn split(a: &Portal, b: &Portal, topic: &str) -> (BTreeSet<i32>, BTreeSet<i32>) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (sa, sb) = (serving(a, topic), serving(b, topic));
        let all: BTreeSet<i32> = sa.union(&sb).copied().collect();
        if !sa.is_empty() && !sb.is_empty() && sa.is_disjoint(&sb) && all.len() == 3 {
            return (sa, sb);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the portals never split the partitions: a {sa:?}, b {sb:?}\na:\n{}\nb:\n{}",
            a.log(),
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn send_spread(topics: &Topics, servers: &Servers, tag: &str, n: usize) {
    let before = servers.state.requests().len();
    for i in 0..n {
        let out = send(topics, &["--endpoint", &format!("/api/{tag}{i}")]).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    assert_eq!(servers.state.requests().len(), before + n);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_portal_joining_takes_only_its_share_and_leaving_hands_it_back_while_the_other_keeps_serving(
) {
    if !broker_is_kafka_4() {
        // Kafka 3.9 has no consumer protocol; `consumer_group` checks that
        // asking for it there is refused clearly.
        return;
    }
    let servers = Servers::start().await;
    let topics = Topics::new("kip848portals");
    let env = consumer_env(&servers, None);
    let a = Portal::start(&topics, &env);
    assert!(
        a.log().contains("joining with the consumer group protocol"),
        "{}",
        a.log()
    );
    let t = &topics.request;
    wait_until("portal a never served all three partitions", || {
        serving(&a, t).len() == 3
    })
    .await;

    let mut b = Portal::start(&topics, &env);
    let (kept, moved) = split(&a, &b, t).await;
    let log_a = a.log();
    // Only what moved stopped on a, once each, and nothing started again.
    let stopped: Vec<i32> = logged(&log_a, t, "stopped reading");
    assert_eq!(
        stopped.iter().copied().collect::<BTreeSet<_>>(),
        moved,
        "{log_a}"
    );
    assert_eq!(stopped.len(), moved.len(), "{log_a}");
    assert!(log_a.contains("stopped reading (moved)"), "{log_a}");
    assert_eq!(logged(&log_a, t, "reading from offset").len(), 3, "{log_a}");
    let members = group_tool(&["--describe", "--group", &topics.group, "--members"]);
    assert_eq!(
        members
            .lines()
            .filter(|l| l.starts_with(&topics.group))
            .count(),
        2,
        "{members}"
    );
    send_spread(&topics, &servers, "both", 6).await;

    b.signal("TERM");
    assert_eq!(b.wait_exit().await, Some(0), "{}", b.log());
    assert!(b.log().contains("left group"), "{}", b.log());
    wait_until("portal a never took the partitions back", || {
        serving(&a, t).len() == 3
    })
    .await;
    let log_a = a.log();
    // The kept partitions were served throughout: never stopped.
    let stopped: BTreeSet<i32> = logged(&log_a, t, "stopped reading").into_iter().collect();
    assert!(stopped.is_disjoint(&kept), "{log_a}");
    send_spread(&topics, &servers, "back", 3).await;
    let offsets = group_tool(&["--describe", "--group", &topics.group, "--offsets"]);
    assert!(offsets.contains(t.as_str()), "{offsets}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_static_portal_restarted_gets_its_partitions_back_and_the_other_never_stops() {
    if !broker_is_kafka_4() {
        return;
    }
    let servers = Servers::start().await;
    let topics = Topics::new("kip848static");
    let t = &topics.request;
    let a = Portal::start(&topics, &consumer_env(&servers, Some("kip-a")));
    wait_until("portal a never served all three partitions", || {
        serving(&a, t).len() == 3
    })
    .await;
    let env_b = consumer_env(&servers, Some("kip-b"));
    let mut b = Portal::start(&topics, &env_b);
    let (_, of_b) = split(&a, &b, t).await;
    let a_lines = a.log().lines().count();

    b.signal("TERM");
    assert_eq!(b.wait_exit().await, Some(0), "{}", b.log());
    assert!(
        b.log().contains("static member 'kip-b' left for now"),
        "{}",
        b.log()
    );
    let b2 = Portal::start(&topics, &env_b);
    wait_until("the restarted portal never served its partitions", || {
        serving(&b2, t) == of_b
    })
    .await;
    send_spread(&topics, &servers, "static", 6).await;
    // Nothing moved on a: no partition stopped or started since b left.
    let log_a = a.log();
    let since: String = log_a.lines().skip(a_lines).collect::<Vec<_>>().join("\n");
    assert!(logged(&since, t, "stopped reading").is_empty(), "{since}");
    assert!(
        logged(&since, t, "reading from offset").is_empty(),
        "{since}"
    );
    assert_eq!(serving(&b2, t), of_b);
}
