//! Membership in a Kafka consumer group, for the portal.
//!
//! rskafka has no consumer groups, so this module speaks Kafka's classic
//! group protocol itself: FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//! OffsetFetch, OffsetCommit and LeaveGroup, with `kafka-protocol` as the
//! codec and a connection of its own to the group coordinator (a
//! `broker_conn::BrokerConn`, secured like rskafka's connections). The group uses
//! protocol type `consumer` with the standard subscription and assignment
//! payloads and the `range` assignor, so Kafka's own tools show the portals
//! as members, with their partitions, committed offsets and lag.
//!
//! With a group instance id the member is static (KIP-345): every request
//! that can carry the id does, a restart within the session timeout takes
//! the member's place back without a rebalance, and the member never sends
//! LeaveGroup on shutdown (`Member::instance_id`), since a leave would hand its
//! partitions away at once and make the restart move them back.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::error::{ParseResponseErrorCode, ResponseError};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
use kafka_protocol::messages::{
    find_coordinator_request::FindCoordinatorRequest, heartbeat_request::HeartbeatRequest,
    join_group_request::JoinGroupRequest, join_group_request::JoinGroupRequestProtocol,
    leave_group_request::LeaveGroupRequest, leave_group_request::MemberIdentity,
    offset_commit_request::OffsetCommitRequest,
    offset_commit_request::OffsetCommitRequestPartition,
    offset_commit_request::OffsetCommitRequestTopic, offset_fetch_request::OffsetFetchRequest,
    offset_fetch_request::OffsetFetchRequestTopic, sync_group_request::SyncGroupRequest,
    sync_group_request::SyncGroupRequestAssignment, ConsumerProtocolAssignment,
    ConsumerProtocolSubscription, GroupId, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};

use crate::kafka::code::Named;
use crate::kafka::conn::{BrokerConn, ConnError};
use crate::kafka::Config;

/// Versions of each request this module sends; all of them are served by
/// Kafka 3.0 and later (FindCoordinator v4 came with 3.0), including 4.x,
/// which dropped many older versions.
const V_FIND_COORDINATOR: i16 = 4;
const V_JOIN: i16 = 7;
const V_SYNC: i16 = 5;
const V_HEARTBEAT: i16 = 4;
const V_OFFSET_FETCH: i16 = 7;
const V_OFFSET_COMMIT: i16 = 8;
const V_LEAVE: i16 = 5;

/// Why a group operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// The connection to a broker failed.
    #[error("group coordinator connection: {0}")]
    Io(#[from] std::io::Error),
    /// A request or response could not be encoded or decoded.
    #[error("group protocol codec: {0}")]
    Codec(String),
    /// The broker does not serve a request version we need.
    #[error("the broker does not support {api} version {version} (it serves {min}..{max}); KafkaSend needs Kafka 3.0 or later")]
    Unsupported {
        /// API name.
        api: &'static str,
        /// Version we send.
        version: i16,
        /// Broker's lowest.
        min: i16,
        /// Broker's highest.
        max: i16,
    },
    /// The broker answered with an error code.
    #[error("{api} failed: {}", Named(*error))]
    Kafka {
        /// API name.
        api: &'static str,
        /// What the broker's error code says.
        error: ResponseError,
    },
    /// No answer in time.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// TLS or SASL failed: the settings are wrong, retrying cannot help.
    #[error(transparent)]
    Security(ConnError),
    /// Another member joined with this member's group instance id and took
    /// its place; rejoining would only take the place back and fence the
    /// other in turn.
    #[error("group {group}: another portal joined with the same group instance id '{instance_id}' (KAFKA_GROUP_INSTANCE_ID) and took over this portal's partitions ({api} answered FENCED_INSTANCE_ID); give every portal of a group its own id")]
    Fenced {
        /// Group id.
        group: String,
        /// The instance id both members use.
        instance_id: String,
        /// The request that was refused.
        api: &'static str,
    },
    /// Another member still holds this member's group instance id, for
    /// longer than a session of a member that stopped without leaving.
    #[error("group {group}: another member still holds the group instance id '{instance_id}' (KAFKA_GROUP_INSTANCE_ID; ConsumerGroupHeartbeat answered UNRELEASED_INSTANCE_ID for {waited_secs} s); give every portal of a group its own id")]
    Unreleased {
        /// Group id.
        group: String,
        /// The instance id.
        instance_id: String,
        /// How long this member tried.
        waited_secs: u64,
    },
    /// The broker refuses the consumer protocol for this group.
    #[error("group {group}: the broker refused the consumer group protocol ({}{}); set KAFKA_GROUP_PROTOCOL=classic, or enable the protocol on the broker (group.coordinator.rebalance.protocols)", Named(*error), message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    ConsumerRefused {
        /// Group id.
        group: String,
        /// The broker's error code.
        error: ResponseError,
        /// The broker's message, one line.
        message: Option<String>,
    },
    /// The group has as many members as the broker allows.
    #[error("group {group} is full: the broker allows no more members (GROUP_MAX_SIZE_REACHED); stop a portal of this group or raise the broker's group.max.size (classic protocol) or group.consumer.max.size (consumer protocol)")]
    Full {
        /// Group id.
        group: String,
    },
}

