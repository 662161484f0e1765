//! Workers against a real store and POSIX archive, in one process. The
//! killed-worker case (a real `ferry hsm worker` SIGKILLed mid-archive) is
//! in the CLI's tests.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::sync::Barrier;

use super::*;
use crate::archive::PosixArchive;
use crate::catalog::{fid_of, release, xattr_state};
use crate::conformance::request;
use crate::{Enqueued, NewRequest, Policy, RequestId, wait_request};
use ferry::store::{SqliteStore, Store};

pub(super) struct Setup {
    pub(super) dir: tempfile::TempDir,
    pub(super) store: SqliteStore,
    pub(super) archive: PosixArchive,
}

pub(super) fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
    fs::create_dir(dir.path().join("archive")).unwrap();
    fs::create_dir(dir.path().join("fs")).unwrap();
    let archive = PosixArchive::open(&dir.path().join("archive")).unwrap();
    Setup {
        dir,
        store,
        archive,
    }
}

pub(super) fn config() -> WorkerConfig {
    WorkerConfig {
        until_idle: true,
        lease: Duration::from_secs(30),
        ..WorkerConfig::new("test-worker")
    }
}

pub(super) fn file_request(action: Action, path: &Path) -> NewRequest {
    let (fid, abs) = fid_of(path).unwrap();
    NewRequest {
        path: Some(abs),
        ..request(action, &fid)
    }
}

fn enqueue(q: &dyn RequestQueue, action: Action, path: &Path) -> Enqueued {
    q.enqueue(&[file_request(action, path)]).unwrap().remove(0)
}

fn run(q: &dyn RequestQueue, archive: &dyn Archive) -> WorkerReport {
    Worker::new(q, archive, config()).run().unwrap()
}

