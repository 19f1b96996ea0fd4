//! `server_pipelining`: running a statement again when another client's cancel
//! stopped it, or when the server ended before it began.
//!
//! A cancel reaches whatever statement its server connection runs when it lands. A
//! client (the follower) sends its unit behind another client's (the leader) while the
//! leader's still runs; when the leader's cancel is in flight as Postgres finishes the
//! leader's unit, it can land on the follower's instead. pgmux cannot tell the leader's
//! end in time — that is the reply it has not read yet — but it can tell afterwards:
//! the follower's unit failed with 57014, a cancel that the follower did not ask for
//! was still on its way to the server when the follower joined, and no byte of the
//! reply has reached the client. Then the unit had no effect (it ran alone in an
//! implicit transaction, which the error rolled back), so the reply is dropped and the
//! client's messages are handled again, as if they had just come.
//!
//! The same unit is sent again when the leader's server said FATAL within the
//! leader's unit (`pg_terminate_backend`, a crash of another backend): Postgres
//! ends the session after a FATAL and reads nothing more, so the unit never ran, and
//! goes to another connection as if just sent ([`Session::replay_unstarted`]).
//!
//! Only a unit that can be handled again unchanged is kept: one unit, sent while
//! following, that leaves the connection idle and unchanged, with no settings
//! re-applied before it.
//! The leading replies of such a unit that say nothing yet (ParseComplete,
//! BindComplete, the descriptions) are held back until the outcome is known, and
//! only when a foreign cancel may have reached it: otherwise replies pass as usual.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};

use super::Session;
use crate::protocol::{be, complete_frame, fe, msg, SqlState, TxStatus};
use crate::server::CancelGate;

pub(super) struct Replay {
    /// The client's messages of the unit, as it sent them.
    frames: BytesMut,
    gate: Arc<CancelGate>,
    /// Cancels already delivered on the connection when the session joined it: the
    /// server received them before the unit, which they cannot stop.
    delivered: u64,
    /// The client's own cancel requests when it joined.
    requests: u32,
    stage: Stage,
    /// Replies held back while the outcome is open.
    held: BytesMut,
    /// The client sent more after the unit: the unit can no longer go first.
    spoiled: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The unit's messages are being sent.
    Recording,
    /// The unit is complete; no reply yet.
    Sent,
    /// A foreign cancel may have stopped the unit: replies are held.
    Holding,
    /// The unit failed with 57014: what is left is its ReadyForQuery.
    Failed,
    /// The unit's messages are back at the head of the client's input.
    Replayed,
}

impl Drop for Replay {
    fn drop(&mut self) {
        crate::stash::give(&mut self.frames);
        crate::stash::give(&mut self.held);
    }
}

/// What the reply relay does with one server message.
pub(super) enum Verdict {
    /// As usual.
    Pass,
    /// Processed, not forwarded yet.
    Hold,
    /// The held replies go out first, then this one as usual.
    Release,
    /// The unit's last reply: with the rest of its reply, it is dropped; the unit's
    /// messages are back at the head of the client's input.
    Replayed,
}

impl Session {
    /// Just began following on a connection: keeps the unit about to be sent, when it
    /// can be handled again.
    pub(super) fn arm_replay(&mut self) {
        self.replay = None;
        let eligible = self.renames()
            && self.in_flight() == 0
            && !self.unsynced
            && self.tx == TxStatus::Idle
            && self.hidden_units == 0
            && self.signals.is_none()
            && self.pending_sets.is_empty();
        if !eligible {
            return;
        }
        let Some(co) = self.server.as_mut() else {
            return;
        };
        let gate = co.conn().gate.clone();
        self.replay = Some(Box::new(Replay {
            frames: BytesMut::new(),
            delivered: gate.ended(),
            gate,
            requests: self.cancel.slot.requests(),
            stage: Stage::Recording,
            held: BytesMut::new(),
            spoiled: false,
        }));
    }

    /// A client message was handled while a unit is kept; `sent_before`: the units
    /// sent before it.
    pub(super) fn record_for_replay(&mut self, tag: u8, frame: &[u8], sent_before: u64) {
        let sent = self.sent_units > sent_before;
        let Some(r) = self.replay.as_deref_mut() else {
            return;
        };
        match r.stage {
            Stage::Recording => {
                let local_query = tag == fe::QUERY && !sent;
                let kept = matches!(
                    tag,
                    fe::QUERY | fe::PARSE | fe::BIND | fe::DESCRIBE | fe::EXECUTE | fe::SYNC
                );
                if !kept || local_query {
                    self.replay = None;
                    return;
                }
                // The unit's messages usually come together: room for all of them
                // at once.
                crate::stash::fill(&mut r.frames);
                r.frames.extend_from_slice(frame);
                if sent {
                    r.stage = Stage::Sent;
                }
            }
            // Done with: the unit handled again is a new one.
            Stage::Sent | Stage::Replayed => self.replay = None,
            Stage::Holding | Stage::Failed => r.spoiled = true,
        }
    }

