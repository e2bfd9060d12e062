//! The portal's request policy and hostile records, end to end.

use std::time::Duration;

use kafkasend::kafka::{self, partitioner::partition_for_key, Record};
use kafkasend::protocol::wire::{self, Body, EndInfo, Frame, JobId, ResponseStart};
use kafkasend::protocol::ErrorCategory;

use crate::support::api::Servers;
use crate::support::broker::{
    assert_committed_to_end, chunk_record, error_replies, kafka_settings, post_start, Topics,
};
use crate::support::payload::{pattern, pattern_file};
use crate::support::run::{open_files_under, send, spawn_send, Portal};
use crate::support::{wait_until, WAIT};

fn env_with(
    base: Vec<(&'static str, String)>,
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let mut env = base;
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn the_policy_lets_through_only_what_it_names() {
    let servers = Servers::start().await;
    let topics = Topics::new("policy");
    let portal = Portal::start(
        &topics,
        &env_with(
            servers.plain_env(),
            &[
                (
                    "PORTAL_ALLOWED_ENDPOINTS",
                    "POST /api/upload, GET,DELETE /api/items/*",
                ),
                // Listing them does not let credentials or routing headers through.
                (
                    "PORTAL_ALLOWED_HEADERS",
                    "X-Request-ID,Cookie,Authorization,X-Forwarded-For,X-Real-IP,Proxy-Authorization",
                ),
                ("PORTAL_MAX_HEADER_COUNT", "6"),
            ],
        ),
    );
    let ok = send(
        &topics,
        &[
            "--endpoint",
            "/api/items/7",
            "-H",
            "X-Request-ID: r-1",
            "-H",
            "Cookie: session=stolen",
            "-H",
            "Authorization: Bearer stolen",
            "-H",
            "X-Forwarded-For: 10.0.0.1",
            "-H",
            "X-Real-IP: 10.0.0.2",
            "-H",
            "Proxy-Authorization: Basic c3RvbGVu",
        ],
    )
    .await;
    assert_eq!(ok.code, 0, "stderr: {}", ok.stderr);
    // send does not even write those; another producer might, and the
    // portal must strip them all the same.
    let raw_job = JobId::new();
    let mut raw_start = post_start(
        raw_job,
        "/api/items/8",
        None,
        [
            ("X-Request-ID", "r-2"),
            ("Cookie", "session=stolen"),
            ("Authorization", "Bearer stolen"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("X-Real-IP", "10.0.0.2"),
            ("Proxy-Authorization", "Basic c3RvbGVu"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect(),
        &topics.response,
    );
    if let Body::RequestStart(s) = &mut raw_start.body {
        s.method = "GET".into();
        s.has_body = false;
    }
    let reply = [(
        wire::REPLY_TO_HEADER,
        wire::reply_to_header(&topics.response, 0),
    )];
    let client = kafka::connect(&kafka_settings(&topics, "it-policy"))
        .await
        .unwrap();
    let pc = client.partition(&topics.request, 0).await.unwrap();
    pc.produce(kafka::record(&raw_start, &[], &reply))
        .await
        .unwrap();
    wait_until("the raw request reaches the API", || {
        servers.state.requests().len() == 2
    })
    .await;

    let seven_headers: Vec<String> = (0..7).map(|i| format!("X-H{i}: {i}")).collect();
    let mut too_many = vec!["--endpoint", "/api/items/7"];
    for h in &seven_headers {
        too_many.extend(["-H", h.as_str()]);
    }
    let refused: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--endpoint", "/admin"],
            "not in PORTAL_ALLOWED_ENDPOINTS",
        ),
        (
            vec!["-X", "PUT", "--endpoint", "/api/items/7"],
            "not in PORTAL_ALLOWED_ENDPOINTS",
        ),
        (
            vec!["--endpoint", "/api/items/7/secret"],
            "not in PORTAL_ALLOWED_ENDPOINTS",
        ),
        (
            vec!["--endpoint", "/api/items/%2e%2e/admin"],
            "dot segments",
        ),
        (vec!["--endpoint", "/api/items/7%2Fsecret"], "encoded '/'"),
        (
            vec!["-X", "TRACK", "--endpoint", "/api/items/7"],
            "never forwarded",
        ),
        (
            vec!["--endpoint", "/api/items/%252e%252e"],
            "doubly encoded",
        ),
        (
            vec!["-X", "TRACE", "--endpoint", "/api/items/7"],
            "never forwarded",
        ),
        (too_many, "PORTAL_MAX_HEADER_COUNT"),
    ];
    for (args, why) in &refused {
        let out = send(&topics, args).await;
        assert_eq!(out.code, 3, "{args:?}: stderr {}", out.stderr);
        assert!(out.stderr.contains(why), "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    }

    let reqs = servers.state.requests();
    assert_eq!(reqs.len(), 2, "only the allowed calls reached the API");
    for (r, id) in reqs.iter().zip(["r-1", "r-2"]) {
        let h = &r.headers;
        assert_eq!(h["x-request-id"], id);
        for stripped in [
            "cookie",
            "authorization",
            "x-forwarded-for",
            "x-real-ip",
            "proxy-authorization",
        ] {
            assert!(
                h.get(stripped).is_none(),
                "{stripped} reached the API: {h:?}"
            );
        }
    }
    let log = portal.log();
    assert!(log.contains("allowed endpoints: POST /api/upload, GET,DELETE /api/items/*"));
    assert!(
        log.contains("PORTAL_ALLOWED_HEADERS lists cookie, authorization, x-forwarded-for, x-real-ip, proxy-authorization, which will never be forwarded"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_allow_list_refuses_everything_unless_strict_mode_is_off() {
    let servers = Servers::start().await;
    let topics = Topics::new("strict");
    {
        let portal = Portal::start(
            &topics,
            &env_with(servers.plain_env(), &[("PORTAL_ALLOWED_ENDPOINTS", "")]),
        );
        assert!(
            portal.log().contains("every request will be refused"),
            "{}",
            portal.log()
        );
        let out = send(&topics, &["--endpoint", "/api/items"]).await;
        assert_eq!(out.code, 3, "{}", out.stderr);
        assert!(
            out.stderr.contains("PORTAL_ALLOWED_ENDPOINTS is empty"),
            "{}",
            out.stderr
        );
    }
    // Fresh topics: the killed portal above may not have committed its last answer.
    let topics = Topics::new("lax");
    let portal = Portal::start(
        &topics,
        &env_with(
            servers.plain_env(),
            &[
                ("PORTAL_ALLOWED_ENDPOINTS", "GET /api/items"),
                ("PORTAL_STRICT_SECURITY", "false"),
            ],
        ),
    );
    let out = send(&topics, &["-X", "DELETE", "--endpoint", "/api/other"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    portal
        .wait_for_log(
            "DELETE /api/other let through although it is not in PORTAL_ALLOWED_ENDPOINTS",
        )
        .await;
    // Path safety holds in lax mode too.
    let out = send(&topics, &["--endpoint", "/api/%2e%2e/admin"]).await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert_eq!(servers.state.requests().len(), 1);
}

/// An end record of `job` declaring `chunks` chunks, 4 bytes and a digest
/// no body has.
fn end_record(job: JobId, seq: u32, chunks: u32) -> Record {
    let frame = Frame {
        job,
        seq,
        body: Body::End(EndInfo {
            chunks,
            total_len: 4,
            digest: kafkasend::protocol::digest::Digest {
                kind: kafkasend::protocol::digest::DigestKind::Sha256,
                bytes: [7; 32],
            },
        }),
    };
    kafka::record(&frame, &[], &[])
}

/// What a hostile producer might write, and the error the client named in
/// a reply address should get (none when there is no one to tell).
fn garbage(response_topic: &str) -> Vec<(Record, Option<(JobId, &'static str)>)> {
    let reply = || {
        vec![(
            wire::REPLY_TO_HEADER,
            wire::reply_to_header(response_topic, 0),
        )]
    };
    let raw =
        |key: Option<Vec<u8>>, value: Option<Vec<u8>>, headers: Vec<(&str, Vec<u8>)>| Record {
            key,
            value,
            headers: headers
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            timestamp_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64,
        };
    let start = |job: JobId, path: &str, body_len: Option<u64>, headers| {
        post_start(job, path, body_len, headers, response_topic)
    };
    // The valid start of a 4-byte upload, with nothing to expect of it alone.
    let begin = |job: JobId| {
        (
            kafka::record(&start(job, "/upload", Some(4), vec![]), &[], &[]),
            None,
        )
    };
    let chunk = chunk_record;
    let mut out = Vec::new();
    // Not ours at all.
    out.push((raw(None, Some(pattern(1, 1000)), vec![]), None));
    out.push((raw(Some(b"k".to_vec()), None, vec![]), None));
    out.push((
        raw(Some(b"k".to_vec()), Some(b"KSN".to_vec()), vec![]),
        None,
    ));
    // A future version and a truncated frame, with a reply address.
    let job = JobId::new();
    let mut future = b"KSND\x09".to_vec();
    future.extend(pattern(2, 50));
    out.push((
        raw(Some(job.key()), Some(future), reply()),
        Some((job, "version")),
    ));
    let job = JobId::new();
    let whole = wire::encode(&start(job, "/upload", Some(4), vec![]), &[]);
    let cut = whole[..whole.len() / 2].to_vec();
    out.push((
        raw(Some(job.key()), Some(cut), reply()),
        Some((job, "cannot read")),
    ));
    // A key that does not match the frame's job.
    let mut rec = kafka::record(&start(JobId::new(), "/upload", Some(4), vec![]), &[], &[]);
    rec.key = Some(JobId::new().key());
    out.push((rec, None));
    // A chunk of a job nobody started, and a response frame on the request topic.
    let stray = JobId::new();
    out.push((chunk(stray, 1, 0, b"abcd", wire::checksum(b"abcd")), None));
    let resp = Frame {
        job: stray,
        seq: 0,
        body: Body::ResponseStart(ResponseStart {
            status: 200,
            headers: vec![],
            body_len: None,
            digest: kafkasend::protocol::digest::DigestKind::Sha256,
        }),
    };
    out.push((kafka::record(&resp, &[], &[]), None));
    // Policy and limits.
    let job = JobId::new();
    out.push((
        kafka::record(&start(job, "/a/../../etc/passwd", None, vec![]), &[], &[]),
        Some((job, "dot segments")),
    ));
    let job = JobId::new();
    out.push((
        kafka::record(&start(job, "/upload", Some(1 << 40), vec![]), &[], &[]),
        Some((job, "PORTAL_MAX_BODY_BYTES")),
    ));
    let job = JobId::new();
    let many = (0..100)
        .map(|i| (format!("X-{i}"), "v".to_string()))
        .collect();
    out.push((
        kafka::record(&start(job, "/upload", None, many), &[], &[]),
        Some((job, "PORTAL_MAX_HEADER_COUNT")),
    ));
    // A start repeated with other metadata.
    let job = JobId::new();
    out.push(begin(job));
    out.push((
        kafka::record(&start(job, "/upload/other", Some(4), vec![]), &[], &[]),
        Some((job, "different metadata")),
    ));
    // A hostile repeat of a job being assembled: the job fails, once, and
    // its first start's offset is settled.
    let job = JobId::new();
    out.push(begin(job));
    out.push((
        kafka::record(&start(job, "/a/../admin", Some(4), vec![]), &[], &[]),
        Some((job, "different metadata")),
    ));
    // A chunk numbered far out of range.
    let job = JobId::new();
    out.push(begin(job));
    out.push((
        chunk(job, 50_000_000, 0, b"abcd", wire::checksum(b"abcd")),
        Some((job, "out of range")),
    ));
    // Two different chunks under one number.
    let job = JobId::new();
    out.push(begin(job));
    out.push((chunk(job, 1, 0, b"abcd", wire::checksum(b"abcd")), None));
    out.push((
        chunk(job, 1, 0, b"wxyz", wire::checksum(b"wxyz")),
        Some((job, "twice with different contents")),
    ));
    // An end record declaring more chunks than the portal takes.
    let job = JobId::new();
    out.push(begin(job));
    out.push((
        end_record(job, 1, 5_000_000),
        Some((job, "PORTAL_MAX_CHUNKS")),
    ));
    // A chunk whose checksum is wrong.
    let job = JobId::new();
    out.push(begin(job));
    out.push((chunk(job, 1, 0, b"abcd", 12345), Some((job, "CRC32C"))));
    // A body whose digest does not match its end record.
    let job = JobId::new();
    out.push(begin(job));
    out.push((chunk(job, 1, 0, b"abcd", wire::checksum(b"abcd")), None));
    out.push((end_record(job, 2, 1), Some((job, "SHA-256"))));
    // A reply address that does not exist: nobody to tell.
    let mut lost = start(JobId::new(), "/a/../b", None, vec![]);
    if let Body::RequestStart(s) = &mut lost.body {
        s.reply_partition = 99;
    }
    out.push((kafka::record(&lost, &[], &[]), None));
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_garbage_does_not_stop_real_jobs() {
    let servers = Servers::start().await;
    let topics = Topics::new("garbage");
    let mut portal = Portal::start(&topics, &servers.plain_env());
    let dir = tempfile::tempdir().unwrap();
    let mut real = Vec::new();
    for i in 0..6u64 {
        let (path, digest) = pattern_file(
            dir.path(),
            &format!("f{i}"),
            i,
            100_000 + i as usize * 400_000,
        );
        let path = path.to_str().unwrap().to_string();
        real.push((
            spawn_send(&topics, &[&path, "--endpoint", "/upload"]),
            digest,
        ));
    }
    let settings = kafka_settings(&topics, "it-garbage");
    let client = kafka::connect(&settings).await.unwrap();
    let mut expected = Vec::new();
    let mut off_partition = Vec::new();
    for p in 0..3 {
        let pc = client.partition(&topics.request, p).await.unwrap();
        for (record, error) in garbage(&topics.response) {
            pc.produce(record).await.unwrap();
            match error {
                // An unreadable record off the partition its key hashes to
                // may be a forgery aimed at another job: never answered.
                Some((job, "version" | "cannot read")) if partition_for_key(&job.key(), 3) != p => {
                    off_partition.push(job)
                }
                e => expected.extend(e),
            }
        }
    }
    let mut digests = Vec::new();
    for (handle, digest) in real {
        let out = handle.await.unwrap();
        assert_eq!(out.code, 0, "a real job failed: {}", out.stderr);
        digests.push(digest);
    }
    let seen: Vec<String> = servers
        .state
        .requests()
        .iter()
        .map(|r| r.body_sha256.clone())
        .collect();
    for d in &digests {
        assert!(seen.contains(d), "the API never got body {d}");
    }
    assert_eq!(seen.len(), digests.len(), "only real jobs reached the API");

    let deadline = tokio::time::Instant::now() + WAIT;
    let errors = loop {
        let errors = error_replies(&topics).await;
        if expected.iter().all(|(job, _)| errors.contains_key(job)) {
            break errors;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for error replies; have {errors:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for job in &off_partition {
        assert!(
            !errors.contains_key(job),
            "an unreadable record off its partition was answered: {:?}",
            errors[job]
        );
    }
    for (job, why) in &expected {
        let (category, message) = &errors[job];
        assert!(
            message.contains(why),
            "job {job} ({category}): {message}; wanted {why}"
        );
    }
    // Still serving after all that.
    let out = send(&topics, &["--endpoint", "/api/items"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let log = portal.log();
    assert!(log.contains("skipped"), "undecodable records are logged");
    // The chunk of a job nobody started, once per partition; the response
    // frame of the same job after it is not worth another line.
    let strays = log
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("whose start record was not read here"))
        .count();
    assert_eq!(
        strays, 3,
        "records of unknown jobs are logged once per job:\n{log}"
    );

    // Nothing hostile pinned a partition: after a clean stop every partition
    // is committed to its end.
    portal.signal("TERM");
    assert_eq!(portal.wait_exit().await, Some(0), "{}", portal.log());
    assert_committed_to_end(&topics);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_upload_is_dropped_its_spool_freed_and_its_client_told() {
    let servers = Servers::start().await;
    let topics = Topics::new("idle");
    let spool = tempfile::tempdir().unwrap();
    let mut env = servers.plain_env();
    // Long enough for the test to see the spool file on a loaded machine.
    env.push(("PORTAL_JOB_IDLE_TIMEOUT_SECS", "5".into()));
    env.push(("PORTAL_SPOOL_DIR", spool.path().to_str().unwrap().into()));
    let mut portal = Portal::start(&topics, &env);

    // The start of an upload of unknown length and 1.4 MB of it, more than
    // the portal keeps in memory; then the sender goes quiet.
    let job = JobId::new();
    let start = post_start(job, "/upload", None, vec![], &topics.response);
    let settings = kafka_settings(&topics, "it-idle");
    let client = kafka::connect(&settings).await.unwrap();
    let pc = client.partition(&topics.request, 1).await.unwrap();
    pc.produce(kafka::record(&start, &[], &[])).await.unwrap();
    for seq in 1..=2u32 {
        let data = pattern(u64::from(seq), 700_000);
        let offset = u64::from(seq - 1) * 700_000;
        let record = chunk_record(job, seq, offset, &data, wire::checksum(&data));
        pc.produce(record).await.unwrap();
    }
    let pid = portal.pid();
    wait_until("the portal spools the upload to disk", || {
        open_files_under(pid, spool.path()) == 1
    })
    .await;

    let deadline = tokio::time::Instant::now() + WAIT;
    let (category, message) = loop {
        if let Some(e) = error_replies(&topics).await.remove(&job) {
            break e;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the client was never told; portal log:\n{}",
            portal.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(category, ErrorCategory::BadRequest, "{message}");
    assert!(
        message.contains("PORTAL_JOB_IDLE_TIMEOUT_SECS"),
        "the reply names the setting: {message}"
    );
    assert_eq!(
        open_files_under(pid, spool.path()),
        0,
        "the spool file was let go with the job"
    );
    assert!(servers.state.requests().is_empty(), "the API saw nothing");

    // Later records of the dropped job change nothing, and others are served.
    let data = pattern(3, 1000);
    let late = chunk_record(job, 3, 1_400_000, &data, wire::checksum(&data));
    pc.produce(late).await.unwrap();
    let out = send(&topics, &["--endpoint", "/api/items"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(servers.state.requests().len(), 1);
    portal.signal("TERM");
    assert_eq!(portal.wait_exit().await, Some(0), "{}", portal.log());
    assert_committed_to_end(&topics);
}

/// An unreadable record naming a job this portal has run, with a reply
/// address, is a forgery or a copy: answering it would put an error after
/// that job's answer. One for a job unknown here, on its partition, is
/// answered.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_record_of_a_job_already_run_is_not_answered() {
    let servers = Servers::start().await;
    let topics = Topics::new("forgedend");
    let portal = Portal::start(&topics, &servers.plain_env());
    let reply = [(
        wire::REPLY_TO_HEADER.to_string(),
        wire::reply_to_header(&topics.response, 0),
    )];
    let client = kafka::connect(&kafka_settings(&topics, "it-forged"))
        .await
        .unwrap();
    let job = JobId::new();
    let mut start = post_start(job, "/api/items/3", None, vec![], &topics.response);
    if let Body::RequestStart(s) = &mut start.body {
        s.method = "GET".into();
        s.has_body = false;
    }
    let home = client
        .partition(&topics.request, partition_for_key(&job.key(), 3))
        .await
        .unwrap();
    let reply_ref: Vec<(&str, Vec<u8>)> =
        reply.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    home.produce(kafka::record(&start, &[], &reply_ref))
        .await
        .unwrap();
    wait_until("the job reaches the API", || {
        servers.state.requests().len() == 1
    })
    .await;
    let unreadable = |job: JobId| Record {
        key: Some(job.key()),
        value: Some(b"KSND\x09not a frame".to_vec()),
        headers: reply.iter().cloned().collect(),
        timestamp_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    };
    home.produce(unreadable(job)).await.unwrap();
    // A job nobody started, on the same partition, so read after the
    // forgery: answered.
    let marker = loop {
        let m = JobId::new();
        if partition_for_key(&m.key(), 3) == partition_for_key(&job.key(), 3) {
            break m;
        }
    };
    home.produce(unreadable(marker)).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let errors = loop {
        let errors = error_replies(&topics).await;
        if errors.contains_key(&marker) {
            break errors;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no answer to the unknown job; log:\n{}",
            portal.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        errors[&marker].1.contains("version"),
        "{:?}",
        errors[&marker]
    );
    assert!(
        !errors.contains_key(&job),
        "the job already run got an error: {:?}",
        errors[&job]
    );
    assert!(portal.log().contains("not answering an unreadable record"));
}
