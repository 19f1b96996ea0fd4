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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use parking_lot::Mutex;

use crate::server::{send_cancel, CancelGate, CancelTarget};

pub struct CancelSlot {
    secret: i32,
    target: Mutex<Option<CancelTarget>>,
    /// The session is queued for a server connection (from the moment it found none
    /// free): a cancel then abandons the wait. The session may run on another thread
    /// than the cancel's, so this is a flag it sets, not a listener it may not have
    /// registered yet.
    queued: AtomicBool,
    cancelled: AtomicBool,
    /// Wakes a session that is queued.
    waiting: tokio::sync::Notify,
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

    /// Forgets the target; returns its gate, which the caller must see clear before
    /// reusing the server connection.
    pub fn detach(&self) -> Option<Arc<CancelGate>> {
        self.target.lock().take().map(|t| t.gate)
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
        loop {
            // Registered before the flag is read: a cancel after the read wakes it.
            let notified = slot.waiting.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if slot.cancelled.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.slot.queued.store(false, Ordering::SeqCst);
    }
}

#[derive(Default)]
pub struct CancelRegistry {
    slots: DashMap<i32, Arc<CancelSlot>>,
}

/// Removes a client's key from the registry when the client goes away.
pub struct Registration {
    registry: Arc<CancelRegistry>,
    pub pid: i32,
    pub secret: i32,
    pub slot: Arc<CancelSlot>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.slots.remove(&self.pid);
    }
}

impl CancelRegistry {
    pub fn register(self: &Arc<Self>) -> Registration {
        loop {
            let pid: i32 = rand::random::<i32>() & 0x7fff_ffff;
            let secret: i32 = rand::random();
            if pid == 0 {
                continue;
            }
            let slot = Arc::new(CancelSlot {
                secret,
                target: Mutex::new(None),
                queued: AtomicBool::new(false),
                cancelled: AtomicBool::new(false),
                waiting: tokio::sync::Notify::new(),
            });
            if let dashmap::Entry::Vacant(v) = self.slots.entry(pid) {
                v.insert(slot.clone());
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
        let target = {
            let guard = slot.target.lock();
            guard.as_ref().map(|t| {
                t.gate.begin();
                t.clone()
            })
        };
        let Some(target) = target else {
            // Only a session queued for a server connection is cancelled: an idle
            // client's cancel changes nothing.
            if slot.queued.load(Ordering::SeqCst) {
                slot.cancelled.store(true, Ordering::SeqCst);
                slot.waiting.notify_waiters();
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
