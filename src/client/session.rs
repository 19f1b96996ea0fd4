//! One logged-in client: the relay between it and the server connections it borrows.
//!
//! The session forwards the client's messages to a server and the server's replies
//! back, byte for byte, and decides three things, each in one place:
//!
//! - **need a server** ([`Session::ensure_server`]): the first message that must run
//!   on a server checks one out (FIFO wait up to `query_wait_timeout`), after which
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

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;

use super::sql::{self, Deallocate, PinReason, SetOp};
use crate::cancel::Registration;
use crate::config::PoolMode;
use crate::pool::{Checkout, Pool, PoolError};
use crate::protocol::build::{self, PgError};
use crate::protocol::{be, complete_frame, fe, msg, FrameError, SqlState, TxStatus};
use crate::proxy::Shared;
use crate::server::prepared::Statement;
use crate::server::{ServerConn, Settings};
use crate::tls::MaybeTls;

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

/// What to do with one reply of a Parse or Close pgmux sent.
#[derive(Debug, Clone, Copy)]
struct Fixup {
    /// The unit (count of Syncs/Queries sent before it) the request belongs to.
    unit: u64,
    tag: u8,
    swallow: bool,
    /// A named Parse: the statement is on the server only once its ParseComplete comes.
    parsed: Option<u128>,
}

/// Limits a session enforces, read once from the config at login.
pub struct Limits {
    pub max_message_size: usize,
    pub query_wait_timeout: Duration,
    pub query_timeout: Duration,
    pub idle_transaction_timeout: Duration,
    pub pool_mode: PoolMode,
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
    /// Settings changes sent, each with the unit (count of units sent, itself included)
    /// it belongs to: a change counts only once the transaction that unit ends in has
    /// committed, not at the end of an earlier transaction still in the pipeline.
    pending_sets: Vec<(u64, SetOp)>,
    /// A transaction that changed settings failed: what the server holds is unknown.
    settings_uncertain: bool,
    /// How the transaction carrying `pending_sets` is ending, from its replies.
    outcome: Outcome,
    stmts: HashMap<Bytes, Arc<Statement>>,

    sent_units: u64,
    recv_units: u64,
    /// 'Q', 'S' or 'F' per unit in flight, to tell a simple COPY from an extended one.
    unit_kinds: VecDeque<u8>,
    unsynced: bool,
    copy_in: bool,
    tx: TxStatus,
    /// Units pgmux itself sent (settings re-apply) whose replies the client must not see.
    hidden_units: u32,
    fixups: VecDeque<Fixup>,
    pinned: Option<PinReason>,
    /// After a failed checkout mid-pipeline: drop messages until the client's Sync.
    discard_until_sync: bool,
    unit_started: Option<Instant>,
    timeout_cancel_sent: bool,
}

/// The last transaction-ending command tag seen before ReadyForQuery.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum LastTag {
    #[default]
    Other,
    Commit,
    Rollback,
}

#[derive(Debug, Default, Clone, Copy)]
struct Outcome {
    error: bool,
    last: LastTag,
    /// Statements ran after a COMMIT within one reply stream (a multi-statement
    /// Query): which changes survived cannot be told from the tags alone.
    ambiguous: bool,
}

impl Outcome {
    fn saw_tag(&mut self, tag: &[u8]) {
        let next = match tag {
            b"COMMIT" => LastTag::Commit,
            // Also the tag of ROLLBACK TO SAVEPOINT, which does not end the
            // transaction: only the last tag before ReadyForQuery decides.
            b"ROLLBACK" => LastTag::Rollback,
            _ => LastTag::Other,
        };
        if self.last == LastTag::Commit {
            self.ambiguous = true;
        }
        self.last = next;
    }
}

/// Drops the changes a `ROLLBACK TO` undid; `None` when a savepoint is unknown.
fn replay_savepoints(ops: Vec<SetOp>) -> Option<Vec<SetOp>> {
    let mut kept = Vec::with_capacity(ops.len());
    let mut marks: Vec<(String, usize)> = Vec::new();
    for op in ops {
        match op {
            SetOp::Savepoint(name) => marks.push((name, kept.len())),
            SetOp::Release(name) => {
                let i = marks.iter().rposition(|(m, _)| *m == name)?;
                marks.truncate(i);
            }
            SetOp::RollbackTo(name) => {
                let i = marks.iter().rposition(|(m, _)| *m == name)?;
                kept.truncate(marks[i].1);
                marks.truncate(i + 1);
            }
            op => kept.push(op),
        }
    }
    Some(kept)
}

