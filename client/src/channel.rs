//! `Channel`: declare and bind, consume, get, publish (with confirms), transactions.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use lepus_codec::{
    Content, FieldTable, Method, ReplyCode, encode_publish, encode_publish_vectored,
    method::{basic, channel as chan, confirm, exchange, queue, tx},
};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::{
    ConsumeOptions, Consumer, Delivery, Error, ExchangeDeclareOptions, ExchangeKind, PublishOptions, PublisherConfirm,
    QueueDeclareOptions, QueueDeclared, QueueDeleteOptions, Returns,
    confirm::ReturnedMessage,
    connection::{Commands, ConnShared, short},
    consumer::{Acker, ConsumerShared, ConsumerTx},
    driver::{Command, ConfirmTx, PublishFrames},
    proto::{ChannelKey, Reply, ReturnKey},
};

/// Bodies above this go to the socket as slices of themselves instead of being copied
/// into the frame buffer.
const VECTORED_BODY: usize = 16 * 1024;
/// Returned messages kept for a channel's [`Returns`] stream before new ones are dropped.
const RETURNS_CAPACITY: usize = 256;

/// State of one channel shared by its handles and the driver.
pub(crate) struct ChannelShared {
    pub(crate) key: ChannelKey,
    pub(crate) conn: Arc<ConnShared>,
    closed: watch::Sender<Option<Error>>,
    flow: watch::Sender<bool>,
    window: Arc<Semaphore>,
    confirm_mode: AtomicBool,
    returns_tx: mpsc::Sender<ReturnedMessage>,
    returns_rx: Mutex<Option<mpsc::Receiver<ReturnedMessage>>>,
    returns_dropped: AtomicU64,
    /// The highest delivery tag a `multiple` ack or nack has settled on this channel: every
    /// tag up to it is settled, so settling one of them again would draw a 406.
    settled_through: AtomicU64,
}

impl ChannelShared {
    pub(crate) fn new(key: ChannelKey, conn: Arc<ConnShared>) -> Arc<Self> {
        let (returns_tx, returns_rx) = mpsc::channel(RETURNS_CAPACITY);
        let window = Arc::new(Semaphore::new(conn.publish_window));
        Arc::new(ChannelShared {
            key,
            conn,
            closed: watch::Sender::new(None),
            flow: watch::Sender::new(true),
            window,
            confirm_mode: AtomicBool::new(false),
            returns_tx,
            returns_rx: Mutex::new(Some(returns_rx)),
            returns_dropped: AtomicU64::new(0),
            settled_through: AtomicU64::new(0),
        })
    }

    pub(crate) fn closed(&self, error: Error) {
        self.closed.send_if_modified(|c| {
            if c.is_none() {
                *c = Some(error);
                true
            } else {
                false
            }
        });
        // Publishers waiting for window space or flow must wake up and see the close.
        self.window.close();
        self.flow.send_replace(true);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.borrow().is_some()
    }

    pub(crate) fn check_open(&self) -> Result<(), Error> {
        match &*self.closed.borrow() {
            Some(e) => Err(e.clone()),
            None => self.conn.check_open(),
        }
    }

    /// Whether a `multiple` ack or nack on this channel already covered `delivery_tag`.
    pub(crate) fn covered_by_multiple(&self, delivery_tag: u64) -> bool {
        delivery_tag <= self.settled_through.load(Ordering::Acquire)
    }

    /// Records a `multiple` ack or nack up to `delivery_tag`.
    pub(crate) fn settled_through(&self, delivery_tag: u64) {
        self.settled_through.fetch_max(delivery_tag, Ordering::AcqRel);
    }

    pub(crate) fn set_flow(&self, active: bool) {
        self.flow.send_replace(active);
    }

    pub(crate) fn returned(&self, content: Content) {
        if self.returns_tx.try_send(ReturnedMessage::from_content(content)).is_err() {
            let dropped = self.returns_dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(channel = self.key.id, dropped, "returned message dropped: nobody reads Channel::returns");
        }
    }

