//! Topic routing against the real RabbitMQ: `topic_matches` agrees with the broker's
//! routing on edge cases and on generated patterns and keys (proptest), and the routing
//! tables of the pika guides come out as the guides say.

use std::collections::{BTreeMap, BTreeSet};

use lepus::{Channel, Confirmation, Connection, QueueDeclareOptions, ReplyCode};
use lepus_patterns::topic::{TopicExchange, topic_matches};
use proptest::prelude::*;

mod common;
use common::{Cleanup, Within, connect, unique};

/// Binds each pattern to an exclusive queue of its own on a fresh topic exchange, publishes
/// each key once (body: its index) and returns, per pattern, the indexes of the keys the
/// broker routed to it.
async fn broker_routing(patterns: &[String], keys: &[String]) -> Vec<BTreeSet<usize>> {
    let conn = connect().await;
    let exchange_name = unique("topic.routing");
    let _cleanup = Cleanup { queues: vec![], exchanges: vec![exchange_name.clone()] };
    let exchange = TopicExchange::declare(&conn, &exchange_name).within("declaring the exchange").await.unwrap();
    let channel = conn.open_channel().within("opening a channel").await.unwrap();
    let mut queues = Vec::with_capacity(patterns.len());
    for pattern in patterns {
        let options = QueueDeclareOptions { exclusive: true, ..Default::default() };
        let queue = channel.queue_declare("", options, Default::default()).within("declaring").await.unwrap().name;
        channel.queue_bind(&queue, &exchange_name, pattern, Default::default()).within("binding").await.unwrap();
        queues.push(queue);
    }
    for (i, key) in keys.iter().enumerate() {
        let verdict = exchange.publish(key, i.to_string().into_bytes()).within("publishing").await.unwrap();
        assert!(verdict.is_ack(), "publishing {key:?}: {verdict:?}");
    }
    // Confirmed: every routed copy is in its queue.
    let mut routed = Vec::with_capacity(queues.len());
    for queue in &queues {
        routed.push(drain(&channel, queue).await);
    }
    exchange.delete().within("deleting the exchange").await.unwrap();
    conn.close().within("closing").await.unwrap();
    routed
}

/// Every message in `queue`, as key indexes; a duplicate fails the test.
async fn drain(channel: &Channel, queue: &str) -> BTreeSet<usize> {
    let mut got = BTreeSet::new();
    while let Some((delivery, _)) = channel.basic_get(queue, true).within("getting a message").await.unwrap() {
        let index: usize = std::str::from_utf8(&delivery.body).unwrap().parse().unwrap();
        assert!(got.insert(index), "key #{index} routed twice to {queue}");
    }
    got
}

fn compare(patterns: &[String], keys: &[String], routed: &[BTreeSet<usize>]) -> Vec<String> {
    let mut disagreements = Vec::new();
    for (pattern, got) in patterns.iter().zip(routed) {
        for (i, key) in keys.iter().enumerate() {
            let ours = topic_matches(pattern, key);
            if ours != got.contains(&i) {
                disagreements.push(format!("pattern {pattern:?} key {key:?}: topic_matches {ours}, broker {}", !ours));
            }
        }
    }
    disagreements
}

/// Bound for one routing comparison: 64 queues declared and bound, ~130 keys published.
const ROUTING_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn edge_cases_agree_with_the_broker() {
    let patterns = strings(&[
        "", "#", "#.#", "*", "*.*", "a", "a.", ".a", ".", "..", "a.#", "#.a", "a.#.b", "a.*.b", "a.*", "*.a", "#.*",
        "*.#", "a.#.#.b", "#.a.#", "a*", "A", "#.", ".#", "*.", ".*",
    ]);
    let keys = strings(&[
        "", ".", "..", "a", "A", "a.", ".a", "a.b", "a..b", "a.x.b", "a.x.y.b", "b.a", "a.b.c", "a*", "x.a.y", "a.a",
    ]);
    let routed = runtime().block_on(broker_routing(&patterns, &keys).within_for(ROUTING_LIMIT, "routing"));
    let disagreements = compare(&patterns, &keys, &routed);
    assert!(disagreements.is_empty(), "{} disagreements:\n{}", disagreements.len(), disagreements.join("\n"));

    // What RabbitMQ does, spelled out (and so what `topic_matches` does).
    let routes = |pattern: &str, key: &str| {
        let p = patterns.iter().position(|x| x == pattern).unwrap();
        let k = keys.iter().position(|x| x == key).unwrap();
        routed[p].contains(&k)
    };
    assert!(routes("", ""), "the empty pattern matches the empty key");
    assert!(!routes("", "."), "but not a key of two empty words");
    assert!(routes("#", "") && routes("#.#", ""), "# matches no words at all");
    assert!(!routes("*", ""), "* needs a word");
    assert!(routes("*", "a") && !routes("*", "."), "* is exactly one word");
    assert!(routes("*.*", "."), "'.' is two empty words");
    assert!(routes("a.*", "a.") && routes("a.", "a."), "a trailing dot adds an empty word");
    assert!(!routes("a.", "a") && !routes("a", "a."), "which must be there");
    assert!(routes("a.#.b", "a.b") && routes("a.#.b", "a..b") && routes("a.#.b", "a.x.y.b"));
    assert!(routes("a.#", "a") && routes("#.a", "a") && routes("#.a.#", "x.a.y"));
    assert!(!routes("a", "A"), "case-sensitive");
    assert!(routes("a*", "a*") && !routes("a*", "a.b"), "wildcards only as whole words");
}

