//! Every way the driver task can end, against a scripted fake broker: after a write error
//! with output still queued, when the socket cannot be written after a close, when a
//! method cannot be encoded, and when the broker never answers `connection.close`.
//!
//! The client runs on a runtime of its own (one worker), so that the test can count its
//! tasks: when the connection is over, no task of the client may be left, and the process
//! must be idle (a driver spinning on a dead socket burns a core).

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use lepus::{
    Connection, Error, FieldTable, FieldValue, PublishOptions, QueueDeclareOptions,
    codec::{EncodeError, Method},
};
use lepus_tests::fake_broker::FakeBroker;
use tokio::{runtime::Runtime, sync::oneshot};

/// What the catalogue asks of an error after a reset (N2): every handle knows within 100 ms.
const PROMPT: Duration = Duration::from_millis(100);

/// The tests measure the process's CPU time and latency: they run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("a runtime")
}

/// CPU time (user + system) this process has used, from /proc (10 ms resolution).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which is in parentheses and may hold spaces).
    let after = &stat[stat.rfind(')').expect("a command name") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

/// Waits (blocking) until `cond` holds, polling every 2 ms; panics naming `what` after `limit`.
fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
    start.elapsed()
}

fn block_within<F: Future>(rt: &Runtime, limit: Duration, what: &str, f: F) -> F::Output {
    rt.block_on(async {
        match tokio::time::timeout(limit, f).await {
            Ok(out) => out,
            Err(elapsed) => panic!("{what} did not finish within {limit:?} ({elapsed})"),
        }
    })
}

