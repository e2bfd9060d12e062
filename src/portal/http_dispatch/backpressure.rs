//! What the portal does when the API pushes back: which answers it calls
//! again and how long it waits first ([`RetryPolicy`], [`retry_after`]), and
//! how many calls it lets run at once toward the API while it pushes back
//! ([`Limiter`], additive increase and multiplicative decrease).
//!
//! The counters and the current limit live here, in [`Backpressure`], and the
//! admin listener reads them at scrape time.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hyper::{Method, StatusCode};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The first wait of the exponential backoff; each retry doubles it.
const BASE_DELAY: Duration = Duration::from_secs(1);

/// An API answer that asks the portal to come back later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushback {
    /// 429 Too Many Requests: this caller sends too much.
    TooMany,
    /// 503 Service Unavailable: the API is overloaded or down for a while.
    Unavailable,
    /// 409 Conflict, which an API honouring idempotency keys answers to a
    /// repeated key while the first call with it still runs.
    Conflict,
}

impl Pushback {
    /// Every kind, in the order the metrics list them.
    pub(crate) const ALL: [Pushback; 3] = [Self::TooMany, Self::Unavailable, Self::Conflict];

    /// The kind of pushback `status` is, if any. 502 and 504 are not: they
    /// come from a gateway, not from the API, and a 504'd call may still be
    /// running there.
    pub(crate) fn of(status: StatusCode) -> Option<Self> {
        match status {
            StatusCode::TOO_MANY_REQUESTS => Some(Self::TooMany),
            StatusCode::SERVICE_UNAVAILABLE => Some(Self::Unavailable),
            StatusCode::CONFLICT => Some(Self::Conflict),
            _ => None,
        }
    }

    /// The metric label: the status code.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::TooMany => "429",
            Self::Unavailable => "503",
            Self::Conflict => "409",
        }
    }

    /// Whether it says the API has too much to do, so fewer calls should run.
    pub(crate) fn is_overload(self) -> bool {
        self != Self::Conflict
    }
}

/// When and how often pushed-back calls are made again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
    /// Calls one job may make while the API pushes back, the first included;
    /// 1 turns retrying off.
    pub(crate) max_attempts: u32,
    /// Longest wait before a call is made again, whatever `Retry-After` says.
    pub(crate) max_delay: Duration,
    /// How long after a job's first call a 409 is still retried; zero never.
    pub(crate) conflict_window: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            max_delay: Duration::from_secs(30),
            conflict_window: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Whether a call answered with `kind` may be made again: `calls` made so
    /// far, `since_first` since the first, `keyed` when the idempotency header
    /// is on. Without a key only methods that are idempotent by definition are
    /// sent twice; a 409 means something only with a key, and only for a while,
    /// since a genuine conflict does not go away.
    pub(crate) fn may_retry(
        &self,
        kind: Pushback,
        method: &Method,
        keyed: bool,
        calls: u32,
        since_first: Duration,
    ) -> bool {
        if calls >= self.max_attempts {
            return false;
        }
        match kind {
            Pushback::Conflict => keyed && since_first < self.conflict_window,
            Pushback::TooMany | Pushback::Unavailable => keyed || is_idempotent(method),
        }
    }

    /// How long to wait before call number `calls + 1`: what `Retry-After`
    /// asked for, or else the exponential backoff, at most `max_delay`, with
    /// jitter so that jobs pushed back together do not come back together.
    /// `unit` is a random number in `0..1`.
    pub(crate) fn delay(&self, calls: u32, asked: Option<Duration>, unit: f64) -> Duration {
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        match asked {
            // Never earlier than asked; up to a tenth (at most 1 s) later.
            Some(asked) => {
                let asked = asked.min(self.max_delay);
                let spread = (asked / 10).min(Duration::from_secs(1));
                (asked + spread.mul_f64(unit)).min(self.max_delay)
            }
            // Between half and all of the doubled wait.
            None => {
                let doublings = calls.saturating_sub(1).min(20);
                let full = BASE_DELAY
                    .saturating_mul(1 << doublings)
                    .min(self.max_delay);
                full / 2 + (full / 2).mul_f64(unit)
            }
        }
    }
}

