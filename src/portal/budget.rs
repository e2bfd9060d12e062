//! The memory and disk one portal may use for requests, shared by the
//! assemblers of all its partitions: each job holds [`Lease`]s on a
//! [`Budget`], grown before it takes the bytes and given back on drop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Bytes that all jobs of a portal share, on disk or in memory; jobs take
/// [`Lease`]s from it as they grow. Atomic, so the readers of all partitions
/// draw on one budget without a lock.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: u64,
    /// The last bytes of `limit`, which leases taken with
    /// [`Lease::short_of_reserve`] may not fill.
    reserve: u64,
    used: AtomicU64,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub(crate) fn new(limit: u64) -> Arc<Self> {
        Self::with_reserve(limit, 0)
    }

    /// A budget of `limit` bytes whose last `reserve` bytes only some
    /// leases may take.
    pub(crate) fn with_reserve(limit: u64, reserve: u64) -> Arc<Self> {
        Arc::new(Self {
            limit,
            reserve,
            used: AtomicU64::new(0),
        })
    }

    /// Bytes currently held by leases.
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// The most bytes the leases may hold together.
    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    /// The last bytes of the limit that only some leases may take.
    pub(crate) fn reserve(&self) -> u64 {
        self.reserve
    }
}

/// The budgets one portal's assemblers share, whatever partition they read.
#[derive(Debug, Clone)]
pub(crate) struct Budgets {
    /// Disk for spool files (`PORTAL_MAX_SPOOL_BYTES`).
    pub(crate) spool: Arc<Budget>,
    /// Memory for requests: jobs' start records and chunk tables while they
    /// assemble, and bodies kept in memory until the last copy is dropped
    /// (`PORTAL_MAX_ASSEMBLY_MEMORY_BYTES`); bodies leave the last
    /// [`Limits::memory_reserve`](crate::portal::assembler::Limits::memory_reserve) bytes to the others.
    pub(crate) memory: Arc<Budget>,
}

/// The part of a [`Budget`] one job holds; given back on drop.
#[derive(Debug)]
pub(crate) struct Lease {
    budget: Arc<Budget>,
    held: u64,
    /// The budget's use this lease may not grow it past.
    ceiling: u64,
}

impl Lease {
    /// A lease that may grow until the budget is used up.
    pub(crate) fn new(budget: &Arc<Budget>) -> Self {
        Self {
            budget: Arc::clone(budget),
            held: 0,
            ceiling: budget.limit,
        }
    }

    /// A lease that may grow only while the budget's reserve stays free.
    pub(crate) fn short_of_reserve(budget: &Arc<Budget>) -> Self {
        Self {
            budget: Arc::clone(budget),
            held: 0,
            ceiling: budget.limit.saturating_sub(budget.reserve),
        }
    }

    /// Grows the lease by `bytes`; false, and unchanged, when the budget
    /// cannot cover it.
    pub(crate) fn grow_by(&mut self, bytes: u64) -> bool {
        self.held
            .checked_add(bytes)
            .is_some_and(|total| self.grow_to(total))
    }

    /// Grows the lease to `bytes`; false, and unchanged, when the budget
    /// cannot cover it.
    pub(crate) fn grow_to(&mut self, bytes: u64) -> bool {
        if bytes <= self.held {
            return true;
        }
        let extra = bytes - self.held;
        let ceiling = self.ceiling;
        let taken = self
            .budget
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(extra).filter(|&n| n <= ceiling)
            })
            .is_ok();
        if taken {
            self.held = bytes;
        }
        taken
    }
}

impl Lease {
    /// Bytes this lease holds now.
    pub(crate) fn held(&self) -> u64 {
        self.held
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.held, Ordering::SeqCst);
    }
}
