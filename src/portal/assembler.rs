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
//! the `End` frame, so the target API never receives a body whose digest does
//! not match.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::protocol::wire::{Body, ChunkInfo, EndInfo, Frame, JobId, RequestStart};
use crate::protocol::ErrorCategory;

/// Limits on what one portal assembles.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body accepted.
    pub max_body_bytes: u64,
    /// Bodies larger than this spool to disk.
    pub spool_threshold: usize,
    /// Directory for spool files; the system temporary directory when `None`.
    pub spool_dir: Option<PathBuf>,
    /// Jobs assembling at once on one partition.
    pub max_jobs: usize,
    /// A job that receives nothing for this long is dropped.
    pub idle_timeout: Duration,
    /// Most chunks one body may have; bounds the per-job bookkeeping.
    pub max_chunks: usize,
    /// Most bytes of spool files on disk at once, shared by every assembler
    /// of a portal through [`Budgets::spool`].
    pub max_spool_bytes: u64,
    /// Most bytes of memory held for requests, shared by every assembler of
    /// a portal through [`Budgets::memory`].
    pub max_memory_bytes: u64,
    /// The last bytes of `max_memory_bytes`, which bodies may not take: only
    /// start records and chunk tables, which cannot move to disk. The
    /// portal sets it to [`bookkeeping_bound`], so a job of the most chunks
    /// and the largest start record the settings allow can always be
    /// recorded, however much memory bodies hold.
    pub memory_reserve: u64,
    /// A request older than this, by its job id's time, is refused.
    pub max_job_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 10 * 1024 * 1024 * 1024,
            spool_threshold: 1024 * 1024,
            spool_dir: None,
            max_jobs: 256,
            idle_timeout: Duration::from_secs(300),
            max_chunks: 100_000,
            max_spool_bytes: 20 * 1024 * 1024 * 1024,
            max_memory_bytes: 256 * 1024 * 1024,
            memory_reserve: bookkeeping_bound(100_000, 64, 16 * 1024),
            max_job_age: Duration::from_secs(3600),
        }
    }
}

/// Memory a job's chunk table takes per chunk: an entry of the `seen` map
/// is 8 bytes and a control byte, and a map that has just doubled is less
/// than half full, so 24 bytes per entry covers what it allocates.
pub const CHUNK_ENTRY_COST: u64 = 24;

/// Bytes of a start record's text besides its headers that
/// [`largest_start_cost`] allows for: a path of at most
/// [`crate::protocol::request::MAX_PATH_BYTES`], a reply topic (Kafka allows 249) and a
/// method. A start record with more is still charged in full, only not
/// covered by the reserve.
const START_TEXT_BESIDES_HEADERS: u64 = crate::protocol::request::MAX_PATH_BYTES as u64 + 512;

/// The most memory one job's start record takes when the policy admits at
/// most `max_header_count` headers of `max_header_bytes` bytes in all.
pub fn largest_start_cost(max_header_count: usize, max_header_bytes: usize) -> u64 {
    let per_header = std::mem::size_of::<(String, String)>() as u64;
    std::mem::size_of::<(JobId, Assembly)>() as u64
        + START_TEXT_BESIDES_HEADERS
        + (max_header_count as u64).saturating_mul(per_header)
        + max_header_bytes as u64
}

/// The most memory one job's bookkeeping (start record and chunk table)
/// takes under these settings: what a memory budget must hold at least,
/// and the reserve bodies leave free.
pub fn bookkeeping_bound(
    max_chunks: usize,
    max_header_count: usize,
    max_header_bytes: usize,
) -> u64 {
    (max_chunks as u64)
        .saturating_mul(CHUNK_ENTRY_COST)
        .saturating_add(largest_start_cost(max_header_count, max_header_bytes))
}

/// Bytes that all jobs of a portal share, on disk or in memory; jobs take
/// [`Lease`]s from it as they grow. Atomic, so the readers of all partitions
/// draw on one budget without a lock.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    /// The last bytes of `limit`, which leases taken with
    /// [`Lease::short_of_reserve`] may not fill.
    reserve: u64,
    used: AtomicU64,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Arc<Self> {
        Self::with_reserve(limit, 0)
    }

    /// A budget of `limit` bytes whose last `reserve` bytes only some
    /// leases may take.
    pub fn with_reserve(limit: u64, reserve: u64) -> Arc<Self> {
        Arc::new(Self {
            limit,
            reserve,
            used: AtomicU64::new(0),
        })
    }

    /// Bytes currently held by leases.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// The most bytes the leases may hold together.
    pub fn limit(&self) -> u64 {
        self.limit
    }
}

/// The budgets one portal's assemblers share, whatever partition they read.
#[derive(Debug, Clone)]
pub struct Budgets {
    /// Disk for spool files (`PORTAL_MAX_SPOOL_BYTES`).
    pub spool: Arc<Budget>,
    /// Memory for requests: jobs' start records and chunk tables while they
    /// assemble, and bodies kept in memory until the last copy is dropped
    /// (`PORTAL_MAX_ASSEMBLY_MEMORY_BYTES`); bodies leave the last
    /// [`Limits::memory_reserve`] bytes to the others.
    pub memory: Arc<Budget>,
}

impl Budgets {
    /// Fresh budgets of the sizes `limits` names.
    pub fn new(limits: &Limits) -> Self {
        Self {
            spool: Budget::new(limits.max_spool_bytes),
            memory: Budget::with_reserve(limits.max_memory_bytes, limits.memory_reserve),
        }
    }
}

/// A spool file with its share of the budget: both go when the last reader
/// (a job, or an HTTP body still draining after a timeout) lets go.
#[derive(Debug)]
pub struct SpoolFile {
    /// The unlinked file.
    pub file: File,
    _lease: Lease,
}

/// The part of a [`Budget`] one job holds; given back on drop.
#[derive(Debug)]
pub struct Lease {
    budget: Arc<Budget>,
    held: u64,
    /// The budget's use this lease may not grow it past.
    ceiling: u64,
}

impl Lease {
    /// A lease that may grow until the budget is used up.
    fn new(budget: &Arc<Budget>) -> Self {
        Self {
            budget: Arc::clone(budget),
            held: 0,
            ceiling: budget.limit,
        }
    }

    /// A lease that may grow only while the budget's reserve stays free.
    fn short_of_reserve(budget: &Arc<Budget>) -> Self {
        Self {
            budget: Arc::clone(budget),
            held: 0,
            ceiling: budget.limit.saturating_sub(budget.reserve),
        }
    }

    /// Grows the lease by `bytes`; false, and unchanged, when the budget
    /// cannot cover it.
    fn grow_by(&mut self, bytes: u64) -> bool {
        self.held
            .checked_add(bytes)
            .is_some_and(|total| self.grow_to(total))
    }

    /// Grows the lease to `bytes`; false, and unchanged, when the budget
    /// cannot cover it.
    fn grow_to(&mut self, bytes: u64) -> bool {
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

impl Drop for Lease {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.held, Ordering::SeqCst);
    }
}

/// A request body, complete and verified.
#[derive(Debug)]
pub enum SpooledBody {
    /// No body.
    Empty,
    /// A small body held in memory; its share of the memory budget is given
    /// back when the last copy of these bytes is dropped.
    Memory(bytes::Bytes),
    /// A large body in an unlinked temporary file.
    File {
        /// The spool file, already unlinked from its directory; shared so
        /// every attempt at the call reads it independently.
        file: Arc<SpoolFile>,
        /// Body length.
        len: u64,
    },
}

impl SpooledBody {
    /// Body length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Self::Empty => 0,
            Self::Memory(b) => b.len() as u64,
            Self::File { len, .. } => *len,
        }
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A request ready for the API.
#[derive(Debug)]
pub struct CompletedJob {
    /// Job id.
    pub job: JobId,
    /// Its start frame.
    pub start: RequestStart,
    /// The verified body.
    pub body: SpooledBody,
    /// SHA-256 of the body.
    pub sha256: [u8; 32],
    /// Offset of the job's start record in the request partition.
    pub first_offset: i64,
}

