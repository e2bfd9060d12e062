//! KafkaSend: call a REST API across a network boundary that only Kafka crosses.
//!
//! # Layout
//!
//! Folders by role; dependencies run one way,
//! `cli -> {send, portal} -> kafka -> logging -> protocol -> util`, and
//! `send` and `portal` never use each other (`layering` checks it):
//!
//! - [`cli`] is the only module that knows the command line, the TOML file
//!   and environment-variable names; it resolves them into each role's
//!   settings and prints.
//! - [`send`] is the client role: it frames a request, produces it, follows
//!   its reply partition and writes the verified response.
//! - [`portal`] runs next to the API: it reads request partitions, assembles
//!   and checks each job, calls the API and streams the answer back.
//! - [`kafka`] is the only module that talks Kafka (rskafka, kafka-protocol).
//! - [`protocol`] is what both sides agree on: frames, chunking, signing.
//! - [`util`] serves every layer, `logging` (the log format) the layers
//!   above [`protocol`], and [`alloc`] is `main`'s allocator tuning.
//! - `telemetry` (beside `logging`) holds the spans both roles record for
//!   OpenTelemetry export and their OTLP encoding.
// The rules every module keeps. No unsafe code, except the allocator
// tuning in `alloc` (and a test helper), each allowed where it stands with
// the reason; every public item says what it is.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod alloc;
pub mod cli;
pub mod kafka;
#[cfg(test)]
mod layering;
pub(crate) mod logging;
pub mod portal;
pub mod protocol;
pub mod send;
pub(crate) mod telemetry;
#[cfg(test)]
mod test_support;
pub(crate) mod util;
