//! Worker hosts on other machines, reached through NATS.
//!
//! # Design
//!
//! **Two ends, one pool unchanged.** A worker host ([`WorkerHost`]) runs
//! today's [`WorkerPool`](crate::workers::WorkerPool) (the Python SDK as it
//! is) and serves each announced method as an endpoint of NATS's services
//! protocol (ADR-32, `$SRV.PING|INFO|STATS.litebridge_workers`), which the
//! tools operators use for NATS services read. Every endpoint is in one
//! queue group: NATS hands each call to one of the hosts serving its method.
//! A front end ([`NatsBridge`]) sends `bridge.call` there instead of to local
//! pipes, with the pool's deadlines, retries, breakers, cache and statistics.
//!
//! **Core request/reply, not JetStream.** A call whose caller gave up must
//! not run later, and only idempotent methods may run twice: at-least-once
//! delivery from a stream would break both promises.
//!
//! **Knowing a call's host.** NATS does not say which member of a queue
//! group took a message. A host acknowledges a call still running after
//! `ack_delay` (quick calls cost no extra message), naming itself; from then
//! on the call lives as long as that host's heartbeats. A call with neither
//! an acknowledgement nor an answer by `ack_delay + ack_timeout` is taken as
//! lost: a host that took it and stopped (killed, paused) cannot be told
//! from one that is slow, so its outcome is unknown (`worker_crashed`);
//! unless every host that could have it says it never did (`asking`: a
//! host shutting down drops the calls on their way to it), and then it
//! was not started, and goes to another host.
//!
//! **Judging a host dead.** Silence proves nothing while this end's own
//! link may be cut (a cut without a word looks, from here, like every host
//! dying at once). A host silent for `host_dead_after` heartbeats is judged
//! only once the link is shown to work (the server answers a probe nobody
//! serves) and a heartbeat and a quarter more pass without a word from it:
//! heartbeats held up behind a cut that just healed arrive after the
//! server's answer.
//!
//! **Started or not.** Every answer says whether the call started
//! (`Litebridge-Started`). A call that did not start (a full host, a host
//! shutting down, a host's open breaker) may go to another host whatever its
//! method; one that started, or whose outcome is unknown, goes again only
//! when every host announcing the method declares it idempotent.
//!
//! **Deadlines on both sides.** The front end sends what is left of the
//! deadline (`Litebridge-Budget-Ms`, used as the host's own timeout) and its
//! time (`Litebridge-Deadline`); a host never starts a call already past it
//! (allowing a second of clock difference). When the front end stops
//! waiting (deadline, caller gone), it publishes a cancel, and the host
//! drops the call, which sends the worker `$/cancelRequest`. An answer that
//! comes for a call nobody waits for any more is counted and dropped, never
//! delivered.
//!
//! **Messages together.** A front end's calls and cancels, and a host's
//! acknowledgements, answers and notices, go through one task per end that
//! publishes them in passes (`outbox`), so many calls or answers leave in
//! one system call, not one each; a call still counts as sent only once
//! async-nats has it. Those of a pass going to the same place (a front
//! end's calls of one method, when every host serving it reads bundles; a
//! host's answers to calls that came in bundles, for one front end) leave
//! as one message, a bundle (`bundle`), which the receiver takes apart
//! into the messages it holds.
//!
//! **Losing NATS.** async-nats queues what is published while it reconnects
//! and sends it afterwards, and core NATS drops answers published during the
//! gap; so calls in flight fail at once (`outcome_unknown`), and new calls
//! wait up to `reconnect_grace` for the connection before failing
//! (`unavailable`, not sent). A host cut off from NATS as long as it takes
//! the front ends to declare it dead cancels its calls in flight.

mod asking;
mod bundle;
mod config;
mod fields;
mod front;
mod host;
mod mailbox;
mod outbox;
mod seen;
mod wire;

pub use config::NatsConfig;
pub use front::{HostStatus, NatsBridge};
pub use host::WorkerHost;

use crate::error::{Error, Result};

/// Connects to the servers of `config`, or says why not (naming them).
async fn connect(
    config: &NatsConfig,
    name: &str,
    side: config::Side,
    events: Option<tokio::sync::mpsc::UnboundedSender<async_nats::Event>>,
) -> Result<async_nats::Client> {
    let mut options = config.connect_options(name, side)?;
    if let Some(tx) = events {
        options = options.event_callback(move |e| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e);
            }
        });
    }
    let addresses: Vec<async_nats::ServerAddr> = config
        .url
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| {
            a.parse().map_err(|e| Error::Config {
                key: "nats.url".into(),
                value: format!("{a:?}"),
                expected: format!("a NATS address such as nats://127.0.0.1:4222 ({e})"),
            })
        })
        .collect::<Result<_>>()?;
    match tokio::time::timeout(config.connect_timeout, options.connect(addresses)).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(Error::Unavailable {
            what: "NATS",
            reason: format!("cannot connect to {}: {e}", config.url),
        }),
        Err(_) => Err(Error::Unavailable {
            what: "NATS",
            reason: format!(
                "cannot connect to {} within {} ms",
                config.url,
                config.connect_timeout.as_millis()
            ),
        }),
    }
}
