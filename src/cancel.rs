//! Query cancellation (Postgres docs, "Canceling Requests in Progress").
//!
//! Each client gets its own random BackendKeyData from pgmux, never a server's. A
//! CancelRequest carrying that key is forwarded — on a fresh connection, so it gets
//! through even when the pool is full — to the server connection the client holds at
//! that moment, with that server's key. A client queued for a server connection has
//! its wait abandoned (57014, the statement never runs); an idle client's cancel is
//! dropped.
//!
//! A cancel must never hit the next client's statement on the same server connection:
//! the target is read and the connection's [`CancelGate`] entered under one lock, and
//! the session waits for the gate to clear before it gives the connection back.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use dashmap::DashMap;
use parking_lot::Mutex;

use crate::server::{send_cancel, CancelGate, CancelTarget};

pub struct CancelSlot {
    secret: i32,
    /// The user the client logged in as: a signal call by process id reaches only
    /// clients of the same user, as Postgres lets a role signal only its own backends.
    user: Arc<str>,
    target: Mutex<Option<CancelTarget>>,
    /// The session is queued for a server connection (from the moment it found none
    /// free): a cancel then abandons the wait. The session may run on another thread
    /// than the cancel's, so this is a flag it sets, not a listener it may not have
    /// registered yet.
    queued: AtomicBool,
    /// The session's statement was sent behind another client's, on a connection whose
    /// replies are not yet the session's to read (see `pool::follow`): a cancel is
    /// kept for when they are, as the server's key would now reach the other client's
    /// statement.
    following: AtomicBool,
    /// The session has a unit in flight on its server connection. In session mode the
    /// connection stays attached between statements, and a signal that reached it
    /// then could stop the client's next statement instead.
    running: AtomicBool,
    cancelled: AtomicBool,
    /// Cancels asked for this client, ever (see `client::session::replay`).
    requests: AtomicU32,
    /// The session must end: pgmux is shutting down, or a `pg_terminate_backend()`
    /// named this client.
    ended: AtomicBool,
    /// The session's task, while it waits for `cancelled` or `ended`. Only the
    /// session waits on its slot, so one waker is enough; each idle client pays for
    /// this slot rather than for a child cancellation token and a boxed wait on it
    /// (about 400 bytes).
    waker: Mutex<Option<Waker>>,
}

impl CancelSlot {
    pub fn attach(&self, target: CancelTarget) {
        *self.target.lock() = Some(target);
    }

    /// Marks the session queued for a server connection until the guard drops.
    pub fn enter_queue(&self) -> Queued<'_> {
        self.cancelled.store(false, Ordering::SeqCst);
        self.queued.store(true, Ordering::SeqCst);
        Queued { slot: self }
    }

    /// The session sent its statement behind another client's (see `following`). A
    /// cancel counts from the wait for a server connection this ended (`fresh`: from
    /// now, when there was no wait, or an older cancel abandoned that wait).
    pub fn follow(&self, fresh: bool) {
        if fresh {
            self.cancelled.store(false, Ordering::SeqCst);
        }
        self.following.store(true, Ordering::SeqCst);
    }

    /// The session now reads the connection it followed on, `target`: true when a
    /// cancel came since it was queued, to be forwarded now.
    pub fn followed(&self, target: CancelTarget) -> bool {
        self.attach(target);
        self.following.store(false, Ordering::SeqCst);
        self.cancelled.swap(false, Ordering::SeqCst)
    }

    /// Whether the session has a unit in flight; set as its first unit goes out and
    /// cleared at the ReadyForQuery that answers its last.
    pub fn set_running(&self, running: bool) {
        self.running.store(running, Ordering::Release);
    }

    /// Forgets the target; returns its gate, which the caller must see clear before
    /// reusing the server connection.
    pub fn detach(&self) -> Option<Arc<CancelGate>> {
        self.target.lock().take().map(|t| t.gate)
    }

    /// How many cancels were asked for this client so far.
    pub fn requests(&self) -> u32 {
        self.requests.load(Ordering::SeqCst)
    }

    /// Tells the session to end, wherever it is waiting.
    pub fn end(&self) {
        self.raise(&self.ended);
    }

    /// Ready once the session must end (see [`CancelSlot::end`]); stays ready.
    pub fn poll_end(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_flag(&self.ended, cx)
    }

    fn raise(&self, flag: &AtomicBool) {
        flag.store(true, Ordering::SeqCst);
        let waker = self.waker.lock().take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    // The waker is stored before the flag is read, and `raise` sets the flag before
    // it takes the waker: a raise either is seen here or finds this waker.
    fn poll_flag(&self, flag: &AtomicBool, cx: &mut Context<'_>) -> Poll<()> {
        {
            let mut w = self.waker.lock();
            match &mut *w {
                Some(old) if old.will_wake(cx.waker()) => {}
                other => *other = Some(cx.waker().clone()),
            }
        }
        if flag.load(Ordering::SeqCst) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// A session queued for a server connection; see [`CancelSlot::enter_queue`].
pub struct Queued<'a> {
    slot: &'a CancelSlot,
}

impl Queued<'_> {
    /// Completes when a cancel arrives while queued (or arrived since the queueing).
    pub async fn cancelled(&self) {
        let slot = self.slot;
        poll_fn(|cx| slot.poll_flag(&slot.cancelled, cx)).await
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.slot.queued.store(false, Ordering::SeqCst);
    }
}

