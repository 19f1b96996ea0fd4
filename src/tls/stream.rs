//! [`MaybeTls`]: one connection type for plain and encrypted peers, over TCP or a
//! Unix-domain socket, so the client session and the server connection are written once
//! and never ask which one they hold.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// A connection that is plain TCP, a plain Unix-domain socket, or TLS over TCP.
///
/// `Server` is the proxy's side of a client's connection (pgmux accepted the handshake);
/// `Client` is the proxy's side of a connection to Postgres (pgmux started it). The TLS
/// streams are boxed: they carry rustls' buffers and would make every `MaybeTls` large.
#[derive(Debug)]
pub enum MaybeTls {
    Plain(TcpStream),
    /// A Postgres server's Unix-domain socket, which is never encrypted (as in libpq).
    Unix(UnixStream),
    /// A plain TCP or Unix-domain socket through io_uring, once the connection is
    /// logged in (see `uring`).
    Uring(crate::uring::UringStream),
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl MaybeTls {
    /// Whether the bytes on the wire are encrypted.
    pub fn is_tls(&self) -> bool {
        !matches!(
            self,
            MaybeTls::Plain(_) | MaybeTls::Unix(_) | MaybeTls::Uring(_)
        )
    }

    /// The tokio TCP socket underneath, for addresses and socket options; `None` for a
    /// Unix-domain socket and once the connection moved to io_uring.
    ///
    /// Reading or writing it directly would corrupt a TLS session; use the `MaybeTls`.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            MaybeTls::Plain(tcp) => Some(tcp),
            MaybeTls::Unix(_) | MaybeTls::Uring(_) => None,
            MaybeTls::Server(tls) => Some(tls.get_ref().0),
            MaybeTls::Client(tls) => Some(tls.get_ref().0),
        }
    }

    /// Output handed to an io_uring socket and not yet taken by the kernel.
    pub fn backlog(&self) -> usize {
        match self {
            MaybeTls::Uring(s) => s.backlog(),
            _ => 0,
        }
    }

    /// Moves a plain connection to io_uring when it is on (`uring::enabled`); TLS
    /// connections stay where they are.
    pub fn into_uring(self) -> io::Result<MaybeTls> {
        use crate::uring::UringStream;
        Ok(match self {
            MaybeTls::Plain(tcp) if crate::uring::enabled() => {
                MaybeTls::Uring(UringStream::new(tcp.into_std()?.into()))
            }
            MaybeTls::Unix(unix) if crate::uring::enabled() => {
                MaybeTls::Uring(UringStream::new(unix.into_std()?.into()))
            }
            other => other,
        })
    }
}

impl From<TcpStream> for MaybeTls {
    fn from(tcp: TcpStream) -> Self {
        MaybeTls::Plain(tcp)
    }
}

impl From<UnixStream> for MaybeTls {
    fn from(unix: UnixStream) -> Self {
        MaybeTls::Unix(unix)
    }
}

impl From<tokio_rustls::server::TlsStream<TcpStream>> for MaybeTls {
    fn from(tls: tokio_rustls::server::TlsStream<TcpStream>) -> Self {
        MaybeTls::Server(Box::new(tls))
    }
}

impl From<tokio_rustls::client::TlsStream<TcpStream>> for MaybeTls {
    fn from(tls: tokio_rustls::client::TlsStream<TcpStream>) -> Self {
        MaybeTls::Client(Box::new(tls))
    }
}

/// Runs `$body` with `$io` bound to the pinned inner stream, whichever variant it is.
macro_rules! delegate {
    ($self:ident, $io:ident => $body:expr) => {
        match $self.get_mut() {
            MaybeTls::Plain(s) => {
                let $io = Pin::new(s);
                $body
            }
            MaybeTls::Unix(s) => {
                let $io = Pin::new(s);
                $body
            }
            MaybeTls::Uring(s) => {
                let $io = Pin::new(s);
                $body
            }
            MaybeTls::Server(s) => {
                let $io = Pin::new(&mut **s);
                $body
            }
            MaybeTls::Client(s) => {
                let $io = Pin::new(&mut **s);
                $body
            }
        }
    };
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Unix(s) => s.is_write_vectored(),
            MaybeTls::Uring(s) => s.is_write_vectored(),
            MaybeTls::Server(s) => s.is_write_vectored(),
            MaybeTls::Client(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_shutdown(cx))
    }
}
