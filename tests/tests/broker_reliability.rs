//! The reliability catalogue (`/work/shared/RELIABILITY.md`) at client level, against the
//! real RabbitMQ: resource limits (R1-R3) and broker faults (B1, B5, B6), a slow handler
//! with a 2 s heartbeat (C4), and an unpolled consumer next to R5. The concurrency cases
//! (C1, C3) are in `broker_concurrency.rs`, the RSS bounds of R3 and R5 in
//! `memory_bounds.rs`.
//!
//! B1 closes a connection with `rabbitmqctl close_connection`, but only this test's own
//! connection, found by a unique `connection_name`: other connections on the shared node
//! are never touched.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use lepus::codec::EncodeError;
use lepus::{
    BasicProperties, Channel, Confirmation, ConnectionEvent, ConsumeOptions, Consumer, Delivery, Error, FieldTable,
    Initiator, PublishOptions, QueueDeclareOptions, ReplyCode,
};
use lepus_tests::bounded::{Bounded, within};
use lepus_tests::util::{
    assert_channel_error, broker_channel_count, connect, connect_with, connection_pid, exclusive, exclusive_queue,
    options, passive, rabbitmqctl, ready, unique,
};

/// The most any single expected event may take.
const WAIT: Duration = Duration::from_secs(10);

async fn next(consumer: &mut Consumer) -> Delivery {
    match within(WAIT, "a delivery", consumer.next()).await {
        Some(Ok(d)) => d,
        other => panic!("expected a delivery, got {other:?}"),
    }
}

/// A body whose every byte depends on its position and `seed`, so a misplaced frame
/// boundary or a stray byte shows.
fn pattern(size: usize, seed: usize) -> Bytes {
    (0..size).map(|i| ((i + seed * 7) % 251) as u8).collect::<Vec<u8>>().into()
}

/// Runs `rabbitmqctl` off the runtime's threads.
async fn ctl<T: Send + 'static>(f: impl FnOnce() -> Result<T, String> + Send + 'static) -> T {
    within(WAIT, "rabbitmqctl", tokio::task::spawn_blocking(f)).await.unwrap().unwrap()
}

/// R1: at `frame_max` 4096 the client splits and reassembles bodies of 0, 1, 4088 (one full
/// frame), 4089 (one byte over), 40960 and 5 MiB byte-identically, through the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r1_bodies_across_frame_boundaries_round_trip_at_frame_max_4096() {
    let conn = connect_with(options().frame_max(4096)).await;
    assert_eq!(conn.tuning().frame_max, 4096);
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let q = exclusive_queue(&ch, "r1").await;
    let sizes = [0usize, 1, 4088, 4089, 40960, 5 << 20];
    let mut confirms = Vec::new();
    for (seed, size) in sizes.into_iter().enumerate() {
        confirms
            .push(ch.basic_publish("", &q, pattern(size, seed), PublishOptions::default()).within(WAIT).await.unwrap());
    }
    for c in confirms {
        assert_eq!(within(WAIT, "a confirm", c).await.unwrap(), Confirmation::Ack);
    }
    let mut consumer = ch.basic_consume(&q, ConsumeOptions::default()).within(WAIT).await.unwrap();
    for (seed, size) in sizes.into_iter().enumerate() {
        let d = next(&mut consumer).await;
        assert_eq!(d.body.len(), size);
        assert!(d.body == pattern(size, seed), "the {size}-byte body differs");
        d.ack().within(WAIT).await.unwrap();
    }
    conn.close().within(WAIT).await.unwrap();
}