enum Event {
    Client(std::io::Result<usize>),
    Server(std::io::Result<usize>),
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
            pending_sets: Vec::new(),
            settings_uncertain: false,
            outcome: Outcome::default(),
            stmts: HashMap::new(),
            sent_units: 0,
            recv_units: 0,
            unit_kinds: VecDeque::new(),
            unsynced: false,
            copy_in: false,
            tx: TxStatus::Idle,
            hidden_units: 0,
            fixups: VecDeque::new(),
            pinned: None,
            discard_until_sync: false,
            unit_started: None,
            timeout_cancel_sent: false,
        }
    }

    /// Relays until the client leaves; `slot` counts it against `max_client_conn`.
    pub async fn run(mut self, slot: crate::proxy::ClientSlot) {
        let _slot = slot;
        if self.limits.pool_mode == PoolMode::Session {
            self.pinned = Some(PinReason::SessionCharacteristics);
        }
        let end = self.relay().await;
        if let Err(End::Io(e)) = &end {
            tracing::debug!(database = %self.database, error = %e, "client connection ended with an I/O error");
        }
        let cleanup = Box::pin(self.cleanup());
        cleanup.await;
    }

    fn in_flight(&self) -> u64 {
        self.sent_units - self.recv_units
    }

    async fn relay(&mut self) -> Result<(), End> {
        if !self.crbuf.is_empty() {
            self.client_input().await?;
        }
        loop {
            if self.server.is_none() {
                if self.shared.shutdown.is_cancelled() {
                    return self
                        .fatal(PgError::fatal(
                            SqlState::ADMIN_SHUTDOWN,
                            "pgmux is shutting down",
                        ))
                        .await;
                }
                // Idle between transactions: hold no buffers.
                if self.crbuf.is_empty() && self.crbuf.capacity() > 0 {
                    self.crbuf = BytesMut::new();
                    self.cwbuf = BytesMut::new();
                    self.swbuf = BytesMut::new();
                }
                let ev = tokio::select! {
                    r = read_some(&mut self.client, &mut self.crbuf) => Event::Client(r),
                    _ = self.shared.shutdown.cancelled() => Event::Shutdown,
                };
                match ev {
                    Event::Client(Ok(0)) => return Err(End::ClientLeft),
                    Event::Client(Ok(_)) => self.client_input().await?,
                    Event::Client(Err(e)) => return Err(End::Io(e)),
                    _ => continue,
                }
                continue;
            }
            if self.server_has_reply() {
                // Replies read while pgmux was writing to the server.
                self.server_input().await?;
                continue;
            }
            let deadline = self.timer_deadline();
            // A client that holds a server between transactions (session mode, or
            // pinned) has nothing to finish: shutdown closes it like any idle one.
            let idle = self.between_transactions();
            let server = self.server.as_mut().expect("checked above").conn();
            let ev = tokio::select! {
                r = read_some(&mut self.client, &mut self.crbuf) => Event::Client(r),
                r = read_some(&mut server.stream, &mut server.rbuf) => Event::Server(r),
                _ = sleep_until(deadline), if deadline.is_some() => {
                    if self.in_flight() > 0 { Event::QueryTimeout } else { Event::IdleTransactionTimeout }
                }
                _ = self.shared.shutdown.cancelled(), if idle => Event::Shutdown,
            };
            match ev {
                Event::Client(Ok(0)) => return Err(End::ClientLeft),
                Event::Client(Ok(_)) => self.client_input().await?,
                Event::Client(Err(e)) => return Err(End::Io(e)),
                Event::Server(Ok(0)) | Event::Server(Err(_)) => {
                    let addr = self
                        .server
                        .as_mut()
                        .map(|s| s.conn().addr.to_string())
                        .unwrap_or_default();
                    self.server = None;
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
                                self.limits.idle_transaction_timeout
                            ),
                        ).with_hint("commit or roll back transactions promptly, or raise idle_transaction_timeout"))
                        .await;
                }
                Event::Shutdown => {
                    return self
                        .fatal(PgError::fatal(
                            SqlState::ADMIN_SHUTDOWN,
                            "pgmux is shutting down",
                        ))
                        .await;
                }
            }
        }
    }

    /// Nothing sent is unanswered and no transaction, COPY or pipeline is open.
    fn between_transactions(&self) -> bool {
        self.in_flight() == 0
            && self.tx == TxStatus::Idle
            && !self.unsynced
            && !self.copy_in
            && self.hidden_units == 0
            && self.swbuf.is_empty()
    }

    // The relay's handlers run boxed: an idle client's task then reserves room only
    // for waiting, not for the deepest handler. The box is built in its own statement
    // so the unboxed future's storage does not outlive it in the task.
    async fn client_input(&mut self) -> Result<(), End> {
        let work = Box::pin(self.on_client_input());
        work.await
    }

    async fn server_input(&mut self) -> Result<(), End> {
        let work = Box::pin(self.on_server_input());
        work.await
    }

    fn server_has_reply(&mut self) -> bool {
        self.server.as_mut().is_some_and(|s| {
            let rbuf = &s.conn().rbuf;
            !rbuf.is_empty() && matches!(complete_frame(rbuf, usize::MAX), Ok(Some(_)))
        })
    }

    fn timer_deadline(&self) -> Option<tokio::time::Instant> {
        if self.in_flight() > 0 {
            let qt = self.limits.query_timeout;
            if qt.is_zero() || self.timeout_cancel_sent || self.copy_in {
                return None;
            }
            self.unit_started.map(|s| (s + qt).into())
        } else if self.tx != TxStatus::Idle && !self.limits.idle_transaction_timeout.is_zero() {
            Some((Instant::now() + self.limits.idle_transaction_timeout).into())
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

    async fn on_client_input(&mut self) -> Result<(), End> {
        loop {
            let (tag, len) = match complete_frame(&self.crbuf, self.limits.max_message_size) {
                Ok(Some(f)) => f,
                Ok(None) => {
                    if let Ok(Some((_, total))) =
                        crate::protocol::peek_header(&self.crbuf, self.limits.max_message_size)
                    {
                        self.crbuf.reserve(total - self.crbuf.len());
                    }
                    break;
                }
                Err(e) => return self.protocol_violation(e).await,
            };
            let frame = self.crbuf.split_to(len).freeze();
            if tag == fe::TERMINATE {
                self.flush().await?;
                return Err(End::ClientLeft);
            }
            self.on_client_message(tag, frame).await?;
        }
        self.flush().await?;
        self.release_if_done().await
    }

    async fn protocol_violation(&mut self, e: FrameError) -> Result<(), End> {
        let text = match e {
            FrameError::TooLarge { len, max } => format!(
                "message of {len} bytes is larger than max_message_size ({max} bytes); the connection is closed"
            ),
            FrameError::BadLength { len } => format!("invalid message length {len}; the connection is closed"),
        };
        self.fatal(
            PgError::fatal(SqlState::PROTOCOL_VIOLATION, text).with_hint(
                "send valid protocol messages, or raise [proxy].max_message_size for larger ones",
            ),
        )
        .await
    }

    async fn malformed(&mut self, what: &str) -> Result<(), End> {
        self.fatal(PgError::fatal(
            SqlState::PROTOCOL_VIOLATION,
            format!("malformed {what} message; the connection is closed"),
        ))
        .await
    }

    async fn on_client_message(&mut self, tag: u8, frame: Bytes) -> Result<(), End> {
        if self.discard_until_sync {
            if tag == fe::SYNC {
                self.discard_until_sync = false;
                build::ready_for_query(&mut self.cwbuf, self.tx);
            }
            return Ok(());
        }
        let body = &frame[5..];
        match tag {
            fe::QUERY => {
                let Some(text) = msg::query_text(body) else {
                    return self.malformed("Query").await;
                };
                let fx = sql::analyze(text);
                if !fx.is_empty() && self.renames() && self.answer_locally(&fx, text).await? {
                    return Ok(());
                }
                if !self.ensure_server(tag).await? {
                    return Ok(());
                }
                self.apply_effects(fx);
                self.swbuf.put_slice(&frame);
                self.unit_sent(b'Q');
            }
            fe::PARSE => {
                let Some(p) = msg::Parse::decode(body) else {
                    return self.malformed("Parse").await;
                };
                let fx = sql::analyze(p.query);
                let named = (!p.name.is_empty() && self.renames()).then(|| {
                    (
                        Bytes::copy_from_slice(p.name),
                        Arc::new(Statement::new(p.rest)),
                    )
                });
                if !self.ensure_server(tag).await? {
                    return Ok(());
                }
                self.apply_effects(fx);
                match named {
                    None => {
                        self.swbuf.put_slice(&frame);
                        self.expect(b'1', false, None);
                    }
                    Some((name, stmt)) => {
                        self.stmts.insert(name, stmt.clone());
                        let conn = self.server.as_mut().expect("ensured").conn();
                        if !conn.prepared.touch(stmt.id) {
                            if let Some(victim) = conn.prepared.insert(&stmt) {
                                build::close_statement(&mut self.swbuf, &victim);
                                self.expect(b'3', true, None);
                            }
                        }
                        // Re-prepare even when the server has it, so the client gets a
                        // ParseComplete (or an error) from the server itself.
                        self.close_and_parse(&stmt, false);
                    }
                }
                self.unsynced = true;
            }
            fe::BIND => {
                let Some(b) = msg::Bind::decode(body) else {
                    return self.malformed("Bind").await;
                };
                let stmt = self
                    .renames()
                    .then(|| self.stmts.get(b.statement).cloned())
                    .flatten();
                if !self.ensure_server(tag).await? {
                    return Ok(());
                }
                match stmt {
                    Some(stmt) => {
                        self.ensure_prepared(&stmt);
                        let (portal, rest) = (b.portal, b.rest);
                        build::message(&mut self.swbuf, fe::BIND, |o| {
                            build::put_cstr(o, portal);
                            build::put_cstr(o, &stmt.server_name);
                            o.put_slice(rest);
                        });
                    }
                    None => self.swbuf.put_slice(&frame),
                }
                self.unsynced = true;
            }
            fe::DESCRIBE | fe::CLOSE => {
                let Some(t) = msg::Target::decode(body) else {
                    return self
                        .malformed(if tag == fe::CLOSE {
                            "Close"
                        } else {
                            "Describe"
                        })
                        .await;
                };
                if tag == fe::CLOSE && self.server.is_none() && self.renames() {
                    // Between transactions no server holds anything of this client's:
                    // its statements are pgmux's to forget and portals are gone.
                    // Nothing is in flight, so the reply cannot overtake another.
                    if t.kind == b'S' {
                        self.stmts.remove(t.name);
                    }
                    build::close_complete(&mut self.cwbuf);
                    return Ok(());
                }
                let known = (t.kind == b'S' && !t.name.is_empty() && self.renames())
                    .then(|| self.stmts.get(t.name).cloned())
                    .flatten();
                if !self.ensure_server(tag).await? {
                    return Ok(());
                }
                match (tag, known) {
                    (fe::DESCRIBE, Some(stmt)) => {
                        self.ensure_prepared(&stmt);
                        build::message(&mut self.swbuf, fe::DESCRIBE, |o| {
                            o.put_u8(b'S');
                            build::put_cstr(o, &stmt.server_name);
                        });
                    }
                    (fe::CLOSE, Some(_)) => {
                        // The statement stays prepared on the server for reuse; the
                        // client gets its CloseComplete from closing a name nobody uses.
                        self.stmts.remove(t.name);
                        build::close_statement(&mut self.swbuf, b"pgmux_none");
                        self.expect(b'3', false, None);
                    }
                    (fe::CLOSE, None) => {
                        self.swbuf.put_slice(&frame);
                        self.expect(b'3', false, None);
                    }
                    _ => self.swbuf.put_slice(&frame),
                }
                self.unsynced = true;
            }
            fe::EXECUTE => {
                if !self.ensure_server(tag).await? {
                    return Ok(());
                }
                self.swbuf.put_slice(&frame);
                self.unsynced = true;
            }
            fe::FLUSH => {
                if self.server.is_some() {
                    self.swbuf.put_slice(&frame);
                }
            }
            fe::SYNC => {
                if self.server.is_none() {
                    self.unsynced = false;
                    build::ready_for_query(&mut self.cwbuf, self.tx);
                    return Ok(());
                }
                self.swbuf.put_slice(&frame);
                self.unsynced = false;
                if !self.copy_in {
                    self.unit_sent(b'S');
                }
            }
            fe::COPY_DATA | fe::COPY_DONE | fe::COPY_FAIL => {
                // Without a server these are the tail of a COPY the server already
                // ended with an error; Postgres ignores them too.
                if self.server.is_some() {
                    self.swbuf.put_slice(&frame);
                    if tag != fe::COPY_DATA && self.copy_in {
                        self.copy_in = false;
                        if self.unit_kinds.is_empty() {
                            // Extended-protocol COPY: the client's next Sync ends it.
                            self.unsynced = true;
                        }
                    }
                }
            }
            fe::FUNCTION_CALL => {
                if !self.ensure_server(tag).await? {
                    return Ok(());
                }
                self.swbuf.put_slice(&frame);
                self.unit_sent(b'F');
            }
            _ => {
                return self
                    .fatal(PgError::fatal(
                        SqlState::PROTOCOL_VIOLATION,
                        format!(
                            "invalid frontend message type {:?}; the connection is closed",
                            tag as char
                        ),
                    ))
                    .await;
            }
        }
        Ok(())
    }

    /// In transaction mode a client's named statements live under pgmux's names on
    /// whichever connections it uses; in session mode the connection is the client's
    /// own and everything passes through as sent.
    fn renames(&self) -> bool {
        self.limits.pool_mode == PoolMode::Transaction
    }

    fn unit_sent(&mut self, kind: u8) {
        if self.in_flight() == 0 {
            self.unit_started = Some(Instant::now());
            self.timeout_cancel_sent = false;
        }
        self.sent_units += 1;
        self.unit_kinds.push_back(kind);
    }

    fn expect(&mut self, tag: u8, swallow: bool, parsed: Option<u128>) {
        self.fixups.push_back(Fixup {
            unit: self.sent_units,
            tag,
            swallow,
            parsed,
        });
    }

    /// Prepares `stmt` on the held server connection if it is not there yet.
    fn ensure_prepared(&mut self, stmt: &Statement) {
        let conn = self.server.as_mut().expect("ensured").conn();
        if conn.prepared.touch(stmt.id) {
            return;
        }
        if let Some(victim) = conn.prepared.insert(stmt) {
            build::close_statement(&mut self.swbuf, &victim);
            self.expect(b'3', true, None);
        }
        self.close_and_parse(stmt, true);
    }

    /// Close, then Parse, `stmt` under its server name. The Close makes the Parse safe
    /// when the server still holds the name though pgmux no longer counts it (after a
    /// `DEALLOCATE ALL` or `DISCARD ALL` that failed); closing a name the server does not
    /// have is no error (Postgres docs, "Extended Query").
    fn close_and_parse(&mut self, stmt: &Statement, swallow_parse: bool) {
        build::close_statement(&mut self.swbuf, &stmt.server_name);
        self.expect(b'3', true, None);
        build::parse_with_rest(&mut self.swbuf, &stmt.server_name, &stmt.parse_rest);
        self.expect(b'1', swallow_parse, Some(stmt.id));
    }

    fn pin(&mut self, reason: PinReason) {
        if self.pinned.is_none() {
            tracing::debug!(database = %self.database, reason = reason.as_str(), "client pinned to its server connection");
            self.pinned = Some(reason);
            self.shared.pinned_changed(&self.database, 1);
        }
    }

    fn apply_effects(&mut self, fx: sql::Effects) {
        if let Some(reason) = fx.pin {
            self.pin(reason);
        }
        // Called before the message's unit is counted as sent: it is the next one.
        let unit = self.sent_units + 1;
        self.pending_sets
            .extend(fx.sets.into_iter().map(|op| (unit, op)));
        for d in fx.deallocate {
            match d {
                Deallocate::All => {
                    self.stmts.clear();
                    if let Some(s) = self.server.as_mut() {
                        // The server drops every prepared statement of the connection,
                        // also those other clients share.
                        s.conn().prepared.clear();
                    }
                }
                Deallocate::Name(n) => {
                    self.stmts.remove(n.as_bytes());
                }
            }
        }
        if fx.discard_all {
            self.stmts.clear();
            self.pending_sets.push((unit, SetOp::ResetAll));
            if let Some(s) = self.server.as_mut() {
                // DISCARD ALL drops every prepared statement of the connection.
                s.conn().prepared.clear();
            }
        }
    }

    /// `DEALLOCATE` of the client's own protocol-level statements and `DISCARD ALL`
    /// outside a transaction are answered by pgmux: the server connection the client
    /// will get next holds nothing of them anyway. `DEALLOCATE name` of a protocol-level
    /// statement is answered by pgmux inside a transaction too (when nothing else is in
    /// flight): the server knows that statement under another name, and would refuse.
    async fn answer_locally(&mut self, fx: &sql::Effects, text: &[u8]) -> Result<bool, End> {
        let single = !text.contains(&b';')
            || text.iter().rposition(|&b| b == b';').is_some_and(|i| {
                text[i + 1..].iter().all(u8::is_ascii_whitespace) && !text[..i].contains(&b';')
            });
        if !single || fx.pin.is_some() {
            return Ok(false);
        }
        if self.server.is_some() {
            let quiet = self.in_flight() == 0 && !self.unsynced && self.tx != TxStatus::Failed;
            let own = match fx.deallocate.as_slice() {
                [Deallocate::Name(n)] => !fx.discard_all && self.stmts.contains_key(n.as_bytes()),
                _ => false,
            };
            if !quiet || !own {
                return Ok(false);
            }
        }
        let tag = if fx.discard_all {
            self.stmts.clear();
            self.settings = self.startup.clone();
            "DISCARD ALL"
        } else if let [d] = fx.deallocate.as_slice() {
            match d {
                Deallocate::All => {
                    self.stmts.clear();
                    "DEALLOCATE ALL"
                }
                Deallocate::Name(n) => {
                    if self.stmts.remove(n.as_bytes()).is_none() {
                        return Ok(false);
                    }
                    "DEALLOCATE"
                }
            }
        } else {
            return Ok(false);
        };
        build::command_complete(&mut self.cwbuf, tag);
        build::ready_for_query(&mut self.cwbuf, self.tx);
        Ok(true)
    }

    /// Reloaded timeouts and limits reach connected clients too: each transaction
    /// starts with the current ones (the pool mode stays what the client logged in
    /// with).
    fn refresh_limits(&mut self) {
        let cfg = self.shared.config();
        let proxy = &cfg.proxy;
        self.limits.max_message_size = proxy.max_message_size;
        self.limits.query_wait_timeout = proxy.query_wait_timeout;
        self.limits.query_timeout = proxy.query_timeout;
        self.limits.idle_transaction_timeout = proxy.idle_transaction_timeout;
    }

    /// Makes sure a server connection is held; on failure the client has been told and
    /// the rest of its unit will be dropped. Returns whether a server is held.
    async fn ensure_server(&mut self, tag: u8) -> Result<bool, End> {
        if self.server.is_some() {
            return Ok(true);
        }
        self.refresh_limits();
        // Anything the client was already sent must go before a possible wait.
        self.flush().await?;
        match self.pool.checkout(self.limits.query_wait_timeout).await {
            Ok(mut co) => {
                let conn = co.conn();
                self.cancel.slot.attach(conn.cancel_target());
                if let Some(sql) = self.settings.sync_sql(&conn.settings) {
                    build::query(&mut self.swbuf, &sql);
                    self.hidden_units += 1;
                }
                conn.settings = self.settings.clone();
                self.server = Some(co);
                Ok(true)
            }
            Err(e) => {
                let err = match &e {
                    PoolError::Timeout(wait) => PgError::error(
                        SqlState::TOO_MANY_CONNECTIONS,
                        format!(
                            "no server connection for database \"{}\" became free within query_wait_timeout ({wait:?})",
                            self.database
                        ),
                    )
                    .with_hint("raise pool_size for this database or query_wait_timeout, or shorten transactions"),
                    PoolError::Connect { .. } => PgError::error(SqlState::CONNECTION_FAILURE, e.to_string())
                        .with_hint("check that the server is running and reachable; the statement was not run"),
                };
                tracing::warn!(database = %self.database, error = %e, "checkout failed");
                err.encode(&mut self.cwbuf);
                if matches!(tag, fe::QUERY | fe::FUNCTION_CALL) {
                    build::ready_for_query(&mut self.cwbuf, self.tx);
                } else {
                    self.discard_until_sync = true;
                }
                Ok(false)
            }
        }
    }

    async fn flush(&mut self) -> Result<(), End> {
        if !self.swbuf.is_empty() {
            if let Some(s) = self.server.as_mut() {
                let conn = s.conn();
                if let Err(e) = write_to_server(conn, &self.swbuf).await {
                    let addr = conn.addr.to_string();
                    self.server = None;
                    tracing::warn!(server = %addr, error = %e, "server write failed");
                    return self
                        .fatal(PgError::fatal(
                            SqlState::CONNECTION_FAILURE,
                            format!("lost the connection to server {addr}"),
                        ))
                        .await;
                }
            }
            self.swbuf.clear();
        }
        if !self.cwbuf.is_empty() {
            write_all(&mut self.client, &self.cwbuf).await?;
            self.cwbuf.clear();
        }
        Ok(())
    }

    // ---------------------------------------------------------------- server → client

    async fn on_server_input(&mut self) -> Result<(), End> {
        let mut co = self.server.take().expect("server input without a server");
        let conn = co.conn();
        let mut rbuf = std::mem::take(&mut conn.rbuf);
        let mut pos = 0;
        let mut forward_from = 0;
        let mut rewritten = false;
        while let Ok(Some((tag, len))) = complete_frame(&rbuf[pos..], usize::MAX) {
            let swallow = self.on_server_message(conn, tag, &rbuf[pos + 5..pos + len]);
            if swallow {
                self.cwbuf.put_slice(&rbuf[forward_from..pos]);
                forward_from = pos + len;
                rewritten = true;
            }
            pos += len;
        }
        if let Ok(Some((_, total))) = crate::protocol::peek_header(&rbuf[pos..], usize::MAX) {
            rbuf.reserve(total.saturating_sub(rbuf.len() - pos));
        }
        let result = if rewritten {
            self.cwbuf.put_slice(&rbuf[forward_from..pos]);
            let _ = rbuf.split_to(pos);
            let r = write_all(&mut self.client, &self.cwbuf).await;
            self.cwbuf.clear();
            r
        } else if pos > 0 {
            let chunk = rbuf.split_to(pos);
            write_all(&mut self.client, &chunk).await
        } else {
            Ok(())
        };
        co.conn().rbuf = rbuf;
        self.server = Some(co);
        result?;
        self.release_if_done().await
    }

    /// Updates the session's view of the server from one reply; true to hide it.
    fn on_server_message(&mut self, conn: &mut ServerConn, tag: u8, body: &[u8]) -> bool {
        if self.hidden_units > 0 {
            match tag {
                be::READY_FOR_QUERY => self.hidden_units -= 1,
                be::ERROR_RESPONSE => {
                    let f = msg::ErrorFields::parse(body);
                    let text = f.message_lossy();
                    tracing::warn!(database = %self.database, error = %text, "re-applying the client's settings failed");
                    // Postgres would have refused such a setting at login; the client
                    // should at least hear of it.
                    build::notice(
                        &mut self.cwbuf,
                        &format!("pgmux could not apply this session's settings on a server connection: {text}"),
                    );
                    self.settings_uncertain = true;
                }
                _ => {}
            }
            return true;
        }
        match tag {
            be::READY_FOR_QUERY => {
                // Never more answers than units sent, whatever a server does.
                self.recv_units = (self.recv_units + 1).min(self.sent_units);
                self.unit_kinds.pop_front();
                if let Some(s) = body.first().copied().and_then(TxStatus::from_byte) {
                    self.tx = s;
                }
                while self
                    .fixups
                    .front()
                    .is_some_and(|f| f.unit < self.recv_units)
                {
                    let f = self.fixups.pop_front().expect("checked");
                    if let Some(id) = f.parsed {
                        // Skipped after an error: the server never prepared it.
                        conn.prepared.remove(id);
                    }
                }
                if self.copy_in && self.unit_kinds.is_empty() {
                    self.copy_in = false;
                }
                if self.tx == TxStatus::Idle {
                    self.end_of_transaction(conn);
                }
                if self.in_flight() > 0 {
                    self.unit_started = Some(Instant::now());
                    self.timeout_cancel_sent = false;
                }
            }
            be::ERROR_RESPONSE => {
                if !self.pending_sets.is_empty() {
                    self.outcome.error = true;
                }
                if self.copy_in && self.unit_kinds.is_empty() {
                    // An extended-protocol COPY FROM STDIN failed: the server has left
                    // COPY mode and now discards messages up to the client's next Sync,
                    // which it answers with ReadyForQuery (Postgres docs, "COPY
                    // Operations"). That Sync must count, CopyDone or not.
                    self.copy_in = false;
                    self.unsynced = true;
                }
            }
            be::PARSE_COMPLETE | be::CLOSE_COMPLETE => {
                if let Some(f) = self.fixups.pop_front() {
                    if f.tag != tag {
                        tracing::warn!(expected = %(f.tag as char), got = %(tag as char), "reply order out of step");
                    }
                    return f.swallow;
                }
            }
            be::PARAMETER_STATUS => {
                if let Some((k, v)) = msg::parameter_status(body) {
                    let (k, v) = (String::from_utf8_lossy(k), String::from_utf8_lossy(v));
                    self.settings.set_reported(&k, &v);
                    conn.settings.set_reported(&k, &v);
                }
            }
            be::COMMAND_COMPLETE if !self.pending_sets.is_empty() => {
                self.outcome
                    .saw_tag(msg::command_tag(body).unwrap_or_default());
            }
            be::COPY_IN_RESPONSE => {
                self.copy_in = true;
                if self.unit_kinds.front() != Some(&b'Q') {
                    // Extended protocol: Postgres ignores Syncs during COPY FROM STDIN,
                    // so none of those already sent will be answered.
                    self.sent_units = self.recv_units;
                    self.unit_kinds.clear();
                    self.unsynced = true;
                }
            }
            _ => {}
        }
        false
    }

    /// Applies or discards the settings changes of a transaction that just ended:
    /// applied when it committed (minus what a `ROLLBACK TO` undid), discarded when it
    /// rolled back — the server has reverted them too. Only when the replies cannot
    /// tell is the connection reset before reuse.
    fn end_of_transaction(&mut self, conn: &mut ServerConn) {
        let outcome = std::mem::take(&mut self.outcome);
        // Changes sent in units still in flight belong to a later transaction.
        let done = self
            .pending_sets
            .iter()
            .take_while(|(unit, _)| *unit <= self.recv_units)
            .count();
        if done == 0 {
            return;
        }
        let ops: Vec<SetOp> = self.pending_sets.drain(..done).map(|(_, op)| op).collect();
        let changes = ops.iter().any(|op| {
            matches!(
                op,
                SetOp::Set { .. } | SetOp::Reset { .. } | SetOp::ResetAll
            )
        });
        if !changes {
            return;
        }
        let committed = match outcome.last {
            LastTag::Commit => true,
            LastTag::Rollback => false,
            LastTag::Other => !outcome.error,
        };
        let kept = if outcome.ambiguous {
            None
        } else {
            replay_savepoints(ops)
        };
        let Some(kept) = kept else {
            self.settings_uncertain = true;
            return;
        };
        if !committed {
            return;
        }
        for op in kept {
            match op {
                SetOp::Set { name, statement } => {
                    self.settings.set(&name, &statement);
                    conn.settings.set(&name, &statement);
                }
                SetOp::Reset { name } => {
                    match self.startup.get(&name) {
                        Some(s) => {
                            let s = s.to_string();
                            self.settings.set(&name, &s)
                        }
                        None => self.settings.reset(&name),
                    }
                    conn.settings.reset(&name);
                }
                SetOp::ResetAll => {
                    self.settings = self.startup.clone();
                    conn.settings.clear();
                }
                SetOp::Savepoint(_) | SetOp::Release(_) | SetOp::RollbackTo(_) => {}
            }
        }
    }

    /// In transaction mode, gives the server connection back once the client's work on
    /// it is complete.
    async fn release_if_done(&mut self) -> Result<(), End> {
        if self.server.is_none()
            || self.pinned.is_some()
            || self.in_flight() > 0
            || self.unsynced
            || self.copy_in
            || self.tx != TxStatus::Idle
            || self.hidden_units > 0
            || !self.swbuf.is_empty()
        {
            return Ok(());
        }
        let mut co = self.server.take().expect("checked");
        let gate = self.cancel.slot.detach();
        self.fixups.clear();
        if gate.as_ref().is_some_and(|g| !g.is_clear()) || self.settings_uncertain {
            // Rare: a cancel is in flight, or the settings need a reset first.
            let uncertain = std::mem::take(&mut self.settings_uncertain);
            Box::pin(async move {
                if let Some(gate) = gate {
                    gate.wait_clear().await;
                }
                if uncertain {
                    let conn = co.conn();
                    if conn.run("RESET ALL").await.is_err() {
                        return;
                    }
                    conn.settings.clear();
                }
                co.release();
            })
            .await;
            return Ok(());
        }
        co.release();
        Ok(())
    }

    /// After the client is gone: the server connection goes back clean or is closed.
    async fn cleanup(&mut self) {
        if self
            .pinned
            .is_some_and(|r| r != PinReason::SessionCharacteristics)
        {
            self.shared.pinned_changed(&self.database, -1);
        }
        let Some(mut co) = self.server.take() else {
            return;
        };
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

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
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
) -> impl std::future::Future<Output = std::io::Result<usize>> + 'a {
    std::future::poll_fn(move |cx| {
        if buf.capacity() - buf.len() < 2048 {
            if buf.capacity() == 0 {
                if let MaybeTls::Plain(tcp) = &*stream {
                    // Allocate only once there is something to read.
                    std::task::ready!(tcp.poll_read_ready(cx))?;
                }
            }
            buf.reserve(8192);
        }
        tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut *stream), cx, buf)
    })
}

