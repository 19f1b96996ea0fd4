//! Bounded pools of server connections.
//!
//! A pool serves one (database, user, shard, role, server). At most `pool_size`
//! connections exist at once: a checkout first takes a permit from the pool's [`Gate`]
//! (which serves clients in arrival order, see there for the one exception, and
//! `query_wait_timeout` bounds the wait), then an idle connection — checked alive and
//! within `server_lifetime` — or a new one. The [`Checkout`] guard owns the connection;
//! dropping it closes the connection unless the session explicitly released it clean,
//! so no code path can return a dirty connection by forgetting.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use parking_lot::Mutex;

use crate::config::ServerAddr;
use crate::server::settings::TakenSettings;
use crate::server::{ConnectOptions, ParseClock, ServerConn, ServerCredential, ServerError};
use follow::{Baton, Joined};
use gate::{Gate, Grant, Permit};

/// ParameterStatus values a server reported at login.
pub type Reported = Arc<Vec<(String, String)>>;

/// Index of a shard within a database (0 for an unsharded one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Primary,
    Replica,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub database: Arc<str>,
    pub user: Arc<str>,
    pub shard: ShardId,
    pub role: Role,
    pub server: Arc<ServerAddr>,
}

/// The knobs of one pool, swapped whole on reload.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSettings {
    pub size: usize,
    pub min_size: usize,
    pub idle_timeout: Duration,
    pub lifetime: Duration,
    pub max_prepared: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("no server connection became free within {0:?}")]
    Timeout(Duration),
    #[error("could not connect to server {addr}: {source}")]
    Connect {
        addr: Arc<ServerAddr>,
        #[source]
        source: ServerError,
    },
    /// The server refused another connection (53300: its `max_connections`, or the
    /// role's or the database's connection limit), and none of the pool's came back
    /// within the wait.
    #[error("server {addr} refuses more connections ({message}), and no server connection became free within {wait:?}")]
    ServerFull {
        addr: Arc<ServerAddr>,
        message: String,
        wait: Duration,
    },
}

pub mod estimate;
pub mod follow;
mod gate;

/// How long after its unit went out a busy connection is still offered to a client
/// that could take an idle one. Under load units take tens of microseconds and nearly
/// every offer is taken within this; a unit still running after it is likely a long
/// one, which a client should not queue behind while other connections are free.
pub const OFFER_WINDOW: Duration = Duration::from_millis(1);

/// What a client waiting for a server connection gets.
pub enum Lent {
    Conn(Checkout),
    /// Another client's busy connection (see `follow`).
    Follow(Arc<Baton>),
}

pub struct Pool {
    pub key: PoolKey,
    settings: ArcSwap<PoolSettings>,
    connect: ArcSwap<ConnectOptions>,
    permits: Arc<Gate>,
    /// Permits the semaphore was created or grown with, to shrink on reload.
    capacity: AtomicUsize,
    /// Boxed, so that a checkout and a release move a pointer, not the connection.
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<ServerConn>>>,
    open: AtomicUsize,
    active: AtomicUsize,
    /// Connections handed to a waiting client while busy (`follow`).
    handoffs: AtomicU64,
    /// Busy connections any client needing one may take (`publish`), newest last.
    offers: Mutex<Vec<Arc<Baton>>>,
    offered: AtomicUsize,
    reported: Mutex<Option<Reported>>,
    /// Shared by the pools of one database, whose servers prepare the same statements.
    pub parses: Arc<ParseClock>,
    /// How long this pool's statements took lately (`server_pipelining`).
    pub durations: estimate::Durations,
    /// Login settings this pool's servers applied (checked at login).
    pub taken_settings: TakenSettings,
    /// Permits withdrawn because the server refused a connection for its connection
    /// limit (`max_connections`, or the role's or the database's): while the server
    /// takes no more of this pool's connections than are open, clients queue for
    /// those, in turn, instead of each asking the server for one of its own.
    held_back: AtomicUsize,
    /// The server's last such refusal: its words, and when.
    refused: Mutex<Option<(String, Instant)>>,
}

/// How long after the server's last refusal for its connection limit a withdrawn
/// permit is given back, so that the pool asks the server again: a limit raised or
/// connections others closed are found within this, at the cost of one refused
/// connection attempt per period while the limit stands.
const HELD_BACK_RETRY: Duration = Duration::from_secs(5);

/// The server's words when it refused a connection for its connection limit (53300).
fn refused_for_limit(e: &PoolError) -> Option<&str> {
    match e {
        PoolError::Connect {
            source: ServerError::Refused { code, message },
            ..
        } if code == "53300" => Some(message),
        _ => None,
    }
}