impl From<ConnError> for GroupError {
    fn from(e: ConnError) -> Self {
        match e {
            ConnError::Io(e) => Self::Io(e),
            ConnError::Codec(m) => Self::Codec(m),
            ConnError::Timeout(what) => Self::Timeout(what),
            other => Self::Security(other),
        }
    }
}

impl GroupError {
    /// Whether the coordinator moved or is not ready: find it again.
    pub fn coordinator_moved(&self) -> bool {
        matches!(
            self,
            Self::Io(_)
                | Self::Timeout(_)
                | Self::Kafka {
                    error: ResponseError::NotCoordinator
                        | ResponseError::CoordinatorNotAvailable
                        | ResponseError::CoordinatorLoadInProgress,
                    ..
                }
        )
    }

    /// Whether the broker answered with a state that is normal while it or
    /// the group's coordinator starts (`code::is_startup_state`).
    pub fn is_startup_state(&self) -> bool {
        matches!(self, Self::Kafka { error, .. } if crate::kafka::code::is_startup_state(*error))
    }

    /// Whether the portal should give up: a certificate or password
    /// problem, another portal with this one's instance id, a full group.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::Security(_)
                | Self::Fenced { .. }
                | Self::Full { .. }
                | Self::Unreleased { .. }
                | Self::ConsumerRefused { .. }
        )
    }

    /// Whether this member was dropped from the group or its generation is
    /// over, so it must join again.
    pub fn needs_rejoin(&self) -> bool {
        matches!(
            self,
            Self::Kafka {
                error: ResponseError::IllegalGeneration
                    | ResponseError::UnknownMemberId
                    | ResponseError::RebalanceInProgress,
                ..
            }
        )
    }
}

fn codec(e: impl std::fmt::Display) -> GroupError {
    GroupError::Codec(e.to_string())
}

fn check(api: &'static str, code: i16) -> Result<(), GroupError> {
    match code.err() {
        None => Ok(()),
        Some(error) => Err(GroupError::Kafka { api, error }),
    }
}

/// The requests the classic member sends: (name, key, version).
const CLASSIC_NEEDS: &[(&str, i16, i16)] = &[
    (
        "FindCoordinator",
        FindCoordinatorRequest::KEY,
        V_FIND_COORDINATOR,
    ),
    ("JoinGroup", JoinGroupRequest::KEY, V_JOIN),
    ("SyncGroup", SyncGroupRequest::KEY, V_SYNC),
    ("Heartbeat", HeartbeatRequest::KEY, V_HEARTBEAT),
    ("OffsetFetch", OffsetFetchRequest::KEY, V_OFFSET_FETCH),
    ("OffsetCommit", OffsetCommitRequest::KEY, V_OFFSET_COMMIT),
    ("LeaveGroup", LeaveGroupRequest::KEY, V_LEAVE),
];

/// What the broker serves: API key to (lowest, highest) version.
pub(crate) type Served = BTreeMap<i16, (i16, i16)>;

/// Asks the broker which request versions it serves.
pub(crate) async fn served(conn: &mut BrokerConn) -> Result<Served, GroupError> {
    let resp = conn.api_versions().await?;
    check("ApiVersions", resp.error_code)?;
    Ok(resp
        .api_keys
        .iter()
        .map(|k| (k.api_key, (k.min_version, k.max_version)))
        .collect())
}

