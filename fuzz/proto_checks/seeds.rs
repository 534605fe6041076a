//! The seed corpus of the `proto` target: short conversations with a broker that reach the
//! states worth mutating from (open, consuming, confirming, flow, closing), each with what it
//! must at least make happen, so that a change of the format or of the client that leaves a
//! seed stuck at the handshake fails a test instead of quietly weakening the fuzzer.

use bytes::BytesMut;
use lepus_codec::{
    BasicProperties, ContentHeader, FieldTable, FieldValue, Frame,
    method::{basic, connection},
};

use super::{
    build::{short, table},
    ledger::Summary,
    script::{Async, Call, Inbound as In, Op, Script},
};

/// One seed: its file name (`seed-<name>` in `fuzz/corpus/proto/`), its bytes, and the
/// least it must make happen.
pub(crate) struct Seed {
    pub(crate) name: &'static str,
    pub(crate) bytes: Vec<u8>,
    pub(crate) expect: Summary,
}

/// Configuration bytes (see `harness::Setup::from_byte`): heartbeat 60 s, `frame_max`
/// 131072, no `channel_max`, 8 KiB messages; ended by the close deadline, or by the socket.
const RABBIT: u8 = 0b0000_1010;
const RABBIT_IO_END: u8 = RABBIT | 0x80;
/// Heartbeat 1 s, `frame_max` 4096, `channel_max` 1, 16-byte messages.
const TIGHT: u8 = 0b0101_0101;

/// The first channel, as a broker frame names it and as a command names its key.
const CH: u8 = 1;
const KEY: u8 = 0;
/// The `Tune` template's bytes for RabbitMQ's usual tuning: `frame_max` 131072, `channel_max`
/// 2047 (`c`), heartbeat 60 (`d`).
const TUNE_C: u8 = 0x42;
const TUNE_D: u8 = 3;

fn expect(f: impl FnOnce(&mut Summary)) -> Summary {
    let mut summary = Summary { connected: true, closed: true, ..Summary::default() };
    f(&mut summary);
    summary
}

/// A script that has done the handshake with RabbitMQ's tuning and drained its output.
fn open(config: u8) -> Script {
    let mut s = Script::new(config);
    s.frame(In::Start, 0, 0, 0).frame(In::Tune, 0, TUNE_C, TUNE_D).frame(In::OpenOk, 0, 0, 0);
    s.op(Op::Transmit, [0; 4]).op(Op::Events, [0; 4]);
    s
}

/// `open` plus one channel, open-ok answered.
fn channel(config: u8) -> Script {
    let mut s = open(config);
    s.op(Op::OpenChannel, [0; 4]).frame(In::ChannelOpenOk, CH, 0, 0);
    s
}

/// Every seed, in a fixed order.
pub(crate) fn seeds() -> Vec<Seed> {
    let mut seeds = vec![
        Seed { name: "handshake", bytes: open(RABBIT).bytes().to_vec(), expect: expect(|_| {}) },
        Seed {
            name: "handshake-secure-heartbeats",
            bytes: heartbeats(),
            expect: Summary { connected: true, closed: true, ..Summary::default() },
        },
        Seed { name: "channel-declare-close", bytes: declare_close(), expect: expect(|e| e.replies_ok = 3) },
        Seed {
            name: "consume-deliver-ack-cancel",
            bytes: consume(),
            expect: expect(|e| {
                e.replies_ok = 3;
                e.deliveries = 3;
                e.consumers_ended = 1;
            }),
        },
        Seed {
            name: "consume-client-tag",
            bytes: consume_client_tag(),
            expect: expect(|e| {
                e.deliveries = 2;
                e.consumers_ended = 1;
            }),
        },
        Seed {
            name: "confirms",
            bytes: confirms(),
            expect: expect(|e| {
                e.acks = 3;
                e.nacks = 1;
                e.confirms_returned = 1;
                e.confirms_failed = 1;
            }),
        },
        Seed {
            name: "flow-get-blocked",
            bytes: flow_get_blocked(),
            expect: expect(|e| {
                e.flow_events = 2;
                e.blocked_events = 2;
                e.replies_ok = 4;
                e.returned = 1;
            }),
        },
        Seed {
            name: "oversized-and-deep-messages",
            bytes: refused(),
            expect: expect(|e| {
                e.deliveries = 1;
                e.deliveries_refused = 2;
            }),
        },
        Seed {
            name: "broker-closes",
            bytes: broker_closes(),
            expect: expect(|e| {
                e.channels_closed = 2;
                e.replies_failed = 2;
            }),
        },
    ];
    seeds.push(Seed {
        name: "reopen-at",
        bytes: reopen_at(),
        expect: expect(|e| {
            e.replies_ok = 4;
            e.channels_closed = 3;
        }),
    });
    seeds.push(Seed {
        name: "raw-handshake-and-delivery",
        bytes: raw_conversation(),
        expect: expect(|e| {
            e.deliveries = 1;
            e.replies_ok = 2;
        }),
    });
    seeds
}

