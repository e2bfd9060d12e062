//! Heartbeats in a task of their own.
//!
//! A member's liveness must not wait for anything else the member does: a
//! commit to a slow coordinator, a fetch, an API call, or finding the
//! coordinator again. So the heartbeats run in a task that owns its own
//! connection to the coordinator (a copy of the `Member` with no connection,
//! `Member::heartbeater`) and tells whoever serves the generation, through a
//! bounded channel, only what it must act on: the group rebalances, the
//! member must rejoin, or it was fenced. Any member type that can beat
//! (`Beater`) runs on it; the KIP-848 member is meant to, too.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::kafka::code;
use crate::kafka::group::{Beat, GroupError, Member};

/// What the heartbeat task reports to the loop that serves a generation.
#[derive(Debug)]
pub(crate) enum GroupSignal {
    /// The group is rebalancing: revoke and join again. Heartbeats go on,
    /// so the session lasts while jobs in flight finish.
    Rebalance,
    /// The member was dropped or its generation is over (the error says
    /// which); heartbeats stopped.
    Rejoin(GroupError),
    /// The member can no longer be one (`GroupError::is_fatal`); heartbeats
    /// stopped.
    Fatal(GroupError),
}

/// Something that can tell its group coordinator it is alive.
pub(crate) trait Beater: Send + 'static {
    /// One heartbeat.
    fn beat(&mut self) -> impl Future<Output = Result<Beat, GroupError>> + Send;
    /// The group's id, for logs.
    fn group_id(&self) -> &str;
    /// Drops the coordinator connection after a beat was cut off midway,
    /// so the next beat does not read the answer to the abandoned one.
    fn reset(&mut self);
}

impl Beater for Member {
    fn beat(&mut self) -> impl Future<Output = Result<Beat, GroupError>> + Send {
        self.heartbeat()
    }

    fn group_id(&self) -> &str {
        Member::group_id(self)
    }

    fn reset(&mut self) {
        self.forget_coordinator();
    }
}

/// Signals one generation can hold before the task stops reporting; each
/// kind is sent at most once, so this never fills.
const SIGNALS: usize = 4;

/// The running heartbeat task; dropping it stops the heartbeats.
pub(crate) struct Heartbeats {
    task: JoinHandle<()>,
    signals: mpsc::Receiver<GroupSignal>,
}

impl Heartbeats {
    /// Starts beating every `every`, each beat given at most `timeout`.
    pub(crate) fn start(beater: impl Beater, every: Duration, timeout: Duration) -> Self {
        let (tx, signals) = mpsc::channel(SIGNALS);
        let task = tokio::spawn(beat_loop(beater, every, timeout, tx));
        Self { task, signals }
    }

