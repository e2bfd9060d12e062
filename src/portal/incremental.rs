//! Serving under the consumer group protocol (KIP-848): partitions start
//! and stop one by one as the broker moves them, and every other partition
//! keeps serving meanwhile.
//!
//! The member beats in a task of its own (`kafka::consumer_group::
//! membership`) and sends changes here. A partition to start has its
//! committed offset fetched and a reader spawned. A partition to stop has
//! its reader stopped, then a drain of its own: its jobs in flight get
//! `PORTAL_SHUTDOWN_GRACE_SECS`, those still running are cancelled (their
//! API calls dropped) so the next owner's run cannot overlap them, its
//! offsets are committed, and only then is it reported stopped, which lets
//! the broker hand it to another member. A reader that fails is drained the
//! same way and started again; the broker does not hear of it.
//!
//! Commits go over a coordinator connection of their own (`Committer`),
//! with the member id and epoch of the latest heartbeat, every second and
//! at the end of each drain. On shutdown every partition drains at once,
//! then the member leaves (a static member with epoch -2, so the broker
//! keeps its partitions for a restart within the session).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::kafka::consumer_group::membership::{Event, Membership};
use crate::kafka::consumer_group::{Committer, ConsumerMember, Identity};
use crate::kafka::group::GroupError;
use crate::portal::context::{lock, Ctx};
use crate::portal::generation::{
    cancel_in_flight, commit_points, failure_level, COMMIT_EVERY, READERS_STOP,
};
use crate::portal::ledger::{decode_metadata, Progress};
use crate::portal::reader::read_partition;

/// One partition this portal serves.
struct Served {
    /// Which start of the partition this is, so a message of a reader that
    /// ended is not taken for the current one's.
    run: u64,
    stop: watch::Sender<bool>,
    /// Taken by the drain.
    reader: Option<JoinHandle<()>>,
    /// The reader has positioned itself: its ledger holds a position.
    ready: bool,
    /// Being drained.
    stopping: bool,
    /// Given up (the member was fenced): no commit, the new owner has it.
    lost: bool,
    /// Drained because its reader failed: start again, without telling the
    /// broker.
    restart: bool,
    /// Cuts its drain short (the partition was lost while draining).
    cut: Option<watch::Sender<bool>>,
}

/// Why a partition stops, as its log line says it.
#[derive(Clone, Copy)]
enum Why {
    Moved,
    Lost,
    ReaderFailed,
    Shutdown,
    Fatal,
}

impl Why {
    fn name(self) -> &'static str {
        match self {
            Why::Moved => "moved",
            Why::Lost => "lost",
            Why::ReaderFailed => "reader failed",
            Why::Shutdown => "shutdown",
            Why::Fatal => "fatal group error",
        }
    }
}

/// What the serving loop keeps.
struct Loop<'a> {
    ctx: &'a Arc<Ctx>,
    topic: String,
    group: String,
    committer: Committer,
    /// The member id and epoch of the latest heartbeat, for commits.
    who: watch::Receiver<Identity>,
    parts: BTreeMap<i32, Served>,
    /// Assigned, not started yet (the committed offsets could not be
    /// fetched, or a reader is being restarted).
    pending: BTreeSet<i32>,
    next_run: u64,
    ready_tx: mpsc::Sender<(i32, u64)>,
    ended_tx: mpsc::Sender<(i32, u64, Option<String>)>,
    drains: JoinSet<i32>,
    announced: bool,
    joined: bool,
    commits_failing: Option<Instant>,
}

