//! The catalogue's memory bounds (`/work/shared/RELIABILITY.md` R3, R5) measured as the
//! client process's resident memory (`VmRSS`) against the real RabbitMQ:
//!
//! - R3: 100,000 channel open/close cycles leave RSS flat;
//! - R5: a consumer with prefetch 100 left unpolled for 30 s in front of 100,000 waiting
//!   messages, and 1,000,000 confirmed publishes through a window of 1,000, each stay within
//!   what the protocol lets in (prefetch × size, window × size) plus a measured constant.
//!
//! RSS covers the whole process, so the tests of this binary run one at a time (`ALONE`),
//! each on a runtime of its own.

use std::{
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use lepus::{Confirmation, ConsumeOptions, PublishOptions, QueueArguments, QueueDeclareOptions, QueueDeleteOptions};
use lepus_tests::{
    bounded::{Bounded, within},
    memory::{PeakRss, mib, rss},
    util::{broker_channel_count, connect, connect_with, connection_pid, options, ready, unique},
};
use tokio::{sync::mpsc, task::JoinSet};

/// The longest any single client operation may take here before it counts as a hang.
const WAIT: Duration = Duration::from_secs(10);
/// How often the sampler thread reads RSS.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// Held by each test for its whole run: RSS is the process's, not the test's.
static ALONE: Mutex<()> = Mutex::new(());

fn alone() -> MutexGuard<'static, ()> {
    ALONE.lock().unwrap_or_else(PoisonError::into_inner)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime")
}

/// Runs `rabbitmqctl` off the runtime's threads.
async fn ctl<T: Send + 'static>(f: impl FnOnce() -> Result<T, String> + Send + 'static) -> T {
    within(WAIT, "rabbitmqctl", tokio::task::spawn_blocking(f)).await.unwrap().unwrap()
}

// ---- R3 -----------------------------------------------------------------------------------

const CYCLES: usize = 100_000;
/// Tasks cycling at once, each through its own channel id: the broker spawns and stops a
/// process per channel, and cycles in parallel keep the test at about a minute.
const CYCLERS: usize = 4;
/// Cycles (over all tasks) before the baseline is read: the allocator's pools and the
/// runtime's buffers fill up in the first few thousand.
const WARM_UP: usize = 10_000;
/// RSS is read every this many cycles (over all tasks).
const READ_EVERY: usize = 10_000;
/// How much RSS may grow over the 90,000 cycles after the warm-up. Measured: 0.07 and 0.11
/// MiB (1 and 4 tasks). A leak of 16 bytes a cycle (far less than a channel's state) would
/// be 1.4 MiB.
const R3_ALLOWED_GROWTH: u64 = 1 << 20;

#[test]
fn r3_100k_channel_open_close_cycles_keep_the_client_rss_flat() {
    let _alone = alone();
    runtime().block_on(async {
        let name = unique("r3-rss");
        let conn = connect_with(options().connection_name(&name)).await;
        let started = Instant::now();
        let done = Arc::new(AtomicUsize::new(0));
        let readings = Arc::new(Mutex::new(Vec::new()));
        let mut cyclers = JoinSet::new();
        for _ in 0..CYCLERS {
            let (conn, done, readings) = (conn.clone(), done.clone(), readings.clone());
            cyclers.spawn(async move {
                loop {
                    let cycle = done.fetch_add(1, Ordering::AcqRel) + 1;
                    if cycle > CYCLES {
                        return;
                    }
                    let channel =
                        conn.open_channel().within(WAIT).await.unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
                    channel.close().within(WAIT).await.unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
                    if cycle % READ_EVERY == 0 {
                        readings.lock().unwrap_or_else(PoisonError::into_inner).push((cycle, rss()));
                    }
                }
            });
        }
        within(Duration::from_secs(500), "100k cycles", cyclers.join_all()).await;
        let took = started.elapsed();
        let mut readings = readings.lock().unwrap_or_else(PoisonError::into_inner).clone();
        readings.sort_unstable();
        let baseline = readings.iter().find(|(cycle, _)| *cycle == WARM_UP).expect("a reading after the warm-up").1;
        let highest = readings.iter().filter(|(cycle, _)| *cycle > WARM_UP).map(|r| r.1).max().unwrap_or(baseline);
        let growth = highest.saturating_sub(baseline);
        let shown: Vec<String> = readings.iter().map(|(c, r)| format!("{c}: {:.2}", mib(*r))).collect();
        println!(
            "R3: {CYCLES} cycles on {CYCLERS} tasks in {took:?}; RSS (MiB) every {READ_EVERY}: {}",
            shown.join(", ")
        );
        println!("R3: growth after the warm-up {:.3} MiB (allowed {:.1} MiB)", mib(growth), mib(R3_ALLOWED_GROWTH));
        assert!(
            growth <= R3_ALLOWED_GROWTH,
            "RSS grew {:.2} MiB over {} cycles after the warm-up (allowed {:.1} MiB): {shown:?}",
            mib(growth),
            CYCLES - WARM_UP,
            mib(R3_ALLOWED_GROWTH)
        );

        // The broker agrees nothing was left open.
        let pid = ctl(move || connection_pid(&name)).await.expect("our connection is listed");
        assert_eq!(ctl(move || broker_channel_count(&pid)).await, 0, "channels left open on the broker");
        conn.close().within(WAIT).await.unwrap();
    });
}

