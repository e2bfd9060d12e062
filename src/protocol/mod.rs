//! What both sides agree on: the frames on the wire, how a body is cut into
//! chunks, and how a request is signed. Pure: no Kafka client, no HTTP, no
//! command line.

pub(crate) mod body;
pub mod chunker;
pub mod digest;
pub(crate) mod request;
pub mod seal;
pub mod signing;
pub mod trace;
pub mod wire;

use serde::{Deserialize, Serialize};

/// Why a job failed: a class and a readable message. The portal's policy
/// refusals, its failed API calls and the `Error` record the client reads
/// are all this one type, so a failure keeps its class on the way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// Class of failure.
    pub category: ErrorCategory,
    /// Readable explanation.
    pub message: String,
}

/// Classes of failure reported to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCategory {
    /// Refused by the portal's policy or limits.
    Rejected,
    /// The request itself is malformed.
    BadRequest,
    /// A chunk checksum or the body digest did not match.
    Integrity,
    /// The target API could not be reached.
    UpstreamUnreachable,
    /// The target API did not answer in time.
    UpstreamTimeout,
    /// The portal could not authenticate to the API.
    Auth,
    /// A fault inside the portal.
    Internal,
}

impl std::fmt::Display for ErrorCategory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Self::Rejected => "rejected",
            Self::BadRequest => "bad request",
            Self::Integrity => "integrity",
            Self::UpstreamUnreachable => "upstream unreachable",
            Self::UpstreamTimeout => "upstream timeout",
            Self::Auth => "auth",
            Self::Internal => "internal",
        };
        f.write_str(s)
    }
}

impl Failure {
    /// A failure of `category`.
    pub(crate) fn new(category: ErrorCategory, message: impl Into<String>) -> Self {
        Self {
            category,
            message: message.into(),
        }
    }

    /// Refused by policy or limits.
    pub(crate) fn rejected(message: impl Into<String>) -> Self {
        Self::new(ErrorCategory::Rejected, message)
    }

    /// The request itself is malformed.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCategory::BadRequest, message)
    }
}
