//! Handshake, tuning, heartbeats, blocking, channels and close handshakes.

use std::time::Duration;

use bytes::Bytes;
use lepus_codec::{
    Frame, Method, ReplyCode, ShortStr,
    method::{channel as chan, connection, queue},
};

use super::{Ev, Peer, close_sent, config};
use crate::proto::Reply;

fn tune(channel_max: u16, frame_max: u32, heartbeat: u16) -> connection::Tune {
    connection::Tune { channel_max, frame_max, heartbeat }
}

#[test]
fn handshake_with_plain_sends_credentials_negotiates_and_opens_the_vhost() {
    let mut p = Peer::new(config());
    assert!(p.sent().is_empty(), "only the protocol header so far");
    p.method(0, connection::Start { mechanisms: Bytes::from_static(b"PLAIN AMQPLAIN"), ..Default::default() });
    let sent = p.sent_methods();
    let [(0, Method::ConnectionStartOk(ok))] = &sent[..] else { panic!("{sent:?}") };
    assert_eq!(ok.mechanism, "PLAIN");
    assert_eq!(&ok.response[..], b"\0guest\0guest");
    p.method(0, tune(2047, 131_072, 60));
    let sent = p.sent_methods();
    assert_eq!(
        sent,
        vec![
            (0, connection::TuneOk { channel_max: 2047, frame_max: 131_072, heartbeat: 60 }.into()),
            (0, connection::Open { virtual_host: ShortStr::from_static("/").unwrap(), ..Default::default() }.into()),
        ]
    );
    assert!(!p.conn.is_open());
    p.method(0, connection::OpenOk::default());
    assert_eq!(p.events(), vec![Ev::Connected]);
    assert!(p.conn.is_open());
    assert_eq!(p.conn.limits().frame_max, 131_072);
}

#[test]
fn handshake_with_amqplain_and_external_sends_that_mechanism() {
    for mech in ["AMQPLAIN", "EXTERNAL"] {
        let mut p = Peer::new(super::super::Config { mechanism: mech, sasl_response: Bytes::new(), ..config() });
        p.sent();
        p.method(
            0,
            connection::Start { mechanisms: Bytes::from_static(b"PLAIN AMQPLAIN EXTERNAL"), ..Default::default() },
        );
        let sent = p.sent_methods();
        let [(0, Method::ConnectionStartOk(ok))] = &sent[..] else { panic!("{sent:?}") };
        assert_eq!(ok.mechanism, mech);
    }
}

#[test]
fn a_mechanism_the_server_does_not_offer_fails_naming_both() {
    let mut p = Peer::new(super::super::Config { mechanism: "EXTERNAL", ..config() });
    p.sent();
    p.method(0, connection::Start { mechanisms: Bytes::from_static(b"PLAIN AMQPLAIN"), ..Default::default() });
    let events = p.events();
    let [Ev::Closed(text)] = &events[..] else { panic!("{events:?}") };
    assert!(text.contains("EXTERNAL") && text.contains("PLAIN AMQPLAIN"), "{text}");
    assert!(p.conn.is_closed());
}

#[test]
fn t4_wrong_password_is_access_refused_with_the_brokers_text() {
    let mut p = Peer::new(config());
    p.sent();
    p.method(0, connection::Start { mechanisms: Bytes::from_static(b"PLAIN"), ..Default::default() });
    p.sent();
    let text = "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN";
    p.method(
        0,
        connection::Close {
            reply_code: ReplyCode::ACCESS_REFUSED,
            reply_text: ShortStr::try_from(text).unwrap(),
            class_id: 10,
            method_id: 11,
        },
    );
    assert_eq!(p.sent_methods(), vec![(0, connection::CloseOk {}.into())]);
    assert_eq!(p.events(), vec![Ev::Closed(format!("access refused: {text}"))]);
    let err = p.conn.close_error().unwrap();
    assert_eq!(err.reply_code(), Some(ReplyCode::ACCESS_REFUSED));
}