/// How often a client whose pool has no connection open asks a server that refused
/// one for its connection limit again, while its wait lasts.
const FULL_SERVER_RETRY: Duration = Duration::from_millis(500);

impl Pool {
    pub fn new(
        key: PoolKey,
        settings: PoolSettings,
        connect: ConnectOptions,
        parses: Arc<ParseClock>,
    ) -> Arc<Pool> {
        Arc::new(Pool {
            key,
            parses,
            permits: Gate::new(settings.size),
            capacity: AtomicUsize::new(settings.size),
            settings: ArcSwap::from_pointee(settings),
            connect: ArcSwap::from_pointee(connect),
            idle: Mutex::new(Vec::new()),
            open: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            handoffs: AtomicU64::new(0),
            offers: Mutex::new(Vec::new()),
            offered: AtomicUsize::new(0),
            reported: Mutex::new(None),
            durations: estimate::Durations::default(),
            taken_settings: TakenSettings::default(),
            held_back: AtomicUsize::new(0),
            refused: Mutex::new(None),
        })
    }

    pub fn settings(&self) -> Arc<PoolSettings> {
        self.settings.load_full()
    }

    /// Applies reloaded settings; a smaller size takes effect as connections return.
    pub fn update(self: &Arc<Self>, settings: PoolSettings, connect: ConnectOptions) {
        // A reload may come with a server that takes more: ask it again.
        let back = self.held_back.swap(0, Ordering::AcqRel);
        if back > 0 {
            self.permits.grow(back);
        }
        let old = self.capacity.swap(settings.size, Ordering::AcqRel);
        if settings.size > old {
            self.permits.grow(settings.size - old);
        } else if settings.size < old {
            self.permits.shrink(old - settings.size);
        }
        self.settings.store(Arc::new(settings));
        self.connect.store(Arc::new(connect));
    }

    /// Supplies the SCRAM keys recovered from a client's login, for users whose
    /// configured password is a verifier (no plain password to log in upstream with).
    pub fn offer_scram_keys(&self, client_key: [u8; 32], server_key: [u8; 32]) {
        let cur = self.connect.load();
        if matches!(cur.credential, ServerCredential::None) {
            let mut next = (**cur).clone();
            next.credential = ServerCredential::ScramKeys {
                client_key,
                server_key,
            };
            self.connect.store(Arc::new(next));
        }
    }

    /// Takes a server connection, waiting in the gate's queue at most `wait`.
    /// The usual case, without an await: a free permit and a live idle connection.
    /// A free permit means nobody is queued (released permits go to waiters first).
    pub fn try_checkout(self: &Arc<Self>) -> Option<Checkout> {
        let permit = self.permits.try_acquire()?;
        let conn = self.take_idle()?;
        Some(self.lend(conn, permit))
    }

    pub async fn checkout(self: &Arc<Self>, wait: Duration) -> Result<Checkout, PoolError> {
        match self.checkout_or_follow(wait, false).await? {
            Lent::Conn(c) => Ok(c),
            // Only a waiter that may follow is handed a busy connection.
            Lent::Follow(baton) => match baton.join() {
                Joined::Free(c, _) => Ok(c),
                Joined::Following(c) => {
                    baton.abandon(c);
                    Err(PoolError::Timeout(wait))
                }
                Joined::Lost => Err(PoolError::Timeout(wait)),
            },
        }
    }

    /// Whether a client may be waiting to take a busy connection; without a lock.
    pub fn has_followers(&self) -> bool {
        self.permits.has_followers()
    }

    /// Offers `conn`, busy with a unit that leaves it idle and unchanged, to the next
    /// waiting client; gives it back when no waiter may take it.
    pub fn offer(&self, conn: Checkout) -> Result<Arc<Baton>, Checkout> {
        let baton = Baton::new(conn);
        if self.permits.hand_follow(&baton) {
            self.handoffs.fetch_add(1, Ordering::Relaxed);
            return Ok(baton);
        }
        Err(baton
            .take_back()
            .expect("an unoffered baton keeps its connection"))
    }

    /// Offers `conn`, busy with a unit that leaves it idle and unchanged, to whichever
    /// client of this worker next needs a connection (see [`Pool::take_offer`]): on a
    /// machine whose cores the server shares, a backend that goes from one unit to the
    /// next without sleeping costs far less than waking an idle one.
    pub fn publish(&self, conn: Checkout) -> Arc<Baton> {
        let baton = Baton::new(conn);
        self.offers.lock().push(baton.clone());
        self.offered.fetch_add(1, Ordering::Relaxed);
        baton
    }

