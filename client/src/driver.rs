//! The one task that owns the socket: it reads and decodes frames into the state machine,
//! applies the handles' commands, writes what the state machine emits (all pending frames
//! in one vectored write), sleeps until its next deadline, and routes events to waiters.

use std::{collections::VecDeque, io::IoSlice, sync::Arc, time::Instant};

use bytes::{Buf, Bytes, BytesMut};
use lepus_codec::{Method, ReplyCode, decode_frame, method::basic};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::{OwnedSemaphorePermit, mpsc, oneshot},
};

use crate::{
    Error,
    connection::ConnShared,
    consumer::ConsumerTx,
    proto::{self, ChannelKey, Event, Reply, ReturnKey, Tokens},
};

/// Commands a handle can give the driver; each carries what the driver answers on.
pub(crate) enum Command {
    /// Opens a channel; answers at once with its key, and later on `opened` with open-ok.
    OpenChannel { reply: oneshot::Sender<Result<(ChannelKey, oneshot::Receiver<CallResult>), Error>> },
    /// A synchronous method (or a nowait one, answered with `Reply::Sent`).
    Call { key: ChannelKey, method: Method, reply: oneshot::Sender<CallResult> },
    /// basic.consume with the queue its deliveries go to.
    Consume { key: ChannelKey, consume: basic::Consume, reply: oneshot::Sender<CallResult>, consumer: ConsumerTx },
    /// An asynchronous method (ack, nack, reject, ...); a stale one is dropped.
    Send { key: ChannelKey, method: Method },
    /// Pre-encoded publish frames, with a confirm waiter in confirm mode.
    Publish { key: ChannelKey, frames: PublishFrames, confirm: Option<(ConfirmTx, Option<ReturnKey>)> },
    /// connection.update-secret.
    UpdateSecret { secret: Bytes, reason: String, reply: oneshot::Sender<CallResult> },
    /// connection.close; `done` resolves when the connection has closed.
    Close { code: ReplyCode, text: String, done: oneshot::Sender<()> },
}

/// The frames of one publish: one buffer for small bodies, envelope and body slices for
/// large ones.
pub(crate) enum PublishFrames {
    One(Bytes),
    Many(Vec<Bytes>),
}

impl IntoIterator for PublishFrames {
    type Item = Bytes;
    type IntoIter = PublishFramesIter;
    fn into_iter(self) -> PublishFramesIter {
        match self {
            PublishFrames::One(b) => PublishFramesIter::One(Some(b)),
            PublishFrames::Many(v) => PublishFramesIter::Many(v.into_iter()),
        }
    }
}

pub(crate) enum PublishFramesIter {
    One(Option<Bytes>),
    Many(std::vec::IntoIter<Bytes>),
}

impl Iterator for PublishFramesIter {
    type Item = Bytes;
    fn next(&mut self) -> Option<Bytes> {
        match self {
            PublishFramesIter::One(b) => b.take(),
            PublishFramesIter::Many(it) => it.next(),
        }
    }
}

pub(crate) type CallResult = Result<Reply, Error>;

/// A confirm waiter; it holds its place in the channel's in-flight window until resolved.
pub(crate) struct ConfirmTx {
    pub(crate) tx: oneshot::Sender<Result<proto::Confirmation, Error>>,
    pub(crate) _permit: Option<OwnedSemaphorePermit>,
}

pub(crate) struct DriverTokens;

impl Tokens for DriverTokens {
    type Reply = oneshot::Sender<CallResult>;
    type Confirm = ConfirmTx;
    type Consumer = ConsumerTx;
}

/// How many commands one turn of the loop applies before it writes.
const COMMAND_BATCH: usize = 512;
/// Segments handed to one vectored write.
const MAX_IOV: usize = 64;
/// Read buffer growth step.
const READ_CHUNK: usize = 64 * 1024;
/// Deliveries held for consumers whose queues are full, in bytes (each counted at least
/// [`STASH_ENTRY_COST`]). Below this the socket is still read, so one consumer that is not
/// read does not hold up replies and confirms for every other channel; above it reading
/// pauses and TCP pushes back on the broker, so memory stays bounded.
const MAX_STASHED: usize = 16 << 20;
/// What one held delivery counts for, whatever its body size.
const STASH_ENTRY_COST: usize = 512;
/// While more than this waits for the socket, no commands are taken: the bounded command
/// queue then makes publishers wait, instead of this queue growing without bound while the
/// broker is not reading (e.g. when it blocks the connection).
const MAX_UNWRITTEN: usize = 4 << 20;

