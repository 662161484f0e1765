//! `ferry serve`: the HTTP/JSON API on a Unix socket, the movers that run
//! `daemon` transfers, start-up recovery and shutdown.
//!
//! A request runs on tokio; everything that touches the store or the file
//! system runs on a blocking thread, and everything that touches the
//! caller's files (planning, copying) on a thread with the caller's file
//! credentials ([`creds::as_caller`]). Store writes of requests run as the
//! daemon; the movers' store writes go through connections the daemon
//! opened.

use std::collections::HashMap;
use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::connect_info::Connected;
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequest, MatchedPath, Path as UrlPath, Query, Request, State,
};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use axum::{Json, Router};
use ferry::engine::plan::{Fidelity, XattrMode, plan_with};
use ferry::engine::skip::SkipRule;
use ferry::events::{TransferNames, Watch, WatchItem, is_terminal_event};
use ferry::model::{ChecksumAlgo, EntryRecord, Owner, TransferRecord};
use ferry::store::{Change, EventFilter, SqliteStore, Store};
use ferry::verify::Verify;
use ferry::{
    Caller, FileState, Kind, Preserve, Progress, Transfer, TransferId, TransferOptions,
    TransferState,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixListener;
use tokio::sync::Semaphore;

use crate::api::*;
use crate::creds::{self, Peer};
use crate::error::{ApiError, ServeError};
use crate::metrics::{Gauges, Metrics};

/// Requests handled at once; more are answered 503 at once.
pub const REQUESTS_MAX: usize = 256;
/// Open watch streams and long-polls at once.
pub const WATCHERS_MAX: usize = 128;
/// What one user (root aside) may hold of those: a quarter, so that one
/// user cannot lock the others out.
pub const REQUESTS_PER_USER_MAX: usize = REQUESTS_MAX / 4;
pub const WATCHERS_PER_USER_MAX: usize = WATCHERS_MAX / 4;
/// Dispatched transfers waiting for a mover.
pub const QUEUE_MAX: usize = 4096;
/// Sources in one `add`.
pub const SOURCES_MAX: usize = 4096;
/// Longest path accepted (Linux's `PATH_MAX`).
pub const PATH_BYTES_MAX: usize = 4096;
/// Longest transfer name.
pub const NAME_BYTES_MAX: usize = 255;
/// Movers at most (`--workers`).
pub const WORKERS_MAX: usize = 256;
/// After SIGTERM: in-flight requests get this long to finish…
pub const SHUTDOWN_REQUESTS: Duration = Duration::from_secs(5);
/// …and movers this long (from the signal) to stop at their next chunk and
/// commit what is durable. The daemon exits by then in any case: what is
/// left is resumed by the next daemon, as after a crash.
pub const SHUTDOWN_MOVERS: Duration = Duration::from_secs(10);
/// How often blocking watchers and long-polls look at the shutdown flag
/// and their client.
const WATCH_SLICE: Duration = Duration::from_millis(250);
/// Lines buffered per watch stream before the watcher waits for the client.
const WATCH_LINES_BUFFERED: usize = 64;

/// How `ferry serve` runs.
pub struct Config {
    pub store: PathBuf,
    pub socket: PathBuf,
    /// Transfers moved at once.
    pub workers: usize,
}

/// A transfer handed to a mover.
struct Job {
    transfer: Transfer,
    caller: Caller,
}

/// A transfer queued for or run by a mover.
struct Moving {
    interrupt: Arc<AtomicBool>,
    progress: Arc<Progress>,
}

struct Daemon {
    sqlite: Arc<SqliteStore>,
    store: Arc<dyn Store>,
    jobs: Mutex<Option<SyncSender<Job>>>,
    queued: AtomicUsize,
    /// Queued or running: never two movers for one transfer. The lock is
    /// held from the check to the recorded dispatch.
    moving: Mutex<HashMap<TransferId, Moving>>,
    shutdown: AtomicBool,
    metrics: Metrics,
    requests: Arc<Semaphore>,
    watchers: Arc<Semaphore>,
    requests_by_user: Arc<PerUser>,
    watchers_by_user: Arc<PerUser>,
    uid: u32,
}

/// The peer of a connection, read once when it connects.
#[derive(Clone)]
pub struct PeerInfo(Result<Peer, String>);

impl Connected<IncomingStream<'_, UnixListener>> for PeerInfo {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> PeerInfo {
        PeerInfo(creds::peer(stream.io()).map_err(|e| e.to_string()))
    }
}

impl PeerInfo {
    fn peer(&self) -> Result<Peer, ApiError> {
        self.0.clone().map_err(|e| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("cannot read the peer credentials of this connection: {e}"),
            )
        })
    }
}

/// The default socket: `$FERRY_SOCKET`, else `/run/ferry/ferry.sock` for
/// root, else `$XDG_RUNTIME_DIR/ferry.sock`, else `/run/ferry/ferry.sock`.
pub fn default_socket_path() -> PathBuf {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(socket) = var("FERRY_SOCKET") {
        return socket.into();
    }
    if creds::daemon_uid() != 0
        && let Some(dir) = var("XDG_RUNTIME_DIR")
    {
        return PathBuf::from(dir).join("ferry.sock");
    }
    PathBuf::from("/run/ferry/ferry.sock")
}

/// Runs the daemon until SIGTERM or SIGINT.
/// How often a read-only store is checked for room, with the daemon's own
/// credentials.
const SPACE_CHECK_EVERY: Duration = Duration::from_secs(2);

