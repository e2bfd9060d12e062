//! Signed requests: a portal with `PORTAL_TRUSTED_KEYS` runs only requests
//! signed by a key it trusts, and refuses unsigned, foreign and replayed ones.

use std::path::{Path, PathBuf};

use kafkasend::kafka;
use kafkasend::kafka::partitioner::partition_for_key;
use kafkasend::protocol::wire::JobId;

use crate::support::api::{json, Servers};
use crate::support::broker::{final_responses, kafka_settings, records_in, Topics};
use crate::support::payload::pattern_file;
use crate::support::pki::openssl;
use crate::support::run::{send, Portal};
use crate::support::wait_until;

/// Makes a key pair in `dir` as the README says; returns (private, public).
fn key_pair(dir: &Path, name: &str, ec: bool) -> (PathBuf, PathBuf) {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let p = private.to_str().unwrap();
    if ec {
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            p,
        ]);
    } else {
        openssl(&["genpkey", "-algorithm", "ed25519", "-out", p]);
    }
    openssl(&[
        "pkey",
        "-in",
        p,
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (private, public)
}

struct Keys {
    _dir: tempfile::TempDir,
    ed: PathBuf,
    ec: PathBuf,
    stranger: PathBuf,
    /// `PORTAL_TRUSTED_KEYS`: the public halves of `ed` and `ec`.
    trusted: String,
}

fn keys() -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let (ed, ed_pub) = key_pair(dir.path(), "sender-ed", false);
    let (ec, ec_pub) = key_pair(dir.path(), "sender-ec", true);
    let (stranger, _) = key_pair(dir.path(), "stranger", false);
    let trusted = format!("{},{}", ed_pub.display(), ec_pub.display());
    Keys {
        _dir: dir,
        ed,
        ec,
        stranger,
        trusted,
    }
}

fn signed_portal(topics: &Topics, servers: &Servers, keys: &Keys) -> Portal {
    signed_portal_with(topics, servers, keys, "auto")
}

