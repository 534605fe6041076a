//! The event bus against the real RabbitMQ, reproducing the event-bus tutorial's demos: one
//! event to one handler; ten events over two workers of one group, each handled exactly
//! once, both workers busy; three groups each seeing every event. Then routing and raw
//! events, failures (retried then dead-lettered, permanent, panicking, unmatched), the
//! statistics, and graceful shutdown. Every test uses a bus of its own (unique names) and
//! deletes its exchange and queues, even when it fails.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use lepus::Connection;

mod common;
use common::{Cleanup, STEP, Within, connect, unique, wait_until};
use lepus_patterns::event_bus::{EventBus, EventBusError, EventBusOptions, EventBusStats, EventMessage};

async fn declare(conn: &Connection, name: &str) -> EventBus {
    EventBus::declare(conn, name, EventBusOptions::default()).within("declaring the bus").await.unwrap()
}

/// What the raw handlers saw: (handler, routing key, body, content type).
type Seen = Vec<(&'static str, String, String, Option<String>)>;

fn counts(s: &EventBusStats) -> [u64; 6] {
    [s.consumed, s.succeeded, s.failed, s.retried, s.dead_lettered, s.reconnections]
}

fn recent(at: Option<SystemTime>) -> bool {
    at.and_then(|t| t.elapsed().ok()).is_some_and(|ago| ago < Duration::from_secs(30))
}

/// Raw-bytes events, and patterns: a group gets what its patterns match and nothing else,
/// each matching handler runs once per event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_events_reach_the_groups_whose_patterns_match() {
    let conn = connect().await;
    let name = unique("raw");
    let mut cleanup = Cleanup::bus(&name);
    let bus = declare(&conn, &name).await;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let record = |tag: &'static str| {
        let seen = seen.clone();
        move |m: EventMessage| {
            let body = m.body_str().unwrap_or("?").to_owned();
            seen.lock().unwrap().push((tag, m.routing_key.clone(), body, m.content_type.clone()));
            async { Ok(()) }
        }
    };
    let orders = bus.group("orders").on_pattern("order.*", record("orders"));
    let audit = bus.group("audit").on_all(record("audit")).on_pattern("*.refunded", record("refunds"));
    cleanup.group(&orders);
    cleanup.group(&audit);
    let m1 = orders.start().within("starting a member").await.unwrap();
    let m2 = audit.start().within("starting a member").await.unwrap();

    bus.publish_raw("order", "created", "text/plain", "o-1").within("publishing").await.unwrap();
    bus.publish_raw("payment", "refunded", "application/octet-stream", &b"p-1"[..]).within("publishing").await.unwrap();
    bus.publish_raw("order", "refunded", "text/plain", "o-2").within("publishing").await.unwrap();
    wait_until(STEP, "all handled", || m1.stats().succeeded == 2 && m2.stats().succeeded == 3).await;
    // Stopped, the members handle nothing more: an extra delivery would be in `seen` now.
    m1.shutdown().within("stopping a member").await.unwrap();
    m2.shutdown().within("stopping a member").await.unwrap();
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    let text = Some("text/plain".to_owned());
    let bytes = Some("application/octet-stream".to_owned());
    let row = |t, k: &str, b: &str, c: &Option<String>| (t, k.to_owned(), b.to_owned(), c.clone());
    assert_eq!(
        seen,
        [
            row("audit", "order.created", "o-1", &text),
            row("audit", "order.refunded", "o-2", &text),
            row("audit", "payment.refunded", "p-1", &bytes),
            row("orders", "order.created", "o-1", &text),
            row("orders", "order.refunded", "o-2", &text),
            row("refunds", "order.refunded", "o-2", &text),
            row("refunds", "payment.refunded", "p-1", &bytes),
        ]
    );
    assert_eq!(bus.stats().consumed, 5, "one delivery per group and event, whatever the handlers");

    // Names that cannot work are refused before anything is sent.
    let refused = bus.publish_raw("order.eu", "created", "text/plain", "x").within("publishing").await;
    assert!(matches!(refused, Err(EventBusError::Invalid(_))), "{refused:?}");
    let refused = bus.publish_raw("order", "#", "text/plain", "x").within("publishing").await;
    assert!(matches!(refused, Err(EventBusError::Invalid(_))), "{refused:?}");
    let refused = bus.group("empty").start().within("starting a member").await;
    assert!(matches!(refused, Err(EventBusError::Invalid(_))), "{refused:?}");
    let refused = bus.group("").on_all(record("x")).start().within("starting a member").await;
    assert!(matches!(refused, Err(EventBusError::Invalid(_))), "{refused:?}");
    let refused = EventBus::declare(&conn, "", EventBusOptions::default()).within("declaring").await;
    assert!(matches!(refused, Err(EventBusError::Invalid(_))), "{refused:?}");
    let stats = bus.stats();
    assert_eq!((stats.published, counts(&stats)), (3, [5, 5, 0, 0, 0, 0]));
    assert!(recent(stats.last_publish_at) && recent(stats.last_consume_at));
    bus.shutdown().within("stopping the bus").await.unwrap();
    conn.close().within("closing").await.unwrap();
}