// ---- R5: an unpolled consumer with prefetch 100 -------------------------------------------

const WAITING: usize = 100_000;
const PREFETCH: u16 = 100;
/// The size of each waiting message.
const MESSAGE: usize = 1024;
/// How long the application does not poll its consumer.
const UNPOLLED: Duration = Duration::from_secs(30);
/// What the client may hold beyond the messages the protocol lets in, for R5: read and write
/// buffers, the deliveries' bookkeeping, the consumer's queue. Measured: the peak growth was
/// 0.19 MiB, i.e. prefetch x size (0.1 MiB) + 0.09 MiB. A client that let the broker push past
/// the prefetch would hold up to its 16 MiB delivery stash, or the whole 100 MB queue.
const R5_CONSTANT: u64 = 1 << 20;

#[test]
fn r5_prefetch_100_consumer_unpolled_30s_with_100k_waiting_holds_prefetch_times_size() {
    let _alone = alone();
    runtime().block_on(async {
        let publisher = connect_with(options().publish_window(1000)).await;
        let pch = publisher.open_channel().within(WAIT).await.unwrap();
        pch.confirm_select().within(WAIT).await.unwrap();
        let queue = unique("r5-unpolled");
        // x-expires removes the 100 MB queue should the test fail before deleting it.
        let expires = QueueArguments::new().expires(Duration::from_secs(90)).build().unwrap();
        pch.queue_declare(&queue, QueueDeclareOptions::default(), expires).within(WAIT).await.unwrap();
        let body = Bytes::from(vec![b'r'; MESSAGE]);
        let started = Instant::now();
        publish_confirmed(&pch, &queue, &body, WAITING).await;
        assert_eq!(ready(&pch, &queue).await as usize, WAITING);
        println!("R5: {WAITING} messages of {MESSAGE} bytes queued in {:?}", started.elapsed());

        let consumer_conn = connect().await;
        let cch = consumer_conn.open_channel().within(WAIT).await.unwrap();
        cch.basic_qos(PREFETCH, false).within(WAIT).await.unwrap();
        let baseline = rss();
        let sampler = PeakRss::start(SAMPLE_EVERY);
        let mut consumer = cch.basic_consume(&queue, ConsumeOptions::default()).within(WAIT).await.unwrap();
        // The application is busy elsewhere; the connection must stay up meanwhile.
        tokio::time::sleep(UNPOLLED).await;
        let peak = sampler.peak();
        drop(sampler);
        assert!(consumer_conn.is_open(), "{:?}", consumer_conn.close_reason());

        let growth = peak.saturating_sub(baseline);
        let allowed = u64::from(PREFETCH) * MESSAGE as u64 + R5_CONSTANT;
        println!(
            "R5: peak RSS growth {:.3} MiB while unpolled for {UNPOLLED:?} (allowed {:.3} MiB: prefetch x size + {:.1} MiB)",
            mib(growth),
            mib(allowed),
            mib(R5_CONSTANT)
        );
        assert!(growth <= allowed, "RSS grew {:.2} MiB, allowed {:.2} MiB", mib(growth), mib(allowed));

        // The broker let exactly the prefetch in: 100 deliveries, then nothing until an ack.
        for i in 0..PREFETCH {
            let d = consumer.next().within(WAIT).await.expect("a delivery").unwrap_or_else(|e| panic!("{i}: {e}"));
            assert_eq!(d.body, body);
        }
        let more = tokio::time::timeout(Duration::from_millis(300), consumer.next()).await;
        assert!(more.is_err(), "a delivery beyond the prefetch: {more:?}");
        pch.queue_delete(&queue, QueueDeleteOptions::default()).within(WAIT).await.unwrap();
        consumer_conn.close().within(WAIT).await.unwrap();
        publisher.close().within(WAIT).await.unwrap();
    });
}

