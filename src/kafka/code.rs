//! Kafka error codes as the people reading our logs know them.
//!
//! Brokers answer with a number; `kafka-protocol`'s [`ResponseError`] knows
//! which is which, but spells the names in Rust's CamelCase. Kafka's own
//! documentation, broker logs and tools say `NOT_COORDINATOR`, so that is
//! what an operator will search for.

use std::fmt::{self, Write};

use kafka_protocol::error::ResponseError;

/// A broker's error as Kafka names it, with its number:
/// `NOT_COORDINATOR (Kafka error 16)`; a code this build does not know
/// shows its number only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Named(pub ResponseError);

impl fmt::Display for Named {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let ResponseError::Unknown(code) = self.0 {
            return write!(f, "unknown Kafka error {code}");
        }
        // Every known name is plain CamelCase words (no acronyms, no digits),
        // so a break before each capital gives Kafka's spelling.
        for (i, c) in self.0.to_string().chars().enumerate() {
            if i > 0 && c.is_ascii_uppercase() {
                f.write_char('_')?;
            }
            f.write_char(c.to_ascii_uppercase())?;
        }
        write!(f, " (Kafka error {})", self.0.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(code: i16) -> String {
        ResponseError::try_from_code(code)
            .map(|e| Named(e).to_string())
            .unwrap_or_default()
    }

    #[test]
    fn codes_read_like_kafkas_own_names() {
        assert_eq!(shown(0), "");
        assert_eq!(shown(16), "NOT_COORDINATOR (Kafka error 16)");
        assert_eq!(shown(15), "COORDINATOR_NOT_AVAILABLE (Kafka error 15)");
        assert_eq!(shown(-1), "UNKNOWN_SERVER_ERROR (Kafka error -1)");
        assert_eq!(shown(3), "UNKNOWN_TOPIC_OR_PARTITION (Kafka error 3)");
        assert_eq!(shown(58), "SASL_AUTHENTICATION_FAILED (Kafka error 58)");
        assert_eq!(shown(79), "MEMBER_ID_REQUIRED (Kafka error 79)");
    }

    #[test]
    fn unknown_codes_keep_their_number() {
        assert_eq!(shown(1000), "unknown Kafka error 1000");
        assert_eq!(shown(i16::MIN), "unknown Kafka error -32768");
        assert_eq!(shown(-2), "unknown Kafka error -2");
    }

    #[test]
    fn every_code_gets_a_name_of_capitals_and_underscores() {
        for code in -1..=i16::from(u8::MAX) {
            let Some(e) = ResponseError::try_from_code(code) else {
                continue;
            };
            let text = Named(e).to_string();
            let suffix = format!("Kafka error {code}");
            assert!(text.ends_with(&suffix) || text.ends_with(&format!("{suffix})")));
            if let ResponseError::Unknown(_) = e {
                continue;
            }
            let name = text.split(' ').next().unwrap_or_default();
            assert!(
                !name.is_empty()
                    && !name.starts_with('_')
                    && !name.contains("__")
                    && name.chars().all(|c| c.is_ascii_uppercase() || c == '_'),
                "{text}"
            );
        }
    }
}
