use std::time::{Duration, Instant};

use kafka_protocol::messages::consumer_group_heartbeat_response::{Assignment, TopicPartitions};
use kafka_protocol::messages::ConsumerGroupHeartbeatResponse;
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use super::{Change, State, UNRELEASED_PATIENCE};
use crate::kafka::group::{GroupConfig, GroupError, GroupProtocol};

const TOPIC: Uuid = Uuid::from_u128(7);

fn group(instance: Option<&str>) -> GroupConfig {
    GroupConfig {
        group_id: "g1".into(),
        instance_id: instance.map(str::to_string),
        session_timeout: Duration::from_secs(30),
        rebalance_timeout: Duration::from_secs(60),
        protocol: GroupProtocol::Consumer,
    }
}

fn answer(epoch: i32, target: Option<&[i32]>) -> ConsumerGroupHeartbeatResponse {
    answer_of(epoch, target.map(|t| vec![(TOPIC, t.to_vec())]))
}

fn answer_of(epoch: i32, target: Option<Vec<(Uuid, Vec<i32>)>>) -> ConsumerGroupHeartbeatResponse {
    ConsumerGroupHeartbeatResponse::default()
        .with_member_epoch(epoch)
        .with_heartbeat_interval_ms(2500)
        .with_assignment(target.map(|t| {
            Assignment::default().with_topic_partitions(
                t.into_iter()
                    .map(|(id, p)| {
                        TopicPartitions::default()
                            .with_topic_id(id)
                            .with_partitions(p)
                    })
                    .collect(),
            )
        }))
}

fn error(code: i16) -> ConsumerGroupHeartbeatResponse {
    ConsumerGroupHeartbeatResponse::default()
        .with_error_code(code)
        .with_error_message(Some(StrBytes::from_static_str("why\nnot")))
}

fn change(start: &[i32], stop: &[i32]) -> Change {
    Change {
        start: start.to_vec(),
        stop: stop.to_vec(),
        lost: false,
    }
}

fn apply(s: &mut State, resp: ConsumerGroupHeartbeatResponse) -> Result<Change, GroupError> {
    s.on_response(&group(None), &resp, Instant::now())
}

/// The partitions a state's next heartbeat reports owned.
fn reported(s: &State) -> Vec<i32> {
    let req = s.request(&group(None), "req");
    req.topic_partitions
        .unwrap_or_default()
        .into_iter()
        .flat_map(|t| {
            assert_eq!(t.topic_id, TOPIC);
            t.partitions
        })
        .collect()
}

#[test]
fn joining_sends_every_field_with_epoch_zero() {
    let s = State::new("m-1".into());
    let req = s.request(&group(Some("portal-1")), "api-requests");
    assert_eq!(req.member_epoch, 0);
    assert_eq!(req.member_id.as_str(), "m-1");
    assert_eq!(req.instance_id.as_deref(), Some("portal-1"));
    assert_eq!(req.rebalance_timeout_ms, 60_000);
    let topics = req.subscribed_topic_names.unwrap_or_default();
    assert_eq!(topics.len(), 1);
    assert_eq!(topics[0].0.as_str(), "api-requests");
    assert_eq!(req.topic_partitions, Some(Vec::new()));
    assert!(s.can_beat());
}

#[test]
fn partitions_move_one_by_one_and_the_rest_keep_serving() {
    let mut s = State::new("m".into());
    assert_eq!(
        apply(&mut s, answer(1, Some(&[0, 1, 2, 3]))).unwrap(),
        change(&[0, 1, 2, 3], &[])
    );
    assert_eq!(s.interval, Duration::from_millis(2500));
    assert_eq!(reported(&s), vec![0, 1, 2, 3]);
    // Another member joined: two partitions go, two stay, none restart.
    assert_eq!(
        apply(&mut s, answer(2, Some(&[0, 1]))).unwrap(),
        change(&[], &[2, 3])
    );
    // Until the portal stopped them they are still owned, and a beat
    // without a new target asks nothing again.
    assert_eq!(reported(&s), vec![0, 1, 2, 3]);
    assert_eq!(apply(&mut s, answer(2, None)).unwrap(), change(&[], &[]));
    assert_eq!(s.stopped(&[3]), change(&[], &[]));
    assert_eq!(reported(&s), vec![0, 1, 2]);
    assert!(s.unreported);
    assert_eq!(s.stopped(&[2]), change(&[], &[]));
    assert_eq!(reported(&s), vec![0, 1]);
    assert_eq!(apply(&mut s, answer(3, None)).unwrap(), change(&[], &[]));
    assert!(!s.unreported);
    assert_eq!(s.epoch, 3);
}

#[test]
fn a_partition_assigned_again_while_stopping_starts_after_its_stop() {
    let mut s = State::new("m".into());
    apply(&mut s, answer(1, Some(&[0, 1]))).unwrap();
    assert_eq!(
        apply(&mut s, answer(2, Some(&[0]))).unwrap(),
        change(&[], &[1])
    );
    // Back before the stop finished: not started twice, not stopped twice.
    assert_eq!(
        apply(&mut s, answer(3, Some(&[0, 1]))).unwrap(),
        change(&[], &[])
    );
    assert_eq!(s.stopped(&[1]), change(&[1], &[]));
    assert_eq!(reported(&s), vec![0, 1]);
}

