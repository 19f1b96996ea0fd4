//! The replies pgmux expects to the Parses and Closes it sends itself or follows for
//! the client (its fixups), in the order they will come, and the questions asked of
//! them per message. Those questions read only the fixups of the units concerned, at
//! the front: a batch or a pipeline of thousands must not cost each message all of
//! them.

use std::sync::Arc;

use bytes::Bytes;

use crate::server::prepared::Statement;

use super::Session;

/// What to do with one reply of a Parse or Close pgmux sent.
#[derive(Debug, Clone)]
pub(super) struct Fixup {
    /// The unit (count of Syncs/Queries sent before it) the request belongs to.
    pub(super) unit: u64,
    pub(super) tag: u8,
    pub(super) swallow: bool,
    /// A named Parse: the statement is on the server only once its ParseComplete comes.
    pub(super) parsed: Option<u128>,
    /// The client's own Parse of this name: without a ParseComplete, the name stays
    /// free, as in Postgres.
    pub(super) client_name: Option<Bytes>,
    /// The client's Parse of a name it still uses, sent under the server name of the
    /// statement the name stands for (`Session::on_parse`): the server's 42P05 names
    /// that, and the client's Close of the name may come before the reply.
    pub(super) redefines: Option<Bytes>,
    /// The client's own unnamed Parse: without a ParseComplete, the client has the
    /// unnamed statement from before if Postgres skipped the Parse, none if the Parse
    /// failed (Postgres drops the old one before parsing; see `Unnamed::unanswered`).
    pub(super) unnamed: bool,
    /// For the client's unnamed Parse: the Binds, Describes and Executes before it in
    /// its unit. An error that comes when as many of their replies have come, with no
    /// request before the Parse still unanswered, is the Parse's own.
    pub(super) answered_before: u8,
    /// The error of its unit was this Parse's own: Postgres dropped the old unnamed
    /// statement. Otherwise an unanswered Parse was skipped.
    pub(super) failed: bool,
    /// pgmux's Parse or Close of the server's unnamed statement, made for the
    /// client's: without its reply, the server's unnamed statement is not the
    /// client's.
    pub(super) held_unnamed: bool,
    /// For a change of the client's unnamed statement (its Parse, its Close, a Query
    /// behind a skip mark): `Unnamed::changes` once it was made, to tell whether a
    /// later one was made since.
    pub(super) change: u32,
    /// The client's Close of a statement, or of the unnamed statement by a Close or
    /// a Query behind this skip mark: without a CloseComplete (skipped after an
    /// error), the client still has it, as in Postgres.
    pub(super) closed: Option<Closed>,
    /// pgmux's Close of a portal nobody has, sent between extended-protocol messages
    /// not yet synced and a Query or FunctionCall (see `Session::mark_skip_point`).
    pub(super) skip_mark: bool,
}

#[derive(Debug, Clone)]
pub(super) enum Closed {
    Named(Bytes, Arc<Statement>),
    /// What `Unnamed::valid` and `Unnamed::held` were before.
    Unnamed {
        valid: bool,
        held: bool,
    },
}

impl Fixup {
    /// The client's Parse of its unnamed statement, or what ends it.
    pub(super) fn changes_unnamed(&self) -> bool {
        self.unnamed || matches!(self.closed, Some(Closed::Unnamed { .. }))
    }
}

impl Session {
    pub(super) fn expect(&mut self, tag: u8, swallow: bool, parsed: Option<u128>) {
        self.note_units_in_order();
        self.fixups.push_back(Fixup {
            unit: self.sent_units,
            tag,
            swallow,
            parsed,
            client_name: None,
            redefines: None,
            unnamed: false,
            answered_before: 0,
            failed: false,
            held_unnamed: false,
            change: 0,
            closed: None,
            skip_mark: false,
        });
    }

    /// Before a fixup or a change is queued: with none queued, whatever a COPY
    /// renumbered has been answered.
    pub(super) fn note_units_in_order(&mut self) {
        if self.fixups.is_empty() && self.pending_sets.is_empty() {
            self.units_in_order = true;
        }
    }

    /// Whether a request of a unit before the one being sent, matching `which`, is
    /// still unanswered. Runs for each Bind: a unit of thousands of unnamed statements (a
    /// driver's batch) must not read its own fixups each time, so the scan stops where
    /// the units already sent end.
    pub(super) fn unanswered_before(&self, which: impl Fn(&Fixup) -> bool) -> bool {
        let sent_before = |f: &&Fixup| f.unit < self.sent_units;
        if self.units_in_order {
            self.fixups.iter().take_while(sent_before).any(which)
        } else {
            self.fixups.iter().filter(sent_before).any(which)
        }
    }

    /// The last unit before the one being sent with a request matching `which` still
    /// unanswered.
    pub(super) fn last_unanswered(&self, which: impl Fn(&Fixup) -> bool) -> Option<u64> {
        let sent_before = |f: &&Fixup| f.unit < self.sent_units;
        let matches = |f: &&Fixup| which(f);
        if self.units_in_order {
            self.fixups
                .iter()
                .take_while(sent_before)
                .filter(matches)
                .last()
                .map(|f| f.unit)
        } else {
            self.fixups
                .iter()
                .filter(sent_before)
                .filter(matches)
                .map(|f| f.unit)
                .max()
        }
    }

    /// Whether the unit being answered has a skip mark still unanswered. Runs for each
    /// ErrorResponse: with thousands of units pipelined behind, and one error each, the
    /// scan stops where the units after the one being answered begin.
    pub(super) fn skip_mark_pending(&self) -> bool {
        let this_unit = |f: &Fixup| f.skip_mark && f.unit == self.recv_units;
        if self.units_in_order {
            self.fixups
                .iter()
                .take_while(|f| f.unit <= self.recv_units)
                .any(this_unit)
        } else {
            self.fixups.iter().any(this_unit)
        }
    }
}
