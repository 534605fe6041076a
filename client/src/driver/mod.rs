//! The one task that owns the socket: it reads and decodes frames into the state machine,
//! applies the handles' commands, writes what the state machine emits (all pending frames
//! in one vectored write), sleeps until its next deadline, and routes events to waiters.
//!
//! Every way out of a session ends it: once the state machine is closed (close-ok, the
//! broker's close, an I/O or decode error, missed heartbeats, a close-ok that never came),
//! the loop stops at once, whatever is still queued for the socket. What is left is written
//! only when the peer is known to be reading, and only for a bounded time; the socket's
//! shutdown is bounded too. Then the socket is dropped.
//!
//! With recovery on and an error worth reconnecting for, the task then reconnects (see
//! `recovery.rs`) and runs a new session on the new socket, with a new state machine, for
//! the same handles. Otherwise every command still queued is answered with the close reason
//! and the task ends.

mod apply;
mod io;
mod recovery;
mod route;

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    task::Waker,
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use lepus_codec::{DecodeError, decode_frame, header_frame_prefix};
use tokio::{
    io::AsyncReadExt,
    sync::{mpsc, oneshot},
};

pub(crate) use io::SocketControl;

use crate::{
    ConnectionOptions, Error,
    channel_shared::ChannelShared,
    command::{Command, DriverTokens},
    conn_shared::ConnShared,
    connect::Opened,
    delivery_queue::DeliveryQueue,
    proto::{self, CloseOutcome},
    recovery::{Address, AddressRotation, topology::Topology},
};

/// How many commands one turn of the loop applies before it writes.
const COMMAND_BATCH: usize = 512;
/// Read buffer growth step.
const READ_CHUNK: usize = 64 * 1024;
/// While more than this waits for the socket, no commands are taken: the publish budget
/// then makes publishers wait, instead of this queue growing without bound while the broker
/// is not reading (e.g. when it blocks the connection).
const MAX_UNWRITTEN: usize = 4 << 20;

/// What the driver is started with.
pub(crate) struct Setup {
    pub(crate) options: ConnectionOptions,
    pub(crate) proto: Proto,
    /// The first socket, and the address it is connected to.
    pub(crate) opened: Opened,
    pub(crate) address: Address,
    /// The addresses to try when recovering (the first already used).
    pub(crate) rotation: AddressRotation,
    pub(crate) commands: mpsc::UnboundedReceiver<Command>,
    pub(crate) shared: Arc<ConnShared>,
    /// Learns how the first handshake ended.
    pub(crate) connected: oneshot::Sender<Result<(), Error>>,
}

type Proto = proto::Connection<DriverTokens>;

// Four independent flags of the loop; an enum would have to spell out their combinations.
#[allow(clippy::struct_excessive_bools)]
struct Driver {
    shared: Arc<ConnShared>,
    options: ConnectionOptions,
    proto: Proto,
    commands: mpsc::UnboundedReceiver<Command>,
    connected: Option<oneshot::Sender<Result<(), Error>>>,
    tls: bool,
    socket: SocketControl,
    read_buf: BytesMut,
    out: VecDeque<Bytes>,
    /// Bytes in `out`.
    unwritten: usize,
    needs_flush: bool,
    /// Whether the socket is being read (false while consumers are too far behind).
    reading: bool,
    /// Consumers to wake once this turn's deliveries are all queued (one wake per burst).
    wakers: Vec<Waker>,
    close_waiters: Vec<oneshot::Sender<Result<(), Error>>>,
    /// The command queue reported that every handle is gone.
    handles_gone: bool,
    /// Reading or writing failed: nothing more can be written.
    io_failed: bool,
    /// The application asked to close: nothing is recovered any more.
    closing: bool,
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
    /// Set while the connection is down and being recovered.
    recovery: Option<recovery::Recovery>,
    /// A replay under way (after a reconnection, or of one channel).
    replay: Option<recovery::Replay>,
    /// Commands held back while a replay runs, in arrival order.
    parked: VecDeque<Command>,
    /// Why the connection ended for good, when that is not the state machine's close
    /// reason (recovery gave up).
    final_error: Option<Error>,
    /// The application's close, as the reason handles see when it comes while the
    /// connection is down (no state machine then carries it).
    app_close: Option<Error>,
    /// Takes the buffered settlements each turn (see `settle_buffer.rs`).
    settle: crate::settle_buffer::Deferral,
}