pub fn serve(config: Config) -> Result<(), ServeError> {
    let sqlite = Arc::new(SqliteStore::open(&config.store).map_err(ferry::Error::from)?);
    let store: Arc<dyn Store> = sqlite.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Watchers and long-polls hold a blocking thread each; requests
        // one each for a short while.
        .max_blocking_threads(REQUESTS_MAX + WATCHERS_MAX)
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    let result = runtime.block_on(async move {
        let listener = listen(&config.socket)?;
        let workers = config.workers.clamp(1, WORKERS_MAX);
        let (tx, rx) = sync_channel::<Job>(QUEUE_MAX);
        let daemon = Arc::new(Daemon {
            sqlite,
            store,
            jobs: Mutex::new(Some(tx)),
            queued: AtomicUsize::new(0),
            moving: Mutex::new(HashMap::new()),
            shutdown: AtomicBool::new(false),
            metrics: Metrics::default(),
            requests: Arc::new(Semaphore::new(REQUESTS_MAX)),
            watchers: Arc::new(Semaphore::new(WATCHERS_MAX)),
            requests_by_user: PerUser::new(REQUESTS_PER_USER_MAX),
            watchers_by_user: PerUser::new(WATCHERS_PER_USER_MAX),
            uid: creds::daemon_uid(),
        });
        let rx = Arc::new(Mutex::new(rx));
        let movers: Vec<_> = (0..workers)
            .map(|i| {
                let (daemon, rx) = (Arc::clone(&daemon), Arc::clone(&rx));
                std::thread::Builder::new()
                    .name(format!("ferry-mover-{i}"))
                    .spawn(move || mover(&daemon, &rx))
                    .map_err(ServeError::Runtime)
            })
            .collect::<Result<_, _>>()?;
        {
            let daemon = Arc::clone(&daemon);
            tokio::task::spawn_blocking(move || daemon.recover())
                .await
                .map_err(|e| ServeError::Runtime(std::io::Error::other(e)))??;
        }
        eprintln!(
            "ferry: serving store {} on {} with {workers} movers (pid {})",
            daemon.store.location().display(),
            config.socket.display(),
            std::process::id()
        );
        // A full store disk is most often met by a mover acting as its
        // caller, whose thread (and the probe it starts) can neither free
        // nor re-create the daemon's reserve. The daemon's own credentials
        // check again, every few seconds while the store is read-only.
        {
            let sqlite = Arc::clone(&daemon.sqlite);
            tokio::spawn(async move {
                let mut every = tokio::time::interval(SPACE_CHECK_EVERY);
                loop {
                    every.tick().await;
                    if sqlite.read_only().is_some() {
                        let sqlite = Arc::clone(&sqlite);
                        let _ = tokio::task::spawn_blocking(move || sqlite.check()).await;
                    }
                }
            });
        }
        let app = router(Arc::clone(&daemon));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<PeerInfo>(),
            )
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .into_future(),
        );
        let signal = wait_for_signal().await;
        let signalled = Instant::now();
        eprintln!("ferry: {signal}: no new work; stopping movers (at most {SHUTDOWN_MOVERS:?})");
        daemon.begin_shutdown();
        let _ = stop_tx.send(());
        let _ = tokio::time::timeout(SHUTDOWN_REQUESTS, server).await;
        let _ = std::fs::remove_file(&config.socket);
        tokio::task::spawn_blocking(move || {
            // Bounded: each mover stops at its next chunk; we do not wait
            // past the deadline (what is left is resumed next time).
            let deadline = signalled + SHUTDOWN_MOVERS;
            while Instant::now() < deadline && !movers.iter().all(|m| m.is_finished()) {
                std::thread::sleep(Duration::from_millis(10));
            }
            let left = movers.iter().filter(|m| !m.is_finished()).count();
            if left > 0 {
                eprintln!("ferry: {left} movers still busy at the deadline; exiting anyway");
            }
        })
        .await
        .map_err(|e| ServeError::Runtime(std::io::Error::other(e)))?;
        eprintln!("ferry: stopped");
        Ok(())
    });
    // A request still on a blocking thread (a long plan, say) does not
    // hold the exit past the bound.
    runtime.shutdown_timeout(Duration::from_millis(500));
    result
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        unreachable!("pending never resolves");
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Binds the socket (mode 0666: every local user may connect; each is
/// known by its peer credentials). A socket file nobody answers on is left
/// by a dead daemon and replaced; a live one is refused.
fn listen(socket: &Path) -> Result<UnixListener, ServeError> {
    let listen_err = |source| ServeError::Listen {
        socket: socket.to_path_buf(),
        source,
    };
    if socket.exists() {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Err(ServeError::AlreadyServing {
                socket: socket.to_path_buf(),
            });
        }
        std::fs::remove_file(socket).map_err(listen_err)?;
    }
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(listen_err)?;
    }
    let listener = UnixListener::bind(socket).map_err(listen_err)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666)).map_err(listen_err)?;
    Ok(listener)
}

