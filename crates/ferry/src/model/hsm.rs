//! The HSM words the store itself needs: a request's id and state, and a
//! file's state in the catalog. They live here, below the store, so that
//! the store's errors and events can name them without importing the HSM
//! coordinator (crate `ferry-hsm`), which stands above this crate.

use std::fmt;

use serde::Serialize;

/// A request's id: assigned by the store, never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct RequestId(pub i64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// `waiting → started → succeed | failed | canceled`; a started request
/// goes back to `waiting` when its lease expires or it failed and may be
/// retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestState {
    Waiting,
    Started,
    Succeed,
    Failed,
    Canceled,
}

impl RequestState {
    pub const ALL: [RequestState; 5] = [
        RequestState::Waiting,
        RequestState::Started,
        RequestState::Succeed,
        RequestState::Failed,
        RequestState::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Waiting => "waiting",
            RequestState::Started => "started",
            RequestState::Succeed => "succeed",
            RequestState::Failed => "failed",
            RequestState::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<RequestState> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RequestState::Succeed | RequestState::Failed | RequestState::Canceled
        )
    }

    /// The states a request may enter this one from; the store refuses any
    /// other transition.
    pub fn allowed_from(self) -> &'static [RequestState] {
        use RequestState::*;
        match self {
            // Back to the queue: lease expired, or a failure to retry.
            Waiting => &[Started],
            Started => &[Waiting],
            Succeed => &[Started],
            Failed => &[Started],
            Canceled => &[Waiting, Started],
        }
    }
}

impl fmt::Display for RequestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the archive holds of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CatalogState {
    /// Known, with no archived copy.
    Exists,
    /// The archived copy equals the file.
    Archived,
    /// The file changed since it was archived: the copy is stale.
    Dirty,
    /// Only the archive holds the data; the file is a sparse stub.
    Released,
    /// The archived copy is unusable (failed its checksum).
    Lost,
}

impl CatalogState {
    pub const ALL: [CatalogState; 5] = [
        CatalogState::Exists,
        CatalogState::Archived,
        CatalogState::Dirty,
        CatalogState::Released,
        CatalogState::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CatalogState::Exists => "exists",
            CatalogState::Archived => "archived",
            CatalogState::Dirty => "dirty",
            CatalogState::Released => "released",
            CatalogState::Lost => "lost",
        }
    }

    pub fn parse(s: &str) -> Option<CatalogState> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }

    /// The states a file may enter this one from (`None`: not in the
    /// catalog yet); the store refuses any other change.
    pub fn allowed_from(self) -> &'static [Option<CatalogState>] {
        use CatalogState::*;
        match self {
            // A remove of the archived copy.
            Exists => &[None, Some(Exists), Some(Archived), Some(Dirty), Some(Lost)],
            // An archive (again, after a loss too), or a restore that
            // brought the data back.
            Archived => &[
                None,
                Some(Exists),
                Some(Archived),
                Some(Dirty),
                Some(Released),
                Some(Lost),
            ],
            Dirty => &[Some(Archived)],
            Released => &[Some(Archived)],
            Lost => &[Some(Archived), Some(Released), Some(Dirty)],
        }
    }
}

impl fmt::Display for CatalogState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
