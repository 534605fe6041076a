//! Recovery against a scripted fake broker, where every method the client sends on the new
//! connection can be seen and every loss happens exactly where the test puts it: replay
//! order, server-named queues renamed, stale delivery tags refused (N6), confirms resolved
//! once, republishing, address rotation and give-up. The real-broker recovery cases (B2, B3,
//! B4, B7) are in `broker_recovery.rs` and `cluster_failover.rs`.
//!
//! Each fake connection logs every method it receives (with the connection's index) to the
//! test and answers it as a broker would; the first connection is reset when the test says
//! so.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use lepus::{
    Channel, Connection, ConnectionEvent, ConnectionOptions, ConsumeOptions, Error, ExchangeDeclareOptions,
    ExchangeKind, FieldTable, PublishOptions, QueueDeclareOptions, QueueDeleteOptions, RecoveryOptions,
    WhileDisconnected,
    codec::{
        Frame, Method, ShortStr,
        method::{basic, queue},
    },
};
use lepus_tests::bounded::{Bounded, within};
use lepus_tests::fake_broker::{self, FakeBroker, Peer};
use lepus_tests::recovery_load::next_event;
use tokio::sync::{Notify, broadcast, mpsc};

/// The longest any single client operation may take before it counts as a hang.
const WAIT: Duration = Duration::from_secs(10);

/// A method the fake received: (connection index, channel, method).
type Seen = (usize, u16, Method);

fn short(s: &str) -> ShortStr {
    ShortStr::try_from(s).unwrap()
}

/// What the fake does on each connection, besides answering generically.
#[derive(Clone, Default)]
struct Script {
    /// Names server-named queues `amq.gen-c<connection index>-<n>`, so a new name differs.
    rename_prefix: bool,
    /// After answering a `basic.consume`, delivers one message to it with delivery tag 1.
    deliver_on_consume: bool,
    /// Confirms every publish on connections after the first.
    confirm_after_first: bool,
}

/// A fake broker serving every connection with `script`, logging what it receives; the
/// first connection is reset when `cut` is notified.
async fn serve(script: Script, log: mpsc::UnboundedSender<Seen>, cut: Arc<Notify>) -> fake_broker::Serving {
    FakeBroker::new()
        .start_each(move |peer, index| {
            let (script, log, cut) = (script.clone(), log.clone(), cut.clone());
            async move { run(peer, index, &script, &log, &cut).await }
        })
        .await
        .unwrap()
}

async fn run(
    mut peer: Peer,
    index: usize,
    script: &Script,
    log: &mpsc::UnboundedSender<Seen>,
    cut: &Notify,
) -> std::io::Result<()> {
    let mut generated = 0;
    let mut published: std::collections::HashMap<u16, u64> = std::collections::HashMap::new();
    loop {
        let next = tokio::select! {
            method = peer.expect_method() => Some(method?),
            () = cut.notified(), if index == 0 => None,
        };
        let Some((channel, method)) = next else { return peer.reset() };
        let _ = log.send((index, channel, method.clone()));
        match &method {
            Method::QueueDeclare(d) if d.queue.is_empty() && script.rename_prefix => {
                generated += 1;
                let name = short(&format!("amq.gen-c{index}-{generated}"));
                let ok = queue::DeclareOk { queue: name, message_count: 0, consumer_count: 0 };
                peer.send_frame(Frame::Method(channel, ok.into())).await?;
            }
            Method::BasicConsume(c) if script.deliver_on_consume => {
                peer.answer(channel, &method).await?;
                // One delivery per consumer, tag 1 on this channel, as a broker redelivers.
                let tag = if c.consumer_tag.is_empty() { short("amq.ctag-1") } else { c.consumer_tag.clone() };
                let body = format!("message on connection {index}");
                peer.send_frames(&fake_broker::delivery(channel, &tag, 1, body.as_bytes(), 4096)).await?;
            }
            Method::BasicPublish(_) if script.confirm_after_first && index > 0 => {
                let tag = published.entry(channel).or_default();
                *tag += 1;
                let ack = basic::Ack { delivery_tag: *tag, multiple: false };
                peer.send_frame(Frame::Method(channel, ack.into())).await?;
            }
            _ => peer.answer(channel, &method).await?,
        }
    }
}

