//! The event stream: what happens in the worker pool, with the seed
//! system's names (`started`, `process-started`, `process-error`,
//! `process-restarted`, `process-recycling`, `retry`,
//! `circuit-breaker-state-change`, `shutdown`), each a JSON object with an
//! `id` (a sequence number), the `event` name and a `ts` (UTC, to the
//! millisecond). Delivered by `GET /events` (server-sent events) and to
//! stdio sessions that called `events.subscribe`, and logged.
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

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use litebridge::workers::{PoolEvent, WorkerPool};
use serde_json::{Map, Value as Json, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Events a subscriber may fall behind before it misses some.
pub(crate) const BUFFER: usize = 1024;
/// Events kept for late and returning readers.
pub(crate) const RING: usize = 256;

/// One event, serialized once for every reader.
#[derive(Debug)]
pub(crate) struct Event {
    /// Its sequence number, from 1.
    pub(crate) id: u64,
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
    tx: broadcast::Sender<Arc<Event>>,
    /// The last events, oldest first; also the lock that orders publishing.
    ring: Mutex<VecDeque<Arc<Event>>>,
    next: AtomicU64,
    shutdown_sent: AtomicBool,
    closed: CancellationToken,
}

impl Events {
    pub(crate) fn new() -> Arc<Events> {
        Arc::new(Events {
            tx: broadcast::channel(BUFFER).0,
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
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut object = Map::with_capacity(fields.len() + 3);
        object.insert("id".into(), json!(id));
        object.insert("event".into(), json!(name));
        object.insert(
            "ts".into(),
            json!(crate::output::utc_stamp(SystemTime::now())),
        );
        object.extend(fields);
        let text = Json::Object(object).to_string();
        match name {
            "retry" | "circuit-breaker-state-change" => tracing::debug!(event = name, "{text}"),
            "process-error" => tracing::warn!(event = name, "{text}"),
            _ => tracing::info!(event = name, "{text}"),
        }
        let event = Arc::new(Event {
            id,
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

    /// Publishes the pool's events from now on (and `started` at once: the
    /// pool's own was sent before anyone could listen).
    pub(crate) fn follow(self: &Arc<Self>, pool: &WorkerPool) {
        let mut rx = pool.subscribe();
        self.publish(
            "started",
            object(json!({"processes": pool.status().processes})),
        );
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

    /// A reader of the events after `after` (a `Last-Event-ID`), or of the
    /// events from now on.
    pub(crate) fn subscribe(&self, after: Option<u64>) -> Subscription {
        let ring = lock(&self.ring);
        // Under the ring's lock: nothing is published between the two.
        let rx = self.tx.subscribe();
        let newest = self.next.load(Ordering::Relaxed) - 1;
        let mut backlog = VecDeque::new();
        let mut missed = 0;
        if let Some(after) = after.filter(|a| *a < newest) {
            let oldest = ring.front().map_or(newest + 1, |e| e.id);
            missed = oldest.saturating_sub(after + 1);
            backlog.extend(ring.iter().filter(|e| e.id > after).cloned());
        }
        Subscription {
            missed,
            backlog,
            rx,
            closed: self.closed.clone(),
        }
    }

    /// The events kept, oldest first.
    #[cfg(test)]
    pub(crate) fn recent(&self) -> Vec<Arc<Event>> {
        lock(&self.ring).iter().cloned().collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
        PoolEvent::WorkerExited { id, pid, error } => (
            "process-error",
            object(json!({"id": id, "pid": pid, "error": error})),
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
            error,
            delay,
        } => (
            "retry",
            object(json!({
                "method": method, "attempt": attempt, "max_attempts": max_attempts,
                "error": error, "delay_ms": delay.as_millis() as u64,
            })),
        ),
        PoolEvent::Breaker(b) => (
            "circuit-breaker-state-change",
            object(json!({"method": &*b.breaker, "from": b.from.as_str(), "to": b.to.as_str()})),
        ),
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
                Item::Event(e) => e.id.to_string(),
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
        let oldest = events.recent()[0].id;
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
        assert!(v["ts"].as_str().unwrap().ends_with('Z'));
        assert!(reader.next().await.is_none(), "ended");
    }
}
