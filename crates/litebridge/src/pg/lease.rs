//! [`Lease`]: a pooled connection that goes back to the pool only when its
//! request ended cleanly.
//!
//! A request's future can be dropped at any await: the caller cancelled
//! (`$/cancelRequest`, MCP's `notifications/cancelled`) or hung up (HTTP).
//! The pool's own recycling only checks that a connection is open, so a
//! connection dropped half way through a request would go back with an
//! open transaction, its locks and its settings, and the next request, of
//! any key, would run inside it. A `Lease` dropped without
//! [`Lease::release`] closes the connection instead and asks the server to
//! cancel what runs (and, for a statement that goes on, ends its session:
//! [`backend`]): the server rolls the transaction back, and the pool makes
//! a new connection when it needs one.

use std::ops::Deref;
use std::sync::Weak;

use deadpool_postgres::Object;

use super::backend::{self, Backend};
use super::{Inner, Node};
use crate::sync::lock;

pub(super) struct Lease {
    conn: Option<Object>,
    /// The database whose notes of a clients' connection to a node (its
    /// server process; on the primary, its statements for one-message
    /// requests) go with it when it is closed here.
    notes: Option<(Weak<Inner>, Node)>,
}

impl Lease {
    pub(super) fn new(conn: Object) -> Lease {
        Lease {
            conn: Some(conn),
            notes: None,
        }
    }

    /// A clients' connection to `node`, whose notes in `inner` are
    /// dropped with it.
    pub(super) fn watched(conn: Object, inner: Weak<Inner>, node: Node) -> Lease {
        Lease {
            conn: Some(conn),
            notes: Some((inner, node)),
        }
    }

    /// The database and node of a watched lease.
    fn notes(&self) -> Option<(std::sync::Arc<Inner>, Node)> {
        let (inner, node) = self.notes.as_ref()?;
        Some((inner.upgrade()?, *node))
    }

    /// Back to the pool: the request ended and its session is clean.
    pub(super) fn release(mut self) {
        if let (Some(conn), Some((inner, node))) = (&self.conn, self.notes()) {
            inner.backends(node).released(Object::id(conn));
        }
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
        let mut backstop = None;
        if let Some((inner, node)) = self.notes() {
            let id = Object::id(&conn);
            if node == Node::Primary {
                lock(&inner.known).remove(&id);
            }
            backstop = inner.backends(node).take(id).map(|(b, own)| {
                let b = match inner.faults.take_reused_pid() {
                    Some(pid) => Backend { pid, ..b },
                    None => b,
                };
                (b, own, inner.backstops.clone())
            });
        }
        let token = conn.cancel_token();
        // Closed first: the server ends a session whose client is gone.
        drop(Object::take(conn));
        backend::end(token, backstop);
    }
}
