//! A connection of our own to one broker, outside rskafka: TCP, then TLS and
//! SASL as [`KafkaSecurity`] says, then framed requests and responses with
//! `kafka-protocol` as the codec.
//!
//! `group` talks to the group coordinator over it, and `kafka::connect`
//! opens one to a bootstrap broker before handing over to rskafka, so that a
//! certificate or password problem fails at once with one clear line instead
//! of after rskafka's retries.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::{ParseResponseErrorCode, ResponseError};
use kafka_protocol::messages::api_versions_request::ApiVersionsRequest;
use kafka_protocol::messages::sasl_authenticate_request::SaslAuthenticateRequest;
use kafka_protocol::messages::sasl_handshake_request::SaslHandshakeRequest;
use kafka_protocol::messages::{RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::kafka::code::Named;
use crate::kafka::security::{KafkaSecurity, SaslCredentials};

/// SaslHandshake v1: the exchange itself then goes in SaslAuthenticate requests.
const V_SASL_HANDSHAKE: i16 = 1;
/// SaslAuthenticate v1, served by every broker since Kafka 1.1.
const V_SASL_AUTHENTICATE: i16 = 1;

/// Largest response accepted.
const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// Why a connection or one exchange on it failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnError {
    /// The TCP connection failed or broke.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// A request or response could not be encoded or decoded.
    #[error("protocol codec: {0}")]
    Codec(String),
    /// No answer in time.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// The TLS handshake failed: wrong CA, wrong name, or not a TLS port.
    #[error("TLS handshake with the Kafka broker at {addr} failed: {detail}; check KAFKA_SSL_CA_FILE (the CA that signed the broker's certificate) and that {addr} is a TLS listener (KAFKA_SECURITY_PROTOCOL)")]
    Tls {
        /// Broker address.
        addr: String,
        /// What rustls said.
        detail: String,
    },
    /// The broker rejected the user name or password.
    #[error("Kafka authentication failed for user '{user}' ({mechanism}): wrong username or password (KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD)")]
    AuthFailed {
        /// User name tried.
        user: String,
        /// Mechanism used.
        mechanism: &'static str,
    },
    /// A TLS listener reached without TLS.
    #[error("the Kafka broker at {addr} answered with TLS; set KAFKA_SECURITY_PROTOCOL to SSL or SASL_SSL")]
    TlsListener {
        /// Broker address.
        addr: String,
    },
    /// Any other SASL problem: mechanism not enabled, not a SASL listener, ...
    #[error("Kafka SASL with the broker at {addr} failed: {detail}")]
    Sasl {
        /// Broker address.
        addr: String,
        /// What went wrong, and what to check.
        detail: String,
    },
}

impl ConnError {
    /// Whether retrying cannot help: the settings are wrong.
    pub(crate) fn is_config_problem(&self) -> bool {
        matches!(
            self,
            Self::Tls { .. }
                | Self::TlsListener { .. }
                | Self::AuthFailed { .. }
                | Self::Sasl { .. }
        )
    }
}

fn codec(e: impl std::fmt::Display) -> ConnError {
    ConnError::Codec(e.to_string())
}

/// A byte stream to a broker, plain or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for T {}

/// One framed, secured connection to a broker.
pub(crate) struct BrokerConn {
    addr: String,
    stream: Box<dyn Stream>,
    correlation: i32,
    client_id: String,
    limit: Duration,
}

