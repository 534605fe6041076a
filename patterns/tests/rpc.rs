//! RPC against the real RabbitMQ: many concurrent calls matched to their replies, timeouts
//! (server down, late replies), unroutable requests, handler errors. Each test uses queues
//! of its own and deletes them.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use lepus::{Connection, QueueDeleteOptions};

mod common;
use common::{connect, unique};
use lepus_patterns::rpc::{
    ReplyQueue, RpcClient, RpcClientOptions, RpcError, RpcRequest, RpcResponse, RpcServer, ServeOptions,
};

/// Upper bound for a whole test: a hang fails instead of blocking CI.
const TEST_LIMIT: Duration = Duration::from_secs(60);

async fn delete_queue(conn: &Connection, queue: &str) {
    let ch = conn.open_channel().await.unwrap();
    ch.queue_delete(queue, QueueDeleteOptions::default()).await.unwrap();
    ch.close().await.unwrap();
}

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
        .await
        .unwrap();
    server
}

async fn many_calls(reply_queue: ReplyQueue, tasks: u32, per_task: u32) {
    let conn = connect().await;
    let queue = unique("echo");
    let server = echo_server(&conn, &queue, 64).await;
    let options = RpcClientOptions { reply_queue, timeout: Duration::from_secs(20), ..Default::default() };
    let client = RpcClient::new(&conn, options).await.unwrap();
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
                    let reply = client.call(&queue, body.clone()).await.unwrap();
                    assert_eq!(reply.body, format!("re:{body}").as_bytes(), "a reply to another request");
                    assert!(reply.properties.correlation_id.is_some());
                });
            }
            let mut answered = 0;
            while let Some(done) = calls.join_next().await {
                done.unwrap();
                answered += 1;
            }
            answered
        });
    }
    let mut answered = 0;
    while let Some(done) = workers.join_next().await {
        answered += done.unwrap();
    }
    assert_eq!(answered, tasks * per_task);
    assert_eq!(client.pending(), 0, "no entry left behind");
    assert_eq!(client.discarded_replies(), 0, "every reply found its call");

    server.shutdown().await.unwrap();
    delete_queue(&conn, &queue).await;
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_calls_from_four_tasks_each_get_their_own_reply() {
    tokio::time::timeout(TEST_LIMIT, many_calls(ReplyQueue::DirectReplyTo, 4, 250)).await.expect("within the limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exclusive_reply_queue_works_the_same() {
    tokio::time::timeout(TEST_LIMIT, many_calls(ReplyQueue::Exclusive, 4, 50)).await.expect("within the limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_server_down_calls_time_out_and_leave_nothing_behind() {
    tokio::time::timeout(TEST_LIMIT, async {
        let conn = connect().await;
        let queue = unique("down");
        // The server answers once, then goes away; its queue stays.
        let server = echo_server(&conn, &queue, 4).await;
        let client = RpcClient::new(&conn, RpcClientOptions::default()).await.unwrap();
        assert_eq!(&client.call(&queue, "up?").await.unwrap().body[..], b"re:up?");
        server.shutdown().await.unwrap();

        let started = Instant::now();
        let short = Duration::from_millis(300);
        let mut calls = Vec::new();
        for i in 0..10 {
            let client = client.clone();
            let request = RpcRequest::new(queue.clone(), format!("anyone? {i}")).timeout(short);
            calls.push(tokio::spawn(async move { client.call_with(request).await }));
        }
        for call in calls {
            match call.await.unwrap() {
                Err(RpcError::Timeout(after)) => assert_eq!(after, short),
                other => panic!("expected a timeout, got {other:?}"),
            }
        }
        let took = started.elapsed();
        assert!(took >= short && took < Duration::from_secs(3), "timed out after {took:?}");
        assert_eq!(client.pending(), 0, "timed-out calls leave the table");

        delete_queue(&conn, &queue).await;
        conn.close().await.unwrap();
    })
    .await
    .expect("within the limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_reply_is_discarded_and_its_entry_is_gone() {
    tokio::time::timeout(TEST_LIMIT, async {
        let conn = connect().await;
        let queue = unique("slow");
        let mut server = RpcServer::new(&conn);
        server
            .serve(&queue, ServeOptions::default(), |request| async move {
                tokio::time::sleep(Duration::from_millis(400)).await;
                Ok(RpcResponse::new(request.body))
            })
            .await
            .unwrap();
        let client = RpcClient::new(&conn, RpcClientOptions::default()).await.unwrap();
        let request = RpcRequest::new(queue.clone(), "slowly").timeout(Duration::from_millis(100));
        assert!(matches!(client.call_with(request).await, Err(RpcError::Timeout(_))));
        assert_eq!(client.pending(), 0);
        // The reply still comes, finds no call, and is dropped.
        let deadline = Instant::now() + Duration::from_secs(5);
        while client.discarded_replies() == 0 {
            assert!(Instant::now() < deadline, "the late reply never came");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(client.discarded_replies(), 1);
        // The client still works.
        let reply = client.call_with(RpcRequest::new(queue.clone(), "again").timeout(Duration::from_secs(5))).await;
        assert_eq!(&reply.unwrap().body[..], b"again");

        server.shutdown().await.unwrap();
        delete_queue(&conn, &queue).await;
        conn.close().await.unwrap();
    })
    .await
    .expect("within the limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_no_server_queue_fails_as_unroutable_at_once() {
    tokio::time::timeout(TEST_LIMIT, async {
        let conn = connect().await;
        let client = RpcClient::new(&conn, RpcClientOptions::default()).await.unwrap();
        let missing = unique("nobody");
        let started = Instant::now();
        let request = RpcRequest::new(missing.clone(), "hello?").timeout(Duration::from_secs(10));
        match client.call_with(request).await {
            Err(RpcError::Unroutable { reply_code, routing_key, exchange, .. }) => {
                assert_eq!(reply_code, lepus::ReplyCode::NO_ROUTE);
                assert_eq!(routing_key, missing);
                assert_eq!(exchange, "");
            }
            other => panic!("expected unroutable, got {other:?}"),
        }
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "took {took:?}, not at once");
        assert_eq!(client.pending(), 0);
        conn.close().await.unwrap();
    })
    .await
    .expect("within the limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_errors_and_panics_come_back_as_typed_errors() {
    tokio::time::timeout(TEST_LIMIT, async {
        let conn = connect().await;
        let queue = unique("failing");
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
            .await
            .unwrap();
        let client = RpcClient::new(&conn, RpcClientOptions::default()).await.unwrap();

        match client.call(&queue, "divide by zero").await {
            Err(RpcError::Remote { message }) => assert_eq!(message, "division by zero"),
            other => panic!("expected a remote error, got {other:?}"),
        }
        match client.call(&queue, "panic").await {
            Err(RpcError::Remote { message }) => assert!(message.contains("panicked"), "{message}"),
            other => panic!("expected a remote error, got {other:?}"),
        }
        // The server survives both and goes on answering.
        assert_eq!(&client.call(&queue, "ok").await.unwrap().body[..], b"fine");
        assert_eq!(handled.load(Ordering::Relaxed), 3);

        server.shutdown().await.unwrap();
        // Every request was acknowledged: nothing is left in the queue.
        let ch = conn.open_channel().await.unwrap();
        assert_eq!(ch.queue_delete(&queue, QueueDeleteOptions::default()).await.unwrap(), 0);
        conn.close().await.unwrap();
    })
    .await
    .expect("within the limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_a_missing_exchange_fails_alone_and_the_client_reopens_its_channel() {
    tokio::time::timeout(TEST_LIMIT, async {
        let conn = connect().await;
        let queue = unique("survivor");
        let server = echo_server(&conn, &queue, 8).await;
        let client = RpcClient::new(&conn, RpcClientOptions::default()).await.unwrap();
        assert_eq!(&client.call(&queue, "one").await.unwrap().body[..], b"re:one");

        // A 404 closes the client's channel: this call gets it.
        let request = RpcRequest::new("anything", "lost").exchange(unique("no-such-exchange"));
        match client.call_with(request).await {
            Err(RpcError::Closed(e)) => assert_eq!(e.reply_code(), Some(lepus::ReplyCode::NOT_FOUND), "{e}"),
            other => panic!("expected the channel's 404, got {other:?}"),
        }
        // The next calls go through a new channel.
        assert_eq!(&client.call(&queue, "two").await.unwrap().body[..], b"re:two");
        assert_eq!(client.reopened(), 1);
        assert_eq!(client.pending(), 0);

        server.shutdown().await.unwrap();
        delete_queue(&conn, &queue).await;
        conn.close().await.unwrap();
    })
    .await
    .expect("within the limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_client_fails_calls_in_progress() {
    tokio::time::timeout(TEST_LIMIT, async {
        let conn = connect().await;
        let queue = unique("closing");
        let mut server = RpcServer::new(&conn);
        server
            .serve(&queue, ServeOptions::default(), |_| async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                Ok(RpcResponse::from("too late"))
            })
            .await
            .unwrap();
        let client = RpcClient::new(&conn, RpcClientOptions::default()).await.unwrap();
        let call = tokio::spawn({
            let client = client.clone();
            let queue = queue.clone();
            async move { client.call(&queue, "wait").await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(client.pending(), 1);
        client.close().await.unwrap();
        let result = call.await.unwrap();
        assert!(matches!(result, Err(RpcError::Closed(_))), "{result:?}");
        assert_eq!(client.pending(), 0);
        assert!(matches!(client.call(&queue, "after").await, Err(RpcError::Closed(_))));

        drop(server);
        delete_queue(&conn, &queue).await;
        conn.close().await.unwrap();
    })
    .await
    .expect("within the limit");
}
