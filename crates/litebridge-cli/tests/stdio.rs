//! `litebridge stdio` against the JSON-RPC 2.0 specification's own examples
//! (its section 7), adapted to litebridge's methods.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::{Value, json};

mod common;

struct Session {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    _dir: tempfile::TempDir,
}

impl Session {
    fn start() -> Session {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_litebridge"))
            .args(["stdio", "--db"])
            .arg(dir.path().join("rpc.db"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Session {
            child,
            stdin,
            stdout,
            _dir: dir,
        }
    }

    fn send(&mut self, line: &str) {
        self.stdin.write_all(line.as_bytes()).unwrap();
        self.stdin.write_all(b"\n").unwrap();
        self.stdin.flush().unwrap();
    }

    fn recv(&mut self) -> Value {
        let mut line = String::new();
        assert!(
            self.stdout.read_line(&mut line).unwrap() > 0,
            "stdout closed"
        );
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    fn call(&mut self, line: &str) -> Value {
        self.send(line);
        self.recv()
    }

    /// Sends `line` and proves it got no reply: the next reply is the probe's.
    fn no_reply(&mut self, line: &str) {
        self.send(line);
        let probe = self.call(r#"{"jsonrpc":"2.0","method":"sql.query","params":{"sql":"SELECT 'probe'"},"id":"probe"}"#);
        assert_eq!(probe["id"], "probe", "{line} was answered: {probe}");
    }

    /// Requests run concurrently, so the effect of a notification (which has
    /// no reply to wait for) shows up a little later: poll for it.
    fn eventually_rows(&mut self, sql: &str, expected: Value) {
        let started = std::time::Instant::now();
        loop {
            let r = self.call(&format!(
                r#"{{"jsonrpc":"2.0","method":"sql.query","params":{{"sql":"{sql}"}},"id":"poll"}}"#
            ));
            if r["result"]["rows"] == expected {
                return;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "{sql}: {r}"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn finish(mut self) -> std::process::ExitStatus {
        drop(self.stdin);
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.stdout, &mut rest).unwrap();
        assert!(
            rest.is_empty(),
            "unexpected output after the last reply: {rest}"
        );
        self.child.wait().unwrap()
    }
}

#[test]
fn positional_and_named_parameters() {
    let mut s = Session::start();
    let r = s.call(
        r#"{"jsonrpc":"2.0","method":"sql.query","params":["SELECT ?1 - ?2",[42,23]],"id":1}"#,
    );
    assert_eq!(
        r,
        json!({"jsonrpc":"2.0","result":{"columns":["?1 - ?2"],"rows":[[19]],"truncated":false},"id":1})
    );
    let r = s.call(r#"{"jsonrpc":"2.0","method":"sql.query","params":{"sql":"SELECT :subtrahend - :minuend AS d","params":{"subtrahend":23,"minuend":42}},"id":3}"#);
    assert_eq!(r["result"]["rows"], json!([[-19]]));
    assert_eq!(r["id"], 3);
    assert!(s.finish().success());
}

#[test]
fn notifications_run_but_are_never_answered() {
    let mut s = Session::start();
    s.call(
        r#"{"jsonrpc":"2.0","method":"sql.execute","params":{"sql":"CREATE TABLE t(x)"},"id":0}"#,
    );
    s.no_reply(
        r#"{"jsonrpc":"2.0","method":"sql.execute","params":{"sql":"INSERT INTO t VALUES (1)"}}"#,
    );
    s.no_reply(r#"{"jsonrpc":"2.0","method":"no.such.method"}"#);
    s.eventually_rows("SELECT count(*) FROM t", json!([[1]]));
    assert!(s.finish().success());
}

#[test]
fn standard_errors_and_ids_echoed_exactly() {
    let mut s = Session::start();
    let r = s.call(r#"{"jsonrpc":"2.0","method":"foobar","id":"1"}"#);
    assert_eq!(r["error"]["code"], -32601);
    assert_eq!(r["id"], "1");
    let r = s.call(r#"{"jsonrpc":"2.0","method":"foobar, "params":"bar","baz]"#);
    assert_eq!(r["error"]["code"], -32700);
    assert_eq!(r["id"], Value::Null);
    let r = s.call(r#"{"jsonrpc":"2.0","method":1,"params":"bar"}"#);
    assert_eq!(r["error"]["code"], -32600);
    assert_eq!(r["id"], Value::Null);
    for id in [
        r#"12345678901234567890"#,
        r#"1.5"#,
        r#""a-string""#,
        r#"null"#,
        r#"-7"#,
    ] {
        let r = s.call(&format!(
            r#"{{"jsonrpc":"2.0","method":"pool.health","id":{id}}}"#
        ));
        assert_eq!(serde_json::to_string(&r["id"]).unwrap(), id, "{r}");
        assert_eq!(r["result"]["healthy"], true);
    }
    let r = s.call(
        r#"{"jsonrpc":"2.0","method":"sql.query","params":{"sql":"SELECT 1","nope":1},"id":2}"#,
    );
    assert_eq!(r["error"]["code"], -32602);
    assert!(
        r["error"]["message"].as_str().unwrap().contains("nope"),
        "{r}"
    );
    let r = s.call(r#"{"jsonrpc":"2.0","method":"sql.query","params":{"sql":"SELECT ?1","params":[[1]]},"id":3}"#);
    assert_eq!(r["error"]["code"], -32602);
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("params[0]"),
        "{r}"
    );
    let r = s.call(r#"{"jsonrpc":"2.0","method":"sql.query","params":{"sql":"SELEC 1"},"id":4}"#);
    assert_eq!(r["error"]["code"], -32000);
    assert_eq!(r["error"]["data"]["kind"], "sql");
    assert_eq!(r["error"]["data"]["recoverable"], false);
    assert_eq!(r["error"]["data"]["sqlite_code"], 1);
    let r = s.call(r#"{"jsonrpc":"2.0","method":"sql.query","params":{"sql":"CREATE TABLE sneaky(x)"},"id":5}"#);
    assert_eq!(r["error"]["code"], -32009);
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sql.execute"),
        "{r}"
    );
    let r = s.call(r#"{"jsonrpc":"2.0","method":"bridge.call","params":{"method":"x"},"id":6}"#);
    assert_eq!(r["error"]["code"], -32010);
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--workers"),
        "{r}"
    );
    assert!(s.finish().success());
}

#[test]
fn batches() {
    let mut s = Session::start();
    // Invalid JSON in a batch: one parse error.
    let r = s.call(
        r#"[{"jsonrpc":"2.0","method":"sum","params":[1,2,4],"id":"1"},{"jsonrpc":"2.0","method""#,
    );
    assert_eq!(r["error"]["code"], -32700);
    // An empty array: one Invalid Request, not an array.
    let r = s.call("[]");
    assert_eq!(r["error"]["code"], -32600);
    assert_eq!(r["id"], Value::Null);
    // An invalid batch: one error per element.
    let r = s.call("[1]");
    assert_eq!(r.as_array().unwrap().len(), 1);
    assert_eq!(r[0]["error"]["code"], -32600);
    let r = s.call("[1,2,3]");
    assert_eq!(r.as_array().unwrap().len(), 3);
    // A mixed batch: every request but the notification answered, in any order.
    let r = s.call(concat!(
        "[",
        r#"{"jsonrpc":"2.0","method":"sql.query","params":["SELECT ?1 + ?2",[1,2]],"id":"1"},"#,
        r#"{"jsonrpc":"2.0","method":"sql.execute","params":{"sql":"CREATE TABLE n(x)"}},"#,
        r#"{"jsonrpc":"2.0","method":"sql.query","params":["SELECT ?1 - ?2",[42,23]],"id":"2"},"#,
        r#"{"foo":"boo"},"#,
        r#"{"jsonrpc":"2.0","method":"foo.get","params":{"name":"myself"},"id":"5"},"#,
        r#"{"jsonrpc":"2.0","method":"pool.stats","id":"9"}"#,
        "]"
    ));
    let replies = r.as_array().unwrap();
    assert_eq!(replies.len(), 5, "{r}");
    let by_id = |id: &str| replies.iter().find(|x| x["id"] == id).unwrap().clone();
    assert_eq!(by_id("1")["result"]["rows"], json!([[3]]));
    assert_eq!(by_id("2")["result"]["rows"], json!([[19]]));
    assert_eq!(by_id("5")["error"]["code"], -32601);
    assert!(by_id("9")["result"]["pool_metrics"]["total_reads"].is_u64());
    assert!(
        replies
            .iter()
            .any(|x| x["id"].is_null() && x["error"]["code"] == -32600)
    );
    // A batch of notifications only: no output at all.
    s.no_reply(r#"[{"jsonrpc":"2.0","method":"sql.execute","params":{"sql":"INSERT INTO n VALUES (1)"}},{"jsonrpc":"2.0","method":"pool.health"}]"#);
    s.eventually_rows("SELECT count(*) FROM n", json!([[1]]));
    assert!(s.finish().success());
}

#[test]
fn the_rest_of_the_method_table() {
    let mut s = Session::start();
    let r = s.call(r#"{"jsonrpc":"2.0","method":"sql.batch","params":{"statements":[{"sql":"CREATE TABLE kv(k INTEGER PRIMARY KEY, v)"},{"sql":"INSERT INTO kv VALUES (?1, ?2)","params":[9007199254740993,{"$blob":"AAH/"}]}]},"id":1}"#);
    assert_eq!(r["result"]["results"][1]["changes"], 1, "{r}");
    let r = s.call(
        r#"{"jsonrpc":"2.0","method":"sql.query","params":{"sql":"SELECT k, v FROM kv"},"id":2}"#,
    );
    assert_eq!(
        r["result"]["rows"],
        json!([[9007199254740993u64, {"$blob": "AAH/"}]])
    );
    let r = s.call(r#"{"jsonrpc":"2.0","method":"sql.execute_many","params":{"sql":"INSERT INTO kv VALUES (?1, 'x')","rows":[[1],[2],[3]]},"id":3}"#);
    assert_eq!(r["result"]["changes"], 3);
    let r = s.call(r#"{"jsonrpc":"2.0","method":"sql.query","params":{"sql":"SELECT k FROM kv ORDER BY k","max_rows":2,"lane":"heavy"},"id":4}"#);
    assert_eq!(r["result"]["rows"], json!([[1], [2]]));
    assert_eq!(r["result"]["truncated"], true);
    let r = s.call(r#"{"jsonrpc":"2.0","method":"cache.set","params":{"key":"a","value":{"deep":[1,2]},"ttl_s":60},"id":5}"#);
    assert_eq!(r["result"]["ok"], true);
    let r = s.call(r#"{"jsonrpc":"2.0","method":"cache.get","params":{"key":"a"},"id":6}"#);
    assert_eq!(
        r["result"],
        json!({"found": true, "value": {"deep": [1, 2]}})
    );
    let r = s.call(r#"{"jsonrpc":"2.0","method":"cache.stats","id":7}"#);
    assert_eq!(r["result"]["hits"], 1);
    assert_eq!(
        (
            &r["result"]["l2_size"],
            &r["result"]["l2"],
            &r["result"]["l2_errors"]
        ),
        (&json!(1), &json!("ok"), &json!(0)),
        "{r}"
    );
    let r = s.call(r#"{"jsonrpc":"2.0","method":"persistence.stats","id":8}"#);
    assert_eq!(
        r["result"]["statistics"]["success_rate_percent"], "100.00",
        "{r}"
    );
    let r = s.call(r#"{"jsonrpc":"2.0","method":"admin.check","params":{"full":true},"id":9}"#);
    assert_eq!(r["result"]["ok"], true);
    let r = s.call(
        r#"{"jsonrpc":"2.0","method":"admin.checkpoint","params":{"mode":"truncate"},"id":10}"#,
    );
    assert_eq!(r["result"]["busy"], false, "{r}");
    let r = s.call(
        r#"{"jsonrpc":"2.0","method":"admin.checkpoint","params":{"mode":"sideways"},"id":11}"#,
    );
    assert_eq!(r["error"]["code"], -32602);
    let r = s.call(r#"{"jsonrpc":"2.0","method":"admin.backup","id":12}"#);
    assert_eq!(r["result"]["verified"], true, "{r}");
    assert!(s.finish().success());
}

#[test]
fn binary_garbage_on_stdin_is_answered_and_the_session_goes_on() {
    let mut s = Session::start();
    s.stdin.write_all(&[0xff, 0xfe, 0x00, 0x01, b'\n']).unwrap();
    s.stdin.flush().unwrap();
    let r = s.recv();
    assert_eq!(r["error"]["code"], -32700);
    let deep = format!("{}1{}", "[".repeat(50_000), "]".repeat(50_000));
    let r = s.call(&deep);
    assert_eq!(r["error"]["code"], -32700);
    let r = s.call(r#"{"jsonrpc":"2.0","method":"sql.query","params":["SELECT 2"],"id":1}"#);
    assert_eq!(r["result"]["rows"], json!([[2]]));
    assert!(s.finish().success());
}

#[test]
fn state_and_memory_methods() {
    let mut s = Session::start();
    let r = s.call(r#"{"jsonrpc":"2.0","method":"state.save","params":{"run_id":"r1","state":{"step":1},"status":"running","total_steps":4},"id":1}"#);
    assert_eq!(r["result"]["status"], "running", "{r}");
    assert!(r["result"]["created_at"].as_i64().unwrap() > 1_700_000_000_000_000);
    let r = s.call(r#"{"jsonrpc":"2.0","method":"state.save","params":["r2",{"step":9}],"id":2}"#);
    assert_eq!(r["result"]["state"], json!({"step": 9}));
    let r = s.call(r#"{"jsonrpc":"2.0","method":"state.list","params":{"limit":1},"id":3}"#);
    assert_eq!(r["result"]["runs"][0]["run_id"], "r1");
    assert_eq!(r["result"]["next"], "r1");
    let r = s.call(
        r#"{"jsonrpc":"2.0","method":"state.list","params":{"limit":1,"after":"r1"},"id":4}"#,
    );
    assert_eq!(r["result"]["runs"][0]["run_id"], "r2");
    let r = s.call(r#"{"jsonrpc":"2.0","method":"state.load","params":{"run_id":"nope"},"id":5}"#);
    assert_eq!(r["result"], Value::Null);
    let r = s
        .call(r#"{"jsonrpc":"2.0","method":"state.save","params":{"run_id":"","state":1},"id":6}"#);
    assert_eq!(r["error"]["code"], -32602);
    let r = s.call(r#"{"jsonrpc":"2.0","method":"memory.store","params":{"namespace":"a","key":"k1","value":[1,2],"ttl_s":3600},"id":7}"#);
    assert_eq!(r["result"]["ok"], true);
    let r = s.call(r#"{"jsonrpc":"2.0","method":"memory.get","params":["a","k1"],"id":8}"#);
    assert_eq!(r["result"], json!({"found": true, "value": [1, 2]}));
    let r = s.call(r#"{"jsonrpc":"2.0","method":"memory.list","params":{"namespace":"a","prefix":"k"},"id":9}"#);
    assert_eq!(r["result"]["entries"][0]["key"], "k1");
    let r = s.call(r#"{"jsonrpc":"2.0","method":"memory.delete","params":{"namespace":"a","key":"k1"},"id":10}"#);
    assert_eq!(r["result"]["deleted"], true);
    // litebridge's own tables are not for clients to write by accident; they are
    // prefixed, and an injection through a value is only data.
    let r = s.call(r#"{"jsonrpc":"2.0","method":"memory.store","params":{"namespace":"x'); DROP TABLE litebridge_state; --","key":"k","value":1},"id":11}"#);
    assert_eq!(r["result"]["ok"], true);
    let r = s.call(r#"{"jsonrpc":"2.0","method":"state.load","params":{"run_id":"r2"},"id":12}"#);
    assert_eq!(r["result"]["run_id"], "r2");
    assert!(s.finish().success());
}

/// The seed's way of configuring the bridge: `SQLITE_FRAMEWORK_PATH` alone
/// starts generic mode over that directory, and its dotted functions and
/// class methods answer `bridge.call` (the SDK found through
/// `workers.python_path`).
#[test]
fn sqlite_framework_path_alone_serves_the_frameworks_functions() {
    let dir = tempfile::tempdir().unwrap();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let db = dir.path().join("f.db").display().to_string();
    let (fixtures, sdk) = (
        format!("{root}/python/tests/fixtures"),
        format!("{root}/python"),
    );
    let mut s = common::StdioSession::start(
        &["--db", &db],
        &[
            ("SQLITE_FRAMEWORK_PATH", &fixtures),
            ("LITEBRIDGE_WORKERS_ALLOW_PREFIXES", "pkg.tools"),
            ("LITEBRIDGE_WORKERS_PYTHON_PATH", &sdk),
        ],
    );
    let mut call = |line: &str| s.call(line);
    let r = call(
        r#"{"jsonrpc":"2.0","id":1,"method":"bridge.call","params":{"method":"pkg.tools.add","params":[2,3]}}"#,
    );
    assert_eq!(r["result"], 5, "{r}");
    let r = call(
        r#"{"jsonrpc":"2.0","id":2,"method":"bridge.call","params":{"method":"pkg.tools.Agent.analyze_requirements","params":{"description":"a b"}}}"#,
    );
    assert!(r.get("result").is_some(), "{r}");
    let r = call(
        r#"{"jsonrpc":"2.0","id":3,"method":"bridge.call","params":{"method":"os.system","params":["true"]}}"#,
    );
    assert_eq!(r["error"]["code"], -32602, "{r}");
    s.finish();
}

/// `$/cancelRequest` withdraws a running worker call (answered at once with
/// -32800, the call cancelled in its worker) but never a write, whose
/// outcome it could not promise.
#[test]
fn cancel_request_withdraws_a_call_but_not_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db").display().to_string();
    let mut s = common::StdioSession::with_worker(&db);
    s.send(
        r#"{"jsonrpc":"2.0","id":"long","method":"bridge.call","params":{"method":"wait","params":[30]}}"#,
    );
    s.send(
        r#"{"jsonrpc":"2.0","id":"w","method":"sql.execute","params":{"sql":"CREATE TABLE t(x)"}}"#,
    );
    assert_eq!(s.recv()["id"], "w");
    let started = std::time::Instant::now();
    s.send(r#"{"jsonrpc":"2.0","method":"$/cancelRequest","params":{"id":"long"}}"#);
    // A write cannot be withdrawn: its answer is its outcome.
    s.send(
        r#"{"jsonrpc":"2.0","id":"w2","method":"sql.execute","params":{"sql":"INSERT INTO t VALUES (1)"}}"#,
    );
    s.send(r#"{"jsonrpc":"2.0","method":"$/cancelRequest","params":{"id":"w2"}}"#);
    let mut replies = [s.recv(), s.recv()];
    replies.sort_by_key(|r| r["id"].as_str().unwrap_or("").to_owned());
    assert_eq!(replies[0]["id"], "long");
    assert_eq!(replies[0]["error"]["code"], -32800, "{}", replies[0]);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(replies[1]["result"]["changes"], 1, "{}", replies[1]);
    // The worker let the call go: it answers the next one.
    s.send(
        r#"{"jsonrpc":"2.0","id":"next","method":"bridge.call","params":{"method":"echo","params":{"value":7}}}"#,
    );
    let r = s.recv();
    assert_eq!(r["id"], "next");
    assert_eq!(r["result"], 7, "{r}");
    s.finish();
}

/// Replies ready at once are written together (up to 64 KiB a write, a
/// longer one alone): with many requests in flight, some with answers past
/// that, every reply still comes whole, once, on its own line.
#[test]
fn many_replies_at_once_each_come_whole_and_once() {
    let mut s = Session::start();
    let big = "y".repeat(100_000);
    let lines: Vec<String> = (0u64..2000)
        .map(|i| {
            let v = if i.is_multiple_of(97) {
                json!(big)
            } else {
                json!(i)
            };
            json!({"jsonrpc": "2.0", "id": i, "method": "sql.query",
                   "params": {"sql": "SELECT ?1 AS v", "params": [v]}})
            .to_string()
        })
        .collect();
    let mut stdin = s.stdin;
    // Written from a thread of its own: the replies are read meanwhile.
    let writer = std::thread::spawn(move || {
        for l in lines {
            stdin.write_all(l.as_bytes()).unwrap();
            stdin.write_all(b"\n").unwrap();
        }
    });
    let mut seen = std::collections::HashSet::new();
    for _ in 0..2000 {
        let mut line = String::new();
        assert!(s.stdout.read_line(&mut line).unwrap() > 0, "stdout closed");
        let r: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e})"));
        let id = r["id"].as_u64().unwrap();
        let v = if id.is_multiple_of(97) {
            json!(big)
        } else {
            json!(id)
        };
        assert_eq!(r["result"]["rows"][0][0], v, "reply {id}");
        assert!(seen.insert(id), "reply {id} twice");
    }
    writer.join().unwrap(); // stdin closed with it: the session ends
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut s.stdout, &mut rest).unwrap();
    assert!(
        rest.is_empty(),
        "unexpected output: {}",
        &rest[..rest.len().min(200)]
    );
    s.child.wait().unwrap();
}
