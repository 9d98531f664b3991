//! Front ends that share a cache's L2 on PostgreSQL, keeping their L1s
//! from serving what another one changed.
//!
//! # Design
//!
//! Every write of the L2 (`set`, `delete`, a stored load) sends
//! `pg_notify(channel, "<front end>:<key>")` in the same transaction, so a
//! notification leaves only when the write commits. Each front end listens
//! on the channel with a connection of its own (`pg/listen.rs`) and drops
//! the key from its L1; its own notifications are recognised by the front
//! end's id and skipped.
//!
//! Three gaps are closed:
//! - **A lost listener.** PostgreSQL keeps no notifications for a session
//!   that is not listening. While the listener is down the L1 is neither
//!   read nor filled, and it is emptied when listening starts again: every
//!   read goes to the L2 meanwhile.
//! - **A copy racing a notification.** A `get` that read the old row from
//!   the L2 could put it into the L1 just after the notification of the new
//!   one was handled. Every notification bumps a generation; a `get` copies
//!   what it read into the L1 only if the generation did not move while it
//!   read.
//! - **A channel that moved.** The channel is named after a secret a
//!   failover can lose (below); front ends that read different ones do not
//!   hear each other. Each listener looks at the database's secret every
//!   second and moves to its channel, asking those there to empty their
//!   memory (`pg/listen.rs`); a write that named the old channel and
//!   commits after the move is told on the new one too (`cache.rs`).
//!
//! So an L1 is stale for at most the time a notification takes to arrive
//! (under a millisecond on loopback), or after a failover that lost the
//! secret, for about a second. PostgreSQL does not guard channels:
//! any role may notify any channel it can name. The clients' role cannot
//! name this one (it ends in a hash of a secret kept in litebridge's
//! schema: `pg/claims.rs`), so the clients' SQL can neither flood the
//! front ends' listeners nor empty their L1s; were it named, that would
//! cost L1 hits, never a wrong value.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The shared state of one cache's invalidations.
#[derive(Debug)]
pub(super) struct Peers {
    /// This front end's id in the payloads.
    id: u64,
    /// Bumped by every notification from another front end and every loss.
    generation: AtomicU64,
    /// Whether the listener is listening: the L1 is used only then.
    listening: AtomicBool,
}

/// Payloads past this many bytes (PostgreSQL's limit is 8,000) invalidate
/// everything instead.
const MAX_PAYLOAD: usize = 7_000;

impl Peers {
    pub(super) fn new() -> Arc<Peers> {
        let mut id = [0u8; 8];
        // A clash of two front ends' ids costs L1 invalidations, not values.
        let _ = getrandom::fill(&mut id);
        Arc::new(Peers {
            id: u64::from_le_bytes(id),
            generation: AtomicU64::new(0),
            listening: AtomicBool::new(false),
        })
    }

    /// Whether the L1 may be read and filled now.
    pub(super) fn trusted(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The payload announcing a write of `key`.
    pub(super) fn payload(&self, key: &str) -> String {
        if key.len() > MAX_PAYLOAD {
            self.everything()
        } else {
            format!("{}:{key}", self.id)
        }
    }

    /// The payload asking the others to empty their memory: sent for a key
    /// too long to name, and by a front end whose channel moved (its writes
    /// until then went unheard on the new one: `pg/listen.rs`).
    pub(super) fn everything(&self) -> String {
        format!("{}:*", self.id)
    }

    /// What a payload asks of this front end: `None` for its own or an
    /// unreadable one; `Some(None)` to empty the L1; `Some(Some(key))` to
    /// drop one key.
    pub(super) fn heard<'a>(&self, payload: &'a str) -> Option<Option<&'a str>> {
        let (id, key) = payload.split_once(':')?;
        if id.parse::<u64>().ok() == Some(self.id) {
            return None;
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        Some(if key == "*" && id.parse::<u64>().is_ok() {
            None
        } else {
            Some(key)
        })
    }

    /// The listener is listening (again), or lost.
    pub(super) fn set_listening(&self, on: bool) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.listening.store(on, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_the_sender_and_the_key() {
        let a = Peers::new();
        let b = Peers::new();
        let p = a.payload("user:x:y");
        assert_eq!(a.heard(&p), None, "its own");
        let g = b.generation();
        assert_eq!(b.heard(&p), Some(Some("user:x:y")), "keys may hold ':'");
        assert!(b.generation() > g);
        assert_eq!(b.heard(&a.payload(&"k".repeat(8000))), Some(None));
        assert_eq!(b.heard("no separator"), None);
        // A client's NOTIFY with any text costs an invalidation at most.
        assert_eq!(b.heard("x:k"), Some(Some("k")));
    }
}
