//! Reads one partition with Fetch requests of our own, over a
//! [`BrokerConn`] to the partition's leader, as Kafka's own consumer does
//! with `isolation.level=read_committed`.
//!
//! rskafka's fetch cannot serve here: it has no isolation level, misreads
//! the control batches transactions leave, and fails on every codec left
//! out of its build, and a fetch that fails at one offset stops its reader
//! for good. So the portal's readers and `send`'s reply follower fetch
//! through a [`Fetcher`]; [`crate::kafka::record_batch`] decodes what comes back.
//! rskafka still does everything else: producing, offsets, topics.
//!
//! The leader is found with a Metadata request to a bootstrap broker, each
//! server tried within [`LOOKUP_LIMIT`] of its own, starting from the last
//! one that answered. Any error drops the connection, so the next fetch
//! finds the leader again: that covers a leader that moved
//! (`NOT_LEADER_OR_FOLLOWER` and the like) and a broker restart. A Fetch
//! that only timed out leaves its connection mid-exchange: the next fetch
//! connects to the same leader again without asking where it is.

use std::time::Duration;

use kafka_protocol::error::{ParseResponseErrorCode, ResponseError};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{BrokerId, FetchRequest, MetadataRequest, TopicName};
use kafka_protocol::protocol::{Request, StrBytes};

use crate::kafka::conn::{BrokerConn, ConnError};
use crate::kafka::record_batch::{self, AbortedTxn, Item, Reading};
use crate::kafka::{Config, KafkaError, FETCH_MAX_BYTES, LOOKUP_LIMIT};

/// Fetch v12 (Kafka 2.7 and later, still served by 4.x): isolation level,
/// aborted transactions, topics by name.
const V_FETCH: i16 = 12;
/// Metadata v9 (Kafka 2.4 and later, still served by 4.x).
const V_METADATA: i16 = 9;

/// Fetches in a row that find the same batch failing its checksum before
/// it is skipped: a failure may be a transient one, which a fetch again cures.
const CRC_ATTEMPTS: u32 = 3;

/// `isolation_level` of a read_committed consumer.
const READ_COMMITTED: i8 = 1;

/// What one fetch found.
#[derive(Debug)]
pub struct Fetched {
    /// Records and unreadable batches, in offset order.
    pub items: Vec<Item>,
    /// Where the next fetch starts: past every record read, transaction
    /// marker or aborted record dropped, and batch skipped.
    pub next_offset: i64,
    /// The partition's high watermark.
    pub high_watermark: i64,
    /// Where a read_committed reader's records end for now: the last
    /// stable offset, below the high watermark while a transaction is open;
    /// the high watermark when the broker does not say.
    pub last_stable_offset: i64,
}

/// Reads one partition; opens its connection on first use and after any error.
#[derive(Debug)]
pub struct Fetcher {
    settings: Config,
    topic: String,
    partition: i32,
    /// The connection to the partition's leader. Dropped after any error:
    /// the leader may have moved, or the connection may be mid-exchange.
    leader: Option<Leader>,
    /// Where the leader was last found. Kept when a Fetch only timed out
    /// (the leader is still the leader, its connection is just unusable),
    /// forgotten after any other error.
    leader_addr: Option<String>,
    /// The bootstrap servers, from the settings.
    servers: Vec<String>,
    /// Index in `servers` of the one to ask first: the last that answered,
    /// or the one after the last that did not.
    next_server: usize,
    /// The offset at which fetches last stopped at a batch failing its
    /// checksum, and how many in a row did.
    crc_failures: Option<(i64, u32)>,
    /// Whether a broker has shown that it serves the request versions we
    /// send; asked once per fetcher, brokers of a cluster agree.
    checked: bool,
}

#[derive(Debug)]
struct Leader {
    conn: BrokerConn,
    addr: String,
    /// Set while a request is out. A fetch abandoned part-way (its future
    /// dropped) leaves it set, and the connection is not used again.
    busy: bool,
}

