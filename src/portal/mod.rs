//! The portal: consumes the request topic, assembles jobs, calls the API and
//! streams each response back to the partition its client listens on.
//!
//! # How it works
//!
//! `run` starts the admin listener, connects to Kafka, makes sure both
//! topics exist, and builds what every task shares (`context::Ctx`: the
//! settings, the route table with each route's `Dispatcher`
//! (`router::Routes`), the signature verifier, the job queue,
//! the memory and spool budgets, a `ledger::Progress` per partition). Then
//! it loops over generations of the consumer group: join, serve, and join
//! again after a rebalance, or leave on shutdown. The shutdown future is an
//! input; it is polled while joining and while serving.
//!
//! A generation (`generation`) starts the heartbeat task
//! (`kafka::heartbeat`, with its own coordinator connection, so nothing
//! else delays it), fetches the committed offsets, spawns one reader per
//! assigned partition, and commits on ticks of its own. When it ends, the
//! readers stop at their next fetch, jobs in flight get
//! `PORTAL_SHUTDOWN_GRACE_SECS`, those still running are cancelled (their
//! API calls dropped) so they cannot overlap the next owner's run, and a
//! final commit follows.
//!
//! A reader (`reader`) fetches its partition and decodes each record, skips
//! what its partition's ledger already knows, checks signatures, the
//! policy and that a route takes each start record, and hands the rest to
//! its own `Assembler`. A completed job goes to a task of its own (`job`):
//! it waits for a call slot of its route and one of
//! `PORTAL_MAX_CONCURRENT_JOBS` call permits, calls its route's API and streams the
//! response as frames to the reply partition the start record names. A
//! failed job gets an error record instead (`replies`). Both kinds of task
//! first take a slot in the job queue; a reader that finds it full stops
//! fetching, so a backlog waits in Kafka, not in memory. With
//! `PORTAL_PIPELINE` on, a job whose body will be spooled to a file starts
//! its task at its start record instead, when a queue slot is free at once:
//! the call streams the body while it arrives (`pipe`).
//!
//! The ledger counts a job as in flight from its start record until its
//! final record is acknowledged; only then may the commit pass it. A job
//! not settled when its reader or task ends is left to be read again, by
//! this portal or whoever owns the partition next.
//!
//! # Files
//!
//! - `mod.rs`: start-up and the group loop.
//! - `context.rs`: what the tasks share, and how a task takes its part.
//! - `generation.rs`: serving one generation, heartbeats and commits.
//! - `reader.rs`: reading one request partition and judging each record.
//! - `job.rs`: running one job and streaming its answer.
//! - `replies.rs`: where a job's answer goes, and error replies.
//! - `assembler/`: putting request bodies together from their frames and
//!   checking them; `spool.rs`: where a body is kept, in memory or in a
//!   file (`body_file.rs`: the file, encrypted for a sealed job); `budget.rs`: the memory and disk all jobs share; `pipe.rs`:
//!   what a pipelined job's call and its assembler share.
//! - `ledger.rs`: what is answered and what to commit; `policy/`: what may
//!   reach the API; `admin.rs`: the admin listener; `settings.rs`: the
//!   settings `cli` resolves; `http_dispatch/`: the calls to the API.

mod admin;
pub(crate) mod assembler;
mod body_file;
mod budget;
mod context;
mod generation;
mod incremental;
// Public for `examples/demo_api.rs`, which uses `token_cache::form_encode`.
pub mod http_dispatch;
mod job;
mod ledger;
mod pipe;
pub(crate) mod policy;
mod reader;
mod replies;
mod router;
pub(crate) mod routes;
mod settings;
mod spans;
mod spool;

pub(crate) use settings::{SealingKeys, Settings, StartFrom};

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::kafka::code;
use crate::kafka::consumer_group::resolve_protocol;
use crate::kafka::group::{GroupError, GroupProtocol, Member};
use crate::kafka::{self, PartitionCache, WhenRefused};
use crate::portal::admin::{Metrics, Readiness};
use crate::portal::context::{Ctx, InFlight};
use crate::portal::generation::{cancel_in_flight, serve_generation, GenerationEnd};
use crate::protocol::signing::Verifier;

