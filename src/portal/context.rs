//! What every task of a portal shares, and how a task takes its share: a
//! slot in the job queue, a place among the tasks shutdown waits for, and
//! the job's entry in its partition's ledger, settled when it ends.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;

use crate::kafka::{Cluster, PartitionCache};
use crate::portal::admin::{Metrics, Readiness};
use crate::portal::budget::Budgets;
use crate::portal::ledger::Progress;
use crate::portal::settings::Settings;
use crate::protocol::signing::Verifier;
use crate::protocol::wire::JobId;

/// The running job tasks: counted so shutdown can wait for them, and
/// listed so those still running when their partition must be released can
/// be cancelled (`cancel`).
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    count: AtomicUsize,
    idle: Notify,
    /// Told each time a task ends.
    ended: Notify,
    /// At most one entry per job queue slot (`Ctx::queue_permits`).
    tasks: Mutex<BTreeMap<u64, Running>>,
    next_key: AtomicU64,
}

/// One running task as `InFlight` lists it.
#[derive(Debug)]
struct Running {
    job: JobId,
    /// Its partition's ledger, which names the partition.
    progress: Arc<Mutex<Progress>>,
    /// Set as soon as the task is spawned.
    abort: Option<AbortHandle>,
}

/// One running task's place in [`InFlight`] and its entry in its
/// partition's ledger: on drop, whether the task ended or was cancelled,
/// the job is settled (or, unfinished, left to be read again), its queue
/// slot freed, and it leaves the count.
pub(crate) struct InFlightGuard {
    in_flight: Arc<InFlight>,
    key: u64,
    progress: Arc<Mutex<Progress>>,
    first_offset: i64,
    settled: bool,
    queued: Option<OwnedSemaphorePermit>,
}

impl InFlight {
    fn enter(
        self: &Arc<Self>,
        job: JobId,
        progress: &Arc<Mutex<Progress>>,
        first_offset: i64,
        queued: OwnedSemaphorePermit,
    ) -> InFlightGuard {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        self.tasks().insert(
            key,
            Running {
                job,
                progress: Arc::clone(progress),
                abort: None,
            },
        );
        self.count.fetch_add(1, Ordering::SeqCst);
        InFlightGuard {
            in_flight: Arc::clone(self),
            key,
            progress: Arc::clone(progress),
            first_offset,
            settled: false,
            queued: Some(queued),
        }
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Running>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits up to `grace` for every task to end; whether they all did.
    pub(crate) async fn wait_idle(&self, grace: Duration) -> bool {
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

    /// Waits up to `grace` for every task of the partition whose ledger is
    /// `of` to end; whether they all did.
    pub(crate) async fn wait_idle_of(&self, of: &Arc<Mutex<Progress>>, grace: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let notified = self.ended.notified();
            let busy = self.tasks().values().any(|r| Arc::ptr_eq(&r.progress, of));
            if !busy {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return !self.tasks().values().any(|r| Arc::ptr_eq(&r.progress, of));
            }
        }
    }

    /// Cancels the tasks of the partitions whose ledgers are `of` (every
    /// task with `None`) and waits, up to `CANCEL_WAIT`, until they have
    /// ended: their API calls dropped, connection and all, and no record of
    /// theirs produced from then on. Returns the jobs cancelled.
    pub(crate) async fn cancel(&self, of: Option<&[Arc<Mutex<Progress>>]>) -> Vec<JobId> {
        let mut cancelled = Vec::new();
        let mut keys = Vec::new();
        for (&key, r) in self.tasks().iter() {
            if of.is_some_and(|of| !of.iter().any(|p| Arc::ptr_eq(p, &r.progress))) {
                continue;
            }
            if let Some(abort) = &r.abort {
                abort.abort();
                cancelled.push(r.job);
                keys.push(key);
            }
        }
        let deadline = tokio::time::Instant::now() + CANCEL_WAIT;
        loop {
            let notified = self.ended.notified();
            let left = {
                let tasks = self.tasks();
                keys.iter().filter(|k| tasks.contains_key(k)).count()
            };
            if left == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                log::warn!(
                    "{left} cancelled jobs did not end within {} s",
                    CANCEL_WAIT.as_secs()
                );
                break;
            }
        }
        cancelled
    }
}