    /// Withdraws a published connection; false when a client took it meanwhile.
    pub fn unpublish(&self, baton: &Arc<Baton>) -> bool {
        let mut offers = self.offers.lock();
        match offers.iter().rposition(|b| Arc::ptr_eq(b, baton)) {
            Some(i) => {
                // `remove`, not `swap_remove`: the list stays in publishing order.
                offers.remove(i);
                self.offered.fetch_sub(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// The most recently published busy connection of the taker's own worker, if its
    /// unit went out less than [`OFFER_WINDOW`] ago.
    ///
    /// Only the taker's own: the leader wakes its follower when it passes the
    /// connection on, and a follower on another thread costs a wake-up of that thread
    /// (an `eventfd` write, often a context switch). With two workers about a quarter
    /// of the hand-overs crossed threads when any offer could be taken; keeping them
    /// on their own worker cut the CPU per select by up to a fifth, with no less
    /// throughput (BENCHMARKS.md, finding 22). A client whose worker has no offer
    /// takes an idle connection, or queues, as without pipelining.
    pub fn take_offer(&self) -> Option<Arc<Baton>> {
        if self.offered.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let here = crate::workers::current();
        let mut offers = self.offers.lock();
        let now = Instant::now();
        // Published in order: once one is too old, so are the ones before it.
        let mut found = None;
        for (i, b) in offers.iter().enumerate().rev() {
            if now.saturating_duration_since(b.since) > OFFER_WINDOW {
                break;
            }
            if b.worker == here {
                found = Some(i);
                break;
            }
        }
        let b = offers.remove(found?);
        drop(offers);
        self.offered.fetch_sub(1, Ordering::Relaxed);
        self.handoffs.fetch_add(1, Ordering::Relaxed);
        Some(b)
    }

    /// Like [`Pool::checkout`]; with `can_follow`, the wait may also end with another
    /// client's busy connection.
    pub async fn checkout_or_follow(
        self: &Arc<Self>,
        wait: Duration,
        can_follow: bool,
    ) -> Result<Lent, PoolError> {
        // The usual case — a free permit and an idle connection — needs no await;
        // the rest is boxed so that every client's task stays small.
        let permit = self.permits.try_acquire();
        if let Some(permit) = permit {
            if let Some(conn) = self.take_idle() {
                return Ok(Lent::Conn(self.lend(conn, permit)));
            }
            let slow = Box::pin(self.checkout_slow(wait, Some(permit), false));
            return slow.await;
        }
        let slow = Box::pin(self.checkout_slow(wait, None, can_follow));
        slow.await
    }

    async fn checkout_slow(
        self: &Arc<Self>,
        wait: Duration,
        permit: Option<Permit>,
        can_follow: bool,
    ) -> Result<Lent, PoolError> {
        let since = Instant::now();
        let deadline = since + wait;
        let mut kept = permit;
        loop {
            let permit = match kept.take() {
                Some(p) => p,
                None => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let acquire = self.permits.acquire_or_follow(can_follow);
                    match tokio::time::timeout(left, acquire).await {
                        Ok(Grant::Permit(p)) => p,
                        Ok(Grant::Follow(baton)) => return Ok(Lent::Follow(baton)),
                        Err(_) => return Err(self.waited_in_vain(wait, since)),
                    }
                }
            };
            if let Some(conn) = self.take_idle() {
                return Ok(Lent::Conn(self.lend(conn, permit)));
            }
            let failed = match self.open_new().await {
                Ok(conn) => {
                    // The server took one more: it may take the next too.
                    self.give_back_one();
                    return Ok(Lent::Conn(self.lend(conn, permit)));
                }
                Err(e) => e,
            };
            let Some(message) = refused_for_limit(&failed) else {
                return Err(failed);
            };
            *self.refused.lock() = Some((message.to_owned(), Instant::now()));
            if self.open.load(Ordering::Relaxed) > 0 {
                self.hold_back(permit, message);
            } else {
                // None of ours to wait for: the server's connections are others'.
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(self.waited_in_vain(wait, since));
                }
                tokio::time::sleep(left.min(FULL_SERVER_RETRY)).await;
                kept = Some(permit);
            }
        }
    }

    /// The server takes no more of this pool's connections than are open: `permit`
    /// goes, and the client queues for one of those.
    fn hold_back(&self, permit: Permit, refusal: &str) {
        self.permits.shrink(1);
        let held = self.held_back.fetch_add(1, Ordering::Relaxed) + 1;
        drop(permit);
        tracing::warn!(
            server = %self.key.server,
            open = self.open.load(Ordering::Relaxed),
            held_back = held,
            refusal,
            "the server refuses more connections: clients queue for the pool's open ones"
        );
    }

    /// The error of a wait for a connection begun at `since` that ran out: the
    /// server's refusal when its connection limit is what keeps the pool below
    /// `pool_size`.
    fn waited_in_vain(&self, wait: Duration, since: Instant) -> PoolError {
        let refused = self.refused.lock().clone();
        match refused {
            Some((message, at)) if at >= since || self.held_back.load(Ordering::Relaxed) > 0 => {
                PoolError::ServerFull {
                    addr: self.connect.load().addr.clone(),
                    message,
                    wait,
                }
            }
            _ => PoolError::Timeout(wait),
        }
    }

    fn lend(self: &Arc<Self>, conn: Box<ServerConn>, permit: Permit) -> Checkout {
        self.active.fetch_add(1, Ordering::Relaxed);
        Checkout {
            conn: Some(conn),
            pool: self.clone(),
            _permit: permit,
        }
    }

    fn take_idle(&self) -> Option<Box<ServerConn>> {
        let settings = self.settings.load();
        let here = crate::workers::current();
        loop {
            let conn = {
                let mut idle = self.idle.lock();
                // The most recently used connection of this worker, else the most
                // recently used one.
                match idle.iter().rposition(|c| c.home == here) {
                    Some(i) => idle.remove(i),
                    None => idle.pop()?,
                }
            };
            if conn.created.elapsed() < settings.lifetime && conn.is_alive() {
                return Some(conn);
            }
            self.closed(conn);
        }
    }

    async fn open_new(&self) -> Result<Box<ServerConn>, PoolError> {
        let opts = self.connect.load_full();
        let max_prepared = self.settings.load().max_prepared;
        match ServerConn::connect(&opts, max_prepared).await {
            Ok(conn) => {
                self.open.fetch_add(1, Ordering::Relaxed);
                let mut reported = self.reported.lock();
                if reported.is_none() {
                    *reported = Some(conn.reported.clone());
                }
                Ok(Box::new(conn))
            }
            Err(source) => Err(PoolError::Connect {
                addr: opts.addr.clone(),
                source,
            }),
        }
    }

    fn closed(&self, conn: Box<ServerConn>) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        tokio::spawn((*conn).terminate());
    }

    /// ParameterStatus values of this pool's server, once any connection has logged in.
    pub fn reported(&self) -> Option<Reported> {
        self.reported.lock().clone()
    }

    /// Closes idle connections past `server_idle_timeout` or `server_lifetime`, or
    /// dead, and opens connections up to `min_pool_size`.
    pub async fn maintain(self: &Arc<Self>) {
        self.give_back_held();
        let settings = self.settings.load_full();
        let expired: Vec<Box<ServerConn>> = {
            let mut idle = self.idle.lock();
            let (keep, drop): (Vec<_>, Vec<_>) =
                std::mem::take(&mut *idle).into_iter().partition(|c| {
                    c.last_used.elapsed() < settings.idle_timeout
                        && c.created.elapsed() < settings.lifetime
                        && c.is_alive()
                });
            *idle = keep;
            drop
        };
        for conn in expired {
            self.closed(conn);
        }
        while self.open.load(Ordering::Relaxed) < settings.min_size.min(settings.size) {
            let Some(permit) = self.permits.try_acquire() else {
                break;
            };
            match self.open_new().await {
                Ok(mut conn) => {
                    conn.last_used = Instant::now();
                    conn.park();
                    self.idle.lock().push(conn);
                }
                Err(e) => {
                    tracing::warn!(server = %self.key.server, error = %e, "could not open a min_pool_size connection");
                    break;
                }
            }
            drop(permit);
        }
    }

    /// One permit withdrawn for the server's connection limit comes back once the
    /// server has refused none for [`HELD_BACK_RETRY`]: the next client that finds no
    /// idle connection asks the server again.
    fn give_back_held(self: &Arc<Self>) {
        if self.held_back.load(Ordering::Relaxed) == 0 {
            return;
        }
        {
            let mut refused = self.refused.lock();
            match refused.as_mut() {
                Some((_, at)) if at.elapsed() >= HELD_BACK_RETRY => *at = Instant::now(),
                _ => return,
            }
        }
        self.give_back_one();
    }

    fn give_back_one(self: &Arc<Self>) {
        if self.held_back.load(Ordering::Relaxed) == 0 {
            return;
        }
        let taken = self
            .held_back
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| n.checked_sub(1));
        if taken.is_ok() {
            self.permits.grow(1);
        }
    }

