//! litebridge's own `instr`, `replace`, `like`, `glob`, `trim`, `ltrim`,
//! `rtrim`, `unhex` and `json_patch` answer exactly what SQLite's own do, for
//! any mix of text (valid UTF-8 or not), blobs, numbers and NULL, and none of
//! them holds a statement past its deadline.

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

/// A pattern, a string to match or a set of characters: bytes that mean
/// something to LIKE, GLOB, trim and unhex, and a few that are not UTF-8.
fn pattern_arg() -> impl Strategy<Value = String> {
    let bytes = prop::collection::vec(
        prop::sample::select(b"aAbB1%_*?[]^-\\ \xC3\xA9\x80\x00".to_vec()),
        0..12,
    );
    prop_oneof![
        4 => bytes
            .clone()
            .prop_map(|b| format!("CAST(X'{}' AS TEXT)", hex(&b))),
        1 => bytes.prop_map(|b| format!("X'{}'", hex(&b))),
        1 => (-30i64..30).prop_map(|n| n.to_string()),
        1 => Just("NULL".to_owned()),
    ]
}

/// A pattern and a string made from it to match it more often than chance
/// would: each wildcard replaced by a few characters, letters' case flipped
/// at times, some bytes kept as they are.
fn matching_pair() -> impl Strategy<Value = (String, String)> {
    let alphabet = b"aAbB1%_*?[]^-\\ \xC3\xA9\x80".to_vec();
    (
        prop::collection::vec(prop::sample::select(alphabet), 0..10),
        prop::collection::vec(0u8..8, 10),
    )
        .prop_map(|(pattern, dice)| {
            let mut string = Vec::new();
            for (i, &b) in pattern.iter().enumerate() {
                let d = dice[i % dice.len()];
                match b {
                    b'%' | b'*' => string.extend(std::iter::repeat_n(b'a', usize::from(d % 3))),
                    b'_' | b'?' => string.push(if d % 2 == 0 { b'b' } else { 0xC3 }),
                    b'a'..=b'z' if d % 3 == 0 => string.push(b.to_ascii_uppercase()),
                    b'A'..=b'Z' if d % 3 == 0 => string.push(b.to_ascii_lowercase()),
                    _ => string.push(b),
                }
            }
            (
                format!("CAST(X'{}' AS TEXT)", hex(&string)),
                format!("CAST(X'{}' AS TEXT)", hex(&pattern)),
            )
        })
}

/// An ESCAPE argument: mostly one character, sometimes none or two.
fn escape_arg() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "'\\'", "'%'", "'_'", "'a'", "'é'", "''", "'ab'", "NULL", "1", "X'C3'",
    ])
    .prop_map(str::to_owned)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