#[test]
fn m8_tune_edge_values() {
    // (ours frame_max, server frame_max) -> tune-ok frame_max
    for (ours, theirs, agreed) in [
        (131_072, 0, 131_072),
        (131_072, 0x8000_0000, 131_072),
        (0, 0x8000_0000, 0x8000_0000),
        (0, 0, 0),
        (131_072, 4096, 4096),
    ] {
        let mut p = Peer::new(super::super::Config { frame_max: ours, ..config() });
        p.handshake(tune(0, theirs, 65535));
        let events = p.events();
        assert_eq!(events, vec![Ev::Connected], "{ours}/{theirs}");
        let t = p.conn.tuning();
        assert_eq!(t.frame_max, agreed, "{ours}/{theirs}");
        assert_eq!(t.channel_max, 2047, "server channel_max 0 means ours");
        assert_eq!(t.heartbeat, 60, "lower of 60 and 65535");
        assert!(p.conn.limits().frame_max >= 4096, "inbound limit stays finite and valid");
    }
    // A frame_max below the AMQP minimum is refused, with a close naming it.
    for bad in [1, 4095] {
        let mut p = Peer::new(config());
        p.handshake(tune(0, bad, 0));
        let sent = p.sent_methods();
        let (code, text) = close_sent(&sent).expect("connection.close sent");
        assert_eq!(code, 530);
        assert!(text.contains("frame_max"), "{text}");
        assert!(matches!(&p.events()[..], [Ev::Closed(t)] if t.contains("frame_max")));
    }
    // Heartbeat 0 on our side takes the server's.
    let mut p = Peer::new(super::super::Config { heartbeat: 0, ..config() });
    p.handshake(tune(0, 0, 65535));
    assert_eq!(p.conn.tuning().heartbeat, 65535);
}

#[test]
fn heartbeats_are_sent_after_half_an_interval_of_silence() {
    let mut p = Peer::open_with(config(), tune(2047, 131_072, 2));
    p.sent();
    p.advance(Duration::from_millis(900));
    assert!(p.sent().is_empty(), "nothing before half the interval");
    // The broker keeps talking, so only our side is silent.
    p.feed(Frame::Heartbeat);
    p.advance(Duration::from_millis(200));
    assert_eq!(p.sent(), vec![Frame::Heartbeat]);
    p.feed(Frame::Heartbeat);
    p.advance(Duration::from_secs(1));
    assert_eq!(p.sent(), vec![Frame::Heartbeat]);
    assert!(p.events().is_empty());
}

#[test]
fn n1_a_silent_peer_is_declared_dead_after_two_intervals_and_everything_pending_fails() {
    let mut p = Peer::open_with(config(), tune(2047, 131_072, 2));
    let key = p.open_channel(1);
    p.conn.call(key, queue::Declare::default().into(), 2);
    p.sent();
    // Our heartbeats keep going out, but nothing comes back.
    p.advance(Duration::from_millis(3900));
    assert!(p.events().is_empty(), "not dead before two intervals");
    p.advance(Duration::from_millis(200));
    let events = p.events();
    assert!(matches!(&events[0], Ev::Closed(e) if e.contains("presumed dead")), "closed first: {events:?}");
    assert!(events.iter().any(|e| matches!(e, Ev::Reply(2, Err(e)) if e.contains("presumed dead"))), "{events:?}");
    assert!(p.conn.is_closed());
    assert_eq!(p.conn.poll_timeout(), None);
}

#[test]
fn any_frame_from_the_broker_keeps_the_connection_alive() {
    let mut p = Peer::open_with(config(), tune(2047, 131_072, 2));
    for _ in 0..20 {
        p.advance(Duration::from_millis(1500));
        p.feed(Frame::Heartbeat);
    }
    assert!(p.conn.is_open());
}

#[test]
fn f1_blocked_and_unblocked_are_events_and_state() {
    let mut p = Peer::open();
    p.method(0, connection::Blocked { reason: ShortStr::from_static("low on memory").unwrap() });
    assert_eq!(p.conn.blocked(), Some("low on memory"));
    p.method(0, connection::Unblocked {});
    assert_eq!(p.conn.blocked(), None);
    assert_eq!(p.events(), vec![Ev::Blocked("low on memory".into()), Ev::Unblocked]);
}

#[test]
fn f3_channel_flow_is_answered_and_reported() {
    let mut p = Peer::open();
    let key = p.open_channel(1);
    p.method(key.id, chan::Flow { active: false });
    assert_eq!(p.sent_methods(), vec![(key.id, chan::FlowOk { active: false }.into())]);
    assert!(!p.conn.flow_active(key));
    p.method(key.id, chan::Flow { active: true });
    assert!(p.conn.flow_active(key));
    assert_eq!(p.events(), vec![Ev::ChannelFlow(key, false), Ev::ChannelFlow(key, true)]);
}

