//! One connection from pgmux to a Postgres server: its login, the state pgmux knows it
//! holds (settings, prepared statements, cancel key), and the slow-path exchanges
//! (reset, rollback) that happen outside the relay.
//!
//! Login follows the Postgres docs, "Start-up": optional SSLRequest, StartupMessage,
//! an authentication exchange (SCRAM-SHA-256, md5 or cleartext, as the server asks),
//! then ParameterStatus and BackendKeyData until ReadyForQuery.

pub mod prepared;
pub mod settings;

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::Notify;

use crate::auth::scram::{ScramClient, UpstreamCredential};
use crate::config::{ServerAddr, UpstreamTlsMode};
use crate::protocol::{be, build, complete_frame, msg, TxStatus};
use crate::tls::MaybeTls;

pub use prepared::{ParseClock, PreparedSet};
pub use settings::Settings;

/// How pgmux proves who it is to a server.
#[derive(Clone)]
pub enum ServerCredential {
    Password(String),
    /// Recovered from a client's SCRAM login (see `auth::scram`).
    ScramKeys {
        client_key: [u8; 32],
        server_key: [u8; 32],
    },
    None,
}

/// Everything needed to open a connection to one server.
#[derive(Clone)]
pub struct ConnectOptions {
    pub addr: Arc<ServerAddr>,
    pub user: String,
    pub credential: ServerCredential,
    pub tls: Option<tokio_rustls::TlsConnector>,
    pub tls_mode: UpstreamTlsMode,
    pub connect_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("server said {code}: {message}")]
    Refused { code: String, message: String },
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("authentication: {0}")]
    Auth(String),
    #[error("no password for the server login: set server_password for this user")]
    NoCredential,
    #[error("connection closed by the server")]
    Closed,
}

/// Lets a cancel in flight hold back the reuse of its server connection, so a cancel
/// can never land on a statement of the next client (see `cancel`).
#[derive(Default)]
pub struct CancelGate {
    inflight: AtomicU32,
    /// Cancels begun and ended on this connection since it opened: a statement sent
    /// behind another client's tells from them whether a cancel not its own may have
    /// reached it (see `client::session::replay`).
    begun: AtomicU64,
    ended: AtomicU64,
    done: Notify,
}

impl CancelGate {
    pub fn begin(&self) {
        self.begun.fetch_add(1, Ordering::SeqCst);
        self.inflight.fetch_add(1, Ordering::AcqRel);
    }

