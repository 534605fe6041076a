//! The one task that owns the socket: it reads and decodes frames into the state machine,
//! applies the handles' commands, writes what the state machine emits (all pending frames
//! in one vectored write), sleeps until its next deadline, and routes events to waiters.
//!
//! Every way out ends the task: once the state machine is closed (close-ok, the broker's
//! close, an I/O or decode error, missed heartbeats, a close-ok that never came), the loop
//! stops at once, whatever is still queued for the socket. What is left is written only when
//! the peer is known to be reading, and only for a bounded time; the socket's shutdown is
//! bounded too. Then the socket is dropped and every command still queued is answered with
//! the close reason.

mod apply;
mod io;
mod route;

use std::{collections::VecDeque, sync::Arc, task::Waker, time::Instant};

use bytes::{Bytes, BytesMut};
use lepus_codec::{DecodeError, decode_frame, header_frame_prefix};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite},
    sync::{mpsc, oneshot},
};

pub(crate) use io::SocketControl;

use crate::{
    Error,
    command::{Command, DriverTokens},
    conn_shared::ConnShared,
    proto::{self, CloseOutcome},
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
    pub(crate) proto: proto::Connection<DriverTokens>,
    pub(crate) commands: mpsc::UnboundedReceiver<Command>,
    pub(crate) shared: Arc<ConnShared>,
    /// Learns how the handshake ended.
    pub(crate) connected: oneshot::Sender<Result<(), Error>>,
    pub(crate) tls: bool,
    pub(crate) socket: SocketControl,
    /// How long a close waits for the broker's close-ok.
    pub(crate) close_timeout: std::time::Duration,
}

type Proto = proto::Connection<DriverTokens>;

// Four independent flags of the loop; an enum would have to spell out their combinations.
#[allow(clippy::struct_excessive_bools)]
struct Driver {
    shared: Arc<ConnShared>,
    connected: Option<oneshot::Sender<Result<(), Error>>>,
    tls: bool,
    socket: SocketControl,
    close_timeout: std::time::Duration,
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
}

/// Runs the connection until it is closed, then releases the socket and answers every
/// waiter.
pub(crate) async fn run<S>(io: S, setup: Setup)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let Setup { mut proto, mut commands, shared, connected, tls, socket, close_timeout } = setup;
    let (mut reader, mut writer) = tokio::io::split(io);
    let mut d = Driver {
        shared,
        connected: Some(connected),
        tls,
        socket,
        close_timeout,
        read_buf: BytesMut::with_capacity(READ_CHUNK),
        out: VecDeque::new(),
        unwritten: 0,
        needs_flush: false,
        reading: true,
        wakers: Vec::new(),
        close_waiters: Vec::new(),
        handles_gone: false,
        io_failed: false,
    };
    d.session(&mut proto, &mut commands, &mut reader, &mut writer).await;
    // From here new commands fail at once; those already queued are answered below.
    commands.close();
    let flush = d.peer_reads(&proto);
    io::finish(&mut writer, &mut d.out, d.needs_flush, flush).await;
    drop((reader, writer));
    while let Ok(cmd) = commands.try_recv() {
        d.command(&mut proto, cmd, Instant::now());
        d.pump(&mut proto, Instant::now());
    }
    d.shutdown(&mut proto);
}