/// Runs the connection until it is closed. `connected` learns how the handshake ended.
pub(crate) async fn run<S>(
    io: S,
    mut proto: proto::Connection<DriverTokens>,
    mut commands: mpsc::Receiver<Command>,
    shared: Arc<ConnShared>,
    connected: oneshot::Sender<Result<(), Error>>,
    tls: bool,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(io);
    let mut d = Driver {
        shared,
        connected: Some(connected),
        read_buf: BytesMut::with_capacity(READ_CHUNK),
        out: VecDeque::new(),
        unwritten: 0,
        needs_flush: false,
        stash: VecDeque::new(),
        stashed: 0,
        reading: true,
        close_waiters: Vec::new(),
        commands_open: true,
    };
    loop {
        let now = Instant::now();
        // Apply whatever commands are already queued, without waiting.
        for _ in 0..COMMAND_BATCH {
            if d.unwritten > MAX_UNWRITTEN {
                break;
            }
            match commands.try_recv() {
                Ok(cmd) => d.command(&mut proto, cmd),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    d.all_handles_dropped(&mut proto, now);
                    break;
                }
            }
        }
        d.pump(&mut proto, now);
        // Too much held for full consumer queues pauses reading; proto must not mistake
        // that for silence.
        let reading = d.stashed < MAX_STASHED;
        if reading != d.reading {
            d.reading = reading;
            proto.set_reading(now, reading);
        }
        if proto.is_closed() && d.out.is_empty() && !d.needs_flush {
            break;
        }
        let deadline = proto.poll_timeout().map(tokio::time::Instant::from_std);
        let reading = d.reading && !proto.is_closed();
        tokio::select! {
            biased;
            result = write_some(&mut writer, &mut d.out, &mut d.needs_flush), if !d.out.is_empty() || d.needs_flush => {
                match result {
                    Ok(n) => d.unwritten -= n,
                    Err(e) => proto.handle_io_error(io_error(e, tls, proto.awaiting_start())),
                }
            }
            permit = reserve_front(&d.stash), if !d.stash.is_empty() => d.unstash(&mut proto, permit),
            result = reader.read_buf(&mut d.read_buf), if reading => {
                let now = Instant::now();
                match result {
                    Ok(0) => {
                        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the broker closed the socket");
                        proto.handle_io_error(io_error(eof, tls, proto.awaiting_start()));
                    }
                    Ok(_) => d.decode(&mut proto, now),
                    Err(e) => proto.handle_io_error(io_error(e, tls, proto.awaiting_start())),
                }
            }
            cmd = commands.recv(), if d.commands_open && d.unwritten <= MAX_UNWRITTEN => match cmd {
                Some(cmd) => d.command(&mut proto, cmd),
                None => d.all_handles_dropped(&mut proto, Instant::now()),
            },
            () = sleep_until(deadline), if deadline.is_some() => proto.handle_timeout(Instant::now()),
        }
    }
    let _ = writer.shutdown().await;
    // Commands sent meanwhile must still be answered: a publish's confirmation travels inside
    // its command. Closing the queue and receiving until it reports the end also catches a
    // send that had reserved its slot before the close and lands after it; dropping the
    // receiver alone would strand such a command (and its waiter) until every handle is gone.
    commands.close();
    while let Some(cmd) = commands.recv().await {
        d.command(&mut proto, cmd);
        d.pump(&mut proto, Instant::now());
    }
    d.shutdown(&mut proto);
}

