//! Integration tests: the real `kafkasend` binary, a real Kafka broker, real
//! HTTP servers on loopback. One test binary, so it links once; the fixtures
//! the tests share are in [`support`], one module per concern.

mod admin;
mod attempts;
mod broker_restarts;
mod cli;
mod client;
mod compression;
mod consumer_group;
mod content_type;
mod curl_request;
mod curl_response;
mod digest;
mod files;
mod group;
mod incremental;
mod kafka_messages;
mod kafka_read;
mod kafka_security;
mod leaks;
mod limits;
mod oauth;
mod overlap;
mod pipeline;
mod policy;
mod pushback;
mod python;
mod relay;
mod resume;
mod routes;
mod sealed;
mod sealed_portal;
mod sealed_send;
mod secrets;
mod ship;
mod signing;
mod static_member;
mod support;
mod tls;
mod trace;
