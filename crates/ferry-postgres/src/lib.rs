//! ferry's state store on PostgreSQL: the same [`Store`] and
//! [`RequestQueue`] as the embedded SQLite store, for sites whose workers
//! and daemons on many nodes share one queue and one event log.
//!
//! A store is one PostgreSQL schema (`?schema=NAME` in the URL, default
//! `ferry`), created and migrated on first open.
//!
//! **Invariants** (a change here could break them silently):
//! - Every write goes through [`PgStore::write`]: one transaction whose
//!   events are appended by [`Tx::event`] and numbered at commit, under the
//!   `event_counter` row lock, which is taken last (after every row lock of
//!   the transaction, so it cannot be part of a deadlock) and held until
//!   commit. So event numbers are assigned in commit order and a reader's
//!   snapshot always holds a prefix of the log: a watcher never skips an
//!   event. [`EventNumbering::Sequence`] (a plain sequence, the usual
//!   mistake) exists only so the tests can show the skip it causes.
//! - `pg_notify('ferry_events', schema)` is sent in every transaction that
//!   appends an event; PostgreSQL delivers it at commit, so a listener
//!   woken by it finds the events.

mod conn;
pub mod items;
mod queue;
mod schema;
mod store;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferry::store::StoreError;
use postgres::NoTls;

use conn::{CachedTx, Db, Manager};

pub use schema::SCHEMA_VERSION;

/// The LISTEN/NOTIFY channel; the payload is the store's schema.
pub const CHANNEL: &str = "ferry_events";

/// The schema a URL without `schema=` uses.
pub const DEFAULT_SCHEMA: &str = "ferry";

/// Connections one process keeps open at most; a caller waits for one
/// at most [`CONNECTION_WAIT`].
const POOL_SIZE: u32 = 8;
const CONNECTION_WAIT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keepalive: a server or a reader gone silent (a partition, a
/// firewall's idle timeout) is noticed in about a minute, not two hours.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_DEFAULT: Duration = Duration::from_secs(2 * 60 * 60);
/// The server ends a session idle this long inside a transaction.
const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(60);

/// How often [`PgStore::write`] runs a transaction that PostgreSQL aborted
/// as a deadlock victim or a serialization failure before it gives up.
const WRITE_ATTEMPTS: u32 = 5;

/// How events get their sequence numbers.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventNumbering {
    /// At commit, under the counter's row lock: commit order. The only
    /// correct choice.
    Ordered,
    /// From a sequence as each event is inserted: numbers become visible
    /// out of order. For the test that shows why [`EventNumbering::Ordered`]
    /// exists; never for real use.
    Sequence,
}

type Pool = r2d2::Pool<Manager>;
pub(crate) type Conn = r2d2::PooledConnection<Manager>;

pub struct PgStore {
    /// The URL without its password, for messages.
    location: PathBuf,
    schema: String,
    /// Connects with `search_path` set to the schema; event readers open
    /// their own connection from it (a LISTEN needs one to itself).
    config: postgres::Config,
    pool: Pool,
    numbering: EventNumbering,
    /// Batches enqueued one by one after all (see `queue/batch.rs`).
    enqueue_fallbacks: AtomicU64,
    /// Transactions run again as a deadlock victim or serialization
    /// failure (see [`PgStore::write`]).
    retried_writes: AtomicU64,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// Whether `location` names a PostgreSQL store rather than a file.
pub fn is_postgres_url(location: &str) -> bool {
    location.starts_with("postgres://") || location.starts_with("postgresql://")
}

impl PgStore {
    /// Opens the store at `url` (`postgres://USER@HOST[:PORT]/DB[?schema=NAME&…]`,
    /// any libpq URL parameter the `postgres` crate understands), creating
    /// and migrating its schema when needed. Refuses a schema that holds
    /// other tables, or one a newer ferry migrated, without touching it.
    pub fn open(url: &str) -> Result<PgStore, StoreError> {
        PgStore::open_with(url, EventNumbering::Ordered)
    }

