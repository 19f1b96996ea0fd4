//! The running proxy: the state every session shares, the accept loop, signals,
//! reloads and shutdown.
//!
//! Signals (CONTRACT.md section 8): SIGHUP reloads the file — a bad file is refused and
//! logged and the running configuration stays; SIGTERM stops accepting and lets open
//! transactions finish for up to `shutdown_timeout`; SIGINT does the same without
//! waiting.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpSocket, UnixListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::scram::ScramSecret;
use crate::auth::ClientSecret;
use crate::cancel::CancelRegistry;
use crate::config::{Config, ConfigErrors, UserConfig};
use crate::pool::Pools;
use crate::workers::{Accepted, Dealer, Workers};

/// A configured user with the secrets derived from its password once per load.
pub struct UserEntry {
    pub config: UserConfig,
    pub secret: ClientSecret,
    /// Recovered from a client's SCRAM login, for logging in upstream when the config
    /// holds only a verifier.
    scram_keys: Mutex<Option<([u8; 32], [u8; 32])>>,
}

impl UserEntry {
    fn new(config: UserConfig) -> UserEntry {
        UserEntry {
            secret: ClientSecret::from_config(&config),
            config,
            scram_keys: Mutex::new(None),
        }
    }

    pub fn offer_scram_keys(&self, client_key: [u8; 32], server_key: [u8; 32]) {
        if self.config.server_password.is_none() {
            *self.scram_keys.lock() = Some((client_key, server_key));
        }
    }

    pub fn scram_keys(&self) -> Option<([u8; 32], [u8; 32])> {
        *self.scram_keys.lock()
    }
}

