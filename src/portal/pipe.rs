//! The pipelined relay's shared state: a request body the API call streams
//! while its chunks still arrive. The assembler writes each chunk to the
//! job's spool file and publishes, through a [`PipeFeed`], how many bytes
//! from byte 0 are written with their CRC32C checked, then the verdict on
//! the whole body. The call reads the file up to there; it holds the body's
//! last byte back until the verdict is [`PipeState::Verified`], so the API
//! never has a complete request whose digest did not match.

use crate::portal::body_file::BodyFile;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::portal::budget::Lease;
use crate::protocol::Failure;

/// Most chunks past a gap a feed remembers to move its prefix on once the
/// gap fills; a sender that reorders more than this streams the rest only
/// once the body is verified. Kafka keeps a partition's order, so only a
/// sender's retries reorder, and by a few chunks.
const MAX_AHEAD: usize = 64;

/// How far a pipelined body has come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PipeState {
    /// The first this many bytes are in the spool file, their chunks' CRC32C checked.
    Receiving(u64),
    /// Every byte arrived and the body's SHA-256 matched.
    Verified,
    /// The body will never be complete; the job answers with this failure.
    Failed(Failure),
    /// The reader let the job go (its partition was revoked, or the portal
    /// is stopping): whoever reads the partition next runs it again, so
    /// this run answers nothing.
    Gone,
}

/// What the assembler and a pipelined job's call share.
#[derive(Debug)]
pub(crate) struct Pipe {
    /// The job's spool file (a descriptor of its own; reads are positional).
    file: BodyFile,
    /// The length the start record declared.
    len: u64,
    state: watch::Sender<PipeState>,
    /// When the body was verified: the call's deadline counts from here.
    verified_at: OnceLock<Instant>,
    /// The spool file's share of the disk budget once the assembler let
    /// the body go: kept until the last reader of the file is done.
    disk: Mutex<Option<Lease>>,
}

impl Pipe {
    /// A pipe over the spool `file` of a body of `len` bytes, and the
    /// assembler's end of it.
    pub(crate) fn new(file: BodyFile, len: u64) -> (Arc<Self>, PipeFeed) {
        let pipe = Arc::new(Self {
            file,
            len,
            state: watch::Sender::new(PipeState::Receiving(0)),
            verified_at: OnceLock::new(),
            disk: Mutex::new(None),
        });
        let feed = PipeFeed {
            pipe: Arc::clone(&pipe),
            prefix: 0,
            ahead: BTreeMap::new(),
            ended: false,
        };
        (pipe, feed)
    }

    /// The declared body length.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The spool file.
    pub(crate) fn file(&self) -> &BodyFile {
        &self.file
    }

    /// The state now.
    #[cfg(test)]
    pub(crate) fn state(&self) -> PipeState {
        self.state.borrow().clone()
    }

    /// Whether the body failed or was let go.
    pub(crate) fn is_broken(&self) -> bool {
        matches!(*self.state.borrow(), PipeState::Failed(_) | PipeState::Gone)
    }

    /// When the body was verified, if it was.
    pub(crate) fn verified_at(&self) -> Option<Instant> {
        self.verified_at.get().copied()
    }

    /// How many bytes from the start may be sent in `state`: what arrived,
    /// short of the last byte until the body is verified; `None` once the
    /// body failed or was let go.
    fn sendable(&self, state: &PipeState) -> Option<u64> {
        match state {
            PipeState::Receiving(n) => Some((*n).min(self.len.saturating_sub(1))),
            PipeState::Verified => Some(self.len),
            PipeState::Failed(_) | PipeState::Gone => None,
        }
    }

