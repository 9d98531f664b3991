//! A `LISTEN` connection: PostgreSQL's notifications on one channel, handed
//! to a callback, with the connection's losses and returns.
//!
//! The cache uses it to drop from memory what another front end changed
//! (`store/cache.rs`). Notifications are not kept for a session that was
//! not listening, so a lost connection is an event of its own: the
//! listener must assume it missed some. It reconnects every second until
//! the callback says to stop. A connection that goes silent (its server's
//! machine gone, a partition: nothing closes it, and TCP's keepalive takes
//! hours) is found by a query every [`PROBE`] it has heard nothing, answered
//! within [`PROBE`] or taken as lost (review 160: memory was trusted, and
//! other front ends' writes went unheard, until then).

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
    /// The connection was lost (or could not be made).
    Lost,
    /// Nothing for a second: answer whether to go on listening.
    Idle,
}

/// How long the listener waits before connecting again.
const RETRY: Duration = Duration::from_secs(1);

/// How long the listener goes without a word from its connection before
/// asking it one, and how long it waits for the answer.
const PROBE: Duration = Duration::from_secs(5);

impl PgDatabase {
    /// Listens on `channel` as litebridge's own role, calling `on` with
    /// what it hears, until `on` answers `false` or the database is closed.
    pub(crate) fn listen<F, Fut>(&self, channel: String, mut on: F)
    where
        F: FnMut(Heard) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = bool> + Send,
    {
        let weak = self.downgrade();
        tokio::spawn(async move {
            loop {
                let Some(db) = weak.upgrade() else { return };
                if !db.is_open() {
                    return;
                }
                let config = db.inner.config.own_config();
                drop(db);
                let connected = match config {
                    Ok(c) => c.connect(NoTls).await.ok(),
                    Err(_) => None,
                };
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
                    let statement = format!("LISTEN \"{channel}\"");
                    let listen = client.batch_execute(&statement);
                    if matches!(tokio::time::timeout(PROBE, listen).await, Ok(Ok(()))) {
                        if !on(Heard::Listening).await {
                            driver.abort();
                            return;
                        }
                        let mut last_word = tokio::time::Instant::now();
                        loop {
                            let heard = tokio::select! {
                                p = rx.recv() => match p {
                                    Some(payload) => Heard::Payload(payload),
                                    None => break,
                                },
                                () = tokio::time::sleep(RETRY) => Heard::Idle,
                            };
                            if matches!(heard, Heard::Payload(_)) {
                                last_word = tokio::time::Instant::now();
                            } else if last_word.elapsed() >= PROBE {
                                // Notifications are passed on while the
                                // probe waits: queued ahead of its answer,
                                // unread, they would hold the answer back
                                // (review 161).
                                let probe = client.batch_execute("SELECT 1");
                                tokio::pin!(probe);
                                let deadline = tokio::time::sleep(PROBE);
                                tokio::pin!(deadline);
                                let answered = loop {
                                    tokio::select! {
                                        r = &mut probe => break r.is_ok(),
                                        p = rx.recv() => match p {
                                            Some(payload) => {
                                                if !on(Heard::Payload(payload)).await {
                                                    driver.abort();
                                                    return;
                                                }
                                            }
                                            None => break false,
                                        },
                                        () = &mut deadline => break false,
                                    }
                                };
                                if !answered {
                                    break;
                                }
                                last_word = tokio::time::Instant::now();
                            }
                            let open = matches!(&heard, Heard::Payload(_))
                                || weak.upgrade().is_some_and(|db| db.is_open());
                            if !open || !on(heard).await {
                                driver.abort();
                                return;
                            }
                        }
                    }
                    driver.abort();
                }
                if !on(Heard::Lost).await {
                    return;
                }
                tokio::time::sleep(RETRY).await;
            }
        });
    }
}
