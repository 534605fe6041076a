//! Recovery as the engine runs it, without IO: deciding to recover, choosing each
//! reconnection attempt (when, and to which address) while the handles' commands are held
//! back, deciding when to give up, and replaying the recorded topology one step at a time on
//! the new connection. The driver only waits and connects where an [`Attempt`] says. The
//! decisions themselves (delays, address order, which errors recover, what to replay and in
//! which order) are pure and live in `crate::recovery`.

use std::{collections::VecDeque, sync::Arc, time::Instant};

use super::{Engine, Proto};
use crate::{
    ConnectionEvent, Error,
    channel_shared::ChannelShared,
    command::{CallResult, ConfirmTx, ReplyTo},
    delivery_queue::DeliveryQueue,
    proto::Reply,
    recovery::{Address, backoff::Backoff, topology::Step},
};
use lepus_codec::{Method, ReplyCode, method::channel as chan};

/// The consumer argument that says where a stream consumer starts.
const STREAM_OFFSET: &str = "x-stream-offset";

/// Attempts a refused login is retried, so that a credentials provider can hand out a
/// refreshed token; past it, refused credentials end recovery.
const AUTH_RETRIES: u32 = 3;

/// A reconnection attempt, for the driver to make: wait until `at` (taking commands
/// meanwhile), then connect to `address`, bounded by the connection timeout, and report
/// with [`Engine::attempt_connected`] or [`Engine::attempt_failed`].
#[derive(Debug)]
pub(crate) struct Attempt {
    /// 1 for the first attempt after a loss (the driver has it from the span; tests read it).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) number: u32,
    pub(crate) at: Instant,
    pub(crate) address: Address,
    /// The tracing span the attempt runs in.
    pub(crate) span: tracing::Span,
}

/// A recovery under way: from the loss until the replay on a new connection is done.
pub(super) struct Recovery {
    since: Instant,
    backoff: Backoff,
    /// The error of the loss, then of the last failed attempt.
    last: Error,
    auth_failures: u32,
    gave_up: bool,
    /// Confirms kept for republishing after the replay (policy `republish_unconfirmed`).
    pub(super) republish: Vec<ConfirmTx>,
    /// The tracing span of the attempt under way: open until the next attempt or the end.
    span: tracing::Span,
}

/// What the step in flight was, to read its reply.
enum InFlight {
    /// A declaration on the replay's own channel; `entry` for a queue's new name.
    Declare { entry: usize, what: String },
    /// A reopen of a channel.
    Open,
    /// A method or consumer on a reopened channel.
    OnChannel { what: String },
}

/// A replay: after a reconnection (`whole`), or of one channel the broker closed with a
/// consumer timeout.
pub(super) struct Replay {
    steps: VecDeque<Step<Arc<DeliveryQueue>>>,
    /// The channel declarations run on (opened when the first one runs).
    own: Option<Arc<ChannelShared>>,
    in_flight: Option<InFlight>,
    whole: bool,
    /// Channels this replay reopens (their consumers' ends are not final).
    reopening: Vec<u64>,
}

impl Recovery {
    /// The error of the loss, or of the last failed attempt.
    pub(super) fn last(&self) -> &Error {
        &self.last
    }
}

impl Replay {
    pub(super) fn is_own_channel(&self, channel: &Arc<ChannelShared>) -> bool {
        self.own.as_ref().is_some_and(|own| Arc::ptr_eq(own, channel))
    }

    pub(super) fn reopens(&self, channel: u64) -> bool {
        self.reopening.contains(&channel)
    }
}

impl Engine {
    pub(super) fn should_recover(&self, error: &Error) -> bool {
        self.options.get_recovery().is_enabled()
            && !self.closing
            && !self.handles_gone
            && self.proto.close_outcome().is_none()
            && error.is_recoverable()
    }

