//! `pg_cancel_backend(pid)` and `pg_terminate_backend(pid)` with the process id a
//! client was given in its BackendKeyData.
//!
//! That id is pgmux's own (see `cancel`), above every id Linux gives a process, so
//! the server that runs the call finds no such backend: it warns and returns false.
//! pgmux forwards the call as sent and, once its result row shows the server ran it
//! (not in a failed transaction, say), acts on the client named — the same cancel a
//! CancelRequest with that client's key makes, or the end of its session with
//! `FATAL 57P01` — then hides the warning and turns the result to true. The reply
//! keeps its length and its place among the others.
//!
//! Only a call that is its unit's first result is taken: a simple Query that is the
//! call alone, or the first Execute after a Sync of a statement that is the call.
//! Only clients of the same user can be named, as a role may signal only its own
//! backends (a superuser's wider reach is the server's to grant, not pgmux's).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;

use super::super::sql::{Signal, SignalArg, SignalKind};
use super::Session;
use crate::protocol::{be, msg};

/// A cancel forwarded for a signal call gives up after this long.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) struct Signals {
    /// An Execute was sent since the last Sync: a call's reply is told apart only
    /// when it is the first result of its unit.
    executed: bool,
    /// Statements that are a signal call, by name (the unnamed one under `""`).
    stmts: HashMap<Bytes, Signal>,
    /// The portal last bound from one of them: its name, and the call with the
    /// process id filled in.
    portal: Option<(Bytes, i32, SignalKind)>,
    replies: VecDeque<Reply>,
}

struct Reply {
    /// The unit whose first result row is the call's.
    unit: u64,
    pid: i32,
    kind: SignalKind,
    row_seen: bool,
    /// The call ends this very session: the rest of its reply is not sent.
    hide_rest: bool,
}

impl Session {
    /// A Parse: remembers whether statement `name` is a signal call.
    pub(super) fn note_signal_statement(&mut self, name: &[u8], signal: Option<Signal>) {
        match (signal, &mut self.signals) {
            (Some(sig), _) => {
                let s = self.signals_state();
                s.stmts.insert(Bytes::copy_from_slice(name), sig);
            }
            (None, Some(s)) => {
                s.stmts.remove(name);
            }
            (None, None) => {}
        }
    }

    /// A Bind: a portal of a signal statement gets the process id its parameters give.
    pub(super) fn note_signal_bind(&mut self, b: &msg::Bind<'_>) {
        let Some(s) = self.signals.as_mut() else {
            return;
        };
        s.portal = s.stmts.get(b.statement).and_then(|sig| {
            let pid = match sig.arg {
                SignalArg::Pid(pid) => pid,
                SignalArg::Param(n) => {
                    let (format, value) = b.param(usize::from(n).checked_sub(1)?)?;
                    int_param(format, value?)?
                }
            };
            Some((Bytes::copy_from_slice(b.portal), pid, sig.kind))
        });
    }

    /// Made on the first signal call; until then, Executes were not followed.
    fn signals_state(&mut self) -> &mut Signals {
        // Messages of this unit came before: one may have been an Execute.
        let executed = self.unsynced;
        self.signals.get_or_insert_with(|| {
            Box::new(Signals {
                executed,
                stmts: HashMap::new(),
                portal: None,
                replies: VecDeque::new(),
            })
        })
    }

    /// A Sync (or what stands for one): the next Execute is its unit's first.
    pub(super) fn signal_unit_ended(&mut self) {
        if let Some(s) = self.signals.as_mut() {
            s.executed = false;
        }
    }

    /// An Execute of `portal`.
    pub(super) fn note_signal_execute(&mut self, portal: &[u8]) {
        let Some(s) = self.signals.as_mut() else {
            return;
        };
        let first_in_unit = !std::mem::replace(&mut s.executed, true);
        let Some((_, pid, kind)) = s.portal.take_if(|(p, _, _)| p == portal) else {
            return;
        };
        if first_in_unit {
            // The Sync to come ends the unit.
            self.expect_signal(self.sent_units + 1, pid, kind);
        }
    }

