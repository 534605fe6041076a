//! An in-test TCP proxy between the client and the real broker, with the network faults the
//! reliability catalogue needs: a clean cut (FIN both ways), a reset (RST both ways), a
//! half-open stall, a drip feed that splits frames at every byte, and cuts after an exact
//! number of bytes in one direction.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use lepus_tests::proxy::{Direction, Proxy};
//!
//! let proxy = Proxy::to_broker().await?;
//! let conn = lepus::Connection::connect_with(proxy.options()).await.unwrap();
//! // Cut the link once 1000 more bytes went from the client to the broker.
//! proxy.cut_after(Direction::ClientToBroker, proxy.forwarded(Direction::ClientToBroker) + 1000);
//! # Ok(()) }
//! ```
//!
//! Controls act on every connection through the proxy (tests use one); byte counts are
//! totals over the proxy's life. Dropping the proxy aborts its listener and every
//! connection's tasks, closing their sockets.

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use lepus::ConnectionOptions;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::watch,
    task::{JoinHandle, JoinSet},
};

/// How long a cut waits for each side to close after our FIN before giving up on it.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// Bytes read from a socket at once.
const CHUNK: usize = 16 * 1024;

/// One direction of the proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Bytes the client sends to the broker.
    ClientToBroker,
    /// Bytes the broker sends to the client.
    BrokerToClient,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::ClientToBroker => 0,
            Direction::BrokerToClient => 1,
        }
    }
}

/// What the proxy does with the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    /// Forward `bytes` bytes, then wait `interval`, and so on.
    Drip {
        bytes: usize,
        interval: Duration,
    },
    /// Stop forwarding, keep the sockets open.
    Stall,
    /// FIN both ways.
    Cut,
    /// RST both ways.
    Reset,
}

/// What to do once a direction's byte limit is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Cut,
    Reset,
}

struct Control {
    /// Per direction, so that one may drip while the other flows.
    mode: [watch::Sender<Mode>; 2],
    /// Per direction: forward up to this many bytes in total, then apply `fault`.
    limit: [AtomicU64; 2],
    /// Per direction: 0 = cut, 1 = reset.
    fault: [AtomicU64; 2],
    forwarded: [AtomicU64; 2],
    /// Per direction: every byte forwarded, once [`Proxy::capture`] turned it on.
    captured: [Mutex<Option<Vec<u8>>>; 2],
    connections: AtomicUsize,
}

impl Control {
    fn fault_mode(&self, dir: Direction) -> Mode {
        match self.fault[dir.index()].load(Ordering::Acquire) {
            0 => Mode::Cut,
            _ => Mode::Reset,
        }
    }

    fn set_both(&self, mode: Mode) {
        for sender in &self.mode {
            sender.send_replace(mode);
        }
    }
}

/// A proxy listening on `127.0.0.1:0` that forwards each connection to an upstream address.
pub struct Proxy {
    addr: SocketAddr,
    control: Arc<Control>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("modes", &self.control.mode.each_ref().map(|m| *m.borrow()))
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy to the test broker ([`crate::broker_addr`]).
    pub async fn to_broker() -> io::Result<Proxy> {
        Proxy::start(crate::broker_addr()).await
    }

    /// A proxy to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let control = Arc::new(Control {
            mode: [watch::Sender::new(Mode::Forward), watch::Sender::new(Mode::Forward)],
            limit: [AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)],
            fault: [AtomicU64::new(0), AtomicU64::new(0)],
            forwarded: [AtomicU64::new(0), AtomicU64::new(0)],
            captured: [Mutex::new(None), Mutex::new(None)],
            connections: AtomicUsize::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, upstream, control.clone()));
        Ok(Proxy { addr, control, task })
    }

    /// Where the proxy listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connection options pointing at the proxy (guest/guest, 5 s connection timeout).
    pub fn options(&self) -> ConnectionOptions {
        crate::fake_broker::options_for(self.addr)
    }

    /// Closes both sides with a FIN (each side reads end of file).
    pub fn cut(&self) {
        self.control.set_both(Mode::Cut);
    }

    /// Resets both sides (each side gets an RST).
    pub fn reset(&self) {
        self.control.set_both(Mode::Reset);
    }

    /// Stops forwarding in both directions and keeps both sockets open: a half-open link.
    pub fn stall(&self) {
        self.control.set_both(Mode::Stall);
    }

    /// Forwards normally again (after a stall or a drip).
    pub fn resume(&self) {
        self.control.set_both(Mode::Forward);
    }

    /// Forwards `bytes` bytes at a time, waiting `interval` after each, in both directions.
    pub fn drip(&self, bytes: usize, interval: Duration) {
        self.control.set_both(Mode::Drip { bytes: bytes.max(1), interval });
    }

    /// Like [`Proxy::drip`] in `dir` only; the other direction is left as it is.
    pub fn drip_one_way(&self, dir: Direction, bytes: usize, interval: Duration) {
        self.control.mode[dir.index()].send_replace(Mode::Drip { bytes: bytes.max(1), interval });
    }

    /// Cuts (FIN both ways) as soon as `total` bytes have been forwarded in `dir`, counted
    /// over the proxy's life; not one byte more is forwarded in that direction.
    pub fn cut_after(&self, dir: Direction, total: u64) {
        self.limit_after(dir, total, Fault::Cut);
    }

    /// Like [`Proxy::cut_after`] with a reset.
    pub fn reset_after(&self, dir: Direction, total: u64) {
        self.limit_after(dir, total, Fault::Reset);
    }

    fn limit_after(&self, dir: Direction, total: u64, fault: Fault) {
        let i = dir.index();
        self.control.fault[i].store(u64::from(fault == Fault::Reset), Ordering::Release);
        self.control.limit[i].store(total, Ordering::Release);
        // A limit already reached acts now.
        if self.control.forwarded[i].load(Ordering::Acquire) >= total {
            self.control.set_both(self.control.fault_mode(dir));
        }
    }

    /// Bytes forwarded in `dir` so far.
    pub fn forwarded(&self, dir: Direction) -> u64 {
        self.control.forwarded[dir.index()].load(Ordering::Acquire)
    }

    /// Keeps a copy of every byte forwarded in `dir` from now on (call it before the client
    /// connects to see the whole conversation); see [`Proxy::captured`].
    pub fn capture(&self, dir: Direction) {
        let mut captured = self.control.captured[dir.index()].lock().unwrap_or_else(PoisonError::into_inner);
        captured.get_or_insert_with(Vec::new);
    }

    /// The bytes forwarded in `dir` since [`Proxy::capture`] (empty if it was not called).
    pub fn captured(&self, dir: Direction) -> Vec<u8> {
        self.control.captured[dir.index()].lock().unwrap_or_else(PoisonError::into_inner).clone().unwrap_or_default()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.control.connections.load(Ordering::Acquire)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: String, control: Arc<Control>) {
    // Every connection's pumps live in this set: aborting the loop drops them all.
    let mut pumps = JoinSet::new();
    loop {
        let client = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(_) => continue,
            },
            Some(_) = pumps.join_next() => continue,
        };
        control.connections.fetch_add(1, Ordering::AcqRel);
        let Ok(server) = TcpStream::connect(upstream.as_str()).await else {
            // The client sees the proxy close: as if the broker refused.
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (client_r, client_w) = client.into_split();
        let (server_r, server_w) = server.into_split();
        pumps.spawn(pump(client_r, server_w, Direction::ClientToBroker, control.clone()));
        pumps.spawn(pump(server_r, client_w, Direction::BrokerToClient, control.clone()));
    }
}