/// The first of `needs` the broker does not serve, as an error.
pub(crate) fn missing(served: &Served, needs: &[(&'static str, i16, i16)]) -> Option<GroupError> {
    needs.iter().find_map(|&(api, key, version)| {
        let (min, max) = served.get(&key).copied().unwrap_or((-1, -1));
        (version < min || version > max).then_some(GroupError::Unsupported {
            api,
            version,
            min,
            max,
        })
    })
}

/// Checks that the broker serves every request version in `needs`.
async fn negotiate(
    conn: &mut BrokerConn,
    needs: &[(&'static str, i16, i16)],
) -> Result<(), GroupError> {
    let served = served(conn).await?;
    match missing(&served, needs) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Longest group instance id Kafka accepts.
pub(crate) const MAX_INSTANCE_ID_LEN: usize = 249;

/// Checks a group instance id against Kafka's own rule (the one for topic
/// names, which Kafka's clients apply before they send it); says what is
/// wrong otherwise.
pub(crate) fn check_instance_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("it is empty".into());
    }
    if id == "." || id == ".." {
        return Err("'.' and '..' are not allowed".into());
    }
    if id.len() > MAX_INSTANCE_ID_LEN {
        return Err(format!(
            "it has {} bytes; at most {MAX_INSTANCE_ID_LEN} are allowed",
            id.len()
        ));
    }
    match id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(c) => Err(format!(
            "it contains {c:?}; only ASCII letters, digits, '.', '_' and '-' are allowed"
        )),
        None => Ok(()),
    }
}

/// The consumer group the portals share, as the settings give it.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Group id (`KAFKA_CONSUMER_GROUP`).
    pub group_id: String,
    /// Static membership's instance id (`KAFKA_GROUP_INSTANCE_ID`), checked
    /// with `check_instance_id`; `None` for a dynamic member.
    pub instance_id: Option<String>,
    /// The coordinator drops a member it has not heard from for this long.
    pub session_timeout: Duration,
    /// How long members have to rejoin during a rebalance.
    pub rebalance_timeout: Duration,
    /// The group protocol (`KAFKA_GROUP_PROTOCOL`); `Auto` until
    /// `consumer_group::resolve_protocol` asked the broker.
    pub protocol: GroupProtocol,
}

/// Which group protocol a member speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupProtocol {
    /// `consumer` when the broker serves it, else `classic`.
    Auto,
    /// KIP-848's ConsumerGroupHeartbeat (Kafka 4.0 and later).
    Consumer,
    /// JoinGroup, SyncGroup and Heartbeat.
    Classic,
}

impl GroupProtocol {
    /// The name the settings use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Consumer => "consumer",
            Self::Classic => "classic",
        }
    }
}

/// What a completed join gave this member.
#[derive(Debug, Clone)]
pub(crate) struct Assignment {
    /// Generation of the group.
    pub generation: i32,
    /// Partitions of the topic assigned to this member.
    pub partitions: Vec<i32>,
}

/// A committed position and its metadata string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Next offset to read; `None` when nothing was committed.
    pub offset: Option<i64>,
    /// Metadata stored with the offset.
    pub metadata: String,
}

/// Result of one heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Beat {
    /// All well.
    Ok,
    /// The group is rebalancing: revoke and rejoin.
    Rebalance,
}

/// The link to a group's coordinator that both protocols' members share:
/// finding it, one connection to it (checked to serve the request versions
/// the member sends), and the requests that do not depend on the protocol.
pub(crate) struct Coordinator {
    group: GroupConfig,
    /// Brokers, client id, deadline and security, as every Kafka user has them.
    kafka: Config,
    /// Connection to the coordinator; `None` until found, and after a failure.
    conn: Option<BrokerConn>,
    /// The requests (name, key, version) the member sends.
    needs: &'static [(&'static str, i16, i16)],
    /// The bootstrap server asked first: the last that answered, or the
    /// one after the last tried.
    first_server: usize,
}