    /// Closes every idle connection (used on shutdown and when a database is removed).
    pub fn close_idle(&self) {
        let idle = std::mem::take(&mut *self.idle.lock());
        for conn in idle {
            self.closed(conn);
        }
    }

    pub fn stats(&self) -> PoolStats {
        PoolStats {
            open: self.open.load(Ordering::Relaxed),
            idle: self.idle.lock().len(),
            active: self.active.load(Ordering::Relaxed),
            waiting: self.permits.waiting(),
            handoffs: self.handoffs.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub open: usize,
    pub idle: usize,
    pub active: usize,
    pub waiting: usize,
    /// Busy connections handed to a waiting client so far (`follow`).
    pub handoffs: u64,
}

/// A server connection lent to one client. Dropping it closes the connection; only
/// [`Checkout::release`] returns it to the pool.
pub struct Checkout {
    conn: Option<Box<ServerConn>>,
    pool: Arc<Pool>,
    _permit: Permit,
}

impl Checkout {
    #[inline]
    pub fn conn(&mut self) -> &mut ServerConn {
        self.conn
            .as_mut()
            .expect("a checkout holds its connection until released")
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Returns a clean, idle connection to the pool.
    pub fn release(mut self) {
        if let Some(mut conn) = self.conn.take() {
            self.pool.active.fetch_sub(1, Ordering::Relaxed);
            conn.last_used = Instant::now();
            if conn.rbuf.is_empty() {
                if conn.rbuf.capacity() > 64 * 1024 {
                    conn.rbuf = bytes::BytesMut::with_capacity(8192);
                }
                conn.park();
                self.pool.idle.lock().push(conn);
            } else {
                self.pool.closed(conn);
            }
        }
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.active.fetch_sub(1, Ordering::Relaxed);
            self.pool.closed(conn);
        }
    }
}

/// Every pool of the process, addressable by key.
#[derive(Default)]
pub struct Pools {
    map: DashMap<PoolKey, Arc<Pool>>,
    /// One per database, for its pools of every user and server.
    parse_clocks: DashMap<Arc<str>, Arc<ParseClock>>,
    /// The pool found last: an application's logins mostly want the same one, found
    /// here without building and hashing a key.
    last: Mutex<Option<Arc<Pool>>>,
}

impl Pools {
    /// The pool found last, if its key is `same`.
    pub fn last_if(&self, same: impl FnOnce(&PoolKey) -> bool) -> Option<Arc<Pool>> {
        self.last.lock().as_ref().filter(|p| same(&p.key)).cloned()
    }

    pub fn get_or_create(
        &self,
        key: PoolKey,
        settings: impl FnOnce() -> PoolSettings,
        connect: impl FnOnce() -> ConnectOptions,
    ) -> Arc<Pool> {
        // `last` is set while the map's guard is held, and cleared by `retain` after
        // the removal: a pool taken out of the map never stays in `last`.
        if let Some(p) = self.map.get(&key) {
            *self.last.lock() = Some(p.clone());
            return p.clone();
        }
        let parses = self
            .parse_clocks
            .entry(key.database.clone())
            .or_default()
            .clone();
        let p = self
            .map
            .entry(key.clone())
            .or_insert_with(|| Pool::new(key, settings(), connect(), parses));
        *self.last.lock() = Some(p.clone());
        p.clone()
    }

    /// Closes the idle server connections to database `dbname` on any server: Postgres
    /// refuses to drop, rename or copy a database others are connected to, and an
    /// idle pooled connection is no one's.
    pub fn close_idle_to(&self, dbname: &str) {
        for e in self.map.iter() {
            if e.key().server.dbname == dbname {
                e.value().close_idle();
            }
        }
    }

    pub fn all(&self) -> Vec<Arc<Pool>> {
        self.map.iter().map(|e| e.value().clone()).collect()
    }

    pub fn retain(&self, keep: impl Fn(&PoolKey) -> bool) {
        let removed: Vec<Arc<Pool>> = self
            .map
            .iter()
            .filter(|e| !keep(e.key()))
            .map(|e| e.value().clone())
            .collect();
        for pool in &removed {
            self.map.remove(&pool.key);
            pool.close_idle();
        }
        if !removed.is_empty() {
            *self.last.lock() = None;
        }
    }
}
