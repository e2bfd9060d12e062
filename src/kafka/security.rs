//! How KafkaSend reaches its brokers: plaintext or TLS, with or without SASL.
//!
//! One [`KafkaSecurity`] value, resolved from the settings at start, is handed
//! to both Kafka connections a process makes: rskafka's (in `kafka`) and the
//! group coordinator's (in `broker_conn`, for `group`). Both therefore trust
//! the same roots and authenticate as the same user with the same mechanism.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;

use crate::util::file_read::{self, Kind};
use crate::util::server_trust::ListedCertVerifier;

/// `KAFKA_SECURITY_PROTOCOL`: Kafka's own names for the four combinations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecurityProtocol {
    /// Neither TLS nor SASL.
    #[default]
    Plaintext,
    /// TLS, no SASL.
    Ssl,
    /// SASL over plain TCP.
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// Whether connections are wrapped in TLS.
    pub(crate) fn uses_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    /// Whether connections authenticate with SASL.
    pub(crate) fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

impl FromStr for SecurityProtocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_uppercase().as_str() {
            "PLAINTEXT" => Ok(Self::Plaintext),
            "SSL" => Ok(Self::Ssl),
            "SASL_PLAINTEXT" => Ok(Self::SaslPlaintext),
            "SASL_SSL" => Ok(Self::SaslSsl),
            _ => Err(format!(
                "'{s}' is not one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"
            )),
        }
    }
}

impl fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Plaintext => "PLAINTEXT",
            Self::Ssl => "SSL",
            Self::SaslPlaintext => "SASL_PLAINTEXT",
            Self::SaslSsl => "SASL_SSL",
        })
    }
}

/// `KAFKA_SASL_MECHANISM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// RFC 4616: the password travels as is, so only over TLS in earnest.
    Plain,
    /// RFC 7677.
    ScramSha256,
    /// SCRAM with SHA-512.
    ScramSha512,
}

impl SaslMechanism {
    /// The mechanism's registered name, as the broker lists it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl FromStr for SaslMechanism {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_uppercase().as_str() {
            "PLAIN" => Ok(Self::Plain),
            "SCRAM-SHA-256" => Ok(Self::ScramSha256),
            "SCRAM-SHA-512" => Ok(Self::ScramSha512),
            _ => Err(format!(
                "'{s}' is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"
            )),
        }
    }
}

impl fmt::Display for SaslMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Who to authenticate as, and how.
#[derive(Clone)]
pub struct SaslCredentials {
    /// The mechanism.
    pub mechanism: SaslMechanism,
    /// The user name.
    pub username: String,
    /// The password; never printed.
    pub password: String,
}

impl fmt::Debug for SaslCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslCredentials")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Transport security of every Kafka connection, resolved.
#[derive(Clone, Default)]
pub struct KafkaSecurity {
    /// What `KAFKA_SECURITY_PROTOCOL` asked for.
    pub protocol: SecurityProtocol,
    /// The TLS client setup; `Some` exactly when the protocol uses TLS.
    /// Shared, as rustls caches sessions in it.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The SASL user; `Some` exactly when the protocol uses SASL.
    pub sasl: Option<SaslCredentials>,
}

impl fmt::Debug for KafkaSecurity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSecurity")
            .field("protocol", &self.protocol)
            .field("tls", &self.tls.is_some())
            .field("sasl", &self.sasl)
            .finish()
    }
}

impl KafkaSecurity {
    /// The SASL setup for rskafka, when SASL is on.
    pub(crate) fn rskafka_sasl(&self) -> Option<rskafka::client::SaslConfig> {
        use rskafka::client::{Credentials, SaslConfig};
        self.sasl.as_ref().map(|s| {
            let c = Credentials::new(s.username.clone(), s.password.clone());
            match s.mechanism {
                SaslMechanism::Plain => SaslConfig::Plain(c),
                SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(c),
                SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(c),
            }
        })
    }
}

/// A TLS client setup that trusts the bundled web PKI roots plus, when given,
/// every certificate in the PEM file `ca_file` (`KAFKA_SSL_CA_FILE`), each
/// also as the broker's own certificate (see [`crate::util::server_trust`]).
pub(crate) fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let mut listed = Vec::new();
    if let Some(path) = ca_file {
        let pem = file_read::read("KAFKA_SSL_CA_FILE", path, Kind::Certificates)
            .map_err(|e| e.to_string())?;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| {
                format!(
                    "KAFKA_SSL_CA_FILE: {} is not a valid PEM file: {e}",
                    path.display()
                )
            })?;
            roots.add(cert.clone()).map_err(|e| {
                format!(
                    "KAFKA_SSL_CA_FILE: a certificate in {} is not usable as a CA: {e}",
                    path.display()
                )
            })?;
            listed.push(cert);
        }
        if listed.is_empty() {
            return Err(format!(
                "KAFKA_SSL_CA_FILE: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ));
        }
    }
    let config = ListedCertVerifier::new(roots, listed, "KAFKA_SSL_CA_FILE")?
        .into_config_builder()?
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn names_parse_both_ways() {
        for p in ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] {
            assert_eq!(p.parse::<SecurityProtocol>().unwrap().to_string(), p);
        }
        for m in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
            assert_eq!(m.parse::<SaslMechanism>().unwrap().to_string(), m);
        }
        assert_eq!(
            "sasl_ssl".parse::<SecurityProtocol>(),
            Ok(SecurityProtocol::SaslSsl)
        );
        assert!("TLS".parse::<SecurityProtocol>().is_err());
        assert!("GSSAPI".parse::<SaslMechanism>().is_err());
    }

    #[test]
    fn debug_hides_the_password() {
        let s = KafkaSecurity {
            protocol: SecurityProtocol::SaslSsl,
            tls: None,
            sasl: Some(SaslCredentials {
                mechanism: SaslMechanism::ScramSha512,
                username: "alice".into(),
                password: "hunter2-very-secret".into(),
            }),
        };
        let shown = format!("{s:?}");
        assert!(shown.contains("alice"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn ca_file_problems_name_the_setting() {
        let missing = tls_config(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(missing.contains("KAFKA_SSL_CA_FILE"), "{missing}");
        let mut not_pem = tempfile::NamedTempFile::new().unwrap();
        writeln!(not_pem, "just some text").unwrap();
        let err = tls_config(Some(not_pem.path())).unwrap_err();
        assert!(
            err.contains("KAFKA_SSL_CA_FILE") && err.contains("no PEM certificate"),
            "{err}"
        );
        assert!(tls_config(None).is_ok());
    }
}
