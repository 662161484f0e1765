//! How a listed directory's entries become work items: no I/O, so that the
//! bounds are stated (and tested) in one place.

use ferry::model::{EntryKind, NewEntry};

/// A batch item holds at most this many files: one batch is one commit (one
/// `syncfs`, two store transactions). A quarter of the single-process
/// engine's batch ([`ferry::engine::BATCH_FILES_MAX`]): items are what
/// spreads a copy over the nodes, and one lost with its worker is copied
/// again.
pub const BATCH_FILES_MAX: usize = 512;
/// … and at most this many bytes, so that a batch lost with its worker costs
/// at most this much copying again.
pub const BATCH_BYTES_MAX: u64 = 256 << 20;
/// Files this large or larger are copied in range items, which several
/// workers (nodes) copy at once: the engine's threshold for ranges.
pub const RANGED_FROM_BYTES: u64 = ferry::engine::SPLIT_BYTES_MIN;
/// The bytes of one range item: four of the engine's 16 MiB ranges (and
/// checksum pieces), so its boundaries are the engine's too.
pub const RANGE_ITEM_BYTES: u64 = 4 * ferry::engine::RANGE_BYTES;
/// A directory item names at most this many directories, listed by one
/// worker in one transaction: an item per directory cost a lease, a
/// listing transaction and an `item.done` per directory, which a tree of
/// small directories (100 files each) paid per 100 files. Siblings go
/// together, so a wide tree still spreads over `n / 32` items.
pub const DIR_ITEM_DIRS_MAX: usize = 32;
/// A directory item stops listing its directories once it holds this many
/// entries; the directories it did not list go out as new items. So the
/// first batches of a tree are free to lease early (other workers copy while
/// this one lists) and one listing transaction holds at most this many
/// entries plus one directory's ([`LISTING_DIR_ENTRIES_MAX`]).
pub const LISTING_ENTRIES_BUDGET: usize = 8 * BATCH_FILES_MAX;
/// One directory is listed whole, in one transaction: at most this many
/// entries, a bigger directory fails.
pub const LISTING_DIR_ENTRIES_MAX: usize = 1 << 20;

/// What a work item asks a worker to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemKind {
    /// List up to [`DIR_ITEM_DIRS_MAX`] directories: their entries are
    /// added, their files become batch and range items, their
    /// subdirectories new directory items.
    Dir,
    /// Copy and commit a batch of small files (and symlinks).
    Batch,
    /// Copy one range of a large file into its temporary and make it
    /// durable. The last range of a file to complete adds its commit item.
    Range,
    /// Commit a large file whose ranges are all durable.
    Commit,
    /// Everything else is done: apply the directories' metadata (deepest
    /// first) and end the transfer.
    Finish,
}

impl ItemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ItemKind::Dir => "dir",
            ItemKind::Batch => "batch",
            ItemKind::Range => "range",
            ItemKind::Commit => "commit",
            ItemKind::Finish => "finish",
        }
    }

    pub fn parse(s: &str) -> Option<ItemKind> {
        [
            ItemKind::Dir,
            ItemKind::Batch,
            ItemKind::Range,
            ItemKind::Commit,
            ItemKind::Finish,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// A work item before it is inserted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewItem {
    pub kind: ItemKind,
    /// Entry indexes: the directories, the batch's files, the ranged file.
    pub entries: Vec<i64>,
    /// A range item's `[start, end)`.
    pub range: Option<(u64, u64)>,
    /// Files this item puts in place (for per-node progress).
    pub files: u64,
    /// Bytes this item copies.
    pub bytes: u64,
}

/// A batch item not leased yet that a listing may fill up: what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenBatch {
    pub files: u64,
    pub bytes: u64,
}

/// What a listing adds: small files appended to the open batch, new items.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Planned {
    /// Entry indexes for the open batch (none without one).
    pub appended: Vec<i64>,
    pub appended_bytes: u64,
    pub items: Vec<NewItem>,
}

