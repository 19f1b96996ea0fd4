//! `server_pipelining`: a session hands its busy server connection on to another
//! client (leading), or sends on one whose previous holder's unit still runs there
//! (following). The baton between the two is `pool::follow`.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::pool::follow::{Back, Baton, Passed};
use crate::pool::Checkout;
use crate::protocol::build::PgError;
use crate::protocol::{be, msg, SqlState};
use crate::server::ServerConn;
use crate::tls::MaybeTls;
use crate::uring::HIGH_WATER;

use super::{Blocked, End, Session};

// Held boxed by the session, so the larger variant costs nothing while idle.
#[allow(clippy::large_enum_variant)]
pub(super) enum Handoff {
    /// The client's last unit runs on a connection a follower now holds: its replies
    /// are read through `Lease::conn` until the unit's ReadyForQuery (after those of
    /// the unit before it, when it was itself sent behind another client's).
    Lease(Lease),
    /// The held connection still runs the leader's unit: send, read nothing, until the
    /// baton is passed.
    Follow(Arc<Baton>),
}

pub(super) struct Lease {
    /// A reading view of the connection (`ServerConn::reading_view`).
    pub(super) conn: ServerConn,
    baton: Arc<Baton>,
    passed: bool,
    /// The leader this client followed, while its unit still runs: nothing is read
    /// before it passes.
    after: Option<Arc<Baton>>,
    /// In the pool's list of busy connections any client may take.
    published: bool,
}

impl Lease {
    /// The connection failed under the lease; `unstarted`: the server said FATAL
    /// within this client's unit, and ran nothing the follower sent.
    fn lose(mut self, unstarted: bool) {
        self.passed = true;
        self.baton.break_off(unstarted);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.passed {
            // The session is gone mid-unit: the follower cannot know where its own
            // replies begin.
            self.baton.break_off(false);
        }
    }
}

impl Handoff {
    /// The leader whose unit runs before this client's, if it still does.
    pub(super) fn following(&self) -> Option<&Baton> {
        match self {
            Handoff::Follow(b) => Some(b),
            Handoff::Lease(l) => l.after.as_deref(),
        }
    }

    pub(super) fn lease_conn(&mut self) -> Option<&mut ServerConn> {
        match self {
            Handoff::Lease(l) => Some(&mut l.conn),
            Handoff::Follow(_) => None,
        }
    }

    /// Leading: the view to read through, and the leader to wait for first.
    pub(super) fn lease_parts(&mut self) -> Option<(&mut ServerConn, Option<&Baton>)> {
        match self {
            Handoff::Lease(l) => Some((&mut l.conn, l.after.as_deref())),
            Handoff::Follow(_) => None,
        }
    }
}

impl Session {
    /// The session reads its last unit's replies through a lease.
    pub(super) fn leading(&self) -> bool {
        self.server.is_none() && self.handoff.is_some()
    }

    /// After a unit went out: offers the connection to the next client when that unit
    /// leaves it idle and unchanged and nothing else of this client's is on it.
    pub(super) fn offer_server(&mut self) {
        if !self.unit_plain
            || self
                .handoff
                .as_deref()
                .is_some_and(|h| matches!(h, Handoff::Lease(_)))
            || self.in_flight() != 1
            || self.unsynced
            || self.copy_in
            || self.hidden_units > 0
            || self.pinned.is_some()
            || self.settings_uncertain
            || !self.pending_sets.is_empty()
            || self.signals.is_some()
            || !self.swbuf.is_empty()
            || !self.crbuf.is_empty()
            || !self.renames()
            // A statement the server prepares only when its reply comes must be
            // recorded on the connection itself.
            || self.fixups.iter().any(|f| f.parsed.is_some())
            // Nobody should queue behind a statement that may run long.
            || !self
                .pool
                .durations
                .short(self.unit_key, self.limits.pipeline_threshold_us)
        {
            return;
        }
        let Some(co) = self.server.as_mut() else {
            return;
        };
        let conn = co.conn();
        if conn.closing {
            return;
        }
        let Some(view) = conn.reading_view() else {
            return;
        };
        let co = self.server.take().expect("checked");
        // The oldest waiting client first; else whichever client next needs one.
        let (baton, published) = match self.pool.offer(co) {
            Ok(b) => (b, false),
            Err(co) => (self.pool.publish(co), true),
        };
        // A follower offers too: its unit waits behind its leader's, and the next one
        // behind its own.
        let after = match self.handoff.take().map(|h| *h) {
            Some(Handoff::Follow(leader)) => Some(leader),
            _ => None,
        };
        self.handoff = Some(Box::new(Handoff::Lease(Lease {
            conn: view,
            baton,
            passed: false,
            after,
            published,
        })));
    }

