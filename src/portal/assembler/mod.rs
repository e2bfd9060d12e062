//! Reassembles requests from their frames, many jobs interleaved on one
//! partition, tolerating duplicated and reordered chunks.
//!
//! Memory is bounded per job and for all jobs together: a body stays in
//! memory while it arrives without gaps, stays under the spool threshold and
//! fits the portal's memory [`Budget`] short of the reserve kept for start
//! records and chunk tables, which cannot move to disk; otherwise it moves to
//! an unlinked temporary file, which disappears with the job whatever
//! happens. A job
//! completes only when every chunk has arrived and the body's SHA-256 matches
//! the `End` frame, so the target API never receives a complete body whose
//! digest does not match. A pipelined job (see `portal::pipe`) is called
//! before that: its body goes to its spool file from the first byte, and
//! the assembler tells its call how far the body has come and the verdict. The checks of each chunk and of the end record are
//! [`BodyCheck`]'s, shared with `send`; the assembler adds what only a
//! receiver of reordered chunks needs (the chunk table, the extent, the
//! spool read back for the digest).

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::portal::budget::{Budget, Budgets, Lease};
use crate::portal::pipe::{Pipe, PipeFeed};
use crate::portal::spans::JobTrace;
use crate::portal::spool::{blocks, make_room, Spill, Spool, SpooledBody};
use crate::protocol::body::{BodyCheck, BodyFault};
use crate::protocol::digest::Digest;
use crate::protocol::seal::JobKeys;
use crate::protocol::wire::{Body, ChunkInfo, EndInfo, Frame, JobId, RequestStart};
use crate::protocol::{ErrorCategory, Failure};

#[cfg(test)]
mod tests;

/// Limits on what one portal assembles.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Largest request body accepted.
    pub(crate) max_body_bytes: u64,
    /// Bodies larger than this spool to disk.
    pub(crate) spool_threshold: usize,
    /// Directory for spool files; the system temporary directory when `None`.
    pub(crate) spool_dir: Option<PathBuf>,
    /// Jobs assembling at once on one partition.
    pub(crate) max_jobs: usize,
    /// A job that receives nothing for this long is dropped.
    pub(crate) idle_timeout: Duration,
    /// Most chunks one body may have; bounds the per-job bookkeeping.
    pub(crate) max_chunks: usize,
    /// Most bytes of spool files on disk at once, shared by every assembler
    /// of a portal through [`Budgets::spool`].
    pub(crate) max_spool_bytes: u64,
    /// Most bytes of memory held for requests, shared by every assembler of
    /// a portal through [`Budgets::memory`].
    pub(crate) max_memory_bytes: u64,
    /// The last bytes of `max_memory_bytes`, which bodies may not take: only
    /// start records and chunk tables, which cannot move to disk. The
    /// portal sets it to [`bookkeeping_bound`], so a job of the most chunks
    /// and the largest start record the settings allow can always be
    /// recorded, however much memory bodies hold.
    pub(crate) memory_reserve: u64,
    /// A request older than this, by its job id's time, is refused.
    pub(crate) max_job_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        let max_chunks = 100_000;
        let policy = crate::portal::policy::Policy::default();
        Self {
            max_body_bytes: 10 * 1024 * 1024 * 1024,
            spool_threshold: 1024 * 1024,
            spool_dir: None,
            max_jobs: 256,
            idle_timeout: Duration::from_secs(300),
            max_chunks,
            max_spool_bytes: 20 * 1024 * 1024 * 1024,
            max_memory_bytes: 256 * 1024 * 1024,
            memory_reserve: bookkeeping_bound(
                max_chunks,
                policy.max_header_count,
                policy.max_header_bytes,
            ),
            max_job_age: Duration::from_secs(3600),
        }
    }
}

impl Limits {
    /// Fresh budgets of the sizes these limits name, for the assemblers of
    /// one portal to share.
    pub(crate) fn budgets(&self) -> Budgets {
        Budgets {
            spool: Budget::new(self.max_spool_bytes),
            memory: Budget::with_reserve(self.max_memory_bytes, self.memory_reserve),
        }
    }
}

/// Memory a job's chunk table takes per chunk: an entry of the `seen` map
/// is 8 bytes and a control byte, and a map that has just doubled is less
/// than half full, so 24 bytes per entry covers what it allocates.
pub(crate) const CHUNK_ENTRY_COST: u64 = 24;

/// Bytes of a start record's text besides its headers that
/// [`largest_start_cost`] allows for: a path of at most
/// [`crate::protocol::request::MAX_PATH_BYTES`], a reply topic (Kafka allows 249) and a
/// method. A start record with more is still charged in full, only not
/// covered by the reserve.
const START_TEXT_BESIDES_HEADERS: u64 = crate::protocol::request::MAX_PATH_BYTES as u64 + 512;

