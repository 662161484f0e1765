//! ferry moves files between storage tiers without ever losing track of a
//! transfer or showing a half-written file.
//!
//! # Brief overview
//!
//! - A [`Transfer`] is a named set of (source, destination) entries, moved as
//!   one unit. [`Transfer::create`] makes one (or re-attaches a dead owner's
//!   transfer of that name) with the entries [`plan`] lists by `cp`'s
//!   rules, [`Transfer::dispatch`] / [`Transfer::resume`] start the mover,
//!   [`Transfer::wait`] returns a [`RunReport`].
//! - The [`store`] holds every transfer, entry and event durably;
//!   [`store::SqliteStore`] is the embedded implementation of [`store::Store`].
//! - The [`engine`] copies data into `DEST._ferry-<id>` temporaries and runs
//!   the commit protocol; [`failpoint`] lets tests crash it at any step.
//! - [`events`] follows the store's ordered event log ([`events::Watch`])
//!   and rebuilds past states from it ([`events::snapshot_at`]).
//! - [`finalize`] finishes what a job left behind, across many stores,
//!   without the sources.
//! - The HSM coordinator (a durable queue of archive, restore and remove
//!   requests in the same store, workers, archive back ends) is the crate
//!   `ferry-hsm`, which stands above this one: nothing here imports it.
//! - [`model`] is the vocabulary, [`owner`] tells live owners from dead ones.
//!
//! ```no_run
//! use std::sync::Arc;
//! use ferry::{Kind, Preserve, Transfer, store::SqliteStore};
//!
//! let store = Arc::new(SqliteStore::open("ferry.db".as_ref())?);
//! let entries = ferry::plan(&["ckpt".into()], "/pfs/ckpt".as_ref(), true)?;
//! let mut transfer = Transfer::create(store, Some("ckpt-42"), Kind::Threads, Preserve::ALL, &entries)?;
//! transfer.dispatch(ferry::default_workers())?;
//! let report = transfer.wait()?;
//! println!("{} bytes copied, {:?}", report.bytes_copied, report.state);
//! # Ok::<(), ferry::Error>(())
//! ```

pub mod checksum;
pub mod conformance;
pub mod engine;
pub mod error;
pub mod events;
pub mod failpoint;
pub mod finalize;
mod heartbeat;
pub mod model;
pub mod owner;
pub mod rerun;
mod signals;
pub mod store;
mod transfer;
pub mod verify;
pub mod words;

pub use engine::plan::plan;
pub use engine::{ChunkHook, FileFailure, Progress, RunReport, temp_path};
pub use error::{Error, Result};
pub use model::{
    Caller, EntryKind, FileCounts, FileState, Kind, Preserve, TransferId, TransferState,
};
pub use transfer::{
    Canceller, PlanSink, RunEnded, RunSettings, Transfer, TransferOptions, abandon_stale_plans,
    default_store_path, default_workers, plan_in_batches, plans_of,
};
