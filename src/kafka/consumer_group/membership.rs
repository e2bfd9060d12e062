//! A consumer-protocol member in a task of its own.
//!
//! Under the consumer protocol the heartbeat is the membership: it joins,
//! reports what is owned and brings back what to start and stop. It must
//! never wait for what the member's user does (a commit, a fetch, an API
//! call, a partition being drained), so the member lives in a task that
//! does nothing but beat, and talks to its user through two bounded
//! channels: changes out, "these partitions stopped" and "leave" in. The
//! member id and epoch go out on a watch, for commits on a connection of
//! their own (`Committer`).

use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant as TokioInstant;

use crate::kafka::code;
use crate::kafka::consumer_group::{Change, ConsumerMember, Identity, UNRELEASED_PATIENCE};
use crate::kafka::group::GroupError;

/// What the member tells its user.
#[derive(Debug)]
pub(crate) enum Event {
    /// Partitions to start and to stop (report each stop with
    /// `Membership::stopped`).
    Change(Change),
    /// The member joined the group (its epoch is no longer 0); its
    /// partitions, if any yet, came in the `Change` before.
    Joined,
    /// The member can no longer be one (`GroupError::is_fatal`); the task
    /// has ended. Partitions still served must be stopped without a commit.
    Fatal(GroupError),
}

enum Ctl {
    Stopped(Vec<i32>),
    Leave(oneshot::Sender<Result<(), GroupError>>),
}

/// Changes one user can fall behind by: one per heartbeat at most, and the
/// user reads them as they come, so this is never reached in practice; a
/// full channel holds the heartbeat back rather than lose a change.
const EVENTS: usize = 256;

/// The handle of a member's task.
#[derive(Debug)]
pub(crate) struct Membership {
    events: mpsc::Receiver<Event>,
    ctl: mpsc::Sender<Ctl>,
    identity: watch::Receiver<Identity>,
    task: JoinHandle<()>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Membership {
    /// Starts beating for `member`: the first heartbeat joins at once.
    pub(crate) fn start(member: ConsumerMember) -> Self {
        let (events_tx, events) = mpsc::channel(EVENTS);
        let (ctl_tx, ctl) = mpsc::channel(EVENTS);
        let (identity_tx, identity) = watch::channel(member.identity());
        let task = tokio::spawn(beat_loop(member, events_tx, ctl, identity_tx));
        Self {
            events,
            ctl: ctl_tx,
            identity,
            task,
        }
    }

    /// The next change; `None` once the task has ended.
    pub(crate) async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Reports `partitions` stopped: no job of theirs runs any more.
    pub(crate) async fn stopped(&self, partitions: Vec<i32>) {
        let _ = self.ctl.send(Ctl::Stopped(partitions)).await;
    }

    /// Who commits, as it changes.
    pub(crate) fn identity_watch(&self) -> watch::Receiver<Identity> {
        self.identity.clone()
    }

    /// Leaves the group (call once every partition stopped), waiting up to
    /// `limit`.
    pub(crate) async fn leave(self, limit: Duration) -> Result<(), GroupError> {
        let (tx, rx) = oneshot::channel();
        if self.ctl.send(Ctl::Leave(tx)).await.is_err() {
            return Ok(());
        }
        let left = tokio::time::timeout(limit, rx).await;
        let left = left.map(|r| r.unwrap_or(Ok(())));
        left.unwrap_or(Err(GroupError::Timeout("leaving the group")))
    }
}

async fn beat_loop(
    mut member: ConsumerMember,
    events: mpsc::Sender<Event>,
    mut ctl: mpsc::Receiver<Ctl>,
    identity: watch::Sender<Identity>,
) {
    let mut next = TokioInstant::now();
    // Failed beats in a row, and since when: a coordinator that moves or
    // restarts answers with start-up states for a moment (`code::log_level`).
    let mut failures = 0u32;
    let mut failing: Option<Instant> = None;
    let mut unreleased_told = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {
                let limit = member.request_timeout();
                let result = match tokio::time::timeout(limit, member.heartbeat()).await {
                    Ok(r) => r,
                    Err(_) => {
                        member.forget_coordinator();
                        Err(GroupError::Timeout("ConsumerGroupHeartbeat"))
                    }
                };
                match result {
                    Ok(change) => {
                        failures = 0;
                        failing = None;
                        let was = identity.borrow().epoch;
                        identity.send_if_modified(|who| {
                            let now = member.identity();
                            let changed = *who != now;
                            *who = now;
                            changed
                        });
                        if !change.is_empty() && events.send(Event::Change(change)).await.is_err() {
                            return;
                        }
                        if was <= 0 && member.epoch() > 0 && events.send(Event::Joined).await.is_err() {
                            return;
                        }
                        next = TokioInstant::now() + pace(&member, failures);
                    }
                    Err(e) if e.is_fatal() => {
                        let _ = events.send(Event::Fatal(e)).await;
                        return;
                    }
                    Err(e) => {
                        failures += 1;
                        let since = *failing.get_or_insert_with(Instant::now);
                        if is_unreleased(&e) {
                            // A static portal restarted after a crash: the
                            // broker keeps its id for the dead one's session.
                            // Said once; the wait ends by itself or fatally.
                            let level = if unreleased_told { log::Level::Debug } else { log::Level::Info };
                            unreleased_told = true;
                            log::log!(
                                level,
                                "group {}: the broker still holds this portal's group instance id for an earlier member (UNRELEASED_INSTANCE_ID), until that member's session runs out (group.consumer.session.timeout.ms); waiting up to {} s",
                                member.group_id(),
                                UNRELEASED_PATIENCE.as_secs()
                            );
                        } else {
                            log::log!(
                                code::log_level(e.is_startup_state(), since.elapsed()),
                                "heartbeat to group {} failed: {e}; retrying",
                                member.group_id()
                            );
                        }
                        next = TokioInstant::now() + pace(&member, failures);
                    }
                }
            }
            c = ctl.recv() => match c {
                Some(Ctl::Stopped(partitions)) => {
                    let change = member.stopped(&partitions);
                    if !change.is_empty() && events.send(Event::Change(change)).await.is_err() {
                        return;
                    }
                    // Sooner if the broker must hear of it, never later.
                    next = next.min(TokioInstant::now() + pace(&member, failures));
                }
                Some(Ctl::Leave(reply)) => {
                    let limit = member.request_timeout();
                    let r = tokio::time::timeout(limit, member.leave())
                        .await
                        .unwrap_or(Err(GroupError::Timeout("leaving the group")));
                    let _ = reply.send(r);
                    return;
                }
                None => return,
            },
        }
    }
}

/// Whether the broker still holds this member's instance id for another.
fn is_unreleased(e: &GroupError) -> bool {
    matches!(
        e,
        GroupError::Kafka {
            error: ResponseError::UnreleasedInstanceId,
            ..
        }
    )
}

/// Time until the next heartbeat: at once when the broker must hear of a
/// change (or the member must join), else the broker's interval; after
/// failures, a backoff that grows to the interval.
fn pace(member: &ConsumerMember, failures: u32) -> Duration {
    let interval = member.heartbeat_interval();
    if failures > 0 {
        return (RETRY_STEP * failures.min(20)).min(interval);
    }
    if member.wants_heartbeat() {
        Duration::ZERO
    } else {
        interval
    }
}

/// How much longer each failed heartbeat waits before the next.
const RETRY_STEP: Duration = Duration::from_millis(250);
