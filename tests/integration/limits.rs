//! What all jobs together may take from a portal: memory, disk, header sizes.

use std::time::Duration;

use kafkasend::kafka;
use kafkasend::protocol::wire::{self, Body, EndInfo, Frame, JobId};
use kafkasend::protocol::ErrorCategory;

use crate::support::api::Servers;
use crate::support::broker::{
    assert_committed_to_end, chunk_record, error_replies, kafka_settings, post_start, Topics,
};
use crate::support::payload::{pattern, pattern_file, sha256_hex};
use crate::support::run::{admin_addr, get, kafkasend, open_files_under, sample, send, Portal};
use crate::support::{wait_until, WAIT};

const MIB: u64 = 1024 * 1024;

/// Resident memory of process `pid`, in bytes (`VmRSS` of /proc/PID/status).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status:\n{status}"));
    kib * 1024
}

/// Waits (bounded) until every job of `jobs` has an error reply, and returns
/// the replies of those jobs.
async fn replies_for(
    topics: &Topics,
    jobs: &[JobId],
    portal: &Portal,
) -> Vec<(JobId, ErrorCategory, String)> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut errors = error_replies(topics).await;
        if jobs.iter().all(|j| errors.contains_key(j)) {
            return jobs
                .iter()
                .filter_map(|j| errors.remove(j).map(|(c, m)| (*j, c, m)))
                .collect();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} jobs got an error reply; portal log:\n{}",
            jobs.iter().filter(|j| errors.contains_key(j)).count(),
            jobs.len(),
            portal.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The hostile flood of issue 11: 768 start records, each followed by one
/// 1-byte chunk at offset 1 MiB - 1, held until the idle timeout. Such a
/// chunk once made the portal allocate the 1 MiB in front of it, 768 MiB in
/// all; now memory follows the bytes received and a chunk past a gap goes to
/// the job's (sparse) spool file.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_sparse_chunks_keeps_the_portal_small() {
    let servers = Servers::start().await;
    let topics = Topics::new("sparse");
    let spool = tempfile::tempdir().unwrap();
    let mut env = servers.plain_env();
    // 256 jobs on each of the 3 partitions, and room for a real request on
    // whichever partition it lands.
    env.push(("PORTAL_MAX_ASSEMBLING_JOBS", "300".into()));
    // Long enough to measure while the jobs are held on a loaded machine.
    env.push(("PORTAL_JOB_IDLE_TIMEOUT_SECS", "20".into()));
    env.push(("PORTAL_SPOOL_DIR", spool.path().to_str().unwrap().into()));
    let mut portal = Portal::start(&topics, &env);
    let pid = portal.pid();
    let idle_rss = rss_bytes(pid);

    let settings = kafka_settings(&topics, "it-sparse");
    let client = kafka::connect(&settings).await.unwrap();
    let mut jobs = Vec::new();
    for p in 0..3 {
        let pc = client.partition(&topics.request, p).await.unwrap();
        let mut batch = Vec::new();
        for _ in 0..256 {
            let job = JobId::new();
            let start = post_start(job, "/upload", None, vec![], &topics.response);
            batch.push(kafka::record(&start, &[], &[]));
            batch.push(chunk_record(job, 1, MIB - 1, b"x", wire::checksum(b"x")));
            jobs.push(job);
        }
        pc.produce_all(batch).await.unwrap();
    }
    let wanted = jobs.len();
    wait_until("the portal holds every flood job", || {
        portal.log().matches("receiving a request").count() >= wanted
    })
    .await;
    // Each chunk is taken (or the job failed) before the reader moves on.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held_rss = rss_bytes(pid);
    eprintln!(
        "portal RSS: {} KiB idle, {} KiB holding {wanted} sparse jobs",
        idle_rss / 1024,
        held_rss / 1024
    );
    assert!(
        held_rss < 64 * MIB,
        "the portal holds {} KiB for {wanted} one-byte chunks (idle: {} KiB)",
        held_rss / 1024,
        idle_rss / 1024
    );
    assert!(
        error_replies(&topics).await.is_empty(),
        "the flood jobs are held, not refused"
    );
    assert_eq!(
        open_files_under(pid, spool.path()),
        wanted,
        "a chunk past a gap goes to the job's spool file"
    );

    // A real request is served meanwhile.
    let dir = tempfile::tempdir().unwrap();
    let (file, digest) = pattern_file(dir.path(), "body", 1, 300_000);
    let out = send(
        &topics,
        &[file.to_str().unwrap(), "--endpoint", "/api/upload"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let reqs = servers.state.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].body_sha256, digest);

    // The flood jobs are dropped when idle, each client told, every spool
    // file let go.
    for (job, category, message) in replies_for(&topics, &jobs, &portal).await {
        assert_eq!(category, ErrorCategory::BadRequest, "job {job}: {message}");
        assert!(
            message.contains("PORTAL_JOB_IDLE_TIMEOUT_SECS"),
            "job {job}: {message}"
        );
    }
    wait_until("the spool files are let go", || {
        open_files_under(pid, spool.path()) == 0
    })
    .await;
    portal.signal("TERM");
    assert_eq!(portal.wait_exit().await, Some(0), "{}", portal.log());
    assert_committed_to_end(&topics);
}

