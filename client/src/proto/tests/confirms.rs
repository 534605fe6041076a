//! Publisher confirms: tags, multiple acks and nacks, returns before acks (C5), failure on close.

use std::collections::BTreeMap;

use lepus_codec::{
    BasicProperties, ContentHeader, Frame, ReplyCode, ShortStr,
    method::{basic, channel as chan},
};
use proptest::prelude::*;

use super::{Ev, Peer, close_sent};
use crate::proto::{Confirmation, ReturnKey};

fn key_for(rk: &str, body: usize) -> ReturnKey {
    ReturnKey { exchange: ShortStr::new(), routing_key: ShortStr::try_from(rk).unwrap(), body_size: body as u64 }
}

#[test]
fn tags_are_assigned_in_order_and_multiple_acks_resolve_every_covered_publish() {
    let mut p = Peer::open();
    let key = p.open_channel(1);
    p.confirm_select(key, 2);
    for token in 10..15 {
        let tag = p.conn.publish(key, [Peer::publish_frames(key, "q", b"m")], Some((token, None))).ok().unwrap();
        assert_eq!(tag, Some(u64::from(token - 9)));
    }
    assert_eq!(p.conn.unconfirmed(key), 5);
    p.method(key.id, basic::Ack { delivery_tag: 3, multiple: true });
    p.method(key.id, basic::Nack { delivery_tag: 5, multiple: false, requeue: false });
    p.method(key.id, basic::Ack { delivery_tag: 4, multiple: false });
    assert_eq!(
        p.events(),
        vec![
            Ev::Confirm(10, Ok(Confirmation::Ack)),
            Ev::Confirm(11, Ok(Confirmation::Ack)),
            Ev::Confirm(12, Ok(Confirmation::Ack)),
            Ev::Confirm(14, Ok(Confirmation::Nack)),
            Ev::Confirm(13, Ok(Confirmation::Ack)),
        ]
    );
    assert_eq!(p.conn.unconfirmed(key), 0);
}

#[test]
fn m7_confirm_tags_zero_or_beyond_the_last_close_the_connection() {
    for tag in [0, 2, 100] {
        let mut p = Peer::open();
        let key = p.open_channel(1);
        p.confirm_select(key, 2);
        p.conn.publish(key, [Peer::publish_frames(key, "q", b"m")], Some((3, None))).ok().unwrap();
        p.sent();
        p.method(key.id, basic::Ack { delivery_tag: tag, multiple: false });
        assert_eq!(close_sent(&p.sent_methods()).map(|c| c.0), Some(503), "tag {tag}");
        assert!(p.events().iter().any(|e| matches!(e, Ev::Confirm(3, Err(_)))), "the publish still resolves");
    }
}

#[test]
fn outstanding_confirms_fail_when_the_channel_closes() {
    let mut p = Peer::open();
    let key = p.open_channel(1);
    p.confirm_select(key, 2);
    for token in [3, 4] {
        p.conn.publish(key, [Peer::publish_frames(key, "q", b"m")], Some((token, None))).ok().unwrap();
    }
    p.method(key.id, basic::Ack { delivery_tag: 1, multiple: false });
    p.method(
        key.id,
        chan::Close {
            reply_code: ReplyCode::PRECONDITION_FAILED,
            reply_text: ShortStr::from_static("PRECONDITION_FAILED").unwrap(),
            class_id: 60,
            method_id: 40,
        },
    );
    let events = p.events();
    assert_eq!(events[0], Ev::Confirm(3, Ok(Confirmation::Ack)));
    assert!(matches!(&events[1], Ev::ChannelClosed(..)), "{events:?}");
    assert!(matches!(&events[2], Ev::Confirm(4, Err(e)) if e.contains("406")), "{events:?}");
    // And publishing there now fails at once, handing the token back.
    let (err, token) = p.conn.publish(key, [Peer::publish_frames(key, "q", b"m")], Some((5, None))).unwrap_err();
    assert_eq!(token, Some(5));
    assert!(err.to_string().contains("closed"));
}

#[test]
fn a_publish_without_a_waiter_still_takes_its_tag() {
    let mut p = Peer::open();
    let key = p.open_channel(1);
    p.confirm_select(key, 2);
    p.conn.publish(key, [Peer::publish_frames(key, "q", b"a")], Some((3, None))).ok().unwrap();
    p.conn.publish(key, [Peer::publish_frames(key, "q", b"b")], None).ok().unwrap();
    let tag = p.conn.publish(key, [Peer::publish_frames(key, "q", b"c")], Some((4, None))).ok().unwrap();
    assert_eq!(tag, Some(3));
    p.method(key.id, basic::Ack { delivery_tag: 3, multiple: true });
    assert_eq!(p.events(), vec![Ev::Confirm(3, Ok(Confirmation::Ack)), Ev::Confirm(4, Ok(Confirmation::Ack))]);
}

/// What the fake broker does next in a C5 script.
#[derive(Debug, Clone)]
enum Step {
    /// Confirm the publish `n`-th oldest outstanding (single), or up to it (multiple).
    Confirm { pick: usize, multiple: bool, nack: bool },
}