/// Runs the connection, recovering it as often as the options allow, then releases
/// everything and answers every waiter.
pub(crate) async fn run(setup: Setup) {
    let Setup { options, proto, opened, address, rotation, commands, shared, connected } = setup;
    let mut d = Driver {
        shared,
        proto,
        commands,
        connected: Some(connected),
        tls: opened.tls,
        socket: SocketControl::disconnected(),
        read_buf: BytesMut::with_capacity(READ_CHUNK),
        out: VecDeque::new(),
        unwritten: 0,
        needs_flush: false,
        reading: true,
        wakers: Vec::new(),
        close_waiters: Vec::new(),
        handles_gone: false,
        io_failed: false,
        closing: false,
        failing: false,
        topology: Topology::default(),
        channels: HashMap::new(),
        address,
        rotation,
        recovery: None,
        replay: None,
        parked: VecDeque::new(),
        final_error: None,
        app_close: None,
        settle: crate::settle_buffer::Deferral::new(),
        options,
    };
    let mut next = Some(opened);
    while let Some(opened) = next.take() {
        d.session(opened).await;
        if d.recovery.is_some() {
            next = d.reconnect().await;
            if next.is_none() {
                // Also when the application closed (or dropped every handle) mid-wait.
                d.give_up();
            }
        }
    }
    d.shutdown().await;
}

impl Driver {
    /// One connection: until its state machine is closed; then the socket is released.
    async fn session(&mut self, opened: Opened) {
        let Opened { stream, control, tls } = opened;
        self.tls = tls;
        self.socket = control;
        self.read_buf.clear();
        self.out.clear();
        self.unwritten = 0;
        self.needs_flush = false;
        self.io_failed = false;
        self.reading = true;
        self.shared.set_reading_paused(false);
        let (mut reader, mut writer) = tokio::io::split(stream);
        // A reconnection's handshake is bounded like the first one (whose bound is in
        // `Connection::connect_with`): a node that accepts TCP but never answers, as while it
        // boots, must not hold recovery up.
        let handshake_deadline =
            self.recovery.is_some().then(|| tokio::time::Instant::now() + self.options.get_connection_timeout());
        // One timer for the session, moved as the state machine's deadline moves (mostly
        // later, which tokio does without its lock). A fresh `sleep_until` every turn took the
        // time driver's lock twice per turn, and on the multi-thread runtime often woke the
        // worker parked in the I/O driver just to recompute its timeout.
        let timer = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(timer);
        let mut timer_at = None;
        loop {
            let now = Instant::now();
            self.settle.apply(&self.shared, &mut self.proto);
            self.take_commands(now);
            self.pump(now);
            self.update_reading(now);
            if self.proto.is_closed() {
                break;
            }
            let deadline = self.proto.poll_timeout().map(tokio::time::Instant::from_std);
            if deadline != timer_at {
                if let Some(at) = deadline {
                    timer.as_mut().reset(at);
                }
                timer_at = deadline;
            }
            let writing = !self.out.is_empty() || self.needs_flush;
            let taking = !self.handles_gone && self.unwritten <= MAX_UNWRITTEN;
            let shared = self.shared.clone();
            let handshaking = handshake_deadline.filter(|_| self.recovery.is_some() && !self.proto.is_open());
            self.settle.park(&self.shared);
            let deferring = self.settle.is_armed();
            tokio::select! {
                biased;
                result = io::write_some(&mut writer, &mut self.out, &mut self.needs_flush), if writing => match result {
                    Ok(n) => self.unwritten -= n,
                    Err(e) => self.io_failed(e),
                },
                result = reader.read_buf(&mut self.read_buf), if self.reading => match result {
                    Ok(0) => {
                        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the broker closed the socket");
                        self.io_failed(eof);
                    }
                    Ok(_) => self.decode(Instant::now()),
                    Err(e) => self.io_failed(e),
                },
                cmd = self.commands.recv(), if taking => match cmd {
                    Some(cmd) => self.command(cmd, Instant::now()),
                    None => self.all_handles_dropped(Instant::now()),
                },
                () = shared.close_signal.notified(), if !taking => {
                    if let Some((code, text)) = self.shared.take_close_request() {
                        self.closing = true;
                        self.proto.close(Instant::now(), code, &text, Some(self.options.get_close_timeout()));
                    }
                },
                () = shared.resume_reading.notified(), if !self.reading => {},
                () = shared.settlements.wake.notified() => {},
                () = self.settle.expired(), if deferring => {},
                () = &mut timer, if deadline.is_some() => self.proto.handle_timeout(Instant::now()),
                () = sleep_until(handshaking), if handshaking.is_some() => {
                    self.io_failed = true;
                    self.proto.handle_io_error(Error::Timeout("the AMQP handshake of a reconnection"));
                },
            }
        }
        let flush = self.peer_reads();
        io::finish(&mut writer, &mut self.out, self.needs_flush, flush).await;
        self.socket = SocketControl::disconnected();
    }