    /// Waits while the broker blocks the connection or pauses this channel. The common
    /// case costs two watch reads and no subscription; a wait ends when the block lifts,
    /// or when the channel or the connection closes (which then is the error).
    async fn wait_publishable(&self) -> Result<(), Error> {
        if self.conn.is_blocked() {
            let mut blocked = self.conn.blocked_rx();
            let mut closed = self.closed.subscribe();
            let wait = async {
                // The connection closing also clears `blocked` (see ConnShared::closed).
                tokio::select! {
                    _ = blocked.wait_for(Option::is_none) => {}
                    _ = closed.wait_for(Option::is_some) => {}
                }
            };
            if let Some(limit) = self.conn.blocked_timeout {
                if tokio::time::timeout(limit, wait).await.is_err() {
                    self.check_open()?;
                    return Err(Error::Timeout("publishing while the broker blocks the connection"));
                }
            } else {
                wait.await;
            }
        }
        if !*self.flow.borrow() {
            let mut flow = self.flow.subscribe();
            let _ = flow.wait_for(|active| *active).await;
        }
        self.check_open()
    }
}

/// Keeps a channel open while any handle, consumer or delivery of it lives; the last one
/// dropped closes the channel.
pub(crate) struct ChannelGuard {
    pub(crate) shared: Arc<ChannelShared>,
    pub(crate) commands: Commands,
}

impl ChannelGuard {
    /// A synchronous call: the reply, or the error that closed the channel first.
    pub(crate) async fn call(&self, method: Method) -> Result<Reply, Error> {
        self.shared.check_open()?;
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Call { key: self.shared.key, method, reply: tx }).await?;
        rx.await.map_err(|_| self.shared.conn.closed_error())?
    }
}

impl Drop for ChannelGuard {
    fn drop(&mut self) {
        if self.shared.is_closed() {
            return;
        }
        let (tx, _rx) = oneshot::channel();
        let cmd = Command::Call { key: self.shared.key, method: chan::Close::default().into(), reply: tx };
        // No runtime needed: if the queue is full, the channel closes with the connection.
        let _ = self.commands.try_send(cmd);
    }
}

/// An AMQP channel. Cheap to clone; clones share the channel. It closes when
/// [`Channel::close`] is called, when the broker closes it (e.g. 404), or when the last
/// clone, consumer and delivery of it are dropped.
#[derive(Clone)]
pub struct Channel {
    guard: Arc<ChannelGuard>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("id", &self.guard.shared.key.id).finish_non_exhaustive()
    }
}

fn unexpected(reply: &Reply) -> Error {
    let name = match reply {
        Reply::Method(m) => m.name(),
        Reply::Get(_) => "basic.get-ok",
        Reply::Sent => "nothing",
    };
    Error::Protocol { reply_code: ReplyCode::COMMAND_INVALID, text: format!("unexpected reply {name}") }
}

impl Channel {
    pub(crate) fn new(shared: Arc<ChannelShared>, commands: Commands) -> Self {
        Channel { guard: Arc::new(ChannelGuard { shared, commands }) }
    }

    fn shared(&self) -> &ChannelShared {
        &self.guard.shared
    }

    /// The channel number.
    pub fn id(&self) -> u16 {
        self.shared().key.id
    }

    /// True until the channel closes.
    pub fn is_open(&self) -> bool {
        self.shared().check_open().is_ok()
    }

    /// Why the channel closed, once it has.
    pub fn close_reason(&self) -> Option<Error> {
        self.shared().check_open().err()
    }

    async fn call_ok(&self, method: Method) -> Result<(), Error> {
        self.guard.call(method).await.map(|_| ())
    }

    /// Declares an exchange.
    pub async fn exchange_declare(
        &self,
        name: &str,
        kind: ExchangeKind,
        options: ExchangeDeclareOptions,
        arguments: FieldTable,
    ) -> Result<(), Error> {
        let m = exchange::Declare {
            ticket: 0,
            exchange: short(name)?,
            kind: short(kind.as_str())?,
            passive: options.passive,
            durable: options.durable,
            auto_delete: options.auto_delete,
            internal: options.internal,
            nowait: options.nowait,
            arguments,
        };
        self.call_ok(m.into()).await
    }

    /// Deletes an exchange (`if_unused`: only when it has no bindings).
    pub async fn exchange_delete(&self, name: &str, if_unused: bool) -> Result<(), Error> {
        self.call_ok(exchange::Delete { exchange: short(name)?, if_unused, ..Default::default() }.into()).await
    }

