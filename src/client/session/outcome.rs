//! Whether a transaction's settings changes stuck, from the replies: each statement's
//! result says whether its change ran, and a COMMIT's or ROLLBACK's tag, or the
//! ReadyForQuery that ends an implicit transaction, says whether the changes before
//! it stay. Savepoints undo what came after them.

use super::sql::{PinReason, SetOp};
use crate::server::{ServerConn, Settings};

use super::{Session, TxStatus};

/// A settings change sent to the server: where its reply comes (the unit, itself
/// included in the count of units sent; and the statement's place among the unit's
/// results), and whether it ran.
#[derive(Debug)]
pub(super) struct Change {
    pub(super) unit: u64,
    pub(super) at: u32,
    pub(super) ran: bool,
    pub(super) op: SetOp,
}

impl Change {
    fn place(&self) -> (u64, u32) {
        (self.unit, self.at)
    }
}

/// Drops the changes a `ROLLBACK TO` undid; `None` when a savepoint is unknown.
pub(super) fn replay_savepoints(ops: Vec<SetOp>) -> Option<Vec<SetOp>> {
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
            SetOp::RollbackAll => {
                kept.clear();
                marks.clear();
            }
            op => kept.push(op),
        }
    }
    Some(kept)
}

impl Session {
    /// A statement's result (its CommandComplete, or a PortalSuspended) with changes
    /// pending: the changes of that statement ran, and a transaction that ends with it
    /// decides the changes before it.
    pub(super) fn change_result(&mut self, conn: &mut ServerConn, tag: Option<&[u8]>) {
        let here = (self.recv_units + 1, self.recv_at);
        let mut savepoint = false;
        let upto = self.sets_upto(here);
        for c in self.pending_sets.range_mut(..upto) {
            if c.place() == here {
                c.ran = true;
                savepoint |= matches!(c.op, SetOp::RollbackTo(_));
            }
        }
        match tag {
            // Also the tag of COMMIT AND CHAIN; the next transaction goes on.
            Some(b"COMMIT") => self.transaction_ended(conn, here, true),
            // A ROLLBACK TO has the same tag, but ends no transaction.
            Some(b"ROLLBACK") if !savepoint => self.transaction_ended(conn, here, false),
            _ => {}
        }
    }

    /// An error: the statement it answers made no change, and the transaction it
    /// failed will keep none.
    pub(super) fn change_failed(&mut self) {
        let here = (self.recv_units + 1, self.recv_at);
        let upto = self.sets_upto(here);
        self.retain_sets(upto, |c| c.place() != here);
        self.changes_failed = true;
    }

    /// How many of the pending changes, from the front, can have a place up to
    /// `place`: with thousands of changes pipelined behind, each reply reads only
    /// those of its own statement (all of them when they are out of order).
    fn sets_upto(&self, place: (u64, u32)) -> usize {
        if self.units_in_order {
            self.pending_sets
                .iter()
                .take_while(|c| c.place() <= place)
                .count()
        } else {
            self.pending_sets.len()
        }
    }

    /// `retain` over the first `upto` pending changes only.
    fn retain_sets(&mut self, upto: usize, keep: impl Fn(&Change) -> bool) {
        let head: Vec<Change> = self.pending_sets.drain(..upto).filter(keep).collect();
        for c in head.into_iter().rev() {
            self.pending_sets.push_front(c);
        }
    }

    /// ReadyForQuery (the unit counted as received): what the server skipped after an
    /// error never ran; back to idle, the implicit transaction around what ran since
    /// the last COMMIT or ROLLBACK kept it unless it failed.
    pub(super) fn changes_at_ready(&mut self, conn: &mut ServerConn) {
        let done = self.recv_units;
        if !self.pending_sets.is_empty() {
            let upto = self.sets_upto((done, u32::MAX));
            self.retain_sets(upto, |c| c.ran || c.unit > done);
            if self.tx == TxStatus::Idle {
                let kept = !self.changes_failed;
                self.transaction_ended(conn, (done, u32::MAX), kept);
            }
        }
        if self.tx == TxStatus::Idle {
            self.changes_failed = false;
        }
    }

    /// Applies or discards the changes up to `upto` of a transaction that just ended:
    /// applied when it committed (minus what a `ROLLBACK TO` undid), discarded when it
    /// rolled back, as the server did.
    fn transaction_ended(&mut self, conn: &mut ServerConn, upto: (u64, u32), committed: bool) {
        self.changes_failed = false;
        // Changes sent after it belong to a later transaction.
        let done = self
            .pending_sets
            .iter()
            .take_while(|c| c.place() <= upto)
            .count();
        if done == 0 {
            return;
        }
        let ops: Vec<SetOp> = self
            .pending_sets
            .drain(..done)
            .filter(|c| c.ran)
            .map(|c| c.op)
            .collect();
        if !committed {
            return;
        }
        let changes = ops.iter().any(|op| {
            matches!(
                op,
                SetOp::Set { .. } | SetOp::Reset { .. } | SetOp::ResetAll
            )
        });
        if !changes {
            return;
        }
        let Some(kept) = replay_savepoints(ops) else {
            // What the server now holds is known only to it: the client stays with
            // that connection rather than lose or invent a setting elsewhere.
            self.pin(PinReason::UntrackedSettings);
            return;
        };
        for op in kept {
            match op {
                SetOp::Set { name, statement } => {
                    self.settings.set(&name, &statement);
                    conn.settings.set(&name, &statement);
                    self.set_told(&name);
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
                    self.reset_told(Some(&name));
                }
                SetOp::ResetAll => {
                    self.settings = self.settings.after_reset_all(&self.startup);
                    conn.settings = conn.settings.after_reset_all(&Settings::default());
                    self.reset_told(None);
                }
                SetOp::Savepoint(_)
                | SetOp::Release(_)
                | SetOp::RollbackTo(_)
                | SetOp::RollbackAll => {}
            }
        }
    }
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
}
