//! Which server certificates a TLS connection accepts: those that chain to a
//! trusted root, and, as curl and OpenSSL do, a certificate that the operator
//! listed itself in a CA file (`PORTAL_CA_FILE`, `KAFKA_SSL_CA_FILE`).
//!
//! The second case matters because the usual self-signed certificate
//! (`openssl req -x509 ...`) comes out with `basicConstraints CA:TRUE`, and
//! webpki refuses a CA certificate presented as a server's own
//! (`CaUsedAsEndEntity`) even when that very certificate is a trusted root.
//! [`ListedCertVerifier`] accepts such a certificate when its bytes are equal
//! to one the operator listed, after checking the name it was asked for, its
//! dates and that its extended key usage (if any) allows a TLS server; any other `CaUsedAsEndEntity` gets a message that says what
//! happened and what to do.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, OtherError, SignatureScheme};

/// Verifies server certificates against `roots`, and accepts a CA
/// certificate the server presents as its own when it is one of `listed`.
pub struct ListedCertVerifier {
    /// webpki's chain, date, name and signature checks.
    inner: Arc<WebPkiServerVerifier>,
    /// The certificates of the operator's CA file, compared byte for byte.
    listed: Vec<CertificateDer<'static>>,
    /// The setting that names the CA file, for messages.
    setting: &'static str,
}

impl fmt::Debug for ListedCertVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListedCertVerifier")
            .field("listed", &self.listed.len())
            .field("setting", &self.setting)
            .finish_non_exhaustive()
    }
}

/// Why a certificate that is a CA was refused as a server's own. rustls
/// shows it with `Debug`, so both forms are the message.
struct CaAsServerCert {
    setting: &'static str,
}

impl fmt::Debug for CaAsServerCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for CaAsServerCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CaUsedAsEndEntity: the server presented a CA certificate (basicConstraints \
             CA:TRUE, as `openssl req -x509` makes by default) as its own; to trust exactly \
             that certificate, put the server's certificate itself in {}, or give the server \
             a certificate issued by that CA",
            self.setting
        )
    }
}

impl std::error::Error for CaAsServerCert {}

impl ListedCertVerifier {
    /// A verifier trusting `roots`, plus each certificate of `listed` as
    /// itself; `setting` names the CA file in messages.
    pub fn new(
        roots: rustls::RootCertStore,
        listed: Vec<CertificateDer<'static>>,
        setting: &'static str,
    ) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| format!("{setting}: no usable trusted certificate ({e})"))?;
        Ok(Self {
            inner,
            listed,
            setting,
        })
    }

    /// The client configuration for one connection's TLS, with this verifier.
    pub fn into_config_builder(
        self,
    ) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, String>
    {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup failed: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(self)))
    }
}

/// Whether webpki refused `err` because the server's certificate is a CA.
fn is_ca_used_as_end_entity(err: &Error) -> bool {
    match err {
        Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => matches!(
            inner.downcast_ref::<webpki::Error>(),
            Some(webpki::Error::CaUsedAsEndEntity)
        ),
        _ => false,
    }
}

/// Whether a certificate's extended key usage lets it serve TLS: it has no
/// such extension, or the extension lists serverAuth or
/// anyExtendedKeyUsage. A certificate that cannot be read says no.
fn allows_server_auth(cert: &[u8]) -> bool {
    const EKU: &[u8] = &[0x55, 0x1d, 0x25];
    const SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
    const ANY_USAGE: &[u8] = &[0x55, 0x1d, 0x25, 0x00];
    let Some(extensions) = extensions(cert) else {
        return false;
    };
    let mut rest = extensions;
    while !rest.is_empty() {
        let Some((0x30, extension, next)) = der(rest) else {
            return false;
        };
        rest = next;
        let Some((0x06, oid, mut value)) = der(extension) else {
            return false;
        };
        if oid != EKU {
            continue;
        }
        if let Some((0x01, _critical, after)) = der(value) {
            value = after;
        }
        let Some((0x04, octets, _)) = der(value) else {
            return false;
        };
        let Some((0x30, mut usages, _)) = der(octets) else {
            return false;
        };
        while !usages.is_empty() {
            let Some((0x06, usage, next)) = der(usages) else {
                return false;
            };
            if usage == SERVER_AUTH || usage == ANY_USAGE {
                return true;
            }
            usages = next;
        }
        return false;
    }
    true
}

