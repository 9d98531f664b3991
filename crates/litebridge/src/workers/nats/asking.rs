//! A call no host acknowledged in time: asking every host whether it had it.
//!
//! # Design
//!
//! A call that gets neither an acknowledgement nor an answer within
//! `ack_delay + ack_timeout` went to a host that stopped, stalled or was
//! killed with it, or to none: a host shutting down unsubscribes its
//! endpoints, and async-nats drops whatever the server sent it before the
//! unsubscribe reached the server (its endpoints cannot drain). The
//! first kind may have run and must not run again unless idempotent; the
//! second never ran anywhere and may go to another host, whatever its
//! method. Nothing in NATS tells them apart, so the front end asks.
//!
//! **The question** is the call's cancel, published with the call's own
//! reply subject as its reply: every host gets it (a plain subscription)
//! and cancels the call if it runs it. It answers `unseen` only when it
//! never took the call, and then marks it so that it is refused if it
//! comes later (both under one lock, [`super::seen`]); else `maybe`. It
//! answers only into a front end's inbox of its deployment. A host of an
//! earlier version only cancels, and never answers; answers count only
//! for a call being asked about (they carry no token: a host that never
//! had the call does not know it).
//!
//! **The verdict.** The call goes elsewhere as not started only when every
//! host instance that could have it says `unseen`; else it ends as it did
//! before ([`Error::HostLost`](crate::error::Error::HostLost), named when a host said `maybe`). An
//! instance that could have it is one that could have been subscribed when
//! the call was sent, which the front end knows only from what it heard:
//!
//! - Every instance heard from (heartbeat or INFO) must answer, unless it
//!   had been silent for `server_stale_after` and `dead_after` more when the
//!   call was sent: the NATS server drops a client that stops answering it
//!   within `server_stale_after` (its `ping_interval` times `ping_max` + 2:
//!   a ping is skipped while the client sent something within the last
//!   interval, review 137),
//!   so no call sent then reached it. A `PING` finding no one listening
//!   would prove less: a paused host's socket may hold a call sent before
//!   the server dropped it, which it reads and runs when it wakes (review
//!   136).
//! - An instance that retires (its last heartbeat, once it has answered
//!   questions for an acknowledgement's time after its endpoints stopped)
//!   is forgotten; a call sent before that gets no verdict (its question may
//!   come after).
//! - An instance never heard from may be paused and still subscribed,
//!   since before this end connected, or since heartbeats were lost (a slow
//!   consumer): so the verdict is given only for calls sent once this end
//!   has listened `server_stale_after` and `dead_after` since then, and no
//!   heartbeat was turned away meanwhile (a full table).
//! - A new host announces itself before it subscribes its endpoints, and a
//!   host on a new connection (after a cut, or woken from a pause) refuses
//!   calls until a heartbeat of its is written on it; after a silence of
//!   `server_stale_after` (`dead_after` short of the front ends' bound,
//!   for heartbeats lost on the way), also any call sent before then (by
//!   its front end's clock, a second of skew allowed: such a call may have
//!   come while it was paused, and been asked about meanwhile, review
//!   138); and any call sent longer ago than `seen` remembers. So a call it starts was sent after a heartbeat of its was
//!   on its way here, read by the time its acknowledgement is due (unless
//!   it was lost, above). Hosts of earlier versions do not: upgrade hosts
//!   first.
//! - Silence is taken as the host's: in a cluster of NATS servers, a host
//!   cut off from the front end's server by a partition between servers
//!   keeps its subscriptions, and is excused after `server_stale_after` all
//!   the same. Such a partition longer than that, healed just as the host
//!   stalls with a call, is not covered.
//!
//! So a slow, paused or killed host that had the call keeps it from being
//! sent again (it does not answer, or says `maybe`): the promise that a
//! method that is not idempotent runs at most once holds as long as
//! `server_stale_after` is at least what the servers use.
//!
//! **What it costs.** A question only for a call no host acknowledged in
//! time, answered within half the acknowledgement's time (or the verdict
//! is the old one); a host shutting down keeps answering questions for
//! `ack_delay + ack_timeout` and a second after its endpoints stop (at
//! most [`super::host`]'s bound).
//!
//! **Trust.** Answers carry no proof of who sent them: a user of the hosts'
//! credentials can answer `unseen` for any host, as it can publish any
//! host's heartbeat (docs/workers-nats.md, Permissions).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

/// Most instances followed (hosts restart under new instances): past it,
/// the long silent are forgotten, and if none is, a heartbeat's instance is
/// turned away and no verdict is given until `server_stale_after` and
/// `dead_after` have passed since.
const MAX_INSTANCES: usize = 2048;