/// Writes to a server while still reading its replies into its buffer: a client that
/// pipelines a lot would otherwise fill both directions and deadlock pgmux against
/// the server, which stops reading while its own writes are blocked.
async fn write_to_server(conn: &mut ServerConn, data: &[u8]) -> std::io::Result<()> {
    let MaybeTls::Plain(tcp) = &conn.stream else {
        return write_all(&mut conn.stream, data).await;
    };
    let mut written = 0;
    while written < data.len() {
        match tcp.try_write(&data[written..]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
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
    Ok(())
}

#[inline]
pub(crate) async fn write_all(stream: &mut MaybeTls, data: &[u8]) -> std::io::Result<()> {
    stream.write_all(data).await?;
    if stream.is_tls() {
        stream.flush().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str) -> SetOp {
        SetOp::Set {
            name: name.into(),
            statement: format!("SET {name} TO 1"),
        }
    }

    #[test]
    fn rollback_to_drops_only_the_changes_after_its_savepoint() {
        let ops = vec![
            set("a"),
            SetOp::Savepoint("s".into()),
            set("b"),
            SetOp::RollbackTo("s".into()),
            set("c"),
        ];
        assert_eq!(replay_savepoints(ops), Some(vec![set("a"), set("c")]));
    }

    #[test]
    fn released_savepoints_keep_their_changes_and_unknown_ones_are_uncertain() {
        let ops = vec![
            SetOp::Savepoint("s".into()),
            set("b"),
            SetOp::Release("s".into()),
        ];
        assert_eq!(replay_savepoints(ops), Some(vec![set("b")]));
        assert_eq!(
            replay_savepoints(vec![set("a"), SetOp::RollbackTo("x".into())]),
            None
        );
    }

    #[test]
    fn the_last_tag_decides_and_statements_after_a_commit_are_ambiguous() {
        let mut o = Outcome::default();
        o.saw_tag(b"ROLLBACK");
        o.saw_tag(b"COMMIT");
        assert_eq!(o.last, LastTag::Commit);
        assert!(!o.ambiguous);
        o.saw_tag(b"SELECT 1");
        assert!(o.ambiguous);
    }
}
