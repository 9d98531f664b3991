//! What a host remembers of the calls NATS gave it, to answer a front end
//! asking whether it ever had one (see `asking`).
//!
//! # Design
//!
//! A front end asks about a call no host acknowledged in time, an
//! acknowledgement's time after sending it; the host says `unseen` only if
//! it can be sure. So it keeps every call it took (a keyed 64-bit hash of
//! the reply subject, which is unique to the call) for at least [`Seen`]'s
//! span, in two generations: the current one, and the one before, dropped
//! as the current one is a span old. What is kept always reaches a span
//! back, or to the host's start (no call came before its endpoints were
//! there). A question about a call sent longer ago than the span (by the
//! front end's clock, with [`CLOCK_SKEW`](super::wire::CLOCK_SKEW) allowed)
//! gets `maybe`; so does any question while a generation is full (a flood:
//! it stops taking entries, and cannot vouch for what it did not keep).
//! A hash that collides with a call taken says `maybe` too: the safe
//! side (one that collides with a mark left by a question makes a call
//! refused, unanswered: it is then lost, not run twice).
//!
//! A question answered `unseen` leaves a mark in its generation's table of
//! questions, and a call that comes after it is refused: taking a call
//! and answering about it happen under one lock, on two tasks (the
//! endpoints' and the cancels'), so whichever comes second sees the other. (The table of cancels that
//! came before their calls would do too, but it is bounded by count, and
//! a flood of cancels could push a mark out before its call came: review
//! 136.)
//!
//! A call whose reply subject was taken already is refused, unanswered
//! (`Take::Again`): a front end never sends two, so it is a peer's naming
//! another call's reply subject, and any answer to it, a refusal included,
//! would reach that call's caller; the host's table of running calls alone
//! missed one that came as the first call's answer was being written
//! (review 193).
//!
//! At 37,000 calls a second (this machine's `bridge-nats-pipelined`) and a
//! 5 s span, a generation holds about 185,000 entries, about 2.4 MB. The
//! marks of questions are kept apart from the calls taken (a key is never
//! both): a call taken looks in the marks' tables, nearly always empty,
//! then in the two generations of calls taken, and writes one entry.

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::time::Duration;

use tokio::time::Instant;

/// Most entries in one generation (about 19 MB in either of its two
/// tables; each keeps its size once emptied, so a generation filled once
/// with calls and once with questions keeps about 38 MB): past it, the
/// host answers `maybe` until the full generation is dropped.
const MAX_PER_GENERATION: usize = 1 << 20;

/// Keys already keyed hashes, used as their own hash (hashing them again
/// cost a SipHash per lookup).
type Keys = HashSet<u64, std::hash::BuildHasherDefault<AsItIs>>;

/// What a generation knows of calls.
#[derive(Default)]
struct Generation {
    /// Calls this host took.
    taken: Keys,
    /// Calls this host said it never had: refused if they come.
    asked: Keys,
}

impl Generation {
    fn len(&self) -> usize {
        self.taken.len() + self.asked.len()
    }

    fn clear(&mut self) {
        self.taken.clear();
        self.asked.clear();
    }
}

/// A hasher of `u64`s that are already keyed hashes.
#[derive(Default)]
struct AsItIs(u64);

impl std::hash::Hasher for AsItIs {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (the keys are `u64`); anything else is
        // folded in, still a hash.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// What a call's reply subject says of it as it comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Take {
    /// Not seen before: it may run.
    New,
    /// A question about it was answered `unseen` first: its caller sent it
    /// elsewhere.
    Asked,
    /// A call with this reply subject came within the span already: a
    /// front end never sends two, so this one is a peer's, naming another
    /// call's reply subject (and token, learned from its acknowledgement):
    /// any answer to it, a refusal included, would go to that call's
    /// caller (review 193).
    Again,
}

pub(super) struct Seen {
    span: Duration,
    keys: std::hash::RandomState,
    current: Generation,
    current_since: Instant,
    previous: Generation,
    /// A generation kept is full (entries were not taken).
    full: [bool; 2],
}

impl Seen {
    /// Remembers calls for at least `span`.
    pub(super) fn new(span: Duration) -> Seen {
        Seen {
            span,
            keys: std::hash::RandomState::new(),
            current: Generation::default(),
            current_since: Instant::now(),
            previous: Generation::default(),
            full: [false; 2],
        }
    }

    /// Drops the older generation once the current one is a span old
    /// (keeping its memory for the next, sized as the last).
    fn turn(&mut self) {
        if self.current_since.elapsed() < self.span {
            return;
        }
        std::mem::swap(&mut self.previous, &mut self.current);
        self.current.clear();
        self.full = [self.full[1], false];
        self.current_since = Instant::now();
    }