/// R2: RabbitMQ sends a message's header frame whole even when it is larger than the
/// consumer's `frame_max` (it refuses such frames from clients, so the message is published
/// on a connection with the default `frame_max`). The 4096 consumer accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r2_header_frame_larger_than_frame_max_4096_is_accepted() {
    let mut headers = FieldTable::new();
    for i in 0..200 {
        headers.insert(format!("header-{i:03}").as_str(), "v".repeat(90)).unwrap();
    }
    let properties = BasicProperties { headers: Some(headers.clone()), ..Default::default() };
    let body = pattern(10_000, 2);

    let consumer_conn = connect_with(options().frame_max(4096)).await;
    let consumer_ch = consumer_conn.open_channel().within(WAIT).await.unwrap();
    let q = consumer_ch
        .queue_declare(&unique("r2"), QueueDeclareOptions::default(), FieldTable::new())
        .within(WAIT)
        .await
        .unwrap();
    let mut consumer = consumer_ch.basic_consume(&q.name, ConsumeOptions::default()).within(WAIT).await.unwrap();

    // The client refuses to send a header frame over its own frame_max: a typed error,
    // and the connection stays up.
    let small = consumer_conn.open_channel().within(WAIT).await.unwrap();
    let options_4096 = PublishOptions { properties: properties.clone(), ..Default::default() };
    let err = small.basic_publish("", &q.name, body.clone(), options_4096).within(WAIT).await.unwrap_err();
    assert!(
        matches!(err, Error::Encode(EncodeError::FrameTooLarge { what: "content header", frame_max: 4096, .. })),
        "{err:?}"
    );
    assert!(consumer_conn.is_open() && small.is_open());

    let publisher = connect().await;
    assert_eq!(publisher.tuning().frame_max, 131_072);
    let ch = publisher.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let confirm = ch.basic_publish("", &q.name, body.clone(), PublishOptions { properties, ..Default::default() });
    assert_eq!(within(WAIT, "a confirm", confirm.await.unwrap()).await.unwrap(), Confirmation::Ack);

    let d = next(&mut consumer).await;
    assert!(d.body == body);
    assert_eq!(d.properties.headers.as_ref(), Some(&headers), "the ~20 KB header table arrived whole");
    d.ack().within(WAIT).await.unwrap();
    assert!(consumer_conn.is_open());
    consumer_ch.queue_delete(&q.name, Default::default()).within(WAIT).await.unwrap();
    publisher.close().within(WAIT).await.unwrap();
    consumer_conn.close().within(WAIT).await.unwrap();
}

/// R3: with `channel_max` 5 the sixth channel fails locally with `ChannelLimit`; 2,000
/// open/close cycles reuse the five ids and leave no channel behind on the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_channel_max_is_enforced_locally_and_ids_are_reused() {
    let name = unique("r3");
    let conn = connect_with(options().channel_max(5).connection_name(&name)).await;
    assert_eq!(conn.tuning().channel_max, 5);
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(conn.open_channel().within(WAIT).await.unwrap());
    }
    let mut ids: Vec<u16> = held.iter().map(Channel::id).collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 3, 4, 5]);
    let err = conn.open_channel().within(WAIT).await.unwrap_err();
    assert!(matches!(err, Error::ChannelLimit(5)), "{err:?}");
    assert!(conn.is_open() && held.iter().all(Channel::is_open), "refused locally: nothing else changed");

    // Free one id; 2,000 cycles through it.
    let freed = held.pop().unwrap();
    let freed_id = freed.id();
    freed.close().within(WAIT).await.unwrap();
    for cycle in 0..2000u32 {
        let ch = conn.open_channel().within(WAIT).await.unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        assert_eq!(ch.id(), freed_id, "the only free id");
        if cycle.is_multiple_of(100) {
            ch.basic_qos(1, false).within(WAIT).await.unwrap();
        }
        ch.close().within(WAIT).await.unwrap();
    }
    held[0].queue_declare("", exclusive(), FieldTable::new()).within(WAIT).await.expect("the held channels still work");

    let pid = ctl({
        let name = name.clone();
        move || connection_pid(&name)
    })
    .await
    .expect("our connection is listed");
    let on_broker = ctl(move || broker_channel_count(&pid)).await;
    assert_eq!(on_broker, held.len(), "the broker sees exactly the channels we hold");
    conn.close().within(WAIT).await.unwrap();
}

