//! Server → client: forwarding replies, hiding the ones pgmux caused, and keeping
//! count of units, transaction status, COPY and prepared statements.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes};

use crate::protocol::build::{self};
use crate::protocol::{be, complete_frame, msg, TxStatus};
use crate::server::prepared::{Statement, SERVER_NAME_LEN, SERVER_NAME_PREFIX};
use crate::server::ServerConn;
use crate::tls::MaybeTls;
use crate::uring::HIGH_WATER;

use super::fixup::Closed;
use super::io::write_some_now;
use super::replay::Verdict;
use super::{Blocked, Session};

impl Session {
    /// Forwards the server's complete replies to the client, as far as it can without
    /// waiting: replies pass through as the bytes read, unless one must be hidden.
    pub(super) fn server_input_now(&mut self) -> Result<(), Blocked> {
        let mut co = self.server.take().expect("server input without a server");
        let result = self.replies_now::<false>(co.conn());
        self.server = Some(co);
        result?;
        self.flush_now()?;
        self.release_if_done()?;
        if self.take_replayed() {
            // The unit's messages are back in `crbuf`: handled as if just read.
            self.client_input_now()?;
        }
        Ok(())
    }

    /// Forwards the complete replies in `conn.rbuf`. `UNTIL_DONE`: stop after the
    /// ReadyForQuery that answers the last unit in flight, leaving what follows (another
    /// client's replies, see `pool::follow`) in `conn.rbuf`.
    pub(super) fn replies_now<const UNTIL_DONE: bool>(
        &mut self,
        conn: &mut ServerConn,
    ) -> Result<(), Blocked> {
        let mut rbuf = std::mem::take(&mut conn.rbuf);
        let mut pos = 0;
        let mut forward_from = 0;
        let mut rewritten = false;
        while let Ok(Some((tag, len))) = complete_frame(&rbuf[pos..], usize::MAX) {
            if self.replay.is_some() {
                match self.replay_verdict(tag, &rbuf[pos + 5..pos + len]) {
                    Verdict::Pass => {}
                    Verdict::Hold => {
                        self.cwbuf.put_slice(&rbuf[forward_from..pos]);
                        if !self.on_server_message(conn, tag, &rbuf[pos + 5..pos + len]) {
                            self.hold(&rbuf[pos..pos + len]);
                        }
                        pos += len;
                        forward_from = pos;
                        rewritten = true;
                        continue;
                    }
                    Verdict::Release => {
                        self.cwbuf.put_slice(&rbuf[forward_from..pos]);
                        self.release_held();
                        forward_from = pos;
                        rewritten = true;
                    }
                    Verdict::Replayed => {
                        // The unit's ReadyForQuery counts, unseen like the rest.
                        self.on_server_message(conn, tag, &rbuf[pos + 5..pos + len]);
                        self.cwbuf.put_slice(&rbuf[forward_from..pos]);
                        pos += len;
                        forward_from = pos;
                        rewritten = true;
                        if UNTIL_DONE && self.in_flight() == 0 {
                            break;
                        }
                        continue;
                    }
                }
            }
            if tag == be::NOTIFICATION_RESPONSE {
                self.name_notifier(conn, &mut rbuf[pos + 5..pos + len]);
            }
            let hide = self.signals.is_some()
                && self.hidden_units == 0
                && self.on_signal_reply(tag, &mut rbuf[pos + 5..pos + len]);
            let swallow = self.on_server_message(conn, tag, &rbuf[pos + 5..pos + len]) || hide;
            if swallow {
                self.cwbuf.put_slice(&rbuf[forward_from..pos]);
                forward_from = pos + len;
                rewritten = true;
            } else if tag == be::ERROR_RESPONSE {
                let body = &rbuf[pos + 5..pos + len];
                let duplicate = self
                    .duplicate_parse()
                    .filter(|_| msg::ErrorFields::parse(body).code == Some(b"42P05"))
                    .or_else(|| self.statement_named_in(body));
                if let Some((server_name, client_name)) = duplicate {
                    let mark = self.cwbuf.len();
                    self.cwbuf.put_slice(&rbuf[forward_from..pos]);
                    if build::error_renaming(&mut self.cwbuf, body, &server_name, &client_name) {
                        forward_from = pos + len;
                        rewritten = true;
                    } else {
                        self.cwbuf.truncate(mark);
                    }
                } else if self.timeout_cancel_sent
                    && msg::ErrorFields::parse(body).code == Some(b"57014")
                {
                    // The server can only say that a cancel request came; the client
                    // should hear that it was pgmux's query_timeout, and what to do.
                    self.cwbuf.put_slice(&rbuf[forward_from..pos]);
                    let limit = self.limits.query_timeout.get();
                    build::error_restated(
                        &mut self.cwbuf,
                        body,
                        &format!("canceling statement due to query_timeout ({limit:?})"),
                        "the statement ran longer than pgmux's query_timeout; make it faster, or raise query_timeout",
                    );
                    forward_from = pos + len;
                    rewritten = true;
                }
            }
            if tag == be::READY_FOR_QUERY && !swallow && self.retell_due() {
                self.cwbuf.put_slice(&rbuf[forward_from..pos]);
                self.retell(false);
                forward_from = pos;
                rewritten = true;
            }
            pos += len;
            if UNTIL_DONE && tag == be::READY_FOR_QUERY && self.in_flight() == 0 {
                break;
            }
        }
        let mut result = Ok(());
        let mut taken = false;
        if rewritten {
            self.cwbuf.put_slice(&rbuf[forward_from..pos]);
        } else if let (true, MaybeTls::Uring(s)) = (pos > 0, &self.client) {
            // The usual reply is all of the buffer: it goes to the kernel as it is.
            let sent = if pos == rbuf.len() {
                s.send_buf(&mut rbuf)
            } else {
                s.send_slice(&rbuf[..pos])
            };
            match sent {
                Ok(backlog) => {
                    taken = rbuf.is_empty();
                    if backlog > HIGH_WATER {
                        result = Err(Blocked::Flush);
                    }
                }
                Err(_) => {
                    // The awaited write reports it.
                    self.cwbuf.put_slice(&rbuf[..pos]);
                    result = Err(Blocked::Flush);
                }
            }
        } else if pos > 0 {
            let n = write_some_now(&mut self.client, &rbuf[..pos]);
            if n < pos {
                // The rest waits in cwbuf for the awaited write.
                self.cwbuf.put_slice(&rbuf[n..pos]);
                result = Err(Blocked::Flush);
            }
        }
        if !taken {
            rbuf.advance(pos);
        }
        if let Ok(Some((_, total))) = crate::protocol::peek_header(&rbuf, usize::MAX) {
            rbuf.reserve(total.saturating_sub(rbuf.len()));
        }
        conn.rbuf = rbuf;
        result
    }

