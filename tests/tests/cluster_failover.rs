//! Automatic recovery across the nodes of a real 3-node RabbitMQ cluster on loopback, built
//! with RabbitMQ's own clustering (shared/BROKER.md, "A 3-node cluster on one host").
//! Catalogue: B4 in shared/RELIABILITY.md.
//!
//! One `#[test]` boots the cluster once (nodes in parallel, ports near 5681 and 25681) and
//! runs each case as a named step; a failed step does not stop the others, and the test
//! fails at the end listing every failed step. The nodes are stopped when the test ends,
//! failed or not (`TestNode`'s `Drop`).
//!
//! `LEPUS_STEPS=b4` runs only the steps whose names contain one of the (comma-separated)
//! parts; `LEPUS_KEEP_NODE_DIR=1` keeps the nodes' directories (config, logs) afterwards.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use lepus::{
    Address, Channel, Confirmation, Connection, ConnectionOptions, ConsumeOptions, Error, FieldTable, PublishOptions,
    QueueArguments, QueueDeclareOptions, QueueDeleteOptions, QueueType, RecoveryOptions,
};
use lepus_tests::bounded::{Bounded, eventually, until, within};
use lepus_tests::cluster::{TestCluster, ctl};
use lepus_tests::node::{TestNode, free_ports};
use lepus_tests::steps::{self, Outcome as StepOutcome};
use lepus_tests::traffic::{Consuming, EventLog, Outcome, Publisher};
use lepus_tests::util::unique;

/// The nodes' name prefix (`lepus_cluster_a`, `_b`, `_c`).
const CLUSTER_NAME: &str = "lepus_cluster";
/// The longest a step may take before it counts as hung.
const STEP_TIMEOUT: Duration = Duration::from_secs(90);
/// The longest a single client operation may take before it counts as hung.
const WAIT: Duration = Duration::from_secs(15);
/// The longest a `rabbitmqctl` command may take (`stop_app` of a quorum leader included).
const CTL_WAIT: Duration = Duration::from_secs(45);
/// How long a failover may take: the client reconnected, the quorum queue has a new leader.
const FAILOVER: Duration = Duration::from_secs(30);
/// The bound the task sets on the consumer's pause: from the node's stop (seen by the client
/// as its connection closing) to the first delivery on the new connection. The stop command
/// itself is not counted: `rabbitmqctl` takes 1-3 s to start on a loaded machine.
const RESUME_WITHIN: Duration = Duration::from_secs(5);

struct Ctx {
    cluster: TestCluster,
}

/// `127.0.0.1:PORT`, as `ConnectionEvent::Recovered` names an address.
fn address_of(node: &TestNode) -> String {
    format!("127.0.0.1:{}", node.amqp_port())
}

fn address(port: u16) -> Address {
    Address { host: "127.0.0.1".to_owned(), port }
}

/// Options for `first` then `more`, recovery on with a short backoff.
fn options(first: u16, more: &[u16], name: &str) -> ConnectionOptions {
    ConnectionOptions::new()
        .host("127.0.0.1")
        .port(first)
        .more_addresses(more.iter().map(|&p| address(p)))
        .connection_name(name)
        .connection_timeout(Duration::from_secs(5))
        .recovery(
            RecoveryOptions::new()
                .backoff(Duration::from_millis(50), Duration::from_secs(1))
                .give_up_after(Some(Duration::from_secs(45))),
        )
}

/// Runs `rabbitmqctl -n NODE ARGS` on a blocking thread, bounded.
async fn ctl_async(nodename: &str, args: &[&str]) -> String {
    let (node, owned): (String, Vec<String>) = (nodename.to_owned(), args.iter().map(|a| (*a).to_owned()).collect());
    let what = format!("rabbitmqctl -n {nodename} {args:?}");
    let run = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = owned.iter().map(String::as_str).collect();
        ctl(&node, &args)
    });
    within(CTL_WAIT, &what, run).await.unwrap().unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn quorum() -> (QueueDeclareOptions, FieldTable) {
    (
        QueueDeclareOptions { durable: true, ..Default::default() },
        QueueArguments::new().queue_type(QueueType::Quorum).build().unwrap(),
    )
}

