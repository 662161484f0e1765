//! Connections: counted per user and in all, and closed when idle, so that
//! one user's idle connections cannot take the descriptors that the
//! movers, the store and the other users need.
//!
//! Past a cap the connection gets a 503 with `Retry-After` written at once
//! and is closed; nothing is queued. A connection with no request in
//! flight must start one within the idle timeout, whether it sends nothing
//! or trickles a request head byte by byte (one bound covers the idle and
//! the header-read timeouts).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use super::peer::{ConnState, PeerInfo, PerUser, UserPermit};
use crate::creds;
use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;

/// Connections at once, at most (fewer when the descriptor limit is low:
/// see [`connections_max`]).
pub const CONNECTIONS_MAX: usize = 1024;
/// What one user (root aside) may hold of them.
pub const CONNECTIONS_PER_USER_MAX: usize = 128;
/// Descriptors kept for the movers (sources, temporaries, directories)
/// and the store, whatever the connections take.
pub const DESCRIPTORS_RESERVED: u64 = 1024;
/// A connection with no request in flight is closed after this long.
pub const IDLE_DEFAULT: Duration = Duration::from_secs(30);
/// Tests shorten the idle timeout (milliseconds).
pub const IDLE_ENV: &str = "FERRY_SERVE_IDLE_MS";
/// What a refused connection is told to wait, in seconds.
const RETRY_AFTER_S: u64 = 1;

/// Raises the soft descriptor limit to the hard one, and returns how many
/// connections fit beside [`DESCRIPTORS_RESERVED`].
pub(super) fn connections_max() -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        // Best effort: without it the daemon serves fewer connections.
        let _ = setrlimit(Resource::Nofile, limit);
    }
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let room = now.saturating_sub(DESCRIPTORS_RESERVED).max(16);
    CONNECTIONS_MAX.min(usize::try_from(room).unwrap_or(usize::MAX))
}

pub(super) fn idle_timeout() -> Duration {
    std::env::var(IDLE_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map_or(IDLE_DEFAULT, Duration::from_millis)
}

/// The daemon's socket, with the caps.
pub(super) struct Guarded {
    pub(super) listener: UnixListener,
    pub(super) all: Arc<Semaphore>,
    pub(super) all_max: usize,
    pub(super) by_user: Arc<PerUser>,
    pub(super) idle: Duration,
}

pub(super) struct GuardedStream {
    io: UnixStream,
    state: Arc<ConnState>,
    idle: Duration,
    sleep: Pin<Box<Sleep>>,
    _slots: (OwnedSemaphorePermit, Option<UserPermit>),
}

/// Writes a 503 on a connection we will not serve, without waiting: it
/// fits in the socket's buffer, and a client that does not read loses it.
fn refuse(io: &UnixStream, message: &str) {
    let body = serde_json::json!({ "error": message, "kind": "busy" }).to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: {RETRY_AFTER_S}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // Straight to the descriptor: tokio's try_write knows no readiness yet
    // on a stream it has never polled.
    let _ = rustix::io::write(io, answer.as_bytes());
}

impl Listener for Guarded {
    type Io = GuardedStream;
    type Addr = PeerInfo;

    async fn accept(&mut self) -> (GuardedStream, PeerInfo) {
        loop {
            let io = match self.listener.accept().await {
                Ok((io, _)) => io,
                Err(e) => {
                    // EMFILE and friends: give the movers a moment to
                    // close descriptors rather than spin.
                    eprintln!("ferry: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let peer = creds::peer(&io).map_err(|e| e.to_string());
            let Ok(all) = Arc::clone(&self.all).try_acquire_owned() else {
                refuse(
                    &io,
                    &format!(
                        "the daemon holds {} connections, its maximum: close idle ones or try \
                         again",
                        self.all_max
                    ),
                );
                continue;
            };
            let mine = match &peer {
                Ok(p) => match self.by_user.acquire(p.caller.uid) {
                    Some(permit) => Some(permit),
                    None => {
                        refuse(
                            &io,
                            &format!(
                                "uid {} holds {CONNECTIONS_PER_USER_MAX} connections to the \
                                 daemon already, its maximum: close idle ones or try again",
                                p.caller.uid
                            ),
                        );
                        continue;
                    }
                },
                Err(_) => None,
            };
            let state = Arc::new(ConnState {
                in_flight: AtomicUsize::new(0),
                idle_since: Mutex::new(Instant::now()),
            });
            let info = PeerInfo::new(peer, Arc::clone(&state));
            let stream = GuardedStream {
                io,
                state,
                idle: self.idle,
                sleep: Box::pin(tokio::time::sleep(self.idle)),
                _slots: (all, mine),
            };
            return (stream, info);
        }
    }

    fn local_addr(&self) -> io::Result<PeerInfo> {
        Err(io::Error::other("a Unix socket's peer is per connection"))
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Poll::Ready(r) = Pin::new(&mut this.io).poll_read(cx, buf) {
            return Poll::Ready(r);
        }
        if this.state.in_flight.load(Ordering::SeqCst) == 0 {
            let since = *this
                .state
                .idle_since
                .lock()
                .expect("connection state poisoned");
            let deadline = since + this.idle;
            if this.sleep.deadline() != deadline {
                this.sleep.as_mut().reset(deadline);
            }
            if this.sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no request within the idle timeout",
                )));
            }
        }
        Poll::Pending
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl Connected<IncomingStream<'_, Guarded>> for PeerInfo {
    fn connect_info(stream: IncomingStream<'_, Guarded>) -> PeerInfo {
        stream.remote_addr().clone()
    }
}
