//! Opening a PostgreSQL store: created once, reopened as is, other
//! schemas and newer stores refused untouched. Needs the test server
//! (see `ferry_postgres::testing`).

use ferry::store::StoreError;
use ferry_postgres::testing::TestSchema;
use ferry_postgres::{PgStore, SCHEMA_VERSION};

#[test]
fn a_store_is_created_once_and_reopened_as_is() {
    let schema = TestSchema::new();
    let first = schema.open();
    assert_eq!(first.schema(), schema.name);
    drop(first);
    schema.open();
    let version: i64 = schema
        .client()
        .query_one("SELECT version FROM schema_version", &[])
        .unwrap()
        .get(0);
    assert_eq!(version, SCHEMA_VERSION);
}

#[test]
fn a_schema_with_other_tables_or_a_newer_store_is_refused_untouched() {
    let schema = TestSchema::new();
    let mut client = schema.client();
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {0}; CREATE TABLE {0}.payroll (x INT)",
            schema.name
        ))
        .unwrap();
    match PgStore::open(&schema.url) {
        Err(e @ StoreError::NotAStore { .. }) => assert!(e.to_string().contains("payroll"), "{e}"),
        other => panic!("expected NotAStore, got {other:?}"),
    }
    client
        .batch_execute(&format!("DROP TABLE {}.payroll", schema.name))
        .unwrap();
    drop(schema.open());
    client
        .execute("UPDATE schema_version SET version = version + 1", &[])
        .unwrap();
    match PgStore::open(&schema.url) {
        Err(StoreError::TooNew { found, .. }) => assert_eq!(found, SCHEMA_VERSION + 1),
        other => panic!("expected TooNew, got {other:?}"),
    }
}

#[test]
fn an_unreachable_server_is_named_with_what_to_check() {
    // Port 1 on loopback: nothing listens there.
    let err = PgStore::open("postgres://u:hunter2@127.0.0.1:1/db").unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, StoreError::Unreachable { .. }), "{err:?}");
    assert!(
        message.contains("postgres://u@127.0.0.1:1/db?schema=ferry"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
    assert_eq!(ferry::Error::from(err).code(), 15);
}

#[test]
fn a_reconnected_connection_prepares_its_statements_anew() {
    use ferry_hsm::{Action, LeaseFilter, RequestQueue};
    let schema = TestSchema::new();
    let name = format!("reconnect_{}", schema.name);
    let store = PgStore::open(&format!("{}&application_name={name}", schema.url)).unwrap();
    let request = |fid: &str| ferry_hsm::conformance::request(Action::Archive, fid);
    let lease_and_ack = || {
        let lease = store
            .lease(
                "w",
                &LeaseFilter::default(),
                1,
                std::time::Duration::from_secs(60),
            )
            .unwrap()
            .pop()
            .unwrap();
        store.ack(&lease, None).unwrap();
    };
    store.enqueue(&[request("a"), request("b")]).unwrap();
    // The pool's connection has prepared the lease's statements.
    lease_and_ack();
    // The server ends it (a restart, an administrator), and is done.
    let ended: i64 = schema
        .client()
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid, 60000) FROM pg_stat_activity
                WHERE application_name = $1) AS t",
            &[&name],
        )
        .unwrap()
        .get(0);
    assert!(ended >= 1);
    // The pool replaces it; its replacement prepares what it runs.
    lease_and_ack();
    store.enqueue(&[request("c"), request("d")]).unwrap();
}

#[test]
fn the_servers_own_words_are_in_the_message_and_no_password_ever_is() {
    let server = ferry_postgres::testing::server_url();
    let (base, _) = server.rsplit_once('/').unwrap();
    let err = PgStore::open(&format!("{base}/no_such_db_for_ferry?password=hunter2")).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, StoreError::Unreachable { .. }), "{err:?}");
    assert!(
        message.contains("database \"no_such_db_for_ferry\" does not exist"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");

    let err = PgStore::open("postgres://u:hun@ter2@127.0.0.1:1/db?schema=Bad&password=hunter2")
        .unwrap_err()
        .to_string();
    assert!(!err.contains("hunter2") && !err.contains("ter2"), "{err}");
}

#[test]
fn another_programs_schema_version_table_is_refused_not_a_panic() {
    let schema = TestSchema::new();
    let mut client = schema.client();
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {0}; CREATE TABLE {0}.schema_version (version TEXT);
             INSERT INTO {0}.schema_version VALUES ('v2')",
            schema.name
        ))
        .unwrap();
    match PgStore::open(&schema.url) {
        Err(e @ StoreError::NotAStore { .. }) => {
            assert!(e.to_string().contains("schema_version"), "{e}")
        }
        other => panic!("expected NotAStore, got {other:?}"),
    }
}

/// A store's owner need not be allowed to create schemas in the database.
#[test]
fn a_role_that_may_not_create_schemas_opens_an_existing_store() {
    let schema = TestSchema::new();
    drop(schema.open());
    let role = format!("{}_user", schema.name);
    let mut admin = schema.client();
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN;
             GRANT USAGE ON SCHEMA {s} TO {role};
             GRANT ALL ON ALL TABLES IN SCHEMA {s} TO {role};
             GRANT ALL ON ALL SEQUENCES IN SCHEMA {s} TO {role};",
            s = schema.name
        ))
        .unwrap();
    let (scheme_host, rest) = schema.url.split_once('@').unwrap();
    let (scheme, _user) = scheme_host.split_once("://").unwrap();
    let used = PgStore::open(&format!("{scheme}://{role}@{rest}"))
        .and_then(|store| ferry::store::Store::last_seq(&store));
    admin
        .batch_execute(&format!("DROP OWNED BY {role} CASCADE; DROP ROLE {role};"))
        .unwrap();
    assert_eq!(used.unwrap(), 0);
}

/// A schema change makes the server refuse statements a connection had
/// prepared ("cached plan must not change result type"): the connection
/// forgets them and prepares again, rather than failing until it is
/// recycled.
#[test]
fn statements_a_schema_change_invalidated_are_prepared_again() {
    let schema = TestSchema::new();
    let store = schema.open();
    use ferry_hsm::RequestQueue;
    for _ in 0..3 {
        assert!(store.catalog_entry("f").unwrap().is_none());
    }
    schema
        .client()
        .batch_execute("ALTER TABLE hsm_catalog ALTER COLUMN object TYPE VARCHAR(200)")
        .unwrap();
    let mut failures = 0;
    while store.catalog_entry("f").is_err() {
        failures += 1;
        assert!(failures < 10, "the stale statement is never prepared again");
    }
}
