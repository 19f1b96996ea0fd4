//! Query cancellation (CONTRACT.md sections 3 and 4): a CancelRequest, or SQL
//! `pg_cancel_backend`/`pg_terminate_backend` with the process id a client got from
//! pgmux, reaches that client's statement only — never another client's, never a
//! later statement on the same server connection — and gets through when the pool
//! is full or the client still waits for a server connection.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use support::cancel::*;
use support::wire::{self, RawClient};
use support::*;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

/// How long a test waits for something pgmux does in the background.
const PATIENCE: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------ cancel

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_clients_running_statement_with_57014() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", ""));
    let client = connect(&px.url(APP_USER, APP_PASSWORD, APP_DB)).await;
    let token = client.cancel_token();

    let sleeper = tokio::spawn(async move {
        let r = client
            .simple_query("select pg_sleep(30) /* pools_cancel_running */")
            .await;
        (client, r)
    });
    wait_until_running_async("pools_cancel_running").await;
    token.cancel_query(NoTls).await.unwrap();

    let (client, r) = sleeper.await.unwrap();
    let err = r.expect_err("the statement was cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
    let row = client.query_one("select 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1, "the client goes on after a cancel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_gets_through_when_the_pool_is_full_and_clients_wait() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(
        pg,
        "auth_method = \"trust\"",
        "pool_size = 1",
    ));
    let client = connect(&px.url(APP_USER, APP_PASSWORD, APP_DB)).await;
    let (token, sleeper) = start_long_sleep(client, "pools_cancel_full").await;

    // A second client waits for the only server connection.
    let port = px.port;
    let (mut waiter, waiter_port) = tokio::task::spawn_blocking(move || {
        let mut w = RawClient::login_trust(port, APP_USER, APP_DB);
        w.send_query("select 2");
        let p = w.local_port();
        (w, p)
    })
    .await
    .unwrap();
    let queued = poll_until(PATIENCE, || {
        wire::unread_bytes(px.port, waiter_port) == Some(0)
    });
    assert!(queued, "the waiter's query did not reach pgmux");

    cancel_long_sleep(token, sleeper).await;

    let rows = tokio::task::spawn_blocking(move || waiter.read_result())
        .await
        .unwrap();
    assert_eq!(rows, Ok(vec!["2".to_owned()]), "the waiter is served next");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_for_an_idle_client_changes_nothing() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", "pool_size = 1"));
    let url = px.url(APP_USER, APP_PASSWORD, APP_DB);
    let idle = connect(&url).await;
    let busy = connect(&url).await;

    let sleeper = tokio::spawn(async move {
        busy.simple_query("select pg_sleep(1) /* pools_cancel_idle */")
            .await
    });
    wait_until_running_async("pools_cancel_idle").await;
    idle.cancel_token().cancel_query(NoTls).await.unwrap();

    sleeper
        .await
        .unwrap()
        .expect("another client's statement must not be cancelled");
    let row = idle.query_one("select 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1, "the idle client's next query runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_never_hits_a_later_clients_statement_on_the_same_server_connection() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", "pool_size = 1"));
    let url = px.url(APP_USER, APP_PASSWORD, APP_DB);
    let early = connect(&url).await;
    let later = connect(&url).await;

    let early_backend: i32 = early
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let sleeper = tokio::spawn(async move {
        later
            .simple_query("select pg_sleep(1) /* pools_cancel_later */")
            .await
    });
    let later_backend = wait_until_running_async("pools_cancel_later").await;
    assert_eq!(
        later_backend, early_backend,
        "with pool_size = 1 both clients use the same server connection"
    );

    early.cancel_token().cancel_query(NoTls).await.unwrap();
    sleeper
        .await
        .unwrap()
        .expect("the later client's statement must not be cancelled");
}

/// `pg_cancel_backend()` and `pg_terminate_backend()` given the process id a client
/// got from pgmux reach that client, as they would reach its backend without pgmux:
/// from the simple and the extended protocol, in both pool modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_cancel_backend_with_a_clients_process_id_cancels_its_statement() {
    for mode in ["transaction", "session"] {
        let px = start_pgmux(&pgmux_config(
            shared_primary(),
            "auth_method = \"trust\"",
            &format!("pool_size = 3\npool_mode = \"{mode}\""),
        ));
        let port = px.port;
        let marker: &'static str = if mode == "session" {
            "pools_sql_cancel_session"
        } else {
            "pools_sql_cancel_transaction"
        };
        let mut victim = tokio::task::spawn_blocking(move || {
            let mut v = RawClient::login_trust(port, APP_USER, APP_DB);
            v.send_query(&format!("select pg_sleep(30) /* {marker} */"));
            v
        })
        .await
        .unwrap();
        wait_until_running_async(marker).await;

        // Extended protocol, the id as a binary int4 parameter.
        let caller = connect(&px.url(APP_USER, APP_PASSWORD, APP_DB)).await;
        let row = caller
            .query_one("select pg_cancel_backend($1)", &[&victim.pid])
            .await
            .unwrap();
        assert!(
            row.get::<_, bool>(0),
            "{mode} mode: the call reports success"
        );
        let (mut victim, result) = tokio::task::spawn_blocking(move || {
            let r = victim.read_result();
            (victim, r)
        })
        .await
        .unwrap();
        assert_eq!(
            result,
            Err("57014".to_owned()),
            "{mode} mode: the statement was cancelled"
        );

        // Simple protocol, the id as a literal: true, and no warning that no such
        // backend exists. The victim is idle now: nothing to cancel, nothing breaks,
        // not even the statement it sends next (one that lasts long enough for a
        // cancel still on its way to reach it).
        let victim_pid = victim.pid;
        let (replies, victim_after) = tokio::task::spawn_blocking(move || {
            let mut c = RawClient::login_trust(port, APP_USER, APP_DB);
            c.send_query(&format!("select pg_cancel_backend({victim_pid})"));
            let replies = c.read_until_ready();
            (replies, victim.query("select 7 from pg_sleep(0.5)"))
        })
        .await
        .unwrap();
        let rows: Vec<String> = replies
            .iter()
            .filter(|m| m.tag == b'D')
            .map(|m| m.first_column())
            .collect();
        assert_eq!(rows, ["t"], "{mode} mode: {replies:?}");
        assert!(
            !replies.iter().any(|m| m.tag == b'N'),
            "{mode} mode: a warning reached the caller: {replies:?}"
        );
        assert_eq!(
            victim_after,
            Ok(vec!["7".to_owned()]),
            "{mode} mode: the victim goes on"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_terminate_backend_with_a_clients_process_id_ends_that_client_alone() {
    for mode in ["transaction", "session"] {
        let px = start_pgmux(&pgmux_config(
            shared_primary(),
            "auth_method = \"trust\"",
            &format!("pool_size = 2\npool_mode = \"{mode}\""),
        ));
        let port = px.port;
        let marker: &'static str = if mode == "session" {
            "pools_terminated_session"
        } else {
            "pools_terminated_transaction"
        };
        // A client inside a transaction, holding a server connection.
        let mut victim = tokio::task::spawn_blocking(move || {
            let mut v = RawClient::login_trust(port, APP_USER, APP_DB);
            v.query("begin").unwrap();
            v.query(&format!("select 1 /* {marker} */")).unwrap();
            v
        })
        .await
        .unwrap();

        // A client of another user may not end it: the server's answer stands.
        let victim_pid = victim.pid;
        let (refused, still_there) = tokio::task::spawn_blocking(move || {
            let mut other = RawClient::login_trust(port, MD5_USER, APP_DB);
            other.send_query(&format!("select pg_terminate_backend({victim_pid})"));
            let refused = other.read_until_ready();
            (refused, victim.query("select 1").map(|_| victim))
        })
        .await
        .unwrap();
        let answer: Vec<String> = refused
            .iter()
            .filter(|m| m.tag == b'D')
            .map(|m| m.first_column())
            .collect();
        assert_eq!(answer, ["f"], "{mode} mode: another user's call");
        let mut victim = still_there.expect("the victim is untouched");

        // The same user may, from the extended protocol.
        let caller = connect(&px.url(APP_USER, APP_PASSWORD, APP_DB)).await;
        let caller = tokio::spawn(async move {
            let row = caller
                .query_one("select pg_terminate_backend($1::int)", &[&victim_pid])
                .await;
            (caller, row)
        });
        let fatal = tokio::task::spawn_blocking(move || {
            let m = wire::read_message(&mut victim.stream).expect("the victim hears why");
            let eof = victim.stream.read(&mut [0u8; 1]).map_or(true, |n| n == 0);
            (m, eof)
        })
        .await
        .unwrap();
        assert_eq!(fatal.0.tag, b'E', "{mode} mode");
        assert_eq!(fatal.0.sqlstate().as_deref(), Some("57P01"), "{mode} mode");
        assert!(fatal.1, "{mode} mode: the victim's connection is closed");
        let (_caller, row) = caller.await.unwrap();
        assert!(
            row.unwrap().get::<_, bool>(0),
            "{mode} mode: the call reports success"
        );
        // Its transaction was rolled back, not left open on the server.
        let closed = poll_until(PATIENCE, || {
            shared_primary()
                .sql(
                    "postgres",
                    &format!(
                        "select count(*) from pg_stat_activity where query like '%{marker}%' \
                         and state like 'idle in transaction%' and pid <> pg_backend_pid()"
                    ),
                )
                .trim()
                == "0"
        });
        assert!(closed, "{mode} mode: the victim's transaction stayed open");

        // A client that names itself gets FATAL instead of the result, as a backend
        // that terminates itself does.
        let replies = tokio::task::spawn_blocking(move || {
            let mut own = RawClient::login_trust(port, APP_USER, APP_DB);
            own.send_query(&format!("select pg_terminate_backend({})", own.pid));
            let mut replies = Vec::new();
            while let Ok(m) = wire::read_message(&mut own.stream) {
                replies.push(m);
            }
            replies
        })
        .await
        .unwrap();
        let tags: Vec<char> = replies.iter().map(|m| m.tag as char).collect();
        assert_eq!(
            replies.last().map(|m| (m.tag, m.sqlstate())),
            Some((b'E', Some("57P01".to_owned()))),
            "{mode} mode: {tags:?}"
        );
        assert!(
            !tags.contains(&'D') && !tags.contains(&'Z'),
            "{mode} mode: {tags:?}"
        );
    }
}

#[test]
fn a_cancel_request_with_a_made_up_key_changes_nothing() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "auth_method = \"trust\"", ""));
    let mut busy = RawClient::login_trust(px.port, APP_USER, APP_DB);
    busy.send_query("select pg_sleep(1) /* pools_cancel_made_up */");
    wait_until_running("pools_cancel_made_up");

    let (pid, secret) = random_key();
    send_raw_cancel(&px, &wire::cancel_request(pid, secret));
    // The right client, the wrong secret.
    send_raw_cancel(&px, &wire::cancel_request(busy.pid, busy.secret ^ 0x5a5a));

    let replies = busy.read_until_ready();
    assert!(
        replies.iter().all(|m| m.tag != b'E'),
        "the statement must not be cancelled: {:?}",
        replies.iter().find_map(|m| m.sqlstate())
    );
    assert!(px.accepts_tcp(), "pgmux stays up");
    assert_eq!(busy.query("select 7"), Ok(vec!["7".to_owned()]));
}

