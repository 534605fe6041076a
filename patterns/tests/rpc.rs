//! RPC against the real RabbitMQ: many concurrent calls matched to their replies, timeouts
//! (server down, late replies), unroutable requests, handler errors. Each test uses queues
//! of its own and deletes them, even when it fails.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use lepus::{Connection, Initiator, ReplyCode};
use tokio::sync::Notify;

mod common;
use common::{Cleanup, STEP, Within, connect, delete_queue, ready, unique, wait_until, wait_until_async};
use lepus_patterns::rpc::{
    ReplyQueue, RpcClient, RpcClientOptions, RpcError, RpcRequest, RpcResponse, RpcServer, ServeOptions,
};

/// Bound for the thousand calls of a many-calls run, all together.
const MANY_CALLS_LIMIT: Duration = Duration::from_secs(60);

/// A server on `queue` answering `"<body>"` with `"re:<body>"`.
async fn echo_server(conn: &Connection, queue: &str, prefetch: u16) -> RpcServer {
    let mut server = RpcServer::new(conn);
    let options = ServeOptions { prefetch, ..Default::default() };
    server
        .serve(queue, options, |request| async move {
            let mut reply = b"re:".to_vec();
            reply.extend_from_slice(&request.body);
            Ok(RpcResponse::from(reply))
        })
        .within("starting the echo server")
        .await
        .unwrap();
    server
}

async fn client(conn: &Connection, options: RpcClientOptions) -> RpcClient {
    RpcClient::new(conn, options).within("starting the client").await.unwrap()
}

