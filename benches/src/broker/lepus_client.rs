//! The five workloads with lepus's public API.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use bytes::Bytes;
use lepus::{
    BasicProperties, Channel, Confirmation, Connection, ConsumeOptions, Consumer, PublishOptions, QueueDeclareOptions,
    QueueDeleteOptions, ShortStr,
};

use super::{
    BenchError, CONFIRM_WINDOW, Case, Checks, POLL_INTERVAL, POLL_LIMIT, PREFETCH, RPC_WARMUP, RunResult, RuntimeKind,
    Workload, body,
    measure::{Section, rtt_percentiles},
    queue_name,
};

const CLIENT: &str = "lepus";

/// Runs `case` against the broker at `url`.
pub async fn run(case: Case, url: &str, runtime: RuntimeKind) -> Result<RunResult, BenchError> {
    let note = format!(
        "lepus {}; {}; library defaults (frame_max 131072, heartbeat 60 s, publish_window 1000, automatic \
         recovery on); body passed as a shared Bytes",
        env!("CARGO_PKG_VERSION"),
        runtime.describe()
    );
    match case.workload {
        Workload::Publish => publish(case, url, note).await,
        Workload::Confirm => confirm(case, url, note).await,
        Workload::Consume => consume(case, url, note).await,
        Workload::Rpc => rpc(case, url, format!("{note}; rpc server as a second task")).await,
        Workload::Pubsub => pubsub(case, url, format!("{note}; publisher as a second task")).await,
    }
}

async fn connect(url: &str) -> Result<(Connection, Channel), BenchError> {
    let conn = Connection::connect(url).await?;
    let channel = conn.open_channel().await?;
    Ok((conn, channel))
}

/// `durable=false, exclusive=false, auto_delete=false`, no arguments.
async fn declare(channel: &Channel, queue: &str) -> Result<(), BenchError> {
    channel.queue_declare(queue, QueueDeclareOptions::default(), Default::default()).await?;
    Ok(())
}

async fn message_count(channel: &Channel, queue: &str) -> Result<u64, BenchError> {
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    Ok(u64::from(channel.queue_declare(queue, passive, Default::default()).await?.message_count))
}

