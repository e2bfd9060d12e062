//! Reassembles requests from their frames, many jobs interleaved on one
//! partition, tolerating duplicated and reordered chunks.
//!
//! Memory per job is bounded: a body stays in memory up to the spool
//! threshold and moves to an unlinked temporary file beyond it, so the file
//! disappears with the job whatever happens. A job completes only when every
//! chunk has arrived and the body's SHA-256 matches the `End` frame, so the
//! target API never receives a body whose digest does not match.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::wire::{Body, ChunkInfo, EndInfo, ErrorCategory, Frame, JobId, RequestStart};

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
        }
    }
}

/// A request body, complete and verified.
#[derive(Debug)]
pub enum SpooledBody {
    /// No body.
    Empty,
    /// A small body held in memory.
    Memory(bytes::Bytes),
    /// A large body in an unlinked temporary file.
    File {
        /// The spool file, already unlinked from its directory; shared so
        /// every attempt at the call reads it independently.
        file: std::sync::Arc<File>,
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
    /// The record was not used (a duplicate, or part of an unknown or finished job).
    Ignored(&'static str),
}

enum Spool {
    Memory(Vec<u8>),
    File(File),
}

struct Assembly {
    start: RequestStart,
    first_offset: i64,
    last_activity: Instant,
    spool: Spool,
    seen: HashSet<u32>,
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
    jobs: HashMap<JobId, Assembly>,
    finished: RecentJobs,
}

impl std::fmt::Debug for Assembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assembler")
            .field("jobs", &self.jobs.len())
            .finish_non_exhaustive()
    }
}

impl Assembler {
    /// An assembler with the given limits.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            jobs: HashMap::new(),
            finished: RecentJobs::new(16 * 1024),
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
            Body::ResponseStart(_) | Body::Error(_) => {
                Outcome::Ignored("response frame on the request topic")
            }
        }
    }

    fn start(&mut self, job: JobId, start: RequestStart, offset: i64, now: Instant) -> Outcome {
        if self.jobs.contains_key(&job) {
            return Outcome::Ignored("duplicate start record");
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
        self.jobs.insert(
            job,
            Assembly {
                start,
                first_offset: offset,
                last_activity: now,
                spool: Spool::Memory(Vec::new()),
                seen: HashSet::new(),
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
            return Outcome::Ignored("chunk of an unknown job");
        };
        if a.seen.contains(&seq) {
            return Outcome::Ignored("duplicate chunk");
        }
        a.last_activity = now;
        if payload.is_empty() || seq == 0 {
            let msg = format!("chunk {seq} is empty or numbered as a start record");
            return self.fail(job, ErrorCategory::BadRequest, msg);
        }
        if a.seen.len() >= self.limits.max_chunks {
            let msg = format!(
                "request body has more than {} chunks; use a larger chunk size",
                self.limits.max_chunks
            );
            return self.fail(job, ErrorCategory::Rejected, msg);
        }
        if crate::wire::checksum(payload) != info.crc32c {
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
        if let Err(e) = write_at(
            &mut a.spool,
            info.offset,
            payload,
            self.limits.spool_threshold,
            &self.limits.spool_dir,
        ) {
            let msg = format!("cannot spool the request body: {e}");
            return self.fail(job, ErrorCategory::Internal, msg);
        }
        a.seen.insert(seq);
        a.received += payload.len() as u64;
        a.extent = a.extent.max(end_at);
        if a.in_order && info.offset == a.hashed {
            a.hasher.update(payload);
            a.hashed = end_at;
        } else {
            a.in_order = false;
        }
        self.try_complete(job)
    }

    fn end(&mut self, job: JobId, end: EndInfo, now: Instant) -> Outcome {
        let Some(a) = self.jobs.get_mut(&job) else {
            return Outcome::Ignored("end of an unknown job");
        };
        if a.end.is_some() {
            return Outcome::Ignored("duplicate end record");
        }
        a.last_activity = now;
        a.end = Some(end);
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
                    crate::chunker::hex(&digest),
                    crate::chunker::hex(&end.sha256)
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
                    crate::chunker::hex(&digest),
                    crate::chunker::hex(&signed)
                ),
            ));
        }
        let body = match a.spool {
            Spool::Memory(v) => SpooledBody::Memory(bytes::Bytes::from(v)),
            Spool::File(file) => SpooledBody::File {
                file: std::sync::Arc::new(file),
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

    fn fail(&mut self, job: JobId, category: ErrorCategory, message: String) -> Outcome {
        self.finished.insert(job);
        match self.jobs.remove(&job) {
            Some(a) => Outcome::Failed(failed(job, &a, category, message)),
            None => Outcome::Ignored("unknown job"),
        }
    }

    /// Whether `job` is assembling or recently finished, so that any record
    /// of it, a start record included, would be ignored or added to it.
    pub fn knows(&self, job: JobId) -> bool {
        self.jobs.contains_key(&job) || self.finished.contains(&job)
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
        let stale: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, a)| now.saturating_duration_since(a.last_activity) > idle)
            .map(|(j, _)| *j)
            .collect();
        stale
            .into_iter()
            .filter_map(|job| {
                let msg = format!(
                    "no record of this request arrived for {} s (PORTAL_JOB_IDLE_TIMEOUT_SECS); the job was dropped",
                    idle.as_secs()
                );
                match self.fail(job, ErrorCategory::BadRequest, msg) {
                    Outcome::Failed(f) => Some(f),
                    _ => None,
                }
            })
            .collect()
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

fn write_at(
    spool: &mut Spool,
    offset: u64,
    data: &[u8],
    threshold: usize,
    dir: &Option<PathBuf>,
) -> std::io::Result<()> {
    let end = offset as usize + data.len();
    if let Spool::Memory(buf) = spool {
        if end <= threshold {
            if buf.len() < end {
                buf.resize(end, 0);
            }
            buf[offset as usize..end].copy_from_slice(data);
            return Ok(());
        }
        let mut file = match dir {
            Some(d) => tempfile::tempfile_in(d)?,
            None => tempfile::tempfile()?,
        };
        file.write_all(buf)?;
        *spool = Spool::File(file);
    }
    match spool {
        Spool::File(file) => file.write_all_at(data, offset),
        Spool::Memory(_) => Ok(()),
    }
}

fn digest_spool(spool: &mut Spool, len: u64) -> std::io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    match spool {
        Spool::Memory(buf) => hasher.update(&buf[..len as usize]),
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
    use crate::chunker::Chunker;
    use crate::wire::{decode, encode};
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
            SpooledBody::File { file, len } => {
                use std::os::unix::fs::FileExt;
                let mut v = vec![0u8; *len as usize];
                file.read_exact_at(&mut v, 0).unwrap();
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
                    Outcome::Pending | Outcome::Ignored(_) => {}
                }
            }
            prop_assert!(asm.is_empty());
            for (job, body) in jobs.iter().zip(&bodies) {
                prop_assert_eq!(done.get(job), Some(body));
            }
        }
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
            assert!(!asm.knows(job));
            let mut last = Outcome::Pending;
            for (i, r) in records(job, &body, 4).iter().enumerate() {
                let (f, p) = decode(r).unwrap();
                last = asm.accept(f, p, i as i64, Instant::now());
                if i == 0 {
                    assert!(asm.knows(job));
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
            assert!(asm.knows(job), "a finished job stays known");
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
