//! `ConnectionEvent`: what happened to a connection as a whole, for [`crate::Connection::events`].

use crate::Error;

/// Something that happened to the connection as a whole.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// The broker blocked publishing (memory or disk alarm), with its reason.
    Blocked(String),
    /// The broker lifted the block.
    Unblocked,
    /// The connection closed, with why.
    Closed(Error),
}
