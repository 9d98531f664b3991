//! Shared by the end-to-end tests: starting the real `litebridge serve` and
//! talking HTTP to it. (Each test binary uses a part of it.)
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// `psql -c SQL` against `url` (from `/`: the tests' directory may be closed
/// to other users): its output, or psql's complaint.
pub(crate) fn psql(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .current_dir("/")
        .output()
        .map_err(|e| format!("psql does not run: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `litebridge keys create --db DB`; returns the secret (the last word of the last line).
pub(crate) fn create_key(db: &std::path::Path, name: &str, scope: &str, tier: &str) -> String {
    let db = db.display().to_string();
    keys_create(&["--db", &db], name, scope, tier).1
}

/// `litebridge keys create WHERE...`: its output and the secret (the last
/// word of the last line).
pub(crate) fn keys_create(place: &[&str], name: &str, scope: &str, tier: &str) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_litebridge"))
        .args(["keys", "create"])
        .args(place)
        .args(["--scope", scope, "--tier", tier, "--name", name])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = stdout
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().last())
        .unwrap()
        .to_owned();
    assert!(secret.starts_with("lb_"), "{stdout}");
    (stdout, secret)
}

/// Starts `litebridge serve --db DB --listen 127.0.0.1:0 EXTRA...` from the
/// repository root with `env` added and its stderr sent to `stderr`; returns
/// the process and the address from its first line (`listening on ADDR`).
pub(crate) fn spawn_serve(
    db: &std::path::Path,
    extra: &[&str],
    env: &[(&str, &str)],
    stderr: Stdio,
) -> (Child, String) {
    spawn_serve_under(&[], db, extra, env, stderr)
}

/// [`spawn_serve`] run by `wrapper` (a program and its first arguments:
/// `["nohup"]`, say), which runs the program named by its next argument.
pub(crate) fn spawn_serve_under(
    wrapper: &[&str],
    db: &std::path::Path,
    extra: &[&str],
    env: &[(&str, &str)],
    stderr: Stdio,
) -> (Child, String) {
    let binary = env!("CARGO_BIN_EXE_litebridge");
    let mut command = match wrapper {
        [program, args @ ..] => {
            let mut c = Command::new(program);
            c.args(args).arg(binary);
            c
        }
        [] => Command::new(binary),
    };
    let mut child = command
        .arg("serve")
        .arg("--db")
        .arg(db)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .envs(env.iter().copied())
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line: {first:?}"))
        .trim()
        .to_owned();
    (child, addr)
}

/// A running `litebridge serve`, stopped with SIGTERM by [`Server::stop`].
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) addr: String,
    pub(crate) log: std::path::PathBuf,
}

impl Server {
    pub(crate) fn start(db: &std::path::Path, extra: &[&str]) -> Server {
        Server::start_with(db, extra, &[])
    }

    pub(crate) fn start_with(db: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let log = db.with_extension("log");
        let stderr = std::fs::File::create(&log).unwrap();
        let started = std::panic::catch_unwind(|| spawn_serve(db, extra, env, stderr.into()));
        let (child, addr) = started.unwrap_or_else(|_| {
            panic!(
                "litebridge serve did not start; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        Server { child, addr, log }
    }

    pub(crate) fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        let (status, _, body) = self.request_with(method, path, content_type, &[], body);
        (status, body)
    }

    pub(crate) fn request_with(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String, Vec<u8>) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if let Some(ct) = content_type {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).unwrap();
        let _ = s.write_all(body);
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw);
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(raw.len(), |i| i + 4);
        let headers = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
        (status, headers, raw[split..].to_vec())
    }

    pub(crate) fn rpc(&self, body: Value) -> Value {
        let (status, bytes) = self.request(
            "POST",
            "/rpc",
            Some("application/json"),
            body.to_string().as_bytes(),
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
        serde_json::from_slice(&bytes).unwrap()
    }

    /// A JSON-RPC call with `Authorization: Bearer KEY` (none when `key` is
    /// `None`): the HTTP status and the parsed body.
    pub(crate) fn rpc_as(&self, key: Option<&str>, body: &Value) -> (u16, Value) {
        let (status, _, bytes) = self.request_as(
            key,
            "POST",
            "/rpc",
            Some("application/json"),
            body.to_string().as_bytes(),
        );
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
        };
        (status, value)
    }

    /// A request with `Authorization: Bearer KEY` (none when `key` is
    /// `None`): the status, the head (lower case) and the body.
    pub(crate) fn request_as(
        &self,
        key: Option<&str>,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> (u16, String, Vec<u8>) {
        let bearer = key.map(|k| format!("Bearer {k}"));
        let headers: Vec<(&str, &str)> = bearer
            .as_deref()
            .map(|b| ("Authorization", b))
            .into_iter()
            .collect();
        self.request_with(method, path, content_type, &headers, body)
    }

    pub(crate) fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A test that failed before `stop` leaves no server running behind it.
impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A running `litebridge stdio ARGS...` started from the repository root
/// with `env` added: one JSON value per line each way.
pub(crate) struct StdioSession {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: BufReader<std::process::ChildStdout>,
}

impl StdioSession {
    pub(crate) fn start(args: &[&str], env: &[(&str, &str)]) -> StdioSession {
        let mut child = Command::new(env!("CARGO_BIN_EXE_litebridge"))
            .arg("stdio")
            .args(args)
            .envs(env.iter().copied())
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        StdioSession {
            child,
            stdin,
            stdout,
        }
    }

    /// `litebridge stdio` on `db` with one worker running the example.
    pub(crate) fn with_worker(db: &str) -> StdioSession {
        StdioSession::start(
            &[
                "--workers",
                "python3 examples/worker.py",
                "--processes",
                "1",
                "--db",
                db,
            ],
            &[],
        )
    }

    /// Writes one line.
    pub(crate) fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Writes `v` as one line.
    pub(crate) fn send_json(&mut self, v: Value) {
        self.send(&v.to_string());
    }

    /// Reads one line as JSON.
    pub(crate) fn recv(&mut self) -> Value {
        let mut line = String::new();
        assert!(
            self.stdout.read_line(&mut line).unwrap() > 0,
            "stdout closed"
        );
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// Sends `line` and reads the next line.
    pub(crate) fn call(&mut self, line: &str) -> Value {
        self.send(line);
        self.recv()
    }

    /// Closes stdin and checks that litebridge exits 0.
    pub(crate) fn finish(mut self) {
        drop(self.stdin.take());
        assert!(self.child.wait().unwrap().success());
    }
}

/// A test that failed before `finish` leaves no litebridge behind.
impl Drop for StdioSession {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
