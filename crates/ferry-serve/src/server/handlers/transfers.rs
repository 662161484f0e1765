//! The routes on transfers: create, list, status, add, and dispatch,
//! resume or cancel.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{ConnectInfo, Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ferry::engine::plan::{DestRule, Fidelity, XattrMode, plan_onto};
use ferry::model::ChecksumAlgo;
use ferry::{Kind, Preserve, Transfer, TransferOptions, TransferState};

use crate::api::{AddRequest, AddResponse, CreateRequest, RunRequest, SameCopyView, TransferView};
use crate::creds;
use crate::error::ApiError;
use crate::server::SOURCES_MAX;
use crate::server::daemon::Daemon;
use crate::server::peer::{PeerConn, PeerInfo, acting_caller};
use crate::server::request::{ApiJson, blocking, check_name, check_path};
use crate::server::run_settings::RunSettings;

pub(in crate::server) async fn create(
    State(daemon): State<Arc<Daemon>>,
    ConnectInfo(info): PeerConn,
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
        // Only a new transfer counts: re-attaching one is not another.
        let reattaching = request.name.as_deref().is_some_and(|name| {
            matches!(daemon.store.transfer_by_name(name), Ok(Some(t)) if Daemon::visible(&peer, &t))
        });
        if peer.caller.uid != 0 && !reattaching {
            let max = daemon.transfers_per_user_max;
            let unfinished = daemon
                .store
                .transfers()?
                .iter()
                .filter(|t| t.caller.as_ref().map(|c| c.uid) == Some(peer.caller.uid))
                .filter(|t| !t.state.is_terminal())
                .count();
            if unfinished >= max {
                return Err(ApiError::limit(format!(
                    "uid {} has {unfinished} unfinished transfers in the daemon, its bound \
                     (transfers per user: {max}): let some finish, or cancel them",
                    peer.caller.uid
                )));
            }
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

pub(in crate::server) async fn list(
    State(daemon): State<Arc<Daemon>>,
    ConnectInfo(info): PeerConn,
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

pub(in crate::server) async fn status(
    State(daemon): State<Arc<Daemon>>,
    ConnectInfo(info): PeerConn,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<TransferView>, ApiError> {
    let peer = info.peer()?;
    blocking(move || {
        let record = daemon.find(&peer, &name)?;
        Ok(Json(daemon.view(&record, false)?))
    })
    .await
}

pub(in crate::server) async fn add(
    State(daemon): State<Arc<Daemon>>,
    ConnectInfo(info): PeerConn,
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
        let (record, caller) = made_here(&daemon, &peer, &name)?;
        // A re-run finds the copy it repeats before cp's rule could nest
        // it into what that copy made.
        let same = if request.rerun {
            ferry::rerun::find_same_copy_among(
                daemon.store.as_ref(),
                None,
                &sources,
                &dest,
                &|t| t.id != record.id && t.kind == Kind::Daemon && Daemon::visible(&peer, t),
            )?
        } else {
            None
        };
        let same_copy = same.as_ref().map(|same| SameCopyView {
            name: same.record.name.clone(),
            id: same.record.id.0,
            state: same.record.state.as_str().into(),
        });
        let rule = match &same {
            Some(same)
                if matches!(
                    same.record.state,
                    TransferState::Completed | TransferState::Finalized
                ) =>
            {
                same.rule
            }
            // Not over: that transfer is the copy; nothing is added here.
            Some(_) => {
                return Ok(Json(AddResponse {
                    added: 0,
                    same_copy,
                }));
            }
            None => DestRule::Cp,
        };
        // cp's rules (lstat of the sources, the destination's type) with
        // the caller's credentials: what they cannot see, the daemon does
        // not see for them.
        let entries = creds::as_caller(&caller, || {
            plan_onto(
                &sources,
                &dest,
                request.recursive,
                fidelity,
                rule,
                &Default::default(),
            )
        })
        .map_err(|e| ApiError::internal(format!("cannot act as uid {}: {e}", caller.uid)))??;
        let max = daemon.entries_per_transfer_max;
        let held = daemon.store.entries(record.id)?.len();
        if held.saturating_add(entries.len()) > max {
            return Err(ApiError::limit(format!(
                "transfer {name} would hold {} entries, over the daemon's bound (entries per \
                 transfer: {max}); nothing was added: split it into several transfers",
                held.saturating_add(entries.len())
            )));
        }
        daemon.store.add_entries(record.id, &entries)?;
        Ok(Json(AddResponse {
            added: entries.len(),
            same_copy,
        }))
    })
    .await
}

pub(in crate::server) async fn dispatch(
    State(daemon): State<Arc<Daemon>>,
    ConnectInfo(info): PeerConn,
    UrlPath(name): UrlPath<String>,
    ApiJson(request): ApiJson<RunRequest>,
) -> Result<Response, ApiError> {
    start(daemon, info, name, request, false).await
}

pub(in crate::server) async fn resume(
    State(daemon): State<Arc<Daemon>>,
    ConnectInfo(info): PeerConn,
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

pub(in crate::server) async fn cancel(
    State(daemon): State<Arc<Daemon>>,
    ConnectInfo(info): PeerConn,
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

/// `GET /v1/transfers/{name}/verify`: its committed files read back with
/// the caller's credentials and compared with their stored checksums, as
/// `ferry verify NAME` does for a transfer of the user's store.
pub(in crate::server) async fn verify(
    State(daemon): State<Arc<Daemon>>,
    ConnectInfo(info): PeerConn,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<Vec<ferry::verify::Checked>>, ApiError> {
    let peer = info.peer()?;
    blocking(move || {
        let (record, caller) = made_here(&daemon, &peer, &name)?;
        let checked = creds::as_caller(&caller, || {
            ferry::verify::verify_transfer_where(daemon.store.as_ref(), &record, &|_| true)
        })
        .map_err(|e| ApiError::internal(format!("cannot act as uid {}: {e}", caller.uid)))??;
        Ok(Json(checked))
    })
    .await
}

/// The caller's transfer `name`, made through the daemon, and whose
/// credentials act on its files.
fn made_here(
    daemon: &Daemon,
    peer: &crate::creds::Peer,
    name: &str,
) -> Result<(ferry::model::TransferRecord, ferry::Caller), ApiError> {
    let record = daemon.find(peer, name)?;
    let recorded = record.caller.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "not_a_daemon_transfer",
            format!("transfer {name} was not made through the daemon"),
        )
    })?;
    let caller = acting_caller(peer, recorded);
    Ok((record, caller))
}