/// Counts a client against `max_client_conn` while it lives.
pub struct ClientSlot {
    shared: Arc<Shared>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.shared.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct Shared {
    config: ArcSwap<Config>,
    users: ArcSwap<HashMap<String, Arc<UserEntry>>>,
    tls: ArcSwapOption<crate::tls::ClientTls>,
    upstream_tls: ArcSwapOption<tokio_rustls::TlsConnector>,
    pub pools: Pools,
    pub cancels: Arc<CancelRegistry>,
    pub shutdown: CancellationToken,
    clients: AtomicUsize,
    pinned: dashmap::DashMap<String, i64>,
    mock_salt: [u8; 16],
    immediate: AtomicBool,
    /// Set before `shutdown` is cancelled: cheaper to read than the token, whose
    /// state sits behind a lock every session shares.
    draining: AtomicBool,
    /// Startup settings, one copy for all the clients that sent the same.
    pub startup_settings: crate::server::settings::Interner,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot start the event loops: {0}")]
    Runtime(std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on the Unix-domain socket {}: {source}", path.display())]
    ListenUnix {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl Shared {
    /// Stops the proxy: every session ends once its transaction does (`immediate`:
    /// without waiting for them).
    pub fn begin_shutdown(&self, immediate: bool) {
        if immediate {
            self.immediate.store(true, Ordering::Release);
        }
        self.draining.store(true, Ordering::Release);
        self.shutdown.cancel();
        self.cancels.end_all();
    }

    /// Whether the proxy is shutting down.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn new(config: Config) -> Result<Arc<Shared>, StartError> {
        crate::tls::install_crypto_provider();
        let (tls, upstream) = build_tls(&config)?;
        let users = config
            .users
            .iter()
            .map(|u| (u.name.clone(), Arc::new(UserEntry::new(u.clone()))))
            .collect();
        Ok(Arc::new(Shared {
            config: ArcSwap::from_pointee(config),
            users: ArcSwap::from_pointee(users),
            tls: ArcSwapOption::from(tls.map(Arc::new)),
            upstream_tls: ArcSwapOption::from(upstream.map(Arc::new)),
            pools: Pools::default(),
            cancels: Arc::default(),
            shutdown: CancellationToken::new(),
            clients: AtomicUsize::new(0),
            pinned: Default::default(),
            mock_salt: rand::random(),
            immediate: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            startup_settings: Default::default(),
        }))
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    pub fn user(&self, name: &str) -> Option<Arc<UserEntry>> {
        self.users.load().get(name).cloned()
    }

    pub fn tls_acceptor(&self) -> Option<Arc<crate::tls::ClientTls>> {
        self.tls.load_full()
    }

    pub fn upstream_tls(&self) -> Option<Arc<tokio_rustls::TlsConnector>> {
        self.upstream_tls.load_full()
    }

    pub fn client_slot(self: &Arc<Self>, max: usize) -> Option<ClientSlot> {
        let n = self.clients.fetch_add(1, Ordering::AcqRel);
        let slot = ClientSlot {
            shared: self.clone(),
        };
        (n < max).then_some(slot)
    }

    pub fn client_count(&self) -> usize {
        self.clients.load(Ordering::Acquire)
    }

    /// A stable made-up SCRAM secret for a user name that does not exist.
    pub fn mock_scram_secret(&self, user: &str) -> ScramSecret {
        let mut salt = self.mock_salt.to_vec();
        salt.extend_from_slice(user.as_bytes());
        let salt = &sha2_16(&salt);
        ScramSecret {
            iterations: 4096,
            salt: salt.to_vec(),
            stored_key: rand::random(),
            server_key: rand::random(),
        }
    }

    pub fn pinned_changed(&self, database: &str, delta: i64) {
        let mut e = self.pinned.entry(database.to_string()).or_insert(0);
        *e += delta;
        metrics::gauge!("pgmux_pinned_clients", "database" => database.to_string()).set(*e as f64);
    }

    pub fn pinned_clients(&self, database: &str) -> i64 {
        self.pinned.get(database).map_or(0, |v| *v)
    }

    /// Re-reads the config file; on any error the running configuration stays.
    pub fn reload(&self) -> Result<(), ConfigErrors> {
        let current = self.config();
        let Some(path) = current.path.clone() else {
            return Ok(());
        };
        let next = Config::load(&path)?;
        let (tls, upstream) = build_tls(&next).map_err(|e| {
            ConfigErrors(vec![crate::config::ConfigError {
                path: "tls".into(),
                message: e.to_string(),
            }])
        })?;
        if next.proxy.listen != current.proxy.listen {
            tracing::warn!("proxy.listen changed: a restart is needed for that to take effect");
        }
        if next.proxy.unix_socket_dir != current.proxy.unix_socket_dir {
            tracing::warn!(
                "proxy.unix_socket_dir changed: a restart is needed for that to take effect"
            );
        }
        let old_users = self.users.load_full();
        let users = next
            .users
            .iter()
            .map(|u| {
                let entry = match old_users.get(&u.name) {
                    Some(old) if old.config == *u => old.clone(),
                    _ => Arc::new(UserEntry::new(u.clone())),
                };
                (u.name.clone(), entry)
            })
            .collect();
        self.users.store(Arc::new(users));
        self.tls.store(tls.map(Arc::new));
        self.upstream_tls.store(upstream.map(Arc::new));
        let next = Arc::new(next);
        self.config.store(next.clone());
        crate::route::reconcile_pools(self, &next);
        tracing::info!(path = %path.display(), "configuration reloaded");
        Ok(())
    }
}

fn sha2_16(data: &[u8]) -> [u8; 16] {
    use sha2::Digest;
    let d = sha2::Sha256::digest(data);
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

#[allow(clippy::type_complexity)]
fn build_tls(
    config: &Config,
) -> Result<
    (
        Option<crate::tls::ClientTls>,
        Option<tokio_rustls::TlsConnector>,
    ),
    crate::tls::TlsError,
> {
    let tls = match &config.tls {
        Some(t) if t.mode != crate::config::TlsMode::Disable => {
            Some(crate::tls::client_acceptor(t)?)
        }
        _ => None,
    };
    let upstream = match &config.upstream_tls {
        Some(u) => crate::tls::upstream_connector(u)?,
        None => None,
    };
    Ok((tls, upstream))
}

/// Runs the proxy until SIGTERM/SIGINT (or `shared.shutdown`) and the drain end.
pub async fn run(shared: Arc<Shared>, workers: &Workers) -> Result<(), StartError> {
    let listen = shared.config().proxy.listen;
    let listeners = bind_tcp(listen, workers.count()).map_err(|source| StartError::Listen {
        addr: listen,
        source,
    })?;
    tracing::info!(%listen, "pgmux is accepting connections");
    // The port as bound: `listen` may ask for any free one (port 0).
    let port = listeners[0]
        .local_addr()
        .map_or(listen.port(), |a| a.port());
    let unix_path = shared.config().proxy.unix_socket_path(port);
    let unix = match &unix_path {
        Some(path) => {
            let l = bind_unix(path).map_err(|source| StartError::ListenUnix {
                path: path.clone(),
                source,
            })?;
            tracing::info!(path = %path.display(), "pgmux is accepting connections on a Unix-domain socket");
            Some(l)
        }
        None => None,
    };
    let tracker = TaskTracker::new();
    let dealer = workers.dealer().clone();
    for (w, l) in listeners.into_iter().enumerate() {
        let task = accept_tcp(l, shared.clone(), tracker.clone(), dealer.clone());
        dealer.spawn_on(w, tracker.track_future(task));
    }
    tracker.spawn(maintain(shared.clone()));
    tracker.spawn(signals(shared.clone()));
    if let Some(addr) = shared.config().proxy.metrics_listen {
        match crate::observe::serve(shared.clone(), addr).await {
            Ok(task) => {
                tracker.spawn(task);
            }
            Err(e) => tracing::warn!(%addr, error = %e, "metrics endpoint not started"),
        }
    }
    loop {
        tokio::select! {
            // One listener for every worker: its connections are dealt.
            r = accept_unix(unix.as_ref()) => match r {
                Ok(conn) => {
                    let shared = shared.clone();
                    dealer.deal(&tracker, Accepted::Unix(conn), move |c| crate::client::serve(shared, c));
                }
                Err(e) => accept_failed(e).await,
            },
            _ = shared.shutdown.cancelled() => break,
        }
    }
    if let (Some(l), Some(path)) = (unix, unix_path) {
        drop(l);
        let _ = std::fs::remove_file(path);
    }
    tracker.close();
    let wait = if shared.immediate.load(Ordering::Acquire) {
        Duration::ZERO
    } else {
        shared.config().proxy.shutdown_timeout
    };
    tracing::info!(?wait, clients = shared.client_count(), "shutting down");
    if tokio::time::timeout(wait, tracker.wait()).await.is_err() {
        tracing::info!(
            clients = shared.client_count(),
            "shutdown_timeout passed; closing the remaining connections"
        );
    }
    for pool in shared.pools.all() {
        pool.close_idle();
    }
    Ok(())
}

/// A worker's TCP accept loop, on its own listener, until shutdown.
async fn accept_tcp(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    dealer: Arc<Dealer>,
) {
    // Registered with the reactor of the worker this runs on.
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "a worker cannot take its listener");
            return;
        }
    };
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, _peer)) => {
                    let shared = shared.clone();
                    dealer.keep(&tracker, Accepted::Tcp(tcp), move |c| crate::client::serve(shared, c));
                }
                Err(e) => accept_failed(e).await,
            },
            _ = shared.shutdown.cancelled() => return,
        }
    }
}

