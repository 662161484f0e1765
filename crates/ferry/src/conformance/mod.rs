//! The tests every [`Store`] implementation must pass, written once against
//! the trait: the SQLite store runs them in its unit tests, and the
//! PostgreSQL store (`crates/ferry-postgres/tests/conformance.rs`) runs the
//! same functions, each on a fresh schema.
//!
//! Each function takes `open`, which opens the same fresh, empty store
//! every time it is called (a second call is a second handle: another
//! connection, as another process would have), and panics on a violation.
//! Nothing here sleeps to hope something happened: a wait is on the event
//! itself, with a bounded deadline.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::model::RequestId;
use crate::model::{
    Caller, Checksum, ChecksumAlgo, EntryIndex, EntryKind, Event, FileState, Kind, NewEntry,
    NewTransfer, Owner, Preserve, SourceMeta, TransferId, TransferRecord, TransferState, Xattrs,
};
use crate::store::{Change, EventFilter, Store, StoreError};

mod events;
mod lease;
mod transfers;

pub use events::*;
pub use lease::*;
pub use transfers::*;

/// How long a wait for something that must happen may take before the test
/// fails; far beyond what it takes on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(30);

pub fn owner(pid: u32) -> Owner {
    Owner {
        host: "h".into(),
        boot_id: "b".into(),
        pid,
        start_time: 2,
    }
}

pub fn new_transfer(name: Option<&str>) -> NewTransfer {
    NewTransfer {
        replaces: None,
        checksum: None,
        name: name.map(str::to_owned),
        kind: Kind::Sync,
        caller: None,
        owner: owner(1),
        preserve: Preserve::ALL,
        temp_suffix: crate::model::DEFAULT_TEMP_SUFFIX.into(),
    }
}

pub fn file_entry(i: usize, size: u64) -> NewEntry {
    NewEntry {
        link_leader: None,
        shared_inode: None,
        inode_changed_ns: 0,
        xattrs: Xattrs::default(),
        kind: EntryKind::File,
        source: PathBuf::from(format!("/src/dir/file-{i:06}")),
        dest: PathBuf::from(format!("/dst/dir/file-{i:06}")),
        meta: SourceMeta {
            size,
            mode: 0o644,
            uid: 0,
            gid: 0,
            atime_ns: 1,
            mtime_ns: 2,
        },
        link_target: None,
    }
}

fn to(id: TransferId, to: TransferState) -> Change {
    Change::Transfer {
        id,
        to,
        owner: None,
        context: Value::Null,
    }
}

fn entry(id: TransferId, index: u32, to: FileState) -> Change {
    Change::Entry {
        id,
        index: EntryIndex(index),
        to,
        progress_bytes_durable: None,
        error: None,
        checksum: None,
        context: Value::Null,
    }
}

fn progress(id: TransferId, index: u32, bytes: u64, digests: Vec<Checksum>) -> Change {
    Change::Progress {
        id,
        index: EntryIndex(index),
        progress_bytes_durable: bytes,
        piece_digests: digests,
    }
}

fn digest(algo: ChecksumAlgo, byte: u8) -> Checksum {
    let bytes: Vec<u8> = (0..algo.digest_len() as u8)
        .map(|i| i.wrapping_mul(31) ^ byte)
        .collect();
    Checksum::from_digest(algo, &bytes).expect("digest of the algorithm's length")
}

fn all_events<S: Store>(store: &S) -> Vec<Event> {
    let events = store
        .events_since(0, &EventFilter::default(), 1 << 20)
        .unwrap();
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    events
}

fn names(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.name.as_str()).collect()
}

/// A transfer with `files` entries of `size` bytes, dispatched and running.
fn running<S: Store>(store: &S, name: &str, files: usize, size: u64) -> TransferRecord {
    let entries: Vec<_> = (0..files).map(|i| file_entry(i, size)).collect();
    let t = store
        .create_transfer(&new_transfer(Some(name)), &entries)
        .unwrap();
    store
        .apply(&[
            to(t.id, TransferState::Dispatched),
            to(t.id, TransferState::Running),
        ])
        .unwrap();
    t
}

/// Runs every function of this module as a test: `$open` is an expression
/// of type `&dyn Fn() -> S` opening one fresh store, evaluated once per test
/// (so `let`s in it live as long as the test).
#[macro_export]
#[doc(hidden)]
macro_rules! store_conformance_tests {
    ($fresh:expr) => {
        $crate::store_conformance_tests!(
            $fresh;
            ids_are_never_reused_and_names_are_unique,
            an_unnamed_transfer_never_collides_with_a_chosen_cp_name,
            every_change_writes_its_event_and_illegal_transitions_change_nothing,
            a_batch_of_entry_changes_is_checked_in_order_and_written_whole,
            create_entries_and_events_round_trip_every_field,
            progress_never_goes_back,
            a_cancel_is_seen_by_an_entry_change,
            free_is_refused_while_moving,
            a_name_passes_from_a_finished_transfer_in_one_transaction,
            limit_and_removal_events,
            reattach_is_a_compare_and_swap,
            tallies_and_failure_pages_agree_with_the_entries,
            events_since_filters_and_limits,
            compaction_and_cursors,
            the_event_reader_wakes_on_a_write_from_another_handle,
            concurrent_handles_number_events_without_gaps,
            the_lease_is_renewed_by_the_owner_and_fences_the_old_one,
        );
    };
    ($fresh:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $fresh(|open| $crate::conformance::$name(open));
            }
        )*
    };
}
