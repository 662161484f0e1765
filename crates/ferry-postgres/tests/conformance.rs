//! The Store conformance suite (`ferry::conformance`), the same
//! functions the SQLite store runs, each on a fresh schema of the test
//! server (see `ferry_postgres::testing`).

use ferry_postgres::PgStore;
use ferry_postgres::testing::TestSchema;

fn fresh(test: impl FnOnce(&dyn Fn() -> PgStore)) {
    let schema = TestSchema::new();
    test(&|| schema.open());
}

ferry::store_conformance_tests!(fresh);
