//! The routes on transfers: create, list, status, add, and dispatch,
//! resume or cancel.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{ConnectInfo, Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ferry::engine::plan::{DestRule, Fidelity, XattrMode, plan_bounded};
use ferry::model::ChecksumAlgo;
use ferry::{Kind, Preserve, Transfer, TransferOptions, TransferState};

use crate::api::{
    AddRequest, AddResponse, CancelRequest, CreateRequest, LIST_FAILURES_MAX, LimitRequest,
    PAGE_MAX, PageQuery, RunRequest, SameCopyView, TransferView,
};
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
        daemon.view(
            transfer.record(),
            transfer.reattached(),
            None,
            LIST_FAILURES_MAX,
        )
    })
    .await?;
    let status = if view.reattached {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(view)).into_response())
}

/// The caller's transfers (all, for root) by id, a page at a time.
pub(in crate::server) async fn list(
    State(daemon): State<Arc<Daemon>>,
    ConnectInfo(info): PeerConn,
    Query(page): Query<PageQuery>,
) -> Result<Json<Vec<TransferView>>, ApiError> {
    let peer = info.peer()?;
    let (limit, after) = page_of(&page, i64::MAX as u64)?;
    blocking(move || {
        let mut out = Vec::new();
        for record in daemon.store.transfers()? {
            if out.len() >= limit {
                break;
            }
            if Daemon::visible(&peer, &record)
                && after.is_none_or(|after| record.id.0 > after as i64)
            {
                out.push(daemon.view(&record, false, None, LIST_FAILURES_MAX)?);
            }
        }
        Ok(Json(out))
    })
    .await
}

/// A transfer's counts, and a page of its failures.
pub(in crate::server) async fn status(
    State(daemon): State<Arc<Daemon>>,
    ConnectInfo(info): PeerConn,
    UrlPath(name): UrlPath<String>,
    Query(page): Query<PageQuery>,
) -> Result<Json<TransferView>, ApiError> {
    let peer = info.peer()?;
    let (limit, after) = page_of(&page, u32::MAX.into())?;
    blocking(move || {
        let record = daemon.find(&peer, &name)?;
        Ok(Json(daemon.view(&record, false, after, limit)?))
    })
    .await
}

/// A page's size ([`PAGE_MAX`] unless smaller is asked for) and cursor,
/// which is at most `after_max` (the largest id or index there can be).
fn page_of(page: &PageQuery, after_max: u64) -> Result<(usize, Option<u64>), ApiError> {
    let limit = match page.limit.unwrap_or(PAGE_MAX) {
        limit @ 1..=PAGE_MAX => limit as usize,
        limit => {
            return Err(ApiError::bad_request(format!(
                "limit must be 1 to {PAGE_MAX} ({limit} given): page with after"
            )));
        }
    };
    match page.after {
        Some(after) if after > after_max => Err(ApiError::bad_request(format!(
            "after must be 0 to {after_max} ({after} given): the last id or index of a page"
        ))),
        after => Ok((limit, after)),
    }
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
        // Planned no further than what the bounds leave room for: a
        // request for a whole file system stops at the bound, not at the
        // end of the walk.
        let held = daemon.store.entry_tally(record.id)?.entries;
        let held_by_user = daemon.store.unfinished_entries_of_caller(caller.uid)?;
        let room_in_transfer = daemon
            .entries_per_transfer_max
            .saturating_sub(held as usize);
        let room_for_user = match caller.uid {
            0 => usize::MAX,
            _ => daemon
                .entries_per_user_max
                .saturating_sub(held_by_user as usize),
        };
        let room = room_in_transfer.min(room_for_user);
        let planned = creds::as_caller(&caller, || {
            plan_bounded(
                &sources,
                &dest,
                request.recursive,
                fidelity,
                rule,
                &ferry::engine::filter::Filter::default(),
                room,
            )
        })
        .map_err(|e| ApiError::internal(format!("cannot act as uid {}: {e}", caller.uid)))??;
        let Some(entries) = planned else {
            return Err(if room == room_in_transfer {
                ApiError::limit(format!(
                    "transfer {name} holds {held} entries and this adds more than {room}, over \
                     the daemon's bound (entries per transfer: {}); nothing was added: split it \
                     into several transfers",
                    daemon.entries_per_transfer_max
                ))
            } else {
                ApiError::limit(format!(
                    "uid {} holds {held_by_user} entries in its unfinished transfers in the \
                     daemon and this adds more than {room}, over the daemon's bound (entries per \
                     user: {}); nothing was added: let some finish, or cancel them",
                    caller.uid, daemon.entries_per_user_max
                ))
            });
        };
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
    ApiJson(_): ApiJson<CancelRequest>,
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
        Ok(Json(daemon.view(
            &record,
            false,
            None,
            LIST_FAILURES_MAX,
        )?))
    })
    .await
}

/// `POST /v1/transfers/{name}/limit`: a new bandwidth limit, recorded as a
/// `transfer.limited` event, which a running mover looks for every quarter
/// second and a resume starts with, as `ferry limit NAME RATE` does for a
/// transfer of the user's store.
pub(in crate::server) async fn limit(
    State(daemon): State<Arc<Daemon>>,
    ConnectInfo(info): PeerConn,
    UrlPath(name): UrlPath<String>,
    ApiJson(request): ApiJson<LimitRequest>,
) -> Result<Json<TransferView>, ApiError> {
    let peer = info.peer()?;
    blocking(move || {
        let record = daemon.find(&peer, &name)?;
        // Over and done: no mover will read the rate again.
        if matches!(
            record.state,
            TransferState::Completed | TransferState::Finalized
        ) {
            return Err(ferry::Error::NothingToDo {
                name: record.name.clone(),
                id: record.id,
                state: record.state,
                action: "limit",
            }
            .into());
        }
        let transfer = Transfer::open(Arc::clone(&daemon.store), &name)?;
        transfer.limit((request.bytes_per_second > 0).then_some(request.bytes_per_second))?;
        let record = daemon.find(&peer, &name)?;
        Ok(Json(daemon.view(
            &record,
            false,
            None,
            LIST_FAILURES_MAX,
        )?))
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
