//! Statement texts that name one of the client's protocol-level statements. In
//! transaction mode the server knows those under pgmux's names (`server::prepared`),
//! so `DEALLOCATE name` and SQL `EXECUTE name` reach it naming the server's statement.

use std::sync::Arc;

use bytes::Bytes;

use super::sql::{self, Deallocate};

use super::Session;
use crate::server::prepared::Statement;

impl Session {
    /// The text the server must run instead of `query` when it names one of the
    /// client's protocol-level statements (a `DEALLOCATE` only when `deallocate`),
    /// with the statement an `EXECUTE` runs. What it names is prepared on the held
    /// server first, so the client gets Postgres' own reply, in order.
    pub(super) fn server_text(
        &mut self,
        fx: &sql::Effects,
        query: &[u8],
        deallocate: bool,
    ) -> Option<(Vec<u8>, Option<Arc<Statement>>)> {
        if !self.renames() || self.stmts.is_empty() {
            return None;
        }
        if deallocate {
            if let Some((name, stmt)) = self.deallocate_target(fx) {
                return Some((self.server_deallocate(name, &stmt), None));
            }
        }
        let mut targets = Vec::new();
        for (range, name) in sql::execute_targets(query) {
            if let Some(stmt) = self.stmts.get(name.as_bytes()) {
                targets.push((range, stmt.clone()));
            }
        }
        if targets.is_empty() {
            return None;
        }
        let longer: usize = targets.iter().map(|(_, s)| s.server_name.len()).sum();
        let mut text = Vec::with_capacity(query.len() + longer);
        let mut at = 0;
        for (range, stmt) in &targets {
            self.ensure_prepared(stmt);
            text.extend_from_slice(&query[at..range.start]);
            text.extend_from_slice(&stmt.server_name);
            at = range.end;
        }
        text.extend_from_slice(&query[at..]);
        // A Parse holds one statement: the one its text runs.
        let runs = match targets.as_slice() {
            [(_, stmt)] => Some(stmt.clone()),
            _ => None,
        };
        Some((text, runs))
    }

    /// The client's protocol-level statement a `DEALLOCATE name` names (the only
    /// effect of the statement), in transaction mode.
    fn deallocate_target(&self, fx: &sql::Effects) -> Option<(Bytes, Arc<Statement>)> {
        if !self.renames() || fx.pin.is_some() || fx.discard_all || !fx.sets.is_empty() {
            return None;
        }
        match fx.deallocate.as_slice() {
            [Deallocate::Name(n)] => self
                .stmts
                .get_key_value(n.as_bytes())
                .map(|(k, v)| (k.clone(), v.clone())),
            _ => None,
        }
    }

    /// What a `DEALLOCATE` of the client's statement becomes on the held server: the
    /// same statement naming the server's name, after preparing it there if this
    /// connection lacks it, so the client gets Postgres' own reply, in order, inside
    /// or outside a transaction. Once it succeeds, the connection no longer counts the
    /// statement; other clients' uses of it prepare it again on demand.
    fn server_deallocate(&mut self, name: Bytes, stmt: &Statement) -> Vec<u8> {
        self.ensure_prepared(stmt);
        // Called before the Query's unit is counted as sent: it is the next one.
        self.drop_statements(self.sent_units + 1, Some(name), Some(stmt.id));
        [&b"DEALLOCATE "[..], &stmt.server_name].concat()
    }
}
