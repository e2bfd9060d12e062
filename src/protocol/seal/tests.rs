use proptest::prelude::*;

use super::*;
use crate::protocol::wire::{decode, SealedChunk, SealedEnd};

/// A key pair written by `openssl genpkey -algorithm X25519` and
/// `openssl pkey -pubout`.
const OPENSSL_KEY: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VuBCIEIIjxkhy3wdv4wh8a9kVEzqrUHLQo+/bAbre6P2C92WV7
-----END PRIVATE KEY-----
";
const OPENSSL_PUB: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VuAyEAMptvD+jI9pXCW+EoV9Yc8HUTTR6xXEBbl7LqdQBgowk=
-----END PUBLIC KEY-----
";

const TOPIC: &str = "api-requests";

fn start() -> RequestStart {
    RequestStart {
        method: "POST".into(),
        path: "/api/secret-path?q=hidden".into(),
        headers: vec![("X-Secret".into(), "header-value".into())],
        body_len: Some(5),
        has_body: true,
        reply_topic: "api-responses".into(),
        reply_partition: 2,
        digest: DigestKind::Blake3,
    }
}

fn trace() -> Vec<(String, Vec<u8>)> {
    vec![("traceparent".into(), b"00-abc-def-01".to_vec())]
}

/// A job sealed to `key`: its start record value and the sender's keys.
fn sealed_job(key: &SecretKey, partition: i32) -> (JobId, Vec<u8>, JobKeys) {
    let job = JobId::new();
    let (value, _secret, keys) =
        seal_start(key.public(), job, &start(), trace(), TOPIC, partition).unwrap();
    (job, value, keys)
}

fn open_start_value(
    ring: &Keyring,
    value: &[u8],
    partition: i32,
) -> Result<OpenedStart, SealError> {
    let (frame, payload) = decode(value).unwrap();
    ring.open_start(value, &frame, payload, TOPIC, partition)
}

fn chunk(keys: &RecordKey, seq: u32, offset: u64, bytes: &[u8]) -> Vec<u8> {
    let frame = Frame {
        job: keys.job(),
        seq,
        body: Body::SealedChunk(SealedChunk { offset }),
    };
    keys.seal_frame(&frame, bytes, &[])
}

fn open(keys: &RecordKey, value: &[u8], extra: &[u8]) -> Result<Opened, SealError> {
    let (frame, payload) = decode(value).unwrap();
    keys.open_frame(value, frame, payload, extra)
}

#[test]
fn a_sealed_start_opens_to_the_request_it_seals() {
    let key = SecretKey::generate();
    let ring = Keyring::new(vec![key]).unwrap();
    let (job, value, sender) = sealed_job(&ring.keys[0], 3);
    assert_eq!(value[4], 3, "sealed frames are version 3");
    let opened = open_start_value(&ring, &value, 3).unwrap();
    assert_eq!(opened.start, start());
    assert_eq!(opened.record_headers, trace());
    assert_eq!(opened.key, ring.advertised().id());
    // Both sides hold the same record keys.
    let c = chunk(&sender.request, 1, 0, b"hello");
    let got = open(&opened.keys.request, &c, &[]).unwrap();
    assert_eq!(got.payload, b"hello");
    assert_eq!(
        got.frame,
        Frame {
            job,
            seq: 1,
            body: Body::Chunk(ChunkInfo {
                offset: 0,
                crc32c: wire::checksum(b"hello")
            })
        }
    );
}

#[test]
fn nothing_of_the_request_is_in_the_clear_record() {
    let key = SecretKey::generate();
    let (_, value, keys) = sealed_job(&key, 0);
    for secret in [
        &b"secret-path"[..],
        b"X-Secret",
        b"header-value",
        b"POST",
        b"00-abc",
    ] {
        assert!(
            !value.windows(secret.len()).any(|w| w == secret),
            "{:?} is readable in the record",
            String::from_utf8_lossy(secret)
        );
    }
    let c = chunk(&keys.request, 1, 0, b"the body bytes");
    assert!(!c.windows(4).any(|w| w == b"body"));
}