/// Serves the request topic under the consumer group protocol until
/// `shutdown` completes or the member can no longer be one.
pub(crate) async fn serve(
    ctx: &Arc<Ctx>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let topic = ctx.cfg.kafka.request_topic.clone();
    let member = ConsumerMember::new(&ctx.cfg.kafka, ctx.cfg.group.clone(), &topic);
    let group = member.group_id().to_string();
    let instance = member.instance_id().map(str::to_string);
    log::info!(
        "group {group}: joining with the consumer group protocol (KIP-848){}; the broker's group.consumer.session.timeout.ms (not PORTAL_SESSION_TIMEOUT_SECS) says how soon a portal that stopped without leaving loses its partitions",
        instance
            .as_deref()
            .map(|i| format!(" as static member '{i}'"))
            .unwrap_or_default()
    );
    if ctx.cfg.session_timeout_set {
        log::warn!(
            "PORTAL_SESSION_TIMEOUT_SECS={} does not apply under the consumer group protocol: the broker's group.consumer.session.timeout.ms decides how soon a crashed portal's partitions move; set KAFKA_GROUP_PROTOCOL=classic to keep the portal's own session timeout",
            ctx.cfg.group.session_timeout.as_secs()
        );
    }
    let committer = member.committer();
    let mut membership = Membership::start(member);
    let slots = usize::try_from(ctx.request_partitions).unwrap_or(0) * 2 + 16;
    let (ready_tx, mut ready_rx) = mpsc::channel(slots);
    let (ended_tx, mut ended_rx) = mpsc::channel(slots);
    let mut l = Loop {
        ctx,
        topic,
        group,
        committer,
        who: membership.identity_watch(),
        parts: BTreeMap::new(),
        pending: BTreeSet::new(),
        next_run: 0,
        ready_tx,
        ended_tx,
        drains: JoinSet::new(),
        announced: false,
        joined: false,
        commits_failing: None,
    };
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(COMMIT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let fatal: Option<anyhow::Error> = loop {
        tokio::select! {
            // The membership first: a partition lost must be cut before
            // anything else is waited for.
            biased;
            () = &mut shutdown => break None,
            ev = membership.next() => match ev {
                Some(Event::Change(change)) => {
                    let why = if change.lost { Why::Lost } else { Why::Moved };
                    for p in change.stop {
                        if l.pending.remove(&p) {
                            // Never started: nothing to drain.
                            membership.stopped(vec![p]).await;
                        }
                        l.stop(p, why);
                    }
                    l.pending.extend(change.start);
                    l.start_pending().await;
                }
                Some(Event::Joined) => {
                    l.joined = true;
                    l.announce();
                }
                Some(Event::Fatal(e)) => break Some(e.into()),
                None => break Some(anyhow::anyhow!("the group membership task ended")),
            },
            Some((p, run)) = ready_rx.recv() => l.on_ready(p, run).await,
            Some((p, run, failure)) = ended_rx.recv() => l.on_reader_end(p, run, failure),
            Some(drained) = l.drains.join_next() => {
                let p = match drained {
                    Ok(p) => p,
                    Err(e) => {
                        // A drain that panicked leaves its partition in an
                        // unknown state: give up on the membership.
                        break Some(anyhow::anyhow!("draining a partition failed: {e}"));
                    }
                };
                if let Some(done) = l.on_drained(p, true).await {
                    membership.stopped(vec![done]).await;
                }
            }
            _ = tick.tick() => {
                match l.commit_all().await {
                    Err(e) if e.is_fatal() => break Some(e.into()),
                    _ => {}
                }
                if !l.pending.is_empty() {
                    l.start_pending().await;
                }
            }
        }
    };
    // The end: every partition drains at once, each with the grace period.
    let why = if fatal.is_some() {
        Why::Fatal
    } else {
        Why::Shutdown
    };
    if fatal.is_none() {
        log::info!(
            "shutting down: no new jobs; waiting up to {} s for jobs in flight",
            ctx.cfg.shutdown_grace.as_secs()
        );
    } else {
        log::warn!(
            "no longer a member of group {}: no new jobs; waiting up to {} s for jobs in flight, then exiting",
            l.group,
            ctx.cfg.shutdown_grace.as_secs()
        );
    }
    l.pending.clear();
    let all: Vec<i32> = l.parts.keys().copied().collect();
    for p in all {
        l.stop(p, why);
        if fatal.is_some() {
            if let Some(s) = l.parts.get_mut(&p) {
                s.lost = true;
            }
        }
    }
    // Readers still say "positioned" or "ended" while they stop: taken and
    // dropped, so none waits on a full channel. The partitions are
    // committed together once all drained.
    let mut drained = Vec::new();
    loop {
        tokio::select! {
            d = l.drains.join_next() => match d {
                Some(Ok(p)) => drained.push(p),
                Some(Err(_)) => {}
                None => break,
            },
            Some(_) = ready_rx.recv() => {}
            Some(_) = ended_rx.recv() => {}
        }
    }
    let commit: Vec<i32> = drained
        .iter()
        .copied()
        .filter(|p| l.parts.get(p).is_some_and(|s| s.ready && !s.lost))
        .collect();
    if !commit.is_empty() {
        l.final_commit(&commit).await;
    }
    for p in drained {
        l.on_drained(p, false).await;
    }
    ctx.readiness.set_partitions(0);
    if let Some(e) = fatal {
        return Err(e);
    }
    let limit = ctx.cfg.group.session_timeout.max(Duration::from_secs(5));
    match (&instance, membership.leave(limit).await) {
        (Some(id), Ok(())) => log::info!(
            "group {}: static member '{id}' left for now: a portal started with this id within the broker's session timeout (group.consumer.session.timeout.ms) takes its partitions back without moving any other; bye",
            l.group
        ),
        (None, Ok(())) => log::info!("left group {}; bye", l.group),
        (_, Err(e)) => log::warn!("leaving group {} failed: {e}", l.group),
    }
    Ok(())
}

impl Loop<'_> {
    /// Fetches the committed offsets of the pending partitions and starts a
    /// reader for each; on failure they stay pending for the next tick.
    async fn start_pending(&mut self) {
        let pending: Vec<i32> = self
            .pending
            .iter()
            .copied()
            .filter(|p| !self.parts.contains_key(p))
            .collect();
        if pending.is_empty() {
            return;
        }
        let limit = self.committer.request_timeout();
        let fetched =
            match tokio::time::timeout(limit, self.committer.fetch_offsets(&pending)).await {
                Ok(r) => r,
                Err(_) => {
                    self.committer.forget_coordinator();
                    Err(GroupError::Timeout("OffsetFetch"))
                }
            };
        let committed = match fetched {
            Ok(c) => c,
            Err(e) => {
                log::log!(
                    failure_level(&mut self.commits_failing, &e),
                    "group {}: fetching the committed offsets of partitions {pending:?} failed: {e}; retrying",
                    self.group
                );
                return;
            }
        };
        for p in pending {
            self.pending.remove(&p);
            let c = committed.get(&p);
            let start = c.and_then(|c| c.offset);
            let progress = self.ctx.progress_of(p);
            if let (Some(base), Some(c)) = (start, c) {
                lock(&progress).remember_answered(decode_metadata(base, &c.metadata));
            }
            self.spawn_reader(p, start, progress);
        }
    }

    fn spawn_reader(&mut self, p: i32, start: Option<i64>, progress: Arc<Mutex<Progress>>) {
        self.next_run += 1;
        let run = self.next_run;
        let (stop, stop_rx) = watch::channel(false);
        let ctx = Arc::clone(self.ctx);
        let ready_tx = self.ready_tx.clone();
        let ended_tx = self.ended_tx.clone();
        let reader = tokio::spawn(async move {
            // The reader says "positioned" with its partition only; this
            // adds which run of it that is.
            let (positioned_tx, mut positioned) = mpsc::channel(1);
            let read = read_partition(ctx, p, start, progress, stop_rx, positioned_tx);
            tokio::pin!(read);
            let result = loop {
                tokio::select! {
                    r = &mut read => break r,
                    Some(_) = positioned.recv() => {
                        let _ = ready_tx.send((p, run)).await;
                    }
                }
            };
            // A reader told to stop ends with Ok; anything else is news.
            let _ = ended_tx
                .send((p, run, result.err().map(|e| e.to_string())))
                .await;
        });
        self.parts.insert(
            p,
            Served {
                run,
                stop,
                reader: Some(reader),
                ready: false,
                stopping: false,
                lost: false,
                restart: false,
                cut: None,
            },
        );
    }

    async fn on_ready(&mut self, p: i32, run: u64) {
        let Some(s) = self.parts.get_mut(&p) else {
            return;
        };
        if s.run != run || s.stopping {
            return;
        }
        s.ready = true;
        self.set_readiness();
        // Pin the start position at once: without a commit, a portal taking
        // over after a crash would start at the end.
        if let Err(e) = self.commit(&[p]).await {
            log::log!(
                failure_level(&mut self.commits_failing, &e),
                "committing the start of partition {p} failed: {e}"
            );
        }
        self.announce();
    }

    /// Says once that the portal is ready: joined, and every partition it
    /// holds positioned.
    fn announce(&mut self) {
        if self.announced || !self.joined || !self.pending.is_empty() {
            return;
        }
        if !self.parts.values().all(|s| s.ready || s.stopping) {
            return;
        }
        self.announced = true;
        let held: Vec<i32> = self.parts.keys().copied().collect();
        if held.is_empty() {
            log::info!(
                "portal ready: group {} assigned no partition to this portal yet (the broker hands partitions over as their owners release them, or there are more portals than partitions)",
                self.group
            );
        } else {
            log::info!(
                "portal ready: group {} reads {:?} of {} -> {}, responses on {} ({} partitions)",
                self.group,
                held,
                self.topic,
                self.ctx.cfg.target_api_url,
                self.ctx.cfg.kafka.response_topic,
                self.ctx.response_partitions
            );
        }
    }

    fn set_readiness(&self) {
        let n = self
            .parts
            .values()
            .filter(|s| s.ready && !s.stopping)
            .count();
        self.ctx.readiness.set_partitions(n);
    }

    /// A reader ended on its own: drain its partition and start it again.
    fn on_reader_end(&mut self, p: i32, run: u64, failure: Option<String>) {
        let Some(s) = self.parts.get_mut(&p) else {
            return;
        };
        if s.run != run || s.stopping {
            return;
        }
        log::warn!(
            "the reader of partition {p} stopped: {}; starting it again",
            failure.as_deref().unwrap_or("it ended")
        );
        s.restart = true;
        self.stop(p, Why::ReaderFailed);
    }

    /// Stops reading `p` and drains it in a task of its own.
    fn stop(&mut self, p: i32, why: Why) {
        let Some(s) = self.parts.get_mut(&p) else {
            return;
        };
        if matches!(why, Why::Moved | Why::Lost) {
            // The broker's stop wins over a restart of a failed reader.
            s.restart = false;
        }
        if matches!(why, Why::Lost) {
            s.lost = true;
            if let Some(cut) = &s.cut {
                let _ = cut.send(true);
            }
        }
        if s.stopping {
            return;
        }
        s.stopping = true;
        let _ = s.stop.send(true);
        log::info!(
            "partition {p} of {}: stopped reading ({})",
            self.topic,
            why.name()
        );
        let reader = s.reader.take();
        let (cut, cut_rx) = watch::channel(false);
        s.cut = Some(cut);
        let ctx = Arc::clone(self.ctx);
        let progress = ctx.progress_of(p);
        // A lost partition is someone else's already: its jobs are
        // cancelled at once, so they cannot overlap the new owner's calls.
        let grace = match why {
            Why::Lost => Duration::ZERO,
            _ => ctx.cfg.shutdown_grace,
        };
        self.drains.spawn(async move {
            drain(&ctx, reader, &progress, grace, cut_rx).await;
            p
        });
        self.set_readiness();
    }

    /// A drain ended: commits the partition (unless lost, or `commit` is
    /// false: the caller commits it with others) and forgets it. Returns
    /// the partition to report stopped, or `None` when it starts again on
    /// its own.
    async fn on_drained(&mut self, p: i32, commit: bool) -> Option<i32> {
        let s = self.parts.get(&p)?;
        if commit && !s.lost && s.ready {
            self.final_commit(&[p]).await;
        }
        let s = self.parts.remove(&p)?;
        if s.restart {
            self.pending.insert(p);
            return None;
        }
        Some(p)
    }

    /// The last commit of a partition about to go: tried a few times, since
    /// what it misses is run again by the next owner.
    async fn final_commit(&mut self, partitions: &[i32]) {
        let mut last = None;
        for attempt in 0..FINAL_COMMIT_TRIES {
            if attempt > 0 {
                tokio::time::sleep(FINAL_COMMIT_PAUSE).await;
            }
            // Bounded tighter than other commits: the serving loop waits.
            match tokio::time::timeout(FINAL_COMMIT_LIMIT, self.commit(partitions)).await {
                Ok(Ok(())) => return,
                Ok(Err(e)) if e.is_fatal() => {
                    last = Some(e);
                    break;
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    self.committer.forget_coordinator();
                    last = Some(GroupError::Timeout("OffsetCommit"));
                }
            }
        }
        if let Some(e) = last {
            log::warn!(
                "final commit of partitions {partitions:?} failed: {e}; their next owner runs again the jobs answered since the last commit"
            );
        }
    }

    /// Commits every positioned partition that is not lost.
    async fn commit_all(&mut self) -> Result<(), GroupError> {
        let parts: Vec<i32> = self
            .parts
            .iter()
            .filter(|(_, s)| s.ready && !s.lost)
            .map(|(p, _)| *p)
            .collect();
        match self.commit(&parts).await {
            Ok(()) => {
                self.commits_failing = None;
                Ok(())
            }
            Err(e) => {
                // A member between epochs (STALE_MEMBER_EPOCH) or joining
                // again is normal for a moment; the next tick tries again.
                log::log!(
                    failure_level(&mut self.commits_failing, &e),
                    "committing offsets failed: {e}"
                );
                Err(e)
            }
        }
    }

    async fn commit(&mut self, partitions: &[i32]) -> Result<(), GroupError> {
        let offsets = commit_points(self.ctx, partitions);
        if offsets.is_empty() {
            return Ok(());
        }
        // Read at each try: a retry after STALE_MEMBER_EPOCH takes the epoch
        // of the latest heartbeat.
        let who = self.who.borrow().clone();
        let limit = self.committer.request_timeout();
        match tokio::time::timeout(limit, self.committer.commit(&offsets, &who)).await {
            Ok(r) => r,
            Err(_) => {
                self.committer.forget_coordinator();
                Err(GroupError::Timeout("OffsetCommit"))
            }
        }
    }
}

