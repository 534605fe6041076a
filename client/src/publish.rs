//! Publishing on a [`Channel`]: encoding on the caller's side, the waits a publish may make
//! (a blocked connection, a paused channel, the confirm window, the publish budget), and
//! handing the frames to the driver.

use bytes::{Bytes, BytesMut};
use lepus_codec::{encode_publish, encode_publish_vectored, method::basic};
use tokio::sync::{OwnedSemaphorePermit, TryAcquireError, oneshot};

use crate::{
    Channel, Error, PublishOptions, PublisherConfirm,
    channel_shared::ChannelShared,
    command::{AwaitedConfirm, Command, ConfirmTx, PublishFrames, Resend},
    command_queue::Wake,
    connection::short,
    deadline::within,
    encode_chunk,
    proto::ReturnKey,
};

/// Bodies above this go to the socket as slices of themselves instead of being copied
/// into the frame buffer.
const VECTORED_BODY: usize = 16 * 1024;

impl Channel {
    /// Publishes a message. The body is not copied on its way to the socket when it is
    /// large; small bodies are copied once, into the frame buffer.
    ///
    /// Returns once the frames are queued for the socket — waiting first while the broker
    /// blocks the connection or pauses the channel, in confirm mode while the in-flight
    /// window is full, and while the connection already holds its limit of unsent
    /// publishes. The [`PublisherConfirm`] resolves to the broker's verdict (or
    /// [`crate::Confirmation::NotRequested`] outside confirm mode).
    ///
    /// On the multi-thread runtime the frames may wait for the connection's next turn rather
    /// than wake it: in confirm mode while other confirms are awaited, and outside it while
    /// the connection is taking a stream of publishes (eight or more at its last turn). They
    /// go out with the broker's next confirm, when this task waits for a confirm, for the
    /// window or for a consumer's next delivery, or at the latest about a millisecond
    /// later.
    ///
    /// An `Err` means the message was not handed to the connection: nothing was sent, so
    /// publishing it again cannot duplicate it. Once `Ok` is returned, only the confirm
    /// says what became of it. The handle's deadline ([`Channel::with_timeout`]) bounds
    /// every wait, the confirm's included.
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
        // Nothing is sent before the last await, so a publish abandoned at its deadline
        // was not sent.
        if !shared.conn.is_down() && !shared.conn.is_blocked() && shared.flow_active() {
            // The common case waits for nothing, and is done without building (and moving)
            // the waiting path's future.
            let encoded = self.encode(exchange, routing_key, &body, options)?;
            return match self.try_send(encoded)? {
                Ok(confirm) => Ok(confirm),
                Err((encoded, window)) => {
                    within(self.timeout, "basic_publish", self.send_when_room(encoded, window)).await
                }
            };
        }
        within(self.timeout, "basic_publish", self.publish(exchange, routing_key, body, options)).await
    }

    /// The waiting path: for the connection to be up and unblocked and the channel not
    /// paused, then for room in the window and the budget.
    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: Bytes,
        options: PublishOptions,
    ) -> Result<PublisherConfirm, Error> {
        wait_publishable(self.shared()).await?;
        let encoded = self.encode(exchange, routing_key, &body, options)?;
        self.send_when_room(encoded, None).await
    }

    /// Encodes a publish's frames, with what its confirm needs.
    fn encode(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &Bytes,
        options: PublishOptions,
    ) -> Result<Encoded, Error> {
        let shared = self.shared();
        // A server-named queue that recovery renamed is reached by its old name too.
        let routing_key =
            if exchange.is_empty() { shared.conn.current_queue_name(routing_key) } else { routing_key.into() };
        let mut options = options;
        if let Some(reply_to) = options.properties.reply_to.as_ref().and_then(|r| r.as_str())
            && let std::borrow::Cow::Owned(current) = shared.conn.current_queue_name(reply_to)
        {
            options.properties.reply_to = Some(short(&current)?);
        }
        let publish = basic::Publish {
            ticket: 0,
            exchange: short(exchange)?,
            routing_key: short(&routing_key)?,
            mandatory: options.mandatory,
            immediate: false,
        };
        let frame_max = shared.conn.frame_max();
        let confirm_mode = shared.confirm_mode();
        let (frames, size) = if body.len() > VECTORED_BODY {
            let mut buf = BytesMut::with_capacity(512);
            let mut segments = Vec::with_capacity(4);
            encode_publish_vectored(
                &mut buf,
                shared.key().id,
                &publish,
                &options.properties,
                body,
                frame_max,
                &mut segments,
            )?;
            (PublishFrames::Many(segments), body.len() + buf.len())
        } else {
            // Kept for republishing, the frames must not pin a shared chunk.
            let shared_chunk = !(shared.conn.limits.republish && confirm_mode);
            let bytes = encode_chunk::encode(body.len() + 96, shared_chunk, |buf| {
                encode_publish(buf, shared.key().id, &publish, &options.properties, body, frame_max)
            })?;
            let len = bytes.len();
            (PublishFrames::One(bytes), len)
        };
        let return_key = (confirm_mode && options.mandatory).then(|| {
            Box::new(ReturnKey {
                exchange: publish.exchange,
                routing_key: publish.routing_key,
                body_size: body.len() as u64,
            })
        });
        Ok(Encoded { frames, size, body_bytes: body.len(), confirm_mode, return_key })
    }

    /// Sends an encoded publish if its window place (in confirm mode) and its budget can be
    /// taken without waiting; else hands it back, with the window place if that was taken.
    #[allow(clippy::type_complexity)]
    fn try_send(
        &self,
        encoded: Encoded,
    ) -> Result<Result<PublisherConfirm, (Encoded, Option<OwnedSemaphorePermit>)>, Error> {
        let shared = self.shared();
        let window = if encoded.confirm_mode {
            match shared.window.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(TryAcquireError::NoPermits) => return Ok(Err((encoded, None))),
                Err(TryAcquireError::Closed) => return Err(shared.close_reason_or_closed()),
            }
        } else {
            None
        };
        let budget = encoded.budget(shared);
        match shared.conn.publish_budget.try_acquire_many(budget) {
            Ok(permit) => {
                // The driver gives these back when it takes the publish (see the Publish command).
                permit.forget();
                self.send(encoded, window, budget).map(Ok)
            }
            Err(TryAcquireError::NoPermits) => Ok(Err((encoded, window))),
            Err(TryAcquireError::Closed) => Err(shared.close_reason_or_closed()),
        }
    }

    /// Waits for the window place (in confirm mode, unless `window` holds it) and the
    /// budget, then sends.
    async fn send_when_room(
        &self,
        encoded: Encoded,
        window: Option<OwnedSemaphorePermit>,
    ) -> Result<PublisherConfirm, Error> {
        let shared = self.shared();
        let window = match window {
            Some(permit) => Some(permit),
            None if encoded.confirm_mode => {
                if shared.window.available_permits() == 0 {
                    // What this publisher deferred may be what the window waits for.
                    shared.conn.commands.publisher_waits();
                }
                Some(shared.window.clone().acquire_owned().await.map_err(|_| shared.close_reason_or_closed())?)
            }
            None => None,
        };
        // The budget is taken last: a publish waiting for window space must not hold bytes
        // that other channels' publishes could use.
        let budget = encoded.budget(shared);
        if shared.conn.publish_budget.available_permits() < budget as usize {
            // The driver gives the budget back as it takes publishes, deferred ones too.
            shared.conn.commands.budget_waits();
        }
        let permit =
            shared.conn.publish_budget.acquire_many(budget).await.map_err(|_| shared.close_reason_or_closed())?;
        // The driver gives these back when it takes the publish (see the Publish command).
        permit.forget();
        self.send(encoded, window, budget)
    }

    /// Hands an encoded publish to the driver, with its confirm's waiter in confirm mode
    /// (`window` is then its place in the window). `budget` bytes were taken for it.
    fn send(
        &self,
        encoded: Encoded,
        window: Option<OwnedSemaphorePermit>,
        budget: u32,
    ) -> Result<PublisherConfirm, Error> {
        let shared = self.shared();
        let Encoded { frames, body_bytes, return_key, .. } = encoded;
        let channel = self.link.shared.clone();
        let Some(permit) = window else {
            self.link.commands.defer(Command::Publish { channel, frames, confirm: None, budget }, Wake::Stream)?;
            published(shared, body_bytes);
            return Ok(PublisherConfirm::not_requested(shared.conn.clone()));
        };
        let (tx, rx) = oneshot::channel();
        let resend = shared.conn.limits.republish.then(|| Resend {
            channel: self.link.shared.clone(),
            frames: frames.clone(),
            return_key: return_key.clone(),
        });
        let awaited = AwaitedConfirm::new(&shared.conn);
        let token = ConfirmTx { tx, _permit: permit, resend, _awaited: awaited };
        // Its confirm is awaited: the driver will look soon anyway, for the broker's acks
        // (see `command_queue/mod.rs`).
        let cmd = Command::Publish { channel, frames, confirm: Some((token, return_key)), budget };
        self.link.commands.defer(cmd, Wake::Publish)?;
        published(shared, body_bytes);
        Ok(PublisherConfirm::pending(rx, shared.conn.clone(), self.timeout))
    }
}