/// F3: after our flow-ok(false) no content goes out; publishes that arrive meanwhile wait,
/// in order, and follow the flow-ok(true).
#[test]
fn f3_publishes_wait_while_flow_is_off_and_follow_flow_on_in_order() {
    let mut p = Peer::open();
    let key = p.open_channel(1);
    p.confirm_select(key, 2);
    p.method(key.id, chan::Flow { active: false });
    p.sent();
    for (token, rk) in [(10, "a"), (11, "b")] {
        let frames = Peer::publish_frames(key, rk, b"x");
        assert!(p.conn.publish(key, [frames], Some((token, None))).is_ok());
    }
    assert!(p.sent().is_empty(), "content went out while flow was off");
    p.method(key.id, chan::Flow { active: true });
    let sent = p.sent_methods();
    let keys: Vec<String> = sent
        .iter()
        .map(|(_, m)| match m {
            Method::ChannelFlowOk(ok) => format!("flow-ok {}", ok.active),
            Method::BasicPublish(pb) => format!("publish {}", pb.routing_key),
            other => other.name().to_owned(),
        })
        .collect();
    assert_eq!(keys, ["flow-ok true", "publish a", "publish b"]);
    // Their tags were taken in order: the broker's acks resolve them.
    p.method(key.id, lepus_codec::method::basic::Ack { delivery_tag: 2, multiple: true });
    let events = p.events();
    assert!(events.iter().filter(|e| matches!(e, Ev::Confirm(10 | 11, Ok(_)))).count() == 2, "{events:?}");
}

#[test]
fn b6_a_channel_error_closes_only_that_channel_and_its_id_is_reused() {
    let mut p = Peer::open();
    let a = p.open_channel(1);
    let b = p.open_channel(2);
    p.conn.call(a, queue::Declare { passive: true, ..Default::default() }.into(), 3);
    p.sent();
    p.method(
        a.id,
        chan::Close {
            reply_code: ReplyCode::NOT_FOUND,
            reply_text: ShortStr::from_static("NOT_FOUND - no queue 'x'").unwrap(),
            class_id: 50,
            method_id: 10,
        },
    );
    assert_eq!(p.sent_methods(), vec![(a.id, chan::CloseOk {}.into())]);
    let events = p.events();
    assert!(
        matches!(&events[1], Ev::Reply(3, Err(e)) if e.contains("404") && e.contains("no queue") && e.contains("50.10"))
    );
    assert!(matches!(&events[0], Ev::ChannelClosed(k, _) if *k == a), "closed before the failures it causes");
    // The other channel carries on, and the freed id comes back with a new epoch.
    p.conn.call(b, queue::Declare::default().into(), 4);
    assert_eq!(p.sent_methods().len(), 1);
    let again = p.open_channel(5);
    assert_ne!(again, a);
    assert!(p.conn.is_open());
    assert_eq!(p.conn.channel_count(), 2);
}

#[test]
fn closing_a_channel_fails_its_pending_calls_and_waits_for_close_ok() {
    let mut p = Peer::open();
    let key = p.open_channel(1);
    p.conn.call(key, queue::Declare::default().into(), 2);
    p.conn.call(key, chan::Close::default().into(), 3);
    let sent = p.sent_methods();
    assert!(matches!(sent.last(), Some((_, Method::ChannelClose(_)))));
    assert!(matches!(&p.events()[..], [Ev::Reply(2, Err(e))] if e.contains("closed by the application")));
    // The declare-ok that crosses our close is discarded.
    p.method(key.id, queue::DeclareOk::default());
    assert!(p.events().is_empty());
    p.method(key.id, chan::CloseOk {});
    let events = p.events();
    assert!(matches!(events[0], Ev::ChannelClosed(k, _) if k == key));
    assert_eq!(events[1], Ev::Reply(3, Ok(Reply::Method(chan::CloseOk {}.into()))));
    assert_eq!(p.conn.channel_count(), 0);
}

