//! [`Lease`]: a pooled connection that goes back to the pool only when its
//! request ended cleanly.
//!
//! A request's future can be dropped at any await: the caller cancelled
//! (`$/cancelRequest`, MCP's `notifications/cancelled`) or hung up (HTTP).
//! The pool's own recycling only checks that a connection is open, so a
//! connection dropped half way through a request would go back with an
//! open transaction, its locks and its settings, and the next request, of
//! any key, would run inside it. A `Lease` dropped without
//! [`Lease::release`] asks the server to cancel what runs and closes the
//! connection instead: the server rolls the transaction back, and the pool
//! makes a new connection when it needs one.
//!
//! A lease also says whether its session was left inside a read-only
//! transaction ([`Open`]): a clients' read begins the next read's
//! transaction in its own round trip (see `read_on`).

use std::ops::Deref;

use deadpool_postgres::Object;
use tokio_postgres::NoTls;

use super::STOP_GRACE;

pub(super) struct Lease(Option<Object>, Open);

/// The transaction a leased connection's session is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Open {
    /// None: the session is idle outside a transaction.
    None,
    /// A `BEGIN READ ONLY` the server answered, with nothing run in it
    /// since: the next read runs in it.
    ReadOnly,
    /// Not known, so either of the above (a used connection whose record
    /// was lost): a read begins its own (a `BEGIN` inside one only warns),
    /// anything else rolls back first.
    Unknown,
}

impl Lease {
    pub(super) fn new(conn: Object) -> Lease {
        Lease(Some(conn), Open::None)
    }

    /// The transaction the session was left in.
    pub(super) fn open(&self) -> Open {
        self.1
    }

    pub(super) fn set_open(&mut self, open: Open) {
        self.1 = open;
    }

    /// Back to the pool: the request ended and its session is clean.
    pub(super) fn release(mut self) {
        drop(self.0.take());
    }

    /// The connection, out of the lease's care (to be closed or stopped).
    pub(super) fn detach(mut self) -> Object {
        self.0
            .take()
            .expect("a lease holds its connection until released")
    }
}

impl Deref for Lease {
    type Target = Object;
    fn deref(&self) -> &Object {
        self.0
            .as_ref()
            .expect("a lease holds its connection until released")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(conn) = self.0.take() else { return };
        let token = conn.cancel_token();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(STOP_GRACE, token.cancel_query(NoTls)).await;
            });
        }
        drop(Object::take(conn));
    }
}
