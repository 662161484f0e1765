//! Reading the event log on PostgreSQL: one page in one snapshot, and
//! the reader watchers use on their own connection (LISTEN, with a
//! bounded look again).

use super::*;

pub(super) fn last_seq(client: &mut PgConn, path: &Path) -> Result<u64, StoreError> {
    let seq: i64 = client
        .query_one(LAST_SEQ, &[])
        .and_then(|row| row.try_get(0))
        .map_err(|e| server_err(path, e))?;
    Ok(seq as u64)
}

/// One read-only REPEATABLE READ transaction: the horizon check, the query
/// and the newest number see the same snapshot, so a compaction in between
/// cannot open a silent gap.
pub(super) fn query_events(
    conn: &mut PgConn,
    path: &Path,
    after: u64,
    filter: &EventFilter,
    limit: usize,
) -> Result<EventPage, StoreError> {
    let err = |e| server_err(path, e);
    let mut tx = CachedTx {
        tx: conn
            .client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(err)?,
        statements: &mut conn.statements,
    };
    let horizon: i64 = tx
        .query_one("SELECT value FROM meta WHERE key = 'events_horizon'", &[])
        .and_then(|row| row.try_get(0))
        .map_err(err)?;
    rules::check_horizon(path, after, horizon as u64)?;
    let rows = tx
        .query(
            "SELECT seq, time_ns, transfer_id, entry_idx, request_id, name, context
             FROM events
             WHERE seq > $1
               AND ($2::BIGINT IS NULL OR transfer_id = $2)
               AND ($3::BIGINT IS NULL OR request_id = $3)
               AND ($4::TEXT IS NULL OR name = $4 OR left(name, length($4) + 1) = $4 || '.')
             ORDER BY seq LIMIT $5",
            &[
                &(after.min(i64::MAX as u64) as i64),
                &filter.transfer.map(|t| t.0),
                &filter.request.map(|r| r.0),
                &filter.kind,
                &(limit.min(i64::MAX as usize) as i64),
            ],
        )
        .map_err(err)?;
    let last: i64 = tx
        .query_one(LAST_SEQ, &[])
        .and_then(|row| row.try_get(0))
        .map_err(err)?;
    tx.tx.commit().map_err(err)?;
    let events = rows
        .iter()
        .map(|row| {
            Ok(EventRow {
                seq: row.try_get(0)?,
                time_ns: row.try_get(1)?,
                transfer: row.try_get(2)?,
                entry: row.try_get(3)?,
                request: row.try_get(4)?,
                name: row.try_get(5)?,
                context: row.try_get(6)?,
            })
        })
        .collect::<Result<Vec<_>, postgres::Error>>()
        .map_err(err)?
        .into_iter()
        .map(|row| row.into_event(path))
        .collect::<Result<Vec<_>, _>>()?;
    rules::check_event_page(&events, after, last as u64);
    Ok(EventPage {
        events,
        last_seq: last as u64,
    })
}

/// See [`Store::event_reader`]: its own connection, listening on
/// [`CHANNEL`] since it was made, so no commit after that goes unnoticed.
pub(super) struct PgEventReader {
    pub(super) location: PathBuf,
    pub(super) schema: String,
    /// Its own connection (a LISTEN belongs to one), with its statements.
    pub(super) conn: PgConn,
    /// Notifications for this store's schema received so far.
    pub(super) notifications_seen: u64,
}

impl PgEventReader {
    /// Counts the notifications already received, without waiting.
    fn drain(&mut self) -> Result<(), StoreError> {
        let mut pending = self.conn.client.notifications();
        let mut pending = pending.iter();
        while let Some(notification) = pending.next().map_err(|e| server_err(&self.location, e))? {
            if notification.payload() == self.schema {
                self.notifications_seen += 1;
            }
        }
        Ok(())
    }
}

impl EventReader for PgEventReader {
    fn events_since(
        &mut self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<EventPage, StoreError> {
        query_events(&mut self.conn, &self.location, after, filter, limit)
    }

    fn change_token(&mut self) -> Result<ChangeToken, StoreError> {
        self.drain()?;
        Ok(ChangeToken {
            local: self.notifications_seen,
            data_version: last_seq(&mut self.conn, &self.location)? as i64,
        })
    }

    fn wait_changed(&mut self, since: ChangeToken, timeout: Duration) -> Result<bool, StoreError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.change_token()? != since {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            // Blocks on the connection's socket until a notification (of
            // any store sharing the server) arrives or the time is up; at
            // most READER_LOOK_AGAIN at a time, so that a connection that
            // died silently (a failover, a firewall's idle timeout) is
            // noticed by the next look rather than after the whole wait.
            let notification = self
                .conn
                .client
                .notifications()
                .timeout_iter(left.min(READER_LOOK_AGAIN))
                .next();
            match notification {
                Ok(Some(n)) if n.payload() == self.schema => {
                    self.notifications_seen += 1;
                    return Ok(true);
                }
                // Another store's: look again and wait for the rest.
                Ok(Some(_)) => {}
                Err(e) => return Err(server_err(&self.location, e)),
                // Timed out, or the connection closed: the next look says
                // which.
                Ok(None) => {}
            }
        }
    }
}
