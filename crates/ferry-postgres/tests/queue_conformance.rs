//! The HSM queue on PostgreSQL passes the same conformance suite as the
//! SQLite store (`ferry_hsm::conformance`), each function on a fresh
//! schema. Needs the test server (see `ferry_postgres::testing`).

use ferry_postgres::testing::TestSchema;

ferry_hsm::hsm_conformance_tests!(|| {
    let schema = TestSchema::new();
    let store = schema.open();
    (schema, store)
});
