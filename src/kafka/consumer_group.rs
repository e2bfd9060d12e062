//! Membership in a consumer group under KIP-848's consumer protocol
//! (Kafka 4.0 and later), for the portal.
//!
//! The broker computes the assignment; each `ConsumerGroupHeartbeat` says
//! which partitions this member still owns and brings back its target
//! assignment when that changed. Partitions move one by one: a member
//! gives a partition up (stops serving it, then reports it no longer
//! owned) before the broker hands it to another, and a member keeps
//! serving every partition that does not move. The broker only puts a
//! partition in a member's target once its previous owner released it, so
//! a partition in the target can be served at once.
//!
//! `State` is the state machine, pure over request and response values;
//! `ConsumerMember` sends its requests through the coordinator link the
//! classic member uses too (`group::Coordinator`), and the portal drives
//! it: `heartbeat` returns the partitions to start and to stop, `stopped`
//! reports stops done, `commit` commits with the member epoch, `leave`
//! leaves (epoch -1, or -2 for a static member, whose partitions the broker
//! keeps for it until its session runs out).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kafka_protocol::error::{ParseResponseErrorCode, ResponseError};
use kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions;
use kafka_protocol::messages::{
    ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse, FindCoordinatorRequest,
    OffsetCommitRequest, OffsetFetchRequest, TopicName,
};
use kafka_protocol::protocol::{Request, StrBytes};
use uuid::Uuid;

use crate::kafka::conn::BrokerConn;
use crate::kafka::group::{
    missing, served, Committed, Coordinator, GroupConfig, GroupError, GroupProtocol,
};
use crate::kafka::Config;

/// ConsumerGroupHeartbeat version: 1 (Kafka 4.0) is the first in which the
/// member makes up its own id, and the first a broker serves by default.
const V_HEARTBEAT: i16 = 1;
/// OffsetCommit from version 9 carries the member epoch; the broker
/// refuses older versions from members of a consumer-protocol group.
const V_OFFSET_COMMIT: i16 = 9;

/// The requests this member sends: (name, key, version).
const NEEDS: &[(&str, i16, i16)] = &[
    ("FindCoordinator", FindCoordinatorRequest::KEY, 4),
    (
        "ConsumerGroupHeartbeat",
        ConsumerGroupHeartbeatRequest::KEY,
        V_HEARTBEAT,
    ),
    ("OffsetFetch", OffsetFetchRequest::KEY, 7),
    ("OffsetCommit", OffsetCommitRequest::KEY, V_OFFSET_COMMIT),
];

/// Epoch of a member leaving for good.
const LEAVE_EPOCH: i32 = -1;
/// Epoch of a static member leaving for now: the broker keeps its
/// assignment until its session runs out, for a restart to take back.
const STATIC_LEAVE_EPOCH: i32 = -2;

/// How long UNRELEASED_INSTANCE_ID is waited out: a static member that
/// stopped without leaving (a crash) keeps its instance id until its
/// session runs out, and the broker's session is at most 60 s unless its
/// operator raised group.consumer.max.session.timeout.ms.
pub(crate) const UNRELEASED_PATIENCE: Duration = Duration::from_secs(90);

/// Heartbeat interval until the broker names one (Kafka's default).
const FIRST_INTERVAL: Duration = Duration::from_secs(5);

/// What the portal must do after a heartbeat or a stop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// Partitions to start serving now, in order.
    pub start: Vec<i32>,
    /// Partitions to stop serving; report each with `stopped` once its
    /// work is done or given up.
    pub stop: Vec<i32>,
    /// The member was fenced: `stop` holds every partition, which already
    /// belong to others, so their offsets can no longer be committed.
    pub lost: bool,
}

impl Change {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.start.is_empty() && self.stop.is_empty()
    }
}

/// The member's side of the protocol, with no I/O.
#[derive(Debug, Clone)]
pub(crate) struct State {
    /// Made up once per member (version 1 of the heartbeat), kept across
    /// rejoins as Kafka's own client does.
    member_id: String,
    /// 0 to join; the broker's epoch after.
    epoch: i32,
    /// The topic id of the partitions in `owned`.
    owned_topic: Option<Uuid>,
    /// Partitions served now, including those being stopped.
    owned: BTreeSet<i32>,
    /// Partitions told to stop and not yet reported stopped.
    stopping: BTreeSet<i32>,
    /// The latest target assignment: topic id and partitions.
    target: Option<(Uuid, BTreeSet<i32>)>,
    /// Fenced: join again with epoch 0 once every partition stopped.
    rejoin: bool,
    /// `owned` changed since the broker last heard it.
    unreported: bool,
    interval: Duration,
    /// Since when the broker answers UNRELEASED_INSTANCE_ID.
    unreleased_since: Option<Instant>,
}