async fn declare_quorum(channel: &Channel, queue: &str) {
    let (options, arguments) = quorum();
    within(WAIT, "declare the quorum queue", channel.queue_declare(queue, options, arguments)).await.unwrap();
}

/// The node that leads quorum queue `queue`, as `rabbitmqctl list_queues name leader` says
/// (asked of `ask`); waits while it has none (an election).
async fn leader_of(ask: &str, queue: &str) -> String {
    let deadline = Instant::now() + FAILOVER;
    loop {
        let listing = ctl_async(ask, &["list_queues", "-q", "--no-table-headers", "name", "leader"]).await;
        let leader = listing.lines().find_map(|line| {
            let mut cols = line.split_whitespace();
            (cols.next() == Some(queue)).then(|| cols.next().map(str::to_owned)).flatten()
        });
        if let Some(leader) = leader.filter(|l| l.contains('@')) {
            return leader;
        }
        assert!(Instant::now() < deadline, "queue {queue} has no leader; `list_queues name leader`:\n{listing}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Nacks and `ConnectionLost`s among the outcomes.
///
/// # Panics
///
/// When a publish resolved to anything else than Ack, Nack or `ConnectionLost`.
fn resolved_counts(published: &lepus_tests::traffic::Published) -> (usize, usize) {
    let mut lost = 0;
    let mut nacked = 0;
    let mut wrong = Vec::new();
    for (id, outcome) in published.outcomes.iter().enumerate() {
        match outcome {
            Some(Outcome::Ack) => {}
            Some(Outcome::Nack) => nacked += 1,
            Some(Outcome::Failed(Error::ConnectionLost(_))) => lost += 1,
            other => wrong.push(format!("{id}: {other:?}")),
        }
    }
    assert!(wrong.is_empty(), "publishes not resolved to Ack, Nack or ConnectionLost: {wrong:?}");
    (nacked, lost)
}

// ---------------------------------------------------------------------------------------
// B4: the quorum queue's leader node stops under load.

async fn b4_quorum_leader_stopped(ctx: &Ctx) {
    let nodes = ctx.cluster.nodes();
    let queue = unique("b4");
    {
        let admin =
            within(WAIT, "admin connect", Connection::connect_with(options(nodes[0].amqp_port(), &[], "b4-admin")))
                .await
                .unwrap();
        let channel = admin.open_channel().within(WAIT).await.unwrap();
        declare_quorum(&channel, &queue).await;
        admin.close().within(WAIT).await.unwrap();
    }
    let leader_name = leader_of(nodes[0].nodename(), &queue).await;
    let leader = ctx.cluster.by_name(&leader_name).unwrap_or_else(|| panic!("leader {leader_name} is not ours"));
    let others: Vec<u16> = nodes.iter().filter(|n| n.nodename() != leader_name).map(TestNode::amqp_port).collect();
    println!("b4: queue {queue}, leader {leader_name} on {}", address_of(leader));

    // The client connects to the leader first (the addresses are tried in order).
    let conn = within(
        WAIT,
        "connect to the leader",
        Connection::connect_with(options(leader.amqp_port(), &others, "b4-client").publish_window(100)),
    )
    .await
    .unwrap();
    let events = EventLog::start(&conn);
    let publishing = conn.open_channel().within(WAIT).await.unwrap();
    publishing.confirm_select().within(WAIT).await.unwrap();
    declare_quorum(&publishing, &queue).await;
    let consuming = conn.open_channel().within(WAIT).await.unwrap();
    consuming.basic_qos(100, false).within(WAIT).await.unwrap();
    let consumer = consuming.basic_consume(&queue, ConsumeOptions::default()).within(WAIT).await.unwrap();
    let consumed = Consuming::start(consumer, 10, WAIT);
    // Publish waits while recovering are bounded by the recovery's own wait (60 s).
    let publisher = Publisher::start(publishing.clone(), queue.clone(), None, Duration::from_secs(70), FAILOVER);

    until(FAILOVER, "300 messages consumed before the stop", || consumed.with(|c| c.received.len() >= 300)).await;
    let before = publisher.published();
    let stop_at = Instant::now();
    ctl_async(&leader_name, &["stop_app"]).await;
    let stop_took = stop_at.elapsed();

    until(FAILOVER, "the client to recover onto another node", || !events.recoveries().is_empty()).await;
    let (recovered_at, recovered_on) = events.recoveries()[0].clone();
    assert_ne!(recovered_on, address_of(leader), "recovered onto the stopped node; events: {:?}", events.all());
    assert!(nodes.iter().any(|n| address_of(n) == recovered_on), "recovered onto {recovered_on}, not a cluster node");
    let disconnected_at = *events.disconnects().first().expect("a Disconnected event before Recovered");
    let resumed = || consumed.with(|c| c.received.iter().find(|r| r.at > recovered_at).map(|r| r.at));
    until(FAILOVER, "the consumer to get a delivery on the new connection", || resumed().is_some()).await;
    let resumed_at = resumed().unwrap();
    println!(
        "b4: stop_app took {stop_took:.2?}; from the stop: disconnected {:.2?}, recovered on {recovered_on} {:.2?}, \
         consumer resumed {:.2?} ({:.2?} after the disconnect; {before} published before the stop)",
        disconnected_at.saturating_duration_since(stop_at),
        recovered_at.saturating_duration_since(stop_at),
        resumed_at.saturating_duration_since(stop_at),
        resumed_at.saturating_duration_since(disconnected_at),
    );

    let paused = resumed_at.saturating_duration_since(disconnected_at);
    assert!(paused <= RESUME_WITHIN, "the consumer resumed {paused:.2?} after the node closed the connection");

    // More traffic on the new node, then stop publishing and check the counts.
    let after = consumed.with(|c| c.received.len());
    until(FAILOVER, "300 more messages consumed after recovery", || consumed.with(|c| c.received.len() >= after + 300))
        .await;
    let published = publisher.finish(FAILOVER + WAIT).await;
    let acked = published.acked();
    let (nacked, lost) = resolved_counts(&published);
    let acked_set: HashSet<u64> = acked.iter().copied().collect();
    eventually(FAILOVER, "every confirmed message consumed", || {
        let done = consumed.with(|c| {
            let seen: HashSet<u64> = c.received.iter().map(|r| r.id).collect();
            acked_set.is_subset(&seen)
        });
        std::future::ready(done)
    })
    .await;
    let consumed = consumed.finish(WAIT).await;
    assert!(consumed.errors.is_empty() && !consumed.ended, "the consumer failed: {:?}", consumed.errors);
    let redelivered = consumed.received.iter().filter(|r| r.redelivered).count();
    println!(
        "b4: {} published: {} acked, {nacked} nacked, {lost} ConnectionLost; {} deliveries ({redelivered} redelivered); \
         {} recoveries",
        published.outcomes.len(),
        acked.len(),
        consumed.received.len(),
        conn.recoveries()
    );
    assert!(acked.iter().any(|&id| id >= before), "nothing published after the stop was confirmed");
    assert!(
        consumed.received.iter().any(|r| r.ack.as_ref().is_some_and(|(_, a)| a.is_ok()) && r.at > recovered_at),
        "no delivery on the new connection was acked"
    );

    // The stopped node comes back and rejoins.
    ctl_async(&leader_name, &["start_app"]).await;
    ctl_async(&leader_name, &["await_startup", "--timeout", "60"]).await;
    let channel = conn.open_channel().within(WAIT).await.unwrap();
    channel.queue_delete(&queue, QueueDeleteOptions::default()).within(WAIT).await.unwrap();
    conn.close().within(WAIT).await.unwrap();
}

// ---------------------------------------------------------------------------------------
// The address list: a dead first address is skipped; a lost node fails over to another.

/// Whether `node` lists a connection whose client properties carry `name`.
async fn has_connection(node: &TestNode, name: &str) -> bool {
    ctl_async(node.nodename(), &["list_connections", "-q", "--no-table-headers", "client_properties"])
        .await
        .contains(name)
}

async fn failover_address_list(ctx: &Ctx) {
    let nodes = ctx.cluster.nodes();
    // Free when chosen, and nothing listens there: the connect is refused.
    let closed = free_ports(&[5699])[0];
    let (second, third) = (&nodes[1], &nodes[2]);
    let name = unique("failover");
    let conn = within(
        WAIT,
        "connect past a closed port",
        Connection::connect_with(options(closed, &[second.amqp_port(), third.amqp_port()], &name)),
    )
    .await
    .expect("the connection goes to the next address");
    let events = EventLog::start(&conn);
    assert!(has_connection(second, &name).await, "not connected to the second address {}", address_of(second));

    let queue = unique("failover");
    let channel = conn.open_channel().within(WAIT).await.unwrap();
    channel.confirm_select().within(WAIT).await.unwrap();
    declare_quorum(&channel, &queue).await;
    let confirm = channel.basic_publish("", &queue, "before", PublishOptions::default()).within(WAIT).await.unwrap();
    assert_eq!(confirm.within(WAIT).await.unwrap(), Confirmation::Ack);

    let stop_at = Instant::now();
    ctl_async(second.nodename(), &["stop_app"]).await;
    until(FAILOVER, "the client to fail over", || !events.recoveries().is_empty()).await;
    let (recovered_at, on) = events.recoveries()[0].clone();
    println!("failover: {} -> {on} in {:.2?} from stop_app", address_of(second), recovered_at - stop_at);
    assert_ne!(on, address_of(second), "recovered onto the stopped node");
    assert_ne!(on, format!("127.0.0.1:{closed}"), "recovered onto the closed port");
    assert_eq!(on, address_of(third), "the next address after the lost one is the third");
    assert!(has_connection(third, &name).await, "the third node does not list the connection");

    // The recovered channel works: publish and read both messages.
    let confirm = channel.basic_publish("", &queue, "after", PublishOptions::default()).within(WAIT).await.unwrap();
    assert_eq!(confirm.within(FAILOVER).await.unwrap(), Confirmation::Ack);
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let (delivery, _) = channel.basic_get(&queue, true).within(WAIT).await.unwrap().expect("a message");
        bodies.push(String::from_utf8_lossy(&delivery.body).into_owned());
    }
    assert_eq!(bodies, ["before", "after"]);

    ctl_async(second.nodename(), &["start_app"]).await;
    ctl_async(second.nodename(), &["await_startup", "--timeout", "60"]).await;
    channel.queue_delete(&queue, QueueDeleteOptions::default()).within(WAIT).await.unwrap();
    conn.close().within(WAIT).await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Steps.

/// A step: a name and an async function of the shared context.
type Step = (&'static str, for<'a> fn(&'a Ctx) -> Pin<Box<dyn Future<Output = ()> + 'a>>);

const STEPS: [Step; 2] = [
    ("b4_quorum_leader_stopped", |ctx| Box::pin(b4_quorum_leader_stopped(ctx))),
    ("failover_address_list", |ctx| Box::pin(failover_address_list(ctx))),
];

#[test]
fn cluster_failover() {
    let started = Instant::now();
    let selected = steps::selected(&STEPS.map(|(name, _)| name));
    let cluster = TestCluster::start(CLUSTER_NAME, 3).unwrap_or_else(|e| panic!("starting the cluster: {e}"));
    println!(
        "cluster booted in {:.2?} (in parallel), joined in {:.2?}: {:?}",
        cluster.boot_took,
        cluster.join_took,
        cluster.nodes().iter().map(|n| (n.nodename().to_owned(), n.amqp_port())).collect::<Vec<_>>()
    );
    let ctx = Ctx { cluster };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let outcomes: Vec<StepOutcome> = STEPS
        .into_iter()
        .map(|(name, body)| {
            if selected.contains(&name) {
                rt.block_on(steps::run(name, STEP_TIMEOUT, body(&ctx)))
            } else {
                StepOutcome::skipped(name)
            }
        })
        .collect();
    rt.shutdown_timeout(Duration::from_secs(5));
    let stopping = Instant::now();
    drop(ctx);
    println!("cluster stopped in {:.2?}; whole test {:.2?}", stopping.elapsed(), started.elapsed());
    steps::report(&outcomes);
}
