//! The thin layer over `rskafka` shared by `send` and the portal: connecting
//! with a deadline, creating topics, producing frames and finding offsets.
//! Reading a partition is `fetcher`'s, with requests of our own.
//!
//! This folder is the only one that names `rskafka` or `kafka-protocol`: the
//! rest of the crate sees [`Cluster`], [`Partition`] (a handle that carries
//! its deadline), [`Record`] and [`RecordAndOffset`], and errors that name
//! Kafka's error codes.

pub(crate) mod code;
pub mod compression;
pub mod conn;
pub mod consumer_group;
pub mod fetcher;
pub mod group;
pub(crate) mod heartbeat;
pub mod partitioner;
pub mod record_batch;
pub(crate) mod retry;
pub mod security;
pub(crate) mod window;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use rskafka::client::error::{Error as RsError, ProtocolError};
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::BackoffConfig;
use tokio::sync::Mutex;

use crate::kafka::code::Named;
use crate::kafka::conn::{BrokerConn, ConnError};
use crate::kafka::retry::{Failed, Retry, ROUND};
use crate::kafka::security::KafkaSecurity;
use crate::protocol::digest::DigestKind;
use crate::protocol::wire::{Frame, JobId};

/// Errors talking to Kafka, phrased for the person who has to fix them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaError {
    /// No broker answered.
    #[error("cannot reach the Kafka broker at {servers}: {detail}; check KAFKA_BOOTSTRAP_SERVERS and that the broker is running")]
    Unreachable {
        /// The bootstrap servers tried.
        servers: String,
        /// What went wrong.
        detail: String,
    },
    /// A topic we need does not exist.
    #[error("Kafka topic '{0}' does not exist; start the portal once (it creates its topics) or create it")]
    MissingTopic(String),
    /// The broker refused a record as too large.
    #[error("the broker refused a {size}-byte record as too large; lower --chunk-size (KAFKASEND_CHUNK_SIZE) or raise the broker's message.max.bytes / the topic's max.message.bytes")]
    RecordTooLarge {
        /// Size of the record value.
        size: usize,
    },
    /// Anything else from the client library.
    #[error("Kafka {action} failed: {}", code::described(source))]
    Client {
        /// What we were doing.
        action: &'static str,
        /// The library's error.
        #[source]
        source: RsError,
    },
    /// An operation did not finish in time.
    #[error("Kafka {0} timed out")]
    Timeout(&'static str),
    /// TLS or SASL failed: a certificate, password or protocol setting is wrong.
    #[error(transparent)]
    Security(ConnError),
    /// The broker answered with a Kafka error code.
    #[error("Kafka {action} failed: {}", Named(*error))]
    Broker {
        /// What we were doing.
        action: &'static str,
        /// What the broker's error code says.
        error: ResponseError,
    },
    /// The offset asked for is not in the partition: its records were
    /// deleted, or it is past the end.
    #[error("offset {offset} is out of range for the partition")]
    OffsetOutOfRange {
        /// The offset asked for.
        offset: i64,
    },
    /// The broker's answer cannot be used: too large, malformed, or a
    /// request version it does not serve.
    #[error("Kafka {action}: {detail}")]
    Protocol {
        /// What we were doing.
        action: &'static str,
        /// What was wrong.
        detail: String,
    },
}

impl KafkaError {
    /// Whether the broker could not be reached or did not answer, as
    /// opposed to answering with something we cannot use.
    pub(crate) fn is_connection_problem(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. } | Self::Timeout(_) | Self::Client { .. }
        )
    }
}

impl KafkaError {
    /// Whether the failure may pass if the work is taken up again on a new
    /// connection: the broker unreachable or silent, a connection lost or
    /// refused, or a leader not yet there, even after the call's own
    /// retries ran out (`send` then resumes its upload).
    pub(crate) fn passes(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::Timeout(_) => true,
            Self::Client { source, .. } => crate::kafka::retry::passes(source),
            Self::Broker { error, .. } => code::is_startup_state(*error),
            _ => false,
        }
    }

    /// Whether the broker answered with a state that is normal while it, a
    /// topic or a group starts (`code::is_startup_state`).
    pub(crate) fn is_startup_state(&self) -> bool {
        match self {
            Self::Broker { error, .. } => code::is_startup_state(*error),
            Self::Client { source, .. } => match source {
                RsError::ServerError { protocol_error, .. } => {
                    code::is_startup_state(Named::of_rskafka(*protocol_error).0)
                }
                // What our retries ended on (`retry::Retry::run`).
                RsError::RetryFailed(rskafka::BackoffError::DeadlineExceded { source, .. }) => {
                    source.downcast_ref::<RsError>().is_some_and(|e| {
                        matches!(e, RsError::ServerError { protocol_error, .. }
                            if code::is_startup_state(Named::of_rskafka(*protocol_error).0))
                    })
                }
                _ => false,
            },
            _ => false,
        }
    }
}

