use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;

use super::*;
use crate::config::{ServerAddr, UpstreamTlsMode};
use crate::pool::{Pool, PoolKey, PoolSettings, Role, ShardId};
use crate::server::{ConnectOptions, ServerConn, ServerCredential};
use crate::tls::MaybeTls;

/// A pool of one connection, checked out over one end of a socket pair.
fn checked_out() -> (Arc<Pool>, Checkout, tokio::net::UnixStream) {
    let addr = Arc::new(ServerAddr {
        host: "127.0.0.1".into(),
        port: 1,
        dbname: "d".into(),
    });
    let pool = Pool::new(
        PoolKey {
            database: "d".into(),
            user: "u".into(),
            shard: ShardId(0),
            role: Role::Primary,
            server: addr.clone(),
        },
        PoolSettings {
            size: 1,
            min_size: 0,
            idle_timeout: Duration::from_secs(60),
            lifetime: Duration::from_secs(60),
            max_prepared: 4,
        },
        ConnectOptions {
            addr: addr.clone(),
            user: "u".into(),
            credential: ServerCredential::None,
            tls: None,
            tls_mode: UpstreamTlsMode::Disable,
            connect_timeout: Duration::from_secs(1),
        },
        Arc::default(),
    );
    let (ours, theirs) = tokio::net::UnixStream::pair().expect("a socket pair");
    let conn = Box::new(ServerConn::for_test(MaybeTls::Unix(ours), addr));
    let permit = pool.permits.try_acquire().expect("a free permit");
    let co = pool.lend(conn, permit);
    (pool, co, theirs)
}

fn ready(baton: &Baton) -> bool {
    baton
        .poll_ready(&mut Context::from_waker(Waker::noop()))
        .is_ready()
}

fn bytes(b: &[u8]) -> BytesMut {
    BytesMut::from(b)
}

#[tokio::test]
async fn a_follower_reads_only_once_the_leader_passes_and_gets_what_came_after() {
    let (_pool, co, _peer) = checked_out();
    let baton = Baton::new(co);
    let Joined::Following(_co) = baton.join() else {
        panic!("the leader's unit still runs: the follower follows");
    };
    assert!(!ready(&baton), "nothing is the follower's before the pass");
    assert!(matches!(baton.pass(bytes(b"after"), false), Back::Taken));
    assert!(ready(&baton));
    let passed = baton.take_passed();
    assert_eq!(&passed.leftover[..], b"after");
    assert!(!passed.broken && !passed.closing);
}

#[tokio::test]
async fn a_follower_that_comes_after_the_pass_takes_the_connection_free() {
    let (_pool, co, _peer) = checked_out();
    let baton = Baton::new(co);
    assert!(matches!(baton.pass(BytesMut::new(), false), Back::Taken));
    assert!(matches!(baton.join(), Joined::Free(_, _)));
}

#[tokio::test]
async fn a_follower_that_gives_up_before_joining_leaves_the_connection_to_release() {
    let (pool, co, _peer) = checked_out();
    let baton = Baton::new(co);
    baton.give_up();
    match baton.pass(BytesMut::new(), false) {
        Back::Release(co) => co.release(),
        _ => panic!("nobody sent on it: it goes back to the pool"),
    }
    assert_eq!(pool.stats().idle, 1);
}

#[tokio::test]
async fn a_follower_that_gives_up_after_the_pass_releases_the_connection_itself() {
    let (pool, co, _peer) = checked_out();
    let baton = Baton::new(co);
    assert!(matches!(baton.pass(BytesMut::new(), false), Back::Taken));
    baton.give_up();
    assert_eq!(pool.stats().idle, 1, "released, not leaked");
    assert_eq!(pool.stats().active, 0);
}

#[tokio::test]
async fn a_follower_that_leaves_after_sending_makes_the_leader_close_the_connection() {
    let (pool, co, _peer) = checked_out();
    let baton = Baton::new(co);
    let Joined::Following(co) = baton.join() else {
        panic!("following");
    };
    baton.abandon(co);
    assert!(
        matches!(baton.pass(BytesMut::new(), false), Back::Close(_)),
        "the follower's replies would be read by nobody"
    );
    assert_eq!(pool.stats().idle, 0);
}

