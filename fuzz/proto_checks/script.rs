//! The input format of the `proto` target: a script of steps, read by a hand-rolled byte
//! interpreter (why not `arbitrary`: see the module documentation of `proto_checks`).
//!
//! ```text
//! input  = config-byte step*
//! step   = raw | op
//! raw    = opcode(Raw) len:u16-be bytes[len]   inbound bytes, decoded like the driver does
//! op     = opcode a b c d                       one step of another kind, four argument bytes
//! ```
//!
//! The opcode is `byte % OPS.len()`, so every byte is some step, and reads past the end give
//! zeros, so every byte string is a script: the fuzzer never wastes an input on a parse
//! error. What the argument bytes mean is up to each kind (see `harness.rs`); most of them
//! pick from small tables of values that matter (a known channel, a consumer tag the client
//! used, a `frame_max` at the edge), so that a short input reaches deep states, while the
//! `Raw` step lets any byte reach the decoder and the state machine.

/// Reads an input front to back. Past the end every read gives zeros and takes nothing.
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Reader { data, at: 0 }
    }

    /// True once every byte was read.
    pub(crate) fn is_empty(&self) -> bool {
        self.at >= self.data.len()
    }

    pub(crate) fn byte(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at = (self.at + 1).min(self.data.len());
        b
    }

    /// Up to `n` bytes: fewer if the input ends first.
    pub(crate) fn take(&mut self, n: usize) -> &'a [u8] {
        let end = self.at.saturating_add(n).min(self.data.len());
        let bytes = self.data.get(self.at..end).unwrap_or_default();
        self.at = end;
        bytes
    }

    /// The next step, or `None` at the end of the input.
    pub(crate) fn step(&mut self) -> Option<Step<'a>> {
        if self.is_empty() {
            return None;
        }
        let kind = Op::from_code(self.byte());
        if kind == Op::Raw {
            let len = u16::from_be_bytes([self.byte(), self.byte()]);
            return Some(Step::Raw(self.take(usize::from(len))));
        }
        Some(Step::Op(kind, [self.byte(), self.byte(), self.byte(), self.byte()]))
    }
}

/// One step of a script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step<'a> {
    /// Bytes from the socket.
    Raw(&'a [u8]),
    /// Anything else, with its four argument bytes.
    Op(Op, [u8; 4]),
}

/// What a step does. The argument bytes are `[a, b, c, d]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// Bytes from the socket (`len` and the bytes follow instead of four arguments).
    Raw,
    /// A frame from the broker, built from a template: `a` picks the template (see
    /// [`Inbound`]), `b` the channel, `c` and `d` are its parameters.
    Frame,
    /// `open_channel`, or `open_channel_at` an id picked by `a` and `b` when `a & 7 != 0`.
    OpenChannel,
    /// `call`: `a` picks the method (see [`Call`]), `b` the channel, `c` flags, `d` a
    /// parameter (argument table shape, prefetch).
    Call,
    /// `consume`: `b` the channel, `c` the tag (0 = let the client choose), `d` flags.
    Consume,
    /// `send`: `a` picks the method (see [`Async`]), `b` the channel, `c` the delivery tag,
    /// `d` flags.
    Send,
    /// `publish`: `a` flags (confirm, mandatory, vectored), `b` the channel, `c` the route,
    /// `d` the body size.
    Publish,
    /// `update_secret`: `a` the secret's size, `b` the reason.
    UpdateSecret,
    /// `close`: `a` the code, `b` the text, `c` the close timeout.
    Close,
    /// Moves the clock: `a` the unit, `b c` the amount (big-endian).
    Advance,
    /// `handle_timeout(now)` whether or not a deadline passed (a spurious wake-up).
    Timeout,
    /// `set_reading(a & 1 == 1)`.
    Reading,
    /// `poll_transmit`: everything if `a` is even, else one chunk.
    Transmit,
    /// `poll_event`: everything if `a` is 0, else up to `a` events.
    Events,
    /// `handle_io_error`: `a` picks the kind.
    IoError,
    /// `handle_decode_error`: `a` picks the error.
    DecodeError,
    /// `handle_refused_header`: `b` the channel, `c` the body size.
    RefusedHeader,
    /// `continue_epochs(a)`.
    ContinueEpochs,
}