/// The contents of a certificate's extensions list (empty when it has
/// none), or `None` when the certificate cannot be read that far.
fn extensions(cert: &[u8]) -> Option<&[u8]> {
    let (0x30, certificate, _) = der(cert)? else {
        return None;
    };
    let (0x30, mut tbs, _) = der(certificate)? else {
        return None;
    };
    while !tbs.is_empty() {
        let (tag, content, rest) = der(tbs)?;
        if tag == 0xa3 {
            let (0x30, list, _) = der(content)? else {
                return None;
            };
            return Some(list);
        }
        tbs = rest;
    }
    Some(&[])
}

/// One DER element at the start of `input`: its tag, its contents and what
/// follows it. Only the short tags and the definite lengths DER allows.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, rest) = rest.split_at(n);
        let len = bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (content, rest) = rest.split_at(len);
    Some((tag, content, rest))
}

impl ServerCertVerifier for ListedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(e) if is_ca_used_as_end_entity(&e) => {
                if !self
                    .listed
                    .iter()
                    .any(|c| c.as_ref() == end_entity.as_ref())
                {
                    return Err(Error::InvalidCertificate(CertificateError::Other(
                        OtherError(Arc::new(CaAsServerCert {
                            setting: self.setting,
                        })),
                    )));
                }
                // webpki checks a certificate's dates before its basic
                // constraints, so this error means the dates passed (a unit
                // test holds webpki to that). It checks the extended key
                // usage only after them, and the name last: both are
                // checked here.
                if !allows_server_auth(end_entity.as_ref()) {
                    return Err(Error::InvalidCertificate(CertificateError::InvalidPurpose));
                }
                let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
                rustls::client::verify_server_name(&parsed, server_name)?;
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{date_time_ymd, BasicConstraints, CertificateParams, IsCa, KeyPair};
    use rustls::pki_types::PrivatePkcs8KeyDer;

    /// A server certificate of our making and the server side that shows it.
    pub(crate) struct Server {
        cert: CertificateDer<'static>,
        pub(crate) pem: String,
        config: Arc<rustls::ServerConfig>,
    }

    /// A self-signed certificate for `names`, valid between the years given;
    /// `ca` gives it `basicConstraints CA:TRUE` as `openssl req -x509` does.
    pub(crate) fn self_signed(ca: bool, names: &[&str], years: (i32, i32)) -> Server {
        self_signed_for(ca, names, years, &[])
    }