/// Recovery on, with short delays so that tests run quickly.
fn recovering(addr: SocketAddr) -> ConnectionOptions {
    fake_broker::options_for(addr)
        .recovery(RecoveryOptions::new().backoff(Duration::from_millis(10), Duration::from_millis(50)))
}

/// Waits for an event matching `pred`, skipping others.
async fn event(
    events: &mut broadcast::Receiver<ConnectionEvent>,
    what: &str,
    pred: impl Fn(&ConnectionEvent) -> bool,
) -> ConnectionEvent {
    next_event(events, WAIT, what, pred).await
}

/// Every method connection `index` received so far (after the ones already taken).
fn drain(log: &mut mpsc::UnboundedReceiver<Seen>, index: usize) -> Vec<(u16, Method)> {
    let mut out = Vec::new();
    while let Ok((i, channel, method)) = log.try_recv() {
        if i == index {
            out.push((channel, method));
        }
    }
    out
}

/// Methods of connection `index` until one matches `last` (included).
async fn methods_until(
    log: &mut mpsc::UnboundedReceiver<Seen>,
    index: usize,
    last: impl Fn(&Method) -> bool,
) -> Vec<(u16, Method)> {
    within(WAIT, "the fake's log", async {
        let mut out = Vec::new();
        while let Some((i, channel, method)) = log.recv().await {
            if i != index {
                continue;
            }
            let done = last(&method);
            out.push((channel, method));
            if done {
                return out;
            }
        }
        panic!("the fake's log ended")
    })
    .await
}

fn describe(channel: u16, method: &Method) -> String {
    let s = |s: &ShortStr| s.as_str().unwrap_or("?").to_owned();
    match method {
        Method::ExchangeDeclare(d) => format!("{channel} exchange.declare {}", s(&d.exchange)),
        Method::ExchangeBind(b) => format!("{channel} exchange.bind {}<-{}", s(&b.destination), s(&b.source)),
        Method::QueueDeclare(d) => format!("{channel} queue.declare {:?}", s(&d.queue)),
        Method::QueueBind(b) => format!("{channel} queue.bind {}<-{}", s(&b.queue), s(&b.exchange)),
        Method::BasicQos(q) => format!("{channel} basic.qos {}", q.prefetch_count),
        Method::BasicConsume(c) => format!("{channel} basic.consume {} {}", s(&c.queue), s(&c.consumer_tag)),
        Method::BasicPublish(p) => format!("{channel} basic.publish {:?} {}", s(&p.exchange), s(&p.routing_key)),
        Method::BasicAck(a) => format!("{channel} basic.ack {}", a.delivery_tag),
        other => format!("{channel} {}", other.name()),
    }
}

async fn declare_topology(ch: &Channel) -> String {
    let options = ExchangeDeclareOptions::default();
    ch.exchange_declare("x.source", ExchangeKind::Topic, options, FieldTable::new()).within(WAIT).await.unwrap();
    ch.exchange_declare("x.dest", ExchangeKind::Fanout, options, FieldTable::new()).within(WAIT).await.unwrap();
    let exclusive = QueueDeclareOptions { exclusive: true, ..QueueDeclareOptions::default() };
    let named = ch.queue_declare("", exclusive, FieldTable::new()).within(WAIT).await.unwrap().name;
    ch.queue_bind(&named, "x.source", "k.#", FieldTable::new()).within(WAIT).await.unwrap();
    ch.exchange_bind("x.dest", "x.source", "all", FieldTable::new()).within(WAIT).await.unwrap();
    // Made and deleted again: recovery must forget it.
    ch.queue_declare("q.gone", QueueDeclareOptions::default(), FieldTable::new()).within(WAIT).await.unwrap();
    ch.queue_delete("q.gone", QueueDeleteOptions::default()).within(WAIT).await.unwrap();
    named
}