/// The items of `entries`, whose indexes start at `first`: directory items
/// of up to [`DIR_ITEM_DIRS_MAX`] directories, range items per large file,
/// batches of the rest bounded by
/// [`BATCH_FILES_MAX`] and [`BATCH_BYTES_MAX`]. Small files fill `open`
/// first (to the same bounds), so that the listings of many small
/// directories make full batches, as the single-process engine's do.
pub fn items_of(first: i64, entries: &[NewEntry], open: Option<OpenBatch>) -> Planned {
    let empty_batch = |open: Option<OpenBatch>| NewItem {
        kind: ItemKind::Batch,
        entries: Vec::new(),
        range: None,
        files: open.map_or(0, |o| o.files),
        bytes: open.map_or(0, |o| o.bytes),
    };
    let mut planned = Planned::default();
    let mut dirs = Vec::new();
    let mut filling = open;
    let mut batch = empty_batch(open);
    let close =
        |batch: NewItem, filling: &mut Option<OpenBatch>, planned: &mut Planned| match filling
            .take()
        {
            Some(open) => {
                planned.appended = batch.entries;
                planned.appended_bytes = batch.bytes - open.bytes;
            }
            None if batch.entries.is_empty() => {}
            None => planned.items.push(batch),
        };
    for (offset, entry) in entries.iter().enumerate() {
        let index = first + offset as i64;
        let size = entry.meta.size;
        match entry.kind {
            EntryKind::Dir => {
                dirs.push(index);
                if dirs.len() == DIR_ITEM_DIRS_MAX {
                    planned.items.extend(dir_items(&std::mem::take(&mut dirs)));
                }
            }
            EntryKind::File if size >= RANGED_FROM_BYTES => {
                let mut start = 0;
                while start < size {
                    let end = (start + RANGE_ITEM_BYTES).min(size);
                    planned.items.push(NewItem {
                        kind: ItemKind::Range,
                        entries: vec![index],
                        range: Some((start, end)),
                        files: 0,
                        bytes: end - start,
                    });
                    start = end;
                }
            }
            EntryKind::File | EntryKind::Symlink => {
                if batch.files as usize >= BATCH_FILES_MAX
                    || (batch.files > 0 && batch.bytes + size > BATCH_BYTES_MAX)
                {
                    let full = std::mem::replace(&mut batch, empty_batch(None));
                    close(full, &mut filling, &mut planned);
                }
                batch.entries.push(index);
                batch.files += 1;
                batch.bytes += size;
            }
        }
    }
    close(batch, &mut filling, &mut planned);
    planned.items.extend(dir_items(&dirs));
    planned
}