#[test]
fn a_chunk_moved_to_another_job_seq_or_offset_does_not_open() {
    let key = SecretKey::generate();
    let ring = Keyring::new(vec![key]).unwrap();
    let (_, va, a) = sealed_job(&ring.keys[0], 0);
    let (_, vb, _) = sealed_job(&ring.keys[0], 0);
    let portal_a = open_start_value(&ring, &va, 0).unwrap();
    let portal_b = open_start_value(&ring, &vb, 0).unwrap();
    let c = chunk(&a.request, 1, 0, b"job a's bytes");
    assert!(open(&portal_a.keys.request, &c, &[]).is_ok());
    // Job b's key refuses it even with the job id in the header rewritten.
    let mut swapped = c.clone();
    swapped[5..21].copy_from_slice(&portal_b.keys.request.job().0);
    assert_eq!(
        open(&portal_b.keys.request, &swapped, &[]).unwrap_err(),
        SealError::Open("chunk")
    );
    assert!(open(&portal_b.keys.request, &c, &[]).is_err());
    // Another seq or offset in the clear header: the tag fails.
    let (frame, payload) = decode(&c).unwrap();
    for body in [
        Frame {
            seq: 2,
            ..frame.clone()
        },
        Frame {
            body: Body::SealedChunk(SealedChunk { offset: 13 }),
            ..frame.clone()
        },
    ] {
        let mut moved = wire::encode_in(DigestKind::Blake3, &body, &[]);
        moved.extend_from_slice(payload);
        assert_eq!(
            open(&portal_a.keys.request, &moved, &[]).unwrap_err(),
            SealError::Open("chunk")
        );
    }
    // Any flipped bit of the payload.
    for i in [0, 12, c.len() - 1] {
        let mut bad = c.clone();
        let at = c.len() - payload.len() + i.min(payload.len() - 1);
        bad[at] ^= 1;
        assert!(open(&portal_a.keys.request, &bad, &[]).is_err());
    }
}

#[test]
fn a_request_record_is_not_an_answer_and_attempts_are_bound() {
    let key = SecretKey::generate();
    let (job, _, keys) = sealed_job(&key, 0);
    // A request chunk reflected onto the response topic.
    let c = chunk(&keys.request, 1, 0, b"bytes");
    assert!(open(&keys.response, &c, &[]).is_err());
    // An answer's record under another attempt value.
    let frame = Frame {
        job,
        seq: 1,
        body: Body::Chunk(ChunkInfo {
            offset: 0,
            crc32c: 0,
        }),
    };
    let sealed = keys
        .response
        .seal_clear(&frame, b"answer", vec![], b"attempt-a");
    assert_eq!(
        open(&keys.response, &sealed, b"attempt-a").unwrap().payload,
        b"answer"
    );
    assert!(open(&keys.response, &sealed, b"attempt-b").is_err());
}

#[test]
fn answers_round_trip_with_their_record_headers() {
    let key = SecretKey::generate();
    let (job, _, keys) = sealed_job(&key, 0);
    let head = Frame {
        job,
        seq: 0,
        body: Body::ResponseStart(ResponseStart {
            status: 201,
            headers: vec![("location".into(), "/x/1".into())],
            body_len: Some(4),
            digest: DigestKind::Blake3,
        }),
    };
    let dropped = vec![("kafkasend-dropped-headers".into(), b"X-Custom".to_vec())];
    let value = keys.response.seal_clear(&head, &[], dropped.clone(), b"at");
    assert!(!value.windows(8).any(|w| w == b"location"));
    let got = open(&keys.response, &value, b"at").unwrap();
    assert_eq!(got.frame, head);
    assert_eq!(got.record_headers, dropped);
    let digest = DigestKind::Blake3.hasher();
    let end = Frame {
        job,
        seq: 2,
        body: Body::End(EndInfo {
            chunks: 1,
            total_len: 4,
            digest: digest.finalize(),
        }),
    };
    let value = keys.response.seal_clear(&end, &[], vec![], b"at");
    assert_eq!(open(&keys.response, &value, b"at").unwrap().frame, end);
    let error = Frame {
        job,
        seq: 0,
        body: Body::Error(Failure::rejected("path /api/secret-path is not allowed")),
    };
    let value = keys.response.seal_clear(&error, &[], vec![], b"at");
    assert!(!value.windows(6).any(|w| w == b"secret"));
    assert_eq!(open(&keys.response, &value, b"at").unwrap().frame, error);
}

#[test]
fn a_clear_record_in_a_sealed_job_is_refused() {
    let key = SecretKey::generate();
    let (job, _, keys) = sealed_job(&key, 0);
    let clear = Frame {
        job,
        seq: 1,
        body: Body::Chunk(ChunkInfo {
            offset: 0,
            crc32c: wire::checksum(b"x"),
        }),
    };
    let value = wire::encode_in(DigestKind::Blake3, &clear, b"x");
    assert_eq!(
        open(&keys.request, &value, &[]).unwrap_err(),
        SealError::Clear("chunk")
    );
}

