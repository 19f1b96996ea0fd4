//! The client's unnamed statement in transaction mode: what pgmux knows of it, and
//! how a change of it that Postgres skipped is undone.

use std::sync::Arc;

use super::fixup::{Closed, Fixup};
use super::sql;
use crate::server::prepared::Statement;

/// The client's unnamed statement. Postgres keeps it until the next unnamed Parse or
/// simple Query, across Syncs, so a client may Bind or Describe it in a later unit,
/// on whatever server connection that unit gets (see `Session::own_unnamed`).
#[derive(Default)]
pub(super) struct Unnamed {
    /// As pgmux takes it now, the requests not yet answered taken as done.
    pub(super) now: UnnamedState,
    /// What the last unnamed Parse replaced: Postgres keeps it when it skips that
    /// Parse (an error came first in its unit). Its `valid`: as far as is known (an
    /// earlier change that turns out not to have happened clears it).
    pub(super) before: UnnamedState,
    /// Counts the client's Parses of its unnamed statement and what ends it
    /// (`Fixup::change`).
    pub(super) changes: u32,
    /// The count at the Parse whose statement `before` replaced.
    pub(super) before_change: u32,
}

#[derive(Default)]
pub(super) struct UnnamedState {
    /// The body of the client's last unnamed Parse after the name.
    pub(super) rest: Vec<u8>,
    /// The statement a SQL `EXECUTE` in `rest` runs, to prepare first.
    pub(super) runs: Option<Arc<Statement>>,
    /// What each run of it does to the session (see `Statement::on_run`).
    pub(super) on_run: Option<Box<sql::Effects>>,
    /// The client has an unnamed statement: `rest`.
    pub(super) valid: bool,
    /// Its text leaves the connection idle and unchanged (`sql::leaves_idle`).
    pub(super) plain: bool,
    /// The held server connection's unnamed statement is the client's (or neither
    /// has one): false from each checkout until pgmux makes it so.
    pub(super) held: bool,
}

impl Unnamed {
    /// The client's unnamed Parse of `rest`: what it replaces is kept (its buffer
    /// reused for the new text).
    pub(super) fn parsed(
        &mut self,
        rest: &[u8],
        runs: Option<Arc<Statement>>,
        on_run: Option<Box<sql::Effects>>,
        plain: bool,
    ) {
        self.changes = self.changes.wrapping_add(1);
        self.before_change = self.changes;
        std::mem::swap(&mut self.now, &mut self.before);
        let n = &mut self.now;
        n.rest.clear();
        n.rest.extend_from_slice(rest);
        n.runs = runs;
        n.on_run = on_run;
        n.valid = true;
        n.held = true;
        n.plain = plain;
    }

    /// Back to what the last unnamed Parse replaced: Postgres skipped that Parse.
    fn restore_before(&mut self) {
        std::mem::swap(&mut self.now, &mut self.before);
        self.before.valid = false;
    }
}

impl Unnamed {
    /// A request `f` that got no reply (skipped after an error in its unit, or the
    /// failed one), undone as far as it concerns the unnamed statement; `first`: the
    /// first change of it in the same unit that got none either, if earlier. False
    /// when `f` was a change another came after.
    pub(super) fn unanswered(&mut self, f: &Fixup, first: Option<&Fixup>) -> bool {
        if f.held_unnamed {
            // The server's unnamed statement is what it was: maybe another client's,
            // never to be run for this one.
            self.now.held = false;
        }
        if !f.changes_unnamed() {
            return true;
        }
        if f.change != self.changes {
            // Changed again since: that change stands. What a later Parse replaced is
            // then this change's statement, which the client never had.
            if f.unnamed {
                self.before.valid = false;
            }
            return false;
        }
        // Back to what it was before the first change that did not happen, as far as
        // that is known; otherwise none, and the next use parses it again.
        let first = first.unwrap_or(f);
        match first.closed {
            // Its text is as it was if no Parse came after.
            Some(Closed::Unnamed { valid, held }) if self.before_change < first.change => {
                self.now.valid = valid;
                self.now.held = held;
            }
            Some(_) => {
                self.now.valid = false;
                self.now.held = false;
            }
            // Postgres drops the old unnamed statement as it begins a Parse of the
            // unnamed one, and keeps it when it skips the Parse.
            None if first.failed => self.now.valid = false,
            None if first.change == self.before_change && self.before.valid => {
                self.restore_before()
            }
            None => {
                self.now.valid = false;
                self.now.held = false;
            }
        }
        true
    }
}