/// A mover: runs queued transfers one at a time, each on a fresh thread
/// with its caller's file credentials.
fn mover(daemon: &Daemon, rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = rx.lock().expect("queue poisoned").recv();
        let Ok(Job {
            mut transfer,
            caller,
        }) = job
        else {
            return;
        };
        daemon.queued.fetch_sub(1, Ordering::Relaxed);
        let id = transfer.record().id;
        // Left `dispatched` at a shutdown: the next daemon resumes it. A
        // cancel while queued: nothing to run.
        if daemon.shutdown.load(Ordering::Relaxed)
            || transfer.interrupt_flag().load(Ordering::Relaxed)
        {
            daemon.moving.lock().expect("moving poisoned").remove(&id);
            continue;
        }
        let result = creds::as_caller(&caller, || transfer.run_dispatched());
        let mut moving = daemon.moving.lock().expect("moving poisoned");
        moving.remove(&id);
        let m = &daemon.metrics;
        match result {
            Ok(Ok(report)) => {
                m.bytes_moved
                    .fetch_add(report.bytes_copied, Ordering::Relaxed);
                m.files_moved
                    .fetch_add(report.files_committed, Ordering::Relaxed);
                m.file_errors
                    .fetch_add(report.failures.len() as u64, Ordering::Relaxed);
            }
            Ok(Err(e)) => fail(daemon, id, e.to_string()),
            Err(e) => fail(daemon, id, format!("cannot act as uid {}: {e}", caller.uid)),
        }
    }
}

/// A run that ended in an error rather than a report (its destination
/// directory cannot be listed, say): the daemon, its owner, lives on, so
/// unless a shutdown interrupted it the transfer is recorded `failed` with
/// the reason, for its user to see and resume; never left `running`.
fn fail(daemon: &Daemon, id: TransferId, message: String) {
    daemon.metrics.run_errors.fetch_add(1, Ordering::Relaxed);
    eprintln!("ferry: transfer {id}: {message}");
    if daemon.shutdown.load(Ordering::Relaxed) {
        return;
    }
    let _ = daemon.store.apply(&[Change::Transfer {
        id,
        to: TransferState::Failed,
        owner: None,
        context: serde_json::json!({ "error": message }),
    }]);
}

