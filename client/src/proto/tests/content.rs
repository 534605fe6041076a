//! Consumers, deliveries, gets, content assembly errors, oversized messages, stale acks.

use bytes::Bytes;
use lepus_codec::{
    BasicProperties, ContentHeader, Frame, Method, ShortStr,
    method::{basic, channel as chan},
};

use super::{Ev, Peer, close_sent};
use crate::proto::Reply;

fn tag(s: &'static str) -> ShortStr {
    ShortStr::from_static(s).unwrap()
}

fn deliver(consumer: &'static str, delivery_tag: u64) -> basic::Deliver {
    basic::Deliver { consumer_tag: tag(consumer), delivery_tag, routing_key: tag("rk"), ..Default::default() }
}

/// A channel with consumer `c1` (token 7) registered.
fn consuming() -> (Peer, crate::proto::ChannelKey) {
    consuming_on(Peer::open())
}

fn consuming_on(mut p: Peer) -> (Peer, crate::proto::ChannelKey) {
    let key = p.open_channel(1);
    p.conn.consume(key, basic::Consume { queue: tag("q"), ..Default::default() }, 2, 7);
    p.sent();
    p.method(key.id, basic::ConsumeOk { consumer_tag: tag("c1") });
    assert_eq!(p.events(), vec![Ev::Reply(2, Ok(Reply::Method(basic::ConsumeOk { consumer_tag: tag("c1") }.into())))]);
    (p, key)
}

#[test]
fn deliveries_reach_their_consumer_whole() {
    let (mut p, key) = consuming();
    p.content(key.id, deliver("c1", 1), b"hello");
    // Split over three body frames.
    p.method(key.id, deliver("c1", 2));
    p.feed(Frame::Header(key.id, ContentHeader::new(6, BasicProperties::default())));
    for part in [&b"ab"[..], b"cd", b"ef"] {
        p.feed(Frame::Body(key.id, Bytes::copy_from_slice(part)));
    }
    let events = p.events();
    assert_eq!(events.len(), 2);
    let Ev::Delivery(7, Ok(d1)) = &events[0] else { panic!("{events:?}") };
    assert_eq!((d1.delivery_tag, &d1.body[..], d1.channel), (1, &b"hello"[..], key));
    let Ev::Delivery(7, Ok(d2)) = &events[1] else { panic!("{events:?}") };
    assert_eq!((d2.delivery_tag, &d2.body[..]), (2, &b"abcdef"[..]));
}

#[test]
fn acks_go_out_on_the_live_channel_and_stale_ones_are_refused() {
    // channel_max 1 forces the id to be reused.
    let tune = lepus_codec::method::connection::Tune { channel_max: 1, frame_max: 131_072, heartbeat: 60 };
    let (mut p, key) = consuming_on(Peer::open_with(super::config(), tune));
    p.content(key.id, deliver("c1", 1), b"x");
    p.events();
    p.conn.send(key, basic::Ack { delivery_tag: 1, multiple: false }.into()).unwrap();
    assert_eq!(p.sent_methods(), vec![(key.id, basic::Ack { delivery_tag: 1, multiple: false }.into())]);
    // The channel closes and the id is reused: the old tag must not be sent on the new one.
    p.conn.call(key, chan::Close::default().into(), 3);
    p.method(key.id, chan::CloseOk {});
    p.sent();
    p.events();
    let new = p.open_channel(4);
    assert_eq!(new.id, key.id);
    let err = p.conn.send(key, basic::Ack { delivery_tag: 1, multiple: false }.into()).unwrap_err();
    assert!(err.to_string().contains("delivery tag 1"), "{err}");
    assert!(p.sent_methods().is_empty(), "nothing sent with a stale tag");
}

#[test]
fn b5_a_broker_cancel_ends_the_consumer_with_a_distinct_reason() {
    let (mut p, key) = consuming();
    p.method(key.id, basic::Cancel { consumer_tag: tag("c1"), nowait: false });
    assert_eq!(p.sent_methods(), vec![(key.id, basic::CancelOk { consumer_tag: tag("c1") }.into())]);
    let events = p.events();
    assert!(
        matches!(&events[..], [Ev::ConsumerEnded(7, Some(e))] if e.contains("cancelled by the broker")),
        "{events:?}"
    );
}

#[test]
fn our_cancel_ends_the_consumer_at_cancel_ok_and_deliveries_before_it_still_arrive() {
    let (mut p, key) = consuming();
    p.conn.call(key, basic::Cancel { consumer_tag: tag("c1"), nowait: false }.into(), 3);
    p.sent();
    p.content(key.id, deliver("c1", 1), b"in flight");
    p.method(key.id, basic::CancelOk { consumer_tag: tag("c1") });
    let events = p.events();
    assert!(matches!(&events[0], Ev::Delivery(7, Ok(_))));
    assert_eq!(events[1], Ev::ConsumerEnded(7, None));
    assert!(matches!(&events[2], Ev::Reply(3, Ok(_))));
}