/// Publishes 64 KiB messages on a confirm-mode channel until publishing fails; returns that
/// error and every confirm's outcome. Counts the publishes in `published`.
async fn publish_until_error(
    ch: Channel,
    queue: String,
    published: Arc<AtomicUsize>,
) -> (Error, Vec<Result<Confirmation, Error>>) {
    let mut confirms = tokio::task::JoinSet::new();
    let error = loop {
        match ch.basic_publish("", &queue, pattern(64 << 10, 1), PublishOptions::default()).within(WAIT).await {
            Ok(confirm) => {
                published.fetch_add(1, Ordering::Relaxed);
                confirms.spawn(confirm);
            }
            Err(e) => break e,
        }
    };
    (error, confirms.join_all().within(WAIT).await)
}

/// B1: an operator closes our connection (`rabbitmqctl close_connection`, this connection
/// only): every waiter — pending publishes and confirms, a consumer, a channel, the
/// connection — learns 320 `CONNECTION_FORCED` with the operator's text within a second.
///
/// Whether any confirm is still outstanding at the instant the broker handles the close
/// is a race (it may have confirmed everything just before), so the scenario runs in
/// rounds, each on a fresh connection and each with every check, until one round closes
/// with confirms in flight and sees them fail with the 320.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn b1_operator_close_fails_every_waiter_with_320_and_the_text() {
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let (confirmed, failed) = b1_round().await;
        rounds.push((confirmed, failed));
        if failed > 0 {
            return;
        }
    }
    panic!("no round closed with confirms in flight (confirmed, failed per round): {rounds:?}");
}

