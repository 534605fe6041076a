//! The patterns keep working across a broker restart (B2 for the patterns): a `WorkQueue`
//! worker, an `RpcServer` with its `RpcClient`, and an `EventBus` consumer group (whose
//! members are `RetryConsumer`s) all carry on after `rabbitmqctl stop_app; start_app`,
//! with no handle rebuilt by the application, and the bus counts the reconnection. An RPC
//! call in progress at the loss fails at once with `ConnectionLost` (its reply cannot come).
//!
//! Runs on a node of its own (own ports, own data directory): stopping the shared broker
//! would break every other test.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use lepus::{Connection, ConnectionEvent, ConnectionOptions, FieldTable, QueueDeclareOptions, RecoveryOptions};
use lepus_patterns::{
    event_bus::{EventBus, EventBusOptions, EventMessage},
    rpc::{RpcClient, RpcClientOptions, RpcError, RpcRequest, RpcResponse, RpcServer, ServeOptions},
    work_queue::{Job, WorkQueue, WorkerOptions},
};
use lepus_tests::bounded::{Bounded, until, within};
use lepus_tests::node::{TestNode, TestNodeConfig, free_ports, stop_orphans};
use lepus_tests::recovery_load::next_event;
use tokio::sync::broadcast;

const NODE_NAME: &str = "lepus_patterns_recovery";
/// The longest any single operation may take before it counts as hung.
const WAIT: Duration = Duration::from_secs(20);
/// How long the node stays stopped.
const DOWN_FOR: Duration = Duration::from_secs(3);

async fn event(events: &mut broadcast::Receiver<ConnectionEvent>, what: &str, pred: impl Fn(&ConnectionEvent) -> bool) {
    next_event(events, WAIT, what, pred).await;
}

fn ctl(node: &TestNode, args: &[&str]) {
    tokio::task::block_in_place(|| node.ctl(args)).unwrap_or_else(|e| panic!("rabbitmqctl {args:?}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_queue_rpc_and_event_bus_survive_a_broker_restart() {
    stop_orphans(NODE_NAME);
    let ports = free_ports(&[5690, 25690]);
    let config = TestNodeConfig { amqp_port: ports[0], dist_port: ports[1], ..TestNodeConfig::new(NODE_NAME) };
    let node = tokio::task::block_in_place(|| TestNode::start(&config)).unwrap_or_else(|e| panic!("node: {e}"));
    let options = ConnectionOptions::from_uri(&node.amqp_url())
        .unwrap()
        .connection_name("patterns across a restart")
        .recovery(RecoveryOptions::new().backoff(Duration::from_millis(100), Duration::from_millis(500)));
    let conn = within(WAIT, "connect", Connection::connect_with(options)).await.unwrap();
    let mut events = conn.events();

    // A work queue and its worker.
    let tasks = WorkQueue::declare(&conn, "restart.tasks").within(WAIT).await.unwrap();
    let handled = Arc::new(AtomicU64::new(0));
    let counter = handled.clone();
    let worker = tasks
        .worker(WorkerOptions::prefetch(10), move |_job: Job| {
            counter.fetch_add(1, Ordering::Relaxed);
            async {}
        })
        .within(WAIT)
        .await
        .unwrap();

    // An RPC server and client.
    let mut server = RpcServer::new(&conn);
    server
        .serve("restart.rpc", ServeOptions::default(), |request| async move {
            let mut reply = b"re:".to_vec();
            reply.extend_from_slice(&request.body);
            Ok(RpcResponse::from(reply))
        })
        .within(WAIT)
        .await
        .unwrap();
    let rpc = RpcClient::new(&conn, RpcClientOptions::default()).within(WAIT).await.unwrap();

    // An event bus with one consumer group.
    let bus = EventBus::declare(&conn, "restart.bus", EventBusOptions::default()).within(WAIT).await.unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let member = bus
        .group("restart.group")
        .on_all(move |_m: EventMessage| {
            counter.fetch_add(1, Ordering::Relaxed);
            async { Ok(()) }
        })
        .start()
        .within(WAIT)
        .await
        .unwrap();

    // Everything works before the restart.
    for i in 0..20 {
        assert!(tasks.publish(format!("before {i}").into_bytes()).within(WAIT).await.unwrap().is_ack());
    }
    assert_eq!(&rpc.call("restart.rpc", "one").within(WAIT).await.unwrap().body[..], b"re:one");
    bus.publish_raw("order", "placed", "text/plain", &b"before"[..]).within(WAIT).await.unwrap();
    until(WAIT, "20 tasks handled", || handled.load(Ordering::Relaxed) >= 20).await;
    until(WAIT, "1 event received", || received.load(Ordering::Relaxed) >= 1).await;

    // A call in progress at the loss: its request waits in a queue nobody serves, so only
    // the loss can end it before its 60 s timeout.
    let ch = conn.open_channel().within(WAIT).await.unwrap();
    ch.queue_declare("restart.unserved", QueueDeclareOptions::default(), FieldTable::new()).within(WAIT).await.unwrap();
    let waiting = tokio::spawn({
        let rpc = rpc.clone();
        async move {
            let request = RpcRequest::new("restart.unserved", "lost").timeout(Duration::from_mins(1));
            rpc.call_with(request).await
        }
    });
    until(WAIT, "the unserved call in progress", || rpc.pending() == 1).await;

    ctl(&node, &["stop_app"]);
    event(&mut events, "Disconnected", |e| matches!(e, ConnectionEvent::Disconnected { .. })).await;
    let lost = within(Duration::from_secs(2), "the call in progress at the loss", waiting).await.unwrap();
    assert!(matches!(lost, Err(RpcError::Client(lepus::Error::ConnectionLost(_)))), "{lost:?}");
    tokio::time::sleep(DOWN_FOR).await;
    ctl(&node, &["start_app"]);
    let started = Instant::now();
    event(&mut events, "Recovered", |e| matches!(e, ConnectionEvent::Recovered { .. })).await;
    println!("recovered {:?} after start_app returned", started.elapsed());

    // The same handles carry on.
    for i in 0..20 {
        assert!(tasks.publish(format!("after {i}").into_bytes()).within(WAIT).await.unwrap().is_ack());
    }
    until(WAIT, "40 tasks handled", || handled.load(Ordering::Relaxed) >= 40).await;
    assert!(!worker.is_finished(), "the worker is still consuming");
    assert_eq!(&rpc.call("restart.rpc", "two").within(WAIT).await.unwrap().body[..], b"re:two");
    bus.publish_raw("order", "placed", "text/plain", &b"after"[..]).within(WAIT).await.unwrap();
    until(WAIT, "2 events received", || received.load(Ordering::Relaxed) >= 2).await;
    assert!(member.is_running());
    assert_eq!(bus.stats().reconnections, 1, "{:?}", bus.stats());
    assert_eq!(member.stats().reconnections, 1);

    worker.shutdown().within(WAIT).await.unwrap();
    member.shutdown().within(WAIT).await.unwrap();
    server.shutdown().within(WAIT).await.unwrap();
    rpc.close().within(WAIT).await.unwrap();
    conn.close().within(WAIT).await.unwrap();
    drop(node);
}
