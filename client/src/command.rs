//! What crosses between the handles and the driver task: the commands handles send, the
//! waiters those commands carry, and the tokens the driver gives the state machine.
//!
//! Every command goes through the connection's one ordered queue (`command_queue/mod.rs`), so
//! that nothing overtakes what was sent before it (an ack, then a close, arrive in that
//! order); that module also says when a command wakes the driver.

use std::{collections::VecDeque, sync::Arc};

use bytes::Bytes;
use lepus_codec::{Method, ReplyCode, ShortStr, method::basic};
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use crate::{
    Error,
    channel_shared::ChannelShared,
    command_queue::Wake,
    conn_shared::ConnShared,
    delivery_queue::{DeliveryItem, DeliveryQueue},
    proto::{self, ChannelKey, Reply, ReturnKey, Tokens},
};

/// A synchronous method's reply, or the error that prevented it.
pub(crate) type CallResult = Result<Reply, Error>;

/// Commands a handle gives the driver; each carries what the driver answers on.
pub(crate) enum Command {
    /// Opens a channel; `reply` gets open-ok. The driver sets the channel's key.
    OpenChannel { channel: Arc<ChannelShared>, reply: oneshot::Sender<CallResult> },
    /// A synchronous method (or a nowait one, answered with `Reply::Sent`).
    Call { channel: Arc<ChannelShared>, method: Method, reply: oneshot::Sender<CallResult> },
    /// basic.consume with the queue its deliveries go to.
    Consume {
        channel: Arc<ChannelShared>,
        consume: basic::Consume,
        reply: oneshot::Sender<CallResult>,
        queue: Arc<DeliveryQueue>,
    },
    /// An ack, nack or reject for a delivery that came on incarnation `key`; refused if
    /// that incarnation is no longer open, so a stale tag never reaches the broker.
    Settle { key: ChannelKey, method: Method },
    /// Pre-encoded publish frames, with a confirm waiter in confirm mode. `budget` bytes of
    /// the connection's publish budget were taken for it.
    Publish {
        channel: Arc<ChannelShared>,
        frames: PublishFrames,
        confirm: Option<(ConfirmTx, Option<Box<ReturnKey>>)>,
        budget: u32,
    },
    /// connection.update-secret.
    UpdateSecret { secret: Bytes, reason: String, reply: oneshot::Sender<CallResult> },
    /// connection.close; `done` learns whether the broker confirmed it.
    Close { code: ReplyCode, text: String, done: oneshot::Sender<Result<(), Error>> },
    /// The last handle of a channel was dropped: close it.
    ChannelDropped { channel: Arc<ChannelShared> },
    /// A consumer was dropped: give back what it had not read, and cancel it.
    ConsumerDropped(Released),
}

/// What a dropped consumer hands back.
pub(crate) struct Released {
    pub(crate) queue: Arc<DeliveryQueue>,
    pub(crate) channel: Arc<ChannelShared>,
    pub(crate) tag: ShortStr,
    /// Deliveries queued for it and never read: they go back to the broker.
    pub(crate) items: VecDeque<DeliveryItem>,
    /// Whether a `basic.cancel` is still to be sent.
    pub(crate) cancel: bool,
}

/// The frames of one publish: one buffer for small bodies, envelope and body slices for
/// large ones. Cloning shares the bytes.
#[derive(Clone)]
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

/// A confirm waiter; it holds its place in the channel's in-flight window until resolved.
pub(crate) struct ConfirmTx {
    pub(crate) tx: oneshot::Sender<Result<proto::Confirmation, Error>>,
    pub(crate) _permit: OwnedSemaphorePermit,
    /// What is needed to publish it again after a recovery, when the connection's policy
    /// republishes unconfirmed messages.
    pub(crate) resend: Option<Resend>,
    /// Counts the confirm as awaited until this waiter is gone.
    pub(crate) _awaited: AwaitedConfirm,
}

/// A confirm counted as awaited on its connection (see `command_queue/mod.rs`) for as long as
/// this lives: whatever ends its waiter (an answer, a failure, the connection dropped)
/// drops it.
pub(crate) struct AwaitedConfirm(Option<Arc<ConnShared>>);

