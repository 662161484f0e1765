//! One request per file at a time, across leasers: while one lease of a
//! file is started and not yet committed, another leaser passes over the
//! file's other requests (it cannot take the file's advisory lock), and
//! once it is committed, it does not see them as ready. The interleaving
//! is forced: A holds its lease's transaction open right before its
//! commit ([`PgStore::holding_commit`]). No sleeps. Needs the test server.

use std::sync::mpsc;
use std::time::Duration;

use ferry_hsm::conformance::request;
use ferry_hsm::{Action, LeaseFilter, RequestQueue};
use ferry_postgres::PgStore;
use ferry_postgres::testing::TestSchema;

const LONG: Duration = Duration::from_secs(600);

#[test]
fn a_file_started_by_one_leaser_is_passed_over_by_another() {
    let schema = TestSchema::new();
    let a = schema.open();
    // B gives up on a lock it would wait for instead of hanging the test:
    // were it to lease f's archive, its events would wait for A's.
    let b = PgStore::open(&format!("{}&options=-c%20lock_timeout%3D10s", schema.url)).unwrap();
    a.enqueue(&[request(Action::Restore, "f"), request(Action::Archive, "f")])
        .unwrap();

    let (held_tx, held_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let lease_a = std::thread::scope(|s| {
        let a_thread = s.spawn(|| {
            PgStore::holding_commit(
                move || {
                    held_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                },
                || a.lease("a", &LeaseFilter::default(), 1, LONG),
            )
        });
        held_rx.recv().expect("A reached its commit");
        // A's restore of f is started, uncommitted: B does not see that,
        // finds f's archive ready, and cannot take the file.
        let got = b.lease("b", &LeaseFilter::default(), 10, LONG);
        // A goes on whatever B got (else the scope would wait for it).
        go_tx.send(()).unwrap();
        let got = got.unwrap();
        assert!(got.is_empty(), "B leased {got:?} while A holds f");
        a_thread.join().unwrap().unwrap()
    });
    assert_eq!(lease_a.len(), 1);
    assert_eq!(lease_a[0].request.action, Action::Restore);
    // Committed: f is busy, its archive not ready.
    assert!(
        b.lease("b", &LeaseFilter::default(), 10, LONG)
            .unwrap()
            .is_empty()
    );
    a.ack(&lease_a[0], None).unwrap();
    let got = b.lease("b", &LeaseFilter::default(), 10, LONG).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].request.action, Action::Archive);
}