/// Whether any byte of the file is allocated (SEEK_DATA finds one). Not
/// `st_blocks`: an extended attribute may take a block of its own.
fn has_data(path: &Path) -> bool {
    let file = File::open(path).unwrap();
    rustix::fs::seek(&file, rustix::fs::SeekFrom::Data(0)).is_ok()
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// Archives a fresh file of `len` bytes; returns its path and fid.
fn archived_file(s: &Setup, name: &str, len: usize) -> (PathBuf, String) {
    let path = s.dir.path().join("fs").join(name);
    fs::write(&path, data(len)).unwrap();
    let id = enqueue(&s.store, Action::Archive, &path).id().unwrap();
    assert_eq!(run(&s.store, &s.archive).succeeded, 1);
    assert_eq!(
        s.store.request(id).unwrap().unwrap().state,
        RequestState::Succeed
    );
    let (fid, _) = fid_of(&path).unwrap();
    (path, fid)
}

#[test]
fn archive_release_restore_round_trip() {
    let s = setup();
    let (path, fid) = archived_file(&s, "f", 3 * crate::archive::CHUNK + 5);
    let before = fs::metadata(&path).unwrap();
    let entry = s.store.catalog_entry(&fid).unwrap().unwrap();
    assert_eq!(entry.state, CatalogState::Archived);
    assert_eq!(entry.size, before.len());
    assert_eq!(xattr_state(&path), Some(CatalogState::Archived));
    let object = entry.object.clone().unwrap();
    assert_eq!(
        fs::read(s.archive.object_path(&object)).unwrap(),
        data(entry.size as usize)
    );
    assert_eq!(
        s.archive.meta(&object).unwrap().checksum,
        entry.checksum.clone().unwrap()
    );

    // Archiving it again while unchanged is a no-op.
    assert!(matches!(
        enqueue(&s.store, Action::Archive, &path),
        Enqueued::Noop { .. }
    ));

    // Release: same size, mode and mtime; no data blocks.
    release(&s.store, &fid, &path).unwrap();
    let stub = fs::metadata(&path).unwrap();
    assert_eq!(
        (stub.len(), stub.mode(), stub.mtime(), stub.mtime_nsec()),
        (
            before.len(),
            before.mode(),
            before.mtime(),
            before.mtime_nsec()
        )
    );
    assert!(!has_data(&path), "a released file is sparse");
    assert_eq!(xattr_state(&path), Some(CatalogState::Released));
    // The stub is never archived over the copy.
    assert!(matches!(
        enqueue(&s.store, Action::Archive, &path),
        Enqueued::Noop { .. }
    ));
    assert_eq!(
        s.store.catalog_entry(&fid).unwrap().unwrap().state,
        CatalogState::Released
    );

    // Restore: the data, mode and mtime come back, checksum verified.
    let id = enqueue(&s.store, Action::Restore, &path).id().unwrap();
    assert_eq!(run(&s.store, &s.archive).succeeded, 1);
    assert_eq!(
        wait_request(&s.store, id, None).unwrap().unwrap().state,
        RequestState::Succeed
    );
    assert_eq!(fs::read(&path).unwrap(), data(entry.size as usize));
    let back = fs::metadata(&path).unwrap();
    assert_eq!(
        (back.mode(), back.mtime(), back.mtime_nsec()),
        (before.mode(), before.mtime(), before.mtime_nsec())
    );
    assert_eq!(xattr_state(&path), Some(CatalogState::Archived));
    assert_eq!(
        s.store.catalog_entry(&fid).unwrap().unwrap().state,
        CatalogState::Archived
    );

    // Remove: the archived copy goes, the file stays.
    let id = enqueue(&s.store, Action::Remove, &path).id().unwrap();
    assert_eq!(run(&s.store, &s.archive).succeeded, 1);
    assert_eq!(
        s.store.request(id).unwrap().unwrap().state,
        RequestState::Succeed
    );
    assert!(!s.archive.object_path(&object).exists());
    let entry = s.store.catalog_entry(&fid).unwrap().unwrap();
    assert_eq!((entry.state, entry.object), (CatalogState::Exists, None));
    assert_eq!(xattr_state(&path), Some(CatalogState::Exists));
    assert_eq!(fs::read(&path).unwrap().len(), before.len() as usize);
}

#[test]
fn release_refuses_a_dirty_file() {
    let s = setup();
    let (path, fid) = archived_file(&s, "f", 1000);
    fs::write(&path, b"changed after archiving").unwrap();
    let err = release(&s.store, &fid, &path).unwrap_err();
    assert!(matches!(err, ferry::Error::FileDirty { .. }), "{err}");
    assert!(err.to_string().contains("archive it again"));
    assert_eq!(fs::read(&path).unwrap(), b"changed after archiving");
    assert_eq!(
        s.store.catalog_entry(&fid).unwrap().unwrap().state,
        CatalogState::Dirty
    );
    assert_eq!(xattr_state(&path), Some(CatalogState::Dirty));
    // Still refused (dirty is not archived), and archiving works again.
    assert!(release(&s.store, &fid, &path).is_err());
    assert!(matches!(
        enqueue(&s.store, Action::Archive, &path),
        Enqueued::Queued { .. }
    ));
    assert_eq!(run(&s.store, &s.archive).succeeded, 1);
    release(&s.store, &fid, &path).unwrap();
}

/// Counts the objects it hands out.
#[test]
fn fifty_concurrent_restores_make_one_copy_and_release_fifty_waiters() {
    let s = setup();
    let (path, fid) = archived_file(&s, "f", 200_000);
    release(&s.store, &fid, &path).unwrap();
    let counting = Gate::new(&s.archive, true);
    let enqueued = Barrier::new(51);
    let outcomes: Vec<(RequestId, RequestState)> = std::thread::scope(|scope| {
        let waiters: Vec<_> = (0..50)
            .map(|_| {
                scope.spawn(|| {
                    // Each caller has its own connection, as 50 upcalls would.
                    let store = SqliteStore::open(&s.dir.path().join("s.db")).unwrap();
                    let id = enqueue(&store, Action::Restore, &path).id().unwrap();
                    enqueued.wait();
                    let done = wait_request(&store, id, Some(Duration::from_secs(60)))
                        .unwrap()
                        .expect("released before the deadline");
                    (id, done.state)
                })
            })
            .collect();
        enqueued.wait();
        let report = Worker::new(&s.store, &counting, config()).run().unwrap();
        assert_eq!(report.succeeded, 1);
        waiters.into_iter().map(|w| w.join().unwrap()).collect()
    });
    assert_eq!(counting.state.lock().unwrap().gets, 1, "one copy");
    let id = outcomes[0].0;
    assert!(
        outcomes.iter().all(|o| *o == (id, RequestState::Succeed)),
        "{outcomes:?}"
    );
    let r = s.store.request(id).unwrap().unwrap();
    assert_eq!((r.waiters, r.attempts), (50, 1));
    assert_eq!(fs::read(&path).unwrap(), data(200_000));
}

#[test]
fn checksum_mismatch_fails_the_restore_and_marks_the_file_lost() {
    let s = setup();
    let (path, fid) = archived_file(&s, "f", 100_000);
    release(&s.store, &fid, &path).unwrap();
    let entry = s.store.catalog_entry(&fid).unwrap().unwrap();
    // Flip one byte of the archived object.
    let object = s.archive.object_path(entry.object.as_deref().unwrap());
    let mut bytes = fs::read(&object).unwrap();
    bytes[5000] ^= 0xff;
    fs::write(&object, bytes).unwrap();
    let id = enqueue(&s.store, Action::Restore, &path).id().unwrap();
    let report = run(&s.store, &s.archive);
    assert_eq!((report.succeeded, report.failed), (0, 1));
    let r = s.store.request(id).unwrap().unwrap();
    assert_eq!((r.state, r.attempts), (RequestState::Failed, 1), "no retry");
    assert!(r.error.unwrap().contains("checksum mismatch"));
    assert_eq!(
        s.store.catalog_entry(&fid).unwrap().unwrap().state,
        CatalogState::Lost
    );
    // The stub is untouched and no temporary is left.
    let stub = fs::metadata(&path).unwrap();
    assert_eq!(stub.len(), 100_000);
    assert!(!has_data(&path));
    assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    // Archiving the stub of a lost file is refused: its zeros are not its data.
    let id = enqueue(&s.store, Action::Archive, &path).id().unwrap();
    assert_eq!(run(&s.store, &s.archive).failed, 1);
    let r = s.store.request(id).unwrap().unwrap();
    assert_eq!(r.state, RequestState::Failed);
    assert!(r.error.unwrap().contains("released stub"));
}

/// Fails every put.
struct Broken;

impl Archive for Broken {
    fn describe(&self) -> String {
        "broken".into()
    }
    fn put(
        &self,
        _: &str,
        _: &mut dyn Read,
        _: &ObjectMeta,
        _: &mut dyn Fence,
    ) -> io::Result<String> {
        Err(io::Error::from_raw_os_error(
            rustix::io::Errno::IO.raw_os_error(),
        ))
    }
    fn get(&self, _: &str, _: &mut dyn io::Write, _: &mut dyn Fence) -> io::Result<String> {
        unreachable!()
    }
    fn remove(&self, _: &str) -> io::Result<()> {
        Ok(())
    }
    fn meta(&self, _: &str) -> io::Result<ObjectMeta> {
        unreachable!()
    }
}

#[test]
fn failures_are_retried_with_backoff_then_failed() {
    let s = setup();
    s.store
        .set_policy(&Policy {
            max_attempts: 3,
            backoff_base_ms: 10,
            backoff_max_ms: 20,
            ..Policy::DEFAULT
        })
        .unwrap();
    let path = s.dir.path().join("fs/f");
    fs::write(&path, b"x").unwrap();
    let id = enqueue(&s.store, Action::Archive, &path).id().unwrap();
    let report = run(&s.store, &Broken);
    assert_eq!(report.failed, 3, "{report:?}");
    let r = s.store.request(id).unwrap().unwrap();
    assert_eq!((r.state, r.attempts), (RequestState::Failed, 3));
    let filter = ferry::store::EventFilter {
        request: Some(id),
        ..Default::default()
    };
    let names: Vec<String> = s
        .store
        .events_since(0, &filter, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(
        names,
        [
            "request.waiting",
            "request.started",
            "request.waiting",
            "request.started",
            "request.waiting",
            "request.started",
            "request.failed"
        ]
    );
}

#[test]
fn a_worker_that_lost_its_lease_publishes_nothing() {
    let s = setup();
    let path = s.dir.path().join("fs/f");
    fs::write(&path, data(10_000)).unwrap();
    let id = enqueue(&s.store, Action::Archive, &path).id().unwrap();
    // w1's lease lapses at once; w2 gets attempt 2.
    let stale = s
        .store
        .lease("w1", &LeaseFilter::default(), 1, Duration::ZERO)
        .unwrap()
        .remove(0);
    let fresh = loop {
        if let Some(l) = s
            .store
            .lease("w2", &LeaseFilter::default(), 1, Duration::from_secs(30))
            .unwrap()
            .pop()
        {
            break l;
        }
    };
    assert_eq!((fresh.id(), fresh.attempt), (id, 2));
    let w1 = Worker::new(&s.store, &s.archive, WorkerConfig::new("w1"));
    assert!(matches!(w1.process(&stale).unwrap(), Outcome::Abandoned(_)));
    let stale_object = object_id(&fid_of(&path).unwrap().0, id, 1);
    assert!(!s.archive.object_path(&stale_object).exists());
    let w2 = Worker::new(&s.store, &s.archive, WorkerConfig::new("w2"));
    assert_eq!(w2.process(&fresh).unwrap(), Outcome::Succeeded);
    let entry = s
        .store
        .catalog_entry(&fid_of(&path).unwrap().0)
        .unwrap()
        .unwrap();
    assert_eq!(entry.object.unwrap(), object_id(&entry.fid, id, 2));
}

/// Counts what a worker has started, seen from the archive's side: puts
/// and gets in flight (held until the gate is open), and gets in all.
struct Gate<'a> {
    inner: &'a dyn Archive,
    state: std::sync::Mutex<GateState>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct GateState {
    archives: usize,
    restores: usize,
    /// The most archives in flight at once.
    archives_max: usize,
    gets: usize,
    open: bool,
}

impl<'a> Gate<'a> {
    fn new(inner: &'a dyn Archive, open: bool) -> Gate<'a> {
        Gate {
            inner,
            state: std::sync::Mutex::new(GateState {
                open,
                ..GateState::default()
            }),
            changed: std::sync::Condvar::new(),
        }
    }

    /// Waits (bounded) until `done` holds of the state; returns it locked.
    fn until(&self, done: impl Fn(&GateState) -> bool) -> std::sync::MutexGuard<'_, GateState> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut state = self.state.lock().unwrap();
        while !done(&state) {
            assert!(
                Instant::now() < deadline,
                "the gate waited past its deadline"
            );
            state = self
                .changed
                .wait_timeout(state, Duration::from_secs(1))
                .unwrap()
                .0;
        }
        state
    }

    fn pass<T>(&self, archive: bool, then: impl FnOnce() -> T) -> T {
        {
            let mut state = self.state.lock().unwrap();
            if archive {
                state.archives += 1;
                state.archives_max = state.archives_max.max(state.archives);
            } else {
                state.restores += 1;
                state.gets += 1;
            }
            self.changed.notify_all();
        }
        drop(self.until(|state| state.open));
        let out = then();
        let mut state = self.state.lock().unwrap();
        if archive {
            state.archives -= 1;
        } else {
            state.restores -= 1;
        }
        out
    }
}

impl Archive for Gate<'_> {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn put(
        &self,
        object: &str,
        src: &mut dyn Read,
        meta: &ObjectMeta,
        fence: &mut dyn Fence,
    ) -> io::Result<String> {
        self.pass(true, || self.inner.put(object, src, meta, fence))
    }
    fn get(
        &self,
        object: &str,
        dst: &mut dyn io::Write,
        fence: &mut dyn Fence,
    ) -> io::Result<String> {
        self.pass(false, || self.inner.get(object, dst, fence))
    }
    fn remove(&self, object: &str) -> io::Result<()> {
        self.inner.remove(object)
    }
    fn meta(&self, object: &str) -> io::Result<ObjectMeta> {
        self.inner.meta(object)
    }
}

