//! Client → server: what each frontend message needs (a server, a rename, a local
//! answer); getting the server connection is `checkout`'s.

use std::time::Instant;

use bytes::{Buf, BufMut, Bytes};

use super::fixup::Closed;
use super::outcome::Change;
use super::sql::{self, Deallocate, PinReason};
use crate::config::PoolMode;
use crate::protocol::build::{self, PgError};
use crate::protocol::{be, complete_frame, fe, msg, FrameError, SqlState, TxStatus};
use crate::server::prepared::{PreparedSet, Statement};
use crate::server::ServerConn;

use super::handoff::{write_following, Handoff};
use super::io::{write_all, write_now, write_to_server};
use super::{Blocked, End, Rare, Session, StmtDrop};
use crate::uring::HIGH_WATER;

/// Client input up to this size reserves the server's output buffer in one go.
const BATCH_ROOM: usize = 8 * 1024;

/// The portal `mark_skip_point` closes: one no client is expected to name.
const SKIP_MARK_PORTAL: &[u8] = b"pgmux_skip_mark";

impl Session {
    /// Handles what the client sent, as far as it can without waiting: the usual
    /// transaction (a free server connection, socket buffers with room) completes
    /// here, without an await and without boxing a future.
    pub(super) fn client_input_now(&mut self) -> Result<(), Blocked> {
        self.handle_client_frames()?;
        self.flush_now()?;
        self.release_if_done()?;
        if self.limits.pipeline {
            self.offer_server();
        }
        Ok(())
    }

    /// Handles every complete message in `crbuf`. A message that needs a server
    /// connection when none is free stays at the head of `crbuf`, to be handled again
    /// once one is.
    fn handle_client_frames(&mut self) -> Result<(), Blocked> {
        let max = self.limits.max_message_size as usize;
        let mut buf = std::mem::take(&mut self.crbuf);
        if self.swbuf.is_empty() && buf.len() <= BATCH_ROOM {
            // Most of what a client sends goes on to the server as it came: one
            // allocation for the batch, not one per message the buffer outgrows. (Not
            // for more: the input may be the start of one large message.)
            self.swbuf.reserve(buf.len());
        }
        let mut pos = 0;
        let result = loop {
            // A byte that starts no frontend message is refused before its "length"
            // is waited for, as Postgres refuses it: a client that sends a startup
            // packet or an SSLRequest again would otherwise wait for megabytes that
            // never come.
            if let Some(&tag) = buf.get(pos) {
                if !fe::is_known(tag) {
                    break Err(unknown_type(tag));
                }
            }
            let (tag, len) = match complete_frame(&buf[pos..], max) {
                Ok(Some(f)) => f,
                Ok(None) => break Ok(()),
                Err(e) => break Err(Blocked::Fatal(protocol_violation(e))),
            };
            if tag == fe::TERMINATE {
                break Err(Blocked::Terminate);
            }
            if self.waits_for_earlier_parse(tag, &buf[pos + 5..pos + len]) {
                self.rare().stalled = true;
                break Ok(());
            }
            let sent_before = self.sent_units;
            if let Err(b) = self.on_client_message(tag, &buf[pos..pos + len]) {
                break Err(b);
            }
            if self.replay.is_some() {
                self.record_for_replay(tag, &buf[pos..pos + len], sent_before);
            }
            pos += len;
        };
        buf.advance(pos);
        if let Ok(Some((_, total))) = crate::protocol::peek_header(&buf, max) {
            buf.reserve(total.saturating_sub(buf.len()));
        }
        self.crbuf = buf;
        result
    }

