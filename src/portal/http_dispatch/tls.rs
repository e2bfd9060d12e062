//! TLS of the portal's HTTPS calls (the target API and the token endpoint):
//! which servers it trusts and which certificate it shows.
//!
//! Trusted are the bundled web PKI roots (`webpki-roots`, the same on every
//! host), the system's CA store when it has one (so a CA an operator
//! installed system-wide keeps working), and every certificate in
//! `PORTAL_CA_FILE`, each of which is also trusted as the server's own
//! certificate (a self-signed one, see [`crate::util::server_trust`]). With `PORTAL_CLIENT_CERT_FILE` and
//! `PORTAL_CLIENT_KEY_FILE` the portal presents a client certificate (mTLS).
//! Everything is read and checked once, at start; a file that cannot be used
//! is an error naming its setting. The private key never appears in a
//! message, a log line or `Debug` output.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::util::file_read::{self, Kind, ReadError};
use crate::util::server_trust::ListedCertVerifier;

/// A TLS setting that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{setting}: {detail}")]
pub(crate) struct TlsError {
    /// The setting (environment variable) at fault.
    pub(crate) setting: &'static str,
    /// What is wrong, without any key material.
    pub(crate) detail: String,
}

impl From<ReadError> for TlsError {
    fn from(e: ReadError) -> Self {
        Self::new(e.setting, e.detail())
    }
}

impl TlsError {
    fn new(setting: &'static str, detail: impl Into<String>) -> Self {
        Self {
            setting,
            detail: detail.into(),
        }
    }
}

/// The client TLS configuration of the portal's HTTPS calls, built at start.
#[derive(Clone)]
pub(crate) struct ApiTls {
    /// Roots, protocol versions and the optional client identity.
    config: Arc<rustls::ClientConfig>,
    /// What the trust store and identity hold, for logs and `Debug`.
    summary: String,
}

impl std::fmt::Debug for ApiTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiTls")
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

impl ApiTls {
    /// Trust the web PKI and system roots plus `ca_file`; present the client
    /// certificate when `client_cert` and `client_key` are given (both or neither).
    pub(crate) fn load(
        ca_file: Option<&Path>,
        client_cert: Option<&Path>,
        client_key: Option<&Path>,
    ) -> Result<Self, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let web_pki = roots.len();
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            log::debug!("system CA store: {e}");
        }
        let (system, _unusable) = roots.add_parsable_certificates(native.certs);
        let mut summary = format!("{web_pki} web PKI roots, {system} system roots");
        let mut listed = Vec::new();
        if let Some(path) = ca_file {
            let certs = read_certs("PORTAL_CA_FILE", path)?;
            listed.extend(certs.iter().cloned());
            for (i, cert) in certs.into_iter().enumerate() {
                roots.add(cert).map_err(|e| {
                    TlsError::new(
                        "PORTAL_CA_FILE",
                        format!(
                            "certificate {} in {} is not a usable CA certificate: {e}",
                            i + 1,
                            path.display()
                        ),
                    )
                })?;
            }
            summary.push_str(&format!(", CAs from {}", path.display()));
        }
        let builder = ListedCertVerifier::new(roots, listed, "PORTAL_CA_FILE")
            .and_then(ListedCertVerifier::into_config_builder)
            .map_err(|e| TlsError::new("PORTAL_CA_FILE", e))?;
        let config = match (client_cert, client_key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert_path), Some(key_path)) => {
                let chain = read_certs("PORTAL_CLIENT_CERT_FILE", cert_path)?;
                let key = read_private_key("PORTAL_CLIENT_KEY_FILE", key_path)?;
                summary.push_str(&format!(", client certificate {}", cert_path.display()));
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    TlsError::new(
                        "PORTAL_CLIENT_KEY_FILE",
                        format!(
                            "the key in {} cannot be used with the certificate in {} ({e})",
                            key_path.display(),
                            cert_path.display()
                        ),
                    )
                })?
            }
            (Some(_), None) => {
                return Err(TlsError::new(
                    "PORTAL_CLIENT_KEY_FILE",
                    "not set, but PORTAL_CLIENT_CERT_FILE is; a client certificate needs its private key",
                ))
            }
            (None, Some(_)) => {
                return Err(TlsError::new(
                    "PORTAL_CLIENT_CERT_FILE",
                    "not set, but PORTAL_CLIENT_KEY_FILE is; set both for a client certificate, or neither",
                ))
            }
        };
        Ok(Self {
            config: Arc::new(config),
            summary,
        })
    }

    /// A copy of the rustls configuration, for one HTTPS connector.
    pub(crate) fn client_config(&self) -> rustls::ClientConfig {
        (*self.config).clone()
    }

    /// What is trusted and presented, in words.
    pub(crate) fn summary(&self) -> &str {
        &self.summary
    }
}

