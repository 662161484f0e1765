//! The store's schema: migrations in order, each applied once. The HSM
//! tables are here too (their meaning is ferry-hsm's): one `user_version`
//! covers the whole file.

/// Schema migrations, in order; the store's `user_version` is how many have
/// been applied. Never edit one that has shipped: append a new one.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE transfers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    owner_host TEXT NOT NULL,
    owner_boot_id TEXT NOT NULL,
    owner_pid INTEGER NOT NULL,
    owner_start_time INTEGER NOT NULL,
    preserve_mode INTEGER NOT NULL,
    preserve_ownership INTEGER NOT NULL,
    preserve_times INTEGER NOT NULL,
    temp_suffix TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    freed_ns INTEGER
);
CREATE UNIQUE INDEX transfers_live_name ON transfers(name) WHERE freed_ns IS NULL;

CREATE TABLE entries (
    transfer_id INTEGER NOT NULL REFERENCES transfers(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    kind TEXT NOT NULL,
    source BLOB NOT NULL,
    dest BLOB NOT NULL,
    size INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    atime_ns INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    link_target BLOB,
    state TEXT NOT NULL,
    progress_bytes_durable INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    -- Room for integrity and fidelity: checksums, extended attributes and
    -- ACLs, hard-link groups.
    checksum_algo TEXT,
    checksum BLOB,
    xattrs BLOB,
    link_group INTEGER,
    PRIMARY KEY (transfer_id, idx)
) WITHOUT ROWID;

CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ns INTEGER NOT NULL,
    transfer_id INTEGER,
    entry_idx INTEGER,
    request_id INTEGER,
    name TEXT NOT NULL,
    context TEXT NOT NULL
);
"#,
    r#"
-- Event log retention: events with seq <= events_horizon were compacted.
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('events_horizon', 0);
"#,
    r#"
-- Transfer ids start at a random point of a 2^40 range (never below what
-- was handed out): temporaries are named DEST._ferry-<id>, and the stores
-- of many MPI ranks writing one directory must not name them alike.
CREATE TEMP TABLE next_transfer_id AS SELECT max(
    coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'transfers'), 0),
    (SELECT coalesce(max(id), 0) FROM transfers),
    abs(random() % 1099511627776)
) AS seq;
DELETE FROM sqlite_sequence WHERE name = 'transfers';
INSERT INTO sqlite_sequence (name, seq) SELECT 'transfers', seq FROM next_transfer_id;
DROP TABLE next_transfer_id;
"#,
    r#"
-- The hash each copied file of a transfer gets (NULL: none). The digest
-- itself goes to entries.checksum_algo / entries.checksum.
ALTER TABLE transfers ADD COLUMN checksum_algo TEXT;
"#,
    r#"
-- HSM coordination (see the ferry-hsm crate). rank = created_ns - head start: the
-- lease query seeks hsm_requests_ready in rank order, never scans.
CREATE TABLE hsm_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    action TEXT NOT NULL,
    fsname TEXT NOT NULL,
    archive_id INTEGER NOT NULL,
    flags INTEGER NOT NULL,
    data BLOB NOT NULL,
    fid TEXT NOT NULL,
    path BLOB,
    priority_ms INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    not_before_ns INTEGER NOT NULL DEFAULT 0,
    lease_holder TEXT,
    lease_expires_ns INTEGER,
    waiters INTEGER NOT NULL DEFAULT 1,
    error TEXT,
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL
);
CREATE INDEX hsm_requests_ready ON hsm_requests(rank, id) WHERE state = 'waiting';
-- The best waiting request of one action: the weighted choice seeks here.
CREATE INDEX hsm_requests_ready_action ON hsm_requests(action, rank, id)
    WHERE state = 'waiting';
CREATE INDEX hsm_requests_leased ON hsm_requests(lease_expires_ns) WHERE state = 'started';
-- At most one live request per file and action: dedup joins it.
CREATE UNIQUE INDEX hsm_requests_live ON hsm_requests(fid, action)
    WHERE state IN ('waiting', 'started');
CREATE INDEX hsm_requests_state ON hsm_requests(state, id);