/// Patterns of up to 4 words from `a`, `b`, the empty word, `*` and `#`.
fn pattern() -> impl Strategy<Value = String> {
    prop::collection::vec(prop_oneof![Just("a"), Just("b"), Just(""), Just("*"), Just("#")], 0..=4)
        .prop_map(|w| w.join("."))
}

/// Keys of up to 5 words from `a`, `b` and the empty word.
fn key() -> impl Strategy<Value = String> {
    prop::collection::vec(prop_oneof![Just("a"), Just("b"), Just("")], 0..=5).prop_map(|w| w.join("."))
}

/// A key the pattern matches by construction: `*` and `#` filled in with words chosen by
/// `fill` (so the broker sees many matches, not only misses).
fn instance(pattern: &str, fill: &[u8]) -> String {
    let mut fill = fill.iter().copied().cycle();
    let mut words = Vec::new();
    let split: Vec<&str> = if pattern.is_empty() { vec![] } else { pattern.split('.').collect() };
    for word in split {
        let choice = fill.next().unwrap_or(0);
        match word {
            "*" => words.push(["a", "b", ""][usize::from(choice % 3)]),
            "#" => words.extend(std::iter::repeat_n("b", usize::from(choice % 3))),
            literal => words.push(literal),
        }
    }
    words.join(".")
}

proptest! {
    // Each case binds 64 patterns and routes ~130 keys through the broker (< 1 s).
    #![proptest_config(ProptestConfig { cases: 6, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn topic_matches_agrees_with_the_broker(
        patterns in prop::collection::vec(pattern(), 64),
        random_keys in prop::collection::vec(key(), 64),
        fill in prop::collection::vec(any::<u8>(), 1..8),
    ) {
        let mut keys: Vec<String> = patterns.iter().map(|p| instance(p, &fill)).collect();
        keys.extend(random_keys);
        keys.sort();
        keys.dedup();
        let routed = runtime().block_on(broker_routing(&patterns, &keys).within_for(ROUTING_LIMIT, "routing"));
        let disagreements = compare(&patterns, &keys, &routed);
        prop_assert!(disagreements.is_empty(), "{} disagreements:\n{}", disagreements.len(), disagreements.join("\n"));
    }
}

/// Subscribes each queue with its patterns, publishes each key, and returns which queues
/// received which keys.
async fn route_table(
    conn: &Connection,
    exchange: &TopicExchange,
    bindings: &[(&str, &[&str])],
    keys: &[&str],
    cleanup: &mut Cleanup,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut queues = Vec::new();
    for (queue, patterns) in bindings {
        let name = format!("{}.{queue}", exchange.name());
        cleanup.queues.push(name.clone());
        let subscription = exchange.subscribe(&name, patterns).within("subscribing").await.unwrap();
        queues.push((*queue, subscription));
    }
    for key in keys {
        assert!(exchange.publish(key, key.as_bytes().to_vec()).within("publishing").await.unwrap().is_ack());
    }
    let channel = conn.open_channel().within("opening a channel").await.unwrap();
    let mut table = BTreeMap::new();
    for (queue, subscription) in queues {
        let mut got = BTreeSet::new();
        while let Some((delivery, _)) =
            channel.basic_get(subscription.queue(), true).within("getting a message").await.unwrap()
        {
            let key = delivery.routing_key.to_string();
            assert_eq!(&delivery.body[..], key.as_bytes());
            assert_eq!(delivery.properties.delivery_mode, Some(2), "published persistent");
            assert!(got.insert(key.clone()), "{key} reached {queue} twice");
        }
        table.insert(queue.to_owned(), got);
    }
    table
}

fn expected(rows: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
    rows.iter().map(|(q, keys)| ((*q).to_owned(), keys.iter().map(|k| (*k).to_owned()).collect())).collect()
}

