//! The bundled SQLite must be built without SQLITE_ENABLE_MEMORY_MANAGEMENT
//! and with memory statistics off (`.cargo/config.toml`): both put every
//! connection behind one global mutex and cap read scaling (two readers
//! reached 1.37x one reader with it, 1.84x without).

#[test]
fn sqlite_is_built_for_read_scaling() {
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    let mut stmt = conn.prepare("PRAGMA compile_options").unwrap();
    let options: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
        "compiled with ENABLE_MEMORY_MANAGEMENT: {options:?}"
    );
    assert!(
        options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
        "LIBSQLITE3_FLAGS from .cargo/config.toml did not reach the build: {options:?}"
    );
    assert!(options.iter().any(|o| o == "THREADSAFE=1"), "{options:?}");
}
