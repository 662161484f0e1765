//! The HSM queue on PostgreSQL passes the same conformance suite as the
//! SQLite store (`ferry::hsm::conformance`), each function on a fresh
//! schema. Needs the test server (see `ferry_postgres::testing`).

use ferry::hsm::conformance;
use ferry_postgres::testing::TestSchema;

macro_rules! conformance_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let schema = TestSchema::new();
                let store = schema.open();
                conformance::$name(&store);
            }
        )*
    };
}

conformance_tests!(
    enqueue_is_durable_and_has_events,
    every_transition,
    restores_before_archives_with_ageing,
    fifo_when_no_head_start,
    dedup_joins_waiters,
    remove_cancels_waiting_archive,
    archive_of_current_copy_is_noop,
    stale_attempt_is_refused,
    expired_lease_returns_to_queue,
    retries_with_backoff_then_failed,
    lost_marks_catalog,
    cancel_stops_a_started_request,
    catalog_compare_and_swap,
    lease_filter_by_archive_id,
    concurrent_workers_never_share_a_lease,
);