/// Publishes `count` copies of `body` to `queue`, in confirm mode, and checks every confirm
/// is an ack. Confirms are awaited by a second task, in order, as they come: nothing grows
/// with `count`.
async fn publish_confirmed(channel: &lepus::Channel, queue: &str, body: &Bytes, count: usize) {
    let (confirms_tx, mut confirms) = mpsc::channel(2048);
    let checker = tokio::spawn(async move {
        let mut acked = 0usize;
        while let Some(confirm) = confirms.recv().await {
            let confirm: lepus::PublisherConfirm = confirm;
            match confirm.within(WAIT).await {
                Ok(Confirmation::Ack) => acked += 1,
                other => panic!("publish {acked}: {other:?}"),
            }
        }
        acked
    });
    for i in 0..count {
        let confirm = channel
            .basic_publish("", queue, body.clone(), PublishOptions::default())
            .within(WAIT)
            .await
            .unwrap_or_else(|e| panic!("publish {i}: {e}"));
        confirms_tx.send(confirm).within(WAIT).await.expect("the confirm checker runs");
    }
    drop(confirms_tx);
    assert_eq!(within(WAIT, "the last confirms", checker).await.unwrap(), count);
}

// ---- R5: a million confirmed publishes through a window of 1,000 --------------------------

const PUBLISHES: usize = 1_000_000;
const WINDOW: usize = 1000;
/// The size of each published message.
const PUBLISHED: usize = 1024;
/// RSS is read this many publishes into the run, for the baseline: connection and window
/// are in use by then.
const PUBLISH_WARM_UP: usize = 10_000;
/// What the client may hold beyond a full window of messages, for R5. Measured: the peak
/// growth was 0.88 MiB, below window x size (0.98 MiB) alone. A publisher not held back by
/// the window would queue the million messages (1 GB) as fast as it encodes them.
const R5_WINDOW_CONSTANT: u64 = 1 << 20;

#[test]
fn r5_a_million_confirmed_publishes_through_a_window_of_1000_hold_window_times_size() {
    let _alone = alone();
    runtime().block_on(async {
        let conn = connect_with(options().publish_window(WINDOW)).await;
        let channel = conn.open_channel().within(WAIT).await.unwrap();
        channel.confirm_select().within(WAIT).await.unwrap();
        // No queue has this name: the broker acks each publish and drops it, so a million
        // of them cost the shared broker nothing to keep.
        let nowhere = unique("r5-nowhere");
        let body = Bytes::from(vec![b'w'; PUBLISHED]);
        let started = Instant::now();
        publish_confirmed(&channel, &nowhere, &body, PUBLISH_WARM_UP).await;
        let baseline = rss();
        let sampler = PeakRss::start(SAMPLE_EVERY);
        publish_confirmed(&channel, &nowhere, &body, PUBLISHES - PUBLISH_WARM_UP).await;
        let peak = sampler.peak();
        drop(sampler);
        let took = started.elapsed();
        let growth = peak.saturating_sub(baseline);
        let allowed = (WINDOW * PUBLISHED) as u64 + R5_WINDOW_CONSTANT;
        println!(
            "R5: {PUBLISHES} confirmed publishes of {PUBLISHED} bytes in {took:?}; peak RSS growth {:.3} MiB \
             (allowed {:.3} MiB: window x size + {:.1} MiB)",
            mib(growth),
            mib(allowed),
            mib(R5_WINDOW_CONSTANT)
        );
        assert!(growth <= allowed, "RSS grew {:.2} MiB, allowed {:.2} MiB", mib(growth), mib(allowed));
        conn.close().within(WAIT).await.unwrap();
    });
}
