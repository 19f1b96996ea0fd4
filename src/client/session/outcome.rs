//! Whether a transaction's settings changes stuck: the outcome of the transaction
//! from its replies, and savepoints.

use super::sql::{PinReason, SetOp};
use crate::server::{ServerConn, Settings};

use super::Session;

/// The last transaction-ending command tag seen before ReadyForQuery.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum LastTag {
    #[default]
    Other,
    Commit,
    Rollback,
}

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Outcome {
    pub(super) error: bool,
    pub(super) last: LastTag,
    /// Statements ran after a COMMIT within one reply stream (a multi-statement
    /// Query): which changes survived cannot be told from the tags alone.
    pub(super) ambiguous: bool,
}

impl Outcome {
    pub(super) fn saw_tag(&mut self, tag: &[u8]) {
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

    /// An error: after a COMMIT in the same reply stream, it failed what came after
    /// the COMMIT (or made the server skip it), which the tags cannot tell apart from
    /// what the COMMIT kept.
    pub(super) fn saw_error(&mut self) {
        self.error = true;
        if self.last == LastTag::Commit {
            self.ambiguous = true;
        }
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
    /// Applies or discards the settings changes of a transaction that just ended:
    /// applied when it committed (minus what a `ROLLBACK TO` undid), discarded when it
    /// rolled back — the server has reverted them too. Only when the replies cannot
    /// tell is the connection reset before reuse.
    pub(super) fn end_of_transaction(&mut self, conn: &mut ServerConn) {
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
            // What the server now holds is known only to it: the client stays with
            // that connection rather than lose or invent a setting elsewhere.
            self.pin(PinReason::UntrackedSettings);
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

    #[test]
    fn an_error_after_a_commit_is_ambiguous_and_before_it_is_not() {
        let mut o = Outcome::default();
        o.saw_error();
        o.saw_tag(b"ROLLBACK");
        assert!(o.error && !o.ambiguous);
        let mut o = Outcome::default();
        o.saw_tag(b"COMMIT");
        o.saw_error();
        assert!(o.error && o.ambiguous);
    }
}
