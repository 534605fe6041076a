//! Automatic connection recovery (issue 7) against a RabbitMQ node of this test's own: the
//! broker application stopped and started, connections closed by the broker, the node
//! killed and restarted on its data, a consumer timeout, a rotated password, and giving up.
//! Catalogue: shared/RELIABILITY.md (B2, B3, B7).
//!
//! One `#[test]` starts the node once (AMQP and distribution ports near 5673 and 25673) and
//! runs every case as a named step, serially; a failed step does not stop the others, and
//! the test fails at the end listing every failed step. The node is stopped when the test
//! ends, failed or not (`TestNode`'s `Drop`).
//!
//! `LEPUS_STEPS=b2,b3` runs only the steps whose names contain one of the parts (a part
//! that matches no step fails the test); `LEPUS_KEEP_NODE_DIR=1` keeps the node's directory.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lepus::{
    Channel, Confirmation, Connection, ConnectionEvent, ConnectionOptions, ConsumeOptions, Consumer, Credentials,
    Delivery, Error, PublishOptions, QueueDeclareOptions, QueueDeleteOptions, RecoveryOptions, ReplyCode,
};
use lepus_tests::bounded::{Bounded, until};
use lepus_tests::node::{DEFAULT_START_TIMEOUT, TestNode, TestNodeConfig, free_ports, stop_orphans};
use lepus_tests::recovery_load::{Collector, EventLog, Outcome, Publisher, acked, body, persistent};
use lepus_tests::steps::{self, Outcome as StepOutcome};

/// The node's name prefix (see `TestNodeConfig::name`).
const NODE_NAME: &str = "lepus_recovery_node";
/// The longest any one step may take before it counts as hung.
// `from_mins` would need Rust 1.91; the workspace's MSRV is 1.88.
#[allow(clippy::duration_suboptimal_units)]
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest any single client operation may take before it counts as hung.
const WAIT: Duration = Duration::from_secs(15);
/// How long to wait for something that should happen promptly.
const PROMPTLY: Duration = Duration::from_secs(5);
/// The backoff the steps recover with: short, so a recovery follows the broker closely.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(1));
/// The consumer timeout B7 sets, and how often channels check it meanwhile.
const B7_CONSUMER_TIMEOUT_MS: u64 = 2000;
const B7_TICK_MS: u64 = 500;
/// RabbitMQ 3.10's defaults for both, restored after B7.
const DEFAULT_CONSUMER_TIMEOUT_MS: u64 = 1_800_000;
const DEFAULT_TICK_MS: u64 = 60_000;

// ---------------------------------------------------------------------------------------
// Context and helpers.

/// What the steps share: the node (behind a lock: B3 kills and restarts it).
struct Ctx {
    node: Mutex<TestNode>,
}

impl Ctx {
    fn node(&self) -> std::sync::MutexGuard<'_, TestNode> {
        self.node.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `rabbitmqctl -n NODE args...`, failing the step if it fails.
    fn ctl(&self, args: &[&str]) -> String {
        self.node().ctl(args).unwrap_or_else(|e| panic!("rabbitmqctl {args:?}: {e}"))
    }

    /// `rabbitmqctl ...`, timed.
    fn timed_ctl(&self, args: &[&str]) -> Duration {
        let started = Instant::now();
        self.ctl(args);
        let took = started.elapsed();
        println!("    rabbitmqctl {} took {took:.2?}", args.join(" "));
        took
    }

    /// Guest to the node, named `name` (so the broker's listing finds it), recovering with
    /// the short [`BACKOFF`] and otherwise the defaults.
    fn options(&self, name: &str) -> ConnectionOptions {
        self.options_with(name, RecoveryOptions::new().backoff(BACKOFF.0, BACKOFF.1))
    }

    fn options_with(&self, name: &str, recovery: RecoveryOptions) -> ConnectionOptions {
        ConnectionOptions::from_uri(&self.node().amqp_url())
            .unwrap()
            .connection_timeout(Duration::from_secs(10))
            .connection_name(name)
            .recovery(recovery)
    }

    /// The broker's pid for the (one) connection named `name`, waiting up to 5 s for it to
    /// be listed.
    async fn connection_pid(&self, name: &str) -> String {
        let deadline = Instant::now() + PROMPTLY;
        loop {
            let listing = self.ctl(&["list_connections", "-q", "--no-table-headers", "pid", "client_properties"]);
            let ours: Vec<&str> = listing.lines().filter(|l| l.contains(name)).collect();
            match ours.as_slice() {
                [line] => return line.split('\t').next().unwrap_or_default().to_owned(),
                [] if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
                _ => panic!("connections named {name:?}: expected one, got {}:\n{listing}", ours.len()),
            }
        }
    }

