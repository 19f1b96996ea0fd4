use std::task::Waker;

use super::*;

fn poll(a: &mut Acquire) -> Option<Permit> {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(a).poll(&mut cx) {
        Poll::Ready(Grant::Permit(p)) => Some(p),
        Poll::Ready(Grant::Follow(_)) => {
            panic!("a waiter that may not follow was handed a connection")
        }
        Poll::Pending => None,
    }
}

fn no_free_permits() -> State {
    State {
        free: 0,
        owed: 0,
        queues: Vec::new(),
    }
}

fn waiter(worker: usize, arrived: Instant) -> Arc<Waiter> {
    Arc::new(Waiter {
        worker,
        arrived,
        can_follow: false,
        granted: AtomicBool::new(false),
        follow: Mutex::new(None),
        waker: Mutex::new(None),
    })
}

/// A gate of one permit, held, and two waiters queued behind it (a first).
fn one_held_two_queued() -> (Arc<Gate>, Permit, Acquire, Acquire) {
    let gate = Gate::new(1);
    let held = gate.try_acquire().expect("one free permit");
    let mut a = gate.acquire();
    let mut b = gate.acquire();
    assert!(poll(&mut a).is_none());
    assert!(poll(&mut b).is_none());
    (gate, held, a, b)
}

#[test]
fn waiters_are_served_in_arrival_order() {
    let (gate, held, mut a, mut b) = one_held_two_queued();
    assert!(gate.try_acquire().is_none());
    assert_eq!(gate.waiting(), 2);
    drop(held);
    assert!(
        poll(&mut b).is_none(),
        "the second waiter must not overtake"
    );
    let pa = poll(&mut a).expect("the first waiter is served");
    drop(pa);
    assert!(poll(&mut b).is_some());
    assert_eq!(gate.waiting(), 0);
}

#[test]
fn a_waiter_that_gives_up_leaves_the_queue() {
    let (gate, held, a, mut b) = one_held_two_queued();
    drop(a);
    assert_eq!(gate.waiting(), 1);
    drop(held);
    assert!(poll(&mut b).is_some());
}

#[test]
fn a_permit_granted_and_not_taken_passes_on() {
    let (gate, held, a, mut b) = one_held_two_queued();
    drop(held);
    // `a` was granted the permit but is dropped (a timeout firing at that moment).
    drop(a);
    let pb = poll(&mut b).expect("the permit went on to b");
    drop(pb);
    assert!(gate.try_acquire().is_some(), "and came back free");
}

#[test]
fn the_releasing_workers_waiter_goes_first_within_the_limit() {
    let t0 = Instant::now();
    let mut st = no_free_permits();
    st.enqueue(waiter(1, t0));
    st.enqueue(waiter(0, t0 + OVERTAKE_LIMIT / 2));
    let now = t0 + OVERTAKE_LIMIT;
    let w = st.next_waiter(0, || now).unwrap();
    assert_eq!(w.worker, 0, "a local waiter within the limit goes first");
    let w = st.next_waiter(0, || now).unwrap();
    assert_eq!(w.worker, 1, "with no local waiter, a remote one is served");
    assert!(st.next_waiter(0, || now).is_none());
}

#[test]
fn no_waiter_is_overtaken_by_more_than_the_limit() {
    let t0 = Instant::now();
    let mut st = no_free_permits();
    st.enqueue(waiter(1, t0));
    st.enqueue(waiter(2, t0 + Duration::from_micros(10)));
    st.enqueue(waiter(0, t0 + OVERTAKE_LIMIT * 3));
    let now = t0 + OVERTAKE_LIMIT * 4;
    assert_eq!(st.next_waiter(0, || now).unwrap().worker, 1);
    assert_eq!(st.next_waiter(0, || now).unwrap().worker, 2);
    assert_eq!(st.next_waiter(0, || now).unwrap().worker, 0);
}

#[test]
fn the_limit_grows_with_the_wait() {
    let t0 = Instant::now();
    let mut st = no_free_permits();
    // The remote waiter has waited 40 ms; the local one arrived 15 ms after it:
    // within half that wait, so the local one goes first.
    st.enqueue(waiter(1, t0));
    st.enqueue(waiter(0, t0 + Duration::from_millis(15)));
    let now = t0 + Duration::from_millis(40);
    assert_eq!(st.next_waiter(0, || now).unwrap().worker, 0);
    // 25 ms after it is more than half: the remote one goes first.
    st.enqueue(waiter(0, t0 + Duration::from_millis(25)));
    assert_eq!(st.next_waiter(0, || now).unwrap().worker, 1);
}

#[test]
fn shrinking_takes_free_permits_then_returned_ones() {
    let gate = Gate::new(2);
    let p = gate.try_acquire().unwrap();
    gate.shrink(2);
    assert!(gate.try_acquire().is_none());
    drop(p);
    assert!(
        gate.try_acquire().is_none(),
        "the returned permit is swallowed"
    );
    gate.grow(1);
    let q = gate.try_acquire().expect("grown by one");
    assert!(gate.try_acquire().is_none());
    drop(q);
}

#[test]
fn growing_cancels_what_a_shrink_still_owes() {
    let gate = Gate::new(1);
    let p = gate.try_acquire().unwrap();
    gate.shrink(1);
    gate.grow(1);
    drop(p);
    assert!(gate.try_acquire().is_some());
}

#[tokio::test]
async fn a_waiter_is_woken_when_a_permit_returns() {
    let gate = Gate::new(1);
    let held = gate.try_acquire().unwrap();
    let g = gate.clone();
    let task = tokio::spawn(async move {
        let _p = g.acquire().await;
    });
    while gate.waiting() == 0 {
        tokio::task::yield_now().await;
    }
    drop(held);
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("woken within 30 s")
        .unwrap();
    assert!(gate.try_acquire().is_some());
}
