//! The permits that bound a pool: `pool_size` of them, handed out in arrival order,
//! with one exception that keeps a transaction on its own thread.
//!
//! Each worker (thread, see `workers`) queues its waiters apart. A returned permit goes
//! straight to a waiter (never back to the free count while anyone waits), and to the
//! oldest waiter of the releasing worker unless a waiter elsewhere arrived
//! sufficiently earlier (see [`OVERTAKE_LIMIT`]). Handing a permit across threads costs a wake-up of
//! the other thread (a syscall and a context switch on each side); with the bound, no
//! client is overtaken by one that arrived much later than it (relative to how long
//! it has waited), and a
//! worker whose clients hold fewer connections sees its oldest waiter age past the
//! limit and receives the next permit, so the connections follow the demand.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::follow::Baton;

/// How much later than a waiter of another worker a waiter of the releasing worker
/// may have arrived and still go first: this, or half the other's wait so far,
/// whichever is more. Relative to the wait because under a long queue (256 clients,
/// 20 connections: waits of 20–40 ms) the heads of the workers' queues drift apart
/// by several milliseconds; a fixed 1 ms turned 14% of the releases into wake-ups of
/// the other thread and cost a quarter of the throughput, half the wait turns 1.4%.
pub const OVERTAKE_LIMIT: Duration = Duration::from_millis(1);
const OVERTAKE_SHARE: u32 = 2;

pub struct Gate {
    state: Mutex<State>,
    /// Queued waiters that may be handed a busy connection (`State::followers`, read
    /// without the lock by a client deciding whether to offer one).
    followers: AtomicUsize,
}

struct State {
    free: usize,
    /// Permits to swallow as they come back, after the capacity shrank.
    owed: usize,
    /// Waiters per worker, oldest first.
    queues: Vec<VecDeque<Arc<Waiter>>>,
}

struct Waiter {
    worker: usize,
    arrived: Instant,
    /// May be granted a busy connection instead of a permit (see `follow`).
    can_follow: bool,
    granted: AtomicBool,
    /// Set with `granted` when what was granted is a busy connection.
    follow: Mutex<Option<Arc<Baton>>>,
    waker: Mutex<Option<Waker>>,
}

/// What a waiter gets.
pub enum Grant {
    Permit(Permit),
    /// Another client's busy connection, to send on behind its last unit.
    Follow(Arc<Baton>),
}

/// One unit of the pool's capacity; dropping it hands it on.
pub struct Permit {
    gate: Arc<Gate>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.release();
    }
}

impl Gate {
    pub fn new(permits: usize) -> Arc<Gate> {
        Arc::new(Gate {
            state: Mutex::new(State {
                free: permits,
                owed: 0,
                queues: Vec::new(),
            }),
            followers: AtomicUsize::new(0),
        })
    }