    /// `rabbitmqctl close_connection` of the connection named `name`.
    async fn close_connection(&self, name: &str) {
        let pid = self.connection_pid(name).await;
        self.ctl(&["close_connection", &pid, "lepus recovery test"]);
    }

    /// The names of the node's queues.
    fn queues(&self) -> BTreeSet<String> {
        self.ctl(&["list_queues", "-q", "--no-table-headers", "name"]).lines().map(str::to_owned).collect()
    }

    fn set_env(&self, key: &str, value: u64) {
        self.ctl(&["eval", &format!("application:set_env(rabbit, {key}, {value}).")]);
    }
}

fn is_disconnected(e: &ConnectionEvent) -> bool {
    matches!(e, ConnectionEvent::Disconnected { .. })
}

fn is_recovered(e: &ConnectionEvent) -> bool {
    matches!(e, ConnectionEvent::Recovered { .. })
}

fn is_forced(err: &Error) -> bool {
    matches!(err, Error::ConnectionClosed(_)) && err.reply_code() == Some(ReplyCode::CONNECTION_FORCED)
}

async fn connect(opts: ConnectionOptions, what: &str) -> Connection {
    Connection::connect_with(opts).within(WAIT).await.unwrap_or_else(|e| panic!("{what}: connecting failed: {e}"))
}

async fn declare_durable(ch: &Channel, queue: &str) {
    ch.queue_declare(queue, QueueDeclareOptions { durable: true, ..Default::default() }, Default::default())
        .within(WAIT)
        .await
        .unwrap_or_else(|e| panic!("declaring {queue}: {e}"));
    ch.queue_purge(queue).within(WAIT).await.unwrap();
}

async fn publish_confirmed(ch: &Channel, queue: &str, body: &str, mandatory: bool) -> Confirmation {
    let options = PublishOptions { mandatory, ..persistent() };
    let confirm = ch
        .basic_publish("", queue, body.as_bytes().to_vec(), options)
        .within(WAIT)
        .await
        .unwrap_or_else(|e| panic!("publishing {body:?} to {queue}: {e}"));
    confirm.within(PROMPTLY).await.unwrap_or_else(|e| panic!("the confirm of {body:?}: {e}"))
}

async fn next_delivery(consumer: &mut Consumer, limit: Duration, what: &str) -> Delivery {
    match consumer.next().within(limit).await {
        Some(Ok(d)) => d,
        Some(Err(e)) => panic!("{what}: the consumer yielded an error: {e}"),
        None => panic!("{what}: the consumer ended"),
    }
}

/// `at` relative to `reference`: "1.2s after" or "0.3s before".
fn relative(at: Instant, reference: Instant) -> String {
    if at >= reference { format!("{:.2?} after", at - reference) } else { format!("{:.2?} before", reference - at) }
}

// ---------------------------------------------------------------------------------------
// The steps.

