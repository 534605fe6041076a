//! Class `channel` (20): open, flow control and close.

use bytes::Bytes;

use super::macros::method_structs;
use crate::{ReplyCode, ShortStr};

method_structs! {
    /// Opens a channel.
    Open {
        /// Deprecated, empty.
        out_of_band: ShortStr = shortstr,
    }

    /// The channel is open.
    OpenOk {
        /// Deprecated, empty.
        channel_id: Bytes = longstr,
    }

    /// Asks the peer to pause (`false`) or resume (`true`) sending content.
    Flow {
        /// Resume if true.
        active: bool = bit,
    }

    /// Confirms a flow change.
    FlowOk {
        /// The state now in force.
        active: bool = bit,
    }

    /// Closes the channel, with the reason.
    Close {
        /// Why (200 for a normal close).
        reply_code: ReplyCode = short (ReplyCode::REPLY_SUCCESS),
        /// Human-readable reason.
        reply_text: ShortStr = shortstr,
        /// Class of the method that caused the close, or 0.
        class_id: u16 = short,
        /// Method that caused the close, or 0.
        method_id: u16 = short,
    }

    /// Confirms a close; the channel id may be reused after it.
    CloseOk {}
}
