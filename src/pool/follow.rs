//! Handing a busy server connection on to another client before it is free
//! (`server_pipelining`).
//!
//! A client (the leader) whose last unit runs on a connection and will leave it idle
//! and unchanged offers that connection: to the client first in line for one, or,
//! when none waits, to whichever client of its own worker next needs one
//! ([`super::Pool::publish`]) — in preference to an idle connection. That client (the
//! follower) takes it at once and sends its own messages behind the leader's, so
//! Postgres finds them waiting when it finishes the leader's unit instead of going to
//! sleep and being woken for them; the follower offers the connection in turn. The
//! leader keeps reading its replies through a second handle on the socket until its
//! ReadyForQuery, then passes the bytes after it — the follower's first replies — on:
//! only then does the follower read the connection.
//!
//! Every way either side can end is covered: a follower that never joins leaves the
//! connection to the leader to release; one that leaves after sending has made it
//! unusable, so the leader closes it once its own reply is in; a leader that loses
//! the connection, or is gone, breaks the baton and the follower fails as on a lost
//! server.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::BytesMut;
use parking_lot::Mutex;

use super::Checkout;

pub struct Baton {
    st: Mutex<State>,
    /// The worker (thread) of the leader that offered the connection.
    pub worker: usize,
    /// When the leader's unit went out.
    pub since: Instant,
}

#[derive(Default)]
struct State {
    /// With the baton between the offer and the follower's join, and after the leader
    /// is done when the follower never joined.
    conn: Option<Checkout>,
    /// The follower took the connection and may have sent on it.
    joined: bool,
    /// The leader has read its last reply; `leftover` holds what came after it.
    passed: bool,
    leftover: BytesMut,
    /// The server said it closes the connection (a FATAL error).
    closing: bool,
    /// The leader lost the connection or went away before its last reply.
    broken: bool,
    /// Broken after the server said FATAL within the leader's unit: the server ran
    /// nothing sent behind it.
    unstarted: bool,
    /// The follower gave up before joining, or left after it.
    follower_gone: bool,
    waker: Option<Waker>,
}

/// What a follower finds when it comes for the connection.
pub enum Joined {
    /// The leader's unit still runs: send, but read nothing before [`Baton::poll_ready`].
    Following(Checkout),
    /// The leader is done: the connection is the follower's as if checked out, with
    /// what the server sent since (nothing, or messages it sends on its own).
    Free(Checkout, BytesMut),
    /// The leader lost the connection: wait for another.
    Lost,
}

/// What the leader must do with the connection once its own reply is in.
pub enum Back {
    /// The follower has it, or will find it free.
    Taken,
    /// Nobody will take it: release it as usual.
    Release(Checkout),
    /// The follower sent on it and left (its replies will never be read), or the
    /// server is closing it.
    Close(Checkout),
}

/// The follower's view of the leader's end.
pub struct Passed {
    pub leftover: BytesMut,
    pub closing: bool,
    pub broken: bool,
    /// Broken, and the server ran nothing of the follower's: what it sent may be
    /// sent again elsewhere.
    pub unstarted: bool,
}

impl Baton {
    pub fn new(conn: Checkout) -> Arc<Baton> {
        Arc::new(Baton {
            st: Mutex::new(State {
                conn: Some(conn),
                ..State::default()
            }),
            worker: crate::workers::current(),
            since: Instant::now(),
        })
    }

    /// The leader's offer found no follower: the connection comes back.
    pub fn take_back(&self) -> Option<Checkout> {
        self.st.lock().conn.take()
    }

    /// The follower comes for the connection.
    pub fn join(&self) -> Joined {
        let mut st = self.st.lock();
        if st.broken {
            return Joined::Lost;
        }
        let Some(conn) = st.conn.take() else {
            return Joined::Lost;
        };
        if st.passed {
            let leftover = std::mem::take(&mut st.leftover);
            return Joined::Free(conn, leftover);
        }
        st.joined = true;
        Joined::Following(conn)
    }

    /// The follower was granted the baton but gave up before joining (a timeout or a
    /// cancel at that moment).
    pub fn give_up(&self) {
        let released = {
            let mut st = self.st.lock();
            st.follower_gone = true;
            if st.passed {
                st.conn
                    .take()
                    .map(|c| (c, std::mem::take(&mut st.leftover)))
            } else {
                None
            }
        };
        if let Some((mut conn, leftover)) = released {
            conn.conn().rbuf = leftover;
            conn.release();
        }
    }

    /// The follower leaves after joining: what it sent will run and nobody will read
    /// its replies, so the connection is closed once the leader is done with it.
    pub fn abandon(&self, conn: Checkout) {
        let mut st = self.st.lock();
        st.follower_gone = true;
        if st.passed {
            drop(st);
            drop(conn);
        } else {
            st.conn = Some(conn);
        }
    }

    /// Ready once the leader is done with the connection.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.st.lock();
        if st.passed {
            return Poll::Ready(());
        }
        match &st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// What the leader left, once [`Baton::poll_ready`] is ready.
    pub fn take_passed(&self) -> Passed {
        let mut st = self.st.lock();
        Passed {
            leftover: std::mem::take(&mut st.leftover),
            closing: st.closing,
            broken: st.broken || !st.passed,
            unstarted: st.broken && st.unstarted,
        }
    }

    /// The leader has read its last reply; `leftover` is what the server sent after it.
    pub fn pass(&self, leftover: BytesMut, closing: bool) -> Back {
        self.finish(leftover, closing, false)
    }

    /// The leader lost the connection (or is gone) before its last reply.
    /// `unstarted`: the server said FATAL within the leader's unit, and so ran nothing
    /// sent behind it. Postgres ends a session right after its FATAL, reading nothing
    /// more; a connection that merely fails gives no such certainty (a reply and what
    /// came after it may be lost on the way), nor does a leader that goes away.
    pub fn break_off(&self, unstarted: bool) {
        self.st.lock().unstarted = unstarted;
        if let Back::Release(c) | Back::Close(c) = self.finish(BytesMut::new(), true, true) {
            drop(c);
        }
    }

    fn finish(&self, leftover: BytesMut, closing: bool, broken: bool) -> Back {
        let (back, waker) = {
            let mut st = self.st.lock();
            st.passed = true;
            st.leftover = leftover;
            st.closing = closing;
            st.broken = broken;
            let back = match st.conn.take() {
                // The follower holds it.
                None => Back::Taken,
                Some(c) if broken || closing => Back::Close(c),
                Some(mut c) if st.follower_gone && !st.joined => {
                    c.conn().rbuf = std::mem::take(&mut st.leftover);
                    Back::Release(c)
                }
                Some(c) if st.follower_gone => Back::Close(c),
                // Granted and not yet joined: the follower finds it free.
                Some(c) => {
                    st.conn = Some(c);
                    Back::Taken
                }
            };
            (back, st.waker.take())
        };
        if let Some(w) = waker {
            w.wake();
        }
        back
    }
}

#[cfg(test)]
mod tests;
