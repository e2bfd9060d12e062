//! Throwaway certificates and keys, made at test time: a test CA with
//! server and client certificates, self-signed certificates as openssl
//! makes them, and key pairs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

// The unit tests' key makers, compiled in here too, so both kinds of test
// make keys the same way.
// Not every helper there is one the integration tests need.
#[allow(dead_code)]
#[path = "../../../src/test_support.rs"]
mod test_support;
pub use test_support::{ec_key_pair, openssl, rsa_key_pair};

/// A throwaway CA, made at test time, with a server certificate for
/// 127.0.0.1 and a client certificate, as PEM files in a temp directory.
pub struct TestPki {
    /// The temp directory holding the PEM files.
    pub dir: tempfile::TempDir,
    /// The CA certificate.
    pub ca_file: PathBuf,
    /// The client certificate, issued by the CA.
    pub client_cert_file: PathBuf,
    /// The client certificate's private key.
    pub client_key_file: PathBuf,
    ca: rustls::pki_types::CertificateDer<'static>,
    server_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    server_key_pkcs8: Vec<u8>,
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TestPki {
    /// Makes the CA, both certificates and their keys.
    pub fn new() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "KafkaSend test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().unwrap();
        let mut sp =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()]).unwrap();
        sp.distinguished_name.push(DnType::CommonName, "test API");
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = sp.signed_by(&server_key, &issuer).unwrap();

        let client_key = KeyPair::generate().unwrap();
        let mut cp = CertificateParams::new(Vec::<String>::new()).unwrap();
        cp.distinguished_name
            .push(DnType::CommonName, "kafkasend portal");
        cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = cp.signed_by(&client_key, &issuer).unwrap();

        let write = |name: &str, pem: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        Self {
            ca_file: write("ca.pem", &ca_cert.pem()),
            client_cert_file: write("client.pem", &client_cert.pem()),
            client_key_file: write("client-key.pem", &client_key.serialize_pem()),
            ca: ca_cert.der().clone(),
            server_chain: vec![server_cert.der().clone()],
            server_key_pkcs8: server_key.serialize_der(),
            dir,
        }
    }

    /// The test API's TLS settings; with `client_auth`, it demands a client
    /// certificate issued by the test CA.
    pub fn server_config(&self, client_auth: bool) -> Arc<rustls::ServerConfig> {
        let builder = rustls::ServerConfig::builder_with_provider(ring())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if client_auth {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca.clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                ring(),
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = rustls::pki_types::PrivatePkcs8KeyDer::from(self.server_key_pkcs8.clone());
        let mut config = builder
            .with_single_cert(self.server_chain.clone(), key.into())
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// A self-signed certificate for `san` made in `dir` by the usual
/// `openssl req -x509` one-liner, which marks it `CA:TRUE`: the certificate
/// file and the server TLS settings that present it.
pub fn openssl_self_signed(dir: &Path, san: &str) -> (PathBuf, Arc<rustls::ServerConfig>) {
    use rustls::pki_types::pem::PemObject;
    let stem = format!("self-signed-{}", ulid::Ulid::new());
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}-key.pem"));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=localhost",
        "-addext",
        &format!("subjectAltName={san}"),
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
    let text = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-text"]);
    assert!(
        String::from_utf8_lossy(&text).contains("CA:TRUE"),
        "openssl req -x509 made no CA:TRUE certificate; the test needs one"
    );
    let chain = vec![rustls::pki_types::CertificateDer::from_pem_file(&cert).unwrap()];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (cert, Arc::new(config))
}

/// The base64 lines of a PEM file, without its `-----BEGIN/END` lines: what
/// a leaked key would show in a log, whole or in part.
pub fn pem_body_lines(pem: &str) -> Vec<String> {
    let lines: Vec<String> = pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("-----"))
        .map(str::to_string)
        .collect();
    assert!(!lines.is_empty(), "no PEM body in {pem:?}");
    lines
}

/// A sender's ECDSA P-256 key pair written to `dir` as `sender.pem` and
/// `sender.pub.pem`: (private key PEM, private key file, public key file).
pub fn sender_key_files(dir: &Path) -> (String, PathBuf, PathBuf) {
    let (private_pem, public_pem) = ec_key_pair();
    let private = dir.join("sender.pem");
    let public = dir.join("sender.pub.pem");
    std::fs::write(&private, &private_pem).unwrap();
    std::fs::write(&public, &public_pem).unwrap();
    (private_pem, private, public)
}
