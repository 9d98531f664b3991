//! The event stream: what happens in the worker pool, with the seed
//! system's names (`started`, `process-started`, `process-error`,
//! `process-restarted`, `process-recycling`, `host-joined`, `host-lost`, `retry`,
//! `circuit-breaker-state-change`, `shutdown`), each a JSON object with a
//! `seq` (its number in this run of the server), the `event` name, a `ts`
//! (UTC, to the millisecond) and its own fields (`id` is the worker's, as in
//! the seed). Delivered by `GET /events` (server-sent events, whose `id` is
//! `RUN-SEQ`, the run being the server's start time in ms) and to stdio
//! sessions that called `events.subscribe`, and logged.
//!
//! What workers print (stderr) may quote callers' parameters: events carry
//! how a worker ended and the kind of a retried failure, never its output,
//! as the request log does.
//!
//! # Who may read, and how many
//!
//! A stream is a connection held open: at most [`MAX_STREAMS`] at once, so
//! readers cannot take the connections requests need. A key holds at most
//! [`MAX_STREAMS_PER_KEY`]: a new one ends that key's oldest and takes its
//! place, and so does a new one of a key that holds any when all
//! [`MAX_STREAMS`] are open (a client that vanished without closing, asleep
//! or off the network, would otherwise hold its place until the kernel
//! gives up on the connection, minutes later, and keep its own return
//! out). Each stream ends after [`STREAM_LIFETIME`] (an `EventSource`
//! reconnects with its `Last-Event-ID`) or as soon as its key is revoked.
//!
//! # Slow consumers
//!
//! One broadcast channel feeds every subscriber and nobody waits for a
//! reader: a subscriber that falls more than [`BUFFER`] events behind loses
//! the oldest and is told how many (`{"event": "missed", "count": N}`). The
//! last [`RING`] events are kept, so a client that reconnects with
//! `Last-Event-ID` gets what it missed while away (or a `missed` notice for
//! what is no longer kept), and a page opened late sees recent history.
//!
//! # Stopping
//!
//! [`Events::close`] ends every stream after the events already sent (the
//! `shutdown` event first): a server draining its connections at SIGTERM
//! would otherwise wait out its grace period on streams that never end.

