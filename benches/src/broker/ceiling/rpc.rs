//! The rpc ceiling: a server task and a client on two bare connections; each request and
//! reply is encoded when it is sent (its correlation id changes), in one write.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use lepus::ConnectionOptions;
use lepus_codec::{BasicProperties, Method, ShortStr};
use tokio::{io::AsyncWriteExt, sync::oneshot};

use super::{
    CLIENT,
    raw::{Assembler, CH, Message, RawConn, protocol_error},
};
use crate::broker::{
    BenchError, Case, Checks, RPC_WARMUP, RunResult, body,
    measure::{Section, rtt_percentiles},
    queue_name,
};

impl RawConn {
    /// The next whole message delivered on this connection.
    async fn next_message(&mut self, assembler: &mut Assembler) -> Result<Message, BenchError> {
        loop {
            while let Some(frame) = self.decoded()? {
                if let Some(message) = assembler.take(frame)? {
                    return Ok(message);
                }
            }
            self.fill().await?;
        }
    }

    /// Consumes `queue` with `no_ack=true` and waits for the consume-ok.
    async fn consume_no_ack(&mut self, queue: &str) -> Result<(), BenchError> {
        self.start_consume(queue, true).await?;
        match self.recv_method(CH).await? {
            Method::BasicConsumeOk(_) => Ok(()),
            other => Err(protocol_error(format!("expected basic.consume-ok, got {}", other.name())).into()),
        }
    }
}

/// Answers every request until `stop` fires; the replies to one read go out in one write.
/// Returns the connection and how many requests it answered.
async fn serve(mut conn: RawConn, mut stop: oneshot::Receiver<()>) -> Result<(RawConn, u64), BenchError> {
    let mut assembler = Assembler::default();
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut served = 0;
    loop {
        while let Some(frame) = conn.decoded()? {
            let Some(request) = assembler.take(frame)? else { continue };
            let Some(reply_to) = request.properties.reply_to else { continue };
            let properties =
                BasicProperties { correlation_id: request.properties.correlation_id, ..Default::default() };
            conn.encode_publish(&mut out, &reply_to, &properties, &request.body)?;
            served += 1;
        }
        if !out.is_empty() {
            conn.stream.write_all(&out).await?;
            out.clear();
        }
        tokio::select! {
            result = conn.fill() => result?,
            _ = &mut stop => return Ok((conn, served)),
        }
    }
}

/// One call: publishes request `index` and waits for its reply. True if the reply's
/// correlation id is `index`.
async fn call(
    conn: &mut RawConn,
    assembler: &mut Assembler,
    queue: &ShortStr,
    reply_to: &ShortStr,
    body: &Bytes,
    index: u64,
) -> Result<bool, BenchError> {
    let properties = BasicProperties {
        reply_to: Some(reply_to.clone()),
        correlation_id: Some(ShortStr::try_from(index.to_string())?),
        ..Default::default()
    };
    let mut out = BytesMut::with_capacity(256);
    conn.encode_publish(&mut out, queue, &properties, body)?;
    conn.stream.write_all(&out).await?;
    let reply = conn.next_message(assembler).await?;
    let id = reply.properties.correlation_id.as_ref().and_then(ShortStr::as_str);
    Ok(id.and_then(|id| id.parse::<u64>().ok()) == Some(index))
}

pub(super) async fn rpc(options: &ConnectionOptions, case: Case, note: &str) -> Result<RunResult, BenchError> {
    let mut server_conn = RawConn::open(options).await?;
    let queue = queue_name(CLIENT, case.workload)?;
    server_conn.declare(&queue, false, false).await?;
    server_conn.consume_no_ack(&queue).await?;
    let (stop, stopped) = oneshot::channel();
    let server = tokio::spawn(serve(server_conn, stopped));

    let mut conn = RawConn::open(options).await?;
    let (reply_to, _) = conn.declare("", false, true).await?;
    conn.consume_no_ack(reply_to.as_str().ok_or("reply queue name is not UTF-8")?).await?;
    let queue_name = ShortStr::try_from(queue.as_str())?;
    let body = Bytes::from(body(case.size));
    let mut assembler = Assembler::default();
    let mut mismatched = 0u64;
    for i in 0..RPC_WARMUP {
        mismatched += u64::from(!call(&mut conn, &mut assembler, &queue_name, &reply_to, &body, i).await?);
    }

    let mut rtts = Vec::with_capacity(usize::try_from(case.n).unwrap_or(0));
    let section = Section::start();
    for i in RPC_WARMUP..RPC_WARMUP + case.n {
        let t = Instant::now();
        mismatched += u64::from(!call(&mut conn, &mut assembler, &queue_name, &reply_to, &body, i).await?);
        rtts.push(t.elapsed());
    }
    let m = section.stop();

    let mut checks = Checks::default();
    checks.check(mismatched == 0, || format!("{mismatched} replies with the wrong correlation id"));
    checks.check(rtts.len() as u64 == case.n, || format!("{} RTTs recorded != {}", rtts.len(), case.n));
    conn.close().await?;
    let _ = stop.send(());
    let (mut server_conn, served) = tokio::time::timeout(Duration::from_secs(10), server).await???;
    checks.check(served == RPC_WARMUP + case.n, || format!("server answered {served} requests"));
    server_conn.delete(&queue).await?;
    server_conn.close().await?;
    let mut result = RunResult::measured(CLIENT, case, m, &checks, &format!("{note}; rpc server as a second task"));
    (result.p50_us, result.p99_us) = rtt_percentiles(&rtts);
    Ok(result)
}
