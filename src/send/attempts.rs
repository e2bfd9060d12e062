//! Which of a job's answers the client takes. A job can be answered more
//! than once at the same time (a portal that outlived its grace and the one
//! that took its partition over both run it), each answer tagged with the
//! attempt that wrote it (`kafkasend-attempt`). [`Attempts`] decides, record
//! by record, whether a record belongs to the answer being followed, and
//! remembers, bounded, where the others started and how they ended, so the
//! receiver can switch to another when the followed one fails or stalls.
//! No I/O: the receiver in `reply` acts on what it says.

use sha2::{Digest, Sha256};

/// Most attempts besides the followed one that are remembered. Two or three
/// occur in practice; anything beyond is someone writing to the reply
/// partition who should not, and must not make the client grow.
pub(super) const MAX_OTHERS: usize = 16;

/// Most times the client gives up the attempt it follows for another; each
/// switch reads the reply partition again from the new attempt's start, so
/// hostile records cannot keep it switching forever.
pub(super) const MAX_SWITCHES: usize = 16;

/// Longest `kafkasend-attempt` value kept as it is; a longer one (a portal
/// writes 16 bytes) is kept as its SHA-256, so it still counts as itself.
const MAX_TAG_BYTES: usize = 64;

/// The attempt a reply record belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Attempt {
    /// No `kafkasend-attempt` header: a portal from before attempts were
    /// tagged. All such records form one attempt.
    Untagged,
    /// The header's value, or `#` and its SHA-256 when it is too long.
    Tagged(Box<[u8]>),
}

impl Attempt {
    /// The attempt a record's `kafkasend-attempt` header (if any) names.
    pub(super) fn from_header(value: Option<&[u8]>) -> Self {
        match value {
            None => Self::Untagged,
            Some(v) if v.len() <= MAX_TAG_BYTES => Self::Tagged(v.into()),
            Some(v) => {
                let mut tag = b"#".to_vec();
                tag.extend_from_slice(&Sha256::digest(v));
                Self::Tagged(tag.into())
            }
        }
    }
}

impl std::fmt::Display for Attempt {
    /// For log lines: at most 16 bytes of the tag, escaped, since it comes
    /// from the network.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Untagged => f.write_str("(untagged)"),
            Self::Tagged(tag) => {
                let shown = &tag[..tag.len().min(16)];
                write!(f, "{}", shown.escape_ascii())?;
                if tag.len() > shown.len() {
                    f.write_str("...")?;
                }
                Ok(())
            }
        }
    }
}

/// What a record is, as far as choosing an attempt goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// It ends its answer with a whole response (`End`).
    End,
    /// It ends its answer with an `Error`.
    Error,
    /// It cannot be read: its attempt is broken.
    Broken,
    /// Anything else.
    Other,
}

/// Whose a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Whose {
    /// The attempt being followed (the first one seen, unless switched).
    Followed,
    /// Another attempt: only noted.
    Other,
    /// An attempt given up earlier, or one there is no room to remember.
    Ignored,
}

/// How far another attempt has got, as its records so far tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Records seen, no end yet.
    Running,
    /// Its `End` arrived: it may be a whole answer (it is checked only when
    /// followed).
    Answered,
    /// It ended with an `Error`, or one of its records cannot be read: never
    /// switched to.
    Failed,
}

#[derive(Debug)]
struct Other {
    attempt: Attempt,
    /// Offset of its first record seen: where reading it again starts.
    start: i64,
    /// When it was last heard from, in records of the job seen.
    heard: u64,
    state: State,
}

/// Why the followed attempt is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reason {
    /// It failed (an `Error`, a broken record or body): any attempt that has
    /// not failed may do better, finished or not.
    Failed,
    /// It has been silent while another finished: only a finished one is
    /// worth switching to.
    Stalled,
}

/// The attempts of one job's answers seen so far, bounded.
#[derive(Debug, Default)]
pub(super) struct Attempts {
    followed: Option<Attempt>,
    /// At most [`MAX_OTHERS`].
    others: Vec<Other>,
    /// Attempts followed and given up, never followed again; at most
    /// [`MAX_SWITCHES`].
    abandoned: Vec<Attempt>,
    /// Records seen, for `Other::heard`.
    clock: u64,
}

