//! One generation of the group: a reader per assigned partition, heartbeats
//! in a task of their own, commits on ticks, then the revocation: readers
//! stopped, jobs in flight given the grace period, those still running
//! cancelled, a final commit.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::kafka::code;
use crate::kafka::group::{Assignment, GroupError, Member};
use crate::kafka::heartbeat::{GroupSignal, Heartbeats};
use crate::portal::context::{lock, Ctx};
use crate::portal::ledger::{decode_metadata, Progress};
use crate::portal::reader::read_partition;

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GenerationEnd {
    /// The portal is shutting down.
    Shutdown,
    /// The group rebalances (or the generation failed): join again.
    Rebalance,
}

/// Reads the assigned partitions, heartbeats and commits until a rebalance or
/// shutdown; then stops reading, lets jobs in flight finish within the grace
/// period, and commits. A fatal group error (`GroupError::is_fatal`) is
/// returned after the same wait, with no commit.
pub(crate) async fn serve_generation(
    ctx: &Arc<Ctx>,
    member: &mut Member,
    assignment: &Assignment,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    announced: &mut bool,
) -> anyhow::Result<GenerationEnd> {
    let topic = ctx.cfg.kafka.request_topic.clone();
    // Started first: the session must last however long the offsets take.
    let mut beats = Heartbeats::start(
        member.heartbeater(),
        member.heartbeat_interval(),
        member.request_timeout(),
    );
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
    let mut commit_tick = tokio::time::interval(COMMIT_EVERY);
    // When commits began to fail: a coordinator that moves or restarts
    // answers with start-up states for a moment (`code::log_level`).
    let mut commits_failing: Option<Instant> = None;
    // A fatal group error (another portal took this one's place) still
    // revokes like a rebalance, so jobs in flight can answer; then it is
    // returned instead of a way to go on.
    let mut fatal: Option<GroupError> = None;
    let end = loop {
        tokio::select! {
            _ = &mut *shutdown => break GenerationEnd::Shutdown,
            r = ready_rx.recv(), if !all_ready => match r {
                Some(p) => {
                    ready_parts.push(p);
                    ctx.readiness.set_partitions(ready_parts.len());
                    // Pin the start position at once: without a commit, a
                    // portal taking over after a crash would start at the end.
                    match commit(ctx, member, &[p]).await {
                        Ok(()) => commits_failing = None,
                        Err(e) if e.is_fatal() => {
                            fatal = Some(e);
                            break GenerationEnd::Rebalance;
                        }
                        Err(e) => log::log!(
                            failure_level(&mut commits_failing, &e),
                            "committing the start of partition {p} failed: {e}"
                        ),
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
            signal = beats.signal() => match signal {
                GroupSignal::Rebalance => break GenerationEnd::Rebalance,
                GroupSignal::Fatal(e) => {
                    fatal = Some(e);
                    break GenerationEnd::Rebalance;
                }
                GroupSignal::Rejoin(e) => {
                    log::info!("group {}: {e}; rejoining", member.group_id());
                    break GenerationEnd::Rebalance;
                }
            },
            _ = commit_tick.tick() => match commit(ctx, member, &ready_parts).await {
                Ok(()) => commits_failing = None,
                Err(e) if e.is_fatal() => {
                    fatal = Some(e);
                    break GenerationEnd::Rebalance;
                }
                Err(e) if e.needs_rejoin() => break GenerationEnd::Rebalance,
                Err(e) => log::log!(
                    failure_level(&mut commits_failing, &e),
                    "committing offsets failed: {e}"
                ),
            },
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
    // Revoke: stop starting jobs, let those in flight finish (the heartbeat
    // task keeps the session meanwhile), cancel those the grace did not
    // see finish, then commit.
    let _ = stop_tx.send(true);
    ctx.readiness.set_partitions(0);
    let why = match end {
        GenerationEnd::Shutdown => "shutdown",
        GenerationEnd::Rebalance => "rebalance",
    };
    for p in &assignment.partitions {
        log::info!("partition {p} of {topic}: stopped reading ({why})");
    }
    let grace = ctx.cfg.shutdown_grace;
    if end == GenerationEnd::Shutdown {
        log::info!(
            "shutting down: no new jobs; waiting up to {} s for jobs in flight",
            grace.as_secs()
        );
    }
    if fatal.is_some() {
        // The error itself is logged once, by whoever ends the process.
        log::warn!(
            "no longer a member of group {}: no new jobs; waiting up to {} s for jobs in flight, then exiting",
            member.group_id(),
            grace.as_secs()
        );
    }
    let drained = async {
        while readers.join_next().await.is_some() {}
        ctx.in_flight.wait_idle(grace).await
    };
    let all_done = tokio::time::timeout(grace, drained).await.unwrap_or(false);
    if !all_done {
        // A reader stuck in a fetch must not hand out a job after the cancel.
        let _ = tokio::time::timeout(READERS_STOP, readers.shutdown()).await;
        cancel_in_flight(ctx, grace, None).await;
    }
    drop(beats);
    if let Some(e) = fatal {
        // The group no longer takes this member's commits; the partitions'
        // new owner reads the unfinished jobs again from the last commit.
        return Err(e.into());
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

/// Cancels the jobs still running when the grace ran out, before their
/// partitions go to another portal: that one runs them again, and two calls
/// for one job must not overlap.
pub(crate) async fn cancel_in_flight(
    ctx: &Ctx,
    grace: Duration,
    of: Option<&[Arc<Mutex<Progress>>]>,
) {
    for job in ctx.in_flight.cancel(of).await {
        ctx.metrics.job_cancelled();
        log::warn!(
            "job {job}: still running after the {} s grace (PORTAL_SHUTDOWN_GRACE_SECS); its API call was cancelled and the connection dropped, so the next owner of its partition runs it again",
            grace.as_secs()
        );
    }
}

/// The level of one more group request failure in a run that began at
/// `since` (set now if the run starts with it).
pub(crate) fn failure_level(since: &mut Option<Instant>, e: &GroupError) -> log::Level {
    let since = *since.get_or_insert_with(Instant::now);
    code::log_level(e.is_startup_state(), since.elapsed())
}

/// How long aborted readers get to end.
pub(crate) const READERS_STOP: Duration = Duration::from_secs(5);

/// How often committed offsets catch up with answered jobs.
pub(crate) const COMMIT_EVERY: Duration = Duration::from_secs(1);

/// Commits each of `partitions` that has a position: the offset below which
/// all its jobs are answered, with answered offsets above it in the metadata.
async fn commit(ctx: &Ctx, member: &mut Member, partitions: &[i32]) -> Result<(), GroupError> {
    let offsets = commit_points(ctx, partitions);
    member.commit(&ctx.cfg.kafka.request_topic, &offsets).await
}

/// What to commit for each of `partitions` that has a position: the
/// offset below which all its jobs are answered, with answered offsets
/// above it in the metadata.
pub(crate) fn commit_points(ctx: &Ctx, partitions: &[i32]) -> Vec<(i32, i64, String)> {
    partitions
        .iter()
        .map(|&p| {
            let progress = ctx.progress_of(p);
            let (offset, metadata) = lock(&progress).commit_point();
            (p, offset, metadata)
        })
        .filter(|(_, offset, _)| *offset >= 0)
        .collect()
}