/// One B1 round; returns how many confirms were acked and how many failed with the 320.
async fn b1_round() -> (usize, usize) {
    let name = unique("b1");
    // A small publish window, so publishers are waiting for room when the close comes.
    let conn = connect_with(options().connection_name(&name).publish_window(4)).await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    let q = exclusive_queue(&ch, "b1").await;
    // The consumer waits on a queue of its own: one left unpolled on the flooded queue would
    // stall the whole connection (see the unpolled-consumer test below) and hide the close.
    let idle_q = exclusive_queue(&ch, "b1-idle").await;
    let mut consumer = ch.basic_consume(&idle_q, ConsumeOptions::default()).within(WAIT).await.unwrap();
    let idle = conn.open_channel().within(WAIT).await.unwrap();
    let mut events = conn.events();

    let published = Arc::new(AtomicUsize::new(0));
    let mut publishers = Vec::new();
    for _ in 0..3 {
        let ch = conn.open_channel().within(WAIT).await.unwrap();
        ch.confirm_select().within(WAIT).await.unwrap();
        publishers.push(tokio::spawn(publish_until_error(ch, q.clone(), published.clone())));
    }
    let closed = tokio::spawn({
        let conn = conn.clone();
        async move { conn.closed().within(WAIT).await }
    });
    let idle_closed = tokio::spawn(async move { idle.closed(WAIT).within(WAIT).await });

    // Publishing is under way; find our connection and close it.
    let deadline = Instant::now() + WAIT;
    while published.load(Ordering::Relaxed) < 20 {
        assert!(Instant::now() < deadline, "publishing never got going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pid = ctl({
        let name = name.clone();
        move || connection_pid(&name)
    })
    .await
    .expect("our connection is listed");
    let text = format!("lepus B1 test closes {name}");
    ctl({
        let text = text.clone();
        move || rabbitmqctl(&["close_connection", &pid, &text])
    })
    .await;
    let closed_by_operator = Instant::now();

    let check = |err: &Error, what: &str| match err {
        Error::ConnectionClosed(r) => {
            assert_eq!(r.reply_code, ReplyCode::CONNECTION_FORCED, "{what}: {err}");
            assert_eq!(r.initiator, Initiator::Server, "{what}: {err}");
            assert!(r.reply_text.contains(&text), "{what}: {err}");
        }
        other => panic!("{what}: expected the 320 close, got {other:?}"),
    };
    let second = Duration::from_secs(1);
    let err = tokio::time::timeout(second, closed).await.expect("conn.closed() within 1 s").unwrap();
    check(&err, "Connection::closed");
    match tokio::time::timeout(second, consumer.next()).await.expect("the consumer within 1 s") {
        Some(Err(e)) => check(&e, "the consumer"),
        other => panic!("the consumer: expected the close, got {other:?}"),
    }
    assert!(consumer.next().within(WAIT).await.is_none(), "then the stream ends");
    let idle_err = tokio::time::timeout(second, idle_closed).await.expect("the idle channel within 1 s").unwrap();
    check(&idle_err.expect("the idle channel closed"), "an idle channel");
    let mut confirmed = 0;
    let mut failed = 0;
    for publisher in publishers {
        let (err, confirms) = tokio::time::timeout(second, publisher).await.expect("publishers within 1 s").unwrap();
        check(&err, "a waiting publish");
        for c in confirms {
            match c {
                Ok(Confirmation::Ack) => confirmed += 1,
                Ok(other) => panic!("unexpected {other:?}"),
                Err(e) => {
                    check(&e, "a pending confirm");
                    failed += 1;
                }
            }
        }
    }
    assert!(confirmed > 0, "{confirmed} confirmed, {failed} failed: publishing was under way");
    assert!(closed_by_operator.elapsed() < Duration::from_secs(2));
    loop {
        match events.try_recv() {
            Ok(ConnectionEvent::Closed(e)) => {
                check(&e, "the Closed event");
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("no Closed event: {e}"),
        }
    }
    // Whatever comes next fails at once with the same reason.
    check(&conn.open_channel().within(WAIT).await.unwrap_err(), "open_channel afterwards");
    check(&ch.queue_declare(&q, passive(), FieldTable::new()).within(WAIT).await.unwrap_err(), "a call afterwards");
    assert!(!conn.is_open());
    conn.close().within(WAIT).await.unwrap();
    (confirmed, failed)
}

/// B5: deleting the queue under a consumer ends its stream with `CancelledByBroker`, after
/// the deliveries that came first; the channel stays open.
#[tokio::test]
async fn b5_queue_deleted_while_consuming_ends_the_stream_with_cancelled_by_broker() {
    let conn = connect().await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let q = exclusive_queue(&ch, "b5").await;
    let consuming = conn.open_channel().within(WAIT).await.unwrap();
    let mut consumer = consuming.basic_consume(&q, ConsumeOptions::default()).within(WAIT).await.unwrap();
    for i in 0..3u8 {
        let confirm = ch.basic_publish("", &q, vec![i], PublishOptions::default()).within(WAIT).await.unwrap();
        assert!(within(WAIT, "a confirm", confirm).await.unwrap().is_ack());
    }
    for i in 0..3u8 {
        let d = next(&mut consumer).await;
        assert_eq!(&d.body[..], [i]);
        d.ack().within(WAIT).await.unwrap();
    }
    ch.queue_delete(&q, Default::default()).within(WAIT).await.unwrap();
    match within(WAIT, "the cancel", consumer.next()).await {
        Some(Err(Error::CancelledByBroker(tag))) => assert_eq!(tag, consumer.tag()),
        other => panic!("expected CancelledByBroker, got {other:?}"),
    }
    assert!(within(WAIT, "the end", consumer.next()).await.is_none());
    assert!(consuming.is_open(), "a broker cancel does not close the channel");
    consuming.queue_declare("", exclusive(), FieldTable::new()).within(WAIT).await.unwrap();
    conn.close().within(WAIT).await.unwrap();
}

/// How B6 provokes each channel error.
#[derive(Debug, Clone, Copy)]
enum Provoke {
    /// 404: publish to a missing exchange.
    MissingExchange,
    /// 405: declare another connection's exclusive queue.
    LockedQueue,
    /// 406: redeclare a queue with other flags.
    Inequivalent,
}

/// B6: 404, 405 and 406 each close only their channel; the publishes pipelined behind the
/// failing command get the code; the channel id is free again; the other channel carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b6_channel_errors_close_only_their_channel() {
    // channel_max 2: the bystander has id 1, so every new channel must reuse id 2.
    let conn = connect_with(options().channel_max(2)).await;
    let bystander = conn.open_channel().within(WAIT).await.unwrap();
    bystander.confirm_select().within(WAIT).await.unwrap();
    let q = exclusive_queue(&bystander, "b6").await;
    let mut consumer = bystander.basic_consume(&q, ConsumeOptions::default()).within(WAIT).await.unwrap();
    let owner = connect().await;
    let locked = exclusive_queue(&owner.open_channel().within(WAIT).await.unwrap(), "b6-locked").await;

    for (round, (provoke, code)) in [
        (Provoke::MissingExchange, ReplyCode::NOT_FOUND),
        (Provoke::LockedQueue, ReplyCode::RESOURCE_LOCKED),
        (Provoke::Inequivalent, ReplyCode::PRECONDITION_FAILED),
    ]
    .into_iter()
    .enumerate()
    {
        let victim = conn.open_channel().within(WAIT).await.unwrap();
        assert_eq!(victim.id(), 2, "{provoke:?}: the id of the channel that failed before is free again");
        victim.confirm_select().within(WAIT).await.unwrap();
        // Three publishes queued right behind the failing command, then their confirms.
        let publish_behind = async {
            let mut sent = Vec::new();
            for i in 0..3 {
                let body = format!("{provoke:?} {i}").into_bytes();
                sent.push(victim.basic_publish("", &q, body, PublishOptions::default()).within(WAIT).await);
            }
            let mut results = Vec::new();
            for publish in sent {
                results.push(match publish {
                    Ok(confirm) => within(WAIT, "a confirm", confirm).await,
                    Err(e) => Err(e),
                });
            }
            results
        };
        let (failing, behind) = match provoke {
            Provoke::MissingExchange => {
                let missing = unique("b6-missing");
                let failing = async {
                    let confirm =
                        victim.basic_publish(&missing, "k", &b"x"[..], PublishOptions::default()).within(WAIT).await?;
                    within(WAIT, "a confirm", confirm).await.map(|_| ())
                };
                tokio::join!(failing, publish_behind)
            }
            Provoke::LockedQueue => {
                let failing = async {
                    victim.queue_declare(&locked, passive(), FieldTable::new()).within(WAIT).await.map(|_| ())
                };
                tokio::join!(failing, publish_behind)
            }
            Provoke::Inequivalent => {
                let flags = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
                let failing =
                    async { victim.queue_declare(&q, flags, FieldTable::new()).within(WAIT).await.map(|_| ()) };
                tokio::join!(failing, publish_behind)
            }
        };
        assert_channel_error(&failing.unwrap_err(), code);
        for result in behind {
            assert_channel_error(&result.expect_err("a publish behind the failure"), code);
        }
        // (The channel's state may lag the failed call by a moment: see the next test.)
        let reason = victim.closed(WAIT).within(WAIT).await.expect("the channel closed");
        assert_eq!(reason.reply_code(), Some(code));
        assert!(!victim.is_open());

        // The bystander never noticed.
        assert!(bystander.is_open() && conn.is_open(), "{provoke:?}");
        let body = format!("bystander {round}");
        let confirm =
            bystander.basic_publish("", &q, body.clone().into_bytes(), PublishOptions::default()).within(WAIT).await;
        assert_eq!(within(WAIT, "a confirm", confirm.unwrap()).await.unwrap(), Confirmation::Ack);
        let d = next(&mut consumer).await;
        assert_eq!(d.body, body.as_bytes(), "only the bystander's messages reached the queue");
        d.ack().within(WAIT).await.unwrap();
    }
    let fresh = conn.open_channel().within(WAIT).await.unwrap();
    assert_eq!(fresh.id(), 2);
    assert_eq!(ready(&fresh, &q).await, 0);
    assert!(bystander.is_open());
    owner.close().within(WAIT).await.unwrap();
    conn.close().within(WAIT).await.unwrap();
}

