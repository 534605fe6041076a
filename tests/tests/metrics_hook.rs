//! The metrics hook (`lepus::metrics::Metrics`) counts exactly what happened: publishes,
//! confirms, returns, deliveries and settlements against the real broker; a block's length
//! from a fake broker that blocks and unblocks; a recovery through a proxy that cuts the
//! link. The `metrics` feature's `MetricsFacade` is read back through `metrics-util`'s
//! debugging recorder.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use lepus::{
    Confirmation, ConsumeOptions, PublishOptions, RecoveryOptions,
    codec::{Frame, ShortStr, method::connection},
    metrics::{Metrics, MetricsFacade},
};
use lepus_tests::{
    bounded::{Bounded, until},
    fake_broker::FakeBroker,
    proxy::Proxy,
    util::{connect_with, options, unique},
};
use metrics_util::{
    MetricKind,
    debugging::{DebugValue, DebuggingRecorder, Snapshotter},
};
use tokio::sync::oneshot;

/// The longest any single client operation may take here before it counts as a hang.
const WAIT: Duration = Duration::from_secs(10);

/// Every event, counted.
#[derive(Default)]
struct Counts {
    connections_opened: AtomicU64,
    connections_closed: AtomicU64,
    recovered: AtomicU64,
    channels_opened: AtomicU64,
    channels_closed: AtomicU64,
    published: AtomicU64,
    published_bytes: AtomicU64,
    acked_confirms: AtomicU64,
    nacked_confirms: AtomicU64,
    returned: AtomicU64,
    delivered: AtomicU64,
    delivered_bytes: AtomicU64,
    acks: AtomicU64,
    nacks: AtomicU64,
    rejects: AtomicU64,
    blocked: Mutex<Vec<Duration>>,
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Metrics for Counts {
    fn connection_opened(&self) {
        add(&self.connections_opened, 1);
    }
    fn connection_closed(&self) {
        add(&self.connections_closed, 1);
    }
    fn recovered(&self) {
        add(&self.recovered, 1);
    }
    fn blocked(&self, duration: Duration) {
        self.blocked.lock().unwrap_or_else(PoisonError::into_inner).push(duration);
    }
    fn channel_opened(&self) {
        add(&self.channels_opened, 1);
    }
    fn channel_closed(&self) {
        add(&self.channels_closed, 1);
    }
    fn published(&self, body_bytes: usize) {
        add(&self.published, 1);
        add(&self.published_bytes, body_bytes);
    }
    fn confirmed(&self, acked: bool) {
        add(if acked { &self.acked_confirms } else { &self.nacked_confirms }, 1);
    }
    fn returned(&self) {
        add(&self.returned, 1);
    }
    fn delivered(&self, body_bytes: usize) {
        add(&self.delivered, 1);
        add(&self.delivered_bytes, body_bytes);
    }
    fn acked(&self, _multiple: bool) {
        add(&self.acks, 1);
    }
    fn nacked(&self, _multiple: bool, _requeue: bool) {
        add(&self.nacks, 1);
    }
    fn rejected(&self, _requeue: bool) {
        add(&self.rejects, 1);
    }
}

/// Publishes N with confirms, one mandatory unroutable (returned in confirm mode), consumes
/// and acks the N, gets two more and nacks and rejects them, and has one returned outside
/// confirm mode; then closes everything. Every counter must be exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_counts_every_publish_confirm_return_delivery_and_settlement() {
    const N: u64 = 25;
    let counts = Arc::new(Counts::default());
    let conn = connect_with(options().metrics(counts.clone())).await;
    assert_eq!(get(&counts.connections_opened), 1);
    let channel = conn.open_channel().within(WAIT).await.unwrap();
    let queue = unique("metrics.hook");
    channel.queue_declare(&queue, Default::default(), Default::default()).within(WAIT).await.unwrap();
    channel.confirm_select().within(WAIT).await.unwrap();

    let mut bytes = 0;
    let mut confirms = Vec::new();
    for i in 0..N {
        let body = format!("message {i}");
        bytes += body.len() as u64;
        confirms.push(channel.basic_publish("", &queue, body, PublishOptions::default()).within(WAIT).await.unwrap());
    }
    for confirm in confirms {
        assert!(confirm.within(WAIT).await.unwrap().is_ack());
    }
    let mandatory = PublishOptions { mandatory: true, ..Default::default() };
    let nowhere = unique("metrics.nowhere");
    let confirm = channel.basic_publish("", &nowhere, &b"lost"[..], mandatory.clone()).within(WAIT).await.unwrap();
    assert!(matches!(confirm.within(WAIT).await.unwrap(), Confirmation::Returned(_)));
    assert_eq!(get(&counts.published), N + 1);
    assert_eq!(get(&counts.published_bytes), bytes + 4);
    // The broker acks a returned message after returning it.
    assert_eq!(get(&counts.acked_confirms), N + 1);
    assert_eq!(get(&counts.nacked_confirms), 0);
    assert_eq!(get(&counts.returned), 1);

