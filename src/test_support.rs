//! Helpers for tests: the unit tests of several modules, and the integration
//! tests, which include this file (`tests/integration/support/pki.rs`).

use std::path::Path;
use std::process::Command;

/// Runs `openssl ARGS` and returns its standard output; a missing or failing
/// openssl fails the test (CI checks that it is installed).
pub fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl must be installed to run these tests");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A fresh ECDSA P-256 key pair: (private key PEM in PKCS#8, public key PEM).
pub fn ec_key_pair() -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    (key.serialize_pem(), key.public_key_pem())
}

/// A fresh 2048-bit RSA key pair made by `openssl` in `dir`: (private key
/// PEM, public key PEM).
pub fn rsa_key_pair(dir: &Path) -> (String, String) {
    let private = dir.join(format!("rsa-{}.pem", ulid::Ulid::new()));
    let p = private.to_str().unwrap();
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        p,
    ]);
    let public = openssl(&["pkey", "-in", p, "-pubout"]);
    (
        std::fs::read_to_string(&private).unwrap(),
        String::from_utf8(public).unwrap(),
    )
}

/// Makes a FIFO at `path`, for tests of what refuses to open one.
#[allow(unsafe_code)]
pub fn mkfifo(path: &std::path::Path) {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a file.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
}
