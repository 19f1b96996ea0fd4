//! Socket reads and writes of the relay.

use std::task::Poll;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;

use super::Blocked;
use crate::server::ServerConn;
use crate::tls::MaybeTls;
use crate::uring::HIGH_WATER;

pub(super) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Reads what is available, growing the buffer only when it is nearly full. A plain
/// polled function rather than an `async fn`: the relay waits on two of these at
/// once in every idle client's task, so their size is paid per client.
pub(crate) fn read_some<'a>(
    stream: &'a mut MaybeTls,
    buf: &'a mut BytesMut,
) -> impl std::future::Future<Output = std::io::Result<usize>> + Unpin + 'a {
    std::future::poll_fn(move |cx| poll_read_some(stream, buf, cx))
}

/// [`read_some`], polled.
pub(crate) fn poll_read_some(
    stream: &mut MaybeTls,
    buf: &mut BytesMut,
    cx: &mut std::task::Context<'_>,
) -> Poll<std::io::Result<usize>> {
    if let MaybeTls::Uring(s) = &*stream {
        return s.poll_read_buf(cx, buf);
    }
    if buf.capacity() - buf.len() < 2048 {
        if buf.capacity() == 0 {
            // Allocate only once there is something to read.
            match &*stream {
                MaybeTls::Plain(tcp) => std::task::ready!(tcp.poll_read_ready(cx))?,
                MaybeTls::Unix(unix) => std::task::ready!(unix.poll_read_ready(cx))?,
                _ => {}
            }
        }
        buf.reserve(8192);
    }
    tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut *stream), cx, buf)
}

/// What the relay waits for from its server connection.
pub(super) enum FromServer {
    /// Bytes read (0 at its end), or the read's error.
    Read(std::io::Result<usize>),
    /// Following: the leader is done with the connection.
    Passed,
    /// The server took what waited for it (see [`server_full`]).
    Drained,
}

/// The server's next bytes, unless `following`'s leader is not done yet: before that,
/// the connection's replies are not this client's to read. While `full`, also the
/// moment the server has taken what waited for it. One future rather than several
/// select arms: every idle client's task holds the relay's largest wait.
pub(super) fn from_server<'a>(
    conn: &'a mut crate::server::ServerConn,
    following: Option<&'a crate::pool::follow::Baton>,
    full: bool,
) -> impl std::future::Future<Output = FromServer> + 'a {
    std::future::poll_fn(move |cx| {
        if let Some(b) = following {
            return b.poll_ready(cx).map(|()| FromServer::Passed);
        }
        if let (true, MaybeTls::Uring(s)) = (full, &conn.stream) {
            // A failed socket is left to the read below, which reports it.
            if let Poll::Ready(Ok(())) = s.poll_backlog(cx, HIGH_WATER) {
                return Poll::Ready(FromServer::Drained);
            }
        }
        poll_read_some(&mut conn.stream, &mut conn.rbuf, cx).map(FromServer::Read)
    })
}

/// Whether more than `HIGH_WATER` of what pgmux sent waits for the server to take it:
/// the client's next messages then wait in its socket until the server has, so that
/// what pgmux queues towards a server stays bounded.
pub(super) fn server_full(conn: &crate::server::ServerConn) -> bool {
    matches!(&conn.stream, MaybeTls::Uring(s) if s.backlog() > HIGH_WATER)
}

/// Replies read ahead, at most, while pgmux waits to write to a server. Past this the
/// write stops waiting, and the relay passes those replies on (or waits for the
/// client to take them) before the server is given more.
const READ_AHEAD: usize = HIGH_WATER;

/// Writes to a server while still reading its replies into its buffer: a client that
/// pipelines a lot would otherwise fill both directions and deadlock pgmux against
/// the server, which stops reading while its own writes are blocked. The replies
/// read so are bounded by [`READ_AHEAD`]: a client that pipelines and never reads
/// would otherwise have pgmux read, and hold, every reply the server makes. Returns
/// how much of `data` went to the socket; the rest is the caller's to write again.
pub(super) async fn write_to_server(conn: &mut ServerConn, data: &[u8]) -> std::io::Result<usize> {
    if let MaybeTls::Uring(s) = &conn.stream {
        s.send_slice(data)?;
        let rbuf = &mut conn.rbuf;
        std::future::poll_fn(|cx| -> Poll<std::io::Result<()>> {
            loop {
                if rbuf.len() >= READ_AHEAD || s.poll_backlog(cx, HIGH_WATER)?.is_ready() {
                    return Poll::Ready(Ok(()));
                }
                match s.poll_read_buf(cx, rbuf)? {
                    Poll::Ready(0) => {
                        return Poll::Ready(Err(std::io::ErrorKind::UnexpectedEof.into()))
                    }
                    Poll::Ready(_) => continue,
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await?;
        return Ok(data.len());
    }
    let MaybeTls::Plain(tcp) = &conn.stream else {
        write_all(&mut conn.stream, data).await?;
        return Ok(data.len());
    };
    let mut written = 0;
    while written < data.len() {
        match tcp.try_write(&data[written..]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if conn.rbuf.len() >= READ_AHEAD {
                    break;
                }
                tokio::select! {
                    r = tcp.writable() => r?,
                    r = tcp.readable() => {
                        r?;
                        conn.rbuf.reserve(8192);
                        match tcp.try_read_buf(&mut conn.rbuf) {
                            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                            Ok(_) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// Writes as much of `buf` as the socket takes without waiting, dropping what was
/// written; `Blocked::Flush` when something is left. An io_uring socket takes it all,
/// and blocks only when too much is queued (or the socket failed).
pub(super) fn write_now(stream: &mut MaybeTls, buf: &mut BytesMut) -> Result<(), Blocked> {
    if buf.is_empty() {
        return Ok(());
    }
    if let MaybeTls::Uring(s) = stream {
        return match s.send_buf(buf) {
            Ok(backlog) if backlog <= HIGH_WATER => Ok(()),
            _ => Err(Blocked::Flush),
        };
    }
    let n = write_some_now(stream, buf);
    buf.advance(n);
    if buf.is_empty() {
        buf.clear();
        Ok(())
    } else {
        Err(Blocked::Flush)
    }
}

/// Writes as much of `data` as the socket takes without waiting; returns how much.
/// Nothing is written to TLS streams here: their writes go through [`write_all`].
pub(super) fn write_some_now(stream: &mut MaybeTls, data: &[u8]) -> usize {
    let try_write = |rest: &[u8]| match &*stream {
        MaybeTls::Plain(tcp) => tcp.try_write(rest),
        MaybeTls::Unix(unix) => unix.try_write(rest),
        _ => Ok(0),
    };
    let mut written = 0;
    while written < data.len() {
        match try_write(&data[written..]) {
            Ok(n) if n > 0 => written += n,
            // Would block, or an error that the awaited write will report.
            _ => break,
        }
    }
    written
}

/// Writes all of `data`. On io_uring, "written" means queued on the socket, behind at
/// most [`HIGH_WATER`] bytes: a socket closes only after its output has gone out.
#[inline]
pub(crate) async fn write_all(stream: &mut MaybeTls, data: &[u8]) -> std::io::Result<()> {
    if let MaybeTls::Uring(s) = stream {
        s.send_slice(data)?;
        return std::future::poll_fn(|cx| s.poll_backlog(cx, HIGH_WATER)).await;
    }
    stream.write_all(data).await?;
    if stream.is_tls() {
        stream.flush().await?;
    }
    Ok(())
}
