//! Which jobs of one request partition are answered, and what to commit.
//!
//! A job is answered when its final response record (an `End` or an `Error`)
//! has been acknowledged by the broker. The committed offset is the start
//! offset of the oldest job not yet answered, or the next offset to read when
//! none is in flight: never past a job in flight. Jobs above that offset can
//! be answered while an older one is still running; their start offsets go
//! into the commit's metadata string, so whoever reads the partition next
//! skips them instead of calling the API a second time.

use std::collections::{BTreeMap, BTreeSet};

/// Marks the metadata format; anything else is ignored as foreign.
const METADATA_PREFIX: &str = "ks1:";

/// Largest metadata string we write; brokers refuse more than
/// `offset.metadata.max.bytes` (4096 by default).
pub(crate) const MAX_METADATA_BYTES: usize = 3500;

/// Offsets of one request partition still owed an answer, and those answered
/// out of order.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// Start offsets of jobs not yet answered, with a count in case a
    /// broken producer reused an offset.
    in_flight: BTreeMap<i64, usize>,
    /// Start offsets of jobs that were still assembling when reading stopped:
    /// not answered, not running, to be read again from their first record.
    restart: BTreeSet<i64>,
    /// Start offsets of answered jobs at or above the committable offset.
    answered: BTreeSet<i64>,
    /// Jobs still running from before the current read position was set
    /// (the partition went to another portal and came back meanwhile): they
    /// no longer hold the committed offset down.
    stale: BTreeSet<i64>,
    /// Next offset the reader will fetch.
    next: i64,
}

impl Progress {
    /// Progress of a partition whose reading starts at `next`.
    #[cfg(test)]
    pub(crate) fn starting_at(next: i64) -> Self {
        Self {
            next,
            ..Self::default()
        }
    }

    /// Moves the read position after a fetch.
    pub(crate) fn set_next(&mut self, next: i64) {
        self.next = next;
    }

    /// Reading (re)starts at `start`: jobs below it that were waiting to be
    /// read again were settled by whoever read the partition meanwhile.
    pub(crate) fn set_start(&mut self, start: i64) {
        self.restart = self.restart.split_off(&start);
        let keep = self.in_flight.split_off(&start);
        let below = std::mem::replace(&mut self.in_flight, keep);
        self.stale.extend(below.into_keys());
        self.next = start;
    }

    /// A job starting at `offset` is now in flight.
    pub(crate) fn add(&mut self, offset: i64) {
        self.restart.remove(&offset);
        *self.in_flight.entry(offset).or_default() += 1;
    }

    /// The job starting at `offset` is answered.
    pub(crate) fn done(&mut self, offset: i64) {
        if self.stale.remove(&offset) {
            return;
        }
        if let Some(n) = self.in_flight.get_mut(&offset) {
            *n -= 1;
            if *n == 0 {
                self.in_flight.remove(&offset);
            }
        }
        // Kept until a commit passes it: pruning here, against a read
        // position that may be out of date, could forget an answer that the
        // next reader of the partition still needs.
        self.answered.insert(offset);
    }

    /// Whether the job starting at `offset` is running or already answered,
    /// so a reader meeting its start record again must leave it alone.
    pub(crate) fn known(&self, offset: i64) -> bool {
        self.in_flight.contains_key(&offset) || self.answered.contains(&offset)
    }

    /// Drops jobs that will not be answered here after all (still assembling
    /// when reading stopped): reading the partition again starts them anew.
    /// The committed offset stays at or below them until they are read again.
    pub(crate) fn forget(&mut self, offsets: impl IntoIterator<Item = i64>) {
        for o in offsets {
            if self.stale.remove(&o) {
                continue;
            }
            if self.in_flight.remove(&o).is_some() {
                self.restart.insert(o);
            }
        }
    }

    /// Remembers jobs answered by an earlier owner of the partition.
    pub(crate) fn remember_answered(&mut self, offsets: impl IntoIterator<Item = i64>) {
        self.answered.extend(offsets);
    }

    /// The offset below which every job has been answered.
    pub(crate) fn committable(&self) -> i64 {
        let oldest_running = self.in_flight.keys().next().copied();
        let oldest_restart = self.restart.first().copied();
        [oldest_running, oldest_restart]
            .into_iter()
            .flatten()
            .fold(self.next, i64::min)
    }

    fn prune(&mut self) {
        let floor = self.committable();
        self.answered = self.answered.split_off(&floor);
    }

