//! A `LISTEN` connection: PostgreSQL's notifications on the cache's channel,
//! handed to a callback, with the connection's losses and returns.
//!
//! The cache uses it to drop from memory what another front end changed
//! (`store/cache.rs`). Notifications are not kept for a session that was
//! not listening, so a lost connection is an event of its own: the
//! listener must assume it missed some. It reconnects every second until
//! the callback says to stop.
//!
//! Every [`CHECK`] the listener reads the idempotency secret on its
//! connection, whatever it has heard, passing on the notifications that
//! come meanwhile (review 161: queued ahead of the answer, unread, they
//! held it back). An answer not back within [`PROBE`] loses the
//! connection. That finds two things:
//! - **A connection gone silent** (its server's machine gone, a partition:
//!   nothing closes it, and TCP's keepalive takes hours; review 160: memory
//!   was trusted, and other front ends' writes went unheard, until then).
//! - **A channel that moved.** The channel is named after the secret
//!   (`claims::channel`), which a failover can lose; a front end started
//!   after it makes another (review 226). Front ends that hold different
//!   secrets notify different channels and do not hear each other. A
//!   listener that finds the database's secret is not its front end's, or
//!   that its front end took another (a keyed write finds it too), stops
//!   listening at once (memory is not used meanwhile), takes the database's
//!   secret ([`PgDatabase::follow_secret`], within [`PROBE`], again every
//!   second until it can), listens on the new channel, and tells it `moved`
//!   (the cache: "empty your memory"): those listening there did not hear
//!   what its front end wrote on the old one. So a front end serves what
//!   another changed for at most a [`CHECK`] (and the look's round trip)
//!   after such a failover, not until it is restarted. (A write that named
//!   the old channel and commits after the move is told on the new one by
//!   its writer: `store/cache.rs`.)

use std::time::Duration;

use futures_util::StreamExt;
use tokio_postgres::{AsyncMessage, NoTls};

use super::PgDatabase;

/// What the listener saw.
#[derive(Debug)]
pub(crate) enum Heard {
    /// Listening (again): what was sent while it was not is lost.
    Listening,
    /// A notification's payload.
    Payload(String),
    /// The connection was lost (or could not be made), or the channel moved.
    Lost,
    /// Nothing for a second: answer whether to go on listening.
    Idle,
}

/// How long the listener waits before connecting again.
const RETRY: Duration = Duration::from_secs(1);

/// How often the listener reads the secret on its connection.
const CHECK: Duration = Duration::from_secs(1);

/// How long the listener waits for the answer to its `LISTEN`, to its look
/// at the secret, and for the secret to be taken, before giving up on them.
const PROBE: Duration = Duration::from_secs(5);

/// Why the listener stopped listening.
enum Stopped {
    /// The connection was lost, or could not be made.
    Lost,
    /// The channel moved: listen again at once, after taking the secret
    /// read (`Some`: the secret's text, or `None` for none) if there is one.
    Moved(Option<Option<String>>),
}