/// Directory items for the directories `indexes`, each of at most
/// [`DIR_ITEM_DIRS_MAX`], in order.
pub fn dir_items(indexes: &[i64]) -> Vec<NewItem> {
    indexes
        .chunks(DIR_ITEM_DIRS_MAX)
        .map(|dirs| NewItem {
            kind: ItemKind::Dir,
            entries: dirs.to_vec(),
            range: None,
            files: 0,
            bytes: 0,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry::model::SourceMeta;
    use std::path::PathBuf;

    fn entry(kind: EntryKind, size: u64) -> NewEntry {
        NewEntry {
            kind,
            source: PathBuf::from("/s"),
            dest: PathBuf::from("/d"),
            meta: SourceMeta {
                size,
                mode: 0o644,
                uid: 0,
                gid: 0,
                atime_ns: 0,
                mtime_ns: 0,
            },
            link_target: None,
            link_leader: None,
            shared_inode: None,
            inode_changed_ns: 0,
            xattrs: Default::default(),
        }
    }

    #[test]
    fn batches_are_bounded_in_files_and_bytes_and_large_files_go_in_ranges() {
        let mut entries: Vec<NewEntry> = (0..1100).map(|_| entry(EntryKind::File, 10)).collect();
        entries.push(entry(EntryKind::Dir, 0));
        entries.push(entry(EntryKind::File, RANGE_ITEM_BYTES * 2 + 1));
        entries.extend((0..20).map(|_| entry(EntryKind::File, 20 << 20)));
        let items = items_of(5, &entries, None).items;
        let kinds: Vec<ItemKind> = items.iter().map(|i| i.kind).collect();
        use ItemKind::*;
        assert_eq!(
            kinds,
            [Batch, Batch, Range, Range, Range, Batch, Batch, Dir]
        );
        assert_eq!(items[0].entries.len(), BATCH_FILES_MAX);
        assert_eq!(items[0].entries[0], 5);
        assert_eq!(items[7].entries, [5 + 1100]);
        assert_eq!(
            items[4].range,
            Some((2 * RANGE_ITEM_BYTES, 2 * RANGE_ITEM_BYTES + 1))
        );
        // 1100 - 2 * 512 = 76 small files, then 20 MiB files until the
        // next would pass 256 MiB: 12 of them; the other 8 in the last.
        assert_eq!(items[5].files, 88);
        assert_eq!(items[6].files, 8);
        assert!(
            items
                .iter()
                .all(|i| i.bytes <= BATCH_BYTES_MAX || i.kind != Batch)
        );
    }

    #[test]
    fn a_listing_fills_the_open_batch_to_its_bounds_before_adding_batches() {
        let entries: Vec<NewEntry> = (0..600).map(|_| entry(EntryKind::File, 10)).collect();
        let open = OpenBatch {
            files: 500,
            bytes: 5000,
        };
        let planned = items_of(7, &entries, Some(open));
        assert_eq!(planned.appended, (7..19).collect::<Vec<i64>>());
        assert_eq!(planned.appended_bytes, 120);
        assert_eq!(planned.items.len(), 2);
        assert_eq!(planned.items[0].entries.first(), Some(&19));
        assert_eq!(planned.items[0].files as usize, BATCH_FILES_MAX);
        assert_eq!(planned.items[1].files, 600 - 12 - 512);
        // Nothing small: the open batch stays as it is.
        let dir = [entry(EntryKind::Dir, 0)];
        let planned = items_of(0, &dir, Some(open));
        assert!(planned.appended.is_empty());
        assert_eq!(planned.appended_bytes, 0);
        assert_eq!(planned.items.len(), 1);
        // A batch full in bytes takes no more.
        let big = OpenBatch {
            files: 1,
            bytes: BATCH_BYTES_MAX,
        };
        let planned = items_of(0, &entries[..1], Some(big));
        assert!(planned.appended.is_empty());
        assert_eq!(planned.items[0].entries, [0]);
    }

    #[test]
    fn sibling_directories_share_items_of_at_most_the_bound() {
        let mut entries: Vec<NewEntry> = Vec::new();
        for _ in 0..DIR_ITEM_DIRS_MAX * 2 + 3 {
            entries.push(entry(EntryKind::Dir, 0));
            entries.push(entry(EntryKind::File, 10));
        }
        let planned = items_of(10, &entries, None);
        let dirs: Vec<&NewItem> = planned
            .items
            .iter()
            .filter(|i| i.kind == ItemKind::Dir)
            .collect();
        assert_eq!(dirs.len(), 3);
        assert_eq!(dirs[0].entries.len(), DIR_ITEM_DIRS_MAX);
        assert_eq!(dirs[2].entries.len(), 3);
        // Every directory once, in listing order.
        let all: Vec<i64> = dirs.iter().flat_map(|i| i.entries.clone()).collect();
        let expected: Vec<i64> = (0..DIR_ITEM_DIRS_MAX as i64 * 2 + 3)
            .map(|n| 10 + 2 * n)
            .collect();
        assert_eq!(all, expected);
        assert_eq!(dir_items(&[]), Vec::new());
    }
}
