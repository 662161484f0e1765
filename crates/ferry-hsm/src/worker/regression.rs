//! One test per HSM bug found in review (the data-loss ones), named after
//! what must hold.
use std::io::{Read, Write};
use std::time::Duration;

use super::*;
use crate::LeaseFilter;
use crate::archive::{Archive, Fence, ObjectMeta, PosixArchive};
use crate::catalog::{fid_of, refresh, release};
use crate::conformance::request;
use ferry::store::SqliteStore;

use super::tests::{Setup, config, file_request, setup};

fn archived_file(s: &Setup, name: &str) -> (PathBuf, String) {
    let path = s.dir.path().join("fs").join(name);
    fs::write(&path, vec![7u8; 10_000]).unwrap();
    s.store
        .enqueue(&[file_request(Action::Archive, &path)])
        .unwrap();
    let r = Worker::new(&s.store, &s.archive, config()).run().unwrap();
    assert_eq!(r.succeeded, 1);
    let (fid, abs) = fid_of(&path).unwrap();
    (abs, fid)
}

fn lease_one(s: &Setup, worker: &str) -> Option<Lease> {
    s.store
        .lease(worker, &LeaseFilter::default(), 1, Duration::from_secs(30))
        .unwrap()
        .pop()
}

/// A cancelled remove must not delete the archived copy while the catalog
/// still points at it (release would then destroy the only data).
#[test]
fn a_cancelled_remove_never_deletes_the_archived_copy() {
    let s = setup();
    let (path, fid) = archived_file(&s, "f");
    let object = s
        .store
        .catalog_entry(&fid)
        .unwrap()
        .unwrap()
        .object
        .unwrap();
    let object_path = s.archive.object_path(&object);
    assert!(object_path.exists());
    s.store
        .enqueue(&[file_request(Action::Remove, &path)])
        .unwrap();
    let lease = lease_one(&s, "w1").unwrap();
    assert_eq!(lease.request.action, Action::Remove);
    s.store.cancel(lease.id()).unwrap(); // the user cancels the remove
    let outcome = Worker::new(&s.store, &s.archive, config())
        .process(&lease)
        .unwrap();
    eprintln!("outcome of the canceled remove's attempt: {outcome:?}");
    let entry = s.store.catalog_entry(&fid).unwrap().unwrap();
    eprintln!(
        "catalog: {:?} object {:?}; object exists: {}",
        entry.state,
        entry.object,
        object_path.exists()
    );
    // Now release it (allowed: the catalog says archived) and restore.
    let released = release(&s.store, &fid, &path);
    eprintln!("release: {:?}", released.as_ref().map(|e| e.state));
    if released.is_ok() {
        s.store
            .enqueue(&[file_request(Action::Restore, &path)])
            .unwrap();
        let r = Worker::new(&s.store, &s.archive, config()).run().unwrap();
        eprintln!(
            "restore worker: {r:?}; catalog now {:?}; file bytes: {:?}",
            s.store.catalog_entry(&fid).unwrap().unwrap().state,
            &fs::read(&path).unwrap()[..8]
        );
    }
    assert!(
        object_path.exists(),
        "a canceled remove deleted the only archived copy"
    );
}

/// An archive wrapper whose remove() lets a `ferry hsm release` run first,
/// i.e. the release lands between the remove worker's catalog read and its
/// deletion of the object.
struct ReleaseDuringRemove<'a> {
    inner: &'a PosixArchive,
    store: &'a SqliteStore,
    fid: String,
    path: PathBuf,
}

impl Archive for ReleaseDuringRemove<'_> {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn put(
        &self,
        o: &str,
        src: &mut dyn Read,
        m: &ObjectMeta,
        f: &mut dyn Fence,
    ) -> io::Result<String> {
        self.inner.put(o, src, m, f)
    }
    fn get(&self, o: &str, dst: &mut dyn Write, f: &mut dyn Fence) -> io::Result<String> {
        self.inner.get(o, dst, f)
    }
    fn remove(&self, o: &str) -> io::Result<()> {
        let r = release(self.store, &self.fid, &self.path);
        eprintln!("release during remove: {:?}", r.as_ref().map(|e| e.state));
        self.inner.remove(o)
    }
    fn meta(&self, o: &str) -> io::Result<ObjectMeta> {
        self.inner.meta(o)
    }
}

#[test]
fn a_release_racing_a_started_remove_keeps_a_copy_of_the_data() {
    let s = setup();
    let (path, fid) = archived_file(&s, "g");
    s.store
        .enqueue(&[file_request(Action::Remove, &path)])
        .unwrap();
    let racing = ReleaseDuringRemove {
        inner: &s.archive,
        store: &s.store,
        fid: fid.clone(),
        path: path.clone(),
    };
    let r = Worker::new(&s.store, &racing, config()).run().unwrap();
    let entry = s.store.catalog_entry(&fid).unwrap().unwrap();
    let has_data = {
        let f = File::open(&path).unwrap();
        rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(0)).is_ok()
    };
    eprintln!(
        "worker {r:?}; catalog {:?} object {:?}; file has data: {has_data}; object exists: {}",
        entry.state,
        entry.object,
        entry
            .object
            .as_ref()
            .map(|o| s.archive.object_path(o).exists())
            .unwrap_or(false)
    );
    assert!(
        has_data
            || entry
                .object
                .as_ref()
                .is_some_and(|o| s.archive.object_path(o).exists()),
        "neither the file nor the archive holds the data any more"
    );
}