/// A job that cannot go on; the client should be told.
#[derive(Debug, Clone)]
pub struct FailedJob {
    /// Job id.
    pub job: JobId,
    /// Where the client listens.
    pub reply_topic: String,
    /// Partition the client listens on.
    pub reply_partition: i32,
    /// Offset of the job's start record.
    pub first_offset: i64,
    /// Class of failure.
    pub category: ErrorCategory,
    /// Readable explanation.
    pub message: String,
}

/// What accepting one record led to.
#[derive(Debug)]
pub enum Outcome {
    /// The job needs more records.
    Pending,
    /// The job is complete.
    Complete(CompletedJob),
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

enum Spool {
    /// The body from byte 0 on, with no gap; `lease` covers the buffer's
    /// capacity, which is what it takes from the allocator, and stops short
    /// of the memory budget's reserve.
    Memory {
        buf: Vec<u8>,
        lease: Lease,
    },
    File(File),
}

/// Why a body moves from memory to its spool file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Spill {
    /// It would pass the spool threshold.
    Threshold,
    /// A chunk starts past the bytes received so far; memory holds only
    /// bytes received, never the zeros in front of a far-flung chunk.
    Gap,
    /// The memory budget cannot cover it.
    Memory,
    /// The memory budget has no room for the chunk's entry in the chunk
    /// table, which cannot move to disk; the body's memory makes room.
    Books,
}

/// An in-memory body and its share of the memory budget, kept together
/// until the last `Bytes` of the body (perhaps inside an HTTP request still
/// being sent) is dropped.
struct LeasedBody {
    buf: Vec<u8>,
    _lease: Lease,
}

impl AsRef<[u8]> for LeasedBody {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
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
    /// Sum of chunk lengths received.
    received: u64,
    hasher: Sha256,
    /// Bytes hashed so far while chunks arrive in order; once a chunk arrives
    /// out of order the digest is recomputed from the spool at the end.
    hashed: u64,
    in_order: bool,
    end: Option<EndInfo>,
    /// The body digest the sender signed, when the request was signed.
    signed_sha256: Option<[u8; 32]>,
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
pub struct Assembler {
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
    pub fn new(limits: Limits) -> Self {
        let budgets = Budgets::new(&limits);
        Self::with_budgets(limits, budgets)
    }

    /// An assembler whose jobs draw on budgets shared with others.
    pub fn with_budgets(limits: Limits, budgets: Budgets) -> Self {
        Self {
            limits,
            budgets,
            jobs: HashMap::new(),
            finished: RecentJobs::new(16 * 1024),
            strays: RecentJobs::new(4 * 1024),
        }
    }

    /// Jobs currently assembling.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Whether no job is assembling.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Whether `job` is assembling or recently finished here.
    pub fn knows(&self, job: &JobId) -> bool {
        self.jobs.contains_key(job) || self.finished.contains(job)
    }

    /// Start offsets of the jobs still assembling.
    pub fn first_offsets(&self) -> impl Iterator<Item = i64> + '_ {
        self.jobs.values().map(|a| a.first_offset)
    }