use crate::lock;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use litebridge::workers::{Bridge, PoolEvent};
use serde_json::{Map, Value as Json, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Events a subscriber may fall behind before it misses some.
pub(crate) const BUFFER: usize = 1024;
/// Events kept for late and returning readers.
pub(crate) const RING: usize = 256;
/// Streams open at once, in all.
pub(crate) const MAX_STREAMS: usize = 64;
/// Streams open at once per key.
pub(crate) const MAX_STREAMS_PER_KEY: usize = 4;
/// How long one stream lasts before the reader must reconnect.
pub(crate) const STREAM_LIFETIME: std::time::Duration = std::time::Duration::from_secs(3600);

/// One event, serialized once for every reader.
#[derive(Debug)]
pub(crate) struct Event {
    /// Its sequence number in this run, from 1.
    pub(crate) seq: u64,
    /// Its name (`retry`, ...).
    pub(crate) name: &'static str,
    /// The whole object, as JSON text.
    pub(crate) json: String,
}

/// What a reader gets next.
#[derive(Debug)]
pub(crate) enum Item {
    /// An event.
    Event(Arc<Event>),
    /// This many events were lost to this reader (it fell behind, or came
    /// back after they left the ring).
    Missed(u64),
}

impl Item {
    /// The JSON object the reader is sent.
    pub(crate) fn json(&self) -> String {
        match self {
            Item::Event(e) => e.json.clone(),
            Item::Missed(n) => json!({
                "event": "missed",
                "count": n,
                "ts": crate::output::utc_stamp(SystemTime::now()),
            })
            .to_string(),
        }
    }
}

/// The server's events: published here, read by any number of subscribers.
#[derive(Debug)]
pub(crate) struct Events {
    /// This run of the server: its start, in ms since the epoch.
    run: u64,
    tx: broadcast::Sender<Arc<Event>>,
    streams: Mutex<Streams>,
    /// The last events, oldest first; also the lock that orders publishing.
    ring: Mutex<VecDeque<Arc<Event>>>,
    next: AtomicU64,
    shutdown_sent: AtomicBool,
    closed: CancellationToken,
}

impl Events {
    pub(crate) fn new() -> Arc<Events> {
        let run = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Arc::new(Events {
            run,
            tx: broadcast::channel(BUFFER).0,
            streams: Mutex::new(Streams::default()),
            ring: Mutex::new(VecDeque::with_capacity(RING)),
            next: AtomicU64::new(1),
            shutdown_sent: AtomicBool::new(false),
            closed: CancellationToken::new(),
        })
    }

    /// Publishes `name` with `fields`; logs it (at `debug` for the kinds the
    /// library logs where they happen).
    pub(crate) fn publish(&self, name: &'static str, fields: Map<String, Json>) {
        let mut ring = lock(&self.ring);
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let mut object = Map::with_capacity(fields.len() + 3);
        object.insert("seq".into(), json!(seq));
        object.insert("event".into(), json!(name));
        object.insert(
            "ts".into(),
            json!(crate::output::utc_stamp(SystemTime::now())),
        );
        for (k, v) in fields {
            // The event's own fields never hide the three above.
            object.entry(k).or_insert(v);
        }
        let text = Json::Object(object).to_string();
        match name {
            "retry" | "circuit-breaker-state-change" => tracing::debug!(event = name, "{text}"),
            "process-error" => tracing::warn!(event = name, "{text}"),
            _ => tracing::info!(event = name, "{text}"),
        }
        let event = Arc::new(Event {
            seq,
            name,
            json: text,
        });
        if ring.len() == RING {
            ring.pop_front();
        }
        ring.push_back(event.clone());
        // Nobody listening is fine.
        let _ = self.tx.send(event);
    }

    /// Publishes the pool's events from now on (and `started` and each
    /// worker's `process-started` at once, or over NATS each host's
    /// `host-joined`: the pool sent its own before anyone could listen).
    pub(crate) fn follow(self: &Arc<Self>, pool: &Bridge) {
        let mut rx = pool.subscribe();
        let status = pool.status();
        self.publish("started", object(json!({"processes": status.processes})));
        // Hosts announced here whose own `host-joined` may still be queued
        // (they joined between the subscription and the snapshot): told once.
        let mut announced = std::collections::HashSet::new();
        if let Bridge::Nats(n) = pool {
            for h in n.hosts() {
                self.publish("host-joined", object(json!({"host": h.id})));
                announced.insert(h.id);
            }
        } else {
            for w in &status.workers {
                self.publish("process-started", object(json!({"id": w.id, "pid": w.pid})));
            }
        }
        let events = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let e = match rx.recv().await {
                    Ok(e) => e,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(
                            "the event stream lost {n} pool events (published too fast)"
                        );
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let Some(events) = events.upgrade() else {
                    return;
                };
                match &e {
                    PoolEvent::HostJoined { host } if announced.remove(host) => continue,
                    PoolEvent::HostLost { host, .. } | PoolEvent::HostRetired { host } => {
                        announced.remove(host);
                    }
                    _ => {}
                }
                if let Some((name, fields)) = describe(&e) {
                    if name == "shutdown" {
                        events.shutdown();
                    } else {
                        events.publish(name, fields);
                    }
                }
            }
        });
    }

    /// Publishes `shutdown` (once).
    pub(crate) fn shutdown(&self) {
        if !self.shutdown_sent.swap(true, Ordering::AcqRel) {
            self.publish("shutdown", Map::new());
        }
    }

    /// Publishes `shutdown`, then ends every stream once it has read what
    /// was sent before.
    pub(crate) fn close(&self) {
        self.shutdown();
        self.closed.cancel();
    }

    /// The server-sent event id of `e`: `RUN-SEQ`.
    pub(crate) fn sse_id(&self, e: &Event) -> String {
        format!("{}-{}", self.run, e.seq)
    }

    /// Where a reader presenting `Last-Event-ID: text` resumes: after that
    /// event of this run; from the start of this run for an id of another
    /// run (the server restarted) or one it cannot read.
    pub(crate) fn resume_after(&self, text: &str) -> u64 {
        match text.trim().split_once('-') {
            Some((run, seq)) if run.parse() == Ok(self.run) => seq.parse().unwrap_or(0),
            _ => 0,
        }
    }

    /// Leave to open one more stream for `key` (a key's name; `None` for
    /// local callers, who have only the overall limit), given back when the
    /// ticket drops, once `admit` (the key's own limits) allowed it; a key
    /// at its limit then loses its oldest stream. A stream refused, by
    /// either, costs nothing and ends no other.
    ///
    /// # Errors
    /// [`litebridge::Error::Overloaded`] past [`MAX_STREAMS`]; what `admit`
    /// returned.
    pub(crate) fn open_stream(
        self: &Arc<Self>,
        key: Option<String>,
        admit: impl FnOnce() -> Result<(), litebridge::Error>,
    ) -> Result<StreamTicket, litebridge::Error> {
        let mut s = lock(&self.streams);
        let full = s.total >= MAX_STREAMS;
        let held = key
            .as_ref()
            .and_then(|k| s.per_key.get(k))
            .map_or(0, VecDeque::len);
        let leaving = key
            .as_ref()
            .and_then(|k| s.leaving.get(k))
            .copied()
            .unwrap_or(0);
        // Whether the key's oldest stream gives its place to this one:
        // only while the streams it ended before are gone, or nearly (one
        // whose reader does not read is not polled, and sees its end only
        // when its writes time out: found by review 125, a key replacing
        // unread streams held a thousand connections).
        let replaces =
            (held >= MAX_STREAMS_PER_KEY || (full && held > 0)) && leaving < MAX_STREAMS_PER_KEY;
        if (held >= MAX_STREAMS_PER_KEY || full) && !replaces {
            return Err(litebridge::Error::Overloaded {
                queue: "event stream",
                capacity: MAX_STREAMS,
                retry_after: std::time::Duration::from_secs(5),
            });
        }
        admit()?;
        s.next_id += 1;
        let id = s.next_id;
        let ended = CancellationToken::new();
        let s = &mut *s;
        match &key {
            Some(k) => {
                let mine = s.per_key.entry(k.clone()).or_default();
                if replaces && let Some((oldest, token)) = mine.pop_front() {
                    // Its place is this one's: its ticket, dropped when its
                    // stream ends, leaves the count alone.
                    s.given_up.insert(oldest);
                    *s.leaving.entry(k.clone()).or_default() += 1;
                    token.cancel();
                } else {
                    s.total += 1;
                }
                mine.push_back((id, ended.clone()));
            }
            None => s.total += 1,
        }
        Ok(StreamTicket {
            events: self.clone(),
            key,
            id,
            ended,
        })
    }

    /// A reader of the events after `after` (a sequence number of this
    /// run), or of the events from now on.
    pub(crate) fn subscribe(&self, after: Option<u64>) -> Subscription {
        let ring = lock(&self.ring);
        // Under the ring's lock: nothing is published between the two.
        let rx = self.tx.subscribe();
        let newest = self.next.load(Ordering::Relaxed).saturating_sub(1);
        let mut backlog = VecDeque::new();
        let mut missed = 0;
        if let Some(after) = after.filter(|a| *a < newest) {
            let oldest = ring.front().map_or(newest + 1, |e| e.seq);
            missed = oldest.saturating_sub(after + 1);
            backlog.extend(ring.iter().filter(|e| e.seq > after).cloned());
        }
        Subscription {
            missed,
            backlog,
            rx,
            closed: self.closed.clone(),
        }
    }

    /// The events kept, oldest first.
    pub(crate) fn recent(&self) -> Vec<Arc<Event>> {
        lock(&self.ring).iter().cloned().collect()
    }

    /// When this run of the server started, ms since the Unix epoch.
    pub(crate) fn started_ms(&self) -> u64 {
        self.run
    }
}