    /// Whether a Bind, a Describe, a Close or a Parse names a statement that a unit sent
    /// earlier and still unanswered parses, closes or deallocates. Postgres skips that
    /// Parse or Close if an error comes before it in its unit, and then knows no such
    /// statement (or, for a Parse of the name, finds it free), or still has it: what
    /// pgmux sends for this message depends on which, so it waits for that unit's
    /// replies. Only in transaction mode, where pgmux stands in for the client's
    /// statements; one round trip, once, for a driver that prepares in one unit and
    /// uses the statement in the next.
    ///
    /// It waits only for a unit the server answers without more from the client: one
    /// that ends at a Sync already sent or before it. A Query sent among messages not
    /// yet synced is skipped with them after an error, and answered only at their
    /// Sync, which may come after this very message.
    fn waits_for_earlier_parse(&self, tag: u8, body: &[u8]) -> bool {
        if !self.renames() || self.in_flight() == 0 || self.discard_until_sync || self.copy_in {
            return false;
        }
        let name = match tag {
            fe::BIND => msg::cstr(body).and_then(|(_, rest)| msg::cstr(rest)),
            fe::DESCRIBE => body
                .split_first()
                .filter(|(kind, _)| **kind == b'S')
                .and_then(|(_, rest)| msg::cstr(rest)),
            fe::PARSE => msg::cstr(body).filter(|(name, _)| !name.is_empty()),
            // A Close of a statement an earlier unit parses: what a skipped Close
            // leaves is what that unit's replies say the name holds.
            fe::CLOSE => body
                .split_first()
                .filter(|(kind, _)| **kind == b'S')
                .and_then(|(_, rest)| msg::cstr(rest))
                .filter(|(name, _)| !name.is_empty()),
            _ => None,
        };
        let Some((name, _)) = name else {
            return false;
        };
        // A Close of the name (or a Query ending the unnamed statement) that Postgres
        // skips leaves the statement, so those are waited for too.
        let unit = if name.is_empty() {
            self.last_unanswered(|f| {
                (f.tag == be::PARSE_COMPLETE && f.unnamed)
                    || matches!(f.closed, Some(Closed::Unnamed { .. }))
            })
        } else {
            let fixup = self.last_unanswered(|f| match &f.closed {
                Some(Closed::Named(closed, _)) => closed == name,
                _ => {
                    f.tag == be::PARSE_COMPLETE
                        && f.parsed.is_some()
                        && f.client_name.as_deref() == Some(name)
                }
            });
            // So does a `DEALLOCATE` or `DISCARD ALL` that fails.
            let drops = self.rare.iter().flat_map(|r| r.drops.iter());
            let dropped = drops
                .filter(|(_, d)| d.stmts.contains_key(name))
                .map(|(unit, _)| unit.saturating_sub(1))
                .filter(|&unit| unit < self.sent_units)
                .max();
            fixup.max(dropped)
        };
        let Some(unit) = unit else {
            return false;
        };
        if !self.unsynced {
            return true;
        }
        // The in-flight units are `recv_units..sent_units`, `unit_kinds` their ends.
        self.unit_kinds
            .iter()
            .rposition(|&k| k == b'S')
            .is_some_and(|last_sync| unit <= self.recv_units + last_sync as u64)
    }

    pub(super) fn malformed(&self, what: &str) -> Blocked {
        Blocked::Fatal(
            PgError::fatal(
                SqlState::PROTOCOL_VIOLATION,
                format!("malformed {what} message; the connection is closed"),
            )
            .with_hint(NOT_THE_PROTOCOL),
        )
    }