/// The replay re-declares what the application made, in order, on a new connection:
/// channels first (same ids), then exchanges, queues and bindings as they were made (the
/// deleted queue forgotten), then QoS, confirm mode and consumers. The server-named queue
/// gets a new name that its binding, its consumer and later publishes follow.
#[tokio::test]
async fn replay_follows_declaration_order_and_renamed_queues() {
    let (log_tx, mut log) = mpsc::unbounded_channel();
    let cut = Arc::new(Notify::new());
    let script = Script { rename_prefix: true, ..Script::default() };
    let fake = serve(script, log_tx, cut.clone()).await;
    let conn = within(WAIT, "connect", Connection::connect_with(recovering(fake.addr()))).await.unwrap();
    let mut events = conn.events();
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    let old_name = declare_topology(&ch).await;
    assert_eq!(old_name, "amq.gen-c0-1");
    ch.basic_qos(10, false).within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let consume = ConsumeOptions { consumer_tag: "c.kept".into(), ..ConsumeOptions::default() };
    let _consumer = ch.basic_consume(&old_name, consume).within(WAIT).await.unwrap();
    let before = drain(&mut log, 0);
    assert!(before.iter().any(|(_, m)| matches!(m, Method::BasicConsume(_))), "the consume reached the fake");

    let cut_at = Instant::now();
    cut.notify_one();
    event(&mut events, "Disconnected", |e| matches!(e, ConnectionEvent::Disconnected { .. })).await;
    event(&mut events, "Recovered", |e| matches!(e, ConnectionEvent::Recovered { .. })).await;
    println!("recovered {:?} after the reset", cut_at.elapsed());
    assert_eq!(conn.recoveries(), 1);
    assert!(!conn.is_recovering());

    let replay = methods_until(&mut log, 1, |m| matches!(m, Method::BasicConsume(_))).await;
    let replay: Vec<String> = replay.iter().map(|(c, m)| describe(*c, m)).collect();
    let app = ch.id();
    // The replay's own channel is the next free id; it is closed after the replay.
    let own = app + 1;
    let expected = vec![
        format!("{app} channel.open"),
        format!("{own} channel.open"),
        format!("{own} exchange.declare x.source"),
        format!("{own} exchange.declare x.dest"),
        format!("{own} queue.declare \"\""),
        format!("{own} queue.bind amq.gen-c1-1<-x.source"),
        format!("{own} exchange.bind x.dest<-x.source"),
        format!("{app} basic.qos 10"),
        format!("{app} confirm.select"),
        format!("{app} basic.consume amq.gen-c1-1 c.kept"),
    ];
    assert_eq!(replay, expected);

    // The old name follows the rename: a publish to it through the default exchange goes to
    // the new queue, and a declare of it by the old name too.
    let confirm = ch.basic_publish("", &old_name, &b"hello"[..], PublishOptions::default()).within(WAIT).await.unwrap();
    drop(confirm);
    let sent = methods_until(&mut log, 1, |m| matches!(m, Method::BasicPublish(_))).await;
    let last = sent.last().map(|(c, m)| describe(*c, m)).unwrap();
    assert_eq!(last, format!("{app} basic.publish \"\" amq.gen-c1-1"));
    assert!(fake.errors().is_empty(), "{:?}", fake.errors());
    conn.close().within(WAIT).await.unwrap();
}

