//! An application that used SQLite before litebridge: the per-request
//! memory budgets cannot be enforced, and `install_memory_budgets` says
//! so (a process of its own: SQLite's allocator is set once per process).

#[test]
fn budgets_are_not_enforced_once_sqlite_ran_and_litebridge_says_so() {
    let conn = litebridge::rusqlite::Connection::open_in_memory().unwrap();
    conn.execute_batch("CREATE TABLE t(x)").unwrap();
    assert!(!litebridge::install_memory_budgets());
}
