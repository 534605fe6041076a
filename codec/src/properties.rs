//! The content header frame and the 14 basic properties with their flag words.

use crate::{
    DecodeError, EncodeError, FieldTable, ShortStr,
    wire::{Reader, Writer},
};

/// The class id of `basic`, the only class that carries content.
pub const BASIC_CLASS_ID: u16 = 60;

macro_rules! basic_properties {
    ($($(#[$doc:meta])* $field:ident: $ty:ty = $wire:ident, bit $bit:literal;)*) => {
        /// The 14 properties of `basic` content; absent ones are `None` and cost nothing on
        /// the wire.
        ///
        /// ```
        /// use lepus_codec::{BasicProperties, ShortStr};
        /// let props = BasicProperties {
        ///     content_type: Some(ShortStr::from_static("application/json").unwrap()),
        ///     delivery_mode: Some(2), // persistent
        ///     ..BasicProperties::default()
        /// };
        /// assert_eq!(props.flags(), 0x8000 | 0x1000);
        /// ```
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct BasicProperties {
            $($(#[$doc])* pub $field: Option<$ty>,)*
        }

        impl BasicProperties {
            /// Each property's specification name, wire type and flag bit, in wire order.
            pub const SPEC: &'static [(&'static str, &'static str, u16)] = &[
                $((stringify!($field), stringify!($wire), 1 << $bit),)*
            ];

            /// The first property-flags word for the properties that are present.
            pub fn flags(&self) -> u16 {
                let mut flags = 0u16;
                $(if self.$field.is_some() { flags |= 1 << $bit; })*
                flags
            }

            /// Reads the flags and the properties they announce into `self`, which is
            /// expected to be all `None`: filled in place, the properties (hundreds of
            /// bytes) are not moved again on their way into the frame.
            #[inline]
            pub(crate) fn read_into(&mut self, r: &mut Reader<'_>) -> Result<(), DecodeError> {
                let flags = read_flags(r)?;
                $(if flags & (1 << $bit) != 0 { self.$field = Some(r.$wire()?); })*
                Ok(())
            }

            pub(crate) fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
                w.short(self.flags())?;
                $(if let Some(v) = &self.$field { basic_properties!(@write w, $wire, v); })*
                Ok(())
            }
        }
    };
    (@write $w:ident, shortstr, $v:ident) => { $w.shortstr($v)? };
    (@write $w:ident, table, $v:ident) => { $w.table($v)? };
    (@write $w:ident, $wire:ident, $v:ident) => { $w.$wire(*$v)? };
}

basic_properties! {
    /// MIME content type, e.g. `application/json`.
    content_type: ShortStr = shortstr, bit 15;
    /// MIME content encoding, e.g. `gzip`.
    content_encoding: ShortStr = shortstr, bit 14;
    /// Application headers (also used by headers exchanges and `x-death`).
    headers: FieldTable = table, bit 13;
    /// 1 = transient, 2 = persistent.
    delivery_mode: u8 = octet, bit 12;
    /// Priority, 0 to 9 (or the queue's `x-max-priority`).
    priority: u8 = octet, bit 11;
    /// Correlates a reply with its request.
    correlation_id: ShortStr = shortstr, bit 10;
    /// Where to send a reply (queue name or `amq.rabbitmq.reply-to`).
    reply_to: ShortStr = shortstr, bit 9;
    /// Per-message TTL in milliseconds, as a decimal string.
    expiration: ShortStr = shortstr, bit 8;
    /// Application message id.
    message_id: ShortStr = shortstr, bit 7;
    /// Seconds since the epoch.
    timestamp: u64 = timestamp, bit 6;
    /// Application message type name (`type` on the wire).
    kind: ShortStr = shortstr, bit 5;
    /// Creating user; RabbitMQ checks it against the connection's user.
    user_id: ShortStr = shortstr, bit 4;
    /// Creating application.
    app_id: ShortStr = shortstr, bit 3;
    /// Deprecated; must be empty.
    cluster_id: ShortStr = shortstr, bit 2;
}

/// Every flag bit that names a basic property.
const KNOWN_FLAGS: u16 = 0xFFFC;

/// Reads the property-flag words: bit 0 of each says another word follows. Basic has 14
/// properties, so only the first word may carry flags; later words must be empty.
fn read_flags(r: &mut Reader<'_>) -> Result<u16, DecodeError> {
    let first = r.short()?;
    if first & !KNOWN_FLAGS & !1 != 0 {
        return Err(DecodeError::UnknownPropertyFlags { flags: first & !KNOWN_FLAGS & !1 });
    }
    let mut word = first;
    while word & 1 != 0 {
        word = r.short()?;
        if word & !1 != 0 {
            return Err(DecodeError::UnknownPropertyFlags { flags: word & !1 });
        }
    }
    Ok(first & KNOWN_FLAGS)
}

/// A content header frame's payload: which class, how big the body is, and the properties.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContentHeader {
    /// Always 60 (basic); checked on decode.
    pub class_id: u16,
    /// Unused by 0-9-1 and always 0 in practice; kept so headers re-encode exactly.
    pub weight: u16,
    /// Total body size in bytes, over all following body frames.
    pub body_size: u64,
    /// The message properties.
    pub properties: BasicProperties,
}

impl ContentHeader {
    /// A basic-class header for a body of `body_size` bytes.
    pub fn new(body_size: u64, properties: BasicProperties) -> Self {
        ContentHeader { class_id: BASIC_CLASS_ID, weight: 0, body_size, properties }
    }

    /// Reads a content header payload into `self`, expected to be the default: in place,
    /// like [`BasicProperties::read_into`].
    #[inline]
    pub(crate) fn read_into(&mut self, r: &mut Reader<'_>) -> Result<(), DecodeError> {
        let class_id = r.short()?;
        if class_id != BASIC_CLASS_ID {
            return Err(DecodeError::HeaderClass(class_id));
        }
        self.class_id = class_id;
        self.weight = r.short()?;
        self.body_size = r.longlong()?;
        self.properties.read_into(r)?;
        r.finish("content header")
    }

    pub(crate) fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.short(self.class_id)?;
        w.short(self.weight)?;
        w.longlong(self.body_size)?;
        self.properties.write(w)
    }
}
