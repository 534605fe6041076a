//! Class `confirm` (85): publisher confirms (a RabbitMQ extension).

use super::macros::method_structs;

method_structs! {
    /// Puts the channel in confirm mode: the broker acks or nacks every publish.
    Select {
        /// Do not answer with select-ok.
        nowait: bool = bit,
    }
    /// Confirm mode is on.
    SelectOk {}
}