/// The most memory one job's start record takes when the policy admits at
/// most `max_header_count` headers of `max_header_bytes` bytes in all.
pub(crate) fn largest_start_cost(max_header_count: usize, max_header_bytes: usize) -> u64 {
    let per_header = std::mem::size_of::<(String, String)>() as u64;
    std::mem::size_of::<(JobId, Assembly)>() as u64
        + START_TEXT_BESIDES_HEADERS
        + (max_header_count as u64).saturating_mul(per_header)
        + max_header_bytes as u64
}

/// The most memory one job's bookkeeping (start record and chunk table)
/// takes under these settings: what a memory budget must hold at least,
/// and the reserve bodies leave free.
pub(crate) fn bookkeeping_bound(
    max_chunks: usize,
    max_header_count: usize,
    max_header_bytes: usize,
) -> u64 {
    (max_chunks as u64)
        .saturating_mul(CHUNK_ENTRY_COST)
        .saturating_add(largest_start_cost(max_header_count, max_header_bytes))
}

/// A request ready for the API.
#[derive(Debug)]
pub(crate) struct CompletedJob {
    /// Job id.
    pub(crate) job: JobId,
    /// Its start frame.
    pub(crate) start: RequestStart,
    /// The verified body, or for a pipelined job the body still arriving.
    pub(crate) body: SpooledBody,
    /// Digest of the body (zeros for a pipelined job, whose body is
    /// checked later). The portal does not need it again once the
    /// body is checked; the tests read it to see what the body was checked
    /// against.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) digest: Digest,
    /// Offset of the job's start record in the request partition.
    pub(crate) first_offset: i64,
    /// Its place in a trace, drawn when its start record was read (see
    /// [`Assembler::set_trace`]); boxed, as most jobs' fields are small.
    pub(crate) trace: Option<Box<JobTrace>>,
    /// A sealed job's record keys: its answer is sealed with them.
    pub(crate) sealed: Option<Arc<JobKeys>>,
}

/// A job that cannot go on; the client should be told.
#[derive(Debug, Clone)]
pub(crate) struct FailedJob {
    /// Job id.
    pub(crate) job: JobId,
    /// Where the client listens.
    pub(crate) reply_topic: String,
    /// Partition the client listens on.
    pub(crate) reply_partition: i32,
    /// Offset of the job's start record.
    pub(crate) first_offset: i64,
    /// Class of failure.
    pub(crate) category: ErrorCategory,
    /// Readable explanation.
    pub(crate) message: String,
    /// The job's call is under way (pipelined): its own task answers, told
    /// through its pipe, so no error reply is to be sent for it.
    pub(crate) pipelined: bool,
    /// A sealed job's record keys, once its start record opened: the error
    /// is sealed with them. `None` for a clear job, and for one whose start
    /// did not open (then nothing can be sealed to its sender).
    pub(crate) sealed: Option<Arc<JobKeys>>,
}