/// Polls the queue's `message_count` every millisecond until it is `n` (or [`POLL_LIMIT`]
/// has passed); returns the last count.
async fn poll_count(channel: &Channel, queue: &str, n: u64) -> Result<u64, BenchError> {
    let give_up = Instant::now() + POLL_LIMIT;
    loop {
        let count = message_count(channel, queue).await?;
        if count == n || Instant::now() > give_up {
            return Ok(count);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// `n` non-confirmed publishes to the default exchange.
async fn publish_n(channel: &Channel, queue: &str, body: &Bytes, n: u64) -> Result<(), BenchError> {
    for _ in 0..n {
        let confirm = channel.basic_publish("", queue, body.clone(), PublishOptions::default()).await?;
        // Outside confirm mode it resolves to `NotRequested` at once: nothing to wait for.
        drop(confirm);
    }
    Ok(())
}

async fn teardown(conn: &Connection, channel: &Channel, queue: &str) -> Result<(), BenchError> {
    channel.queue_delete(queue, QueueDeleteOptions::default()).await?;
    conn.close().await?;
    Ok(())
}

async fn publish(case: Case, url: &str, note: String) -> Result<RunResult, BenchError> {
    let (conn, channel) = connect(url).await?;
    let queue = queue_name(CLIENT, case.workload)?;
    declare(&channel, &queue).await?;
    let body = Bytes::from(body(case.size));

    let section = Section::start();
    publish_n(&channel, &queue, &body, case.n).await?;
    let count = poll_count(&channel, &queue, case.n).await?;
    let m = section.stop();

    let mut checks = Checks::default();
    checks.check(count == case.n, || format!("message_count {count} != {}", case.n));
    teardown(&conn, &channel, &queue).await?;
    Ok(RunResult::measured(CLIENT, case, m, &checks, &note))
}

async fn confirm(case: Case, url: &str, note: String) -> Result<RunResult, BenchError> {
    let (conn, channel) = connect(url).await?;
    let queue = queue_name(CLIENT, case.workload)?;
    declare(&channel, &queue).await?;
    channel.confirm_select().await?;
    let body = Bytes::from(body(case.size));
    let (mut acks, mut nacks, mut other) = (0u64, 0u64, 0u64);
    let mut tally = |c: Confirmation| match c {
        Confirmation::Ack => acks += 1,
        Confirmation::Nack => nacks += 1,
        _ => other += 1,
    };

    let section = Section::start();
    let mut pending = VecDeque::with_capacity(CONFIRM_WINDOW);
    for _ in 0..case.n {
        if pending.len() == CONFIRM_WINDOW
            && let Some(oldest) = pending.pop_front()
        {
            tally(oldest.await?);
        }
        pending.push_back(channel.basic_publish("", &queue, body.clone(), PublishOptions::default()).await?);
    }
    while let Some(confirm) = pending.pop_front() {
        tally(confirm.await?);
    }
    let m = section.stop();

    let count = message_count(&channel, &queue).await?;
    let mut checks = Checks::default();
    checks.check(acks == case.n, || format!("acks {acks} != {}", case.n));
    checks.check(nacks == 0, || format!("{nacks} nacks"));
    checks.check(other == 0, || format!("{other} confirms neither ack nor nack"));
    checks.check(count == case.n, || format!("message_count {count} != {}", case.n));
    teardown(&conn, &channel, &queue).await?;
    Ok(RunResult::measured(CLIENT, case, m, &checks, &note))
}

/// Takes `n` deliveries, acking each at once; checks tags 1..=n in order and body sizes.
async fn consume_n(consumer: &mut Consumer, n: u64, size: usize, checks: &mut Checks) -> Result<(), BenchError> {
    let (mut bad_tags, mut bad_sizes, mut received) = (0u64, 0u64, 0u64);
    while received < n {
        let delivery = match consumer.next().await {
            Some(delivery) => delivery?,
            None => break,
        };
        received += 1;
        bad_tags += u64::from(delivery.delivery_tag != received);
        bad_sizes += u64::from(delivery.body.len() != size);
        delivery.ack().await?;
    }
    checks.check(received == n, || format!("{received} deliveries != {n}"));
    checks.check(bad_tags == 0, || format!("{bad_tags} delivery tags out of 1..N order"));
    checks.check(bad_sizes == 0, || format!("{bad_sizes} bodies not {size} bytes"));
    Ok(())
}

async fn consume(case: Case, url: &str, note: String) -> Result<RunResult, BenchError> {
    let (conn, channel) = connect(url).await?;
    let queue = queue_name(CLIENT, case.workload)?;
    declare(&channel, &queue).await?;
    let body = Bytes::from(body(case.size));
    publish_n(&channel, &queue, &body, case.n).await?;
    let filled = poll_count(&channel, &queue, case.n).await?;
    if filled != case.n {
        return Err(format!("filling the queue: message_count {filled} != {}", case.n).into());
    }
    channel.basic_qos(PREFETCH, false).await?;
    let mut checks = Checks::default();

    let section = Section::start();
    let mut consumer = channel.basic_consume(&queue, ConsumeOptions::default()).await?;
    consume_n(&mut consumer, case.n, case.size, &mut checks).await?;
    let left = message_count(&channel, &queue).await?;
    let m = section.stop();

    checks.check(left == 0, || format!("message_count {left} != 0 after the run"));
    consumer.cancel().await?;
    drop(consumer);
    teardown(&conn, &channel, &queue).await?;
    Ok(RunResult::measured(CLIENT, case, m, &checks, &note))
}

/// The rpc server: answers every request to its `reply_to` with the request's
/// `correlation_id` and body. Ends when its consumer ends (the queue is deleted).
async fn serve(channel: Channel, mut requests: Consumer) -> Result<u64, BenchError> {
    let mut served = 0;
    while let Some(Ok(request)) = requests.next().await {
        let Some(reply_to) = request.properties.reply_to.as_ref().and_then(ShortStr::as_str) else { continue };
        let properties =
            BasicProperties { correlation_id: request.properties.correlation_id.clone(), ..Default::default() };
        let confirm = channel.basic_publish(
            "",
            reply_to,
            request.body.clone(),
            PublishOptions { properties, ..Default::default() },
        );
        drop(confirm.await?);
        served += 1;
    }
    Ok(served)
}

/// One call: publishes request `index` and waits for its reply. True if the reply's
/// correlation id is `index`.
async fn call(
    channel: &Channel,
    queue: &str,
    reply_to: &ShortStr,
    replies: &mut Consumer,
    body: &Bytes,
    index: u64,
) -> Result<bool, BenchError> {
    let properties = BasicProperties {
        reply_to: Some(reply_to.clone()),
        correlation_id: Some(ShortStr::try_from(index.to_string())?),
        ..Default::default()
    };
    drop(channel.basic_publish("", queue, body.clone(), PublishOptions { properties, ..Default::default() }).await?);
    let reply = replies.next().await.ok_or("the reply consumer ended")??;
    let id = reply.properties.correlation_id.as_ref().and_then(ShortStr::as_str);
    Ok(id.and_then(|id| id.parse::<u64>().ok()) == Some(index))
}

async fn rpc(case: Case, url: &str, note: String) -> Result<RunResult, BenchError> {
    let no_ack = ConsumeOptions { no_ack: true, ..Default::default() };
    let (server_conn, server_channel) = connect(url).await?;
    let queue = queue_name(CLIENT, case.workload)?;
    declare(&server_channel, &queue).await?;
    let requests = server_channel.basic_consume(&queue, no_ack.clone()).await?;
    let server = tokio::spawn(serve(server_channel.clone(), requests));

    let (conn, channel) = connect(url).await?;
    let exclusive = QueueDeclareOptions { exclusive: true, ..Default::default() };
    let reply_queue = channel.queue_declare("", exclusive, Default::default()).await?.name;
    let reply_to = ShortStr::try_from(reply_queue.as_str())?;
    let mut replies = channel.basic_consume(&reply_queue, no_ack).await?;
    let body = Bytes::from(body(case.size));
    let mut mismatched = 0u64;
    for i in 0..RPC_WARMUP {
        mismatched += u64::from(!call(&channel, &queue, &reply_to, &mut replies, &body, i).await?);
    }

    let mut rtts = Vec::with_capacity(usize::try_from(case.n).unwrap_or(0));
    let section = Section::start();
    for i in RPC_WARMUP..RPC_WARMUP + case.n {
        let t = Instant::now();
        mismatched += u64::from(!call(&channel, &queue, &reply_to, &mut replies, &body, i).await?);
        rtts.push(t.elapsed());
    }
    let m = section.stop();

    let mut checks = Checks::default();
    checks.check(mismatched == 0, || format!("{mismatched} replies with the wrong correlation id"));
    checks.check(rtts.len() as u64 == case.n, || format!("{} RTTs recorded != {}", rtts.len(), case.n));
    drop(replies);
    conn.close().await?;
    // Deleting the queue cancels the server's consumer, which ends the server task.
    server_channel.queue_delete(&queue, QueueDeleteOptions::default()).await?;
    let served = tokio::time::timeout(Duration::from_secs(10), server).await???;
    checks.check(served == RPC_WARMUP + case.n, || format!("server answered {served} requests"));
    server_conn.close().await?;
    let (p50, p99) = rtt_percentiles(&rtts);
    let mut result = RunResult::measured(CLIENT, case, m, &checks, &note);
    (result.p50_us, result.p99_us) = (p50, p99);
    Ok(result)
}

async fn pubsub(case: Case, url: &str, note: String) -> Result<RunResult, BenchError> {
    let (conn, channel) = connect(url).await?;
    let queue = queue_name(CLIENT, case.workload)?;
    declare(&channel, &queue).await?;
    channel.basic_qos(PREFETCH, false).await?;
    let mut consumer = channel.basic_consume(&queue, ConsumeOptions::default()).await?;
    let (pub_conn, pub_channel) = connect(url).await?;
    let body = Bytes::from(body(case.size));
    let mut checks = Checks::default();

    let section = Section::start();
    let publisher = {
        let queue = queue.clone();
        tokio::spawn(async move { publish_n(&pub_channel, &queue, &body, case.n).await })
    };
    consume_n(&mut consumer, case.n, case.size, &mut checks).await?;
    let left = message_count(&channel, &queue).await?;
    let m = section.stop();

    publisher.await??;
    checks.check(left == 0, || format!("message_count {left} != 0 after the run"));
    pub_conn.close().await?;
    consumer.cancel().await?;
    drop(consumer);
    teardown(&conn, &channel, &queue).await?;
    Ok(RunResult::measured(CLIENT, case, m, &checks, &note))
}
