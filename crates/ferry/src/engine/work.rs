//! What flows through the engine's two channels: the work list the
//! workers take from, and what they hand the commit loop.

use super::commit::Ready;
use crate::model::EntryIndex;

/// One unit of work for a worker.
#[derive(Clone, Copy, Debug)]
pub(super) enum Work {
    Whole(EntryIndex),
    Range {
        index: EntryIndex,
        /// Which range of the file's range tracker.
        slot: usize,
        start: u64,
        end: u64,
    },
    Symlink(EntryIndex),
    /// A piece of a large file that an earlier run made durable: hashed
    /// from the temporary, so the file's checksum is the same as if it had
    /// been copied in one go. Never reads the source.
    Rehash {
        index: EntryIndex,
        piece: usize,
    },
}

pub(super) enum Done {
    Copied(Ready),
    Failed(EntryIndex, String),
}

/// The most small files one worker takes from the work list at once.
pub(super) const SPAN_ITEMS_MAX: usize = 256;

/// Splits the work list into the spans workers take whole: a run of small
/// files and symlinks landing in one directory (at most
/// [`SPAN_ITEMS_MAX`]), or a single range or rehash. Creating a file takes
/// its directory's lock for writing, so two workers filling one directory
/// wait on each other (measured on ext4: a sixth of the run spent spinning
/// on that lock); one worker per directory at a time keeps them apart.
pub(super) fn spans<'a>(
    work: &[Work],
    directory_of: impl Fn(EntryIndex) -> &'a std::path::Path,
) -> Vec<std::ops::Range<usize>> {
    let mut spans = Vec::new();
    let mut start = 0;
    let mut directory: Option<&std::path::Path> = None;
    for (at, item) in work.iter().enumerate() {
        let here = match *item {
            Work::Whole(index) | Work::Symlink(index) => Some(directory_of(index)),
            Work::Range { .. } | Work::Rehash { .. } => None,
        };
        let joins = here.is_some() && here == directory && at - start < SPAN_ITEMS_MAX;
        if at > start && !joins {
            spans.push(start..at);
            start = at;
        }
        directory = here;
    }
    if start < work.len() {
        spans.push(start..work.len());
    }
    spans
}