    #[doc(hidden)]
    pub fn open_with(url: &str, numbering: EventNumbering) -> Result<PgStore, StoreError> {
        let (url, schema) = split_schema(url)?;
        let mut config = postgres::Config::from_str(&url).map_err(|e| StoreError::Unreachable {
            path: PathBuf::from(redacted(&url)),
            detail: format!("not a PostgreSQL URL ({e})"),
        })?;
        let location = PathBuf::from(describe(&config, &schema));
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_keepalives_idle() == KEEPALIVE_DEFAULT {
            config.keepalives_idle(KEEPALIVE_IDLE);
        }
        // After any options the URL gives, so that ours win: every
        // connection (pooled or a reader's own) lives in the store's schema;
        // a commit is durable before its events are visible (a server crash
        // must not hand the same numbers out again); and a writer stopped
        // mid-transaction (Ctrl-Z, a partition) is cut off rather than
        // holding the event counter, which every writer needs, for ever.
        let ours = format!(
            "-c search_path={schema} -c synchronous_commit=on \
             -c idle_in_transaction_session_timeout={}s",
            IDLE_IN_TRANSACTION.as_secs()
        );
        let options = match config.get_options() {
            Some(given) => format!("{given} {ours}"),
            None => ours,
        };
        config.options(&options);
        if config.get_application_name().is_none() {
            config.application_name("ferry");
        }
        // One direct connection first: an unreachable server fails at once
        // with its own message, rather than after the pool's wait.
        let mut client = config.connect(NoTls).map_err(|e| StoreError::Unreachable {
            path: location.clone(),
            detail: error_text(&e),
        })?;
        migrate(&mut client, &schema, &location)?;
        drop(client);
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(0))
            .connection_timeout(CONNECTION_WAIT)
            .build_unchecked(Manager {
                config: config.clone(),
            });
        Ok(PgStore {
            location,
            schema,
            config,
            pool,
            numbering,
            enqueue_fallbacks: AtomicU64::new(0),
            retried_writes: AtomicU64::new(0),
        })
    }

    /// Tests only: how many batches this handle enqueued one request at a
    /// time after all (a concurrent enqueue raced the batch's insert).
    #[doc(hidden)]
    pub fn enqueue_fallbacks(&self) -> u64 {
        self.enqueue_fallbacks.load(Ordering::Relaxed)
    }

    /// How many transactions this handle ran again (deadlock victims,
    /// serialization failures, statements a schema change invalidated).
    #[doc(hidden)]
    pub fn retried_writes(&self) -> u64 {
        self.retried_writes.load(Ordering::Relaxed)
    }

    pub(crate) fn count_enqueue_fallback(&self) {
        self.enqueue_fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    /// The PostgreSQL schema this store lives in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    pub(crate) fn location_path(&self) -> PathBuf {
        self.location.clone()
    }

    pub(crate) fn config(&self) -> &postgres::Config {
        &self.config
    }

    pub(crate) fn conn(&self) -> Result<Conn, StoreError> {
        self.pool.get().map_err(|e| {
            // The pool keeps only "db error" of why it could not connect:
            // one direct try says what the server says.
            let detail = match self.config.connect(NoTls) {
                Err(e) => error_text(&e),
                Ok(_) => format!(
                    "all {POOL_SIZE} connections of this process stayed busy for \
                     {CONNECTION_WAIT:?} ({e})"
                ),
            };
            StoreError::Unreachable {
                path: self.location.clone(),
                detail,
            }
        })
    }

    pub(crate) fn err(&self, e: postgres::Error) -> StoreError {
        server_err(&self.location, e)
    }

    /// Runs `f` in one transaction, appends the events it queued with
    /// [`Tx::event`], and commits. A deadlock victim or serialization
    /// failure is run again from the start, at most [`WRITE_ATTEMPTS`]
    /// times; `f` must therefore keep no state between calls.
    pub(crate) fn write<T>(
        &self,
        mut f: impl FnMut(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn()?;
        let mut attempt = 1;
        loop {
            match self.write_once(&mut conn, &mut f) {
                Err(e) if attempt < WRITE_ATTEMPTS && is_retryable(&e) => {
                    attempt += 1;
                    self.retried_writes.fetch_add(1, Ordering::Relaxed);
                }
                other => return other,
            }
        }
    }

    fn write_once<T>(
        &self,
        conn: &mut Conn,
        f: &mut impl FnMut(&mut Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // Read committed whatever the server's default: the row locks and
        // the counter give the guarantees, a serializable default would
        // only add failures.
        let conn = &mut **conn;
        let tx = CachedTx {
            tx: conn
                .client
                .build_transaction()
                .isolation_level(postgres::IsolationLevel::ReadCommitted)
                .start()
                .map_err(|e| self.err(e))?,
            statements: &mut conn.statements,
        };
        let mut tx = Tx {
            tx,
            store: self,
            events: Vec::new(),
            appended: false,
        };
        let value = f(&mut tx)?;
        let Tx {
            mut tx,
            events,
            appended,
            ..
        } = tx;
        if !events.is_empty() {
            // Last, after every row lock `f` took: see the crate's invariants.
            // One statement: the counter, the events numbered from it, and
            // the notification.
            append_events(&mut tx, &events, &self.schema).map_err(|e| self.err(e))?;
        } else if appended {
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &self.schema])
                .map_err(|e| self.err(e))?;
        }
        ferry::failpoint::hit(ferry::failpoint::CommitStep::StoreCommit).map_err(|e| {
            StoreError::Server {
                path: self.location.clone(),
                source: Box::new(e),
            }
        })?;
        if let Some(hook) = BEFORE_COMMIT.with(|hook| hook.borrow_mut().take()) {
            hook();
        }
        tx.tx.commit().map_err(|e| self.err(e))?;
        Ok(value)
    }
}

