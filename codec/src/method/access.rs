//! Class `access` (30): deprecated realms, kept for completeness.

use super::{lit, macros::method_structs};
use crate::ShortStr;

method_structs! {
    /// Requests an access ticket (deprecated; RabbitMQ answers with ticket 1).
    Request {
        /// The realm.
        realm: ShortStr = shortstr (lit("/data")),
        /// Exclusive access.
        exclusive: bool = bit,
        /// Passive access.
        passive: bool = bit (true),
        /// Active access.
        active: bool = bit (true),
        /// Write access.
        write: bool = bit (true),
        /// Read access.
        read: bool = bit (true),
    }

    /// The granted ticket.
    RequestOk {
        /// The ticket.
        ticket: u16 = short (1),
    }
}