#[tokio::test]
async fn a_lost_leader_fails_the_follower_and_turns_away_a_late_one() {
    let (_pool, co, _peer) = checked_out();
    let following = Baton::new(co);
    let Joined::Following(_co) = following.join() else {
        panic!("following");
    };
    following.break_off(false);
    assert!(ready(&following));
    let passed = following.take_passed();
    assert!(passed.broken && !passed.unstarted);

    let (_pool, co, _peer) = checked_out();
    let late = Baton::new(co);
    late.break_off(false);
    assert!(matches!(late.join(), Joined::Lost));
}

#[tokio::test]
async fn a_leader_ended_by_the_servers_fatal_tells_the_follower_nothing_of_its_ran() {
    let (_pool, co, _peer) = checked_out();
    let following = Baton::new(co);
    let Joined::Following(_co) = following.join() else {
        panic!("following");
    };
    following.break_off(true);
    assert!(ready(&following));
    let passed = following.take_passed();
    assert!(passed.broken && passed.unstarted);
}

#[tokio::test]
async fn a_connection_the_server_closes_is_never_handed_on_free() {
    let (_pool, co, _peer) = checked_out();
    let baton = Baton::new(co);
    assert!(matches!(baton.pass(BytesMut::new(), true), Back::Close(_)));
    assert!(matches!(baton.join(), Joined::Lost));
}

#[tokio::test]
async fn an_offer_goes_to_a_waiter_that_may_follow_and_to_no_other() {
    let (pool, co, _peer) = checked_out();
    // The pool's one permit is held by `co`: a second client queues.
    let mut plain = Box::pin(pool.permits.acquire_or_follow(false));
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);
    assert!(plain.as_mut().poll(&mut cx).is_pending());
    assert!(!pool.has_followers());
    let co = match pool.offer(co) {
        Err(co) => co,
        Ok(_) => panic!("a waiter that may not follow was handed a busy connection"),
    };
    drop(plain);

    let mut follower = Box::pin(pool.permits.acquire_or_follow(true));
    assert!(follower.as_mut().poll(&mut cx).is_pending());
    assert!(pool.has_followers());
    let baton = match pool.offer(co) {
        Ok(b) => b,
        Err(_) => panic!("the waiter may follow"),
    };
    assert!(!pool.has_followers());
    match follower.as_mut().poll(&mut cx) {
        Poll::Ready(crate::pool::gate::Grant::Follow(b)) => assert!(Arc::ptr_eq(&b, &baton)),
        _ => panic!("the waiter is handed the baton"),
    }
}

#[tokio::test]
async fn a_published_connection_nobody_took_comes_back_to_its_leader() {
    let (pool, co, _peer) = checked_out();
    let baton = pool.publish(co);
    assert!(pool.unpublish(&baton));
    assert!(baton.take_back().is_some());

    let (pool, co, _peer) = checked_out();
    let baton = pool.publish(co);
    let taken = pool.take_offer().expect("a fresh offer is taken");
    assert!(Arc::ptr_eq(&taken, &baton));
    assert!(
        !pool.unpublish(&baton),
        "taken: the leader passes it on instead"
    );
    assert!(pool.take_offer().is_none());
}

#[tokio::test]
async fn a_client_takes_only_what_its_own_worker_published() {
    let (pool, co, _peer) = checked_out();
    let baton = pool.publish(co);
    let other = pool.clone();
    let taken = std::thread::spawn(move || {
        crate::workers::pretend(1);
        other.take_offer().is_some()
    })
    .join()
    .unwrap();
    assert!(!taken, "an offer of worker 0 is not for worker 1");
    let taken = pool.take_offer().expect("worker 0 takes its own");
    assert!(Arc::ptr_eq(&taken, &baton));
}