impl Driver {
    /// The loop: until the state machine is closed.
    async fn session<R, W>(
        &mut self,
        proto: &mut Proto,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        reader: &mut R,
        writer: &mut W,
    ) where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            let now = Instant::now();
            self.take_commands(proto, commands, now);
            self.pump(proto, now);
            self.update_reading(proto, now);
            if proto.is_closed() {
                return;
            }
            let deadline = proto.poll_timeout().map(tokio::time::Instant::from_std);
            let writing = !self.out.is_empty() || self.needs_flush;
            let taking = !self.handles_gone && self.unwritten <= MAX_UNWRITTEN;
            let shared = self.shared.clone();
            tokio::select! {
                biased;
                result = io::write_some(writer, &mut self.out, &mut self.needs_flush), if writing => match result {
                    Ok(n) => self.unwritten -= n,
                    Err(e) => self.io_failed(proto, e),
                },
                result = reader.read_buf(&mut self.read_buf), if self.reading => match result {
                    Ok(0) => {
                        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the broker closed the socket");
                        self.io_failed(proto, eof);
                    }
                    Ok(_) => self.decode(proto, Instant::now()),
                    Err(e) => self.io_failed(proto, e),
                },
                cmd = commands.recv(), if taking => match cmd {
                    Some(cmd) => self.command(proto, cmd, Instant::now()),
                    None => self.all_handles_dropped(proto, Instant::now()),
                },
                () = shared.close_signal.notified(), if !taking => {
                    if let Some((code, text)) = self.shared.take_close_request() {
                        proto.close(Instant::now(), code, &text, Some(self.close_timeout));
                    }
                },
                () = shared.resume_reading.notified(), if !self.reading => {},
                () = sleep_until(deadline), if deadline.is_some() => proto.handle_timeout(Instant::now()),
            }
        }
    }

    /// Applies whatever commands are already queued, without waiting.
    fn take_commands(&mut self, proto: &mut Proto, commands: &mut mpsc::UnboundedReceiver<Command>, now: Instant) {
        for _ in 0..COMMAND_BATCH {
            if self.handles_gone || self.unwritten > MAX_UNWRITTEN {
                return;
            }
            match commands.try_recv() {
                Ok(cmd) => self.command(proto, cmd, now),
                Err(mpsc::error::TryRecvError::Empty) => return,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.all_handles_dropped(proto, now);
                    return;
                }
            }
        }
    }

    fn all_handles_dropped(&mut self, proto: &mut Proto, now: Instant) {
        if !self.handles_gone {
            self.handles_gone = true;
            let code = lepus_codec::ReplyCode::REPLY_SUCCESS;
            proto.close(now, code, "every handle was dropped", Some(self.close_timeout));
        }
    }

    fn io_failed(&mut self, proto: &mut Proto, e: std::io::Error) {
        self.io_failed = true;
        proto.handle_io_error(io::io_error(e, self.tls, proto.awaiting_start()));
    }

    fn decode(&mut self, proto: &mut Proto, now: Instant) {
        loop {
            // Read before decoding: a header refused for a limit of ours is consumed whole,
            // and then only its message is refused (see `handle_refused_header`).
            let header = header_frame_prefix(&self.read_buf);
            match decode_frame(&mut self.read_buf, proto.limits()) {
                Ok(Some(frame)) => proto.handle_frame(now, frame),
                Ok(None) => break,
                Err(e @ DecodeError::NestingTooDeep { .. }) if header.is_some() => {
                    let (channel, body_size) = header.unwrap_or_default();
                    proto.handle_refused_header(now, channel, body_size, e);
                }
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

    /// Moves events to their waiters and output to the write queue.
    fn pump(&mut self, proto: &mut Proto, now: Instant) {
        while let Some(event) = proto.poll_event() {
            self.event(proto, event);
        }
        for waker in self.wakers.drain(..) {
            waker.wake();
        }
        while let Some(bytes) = proto.poll_transmit(now) {
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
    fn update_reading(&mut self, proto: &mut Proto, now: Instant) {
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
        proto.set_reading(now, reading);
        let heartbeat = proto.tuning().heartbeat;
        let limit = (!reading && heartbeat > 0).then(|| std::time::Duration::from_secs(u64::from(heartbeat) * 2));
        self.socket.set_unacked_limit(limit);
        if reading {
            tracing::debug!(unread, "consumers caught up: reading the socket again");
        } else {
            tracing::debug!(unread, max, "consumers are behind: pausing reads from the socket");
        }
    }

    /// Whether what is left for the socket is worth a last bounded write: not after an I/O
    /// error, and not to a peer that stopped answering.
    fn peer_reads(&self, proto: &Proto) -> bool {
        !self.io_failed
            && !matches!(proto.close_outcome(), Some(CloseOutcome::TimedOut(_)))
            && !matches!(proto.close_error(), Some(Error::MissedHeartbeats(_)))
    }

    /// The socket is gone: answer everyone.
    fn shutdown(&mut self, proto: &mut Proto) {
        self.pump(proto, Instant::now());
        let error = proto.close_error().cloned().unwrap_or(Error::Timeout("driver stopped"));
        if let Some(tx) = self.connected.take() {
            let _ = tx.send(Err(error.clone()));
        }
        self.shared.closed(&error);
        let outcome = match proto.close_outcome() {
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
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
