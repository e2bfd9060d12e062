//! Calls through rskafka that outlive a broker restart or a leader election.
//!
//! rskafka retries a failed call on its own, but some failures it cannot
//! cure. A partition client finds its leader in the client's cached
//! metadata, and only a request for every topic (`list_topics`, or the
//! client's start) refreshes that cache. When that request was answered
//! while a broker shut down, the cache says the partition has no leader,
//! and the partition client retries `LEADER_NOT_AVAILABLE` against the same
//! cached answer until its deadline, however soon the broker is back. So
//! rskafka gets a short deadline of its own ([`ROUND`]) and [`Retry::run`]
//! does the rest: it refreshes the metadata between rounds, backs off and
//! tries again while the failure is one that passes (a leader being
//! elected, a connection refused or reset), until the operation's deadline.
//!
//! A produce call tried again may land twice (rskafka's own retries could
//! always do that); both receivers drop a frame they already have.

use std::future::Future;
use std::time::Duration;

use rskafka::client::error::{Error as RsError, RequestError};
use rskafka::BackoffError;
use tokio::time::Instant;

use crate::kafka::code::{self, described, Named};

/// How long rskafka may retry a call by itself (its backoff sleeps, summed)
/// before [`Retry::run`] looks at the failure, refreshes the metadata and
/// tries again: long enough for a connection or two to a leader that is
/// moving, short enough that a stale cached answer costs about a second.
pub(crate) const ROUND: Duration = Duration::from_secs(1);

/// How a call is tried again while the cluster is passing through a state
/// that cures itself: the pauses between rounds. The deadline is the
/// operation's, given to [`Retry::run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retry {
    /// Pause after the first failed round; doubled after each one.
    pub first_pause: Duration,
    /// Longest pause between two rounds.
    pub longest_pause: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        // A broker restarting is back within seconds: a pause of at most
        // one second finds it soon after, and costs it little.
        Self {
            first_pause: Duration::from_millis(100),
            longest_pause: Duration::from_secs(1),
        }
    }
}

/// Why [`Retry::run`] gave up.
#[derive(Debug)]
pub(crate) enum Failed {
    /// A failure that does not pass on its own; or, when the deadline came
    /// between rounds, the last failure under rskafka's "retries ran out"
    /// with how long it lasted.
    Error(RsError),
    /// The deadline came during a call.
    TimedOut,
}

impl Retry {
    /// Runs `op` until it succeeds, fails with an error that does not pass
    /// on its own ([`passes`]), or `limit` has passed; calls `refresh`
    /// (rskafka's metadata request) before each new round. `action` names
    /// the call in the log.
    pub(crate) async fn run<T, F, Fut, R, RFut, U>(
        &self,
        action: &'static str,
        limit: Duration,
        mut op: F,
        mut refresh: R,
    ) -> Result<T, Failed>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, RsError>>,
        R: FnMut() -> RFut,
        RFut: Future<Output = Result<U, RsError>>,
    {
        let started = Instant::now();
        let deadline = started + limit;
        let mut pause = self.first_pause;
        loop {
            let error = match tokio::time::timeout_at(deadline, op()).await {
                Err(_) => return Err(Failed::TimedOut),
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => innermost(e),
            };
            if !passes(&error) {
                return Err(Failed::Error(error));
            }
            let now = Instant::now();
            if now + pause >= deadline {
                return Err(Failed::Error(RsError::RetryFailed(
                    BackoffError::DeadlineExceded {
                        deadline: now - started,
                        source: Box::new(error),
                    },
                )));
            }
            log::debug!(
                "Kafka {action}: {}; refreshing the metadata, trying again in {} ms",
                described(&error),
                pause.as_millis()
            );
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(self.longest_pause);
            match tokio::time::timeout_at(deadline, refresh()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => log::debug!("Kafka metadata refresh: {}", described(&e)),
                Err(_) => return Err(Failed::TimedOut),
            }
        }
    }
}

/// The failure under rskafka's "retries ran out": the error its last try
/// ended on, where its type allows taking it out.
pub(crate) fn innermost(e: RsError) -> RsError {
    match e {
        RsError::RetryFailed(BackoffError::DeadlineExceded { deadline, source }) => {
            match source.downcast::<RsError>() {
                Ok(inner) => innermost(*inner),
                Err(source) => match source.downcast::<RequestError>() {
                    Ok(inner) => RsError::Request(*inner),
                    Err(source) => {
                        RsError::RetryFailed(BackoffError::DeadlineExceded { deadline, source })
                    }
                },
            }
        }
        other => other,
    }
}

/// Whether a failure passes on its own, so trying again within the
/// deadline is the cure: a broker's start-up state (no leader yet, not the
/// leader any more, a coordinator loading: `code::is_startup_state`), a
/// connection refused or lost, or rskafka's own attempts to reach any
/// broker running out. A settings problem (SASL), a request the broker
/// cannot read, or any other answer is final.
pub(crate) fn passes(e: &RsError) -> bool {
    use rskafka::ConnectionError as C;
    match e {
        RsError::ServerError { protocol_error, .. } => {
            code::is_startup_state(Named::of_rskafka(*protocol_error).0)
        }
        RsError::Request(r) => lost(r),
        RsError::Connection(C::SaslFailed(_)) => false,
        RsError::Connection(C::Metadata(r)) => lost(r),
        RsError::Connection(C::Transport { .. } | C::RetryFailed(_) | C::SyncVersions(_)) => true,
        RsError::RetryFailed(_) => true,
        _ => false,
    }
}