/// Settles `KAFKA_GROUP_PROTOCOL` against the broker. `consumer` on a
/// broker without it is fatal; `auto` falls back to `classic` when the
/// broker cannot be asked, since classic is what every broker serves.
async fn group_protocol(cfg: &Settings) -> anyhow::Result<GroupProtocol> {
    let wanted = cfg.group.protocol;
    let resolved = match resolve_protocol(&cfg.kafka, &cfg.group).await {
        Ok(p) => p,
        Err(e) if wanted == GroupProtocol::Auto && !e.is_fatal() => {
            log::warn!("KAFKA_GROUP_PROTOCOL=auto: cannot ask the broker which group protocols it serves ({e}); using classic");
            GroupProtocol::Classic
        }
        Err(e) => anyhow::bail!("KAFKA_GROUP_PROTOCOL={}: {e}", wanted.name()),
    };
    log::info!(
        "group protocol: {} (KAFKA_GROUP_PROTOCOL={})",
        resolved.name(),
        wanted.name()
    );
    Ok(resolved)
}

/// Runs a portal until `shutdown` completes, then lets in-flight jobs finish.
pub(crate) async fn run(cfg: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let budgets = cfg.limits.budgets();
    let metrics = Arc::new(Metrics::new(budgets.clone()));
    let readiness = Arc::new(Readiness::default());
    // Up before Kafka, so /healthz answers and /readyz says what is missing.
    let _admin = match cfg.admin_listen {
        Some(addr) => {
            let sealing_key = cfg
                .sealing
                .as_ref()
                .map(|s| Arc::<str>::from(s.keyring.advertised().to_pem()));
            let server = crate::portal::admin::start(
                addr,
                Arc::clone(&metrics),
                Arc::clone(&readiness),
                sealing_key,
            )
            .await?;
            log::info!(
                "admin listener on http://{} (/healthz, /readyz, /metrics, /sealing-key)",
                server.local_addr()
            );
            Some(server)
        }
        None => None,
    };
    let kcfg = &cfg.kafka;
    let cluster = kafka::connect_with(kcfg, WhenRefused::KeepTrying).await?;
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

    let routes = router::start(&cfg, &metrics).await?;
    cfg.policy.announce();
    let verifier = cfg.trusted_keys.clone().map(|trusted| {
        log::info!(
            "accepting only signed requests; trusted keys (PORTAL_TRUSTED_KEYS): {}",
            trusted.names().join(", ")
        );
        Verifier::new(trusted, &kcfg.request_topic)
    });
    match &cfg.sealing {
        Some(sealing) => log::info!(
            "opening sealed requests (PORTAL_SEALING_KEY_FILE): {}{}",
            sealing.describe(),
            if cfg.require_sealed {
                "; clear requests are refused (PORTAL_REQUIRE_SEALED)"
            } else {
                ""
            }
        ),
        None => log::debug!("no sealing key: sealed requests are refused"),
    }
    let protocol = group_protocol(&cfg).await?;
    let mut cfg = cfg;
    cfg.group.protocol = protocol;
    let ctx = Arc::new(Ctx {
        verifier,
        request_partitions,
        replies: PartitionCache::new(cluster.clone(), cfg.kafka.response_topic.clone()),
        call_permits: Arc::new(Semaphore::new(cfg.max_concurrent_jobs)),
        queue_permits: Arc::new(Semaphore::new(cfg.max_concurrent_jobs + 256)),
        in_flight: Arc::new(InFlight::default()),
        progress: Mutex::new(BTreeMap::new()),
        budgets,
        metrics,
        readiness,
        response_partitions,
        routes,
        cluster,
        cfg,
    });

    if ctx.cfg.group.protocol == GroupProtocol::Consumer {
        return incremental::serve(&ctx, shutdown).await;
    }
    serve_classic(&ctx, shutdown).await
}

