//! Unit tests of signing and verification, with keys made by openssl.

use super::*;
use std::path::PathBuf;

use crate::test_support::openssl;

/// A fresh key pair of `kind` in `dir`: (private PEM path, public PEM path).
fn key_pair(dir: &Path, name: &str, kind: KeyType) -> (PathBuf, PathBuf) {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let p = private.to_str().unwrap();
    match kind {
        KeyType::Ed25519 => openssl(&["genpkey", "-algorithm", "ed25519", "-out", p]),
        KeyType::P256 => openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            p,
        ]),
    };
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

fn start(has_body: bool) -> RequestStart {
    RequestStart {
        method: "POST".into(),
        path: "/api/upload?x=1".into(),
        headers: vec![
            ("Content-Type".into(), "text/plain".into()),
            ("X-Request-ID".into(), "r-1".into()),
        ],
        body_len: has_body.then_some(5),
        has_body,
        reply_topic: "api-responses".into(),
        reply_partition: 2,
        digest: DigestKind::Sha256,
    }
}

const NOW: u64 = 1_800_000_000;
const TOPIC: &str = "api-requests";

struct Fixture {
    _dir: tempfile::TempDir,
    signer: Signer,
    other: Signer,
    verifier: Verifier,
}

fn fixture(kind: KeyType) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = key_pair(dir.path(), "sender", kind);
    let (other, _) = key_pair(dir.path(), "stranger", kind);
    let signer = Signer::from_pem_file(&private, Duration::from_secs(300)).unwrap();
    let other = Signer::from_pem_file(&other, Duration::from_secs(300)).unwrap();
    let trusted = TrustedKeys::load(public.to_str().unwrap(), Duration::from_secs(3600)).unwrap();
    Fixture {
        _dir: dir,
        signer,
        other,
        verifier: Verifier::new(trusted, TOPIC),
    }
}

fn sign(s: &Signer, job: JobId, st: &RequestStart, now: u64) -> Vec<u8> {
    let digest = st.has_body.then(|| st.digest.of(b"hello"));
    s.sign(job, TOPIC, 1, st, digest, now).unwrap().into_bytes()
}

#[test]
fn round_trips_with_both_key_types() {
    for kind in [KeyType::Ed25519, KeyType::P256] {
        let f = fixture(kind);
        for has_body in [true, false] {
            let job = JobId::new();
            let st = start(has_body);
            let sig = sign(&f.signer, job, &st, NOW);
            let v = f
                .verifier
                .verify(job, &st, Some(&sig), 1, 10, NOW + 5)
                .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            assert_eq!(v.key, "sender.pub.pem");
            let want = has_body.then(|| DigestKind::Sha256.of(b"hello"));
            assert_eq!(v.body_digest, want);
        }
    }
}

/// The claims of a token, read without checking its signature.
fn claims_of(sig: &[u8]) -> serde_json::Value {
    let text = std::str::from_utf8(sig).unwrap();
    let payload = text.split('.').nth(1).unwrap();
    let json =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload).unwrap();
    serde_json::from_slice(&json).unwrap()
}

#[test]
fn a_blake3_request_signs_its_algorithm_and_a_sha256_one_as_before() {
    let f = fixture(KeyType::Ed25519);
    let job = JobId::new();
    let sha = start(true);
    let claims = claims_of(&sign(&f.signer, job, &sha, NOW));
    // Version 1 claims are unchanged: no `d`, `b` the SHA-256.
    assert!(claims.get("d").is_none(), "{claims}");
    assert_eq!(claims["b"], DigestKind::Sha256.of(b"hello").hex());
    let b3 = RequestStart {
        digest: DigestKind::Blake3,
        ..start(true)
    };
    let sig = sign(&f.signer, job, &b3, NOW);
    let claims = claims_of(&sig);
    assert_eq!(claims["d"], "blake3");
    assert_eq!(claims["b"], DigestKind::Blake3.of(b"hello").hex());
    let v = f.verifier.verify(job, &b3, Some(&sig), 1, 10, NOW).unwrap();
    assert_eq!(v.body_digest, Some(DigestKind::Blake3.of(b"hello")));
    // Even with no body the algorithm is signed: it digests the response too.
    let bare = RequestStart {
        digest: DigestKind::Blake3,
        ..start(false)
    };
    assert_eq!(claims_of(&sign(&f.signer, job, &bare, NOW))["d"], "blake3");
}