    /// Binds exchange `destination` to `source` with a routing key.
    pub async fn exchange_bind(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), Error> {
        let m = exchange::Bind {
            destination: short(destination)?,
            source: short(source)?,
            routing_key: short(routing_key)?,
            arguments,
            ..Default::default()
        };
        self.call_ok(m.into()).await
    }

    /// Removes an exchange-to-exchange binding.
    pub async fn exchange_unbind(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), Error> {
        let m = exchange::Unbind {
            destination: short(destination)?,
            source: short(source)?,
            routing_key: short(routing_key)?,
            arguments,
            ..Default::default()
        };
        self.call_ok(m.into()).await
    }

    /// Declares a queue; an empty name asks the broker to name it.
    pub async fn queue_declare(
        &self,
        name: &str,
        options: QueueDeclareOptions,
        arguments: FieldTable,
    ) -> Result<QueueDeclared, Error> {
        let m = queue::Declare {
            ticket: 0,
            queue: short(name)?,
            passive: options.passive,
            durable: options.durable,
            exclusive: options.exclusive,
            auto_delete: options.auto_delete,
            nowait: options.nowait,
            arguments,
        };
        match self.guard.call(m.into()).await? {
            Reply::Method(Method::QueueDeclareOk(ok)) => Ok(QueueDeclared {
                name: ok.queue.to_string(),
                message_count: ok.message_count,
                consumer_count: ok.consumer_count,
            }),
            Reply::Sent => Ok(QueueDeclared { name: name.to_owned(), message_count: 0, consumer_count: 0 }),
            other => Err(unexpected(&other)),
        }
    }