impl Attempts {
    /// Notes a record of `attempt` at `offset`, and says whose it is. The
    /// first attempt seen is followed. Noting a record again (after the
    /// partition is read again) changes nothing.
    pub(super) fn note(&mut self, attempt: &Attempt, offset: i64, kind: Kind) -> Whose {
        self.clock += 1;
        let Some(followed) = &self.followed else {
            self.followed = Some(attempt.clone());
            return Whose::Followed;
        };
        if followed == attempt {
            return Whose::Followed;
        }
        if self.abandoned.contains(attempt) {
            return Whose::Ignored;
        }
        let clock = self.clock;
        let at = match self.others.iter().position(|o| &o.attempt == attempt) {
            Some(i) => i,
            None => {
                if self.others.len() >= MAX_OTHERS && !self.evict_one() {
                    return Whose::Ignored;
                }
                self.others.push(Other {
                    attempt: attempt.clone(),
                    start: offset,
                    heard: clock,
                    state: State::Running,
                });
                self.others.len() - 1
            }
        };
        let other = &mut self.others[at];
        other.start = other.start.min(offset);
        other.heard = clock;
        if other.state == State::Running {
            other.state = match kind {
                Kind::End => State::Answered,
                Kind::Error | Kind::Broken => State::Failed,
                Kind::Other => State::Running,
            };
        }
        Whose::Other
    }

    /// Makes room for one more: a failed attempt goes first, else the
    /// running one heard from least recently; finished answers stay.
    fn evict_one(&mut self) -> bool {
        let failed = self.others.iter().position(|o| o.state == State::Failed);
        let quiet = || {
            self.others
                .iter()
                .enumerate()
                .filter(|(_, o)| o.state == State::Running)
                .min_by_key(|(_, o)| o.heard)
                .map(|(i, _)| i)
        };
        match failed.or_else(quiet) {
            Some(i) => {
                let gone = self.others.swap_remove(i);
                log::debug!("attempt {} forgotten: too many answers", gone.attempt);
                true
            }
            None => false,
        }
    }

    /// Whether an attempt is being followed yet.
    pub(super) fn following(&self) -> bool {
        self.followed.is_some()
    }

    /// Whether another attempt has finished with an `End`.
    pub(super) fn another_answered(&self) -> bool {
        self.others.iter().any(|o| o.state == State::Answered)
    }

