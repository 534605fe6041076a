//! The driver's socket work: vectored writes, the last bounded flush and shutdown, turning
//! I/O errors into the most telling [`Error`], and the socket option that detects a dead
//! peer while reading is paused.

use std::{collections::VecDeque, io::IoSlice, time::Duration};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::Error;

/// How long [`read_last_words`] may take at most, and how much it reads at most.
const LAST_WORDS: Duration = Duration::from_millis(100);
const LAST_WORDS_MAX: usize = 1 << 20;
/// Segments handed to one vectored write.
const MAX_IOV: usize = 64;
/// How long the driver tries to write what is left (a close-ok, a connection.close) once
/// the connection is over, when the peer is still there to read it.
const FINAL_FLUSH: Duration = Duration::from_millis(250);
/// How long a shutdown (for TLS: sending `close_notify`) may take before the socket is simply
/// dropped: a peer that reads nothing must not keep the driver alive.
const SHUTDOWN: Duration = Duration::from_millis(250);

/// Writes what the socket takes of `out` (returning how many bytes), then flushes once
/// `out` is empty (TLS buffers internally).
pub(super) async fn write_some<W: AsyncWrite + Unpin>(
    w: &mut W,
    out: &mut VecDeque<Bytes>,
    needs_flush: &mut bool,
) -> std::io::Result<usize> {
    let mut written = 0;
    if !out.is_empty() {
        let n = {
            let slices: Vec<IoSlice<'_>> = out.iter().take(MAX_IOV).map(|b| IoSlice::new(b)).collect();
            w.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        advance(out, n);
        written = n;
        *needs_flush = true;
    }
    if out.is_empty() && *needs_flush {
        w.flush().await?;
        *needs_flush = false;
    }
    Ok(written)
}

fn advance(out: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let Some(front) = out.front_mut() else { return };
        if front.len() <= n {
            n -= front.len();
            out.pop_front();
        } else {
            front.advance(n);
            n = 0;
        }
    }
}

/// Reads what the peer sent before its socket went away, after a write to it failed: its
/// last frames (a `connection.close` saying why, say) are still in our socket. A dead
/// socket answers a read at once (data, end of file or an error), so this returns as soon
/// as the reactor has seen it; [`LAST_WORDS`] bounds it all the same. Returns the bytes
/// read (at most [`LAST_WORDS_MAX`]).
pub(super) async fn read_last_words<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut BytesMut) -> usize {
    let mut total = 0;
    let read = async {
        while total < LAST_WORDS_MAX {
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(64 * 1024);
            }
            match reader.read_buf(buf).await {
                Ok(n) if n > 0 => total += n,
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(LAST_WORDS, read).await;
    total
}

/// The end of the socket: if `flush`, what is left is written for at most [`FINAL_FLUSH`];
/// then the write side is shut down for at most [`SHUTDOWN`]. Both are bounded, so a peer
/// that reads nothing cannot keep the driver (and the socket) alive.
pub(super) async fn finish<W: AsyncWrite + Unpin>(
    w: &mut W,
    out: &mut VecDeque<Bytes>,
    mut needs_flush: bool,
    flush: bool,
) {
    if flush {
        let drain = async {
            while !out.is_empty() || needs_flush {
                write_some(w, out, &mut needs_flush).await?;
            }
            Ok::<_, std::io::Error>(())
        };
        let _ = tokio::time::timeout(FINAL_FLUSH, drain).await;
    }
    out.clear();
    let _ = tokio::time::timeout(SHUTDOWN, w.shutdown()).await;
}

/// On TLS connections a failed read or write often hides a TLS alert (a client certificate
/// refused after a TLS 1.3 handshake, ...): name it. A reset or EOF before the broker even
/// sent `connection.start` is, on TLS, the server refusing us after the handshake.
pub(crate) fn io_error(e: std::io::Error, tls: bool, before_amqp: bool) -> Error {
    if !tls {
        return Error::from(e);
    }
    match crate::tls::describe_io_error(&e) {
        crate::tls::TlsError::Io(_) if before_amqp => {
            Error::from(crate::tls::TlsError::ClosedAfterHandshake(e.to_string()))
        }
        crate::tls::TlsError::Io(_) => Error::from(e),
        named => Error::from(named),
    }
}

/// A second handle on the TCP socket, for socket options the driver changes while it runs.
///
/// While the driver does not read the socket (consumers are behind), the broker's silence
/// proves nothing: its frames wait in the socket. A dead peer is then told from a live one
/// by TCP itself: with `TCP_USER_TIMEOUT` set, the kernel fails the connection when the
/// heartbeats we keep sending stay unacknowledged that long. A live broker's kernel
/// acknowledges them even while its application (or ours) is stalled.
pub(crate) struct SocketControl {
    #[cfg(target_os = "linux")]
    socket: Option<socket2::Socket>,
}

impl SocketControl {
    /// No socket (between connections).
    pub(crate) fn disconnected() -> Self {
        SocketControl {
            #[cfg(target_os = "linux")]
            socket: None,
        }
    }

    /// Control over `tcp` (a duplicate of its descriptor; options apply to the one socket).
    pub(crate) fn for_tcp(tcp: &tokio::net::TcpStream) -> Self {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsFd;
            let socket = tcp.as_fd().try_clone_to_owned().ok().map(socket2::Socket::from);
            SocketControl { socket }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = tcp;
            SocketControl {}
        }
    }

    /// Sets (or with `None` clears) how long sent data may stay unacknowledged before the
    /// kernel gives the connection up.
    pub(super) fn set_unacked_limit(&self, limit: Option<Duration>) {
        #[cfg(target_os = "linux")]
        if let Some(socket) = &self.socket
            && let Err(e) = socket.set_tcp_user_timeout(limit)
        {
            tracing::debug!(error = %e, "could not set TCP_USER_TIMEOUT");
        }
        #[cfg(not(target_os = "linux"))]
        let _ = limit;
    }
}