/// Whether `method` is idempotent by definition (RFC 9110, 9.2.2).
pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The wait a `Retry-After` value asks for, read at `now`: whole seconds
/// (any number of digits; huge ones saturate, the caller caps them) or an
/// HTTP-date (one in the past asks for none). `None` for anything else,
/// signs and fractions included, so the backoff applies.
pub(crate) fn retry_after(value: &[u8], now: SystemTime) -> Option<Duration> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if text.is_empty() {
        return None;
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        let secs = text.bytes().fold(0u64, |n, d| {
            n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
        });
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// What the portal knows of the API's pushback: the limiter and counters,
/// shared by every job and read by the admin listener.
#[derive(Debug)]
pub(crate) struct Backpressure {
    /// Calls toward the API at once.
    pub(crate) limiter: Arc<Limiter>,
    /// Calls made again, by [`Pushback::ALL`]'s order.
    retries: [AtomicU64; 3],
}

impl Backpressure {
    /// Up to `max` calls at once.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            limiter: Arc::new(Limiter::new(max)),
            retries: Default::default(),
        }
    }

    /// A call is being made again after `kind`.
    pub(crate) fn retried(&self, kind: Pushback) {
        self.retries[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Calls made again after `kind` so far.
    pub(crate) fn retries(&self, kind: Pushback) -> u64 {
        self.retries[kind as usize].load(Ordering::Relaxed)
    }
}

/// How many calls may run toward the API at once: between 1 and `max`,
/// halved when the API answers 429 or 503, one more after each run of as
/// many good answers as the limit (so it grows by about one per round of
/// calls and recovers to `max` when the pushback ends).
#[derive(Debug)]
pub(crate) struct Limiter {
    max: usize,
    /// Guarded together because each change reads and writes several fields;
    /// held only for a few integer operations, never across an await.
    state: Mutex<LimitState>,
    /// Woken when a slot is given back or the limit grows.
    freed: Notify,
}

#[derive(Debug)]
struct LimitState {
    limit: usize,
    in_use: usize,
    /// Good answers since the limit last changed.
    successes: usize,
    /// Bumped on each decrease: calls that started before it do not halve
    /// the limit again, so a burst of 503s answering one round of calls
    /// counts once.
    epoch: u64,
}

impl Limiter {
    /// Up to `max` (at least 1) calls at once, starting at `max`.
    pub(crate) fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            max,
            state: Mutex::new(LimitState {
                limit: max,
                in_use: 0,
                successes: 0,
                epoch: 0,
            }),
            freed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LimitState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The limit now.
    pub(crate) fn limit(&self) -> usize {
        self.lock().limit
    }

    /// Calls running now.
    #[cfg(test)]
    pub(crate) fn in_use(&self) -> usize {
        self.lock().in_use
    }

    /// A slot if one is free now.
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        let mut st = self.lock();
        if st.in_use >= st.limit {
            return None;
        }
        st.in_use += 1;
        Some(Slot {
            limiter: Arc::clone(self),
            epoch: st.epoch,
        })
    }

    /// A slot that leaves at least one other free, if there is one now.
    fn try_acquire_spare(self: &Arc<Self>) -> Option<Slot> {
        let mut st = self.lock();
        if st.in_use + 1 >= st.limit {
            return None;
        }
        st.in_use += 1;
        Some(Slot {
            limiter: Arc::clone(self),
            epoch: st.epoch,
        })
    }

    /// Like [`Limiter::acquire_until`] for a call whose body still arrives:
    /// until `verified` resolves it takes only a slot that leaves another
    /// free. Its body comes from a partition's reader, which may be waiting
    /// for jobs that need a slot; taking the last one could stop them all.
    pub(crate) async fn acquire_spare_until(
        self: &Arc<Self>,
        deadline: Instant,
        verified: impl Future<Output = ()>,
    ) -> Option<Slot> {
        tokio::pin!(verified);
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(slot) = self.try_acquire_spare() {
                return Some(slot);
            }
            tokio::select! {
                biased;
                () = &mut verified => return self.acquire_until(deadline).await,
                woken = tokio::time::timeout_at(deadline, freed) => {
                    if woken.is_err() {
                        return self.try_acquire_spare();
                    }
                }
            }
        }
    }

    /// Waits for a slot until `deadline`; `None` when none came free by then.
    pub(crate) async fn acquire_until(self: &Arc<Self>, deadline: Instant) -> Option<Slot> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before looking, so a slot given back in between wakes us.
            freed.as_mut().enable();
            if let Some(slot) = self.try_acquire() {
                return Some(slot);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return self.try_acquire();
            }
        }
    }
}

/// One call's place under the [`Limiter`]; given back on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    limiter: Arc<Limiter>,
    /// The limiter's epoch when the call started.
    epoch: u64,
}