impl std::fmt::Debug for BrokerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerConn")
            .field("addr", &self.addr)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl BrokerConn {
    /// Connects to `addr` (`host:port`), shakes hands with TLS and
    /// authenticates with SASL as `security` says; each step within `limit`.
    pub(crate) async fn open(
        addr: &str,
        client_id: &str,
        limit: Duration,
        security: &KafkaSecurity,
    ) -> Result<Self, ConnError> {
        let tcp = tokio::time::timeout(limit, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnError::Timeout("connecting to the broker"))??;
        tcp.set_nodelay(true)?;
        let stream: Box<dyn Stream> = match &security.tls {
            None => Box::new(tcp),
            Some(tls) => {
                let tls_err = |detail: String| ConnError::Tls {
                    addr: addr.to_string(),
                    detail,
                };
                let name = ServerName::try_from(host_of(addr).to_string())
                    .map_err(|e| tls_err(format!("'{}' is not a host name: {e}", host_of(addr))))?;
                let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::clone(tls));
                // Only what rustls rejects (a certificate, a protocol
                // mismatch) is a settings problem; a slow or dropped
                // connection is worth retrying like any other.
                let tls_stream = tokio::time::timeout(limit, connector.connect(name, tcp))
                    .await
                    .map_err(|_| ConnError::Timeout("the TLS handshake"))?
                    .map_err(|e| match e.kind() {
                        std::io::ErrorKind::InvalidData => tls_err(e.to_string()),
                        _ => ConnError::Io(e),
                    })?;
                Box::new(tls_stream)
            }
        };
        let mut conn = Self {
            addr: addr.to_string(),
            stream,
            correlation: 0,
            client_id: client_id.to_string(),
            limit,
        };
        if let Some(sasl) = &security.sasl {
            conn.authenticate(addr, sasl).await?;
        }
        Ok(conn)
    }

    /// ApiVersions v0: what the broker serves, and proof that it speaks
    /// Kafka on this connection.
    pub(crate) async fn api_versions(
        &mut self,
    ) -> Result<kafka_protocol::messages::ApiVersionsResponse, ConnError> {
        self.call(
            "ApiVersions",
            &ApiVersionsRequest::default(),
            0,
            Duration::ZERO,
        )
        .await
    }

    /// Sends one request and reads its response, within the connection's
    /// limit plus `extra_wait` (for requests the broker may hold, like JoinGroup).
    pub(crate) async fn call<R: Request>(
        &mut self,
        api: &'static str,
        req: &R,
        version: i16,
        extra_wait: Duration,
    ) -> Result<R::Response, ConnError> {
        self.correlation = self.correlation.wrapping_add(1);
        let correlation = self.correlation;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation)
            .with_client_id(Some(StrBytes::from_string(self.client_id.clone())));
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        header
            .encode(&mut buf, R::header_version(version))
            .map_err(codec)?;
        req.encode(&mut buf, version).map_err(codec)?;
        let len = i32::try_from(buf.len() - 4).map_err(codec)?;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        let exchange = async {
            self.stream.write_all(&buf).await?;
            self.stream.flush().await?;
            let size = self.stream.read_i32().await?;
            // A TLS alert or handshake record (type 21 or 22, version 3.x)
            // where a Kafka size should be: we spoke plain TCP to a TLS port.
            if matches!(size.to_be_bytes(), [0x15 | 0x16, 0x03, _, _]) {
                return Err(ConnError::TlsListener {
                    addr: self.addr.clone(),
                });
            }
            let size = usize::try_from(size)
                .ok()
                .filter(|s| *s <= MAX_RESPONSE)
                .ok_or_else(|| {
                    ConnError::Codec(format!(
                        "a {api} response of {size} bytes is more than the {MAX_RESPONSE} bytes accepted"
                    ))
                })?;
            // Read into spare capacity: a fetch response of many MiB is
            // not worth zeroing first.
            let mut body = BytesMut::with_capacity(size);
            while body.len() < size {
                let want = (size - body.len()) as u64;
                if (&mut self.stream).take(want).read_buf(&mut body).await? == 0 {
                    return Err(ConnError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
            }
            Ok::<_, ConnError>(body.freeze())
        };
        let mut bytes = tokio::time::timeout(self.limit + extra_wait, exchange)
            .await
            .map_err(|_| ConnError::Timeout(api))??;
        let rh = ResponseHeader::decode(&mut bytes, R::Response::header_version(version))
            .map_err(codec)?;
        if rh.correlation_id != correlation {
            return Err(ConnError::Codec(format!(
                "{api}: correlation id {} answered {correlation}",
                rh.correlation_id
            )));
        }
        R::Response::decode(&mut bytes, version).map_err(codec)
    }

    /// SaslHandshake, then the mechanism's messages in SaslAuthenticate
    /// requests until rsasl's client session is finished.
    async fn authenticate(&mut self, addr: &str, sasl: &SaslCredentials) -> Result<(), ConnError> {
        use kafka_protocol::messages::SaslAuthenticateResponse;
        use rsasl::prelude::{Mechname, SASLClient, SASLConfig};

        let mechanism = sasl.mechanism.name();
        let sasl_err = |detail: String| ConnError::Sasl {
            addr: addr.to_string(),
            detail,
        };
        let handshake = self
            .call(
                "SaslHandshake",
                &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism)),
                V_SASL_HANDSHAKE,
                Duration::ZERO,
            )
            .await
            .map_err(|e| match e {
                // A TLS listener reached without TLS, or a broker that hung up.
                // It may be restarting; retrying is right, but say what else
                // it could be if it goes on.
                ConnError::Io(io) => ConnError::Io(std::io::Error::new(
                    io.kind(),
                    format!(
                        "the broker closed the connection during the SASL handshake ({io}); if this goes on, check KAFKA_SECURITY_PROTOCOL (SASL_SSL needs TLS)"
                    ),
                )),
                other => other,
            })?;
        match handshake.error_code.err() {
            None => {}
            Some(ResponseError::UnsupportedSaslMechanism) => {
                let offered: Vec<&str> = handshake.mechanisms.iter().map(|m| m.as_str()).collect();
                return Err(sasl_err(format!(
                    "the broker does not offer {mechanism} (it offers: {}); check KAFKA_SASL_MECHANISM",
                    offered.join(", ")
                )));
            }
            Some(ResponseError::IllegalSaslState) => {
                return Err(sasl_err(
                    "the listener does not expect SASL; check KAFKA_SECURITY_PROTOCOL".into(),
                ))
            }
            Some(other) => return Err(sasl_err(format!("SaslHandshake failed: {}", Named(other)))),
        }

        let config =
            SASLConfig::with_credentials(None, sasl.username.clone(), sasl.password.clone())
                .map_err(|e| sasl_err(format!("cannot set up {mechanism}: {e}")))?;
        let wanted = Mechname::parse(mechanism.as_bytes())
            .map_err(|e| sasl_err(format!("{mechanism}: {e}")))?;
        let mut session = SASLClient::new(config)
            .start_suggested(&[wanted])
            .map_err(|e| sasl_err(format!("cannot start {mechanism}: {e}")))?;
        let mut received: Option<Bytes> = None;
        // PLAIN takes one message, SCRAM two; anything longer is a broken peer.
        for _ in 0..4 {
            let mut to_send = Vec::new();
            let state = session
                .step(received.as_deref(), &mut to_send)
                .map_err(|e| sasl_err(format!("{mechanism} exchange failed: {e}")))?;
            if state.has_sent_message() {
                let resp: SaslAuthenticateResponse = self
                    .call(
                        "SaslAuthenticate",
                        &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(to_send)),
                        V_SASL_AUTHENTICATE,
                        Duration::ZERO,
                    )
                    .await?;
                match resp.error_code.err() {
                    None => {}
                    Some(ResponseError::SaslAuthenticationFailed) => {
                        if let Some(m) = &resp.error_message {
                            log::debug!("Kafka SASL: the broker said: {}", m.as_str());
                        }
                        return Err(ConnError::AuthFailed {
                            user: sasl.username.clone(),
                            mechanism,
                        });
                    }
                    Some(other) => {
                        return Err(sasl_err(format!(
                            "SaslAuthenticate failed: {}",
                            Named(other)
                        )))
                    }
                }
                received = Some(resp.auth_bytes);
            }
            if state.is_finished() {
                log::debug!(
                    "Kafka SASL: authenticated to {addr} as '{}' with {mechanism}",
                    sasl.username
                );
                return Ok(());
            }
        }
        Err(sasl_err(format!("{mechanism} exchange did not finish")))
    }
}

/// The host part of `host:port`, without IPv6 brackets.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("127.0.0.1:9094"), "127.0.0.1");
        assert_eq!(host_of("broker.example:9094"), "broker.example");
        assert_eq!(host_of("[::1]:9094"), "::1");
    }
}