    /// Rules on one server message while a unit is kept.
    pub(super) fn replay_verdict(&mut self, tag: u8, body: &[u8]) -> Verdict {
        let in_flight = self.in_flight();
        let plain = self.unit_plain && self.hidden_units == 0 && !self.copy_in;
        let own_cancels = self.cancel.slot.requests();
        let Some(r) = self.replay.as_deref_mut() else {
            return Verdict::Pass;
        };
        if r.stage == Stage::Sent {
            // The first reply: the leader has passed the connection on, so every
            // cancel that could reach this unit has been delivered by now.
            let foreign = r.gate.begun() > r.delivered;
            if !foreign || !plain || in_flight != 1 {
                self.replay = None;
                return Verdict::Pass;
            }
            r.stage = Stage::Holding;
        }
        let verdict = match (r.stage, tag) {
            (Stage::Recording | Stage::Sent | Stage::Replayed, _) => {
                self.replay = None;
                return Verdict::Pass;
            }
            (
                Stage::Holding,
                be::PARSE_COMPLETE
                | be::BIND_COMPLETE
                | be::ROW_DESCRIPTION
                | be::NO_DATA
                | be::PARAMETER_DESCRIPTION,
            ) => Verdict::Hold,
            (Stage::Holding, be::ERROR_RESPONSE)
                if msg::ErrorFields::parse(body).code
                    == Some(SqlState::QUERY_CANCELED.0.as_bytes())
                    && own_cancels == r.requests
                    && !r.spoiled =>
            {
                r.stage = Stage::Failed;
                Verdict::Hold
            }
            (Stage::Failed, be::READY_FOR_QUERY) if !r.spoiled => Verdict::Replayed,
            _ => Verdict::Release,
        };
        match verdict {
            Verdict::Replayed => {
                r.stage = Stage::Replayed;
                let frames = std::mem::take(&mut r.frames);
                tracing::debug!(
                    database = %self.database,
                    "a statement stopped by another client's cancel runs again"
                );
                self.put_back(frames);
            }
            // The caller sends the held replies out first (`release_held`).
            Verdict::Release | Verdict::Hold | Verdict::Pass => {}
        }
        verdict
    }

    /// The leader's server said FATAL within the leader's unit, so it never ran this
    /// client's unit, sent behind it: puts the kept unit back at the head of the
    /// client's input, to be handled as if it had just come, on another connection.
    /// False when no whole unit is kept, or the client has asked to cancel it since
    /// (its statement then ends as on a lost server).
    pub(super) fn replay_unstarted(&mut self) -> bool {
        let own_cancels = self.cancel.slot.requests();
        let kept = self.in_flight() == 1
            && self.unit_plain
            && self.hidden_units == 0
            && !self.copy_in
            && self.pending_sets.is_empty()
            && self
                .replay
                .as_deref()
                .is_some_and(|r| r.stage == Stage::Sent && !r.spoiled && r.requests == own_cancels);
        let Some(mut r) = self.replay.take().filter(|_| kept) else {
            return false;
        };
        let frames = std::mem::take(&mut r.frames);
        tracing::debug!(
            database = %self.database,
            "a statement sent behind another client's, which the server ended, runs on another connection"
        );
        // Nothing of the unit reached the server's replies: as if never sent.
        self.recv_units = self.sent_units;
        self.unit_kinds.clear();
        self.fixups.clear();
        self.sent_at = 0;
        self.recv_at = 0;
        self.sent_replies = 0;
        self.recv_replies = 0;
        self.unit_key = 0;
        self.unit_started = None;
        self.unsynced = false;
        if let Some(r) = self.rare.as_deref_mut() {
            r.skip_to_sync = false;
        }
        self.swbuf.clear();
        drop(self.cancel.slot.detach());
        self.put_back(frames);
        true
    }

    /// Puts a unit's kept messages back at the head of the client's input, to be
    /// handled as if they had just come.
    fn put_back(&mut self, frames: BytesMut) {
        self.forget_parsed(&frames);
        let mut input = frames;
        input.extend_from_slice(&self.crbuf);
        self.crbuf = input;
        self.head_is_plain = false;
    }

    /// True once, after a unit was put back at the head of the client's input.
    pub(super) fn take_replayed(&mut self) -> bool {
        let done = self
            .replay
            .as_deref()
            .is_some_and(|r| r.stage == Stage::Replayed);
        if done {
            self.replay = None;
        }
        done
    }

    /// Before the unit is handled again: a statement it named and the server
    /// prepared before the cancel is forgotten, so that its Parse makes it anew rather
    /// than finding its name taken. (A name taken before the unit makes the unit not
    /// plain, so none is kept.)
    fn forget_parsed(&mut self, frames: &[u8]) {
        let mut pos = 0;
        while let Ok(Some((tag, len))) = complete_frame(&frames[pos..], usize::MAX) {
            if tag == fe::PARSE {
                if let Some(p) = msg::Parse::decode(&frames[pos + 5..pos + len]) {
                    if !p.name.is_empty() {
                        self.stmts.remove(p.name);
                    }
                }
            }
            pos += len;
        }
    }

    /// Ends the hold: the held replies go out, before the message that ended it.
    pub(super) fn release_held(&mut self) {
        if let Some(r) = self.replay.take() {
            self.cwbuf.put_slice(&r.held);
        }
    }

    /// Keeps a server message back until the unit's outcome is known.
    pub(super) fn hold(&mut self, frame: &[u8]) {
        if let Some(r) = self.replay.as_deref_mut() {
            r.held.extend_from_slice(frame);
        }
    }
}
