//! The Kafka flags both sides share, resolved into [`crate::kafka::Config`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;

use crate::cli::defaults;
use crate::cli::file::{pick, FileConfig};
use crate::kafka;
use crate::kafka::security::{KafkaSecurity, SaslCredentials, SaslMechanism, SecurityProtocol};
use crate::protocol::chunker::{DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE};

/// Kafka settings shared by both sides.
#[derive(Debug, Args, Clone, Default)]
pub struct KafkaArgs {
    /// Kafka brokers, `host:port[,host:port...]`
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS", value_name = "HOSTS")]
    pub bootstrap_servers: Option<String>,
    /// Topic requests travel on
    #[arg(long, env = "KAFKA_REQUEST_TOPIC", value_name = "TOPIC")]
    pub request_topic: Option<String>,
    /// Topic responses travel on
    #[arg(long, env = "KAFKA_RESPONSE_TOPIC", value_name = "TOPIC")]
    pub response_topic: Option<String>,
    /// Seconds to wait for the broker to connect or acknowledge
    #[arg(long, env = "KAFKA_TIMEOUT_SECS", value_name = "SECS")]
    pub kafka_timeout_secs: Option<u64>,
    /// Chunk payload size in bytes; must fit the broker's message.max.bytes
    #[arg(long, env = "KAFKASEND_CHUNK_SIZE", value_name = "BYTES")]
    pub chunk_size: Option<usize>,
    /// PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL
    #[arg(long, env = "KAFKA_SECURITY_PROTOCOL", value_name = "PROTOCOL")]
    pub security_protocol: Option<String>,
    /// PEM file of CA certificates trusted for the brokers, besides the bundled web PKI roots
    #[arg(long, env = "KAFKA_SSL_CA_FILE", value_name = "FILE")]
    pub ssl_ca_file: Option<PathBuf>,
    /// SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (required with SASL_*)
    #[arg(long, env = "KAFKA_SASL_MECHANISM", value_name = "MECHANISM")]
    pub sasl_mechanism: Option<String>,
    /// SASL user name
    #[arg(long, env = "KAFKA_SASL_USERNAME", value_name = "USER")]
    pub sasl_username: Option<String>,
    /// SASL password (prefer the environment variable)
    #[arg(
        long,
        env = "KAFKA_SASL_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub sasl_password: Option<String>,
    /// TOML file with settings (keys are the flag names with '_' for '-')
    #[arg(long, env = "KAFKASEND_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Resolves the Kafka settings both sides share; `client_id` names the
/// role to the brokers.
pub(crate) fn resolve_kafka(
    a: &KafkaArgs,
    f: &FileConfig,
    client_id: &str,
) -> anyhow::Result<kafka::Config> {
    let servers = pick(&a.bootstrap_servers, &f.bootstrap_servers)
        .unwrap_or_else(|| defaults::BOOTSTRAP_SERVERS.into());
    if servers.split(',').all(|s| s.trim().is_empty()) {
        bail!("KAFKA_BOOTSTRAP_SERVERS is empty; name at least one broker as host:port");
    }
    for s in servers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let port_ok = s
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !port_ok {
            bail!("KAFKA_BOOTSTRAP_SERVERS: '{s}' is not host:port");
        }
    }
    let request_topic =
        pick(&a.request_topic, &f.request_topic).unwrap_or_else(|| defaults::REQUEST_TOPIC.into());
    let response_topic = pick(&a.response_topic, &f.response_topic)
        .unwrap_or_else(|| defaults::RESPONSE_TOPIC.into());
    check_topic("KAFKA_REQUEST_TOPIC", &request_topic)?;
    check_topic("KAFKA_RESPONSE_TOPIC", &response_topic)?;
    if request_topic == response_topic {
        bail!(
            "KAFKA_REQUEST_TOPIC and KAFKA_RESPONSE_TOPIC must differ (both are '{request_topic}')"
        );
    }
    let secs =
        pick(&a.kafka_timeout_secs, &f.kafka_timeout_secs).unwrap_or(defaults::KAFKA_TIMEOUT_SECS);
    if !(1..=3600).contains(&secs) {
        bail!("KAFKA_TIMEOUT_SECS must be between 1 and 3600, not {secs}");
    }
    let chunk_size = pick(&a.chunk_size, &f.chunk_size).unwrap_or(DEFAULT_CHUNK_SIZE);
    if !(1024..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        bail!("KAFKASEND_CHUNK_SIZE must be between 1024 and {MAX_CHUNK_SIZE} bytes, not {chunk_size}");
    }
    Ok(kafka::Config {
        bootstrap_servers: servers,
        request_topic,
        response_topic,
        timeout: Duration::from_secs(secs),
        chunk_size,
        security: resolve_security(a, f)?,
        client_id: client_id.into(),
    })
}