impl Fetcher {
    /// A fetcher for `partition` of `topic`; connects at the first fetch.
    pub fn new(settings: &Config, topic: &str, partition: i32) -> Self {
        Self {
            settings: settings.clone(),
            topic: topic.to_string(),
            partition,
            leader: None,
            leader_addr: None,
            servers: settings.servers(),
            next_server: 0,
            crc_failures: None,
            checked: false,
        }
    }

    /// Records from `offset` on, waiting up to `max_wait` on the broker for
    /// some to arrive and `limit` beyond that for the answer. Finding the
    /// leader first, when needed, has deadlines of its own ([`LOOKUP_LIMIT`]
    /// per server), so a slow lookup does not eat the Fetch's time.
    pub async fn fetch(
        &mut self,
        offset: i64,
        max_wait: Duration,
        limit: Duration,
    ) -> Result<Fetched, KafkaError> {
        if let Err(e) = self.connect().await {
            self.leader = None;
            self.leader_addr = None;
            return Err(e);
        }
        let result = tokio::time::timeout(max_wait + limit, self.fetch_once(offset, max_wait))
            .await
            .unwrap_or(Err(KafkaError::Timeout("fetch")));
        match &result {
            Ok(_) | Err(KafkaError::OffsetOutOfRange { .. }) => {}
            Err(KafkaError::Timeout(_)) => self.leader = None,
            Err(_) => {
                self.leader = None;
                self.leader_addr = None;
            }
        }
        result
    }