/// Every certificate in a PEM file; at least one.
pub(crate) fn read_certs(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = file_read::read(setting, path, Kind::Certificates)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            TlsError::new(
                setting,
                format!("{} is not a PEM certificate file: {e}", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(TlsError::new(
            setting,
            format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ),
        ));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1, unencrypted).
/// Errors never quote the file.
pub(crate) fn read_private_key(
    setting: &'static str,
    path: &Path,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = file_read::read(setting, path, Kind::Key)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        let why = match e {
            pem::Error::NoItemsFound => {
                "holds no unencrypted PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"
            }
            _ => "is not a valid PEM file",
        };
        TlsError::new(setting, format!("{} {why}", path.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(content: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content.as_bytes()).unwrap();
        f
    }

    #[test]
    fn defaults_trust_the_web_pki() {
        let tls = ApiTls::load(None, None, None).unwrap();
        assert!(tls.summary().contains("web PKI"), "{}", tls.summary());
        assert!(!tls.client_config().client_auth_cert_resolver.has_certs());
    }

    #[test]
    fn unusable_files_name_the_setting() {
        let garbage = file("not pem at all\n");
        let missing = Path::new("/nonexistent/ca.pem");
        let check = |ca, cert, key, setting: &str| {
            let err = ApiTls::load(ca, cert, key).unwrap_err();
            assert_eq!(err.setting, setting, "{err}");
            assert!(err.to_string().starts_with(setting), "{err}");
        };
        check(Some(missing), None, None, "PORTAL_CA_FILE");
        check(Some(garbage.path()), None, None, "PORTAL_CA_FILE");
        check(None, Some(garbage.path()), None, "PORTAL_CLIENT_KEY_FILE");
        check(None, None, Some(garbage.path()), "PORTAL_CLIENT_CERT_FILE");
        check(
            None,
            Some(missing),
            Some(garbage.path()),
            "PORTAL_CLIENT_CERT_FILE",
        );
    }

    #[test]
    fn a_bad_key_file_is_not_quoted() {
        let secret = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA!!\n-----END PRIVATE KEY-----\n";
        let f = file(secret);
        let err = read_private_key("PORTAL_CLIENT_KEY_FILE", f.path()).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("PORTAL_CLIENT_KEY_FILE"), "{text}");
        assert!(!text.contains("c2VjcmV0"), "{text}");
        let f = file(
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
        );
        let text = read_private_key("PORTAL_CLIENT_KEY_FILE", f.path())
            .unwrap_err()
            .to_string();
        assert!(text.contains("no unencrypted PEM private key"), "{text}");
    }

    #[test]
    fn both_ca_file_settings_trust_a_listed_self_signed_certificate() {
        let server =
            crate::util::server_trust::tests::self_signed(true, &["localhost"], (2000, 2090));
        let mut file = tempfile::NamedTempFile::new().unwrap();
        Write::write_all(&mut file, server.pem.as_bytes()).unwrap();
        let kafka = crate::kafka::security::tls_config(Some(file.path())).unwrap();
        crate::util::server_trust::tests::handshake(kafka, &server, "localhost").unwrap();
        let api = ApiTls::load(Some(file.path()), None, None).unwrap();
        crate::util::server_trust::tests::handshake(
            std::sync::Arc::new(api.client_config()),
            &server,
            "localhost",
        )
        .unwrap();
        // Without the file, the same certificate is an unknown issuer.
        let bare = crate::kafka::security::tls_config(None).unwrap();
        assert!(crate::util::server_trust::tests::handshake(bare, &server, "localhost").is_err());
    }
}