    /// Applies whatever commands are already queued, without waiting.
    fn take_commands(&mut self, now: Instant) {
        for _ in 0..COMMAND_BATCH {
            if self.handles_gone || self.unwritten > MAX_UNWRITTEN {
                return;
            }
            match self.commands.try_recv() {
                Ok(cmd) => self.command(cmd, now),
                Err(mpsc::error::TryRecvError::Empty) => return,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.all_handles_dropped(now);
                    return;
                }
            }
        }
    }

    fn all_handles_dropped(&mut self, now: Instant) {
        if !self.handles_gone {
            self.handles_gone = true;
            self.closing = true;
            let code = lepus_codec::ReplyCode::REPLY_SUCCESS;
            self.proto.close(now, code, "every handle was dropped", Some(self.options.get_close_timeout()));
        }
    }

    fn io_failed(&mut self, e: std::io::Error) {
        self.io_failed = true;
        let error = io::io_error(e, self.tls, self.proto.awaiting_start());
        self.proto.handle_io_error(error);
    }

    fn decode(&mut self, now: Instant) {
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

    /// Moves events to their waiters and output to the write queue.
    fn pump(&mut self, now: Instant) {
        while let Some(event) = self.proto.poll_event() {
            self.event(event, now);
        }
        self.failing = false;
        for waker in self.wakers.drain(..) {
            waker.wake();
        }
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
    /// peer instead (see [`SocketControl`]).
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
        self.socket.set_unacked_limit(limit);
        if reading {
            tracing::debug!(unread, "consumers caught up: reading the socket again");
        } else {
            tracing::debug!(unread, max, "consumers are behind: pausing reads from the socket");
        }
    }

    /// Whether what is left for the socket is worth a last bounded write: not after an I/O
    /// error, and not to a peer that stopped answering.
    fn peer_reads(&self) -> bool {
        !self.io_failed
            && !matches!(self.proto.close_outcome(), Some(CloseOutcome::TimedOut(_)))
            && !matches!(self.proto.close_error(), Some(Error::MissedHeartbeats(_)))
    }

    /// The connection is over for good: answer everyone.
    async fn shutdown(&mut self) {
        let now = Instant::now();
        self.pump(now);
        let error = self
            .final_error
            .clone()
            .or_else(|| self.proto.close_error().cloned())
            .unwrap_or(Error::Timeout("driver stopped"));
        if let Some(tx) = self.connected.take() {
            let _ = tx.send(Err(error.clone()));
        }
        self.shared.closed(&error);
        // New commands fail from here; those already queued or held back are answered by
        // the closed state machine.
        self.commands.close();
        let parked: Vec<Command> = self.parked.drain(..).collect();
        for cmd in parked {
            self.apply(cmd, now);
        }
        // `recv`, not `try_recv`: a send that got past the close but has not finished
        // pushing its command is not seen by `try_recv`, and its command (with the oneshot
        // its caller waits on) would stay in the queue for as long as any handle lives.
        // `recv` returns `None` only once every such send has landed, which is at once.
        while let Some(cmd) = self.commands.recv().await {
            self.apply(cmd, now);
        }
        self.pump(now);
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

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
