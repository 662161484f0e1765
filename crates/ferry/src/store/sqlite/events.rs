//! Reading the event log: one page in one snapshot, and the reader
//! watchers use on their own connection.

use super::*;

pub(super) struct SqliteEventReader {
    pub(super) path: PathBuf,
    pub(super) conn: Connection,
    pub(super) notifier: Arc<Notifier>,
}

impl SqliteEventReader {
    fn data_version(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("PRAGMA data_version", [], |row| row.get(0))
            .map_err(|e| sqlite_err(&self.path, e))
    }
}

impl EventReader for SqliteEventReader {
    fn events_since(
        &mut self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<EventPage, StoreError> {
        query_events(&self.conn, &self.path, after, filter, limit)
    }

    fn change_token(&mut self) -> Result<ChangeToken, StoreError> {
        let local = *self.notifier.commits.lock().expect("notifier poisoned");
        Ok(ChangeToken {
            local,
            data_version: self.data_version()?,
        })
    }

    fn wait_changed(&mut self, since: ChangeToken, timeout: Duration) -> Result<bool, StoreError> {
        let deadline = Instant::now() + timeout;
        let mut poll = POLL_MIN;
        loop {
            {
                let commits = self.notifier.commits.lock().expect("notifier poisoned");
                if *commits != since.local {
                    return Ok(true);
                }
                let wait = poll.min(deadline.saturating_duration_since(Instant::now()));
                let (commits, _) = self
                    .notifier
                    .changed
                    .wait_timeout(commits, wait)
                    .expect("notifier poisoned");
                if *commits != since.local {
                    return Ok(true);
                }
            }
            if self.data_version()? != since.data_version {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            poll = (poll * 2).min(POLL_MAX);
        }
    }
}

/// One read transaction: the horizon check and the query see the same
/// snapshot, so a compaction in between cannot open a silent gap.
pub(super) fn query_events(
    conn: &Connection,
    path: &Path,
    after: u64,
    filter: &EventFilter,
    limit: usize,
) -> Result<EventPage, StoreError> {
    let err = |e| sqlite_err(path, e);
    let tx = conn.unchecked_transaction().map_err(err)?;
    let horizon: i64 = tx
        .query_row(
            "SELECT value FROM meta WHERE key = 'events_horizon'",
            [],
            |row| row.get(0),
        )
        .map_err(err)?;
    rules::check_horizon(path, after, horizon as u64)?;
    let raw: Vec<rules::EventRow> = {
        let mut stmt = tx
            .prepare_cached(
                "SELECT seq, time_ns, transfer_id, entry_idx, request_id, name, context
                 FROM events
                 WHERE seq > ?1
                   AND (?2 IS NULL OR transfer_id = ?2)
                   AND (?5 IS NULL OR request_id = ?5)
                   AND (?3 IS NULL OR name = ?3 OR substr(name, 1, length(?3) + 1) = ?3 || '.')
                 ORDER BY seq LIMIT ?4",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map(
                params![
                    after as i64,
                    filter.transfer.map(|t| t.0),
                    filter.kind.as_deref(),
                    limit.min(i64::MAX as usize) as i64,
                    filter.request.map(|r| r.0),
                ],
                |row| {
                    Ok(rules::EventRow {
                        seq: row.get(0)?,
                        time_ns: row.get(1)?,
                        transfer: row.get(2)?,
                        entry: row.get(3)?,
                        request: row.get(4)?,
                        name: row.get(5)?,
                        context: row.get(6)?,
                    })
                },
            )
            .map_err(err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(err)?
    };
    let last_seq: i64 = tx
        .query_row("SELECT coalesce(max(seq), 0) FROM events", [], |row| {
            row.get(0)
        })
        .map_err(err)?;
    tx.finish().map_err(err)?;
    let events: Vec<Event> = raw
        .into_iter()
        .map(|row| row.into_event(path))
        .collect::<Result<_, StoreError>>()?;
    rules::check_event_page(&events, after, last_seq as u64);
    Ok(EventPage {
        events,
        last_seq: last_seq as u64,
    })
}
