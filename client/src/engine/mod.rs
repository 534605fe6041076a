//! The connection with its recovery, as a sans-IO machine: everything the driver task does
//! that is not IO. It is fed the handles' commands, the bytes read from the socket, I/O
//! failures, instants and new connections' state machines; it is drained of bytes to write,
//! of the next deadline, of reconnection attempts to make and of socket options to set. It
//! never reads a clock: every method that needs the time is given it.
//!
//! The driver (`crate::driver`) carries it out on a tokio socket; the tests here drive it
//! with a scripted peer and a manual clock (`tests/`).
//!
//! Every way out of a session ends it: once the state machine is closed (close-ok, the
//! broker's close, an I/O or decode error, missed heartbeats, a close-ok that never came),
//! the session is over. With recovery on and an error worth reconnecting for, the engine
//! then asks for reconnection attempts (see `recovery.rs`) and runs the next session, with a
//! new state machine, for the same handles. Otherwise every command still queued is
//! answered with the close reason.

mod apply;
mod held;
mod parked;
mod recovery;
mod route;
#[cfg(test)]
mod tests;

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use lepus_codec::{DecodeError, decode_frame, header_frame_prefix};
use tokio::sync::oneshot;

pub(crate) use recovery::Attempt;

use crate::{
    ConnectionOptions, Error,
    channel_shared::ChannelShared,
    command::{Command, DriverTokens},
    conn_shared::ConnShared,
    delivery_queue::DeliveryQueue,
    proto::{self, CloseOutcome},
    recovery::{Address, AddressRotation, topology::Topology},
};

/// Read buffer growth step.
const READ_CHUNK: usize = 64 * 1024;
/// While more than this waits for the socket, no commands should be taken: the publish
/// budget then makes publishers wait, instead of the write queue growing without bound
/// while the broker is not reading (e.g. when it blocks the connection).
pub(crate) const MAX_UNWRITTEN: usize = 4 << 20;

/// The connection's state machine.
pub(crate) type Proto = proto::Connection<DriverTokens>;

/// How long sent data may stay unacknowledged before the kernel fails the connection
/// (`None`: the system's default), for the driver to set on the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UnackedLimit(pub(crate) Option<Duration>);

/// What the engine is started with.
pub(crate) struct EngineSetup {
    pub(crate) options: ConnectionOptions,
    /// The first connection's state machine, its handshake queued.
    pub(crate) proto: Proto,
    /// The address of the first socket.
    pub(crate) address: Address,
    /// Whether the first socket is TLS.
    pub(crate) tls: bool,
    /// The addresses to try when recovering (the first already used).
    pub(crate) rotation: AddressRotation,
    pub(crate) shared: Arc<ConnShared>,
    /// Learns how the first handshake ended.
    pub(crate) connected: oneshot::Sender<Result<(), Error>>,
    /// Seeds the backoff's jitter (a test fixes it to replay a schedule).
    pub(crate) seed: u64,
}

