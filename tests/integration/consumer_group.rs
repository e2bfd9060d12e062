//! The consumer group protocol of KIP-848 (`kafka::consumer_group`)
//! against the real broker: the broker's assignment, partitions moving one
//! by one while the rest keep serving, leaving, static members, and the
//! choice of protocol from the broker's ApiVersions.

use std::collections::BTreeSet;
use std::time::Duration;

use kafkasend::kafka::consumer_group::{resolve_protocol, ConsumerMember};
use kafkasend::kafka::group::{GroupConfig, GroupProtocol};
use kafkasend::kafka::{self};

use crate::support::broker::{group_tool, kafka_settings, Topics};
use crate::support::WAIT;

/// Whether the broker under test serves the consumer protocol: Kafka 4.0
/// and later (CI's compatibility pass names its 3.9 broker in
/// `KAFKA_VERSION`; scripts/kafka's default is 4.1).
fn broker_is_kafka_4() -> bool {
    let version = std::env::var("KAFKA_VERSION").unwrap_or_else(|_| "4.1.2".into());
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("KAFKA_VERSION={version} is not a version"));
    major >= 4
}

fn group(topics: &Topics, instance: Option<&str>, protocol: GroupProtocol) -> GroupConfig {
    GroupConfig {
        group_id: topics.group.clone(),
        instance_id: instance.map(str::to_string),
        session_timeout: Duration::from_secs(30),
        rebalance_timeout: Duration::from_secs(30),
        protocol,
    }
}

/// A member as a portal drives it: what it serves, and every start and
/// stop the member asked for.
struct Driven {
    member: ConsumerMember,
    serving: BTreeSet<i32>,
    started: Vec<i32>,
    stopped: Vec<i32>,
}

impl Driven {
    fn new(topics: &Topics, instance: Option<&str>) -> Self {
        Self::with(group(topics, instance, GroupProtocol::Consumer), topics)
    }

    fn with(group: GroupConfig, topics: &Topics) -> Self {
        let kafka = kafka_settings(topics, "it-kip848");
        Self {
            member: ConsumerMember::new(&kafka, group, &topics.request),
            serving: BTreeSet::new(),
            started: Vec::new(),
            stopped: Vec::new(),
        }
    }

    /// One heartbeat; every stop is done at once, as a portal with no job
    /// in flight does. A retryable error is left for the next step.
    async fn step(&mut self) {
        let change = match self.member.heartbeat().await {
            Ok(c) => c,
            Err(e) if !e.is_fatal() => return,
            Err(e) => panic!("heartbeat failed: {e}"),
        };
        assert!(!change.lost, "member fenced");
        self.apply(change.start, change.stop);
    }

    fn apply(&mut self, start: Vec<i32>, stop: Vec<i32>) {
        for p in &start {
            assert!(self.serving.insert(*p), "partition {p} started twice");
        }
        self.started.extend(&start);
        for p in &stop {
            assert!(self.serving.remove(p), "partition {p} stopped unserved");
        }
        self.stopped.extend(&stop);
        if !stop.is_empty() {
            let next = self.member.stopped(&stop);
            self.apply(next.start, next.stop);
        }
    }
}

