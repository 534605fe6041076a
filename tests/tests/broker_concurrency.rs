//! Concurrency against the real RabbitMQ (C1, C3 of `/work/shared/RELIABILITY.md`): many
//! tasks sharing one channel, and a close racing with everything in flight.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use lepus::{Confirmation, ConsumeOptions, Error, Initiator, PublishOptions, ReplyCode};
use lepus_tests::bounded::{Bounded, until, within};
use lepus_tests::util::{connect, connect_with, exclusive, exclusive_queue, options, ready};

/// The most a whole phase may take.
const WAIT: Duration = Duration::from_secs(10);

const TASKS: usize = 64;
const PER_TASK: usize = 100;

/// The body task `task` publishes as its `i`-th message: `tt:iii:` then bytes that depend
/// on task, index and position. Every tenth is 20 KB (five 4 KiB frames, sent from the
/// body's own memory), the rest 16 bytes to 5 KB, so frames of interleaved messages
/// would corrupt them visibly.
fn body(task: usize, i: usize) -> Vec<u8> {
    let len = if i.is_multiple_of(10) { 20_000 } else { 16 + (task * 97 + i * 31) % 5000 };
    let mut body = format!("{task:02}:{i:03}:").into_bytes();
    body.extend((body.len()..len).map(|k| ((task * 131 + i * 7 + k) % 251) as u8));
    body
}

/// C1: 64 tasks publish 100 messages each on one confirm-mode channel (`frame_max` 4096):
/// every publish is acked exactly once, and all 6,400 bodies come back intact, each task's
/// in its own order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn c1_64_tasks_publish_on_one_confirmed_channel() {
    let conn = connect_with(options().frame_max(4096)).await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let q = exclusive_queue(&ch, "c1").await;

    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let (ch, q) = (ch.clone(), q.clone());
        tasks.spawn(async move {
            let mut confirms = Vec::with_capacity(PER_TASK);
            for i in 0..PER_TASK {
                confirms.push(
                    ch.basic_publish("", &q, body(task, i), PublishOptions::default()).within(WAIT).await.unwrap(),
                );
                if i % 7 == task % 7 {
                    tokio::task::yield_now().await;
                }
            }
            let mut acked = 0;
            for c in confirms {
                assert_eq!(c.within(WAIT).await.unwrap(), Confirmation::Ack, "task {task}");
                acked += 1;
            }
            acked
        });
    }
    let acked: usize = within(WAIT, "all confirms", tasks.join_all()).await.into_iter().sum();
    assert_eq!(acked, TASKS * PER_TASK);
    assert_eq!(ready(&ch, &q).await as usize, TASKS * PER_TASK, "each publish reached the queue once");

    let consuming = conn.open_channel().within(WAIT).await.unwrap();
    consuming.basic_qos(500, false).within(WAIT).await.unwrap();
    let mut consumer = consuming.basic_consume(&q, ConsumeOptions::default()).within(WAIT).await.unwrap();
    let mut seen = HashSet::new();
    let mut last = [None::<usize>; TASKS];
    within(WAIT, "all deliveries", async {
        for n in 1..=TASKS * PER_TASK {
            let d = consumer.next().within(WAIT).await.expect("the stream ended").expect("a delivery");
            let head = std::str::from_utf8(d.body.get(..7).expect("a 7-byte head")).expect("an ASCII head");
            let task: usize = head[..2].parse().unwrap();
            let i: usize = head[3..6].parse().unwrap();
            assert!(d.body == body(task, i), "the body of ({task}, {i}) is corrupt");
            assert!(seen.insert((task, i)), "({task}, {i}) delivered twice");
            assert!(last[task].is_none_or(|prev| prev < i), "task {task}: {i} after {:?}", last[task]);
            last[task] = Some(i);
            if n.is_multiple_of(100) {
                d.ack_multiple().within(WAIT).await.unwrap();
            }
        }
    })
    .await;
    assert_eq!(seen.len(), TASKS * PER_TASK);
    consuming.close().within(WAIT).await.unwrap();
    assert_eq!(ready(&ch, &q).await, 0, "every delivery was acknowledged");
    conn.close().within(WAIT).await.unwrap();
}

/// What one C3 task did: how many operations succeeded, and the error that stopped it.
type Outcome = (usize, Option<Error>);

