//! The owner's lease in every store: renewed only by the recorded owner,
//! restarted by a take-over, and the fence that refuses a batch of an owner
//! that lost the transfer.

use serde_json::Value;

use super::{entry, new_transfer, owner, running};
use crate::model::{FileState, TransferState};
use crate::owner::Liveness;
use crate::store::{Change, Store, StoreError};

pub fn the_lease_is_renewed_by_the_owner_and_fences_the_old_one<S: Store>(open: &dyn Fn() -> S) {
    let store = open();
    let t = store
        .create_transfer(&new_transfer(Some("l")), &[])
        .unwrap();
    assert_eq!(t.lease, None, "no heartbeat before the first renewal");
    // Another host's owner with no lease: nothing to judge it by.
    assert_eq!(t.owner_liveness(), Liveness::Unknown);

    let old = owner(1);
    store.renew_lease(t.id, &old, 2000).unwrap();
    let lease = store
        .transfer(t.id)
        .unwrap()
        .unwrap()
        .lease
        .expect("renewed");
    assert_eq!(lease.lease_ms, 2000);
    let renewed = store.transfer(t.id).unwrap().unwrap();
    assert_eq!(
        renewed
            .owner
            .liveness_with(renewed.lease, lease.heartbeat_ns + 1_000_000),
        Liveness::Alive
    );
    assert_eq!(
        renewed
            .owner
            .liveness_with(renewed.lease, lease.heartbeat_ns + 2_000_000_001),
        Liveness::Dead
    );

    // A take-over: the old owner can neither renew nor write.
    let new = owner(2);
    store
        .apply(&[Change::Reattach {
            id: t.id,
            from: old.clone(),
            owner: new.clone(),
        }])
        .unwrap();
    let taken = store.transfer(t.id).unwrap().unwrap();
    assert_eq!(
        taken.lease, None,
        "the new owner's lease starts with its renewal"
    );
    assert!(matches!(
        store.renew_lease(t.id, &old, 2000),
        Err(StoreError::OwnerChanged { pid: 2, .. })
    ));
    store.renew_lease(t.id, &new, 5000).unwrap();
    assert_eq!(
        store
            .transfer(t.id)
            .unwrap()
            .unwrap()
            .lease
            .unwrap()
            .lease_ms,
        5000
    );

    let moving = running(&store, "m", 1, 10);
    let fenced = |who| {
        store.apply(&[
            Change::Owned {
                id: moving.id,
                owner: who,
            },
            entry(moving.id, 0, FileState::Copying),
        ])
    };
    assert_ne!(moving.owner, owner(9));
    assert!(matches!(
        fenced(owner(9)),
        Err(StoreError::OwnerChanged { .. })
    ));
    assert_eq!(
        store.entries(moving.id).unwrap()[0].state,
        FileState::Pending,
        "a fenced batch writes nothing"
    );
    fenced(moving.owner.clone()).unwrap();
    assert_eq!(
        store.entries(moving.id).unwrap()[0].state,
        FileState::Copying
    );

    // A freed transfer's lease cannot be renewed: the holder learns it.
    store
        .apply(&[Change::Transfer {
            id: t.id,
            to: TransferState::Cancelled,
            owner: None,
            context: Value::Null,
        }])
        .unwrap();
    store.apply(&[Change::Free { id: t.id }]).unwrap();
    assert!(matches!(
        store.renew_lease(t.id, &new, 5000),
        Err(StoreError::NoSuchTransfer { .. })
    ));
}