/// Data written into a released stub is newer than the archive: a restore
/// must fail rather than rename the old data over it.
#[test]
fn a_restore_never_overwrites_data_written_into_a_released_stub() {
    let s = setup();
    let (path, fid) = archived_file(&s, "w");
    release(&s.store, &fid, &path).unwrap();
    fs::write(&path, b"new data the user wrote after the release").unwrap();
    let state = refresh(&s.store, &fid, &path).unwrap().unwrap().state;
    eprintln!("catalog after the user's write: {state:?}");
    s.store
        .enqueue(&[file_request(Action::Restore, &path)])
        .unwrap();
    let r = Worker::new(&s.store, &s.archive, config()).run().unwrap();
    let now = fs::read(&path).unwrap();
    eprintln!(
        "restore: {r:?}; file now {} bytes, starts {:?}",
        now.len(),
        &now[..8]
    );
    assert_eq!(
        &now[..],
        b"new data the user wrote after the release",
        "the user's new data was replaced"
    );
}

/// The upcall never looks at the file: an ARCHIVE of a file changed since
/// its last archive is queued (and archived), not dropped as current.
#[test]
fn an_upcall_archive_of_a_changed_file_is_archived_again() {
    let s = setup();
    let (path, fid) = archived_file(&s, "u");
    fs::write(&path, vec![1u8; 30_000]).unwrap();
    let out = s.store.enqueue(&[request(Action::Archive, &fid)]).unwrap();
    assert!(!matches!(out[0], crate::Enqueued::Noop { .. }), "{out:?}");
    let r = Worker::new(&s.store, &s.archive, config()).run().unwrap();
    assert_eq!(r.succeeded, 1, "{r:?}");
    let entry = s.store.catalog_entry(&fid).unwrap().unwrap();
    assert_eq!((entry.state, entry.size), (CatalogState::Archived, 30_000));
    // And an upcall for an unchanged file costs no copy.
    let out = s.store.enqueue(&[request(Action::Archive, &fid)]).unwrap();
    assert!(!matches!(out[0], crate::Enqueued::Noop { .. }));
    Worker::new(&s.store, &s.archive, config()).run().unwrap();
    assert_eq!(
        s.store.catalog_entry(&fid).unwrap().unwrap().object,
        entry.object
    );
}

/// `lost` is mirrored in the file's extended attribute like every other
/// catalog state.
#[test]
fn a_lost_file_says_so_in_its_extended_attribute() {
    let s = setup();
    let (path, fid) = archived_file(&s, "l");
    release(&s.store, &fid, &path).unwrap();
    let object = s
        .store
        .catalog_entry(&fid)
        .unwrap()
        .unwrap()
        .object
        .unwrap();
    let op = s.archive.object_path(&object);
    let mut bytes = fs::read(&op).unwrap();
    bytes[10] ^= 1;
    fs::write(&op, bytes).unwrap();
    s.store
        .enqueue(&[file_request(Action::Restore, &path)])
        .unwrap();
    Worker::new(&s.store, &s.archive, config()).run().unwrap();
    let catalog = s.store.catalog_entry(&fid).unwrap().unwrap().state;
    assert_eq!(catalog, CatalogState::Lost);
    assert_eq!(crate::catalog::xattr_state(&path), Some(catalog));
}

/// A remove queued while an archive of the same file is started waits for
/// it, then removes what it archived: never both at once, with the
/// archive winning.
#[test]
fn a_remove_waits_for_a_started_archive_of_the_same_file() {
    let s = setup();
    let (path, fid) = archived_file(&s, "h");
    fs::write(&path, vec![9u8; 20_000]).unwrap();
    refresh(&s.store, &fid, &path).unwrap();
    s.store
        .enqueue(&[file_request(Action::Archive, &path)])
        .unwrap();
    let archive_lease = lease_one(&s, "w1").unwrap();
    assert_eq!(archive_lease.request.action, Action::Archive);
    s.store
        .enqueue(&[file_request(Action::Remove, &path)])
        .unwrap();
    assert!(
        lease_one(&s, "w2").is_none(),
        "the remove waits for the archive"
    );
    let w = Worker::new(&s.store, &s.archive, config());
    w.process(&archive_lease).unwrap();
    let remove_lease = lease_one(&s, "w2").expect("now the remove");
    assert_eq!(remove_lease.request.action, Action::Remove);
    w.process(&remove_lease).unwrap();
    let entry = s.store.catalog_entry(&fid).unwrap().unwrap();
    assert_eq!((entry.state, entry.object), (CatalogState::Exists, None));
}