/// Secure step, a 1 s heartbeat, a few beats, then silence until the client gives up.
fn heartbeats() -> Vec<u8> {
    let mut s = Script::new(TIGHT);
    s.frame(In::Start, 0, 0, 0).frame(In::Secure, 0, 0, 0).frame(In::Tune, 0, 0x01, 1).frame(In::OpenOk, 0, 0, 0);
    for _ in 0..3 {
        s.op(Op::Advance, [1, 0x01, 0xF4, 0]).op(Op::Transmit, [0; 4]).frame(In::Heartbeat, 0, 0, 0);
    }
    s.op(Op::Reading, [0; 4]).op(Op::Advance, [2, 0, 3, 0]).op(Op::Reading, [1, 0, 0, 0]);
    s.op(Op::Advance, [2, 0, 5, 0]).op(Op::Events, [0; 4]);
    s.bytes().to_vec()
}

fn declare_close() -> Vec<u8> {
    let mut s = channel(RABBIT);
    s.call(Call::QueueDeclare, KEY, 0, 2).frame(In::QueueDeclareOk, CH, 0, 0);
    s.call(Call::Qos, KEY, 0, 10).frame(In::QosOk, CH, 0, 0);
    s.call(Call::ExchangeDeclare, KEY, 1, 0).op(Op::Transmit, [0; 4]).op(Op::Events, [0; 4]);
    s.call(Call::ChannelClose, KEY, 0, 0).frame(In::ChannelCloseOk, CH, 0, 0);
    s.op(Op::Transmit, [0; 4]).op(Op::Events, [0; 4]);
    s.bytes().to_vec()
}

/// Consumer "a": three deliveries (one over several body frames), acked, then cancelled.
fn consume() -> Vec<u8> {
    let mut s = channel(RABBIT);
    s.op(Op::Consume, [0, KEY, 1, 0]).frame(In::ConsumeOk, CH, 0, 0);
    s.frame(In::Delivery, CH, 0, 5).frame(In::Delivery, CH, 0, 0).frame(In::Delivery, CH, 0, 0xA8);
    s.send(Async::Ack, KEY, 2, 1).send(Async::Reject, KEY, 3, 1).op(Op::Events, [0; 4]);
    s.call(Call::Cancel, KEY, 0, 0).op(Op::Transmit, [0; 4]).frame(In::CancelOk, CH, 0, 0);
    s.op(Op::Events, [0; 4]);
    s.bytes().to_vec()
}