/// The smallest process id pgmux gives a client.
pub const PID_FLOOR: i32 = (1 << 22) + 1;

#[derive(Default)]
pub struct CancelRegistry {
    slots: DashMap<i32, Arc<CancelSlot>>,
    /// Set by [`CancelRegistry::end_all`]: a client registered after it ends at once.
    ending: AtomicBool,
}

/// Removes a client's key from the registry when the client goes away.
pub struct Registration {
    registry: Arc<CancelRegistry>,
    pub pid: i32,
    pub secret: i32,
    pub slot: Arc<CancelSlot>,
}

impl Registration {
    /// The user the client logged in as.
    pub fn user(&self) -> &str {
        &self.slot.user
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.slots.remove(&self.pid);
    }
}

impl CancelRegistry {
    pub fn register(self: &Arc<Self>, user: Arc<str>) -> Registration {
        loop {
            // Above every process id Linux hands out (PID_MAX_LIMIT is 2^22): a
            // client's id never names a real backend, so a `pg_terminate_backend()`
            // or `pg_cancel_backend()` given it can reach no one else's session.
            let pid: i32 = rand::random_range(PID_FLOOR..=i32::MAX);
            let secret: i32 = rand::random();
            let slot = Arc::new(CancelSlot {
                secret,
                user: user.clone(),
                target: Mutex::new(None),
                queued: AtomicBool::new(false),
                following: AtomicBool::new(false),
                running: AtomicBool::new(false),
                cancelled: AtomicBool::new(false),
                requests: AtomicU32::new(0),
                ended: AtomicBool::new(false),
                waker: Mutex::new(None),
            });
            if let dashmap::Entry::Vacant(v) = self.slots.entry(pid) {
                v.insert(slot.clone());
                // After the insert: `end_all` either finds this slot or was flagged
                // before this read.
                if self.ending.load(Ordering::SeqCst) {
                    slot.end();
                }
                return Registration {
                    registry: self.clone(),
                    pid,
                    secret,
                    slot,
                };
            }
        }
    }

    /// Handles one CancelRequest. Unknown keys and idle clients change nothing.
    pub async fn cancel(&self, pid: i32, secret: i32, timeout: Duration) {
        let Some(slot) = self.slots.get(&pid).map(|s| s.clone()) else {
            tracing::debug!(pid, "cancel for an unknown key ignored");
            return;
        };
        // Compare without an early exit, so the time taken says nothing of the secret.
        if (slot.secret ^ secret) != 0 {
            tracing::debug!(pid, "cancel with a wrong secret ignored");
            return;
        }
        Self::cancel_slot(pid, &slot, timeout).await;
    }

    /// Ends every session (pgmux is shutting down), and each one registered later.
    pub fn end_all(&self) {
        self.ending.store(true, Ordering::SeqCst);
        for slot in self.slots.iter() {
            slot.end();
        }
    }

    /// Whether a client of `user` may signal the client with process id `pid`.
    pub fn may_signal(&self, pid: i32, user: &str) -> bool {
        self.slots.get(&pid).is_some_and(|s| &*s.user == user)
    }

