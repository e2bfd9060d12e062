//! What every task of a portal shares, and how a task takes its share: a
//! slot in the job queue, a place among the tasks shutdown waits for, and
//! the job's entry in its partition's ledger, settled when it ends.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify, Semaphore};

use crate::kafka::{Cluster, PartitionCache};
use crate::portal::admin::{Metrics, Readiness};
use crate::portal::budget::Budgets;
use crate::portal::http_dispatch::Dispatcher;
use crate::portal::ledger::Progress;
use crate::portal::settings::Settings;
use crate::protocol::signing::Verifier;

/// Counts running job tasks so shutdown can wait for them.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

/// One running task's place in [`InFlight`]; it leaves on drop.
pub(crate) struct InFlightGuard(Arc<InFlight>);

impl InFlight {
    /// Counts one more running task until the guard is dropped.
    pub(crate) fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(Arc::clone(self))
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
}

impl InFlight {
    /// Tasks running now.
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
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
pub(crate) struct Ctx {
    pub(crate) cfg: Settings,
    pub(crate) cluster: Cluster,
    pub(crate) dispatcher: Dispatcher,
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