impl State {
    /// A member that has not joined, with its own id.
    pub(crate) fn new(member_id: String) -> Self {
        Self {
            member_id,
            epoch: 0,
            owned_topic: None,
            owned: BTreeSet::new(),
            stopping: BTreeSet::new(),
            target: None,
            rejoin: false,
            unreported: true,
            interval: FIRST_INTERVAL,
            unreleased_since: None,
        }
    }

    /// Whether a heartbeat can be sent: not while a fenced member still
    /// serves partitions, which would join again while holding them.
    pub(crate) fn can_beat(&self) -> bool {
        !self.rejoin || self.owned.is_empty()
    }

    /// The full heartbeat: every field, so a lost request or a coordinator
    /// move never leaves the broker with a partial picture.
    pub(crate) fn request(
        &self,
        group: &GroupConfig,
        topic: &str,
    ) -> ConsumerGroupHeartbeatRequest {
        let owned = match self.owned_topic {
            Some(id) if !self.owned.is_empty() => vec![TopicPartitions::default()
                .with_topic_id(id)
                .with_partitions(self.owned.iter().copied().collect())],
            _ => Vec::new(),
        };
        ConsumerGroupHeartbeatRequest::default()
            .with_group_id(kafka_protocol::messages::GroupId(StrBytes::from_string(
                group.group_id.clone(),
            )))
            .with_member_id(StrBytes::from_string(self.member_id.clone()))
            .with_member_epoch(self.epoch)
            .with_instance_id(group.instance_id.clone().map(StrBytes::from_string))
            .with_rebalance_timeout_ms(millis(group.rebalance_timeout))
            .with_subscribed_topic_names(Some(vec![TopicName(StrBytes::from_string(
                topic.to_string(),
            ))]))
            .with_topic_partitions(Some(owned))
    }

    /// The leave heartbeat.
    pub(crate) fn leave_request(&self, group: &GroupConfig) -> ConsumerGroupHeartbeatRequest {
        let epoch = match group.instance_id {
            Some(_) => STATIC_LEAVE_EPOCH,
            None => LEAVE_EPOCH,
        };
        ConsumerGroupHeartbeatRequest::default()
            .with_group_id(kafka_protocol::messages::GroupId(StrBytes::from_string(
                group.group_id.clone(),
            )))
            .with_member_id(StrBytes::from_string(self.member_id.clone()))
            .with_member_epoch(epoch)
            .with_instance_id(group.instance_id.clone().map(StrBytes::from_string))
    }

    /// Takes in a heartbeat's answer: the new epoch and interval, the
    /// target when it changed, and what the portal must start and stop.
    /// An error leaves the member as it was, except fencing, which stops
    /// everything and joins again once that is done.
    pub(crate) fn on_response(
        &mut self,
        group: &GroupConfig,
        resp: &ConsumerGroupHeartbeatResponse,
        now: Instant,
    ) -> Result<Change, GroupError> {
        match resp.error_code.err() {
            None => {}
            Some(ResponseError::FencedMemberEpoch | ResponseError::UnknownMemberId) => {
                return Ok(self.fence());
            }
            Some(ResponseError::UnreleasedInstanceId) => {
                let since = *self.unreleased_since.get_or_insert(now);
                let waited = now.saturating_duration_since(since);
                if waited >= UNRELEASED_PATIENCE {
                    return Err(GroupError::Unreleased {
                        group: group.group_id.clone(),
                        instance_id: group.instance_id.clone().unwrap_or_default(),
                        waited_secs: waited.as_secs(),
                    });
                }
                return Err(GroupError::Kafka {
                    api: "ConsumerGroupHeartbeat",
                    error: ResponseError::UnreleasedInstanceId,
                });
            }
            Some(
                error @ (ResponseError::UnsupportedVersion
                | ResponseError::UnsupportedAssignor
                | ResponseError::InvalidRequest
                | ResponseError::InconsistentGroupProtocol),
            ) => {
                return Err(GroupError::ConsumerRefused {
                    group: group.group_id.clone(),
                    error,
                    message: resp.error_message.as_ref().map(|m| one_line(m.as_str())),
                });
            }
            Some(ResponseError::GroupMaxSizeReached) => {
                return Err(GroupError::Full {
                    group: group.group_id.clone(),
                });
            }
            Some(ResponseError::FencedInstanceId) => {
                return Err(GroupError::Fenced {
                    group: group.group_id.clone(),
                    instance_id: group.instance_id.clone().unwrap_or_default(),
                    api: "ConsumerGroupHeartbeat",
                });
            }
            Some(error) => {
                return Err(GroupError::Kafka {
                    api: "ConsumerGroupHeartbeat",
                    error,
                })
            }
        }
        self.unreleased_since = None;
        self.unreported = false;
        if let Some(id) = resp.member_id.as_ref().filter(|m| !m.is_empty()) {
            self.member_id = id.to_string();
        }
        self.epoch = resp.member_epoch;
        if let Ok(ms) = u64::try_from(resp.heartbeat_interval_ms) {
            if ms > 0 {
                self.interval = Duration::from_millis(ms);
            }
        }
        if let Some(a) = &resp.assignment {
            self.target = Some(target_of(a, self.owned_topic));
        }
        Ok(self.reconcile())
    }