/// B2: `stop_app` under a running consumer and confirming publisher; `start_app` 3 s later.
/// The connection recovers by itself within 2 s of `start_app` returning, the same consumer
/// stream carries on, every confirmed message is consumed, and every confirm outstanding at
/// the loss resolves once.
async fn b2_stop_app_start_app(ctx: &Ctx) {
    const QUEUE: &str = "lepus.recovery.b2";
    const AFTER: usize = 200;
    let name = "lepus-recovery-b2";
    let conn = connect(ctx.options(name), "B2").await;
    let log = EventLog::watch(&conn);
    let cch = conn.open_channel().within(WAIT).await.unwrap();
    declare_durable(&cch, QUEUE).await;
    cch.basic_qos(50, false).within(WAIT).await.unwrap();
    let consumer = cch.basic_consume(QUEUE, ConsumeOptions::default()).within(WAIT).await.unwrap();
    let collector = Collector::start(consumer);
    let pch = conn.open_channel().within(WAIT).await.unwrap();
    pch.confirm_select().within(WAIT).await.unwrap();
    let publisher = Publisher::start(pch.clone(), QUEUE, Duration::from_millis(2));
    until(WAIT, "B2: 200 publishes before the stop", || publisher.published() >= 200).await;

    let mark = log.mark();
    ctx.timed_ctl(&["stop_app"]);
    let (_, _, event) = log.wait(mark, PROMPTLY, "Disconnected", is_disconnected).await;
    let ConnectionEvent::Disconnected { reason } = event else { unreachable!() };
    println!("    disconnected: {reason}");
    // The broker sends 320 and closes the socket; with a publisher writing, the client's
    // write can meet the reset before the close frame is read, and the driver then reads
    // the frame it left behind (fake_broker_faults.rs, b2_...): the reason is the 320.
    assert!(is_forced(&reason), "B2: stop_app closes with 320, got {reason:?}");
    assert!(conn.is_recovering(), "B2: recovering while the application is stopped");
    let at_loss = publisher.published();
    // The outage itself (not synchronisation): the broker stays down this long.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(conn.is_recovering(), "B2: still recovering while the application is stopped");
    let during = publisher.published();
    let recovered_early = log.count(mark, is_recovered);

    let start_began = Instant::now();
    ctx.timed_ctl(&["start_app"]);
    let returned = Instant::now();
    let (_, at, event) = log.wait(mark, Duration::from_secs(10), "Recovered", is_recovered).await;
    println!(
        "    {event:?}: {} start_app returned ({:.2?} after it began); {} Recovering attempts",
        relative(at, returned),
        at.saturating_duration_since(start_began),
        log.count(mark, |e| matches!(e, ConnectionEvent::Recovering { .. }))
    );
    assert_eq!(recovered_early, 0, "B2: no recovery while the application was stopped: {:#?}", log.summary());
    assert!(
        at.saturating_duration_since(returned) < Duration::from_secs(2),
        "B2: Recovered {:?} after start_app returned (limit 2 s)",
        at.saturating_duration_since(returned)
    );
    assert!(!conn.is_recovering() && conn.is_open(), "B2: up again");
    assert_eq!(conn.recoveries(), 1, "B2: one recovery");
    println!("    published: {at_loss} at the loss, {during} after 3 s down (publishes wait while down)");

    until(WAIT, "B2: 200 more publishes after the recovery", || publisher.published() >= during + AFTER).await;
    let outcomes = publisher.finish("B2").await;
    let confirmed = acked(&outcomes);
    let lost: Vec<usize> = outcomes.iter().filter(|(_, o)| **o == Outcome::Lost).map(|(id, _)| *id).collect();
    println!("    {} publishes: {} acked, {} ConnectionLost: {lost:?}", outcomes.len(), confirmed.len(), lost.len());
    assert!(confirmed.iter().any(|id| *id >= during), "B2: publishes after the recovery are confirmed");

    until(WAIT, "B2: every confirmed message consumed", || collector.seen().is_superset(&confirmed)).await;
    let (seen, stale, errors, _consumer) = collector.finish().await;
    println!("    consumed {} distinct ids ({stale} acks of the lost connection were stale)", seen.len());
    assert!(errors.is_empty(), "B2: the consumer stream carries on without errors: {errors:?}");
    assert!(seen.iter().any(|id| *id >= during), "B2: the same consumer stream yields after the recovery");
    cch.queue_delete(QUEUE, QueueDeleteOptions::default()).within(WAIT).await.unwrap();
    conn.close().within(WAIT).await.unwrap();
}