#[test]
fn r3_channel_max_is_enforced_and_ids_are_reused_only_after_close_ok() {
    let mut p = Peer::open_with(config(), tune(3, 131_072, 60));
    let keys: Vec<_> = (1..=3).map(|t| p.open_channel(t)).collect();
    assert_eq!(keys.iter().map(|k| k.id).collect::<Vec<_>>(), vec![1, 2, 3]);
    let err = p.conn.open_channel(9, 9).map(|_| ()).unwrap_err().0;
    assert!(err.to_string().contains("channel_max 3"), "{err}");
    // Closing, not yet closed: the id is still taken.
    p.conn.call(keys[1], chan::Close::default().into(), 10);
    p.sent();
    assert!(p.conn.open_channel(11, 11).is_err());
    p.method(keys[1].id, chan::CloseOk {});
    p.events();
    let reused = p.open_channel(12);
    assert_eq!(reused.id, 2);
    assert_ne!(reused.epoch, keys[1].epoch);
    p.conn.call(reused, chan::Close::default().into(), 13);
    p.method(reused.id, chan::CloseOk {});
    // Many open/close cycles: no leak, ids stay within bounds.
    for i in 0..10_000u32 {
        let key = p.conn.open_channel(i, i).map_err(|(e, ..)| e).unwrap();
        assert_eq!(key.id, 2, "the only free id");
        p.method(key.id, chan::OpenOk::default());
        p.conn.call(key, chan::Close::default().into(), i);
        p.method(key.id, chan::CloseOk {});
        p.sent();
        p.events();
    }
    assert_eq!(p.conn.channel_count(), 2);
}

#[test]
fn b1_the_broker_closing_the_connection_fails_everything_with_its_reason() {
    let mut p = Peer::open();
    let key = p.open_channel(1);
    p.conn.call(key, queue::Declare::default().into(), 2);
    p.sent();
    p.method(
        0,
        connection::Close {
            reply_code: ReplyCode::CONNECTION_FORCED,
            reply_text: ShortStr::from_static("CONNECTION_FORCED - bye").unwrap(),
            class_id: 0,
            method_id: 0,
        },
    );
    assert_eq!(p.sent_methods(), vec![(0, connection::CloseOk {}.into())]);
    let events = p.events();
    assert!(matches!(&events[0], Ev::Closed(e) if e.contains("closed by server")), "{events:?}");
    assert!(events.iter().any(|e| matches!(e, Ev::Reply(2, Err(e)) if e.contains("320") && e.contains("bye"))));
    assert_eq!(p.conn.close_error().unwrap().reply_code(), Some(ReplyCode::CONNECTION_FORCED));
    // Commands after the close fail with the same reason.
    let err = p.conn.open_channel(3, 3).map(|_| ()).unwrap_err().0;
    assert!(err.to_string().contains("bye"));
}

#[test]
fn closing_the_connection_waits_for_close_ok_or_the_deadline() {
    let mut p = Peer::open();
    let key = p.open_channel(1);
    p.conn.call(key, queue::Declare::default().into(), 2);
    p.conn.close(p.now, ReplyCode::REPLY_SUCCESS, "bye", Some(Duration::from_secs(1)));
    let sent = p.sent_methods();
    assert_eq!(close_sent(&sent), Some((200, "bye".into())));
    let events = p.events();
    assert!(events.iter().any(|e| matches!(e, Ev::Reply(2, Err(_)))), "{events:?}");
    assert!(!events.iter().any(|e| matches!(e, Ev::Closed(_))), "not closed before close-ok");
    p.method(0, connection::CloseOk {});
    assert!(matches!(&p.events()[..], [Ev::Closed(e)] if e.contains("bye")));

    let mut p = Peer::open();
    p.conn.close(p.now, ReplyCode::REPLY_SUCCESS, "bye", Some(Duration::from_secs(1)));
    p.advance(Duration::from_millis(1001));
    assert!(matches!(&p.events()[..], [Ev::Closed(_)]));
    assert!(p.conn.is_closed());
}

#[test]
fn m7_connection_methods_on_a_channel_and_content_on_channel_0_close_the_connection() {
    let cases: Vec<(Frame, u16)> = vec![
        (Frame::Method(1, connection::Blocked::default().into()), 503),
        (Frame::Body(0, Bytes::from_static(b"x")), 505),
        (Frame::Method(7, lepus_codec::method::basic::Deliver::default().into()), 504),
        (Frame::Method(0, queue::DeclareOk::default().into()), 503),
    ];
    for (frame, code) in cases {
        let mut p = Peer::open();
        p.open_channel(1);
        p.feed(frame.clone());
        let sent = p.sent_methods();
        assert_eq!(close_sent(&sent).map(|c| c.0), Some(code), "{frame:?}");
        assert!(!p.conn.is_open());
    }
}

#[test]
fn an_unexpected_reply_is_a_protocol_violation() {
    let mut p = Peer::open();
    let key = p.open_channel(1);
    p.conn.call(key, queue::Declare::default().into(), 2);
    p.sent();
    p.method(key.id, queue::PurgeOk { message_count: 0 });
    assert_eq!(close_sent(&p.sent_methods()).map(|c| c.0), Some(503));
    assert!(p.events().iter().any(|e| matches!(e, Ev::Reply(2, Err(e)) if e.contains("queue.purge-ok"))));
}