    fn on_client_message(&mut self, tag: u8, frame: &[u8]) -> Result<(), Blocked> {
        if self.discard_until_sync {
            if tag == fe::SYNC {
                self.discard_until_sync = false;
                self.signal_unit_ended();
                build::ready_for_query(&mut self.cwbuf, self.tx);
            }
            return Ok(());
        }
        let starts_unit = !self.unsynced && self.in_flight() == 0;
        if starts_unit {
            // A unit begins: whether it leaves the connection idle and unchanged is
            // worked out message by message below.
            self.unit_plain = self.tx == TxStatus::Idle;
            self.unit_key = 0;
        }
        let body = &frame[5..];
        if self.copy_in
            && self.server.is_some()
            && matches!(
                tag,
                fe::PARSE | fe::BIND | fe::DESCRIBE | fe::CLOSE | fe::EXECUTE
            )
        {
            // In a COPY the server ends the session at any of these, and should name
            // the client's message as the one it did not expect, not a Close or a
            // server name pgmux would have put in its place.
            self.swbuf.put_slice(frame);
            return Ok(());
        }
        match tag {
            fe::QUERY => {
                let Some(text) = msg::query_text(body) else {
                    return Err(self.malformed("Query"));
                };
                // A Query that waited for a server is handled again once it has one;
                // the usual one, without session effects, is not analyzed twice.
                let fx = if std::mem::take(&mut self.head_is_plain) {
                    sql::Effects::default()
                } else {
                    sql::analyze(text)
                };
                if !fx.is_empty() && self.renames() && self.answer_locally(&fx, text) {
                    self.unnamed_ended(false);
                    return Ok(());
                }
                if let Err(b) = self.ensure_server() {
                    self.head_is_plain = fx.is_empty();
                    return Err(b);
                }
                if starts_unit && self.tx != TxStatus::Idle {
                    // Inside a block, only its end leaves the connection idle.
                    self.unit_plain = fx.is_empty() && sql::ends_block(text);
                } else {
                    self.unit_plain &= fx.is_empty() && sql::leaves_idle(text);
                }
                if starts_unit && self.unit_plain && self.limits.pipeline {
                    self.unit_key = sql::fingerprint(text);
                }
                let signal = fx.signal;
                let one_deallocate = !fx.deallocate.is_empty() && single_statement(text);
                let server_text = self.server_text(&fx, text, one_deallocate);
                // After Executes not yet synced, the Query's statements answer next.
                self.apply_effects(fx, self.sent_at);
                // A simple Query ends the unnamed statement (Postgres docs, "Simple
                // Query"), on the server it runs on too.
                let before = self.unnamed_state();
                self.unnamed_ended(true);
                // In a COPY the server takes no Close: it ends the session at the
                // Query, and should name the Query as what it did not expect.
                if self.unsynced && !self.copy_in {
                    self.mark_skip_point();
                    // Skipped with its mark, the Query leaves the unnamed statement,
                    // on the server too.
                    self.note_unnamed_closed(before);
                }
                match server_text {
                    Some((sql, _)) => build::message(&mut self.swbuf, fe::QUERY, |o| {
                        o.put_slice(&sql);
                        o.put_u8(0);
                    }),
                    None => self.swbuf.put_slice(frame),
                }
                self.unit_sent(b'Q');
                if let Some(sig) = signal {
                    self.expect_signal_query(self.sent_units, sig);
                }
            }
            fe::PARSE => self.on_parse(frame, body)?,
            fe::BIND => self.on_bind(frame, body)?,
            fe::DESCRIBE | fe::CLOSE => self.on_describe_or_close(tag, frame, body)?,
            fe::EXECUTE => {
                self.ensure_server()?;
                if self.rare.as_ref().is_some_and(|r| !r.runs.is_empty()) {
                    self.on_execute(msg::cstr(body).map_or(&b""[..], |(p, _)| p));
                }
                if self.signals.is_some() {
                    let portal = msg::cstr(body).map_or(&b""[..], |(p, _)| p);
                    self.note_signal_execute(portal);
                }
                self.swbuf.put_slice(frame);
                self.unsynced = true;
                self.sent_at = self.sent_at.saturating_add(1);
                self.sent_replies = self.sent_replies.saturating_add(1);
            }
            fe::FLUSH | fe::SYNC if !body.is_empty() => {
                return Err(self.malformed(if tag == fe::SYNC { "Sync" } else { "Flush" }));
            }
            fe::FLUSH => {
                if self.server.is_some() {
                    self.swbuf.put_slice(frame);
                }
            }
            fe::SYNC => {
                if self.server.is_none() {
                    self.unsynced = false;
                    self.signal_unit_ended();
                    build::ready_for_query(&mut self.cwbuf, self.tx);
                    return Ok(());
                }
                self.swbuf.put_slice(frame);
                self.unsynced = false;
                self.signal_unit_ended();
                if !self.copy_in {
                    self.unit_sent(b'S');
                }
            }
            fe::COPY_DATA | fe::COPY_DONE | fe::COPY_FAIL => {
                self.unit_plain = false;
                // Without a server these are the tail of a COPY the server already
                // ended with an error; Postgres ignores them too.
                if self.server.is_some() {
                    self.swbuf.put_slice(frame);
                    if tag != fe::COPY_DATA && self.copy_in {
                        self.copy_in = false;
                        if self.unit_kinds.is_empty() {
                            // Extended-protocol COPY: the client's next Sync ends it.
                            self.unsynced = true;
                        }
                    } else if tag != fe::COPY_DATA && self.unsynced {
                        // The data of an extended-protocol COPY sent right behind its
                        // Execute, before the server asked for it.
                        let sent = self.sent_units;
                        self.rare().copy_ended = Some(sent);
                    }
                }
            }
            fe::FUNCTION_CALL => {
                self.ensure_server()?;
                self.unit_plain = false;
                if self.unsynced && !self.copy_in {
                    self.mark_skip_point();
                }
                self.swbuf.put_slice(frame);
                self.unit_sent(b'F');
            }
            _ => return Err(unknown_type(tag)),
        }
        Ok(())
    }

    /// In transaction mode a client's named statements live under pgmux's names on
    /// whichever connections it uses; in session mode the connection is the client's
    /// own and everything passes through as sent.
    pub(super) fn renames(&self) -> bool {
        self.limits.pool_mode == PoolMode::Transaction
    }