/// `rabbitmqctl close_connection`: Disconnected with 320, then Recovered. A server-named
/// exclusive queue comes back under a new name; its consumer receives what is published to
/// the new name, and publishing (and declaring) with the old name reaches the new queue.
async fn close_connection_recovers(ctx: &Ctx) {
    let name = "lepus-recovery-close";
    let conn = connect(ctx.options(name), "close").await;
    let log = EventLog::watch(&conn);
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.confirm_select().within(WAIT).await.unwrap();
    let exclusive = QueueDeclareOptions { exclusive: true, ..Default::default() };
    let old = ch.queue_declare("", exclusive, Default::default()).within(WAIT).await.unwrap().name;
    let mut consumer = ch.basic_consume(&old, ConsumeOptions::default()).within(WAIT).await.unwrap();
    assert_eq!(publish_confirmed(&ch, &old, "before", true).await, Confirmation::Ack);
    let d = next_delivery(&mut consumer, PROMPTLY, "before").await;
    assert_eq!(body(&d), "before");
    d.ack().within(WAIT).await.unwrap();

    let mark = log.mark();
    ctx.close_connection(name).await;
    let (i, _, event) = log.wait(mark, PROMPTLY, "Disconnected", is_disconnected).await;
    let ConnectionEvent::Disconnected { reason } = event else { unreachable!() };
    println!("    disconnected: {reason}");
    assert!(is_forced(&reason), "close_connection closes with 320, got {reason:?}");
    let (_, _, event) = log.wait(i, PROMPTLY, "Recovered", is_recovered).await;
    println!("    {event:?}");

    let queues = ctx.queues();
    let new: Vec<&String> = queues.iter().filter(|q| q.starts_with("amq.gen-")).collect();
    println!("    server-named queue {old} -> {new:?}");
    assert!(!queues.contains(&old), "the old exclusive queue went with the old connection: {queues:?}");
    let [new] = new.as_slice() else { panic!("one re-declared server-named queue, got {new:?}") };

    // Published to the new name from another connection: the consumer follows the rename.
    let other = connect(ctx.options("lepus-recovery-close-other"), "close, other").await;
    let och = other.open_channel().within(WAIT).await.unwrap();
    och.confirm_select().within(WAIT).await.unwrap();
    assert_eq!(publish_confirmed(&och, new, "to the new name", true).await, Confirmation::Ack, "routed");
    let d = next_delivery(&mut consumer, PROMPTLY, "to the new name").await;
    assert_eq!(body(&d), "to the new name");
    d.ack().within(WAIT).await.expect("acking a delivery of the recovered channel");
    other.close().within(WAIT).await.unwrap();

    // The old name, on the recovered channel: the client translates it to the new name.
    let confirmation = publish_confirmed(&ch, &old, "to the old name", true).await;
    assert_eq!(confirmation, Confirmation::Ack, "a mandatory publish to the old name is routed, not returned");
    let d = next_delivery(&mut consumer, PROMPTLY, "to the old name").await;
    assert_eq!(body(&d), "to the old name");
    assert_eq!(d.routing_key.as_str(), Some(new.as_str()), "the broker saw the new name");
    d.ack().within(WAIT).await.unwrap();
    let declared = ch
        .queue_declare(&old, QueueDeclareOptions { passive: true, ..Default::default() }, Default::default())
        .within(WAIT)
        .await
        .expect("a passive declare by the old name reaches the new queue");
    assert_eq!(declared.name.as_str(), new.as_str());
    assert_eq!(declared.consumer_count, 1, "the consumer is on the new queue");
    assert!(ch.closed(Duration::from_millis(100)).await.is_none(), "the channel is open");
    conn.close().within(WAIT).await.unwrap();
}

/// Confirms outstanding at a loss resolve once, with an ack or `ConnectionLost`: a
/// publisher at full speed while the broker closes the connection again and again. (A
/// publish applied by the driver after the connection closed, before it saw the loss,
/// failed with the raw close error: in about one loss in ten here.)
async fn confirms_at_loss_resolve_once(ctx: &Ctx) {
    const QUEUE: &str = "lepus.recovery.confirms";
    const LOSSES: usize = 8;
    let name = "lepus-recovery-confirms";
    let conn = connect(ctx.options(name), "confirms").await;
    let log = EventLog::watch(&conn);
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    declare_durable(&ch, QUEUE).await;
    ch.confirm_select().within(WAIT).await.unwrap();
    let publisher = Publisher::start(ch.clone(), QUEUE, Duration::ZERO);
    for loss in 1..=LOSSES {
        let before = publisher.published();
        until(WAIT, "publishing", || publisher.published() >= before + 100).await;
        let mark = log.mark();
        // The only connection on the node: one rabbitmqctl call, no lookup.
        ctx.ctl(&["close_all_connections", "lepus recovery test"]);
        log.wait(mark, Duration::from_secs(10), &format!("Recovered #{loss}"), is_recovered).await;
    }
    let outcomes = publisher.finish("confirms").await;
    let confirmed = acked(&outcomes);
    println!(
        "    {LOSSES} losses, {} publishes: {} acked, {} ConnectionLost",
        outcomes.len(),
        confirmed.len(),
        outcomes.len() - confirmed.len()
    );
    assert_eq!(conn.recoveries(), LOSSES as u64);
    ch.queue_delete(QUEUE, QueueDeleteOptions::default()).within(WAIT).await.unwrap();
    conn.close().within(WAIT).await.unwrap();
}

