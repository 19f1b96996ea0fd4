//! The extended protocol's statement messages: Parse, Bind, Describe and Close,
//! which in transaction mode name the client's statements by pgmux's names on the
//! server (see `rename`), and tell whether a unit leaves its connection idle.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::{BufMut, Bytes};

use super::sql;
use crate::protocol::{build, fe, msg};
use crate::server::prepared::Statement;

use super::{Blocked, Closed, Fixup, Session};
use crate::server::ServerConn;

impl Session {
    /// What, besides its text, decides what a statement means when Postgres parses
    /// it, when the client set it: which tables its names resolve to (`search_path`,
    /// and who the client is, `$user` in the path), how its constants read
    /// (`DateStyle`, `TimeZone` and `IntervalStyle` are applied when a literal date,
    /// timestamp or interval is parsed, `lc_monetary` to money and `xmloption` to
    /// XML; `standard_conforming_strings` decides what a backslash in a string is,
    /// `transform_null_equals` what `= NULL` is) and how its bytes read
    /// (`client_encoding`). Clients that differ there get statements of their own on
    /// the server.
    fn parse_scope(&self) -> Vec<u8> {
        const PARSE_SETTINGS: [&str; 11] = [
            "search_path",
            "role",
            "session_authorization",
            "datestyle",
            "timezone",
            "intervalstyle",
            "standard_conforming_strings",
            "client_encoding",
            "lc_monetary",
            "xmloption",
            "transform_null_equals",
        ];
        let mut scope = Vec::new();
        for name in PARSE_SETTINGS {
            if let Some(stmt) = self.settings.get(name) {
                scope.extend_from_slice(stmt.as_bytes());
                scope.push(0);
            }
        }
        scope
    }

    /// Parse: a named statement is kept under a name of pgmux's own on the server.
    pub(super) fn on_parse(&mut self, frame: &[u8], body: &[u8]) -> Result<(), Blocked> {
        let Some(p) = msg::Parse::decode(body) else {
            return Err(self.malformed("Parse"));
        };
        self.ensure_server()?;
        if self.renames() && !p.name.is_empty() {
            if let Some(existing) = self.stmts.get(p.name).cloned() {
                // Postgres refuses to redefine a name still in use (42P05), after
                // reading the new text (a syntax error comes first): parsing the
                // new text under the server name of the statement the name stands
                // for makes the server refuse it in its place, so the error comes
                // in order and fails a transaction as it should.
                self.ensure_prepared(&existing);
                build::parse_with_rest(&mut self.swbuf, &existing.server_name, p.rest);
                self.expect(b'1', false, None);
                if let Some(f) = self.fixups.back_mut() {
                    f.client_name = Some(Bytes::copy_from_slice(p.name));
                    f.redefines = Some(existing.server_name.clone());
                }
                self.unsynced = true;
                self.unit_plain = false;
                return Ok(());
            }
        }
        let (mut fx, read) = match sql::analyze_parse(p.query) {
            Ok(read) => (sql::Effects::default(), Some(read)),
            Err(fx) => (fx, None),
        };
        let plain = read.is_some_and(|r| r.leaves_idle);
        self.note_signal_statement(p.name, fx.signal);
        // The statement as the server gets it: the client's, or one naming the
        // server's statement in place of the client's.
        let (rest, runs) = match self.server_text(&fx, p.query, p.name.is_empty()) {
            Some((mut sql, runs)) => {
                sql.push(0);
                sql.extend_from_slice(&p.rest[p.query.len() + 1..]);
                (Cow::Owned(sql), runs)
            }
            None => (Cow::Borrowed(p.rest), None),
        };
        let plain = plain && runs.is_none();
        self.unit_plain &= plain;
        if self.unit_plain && self.limits.pipeline && self.in_flight() == 0 {
            self.unit_key = read.map_or_else(|| sql::fingerprint(p.query), |r| r.key);
        }
        // In transaction mode, what running the statement does is applied at each
        // Execute of a portal bound to it, on whatever connection that run gets.
        let on_run = if self.renames() {
            fx.take_run_effects()
        } else {
            None
        };
        let (named, on_run) = if !p.name.is_empty() && self.renames() {
            let scope = self.parse_scope();
            let mut stmt = Statement::new(&rest, &scope, self.pool.parses.tick());
            stmt.runs = runs.clone();
            stmt.plain = plain;
            stmt.on_run = on_run;
            (Some((Bytes::copy_from_slice(p.name), Arc::new(stmt))), None)
        } else {
            (None, on_run)
        };
        // In session mode what is left of them counts from the Parse on, as if its
        // next Execute ran it.
        self.apply_effects(fx, self.sent_at);
        match named {
            None => {
                match &rest {
                    Cow::Owned(body) => build::parse_with_rest(&mut self.swbuf, b"", body),
                    Cow::Borrowed(_) => self.swbuf.put_slice(frame),
                }
                self.expect(b'1', false, None);
                if p.name.is_empty() && self.renames() {
                    let u = self.unnamed.get_or_insert_with(Box::default);
                    u.parsed(&rest, runs, on_run, plain);
                    if let Some(f) = self.fixups.back_mut() {
                        f.unnamed = true;
                        f.answered_before = self.sent_replies;
                        f.change = u.changes;
                    }
                }
            }
            Some((name, stmt)) => {
                self.stmts.insert(name.clone(), stmt.clone());
                let conn = self.server.as_mut().expect("ensured").conn();
                if let Some(victim) = conn.prepared.insert(&stmt, stmt.epoch) {
                    build::close_statement(&mut self.swbuf, &victim);
                    self.expect(b'3', true, None);
                }
                // Re-prepare even when the server has it, so the client gets a
                // ParseComplete (or an error) from the server itself.
                self.close_and_parse(&stmt, false);
                if let Some(f) = self.fixups.back_mut() {
                    f.client_name = Some(name);
                }
            }
        }
        self.unsynced = true;
        Ok(())
    }