#[test]
fn a_signature_of_one_digest_algorithm_does_not_verify_for_the_other() {
    let f = fixture(KeyType::P256);
    let b3 = RequestStart {
        digest: DigestKind::Blake3,
        ..start(true)
    };
    for (signed, presented) in [(&b3, start(true)), (&start(true), b3.clone())] {
        for has_body in [true, false] {
            let job = JobId::new();
            let signed = RequestStart {
                has_body,
                body_len: has_body.then_some(5),
                ..signed.clone()
            };
            let presented = RequestStart {
                has_body,
                body_len: has_body.then_some(5),
                ..presented.clone()
            };
            let sig = sign(&f.signer, job, &signed, NOW);
            let err = f
                .verifier
                .verify(job, &presented, Some(&sig), 1, 10, NOW)
                .unwrap_err();
            assert_eq!(err, Rejection::Mismatch("body digest algorithm"), "{err}");
        }
    }
}

#[test]
fn a_body_digest_of_another_algorithm_than_the_start_is_not_signed() {
    let f = fixture(KeyType::Ed25519);
    let b3 = RequestStart {
        digest: DigestKind::Blake3,
        ..start(true)
    };
    let wrong = Some(DigestKind::Sha256.of(b"hello"));
    let err = f.signer.sign(JobId::new(), TOPIC, 1, &b3, wrong, NOW);
    assert!(err.unwrap_err().to_string().contains("sha256"));
}

#[test]
fn unsigned_and_garbage_are_refused() {
    let f = fixture(KeyType::Ed25519);
    let st = start(true);
    let job = JobId::new();
    let err = f.verifier.verify(job, &st, None, 1, 0, NOW).unwrap_err();
    assert_eq!(err, Rejection::Unsigned);
    assert!(err.to_string().contains("not signed"), "{err}");
    for junk in [&b"nonsense"[..], b"a.b.c", b"\xff\xfe", &[b'x'; 10_000]] {
        let err = f
            .verifier
            .verify(job, &st, Some(junk), 1, 0, NOW)
            .unwrap_err();
        assert!(matches!(err, Rejection::Malformed(_)), "{err}");
    }
}

#[test]
fn a_key_the_portal_does_not_trust_is_refused() {
    let f = fixture(KeyType::P256);
    let st = start(true);
    let job = JobId::new();
    let sig = sign(&f.other, job, &st, NOW);
    let err = f
        .verifier
        .verify(job, &st, Some(&sig), 1, 0, NOW)
        .unwrap_err();
    assert_eq!(err, Rejection::Untrusted);
    // An Ed25519 signature where only a P-256 key is trusted: no key to try.
    let ed = fixture(KeyType::Ed25519);
    let sig = sign(&ed.signer, job, &st, NOW);
    let err = f
        .verifier
        .verify(job, &st, Some(&sig), 1, 0, NOW)
        .unwrap_err();
    assert_eq!(err, Rejection::Untrusted);
}

#[test]
fn a_tampered_token_is_refused() {
    let f = fixture(KeyType::Ed25519);
    let st = start(true);
    let job = JobId::new();
    let sig = String::from_utf8(sign(&f.signer, job, &st, NOW)).unwrap();
    let parts: Vec<&str> = sig.split('.').collect();
    // Change the claims (a longer lifetime) and keep the signature.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: serde_json::Value =
        serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    claims["p"] = "/api/admin".into();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(claims.to_string()),
        parts[2]
    );
    let mut st2 = st.clone();
    st2.path = "/api/admin".into();
    let err = f
        .verifier
        .verify(job, &st2, Some(forged.as_bytes()), 1, 0, NOW)
        .unwrap_err();
    assert_eq!(err, Rejection::Untrusted);
}