/// B3: the node's VM killed (SIGKILL) while persistent messages are published with
/// confirms to a durable queue, and restarted on the same data: the client recovers by
/// itself, and every message whose confirm was an ack is in the queue.
async fn b3_kill_and_restart(ctx: &Ctx) {
    const QUEUE: &str = "lepus.recovery.b3";
    let name = "lepus-recovery-b3";
    let conn = connect(ctx.options(name), "B3").await;
    let log = EventLog::watch(&conn);
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    declare_durable(&ch, QUEUE).await;
    ch.confirm_select().within(WAIT).await.unwrap();
    let publisher = Publisher::start(ch.clone(), QUEUE, Duration::from_millis(1));
    until(WAIT, "B3: 300 publishes before the kill", || publisher.published() >= 300).await;

    let mark = log.mark();
    let pid = ctx.node().kill().unwrap_or_else(|e| panic!("B3: kill: {e}"));
    let at_kill = publisher.published();
    println!("    killed the node's VM (pid {pid}) after {at_kill} publishes");
    let (_, _, event) = log.wait(mark, PROMPTLY, "Disconnected", is_disconnected).await;
    println!("    {event:?}");
    let restart = ctx.node().restart().unwrap_or_else(|e| panic!("B3: restart: {e}"));
    let returned = Instant::now();
    println!("    restarted in {restart:.2?}");
    let (_, at, _) = log.wait(mark, Duration::from_secs(15), "Recovered", is_recovered).await;
    println!("    Recovered {} the restart returned", relative(at, returned));
    let after = publisher.published();
    until(WAIT, "B3: 100 publishes after the recovery", || publisher.published() >= after + 100).await;
    let outcomes = publisher.finish("B3").await;
    let confirmed = acked(&outcomes);
    let lost = outcomes.len() - confirmed.len();
    println!("    {} publishes: {} acked, {lost} ConnectionLost", outcomes.len(), confirmed.len());

    // Everything the queue holds now.
    let mut present = BTreeSet::new();
    while let Some((d, _)) = ch.basic_get(QUEUE, true).within(WAIT).await.unwrap() {
        present.insert(body(&d).parse::<usize>().unwrap());
    }
    let missing: Vec<&usize> = confirmed.difference(&present).collect();
    let unconfirmed_kept = present.difference(&confirmed).count();
    println!("    the queue holds {} ids; {unconfirmed_kept} of them were never acked", present.len());
    assert!(missing.is_empty(), "B3: acked but not in the queue after the restart: {missing:?}");
    assert!(confirmed.iter().any(|id| *id >= after), "B3: publishes after the recovery were acked");
    ch.queue_delete(QUEUE, QueueDeleteOptions::default()).within(WAIT).await.unwrap();
    conn.close().within(WAIT).await.unwrap();
}

/// Acking a delivery of the lost connection after recovery: `StaleDeliveryTag`, nothing
/// sent, so the broker does not close the recovered channel; the message is redelivered.
async fn stale_tag_after_recovery(ctx: &Ctx) {
    const QUEUE: &str = "lepus.recovery.stale";
    let name = "lepus-recovery-stale";
    let conn = connect(ctx.options(name), "stale").await;
    let log = EventLog::watch(&conn);
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    declare_durable(&ch, QUEUE).await;
    ch.confirm_select().within(WAIT).await.unwrap();
    let mut consumer = ch.basic_consume(QUEUE, ConsumeOptions::default()).within(WAIT).await.unwrap();
    assert_eq!(publish_confirmed(&ch, QUEUE, "held", false).await, Confirmation::Ack);
    let held = next_delivery(&mut consumer, PROMPTLY, "held").await;

    let mark = log.mark();
    ctx.close_connection(name).await;
    log.wait(mark, Duration::from_secs(10), "Recovered", is_recovered).await;
    let result = held.ack().within(WAIT).await;
    println!("    acking delivery tag {} of the lost connection: {result:?}", held.delivery_tag);
    assert!(matches!(result, Err(Error::StaleDeliveryTag(_))), "a stale ack, got {result:?}");

    let again = next_delivery(&mut consumer, PROMPTLY, "the redelivery").await;
    assert_eq!(body(&again), "held");
    assert!(again.redelivered, "the broker redelivers the unacked message");
    again.ack().within(WAIT).await.expect("acking the redelivery");
    assert_eq!(publish_confirmed(&ch, QUEUE, "after", false).await, Confirmation::Ack, "the channel works on");
    let last = next_delivery(&mut consumer, PROMPTLY, "after").await;
    last.ack().within(WAIT).await.unwrap();
    assert_eq!(publish_confirmed(&ch, QUEUE, "after the acks", false).await, Confirmation::Ack);
    assert!(ch.closed(Duration::from_millis(200)).await.is_none(), "the broker did not close the channel");
    next_delivery(&mut consumer, PROMPTLY, "after the acks").await.ack().within(WAIT).await.unwrap();
    assert_eq!(log.count(mark, is_disconnected), 1, "one loss only: {:#?}", log.summary());
    ch.queue_delete(QUEUE, QueueDeleteOptions::default()).within(WAIT).await.unwrap();
    conn.close().within(WAIT).await.unwrap();
}