    /// Bind: names the server's statement in place of the client's.
    pub(super) fn on_bind(&mut self, frame: &[u8], body: &[u8]) -> Result<(), Blocked> {
        let Some(b) = msg::Bind::decode(body) else {
            return Err(self.malformed("Bind"));
        };
        self.note_signal_bind(&b);
        let stmt = self
            .renames()
            .then(|| self.stmts.get(b.statement).cloned())
            .flatten();
        self.ensure_server()?;
        if b.statement.is_empty() {
            self.own_unnamed();
            self.unit_plain &= self
                .unnamed
                .as_ref()
                .is_some_and(|u| u.now.valid && u.now.plain);
        } else {
            self.unit_plain &= stmt.as_ref().is_some_and(|s| s.plain);
            if let Some(s) = stmt
                .as_ref()
                .filter(|_| self.limits.pipeline && self.in_flight() == 0)
            {
                self.unit_key = s.id as u64 | 1;
            }
        }
        let on_run = match stmt {
            Some(stmt) => {
                self.ensure_prepared(&stmt);
                let (portal, rest) = (b.portal, b.rest);
                build::message(&mut self.swbuf, fe::BIND, |o| {
                    build::put_cstr(o, portal);
                    build::put_cstr(o, &stmt.server_name);
                    o.put_slice(rest);
                });
                stmt.on_run.clone()
            }
            None => {
                self.swbuf.put_slice(frame);
                let unnamed = b.statement.is_empty().then_some(self.unnamed.as_deref());
                unnamed
                    .flatten()
                    .filter(|u| u.now.valid)
                    .and_then(|u| u.now.on_run.clone())
            }
        };
        self.bound(b.portal, on_run);
        self.unsynced = true;
        self.sent_replies = self.sent_replies.saturating_add(1);
        Ok(())
    }

