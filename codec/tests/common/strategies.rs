//! proptest strategies for every wire type of `lepus-codec`: short and long strings, field
//! values of every type letter, nested tables and arrays, basic properties, content headers,
//! every `Method` variant and whole frames.

use bytes::Bytes;
use lepus_codec::{
    BASIC_CLASS_ID, BasicProperties, ContentHeader, Decimal, FieldArray, FieldTable, FieldValue, Frame, Method,
    ReplyCode, ShortStr,
    method::{access, basic, channel, confirm, connection, exchange, queue, tx},
};
use proptest::{collection::vec, option, prelude::*, strategy::Union};

/// Deepest table/array nesting [`field_table`] generates (the outermost table is level 1).
pub(crate) const MAX_NESTING: usize = 5;

/// A short string of arbitrary bytes (not only UTF-8), 0 to 255 bytes long. Mostly short,
/// to keep cases fast, but every length is reachable and 0 and 255 come up often.
pub(crate) fn short_str() -> impl Strategy<Value = ShortStr> + Clone {
    prop_oneof![
        4 => vec(any::<u8>(), 0..=16),
        2 => vec(any::<u8>(), 0..=ShortStr::MAX_LEN),
        1 => Just(Vec::new()),
        1 => vec(any::<u8>(), ShortStr::MAX_LEN..=ShortStr::MAX_LEN),
    ]
    .prop_map(|bytes| ShortStr::try_from(bytes.as_slice()).expect("at most 255 bytes"))
}

/// A long string (`longstr`, field types `S` and `x`) of arbitrary bytes.
pub(crate) fn long_str() -> impl Strategy<Value = Bytes> + Clone {
    prop_oneof![
        4 => vec(any::<u8>(), 0..=32),
        1 => vec(any::<u8>(), 0..=1024),
    ]
    .prop_map(Bytes::from)
}

/// A field value of one of the non-container type letters (`t b B s u I i l f d D S T V x`).
/// Floats come from arbitrary bit patterns, NaNs and signed zeros included.
pub(crate) fn scalar_field_value() -> impl Strategy<Value = FieldValue> + Clone {
    prop_oneof![
        any::<bool>().prop_map(FieldValue::Bool),
        any::<i8>().prop_map(FieldValue::I8),
        any::<u8>().prop_map(FieldValue::U8),
        any::<i16>().prop_map(FieldValue::I16),
        any::<u16>().prop_map(FieldValue::U16),
        any::<i32>().prop_map(FieldValue::I32),
        any::<u32>().prop_map(FieldValue::U32),
        any::<i64>().prop_map(FieldValue::I64),
        any::<u32>().prop_map(|bits| FieldValue::F32(f32::from_bits(bits))),
        any::<u64>().prop_map(|bits| FieldValue::F64(f64::from_bits(bits))),
        (any::<u8>(), any::<u32>()).prop_map(|(scale, value)| FieldValue::Decimal(Decimal { scale, value })),
        long_str().prop_map(FieldValue::LongString),
        any::<u64>().prop_map(FieldValue::Timestamp),
        Just(FieldValue::Void),
        long_str().prop_map(FieldValue::ByteArray),
    ]
}

/// A field value of any type letter, arrays (`A`) and tables (`F`) nested at most
/// `MAX_NESTING - 1` levels deep, so that a table holding it nests at most [`MAX_NESTING`].
pub(crate) fn field_value() -> impl Strategy<Value = FieldValue> + Clone {
    scalar_field_value().prop_recursive((MAX_NESTING - 1) as u32, 96, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..=4).prop_map(|values| FieldValue::Array(FieldArray(values))),
            vec((short_str(), inner), 0..=4).prop_map(|entries| FieldValue::Table(entries.into_iter().collect())),
        ]
    })
}

/// A field table, nested at most [`MAX_NESTING`] levels deep. Keys are arbitrary short
/// strings and may repeat: a table keeps duplicates in wire order.
pub(crate) fn field_table() -> impl Strategy<Value = FieldTable> + Clone {
    vec((short_str(), field_value()), 0..=4).prop_map(|entries| entries.into_iter().collect())
}

/// A field array, nested at most [`MAX_NESTING`] levels deep.
pub(crate) fn field_array() -> impl Strategy<Value = FieldArray> + Clone {
    vec(field_value(), 0..=4).prop_map(FieldArray)
}