/// N6 and confirms: a delivery received before the loss cannot be acked afterwards (a
/// distinct error, and nothing reaches the new connection), and publishes awaiting their
/// confirm at the loss resolve once with `ConnectionLost`: not acked later by the new
/// connection's confirms, which belong to the new publishes.
#[tokio::test]
async fn stale_tags_are_refused_and_lost_confirms_resolve_once() {
    let (log_tx, mut log) = mpsc::unbounded_channel();
    let cut = Arc::new(Notify::new());
    let script = Script { deliver_on_consume: true, confirm_after_first: true, ..Script::default() };
    let fake = serve(script, log_tx, cut.clone()).await;
    let conn = within(WAIT, "connect", Connection::connect_with(recovering(fake.addr()))).await.unwrap();
    let mut events = conn.events();
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let consume = ConsumeOptions { consumer_tag: "c".into(), ..ConsumeOptions::default() };
    let mut consumer = ch.basic_consume("q", consume).within(WAIT).await.unwrap();
    let old = consumer.next().within(WAIT).await.unwrap().unwrap();
    assert_eq!(&old.body[..], b"message on connection 0");
    let mut pending = Vec::new();
    for i in 0..3 {
        let body = format!("unconfirmed {i}").into_bytes();
        pending.push(ch.basic_publish("", "q", body, PublishOptions::default()).within(WAIT).await.unwrap());
    }
    methods_until(&mut log, 0, |m| matches!(m, Method::BasicPublish(p) if p.routing_key == short("q"))).await;

    cut.notify_one();
    for confirm in pending {
        let result = within(WAIT, "a confirm lost with the connection", confirm).await;
        assert!(matches!(result, Err(Error::ConnectionLost(_))), "{result:?}");
    }
    event(&mut events, "Recovered", |e| matches!(e, ConnectionEvent::Recovered { .. })).await;

    // The consumer carries on: the broker's redelivery on the new connection arrives.
    let new = consumer.next().within(WAIT).await.unwrap().unwrap();
    assert_eq!(&new.body[..], b"message on connection 1");
    // The old delivery's tag (1) means another message now: refused, never sent.
    let stale = old.ack().within(WAIT).await;
    assert!(matches!(stale, Err(Error::StaleDeliveryTag(1))), "{stale:?}");
    new.ack().within(WAIT).await.unwrap();
    // A new publish is confirmed by the new connection's ack of tag 1.
    let confirm = ch.basic_publish("", "q", &b"after"[..], PublishOptions::default()).within(WAIT).await.unwrap();
    assert!(within(WAIT, "the new confirm", confirm).await.unwrap().is_ack());

    let acks: Vec<u64> = methods_until(&mut log, 1, |m| matches!(m, Method::BasicPublish(_)))
        .await
        .into_iter()
        .filter_map(|(_, m)| if let Method::BasicAck(a) = m { Some(a.delivery_tag) } else { None })
        .collect();
    assert_eq!(acks, vec![1], "exactly one ack on the new connection: the new delivery's");
    assert!(fake.errors().is_empty(), "{:?}", fake.errors());
    conn.close().within(WAIT).await.unwrap();
}

/// With `republish_unconfirmed`, publishes awaiting their confirm at the loss are sent again
/// after the replay, and their confirms resolve with the new copies' acks (at-least-once).
#[tokio::test]
async fn unconfirmed_publishes_are_republished_when_asked() {
    let (log_tx, mut log) = mpsc::unbounded_channel();
    let cut = Arc::new(Notify::new());
    let script = Script { confirm_after_first: true, ..Script::default() };
    let fake = serve(script, log_tx, cut.clone()).await;
    let options = fake_broker::options_for(fake.addr()).recovery(
        RecoveryOptions::new()
            .backoff(Duration::from_millis(10), Duration::from_millis(50))
            .republish_unconfirmed(true),
    );
    let conn = within(WAIT, "connect", Connection::connect_with(options)).await.unwrap();
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let mut pending = Vec::new();
    for i in 0..5 {
        let body = format!("m{i}").into_bytes();
        pending.push(ch.basic_publish("", "q", body, PublishOptions::default()).within(WAIT).await.unwrap());
    }
    methods_until(&mut log, 0, |m| matches!(m, Method::BasicPublish(p) if p.routing_key == short("q"))).await;
    cut.notify_one();
    for confirm in pending {
        let result = within(WAIT, "a republished confirm", confirm).await;
        assert!(result.unwrap().is_ack());
    }
    // Each was sent once more, on the reopened channel, after the replay.
    let count = std::cell::Cell::new(0);
    let replay = methods_until(&mut log, 1, |m| {
        count.set(count.get() + usize::from(matches!(m, Method::BasicPublish(_))));
        count.get() == 5
    })
    .await;
    let publishes: Vec<u16> =
        replay.iter().filter(|(_, m)| matches!(m, Method::BasicPublish(_))).map(|(c, _)| *c).collect();
    assert_eq!(publishes, vec![ch.id(); 5]);
    let select = replay.iter().position(|(_, m)| matches!(m, Method::ConfirmSelect(_)));
    let first_publish = replay.iter().position(|(_, m)| matches!(m, Method::BasicPublish(_)));
    assert!(select < first_publish, "confirm mode is back before the republishing: {replay:?}");
    assert!(fake.errors().is_empty(), "{:?}", fake.errors());
    conn.close().within(WAIT).await.unwrap();
}

