//! What both sides agree on: the frames on the wire, how a body is cut into
//! chunks, and how a request is signed. Pure: no Kafka client, no HTTP, no
//! command line.

pub mod chunker;
pub mod signing;
pub mod wire;