// Independent flags of the loop; an enum would have to spell out their combinations.
#[allow(clippy::struct_excessive_bools)]
pub(crate) struct Engine {
    pub(crate) shared: Arc<ConnShared>,
    options: ConnectionOptions,
    pub(crate) proto: Proto,
    connected: Option<oneshot::Sender<Result<(), Error>>>,
    tls: bool,
    /// The buffer the driver reads the socket into; [`Engine::received`] decodes it.
    pub(crate) read_buf: BytesMut,
    /// What waits for the socket, in order.
    pub(crate) out: VecDeque<Bytes>,
    /// Bytes in `out`.
    pub(crate) unwritten: usize,
    /// A write went out and the socket (TLS) still has to be flushed.
    pub(crate) needs_flush: bool,
    /// Whether the socket is being read (false while consumers are too far behind).
    pub(crate) reading: bool,
    /// A change of the socket's unacknowledged-data limit for the driver to apply.
    unacked_limit: Option<UnackedLimit>,
    /// Publish budget of the publishes applied this turn, given back at its end: one lock
    /// of the budget's semaphore per turn instead of one per publish.
    budget_taken: usize,
    /// Confirms answered and consumers to wake, until the driver parks (see `held.rs`).
    pub(crate) held: held::Held,
    close_waiters: Vec<oneshot::Sender<Result<(), Error>>>,
    /// The command queue reported that every handle is gone.
    pub(crate) handles_gone: bool,
    /// Reading or writing failed: nothing more can be written.
    io_failed: bool,
    /// The application asked to close: nothing is recovered any more.
    pub(crate) closing: bool,
    /// The state machine's failure events are being routed (see `route.rs`): they mean
    /// the connection was lost, not that channels and consumers ended, when recovering.
    failing: bool,
    /// What recovery re-declares.
    topology: Topology<Arc<DeliveryQueue>>,
    /// The application's channels that are open (or being reopened), by identity.
    channels: HashMap<u64, Arc<ChannelShared>>,
    /// The broker address of the current (or last) connection.
    address: Address,
    rotation: AddressRotation,
    seed: u64,
    /// Set while the connection is down and being recovered.
    recovery: Option<recovery::Recovery>,
    /// A replay under way (after a reconnection, or of one channel).
    replay: Option<recovery::Replay>,
    /// Commands held back while the connection is down or a replay runs, in arrival order.
    parked: parked::Parked,
    /// Why the connection ended for good, when that is not the state machine's close
    /// reason (recovery gave up).
    final_error: Option<Error>,
    /// The application's close, as the reason handles see when it comes while the
    /// connection is down (no state machine then carries it).
    app_close: Option<Error>,
}

impl Engine {
    pub(crate) fn new(setup: EngineSetup) -> Self {
        let EngineSetup { options, proto, address, tls, rotation, shared, connected, seed } = setup;
        Engine {
            shared,
            proto,
            connected: Some(connected),
            tls,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            out: VecDeque::new(),
            unwritten: 0,
            needs_flush: false,
            reading: true,
            unacked_limit: None,
            budget_taken: 0,
            held: held::Held::default(),
            close_waiters: Vec::new(),
            handles_gone: false,
            io_failed: false,
            closing: false,
            failing: false,
            topology: Topology::default(),
            channels: HashMap::new(),
            address,
            rotation,
            seed,
            recovery: None,
            replay: None,
            parked: parked::Parked::default(),
            final_error: None,
            app_close: None,
            options,
        }
    }

    pub(crate) fn options(&self) -> &ConnectionOptions {
        &self.options
    }

    /// A new socket: its session starts with nothing read and nothing to write.
    pub(crate) fn session_started(&mut self, tls: bool) {
        self.tls = tls;
        self.read_buf.clear();
        self.out.clear();
        self.unwritten = 0;
        self.needs_flush = false;
        self.io_failed = false;
        self.reading = true;
        self.unacked_limit = None;
        self.shared.set_reading_paused(false);
    }

    /// Whether the session is over (its state machine closed).
    pub(crate) fn session_over(&self) -> bool {
        self.proto.is_closed()
    }

    /// Whether commands may be taken now (not while too much waits for the socket).
    pub(crate) fn taking_commands(&self) -> bool {
        !self.handles_gone && self.unwritten <= MAX_UNWRITTEN
    }

    /// Whether a reconnection's handshake is under way (bounded by the driver).
    pub(crate) fn handshaking_after_loss(&self) -> bool {
        self.recovery.is_some() && !self.proto.is_open()
    }