/// A portal trusting `keys` under the group `protocol`.
fn signed_portal_with(topics: &Topics, servers: &Servers, keys: &Keys, protocol: &str) -> Portal {
    let mut env = servers.plain_env();
    env.push(("PORTAL_TRUSTED_KEYS", keys.trusted.clone()));
    env.push(("KAFKA_GROUP_PROTOCOL", protocol.into()));
    Portal::start(topics, &env)
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_sends_pass_and_unsigned_or_foreign_ones_are_refused() {
    let keys = keys();
    let servers = Servers::start().await;
    let topics = Topics::new("signed");
    let portal = signed_portal(&topics, &servers, &keys);
    assert!(
        portal
            .log()
            .contains("sender-ed.pub.pem (Ed25519), sender-ec.pub.pem (EC P-256)"),
        "{}",
        portal.log()
    );
    let dir = tempfile::tempdir().unwrap();
    let (file, digest) = pattern_file(dir.path(), "data.bin", 11, 3_000_000);
    let file = file.to_str().unwrap();

    let out = send(
        &topics,
        &[
            file,
            "--endpoint",
            "/api/upload",
            "--signing-key",
            keys.ed.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    assert_eq!(json(&out.stdout)["body_sha256"], digest.as_str());

    let (form_file, form_digest) = pattern_file(dir.path(), "form.csv", 12, 2_500_000);
    let out = send(
        &topics,
        &[
            form_file.to_str().unwrap(),
            "--endpoint",
            "/api/form?kind=csv",
            "--multipart",
            "-H",
            "X-Request-ID: signed-form",
            "--signing-key",
            keys.ec.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);

    // No body: the signature says so, and covers the query and headers.
    let out = send(
        &topics,
        &[
            "--endpoint",
            "/api/items?limit=5",
            "-H",
            "Accept: application/json",
            "--signing-key",
            keys.ed.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);

    let out = send(&topics, &[file, "--endpoint", "/api/upload"]).await;
    assert_eq!(out.code, 3, "stderr: {}", out.stderr);
    assert!(out.stderr.contains("is not signed"), "{}", out.stderr);

    let out = send(
        &topics,
        &[
            file,
            "--endpoint",
            "/api/upload",
            "--signing-key",
            keys.stranger.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.code, 3, "stderr: {}", out.stderr);
    assert!(
        out.stderr
            .contains("not valid for any key this portal trusts"),
        "{}",
        out.stderr
    );

    let reqs = servers.state.requests();
    assert_eq!(reqs.len(), 3, "only the signed requests reach the API");
    assert_eq!(reqs[2].method, "GET");
    assert_eq!(reqs[2].query.as_deref(), Some("limit=5"));
    assert_eq!(reqs[0].body_sha256, digest);
    assert_eq!(reqs[1].query.as_deref(), Some("kind=csv"));
    assert_eq!(reqs[1].headers["x-request-id"], "signed-form");
    assert_eq!(reqs[1].parts.len(), 1, "{:?}", reqs[1].parts);
    assert_eq!(reqs[1].parts[0].3, form_digest);
    portal.wait_for_log("is not signed").await;

    // A -F form of fields and files: the digest pass reads the whole form.
    let (scan, scan_digest) = pattern_file(dir.path(), "scan.png", 13, 1_200_000);
    let out = send(
        &topics,
        &[
            "--endpoint",
            "/api/signed-form",
            "-F",
            "title=signed",
            "-F",
            &format!("doc=@{}", form_file.display()),
            "-F",
            &format!("scan=@{}", scan.display()),
            "--signing-key",
            keys.ed.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let reqs = servers.state.requests();
    assert_eq!(reqs[3].path, "/api/signed-form");
    let parts = &reqs[3].parts;
    assert_eq!(parts.len(), 3, "{parts:?}");
    assert_eq!((parts[1].2, &parts[1].3), (2_500_000, &form_digest));
    assert_eq!((parts[2].2, &parts[2].3), (1_200_000, &scan_digest));
}

#[tokio::test(flavor = "multi_thread")]
async fn signing_needs_a_file_that_can_be_read_twice() {
    let keys = keys();
    let topics = Topics::new("signstdin");
    let out = send(
        &topics,
        &[
            "-",
            "--endpoint",
            "/x",
            "--signing-key",
            keys.ed.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.code, 2, "stderr: {}", out.stderr);
    assert!(out.stderr.contains("standard input"), "{}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);

    let out = send(
        &topics,
        &[
            "--endpoint",
            "/x",
            "--signing-key",
            keys.ed.with_extension("missing").to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.code, 2, "stderr: {}", out.stderr);
    assert!(
        out.stderr.contains("KAFKASEND_SIGNING_KEY_FILE"),
        "{}",
        out.stderr
    );
}

/// Every record of `job` in `partition` of the request topic, as produced.
async fn records_of(topics: &Topics, partition: i32, job: &str) -> Vec<kafka::Record> {
    records_in(topics, &topics.request, partition)
        .await
        .into_iter()
        .filter(|r| r.key.as_deref() == Some(job.as_bytes()))
        .collect()
}

/// Produces `records` again to `partition`; returns the offset of the first.
async fn replay(topics: &Topics, partition: i32, records: &[kafka::Record]) -> i64 {
    let client = kafka::connect(&kafka_settings(topics, "it-replay"))
        .await
        .unwrap();
    let pc = client.partition(&topics.request, partition).await.unwrap();
    let mut first = None;
    for r in records {
        let at = pc.produce(r.clone()).await.unwrap();
        first.get_or_insert(at);
    }
    first.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_signed_request_never_reaches_the_api_twice() {
    let keys = keys();
    let servers = Servers::start().await;
    let topics = Topics::new("replay");
    // The rebalance below must move every partition: the classic protocol.
    let portal = signed_portal_with(&topics, &servers, &keys, "classic");
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = pattern_file(dir.path(), "once.bin", 13, 2_000_000);
    let out = send(
        &topics,
        &[
            file.to_str().unwrap(),
            "--endpoint",
            "/api/once",
            "--signing-key",
            keys.ec.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let job = servers
        .state
        .idempotency_keys()
        .pop()
        .expect("the API saw the job");
    let p = partition_for_key(job.as_bytes(), 3);
    let records = records_of(&topics, p, &job).await;
    assert_eq!(records.len(), 5, "start, 3 chunks, end");
    let _: JobId = job.parse().unwrap();

    // The same partition at once: the replay cache knows where it was read.
    let at = replay(&topics, p, &records).await;
    portal
        .wait_for_log(&format!(
            "job {job}: ignored a start record at partition {p} offset {at} that fails its signature check: replayed request"
        ))
        .await;

    // A forged, unsigned start for the same job with another path: ignored,
    // and no error reply that could end the job for its client.
    let mut forged = records[0].clone();
    let (mut frame, _) =
        kafkasend::protocol::wire::decode(forged.value.as_deref().unwrap()).unwrap();
    if let kafkasend::protocol::wire::Body::RequestStart(start) = &mut frame.body {
        start.path = "/api/other".into();
    }
    forged.value = Some(kafkasend::protocol::wire::encode(&frame, &[]));
    forged
        .headers
        .remove(kafkasend::protocol::wire::SIGNATURE_HEADER);
    let at = replay(&topics, p, &[forged]).await;
    portal
        .wait_for_log(&format!(
            "job {job}: ignored a start record at partition {p} offset {at} that fails its signature check"
        ))
        .await;

    // Another partition: the signature names the partition it was made for.
    let q = (p + 1) % 3;
    let at = replay(&topics, q, &records).await;
    portal
        .wait_for_log(&format!(
            "job {job}: ignored a start record at partition {q} offset {at} that fails its signature check: the request does not match its signature: its request partition differs"
        ))
        .await;

    // After a rebalance the partition's reader starts afresh and has forgotten
    // the job; the portal's replay cache still knows where it was first read.
    let generations = |log: &str| {
        log.matches("this portal reads partitions [0, 1, 2]")
            .count()
    };
    let before = generations(&portal.log());
    let mut second = signed_portal_with(&topics, &servers, &keys, "classic");
    second.signal("TERM");
    assert_eq!(second.wait_exit().await, Some(0), "{}", second.log());
    wait_until("the first portal took every partition back", || {
        generations(&portal.log()) > before
    })
    .await;
    let at = replay(&topics, p, &records).await;
    portal
        .wait_for_log(&format!(
            "job {job}: ignored a start record at partition {p} offset {at} that fails its signature check: replayed request"
        ))
        .await;
    assert_eq!(
        final_responses(&topics).await.get(&job),
        Some(&1),
        "one answer, and no error reply for any copy"
    );

    assert_eq!(
        servers.state.requests().len(),
        1,
        "the API saw the call once"
    );
}
