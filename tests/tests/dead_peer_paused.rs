//! Issue 9, defect 4: a dead peer is detected even while the driver has stopped reading the
//! socket because consumers are behind (N1 with a slow consumer). While reads are paused
//! the broker's silence proves nothing, so the heartbeat deadline cannot judge the peer;
//! TCP does instead (`TCP_USER_TIMEOUT`, twice the heartbeat): the client's own heartbeats
//! go unacknowledged by a dead peer, and the kernel fails the connection.
//!
//! A dead peer needs packets to vanish, which loopback never does: the test re-runs itself
//! in a network namespace of its own (`unshare -n`, root), brings its loopback up, and takes
//! it down again once reads are paused. Nothing outside the namespace is touched. It is a
//! `harness = false` binary because the re-run is the whole process.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use lepus::{Connection, ConsumeOptions, Error, codec::Method};
use lepus_tests::bounded::within;
use lepus_tests::fake_broker::{self, FakeBroker};
use tokio::sync::oneshot;

/// The heartbeat the fake proposes and the client accepts, in seconds.
const HEARTBEAT: u16 = 1;
/// The client stops reading once consumers hold this much.
const MAX_UNREAD: usize = 64 * 1024;
/// Body size of each delivery; enough of them to pass `MAX_UNREAD`.
const BODY: usize = 16 * 1024;
const DELIVERIES: u64 = 12;
/// The kernel's bound is 2 s (twice the heartbeat) after the first unacknowledged heartbeat;
/// retransmission timers round it up. Measured: 2.4–2.6 s.
const DETECTED_WITHIN: Duration = Duration::from_secs(6);

fn main() {
    if std::env::var_os("LEPUS_IN_NETNS").is_none() {
        let exe = std::env::current_exe().expect("the test binary's path");
        let status = Command::new("unshare")
            .arg("-n")
            .arg(exe)
            .env("LEPUS_IN_NETNS", "1")
            .status()
            .expect("running unshare (util-linux) to get a network namespace");
        assert!(status.success(), "the test in its own network namespace failed: {status}");
        return;
    }
    ip(&["link", "set", "lo", "up"]);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(a_dead_peer_is_detected_while_reads_are_paused());
    println!("test a_dead_peer_is_detected_while_reads_are_paused ... ok");
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("running ip (iproute2)");
    assert!(status.success(), "ip {args:?}: {status}");
}

async fn a_dead_peer_is_detected_while_reads_are_paused() {
    let (filled_tx, filled) = oneshot::channel();
    let (cut_tx, cut) = oneshot::channel::<()>();
    let fake = FakeBroker::new()
        .tune(2047, 131_072, HEARTBEAT)
        .send_heartbeats(true)
        .timeout(Duration::from_secs(30))
        .start(move |mut peer| async move {
            let (channel, method) = peer.wait_for(|_, m| matches!(m, Method::BasicConsume(_))).await?;
            peer.answer(channel, &method).await?;
            let tag = peer.consumer_tags(channel).pop().unwrap_or_default();
            for n in 1..=DELIVERIES {
                peer.send_frames(&fake_broker::delivery(channel, &tag, n, &[b'x'; BODY], 65_536)).await?;
            }
            let _ = filled_tx.send(());
            // The link dies here: nothing is read or written any more, the socket stays open.
            let _ = cut.await;
            Ok(())
        })
        .await
        .unwrap();
    let options = fake.options().heartbeat(HEARTBEAT).max_unread_bytes(MAX_UNREAD);
    let conn = within(Duration::from_secs(10), "connect", Connection::connect_with(options)).await.unwrap();
    let channel = conn.open_channel().await.unwrap();
    // Consumed but never polled: its deliveries fill the client's allowance.
    let _consumer = channel.basic_consume("q", ConsumeOptions::default()).await.unwrap();
    within(Duration::from_secs(10), "the deliveries sent", filled).await.unwrap();

    // Reads are paused and stay so for several heartbeat intervals: a stalled application
    // is not a dead peer, the connection lives on while the peer answers at TCP level.
    tokio::time::sleep(Duration::from_secs(u64::from(HEARTBEAT) * 3)).await;
    assert!(conn.is_open(), "a slow consumer alone closed the connection: {:?}", conn.close_reason());

    ip(&["link", "set", "lo", "down"]);
    let cut_at = Instant::now();
    let error = within(DETECTED_WITHIN, "the dead peer detected", conn.closed()).await;
    let took = cut_at.elapsed();
    println!("dead peer detected {took:.2?} after the link went down: {error}");
    match &error {
        Error::Io(e) => assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{error}"),
        Error::MissedHeartbeats(_) => {}
        other => panic!("expected a timed-out socket or missed heartbeats, got {other:?}"),
    }
    drop(cut_tx);
}
