//! One logged-in client: the relay between it and the server connections it borrows.
//!
//! The session forwards the client's messages to a server and the server's replies
//! back, byte for byte, and decides three things, each in one place:
//!
//! - **need a server** ([`Session::ensure_server`]): the first message that must run
//!   on a server checks one out (queued up to `query_wait_timeout`), after which
//!   the client's tracked settings are re-applied if that connection's differ;
//! - **release it** ([`Session::release_if_done`]): in transaction mode, once every
//!   unit sent has been answered — a unit is a simple Query, a FunctionCall, or the
//!   extended-protocol messages up to and including a Sync — no extended message
//!   awaits its Sync, no COPY is in progress, and the server says it is idle;
//! - **pin** ([`Session::pin`]): statements that leave state only one server has keep
//!   the connection until the client leaves.
//!
//! Named prepared statements are renamed to content-derived server names and prepared
//! on demand on whichever connection the client holds (see `server::prepared`). The
//! replies pgmux must hide (the ParseComplete of a Parse it injected, the CloseComplete
//! of an eviction, the results of a settings re-apply) are matched to requests through
//! [`Fixup`] queues, since Postgres answers strictly in order.

mod backend;
mod checkout;
mod fixup;
mod frontend;
mod handoff;
mod io;
mod outcome;
mod rename;
mod replay;
mod signal;
mod statements;
mod told;
mod unnamed;

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::hash::{BuildHasherDefault, DefaultHasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::sql::{self, PinReason};
use crate::cancel::Registration;
use crate::config::PoolMode;
use crate::pool::{Checkout, Pool};
use crate::protocol::build::PgError;
use crate::protocol::{complete_frame, SqlState, TxStatus};
use crate::proxy::Shared;
use crate::server::prepared::{PreparedSet, Statement};
use crate::server::{CancelGate, Settings};
use crate::tls::MaybeTls;

use fixup::{Closed, Fixup};
pub(crate) use frontend::message_limit;
use io::{from_server, read_some, server_full, sleep_until, write_all, FromServer};
use outcome::Change;
use unnamed::Unnamed;

/// Why a session ended.
#[derive(Debug)]
pub enum End {
    /// The client sent Terminate or closed its socket.
    ClientLeft,
    /// pgmux closed the client with a FATAL error (already sent).
    Closed,
    Io(std::io::Error),
}

impl From<std::io::Error> for End {
    fn from(e: std::io::Error) -> End {
        End::Io(e)
    }
}

/// What the synchronous handling of input could not finish; the relay awaits it on
/// the slow path ([`Session::finish`]).
pub(super) enum Blocked {
    /// The message at the head of `crbuf` needs a server connection and none is free.
    Checkout,
    /// Output is left in `swbuf` or `cwbuf`: a socket did not take it all.
    Flush,
    /// The connection may go back only once a cancel in flight is done, or after a
    /// settings reset. Carries the gate taken from the cancel slot.
    Release(Option<Arc<CancelGate>>),
    /// The client sent Terminate.
    Terminate,
    Fatal(PgError),
}

/// Portals and what running each does to the session.
type ExecuteRuns = Vec<(Bytes, Box<sql::Effects>)>;

type Statements = HashMap<Bytes, Arc<Statement>, BuildHasherDefault<DefaultHasher>>;

#[derive(Default)]
struct Rare {
    /// Prepared statements a `DEALLOCATE` or `DISCARD ALL` sent to the server dropped,
    /// with the unit it belongs to, until its CommandComplete comes. One that fails
    /// (in a failed transaction, say) drops nothing on the server: they come back.
    drops: Vec<(u64, StmtDrop)>,
    /// Portals bound to a statement that changes the session when it runs, with what
    /// it does: applied at each Execute.
    runs: ExecuteRuns,
    /// Reported parameters the client heard of after login.
    told: told::Told,
    /// The client ended an extended-protocol COPY (CopyDone or CopyFail) before the
    /// server asked for its data, when this many units were sent: only the Syncs
    /// sent before then are the ones the server ignores during the copy.
    copy_ended: Option<u64>,
    /// Extended-protocol messages not yet synced failed (the error came before a skip
    /// mark's CloseComplete, or with no unit in flight): Postgres skips every message
    /// up to the next Sync, Queries and FunctionCalls included, so that Sync's
    /// ReadyForQuery answers the units of those too.
    skip_to_sync: bool,
    /// The message at the head of `crbuf` uses a statement that a unit still
    /// unanswered parses (`Session::waits_for_earlier_parse`): it is handled once
    /// that unit's replies are in.
    stalled: bool,
}

/// What a `DEALLOCATE` or `DISCARD ALL` dropped: the client's statements, and the
/// connection's copies the server drops with them.
struct StmtDrop {
    stmts: Statements,
    copies: PreparedSet,
}

/// Limits a session enforces, read once from the config at login.
pub struct Limits {
    /// A message's length field is 32 bits: a larger limit means none. Narrower than
    /// the config's, to keep every client's task small.
    pub max_message_size: u32,
    pub query_wait_timeout: Millis,
    pub query_timeout: Millis,
    pub idle_transaction_timeout: Millis,
    pub pool_mode: PoolMode,
    /// `server_pipelining`.
    pub pipeline: bool,
    /// `server_pipelining_threshold` in microseconds.
    pub pipeline_threshold_us: u32,
}

/// A timeout as a session keeps it: whole milliseconds, rounded up (0: none). A
/// quarter of a `Duration`'s size, and every idle client keeps three.
#[derive(Clone, Copy, Debug)]
pub struct Millis(u32);

impl Millis {
    pub fn get(self) -> Duration {
        Duration::from_millis(self.0.into())
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

/// A duration in whole microseconds, at most `u32::MAX` (over an hour).
pub(crate) fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

impl From<Duration> for Millis {
    fn from(d: Duration) -> Millis {
        let ms = d.as_nanos().div_ceil(1_000_000);
        Millis(u32::try_from(ms).unwrap_or(u32::MAX))
    }
}

pub struct Session {
    shared: Arc<Shared>,
    client: MaybeTls,
    crbuf: BytesMut,
    /// Replies pgmux writes to the client itself, and rewritten server replies.
    cwbuf: BytesMut,
    /// Messages for the server, written once per batch.
    swbuf: BytesMut,
    pool: Arc<Pool>,
    database: Arc<str>,
    limits: Limits,
    server: Option<Checkout>,
    cancel: Registration,

    /// Settings the client asked for at login; RESET returns to these.
    startup: Settings,
    settings: Settings,
    /// Settings changes sent: each counts only once the transaction it ran in has
    /// committed, not at the end of an earlier transaction still in the pipeline.
    /// In the order of their places, but after a COPY whose Syncs Postgres ignored
    /// (see `units_in_order`).
    pending_sets: VecDeque<Change>,
    /// Bookkeeping few sessions need (boxed: every idle client pays for the task's
    /// size), made on first use.
    rare: Option<Box<Rare>>,
    /// A transaction that changed settings failed: what the server holds is unknown.
    settings_uncertain: bool,
    /// An error since the last transaction end: the implicit transaction around the
    /// changes since then rolls back.
    changes_failed: bool,
    /// Keyed with SipHash under fixed keys: a client chooses its names, and a client
    /// that makes them collide slows only itself; a per-map random key would add 16
    /// bytes to every client's task.
    stmts: Statements,

    sent_units: u64,
    recv_units: u64,
    /// Executes sent in the unit being sent, and results (CommandComplete,
    /// ErrorResponse, EmptyQueryResponse, PortalSuspended) read of the unit being
    /// answered: a settings change is matched to its statement's result by its place.
    sent_at: u32,
    recv_at: u32,
    /// Binds, Describes and Executes sent in the unit being sent, and their last
    /// replies (BindComplete, RowDescription or NoData, a result or an error) read of
    /// the unit being answered: whether an error is the reply to a Parse or came
    /// before it (`Fixup::answered_before`). A byte each, to keep the task small:
    /// past 255 in a unit an error is taken as the Parse's own, which loses only
    /// the statement a skipped Parse should have left.
    sent_replies: u8,
    recv_replies: u8,
    /// 'Q', 'S' or 'F' per unit in flight, to tell a simple COPY from an extended one.
    unit_kinds: VecDeque<u8>,
    unsynced: bool,
    copy_in: bool,
    tx: TxStatus,
    /// Units pgmux itself sent (settings re-apply) whose replies the client must not see.
    hidden_units: u8,
    fixups: VecDeque<Fixup>,
    /// The units of `fixups` and of `pending_sets` never decrease from front to back,
    /// so those of the units already sent, or of the statement being answered, are a
    /// prefix: with thousands pipelined, each message reads only those. Only a COPY
    /// whose Syncs Postgres ignored renumbers units (`sent_units` goes back), until
    /// the fixups and changes of then have been answered.
    units_in_order: bool,
    pinned: Option<PinReason>,
    /// After a failed checkout mid-pipeline: drop messages until the client's Sync.
    discard_until_sync: bool,
    /// The Query at the head of `crbuf` waits for a server and has no session effects.
    head_is_plain: bool,
    /// Transaction mode: the client's unnamed statement, made on its first unnamed
    /// Parse (boxed: every idle client pays for the task's size).
    unnamed: Option<Box<Unnamed>>,
    /// Signal calls naming clients by pgmux's process ids (rare: boxed, made on the
    /// first such statement).
    signals: Option<Box<signal::Signals>>,
    /// The buffers were dropped since the client last sent something.
    trimmed: bool,
    unit_started: Option<Instant>,
    timeout_cancel_sent: bool,
    /// The units sent since the last unit that began with nothing in flight leave the
    /// server connection idle and unchanged (`server_pipelining`).
    unit_plain: bool,
    /// The key of the duration estimate of the unit in flight (`pool::estimate`), for
    /// a plain unit sent with nothing else in flight; 0 for none.
    unit_key: u64,
    /// A server connection shared with another client (`server_pipelining`).
    handoff: Option<Box<handoff::Handoff>>,
    /// The unit sent behind another client's, kept to run again if that client's
    /// cancel stops it (see `replay`).
    replay: Option<Box<replay::Replay>>,
}

enum Event {
    Client(std::io::Result<usize>),
    Server(std::io::Result<usize>),
    /// Following: the leader is done with the connection.
    Passed,
    Shutdown,
    QueryTimeout,
    IdleTransactionTimeout,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shared: Arc<Shared>,
        client: MaybeTls,
        leftover: BytesMut,
        pool: Arc<Pool>,
        database: Arc<str>,
        limits: Limits,
        cancel: Registration,
        startup: Settings,
    ) -> Session {
        Session {
            shared,
            client,
            crbuf: leftover,
            cwbuf: BytesMut::new(),
            swbuf: BytesMut::new(),
            pool,
            database,
            limits,
            server: None,
            cancel,
            settings: startup.clone(),
            startup,
            pending_sets: VecDeque::new(),
            rare: None,
            settings_uncertain: false,
            changes_failed: false,
            stmts: HashMap::default(),
            sent_units: 0,
            recv_units: 0,
            sent_at: 0,
            recv_at: 0,
            sent_replies: 0,
            recv_replies: 0,
            unit_kinds: VecDeque::new(),
            unsynced: false,
            copy_in: false,
            tx: TxStatus::Idle,
            hidden_units: 0,
            fixups: VecDeque::new(),
            units_in_order: true,
            pinned: None,
            discard_until_sync: false,
            head_is_plain: false,
            unnamed: None,
            signals: None,
            trimmed: false,
            unit_started: None,
            timeout_cancel_sent: false,
            unit_plain: false,
            unit_key: 0,
            handoff: None,
            replay: None,
        }
    }

    /// Relays until the client leaves; `slot` counts it against `max_client_conn`.
    //
    // Not an `async fn`: an async fn's future keeps its arguments and the locals they
    // are moved into side by side, so it held the session twice (2 × 480 bytes for
    // each client's whole life). The block uses the captured session in place.
    #[allow(clippy::manual_async_fn)]
    pub fn run(
        mut self,
        slot: crate::proxy::ClientSlot,
    ) -> impl std::future::Future<Output = ()> + Send {
        async move {
            if self.limits.pool_mode == PoolMode::Session {
                self.pinned = Some(PinReason::SessionCharacteristics);
            }
            let end = self.relay().await;
            if let Err(End::Io(e)) = &end {
                tracing::debug!(database = %self.database, error = %e, "client connection ended with an I/O error");
            }
            let cleanup = Box::pin(self.cleanup());
            cleanup.await;
            drop(slot);
        }
    }

    fn in_flight(&self) -> u64 {
        self.sent_units - self.recv_units
    }

    async fn relay(&mut self) -> Result<(), End> {
        if !self.crbuf.is_empty() {
            self.client_input().await?;
        }
        loop {
            let leading = self.leading();
            if self.server.is_none() && !leading {
                if self.shared.draining() {
                    break;
                }
                // Idle between transactions: hold no buffers, here or in the socket.
                if self.crbuf.is_empty() && !self.trimmed {
                    crate::stash::give(&mut self.crbuf);
                    crate::stash::give(&mut self.cwbuf);
                    crate::stash::give(&mut self.swbuf);
                    if let MaybeTls::Uring(s) = &self.client {
                        s.trim();
                    }
                    self.trimmed = true;
                }
                if complete_frame(&self.crbuf, usize::MAX).is_ok_and(|f| f.is_some()) {
                    // Messages that came while a lease ran.
                    self.client_input().await?;
                    continue;
                }
                // Biased: polled in this order, so the usual wakeup (the client's next
                // query) polls nothing else and draws no random number.
                let slot = &self.cancel.slot;
                let ev = tokio::select! {
                    biased;
                    r = read_some(&mut self.client, &mut self.crbuf) => Event::Client(r),
                    _ = poll_fn(|cx| slot.poll_end(cx)) => Event::Shutdown,
                };
                match ev {
                    Event::Client(Ok(0)) => return Err(End::ClientLeft),
                    Event::Client(Ok(_)) => self.client_input().await?,
                    Event::Client(Err(e)) => return Err(End::Io(e)),
                    Event::Shutdown => break,
                    _ => continue,
                }
                continue;
            }
            if leading {
                if self.lease_has_reply() {
                    // Replies the client ahead read past its own and passed on.
                    self.lease_input().await?;
                    continue;
                }
            } else if self.server_has_reply() {
                // Replies read while pgmux was writing to the server.
                self.server_input().await?;
                continue;
            }
            let deadline = self.timer_deadline();
            // A client that holds a server between transactions (session mode, or
            // pinned) has nothing to finish: shutdown closes it like any idle one. A
            // terminate names this client alone and ends it wherever it is.
            let may_end = self.between_transactions() || !self.shared.draining();
            let (server, following) = match self.server.as_mut() {
                Some(co) => (
                    co.conn(),
                    self.handoff
                        .as_deref()
                        .and_then(handoff::Handoff::following),
                ),
                None => self
                    .handoff
                    .as_deref_mut()
                    .and_then(handoff::Handoff::lease_parts)
                    .expect("leading"),
            };
            let full = server_full(server);
            let slot = &self.cancel.slot;
            // The server first: its replies are what the usual wakeup brings, and a
            // client that sends more meanwhile is read once the server has nothing.
            // While another client's unit runs on the connection, its replies are not
            // this client's to read; while leading, the client's next messages wait.
            let ev = tokio::select! {
                biased;
                r = from_server(server, following, full) => match r {
                    FromServer::Read(r) => Event::Server(r),
                    FromServer::Passed => Event::Passed,
                    FromServer::Drained => continue,
                },
                r = read_some(&mut self.client, &mut self.crbuf), if !leading && !full => Event::Client(r),
                _ = sleep_until(deadline), if deadline.is_some() => {
                    if self.in_flight() > 0 { Event::QueryTimeout } else { Event::IdleTransactionTimeout }
                }
                _ = poll_fn(|cx| slot.poll_end(cx)), if may_end => Event::Shutdown,
            };
            match ev {
                Event::Client(Ok(0)) => return Err(End::ClientLeft),
                Event::Client(Ok(_)) => self.client_input().await?,
                Event::Client(Err(e)) => return Err(End::Io(e)),
                Event::Passed => {
                    let passed = Box::pin(self.on_passed());
                    passed.await?;
                }
                Event::Server(Ok(n)) if n > 0 && self.leading() => self.lease_input().await?,
                Event::Server(Ok(0)) | Event::Server(Err(_)) => {
                    let (addr, told) = match (self.server.as_mut(), self.handoff.as_deref_mut()) {
                        (Some(s), _) => (s.conn().addr.to_string(), s.conn().closing),
                        (None, Some(h)) => h
                            .lease_conn()
                            .map(|c| (c.addr.to_string(), c.closing))
                            .unwrap_or_default(),
                        _ => Default::default(),
                    };
                    self.server = None;
                    // Leading, a FATAL within this client's unit means the server ran
                    // nothing behind it (`Baton::break_off`).
                    self.lease_lost(told);
                    if told {
                        // The client has the server's own FATAL: a second error
                        // would read as a reply to its next message.
                        return Err(End::Closed);
                    }
                    return self
                        .fatal(PgError::fatal(
                            SqlState::CONNECTION_FAILURE,
                            format!("server {addr} closed the connection unexpectedly"),
                        ))
                        .await;
                }
                Event::Server(Ok(_)) => self.server_input().await?,
                Event::QueryTimeout => {
                    self.timeout_cancel_sent = true;
                    let cancels = self.shared.cancels.clone();
                    let (pid, secret) = (self.cancel.pid, self.cancel.secret);
                    tokio::spawn(async move {
                        cancels.cancel(pid, secret, Duration::from_secs(10)).await;
                    });
                }
                Event::IdleTransactionTimeout => {
                    return self
                        .fatal(PgError::fatal(
                            SqlState::IDLE_IN_TRANSACTION_TIMEOUT,
                            format!(
                                "terminating connection: idle in transaction for longer than idle_transaction_timeout ({:?})",
                                self.limits.idle_transaction_timeout.get()
                            ),
                        ).with_hint("commit or roll back transactions promptly, or raise idle_transaction_timeout"))
                        .await;
                }
                // Armed before pgmux began shutting down: an open transaction still
                // gets to finish (a terminate then waits for its end too).
                Event::Shutdown if self.shared.draining() && !self.between_transactions() => {}
                Event::Shutdown => break,
            }
        }
        // Out of the loop, so the wait holds none of its locals in the task.
        let end = Box::pin(self.told_to_end());
        end.await
    }

    /// Ends the session when pgmux shuts down or a `pg_terminate_backend()` named this
    /// client. A statement still running is cancelled first, as Postgres stops a
    /// terminated backend's, so its server connection is not held up by it.
    async fn told_to_end(&mut self) -> Result<(), End> {
        let text = if self.shared.draining() {
            "pgmux is shutting down"
        } else {
            "terminating connection due to administrator command"
        };
        // Not while the statement waits behind another client's: the key reaches
        // whichever statement runs on the server connection.
        let running = self.server.is_some() || self.leading() && !self.waiting_behind();
        if running && self.in_flight() > 0 {
            let (pid, secret) = (self.cancel.pid, self.cancel.secret);
            let cancel = self
                .shared
                .cancels
                .cancel(pid, secret, Duration::from_secs(5));
            Box::pin(cancel).await;
        }
        self.fatal(PgError::fatal(SqlState::ADMIN_SHUTDOWN, text))
            .await
    }

    /// Nothing sent is unanswered and no transaction, COPY or pipeline is open.
    fn between_transactions(&self) -> bool {
        self.in_flight() == 0
            && self.tx == TxStatus::Idle
            && !self.unsynced
            && !self.copy_in
            && self.hidden_units == 0
            && self.swbuf.is_empty()
            && self.handoff.is_none()
    }

    // The relay's handlers first run synchronously; only what must wait runs as a
    // boxed future, so an idle client's task reserves no room for the deepest handler
    // and the usual transaction boxes nothing. The box is built in its own statement
    // so the unboxed future's storage does not outlive it in the task.
    async fn client_input(&mut self) -> Result<(), End> {
        // The client is active: its next idle period lets go of the buffers again.
        if std::mem::take(&mut self.trimmed) {
            crate::stash::fill(&mut self.cwbuf);
            crate::stash::fill(&mut self.swbuf);
        }
        match self.client_input_now() {
            Ok(()) => Ok(()),
            Err(blocked) => {
                let work = Box::pin(self.finish(blocked));
                work.await
            }
        }
    }

    async fn server_input(&mut self) -> Result<(), End> {
        match self.server_input_now() {
            Ok(()) => {}
            Err(blocked) => {
                let work = Box::pin(self.finish(blocked));
                work.await?;
            }
        }
        self.resume_stalled().await
    }

    /// Handles the client's messages held back for an earlier unit's replies, which
    /// may now be in; they stall again if not.
    async fn resume_stalled(&mut self) -> Result<(), End> {
        match self.rare.as_deref_mut() {
            Some(r) if r.stalled => r.stalled = false,
            _ => return Ok(()),
        }
        let resumed = Box::pin(self.client_input());
        resumed.await
    }

    async fn lease_input(&mut self) -> Result<(), End> {
        match self.lease_input_now() {
            Ok(()) => {}
            Err(blocked) => {
                let work = Box::pin(self.finish(blocked));
                work.await?;
            }
        }
        self.resume_stalled().await
    }

    /// The slow path: awaits what blocked, then goes on with the synchronous handling.
    async fn finish(&mut self, mut blocked: Blocked) -> Result<(), End> {
        loop {
            let next = match blocked {
                Blocked::Checkout => {
                    self.wait_for_server().await?;
                    self.client_input_now()
                }
                Blocked::Flush => {
                    self.flush().await?;
                    self.release_if_done()
                }
                Blocked::Release(gate) => {
                    self.release_slow(gate).await;
                    // A lease ends before the client's output is out (see
                    // `lease_input_now`).
                    self.flush().await?;
                    Ok(())
                }
                Blocked::Terminate => {
                    self.flush().await?;
                    return Err(End::ClientLeft);
                }
                Blocked::Fatal(err) => return self.fatal(err).await,
            };
            match next {
                Ok(()) => return Ok(()),
                Err(b) => blocked = b,
            }
        }
    }

    /// This client's unit was sent behind another client's, which still runs.
    fn waiting_behind(&self) -> bool {
        self.handoff
            .as_deref()
            .is_some_and(|h| h.following().is_some())
    }

    fn lease_has_reply(&mut self) -> bool {
        self.handoff
            .as_deref_mut()
            .and_then(handoff::Handoff::lease_parts)
            .is_some_and(|(conn, after)| {
                after.is_none() && matches!(complete_frame(&conn.rbuf, usize::MAX), Ok(Some(_)))
            })
    }

    fn server_has_reply(&mut self) -> bool {
        self.server.as_mut().is_some_and(|s| {
            let rbuf = &s.conn().rbuf;
            !rbuf.is_empty() && matches!(complete_frame(rbuf, usize::MAX), Ok(Some(_)))
        })
    }

    fn timer_deadline(&self) -> Option<tokio::time::Instant> {
        if self.in_flight() > 0 {
            let qt = self.limits.query_timeout.get();
            if qt.is_zero() || self.timeout_cancel_sent || self.copy_in {
                return None;
            }
            self.unit_started.map(|s| (s + qt).into())
        } else if self.tx != TxStatus::Idle && !self.limits.idle_transaction_timeout.is_zero() {
            Some((Instant::now() + self.limits.idle_transaction_timeout.get()).into())
        } else {
            None
        }
    }

    /// Sends a FATAL error and ends the session.
    async fn fatal(&mut self, err: PgError) -> Result<(), End> {
        tracing::info!(database = %self.database, error = %err, "closing client");
        let mut out = BytesMut::new();
        err.encode(&mut out);
        let write = Box::pin(write_all(&mut self.client, &out));
        let _ = write.await;
        Err(End::Closed)
    }

    // ---------------------------------------------------------------- client → server

    /// In transaction mode, gives the server connection back once the client's work on
    /// it is complete.
    fn release_if_done(&mut self) -> Result<(), Blocked> {
        if self.server.is_none()
            || self.pinned.is_some()
            || self.in_flight() > 0
            || self.unsynced
            || self.copy_in
            || self.tx != TxStatus::Idle
            || self.hidden_units > 0
            || !self.swbuf.is_empty()
            || self.handoff.is_some()
        {
            return Ok(());
        }
        let gate = self.cancel.slot.detach();
        self.fixups.clear();
        if gate.as_ref().is_some_and(|g| !g.is_clear()) || self.settings_uncertain {
            // Rare: a cancel is in flight, or the settings need a reset first.
            return Err(Blocked::Release(gate));
        }
        self.server.take().expect("checked").release();
        Ok(())
    }

    async fn release_slow(&mut self, gate: Option<Arc<CancelGate>>) {
        if self.leading() {
            if let Some(gate) = gate {
                gate.wait_clear().await;
            }
            self.pass_lease();
            return;
        }
        let mut co = self.server.take().expect("release without a server");
        let uncertain = std::mem::take(&mut self.settings_uncertain);
        if let Some(gate) = gate {
            gate.wait_clear().await;
        }
        if uncertain {
            let conn = co.conn();
            // RESET ALL leaves the identity alone.
            let reset = "RESET SESSION AUTHORIZATION; RESET ROLE; RESET ALL";
            if conn.run(reset).await.is_err() {
                return;
            }
            conn.settings.clear();
        }
        co.release();
    }

    /// After the client is gone: the server connection goes back clean or is closed.
    async fn cleanup(&mut self) {
        if self
            .pinned
            .is_some_and(|r| r != PinReason::SessionCharacteristics)
        {
            self.shared.pinned_changed(&self.database, -1);
        }
        if self.leading() {
            let drain = Box::pin(self.drain_lease());
            drain.await;
            return;
        }
        let Some(mut co) = self.server.take() else {
            return;
        };
        if let Some(h) = self.handoff.take() {
            if let handoff::Handoff::Follow(baton) = *h {
                // Sent behind the leader's unit: nobody will read its replies.
                baton.abandon(co);
                return;
            }
        }
        if let Some(gate) = self.cancel.slot.detach() {
            gate.wait_clear().await;
        }
        if self.in_flight() > 0
            || self.copy_in
            || self.unsynced
            || self.hidden_units > 0
            || !co.conn().rbuf.is_empty()
        {
            // Mid-statement: closing is the only way to be sure; Postgres rolls back.
            // That includes extended messages without their Sync: a Sync sent for the
            // departed client would commit their implicit transaction.
            return;
        }
        let conn = co.conn();
        let reset = async {
            if self.tx != TxStatus::Idle {
                conn.run("ROLLBACK").await?;
            }
            if self.pinned.is_some() || self.settings_uncertain {
                conn.run("DISCARD ALL").await?;
                conn.settings.clear();
                conn.prepared.clear();
            }
            Ok::<(), crate::server::ServerError>(())
        };
        match tokio::time::timeout(Duration::from_secs(5), reset).await {
            Ok(Ok(())) => co.release(),
            _ => drop(co),
        }
    }
}