/// C3: closing the connection while 8 tasks publish, acknowledge and open channels: every
/// operation returns Ok or a closed error, none hangs, every task finishes, and no task of
/// the client outlives the connection (counted with the runtime's metrics).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn c3_close_while_publishes_acks_and_channel_opens_are_in_flight() {
    // Tasks of this test's runtime before the client has any: none may be left at the end.
    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks_before = metrics.num_alive_tasks();
    let conn = connect().await;
    let setup = conn.open_channel().within(WAIT).await.unwrap();
    let q = exclusive_queue(&setup, "c3").await;
    // One progress counter per task: the close waits until every task has done some work,
    // so each kind of operation is in flight when it lands (a total alone let a slow kind
    // sit at zero on a loaded machine).
    let progress: Vec<Arc<AtomicUsize>> = (0..8).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let mut counters = progress.iter().cloned();
    let mut tasks = tokio::task::JoinSet::new();

    for _ in 0..3 {
        let (ch, q, ops) = (conn.open_channel().within(WAIT).await.unwrap(), q.clone(), counters.next().unwrap());
        ch.confirm_select().within(WAIT).await.unwrap();
        tasks.spawn(async move {
            let mut done = 0;
            loop {
                let confirm =
                    match ch.basic_publish("", &q, vec![7u8; 512], PublishOptions::default()).within(WAIT).await {
                        Ok(c) => c,
                        Err(e) => return ("publisher", (done, Some(e))),
                    };
                match confirm.within(WAIT).await {
                    Ok(Confirmation::Ack) => {}
                    Ok(other) => panic!("unexpected {other:?}"),
                    Err(e) => return ("publisher", (done, Some(e))),
                }
                done += 1;
                ops.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    for _ in 0..2 {
        let (ch, q, ops) = (conn.open_channel().within(WAIT).await.unwrap(), q.clone(), counters.next().unwrap());
        ch.basic_qos(50, false).within(WAIT).await.unwrap();
        let mut consumer = ch.basic_consume(&q, ConsumeOptions::default()).within(WAIT).await.unwrap();
        tasks.spawn(async move {
            let mut done = 0;
            loop {
                match consumer.next().within(WAIT).await {
                    Some(Ok(d)) => {
                        if let Err(e) = d.ack().within(WAIT).await {
                            return ("acker", (done, Some(e)));
                        }
                    }
                    Some(Err(e)) => return ("acker", (done, Some(e))),
                    None => return ("acker", (done, None)),
                }
                done += 1;
                ops.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    for _ in 0..3 {
        let (conn, ops) = (conn.clone(), counters.next().unwrap());
        tasks.spawn(async move {
            let mut done = 0;
            let result: Result<(), Error> = async {
                loop {
                    let ch = conn.open_channel().within(WAIT).await?;
                    ch.queue_declare("", exclusive(), Default::default()).within(WAIT).await?;
                    ch.close().within(WAIT).await?;
                    done += 1;
                    ops.fetch_add(1, Ordering::Relaxed);
                }
            }
            .await;
            ("opener", (done, result.err()))
        });
    }

    // Let every kind of operation get going, then close under them.
    let deadline = Instant::now() + WAIT;
    while progress.iter().any(|done| done.load(Ordering::Relaxed) < 5) {
        let counts: Vec<usize> = progress.iter().map(|done| done.load(Ordering::Relaxed)).collect();
        assert!(Instant::now() < deadline, "the tasks never got going: {counts:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    within(WAIT, "Connection::close", conn.close()).await.unwrap();
    assert!(!conn.is_open());

    let outcomes: Vec<(&str, Outcome)> = within(WAIT, "every task to finish", tasks.join_all()).await;
    assert_eq!(outcomes.len(), 8);
    for (kind, (done, error)) in &outcomes {
        assert!(*done > 0, "{kind}: never got going");
        match error {
            // The close, as the application asked for it.
            Some(Error::ConnectionClosed(r)) => {
                assert_eq!((r.reply_code, r.initiator), (ReplyCode::REPLY_SUCCESS, Initiator::Client), "{kind}: {r}");
            }
            // An ack for a delivery whose channel the close just ended.
            Some(Error::StaleDeliveryTag(_)) if *kind == "acker" => {}
            other => panic!("{kind} after {done} operations: expected a closed error, got {other:?}"),
        }
    }
    // Every handle is gone: the driver and anything else the client spawned must end.
    drop((conn, setup));
    until(WAIT, "the client's tasks to end", || metrics.num_alive_tasks() <= tasks_before).await;
    assert_eq!(metrics.num_alive_tasks(), tasks_before, "tasks left alive after the close");
}