impl Slot {
    /// The API answered this call with 429 or 503: halve the limit, unless
    /// it was already halved since this call started.
    pub(crate) fn overloaded(&self) {
        let mut st = self.limiter.lock();
        if st.epoch == self.epoch {
            st.limit = (st.limit / 2).max(1);
            st.epoch += 1;
            st.successes = 0;
        }
    }

    /// The API answered this call without pushing back.
    pub(crate) fn answered(&self) {
        let mut st = self.limiter.lock();
        st.successes += 1;
        if st.successes >= st.limit {
            st.successes = 0;
            if st.limit < self.limiter.max {
                st.limit += 1;
                drop(st);
                self.limiter.freed.notify_waiters();
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut st = self.limiter.lock();
        st.in_use = st.in_use.saturating_sub(1);
        drop(st);
        self.limiter.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = at(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(retry_after(b"1", now), Some(Duration::from_secs(1)));
        assert_eq!(retry_after(b" 120 ", now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(b"0", now), Some(Duration::ZERO));
        assert_eq!(
            retry_after(b"Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        // The obsolete date forms HTTP still allows.
        assert_eq!(
            retry_after(b"Wednesday, 21-Oct-15 07:29:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            retry_after(b"Wed Oct 21 07:28:05 2015", now),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn hostile_retry_after_values_are_bounded_or_ignored() {
        let now = at(1_445_412_480);
        // Huge: saturates, never overflows or panics.
        let huge = retry_after(b"99999999999999999999999999999999999999", now);
        assert_eq!(huge, Some(Duration::from_secs(u64::MAX)));
        // A date in the past asks for no wait at all.
        assert_eq!(
            retry_after(b"Thu, 01 Jan 1970 00:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        for garbage in [
            &b"-1"[..],
            b"+5",
            b"1.5",
            b"1e3",
            b"",
            b"   ",
            b"soon",
            b"Wed, 32 Oct 2015 07:28:00 GMT",
            b"Wed, 21 Oct 2015 25:28:00 GMT",
            b"\xff\xfe",
            b"5 s",
            b"0x10",
        ] {
            assert_eq!(retry_after(garbage, now), None, "{garbage:?}");
        }
    }

    #[test]
    fn delays_honour_retry_after_within_the_cap() {
        let p = RetryPolicy {
            max_delay: Duration::from_secs(30),
            ..RetryPolicy::default()
        };
        let one = Some(Duration::from_secs(1));
        assert_eq!(p.delay(1, one, 0.0), Duration::from_secs(1));
        assert_eq!(p.delay(1, one, 1.0), Duration::from_millis(1100));
        // A huge ask is capped, jitter included.
        let huge = Some(Duration::from_secs(u64::MAX));
        assert_eq!(p.delay(1, huge, 1.0), Duration::from_secs(30));
        assert_eq!(p.delay(1, Some(Duration::ZERO), 1.0), Duration::ZERO);
        // Out-of-range randomness cannot push past the cap either.
        assert_eq!(p.delay(1, huge, 7.0), Duration::from_secs(30));
        assert_eq!(p.delay(1, one, f64::NAN), Duration::from_secs(1));
        assert_eq!(p.delay(1, None, -3.0), Duration::from_millis(500));
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let p = RetryPolicy {
            max_delay: Duration::from_secs(10),
            ..RetryPolicy::default()
        };
        assert_eq!(p.delay(1, None, 0.0), Duration::from_millis(500));
        assert_eq!(p.delay(1, None, 1.0), Duration::from_secs(1));
        assert_eq!(p.delay(2, None, 1.0), Duration::from_secs(2));
        assert_eq!(p.delay(3, None, 0.0), Duration::from_secs(2));
        assert_eq!(p.delay(5, None, 1.0), Duration::from_secs(10));
        assert_eq!(p.delay(u32::MAX, None, 1.0), Duration::from_secs(10));
    }

    #[test]
    fn only_safe_calls_are_retried_and_409_only_briefly() {
        let p = RetryPolicy {
            max_attempts: 3,
            conflict_window: Duration::from_secs(30),
            ..RetryPolicy::default()
        };
        let s = Duration::from_secs;
        let busy = Pushback::Unavailable;
        assert!(p.may_retry(busy, &Method::GET, false, 1, s(0)));
        assert!(p.may_retry(busy, &Method::PUT, false, 2, s(0)));
        assert!(!p.may_retry(busy, &Method::GET, false, 3, s(0)));
        assert!(!p.may_retry(Pushback::TooMany, &Method::POST, false, 1, s(0)));
        assert!(!p.may_retry(busy, &Method::PATCH, false, 1, s(0)));
        assert!(p.may_retry(Pushback::TooMany, &Method::POST, true, 1, s(0)));
        let conflict = Pushback::Conflict;
        assert!(p.may_retry(conflict, &Method::POST, true, 1, s(29)));
        assert!(!p.may_retry(conflict, &Method::POST, true, 1, s(30)));
        assert!(!p.may_retry(conflict, &Method::PUT, false, 1, s(0)));
        let off = RetryPolicy {
            max_attempts: 1,
            ..p
        };
        assert!(!off.may_retry(busy, &Method::GET, true, 1, s(0)));
        let never = RetryPolicy {
            conflict_window: Duration::ZERO,
            ..p
        };
        assert!(!never.may_retry(conflict, &Method::POST, true, 1, s(0)));
    }

    #[test]
    fn the_limit_halves_once_per_round_and_recovers() {
        let l = Arc::new(Limiter::new(8));
        let round: Vec<Slot> = (0..8).map(|_| l.try_acquire().unwrap()).collect();
        assert!(l.try_acquire().is_none(), "no more than the limit at once");
        // Eight 503s to calls that started together halve the limit once.
        for s in &round {
            s.overloaded();
        }
        assert_eq!(l.limit(), 4);
        drop(round);
        assert_eq!(l.in_use(), 0);
        // The next round is smaller, and halves it again.
        let round: Vec<Slot> = (0..4).map(|_| l.try_acquire().unwrap()).collect();
        assert!(l.try_acquire().is_none());
        round[0].overloaded();
        round[1].overloaded();
        assert_eq!(l.limit(), 2);
        drop(round);
        for _ in 0..5 {
            l.try_acquire().unwrap().overloaded();
        }
        assert_eq!(l.limit(), 1, "never below one");
        // Recovery: one more after as many good answers as the limit.
        let mut answered = 0;
        while l.limit() < 8 {
            l.try_acquire().unwrap().answered();
            answered += 1;
            assert!(answered < 100, "the limit did not recover");
        }
        assert_eq!(answered, 1 + 2 + 3 + 4 + 5 + 6 + 7);
        for _ in 0..50 {
            l.try_acquire().unwrap().answered();
        }
        assert_eq!(l.limit(), 8, "never above the maximum");
    }

    #[test]
    fn a_slot_given_back_after_the_limit_shrank_is_not_handed_out() {
        let l = Arc::new(Limiter::new(4));
        let slots: Vec<Slot> = (0..4).map(|_| l.try_acquire().unwrap()).collect();
        slots[0].overloaded();
        assert_eq!(l.limit(), 2);
        let mut slots = slots.into_iter();
        drop(slots.next());
        drop(slots.next());
        // Two still run: that is the new limit, so none is free.
        assert!(l.try_acquire().is_none());
        drop(slots.next());
        assert!(l.try_acquire().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_whose_body_still_arrives_leaves_the_last_slot_free() {
        let limiter = Arc::new(Limiter::new(2));
        let deadline = Instant::now() + Duration::from_secs(10);
        let first = limiter
            .acquire_spare_until(deadline, std::future::pending())
            .await;
        assert!(first.is_some(), "one of two slots leaves one free");
        // The second would be the last: not taken until the deadline...
        let none = limiter
            .acquire_spare_until(deadline, std::future::pending())
            .await;
        assert!(none.is_none());
        // ...but at once when the body is verified.
        let verified = limiter
            .acquire_spare_until(deadline + Duration::from_secs(10), async {})
            .await;
        assert!(verified.is_some());
        drop(first);
        // And any time a slot besides the last comes free.
        let waiting = tokio::spawn({
            let limiter = Arc::clone(&limiter);
            async move {
                limiter
                    .acquire_spare_until(
                        Instant::now() + Duration::from_secs(60),
                        std::future::pending(),
                    )
                    .await
                    .is_some()
            }
        });
        drop(verified);
        assert!(waiting.await.unwrap());
    }

    #[tokio::test]
    async fn waiting_for_a_slot_ends_when_one_is_free_or_at_the_deadline() {
        let l = Arc::new(Limiter::new(1));
        let held = l.try_acquire().unwrap();
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(l.acquire_until(soon).await.is_none());
        let waiter = {
            let l = Arc::clone(&l);
            tokio::spawn(async move {
                l.acquire_until(Instant::now() + Duration::from_secs(30))
                    .await
                    .is_some()
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        let got = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the waiter was not woken")
            .unwrap();
        assert!(got);
    }
}