    /// Takes a connection whose previous holder's unit still runs on it.
    pub(super) fn follow_on(&mut self, co: Checkout, baton: Arc<Baton>) {
        self.hold_server(co);
        self.handoff = Some(Box::new(Handoff::Follow(baton)));
        self.arm_replay();
    }

    /// Leading: forwards the replies read through the lease; once the last one is in,
    /// passes the connection on.
    pub(super) fn lease_input_now(&mut self) -> Result<(), Blocked> {
        let mut h = self.handoff.take().expect("leading");
        let Handoff::Lease(lease) = &mut *h else {
            unreachable!("lease input while following");
        };
        let result = self.replies_now::<true>(&mut lease.conn);
        self.handoff = Some(h);
        if self.in_flight() == 0 {
            // Before the client's output: the follower need not wait for this client.
            self.end_lease()?;
        }
        result?;
        self.flush_now()
    }

    /// The leader's unit is answered: passes the connection on, once no cancel of this
    /// client's is on its way to the server (it could reach the follower's statement).
    fn end_lease(&mut self) -> Result<(), Blocked> {
        let gate = self.cancel.slot.detach();
        self.fixups.clear();
        if gate.as_ref().is_some_and(|g| !g.is_clear()) {
            return Err(Blocked::Release(gate));
        }
        self.pass_lease();
        Ok(())
    }

    pub(super) fn pass_lease(&mut self) {
        let Some(h) = self.handoff.take() else {
            return;
        };
        let Handoff::Lease(mut lease) = *h else {
            self.handoff = Some(h);
            return;
        };
        lease.passed = true;
        let leftover = std::mem::take(&mut lease.conn.rbuf);
        if lease.published && self.pool.unpublish(&lease.baton) {
            // Nobody took it: the connection is this client's to give back.
            if let Some(mut co) = lease.baton.take_back() {
                co.conn().rbuf = leftover;
                if lease.conn.closing {
                    drop(co);
                } else {
                    co.release();
                }
            }
            return;
        }
        match lease.baton.pass(leftover, lease.conn.closing) {
            Back::Taken => {}
            Back::Release(co) => co.release(),
            Back::Close(co) => drop(co),
        }
    }

    /// Leading, the connection failed under the lease; `unstarted`: after the
    /// server's FATAL within this client's unit (see `Baton::break_off`).
    pub(super) fn lease_lost(&mut self, unstarted: bool) {
        if let Some(h) = self.handoff.take() {
            match *h {
                Handoff::Lease(lease) => lease.lose(unstarted),
                // Dropping it breaks nothing: a follower has no follower of its own.
                Handoff::Follow(_) => {}
            }
        }
    }