    /// The connection was lost: keep every handle, and start reconnecting.
    pub(super) fn begin_recovery(&mut self, error: Error, now: Instant) {
        tracing::warn!(%error, address = %self.address, "connection lost: recovering");
        let options = self.options.get_recovery();
        // Each loss draws a new schedule from the connection's generator.
        self.seed = crate::recovery::backoff::SplitMix64(self.seed).next();
        self.recovery = Some(Recovery {
            since: now,
            backoff: Backoff::new(options.initial_backoff, options.max_backoff, self.seed),
            last: error.clone(),
            auth_failures: 0,
            gave_up: false,
            republish: Vec::new(),
            span: tracing::Span::none(),
        });
        self.replay = None;
        self.shared.set_down(Some(error.clone()));
        self.shared.event(ConnectionEvent::Disconnected { reason: error });
    }

    /// A reconnection attempt (its connect, its handshake, or its replay) failed.
    pub(crate) fn attempt_failed(&mut self, error: &Error, _now: Instant) {
        self.replay = None;
        let Some(recovery) = self.recovery.as_mut() else { return };
        tracing::info!(%error, address = %self.address, "reconnection attempt failed");
        if matches!(error, Error::AccessRefused(_)) {
            recovery.auth_failures += 1;
        }
        let retry_auth = matches!(error, Error::AccessRefused(_)) && recovery.auth_failures < AUTH_RETRIES;
        recovery.last = error.clone();
        if self.closing || !(error.is_recoverable() || retry_auth) {
            self.give_up();
        }
    }

    /// Ends recovery for good (idempotent): the reason is the application's close if it
    /// closed, else `RecoveryFailed`.
    pub(crate) fn give_up(&mut self) {
        let Some(recovery) = self.recovery.as_mut() else { return };
        if recovery.gave_up {
            return;
        }
        recovery.gave_up = true;
        let error = if self.closing {
            // Closed by the application while down: that is the reason handles see.
            self.app_close.clone().unwrap_or_else(|| recovery.last.clone())
        } else {
            Error::RecoveryFailed { attempts: recovery.backoff.attempts(), last: Box::new(recovery.last.clone()) }
        };
        tracing::error!(%error, "connection recovery gave up");
        if !self.closing {
            self.shared.event(ConnectionEvent::RecoveryFailed(error.clone()));
        }
        self.final_error = Some(error);
    }

    /// The next reconnection attempt: when to make it and where, or `None` when recovery
    /// is over (the rules say to give up, the application closed, or every handle is gone;
    /// the reason is then recorded for [`Engine::finish`]).
    pub(crate) fn next_attempt(&mut self, now: Instant) -> Option<Attempt> {
        let options = self.options.get_recovery().clone();
        let recovery = self.recovery.as_mut()?;
        let out_of_attempts = options.max_attempts.is_some_and(|max| recovery.backoff.attempts() >= max);
        let out_of_time = options.max_duration.is_some_and(|max| now.saturating_duration_since(recovery.since) >= max);
        if recovery.gave_up || self.closing || self.handles_gone || out_of_attempts || out_of_time {
            self.give_up();
            return None;
        }
        let delay = recovery.backoff.next_delay();
        let number = recovery.backoff.attempts();
        let address = self.rotation.next().unwrap_or_else(|| self.address.clone());
        tracing::info!(attempt = number, %address, ?delay, "reconnecting");
        recovery.span =
            tracing::info_span!("lepus.recovery", connection = self.shared.name(), attempt = number, %address);
        self.shared.event(ConnectionEvent::Recovering { attempt: number, address: address.to_string() });
        Some(Attempt { number, at: now + delay, address, span: recovery.span.clone() })
    }

    /// The attempt's socket is connected and `proto` (its handshake queued) takes over:
    /// the next session (`session_started`) runs it, and the replay starts once its handshake is done.
    pub(crate) fn attempt_connected(&mut self, address: Address, mut proto: Proto) {
        // Epochs go on: a delivery tag of the lost connection never matches.
        proto.continue_epochs(self.proto.next_epoch());
        self.proto = proto;
        self.address = address;
    }

    /// Whether the application closed or every handle is gone: a wait for the next attempt
    /// (or its connect) ends early.
    pub(crate) fn stopping(&self) -> bool {
        self.closing || self.handles_gone
    }