    pub(super) fn unit_sent(&mut self, kind: u8) {
        if self.in_flight() == 0 {
            self.cancel.slot.set_running(true);
            // The clock is read only when a query_timeout or a duration estimate
            // needs it.
            self.unit_started =
                (!self.limits.query_timeout.is_zero() || self.unit_key != 0).then(Instant::now);
            self.timeout_cancel_sent = false;
        }
        self.sent_units += 1;
        self.sent_at = 0;
        self.sent_replies = 0;
        self.unit_kinds.push_back(kind);
    }

    /// A simple Query or FunctionCall sent after extended-protocol messages not yet
    /// synced runs only if those succeed: after an error Postgres skips every message
    /// up to the Sync, and answers them all with the Sync's one ReadyForQuery. To
    /// tell an error of those messages from one of the Query, a Close of a portal
    /// that nobody has goes between them: its CloseComplete (hidden from the client)
    /// comes only if the messages before it succeeded. Closing a portal that does not
    /// exist is no error (Postgres docs, "Extended Query").
    fn mark_skip_point(&mut self) {
        build::close_portal(&mut self.swbuf, SKIP_MARK_PORTAL);
        self.expect(b'3', true, None);
        if let Some(f) = self.fixups.back_mut() {
            f.skip_mark = true;
        }
    }

    /// Prepares `stmt` on the held server connection if it is not there yet.
    pub(super) fn ensure_prepared(&mut self, stmt: &Statement) {
        if let Some(runs) = &stmt.runs {
            self.ensure_prepared(runs);
        }
        let conn = self.server.as_mut().expect("ensured").conn();
        if conn.prepared.touch(stmt) {
            // Prepared by an earlier unit still unanswered, which may fail before it
            // gets there: this unit must not depend on it.
            if self.unanswered_before(|f| f.parsed == Some(stmt.id) && f.swallow) {
                self.close_and_parse(stmt, true);
            }
            return;
        }
        // A copy from before the client's parse is replaced: `close_and_parse` closes
        // it first.
        if let Some(victim) = conn.prepared.insert(stmt, self.pool.parses.now()) {
            build::close_statement(&mut self.swbuf, &victim);
            self.expect(b'3', true, None);
        }
        self.close_and_parse(stmt, true);
    }

    /// Close, then Parse, `stmt` under its server name. The Close makes the Parse safe
    /// when the server still holds the name though pgmux no longer counts it (after a
    /// `DEALLOCATE ALL` or `DISCARD ALL` that failed); closing a name the server does not
    /// have is no error (Postgres docs, "Extended Query").
    pub(super) fn close_and_parse(&mut self, stmt: &Statement, swallow_parse: bool) {
        build::close_statement(&mut self.swbuf, &stmt.server_name);
        self.expect(b'3', true, None);
        build::parse_with_rest(&mut self.swbuf, &stmt.server_name, &stmt.parse_rest);
        self.expect(b'1', swallow_parse, Some(stmt.id));
    }

    pub(super) fn pin(&mut self, reason: PinReason) {
        if self.pinned.is_none() {
            tracing::debug!(database = %self.database, reason = reason.as_str(), "client pinned to its server connection");
            self.pinned = Some(reason);
            self.shared.pinned_changed(&self.database, 1);
        }
    }

    /// `at`: the place among its unit's results of the message's first statement.
    pub(super) fn apply_effects(&mut self, fx: sql::Effects, at: u32) {
        if let Some(reason) = fx.pin {
            self.pin(reason);
        }
        if let Some(db) = &fx.needs_database_free {
            self.shared.pools.close_idle_to(db);
        }
        // Called before the message's unit is counted as sent: it is the next one.
        let unit = self.sent_units + 1;
        self.note_units_in_order();
        self.pending_sets
            .extend(fx.sets.into_iter().map(|(i, op)| Change {
                unit,
                at: at.saturating_add(i),
                ran: false,
                op,
            }));
        for d in fx.deallocate {
            match d {
                Deallocate::All => self.drop_statements(unit, None, None),
                Deallocate::Name(n) => {
                    // A statement of SQL's PREPARE; or the client's protocol-level
                    // statement, but then the server does not know it by that name.
                    if let Some(kv) = self.stmts.remove_entry(n.as_bytes()) {
                        self.rare().drops.push((
                            unit,
                            StmtDrop {
                                stmts: [kv].into_iter().collect(),
                                copies: PreparedSet::new(1),
                            },
                        ));
                    }
                }
            }
        }
        if fx.discard_all {
            self.drop_statements(unit, None, None);
        }
    }