    /// Following: the leader is done; the connection's replies are now this client's.
    pub(super) async fn on_passed(&mut self) -> Result<(), End> {
        let Some(mut h) = self.handoff.take() else {
            return Ok(());
        };
        let (passed, conn) = match &mut *h {
            Handoff::Follow(leader) => {
                let passed = leader.take_passed();
                let Some(co) = self.server.as_mut() else {
                    return Ok(());
                };
                (passed, co.conn())
            }
            Handoff::Lease(lease) => {
                let Some(leader) = lease.after.take() else {
                    self.handoff = Some(h);
                    return Ok(());
                };
                (leader.take_passed(), &mut lease.conn)
            }
        };
        let Passed {
            mut leftover,
            closing,
            broken,
            unstarted,
        } = passed;
        if broken {
            let addr = conn.addr.to_string();
            // The server ended within the leader's unit: this client's never ran,
            // and goes to another connection as if just sent.
            let again = unstarted && self.replay_unstarted();
            // Breaks the lease for this client's own follower, whose unit never ran
            // either when this one's did not, whether or not this one's runs again.
            if let Handoff::Lease(lease) = *h {
                lease.lose(unstarted);
            }
            self.server = None;
            if again {
                return Ok(());
            }
            return self
                .fatal(PgError::fatal(
                    SqlState::CONNECTION_FAILURE,
                    format!("server {addr} closed the connection unexpectedly"),
                ))
                .await;
        }
        leftover.extend_from_slice(&conn.rbuf);
        conn.rbuf = leftover;
        conn.closing |= closing;
        let cancelled = self.cancel.slot.followed(conn.cancel_target());
        let leading = matches!(*h, Handoff::Lease(_));
        if leading {
            self.handoff = Some(h);
        }
        if cancelled && self.in_flight() > 0 {
            // Cancelled while the leader's unit ran: the key now reaches this client's.
            let cancels = self.shared.cancels.clone();
            let (pid, secret) = (self.cancel.pid, self.cancel.secret);
            tokio::spawn(async move {
                cancels.cancel(pid, secret, Duration::from_secs(10)).await;
            });
        }
        // The unit sent behind the leader's now runs: the next waiting client may send
        // behind it in turn, so the server goes from one to the next without a pause.
        if self.limits.pipeline && !leading {
            self.offer_server();
        }
        Ok(())
    }

    /// The client left while leading: its unit's replies are read and dropped, so the
    /// follower knows where its own begin.
    pub(super) async fn drain_lease(&mut self) {
        let Some(Handoff::Lease(lease)) = self.handoff.as_deref_mut() else {
            return;
        };
        if let Some(leader) = lease.after.take() {
            std::future::poll_fn(|cx| leader.poll_ready(cx)).await;
            let passed = leader.take_passed();
            if passed.broken {
                // The client is gone, and its unit never ran when the leader's
                // server said FATAL; nor then did the follower's.
                self.lease_lost(passed.unstarted);
                return;
            }
            let mut leftover = passed.leftover;
            leftover.extend_from_slice(&lease.conn.rbuf);
            lease.conn.rbuf = leftover;
            lease.conn.closing |= passed.closing;
        }
        while self.sent_units > self.recv_units {
            match lease.conn.read_message().await {
                Ok((be::READY_FOR_QUERY, _)) => self.recv_units += 1,
                Ok((be::ERROR_RESPONSE, body)) => {
                    let severity = msg::ErrorFields::parse(&body).severity;
                    if matches!(severity, Some(b"FATAL" | b"PANIC")) {
                        lease.conn.closing = true;
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    let told = lease.conn.closing;
                    self.lease_lost(told);
                    return;
                }
            }
        }
        self.pass_lease();
    }
}

/// Following, a write that waits for room without reading the connection, whose
/// replies are still the leader's; the wait also ends when the leader is done, after
/// which the relay reads while it writes again.
pub(super) async fn write_following(
    conn: &mut ServerConn,
    baton: &Baton,
    data: &[u8],
) -> std::io::Result<()> {
    let MaybeTls::Uring(s) = &conn.stream else {
        unreachable!("only io_uring connections are handed over");
    };
    s.send_slice(data)?;
    std::future::poll_fn(|cx: &mut Context<'_>| {
        if s.poll_backlog(cx, HIGH_WATER)?.is_ready() || baton.poll_ready(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    })
    .await
}