/// Serves the request topic under the classic group protocol: join, serve
/// a generation, join again after a rebalance, until `shutdown`.
async fn serve_classic(ctx: &Arc<Ctx>, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let mut member = Member::new(&ctx.cfg.kafka, ctx.cfg.group.clone());
    tokio::pin!(shutdown);
    let mut announced = false;
    let mut failures = 0u32;
    // When joining (and fetching the committed offsets) began to fail: start-up
    // states are logged quietly until they last (`code::log_level`).
    let mut failing_since: Option<Instant> = None;
    loop {
        let topic = ctx.cfg.kafka.request_topic.clone();
        let joined = tokio::select! {
            _ = &mut shutdown => break,
            r = member.join(&topic, ctx.request_partitions) => r,
        };
        let assignment = match joined {
            Ok(a) => {
                failures = 0;
                a
            }
            Err(e) if e.is_fatal() => {
                if !ctx.in_flight.wait_idle(ctx.cfg.shutdown_grace).await {
                    cancel_in_flight(ctx, ctx.cfg.shutdown_grace, None).await;
                }
                return Err(e.into());
            }
            Err(e) => {
                failures += 1;
                let wait = Duration::from_millis(250 * u64::from(failures.min(20)));
                let since = *failing_since.get_or_insert_with(Instant::now);
                log::log!(
                    code::log_level(e.is_startup_state(), since.elapsed()),
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
            "group {} generation {}: this portal reads partitions {:?} of {topic}{}",
            member.group_id(),
            assignment.generation,
            assignment.partitions,
            member
                .instance_id()
                .map(|i| format!(" (static member '{i}')"))
                .unwrap_or_default()
        );
        let stop =
            match serve_generation(ctx, &mut member, &assignment, &mut shutdown, &mut announced)
                .await
            {
                Ok(stop) => {
                    failing_since = None;
                    stop
                }
                Err(e)
                    if e.downcast_ref::<GroupError>()
                        .is_some_and(GroupError::is_fatal) =>
                {
                    return Err(e);
                }
                Err(e) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    let startup = e
                        .downcast_ref::<GroupError>()
                        .is_some_and(GroupError::is_startup_state);
                    log::log!(
                        code::log_level(startup, since.elapsed()),
                        "generation {} ended: {e:#}",
                        assignment.generation
                    );
                    // Do not make the whole group rebalance in a tight loop.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    GenerationEnd::Rebalance
                }
            };
        if stop == GenerationEnd::Shutdown {
            if stay_static(&member, ctx.cfg.group.session_timeout) {
                return Ok(());
            }
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
    let grace = ctx.cfg.shutdown_grace;
    if !ctx.in_flight.wait_idle(grace).await {
        cancel_in_flight(ctx, grace, None).await;
    }
    if stay_static(&member, ctx.cfg.group.session_timeout) {
        return Ok(());
    }
    match tokio::time::timeout(ctx.cfg.group.session_timeout, member.leave()).await {
        Ok(Ok(())) => log::info!("left group {}; bye", member.group_id()),
        Ok(Err(e)) => log::warn!("leaving group {} failed: {e}", member.group_id()),
        Err(_) => log::warn!("leaving group {} timed out", member.group_id()),
    }
    Ok(())
}

/// For a static member, says on shutdown why it does not leave the group and
/// returns true: a LeaveGroup would move its partitions to the others at
/// once, and a restart would move them back, two rebalances instead of none.
fn stay_static(member: &Member, session_timeout: Duration) -> bool {
    let Some(id) = member.instance_id() else {
        return false;
    };
    log::info!(
        "group {}: static member '{id}' stays in the group: a portal started with this id within {} s (PORTAL_SESSION_TIMEOUT_SECS) takes its partitions back without a rebalance; after that they move to the other portals; bye",
        member.group_id(),
        session_timeout.as_secs()
    );
    true
}