impl Daemon {
    /// Start-up: every daemon transfer that was dispatched or running
    /// belonged to a daemon that is gone; re-attach each (compare-and-swap
    /// on the dead owner) and queue it. A transfer only created is
    /// re-attached too, so that its user can dispatch it.
    /// The run options of a transfer's last dispatch or resume, from its
    /// `transfer.dispatched` event.
    fn last_settings(&self, record: &ferry::model::TransferRecord) -> RunSettings {
        let filter = ferry::store::EventFilter {
            transfer: Some(record.id),
            kind: Some("transfer.dispatched".into()),
            ..Default::default()
        };
        let last = self
            .store
            .events_since(0, &filter, usize::MAX >> 1)
            .ok()
            .and_then(|events| events.into_iter().last());
        let Some(event) = last else {
            return RunSettings::default();
        };
        let c = &event.context;
        let text = |key: &str| c[key].as_str().map(str::to_owned);
        let request = RunRequest {
            threads: c["workers"]
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| (1..=THREADS_MAX).contains(n)),
            skip: text("skip"),
            verify: text("verify"),
            check_space: c["check_space"].as_bool().unwrap_or(false),
            clean_orphans: c["clean_orphans"].as_bool().unwrap_or(false),
        };
        RunSettings::from(&request).unwrap_or_default()
    }

    fn recover(&self) -> Result<(), ServeError> {
        for record in self.store.transfers().map_err(ferry::Error::from)? {
            if record.kind != Kind::Daemon {
                continue;
            }
            match record.state {
                TransferState::Dispatched | TransferState::Running => {
                    let Some(caller) = record.caller.clone() else {
                        eprintln!(
                            "ferry: transfer {} (id {}) has no recorded caller; left alone",
                            record.name, record.id
                        );
                        continue;
                    };
                    let mut transfer = Transfer::open(Arc::clone(&self.store), &record.name)?;
                    // As it was last dispatched (the options are in that
                    // event); defaults if the log was compacted since.
                    let settings = self.last_settings(&record);
                    settings.apply(&mut transfer);
                    transfer.resume(settings.threads.into())?;
                    eprintln!(
                        "ferry: resuming transfer {} (id {})",
                        record.name, record.id
                    );
                    let mut moving = self.moving.lock().expect("moving poisoned");
                    self.enqueue(&mut moving, transfer, caller)
                        .map_err(|e| ServeError::Runtime(std::io::Error::other(e.message)))?;
                }
                TransferState::Created if record.owner != Owner::current() => {
                    if record.owner.liveness() == ferry::owner::Liveness::Alive {
                        return Err(ferry::Error::OwnerAlive {
                            name: record.name,
                            id: record.id,
                            host: record.owner.host,
                            pid: record.owner.pid,
                        }
                        .into());
                    }
                    self.store
                        .apply(&[Change::Reattach {
                            id: record.id,
                            from: record.owner.clone(),
                            owner: Owner::current(),
                        }])
                        .map_err(ferry::Error::from)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Hands a transfer whose dispatch or resume is recorded to a mover,
    /// under the `moving` lock the caller took before recording it (so no
    /// second dispatch or resume slips in between). The caller checked the
    /// queue has room (or this is start-up).
    fn enqueue(
        &self,
        moving: &mut HashMap<TransferId, Moving>,
        transfer: Transfer,
        caller: Caller,
    ) -> Result<(), ApiError> {
        let id = transfer.record().id;
        moving.insert(
            id,
            Moving {
                interrupt: transfer.interrupt_flag(),
                progress: transfer.progress(),
            },
        );
        self.queued.fetch_add(1, Ordering::Relaxed);
        let jobs = self.jobs.lock().expect("jobs poisoned");
        let sent = jobs
            .as_ref()
            .ok_or_else(|| ApiError::busy("the daemon is shutting down"))?
            .try_send(Job { transfer, caller });
        if sent.is_err() {
            // Recorded but not queued: it stays dispatched for the next
            // daemon (or a resume), like after a crash.
            self.queued.fetch_sub(1, Ordering::Relaxed);
            moving.remove(&id);
            return Err(ApiError::busy(format!(
                "the daemon's queue is full ({QUEUE_MAX} transfers); transfer {id} stays \
                 dispatched and is resumed when the daemon restarts, or resume it later"
            )));
        }
        Ok(())
    }

    fn begin_shutdown(&self) {
        self.shutdown.store(true, Ordering::Relaxed);
        // Movers stop at their next chunk, record nothing more than what is
        // durable, and the transfers stay `running` for the next daemon.
        for moving in self.moving.lock().expect("moving poisoned").values() {
            moving.interrupt.store(true, Ordering::Relaxed);
        }
        // Movers drain the queue (leaving those transfers dispatched) and end.
        self.jobs.lock().expect("jobs poisoned").take();
    }

    fn visible(peer: &Peer, record: &TransferRecord) -> bool {
        peer.caller.uid == 0 || record.caller.as_ref().map(|c| c.uid) == Some(peer.caller.uid)
    }

    /// The transfer `name` if `peer` may see it. Another user's transfer is
    /// "not found", exactly as a missing one: its existence is not told.
    fn find(&self, peer: &Peer, name: &str) -> Result<TransferRecord, ApiError> {
        match self.store.transfer_by_name(name)? {
            Some(record) if Daemon::visible(peer, &record) => Ok(record),
            _ => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "transfer_not_found",
                format!(
                    "no transfer named {name} of uid {} in the daemon's store: `GET /v1/transfers` \
                     (`ferry status --daemon`) lists yours",
                    peer.caller.uid
                ),
            )),
        }
    }

    fn view(&self, record: &TransferRecord, reattached: bool) -> Result<TransferView, ApiError> {
        let entries = self.store.entries(record.id)?;
        Ok(view(record, &entries, reattached))
    }

    /// Dispatch or resume, under the `moving` lock: never two movers.
    fn start(
        &self,
        peer: &Peer,
        name: &str,
        settings: &RunSettings,
        resume: bool,
    ) -> Result<TransferView, ApiError> {
        let record = self.find(peer, name)?;
        if record.kind != Kind::Daemon {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_a_daemon_transfer",
                format!(
                    "transfer {name} is a {} transfer: the process that made it moves it, not the \
                     daemon",
                    record.kind.as_str()
                ),
            ));
        }
        let recorded = record
            .caller
            .clone()
            .ok_or_else(|| ApiError::internal(format!("transfer {name} has no recorded caller")))?;
        let caller = acting_caller(peer, recorded);
        if self.shutdown.load(Ordering::Relaxed) {
            return Err(ApiError::busy("the daemon is shutting down"));
        }
        let mut moving = self.moving.lock().expect("moving poisoned");
        if moving.contains_key(&record.id) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "nothing_to_do",
                format!("transfer {name} (id {}) is already moving", record.id),
            ));
        }
        if self.queued.load(Ordering::Relaxed) >= QUEUE_MAX {
            return Err(ApiError::busy(format!(
                "the daemon's queue is full ({QUEUE_MAX} transfers): try again later"
            )));
        }
        let mut transfer = Transfer::open(Arc::clone(&self.store), name)?;
        settings.apply(&mut transfer);
        if resume {
            transfer.resume(settings.threads.into())?;
        } else {
            transfer.dispatch(settings.threads.into())?;
        }
        let mut record = transfer.record().clone();
        record.state = TransferState::Dispatched;
        self.enqueue(&mut moving, transfer, caller)?;
        drop(moving);
        self.view(&record, false)
    }

    fn gauges(&self) -> Result<Gauges, ApiError> {
        let mut counts: Vec<(&'static str, u64)> =
            TransferState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        for t in self.store.transfers()? {
            if let Some(c) = counts.iter_mut().find(|(s, _)| *s == t.state.as_str()) {
                c.1 += 1;
            }
        }
        let moving = self.moving.lock().expect("moving poisoned");
        let queued = self.queued.load(Ordering::Relaxed) as u64;
        Ok(Gauges {
            transfers_by_state: counts,
            read_only: self.sqlite.read_only().is_some(),
            bytes_moving: moving
                .values()
                .map(|m| m.progress.bytes_copied.load(Ordering::Relaxed))
                .sum(),
            transfers_queued: queued,
            transfers_moving: (moving.len() as u64).saturating_sub(queued),
        })
    }
}

fn view(record: &TransferRecord, entries: &[EntryRecord], reattached: bool) -> TransferView {
    let files: Vec<_> = entries
        .iter()
        .filter(|e| e.kind != ferry::EntryKind::Dir)
        .collect();
    let count = |state| files.iter().filter(|e| e.state == state).count() as u64;
    TransferView {
        id: record.id.0,
        name: record.name.clone(),
        kind: record.kind.as_str().into(),
        state: record.state.as_str().into(),
        uid: record.caller.as_ref().map(|c| c.uid),
        files: files.len() as u64,
        files_committed: count(FileState::Committed),
        files_failed: count(FileState::Failed),
        bytes: files.iter().map(|e| e.meta.size).sum(),
        bytes_durable: files
            .iter()
            .map(|e| match e.state {
                FileState::Copied | FileState::Committed => e.meta.size,
                _ => e.progress_bytes_durable,
            })
            .sum(),
        failures: entries
            .iter()
            .filter(|e| e.state == FileState::Failed)
            .map(|e| Failure {
                path: e.dest.to_string_lossy().into_owned(),
                error: e.error.clone().unwrap_or_default(),
            })
            .collect(),
        reattached,
    }
}

fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/v1/transfers", post(create).get(list))
        .route("/v1/transfers/{name}", get(status))
        .route("/v1/transfers/{name}/entries", post(add))
        .route("/v1/transfers/{name}/dispatch", post(dispatch))
        .route("/v1/transfers/{name}/resume", post(resume))
        .route("/v1/transfers/{name}/cancel", post(cancel))
        .route("/v1/transfers/{name}/wait", get(wait))
        .route("/v1/events", get(events))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no_such_route",
                "no such route: see openapi.yaml for the daemon's API",
            )
        })
        .layer(middleware::from_fn_with_state(Arc::clone(&daemon), guard))
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(daemon)
}

/// Every request: a bound on requests in flight, the non-root daemon's
/// single user, and latency metrics.
async fn guard(State(daemon): State<Arc<Daemon>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let response = match daemon.requests.clone().try_acquire_owned() {
        Err(_) => ApiError::busy(format!(
            "the daemon is busy: {REQUESTS_MAX} requests in flight; try again"
        ))
        .into_response(),
        Ok(_permit) => {
            let peer = request
                .extensions()
                .get::<ConnectInfo<PeerInfo>>()
                .map(|c| c.0.peer());
            match peer {
                Some(Ok(peer)) if daemon.uid != 0 && peer.caller.uid != daemon.uid => {
                    ApiError::new(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        format!(
                            "this daemon runs as uid {} and serves only that user (uid {} asked); \
                             a daemon for every user runs as root",
                            daemon.uid, peer.caller.uid
                        ),
                    )
                    .into_response()
                }
                Some(Err(e)) => e.into_response(),
                Some(Ok(peer)) => match daemon.requests_by_user.acquire(peer.caller.uid) {
                    None => ApiError::busy(format!(
                        "uid {} has {REQUESTS_PER_USER_MAX} requests in flight already; try \
                         again",
                        peer.caller.uid
                    ))
                    .into_response(),
                    Some(_mine) => next.run(request).await,
                },
                None => next.run(request).await,
            }
        }
    };
    daemon
        .metrics
        .observe(&route, response.status().as_u16(), started.elapsed());
    response
}

/// A JSON request body: refused with a clear 4xx when it is too large, not
/// JSON, of the wrong shape or has unknown fields. An empty body is `{}`.
struct ApiJson<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(request, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("the request body is larger than {BODY_BYTES_MAX} bytes"),
                )
            } else {
                ApiError::new(e.status(), "bad_request", e.body_text())
            }
        })?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(bytes).map(ApiJson).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_json",
                format!("the request body is not what this route takes: {e}"),
            )
        })
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("the request's thread failed: {e}")))?
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty()
        || name.len() > NAME_BYTES_MAX
        || name.chars().any(|c| c.is_control() || c == '/')
    {
        return Err(ApiError::bad_request(format!(
            "invalid transfer name {name:?}: 1 to {NAME_BYTES_MAX} bytes, no '/' and no control \
             characters"
        )));
    }
    Ok(())
}

fn check_path(what: &str, path: &str) -> Result<PathBuf, ApiError> {
    if path.contains('\0') {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            format!("{what} {path:?} contains a NUL byte, which no path may contain"),
        ));
    }
    if path.len() > PATH_BYTES_MAX {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            format!("{what} is longer than {PATH_BYTES_MAX} bytes"),
        ));
    }
    if !path.starts_with('/') {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            format!(
                "{what} {path:?} is relative: the daemon does not know your working directory; \
                 send absolute paths"
            ),
        ));
    }
    Ok(PathBuf::from(path))
}

type Caller_ = ConnectInfo<PeerInfo>;

async fn create(
    State(daemon): State<Arc<Daemon>>,
    ConnectInfo(info): Caller_,
    ApiJson(request): ApiJson<CreateRequest>,
) -> Result<Response, ApiError> {
    let peer = info.peer()?;
    if let Some(name) = &request.name {
        check_name(name)?;
    }
    let checksum = match request.checksum.as_deref().unwrap_or("xxh3") {
        "none" => None,
        algo => Some(ChecksumAlgo::parse(algo).ok_or_else(|| {
            ApiError::bad_request(format!(
                "checksum must be xxh3, blake3 or none ({algo:?} given)"
            ))
        })?),
    };
    let view = blocking(move || {
        let taken = || {
            ApiError::new(
                StatusCode::CONFLICT,
                "name_in_use",
                format!(
                    "the name {} is taken in the daemon's store: choose another name",
                    request.name.as_deref().unwrap_or_default()
                ),
            )
        };
        if let Some(name) = &request.name
            && let Some(existing) = daemon.store.transfer_by_name(name)?
            && (!Daemon::visible(&peer, &existing) || existing.kind != Kind::Daemon)
        {
            return Err(taken());
        }
        let preserve = if request.preserve {
            Preserve::ALL
        } else {
            Preserve::NONE
        };
        let options = TransferOptions {
            name: request.name.clone(),
            kind: Kind::Daemon,
            preserve,
            checksum,
            caller: Some(peer.caller.clone()),
        };
        let transfer = Transfer::create_with(Arc::clone(&daemon.store), &options, &[])?;
        if transfer.reattached() && !Daemon::visible(&peer, transfer.record()) {
            return Err(taken());
        }
        daemon.view(transfer.record(), transfer.reattached())
    })
    .await?;
    let status = if view.reattached {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(view)).into_response())
}