#[test]
fn every_field_of_the_start_record_is_covered() {
    let f = fixture(KeyType::Ed25519);
    let job = JobId::new();
    let st = start(true);
    let sig = sign(&f.signer, job, &st, NOW);
    type Edit = fn(&mut RequestStart);
    let edits: [(&str, Edit); 9] = [
        ("method", |s| s.method = "DELETE".into()),
        ("path", |s| s.path = "/api/upload?x=2".into()),
        ("header list", |s| s.headers[1].1 = "r-2".into()),
        ("header list", |s| s.headers.reverse()),
        ("header list", |s| {
            s.headers.push(("Accept".into(), "*/*".into()))
        }),
        ("declared body length", |s| s.body_len = Some(6)),
        ("body presence", |s| s.has_body = false),
        ("reply address", |s| s.reply_partition = 0),
        ("reply address", |s| s.reply_topic = "elsewhere".into()),
    ];
    for (field, edit) in edits {
        let mut tampered = st.clone();
        edit(&mut tampered);
        let err = f
            .verifier
            .verify(job, &tampered, Some(&sig), 1, 0, NOW)
            .unwrap_err();
        assert_eq!(err, Rejection::Mismatch(field));
        assert!(err.to_string().contains(field), "{err}");
    }
    let other_job = JobId::new();
    let err = f
        .verifier
        .verify(other_job, &st, Some(&sig), 1, 0, NOW)
        .unwrap_err();
    assert_eq!(err, Rejection::Mismatch("job id"));
    let err = f
        .verifier
        .verify(job, &st, Some(&sig), 2, 0, NOW)
        .unwrap_err();
    assert_eq!(err, Rejection::Mismatch("request partition"));
    let elsewhere = Verifier::new(f.verifier.trusted.clone(), "other-requests");
    let err = elsewhere
        .verify(job, &st, Some(&sig), 1, 0, NOW)
        .unwrap_err();
    assert_eq!(err, Rejection::Mismatch("request topic"));
    // A body signed as absent cannot be added.
    let bare = start(false);
    let sig = sign(&f.signer, job, &bare, NOW);
    let mut with_body = bare.clone();
    with_body.has_body = true;
    let err = f
        .verifier
        .verify(job, &with_body, Some(&sig), 1, 0, NOW)
        .unwrap_err();
    assert_eq!(err, Rejection::Mismatch("body presence"));
}

#[test]
fn header_encoding_is_unambiguous() {
    let a = headers_sha256(&[("a".into(), "b\0c".into())]);
    let b = headers_sha256(&[("a\0b".into(), "c".into())]);
    let c = headers_sha256(&[("a".into(), "b".into()), ("c".into(), String::new())]);
    assert_ne!(a, b);
    assert_ne!(a, c);
    assert_ne!(b, c);
    assert_eq!(hex(&headers_sha256(&[])), hex(&Sha256::digest(b"")));
}

#[test]
fn expiry_and_lifetime_are_enforced() {
    let f = fixture(KeyType::Ed25519);
    let st = start(false);
    let job = JobId::new();
    let sig = sign(&f.signer, job, &st, NOW);
    // Within the leeway after exp: still fine.
    f.verifier
        .verify(job, &st, Some(&sig), 1, 0, NOW + 300 + LEEWAY_SECS)
        .unwrap();
    let err = f
        .verifier
        .verify(job, &st, Some(&sig), 1, 0, NOW + 300 + LEEWAY_SECS + 1)
        .unwrap_err();
    assert_eq!(err, Rejection::Expired(LEEWAY_SECS + 1));
    assert!(err.to_string().contains("expired"), "{err}");
    let err = f
        .verifier
        .verify(job, &st, Some(&sig), 1, 0, NOW - LEEWAY_SECS - 1)
        .unwrap_err();
    assert_eq!(err, Rejection::NotYetValid(LEEWAY_SECS + 1));

    let dir = tempfile::tempdir().unwrap();
    let (private, _) = key_pair(dir.path(), "long", KeyType::Ed25519);
    let long = Signer::from_pem_file(&private, Duration::from_secs(7200)).unwrap();
    let mut trusted = f.verifier.trusted.clone();
    trusted.keys = Arc::new(vec![TrustedKey {
        name: "long".into(),
        ..public_of(&private)
    }]);
    let v = Verifier::new(trusted, TOPIC);
    let sig = sign(&long, job, &st, NOW);
    let err = v.verify(job, &st, Some(&sig), 1, 0, NOW).unwrap_err();
    assert_eq!(
        err,
        Rejection::TooLong {
            secs: 7200,
            max: 3600
        }
    );
    assert!(err.to_string().contains("PORTAL_SIGNATURE_MAX_TTL_SECS"));
}

