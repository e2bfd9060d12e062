//! The portal: consumes the request topic, assembles jobs, calls the API and
//! streams each response back to the partition its client listens on.
//!
//! One task reads each request partition and feeds its own [`Assembler`];
//! completed jobs run as tasks of their own, at most
//! `PORTAL_MAX_CONCURRENT_JOBS` REST calls at once, so a slow call never holds
//! up consumption or another job. Per partition, [`Progress`] knows the offset
//! below which every job has been fully answered.

pub mod admin;
pub mod assembler;
pub mod http_dispatch;
pub mod ledger;
pub mod policy;
mod settings;

pub use settings::{GroupConfig, Settings, StartFrom};

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use tokio::sync::{watch, Notify, Semaphore};

use crate::kafka::fetcher::Fetcher;
use crate::kafka::group::{Assignment, Beat, GroupError, GroupSettings, Member};
use crate::kafka::partitioner::partition_for_key;
use crate::kafka::record_batch::{Item, Unreadable};
use crate::kafka::window::{ReplyWriter, Unsent};
use crate::kafka::{self, Cluster, KafkaError, Partition, PartitionCache, RecordAndOffset};
use crate::portal::admin::{Metrics, Readiness};
use crate::portal::assembler::{Assembler, Budgets, CompletedJob, FailedJob, Outcome};
use crate::portal::http_dispatch::token_cache::TokenCache;
use crate::portal::http_dispatch::Dispatcher;
use crate::portal::ledger::{decode_metadata, Progress};
use crate::protocol::chunker::Chunker;
use crate::protocol::signing::Verifier;
use crate::protocol::wire::{self, Body, Frame, JobId, ResponseStart};
use crate::protocol::{ErrorCategory, Failure};

/// How long a partial response chunk waits, from its first bytes, before it
/// is sent anyway, so a slowly streaming API still reaches the client promptly.
const FLUSH_AFTER: Duration = Duration::from_millis(200);

/// How long a response's start record waits for the first body bytes, so
/// that a small response leaves in one produce request.
const START_HOLD: Duration = Duration::from_millis(20);

/// How long a fetch waits on the broker for new records.
const FETCH_WAIT: Duration = Duration::from_millis(500);

/// How long a reader's fetches may keep failing at one offset before it
/// counts as stuck: `/readyz` names its partition (and an ERROR is logged)
/// until it moves again. Routine trouble heals sooner: a leader election or
/// a broker restart moves leadership within seconds, and the reader's next
/// fetch after it finds the new leader. A reader stuck this long is still
/// reported well within a client's default `--timeout` (300 s).
const STALLED_AFTER: Duration = Duration::from_secs(15);

/// Most bytes of response headers relayed.
const MAX_RESPONSE_HEADER_BYTES: usize = 64 * 1024;

/// Response headers not relayed: they describe the hop, not the content.
const HOP_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
];

/// Counts running job tasks so shutdown can wait for them.
#[derive(Debug, Default)]
struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

struct InFlightGuard(Arc<InFlight>);

impl InFlight {
    fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(Arc::clone(self))
    }

    async fn wait_idle(&self, grace: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let notified = self.idle.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.count.load(Ordering::SeqCst) == 0;
            }
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// What every task of a portal shares.
struct Ctx {
    cfg: Settings,
    cluster: Cluster,
    dispatcher: Dispatcher,
    replies: PartitionCache,
    response_partitions: i32,
    /// REST calls at once.
    call_permits: Arc<Semaphore>,
    /// Completed jobs waiting for or holding a call permit; bounds the spool
    /// files held by queued jobs. The reader waits when none is free.
    queue_permits: Arc<Semaphore>,
    in_flight: Arc<InFlight>,
    /// Progress of every request partition this portal has read, kept across
    /// rebalances so a job still running from an earlier generation is known
    /// when its partition comes back, and still commits when it ends.
    progress: Mutex<BTreeMap<i32, Arc<Mutex<Progress>>>>,
    /// Disk all spool files may take together (PORTAL_MAX_SPOOL_BYTES) and
    /// memory all requests may take together
    /// (PORTAL_MAX_ASSEMBLY_MEMORY_BYTES), whichever partition they came on.
    budgets: Budgets,
    /// Checks request signatures when `PORTAL_TRUSTED_KEYS` is set.
    verifier: Option<Verifier>,
    /// Partitions of the request topic, to tell where a sender puts a job.
    request_partitions: i32,
    /// Counters the admin listener serves (kept whether it runs or not).
    metrics: Arc<Metrics>,
    /// What `/readyz` answers.
    readiness: Arc<Readiness>,
}

impl Ctx {
    fn progress_of(&self, partition: i32) -> Arc<Mutex<Progress>> {
        let mut map = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(map.entry(partition).or_default())
    }
}

