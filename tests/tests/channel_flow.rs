//! F3 of `/work/shared/RELIABILITY.md`: the server's `channel.flow(active=false)` is answered
//! with flow-ok and publishing on that channel actually stops (not one publish reaches the
//! broker between the flow-ok and `flow(active=true)`), then resumes. RabbitMQ no longer
//! sends `channel.flow`, so a scripted fake broker does, while it counts every publish.

use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use lepus::{
    Channel, Connection, Error, PublishOptions,
    codec::{
        Frame, Method,
        method::{channel, connection},
    },
};
use lepus_tests::{
    bounded::{Bounded, until, within},
    fake_broker::{FakeBroker, Peer},
};
use tokio::{sync::oneshot, task::JoinSet, time::Instant};

/// The longest any single client operation may take here before it counts as a hang.
const WAIT: Duration = Duration::from_secs(10);
/// How long the fake keeps the channel paused, reading (and counting) all the while.
const PAUSE: Duration = Duration::from_secs(1);
/// How long the fake counts publishes after it lets the channel go again.
const RESUMED: Duration = Duration::from_millis(500);

/// What the fake saw, in publishes, in each phase of the script.
#[derive(Debug)]
struct Counts {
    /// Before it sent `flow(false)`.
    before: usize,
    /// After it sent `flow(false)` and before the client's flow-ok: already on the wire.
    in_flight: usize,
    /// Between the flow-ok and `flow(true)`: must be none.
    paused: usize,
    /// Between `flow(true)` and the client's flow-ok.
    resuming: usize,
    /// In the [`RESUMED`] after that flow-ok.
    resumed: usize,
}

/// Reads methods until one on `channel` matches `done`, counting the publishes on `channel`
/// meanwhile and answering anything else generically.
async fn count_until(peer: &mut Peer, channel: u16, done: impl Fn(&Method) -> bool) -> io::Result<usize> {
    let mut publishes = 0;
    loop {
        let (ch, method) = peer.expect_method().await?;
        if ch == channel && done(&method) {
            return Ok(publishes);
        }
        match method {
            Method::BasicPublish(_) if ch == channel => publishes += 1,
            other => peer.answer(ch, &other).await?,
        }
    }
}

/// Counts the publishes on `channel` for `duration`, answering anything else generically.
async fn count_for(peer: &mut Peer, channel: u16, duration: Duration) -> io::Result<usize> {
    let until = Instant::now() + duration;
    let mut publishes = 0;
    loop {
        match tokio::time::timeout_at(until, peer.expect_method()).await {
            Err(_) => return Ok(publishes),
            Ok(received) => match received? {
                (ch, Method::BasicPublish(_)) if ch == channel => publishes += 1,
                (ch, other) => peer.answer(ch, &other).await?,
            },
        }
    }
}

/// The fake's side: waits for publishing to be under way, pauses the channel, counts, lets it
/// go, counts again, reports, and serves until the client closes.
async fn script(mut peer: Peer, counted: oneshot::Sender<()>) -> io::Result<Counts> {
    let (ch, _) = peer.wait_for(|_, m| matches!(m, Method::BasicPublish(_))).await?;
    let before = 1 + count_for(&mut peer, ch, Duration::from_millis(100)).await?;

    peer.send_frame(Frame::Method(ch, channel::Flow { active: false }.into())).await?;
    let in_flight = count_until(&mut peer, ch, |m| matches!(m, Method::ChannelFlowOk(ok) if !ok.active)).await?;
    let paused = count_for(&mut peer, ch, PAUSE).await?;

    peer.send_frame(Frame::Method(ch, channel::Flow { active: true }.into())).await?;
    let resuming = count_until(&mut peer, ch, |m| matches!(m, Method::ChannelFlowOk(ok) if ok.active)).await?;
    let resumed = count_for(&mut peer, ch, RESUMED).await?;
    let _ = counted.send(());

    // Publishes still arriving are read and dropped until the client closes.
    loop {
        match peer.expect_method().await? {
            (0, Method::ConnectionClose(_)) => break,
            (_, Method::BasicPublish(_)) => {}
            (ch, other) => peer.answer(ch, &other).await?,
        }
    }
    peer.send_frame(Frame::Method(0, connection::CloseOk {}.into())).await?;
    peer.expect_closed().await?;
    Ok(Counts { before, in_flight, paused, resuming, resumed })
}

/// Publishes on `channel` until `stop`, counting each publish the client accepted.
async fn publish_until(channel: Channel, stop: Arc<AtomicBool>, accepted: Arc<AtomicUsize>) -> Result<(), Error> {
    while !stop.load(Ordering::Acquire) {
        // Outside confirm mode the confirm says nothing: dropped.
        drop(channel.basic_publish("", "f3", &b"flow"[..], PublishOptions::default()).within(WAIT).await?);
        accepted.fetch_add(1, Ordering::AcqRel);
        // Let the driver and the other publisher run between publishes.
        tokio::task::yield_now().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f3_channel_flow_off_pauses_publishes_until_flow_on() {
    let (counted_tx, counted) = oneshot::channel();
    let fake = FakeBroker::new()
        .start(move |peer| script(peer, counted_tx))
        .within(WAIT)
        .await
        .expect("the fake broker listens");
    let conn = within(WAIT, "connect", Connection::connect_with(fake.options())).await.unwrap();
    let channel = conn.open_channel().within(WAIT).await.unwrap();
    // A second channel, never paused: its calls are answered throughout.
    let other = conn.open_channel().within(WAIT).await.unwrap();

    let (stop, accepted) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let mut publishers = JoinSet::new();
    for _ in 0..2 {
        publishers.spawn(publish_until(channel.clone(), stop.clone(), accepted.clone()));
    }

    until(WAIT, "the client to see flow(false)", || !channel.flow_active()).await;
    // While paused, publish calls wait instead of returning; the other channel works.
    let paused_at = accepted.load(Ordering::Acquire);
    other.queue_declare("f3.other", Default::default(), Default::default()).within(WAIT).await.unwrap();
    let still = accepted.load(Ordering::Acquire);
    until(WAIT, "the client to see flow(true)", || channel.flow_active()).await;

    within(WAIT, "the fake to count the resumed publishes", counted).await.unwrap();
    stop.store(true, Ordering::Release);
    for result in within(WAIT, "the publishers to stop", publishers.join_all()).await {
        result.expect("no publish fails");
    }
    within(WAIT, "close", conn.close()).await.unwrap();
    let counts = fake.finish().await;
    println!(
        "F3: publishes seen by the fake: {} before flow(false), {} before its flow-ok, {} while paused, {} before \
         the flow-ok of flow(true), {} in the {RESUMED:?} after; the client accepted {paused_at} before it saw \
         the pause, {still} after",
        counts.before, counts.in_flight, counts.paused, counts.resuming, counts.resumed
    );

    assert!(counts.before > 0, "publishing was under way before the pause: {counts:?}");
    assert_eq!(counts.paused, 0, "publishes reached the broker between flow-ok and flow(true): {counts:?}");
    assert!(counts.resumed > 0, "publishing resumed after flow(true): {counts:?}");
    // Each publisher may have been past the flow check with one publish when the pause came.
    assert!(still - paused_at <= 2, "publish calls returned while the channel was paused: {paused_at} -> {still}");
}
