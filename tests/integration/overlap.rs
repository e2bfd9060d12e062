//! No overlapping calls: a job whose API call outlives the grace at a
//! rebalance or a shutdown has its call cancelled, connection and all,
//! before its partition goes to the portal that runs it again.

use kafkasend::protocol::wire::{decode, Body, ATTEMPT_HEADER};

use crate::support::broker::{records_in, Topics};
use crate::support::overlap::{OverlapApi, ANSWER};
use crate::support::run::{spawn_send, Portal};
use crate::support::wait_until;

/// A portal's settings for the overlap API, with a 2-second grace.
fn env(api: &OverlapApi) -> Vec<(&'static str, String)> {
    let mut env = api.env();
    env.push(("PORTAL_SHUTDOWN_GRACE_SECS", "2".into()));
    env
}

/// Checks what the API and the client saw of one job run twice: exactly
/// two calls, the first one's connection dropped before the second began,
/// never two at once, one complete answer. Returns the job id.
fn check_one_answer(api: &OverlapApi, code: i32, answer: &[u8], stderr: &str) -> String {
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(answer, ANSWER, "{stderr}");
    let calls = api.state.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls[0].endless && !calls[1].endless, "{calls:?}");
    assert_eq!(calls[0].key, calls[1].key, "{calls:?}");
    let dropped = calls[0]
        .ended
        .unwrap_or_else(|| panic!("the first call was never cancelled: {calls:?}"));
    assert!(
        dropped <= calls[1].began,
        "the second call began before the first was dropped: {calls:?}"
    );
    assert_eq!(api.state.most_at_once(), 1);
    calls[0]
        .key
        .clone()
        .unwrap_or_else(|| panic!("no Idempotency-Key: {calls:?}"))
}

/// Checks the reply records of `job`: the cancelled attempt's records all
/// come before the other's, and only the other one ends.
async fn check_replies(topics: &Topics, job: &str) {
    let mut attempts: Vec<(Vec<u8>, bool)> = Vec::new();
    for p in 0..3 {
        for r in records_in(topics, &topics.response, p).await {
            let (frame, _) = decode(r.value.as_deref().unwrap_or_default()).unwrap();
            if frame.job.to_string() != job {
                continue;
            }
            let attempt = r.headers.get(ATTEMPT_HEADER).cloned().unwrap_or_default();
            attempts.push((attempt, matches!(frame.body, Body::End(_) | Body::Error(_))));
        }
    }
    let first = attempts.first().map(|(a, _)| a.clone()).unwrap_or_default();
    let switch = attempts
        .iter()
        .position(|(a, _)| *a != first)
        .unwrap_or_else(|| panic!("one attempt only: {attempts:?}"));
    assert!(
        attempts[switch..].iter().all(|(a, _)| *a != first),
        "the cancelled attempt wrote records after the job ran again: {attempts:?}"
    );
    let ends: Vec<bool> = attempts.iter().map(|(_, end)| *end).collect();
    assert_eq!(ends.iter().filter(|e| **e).count(), 1, "{attempts:?}");
    assert!(!ends[..switch].iter().any(|e| *e), "{attempts:?}");
}

/// What the portal that cancelled says about it.
fn check_cancel_logged(portal: &Portal, job: &str) {
    let log = portal.log();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains(&format!("job {job}: still running after the 2 s grace"))
            && l.contains("its API call was cancelled")),
        "{log}"
    );
}

/// Sends a job to `/endless` and waits until its first call began; the
/// answer goes to a file: a client switching to another attempt's answer
/// starts the file over, which it cannot do with bytes already on stdout.
async fn send_endless(
    api: &OverlapApi,
    topics: &Topics,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    tokio::task::JoinHandle<crate::support::run::SendResult>,
) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("answer");
    let client = spawn_send(
        topics,
        &["--endpoint", "/endless", "-o", file.to_str().unwrap()],
    );
    wait_until("the first call never came", || {
        !api.state.calls().is_empty()
    })
    .await;
    (dir, file, client)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_outliving_the_grace_at_a_rebalance_is_cancelled_before_the_job_runs_again() {
    let api = OverlapApi::start().await;
    let topics = Topics::new("overlapjoin");
    let mut env = env(&api);
    // A join that revokes every partition: the classic protocol's.
    env.push(("KAFKA_GROUP_PROTOCOL", "classic".into()));
    let a = Portal::start(&topics, &env);
    let (_dir, file, client) = send_endless(&api, &topics).await;
    // The join revokes every partition of portal a; its call cannot finish.
    let b = Portal::start(&topics, &env);
    let out = client.await.unwrap();
    let job = check_one_answer(
        &api,
        out.code,
        &std::fs::read(&file).unwrap_or_default(),
        &out.stderr,
    );
    check_cancel_logged(&a, &job);
    check_replies(&topics, &job).await;
    drop(b);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_outliving_the_grace_at_shutdown_is_cancelled_before_the_portal_exits() {
    let api = OverlapApi::start().await;
    let topics = Topics::new("overlapterm");
    let env = env(&api);
    let mut a = Portal::start(&topics, &env);
    let (_dir, file, client) = send_endless(&api, &topics).await;
    a.signal("TERM");
    assert_eq!(a.wait_exit().await, Some(0), "{}", a.log());
    let calls = api.state.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let job = calls[0].key.clone().unwrap_or_default();
    check_cancel_logged(&a, &job);
    let b = Portal::start(&topics, &env);
    let out = client.await.unwrap();
    assert_eq!(
        check_one_answer(
            &api,
            out.code,
            &std::fs::read(&file).unwrap_or_default(),
            &out.stderr
        ),
        job
    );
    check_replies(&topics, &job).await;
    drop(b);
}