    /// A simple Query that is a signal call, just counted as unit `unit`.
    pub(super) fn expect_signal_query(&mut self, unit: u64, signal: Signal) {
        if let SignalArg::Pid(pid) = signal.arg {
            self.expect_signal(unit, pid, signal.kind);
        }
    }

    fn expect_signal(&mut self, unit: u64, pid: i32, kind: SignalKind) {
        if !self.shared.cancels.may_signal(pid, self.cancel.user()) {
            // Not a client this one may signal: the server's answer stands.
            return;
        }
        self.signals_state().replies.push_back(Reply {
            unit,
            pid,
            kind,
            row_seen: false,
            hide_rest: false,
        });
    }

    /// A server reply while signal calls are awaited: acts on the call's result row,
    /// rewriting it in place. True to hide the message from the client.
    pub(super) fn on_signal_reply(&mut self, tag: u8, body: &mut [u8]) -> bool {
        let unit = self.recv_units + 1;
        let own = self.cancel.pid;
        let Some(s) = self.signals.as_mut() else {
            return false;
        };
        while s.replies.front().is_some_and(|r| r.unit < unit) {
            s.replies.pop_front();
        }
        let Some(r) = s.replies.front_mut().filter(|r| r.unit == unit) else {
            return false;
        };
        if r.hide_rest {
            return true;
        }
        match tag {
            // "PID … is not a PostgreSQL backend process", a warning of class 01.
            be::NOTICE_RESPONSE if !r.row_seen => {
                let f = msg::ErrorFields::parse(body);
                let pid = r.pid.to_string();
                f.code == Some(b"01000")
                    && f.message
                        .is_some_and(|m| m.windows(pid.len()).any(|w| w == pid.as_bytes()))
            }
            be::DATA_ROW if !r.row_seen => {
                r.row_seen = true;
                // One column, one byte: false as text or binary, made true.
                if let [0, 1, 0, 0, 0, 1, v] = body {
                    *v = match *v {
                        b'f' => b't',
                        0 => 1,
                        other => other,
                    };
                }
                let terminate = r.kind == SignalKind::Terminate;
                if r.pid == own {
                    if terminate {
                        // As a backend that terminates itself: FATAL instead of the
                        // result, once the server has finished the unit.
                        r.hide_rest = true;
                        self.cancel.slot.end();
                        return true;
                    }
                    // Its own statement is this one, and it has run.
                    return false;
                }
                self.shared.cancels.signal(r.pid, terminate, CANCEL_TIMEOUT);
                false
            }
            _ => false,
        }
    }
}

/// An integer parameter as a driver sends it: text, or binary int2/int4/int8.
fn int_param(format: i16, value: &[u8]) -> Option<i32> {
    match (format, value.len()) {
        (0, _) => std::str::from_utf8(value).ok()?.trim().parse().ok(),
        (1, 2) => Some(i16::from_be_bytes(value.try_into().ok()?).into()),
        (1, 4) => Some(i32::from_be_bytes(value.try_into().ok()?)),
        (1, 8) => i32::try_from(i64::from_be_bytes(value.try_into().ok()?)).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::int_param;

    #[test]
    fn integer_parameters_are_read_in_both_formats() {
        assert_eq!(int_param(0, b"12345678"), Some(12345678));
        assert_eq!(int_param(0, b"x"), None);
        assert_eq!(int_param(1, &7i16.to_be_bytes()), Some(7));
        assert_eq!(int_param(1, &12345678i32.to_be_bytes()), Some(12345678));
        assert_eq!(int_param(1, &12345678i64.to_be_bytes()), Some(12345678));
        assert_eq!(int_param(1, &(1i64 << 40).to_be_bytes()), None);
        assert_eq!(int_param(1, &[1, 2, 3]), None);
    }
}
