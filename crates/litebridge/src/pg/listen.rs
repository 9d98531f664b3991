//! A `LISTEN` connection: PostgreSQL's notifications on the cache's channel,
//! handed to a callback, with the connection's losses and returns.
//!
//! The cache uses it to drop from memory what another front end changed
//! (`store/cache.rs`). Notifications are not kept for a session that was
//! not listening, so a lost connection is an event of its own: the
//! listener must assume it missed some. It reconnects every second until
//! the callback says to stop.
//!
//! Every [`CHECK`], whatever it has heard, the listener reads the
//! idempotency secret on its connection, answered within [`PROBE`] or the
//! connection is taken as lost. That finds two things:
//! - **A connection gone silent** (its server's machine gone, a partition:
//!   nothing closes it, and TCP's keepalive takes hours; review 160: memory
//!   was trusted, and other front ends' writes went unheard, until then).
//! - **A channel that moved.** The channel is named after the secret
//!   (`claims::channel`), which a failover can lose; a front end started
//!   after it makes another (review 226). Front ends that read different
//!   secrets notify different channels and do not hear each other. A
//!   front end that finds the database's secret is not the one it holds
//!   takes the database's ([`PgDatabase::follow_secret`]), listens on the
//!   new channel, and tells it `moved` (the cache: "empty your memory"),
//!   since those listening there did not hear what it wrote meanwhile; its
//!   own memory is emptied as after any loss. So front ends serve what
//!   another changed for at most a [`CHECK`] and a [`PROBE`] after such a
//!   failover, not until they are restarted.

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

/// How long the listener waits for the answer to its `LISTEN`, and to its
/// look at the secret, before taking its connection as lost.
const PROBE: Duration = Duration::from_secs(5);

/// How a look at the secret ended.
enum Looked {
    /// The channel listened on is not the database's (the secret changed): listen again, on the new one.
    Moved,
    /// No answer within [`PROBE`], or an error: the connection is lost.
    Lost,
}

impl PgDatabase {
    /// Listens on the cache's channel ([`PgDatabase::cache_channel`]) as
    /// litebridge's own role, calling `on` with what it hears, until `on`
    /// answers `false` or the database is closed. `moved` is the payload
    /// sent on a channel the listener moved to.
    pub(crate) fn listen<F, Fut>(&self, moved: String, mut on: F)
    where
        F: FnMut(Heard) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = bool> + Send,
    {
        let weak = self.downgrade();
        tokio::spawn(async move {
            // Whether `moved` is still to be told on the channel listened on.
            let mut to_tell = false;
            loop {
                let Some(db) = weak.upgrade() else { return };
                if !db.is_open() {
                    return;
                }
                let config = db.inner.config.own_config();
                let channel = db.cache_channel();
                let secret_sql = super::claims::stored_sql(db.own_schema());
                drop(db);
                let connected = match config {
                    Ok(c) => c.connect(NoTls).await.ok(),
                    Err(_) => None,
                };
                let mut looked = Looked::Lost;
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
                    let listen = async {
                        client
                            .batch_execute(&format!("LISTEN \"{channel}\""))
                            .await?;
                        if to_tell {
                            client
                                .execute("SELECT pg_catalog.pg_notify($1, $2)", &[&channel, &moved])
                                .await?;
                        }
                        Ok::<_, tokio_postgres::Error>(())
                    };
                    if matches!(tokio::time::timeout(PROBE, listen).await, Ok(Ok(()))) {
                        to_tell = false;
                        if !on(Heard::Listening).await {
                            driver.abort();
                            return;
                        }
                        let mut last_look = tokio::time::Instant::now();
                        looked = loop {
                            let heard = tokio::select! {
                                p = rx.recv() => match p {
                                    Some(payload) => Heard::Payload(payload),
                                    None => break Looked::Lost,
                                },
                                () = tokio::time::sleep(RETRY) => Heard::Idle,
                            };
                            if last_look.elapsed() >= CHECK {
                                // Notifications are passed on while the
                                // look waits: queued ahead of its answer,
                                // unread, they would hold the answer back
                                // (review 161).
                                let look = client.query_opt(&secret_sql, &[]);
                                tokio::pin!(look);
                                let deadline = tokio::time::sleep(PROBE);
                                tokio::pin!(deadline);
                                let stored = loop {
                                    tokio::select! {
                                        r = &mut look => break r.ok(),
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
                                let Some(row) = stored else {
                                    break Looked::Lost;
                                };
                                let Some(db) = weak.upgrade() else {
                                    driver.abort();
                                    return;
                                };
                                db.follow_secret(row.and_then(|r| r.try_get(0).ok())).await;
                                if db.cache_channel() != channel {
                                    break Looked::Moved;
                                }
                                last_look = tokio::time::Instant::now();
                            }
                            let open = matches!(&heard, Heard::Payload(_))
                                || weak.upgrade().is_some_and(|db| db.is_open());
                            if !open || !on(heard).await {
                                driver.abort();
                                return;
                            }
                        };
                    }
                    driver.abort();
                }
                if !on(Heard::Lost).await {
                    return;
                }
                match looked {
                    // At once: its memory is not used meanwhile.
                    Looked::Moved => to_tell = true,
                    Looked::Lost => tokio::time::sleep(RETRY).await,
                }
            }
        });
    }
}