/// How long cancelled tasks get to end: they stop at their next await, so
/// only a task stuck outside the runtime's reach takes longer.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

impl InFlightGuard {
    /// Marks the job settled: its final record is acknowledged or it can
    /// never be answered (see [`settle`]).
    pub(crate) fn settled(&mut self, settled: bool) {
        self.settled = settled;
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        settle(&self.progress, self.first_offset, self.settled);
        drop(self.queued.take());
        self.in_flight.tasks().remove(&self.key);
        self.in_flight.ended.notify_waiters();
        if self.in_flight.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.in_flight.idle.notify_waiters();
        }
    }
}

/// Runs `work` for `job` (its start record at `first_offset` in the
/// partition whose ledger is `progress`) in a task `InFlight` tracks and can
/// cancel; `work` returns whether the job is settled (see [`settle`]).
pub(crate) fn spawn_tracked<F>(
    ctx: &Ctx,
    progress: &Arc<Mutex<Progress>>,
    job: JobId,
    first_offset: i64,
    queued: OwnedSemaphorePermit,
    work: F,
) where
    F: Future<Output = bool> + Send + 'static,
{
    let mut guard = ctx.in_flight.enter(job, progress, first_offset, queued);
    let key = guard.key;
    let task = tokio::spawn(async move {
        let settled = work.await;
        guard.settled(settled);
        drop(guard);
    });
    // The task may have ended already; then its entry is gone and this
    // does nothing.
    if let Some(r) = ctx.in_flight.tasks().get_mut(&key) {
        r.abort = Some(task.abort_handle());
    }
}

/// What every task of a portal shares.
pub(crate) struct Ctx {
    pub(crate) cfg: Settings,
    pub(crate) cluster: Cluster,
    /// The route table, each route with its dispatcher.
    pub(crate) routes: crate::portal::router::Routes,
    pub(crate) replies: PartitionCache,
    pub(crate) response_partitions: i32,
    /// REST calls at once.
    pub(crate) call_permits: Arc<Semaphore>,
    /// Completed jobs waiting for or holding a call permit; bounds the spool
    /// files held by queued jobs. The reader waits when none is free.
    pub(crate) queue_permits: Arc<Semaphore>,
    pub(crate) in_flight: Arc<InFlight>,
    /// Progress of every request partition this portal has read, kept across
    /// rebalances so a job still running from an earlier generation is known
    /// when its partition comes back, and still commits when it ends.
    pub(crate) progress: Mutex<BTreeMap<i32, Arc<Mutex<Progress>>>>,
    /// Disk all spool files may take together (PORTAL_MAX_SPOOL_BYTES) and
    /// memory all requests may take together
    /// (PORTAL_MAX_ASSEMBLY_MEMORY_BYTES), whichever partition they came on.
    pub(crate) budgets: Budgets,
    /// Checks request signatures when `PORTAL_TRUSTED_KEYS` is set.
    pub(crate) verifier: Option<Verifier>,
    /// Partitions of the request topic, to tell where a sender puts a job.
    pub(crate) request_partitions: i32,
    /// Counters the admin listener serves (kept whether it runs or not).
    pub(crate) metrics: Arc<Metrics>,
    /// What `/readyz` answers.
    pub(crate) readiness: Arc<Readiness>,
}

impl Ctx {
    /// The ledger of `partition`, made on first use and kept from then on.
    pub(crate) fn progress_of(&self, partition: i32) -> Arc<Mutex<Progress>> {
        let mut map = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(map.entry(partition).or_default())
    }
}