    /// Compares the target with what is served: partitions to start (in
    /// the target, not served) and to stop (served, not in the target, not
    /// already stopping). A partition being stopped and assigned again is
    /// started once its stop is reported. Partitions of another topic id
    /// (the topic was deleted and made again) all stop before any of the
    /// new ones start, since the portal knows partitions by number.
    fn reconcile(&mut self) -> Change {
        let mut change = Change::default();
        if self.rejoin {
            return change;
        }
        let Some((id, target)) = &self.target else {
            return change;
        };
        let same_topic = self.owned_topic == Some(*id) || self.owned.is_empty();
        let keep: BTreeSet<i32> = if same_topic {
            target.clone()
        } else {
            BTreeSet::new()
        };
        change.stop = self
            .owned
            .iter()
            .filter(|p| !keep.contains(p) && !self.stopping.contains(p))
            .copied()
            .collect();
        self.stopping.extend(change.stop.iter().copied());
        if same_topic {
            self.owned_topic = Some(*id);
            change.start = target
                .iter()
                .filter(|p| !self.owned.contains(p))
                .copied()
                .collect();
            self.owned.extend(change.start.iter().copied());
            if !change.start.is_empty() {
                self.unreported = true;
            }
        }
        change
    }

    /// Fenced (the broker gave the partitions away): stop them all, then
    /// join again with epoch 0.
    fn fence(&mut self) -> Change {
        self.rejoin = true;
        self.target = None;
        // Those already stopping too: they are someone else's now, so their
        // jobs must be cut at once, not given the rest of their grace.
        let stop: Vec<i32> = self.owned.iter().copied().collect();
        self.stopping.extend(stop.iter().copied());
        self.finish_rejoin();
        Change {
            start: Vec::new(),
            stop,
            lost: true,
        }
    }

    fn finish_rejoin(&mut self) {
        if self.rejoin && self.owned.is_empty() {
            self.rejoin = false;
            self.epoch = 0;
            self.owned_topic = None;
            self.unreported = true;
        }
    }

    /// The portal stopped `partitions`: they are no longer owned, which the
    /// next heartbeat reports. Returns what may start now (a partition
    /// assigned again while it was stopping).
    pub(crate) fn stopped(&mut self, partitions: &[i32]) -> Change {
        for p in partitions {
            if self.owned.remove(p) {
                self.unreported = true;
            }
            self.stopping.remove(p);
        }
        if self.owned.is_empty() && !self.rejoin {
            self.owned_topic = None;
        }
        self.finish_rejoin();
        self.reconcile()
    }

    /// Forgets the membership after a leave.
    fn left(&mut self) {
        self.epoch = 0;
        self.owned.clear();
        self.stopping.clear();
        self.owned_topic = None;
        self.target = None;
        self.rejoin = false;
        self.unreported = true;
    }
}

/// The partitions of `a`: of one topic, since the member subscribes to
/// one. Should the broker ever name two ids (the topic was made again
/// while the answer was built), the one not owned now is taken, so the
/// old partitions stop.
fn target_of(
    a: &kafka_protocol::messages::consumer_group_heartbeat_response::Assignment,
    owned: Option<Uuid>,
) -> (Uuid, BTreeSet<i32>) {
    let ids: BTreeSet<Uuid> = a.topic_partitions.iter().map(|t| t.topic_id).collect();
    let id = ids
        .iter()
        .find(|i| Some(**i) != owned)
        .or_else(|| ids.iter().next())
        .copied()
        .or(owned)
        .unwrap_or(Uuid::nil());
    let parts = a
        .topic_partitions
        .iter()
        .filter(|t| t.topic_id == id)
        .flat_map(|t| t.partitions.iter().copied())
        .filter(|p| *p >= 0)
        .collect();
    (id, parts)
}

fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

