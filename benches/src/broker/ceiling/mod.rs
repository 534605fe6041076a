//! The ceiling: every workload done with frames encoded by lepus-codec on a bare tokio
//! `TcpStream` after a minimal handshake. Publishes whose content is known in advance are
//! encoded before the timer starts and written a batch at a time; deliveries are decoded
//! frame by frame and the acks of everything one read brought are written together (each
//! ack still its own `basic.ack`, `multiple=false`, as BENCHMARKS.md requires). No handles,
//! no command queue, no driver task: what it measures is what the broker absorbs on this
//! machine when the client costs next to nothing, and how few writes and wake-ups a client
//! can get away with.

mod consume;
mod raw;
mod rpc;

use std::collections::BTreeSet;

use lepus::ConnectionOptions;
use lepus_codec::{Frame, Method, method::confirm};
use tokio::io::AsyncWriteExt;

use self::raw::{CH, RawConn, protocol_error};
use super::{BenchError, CONFIRM_WINDOW, Case, Checks, RunResult, RuntimeKind, Workload, measure::Section, queue_name};

const CLIENT: &str = "ceiling";
/// Publishes encoded into one buffer for the publish ceiling; written in slices of it.
/// (64, 1024 and 8192 per write measured the same within the broker's run-to-run spread.)
const PUBLISH_BATCH: usize = 1024;

/// Runs the ceiling for `case` on the current runtime, which is `runtime`.
pub async fn run(case: Case, url: &str, runtime: RuntimeKind) -> Result<RunResult, BenchError> {
    let options = ConnectionOptions::from_uri(url)?;
    let note =
        format!("frames encoded with lepus-codec on a bare tokio TcpStream ({}); heartbeats off", runtime.describe());
    match case.workload {
        Workload::Rpc => return rpc::rpc(&options, case, &note).await,
        Workload::Pubsub => return consume::pubsub(&options, case, &note).await,
        Workload::Publish | Workload::Confirm | Workload::Consume => {}
    }
    let mut conn = RawConn::open(&options).await?;
    let queue = queue_name(CLIENT, case.workload)?;
    conn.declare(&queue, false, false).await?;
    let result = match case.workload {
        Workload::Publish => publish(&mut conn, &queue, case, &note).await?,
        Workload::Confirm => confirm(&mut conn, &queue, case, &note).await?,
        _ => consume::consume(&mut conn, &queue, case, &note).await?,
    };
    conn.delete(&queue).await?;
    conn.close().await?;
    Ok(result)
}

async fn publish(conn: &mut RawConn, queue: &str, case: Case, note: &str) -> Result<RunResult, BenchError> {
    let (batch, one) = conn.encode_publishes(queue, case.size, PUBLISH_BATCH)?;

    let section = Section::start();
    conn.write_publishes(&batch, one, case.n).await?;
    let count = conn.poll_count(queue, case.n).await?;
    let m = section.stop();

    let mut checks = Checks::default();
    checks.check(count == case.n, || format!("message_count {count} != {}", case.n));
    Ok(RunResult::measured(CLIENT, case, m, &checks, &format!("{note}; written {PUBLISH_BATCH} publishes at a time")))
}

/// Delivery tags the broker has confirmed, with `multiple` honoured.
#[derive(Debug, Default)]
struct Confirmed {
    /// Every tag below this is settled.
    next: u64,
    /// Settled tags at or above `next` (out of order single confirms).
    above: BTreeSet<u64>,
    acks: u64,
    nacks: u64,
}

impl Confirmed {
    fn new() -> Self {
        Confirmed { next: 1, ..Default::default() }
    }

    /// Settles `tag` (and every earlier one if `multiple`); returns how many were new.
    fn settle(&mut self, tag: u64, multiple: bool) -> u64 {
        let before = self.settled();
        if multiple {
            if tag >= self.next {
                self.above = self.above.split_off(&(tag + 1));
                self.next = tag + 1;
            }
        } else if tag >= self.next {
            self.above.insert(tag);
        }
        while self.above.remove(&self.next) {
            self.next += 1;
        }
        self.settled() - before
    }

    fn settled(&self) -> u64 {
        self.next - 1 + self.above.len() as u64
    }
}

async fn confirm(conn: &mut RawConn, queue: &str, case: Case, note: &str) -> Result<RunResult, BenchError> {
    conn.send(CH, confirm::Select::default().into()).await?;
    let Method::ConfirmSelectOk(_) = conn.recv_method(CH).await? else {
        return Err(protocol_error("expected confirm.select-ok").into());
    };
    let (batch, one) = conn.encode_publishes(queue, case.size, CONFIRM_WINDOW)?;
    let window = CONFIRM_WINDOW as u64;
    let mut confirmed = Confirmed::new();
    let mut published = 0u64;

    let section = Section::start();
    while confirmed.settled() < case.n {
        // Fill the window, then wait for confirms to open it again.
        let room = (window - (published - confirmed.settled())).min(case.n - published);
        if room > 0 {
            let k = usize::try_from(room)?;
            conn.stream.write_all(batch.get(..k * one).unwrap_or_default()).await?;
            published += room;
        }
        conn.fill().await?;
        while let Some(frame) = conn.decoded()? {
            match frame {
                Frame::Method(CH, Method::BasicAck(ack)) => {
                    confirmed.acks += confirmed.settle(ack.delivery_tag, ack.multiple);
                }
                Frame::Method(CH, Method::BasicNack(nack)) => {
                    confirmed.nacks += confirmed.settle(nack.delivery_tag, nack.multiple);
                }
                other => return Err(protocol_error(format!("unexpected frame {other:?}")).into()),
            }
        }
    }
    let m = section.stop();

    let count = conn.message_count(queue).await?;
    let mut checks = Checks::default();
    checks.check(confirmed.acks == case.n, || format!("acks {} != {}", confirmed.acks, case.n));
    checks.check(confirmed.nacks == 0, || format!("{} nacks", confirmed.nacks));
    checks.check(count == case.n, || format!("message_count {count} != {}", case.n));
    Ok(RunResult::measured(CLIENT, case, m, &checks, &format!("{note}; window {CONFIRM_WINDOW}, refilled per read")))
}

#[cfg(test)]
mod tests {
    use super::Confirmed;

    #[test]
    fn confirms_honour_multiple_and_order() {
        let mut c = Confirmed::new();
        assert_eq!(c.settle(3, false), 1);
        assert_eq!(c.settled(), 1);
        assert_eq!(c.settle(2, true), 2);
        assert_eq!(c.settled(), 3, "1 and 2 by the multiple, 3 before");
        assert_eq!(c.settle(2, false), 0, "already settled");
        assert_eq!(c.settle(10, true), 7);
        assert_eq!(c.settled(), 10);
        assert_eq!(c.settle(12, false), 1);
        assert_eq!(c.settle(11, false), 1);
        assert_eq!(c.settled(), 12);
    }
}