/// What [`Retry::run`] gave up on, as our error: the failure naming what we
/// were doing (`action`), or a timeout naming what we waited for (`waiting`).
fn gave_up(action: &'static str, waiting: &'static str) -> impl FnOnce(Failed) -> KafkaError {
    move |failed| match failed {
        Failed::Error(source) => KafkaError::Client { action, source },
        Failed::TimedOut => KafkaError::Timeout(waiting),
    }
}

/// Maps a library error, naming what we were doing.
pub(crate) fn client_err(action: &'static str) -> impl FnOnce(RsError) -> KafkaError {
    move |source| KafkaError::Client { action, source }
}

/// Kafka settings of `send`, `wait` and the portal, resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// Brokers.
    pub bootstrap_servers: String,
    /// Request topic.
    pub request_topic: String,
    /// Response topic.
    pub response_topic: String,
    /// How long connecting may take, and each operation with its retries.
    pub timeout: Duration,
    /// Chunk payload size.
    pub chunk_size: usize,
    /// TLS and SASL.
    pub security: KafkaSecurity,
    /// Client id the brokers log and the group tools show.
    pub client_id: String,
}

impl Config {
    /// The bootstrap servers, one `host:port` each.
    pub(crate) fn servers(&self) -> Vec<String> {
        self.bootstrap_servers
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

/// Most record bytes one fetch asks for, per partition; bounds memory per
/// reader. Two default chunks: a reader keeps a fetch ahead of its writes
/// without holding megabytes per job. The broker still returns a first
/// record batch larger than this whole, so larger chunks work too.
pub(crate) const FETCH_MAX_BYTES: i32 = 2 * 1024 * 1024;

/// How long one bootstrap server may take (at most KAFKA_TIMEOUT_SECS) when
/// another could answer instead: to pass [`connect`]'s check, or for a
/// reader to find a partition's leader through it. Either is a dozen round
/// trips at most (TCP, TLS, SASL, ApiVersions, Metadata, the leader's
/// connection) that a live broker answers in well under a second; a server
/// silent for longer is as good as down, and a bound this short lets the
/// next server be tried within `send`'s 4.5 s fetches, long before the
/// portal reports a reader stuck.
pub(crate) const LOOKUP_LIMIT: Duration = Duration::from_secs(5);

/// Largest response rskafka accepts: a fetch holding one record of the
/// largest chunk size, with room to spare.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// How long every bootstrap server may refuse connections before that is
/// reported. A refusal comes at once and means nothing listens on the port:
/// a broker restarting is back within this, a wrong address never is, and
/// waiting the whole `KAFKA_TIMEOUT_SECS` for it (rskafka retries a refusal
/// like a silent host) only delays the message.
pub(crate) const REFUSED_FOR: Duration = Duration::from_secs(3);

/// Longest pause between two rounds of connection attempts while every
/// bootstrap server refuses (the first pause is 100 ms, doubling).
const REFUSED_PAUSE: Duration = Duration::from_secs(1);

/// What [`connect_with`] does while every bootstrap server refuses connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WhenRefused {
    /// Fail after [`REFUSED_FOR`]: someone is waiting on a command.
    Fail,
    /// Warn after [`REFUSED_FOR`] and keep trying until `KAFKA_TIMEOUT_SECS`:
    /// a service may well start before its broker.
    KeepTrying,
}

/// Connects to the cluster, failing with a clear message when no broker
/// answers in time, or when every bootstrap server refuses connections for
/// [`REFUSED_FOR`].
pub async fn connect(settings: &Config) -> Result<Cluster, KafkaError> {
    connect_with(settings, WhenRefused::Fail).await
}

/// Connects to the cluster, as [`connect`], with `when_refused` saying how
/// long refused connections are retried.
pub(crate) async fn connect_with(
    settings: &Config,
    when_refused: WhenRefused,
) -> Result<Cluster, KafkaError> {
    let started = tokio::time::Instant::now();
    let servers = settings.servers();
    if servers.is_empty() {
        return Err(KafkaError::Unreachable {
            servers: settings.bootstrap_servers.clone(),
            detail: "no bootstrap server given".into(),
        });
    }
    let security = &settings.security;
    if security.tls.is_none()
        && security
            .sasl
            .as_ref()
            .is_some_and(|c| c.mechanism == crate::kafka::security::SaslMechanism::Plain)
    {
        log::warn!(
            "KAFKA_SASL_MECHANISM=PLAIN without TLS sends the password in clear text; use KAFKA_SECURITY_PROTOCOL=SASL_SSL"
        );
    }
    let unreachable = |detail: String| KafkaError::Unreachable {
        servers: settings.bootstrap_servers.clone(),
        detail,
    };
    let give_up = match when_refused {
        WhenRefused::Fail => REFUSED_FOR.min(settings.timeout),
        WhenRefused::KeepTrying => settings.timeout,
    };
    let mut pause = Duration::from_millis(100);
    let mut warned = false;
    let answered = loop {
        let checked = check_security(&servers, settings)
            .await
            .map_err(|e| match e {
                e if e.is_config_problem() => KafkaError::Security(e),
                e => unreachable(e.to_string()),
            })?;
        let waited = started.elapsed();
        match checked {
            Checked::Answered(addr) => break Some(addr),
            Checked::Silent => break None,
            Checked::Refused(unresolved) if waited >= give_up => {
                return Err(unreachable(refused_for(servers.len(), waited, &unresolved)));
            }
            Checked::Refused(unresolved) => {
                if when_refused == WhenRefused::KeepTrying && !warned && waited >= REFUSED_FOR {
                    warned = true;
                    log::warn!(
                        "nothing answers at {}: {}; still trying for up to {:.0} s (KAFKA_TIMEOUT_SECS)",
                        settings.bootstrap_servers,
                        refused_for(servers.len(), waited, &unresolved),
                        settings.timeout.saturating_sub(waited).as_secs_f64()
                    );
                }
                // Wake for the warning on time, as for the failure.
                let next = match when_refused {
                    WhenRefused::KeepTrying if !warned => REFUSED_FOR.min(give_up),
                    _ => give_up,
                };
                tokio::time::sleep(pause.min(next.saturating_sub(waited))).await;
                pause = (pause * 2).min(REFUSED_PAUSE);
            }
        }
    };
    // What is left of the deadline after the refusals (at least a second,
    // so a broker that has just begun to answer gets its Metadata round).
    let remaining = settings
        .timeout
        .saturating_sub(started.elapsed())
        .max(Duration::from_secs(1));
    // rskafka's own retries are kept short: `Retry::run` retries each
    // call over the operation's deadline, refreshing metadata in between.
    let backoff = BackoffConfig {
        init_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(500),
        base: 2.0,
        deadline: Some(ROUND),
    };
    // rskafka asks its bootstrap servers in random order and waits on one
    // that accepts connections but never answers until its deadline: given
    // the one that answered, it reaches the rest through its Metadata.
    let bootstrap = match answered {
        Some(addr) => vec![addr],
        None => servers.clone(),
    };
    let builder = || {
        let mut builder = ClientBuilder::new(bootstrap.clone())
            .client_id(settings.client_id.clone())
            .backoff_config(backoff.clone())
            .max_message_size(MAX_RESPONSE_BYTES);
        if let Some(tls) = &settings.security.tls {
            builder = builder.tls_config(Arc::clone(tls));
        }
        if let Some(sasl) = settings.security.rskafka_sasl() {
            builder = builder.sasl_config(sasl);
        }
        builder.build()
    };
    let retry = Retry::default();
    // Building asks for the metadata; nothing to refresh before it.
    let nothing = || async { Ok::<(), RsError>(()) };
    let built = retry
        .run(
            "connecting",
            remaining + Duration::from_secs(1),
            builder,
            nothing,
        )
        .await;
    match built {
        Ok(client) => Ok(Cluster {
            client: Arc::new(client),
            limit: settings.timeout,
            retry,
        }),
        Err(Failed::Error(source)) => Err(unreachable(code::described(&source))),
        Err(Failed::TimedOut) => Err(unreachable(format!(
            "no answer within {} s",
            settings.timeout.as_secs()
        ))),
    }
}

/// Why connecting failed when all `servers` (a count) refused for `waited`.
fn refused_for(servers: usize, waited: Duration, unresolved: &[String]) -> String {
    if !unresolved.is_empty() {
        let others = if unresolved.len() < servers {
            ", and the others refused the connection,"
        } else {
            ""
        };
        return format!(
            "{} did not resolve{others} for {:.1} s (check the host name's spelling and DNS)",
            unresolved.join(", "),
            waited.as_secs_f64()
        );
    }
    let (who, ports) = if servers == 1 {
        ("", "that port")
    } else {
        ("by every server ", "those ports")
    };
    format!(
        "connection refused {who}for {:.1} s (nothing listens on {ports})",
        waited.as_secs_f64()
    )
}

/// What one round of [`check_security`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Checked {
    /// This server answered as a Kafka broker, with these settings.
    Answered(String),
    /// Every server refused the connection (nothing listens there, yet) or
    /// has a name that does not resolve: these.
    Refused(Vec<String>),
    /// No server answered, and some did not refuse either (slow, reset,
    /// silent): rskafka retries them until the deadline.
    Silent,
}