CREATE TABLE hsm_catalog (
    fid TEXT PRIMARY KEY,
    path BLOB,
    state TEXT NOT NULL,
    archive_id INTEGER NOT NULL,
    object TEXT,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    checksum TEXT,
    updated_ns INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO meta (key, value) VALUES
    ('hsm.head_start_restore_ms', 600000),
    ('hsm.head_start_remove_ms', 60000),
    ('hsm.head_start_archive_ms', 0),
    ('hsm.max_attempts', 5),
    ('hsm.backoff_base_ms', 1000),
    ('hsm.backoff_max_ms', 300000),
    ('hsm.restore_share', 4),
    -- Restores and removes leased since the last archive (the weighting).
    ('hsm.restores_since_archive', 0);
"#,
    r#"
-- A large file's piece digests below its durable progress, as read from
-- the source: a resume takes them instead of hashing the temporary.
ALTER TABLE entries ADD COLUMN piece_digests BLOB;
"#,
    r#"
-- Daemon transfers: the user they were created for (the socket peer's
-- credentials), who alone may see and control them, and whose file
-- credentials their data path runs with. NULL outside the daemon.
ALTER TABLE transfers ADD COLUMN caller_uid INTEGER;
ALTER TABLE transfers ADD COLUMN caller_gid INTEGER;
ALTER TABLE transfers ADD COLUMN caller_groups TEXT;
"#,
    r#"
-- The HSM catalog's change stamp: the file's inode and change time as
-- ferry last left it (ctime cannot be set back by a user, unlike mtime),
-- so that a file rewritten in place with its mtime restored is dirty.
-- 0: not recorded (an entry from before), size and mtime alone decide.
ALTER TABLE hsm_catalog ADD COLUMN ino INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hsm_catalog ADD COLUMN ctime_ns INTEGER NOT NULL DEFAULT 0;
"#,
    r#"
-- The owner's lease: its last heartbeat (its wall clock, ns) and how long
-- that holds (ms). NULL: no heartbeat yet, judged as before leases.
ALTER TABLE transfers ADD COLUMN owner_heartbeat_ns INTEGER;
ALTER TABLE transfers ADD COLUMN owner_lease_ms INTEGER;
"#,
    r#"
-- A transfer's counts by entry state, kept by triggers in the transaction
-- that changes an entry: a status costs the same for 10 entries and for
-- ten million. is_file: not a directory (symlinks count as files, as the
-- engine's totals do). durable: what a resume would not copy again.
CREATE TABLE entry_tallies (
    transfer_id INTEGER NOT NULL REFERENCES transfers(id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    is_file INTEGER NOT NULL,
    n INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    durable INTEGER NOT NULL,
    PRIMARY KEY (transfer_id, state, is_file)
) WITHOUT ROWID;
INSERT INTO entry_tallies
    SELECT transfer_id, state, kind != 'dir', count(*), sum(size),
           sum(CASE WHEN state IN ('copied', 'committed') THEN size
                    ELSE progress_bytes_durable END)
    FROM entries GROUP BY transfer_id, state, kind != 'dir';
CREATE TRIGGER entry_tallies_insert AFTER INSERT ON entries BEGIN
    INSERT INTO entry_tallies VALUES (
        new.transfer_id, new.state, new.kind != 'dir', 1, new.size,
        CASE WHEN new.state IN ('copied', 'committed') THEN new.size
             ELSE new.progress_bytes_durable END)
    ON CONFLICT (transfer_id, state, is_file) DO UPDATE SET
        n = n + 1, bytes = bytes + excluded.bytes,
        durable = durable + excluded.durable;
END;
CREATE TRIGGER entry_tallies_delete AFTER DELETE ON entries BEGIN
    UPDATE entry_tallies SET n = n - 1, bytes = bytes - old.size,
        durable = durable - CASE WHEN old.state IN ('copied', 'committed')
                                 THEN old.size ELSE old.progress_bytes_durable END
    WHERE transfer_id = old.transfer_id AND state = old.state
      AND is_file = (old.kind != 'dir');
END;
CREATE TRIGGER entry_tallies_update
AFTER UPDATE OF state, kind, size, progress_bytes_durable ON entries BEGIN
    UPDATE entry_tallies SET n = n - 1, bytes = bytes - old.size,
        durable = durable - CASE WHEN old.state IN ('copied', 'committed')
                                 THEN old.size ELSE old.progress_bytes_durable END
    WHERE transfer_id = old.transfer_id AND state = old.state
      AND is_file = (old.kind != 'dir');
    INSERT INTO entry_tallies VALUES (
        new.transfer_id, new.state, new.kind != 'dir', 1, new.size,
        CASE WHEN new.state IN ('copied', 'committed') THEN new.size
             ELSE new.progress_bytes_durable END)
    ON CONFLICT (transfer_id, state, is_file) DO UPDATE SET
        n = n + 1, bytes = bytes + excluded.bytes,
        durable = durable + excluded.durable;
END;
-- A transfer's failed entries, paged in index order without a scan.
CREATE INDEX entries_failed ON entries(transfer_id, idx) WHERE state = 'failed';
"#,
    r#"
-- Issue #20: a file costs the store ≤ 150 bytes per run. Entries: kind and
-- state as small integers (rules::entry_kind_code, rules::file_state_code),
-- no per-row checksum algorithm (a digest's length names it), paths
-- relative to the transfer's root pair (transfers.source_root, dest_root:
-- a source not starting with '/' is below source_root; a NULL dest is the
-- same relative path below dest_root). Rows from before keep absolute paths.
ALTER TABLE transfers ADD COLUMN source_root BLOB;
ALTER TABLE transfers ADD COLUMN dest_root BLOB;
DROP TRIGGER entry_tallies_insert;
DROP TRIGGER entry_tallies_delete;
DROP TRIGGER entry_tallies_update;
DROP INDEX entries_failed;
CREATE TABLE entries_new (
    transfer_id INTEGER NOT NULL REFERENCES transfers(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    state INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    atime_ns INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    progress_bytes_durable INTEGER NOT NULL DEFAULT 0,
    source BLOB NOT NULL,
    dest BLOB,
    checksum BLOB,
    link_target BLOB,
    error TEXT,
    xattrs BLOB,
    link_group INTEGER,
    piece_digests BLOB,
    PRIMARY KEY (transfer_id, idx)
) WITHOUT ROWID;
INSERT INTO entries_new
    SELECT transfer_id, idx,
        CASE kind WHEN 'file' THEN 0 WHEN 'dir' THEN 1 WHEN 'symlink' THEN 2 END,
        CASE state WHEN 'pending' THEN 0 WHEN 'copying' THEN 1 WHEN 'copied' THEN 2
                   WHEN 'committed' THEN 3 WHEN 'failed' THEN 4 WHEN 'skipped' THEN 5 END,
        size, mode, uid, gid, atime_ns, mtime_ns, progress_bytes_durable, source, dest,
        CASE WHEN checksum_algo IS NULL THEN NULL ELSE checksum END,
        link_target, error, xattrs, link_group, piece_digests
    FROM entries;
DROP TABLE entries;
ALTER TABLE entries_new RENAME TO entries;
-- Events: the events one transaction writes for one transfer may share a
-- row (n of them, numbered seq - n + 1 ..= seq, packed in `batch`; name
-- and context are then empty). n IS NULL: a row of one event, as before.
ALTER TABLE events ADD COLUMN n INTEGER;
ALTER TABLE events ADD COLUMN batch BLOB;

DROP TABLE entry_tallies;
CREATE TABLE entry_tallies (
    transfer_id INTEGER NOT NULL REFERENCES transfers(id) ON DELETE CASCADE,
    state INTEGER NOT NULL,
    is_file INTEGER NOT NULL,
    n INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    durable INTEGER NOT NULL,
    PRIMARY KEY (transfer_id, state, is_file)
) WITHOUT ROWID;
-- kind 1: dir; states 2, 3: copied, committed.
INSERT INTO entry_tallies
    SELECT transfer_id, state, kind != 1, count(*), sum(size),
           sum(CASE WHEN state IN (2, 3) THEN size ELSE progress_bytes_durable END)
    FROM entries GROUP BY transfer_id, state, kind != 1;
CREATE TRIGGER entry_tallies_insert AFTER INSERT ON entries BEGIN
    INSERT INTO entry_tallies VALUES (
        new.transfer_id, new.state, new.kind != 1, 1, new.size,
        CASE WHEN new.state IN (2, 3) THEN new.size ELSE new.progress_bytes_durable END)
    ON CONFLICT (transfer_id, state, is_file) DO UPDATE SET
        n = n + 1, bytes = bytes + excluded.bytes,
        durable = durable + excluded.durable;
END;
CREATE TRIGGER entry_tallies_delete AFTER DELETE ON entries BEGIN
    UPDATE entry_tallies SET n = n - 1, bytes = bytes - old.size,
        durable = durable - CASE WHEN old.state IN (2, 3)
                                 THEN old.size ELSE old.progress_bytes_durable END
    WHERE transfer_id = old.transfer_id AND state = old.state
      AND is_file = (old.kind != 1);
END;
CREATE TRIGGER entry_tallies_update
AFTER UPDATE OF state, kind, size, progress_bytes_durable ON entries BEGIN
    UPDATE entry_tallies SET n = n - 1, bytes = bytes - old.size,
        durable = durable - CASE WHEN old.state IN (2, 3)
                                 THEN old.size ELSE old.progress_bytes_durable END
    WHERE transfer_id = old.transfer_id AND state = old.state
      AND is_file = (old.kind != 1);
    INSERT INTO entry_tallies VALUES (
        new.transfer_id, new.state, new.kind != 1, 1, new.size,
        CASE WHEN new.state IN (2, 3) THEN new.size ELSE new.progress_bytes_durable END)
    ON CONFLICT (transfer_id, state, is_file) DO UPDATE SET
        n = n + 1, bytes = bytes + excluded.bytes,
        durable = durable + excluded.durable;
END;
-- state 4: failed.
CREATE INDEX entries_failed ON entries(transfer_id, idx) WHERE state = 4;
"#,
    // The writer sums what a batch of entry updates moves between tallies
    // and writes it once (`sqlite/tallies.rs`): the trigger cost two
    // statements per update.
    "DROP TRIGGER entry_tallies_update;",
];
