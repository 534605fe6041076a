//! The five workloads with lapin's public API (lapin on the bench's tokio runtime, plus the
//! I/O thread lapin starts for every connection).

use std::{
    collections::VecDeque,
    pin::Pin,
    time::{Duration, Instant},
};

use futures_core::Stream;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    message::Delivery,
    options::{
        BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    },
    types::{FieldTable, ShortString},
};

use super::{
    BenchError, CONFIRM_WINDOW, Case, Checks, POLL_INTERVAL, POLL_LIMIT, PREFETCH, RPC_WARMUP, RunResult, RuntimeKind,
    Workload, body,
    measure::{Section, rtt_percentiles},
    queue_name,
};

const CLIENT: &str = "lapin";
/// `connection.close` reply code for a normal close.
const REPLY_SUCCESS: u16 = 200;

/// Runs `case` against the broker at `url`.
pub async fn run(case: Case, url: &str, runtime: RuntimeKind) -> Result<RunResult, BenchError> {
    let note = format!(
        "lapin 4.12 (features: tokio, no TLS); {} plus lapin's I/O thread; library defaults \
         (ConnectionProperties::default())",
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
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    Ok((conn, channel))
}

async fn close(conn: &Connection) -> Result<(), BenchError> {
    conn.close(REPLY_SUCCESS, "bench done".into()).await?;
    Ok(())
}

/// `durable=false, exclusive=false, auto_delete=false`, no arguments.
async fn declare(channel: &Channel, queue: &str) -> Result<(), BenchError> {
    channel.queue_declare(queue.into(), QueueDeclareOptions::default(), FieldTable::default()).await?;
    Ok(())
}

async fn message_count(channel: &Channel, queue: &ShortString) -> Result<u64, BenchError> {
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    Ok(u64::from(channel.queue_declare(queue.clone(), passive, FieldTable::default()).await?.message_count()))
}

/// Polls the queue's `message_count` every millisecond until it is `n` (or [`POLL_LIMIT`]
/// has passed); returns the last count.
async fn poll_count(channel: &Channel, queue: &ShortString, n: u64) -> Result<u64, BenchError> {
    let give_up = Instant::now() + POLL_LIMIT;
    loop {
        let count = message_count(channel, queue).await?;
        if count == n || Instant::now() > give_up {
            return Ok(count);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// `n` non-confirmed publishes to the default exchange, each awaited.
async fn publish_n(channel: &Channel, queue: &ShortString, body: &[u8], n: u64) -> Result<(), BenchError> {
    for _ in 0..n {
        let confirm = channel
            .basic_publish(
                ShortString::default(),
                queue.clone(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default(),
            )
            .await?;
        // Not in confirm mode: it would resolve to `NotRequested`.
        drop(confirm);
    }
    Ok(())
}

async fn teardown(conn: &Connection, channel: &Channel, queue: &ShortString) -> Result<(), BenchError> {
    channel.queue_delete(queue.clone(), QueueDeleteOptions::default()).await?;
    close(conn).await
}

async fn next(consumer: &mut Consumer) -> Option<lapin::Result<Delivery>> {
    std::future::poll_fn(|cx| Pin::new(&mut *consumer).poll_next(cx)).await
}

async fn publish(case: Case, url: &str, note: String) -> Result<RunResult, BenchError> {
    let (conn, channel) = connect(url).await?;
    let queue = queue_name(CLIENT, case.workload)?;
    declare(&channel, &queue).await?;
    let queue = ShortString::from(queue);
    let body = body(case.size);

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
    let queue = ShortString::from(queue);
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let body = body(case.size);
    let (mut acks, mut nacks, mut other) = (0u64, 0u64, 0u64);
    let mut tally = |c: Confirmation| match c {
        Confirmation::Ack(_) => acks += 1,
        Confirmation::Nack(_) => nacks += 1,
        Confirmation::NotRequested => other += 1,
    };

    let section = Section::start();
    let mut pending = VecDeque::with_capacity(CONFIRM_WINDOW);
    for _ in 0..case.n {
        if pending.len() == CONFIRM_WINDOW
            && let Some(oldest) = pending.pop_front()
        {
            tally(oldest.await?);
        }
        let confirm = channel
            .basic_publish(
                ShortString::default(),
                queue.clone(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await?;
        pending.push_back(confirm);
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
        let delivery = match next(consumer).await {
            Some(delivery) => delivery?,
            None => break,
        };
        received += 1;
        bad_tags += u64::from(delivery.delivery_tag != received);
        bad_sizes += u64::from(delivery.data.len() != size);
        delivery.ack(lapin::options::BasicAckOptions::default()).await?;
    }
    checks.check(received == n, || format!("{received} deliveries != {n}"));
    checks.check(bad_tags == 0, || format!("{bad_tags} delivery tags out of 1..N order"));
    checks.check(bad_sizes == 0, || format!("{bad_sizes} bodies not {size} bytes"));
    Ok(())
}

async fn start_consumer(channel: &Channel, queue: &ShortString, no_ack: bool) -> Result<Consumer, BenchError> {
    let options = BasicConsumeOptions { no_ack, ..Default::default() };
    Ok(channel.basic_consume(queue.clone(), ShortString::default(), options, FieldTable::default()).await?)
}

async fn consume(case: Case, url: &str, note: String) -> Result<RunResult, BenchError> {
    let (conn, channel) = connect(url).await?;
    let queue = queue_name(CLIENT, case.workload)?;
    declare(&channel, &queue).await?;
    let queue = ShortString::from(queue);
    let body = body(case.size);
    publish_n(&channel, &queue, &body, case.n).await?;
    let filled = poll_count(&channel, &queue, case.n).await?;
    if filled != case.n {
        return Err(format!("filling the queue: message_count {filled} != {}", case.n).into());
    }
    channel.basic_qos(PREFETCH, BasicQosOptions { global: false }).await?;
    let mut checks = Checks::default();

    let section = Section::start();
    let mut consumer = start_consumer(&channel, &queue, false).await?;
    consume_n(&mut consumer, case.n, case.size, &mut checks).await?;
    let left = message_count(&channel, &queue).await?;
    let m = section.stop();

    checks.check(left == 0, || format!("message_count {left} != 0 after the run"));
    drop(consumer);
    teardown(&conn, &channel, &queue).await?;
    Ok(RunResult::measured(CLIENT, case, m, &checks, &note))
}

/// The rpc server: answers every request to its `reply_to` with the request's
/// `correlation_id` and body. Ends when its consumer ends (the queue is deleted).
async fn serve(channel: Channel, mut requests: Consumer) -> Result<u64, BenchError> {
    let mut served = 0;
    while let Some(Ok(request)) = next(&mut requests).await {
        let Some(reply_to) = request.properties.reply_to().clone() else { continue };
        let mut properties = BasicProperties::default();
        if let Some(id) = request.properties.correlation_id().clone() {
            properties = properties.with_correlation_id(id);
        }
        let options = BasicPublishOptions::default();
        let confirm =
            channel.basic_publish(ShortString::default(), reply_to, options, &request.data, properties).await?;
        drop(confirm);
        served += 1;
    }
    Ok(served)
}

/// One call: publishes request `index` and waits for its reply. True if the reply's
/// correlation id is `index`.
async fn call(
    channel: &Channel,
    queue: &ShortString,
    reply_to: &ShortString,
    replies: &mut Consumer,
    body: &[u8],
    index: u64,
) -> Result<bool, BenchError> {
    let properties =
        BasicProperties::default().with_reply_to(reply_to.clone()).with_correlation_id(index.to_string().into());
    let options = BasicPublishOptions::default();
    drop(channel.basic_publish(ShortString::default(), queue.clone(), options, body, properties).await?);
    let reply = next(replies).await.ok_or("the reply consumer ended")??;
    let id = reply.properties.correlation_id().as_ref().map(ShortString::as_str);
    Ok(id.and_then(|id| id.parse::<u64>().ok()) == Some(index))
}

async fn rpc(case: Case, url: &str, note: String) -> Result<RunResult, BenchError> {
    let (server_conn, server_channel) = connect(url).await?;
    let queue = queue_name(CLIENT, case.workload)?;
    declare(&server_channel, &queue).await?;
    let queue = ShortString::from(queue);
    let requests = start_consumer(&server_channel, &queue, true).await?;
    let server = tokio::spawn(serve(server_channel.clone(), requests));

    let (conn, channel) = connect(url).await?;
    let exclusive = QueueDeclareOptions { exclusive: true, ..Default::default() };
    let reply_to =
        channel.queue_declare(ShortString::default(), exclusive, FieldTable::default()).await?.name().clone();
    let mut replies = start_consumer(&channel, &reply_to, true).await?;
    let body = body(case.size);
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
    close(&conn).await?;
    // Deleting the queue cancels the server's consumer, which ends the server task.
    server_channel.queue_delete(queue.clone(), QueueDeleteOptions::default()).await?;
    let served = tokio::time::timeout(Duration::from_secs(10), server).await???;
    checks.check(served == RPC_WARMUP + case.n, || format!("server answered {served} requests"));
    close(&server_conn).await?;
    let mut result = RunResult::measured(CLIENT, case, m, &checks, &note);
    (result.p50_us, result.p99_us) = rtt_percentiles(&rtts);
    Ok(result)
}

async fn pubsub(case: Case, url: &str, note: String) -> Result<RunResult, BenchError> {
    let (conn, channel) = connect(url).await?;
    let queue = queue_name(CLIENT, case.workload)?;
    declare(&channel, &queue).await?;
    let queue = ShortString::from(queue);
    channel.basic_qos(PREFETCH, BasicQosOptions { global: false }).await?;
    let mut consumer = start_consumer(&channel, &queue, false).await?;
    let (pub_conn, pub_channel) = connect(url).await?;
    let body = body(case.size);
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
    close(&pub_conn).await?;
    drop(consumer);
    teardown(&conn, &channel, &queue).await?;
    Ok(RunResult::measured(CLIENT, case, m, &checks, &note))
}