/// A publish's frames, encoded, with what sending it needs.
struct Encoded {
    frames: PublishFrames,
    /// Bytes of its frames.
    size: usize,
    body_bytes: usize,
    /// Whether the channel was in confirm mode when it was encoded.
    confirm_mode: bool,
    /// In confirm mode, what recognises its `basic.return` if it is mandatory.
    return_key: Option<Box<ReturnKey>>,
}

impl Encoded {
    /// The bytes of the connection's publish budget it takes.
    fn budget(&self, shared: &ChannelShared) -> u32 {
        // The budget's limit is a u32 (see `Limits::publish_budget`'s check).
        self.size.min(shared.conn.limits.publish_budget) as u32
    }
}

/// Counts a publish handed to the driver (one branch when no metrics hook is set).
#[inline]
fn published(shared: &ChannelShared, body_bytes: usize) {
    if let Some(metrics) = shared.conn.metrics() {
        metrics.published(body_bytes);
    }
}

/// Waits while the broker blocks the connection or pauses this channel. The common case
/// costs two watch reads and no subscription; a wait ends when the block lifts, or when the
/// channel or the connection closes (which then is the error).
async fn wait_publishable(shared: &ChannelShared) -> Result<(), Error> {
    shared.conn.wait_up().await?;
    if shared.conn.is_blocked() {
        let mut blocked = shared.conn.blocked_rx();
        let mut closed = shared.closed_rx();
        let wait = async {
            // The connection closing also clears `blocked` (see ConnShared::closed).
            tokio::select! {
                _ = blocked.wait_for(Option::is_none) => {}
                _ = closed.wait_for(Option::is_some) => {}
            }
        };
        if let Some(limit) = shared.conn.limits.blocked_timeout {
            if tokio::time::timeout(limit, wait).await.is_err() {
                shared.check_open()?;
                return Err(Error::Timeout("publishing while the broker blocks the connection"));
            }
        } else {
            wait.await;
        }
    }
    if !shared.flow_active() {
        let mut flow = shared.flow_rx();
        let _ = flow.wait_for(|active| *active).await;
    }
    shared.check_open()
}