    /// A notification names the process id the sending client got in its
    /// BackendKeyData, not its server connection's: drivers tell their own
    /// notifications apart by that id, and match others' against the ids their peers
    /// report (asyncpg, psycopg). In transaction mode the sender is the client that
    /// held the server connection last. The id keeps its length, so the reply still
    /// passes through as read.
    fn name_notifier(&self, conn: &ServerConn, body: &mut [u8]) {
        let Some(pid) = body.get_mut(..4) else {
            return;
        };
        let sender = i32::from_be_bytes([pid[0], pid[1], pid[2], pid[3]]);
        let client = if sender == conn.pid {
            Some(self.cancel.pid)
        } else {
            crate::server::client_of_backend(&conn.addr, sender)
        };
        if let Some(client) = client {
            pid.copy_from_slice(&client.to_be_bytes());
        }
    }

    /// The server and client names of a statement the client parsed again while it
    /// still used the name, when that Parse is the next reply due: the server's
    /// `42P05` names the statement as pgmux prepared it, the client knows its own name.
    fn duplicate_parse(&self) -> Option<(Bytes, Bytes)> {
        let f = self.fixups.front()?;
        if f.tag != be::PARSE_COMPLETE {
            return None;
        }
        Some((f.redefines.clone()?, f.client_name.clone()?))
    }