// A call that fails because the broker closed its channel must find the channel closed,
// with that reason, the moment it returns: the state machine emits ChannelClosed before
// the failures it causes, so the driver records the reason before waking any waiter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b6_a_channel_error_is_the_channels_state_as_soon_as_the_call_fails() {
    let conn = connect().await;
    for round in 0..200 {
        let ch = conn.open_channel().within(WAIT).await.unwrap();
        ch.confirm_select().within(WAIT).await.unwrap();
        let err = ch.queue_declare(&unique("missing"), passive(), FieldTable::new()).within(WAIT).await.unwrap_err();
        assert_channel_error(&err, ReplyCode::NOT_FOUND);
        assert!(!ch.is_open(), "round {round}: the call failed with 404 but the channel reads as open");
        assert_eq!(ch.close_reason().and_then(|e| e.reply_code()), Some(ReplyCode::NOT_FOUND), "round {round}");
        let publish = match ch.basic_publish("", "k", &b"x"[..], PublishOptions::default()).within(WAIT).await {
            Ok(confirm) => within(WAIT, "a confirm", confirm).await.map(|_| ()),
            Err(e) => Err(e),
        };
        assert_channel_error(&publish.expect_err("a publish on the closed channel"), ReplyCode::NOT_FOUND);
    }
    conn.close().within(WAIT).await.unwrap();
}

