//! The one task that owns the socket: the IO around the sans-IO [`Engine`]. It reads into
//! the engine's buffer, hands it the handles' commands, writes what it emits (all pending
//! frames in one vectored write), sleeps until its next deadline, and, while the connection
//! is down, waits and connects where the engine's reconnection attempts say.
//!
//! Every way out of a session ends it: once the engine's state machine is closed, the loop
//! stops at once, whatever is still queued for the socket. What is left is written only when
//! the peer is known to be reading, and only for a bounded time; the socket's shutdown is
//! bounded too. Then the socket is dropped.

mod deferral;
mod io;

use std::{collections::VecDeque, future::Future, sync::Arc, time::Instant};

use tokio::{io::AsyncReadExt, sync::oneshot};
use tracing::Instrument;

pub(crate) use io::{SocketControl, io_error};

use crate::{
    ConnectionOptions, Error,
    command::Command,
    command_queue::Taken,
    conn_shared::ConnShared,
    connect::{self, Opened},
    engine::{Attempt, Engine, EngineSetup, Proto, UnackedLimit},
    recovery::{Address, AddressRotation},
};

/// How many commands one turn of the loop applies before it writes.
const COMMAND_BATCH: usize = 512;

/// What the driver is started with.
pub(crate) struct Setup {
    pub(crate) options: ConnectionOptions,
    pub(crate) proto: Proto,
    /// The first socket, and the address it is connected to.
    pub(crate) opened: Opened,
    pub(crate) address: Address,
    /// The addresses to try when recovering (the first already used).
    pub(crate) rotation: AddressRotation,
    pub(crate) shared: Arc<ConnShared>,
    /// Learns how the first handshake ended.
    pub(crate) connected: oneshot::Sender<Result<(), Error>>,
}

struct Driver {
    engine: Engine,
    /// Commands taken from the queue (`ConnShared::commands`) and not yet applied.
    batch: VecDeque<Command>,
    /// The queue said every handle is gone (after the commands in `batch`).
    orphaned: bool,
    /// The engine was told so.
    orphan_told: bool,
    socket: SocketControl,
    /// Whether the driver parks promising to take deferred commands soon (see
    /// `command_queue/mod.rs`).
    deferral: deferral::Deferral,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Also when the runtime drops this task: commands are refused from here on, and those
        // still queued are dropped, which answers their waiters (their senders are gone).
        drop(self.engine.shared.commands.close());
    }
}

/// Runs the connection, recovering it as often as the engine asks, then releases
/// everything and answers every waiter.
pub(crate) async fn run(setup: Setup) {
    let Setup { options, proto, opened, address, rotation, shared, connected } = setup;
    let engine = Engine::new(EngineSetup {
        options,
        proto,
        address,
        tls: opened.tls,
        rotation,
        shared,
        connected,
        seed: crate::recovery::backoff::seed(),
    });
    let mut d = Driver {
        engine,
        batch: VecDeque::new(),
        orphaned: false,
        orphan_told: false,
        socket: SocketControl::disconnected(),
        deferral: deferral::Deferral::new(),
    };
    // On a current-thread runtime nothing runs before the driver parks anyway, and holding
    // would cost the driver one more turn of its loop per burst.
    d.engine.held.set_holding(d.deferral.multi_thread());
    let mut next = Some(opened);
    while let Some(opened) = next.take() {
        d.session(opened).await;
        if d.engine.recovering() {
            next = d.reconnect().await;
            if next.is_none() {
                // Also when the application closed (or dropped every handle) mid-wait.
                d.engine.give_up();
            }
        }
    }
    d.shutdown();
}

impl Driver {
    /// One connection: until its state machine is closed; then the socket is released.
    async fn session(&mut self, opened: Opened) {
        let Opened { stream, control, tls } = opened;
        self.engine.session_started(tls);
        self.socket = control;
        let (mut reader, mut writer) = tokio::io::split(stream);
        // A reconnection's handshake is bounded like the first one (whose bound is in
        // `Connection::connect_with`): a node that accepts TCP but never answers, as while it
        // boots, must not hold recovery up.
        let handshake_deadline = self
            .engine
            .recovering()
            .then(|| tokio::time::Instant::now() + self.engine.options().get_connection_timeout());
        // One timer for the session, moved as the state machine's deadline moves (mostly
        // later, which tokio does without its lock). A fresh `sleep_until` every turn took the
        // time driver's lock twice per turn, and on the multi-thread runtime often woke the
        // worker parked in the I/O driver just to recompute its timeout.
        let timer = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(timer);
        let mut timer_at = None;
        loop {
            let now = Instant::now();
            self.take_commands(now);
            self.engine.end_turn(now);
            if let Some(UnackedLimit(limit)) = self.engine.poll_unacked_limit() {
                self.socket.set_unacked_limit(limit);
            }
            if self.engine.session_over() {
                break;
            }
            let deadline = self.engine.poll_timeout().map(tokio::time::Instant::from_std);
            if deadline != timer_at {
                if let Some(at) = deadline {
                    timer.as_mut().reset(at);
                }
                timer_at = deadline;
            }
            let e = &mut self.engine;
            let writing = !e.out.is_empty() || e.needs_flush;
            let reading = e.reading;
            let taking = e.taking_commands();
            let shared = e.shared.clone();
            let handshaking = handshake_deadline.filter(|_| e.handshaking_after_loss());
            let more = taking && !self.batch.is_empty();
            if !more {
                self.deferral.park(&shared);
            }
            let deferring = self.deferral.is_armed();
            e.held.turn_ended();
            let holding = !e.held.is_empty();
            tokio::select! {
                biased;
                result = io::write_some(&mut writer, &mut e.out, &mut e.needs_flush), if writing => match result {
                    Ok(n) => e.written(n),
                    Err(err) => {
                        // The broker may have said why before its socket went away (a
                        // connection.close with 320, say): that is the reason, not the error
                        // our write ran into. Its frames wait in the socket: read them first.
                        io::read_last_words(&mut reader, &mut e.read_buf).await;
                        e.received(Instant::now());
                        e.io_failed(err);
                    }
                },
                result = reader.read_buf(&mut e.read_buf), if reading => match result {
                    Ok(0) => {
                        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the broker closed the socket");
                        e.io_failed(eof);
                    }
                    Ok(_) => e.received(Instant::now()),
                    Err(err) => e.io_failed(err),
                },
                () = shared.commands.wake.notified(), if taking => {},
                () = std::future::ready(()), if more => {},
                () = shared.close_signal.notified(), if !taking => {
                    if let Some((code, text)) = shared.take_close_request() {
                        e.close_requested(Instant::now(), code, &text);
                    }
                },
                () = shared.resume_reading.notified(), if !reading => {},
                () = self.deferral.expired(), if deferring => {},
                () = &mut timer, if deadline.is_some() => e.handle_timeout(Instant::now()),
                () = sleep_until(handshaking), if handshaking.is_some() => {
                    e.io_error(Error::Timeout("the AMQP handshake of a reconnection"));
                },
                // Last: reached only when everything else would park.
                () = std::future::ready(()), if holding => e.held.release(),
            }
        }
        self.engine.held.release();
        let flush = self.engine.peer_reads();
        let e = &mut self.engine;
        io::finish(&mut writer, &mut e.out, e.needs_flush, flush).await;
        e.session_ended();
        self.socket = SocketControl::disconnected();
    }

