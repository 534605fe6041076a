//! Consumers that the application does not read, against a scripted fake broker: one slow
//! consumer must not hold up the others beyond its own buffer, and a stalled application is
//! not a dead peer (issue 9, defect 4).

use std::time::{Duration, Instant};

use lepus::{Connection, ConsumeOptions, Error, codec::Method};
use lepus_tests::fake_broker::{self, FakeBroker};

const WAIT: Duration = Duration::from_secs(10);

async fn within<F: std::future::Future>(limit: Duration, what: &str, f: F) -> F::Output {
    match tokio::time::timeout(limit, f).await {
        Ok(out) => out,
        Err(elapsed) => panic!("{what} did not finish within {limit:?} ({elapsed})"),
    }
}

/// Consumer `slow` (buffer 1) is never read; the broker sends it 200 deliveries, then one
/// to consumer `fast` on another channel. `fast` must get it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_does_not_starve_the_others() {
    let fake = FakeBroker::new()
        .start(|mut peer| async move {
            let mut consumers = Vec::new();
            while consumers.len() < 2 {
                let (channel, method) = peer.wait_for(|_, m| matches!(m, Method::BasicConsume(_))).await?;
                peer.answer(channel, &method).await?;
                let tag = peer.consumer_tags(channel).pop().expect("a consumer tag");
                consumers.push((channel, tag));
            }
            let (slow_channel, slow_tag) = consumers[0].clone();
            let (fast_channel, fast_tag) = consumers[1].clone();
            for n in 1..=200 {
                peer.send_frames(&fake_broker::delivery(slow_channel, &slow_tag, n, &[b's'; 1000], 131_072)).await?;
            }
            peer.send_frames(&fake_broker::delivery(fast_channel, &fast_tag, 1, b"for fast", 131_072)).await?;
            peer.serve_until_closed().await?;
            Ok(())
        })
        .await
        .expect("the fake broker starts");
    let conn = within(WAIT, "connect", Connection::connect_with(fake.options())).await.expect("connects");
    let slow_channel = within(WAIT, "open", conn.open_channel()).await.expect("opens");
    let fast_channel = within(WAIT, "open", conn.open_channel()).await.expect("opens");
    let options = ConsumeOptions::default();
    let _slow = within(WAIT, "consume", slow_channel.basic_consume("slow", options.clone())).await.expect("consumes");
    let mut fast = within(WAIT, "consume", fast_channel.basic_consume("fast", options)).await.expect("consumes");

    let start = Instant::now();
    let delivery = within(Duration::from_secs(2), "the fast consumer's delivery", fast.next())
        .await
        .expect("a delivery")
        .expect("not an error");
    println!("the fast consumer got its delivery after {:?}", start.elapsed());
    assert_eq!(&delivery.body[..], b"for fast");
    within(WAIT, "close", conn.close()).await.expect("closes");
    fake.finish().await;
}

/// The application stops reading a consumer that has more buffered than the connection's
/// backlog allows, so the client stops reading the socket. The broker is alive (it keeps
/// its socket open and sends heartbeats every 0.5 s); the connection must stay up: a
/// stalled application is not a dead peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c4_a_stalled_application_with_reading_paused_is_not_a_dead_peer() {
    let fake = FakeBroker::new()
        .tune(2047, 131_072, 1)
        .timeout(Duration::from_secs(45))
        .start(|mut peer| async move {
            let (channel, method) = peer.wait_for(|_, m| matches!(m, Method::BasicConsume(_))).await?;
            peer.answer(channel, &method).await?;
            let tag = peer.consumer_tags(channel).pop().expect("a consumer tag");
            // 72 MiB: more than the client's backlog (16 MiB) and both sockets' buffers
            // (Linux grows a receive buffer up to tcp_rmem's 32 MiB here, a send buffer to
            // 4 MiB) can hold, so the client must stop reading.
            let body = vec![b'b'; 1 << 20];
            let send = async {
                for n in 1..=72 {
                    peer.send_frames(&fake_broker::delivery(channel, &tag, n, &body, 131_064)).await?;
                }
                Ok::<_, std::io::Error>(())
            };
            // The client stops reading part way: the rest of the sends wait, and that is fine.
            // Either way the socket stays open past the test's 5 s: a fake that finished
            // sending and closed it (an RST, with our heartbeats unread) would fail the
            // connection for a reason that is not the one under test.
            let _ = tokio::time::timeout(Duration::from_secs(10), async {
                let _ = send.await;
                std::future::pending::<()>().await;
            })
            .await;
            Ok(())
        })
        .await
        .expect("the fake broker starts");
    let conn = within(WAIT, "connect", Connection::connect_with(fake.options().heartbeat(1))).await.expect("connects");
    let channel = within(WAIT, "open", conn.open_channel()).await.expect("opens");
    let options = ConsumeOptions::default();
    let _unread = within(WAIT, "consume", channel.basic_consume("q", options)).await.expect("consumes");
    // 5 s is five heartbeat intervals: a client that took the paused socket for a dead
    // peer would have closed after two.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(conn.is_open(), "the connection closed: {:?}", conn.close_reason());
    let reason = conn.close_reason();
    assert!(!matches!(reason, Some(Error::MissedHeartbeats(_))), "{reason:?}");
    drop(fake);
}