thread_local! {
    /// See [`PgStore::holding_commit`].
    static BEFORE_COMMIT: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
        const { std::cell::RefCell::new(None) };
}

impl PgStore {
    /// Tests only: runs `op` on this thread, and the first transaction it
    /// is about to commit (its events numbered, so in
    /// [`EventNumbering::Ordered`] holding the counter lock) first calls
    /// `before_commit`, which may block to hold the transaction open.
    #[doc(hidden)]
    pub fn holding_commit<T>(before_commit: impl FnOnce() + 'static, op: impl FnOnce() -> T) -> T {
        BEFORE_COMMIT.with(|hook| *hook.borrow_mut() = Some(Box::new(before_commit)));
        let value = op();
        BEFORE_COMMIT.with(|hook| hook.borrow_mut().take());
        value
    }
}

/// One write transaction (see [`PgStore::write`]).
pub(crate) struct Tx<'a> {
    pub(crate) tx: CachedTx<'a>,
    store: &'a PgStore,
    /// Numbered and inserted at commit ([`EventNumbering::Ordered`]).
    events: Vec<NewEvent>,
    /// Some event was inserted already ([`EventNumbering::Sequence`]).
    appended: bool,
}

/// An event of the transaction, before it has its number.
pub(crate) struct NewEvent {
    pub(crate) time_ns: i64,
    pub(crate) transfer: Option<i64>,
    pub(crate) entry: Option<i64>,
    pub(crate) request: Option<i64>,
    pub(crate) name: String,
    pub(crate) context: String,
}

impl Tx<'_> {
    /// Appends an event to the log, in this transaction.
    pub(crate) fn event(&mut self, event: NewEvent) -> Result<(), StoreError> {
        match self.store.numbering {
            EventNumbering::Ordered => self.events.push(event),
            EventNumbering::Sequence => {
                let seq: i64 = self
                    .tx
                    .query_one("SELECT nextval('events_unordered_seq')", &[])
                    .map_err(|e| self.store.err(e))?
                    .get(0);
                insert_events(&mut self.tx, seq, std::slice::from_ref(&event))
                    .map_err(|e| self.store.err(e))?;
                self.appended = true;
            }
        }
        Ok(())
    }

    pub(crate) fn err(&self, e: postgres::Error) -> StoreError {
        self.store.err(e)
    }
}

/// The events' columns, as arrays for `unnest`.
struct EventColumns<'e> {
    times: Vec<i64>,
    transfers: Vec<Option<i64>>,
    entries: Vec<Option<i64>>,
    requests: Vec<Option<i64>>,
    names: Vec<&'e str>,
    contexts: Vec<&'e str>,
}