impl Coordinator {
    /// A link not connected yet; `needs` are the requests the member sends.
    pub(crate) fn new(
        kafka: &Config,
        group: GroupConfig,
        needs: &'static [(&'static str, i16, i16)],
    ) -> Self {
        Self {
            group,
            kafka: kafka.clone(),
            conn: None,
            needs,
            first_server: 0,
        }
    }

    /// The group's settings.
    pub(crate) fn config(&self) -> &GroupConfig {
        &self.group
    }

    /// The group id as requests carry it.
    pub(crate) fn group(&self) -> GroupId {
        GroupId(StrBytes::from_string(self.group.group_id.clone()))
    }

    /// The group instance id as requests carry it.
    pub(crate) fn instance(&self) -> Option<StrBytes> {
        self.group.instance_id.clone().map(StrBytes::from_string)
    }

    /// The error for `error` answered to `api`: the fatal ones worded for
    /// whoever runs the portal; forgets the coordinator when it moved.
    pub(crate) fn failure(&mut self, api: &'static str, error: ResponseError) -> GroupError {
        let e = match error {
            ResponseError::FencedInstanceId => GroupError::Fenced {
                group: self.group.group_id.clone(),
                instance_id: self.group.instance_id.clone().unwrap_or_default(),
                api,
            },
            ResponseError::GroupMaxSizeReached => GroupError::Full {
                group: self.group.group_id.clone(),
            },
            error => GroupError::Kafka { api, error },
        };
        if e.coordinator_moved() {
            self.conn = None;
        }
        e
    }

    /// Turns an error code into an error (`failure`).
    pub(crate) fn checked(&mut self, api: &'static str, code: i16) -> Result<(), GroupError> {
        match code.err() {
            None => Ok(()),
            Some(error) => Err(self.failure(api, error)),
        }
    }

    async fn coordinator(&mut self) -> Result<&mut BrokerConn, GroupError> {
        if self.conn.is_none() {
            let mut last = None;
            let servers = self.kafka.servers();
            let n = servers.len();
            for k in 0..n {
                let i = (self.first_server + k) % n;
                // Moved on before the attempt: a caller that gives up on a
                // silent server midway starts at the next one next time.
                self.first_server = (i + 1) % n;
                match self.find_coordinator_via(&servers[i]).await {
                    Ok(conn) => {
                        self.first_server = i;
                        self.conn = Some(conn);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            if self.conn.is_none() {
                return Err(last.unwrap_or(GroupError::Timeout("finding the group coordinator")));
            }
        }
        self.conn
            .as_mut()
            .ok_or(GroupError::Timeout("finding the group coordinator"))
    }

    async fn find_coordinator_via(&self, addr: &str) -> Result<BrokerConn, GroupError> {
        let k = &self.kafka;
        let mut conn = BrokerConn::open(addr, &k.client_id, self.op_timeout(), &k.security).await?;
        negotiate(&mut conn, self.needs).await?;
        let req = FindCoordinatorRequest::default()
            .with_key_type(0)
            .with_coordinator_keys(vec![StrBytes::from_string(self.group.group_id.clone())]);
        let resp = conn
            .call("FindCoordinator", &req, V_FIND_COORDINATOR, Duration::ZERO)
            .await
            .map_err(GroupError::from)?;
        let c = resp
            .coordinators
            .first()
            .ok_or_else(|| GroupError::Codec("FindCoordinator returned no coordinator".into()))?;
        check("FindCoordinator", c.error_code)?;
        let target = format!("{}:{}", c.host.as_str(), c.port);
        log::debug!("group {}: coordinator is {target}", self.group.group_id);
        let mut coord =
            BrokerConn::open(&target, &k.client_id, self.op_timeout(), &k.security).await?;
        negotiate(&mut coord, self.needs).await?;
        Ok(coord)
    }

    /// Forgets the connection: the next request finds the coordinator anew
    /// (after a request was cut off midway, whose answer must not be read
    /// as the next one's).
    pub(crate) fn forget(&mut self) {
        self.conn = None;
    }

    /// The same link with no connection yet, for a task of its own.
    pub(crate) fn fresh(&self) -> Self {
        Self {
            group: self.group.clone(),
            kafka: self.kafka.clone(),
            conn: None,
            needs: self.needs,
            first_server: self.first_server,
        }
    }

    /// Sends one request to the coordinator; any failure of the exchange
    /// forgets the connection, so the next call finds the coordinator anew.
    pub(crate) async fn call<R: Request>(
        &mut self,
        api: &'static str,
        req: &R,
        version: i16,
        extra_wait: Duration,
    ) -> Result<R::Response, GroupError> {
        let conn = self.coordinator().await?;
        let result = conn
            .call(api, req, version, extra_wait)
            .await
            .map_err(GroupError::from);
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    /// Deadline of one group request: a hung request must not outlast the
    /// session it protects.
    pub(crate) fn op_timeout(&self) -> Duration {
        self.kafka.timeout.min(self.group.session_timeout / 3)
    }

    /// Committed positions of `partitions` of `topic`.
    pub(crate) async fn fetch_offsets(
        &mut self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<BTreeMap<i32, Committed>, GroupError> {
        let req = OffsetFetchRequest::default()
            .with_group_id(self.group())
            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partition_indexes(partitions.to_vec())]));
        let resp = self
            .call("OffsetFetch", &req, V_OFFSET_FETCH, Duration::ZERO)
            .await?;
        self.checked("OffsetFetch", resp.error_code)?;
        let mut out = BTreeMap::new();
        for t in resp.topics {
            if t.name.0.as_str() != topic {
                continue;
            }
            for p in t.partitions {
                self.checked("OffsetFetch", p.error_code)?;
                let offset = (p.committed_offset >= 0).then_some(p.committed_offset);
                let metadata = p.metadata.map(|m| m.to_string()).unwrap_or_default();
                out.insert(p.partition_index, Committed { offset, metadata });
            }
        }
        Ok(out)
    }

    /// Commits `offsets` (partition, next offset, metadata) of `topic` as
    /// `member_id` in `generation` (the member epoch under the consumer
    /// protocol, which OffsetCommit carries from version 9 on).
    pub(crate) async fn commit(
        &mut self,
        topic: &str,
        offsets: &[(i32, i64, String)],
        member_id: &str,
        generation: i32,
        version: i16,
    ) -> Result<(), GroupError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let partitions = offsets
            .iter()
            .map(|(p, o, m)| {
                OffsetCommitRequestPartition::default()
                    .with_partition_index(*p)
                    .with_committed_offset(*o)
                    .with_committed_leader_epoch(-1)
                    .with_committed_metadata(Some(StrBytes::from_string(m.clone())))
            })
            .collect();
        let req = OffsetCommitRequest::default()
            .with_group_id(self.group())
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(StrBytes::from_string(member_id.to_string()))
            .with_group_instance_id(self.instance())
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(partitions)]);
        let resp = self
            .call("OffsetCommit", &req, version, Duration::ZERO)
            .await?;
        for t in resp.topics {
            for p in t.partitions {
                self.checked("OffsetCommit", p.error_code)?;
            }
        }
        Ok(())
    }
}

