//! Frames from the broker and methods from the application, built from a step's argument
//! bytes. Most bytes pick from small tables of the values that matter, so that short inputs
//! reach deep states; the `Raw` step is where any value can come in.

use bytes::Bytes;
use lepus::proto::ChannelKey;
use lepus_codec::{
    BasicProperties, ContentHeader, FieldTable, FieldValue, Frame, Method, ReplyCode, ShortStr,
    method::{basic, channel as chan, confirm, connection, exchange, queue, tx},
};

use super::{
    ledger::Answer,
    script::{Call, Inbound},
};

/// Consumer tags the script can name; the ones the client sent are added after these.
pub(crate) const TAGS: [&str; 3] = ["a", "b", "c"];
/// (exchange, routing key) pairs for publishes and returns, so that they can match.
pub(crate) const ROUTES: [(&str, &str); 3] = [("", "q"), ("x", "rk"), ("x", "")];
const REPLY_CODES: [u16; 8] = [200, 311, 320, 403, 404, 406, 501, 541];
const FRAME_MAXES: [u32; 8] = [0, 4096, 131_072, 100, 8192, 65_536, u32::MAX, 4095];
const CHANNEL_MAXES: [u16; 8] = [0, 1, 2, 3, 2047, u16::MAX, 0, 1];
const HEARTBEATS: [u16; 8] = [0, 1, 2, 60, 580, u16::MAX, 0, 1];

/// Picks from a table by a byte.
pub(crate) fn pick<T: Copy>(table: &[T], b: u8) -> T {
    let at = usize::from(b) % table.len().max(1);
    table.get(at).or_else(|| table.first()).copied().unwrap_or_else(|| unreachable!("tables are not empty"))
}

pub(crate) fn short(s: &str) -> ShortStr {
    ShortStr::try_from(s).unwrap_or_default()
}

/// Body sizes: 0..=127 bytes exactly, then steps of 128 up to just over 16 KiB, so that a
/// body crosses `frame_max` (4096) and the message size caps (16 bytes, 8 KiB). Larger ones
/// would find nothing more, and a script of a few thousand steps would need hundreds of
/// megabytes to hold them, hiding what the client itself holds under `-rss_limit_mb`.
pub(crate) fn body_len(b: u8) -> usize {
    match b {
        0..0x80 => usize::from(b),
        _ => usize::from(b - 0x7F) * 128,
    }
}

/// A reply code: one of the usual ones, or any value for the odd byte.
fn reply_code(b: u8) -> ReplyCode {
    if b >= 0xF0 { ReplyCode(u16::from(b) << 4) } else { ReplyCode(pick(&REPLY_CODES, b)) }
}

/// A field table shaped by `d`: empty for 0; else `d & 0x7F` levels of nesting (past the
/// limit of 64 from 65 on), and with the high bit, 64 entries of 250 bytes that make the
/// method larger than a small `frame_max`.
pub(crate) fn table(d: u8) -> FieldTable {
    let mut table = FieldTable::new();
    if d == 0 {
        return table;
    }
    for _ in 0..(d & 0x7F) {
        let mut outer = FieldTable::new();
        outer.push(short("t"), FieldValue::Table(table));
        table = outer;
    }
    if d & 0x80 != 0 {
        let long = "v".repeat(250);
        for i in 0..64 {
            table.push(short(&format!("k{i}")), FieldValue::from(long.as_str()));
        }
    }
    table
}

/// The frames of one template. `channel` is the wire id the step picked; `tag` the
/// consumer tag it picked (the template may ignore both).
pub(crate) fn inbound(template: Inbound, channel: u16, tag: &ShortStr, c: u8, d: u8) -> Vec<Frame> {
    let on = |m: Method| vec![Frame::Method(channel, m)];
    match template {
        Inbound::Heartbeat => vec![Frame::Heartbeat],
        Inbound::Start => vec![Frame::Method(0, start(c, d).into())],
        Inbound::Secure => vec![Frame::Method(0, connection::Secure::default().into())],
        Inbound::Tune => {
            let tune = connection::Tune {
                channel_max: pick(&CHANNEL_MAXES, c >> 4),
                frame_max: pick(&FRAME_MAXES, c),
                heartbeat: pick(&HEARTBEATS, d),
            };
            vec![Frame::Method(0, tune.into())]
        }
        Inbound::OpenOk => vec![Frame::Method(0, connection::OpenOk::default().into())],
        Inbound::Close => {
            let close = connection::Close { reply_code: reply_code(c), reply_text: short("bye"), ..Default::default() };
            vec![Frame::Method(0, close.into())]
        }
        Inbound::CloseOk => vec![Frame::Method(0, connection::CloseOk {}.into())],
        Inbound::Blocked => vec![Frame::Method(0, connection::Blocked { reason: short("low on memory") }.into())],
        Inbound::Unblocked => vec![Frame::Method(0, connection::Unblocked {}.into())],
        Inbound::UpdateSecretOk => vec![Frame::Method(0, connection::UpdateSecretOk {}.into())],
        Inbound::ChannelClose => {
            on(chan::Close { reply_code: reply_code(c), reply_text: short("gone"), ..Default::default() }.into())
        }
        Inbound::Deliver => on(deliver(tag, u64::from(d)).into()),
        Inbound::Header => vec![Frame::Header(channel, header(body_len(c), d))],
        Inbound::Body => vec![Frame::Body(channel, Bytes::from(vec![d; body_len(c)]))],
        Inbound::Delivery => message(channel, deliver(tag, u64::from(c)).into(), body_len(d)),
        Inbound::Returned => {
            let (exchange, routing_key) = pick(&ROUTES, c);
            let ret = basic::Return {
                reply_code: ReplyCode::NO_ROUTE,
                reply_text: short("NO_ROUTE"),
                exchange: short(exchange),
                routing_key: short(routing_key),
            };
            message(channel, ret.into(), body_len(d))
        }
        Inbound::Got => {
            let ok = basic::GetOk { delivery_tag: u64::from(c), routing_key: short("q"), ..Default::default() };
            message(channel, ok.into(), body_len(d))
        }
        other => on(reply(other, tag, c, d)),
    }
}