/// B7: a delivery held past the consumer timeout: the broker closes the channel with 406,
/// the consumer stream yields that error, then the channel is reopened, the consumer
/// re-established, and the message redelivered to the same stream.
///
/// RabbitMQ 3.10 checks the timeout on each channel's tick (`channel_tick_interval`, 60 s by
/// default) and reads both settings when a channel opens: the step sets a 2 s timeout and
/// a 500 ms tick before opening its channel, and restores the defaults after.
async fn b7_consumer_timeout(ctx: &Ctx) {
    const QUEUE: &str = "lepus.recovery.b7";
    ctx.set_env("consumer_timeout", B7_CONSUMER_TIMEOUT_MS);
    ctx.set_env("channel_tick_interval", B7_TICK_MS);
    let conn = connect(ctx.options("lepus-recovery-b7"), "B7").await;
    let log = EventLog::watch(&conn);
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    declare_durable(&ch, QUEUE).await;
    ch.confirm_select().within(WAIT).await.unwrap();
    let mut consumer = ch.basic_consume(QUEUE, ConsumeOptions::default()).within(WAIT).await.unwrap();
    assert_eq!(publish_confirmed(&ch, QUEUE, "held too long", false).await, Confirmation::Ack);
    let held = next_delivery(&mut consumer, PROMPTLY, "held").await;
    let received = Instant::now();

    let err = match consumer.next().within(Duration::from_secs(20)).await {
        Some(Err(e)) => e,
        other => panic!("B7: the consumer must yield the 406, got {:?}", other.map(|r| r.map(|d| body(&d)))),
    };
    let took = received.elapsed();
    println!("    consumer error {took:.2?} after the delivery (timeout {B7_CONSUMER_TIMEOUT_MS} ms): {err}");
    assert!(matches!(err, Error::ChannelClosed(_)), "B7: a channel close, got {err:?}");
    assert_eq!(err.reply_code(), Some(ReplyCode::PRECONDITION_FAILED), "B7: 406, got {err:?}");

    let again = next_delivery(&mut consumer, PROMPTLY, "the redelivery").await;
    println!("    redelivered {:.2?} after the error", received.elapsed().saturating_sub(took));
    assert_eq!(body(&again), "held too long");
    assert!(again.redelivered, "B7: the redelivery is marked redelivered");
    again.ack().within(WAIT).await.expect("B7: acking the redelivery on the reopened channel");
    let stale = held.ack().within(WAIT).await;
    assert!(matches!(stale, Err(Error::StaleDeliveryTag(_))), "B7: acking the timed-out delivery: {stale:?}");
    ctx.set_env("consumer_timeout", DEFAULT_CONSUMER_TIMEOUT_MS);
    ctx.set_env("channel_tick_interval", DEFAULT_TICK_MS);
    assert_eq!(publish_confirmed(&ch, QUEUE, "after", false).await, Confirmation::Ack, "B7: the channel works");
    next_delivery(&mut consumer, PROMPTLY, "after").await.ack().within(WAIT).await.unwrap();
    assert_eq!(log.count(0, is_disconnected), 0, "B7: the connection stayed up: {:#?}", log.summary());
    ch.queue_delete(QUEUE, QueueDeleteOptions::default()).within(WAIT).await.unwrap();
    conn.close().within(WAIT).await.unwrap();
}