/// Opens one secured connection to the first bootstrap broker that answers
/// within [`LOOKUP_LIMIT`], and names it: rskafka retries a failed TLS
/// handshake or login until its deadline and then reports only that
/// retries ran out, so settings are checked here first, with the same
/// connection setup the group coordinator gets. Without TLS or SASL it asks
/// ApiVersions, which tells a TLS listener by its alert. When no server
/// answered, it tells servers that all refused the connection from others
/// (the broker may be slow or still starting). Only a settings problem
/// (when no bootstrap server passes) or a server that is not Kafka fails here.
async fn check_security(servers: &[String], settings: &Config) -> Result<Checked, ConnError> {
    // A settings problem with one bootstrap server is reported only when no
    // other one answers: rskafka can start from any of them.
    let mut wrong = None;
    let mut last = None;
    let mut all_refused = true;
    let mut unresolved = Vec::new();
    let limit = settings.timeout.min(LOOKUP_LIMIT);
    for addr in servers {
        let attempt = async {
            match BrokerConn::open(addr, &settings.client_id, limit, &settings.security).await {
                // Without TLS or SASL nothing was said yet: one request shows
                // whether the port speaks Kafka or TLS.
                Ok(mut conn)
                    if settings.security.tls.is_none() && settings.security.sasl.is_none() =>
                {
                    conn.api_versions().await.map(drop)
                }
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            }
        };
        let checked = tokio::time::timeout(limit, attempt)
            .await
            .unwrap_or(Err(ConnError::Timeout("connecting to the broker")));
        match checked {
            Ok(()) => return Ok(Checked::Answered(addr.clone())),
            Err(e) => {
                log::debug!("Kafka connection check with {addr}: {e}");
                let refused = matches!(&e, ConnError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused);
                // A host name that does not resolve is as final as a refusal
                // (a typo, most often); asked only once connecting failed,
                // and a slow resolver is left to the deadline.
                if !refused && matches!(&e, ConnError::Io(_)) {
                    let lookup =
                        tokio::time::timeout(limit, tokio::net::lookup_host(addr.as_str())).await;
                    if let Ok(Err(why)) = lookup {
                        log::debug!("Kafka bootstrap server {addr} does not resolve: {why}");
                        unresolved.push(addr.clone());
                        continue;
                    }
                }
                all_refused &= refused;
                if e.is_config_problem() {
                    wrong.get_or_insert(e);
                } else {
                    last = Some(e);
                }
            }
        }
    }
    match (wrong, last) {
        (Some(e), _) => Err(e),
        _ if all_refused => Ok(Checked::Refused(unresolved)),
        (None, Some(ConnError::Io(_) | ConnError::Timeout(_)) | None) => Ok(Checked::Silent),
        (None, Some(e)) => Err(e),
    }
}