/// Moves bytes from `from` to `to` as the mode says, until either side closes or the link
/// is cut or reset.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, dir: Direction, control: Arc<Control>) {
    let i = dir.index();
    let mut mode_rx = control.mode[i].subscribe();
    let mut buf = vec![0u8; CHUNK];
    // buf[start..end] was read and not yet forwarded.
    let (mut start, mut end) = (0usize, 0usize);
    loop {
        let mode = *mode_rx.borrow_and_update();
        match mode {
            Mode::Cut => return cut(from, to).await,
            Mode::Reset => return reset(&from, &to),
            Mode::Stall => {
                if mode_rx.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Mode::Forward | Mode::Drip { .. } => {}
        }
        if start == end {
            tokio::select! {
                read = from.read(&mut buf) => match read {
                    Ok(0) | Err(_) => {
                        // This side closed: pass the FIN on and let the other direction finish.
                        let _ = to.shutdown().await;
                        return;
                    }
                    Ok(n) => (start, end) = (0, n),
                },
                changed = mode_rx.changed() => if changed.is_err() { return },
            }
            continue;
        }
        // What the byte limit still allows in this direction.
        let done = control.forwarded[i].load(Ordering::Acquire);
        let budget = control.limit[i].load(Ordering::Acquire).saturating_sub(done);
        if budget == 0 {
            control.set_both(control.fault_mode(dir));
            continue;
        }
        let (step, pause) = match mode {
            Mode::Drip { bytes, interval } => (bytes, Some(interval)),
            _ => (end - start, None),
        };
        let step = step.min(end - start).min(usize::try_from(budget).unwrap_or(usize::MAX));
        let Some(chunk) = buf.get(start..start + step) else { return };
        tokio::select! {
            written = to.write(chunk) => match written {
                Ok(0) | Err(_) => return reset(&from, &to),
                Ok(n) => {
                    if let Some(copy) =
                        control.captured[i].lock().unwrap_or_else(PoisonError::into_inner).as_mut()
                    {
                        copy.extend_from_slice(chunk.get(..n).unwrap_or_default());
                    }
                    start += n;
                    let total = control.forwarded[i].fetch_add(n as u64, Ordering::AcqRel) + n as u64;
                    // The limit acts as soon as it is reached, not when the next byte comes.
                    if total >= control.limit[i].load(Ordering::Acquire) {
                        control.set_both(control.fault_mode(dir));
                    }
                }
            },
            changed = mode_rx.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        }
        if let Some(interval) = pause {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                changed = mode_rx.changed() => if changed.is_err() { return },
            }
        }
    }
}

/// FIN towards `to`, then read `from` until it closes too (bounded), so that unread bytes do
/// not turn the close into a reset.
async fn cut(mut from: OwnedReadHalf, mut to: OwnedWriteHalf) {
    let _ = to.shutdown().await;
    let mut sink = vec![0u8; CHUNK];
    let drain = async {
        while let Ok(n) = from.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_LIMIT, drain).await;
}

/// `SO_LINGER` 0 on both sockets: closing them (when both pumps have dropped their halves)
/// sends RSTs.
fn reset(from: &OwnedReadHalf, to: &OwnedWriteHalf) {
    let _ = from.as_ref().set_zero_linger();
    let _ = to.as_ref().set_zero_linger();
}