impl<'e> EventColumns<'e> {
    fn new(events: &'e [NewEvent]) -> EventColumns<'e> {
        EventColumns {
            times: events.iter().map(|e| e.time_ns).collect(),
            transfers: events.iter().map(|e| e.transfer).collect(),
            entries: events.iter().map(|e| e.entry).collect(),
            requests: events.iter().map(|e| e.request).collect(),
            names: events.iter().map(|e| e.name.as_str()).collect(),
            contexts: events.iter().map(|e| e.context.as_str()).collect(),
        }
    }
}

/// [`EventNumbering::Ordered`] at commit, in one statement: takes the
/// counter's row lock and advances it by `events.len()`, inserts `events`
/// numbered in order after the counter's old value, and notifies
/// listeners of `schema`.
fn append_events(
    tx: &mut CachedTx<'_>,
    events: &[NewEvent],
    schema: &str,
) -> Result<(), postgres::Error> {
    let n = events.len() as i64;
    let c = EventColumns::new(events);
    tx.execute(
        "WITH counter AS (
            UPDATE event_counter SET last_seq = last_seq + $1 RETURNING last_seq
         ), appended AS (
            INSERT INTO events (seq, time_ns, transfer_id, entry_idx, request_id, name, context)
            SELECT counter.last_seq - $1 + u.n, u.t, u.tr, u.en, u.rq, u.na, u.co
            FROM counter, unnest($2::BIGINT[], $3::BIGINT[], $4::BIGINT[], $5::BIGINT[],
                                 $6::TEXT[], $7::TEXT[]) WITH ORDINALITY AS u(t, tr, en, rq, na, co, n)
         )
         SELECT pg_notify($8, $9)",
        &[
            &n,
            &c.times,
            &c.transfers,
            &c.entries,
            &c.requests,
            &c.names,
            &c.contexts,
            &CHANNEL,
            &schema,
        ],
    )?;
    Ok(())
}

/// Inserts `events` numbered from `first` on, in one statement.
fn insert_events(
    tx: &mut CachedTx<'_>,
    first: i64,
    events: &[NewEvent],
) -> Result<(), postgres::Error> {
    let seqs: Vec<i64> = (first..first + events.len() as i64).collect();
    let c = EventColumns::new(events);
    tx.execute(
        "INSERT INTO events (seq, time_ns, transfer_id, entry_idx, request_id, name, context)
         SELECT * FROM unnest($1::BIGINT[], $2::BIGINT[], $3::BIGINT[], $4::BIGINT[],
                              $5::BIGINT[], $6::TEXT[], $7::TEXT[])",
        &[
            &seqs,
            &c.times,
            &c.transfers,
            &c.entries,
            &c.requests,
            &c.names,
            &c.contexts,
        ],
    )?;
    Ok(())
}

/// Creates the schema when missing and applies the migrations it lacks,
/// under an advisory lock so that processes opening at once take turns.
fn migrate(
    client: &mut postgres::Client,
    schema: &str,
    location: &std::path::Path,
) -> Result<(), StoreError> {
    let err = |e| server_err(location, e);
    let mut tx = client.transaction().map_err(err)?;
    // 'FRRY': the same number the SQLite store uses as its application id.
    tx.execute("SELECT pg_advisory_xact_lock(1179800153)", &[])
        .map_err(err)?;
    // Only when missing: CREATE SCHEMA IF NOT EXISTS needs the CREATE
    // privilege on the database even when the schema exists, and a store's
    // owner need not have it.
    let exists = !tx
        .query("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
        .map_err(err)?
        .is_empty();
    if !exists {
        tx.batch_execute(&format!("CREATE SCHEMA {schema}"))
            .map_err(err)?;
    }
    let tables: Vec<String> = tx
        .query(
            "SELECT table_name::TEXT FROM information_schema.tables WHERE table_schema = $1",
            &[&schema],
        )
        .map_err(err)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let not_ours = |detail: String| StoreError::NotAStore {
        path: location.to_path_buf(),
        detail,
    };
    let found: i64 = if tables.iter().any(|t| t == "schema_version") {
        let version: i64 = tx
            .query_one("SELECT version FROM schema_version", &[])
            .and_then(|row| row.try_get(0))
            .map_err(|e| {
                not_ours(format!(
                    "its schema_version table is not ferry's ({}); give another ?schema=",
                    error_text(&e)
                ))
            })?;
        let missing: Vec<&str> = ["event_counter", "meta", "transfers", "events"]
            .into_iter()
            .filter(|t| version > 0 && !tables.iter().any(|have| have == t))
            .collect();
        if !missing.is_empty() {
            return Err(not_ours(format!(
                "schema {schema} says it is at version {version} but has no {}; give another \
                 ?schema=",
                missing.join(", ")
            )));
        }
        version
    } else if tables.is_empty() {
        tx.batch_execute("CREATE TABLE schema_version (version BIGINT NOT NULL)")
            .map_err(err)?;
        tx.execute("INSERT INTO schema_version VALUES (0)", &[])
            .map_err(err)?;
        0
    } else {
        return Err(not_ours(format!(
            "schema {schema} holds other tables ({}); give another ?schema=",
            tables.join(", ")
        )));
    };
    if found > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: location.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for migration in &schema::MIGRATIONS[found as usize..] {
        tx.batch_execute(migration).map_err(err)?;
    }
    tx.execute("UPDATE schema_version SET version = $1", &[&SCHEMA_VERSION])
        .map_err(err)?;
    tx.commit().map_err(err)
}

/// Takes ferry's own `schema=NAME` parameter out of `url`.
fn split_schema(url: &str) -> Result<(String, String), StoreError> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, query),
        None => (url, ""),
    };
    let mut schema = DEFAULT_SCHEMA.to_string();
    let mut rest = Vec::new();
    for param in query.split('&').filter(|p| !p.is_empty()) {
        match param.strip_prefix("schema=") {
            Some(name) => schema = name.to_string(),
            None => rest.push(param),
        }
    }
    let valid = !schema.is_empty()
        && schema.len() <= 63
        && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        return Err(StoreError::Unreachable {
            path: PathBuf::from(redacted(url)),
            detail: format!(
                "schema {schema:?} is not a plain name: use lower-case letters, digits and _ \
                 (at most 63)"
            ),
        });
    }
    let url = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, schema))
}

