//! Class `exchange` (40): declare, delete, and exchange-to-exchange bindings.

use super::{lit, macros::method_structs};
use crate::{FieldTable, ShortStr};

method_structs! {
    /// Declares an exchange (creates it, or checks it with `passive`).
    Declare {
        /// Deprecated, 0.
        ticket: u16 = short,
        /// Exchange name.
        exchange: ShortStr = shortstr,
        /// `direct`, `fanout`, `topic`, `headers`, or a plugin type.
        kind: ShortStr = shortstr (lit("direct")),
        /// Only check that it exists.
        passive: bool = bit,
        /// Survive a broker restart.
        durable: bool = bit,
        /// Delete when the last binding goes.
        auto_delete: bool = bit,
        /// Not publishable directly, only via exchange bindings.
        internal: bool = bit,
        /// Do not answer with declare-ok.
        nowait: bool = bit,
        /// Extra arguments (`alternate-exchange`, ...).
        arguments: FieldTable = table,
    }

    /// The exchange exists.
    DeclareOk {}

    /// Deletes an exchange.
    Delete {
        /// Deprecated, 0.
        ticket: u16 = short,
        /// Exchange name.
        exchange: ShortStr = shortstr,
        /// Only if it has no bindings.
        if_unused: bool = bit,
        /// Do not answer with delete-ok.
        nowait: bool = bit,
    }

    /// The exchange is gone.
    DeleteOk {}

    /// Binds an exchange to another.
    Bind {
        /// Deprecated, 0.
        ticket: u16 = short,
        /// Exchange that receives.
        destination: ShortStr = shortstr,
        /// Exchange that routes.
        source: ShortStr = shortstr,
        /// Binding key.
        routing_key: ShortStr = shortstr,
        /// Do not answer with bind-ok.
        nowait: bool = bit,
        /// Binding arguments (headers exchanges).
        arguments: FieldTable = table,
    }

    /// The binding exists.
    BindOk {}

    /// Removes an exchange-to-exchange binding.
    Unbind {
        /// Deprecated, 0.
        ticket: u16 = short,
        /// Exchange that receives.
        destination: ShortStr = shortstr,
        /// Exchange that routes.
        source: ShortStr = shortstr,
        /// Binding key.
        routing_key: ShortStr = shortstr,
        /// Do not answer with unbind-ok.
        nowait: bool = bit,
        /// Binding arguments.
        arguments: FieldTable = table,
    }

    /// The binding is gone.
    UnbindOk {}
}