/// A member of one consumer group under the classic protocol.
pub(crate) struct Member {
    coord: Coordinator,
    member_id: String,
    generation: i32,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("group", &self.coord.group.group_id)
            .field("member_id", &self.member_id)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Member {
    /// The same member, for a heartbeat task: its own connection to the
    /// coordinator, so a heartbeat never queues behind this member's
    /// commits or its search for the coordinator.
    pub(crate) fn heartbeater(&self) -> Self {
        Self {
            coord: self.coord.fresh(),
            member_id: self.member_id.clone(),
            generation: self.generation,
        }
    }

    /// Forgets the coordinator connection: the next request finds it anew.
    pub(crate) fn forget_coordinator(&mut self) {
        self.coord.forget();
    }

    /// Deadline of one group request, for those that run group requests in
    /// tasks of their own.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.coord.op_timeout()
    }

    /// A member that has not joined yet.
    pub(crate) fn new(kafka: &Config, group: GroupConfig) -> Self {
        Self {
            coord: Coordinator::new(kafka, group, CLASSIC_NEEDS),
            member_id: String::new(),
            generation: -1,
        }
    }

    /// The group id.
    pub(crate) fn group_id(&self) -> &str {
        &self.coord.group.group_id
    }

    /// The group instance id of a static member: one that keeps its place
    /// in the group when it stops, so it does not leave on shutdown.
    pub(crate) fn instance_id(&self) -> Option<&str> {
        self.coord.group.instance_id.as_deref()
    }

