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
    /// The connection closed for good, with why.
    Closed(Error),
    /// The connection was lost and recovery starts: handles stay usable, publishes and calls
    /// wait (or fail fast, see [`crate::RecoveryOptions::while_disconnected`]).
    Disconnected {
        /// What ended the connection.
        reason: Error,
    },
    /// Reconnection attempt `attempt` (from 1) is about to start, to `address`.
    Recovering {
        /// The attempt, from 1.
        attempt: u32,
        /// The broker address it tries.
        address: String,
    },
    /// The connection is back, its topology re-declared; handles carry on.
    Recovered {
        /// The broker address it is now connected to.
        address: String,
    },
    /// Recovery gave up; the connection is closed (a [`ConnectionEvent::Closed`] follows).
    RecoveryFailed(Error),
    /// Re-declaring one recorded object failed (e.g. 406 `PRECONDITION_FAILED`: it exists with
    /// other arguments); recovery carries on with the rest.
    TopologyRecoveryFailed {
        /// What could not be re-declared (`queue "orders"`, ...).
        what: String,
        /// The broker's answer.
        error: Error,
    },
}