/// How often the last commit of a partition is tried, and the pause
/// between tries (a new epoch reaches the committer with the next beat).
const FINAL_COMMIT_TRIES: u32 = 2;
const FINAL_COMMIT_PAUSE: Duration = Duration::from_millis(500);
const FINAL_COMMIT_LIMIT: Duration = Duration::from_secs(5);

/// Waits for a stopped reader and the jobs of its partition, within the
/// grace period; cancels what is still running after it.
async fn drain(
    ctx: &Ctx,
    reader: Option<JoinHandle<()>>,
    progress: &Arc<Mutex<Progress>>,
    grace: Duration,
    mut cut: watch::Receiver<bool>,
) {
    let deadline = tokio::time::Instant::now() + grace;
    let mut reader = reader;
    let waited = async {
        if let Some(r) = reader.as_mut() {
            if tokio::time::timeout_at(deadline, r).await.is_err() {
                return false;
            }
            // Ended: its handle must not be polled again below.
            reader = None;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        ctx.in_flight.wait_idle_of(progress, left).await
    };
    let done = tokio::select! {
        done = waited => done,
        _ = cut.wait_for(|c| *c) => false,
    };
    if !done {
        if let Some(r) = reader {
            // A reader stuck in a fetch must not hand out a job after the
            // cancel.
            r.abort();
            let _ = tokio::time::timeout(READERS_STOP, r).await;
        }
        cancel_in_flight(ctx, grace, Some(std::slice::from_ref(progress))).await;
    }
}