// One consumer that is not polled, with no prefetch and a backlog larger than its buffer,
// must not stall the other channels nor lose the connection: the driver keeps reading while
// up to 16 MiB of deliveries wait for full consumer queues, and only then pushes back on the
// broker (with the dead-peer check suspended while it does not read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpolled_consumer_without_prefetch_does_not_stall_or_kill_the_connection() {
    let conn = connect_with(options().heartbeat(1)).await;
    assert_eq!(conn.tuning().heartbeat, 1);
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let backlog = exclusive_queue(&ch, "unpolled-backlog").await;
    let other = exclusive_queue(&ch, "unpolled-other").await;
    let mut confirms = Vec::new();
    for i in 0..2000u32 {
        confirms.push(
            ch.basic_publish("", &backlog, i.to_be_bytes().to_vec(), PublishOptions::default())
                .within(WAIT)
                .await
                .unwrap(),
        );
    }
    for c in confirms {
        assert!(within(WAIT, "a confirm", c).await.unwrap().is_ack());
    }
    let consuming = conn.open_channel().within(WAIT).await.unwrap();
    let mut consumer = consuming.basic_consume(&backlog, ConsumeOptions::default()).within(WAIT).await.unwrap();

    // The application is busy for 3 s (three heartbeat intervals) and does not poll the
    // consumer. Meanwhile another channel publishes with confirms, each within a second.
    let busy_until = Instant::now() + Duration::from_secs(3);
    let mut round = 0u32;
    while Instant::now() < busy_until {
        let confirm =
            ch.basic_publish("", &other, round.to_be_bytes().to_vec(), PublishOptions::default()).within(WAIT).await;
        let verdict = tokio::time::timeout(Duration::from_secs(1), confirm.unwrap()).await;
        assert!(
            matches!(verdict, Ok(Ok(Confirmation::Ack))),
            "round {round}: a confirm on another channel while a consumer is not polled: {verdict:?} \
             (connection: {:?})",
            conn.close_reason()
        );
        round += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(conn.is_open(), "{:?}", conn.close_reason());
    // The application comes back: every message is there, in order.
    for i in 0..2000u32 {
        let d = next(&mut consumer).await;
        assert_eq!(&d.body[..], i.to_be_bytes());
        d.ack().within(WAIT).await.unwrap();
    }
    conn.close().within(WAIT).await.unwrap();
}