/// A node that is gone is skipped: after the loss the connection fails over to the next
/// address of the list, and says so in its events.
#[tokio::test]
async fn fails_over_to_the_next_address() {
    let (log_tx, _log) = mpsc::unbounded_channel();
    let cut = Arc::new(Notify::new());
    let first = serve(Script::default(), log_tx.clone(), cut.clone()).await;
    let second = serve(Script::default(), log_tx, Arc::new(Notify::new())).await;
    let options = recovering(first.addr())
        .more_addresses([lepus::Address { host: "127.0.0.1".into(), port: second.addr().port() }])
        .address_order(lepus::AddressOrder::InOrder);
    let conn = within(WAIT, "connect", Connection::connect_with(options)).await.unwrap();
    let mut events = conn.events();
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    let first_addr = first.addr();
    cut.notify_one();
    event(&mut events, "Disconnected", |e| matches!(e, ConnectionEvent::Disconnected { .. })).await;
    // The first node is gone for good: nothing listens there any more.
    drop(first);
    let recovered = event(&mut events, "Recovered", |e| matches!(e, ConnectionEvent::Recovered { .. })).await;
    let ConnectionEvent::Recovered { address } = recovered else { unreachable!() };
    assert_eq!(address, second.addr().to_string(), "recovered on the second node, not {first_addr}");
    ch.queue_declare("after.failover", QueueDeclareOptions::default(), FieldTable::new()).within(WAIT).await.unwrap();
    conn.close().within(WAIT).await.unwrap();
}

