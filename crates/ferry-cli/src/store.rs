//! Which store a command works on: a node's embedded SQLite file (a path),
//! or a PostgreSQL database that many nodes share (`postgres://…`). Every
//! command goes through [`OpenedStore::open`]; only the command about a
//! store file itself (`store check`) needs SQLite.

use std::path::Path;
use std::sync::Arc;

use ferry::store::{SqliteStore, Store};
use ferry_hsm::RequestQueue;
use ferry_postgres::PgStore;

use crate::exit::Exit;

/// Whether opening may create a SQLite store, and where.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// The store and its directory (the default store under
    /// `$XDG_STATE_HOME`, for a command that writes).
    WithDirectory,
    /// The store file, in a directory that exists (an explicit `--store`).
    FileOnly,
    /// Nothing: the store must exist (a command that reads, or acts on
    /// transfers a store holds).
    Nothing,
}

pub enum OpenedStore {
    Sqlite(Arc<SqliteStore>),
    Postgres(Arc<PgStore>),
}

impl OpenedStore {
    /// `location` is a PostgreSQL URL, or else a path to a SQLite store.
    pub fn open(location: &Path, create: Create) -> Result<OpenedStore, Exit> {
        let opened = match location
            .to_str()
            .filter(|l| ferry_postgres::is_postgres_url(l))
        {
            Some(url) => PgStore::open(url).map(|s| OpenedStore::Postgres(Arc::new(s))),
            None => match create {
                Create::WithDirectory => SqliteStore::open(location),
                Create::FileOnly => SqliteStore::open_in_existing_dir(location),
                Create::Nothing => SqliteStore::open_existing(location),
            }
            .map(|s| OpenedStore::Sqlite(Arc::new(s))),
        };
        opened.map_err(|e| Exit::from(ferry::Error::from(e)))
    }

    /// Whether `target` names a store (a URL, or a ferry SQLite file)
    /// rather than a transfer or a destination path.
    pub fn is_store(target: &Path) -> bool {
        target.to_str().is_some_and(ferry_postgres::is_postgres_url)
            || ferry::finalize::is_ferry_store(target)
    }

    pub fn store(&self) -> Arc<dyn Store> {
        match self {
            OpenedStore::Sqlite(s) => s.clone(),
            OpenedStore::Postgres(s) => s.clone(),
        }
    }

    pub fn queue(&self) -> &dyn RequestQueue {
        match self {
            OpenedStore::Sqlite(s) => s.as_ref(),
            OpenedStore::Postgres(s) => s.as_ref(),
        }
    }

    /// The SQLite store, for a command about the store's own file.
    pub fn sqlite(&self, command: &str) -> Result<&SqliteStore, Exit> {
        match self {
            OpenedStore::Sqlite(s) => Ok(s),
            OpenedStore::Postgres(s) => Err(sqlite_only(&s.location(), command)),
        }
    }
}

fn sqlite_only(location: &Path, command: &str) -> Exit {
    Exit::from(ferry::Error::from(ferry::store::StoreError::NotAStore {
        path: location.to_path_buf(),
        detail: format!(
            "`ferry {command}` works on a SQLite store on this node, and this is a PostgreSQL \
             database: give --store a path"
        ),
    }))
}