#[test]
fn fencing_gives_up_everything_then_joins_again_at_epoch_zero() {
    for code in [110, 25] {
        let mut s = State::new("m".into());
        apply(&mut s, answer(4, Some(&[1, 2]))).unwrap();
        assert_eq!(apply(&mut s, answer(5, Some(&[1]))).unwrap().stop, vec![2]);
        let lost = apply(&mut s, error(code)).unwrap();
        // 2 was already stopping: named again, to be cut at once.
        assert_eq!(lost.stop, vec![1, 2]);
        assert!(lost.lost && lost.start.is_empty());
        // Joining while a partition is still served would let the broker
        // hand it back before it stopped.
        assert!(!s.can_beat());
        s.stopped(&[1]);
        assert!(!s.can_beat());
        assert_eq!(s.stopped(&[2]), change(&[], &[]));
        assert!(s.can_beat());
        let req = s.request(&group(None), "req");
        assert_eq!(req.member_epoch, 0);
        assert_eq!(req.member_id.as_str(), "m", "the member keeps its id");
        assert_eq!(req.topic_partitions, Some(Vec::new()));
        assert_eq!(
            apply(&mut s, answer(7, Some(&[1, 2]))).unwrap(),
            change(&[1, 2], &[])
        );
    }
}

#[test]
fn a_fenced_member_with_nothing_rejoins_at_once() {
    let mut s = State::new("m".into());
    apply(&mut s, answer(1, Some(&[]))).unwrap();
    let lost = apply(&mut s, error(110)).unwrap();
    assert!(lost.lost && lost.is_empty());
    assert!(s.can_beat() && s.unreported);
    assert_eq!(s.epoch, 0);
}

#[test]
fn errors_leave_the_member_as_it_was() {
    let mut s = State::new("m".into());
    apply(&mut s, answer(3, Some(&[0]))).unwrap();
    for code in [14, 15, 16, 7, 4242] {
        let e = apply(&mut s, error(code)).unwrap_err();
        assert!(!e.is_fatal(), "{e}");
        assert_eq!((s.epoch, reported(&s)), (3, vec![0]));
    }
    assert!(apply(&mut s, error(14)).unwrap_err().coordinator_moved());
}

#[test]
fn refusals_are_fatal_and_say_what_to_change() {
    for code in [35, 112, 42, 23] {
        let mut s = State::new("m".into());
        let e = apply(&mut s, error(code)).unwrap_err();
        assert!(e.is_fatal(), "{e}");
        let text = e.to_string();
        assert!(text.contains("KAFKA_GROUP_PROTOCOL=classic"), "{text}");
        assert!(
            text.contains("why not"),
            "the broker's message, on one line: {text}"
        );
    }
    // Another process took this static member's id while it was cut off.
    let fenced = apply(&mut State::new("m".into()), error(82)).unwrap_err();
    assert!(fenced.is_fatal() && fenced.to_string().contains("KAFKA_GROUP_INSTANCE_ID"));
    let full = apply(&mut State::new("m".into()), error(81)).unwrap_err();
    assert!(full.is_fatal() && full.to_string().contains("group.consumer.max.size"));
}

#[test]
fn an_unreleased_instance_id_is_waited_out_then_fatal() {
    let g = group(Some("portal-1"));
    let mut s = State::new("m".into());
    let t0 = Instant::now();
    let first = s.on_response(&g, &error(111), t0).unwrap_err();
    assert!(!first.is_fatal(), "{first}");
    let later = t0 + UNRELEASED_PATIENCE / 2;
    assert!(!s
        .on_response(&g, &error(111), later)
        .unwrap_err()
        .is_fatal());
    let end = t0 + UNRELEASED_PATIENCE;
    let e = s.on_response(&g, &error(111), end).unwrap_err();
    assert!(e.is_fatal());
    assert!(e.to_string().contains("'portal-1'"), "{e}");
    // A success in between starts the wait over.
    let mut s = State::new("m".into());
    s.on_response(&g, &error(111), t0).unwrap_err();
    s.on_response(&g, &answer(1, Some(&[])), later).unwrap();
    assert!(!s.on_response(&g, &error(111), end).unwrap_err().is_fatal());
}

#[test]
fn leaving_uses_the_static_epoch_for_a_static_member() {
    let s = State::new("m".into());
    assert_eq!(s.leave_request(&group(None)).member_epoch, -1);
    let req = s.leave_request(&group(Some("p1")));
    assert_eq!(req.member_epoch, -2);
    assert_eq!(req.instance_id.as_deref(), Some("p1"));
}

#[test]
fn a_topic_made_again_stops_the_old_partitions_before_the_new_start() {
    let other = Uuid::from_u128(8);
    let mut s = State::new("m".into());
    apply(&mut s, answer(1, Some(&[0, 1]))).unwrap();
    let c = apply(&mut s, answer_of(2, Some(vec![(other, vec![0, 2])]))).unwrap();
    assert_eq!(c, change(&[], &[0, 1]));
    s.stopped(&[0]);
    assert_eq!(s.stopped(&[1]), change(&[0, 2], &[]));
    let req = s.request(&group(None), "req");
    let owned = req.topic_partitions.unwrap_or_default();
    assert_eq!(owned.len(), 1);
    assert_eq!(
        (owned[0].topic_id, owned[0].partitions.clone()),
        (other, vec![0, 2])
    );
}

#[test]
fn odd_answers_do_not_panic_or_start_nonsense() {
    let mut s = State::new("m".into());
    let mut odd = answer(1, Some(&[-1, 3, 3]));
    odd.heartbeat_interval_ms = -5;
    assert_eq!(apply(&mut s, odd).unwrap(), change(&[3], &[]));
    assert_eq!(s.interval, super::FIRST_INTERVAL);
    assert_eq!(s.stopped(&[9]), change(&[], &[]));
    assert_eq!(reported(&s), vec![3]);
    // A member id the broker made (version 0 brokers do) is taken.
    let named = answer(2, None).with_member_id(Some(StrBytes::from_static_str("b-1")));
    apply(&mut s, named).unwrap();
    assert_eq!(s.member_id, "b-1");
}