/// Give-up is terminal: after the allowed attempts every handle gets `RecoveryFailed`, with the
/// attempts counted and the last error kept; a consumer's stream ends with it.
#[tokio::test]
async fn giving_up_fails_every_handle() {
    let (log_tx, _log) = mpsc::unbounded_channel();
    let cut = Arc::new(Notify::new());
    let fake = serve(Script::default(), log_tx, cut.clone()).await;
    let options = fake_broker::options_for(fake.addr()).recovery(
        RecoveryOptions::new()
            .backoff(Duration::from_millis(10), Duration::from_millis(20))
            .give_up_after_attempts(Some(3)),
    );
    let conn = within(WAIT, "connect", Connection::connect_with(options)).await.unwrap();
    let mut events = conn.events();
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    let mut consumer = ch.basic_consume("q", ConsumeOptions::default()).within(WAIT).await.unwrap();
    cut.notify_one();
    event(&mut events, "Disconnected", |e| matches!(e, ConnectionEvent::Disconnected { .. })).await;
    drop(fake);
    let mut attempts = Vec::new();
    let failed = within(WAIT, "RecoveryFailed", async {
        loop {
            match events.recv().await.unwrap() {
                ConnectionEvent::Recovering { attempt, .. } => attempts.push(attempt),
                ConnectionEvent::RecoveryFailed(e) => return e,
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(attempts, vec![1, 2, 3]);
    assert!(matches!(&failed, Error::RecoveryFailed { attempts: 3, .. }), "{failed:?}");
    let publish = ch.basic_publish("", "q", &b"late"[..], PublishOptions::default()).within(WAIT).await;
    assert!(matches!(publish, Err(Error::RecoveryFailed { .. })), "{publish:?}");
    let end = consumer.next().within(WAIT).await;
    assert!(matches!(end, Some(Err(Error::RecoveryFailed { .. }))), "{end:?}");
    assert!(consumer.next().within(WAIT).await.is_none(), "the stream ends after its error");
    assert!(!conn.is_open());
    assert!(matches!(conn.close_reason(), Some(Error::RecoveryFailed { .. })));
}

/// While the connection is down, calls wait for it (Wait, the default) or fail at once with
/// `Disconnected` (`FailFast`).
#[tokio::test]
async fn calls_while_down_wait_or_fail_fast() {
    for policy in [WhileDisconnected::Wait, WhileDisconnected::FailFast] {
        let (log_tx, _log) = mpsc::unbounded_channel();
        let cut = Arc::new(Notify::new());
        let fake = serve(Script::default(), log_tx, cut.clone()).await;
        // A long first delay keeps the connection down while the calls are made.
        let recovery = RecoveryOptions::new()
            .backoff(Duration::from_millis(400), Duration::from_millis(400))
            .while_disconnected(policy);
        let options = fake_broker::options_for(fake.addr()).recovery(recovery);
        let conn = within(WAIT, "connect", Connection::connect_with(options)).await.unwrap();
        let mut events = conn.events();
        let ch = conn.open_channel().within(WAIT).await.unwrap();
        cut.notify_one();
        event(&mut events, "Disconnected", |e| matches!(e, ConnectionEvent::Disconnected { .. })).await;
        assert!(conn.is_recovering());
        let started = Instant::now();
        let declared =
            ch.queue_declare("while.down", QueueDeclareOptions::default(), FieldTable::new()).within(WAIT).await;
        let publish = ch.basic_publish("", "q", &b"x"[..], PublishOptions::default()).within(WAIT).await;
        match policy {
            WhileDisconnected::Wait => {
                assert_eq!(declared.unwrap().name, "while.down");
                assert!(publish.is_ok(), "{publish:?}");
                assert!(!conn.is_recovering(), "the call returned once the connection was back");
            }
            WhileDisconnected::FailFast => {
                assert!(matches!(declared, Err(Error::Disconnected(_))), "{declared:?}");
                assert!(matches!(publish, Err(Error::Disconnected(_))), "{publish:?}");
                assert!(started.elapsed() < Duration::from_millis(300), "failed at once: {:?}", started.elapsed());
            }
            _ => unreachable!("only the two policies are tried"),
        }
        event(&mut events, "Recovered", |e| matches!(e, ConnectionEvent::Recovered { .. })).await;
        conn.close().within(WAIT).await.unwrap();
    }
}

/// Closing while the connection is down ends recovery at once: the close succeeds, and the
/// reason every handle sees afterwards is the application's close, not the loss.
#[tokio::test]
async fn closing_while_down_ends_with_the_applications_close() {
    let (log_tx, _log) = mpsc::unbounded_channel();
    let cut = Arc::new(Notify::new());
    let fake = serve(Script::default(), log_tx, cut.clone()).await;
    // Long delays keep it down while the application closes.
    let recovery = RecoveryOptions::new().backoff(Duration::from_secs(5), Duration::from_secs(5));
    let options = fake_broker::options_for(fake.addr()).recovery(recovery);
    let conn = within(WAIT, "connect", Connection::connect_with(options)).await.unwrap();
    let mut events = conn.events();
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    cut.notify_one();
    event(&mut events, "Disconnected", |e| matches!(e, ConnectionEvent::Disconnected { .. })).await;
    let started = Instant::now();
    conn.close().within(WAIT).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1), "closed without waiting out the backoff");
    assert!(!conn.is_open() && !conn.is_recovering());
    let is_app_close = |e: &Error| {
        matches!(e, Error::ConnectionClosed(r) if r.initiator == lepus::Initiator::Client
            && r.reply_code == lepus::ReplyCode::REPLY_SUCCESS)
    };
    let reason = conn.close_reason().unwrap();
    assert!(is_app_close(&reason), "{reason:?}");
    let publish = ch.basic_publish("", "q", &b"late"[..], PublishOptions::default()).within(WAIT).await;
    assert!(publish.as_ref().is_err_and(is_app_close), "{publish:?}");
}