fn public_of(private: &Path) -> TrustedKey {
    let public = private.with_extension("pub");
    openssl(&[
        "pkey",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    let (kind, key) = public_key(&std::fs::read(&public).unwrap()).unwrap();
    TrustedKey {
        name: "x".into(),
        kind,
        key,
    }
}

#[test]
fn a_replay_elsewhere_is_refused_and_a_reread_is_not() {
    let f = fixture(KeyType::P256);
    let st = start(true);
    let job = JobId::new();
    let sig = sign(&f.signer, job, &st, NOW);
    f.verifier.verify(job, &st, Some(&sig), 1, 40, NOW).unwrap();
    // The same record read again (after a rebalance) is fine.
    f.verifier
        .verify(job, &st, Some(&sig), 1, 40, NOW + 10)
        .unwrap();
    let err = f
        .verifier
        .verify(job, &st, Some(&sig), 1, 41, NOW + 10)
        .unwrap_err();
    assert_eq!(
        err,
        Rejection::Replayed {
            partition: 1,
            offset: 40
        }
    );
    assert!(err.to_string().contains("replayed"), "{err}");
}

#[test]
fn a_full_replay_cache_refuses_as_busy_until_entries_expire() {
    let f = fixture(KeyType::Ed25519);
    let v = Verifier::with_capacity(f.verifier.trusted.clone(), TOPIC, 2);
    let st = start(false);
    for i in 0..2 {
        let job = JobId::new();
        let sig = sign(&f.signer, job, &st, NOW);
        v.verify(job, &st, Some(&sig), 1, i, NOW).unwrap();
    }
    let job = JobId::new();
    let sig = sign(&f.signer, job, &st, NOW + 100);
    let err = v.verify(job, &st, Some(&sig), 1, 5, NOW + 100).unwrap_err();
    assert_eq!(err, Rejection::Busy(2));
    assert!(err.to_string().contains("busy"), "{err}");
    // Once the first two have expired, there is room again.
    let later = NOW + 300 + LEEWAY_SECS + 1;
    let sig = sign(&f.signer, job, &st, later);
    v.verify(job, &st, Some(&sig), 1, 5, later).unwrap();
}

#[test]
fn unusable_key_files_are_explained_without_their_contents() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = key_pair(dir.path(), "k", KeyType::Ed25519);
    let ttl = Duration::from_secs(60);
    let missing = Signer::from_pem_file(&dir.path().join("nope.pem"), ttl).unwrap_err();
    assert!(
        missing.to_string().contains("KAFKASEND_SIGNING_KEY_FILE"),
        "{missing}"
    );
    let wrong = Signer::from_pem_file(&public, ttl).unwrap_err().to_string();
    assert!(wrong.contains("is a public key"), "{wrong}");
    let rsa = dir.path().join("rsa.pem");
    std::fs::write(&rsa, crate::test_support::rsa_key_pair(dir.path()).0).unwrap();
    let err = Signer::from_pem_file(&rsa, ttl).unwrap_err().to_string();
    assert!(err.contains("RSA"), "{err}");
    let p384 = dir.path().join("p384.pem");
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-384",
        "-out",
        p384.to_str().unwrap(),
    ]);
    let err = Signer::from_pem_file(&p384, ttl).unwrap_err().to_string();
    assert!(err.contains("P-256"), "{err}");
    let pub384 = dir.path().join("p384.pub.pem");
    openssl(&[
        "pkey",
        "-in",
        p384.to_str().unwrap(),
        "-pubout",
        "-out",
        pub384.to_str().unwrap(),
    ]);
    let err = TrustedKeys::load(pub384.to_str().unwrap(), ttl)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("PORTAL_TRUSTED_KEYS") && err.contains("P-256"),
        "{err}"
    );
    let err = TrustedKeys::load(private.to_str().unwrap(), ttl)
        .unwrap_err()
        .to_string();
    assert!(err.contains("is a private key"), "{err}");
    let err = TrustedKeys::load(" , ", ttl).unwrap_err().to_string();
    assert!(err.contains("PORTAL_TRUSTED_KEYS"), "{err}");

    // The private key's bytes appear nowhere.
    let pem = std::fs::read_to_string(&private).unwrap();
    let secret_line = pem.lines().nth(1).unwrap();
    let signer = Signer::from_pem_file(&private, ttl).unwrap();
    let shown = format!("{signer:?} {wrong} {err}");
    assert!(!shown.contains(secret_line), "{shown}");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, format!("{secret_line}\n")).unwrap();
    let err = Signer::from_pem_file(&garbage, ttl)
        .unwrap_err()
        .to_string();
    assert!(!err.contains(secret_line), "{err}");
}
