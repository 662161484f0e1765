//! Workers: lease a request, move the data, heartbeat while moving, then
//! ack or fail. `max_inflight` threads each serve one request at a time.
//!
//! **Invariant:** a worker changes a request only through the queue, with
//! its lease's attempt; every step that makes something visible (an archive
//! object, a restored file) is preceded by a forced heartbeat, so a worker
//! that lost its lease stops before, not after.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::archive::{Archive, Fence, ObjectMeta, object_id};
use crate::catalog::{self, file_meta};
use crate::{
    Action, CatalogEntry, CatalogState, FailKind, Lease, LeaseFilter, RequestQueue, RequestState,
};
use ferry::store::StoreError;

/// At most this many requests in flight per worker process.
pub const INFLIGHT_MAX: usize = 256;

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Names the lease holder: `host:pid` by default.
    pub name: String,
    pub filter: LeaseFilter,
    pub max_inflight: usize,
    /// At most this many requests of an action in flight at once, within
    /// `max_inflight` (`--max-archive` and so on): restores keep slots
    /// under a flood of archives.
    pub caps: ActionCaps,
    /// How long a lease lasts without a heartbeat; heartbeats come every
    /// third of it while data moves.
    pub lease: Duration,
    /// Resolves a FID that is not an absolute path: `ROOT/FID` (for Lustre,
    /// `MOUNT/.lustre/fid`).
    pub fid_root: Option<PathBuf>,
    /// Return once no request is waiting or started.
    pub until_idle: bool,
    /// The longest wait for a change before looking at the queue again
    /// (lease expiries and back-offs end without a write to wake us).
    pub idle_poll: Duration,
}

impl WorkerConfig {
    pub fn new(name: impl Into<String>) -> WorkerConfig {
        WorkerConfig {
            name: name.into(),
            filter: LeaseFilter::default(),
            max_inflight: 1,
            caps: ActionCaps::default(),
            lease: Duration::from_secs(60),
            fid_root: None,
            until_idle: false,
            idle_poll: Duration::from_millis(100),
        }
    }
}

/// Per-action caps on the requests a worker has in flight; `None`: only
/// `max_inflight` bounds that action.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ActionCaps {
    pub archive: Option<usize>,
    pub restore: Option<usize>,
    pub remove: Option<usize>,
}

impl ActionCaps {
    pub fn of(&self, action: Action) -> Option<usize> {
        match action {
            Action::Archive => self.archive,
            Action::Restore => self.restore,
            Action::Remove => self.remove,
        }
    }

    fn any(&self) -> bool {
        Action::ALL.iter().any(|a| self.of(*a).is_some())
    }
}

/// What one worker run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerReport {
    pub succeeded: u64,
    pub failed: u64,
    /// Attempts abandoned because the lease was lost (expired, cancelled).
    pub abandoned: u64,
}

/// The outcome of one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    /// The attempt failed; the request is now in this state.
    Failed(RequestState, String),
    /// The lease was lost: someone else owns the request now.
    Abandoned(String),
}

pub struct Worker<'a> {
    queue: &'a dyn RequestQueue,
    archive: &'a dyn Archive,
    config: WorkerConfig,
    stop: AtomicBool,
    /// Requests in flight, by action (in [`Action::ALL`] order).
    in_flight: [AtomicUsize; 3],
    /// Held from a capped lease's look at `in_flight` to its count: two
    /// threads never both take an action's last slot.
    leasing: Mutex<()>,
}

