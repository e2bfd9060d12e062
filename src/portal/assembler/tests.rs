use super::*;
use crate::portal::pipe::PipeState;
use crate::protocol::chunker::Chunker;
use crate::protocol::digest::DigestKind;
use crate::protocol::wire::{decode, encode, encode_in};
use proptest::prelude::*;
use std::sync::Arc;

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
            digest: DigestKind::Sha256,
        }),
    }
}

/// Every record of one job, encoded as it would travel.
fn records(job: JobId, body: &[u8], chunk: usize) -> Vec<Vec<u8>> {
    records_in(DigestKind::Sha256, job, body, chunk)
}

/// Every record of one job whose bodies have `digest`.
fn records_in(digest: DigestKind, job: JobId, body: &[u8], chunk: usize) -> Vec<Vec<u8>> {
    let mut first = start(job, Some(body.len() as u64));
    if let Body::RequestStart(s) = &mut first.body {
        s.digest = digest;
    }
    let mut out = vec![encode_in(digest, &first, &[])];
    let mut c = Chunker::new(job, 1, digest);
    for piece in body.chunks(chunk.max(1)) {
        let ch = c.chunk(piece.to_vec());
        out.push(encode_in(digest, &ch.frame, &ch.payload));
    }
    out.push(encode_in(digest, &c.finish(), &[]));
    out
}

#[test]
fn a_blake3_job_is_checked_with_blake3_in_memory_and_from_the_spool() {
    let body: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    for threshold in [0, 1024 * 1024] {
        // In order, and with the last two chunks swapped (digested from the spool).
        for swap in [false, true] {
            let job = JobId::new();
            let mut recs = records_in(DigestKind::Blake3, job, &body, 1000);
            assert!(recs.iter().all(|r| r[4] == 2), "every record in version 2");
            if swap {
                recs.swap(4, 5);
            }
            let mut asm = Assembler::new(limits(threshold));
            let last = feed(&mut asm, &recs);
            let Outcome::Complete(mut c) = last else {
                panic!("threshold {threshold} swap {swap}: {last:?}");
            };
            assert_eq!(c.start.digest, DigestKind::Blake3);
            assert_eq!(c.digest, DigestKind::Blake3.of(&body));
            assert_eq!(body_bytes(&mut c.body), body);
        }
    }
    // The same job closed by the body's SHA-256, right as it is, fails:
    // a job has one digest, its start record's.
    let job = JobId::new();
    let mut recs = records_in(DigestKind::Blake3, job, &body, 1000);
    let last = recs.len() - 1;
    let (mut end, _) = decode(&recs[last]).unwrap();
    if let Body::End(e) = &mut end.body {
        e.digest = DigestKind::Sha256.of(&body);
    }
    recs[last] = encode_in(DigestKind::Blake3, &end, &[]);
    let f = failure(feed(&mut Assembler::new(limits(0)), &recs));
    assert_eq!(f.category, ErrorCategory::Integrity);
    assert!(
        f.message.starts_with("request body BLAKE3 ")
            && f.message.contains("does not match the sender's SHA-256 "),
        "{}",
        f.message
    );
}

fn body_bytes(b: &mut SpooledBody) -> Vec<u8> {
    match b {
        SpooledBody::Empty => vec![],
        SpooledBody::Memory(m) => m.to_vec(),
        SpooledBody::File { file, len, .. } => {
            let mut v = vec![0u8; *len as usize];
            file.file.read_exact_at(&mut v, 0).unwrap();
            v
        }
        SpooledBody::Piped(pipe) => spooled(pipe),
    }
}