/// The portal's memory and spool gauges, from its admin listener.
async fn budgets_in_use(addr: &str) -> (f64, f64) {
    let (status, metrics) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{metrics}");
    let read = |name| sample(&metrics, name).unwrap_or_else(|| panic!("no {name} in:\n{metrics}"));
    (
        read("kafkasend_assembly_memory_bytes"),
        read("kafkasend_spool_bytes"),
    )
}

/// With 1 MiB of memory and 1 MiB of spool, bodies of 200 000 bytes fill
/// memory (5, all but the 31 KB kept for bookkeeping at 100 chunks a job),
/// then the spool (5), then are refused naming both settings; a small
/// request still fits meanwhile, and everything is given back once the held
/// jobs are answered.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_memory_budget_sends_bodies_to_disk_then_refuses_them() {
    const BODY: usize = 200_000;
    let servers = Servers::start().await;
    let topics = Topics::new("membudget");
    let spool = tempfile::tempdir().unwrap();
    let mut env = servers.plain_env();
    env.push(("PORTAL_MAX_ASSEMBLY_MEMORY_BYTES", MIB.to_string()));
    // 1 MiB cannot hold the chunk table of the default 100000 chunks.
    env.push(("PORTAL_MAX_CHUNKS", "100".into()));
    env.push(("PORTAL_MAX_SPOOL_BYTES", MIB.to_string()));
    env.push(("PORTAL_SPOOL_DIR", spool.path().to_str().unwrap().into()));
    env.push(("PORTAL_ADMIN_LISTEN", "127.0.0.1:0".into()));
    let portal = Portal::start(&topics, &env);
    let pid = portal.pid();
    let admin = admin_addr(&portal.log());

    // One partition, so one reader takes the jobs in order.
    let settings = kafka_settings(&topics, "it-membudget");
    let client = kafka::connect(&settings).await.unwrap();
    let pc = client.partition(&topics.request, 0).await.unwrap();
    let mut jobs = Vec::new();
    for i in 0..14u64 {
        let job = JobId::new();
        let body = pattern(i, BODY);
        let start = post_start(job, "/upload", Some(BODY as u64), vec![], &topics.response);
        let chunk = chunk_record(job, 1, 0, &body, wire::checksum(&body));
        pc.produce_all(vec![kafka::record(&start, &[], &[]), chunk])
            .await
            .unwrap();
        jobs.push((job, body));
    }
    let refused: Vec<JobId> = jobs[10..].iter().map(|(j, _)| *j).collect();
    for (job, category, message) in replies_for(&topics, &refused, &portal).await {
        assert_eq!(category, ErrorCategory::Rejected, "job {job}: {message}");
        for wanted in [
            "PORTAL_MAX_ASSEMBLY_MEMORY_BYTES",
            "PORTAL_MAX_SPOOL_BYTES",
            "retry later",
        ] {
            assert!(message.contains(wanted), "job {job}: {message}");
        }
    }
    assert_eq!(
        error_replies(&topics).await.len(),
        4,
        "the first ten jobs are held"
    );
    assert_eq!(
        open_files_under(pid, spool.path()),
        5,
        "five bodies went to disk"
    );
    let (memory, disk) = budgets_in_use(&admin).await;
    assert!(
        memory > 5.0 * BODY as f64 && memory <= MIB as f64,
        "memory in use: {memory}"
    );
    assert_eq!(disk, 5.0 * 200_704.0, "five bodies of 49 blocks each");

    // Meanwhile a small request still fits, and a large one is refused
    // with a message that says why.
    let dir = tempfile::tempdir().unwrap();
    let (small, _) = pattern_file(dir.path(), "small", 20, 1000);
    let out = send(&topics, &[small.to_str().unwrap(), "--endpoint", "/upload"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let (large, large_digest) = pattern_file(dir.path(), "large", 21, 300_000);
    let large = large.to_str().unwrap();
    let out = send(&topics, &[large, "--endpoint", "/upload"]).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains("PORTAL_MAX_ASSEMBLY_MEMORY_BYTES"),
        "{}",
        out.stderr
    );

    // The held jobs end, and are served, byte for byte.
    for (job, body) in &jobs[..10] {
        let end = Frame {
            job: *job,
            seq: 2,
            body: Body::End(EndInfo {
                chunks: 1,
                total_len: BODY as u64,
                digest: kafkasend::protocol::digest::DigestKind::Sha256.of(body),
            }),
        };
        pc.produce(kafka::record(&end, &[], &[])).await.unwrap();
    }
    wait_until("the API gets the ten held bodies", || {
        servers.state.requests().len() == 11
    })
    .await;
    let seen: Vec<String> = servers
        .state
        .requests()
        .iter()
        .map(|r| r.body_sha256.clone())
        .collect();
    for (job, body) in &jobs[..10] {
        assert!(seen.contains(&sha256_hex(body)), "job {job} never arrived");
    }

    // Both budgets come back in full, and the large request now fits.
    let deadline = tokio::time::Instant::now() + WAIT;
    while budgets_in_use(&admin).await != (0.0, 0.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "budgets still in use: {:?}",
            budgets_in_use(&admin).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(open_files_under(pid, spool.path()), 0);
    let out = send(&topics, &[large, "--endpoint", "/upload"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let reqs = servers.state.requests();
    assert_eq!(
        reqs.last().map(|r| r.body_sha256.as_str()),
        Some(large_digest.as_str())
    );
}

/// A memory budget that cannot hold the chunk table of one job of
/// `PORTAL_MAX_CHUNKS` chunks stops the portal at start, naming the settings
/// and what would do, instead of refusing such jobs with "retry later"
/// forever; with the chunk limit it suggests, the portal starts.
#[test]
fn a_memory_budget_too_small_for_the_chunk_limit_is_a_start_error() {
    let topics = Topics::new("smallmem");
    let env = |chunks: &str| {
        vec![
            ("PORTAL_TARGET_API_URL", "http://127.0.0.1:9".to_string()),
            ("PORTAL_USE_OAUTH", "false".into()),
            ("PORTAL_MAX_ASSEMBLY_MEMORY_BYTES", MIB.to_string()),
            ("PORTAL_MAX_CHUNKS", chunks.into()),
        ]
    };
    let out = kafkasend(&topics)
        .arg("portal")
        .envs(env("100000"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    for wanted in [
        "PORTAL_MAX_ASSEMBLY_MEMORY_BYTES (1048576) is too small for PORTAL_MAX_CHUNKS (100000)",
        "raise PORTAL_MAX_ASSEMBLY_MEMORY_BYTES to at least",
        "lower PORTAL_MAX_CHUNKS to at most ",
    ] {
        assert!(stderr.contains(wanted), "{stderr}");
    }
    let at = stderr.rfind("at most ").unwrap() + "at most ".len();
    let most: String = stderr[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    assert!(most.parse::<u64>().unwrap() > 1000, "{stderr}");
    let _portal = Portal::start(&topics, &env(&most));
}

/// A request over `PORTAL_MAX_HEADER_COUNT` gets the policy's refusal, not
/// a decoding error, up to the setting's largest value, and one within it
/// is served.
#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_headers_reach_the_policy() {
    let servers = Servers::start().await;
    let topics = Topics::new("headers");
    let mut env = servers.plain_env();
    env.push(("PORTAL_MAX_HEADER_COUNT", "9999".into()));
    env.push(("PORTAL_MAX_HEADER_BYTES", "131072".into()));
    let _portal = Portal::start(&topics, &env);
    let headers: Vec<String> = (0..10_000).map(|i| format!("X-H{i}: {i}")).collect();
    let with = |n: usize| {
        // No User-Agent, so the request carries exactly these headers.
        let mut args = vec![
            "--endpoint",
            "/api/items",
            "-A",
            "",
            "-H",
            "X-Request-ID: many",
        ];
        for h in &headers[..n] {
            args.extend(["-H", h.as_str()]);
        }
        args
    };
    let out = send(&topics, &with(10_000 - 1)).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "request has 10000 headers; the portal accepts at most 9999 (PORTAL_MAX_HEADER_COUNT)"
        ),
        "{}",
        out.stderr
    );
    assert!(servers.state.requests().is_empty());

    let out = send(&topics, &with(10_000 - 2)).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let reqs = servers.state.requests();
    assert_eq!(reqs.len(), 1);
    // Only the allowed header of the 9999 reached the API.
    assert_eq!(reqs[0].headers["x-request-id"], "many");
    assert!(reqs[0].headers.get("x-h0").is_none());
}