async fn list(
    State(daemon): State<Arc<Daemon>>,
    ConnectInfo(info): Caller_,
) -> Result<Json<Vec<TransferView>>, ApiError> {
    let peer = info.peer()?;
    blocking(move || {
        let mut out = Vec::new();
        for record in daemon.store.transfers()? {
            if Daemon::visible(&peer, &record) {
                out.push(daemon.view(&record, false)?);
            }
        }
        Ok(Json(out))
    })
    .await
}

async fn status(
    State(daemon): State<Arc<Daemon>>,
    ConnectInfo(info): Caller_,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<TransferView>, ApiError> {
    let peer = info.peer()?;
    blocking(move || {
        let record = daemon.find(&peer, &name)?;
        Ok(Json(daemon.view(&record, false)?))
    })
    .await
}

async fn add(
    State(daemon): State<Arc<Daemon>>,
    ConnectInfo(info): Caller_,
    UrlPath(name): UrlPath<String>,
    ApiJson(request): ApiJson<AddRequest>,
) -> Result<Json<AddResponse>, ApiError> {
    let peer = info.peer()?;
    if request.sources.is_empty() || request.sources.len() > SOURCES_MAX {
        return Err(ApiError::bad_request(format!(
            "give 1 to {SOURCES_MAX} sources ({} given)",
            request.sources.len()
        )));
    }
    let sources = request
        .sources
        .iter()
        .map(|s| check_path("source", s))
        .collect::<Result<Vec<_>, _>>()?;
    let dest = check_path("destination", &request.dest)?;
    let xattrs = request.xattrs.as_deref().unwrap_or("none");
    let fidelity = Fidelity {
        hard_links: request.hard_links,
        xattrs: XattrMode::parse(xattrs).ok_or_else(|| {
            ApiError::bad_request(format!(
                "xattrs must be all, none or no-lustre ({xattrs:?} given)"
            ))
        })?,
    };
    blocking(move || {
        let record = daemon.find(&peer, &name)?;
        let recorded = record.caller.clone().ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "not_a_daemon_transfer",
                format!("transfer {name} was not made through the daemon"),
            )
        })?;
        let caller = acting_caller(&peer, recorded);
        // cp's rules (lstat of the sources, the destination's type) with
        // the caller's credentials: what they cannot see, the daemon does
        // not see for them.
        let entries = creds::as_caller(&caller, || {
            plan_with(&sources, &dest, request.recursive, fidelity)
        })
        .map_err(|e| ApiError::internal(format!("cannot act as uid {}: {e}", caller.uid)))??;
        daemon.store.add_entries(record.id, &entries)?;
        Ok(Json(AddResponse {
            added: entries.len(),
        }))
    })
    .await
}

/// A dispatch's or resume's options, checked.
struct RunSettings {
    threads: u16,
    skip: SkipRule,
    verify: Verify,
    check_space: bool,
    clean_orphans: bool,
}

impl Default for RunSettings {
    fn default() -> RunSettings {
        RunSettings {
            threads: THREADS_DEFAULT,
            skip: SkipRule::Never,
            verify: Verify::None,
            check_space: false,
            clean_orphans: false,
        }
    }
}

impl RunSettings {
    fn from(request: &RunRequest) -> Result<RunSettings, ApiError> {
        let threads = match request.threads {
            None => THREADS_DEFAULT,
            Some(n @ 1..=THREADS_MAX) => n,
            Some(n) => {
                return Err(ApiError::bad_request(format!(
                    "threads must be 1 to {THREADS_MAX} ({n} given)"
                )));
            }
        };
        let skip = request.skip.as_deref().unwrap_or("never");
        let verify = request.verify.as_deref().unwrap_or("none");
        Ok(RunSettings {
            threads,
            skip: SkipRule::parse(skip).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "skip must be never, exists, size, mtime or checksum ({skip:?} given)"
                ))
            })?,
            verify: Verify::parse(verify).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "verify must be none, copied or full ({verify:?} given)"
                ))
            })?,
            check_space: request.check_space,
            clean_orphans: request.clean_orphans,
        })
    }

    fn apply(&self, transfer: &mut Transfer) {
        transfer.set_skip(self.skip);
        transfer.set_verify(self.verify);
        transfer.set_check_space(self.check_space);
        transfer.set_clean_orphans(self.clean_orphans);
    }
}

async fn dispatch(
    State(daemon): State<Arc<Daemon>>,
    ConnectInfo(info): Caller_,
    UrlPath(name): UrlPath<String>,
    ApiJson(request): ApiJson<RunRequest>,
) -> Result<Response, ApiError> {
    start(daemon, info, name, request, false).await
}

async fn resume(
    State(daemon): State<Arc<Daemon>>,
    ConnectInfo(info): Caller_,
    UrlPath(name): UrlPath<String>,
    ApiJson(request): ApiJson<RunRequest>,
) -> Result<Response, ApiError> {
    start(daemon, info, name, request, true).await
}

