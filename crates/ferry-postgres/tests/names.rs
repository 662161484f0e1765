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
