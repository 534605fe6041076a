//! W3C trace context across the real RabbitMQ (feature `trace-context`): an RPC call and an
//! event bus event carry the caller's trace to the other side — the same trace id, a new
//! parent id for each hop — and an RPC reply carries it back.

use std::sync::{Arc, Mutex};

use lepus::{
    BasicProperties,
    trace_context::{self, TraceContext},
};
use lepus_patterns::{
    event_bus::{EventBus, EventBusOptions, EventMessage},
    retry::{HandlerFailure, RetryPolicy},
    rpc::{RpcClient, RpcClientOptions, RpcRequest, RpcResponse, RpcServer, ServeOptions},
};

mod common;
use common::{Cleanup, STEP, Within, connect, unique, wait_until};

type Seen = Arc<Mutex<Vec<Option<TraceContext>>>>;
/// (body, context) per attempt.
type Attempts = Arc<Mutex<Vec<(String, Option<TraceContext>)>>>;

fn nth(seen: &Seen, i: usize) -> TraceContext {
    let seen = seen.lock().unwrap();
    seen.get(i).cloned().flatten().unwrap_or_else(|| panic!("delivery #{i} carried no trace context: {seen:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rpc_call_carries_the_callers_trace_to_the_handler_and_back() {
    let conn = connect().await;
    let queue = unique("trace.rpc");
    let _cleanup = Cleanup::queues(vec![queue.clone()]);
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let mut server = RpcServer::new(&conn);
    server
        .serve(&queue, ServeOptions::default(), move |request| {
            record.lock().unwrap().push(request.trace_context());
            async { Ok(RpcResponse::from("ok")) }
        })
        .within("starting the server")
        .await
        .unwrap();
    let client = RpcClient::new(&conn, RpcClientOptions::default()).within("starting the client").await.unwrap();

    // The caller's context: the request carries a child of it, the reply a child of that.
    let caller = TraceContext::new_root(true).with_tracestate("lepus=test,congo=t61rcWkgMzE").unwrap();
    let reply = client.call_with(RpcRequest::new(&queue, "hi").trace_context(&caller)).within("a call").await.unwrap();
    let at_server = nth(&seen, 0);
    assert_eq!(at_server.trace_id(), caller.trace_id(), "the handler is in the caller's trace");
    assert_ne!(at_server.parent_id(), caller.parent_id(), "the request is an operation of its own");
    assert_eq!((at_server.flags(), at_server.tracestate()), (caller.flags(), caller.tracestate()));
    let in_reply = reply.trace_context().expect("the reply carries the trace context");
    assert_eq!(in_reply.trace_id(), caller.trace_id(), "the reply is in the caller's trace");
    assert_ne!(in_reply.parent_id(), at_server.parent_id(), "the reply is an operation of the server's");
    assert_ne!(in_reply.parent_id(), caller.parent_id());
    assert_eq!(in_reply.tracestate(), caller.tracestate());

    // No context: each call starts a trace of its own, carried there and back the same way.
    let reply = client.call(&queue, "again").within("a call").await.unwrap();
    let at_server = nth(&seen, 1);
    assert_ne!(at_server.trace_id(), caller.trace_id(), "a new trace");
    assert!(!at_server.is_sampled(), "a trace this client started is not marked as recorded");
    let in_reply = reply.trace_context().expect("the reply carries the trace context");
    assert_eq!(in_reply.trace_id(), at_server.trace_id());
    assert_ne!(in_reply.parent_id(), at_server.parent_id());
    client.call(&queue, "and again").within("a call").await.unwrap();
    assert_ne!(nth(&seen, 2).trace_id(), at_server.trace_id(), "one trace per call");

    // A traceparent the caller wrote into the request itself goes as it is.
    let own = TraceContext::new_root(true);
    let mut properties = BasicProperties::default();
    trace_context::inject(&own, &mut properties);
    client.call_with(RpcRequest::new(&queue, "mine").properties(properties)).within("a call").await.unwrap();
    assert_eq!(nth(&seen, 3), own);

    server.shutdown().within("stopping the server").await.unwrap();
    conn.close().within("closing").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_carries_the_publishers_trace_to_its_handlers_and_through_a_retry() {
    let conn = connect().await;
    let name = unique("trace.bus");
    let mut cleanup = Cleanup::bus(&name);
    let bus = EventBus::declare(&conn, &name, EventBusOptions::default()).within("declaring the bus").await.unwrap();
    // The handler fails "flaky" on its first attempt.
    let seen: Attempts = Arc::default();
    let record = seen.clone();
    let quick = RetryPolicy::exponential(std::time::Duration::from_millis(20), 2).without_jitter();
    let group = bus.group("traced").retry_policy(quick).on_all(move |message: EventMessage| {
        let body = message.body_str().unwrap_or("?").to_owned();
        let fail = body == "flaky" && message.retries == 0;
        record.lock().unwrap().push((body, message.trace_context()));
        async move { if fail { Err(HandlerFailure::retry("once")) } else { Ok(()) } }
    });
    cleanup.group(&group);
    let member = group.start().within("starting a member").await.unwrap();
    let of = |body: &str| -> Vec<TraceContext> {
        let seen = seen.lock().unwrap();
        seen.iter().filter(|(b, _)| b == body).map(|(_, c)| c.clone().expect("a trace context")).collect()
    };

    let parent = TraceContext::new_root(true);
    bus.publish_raw_with_trace("order", "created", "text/plain", "o-1", &parent).within("publishing").await.unwrap();
    bus.publish_raw("order", "created", "text/plain", "o-2").within("publishing").await.unwrap();
    bus.publish_raw("order", "created", "text/plain", "o-3").within("publishing").await.unwrap();
    bus.publish_raw_with_trace("order", "created", "text/plain", "flaky", &parent).within("publishing").await.unwrap();
    wait_until(STEP, "every event handled", || member.stats().succeeded == 4).await;

    let one = of("o-1");
    let [at_handler] = &one[..] else { panic!("o-1 handled once: {one:?}") };
    assert_eq!(at_handler.trace_id(), parent.trace_id(), "the handler is in the publisher's trace");
    assert_ne!(at_handler.parent_id(), parent.parent_id(), "the publish is an operation of its own");
    assert!(at_handler.is_sampled());
    let (two, three) = (of("o-2"), of("o-3"));
    assert_ne!(two[0].trace_id(), parent.trace_id(), "no context given: a new trace");
    assert_ne!(two[0].trace_id(), three[0].trace_id(), "one trace per event");
    // The retry is the same message: the same context on both attempts.
    let flaky = of("flaky");
    assert_eq!(flaky.len(), 2, "one failure, one retry");
    assert_eq!(flaky[0], flaky[1], "the retry copy keeps the context");
    assert_eq!(flaky[0].trace_id(), parent.trace_id());
    assert_ne!(flaky[0].parent_id(), at_handler.parent_id(), "each publish has a parent id of its own");

    bus.shutdown().within("stopping the bus").await.unwrap();
    conn.close().within("closing").await.unwrap();
}

#[cfg(feature = "json")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_event_carries_the_trace_too() {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Shipped {
        order: u32,
    }
    impl lepus_patterns::event_bus::Event for Shipped {
        const AGGREGATE: &'static str = "order";
        const NAME: &'static str = "shipped";
    }

    let conn = connect().await;
    let name = unique("trace.typed");
    let mut cleanup = Cleanup::bus(&name);
    let bus = EventBus::declare(&conn, &name, EventBusOptions::default()).within("declaring the bus").await.unwrap();
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let group = bus.group("typed").on(move |event: Shipped, message| {
        assert_eq!(event.order, 9);
        record.lock().unwrap().push(message.trace_context());
        async { Ok(()) }
    });
    cleanup.group(&group);
    let member = group.start().within("starting a member").await.unwrap();
    let parent = TraceContext::new_root(false);
    bus.publish_with_trace(&Shipped { order: 9 }, &parent).within("publishing").await.unwrap();
    wait_until(STEP, "the event handled", || member.stats().succeeded == 1).await;
    let at_handler = nth(&seen, 0);
    assert_eq!(at_handler.trace_id(), parent.trace_id());
    assert_ne!(at_handler.parent_id(), parent.parent_id());
    assert!(!at_handler.is_sampled(), "the flags travel as they were");
    bus.shutdown().within("stopping the bus").await.unwrap();
    conn.close().within("closing").await.unwrap();
}
