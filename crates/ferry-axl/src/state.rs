//! AXL 0.9's per-id state machine, kept beside ferry's transfer state so
//! that calls in the wrong state return what AXL returns: a second
//! `AXL_Wait`, `AXL_Cancel` after the wait, `AXL_Free` of a dispatched
//! transfer not waited for all fail, as in AXL (`AXL_Stop` follows from
//! them, as AXL's is cancel, wait and free of every id).

/// AXL's `axl_xfer_state_t`, the states that matter to return codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AxlState {
    /// After `AXL_Create` (also of a transfer reloaded from a state file).
    Created,
    /// After `AXL_Dispatch` or `AXL_Resume`.
    Dispatched,
    /// Inside `AXL_Wait`.
    Waiting,
    /// After `AXL_Wait`, whatever it returned.
    Completed,
    /// After `AXL_Cancel` of a transfer that had not finished.
    Canceled,
}

impl AxlState {
    pub fn name(self) -> &'static str {
        match self {
            AxlState::Created => "created (not dispatched)",
            AxlState::Dispatched => "dispatched",
            AxlState::Waiting => "being waited for",
            AxlState::Completed => "waited for already",
            AxlState::Canceled => "cancelled",
        }
    }

    pub fn may_dispatch(self) -> bool {
        self == AxlState::Created
    }

    pub fn may_wait(self) -> bool {
        self == AxlState::Dispatched
    }

    pub fn may_cancel(self) -> bool {
        matches!(self, AxlState::Dispatched | AxlState::Waiting)
    }

    pub fn may_free(self) -> bool {
        matches!(
            self,
            AxlState::Created | AxlState::Completed | AxlState::Canceled
        )
    }
}