    pub fn end(&self) {
        self.ended.fetch_add(1, Ordering::SeqCst);
        if self.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_waiters();
        }
    }

    /// How many cancels have begun on this connection.
    pub fn begun(&self) -> u64 {
        self.begun.load(Ordering::SeqCst)
    }

    /// How many cancels have been delivered (or given up on).
    pub fn ended(&self) -> u64 {
        self.ended.load(Ordering::SeqCst)
    }

    pub fn is_clear(&self) -> bool {
        self.inflight.load(Ordering::Acquire) == 0
    }

    /// Waits until no cancel is in flight.
    pub async fn wait_clear(&self) {
        loop {
            let notified = self.done.notified();
            if self.inflight.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Where to send a CancelRequest for whatever this connection is running.
#[derive(Clone)]
pub struct CancelTarget {
    pub addr: Arc<ServerAddr>,
    pub pid: i32,
    pub secret: i32,
    pub gate: Arc<CancelGate>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub struct ServerConn {
    pub id: u64,
    pub stream: MaybeTls,
    /// Bytes read from the server and not yet handled.
    pub rbuf: BytesMut,
    pub addr: Arc<ServerAddr>,
    pub pid: i32,
    pub secret: i32,
    /// ParameterStatus values reported at login, for clients' own login replies.
    pub reported: Arc<Vec<(String, String)>>,
    /// Settings changed since login.
    pub settings: Settings,
    pub prepared: PreparedSet,
    pub created: Instant,
    pub last_used: Instant,
    pub gate: Arc<CancelGate>,
    /// The worker whose event loop this connection's I/O is cheapest on: where its
    /// socket is registered (epoll, TLS), or where it was last used (io_uring, whose
    /// operations go to the ring of the thread that issues them).
    pub home: usize,
    /// The client that holds this connection or held it last; `None` until logged in.
    holder: Option<Holder>,
    /// The server sent a FATAL (or PANIC) error: it closes the connection next.
    pub closing: bool,
}

/// Server connections by server and backend process id, with the client process id
/// (from pgmux's BackendKeyData) of the client that holds or last held each one: a
/// notification names the backend that sent it, and its listeners should see the
/// id the sending client knows itself by.
#[allow(clippy::type_complexity)]
static HOLDERS: LazyLock<dashmap::DashMap<(Arc<ServerAddr>, i32), Arc<AtomicI32>>> =
    LazyLock::new(Default::default);

/// A server connection's entry in [`HOLDERS`], removed with the connection.
struct Holder {
    key: (Arc<ServerAddr>, i32),
    client_pid: Arc<AtomicI32>,
}

impl Holder {
    fn register(addr: Arc<ServerAddr>, pid: i32) -> Holder {
        let client_pid = Arc::new(AtomicI32::new(0));
        let key = (addr, pid);
        HOLDERS.insert(key.clone(), client_pid.clone());
        Holder { key, client_pid }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // A newer connection may have the same id (the old backend exited first).
        HOLDERS.remove_if(&self.key, |_, v| Arc::ptr_eq(v, &self.client_pid));
    }
}

/// The process id pgmux gave the client that holds, or last held, the connection to
/// backend `pid` of server `addr`.
pub fn client_of_backend(addr: &Arc<ServerAddr>, pid: i32) -> Option<i32> {
    HOLDERS
        .get(&(addr.clone(), pid))
        .map(|c| c.load(Ordering::Relaxed))
        .filter(|&c| c != 0)
}

impl ServerConn {
    pub async fn connect(
        opts: &ConnectOptions,
        max_prepared: usize,
    ) -> Result<ServerConn, ServerError> {
        match tokio::time::timeout(
            opts.connect_timeout,
            Self::connect_inner(opts, max_prepared),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(ServerError::Timeout(opts.connect_timeout)),
        }
    }

    async fn connect_inner(
        opts: &ConnectOptions,
        max_prepared: usize,
    ) -> Result<ServerConn, ServerError> {
        let stream = match dial(&opts.addr).await? {
            MaybeTls::Plain(tcp) => negotiate_tls(tcp, opts).await?,
            // libpq never asks for TLS on a Unix-domain socket, and Postgres refuses it
            // there: the socket is local, its access guarded by file permissions.
            unix => unix,
        };
        let mut conn = ServerConn {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            stream,
            rbuf: BytesMut::with_capacity(8192),
            addr: opts.addr.clone(),
            pid: 0,
            secret: 0,
            reported: Arc::default(),
            settings: Settings::default(),
            prepared: PreparedSet::new(max_prepared),
            created: Instant::now(),
            last_used: Instant::now(),
            gate: Arc::default(),
            home: crate::workers::current(),
            holder: None,
            closing: false,
        };
        conn.login(opts).await?;
        conn.holder = Some(Holder::register(conn.addr.clone(), conn.pid));
        // Logged in on the tokio reactor; the relay's traffic goes through io_uring.
        let stream = conn.stream.into_uring()?;
        Ok(ServerConn { stream, ..conn })
    }

    async fn login(&mut self, opts: &ConnectOptions) -> Result<(), ServerError> {
        let mut out = BytesMut::new();
        build::startup(
            &mut out,
            &[
                ("user", opts.user.as_str()),
                ("database", opts.addr.dbname.as_str()),
            ],
        );
        self.stream.write_all(&out).await?;
        let mut scram: Option<ScramClient> = None;
        let mut reported = Vec::new();
        loop {
            let (tag, body) = self.read_message().await?;
            match tag {
                be::AUTHENTICATION => {
                    out.clear();
                    if body.len() < 4 {
                        return Err(ServerError::Protocol("short authentication request"));
                    }
                    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    let data = &body[4..];
                    match code {
                        0 => continue,
                        3 => {
                            let ServerCredential::Password(pw) = &opts.credential else {
                                return Err(ServerError::NoCredential);
                            };
                            let mut b = pw.as_bytes().to_vec();
                            b.push(0);
                            build::password(&mut out, &b);
                        }
                        5 => {
                            let ServerCredential::Password(pw) = &opts.credential else {
                                return Err(ServerError::NoCredential);
                            };
                            if data.len() != 4 {
                                return Err(ServerError::Protocol("md5 salt is not 4 bytes"));
                            }
                            let hash = crate::auth::md5::md5_hash(pw, &opts.user);
                            let resp = crate::auth::md5::md5_response(
                                &hash,
                                [data[0], data[1], data[2], data[3]],
                            );
                            let mut b = resp.into_bytes();
                            b.push(0);
                            build::password(&mut out, &b);
                        }
                        10 => {
                            let offers_scram =
                                data.split(|&b| b == 0).any(|m| m == b"SCRAM-SHA-256");
                            if !offers_scram {
                                return Err(ServerError::Auth(
                                    "server offers no SASL mechanism pgmux supports".into(),
                                ));
                            }
                            let cred = match &opts.credential {
                                ServerCredential::Password(pw) => {
                                    UpstreamCredential::Password(pw.clone())
                                }
                                ServerCredential::ScramKeys {
                                    client_key,
                                    server_key,
                                } => UpstreamCredential::ClientKey {
                                    client_key: *client_key,
                                    server_key: *server_key,
                                },
                                ServerCredential::None => return Err(ServerError::NoCredential),
                            };
                            let client = ScramClient::new(cred);
                            build::sasl_initial_response(
                                &mut out,
                                "SCRAM-SHA-256",
                                &client.client_first(),
                            );
                            scram = Some(client);
                        }
                        11 => {
                            let client = scram
                                .as_mut()
                                .ok_or(ServerError::Protocol("SASL continue before start"))?;
                            let reply = client
                                .server_first(data)
                                .map_err(|e| ServerError::Auth(e.to_string()))?;
                            build::password(&mut out, &reply);
                        }
                        12 => {
                            let client = scram
                                .as_mut()
                                .ok_or(ServerError::Protocol("SASL final before start"))?;
                            client
                                .server_final(data)
                                .map_err(|e| ServerError::Auth(e.to_string()))?;
                            continue;
                        }
                        _ => {
                            return Err(ServerError::Auth(format!(
                                "unsupported authentication request {code}"
                            )))
                        }
                    }
                    self.stream.write_all(&out).await?;
                }
                be::PARAMETER_STATUS => {
                    if let Some((k, v)) = msg::parameter_status(&body) {
                        reported.push((
                            String::from_utf8_lossy(k).into_owned(),
                            String::from_utf8_lossy(v).into_owned(),
                        ));
                    }
                }
                be::BACKEND_KEY_DATA => {
                    let (pid, secret) = msg::backend_key_data(&body)
                        .ok_or(ServerError::Protocol("bad BackendKeyData"))?;
                    self.pid = pid;
                    self.secret = secret;
                }
                be::READY_FOR_QUERY => {
                    self.reported = Arc::new(reported);
                    return Ok(());
                }
                be::ERROR_RESPONSE => return Err(refused(&body)),
                be::NOTICE_RESPONSE | be::NEGOTIATE_PROTOCOL_VERSION => {}
                _ => return Err(ServerError::Protocol("unexpected message during login")),
            }
        }
    }

    /// Reads one whole message (slow path only: login and resets).
    pub async fn read_message(&mut self) -> Result<(u8, Bytes), ServerError> {
        loop {
            if let Some((tag, len)) = complete_frame(&self.rbuf, usize::MAX)
                .map_err(|_| ServerError::Protocol("bad message length"))?
            {
                let frame = self.rbuf.split_to(len).freeze();
                return Ok((tag, frame.slice(5..)));
            }
            if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                self.rbuf.reserve(8192);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(ServerError::Closed);
            }
        }
    }

    /// Runs `sql` as a simple query, discarding its results; fails on an error.
    pub async fn run(&mut self, sql: &str) -> Result<(), ServerError> {
        let mut out = BytesMut::new();
        build::query(&mut out, sql);
        self.stream.write_all(&out).await?;
        self.finish_units(1).await
    }

    /// Reads and discards messages until `units` ReadyForQuery have arrived; the first
    /// error seen is returned after the last of them, and the connection is only
    /// reusable when that ends idle.
    pub async fn finish_units(&mut self, mut units: u32) -> Result<(), ServerError> {
        let mut first_err = None;
        while units > 0 {
            let (tag, body) = self.read_message().await?;
            match tag {
                be::READY_FOR_QUERY => {
                    units -= 1;
                    if units == 0
                        && body.first().copied().and_then(TxStatus::from_byte)
                            != Some(TxStatus::Idle)
                    {
                        return Err(ServerError::Protocol("server is still in a transaction"));
                    }
                }
                be::ERROR_RESPONSE if first_err.is_none() => first_err = Some(refused(&body)),
                be::PARAMETER_STATUS => {}
                be::COPY_IN_RESPONSE => {
                    let mut out = BytesMut::new();
                    build::message(&mut out, b'f', |b| {
                        build::put_cstr(b, b"pgmux: connection reset")
                    });
                    self.stream.write_all(&out).await?;
                }
                _ => {}
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// True when the socket has nothing unexpected to read and is not closed: an idle
    /// server connection must be silent, so any byte (a FATAL from
    /// pg_terminate_backend, an EOF) means it is unusable.
    pub fn is_alive(&self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        // The reactor's cached readiness answers without a syscall in the usual case:
        // the last read of the previous transaction drained the socket, so it is
        // flagged readable only if the server has said something since (or closed).
        // A task out of its coop budget gets Pending whatever the readiness: then
        // only the syscall below can tell.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let budget = tokio::task::coop::has_budget_remaining();
        let (quiet, fd) = match &self.stream {
            // A receive stays armed on an idle pooled connection: its state answers.
            MaybeTls::Uring(s) => return s.is_quiet(),
            MaybeTls::Unix(unix) => (
                budget && unix.poll_read_ready(&mut cx).is_pending(),
                unix.as_raw_fd(),
            ),
            other => {
                let tcp = other.tcp().expect("a TCP socket");
                (
                    budget && tcp.poll_read_ready(&mut cx).is_pending(),
                    tcp.as_raw_fd(),
                )
            }
        };
        if quiet {
            return true;
        }
        let mut byte = 0u8;
        // SAFETY: recv with MSG_PEEK on a valid socket fd into a 1-byte stack buffer.
        let n = unsafe {
            libc::recv(
                fd,
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            return err.kind() == std::io::ErrorKind::WouldBlock;
        }
        false
    }

    /// A second view of this connection for a client whose last unit still runs on it
    /// while another client holds it (see `pool::follow`): it reads the replies of that
    /// unit, with the bytes already read, and owns nothing else. Only io_uring sockets
    /// can be shared so; `None` for the others.
    pub fn reading_view(&mut self) -> Option<ServerConn> {
        let MaybeTls::Uring(s) = &self.stream else {
            return None;
        };
        Some(ServerConn {
            id: self.id,
            stream: MaybeTls::Uring(s.share()),
            rbuf: std::mem::take(&mut self.rbuf),
            addr: self.addr.clone(),
            pid: self.pid,
            secret: self.secret,
            reported: self.reported.clone(),
            settings: Settings::default(),
            prepared: PreparedSet::new(1),
            created: self.created,
            last_used: self.last_used,
            gate: self.gate.clone(),
            home: self.home,
            holder: None,
            closing: false,
        })
    }

    /// A logged-in connection over `stream`, for tests of what holds connections.
    #[cfg(test)]
    pub fn for_test(stream: MaybeTls, addr: Arc<ServerAddr>) -> ServerConn {
        ServerConn {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            stream,
            rbuf: BytesMut::new(),
            addr,
            pid: 1,
            secret: 2,
            reported: Arc::new(Vec::new()),
            settings: Settings::default(),
            prepared: PreparedSet::new(4),
            created: Instant::now(),
            last_used: Instant::now(),
            gate: Arc::new(CancelGate::default()),
            home: 0,
            holder: None,
            closing: false,
        }
    }

    /// Records the client now holding this connection, by its process id.
    pub fn set_holder(&self, client_pid: i32) {
        if let Some(h) = &self.holder {
            h.client_pid.store(client_pid, Ordering::Relaxed);
        }
    }

    pub fn cancel_target(&self) -> CancelTarget {
        CancelTarget {
            addr: self.addr.clone(),
            pid: self.pid,
            secret: self.secret,
            gate: self.gate.clone(),
        }
    }

    /// Best-effort goodbye: Terminate, then drop the socket.
    pub async fn terminate(mut self) {
        let mut out = BytesMut::new();
        build::terminate(&mut out);
        let bye = async {
            self.stream.write_all(&out).await?;
            self.stream.flush().await
        };
        let _ = tokio::time::timeout(Duration::from_millis(100), bye).await;
    }

    /// Goes idle in the pool. With io_uring a receive stays armed meanwhile, so a
    /// server that closes the connection or says something is noticed at checkout
    /// without a system call ([`ServerConn::is_alive`]), and the next transaction's
    /// first reply lands in that same receive.
    pub fn park(&mut self) {
        if let MaybeTls::Uring(s) = &self.stream {
            self.home = crate::workers::current();
            s.watch();
        }
    }
}

fn refused(body: &[u8]) -> ServerError {
    let f = msg::ErrorFields::parse(body);
    ServerError::Refused {
        code: f.code_str().to_string(),
        message: f.message_lossy(),
    }
}

/// Opens a plain connection to `addr`: its Unix-domain socket when the host is a
/// directory, else TCP (with Nagle off: every flush is a whole exchange).
async fn dial(addr: &ServerAddr) -> std::io::Result<MaybeTls> {
    match addr.socket_path() {
        Some(path) => Ok(MaybeTls::from(UnixStream::connect(path).await?)),
        None => {
            let tcp = TcpStream::connect((addr.host.as_str(), addr.port)).await?;
            tcp.set_nodelay(true)?;
            Ok(MaybeTls::from(tcp))
        }
    }
}

async fn negotiate_tls(mut tcp: TcpStream, opts: &ConnectOptions) -> Result<MaybeTls, ServerError> {
    let Some(connector) = opts
        .tls
        .as_ref()
        .filter(|_| opts.tls_mode != UpstreamTlsMode::Disable)
    else {
        return Ok(MaybeTls::from(tcp));
    };
    let mut out = BytesMut::new();
    build::ssl_request(&mut out);
    tcp.write_all(&out).await?;
    let answer = tcp.read_u8().await?;
    match answer {
        b'S' => {
            let name = crate::tls::server_name(&opts.addr.host)
                .map_err(|e| ServerError::Tls(e.to_string()))?;
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| ServerError::Tls(e.to_string()))?;
            Ok(MaybeTls::from(tls))
        }
        b'N' if opts.tls_mode == UpstreamTlsMode::Prefer => Ok(MaybeTls::from(tcp)),
        b'N' => Err(ServerError::Tls(
            "the server does not support TLS, and upstream_tls.mode requires it".into(),
        )),
        _ => Err(ServerError::Protocol("unexpected answer to SSLRequest")),
    }
}

/// Sends a CancelRequest for `target` on a fresh connection and waits until the server
/// has closed it, which Postgres does after signalling the backend.
pub async fn send_cancel(target: &CancelTarget, timeout: Duration) -> Result<(), ServerError> {
    let work = async {
        let mut conn = dial(&target.addr).await?;
        let mut out = BytesMut::new();
        build::cancel_request(&mut out, target.pid, target.secret);
        conn.write_all(&out).await?;
        let mut sink = [0u8; 64];
        while conn.read(&mut sink).await? > 0 {}
        Ok::<(), ServerError>(())
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(ServerError::Timeout(timeout)),
    }
}