#[test]
fn basic_get_returns_the_message_or_empty() {
    let mut p = Peer::open();
    let key = p.open_channel(1);
    p.conn.call(key, basic::Get { queue: tag("q"), ..Default::default() }.into(), 2);
    p.conn.call(key, basic::Get { queue: tag("q"), ..Default::default() }.into(), 3);
    p.sent();
    p.content(key.id, basic::GetOk { delivery_tag: 1, message_count: 5, ..Default::default() }, b"got");
    p.method(key.id, basic::GetEmpty::default());
    let events = p.events();
    let Ev::Reply(2, Ok(Reply::Get(content))) = &events[0] else { panic!("{events:?}") };
    assert_eq!(&content.body[..], b"got");
    assert!(matches!(&content.method, Method::BasicGetOk(g) if g.message_count == 5));
    assert_eq!(events[1], Ev::Reply(3, Ok(Reply::Method(basic::GetEmpty::default().into()))));
}

#[test]
fn m4_broken_content_sequences_close_the_connection_with_505_and_deliver_nothing() {
    type Script = fn(&mut Peer, u16);
    let scripts: Vec<(&str, Script)> = vec![
        ("body without header", |p, ch| p.feed(Frame::Body(ch, Bytes::from_static(b"x")))),
        ("header without method", |p, ch| p.feed(Frame::Header(ch, ContentHeader::new(1, BasicProperties::default())))),
        ("more body than announced", |p, ch| {
            p.method(ch, deliver("c1", 1));
            p.feed(Frame::Header(ch, ContentHeader::new(2, BasicProperties::default())));
            p.feed(Frame::Body(ch, Bytes::from_static(b"abc")));
        }),
        ("method in the middle of content", |p, ch| {
            p.method(ch, deliver("c1", 1));
            p.feed(Frame::Header(ch, ContentHeader::new(2, BasicProperties::default())));
            p.method(ch, basic::Ack::default());
        }),
        ("body after a zero-size header", |p, ch| {
            p.method(ch, deliver("c1", 1));
            p.feed(Frame::Header(ch, ContentHeader::new(0, BasicProperties::default())));
            p.feed(Frame::Body(ch, Bytes::from_static(b"x")));
        }),
    ];
    for (name, script) in scripts {
        let (mut p, key) = consuming();
        script(&mut p, key.id);
        assert_eq!(close_sent(&p.sent_methods()).map(|c| c.0), Some(505), "{name}");
        let events = p.events();
        // A zero-size message is whole at its header; only that one may be delivered.
        let delivered: Vec<_> = events.iter().filter(|e| matches!(e, Ev::Delivery(_, Ok(_)))).collect();
        assert!(
            delivered.iter().all(|e| matches!(e, Ev::Delivery(_, Ok(d)) if d.body.is_empty())),
            "{name}: {events:?}"
        );
        assert!(
            events.contains(&Ev::ConsumerEnded(7, Some("protocol violation by the broker".into())))
                || events.iter().any(|e| matches!(e, Ev::ConsumerEnded(7, Some(t)) if t.contains("505"))),
            "{name}: {events:?}"
        );
    }
}

#[test]
fn m7_a_delivery_for_an_unknown_consumer_is_a_violation() {
    let (mut p, key) = consuming();
    p.content(key.id, deliver("nobody", 1), b"x");
    assert_eq!(close_sent(&p.sent_methods()).map(|c| c.0), Some(503));
}

#[test]
fn r4_a_message_over_the_cap_is_rejected_to_its_queue_and_reported() {
    let (mut p, key) = consuming();
    // The test config caps messages at 1 MiB.
    p.method(key.id, deliver("c1", 9));
    p.feed(Frame::Header(key.id, ContentHeader::new(2 << 20, BasicProperties::default())));
    for _ in 0..16 {
        p.feed(Frame::Body(key.id, Bytes::from(vec![0u8; 128 << 10])));
    }
    // The consumer is cancelled before the message goes back, so that the broker does not
    // hand it straight back to it (a redelivery loop).
    assert_eq!(
        p.sent_methods(),
        vec![
            (key.id, basic::Cancel { consumer_tag: tag("c1"), nowait: false }.into()),
            (key.id, basic::Reject { delivery_tag: 9, requeue: true }.into()),
        ]
    );
    let events = p.events();
    assert!(matches!(&events[..], [Ev::Delivery(7, Err(e))] if e.contains("message too large")), "{events:?}");
    // The connection and channel carry on; what was on its way still arrives.
    p.content(key.id, deliver("c1", 10), b"next");
    assert!(matches!(&p.events()[..], [Ev::Delivery(7, Ok(d))] if d.delivery_tag == 10));
    p.method(key.id, basic::CancelOk { consumer_tag: tag("c1") });
    assert_eq!(p.events(), vec![Ev::ConsumerEnded(7, None)], "nobody waited for the cancel");
    assert!(p.conn.is_open());
}