/// C4: an application whose handler takes 10 s per message, on a connection with a 2 s
/// heartbeat, that never reads its confirms nor its connection events while another task
/// keeps publishing: the connection stays up for the 30 s it takes (the broker would close it
/// after two silent heartbeat intervals), and the confirms are all acks when finally read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c4_a_handler_taking_10s_per_message_keeps_a_2s_heartbeat_connection_for_30s() {
    const HANDLED: u32 = 3;
    const WORK: Duration = Duration::from_secs(10);
    let name = unique("c4");
    let conn = connect_with(options().heartbeat(2).connection_name(&name)).await;
    assert_eq!(conn.tuning().heartbeat, 2, "the broker accepts our 2 s");
    let _unread_events = conn.events();
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let work = exclusive_queue(&ch, "c4-work").await;
    let side = exclusive_queue(&ch, "c4-side").await;
    // One more than the handler gets to: it waits in the consumer's buffer all along.
    for i in 0..=HANDLED {
        let confirm = ch.basic_publish("", &work, i.to_be_bytes().to_vec(), PublishOptions::default());
        assert!(within(WAIT, "a confirm", confirm.within(WAIT).await.unwrap()).await.unwrap().is_ack());
    }

    // Publishing goes on throughout; its confirms pile up unread.
    let publishing = Arc::new(AtomicUsize::new(1));
    let publisher = tokio::spawn({
        let (ch, side, publishing) = (ch.clone(), side.clone(), publishing.clone());
        async move {
            let mut unread = Vec::new();
            while publishing.load(Ordering::Acquire) == 1 {
                let publish = ch.basic_publish("", &side, &b"meanwhile"[..], PublishOptions::default());
                unread.push(publish.within(WAIT).await.expect("publishing while the handler works"));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            unread
        }
    });

    let consuming = conn.open_channel().within(WAIT).await.unwrap();
    let mut consumer = consuming.basic_consume(&work, ConsumeOptions::default()).within(WAIT).await.unwrap();
    let started = Instant::now();
    for i in 0..HANDLED {
        let delivery = next(&mut consumer).await;
        assert_eq!(&delivery.body[..], i.to_be_bytes());
        // The handler's work: the application does nothing else meanwhile.
        tokio::time::sleep(WORK).await;
        delivery.ack().within(WAIT).await.unwrap();
        assert!(conn.is_open(), "after {:?} of handling: {:?}", started.elapsed(), conn.close_reason());
    }
    let handled_for = started.elapsed();
    assert!(handled_for >= WORK * HANDLED, "{handled_for:?}");

    // The broker agrees: our connection is still there.
    let pid = ctl({
        let name = name.clone();
        move || connection_pid(&name)
    })
    .await;
    assert!(pid.is_some(), "the broker no longer lists our connection after {handled_for:?}");
    publishing.store(0, Ordering::Release);
    let unread = within(WAIT, "the publisher", publisher).await.unwrap();
    assert!(unread.len() >= 50, "the publisher kept going: {} publishes", unread.len());
    for confirm in unread {
        assert_eq!(within(WAIT, "a late confirm", confirm).await.unwrap(), Confirmation::Ack);
    }
    let last = next(&mut consumer).await;
    assert_eq!(&last.body[..], HANDLED.to_be_bytes(), "the buffered delivery is still there");
    println!("C4: connection up after {handled_for:?} of 10 s handlers with a 2 s heartbeat");
    conn.close().within(WAIT).await.unwrap();
}
