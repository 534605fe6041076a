//! N6 (shared/RELIABILITY.md): automatic recovery through an in-test TCP proxy that cuts
//! every connection (FIN or RST) at ~5 random points of a 10,000-message run with publisher
//! confirms (window 100) to a durable queue on the shared broker, read by a manual-ack
//! consumer that holds back its last acks so that some are made after a loss.
//!
//! Checked: every confirmed message is consumed at least once; an ack of a delivery of a lost
//! connection returns `StaleDeliveryTag` and is never sent (the broker would close the
//! channel with 406 `PRECONDITION_FAILED` "unknown delivery tag", which would end the
//! consumer and its channel); the consumer ends with everything and the queue empty. With
//! `republish_unconfirmed(true)`, every publish confirms Ok in the end (duplicates counted).
//!
//! The random cut points are seeded; the seed is printed, and `LEPUS_SEED=<seed>` replays.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use lepus::{
    Channel, Connection, ConsumeOptions, Error, FieldTable, QueueDeclareOptions, QueueDeleteOptions, RecoveryOptions,
};
use lepus_tests::bounded::{Bounded, eventually, until, within};
use lepus_tests::proxy::Proxy;
use lepus_tests::seeded::SeededRng;
use lepus_tests::traffic::{Consumed, Consuming, EventLog, Outcome, Published, Publisher};
use lepus_tests::util::{self, unique};

/// Messages in a run.
const MESSAGES: u64 = 10_000;
/// Cuts in a run.
const CUTS: usize = 5;
/// Deliveries the consumer holds unacked (acked once this many newer ones came).
const HOLD: usize = 20;
/// The longest a single client operation may take before it counts as a hang.
const WAIT: Duration = Duration::from_secs(15);
/// How long a recovery may take.
const RECOVER: Duration = Duration::from_secs(30);
/// How long the whole run may take.
const RUN: Duration = Duration::from_secs(90);
/// Acks made this soon after a `Disconnected` event was seen are not judged: the event is
/// sent just before the driver marks the channels lost.
const SETTLING: Duration = Duration::from_millis(20);

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions { durable: true, ..Default::default() }
}

/// A cut the test made: when, and when each connection was seen down and back.
#[derive(Debug)]
struct Cut {
    at: Instant,
    /// When the consumer's connection's `Disconnected` event was seen.
    consumer_down: Instant,
}

/// Connects through the proxy with recovery on.
async fn connect(proxy: &Proxy, republish: bool) -> Connection {
    let recovery = RecoveryOptions::new()
        .backoff(Duration::from_millis(50), Duration::from_millis(500))
        .give_up_after(Some(RECOVER))
        .republish_unconfirmed(republish);
    let options = proxy.options().publish_window(100).recovery(recovery);
    within(WAIT, "connect through the proxy", Connection::connect_with(options)).await.unwrap()
}

/// Cuts every connection through the proxy at each point (a count of publishes), waits for
/// both connections to go down, lets the proxy forward again, and waits for both to recover.
async fn cut_at(
    points: &[u64],
    rng: &mut SeededRng,
    proxy: &Proxy,
    publisher: &Publisher,
    logs: [&EventLog; 2],
) -> Vec<Cut> {
    let mut cuts = Vec::new();
    for (n, &point) in points.iter().enumerate() {
        until(RUN, format!("{point} publishes"), || publisher.published() >= point || publisher.is_finished()).await;
        let reset = rng.below(2) == 1;
        let at = Instant::now();
        if reset {
            proxy.reset();
        } else {
            proxy.cut();
        }
        until(WAIT, "both connections to see the cut", || logs.iter().all(|l| l.disconnects().len() > n)).await;
        // Each connection has been cut (its side read EOF or a reset): new ones may pass.
        proxy.resume();
        until(RECOVER, "both connections to recover", || logs.iter().all(|l| l.recoveries().len() > n)).await;
        let consumer_down = logs[1].disconnects()[n];
        let consumer_up = logs[1].recoveries()[n].0;
        println!(
            "cut {n} ({}) at {} publishes ({point} wanted): consumer down after {:.2?}, back after {:.2?}",
            if reset { "RST" } else { "FIN" },
            publisher.published(),
            consumer_down.saturating_duration_since(at),
            consumer_up.saturating_duration_since(at),
        );
        cuts.push(Cut { at, consumer_down });
    }
    cuts
}