    /// Takes one decoded record, found at `offset` of the request partition.
    pub fn accept(&mut self, frame: Frame, payload: &[u8], offset: i64, now: Instant) -> Outcome {
        let job = frame.job;
        if self.finished.contains(&job) {
            return Outcome::Ignored("record of a finished job");
        }
        match frame.body {
            Body::RequestStart(start) => self.start(job, start, offset, now),
            Body::Chunk(info) => self.chunk(job, frame.seq, info, payload, now),
            Body::End(end) => self.end(job, end, now),
            Body::ResponseStart(_) | Body::Error(_) if self.jobs.contains_key(&job) => {
                Outcome::Ignored("response frame on the request topic")
            }
            Body::ResponseStart(_) | Body::Error(_) => {
                self.stray(job, "a response frame on the request topic")
            }
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

    fn start(&mut self, job: JobId, start: RequestStart, offset: i64, now: Instant) -> Outcome {
        if let Some(a) = self.jobs.get(&job) {
            if a.start == start {
                return Outcome::Ignored("duplicate start record");
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
        if !start.has_body {
            self.finished.insert(job);
            return Outcome::Complete(CompletedJob {
                job,
                start,
                body: SpooledBody::Empty,
                sha256: Sha256::digest([]).into(),
                first_offset: offset,
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
                spool: Spool::Memory {
                    buf: Vec::new(),
                    lease: Lease::short_of_reserve(&self.budgets.memory),
                },
                seen: HashMap::new(),
                disk: Lease::new(&self.budgets.spool),
                books,
                extent: 0,
                received: 0,
                hasher: Sha256::new(),
                hashed: 0,
                in_order: true,
                end: None,
                signed_sha256: None,
            },
        );
        Outcome::Pending
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
        if crate::protocol::wire::checksum(payload) != info.crc32c {
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
        let holds_memory = matches!(&a.spool, Spool::Memory { lease, .. } if lease.held > 0);
        if !booked && !holds_memory {
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
            (Spool::File(_), _) => Some(a.disk.held + blocks(payload.len())),
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
            if let Err(e) = a.spool.move_to_disk(&self.limits.spool_dir) {
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
        a.received += payload.len() as u64;
        a.extent = a.extent.max(end_at);
        if a.in_order && info.offset == a.hashed {
            a.hasher.update(payload);
            a.hashed = end_at;
        } else if a.in_order {
            a.in_order = false;
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
        if a.seen.len() as u64 > u64::from(end.chunks)
            || a.received != end.total_len
            || a.extent != end.total_len
        {
            let msg = format!(
                "request body does not match its end record: got {} chunks and {} bytes, expected {} chunks and {} bytes",
                a.seen.len(),
                a.received,
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
        let digest: [u8; 32] = if a.in_order {
            std::mem::take(&mut a.hasher).finalize().into()
        } else {
            match digest_spool(&mut a.spool, end.total_len) {
                Ok(d) => d,
                Err(e) => {
                    return Outcome::Failed(failed(
                        job,
                        &a,
                        ErrorCategory::Internal,
                        format!("cannot read back the spooled body: {e}"),
                    ))
                }
            }
        };
        if digest != end.sha256 {
            return Outcome::Failed(failed(
                job,
                &a,
                ErrorCategory::Integrity,
                format!(
                    "request body SHA-256 {} does not match the sender's {}",
                    crate::protocol::chunker::hex(&digest),
                    crate::protocol::chunker::hex(&end.sha256)
                ),
            ));
        }
        if let Some(signed) = a.signed_sha256.filter(|s| *s != digest) {
            return Outcome::Failed(failed(
                job,
                &a,
                ErrorCategory::Integrity,
                format!(
                    "request body SHA-256 {} does not match the signed digest {}",
                    crate::protocol::chunker::hex(&digest),
                    crate::protocol::chunker::hex(&signed)
                ),
            ));
        }
        let body = match a.spool {
            Spool::Memory { buf, lease } => {
                SpooledBody::Memory(bytes::Bytes::from_owner(LeasedBody { buf, _lease: lease }))
            }
            Spool::File(file) => SpooledBody::File {
                file: Arc::new(SpoolFile {
                    file,
                    _lease: a.disk,
                }),
                len: end.total_len,
            },
        };
        Outcome::Complete(CompletedJob {
            job,
            start: a.start,
            body,
            sha256: digest,
            first_offset: a.first_offset,
        })
    }

    /// Says that the memory budget is used up, naming the setting.
    fn memory_in_use(&self) -> String {
        let memory = &self.budgets.memory;
        let reserve = match memory.reserve {
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
            Some(a) => Outcome::Failed(failed(job, &a, category, message)),
            None => Outcome::Ignored("unknown job"),
        }
    }

    /// Requires the body of the assembling `job` to have SHA-256 `digest`
    /// (the digest its sender signed), or the job fails with `Integrity`;
    /// `false` when no such job is assembling.
    pub fn expect_digest(&mut self, job: JobId, digest: [u8; 32]) -> bool {
        match self.jobs.get_mut(&job) {
            Some(a) => {
                a.signed_sha256 = Some(digest);
                true
            }
            None => false,
        }
    }

    /// Ignores every record of `job` from now on.
    pub fn skip(&mut self, job: JobId) {
        self.jobs.remove(&job);
        self.finished.insert(job);
    }

    /// Ends an assembling job from outside (e.g. one of its records was
    /// unreadable); `None` when no such job is assembling.
    pub fn abort(
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
    pub fn expire(&mut self, now: Instant) -> Vec<FailedJob> {
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

/// Disk bytes a write of `len` bytes may take: whole 4 KiB blocks.
fn blocks(len: usize) -> u64 {
    (len as u64).div_ceil(4096) * 4096
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

fn failed(job: JobId, a: &Assembly, category: ErrorCategory, message: String) -> FailedJob {
    FailedJob {
        job,
        reply_topic: a.start.reply_topic.clone(),
        reply_partition: a.start.reply_partition,
        first_offset: a.first_offset,
        category,
        message,
    }
}

/// Readies an in-memory body for a chunk covering `offset..end`: grows the
/// buffer, charged to `lease`, so the chunk fits; or says why the body must
/// move to disk instead. The buffer grows by doubling, as `Vec` would, but
/// never past `cap_limit` (the threshold, or the declared length if smaller).
fn make_room(
    buf: &mut Vec<u8>,
    lease: &mut Lease,
    offset: u64,
    end: u64,
    cap_limit: u64,
) -> Option<Spill> {
    if end > cap_limit {
        return Some(Spill::Threshold);
    }
    if offset > buf.len() as u64 {
        return Some(Spill::Gap);
    }
    // `end` is at most the threshold (64 MiB at most), so it fits a usize.
    let end = end as usize;
    if end <= buf.capacity() {
        return None;
    }
    let doubled = (buf.capacity() as u64 * 2).min(cap_limit).max(end as u64);
    let want = if lease.grow_to(doubled) {
        doubled as usize
    } else if lease.grow_to(end as u64) {
        end
    } else {
        return Some(Spill::Memory);
    };
    buf.reserve_exact(want - buf.len());
    None
}

impl Spool {
    /// Writes `data` at `offset`: into memory, where [`make_room`] made room
    /// for it, or into the file.
    fn write(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Memory { buf, .. } => {
                // make_room saw to it that offset is within what is held.
                let at = offset as usize;
                let overlap = buf.len().saturating_sub(at).min(data.len());
                buf[at..at + overlap].copy_from_slice(&data[..overlap]);
                buf.extend_from_slice(&data[overlap..]);
                Ok(())
            }
            Self::File(file) => file.write_all_at(data, offset),
        }
    }

    /// Moves an in-memory body to a new unlinked file in `dir`, giving its
    /// memory back.
    fn move_to_disk(&mut self, dir: &Option<PathBuf>) -> std::io::Result<()> {
        if let Self::Memory { buf, .. } = self {
            let mut file = match dir {
                Some(d) => tempfile::tempfile_in(d)?,
                None => tempfile::tempfile()?,
            };
            file.write_all(buf)?;
            *self = Self::File(file);
        }
        Ok(())
    }
}

fn digest_spool(spool: &mut Spool, len: u64) -> std::io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    match spool {
        Spool::Memory { buf, .. } => hasher.update(&buf[..len as usize]),
        Spool::File(file) => {
            file.seek(SeekFrom::Start(0))?;
            let mut reader = file.take(len);
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
        }
    }
    Ok(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::chunker::Chunker;
    use crate::protocol::wire::{decode, encode};
    use proptest::prelude::*;

    fn start(job: JobId, body_len: Option<u64>) -> Frame {
        Frame {
            job,
            seq: 0,
            body: Body::RequestStart(RequestStart {
                method: "POST".into(),
                path: "/upload".into(),
                headers: vec![],
                body_len,
                has_body: true,
                reply_topic: "r".into(),
                reply_partition: 0,
            }),
        }
    }

    /// Every record of one job, encoded as it would travel.
    fn records(job: JobId, body: &[u8], chunk: usize) -> Vec<Vec<u8>> {
        let mut out = vec![encode(&start(job, Some(body.len() as u64)), &[])];
        let mut c = Chunker::new(job, 1);
        for piece in body.chunks(chunk.max(1)) {
            let ch = c.chunk(piece.to_vec());
            out.push(encode(&ch.frame, &ch.payload));
        }
        out.push(encode(&c.finish(), &[]));
        out
    }

    fn body_bytes(b: &mut SpooledBody) -> Vec<u8> {
        match b {
            SpooledBody::Empty => vec![],
            SpooledBody::Memory(m) => m.to_vec(),
            SpooledBody::File { file, len, .. } => {
                use std::os::unix::fs::FileExt;
                let mut v = vec![0u8; *len as usize];
                file.file.read_exact_at(&mut v, 0).unwrap();
                v
            }
        }
    }

    fn limits(threshold: usize) -> Limits {
        Limits {
            spool_threshold: threshold,
            ..Limits::default()
        }
    }

    proptest! {
        /// Interleaved jobs, with duplicates and local reordering, all come out byte-identical.
        #[test]
        fn interleaved_duplicated_reordered(
            bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..3000), 1..5),
            chunk in 1usize..700,
            threshold in 0usize..4000,
            seed in any::<u64>(),
        ) {
            let jobs: Vec<JobId> = bodies.iter().map(|_| JobId::new()).collect();
            let mut queues: Vec<VecDeque<Vec<u8>>> = jobs.iter().zip(&bodies)
                .map(|(j, b)| records(*j, b, chunk).into()).collect();
            // Deterministic pseudo-random interleaving, duplication and swapping of chunks.
            let mut rng = seed | 1;
            let mut next = || { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; rng };
            let mut stream = Vec::new();
            while queues.iter().any(|q| !q.is_empty()) {
                let i = (next() as usize) % queues.len();
                if let Some(r) = queues[i].pop_front() {
                    let is_start = stream.iter().all(|(j, _): &(usize, Vec<u8>)| *j != i);
                    if !is_start && next() % 4 == 0 {
                        stream.push((i, r.clone()));
                    }
                    stream.push((i, r));
                }
            }
            // Swap neighbouring records of the same job, never moving a start record.
            for k in 1..stream.len().saturating_sub(1) {
                if next() % 5 == 0 && stream[k].0 == stream[k + 1].0 {
                    let first_of_job = stream[..k].iter().all(|(j, _)| *j != stream[k].0);
                    if !first_of_job {
                        stream.swap(k, k + 1);
                    }
                }
            }
            let mut asm = Assembler::new(limits(threshold));
            let mut done: HashMap<JobId, Vec<u8>> = HashMap::new();
            for (offset, (_, value)) in stream.iter().enumerate() {
                let (frame, payload) = decode(value).unwrap();
                match asm.accept(frame, payload, offset as i64, Instant::now()) {
                    Outcome::Complete(mut c) => {
                        prop_assert!(done.insert(c.job, body_bytes(&mut c.body)).is_none());
                    }
                    Outcome::Failed(f) => prop_assert!(false, "job failed: {}", f.message),
                    Outcome::Stray(what) => prop_assert!(false, "stray record: {}", what),
                    Outcome::Pending | Outcome::Ignored(_) => {}
                }
            }
            prop_assert!(asm.is_empty());
            for (job, body) in jobs.iter().zip(&bodies) {
                prop_assert_eq!(done.get(job), Some(body));
            }
        }
    }

    /// Arbitrary frames from a small set of jobs: chunks with any offset,
    /// sequence number and checksum, ends with any counts, starts with any
    /// declarations.
    fn arb_hostile_frame(jobs: Vec<JobId>) -> impl Strategy<Value = (Frame, Vec<u8>)> {
        let job = prop::sample::select(jobs);
        let start = (
            any::<Option<u64>>(),
            any::<bool>(),
            prop::sample::select(vec!["/a", "/b"]),
        )
            .prop_map(|(body_len, has_body, path)| {
                Body::RequestStart(RequestStart {
                    method: "POST".into(),
                    path: path.into(),
                    headers: vec![],
                    body_len: body_len.map(|l| l % 5000),
                    has_body,
                    reply_topic: "r".into(),
                    reply_partition: 0,
                })
            });
        let payload = prop::collection::vec(any::<u8>(), 0..600);
        let chunk = (0u64..6000, any::<bool>(), payload).prop_map(|(offset, good_crc, data)| {
            let crc = if good_crc {
                crate::protocol::wire::checksum(&data)
            } else {
                crate::protocol::wire::checksum(&data) ^ 1
            };
            (
                Body::Chunk(ChunkInfo {
                    offset,
                    crc32c: crc,
                }),
                data,
            )
        });
        let end =
            (0u32..20, 0u64..6000, any::<[u8; 32]>()).prop_map(|(chunks, total_len, sha256)| {
                Body::End(EndInfo {
                    chunks,
                    total_len,
                    sha256,
                })
            });
        let body = prop_oneof![
            start.prop_map(|b| (b, vec![])),
            chunk,
            end.prop_map(|b| (b, vec![])),
        ];
        (job, 0u32..30, body)
            .prop_map(|(job, seq, (body, payload))| (Frame { job, seq, body }, payload))
    }

    proptest! {
        /// Whatever arrives, the assembler never panics, keeps at most
        /// `max_jobs` jobs, never holds more spool or memory than its
        /// budgets, gives both back in full, and any job it completes has a
        /// body of the length and digest declared.
        #[test]
        fn hostile_sequences_stay_bounded(
            frames in (prop::collection::vec(any::<[u8; 10]>(), 1..6)).prop_flat_map(|seeds| {
                let now = JobId::new().timestamp_ms();
                let jobs: Vec<JobId> = seeds.iter().map(|r| {
                    let mut random = [0u8; 16];
                    random[6..].copy_from_slice(r);
                    JobId(ulid::Ulid::from_parts(now, u128::from_be_bytes(random)).to_bytes())
                }).collect();
                prop::collection::vec(arb_hostile_frame(jobs), 0..200)
            }),
            threshold in 0usize..3000,
        ) {
            let limits = Limits {
                max_jobs: 3,
                max_spool_bytes: 12288,
                max_memory_bytes: 6000,
                memory_reserve: 1000,
                ..limits(threshold)
            };
            let budgets = Budgets::new(&limits);
            let mut asm = Assembler::with_budgets(limits, budgets.clone());
            for (offset, (frame, payload)) in frames.into_iter().enumerate() {
                // Round trip through the codec as the portal would see it.
                let bytes = encode(&frame, &payload);
                let (frame, payload) = decode(&bytes).unwrap();
                if let Outcome::Complete(mut c) = asm.accept(frame, payload, offset as i64, Instant::now()) {
                    let body = body_bytes(&mut c.body);
                    prop_assert_eq!(c.body.len(), body.len() as u64);
                    let digest: [u8; 32] = Sha256::digest(&body).into();
                    prop_assert_eq!(digest, c.sha256);
                }
                prop_assert!(asm.len() <= 3);
                prop_assert!(budgets.spool.used() <= 12288);
                prop_assert!(budgets.memory.used() <= 6000);
            }
            drop(asm);
            prop_assert_eq!(budgets.spool.used(), 0);
            prop_assert_eq!(budgets.memory.used(), 0);
        }
    }

    fn feed(asm: &mut Assembler, recs: &[Vec<u8>]) -> Outcome {
        let mut outcome = Outcome::Pending;
        for (i, r) in recs.iter().enumerate() {
            let (f, p) = decode(r).unwrap();
            outcome = asm.accept(f, p, i as i64, Instant::now());
            if !matches!(outcome, Outcome::Pending | Outcome::Ignored(_)) {
                break;
            }
        }
        outcome
    }

    #[test]
    fn spool_budget_is_shared_and_given_back() {
        const BLOCK: usize = 4096;
        let lim = Limits {
            max_spool_bytes: 10 * BLOCK as u64,
            ..limits(100)
        };
        let budgets = Budgets::new(&lim);
        let budget = Arc::clone(&budgets.spool);
        let mut a = Assembler::with_budgets(lim.clone(), budgets.clone());
        let mut b = Assembler::with_budgets(lim, budgets);
        let held = match feed(&mut a, &records(JobId::new(), &[1u8; 6 * BLOCK], BLOCK)) {
            Outcome::Complete(c) => c,
            other => panic!("expected completion, got {other:?}"),
        };
        assert_eq!(budget.used(), 6 * BLOCK as u64);
        match feed(&mut b, &records(JobId::new(), &[2u8; 6 * BLOCK], BLOCK)) {
            Outcome::Failed(f) => {
                assert_eq!(f.category, ErrorCategory::Rejected);
                assert!(
                    f.message.contains("PORTAL_MAX_SPOOL_BYTES"),
                    "{}",
                    f.message
                );
            }
            other => panic!("expected the spool to be full, got {other:?}"),
        }
        assert_eq!(
            budget.used(),
            6 * BLOCK as u64,
            "the failed job gave its share back"
        );
        drop(held);
        assert_eq!(budget.used(), 0);
        assert!(matches!(
            feed(&mut b, &records(JobId::new(), &[3u8; 6 * BLOCK], BLOCK)),
            Outcome::Complete(_)
        ));
        assert_eq!(budget.used(), 0);

        // A byte far out in a sparse file costs a block, not its offset.
        let job = JobId::new();
        let mut start = start(job, None);
        if let Body::RequestStart(s) = &mut start.body {
            s.body_len = None;
        }
        assert!(matches!(
            b.accept(start, &[], 0, Instant::now()),
            Outcome::Pending
        ));
        let far = Frame {
            job,
            seq: 1,
            body: Body::Chunk(ChunkInfo {
                offset: 1 << 30,
                crc32c: crate::protocol::wire::checksum(b"x"),
            }),
        };
        assert!(matches!(
            b.accept(far, b"x", 1, Instant::now()),
            Outcome::Pending
        ));
        assert_eq!(budget.used(), BLOCK as u64);
    }

    /// The start record `start` builds, as the assembler charges it.
    fn start_cost_of(job: JobId) -> u64 {
        match start(job, None).body {
            Body::RequestStart(s) => start_cost(&s),
            _ => unreachable!(),
        }
    }

    /// Feeds every record of `job` with `body` cut into `chunk`-byte pieces,
    /// and returns the job's body once complete.
    fn assemble(asm: &mut Assembler, job: JobId, body: &[u8], chunk: usize) -> SpooledBody {
        match feed(asm, &records(job, body, chunk)) {
            Outcome::Complete(c) => c.body,
            other => panic!("expected completion, got {other:?}"),
        }
    }

    #[test]
    fn jobs_spill_to_disk_when_the_shared_memory_budget_is_used_up() {
        let cost = start_cost_of(JobId::new());
        let lim = Limits {
            spool_threshold: 10_000,
            // Bodies may take all but the last 1000 bytes.
            max_memory_bytes: 2 * cost + 6000 + 1000 + 1000,
            memory_reserve: 1000,
            ..Limits::default()
        };
        let budgets = Budgets::new(&lim);
        // Two partitions' assemblers, one budget.
        let mut a = Assembler::with_budgets(lim.clone(), budgets.clone());
        let mut b = Assembler::with_budgets(lim, budgets.clone());
        let body_a = pattern_body(6000);
        let body_b = pattern_body(5000);
        let (ja, jb) = (JobId::new(), JobId::new());
        let ra = records(ja, &body_a, 2000);
        assert!(matches!(feed(&mut a, &ra[..4]), Outcome::Pending));
        assert_eq!(budgets.memory.used(), cost + 3 * CHUNK_ENTRY_COST + 6000);
        assert_eq!(budgets.spool.used(), 0);

        // B's first chunk does not fit what A left: B moves to disk and
        // still completes, byte for byte.
        let rb = records(jb, &body_b, 2000);
        assert!(matches!(feed(&mut b, &rb[..2]), Outcome::Pending));
        assert_eq!(
            budgets.spool.used(),
            4096,
            "B's chunk went to its spool file"
        );
        let mut done_b = match feed(&mut b, &rb[2..]) {
            Outcome::Complete(c) => c.body,
            other => panic!("expected completion, got {other:?}"),
        };
        assert!(matches!(done_b, SpooledBody::File { .. }));
        assert_eq!(body_bytes(&mut done_b), body_b);

        // A completes in memory; its body keeps its share until the last
        // copy of it is gone.
        let mut done_a = match feed(&mut a, &ra[4..]) {
            Outcome::Complete(c) => c.body,
            other => panic!("expected completion, got {other:?}"),
        };
        let SpooledBody::Memory(bytes) = &done_a else {
            panic!("A stayed in memory: {done_a:?}");
        };
        let copy = bytes.clone();
        assert_eq!(body_bytes(&mut done_a), body_a);
        drop(done_a);
        assert_eq!(budgets.memory.used(), 6000);
        drop(copy);
        assert_eq!(budgets.memory.used(), 0);
        drop(done_b);
        assert_eq!(budgets.spool.used(), 0);
    }

    #[test]
    fn a_job_is_refused_when_neither_memory_nor_spool_has_room() {
        let cost = start_cost_of(JobId::new());
        let lim = Limits {
            spool_threshold: 10_000,
            // Bodies may take all but the last 1000 bytes.
            max_memory_bytes: 2 * cost + 6000 + 1000 + 1000,
            memory_reserve: 1000,
            max_spool_bytes: 4096,
            ..Limits::default()
        };
        let budgets = Budgets::new(&lim);
        let mut a = Assembler::with_budgets(lim.clone(), budgets.clone());
        let mut b = Assembler::with_budgets(lim, budgets.clone());
        let ja = JobId::new();
        let ra = records(ja, &pattern_body(6000), 6000);
        assert!(matches!(feed(&mut a, &ra[..2]), Outcome::Pending));
        let held = budgets.memory.used();

        // 5000 bytes need two blocks of spool; there is one.
        let jb = JobId::new();
        let rb = records(jb, &pattern_body(5000), 5000);
        let f = failure(feed(&mut b, &rb));
        assert_eq!(f.category, ErrorCategory::Rejected);
        for wanted in [
            "PORTAL_MAX_ASSEMBLY_MEMORY_BYTES",
            "PORTAL_MAX_SPOOL_BYTES",
            "retry later",
        ] {
            assert!(f.message.contains(wanted), "{}", f.message);
        }
        assert!(b.is_empty());
        assert_eq!(budgets.memory.used(), held, "the refused job gave all back");
        assert_eq!(budgets.spool.used(), 0);
        // Its later records change nothing.
        let (frame, payload) = decode(&rb[1]).unwrap();
        assert!(matches!(
            b.accept(frame, payload, 9, Instant::now()),
            Outcome::Ignored(_)
        ));

        // A body that takes one block of spool still fits.
        let small = pattern_body(3000);
        let mut done = assemble(&mut b, JobId::new(), &small, 3000);
        assert!(matches!(done, SpooledBody::File { .. }));
        assert_eq!(body_bytes(&mut done), small);
    }

    #[test]
    fn a_start_or_chunk_the_memory_budget_cannot_record_is_refused() {
        let cost = start_cost_of(JobId::new());
        let lim = Limits {
            max_memory_bytes: cost,
            ..Limits::default()
        };
        let budgets = Budgets::new(&lim);
        let mut asm = Assembler::with_budgets(lim, budgets.clone());
        // The first start fits exactly. A second does not fit beside it, but
        // would alone: the portal is busy.
        let job = JobId::new();
        let recs = records(job, b"abc", 3);
        assert!(matches!(feed(&mut asm, &recs[..1]), Outcome::Pending));
        let other = JobId::new();
        let f = failure(feed(&mut asm, &records(other, b"abc", 3)[..1]));
        assert_eq!(f.category, ErrorCategory::Rejected);
        for wanted in ["PORTAL_MAX_ASSEMBLY_MEMORY_BYTES", "retry later"] {
            assert!(f.message.contains(wanted), "{}", f.message);
        }
        // The first job's chunk needs an entry in its chunk table, which
        // cannot move to disk and would pass the whole budget: that is no
        // passing shortage, and the message says so.
        let f = failure(feed(&mut asm, &recs[1..2]));
        assert_eq!(f.category, ErrorCategory::Rejected);
        for wanted in [
            "can never be assembled",
            &format!("need at least {} bytes", cost + CHUNK_ENTRY_COST),
            &format!("PORTAL_MAX_ASSEMBLY_MEMORY_BYTES ({cost})"),
        ] {
            assert!(f.message.contains(wanted), "{}", f.message);
        }
        assert!(!f.message.contains("retry"), "{}", f.message);
        assert!(asm.is_empty());
        assert_eq!(budgets.memory.used(), 0);
    }

    /// The reviewer's probe: the budget holds one start record, one chunk
    /// entry and a 3000-byte chunk, exactly. A 6000-byte body in 3000-byte
    /// chunks fills it with its first chunk; its second chunk's entry finds
    /// no room, and the job's own body makes room by moving to disk.
    #[test]
    fn a_job_that_filled_the_budget_moves_its_own_body_to_disk_for_its_chunk_table() {
        let job = JobId::new();
        let cost = start_cost_of(job);
        let lim = Limits {
            max_memory_bytes: cost + CHUNK_ENTRY_COST + 3000,
            memory_reserve: 0,
            ..Limits::default()
        };
        let budgets = Budgets::new(&lim);
        let mut asm = Assembler::with_budgets(lim.clone(), budgets.clone());
        let body = pattern_body(6000);
        let recs = records(job, &body, 3000);
        assert!(matches!(feed(&mut asm, &recs[..2]), Outcome::Pending));
        assert_eq!(budgets.memory.used(), lim.max_memory_bytes, "full");
        assert_eq!(budgets.spool.used(), 0);
        assert!(matches!(feed(&mut asm, &recs[2..3]), Outcome::Pending));
        assert_eq!(budgets.memory.used(), cost + 2 * CHUNK_ENTRY_COST);
        assert_eq!(budgets.spool.used(), 8192, "both chunks on disk");
        let mut done = match feed(&mut asm, &recs[3..]) {
            Outcome::Complete(c) => c.body,
            other => panic!("expected completion, got {other:?}"),
        };
        assert!(matches!(done, SpooledBody::File { .. }));
        assert_eq!(body_bytes(&mut done), body);
        drop(done);
        assert_eq!((budgets.memory.used(), budgets.spool.used()), (0, 0));

        // With a reserve of one entry, the body never takes the entry's room:
        // the first chunk already goes to disk.
        let lim = Limits {
            memory_reserve: CHUNK_ENTRY_COST,
            ..lim
        };
        let budgets = Budgets::new(&lim);
        let mut asm = Assembler::with_budgets(lim, budgets.clone());
        let job = JobId::new();
        let recs = records(job, &body, 3000);
        assert!(matches!(feed(&mut asm, &recs[..2]), Outcome::Pending));
        assert_eq!(budgets.memory.used(), cost + CHUNK_ENTRY_COST);
        let mut done = match feed(&mut asm, &recs[2..]) {
            Outcome::Complete(c) => c.body,
            other => panic!("expected completion, got {other:?}"),
        };
        assert_eq!(body_bytes(&mut done), body);
    }

    /// Bodies held in memory (as completed jobs queued for the API hold
    /// them) fill all the budget they may; a job already on disk and a new
    /// job still get their chunk tables from the reserve and complete.
    #[test]
    fn bodies_filling_the_memory_budget_leave_chunk_tables_room() {
        let cost = start_cost_of(JobId::new());
        let max_chunks = 100;
        let reserve = bookkeeping_bound(max_chunks, 64, 16 * 1024);
        let lim = Limits {
            spool_threshold: 1000,
            max_chunks,
            max_memory_bytes: reserve + 10_000,
            memory_reserve: reserve,
            ..Limits::default()
        };
        let ceiling = lim.max_memory_bytes - reserve;
        let budgets = Budgets::new(&lim);
        let mut asm = Assembler::with_budgets(lim.clone(), budgets.clone());

        // A job of 100 chunks passes the spool threshold at its 21st and
        // goes to disk; 75 chunks are still to come.
        let spooled = JobId::new();
        let spooled_body = pattern_body(5000);
        let spooled_recs = records(spooled, &spooled_body, 50);
        assert!(matches!(
            feed(&mut asm, &spooled_recs[..26]),
            Outcome::Pending
        ));
        assert!(budgets.spool.used() > 0);
        // Without the reserve, what bodies leave would not hold those 75
        // entries, nor a new job's start record and 100 entries.
        assert!(75 * CHUNK_ENTRY_COST > cost + CHUNK_ENTRY_COST + 1);

        // Bodies fill memory, down to bodies of one byte.
        let mut held = Vec::new();
        for size in [1000, 100, 10, 1] {
            for _ in 0..=lim.max_memory_bytes / size as u64 {
                let body = assemble(&mut asm, JobId::new(), &pattern_body(size), size);
                let on_disk = matches!(body, SpooledBody::File { .. });
                held.push(body);
                if on_disk {
                    break;
                }
            }
            assert!(matches!(held.last(), Some(SpooledBody::File { .. })));
        }
        let used = budgets.memory.used();
        assert!(used <= ceiling, "{used} of {ceiling}");
        assert!(
            used + cost + CHUNK_ENTRY_COST + 1 > ceiling,
            "bodies took all they may: {used} of {ceiling}"
        );

        // The spooled job goes on and completes.
        let mut done = match feed(&mut asm, &spooled_recs[26..]) {
            Outcome::Complete(c) => c.body,
            other => panic!("expected the spooled job to complete, got {other:?}"),
        };
        assert_eq!(body_bytes(&mut done), spooled_body);
        drop(done);
        // So does a new job of the most chunks, on disk.
        let body = pattern_body(5000);
        let mut done = assemble(&mut asm, JobId::new(), &body, 50);
        assert!(matches!(done, SpooledBody::File { .. }));
        assert_eq!(body_bytes(&mut done), body);
        assert!(budgets.memory.used() <= lim.max_memory_bytes);
        drop((done, held));
        assert_eq!((budgets.memory.used(), budgets.spool.used()), (0, 0));
    }

    #[test]
    fn a_job_whose_chunk_table_can_never_fit_is_told_so_at_its_end_record() {
        let cost = start_cost_of(JobId::new());
        let lim = Limits {
            max_memory_bytes: cost + 10 * CHUNK_ENTRY_COST,
            memory_reserve: 0,
            ..Limits::default()
        };
        // Twenty chunks need twenty entries; the budget holds ten.
        let body = pattern_body(20);
        let recs = records(JobId::new(), &body, 1);
        let at_end = [recs[0].clone(), recs[21].clone()];
        let budgets = Budgets::new(&lim);
        let mut asm = Assembler::with_budgets(lim.clone(), budgets.clone());
        let f = failure(feed(&mut asm, &at_end));
        assert_eq!(f.category, ErrorCategory::Rejected);
        let need = cost + 20 * CHUNK_ENTRY_COST;
        assert!(
            f.message.contains(&format!("need at least {need} bytes")),
            "{}",
            f.message
        );
        assert!(
            f.message.contains("can never be assembled"),
            "{}",
            f.message
        );
        assert!(!f.message.contains("retry"), "{}", f.message);
        // Without the end record, the eleventh chunk finds out.
        let recs = records(JobId::new(), &body, 1);
        assert!(matches!(feed(&mut asm, &recs[..11]), Outcome::Pending));
        let f = failure(feed(&mut asm, &recs[11..12]));
        assert!(
            f.message.contains("can never be assembled"),
            "{}",
            f.message
        );
        assert!(asm.is_empty());
        assert_eq!((budgets.memory.used(), budgets.spool.used()), (0, 0));
        // Ten chunks fit.
        let ten = pattern_body(10);
        assert_eq!(
            body_bytes(&mut assemble(&mut asm, JobId::new(), &ten, 1)),
            ten
        );
    }

    #[test]
    fn memory_follows_the_bytes_received() {
        let budgets = Budgets::new(&Limits::default());
        let mut asm = Assembler::with_budgets(Limits::default(), budgets.clone());
        // The hostile chunk of issue 11: one byte just under the threshold.
        let job = JobId::new();
        let cost = start_cost_of(job);
        assert!(matches!(
            asm.accept(start(job, None), &[], 0, Instant::now()),
            Outcome::Pending
        ));
        let far = Frame {
            job,
            seq: 1,
            body: Body::Chunk(ChunkInfo {
                offset: (1 << 20) - 1,
                crc32c: crate::protocol::wire::checksum(b"x"),
            }),
        };
        assert!(matches!(
            asm.accept(far, b"x", 1, Instant::now()),
            Outcome::Pending
        ));
        assert_eq!(budgets.memory.used(), cost + CHUNK_ENTRY_COST);
        assert_eq!(budgets.spool.used(), 4096, "the gap went to a sparse file");
        asm.skip(job);
        assert_eq!((budgets.memory.used(), budgets.spool.used()), (0, 0));

        // A body arriving back to front has a gap until its end: it is
        // assembled from disk, correctly.
        let body = pattern_body(3000);
        let job = JobId::new();
        let mut recs = records(job, &body, 1000);
        recs[1..4].reverse();
        let mut done = match feed(&mut asm, &recs) {
            Outcome::Complete(c) => c.body,
            other => panic!("expected completion, got {other:?}"),
        };
        assert!(matches!(done, SpooledBody::File { .. }));
        assert_eq!(body_bytes(&mut done), body);
        drop(done);

        // In order, a stream of unknown length grows by doubling; one of
        // declared length takes just that.
        let job = JobId::new();
        let mut stream = records(job, &pattern_body(2500), 1000);
        if let Ok((mut f, _)) = decode(&stream[0]) {
            if let Body::RequestStart(s) = &mut f.body {
                s.body_len = None;
            }
            stream[0] = encode(&f, &[]);
        }
        assert!(matches!(feed(&mut asm, &stream[..4]), Outcome::Pending));
        assert_eq!(
            budgets.memory.used(),
            start_cost_of(job) + 3 * CHUNK_ENTRY_COST + 4000
        );
        asm.skip(job);
        let job = JobId::new();
        assert!(matches!(
            feed(&mut asm, &records(job, &pattern_body(2500), 1000)[..4]),
            Outcome::Pending
        ));
        assert_eq!(
            budgets.memory.used(),
            start_cost_of(job) + 3 * CHUNK_ENTRY_COST + 2500
        );
    }

    #[test]
    fn budgets_are_given_back_however_a_job_ends() {
        let lim = Limits {
            idle_timeout: Duration::from_secs(5),
            spool_threshold: 2000,
            ..Limits::default()
        };
        let budgets = Budgets::new(&lim);
        let empty = |b: &Budgets| (b.memory.used(), b.spool.used()) == (0, 0);
        let mut asm = Assembler::with_budgets(lim.clone(), budgets.clone());
        // Two jobs held: one in memory, one on disk.
        let pending = |asm: &mut Assembler| {
            let mem = JobId::new();
            let disk = JobId::new();
            assert!(matches!(
                feed(asm, &records(mem, &pattern_body(1500), 500)[..3]),
                Outcome::Pending
            ));
            assert!(matches!(
                feed(asm, &records(disk, &pattern_body(4000), 2000)[..3]),
                Outcome::Pending
            ));
            assert!(budgets.memory.used() > 1000 && budgets.spool.used() >= 4096);
            (mem, disk)
        };

        // Failed: a chunk with a bad checksum, then aborted from outside.
        let (mem, disk) = pending(&mut asm);
        let mut bad = Chunker::new(mem, 4);
        let mut c = bad.chunk(vec![1; 10]);
        if let Body::Chunk(info) = &mut c.frame.body {
            info.crc32c ^= 1;
        }
        assert!(matches!(
            asm.accept(c.frame, &c.payload, 5, Instant::now()),
            Outcome::Failed(_)
        ));
        assert!(asm
            .abort(disk, ErrorCategory::Internal, "x".into())
            .is_some());
        assert!(empty(&budgets));

        // Skipped.
        let (mem, disk) = pending(&mut asm);
        asm.skip(mem);
        asm.skip(disk);
        assert!(empty(&budgets));

        // Expired.
        pending(&mut asm);
        assert_eq!(asm.expire(Instant::now() + Duration::from_secs(6)).len(), 2);
        assert!(empty(&budgets));

        // Dropped with the assembler (the reader stopped).
        pending(&mut asm);
        drop(asm);
        assert!(empty(&budgets));

        // Finished: the bodies hold their shares until they are dropped.
        let mut asm = Assembler::with_budgets(lim, budgets.clone());
        let mem = assemble(&mut asm, JobId::new(), &pattern_body(1500), 500);
        let disk = assemble(&mut asm, JobId::new(), &pattern_body(4000), 2000);
        assert_eq!(budgets.memory.used(), 1500);
        // Its first chunk and the second, each in whole blocks.
        assert_eq!(budgets.spool.used(), 8192);
        drop((mem, disk));
        assert!(empty(&budgets));
    }

    #[test]
    fn old_and_future_requests_are_refused() {
        let now = JobId::new().timestamp_ms();
        let lim = Limits {
            max_job_age: Duration::from_secs(60),
            ..Limits::default()
        };
        for (at, why) in [
            (now - 120_000, "older than PORTAL_MAX_JOB_AGE_SECS"),
            (now + 120_000, "future"),
        ] {
            let job = JobId(ulid::Ulid::from_parts(at, 7).to_bytes());
            let mut asm = Assembler::new(lim.clone());
            match feed(&mut asm, &records(job, b"x", 1)) {
                Outcome::Failed(f) => {
                    assert_eq!(f.category, ErrorCategory::Rejected);
                    assert!(f.message.contains(why), "{}", f.message);
                }
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
        // A job that ages out while assembling is dropped by the sweep.
        let now = JobId::new().timestamp_ms();
        let job = JobId(ulid::Ulid::from_parts(now - 59_700, 7).to_bytes());
        let mut asm = Assembler::new(lim);
        let recs = records(job, &[1u8; 100], 10);
        assert!(matches!(feed(&mut asm, &recs[..2]), Outcome::Pending));
        std::thread::sleep(Duration::from_millis(1100));
        let expired = asm.expire(Instant::now());
        assert_eq!(expired.len(), 1);
        assert!(expired[0].message.contains("PORTAL_MAX_JOB_AGE_SECS"));
        assert!(asm.is_empty());
    }

    #[test]
    fn repeated_start_with_other_metadata_fails_the_job() {
        let job = JobId::new();
        let recs = records(job, &[1u8; 100], 10);
        let mut asm = Assembler::new(Limits::default());
        assert!(matches!(feed(&mut asm, &recs[..3]), Outcome::Pending));
        let (same, _) = decode(&recs[0]).unwrap();
        assert!(matches!(
            asm.accept(same.clone(), &[], 9, Instant::now()),
            Outcome::Ignored(_)
        ));
        let mut other = same;
        if let Body::RequestStart(s) = &mut other.body {
            s.path = "/admin".into();
        }
        match asm.accept(other, &[], 10, Instant::now()) {
            Outcome::Failed(f) => {
                assert_eq!(f.category, ErrorCategory::BadRequest);
                assert!(f.message.contains("different metadata"), "{}", f.message);
            }
            o => panic!("expected a failure, got {o:?}"),
        }
        assert!(asm.is_empty());
    }

    #[test]
    fn out_of_range_chunk_numbers_fail_the_job() {
        let job = JobId::new();
        let recs = records(job, &[1u8; 100], 10);
        let lim = Limits {
            max_chunks: 20,
            ..Limits::default()
        };
        let mut asm = Assembler::new(lim);
        assert!(matches!(feed(&mut asm, &recs[..2]), Outcome::Pending));
        let (mut f, p) = decode(&recs[2]).unwrap();
        f.seq = 21;
        match asm.accept(f, p, 5, Instant::now()) {
            Outcome::Failed(f) => assert!(f.message.contains("out of range"), "{}", f.message),
            o => panic!("expected a failure, got {o:?}"),
        }
    }

    /// `n` bytes that differ from chunk to chunk.
    fn pattern_body(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// The outcome's failure, or a panic naming what came instead.
    fn failure(outcome: Outcome) -> FailedJob {
        match outcome {
            Outcome::Failed(f) => f,
            o => panic!("expected a failure, got {o:?}"),
        }
    }

    #[test]
    fn a_redelivered_chunk_is_ignored_and_a_conflicting_one_fails_the_job() {
        let job = JobId::new();
        let body = pattern_body(300);
        let recs = records(job, &body, 100);
        let mut asm = Assembler::new(Limits::default());
        assert!(matches!(feed(&mut asm, &recs[..3]), Outcome::Pending));
        // Kafka delivered chunk 2 again: the copy changes nothing.
        let (f, p) = decode(&recs[2]).unwrap();
        assert!(matches!(
            asm.accept(f, p, 3, Instant::now()),
            Outcome::Ignored("duplicate chunk")
        ));
        match feed(&mut asm, &recs[3..]) {
            Outcome::Complete(mut c) => assert_eq!(body_bytes(&mut c.body), body),
            o => panic!("expected the job to complete, got {o:?}"),
        }

        // Another chunk under a number already taken fails the job.
        let job = JobId::new();
        let recs = records(job, &body, 100);
        let mut asm = Assembler::new(Limits::default());
        assert!(matches!(feed(&mut asm, &recs[..2]), Outcome::Pending));
        let (mut f, _) = decode(&recs[1]).unwrap();
        let other = vec![9u8; 100];
        f.body = Body::Chunk(ChunkInfo {
            offset: 0,
            crc32c: crate::protocol::wire::checksum(&other),
        });
        let f = failure(asm.accept(f, &other, 2, Instant::now()));
        assert_eq!(f.category, ErrorCategory::BadRequest);
        assert!(
            f.message.contains("twice with different contents"),
            "{}",
            f.message
        );
        assert!(asm.is_empty(), "the job is dropped");
    }

    #[test]
    fn chunk_count_and_size_limits_name_their_settings() {
        let lim = Limits {
            max_chunks: 20,
            max_body_bytes: 1000,
            ..Limits::default()
        };
        let recs = |job| records(job, &[1u8; 100], 10);
        // A chunk numbered past the limit.
        let job = JobId::new();
        let mut asm = Assembler::new(lim.clone());
        let r = recs(job);
        assert!(matches!(feed(&mut asm, &r[..1]), Outcome::Pending));
        let (mut f, p) = decode(&r[1]).unwrap();
        f.seq = 21;
        let f = failure(asm.accept(f, p, 1, Instant::now()));
        assert_eq!(f.category, ErrorCategory::Rejected);
        assert!(
            f.message.contains("at most 20 chunks (PORTAL_MAX_CHUNKS)"),
            "{}",
            f.message
        );
        // End records declaring more chunks or bytes than allowed.
        for (end, wanted) in [
            (
                EndInfo {
                    chunks: 21,
                    total_len: 100,
                    sha256: [0; 32],
                },
                "PORTAL_MAX_CHUNKS",
            ),
            (
                EndInfo {
                    chunks: 10,
                    total_len: 1001,
                    sha256: [0; 32],
                },
                "PORTAL_MAX_BODY_BYTES",
            ),
        ] {
            let job = JobId::new();
            let mut asm = Assembler::new(lim.clone());
            let r = recs(job);
            assert!(matches!(feed(&mut asm, &r[..3]), Outcome::Pending));
            let frame = Frame {
                job,
                seq: 11,
                body: Body::End(end),
            };
            let f = failure(asm.accept(frame, &[], 3, Instant::now()));
            assert_eq!(f.category, ErrorCategory::Rejected);
            assert!(f.message.contains(wanted), "{}", f.message);
            assert!(asm.is_empty(), "the job is dropped");
        }
    }

    #[test]
    fn a_busy_partition_refuses_new_jobs_until_one_finishes() {
        let lim = Limits {
            max_jobs: 2,
            ..Limits::default()
        };
        let mut asm = Assembler::new(lim);
        let jobs: Vec<JobId> = (0..3).map(|_| JobId::new()).collect();
        let recs: Vec<_> = jobs.iter().map(|j| records(*j, &[5u8; 50], 10)).collect();
        assert!(matches!(feed(&mut asm, &recs[0][..2]), Outcome::Pending));
        assert!(matches!(feed(&mut asm, &recs[1][..2]), Outcome::Pending));
        let f = failure(feed(&mut asm, &recs[2][..1]));
        assert_eq!(f.category, ErrorCategory::Rejected);
        assert!(
            f.message.contains("PORTAL_MAX_ASSEMBLING_JOBS"),
            "{}",
            f.message
        );
        assert!(f.message.contains("retry later"), "{}", f.message);
        // Once a job completes, a new one is taken.
        assert!(matches!(
            feed(&mut asm, &recs[0][2..]),
            Outcome::Complete(_)
        ));
        let late = JobId::new();
        assert!(matches!(
            feed(&mut asm, &records(late, &[5u8; 50], 10)[..1]),
            Outcome::Pending
        ));
    }

    #[test]
    fn records_of_jobs_not_started_here_are_reported_once_per_job() {
        let mut asm = Assembler::new(Limits::default());
        let (a, b) = (JobId::new(), JobId::new());
        let ra = records(a, &[3u8; 30], 10);
        let rb = records(b, &[3u8; 30], 10);
        let at = |asm: &mut Assembler, r: &[u8]| {
            let (f, p) = decode(r).unwrap();
            asm.accept(f, p, 0, Instant::now())
        };
        assert!(matches!(at(&mut asm, &ra[1]), Outcome::Stray(_)));
        assert!(matches!(at(&mut asm, &ra[2]), Outcome::Ignored(_)));
        assert!(matches!(at(&mut asm, &ra[4]), Outcome::Ignored(_)));
        assert!(matches!(at(&mut asm, &rb[4]), Outcome::Stray(_)));
        assert!(asm.is_empty());
        // A response frame naming a job assembling here is no stray.
        let c = JobId::new();
        assert!(matches!(
            feed(&mut asm, &records(c, &[3u8; 30], 10)[..1]),
            Outcome::Pending
        ));
        let response = Frame {
            job: c,
            seq: 0,
            body: Body::ResponseStart(crate::protocol::wire::ResponseStart {
                status: 200,
                headers: vec![],
                body_len: None,
            }),
        };
        assert!(matches!(
            asm.accept(response, &[], 9, Instant::now()),
            Outcome::Ignored(_)
        ));
    }

    #[test]
    fn corrupted_chunk_fails_with_integrity() {
        let job = JobId::new();
        let recs = records(job, &[7u8; 5000], 1000);
        let mut asm = Assembler::new(Limits::default());
        let mut outcome = Outcome::Pending;
        for (i, r) in recs.iter().enumerate() {
            let mut r = r.clone();
            if i == 2 {
                let last = r.len() - 1;
                r[last] ^= 1;
            }
            let (f, p) = decode(&r).unwrap();
            outcome = asm.accept(f, p, i as i64, Instant::now());
            if !matches!(outcome, Outcome::Pending) {
                break;
            }
        }
        match outcome {
            Outcome::Failed(f) => {
                assert_eq!(f.category, ErrorCategory::Integrity);
                assert!(f.message.contains("CRC32C"), "{}", f.message);
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        assert!(asm.is_empty());
    }

    #[test]
    fn wrong_digest_never_completes() {
        let job = JobId::new();
        let mut recs = records(job, &[1u8; 3000], 1000);
        let last = recs.len() - 1;
        let (mut end, _) = decode(&recs[last]).unwrap();
        if let Body::End(e) = &mut end.body {
            e.sha256[0] ^= 0xff;
        }
        recs[last] = encode(&end, &[]);
        let mut asm = Assembler::new(limits(100));
        let mut last_outcome = Outcome::Pending;
        for (i, r) in recs.iter().enumerate() {
            let (f, p) = decode(r).unwrap();
            last_outcome = asm.accept(f, p, i as i64, Instant::now());
        }
        match last_outcome {
            Outcome::Failed(f) => {
                assert_eq!(f.category, ErrorCategory::Integrity);
                assert!(f.message.contains("SHA-256"));
            }
            other => panic!("expected an integrity failure, got {other:?}"),
        }
    }

    #[test]
    fn oversized_body_is_rejected_at_start() {
        let mut asm = Assembler::new(Limits {
            max_body_bytes: 10,
            ..Limits::default()
        });
        let job = JobId::new();
        match asm.accept(start(job, Some(11)), &[], 0, Instant::now()) {
            Outcome::Failed(f) => {
                assert_eq!(f.category, ErrorCategory::Rejected);
                assert!(f.message.contains("PORTAL_MAX_BODY_BYTES"));
            }
            other => panic!("expected rejection, got {other:?}"),
        }
    }

    #[test]
    fn undeclared_stream_over_the_limit_is_rejected_while_assembling() {
        let mut asm = Assembler::new(Limits {
            max_body_bytes: 1500,
            ..Limits::default()
        });
        let job = JobId::new();
        assert!(matches!(
            asm.accept(start(job, None), &[], 0, Instant::now()),
            Outcome::Pending
        ));
        let mut c = Chunker::new(job, 1);
        let a = c.chunk(vec![0; 1000]);
        assert!(matches!(
            asm.accept(a.frame, &a.payload, 1, Instant::now()),
            Outcome::Pending
        ));
        let b = c.chunk(vec![0; 1000]);
        match asm.accept(b.frame, &b.payload, 2, Instant::now()) {
            Outcome::Failed(f) => assert_eq!(f.category, ErrorCategory::Rejected),
            other => panic!("expected rejection, got {other:?}"),
        }
        assert!(asm.is_empty());
    }

    #[test]
    fn idle_jobs_expire_and_report_their_first_offset() {
        let mut asm = Assembler::new(Limits {
            idle_timeout: Duration::from_secs(5),
            ..Limits::default()
        });
        let t0 = Instant::now();
        let job = JobId::new();
        asm.accept(start(job, Some(10)), &[], 42, t0);
        assert_eq!(asm.first_offsets().collect::<Vec<_>>(), vec![42]);
        assert!(asm.expire(t0 + Duration::from_secs(4)).is_empty());
        let expired = asm.expire(t0 + Duration::from_secs(6));
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].first_offset, 42);
        assert!(expired[0].message.contains("PORTAL_JOB_IDLE_TIMEOUT_SECS"));
        assert!(asm.is_empty());
    }

    #[test]
    fn a_body_other_than_the_signed_one_fails_with_integrity() {
        let body = b"signed body".to_vec();
        for (signed, ok) in [(Sha256::digest(&body).into(), true), ([9u8; 32], false)] {
            let job = JobId::new();
            let mut asm = Assembler::new(Limits::default());
            assert!(!asm.knows(&job));
            let mut last = Outcome::Pending;
            for (i, r) in records(job, &body, 4).iter().enumerate() {
                let (f, p) = decode(r).unwrap();
                last = asm.accept(f, p, i as i64, Instant::now());
                if i == 0 {
                    assert!(asm.knows(&job));
                    assert!(asm.expect_digest(job, signed));
                }
            }
            match (ok, last) {
                (true, Outcome::Complete(c)) => assert_eq!(c.sha256, signed),
                (false, Outcome::Failed(f)) => {
                    assert_eq!(f.category, ErrorCategory::Integrity);
                    assert!(f.message.contains("signed digest"), "{}", f.message);
                }
                (_, other) => panic!("signed digest ok={ok}: {other:?}"),
            }
            assert!(asm.knows(&job), "a finished job stays known");
            assert!(!asm.expect_digest(job, signed));
        }
    }

    #[test]
    fn duplicate_start_after_completion_is_ignored() {
        let job = JobId::new();
        let recs = records(job, b"hello", 2);
        let mut asm = Assembler::new(Limits::default());
        let mut completed = 0;
        for (i, r) in recs.iter().chain(recs.iter()).enumerate() {
            let (f, p) = decode(r).unwrap();
            if let Outcome::Complete(_) = asm.accept(f, p, i as i64, Instant::now()) {
                completed += 1;
            }
        }
        assert_eq!(completed, 1);
    }
}