/// The host instances this end has heard from.
pub(super) struct Instances {
    heard: HashMap<String, Instant>,
    /// Silent this long when a call is sent, an instance cannot have it.
    excused_after: Duration,
    /// Silent this long, an instance cannot matter to any question still
    /// to come (`excused_after` and the longest a question waits).
    forgotten_after: Duration,
    asked_within: Duration,
    /// Since when this end has heard every heartbeat: its last connection,
    /// or the last slow consumer (`None`: not yet).
    listening_since: Option<Instant>,
    /// When a heartbeat's instance was last turned away.
    turned_away: Option<Instant>,
    /// When an instance last retired.
    retired_at: Option<Instant>,
    /// The latest instances that retired: a word about one read late (an
    /// INFO answered before it retired) does not bring it back.
    retired: std::collections::VecDeque<String>,
}

/// Retired instances remembered, at most.
const MAX_RETIRED: usize = 256;

impl Instances {
    /// `asked_within`: how long after a call is sent its question may still
    /// be waiting for answers.
    pub(super) fn new(
        dead_after: Duration,
        stale_after: Duration,
        asked_within: Duration,
    ) -> Instances {
        // `dead_after` more: a host's last heartbeat may have come a
        // heartbeat before it went silent to the server.
        let excused_after = stale_after.saturating_add(dead_after);
        Instances {
            heard: HashMap::new(),
            excused_after,
            forgotten_after: excused_after.saturating_add(asked_within),
            asked_within,
            listening_since: None,
            turned_away: None,
            retired_at: None,
            retired: std::collections::VecDeque::new(),
        }
    }

    /// Notes a word from `instance` (a heartbeat, an INFO).
    pub(super) fn heard(&mut self, instance: &str) {
        let now = Instant::now();
        if let Some(at) = self.heard.get_mut(instance) {
            *at = now;
            return;
        }
        if self.retired.iter().any(|r| r == instance) {
            return;
        }
        if self.heard.len() >= MAX_INSTANCES {
            let forgotten_after = self.forgotten_after;
            self.heard
                .retain(|_, at| now.duration_since(*at) < forgotten_after);
        }
        if self.heard.len() < MAX_INSTANCES {
            self.heard.insert(instance.to_owned(), now);
        } else {
            self.turned_away = Some(now);
        }
    }

    /// This end (re)connected to NATS, or may have missed heartbeats.
    pub(super) fn listening_again(&mut self) {
        self.listening_since = Some(Instant::now());
    }

    /// `instance` said it retired: it takes no call any more.
    pub(super) fn retired(&mut self, instance: &str) {
        if self.heard.remove(instance).is_some() {
            self.retired_at = Some(Instant::now());
        }
        if self.retired.len() >= MAX_RETIRED {
            self.retired.pop_front();
        }
        self.retired.push_back(instance.to_owned());
    }

    /// The instances that must say `unseen` for a call sent at `sent`, or
    /// `None` when no answers could show it was never taken.
    pub(super) fn plan(&self, sent: Instant) -> Option<HashSet<String>> {
        // A host not heard from since this end began listening (or since
        // one was turned away) is silent for as long as that at most: an
        // instance followed is excused after the same time.
        let listened = self.listening_since?.checked_add(self.excused_after)? <= sent;
        let turned_away = self
            .turned_away
            .is_some_and(|t| t.checked_add(self.excused_after).is_none_or(|t| t > sent));
        let retired = self.retired_at.is_some_and(|r| r >= sent);
        // Asked late, instances forgotten since (a full table) might matter.
        let late = sent
            .checked_add(self.asked_within)
            .is_none_or(|by| Instant::now() > by);
        if !listened || turned_away || retired || late {
            return None;
        }
        let waiting: HashSet<String> = self
            .heard
            .iter()
            .filter(|(_, at)| at.checked_add(self.excused_after).is_none_or(|t| t > sent))
            .map(|(i, _)| i.clone())
            .collect();
        // It went to someone: to no one this end knows, nothing to conclude.
        (!waiting.is_empty()).then_some(waiting)
    }
}

/// A question under way, in the call's own loop.
pub(super) struct Asking {
    waiting: HashSet<String>,
    /// When the verdict falls back to the old one.
    pub(super) until: Instant,
}

/// Where a question stands.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    Waiting,
    /// Every instance that could have it never took it.
    NeverTaken,
    /// This host may have it (it said so).
    MayHave(String),
}

impl Asking {
    /// A question waiting for `waiting` until `until`.
    pub(super) fn new(waiting: HashSet<String>, until: Instant) -> Asking {
        Asking { waiting, until }
    }