    fn taken(&self, key: u64) -> bool {
        self.current.taken.contains(&key) || self.previous.taken.contains(&key)
    }

    fn asked_about(&self, key: u64) -> bool {
        self.current.asked.contains(&key) || self.previous.asked.contains(&key)
    }

    /// Notes a call taken, by its reply subject: whether it is new, or
    /// must not run.
    pub(super) fn take(&mut self, reply: &str) -> Take {
        self.turn();
        let key = self.keys.hash_one(reply);
        if self.asked_about(key) {
            return Take::Asked;
        }
        if self.taken(key) {
            return Take::Again;
        }
        if self.current.len() >= MAX_PER_GENERATION {
            self.full[1] = true;
        } else {
            self.current.taken.insert(key);
        }
        Take::New
    }

    /// Answers a question about the call with `reply`, sent `age` ago by
    /// its front end's clock: `true` (`maybe`) unless this host is sure it
    /// never took it, and then marks it so that it is refused if it comes.
    pub(super) fn asked(&mut self, reply: &str, age: Duration) -> bool {
        self.turn();
        if self.full.iter().any(|f| *f) || age.saturating_add(super::wire::CLOCK_SKEW) >= self.span
        {
            return true;
        }
        let key = self.keys.hash_one(reply);
        if self.taken(key) {
            return true;
        }
        if self.asked_about(key) {
            return false;
        }
        if self.current.len() >= MAX_PER_GENERATION {
            self.full[1] = true;
            return true;
        }
        self.current.asked.insert(key);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YOUNG: Duration = Duration::from_millis(600);

    #[tokio::test(start_paused = true)]
    async fn a_call_is_remembered_for_a_span_and_an_older_question_gets_maybe() {
        let span = Duration::from_secs(5);
        let mut seen = Seen::new(span);
        assert_eq!(seen.take("_INBOX.a.1"), Take::New);
        assert!(seen.asked("_INBOX.a.1", YOUNG));
        assert!(!seen.asked("_INBOX.a.2", YOUNG));
        // A second call with its reply subject is another's.
        assert_eq!(seen.take("_INBOX.a.1"), Take::Again);
        // Past one turn, the call is in the previous generation.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(seen.take("_INBOX.a.3"), Take::New);
        assert!(seen.asked("_INBOX.a.1", YOUNG));
        assert!(seen.asked("_INBOX.a.3", YOUNG));
        // Past two, it is gone: but only a question about a call sent a
        // span ago could be about it, and that one gets `maybe`.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!seen.asked("_INBOX.a.1", YOUNG));
        assert!(seen.asked("_INBOX.a.9", span - Duration::from_millis(500)));
        assert!(seen.asked("_INBOX.a.3", YOUNG));
        // A question without its time (another version) gets `maybe`.
        assert!(seen.asked("_INBOX.a.8", Duration::MAX));
        // After a long quiet spell (a paused host), a call taken just
        // before a turn is still found just after it.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(seen.take("_INBOX.a.4"), Take::New);
        tokio::time::advance(Duration::from_millis(4_999)).await;
        assert_eq!(seen.take("_INBOX.a.5"), Take::New);
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(seen.asked("_INBOX.a.4", YOUNG));
        assert!(seen.asked("_INBOX.a.5", YOUNG));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_comes_after_its_question_was_answered_unseen_is_refused() {
        let mut seen = Seen::new(Duration::from_secs(5));
        assert!(!seen.asked("_INBOX.q.1", YOUNG));
        // Asked again (a duplicate): still never taken.
        assert!(!seen.asked("_INBOX.q.1", YOUNG));
        assert_eq!(seen.take("_INBOX.q.1"), Take::Asked);
        assert_eq!(seen.take("_INBOX.q.1"), Take::Asked);
        // Through a turn too.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(seen.take("_INBOX.q.1"), Take::Asked);
        assert_eq!(seen.take("_INBOX.q.2"), Take::New);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_generation_makes_every_answer_maybe_until_it_is_dropped() {
        let mut seen = Seen::new(Duration::from_secs(5));
        seen.current.taken.extend(0..MAX_PER_GENERATION as u64);
        // A call still runs: it is only not remembered.
        assert_eq!(seen.take("_INBOX.b.1"), Take::New);
        assert!(seen.asked("_INBOX.b.2", Duration::ZERO));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(seen.take("_INBOX.b.3"), Take::New);
        assert!(seen.asked("_INBOX.b.2", Duration::ZERO));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(seen.take("_INBOX.b.4"), Take::New);
        assert!(!seen.asked("_INBOX.b.2", Duration::ZERO));
        assert!(seen.asked("_INBOX.b.4", Duration::ZERO));
    }
}