/// The streams open: how many, and each key's, oldest first.
#[derive(Debug, Default)]
struct Streams {
    total: usize,
    per_key: std::collections::HashMap<String, VecDeque<(u64, CancellationToken)>>,
    /// Streams ended for a newer one of their key, which took their place
    /// in `total`.
    given_up: std::collections::HashSet<u64>,
    /// How many of those each key has, not gone yet (a key may replace its
    /// streams while fewer than [`MAX_STREAMS_PER_KEY`]).
    leaving: std::collections::HashMap<String, usize>,
    next_id: u64,
}

/// One open stream, counted until dropped.
#[derive(Debug)]
pub(crate) struct StreamTicket {
    events: Arc<Events>,
    key: Option<String>,
    id: u64,
    ended: CancellationToken,
}

impl StreamTicket {
    /// Cancelled when a newer stream of the same key took this one's place.
    pub(crate) fn ended(&self) -> &CancellationToken {
        &self.ended
    }
}

impl Drop for StreamTicket {
    fn drop(&mut self) {
        let mut s = lock(&self.events.streams);
        if s.given_up.remove(&self.id) {
            if let Some(k) = &self.key
                && let Some(n) = s.leaving.get_mut(k)
            {
                *n -= 1;
                if *n == 0 {
                    s.leaving.remove(k);
                }
            }
        } else {
            s.total = s.total.saturating_sub(1);
        }
        if let Some(k) = &self.key
            && let Some(mine) = s.per_key.get_mut(k)
        {
            mine.retain(|(id, _)| *id != self.id);
            if mine.is_empty() {
                s.per_key.remove(k);
            }
        }
    }
}