/// Message ids are time-ordered UUIDs (version 7): later events sort after earlier ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_events_get_time_ordered_uuids() {
    let conn = connect().await;
    let name = unique("ids");
    let _cleanup = Cleanup::bus(&name);
    let bus = declare(&conn, &name).await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(bus.publish_raw("order", "created", "text/plain", "x").within("publishing").await.unwrap().message_id);
    }
    for id in &ids {
        assert_eq!((id.len(), id.as_bytes()[14]), (36, b'7'), "a hyphenated version 7 UUID: {id}");
    }
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "in publishing order: {ids:?}");
    bus.shutdown().within("stopping the bus").await.unwrap();
    conn.close().within("closing").await.unwrap();
}

/// The typed (JSON) events: the demos, failures, shutdown.
#[cfg(feature = "json")]
mod json {
    use std::{
        collections::BTreeSet,
        sync::atomic::{AtomicBool, Ordering},
        time::Instant,
    };

    use lepus_patterns::{
        event_bus::Event,
        retry::{HandlerFailure, RetryPolicy},
    };
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::common::wait_until_async;

    /// What the workers did: (worker, order id, started, finished).
    type WorkLog = Vec<(u32, String, Instant, Instant)>;

    /// A retry policy quick enough for tests: retries after 50, 100, 200 ms, ...
    fn quick_retries(max_retries: u32) -> RetryPolicy {
        RetryPolicy::exponential(Duration::from_millis(50), max_retries).without_jitter()
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct OrderCreated {
        order_id: String,
        customer_id: String,
        total_cents: u64,
    }

    impl Event for OrderCreated {
        const AGGREGATE: &'static str = "order";
        const NAME: &'static str = "created";
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct OrderShipped {
        order_id: String,
        tracking_number: String,
    }

    impl Event for OrderShipped {
        const AGGREGATE: &'static str = "order";
        const NAME: &'static str = "shipped";
    }

    fn order(i: u32) -> OrderCreated {
        OrderCreated {
            order_id: format!("ord-{i}"),
            customer_id: format!("cust-{i}"),
            total_cents: 1_000 * u64::from(i),
        }
    }

    /// Demo 1: one event, one handler — with the properties the bus sets, and the statistics.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_event_reaches_its_one_handler_with_its_properties_and_is_counted() {
        let conn = connect().await;
        let name = unique("demo1");
        let mut cleanup = Cleanup::bus(&name);
        let bus = declare(&conn, &name).await;
        let received: Arc<Mutex<Vec<(OrderCreated, EventMessage)>>> = Arc::default();
        let seen = received.clone();
        let group = bus.group("demo-consumers").on(move |event: OrderCreated, message| {
            seen.lock().unwrap().push((event, message));
            async { Ok(()) }
        });
        cleanup.group(&group);
        assert_eq!(group.queue(), format!("{name}.demo-consumers"));
        assert_eq!(group.patterns(), ["order.created"]);
        assert_eq!(bus.stats(), EventBusStats::default(), "nothing yet");

        let member = group.start().within("starting a member").await.unwrap();
        assert!(member.is_running());
        let published = bus.publish(&order(1)).within("publishing").await.unwrap();
        assert_eq!(published.routing_key, "order.created");
        wait_until(STEP, "the event arrives", || member.stats().succeeded == 1).await;

        let received = received.lock().unwrap().clone();
        assert_eq!(received.len(), 1);
        let (event, message) = &received[0];
        assert_eq!(event, &order(1));
        assert_eq!(message.routing_key, "order.created");
        assert_eq!((message.aggregate(), message.event()), ("order", "created"));
        assert_eq!(message.message_id.as_deref(), Some(published.message_id.as_str()));
        assert_eq!(message.timestamp, Some(published.timestamp));
        assert_eq!(message.content_type.as_deref(), Some("application/json"));
        assert_eq!(message.properties.delivery_mode, Some(2), "persistent");
        assert_eq!(message.properties.kind.as_ref().and_then(|k| k.as_str()), Some("order.created"));
        assert_eq!(message.json::<OrderCreated>().unwrap(), order(1));
        assert_eq!((message.retries, message.redelivered), (0, false));
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        assert!(published.timestamp <= now && published.timestamp + 30 > now);

        let stats = bus.stats();
        assert_eq!((stats.published, stats.publish_failures), (1, 0));
        assert_eq!(counts(&stats), [1, 1, 0, 0, 0, 0]);
        assert!(recent(stats.last_publish_at) && recent(stats.last_consume_at));
        let mine = member.stats();
        assert_eq!((mine.published, counts(&mine)), (0, [1, 1, 0, 0, 0, 0]), "a member does not publish");

        let info = group.queue_info().within("the queue's counts").await.unwrap();
        assert_eq!((info.message_count, info.consumer_count), (0, 1));
        member.shutdown().within("stopping the member").await.unwrap();
        assert_eq!(group.queue_info().within("the queue's counts").await.unwrap().consumer_count, 0);
        bus.shutdown().within("stopping the bus").await.unwrap();
        conn.close().within("closing").await.unwrap();
    }

    /// Demo 2: ten events over two workers of one group, each on a connection of its own as
    /// two processes would be: every event handled exactly once in all, both workers busy.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ten_events_over_two_workers_of_one_group_are_each_handled_exactly_once() {
        let name = unique("demo2");
        let mut cleanup = Cleanup::bus(&name);
        let (conn1, conn2) = (connect().await, connect().await);
        let (bus1, bus2) = (declare(&conn1, &name).await, declare(&conn2, &name).await);
        let log: Arc<Mutex<WorkLog>> = Arc::default();
        let worker = |bus: &EventBus, n: u32| {
            let log = log.clone();
            bus.group("load-balanced").prefetch(1).on(move |event: OrderCreated, _| {
                let log = log.clone();
                async move {
                    let started = Instant::now();
                    // Simulated work, so that both workers get some and overlap.
                    tokio::time::sleep(Duration::from_millis(40)).await;
                    log.lock().unwrap().push((n, event.order_id, started, Instant::now()));
                    Ok(())
                }
            })
        };
        let (group1, group2) = (worker(&bus1, 1), worker(&bus2, 2));
        cleanup.group(&group1);
        assert_eq!(group1.queue(), group2.queue(), "one group, one queue");
        let member1 = group1.start().within("starting a member").await.unwrap();
        let member2 = group2.start().within("starting a member").await.unwrap();
        assert_eq!(group1.queue_info().within("the queue's counts").await.unwrap().consumer_count, 2);

        for i in 0..10 {
            bus1.publish(&order(i)).within("publishing").await.unwrap();
        }
        wait_until(STEP, "10 events handled", || member1.stats().succeeded + member2.stats().succeeded == 10).await;
        // Stopped, the workers handle nothing more: an event handled twice is in the log now.
        bus1.shutdown().within("stopping a bus").await.unwrap();
        bus2.shutdown().within("stopping a bus").await.unwrap();
        assert!(!member1.is_running() && !member2.is_running());
        let log = log.lock().unwrap().clone();
        assert_eq!(log.len(), 10, "{log:?}");
        let ids: BTreeSet<String> = log.iter().map(|l| l.1.clone()).collect();
        assert_eq!(ids, (0..10).map(|i| format!("ord-{i}")).collect(), "each event once");
        let by = |n: u32| log.iter().filter(|l| l.0 == n).count();
        assert!(by(1) >= 1 && by(2) >= 1, "both workers busy: {} and {}", by(1), by(2));
        assert_eq!(by(1) as u64, member1.stats().succeeded);
        assert_eq!(by(2) as u64, member2.stats().succeeded);
        let overlapping = log.iter().any(|a| log.iter().any(|b| a.0 != b.0 && a.2 < b.3 && b.2 < a.3));
        assert!(overlapping, "the workers handled events at the same time");
        assert_eq!(bus1.stats().published, 10);
        assert_eq!(counts(&bus2.stats()), [by(2) as u64, by(2) as u64, 0, 0, 0, 0]);
        assert_eq!(group1.queue_info().within("the queue's counts").await.unwrap().message_count, 0);

        conn1.close().within("closing").await.unwrap();
        conn2.close().within("closing").await.unwrap();
    }