    async fn fetch_once(&mut self, offset: i64, max_wait: Duration) -> Result<Fetched, KafkaError> {
        let wait_ms = i32::try_from(max_wait.as_millis()).unwrap_or(i32::MAX);
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(wait_ms)
            .with_min_bytes(1)
            .with_max_bytes(FETCH_MAX_BYTES)
            .with_isolation_level(READ_COMMITTED)
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic_name(&self.topic))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(self.partition)
                    .with_current_leader_epoch(-1)
                    .with_fetch_offset(offset)
                    .with_last_fetched_epoch(-1)
                    .with_log_start_offset(-1)
                    .with_partition_max_bytes(FETCH_MAX_BYTES)])]);
        let leader = self
            .leader
            .as_mut()
            .ok_or(KafkaError::Timeout("leader lookup"))?;
        leader.busy = true;
        let response = leader
            .conn
            .call("Fetch", &request, V_FETCH, max_wait)
            .await
            .map_err(|e| conn_err(e, "fetch", &leader.addr))?;
        leader.busy = false;
        if let Some(e) = response.error_code.err() {
            return Err(broker_err("fetch", e));
        }
        let data = response
            .responses
            .into_iter()
            .filter(|t| t.topic.as_str() == self.topic)
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index == self.partition)
            .ok_or_else(|| KafkaError::Protocol {
                action: "fetch",
                detail: format!(
                    "the broker's answer leaves out partition {} of {}",
                    self.partition, self.topic
                ),
            })?;
        match data.error_code.err() {
            None => {}
            Some(ResponseError::OffsetOutOfRange) => {
                return Err(KafkaError::OffsetOutOfRange { offset })
            }
            Some(e) => return Err(broker_err("fetch", e)),
        }
        let aborted: Vec<AbortedTxn> = data
            .aborted_transactions
            .unwrap_or_default()
            .iter()
            .map(|t| AbortedTxn {
                producer_id: t.producer_id.0,
                first_offset: t.first_offset,
            })
            .collect();
        let high_watermark = data.high_watermark;
        let last_stable_offset = if data.last_stable_offset < 0 {
            high_watermark
        } else {
            data.last_stable_offset
        };
        let records = data.records.unwrap_or_default();
        if records.is_empty() {
            return Ok(Fetched {
                items: Vec::new(),
                next_offset: offset,
                high_watermark,
                last_stable_offset,
            });
        }
        let reading = Reading {
            high_watermark,
            skip_crc_failure: self
                .crc_failures
                .is_some_and(|(at, n)| at == offset && n + 1 >= CRC_ATTEMPTS),
        };
        // Decompressing up to 16 MiB holds a thread for a while: not one of
        // the runtime's.
        let decoded = tokio::task::spawn_blocking(move || {
            record_batch::decode(records, offset, &aborted, reading)
        })
        .await
        .map_err(|e| KafkaError::Protocol {
            action: "fetch",
            detail: format!("decoding records failed: {e}"),
        })?
        .map_err(|detail| KafkaError::Protocol {
            action: "fetch",
            detail,
        })?;
        self.crc_failures = decoded.crc_failed_at.map(|at| {
            let n = match self.crc_failures {
                Some((before, n)) if before == at => n + 1,
                _ => 1,
            };
            log::warn!(
                "{}[{}]: the record batch at offset {at} fails its CRC32C check ({n} of {CRC_ATTEMPTS} fetches before it is skipped); fetching it again",
                self.topic,
                self.partition
            );
            (at, n)
        });
        if decoded.dropped > 0 {
            log::debug!(
                "{}[{}]: dropped {} transaction markers and records of aborted transactions",
                self.topic,
                self.partition,
                decoded.dropped
            );
        }
        Ok(Fetched {
            items: decoded.items,
            next_offset: decoded.next_offset,
            high_watermark,
            last_stable_offset,
        })
    }

    /// Opens the connection to the partition's leader if there is none:
    /// straight to the leader last found when only a Fetch timed out, else
    /// through the bootstrap servers.
    async fn connect(&mut self) -> Result<(), KafkaError> {
        if self.leader.as_ref().is_some_and(|l| !l.busy) {
            return Ok(());
        }
        self.leader = None;
        let limit = self.lookup_limit();
        if let Some(addr) = self.leader_addr.take() {
            match tokio::time::timeout(limit, open(&self.settings, &addr)).await {
                Ok(Ok(conn)) => {
                    self.leader = Some(Leader {
                        conn,
                        addr: addr.clone(),
                        busy: false,
                    });
                    self.leader_addr = Some(addr);
                    return Ok(());
                }
                Ok(Err(e)) => log::debug!("{}[{}]: {e}", self.topic, self.partition),
                Err(_) => log::debug!(
                    "{}[{}]: the leader at {addr} did not answer in {} s",
                    self.topic,
                    self.partition,
                    limit.as_secs()
                ),
            }
        }
        let found = self.find_leader(limit).await?;
        self.leader_addr = Some(found.addr.clone());
        self.leader = Some(found);
        Ok(())
    }

    fn lookup_limit(&self) -> Duration {
        self.settings.timeout.min(LOOKUP_LIMIT)
    }

    /// Asks the bootstrap servers in turn, from `next_server` on, where the
    /// partition's leader is, and connects to it; `limit` for each server.
    async fn find_leader(&mut self, limit: Duration) -> Result<Leader, KafkaError> {
        let count = self.servers.len();
        let first = self.next_server;
        let mut last = None;
        for i in 0..count {
            let index = (first + i) % count;
            let addr = self.servers[index].clone();
            let found = tokio::time::timeout(limit, self.leader_via(&addr))
                .await
                .unwrap_or_else(|_| {
                    Err(KafkaError::Unreachable {
                        servers: addr.clone(),
                        detail: format!(
                            "finding the leader of {}[{}] took more than {} s",
                            self.topic,
                            self.partition,
                            limit.as_secs()
                        ),
                    })
                });
            match found {
                Ok(leader) => {
                    self.next_server = index;
                    return Ok(leader);
                }
                // Another server may know the new leader already.
                Err(e) if e.is_connection_problem() || e.is_startup_state() => {
                    log::debug!("{}[{}]: {e}", self.topic, self.partition);
                    self.next_server = (index + 1) % count;
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| KafkaError::Unreachable {
            servers: self.settings.bootstrap_servers.clone(),
            detail: "no bootstrap server given".into(),
        }))
    }

    async fn leader_via(&mut self, addr: &str) -> Result<Leader, KafkaError> {
        let mut conn = open(&self.settings, addr).await?;
        if !self.checked {
            negotiate(&mut conn, addr).await?;
            self.checked = true;
        }
        let request = MetadataRequest::default()
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(topic_name(&self.topic)))
            ]))
            .with_allow_auto_topic_creation(false);
        let meta = conn
            .call("Metadata", &request, V_METADATA, Duration::ZERO)
            .await
            .map_err(|e| conn_err(e, "metadata lookup", addr))?;
        let topic = meta
            .topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.as_str() == self.topic))
            .ok_or_else(|| KafkaError::MissingTopic(self.topic.clone()))?;
        match topic.error_code.err() {
            None => {}
            Some(ResponseError::UnknownTopicOrPartition) => {
                return Err(KafkaError::MissingTopic(self.topic.clone()))
            }
            Some(e) => return Err(broker_err("metadata lookup", e)),
        }
        let partition = topic
            .partitions
            .iter()
            .find(|p| p.partition_index == self.partition)
            .ok_or_else(|| KafkaError::Protocol {
                action: "metadata lookup",
                detail: format!("topic {} has no partition {}", self.topic, self.partition),
            })?;
        if let Some(e) = partition.error_code.err() {
            return Err(broker_err("metadata lookup", e));
        }
        let leader = partition.leader_id;
        let broker = meta
            .brokers
            .iter()
            .find(|b| b.node_id == leader)
            .ok_or_else(|| KafkaError::Unreachable {
                servers: addr.to_string(),
                detail: format!(
                    "partition {} of {} has no leader available (broker {})",
                    self.partition, self.topic, leader.0
                ),
            })?;
        let leader_addr = join_host_port(broker.host.as_str(), broker.port);
        let conn = if leader_addr == addr {
            conn
        } else {
            open(&self.settings, &leader_addr).await?
        };
        log::debug!(
            "{}[{}]: reading from the leader at {leader_addr}",
            self.topic,
            self.partition
        );
        Ok(Leader {
            conn,
            addr: leader_addr,
            busy: false,
        })
    }
}

