//! Reading the event log: one page in one snapshot, and the reader
//! watchers use on their own connection.

use super::packed;
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
    // Rows are read in pages of `limit` until `limit` events passed the
    // filter or the log ends: a packed row holds many events, and some
    // may be at or below the cursor or not pass the filter.
    let mut events: Vec<Event> = Vec::new();
    let mut cursor = after;
    let mut previous_seq: Option<u64> = None;
    let rows_max = limit.clamp(1, i64::MAX as usize);
    loop {
        let raw: Vec<(rules::EventRow, Option<i64>, Option<Vec<u8>>)> = {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT seq, time_ns, transfer_id, entry_idx, request_id, name, context, n,
                            batch
                     FROM events
                     WHERE seq > ?1
                       AND (?2 IS NULL OR transfer_id = ?2)
                       AND (?5 IS NULL OR request_id = ?5)
                       AND (?3 IS NULL OR n IS NOT NULL OR name = ?3
                            OR substr(name, 1, length(?3) + 1) = ?3 || '.')
                     ORDER BY seq LIMIT ?4",
                )
                .map_err(err)?;
            let rows = stmt
                .query_map(
                    params![
                        cursor as i64,
                        filter.transfer.map(|t| t.0),
                        filter.kind.as_deref(),
                        rows_max as i64,
                        filter.request.map(|r| r.0),
                    ],
                    |row| {
                        Ok((
                            rules::EventRow {
                                seq: row.get(0)?,
                                time_ns: row.get(1)?,
                                transfer: row.get(2)?,
                                entry: row.get(3)?,
                                request: row.get(4)?,
                                name: row.get(5)?,
                                context: row.get(6)?,
                            },
                            row.get(7)?,
                            row.get(8)?,
                        ))
                    },
                )
                .map_err(err)?;
            rows.collect::<rusqlite::Result<_>>().map_err(err)?
        };
        let rows_read = raw.len();
        for (row, n, batch) in raw {
            let seq = u64::try_from(row.seq)
                .map_err(|_| rules::corrupt(path, format!("impossible event seq {}", row.seq)))?;
            cursor = seq;
            let Some(n) = n else {
                check_after(path, &mut previous_seq, seq, seq)?;
                events.push(row.into_event(path)?);
                continue;
            };
            let unpacked = unpack_row(path, &row, seq, n, batch.as_deref())?;
            let first = seq + 1 - unpacked.len() as u64;
            check_after(path, &mut previous_seq, first, seq)?;
            for (seq, event) in (first..=seq).zip(unpacked) {
                let event = Event {
                    seq,
                    time_ns: row.time_ns,
                    transfer: row.transfer.map(TransferId),
                    entry: event.entry,
                    request: None,
                    name: event.name,
                    context: event.context,
                };
                if seq > after && filter.matches(&event) {
                    events.push(event);
                }
            }
        }
        if rows_read < rows_max || events.len() >= limit {
            break;
        }
    }
    events.truncate(limit);
    let last_seq: i64 = tx
        .query_row("SELECT coalesce(max(seq), 0) FROM events", [], |row| {
            row.get(0)
        })
        .map_err(err)?;
    tx.finish().map_err(err)?;
    rules::check_event_page(&events, after, last_seq as u64);
    Ok(EventPage {
        events,
        last_seq: last_seq as u64,
    })
}

/// A packed row's events: `n` of them, two or more, numbered up to `seq`
/// and never below 1.
fn unpack_row(
    path: &Path,
    row: &rules::EventRow,
    seq: u64,
    n: i64,
    batch: Option<&[u8]>,
) -> Result<Vec<packed::UnpackedEvent>, StoreError> {
    let bad = |what: String| rules::corrupt(path, format!("event row {seq}: {what}"));
    let n = usize::try_from(n)
        .ok()
        .filter(|n| (2..=packed::EVENTS_MAX).contains(n) && (*n as u64) <= seq)
        .ok_or_else(|| bad(format!("impossible count {n}")))?;
    if row.transfer.is_none() || row.request.is_some() || row.entry.is_some() {
        return Err(bad("a packed row of no transfer".into()));
    }
    let batch = batch.ok_or_else(|| bad("no packed events".into()))?;
    packed::unpack(batch, n).map_err(bad)
}

/// Rows of one page never overlap: a row's first event comes after the
/// previous row's last.
fn check_after(
    path: &Path,
    previous: &mut Option<u64>,
    first: u64,
    last: u64,
) -> Result<(), StoreError> {
    if previous.is_some_and(|previous| first <= previous) {
        return Err(rules::corrupt(
            path,
            format!("event rows overlap at {first}..={last}"),
        ));
    }
    *previous = Some(last);
    Ok(())
}