    /// The offset to commit and its metadata, listing the jobs answered above it.
    pub(crate) fn commit_point(&mut self) -> (i64, String) {
        self.prune();
        let base = self.committable();
        (base, encode_metadata(base, &self.answered))
    }
}

/// `ks1:` and the answered offsets as distances from `base`, comma-separated.
/// When they do not all fit, the lowest are kept; the rest may be called
/// again after a failover, which the idempotency key is there for.
pub(crate) fn encode_metadata(base: i64, answered: &BTreeSet<i64>) -> String {
    let mut out = String::from(METADATA_PREFIX);
    for (i, off) in answered.range(base..).enumerate() {
        let item = (off - base).to_string();
        if out.len() + item.len() + 1 > MAX_METADATA_BYTES {
            log::warn!(
                "{} answered jobs above offset {base} do not fit the commit metadata; the rest may be called again after a failover",
                answered.range(base..).count() - i
            );
            break;
        }
        if i > 0 {
            out.push(',');
        }
        out.push_str(&item);
    }
    out
}

/// The answered offsets a metadata string lists above `base`; foreign or
/// malformed metadata lists none.
pub(crate) fn decode_metadata(base: i64, metadata: &str) -> BTreeSet<i64> {
    let Some(list) = metadata.strip_prefix(METADATA_PREFIX) else {
        return BTreeSet::new();
    };
    list.split(',')
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse::<i64>().ok())
        .filter(|d| *d >= 0)
        .filter_map(|d| base.checked_add(d))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn committable_is_the_oldest_unanswered_job() {
        let mut p = Progress::starting_at(10);
        assert_eq!(p.committable(), 10);
        p.add(3);
        p.add(7);
        assert_eq!(p.committable(), 3);
        p.done(7);
        assert_eq!(p.commit_point(), (3, "ks1:4".to_string()));
        assert!(p.known(7) && p.known(3) && !p.known(5));
        p.add(5);
        p.forget([5]);
        // Forgotten, but the commit must not pass it until it is read again.
        assert!(!p.known(5));
        assert_eq!(p.committable(), 3);
        p.done(3);
        assert_eq!(p.committable(), 5);
        p.set_start(5);
        p.add(5);
        p.done(5);
        p.set_next(20);
        assert_eq!(p.committable(), 20);
        p.set_next(20);
        p.done(3);
        assert_eq!(p.commit_point(), (20, "ks1:".to_string()));
    }

    #[test]
    fn a_job_answered_after_its_partition_left_is_still_known_when_it_returns() {
        let mut p = Progress::starting_at(0);
        p.add(5);
        p.set_next(9);
        assert_eq!(p.commit_point().0, 5);
        // The partition moves away; the job ends later, then the partition
        // comes back with the committed offset 5.
        p.done(5);
        p.set_start(5);
        assert!(p.known(5), "must not be called again");
    }

    #[test]
    fn old_jobs_do_not_pull_the_commit_back_when_a_partition_returns() {
        let mut p = Progress::starting_at(0);
        p.add(5);
        p.set_next(9);
        // Another portal answered everything up to 100 meanwhile.
        p.set_start(100);
        assert_eq!(p.committable(), 100);
        p.done(5);
        p.set_next(120);
        assert_eq!(p.commit_point().0, 120);
    }

    #[test]
    fn foreign_metadata_lists_nothing() {
        assert!(decode_metadata(5, "").is_empty());
        assert!(decode_metadata(5, "hello").is_empty());
        assert_eq!(
            decode_metadata(5, "ks1:0,2,x,-3"),
            [5, 7].into_iter().collect()
        );
    }

    proptest! {
        #[test]
        fn metadata_round_trips_and_stays_small(base in 0i64..1_000_000,
                                                 deltas in prop::collection::btree_set(0i64..10_000_000, 0..2000)) {
            let answered: BTreeSet<i64> = deltas.iter().map(|d| base + d).collect();
            let m = encode_metadata(base, &answered);
            prop_assert!(m.len() <= MAX_METADATA_BYTES);
            let back = decode_metadata(base, &m);
            prop_assert!(back.is_subset(&answered));
            // What was dropped is only ever the highest offsets.
            if let Some(max_kept) = back.iter().next_back() {
                prop_assert!(answered.range(..=max_kept).all(|o| back.contains(o)));
            }
        }
    }
}