/// Locks a partition's ledger, even one a panicking task left poisoned.
pub(crate) fn lock(p: &Mutex<Progress>) -> std::sync::MutexGuard<'_, Progress> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits for a slot in the job queue; `None` when the reader was stopped
/// first, and then the job starting at `first_offset` is left for the
/// partition's next reader.
pub(crate) async fn queue_slot(
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

/// A job is settled when its final record is acknowledged or it can never
/// be answered; otherwise it is left for the next reader to run again.
pub(crate) fn settle(progress: &Mutex<Progress>, first_offset: i64, settled: bool) {
    let mut p = lock(progress);
    if settled {
        p.done(first_offset);
    } else {
        p.forget([first_offset]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Enters `job` at `offset` of `progress` and runs `work` as
    /// `spawn_tracked` does, without the rest of a portal.
    fn track(
        in_flight: &Arc<InFlight>,
        progress: &Arc<Mutex<Progress>>,
        job: u8,
        offset: i64,
        work: impl Future<Output = bool> + Send + 'static,
    ) {
        lock(progress).add(offset);
        let permit = Arc::new(Semaphore::new(1))
            .try_acquire_owned()
            .unwrap_or_else(|_| unreachable!("a fresh semaphore has a permit"));
        let mut guard = in_flight.enter(JobId([job; 16]), progress, offset, permit);
        let key = guard.key;
        let task = tokio::spawn(async move {
            let settled = work.await;
            guard.settled(settled);
            drop(guard);
        });
        if let Some(r) = in_flight.tasks().get_mut(&key) {
            r.abort = Some(task.abort_handle());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_ends_the_task_and_leaves_its_job_to_be_read_again() {
        let in_flight = Arc::new(InFlight::default());
        let (p0, p1) = (
            Arc::new(Mutex::new(Progress::starting_at(0))),
            Arc::new(Mutex::new(Progress::starting_at(0))),
        );
        // A call that never ends, on each of two partitions; it notes its
        // drop, as hyper drops the connection of a dropped call.
        let (dropped_tx, mut dropped_rx) = tokio::sync::mpsc::channel::<u8>(4);
        for (job, p) in [(1u8, &p0), (2u8, &p1)] {
            let tx = dropped_tx.clone();
            track(&in_flight, p, job, 5, async move {
                struct Conn(u8, tokio::sync::mpsc::Sender<u8>);
                impl Drop for Conn {
                    fn drop(&mut self) {
                        let _ = self.1.try_send(self.0);
                    }
                }
                let _conn = Conn(job, tx);
                std::future::pending::<()>().await;
                true
            });
        }
        tokio::task::yield_now().await;
        assert!(!in_flight.wait_idle(Duration::from_secs(30)).await);

        // Only the partition being released loses its job.
        let cancelled = in_flight.cancel(Some(std::slice::from_ref(&p0))).await;
        assert_eq!(cancelled, vec![JobId([1; 16])]);
        assert_eq!(dropped_rx.try_recv().ok(), Some(1));
        assert!(!lock(&p0).known(5), "a cancelled job stays in its ledger");
        assert!(lock(&p1).known(5));
        assert_eq!(in_flight.count.load(Ordering::SeqCst), 1);

        let cancelled = in_flight.cancel(None).await;
        assert_eq!(cancelled, vec![JobId([2; 16])]);
        assert_eq!(dropped_rx.try_recv().ok(), Some(2));
        assert!(in_flight.wait_idle(Duration::ZERO).await);
        lock(&p1).set_next(10);
        assert_eq!(
            lock(&p1).committable(),
            5,
            "an unanswered job was committed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ends_settles_its_job() {
        let in_flight = Arc::new(InFlight::default());
        let p = Arc::new(Mutex::new(Progress::starting_at(0)));
        track(&in_flight, &p, 1, 0, async { true });
        assert!(in_flight.wait_idle(Duration::from_secs(1)).await);
        lock(&p).set_next(10);
        assert_eq!(lock(&p).committable(), 10);
        assert!(in_flight.cancel(None).await.is_empty());
    }
}
