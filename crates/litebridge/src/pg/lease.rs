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

use std::ops::Deref;
use std::sync::Weak;

use deadpool_postgres::Object;
use tokio_postgres::NoTls;

use super::{Inner, STOP_GRACE};
use crate::sync::lock;

pub(super) struct Lease {
    conn: Option<Object>,
    /// The database whose notes of a clients' connection to the primary
    /// (its statements for one-message requests) go with it when it is closed
    /// here.
    notes: Option<Weak<Inner>>,
}

impl Lease {
    pub(super) fn new(conn: Object) -> Lease {
        Lease {
            conn: Some(conn),
            notes: None,
        }
    }

    /// A clients' connection to the primary, whose notes in `inner` are
    /// dropped with it.
    pub(super) fn watched(conn: Object, inner: Weak<Inner>) -> Lease {
        Lease {
            conn: Some(conn),
            notes: Some(inner),
        }
    }

    /// Back to the pool: the request ended and its session is clean.
    pub(super) fn release(mut self) {
        drop(self.conn.take());
    }

    /// The connection, out of the lease's care (to be closed or stopped).
    pub(super) fn detach(mut self) -> Object {
        self.conn
            .take()
            .expect("a lease holds its connection until released")
    }
}

impl Deref for Lease {
    type Target = Object;
    fn deref(&self) -> &Object {
        self.conn
            .as_ref()
            .expect("a lease holds its connection until released")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if let Some(inner) = self.notes.as_ref().and_then(Weak::upgrade) {
            lock(&inner.known).remove(&Object::id(&conn));
        }
        let token = conn.cancel_token();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(STOP_GRACE, token.cancel_query(NoTls)).await;
            });
        }
        drop(Object::take(conn));
    }
}