    /// [`self_signed`] with the extended key usages `eku` (none: no such
    /// extension).
    fn self_signed_for(
        ca: bool,
        names: &[&str],
        years: (i32, i32),
        eku: &[rcgen::ExtendedKeyUsagePurpose],
    ) -> Server {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        // A name of its own, so that no two test certificates look like
        // issuer and subject of each other.
        static SERIAL: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("test server {n}"));
        if ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        params.extended_key_usages = eku.to_vec();
        params.not_before = date_time_ymd(years.0, 1, 1);
        params.not_after = date_time_ymd(years.1, 1, 1);
        let made = params.self_signed(&key).unwrap();
        let (cert, pem) = (made.der().clone(), made.pem());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.clone()],
                PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            )
            .unwrap();
        Server {
            cert,
            pem,
            config: Arc::new(config),
        }
    }

    /// A client that trusts exactly `listed`, as a CA file holding them.
    fn client(listed: &[&CertificateDer<'static>]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in listed {
            roots.add((*cert).clone()).unwrap();
        }
        let listed = listed.iter().map(|c| (*c).clone()).collect();
        let config = ListedCertVerifier::new(roots, listed, "PORTAL_CA_FILE")
            .unwrap()
            .into_config_builder()
            .unwrap()
            .with_no_client_auth();
        Arc::new(config)
    }

    /// A whole TLS handshake in memory; the client's error if it fails.
    pub(crate) fn handshake(
        client: Arc<rustls::ClientConfig>,
        server: &Server,
        name: &str,
    ) -> Result<(), Error> {
        let name = ServerName::try_from(name.to_string()).unwrap();
        let mut c = rustls::ClientConnection::new(client, name).unwrap();
        let mut s = rustls::ServerConnection::new(Arc::clone(&server.config)).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            s.read_tls(&mut buf.as_slice()).unwrap();
            if s.process_new_packets().is_err() {
                // The client's alert says why; read it below.
            }
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(());
            }
        }
        panic!("the handshake did not finish in 10 round trips");
    }

    #[test]
    fn a_listed_self_signed_ca_certificate_is_trusted_as_itself() {
        let server = self_signed(true, &["localhost", "127.0.0.1"], (2000, 2090));
        handshake(client(&[&server.cert]), &server, "localhost").unwrap();
        handshake(client(&[&server.cert]), &server, "127.0.0.1").unwrap();
    }

    #[test]
    fn a_self_signed_leaf_certificate_is_trusted_too() {
        let server = self_signed(false, &["localhost"], (2000, 2090));
        handshake(client(&[&server.cert]), &server, "localhost").unwrap();
    }

    #[test]
    fn a_listed_ca_certificate_still_gets_the_name_check() {
        let server = self_signed(true, &["api.example"], (2000, 2090));
        let err = handshake(client(&[&server.cert]), &server, "localhost").unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })
            ),
            "{err}"
        );
    }

    #[test]
    fn a_listed_ca_certificate_still_gets_the_date_checks() {
        // This also holds webpki to checking dates before basic
        // constraints, which `verify_server_cert` relies on.
        let expired = self_signed(true, &["localhost"], (2000, 2001));
        let err = handshake(client(&[&expired.cert]), &expired, "localhost").unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
            ),
            "{err}"
        );
        let early = self_signed(true, &["localhost"], (2090, 2091));
        let err = handshake(client(&[&early.cert]), &early, "localhost").unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidCertificate(CertificateError::NotValidYetContext { .. })
            ),
            "{err}"
        );
    }

    #[test]
    fn a_ca_certificate_not_listed_is_refused_with_an_explanation() {
        let server = self_signed(true, &["localhost"], (2000, 2090));
        let other = self_signed(true, &["localhost"], (2000, 2090));
        let err = handshake(client(&[&other.cert]), &server, "localhost").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("CaUsedAsEndEntity"), "{text}");
        assert!(text.contains("CA:TRUE"), "{text}");
        assert!(text.contains("PORTAL_CA_FILE"), "{text}");
    }

    #[test]
    fn a_server_with_an_unlisted_certificate_is_an_unknown_issuer() {
        let server = self_signed(false, &["localhost"], (2000, 2090));
        let other = self_signed(true, &["localhost"], (2000, 2090));
        let err = handshake(client(&[&other.cert]), &server, "localhost").unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidCertificate(CertificateError::UnknownIssuer)
            ),
            "{err}"
        );
    }

    #[test]
    fn a_listed_ca_certificate_must_be_meant_for_servers() {
        use rcgen::ExtendedKeyUsagePurpose::{Any, ClientAuth, ServerAuth};
        let client_only = self_signed_for(true, &["localhost"], (2000, 2090), &[ClientAuth]);
        let err = handshake(client(&[&client_only.cert]), &client_only, "localhost").unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidCertificate(CertificateError::InvalidPurpose)
            ),
            "{err}"
        );
        for eku in [vec![ClientAuth, ServerAuth], vec![Any]] {
            let server = self_signed_for(true, &["localhost"], (2000, 2090), &eku);
            handshake(client(&[&server.cert]), &server, "localhost").unwrap();
        }
    }

    #[test]
    fn der_reading_refuses_what_it_cannot_read() {
        assert!(!allows_server_auth(&[]));
        assert!(!allows_server_auth(&[0x30, 0x05, 0x30]));
        assert!(!allows_server_auth(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]));
        assert!(!allows_server_auth(&[0x30, 0x85, 1, 1, 1, 1, 1]));
        let server = self_signed(true, &["localhost"], (2000, 2090));
        let der = server.cert.as_ref();
        assert!(allows_server_auth(der));
        for cut in 0..der.len() {
            // Never a panic on a cut certificate; whatever it says, a
            // certificate must also be equal to a listed one to be used.
            let _ = allows_server_auth(&der[..cut]);
        }
    }
}