/// One reader's place in the stream.
#[derive(Debug)]
pub(crate) struct Subscription {
    missed: u64,
    backlog: VecDeque<Arc<Event>>,
    rx: broadcast::Receiver<Arc<Event>>,
    closed: CancellationToken,
}

impl Subscription {
    /// The next item; `None` once the stream is closed and what was sent
    /// before has been read.
    pub(crate) async fn next(&mut self) -> Option<Item> {
        if self.missed > 0 {
            return Some(Item::Missed(std::mem::take(&mut self.missed)));
        }
        if let Some(e) = self.backlog.pop_front() {
            return Some(Item::Event(e));
        }
        let received = tokio::select! {
            biased;
            r = self.rx.recv() => r,
            () = self.closed.cancelled() => self.rx.try_recv().map_err(|_| broadcast::error::RecvError::Closed),
        };
        match received {
            Ok(e) => Some(Item::Event(e)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(Item::Missed(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

fn object(v: Json) -> Map<String, Json> {
    match v {
        Json::Object(m) => m,
        _ => Map::new(),
    }
}

/// The seed's name and fields of a pool event.
fn describe(e: &PoolEvent) -> Option<(&'static str, Map<String, Json>)> {
    Some(match e {
        PoolEvent::Started { processes } => ("started", object(json!({"processes": processes}))),
        PoolEvent::WorkerStarted { id, pid } => {
            ("process-started", object(json!({"id": id, "pid": pid})))
        }
        PoolEvent::WorkerExited { id, pid, exit, .. } => (
            "process-error",
            object(json!({"id": id, "pid": pid, "error": exit})),
        ),
        PoolEvent::WorkerRestarted { id, pid } => {
            ("process-restarted", object(json!({"id": id, "pid": pid})))
        }
        PoolEvent::WorkerRecycled {
            id,
            reason,
            replaced_by,
        } => (
            "process-recycling",
            object(json!({"id": id, "reason": reason, "replaced_by": replaced_by})),
        ),
        PoolEvent::Retry {
            method,
            attempt,
            max_attempts,
            kind,
            delay,
            ..
        } => (
            "retry",
            object(json!({
                "method": method, "attempt": attempt, "max_attempts": max_attempts,
                "error": kind.as_str(), "delay_ms": delay.as_millis() as u64,
            })),
        ),
        PoolEvent::Breaker(b) => (
            "circuit-breaker-state-change",
            object(json!({"method": &*b.breaker, "from": b.from.as_str(), "to": b.to.as_str()})),
        ),
        PoolEvent::HostJoined { host } => ("host-joined", object(json!({"host": host}))),
        PoolEvent::HostLost { host, reason } => {
            ("host-lost", object(json!({"host": host, "reason": reason})))
        }
        PoolEvent::HostRetired { host } => ("host-retired", object(json!({"host": host}))),
        PoolEvent::Shutdown => ("shutdown", Map::new()),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(items: &[Item]) -> Vec<String> {
        items
            .iter()
            .map(|i| match i {
                Item::Event(e) => e.seq.to_string(),
                Item::Missed(n) => format!("missed {n}"),
            })
            .collect()
    }

    async fn drain(sub: &mut Subscription) -> Vec<Item> {
        let mut items = Vec::new();
        while let Ok(Some(item)) =
            tokio::time::timeout(std::time::Duration::from_millis(50), sub.next()).await
        {
            items.push(item);
        }
        items
    }

    #[tokio::test]
    async fn a_reader_that_falls_behind_is_told_how_many_it_missed() {
        let events = Events::new();
        let mut slow = events.subscribe(None);
        for _ in 0..BUFFER + 10 {
            events.publish("retry", Map::new());
        }
        let items = drain(&mut slow).await;
        assert_eq!(ids(&items[..1]), ["missed 10"]);
        assert_eq!(items.len(), 1 + BUFFER);
        assert_eq!(ids(&items[1..2]), ["11"]);
    }

    #[tokio::test]
    async fn a_returning_reader_gets_what_it_missed_from_the_ring() {
        let events = Events::new();
        for _ in 0..5 {
            events.publish("process-started", Map::new());
        }
        let mut back = events.subscribe(Some(3));
        events.publish("process-started", Map::new());
        assert_eq!(ids(&drain(&mut back).await), ["4", "5", "6"]);
        // Gone from the ring: told so, then given what is kept.
        for _ in 0..RING {
            events.publish("process-started", Map::new());
        }
        let mut late = events.subscribe(Some(2));
        let items = drain(&mut late).await;
        let oldest = events.recent()[0].seq;
        assert_eq!(ids(&items[..1]), [format!("missed {}", oldest - 3)]);
        assert_eq!(items.len(), 1 + RING);
        // A new reader starts from now.
        let mut fresh = events.subscribe(None);
        assert!(drain(&mut fresh).await.is_empty());
    }

    #[tokio::test]
    async fn closing_sends_shutdown_then_ends_every_stream() {
        let events = Events::new();
        let mut reader = events.subscribe(None);
        events.close();
        events.close();
        let items = drain(&mut reader).await;
        assert_eq!(items.len(), 1, "one shutdown");
        let Item::Event(e) = &items[0] else { panic!() };
        assert_eq!(e.name, "shutdown");
        let v: Json = serde_json::from_str(&e.json).unwrap();
        assert_eq!(v["event"], "shutdown");
        assert_eq!(v["seq"], 1);
        assert!(v["ts"].as_str().unwrap().ends_with('Z'));
        assert!(reader.next().await.is_none(), "ended");
    }

    #[tokio::test]
    async fn an_events_own_id_is_the_workers_and_never_hides_the_sequence() {
        let events = Events::new();
        events.publish(
            "process-started",
            object(json!({"id": 7, "pid": 42, "seq": 999, "event": "forged"})),
        );
        let v: Json = serde_json::from_str(&events.recent()[0].json).unwrap();
        assert_eq!(
            (&v["id"], &v["seq"], &v["event"]),
            (&json!(7), &json!(1), &json!("process-started"))
        );
    }

    #[test]
    fn last_event_ids_of_this_run_resume_and_others_start_over() {
        let events = Events::new();
        let run = events.run;
        assert_eq!(events.resume_after(&format!("{run}-12")), 12);
        assert_eq!(events.resume_after(&format!("{}-12", run - 1)), 0);
        for junk in [
            "",
            "12",
            "x-y",
            "-",
            &format!("{run}-"),
            "18446744073709551615-1",
        ] {
            assert_eq!(events.resume_after(junk), 0, "{junk:?}");
        }
        let mut far = events.subscribe(Some(u64::MAX));
        assert!(far.backlog.is_empty() && far.missed == 0);
        drop(far.rx.try_recv());
    }

    #[test]
    fn streams_are_capped_in_all_and_a_keys_newest_ends_its_oldest() {
        let events = Events::new();
        let mut mine: Vec<_> = (0..MAX_STREAMS_PER_KEY)
            .map(|_| events.open_stream(Some("k".into()), || Ok(())).unwrap())
            .collect();
        let newest = events.open_stream(Some("k".into()), || Ok(())).unwrap();
        assert!(mine[0].ended().is_cancelled(), "the oldest ends");
        assert!(mine[1..].iter().all(|t| !t.ended().is_cancelled()));
        mine.remove(0);
        mine.push(newest);
        let others: Vec<_> = (0..MAX_STREAMS - MAX_STREAMS_PER_KEY)
            .map(|_| events.open_stream(None, || Ok(())).unwrap())
            .collect();
        assert!(events.open_stream(None, || Ok(())).is_err(), "all taken");
        assert!(
            events.open_stream(Some("other".into()), || Ok(())).is_err(),
            "all taken"
        );
        // All taken: a key that holds one may still open another, which
        // ends its oldest and takes its place (a client back after
        // vanishing is not kept out by its own dead streams).
        let back = events.open_stream(Some("k".into()), || Ok(())).unwrap();
        assert!(mine[0].ended().is_cancelled(), "the oldest ends");
        assert_eq!(lock(&events.streams).total, MAX_STREAMS);
        mine.remove(0);
        assert_eq!(
            lock(&events.streams).total,
            MAX_STREAMS,
            "the stream ended gave its place"
        );
        mine.push(back);
        assert!(events.open_stream(None, || Ok(())).is_err(), "all taken");
        // Found by review 125: streams ended but not gone yet (a reader
        // that does not read) bound how many more a key may replace.
        let mut newer = Vec::new();
        for _ in 0..MAX_STREAMS_PER_KEY {
            newer.push(events.open_stream(Some("k".into()), || Ok(())).unwrap());
        }
        assert_eq!(lock(&events.streams).leaving["k"], MAX_STREAMS_PER_KEY);
        assert!(
            events.open_stream(Some("k".into()), || Ok(())).is_err(),
            "four of its streams are still going"
        );
        drop(mine);
        assert!(lock(&events.streams).leaving.is_empty());
        drop(newer);
        assert!(
            events.open_stream(Some("k".into()), || Ok(())).is_ok(),
            "given back"
        );
        // A stream its key's own limits refuse ends none of the others.
        let mine: Vec<_> = (0..MAX_STREAMS_PER_KEY - 1)
            .map(|_| events.open_stream(Some("q".into()), || Ok(())).unwrap())
            .collect();
        let refused = events.open_stream(Some("q".into()), || {
            Err(litebridge::Error::Internal {
                message: "over quota".into(),
            })
        });
        assert!(refused.is_err());
        assert!(mine.iter().all(|t| !t.ended().is_cancelled()));
        drop(mine);
        drop(others);
        let s = lock(&events.streams);
        assert_eq!(s.total, 0);
        assert!(s.per_key.is_empty());
        assert!(s.given_up.is_empty() && s.leaving.is_empty());
    }
}