    /// Binds a queue to an exchange.
    pub async fn queue_bind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), Error> {
        let m = queue::Bind {
            queue: short(queue)?,
            exchange: short(exchange)?,
            routing_key: short(routing_key)?,
            arguments,
            ..Default::default()
        };
        self.call_ok(m.into()).await
    }

    /// Removes a queue binding.
    pub async fn queue_unbind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), Error> {
        let m = queue::Unbind {
            queue: short(queue)?,
            exchange: short(exchange)?,
            routing_key: short(routing_key)?,
            arguments,
            ..Default::default()
        };
        self.call_ok(m.into()).await
    }

    /// Removes every ready message; returns how many.
    pub async fn queue_purge(&self, queue: &str) -> Result<u32, Error> {
        match self.guard.call(queue::Purge { queue: short(queue)?, ..Default::default() }.into()).await? {
            Reply::Method(Method::QueuePurgeOk(ok)) => Ok(ok.message_count),
            other => Err(unexpected(&other)),
        }
    }

    /// Deletes a queue; returns how many messages went with it.
    pub async fn queue_delete(&self, queue: &str, options: QueueDeleteOptions) -> Result<u32, Error> {
        let m = queue::Delete {
            queue: short(queue)?,
            if_unused: options.if_unused,
            if_empty: options.if_empty,
            ..Default::default()
        };
        match self.guard.call(m.into()).await? {
            Reply::Method(Method::QueueDeleteOk(ok)) => Ok(ok.message_count),
            other => Err(unexpected(&other)),
        }
    }

    /// Sets the prefetch: per consumer (`global == false`, RabbitMQ's meaning) or per channel.
    pub async fn basic_qos(&self, prefetch_count: u16, global: bool) -> Result<(), Error> {
        self.call_ok(basic::Qos { prefetch_size: 0, prefetch_count, global }.into()).await
    }

    /// Starts a consumer on a queue.
    pub async fn basic_consume(&self, queue: &str, options: ConsumeOptions) -> Result<Consumer, Error> {
        let shared = self.shared();
        shared.check_open()?;
        let (tx, rx) = mpsc::channel(options.buffer.max(1));
        let consumer_shared = Arc::new(ConsumerShared::default());
        let consumer = ConsumerTx { tx, no_ack: options.no_ack, shared: consumer_shared.clone() };
        let consume = basic::Consume {
            ticket: 0,
            queue: short(queue)?,
            consumer_tag: short(&options.consumer_tag)?,
            no_local: false,
            no_ack: options.no_ack,
            exclusive: options.exclusive,
            nowait: false,
            arguments: options.arguments,
        };
        let (reply, reply_rx) = oneshot::channel();
        self.guard.commands.send(Command::Consume { key: shared.key, consume, reply, consumer }).await?;
        match reply_rx.await.map_err(|_| shared.conn.closed_error())?? {
            Reply::Method(Method::BasicConsumeOk(ok)) => {
                Ok(Consumer::new(ok.consumer_tag, rx, consumer_shared, self.guard.clone(), options.no_ack))
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Fetches one message, or `None` if the queue is empty. The message count is what
    /// remained in the queue.
    pub async fn basic_get(&self, queue: &str, no_ack: bool) -> Result<Option<(Delivery, u32)>, Error> {
        match self.guard.call(basic::Get { queue: short(queue)?, no_ack, ..Default::default() }.into()).await? {
            Reply::Get(content) => {
                let Content { method: Method::BasicGetOk(ok), header, body } = *content else {
                    return Err(Error::Protocol { reply_code: ReplyCode::COMMAND_INVALID, text: "bad get-ok".into() });
                };
                let delivery = crate::proto::Delivery {
                    channel: self.shared().key,
                    consumer_tag: lepus_codec::ShortStr::new(),
                    delivery_tag: ok.delivery_tag,
                    redelivered: ok.redelivered,
                    exchange: ok.exchange,
                    routing_key: ok.routing_key,
                    properties: header.properties,
                    body,
                };
                let acker = Acker { channel: self.guard.clone(), key: self.shared().key, no_ack };
                Ok(Some((Delivery::new(delivery, acker), ok.message_count)))
            }
            Reply::Method(Method::BasicGetEmpty(_)) => Ok(None),
            other => Err(unexpected(&other)),
        }
    }

    /// Acknowledges by tag (for deliveries already dropped; prefer [`Delivery::ack`], which
    /// refuses to settle a delivery twice). With `multiple`, later [`Delivery::ack`]s of the
    /// covered deliveries return [`Error::AlreadySettled`] instead of reaching the broker.
    pub async fn basic_ack(&self, delivery_tag: u64, multiple: bool) -> Result<(), Error> {
        if multiple {
            self.shared().settled_through(delivery_tag);
        }
        self.settle(basic::Ack { delivery_tag, multiple }.into()).await
    }

    /// Negatively acknowledges by tag (see [`Channel::basic_ack`] on `multiple`).
    pub async fn basic_nack(&self, delivery_tag: u64, multiple: bool, requeue: bool) -> Result<(), Error> {
        if multiple {
            self.shared().settled_through(delivery_tag);
        }
        self.settle(basic::Nack { delivery_tag, multiple, requeue }.into()).await
    }

    /// Rejects by tag.
    pub async fn basic_reject(&self, delivery_tag: u64, requeue: bool) -> Result<(), Error> {
        self.settle(basic::Reject { delivery_tag, requeue }.into()).await
    }

    async fn settle(&self, method: Method) -> Result<(), Error> {
        let shared = self.shared();
        shared.check_open()?;
        self.guard.commands.send(Command::Send { key: shared.key, method }).await
    }

    /// Redelivers every unacknowledged message of the channel.
    pub async fn basic_recover(&self, requeue: bool) -> Result<(), Error> {
        self.call_ok(basic::Recover { requeue }.into()).await
    }

    /// Puts the channel in confirm mode: every publish resolves to the broker's verdict.
    pub async fn confirm_select(&self) -> Result<(), Error> {
        let shared = self.shared();
        shared.check_open()?;
        let (tx, rx) = oneshot::channel();
        self.guard
            .commands
            .send(Command::Call { key: shared.key, method: confirm::Select::default().into(), reply: tx })
            .await?;
        // Publishes queued after the select are in confirm mode on the wire too.
        shared.confirm_mode.store(true, Ordering::Release);
        rx.await.map_err(|_| shared.conn.closed_error())?.map(|_| ())
    }

    /// Puts the channel in transactional mode.
    pub async fn tx_select(&self) -> Result<(), Error> {
        self.call_ok(tx::Select {}.into()).await
    }

    /// Commits the current transaction.
    pub async fn tx_commit(&self) -> Result<(), Error> {
        self.call_ok(tx::Commit {}.into()).await
    }

    /// Rolls the current transaction back.
    pub async fn tx_rollback(&self) -> Result<(), Error> {
        self.call_ok(tx::Rollback {}.into()).await
    }

    /// Publishes a message. The body is not copied on its way to the socket when it is
    /// large; small bodies are copied once, into the frame buffer.
    ///
    /// Returns once the frames are queued for the socket — waiting first while the broker
    /// blocks the connection or pauses the channel, and, in confirm mode, while the
    /// in-flight window is full. The [`PublisherConfirm`] resolves to the broker's verdict
    /// (or [`crate::Confirmation::NotRequested`] outside confirm mode).
    ///
    /// An `Err` means the message was not handed to the connection: nothing was sent, so
    /// publishing it again cannot duplicate it. Once `Ok` is returned, only the confirm
    /// says what became of it.
    pub async fn basic_publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: impl Into<Bytes>,
        options: PublishOptions,
    ) -> Result<PublisherConfirm, Error> {
        let body = body.into();
        let shared = self.shared();
        shared.check_open()?;
        shared.wait_publishable().await?;
        let publish = basic::Publish {
            ticket: 0,
            exchange: short(exchange)?,
            routing_key: short(routing_key)?,
            mandatory: options.mandatory,
            immediate: false,
        };
        let frame_max = shared.conn.tuning().frame_max;
        let frames = if body.len() > VECTORED_BODY {
            let mut buf = BytesMut::with_capacity(512);
            let mut segments = Vec::with_capacity(4);
            encode_publish_vectored(
                &mut buf,
                shared.key.id,
                &publish,
                &options.properties,
                &body,
                frame_max,
                &mut segments,
            )?;
            PublishFrames::Many(segments)
        } else {
            let mut buf = BytesMut::with_capacity(body.len() + 96);
            encode_publish(&mut buf, shared.key.id, &publish, &options.properties, &body, frame_max)?;
            PublishFrames::One(buf.freeze())
        };
        if !shared.confirm_mode.load(Ordering::Acquire) {
            self.guard.commands.send(Command::Publish { key: shared.key, frames, confirm: None }).await?;
            return Ok(PublisherConfirm::not_requested(shared.conn.clone()));
        }
        let permit = shared.window.clone().acquire_owned().await.map_err(|_| self.close_reason_or_closed())?;
        let return_key = options.mandatory.then(|| ReturnKey {
            exchange: publish.exchange.clone(),
            routing_key: publish.routing_key.clone(),
            body_size: body.len() as u64,
        });
        let (tx, rx) = oneshot::channel();
        let confirm = Some((ConfirmTx { tx, _permit: Some(permit) }, return_key));
        self.guard.commands.send(Command::Publish { key: shared.key, frames, confirm }).await?;
        Ok(PublisherConfirm::pending(rx, shared.conn.clone()))
    }

    fn close_reason_or_closed(&self) -> Error {
        self.shared().check_open().err().unwrap_or_else(|| self.shared().conn.closed_error())
    }

    /// Returned messages (mandatory, unroutable) when the channel is not in confirm mode.
    /// The stream can be taken once; later calls return `None`.
    pub fn returns(&self) -> Option<Returns> {
        let rx = self.shared().returns_rx.lock().unwrap_or_else(PoisonError::into_inner).take()?;
        Some(Returns { rx })
    }

    /// Waits until the broker lets this channel publish again (after `channel.flow`).
    pub fn flow_active(&self) -> bool {
        *self.shared().flow.borrow()
    }

    /// Closes the channel and waits for the broker's close-ok.
    pub async fn close(&self) -> Result<(), Error> {
        match self.guard.call(chan::Close::default().into()).await {
            // A channel that had already closed: closing again is not an error.
            Ok(_) | Err(Error::ChannelClosed(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Waits up to `timeout` for the channel to close; returns why it closed.
    pub async fn closed(&self, timeout: Duration) -> Option<Error> {
        let mut rx = self.shared().closed.subscribe();
        let wait = rx.wait_for(Option::is_some);
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(e)) => e.clone(),
            _ => None,
        }
    }
}