/// Runs a portal until `shutdown` completes, then lets in-flight jobs finish.
pub async fn run(cfg: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let budgets = Budgets::new(&cfg.limits);
    let metrics = Arc::new(Metrics::new(budgets.clone()));
    let readiness = Arc::new(Readiness::default());
    // Up before Kafka, so /healthz answers and /readyz says what is missing.
    let _admin = match cfg.admin_listen {
        Some(addr) => {
            let server =
                crate::portal::admin::start(addr, Arc::clone(&metrics), Arc::clone(&readiness))
                    .await?;
            log::info!(
                "admin listener on http://{} (/healthz, /readyz, /metrics)",
                server.local_addr()
            );
            Some(server)
        }
        None => None,
    };
    let kcfg = &cfg.kafka;
    let cluster = kafka::connect(&kcfg.settings("kafkasend-portal")).await?;
    let request_partitions = cluster
        .ensure_topic(
            &kcfg.request_topic,
            cfg.topic_partitions,
            cfg.replication_factor,
        )
        .await?;
    let response_partitions = cluster
        .ensure_topic(
            &kcfg.response_topic,
            cfg.topic_partitions,
            cfg.replication_factor,
        )
        .await?;
    readiness.set_connected();

    let http = crate::portal::http_dispatch::client::build_client(&cfg.api_tls);
    let tokens = cfg
        .oauth
        .clone()
        .map(|o| Arc::new(TokenCache::new(o, http.clone())));
    if let Some(t) = &tokens {
        metrics.watch_tokens(Arc::clone(t));
    }
    if tokens.is_none() {
        log::warn!("OAuth2 is off (PORTAL_USE_OAUTH=false): calling the API without a token");
    }
    let dispatcher = Dispatcher::new(
        http,
        &cfg.target_api_url,
        tokens,
        cfg.request_timeout,
        &cfg.policy.allowed_headers,
        cfg.idempotency_header.as_deref(),
    );
    cfg.policy.announce();
    let verifier = cfg.trusted_keys.clone().map(|trusted| {
        log::info!(
            "accepting only signed requests; trusted keys (PORTAL_TRUSTED_KEYS): {}",
            trusted.names().join(", ")
        );
        Verifier::new(trusted, &kcfg.request_topic)
    });
    let ctx = Arc::new(Ctx {
        verifier,
        request_partitions,
        replies: PartitionCache::new(cluster.clone(), kcfg.response_topic.clone()),
        call_permits: Arc::new(Semaphore::new(cfg.max_concurrent_jobs)),
        queue_permits: Arc::new(Semaphore::new(cfg.max_concurrent_jobs + 256)),
        in_flight: Arc::new(InFlight::default()),
        progress: Mutex::new(BTreeMap::new()),
        budgets,
        metrics,
        readiness,
        response_partitions,
        dispatcher,
        cluster,
        cfg,
    });

    let mut member = Member::new(GroupSettings {
        bootstrap: ctx
            .cfg
            .kafka
            .bootstrap_servers
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        group_id: ctx.cfg.group.group_id.clone(),
        client_id: "kafkasend-portal".into(),
        session_timeout: ctx.cfg.group.session_timeout,
        rebalance_timeout: ctx.cfg.group.rebalance_timeout,
        heartbeat_interval: ctx.cfg.group.session_timeout / 5,
        // A hung group request must not outlast the session it protects.
        op_timeout: ctx.cfg.kafka.timeout.min(ctx.cfg.group.session_timeout / 3),
        security: ctx.cfg.kafka.security.clone(),
    });
    tokio::pin!(shutdown);
    let mut announced = false;
    let mut failures = 0u32;
    loop {
        let topic = ctx.cfg.kafka.request_topic.clone();
        let joined = tokio::select! {
            _ = &mut shutdown => break,
            r = member.join(&topic, request_partitions) => r,
        };
        let assignment = match joined {
            Ok(a) => {
                failures = 0;
                a
            }
            Err(e) if e.is_fatal() => {
                ctx.in_flight.wait_idle(ctx.cfg.group.shutdown_grace).await;
                return Err(e.into());
            }
            Err(e) => {
                failures += 1;
                let wait = Duration::from_millis(250 * u64::from(failures.min(20)));
                log::warn!(
                    "joining group {} failed: {e}; retrying in {} ms",
                    member.group_id(),
                    wait.as_millis()
                );
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
        };
        log::info!(
            "group {} generation {}: this portal reads partitions {:?} of {topic}",
            member.group_id(),
            assignment.generation,
            assignment.partitions
        );
        let stop = match serve_generation(
            &ctx,
            &mut member,
            &assignment,
            &mut shutdown,
            &mut announced,
        )
        .await
        {
            Ok(stop) => stop,
            Err(e) => {
                log::warn!("generation {} ended: {e:#}", assignment.generation);
                // Do not make the whole group rebalance in a tight loop.
                tokio::time::sleep(Duration::from_secs(1)).await;
                GenerationEnd::Rebalance
            }
        };
        if stop == GenerationEnd::Shutdown {
            if let Err(e) = member.leave().await {
                log::warn!("leaving group {} failed: {e}", member.group_id());
            }
            log::info!("left group {}; bye", member.group_id());
            return Ok(());
        }
    }
    // Shut down while joining or between generations: nothing is assigned,
    // so nothing to commit; jobs still running get the grace period, and the
    // group hears at once that this member is gone.
    let grace = ctx.cfg.group.shutdown_grace;
    ctx.in_flight.wait_idle(grace).await;
    match tokio::time::timeout(ctx.cfg.group.session_timeout, member.leave()).await {
        Ok(Ok(())) => log::info!("left group {}; bye", member.group_id()),
        Ok(Err(e)) => log::warn!("leaving group {} failed: {e}", member.group_id()),
        Err(_) => log::warn!("leaving group {} timed out", member.group_id()),
    }
    Ok(())
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GenerationEnd {
    Shutdown,
    Rebalance,
}

/// Reads the assigned partitions, heartbeats and commits until a rebalance or
/// shutdown; then stops reading, lets jobs in flight finish within the grace
/// period, and commits.
async fn serve_generation(
    ctx: &Arc<Ctx>,
    member: &mut Member,
    assignment: &Assignment,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    announced: &mut bool,
) -> anyhow::Result<GenerationEnd> {
    let topic = ctx.cfg.kafka.request_topic.clone();
    let committed = member.fetch_offsets(&topic, &assignment.partitions).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) =
        tokio::sync::mpsc::channel::<i32>(assignment.partitions.len().max(1));
    let mut readers = tokio::task::JoinSet::new();
    for &p in &assignment.partitions {
        let c = committed.get(&p);
        let start = c.and_then(|c| c.offset);
        let progress = ctx.progress_of(p);
        if let (Some(base), Some(c)) = (start, c) {
            lock(&progress).remember_answered(decode_metadata(base, &c.metadata));
        }
        readers.spawn(read_partition(
            Arc::clone(ctx),
            p,
            start,
            progress,
            stop_rx.clone(),
            ready_tx.clone(),
        ));
    }
    drop(ready_tx);
    // Only partitions whose reader has positioned itself are committed:
    // before that their progress holds no position of this generation.
    let mut ready_parts: Vec<i32> = Vec::new();
    let mut all_ready = false;
    let mut heartbeat = tokio::time::interval(member.heartbeat_interval());
    let mut commit_tick = tokio::time::interval(COMMIT_EVERY);
    let end = loop {
        tokio::select! {
            _ = &mut *shutdown => break GenerationEnd::Shutdown,
            r = ready_rx.recv(), if !all_ready => match r {
                Some(p) => {
                    ready_parts.push(p);
                    ctx.readiness.set_partitions(ready_parts.len());
                    // Pin the start position at once: without a commit, a
                    // portal taking over after a crash would start at the end.
                    if let Err(e) = commit(ctx, member, &[p]).await {
                        log::warn!("committing the start of partition {p} failed: {e}");
                    }
                    if ready_parts.len() == assignment.partitions.len() && !*announced {
                        *announced = true;
                        log::info!(
                            "portal ready: group {} reads {:?} of {} -> {}, responses on {} ({} partitions)",
                            member.group_id(),
                            assignment.partitions,
                            topic,
                            ctx.cfg.target_api_url,
                            ctx.cfg.kafka.response_topic,
                            ctx.response_partitions
                        );
                    }
                }
                None => {
                    all_ready = true;
                    if assignment.partitions.is_empty() && !*announced {
                        *announced = true;
                        log::info!("portal ready: group {} assigned no partition to this portal (more portals than partitions)", member.group_id());
                    }
                }
            },
            _ = heartbeat.tick() => match member.heartbeat().await {
                Ok(Beat::Ok) => {}
                Ok(Beat::Rebalance) => break GenerationEnd::Rebalance,
                Err(e) if e.needs_rejoin() => {
                    log::info!("group {}: {e}; rejoining", member.group_id());
                    break GenerationEnd::Rebalance;
                }
                Err(e) => log::warn!("heartbeat to group {} failed: {e}; retrying", member.group_id()),
            },
            _ = commit_tick.tick() => {
                if let Err(e) = commit(ctx, member, &ready_parts).await {
                    if e.needs_rejoin() {
                        break GenerationEnd::Rebalance;
                    }
                    log::warn!("committing offsets failed: {e}");
                }
            }
            Some(r) = readers.join_next() => match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    log::warn!("a request reader stopped: {e}; rejoining");
                    break GenerationEnd::Rebalance;
                }
                Err(e) => {
                    log::error!("a request reader failed: {e}; rejoining");
                    break GenerationEnd::Rebalance;
                }
            },
        }
    };
    // Revoke: stop starting jobs, let those in flight finish (heartbeating
    // meanwhile, so the coordinator does not drop us), then commit.
    let _ = stop_tx.send(true);
    ctx.readiness.set_partitions(0);
    let grace = ctx.cfg.group.shutdown_grace;
    if end == GenerationEnd::Shutdown {
        log::info!(
            "shutting down: no new jobs; waiting up to {} s for jobs in flight",
            grace.as_secs()
        );
    }
    let drained = async {
        while readers.join_next().await.is_some() {}
        ctx.in_flight.wait_idle(grace).await
    };
    tokio::pin!(drained);
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    let all_done = loop {
        tokio::select! {
            done = &mut drained => break done,
            _ = &mut deadline => break false,
            _ = heartbeat.tick() => {
                // Only keeps the session alive; a rebalance is handled after.
                let _ = member.heartbeat().await;
            }
        }
    };
    if !all_done {
        log::warn!(
            "{} jobs still in flight after {} s; the next owner of their partitions will run them again",
            ctx.in_flight.count.load(Ordering::SeqCst),
            grace.as_secs()
        );
    }
    while let Ok(p) = ready_rx.try_recv() {
        ready_parts.push(p);
    }
    if let Err(e) = commit(ctx, member, &ready_parts).await {
        log::warn!(
            "final commit of generation {} failed: {e}",
            assignment.generation
        );
    }
    Ok(end)
}