/// How a produce request compresses its batch: every codec Kafka has.
/// Reading needs no setting: `fetcher` reads them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// As it is.
    #[default]
    Uncompressed,
    /// gzip.
    Gzip,
    /// Snappy, in Kafka's framing.
    Snappy,
    /// LZ4 frames.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    fn rskafka(self) -> rskafka::client::partition::Compression {
        use rskafka::client::partition::Compression as C;
        match self {
            Self::Uncompressed => C::NoCompression,
            Self::Gzip => C::Gzip,
            Self::Snappy => C::Snappy,
            Self::Lz4 => C::Lz4,
            Self::Zstd => C::Zstd,
        }
    }
}

/// One Kafka record, as produced and as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The key; a job id, for KafkaSend's own records.
    pub key: Option<Vec<u8>>,
    /// The value; one frame, for KafkaSend's own records.
    pub value: Option<Vec<u8>>,
    /// Headers by name (the reply address, a signature).
    pub headers: BTreeMap<String, Vec<u8>>,
    /// When the record was made (or appended, if the topic says so), Unix milliseconds.
    pub timestamp_ms: i64,
}

impl Record {
    /// Bytes of the value, what a batch's size limit counts.
    pub(crate) fn value_len(&self) -> usize {
        self.value.as_ref().map_or(0, Vec::len)
    }