/// Acks of deliveries of a lost connection made after the loss: each must have returned
/// `StaleDeliveryTag`. Returns how many were judged.
fn check_stale_acks(consumed: &Consumed, cuts: &[Cut]) -> usize {
    let mut judged = 0;
    let mut wrong = Vec::new();
    for r in &consumed.received {
        let Some((acked_at, result)) = &r.ack else { continue };
        let lost = cuts.iter().any(|c| r.at < c.at && *acked_at > c.consumer_down + SETTLING);
        if lost {
            judged += 1;
            if !matches!(result, Err(Error::StaleDeliveryTag(_))) {
                wrong.push(format!("message {}: {result:?}", r.id));
            }
        }
    }
    assert!(wrong.is_empty(), "acks of lost deliveries that did not return StaleDeliveryTag: {wrong:?}");
    judged
}

/// The channel is still open: the broker never closed it (e.g. with 406 for an unknown
/// delivery tag).
fn assert_open(channel: &Channel, what: &str) {
    assert!(channel.is_open() && channel.close_reason().is_none(), "{what} closed: {:?}", channel.close_reason());
}

async fn run(name: &str, republish: bool) {
    let mut rng = SeededRng::seeded(name);
    let queue = unique(name);
    let admin = util::connect().await;
    let admin_channel = admin.open_channel().within(WAIT).await.unwrap();
    admin_channel.queue_declare(&queue, durable(), FieldTable::new()).within(WAIT).await.unwrap();

    let proxy = Proxy::to_broker().within(WAIT).await.unwrap();
    let publishing_conn = connect(&proxy, republish).await;
    let consuming_conn = connect(&proxy, republish).await;
    let logs = [EventLog::start(&publishing_conn), EventLog::start(&consuming_conn)];
    let publishing = publishing_conn.open_channel().within(WAIT).await.unwrap();
    publishing.confirm_select().within(WAIT).await.unwrap();
    let consuming = consuming_conn.open_channel().within(WAIT).await.unwrap();
    consuming.basic_qos(100, false).within(WAIT).await.unwrap();
    // Declared by the consumer too, so that recovery re-declares it before consuming.
    consuming.queue_declare(&queue, durable(), FieldTable::new()).within(WAIT).await.unwrap();
    let consumer = consuming.basic_consume(&queue, ConsumeOptions::default()).within(WAIT).await.unwrap();

    let mut points: Vec<u64> = (0..CUTS).map(|_| 500 + rng.below(MESSAGES - 1000)).collect();
    points.sort_unstable();
    println!("{name}: cuts at publishes {points:?}");
    let started = Instant::now();
    let consumed = Consuming::start(consumer, HOLD, WAIT);
    let publisher = Publisher::start(publishing.clone(), queue.clone(), Some(MESSAGES), RECOVER + WAIT, RECOVER + WAIT);
    let cuts = within(RUN, "the cuts", cut_at(&points, &mut rng, &proxy, &publisher, [&logs[0], &logs[1]])).await;
    until(RUN, "every publish resolved", || publisher.is_finished()).await;
    let published = publisher.finish(WAIT).await;
    let publish_took = started.elapsed();

    let acked: HashSet<u64> = published.acked().into_iter().collect();
    eventually(RUN, "every confirmed message consumed", || {
        std::future::ready(consumed.with(|c| acked.iter().all(|id| c.received.iter().any(|r| r.id == *id))))
    })
    .await;
    // Then whatever else is in the queue (unconfirmed publishes the broker took).
    eventually(RECOVER, "the queue to be drained", || async { util::ready(&admin_channel, &queue).await == 0 }).await;
    let consumed = consumed.finish(WAIT).await;
    let took = started.elapsed();
    assert!(consumed.errors.is_empty() && !consumed.ended, "the consumer failed: {:?}", consumed.errors);
    assert_open(&consuming, "the consumer's channel");
    assert_open(&publishing, "the publisher's channel");

    let judged = check_stale_acks(&consumed, &cuts);
    assert!(judged > 0, "no ack of a lost delivery was made after its loss: the check saw nothing");
    report(name, republish, &published, &consumed, judged);
    println!("{name}: {MESSAGES} published in {publish_took:.2?}, all consumed in {took:.2?}");

    // Every ack went through: nothing is left ready or unacknowledged.
    eventually(WAIT, "the queue to be empty after the last acks", || async {
        util::ready(&admin_channel, &queue).await == 0
    })
    .await;
    let (p, c) = (publishing_conn.recoveries(), consuming_conn.recoveries());
    assert!(p >= CUTS as u64 && c >= CUTS as u64, "recoveries: publisher {p}, consumer {c}");
    admin_channel.queue_delete(&queue, QueueDeleteOptions::default()).within(WAIT).await.unwrap();
    for conn in [&publishing_conn, &consuming_conn, &admin] {
        conn.close().within(WAIT).await.unwrap();
    }
}