/// Every step kind, by opcode.
pub(crate) const OPS: [Op; 18] = [
    Op::Raw,
    Op::Frame,
    Op::OpenChannel,
    Op::Call,
    Op::Consume,
    Op::Send,
    Op::Publish,
    Op::UpdateSecret,
    Op::Close,
    Op::Advance,
    Op::Timeout,
    Op::Reading,
    Op::Transmit,
    Op::Events,
    Op::IoError,
    Op::DecodeError,
    Op::RefusedHeader,
    Op::ContinueEpochs,
];

impl Op {
    fn from_code(code: u8) -> Op {
        OPS.get(usize::from(code) % OPS.len()).copied().unwrap_or(Op::Raw)
    }

    fn code(self) -> u8 {
        code_of(&OPS, self)
    }
}

/// Frame templates for [`Op::Frame`], by `a % INBOUND.len()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inbound {
    Heartbeat,
    /// `c`: 0 a good start, 1 without PLAIN, 2 a wrong version; `d`: server properties depth.
    Start,
    Secure,
    /// `c`: `frame_max` (low nibble) and `channel_max` (high nibble) picks; `d`: heartbeat pick.
    Tune,
    OpenOk,
    /// `c`: reply code pick.
    Close,
    CloseOk,
    Blocked,
    Unblocked,
    UpdateSecretOk,
    ChannelOpenOk,
    /// `c & 1`: active.
    Flow,
    FlowOk,
    /// `c`: reply code pick.
    ChannelClose,
    ChannelCloseOk,
    /// `c`: consumer tag pick.
    ConsumeOk,
    /// `c`: consumer tag pick; `d & 1`: nowait.
    Cancel,
    /// `c`: consumer tag pick.
    CancelOk,
    /// `c`: consumer tag pick; `d`: delivery tag.
    Deliver,
    /// `c`: route pick.
    Return,
    /// `d`: delivery tag.
    GetOk,
    GetEmpty,
    /// `c`: delivery tag (255: `u64::MAX`); `d & 1`: multiple.
    Ack,
    /// Like `Ack`.
    Nack,
    QosOk,
    RecoverOk,
    QueueDeclareOk,
    QueueBindOk,
    QueuePurgeOk,
    QueueDeleteOk,
    QueueUnbindOk,
    ExchangeDeclareOk,
    ExchangeDeleteOk,
    ExchangeBindOk,
    ExchangeUnbindOk,
    TxSelectOk,
    TxCommitOk,
    TxRollbackOk,
    ConfirmSelectOk,
    /// `c`: body size pick; `d`: properties pick.
    Header,
    /// `c`: size pick; `d`: the byte it is filled with.
    Body,
    /// A whole `basic.deliver` (method, header, bodies): `c` tag pick, `d` body size pick.
    Delivery,
    /// A whole `basic.return`: `c` route pick, `d` body size pick.
    Returned,
    /// A whole `basic.get-ok`: `d` body size pick.
    Got,
}

pub(crate) const INBOUND: [Inbound; 44] = [
    Inbound::Heartbeat,
    Inbound::Start,
    Inbound::Secure,
    Inbound::Tune,
    Inbound::OpenOk,
    Inbound::Close,
    Inbound::CloseOk,
    Inbound::Blocked,
    Inbound::Unblocked,
    Inbound::UpdateSecretOk,
    Inbound::ChannelOpenOk,
    Inbound::Flow,
    Inbound::FlowOk,
    Inbound::ChannelClose,
    Inbound::ChannelCloseOk,
    Inbound::ConsumeOk,
    Inbound::Cancel,
    Inbound::CancelOk,
    Inbound::Deliver,
    Inbound::Return,
    Inbound::GetOk,
    Inbound::GetEmpty,
    Inbound::Ack,
    Inbound::Nack,
    Inbound::QosOk,
    Inbound::RecoverOk,
    Inbound::QueueDeclareOk,
    Inbound::QueueBindOk,
    Inbound::QueuePurgeOk,
    Inbound::QueueDeleteOk,
    Inbound::QueueUnbindOk,
    Inbound::ExchangeDeclareOk,
    Inbound::ExchangeDeleteOk,
    Inbound::ExchangeBindOk,
    Inbound::ExchangeUnbindOk,
    Inbound::TxSelectOk,
    Inbound::TxCommitOk,
    Inbound::TxRollbackOk,
    Inbound::ConfirmSelectOk,
    Inbound::Header,
    Inbound::Body,
    Inbound::Delivery,
    Inbound::Returned,
    Inbound::Got,
];