/// The channel methods that are one frame with at most a tag or a number.
fn reply(template: Inbound, tag: &ShortStr, c: u8, d: u8) -> Method {
    let tag = tag.clone();
    let confirm_tag = if c == 0xFF { u64::MAX } else { u64::from(c) };
    match template {
        Inbound::ChannelOpenOk => chan::OpenOk::default().into(),
        Inbound::Flow => chan::Flow { active: c & 1 == 1 }.into(),
        Inbound::FlowOk => chan::FlowOk { active: c & 1 == 1 }.into(),
        Inbound::ChannelCloseOk => chan::CloseOk {}.into(),
        Inbound::ConsumeOk => basic::ConsumeOk { consumer_tag: tag }.into(),
        Inbound::Cancel => basic::Cancel { consumer_tag: tag, nowait: d & 1 == 1 }.into(),
        Inbound::CancelOk => basic::CancelOk { consumer_tag: tag }.into(),
        Inbound::GetEmpty => basic::GetEmpty::default().into(),
        Inbound::Ack => basic::Ack { delivery_tag: confirm_tag, multiple: d & 1 == 1 }.into(),
        Inbound::Nack => basic::Nack { delivery_tag: confirm_tag, multiple: d & 1 == 1, requeue: false }.into(),
        Inbound::QosOk => basic::QosOk {}.into(),
        Inbound::RecoverOk => basic::RecoverOk {}.into(),
        Inbound::QueueDeclareOk => queue::DeclareOk { queue: short("q"), ..Default::default() }.into(),
        Inbound::QueueBindOk => queue::BindOk {}.into(),
        Inbound::QueuePurgeOk => queue::PurgeOk::default().into(),
        Inbound::QueueDeleteOk => queue::DeleteOk::default().into(),
        Inbound::QueueUnbindOk => queue::UnbindOk {}.into(),
        Inbound::ExchangeDeclareOk => exchange::DeclareOk {}.into(),
        Inbound::ExchangeDeleteOk => exchange::DeleteOk {}.into(),
        Inbound::ExchangeBindOk => exchange::BindOk {}.into(),
        Inbound::ExchangeUnbindOk => exchange::UnbindOk {}.into(),
        Inbound::TxSelectOk => tx::SelectOk {}.into(),
        Inbound::TxCommitOk => tx::CommitOk {}.into(),
        Inbound::TxRollbackOk => tx::RollbackOk {}.into(),
        // The templates of several frames, or of connection methods, are built in
        // `inbound`; here they fall back to the most common reply.
        _ => confirm::SelectOk {}.into(),
    }
}

/// `connection.start`: `c` 0 is what RabbitMQ sends, 1 lacks PLAIN, 2 is another version;
/// `d` nests the server properties.
fn start(c: u8, d: u8) -> connection::Start {
    let mut start = connection::Start {
        mechanisms: Bytes::from_static(b"AMQPLAIN PLAIN"),
        server_properties: table(d & 0x7F),
        ..Default::default()
    };
    match c % 3 {
        1 => start.mechanisms = Bytes::from_static(b"AMQPLAIN EXTERNAL"),
        2 => start.version_minor = 8,
        _ => {}
    }
    start
}

fn deliver(tag: &ShortStr, delivery_tag: u64) -> basic::Deliver {
    basic::Deliver { consumer_tag: tag.clone(), delivery_tag, routing_key: short("q"), ..Default::default() }
}

/// A content header; `d` picks the properties: none, a few, or a nested `headers` table.
fn header(body_size: usize, d: u8) -> ContentHeader {
    let properties = match d % 4 {
        0 => BasicProperties::default(),
        1 => BasicProperties {
            content_type: Some(short("text/plain")),
            delivery_mode: Some(2),
            message_id: Some(short("m")),
            ..Default::default()
        },
        _ => BasicProperties { headers: Some(table(d >> 2)), ..Default::default() },
    };
    ContentHeader::new(body_size as u64, properties)
}