    fn into_rskafka(self) -> rskafka::record::Record {
        rskafka::record::Record {
            key: self.key,
            value: self.value,
            headers: self.headers,
            timestamp: rskafka::chrono::DateTime::from_timestamp_millis(self.timestamp_ms)
                .unwrap_or_default(),
        }
    }
}

/// A record read from a partition, and where it stands there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordAndOffset {
    /// The record.
    pub record: Record,
    /// Its offset in the partition.
    pub offset: i64,
}

/// The cluster, for topics, producing and offsets (through rskafka; reading
/// is `fetcher`'s). Every call on it, and on the partitions it opens, is
/// bounded by the `timeout` of the settings it was connected with:
/// rskafka's own deadline bounds only its retry sleeps, and a request on a
/// silently dead connection has none. Within that bound a call is tried
/// again, with fresh metadata, while the broker has no leader for the
/// partition yet or the connection to it is refused or lost (`retry`).
#[derive(Debug, Clone)]
pub struct Cluster {
    client: Arc<Client>,
    limit: Duration,
    retry: Retry,
}

impl Cluster {
    /// Number of partitions of `topic`, or `None` when it does not exist.
    pub(crate) async fn partition_count(&self, topic: &str) -> Result<Option<i32>, KafkaError> {
        let counts = self.partition_counts(&[topic]).await?;
        Ok(counts.first().copied().flatten())
    }

    /// The partition counts of `topics` (None for a missing one), from one
    /// metadata request.
    pub(crate) async fn partition_counts(
        &self,
        topics: &[&str],
    ) -> Result<Vec<Option<i32>>, KafkaError> {
        let known = self
            .retry
            .run(
                "listing topics",
                self.limit,
                || self.client.list_topics(),
                || async { Ok::<(), RsError>(()) },
            )
            .await
            .map_err(gave_up("listing topics", "metadata lookup"))?;
        Ok(topics
            .iter()
            .map(|name| {
                known
                    .iter()
                    .find(|t| t.name == *name)
                    .map(|t| t.partitions.len() as i32)
            })
            .collect())
    }