/// Methods for [`Op::Call`], by `a % CALLS.len()`. `c & 1` is `nowait` (or `active`) where
/// the method has it; `d` shapes an argument table (see `harness::arguments`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    Flow,
    ChannelClose,
    ExchangeDeclare,
    ExchangeDelete,
    ExchangeBind,
    ExchangeUnbind,
    QueueDeclare,
    QueueBind,
    QueuePurge,
    QueueDelete,
    QueueUnbind,
    Qos,
    /// `c >> 1`: consumer tag pick.
    Cancel,
    Get,
    Recover,
    TxSelect,
    TxCommit,
    TxRollback,
    ConfirmSelect,
    /// Asynchronous: answered `Sent` at once.
    RecoverAsync,
    /// A second `channel.open` on an open channel: the broker would close the connection.
    ChannelOpen,
}

pub(crate) const CALLS: [Call; 21] = [
    Call::Flow,
    Call::ChannelClose,
    Call::ExchangeDeclare,
    Call::ExchangeDelete,
    Call::ExchangeBind,
    Call::ExchangeUnbind,
    Call::QueueDeclare,
    Call::QueueBind,
    Call::QueuePurge,
    Call::QueueDelete,
    Call::QueueUnbind,
    Call::Qos,
    Call::Cancel,
    Call::Get,
    Call::Recover,
    Call::TxSelect,
    Call::TxCommit,
    Call::TxRollback,
    Call::ConfirmSelect,
    Call::RecoverAsync,
    Call::ChannelOpen,
];

/// Methods for [`Op::Send`], by `a % ASYNCS.len()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Async {
    Ack,
    Nack,
    Reject,
    /// `basic.recover-async`.
    Recover,
    /// `queue.declare` with `nowait` and an argument table shaped by `d` (it may not encode).
    DeclareNowait,
}

pub(crate) const ASYNCS: [Async; 5] = [Async::Ack, Async::Nack, Async::Reject, Async::Recover, Async::DeclareNowait];

/// The opcode or selector byte of `item` in `table`.
pub(crate) fn code_of<T: PartialEq + Copy>(table: &[T], item: T) -> u8 {
    table.iter().position(|t| *t == item).and_then(|at| u8::try_from(at).ok()).unwrap_or(0)
}

/// Writes scripts (for the seed corpus and the tests): the inverse of [`Reader::step`].
pub(crate) struct Script(Vec<u8>);

impl Script {
    /// A script for the connection configuration `config` (see `harness::Setup`).
    pub(crate) fn new(config: u8) -> Self {
        Script(vec![config])
    }

    pub(crate) fn op(&mut self, op: Op, args: [u8; 4]) -> &mut Self {
        self.0.push(op.code());
        self.0.extend_from_slice(&args);
        self
    }

    /// Bytes from the socket; at most `u16::MAX` of them.
    pub(crate) fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
        self.0.push(Op::Raw.code());
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(bytes.get(..usize::from(len)).unwrap_or_default());
        self
    }

    /// A frame from the broker, built from `template` on channel pick `channel`.
    pub(crate) fn frame(&mut self, template: Inbound, channel: u8, c: u8, d: u8) -> &mut Self {
        self.op(Op::Frame, [code_of(&INBOUND, template), channel, c, d])
    }

    pub(crate) fn call(&mut self, call: Call, channel: u8, c: u8, d: u8) -> &mut Self {
        self.op(Op::Call, [code_of(&CALLS, call), channel, c, d])
    }

    pub(crate) fn send(&mut self, send: Async, channel: u8, c: u8, d: u8) -> &mut Self {
        self.op(Op::Send, [code_of(&ASYNCS, send), channel, c, d])
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}