    /// The attempt to follow instead of the current one, given up for
    /// `reason`, and the offset to read it from; `None` when there is none
    /// (or too many switches were made), with nothing changed. A finished
    /// answer is preferred (the one that started first), then, after a
    /// failure, the running attempt heard from last.
    pub(super) fn switch(&mut self, reason: Reason) -> Option<(Attempt, i64)> {
        if self.abandoned.len() >= MAX_SWITCHES {
            return None;
        }
        let answered = self
            .others
            .iter()
            .enumerate()
            .filter(|(_, o)| o.state == State::Answered)
            .min_by_key(|(_, o)| o.start)
            .map(|(i, _)| i);
        let running = || {
            self.others
                .iter()
                .enumerate()
                .filter(|(_, o)| o.state == State::Running)
                .max_by_key(|(_, o)| o.heard)
                .map(|(i, _)| i)
        };
        let pick = match reason {
            Reason::Stalled => answered,
            Reason::Failed => answered.or_else(running),
        }?;
        let next = self.others.swap_remove(pick);
        if let Some(old) = self.followed.replace(next.attempt.clone()) {
            self.abandoned.push(old);
        }
        Some((next.attempt, next.start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(s: &str) -> Attempt {
        Attempt::from_header(Some(s.as_bytes()))
    }

    #[test]
    fn the_first_attempt_is_followed_and_the_others_are_noted() {
        let mut a = Attempts::default();
        assert!(!a.following());
        assert_eq!(a.note(&tag("a"), 10, Kind::Other), Whose::Followed);
        assert_eq!(a.note(&tag("b"), 11, Kind::Other), Whose::Other);
        assert_eq!(a.note(&Attempt::Untagged, 12, Kind::Other), Whose::Other);
        assert_eq!(a.note(&tag("a"), 13, Kind::End), Whose::Followed);
        assert!(!a.another_answered());
        assert_eq!(a.note(&tag("b"), 14, Kind::End), Whose::Other);
        assert!(a.another_answered());
        // A stall moves only to a finished answer, read from its start.
        assert_eq!(a.switch(Reason::Stalled), Some((tag("b"), 11)));
        assert_eq!(a.followed, Some(tag("b")));
        // Read again: b's records are followed, a's ignored, the rest noted.
        assert_eq!(a.note(&tag("b"), 11, Kind::Other), Whose::Followed);
        assert_eq!(a.note(&Attempt::Untagged, 12, Kind::Other), Whose::Other);
        assert_eq!(a.note(&tag("a"), 13, Kind::End), Whose::Ignored);
        assert_eq!(a.switch(Reason::Stalled), None, "untagged has not ended");
        assert_eq!(a.switch(Reason::Failed), Some((Attempt::Untagged, 12)));
        assert_eq!(a.switch(Reason::Failed), None, "nothing is left");
    }

    #[test]
    fn failed_attempts_are_never_switched_to_and_finished_ones_come_first() {
        let mut a = Attempts::default();
        a.note(&tag("a"), 0, Kind::Other);
        a.note(&tag("err"), 1, Kind::Error);
        a.note(&tag("bad"), 2, Kind::Broken);
        a.note(&tag("run"), 3, Kind::Other);
        a.note(&tag("done"), 4, Kind::Other);
        // An End after an Error does not revive an attempt.
        a.note(&tag("err"), 5, Kind::End);
        assert!(!a.another_answered());
        a.note(&tag("done"), 6, Kind::End);
        a.note(&tag("run"), 7, Kind::Other);
        assert_eq!(a.switch(Reason::Failed), Some((tag("done"), 4)));
        assert_eq!(a.switch(Reason::Failed), Some((tag("run"), 3)));
        assert_eq!(a.switch(Reason::Failed), None);
    }

    #[test]
    fn ten_thousand_attempts_keep_memory_bounded_and_finished_ones() {
        let mut a = Attempts::default();
        a.note(&tag("first"), 0, Kind::Other);
        a.note(&tag("whole"), 1, Kind::End);
        for i in 0..10_000 {
            let kind = if i % 3 == 0 { Kind::Error } else { Kind::Other };
            a.note(&tag(&format!("junk{i}")), 2 + i, kind);
            assert!(a.others.len() <= MAX_OTHERS);
        }
        assert!(a.another_answered(), "a finished answer is never forgotten");
        assert_eq!(a.switch(Reason::Stalled), Some((tag("whole"), 1)));
        // Switching is bounded too, however many candidates keep coming.
        let mut switches = 1;
        for i in 0..1000 {
            a.note(&tag(&format!("more{i}")), 20_000 + i, Kind::End);
            if a.switch(Reason::Failed).is_some() {
                switches += 1;
            }
        }
        assert_eq!(switches, MAX_SWITCHES);
        assert!(a.abandoned.len() <= MAX_SWITCHES);
    }

    #[test]
    fn hostile_tags_are_bounded_and_still_tell_attempts_apart() {
        let huge = vec![b'x'; 1 << 20];
        let mut other = huge.clone();
        other[500_000] = b'y';
        let (a, b) = (
            Attempt::from_header(Some(&huge)),
            Attempt::from_header(Some(&other)),
        );
        assert_ne!(a, b);
        assert_eq!(a, Attempt::from_header(Some(&huge)));
        match &a {
            Attempt::Tagged(t) => assert_eq!(t.len(), 33),
            Attempt::Untagged => panic!("tagged"),
        }
        let odd = Attempt::from_header(Some("é\u{202e}\n\x1b[2J".as_bytes()));
        let shown = odd.to_string();
        assert!(
            !shown.chars().any(|c| c.is_control() || !c.is_ascii()),
            "{shown}"
        );
        let shown = a.to_string();
        assert!(shown.starts_with('#') && shown.ends_with("..."), "{shown}");
        assert!(shown.len() <= 4 * 16 + 3, "{shown}");
        // An empty value is a tag like any other, not "untagged".
        assert_ne!(Attempt::from_header(Some(b"")), Attempt::Untagged);
    }
}
