//! litebridge's linear-time `instr` and `replace` answer exactly what
//! SQLite's own do, for any mix of text (valid UTF-8 or not), blobs,
//! numbers and NULL.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use litebridge::{Database, DbConfig, Value};

/// An argument as SQL: text or blob from a few troublesome bytes, a number, NULL.
fn arg() -> impl Strategy<Value = String> {
    let bytes = prop::collection::vec(
        prop::sample::select(vec![0x61u8, 0x62, 0x80, 0xA9, 0xC3, 0x00, 0xE2, 0x82, 0xAC]),
        0..10,
    );
    prop_oneof![
        bytes
            .clone()
            .prop_map(|b| format!("CAST(X'{}' AS TEXT)", hex(&b))),
        bytes.prop_map(|b| format!("X'{}'", hex(&b))),
        (-300i64..300).prop_map(|n| n.to_string()),
        prop::sample::select(vec!["1.5", "-0.0", "1e20", "0.1", "'1.0'"]).prop_map(str::to_owned),
        Just("NULL".to_owned()),
    ]
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

#[test]
fn instr_and_replace_answer_as_sqlites_own() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = rt
        .block_on(Database::open(dir.path().join("f.db"), DbConfig::default()))
        .unwrap();
    let plain = rusqlite::Connection::open_in_memory().unwrap();
    let sqlite = |expr: &str| -> Vec<u8> {
        plain
            .query_row(&format!("SELECT {expr}"), [], |r| {
                Ok(match r.get_ref(0)? {
                    rusqlite::types::ValueRef::Null => b"null".to_vec(),
                    rusqlite::types::ValueRef::Integer(i) => format!("int {i}").into_bytes(),
                    rusqlite::types::ValueRef::Real(f) => format!("real {f}").into_bytes(),
                    rusqlite::types::ValueRef::Text(t) => [b"text ".as_slice(), t].concat(),
                    rusqlite::types::ValueRef::Blob(b) => [b"blob ".as_slice(), b].concat(),
                })
            })
            .unwrap()
    };
    let ours = |expr: &str| -> Vec<u8> {
        // typeof() and the bytes (hex) of the answer: text that is not
        // UTF-8 is compared byte for byte.
        let wrapped = format!(
            "SELECT typeof(v), CASE WHEN typeof(v) IN ('text', 'blob') THEN hex(v) ELSE v END FROM (SELECT {expr} AS v)"
        );
        let rows = rt.block_on(db.query(&wrapped, ())).unwrap();
        match (&rows.rows[0][0], &rows.rows[0][1]) {
            (Value::Text(t), _) if t == "null" => b"null".to_vec(),
            (Value::Text(t), Value::Integer(i)) if t == "integer" => {
                format!("int {i}").into_bytes()
            }
            (Value::Text(t), Value::Text(h)) => {
                let raw: Vec<u8> = (0..h.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                    .collect();
                [format!("{t} ").into_bytes(), raw].concat()
            }
            other => panic!("{other:?}"),
        }
    };
    let mut runner = TestRunner::new(Config {
        cases: 2_000,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&(arg(), arg(), arg()), |(x, y, z)| {
            let instr = format!("instr({x}, {y})");
            prop_assert_eq!(ours(&instr), sqlite(&instr), "{}", instr);
            let replace = format!("replace({x}, {y}, {z})");
            prop_assert_eq!(ours(&replace), sqlite(&replace), "{}", replace);
            Ok(())
        })
        .unwrap();
    rt.block_on(db.close());
}

/// The call that held the writer for 40 s (and could for hours) with
/// SQLite's own `instr`: a few milliseconds now, on every lane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quadratic_instr_or_replace_takes_milliseconds() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().join("q.db"), DbConfig::default())
        .await
        .unwrap();
    db.execute("CREATE TABLE x(v)", ()).await.unwrap();
    let started = std::time::Instant::now();
    let r = db
        .query(
            "SELECT instr(printf('%.*c', 2000000, 'a'), printf('%.*c', 1000000, 'a') || 'b'), \
                    length(replace(printf('%.*c', 2000000, 'a'), printf('%.*c', 1000000, 'a') || 'b', 'x'))",
            (),
        )
        .await
        .unwrap();
    assert_eq!(
        r.rows[0],
        vec![Value::Integer(0), Value::Integer(2_000_000)]
    );
    db.execute(
        "INSERT INTO x SELECT instr(printf('%.*c', 2000000, 'a'), printf('%.*c', 1000000, 'a') || 'b')",
        (),
    )
    .await
    .unwrap();
    // A number among the arguments takes the same linear path.
    let r = db
        .query(
            "SELECT length(replace(printf('%.*c', 400000, 'a'), printf('%.*c', 200000, 'a') || 'b', 0))",
            (),
        )
        .await
        .unwrap();
    assert_eq!(r.rows[0][0], Value::Integer(400_000));
    // Past the length limit: too_large, like SQLite's own.
    let e = db
        .query(
            "SELECT replace(printf('%.*c', 8000000, 'a'), 'a', 1234567890123456789)",
            (),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), litebridge::ErrorKind::TooLarge, "{e}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    db.close().await;
}