/// A consume without a tag: the client picks one, the broker's frames name it (tag pick 3
/// is the first tag the client sent), and the broker cancels the consumer.
fn consume_client_tag() -> Vec<u8> {
    let mut s = channel(RABBIT_IO_END);
    s.op(Op::Consume, [0, KEY, 0, 2]).op(Op::Transmit, [0; 4]).frame(In::ConsumeOk, CH, 3, 0);
    s.frame(In::Delivery, CH, 3, 1).frame(In::Delivery, CH, 3, 0x81).op(Op::Events, [0; 4]);
    s.frame(In::Cancel, CH, 3, 0).op(Op::Transmit, [0; 4]).op(Op::Events, [0; 4]);
    s.bytes().to_vec()
}

/// Confirm mode: acks single and multiple, a nack, a mandatory publish returned, one left
/// unconfirmed when the connection closes.
fn confirms() -> Vec<u8> {
    let mut s = channel(RABBIT);
    s.call(Call::ConfirmSelect, KEY, 0, 0).frame(In::ConfirmSelectOk, CH, 0, 0);
    for size in [3, 0, 0x84] {
        s.op(Op::Publish, [1, KEY, 0, size]);
    }
    s.op(Op::Publish, [5, KEY, 0, 7]);
    s.frame(In::Ack, CH, 1, 0).frame(In::Ack, CH, 3, 1).frame(In::Nack, CH, 4, 0);
    s.op(Op::Publish, [3, KEY, 1, 9]).frame(In::Returned, CH, 1, 9).frame(In::Ack, CH, 5, 0);
    s.op(Op::Publish, [1, KEY, 2, 1]).op(Op::Transmit, [0; 4]).op(Op::Events, [0; 4]);
    s.bytes().to_vec()
}

/// Flow off and on around a publish, a get answered with a message and one empty, a
/// returned message outside confirm mode, the connection blocked and unblocked, a secret
/// update.
fn flow_get_blocked() -> Vec<u8> {
    let mut s = channel(RABBIT);
    s.frame(In::Flow, CH, 0, 0).op(Op::Publish, [0, KEY, 0, 4]).op(Op::Transmit, [0; 4]);
    s.frame(In::Flow, CH, 1, 0).op(Op::Transmit, [0; 4]);
    s.call(Call::Get, KEY, 0, 0).frame(In::Got, CH, 1, 6);
    s.call(Call::Get, KEY, 0, 0).frame(In::GetEmpty, CH, 0, 0);
    s.op(Op::Publish, [2, KEY, 1, 2]).frame(In::Returned, CH, 1, 2);
    s.frame(In::Blocked, 0, 0, 0).frame(In::Unblocked, 0, 0, 0);
    s.op(Op::UpdateSecret, [8, 0, 0, 0]).frame(In::UpdateSecretOk, 0, 0, 0);
    s.op(Op::Events, [0; 4]);
    s.bytes().to_vec()
}

/// 16-byte messages: one fits, one is over the cap (rejected, the consumer cancelled), and
/// a header nested too deep is refused as bytes from the socket.
fn refused() -> Vec<u8> {
    let mut s = Script::new(TIGHT & !0x03 | 0x02);
    s.frame(In::Start, 0, 0, 0).frame(In::Tune, 0, 0x11, 3).frame(In::OpenOk, 0, 0, 0);
    s.op(Op::OpenChannel, [0; 4]).frame(In::ChannelOpenOk, CH, 0, 0);
    s.op(Op::Consume, [0, KEY, 1, 0]).frame(In::ConsumeOk, CH, 0, 0);
    s.frame(In::Delivery, CH, 0, 10).frame(In::Delivery, CH, 0, 100).op(Op::Transmit, [0; 4]);
    let deliver = basic::Deliver { consumer_tag: short("a"), delivery_tag: 9, ..Default::default() };
    let header = ContentHeader::new(4, BasicProperties { headers: Some(table(70)), ..Default::default() });
    s.raw(&frames(&[Frame::Method(1, deliver.into()), Frame::Header(1, header), Frame::Body(1, "body".into())]));
    s.frame(In::CancelOk, CH, 0, 0).op(Op::Events, [0; 4]);
    s.bytes().to_vec()
}

