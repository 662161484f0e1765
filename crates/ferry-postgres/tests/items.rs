//! Work items of distributed transfers (`ferry_postgres::items`): a lease
//! that expired and was taken over is fenced — its holder's writes are all
//! refused, whatever they are — and the new holder completes the item.

use ferry::conformance::{file_entry, new_transfer};
use ferry::model::{FileState, Kind};
use ferry::store::{Change, Store, StoreError};
use ferry_postgres::items::ItemKind;
use ferry_postgres::testing::TestSchema;

#[test]
fn an_expired_lease_taken_over_can_no_longer_write() {
    let schema = TestSchema::new();
    let store = schema.open();
    let mut new = new_transfer(Some("fenced"));
    new.kind = Kind::Distributed;
    let record = store
        .create_distributed(&new, &[file_entry(0, 10)])
        .unwrap();
    // A lease of 1 ms: expired by the server's clock at once.
    let old = store.lease_item("a:1", "a", 1, None).unwrap().unwrap();
    assert_eq!((old.kind, old.attempt), (ItemKind::Batch, 1));
    // Bounded: the server's clock passes 1 ms well within these tries.
    let new_lease = (0..1000)
        .find_map(|_| store.lease_item("b:2", "b", 60_000, None).unwrap())
        .expect("the expired lease is taken over");
    assert_eq!((new_lease.item, new_lease.attempt), (old.item, 2));

    let copied = Change::Entry {
        id: record.id,
        index: old.entries[0],
        to: FileState::Copied,
        progress_bytes_durable: None,
        error: None,
        checksum: None,
        context: serde_json::Value::Null,
    };
    let refused = store.apply_leased(&old, std::slice::from_ref(&copied));
    assert!(
        matches!(
            refused,
            Err(StoreError::StaleItem {
                attempt: 1,
                current: 2,
                ..
            })
        ),
        "{refused:?}"
    );
    assert!(matches!(
        store.complete_item(&old, &[]),
        Err(StoreError::StaleItem { .. })
    ));
    assert!(!store.heartbeat_item(&old, 60_000).unwrap());
    // Nothing the old holder tried is in the store.
    assert_eq!(
        store.entries(record.id).unwrap()[0].state,
        FileState::Pending
    );

    store.apply_leased(&new_lease, &[copied]).unwrap();
    store.complete_item(&new_lease, &[]).unwrap();
    // Its end adds the finish item, which nobody else holds.
    let finish = store.lease_item("b:2", "b", 60_000, None).unwrap().unwrap();
    assert_eq!(finish.kind, ItemKind::Finish);
    assert!(
        store
            .lease_item("c:3", "c", 60_000, None)
            .unwrap()
            .is_none()
    );
    // The done item cannot be completed twice.
    assert!(matches!(
        store.complete_item(&new_lease, &[]),
        Err(StoreError::StaleItem { done: true, .. })
    ));
}