impl PgDatabase {
    /// Listens on the cache's channel ([`PgDatabase::cache_channel`]) as
    /// litebridge's own role, calling `on` with what it hears, until `on`
    /// answers `false` or the database is closed. `moved` is the payload
    /// told on a channel the listener moved to.
    pub(crate) fn listen<F, Fut>(&self, moved: String, mut on: F)
    where
        F: FnMut(Heard) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = bool> + Send,
    {
        let weak = self.downgrade();
        tokio::spawn(async move {
            // The channel last listened on, with `moved` told there if owed.
            let mut listened: Option<String> = None;
            // A secret read that is not the front end's, to take first.
            let mut follow: Option<Option<String>> = None;
            // Whether taking it failed last time (logged once).
            let mut failing = false;
            loop {
                let Some(db) = weak.upgrade() else { return };
                if !db.is_open() {
                    return;
                }
                if let Some(stored) = follow.take() {
                    let took = tokio::time::timeout(PROBE, db.follow_secret(stored.clone())).await;
                    match took {
                        Ok(Ok(())) => {
                            if failing {
                                tracing::info!(
                                    "the cache's listener took the database's idempotency secret"
                                );
                            }
                            failing = false;
                        }
                        failed => {
                            if !failing {
                                let why = match failed {
                                    Ok(Err(e)) => e.to_string(),
                                    _ => format!("no answer within {} s", PROBE.as_secs()),
                                };
                                tracing::warn!(
                                    "the cache's listener cannot take the database's idempotency \
                                     secret, and does not listen until it can (memory unused): {why}"
                                );
                            }
                            failing = true;
                            follow = Some(stored);
                            drop(db);
                            tokio::time::sleep(RETRY).await;
                            continue;
                        }
                    }
                }
                let config = db.inner.config.own_config();
                let channel = db.cache_channel();
                let secret_sql = super::claims::stored_sql(db.own_schema());
                drop(db);
                let connected = match config {
                    Ok(c) => c.connect(NoTls).await.ok(),
                    Err(_) => None,
                };
                let mut stopped = Stopped::Lost;
                if let Some((client, mut connection)) = connected {
                    // The connection is driven by a task of its own, which
                    // passes the notifications on and ends with it.
                    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1024);
                    let driver = tokio::spawn(async move {
                        let mut messages =
                            futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                        while let Some(Ok(message)) = messages.next().await {
                            if let AsyncMessage::Notification(n) = message
                                && tx.send(n.payload().to_owned()).await.is_err()
                            {
                                return;
                            }
                        }
                    });
                    // Within a probe's time too: a server gone silent here
                    // left memory unused until TCP gave up.
                    let tell = listened.as_ref().is_some_and(|l| *l != channel);
                    let listen = async {
                        client
                            .batch_execute(&format!("LISTEN \"{channel}\""))
                            .await?;
                        if tell {
                            client
                                .execute("SELECT pg_catalog.pg_notify($1, $2)", &[&channel, &moved])
                                .await?;
                        }
                        Ok::<_, tokio_postgres::Error>(())
                    };
                    if matches!(tokio::time::timeout(PROBE, listen).await, Ok(Ok(()))) {
                        listened = Some(channel.clone());
                        if !on(Heard::Listening).await {
                            driver.abort();
                            return;
                        }
                        let mut last_look = tokio::time::Instant::now();
                        stopped = loop {
                            let heard = tokio::select! {
                                p = rx.recv() => match p {
                                    Some(payload) => Heard::Payload(payload),
                                    None => break Stopped::Lost,
                                },
                                () = tokio::time::sleep(RETRY) => Heard::Idle,
                            };
                            let open = matches!(&heard, Heard::Payload(_))
                                || weak.upgrade().is_some_and(|db| db.is_open());
                            if !open || !on(heard).await {
                                driver.abort();
                                return;
                            }
                            let Some(db) = weak.upgrade() else {
                                driver.abort();
                                return;
                            };
                            if last_look.elapsed() < CHECK || db.inner.faults.secret_looks_held() {
                                continue;
                            }
                            drop(db);
                            let look = client.query_opt(&secret_sql, &[]);
                            tokio::pin!(look);
                            let deadline = tokio::time::sleep(PROBE);
                            tokio::pin!(deadline);
                            let answer = loop {
                                tokio::select! {
                                    r = &mut look => break Some(r),
                                    p = rx.recv() => match p {
                                        Some(payload) => {
                                            if !on(Heard::Payload(payload)).await {
                                                driver.abort();
                                                return;
                                            }
                                        }
                                        None => break None,
                                    },
                                    () = &mut deadline => break None,
                                }
                            };
                            let stored: Option<String> = match answer {
                                Some(Ok(row)) => row.and_then(|r| r.try_get(0).ok()),
                                // The connection answers, with an error (the
                                // table gone, a right revoked): nothing to
                                // follow, and nothing to reconnect for.
                                Some(Err(e)) if e.as_db_error().is_some() => {
                                    last_look = tokio::time::Instant::now();
                                    continue;
                                }
                                Some(Err(_)) | None => break Stopped::Lost,
                            };
                            let Some(db) = weak.upgrade() else {
                                driver.abort();
                                return;
                            };
                            if !db.holds_secret(stored.as_deref()) {
                                break Stopped::Moved(Some(stored));
                            }
                            if db.cache_channel() != channel {
                                break Stopped::Moved(None);
                            }
                            last_look = tokio::time::Instant::now();
                        };
                    }
                    driver.abort();
                }
                if !on(Heard::Lost).await {
                    return;
                }
                match stopped {
                    // At once: memory is not used meanwhile.
                    Stopped::Moved(stored) => follow = stored,
                    Stopped::Lost => tokio::time::sleep(RETRY).await,
                }
            }
        });
    }
}