/// A credentials provider returns the current password: after `change_password` and a
/// `close_connection` the client logs in again with the new one. `update_secret` on the live
/// connection is accepted.
async fn credentials_provider_rotated_password(ctx: &Ctx) {
    const USER: &str = "lepus-rotating";
    let _ = ctx.node().ctl(&["delete_user", USER]);
    ctx.ctl(&["add_user", USER, "password-1"]);
    ctx.ctl(&["set_permissions", "-p", "/", USER, ".*", ".*", ".*"]);
    let password = Arc::new(Mutex::new("password-1".to_owned()));
    let calls = Arc::new(AtomicUsize::new(0));
    let (provider_password, provider_calls) = (password.clone(), calls.clone());
    let name = "lepus-recovery-credentials";
    let opts = ctx.options(name).credentials_provider(move || {
        provider_calls.fetch_add(1, Ordering::SeqCst);
        let current = provider_password.lock().unwrap().clone();
        async move { Ok(Credentials::new(USER, current)) }
    });
    let conn = connect(opts, "credentials").await;
    let log = EventLog::watch(&conn);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the provider is asked at connect");

    ctx.ctl(&["change_password", USER, "password-2"]);
    "password-2".clone_into(&mut password.lock().unwrap());
    conn.update_secret("password-2", "rotated").within(WAIT).await.expect("update_secret on the live connection");
    let ch = conn.open_channel().within(WAIT).await.expect("a channel after update_secret");

    let mark = log.mark();
    ctx.close_connection(name).await;
    let (_, _, event) = log.wait(mark, Duration::from_secs(10), "Recovered", is_recovered).await;
    println!("    {event:?}; the provider was called {} times", calls.load(Ordering::SeqCst));
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the provider is asked again at the reconnection");
    assert_eq!(log.count(mark, |e| matches!(e, ConnectionEvent::Recovering { .. })), 1, "one attempt sufficed");
    let listing = ctx.ctl(&["list_connections", "-q", "--no-table-headers", "user", "client_properties"]);
    assert!(
        listing.lines().any(|l| l.starts_with(USER) && l.contains(name)),
        "the broker sees the recovered connection as {USER}:\n{listing}"
    );
    ch.queue_declare("", QueueDeclareOptions { exclusive: true, ..Default::default() }, Default::default())
        .within(WAIT)
        .await
        .expect("the recovered channel works");
    conn.close().within(WAIT).await.unwrap();
    ctx.ctl(&["delete_user", USER]);
}

/// Giving up is terminal: with three attempts allowed and the application left stopped,
/// `RecoveryFailed` comes, and every handle fails with it promptly.
async fn give_up_is_terminal(ctx: &Ctx) {
    const QUEUE: &str = "lepus.recovery.give-up";
    let recovery = RecoveryOptions::new()
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .give_up_after_attempts(Some(3));
    let conn = connect(ctx.options_with("lepus-recovery-give-up", recovery), "give up").await;
    let log = EventLog::watch(&conn);
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    declare_durable(&ch, QUEUE).await;
    ch.confirm_select().within(WAIT).await.unwrap();
    let mut consumer = ch.basic_consume(QUEUE, ConsumeOptions::default()).within(WAIT).await.unwrap();

    ctx.timed_ctl(&["stop_app"]);
    let stopped = Instant::now();
    let (_, at, event) =
        log.wait(0, PROMPTLY, "RecoveryFailed", |e| matches!(e, ConnectionEvent::RecoveryFailed(_))).await;
    println!("    {event:?} {} stop_app returned", relative(at, stopped));
    let ConnectionEvent::RecoveryFailed(err) = event else { unreachable!() };
    assert!(matches!(err, Error::RecoveryFailed { attempts: 3, .. }), "three attempts, got {err:?}");
    assert_eq!(log.count(0, |e| matches!(e, ConnectionEvent::Recovering { .. })), 3, "{:#?}", log.summary());

    let give_up = |what: &str, result: Result<(), Error>| {
        println!("    {what}: {result:?}");
        assert!(matches!(result, Err(Error::RecoveryFailed { .. })), "{what}: RecoveryFailed, got {result:?}");
    };
    let quick = Duration::from_secs(1);
    give_up("publish", ch.basic_publish("", QUEUE, &b"x"[..], PublishOptions::default()).within(quick).await.map(drop));
    give_up("consumer", consumer.next().within(quick).await.expect("the stream yields the error").map(drop));
    assert!(consumer.next().within(quick).await.is_none(), "the consumer stream then ends");
    give_up("channel call", ch.queue_purge(QUEUE).within(quick).await.map(drop));
    give_up("open_channel", conn.open_channel().within(quick).await.map(drop));
    give_up("closed()", Err(conn.closed().within(quick).await));
    assert!(!conn.is_open(), "closed for good: not open");
    assert!(!conn.is_recovering(), "closed for good: no longer recovering");

    ctx.timed_ctl(&["start_app"]);
    let conn = connect(ctx.options("lepus-recovery-give-up-after"), "give up, after").await;
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.queue_delete(QUEUE, QueueDeleteOptions::default()).within(WAIT).await.unwrap();
    conn.close().within(WAIT).await.unwrap();
}