#[test]
fn the_wrong_key_a_retired_key_and_the_wrong_place_do_not_open() {
    let old = SecretKey::generate();
    let new = SecretKey::generate();
    let (_, value, _) = sealed_job(&old, 1);
    // Rotation: the new key advertised, the old one still accepted.
    let both = Keyring::new(vec![SecretKey::generate(), old]).unwrap();
    assert!(open_start_value(&both, &value, 1).is_ok());
    // Retired: the portal no longer holds it.
    let retired = Keyring::new(vec![new]).unwrap();
    let err = open_start_value(&retired, &value, 1).unwrap_err();
    assert!(matches!(err, SealError::UnknownKey { .. }), "{err}");
    assert_eq!(err.category(), ErrorCategory::Rejected);
    assert!(
        err.to_string()
            .contains(&retired.advertised().id().to_string()),
        "{err}"
    );
    // A copy of the start produced to another partition or topic.
    assert_eq!(
        open_start_value(&both, &value, 2).unwrap_err(),
        SealError::Open("start record")
    );
    let (frame, payload) = decode(&value).unwrap();
    assert!(both
        .open_start(&value, &frame, payload, "other", 1)
        .is_err());
}

#[test]
fn a_wrong_key_with_the_same_id_does_not_open() {
    let key = SecretKey::generate();
    let (_, value, _) = sealed_job(&key, 0);
    // Another key, made to claim the sealed-to key's id.
    let mut impostor = SecretKey::generate();
    impostor.public.id = key.public().id();
    let ring = Keyring::new(vec![impostor]).unwrap();
    assert_eq!(
        open_start_value(&ring, &value, 0).unwrap_err(),
        SealError::Open("start record")
    );
}

#[test]
fn malformed_encapsulated_keys_are_errors() {
    let key = SecretKey::generate();
    let id = key.public().id();
    let ring = Keyring::new(vec![key]).unwrap();
    let (_, value, _) = sealed_job(&ring.keys[0], 0);
    let (frame, payload) = decode(&value).unwrap();
    let Body::SealedStart(s) = &frame.body else {
        panic!()
    };
    for enc in [
        vec![],
        vec![0u8; 31],
        vec![0u8; 32],
        vec![0xff; 32],
        vec![7u8; 4096],
    ] {
        let forged = Frame {
            body: Body::SealedStart(SealedStart {
                enc: enc.clone(),
                key_id: id.0,
                ..s.clone()
            }),
            ..frame.clone()
        };
        let mut v = wire::encode_in(DigestKind::Blake3, &forged, &[]);
        v.extend_from_slice(payload);
        let err = open_start_value(&ring, &v, 0).unwrap_err();
        assert!(
            matches!(err, SealError::BadEncapsulation(_) | SealError::Open(_)),
            "{enc:?}: {err}"
        );
    }
}

#[test]
fn keys_read_and_write_as_openssl_does() {
    let keys = SecretKey::all_from_pem(OPENSSL_KEY.as_bytes()).unwrap();
    let public = PublicKey::from_pem(OPENSSL_PUB.as_bytes()).unwrap();
    assert_eq!(keys[0].public().id(), public.id());
    assert_eq!(keys[0].to_pem().as_str(), OPENSSL_KEY);
    assert_eq!(public.to_pem(), OPENSSL_PUB);
    // Several keys in one file, in order.
    let other = SecretKey::generate();
    let both = format!("{}{}", other.to_pem().as_str(), OPENSSL_KEY);
    let read = SecretKey::all_from_pem(both.as_bytes()).unwrap();
    assert_eq!(read.len(), 2);
    assert_eq!(read[0].public().id(), other.public().id());
    // Debug output names the key, never its bytes.
    let shown = format!("{:?}", keys[0]);
    assert!(
        shown.contains(&public.id().to_string()) && !shown.contains("MC4C"),
        "{shown}"
    );
}

#[test]
fn key_files_of_the_wrong_kind_are_named() {
    let ed25519 = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIHBuJ4dkxIp1uJ7+aJDCHbWBMeRvW2kRoBSJcIDCEaXd
-----END PRIVATE KEY-----
";
    let err = SecretKey::all_from_pem(ed25519.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("not X25519"), "{err}");
    let err = SecretKey::all_from_pem(OPENSSL_PUB.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("no PEM private key"), "{err}");
    let err = PublicKey::from_pem(OPENSSL_KEY.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("no PEM public key"), "{err}");
    assert!(SecretKey::all_from_pem(b"").is_err());
}