    /// A permit if one is free now. A free permit means nobody waits.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let mut st = self.state.lock();
        if st.free == 0 {
            return None;
        }
        st.free -= 1;
        Some(Permit { gate: self.clone() })
    }

    /// Waits for a permit; dropping the future gives up its place (or passes on a
    /// permit it was granted and did not take).
    #[cfg(test)]
    pub fn acquire(self: &Arc<Self>) -> Acquire {
        self.acquire_or_follow(false)
    }

    /// Like [`Gate::acquire`]; with `can_follow`, the wait may also end with another
    /// client's busy connection ([`Gate::hand_follow`]).
    pub fn acquire_or_follow(self: &Arc<Self>, can_follow: bool) -> Acquire {
        Acquire {
            gate: self.clone(),
            waiter: None,
            done: false,
            can_follow,
        }
    }

    /// Whether a waiter might take a busy connection; read without a lock.
    pub fn has_followers(&self) -> bool {
        self.followers.load(Ordering::Relaxed) > 0
    }

    /// Grants `baton` to the waiter next in line, if it may follow; false otherwise.
    pub fn hand_follow(&self, baton: &Arc<Baton>) -> bool {
        let waiter = {
            let mut st = self.state.lock();
            let Some(w) = st.next_waiter(crate::workers::current(), Instant::now) else {
                return false;
            };
            if !w.can_follow {
                st.queues[w.worker].push_front(w);
                return false;
            }
            self.followers.fetch_sub(1, Ordering::Relaxed);
            *w.follow.lock() = Some(baton.clone());
            w.granted.store(true, Ordering::Release);
            w
        };
        let waker = waiter.waker.lock().take();
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }

    /// Clients waiting for a permit.
    pub fn waiting(&self) -> usize {
        self.state.lock().queues.iter().map(VecDeque::len).sum()
    }

    /// Adds capacity: first cancels what a shrink still owes, then serves waiters.
    pub fn grow(self: &Arc<Self>, mut n: usize) {
        let mut st = self.state.lock();
        let cancel = n.min(st.owed);
        st.owed -= cancel;
        n -= cancel;
        drop(st);
        for _ in 0..n {
            self.release();
        }
    }

    /// Removes capacity: free permits go at once, the rest as they are returned.
    pub fn shrink(&self, n: usize) {
        let mut st = self.state.lock();
        let now = n.min(st.free);
        st.free -= now;
        st.owed += n - now;
    }

    fn release(&self) {
        let waiter = {
            let mut st = self.state.lock();
            if st.owed > 0 {
                st.owed -= 1;
                return;
            }
            match st.next_waiter(crate::workers::current(), Instant::now) {
                Some(w) => {
                    if w.can_follow {
                        self.followers.fetch_sub(1, Ordering::Relaxed);
                    }
                    // Under the gate's lock: a waiter that gives up checks this flag
                    // under the same lock, so a grant is never lost.
                    w.granted.store(true, Ordering::Release);
                    w
                }
                None => {
                    st.free += 1;
                    return;
                }
            }
        };
        let waker = waiter.waker.lock().take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl State {
    /// `now` is read only when waiters of two workers compete: a release with
    /// nobody waiting, the usual case, reads no clock.
    fn next_waiter(&mut self, here: usize, now: impl FnOnce() -> Instant) -> Option<Arc<Waiter>> {
        let local = self
            .queues
            .get(here)
            .and_then(|q| q.front())
            .map(|w| w.arrived);
        let remote = self
            .queues
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != here)
            .filter_map(|(i, q)| q.front().map(|w| (i, w.arrived)))
            .min_by_key(|(_, arrived)| *arrived);
        let from = match (local, remote) {
            (None, None) => return None,
            (None, Some((r, _))) => r,
            (Some(_), None) => here,
            (Some(l), Some((r, ra))) => {
                let tolerated = OVERTAKE_LIMIT.max(now().duration_since(ra) / OVERTAKE_SHARE);
                if l.duration_since(ra) > tolerated {
                    r
                } else {
                    here
                }
            }
        };
        self.queues[from].pop_front()
    }

    fn enqueue(&mut self, waiter: Arc<Waiter>) {
        let w = waiter.worker;
        if self.queues.len() <= w {
            self.queues.resize_with(w + 1, VecDeque::new);
        }
        self.queues[w].push_back(waiter);
    }

    /// Takes a waiter that gave up out of its queue; false if it was granted.
    fn withdraw(&mut self, waiter: &Arc<Waiter>) -> bool {
        if waiter.granted.load(Ordering::Acquire) {
            return false;
        }
        let q = &mut self.queues[waiter.worker];
        if let Some(i) = q.iter().position(|w| Arc::ptr_eq(w, waiter)) {
            q.remove(i);
        }
        true
    }
}

pub struct Acquire {
    gate: Arc<Gate>,
    waiter: Option<Arc<Waiter>>,
    done: bool,
    can_follow: bool,
}

impl Future for Acquire {
    type Output = Grant;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Grant> {
        let this = &mut *self;
        match &this.waiter {
            None => {
                let mut st = this.gate.state.lock();
                if st.free > 0 {
                    st.free -= 1;
                    drop(st);
                    this.done = true;
                    return Poll::Ready(Grant::Permit(Permit {
                        gate: this.gate.clone(),
                    }));
                }
                let waiter = Arc::new(Waiter {
                    worker: crate::workers::current(),
                    arrived: Instant::now(),
                    can_follow: this.can_follow,
                    granted: AtomicBool::new(false),
                    follow: Mutex::new(None),
                    waker: Mutex::new(Some(cx.waker().clone())),
                });
                if this.can_follow {
                    this.gate.followers.fetch_add(1, Ordering::Relaxed);
                }
                st.enqueue(waiter.clone());
                drop(st);
                this.waiter = Some(waiter);
                Poll::Pending
            }
            Some(waiter) => {
                if !waiter.granted.load(Ordering::Acquire) {
                    let mut slot = waiter.waker.lock();
                    match &*slot {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        _ => *slot = Some(cx.waker().clone()),
                    }
                    drop(slot);
                    // A grant between the first check and storing the waker found
                    // no waker (or the old one): look again.
                    if !waiter.granted.load(Ordering::Acquire) {
                        return Poll::Pending;
                    }
                }
                this.done = true;
                if let Some(baton) = waiter.follow.lock().take() {
                    return Poll::Ready(Grant::Follow(baton));
                }
                Poll::Ready(Grant::Permit(Permit {
                    gate: this.gate.clone(),
                }))
            }
        }
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some(waiter) = self.waiter.take() {
            let withdrawn = self.gate.state.lock().withdraw(&waiter);
            if withdrawn {
                if waiter.can_follow {
                    self.gate.followers.fetch_sub(1, Ordering::Relaxed);
                }
            } else if let Some(baton) = waiter.follow.lock().take() {
                baton.give_up();
            } else {
                // Granted, never taken: it goes to the next waiter.
                self.gate.release();
            }
        }
    }
}

#[cfg(test)]
mod tests;