/// Checks that the TLS and SASL settings fit the protocol and together, and
/// loads the CA file, so mistakes show at start with the setting named.
fn resolve_security(a: &KafkaArgs, f: &FileConfig) -> anyhow::Result<KafkaSecurity> {
    let protocol: SecurityProtocol = match pick(&a.security_protocol, &f.security_protocol) {
        Some(p) => p
            .parse()
            .map_err(|e| anyhow::anyhow!("KAFKA_SECURITY_PROTOCOL: {e}"))?,
        None => SecurityProtocol::default(),
    };
    let ca_file = pick(&a.ssl_ca_file, &f.ssl_ca_file);
    let mechanism = pick(&a.sasl_mechanism, &f.sasl_mechanism);
    let username = pick(&a.sasl_username, &f.sasl_username);
    let password = pick(&a.sasl_password, &f.sasl_password);

    let tls = if protocol.uses_tls() {
        Some(crate::kafka::security::tls_config(ca_file.as_deref()).map_err(anyhow::Error::msg)?)
    } else {
        if ca_file.is_some() {
            bail!("KAFKA_SSL_CA_FILE is set but KAFKA_SECURITY_PROTOCOL is {protocol}, which does not use TLS; set KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL, or unset KAFKA_SSL_CA_FILE");
        }
        None
    };

    let sasl = if protocol.uses_sasl() {
        let mechanism: SaslMechanism = mechanism
            .with_context(|| format!("KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_MECHANISM (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"))?
            .parse()
            .map_err(|e| anyhow::anyhow!("KAFKA_SASL_MECHANISM: {e}"))?;
        let username = username.filter(|u| !u.is_empty()).with_context(|| {
            format!("KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME")
        })?;
        let password = password.filter(|p| !p.is_empty()).with_context(|| {
            format!("KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_PASSWORD")
        })?;
        Some(SaslCredentials {
            mechanism,
            username,
            password,
        })
    } else {
        let stray: Vec<&str> = [
            ("KAFKA_SASL_MECHANISM", mechanism.is_some()),
            ("KAFKA_SASL_USERNAME", username.is_some()),
            ("KAFKA_SASL_PASSWORD", password.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| *name)
        .collect();
        if !stray.is_empty() {
            bail!(
                "{} set but KAFKA_SECURITY_PROTOCOL is {protocol}, which does not use SASL; set KAFKA_SECURITY_PROTOCOL=SASL_SSL (or SASL_PLAINTEXT), or unset them",
                stray.join(", ") + if stray.len() == 1 { " is" } else { " are" }
            );
        }
        None
    };
    Ok(KafkaSecurity {
        protocol,
        tls,
        sasl,
    })
}

fn check_topic(setting: &str, t: &str) -> anyhow::Result<()> {
    let valid = !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if !valid {
        bail!("{setting}: '{t}' is not a valid Kafka topic name (letters, digits, '.', '_', '-'; at most 249)");
    }
    Ok(())
}