async fn many_calls(reply_queue: ReplyQueue, tasks: u32, per_task: u32) {
    let conn = connect().await;
    let queue = unique("echo");
    let _cleanup = Cleanup::queues(vec![queue.clone()]);
    let server = echo_server(&conn, &queue, 64).await;
    let options = RpcClientOptions { reply_queue, timeout: Duration::from_secs(20), ..Default::default() };
    let client = client(&conn, options).await;
    match reply_queue {
        ReplyQueue::DirectReplyTo => assert_eq!(client.reply_to(), "amq.rabbitmq.reply-to"),
        ReplyQueue::Exclusive => assert!(client.reply_to().starts_with("amq.gen-"), "{}", client.reply_to()),
    }

    let mut workers = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let client = client.clone();
        let queue = queue.clone();
        workers.spawn(async move {
            // Every call of this task at once, each checking it got its own reply.
            let mut calls = tokio::task::JoinSet::new();
            for i in 0..per_task {
                let client = client.clone();
                let queue = queue.clone();
                calls.spawn(async move {
                    let body = format!("task {t} call {i}");
                    let reply = client.call(&queue, body.clone()).within_for(MANY_CALLS_LIMIT, "a call").await.unwrap();
                    assert_eq!(reply.body, format!("re:{body}").as_bytes(), "a reply to another request");
                    assert!(reply.properties.correlation_id.is_some());
                });
            }
            let mut answered = 0;
            while let Some(done) = calls.join_next().within_for(MANY_CALLS_LIMIT, "a task's calls").await {
                done.unwrap();
                answered += 1;
            }
            answered
        });
    }
    let mut answered = 0;
    while let Some(done) = workers.join_next().within_for(MANY_CALLS_LIMIT, "the tasks").await {
        answered += done.unwrap();
    }
    assert_eq!(answered, tasks * per_task);
    assert_eq!(client.pending(), 0, "no entry left behind");
    assert_eq!(client.discarded_replies(), 0, "every reply found its call");

    server.shutdown().within("stopping the server").await.unwrap();
    assert_eq!(delete_queue(&conn, &queue).await, 0, "every request was answered and acknowledged");
    conn.close().within("closing").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_calls_from_four_tasks_each_get_their_own_reply() {
    many_calls(ReplyQueue::DirectReplyTo, 4, 250).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exclusive_reply_queue_works_the_same() {
    many_calls(ReplyQueue::Exclusive, 4, 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_server_down_calls_time_out_and_leave_nothing_behind() {
    let conn = connect().await;
    let queue = unique("down");
    let _cleanup = Cleanup::queues(vec![queue.clone()]);
    // The server answers once, then goes away; its queue stays.
    let server = echo_server(&conn, &queue, 4).await;
    let client = client(&conn, RpcClientOptions::default()).await;
    assert_eq!(&client.call(&queue, "up?").within("a call").await.unwrap().body[..], b"re:up?");
    server.shutdown().within("stopping the server").await.unwrap();

    let started = Instant::now();
    let short = Duration::from_millis(300);
    let mut calls = Vec::new();
    for i in 0..10 {
        let client = client.clone();
        let request = RpcRequest::new(queue.clone(), format!("anyone? {i}")).timeout(short);
        calls.push(tokio::spawn(async move { client.call_with(request).await }));
    }
    for call in calls {
        match call.within("a call with a timeout").await.unwrap() {
            Err(RpcError::Timeout(after)) => assert_eq!(after, short),
            other => panic!("expected a timeout, got {other:?}"),
        }
    }
    let took = started.elapsed();
    assert!(took >= short && took < Duration::from_secs(3), "timed out after {took:?}");
    assert_eq!(client.pending(), 0, "timed-out calls leave the table");
    // The requests wait for a server in the queue.
    assert_eq!(delete_queue(&conn, &queue).await, 10);
    conn.close().within("closing").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_reply_is_discarded_and_its_entry_is_gone() {
    let conn = connect().await;
    let queue = unique("slow");
    let _cleanup = Cleanup::queues(vec![queue.clone()]);
    // The first request is answered only once the test lets it: after its call timed out.
    let release = Arc::new(Notify::new());
    let gate = release.clone();
    let mut server = RpcServer::new(&conn);
    server
        .serve(&queue, ServeOptions::default(), move |request| {
            let gate = gate.clone();
            async move {
                if &request.body[..] == b"slowly" {
                    gate.notified().within("the test's release").await;
                }
                Ok(RpcResponse::new(request.body))
            }
        })
        .within("starting the server")
        .await
        .unwrap();
    let client = client(&conn, RpcClientOptions::default()).await;
    let request = RpcRequest::new(queue.clone(), "slowly").timeout(Duration::from_millis(100));
    match client.call_with(request).within("a call with a timeout").await {
        Err(RpcError::Timeout(after)) => assert_eq!(after, Duration::from_millis(100)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(client.pending(), 0);
    assert_eq!(client.discarded_replies(), 0, "no reply yet");
    // The reply comes now, finds no call, and is dropped.
    release.notify_one();
    wait_until(STEP, "the late reply dropped", || client.discarded_replies() > 0).await;
    assert_eq!(client.discarded_replies(), 1);
    // The client still works.
    let reply = client.call_with(RpcRequest::new(queue.clone(), "again").timeout(Duration::from_secs(5)));
    assert_eq!(&reply.within("a call").await.unwrap().body[..], b"again");

    server.shutdown().within("stopping the server").await.unwrap();
    assert_eq!(delete_queue(&conn, &queue).await, 0);
    conn.close().within("closing").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_no_server_queue_fails_as_unroutable_at_once() {
    let conn = connect().await;
    let client = client(&conn, RpcClientOptions::default()).await;
    let missing = unique("nobody");
    let started = Instant::now();
    let request = RpcRequest::new(missing.clone(), "hello?").timeout(Duration::from_secs(10));
    match client.call_with(request).within("an unroutable call").await {
        Err(RpcError::Unroutable { reply_code, routing_key, exchange, .. }) => {
            assert_eq!(reply_code, ReplyCode::NO_ROUTE);
            assert_eq!(routing_key, missing);
            assert_eq!(exchange, "");
        }
        other => panic!("expected unroutable, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "took {took:?}, not at once");
    assert_eq!(client.pending(), 0);
    conn.close().within("closing").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_errors_and_panics_come_back_as_typed_errors() {
    let conn = connect().await;
    let queue = unique("failing");
    let _cleanup = Cleanup::queues(vec![queue.clone()]);
    let mut server = RpcServer::new(&conn);
    let handled = Arc::new(AtomicU32::new(0));
    let seen = handled.clone();
    server
        .serve(&queue, ServeOptions::default(), move |request| {
            seen.fetch_add(1, Ordering::Relaxed);
            async move {
                match &request.body[..] {
                    b"divide by zero" => Err("division by zero".into()),
                    b"panic" => panic!("a handler bug"),
                    _ => Ok(RpcResponse::from("fine")),
                }
            }
        })
        .within("starting the server")
        .await
        .unwrap();
    let client = client(&conn, RpcClientOptions::default()).await;

    match client.call(&queue, "divide by zero").within("a failing call").await {
        Err(RpcError::Remote { message }) => assert_eq!(message, "division by zero"),
        other => panic!("expected a remote error, got {other:?}"),
    }
    match client.call(&queue, "panic").within("a panicking call").await {
        // The caller learns that it panicked, not the handler's own words.
        Err(RpcError::Remote { message }) => assert_eq!(message, "the handler panicked"),
        other => panic!("expected a remote error, got {other:?}"),
    }
    // The server survives both and goes on answering.
    assert_eq!(&client.call(&queue, "ok").within("a call").await.unwrap().body[..], b"fine");
    assert_eq!(handled.load(Ordering::Relaxed), 3);

    server.shutdown().within("stopping the server").await.unwrap();
    // Every request was acknowledged: nothing is left in the queue.
    assert_eq!(delete_queue(&conn, &queue).await, 0);
    conn.close().within("closing").await.unwrap();
}

/// Sets its flag when dropped: shows that a handler's future was dropped (aborted).
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_past_its_timeout_answers_with_an_error_and_is_stopped() {
    let conn = connect().await;
    let queue = unique("overrun");
    let _cleanup = Cleanup::queues(vec![queue.clone()]);
    let stopped = Arc::new(AtomicBool::new(false));
    let flag = stopped.clone();
    let mut server = RpcServer::new(&conn);
    let options = ServeOptions { handler_timeout: Duration::from_millis(200), ..Default::default() };
    server
        .serve(&queue, options, move |request| {
            let flag = flag.clone();
            async move {
                if &request.body[..] == b"stuck" {
                    let _dropped_when_stopped = DropFlag(flag);
                    // Never finishes on its own: the server's timeout has to end it.
                    std::future::pending::<()>().await;
                }
                Ok(RpcResponse::from("quick"))
            }
        })
        .within("starting the server")
        .await
        .unwrap();
    let client = client(&conn, RpcClientOptions::default()).await;
    match client.call(&queue, "stuck").within("an overrunning call").await {
        Err(RpcError::Remote { message }) => assert_eq!(message, "the handler did not finish within 200ms"),
        other => panic!("expected a remote error, got {other:?}"),
    }
    wait_until(STEP, "the overrunning handler stopped", || stopped.load(Ordering::SeqCst)).await;
    assert_eq!(&client.call(&queue, "fine").within("a call").await.unwrap().body[..], b"quick");
    server.shutdown().within("stopping the server").await.unwrap();
    assert_eq!(delete_queue(&conn, &queue).await, 0, "the overrun request was acknowledged");
    conn.close().within("closing").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_a_missing_exchange_fails_alone_and_the_client_reopens_its_channel() {
    let conn = connect().await;
    let queue = unique("survivor");
    let _cleanup = Cleanup::queues(vec![queue.clone()]);
    let server = echo_server(&conn, &queue, 8).await;
    let client = client(&conn, RpcClientOptions::default()).await;
    assert_eq!(&client.call(&queue, "one").within("a call").await.unwrap().body[..], b"re:one");

    // A 404 closes the client's channel: this call gets it.
    let request = RpcRequest::new("anything", "lost").exchange(unique("no-such-exchange"));
    match client.call_with(request).within("a call to a missing exchange").await {
        Err(RpcError::Closed(e)) => assert_eq!(e.reply_code(), Some(ReplyCode::NOT_FOUND), "{e}"),
        other => panic!("expected the channel's 404, got {other:?}"),
    }
    // The next calls go through a new channel.
    assert_eq!(&client.call(&queue, "two").within("a call").await.unwrap().body[..], b"re:two");
    assert_eq!(client.reopened(), 1);
    assert_eq!(client.pending(), 0);

    server.shutdown().within("stopping the server").await.unwrap();
    assert_eq!(delete_queue(&conn, &queue).await, 0);
    conn.close().within("closing").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_client_fails_calls_in_progress() {
    let conn = connect().await;
    let queue = unique("closing");
    let _cleanup = Cleanup::queues(vec![queue.clone()]);
    // The handler holds the request until the server is dropped.
    let started = Arc::new(Notify::new());
    let reached = started.clone();
    let mut server = RpcServer::new(&conn);
    server
        .serve(&queue, ServeOptions::default(), move |_| {
            let reached = reached.clone();
            async move {
                reached.notify_one();
                std::future::pending::<()>().await;
                Ok(RpcResponse::from("never"))
            }
        })
        .within("starting the server")
        .await
        .unwrap();
    let client = client(&conn, RpcClientOptions::default()).await;
    let call = tokio::spawn({
        let client = client.clone();
        let queue = queue.clone();
        async move { client.call(&queue, "wait").await }
    });
    started.notified().within("the request reaching the handler").await;
    assert_eq!(client.pending(), 1);
    client.close().within("closing the client").await.unwrap();
    match call.within("the call in progress").await.unwrap() {
        // Closed by this side, with no reply code from the broker.
        Err(RpcError::Closed(lepus::Error::ChannelClosed(reason))) => {
            assert_eq!(reason.initiator, Initiator::Client, "{reason:?}");
        }
        other => panic!("expected the client's close, got {other:?}"),
    }
    assert_eq!(client.pending(), 0);
    match client.call(&queue, "after").within("a call after closing").await {
        Err(RpcError::Closed(lepus::Error::ChannelClosed(reason))) => assert_eq!(reason.initiator, Initiator::Client),
        other => panic!("expected the client's close, got {other:?}"),
    }

    // Dropped, the server gives the request back to the queue, unanswered.
    drop(server);
    wait_until_async(STEP, "the request back in the queue", async || ready(&conn, &queue).await == 1).await;
    conn.close().within("closing").await.unwrap();
}
