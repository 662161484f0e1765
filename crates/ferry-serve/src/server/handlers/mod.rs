//! What each route does. Anything that touches the store or the caller's
//! files runs on a blocking thread.

mod events;
mod transfers;

pub(super) use events::{events, metrics, wait};
pub(super) use transfers::{add, cancel, create, dispatch, limit, list, resume, status, verify};