    let mut consumer = channel.basic_consume(&queue, ConsumeOptions::default()).within(WAIT).await.unwrap();
    for _ in 0..N {
        let delivery = consumer.next().within(WAIT).await.expect("the consumer is open").unwrap();
        delivery.ack().within(WAIT).await.unwrap();
    }
    consumer.cancel().within(WAIT).await.unwrap();
    until(WAIT, "every delivery counted", || get(&counts.delivered) == N).await;
    assert_eq!(get(&counts.delivered_bytes), bytes);
    assert_eq!(get(&counts.acks), N);

    // Two more, fetched with basic.get: one nacked, one rejected (neither requeued).
    for body in ["get 1", "get 2"] {
        let confirm = channel.basic_publish("", &queue, body, PublishOptions::default()).within(WAIT).await.unwrap();
        assert!(confirm.within(WAIT).await.unwrap().is_ack());
    }
    let (first, _) = channel.basic_get(&queue, false).within(WAIT).await.unwrap().expect("a message");
    first.nack(false).within(WAIT).await.unwrap();
    let (second, _) = channel.basic_get(&queue, false).within(WAIT).await.unwrap().expect("a message");
    second.reject(false).within(WAIT).await.unwrap();

    // A return outside confirm mode comes through the channel's returns stream.
    let plain = conn.open_channel().within(WAIT).await.unwrap();
    let mut returns = plain.returns().expect("the returns stream");
    let confirm = plain.basic_publish("", &nowhere, &b"lost again"[..], mandatory).within(WAIT).await.unwrap();
    assert_eq!(confirm.within(WAIT).await.unwrap(), Confirmation::NotRequested);
    returns.next().within(WAIT).await.expect("the returned message");

    plain.close().within(WAIT).await.unwrap();
    channel.queue_delete(&queue, Default::default()).within(WAIT).await.unwrap();
    channel.close().within(WAIT).await.unwrap();
    conn.close().within(WAIT).await.unwrap();
    until(WAIT, "both channels counted as closed", || get(&counts.channels_closed) == 2).await;
    until(WAIT, "the connection counted as closed", || get(&counts.connections_closed) == 1).await;

    let all = [
        ("connections opened", &counts.connections_opened, 1),
        ("connections closed", &counts.connections_closed, 1),
        ("recoveries", &counts.recovered, 0),
        ("channels opened", &counts.channels_opened, 2),
        ("channels closed", &counts.channels_closed, 2),
        ("published", &counts.published, N + 4),
        ("published bytes", &counts.published_bytes, bytes + 4 + 10 + 10),
        ("acked confirms", &counts.acked_confirms, N + 3),
        ("nacked confirms", &counts.nacked_confirms, 0),
        ("returned", &counts.returned, 2),
        ("delivered", &counts.delivered, N + 2),
        ("delivered bytes", &counts.delivered_bytes, bytes + 10),
        ("acks", &counts.acks, N),
        ("nacks", &counts.nacks, 1),
        ("rejects", &counts.rejects, 1),
    ];
    for (what, counter, expected) in all {
        assert_eq!(get(counter), expected, "{what}");
    }
    assert!(counts.blocked.lock().unwrap().is_empty());
}

/// A block's length is reported once the broker lifts it, and is at least as long as the
/// test saw the connection blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_gets_the_length_of_a_block_when_it_lifts() {
    let (lift, lifted) = oneshot::channel::<()>();
    let fake = FakeBroker::new()
        .start(|mut peer| async move {
            let reason = ShortStr::try_from("low on memory").unwrap();
            peer.send_frame(Frame::Method(0, connection::Blocked { reason }.into())).await?;
            let _ = lifted.await;
            peer.send_frame(Frame::Method(0, connection::Unblocked {}.into())).await?;
            peer.serve_until_closed().await?;
            Ok(())
        })
        .within(WAIT)
        .await
        .unwrap();
    let counts = Arc::new(Counts::default());
    let conn = lepus::Connection::connect_with(fake.options().metrics(counts.clone())).within(WAIT).await.unwrap();
    until(WAIT, "the connection to be blocked", || conn.blocked().is_some()).await;
    let seen = Instant::now();
    assert!(counts.blocked.lock().unwrap().is_empty(), "nothing is reported while the block lasts");
    let held = seen.elapsed();
    lift.send(()).unwrap();
    until(WAIT, "the block to lift", || conn.blocked().is_none()).await;
    let blocked = counts.blocked.lock().unwrap().clone();
    assert_eq!(blocked.len(), 1, "one block, one report: {blocked:?}");
    assert!(blocked[0] >= held, "the block lasted at least {held:?}, reported {:?}", blocked[0]);
    conn.close().within(WAIT).await.unwrap();
    fake.finish().within(WAIT).await;
    assert_eq!(counts.blocked.lock().unwrap().len(), 1, "a close after the block reports nothing more");
    assert_eq!((get(&counts.connections_opened), get(&counts.connections_closed)), (1, 1));
}