    /// The next signal; pending forever once the task has stopped and every
    /// signal was read, so a `select!` arm on it stays quiet.
    pub(crate) async fn signal(&mut self) -> GroupSignal {
        match self.signals.recv().await {
            Some(s) => s,
            None => std::future::pending().await,
        }
    }
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn beat_loop(
    mut beater: impl Beater,
    every: Duration,
    timeout: Duration,
    tx: mpsc::Sender<GroupSignal>,
) {
    let mut tick = tokio::time::interval(every);
    // A beat that took long is followed by the next at once, not by a burst
    // of the ones it missed.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rebalance_told = false;
    // When beats began to fail: a coordinator that moves or restarts answers
    // with start-up states for a moment (`code::log_level`).
    let mut failing: Option<Instant> = None;
    loop {
        tick.tick().await;
        let result = match tokio::time::timeout(timeout, beater.beat()).await {
            Ok(r) => r,
            Err(_) => {
                beater.reset();
                Err(GroupError::Timeout("Heartbeat"))
            }
        };
        let signal = match result {
            Ok(Beat::Ok) => {
                failing = None;
                continue;
            }
            Ok(Beat::Rebalance) => {
                failing = None;
                if rebalance_told {
                    continue;
                }
                rebalance_told = true;
                GroupSignal::Rebalance
            }
            Err(e) if e.is_fatal() => GroupSignal::Fatal(e),
            Err(e) if e.needs_rejoin() => GroupSignal::Rejoin(e),
            Err(e) => {
                let since = *failing.get_or_insert_with(Instant::now);
                log::log!(
                    code::log_level(e.is_startup_state(), since.elapsed()),
                    "heartbeat to group {} failed: {e}; retrying",
                    beater.group_id()
                );
                continue;
            }
        };
        let last = !matches!(signal, GroupSignal::Rebalance);
        // Never blocks: each kind is sent once and the channel holds them all.
        if tx.try_send(signal).is_err() || last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use kafka_protocol::error::ResponseError;

    use super::*;

    /// A beater whose answers are scripted, and which notes when it beat.
    struct Scripted {
        script: Arc<Mutex<Vec<Result<Beat, GroupError>>>>,
        beats: Arc<Mutex<Vec<tokio::time::Instant>>>,
        hang: Option<Duration>,
        resets: Arc<Mutex<u32>>,
    }

    impl Beater for Scripted {
        fn beat(&mut self) -> impl Future<Output = Result<Beat, GroupError>> + Send {
            let beats = Arc::clone(&self.beats);
            let script = Arc::clone(&self.script);
            let hang = self.hang.take();
            async move {
                beats
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(tokio::time::Instant::now());
                if let Some(h) = hang {
                    tokio::time::sleep(h).await;
                }
                let mut s = script.lock().unwrap_or_else(|e| e.into_inner());
                if s.is_empty() {
                    Ok(Beat::Ok)
                } else {
                    s.remove(0)
                }
            }
        }

        fn group_id(&self) -> &str {
            "g"
        }

        fn reset(&mut self) {
            *self.resets.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        }
    }

    type Beats = Arc<Mutex<Vec<tokio::time::Instant>>>;

    fn scripted(
        script: Vec<Result<Beat, GroupError>>,
        hang: Option<Duration>,
    ) -> (Scripted, Beats) {
        let beats = Arc::new(Mutex::new(Vec::new()));
        let s = Scripted {
            script: Arc::new(Mutex::new(script)),
            beats: Arc::clone(&beats),
            hang,
            resets: Arc::new(Mutex::new(0)),
        };
        (s, beats)
    }

    fn times(beats: &Beats) -> Vec<tokio::time::Instant> {
        beats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    const SEC: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn beats_keep_their_pace_while_the_caller_is_stuck() {
        let (b, beats) = scripted(vec![], None);
        let t0 = tokio::time::Instant::now();
        let hb = Heartbeats::start(b, 3 * SEC, SEC);
        // The generation's loop is stuck (a commit, a fetch) for 30 s and
        // never polls the heartbeats: they go on regardless.
        tokio::time::sleep(30 * SEC + Duration::from_millis(1)).await;
        let at: Vec<u64> = times(&beats).iter().map(|t| (*t - t0).as_secs()).collect();
        assert_eq!(at, vec![0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30]);
        drop(hb);
        tokio::time::sleep(30 * SEC).await;
        assert_eq!(
            times(&beats).len(),
            11,
            "dropping the handle stops the beats"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_beat_is_cut_off_and_the_next_one_follows() {
        let (b, beats) = scripted(vec![], Some(60 * SEC));
        let resets = Arc::clone(&b.resets);
        let t0 = tokio::time::Instant::now();
        let mut hb = Heartbeats::start(b, 3 * SEC, SEC);
        tokio::time::sleep(7 * SEC + Duration::from_millis(1)).await;
        let at: Vec<u64> = times(&beats).iter().map(|t| (*t - t0).as_secs()).collect();
        // The first beat hangs and is given up after 1 s; a timeout is no
        // reason to rejoin, so nothing is signalled.
        assert_eq!(at, vec![0, 3, 6]);
        // Its connection is not used again: an answer may still be on it.
        assert_eq!(*resets.lock().unwrap_or_else(|e| e.into_inner()), 1);
        let quiet = tokio::time::timeout(SEC, hb.signal()).await;
        assert!(quiet.is_err(), "unexpected signal {quiet:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_rebalance_is_told_once_and_the_beats_go_on() {
        let (b, beats) = scripted(
            vec![Ok(Beat::Ok), Ok(Beat::Rebalance), Ok(Beat::Rebalance)],
            None,
        );
        let mut hb = Heartbeats::start(b, 3 * SEC, SEC);
        let s = tokio::time::timeout(10 * SEC, hb.signal()).await;
        assert!(matches!(s, Ok(GroupSignal::Rebalance)), "{s:?}");
        tokio::time::sleep(20 * SEC).await;
        assert!(times(&beats).len() >= 8, "beats stopped after a rebalance");
        let again = tokio::time::timeout(SEC, hb.signal()).await;
        assert!(again.is_err(), "rebalance told twice: {again:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn fenced_and_dropped_members_are_told_and_stop_beating() {
        let fenced = GroupError::Fenced {
            group: "g".into(),
            instance_id: "p1".into(),
            api: "Heartbeat",
        };
        let (b, beats) = scripted(vec![Ok(Beat::Ok), Err(fenced)], None);
        let mut hb = Heartbeats::start(b, 3 * SEC, SEC);
        let s = tokio::time::timeout(10 * SEC, hb.signal()).await;
        assert!(
            matches!(s, Ok(GroupSignal::Fatal(GroupError::Fenced { .. }))),
            "{s:?}"
        );
        tokio::time::sleep(30 * SEC).await;
        assert_eq!(times(&beats).len(), 2);

        let gone = GroupError::Kafka {
            api: "Heartbeat",
            error: ResponseError::UnknownMemberId,
        };
        let (b, beats) = scripted(vec![Err(gone)], None);
        let mut hb = Heartbeats::start(b, 3 * SEC, SEC);
        let s = tokio::time::timeout(10 * SEC, hb.signal()).await;
        assert!(matches!(s, Ok(GroupSignal::Rejoin(_))), "{s:?}");
        tokio::time::sleep(30 * SEC).await;
        assert_eq!(times(&beats).len(), 1);
        // The task has ended: the signal arm stays pending, not busy.
        assert!(tokio::time::timeout(SEC, hb.signal()).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn passing_failures_are_retried_at_the_next_tick() {
        let (b, beats) = scripted(
            vec![
                Err(GroupError::Kafka {
                    api: "Heartbeat",
                    error: ResponseError::CoordinatorLoadInProgress,
                }),
                Err(GroupError::Timeout("Heartbeat")),
            ],
            None,
        );
        let mut hb = Heartbeats::start(b, 3 * SEC, SEC);
        tokio::time::sleep(9 * SEC + Duration::from_millis(1)).await;
        assert_eq!(times(&beats).len(), 4);
        assert!(tokio::time::timeout(SEC, hb.signal()).await.is_err());
    }
}
