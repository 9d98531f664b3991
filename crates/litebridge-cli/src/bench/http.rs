//! HTTP cases: JSON-RPC over `POST /rpc` against `GET /health` on the same
//! server, which the bench starts itself on 127.0.0.1:0, with keep-alive
//! clients (a minimal HTTP/1.1 client: what is measured is the server).
//!
//! A secured server has one API key (tier `pro` with limits no run reaches,
//! so every request is authenticated, scope-checked, counted and given a
//! concurrent slot) and its clients send it; an open one has no key.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use litebridge::Service;
use litebridge::auth::{Auth, NewKey, Scopes, TierLimits, Tiers};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::cases::{READ_ROWS, VALUE};
use super::measure::{Figures, Rng, Samples, gather_tasks, stop_after};
use crate::{CliResult, Failure};

/// What each client sends.
#[derive(Clone, Copy)]
pub(crate) enum Load {
    Health,
    Query,
    Execute,
}

/// A running server for the HTTP cases.
pub(crate) struct Bench {
    addr: std::net::SocketAddr,
    /// The next key `http-execute` inserts.
    next_key: Arc<AtomicI64>,
    app: Arc<crate::rpc::App>,
    upkeep: tokio::task::JoinHandle<()>,
    /// The `Authorization` header line clients send (secured servers).
    authorization: Arc<str>,
    server: tokio::task::JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Bench {
    pub(crate) async fn start(dir: &Path, secured: bool) -> CliResult<Bench> {
        let file = if secured { "http-keys.db" } else { "http.db" };
        let service = seeded(&dir.join(file)).await?;
        Bench::serve(service, secured).await
    }

    /// Serves `service` (its `kv` table filled) on 127.0.0.1:0.
    pub(crate) async fn serve(service: Service, secured: bool) -> CliResult<Bench> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Failure::new(format!("cannot listen on 127.0.0.1:0: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Failure::new(e.to_string()))?;
        let tiers = roomy_tiers();
        let authorization: Arc<str> = if secured {
            let (_, secret) = litebridge::auth::create_key(
                &service.db,
                &tiers,
                NewKey {
                    name: None,
                    scopes: "read,write".parse::<Scopes>()?,
                    tier: "pro".into(),
                },
            )
            .await?;
            format!("Authorization: Bearer {secret}\r\n").into()
        } else {
            "".into()
        };
        let clock: Arc<dyn litebridge::store::Clock> = Arc::new(litebridge::store::SystemClock);
        let auth = Auth::open(service.db.clone(), tiers, clock).await?;
        let upkeep = auth.maintain(std::time::Duration::from_secs(1));
        let app = Arc::new(crate::rpc::App::new(service, auth));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let router = crate::transport::http::router(
            app.clone(),
            1024,
            crate::transport::http::Access {
                exposed: false,
                local: Scopes::ALL,
            },
            std::time::Duration::from_secs(30),
            None,
            false,
        );
        let limits = crate::transport::accept::Limits {
            max_connections: 1024,
            read_timeout: std::time::Duration::from_secs(30),
        };
        let server = tokio::spawn(crate::transport::accept::serve(
            listener,
            router,
            limits,
            async {
                let _ = stopped.await;
            },
        ));
        Ok(Bench {
            addr,
            // Keys past the seeded rows, and past every earlier run's on this
            // server (the bench runs the case in rounds).
            next_key: Arc::new(AtomicI64::new(1 << 40)),
            app,
            upkeep,
            authorization,
            server,
            stop,
        })
    }

    pub(crate) async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
        self.upkeep.abort();
        let _ = self.app.auth.flush().await;
        self.app.service.shutdown().await;
    }

    /// `clients` keep-alive connections, one request in flight on each.
    pub(crate) async fn run(&self, load: Load, clients: usize, seconds: f64) -> CliResult<Figures> {
        Bench::run_on(&[self], load, clients, seconds).await
    }

    /// As [`Bench::run`], the clients spread over `servers` in turn (the
    /// keys `http-execute` inserts are the first server's sequence).
    pub(crate) async fn run_on(
        servers: &[&Bench],
        load: Load,
        clients: usize,
        seconds: f64,
    ) -> CliResult<Figures> {
        let stop = stop_after(seconds);
        let next_key = servers[0].next_key.clone();
        let started = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let server = servers[c % servers.len()];
                let (stop, next_key, addr) = (stop.clone(), next_key.clone(), server.addr);
                let auth = server.authorization.clone();
                tokio::spawn(async move {
                    let client = async move {
                    let mut conn = TcpStream::connect(addr).await?;
                    conn.set_nodelay(true)?;
                    let mut rng = Rng::new(c as u64 + 7);
                    let mut samples = Samples::with_capacity(1 << 18);
                    let mut buf = Vec::with_capacity(4096);
                    while !stop.load(Ordering::Relaxed) {
                        let request = match load {
                            Load::Health => "GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n".to_owned(),
                            Load::Query => rpc(&auth, &format!(
                                r#"{{"jsonrpc":"2.0","method":"sql.query","params":["SELECT v FROM kv WHERE k = ?1",[{}]],"id":1}}"#,
                                rng.below(READ_ROWS)
                            )),
                            Load::Execute => rpc(&auth, &format!(
                                r#"{{"jsonrpc":"2.0","method":"sql.execute","params":["INSERT INTO kv VALUES (?1, ?2)",[{}, "{VALUE}"]],"id":1}}"#,
                                next_key.fetch_add(1, Ordering::Relaxed)
                            )),
                        };
                        let start = Instant::now();
                        conn.write_all(request.as_bytes()).await?;
                        let status = read_response(&mut conn, &mut buf).await?;
                        if status != 200 {
                            return Err(std::io::Error::other(format!("HTTP {status}")));
                        }
                        if !matches!(load, Load::Health) && buf.windows(8).any(|w| w == b"\"error\":") {
                            return Err(std::io::Error::other(format!(
                                "the server answered an error: {}",
                                String::from_utf8_lossy(&buf)
                            )));
                        }
                        samples.record(start);
                    }
                    Ok::<_, std::io::Error>(samples)
                    };
                    client
                        .await
                        .map_err(|e| Failure::new(format!("HTTP client: {e}")))
                })
            })
            .collect();
        gather_tasks(tasks, started).await
    }
}

