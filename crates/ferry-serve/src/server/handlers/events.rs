//! The routes that watch: a long-poll on one transfer, the event stream,
//! and the metrics.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path as UrlPath, Query, State};
use axum::response::{IntoResponse, Response};
use ferry::events::{TransferNames, Watch, WatchItem, is_terminal_event};
use ferry::store::{EventFilter, Store};
use ferry::{TransferId, TransferState};
use serde::Deserialize;

use crate::api::{WAIT_MS_DEFAULT, WAIT_MS_MAX, WaitResponse};
use crate::creds::Peer;
use crate::error::ApiError;
use crate::server::daemon::Daemon;
use crate::server::peer::PeerConn;
use crate::server::request::blocking;
use crate::server::{WATCH_LINES_BUFFERED, WATCH_SLICE, WATCHERS_MAX};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::server) struct WaitQuery {
    #[serde(default, deserialize_with = "crate::api::wire::whole_query")]
    timeout_ms: Option<u64>,
}

pub(in crate::server) async fn wait(
    State(daemon): State<Arc<Daemon>>,
    ConnectInfo(info): PeerConn,
    UrlPath(name): UrlPath<String>,
    Query(query): Query<WaitQuery>,
) -> Result<Json<WaitResponse>, ApiError> {
    let peer = info.peer()?;
    let timeout_ms = query.timeout_ms.unwrap_or(WAIT_MS_DEFAULT);
    if timeout_ms > WAIT_MS_MAX {
        return Err(ApiError::bad_request(format!(
            "timeout_ms must be 0 to {WAIT_MS_MAX} ({timeout_ms} given): a long-poll is at most \
             a minute; ask again for longer"
        )));
    }
    let timeout = Duration::from_millis(timeout_ms);
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
pub(in crate::server) struct EventsQuery {
    #[serde(default, deserialize_with = "crate::api::wire::whole_query")]
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

pub(in crate::server) async fn events(
    State(daemon): State<Arc<Daemon>>,
    ConnectInfo(info): PeerConn,
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

pub(in crate::server) async fn metrics(
    State(daemon): State<Arc<Daemon>>,
) -> Result<Response, ApiError> {
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