proptest! {
    /// C5: random publishes (some mandatory and unroutable), random single/multiple acks and
    /// nacks, returns sent before the ack that covers them: every publish resolves exactly
    /// once, to its true outcome.
    #[test]
    fn c5_every_publish_resolves_once_to_its_true_outcome(
        publishes in proptest::collection::vec(any::<bool>(), 1..60),
        steps in proptest::collection::vec(
            (any::<prop::sample::Index>(), any::<bool>(), prop::bool::weighted(0.2)).prop_map(|(i, multiple, nack)| (i, multiple, nack)),
            1..80,
        ),
    ) {
        let mut p = Peer::open();
        let key = p.open_channel(1);
        p.confirm_select(key, 2);
        // Token = tag. Unroutable mandatory publishes get a routing key of their own.
        let mut unroutable = BTreeMap::new();
        for (i, &returned) in publishes.iter().enumerate() {
            let tag = i as u64 + 1;
            let rk = if returned { format!("nowhere.{tag}") } else { "q".to_string() };
            let frames = Peer::publish_frames(key, &rk, b"body");
            let mandatory = returned.then(|| Box::new(key_for(&rk, 4)));
            p.conn.publish(key, [frames], Some((tag as u32, mandatory))).ok().unwrap();
            if returned {
                unroutable.insert(tag, rk);
            }
        }
        let mut outstanding: Vec<u64> = (1..=publishes.len() as u64).collect();
        let mut expected: BTreeMap<u32, Confirmation> = BTreeMap::new();
        let mut steps = steps.into_iter().map(|(i, multiple, nack)| Step::Confirm { pick: i.index(usize::MAX), multiple, nack });
        while !outstanding.is_empty() {
            let Step::Confirm { pick, multiple, nack } = steps.next().unwrap_or(Step::Confirm { pick: 0, multiple: true, nack: false });
            let tag = outstanding[pick % outstanding.len()];
            let covered: Vec<u64> = if multiple { outstanding.iter().copied().filter(|&t| t <= tag).collect() } else { vec![tag] };
            // The broker returns unroutable messages before acking them (never before a nack).
            for t in &covered {
                if let (false, Some(rk)) = (nack, unroutable.get(t)) {
                    let ret = basic::Return {
                        reply_code: ReplyCode::NO_ROUTE,
                        reply_text: ShortStr::from_static("NO_ROUTE").unwrap(),
                        exchange: ShortStr::new(),
                        routing_key: ShortStr::try_from(rk.as_str()).unwrap(),
                    };
                    p.method(key.id, ret);
                    p.feed(Frame::Header(key.id, ContentHeader::new(4, BasicProperties::default())));
                    p.feed(Frame::Body(key.id, bytes::Bytes::from_static(b"body")));
                }
            }
            if nack {
                p.method(key.id, basic::Nack { delivery_tag: tag, multiple, requeue: false });
            } else {
                p.method(key.id, basic::Ack { delivery_tag: tag, multiple });
            }
            for t in &covered {
                let outcome = match (nack, unroutable.contains_key(t)) {
                    (true, _) => Confirmation::Nack,
                    (false, true) => Confirmation::Returned(Box::new(lepus_codec::Content {
                        method: basic::Return {
                            reply_code: ReplyCode::NO_ROUTE,
                            reply_text: ShortStr::from_static("NO_ROUTE").unwrap(),
                            exchange: ShortStr::new(),
                            routing_key: ShortStr::try_from(unroutable[t].as_str()).unwrap(),
                        }.into(),
                        header: ContentHeader::new(4, BasicProperties::default()),
                        body: bytes::Bytes::from_static(b"body"),
                    })),
                    (false, false) => Confirmation::Ack,
                };
                expected.insert(*t as u32, outcome);
            }
            outstanding.retain(|t| !covered.contains(t));
        }
        let mut resolved: BTreeMap<u32, Confirmation> = BTreeMap::new();
        for event in p.events() {
            match event {
                Ev::Confirm(token, Ok(outcome)) => {
                    prop_assert!(resolved.insert(token, outcome).is_none(), "token {} resolved twice", token);
                }
                other => prop_assert!(false, "unexpected event {:?}", other),
            }
        }
        prop_assert_eq!(resolved, expected);
        prop_assert!(p.conn.is_open());
    }
}

#[test]
fn a_publish_that_arrives_after_the_broker_closed_its_channel_gets_the_brokers_reason() {
    // channel_max 1, so the next channel reuses the id.
    let tune = lepus_codec::method::connection::Tune { channel_max: 1, frame_max: 131_072, heartbeat: 60 };
    let mut p = Peer::open_with(super::config(), tune);
    let key = p.open_channel(1);
    p.confirm_select(key, 2);
    p.method(
        key.id,
        chan::Close {
            reply_code: ReplyCode::NOT_FOUND,
            reply_text: ShortStr::from_static("NOT_FOUND - no exchange 'x'").unwrap(),
            class_id: 60,
            method_id: 40,
        },
    );
    p.events();
    // This publish was already on its way from the handle when the close came in.
    let (err, token) = p.conn.publish(key, [Peer::publish_frames(key, "q", b"m")], Some((3, None))).unwrap_err();
    assert_eq!(token, Some(3));
    assert_eq!(err.reply_code(), Some(ReplyCode::NOT_FOUND), "{err}");
    p.sent();
    // A new incarnation on the same id is not confused with the old one.
    let again = p.open_channel(4);
    assert_eq!(again.id, key.id);
    p.conn.publish(again, [Peer::publish_frames(again, "q", b"m")], None).ok().unwrap();
}

/// Issue 9, defect 6: returns that match no outstanding mandatory publish (a broker bug, or a
/// hostile peer) are kept only up to a bound, not without limit.
#[test]
fn unmatched_returns_are_bounded() {
    let mut p = Peer::open();
    let key = p.open_channel(1);
    p.confirm_select(key, 2);
    let ret = basic::Return {
        reply_code: lepus_codec::ReplyCode::NO_ROUTE,
        routing_key: ShortStr::from_static("x").unwrap(),
        ..Default::default()
    };
    for _ in 0..100_000 {
        p.content(key.id, ret.clone(), b"r");
    }
    assert!(p.conn.unmatched_returns(key) <= 1024, "{} unmatched returns kept", p.conn.unmatched_returns(key));
    assert!(p.conn.is_open());
}