/// Whether a request failed because its connection did.
fn lost(e: &RequestError) -> bool {
    matches!(e, RequestError::IO(_) | RequestError::Poisoned(_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rskafka::client::error::{ProtocolError, RequestContext};
    use std::sync::atomic::{AtomicU32, Ordering};

    fn server(protocol_error: ProtocolError) -> RsError {
        RsError::ServerError {
            protocol_error,
            error_message: None,
            request: RequestContext::Partition("t".into(), 0),
            response: None,
            is_virtual: true,
        }
    }

    fn ran_out(source: Box<dyn std::error::Error + Send + Sync>) -> RsError {
        RsError::RetryFailed(BackoffError::DeadlineExceded {
            deadline: ROUND,
            source,
        })
    }

    fn reset() -> RsError {
        RsError::Request(RequestError::IO(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )))
    }

    fn quick() -> Retry {
        Retry {
            first_pause: Duration::from_millis(5),
            longest_pause: Duration::from_millis(20),
        }
    }

    #[test]
    fn leaderless_and_lost_connections_pass_answers_do_not() {
        for e in [
            ProtocolError::LeaderNotAvailable,
            ProtocolError::NotLeaderOrFollower,
            ProtocolError::UnknownTopicOrPartition,
            ProtocolError::CoordinatorLoadInProgress,
        ] {
            assert!(passes(&server(e)), "{e:?}");
        }
        for e in [
            ProtocolError::MessageTooLarge,
            ProtocolError::TopicAuthorizationFailed,
            ProtocolError::InvalidRecord,
            ProtocolError::PolicyViolation,
        ] {
            assert!(!passes(&server(e)), "{e:?}");
        }
        assert!(passes(&reset()));
        assert!(!passes(&RsError::InvalidResponse("garbled".into())));
    }

    #[test]
    fn the_error_under_spent_retries_is_the_one_judged() {
        let leaderless = ran_out(Box::new(server(ProtocolError::LeaderNotAvailable)));
        let inner = innermost(leaderless);
        assert!(matches!(
            inner,
            RsError::ServerError {
                protocol_error: ProtocolError::LeaderNotAvailable,
                ..
            }
        ));
        // Nested, and a bare RequestError (rskafka's metadata retries).
        let nested = ran_out(Box::new(ran_out(Box::new(server(
            ProtocolError::MessageTooLarge,
        )))));
        assert!(!passes(&innermost(nested)));
        let io = ran_out(Box::new(RequestError::IO(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        ))));
        assert!(matches!(
            innermost(io),
            RsError::Request(RequestError::IO(_))
        ));
        // Another type (every broker refused): kept, and it passes.
        let other = innermost(ran_out("every broker refused".into()));
        assert!(matches!(other, RsError::RetryFailed(_)));
        assert!(passes(&other));
    }

    #[tokio::test]
    async fn a_leader_that_comes_back_is_found_after_a_refresh() {
        let tries = AtomicU32::new(0);
        let refreshes = AtomicU32::new(0);
        let got = quick()
            .run(
                "producing a record",
                Duration::from_secs(5),
                || async {
                    match tries.fetch_add(1, Ordering::SeqCst) {
                        0 => Err(ran_out(Box::new(server(ProtocolError::LeaderNotAvailable)))),
                        1 => Err(reset()),
                        n => Ok(n),
                    }
                },
                || async {
                    refreshes.fetch_add(1, Ordering::SeqCst);
                    Err::<(), _>(reset())
                },
            )
            .await;
        assert_eq!(got.unwrap(), 2);
        assert_eq!(
            refreshes.load(Ordering::SeqCst),
            2,
            "a refresh before each new round, failed ones too"
        );
    }

    #[tokio::test]
    async fn a_final_answer_is_not_tried_again() {
        let tries = AtomicU32::new(0);
        let got: Result<(), _> = quick()
            .run(
                "producing a record",
                Duration::from_secs(5),
                || async {
                    tries.fetch_add(1, Ordering::SeqCst);
                    Err(server(ProtocolError::TopicAuthorizationFailed))
                },
                || async { Ok::<(), RsError>(()) },
            )
            .await;
        assert_eq!(tries.load(Ordering::SeqCst), 1);
        let Err(Failed::Error(e)) = got else {
            panic!("{got:?}");
        };
        assert_eq!(described(&e), "TOPIC_AUTHORIZATION_FAILED (Kafka error 29)");
    }

    #[tokio::test]
    async fn a_leader_that_stays_away_fails_at_the_deadline_naming_the_state() {
        let limit = Duration::from_millis(150);
        let started = std::time::Instant::now();
        let got: Result<(), _> = quick()
            .run(
                "opening a partition",
                limit,
                || async { Err(server(ProtocolError::LeaderNotAvailable)) },
                || async { Ok::<(), RsError>(()) },
            )
            .await;
        let took = started.elapsed();
        assert!(took < limit + Duration::from_millis(500), "{took:?}");
        let Err(Failed::Error(e)) = got else {
            panic!("{got:?}");
        };
        let text = described(&e);
        assert!(
            text.starts_with("still failing after ")
                && text.ends_with(" s of retries: LEADER_NOT_AVAILABLE (Kafka error 5)"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_call_that_hangs_ends_at_the_deadline() {
        let got: Result<(), _> = quick()
            .run(
                "producing a record",
                Duration::from_millis(50),
                std::future::pending,
                || async { Ok::<(), RsError>(()) },
            )
            .await;
        assert!(matches!(got, Err(Failed::TimedOut)), "{got:?}");
    }
}