/// What accepting one record led to.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The job needs more records.
    Pending,
    /// The job is complete.
    Complete(CompletedJob),
    /// A pipelined job's body is complete and verified; its call, under
    /// way since the start record, can now finish.
    Streamed(JobId),
    /// The job failed.
    Failed(FailedJob),
    /// The record was not used: a copy of one already taken (Kafka can
    /// deliver a record twice), or part of a finished job.
    Ignored(&'static str),
    /// The first record seen of a job whose start record was not read here:
    /// not a request at all, or left over from a job answered before this
    /// reader took the partition over. Later records of that job are
    /// `Ignored`, so it is worth one log line per job.
    Stray(&'static str),
}

/// Memory a job takes before its body: its place in the job table and the
/// text of its start record.
fn start_cost(start: &RequestStart) -> u64 {
    let headers: usize = start
        .headers
        .iter()
        .map(|(n, v)| std::mem::size_of::<(String, String)>() + n.len() + v.len())
        .sum();
    let text = start.method.len() + start.path.len() + start.reply_topic.len() + headers;
    (std::mem::size_of::<(JobId, Assembly)>() + text) as u64
}

struct Assembly {
    start: RequestStart,
    first_offset: i64,
    last_activity: Instant,
    spool: Spool,
    /// Chunks taken: number to CRC32C, to tell a redelivered copy (ignored)
    /// from another chunk under the same number (the job fails). Whichever
    /// of two chunks with one number and CRC32C came first is kept; if that
    /// was a forgery, the body fails its length or digest check at the end.
    seen: HashMap<u32, u32>,
    /// Share of the spool budget this job's file holds: the bytes written to
    /// it, each write rounded up to whole disk blocks, so a sparse file of a
    /// few far-flung bytes costs what it takes on disk, not its extent.
    disk: Lease,
    /// Share of the memory budget the start record and the chunk table
    /// hold (an in-memory body holds its own, in [`Spool::Memory`]).
    books: Lease,
    /// Highest byte offset written plus one.
    extent: u64,
    /// Every chunk's CRC32C, the bytes and chunks taken, and the body's
    /// SHA-256 while chunks arrive in order; once one arrives out of order
    /// the digest is computed from the spool at the end.
    check: BodyCheck,
    end: Option<EndInfo>,
    /// The body digest the sender signed, when the request was signed.
    signed_digest: Option<Digest>,
    /// For a pipelined job: where the job's call learns how far the body
    /// has come, and the verdict.
    pipe: Option<PipeFeed>,
    /// Its place in a trace (its `tracestate` at most 512 bytes, bounded by
    /// `protocol::trace::MAX_TRACESTATE_BYTES`).
    trace: Option<Box<JobTrace>>,
    /// A sealed job's record keys: its later records must open with the
    /// request key (`Assembler::unseal`), its answer is sealed with the
    /// response key.
    sealed: Option<Arc<JobKeys>>,
}

/// Remembers recently finished jobs so a duplicated start record does not
/// start a job a second time; a FIFO of fixed capacity bounds its memory.
struct RecentJobs {
    order: VecDeque<JobId>,
    set: HashSet<JobId>,
    capacity: usize,
}

impl RecentJobs {
    fn new(capacity: usize) -> Self {
        Self {
            order: VecDeque::with_capacity(capacity),
            set: HashSet::with_capacity(capacity),
            capacity,
        }
    }

    fn insert(&mut self, job: JobId) {
        if self.set.insert(job) {
            self.order.push_back(job);
            if self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    fn contains(&self, job: &JobId) -> bool {
        self.set.contains(job)
    }
}

/// Reassembles the jobs of one request partition.
pub(crate) struct Assembler {
    limits: Limits,
    budgets: Budgets,
    jobs: HashMap<JobId, Assembly>,
    finished: RecentJobs,
    /// Jobs already reported as `Stray`.
    strays: RecentJobs,
}

impl std::fmt::Debug for Assembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assembler")
            .field("jobs", &self.jobs.len())
            .finish_non_exhaustive()
    }
}

impl Assembler {
    /// An assembler with the given limits and budgets of its own.
    #[cfg(test)]
    pub(crate) fn new(limits: Limits) -> Self {
        let budgets = limits.budgets();
        Self::with_budgets(limits, budgets)
    }

    /// An assembler whose jobs draw on budgets shared with others.
    pub(crate) fn with_budgets(limits: Limits, budgets: Budgets) -> Self {
        Self {
            limits,
            budgets,
            jobs: HashMap::new(),
            finished: RecentJobs::new(16 * 1024),
            strays: RecentJobs::new(4 * 1024),
        }
    }

    /// Jobs currently assembling.
    pub(crate) fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Whether no job is assembling.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Whether `job` is assembling or recently finished here.
    pub(crate) fn knows(&self, job: &JobId) -> bool {
        self.jobs.contains_key(job) || self.finished.contains(job)
    }

    /// Start offsets of the jobs still assembling.
    pub(crate) fn first_offsets(&self) -> impl Iterator<Item = i64> + '_ {
        self.jobs.values().map(|a| a.first_offset)
    }

    /// Takes one decoded record, found at `offset` of the request partition.
    pub(crate) fn accept(
        &mut self,
        frame: Frame,
        payload: &[u8],
        offset: i64,
        now: Instant,
    ) -> Outcome {
        self.accept_with(frame, payload, offset, now, None)
    }

    /// [`Assembler::accept`], for a start record opened from a sealed one
    /// with the job's record keys in `sealed`.
    pub(crate) fn accept_with(
        &mut self,
        frame: Frame,
        payload: &[u8],
        offset: i64,
        now: Instant,
        sealed: Option<Arc<JobKeys>>,
    ) -> Outcome {
        let job = frame.job;
        if self.finished.contains(&job) {
            return Outcome::Ignored("record of a finished job");
        }
        match frame.body {
            Body::RequestStart(start) => self.start(job, start, offset, now, sealed),
            Body::Chunk(info) => self.chunk(job, frame.seq, info, payload, now),
            Body::End(end) => self.end(job, end, now),
            Body::ResponseStart(_) | Body::Error(_) if self.jobs.contains_key(&job) => {
                Outcome::Ignored("response frame on the request topic")
            }
            Body::ResponseStart(_) | Body::Error(_) => {
                self.stray(job, "a response frame on the request topic")
            }
            Body::SealedStart(_)
            | Body::SealedChunk(_)
            | Body::SealedEnd(_)
            | Body::SealedResponseStart(_)
            | Body::SealedError => self.stray(
                job,
                "a sealed record of a job whose start record was not read here",
            ),
        }
    }

    /// Takes one decoded record whose value is `value`: a sealed chunk or
    /// end record of a sealed job is opened with its request key first and
    /// then taken as its clear counterpart. A sealed record that does not
    /// open fails its job (`Integrity`, or `BadRequest` when it opens to
    /// something malformed), so do a clear chunk or end record in a sealed
    /// job and a sealed one in a clear job (`BadRequest`); a sealed record
    /// of a job not assembling here is a stray. Each chunk is opened on its
    /// own, so memory stays what a clear chunk takes.
    pub(crate) fn accept_record(
        &mut self,
        value: &[u8],
        frame: Frame,
        payload: &[u8],
        offset: i64,
        now: Instant,
    ) -> Outcome {
        let job = frame.job;
        let sealed_body = matches!(frame.body, Body::SealedChunk(_) | Body::SealedEnd(_));
        let clear_body = matches!(frame.body, Body::Chunk(_) | Body::End(_));
        let keys = self.jobs.get(&job).map(|a| a.sealed.clone());
        match keys {
            Some(Some(keys)) if sealed_body => {
                match keys.request.open_frame(value, frame, payload, &[]) {
                    Ok(opened) => self.accept(opened.frame, &opened.payload, offset, now),
                    Err(e) => self.fail(job, e.category(), e.to_string()),
                }
            }
            Some(Some(_)) if clear_body => self.fail(
                job,
                ErrorCategory::BadRequest,
                "a clear chunk or end record in a sealed request; every record of a sealed request must be sealed".into(),
            ),
            Some(None) if sealed_body => self.fail(
                job,
                ErrorCategory::BadRequest,
                "a sealed chunk or end record in a request that is not sealed".into(),
            ),
            _ => self.accept(frame, payload, offset, now),
        }
    }

    /// `Stray` for the first record of a job not assembling here, `Ignored`
    /// for the ones after it.
    fn stray(&mut self, job: JobId, what: &'static str) -> Outcome {
        if self.strays.contains(&job) {
            return Outcome::Ignored("another record of a job not started here");
        }
        self.strays.insert(job);
        Outcome::Stray(what)
    }

    fn start(
        &mut self,
        job: JobId,
        start: RequestStart,
        offset: i64,
        now: Instant,
        sealed: Option<Arc<JobKeys>>,
    ) -> Outcome {
        if let Some(a) = self.jobs.get(&job) {
            if a.start == start {
                return Outcome::Ignored("duplicate start record");
            }
            if a.sealed.is_some() {
                // Anyone can seal a start to this portal's public key, and
                // its genuine sender never repeats one differently: failing
                // the job would let a stranger end it. What the repeat says
                // is request data, so it stays out of the log.
                log::warn!("job {job} (sealed): ignored a repeated start record that differs from the first");
                return Outcome::Ignored("a differing repeat of a sealed job's start record");
            }
            let msg = "the start record was repeated with different metadata".to_string();
            return self.fail(job, ErrorCategory::BadRequest, msg);
        }
        let fail = |category, message: String| {
            Outcome::Failed(FailedJob {
                job,
                reply_topic: start.reply_topic.clone(),
                reply_partition: start.reply_partition,
                first_offset: offset,
                category,
                message,
                pipelined: false,
                sealed: sealed.clone(),
            })
        };
        if let Some(msg) = too_old(job, self.limits.max_job_age) {
            self.finished.insert(job);
            return fail(ErrorCategory::Rejected, msg);
        }
        if let Some(len) = start.body_len {
            if len > self.limits.max_body_bytes {
                self.finished.insert(job);
                return fail(
                    ErrorCategory::Rejected,
                    format!(
                        "request body of {len} bytes exceeds the portal's limit of {} bytes (PORTAL_MAX_BODY_BYTES)",
                        self.limits.max_body_bytes
                    ),
                );
            }
        }
        if self.jobs.len() >= self.limits.max_jobs {
            self.finished.insert(job);
            return fail(
                ErrorCategory::Rejected,
                format!(
                    "portal is busy: {} jobs are assembling on this partition (PORTAL_MAX_ASSEMBLING_JOBS); retry later",
                    self.jobs.len()
                ),
            );
        }
        let digest = start.digest;
        if !start.has_body {
            self.finished.insert(job);
            return Outcome::Complete(CompletedJob {
                job,
                start,
                body: SpooledBody::Empty,
                digest: digest.of(&[]),
                first_offset: offset,
                trace: None,
                sealed,
            });
        }
        let mut books = Lease::new(&self.budgets.memory);
        let cost = start_cost(&start);
        if !books.grow_by(cost) {
            self.finished.insert(job);
            return fail(ErrorCategory::Rejected, self.no_room_for_books(cost));
        }
        self.jobs.insert(
            job,
            Assembly {
                start,
                first_offset: offset,
                last_activity: now,
                spool: Spool::in_memory(&self.budgets.memory),
                seen: HashMap::new(),
                disk: Lease::new(&self.budgets.spool),
                books,
                extent: 0,
                check: BodyCheck::new(digest),
                end: None,
                signed_digest: None,
                pipe: None,
                trace: None,
                sealed,
            },
        );
        Outcome::Pending
    }

    /// Readies the assembling `job` to be called while its body arrives:
    /// its body goes to a spool file from the first byte, and the job
    /// returned reads it through a [`Pipe`]. `None` when the job is not
    /// worth it (no declared length, or one small enough for memory),
    /// has chunks already, or its spool file cannot be made; it is then
    /// called once complete, as any other.
    pub(crate) fn pipeline(&mut self, job: JobId) -> Option<CompletedJob> {
        let threshold = self.limits.spool_threshold as u64;
        let a = self.jobs.get_mut(&job)?;
        let len = a.start.body_len.filter(|n| *n > threshold)?;
        if a.pipe.is_some() || !a.seen.is_empty() {
            return None;
        }
        let file = a
            .spool
            .move_to_disk(&self.limits.spool_dir, a.sealed.is_some())
            .and_then(|()| a.spool.share());
        let file = match file {
            Ok(f) => f,
            Err(e) => {
                log::warn!("job {job}: cannot open a spool file to pipeline the call ({e}); calling once the body is complete");
                return None;
            }
        };
        let (pipe, feed) = Pipe::new(file, len);
        a.pipe = Some(feed);
        Some(CompletedJob {
            job,
            start: a.start.clone(),
            body: SpooledBody::Piped(pipe),
            digest: Digest {
                kind: a.start.digest,
                bytes: [0; 32],
            },
            first_offset: a.first_offset,
            trace: a.trace.clone(),
            sealed: a.sealed.clone(),
        })
    }

    fn chunk(
        &mut self,
        job: JobId,
        seq: u32,
        info: ChunkInfo,
        payload: &[u8],
        now: Instant,
    ) -> Outcome {
        let Some(a) = self.jobs.get_mut(&job) else {
            return self.stray(job, "a chunk of a job whose start record was not read here");
        };
        if let Some(&crc32c) = a.seen.get(&seq) {
            if crc32c == info.crc32c {
                return Outcome::Ignored("duplicate chunk");
            }
            let msg = format!("chunk {seq} arrived twice with different contents");
            return self.fail(job, ErrorCategory::BadRequest, msg);
        }
        a.last_activity = now;
        if seq as usize > self.limits.max_chunks {
            let msg = format!(
                "chunk number {seq} is out of range: the portal accepts at most {} chunks (PORTAL_MAX_CHUNKS); use a larger chunk size",
                self.limits.max_chunks
            );
            return self.fail(job, ErrorCategory::Rejected, msg);
        }
        if a.end.is_some_and(|e| u64::from(seq) > u64::from(e.chunks)) {
            let msg = format!("chunk number {seq} is out of range: the end record counts fewer");
            return self.fail(job, ErrorCategory::BadRequest, msg);
        }
        if payload.is_empty() || seq == 0 {
            let msg = format!("chunk {seq} is empty or numbered as a start record");
            return self.fail(job, ErrorCategory::BadRequest, msg);
        }
        let in_order = a.check.in_order();
        // A chunk on its own can only fail its CRC32C.
        if a.check.chunk(&info, payload).is_err() {
            let msg = format!(
                "chunk {seq} at byte {} failed its CRC32C check",
                info.offset
            );
            return self.fail(job, ErrorCategory::Integrity, msg);
        }
        let Some(end_at) = info.offset.checked_add(payload.len() as u64) else {
            return self.fail(
                job,
                ErrorCategory::BadRequest,
                "chunk offset overflows".into(),
            );
        };
        // The API may have received the bytes published so far: they must
        // not change under it.
        if let Some(Err(o)) = a.pipe.as_ref().map(|f| f.check(info.offset, end_at)) {
            let msg = format!(
                "chunk {seq} at byte {} overlaps bytes already taken (up to byte {} in order)",
                o.offset, o.published
            );
            return self.fail(job, ErrorCategory::Integrity, msg);
        }
        let limit = a
            .start
            .body_len
            .unwrap_or(u64::MAX)
            .min(self.limits.max_body_bytes);
        if end_at > limit {
            let msg = if end_at > self.limits.max_body_bytes {
                format!(
                    "request body exceeds the portal's limit of {} bytes (PORTAL_MAX_BODY_BYTES)",
                    self.limits.max_body_bytes
                )
            } else {
                format!("request body is longer than its declared {limit} bytes")
            };
            let category = if end_at > self.limits.max_body_bytes {
                ErrorCategory::Rejected
            } else {
                ErrorCategory::BadRequest
            };
            return self.fail(job, category, msg);
        }
        // The chunk table cannot move to disk: without room for its entry
        // the chunk cannot be taken, unless this job's own body gives its
        // memory back by moving to disk first.
        let booked = a.books.grow_by(CHUNK_ENTRY_COST);
        if !booked && !a.spool.holds_memory() {
            let need = books_needed(a, seq);
            let msg = self.no_room_for_books(need);
            return self.fail(job, ErrorCategory::Rejected, msg);
        }
        let spill = match &mut a.spool {
            Spool::File(_) => None,
            Spool::Memory { .. } if !booked => Some(Spill::Books),
            Spool::Memory { buf, lease } => {
                let cap_limit = a
                    .start
                    .body_len
                    .map_or(self.limits.spool_threshold as u64, |n| {
                        n.min(self.limits.spool_threshold as u64)
                    });
                make_room(buf, lease, info.offset, end_at, cap_limit)
            }
        };
        let charge = match (&a.spool, spill) {
            (Spool::File(_), _) => Some(a.disk.held() + blocks(payload.len())),
            // Moving to disk writes the memory buffer out first.
            (Spool::Memory { buf, .. }, Some(_)) => Some(blocks(buf.len()) + blocks(payload.len())),
            (Spool::Memory { .. }, None) => None,
        };
        if charge.is_some_and(|c| !a.disk.grow_to(c)) {
            let spool = &self.budgets.spool;
            let spool_full = format!(
                "the portal's spool is full ({} of {} bytes in use, PORTAL_MAX_SPOOL_BYTES)",
                spool.used(),
                spool.limit()
            );
            let msg = match spill {
                Some(Spill::Memory | Spill::Books) => {
                    format!("{} and {spool_full}; retry later", self.memory_in_use())
                }
                _ => format!("{spool_full}; retry later"),
            };
            return self.fail(job, ErrorCategory::Rejected, msg);
        }
        if spill.is_some() {
            if let Err(e) = a
                .spool
                .move_to_disk(&self.limits.spool_dir, a.sealed.is_some())
            {
                let msg = format!("cannot spool the request body: {e}");
                return self.fail(job, ErrorCategory::Internal, msg);
            }
        }
        if !booked && !a.books.grow_by(CHUNK_ENTRY_COST) {
            let need = books_needed(a, seq);
            let msg = self.no_room_for_books(need);
            return self.fail(job, ErrorCategory::Rejected, msg);
        }
        if let Err(e) = a.spool.write(info.offset, payload) {
            let msg = format!("cannot spool the request body: {e}");
            return self.fail(job, ErrorCategory::Internal, msg);
        }
        a.seen.insert(seq, info.crc32c);
        a.extent = a.extent.max(end_at);
        if let Some(feed) = &mut a.pipe {
            feed.took(info.offset, end_at);
        }
        if in_order && !a.check.in_order() {
            log::debug!(
                "job {job}: chunk {seq} arrived out of order; the digest will be computed from the spool"
            );
        }
        self.try_complete(job)
    }

    fn end(&mut self, job: JobId, end: EndInfo, now: Instant) -> Outcome {
        let Some(a) = self.jobs.get_mut(&job) else {
            return self.stray(
                job,
                "an end record of a job whose start record was not read here",
            );
        };
        if a.end.is_some() {
            return Outcome::Ignored("duplicate end record");
        }
        a.last_activity = now;
        if end.chunks as usize > self.limits.max_chunks {
            let msg = format!(
                "request body declares {} chunks; the portal accepts at most {} (PORTAL_MAX_CHUNKS)",
                end.chunks, self.limits.max_chunks
            );
            return self.fail(job, ErrorCategory::Rejected, msg);
        }
        if end.total_len > self.limits.max_body_bytes {
            let msg = format!(
                "request body declares {} bytes, over the portal's limit of {} bytes (PORTAL_MAX_BODY_BYTES)",
                end.total_len, self.limits.max_body_bytes
            );
            return self.fail(job, ErrorCategory::Rejected, msg);
        }
        a.end = Some(end);
        // Known now: how large the chunk table will grow. A job that can
        // never fit is told so at once, not after thousands of chunks.
        let need = books_needed(a, 0);
        if let Some(msg) = never_fits(&self.budgets.memory, need) {
            return self.fail(job, ErrorCategory::Rejected, msg);
        }
        self.try_complete(job)
    }

    fn try_complete(&mut self, job: JobId) -> Outcome {
        let Some(a) = self.jobs.get(&job) else {
            return Outcome::Ignored("unknown job");
        };
        let Some(end) = a.end else {
            return Outcome::Pending;
        };
        if (a.seen.len() as u64) < u64::from(end.chunks) {
            return Outcome::Pending;
        }
        // Overlapping chunks can add up to the length and still leave a gap.
        if a.check.verify_length(&end).is_err() || a.extent != end.total_len {
            let msg = format!(
                "request body does not match its end record: got {} chunks and {} bytes, expected {} chunks and {} bytes",
                a.seen.len(),
                a.check.received(),
                end.chunks,
                end.total_len
            );
            return self.fail(job, ErrorCategory::Integrity, msg);
        }
        if let Some(declared) = a.start.body_len {
            if declared != end.total_len {
                let msg = format!(
                    "request body is {} bytes but its start record declared {declared}",
                    end.total_len
                );
                return self.fail(job, ErrorCategory::BadRequest, msg);
            }
        }
        let Some(mut a) = self.jobs.remove(&job) else {
            return Outcome::Ignored("unknown job");
        };
        self.finished.insert(job);
        let digest = match a.check.digest() {
            Some(d) => Ok(d),
            None => a.spool.digest(a.check.kind(), end.total_len),
        };
        let digest = match digest {
            Ok(d) => d,
            Err(e) => {
                return Outcome::Failed(failed(
                    job,
                    a,
                    ErrorCategory::Internal,
                    format!("cannot read back the spooled body: {e}"),
                ))
            }
        };
        if let Err(fault) = a.check.verify_end(&end, &digest) {
            let msg = match fault {
                BodyFault::Digest { computed } => format!(
                    "request body {computed} does not match the sender's {}",
                    end.digest
                ),
                // Checked above already, before the body was read back;
                // and a chunk's CRC32C when it was taken.
                BodyFault::Length { received, chunks } => format!(
                    "request body does not match its end record: got {chunks} chunks and {received} bytes, expected {} chunks and {} bytes",
                    end.chunks, end.total_len
                ),
                BodyFault::Crc => "a chunk of the request body failed its CRC32C check".into(),
            };
            return Outcome::Failed(failed(job, a, ErrorCategory::Integrity, msg));
        }
        if let Some(signed) = a.signed_digest.filter(|s| *s != digest) {
            return Outcome::Failed(failed(
                job,
                a,
                ErrorCategory::Integrity,
                format!("request body {digest} does not match the signed digest {signed}"),
            ));
        }
        if let Some(feed) = a.pipe.take() {
            feed.verified(a.disk);
            return Outcome::Streamed(job);
        }
        let body = a.spool.into_body(a.disk, end.total_len);
        Outcome::Complete(CompletedJob {
            job,
            start: a.start,
            body,
            digest,
            first_offset: a.first_offset,
            trace: a.trace,
            sealed: a.sealed,
        })
    }

    /// Says that the memory budget is used up, naming the setting.
    fn memory_in_use(&self) -> String {
        let memory = &self.budgets.memory;
        let reserve = match memory.reserve() {
            0 => String::new(),
            r => format!(", the last {r} kept for start records and chunk tables"),
        };
        format!(
            "the portal's memory for requests is full ({} of {} bytes in use, PORTAL_MAX_ASSEMBLY_MEMORY_BYTES{reserve})",
            memory.used(),
            memory.limit(),
        )
    }

    /// Why a job whose start record and chunk table need at least `need`
    /// bytes cannot have the next of them: never, or not now.
    fn no_room_for_books(&self, need: u64) -> String {
        never_fits(&self.budgets.memory, need)
            .unwrap_or_else(|| format!("{}; retry later", self.memory_in_use()))
    }

    fn fail(&mut self, job: JobId, category: ErrorCategory, message: String) -> Outcome {
        self.finished.insert(job);
        match self.jobs.remove(&job) {
            Some(a) => Outcome::Failed(failed(job, a, category, message)),
            None => Outcome::Ignored("unknown job"),
        }
    }

    /// Keeps a job's place in its trace, for the job it completes as;
    /// false when the job is not assembling (a job with no body completes
    /// at its start record, and its reader sets the trace on the
    /// [`CompletedJob`] itself).
    pub(crate) fn set_trace(&mut self, job: JobId, trace: JobTrace) -> bool {
        match self.jobs.get_mut(&job) {
            Some(a) => {
                a.trace = Some(Box::new(trace));
                true
            }
            None => false,
        }
    }

    /// Requires the body of the assembling `job` to have `digest` (the
    /// digest its sender signed), or the job fails with `Integrity`;
    /// `false` when no such job is assembling.
    pub(crate) fn expect_digest(&mut self, job: JobId, digest: Digest) -> bool {
        match self.jobs.get_mut(&job) {
            Some(a) => {
                a.signed_digest = Some(digest);
                true
            }
            None => false,
        }
    }

    /// Ignores every record of `job` from now on.
    pub(crate) fn skip(&mut self, job: JobId) {
        self.jobs.remove(&job);
        self.finished.insert(job);
    }

    /// Ends an assembling job from outside (e.g. one of its records was
    /// unreadable); `None` when no such job is assembling.
    pub(crate) fn abort(
        &mut self,
        job: JobId,
        category: ErrorCategory,
        message: String,
    ) -> Option<FailedJob> {
        match self.fail(job, category, message) {
            Outcome::Failed(f) => Some(f),
            _ => None,
        }
    }

    /// Drops jobs idle for longer than the limit, returning them so the
    /// clients can be told; their spool files go with them.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<FailedJob> {
        let idle = self.limits.idle_timeout;
        let max_age = self.limits.max_job_age;
        let stale: Vec<(JobId, ErrorCategory, String)> = self
            .jobs
            .iter()
            .filter_map(|(j, a)| {
                if now.saturating_duration_since(a.last_activity) > idle {
                    let msg = format!(
                        "no record of this request arrived for {} s (PORTAL_JOB_IDLE_TIMEOUT_SECS); the job was dropped",
                        idle.as_secs()
                    );
                    return Some((*j, ErrorCategory::BadRequest, msg));
                }
                too_old(*j, max_age).map(|msg| (*j, ErrorCategory::Rejected, msg))
            })
            .collect();
        stale
            .into_iter()
            .filter_map(|(job, category, msg)| match self.fail(job, category, msg) {
                Outcome::Failed(f) => Some(f),
                _ => None,
            })
            .collect()
    }
}

