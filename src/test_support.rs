//! Helpers for the unit tests of several modules.

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
