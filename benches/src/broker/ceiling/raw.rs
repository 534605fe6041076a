//! A bare AMQP connection for the ceiling: the handshake, then frames encoded with
//! lepus-codec written straight to a tokio `TcpStream`, and frames decoded from it.

use std::{io, time::Instant};

use bytes::{Bytes, BytesMut};
use lepus::ConnectionOptions;
use lepus_codec::{
    BasicProperties, FieldTable, Frame, Limits, Method, PROTOCOL_HEADER, ShortStr, decode_frame, encode_publish,
    method::{basic, channel, connection, queue},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::broker::{BenchError, POLL_INTERVAL, POLL_LIMIT, body};

/// The channel every ceiling connection uses.
pub(super) const CH: u16 = 1;
/// What we propose in `connection.tune-ok` (RabbitMQ 3.10 offers the same).
const FRAME_MAX: u32 = 131_072;

pub(super) fn protocol_error(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

/// A bare AMQP connection with channel 1 open.
pub(super) struct RawConn {
    pub(super) stream: TcpStream,
    read_buf: BytesMut,
    limits: Limits,
    frame_max: u32,
}

impl RawConn {
    /// Connects, logs in with PLAIN, turns heartbeats off and opens channel 1.
    pub(super) async fn open(options: &ConnectionOptions) -> Result<RawConn, BenchError> {
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

    pub(super) async fn send(&mut self, channel: u16, method: Method) -> Result<(), BenchError> {
        let mut out = BytesMut::new();
        Frame::Method(channel, method).encode(&mut out)?;
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// Reads more from the socket into the read buffer.
    pub(super) async fn fill(&mut self) -> Result<(), BenchError> {
        if self.read_buf.capacity() - self.read_buf.len() < 4096 {
            self.read_buf.reserve(64 * 1024);
        }
        if self.stream.read_buf(&mut self.read_buf).await? == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        Ok(())
    }

    /// Reads what the socket has now, without waiting: false if it had nothing.
    pub(super) fn try_fill(&mut self) -> Result<bool, BenchError> {
        if self.read_buf.capacity() - self.read_buf.len() < 4096 {
            self.read_buf.reserve(64 * 1024);
        }
        match self.stream.try_read_buf(&mut self.read_buf) {
            Ok(0) => Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The next whole frame already in the read buffer (heartbeats skipped).
    pub(super) fn decoded(&mut self) -> Result<Option<Frame>, BenchError> {
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
    pub(super) async fn recv_method(&mut self, channel: u16) -> Result<Method, BenchError> {
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

    /// `queue.declare` (`exclusive` for a server-named reply queue); returns the queue's name
    /// and message count.
    pub(super) async fn declare(
        &mut self,
        name: &str,
        passive: bool,
        exclusive: bool,
    ) -> Result<(ShortStr, u64), BenchError> {
        let declare = queue::Declare { queue: ShortStr::try_from(name)?, passive, exclusive, ..Default::default() };
        self.send(CH, declare.into()).await?;
        match self.recv_method(CH).await? {
            Method::QueueDeclareOk(ok) => Ok((ok.queue, u64::from(ok.message_count))),
            other => Err(protocol_error(format!("expected queue.declare-ok, got {}", other.name())).into()),
        }
    }

    /// The queue's `message_count` (passive declare).
    pub(super) async fn message_count(&mut self, name: &str) -> Result<u64, BenchError> {
        Ok(self.declare(name, true, false).await?.1)
    }

    pub(super) async fn delete(&mut self, name: &str) -> Result<(), BenchError> {
        self.send(CH, queue::Delete { queue: ShortStr::try_from(name)?, ..Default::default() }.into()).await?;
        match self.recv_method(CH).await? {
            Method::QueueDeleteOk(_) => Ok(()),
            other => Err(protocol_error(format!("expected queue.delete-ok, got {}", other.name())).into()),
        }
    }

    /// `basic.qos(prefetch, global=false)`.
    pub(super) async fn qos(&mut self, prefetch: u16) -> Result<(), BenchError> {
        self.send(CH, basic::Qos { prefetch_count: prefetch, ..Default::default() }.into()).await?;
        match self.recv_method(CH).await? {
            Method::BasicQosOk(_) => Ok(()),
            other => Err(protocol_error(format!("expected basic.qos-ok, got {}", other.name())).into()),
        }
    }

    /// `basic.consume` without waiting for its consume-ok (which then arrives among the
    /// deliveries).
    pub(super) async fn start_consume(&mut self, queue: &str, no_ack: bool) -> Result<(), BenchError> {
        let consume = basic::Consume { queue: ShortStr::try_from(queue)?, no_ack, ..Default::default() };
        self.send(CH, consume.into()).await
    }

    pub(super) async fn close(mut self) -> Result<(), BenchError> {
        self.send(0, connection::Close::default().into()).await?;
        while !matches!(self.recv().await?, Frame::Method(0, Method::ConnectionCloseOk(_))) {}
        Ok(())
    }

    /// Appends one publish of `body` to `routing_key` with `properties` to `out`.
    pub(super) fn encode_publish(
        &self,
        out: &mut BytesMut,
        routing_key: &ShortStr,
        properties: &BasicProperties,
        body: &[u8],
    ) -> Result<(), BenchError> {
        let publish = basic::Publish { routing_key: routing_key.clone(), ..Default::default() };
        encode_publish(out, CH, &publish, properties, body, self.frame_max)?;
        Ok(())
    }

    /// `count` copies of one publish of `size` bytes to `queue`, encoded back to back, and
    /// the length of one.
    pub(super) fn encode_publishes(
        &self,
        queue: &str,
        size: usize,
        count: usize,
    ) -> Result<(Bytes, usize), BenchError> {
        let mut one = BytesMut::new();
        self.encode_publish(&mut one, &ShortStr::try_from(queue)?, &BasicProperties::default(), &body(size))?;
        let mut all = BytesMut::with_capacity(one.len() * count);
        for _ in 0..count {
            all.extend_from_slice(&one);
        }
        Ok((all.freeze(), one.len()))
    }

    /// Writes `n` of the publishes in `batch` (each `one` bytes long), a batch at a time.
    pub(super) async fn write_publishes(&mut self, batch: &Bytes, one: usize, n: u64) -> Result<(), BenchError> {
        let per_batch = (batch.len() / one.max(1)) as u64;
        let mut left = n;
        while left > 0 {
            let k = left.min(per_batch);
            self.stream.write_all(batch.get(..usize::try_from(k)? * one).unwrap_or_default()).await?;
            left -= k;
        }
        Ok(())
    }

    /// Polls `message_count` every millisecond until it is `n` or [`POLL_LIMIT`] passed.
    pub(super) async fn poll_count(&mut self, queue: &str, n: u64) -> Result<u64, BenchError> {
        let give_up = Instant::now() + POLL_LIMIT;
        loop {
            let count = self.message_count(queue).await?;
            if count == n || Instant::now() > give_up {
                return Ok(count);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

/// A message put back together from its deliver, header and body frames.
#[derive(Debug)]
pub(super) struct Message {
    pub(super) delivery_tag: u64,
    pub(super) properties: BasicProperties,
    pub(super) body: Bytes,
}

/// Puts deliveries back together, frame by frame.
#[derive(Debug, Default)]
pub(super) struct Assembler {
    partial: Option<(Message, u64)>,
}

impl Assembler {
    /// Takes one frame on channel [`CH`]; returns the message it completes. A
    /// `basic.consume-ok` is taken silently; any other frame is an error.
    pub(super) fn take(&mut self, frame: Frame) -> Result<Option<Message>, BenchError> {
        match frame {
            Frame::Method(CH, Method::BasicDeliver(d)) if self.partial.is_none() => {
                let message = Message {
                    delivery_tag: d.delivery_tag,
                    properties: BasicProperties::default(),
                    body: Bytes::new(),
                };
                self.partial = Some((message, u64::MAX));
                Ok(None)
            }
            Frame::Method(CH, Method::BasicConsumeOk(_)) => Ok(None),
            Frame::Header(CH, header) => {
                let Some((message, left)) = self.partial.as_mut().filter(|(_, left)| *left == u64::MAX) else {
                    return Err(protocol_error("content header without a delivery").into());
                };
                message.properties = header.properties;
                *left = header.body_size;
                Ok(self.complete())
            }
            Frame::Body(CH, bytes) => {
                let Some((message, left)) = self.partial.as_mut().filter(|(_, left)| *left != u64::MAX) else {
                    return Err(protocol_error("body frame without a header").into());
                };
                *left = left.saturating_sub(bytes.len() as u64);
                if message.body.is_empty() {
                    // The common case, one body frame: kept without a copy.
                    message.body = bytes;
                } else {
                    let mut joined = BytesMut::from(&message.body[..]);
                    joined.extend_from_slice(&bytes);
                    message.body = joined.freeze();
                }
                Ok(self.complete())
            }
            other => Err(protocol_error(format!("unexpected frame {other:?}")).into()),
        }
    }

    fn complete(&mut self) -> Option<Message> {
        match self.partial.take() {
            Some((message, 0)) => Some(message),
            partial => {
                self.partial = partial;
                None
            }
        }
    }
}