/// Text from the broker as one line, bounded.
fn one_line(s: &str) -> String {
    s.chars()
        .take(300)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Settles `Auto` by asking a bootstrap broker whether it serves the
/// consumer protocol (ConsumerGroupHeartbeat version 1: Kafka 4.0 and
/// later, with the protocol enabled); checks that it does when the
/// settings ask for it. `Classic` is taken as it is.
pub async fn resolve_protocol(
    kafka: &Config,
    group: &GroupConfig,
) -> Result<GroupProtocol, GroupError> {
    let wanted = group.protocol;
    if wanted == GroupProtocol::Classic {
        return Ok(wanted);
    }
    let mut last = None;
    for addr in kafka.servers() {
        let opened =
            BrokerConn::open(&addr, &kafka.client_id, kafka.timeout, &kafka.security).await;
        let served = match opened {
            Ok(mut conn) => served(&mut conn).await,
            Err(e) => Err(e.into()),
        };
        match served {
            Ok(served) => {
                return match (missing(&served, NEEDS), wanted) {
                    (None, _) => Ok(GroupProtocol::Consumer),
                    (Some(_), GroupProtocol::Auto) => Ok(GroupProtocol::Classic),
                    (Some(e), _) => Err(GroupError::ConsumerRefused {
                        group: group.group_id.clone(),
                        error: ResponseError::UnsupportedVersion,
                        message: Some(match e {
                            GroupError::Unsupported { api, version, .. } => format!(
                                "it does not serve {api} version {version}, which needs Kafka 4.0 or later"
                            ),
                            other => other.to_string(),
                        }),
                    }),
                }
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(GroupError::Timeout("asking a broker for its API versions")))
}

/// A member of one consumer group under the consumer protocol.
pub struct ConsumerMember {
    /// The coordinator link its heartbeats go over, and its topic.
    link: Committer,
    state: State,
}

impl std::fmt::Debug for ConsumerMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerMember")
            .field("group", &self.link.coord.config().group_id)
            .field("member_id", &self.state.member_id)
            .field("epoch", &self.state.epoch)
            .finish_non_exhaustive()
    }
}

impl ConsumerMember {
    /// A member of `group` reading `topic` that has not joined yet.
    pub fn new(kafka: &Config, group: GroupConfig, topic: &str) -> Self {
        let id = Uuid::from_u128(fastrand::u128(..)).to_string();
        Self {
            link: Committer {
                coord: Coordinator::new(kafka, group, NEEDS),
                topic: topic.to_string(),
            },
            state: State::new(id),
        }
    }

    /// This member's id.
    pub fn member_id(&self) -> &str {
        &self.state.member_id
    }

    /// The member epoch; 0 before the first join.
    pub fn epoch(&self) -> i32 {
        self.state.epoch
    }

    /// The partitions served now, those being stopped included.
    pub fn owned(&self) -> Vec<i32> {
        self.state.owned.iter().copied().collect()
    }

    /// Time until the next heartbeat, as the broker asks.
    pub fn heartbeat_interval(&self) -> Duration {
        self.state.interval
    }

    /// Whether the broker should hear from this member now rather than at
    /// the next interval: what it owns changed, or it must join.
    pub fn wants_heartbeat(&self) -> bool {
        self.state.unreported && self.state.can_beat()
    }

    /// One heartbeat: joins (epoch 0) when not a member, reports what is
    /// owned, and returns what to start and stop. While a fenced member
    /// still serves partitions it sends nothing and returns no change.
    pub async fn heartbeat(&mut self) -> Result<Change, GroupError> {
        if !self.state.can_beat() {
            return Ok(Change::default());
        }
        let req = self
            .state
            .request(self.link.coord.config(), &self.link.topic);
        let resp = self
            .link
            .coord
            .call("ConsumerGroupHeartbeat", &req, V_HEARTBEAT, Duration::ZERO)
            .await?;
        if matches!(
            resp.error_code.err(),
            Some(
                ResponseError::NotCoordinator
                    | ResponseError::CoordinatorNotAvailable
                    | ResponseError::CoordinatorLoadInProgress
            )
        ) {
            let code = resp
                .error_code
                .err()
                .unwrap_or(ResponseError::NotCoordinator);
            return Err(self.link.coord.failure("ConsumerGroupHeartbeat", code));
        }
        let before = self.state.epoch;
        let change = self
            .state
            .on_response(self.link.coord.config(), &resp, Instant::now())?;
        let group = &self.link.coord.config().group_id;
        if change.lost {
            log::warn!(
                "group {group}: the coordinator fenced this member (epoch {before}); giving up partitions {:?} and joining again",
                change.stop
            );
        } else if !change.is_empty() || before != self.state.epoch {
            log::info!(
                "group {group}: epoch {}: start {:?}, stop {:?}",
                self.state.epoch,
                change.start,
                change.stop
            );
        }
        Ok(change)
    }

    /// Reports `partitions` stopped (their jobs done or given up); returns
    /// what may start now. The next heartbeat tells the broker.
    pub fn stopped(&mut self, partitions: &[i32]) -> Change {
        self.state.stopped(partitions)
    }

    /// Committed positions of `partitions`.
    pub async fn fetch_offsets(
        &mut self,
        partitions: &[i32],
    ) -> Result<std::collections::BTreeMap<i32, Committed>, GroupError> {
        self.link.fetch_offsets(partitions).await
    }

    /// Commits `offsets` (partition, next offset, metadata) with the
    /// current member epoch; STALE_MEMBER_EPOCH means try again after the
    /// next heartbeat.
    pub async fn commit(&mut self, offsets: &[(i32, i64, String)]) -> Result<(), GroupError> {
        let who = self.identity();
        self.link.commit(offsets, &who).await
    }

    /// Who this member is now, as commits name it.
    pub fn identity(&self) -> Identity {
        Identity {
            member_id: self.state.member_id.clone(),
            epoch: self.state.epoch,
        }
    }

    /// A link of its own to the coordinator for offsets, so commits and
    /// heartbeats never wait for each other.
    pub fn committer(&self) -> Committer {
        Committer {
            coord: self.link.coord.fresh(),
            topic: self.link.topic.clone(),
        }
    }

    /// The group id.
    pub fn group_id(&self) -> &str {
        &self.link.coord.config().group_id
    }

    /// The group instance id of a static member.
    pub fn instance_id(&self) -> Option<&str> {
        self.link.coord.config().instance_id.as_deref()
    }

    /// Deadline of one group request.
    pub fn request_timeout(&self) -> Duration {
        self.link.coord.op_timeout()
    }

    /// Drops the coordinator connection after a request was cut off.
    pub fn forget_coordinator(&mut self) {
        self.link.coord.forget();
    }

    /// Leaves the group: call once every partition stopped. A static member
    /// leaves with epoch -2, so the broker keeps its partitions for it until
    /// its session runs out; a dynamic one hands them over at once.
    pub async fn leave(&mut self) -> Result<(), GroupError> {
        if self.state.epoch <= 0 {
            self.state.left();
            return Ok(());
        }
        let req = self.state.leave_request(self.link.coord.config());
        let resp = self
            .link
            .coord
            .call("ConsumerGroupHeartbeat", &req, V_HEARTBEAT, Duration::ZERO)
            .await;
        self.state.left();
        let resp = resp?;
        self.link
            .coord
            .checked("ConsumerGroupHeartbeat", resp.error_code)
    }
}

/// Who commits offsets: the member id and epoch of the latest heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The member id.
    pub member_id: String,
    /// The member epoch; 0 while not a member.
    pub epoch: i32,
}