/// How often committed offsets catch up with answered jobs.
const COMMIT_EVERY: Duration = Duration::from_secs(1);

async fn commit(ctx: &Ctx, member: &mut Member, partitions: &[i32]) -> Result<(), GroupError> {
    let offsets: Vec<(i32, i64, String)> = partitions
        .iter()
        .map(|&p| {
            let progress = ctx.progress_of(p);
            let (offset, metadata) = lock(&progress).commit_point();
            (p, offset, metadata)
        })
        .filter(|(_, offset, _)| *offset >= 0)
        .collect();
    member.commit(&ctx.cfg.kafka.request_topic, &offsets).await
}

async fn read_partition(
    ctx: Arc<Ctx>,
    partition: i32,
    committed: Option<i64>,
    progress: Arc<Mutex<Progress>>,
    mut stop: watch::Receiver<bool>,
    ready: tokio::sync::mpsc::Sender<i32>,
) -> Result<(), KafkaError> {
    let topic = ctx.cfg.kafka.request_topic.clone();
    let limit = ctx.cfg.kafka.timeout;
    let pc = ctx.cluster.partition(&topic, partition).await?;
    let mut offset = match (committed, ctx.cfg.start_from) {
        (Some(o), _) => o,
        (None, StartFrom::Latest) => pc.end_offset().await?,
        (None, StartFrom::Earliest) => pc.start_offset().await?,
    };
    log::debug!("reading {topic}[{partition}] from offset {offset}");
    lock(&progress).set_start(offset);
    let _ = ready.send(partition).await;
    drop(ready);

    let mut held = ReaderJobs {
        asm: Assembler::with_budgets(ctx.cfg.limits.clone(), ctx.budgets.clone()),
        progress: Arc::clone(&progress),
    };
    let mut last_sweep = Instant::now();
    let mut failures = 0u32;
    // When fetches started failing at `offset`, and whether that is now a stall.
    let mut failing_since: Option<Instant> = None;
    let mut stalled = false;
    let mut gauges = ReaderGauges {
        metrics: Arc::clone(&ctx.metrics),
        readiness: Arc::clone(&ctx.readiness),
        partition,
        assembling: 0,
    };
    let mut fetcher = Fetcher::new(
        &ctx.cfg.kafka.settings("kafkasend-portal"),
        &topic,
        partition,
    );
    loop {
        let fetched = tokio::select! {
            _ = stop.changed() => break,
            r = fetcher.fetch(offset, FETCH_WAIT, limit) => r,
        };
        let fetched = match fetched {
            Ok(r) => {
                if stalled {
                    log::info!("{topic}[{partition}]: reading again from offset {offset}");
                    ctx.readiness.clear_stalled(partition);
                }
                failures = 0;
                failing_since = None;
                stalled = false;
                r
            }
            Err(KafkaError::OffsetOutOfRange { .. }) => {
                // Below the log start: records were deleted, go on from the
                // oldest kept. Past the end: the topic was truncated or
                // recreated; replaying it could repeat old calls, so skip to the end.
                let earliest = pc.start_offset().await;
                let next = match earliest {
                    Ok(earliest) if offset < earliest => Ok(earliest),
                    Ok(_) => pc.end_offset().await,
                    Err(e) => Err(e),
                };
                let next = match next {
                    Ok(n) => n,
                    Err(e) => {
                        log::warn!("{topic}[{partition}]: {e}; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                log::warn!(
                    "{topic}[{partition}]: offset {offset} is out of range; continuing at {next}"
                );
                offset = next;
                continue;
            }
            Err(e) => {
                ctx.metrics.fetch_error();
                failures = failures.saturating_add(1);
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= STALLED_AFTER {
                    report_stalled(&ctx, &pc, partition, offset, since, !stalled, &e).await;
                    stalled = true;
                }
                let wait = Duration::from_millis(200 * u64::from(failures.min(25)));
                log::warn!(
                    "{topic}[{partition}]: {e}; retrying in {} ms",
                    wait.as_millis()
                );
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        for item in fetched.items {
            match item {
                Item::Record(rec) => {
                    handle_record(&ctx, &mut held.asm, &progress, partition, rec, &stop).await;
                }
                Item::Unreadable(batch) => {
                    skip_unreadable(&ctx, &mut held.asm, &progress, partition, batch, &stop).await;
                }
            }
        }
        offset = fetched.next_offset;
        // A read_committed reader reads up to the last stable offset: what
        // lies past it (an open transaction and all after it) is not yet
        // readable, so it counts neither as lag nor against being caught up.
        let end = fetched.last_stable_offset;
        lock(&progress).set_next(offset);
        ctx.metrics.partition_position(partition, offset, end);
        // Judge idleness only once caught up: records still unread in Kafka
        // (say, while this reader waited for a queue slot) are not idleness.
        let caught_up = offset >= end;
        if caught_up && last_sweep.elapsed() >= Duration::from_secs(1) {
            last_sweep = Instant::now();
            for failed in held.asm.expire(Instant::now()) {
                log::warn!("job {}: {}", failed.job, failed.message);
                spawn_error_reply(&ctx, &progress, failed, &stop).await;
            }
        }
        ctx.metrics
            .assembling_changed(gauges.assembling, held.asm.len());
        gauges.assembling = held.asm.len();
    }
    drop(held);
    log::debug!(
        "{topic}[{partition}] stopped at offset {offset}; answered below {}",
        lock(&progress).committable()
    );
    Ok(())
}

/// The jobs a reader is assembling. However the reader ends (stopped,
/// failed, or aborted at the end of a grace period), they go with it:
/// whoever reads the partition next starts them again from their first record.
struct ReaderJobs {
    asm: Assembler,
    progress: Arc<Mutex<Progress>>,
}

impl Drop for ReaderJobs {
    fn drop(&mut self) {
        let offsets: Vec<i64> = self.asm.first_offsets().collect();
        lock(&self.progress).forget(offsets);
    }
}

/// A reader's share of the metrics (its partition's lag, its jobs being
/// assembled) and of readiness (a stall), taken out however the reader ends.
struct ReaderGauges {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    partition: i32,
    assembling: usize,
}

impl Drop for ReaderGauges {
    fn drop(&mut self) {
        self.metrics.assembling_changed(self.assembling, 0);
        self.metrics.partition_released(self.partition);
        self.readiness.clear_stalled(self.partition);
    }
}

/// A reader whose fetches keep failing at one offset says so on `/readyz`
/// (logged as an ERROR the `first` time), and its lag metric keeps
/// following the partition's end (read with ListOffsets, which does not go
/// through the failing fetch).
async fn report_stalled(
    ctx: &Ctx,
    pc: &Partition,
    partition: i32,
    offset: i64,
    since: Instant,
    first: bool,
    e: &KafkaError,
) {
    let topic = &ctx.cfg.kafka.request_topic;
    let why = format!(
        "no progress past offset {offset} in {} s: {e}",
        since.elapsed().as_secs()
    );
    if first {
        log::error!("{topic}[{partition}]: {why}");
    }
    ctx.readiness.set_stalled(partition, why);
    match pc.end_offset().await {
        Ok(end) => ctx.metrics.partition_position(partition, offset, end),
        Err(e) => log::debug!("{topic}[{partition}]: end offset: {e}"),
    }
}

/// A batch the reader could not read is logged, counted and passed over.
/// A job being assembled that had a record in it fails now, with an error
/// reply, instead of at its idle timeout; so does a job whose start record
/// was in it, when that record's reply-to header is still legible (else its
/// client waits out its timeout: nothing says where to answer).
async fn skip_unreadable(
    ctx: &Arc<Ctx>,
    asm: &mut Assembler,
    progress: &Arc<Mutex<Progress>>,
    partition: i32,
    batch: Unreadable,
    stop: &watch::Receiver<bool>,
) {
    log::error!(
        "{}[{partition}] offsets {}..={}: {}; skipped",
        ctx.cfg.kafka.request_topic,
        batch.first_offset,
        batch.last_offset,
        batch.detail
    );
    ctx.metrics
        .records_skipped(batch.reason.label(), batch.records());
    let jobs = batch
        .keys
        .iter()
        .filter_map(|k| Some((k, std::str::from_utf8(k).ok()?.parse::<JobId>().ok()?)));
    for (key, job) in jobs {
        let message = format!("a record of this request is unreadable: {}", batch.detail);
        let new = !asm.knows(&job);
        if let Some(failed) = asm.abort(job, ErrorCategory::Integrity, message.clone()) {
            spawn_error_reply(ctx, progress, failed, stop).await;
            continue;
        }
        // Its start record was in the batch: answer where its reply-to
        // header, if still legible, says, as for a start that cannot be decoded.
        let reply_to = batch
            .reply_to
            .iter()
            .filter(|(k, _)| k == key)
            .find_map(|(_, to)| wire::parse_reply_to(to));
        let answered = lock(progress).known(batch.first_offset);
        if let (true, false, Some((reply_topic, reply_partition))) = (new, answered, reply_to) {
            lock(progress).add(batch.first_offset);
            let failed = FailedJob {
                job,
                reply_topic,
                reply_partition,
                first_offset: batch.first_offset,
                category: ErrorCategory::Integrity,
                message,
            };
            spawn_error_reply(ctx, progress, failed, stop).await;
        }
    }
}

fn lock(p: &Mutex<Progress>) -> std::sync::MutexGuard<'_, Progress> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

async fn handle_record(
    ctx: &Arc<Ctx>,
    asm: &mut Assembler,
    progress: &Arc<Mutex<Progress>>,
    partition: i32,
    rec: RecordAndOffset,
    stop: &watch::Receiver<bool>,
) {
    let offset = rec.offset;
    let Some(value) = rec.record.value.as_deref() else {
        log::warn!("partition {partition} offset {offset}: record without a value; skipped");
        ctx.metrics.records_skipped("not_kafkasend", 1);
        return;
    };
    let (frame, payload) = match wire::decode(value) {
        Ok(x) => x,
        Err(e) => {
            log::warn!("partition {partition} offset {offset}: {e}; skipped");
            ctx.metrics.records_skipped("not_kafkasend", 1);
            // A broken record of a job being assembled dooms that job: say so now.
            let job = job_of(&rec);
            if let Some(failed) = job.and_then(|j| {
                asm.abort(
                    j,
                    ErrorCategory::Integrity,
                    format!("a record of this request is unreadable: {e}"),
                )
            }) {
                spawn_error_reply(ctx, progress, failed, stop).await;
            } else {
                answer_undecodable(ctx, progress, &rec, e, stop).await;
            }
            return;
        }
    };
    if rec.record.key.as_deref() != Some(frame.job.key().as_slice()) {
        log::warn!(
            "job {}: record key does not match (partition {partition} offset {offset}); skipped",
            frame.job
        );
        return;
    }
    let is_start = matches!(frame.body, Body::RequestStart(_));
    if is_start && lock(progress).known(offset) {
        // Running since an earlier generation, or answered by an earlier
        // owner of this partition: never call the API for it again.
        log::debug!("job {}: already running or answered; skipped", frame.job);
        asm.skip(frame.job);
        return;
    }
    let Some(signed_digest) =
        check_signature(ctx, asm, progress, partition, &rec, &frame, stop).await
    else {
        return;
    };
    let job = frame.job;
    let outcome = match &frame.body {
        // A start of a job already assembling or finished is the assembler's
        // to judge (a duplicate, or a conflicting repeat); only a new job
        // meets the policy, so a refusal never touches another job's records.
        Body::RequestStart(start) if !asm.knows(&frame.job) => {
            match ctx.cfg.policy.check(frame.job, start) {
                Ok(()) => asm.accept(frame, payload, offset, Instant::now()),
                Err(refusal) => {
                    asm.skip(frame.job);
                    Outcome::Failed(FailedJob {
                        job: frame.job,
                        reply_topic: start.reply_topic.clone(),
                        reply_partition: start.reply_partition,
                        first_offset: offset,
                        category: refusal.category,
                        message: refusal.message,
                    })
                }
            }
        }
        _ => asm.accept(frame, payload, offset, Instant::now()),
    };
    // Track this offset only when it starts the job the outcome is about:
    // a repeated start fails the job that began at an earlier offset.
    let starts_job = match &outcome {
        Outcome::Pending => true,
        Outcome::Complete(c) => c.first_offset == offset,
        Outcome::Failed(f) => f.first_offset == offset,
        Outcome::Ignored(_) | Outcome::Stray(_) => false,
    };
    if let (Some(digest), Outcome::Pending) = (signed_digest, &outcome) {
        asm.expect_digest(job, digest);
    }
    if is_start && starts_job {
        lock(progress).add(offset);
    }
    match outcome {
        Outcome::Pending if is_start => {
            log::debug!("job {job}: receiving a request (partition {partition} offset {offset})");
        }
        Outcome::Pending => {}
        Outcome::Ignored(why) => log::debug!("partition {partition} offset {offset}: {why}"),
        Outcome::Stray(what) => log::warn!(
            "partition {partition} offset {offset}: ignoring job {job}: {what} (not a request, or one answered before this portal took the partition over); its later records are ignored quietly"
        ),
        Outcome::Failed(failed) => {
            log::warn!("job {}: {}", failed.job, failed.message);
            spawn_error_reply(ctx, progress, failed, stop).await;
        }
        Outcome::Complete(job) => {
            // Backpressure: wait here, not in memory, when too many jobs queue.
            let Some(queued) = queue_slot(ctx, progress, job.first_offset, stop).await else {
                return;
            };
            log::info!(
                "job {}: {} {} ({} bytes) assembled",
                job.job,
                job.start.method,
                job.start.path,
                job.body.len()
            );
            let ctx2 = Arc::clone(ctx);
            let progress = Arc::clone(progress);
            let guard = ctx.in_flight.enter();
            let stop = stop.clone();
            tokio::spawn(async move {
                let first = job.first_offset;
                let settled = run_job(&ctx2, job, stop).await;
                settle(&progress, first, settled);
                drop(queued);
                drop(guard);
            });
        }
    }
}

/// With `PORTAL_TRUSTED_KEYS` set, checks a start record's signature before
/// the assembler sees it. `None` when the request is refused: the client is
/// told and the job's records are ignored from now on. Otherwise the body
/// digest the sender signed, if any, which the body must then match.
async fn check_signature(
    ctx: &Arc<Ctx>,
    asm: &mut Assembler,
    progress: &Arc<Mutex<Progress>>,
    partition: i32,
    rec: &RecordAndOffset,
    frame: &Frame,
    stop: &watch::Receiver<bool>,
) -> Option<Option<[u8; 32]>> {
    let (Some(verifier), Body::RequestStart(start)) = (&ctx.verifier, &frame.body) else {
        return Some(None);
    };
    let signature = rec.record.headers.get(wire::SIGNATURE_HEADER);
    let now = crate::protocol::signing::unix_now();
    match verifier.verify(
        frame.job,
        start,
        signature.map(Vec::as_slice),
        partition,
        rec.offset,
        now,
    ) {
        Ok(v) => {
            log::debug!("job {}: signature by {} verified", frame.job, v.key);
            Some(v.body_sha256)
        }
        // Answer only a start that could be its sender's own. One for a job
        // this portal holds or accepted signed, or one off the partition its
        // key hashes to, may be a forgery aimed at someone else's job, and an
        // error reply would end that job for its client.
        Err(why)
            if asm.knows(&frame.job)
                || verifier.has_seen(frame.job)
                || partition != partition_for_key(&frame.job.key(), ctx.request_partitions) =>
        {
            log::warn!(
                "job {}: ignored a start record at partition {partition} offset {} that fails its signature check: {why}",
                frame.job,
                rec.offset
            );
            None
        }
        Err(why) => {
            log::warn!(
                "job {}: refused (partition {partition} offset {}): {why}",
                frame.job,
                rec.offset
            );
            asm.skip(frame.job);
            lock(progress).add(rec.offset);
            let failed = FailedJob {
                job: frame.job,
                reply_topic: start.reply_topic.clone(),
                reply_partition: start.reply_partition,
                first_offset: rec.offset,
                category: ErrorCategory::Rejected,
                message: why.to_string(),
            };
            spawn_error_reply(ctx, progress, failed, stop).await;
            None
        }
    }
}

/// The job a record's key names, if it names one.
fn job_of(rec: &RecordAndOffset) -> Option<JobId> {
    let key = std::str::from_utf8(rec.record.key.as_deref()?).ok()?;
    key.parse().ok()
}

/// Waits for a slot in the job queue; `None` when the reader was stopped
/// first, and then the job starting at `first_offset` is left for the
/// partition's next reader.
async fn queue_slot(
    ctx: &Ctx,
    progress: &Mutex<Progress>,
    first_offset: i64,
    stop: &watch::Receiver<bool>,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let mut stop = stop.clone();
    tokio::select! {
        p = Arc::clone(&ctx.queue_permits).acquire_owned() => p.ok(),
        _ = stop.wait_for(|stopped| *stopped) => {
            lock(progress).forget([first_offset]);
            None
        }
    }
}

/// A record we cannot read may still say who sent it and where they listen;
/// if so, tell them instead of letting them time out.
async fn answer_undecodable(
    ctx: &Arc<Ctx>,
    progress: &Arc<Mutex<Progress>>,
    rec: &RecordAndOffset,
    e: wire::WireError,
    stop: &watch::Receiver<bool>,
) {
    let Some(reply) = rec.record.headers.get(wire::REPLY_TO_HEADER) else {
        return;
    };
    let Some((reply_topic, reply_partition)) = wire::parse_reply_to(reply) else {
        return;
    };
    let Some(job) = job_of(rec) else {
        return;
    };
    lock(progress).add(rec.offset);
    spawn_error_reply(
        ctx,
        progress,
        FailedJob {
            job,
            reply_topic,
            reply_partition,
            first_offset: rec.offset,
            category: ErrorCategory::BadRequest,
            message: format!("the portal cannot read this request: {e}"),
        },
        stop,
    )
    .await;
}

async fn spawn_error_reply(
    ctx: &Arc<Ctx>,
    progress: &Arc<Mutex<Progress>>,
    failed: FailedJob,
    stop: &watch::Receiver<bool>,
) {
    // Error replies queue like jobs, so a flood of bad requests cannot pile up tasks.
    let Some(queued) = queue_slot(ctx, progress, failed.first_offset, stop).await else {
        return;
    };
    let ctx = Arc::clone(ctx);
    let progress = Arc::clone(progress);
    let guard = ctx.in_flight.enter();
    ctx.metrics.job_started(0);
    tokio::spawn(async move {
        let target = reply_partition(
            &ctx,
            failed.job,
            &failed.reply_topic,
            failed.reply_partition,
        )
        .await;
        let settled = match target {
            ReplyTo::Partition(pc) => {
                let info = Failure {
                    category: failed.category,
                    message: failed.message,
                };
                report_error_reply(
                    &ctx,
                    failed.job,
                    send_error(&pc, failed.job, 0, info).await,
                    failed.category,
                )
            }
            ReplyTo::Nowhere => true,
            ReplyTo::Unavailable => false,
        };
        settle(&progress, failed.first_offset, settled);
        drop(queued);
        drop(guard);
    });
}

/// Where a job's answer can go.
enum ReplyTo {
    /// The reply partition, open.
    Partition(Partition),
    /// The start record names no valid reply address: no answer is possible.
    Nowhere,
    /// The reply partition could not be opened now; try again later.
    Unavailable,
}

/// A job is settled when its final record is acknowledged or it can never
/// be answered; otherwise it is left for the next reader to run again.
fn settle(progress: &Mutex<Progress>, first_offset: i64, settled: bool) {
    let mut p = lock(progress);
    if settled {
        p.done(first_offset);
    } else {
        p.forget([first_offset]);
    }
}

/// The client for a job's reply partition, if the start record named a valid one.
async fn reply_partition(ctx: &Ctx, job: JobId, topic: &str, partition: i32) -> ReplyTo {
    if topic != ctx.replies.topic() {
        log::error!(
            "job {job}: the client listens on topic '{topic}' but this portal answers on '{}'; check KAFKA_RESPONSE_TOPIC on both sides",
            ctx.replies.topic()
        );
        return ReplyTo::Nowhere;
    }
    if !(0..ctx.response_partitions).contains(&partition) {
        log::error!(
            "job {job}: reply partition {partition} does not exist ({} has {})",
            topic,
            ctx.response_partitions
        );
        return ReplyTo::Nowhere;
    }
    match ctx.replies.get(partition).await {
        Ok(pc) => ReplyTo::Partition(pc),
        Err(e) => {
            log::error!("job {job}: cannot open reply partition {partition}: {e}");
            ReplyTo::Unavailable
        }
    }
}

async fn send_error(
    pc: &Partition,
    job: JobId,
    seq: u32,
    info: Failure,
) -> Result<i64, KafkaError> {
    let frame = Frame {
        job,
        seq,
        body: Body::Error(info),
    };
    pc.produce(kafka::record(&frame, &[], &[])).await
}

/// Runs one job; returns whether it is settled (see [`settle`]).
async fn run_job(ctx: &Ctx, job: CompletedJob, mut stop: watch::Receiver<bool>) -> bool {
    let pc = match reply_partition(
        ctx,
        job.job,
        &job.start.reply_topic,
        job.start.reply_partition,
    )
    .await
    {
        ReplyTo::Partition(pc) => pc,
        ReplyTo::Nowhere => return true,
        ReplyTo::Unavailable => return false,
    };
    // A job whose partition was revoked before it got a call slot is left
    // to the partition's next reader instead of calling the API from here.
    let permit = tokio::select! {
        biased;
        _ = stop.wait_for(|stopped| *stopped) => return false,
        p = ctx.call_permits.acquire() => match p {
            Ok(p) => p,
            Err(_) => return false,
        },
    };
    let started = Instant::now();
    let id = job.job;
    ctx.metrics.job_started(job.body.len());
    let calling = ctx.metrics.in_flight();
    let settled = match answer(ctx, &pc, &job).await {
        Ok((status, bytes)) => {
            log::info!(
                "job {id}: {} {} -> {status}, {bytes} bytes back in {:.2} s",
                job.start.method,
                job.start.path,
                started.elapsed().as_secs_f64()
            );
            ctx.metrics.job_completed(bytes, started.elapsed());
            true
        }
        Err(AnswerError::Failed { seq, error }) => {
            log::warn!("job {id}: {} ({})", error.message, error.category);
            ctx.metrics.job_took(started.elapsed());
            let category = error.category;
            let info = Failure {
                category,
                message: error.message,
            };
            let sent = send_error(&pc, id, seq, info).await;
            report_error_reply(ctx, id, sent, category)
        }
        Err(AnswerError::Kafka { seq, error }) => {
            log::error!("job {id}: could not send the response: {error}");
            ctx.metrics.produce_error();
            ctx.metrics.job_took(started.elapsed());
            // An error record is small; it may get through where a chunk did not.
            let category = ErrorCategory::Internal;
            let info = Failure {
                category,
                message: format!("the portal could not send the response: {error}"),
            };
            let sent = send_error(&pc, id, seq, info).await;
            report_error_reply(ctx, id, sent, category)
        }
    };
    drop(calling);
    drop(permit);
    settled
}

/// Counts and logs how sending a job's error reply went; whether it is settled.
fn report_error_reply(
    ctx: &Ctx,
    job: JobId,
    sent: Result<i64, KafkaError>,
    category: ErrorCategory,
) -> bool {
    match sent {
        Ok(_) => {
            ctx.metrics.job_failed(category);
            true
        }
        Err(e) => {
            ctx.metrics.produce_error();
            log::error!("job {job}: could not send the error reply: {e}");
            false
        }
    }
}

enum AnswerError {
    /// The job failed; `seq` is the next sequence number of the reply.
    Failed { seq: u32, error: Failure },
    /// The reply record numbered `seq` could not be produced.
    Kafka { seq: u32, error: KafkaError },
}

impl From<Unsent> for AnswerError {
    fn from(Unsent { seq, error }: Unsent) -> Self {
        Self::Kafka { seq, error }
    }
}

/// Calls the API and streams its response; returns status and body bytes.
async fn answer(ctx: &Ctx, pc: &Partition, job: &CompletedJob) -> Result<(u16, u64), AnswerError> {
    // One deadline for the whole call, headers and body alike.
    let deadline = tokio::time::Instant::now() + ctx.dispatcher.timeout();
    let resp = ctx
        .dispatcher
        .call(job)
        .await
        .map_err(|error| AnswerError::Failed { seq: 0, error })?;
    let status = resp.status().as_u16();
    // Response headers travel in one frame header; keep them well inside
    // wire::MAX_HEADER_BYTES and say what was dropped.
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut header_bytes = 0usize;
    for (n, v) in resp.headers() {
        if HOP_HEADERS.contains(&n.as_str()) {
            continue;
        }
        let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
        header_bytes += n.as_str().len() + value.len();
        if header_bytes > MAX_RESPONSE_HEADER_BYTES {
            log::warn!(
                "job {}: response headers exceed {MAX_RESPONSE_HEADER_BYTES} bytes; header {n} and later ones dropped",
                job.job
            );
            break;
        }
        headers.push((n.as_str().to_string(), value));
    }
    let body_len = resp
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let start = Frame {
        job: job.job,
        seq: 0,
        body: Body::ResponseStart(ResponseStart {
            status,
            headers,
            body_len,
        }),
    };
    let chunk_size = ctx.cfg.kafka.chunk_size;
    let mut out = ReplyWriter::new(pc, chunk_size);
    out.push(&start, &[]).await?;

    let mut chunker = Chunker::new(job.job, 1);
    let mut buf: Vec<u8> = Vec::with_capacity(chunk_size);
    let mut body = resp.into_body();
    // When what waits (held records, a partial chunk) must go out: set when
    // something starts waiting, so a trickle of small body frames cannot
    // postpone it.
    let mut flush_at = Some(tokio::time::Instant::now() + START_HOLD);
    loop {
        if flush_at.is_none() && !buf.is_empty() {
            flush_at = Some(tokio::time::Instant::now() + FLUSH_AFTER);
        }
        let wait = flush_at.map_or(deadline, |at| at.min(deadline));
        let next = match tokio::time::timeout_at(wait, body.frame()).await {
            Ok(n) => n,
            Err(_) if flush_at.is_some() && tokio::time::Instant::now() < deadline => {
                if !buf.is_empty() {
                    let chunk = chunker.chunk(std::mem::take(&mut buf));
                    out.push(&chunk.frame, &chunk.payload).await?;
                }
                out.flush().await?;
                flush_at = None;
                continue;
            }
            Err(_) => {
                out.flush().await?;
                return Err(AnswerError::Failed {
                    seq: chunker.next_seq(),
                    error: Failure {
                        category: ErrorCategory::UpstreamTimeout,
                        message: format!(
                            "the API did not finish its response within {} s (PORTAL_REQUEST_TIMEOUT_SECS)",
                            ctx.dispatcher.timeout().as_secs()
                        ),
                    },
                });
            }
        };
        match next {
            None => break,
            Some(Err(e)) => {
                out.flush().await?;
                return Err(AnswerError::Failed {
                    seq: chunker.next_seq(),
                    error: Failure {
                        category: ErrorCategory::UpstreamUnreachable,
                        message: format!(
                            "the API's response broke off after {} bytes: {}",
                            chunker.bytes() + buf.len() as u64,
                            crate::util::error_chain(&e)
                        ),
                    },
                });
            }
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let mut data = &data[..];
                while !data.is_empty() {
                    let take = (chunk_size - buf.len()).min(data.len());
                    buf.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if buf.len() == chunk_size {
                        let chunk = chunker
                            .chunk(std::mem::replace(&mut buf, Vec::with_capacity(chunk_size)));
                        out.push(&chunk.frame, &chunk.payload).await?;
                        out.flush().await?;
                        flush_at = None;
                    }
                }
            }
        }
    }
    if !buf.is_empty() {
        let chunk = chunker.chunk(buf);
        out.push(&chunk.frame, &chunk.payload).await?;
    }
    let total = chunker.bytes();
    let end = chunker.finish();
    out.push(&end, &[]).await?;
    out.flush().await?;
    Ok((status, total))
}