#[test]
fn our_functions_answer_as_sqlites_own() {
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
    plain
        .set_limit(
            rusqlite::limits::Limit::SQLITE_LIMIT_LIKE_PATTERN_LENGTH,
            1000,
        )
        .unwrap();
    let sqlite_result = |expr: &str| -> Result<Vec<u8>, String> {
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
            .map_err(|e| e.to_string())
    };
    let sqlite = |expr: &str| sqlite_result(expr).unwrap();
    let ours_result = |expr: &str| -> Result<Vec<u8>, String> {
        // typeof() and the bytes (hex) of the answer: text that is not
        // UTF-8 is compared byte for byte.
        let wrapped = format!(
            "SELECT typeof(v), CASE WHEN typeof(v) IN ('text', 'blob') THEN hex(v) ELSE v END FROM (SELECT {expr} AS v)"
        );
        let rows = rt
            .block_on(db.query(&wrapped, ()))
            .map_err(|e| e.to_string())?;
        Ok(match (&rows.rows[0][0], &rows.rows[0][1]) {
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
        })
    };
    let ours = |expr: &str| ours_result(expr).unwrap();
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
    let matched = std::cell::Cell::new(0);
    let mut runner = TestRunner::new(Config {
        cases: 4_000,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(
            &(
                prop_oneof![(pattern_arg(), pattern_arg()), matching_pair()],
                escape_arg(),
            ),
            |((x, y), esc)| {
                for expr in [
                    format!("{x} LIKE {y}"),
                    format!("{x} GLOB {y}"),
                    format!("{x} LIKE {y} ESCAPE {esc}"),
                    format!("trim({x}, {y})"),
                    format!("ltrim({x}, {y})"),
                    format!("rtrim({x}, {y})"),
                    format!("unhex({x}, {y})"),
                    format!("unhex('0a' || {x} || 'FF', {y})"),
                ] {
                    match (ours_result(&expr), sqlite_result(&expr)) {
                        (Ok(a), Ok(b)) => {
                            if a == b"int 1" {
                                matched.set(matched.get() + 1);
                            }
                            prop_assert_eq!(a, b, "{}", expr)
                        }
                        (Err(a), Err(b)) => prop_assert!(a.contains(&b), "{}: {} / {}", expr, a, b),
                        (a, b) => prop_assert!(false, "{}: ours {:?}, SQLite's {:?}", expr, a, b),
                    }
                }
                Ok(())
            },
        )
        .unwrap();
    assert!(matched.get() > 1000, "only {} matches", matched.get());
    // Corners random inputs seldom reach: ranges and their ends, a set
    // whose characters of two lengths both match at one place (the first
    // in the set wins), escapes of the wildcards themselves.
    for expr in [
        "'a' GLOB '[a-c]'",
        "'c' GLOB '[a-c]'",
        "'d' GLOB '[a-c]'",
        "']' GLOB '[]-a]'",
        "'-' GLOB '[a-]'",
        "'b' GLOB '[^a-c]'",
        "'é' GLOB '[à-ê]'",
        "'x' GLOB '*[x-z]'",
        "'a%' LIKE 'a\\%' ESCAPE '\\'",
        "'ab' LIKE 'a\\%' ESCAPE '\\'",
        "'a_' LIKE 'a%_' ESCAPE '%'",
        "'a_' LIKE 'a__' ESCAPE '_'",
        "trim(CAST(X'C3A9C3A961' AS TEXT), CAST(X'61C3A9C362' AS TEXT))",
        "ltrim(CAST(X'C3A9C3A961' AS TEXT), CAST(X'C3A9C3' AS TEXT))",
        "rtrim(CAST(X'61C3A9C3A9' AS TEXT), CAST(X'62C3C3A9' AS TEXT))",
        "trim('xxhixx', 'x')",
        "trim('', 'x')",
        "trim('abc', '')",
        "unhex('12 34-56', ' -')",
        "unhex('12 34', '')",
        "unhex('1', ' ')",
    ] {
        assert_eq!(ours_result(expr), sqlite_result(expr), "{expr}");
    }
    // Over a pattern longer than the limit, the same error.
    let long = format!("'a' LIKE '{}'", "%".repeat(1001));
    assert!(
        ours_result(&long)
            .unwrap_err()
            .contains("LIKE or GLOB pattern too complex")
    );
    // json_patch: SQLite's answer, still JSON to the functions around it.
    for expr in [
        r#"json_object('a', json_patch('{"x":1,"y":[1]}', '{"y":null,"z":{"q":2}}'))"#,
        r#"json_patch('[1]', '{"a":1}')"#,
        r#"hex(jsonb_patch('{"x":1}', '{"x":2}'))"#,
    ] {
        assert_eq!(ours(expr), sqlite(expr), "{expr}");
    }
    let bad = ours_result(r#"json_patch('{', '{}')"#).unwrap_err();
    assert!(bad.contains("malformed JSON"), "{bad}");
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

/// One call of SQLite's own LIKE over 4 MB ran 6 s (90 s at the length
/// limit), trim over 1 MB and a set of 19,000 characters 80 s, json_patch of
/// two 500 KB objects 10 s, each in one step no deadline could stop. Now the
/// matchers stop at the deadline, the writer's hold and a halt; trim and
/// unhex are linear; json_patch refuses what would take that long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_like_trim_or_patch_stops_at_its_deadline() {
    use litebridge::{ErrorKind, Lane, QueryOptions, WriteOptions};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(
        dir.path().join("l.db"),
        DbConfig::builder()
            .max_write_hold(Duration::from_millis(300))
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    db.execute("CREATE TABLE x(v)", ()).await.unwrap();
    let like = "SELECT printf('%.*c', 4000000, 'a') LIKE '%' || printf('%.*c', 998, 'a') || 'b'";
    let glob = "SELECT printf('%.*c', 4000000, 'a') GLOB '*' || printf('%.*c', 998, 'a') || 'b'";
    for (sql, lane) in [(like, Lane::Read), (glob, Lane::Heavy)] {
        let started = Instant::now();
        let e = db
            .query_with(
                sql,
                (),
                QueryOptions {
                    timeout: Some(Duration::from_millis(300)),
                    lane,
                    ..QueryOptions::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout, "{sql}: {e}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    // On the writer: stopped at its hold, whatever its own deadline; the
    // writes queued behind it commit.
    let started = Instant::now();
    let long = db.execute_with(
        format!("INSERT INTO x {like}"),
        (),
        WriteOptions {
            timeout: Some(Duration::from_secs(3600)),
            ..WriteOptions::default()
        },
    );
    let short = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        db.execute("INSERT INTO x VALUES (2)", ()).await
    };
    let (long, short) = tokio::join!(long, short);
    let e = long.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    short.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let rows = db.query("SELECT v FROM x", ()).await.unwrap();
    assert_eq!(rows.rows, vec![vec![Value::Integer(2)]]);
    // Halting the database (shutting down) stops one too.
    let halted = {
        let db = db.clone();
        tokio::spawn(async move {
            db.query_with(
                like,
                (),
                QueryOptions {
                    timeout: Some(Duration::from_secs(3600)),
                    lane: Lane::Heavy,
                    ..QueryOptions::default()
                },
            )
            .await
        })
    };
    // trim and unhex: linear.
    let started = Instant::now();
    let r = db
        .query(
            "SELECT length(trim(printf('%.*c', 1000000, 'g'), printf('%.*c', 19000, 'h') || 'g')), \
                    length(unhex(printf('%.*c', 1000000, 'g') || '00', printf('%.*c', 1000000, 'h') || 'g'))",
            (),
        )
        .await
        .unwrap();
    assert_eq!(r.rows[0], vec![Value::Integer(0), Value::Integer(1)]);
    // Linear takes well under a second on a quiet machine (2.3 s was seen in
    // a debug build on a loaded one); quadratic would take minutes.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // json_patch: SQLite's own for what takes little, refused past that.
    let e = db
        .query(
            "SELECT json_patch(json_object('a', printf('%.*c', 200000, 'x')), json_object('b', printf('%.*c', 200000, 'y')))",
            (),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Sql, "{e}");
    assert!(e.to_string().contains("json_patch over values of"), "{e}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    db.interrupt();
    let e = halted.await.unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    db.close().await;
}
