//! Static group membership (`KAFKA_GROUP_INSTANCE_ID`, KIP-345): restarts
//! without rebalances, the hand-over when a static portal stays away, and
//! two portals given one id.

use std::collections::BTreeSet;

use crate::support::api::Servers;
use crate::support::broker::{group_tool, Topics};
use crate::support::run::{send, spawn_send, Portal};
use crate::support::wait_until;

/// Settings of a static portal on a 4-partition topic; `session` is the
/// time its place is kept after it stops.
fn static_env(servers: &Servers, id: &str, session: u64) -> Vec<(&'static str, String)> {
    let mut env = servers.plain_env();
    env.push(("KAFKA_TOPIC_PARTITIONS", "4".into()));
    env.push(("PORTAL_SESSION_TIMEOUT_SECS", session.to_string()));
    // The classic protocol's static membership; `incremental` has the
    // consumer protocol's.
    env.push(("KAFKA_GROUP_PROTOCOL", "classic".into()));
    env.push(("PORTAL_SHUTDOWN_GRACE_SECS", "10".into()));
    env.push(("KAFKA_GROUP_INSTANCE_ID", id.into()));
    env
}

/// Every generation a portal's log announces: (generation, its partitions).
fn generations(log: &str) -> Vec<(i32, Vec<i32>)> {
    log.lines()
        .filter_map(|l| {
            let rest = l.split(" generation ").nth(1)?;
            let (generation, rest) = rest.split_once(": this portal reads partitions [")?;
            let (list, _) = rest.split_once(']')?;
            let parts = list
                .split(',')
                .filter_map(|p| p.trim().parse().ok())
                .collect();
            Some((generation.parse().ok()?, parts))
        })
        .collect()
}

/// The generation a portal serves now, from its log.
fn current(portal: &Portal) -> (i32, Vec<i32>) {
    generations(&portal.log())
        .pop()
        .unwrap_or_else(|| panic!("no generation logged:\n{}", portal.log()))
}

/// Waits until `a` and `b` serve one generation between them covering all
/// four partitions; returns it with each one's partitions.
async fn settled(a: &Portal, b: &Portal) -> (i32, Vec<i32>, Vec<i32>) {
    wait_until("the two portals never shared one generation", || {
        let (ga, pa) = generations(&a.log()).pop().unwrap_or_default();
        let (gb, pb) = generations(&b.log()).pop().unwrap_or_default();
        ga == gb && pa.len() + pb.len() == 4
    })
    .await;
    let (generation, pa) = current(a);
    let (_, pb) = current(b);
    (generation, pa, pb)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_static_portal_restarted_within_the_session_timeout_takes_its_partitions_back_without_a_rebalance(
) {
    let servers = Servers::start().await;
    let topics = Topics::new("staticrestart");
    let env_a = static_env(&servers, "portal-a", 60);
    let env_b = static_env(&servers, "portal-b", 60);
    let mut a = Portal::start(&topics, &env_a);
    let b = Portal::start(&topics, &env_b);
    let (generation, parts_a, parts_b) = settled(&a, &b).await;
    // Ordered by instance id, not by the member ids the broker makes up.
    assert_eq!((parts_a.clone(), parts_b), (vec![0, 1], vec![2, 3]));
    let members = group_tool(&["--describe", "--group", &topics.group, "--members"]);
    assert!(members.contains("GROUP-INSTANCE-ID"), "{members}");
    for id in ["portal-a", "portal-b"] {
        assert!(
            members
                .lines()
                .any(|l| l.split_whitespace().nth(2) == Some(id)),
            "{id} not shown:\n{members}"
        );
    }
    let b_generations = generations(&b.log()).len();

    a.signal("TERM");
    assert_eq!(a.wait_exit().await, Some(0), "{}", a.log());
    assert!(
        a.log()
            .contains("static member 'portal-a' stays in the group"),
        "{}",
        a.log()
    );
    // Sent while portal-a is away: those on portal-b's partitions are
    // answered meanwhile, those on portal-a's once it is back.
    let clients: Vec<_> = (0..16)
        .map(|i| spawn_send(&topics, &["--endpoint", &format!("/api/away{i}")]))
        .collect();
    wait_until("portal-b answered nothing while portal-a was away", || {
        clients.iter().any(|c| c.is_finished())
    })
    .await;
    let restarted = Portal::start(&topics, &env_a);
    assert_eq!(
        current(&restarted),
        (generation, parts_a),
        "{}",
        restarted.log()
    );
    let mut paths = BTreeSet::new();
    for c in clients {
        let out = c.await.unwrap();
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    for r in servers.state.requests() {
        assert!(paths.insert(r.path.clone()), "{} called twice", r.path);
    }
    assert_eq!(paths.len(), 16, "{paths:?}");
    // portal-b never left its generation: no revocation, no pause.
    let log_b = b.log();
    assert_eq!(generations(&log_b).len(), b_generations, "{log_b}");
    assert!(!log_b.contains("rejoining"), "{log_b}");
    assert_eq!(current(&b).0, generation);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_static_portal_that_stays_away_hands_its_partitions_over_at_the_session_timeout() {
    let servers = Servers::start().await;
    let topics = Topics::new("staticaway");
    let mut a = Portal::start(&topics, &static_env(&servers, "portal-a", 6));
    let b = Portal::start(&topics, &static_env(&servers, "portal-b", 6));
    let (generation, _, _) = settled(&a, &b).await;
    a.signal("TERM");
    assert_eq!(a.wait_exit().await, Some(0), "{}", a.log());
    // No LeaveGroup: the group drops portal-a only when its session ends,
    // then portal-b serves every partition and every job is answered.
    let clients: Vec<_> = (0..8)
        .map(|i| spawn_send(&topics, &["--endpoint", &format!("/api/gone{i}")]))
        .collect();
    for c in clients {
        let out = c.await.unwrap();
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    let (later, parts) = current(&b);
    assert!(later > generation, "{}", b.log());
    assert_eq!(parts, vec![0, 1, 2, 3]);
    assert_eq!(servers.state.requests().len(), 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_portal_with_the_same_instance_id_fences_the_first_which_exits() {
    let servers = Servers::start().await;
    let topics = Topics::new("statictwin");
    let env = static_env(&servers, "twin-1", 30);
    let mut older = Portal::start(&topics, &env);
    let (generation, parts) = current(&older);
    let newer = Portal::start(&topics, &env);
    // The newer takes the place as it is: same generation, same partitions.
    assert_eq!(current(&newer), (generation, parts));
    assert_eq!(older.wait_exit().await, Some(1), "{}", older.log());
    let log = older.log();
    let last = log.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("kafkasend portal: group ")
            && last.contains("another portal joined with the same group instance id 'twin-1' (KAFKA_GROUP_INSTANCE_ID)"),
        "{log}"
    );
    // The fenced portal did not take its place back on the way out: the
    // newer one serves on in the same generation.
    let out = send(&topics, &["--endpoint", "/api/after"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let log = newer.log();
    assert!(!log.contains("FENCED_INSTANCE_ID"), "{log}");
    assert_eq!(current(&newer).0, generation, "{log}");
}
