//! Accepting HTTP connections, with the limits `axum::serve` does not set:
//! at most `max_connections` at once (beyond that, connections wait in the
//! listen backlog), and a request's head must arrive whole within
//! `read_timeout`, on a new connection and between requests of a kept-alive
//! one; and a response write that makes no progress for as long fails the
//! connection (a client that never reads its answer holds neither a slot
//! nor the answer's memory). A slow or stalled client (slowloris) holds a
//! connection for that long at most, and a flood of them cannot push out
//! everyone else for longer. A body has the same deadline, enforced where
//! it is read (`http::rpc_handler`, the `/mcp` middleware). On shutdown:
//! stop accepting, answer requests that come on connections kept alive as
//! not run (for up to `DRAIN_WINDOW`, while any are open), let requests in
//! flight finish, close idle connections.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::transport::peer::Peer;
use crate::transport::standby::{self, Standby};

/// What one server holds its clients to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Connections open at once.
    pub(crate) max_connections: usize,
    /// A request's head (and, in the handler, its body) must arrive within this.
    pub(crate) read_timeout: Duration,
}

/// How long a server told to stop keeps its connections open for requests
/// already on their way (answered as not run), unless they all close first.
const DRAIN_WINDOW: Duration = Duration::from_millis(500);

/// Serves `router` on `listener` until `shutdown` completes, then drains.
///
/// A standby acceptor on a thread of its own answers `/health`, `/ready` and
/// `/metrics` while every thread of this runtime is held (see `standby`).
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(
        listener,
        router,
        limits,
        shutdown,
        standby::Rules::default(),
    )
    .await;
}

/// As [`serve`], with the standby's rules given.
pub(crate) async fn serve_with(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
    rules: standby::Rules,
) {
    room_for(limits.max_connections);
    // Whether the system tells who connected is found now, with
    // descriptors to spare (`peer`).
    crate::transport::peer::probe();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let builder = http1(limits);
    let standby = Standby::start(&listener, router.clone(), limits, permits.clone(), rules);
    // The connections' tasks are this future's: dropped at the end of the
    // grace period, it ends what they still run (a request's write is
    // interrupted, uncommitted). Spawned apart, they ran on until the
    // database was halted, and the quota counts written at shutdown
    // waited behind them and failed (review 251).
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(_) = connections.join_next() => continue,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, remote) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, then go on.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = with_peer(&router, &stream, remote);
        let conn = builder.serve_connection(io(stream, limits), service);
        let conn = graceful.watch(conn);
        connections.spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection ended: {e}");
            }
            drop(permit);
        });
    }
    drop(listener);
    // Connections kept alive get a moment to send what they were about to:
    // those requests are answered as not run, with `Connection: close`
    // (`http::refuse_while_draining`), and their clients close them. Then
    // the idle ones left are closed, and those in flight finish.
    let until = tokio::time::Instant::now() + DRAIN_WINDOW;
    while permits.available_permits() < limits.max_connections
        && tokio::time::Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    match standby {
        Some(standby) => {
            tokio::join!(graceful.shutdown(), standby.stop());
        }
        None => graceful.shutdown().await,
    }
    // `graceful` saw every connection end; their tasks end with them.
    connections.join_all().await;
}

/// `router`, serving one connection: each request carries the connection's
/// [`Peer`] (who a keyless caller is is asked of it).
pub(crate) fn with_peer(
    router: &Router,
    stream: &TcpStream,
    remote: std::net::SocketAddr,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future: Send,
> + use<> {
    use hyper::service::Service as _;
    let local = stream.local_addr().unwrap_or(remote);
    let peer = Peer::new(local, remote);
    let service = TowerToHyperService::new(router.clone());
    hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(peer.clone());
        service.call(request)
    })
}

/// The most a connection's read buffer holds before a request's head is
/// whole: 64 KiB, passed by one read at most (so a head of 120 KiB or more
/// is refused, 431). hyper's default, 408 KiB, let a client without a key
/// hold that much on each of `server.max_connections` connections with
/// headers sent slowly (review 158).
pub(crate) const MAX_HEAD: usize = 64 << 10;

/// The HTTP/1 settings every connection is served with.
pub(crate) fn http1(limits: Limits) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.read_timeout)
        .max_buf_size(MAX_HEAD)
        .keep_alive(true);
    builder
}

/// An accepted connection as hyper serves it: no Nagle delay, and writes
/// that must make progress within `read_timeout`.
pub(crate) fn io(stream: TcpStream, limits: Limits) -> TokioIo<Patient<TcpStream>> {
    let _ = stream.set_nodelay(true);
    TokioIo::new(Patient::new(stream, limits.read_timeout))
}

/// A connection whose writes must make progress: one that stays pending for
/// `timeout` fails with `TimedOut`, and hyper closes the connection.
pub(crate) struct Patient<T> {
    io: T,
    timeout: Duration,
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<T> Patient<T> {
    fn new(io: T, timeout: Duration) -> Self {
        Patient {
            io,
            timeout,
            stalled: None,
        }
    }

    /// Passes a write's outcome through, timing how long it stays pending.
    fn watch<R>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        outcome: std::task::Poll<std::io::Result<R>>,
    ) -> std::task::Poll<std::io::Result<R>> {
        use std::future::Future as _;
        match outcome {
            std::task::Poll::Pending => {
                let timeout = self.timeout;
                let stall = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if stall.as_mut().poll(cx).is_ready() {
                    return std::task::Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client has not read its answer within server.read_timeout_ms",
                    )));
                }
                std::task::Poll::Pending
            }
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Patient<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Patient<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let outcome = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, outcome)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let outcome = std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, outcome)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let outcome = std::pin::Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, outcome)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Descriptors kept beside the connections, for the database's files, the
/// workers' pipes, backups, the standby acceptor and the logs.
const RESERVE: u64 = 1024;

/// Raises this process's soft limit on open files, within its hard limit,
/// to hold `max_connections` connections and [`RESERVE`] more, with a
/// warning naming the setting when the hard limit is lower. With the common
/// soft limit of 1,024 and `server.max_connections` at its default of
/// 1,024, a stranger's idle connections took every descriptor, and the
/// server's own (its database's files, its look at who connected) failed
/// (review 246). Worker processes started after inherit the raised limit.
#[allow(unsafe_code)]
fn room_for(max_connections: usize) {
    let want = max_connections as u64 + RESERVE;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes the limit into `lim`, a live value of its type.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    if lim.rlim_cur == libc::RLIM_INFINITY || lim.rlim_cur >= want {
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: if lim.rlim_max == libc::RLIM_INFINITY {
            want
        } else {
            want.min(lim.rlim_max)
        },
        rlim_max: lim.rlim_max,
    };
    // SAFETY: setrlimit(2) reads `raised`, a live value of its type.
    let ok = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0;
    let now = if ok { raised.rlim_cur } else { lim.rlim_cur };
    if now < want {
        tracing::warn!(
            open_files = now,
            "server.max_connections = {max_connections} wants {want} open files with room for \
             the database and workers, and this process may open {now} (its hard limit): \
             connections past what the limit holds fail to be accepted; raise the limit \
             (`ulimit -Hn`, systemd's LimitNOFILE=) or lower server.max_connections"
        );
    }
}