#[test]
fn m1_a_decode_error_closes_with_its_code_at_once() {
    let mut p = Peer::open();
    p.open_channel(1);
    p.conn.handle_decode_error(lepus_codec::DecodeError::BadFrameEnd { found: 0 });
    assert_eq!(close_sent(&p.sent_methods()).map(|c| c.0), Some(501));
    assert!(p.events().iter().any(|e| matches!(e, Ev::Closed(e) if e.contains("frame-end"))));
    assert!(p.conn.is_closed());
}

#[test]
fn update_secret_gets_its_reply() {
    let mut p = Peer::open();
    p.conn.update_secret(Bytes::from_static(b"token"), "refresh", 1);
    assert!(matches!(&p.sent_methods()[..], [(0, Method::ConnectionUpdateSecret(_))]));
    p.method(0, connection::UpdateSecretOk {});
    assert_eq!(p.events(), vec![Ev::Reply(1, Ok(Reply::Method(connection::UpdateSecretOk {}.into())))]);
}

#[test]
fn the_heartbeat_deadline_moves_on_even_when_bytes_wait_to_be_written() {
    let mut p = Peer::open_with(config(), tune(2047, 131_072, 2));
    // Something is queued and the driver has not taken it (the socket is not writable).
    p.conn.update_secret(Bytes::from_static(b"t"), "r", 1);
    let at = p.now + Duration::from_secs(1);
    p.conn.handle_timeout(at);
    let next = p.conn.poll_timeout().unwrap();
    assert!(next > at, "a deadline that does not move would wake the driver in a loop");
}

#[test]
fn silence_while_reading_is_paused_is_not_a_dead_peer() {
    let mut p = Peer::open_with(config(), tune(2047, 131_072, 2));
    // A consumer's queue is full: the driver stops reading for 10 s.
    p.conn.set_reading(p.now, false);
    p.advance(Duration::from_secs(10));
    assert!(p.conn.is_open(), "the broker's heartbeats wait unread in the socket");
    assert!(p.sent().contains(&Frame::Heartbeat), "ours keep going out");
    // Reading resumes: silence counts from now, and a dead peer is still detected.
    p.conn.set_reading(p.now, true);
    p.advance(Duration::from_millis(3900));
    assert!(p.conn.is_open());
    p.advance(Duration::from_millis(200));
    assert!(p.conn.is_closed());
}

fn nested_table(levels: usize) -> lepus_codec::FieldTable {
    let mut table = lepus_codec::FieldTable::new();
    for _ in 0..levels {
        let mut outer = lepus_codec::FieldTable::new();
        outer.insert("x", lepus_codec::FieldValue::Table(table)).unwrap();
        table = outer;
    }
    table
}

/// Issue 9, defect 3: a method that cannot be encoded fails its caller at once and leaves no
/// reply waiting, so the next call on the channel gets its own reply.
#[test]
fn a_method_that_cannot_be_encoded_fails_its_caller_and_leaves_nothing_pending() {
    let mut p = Peer::open();
    let key = p.open_channel(1);
    let deep = lepus_codec::method::queue::Declare { arguments: nested_table(500), ..Default::default() };
    p.conn.call(key, deep.into(), 2);
    assert!(p.sent().is_empty(), "nothing may be sent");
    let events = p.events();
    assert!(matches!(&events[..], [Ev::Reply(2, Err(e))] if e.contains("nested")), "{events:?}");
    // Over frame_max: also refused before sending.
    let mut args = lepus_codec::FieldTable::new();
    args.insert("blob", lepus_codec::FieldValue::LongString(Bytes::from(vec![b'x'; 200_000]))).unwrap();
    let big = lepus_codec::method::queue::Declare { arguments: args, ..Default::default() };
    p.conn.call(key, big.into(), 3);
    assert!(p.sent().is_empty(), "nothing may be sent");
    let events = p.events();
    assert!(matches!(&events[..], [Ev::Reply(3, Err(e))] if e.contains("frame_max")), "{events:?}");
    // The next call gets its own reply.
    p.conn.call(key, lepus_codec::method::queue::Declare::default().into(), 4);
    assert_eq!(p.sent_methods().len(), 1);
    p.method(key.id, lepus_codec::method::queue::DeclareOk::default());
    let events = p.events();
    assert!(matches!(&events[..], [Ev::Reply(4, Ok(_))]), "{events:?}");
    assert!(p.conn.is_open());
}
