//! A blocking AMQP session built directly on the codec: handshake, then frames in and out.
//!
//! Test and demo support, not a client: it answers heartbeats by ignoring them (it tunes
//! them off) and turns every protocol surprise into an `io::Error`.

use std::{
    io::{self, Read, Write},
    net::TcpStream,
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use lepus::codec::{
    BasicProperties, Content, ContentAssembler, FieldTable, FieldValue, Frame, Limits, Method, PROTOCOL_HEADER,
    ShortStr, decode_frame, encode_publish,
    method::{basic, channel, connection, queue},
};

fn err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

fn short(s: &str) -> io::Result<ShortStr> {
    ShortStr::try_from(s).map_err(|e| err(e.to_string()))
}

/// One connection with channel 1 open.
pub struct RawSession {
    stream: TcpStream,
    read_buf: BytesMut,
    limits: Limits,
    /// The negotiated `frame_max`.
    pub frame_max: u32,
    /// What the server sent in connection.start.
    pub server_properties: FieldTable,
}

impl RawSession {
    /// Connects to `addr`, logs in as guest/guest to vhost `/`, proposes `frame_max`,
    /// and opens channel 1.
    pub fn open(addr: &str, frame_max: u32) -> io::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        let mut s = RawSession {
            stream,
            read_buf: BytesMut::with_capacity(256 * 1024),
            limits: Limits::default(),
            frame_max: 0,
            server_properties: FieldTable::new(),
        };
        s.stream.write_all(&PROTOCOL_HEADER)?;
        let Method::ConnectionStart(start) = s.recv_method(0)? else { return Err(err("expected connection.start")) };
        s.server_properties = start.server_properties;

        let mut capabilities = FieldTable::new();
        for cap in ["publisher_confirms", "basic.nack", "consumer_cancel_notify", "authentication_failure_close"] {
            capabilities.insert(cap, true).map_err(|e| err(e.to_string()))?;
        }
        let mut client_properties = FieldTable::new();
        client_properties.insert("product", "lepus raw session").map_err(|e| err(e.to_string()))?;
        client_properties.insert("capabilities", capabilities).map_err(|e| err(e.to_string()))?;
        s.send(&Frame::Method(
            0,
            connection::StartOk {
                client_properties,
                response: Bytes::from_static(b"\0guest\0guest"),
                ..connection::StartOk::default()
            }
            .into(),
        ))?;

        let Method::ConnectionTune(tune) = s.recv_method(0)? else { return Err(err("expected connection.tune")) };
        s.frame_max = match (tune.frame_max, frame_max) {
            (0, ours) | (ours, 0) => ours,
            (theirs, ours) => theirs.min(ours),
        };
        s.send(&Frame::Method(
            0,
            connection::TuneOk { channel_max: tune.channel_max, frame_max: s.frame_max, heartbeat: 0 }.into(),
        ))?;
        s.limits = Limits::default().tuned(s.frame_max, Limits::DEFAULT_CONTROL_FRAME_MAX);
        s.send(&Frame::Method(0, connection::Open::default().into()))?;
        let Method::ConnectionOpenOk(_) = s.recv_method(0)? else { return Err(err("expected connection.open-ok")) };
        s.send(&Frame::Method(1, channel::Open::default().into()))?;
        let Method::ChannelOpenOk(_) = s.recv_method(1)? else { return Err(err("expected channel.open-ok")) };
        Ok(s)
    }

    /// Encodes and writes one frame.
    pub fn send(&mut self, frame: &Frame) -> io::Result<()> {
        let mut out = BytesMut::new();
        frame.encode(&mut out).map_err(|e| err(e.to_string()))?;
        self.stream.write_all(&out)
    }

    /// Writes bytes as they are: frames the encoder would refuse (see [`crate::nested`]).
    pub fn send_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads the next frame that is not a heartbeat.
    pub fn recv(&mut self) -> io::Result<Frame> {
        loop {
            match decode_frame(&mut self.read_buf, &self.limits).map_err(|e| err(e.to_string()))? {
                Some(Frame::Heartbeat) => {}
                Some(frame) => return Ok(frame),
                None => {
                    let mut chunk = [0u8; 16 * 1024];
                    let n = self.stream.read(&mut chunk)?;
                    if n == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    self.read_buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
                }
            }
        }
    }

    /// Reads a method on `channel`; a close from the broker becomes an error with its text.
    pub fn recv_method(&mut self, channel: u16) -> io::Result<Method> {
        match self.recv()? {
            Frame::Method(_, Method::ConnectionClose(c)) => {
                Err(err(format!("connection closed by broker: {} {}", c.reply_code, c.reply_text)))
            }
            Frame::Method(_, Method::ChannelClose(c)) => {
                Err(err(format!("channel closed by broker: {} {}", c.reply_code, c.reply_text)))
            }
            Frame::Method(ch, m) if ch == channel => Ok(m),
            other => Err(err(format!("unexpected frame {other:?}"))),
        }
    }

    /// Declares a non-durable, auto-delete queue and returns its name and message count.
    pub fn declare_queue(&mut self, name: &str) -> io::Result<(ShortStr, u32)> {
        let declare = queue::Declare { queue: short(name)?, auto_delete: true, ..queue::Declare::default() };
        self.send(&Frame::Method(1, declare.into()))?;
        match self.recv_method(1)? {
            Method::QueueDeclareOk(ok) => Ok((ok.queue, ok.message_count)),
            other => Err(err(format!("expected queue.declare-ok, got {}", other.name()))),
        }
    }

    /// Deletes a queue.
    pub fn delete_queue(&mut self, name: &str) -> io::Result<()> {
        self.send(&Frame::Method(1, queue::Delete { queue: short(name)?, ..queue::Delete::default() }.into()))?;
        match self.recv_method(1)? {
            Method::QueueDeleteOk(_) => Ok(()),
            other => Err(err(format!("expected queue.delete-ok, got {}", other.name()))),
        }
    }

    /// Publishes `body` to the default exchange with `routing_key`, split at `frame_max`.
    pub fn publish(&mut self, routing_key: &str, properties: &BasicProperties, body: &[u8]) -> io::Result<()> {
        let publish = basic::Publish { routing_key: short(routing_key)?, ..basic::Publish::default() };
        let mut out = BytesMut::with_capacity(body.len() + 1024);
        encode_publish(&mut out, 1, &publish, properties, body, self.frame_max).map_err(|e| err(e.to_string()))?;
        self.stream.write_all(&out)
    }

    /// `basic.get` with no-ack: the whole message, or `None` when the queue is empty.
    pub fn get(&mut self, queue: &str) -> io::Result<Option<Content>> {
        self.send(&Frame::Method(
            1,
            basic::Get { queue: short(queue)?, no_ack: true, ..basic::Get::default() }.into(),
        ))?;
        let mut assembler = ContentAssembler::default();
        loop {
            let done = match self.recv()? {
                Frame::Method(1, Method::BasicGetEmpty(_)) => return Ok(None),
                Frame::Method(1, m) => assembler.method(m),
                Frame::Header(1, h) => assembler.header(h),
                Frame::Body(1, b) => assembler.body(b),
                other => return Err(err(format!("unexpected frame {other:?}"))),
            }
            .map_err(|e| err(e.to_string()))?;
            if let Some(content) = done {
                return Ok(Some(content));
            }
        }
    }

    /// Closes the connection politely and waits for close-ok.
    pub fn close(mut self) -> io::Result<()> {
        self.send(&Frame::Method(0, connection::Close::default().into()))?;
        // Anything still in flight before our close is irrelevant now.
        while !matches!(self.recv()?, Frame::Method(0, Method::ConnectionCloseOk(_))) {}
        Ok(())
    }

    /// The server's `product` and `version` properties, e.g. `RabbitMQ 3.10.8`.
    pub fn server_product(&self) -> String {
        let get = |k: &str| self.server_properties.get(k).and_then(FieldValue::as_str).unwrap_or("?").to_owned();
        format!("{} {}", get("product"), get("version"))
    }
}