/// `postgres://USER@HOST:PORT/DB?schema=S`, never the password.
fn describe(config: &postgres::Config, schema: &str) -> String {
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}?schema={schema}",
        config.get_user().unwrap_or(""),
        config.get_dbname().unwrap_or("")
    )
}

/// `url` with its password (in the user part or a `password=` parameter)
/// replaced: for messages about a URL, which must never show one.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    // The host follows the last '@': a password may hold one.
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((key, _)) if key == "password" => format!("{key}=***"),
                    _ => p.to_string(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// What the server said (message, detail, hint), or what broke: the
/// `postgres` crate's own text for a server error is only "db error".
pub(crate) fn error_text(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{} ({})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            text.push_str(&format!("; {detail}"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!("; hint: {hint}"));
        }
        return text;
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// A server error with the server's words: see [`error_text`].
#[derive(Debug)]
pub(crate) struct ServerError {
    text: String,
    pub(crate) inner: postgres::Error,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.inner)
    }
}

pub(crate) fn server_err(location: &std::path::Path, e: postgres::Error) -> StoreError {
    // The connection broke (server restarted or shut down, network): the
    // store is unreachable, exit code 15, not a store error.
    let shutdown = e.code().is_some_and(|code| {
        *code == postgres::error::SqlState::ADMIN_SHUTDOWN
            || *code == postgres::error::SqlState::CRASH_SHUTDOWN
            || *code == postgres::error::SqlState::CANNOT_CONNECT_NOW
            || *code == postgres::error::SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
    });
    let broken = e.as_db_error().is_none()
        && std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    if e.is_closed() || shutdown || broken {
        return StoreError::Unreachable {
            path: location.to_path_buf(),
            detail: error_text(&e),
        };
    }
    StoreError::Server {
        path: location.to_path_buf(),
        source: Box::new(ServerError {
            text: error_text(&e),
            inner: e,
        }),
    }
}

/// A deadlock victim or serialization failure: run the transaction again.
fn is_retryable(e: &StoreError) -> bool {
    let StoreError::Server { source, .. } = e else {
        return false;
    };
    source
        .downcast_ref::<ServerError>()
        .and_then(|e| e.inner.code())
        .is_some_and(|code| {
            *code == postgres::error::SqlState::T_R_DEADLOCK_DETECTED
                || *code == postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
                || conn::is_stale_statement(code)
        })
}

pub mod testing;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_parameter_is_ferrys_and_the_password_never_shows() {
        let (url, schema) =
            split_schema("postgres://u:secret@h/db?schema=s1&sslmode=disable").unwrap();
        assert_eq!(url, "postgres://u:secret@h/db?sslmode=disable");
        assert_eq!(schema, "s1");
        assert_eq!(split_schema("postgres://h/db").unwrap().1, DEFAULT_SCHEMA);
        assert!(split_schema("postgres://h/db?schema=x;drop").is_err());
        assert_eq!(
            redacted("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(
            redacted("postgres://u:hun@ter2@h:5/db?password=x&sslmode=disable"),
            "postgres://u:***@h:5/db?password=***&sslmode=disable"
        );
        assert_eq!(redacted("postgres://h/db"), "postgres://h/db");
        let config = postgres::Config::from_str("postgres://u:secret@h:5433/db").unwrap();
        assert_eq!(describe(&config, "s"), "postgres://u@h:5433/db?schema=s");
    }
}
