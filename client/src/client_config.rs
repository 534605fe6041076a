//! What the client presents in the handshake: properties, capabilities, credentials.

use lepus_codec::{FieldTable, FieldValue, ShortStr};

use crate::{ConnectionOptions, auth, proto::Config};

/// The capabilities lepus implements; the broker enables its extensions only for clients
/// that advertise them.
pub(crate) const CAPABILITIES: [&str; 8] = [
    "publisher_confirms",
    "exchange_exchange_bindings",
    "basic.nack",
    "consumer_cancel_notify",
    "connection.blocked",
    "authentication_failure_close",
    "per_consumer_qos",
    "direct_reply_to",
];

/// The client properties sent in `connection.start-ok`.
pub(crate) fn client_properties(connection_name: Option<&str>) -> FieldTable {
    let mut capabilities = FieldTable::new();
    for name in CAPABILITIES {
        // Each name is a short literal.
        let _ = capabilities.insert(name, true);
    }
    let mut props = FieldTable::new();
    let _ = props.insert("product", "lepus");
    let _ = props.insert("version", env!("CARGO_PKG_VERSION"));
    let _ = props.insert("platform", "Rust");
    // Shown by the management UI beside the product; the licence until the project has a
    // public home to point at.
    let _ = props.insert("information", concat!("Licensed under ", env!("CARGO_PKG_LICENSE")));
    let _ = props.insert("capabilities", FieldValue::Table(capabilities));
    if let Some(name) = connection_name {
        let _ = props.insert("connection_name", name);
    }
    props
}

/// The state machine's configuration for these options. A vhost over 255 bytes cannot be
/// sent; it is an error rather than a truncation that would open another vhost.
pub(crate) fn build(options: &ConnectionOptions, credentials: &crate::Credentials) -> Result<Config, crate::Error> {
    let mechanism = options.get_auth_mechanism();
    Ok(Config {
        vhost: ShortStr::try_from(options.get_vhost())?,
        mechanism: mechanism.name(),
        sasl_response: auth::sasl_response(mechanism, credentials),
        client_properties: client_properties(options.get_connection_name()),
        channel_max: options.get_channel_max(),
        frame_max: options.get_frame_max(),
        heartbeat: options.get_heartbeat(),
        max_message_size: options.get_max_message_size(),
        control_frame_max: lepus_codec::Limits::DEFAULT_CONTROL_FRAME_MAX,
    })
}