/// Checks the outcomes against the policy and prints the counts.
fn report(name: &str, republish: bool, published: &Published, consumed: &Consumed, judged: usize) {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    let mut wrong = Vec::new();
    for (id, outcome) in published.outcomes.iter().enumerate() {
        let kind = match outcome {
            Some(Outcome::Ack) => "ack",
            Some(Outcome::Nack) => "nack",
            Some(Outcome::Failed(Error::ConnectionLost(_))) if !republish => "connection lost",
            other => {
                wrong.push(format!("{id}: {other:?}"));
                "wrong"
            }
        };
        *counts.entry(kind).or_default() += 1;
    }
    assert!(wrong.is_empty(), "publishes that resolved against the policy: {wrong:?}");
    if republish {
        assert_eq!(counts.get("ack").copied(), Some(MESSAGES as usize), "not every publish confirmed: {counts:?}");
    }
    let mut deliveries: HashMap<u64, (usize, usize)> = HashMap::new();
    for r in &consumed.received {
        let entry = deliveries.entry(r.id).or_default();
        entry.0 += 1;
        entry.1 += usize::from(r.ack.as_ref().is_some_and(|(_, a)| a.is_ok()));
    }
    let redelivered = consumed.received.iter().filter(|r| r.redelivered).count();
    // Copies the broker holds more than once: first deliveries of one id beyond one.
    let first_deliveries =
        consumed.received.iter().filter(|r| !r.redelivered).fold(HashMap::<u64, usize>::new(), |mut m, r| {
            *m.entry(r.id).or_default() += 1;
            m
        });
    let duplicated = first_deliveries.values().filter(|&&n| n > 1).count();
    if !republish {
        assert_eq!(duplicated, 0, "a message the client did not republish reached the queue twice");
    }
    let acked_twice = deliveries.values().filter(|(_, ok)| *ok > 1).count();
    let stale =
        consumed.received.iter().filter(|r| matches!(r.ack, Some((_, Err(Error::StaleDeliveryTag(_)))))).count();
    println!(
        "{name}: outcomes {counts:?}; {} deliveries of {} ids, {redelivered} redelivered, {duplicated} ids \
         published twice; {stale} acks StaleDeliveryTag ({judged} judged), {acked_twice} ids acked Ok on two deliveries",
        consumed.received.len(),
        deliveries.len(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n6_cuts_during_10k_confirmed_publishes() {
    within(RUN * 2, "the run", run("n6", false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n6_cuts_with_republish_unconfirmed() {
    within(RUN * 2, "the run", run("n6-republish", true)).await;
}