#[test]
fn a_cancel_request_cut_short_or_closed_at_once_changes_nothing() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "auth_method = \"trust\"", ""));
    let mut busy = RawClient::login_trust(px.port, APP_USER, APP_DB);
    busy.send_query("select pg_sleep(1) /* pools_cancel_cut */");
    wait_until_running("pools_cancel_cut");

    // Half of a CancelRequest for the busy client's real key, then goodbye.
    let mut tcp = wire::tcp(px.port);
    tcp.write_all(&wire::cancel_request(busy.pid, busy.secret)[..10])
        .unwrap();
    drop(tcp);
    // A whole made-up one, closed before pgmux can answer anything.
    let (pid, secret) = random_key();
    let mut tcp = wire::tcp(px.port);
    tcp.write_all(&wire::cancel_request(pid, secret)).unwrap();
    drop(tcp);

    let replies = busy.read_until_ready();
    assert!(
        replies.iter().all(|m| m.tag != b'E'),
        "the statement must not be cancelled: {:?}",
        replies.iter().find_map(|m| m.sqlstate())
    );
    let mut fresh = RawClient::login_trust(px.port, APP_USER, APP_DB);
    assert_eq!(fresh.query("select 8"), Ok(vec!["8".to_owned()]));
}

#[tokio::test]
async fn a_cancel_while_queued_for_a_server_abandons_the_wait_and_the_statement_never_runs() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(
        pg,
        "auth_method = \"trust\"\nquery_wait_timeout = \"60s\"",
        "pool_size = 1",
    ));
    let holder = connect(&px.url(APP_USER, APP_PASSWORD, APP_DB)).await;
    holder.batch_execute("begin; select 1").await.unwrap();

    // A second client queues for the only server connection.
    let port = px.port;
    let (mut waiter, waiter_port) = tokio::task::spawn_blocking(move || {
        let mut w = RawClient::login_trust(port, APP_USER, APP_DB);
        w.send_query("select 1 / 0 /* must never run */");
        let p = w.local_port();
        (w, p)
    })
    .await
    .unwrap();
    let queued = poll_until(PATIENCE, || {
        wire::unread_bytes(px.port, waiter_port) == Some(0)
    });
    assert!(queued, "the waiter's query did not reach pgmux");

    let (pid, secret) = (waiter.pid, waiter.secret);
    let result = tokio::task::spawn_blocking(move || {
        // pgmux has read the query, but its session may not have joined the queue
        // yet, and a cancel before that finds nothing to cancel (as one that reaches
        // an idle Postgres backend): cancel again until the waiter hears back.
        let deadline = std::time::Instant::now() + PATIENCE;
        let between = Duration::from_millis(200);
        waiter.stream.set_read_timeout(Some(between)).unwrap();
        loop {
            let mut c = wire::tcp(port);
            c.write_all(&wire::cancel_request(pid, secret)).unwrap();
            drop(c);
            if waiter.stream.peek(&mut [0u8]).is_ok_and(|n| n > 0)
                || std::time::Instant::now() > deadline
            {
                break;
            }
        }
        waiter.stream.set_read_timeout(Some(PATIENCE)).unwrap();
        waiter.read_result().map(|rows| (rows, waiter))
    })
    .await
    .unwrap();
    assert_eq!(
        result.err().as_deref(),
        Some("57014"),
        "the queued statement is cancelled before the holder lets go"
    );
    holder.batch_execute("commit").await.unwrap();
}