    pub(super) fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// Drops the client's statement `name` (`None`: all of them) and the held
    /// connection's copy `id` (`None`: all copies) as unit `unit` is sent, to put
    /// back if the unit fails before the drop completes.
    pub(super) fn drop_statements(&mut self, unit: u64, name: Option<Bytes>, id: Option<u128>) {
        let stmts = match name {
            None => std::mem::take(&mut self.stmts),
            Some(name) => self.stmts.remove_entry(&name).into_iter().collect(),
        };
        // The server drops a connection's copies, also those other clients share.
        let copies = match self.server.as_mut() {
            Some(s) => s.conn().prepared.take(id),
            None => PreparedSet::new(1),
        };
        self.rare().drops.push((unit, StmtDrop { stmts, copies }));
    }

    /// A `DEALLOCATE` or `DISCARD ALL` of the unit being answered completed: what it
    /// dropped stays dropped.
    pub(super) fn statements_dropped(&mut self) {
        let unit = self.recv_units + 1;
        let Some(r) = self.rare.as_deref_mut() else {
            return;
        };
        if r.drops.first().is_some_and(|(u, _)| *u == unit) {
            r.drops.remove(0);
        }
    }

    /// The units up to `answered` are over: drops that did not complete come back,
    /// unless the name was given to another statement since.
    pub(super) fn statements_kept(&mut self, conn: &mut ServerConn, answered: u64) {
        let Some(r) = self.rare.as_deref_mut() else {
            return;
        };
        let mut drops = std::mem::take(&mut r.drops);
        while drops.first().is_some_and(|(u, _)| *u <= answered) {
            let (_, kept) = drops.remove(0);
            for (name, stmt) in kept.stmts {
                self.stmts.entry(name).or_insert(stmt);
            }
            conn.prepared.put_back(kept.copies);
        }
        self.rare().drops = drops;
    }