    /// An error naming one of pgmux's statements (a Bind with the wrong number of
    /// parameters, a SQL `EXECUTE` of the wrong arity): its server and client names,
    /// for the client to read the name it gave. A text parsed under several names is
    /// one statement on the server, named here by the first of them found.
    fn statement_named_in(&self, body: &[u8]) -> Option<(Bytes, Bytes)> {
        let message = msg::ErrorFields::parse(body).message?;
        if !self.renames() {
            return None;
        }
        let at = message
            .windows(SERVER_NAME_PREFIX.len())
            .position(|w| w == SERVER_NAME_PREFIX)?;
        let server_name = message.get(at..at + SERVER_NAME_LEN)?;
        let pending = self.rare.iter().flat_map(|r| r.drops.iter());
        let mut known = std::iter::once(&self.stmts).chain(pending.map(|(_, d)| &d.stmts));
        let named = |(name, s): (&Bytes, &Arc<Statement>)| {
            (s.server_name == server_name).then(|| name.clone())
        };
        // Or closed by a Close sent since, not answered yet.
        let mut closed = self.fixups.iter().filter_map(|f| match &f.closed {
            Some(Closed::Named(name, s)) => named((name, s)),
            _ => None,
        });
        let client_name = known
            .find_map(|stmts| stmts.iter().find_map(named))
            .or_else(|| closed.next())?;
        Some((Bytes::copy_from_slice(server_name), client_name))
    }