/// A connection lost and recovered counts one recovery, and neither a new connection nor a
/// closed one; its channel is not counted again when recovery reopens it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_counts_as_recovered_not_as_another_connection() {
    let proxy = Proxy::to_broker().within(WAIT).await.unwrap();
    let counts = Arc::new(Counts::default());
    let recovery = RecoveryOptions::new().backoff(Duration::from_millis(50), Duration::from_millis(200));
    let conn = connect_with(proxy.options().recovery(recovery).metrics(counts.clone())).await;
    let channel = conn.open_channel().within(WAIT).await.unwrap();
    proxy.cut();
    until(WAIT, "the loss to be seen", || conn.is_recovering()).await;
    proxy.resume();
    until(WAIT, "the connection to recover", || conn.recoveries() == 1).await;
    assert_eq!(get(&counts.recovered), 1);
    // The channel works again, as itself.
    channel.queue_declare("", lepus_tests::util::exclusive(), Default::default()).within(WAIT).await.unwrap();
    conn.close().within(WAIT).await.unwrap();
    until(WAIT, "the close counted", || get(&counts.connections_closed) == 1).await;
    until(WAIT, "the channel counted as closed", || get(&counts.channels_closed) == 1).await;
    assert_eq!(get(&counts.connections_opened), 1);
    assert_eq!(get(&counts.channels_opened), 1);
}

/// Adds what the recorder counted since the last snapshot (a snapshot takes the counters'
/// values and zeroes them) to `totals`, keyed `name{label=value,...}`.
fn accumulate(snapshotter: &Snapshotter, totals: &mut HashMap<String, u64>) {
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if let (MetricKind::Counter, DebugValue::Counter(n)) = (key.kind(), value) {
            let labels: Vec<String> = key.key().labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
            *totals.entry(format!("{}{{{}}}", key.key().name(), labels.join(","))).or_default() += n;
        }
    }
}

/// The `metrics` feature end to end: the facade, registered with a debugging recorder,
/// records a connection's publishes, confirms, deliveries and acks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_facade_records_through_the_recorder() {
    const N: u64 = 10;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // The facade's handles stay bound to the recorder in effect when it is made.
    let facade = metrics::with_local_recorder(&recorder, || MetricsFacade::with_labels([("test", "facade")]));
    let conn = connect_with(options().metrics(Arc::new(facade))).await;
    let channel = conn.open_channel().within(WAIT).await.unwrap();
    let queue = unique("metrics.facade");
    channel.queue_declare(&queue, Default::default(), Default::default()).within(WAIT).await.unwrap();
    channel.confirm_select().within(WAIT).await.unwrap();
    for _ in 0..N {
        let confirm = channel.basic_publish("", &queue, &b"0123456789"[..], PublishOptions::default());
        assert!(confirm.within(WAIT).await.unwrap().within(WAIT).await.unwrap().is_ack());
    }
    let mut consumer = channel.basic_consume(&queue, ConsumeOptions::default()).within(WAIT).await.unwrap();
    for _ in 0..N {
        consumer.next().within(WAIT).await.expect("the consumer is open").unwrap().ack().within(WAIT).await.unwrap();
    }
    consumer.cancel().within(WAIT).await.unwrap();
    channel.queue_delete(&queue, Default::default()).within(WAIT).await.unwrap();
    channel.close().within(WAIT).await.unwrap();
    conn.close().within(WAIT).await.unwrap();

    let mut totals = HashMap::new();
    until(WAIT, "the connection's close recorded", || {
        accumulate(&snapshotter, &mut totals);
        totals.get("lepus_connections_closed_total{test=facade}") == Some(&1)
    })
    .await;
    for (name, expected) in [
        ("lepus_connections_opened_total", 1),
        ("lepus_channels_opened_total", 1),
        ("lepus_channels_closed_total", 1),
        ("lepus_messages_published_total", N),
        ("lepus_published_bytes_total", 10 * N),
        ("lepus_messages_delivered_total", N),
        ("lepus_delivered_bytes_total", 10 * N),
        ("lepus_acks_total", N),
        ("lepus_messages_returned_total", 0),
        ("lepus_connection_recoveries_total", 0),
    ] {
        assert_eq!(totals.get(&format!("{name}{{test=facade}}")), Some(&expected), "{name}: {totals:#?}");
    }
    let confirmed = "lepus_messages_confirmed_total";
    assert_eq!(totals.get(&format!("{confirmed}{{test=facade,outcome=ack}}")), Some(&N));
    assert_eq!(totals.get(&format!("{confirmed}{{test=facade,outcome=nack}}")), Some(&0));
}
