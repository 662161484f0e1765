//! `ferry serve`: the HTTP/JSON API on a Unix socket, the movers that run
//! `daemon` transfers, start-up recovery and shutdown.
//!
//! A request runs on tokio; everything that touches the store or the file
//! system runs on a blocking thread, and everything that touches the
//! caller's files (planning, copying) on a thread with the caller's file
//! credentials ([`creds::as_caller`]). Store writes of requests run as the
//! daemon; the movers' store writes go through connections the daemon
//! opened.
//!
//! Its parts: `daemon.rs` (the shared state and the movers), `routes.rs`
//! (the router and what every request goes through) and `handlers/`.

mod conns;
mod daemon;
mod handlers;
mod peer;
mod private;
mod request;
mod routes;
mod run_settings;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry::store::Store;
use tokio::net::UnixListener;
use tokio::sync::Semaphore;

use crate::creds;
use crate::error::ServeError;
use crate::metrics::Metrics;

use daemon::{Daemon, Job, mover};
pub use peer::PeerInfo;
use peer::PerUser;
use routes::router;

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

/// The daemon's store.
pub enum DaemonStore {
    /// A SQLite file of this node, opened privately (`private.rs`).
    File(PathBuf),
    /// A store that the daemons of many nodes share (PostgreSQL), opened by
    /// the caller. Its privacy is the database's: its roles and grants.
    /// Each daemon runs the transfers dispatched to it; one whose owner
    /// (a daemon elsewhere) let its lease expire is taken over by a daemon
    /// that can reach its paths ([`TAKEOVER_EVERY_MAX`]).
    Shared(Arc<dyn Store>),
}

/// How `ferry serve` runs.
pub struct Config {
    pub store: DaemonStore,
    pub socket: PathBuf,
    /// Transfers moved at once.
    pub workers: usize,
    /// Entries one transfer may hold ([`ENTRIES_PER_TRANSFER_MAX`] by
    /// default).
    pub entries_per_transfer_max: usize,
    /// Unfinished (created, dispatched or running) transfers one user
    /// (root aside) may hold ([`TRANSFERS_PER_USER_MAX`] by default).
    pub transfers_per_user_max: usize,
    /// Entries one user (root aside) may hold across its unfinished
    /// transfers in the daemon's store ([`ENTRIES_PER_USER_MAX`] by default).
    pub entries_per_user_max: usize,
    /// Bytes per second for all the daemon's transfers together, over and
    /// above each one's own `bwlimit`; `None`: none.
    pub bwlimit: Option<u64>,
}

/// The default bound on one transfer's entries: the daemon's store grows
/// by a few hundred bytes per entry, on root's disk.
pub const ENTRIES_PER_TRANSFER_MAX: usize = 1_000_000;
/// The default bound on one user's entries in the daemon's store, all its
/// unfinished transfers together.
pub const ENTRIES_PER_USER_MAX: usize = 4_000_000;
/// The default bound on one user's unfinished transfers.
pub const TRANSFERS_PER_USER_MAX: usize = 1024;

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

/// How often a read-only store is checked for room, with the daemon's own
/// credentials.
const SPACE_CHECK_EVERY: Duration = Duration::from_secs(2);

/// On a shared store, how often at most the daemon looks for transfers
/// whose owner's lease ran out (every lease, when the lease is shorter).
pub const TAKEOVER_EVERY_MAX: Duration = Duration::from_secs(30);

/// Runs the daemon until SIGTERM or SIGINT.
pub fn serve(config: Config) -> Result<(), ServeError> {
    let (sqlite, store): (Option<Arc<ferry::store::SqliteStore>>, Arc<dyn Store>) =
        match &config.store {
            DaemonStore::File(path) => {
                let sqlite = Arc::new(private::open_store(path, creds::daemon_uid())?);
                (Some(Arc::clone(&sqlite)), sqlite)
            }
            DaemonStore::Shared(store) => (None, Arc::clone(store)),
        };
    // Said before anything is written (a bad FERRY_OWNER_LEASE).
    let lease = ferry::owner::lease()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Watchers and long-polls hold a blocking thread each; requests
        // one each for a short while.
        .max_blocking_threads(REQUESTS_MAX + WATCHERS_MAX)
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    let result = runtime.block_on(async move {
        // Before the socket exists: a SIGTERM sent as soon as the daemon
        // answers must stop it cleanly, not kill it with the default action.
        let signals = Signals::register();
        let connections = conns::connections_max();
        let listener = conns::Guarded {
            listener: listen(&config.socket)?,
            all: Arc::new(Semaphore::new(connections)),
            all_max: connections,
            by_user: PerUser::new(conns::CONNECTIONS_PER_USER_MAX),
            idle: conns::idle_timeout(),
        };
        let workers = config.workers.clamp(1, WORKERS_MAX);
        let (tx, rx) = sync_channel::<Job>(QUEUE_MAX);
        let daemon = Arc::new(Daemon {
            sqlite,
            store,
            jobs: Mutex::new(Some(tx)),
            queued: AtomicUsize::new(0),
            moving: Mutex::new(HashMap::new()),
            unreachable_said: Mutex::new(HashSet::new()),
            shutdown: AtomicBool::new(false),
            metrics: Metrics::default(),
            requests: Arc::new(Semaphore::new(REQUESTS_MAX)),
            watchers: Arc::new(Semaphore::new(WATCHERS_MAX)),
            requests_by_user: PerUser::new(REQUESTS_PER_USER_MAX),
            watchers_by_user: PerUser::new(WATCHERS_PER_USER_MAX),
            uid: creds::daemon_uid(),
            entries_per_transfer_max: config.entries_per_transfer_max,
            transfers_per_user_max: config.transfers_per_user_max,
            entries_per_user_max: config.entries_per_user_max,
            shared_pace: config
                .bwlimit
                .filter(|&rate| rate > 0)
                .map(|rate| Arc::new(ferry::engine::throttle::SharedPace::new(rate))),
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
        if let Some(sqlite) = daemon.sqlite.clone() {
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
        // On a shared store, the transfers of daemons that died elsewhere
        // (their lease ran out) are taken over by whichever daemon reaches
        // their paths first: a compare-and-swap on the dead owner.
        if daemon.sqlite.is_none() {
            let daemon = Arc::clone(&daemon);
            tokio::spawn(async move {
                let mut every = tokio::time::interval(lease.min(TAKEOVER_EVERY_MAX));
                every.tick().await;
                loop {
                    every.tick().await;
                    let daemon = Arc::clone(&daemon);
                    let taken = tokio::task::spawn_blocking(move || daemon.recover()).await;
                    if let Ok(Err(e)) = taken {
                        eprintln!("ferry: looking for transfers to take over: {e}");
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
        let signal = signals.wait().await;
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

/// SIGTERM and SIGINT, caught from the moment they are registered.
struct Signals(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

impl Signals {
    fn register() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Signals(Some((term, int))),
            _ => Signals(None),
        }
    }

    /// Which one came first; never, when they could not be registered.
    async fn wait(self) -> &'static str {
        let Some((mut term, mut int)) = self.0 else {
            std::future::pending::<()>().await;
            unreachable!("pending never resolves");
        };
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
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
