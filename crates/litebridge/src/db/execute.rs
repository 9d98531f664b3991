//! The future of [`Database::execute`](super::Database::execute), written by
//! hand.
//!
//! # Why not an `async fn`
//!
//! A pipelining caller keeps many of these futures in flight (a
//! `FuturesUnordered` of 64 per producer in the benchmark), and each one is
//! moved into its own allocation and polled from there. The compiler's state
//! machine for the same steps took 400 bytes, because every variable that
//! lives across an await gets its own room; this one is an enum whose states
//! share their room (under 120 bytes), so a caller moves, allocates and
//! touches a third of the memory per request. It is still lazy: nothing is
//! queued until the first poll.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::sync::oneshot;

use super::group_commit::{self, ExecReply, Request};
use super::guard::CancelOnDrop;
use super::{Inner, WriteOptions, admission};
use crate::error::{Error, Result};
use crate::value::{ExecResult, Params};

type Wait<'a> = Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>;
type Once<'a> = Pin<Box<dyn Future<Output = Result<Vec<ExecResult>>> + Send + 'a>>;

/// One statement through group commit.
pub(super) struct Execute<'a> {
    inner: &'a Inner,
    state: State<'a>,
    /// Once queued: dropped with this future before its answer, it has the
    /// statement interrupted (see `Budget::cancellable`).
    cancel: Option<CancelOnDrop>,
}

enum State<'a> {
    /// Not polled yet.
    Start {
        sql: Cow<'static, str>,
        params: Params,
        options: WriteOptions,
        trusted: bool,
    },
    /// The queue was full: waiting for room (rare, so boxed).
    Room {
        wait: Wait<'a>,
        reply: oneshot::Receiver<ExecReply>,
        started: Instant,
    },
    /// With an idempotency key: a job of its own (see `claims`).
    Once(Once<'a>),
    /// Queued: waiting for the answer.
    Reply {
        reply: oneshot::Receiver<ExecReply>,
        started: Instant,
    },
    Done,
}

impl<'a> Execute<'a> {
    pub(super) fn new(
        inner: &'a Inner,
        sql: Cow<'static, str>,
        params: Params,
        options: WriteOptions,
        trusted: bool,
    ) -> Self {
        Execute {
            inner,
            state: State::Start {
                sql,
                params,
                options,
                trusted,
            },
            cancel: None,
        }
    }

    fn finish(&mut self, started: Instant, r: Result<ExecResult>) -> Poll<Result<ExecResult>> {
        self.state = State::Done;
        let r = self.inner.named(r);
        self.inner.record_write(started, &r);
        Poll::Ready(r)
    }
}

impl Future for Execute<'_> {
    type Output = Result<ExecResult>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Start { .. } => {
                    let State::Start {
                        sql,
                        params,
                        options,
                        trusted,
                    } = std::mem::replace(&mut this.state, State::Done)
                    else {
                        unreachable!("matched above")
                    };
                    if let Some(key) = options.idempotency_key {
                        let fingerprint = crate::idempotency::fingerprint(
                            "Each",
                            [(sql.as_ref(), super::claims::params_text(&params))].into_iter(),
                        );
                        let run = move |conn: &rusqlite::Connection| {
                            let mut stmt = super::exec::prepare(conn, &sql)?;
                            Ok(vec![super::exec::execute_prepared(
                                conn,
                                &mut stmt,
                                &params,
                                super::exec::Returned::Keep,
                            )?])
                        };
                        this.state = State::Once(Box::pin(this.inner.submit_once(
                            options,
                            key,
                            fingerprint,
                            run,
                        )));
                        continue;
                    }
                    let mut budget = this.inner.budget(options.timeout);
                    // Trusted here is litebridge's own statement only
                    // (`Database::execute_trusted`).
                    budget.trusted = trusted;
                    budget.own = trusted;
                    let started = budget.started;
                    let (budget, cancel) = budget.cancellable();
                    this.cancel = Some(cancel);
                    let (job, reply) = group_commit::ExecJob::new(budget, sql, params);
                    let writer = &this.inner.writer;
                    this.state = match writer.submit_now(Request::Exec(job), admission(&options)) {
                        Ok(None) => State::Reply { reply, started },
                        Ok(Some(job)) => State::Room {
                            wait: Box::pin(writer.wait_for_room(job)),
                            reply,
                            started,
                        },
                        Err(e) => return this.finish(started, Err(e)),
                    };
                }
                State::Room { wait, started, .. } => match wait.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(())) => {
                        let State::Room { reply, started, .. } =
                            std::mem::replace(&mut this.state, State::Done)
                        else {
                            unreachable!("matched above")
                        };
                        this.state = State::Reply { reply, started };
                    }
                    Poll::Ready(Err(e)) => {
                        let started = *started;
                        return this.finish(started, Err(e));
                    }
                },
                State::Once(once) => {
                    // Counted and named by `submit_once`, as any write.
                    let r = std::task::ready!(once.as_mut().poll(cx));
                    this.state = State::Done;
                    return Poll::Ready(r.and_then(|one| {
                        one.into_iter().next().ok_or_else(|| Error::Internal {
                            message: "an idempotency record of execute holds no result".into(),
                        })
                    }));
                }
                State::Reply { reply, started } => {
                    let r = match Pin::new(reply).poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        // The SQL and parameters come back to be dropped here,
                        // on the caller's thread (see `ExecReply`).
                        Poll::Ready(Ok(ExecReply { result, leftovers })) => {
                            drop(leftovers);
                            result
                        }
                        Poll::Ready(Err(_)) => Err(Error::writer_gone()),
                    };
                    let started = *started;
                    return this.finish(started, r);
                }
                State::Done => panic!("an execute future was polled after it finished"),
            }
        }
    }
}