/// `--max-archive 1` with three slots: archives queued first (FIFO) take
/// one slot, restores the other two, never a second archive; without the
/// cap the three archives would fill every slot.
#[test]
fn a_capped_action_never_has_more_than_its_cap_in_flight() {
    let s = setup();
    let mut stubs = Vec::new();
    for name in ["r1", "r2"] {
        let (path, fid) = archived_file(&s, name, 10_000);
        release(&s.store, &fid, &path).unwrap();
        stubs.push(path);
    }
    s.store.set_policy(&Policy::DEFAULT.fifo()).unwrap();
    for name in ["a1", "a2", "a3"] {
        let path = s.dir.path().join("fs").join(name);
        fs::write(&path, data(10_000)).unwrap();
        enqueue(&s.store, Action::Archive, &path);
    }
    for path in &stubs {
        enqueue(&s.store, Action::Restore, path);
    }
    let gate = Gate::new(&s.archive, false);
    let config = WorkerConfig {
        max_inflight: 3,
        caps: ActionCaps {
            archive: Some(1),
            ..ActionCaps::default()
        },
        ..config()
    };
    let report = std::thread::scope(|scope| {
        let worker = scope.spawn(|| Worker::new(&s.store, &gate, config).run().unwrap());
        // Every slot taken: what is in flight now is all the worker started.
        let mut state = gate.until(|state| state.archives + state.restores == 3);
        assert_eq!(
            (state.archives, state.restores),
            (1, 2),
            "archives, restores in flight"
        );
        state.open = true;
        gate.changed.notify_all();
        drop(state);
        worker.join().unwrap()
    });
    assert_eq!(report.succeeded, 5, "{report:?}");
    assert_eq!(
        gate.state.lock().unwrap().archives_max,
        1,
        "at most one archive at once"
    );
    for path in &stubs {
        assert_eq!(fs::read(path).unwrap(), data(10_000));
    }
}