/// On TLS connections a failed read or write often hides a TLS alert (a client certificate
/// refused after a TLS 1.3 handshake, ...): name it. A reset or EOF before the broker even
/// sent `connection.start` is, on TLS, the server refusing us after the handshake.
fn io_error(e: std::io::Error, tls: bool, before_amqp: bool) -> Error {
    if !tls {
        return Error::from(e);
    }
    match crate::tls::describe_io_error(&e) {
        crate::tls::TlsError::Io(_) if before_amqp => {
            Error::from(crate::tls::TlsError::ClosedAfterHandshake(e.to_string()))
        }
        crate::tls::TlsError::Io(_) => Error::from(e),
        named => Error::from(named),
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Writes what the socket takes of `out` (returning how many bytes), then flushes once
/// `out` is empty (TLS buffers internally).
async fn write_some<W: AsyncWrite + Unpin>(
    w: &mut W,
    out: &mut VecDeque<Bytes>,
    needs_flush: &mut bool,
) -> std::io::Result<usize> {
    let mut written = 0;
    if !out.is_empty() {
        let n = {
            let slices: Vec<IoSlice<'_>> = out.iter().take(MAX_IOV).map(|b| IoSlice::new(b)).collect();
            w.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        advance(out, n);
        written = n;
        *needs_flush = true;
    }
    if out.is_empty() && *needs_flush {
        w.flush().await?;
        *needs_flush = false;
    }
    Ok(written)
}

fn advance(out: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let Some(front) = out.front_mut() else { return };
        if front.len() <= n {
            n -= front.len();
            out.pop_front();
        } else {
            front.advance(n);
            n = 0;
        }
    }
}

async fn reserve_front(stash: &VecDeque<(ConsumerTx, DeliveryItem)>) -> Option<mpsc::OwnedPermit<DeliveryItem>> {
    let (consumer, _) = stash.front()?;
    consumer.tx.clone().reserve_owned().await.ok()
}

pub(crate) type DeliveryItem = Result<proto::Delivery, Error>;

struct Driver {
    shared: Arc<ConnShared>,
    connected: Option<oneshot::Sender<Result<(), Error>>>,
    read_buf: BytesMut,
    out: VecDeque<Bytes>,
    /// Bytes in `out`.
    unwritten: usize,
    needs_flush: bool,
    /// Deliveries waiting for room in their consumer's queue, in arrival order.
    stash: VecDeque<(ConsumerTx, DeliveryItem)>,
    /// What `stash` holds, as counted against [`MAX_STASHED`].
    stashed: usize,
    /// Whether the socket is being read (false while too much is stashed).
    reading: bool,
    close_waiters: Vec<oneshot::Sender<()>>,
    commands_open: bool,
}

impl Driver {
    fn decode(&mut self, proto: &mut proto::Connection<DriverTokens>, now: Instant) {
        loop {
            match decode_frame(&mut self.read_buf, proto.limits()) {
                Ok(Some(frame)) => proto.handle_frame(now, frame),
                Ok(None) => break,
                Err(e) => {
                    proto.handle_decode_error(e);
                    break;
                }
            }
            if proto.is_closed() {
                break;
            }
        }
        if self.read_buf.capacity() - self.read_buf.len() < 4096 {
            self.read_buf.reserve(READ_CHUNK);
        }
    }

    /// Moves output to the write queue and events to their waiters.
    fn pump(&mut self, proto: &mut proto::Connection<DriverTokens>, now: Instant) {
        while let Some(event) = proto.poll_event() {
            self.event(proto, event);
        }
        while let Some(bytes) = proto.poll_transmit(now) {
            self.unwritten += bytes.len();
            self.out.push_back(bytes);
        }
    }

    fn command(&mut self, proto: &mut proto::Connection<DriverTokens>, cmd: Command) {
        match cmd {
            Command::OpenChannel { reply } => {
                let (tx, rx) = oneshot::channel();
                let result = proto.open_channel(tx).map(|key| (key, rx)).map_err(|(e, _)| e);
                let _ = reply.send(result);
            }
            Command::Call { key, method, reply } => proto.call(key, method, reply),
            Command::Consume { key, consume, reply, consumer } => proto.consume(key, consume, reply, consumer),
            Command::Send { key, method } => {
                if let Err(e) = proto.send(key, method) {
                    tracing::debug!(error = %e, "dropped a method for a closed channel");
                }
            }
            Command::Publish { key, frames, confirm } => {
                if let Err((e, Some(token))) = proto.publish(key, frames, confirm) {
                    let _ = token.tx.send(Err(e));
                }
            }
            Command::UpdateSecret { secret, reason, reply } => proto.update_secret(secret, &reason, reply),
            Command::Close { code, text, done } => {
                self.close_waiters.push(done);
                proto.close(Instant::now(), code, &text, None);
            }
        }
    }

    fn all_handles_dropped(&mut self, proto: &mut proto::Connection<DriverTokens>, now: Instant) {
        if self.commands_open {
            self.commands_open = false;
            proto.close(now, ReplyCode::REPLY_SUCCESS, "every handle was dropped", None);
        }
    }

    fn event(&mut self, proto: &mut proto::Connection<DriverTokens>, event: Event<DriverTokens>) {
        match event {
            Event::Connected => {
                self.shared.connected(proto.tuning(), proto.server_properties().clone());
                if let Some(tx) = self.connected.take() {
                    let _ = tx.send(Ok(()));
                }
            }
            Event::Reply(tx, result) => {
                let _ = tx.send(result);
            }
            Event::Confirm(token, result) => {
                let _ = token.tx.send(result);
            }
            Event::Delivery(consumer, item) => self.deliver(proto, consumer, item),
            Event::ConsumerEnded(consumer, reason) => consumer.end(reason),
            Event::Returned(key, content) => self.shared.returned(key, *content),
            Event::ChannelClosed(key, error) => self.shared.channel_closed(key, error),
            Event::ChannelFlow(key, active) => self.shared.channel_flow(key, active),
            Event::Blocked(reason) => self.shared.set_blocked(Some(reason)),
            Event::Unblocked => self.shared.set_blocked(None),
            Event::Closed(error) => {
                if let Some(tx) = self.connected.take() {
                    let _ = tx.send(Err(error.clone()));
                }
                self.shared.closed(&error);
            }
        }
    }

    fn deliver(&mut self, proto: &mut proto::Connection<DriverTokens>, consumer: ConsumerTx, item: DeliveryItem) {
        if !self.stash.is_empty() {
            // Keep order: nothing overtakes what already waits.
            self.stash_push(consumer, item);
            return;
        }
        match consumer.tx.try_send(item) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(item)) => self.stash_push(consumer, item),
            Err(mpsc::error::TrySendError::Closed(item)) => consumer_gone(proto, &consumer, item),
        }
    }

    fn stash_push(&mut self, consumer: ConsumerTx, item: DeliveryItem) {
        self.stashed += stash_cost(&item);
        self.stash.push_back((consumer, item));
    }

    fn unstash(
        &mut self,
        proto: &mut proto::Connection<DriverTokens>,
        permit: Option<mpsc::OwnedPermit<DeliveryItem>>,
    ) {
        let Some((consumer, item)) = self.stash.pop_front() else { return };
        self.stashed -= stash_cost(&item);
        match permit {
            Some(permit) => {
                permit.send(item);
            }
            None => consumer_gone(proto, &consumer, item),
        }
    }

    fn shutdown(&mut self, proto: &mut proto::Connection<DriverTokens>) {
        // Deliveries nobody can take any more: their channel is gone, the broker requeues.
        self.stash.clear();
        self.stashed = 0;
        let error = proto.close_error().cloned().unwrap_or(Error::Timeout("driver stopped"));
        if let Some(tx) = self.connected.take() {
            let _ = tx.send(Err(error.clone()));
        }
        self.shared.closed(&error);
        for done in self.close_waiters.drain(..) {
            let _ = done.send(());
        }
    }
}

fn stash_cost(item: &DeliveryItem) -> usize {
    item.as_ref().map_or(0, |d| d.body.len()).max(STASH_ENTRY_COST)
}

/// The consumer's handle was dropped: give its unacknowledged deliveries back to the queue.
fn consumer_gone(proto: &mut proto::Connection<DriverTokens>, consumer: &ConsumerTx, item: DeliveryItem) {
    if let Ok(delivery) = item {
        if !consumer.no_ack {
            let reject = basic::Reject { delivery_tag: delivery.delivery_tag, requeue: true };
            let _ = proto.send(delivery.channel, reject.into());
        }
        consumer.cancel_once(proto, delivery.channel, delivery.consumer_tag);
    }
}