/// Fetches and commits the offsets of a consumer-protocol member over a
/// connection of its own (`ConsumerMember::committer`).
pub struct Committer {
    coord: Coordinator,
    topic: String,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer")
            .field("group", &self.coord.config().group_id)
            .finish_non_exhaustive()
    }
}

impl Committer {
    /// Committed positions of `partitions`.
    pub async fn fetch_offsets(
        &mut self,
        partitions: &[i32],
    ) -> Result<std::collections::BTreeMap<i32, Committed>, GroupError> {
        let topic = self.topic.clone();
        self.coord.fetch_offsets(&topic, partitions).await
    }

    /// Commits `offsets` (partition, next offset, metadata) as `who`. The
    /// broker answers STALE_MEMBER_EPOCH when `who` is behind the latest
    /// heartbeat: try again at the next commit.
    pub async fn commit(
        &mut self,
        offsets: &[(i32, i64, String)],
        who: &Identity,
    ) -> Result<(), GroupError> {
        if who.epoch <= 0 {
            return Err(GroupError::Kafka {
                api: "OffsetCommit",
                error: ResponseError::UnknownMemberId,
            });
        }
        let topic = self.topic.clone();
        self.coord
            .commit(&topic, offsets, &who.member_id, who.epoch, V_OFFSET_COMMIT)
            .await
    }

    /// Deadline of one request.
    pub fn request_timeout(&self) -> Duration {
        self.coord.op_timeout()
    }

    /// Drops the connection after a request was cut off.
    pub fn forget_coordinator(&mut self) {
        self.coord.forget();
    }
}

pub(crate) mod membership;

#[cfg(test)]
mod tests;
