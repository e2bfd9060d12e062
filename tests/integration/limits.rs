//! What all jobs together may take from a portal: memory, disk, header sizes.

use std::time::Duration;

use kafkasend::kafka;
use kafkasend::wire::{self, ErrorCategory, JobId};

use crate::common::*;
use crate::policy::{chunk_record, error_replies, open_files_under, post_start};

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
    let limit = Duration::from_secs(30);
    let client = kafka::connect(&settings).await.unwrap();
    let mut jobs = Vec::new();
    for p in 0..3 {
        let pc = kafka::partition(&client, &topics.request, p, limit)
            .await
            .unwrap();
        let mut batch = Vec::new();
        for _ in 0..256 {
            let job = JobId::new();
            let start = post_start(job, "/upload", None, vec![], &topics.response);
            batch.push(kafka::record(&start, &[], &[]));
            batch.push(chunk_record(job, 1, MIB - 1, b"x", wire::checksum(b"x")));
            jobs.push(job);
        }
        kafka::produce_all(&pc, batch, limit).await.unwrap();
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
