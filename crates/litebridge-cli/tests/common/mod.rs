//! Shared by the end-to-end tests: starting the real `litebridge serve`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// Starts `litebridge serve --db DB --listen 127.0.0.1:0 EXTRA...` from the
/// repository root with `env` added and its stderr sent to `stderr`; returns
/// the process and the address from its first line (`listening on ADDR`).
pub(crate) fn spawn_serve(
    db: &std::path::Path,
    extra: &[&str],
    env: &[(&str, &str)],
    stderr: Stdio,
) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_litebridge"))
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
