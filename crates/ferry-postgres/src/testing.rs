//! Fresh stores for tests, each in its own schema of one database.
//!
//! The server is `FERRY_TEST_POSTGRES` (a URL), else the local one at
//! `postgres://postgres@127.0.0.1:5432/test`. A test that cannot reach it
//! panics with what to do: CI starts PostgreSQL first (`.ci/run`), and a
//! suite that silently skipped would prove nothing.

use std::str::FromStr;

use crate::{EventNumbering, PgStore};

pub const TEST_URL_ENV: &str = "FERRY_TEST_POSTGRES";
pub const DEFAULT_TEST_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The server tests use.
pub fn server_url() -> String {
    std::env::var(TEST_URL_ENV).unwrap_or_else(|_| DEFAULT_TEST_URL.into())
}

/// A schema of its own, dropped (with everything in it) when this is.
pub struct TestSchema {
    pub name: String,
    /// The store URL: the server's with `?schema=NAME`.
    pub url: String,
}

impl TestSchema {
    pub fn new() -> TestSchema {
        let name = format!("ferry_test_{:016x}", fastrand::u64(..));
        let server = server_url();
        let sep = if server.contains('?') { '&' } else { '?' };
        TestSchema {
            url: format!("{server}{sep}schema={name}"),
            name,
        }
    }

    pub fn open(&self) -> PgStore {
        self.open_with(EventNumbering::Ordered)
    }

    pub fn open_with(&self, numbering: EventNumbering) -> PgStore {
        PgStore::open_with(&self.url, numbering).unwrap_or_else(|e| {
            panic!(
                "{e}\nthe PostgreSQL tests need a server: start it \
                 (`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`) \
                 or set {TEST_URL_ENV}"
            )
        })
    }

    /// A plain client on the test server (for what the store does not do:
    /// looking at locks, holding a transaction open).
    pub fn client(&self) -> postgres::Client {
        let mut config = postgres::Config::from_str(&server_url()).expect("test URL parses");
        config.options(&format!("-c search_path={}", self.name));
        config
            .connect(postgres::NoTls)
            .unwrap_or_else(|e| panic!("cannot reach the test server {}: {e}", server_url()))
    }
}

impl TestSchema {
    /// Waits (at most a minute, then panics) until the backend whose
    /// `application_name` is given waits for a lock: the deterministic way
    /// to know another connection reached a conflicting row.
    pub fn wait_until_blocked(&self, application_name: &str) {
        let mut client = self.client();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let blocked: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE application_name = $1 AND wait_event_type = 'Lock'",
                    &[&application_name],
                )
                .expect("pg_stat_activity is readable")
                .get(0);
            if blocked > 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{application_name} never blocked on a lock"
            );
            std::thread::yield_now();
        }
    }
}

impl Default for TestSchema {
    fn default() -> Self {
        TestSchema::new()
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        if let Ok(config) = postgres::Config::from_str(&server_url())
            && let Ok(mut client) = config.connect(postgres::NoTls)
        {
            let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
        }
    }
}