    /// Demo 3: three groups, each sees every event.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_groups_each_see_every_event() {
        let conn = connect().await;
        let name = unique("demo3");
        let mut cleanup = Cleanup::bus(&name);
        let bus = declare(&conn, &name).await;
        let seen: Arc<Mutex<Vec<(&'static str, String)>>> = Arc::default();
        let mut members = Vec::new();
        for group_name in ["projections", "notifications", "analytics"] {
            let seen = seen.clone();
            let group = bus.group(group_name).on(move |event: OrderCreated, _| {
                seen.lock().unwrap().push((group_name, event.order_id));
                async { Ok(()) }
            });
            cleanup.group(&group);
            members.push(group.start().within("starting a member").await.unwrap());
        }
        for i in 0..5 {
            bus.publish(&order(i)).within("publishing").await.unwrap();
        }
        wait_until(STEP, "every group handled 5", || members.iter().all(|m| m.stats().succeeded == 5)).await;
        // Stopped, the members handle nothing more: an extra delivery would be in `seen` now.
        bus.shutdown().within("stopping the bus").await.unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 15, "{seen:?}");
        let all: BTreeSet<String> = (0..5).map(|i| format!("ord-{i}")).collect();
        for group_name in ["projections", "notifications", "analytics"] {
            let got: BTreeSet<String> = seen.iter().filter(|s| s.0 == group_name).map(|s| s.1.clone()).collect();
            assert_eq!(got, all, "{group_name}");
        }
        let stats = bus.stats();
        assert_eq!((stats.published, counts(&stats)), (5, [15, 15, 0, 0, 0, 0]));
        conn.close().within("closing").await.unwrap();
    }

    /// A handler that always fails: the event is retried after the policy's delays, then goes
    /// to the group's dead-letter queue with the story in its headers; the statistics count
    /// every attempt.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_handler_is_retried_then_dead_lettered_and_counted() {
        let conn = connect().await;
        let name = unique("failing");
        let mut cleanup = Cleanup::bus(&name);
        let bus = declare(&conn, &name).await;
        let attempts: Arc<Mutex<Vec<(u32, Instant)>>> = Arc::default();
        let seen = attempts.clone();
        let group = bus.group("billing").retry_policy(quick_retries(2)).on(move |_: OrderCreated, message| {
            seen.lock().unwrap().push((message.retries, Instant::now()));
            async { Err(HandlerFailure::retry("payment service down")) }
        });
        cleanup.group(&group);
        let names: Vec<String> = group.topology().retry_queues().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, [50, 100].map(|ms| format!("{name}.billing.retry.{ms}")));
        let member = group.start().within("starting a member").await.unwrap();
        let published = bus.publish(&order(7)).within("publishing").await.unwrap();

        let dlq = group.dead_letters();
        assert_eq!(dlq.queue(), format!("{name}.billing.dlq"));
        wait_until_async(STEP, "the event reaching the DLQ", async || dlq.count().await.unwrap() > 0).await;
        let attempts = attempts.lock().unwrap().clone();
        assert_eq!(attempts.iter().map(|a| a.0).collect::<Vec<_>>(), [0, 1, 2], "three attempts");
        assert!(attempts[1].1 - attempts[0].1 >= Duration::from_millis(50), "the first retry waited");
        assert!(attempts[2].1 - attempts[1].1 >= Duration::from_millis(100), "the second waited longer");

        let letters = dlq.peek(10).within("peeking at the DLQ").await.unwrap();
        assert_eq!(letters.len(), 1);
        let letter = &letters[0];
        assert_eq!(letter.message_id(), Some(published.message_id.as_str()));
        assert_eq!(letter.retries, 2);
        assert_eq!(letter.reason(), Some("payment service down"));
        assert_eq!(letter.origin(), Some((name.as_str(), "order.created")));
        assert_eq!(serde_json::from_slice::<OrderCreated>(&letter.body).unwrap(), order(7));

        let stats = bus.stats();
        assert_eq!(counts(&stats), [3, 0, 3, 2, 1, 0], "consumed, succeeded, failed, retried, dead-lettered");
        assert_eq!(counts(&member.stats()), [3, 0, 3, 2, 1, 0]);
        assert_eq!(group.queue_info().within("the queue's counts").await.unwrap().message_count, 0);
        bus.shutdown().within("stopping the bus").await.unwrap();
        conn.close().within("closing").await.unwrap();
    }

    /// A body its handler cannot decode, and an event no handler of the member matches, go
    /// to the dead-letter queue at once; a panicking handler is a failure like any other, and
    /// its event succeeds on the retry.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn undecodable_unmatched_and_panicking_events_are_failures_not_crashes() {
        let conn = connect().await;
        let name = unique("odd");
        let mut cleanup = Cleanup::bus(&name);
        let bus = declare(&conn, &name).await;

        // The queue is bound with `order.*` by an earlier version of the group...
        let old = bus.group("shipping").on_pattern("order.*", |_| async { Ok(()) });
        cleanup.group(&old);
        let old_member = old.start().within("starting a member").await.unwrap();
        old_member.shutdown().within("stopping a member").await.unwrap();
        // ... this version handles order.created only: a panic on the first attempt.
        let panicked = Arc::new(AtomicBool::new(false));
        let once = panicked.clone();
        let group = bus.group("shipping").retry_policy(quick_retries(3)).on(move |event: OrderCreated, _| {
            assert!(once.swap(true, Ordering::SeqCst), "handler bug on {}", event.order_id);
            async { Ok(()) }
        });
        cleanup.group(&group);
        let member = group.start().within("starting a member").await.unwrap();

        bus.publish(&order(1)).within("publishing").await.unwrap(); // panics, then succeeds on the retry
        let not_json = bus.publish_raw("order", "created", "application/json", "{not json");
        not_json.within("publishing").await.unwrap(); // permanent
        let shipped = OrderShipped { order_id: "ord-1".into(), tracking_number: "T-1".into() };
        bus.publish(&shipped).within("publishing").await.unwrap(); // unmatched
        wait_until(STEP, "settled", || {
            let s = member.stats();
            s.succeeded == 1 && s.dead_lettered == 2
        })
        .await;
        let stats = member.stats();
        assert_eq!(counts(&stats), [4, 1, 3, 1, 2, 0]);
        assert!(panicked.load(Ordering::SeqCst));

        let dlq = group.dead_letters();
        wait_until_async(STEP, "both in the DLQ", async || dlq.count().await.unwrap() == 2).await;
        let letters = dlq.peek(10).within("peeking at the DLQ").await.unwrap();
        let mut reasons: Vec<(String, u32, String)> = letters
            .iter()
            .map(|l| (l.origin().unwrap().1.to_owned(), l.retries, l.reason().unwrap_or("").to_owned()))
            .collect();
        reasons.sort();
        assert_eq!(reasons.len(), 2);
        assert_eq!((reasons[0].0.as_str(), reasons[0].1), ("order.created", 0), "no retries for a permanent failure");
        assert!(reasons[0].2.contains("not the JSON its handler expects"), "{}", reasons[0].2);
        assert_eq!((reasons[1].0.as_str(), reasons[1].1), ("order.shipped", 0));
        assert!(reasons[1].2.contains("no handler for order.shipped"), "{}", reasons[1].2);
        bus.shutdown().within("stopping the bus").await.unwrap();
        conn.close().within("closing").await.unwrap();
    }

    /// Shutdown lets the handler in progress finish and settles its event before it returns;
    /// afterwards the bus refuses to publish and to start members. A mandatory bus refuses
    /// events nobody is bound for.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_finishes_handlers_in_progress_then_closes() {
        let conn = connect().await;
        let name = unique("shutdown");
        let mut cleanup = Cleanup::bus(&name);
        let options = EventBusOptions { mandatory: true, ..EventBusOptions::default() };
        let bus = EventBus::declare(&conn, &name, options).within("declaring the bus").await.unwrap();
        match bus.publish(&order(0)).within("publishing").await {
            Err(EventBusError::NotConfirmed { routing_key, outcome }) => {
                assert_eq!(routing_key, "order.created");
                assert!(outcome.contains("unroutable"), "{outcome}");
            }
            other => panic!("an event nobody listens to, published mandatory: {other:?}"),
        }
        assert_eq!((bus.stats().published, bus.stats().publish_failures), (0, 1));

        let (started, finished) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let release = Arc::new(tokio::sync::Notify::new());
        let (s, f, r) = (started.clone(), finished.clone(), release.clone());
        let group = bus.group("slow").on(move |_: OrderCreated, _| {
            let (s, f, r) = (s.clone(), f.clone(), r.clone());
            async move {
                s.store(true, Ordering::SeqCst);
                // Held until the test sees the shutdown waiting for it.
                r.notified().within("the test's release").await;
                f.store(true, Ordering::SeqCst);
                Ok(())
            }
        });
        cleanup.group(&group);
        let member = group.start().within("starting a member").await.unwrap();
        bus.publish(&order(1)).within("publishing").await.unwrap();
        wait_until(STEP, "the handler started", || started.load(Ordering::SeqCst)).await;
        let asked = Instant::now();
        let shutdown = tokio::spawn({
            let bus = bus.clone();
            async move { bus.shutdown().await }
        });
        // The shutdown stops consuming first...
        wait_until_async(STEP, "the member's consumer cancelled", async || {
            group.queue_info().await.unwrap().consumer_count == 0
        })
        .await;
        // ... then can only wait: the handler in progress is held until it is released.
        assert!(!shutdown.is_finished(), "shutdown returned while a handler was still running");
        release.notify_one();
        shutdown.within("stopping the bus").await.unwrap().unwrap();
        assert!(finished.load(Ordering::SeqCst), "shutdown returned before the handler finished");
        assert!(asked.elapsed() < Duration::from_secs(5));
        assert!(!member.is_running());
        assert_eq!(counts(&member.stats()), [1, 1, 0, 0, 0, 0]);
        let info = group.queue_info().within("the queue's counts").await.unwrap();
        assert_eq!((info.message_count, info.consumer_count), (0, 0), "settled, and nobody consumes");

        assert!(bus.is_closed());
        let refused = bus.publish(&order(2)).within("publishing").await;
        assert!(matches!(refused, Err(EventBusError::Closed)), "{refused:?}");
        let refused = group.start().within("starting a member").await;
        assert!(matches!(refused, Err(EventBusError::Closed)), "{refused:?}");
        member.shutdown().within("stopping the member").await.unwrap();
        bus.shutdown().within("stopping the bus").await.unwrap();
        assert_eq!(group.delete().within("deleting the group").await.unwrap(), 0);
        conn.close().within("closing").await.unwrap();
    }
}
