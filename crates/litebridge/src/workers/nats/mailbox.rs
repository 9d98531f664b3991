//! Where the messages about one call wait for it: a queue with one sender
//! and one receiver.
//!
//! A front end makes one per call, and most calls get one message (their
//! answer) or two. Tokio's unbounded channel allocates a block of 32 slots
//! at its making (about 6 KB for a NATS message each), which a profile of
//! `bridge-nats-pipelined` put among the largest per-call costs; this one
//! allocates its shared part, which holds one message, and room for four
//! more only when a second waits behind the first.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use crate::sync::lock;

struct Shared<T> {
    queue: Mutex<Queue<T>>,
    waker: AtomicWaker,
}

struct Queue<T> {
    /// The oldest message, put here only while `items` is empty (so it is
    /// older than any there).
    first: Option<T>,
    /// The messages behind `first`, or all of them once it is taken while
    /// others wait.
    items: VecDeque<T>,
    /// The sender is gone: once the items are read, `recv` gives `None`.
    closed: bool,
    /// The receiver is gone: `send` gives its item back.
    dropped: bool,
}

/// The sending half; dropping it ends the receiver's messages.
pub(crate) struct Sender<T>(Arc<Shared<T>>);

/// The receiving half.
pub(crate) struct Receiver<T>(Arc<Shared<T>>);

/// A mailbox's two halves.
pub(crate) fn mailbox<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            first: None,
            items: VecDeque::new(),
            closed: false,
            dropped: false,
        }),
        waker: AtomicWaker::new(),
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl<T> Sender<T> {
    /// Queues `item`, or gives it back when the receiver is gone.
    pub(crate) fn send(&self, item: T) -> Result<(), T> {
        {
            let mut queue = lock(&self.0.queue);
            if queue.dropped {
                return Err(item);
            }
            if queue.first.is_none() && queue.items.is_empty() {
                queue.first = Some(item);
            } else {
                if queue.items.capacity() == 0 {
                    queue.items.reserve_exact(4);
                }
                queue.items.push_back(item);
            }
        }
        self.0.waker.wake();
        Ok(())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        lock(&self.0.queue).closed = true;
        self.0.waker.wake();
    }
}

impl<T> Receiver<T> {
    /// The next message, or `None` once the sender is gone and every
    /// message was read. Cancel-safe: a message is taken only when given.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        // Within tokio's budget of work per turn, as its channels are: a
        // flood of messages (a peer can send a call's inbox many) must not
        // keep the task from yielding.
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        if let Some(ready) = self.try_take() {
            coop.made_progress();
            return Poll::Ready(ready);
        }
        // Registered before looking again: a message sent in between
        // wakes this task.
        self.0.waker.register(cx.waker());
        match self.try_take() {
            Some(ready) => {
                coop.made_progress();
                Poll::Ready(ready)
            }
            None => Poll::Pending,
        }
    }

    /// A message, `Some(None)` when none will come, `None` when one may.
    fn try_take(&self) -> Option<Option<T>> {
        let mut queue = lock(&self.0.queue);
        // `first` is older than any in `items` (one goes there only while
        // `items` is empty).
        match queue.first.take().or_else(|| queue.items.pop_front()) {
            Some(item) => Some(Some(item)),
            None if queue.closed => Some(None),
            None => None,
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        // Items queued are dropped with the last half.
        lock(&self.0.queue).dropped = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_order_of_sends_and_takes_keeps_the_messages_in_order() {
        // Each bit of `pattern`: send the next number, or take one.
        for pattern in 0u32..1 << 12 {
            let (tx, rx) = mailbox();
            let mut model = VecDeque::new();
            let mut next = 0;
            for bit in 0..12 {
                if pattern >> bit & 1 == 1 {
                    tx.send(next).unwrap();
                    model.push_back(next);
                    next += 1;
                } else {
                    assert_eq!(rx.try_take().flatten(), model.pop_front(), "{pattern:b}");
                }
            }
            while let Some(m) = model.pop_front() {
                assert_eq!(rx.try_take(), Some(Some(m)));
            }
        }
    }

    #[tokio::test]
    async fn messages_come_in_order_then_none_once_the_sender_is_gone() {
        let (tx, mut rx) = mailbox();
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        assert_eq!(rx.recv().await, Some(1));
        let waiting = tokio::spawn(async move {
            let a = rx.recv().await;
            let b = rx.recv().await;
            let c = rx.recv().await;
            (a, b, c)
        });
        tokio::task::yield_now().await;
        tx.send(3).unwrap();
        drop(tx);
        assert_eq!(waiting.await.unwrap(), (Some(2), Some(3), None));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_receiver_of_a_flood_yields_to_other_tasks() {
        let (tx, mut rx) = mailbox();
        for i in 0..10_000 {
            tx.send(i).unwrap();
        }
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let other = ran.clone();
        tokio::spawn(async move { other.store(true, std::sync::atomic::Ordering::Release) });
        let mut ran_before_the_last = false;
        for i in 0..10_000 {
            assert_eq!(rx.recv().await, Some(i));
            if i < 9_999 && ran.load(std::sync::atomic::Ordering::Acquire) {
                ran_before_the_last = true;
            }
        }
        assert!(ran_before_the_last, "the receiver never yielded");
    }

    #[tokio::test]
    async fn a_message_to_a_receiver_gone_comes_back() {
        let (tx, rx) = mailbox();
        drop(rx);
        assert_eq!(tx.send("answer"), Err("answer"));
    }

    #[tokio::test]
    async fn a_receiver_waiting_wakes_for_a_message_sent_from_another_thread() {
        let (tx, mut rx) = mailbox::<u32>();
        let sender = std::thread::spawn(move || {
            for i in 0..1000 {
                tx.send(i).unwrap();
            }
        });
        for i in 0..1000 {
            assert_eq!(rx.recv().await, Some(i));
        }
        sender.join().unwrap();
        assert_eq!(rx.recv().await, None);
    }
}