    /// The next instant [`Engine::handle_timeout`] must be called at: the state machine's
    /// next deadline, or while the connection is down, the first held-back command's.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let parked = self.recovery.as_ref().and_then(|_| self.parked.deadline());
        match (self.proto.poll_timeout(), parked) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        self.proto.handle_timeout(now);
        if let Some(recovery) = self.recovery.as_ref() {
            let budget = self.parked.expire(now, recovery.last());
            if budget > 0 {
                self.shared.publish_budget.add_permits(budget);
            }
        }
    }

    /// A socket option change to make (see [`UnackedLimit`]).
    pub(crate) fn poll_unacked_limit(&mut self) -> Option<UnackedLimit> {
        self.unacked_limit.take()
    }

    /// Every handle is gone (the command queue said so): close.
    pub(crate) fn all_handles_dropped(&mut self, now: Instant) {
        if !self.handles_gone {
            self.handles_gone = true;
            self.closing = true;
            let code = lepus_codec::ReplyCode::REPLY_SUCCESS;
            self.proto.close(now, code, "every handle was dropped", Some(self.options.get_close_timeout()));
        }
    }

    /// The application asked to close through `Connection::close` while commands are not
    /// being taken (see `ConnShared::take_close_request`).
    pub(crate) fn close_requested(&mut self, now: Instant, code: lepus_codec::ReplyCode, text: &str) {
        self.closing = true;
        self.app_close = Some(Error::ConnectionClosed(crate::CloseReason::client(code, text)));
        // A no-op on a closed state machine (the connection is down).
        self.proto.close(now, code, text, Some(self.options.get_close_timeout()));
    }

    /// Reading or writing the socket failed.
    pub(crate) fn io_failed(&mut self, e: std::io::Error) {
        let error = crate::driver::io_error(e, self.tls, self.proto.awaiting_start());
        self.io_error(error);
    }

    /// The session failed with `error` outside the state machine (an I/O error, or a
    /// reconnection's handshake that took too long).
    pub(crate) fn io_error(&mut self, error: Error) {
        self.io_failed = true;
        self.proto.handle_io_error(error);
    }

    /// `n` bytes of `out` were written.
    pub(crate) fn written(&mut self, n: usize) {
        self.unwritten -= n.min(self.unwritten);
    }

    /// Decodes what `read_buf` holds and feeds it to the state machine.
    pub(crate) fn received(&mut self, now: Instant) {
        loop {
            // Read before decoding: a header refused for a limit of ours is consumed whole,
            // and then only its message is refused (see `handle_refused_header`).
            let header = header_frame_prefix(&self.read_buf);
            match decode_frame(&mut self.read_buf, self.proto.limits()) {
                Ok(Some(frame)) => self.proto.handle_frame(now, frame),
                Ok(None) => break,
                Err(e @ DecodeError::NestingTooDeep { .. }) if header.is_some() => {
                    let (channel, body_size) = header.unwrap_or_default();
                    self.proto.handle_refused_header(now, channel, body_size, e);
                }
                Err(e) => {
                    self.proto.handle_decode_error(e);
                    break;
                }
            }
            if self.proto.is_closed() {
                break;
            }
        }
        if self.read_buf.capacity() - self.read_buf.len() < 4096 {
            self.read_buf.reserve(READ_CHUNK);
        }
    }

    /// The end of a turn: moves events to their waiters and output to the write queue, and
    /// decides whether the socket is read.
    pub(crate) fn end_turn(&mut self, now: Instant) {
        self.pump(now);
        self.update_reading(now);
    }

    /// Moves events to their waiters and output to the write queue.
    fn pump(&mut self, now: Instant) {
        let budget = std::mem::take(&mut self.budget_taken);
        if budget > 0 {
            self.shared.publish_budget.add_permits(budget);
        }
        while let Some(event) = self.proto.poll_event() {
            self.event(event, now);
        }
        self.failing = false;
        self.held.routed();
        while let Some(bytes) = self.proto.poll_transmit(now) {
            if self.io_failed {
                continue;
            }
            self.unwritten += bytes.len();
            self.out.push_back(bytes);
        }
    }

    /// Stops reading the socket while consumers hold more unread deliveries than allowed,
    /// and resumes once they have taken half of it. While reading is paused the broker's
    /// silence proves nothing, so the state machine stops judging it, and TCP judges the
    /// peer instead (see `driver::SocketControl`).
    fn update_reading(&mut self, now: Instant) {
        let max = self.shared.limits.max_unread;
        let unread = self.shared.unread();
        let reading = if self.reading { unread < max } else { unread <= max / 2 };
        if reading == self.reading {
            return;
        }
        self.reading = reading;
        self.shared.set_reading_paused(!reading);
        if !reading && self.shared.unread() <= max / 2 {
            // The application took everything between our look and the flag: a wake-up
            // would have been missed, so do not pause at all.
            self.reading = true;
            self.shared.set_reading_paused(false);
            return;
        }
        self.proto.set_reading(now, reading);
        let heartbeat = self.proto.tuning().heartbeat;
        let limit = (!reading && heartbeat > 0).then(|| Duration::from_secs(u64::from(heartbeat) * 2));
        self.unacked_limit = Some(UnackedLimit(limit));
        if reading {
            tracing::debug!(unread, "consumers caught up: reading the socket again");
        } else {
            tracing::debug!(unread, max, "consumers are behind: pausing reads from the socket");
        }
    }

    /// Whether what is left for the socket is worth a last bounded write: not after an I/O
    /// error, and not to a peer that stopped answering.
    pub(crate) fn peer_reads(&self) -> bool {
        !self.io_failed
            && !matches!(self.proto.close_outcome(), Some(CloseOutcome::TimedOut(_)))
            && !matches!(self.proto.close_error(), Some(Error::MissedHeartbeats(_)))
    }

    /// The session's socket is gone: whatever was left for it is dropped.
    pub(crate) fn session_ended(&mut self) {
        self.out.clear();
        self.unwritten = 0;
        self.needs_flush = false;
    }

    /// Whether the connection is down and being recovered.
    pub(crate) fn recovering(&self) -> bool {
        self.recovery.is_some()
    }

    /// The connection is over for good: from here every command is answered with the close
    /// reason, by [`Engine::apply_final`]. Call [`Engine::finished`] once no more can come.
    pub(crate) fn finish(&mut self, now: Instant) {
        self.pump(now);
        self.held.release();
        let error = self.final_reason();
        if let Some(tx) = self.connected.take() {
            let _ = tx.send(Err(error.clone()));
        }
        self.shared.closed(&error);
        for cmd in self.parked.take() {
            self.apply(cmd, now);
        }
    }

    /// A command that arrived after [`Engine::finish`]: the closed state machine answers it.
    pub(crate) fn apply_final(&mut self, cmd: Command, now: Instant) {
        self.apply(cmd, now);
    }

    /// Every waiter is answered; the handles learn that the connection is finished.
    pub(crate) fn finished(&mut self, now: Instant) {
        self.pump(now);
        let error = self.final_reason();
        self.end_recorded(&error);
        let outcome = match self.proto.close_outcome() {
            Some(CloseOutcome::Confirmed) | None => Ok(()),
            Some(CloseOutcome::TimedOut(after)) => {
                Err(Error::CloseNotConfirmed(format!("no connection.close-ok within {after:?}")))
            }
            Some(CloseOutcome::Interrupted) => {
                Err(Error::CloseNotConfirmed(format!("the socket closed before connection.close-ok: {error}")))
            }
        };
        for done in self.close_waiters.drain(..) {
            let _ = done.send(outcome.clone());
        }
        self.shared.finished();
    }

    fn final_reason(&self) -> Error {
        self.final_error
            .clone()
            .or_else(|| self.proto.close_error().cloned())
            .unwrap_or(Error::Timeout("driver stopped"))
    }

    /// Channels and consumers kept alive through a loss end with `error` (recovery gave up,
    /// or the connection closed while down).
    fn end_recorded(&mut self, error: &Error) {
        for (_, channel) in self.channels.drain() {
            channel.closed(error.clone());
        }
        for queue in self.topology.consumer_queues() {
            if let Some(waker) = queue.end(Some(error.clone())) {
                waker.wake();
            }
        }
        if let Some(recovery) = self.recovery.as_mut() {
            for token in recovery.republish.drain(..) {
                let _ = token.tx.send(Err(Error::ConnectionLost(Box::new(error.clone()))));
            }
        }
    }
}
