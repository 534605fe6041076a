//! Decoder limits: every size the peer controls is checked against one of these before
//! anything is buffered or allocated for it.

/// Limits applied while decoding. The defaults are safe for an untuned connection.
///
/// ```
/// use lepus_codec::Limits;
/// // After connection.tune-ok negotiated frame_max 131072:
/// let limits = Limits::default().tuned(131_072, Limits::DEFAULT_CONTROL_FRAME_MAX);
/// assert_eq!(limits.frame_max, 131_072);
/// assert_eq!(limits.control_frame_max, 256 << 10);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest whole frame (header + payload + end octet) accepted for body frames, and for
    /// every frame before tuning. The AMQP minimum, 4096, until `connection.tune`.
    pub frame_max: u32,
    /// Largest method or content-header frame. RabbitMQ ignores the tuned `frame_max` for
    /// the frames it sends other than bodies (a 20 KB header frame on a connection tuned to
    /// 4096 is normal), so these get their own cap; it is never below `frame_max`.
    pub control_frame_max: u32,
    /// Deepest nesting of field tables and arrays (the outermost table is level 1).
    /// Decoding recurses once per level (about 0.5 KiB of stack in release builds, 1.6 KiB
    /// in debug), so keep it small: the default, 64, is safe on a 256 KiB stack.
    pub max_depth: usize,
    /// Largest message body accepted, as announced by a content header.
    pub max_message_size: u64,
}

impl Limits {
    /// The AMQP minimum frame size, in force before `connection.tune`.
    pub const FRAME_MIN_SIZE: u32 = 4096;
    /// The default cap on method/header frames after tuning (256 KiB). RabbitMQ's own
    /// header frames stay around tens of KiB; a decoded field table can take up to ~80
    /// times its wire size (a 2-byte entry becomes a 72-byte one), so this cap is what
    /// bounds the memory one hostile frame can cost.
    pub const DEFAULT_CONTROL_FRAME_MAX: u32 = 256 << 10;
    /// The default field-table nesting limit.
    pub const DEFAULT_MAX_DEPTH: usize = 64;
    /// The default inbound message cap: RabbitMQ's own default maximum, 128 MiB.
    pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 128 << 20;

    /// Limits for a connection tuned to `frame_max`, with `control_frame_max` as the cap on
    /// method and header frames (raised to `frame_max` if it is lower; see
    /// [`Limits::DEFAULT_CONTROL_FRAME_MAX`]). A `frame_max` of 0 means the peers agreed on
    /// no limit; memory stays bounded all the same, by `control_frame_max`.
    #[must_use]
    pub fn tuned(self, frame_max: u32, control_frame_max: u32) -> Self {
        let frame_max = if frame_max == 0 { control_frame_max.max(Self::FRAME_MIN_SIZE) } else { frame_max };
        Limits { frame_max, control_frame_max: control_frame_max.max(frame_max), ..self }
    }

    /// The limit that applies to a frame of this type octet.
    pub(crate) fn for_frame_type(&self, frame_type: u8) -> u32 {
        if frame_type == crate::frame::FRAME_BODY { self.frame_max } else { self.control_frame_max.max(self.frame_max) }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            frame_max: Self::FRAME_MIN_SIZE,
            control_frame_max: Self::FRAME_MIN_SIZE,
            max_depth: Self::DEFAULT_MAX_DEPTH,
            max_message_size: Self::DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}