/// A connection to `addr`, secured as `settings` say.
async fn open(settings: &Config, addr: &str) -> Result<BrokerConn, KafkaError> {
    BrokerConn::open(
        addr,
        &settings.client_id,
        settings.timeout,
        &settings.security,
    )
    .await
    .map_err(|e| conn_err(e, "connecting", addr))
}

/// Checks that the broker serves the Fetch and Metadata versions we send.
async fn negotiate(conn: &mut BrokerConn, addr: &str) -> Result<(), KafkaError> {
    let resp = conn
        .api_versions()
        .await
        .map_err(|e| conn_err(e, "version check", addr))?;
    if let Some(e) = resp.error_code.err() {
        return Err(broker_err("version check", e));
    }
    for (api, key, version) in [
        ("Fetch", FetchRequest::KEY, V_FETCH),
        ("Metadata", MetadataRequest::KEY, V_METADATA),
    ] {
        let served = resp
            .api_keys
            .iter()
            .find(|k| k.api_key == key)
            .map(|k| (k.min_version, k.max_version));
        if !served.is_some_and(|(min, max)| (min..=max).contains(&version)) {
            let (min, max) = served.unwrap_or((-1, -1));
            return Err(KafkaError::Protocol {
                action: "version check",
                detail: format!(
                    "the broker does not serve {api} version {version} (it serves {min}..{max}); KafkaSend needs Kafka 3.0 or later"
                ),
            });
        }
    }
    Ok(())
}

fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

/// `host:port`, with brackets around an IPv6 host.
fn join_host_port(host: &str, port: i32) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn broker_err(action: &'static str, error: ResponseError) -> KafkaError {
    KafkaError::Broker { action, error }
}

fn conn_err(e: ConnError, action: &'static str, addr: &str) -> KafkaError {
    match e {
        ConnError::Io(io) => KafkaError::Unreachable {
            servers: addr.to_string(),
            detail: format!("{action}: {io}"),
        },
        ConnError::Timeout(what) => KafkaError::Timeout(what),
        ConnError::Codec(detail) => KafkaError::Protocol { action, detail },
        other => KafkaError::Security(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_hosts_get_brackets() {
        assert_eq!(join_host_port("10.0.0.1", 9092), "10.0.0.1:9092");
        assert_eq!(join_host_port("broker-1", 9092), "broker-1:9092");
        assert_eq!(join_host_port("::1", 9092), "[::1]:9092");
    }
}
