//! Kafka error codes as the people reading our logs know them.
//!
//! Brokers answer with a number; `kafka-protocol`'s [`ResponseError`] knows
//! which is which, but spells the names in Rust's CamelCase. Kafka's own
//! documentation, broker logs and tools say `NOT_COORDINATOR`, so that is
//! what an operator will search for.
//!
//! Some answers are normal for a few seconds while a broker starts, a topic
//! is created or a group gets its coordinator: [`is_startup_state`] names
//! them, and [`log_level`] keeps them at DEBUG until they have lasted
//! [`SETTLE_TIME`].

use std::fmt::{self, Write};
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use rskafka::client::error::Error as RsError;

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

impl Named {
    /// The same name for an error rskafka reports with its own type.
    pub(crate) fn of_rskafka(e: rskafka::client::error::ProtocolError) -> Self {
        use rskafka::client::error::ProtocolError;
        // rskafka keeps its code table private but can go from a code to its
        // error; Kafka's codes are few, so looking the error up costs little,
        // and only on the way to an error message. Every error rskafka knows
        // is in the range (a test checks), so -1 is never reached.
        let code = match e {
            ProtocolError::Unknown(code) => code,
            e => (-1..=i16::from(u8::MAX))
                .find(|&c| ProtocolError::new(c) == Some(e))
                .unwrap_or(-1),
        };
        Self(ResponseError::try_from_code(code).unwrap_or(ResponseError::Unknown(code)))
    }
}

/// rskafka's error in our words: a broker's error code by Kafka's name
/// (rskafka shows its enum's Debug spelling and its request context), and
/// retries that ran out with the error they ended on.
pub(crate) fn described(e: &RsError) -> String {
    match e {
        RsError::ServerError {
            protocol_error,
            error_message,
            ..
        } => {
            let name = Named::of_rskafka(*protocol_error);
            match error_message.as_deref().filter(|m| !m.is_empty()) {
                Some(m) => format!("{name}: {m}"),
                None => name.to_string(),
            }
        }
        RsError::RetryFailed(rskafka::BackoffError::DeadlineExceded { deadline, source }) => {
            match source.downcast_ref::<RsError>() {
                Some(last) => format!(
                    "still failing after {} s of retries: {}",
                    deadline.as_secs(),
                    described(last)
                ),
                None => e.to_string(),
            }
        }
        other => other.to_string(),
    }
}

/// How long a start-up state may last before it is worth a warning: a
/// broker that has just started, or a group or topic just made, leaves them
/// within a second or two (measured on a running broker: a new group's
/// coordinator answered after about 1 s).
pub(crate) const SETTLE_TIME: Duration = Duration::from_secs(5);

/// Whether a broker answers `e` while it, a topic or a group's coordinator
/// is still starting: the state passes on its own, and retrying is the cure.
pub(crate) fn is_startup_state(e: ResponseError) -> bool {
    matches!(
        e,
        ResponseError::CoordinatorLoadInProgress
            | ResponseError::CoordinatorNotAvailable
            | ResponseError::NotCoordinator
            | ResponseError::LeaderNotAvailable
            | ResponseError::NotLeaderOrFollower
            | ResponseError::UnknownTopicOrPartition
    )
}

/// The level to log a failure at that will be retried: DEBUG for a start-up
/// state (`startup_state`) while the failures have lasted less than
/// [`SETTLE_TIME`] (`failing_for`, since the first of the run), WARN otherwise.
pub(crate) fn log_level(startup_state: bool, failing_for: Duration) -> log::Level {
    if startup_state && failing_for < SETTLE_TIME {
        log::Level::Debug
    } else {
        log::Level::Warn
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
    fn rskafka_errors_get_the_same_names() {
        use rskafka::client::error::ProtocolError as P;
        assert_eq!(
            Named::of_rskafka(P::LeaderNotAvailable).to_string(),
            "LEADER_NOT_AVAILABLE (Kafka error 5)"
        );
        assert_eq!(
            Named::of_rskafka(P::CoordinatorLoadInProgress).to_string(),
            "COORDINATOR_LOAD_IN_PROGRESS (Kafka error 14)"
        );
        assert_eq!(
            Named::of_rskafka(P::Unknown(4242)).to_string(),
            "unknown Kafka error 4242"
        );
        // Every error rskafka knows keeps its own number.
        for code in -1..=i16::from(u8::MAX) {
            if let Some(e) = P::new(code) {
                assert_eq!(Named::of_rskafka(e).0.code(), code, "{e:?}");
            }
        }
    }

    #[test]
    fn startup_states_are_quiet_only_while_young() {
        use log::Level::{Debug, Warn};
        for code in [3, 5, 6, 14, 15, 16] {
            let e = ResponseError::try_from_code(code).unwrap_or(ResponseError::Unknown(code));
            assert!(is_startup_state(e), "{}", Named(e));
        }
        // Not start-up states: settings or data problems, rejoins, and
        // what this build does not know.
        for code in [1, 10, 22, 25, 27, 29, 30, 58, 4242] {
            let e = ResponseError::try_from_code(code).unwrap_or(ResponseError::Unknown(code));
            assert!(!is_startup_state(e), "{}", Named(e));
        }
        assert_eq!(log_level(true, Duration::ZERO), Debug);
        assert_eq!(log_level(true, Duration::from_millis(4999)), Debug);
        assert_eq!(log_level(true, SETTLE_TIME), Warn);
        assert_eq!(log_level(true, Duration::from_secs(3600)), Warn);
        assert_eq!(log_level(false, Duration::ZERO), Warn);
        assert_eq!(log_level(false, Duration::from_secs(1)), Warn);
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