/// 001 "Topic Exchange": five queues, four events, each event where the guide's comments say.
#[tokio::test]
async fn the_topic_exchange_table_of_the_pika_guide() {
    let conn = connect().await;
    let name = unique("topic.guide");
    let mut cleanup = Cleanup { queues: vec![], exchanges: vec![name.clone()] };
    let events = TopicExchange::declare(&conn, &name).within("declaring the exchange").await.unwrap();
    let bindings: &[(&str, &[&str])] = &[
        ("order_events", &["order.*", "order.#"]),
        ("payment_events", &["payment.*"]),
        ("all_created", &["*.created"]),
        ("audit_log", &["#"]),
        ("critical_alerts", &["*.failed", "*.error"]),
    ];
    let keys = ["order.created", "order.payment.completed", "payment.failed", "user.created"];
    let table = route_table(&conn, &events, bindings, &keys, &mut cleanup).await;
    // publish('order.created')           -> order_events, all_created, audit_log
    // publish('order.payment.completed') -> order_events, audit_log
    // publish('payment.failed')          -> payment_events, critical_alerts, audit_log
    // publish('user.created')            -> all_created, audit_log
    let want = expected(&[
        ("order_events", &["order.created", "order.payment.completed"]),
        ("payment_events", &["payment.failed"]),
        ("all_created", &["order.created", "user.created"]),
        ("audit_log", &["order.created", "order.payment.completed", "payment.failed", "user.created"]),
        ("critical_alerts", &["payment.failed"]),
    ]);
    assert_eq!(table, want);
    // And the pure function says the same for every cell.
    for (queue, patterns) in bindings {
        for key in keys {
            let ours = patterns.iter().any(|p| topic_matches(p, key));
            assert_eq!(ours, want[*queue].contains(key), "{queue} {key}");
        }
    }
    conn.close().within("closing").await.unwrap();
}

/// 000 "Topic Routing": `order.europe.placed` reaches all three subscribers, an Asian
/// cancellation only the catch-all.
#[tokio::test]
async fn the_topic_routing_examples_of_the_pika_guide() {
    let conn = connect().await;
    let name = unique("topic.guide2");
    let mut cleanup = Cleanup { queues: vec![], exchanges: vec![name.clone()] };
    let events = TopicExchange::declare(&conn, &name).within("declaring the exchange").await.unwrap();
    let bindings: &[(&str, &[&str])] =
        &[("all-orders", &["order.#"]), ("europe-orders", &["order.europe.*"]), ("placed-orders", &["*.*.placed"])];
    let keys = ["order.europe.placed", "order.asia.cancelled"];
    let table = route_table(&conn, &events, bindings, &keys, &mut cleanup).await;
    let want = expected(&[
        ("all-orders", &["order.europe.placed", "order.asia.cancelled"]),
        ("europe-orders", &["order.europe.placed"]),
        ("placed-orders", &["order.europe.placed"]),
    ]);
    assert_eq!(table, want);
    conn.close().within("closing").await.unwrap();
}

/// Unbinding stops the routing; a mandatory event nobody matches comes back.
#[tokio::test]
async fn unbind_and_unroutable_events() {
    let conn = connect().await;
    let name = unique("topic.unbind");
    let queue = format!("{name}.q");
    let _cleanup = Cleanup { queues: vec![queue.clone()], exchanges: vec![name.clone()] };
    let events = TopicExchange::declare(&conn, &name).within("declaring the exchange").await.unwrap();
    let subscription = events.subscribe(&queue, &["a.*", "b.#"]).within("subscribing").await.unwrap();
    assert!(events.publish("a.x", &b"1"[..]).within("publishing").await.unwrap().is_ack());
    events.unbind(&queue, "a.*").within("unbinding").await.unwrap();
    assert!(events.publish("a.y", &b"2"[..]).within("publishing").await.unwrap().is_ack());
    events.bind(&queue, "c").within("binding").await.unwrap();
    assert!(events.publish("c", &b"3"[..]).within("publishing").await.unwrap().is_ack());
    let counts = subscription.counts().within("the queue's counts").await.unwrap();
    assert_eq!(counts.message_count, 2, "a.x and c, not a.y");
    let mandatory = lepus::PublishOptions { mandatory: true, ..Default::default() };
    match events.publish_with("nobody.listens", &b"4"[..], mandatory).within("publishing").await.unwrap() {
        Confirmation::Returned(returned) => assert_eq!(returned.reply_code, ReplyCode::NO_ROUTE),
        other => panic!("expected the event back, got {other:?}"),
    }
    assert_eq!(subscription.unsubscribe().within("unsubscribing").await.unwrap(), 2);

    // Publishing to an exchange that is gone: the broker's 404, and the next publish after
    // it is declared again works (on a new channel).
    events.delete().within("deleting the exchange").await.unwrap();
    let err = events.publish("a.x", &b"5"[..]).within("publishing").await.unwrap_err();
    assert_eq!(err.reply_code(), Some(ReplyCode::NOT_FOUND), "{err}");
    TopicExchange::declare(&conn, &name).within("declaring the exchange").await.unwrap();
    assert!(events.publish("a.x", &b"6"[..]).within("publishing").await.unwrap().is_ack());
    assert!(conn.is_open());
    conn.close().within("closing").await.unwrap();
}
