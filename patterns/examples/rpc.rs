//! RPC over RabbitMQ: a calculator server and a client calling it — answers, a handler
//! error, a request nobody can receive, a timeout, and a hundred calls at once.
//!
//! `cargo run -p lepus-patterns --example rpc`
//! (broker: `AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`)

use std::time::{Duration, Instant};

use lepus::{Connection, QueueDeleteOptions};
use lepus_patterns::rpc::{
    RpcClient, RpcClientOptions, RpcError, RpcHandlerError, RpcRequest, RpcResponse, RpcServer, ServeOptions,
};

/// `"<op> <a> <b>"` → the result, or an error the client sees as `RpcError::Remote`.
async fn calculate(request: &str) -> Result<String, RpcHandlerError> {
    let parts: Vec<&str> = request.split_whitespace().collect();
    let [op, a, b] = parts[..] else { return Err(format!("expected '<op> <a> <b>', got {request:?}").into()) };
    let number = |s: &str| s.parse::<i64>().map_err(|_| RpcHandlerError::new(format!("not a number: {s}")));
    let (a, b) = (number(a)?, number(b)?);
    let result = match op {
        "add" => a.checked_add(b),
        "mul" => a.checked_mul(b),
        "div" if b == 0 => return Err("division by zero".into()),
        "div" => a.checked_div(b),
        "sleep" => {
            tokio::time::sleep(Duration::from_millis(u64::try_from(a).unwrap_or(0))).await;
            Some(a)
        }
        _ => return Err(format!("unknown operation {op}").into()),
    };
    result.map(|r| r.to_string()).ok_or_else(|| "overflow".into())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let conn = Connection::connect(&url).await?;
    let queue = format!("lepus.example.rpc.calculator.{}", std::process::id());

    let mut server = RpcServer::new(&conn);
    server
        .serve(&queue, ServeOptions { prefetch: 16, ..Default::default() }, |request| async move {
            let text = String::from_utf8_lossy(&request.body).into_owned();
            calculate(&text).await.map(RpcResponse::from)
        })
        .await?;
    println!("server: answering on {queue}");

    let client = RpcClient::new(&conn, RpcClientOptions::default()).await?;
    println!("client: replies come through {}", client.reply_to());

    for request in ["add 2 3", "mul 6 7", "div 1 0", "pow 2 8"] {
        match client.call(&queue, request).await {
            Ok(reply) => println!("{request:>10} = {}", String::from_utf8_lossy(&reply.body)),
            Err(RpcError::Remote { message }) => println!("{request:>10} failed on the server: {message}"),
            Err(e) => return Err(e.into()),
        }
    }

    let started = Instant::now();
    match client.call_with(RpcRequest::new("lepus.example.rpc.nobody-home", "add 1 1")).await {
        Err(e @ RpcError::Unroutable { .. }) => println!("no server queue: {e} (after {:?})", started.elapsed()),
        other => println!("unexpected: {other:?}"),
    }

    let request = RpcRequest::new(queue.clone(), "sleep 1000 0").timeout(Duration::from_millis(200));
    match client.call_with(request).await {
        Err(RpcError::Timeout(after)) => {
            println!("sleep 1000: {} (calls waiting now: {})", RpcError::Timeout(after), client.pending());
        }
        other => println!("unexpected: {other:?}"),
    }

    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..100i64 {
        let (client, queue) = (client.clone(), queue.clone());
        calls.spawn(async move {
            let reply = client.call(&queue, format!("mul {i} {i}")).await?;
            let squared: i64 = String::from_utf8_lossy(&reply.body).parse().unwrap_or(-1);
            Ok::<_, RpcError>(squared == i * i)
        });
    }
    let mut right = 0;
    while let Some(done) = calls.join_next().await {
        if done?? {
            right += 1;
        }
    }
    println!("100 concurrent calls: {right} right answers in {:?}", started.elapsed());

    // The late reply of "sleep 1000" arrives while we wait here, and is dropped.
    tokio::time::sleep(Duration::from_millis(900)).await;
    println!("late replies dropped: {}", client.discarded_replies());

    server.shutdown().await?;
    let channel = conn.open_channel().await?;
    channel.queue_delete(&queue, QueueDeleteOptions::default()).await?;
    conn.close().await?;
    println!("done");
    Ok(())
}