/// An arbitrary subset of the 14 basic properties, each with an arbitrary value.
pub(crate) fn basic_properties() -> impl Strategy<Value = BasicProperties> + Clone {
    let s = || option::of(short_str());
    (
        (s(), s(), option::of(field_table()), option::of(any::<u8>()), option::of(any::<u8>()), s(), s()),
        (s(), s(), option::of(any::<u64>()), s(), s(), s(), s()),
    )
        .prop_map(
            |(
                (content_type, content_encoding, headers, delivery_mode, priority, correlation_id, reply_to),
                (expiration, message_id, timestamp, kind, user_id, app_id, cluster_id),
            )| BasicProperties {
                content_type,
                content_encoding,
                headers,
                delivery_mode,
                priority,
                correlation_id,
                reply_to,
                expiration,
                message_id,
                timestamp,
                kind,
                user_id,
                app_id,
                cluster_id,
            },
        )
}

/// A content header: class basic (the only one that decodes), arbitrary weight, body size
/// and properties.
pub(crate) fn content_header() -> impl Strategy<Value = ContentHeader> + Clone {
    (any::<u16>(), any::<u64>(), basic_properties()).prop_map(|(weight, body_size, properties)| ContentHeader {
        class_id: BASIC_CLASS_ID,
        weight,
        body_size,
        properties,
    })
}

/// The strategy each method argument type is generated with.
pub(crate) trait ArbArg: Sized + std::fmt::Debug {
    /// An arbitrary value of the argument's wire domain.
    fn arb() -> BoxedStrategy<Self>;
}

macro_rules! arb_any {
    ($($t:ty),*) => {$(
        impl ArbArg for $t {
            fn arb() -> BoxedStrategy<Self> {
                any::<$t>().boxed()
            }
        }
    )*};
}

arb_any!(bool, u8, u16, u32, u64);

impl ArbArg for ShortStr {
    fn arb() -> BoxedStrategy<Self> {
        short_str().boxed()
    }
}

impl ArbArg for Bytes {
    fn arb() -> BoxedStrategy<Self> {
        long_str().boxed()
    }
}

impl ArbArg for FieldTable {
    fn arb() -> BoxedStrategy<Self> {
        field_table().boxed()
    }
}

impl ArbArg for ReplyCode {
    fn arb() -> BoxedStrategy<Self> {
        any::<u16>().prop_map(ReplyCode).boxed()
    }
}

/// The strategy for one method argument; the name only drives the macro's repetition.
fn arg<T: ArbArg>(_field: &'static str) -> BoxedStrategy<T> {
    T::arb()
}

/// One strategy arm per method struct: every field generated arbitrarily. The struct
/// literal names every field (no `..`), so a field added to a method breaks the build here.
macro_rules! method_arm {
    ($module:ident :: $ty:ident {}) => {
        ($module::$ty::NAME, Just(Method::from($module::$ty {})).boxed())
    };
    ($module:ident :: $ty:ident { $($field:ident),+ }) => {
        (
            $module::$ty::NAME,
            ($(arg(stringify!($field)),)+)
                .prop_map(|($($field,)+)| Method::from($module::$ty { $($field),+ }))
                .boxed(),
        )
    };
}

macro_rules! method_arms {
    ($($module:ident :: $ty:ident { $($field:ident),* })*) => {
        vec![$(method_arm!($module::$ty { $($field),* }),)*]
    };
}