    /// The new connection's handshake is done: replay the topology.
    pub(super) fn reconnected(&mut self, now: Instant) {
        let options = self.options.get_recovery().clone();
        let steps = self.topology.plan(options.filter.as_ref(), options.topology);
        let reopening = self.channels.keys().copied().collect();
        self.replay = Some(Replay { steps: steps.into(), own: None, in_flight: None, whole: true, reopening });
        self.advance_replay(now);
    }

    /// Whether a channel closed by the broker is reopened rather than closed for good: only
    /// after a consumer acknowledgement timeout (406), which ends the channel but says
    /// nothing about the application's use of it.
    pub(super) fn channel_recoverable(&self, error: &Error) -> bool {
        let Error::ChannelClosed(reason) = error else { return false };
        self.options.get_recovery().is_enabled()
            && reason.initiator == crate::Initiator::Server
            && reason.reply_code == ReplyCode::PRECONDITION_FAILED
            && reason.reply_text.contains("timed out")
            && reason.reply_text.contains("ack")
    }

    /// The broker closed `channel` with a consumer timeout: its consumers see the error,
    /// then the channel is reopened and they are re-established.
    pub(super) fn recover_channel(&mut self, channel: &Arc<ChannelShared>, error: &Error, now: Instant) {
        tracing::warn!(channel = channel.key().id, %error, "the broker closed a channel; reopening it");
        channel.lost();
        for queue in self.topology.consumers_of(channel.id) {
            if let crate::delivery_queue::Pushed::Queued(Some(waker)) = queue.push(Err(error.clone())) {
                self.held.wake(waker);
            }
        }
        let steps = self.topology.channel_plan(channel.id);
        if let Some(replay) = self.replay.as_mut() {
            replay.steps.extend(steps);
            replay.reopening.push(channel.id);
        } else {
            let replay =
                Replay { steps: steps.into(), own: None, in_flight: None, whole: false, reopening: vec![channel.id] };
            self.replay = Some(replay);
            self.advance_replay(now);
        }
    }

    /// Starts the next step of the replay (skipping those that no longer apply), or ends
    /// the replay.
    fn advance_replay(&mut self, now: Instant) {
        loop {
            let Some(replay) = self.replay.as_mut() else { return };
            if replay.in_flight.is_some() {
                return;
            }
            let Some(step) = replay.steps.pop_front() else {
                self.finish_replay(now);
                return;
            };
            match step {
                Step::OpenChannel(id) => {
                    let Some(channel) = self.channels.get(&id).cloned() else { continue };
                    let token = ReplyTo::Open { tx: None, channel: channel.clone() };
                    match self.proto.open_channel_at(channel.key().id, token, channel.clone()) {
                        Ok(key) => {
                            channel.set_key(key);
                            if let Some(replay) = self.replay.as_mut() {
                                replay.in_flight = Some(InFlight::Open);
                            }
                        }
                        Err((e, _, channel)) => self.channel_failed(&channel, e),
                    }
                }
                Step::Declare { mut method, entry, description } => {
                    self.topology.translate(&mut method);
                    let own = self.own_channel();
                    self.proto.call(own.key(), method, ReplyTo::Replay);
                    if let Some(replay) = self.replay.as_mut() {
                        replay.in_flight = Some(InFlight::Declare { entry, what: description });
                    }
                }
                Step::ChannelMethod(id, method) => {
                    let Some(channel) = self.channels.get(&id).cloned() else { continue };
                    let what = format!("{} on channel {}", method.name(), channel.key().id);
                    self.proto.call(channel.key(), method, ReplyTo::Replay);
                    if let Some(replay) = self.replay.as_mut() {
                        replay.in_flight = Some(InFlight::OnChannel { what });
                    }
                }
                Step::Consume { channel: id, mut consume, queue } => {
                    let Some(channel) = self.channels.get(&id).cloned() else { continue };
                    if !queue.is_running() {
                        continue;
                    }
                    consume.queue = self.topology.current(&consume.queue);
                    if let Some(next) = queue.stream_resume() {
                        // A stream consumer goes on after the last delivery it was given.
                        let offset = lepus_codec::FieldValue::I64(i64::try_from(next).unwrap_or(i64::MAX));
                        let _ = consume.arguments.insert(STREAM_OFFSET, offset);
                    }
                    let what = format!("consumer {} on queue {}", consume.consumer_tag, consume.queue);
                    let token = ReplyTo::Consume {
                        tx: None,
                        channel: channel.clone(),
                        consume: consume.clone(),
                        queue: queue.clone(),
                    };
                    self.proto.consume(channel.key(), consume, token, queue);
                    if let Some(replay) = self.replay.as_mut() {
                        replay.in_flight = Some(InFlight::OnChannel { what });
                    }
                }
            }
        }
    }