/// A whole message: the method, its header, its body in frames of at most 4088 bytes.
fn message(channel: u16, method: Method, size: usize) -> Vec<Frame> {
    let body = Bytes::from(vec![b'm'; size]);
    let mut frames = vec![Frame::Method(channel, method), Frame::Header(channel, header(size, 0))];
    let mut at = 0;
    while at < size {
        let end = (at + 4088).min(size);
        frames.push(Frame::Body(channel, body.slice(at..end)));
        at = end;
    }
    frames
}

/// The method of a `call` step, and what may answer it.
pub(crate) fn call(call: Call, tag: &ShortStr, c: u8, d: u8) -> (Method, Answer) {
    let nowait = c & 1 == 1;
    let or_sent = |ids: &'static [(u16, u16)]| if nowait { Answer::Sent } else { Answer::Method(ids) };
    let name = short("q");
    match call {
        Call::Flow => (chan::Flow { active: nowait }.into(), Answer::Method(&[chan::FlowOk::ID])),
        Call::ChannelClose => (
            chan::Close { reply_code: reply_code(d), ..Default::default() }.into(),
            Answer::Method(&[chan::CloseOk::ID]),
        ),
        Call::ExchangeDeclare => (
            exchange::Declare { exchange: short("x"), nowait, arguments: table(d), ..Default::default() }.into(),
            or_sent(&[exchange::DeclareOk::ID]),
        ),
        Call::ExchangeDelete => (
            exchange::Delete { exchange: short("x"), nowait, ..Default::default() }.into(),
            or_sent(&[exchange::DeleteOk::ID]),
        ),
        Call::ExchangeBind => (
            exchange::Bind { destination: short("x"), nowait, arguments: table(d), ..Default::default() }.into(),
            or_sent(&[exchange::BindOk::ID]),
        ),
        Call::ExchangeUnbind => (
            exchange::Unbind { destination: short("x"), nowait, arguments: table(d), ..Default::default() }.into(),
            or_sent(&[exchange::UnbindOk::ID]),
        ),
        Call::QueueDeclare => (
            queue::Declare { queue: name, nowait, arguments: table(d), ..Default::default() }.into(),
            or_sent(&[queue::DeclareOk::ID]),
        ),
        Call::QueueBind => (
            queue::Bind { queue: name, exchange: short("x"), nowait, arguments: table(d), ..Default::default() }.into(),
            or_sent(&[queue::BindOk::ID]),
        ),
        Call::QueuePurge => {
            (queue::Purge { queue: name, nowait, ..Default::default() }.into(), or_sent(&[queue::PurgeOk::ID]))
        }
        Call::QueueDelete => {
            (queue::Delete { queue: name, nowait, ..Default::default() }.into(), or_sent(&[queue::DeleteOk::ID]))
        }
        Call::QueueUnbind => (
            queue::Unbind { queue: name, arguments: table(d), ..Default::default() }.into(),
            Answer::Method(&[queue::UnbindOk::ID]),
        ),
        Call::Qos => (
            basic::Qos { prefetch_count: u16::from(d), ..Default::default() }.into(),
            Answer::Method(&[basic::QosOk::ID]),
        ),
        Call::Cancel => (basic::Cancel { consumer_tag: tag.clone(), nowait }.into(), or_sent(&[basic::CancelOk::ID])),
        Call::Get => (basic::Get { queue: name, ..Default::default() }.into(), Answer::Get),
        Call::Recover => (basic::Recover { requeue: nowait }.into(), Answer::Method(&[basic::RecoverOk::ID])),
        Call::TxSelect => (tx::Select {}.into(), Answer::Method(&[tx::SelectOk::ID])),
        Call::TxCommit => (tx::Commit {}.into(), Answer::Method(&[tx::CommitOk::ID])),
        Call::TxRollback => (tx::Rollback {}.into(), Answer::Method(&[tx::RollbackOk::ID])),
        Call::ConfirmSelect => (confirm::Select { nowait }.into(), or_sent(&[confirm::SelectOk::ID])),
        Call::RecoverAsync => (basic::RecoverAsync { requeue: nowait }.into(), Answer::Sent),
        Call::ChannelOpen => (chan::Open::default().into(), Answer::Method(&[chan::OpenOk::ID])),
    }
}

/// A channel key for a command: one the client returned (`b` picks it), or for the odd
/// byte a key it never returned.
pub(crate) fn key(keys: &[ChannelKey], b: u8) -> ChannelKey {
    if b < 0xF0 && !keys.is_empty() {
        pick(keys, b)
    } else {
        ChannelKey { id: u16::from(b & 0x07), epoch: u64::from(b >> 3 & 0x03) }
    }
}

/// A wire channel id for a broker frame: 0, one of the client's channels (`b` picks it), or
/// for the odd byte any small id.
pub(crate) fn channel_id(keys: &[ChannelKey], b: u8) -> u16 {
    match b {
        0 => 0,
        0xF0.. => u16::from(b & 0x0F),
        _ if keys.is_empty() => 1,
        _ => pick(keys, b - 1).id,
    }
}
