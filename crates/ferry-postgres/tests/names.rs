//! Transfer names under concurrent creators on many connections: an
//! unnamed transfer never fails because someone took its `cp-ID` name in
//! the instant between its look and its insert. Needs the test server.

use std::sync::mpsc;
use std::time::Duration;

use ferry::conformance::new_transfer;
use ferry::store::Store;
use ferry_postgres::PgStore;
use ferry_postgres::testing::TestSchema;

#[test]
fn an_unnamed_create_moves_on_when_its_name_is_taken_by_an_uncommitted_create() {
    let schema = TestSchema::new();
    let a = schema.open();
    let b_name = format!("b_{}", schema.name);
    let b = PgStore::open(&format!("{}&application_name={b_name}", schema.url)).unwrap();
    // A draws the next id; B, unnamed, the one after, and names itself
    // after it: A takes that name first and holds its commit.
    let last: i64 = schema
        .client()
        .query_one("SELECT last_value FROM transfers_id_seq", &[])
        .unwrap()
        .get(0);
    let taken = format!("cp-{}", last + 2);
    let (held_tx, held_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let a_thread = s.spawn(|| {
            PgStore::holding_commit(
                move || {
                    held_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                },
                || a.create_transfer(&new_transfer(Some(&taken)), &[]),
            )
        });
        held_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("A reached its commit");
        let b_thread = s.spawn(|| b.create_transfer(&new_transfer(None), &[]));
        // B found the name free, and its insert waits on A's row.
        schema.wait_until_blocked(&b_name);
        go_tx.send(()).unwrap();
        let a_record = a_thread.join().unwrap().unwrap();
        let b_record = b_thread
            .join()
            .unwrap()
            .expect("the unnamed create succeeds");
        assert_eq!(a_record.name, taken);
        assert_eq!(b_record.id.0, last + 2);
        assert_eq!(b_record.name, format!("{taken}-2"));
    });
}

/// A plan taking its name (`Change::Named`, at its dispatch) while another
/// creator of that name holds its commit: once that commits, the naming is
/// refused as `DuplicateName` naming the holder (never a raw index error),
/// and the plan keeps its provisional name.
#[test]
fn naming_a_plan_after_an_uncommitted_create_of_the_name_is_a_duplicate() {
    use ferry::store::{Change, StoreError};
    let schema = TestSchema::new();
    let a = schema.open();
    let b_name = format!("b_{}", schema.name);
    let b = PgStore::open(&format!("{}&application_name={b_name}", schema.url)).unwrap();
    let provisional = " job (planned by pid 1)";
    let planned = b
        .create_transfer(&new_transfer(Some(provisional)), &[])
        .unwrap();
    let (held_tx, held_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let a_thread = s.spawn(|| {
            PgStore::holding_commit(
                move || {
                    held_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                },
                || a.create_transfer(&new_transfer(Some("job")), &[]),
            )
        });
        held_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("A reached its commit");
        let b_thread = s.spawn(|| {
            b.apply(&[Change::Named {
                id: planned.id,
                name: "job".into(),
            }])
        });
        // B found the name free, and its update waits on A's row.
        schema.wait_until_blocked(&b_name);
        go_tx.send(()).unwrap();
        let a_record = a_thread.join().unwrap().unwrap();
        match b_thread.join().unwrap() {
            Err(StoreError::DuplicateName { id, name, .. }) => {
                assert_eq!((id, name.as_str()), (a_record.id, "job"));
            }
            other => panic!("expected DuplicateName, got {other:?}"),
        }
    });
    assert_eq!(b.transfer(planned.id).unwrap().unwrap().name, provisional);
    assert_eq!(b.transfer_by_name("job").unwrap().unwrap().name, "job");
}