    /// Waits until more than `pos` bytes may be sent and returns how many;
    /// the final state when the body failed or was let go first.
    pub(crate) async fn sendable_beyond(&self, pos: u64) -> Result<u64, PipeState> {
        let mut rx = self.state.subscribe();
        let state = rx
            .wait_for(|s| self.sendable(s).is_none_or(|n| n > pos))
            .await
            .map(|s| s.clone())
            // The sender lives in `self`: it cannot be gone while we wait.
            .unwrap_or(PipeState::Gone);
        self.sendable(&state).ok_or(state)
    }

    /// Waits for the verdict: `Verified`, `Failed` or `Gone`.
    pub(crate) async fn ended(&self) -> PipeState {
        let mut rx = self.state.subscribe();
        rx.wait_for(|s| !matches!(s, PipeState::Receiving(_)))
            .await
            .map(|s| s.clone())
            .unwrap_or(PipeState::Gone)
    }

    /// Resolves once the body is verified; never if it fails or is let go
    /// (the job ends on that instead).
    pub(crate) async fn verified(&self) {
        if self.ended().await != PipeState::Verified {
            std::future::pending::<()>().await;
        }
    }

    /// Resolves when the body failed (with the failure) or was let go
    /// (`None`); never once it is verified.
    pub(crate) async fn broken(&self) -> Option<Failure> {
        match self.ended().await {
            PipeState::Failed(f) => Some(f),
            PipeState::Gone => None,
            PipeState::Receiving(_) | PipeState::Verified => std::future::pending().await,
        }
    }
}

/// The assembler's end of a [`Pipe`]: it moves the published prefix on as
/// chunks arrive and gives the verdict. Dropped without one (the reader let
/// the job go), it says [`PipeState::Gone`].
#[derive(Debug)]
pub(crate) struct PipeFeed {
    pipe: Arc<Pipe>,
    /// Bytes from 0 written without a gap.
    prefix: u64,
    /// Chunks past a gap: start to end, at most [`MAX_AHEAD`].
    ahead: BTreeMap<u64, u64>,
    ended: bool,
}

/// Why a chunk cannot join a pipelined body.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Overlap {
    /// Where the chunk starts.
    pub(crate) offset: u64,
    /// Bytes already published for sending.
    pub(crate) published: u64,
}

impl PipeFeed {
    /// Whether a chunk at `offset..end` may be written: not over bytes
    /// already published, which the API may have received. Checked before
    /// the write, so the spool never changes under a call.
    pub(crate) fn check(&self, offset: u64, end: u64) -> Result<(), Overlap> {
        let overlaps_ahead = self
            .ahead
            .range(..end)
            .next_back()
            .is_some_and(|(_, &e)| e > offset);
        if offset < self.prefix || overlaps_ahead {
            return Err(Overlap {
                offset,
                published: self.prefix,
            });
        }
        Ok(())
    }

    /// A chunk covering `offset..end` is written and checked: moves the
    /// prefix on as far as it now reaches without a gap, and publishes it.
    pub(crate) fn took(&mut self, offset: u64, end: u64) {
        if offset > self.prefix {
            if self.ahead.len() < MAX_AHEAD {
                self.ahead.insert(offset, end);
            }
            return;
        }
        self.prefix = self.prefix.max(end);
        while let Some((&start, &stop)) = self.ahead.first_key_value() {
            if start > self.prefix {
                break;
            }
            self.ahead.remove(&start);
            self.prefix = self.prefix.max(stop);
        }
        let prefix = self.prefix;
        self.pipe.state.send_if_modified(|s| match s {
            PipeState::Receiving(n) if *n < prefix => {
                *n = prefix;
                true
            }
            _ => false,
        });
    }

    /// The whole body is verified; `disk`, the spool file's share of the
    /// budget, stays with the pipe until the call is done with the file.
    pub(crate) fn verified(mut self, disk: Lease) {
        *self.pipe.disk.lock().unwrap_or_else(|e| e.into_inner()) = Some(disk);
        let _ = self.pipe.verified_at.set(Instant::now());
        self.end(PipeState::Verified);
    }

