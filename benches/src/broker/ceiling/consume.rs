//! The consume and pubsub ceilings: deliveries decoded frame by frame, one `basic.ack`
//! (`multiple=false`) encoded per delivery, and the acks written together: once
//! [`ACK_BATCH`] are waiting, or when the socket has nothing more to read. Writing the
//! acks of every read at once would make more, smaller writes whenever the client keeps up
//! with the broker, and each costs the broker a read; holding them while nothing arrives
//! would stall a broker that has reached the prefetch limit. (Measured: batches of 50, 250
//! and 500 acks, and this rule, cost the broker the same per message within its run-to-run
//! spread, which is bimodal on this machine: about 11 or about 16.5 us per message.)

use bytes::BytesMut;
use lepus::ConnectionOptions;
use lepus_codec::{Frame, Method, method::basic};
use tokio::io::AsyncWriteExt;

use super::{
    CLIENT, PUBLISH_BATCH,
    raw::{Assembler, CH, RawConn, protocol_error},
};
use crate::broker::{BenchError, Case, Checks, PREFETCH, RunResult, measure::Section, queue_name};

/// Acks written at the latest once this many wait: a quarter of the prefetch window, so
/// the broker never runs out of room to deliver while they are held.
const ACK_BATCH: usize = PREFETCH as usize / 4;
/// Bytes of one encoded `basic.ack` frame (8 frame + 4 ids + 8 tag + 1 bits).
const ACK_FRAME_LEN: usize = 21;
/// Takes `n` deliveries, acking each; checks tags 1..=n in order and body sizes.
async fn consume_n(conn: &mut RawConn, n: u64, size: usize, checks: &mut Checks) -> Result<(), BenchError> {
    let mut assembler = Assembler::default();
    let mut acks = BytesMut::with_capacity(64 * 1024);
    let (mut bad_tags, mut bad_sizes, mut received) = (0u64, 0u64, 0u64);
    while received < n {
        while let Some(frame) = conn.decoded()? {
            if let Some(message) = assembler.take(frame)? {
                received += 1;
                bad_tags += u64::from(message.delivery_tag != received);
                bad_sizes += u64::from(message.body.len() != size);
                let ack = basic::Ack { delivery_tag: message.delivery_tag, multiple: false };
                Frame::Method(CH, ack.into()).encode(&mut acks)?;
            }
        }
        let more = received < n && conn.try_fill()?;
        if !acks.is_empty() && (!more || acks.len() >= ACK_BATCH * ACK_FRAME_LEN) {
            conn.stream.write_all(&acks).await?;
            acks.clear();
        }
        if received < n && !more {
            conn.fill().await?;
        }
    }
    checks.check(received == n, || format!("{received} deliveries != {n}"));
    checks.check(bad_tags == 0, || format!("{bad_tags} delivery tags out of 1..N order"));
    checks.check(bad_sizes == 0, || format!("{bad_sizes} bodies not {size} bytes"));
    Ok(())
}

/// Fills `queue` with `case.n` messages, then times consuming them with one ack each.
pub(super) async fn consume(conn: &mut RawConn, queue: &str, case: Case, note: &str) -> Result<RunResult, BenchError> {
    let (batch, one) = conn.encode_publishes(queue, case.size, PUBLISH_BATCH)?;
    conn.write_publishes(&batch, one, case.n).await?;
    let filled = conn.poll_count(queue, case.n).await?;
    if filled != case.n {
        return Err(format!("filling the queue: message_count {filled} != {}", case.n).into());
    }
    conn.qos(PREFETCH).await?;
    let mut checks = Checks::default();

    let section = Section::start();
    conn.start_consume(queue, false).await?;
    consume_n(conn, case.n, case.size, &mut checks).await?;
    let left = conn.message_count(queue).await?;
    let m = section.stop();

    checks.check(left == 0, || format!("message_count {left} != 0 after the run"));
    Ok(RunResult::measured(
        CLIENT,
        case,
        m,
        &checks,
        &format!("{note}; acks written {ACK_BATCH} at a time or when nothing more is to be read"),
    ))
}

/// One connection publishes (pre-encoded, a batch at a time, in a second task) while
/// another consumes with one ack per delivery.
pub(super) async fn pubsub(options: &ConnectionOptions, case: Case, note: &str) -> Result<RunResult, BenchError> {
    let mut conn = RawConn::open(options).await?;
    let queue = queue_name(CLIENT, case.workload)?;
    conn.declare(&queue, false, false).await?;
    conn.qos(PREFETCH).await?;
    conn.start_consume(&queue, false).await?;
    let Method::BasicConsumeOk(_) = conn.recv_method(CH).await? else {
        return Err(protocol_error("expected basic.consume-ok").into());
    };
    let mut publisher = RawConn::open(options).await?;
    let (batch, one) = publisher.encode_publishes(&queue, case.size, PUBLISH_BATCH)?;
    let mut checks = Checks::default();

    let section = Section::start();
    let publishing = tokio::spawn(async move {
        publisher.write_publishes(&batch, one, case.n).await?;
        Ok::<_, BenchError>(publisher)
    });
    consume_n(&mut conn, case.n, case.size, &mut checks).await?;
    let left = conn.message_count(&queue).await?;
    let m = section.stop();

    publishing.await??.close().await?;
    checks.check(left == 0, || format!("message_count {left} != 0 after the run"));
    conn.delete(&queue).await?;
    conn.close().await?;
    Ok(RunResult::measured(
        CLIENT,
        case,
        m,
        &checks,
        &format!(
            "{note}; publisher as a second task, {PUBLISH_BATCH} publishes per write; acks written {ACK_BATCH} at a time or when nothing more is to be read"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_frame_length() {
        let mut out = BytesMut::new();
        Frame::Method(CH, basic::Ack { delivery_tag: 1 << 40, multiple: false }.into()).encode(&mut out).unwrap();
        assert_eq!(out.len(), ACK_FRAME_LEN);
    }
}