    /// Takes an answer: `unseen` or not, from `host`'s `instance`.
    pub(super) fn answer(&mut self, unseen: bool, host: &str, instance: &str) -> Verdict {
        if !unseen {
            return Verdict::MayHave(host.to_owned());
        }
        self.waiting.remove(instance);
        if self.waiting.is_empty() {
            Verdict::NeverTaken
        } else {
            Verdict::Waiting
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEAD: Duration = Duration::from_secs(3);
    const STALE: Duration = Duration::from_secs(360);
    const ASKED: Duration = Duration::from_secs(5);

    fn listening(instances: &[&str]) -> Instances {
        let mut i = Instances::new(DEAD, STALE, ASKED);
        i.listening_again();
        for name in instances {
            i.heard(name);
        }
        i
    }

    fn set(names: &[&str]) -> HashSet<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn no_verdict_until_this_end_has_listened_as_long_as_the_server_keeps_a_silent_client() {
        let mut i = listening(&["a"]);
        assert!(i.plan(Instant::now()).is_none());
        tokio::time::advance(STALE).await;
        i.heard("a");
        // A host heard just before this end listened, and paused since,
        // may be kept that long more.
        assert!(i.plan(Instant::now()).is_none());
        tokio::time::advance(DEAD).await;
        i.heard("a");
        assert_eq!(i.plan(Instant::now()), Some(set(&["a"])));
        // A question asked long after its call was sent gets no verdict.
        let sent = Instant::now();
        tokio::time::advance(ASKED + Duration::from_millis(1)).await;
        i.heard("a");
        assert!(i.plan(sent).is_none());
        // Connected again, or heartbeats dropped: what was silent meanwhile
        // is not known.
        i.listening_again();
        assert!(i.plan(Instant::now()).is_none());
        assert!(
            Instances::new(DEAD, STALE, ASKED)
                .plan(Instant::now())
                .is_none()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn every_instance_must_say_unseen_and_one_maybe_ends_it() {
        let mut i = listening(&["a", "b"]);
        tokio::time::advance(STALE + DEAD).await;
        i.heard("a");
        i.heard("b");
        let mut asking = Asking::new(i.plan(Instant::now()).unwrap(), Instant::now());
        assert_eq!(asking.answer(true, "h1", "a"), Verdict::Waiting);
        // Another host's answer does not stand in for b's.
        assert_eq!(asking.answer(true, "h1", "a"), Verdict::Waiting);
        assert_eq!(asking.answer(true, "h2", "b"), Verdict::NeverTaken);
        let mut asking = Asking::new(i.plan(Instant::now()).unwrap(), Instant::now());
        assert_eq!(
            asking.answer(false, "h2", "b"),
            Verdict::MayHave("h2".into())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_instance_is_waited_for_until_the_server_must_have_dropped_it() {
        let mut i = listening(&["live"]);
        tokio::time::advance(Duration::from_millis(10)).await;
        i.heard("paused");
        tokio::time::advance(STALE + DEAD - Duration::from_millis(1)).await;
        i.heard("live");
        // Silent for the server's whole stale time and `dead_after` more,
        // less a millisecond: it may still have been subscribed.
        assert_eq!(i.plan(Instant::now()), Some(set(&["paused", "live"])));
        tokio::time::advance(Duration::from_millis(2)).await;
        i.heard("live");
        assert_eq!(i.plan(Instant::now()), Some(set(&["live"])));
        // Only silent ones: none to ask.
        tokio::time::advance(STALE + DEAD + Duration::from_millis(1)).await;
        assert!(i.plan(Instant::now()).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_retired_instance_is_forgotten_and_calls_sent_before_get_no_verdict() {
        let mut i = listening(&["old", "live"]);
        tokio::time::advance(STALE + DEAD).await;
        i.heard("live");
        i.heard("old");
        let before = Instant::now();
        tokio::time::advance(Duration::from_millis(10)).await;
        i.retired("old");
        assert!(i.plan(before).is_none());
        // An INFO about it read late does not bring it back.
        i.heard("old");
        tokio::time::advance(Duration::from_millis(10)).await;
        assert_eq!(i.plan(Instant::now()), Some(set(&["live"])));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_table_forgets_the_long_silent_else_gives_no_verdict_for_a_while() {
        let mut i = listening(&[]);
        for n in 0..MAX_INSTANCES {
            i.heard(&format!("i{n}"));
        }
        tokio::time::advance(STALE).await;
        i.heard("one-too-many");
        assert!(i.plan(Instant::now()).is_none());
        tokio::time::advance(STALE + DEAD + ASKED).await;
        // Those first ones can matter to no question now: they make way.
        i.heard("next");
        assert_eq!(i.plan(Instant::now()), Some(set(&["next"])));
    }
}