    /// The body failed: the job's call is aborted and its task answers with
    /// `failure`.
    pub(crate) fn failed(mut self, failure: Failure) {
        self.end(PipeState::Failed(failure));
    }

    fn end(&mut self, state: PipeState) {
        self.ended = true;
        self.pipe.state.send_replace(state);
    }
}

impl Drop for PipeFeed {
    fn drop(&mut self) {
        if !self.ended {
            self.end(PipeState::Gone);
        }
    }
}

/// What [`Deadline::bound`] gives while the deadline is not yet known: a
/// day, longer than any wait it bounds lasts before `passed` ends it.
const UNKNOWN_BOUND_SECS: u64 = 86_400;

/// When an API call must be over: a fixed time after it started, or, for a
/// pipelined body, that long after the later of the call's start and the
/// body's verification; until then the assembler's idle timeout guards
/// against a body that stops arriving.
#[derive(Debug, Clone)]
pub(crate) struct Deadline {
    timeout: Duration,
    /// When the call started (its permit was taken).
    created: Instant,
    /// Set for a fixed deadline.
    at: Option<Instant>,
    pipe: Option<Arc<Pipe>>,
}

impl Deadline {
    /// `timeout` from now, or from the verification of `pipe`'s body.
    pub(crate) fn new(timeout: Duration, pipe: Option<Arc<Pipe>>) -> Self {
        let created = Instant::now();
        Self {
            timeout,
            created,
            at: pipe.is_none().then(|| created + timeout),
            pipe,
        }
    }

    /// The instant, once it is known. A body verified while its job waited
    /// for a call permit still leaves the call its whole timeout.
    pub(crate) fn at(&self) -> Option<Instant> {
        self.at.or_else(|| {
            let verified = self.pipe.as_ref()?.verified_at()?;
            Some(verified.max(self.created) + self.timeout)
        })
    }

    /// The pipelined body the call waits on, while it still arrives.
    pub(crate) fn arriving(&self) -> Option<&Pipe> {
        self.pipe.as_deref().filter(|p| p.verified_at().is_none())
    }