/// Dispatch or resume: the same checks, the same queue.
async fn start(
    daemon: Arc<Daemon>,
    info: PeerInfo,
    name: String,
    request: RunRequest,
    resume: bool,
) -> Result<Response, ApiError> {
    let peer = info.peer()?;
    let settings = RunSettings::from(&request)?;
    let view = blocking(move || daemon.start(&peer, &name, &settings, resume)).await?;
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

async fn cancel(
    State(daemon): State<Arc<Daemon>>,
    ConnectInfo(info): Caller_,
    UrlPath(name): UrlPath<String>,
    ApiJson(_): ApiJson<RunRequest>,
) -> Result<Json<TransferView>, ApiError> {
    let peer = info.peer()?;
    blocking(move || {
        let record = daemon.find(&peer, &name)?;
        let transfer = Transfer::open(Arc::clone(&daemon.store), &name)?;
        transfer.cancel()?;
        // The store refuses the mover's next write; the flag stops it at
        // its next chunk already.
        if let Some(moving) = daemon
            .moving
            .lock()
            .expect("moving poisoned")
            .get(&record.id)
        {
            moving.interrupt.store(true, Ordering::Relaxed);
        }
        let record = daemon.find(&peer, &name)?;
        Ok(Json(daemon.view(&record, false)?))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    timeout_ms: Option<u64>,
}

async fn wait(
    State(daemon): State<Arc<Daemon>>,
    ConnectInfo(info): Caller_,
    UrlPath(name): UrlPath<String>,
    Query(query): Query<WaitQuery>,
) -> Result<Json<WaitResponse>, ApiError> {
    let peer = info.peer()?;
    let timeout =
        Duration::from_millis(query.timeout_ms.unwrap_or(WAIT_MS_DEFAULT).min(WAIT_MS_MAX));
    let _permit = daemon
        .watchers
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::busy(format!("{WATCHERS_MAX} watchers and waiters already")))?;
    let _mine = daemon.watchers_by_user.acquire_or_busy(peer.caller.uid)?;
    blocking(move || {
        let deadline = Instant::now() + timeout;
        // The cursor first, then the state: a change in between is in the
        // log after the cursor.
        let since = daemon.store.last_seq()?;
        let record = daemon.find(&peer, &name)?;
        let answer = |state: TransferState, done| WaitResponse {
            name: record.name.clone(),
            id: record.id.0,
            state: state.as_str().into(),
            done,
        };
        if record.state.is_terminal() {
            return Ok(Json(answer(record.state, true)));
        }
        let filter = EventFilter {
            transfer: Some(record.id),
            kind: Some("transfer".into()),
            ..EventFilter::default()
        };
        let mut watch = Watch::new(daemon.store.as_ref(), since, filter)?;
        let mut state = record.state;
        while Instant::now() < deadline && !daemon.shutdown.load(Ordering::Relaxed) {
            let slice = WATCH_SLICE.min(deadline.saturating_duration_since(Instant::now()));
            if let Some(WatchItem::Event(event)) = watch.next_timeout(Some(slice))? {
                if let Some(s) = event.transfer_state() {
                    state = s;
                }
                if is_terminal_event(&event, record.id) {
                    return Ok(Json(answer(state, true)));
                }
            }
        }
        Ok(Json(answer(state, false)))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    since: Option<u64>,
    #[serde(default)]
    from_now: bool,
    transfer: Option<String>,
}

/// Which events a user's watch shows: those of its transfers, learned from
/// `transfer.created` (its context carries the uid), else looked up once
/// per transfer; and the store's own events (read-only and back), which
/// concern every user. HSM request events are root's only.
struct Visibility {
    peer: Peer,
    known: HashMap<TransferId, bool>,
}

/// Transfers remembered per watch stream before the memory is reset.
const VISIBILITY_REMEMBERED_MAX: usize = 100_000;

impl Visibility {
    fn shows(&mut self, store: &dyn Store, event: &ferry::model::Event) -> bool {
        let uid = self.peer.caller.uid;
        if uid == 0 {
            return true;
        }
        let Some(transfer) = event.transfer else {
            return event.request.is_none();
        };
        if self.known.len() >= VISIBILITY_REMEMBERED_MAX {
            self.known.clear();
        }
        if event.name == "transfer.created" {
            let mine = event.context["uid"].as_u64() == Some(uid.into());
            self.known.insert(transfer, mine);
        }
        let peer = &self.peer;
        *self.known.entry(transfer).or_insert_with(
            || matches!(store.transfer(transfer), Ok(Some(r)) if Daemon::visible(peer, &r)),
        )
    }
}

async fn events(
    State(daemon): State<Arc<Daemon>>,
    ConnectInfo(info): Caller_,
    Query(query): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let peer = info.peer()?;
    let permit = daemon
        .watchers
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::busy(format!("{WATCHERS_MAX} watchers and waiters already")))?;
    let mine = daemon.watchers_by_user.acquire_or_busy(peer.caller.uid)?;
    let permit = (permit, mine);
    let setup_daemon = Arc::clone(&daemon);
    let setup_peer = peer.clone();
    let watch = blocking(move || {
        let daemon = setup_daemon;
        let since = match (query.since, query.from_now) {
            (Some(_), true) => {
                return Err(ApiError::bad_request("give since or from_now, not both"));
            }
            (Some(seq), false) => seq,
            (None, true) => daemon.store.last_seq()?,
            (None, false) => 0,
        };
        let transfer = match &query.transfer {
            Some(name) => Some(daemon.find(&setup_peer, name)?.id),
            None => None,
        };
        let filter = EventFilter {
            transfer,
            ..EventFilter::default()
        };
        Ok(Watch::new(daemon.store.as_ref(), since, filter)?)
    })
    .await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(WATCH_LINES_BUFFERED);
    std::thread::Builder::new()
        .name("ferry-watch".into())
        .spawn(move || {
            let _permit = permit;
            let mut watch = watch;
            let mut names = TransferNames::default();
            let mut visibility = Visibility {
                peer,
                known: HashMap::new(),
            };
            let store = daemon.store.as_ref();
            while !daemon.shutdown.load(Ordering::Relaxed) && !tx.is_closed() {
                let line = match watch.next_timeout(Some(WATCH_SLICE)) {
                    Ok(None) => continue,
                    Ok(Some(WatchItem::CaughtUp(seq))) => serde_json::json!({ "bookmark": seq }),
                    Ok(Some(WatchItem::Event(event))) => {
                        if !visibility.shows(store, &event) {
                            continue;
                        }
                        names.json_line(store, &event)
                    }
                    Err(e) => {
                        let e = ApiError::from(e);
                        serde_json::json!({ "error": e.message, "kind": e.kind })
                    }
                };
                let is_error = line.get("error").is_some();
                if tx.blocking_send(Bytes::from(format!("{line}\n"))).is_err() || is_error {
                    return;
                }
            }
        })
        .map_err(|e| ApiError::busy(format!("cannot start a watcher: {e}")))?;
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok::<_, Infallible>(line), rx))
    });
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/jsonl")],
        Body::from_stream(stream),
    )
        .into_response())
}