/// The broker closes a channel (404) with a call pending, then the connection.
fn broker_closes() -> Vec<u8> {
    let mut s = channel(RABBIT);
    s.op(Op::OpenChannel, [0; 4]).frame(In::ChannelOpenOk, 2, 0, 0);
    s.call(Call::QueueDeclare, KEY, 0, 0).frame(In::ChannelClose, CH, 4, 0).op(Op::Transmit, [0; 4]);
    s.call(Call::QueuePurge, 1, 0, 0).frame(In::Close, 0, 7, 0).op(Op::Transmit, [0; 4]);
    s.op(Op::Events, [0; 4]);
    s.bytes().to_vec()
}

/// What recovery does on a new connection, here after the broker closed the channel:
/// epochs continued, the channel reopened with its former id (refused while it was taken),
/// and one more at `channel_max`.
fn reopen_at() -> Vec<u8> {
    let mut s = channel(RABBIT);
    s.op(Op::OpenChannel, [1, KEY, 0, 0]).frame(In::ChannelClose, CH, 4, 0);
    s.op(Op::Transmit, [0; 4]).op(Op::Events, [0; 4]).op(Op::ContinueEpochs, [10, 0, 0, 0]);
    // Key 0's id (1), free again; then the third key at channel_max (2047).
    s.op(Op::OpenChannel, [1, KEY, 0, 0]).frame(In::ChannelOpenOk, CH, 0, 0);
    s.op(Op::OpenChannel, [3, 0, 0, 0]).frame(In::ChannelOpenOk, 3, 0, 0);
    s.call(Call::QueueDeclare, 1, 0, 0).frame(In::QueueDeclareOk, CH, 0, 0);
    s.op(Op::Transmit, [0; 4]).op(Op::Events, [0; 4]);
    s.bytes().to_vec()
}

/// The handshake and a delivery as bytes from the socket, split at awkward places.
fn raw_conversation() -> Vec<u8> {
    let mut properties = FieldTable::new();
    properties.push(short("product"), FieldValue::from("RabbitMQ"));
    let start =
        connection::Start { server_properties: properties, mechanisms: "AMQPLAIN PLAIN".into(), ..Default::default() };
    let tune = connection::Tune { channel_max: 2047, frame_max: 131_072, heartbeat: 60 };
    let handshake = frames(&[
        Frame::Method(0, start.into()),
        Frame::Method(0, tune.into()),
        Frame::Method(0, connection::OpenOk::default().into()),
    ]);
    let mut s = Script::new(RABBIT);
    let (first, rest) = handshake.split_at(5);
    s.raw(first).raw(rest).op(Op::Transmit, [0; 4]);
    s.op(Op::OpenChannel, [0; 4]).op(Op::Consume, [0, KEY, 2, 0]);
    let deliver = basic::Deliver { consumer_tag: short("b"), delivery_tag: 1, ..Default::default() };
    let body = frames(&[
        Frame::Method(1, lepus_codec::method::channel::OpenOk::default().into()),
        Frame::Method(1, basic::ConsumeOk { consumer_tag: short("b") }.into()),
        Frame::Method(1, deliver.into()),
        Frame::Header(1, ContentHeader::new(5, BasicProperties::default())),
        Frame::Body(1, "hello".into()),
        Frame::Heartbeat,
    ]);
    let (first, rest) = body.split_at(body.len() - 10);
    s.raw(first).raw(rest).op(Op::Transmit, [0; 4]).op(Op::Events, [0; 4]);
    s.bytes().to_vec()
}

/// Frames as they come off the socket (tables nested past the limit allowed).
fn frames(frames: &[Frame]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for frame in frames {
        frame.encode_with_depth(&mut buf, usize::MAX).unwrap_or_else(|e| panic!("encode a seed frame: {e}"));
    }
    buf.to_vec()
}