    /// `DEALLOCATE` of the client's own protocol-level statements and `DISCARD ALL`
    /// outside a transaction are answered by pgmux: the server connection the client
    /// will get next holds nothing of them anyway. `DEALLOCATE name` of a protocol-level
    /// statement is answered by pgmux inside a transaction too (when nothing else is in
    /// flight): the server knows that statement under another name, and would refuse.
    pub(super) fn answer_locally(&mut self, fx: &sql::Effects, text: &[u8]) -> bool {
        if !single_statement(text) || fx.pin.is_some() {
            return false;
        }
        if self.server.is_some() {
            let quiet = self.in_flight() == 0 && !self.unsynced && self.tx != TxStatus::Failed;
            let own = match fx.deallocate.as_slice() {
                [Deallocate::Name(n)] => !fx.discard_all && self.stmts.contains_key(n.as_bytes()),
                _ => false,
            };
            if !quiet || !own {
                return false;
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
                        return false;
                    }
                    "DEALLOCATE"
                }
            }
        } else {
            return false;
        };
        build::command_complete(&mut self.cwbuf, tag);
        if fx.discard_all {
            self.retell(true);
        }
        build::ready_for_query(&mut self.cwbuf, self.tx);
        true
    }

    /// Before a Bind or Describe of the unnamed statement: makes the held server
    /// connection's unnamed statement the client's. Another client may have left its
    /// own there, which this client must never run; or the client's is on the
    /// connection its earlier unit had.
    pub(super) fn own_unnamed(&mut self) {
        if !self.renames() {
            return;
        }
        // Held through a Parse or Close of an earlier unit still unanswered, which
        // Postgres may skip and leave the server's unnamed statement as it was.
        let unsure = self.unanswered_before(|f| {
            f.unnamed || f.held_unnamed || matches!(f.closed, Some(Closed::Unnamed { .. }))
        });
        match self.unnamed.as_deref_mut() {
            Some(u) if u.now.held && !unsure => return,
            Some(u) if u.now.valid => {
                if let Some(runs) = u.now.runs.clone() {
                    self.ensure_prepared(&runs);
                }
                let u = self.unnamed.as_deref_mut().expect("matched");
                build::parse_with_rest(&mut self.swbuf, b"", &u.now.rest);
                u.now.held = true;
                self.expect(b'1', true, None);
                if let Some(f) = self.fixups.back_mut() {
                    f.held_unnamed = true;
                }
                return;
            }
            Some(u) => u.now.held = true,
            None => {}
        }
        // The server then says the statement does not exist, as it would.
        build::close_statement(&mut self.swbuf, b"");
        self.expect(b'3', true, None);
        if let Some(f) = self.fixups.back_mut() {
            f.held_unnamed = true;
        }
    }

    /// Transaction mode: whether the client has an unnamed statement, and whether the
    /// held server connection's is the client's.
    pub(super) fn unnamed_state(&self) -> Option<(bool, bool)> {
        self.unnamed.as_ref().map(|u| (u.now.valid, u.now.held))
    }

    /// The request just queued (the client's Close, a Query's skip mark) ends the
    /// client's unnamed statement, which was `before`: without its reply, it is back.
    pub(super) fn note_unnamed_closed(&mut self, before: Option<(bool, bool)>) {
        let (Some((valid, held)), Some(u)) = (before, self.unnamed.as_deref()) else {
            return;
        };
        if let Some(f) = self.fixups.back_mut() {
            f.closed = Some(Closed::Unnamed { valid, held });
            f.change = u.changes;
        }
    }

    /// The client's unnamed statement is gone (a simple Query, a Close); `on_server`:
    /// the held server connection's too.
    pub(super) fn unnamed_ended(&mut self, on_server: bool) {
        if let Some(u) = &mut self.unnamed {
            u.now.valid = false;
            u.now.held |= on_server;
            u.changes = u.changes.wrapping_add(1);
        }
    }

    /// Writes `swbuf` to the server and `cwbuf` to the client as far as the sockets
    /// take them now; `Blocked::Flush` leaves the rest to [`Session::flush`].
    pub(super) fn flush_now(&mut self) -> Result<(), Blocked> {
        if !self.swbuf.is_empty() {
            match self.server.as_mut() {
                Some(s) => write_now(&mut s.conn().stream, &mut self.swbuf)?,
                None => self.swbuf.clear(),
            }
        }
        write_now(&mut self.client, &mut self.cwbuf)
    }

    pub(super) async fn flush(&mut self) -> Result<(), End> {
        if let Some(s) = self.server.as_mut() {
            let conn = s.conn();
            if !self.swbuf.is_empty() || conn.stream.backlog() > HIGH_WATER {
                let following = self.handoff.as_deref().and_then(Handoff::following);
                let written = match following {
                    Some(baton) => write_following(conn, baton, &self.swbuf)
                        .await
                        .map(|()| self.swbuf.len()),
                    None => write_to_server(conn, &self.swbuf).await,
                };
                let written = match written {
                    Ok(n) => {
                        // What a plain socket did not take yet goes with the next write.
                        self.swbuf.advance(n);
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = written {
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
        } else {
            self.swbuf.clear();
        }
        if !self.cwbuf.is_empty() || self.client.backlog() > HIGH_WATER {
            write_all(&mut self.client, &self.cwbuf).await?;
            self.cwbuf.clear();
        }
        Ok(())
    }
}

/// `max_message_size` as a session keeps it.
pub(crate) fn message_limit(max: usize) -> u32 {
    u32::try_from(max).unwrap_or(u32::MAX)
}

/// One statement, at most with a trailing semicolon.
fn single_statement(text: &[u8]) -> bool {
    !text.contains(&b';')
        || text.iter().rposition(|&b| b == b';').is_some_and(|i| {
            text[i + 1..].iter().all(u8::is_ascii_whitespace) && !text[..i].contains(&b';')
        })
}

const NOT_THE_PROTOCOL: &str = "the client sent a message that does not follow the Postgres \
     protocol: a bug in the client or its driver";

fn unknown_type(tag: u8) -> Blocked {
    Blocked::Fatal(
        PgError::fatal(
            SqlState::PROTOCOL_VIOLATION,
            format!(
                "invalid frontend message type {tag} ({:?}); the connection is closed",
                tag as char
            ),
        )
        .with_hint(NOT_THE_PROTOCOL),
    )
}

fn protocol_violation(e: FrameError) -> PgError {
    let text = match e {
        FrameError::TooLarge { len, max } => format!(
            "message of {len} bytes is larger than max_message_size ({max} bytes); the connection is closed"
        ),
        FrameError::BadLength { len } => format!("invalid message length {len}; the connection is closed"),
    };
    PgError::fatal(SqlState::PROTOCOL_VIOLATION, text).with_hint(
        "send valid protocol messages, or raise [proxy].max_message_size for larger ones",
    )
}