impl AwaitedConfirm {
    pub(crate) fn new(conn: &Arc<ConnShared>) -> Self {
        conn.commands.confirm_awaited();
        AwaitedConfirm(Some(conn.clone()))
    }

    /// Gives up the count without settling it: the caller settles a batch of them at once
    /// on the connection returned (`CommandQueue::confirms_settled`).
    pub(crate) fn settle_later(mut self) -> Option<Arc<ConnShared>> {
        self.0.take()
    }
}

impl Drop for AwaitedConfirm {
    fn drop(&mut self) {
        if let Some(conn) = &self.0 {
            conn.commands.confirms_settled(1);
        }
    }
}

/// A publish kept for republishing (its frames share the caller's bytes).
pub(crate) struct Resend {
    pub(crate) channel: Arc<ChannelShared>,
    pub(crate) frames: PublishFrames,
    pub(crate) return_key: Option<Box<ReturnKey>>,
}

/// Who waits for a synchronous method's reply, and what the driver records from it.
pub(crate) enum ReplyTo {
    /// A handle's call. `record` holds the request when its success changes the topology
    /// that recovery re-declares (declare, bind, delete, qos, confirm/tx select).
    Call { tx: oneshot::Sender<CallResult>, record: Option<(Arc<ChannelShared>, Method)> },
    /// `channel.open`: a handle's (`tx`), or recovery reopening the channel (`None`).
    Open { tx: Option<oneshot::Sender<CallResult>>, channel: Arc<ChannelShared> },
    /// `basic.consume`: on consume-ok the consumer is recorded for recovery.
    Consume {
        tx: Option<oneshot::Sender<CallResult>>,
        channel: Arc<ChannelShared>,
        consume: basic::Consume,
        queue: Arc<DeliveryQueue>,
    },
    /// A step of a recovery's replay.
    Replay,
    /// Nobody waits (a close or cancel sent when a handle was dropped).
    Nobody,
}

/// The driver's tokens: oneshot senders for replies and confirms, the channel's shared state
/// for channels, the consumer's queue for consumers.
pub(crate) struct DriverTokens;

impl Tokens for DriverTokens {
    type Channel = Arc<ChannelShared>;
    type Reply = ReplyTo;
    type Confirm = ConfirmTx;
    type Consumer = Arc<DeliveryQueue>;
}

/// The handles' way to the driver. Only handles hold one: when the last is dropped, the
/// driver closes the connection.
pub(crate) struct CommandSender {
    pub(crate) conn: Arc<ConnShared>,
}

impl CommandSender {
    pub(crate) fn new(conn: Arc<ConnShared>) -> Self {
        conn.commands.sender_added();
        CommandSender { conn }
    }

    /// Queues a command that wakes the driver; fails with the close reason once the driver
    /// has stopped. Never waits, so it can be used from `Drop`.
    pub(crate) fn send(&self, cmd: Command) -> Result<(), Error> {
        self.push(cmd, Wake::Now)
    }

    /// Queues a command, waking the driver as `wake` says (see `command_queue/mod.rs`).
    fn push(&self, cmd: Command, wake: Wake) -> Result<(), Error> {
        self.conn.commands.push(cmd, wake).map_err(|_| self.conn.closed_error())
    }

    /// Queues a command of a kind that may wait for a driver that will look soon anyway
    /// (`Wake::Settlement`, `Wake::Publish` or `Wake::Stream`). While the connection is down
    /// it wakes the driver like any command: the driver applies a settlement at once (and
    /// refuses a stale one), and holds a publish back until the recovery is done.
    pub(crate) fn defer(&self, cmd: Command, wake: Wake) -> Result<(), Error> {
        self.push(cmd, if self.conn.is_down() { Wake::Now } else { wake })
    }

    /// Queues a settlement (see [`CommandSender::defer`]).
    pub(crate) fn settle(&self, key: ChannelKey, method: Method) -> Result<(), Error> {
        self.defer(Command::Settle { key, method }, Wake::Settlement)
    }
}

impl Clone for CommandSender {
    fn clone(&self) -> Self {
        CommandSender::new(self.conn.clone())
    }
}

impl Drop for CommandSender {
    fn drop(&mut self) {
        self.conn.commands.sender_dropped();
    }
}