// ---------------------------------------------------------------------------------------
// The test.

/// A step: a name and an async function of the shared context.
type Step = (&'static str, for<'a> fn(&'a Ctx) -> Pin<Box<dyn Future<Output = ()> + 'a>>);

/// Every step, in order.
const STEPS: [Step; 8] = [
    ("b2_stop_app_start_app", |ctx| Box::pin(b2_stop_app_start_app(ctx))),
    ("close_connection_recovers", |ctx| Box::pin(close_connection_recovers(ctx))),
    ("confirms_at_loss_resolve_once", |ctx| Box::pin(confirms_at_loss_resolve_once(ctx))),
    ("b3_kill_and_restart", |ctx| Box::pin(b3_kill_and_restart(ctx))),
    ("stale_tag_after_recovery", |ctx| Box::pin(stale_tag_after_recovery(ctx))),
    ("b7_consumer_timeout", |ctx| Box::pin(b7_consumer_timeout(ctx))),
    ("credentials_provider_rotated_password", |ctx| Box::pin(credentials_provider_rotated_password(ctx))),
    ("give_up_is_terminal", |ctx| Box::pin(give_up_is_terminal(ctx))),
];

/// Leaves the node as the next step expects it after a failed step: the application
/// running, the consumer timeout and tick at their defaults.
fn repair(ctx: &Ctx) {
    let mut node = ctx.node();
    if node.pid().is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        && let Err(e) = node.restart()
    {
        eprintln!("restarting the node: {e}");
    }
    for args in [
        &["start_app"][..],
        &["eval", &format!("application:set_env(rabbit, consumer_timeout, {DEFAULT_CONSUMER_TIMEOUT_MS}).")],
        &["eval", &format!("application:set_env(rabbit, channel_tick_interval, {DEFAULT_TICK_MS}).")],
    ] {
        if let Err(e) = node.ctl(args) {
            eprintln!("repairing the node ({args:?}): {e}");
        }
    }
}

/// Runs one step (see `lepus_tests::steps::run`); after a failure, repairs the node for the
/// next steps.
async fn run_step(ctx: &Ctx, (name, body): Step) -> StepOutcome {
    let outcome = steps::run(name, STEP_TIMEOUT, body(ctx)).await;
    if outcome.failed() {
        repair(ctx);
    }
    outcome
}

#[test]
fn broker_recovery() {
    let test_started = Instant::now();
    let selected = steps::selected(&STEPS.map(|(name, _)| name));
    stop_orphans(NODE_NAME);
    let ports = free_ports(&[5673, 25673]);
    let config = TestNodeConfig {
        name: NODE_NAME.to_owned(),
        amqp_port: ports[0],
        dist_port: ports[1],
        tls: None,
        start_timeout: DEFAULT_START_TIMEOUT,
    };
    let start_began = Instant::now();
    let node = TestNode::start(&config).unwrap_or_else(|e| panic!("starting the test node: {e}"));
    let start_took = start_began.elapsed();
    println!(
        "node {} (pid {:?}) up in {start_took:.2?}: AMQP {}, dist {}; dir {}",
        node.nodename(),
        node.pid(),
        ports[0],
        ports[1],
        node.dir().display()
    );
    let ctx = Ctx { node: Mutex::new(node) };

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let outcomes: Vec<StepOutcome> =
        STEPS
            .into_iter()
            .map(|step| {
                if selected.contains(&step.0) {
                    rt.block_on(run_step(&ctx, step))
                } else {
                    StepOutcome::skipped(step.0)
                }
            })
            .collect();
    rt.shutdown_timeout(Duration::from_secs(5));

    let stop = ctx.node().stop();
    println!("\nnode start {start_took:.2?}, stop {stop:.2?}; whole test {:.2?}", test_started.elapsed());
    steps::report(&outcomes);
}
