//! Class `connection` (10): handshake, tuning, close, flow alarms and secret refresh.

use bytes::Bytes;

use super::{lit, macros::method_structs};
use crate::{FieldTable, ReplyCode, ShortStr};

method_structs! {
    /// The server proposes a protocol version, its properties and SASL mechanisms.
    Start {
        /// Protocol major version (0).
        version_major: u8 = octet (0),
        /// Protocol minor version (9).
        version_minor: u8 = octet (9),
        /// Server properties: product, version, `capabilities`, ...
        server_properties: FieldTable = table,
        /// Space-separated SASL mechanisms, e.g. `PLAIN AMQPLAIN`.
        mechanisms: Bytes = longstr (Bytes::from_static(b"PLAIN")),
        /// Space-separated locales.
        locales: Bytes = longstr (Bytes::from_static(b"en_US")),
    }

    /// The client picks a mechanism and answers with its properties and credentials.
    StartOk {
        /// Client properties: product, version, platform, `capabilities`, `connection_name`.
        client_properties: FieldTable = table,
        /// The chosen SASL mechanism.
        mechanism: ShortStr = shortstr (lit("PLAIN")),
        /// The SASL response (for PLAIN: `\0user\0password`). Secret: never log it.
        response: Bytes = longstr,
        /// The chosen locale.
        locale: ShortStr = shortstr (lit("en_US")),
    }

    /// A SASL challenge.
    Secure {
        /// Challenge data.
        challenge: Bytes = longstr,
    }

    /// The answer to a SASL challenge.
    SecureOk {
        /// Response data. Secret: never log it.
        response: Bytes = longstr,
    }

    /// The server proposes limits.
    Tune {
        /// Highest channel number (0 = no limit).
        channel_max: u16 = short,
        /// Largest frame in bytes (0 = no limit).
        frame_max: u32 = long,
        /// Heartbeat interval in seconds (0 = none).
        heartbeat: u16 = short,
    }

    /// The client's agreed limits.
    TuneOk {
        /// Highest channel number.
        channel_max: u16 = short,
        /// Largest frame in bytes.
        frame_max: u32 = long,
        /// Heartbeat interval in seconds.
        heartbeat: u16 = short,
    }

    /// Opens a virtual host.
    Open {
        /// The virtual host.
        virtual_host: ShortStr = shortstr (lit("/")),
        /// Deprecated, empty.
        capabilities: ShortStr = shortstr,
        /// Deprecated, false.
        insist: bool = bit,
    }

    /// The virtual host is open.
    OpenOk {
        /// Deprecated, empty.
        known_hosts: ShortStr = shortstr,
    }

    /// Closes the connection, with the reason.
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

    /// Confirms a close.
    CloseOk {}

    /// The broker stopped reading this connection's publishes (memory or disk alarm).
    Blocked {
        /// The alarm, e.g. `low on memory`.
        reason: ShortStr = shortstr,
    }

    /// The broker resumed.
    Unblocked {}

    /// Replaces the connection's secret (OAuth token refresh).
    UpdateSecret {
        /// The new secret. Never log it.
        new_secret: Bytes = longstr,
        /// Why.
        reason: ShortStr = shortstr,
    }

    /// The new secret was accepted.
    UpdateSecretOk {}
}