/// The least memory job `a`'s start record and chunk table will take, now
/// that a chunk numbered `seq` arrived: an entry for each chunk the end
/// record counts, and at least for each taken so far and this one.
fn books_needed(a: &Assembly, seq: u32) -> u64 {
    let chunks = (a.seen.len() as u64 + u64::from(seq > 0))
        .max(u64::from(seq))
        .max(a.end.map_or(0, |e| u64::from(e.chunks)));
    start_cost(&a.start).saturating_add(chunks.saturating_mul(CHUNK_ENTRY_COST))
}

/// Says why a job whose start record and chunk table need `need` bytes can
/// never be assembled, when that is more than the whole memory budget;
/// `None` when it fits once other jobs give memory back.
fn never_fits(memory: &Budget, need: u64) -> Option<String> {
    (need > memory.limit()).then(|| {
        format!(
            "the request can never be assembled by this portal: its start record and chunk table need at least {need} bytes of memory, more than all of PORTAL_MAX_ASSEMBLY_MEMORY_BYTES ({}); send it in fewer, larger chunks or with fewer headers",
            memory.limit()
        )
    })
}

/// Says why a job is too old to run, judged by the time in its id (the
/// sender's clock); a time far in the future is refused alike.
fn too_old(job: JobId, max_age: Duration) -> Option<String> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let created = job.timestamp_ms();
    let max_ms = max_age.as_millis() as u64;
    if now_ms.saturating_sub(created) > max_ms {
        Some(format!(
            "the request is {} s old, older than PORTAL_MAX_JOB_AGE_SECS ({} s)",
            now_ms.saturating_sub(created) / 1000,
            max_age.as_secs()
        ))
    } else if created.saturating_sub(now_ms) > max_ms {
        Some(format!(
            "the request's job id lies {} s in the future; check the sender's clock",
            created.saturating_sub(now_ms) / 1000
        ))
    } else {
        None
    }
}

/// The failure of job `a`, which ends here; a pipelined job's call hears
/// of it through its pipe.
fn failed(job: JobId, mut a: Assembly, category: ErrorCategory, message: String) -> FailedJob {
    let pipelined = match a.pipe.take() {
        Some(feed) => {
            feed.failed(Failure::new(category, message.clone()));
            true
        }
        None => false,
    };
    FailedJob {
        job,
        reply_topic: std::mem::take(&mut a.start.reply_topic),
        reply_partition: a.start.reply_partition,
        first_offset: a.first_offset,
        category,
        message,
        pipelined,
        sealed: a.sealed,
    }
}