/// M5: a delivery whose headers are nested past the limit is refused like an oversized one:
/// its header frame was consumed by the decoder, its body frames are skipped, the consumer
/// is cancelled, and the message goes back to its queue. The connection stays open.
#[test]
fn m5_a_delivery_with_tables_nested_too_deep_is_rejected_not_fatal() {
    let (mut p, key) = consuming();
    p.method(key.id, deliver("c1", 3));
    let error = lepus_codec::DecodeError::NestingTooDeep { limit: 64 };
    p.conn.handle_refused_header(p.now, key.id, 5, error);
    p.feed(Frame::Body(key.id, Bytes::from_static(b"12345")));
    assert_eq!(
        p.sent_methods(),
        vec![
            (key.id, basic::Cancel { consumer_tag: tag("c1"), nowait: false }.into()),
            (key.id, basic::Reject { delivery_tag: 3, requeue: true }.into()),
        ]
    );
    let events = p.events();
    assert!(matches!(&events[..], [Ev::Delivery(7, Err(e))] if e.contains("nested")), "{events:?}");
    p.content(key.id, deliver("c1", 4), b"fine");
    assert!(matches!(&p.events()[..], [Ev::Delivery(7, Ok(d))] if d.delivery_tag == 4));
    assert!(p.conn.is_open());
    // A refused header with no delivery before it is still a protocol error.
    p.conn.handle_refused_header(p.now, key.id, 5, lepus_codec::DecodeError::NestingTooDeep { limit: 64 });
    assert!(!p.conn.is_open());
}

#[test]
fn consume_ok_and_cancel_ok_may_be_overtaken_by_later_replies() {
    let mut p = Peer::open();
    let key = p.open_channel(1);
    p.conn.consume(key, basic::Consume { queue: tag("q"), consumer_tag: tag("a"), ..Default::default() }, 2, 7);
    p.conn.consume(key, basic::Consume { queue: tag("r"), consumer_tag: tag("b"), ..Default::default() }, 3, 8);
    p.conn.call(key, lepus_codec::method::queue::Declare::default().into(), 4);
    p.sent();
    // RabbitMQ answers consumes from the queues' processes: the declare-ok comes first,
    // then the consume-oks in the other order.
    p.method(key.id, lepus_codec::method::queue::DeclareOk::default());
    p.method(key.id, basic::ConsumeOk { consumer_tag: tag("b") });
    p.method(key.id, basic::ConsumeOk { consumer_tag: tag("a") });
    let events = p.events();
    assert!(matches!(&events[..], [Ev::Reply(4, Ok(_)), Ev::Reply(3, Ok(_)), Ev::Reply(2, Ok(_))]), "{events:?}");
    // Each consumer got its own tag.
    p.content(key.id, deliver("a", 1), b"for a");
    p.content(key.id, deliver("b", 2), b"for b");
    let events = p.events();
    assert!(matches!(&events[..], [Ev::Delivery(7, Ok(_)), Ev::Delivery(8, Ok(_))]), "{events:?}");
    assert!(p.conn.is_open());
}

#[test]
fn an_empty_consumer_tag_is_replaced_by_one_of_ours() {
    let mut p = Peer::open();
    let key = p.open_channel(1);
    p.conn.consume(key, basic::Consume { queue: tag("q"), ..Default::default() }, 2, 7);
    let sent = p.sent_methods();
    let [(_, Method::BasicConsume(c))] = &sent[..] else { panic!("{sent:?}") };
    assert!(c.consumer_tag.as_str().is_some_and(|t| t.starts_with("lepus.")), "{:?}", c.consumer_tag);
}

/// Issue 9, defect 6: a get-ok over the size cap resolves the get, not a consume that was
/// sent before it and is still waiting for its consume-ok.
#[test]
fn r4_an_oversized_get_ok_fails_the_get_not_an_earlier_pending_consume() {
    let mut p = Peer::open();
    let key = p.open_channel(1);
    p.conn.consume(key, basic::Consume { queue: tag("q"), consumer_tag: tag("a"), ..Default::default() }, 2, 7);
    p.conn.call(key, basic::Get { queue: tag("q"), ..Default::default() }.into(), 3);
    p.sent();
    p.method(key.id, basic::GetOk { delivery_tag: 4, ..Default::default() });
    p.feed(Frame::Header(key.id, ContentHeader::new(2 << 20, BasicProperties::default())));
    for _ in 0..16 {
        p.feed(Frame::Body(key.id, Bytes::from(vec![0u8; 128 << 10])));
    }
    assert_eq!(p.sent_methods(), vec![(key.id, basic::Reject { delivery_tag: 4, requeue: true }.into())]);
    let events = p.events();
    assert!(matches!(&events[..], [Ev::Reply(3, Err(e))] if e.contains("message too large")), "{events:?}");
    // The consume still gets its own consume-ok, and its consumer its deliveries.
    p.method(key.id, basic::ConsumeOk { consumer_tag: tag("a") });
    p.content(key.id, deliver("a", 5), b"for a");
    let events = p.events();
    assert!(matches!(&events[..], [Ev::Reply(2, Ok(_)), Ev::Delivery(7, Ok(_))]), "{events:?}");
    assert!(p.conn.is_open());
}