/// The listening sockets on `listen`, one for each worker. With more than one, all
/// are bound with `SO_REUSEPORT`, so the kernel spreads new connections over them
/// and each worker accepts its own without waking another thread.
///
/// `SO_REUSEPORT` would also let any other process of the same user join the port
/// unnoticed; a plain bind first checks that nothing listens there, so a second
/// pgmux on the same address fails with "address in use" as it would without it.
fn bind_tcp(listen: SocketAddr, workers: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    const BACKLOG: u32 = 1024;
    let socket = || -> std::io::Result<TcpSocket> {
        let s = if listen.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        s.set_reuseaddr(true)?;
        Ok(s)
    };
    let shared_port = workers > 1;
    if shared_port && listen.port() != 0 {
        // Dropped unused: bound without listening, it holds nothing.
        socket()?.bind(listen)?;
    }
    let mut addr = listen;
    let mut listeners = Vec::with_capacity(workers.max(1));
    for _ in 0..workers.max(1) {
        let s = socket()?;
        if shared_port {
            s.set_reuseport(true)?;
        }
        s.bind(addr)?;
        let l = s.listen(BACKLOG)?;
        // Port 0 asks for any free port: the others join the one the first was given.
        addr = l.local_addr()?;
        listeners.push(l.into_std()?);
    }
    Ok(listeners)
}

async fn accept_failed(e: std::io::Error) {
    // EMFILE and friends: back off instead of spinning.
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

async fn accept_unix(listener: Option<&UnixListener>) -> std::io::Result<tokio::net::UnixStream> {
    match listener {
        Some(l) => l.accept().await.map(|(conn, _)| conn),
        None => std::future::pending().await,
    }
}

/// Binds the Unix-domain socket at `path`, open to every local user as Postgres' and
/// PgBouncer's are by default (logins are checked all the same). A socket file left by
/// a process that is gone is replaced; one that still answers is not taken over.
fn bind_unix(path: &std::path::Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another process is listening there",
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))?;
    Ok(listener)
}

async fn maintain(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.shutdown.cancelled() => return,
        }
        for pool in shared.pools.all() {
            pool.maintain().await;
        }
    }
}

async fn signals(shared: Arc<Shared>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                if let Err(errors) = shared.reload() {
                    for e in &errors.0 {
                        tracing::error!(key = %e.path, "reload refused: {}", e.message);
                    }
                }
            }
            _ = term.recv() => {
                tracing::info!("SIGTERM: draining");
                shared.begin_shutdown(false);
                return;
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: stopping now");
                shared.begin_shutdown(true);
                return;
            }
            _ = shared.shutdown.cancelled() => return,
        }
    }
}
