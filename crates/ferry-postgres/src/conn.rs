//! Pooled connections that keep their prepared statements.
//!
//! The `postgres` crate prepares a statement given as text on every call:
//! one extra round trip (Parse/Describe, then Bind/Execute) and a parse and
//! plan on the server each time. A [`PgConn`] keeps each statement it has
//! prepared, by its text, for as long as the connection lives: every
//! statement of the store, the queue and the write path goes through
//! [`Db`], which prepares a text once per connection and then only binds
//! and executes it.
//!
//! A statement belongs to the session that prepared it: the cache lives
//! and dies with its [`postgres::Client`]. A connection the pool finds
//! broken is dropped with its cache, and its replacement starts with an
//! empty one, so no statement is ever used on a session that did not
//! prepare it.

use std::collections::HashMap;

use postgres::types::ToSql;
use postgres::{Client, Error, GenericClient, NoTls, Row, Statement};

/// Distinct statement texts one connection keeps at most; past that the
/// cache starts over (the store's texts are a few dozen: this bounds a
/// mistake, not the usual case).
const STATEMENTS_MAX: usize = 256;

/// Prepared statements of one session, by text.
#[derive(Default)]
pub(crate) struct Statements(HashMap<String, Statement>);

/// A prepared statement the server no longer accepts: a schema change
/// altered what it returns, or a proxy lost it. The cache is emptied (see
/// [`Statements::forget_if_stale`]) and the transaction may run again.
pub(crate) fn is_stale_statement(code: &postgres::error::SqlState) -> bool {
    // "cached plan must not change result type" is FEATURE_NOT_SUPPORTED.
    *code == postgres::error::SqlState::FEATURE_NOT_SUPPORTED
        || *code == postgres::error::SqlState::INVALID_SQL_STATEMENT_NAME
}

impl Statements {
    /// `sql` prepared on `client`'s session, once.
    fn get(&mut self, client: &mut impl GenericClient, sql: &str) -> Result<Statement, Error> {
        if let Some(statement) = self.0.get(sql) {
            return Ok(statement.clone());
        }
        let statement = client.prepare(sql)?;
        if self.0.len() >= STATEMENTS_MAX {
            self.0.clear();
        }
        self.0.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    /// Passes `result` on, first forgetting every statement when it says
    /// they are stale: the next use prepares them anew.
    fn forget_if_stale<T>(&mut self, result: Result<T, Error>) -> Result<T, Error> {
        if let Err(e) = &result
            && e.code().is_some_and(is_stale_statement)
        {
            self.0.clear();
        }
        result
    }
}

/// A session and the statements prepared on it.
pub(crate) struct PgConn {
    pub(crate) client: Client,
    pub(crate) statements: Statements,
}

impl PgConn {
    pub(crate) fn connect(config: &postgres::Config) -> Result<PgConn, Error> {
        Ok(PgConn {
            client: config.connect(NoTls)?,
            statements: Statements::default(),
        })
    }
}

pub(crate) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Runs statements given as text through the session's cache: the same
/// calls (and errors) as the `postgres` crate's, without preparing again.
pub(crate) trait Db {
    type Client: GenericClient;

    fn split(&mut self) -> (&mut Self::Client, &mut Statements);

    fn query(&mut self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
        let (client, statements) = self.split();
        let statement = statements.get(client, sql)?;
        let result = client.query(&statement, params);
        statements.forget_if_stale(result)
    }

    fn query_one(&mut self, sql: &str, params: Params<'_>) -> Result<Row, Error> {
        let (client, statements) = self.split();
        let statement = statements.get(client, sql)?;
        let result = client.query_one(&statement, params);
        statements.forget_if_stale(result)
    }

    fn query_opt(&mut self, sql: &str, params: Params<'_>) -> Result<Option<Row>, Error> {
        let (client, statements) = self.split();
        let statement = statements.get(client, sql)?;
        let result = client.query_opt(&statement, params);
        statements.forget_if_stale(result)
    }

    fn execute(&mut self, sql: &str, params: Params<'_>) -> Result<u64, Error> {
        let (client, statements) = self.split();
        let statement = statements.get(client, sql)?;
        let result = client.execute(&statement, params);
        statements.forget_if_stale(result)
    }
}

impl Db for PgConn {
    type Client = Client;

    fn split(&mut self) -> (&mut Client, &mut Statements) {
        (&mut self.client, &mut self.statements)
    }
}

/// A transaction on a [`PgConn`], preparing into its cache.
pub(crate) struct CachedTx<'a> {
    pub(crate) tx: postgres::Transaction<'a>,
    pub(crate) statements: &'a mut Statements,
}

impl<'a> Db for CachedTx<'a> {
    type Client = postgres::Transaction<'a>;

    fn split(&mut self) -> (&mut postgres::Transaction<'a>, &mut Statements) {
        (&mut self.tx, self.statements)
    }
}

/// The pool's connection manager: [`PgConn`]s, checked as
/// `r2d2_postgres` checked its clients.
pub(crate) struct Manager {
    pub(crate) config: postgres::Config,
}

impl r2d2::ManageConnection for Manager {
    type Connection = PgConn;
    type Error = Error;

    fn connect(&self) -> Result<PgConn, Error> {
        PgConn::connect(&self.config)
    }

    fn is_valid(&self, conn: &mut PgConn) -> Result<(), Error> {
        conn.client.simple_query("").map(|_| ())
    }

    fn has_broken(&self, conn: &mut PgConn) -> bool {
        conn.client.is_closed()
    }
}