    /// Applies whatever commands are already queued (up to a batch), without waiting.
    fn take_commands(&mut self, now: Instant) {
        if !self.engine.taking_commands() {
            return;
        }
        if self.batch.is_empty() {
            let taken = self.take_queue();
            self.deferral.took(taken);
        }
        for _ in 0..COMMAND_BATCH {
            if !self.engine.taking_commands() {
                return;
            }
            match self.batch.pop_front() {
                Some(cmd) => self.engine.command(cmd, now),
                None => break,
            }
        }
        self.tell_orphaned(now);
    }

    /// Takes the queue into `batch` (empty).
    fn take_queue(&mut self) -> Taken {
        let taken = self.engine.shared.commands.take(&mut self.batch);
        self.orphaned |= taken.orphaned;
        taken
    }

    /// Once every handle is gone and their last commands are applied, tells the engine.
    fn tell_orphaned(&mut self, now: Instant) {
        if self.orphaned && !self.orphan_told && self.batch.is_empty() {
            self.orphan_told = true;
            self.engine.all_handles_dropped(now);
        }
    }

    /// Makes the engine's reconnection attempts until one connects (`Some`) or the engine
    /// says recovery is over (`None`). Commands keep being taken meanwhile (held back).
    async fn reconnect(&mut self) -> Option<Opened> {
        loop {
            let Attempt { at, address, span, .. } = self.engine.next_attempt(Instant::now())?;
            self.serve_until(tokio::time::sleep_until(tokio::time::Instant::from_std(at))).await?;
            let connect_options = self.engine.options().clone();
            let target = address.clone();
            let attempt = async move {
                let opened = connect::open(&target, &connect_options).await?;
                let proto = connect::state_machine(&connect_options).await?;
                Ok::<_, Error>((opened, proto))
            }
            .instrument(span);
            let limit = self.engine.options().get_connection_timeout();
            match self.serve_until(tokio::time::timeout(limit, attempt)).await? {
                Ok(Ok((opened, proto))) => {
                    self.engine.attempt_connected(address, proto);
                    return Some(opened);
                }
                Ok(Err(e)) => self.engine.attempt_failed(&e, Instant::now()),
                Err(_) => self.engine.attempt_failed(&Error::Timeout("reconnecting"), Instant::now()),
            }
        }
    }

    /// Runs `until` while taking commands (held back, or a close); `None` if the
    /// application closed or every handle is gone meanwhile.
    async fn serve_until<T>(&mut self, until: impl Future<Output = T>) -> Option<T> {
        tokio::pin!(until);
        loop {
            // Held back by the engine (or a close applied): all of them, in order.
            let now = Instant::now();
            if self.batch.is_empty() {
                self.take_queue();
            }
            while let Some(cmd) = self.batch.pop_front() {
                self.engine.command(cmd, now);
            }
            self.tell_orphaned(now);
            if self.engine.stopping() {
                return None;
            }
            self.engine.held.release();
            let shared = self.engine.shared.clone();
            // Commands held back since the loss expire meanwhile.
            let deadline = self.engine.poll_timeout().map(tokio::time::Instant::from_std);
            tokio::select! {
                out = &mut until => return Some(out),
                () = sleep_until(deadline), if deadline.is_some() => self.engine.handle_timeout(Instant::now()),
                () = shared.commands.wake.notified() => {},
                () = shared.close_signal.notified() => {
                    if let Some((code, text)) = shared.take_close_request() {
                        self.engine.close_requested(Instant::now(), code, &text);
                    }
                },
            }
        }
    }

    /// The connection is over for good: answer everyone.
    fn shutdown(&mut self) {
        self.engine.finish(Instant::now());
        // New commands fail from here (the queue's lock orders every push before or after
        // the close); those already taken or queued are answered by the closed state machine.
        let queued = self.engine.shared.commands.close();
        let now = Instant::now();
        for cmd in std::mem::take(&mut self.batch).into_iter().chain(queued) {
            self.engine.apply_final(cmd, now);
        }
        self.engine.finished(now);
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