#[test]
fn job_secrets_read_back_and_do_not_show() {
    let key = SecretKey::generate();
    let job = JobId::new();
    let (_, secret, keys) = seal_start(key.public(), job, &start(), vec![], TOPIC, 0).unwrap();
    let text = secret.to_text();
    let again = JobSecret::from_text(&text).unwrap();
    let c = chunk(&keys.request, 1, 0, b"abc");
    assert_eq!(
        open(&again.keys(job).request, &c, &[]).unwrap().payload,
        b"abc"
    );
    assert_eq!(format!("{secret:?}"), "JobSecret(..)");
    assert!(JobSecret::from_text("not base64!").is_err());
    assert!(JobSecret::from_text("AAAA").is_err());
}

#[test]
fn a_sealed_end_of_the_wrong_size_is_malformed() {
    let key = SecretKey::generate();
    let (job, _, keys) = sealed_job(&key, 0);
    let frame = Frame {
        job,
        seq: 3,
        body: Body::SealedEnd(SealedEnd {
            chunks: 2,
            total_len: 9,
        }),
    };
    let value = keys.request.seal_frame(&frame, &[1; 31], &[]);
    assert!(matches!(
        open(&keys.request, &value, &[]).unwrap_err(),
        SealError::Malformed { .. }
    ));
}

proptest! {
    #[test]
    fn arbitrary_payloads_never_open_or_panic(
        payload in prop::collection::vec(any::<u8>(), 0..200),
        enc in prop::collection::vec(any::<u8>(), 0..64),
        seq in any::<u32>(),
    ) {
        let key = SecretKey::generate();
        let id = key.public().id();
        let ring = Keyring::new(vec![key]).unwrap();
        let job = JobId::new();
        let (_, keys) = {
            let (v, _, k) = seal_start(ring.advertised(), job, &start(), vec![], TOPIC, 0).unwrap();
            (v, k)
        };
        let start = Frame {
            job,
            seq: 0,
            body: Body::SealedStart(SealedStart {
                key_id: id.0,
                enc,
                body_len: None,
                has_body: false,
                reply_topic: "r".into(),
                reply_partition: 0,
            }),
        };
        let mut v = wire::encode_in(DigestKind::Blake3, &start, &[]);
        v.extend_from_slice(&payload);
        prop_assert!(open_start_value(&ring, &v, 0).is_err());
        for body in [
            Body::SealedChunk(SealedChunk { offset: 0 }),
            Body::SealedEnd(SealedEnd { chunks: 1, total_len: 1 }),
            Body::SealedResponseStart(wire::SealedResponseStart { body_len: None }),
            Body::SealedError,
        ] {
            let mut v = wire::encode_in(DigestKind::Blake3, &Frame { job, seq, body }, &[]);
            v.extend_from_slice(&payload);
            prop_assert!(open(&keys.request, &v, &[]).is_err());
            prop_assert!(open(&keys.response, &v, &[]).is_err());
        }
    }
}

#[test]
fn the_sender_reads_its_own_start_back_with_the_request_key_only() {
    let key = SecretKey::generate();
    let (job, value, keys) = sealed_job(&key, 1);
    let (frame, payload) = decode(&value).unwrap();
    let (got, headers) = keys
        .request
        .open_own_start(&value, &frame, payload)
        .unwrap();
    assert_eq!(got, start());
    assert_eq!(headers, trace());
    // The response key, another job's key, or a changed clear field: no.
    assert!(keys
        .response
        .open_own_start(&value, &frame, payload)
        .is_err());
    let (_, _, other) = sealed_job(&key, 1);
    assert!(other
        .request
        .open_own_start(&value, &frame, payload)
        .is_err());
    let (mut f, p) = decode(&value).unwrap();
    if let Body::SealedStart(s) = &mut f.body {
        s.reply_partition += 1;
    }
    let moved = [wire::encode_in(DigestKind::Blake3, &f, &[]), p.to_vec()].concat();
    let (f2, p2) = decode(&moved).unwrap();
    assert!(keys.request.open_own_start(&moved, &f2, p2).is_err());
    assert_eq!(f2.job, job);
}