    /// The channel declarations run on, opened on first use (and again after an error
    /// closed it); the broker takes the declarations after the open.
    fn own_channel(&mut self) -> Arc<ChannelShared> {
        if let Some(own) = self.replay.as_ref().and_then(|r| r.own.clone()) {
            return own;
        }
        let own = ChannelShared::new(self.shared.clone());
        if let Ok(key) = self.proto.open_channel(ReplyTo::Nobody, own.clone()) {
            own.set_key(key);
        }
        if let Some(replay) = self.replay.as_mut() {
            replay.own = Some(own.clone());
        }
        own
    }

    pub(super) fn replay_channel_closed(&mut self) {
        if let Some(replay) = self.replay.as_mut() {
            replay.own = None;
        }
    }

    /// The reply to the step in flight.
    pub(super) fn replay_reply(&mut self, result: CallResult, now: Instant) {
        if self.failing {
            // The connection went down again; this replay is abandoned.
            return;
        }
        let Some(in_flight) = self.replay.as_mut().and_then(|r| r.in_flight.take()) else { return };
        match (in_flight, result) {
            (InFlight::Declare { entry, .. }, Ok(Reply::Method(Method::QueueDeclareOk(ok)))) => {
                self.topology.queue_recovered(entry, &ok.queue);
                self.shared.set_renames(self.topology.renames());
            }
            (InFlight::Declare { what, .. } | InFlight::OnChannel { what }, Err(error)) => {
                tracing::warn!(%what, %error, "could not re-declare after recovery");
                self.shared.event(ConnectionEvent::TopologyRecoveryFailed { what, error });
            }
            // A failed reopen closes the channel for good (see channel_closed).
            _ => {}
        }
        self.advance_replay(now);
    }

    /// A channel could not be reopened, or closed for a reason recovery cannot fix: it is
    /// closed for good, and its consumers end with `error`.
    pub(super) fn channel_failed(&mut self, channel: &Arc<ChannelShared>, error: Error) {
        self.channels.remove(&channel.id);
        for queue in self.topology.consumers_of(channel.id) {
            if let Some(waker) = queue.end(Some(error.clone())) {
                self.held.wake(waker);
            }
        }
        self.topology.channel_closed(channel.id);
        channel.closed(error);
    }

    /// Every step done: the connection (or channel) is back.
    fn finish_replay(&mut self, now: Instant) {
        let Some(replay) = self.replay.take() else { return };
        if let Some(own) = replay.own {
            self.proto.call(own.key(), chan::Close::default().into(), ReplyTo::Nobody);
        }
        if replay.whole {
            let recovery = self.recovery.take();
            for token in recovery.map(|r| r.republish).unwrap_or_default() {
                self.republish(token);
            }
            self.shared.set_down(None);
            tracing::info!(address = %self.address, "connection recovered");
            self.shared.event(ConnectionEvent::Recovered { address: self.address.to_string() });
        }
        for cmd in self.parked.take() {
            self.command(cmd, now);
        }
    }

    /// A publish that was awaiting its confirm at the loss, sent again on its reopened
    /// channel (its confirm now resolves with the new copy's).
    fn republish(&mut self, mut token: ConfirmTx) {
        let Some(resend) = token.resend.take() else { return };
        let key = resend.channel.key();
        let frames = resend.frames.clone();
        token.resend = Some(resend);
        let return_key = token.resend.as_ref().and_then(|r| r.return_key.clone());
        if let Err((e, Some(token))) = self.proto.publish(key, frames, Some((token, return_key))) {
            let _ = token.tx.send(Err(Error::ConnectionLost(Box::new(e))));
        }
    }
}