    /// Joins (or rejoins) the group subscribed to `topic`, which has
    /// `partitions` partitions, and returns this member's assignment.
    pub(crate) async fn join(
        &mut self,
        topic: &str,
        partitions: i32,
    ) -> Result<Assignment, GroupError> {
        let subscription = encode_versioned(
            &ConsumerProtocolSubscription::default()
                .with_topics(vec![StrBytes::from_string(topic.to_string())]),
            0,
        )?;
        let group = self.coord.group();
        let session_ms = millis(self.coord.group.session_timeout);
        let rebalance_ms = millis(self.coord.group.rebalance_timeout);
        let rebalance_wait = self.coord.group.rebalance_timeout;
        // A member id the coordinator asks for, or forgot, costs one more
        // round each; more rounds than that mean a coordinator in a loop.
        let mut rounds = 0;
        let join = loop {
            rounds += 1;
            let req = JoinGroupRequest::default()
                .with_group_id(group.clone())
                .with_session_timeout_ms(session_ms)
                .with_rebalance_timeout_ms(rebalance_ms)
                .with_member_id(StrBytes::from_string(self.member_id.clone()))
                .with_group_instance_id(self.coord.instance())
                .with_protocol_type(StrBytes::from_static_str("consumer"))
                .with_protocols(vec![JoinGroupRequestProtocol::default()
                    .with_name(StrBytes::from_static_str("range"))
                    .with_metadata(subscription.clone())]);
            let resp = self
                .coord
                .call("JoinGroup", &req, V_JOIN, rebalance_wait)
                .await?;
            match resp.error_code.err() {
                None => break resp,
                Some(ResponseError::MemberIdRequired) if rounds < 3 => {
                    self.member_id = resp.member_id.to_string();
                }
                Some(ResponseError::UnknownMemberId) if rounds < 3 => self.member_id.clear(),
                Some(error) => return Err(self.coord.failure("JoinGroup", error)),
            }
        };
        self.member_id = join.member_id.to_string();
        self.generation = join.generation_id;
        // A static leader that rejoins a stable group is told it leads but
        // gets no member list: the coordinator keeps the assignment it has
        // and hands it back at SyncGroup, whatever this member sends.
        let assignments = if join.leader.as_str() == self.member_id {
            // Members reading another topic (a group id shared across
            // request topics) get nothing of ours; say how to fix it.
            let mut members = Vec::new();
            for m in &join.members {
                let sub: Result<ConsumerProtocolSubscription, _> =
                    decode_versioned(m.metadata.clone());
                match sub {
                    Ok(sub) if sub.topics.iter().any(|t| t.as_str() == topic) => {
                        members.push(RangeMember {
                            member_id: m.member_id.to_string(),
                            instance_id: m.group_instance_id.as_ref().map(|i| i.to_string()),
                        });
                    }
                    _ => log::warn!(
                        "group {}: member {} does not read {topic}; give each request topic its own KAFKA_CONSUMER_GROUP",
                        self.coord.group.group_id,
                        m.member_id.as_str()
                    ),
                }
            }
            let mut plan = range_assign(&members, partitions);
            for m in &join.members {
                plan.entry(m.member_id.to_string()).or_default();
            }
            plan.into_iter()
                .map(|(member, parts)| {
                    let bytes = encode_versioned(
                        &ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
                            TopicPartition::default()
                                .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                                .with_partitions(parts),
                        ]),
                        0,
                    )?;
                    Ok(SyncGroupRequestAssignment::default()
                        .with_member_id(StrBytes::from_string(member))
                        .with_assignment(bytes))
                })
                .collect::<Result<Vec<_>, GroupError>>()?
        } else {
            Vec::new()
        };
        let req = SyncGroupRequest::default()
            .with_group_id(group)
            .with_generation_id(self.generation)
            .with_member_id(StrBytes::from_string(self.member_id.clone()))
            .with_group_instance_id(self.coord.instance())
            .with_protocol_type(Some(StrBytes::from_static_str("consumer")))
            .with_protocol_name(Some(StrBytes::from_static_str("range")))
            .with_assignments(assignments);
        let resp = self
            .coord
            .call("SyncGroup", &req, V_SYNC, rebalance_wait)
            .await?;
        self.coord.checked("SyncGroup", resp.error_code)?;
        let mut mine = Vec::new();
        if !resp.assignment.is_empty() {
            let a: ConsumerProtocolAssignment = decode_versioned(resp.assignment)?;
            for tp in a.assigned_partitions {
                if tp.topic.0.as_str() == topic {
                    mine.extend(tp.partitions);
                }
            }
        }
        mine.sort_unstable();
        Ok(Assignment {
            generation: self.generation,
            partitions: mine,
        })
    }

    /// Time between heartbeats.
    pub(crate) fn heartbeat_interval(&self) -> Duration {
        self.coord.group.session_timeout / 5
    }

    /// Tells the coordinator this member is alive.
    pub(crate) async fn heartbeat(&mut self) -> Result<Beat, GroupError> {
        let req = HeartbeatRequest::default()
            .with_group_id(self.coord.group())
            .with_generation_id(self.generation)
            .with_member_id(StrBytes::from_string(self.member_id.clone()))
            .with_group_instance_id(self.coord.instance());
        let resp = self
            .coord
            .call("Heartbeat", &req, V_HEARTBEAT, Duration::ZERO)
            .await?;
        match resp.error_code.err() {
            None => Ok(Beat::Ok),
            Some(ResponseError::RebalanceInProgress) => Ok(Beat::Rebalance),
            Some(error) => {
                if error == ResponseError::UnknownMemberId {
                    self.member_id.clear();
                }
                Err(self.coord.failure("Heartbeat", error))
            }
        }
    }

    /// Committed positions of `partitions` of `topic`.
    pub(crate) async fn fetch_offsets(
        &mut self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<BTreeMap<i32, Committed>, GroupError> {
        self.coord.fetch_offsets(topic, partitions).await
    }

    /// Commits `offsets` (partition, next offset, metadata) of `topic` for
    /// the current generation.
    pub(crate) async fn commit(
        &mut self,
        topic: &str,
        offsets: &[(i32, i64, String)],
    ) -> Result<(), GroupError> {
        let (member, generation) = (self.member_id.clone(), self.generation);
        self.coord
            .commit(topic, offsets, &member, generation, V_OFFSET_COMMIT)
            .await
    }

    /// Leaves the group, so the others take over at once. With an instance
    /// id the coordinator removes the static member too (the portal does
    /// not call this for one, see `instance_id`).
    pub(crate) async fn leave(&mut self) -> Result<(), GroupError> {
        if self.member_id.is_empty() {
            return Ok(());
        }
        let req = LeaveGroupRequest::default()
            .with_group_id(self.coord.group())
            .with_members(vec![MemberIdentity::default()
                .with_member_id(StrBytes::from_string(self.member_id.clone()))
                .with_group_instance_id(self.coord.instance())
                .with_reason(Some(StrBytes::from_static_str("portal shutting down")))]);
        let resp = self
            .coord
            .call("LeaveGroup", &req, V_LEAVE, Duration::ZERO)
            .await?;
        self.coord.checked("LeaveGroup", resp.error_code)?;
        self.member_id.clear();
        Ok(())
    }
}

fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

/// Consumer-protocol payloads carry a big-endian i16 version, then the message.
fn encode_versioned<M: Encodable>(m: &M, version: i16) -> Result<Bytes, GroupError> {
    let mut buf = BytesMut::new();
    buf.put_i16(version);
    m.encode(&mut buf, version).map_err(codec)?;
    Ok(buf.freeze())
}

fn decode_versioned<M: Decodable>(mut bytes: Bytes) -> Result<M, GroupError> {
    if bytes.remaining() < 2 {
        return Err(GroupError::Codec(
            "consumer protocol payload too short".into(),
        ));
    }
    // Newer versions only add fields at the end; read what version 0 knows.
    let version = bytes.get_i16().clamp(0, 0);
    M::decode(&mut bytes, version).map_err(codec)
}

/// A member as the `range` assignor orders it.
#[derive(Debug, Clone)]
pub(crate) struct RangeMember {
    /// The id the coordinator gave it.
    pub(crate) member_id: String,
    /// Its group instance id, when static.
    pub(crate) instance_id: Option<String>,
}

/// The `range` assignment of one topic: static members sorted by instance
/// id, then dynamic ones by member id (as Kafka's own `range` assignor
/// does, so a static member keeps its partitions across rebalances), each
/// taking a contiguous run, the first ones one partition more when it does
/// not divide. Keys are member ids.
pub(crate) fn range_assign(members: &[RangeMember], partitions: i32) -> BTreeMap<String, Vec<i32>> {
    let sorted: BTreeSet<(bool, &str, &str)> = members
        .iter()
        .map(|m| match &m.instance_id {
            Some(i) => (false, i.as_str(), m.member_id.as_str()),
            None => (true, m.member_id.as_str(), m.member_id.as_str()),
        })
        .collect();
    let n = sorted.len() as i32;
    let mut out = BTreeMap::new();
    if n == 0 {
        return out;
    }
    let per = partitions / n;
    let extra = partitions % n;
    let mut next = 0;
    for (i, (_, _, id)) in sorted.into_iter().enumerate() {
        let count = per + i32::from((i as i32) < extra);
        out.insert(id.to_string(), (next..next + count).collect());
        next += count;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dynamic(ids: &[&str]) -> Vec<RangeMember> {
        ids.iter()
            .map(|s| RangeMember {
                member_id: s.to_string(),
                instance_id: None,
            })
            .collect()
    }

    #[test]
    fn range_assignment_covers_every_partition_once() {
        let members = dynamic(&["b", "a", "c"]);
        let a = range_assign(&members, 7);
        assert_eq!(a["a"], vec![0, 1, 2]);
        assert_eq!(a["b"], vec![3, 4]);
        assert_eq!(a["c"], vec![5, 6]);
        let one = range_assign(&members[..1], 3);
        assert_eq!(one["b"], vec![0, 1, 2]);
        let many = range_assign(&members, 2);
        assert_eq!(many["c"], Vec::<i32>::new());
        assert!(range_assign(&[], 3).is_empty());
    }

    #[test]
    fn static_members_keep_their_place_in_the_range_order() {
        // Member ids are new on every join; instance ids stay, so static
        // members are ordered by them, ahead of dynamic ones.
        let members = vec![
            RangeMember {
                member_id: "a-dynamic".into(),
                instance_id: None,
            },
            RangeMember {
                member_id: "zzz-1".into(),
                instance_id: Some("portal-1".into()),
            },
            RangeMember {
                member_id: "aaa-2".into(),
                instance_id: Some("portal-2".into()),
            },
        ];
        let a = range_assign(&members, 5);
        assert_eq!(a["zzz-1"], vec![0, 1]);
        assert_eq!(a["aaa-2"], vec![2, 3]);
        assert_eq!(a["a-dynamic"], vec![4]);
    }

    #[test]
    fn instance_ids_follow_kafkas_rule() {
        for good in ["portal-1", "host.example.com", "A_b-9", &"x".repeat(249)] {
            assert_eq!(check_instance_id(good), Ok(()), "{good}");
        }
        let cases = [
            ("", "it is empty"),
            (".", "'.' and '..' are not allowed"),
            ("..", "'.' and '..' are not allowed"),
            ("two words", "it contains ' '"),
            ("tab\there", "it contains '\\t'"),
            ("caf\u{e9}", "it contains '\u{e9}'"),
            ("a/b", "it contains '/'"),
        ];
        for (id, want) in cases {
            let e = check_instance_id(id).unwrap_err();
            assert!(e.starts_with(want), "{id:?}: {e}");
        }
        let long = check_instance_id(&"x".repeat(250)).unwrap_err();
        assert_eq!(long, "it has 250 bytes; at most 249 are allowed");
    }

    fn member(instance: Option<&str>) -> Member {
        let kafka = Config {
            bootstrap_servers: "127.0.0.1:1".into(),
            request_topic: "req".into(),
            response_topic: "resp".into(),
            timeout: Duration::from_secs(1),
            chunk_size: 1024,
            security: Default::default(),
            client_id: "test".into(),
        };
        Member::new(
            &kafka,
            GroupConfig {
                group_id: "g1".into(),
                instance_id: instance.map(str::to_string),
                session_timeout: Duration::from_secs(30),
                rebalance_timeout: Duration::from_secs(60),
                protocol: GroupProtocol::Classic,
            },
        )
    }

    #[test]
    fn fencing_and_a_full_group_are_fatal_and_say_what_to_change() {
        let mut m = member(Some("portal-7"));
        let fenced = m
            .coord
            .failure("Heartbeat", ResponseError::FencedInstanceId);
        assert!(fenced.is_fatal() && !fenced.needs_rejoin() && !fenced.coordinator_moved());
        let text = fenced.to_string();
        for part in [
            "group g1",
            "'portal-7'",
            "KAFKA_GROUP_INSTANCE_ID",
            "Heartbeat",
        ] {
            assert!(text.contains(part), "{text}");
        }
        let full = m
            .coord
            .failure("JoinGroup", ResponseError::GroupMaxSizeReached);
        assert!(full.is_fatal());
        assert!(full.to_string().contains("group.max.size"), "{full}");
        // Dropped from the group (the session ran out): join again, as a
        // static member too.
        let dropped = m.coord.failure("Heartbeat", ResponseError::UnknownMemberId);
        assert!(dropped.needs_rejoin() && !dropped.is_fatal());
        assert_eq!(member(None).instance_id(), None);
        assert_eq!(m.instance_id(), Some("portal-7"));
    }

    fn kafka(api: &'static str, code: i16) -> GroupError {
        match check(api, code) {
            Err(e) => e,
            Ok(()) => panic!("code {code} passed the check"),
        }
    }

    #[test]
    fn group_errors_name_the_code_and_keep_how_it_is_acted_on() {
        assert!(check("Heartbeat", 0).is_ok());
        let moved = kafka("OffsetCommit", 16);
        assert_eq!(
            moved.to_string(),
            "OffsetCommit failed: NOT_COORDINATOR (Kafka error 16)"
        );
        assert!(moved.coordinator_moved() && !moved.needs_rejoin());
        for code in [14, 15] {
            assert!(kafka("FindCoordinator", code).coordinator_moved());
        }
        for code in [22, 25, 27] {
            let e = kafka("Heartbeat", code);
            assert!(e.needs_rejoin() && !e.coordinator_moved(), "{e}");
        }
        assert_eq!(
            kafka("Heartbeat", 27).to_string(),
            "Heartbeat failed: REBALANCE_IN_PROGRESS (Kafka error 27)"
        );
        // A code newer than this build is reported by number and acted on
        // as no known one: not retried elsewhere, not a rejoin.
        let unknown = kafka("JoinGroup", 4242);
        assert_eq!(
            unknown.to_string(),
            "JoinGroup failed: unknown Kafka error 4242"
        );
        assert!(!unknown.coordinator_moved() && !unknown.needs_rejoin() && !unknown.is_fatal());
    }

    #[test]
    fn consumer_payloads_round_trip() {
        let s = ConsumerProtocolSubscription::default()
            .with_topics(vec![StrBytes::from_static_str("api-requests")]);
        let bytes = encode_versioned(&s, 0).unwrap();
        assert_eq!(&bytes[..2], &[0, 0]);
        let back: ConsumerProtocolSubscription = decode_versioned(bytes).unwrap();
        assert_eq!(back.topics, s.topics);
        assert!(decode_versioned::<ConsumerProtocolAssignment>(Bytes::from_static(&[0])).is_err());
    }
}