/// One `(name, strategy)` arm per `Method` variant, in the order of `Method::ALL`.
pub(crate) fn method_arms() -> Vec<(&'static str, BoxedStrategy<Method>)> {
    method_arms! {
        connection::Start { version_major, version_minor, server_properties, mechanisms, locales }
        connection::StartOk { client_properties, mechanism, response, locale }
        connection::Secure { challenge }
        connection::SecureOk { response }
        connection::Tune { channel_max, frame_max, heartbeat }
        connection::TuneOk { channel_max, frame_max, heartbeat }
        connection::Open { virtual_host, capabilities, insist }
        connection::OpenOk { known_hosts }
        connection::Close { reply_code, reply_text, class_id, method_id }
        connection::CloseOk {}
        connection::Blocked { reason }
        connection::Unblocked {}
        connection::UpdateSecret { new_secret, reason }
        connection::UpdateSecretOk {}
        channel::Open { out_of_band }
        channel::OpenOk { channel_id }
        channel::Flow { active }
        channel::FlowOk { active }
        channel::Close { reply_code, reply_text, class_id, method_id }
        channel::CloseOk {}
        access::Request { realm, exclusive, passive, active, write, read }
        access::RequestOk { ticket }
        exchange::Declare { ticket, exchange, kind, passive, durable, auto_delete, internal, nowait, arguments }
        exchange::DeclareOk {}
        exchange::Delete { ticket, exchange, if_unused, nowait }
        exchange::DeleteOk {}
        exchange::Bind { ticket, destination, source, routing_key, nowait, arguments }
        exchange::BindOk {}
        exchange::Unbind { ticket, destination, source, routing_key, nowait, arguments }
        exchange::UnbindOk {}
        queue::Declare { ticket, queue, passive, durable, exclusive, auto_delete, nowait, arguments }
        queue::DeclareOk { queue, message_count, consumer_count }
        queue::Bind { ticket, queue, exchange, routing_key, nowait, arguments }
        queue::BindOk {}
        queue::Purge { ticket, queue, nowait }
        queue::PurgeOk { message_count }
        queue::Delete { ticket, queue, if_unused, if_empty, nowait }
        queue::DeleteOk { message_count }
        queue::Unbind { ticket, queue, exchange, routing_key, arguments }
        queue::UnbindOk {}
        basic::Qos { prefetch_size, prefetch_count, global }
        basic::QosOk {}
        basic::Consume { ticket, queue, consumer_tag, no_local, no_ack, exclusive, nowait, arguments }
        basic::ConsumeOk { consumer_tag }
        basic::Cancel { consumer_tag, nowait }
        basic::CancelOk { consumer_tag }
        basic::Publish { ticket, exchange, routing_key, mandatory, immediate }
        basic::Return { reply_code, reply_text, exchange, routing_key }
        basic::Deliver { consumer_tag, delivery_tag, redelivered, exchange, routing_key }
        basic::Get { ticket, queue, no_ack }
        basic::GetOk { delivery_tag, redelivered, exchange, routing_key, message_count }
        basic::GetEmpty { cluster_id }
        basic::Ack { delivery_tag, multiple }
        basic::Reject { delivery_tag, requeue }
        basic::RecoverAsync { requeue }
        basic::Recover { requeue }
        basic::RecoverOk {}
        basic::Nack { delivery_tag, multiple, requeue }
        tx::Select {}
        tx::SelectOk {}
        tx::Commit {}
        tx::CommitOk {}
        tx::Rollback {}
        tx::RollbackOk {}
        confirm::Select { nowait }
        confirm::SelectOk {}
    }
}

/// Any method, each variant equally likely.
pub(crate) fn method() -> impl Strategy<Value = Method> + Clone {
    Union::new(method_arms().into_iter().map(|(_, arm)| arm))
}

/// A `basic.publish` with arbitrary arguments.
pub(crate) fn publish() -> impl Strategy<Value = basic::Publish> + Clone {
    (any::<u16>(), short_str(), short_str(), any::<bool>(), any::<bool>()).prop_map(
        |(ticket, exchange, routing_key, mandatory, immediate)| basic::Publish {
            ticket,
            exchange,
            routing_key,
            mandatory,
            immediate,
        },
    )
}

/// A body frame payload.
pub(crate) fn body() -> impl Strategy<Value = Bytes> + Clone {
    prop_oneof![
        4 => vec(any::<u8>(), 0..=64),
        1 => vec(any::<u8>(), 0..=4096),
    ]
    .prop_map(Bytes::from)
}

/// Any frame: a method, content header or body on an arbitrary channel, or a heartbeat
/// (which always travels on channel 0).
pub(crate) fn frame() -> impl Strategy<Value = Frame> + Clone {
    prop_oneof![
        3 => (any::<u16>(), method()).prop_map(|(channel, m)| Frame::Method(channel, m)),
        2 => (any::<u16>(), content_header()).prop_map(|(channel, h)| Frame::Header(channel, h)),
        2 => (any::<u16>(), body()).prop_map(|(channel, b)| Frame::Body(channel, b)),
        1 => Just(Frame::Heartbeat),
    ]
}

/// `len` bytes of a deterministic pattern picked by `seed`: large bodies without asking
/// proptest for hundreds of thousands of values, and distinct enough to catch reordering.
pub(crate) fn patterned_body(seed: u64, len: usize) -> Bytes {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 56) as u8
        })
        .collect::<Vec<u8>>()
        .into()
}
