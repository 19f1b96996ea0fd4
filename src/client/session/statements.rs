//! The extended protocol's statement messages: Parse, Bind, Describe and Close,
//! which in transaction mode name the client's statements by pgmux's names on the
//! server (see `rename`), and tell whether a unit leaves its connection idle.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::{BufMut, Bytes};

use super::sql;
use crate::protocol::{build, fe, msg};
use crate::server::prepared::Statement;

use super::{Blocked, Session};

impl Session {
    /// Parse: a named statement is kept under a name of pgmux's own on the server.
    pub(super) fn on_parse(&mut self, frame: &[u8], body: &[u8]) -> Result<(), Blocked> {
        let Some(p) = msg::Parse::decode(body) else {
            return Err(self.malformed("Parse"));
        };
        self.ensure_server()?;
        if self.renames() && !p.name.is_empty() {
            if let Some(existing) = self.stmts.get(p.name).cloned() {
                // Postgres refuses to redefine a name still in use (42P05):
                // parsing the statement the name stands for again under its
                // server name makes the server refuse it in its place, so the
                // error comes in order and fails a transaction as it should.
                self.ensure_prepared(&existing);
                build::parse_with_rest(
                    &mut self.swbuf,
                    &existing.server_name,
                    &existing.parse_rest,
                );
                self.expect(b'1', false, None);
                if let Some(f) = self.fixups.back_mut() {
                    f.client_name = Some(Bytes::copy_from_slice(p.name));
                }
                self.unsynced = true;
                self.unit_plain = false;
                return Ok(());
            }
        }
        let (fx, read) = match sql::analyze_parse(p.query) {
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
        let named = (!p.name.is_empty() && self.renames()).then(|| {
            let mut stmt = Statement::new(&rest, self.pool.parses.tick());
            stmt.runs = runs.clone();
            stmt.plain = plain;
            (Bytes::copy_from_slice(p.name), Arc::new(stmt))
        });
        self.apply_effects(fx);
        match named {
            None => {
                match &rest {
                    Cow::Owned(body) => build::parse_with_rest(&mut self.swbuf, b"", body),
                    Cow::Borrowed(_) => self.swbuf.put_slice(frame),
                }
                self.expect(b'1', false, None);
                if p.name.is_empty() && self.renames() {
                    if let Some(f) = self.fixups.back_mut() {
                        f.unnamed = true;
                    }
                    let u = self.unnamed.get_or_insert_with(Box::default);
                    u.rest.clear();
                    u.rest.extend_from_slice(&rest);
                    u.runs = runs;
                    u.valid = true;
                    u.held = true;
                    u.plain = plain;
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
            self.unit_plain &= self.unnamed.as_ref().is_some_and(|u| u.valid && u.plain);
        } else {
            self.unit_plain &= stmt.as_ref().is_some_and(|s| s.plain);
            if let Some(s) = stmt
                .as_ref()
                .filter(|_| self.limits.pipeline && self.in_flight() == 0)
            {
                self.unit_key = s.id as u64 | 1;
            }
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
            None => self.swbuf.put_slice(frame),
        }
        self.unsynced = true;
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
                self.stmts.remove(t.name);
                build::close_statement(&mut self.swbuf, b"pgmux_none");
                self.expect(b'3', false, None);
            }
            (fe::CLOSE, None) => {
                self.swbuf.put_slice(frame);
                self.expect(b'3', false, None);
            }
            _ => self.swbuf.put_slice(frame),
        }
        self.unsynced = true;
        Ok(())
    }
}