/// Steps every member (none of them may serve a partition another one
/// serves, at any moment) until `done`, within `WAIT`.
async fn drive(members: &mut [&mut Driven], what: &str, done: impl Fn(&[&mut Driven]) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(members) {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        for m in members.iter_mut() {
            m.step().await;
        }
        let mut seen = BTreeSet::new();
        for m in members.iter() {
            for p in &m.serving {
                assert!(seen.insert(*p), "partition {p} served by two members");
            }
        }
        if !members.iter().any(|m| m.member.wants_heartbeat()) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn topic_of_four(topics: &Topics) {
    let client = kafka::connect(&kafka_settings(topics, "it-kip848"))
        .await
        .unwrap();
    client.ensure_topic(&topics.request, 4, 1).await.unwrap();
}

fn all() -> BTreeSet<i32> {
    (0..4).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn group_protocol_auto_follows_the_brokers_api_versions() {
    let topics = Topics::new("kip848auto");
    let kafka = kafka_settings(&topics, "it-kip848");
    let resolve = |p| {
        let g = group(&topics, None, p);
        let kafka = kafka.clone();
        async move { resolve_protocol(&kafka, &g).await }
    };
    assert_eq!(
        resolve(GroupProtocol::Classic).await.unwrap(),
        GroupProtocol::Classic
    );
    if broker_is_kafka_4() {
        assert_eq!(
            resolve(GroupProtocol::Auto).await.unwrap(),
            GroupProtocol::Consumer
        );
        assert_eq!(
            resolve(GroupProtocol::Consumer).await.unwrap(),
            GroupProtocol::Consumer
        );
    } else {
        assert_eq!(
            resolve(GroupProtocol::Auto).await.unwrap(),
            GroupProtocol::Classic
        );
        let e = resolve(GroupProtocol::Consumer).await.unwrap_err();
        assert!(e.is_fatal(), "{e}");
        let text = e.to_string();
        for part in ["KAFKA_GROUP_PROTOCOL=classic", "Kafka 4.0", &topics.group] {
            assert!(text.contains(part), "{text}");
        }
        // A member of the consumer protocol says the same when it tries.
        topic_of_four(&topics).await;
        let mut m = Driven::new(&topics, None);
        let e = m.member.heartbeat().await.unwrap_err();
        assert!(e.to_string().contains("ConsumerGroupHeartbeat"), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn consumer_members_move_only_the_partitions_that_must_move() {
    if !broker_is_kafka_4() {
        // Covered for 3.9 by the test above: the member refuses clearly.
        return;
    }
    let topics = Topics::new("kip848share");
    topic_of_four(&topics).await;
    let mut a = Driven::new(&topics, None);
    drive(
        &mut [&mut a],
        "one member never got all four partitions",
        |m| m[0].serving == all(),
    )
    .await;
    assert!(a.member.epoch() > 0);
    // Offsets commit under the member epoch and read back.
    a.member.commit(&[(2, 0, "from-a".into())]).await.unwrap();
    let committed = a.member.fetch_offsets(&[2]).await.unwrap();
    assert_eq!(committed[&2].offset, Some(0));
    assert_eq!(committed[&2].metadata, "from-a");

    let mut b = Driven::new(&topics, None);
    drive(
        &mut [&mut a, &mut b],
        "the second member never got its share",
        |m| m[0].serving.len() == 2 && m[1].serving.len() == 2,
    )
    .await;
    // The first member gave up exactly what the second got, and started
    // nothing again: the other two never stopped.
    let moved: BTreeSet<i32> = a.stopped.iter().copied().collect();
    assert_eq!(moved, b.serving);
    assert_eq!(a.stopped.len(), 2, "{:?}", a.stopped);
    assert_eq!(a.started.len(), 4, "{:?}", a.started);

    // Kafka's own tool shows the group under the consumer protocol: member
    // epochs are a column only consumer-protocol groups have.
    let out = group_tool(&[
        "--describe",
        "--group",
        &topics.group,
        "--members",
        "--verbose",
    ]);
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with(&topics.group))
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(out.contains("CURRENT-EPOCH"), "{out}");
    for id in [a.member.member_id(), b.member.member_id()] {
        assert!(out.contains(id), "{id} missing:\n{out}");
    }

    // The second leaves: its partitions go back to the first, which again
    // stops nothing.
    let held = b.serving.clone();
    let stop: Vec<i32> = held.iter().copied().collect();
    b.apply(Vec::new(), stop);
    b.member.leave().await.unwrap();
    drive(
        &mut [&mut a],
        "the first member never got the partitions back",
        |m| m[0].serving == all(),
    )
    .await;
    assert_eq!(a.stopped.len(), 2);
    let back: BTreeSet<i32> = a.started[4..].iter().copied().collect();
    assert_eq!(back, held);
    a.member.leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_static_member_takes_its_partitions_back_and_its_id_is_not_shared() {
    if !broker_is_kafka_4() {
        return;
    }
    let topics = Topics::new("kip848static");
    topic_of_four(&topics).await;
    let mut first = Driven::new(&topics, Some("portal-1"));
    let mut other = Driven::new(&topics, None);
    drive(
        &mut [&mut first, &mut other],
        "the two members never shared the partitions",
        |m| m[0].serving.len() == 2 && m[1].serving.len() == 2,
    )
    .await;
    // A second member with the same instance id is refused while the
    // first holds it, and not as a fatal error yet: a crashed portal's
    // id is released when its session runs out.
    let mut twin = Driven::new(&topics, Some("portal-1"));
    let e = twin.member.heartbeat().await.unwrap_err();
    assert!(!e.is_fatal(), "{e}");
    assert!(e.to_string().contains("UNRELEASED_INSTANCE_ID"), "{e}");
    assert!(twin.serving.is_empty());

    // The static member leaves for a restart (epoch -2): its partitions
    // wait for it, and its successor gets exactly them back.
    let held = first.serving.clone();
    let other_stops = other.stopped.len();
    let stop: Vec<i32> = held.iter().copied().collect();
    first.apply(Vec::new(), stop);
    first.member.leave().await.unwrap();
    let mut restarted = Driven::new(&topics, Some("portal-1"));
    drive(
        &mut [&mut restarted, &mut other],
        "the restarted static member never got its partitions",
        |m| m[0].serving.len() == 2,
    )
    .await;
    assert_eq!(restarted.serving, held);
    assert_eq!(other.stopped.len(), other_stops, "the other member moved");
    restarted.member.leave().await.unwrap();
    other.member.leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_that_does_not_give_partitions_up_in_time_is_fenced_and_joins_again() {
    if !broker_is_kafka_4() {
        return;
    }
    let topics = Topics::new("kip848fence");
    topic_of_four(&topics).await;
    // The broker fences a member that keeps partitions it was told to give
    // up for longer than its rebalance timeout.
    let mut slow = group(&topics, None, GroupProtocol::Consumer);
    slow.rebalance_timeout = Duration::from_secs(3);
    let mut a = Driven::with(slow, &topics);
    drive(
        &mut [&mut a],
        "one member never got all four partitions",
        |m| m[0].serving == all(),
    )
    .await;
    let mut b = Driven::new(&topics, None);
    // The first member heartbeats on but never finishes its stops (a job
    // that does not end), until the broker fences it.
    let mut held_back: Vec<i32> = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    let lost = loop {
        assert!(tokio::time::Instant::now() < deadline, "never fenced");
        match a.member.heartbeat().await {
            Ok(c) if c.lost => break c,
            Ok(c) => {
                assert!(c.start.is_empty(), "{c:?}");
                held_back.extend(c.stop);
            }
            Err(e) => assert!(!e.is_fatal(), "{e}"),
        }
        b.step().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(held_back.len(), 2, "{held_back:?}");
    // Fenced: everything is given up, those still stopping named again so
    // their jobs are cut at once.
    let given_up: BTreeSet<i32> = lost.stop.iter().copied().collect();
    assert_eq!(given_up, all());
    assert_eq!(lost.stop.len(), 4, "{lost:?}");
    assert!(held_back.iter().all(|p| given_up.contains(p)));
    // Its epoch is gone: a commit is refused, not taken.
    let e = a.member.commit(&[(0, 0, "late".into())]).await.unwrap_err();
    assert!(!e.is_fatal(), "{e}");
    // It sends nothing until every partition is stopped, then joins again
    // at epoch 0 and gets a share.
    assert!(!a.member.wants_heartbeat());
    assert!(a.member.heartbeat().await.unwrap().is_empty());
    let serving: Vec<i32> = a.serving.iter().copied().collect();
    for p in serving {
        assert!(a.serving.remove(&p));
        a.member.stopped(&[p]);
    }
    assert_eq!(a.member.epoch(), 0);
    assert!(a.member.wants_heartbeat());
    drive(
        &mut [&mut a, &mut b],
        "the fenced member never joined again",
        |m| m[0].serving.len() == 2 && m[1].serving.len() == 2,
    )
    .await;
    a.member.leave().await.unwrap();
    b.member.leave().await.unwrap();
}