fn rpc(authorization: &str, body: &str) -> String {
    format!(
        "POST /rpc HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{authorization}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Reads one response (headers and a Content-Length body); returns the status.
async fn read_response(conn: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    buf.clear();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let n = conn.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(status);
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The benchmark's database at `path`, with the `kv` table filled.
async fn seeded(path: &Path) -> CliResult<Service> {
    let service = Service::open(
        path,
        litebridge::ServiceConfig {
            cache_worker_results: true,
            ..litebridge::ServiceConfig::default()
        },
    )
    .await?;
    service
        .db
        .execute(
            "CREATE TABLE IF NOT EXISTS kv(k INTEGER PRIMARY KEY, v TEXT)",
            (),
        )
        .await?;
    let rows = (0..READ_ROWS as i64)
        .map(|k| litebridge::params![k, VALUE])
        .collect();
    service
        .db
        .execute_many_at(
            "INSERT INTO kv VALUES (?1, ?2)",
            rows,
            litebridge::WriteOptions::default(),
        )
        .await?;
    Ok(service)
}

/// A tier ("pro") whose quotas the benchmark never reaches.
fn roomy_tiers() -> Tiers {
    let mut tiers = Tiers::default();
    tiers.set(
        "pro",
        TierLimits {
            daily: Some(1 << 40),
            monthly: Some(1 << 41),
            concurrent: Some(1024),
        },
    );
    tiers
}