    /// Creates `topic` unless it exists; returns its partition count.
    pub async fn ensure_topic(
        &self,
        topic: &str,
        partitions: i32,
        replication: i16,
    ) -> Result<i32, KafkaError> {
        if let Some(n) = self.partition_count(topic).await? {
            return Ok(n);
        }
        let controller = self
            .client
            .controller_client()
            .map_err(client_err("reaching the controller"))?;
        let timeout_ms = i32::try_from(self.limit.as_millis()).unwrap_or(i32::MAX);
        let created = self
            .retry
            .run(
                "creating a topic",
                self.limit,
                || async {
                    match controller
                        .create_topic(topic, partitions, replication, timeout_ms)
                        .await
                    {
                        Ok(()) => {
                            log::info!(
                                "created topic {topic} with {partitions} partitions, replication {replication}"
                            );
                            Ok(())
                        }
                        // Made by another portal, or by our own try that
                        // lost its answer.
                        Err(RsError::ServerError {
                            protocol_error: ProtocolError::TopicAlreadyExists,
                            ..
                        }) => Ok(()),
                        Err(e) => Err(e),
                    }
                },
                || self.refresh(),
            )
            .await;
        created.map_err(gave_up("creating a topic", "topic creation"))?;
        // Metadata can lag creation by a moment; wait until the topic is visible.
        for _ in 0..50 {
            if let Some(n) = self.partition_count(topic).await? {
                if n > 0 {
                    return Ok(n);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(KafkaError::MissingTopic(topic.to_string()))
    }

    /// A handle on one partition, with this cluster's deadline.
    pub async fn partition(&self, topic: &str, partition: i32) -> Result<Partition, KafkaError> {
        let client = self
            .retry
            .run(
                "opening a partition",
                self.limit,
                || {
                    self.client.partition_client(
                        topic.to_string(),
                        partition,
                        UnknownTopicHandling::Retry,
                    )
                },
                || self.refresh(),
            )
            .await
            .map_err(gave_up("opening a partition", "partition lookup"))?;
        Ok(Partition {
            client: Arc::new(client),
            cluster: self.clone(),
        })
    }

    /// Asks a broker for every topic's metadata: rskafka keeps that answer
    /// as the one its partition clients find their leaders in, and nothing
    /// else replaces it.
    async fn refresh(&self) -> Result<(), RsError> {
        self.client.list_topics().await.map(drop)
    }
}

/// One partition to produce to and find offsets in. Each call waits at most
/// the deadline the handle carries (`KAFKA_TIMEOUT_SECS`) for its answer,
/// tried again within it as the [`Cluster`]'s calls are. Cloning is cheap:
/// clones share the partition's connection.
#[derive(Debug, Clone)]
pub struct Partition {
    /// Finds its leader again by itself after a refused or lost connection
    /// or a `NOT_LEADER_OR_FOLLOWER`, from the cluster's metadata, which
    /// [`Cluster::refresh`] renews between tries.
    client: Arc<PartitionClient>,
    cluster: Cluster,
}

impl Partition {
    /// Produces one record and waits for the broker's acknowledgement;
    /// returns its offset.
    pub async fn produce(&self, record: Record) -> Result<i64, KafkaError> {
        self.produce_all(vec![record]).await
    }

    /// Produces `records` as one batch (one request, one acknowledgement)
    /// and returns the first one's offset. The batch must fit the broker's
    /// `message.max.bytes` like a single record.
    pub async fn produce_all(&self, records: Vec<Record>) -> Result<i64, KafkaError> {
        self.produce_with(records, Compression::Uncompressed).await
    }

    /// Like [`Partition::produce_all`], with the batch compressed by `compression`.
    pub async fn produce_with(
        &self,
        records: Vec<Record>,
        compression: Compression,
    ) -> Result<i64, KafkaError> {
        let size = records.iter().map(Record::value_len).sum();
        // Kept for a second try: rskafka takes the records it sends.
        let records: Vec<_> = records.into_iter().map(Record::into_rskafka).collect();
        let produced = self
            .cluster
            .retry
            .run(
                "producing a record",
                self.cluster.limit,
                || self.client.produce(records.clone(), compression.rskafka()),
                || self.cluster.refresh(),
            )
            .await
            .map_err(gave_up("producing a record", "produce"));
        match produced {
            Ok(offsets) => Ok(offsets.first().copied().unwrap_or(-1)),
            Err(KafkaError::Client {
                source:
                    RsError::ServerError {
                        protocol_error:
                            ProtocolError::MessageTooLarge | ProtocolError::RecordListTooLarge,
                        ..
                    },
                ..
            }) => Err(KafkaError::RecordTooLarge { size }),
            Err(e) => Err(e),
        }
    }

    /// The offset the next record produced to the partition will get.
    pub async fn end_offset(&self) -> Result<i64, KafkaError> {
        self.offset_at(OffsetAt::Latest).await
    }

    /// The earliest offset still kept in the partition.
    pub(crate) async fn start_offset(&self) -> Result<i64, KafkaError> {
        self.offset_at(OffsetAt::Earliest).await
    }

    /// The first offset whose record is stamped at or after `ms` (Unix
    /// milliseconds); when none is, the end offset as it was before the lookup.
    ///
    /// The end offset is read first: read after a lookup that found nothing,
    /// it would skip a record produced between the two requests.
    pub(crate) async fn offset_since(&self, ms: u64) -> Result<i64, KafkaError> {
        let end = self.end_offset().await?;
        let ms = i64::try_from(ms).unwrap_or(i64::MAX);
        let at = rskafka::chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
        let offset = self.offset_at(OffsetAt::Timestamp(at)).await?;
        Ok(if offset >= 0 { offset.min(end) } else { end })
    }

    async fn offset_at(&self, at: OffsetAt) -> Result<i64, KafkaError> {
        self.cluster
            .retry
            .run(
                "reading a partition offset",
                self.cluster.limit,
                || self.client.get_offset(at),
                || self.cluster.refresh(),
            )
            .await
            .map_err(gave_up("reading a partition offset", "offset lookup"))
    }
}

/// The record for one frame: keyed by the job id, headers as given, in the
/// oldest frame version that holds it.
pub fn record(frame: &Frame, payload: &[u8], headers: &[(&str, Vec<u8>)]) -> Record {
    record_in(DigestKind::Sha256, frame, payload, headers)
}

/// The record for one frame of a job whose bodies have `digest`, in that
/// digest's frame version.
pub fn record_in(
    digest: DigestKind,
    frame: &Frame,
    payload: &[u8],
    headers: &[(&str, Vec<u8>)],
) -> Record {
    record_of_value(
        frame.job,
        crate::protocol::wire::encode_in(digest, frame, payload),
        headers,
    )
}

/// The record of a value `wire` laid out already (or sealed), keyed by
/// its job id, stamped now.
pub fn record_of_value(job: JobId, value: Vec<u8>, headers: &[(&str, Vec<u8>)]) -> Record {
    Record {
        key: Some(job.key()),
        value: Some(value),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        timestamp_ms: now_ms(),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Whether a record is keyed by `job`.
pub(crate) fn is_for_job(record: &Record, job: &JobId) -> bool {
    record.key.as_deref() == Some(job.key().as_slice())
}

/// Partitions of one topic, opened on first use and kept: opening one
/// costs a metadata round trip, and a portal answers on few partitions.
#[derive(Debug)]
pub(crate) struct PartitionCache {
    cluster: Cluster,
    topic: String,
    /// Guards the map only while a partition is looked up or inserted.
    partitions: Mutex<HashMap<i32, Partition>>,
}

impl PartitionCache {
    /// An empty cache for `topic`.
    pub(crate) fn new(cluster: Cluster, topic: String) -> Self {
        Self {
            cluster,
            topic,
            partitions: Mutex::new(HashMap::new()),
        }
    }

    /// The topic served.
    pub(crate) fn topic(&self) -> &str {
        &self.topic
    }

    /// Partition `p`, opened if needed.
    pub(crate) async fn get(&self, p: i32) -> Result<Partition, KafkaError> {
        let mut map = self.partitions.lock().await;
        if let Some(found) = map.get(&p) {
            return Ok(found.clone());
        }
        let opened = self.cluster.partition(&self.topic, p).await?;
        map.insert(p, opened.clone());
        Ok(opened)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rskafka::client::error::RequestContext;

    fn server_error(protocol_error: ProtocolError, message: Option<&str>) -> RsError {
        RsError::ServerError {
            protocol_error,
            error_message: message.map(str::to_string),
            request: RequestContext::Partition("t".into(), 0),
            response: None,
            is_virtual: false,
        }
    }

    #[test]
    fn library_errors_name_the_code_as_kafka_does() {
        let e = client_err("opening a partition")(server_error(
            ProtocolError::LeaderNotAvailable,
            None,
        ));
        assert_eq!(
            e.to_string(),
            "Kafka opening a partition failed: LEADER_NOT_AVAILABLE (Kafka error 5)"
        );
        assert!(e.is_startup_state() && e.is_connection_problem());
        let e = client_err("creating a topic")(server_error(
            ProtocolError::PolicyViolation,
            Some("replication factor 3 is larger than the 1 brokers"),
        ));
        assert_eq!(
            e.to_string(),
            "Kafka creating a topic failed: POLICY_VIOLATION (Kafka error 44): replication factor 3 is larger than the 1 brokers"
        );
        assert!(!e.is_startup_state());
        let gave_up = RsError::RetryFailed(rskafka::BackoffError::DeadlineExceded {
            deadline: Duration::from_secs(30),
            source: Box::new(server_error(ProtocolError::NotLeaderOrFollower, None)),
        });
        assert_eq!(
            client_err("producing a record")(gave_up).to_string(),
            "Kafka producing a record failed: still failing after 30 s of retries: NOT_LEADER_OR_FOLLOWER (Kafka error 6)"
        );
        let broker = KafkaError::Broker {
            action: "fetch",
            error: ResponseError::NotLeaderOrFollower,
        };
        assert!(broker.is_startup_state() && !broker.is_connection_problem());
        assert!(!KafkaError::Timeout("fetch").is_startup_state());
    }

    #[test]
    fn retries_that_ran_out_name_the_state_they_ended_in() {
        let last = RsError::RetryFailed(rskafka::BackoffError::DeadlineExceded {
            deadline: Duration::from_secs(29),
            source: Box::new(server_error(ProtocolError::LeaderNotAvailable, None)),
        });
        let e = gave_up("opening a partition", "partition lookup")(Failed::Error(last));
        assert_eq!(
            e.to_string(),
            "Kafka opening a partition failed: still failing after 29 s of retries: LEADER_NOT_AVAILABLE (Kafka error 5)"
        );
        assert!(e.is_startup_state() && e.is_connection_problem());
        let e = gave_up("opening a partition", "partition lookup")(Failed::TimedOut);
        assert_eq!(e.to_string(), "Kafka partition lookup timed out");
        assert!(!e.is_startup_state() && e.is_connection_problem());
    }

    #[test]
    fn a_refusal_says_how_long_and_for_how_many() {
        assert_eq!(
            refused_for(1, Duration::from_millis(3004), &[]),
            "connection refused for 3.0 s (nothing listens on that port)"
        );
        assert_eq!(
            refused_for(2, Duration::from_millis(2550), &[]),
            "connection refused by every server for 2.5 s (nothing listens on those ports)"
        );
    }

    fn settings(servers: &str, timeout: Duration) -> Config {
        Config {
            bootstrap_servers: servers.into(),
            request_topic: "req".into(),
            response_topic: "resp".into(),
            timeout,
            chunk_size: 1024,
            security: KafkaSecurity::default(),
            client_id: "test".into(),
        }
    }

    /// A loopback port nothing listens on.
    fn closed_port() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    }

    #[tokio::test]
    async fn refused_everywhere_is_told_from_silent_somewhere() {
        let (a, b) = (closed_port(), closed_port());
        let both = settings(&format!("{a},{b}"), Duration::from_secs(1));
        assert_eq!(
            check_security(&both.servers(), &both).await.unwrap(),
            Checked::Refused(Vec::new())
        );
        // A name that does not resolve counts with the refusals, by name.
        let typo = format!("no-such-broker.invalid:9092,{a}");
        let typo = settings(&typo, Duration::from_secs(1));
        assert_eq!(
            check_security(&typo.servers(), &typo).await.unwrap(),
            Checked::Refused(vec!["no-such-broker.invalid:9092".into()])
        );
        assert_eq!(
            refused_for(2, Duration::from_secs(3), &["x.invalid:9092".into()]),
            "x.invalid:9092 did not resolve, and the others refused the connection, for 3.0 s (check the host name's spelling and DNS)"
        );
        // A server that accepts and never answers is not a refusal: rskafka
        // gets it, with the whole deadline.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let quiet = silent.local_addr().unwrap().to_string();
        let mixed = settings(&format!("{a},{quiet}"), Duration::from_millis(300));
        assert_eq!(
            check_security(&mixed.servers(), &mixed).await.unwrap(),
            Checked::Silent
        );
    }

    #[tokio::test]
    async fn a_refused_bootstrap_fails_after_refused_for_not_the_deadline() {
        let addr = closed_port();
        let cfg = settings(&addr, Duration::from_secs(60));
        let started = std::time::Instant::now();
        let err = connect(&cfg).await.unwrap_err();
        let took = started.elapsed();
        assert!(took >= REFUSED_FOR, "{took:?}");
        assert!(took < REFUSED_FOR * 3, "{took:?}");
        let text = err.to_string();
        assert!(matches!(err, KafkaError::Unreachable { .. }), "{text}");
        assert!(
            text.contains(&addr) && text.contains("connection refused"),
            "{text}"
        );
        // A deadline shorter than REFUSED_FOR is kept.
        let short = settings(&addr, Duration::from_secs(1));
        let started = std::time::Instant::now();
        assert!(connect(&short).await.is_err());
        assert!(started.elapsed() < REFUSED_FOR, "{:?}", started.elapsed());
    }
}