    /// Describe and Close of a statement or portal.
    pub(super) fn on_describe_or_close(
        &mut self,
        tag: u8,
        frame: &[u8],
        body: &[u8],
    ) -> Result<(), Blocked> {
        let Some(t) = msg::Target::decode(body) else {
            return Err(self.malformed(if tag == fe::CLOSE {
                "Close"
            } else {
                "Describe"
            }));
        };
        if tag == fe::CLOSE {
            self.unit_plain = false;
        }
        if tag == fe::CLOSE && self.server.is_none() && self.renames() {
            // Between transactions no server holds anything of this client's:
            // its statements are pgmux's to forget and portals are gone.
            // Nothing is in flight, so the reply cannot overtake another.
            if t.kind == b'S' {
                self.stmts.remove(t.name);
                if t.name.is_empty() {
                    self.unnamed_ended(false);
                }
            }
            build::close_complete(&mut self.cwbuf);
            return Ok(());
        }
        let known = (t.kind == b'S' && !t.name.is_empty() && self.renames())
            .then(|| self.stmts.get(t.name).cloned())
            .flatten();
        self.ensure_server()?;
        let closes_unnamed = t.kind == b'S' && t.name.is_empty() && tag == fe::CLOSE;
        let before = self.unnamed_state();
        if t.kind == b'S' && t.name.is_empty() {
            if tag == fe::DESCRIBE {
                self.own_unnamed();
            } else {
                self.unnamed_ended(true);
            }
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
                let stmt = self.stmts.remove(t.name);
                build::close_statement(&mut self.swbuf, b"pgmux_none");
                self.expect(b'3', false, None);
                if let (Some(f), Some(stmt)) = (self.fixups.back_mut(), stmt) {
                    f.closed = Some(Closed::Named(Bytes::copy_from_slice(t.name), stmt));
                }
            }
            (fe::CLOSE, None) => {
                self.swbuf.put_slice(frame);
                self.expect(b'3', false, None);
                if closes_unnamed {
                    self.note_unnamed_closed(before);
                }
            }
            _ => self.swbuf.put_slice(frame),
        }
        if tag == fe::DESCRIBE {
            self.sent_replies = self.sent_replies.saturating_add(1);
        }
        self.unsynced = true;
        Ok(())
    }

    /// The requests of units now answered that got no reply: the server skipped them
    /// after an error (or they failed). What pgmux did as it sent them is undone, the
    /// last first, as Postgres never did it.
    pub(super) fn unanswered(&mut self, conn: &mut ServerConn) {
        let mut skipped: Vec<Fixup> = Vec::new();
        while self
            .fixups
            .front()
            .is_some_and(|f| f.unit < self.recv_units)
        {
            skipped.extend(self.fixups.pop_front());
        }
        while let Some(f) = skipped.pop() {
            if let Some(id) = f.parsed {
                // The server never prepared it. Nor does a drop sent after it and not
                // yet answered put it back.
                conn.prepared.remove(id);
                let pending = self.rare.iter_mut().flat_map(|r| r.drops.iter_mut());
                let pending = pending.map(|(_, d)| &mut d.stmts);
                for stmts in std::iter::once(&mut self.stmts).chain(pending) {
                    if let Some(name) = &f.client_name {
                        if stmts.get(name).is_some_and(|s| s.id == id) {
                            stmts.remove(name);
                        }
                    }
                }
                for (_, d) in self.rare.iter_mut().flat_map(|r| r.drops.iter_mut()) {
                    d.copies.remove(id);
                }
            }
            if let Some(Closed::Named(name, stmt)) = &f.closed {
                self.stmts
                    .entry(name.clone())
                    .or_insert_with(|| stmt.clone());
            }
            if let Some(u) = self.unnamed.as_deref_mut() {
                let first = skipped.iter().find(|e| e.changes_unnamed());
                if !u.unanswered(&f, first) {
                    // A change sent later took this one as made: what it would
                    // bring back is not known.
                    for l in self.fixups.iter_mut() {
                        if let Some(Closed::Unnamed { valid, held }) = &mut l.closed {
                            (*valid, *held) = (false, false);
                        }
                    }
                }
            }
        }
    }

    /// Bind made `portal` run a statement that does `on_run` (or nothing) to the
    /// session: applied at each Execute of it, as that is when it happens.
    fn bound(&mut self, portal: &[u8], on_run: Option<Box<sql::Effects>>) {
        if let Some(r) = self.rare.as_deref_mut() {
            r.runs.retain(|(p, _)| p != portal);
        }
        if let Some(fx) = on_run {
            self.rare().runs.push((Bytes::copy_from_slice(portal), fx));
        }
    }

    /// Execute of `portal`: what running its statement does to the session.
    pub(super) fn on_execute(&mut self, portal: &[u8]) {
        let fx = self
            .rare
            .as_deref()
            .and_then(|r| r.runs.iter().find(|(p, _)| p == portal))
            .map(|(_, fx)| (**fx).clone());
        if let Some(fx) = fx {
            self.apply_effects(fx, self.sent_at);
        }
    }
}