    /// Carries out a `pg_cancel_backend()` or `pg_terminate_backend()` that named
    /// client `pid`, as a CancelRequest with its key would, or by ending its session.
    pub fn signal(self: &Arc<Self>, pid: i32, terminate: bool, timeout: Duration) {
        let Some(slot) = self.slots.get(&pid).map(|s| s.clone()) else {
            return;
        };
        if terminate {
            // The session cancels a statement it has running as it ends.
            slot.end();
            return;
        }
        // Decided now, before the caller sees its result: Postgres has signalled the
        // backend by then, and a signal to an idle backend changes nothing. Sent
        // later, the cancel could reach the statement the client sends next.
        let idle = match &*slot.target.lock() {
            Some(_) => !slot.running.load(Ordering::Acquire),
            // Without a server connection, only a client queued for one (or
            // following another's unit) has a statement to cancel.
            None => !slot.queued.load(Ordering::SeqCst) && !slot.following.load(Ordering::SeqCst),
        };
        if idle {
            tracing::debug!(pid, "signal for a client without a running statement");
            return;
        }
        tokio::spawn(async move { Self::cancel_slot(pid, &slot, timeout).await });
    }

    async fn cancel_slot(pid: i32, slot: &CancelSlot, timeout: Duration) {
        slot.requests.fetch_add(1, Ordering::SeqCst);
        let target = {
            let guard = slot.target.lock();
            guard.as_ref().map(|t| {
                t.gate.begin();
                t.clone()
            })
        };
        let Some(target) = target else {
            // Only a session queued for a server connection (or following, see
            // `following`) is cancelled: an idle client's cancel changes nothing.
            if slot.queued.load(Ordering::SeqCst) || slot.following.load(Ordering::SeqCst) {
                slot.raise(&slot.cancelled);
            } else {
                tracing::debug!(pid, "cancel for a client without a running statement");
            }
            return;
        };
        if let Err(e) = send_cancel(&target, timeout).await {
            tracing::warn!(server = %target.addr, error = %e, "could not forward a cancel request");
        }
        target.gate.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_distinct_and_above_every_linux_process_id() {
        let registry = Arc::new(CancelRegistry::default());
        let user: Arc<str> = "app".into();
        let regs: Vec<Registration> = (0..2000).map(|_| registry.register(user.clone())).collect();
        assert!(registry.may_signal(regs[0].pid, "app"));
        assert!(!registry.may_signal(regs[0].pid, "other"));
        let pids: std::collections::HashSet<i32> = regs.iter().map(|r| r.pid).collect();
        assert_eq!(pids.len(), regs.len());
        assert!(
            pids.iter().all(|&p| p > 1 << 22),
            "a pid within Linux's range"
        );
        drop(regs);
        assert!(
            registry.slots.is_empty(),
            "a dropped registration leaves its key"
        );
    }

    fn ended(slot: &CancelSlot) -> bool {
        slot.poll_end(&mut Context::from_waker(Waker::noop()))
            .is_ready()
    }

    const BOUND: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn a_terminate_wakes_the_session_it_names_and_no_other() {
        let registry = Arc::new(CancelRegistry::default());
        let (a, b) = (
            registry.register("app".into()),
            registry.register("app".into()),
        );
        let slot = a.slot.clone();
        let waiting = tokio::spawn(async move { poll_fn(|cx| slot.poll_end(cx)).await });
        tokio::task::yield_now().await;
        registry.signal(a.pid, true, BOUND);
        tokio::time::timeout(BOUND, waiting)
            .await
            .expect("the named session is woken")
            .unwrap();
        assert!(ended(&a.slot), "an end stays in force");
        assert!(!ended(&b.slot), "another session goes on");
    }

    #[tokio::test]
    async fn ending_all_ends_sessions_registered_after_it() {
        let registry = Arc::new(CancelRegistry::default());
        let before = registry.register("app".into());
        registry.end_all();
        let after = registry.register("app".into());
        assert!(ended(&before.slot));
        assert!(ended(&after.slot));
    }

    #[tokio::test]
    async fn a_cancel_wakes_a_session_queued_for_a_server() {
        let registry = Arc::new(CancelRegistry::default());
        let reg = registry.register("app".into());
        let slot = reg.slot.clone();
        let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
        let waiting = tokio::spawn(async move {
            let queued = slot.enter_queue();
            let _ = entered_tx.send(());
            queued.cancelled().await;
        });
        entered_rx.await.unwrap();
        registry.cancel(reg.pid, reg.secret, BOUND).await;
        tokio::time::timeout(BOUND, waiting)
            .await
            .expect("the queued session is woken")
            .unwrap();
        assert!(!ended(&reg.slot), "a cancel does not end the session");
    }
}
