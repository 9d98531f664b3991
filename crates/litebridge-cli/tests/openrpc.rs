//! `rpc.discover` is a valid OpenRPC document: validated against the
//! OpenRPC meta-schema (vendored in `tests/data`, see its README) by
//! Python's `jsonschema`, the reference validator, over stdio and over HTTP;
//! each method's example fits its parameters' schemas.

use std::io::Write as _;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

mod common;

/// Validates `doc` against the meta-schema; the validator's complaint if not.
fn validate(doc: &Value) -> Result<(), String> {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
    let mut child = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/validate_openrpc.py"
        ))
        .arg(data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("python3: {e}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(doc.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn discover() -> Value {
    json!({"jsonrpc": "2.0", "method": "rpc.discover", "id": 1})
}

#[test]
fn rpc_discover_is_a_valid_openrpc_document_over_stdio_and_http() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("d.db");
    let out = Command::new(env!("CARGO_BIN_EXE_litebridge"))
        .args(["stdio", "--db"])
        .arg(&db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .and_then(|mut child| {
            let mut stdin = child.stdin.take().unwrap();
            writeln!(stdin, "{}", discover())?;
            drop(stdin);
            child.wait_with_output()
        })
        .unwrap();
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    let doc = &reply["result"];
    assert_eq!(doc["openrpc"], "1.3.2", "{reply}");
    validate(doc).unwrap();
    // The validator does reject what is not OpenRPC.
    let mut broken = doc.clone();
    broken["methods"][0]["params"] = json!("none");
    assert!(validate(&broken).is_err());
    // And an example that does not fit its schema.
    let mut broken = doc.clone();
    broken["methods"][0]["examples"][0]["params"][0]["value"] = json!(17);
    let complaint = validate(&broken).unwrap_err();
    assert!(complaint.contains("sql.query example"), "{complaint}");

    let server = common::Server::start(&dir.path().join("h.db"), &[]);
    let over_http = server.rpc(discover());
    assert_eq!(&over_http["result"], doc);
    assert!(server.stop().success());
}
