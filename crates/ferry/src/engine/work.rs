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
