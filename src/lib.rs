//! KafkaSend: call a REST API across a network boundary that only Kafka crosses.
//!
//! # Layout
//!
//! - [`send`] is the client side. It frames a request with [`chunker`] into
//!   records ([`wire`]), keyed by the job id and placed by [`partitioner`]
//!   exactly as Kafka's Java client would, produces them through [`kafka`],
//!   then follows its reply partition and verifies the streamed response,
//!   which [`output`] writes to standard output or a regular file.
//! - [`portal`] runs next to the API. Per request partition it reads records,
//!   hands them to an [`assembler`] (memory or spool file, CRC and SHA-256
//!   checked), and runs each completed job as a task that calls the API with
//!   [`http_dispatch`] (token from [`token_cache`], TLS settings from
//!   [`tls`]) and streams the response back, chunked by [`chunker`].
//! - [`signing`] lets `send` sign each start record and a portal refuse
//!   requests not signed by a key it trusts, altered, expired or replayed.
//! - [`policy`] decides which requests may reach the API.
//! - [`config`] resolves flags, environment, file and defaults for both;
//!   [`config_show`] prints the result and where each value came from.
//!   Every key, certificate and config file is read through [`file_read`].
//! - [`completions`] writes shell completion scripts; [`health_check`] is the
//!   probe a container's HEALTHCHECK runs.
//! - [`admin`] serves a portal's `/healthz`, `/readyz` and `/metrics`;
//!   [`logging`] writes its log lines as text or JSON.
//! - [`kafka_security`] holds the TLS and SASL settings every Kafka
//!   connection uses: rskafka's in [`kafka`], and the connections of our own
//!   in [`broker_conn`] that [`group`] speaks the consumer-group protocol on
//!   and [`fetcher`] reads partitions over (read_committed, every codec,
//!   batches decoded by [`record_batch`]).
#![warn(missing_docs)]

pub mod admin;
pub mod assembler;
pub mod broker_conn;
pub mod chunker;
pub mod completions;
pub mod config;
pub mod config_show;
pub mod fetcher;
pub mod file_read;
pub mod group;
pub mod health_check;
pub mod http_dispatch;
pub mod kafka;
pub mod kafka_security;
pub mod logging;
pub mod memory;
pub mod output;
pub mod partitioner;
pub mod policy;
pub mod portal;
pub mod progress;
pub mod record_batch;
pub mod send;
pub mod server_trust;
pub mod signing;
#[cfg(test)]
mod test_support;
pub mod tls;
pub mod token_cache;
pub mod ui;
pub mod wire;