    /// The instant if known, else one far enough off that only
    /// [`Deadline::passed`] ends a wait bounded by it.
    pub(crate) fn bound(&self) -> Instant {
        self.at()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(UNKNOWN_BOUND_SECS))
    }

    /// Resolves when the deadline has passed; never for a pipelined body
    /// that fails, whose job ends on the failure instead.
    pub(crate) async fn passed(&self) {
        if let Some(pipe) = &self.pipe {
            if self.at().is_none() && pipe.ended().await != PipeState::Verified {
                std::future::pending::<()>().await;
            }
        }
        match self.at() {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    /// Runs `work` until the deadline; `None` when it passed first.
    pub(crate) async fn run<F: std::future::Future>(&self, work: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            out = work => Some(out),
            () = self.passed() => None,
        }
    }

    /// Whether a wait of `delay` from now would end past the deadline (not
    /// yet known: no).
    pub(crate) fn would_pass(&self, delay: Duration) -> bool {
        self.at().is_some_and(|at| Instant::now() + delay >= at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_pipe(len: u64) -> (Arc<Pipe>, PipeFeed) {
        let file = tempfile::tempfile()
            .unwrap_or_else(|e| panic!("temp file: {e}"))
            .into();
        Pipe::new(file, len)
    }

    #[tokio::test]
    async fn the_prefix_follows_chunks_without_a_gap_and_holds_the_last_byte() {
        let (pipe, mut feed) = new_pipe(30);
        feed.took(0, 10);
        assert_eq!(pipe.state(), PipeState::Receiving(10));
        assert_eq!(pipe.sendable_beyond(0).await, Ok(10));
        // Chunks past a gap wait for it to fill.
        feed.took(20, 30);
        assert_eq!(pipe.state(), PipeState::Receiving(10));
        feed.took(10, 20);
        assert_eq!(pipe.state(), PipeState::Receiving(30));
        // All bytes arrived, but the last one waits for the verdict.
        assert_eq!(pipe.sendable_beyond(0).await, Ok(29));
        let waiting = tokio::spawn({
            let pipe = Arc::clone(&pipe);
            async move { pipe.sendable_beyond(29).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let budget = crate::portal::budget::Budget::new(1 << 20);
        feed.verified(Lease::new(&budget));
        assert_eq!(waiting.await.ok(), Some(Ok(30)));
        assert!(pipe.verified_at().is_some());
    }

    #[tokio::test]
    async fn a_chunk_over_published_bytes_is_refused() {
        let (_pipe, mut feed) = new_pipe(100);
        feed.took(0, 10);
        assert_eq!(
            feed.check(5, 15),
            Err(Overlap {
                offset: 5,
                published: 10
            })
        );
        assert_eq!(feed.check(10, 20), Ok(()));
        feed.took(30, 40);
        assert!(feed.check(35, 45).is_err(), "over a chunk held past a gap");
        assert!(feed.check(25, 31).is_err());
        assert_eq!(feed.check(20, 30), Ok(()));
    }

    #[tokio::test]
    async fn a_failure_or_a_dropped_feed_ends_every_wait() {
        let (pipe, feed) = new_pipe(10);
        let waiting = tokio::spawn({
            let pipe = Arc::clone(&pipe);
            async move { pipe.sendable_beyond(0).await }
        });
        let failure = Failure::new(crate::protocol::ErrorCategory::Integrity, "bad digest");
        feed.failed(failure.clone());
        assert_eq!(
            waiting.await.ok(),
            Some(Err(PipeState::Failed(failure.clone())))
        );
        assert_eq!(pipe.broken().await, Some(failure));

        let (pipe, feed) = new_pipe(10);
        drop(feed);
        assert_eq!(pipe.ended().await, PipeState::Gone);
        assert_eq!(pipe.broken().await, None);
    }

    #[tokio::test]
    async fn chunks_far_past_a_gap_are_forgotten_not_hoarded() {
        let (pipe, mut feed) = new_pipe(1000);
        for i in 1..=(MAX_AHEAD as u64 + 10) {
            feed.took(i * 10, i * 10 + 10);
        }
        assert_eq!(feed.ahead.len(), MAX_AHEAD);
        feed.took(0, 10);
        // The prefix moves over the chunks remembered, then stops.
        assert_eq!(
            pipe.state(),
            PipeState::Receiving(10 * (MAX_AHEAD as u64 + 1))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pipelined_deadline_counts_from_the_verdict() {
        let (pipe, feed) = new_pipe(10);
        let deadline = Deadline::new(Duration::from_secs(5), Some(Arc::clone(&pipe)));
        assert_eq!(deadline.at(), None);
        assert!(!deadline.would_pass(Duration::from_secs(3600)));
        // A call that runs long before the body is complete does not time out.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let budget = crate::portal::budget::Budget::new(1 << 20);
        feed.verified(Lease::new(&budget));
        let started = Instant::now();
        assert_eq!(deadline.run(std::future::pending::<()>()).await, None);
        assert_eq!(started.elapsed(), Duration::from_secs(5));

        let fixed = Deadline::new(Duration::from_secs(5), None);
        assert!(fixed.would_pass(Duration::from_secs(5)));
        assert_eq!(fixed.run(async { 7 }).await, Some(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_started_after_the_verdict_still_gets_its_whole_timeout() {
        let (pipe, feed) = new_pipe(10);
        let budget = crate::portal::budget::Budget::new(1 << 20);
        feed.verified(Lease::new(&budget));
        // The job waited 60 s for a call permit after its body was verified.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let deadline = Deadline::new(Duration::from_secs(5), Some(Arc::clone(&pipe)));
        assert!(deadline.arriving().is_none());
        let started = Instant::now();
        assert_eq!(deadline.run(std::future::pending::<()>()).await, None);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