async fn metrics(State(daemon): State<Arc<Daemon>>) -> Result<Response, ApiError> {
    let d = Arc::clone(&daemon);
    let gauges = blocking(move || d.gauges()).await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        daemon.metrics.render(&gauges),
    )
        .into_response())
}

/// Per-user counts under a bound (root is not counted: it may need every
/// slot to repair things). A permit gives its slot back when dropped.
struct PerUser {
    max: usize,
    held: Mutex<HashMap<u32, usize>>,
}

struct UserPermit {
    of: Arc<PerUser>,
    uid: u32,
}

impl PerUser {
    fn new(max: usize) -> Arc<PerUser> {
        Arc::new(PerUser {
            max,
            held: Mutex::new(HashMap::new()),
        })
    }

    fn acquire(self: &Arc<PerUser>, uid: u32) -> Option<UserPermit> {
        if uid != 0 {
            let mut held = self.held.lock().expect("per-user counts poisoned");
            let n = held.entry(uid).or_insert(0);
            if *n >= self.max {
                return None;
            }
            *n += 1;
        }
        Some(UserPermit {
            of: Arc::clone(self),
            uid,
        })
    }

    fn acquire_or_busy(self: &Arc<PerUser>, uid: u32) -> Result<UserPermit, ApiError> {
        self.acquire(uid).ok_or_else(|| {
            ApiError::busy(format!(
                "uid {uid} holds {} watchers and waiters already",
                self.max
            ))
        })
    }
}

impl Drop for UserPermit {
    fn drop(&mut self) {
        if self.uid == 0 {
            return;
        }
        let mut held = self.of.held.lock().expect("per-user counts poisoned");
        if let Some(n) = held.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.uid);
            }
        }
    }
}

/// Whose credentials a request acts with on a transfer: the requester's
/// own, as they are now (groups gained or lost since the transfer was
/// made count), when it is the transfer's user; the recorded ones when root
/// acts on another user's transfer (its data stays that user's).
fn acting_caller(peer: &Peer, recorded: Caller) -> Caller {
    if peer.caller.uid == recorded.uid {
        peer.caller.clone()
    } else {
        recorded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_user_cannot_take_every_slot() {
        let slots = PerUser::new(2);
        let a1 = slots.acquire(1000).unwrap();
        let _a2 = slots.acquire(1000).unwrap();
        assert!(
            slots.acquire(1000).is_none(),
            "a user holds at most its share"
        );
        assert!(slots.acquire(1001).is_some(), "another user still gets in");
        assert!(
            (0..10).all(|_| slots.acquire(0).is_some()),
            "root is not counted"
        );
        drop(a1);
        assert!(
            slots.acquire(1000).is_some(),
            "a slot comes back when released"
        );
    }

    #[test]
    fn paths_must_be_absolute_without_nul_and_not_too_long() {
        assert!(check_path("source", "/a/b").is_ok());
        let e = check_path("source", "/a\0b").unwrap_err();
        assert_eq!(
            (e.status, e.kind),
            (StatusCode::BAD_REQUEST, "invalid_path")
        );
        assert!(e.message.contains("NUL"));
        assert!(
            check_path("source", "a/b")
                .unwrap_err()
                .message
                .contains("relative")
        );
        let long = format!("/{}", "x".repeat(PATH_BYTES_MAX));
        assert!(check_path("source", &long).is_err());
    }

    #[test]
    fn names_are_bounded_and_printable() {
        assert!(check_name("ckpt-42").is_ok());
        for bad in ["", "a/b", "a\nb", &"x".repeat(NAME_BYTES_MAX + 1)] {
            assert_eq!(check_name(bad).unwrap_err().kind, "bad_request", "{bad:?}");
        }
    }
}
