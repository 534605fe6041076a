//! The ceiling: the publish (64 B) and confirm timed sections done with frames encoded by
//! lepus-codec before the timer starts, written straight to a tokio `TcpStream` after a
//! minimal handshake. No client logic runs in the timed section — no handles, no command
//! queue, no driver task — so what it measures is what the broker absorbs on this machine.

use std::{collections::BTreeSet, io, time::Instant};

use bytes::{Bytes, BytesMut};
use lepus::ConnectionOptions;
use lepus_codec::{
    BasicProperties, FieldTable, Frame, Limits, Method, PROTOCOL_HEADER, ShortStr, decode_frame, encode_publish,
    method::{basic, channel, confirm, connection, queue},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::{
    BenchError, CONFIRM_WINDOW, Case, Checks, POLL_INTERVAL, POLL_LIMIT, RunResult, Workload, body, measure::Section,
    queue_name,
};

const CLIENT: &str = "ceiling";
/// The channel every ceiling run uses.
const CH: u16 = 1;
/// Publishes encoded into one buffer for the publish ceiling; written in slices of it.
/// (64, 1024 and 8192 per write measured the same within the broker's run-to-run spread.)
const PUBLISH_BATCH: usize = 1024;
/// What we propose in `connection.tune-ok` (RabbitMQ 3.10 offers the same).
const FRAME_MAX: u32 = 131_072;

fn protocol_error(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

/// A bare AMQP connection with channel 1 open: handshake, then frames in and out.
struct RawConn {
    stream: TcpStream,
    read_buf: BytesMut,
    limits: Limits,
    frame_max: u32,
}

impl RawConn {
    /// Connects, logs in with PLAIN, turns heartbeats off and opens channel 1.
    async fn open(options: &ConnectionOptions) -> Result<RawConn, BenchError> {
        let stream = TcpStream::connect((options.get_host(), options.get_port())).await?;
        stream.set_nodelay(true)?;
        let mut c =
            RawConn { stream, read_buf: BytesMut::with_capacity(64 * 1024), limits: Limits::default(), frame_max: 0 };
        c.stream.write_all(&PROTOCOL_HEADER).await?;
        let Method::ConnectionStart(_) = c.recv_method(0).await? else {
            return Err(protocol_error("expected connection.start").into());
        };
        let credentials = options.get_credentials();
        let mut response = Vec::new();
        response.push(0);
        response.extend_from_slice(credentials.username.as_bytes());
        response.push(0);
        response.extend_from_slice(credentials.password.expose().as_bytes());
        let mut client_properties = FieldTable::new();
        client_properties.insert("product", "lepus bench ceiling")?;
        let start_ok = connection::StartOk { client_properties, response: Bytes::from(response), ..Default::default() };
        c.send(0, start_ok.into()).await?;
        let Method::ConnectionTune(tune) = c.recv_method(0).await? else {
            return Err(protocol_error("expected connection.tune").into());
        };
        c.frame_max = if tune.frame_max == 0 { FRAME_MAX } else { tune.frame_max.min(FRAME_MAX) };
        let tune_ok = connection::TuneOk { channel_max: tune.channel_max, frame_max: c.frame_max, heartbeat: 0 };
        c.send(0, tune_ok.into()).await?;
        c.limits = Limits::default().tuned(c.frame_max, Limits::DEFAULT_CONTROL_FRAME_MAX);
        let open = connection::Open { virtual_host: ShortStr::try_from(options.get_vhost())?, ..Default::default() };
        c.send(0, open.into()).await?;
        let Method::ConnectionOpenOk(_) = c.recv_method(0).await? else {
            return Err(protocol_error("expected connection.open-ok").into());
        };
        c.send(CH, channel::Open::default().into()).await?;
        let Method::ChannelOpenOk(_) = c.recv_method(CH).await? else {
            return Err(protocol_error("expected channel.open-ok").into());
        };
        Ok(c)
    }

    async fn send(&mut self, channel: u16, method: Method) -> Result<(), BenchError> {
        let mut out = BytesMut::new();
        Frame::Method(channel, method).encode(&mut out)?;
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// Reads more from the socket into the read buffer.
    async fn fill(&mut self) -> Result<(), BenchError> {
        if self.read_buf.capacity() - self.read_buf.len() < 4096 {
            self.read_buf.reserve(64 * 1024);
        }
        if self.stream.read_buf(&mut self.read_buf).await? == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        Ok(())
    }

    /// The next whole frame already in the read buffer (heartbeats skipped).
    fn decoded(&mut self) -> Result<Option<Frame>, BenchError> {
        loop {
            match decode_frame(&mut self.read_buf, &self.limits)? {
                Some(Frame::Heartbeat) => {}
                other => return Ok(other),
            }
        }
    }

    async fn recv(&mut self) -> Result<Frame, BenchError> {
        loop {
            if let Some(frame) = self.decoded()? {
                return Ok(frame);
            }
            self.fill().await?;
        }
    }

    /// The next method on `channel`; the broker closing the channel or connection is an error.
    async fn recv_method(&mut self, channel: u16) -> Result<Method, BenchError> {
        match self.recv().await? {
            Frame::Method(_, Method::ConnectionClose(c)) => {
                Err(protocol_error(format!("connection closed by the broker: {} {}", c.reply_code, c.reply_text))
                    .into())
            }
            Frame::Method(_, Method::ChannelClose(c)) => {
                Err(protocol_error(format!("channel closed by the broker: {} {}", c.reply_code, c.reply_text)).into())
            }
            Frame::Method(ch, m) if ch == channel => Ok(m),
            other => Err(protocol_error(format!("unexpected frame {other:?}")).into()),
        }
    }

    /// `queue.declare`; returns the message count.
    async fn declare(&mut self, name: &str, passive: bool) -> Result<u64, BenchError> {
        let declare = queue::Declare { queue: ShortStr::try_from(name)?, passive, ..Default::default() };
        self.send(CH, declare.into()).await?;
        match self.recv_method(CH).await? {
            Method::QueueDeclareOk(ok) => Ok(u64::from(ok.message_count)),
            other => Err(protocol_error(format!("expected queue.declare-ok, got {}", other.name())).into()),
        }
    }

    async fn delete(&mut self, name: &str) -> Result<(), BenchError> {
        self.send(CH, queue::Delete { queue: ShortStr::try_from(name)?, ..Default::default() }.into()).await?;
        match self.recv_method(CH).await? {
            Method::QueueDeleteOk(_) => Ok(()),
            other => Err(protocol_error(format!("expected queue.delete-ok, got {}", other.name())).into()),
        }
    }

    async fn close(mut self) -> Result<(), BenchError> {
        self.send(0, connection::Close::default().into()).await?;
        while !matches!(self.recv().await?, Frame::Method(0, Method::ConnectionCloseOk(_))) {}
        Ok(())
    }

    /// `count` copies of one publish of `size` bytes to `queue`, encoded back to back.
    fn encode_publishes(&self, queue: &str, size: usize, count: usize) -> Result<(Bytes, usize), BenchError> {
        let publish = basic::Publish { routing_key: ShortStr::try_from(queue)?, ..Default::default() };
        let (body, properties) = (body(size), BasicProperties::default());
        let mut one = BytesMut::new();
        encode_publish(&mut one, CH, &publish, &properties, &body, self.frame_max)?;
        let mut all = BytesMut::with_capacity(one.len() * count);
        for _ in 0..count {
            all.extend_from_slice(&one);
        }
        Ok((all.freeze(), one.len()))
    }

    /// Polls `message_count` every millisecond until it is `n` or [`POLL_LIMIT`] passed.
    async fn poll_count(&mut self, queue: &str, n: u64) -> Result<u64, BenchError> {
        let give_up = Instant::now() + POLL_LIMIT;
        loop {
            let count = self.declare(queue, true).await?;
            if count == n || Instant::now() > give_up {
                return Ok(count);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

/// Runs the ceiling for `case` (publish or confirm).
pub async fn run(case: Case, url: &str) -> Result<RunResult, BenchError> {
    let options = ConnectionOptions::from_uri(url)?;
    let mut conn = RawConn::open(&options).await?;
    let queue = queue_name(CLIENT, case.workload)?;
    conn.declare(&queue, false).await?;
    let note = "frames pre-encoded with lepus-codec, written to a bare tokio TcpStream (current_thread); \
                heartbeats off";
    let result = match case.workload {
        Workload::Publish => publish(&mut conn, &queue, case, note).await?,
        Workload::Confirm => confirm(&mut conn, &queue, case, note).await?,
        other => return Err(format!("no ceiling for {other}").into()),
    };
    conn.delete(&queue).await?;
    conn.close().await?;
    Ok(result)
}

async fn publish(conn: &mut RawConn, queue: &str, case: Case, note: &str) -> Result<RunResult, BenchError> {
    let (batch, one) = conn.encode_publishes(queue, case.size, PUBLISH_BATCH)?;
    let n = usize::try_from(case.n)?;

    let section = Section::start();
    let mut left = n;
    while left > 0 {
        let k = left.min(PUBLISH_BATCH);
        conn.stream.write_all(batch.get(..k * one).unwrap_or_default()).await?;
        left -= k;
    }
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

    let count = conn.declare(queue, true).await?;
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