/// Publishes 16 KiB bodies until a publish fails, counting the accepted ones.
async fn publish_until_error(channel: lepus::Channel, accepted: Arc<AtomicUsize>) -> Error {
    let body = Bytes::from(vec![b'x'; 16 * 1024]);
    loop {
        match channel.basic_publish("", "q", body.clone(), PublishOptions::default()).await {
            Ok(_) => {
                accepted.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => return e,
        }
    }
}

/// Waits until `accepted` stops growing for 300 ms: the publisher is blocked.
fn wait_blocked(accepted: &AtomicUsize) -> usize {
    let mut last = accepted.load(Ordering::Relaxed);
    let mut still_since = Instant::now();
    let start = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let now = accepted.load(Ordering::Relaxed);
        if now != last {
            last = now;
            still_since = Instant::now();
        } else if still_since.elapsed() > Duration::from_millis(300) {
            return now;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the publisher never blocked ({now} accepted)");
    }
}

/// Issue 9, defect 1: the broker resets the socket while megabytes of publishes are queued
/// for it. The driver must end within 100 ms, every handle must get the error (the blocked
/// publisher too), and the process must be idle after.
#[test]
fn write_error_with_publishes_queued_ends_the_driver_at_once() {
    let _serial = serial();
    let fake_rt = runtime();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let fake = fake_rt
        .block_on(FakeBroker::new().start(|mut peer| async move {
            peer.wait_for(|_, m| matches!(m, Method::BasicPublish(_))).await?;
            // Read nothing more: the client's output piles up.
            peer.stall_until(async {
                let _ = release_rx.await;
            })
            .await?;
            peer.reset()
        }))
        .expect("the fake broker starts");

    let client_rt = runtime();
    let conn = block_within(&client_rt, Duration::from_secs(5), "connect", Connection::connect_with(fake.options()))
        .expect("connects");
    let channel = block_within(&client_rt, Duration::from_secs(5), "open", conn.open_channel()).expect("opens");
    let accepted = Arc::new(AtomicUsize::new(0));
    let publisher = client_rt.spawn(publish_until_error(channel, accepted.clone()));
    let queued = wait_blocked(&accepted) * 16 * 1024;
    assert!(queued > 4 << 20, "only {queued} bytes were accepted before the publisher blocked");
    assert!(!publisher.is_finished());

    let before = Instant::now();
    release_tx.send(()).expect("the fake waits");
    fake_rt.block_on(fake.finish());
    let closed = wait_until(Duration::from_secs(10), "the connection reports the close", || !conn.is_open());
    let publisher_done =
        wait_until(Duration::from_secs(10), "the blocked publisher returns", || publisher.is_finished());
    let error = block_within(&client_rt, Duration::from_secs(1), "publisher result", publisher).expect("no panic");
    // Only the connection may be left: drop it, then no task of the client may remain.
    drop(conn);
    let driver_gone =
        wait_until(Duration::from_secs(10), "every client task ends", || client_rt.metrics().num_alive_tasks() == 0);
    println!(
        "{queued} bytes queued; after the reset: closed in {closed:?}, publisher failed in {publisher_done:?} \
         ({error}), driver gone {driver_gone:?} later (total {:?})",
        before.elapsed()
    );
    assert!(matches!(error, Error::Io(_) | Error::ConnectionClosed(_)), "unexpected error kind: {error:?}");
    assert!(closed < PROMPT, "the close was seen after {closed:?}");
    assert!(publisher_done < PROMPT, "the publisher failed after {publisher_done:?}");
    assert!(driver_gone < PROMPT, "the driver ended {driver_gone:?} after the handles were dropped");

    let cpu = process_cpu();
    std::thread::sleep(Duration::from_millis(500));
    let used = process_cpu().saturating_sub(cpu);
    assert!(used < Duration::from_millis(100), "{used:?} of CPU in 500 ms after the connection ended");
}

/// Issue 9, defect 2: a half-open peer that reads nothing and answers nothing, and the
/// application closes. The close-ok never comes and the socket cannot be written: the driver
/// must still end, `close()` must return, and the blocked publisher must fail.
#[test]
fn unwritable_socket_after_close_ends_the_driver() {
    let _serial = serial();
    let fake_rt = runtime();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let fake = fake_rt
        .block_on(FakeBroker::new().timeout(Duration::from_secs(45)).start(|mut peer| async move {
            peer.wait_for(|_, m| matches!(m, Method::BasicPublish(_))).await?;
            peer.stall_until(async {
                let _ = release_rx.await;
            })
            .await
        }))
        .expect("the fake broker starts");

    let client_rt = runtime();
    let options = fake.options().heartbeat(0);
    let conn = block_within(&client_rt, Duration::from_secs(5), "connect", Connection::connect_with(options))
        .expect("connects");
    let channel = block_within(&client_rt, Duration::from_secs(5), "open", conn.open_channel()).expect("opens");
    let accepted = Arc::new(AtomicUsize::new(0));
    let publisher = client_rt.spawn(publish_until_error(channel, accepted.clone()));
    wait_blocked(&accepted);

    let start = Instant::now();
    // The close-ok deadline is 5 s; allow 3 s more for a loaded machine.
    let result = block_within(&client_rt, Duration::from_secs(8), "close()", conn.close());
    let closed_in = start.elapsed();
    assert!(matches!(result, Err(Error::CloseNotConfirmed(_))), "close() without a close-ok: {result:?}");
    wait_until(Duration::from_secs(1), "the blocked publisher returns", || publisher.is_finished());
    let error = block_within(&client_rt, Duration::from_secs(1), "publisher result", publisher).expect("no panic");
    assert!(matches!(error, Error::ConnectionClosed(_)), "unexpected error kind: {error:?}");
    drop(conn);
    wait_until(Duration::from_secs(1), "every client task ends", || client_rt.metrics().num_alive_tasks() == 0);
    println!("close() returned after {closed_in:?} with {result:?}");
    let _ = release_tx.send(());
}

/// Issue 9, defect 2 (heartbeats): the peer goes silent and reads nothing while publishes
/// are queued. Missed heartbeats close the connection; the driver must then end although
/// its output can never be written, and the blocked publisher must fail.
#[test]
fn missed_heartbeats_with_output_stuck_end_the_driver() {
    let _serial = serial();
    let fake_rt = runtime();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let fake = fake_rt
        .block_on(FakeBroker::new().tune(2047, 131_072, 1).timeout(Duration::from_secs(45)).start(
            |mut peer| async move {
                peer.wait_for(|_, m| matches!(m, Method::BasicPublish(_))).await?;
                peer.stall_until(async {
                    let _ = release_rx.await;
                })
                .await
            },
        ))
        .expect("the fake broker starts");

    let client_rt = runtime();
    let options = fake.options().heartbeat(1);
    let conn = block_within(&client_rt, Duration::from_secs(5), "connect", Connection::connect_with(options))
        .expect("connects");
    let channel = block_within(&client_rt, Duration::from_secs(5), "open", conn.open_channel()).expect("opens");
    let accepted = Arc::new(AtomicUsize::new(0));
    let publisher = client_rt.spawn(publish_until_error(channel, accepted.clone()));

    let start = Instant::now();
    let error =
        block_within(&client_rt, Duration::from_secs(10), "the blocked publisher", publisher).expect("no panic");
    assert!(matches!(error, Error::MissedHeartbeats(_)), "unexpected error kind: {error:?}");
    let reason = conn.close_reason();
    assert!(matches!(reason, Some(Error::MissedHeartbeats(_))), "close reason {reason:?}");
    drop(conn);
    wait_until(Duration::from_secs(1), "every client task ends", || client_rt.metrics().num_alive_tasks() == 0);
    println!("dead peer detected and driver ended after {:?}", start.elapsed());
    let _ = release_tx.send(());
}

fn nested(levels: usize) -> FieldTable {
    let mut table = FieldTable::new();
    table.insert("leaf", 1i32).expect("a short key");
    for _ in 0..levels {
        let mut outer = FieldTable::new();
        outer.insert("x", FieldValue::Table(table)).expect("a short key");
        table = outer;
    }
    table
}

/// Issue 9, defect 3: a method the client cannot encode (arguments nested past the limit, a
/// frame over `frame_max`) fails its own caller at once; the next call on the channel gets
/// its own reply, and the connection stays open.
#[test]
fn method_that_cannot_be_encoded_fails_its_caller() {
    let _serial = serial();
    let fake_rt = runtime();
    let fake = fake_rt
        .block_on(FakeBroker::new().tune(2047, 4096, 0).start(|mut peer| async move {
            peer.serve_until_closed().await?;
            Ok(())
        }))
        .expect("the fake broker starts");
    let client_rt = runtime();
    client_rt.block_on(async {
        let conn = Connection::connect_with(fake.options().frame_max(4096)).await.expect("connects");
        let channel = conn.open_channel().await.expect("opens");
        let limit = Duration::from_secs(2);
        let deep =
            tokio::time::timeout(limit, channel.queue_declare("deep", QueueDeclareOptions::default(), nested(200)))
                .await
                .expect("a method that cannot be encoded must fail at once, not wait for a reply");
        assert!(matches!(deep, Err(Error::Encode(EncodeError::NestingTooDeep { .. }))), "{deep:?}");

        let mut big = FieldTable::new();
        big.insert("blob", FieldValue::LongString(Bytes::from(vec![b'x'; 8192]))).expect("a short key");
        let too_big = tokio::time::timeout(limit, channel.queue_declare("big", QueueDeclareOptions::default(), big))
            .await
            .expect("a method frame over frame_max must fail at once");
        assert!(matches!(too_big, Err(Error::Encode(EncodeError::FrameTooLarge { .. }))), "{too_big:?}");

        let next = tokio::time::timeout(
            limit,
            channel.queue_declare("next", QueueDeclareOptions::default(), FieldTable::new()),
        )
        .await
        .expect("the next call is answered")
        .expect("the channel is still open");
        assert_eq!(next.name, "next", "the next call got another call's reply");
        assert!(conn.is_open());
        tokio::time::timeout(limit, conn.close()).await.expect("close returns").expect("close-ok");
    });
    fake_rt.block_on(fake.finish());
}

/// Issue 9, defect 7: a broker that never answers `connection.close`. `close()` must close
/// the socket and return a distinct error, not `Ok(())` as if the close had been confirmed.
#[test]
fn close_without_close_ok_is_reported() {
    let _serial = serial();
    let fake_rt = runtime();
    let fake = fake_rt
        .block_on(FakeBroker::new().timeout(Duration::from_secs(30)).start(|mut peer| async move {
            let (_, close) = peer.wait_for(|ch, m| ch == 0 && matches!(m, Method::ConnectionClose(_))).await?;
            // Never answer; the client must give up and close the socket.
            let after = peer.expect_closed().await?;
            Ok((close, after))
        }))
        .expect("the fake broker starts");
    let client_rt = runtime();
    let start = Instant::now();
    let result = client_rt.block_on(async {
        let conn = Connection::connect_with(fake.options()).await.expect("connects");
        tokio::time::timeout(Duration::from_secs(10), conn.close()).await.expect("close() returns")
    });
    let took = start.elapsed();
    let (close, after) = fake_rt.block_on(fake.finish());
    assert!(matches!(close, Method::ConnectionClose(_)));
    assert!(after.is_empty(), "nothing may follow connection.close: {after:?}");
    println!("close() returned {result:?} after {took:?}");
    assert!(matches!(result, Err(Error::CloseNotConfirmed(_))), "an unconfirmed close: {result:?}");
}
