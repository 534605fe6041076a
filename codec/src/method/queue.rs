//! Class `queue` (50): declare, bind, unbind, purge, delete.

use super::macros::method_structs;
use crate::{FieldTable, ShortStr};

method_structs! {
    /// Declares a queue (creates it, or checks it with `passive`); an empty name asks the
    /// server to choose one.
    Declare {
        /// Deprecated, 0.
        ticket: u16 = short,
        /// Queue name, or empty for a server-named queue.
        queue: ShortStr = shortstr,
        /// Only check that it exists (and read its counts).
        passive: bool = bit,
        /// Survive a broker restart.
        durable: bool = bit,
        /// Only this connection may use it; deleted when it closes.
        exclusive: bool = bit,
        /// Delete when the last consumer goes.
        auto_delete: bool = bit,
        /// Do not answer with declare-ok.
        nowait: bool = bit,
        /// Queue arguments (`x-message-ttl`, `x-queue-type`, ...).
        arguments: FieldTable = table,
    }

    /// The queue exists.
    DeclareOk {
        /// Its name (the server's choice for a server-named queue).
        queue: ShortStr = shortstr,
        /// Messages ready for delivery.
        message_count: u32 = long,
        /// Active consumers.
        consumer_count: u32 = long,
    }

    /// Binds a queue to an exchange.
    Bind {
        /// Deprecated, 0.
        ticket: u16 = short,
        /// Queue name.
        queue: ShortStr = shortstr,
        /// Exchange name.
        exchange: ShortStr = shortstr,
        /// Binding key.
        routing_key: ShortStr = shortstr,
        /// Do not answer with bind-ok.
        nowait: bool = bit,
        /// Binding arguments (headers exchanges: `x-match`, ...).
        arguments: FieldTable = table,
    }

    /// The binding exists.
    BindOk {}

    /// Removes every ready message.
    Purge {
        /// Deprecated, 0.
        ticket: u16 = short,
        /// Queue name.
        queue: ShortStr = shortstr,
        /// Do not answer with purge-ok.
        nowait: bool = bit,
    }

    /// The queue was purged.
    PurgeOk {
        /// Messages removed.
        message_count: u32 = long,
    }

    /// Deletes a queue.
    Delete {
        /// Deprecated, 0.
        ticket: u16 = short,
        /// Queue name.
        queue: ShortStr = shortstr,
        /// Only if it has no consumers.
        if_unused: bool = bit,
        /// Only if it has no messages.
        if_empty: bool = bit,
        /// Do not answer with delete-ok.
        nowait: bool = bit,
    }

    /// The queue is gone.
    DeleteOk {
        /// Messages deleted with it.
        message_count: u32 = long,
    }

    /// Removes a binding.
    Unbind {
        /// Deprecated, 0.
        ticket: u16 = short,
        /// Queue name.
        queue: ShortStr = shortstr,
        /// Exchange name.
        exchange: ShortStr = shortstr,
        /// Binding key.
        routing_key: ShortStr = shortstr,
        /// Binding arguments.
        arguments: FieldTable = table,
    }

    /// The binding is gone.
    UnbindOk {}
}