/// What a pipelined body's spool file holds so far.
fn spooled(pipe: &Pipe) -> Vec<u8> {
    let mut v = vec![0u8; pipe.file().metadata().unwrap().len() as usize];
    pipe.file().read_exact_at(&mut v, 0).unwrap();
    v
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
                Outcome::Streamed(job) => prop_assert!(false, "job {} was not pipelined", job),
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
        arb_digest_kind(),
    )
        .prop_map(|(body_len, has_body, path, digest)| {
            Body::RequestStart(RequestStart {
                method: "POST".into(),
                path: path.into(),
                headers: vec![],
                body_len: body_len.map(|l| l % 5000),
                has_body,
                reply_topic: "r".into(),
                reply_partition: 0,
                digest,
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
    let end = (0u32..20, 0u64..6000, any::<[u8; 32]>(), arb_digest_kind()).prop_map(
        |(chunks, total_len, bytes, kind)| {
            Body::End(EndInfo {
                chunks,
                total_len,
                digest: Digest { kind, bytes },
            })
        },
    );
    let body = prop_oneof![
        start.prop_map(|b| (b, vec![])),
        chunk,
        end.prop_map(|b| (b, vec![])),
    ];
    (job, 0u32..30, body)
        .prop_map(|(job, seq, (body, payload))| (Frame { job, seq, body }, payload))
}

/// Either digest: a hostile sender mixes start and end records of both.
fn arb_digest_kind() -> impl Strategy<Value = DigestKind> {
    prop::sample::select(vec![DigestKind::Sha256, DigestKind::Blake3])
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
        let budgets = limits.budgets();
        let mut asm = Assembler::with_budgets(limits, budgets.clone());
        for (offset, (frame, payload)) in frames.into_iter().enumerate() {
            // Round trip through the codec as the portal would see it.
            let bytes = encode(&frame, &payload);
            let (frame, payload) = decode(&bytes).unwrap();
            if let Outcome::Complete(mut c) = asm.accept(frame, payload, offset as i64, Instant::now()) {
                let body = body_bytes(&mut c.body);
                prop_assert_eq!(c.body.len(), body.len() as u64);
                // Digested as its start record's version says, whatever
                // the end record claimed.
                prop_assert_eq!(c.start.digest.of(&body), c.digest);
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
    let budgets = lim.budgets();
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
    let budgets = lim.budgets();
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
    let budgets = lim.budgets();
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
    let budgets = lim.budgets();
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
    let budgets = lim.budgets();
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
    let budgets = lim.budgets();
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
    let budgets = lim.budgets();
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
    let budgets = lim.budgets();
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
    let budgets = Limits::default().budgets();
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
    let budgets = lim.budgets();
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
    let mut bad = Chunker::new(mem, 4, DigestKind::Sha256);
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
                digest: DigestKind::Sha256.of(b""),
            },
            "PORTAL_MAX_CHUNKS",
        ),
        (
            EndInfo {
                chunks: 10,
                total_len: 1001,
                digest: DigestKind::Sha256.of(b""),
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
            digest: DigestKind::Sha256,
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
        e.digest.bytes[0] ^= 0xff;
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
    let mut c = Chunker::new(job, 1, DigestKind::Sha256);
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
    let wrong = Digest {
        kind: DigestKind::Sha256,
        bytes: [9; 32],
    };
    for (signed, ok) in [(DigestKind::Sha256.of(&body), true), (wrong, false)] {
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
            (true, Outcome::Complete(c)) => assert_eq!(c.digest, signed),
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

/// Chunk `seq` of `job`, holding `data` at byte `offset`, with a good CRC32C.
fn chunk_at(job: JobId, seq: u32, offset: u64, data: &[u8]) -> (Frame, Vec<u8>) {
    let info = ChunkInfo {
        offset,
        crc32c: crate::protocol::wire::checksum(data),
    };
    let frame = Frame {
        job,
        seq,
        body: Body::Chunk(info),
    };
    (frame, data.to_vec())
}

/// An end record of `job` that claims `total_len` bytes in `chunks` chunks
/// and the SHA-256 of `body`.
fn end_claiming(job: JobId, total_len: u64, chunks: u32, body: &[u8]) -> (Frame, Vec<u8>) {
    let end = EndInfo {
        total_len,
        chunks,
        digest: DigestKind::Sha256.of(body),
    };
    let frame = Frame {
        job,
        seq: chunks + 1,
        body: Body::End(end),
    };
    (frame, vec![])
}

/// Starts `job` without a declared length and feeds it `frames`; the
/// outcome of the last.
fn feed_frames(asm: &mut Assembler, job: JobId, frames: Vec<(Frame, Vec<u8>)>) -> Outcome {
    let mut outcome = asm.accept(start(job, None), &[], 0, Instant::now());
    for (i, (frame, payload)) in frames.into_iter().enumerate() {
        outcome = asm.accept(frame, &payload, i as i64 + 1, Instant::now());
    }
    outcome
}

#[test]
fn an_end_record_that_disagrees_with_the_chunks_fails_with_integrity() {
    let body = b"hello world";
    type Case = fn(JobId) -> Vec<(Frame, Vec<u8>)>;
    let cases: [(Case, &str); 3] = [
        // It claims a byte more than arrived.
        (
            |j| {
                vec![
                    chunk_at(j, 1, 0, b"hello "),
                    chunk_at(j, 2, 6, b"world"),
                    end_claiming(j, 12, 2, b"hello world"),
                ]
            },
            "got 2 chunks and 11 bytes, expected 2 chunks and 12 bytes",
        ),
        // It counts fewer chunks than arrived before it.
        (
            |j| {
                vec![
                    chunk_at(j, 1, 0, b"hello "),
                    chunk_at(j, 2, 6, b"world"),
                    end_claiming(j, 11, 1, b"hello world"),
                ]
            },
            "got 2 chunks and 11 bytes, expected 1 chunks and 11 bytes",
        ),
        // Two chunks on the same bytes add up to the length but leave the
        // second half of the body unwritten.
        (
            |j| {
                vec![
                    chunk_at(j, 1, 0, b"hello"),
                    chunk_at(j, 2, 0, b"HELLO"),
                    end_claiming(j, 10, 2, b"helloworld"),
                ]
            },
            "got 2 chunks and 10 bytes, expected 2 chunks and 10 bytes",
        ),
    ];
    assert_eq!(body.len(), 11);
    for threshold in [0, 1024 * 1024] {
        for (frames, detail) in cases {
            let mut asm = Assembler::new(limits(threshold));
            let job = JobId::new();
            let f = failure(feed_frames(&mut asm, job, frames(job)));
            assert_eq!(f.category, ErrorCategory::Integrity);
            assert_eq!(
                f.message,
                format!("request body does not match its end record: {detail}")
            );
            assert!(asm.is_empty(), "the job is dropped");
        }
    }
}

#[test]
fn a_body_read_back_from_the_spool_must_match_the_senders_digest() {
    type Case = fn(JobId) -> Vec<(Frame, Vec<u8>)>;
    // Each case: its frames, the body the portal holds at the end, and the
    // body whose digest the end record carries.
    let cases: [(Case, &[u8], &[u8]); 2] = [
        // Out of order, then an end record with another body's digest.
        (
            |j| {
                vec![
                    chunk_at(j, 2, 6, b"world"),
                    chunk_at(j, 1, 0, b"hello "),
                    end_claiming(j, 11, 2, b"hello World"),
                ]
            },
            b"hello world",
            b"hello World",
        ),
        // Overlapping chunks that fill the length and the extent while
        // leaving bytes 6 and 7 unwritten: only the digest can tell.
        (
            |j| {
                vec![
                    chunk_at(j, 1, 0, b"0123"),
                    chunk_at(j, 2, 2, b"2345"),
                    chunk_at(j, 3, 8, b"89"),
                    end_claiming(j, 10, 3, b"0123456789"),
                ]
            },
            b"012345\0\089",
            b"0123456789",
        ),
    ];
    let hex = |b: &[u8]| DigestKind::Sha256.of(b).hex();
    for threshold in [0, 1024 * 1024] {
        let mut asm = Assembler::new(limits(threshold));
        for (frames, held, claimed) in cases {
            let job = JobId::new();
            let f = failure(feed_frames(&mut asm, job, frames(job)));
            assert_eq!(f.category, ErrorCategory::Integrity);
            assert_eq!(
                f.message,
                format!(
                    "request body SHA-256 {} does not match the sender's SHA-256 {}",
                    hex(held),
                    hex(claimed)
                )
            );
        }
        // The same chunks out of order, with the right digest, complete.
        let job = JobId::new();
        let frames = vec![
            chunk_at(job, 2, 6, b"world"),
            chunk_at(job, 1, 0, b"hello "),
            end_claiming(job, 11, 2, b"hello world"),
        ];
        match feed_frames(&mut asm, job, frames) {
            Outcome::Complete(mut c) => assert_eq!(body_bytes(&mut c.body), b"hello world"),
            o => panic!("expected the job to complete, got {o:?}"),
        }
        assert!(asm.is_empty());
    }
}

/// Starts `job` with a declared body of `len` bytes and pipelines it; the
/// pipe its call would read.
fn pipelined(asm: &mut Assembler, job: JobId, len: u64) -> Arc<Pipe> {
    assert!(matches!(
        asm.accept(start(job, Some(len)), &[], 7, Instant::now()),
        Outcome::Pending
    ));
    let Some(CompletedJob {
        body: SpooledBody::Piped(pipe),
        first_offset: 7,
        ..
    }) = asm.pipeline(job)
    else {
        panic!("job {job} was not pipelined");
    };
    pipe
}

#[test]
fn a_pipelined_body_publishes_its_prefix_and_then_its_verdict() {
    let mut asm = Assembler::new(limits(100));
    let job = JobId::new();
    let body = pattern_body(1000);
    let pipe = pipelined(&mut asm, job, 1000);
    assert_eq!(pipe.state(), PipeState::Receiving(0));
    assert!(asm.pipeline(job).is_none(), "a job is pipelined once");
    let pieces: Vec<&[u8]> = body.chunks(300).collect();
    let mut offset = 0u64;
    for (i, piece) in pieces.iter().enumerate() {
        let (f, p) = chunk_at(job, i as u32 + 1, offset, piece);
        assert!(matches!(
            asm.accept(f, &p, 8 + i as i64, Instant::now()),
            Outcome::Pending
        ));
        offset += piece.len() as u64;
        assert_eq!(pipe.state(), PipeState::Receiving(offset));
        assert_eq!(&spooled(&pipe)[..offset as usize], &body[..offset as usize]);
    }
    let (end, _) = end_claiming(job, 1000, pieces.len() as u32, &body);
    match asm.accept(end, &[], 20, Instant::now()) {
        Outcome::Streamed(j) => assert_eq!(j, job),
        other => panic!("expected Streamed, got {other:?}"),
    }
    assert_eq!(pipe.state(), PipeState::Verified);
    assert_eq!(spooled(&pipe), body);
    assert!(asm.is_empty());
}

#[test]
fn a_pipelined_body_with_a_wrong_digest_fails_through_its_pipe() {
    let mut asm = Assembler::new(limits(100));
    let job = JobId::new();
    let body = pattern_body(500);
    let pipe = pipelined(&mut asm, job, 500);
    let (f, p) = chunk_at(job, 1, 0, &body);
    asm.accept(f, &p, 8, Instant::now());
    let (end, _) = end_claiming(job, 500, 1, b"another body");
    let failed = failure(asm.accept(end, &[], 9, Instant::now()));
    assert_eq!(failed.category, ErrorCategory::Integrity);
    assert!(
        failed.pipelined,
        "the call's task answers, not an error reply"
    );
    match pipe.state() {
        PipeState::Failed(f) => {
            assert_eq!(f.category, ErrorCategory::Integrity);
            assert!(f.message.contains("SHA-256"), "{}", f.message);
        }
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[test]
fn a_pipelined_body_refuses_chunks_over_bytes_already_published() {
    let mut asm = Assembler::new(limits(100));
    let job = JobId::new();
    let body = pattern_body(600);
    let pipe = pipelined(&mut asm, job, 600);
    let (f, p) = chunk_at(job, 1, 0, &body[..300]);
    asm.accept(f, &p, 8, Instant::now());
    // Another chunk number over the same bytes, with other contents.
    let (f, p) = chunk_at(job, 2, 200, &pattern_body(300));
    let failed = failure(asm.accept(f, &p, 9, Instant::now()));
    assert_eq!(failed.category, ErrorCategory::Integrity);
    assert!(failed.message.contains("overlaps"), "{}", failed.message);
    assert!(matches!(pipe.state(), PipeState::Failed(_)));
    assert_eq!(
        &spooled(&pipe)[..300],
        &body[..300],
        "published bytes unchanged"
    );
}

#[test]
fn chunks_out_of_order_are_published_once_the_gap_fills() {
    let mut asm = Assembler::new(limits(100));
    let job = JobId::new();
    let body = pattern_body(900);
    let pipe = pipelined(&mut asm, job, 900);
    // Chunk 3 waits for chunk 2; then both are published.
    for (seq, at, published) in [(1u32, 0usize, 300u64), (3, 600, 300), (2, 300, 900)] {
        let (f, p) = chunk_at(job, seq, at as u64, &body[at..at + 300]);
        asm.accept(f, &p, 8 + i64::from(seq), Instant::now());
        assert_eq!(
            pipe.state(),
            PipeState::Receiving(published),
            "after chunk {seq}"
        );
    }
    // A duplicate is still only a duplicate.
    let (f, p) = chunk_at(job, 2, 300, &body[300..600]);
    assert!(matches!(
        asm.accept(f, &p, 12, Instant::now()),
        Outcome::Ignored(_)
    ));
    let (end, _) = end_claiming(job, 900, 3, &body);
    assert!(matches!(
        asm.accept(end, &[], 13, Instant::now()),
        Outcome::Streamed(_)
    ));
    assert_eq!(spooled(&pipe), body);
}

#[test]
fn a_pipelined_job_dropped_or_expired_says_so_through_its_pipe() {
    let mut asm = Assembler::new(Limits {
        idle_timeout: Duration::from_secs(5),
        ..limits(100)
    });
    let t0 = Instant::now();
    let (a, b) = (JobId::new(), JobId::new());
    let pipe_a = pipelined(&mut asm, a, 1000);
    let pipe_b = pipelined(&mut asm, b, 1000);
    let (f, p) = chunk_at(b, 1, 0, &pattern_body(10));
    asm.accept(f, &p, 8, t0 + Duration::from_secs(4));
    let expired = asm.expire(t0 + Duration::from_secs(6));
    assert_eq!(expired.len(), 1);
    assert!(expired[0].pipelined);
    assert!(
        matches!(pipe_a.state(), PipeState::Failed(f) if f.message.contains("PORTAL_JOB_IDLE_TIMEOUT_SECS"))
    );
    assert_eq!(pipe_b.state(), PipeState::Receiving(10));
    // The reader lets its jobs go (a rebalance): the call must stop, unanswered.
    drop(asm);
    assert_eq!(pipe_b.state(), PipeState::Gone);
}

#[test]
fn only_jobs_bound_for_a_spool_file_are_pipelined() {
    let mut asm = Assembler::new(limits(1000));
    for declared in [None, Some(0), Some(1000)] {
        let job = JobId::new();
        asm.accept(start(job, declared), &[], 1, Instant::now());
        assert!(asm.pipeline(job).is_none(), "declared {declared:?}");
    }
    // Nor one whose chunks came before the call could start.
    let job = JobId::new();
    asm.accept(start(job, Some(5000)), &[], 2, Instant::now());
    let (f, p) = chunk_at(job, 1, 0, &pattern_body(10));
    asm.accept(f, &p, 3, Instant::now());
    assert!(asm.pipeline(job).is_none());
    assert!(asm.pipeline(JobId::new()).is_none(), "an unknown job");
}

/// A sealed job as its sender writes it and this portal opens it: the
/// opened start frame, the job's keys (the portal's copy), and the sealed
/// chunk and end record values.
struct SealedJob {
    start: Frame,
    keys: Arc<JobKeys>,
    sender: JobKeys,
    recs: Vec<Vec<u8>>,
}

fn sealed_job(job: JobId, body: &[u8], chunk: usize) -> SealedJob {
    use crate::protocol::seal::{seal_start, Keyring, SecretKey};
    let portal = SecretKey::generate();
    let Body::RequestStart(mut clear) = start(job, Some(body.len() as u64)).body else {
        unreachable!()
    };
    clear.digest = DigestKind::Blake3;
    let (value, _secret, sender) =
        seal_start(portal.public(), job, &clear, vec![], "requests", 3).unwrap();
    let keyring = Keyring::new(vec![portal]).unwrap();
    let (frame, payload) = decode(&value).unwrap();
    let opened = keyring
        .open_start(&value, &frame, payload, "requests", 3)
        .unwrap();
    assert_eq!(opened.start, clear);
    let mut c = Chunker::new(job, 1, DigestKind::Blake3);
    let mut recs = Vec::new();
    for piece in body.chunks(chunk) {
        let ch = c.chunk(piece.to_vec());
        recs.push(
            sender
                .request
                .seal_clear(&ch.frame, &ch.payload, vec![], &[]),
        );
    }
    recs.push(sender.request.seal_clear(&c.finish(), &[], vec![], &[]));
    SealedJob {
        start: Frame {
            job,
            seq: 0,
            body: Body::RequestStart(opened.start),
        },
        keys: Arc::new(opened.keys),
        sender,
        recs,
    }
}

/// Feeds a sealed job's opened start, then `recs` as records read whole.
fn feed_sealed(asm: &mut Assembler, s: &SealedJob, recs: &[Vec<u8>]) -> Outcome {
    let mut outcome = asm.accept_with(
        s.start.clone(),
        &[],
        0,
        Instant::now(),
        Some(Arc::clone(&s.keys)),
    );
    for (i, r) in recs.iter().enumerate() {
        let (f, p) = decode(r).unwrap();
        outcome = asm.accept_record(r, f, p, i as i64 + 1, Instant::now());
        if !matches!(outcome, Outcome::Pending | Outcome::Ignored(_)) {
            break;
        }
    }
    outcome
}

#[test]
fn a_sealed_job_opens_chunk_by_chunk_in_memory_and_from_the_spool() {
    let body = pattern_body(5000);
    for threshold in [0, 1024 * 1024] {
        for swap in [false, true] {
            let job = JobId::new();
            let s = sealed_job(job, &body, 1000);
            let mut recs = s.recs.clone();
            assert!(recs.iter().all(|r| r[4] == 3), "every record in version 3");
            if swap {
                recs.swap(2, 3);
            }
            let mut asm = Assembler::new(limits(threshold));
            let last = feed_sealed(&mut asm, &s, &recs);
            let Outcome::Complete(mut c) = last else {
                panic!("threshold {threshold} swap {swap}: {last:?}");
            };
            assert!(c.sealed.is_some(), "the answer is to be sealed");
            assert_eq!(c.digest, DigestKind::Blake3.of(&body));
            assert_eq!(body_bytes(&mut c.body), body);
        }
    }
}

#[test]
fn a_sealed_chunk_produced_again_is_a_duplicate() {
    let body = pattern_body(300);
    let job = JobId::new();
    let s = sealed_job(job, &body, 100);
    let mut asm = Assembler::new(Limits::default());
    assert!(matches!(
        feed_sealed(&mut asm, &s, &s.recs[..1]),
        Outcome::Pending
    ));
    // The same chunk sealed again (a retry, `send --resume`): another nonce,
    // the same bytes.
    let again = s.sender.request.seal_clear(
        &Frame {
            job,
            seq: 1,
            body: Body::Chunk(ChunkInfo {
                offset: 0,
                crc32c: crate::protocol::wire::checksum(&body[..100]),
            }),
        },
        &body[..100],
        vec![],
        &[],
    );
    assert_ne!(again, s.recs[0]);
    let (f, p) = decode(&again).unwrap();
    let o = asm.accept_record(&again, f, p, 5, Instant::now());
    assert!(matches!(o, Outcome::Ignored("duplicate chunk")), "{o:?}");
    let (f, p) = decode(&s.recs[0]).unwrap();
    let o = asm.accept_record(&s.recs[0], f, p, 6, Instant::now());
    assert!(matches!(o, Outcome::Ignored("duplicate chunk")), "{o:?}");
}

#[test]
fn a_sealed_chunk_moved_from_another_job_or_altered_fails_with_integrity() {
    let body = pattern_body(300);
    let a = sealed_job(JobId::new(), &body, 100);
    let b = sealed_job(JobId::new(), &body, 100);
    // B's first chunk relabelled as A's: the same bytes, the same place.
    let (mut f, p) = decode(&b.recs[0]).unwrap();
    f.job = a.start.job;
    let moved = encode_in(DigestKind::Blake3, &f, p);
    let f = failure(feed_sealed(
        &mut Assembler::new(Limits::default()),
        &a,
        &[moved],
    ));
    assert_eq!(f.category, ErrorCategory::Integrity);
    assert!(f.message.contains("did not open"), "{}", f.message);
    assert!(f.sealed.is_some(), "the error is sealed to the sender");
    // One bit of a chunk's ciphertext flipped.
    let mut altered = a.recs[1].clone();
    let at = altered.len() - 20;
    altered[at] ^= 1;
    let f = failure(feed_sealed(
        &mut Assembler::new(Limits::default()),
        &a,
        &[a.recs[0].clone(), altered],
    ));
    assert_eq!(f.category, ErrorCategory::Integrity);
    // Chunk 2 presented as chunk 3 (a reordering the seal binds).
    let (mut f2, p2) = decode(&a.recs[1]).unwrap();
    f2.seq = 3;
    let renumbered = encode_in(DigestKind::Blake3, &f2, p2);
    let f = failure(feed_sealed(
        &mut Assembler::new(Limits::default()),
        &a,
        &[renumbered],
    ));
    assert_eq!(f.category, ErrorCategory::Integrity);
}

#[test]
fn a_truncated_sealed_job_never_completes() {
    let body = pattern_body(300);
    let s = sealed_job(JobId::new(), &body, 100);
    // Chunk 3 left out: the end record (sealed, so its counts cannot be
    // lowered) waits for it, and the job expires rather than completing.
    let recs = [s.recs[0].clone(), s.recs[1].clone(), s.recs[3].clone()];
    let mut asm = Assembler::new(Limits::default());
    assert!(matches!(feed_sealed(&mut asm, &s, &recs), Outcome::Pending));
    let (mut f, p) = decode(&s.recs[3]).unwrap();
    if let Body::SealedEnd(e) = &mut f.body {
        e.chunks = 2;
        e.total_len = 200;
    }
    let shortened = encode_in(DigestKind::Blake3, &f, p);
    let fresh = &mut Assembler::new(Limits::default());
    let failed = failure(feed_sealed(
        fresh,
        &s,
        &[s.recs[0].clone(), s.recs[1].clone(), shortened],
    ));
    assert_eq!(failed.category, ErrorCategory::Integrity);
}

#[test]
fn clear_and_sealed_records_do_not_mix_in_one_job() {
    let body = pattern_body(300);
    let job = JobId::new();
    let s = sealed_job(job, &body, 100);
    // A clear chunk in a sealed job.
    let clear = records_in(DigestKind::Blake3, job, &body, 100);
    let mut asm = Assembler::new(Limits::default());
    assert!(matches!(feed_sealed(&mut asm, &s, &[]), Outcome::Pending));
    let (f, p) = decode(&clear[1]).unwrap();
    let failed = failure(asm.accept_record(&clear[1], f, p, 1, Instant::now()));
    assert_eq!(failed.category, ErrorCategory::BadRequest);
    assert!(failed.message.contains("clear chunk"), "{}", failed.message);
    // A sealed chunk in a clear job.
    let mut asm = Assembler::new(Limits::default());
    let (f, p) = decode(&clear[0]).unwrap();
    assert!(matches!(
        asm.accept_record(&clear[0], f, p, 0, Instant::now()),
        Outcome::Pending
    ));
    let (f, p) = decode(&s.recs[0]).unwrap();
    let failed = failure(asm.accept_record(&s.recs[0], f, p, 1, Instant::now()));
    assert_eq!(failed.category, ErrorCategory::BadRequest);
    assert!(failed.sealed.is_none());
    // A sealed chunk of a job not started here: a stray, then ignored.
    let mut asm = Assembler::new(Limits::default());
    let (f, p) = decode(&s.recs[0]).unwrap();
    assert!(matches!(
        asm.accept_record(&s.recs[0], f, p, 0, Instant::now()),
        Outcome::Stray(_)
    ));
    let (f, p) = decode(&s.recs[1]).unwrap();
    assert!(matches!(
        asm.accept_record(&s.recs[1], f, p, 1, Instant::now()),
        Outcome::Ignored(_)
    ));
}

#[test]
fn a_repeated_sealed_start_is_a_duplicate_and_a_refused_start_keeps_the_keys() {
    let body = pattern_body(300);
    let s = sealed_job(JobId::new(), &body, 100);
    let mut asm = Assembler::new(Limits::default());
    assert!(matches!(feed_sealed(&mut asm, &s, &[]), Outcome::Pending));
    let o = asm.accept_with(
        s.start.clone(),
        &[],
        9,
        Instant::now(),
        Some(Arc::clone(&s.keys)),
    );
    assert!(
        matches!(o, Outcome::Ignored("duplicate start record")),
        "{o:?}"
    );
    // Refused at its start (over the body limit): the refusal is sealed.
    let mut asm = Assembler::new(Limits {
        max_body_bytes: 10,
        ..Limits::default()
    });
    let f = failure(feed_sealed(&mut asm, &s, &[]));
    assert_eq!(f.category, ErrorCategory::Rejected);
    assert!(f.sealed.is_some());
}

#[test]
fn a_differing_repeat_of_a_sealed_start_is_ignored_and_the_job_goes_on() {
    let body = pattern_body(300);
    let job = JobId::new();
    let s = sealed_job(job, &body, 100);
    let mut asm = Assembler::new(Limits::default());
    assert!(matches!(feed_sealed(&mut asm, &s, &[]), Outcome::Pending));
    // A clear start of the same job, and a sealed one that opened (anyone
    // can seal to the portal's key) to other content.
    let clear = start(job, Some(999));
    let Body::RequestStart(mut other) = s.start.body.clone() else {
        unreachable!()
    };
    other.path = "/elsewhere".into();
    let forged = Frame {
        job,
        seq: 0,
        body: Body::RequestStart(other),
    };
    let other_keys = sealed_job(job, &body, 100).keys;
    for (frame, keys) in [(clear, None), (forged, Some(other_keys))] {
        let o = asm.accept_with(frame, &[], 7, Instant::now(), keys);
        assert!(matches!(o, Outcome::Ignored(_)), "{o:?}");
    }
    // An identical repeat is a duplicate, as before.
    let o = asm.accept_with(
        s.start.clone(),
        &[],
        8,
        Instant::now(),
        Some(Arc::clone(&s.keys)),
    );
    assert!(
        matches!(o, Outcome::Ignored("duplicate start record")),
        "{o:?}"
    );
    // The genuine job completes.
    let mut last = Outcome::Pending;
    for (i, r) in s.recs.iter().enumerate() {
        let (f, p) = decode(r).unwrap();
        last = asm.accept_record(r, f, p, i as i64 + 1, Instant::now());
    }
    let Outcome::Complete(mut c) = last else {
        panic!("{last:?}");
    };
    assert_eq!(body_bytes(&mut c.body), body);
}
