//! A PostgreSQL server for the tests: `LB_TEST_PG` (a URL whose user
//! may create roles and schemas; scripts/pg-cluster.sh starts one and prints
//! it). Each test gets a schema of its own, owned by the clients' role, so
//! tests run side by side. Without the variable the PostgreSQL half of a test
//! is skipped, unless `LB_TEST_REQUIRE` names `pg` (the README's test
//! command sets it), when it fails. (Not `LITEBRIDGE_*`: the binary reads
//! those as its configuration and refuses unknown ones.)

use litebridge::pg::{PgConfig, PgDatabase};
use tokio_postgres::NoTls;

/// The role every test's client SQL runs as.
pub const CLIENT_ROLE: &str = "lb_test_client";

/// A statement that fails on its sixth row, for reads cut before it.
pub const FAILS_LATE: &str =
    "SELECT CASE WHEN g > 5 THEN 1 / (g - g) ELSE g END FROM generate_series(1, 10) g";

/// The admin URL, or `None` when PostgreSQL tests are skipped.
pub fn url() -> Option<String> {
    match std::env::var("LB_TEST_PG") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            let required = std::env::var("LB_TEST_REQUIRE").unwrap_or_default();
            assert!(
                !required.split(',').any(|s| s.trim() == "pg"),
                "LB_TEST_REQUIRE names pg but LB_TEST_PG is not set \
                 (eval \"$(scripts/pg-cluster.sh start)\")"
            );
            eprintln!("LB_TEST_PG is not set: the PostgreSQL half is skipped");
            None
        }
    }
}

/// A connection as the admin user, its task spawned.
pub async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    tokio::spawn(conn);
    client
}

/// A fresh schema owned by the clients' role; dropped with [`Schema::drop_now`].
pub struct Schema {
    pub name: String,
    pub url: String,
}

impl Schema {
    pub async fn new() -> Option<Schema> {
        Some(Schema::on(url()?).await)
    }

    /// A fresh schema on the server at `url` (an admin URL).
    pub async fn on(url: String) -> Schema {
        let admin = admin(&url).await;
        // Roles are the cluster's: made once, by whichever test comes first.
        let _ = admin
            .batch_execute(&format!(
                "DO $$ BEGIN CREATE ROLE {CLIENT_ROLE} LOGIN; \
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
            ))
            .await;
        let name = format!("t_{:016x}", rand_u64());
        admin
            .batch_execute(&format!("CREATE SCHEMA {name} AUTHORIZATION {CLIENT_ROLE}"))
            .await
            .unwrap();
        Schema { name, url }
    }

    /// The configuration of a database whose client SQL runs in this schema
    /// and whose own tables are in `<schema>_own`.
    pub fn config(&self) -> PgConfig {
        PgConfig::new(self.url.clone())
            .client(CLIENT_ROLE, None)
            .client_schema(self.name.clone())
            .schema(self.own())
    }

    /// The schema of litebridge's own tables.
    pub fn own(&self) -> String {
        format!("{}_own", self.name)
    }

    pub async fn open(&self) -> PgDatabase {
        PgDatabase::connect(self.config()).await.unwrap()
    }

    pub async fn drop_now(self) {
        let admin = admin(&self.url).await;
        admin
            .batch_execute(&format!(
                "DROP SCHEMA {} CASCADE; DROP SCHEMA IF EXISTS {} CASCADE",
                self.name,
                self.own()
            ))
            .await
            .unwrap();
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    u64::from_le_bytes(b)
}