/// A leased request counted in its action's slots until dropped.
struct InFlight<'w> {
    lease: Lease,
    count: &'w AtomicUsize,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<'a> Worker<'a> {
    pub fn new(
        queue: &'a dyn RequestQueue,
        archive: &'a dyn Archive,
        config: WorkerConfig,
    ) -> Worker<'a> {
        assert!(
            (1..=INFLIGHT_MAX).contains(&config.max_inflight),
            "1 to {INFLIGHT_MAX} requests in flight"
        );
        Worker {
            queue,
            archive,
            config,
            stop: AtomicBool::new(false),
            in_flight: Default::default(),
            leasing: Mutex::new(()),
        }
    }

    /// Asks [`Worker::run`] to return after the requests in flight.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Serves requests until stopped (or idle, with `until_idle`).
    pub fn run(&self) -> Result<WorkerReport, StoreError> {
        let counts = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
        std::thread::scope(|s| {
            let threads: Vec<_> = (0..self.config.max_inflight)
                .map(|_| s.spawn(|| self.serve(&counts)))
                .collect();
            let mut result = Ok(());
            for t in threads {
                let r = t.join().expect("a worker thread panicked");
                if r.is_err() {
                    // One thread's store error stops the others too.
                    self.stop();
                    result = r;
                }
            }
            result
        })?;
        Ok(WorkerReport {
            succeeded: counts[0].load(Ordering::SeqCst),
            failed: counts[1].load(Ordering::SeqCst),
            abandoned: counts[2].load(Ordering::SeqCst),
        })
    }

    /// One serving thread: [`Worker::serve_until_error`], paused while the
    /// store is read-only (its disk full) and resumed when it takes writes
    /// again, so that a supervisor need not restart the worker. A request
    /// whose ack the full store refused is leased again once its lease
    /// expires.
    fn serve(&self, counts: &[AtomicU64; 3]) -> Result<(), StoreError> {
        loop {
            match self.serve_until_error(counts) {
                Err(e @ StoreError::ReadOnly { .. }) if self.queue.recovers_from_read_only() => {
                    eprintln!("ferry: worker paused: {e}");
                    // Each wait bounded, so that a stop is seen.
                    while !self.queue.wait_read_write(self.config.idle_poll) {
                        if self.stop.load(Ordering::SeqCst) {
                            return Ok(());
                        }
                    }
                    eprintln!("ferry: worker resumed: the store takes writes again");
                }
                other => return other,
            }
        }
    }

    fn serve_until_error(&self, counts: &[AtomicU64; 3]) -> Result<(), StoreError> {
        let mut reader = self.queue.event_reader()?;
        while !self.stop.load(Ordering::SeqCst) {
            let token = reader.change_token()?;
            let Some(lease) = self.lease_within_caps()? else {
                if self.config.until_idle && self.idle()? {
                    return Ok(());
                }
                reader.wait_changed(token, self.config.idle_poll)?;
                continue;
            };
            let slot = match self.process(&lease.lease)? {
                Outcome::Succeeded => 0,
                Outcome::Failed(..) => 1,
                Outcome::Abandoned(_) => 2,
            };
            counts[slot].fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Leases one request of an action below its cap (none when every
    /// action the filter allows is at its cap), counted until dropped.
    fn lease_within_caps(&self) -> Result<Option<InFlight<'_>>, StoreError> {
        let caps = self.config.caps;
        let _leasing = caps
            .any()
            .then(|| self.leasing.lock().expect("leasing poisoned"));
        let slot = |action: Action| {
            let index = Action::ALL.iter().position(|a| *a == action);
            &self.in_flight[index.expect("every action is in ALL")]
        };
        let mut filter = self.config.filter.clone();
        if caps.any() {
            let open: Vec<Action> = Action::ALL
                .into_iter()
                .filter(|a| filter.allows(*a))
                .filter(|a| {
                    caps.of(*a)
                        .is_none_or(|n| slot(*a).load(Ordering::SeqCst) < n)
                })
                .collect();
            if open.is_empty() {
                return Ok(None);
            }
            filter.actions = Some(open);
        }
        let lease = self
            .queue
            .lease(&self.config.name, &filter, 1, self.config.lease)?
            .pop();
        Ok(lease.map(|lease| {
            let count = slot(lease.request.action);
            count.fetch_add(1, Ordering::SeqCst);
            InFlight { lease, count }
        }))
    }

    fn idle(&self) -> Result<bool, StoreError> {
        let stats = self.queue.stats()?;
        Ok(stats.count(None, RequestState::Waiting) == 0
            && stats.count(None, RequestState::Started) == 0)
    }

    /// Serves one leased request to its end: ack, fail or abandon.
    pub fn process(&self, lease: &Lease) -> Result<Outcome, StoreError> {
        let r = &lease.request;
        let path = self.resolve(&r.fid, r.path.as_deref());
        let mut fence = LeaseFence {
            queue: self.queue,
            lease,
            every: self.config.lease / 3,
            extend: self.config.lease,
            last: Instant::now(),
        };
        let result = match r.action {
            // Resolved against the worker's current directory it would name
            // whatever file happens to be there.
            _ if path.is_relative() => Err(Step::Fail(
                FailKind::Permanent,
                format!(
                    "FID {} is relative and this worker has no --fid-root to resolve it under \
                     (for Lustre, --fid-root MOUNT/.lustre/fid)",
                    r.fid
                ),
            )),
            Action::Archive => self.archive(lease, &path, &mut fence),
            Action::Restore => self.restore(lease, &path, &mut fence),
            Action::Remove => self.remove(lease, &path),
        };
        let outcome = match result {
            Ok(()) => Outcome::Succeeded,
            // The request's error is for people: its causes in words.
            Err(Step::Fail(kind, msg)) => {
                match self.queue.fail(lease, kind, &ferry::words::in_words(&msg)) {
                    Ok(state) => {
                        // `lost` is a catalog change too: the file says so.
                        if kind == FailKind::Lost
                            && let Ok(Some(entry)) = self.queue.catalog_entry(&r.fid)
                            && path.exists()
                        {
                            catalog::mirror(&path, &entry);
                        }
                        Outcome::Failed(state, msg)
                    }
                    Err(StoreError::StaleLease { .. }) => Outcome::Abandoned(msg),
                    // The catalog moved on (the file is no longer what `lost`
                    // can follow): the request fails all the same, and this
                    // worker goes on serving others.
                    Err(StoreError::CatalogConflict { .. }) if kind == FailKind::Lost => {
                        match self.queue.fail(lease, FailKind::Permanent, &msg) {
                            Ok(state) => Outcome::Failed(state, msg),
                            Err(StoreError::StaleLease { .. }) => Outcome::Abandoned(msg),
                            Err(e) => return Err(e),
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(Step::Lost(msg)) => Outcome::Abandoned(msg),
            Err(Step::Store(e)) => return Err(e),
        };
        let line = match &outcome {
            Outcome::Succeeded => "succeed".to_owned(),
            Outcome::Failed(state, msg) => format!("{state}: {msg}"),
            Outcome::Abandoned(msg) => format!("abandoned (lease lost): {msg}"),
        };
        eprintln!(
            "ferry: request {} {} {} attempt {}: {line}",
            r.id,
            r.action,
            path.display(),
            lease.attempt
        );
        Ok(outcome)
    }

    fn resolve(&self, fid: &str, path: Option<&Path>) -> PathBuf {
        if let Some(path) = path {
            return path.to_path_buf();
        }
        match &self.config.fid_root {
            Some(root) if !fid.starts_with('/') => root.join(fid),
            _ => PathBuf::from(fid),
        }
    }

    fn ack(&self, lease: &Lease, entry: Option<&CatalogEntry>) -> Result<(), Step> {
        self.queue.ack(lease, entry).map_err(Step::from_store)
    }

    fn archive(&self, lease: &Lease, path: &Path, fence: &mut LeaseFence<'_>) -> Result<(), Step> {
        let r = &lease.request;
        let previous = self.queue.catalog_entry(&r.fid).map_err(Step::Store)?;
        if previous
            .as_ref()
            .is_some_and(|p| p.state == CatalogState::Released)
        {
            // Released since it was queued: the archive has its data.
            return self.ack(lease, None);
        }
        let mut file = File::open(path).map_err(|e| io_fail(path, "open", e))?;
        let before = file.metadata().map_err(|e| io_fail(path, "stat", e))?;
        if !before.is_file() {
            return Err(Step::Fail(
                FailKind::Permanent,
                format!("{} is not a regular file", path.display()),
            ));
        }
        // A file whose copy was lost may be a stub: never archive its zeros
        // as if they were its data.
        if previous
            .as_ref()
            .is_some_and(|p| p.state == CatalogState::Lost)
            && before.len() > 0
            && rustix::fs::seek(&file, rustix::fs::SeekFrom::Data(0))
                == Err(rustix::io::Errno::NXIO)
        {
            return Err(Step::Fail(
                FailKind::Permanent,
                format!(
                    "{} holds no data (a released stub): restore it before archiving",
                    path.display()
                ),
            ));
        }
        rustix::fs::seek(&file, rustix::fs::SeekFrom::Start(0))
            .map_err(|e| io_fail(path, "seek", e.into()))?;
        let (size, mtime_ns, mode) = file_meta(&before);
        // Queued without a look at the file (the upcall): its archived copy
        // may be current already.
        if previous.as_ref().is_some_and(|p| {
            p.state == CatalogState::Archived && !catalog::changed_since(p, &before)
        }) {
            return self.ack(lease, None);
        }
        let object = object_id(&r.fid, r.id, lease.attempt);
        let meta = ObjectMeta {
            fid: r.fid.clone(),
            path: Some(path.to_path_buf()),
            size,
            mtime_ns,
            mode,
            checksum: String::new(),
            request: r.id.0,
            attempt: lease.attempt,
        };
        let checksum = self
            .archive
            .put(&object, &mut file, &meta, fence)
            .map_err(|e| fence.classify(path, "archive", e))?;
        let after = fs::metadata(path).map_err(|e| io_fail(path, "stat", e))?;
        let (ino, ctime_ns) = catalog::stamp_of(&after);
        if file_meta(&after).0 != size
            || file_meta(&after).1 != mtime_ns
            || (ino, ctime_ns) != catalog::stamp_of(&before)
        {
            let _ = self.archive.remove(&object);
            return Err(Step::Fail(
                FailKind::Retry,
                format!("{} changed while it was archived", path.display()),
            ));
        }
        let entry = CatalogEntry {
            fid: r.fid.clone(),
            path: Some(path.to_path_buf()),
            state: CatalogState::Archived,
            archive_id: r.archive_id,
            object: Some(object.clone()),
            size,
            mtime_ns,
            mode,
            checksum: Some(checksum),
            updated_ns: 0,
            ino,
            ctime_ns,
        };
        if let Err(e) = self.ack(lease, Some(&entry)) {
            // Not ours any more: our object is garbage, the catalog never
            // pointed at it.
            let _ = self.archive.remove(&object);
            return Err(e);
        }
        catalog::mirror(path, &entry);
        catalog::restamp(self.queue, &r.fid, CatalogState::Archived, path);
        // Earlier attempts of this request lost their lease (a worker
        // killed mid-copy, say): what they wrote is garbage no catalog entry
        // can point at any more, since this attempt's ack won. Bounded by the
        // policy's attempts.
        for attempt in 1..lease.attempt {
            if let Err(e) = self.archive.remove(&object_id(&r.fid, r.id, attempt)) {
                eprintln!(
                    "ferry: request {}: cannot remove what attempt {attempt} left in the \
                     archive ({e}); it is garbage",
                    r.id
                );
            }
        }
        // The copy this one replaces is not needed any more.
        if let Some(old) = previous.and_then(|p| p.object).filter(|o| *o != object) {
            let _ = self.archive.remove(&old);
        }
        Ok(())
    }

    fn restore(&self, lease: &Lease, path: &Path, fence: &mut LeaseFence<'_>) -> Result<(), Step> {
        let r = &lease.request;
        let entry = self.queue.catalog_entry(&r.fid).map_err(Step::Store)?;
        let Some(entry) = entry.filter(|e| e.object.is_some() && e.checksum.is_some()) else {
            return Err(Step::Fail(
                FailKind::Permanent,
                format!("{} has no archived copy", r.fid),
            ));
        };
        if entry.state == CatalogState::Lost {
            return Err(Step::Fail(
                FailKind::Permanent,
                format!("the archived copy of {} is lost", r.fid),
            ));
        }
        if entry.state != CatalogState::Released && path.exists() {
            // The data is in the file already: nothing to bring back.
            return self.ack(lease, None);
        }
        let object = entry.object.as_deref().expect("checked above");
        let temp = restore_temp(path, lease);
        let stub = fs::metadata(path).ok();
        // A new file only (the name is predictable and workers often run
        // as root): never one planted there, a link or a FIFO.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&temp)
            .map_err(|e| io_fail(&temp, "create", e))?;
        let mut out = BufWriter::with_capacity(super::archive::CHUNK, file);
        let got = self.archive.get(object, &mut out, fence);
        let file = out
            .into_inner()
            .map_err(|e| io_fail(&temp, "write", e.into_error()));
        let result = got
            .map_err(|e| fence.classify(path, "restore", e))
            .and_then(|sum| Ok((sum, file?)))
            .and_then(|(sum, file)| {
                let size = file.metadata().map_err(|e| io_fail(&temp, "stat", e))?.len();
                if Some(&sum) != entry.checksum.as_ref() || size != entry.size {
                    return Err(Step::Fail(
                        FailKind::Lost,
                        format!(
                            "checksum mismatch restoring {}: object {object} reads {sum} ({size} bytes), \
                             the catalog recorded {} ({} bytes); the archived copy is unusable",
                            path.display(),
                            entry.checksum.as_deref().unwrap_or("?"),
                            entry.size
                        ),
                    ));
                }
                // The stub must still be what release left: data written
                // into it since is newer than the archive and is kept.
                if let Some(stub) = &stub {
                    if catalog::changed_since(&entry, stub) {
                        return Err(Step::Fail(
                            FailKind::Permanent,
                            format!(
                                "{} was written to since it was released ({} bytes now): its \
                                 data is newer than the archived copy, which is not restored \
                                 over it",
                                path.display(),
                                stub.len()
                            ),
                        ));
                    }
                }
                finish_restore(&file, &temp, &entry, stub.as_ref())
                    .map_err(|e| io_fail(&temp, "finish", e))?;
                // Only the current attempt replaces the file.
                fence
                    .check(true)
                    .map_err(|e| fence.classify(path, "restore", e))?;
                fs::rename(&temp, path).map_err(|e| io_fail(path, "rename", e))?;
                if let Some(dir) = path.parent() {
                    File::open(dir)
                        .and_then(|d| d.sync_all())
                        .map_err(|e| io_fail(dir, "sync", e))?;
                }
                Ok(())
            });
        if let Err(e) = result {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        // The rename changed ctime after the mirror: the restored file's
        // stamp is taken now.
        let (ino, ctime_ns) = fs::symlink_metadata(path)
            .map(|m| catalog::stamp_of(&m))
            .map_err(|e| io_fail(path, "stat", e))?;
        let restored = CatalogEntry {
            state: CatalogState::Archived,
            path: Some(path.to_path_buf()),
            ino,
            ctime_ns,
            ..entry
        };
        self.ack(lease, Some(&restored))
    }

    fn remove(&self, lease: &Lease, path: &Path) -> Result<(), Step> {
        let r = &lease.request;
        let entry = self.queue.catalog_entry(&r.fid).map_err(Step::Store)?;
        let Some(entry) = entry else {
            return self.ack(lease, None);
        };
        if entry.state == CatalogState::Released {
            return Err(Step::Fail(
                FailKind::Permanent,
                format!(
                    "{} is released: its only data is the archived copy; restore it first",
                    path.display()
                ),
            ));
        }
        let object = entry.object.clone();
        let mut gone = CatalogEntry {
            state: CatalogState::Exists,
            object: None,
            checksum: None,
            ino: 0,
            ctime_ns: 0,
            ..entry
        };
        // The archived copy's size and times no longer describe anything:
        // the entry says what the file is now (it may have changed since,
        // its new archive canceled by this remove).
        if let Ok(meta) = fs::metadata(path) {
            (gone.size, gone.mtime_ns, gone.mode) = file_meta(&meta);
        }
        // Recorded first, fenced: a cancelled or expired attempt, or a
        // release that got there first (the catalog is no longer what it
        // read), stops here with the copy intact. Only then does the copy
        // go; a crash in between leaves an orphan object, never a catalog
        // entry pointing at nothing.
        self.ack(lease, Some(&gone))?;
        if path.exists() {
            catalog::mirror(path, &gone);
        }
        if let Some(object) = object
            && let Err(e) = self.archive.remove(&object)
        {
            eprintln!(
                "ferry: request {}: the archived copy {object} of {} is no longer recorded, \
                 but could not be deleted ({e}); remove it by hand",
                r.id,
                path.display()
            );
        }
        Ok(())
    }
}

/// `DIR/.NAME._ferry-hsm-REQUEST-ATTEMPT`: one per attempt, like objects.
fn restore_temp(path: &Path, lease: &Lease) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".{name}._ferry-hsm-{}-{}",
        lease.id(),
        lease.attempt
    ))
}

/// Mode, owner (where permitted), times and the catalog mirror on the
/// restored temporary, then a sync: the rename publishes a finished file.
fn finish_restore(
    file: &File,
    temp: &Path,
    entry: &CatalogEntry,
    stub: Option<&fs::Metadata>,
) -> io::Result<()> {
    if let Some(stub) = stub {
        // Root restores other users' files; others keep their own.
        let _ = rustix::fs::fchown(
            file,
            Some(rustix::fs::Uid::from_raw(stub.uid())),
            Some(rustix::fs::Gid::from_raw(stub.gid())),
        );
    }
    file.set_permissions(fs::Permissions::from_mode(entry.mode))?;
    let atime_ns = stub.map_or(entry.mtime_ns, |s| {
        s.atime() * 1_000_000_000 + s.atime_nsec()
    });
    catalog::set_times(file, atime_ns, entry.mtime_ns)?;
    let archived = CatalogEntry {
        state: CatalogState::Archived,
        ..entry.clone()
    };
    catalog::mirror(temp, &archived);
    file.sync_all()
}

/// How a step of an attempt ends when it does not succeed.
enum Step {
    Fail(FailKind, String),
    /// The lease is gone: drop the work, change nothing.
    Lost(String),
    Store(StoreError),
}

impl Step {
    fn from_store(e: StoreError) -> Step {
        match e {
            StoreError::StaleLease { .. } => Step::Lost(e.to_string()),
            // The catalog refused what this attempt found: fail the request,
            // not the worker.
            StoreError::CatalogConflict { .. } => Step::Fail(FailKind::Permanent, e.to_string()),
            e => Step::Store(e),
        }
    }
}

fn io_fail(path: &Path, what: &str, e: io::Error) -> Step {
    let kind = match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => FailKind::Permanent,
        _ => FailKind::Retry,
    };
    Step::Fail(kind, format!("{what} {}: {e}", path.display()))
}

/// Heartbeats the lease every third of its length while data moves.
struct LeaseFence<'a> {
    queue: &'a dyn RequestQueue,
    lease: &'a Lease,
    every: Duration,
    extend: Duration,
    last: Instant,
}

const LEASE_LOST: &str = "ferry: lease lost";

impl LeaseFence<'_> {
    /// An I/O error from a copy: the fence's own refusal means the lease
    /// is gone; anything else fails the attempt.
    fn classify(&self, path: &Path, what: &str, e: io::Error) -> Step {
        if e.get_ref()
            .is_some_and(|inner| inner.to_string().starts_with(LEASE_LOST))
        {
            return Step::Lost(e.to_string());
        }
        io_fail(path, what, e)
    }
}

impl Fence for LeaseFence<'_> {
    fn check(&mut self, before_commit: bool) -> io::Result<()> {
        if !before_commit && self.last.elapsed() < self.every {
            return Ok(());
        }
        match self.queue.heartbeat(self.lease, self.extend) {
            Ok(_) => {
                self.last = Instant::now();
                Ok(())
            }
            Err(e) => Err(io::Error::other(format!("{LEASE_LOST}: {e}"))),
        }
    }
}

#[cfg(test)]
mod regression;
#[cfg(test)]
mod tests;