    /// Updates the session's view of the server from one reply; true to hide it.
    pub(super) fn on_server_message(
        &mut self,
        conn: &mut ServerConn,
        tag: u8,
        body: &[u8],
    ) -> bool {
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
                if let Some(r) = self.rare.as_deref_mut().filter(|r| r.skip_to_sync) {
                    r.skip_to_sync = false;
                    // The units of the Queries and FunctionCalls Postgres skipped, in
                    // flight ahead of the Sync this answers, end with it: counted
                    // here, their requests settled with the Sync's below.
                    let skipped = self.unit_kinds.iter().position(|&k| k == b'S').unwrap_or(0);
                    self.unit_kinds.drain(..skipped);
                    self.recv_units = (self.recv_units + skipped as u64).min(self.sent_units);
                }
                // Never more answers than units sent, whatever a server does.
                self.recv_units = (self.recv_units + 1).min(self.sent_units);
                self.unit_kinds.pop_front();
                if let Some(s) = body.first().copied().and_then(TxStatus::from_byte) {
                    self.tx = s;
                }
                if self.tx == TxStatus::Idle && self.in_flight() == 0 {
                    // Portals end with their transaction.
                    if let Some(r) = self.rare.as_deref_mut() {
                        r.runs.clear();
                    }
                }
                if self
                    .fixups
                    .front()
                    .is_some_and(|f| f.unit < self.recv_units)
                {
                    self.unanswered(conn);
                }
                // After the skipped Parses are undone: a statement a skipped
                // `DEALLOCATE` dropped comes back even if a skipped Parse took
                // its name meanwhile.
                if self.rare.as_ref().is_some_and(|r| !r.drops.is_empty()) {
                    self.statements_kept(conn, self.recv_units);
                }
                if self.copy_in && self.unit_kinds.is_empty() {
                    self.copy_in = false;
                }
                // A copy the client ended early that the server never began (its
                // statement failed) is over with the unit that carried it.
                if let Some(r) = self.rare.as_deref_mut() {
                    if r.copy_ended.is_some_and(|sent| self.recv_units > sent) {
                        r.copy_ended = None;
                    }
                }
                self.changes_at_ready(conn);
                self.recv_at = 0;
                self.recv_replies = 0;
                if self.in_flight() == 0 {
                    self.cancel.slot.set_running(false);
                }
                if self.unit_key != 0 && self.in_flight() == 0 {
                    if let Some(start) = self.unit_started {
                        self.pool.durations.record(self.unit_key, start.elapsed());
                    }
                    self.unit_key = 0;
                }
                if self.in_flight() > 0 {
                    self.unit_started = (!self.limits.query_timeout.is_zero()).then(Instant::now);
                    self.timeout_cancel_sent = false;
                }
            }
            be::ERROR_RESPONSE => {
                let severity = msg::ErrorFields::parse(body).severity;
                if matches!(severity, Some(b"FATAL" | b"PANIC")) {
                    conn.closing = true;
                } else if (self.in_flight() == 0 && self.unsynced) || self.skip_mark_pending() {
                    // An error of extended-protocol messages not yet synced, or ahead
                    // of the unit's skip mark: a Query sent before the Sync is skipped,
                    // whether it is on its way or still to come.
                    self.rare().skip_to_sync = true;
                }
                self.change_failed();
                if let Some(f) = self.fixups.front_mut() {
                    // Every request before the client's unnamed Parse is answered:
                    // the error is the Parse's.
                    f.failed |= f.unnamed
                        && f.unit == self.recv_units
                        && f.answered_before == self.recv_replies;
                }
                self.recv_at = self.recv_at.saturating_add(1);
                self.recv_replies = self.recv_replies.saturating_add(1);
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
                    self.note_told(&k, &v);
                }
            }
            be::COMMAND_COMPLETE => {
                // The usual statement has neither: its tag is not read.
                if self.rare.is_some() || !self.pending_sets.is_empty() {
                    let tag = msg::command_tag(body).unwrap_or_default();
                    if self.rare.as_ref().is_some_and(|r| !r.drops.is_empty())
                        && (tag.starts_with(b"DEALLOCATE") || tag == b"DISCARD ALL")
                    {
                        self.statements_dropped();
                    }
                    if !self.pending_sets.is_empty() {
                        self.change_result(conn, Some(tag));
                    }
                }
                self.recv_at = self.recv_at.saturating_add(1);
                self.recv_replies = self.recv_replies.saturating_add(1);
            }
            be::PORTAL_SUSPENDED | be::EMPTY_QUERY_RESPONSE => {
                if !self.pending_sets.is_empty() {
                    self.change_result(conn, None);
                }
                self.recv_at = self.recv_at.saturating_add(1);
                self.recv_replies = self.recv_replies.saturating_add(1);
            }
            be::BIND_COMPLETE | be::ROW_DESCRIPTION | be::NO_DATA => {
                self.recv_replies = self.recv_replies.saturating_add(1);
            }
            be::COPY_IN_RESPONSE => {
                let ended = self.rare.as_deref_mut().and_then(|r| r.copy_ended.take());
                if self.unit_kinds.front() == Some(&b'Q') {
                    self.copy_in = true;
                } else if let Some(sent) = ended {
                    // The client sent the whole copy already: of the Syncs since this
                    // unit began, Postgres ignores those sent during the copy, and
                    // answers those after its end.
                    let ignored = sent.saturating_sub(self.recv_units);
                    self.sent_units -= ignored;
                    self.units_in_order &= ignored == 0;
                    for _ in 0..ignored {
                        self.unit_kinds.pop_front();
                    }
                } else {
                    // Extended protocol: Postgres ignores Syncs during COPY FROM STDIN,
                    // so none of those already sent will be answered.
                    self.copy_in = true;
                    self.units_in_order &= self.sent_units == self.recv_units;
                    self.sent_units = self.recv_units;
                    self.unit_kinds.clear();
                    self.unsynced = true;
                }
            }
            _ => {}
        }
        false
    }
}
