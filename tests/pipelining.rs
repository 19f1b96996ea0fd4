//! `server_pipelining`: a client that finds no server connection free sends its
//! statement behind another client's on a busy one. Each client still gets exactly its
//! own replies, a cancel still reaches only the statement of the client that sent it,
//! and a client leaving on either side disturbs nobody.
//!
//! The tests park one client in a transaction on the only server connection, queue the
//! clients under test behind it, then let it go: the first in line gets the connection
//! and hands it on to the next while its own statement runs.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use support::cancel::{send_raw_cancel, wait_until_running};
use support::link::Link;
use support::wire::{self, RawClient};
use support::*;

/// How long a test waits for something pgmux does in the background.
const PATIENCE: Duration = Duration::from_secs(30);

/// pgmux with one server connection, handing it on while busy, whatever statement
/// runs on it (the tests make long statements to see what happens meanwhile). One
/// worker, so that clients queue strictly in arrival order.
fn one_connection(proxy_keys: &str) -> Pgmux {
    let cfg = pgmux_config(
        shared_primary(),
        &format!("{ANY_STATEMENT}\n{proxy_keys}"),
        "pool_size = 1",
    );
    start_pgmux(&with_workers(&cfg, 1))
}

/// `[proxy]` keys: trust, and pipelining behind statements of any duration.
const ANY_STATEMENT: &str = "auth_method = \"trust\"
server_pipelining = true
server_pipelining_threshold = \"0s\"";

/// A client in a transaction on the only server connection, so the next ones queue.
fn holder(px: &Pgmux) -> RawClient {
    let mut c = RawClient::login_trust(px.port, APP_USER, APP_DB);
    assert_eq!(c.query("begin"), Ok(vec![]));
    assert_eq!(c.query("select 1"), Ok(vec!["1".to_owned()]));
    c
}

/// A client that has sent `sql`, once pgmux has read it (and so queued the client).
fn queued(px: &Pgmux, sql: &str) -> RawClient {
    let mut c = RawClient::login_trust(px.port, APP_USER, APP_DB);
    c.send_query(sql);
    let port = c.local_port();
    let read = poll_until(PATIENCE, || wire::unread_bytes(px.port, port) == Some(0));
    assert!(read, "pgmux did not read {sql:?}");
    c
}

/// [`queued`], with `sql` sent as an extended-protocol unit when `extended`.
fn queued_unit(px: &Pgmux, sql: &str, extended: bool) -> RawClient {
    if !extended {
        return queued(px, sql);
    }
    let mut c = RawClient::login_trust(px.port, APP_USER, APP_DB);
    c.send_extended(sql);
    let port = c.local_port();
    let read = poll_until(PATIENCE, || wire::unread_bytes(px.port, port) == Some(0));
    assert!(read, "pgmux did not read {sql:?}");
    c
}

fn release(mut holder: RawClient) -> RawClient {
    assert_eq!(holder.query("commit"), Ok(vec![]));
    holder
}

#[test]
fn a_client_waiting_for_a_busy_connection_runs_behind_it_instead_of_timing_out() {
    // Each statement takes longer than a client may wait for a connection: without the
    // hand-over, the second in line would get 53300.
    let px = one_connection("query_wait_timeout = \"2s\"");
    let x = holder(&px);
    let mut a = queued(&px, "select 'a' from pg_sleep(3)");
    let mut b = queued(&px, "select 'b' from pg_sleep(3)");
    let _x = release(x);
    assert_eq!(a.read_result(), Ok(vec!["a".to_owned()]));
    assert_eq!(b.read_result(), Ok(vec!["b".to_owned()]));
    // Both stay usable, each with its own replies.
    assert_eq!(b.query("select 'b2'"), Ok(vec!["b2".to_owned()]));
    assert_eq!(a.query("select 'a2'"), Ok(vec!["a2".to_owned()]));
}

#[test]
fn a_cancel_from_a_client_behind_another_reaches_only_its_own_statement() {
    let px = one_connection("");
    let x = holder(&px);
    let mut a = queued(&px, "select 'a' from pg_sleep(2) /* pipelining_cancel_a */");
    let mut b = queued(
        &px,
        "select 'b' from pg_sleep(60) /* pipelining_cancel_b */",
    );
    let _x = release(x);
    wait_until_running("pipelining_cancel_a");
    // b's statement waits behind a's on the server: the cancel is kept for it, and
    // must not stop a's.
    send_raw_cancel(&px, &wire::cancel_request(b.pid, b.secret));
    assert_eq!(a.read_result(), Ok(vec!["a".to_owned()]));
    assert_eq!(b.read_result(), Err("57014".to_owned()));
    assert_eq!(b.query("select 'b2'"), Ok(vec!["b2".to_owned()]));
}

#[test]
fn a_cancel_of_a_client_with_another_behind_it_leaves_that_one_alone() {
    let px = one_connection("");
    let x = holder(&px);
    let mut a = queued(
        &px,
        "select 'a' from pg_sleep(60) /* pipelining_cancel_leader */",
    );
    let mut b = queued(&px, "select 'b'");
    let _x = release(x);
    wait_until_running("pipelining_cancel_leader");
    send_raw_cancel(&px, &wire::cancel_request(a.pid, a.secret));
    assert_eq!(a.read_result(), Err("57014".to_owned()));
    assert_eq!(b.read_result(), Ok(vec!["b".to_owned()]));
    assert_eq!(a.query("select 'a2'"), Ok(vec!["a2".to_owned()]));
}

/// pgmux with one server connection, reached through `link`.
fn one_connection_through(link: &Link) -> Pgmux {
    let pg = shared_primary();
    let cfg = pgmux_config(pg, ANY_STATEMENT, "pool_size = 1").replace(
        &pg.addr(APP_DB),
        &format!("127.0.0.1:{}/{APP_DB}", link.port),
    );
    start_pgmux(&with_workers(&cfg, 1))
}

#[test]
fn a_cancel_that_lands_after_its_statement_ended_does_not_stop_the_one_behind_it() {
    // Postgres has finished a's statement and started b's, sent behind it, while a's
    // reply is still on its way to pgmux: a cancel from a, which pgmux still counts as
    // running, reaches b's statement on the server. b never asked for it: pgmux runs
    // it again, and its change is made once. Through both protocols: the extended
    // one's first replies (ParseComplete, BindComplete, NoData) come before the error.
    let pg = shared_primary();
    let link = Link::to(pg.port);
    let px = one_connection_through(&link);
    for (id, extended) in [(7001, false), (7002, true)] {
        pg.sql(APP_DB, &format!("delete from t where id = {id}"));
        let x = holder(&px);
        let marker_a = format!("pipelining_late_cancel_a{id}");
        let mut a = queued(
            &px,
            &format!("select 'a' from pg_sleep(2) /* {marker_a} */"),
        );
        let marker_b = format!("pipelining_late_cancel_b{id}");
        let insert = format!("insert into t select {id}, 'b' from pg_sleep(2) /* {marker_b} */");
        let mut b = queued_unit(&px, &insert, extended);
        let _x = release(x);
        wait_until_running(&marker_a);
        link.hold();
        wait_until_running(&marker_b);
        send_raw_cancel(&px, &wire::cancel_request(a.pid, a.secret));
        let landed = poll_until(PATIENCE, || {
            std::fs::read_to_string(&pg.log_path).is_ok_and(|log| log.contains(&insert))
        });
        assert!(
            landed,
            "a's cancel did not stop b's statement on the server"
        );
        link.release();
        assert_eq!(a.read_result(), Ok(vec!["a".to_owned()]));
        assert_eq!(b.read_result(), Ok(vec![]), "extended: {extended}");
        assert_eq!(
            b.query(&format!("select count(*) from t where id = {id}")),
            Ok(vec!["1".to_owned()])
        );
        assert_eq!(a.query("select 'a2'"), Ok(vec!["a2".to_owned()]));
    }
}

#[test]
fn a_statement_behind_one_whose_backend_was_terminated_runs_once_on_another_connection() {
    // Postgres ends a terminated backend's session with FATAL and reads nothing more,
    // so what was sent behind the statement it ended never ran: pgmux sends it again
    // on another connection, where it runs once, instead of failing that client too.
    let pg = shared_primary();
    let px = one_connection("");
    for (id, extended) in [(7101, false), (7102, true)] {
        pg.sql(APP_DB, &format!("delete from t where id = {id}"));
        let x = holder(&px);
        let marker = format!("pipelining_terminated_leader{id}");
        let mut a = queued(&px, &format!("select 'a' from pg_sleep(60) /* {marker} */"));
        let insert = format!("insert into t values ({id}, 'b')");
        let mut b = queued_unit(&px, &insert, extended);
        // And c's behind b's.
        let c_id = id + 10;
        pg.sql(APP_DB, &format!("delete from t where id = {c_id}"));
        let mut c = queued(&px, &format!("insert into t values ({c_id}, 'c')"));
        let _x = release(x);
        let pid = wait_until_running(&marker);
        // b's statement went out behind a's the moment a's did (pgmux hands the
        // connection on as it sends), and c's behind b's, long before a's is seen
        // running.
        pg.sql("postgres", &format!("select pg_terminate_backend({pid})"));

        // After its RowDescription, sent before the statement ran.
        let fatal =
            std::iter::repeat_with(|| wire::read_message(&mut a.stream).expect("a hears why"))
                .find(|m| m.tag != b'T')
                .expect("a message");
        assert_eq!(
            (fatal.tag, fatal.sqlstate().as_deref()),
            (b'E', Some("57P01"))
        );
        assert_eq!(b.read_result(), Ok(vec![]), "extended: {extended}");
        assert_eq!(c.read_result(), Ok(vec![]));
        assert_eq!(
            b.query(&format!(
                "select count(*) from t where id in ({id}, {c_id})"
            )),
            Ok(vec!["2".to_owned()])
        );
    }
}

#[test]
fn a_client_that_leaves_while_behind_another_disturbs_nobody() {
    let px = one_connection("");
    let x = holder(&px);
    let mut a = queued(
        &px,
        "select 'a' from pg_sleep(1) /* pipelining_follower_leaves */",
    );
    let b = queued(&px, "select 'b' from pg_sleep(1)");
    let _x = release(x);
    wait_until_running("pipelining_follower_leaves");
    drop(b);
    assert_eq!(a.read_result(), Ok(vec!["a".to_owned()]));
    // The connection that ran b's statement unread is closed, never reused: the
    // next statements get the right replies.
    assert_eq!(a.query("select 'a2'"), Ok(vec!["a2".to_owned()]));
    let mut c = RawClient::login_trust(px.port, APP_USER, APP_DB);
    assert_eq!(c.query("select 'c'"), Ok(vec!["c".to_owned()]));
}

#[test]
fn a_client_that_leaves_with_another_behind_it_still_lets_that_one_run() {
    let px = one_connection("");
    let x = holder(&px);
    let a = queued(
        &px,
        "select 'a' from pg_sleep(1) /* pipelining_leader_leaves */",
    );
    let mut b = queued(&px, "select 'b'");
    let _x = release(x);
    wait_until_running("pipelining_leader_leaves");
    drop(a);
    assert_eq!(b.read_result(), Ok(vec!["b".to_owned()]));
    assert_eq!(b.query("select 'b2'"), Ok(vec!["b2".to_owned()]));
    let mut c = RawClient::login_trust(px.port, APP_USER, APP_DB);
    assert_eq!(c.query("select 'c'"), Ok(vec!["c".to_owned()]));
}

#[test]
fn statements_that_leave_state_are_not_handed_on_mid_flight() {
    // A transaction block, a SET, and a multi-statement Query hold the connection
    // until they are done, as without the hand-over; the client behind each sees none
    // of it.
    let px = one_connection("");
    for (first, then) in [
        ("begin", "commit"),
        (
            "set application_name = 'pipelining_set'",
            "show application_name",
        ),
        ("select 1; select pg_sleep(0.5)", "select 2"),
    ] {
        let x = holder(&px);
        let mut a = queued(&px, first);
        let mut b = queued(&px, "show application_name");
        let _x = release(x);
        assert!(a.read_result().is_ok(), "{first}");
        assert!(a.query(then).is_ok(), "{then}");
        drop(a);
        let seen = b.read_result().expect("b's statement");
        assert_ne!(
            seen,
            vec!["pipelining_set".to_owned()],
            "a's SET leaked to b"
        );
    }
}

/// The value of `pgmux_pipelined_total` for database `app` at `metrics_port`.
fn pipelined_total(metrics_port: u16) -> u64 {
    let mut s = wire::tcp(metrics_port);
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send the request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read /metrics");
    body.lines()
        .find(|l| l.starts_with("pgmux_pipelined_total{database=\"app\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_on_two_busy_connections_each_get_their_own_results() {
    let metrics_port = support::process::free_port();
    let cfg = pgmux_config(
        shared_primary(),
        &format!("server_pipelining = true\nmetrics_listen = \"127.0.0.1:{metrics_port}\""),
        "pool_size = 2",
    )
    .replacen("metrics_listen = \"\"\n", "", 1);
    let px = start_pgmux(&cfg);
    let url = px.url(APP_USER, APP_PASSWORD, APP_DB);
    let mut tasks = Vec::new();
    for id in 0..24i32 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let client = connect(&url).await;
            // Half the clients change a setting, which pgmux re-applies on each
            // connection they get (a unit of its own, that hands nothing on).
            let name = if id % 2 == 0 {
                let name = format!("pipelining_{id}");
                client
                    .batch_execute(&format!("set application_name = '{name}'"))
                    .await
                    .unwrap();
                name
            } else {
                String::new()
            };
            let add = client.prepare("select $1::int + $2::int").await.unwrap();
            for i in 0..150i32 {
                let row = client.query_one(&add, &[&id, &i]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), id + i, "client {id}");
                let rows = client
                    .simple_query(&format!("select '{id}:{i}'"))
                    .await
                    .unwrap();
                let text = rows.iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                    _ => None,
                });
                assert_eq!(text, Some(format!("{id}:{i}")), "client {id}");
                if i % 25 == 0 {
                    let row = client
                        .query_one("show application_name", &[])
                        .await
                        .unwrap();
                    assert_eq!(row.get::<_, String>(0), name, "another client's setting");
                }
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(PATIENCE * 4, t)
            .await
            .expect("the clients finish")
            .unwrap();
    }
    let handed = pipelined_total(metrics_port);
    eprintln!("connections handed on: {handed}");
    assert!(
        handed > 0,
        "no connection was handed on: the test did not exercise pipelining"
    );
}

#[test]
fn a_client_behind_a_transaction_runs_after_its_end_and_outside_it() {
    let px = one_connection("");
    let x = holder(&px);
    let mut a = queued(&px, "begin");
    // Outside a transaction block, now() is the statement's own start.
    let mut b = queued(&px, "select now() = statement_timestamp()");
    let _x = release(x);
    assert_eq!(a.read_result(), Ok(vec![]));
    // Units inside the block hand nothing on, a Sync alone among them.
    assert_eq!(a.query("select 1"), Ok(vec!["1".to_owned()]));
    a.stream
        .write_all(&wire::tagged(b'S', &[]))
        .expect("send a Sync");
    let replies = a.read_until_ready();
    assert_eq!(replies.last().map(|m| m.tx_status()), Some('T'));
    // The end of the block does: b's statement runs after it, in a transaction of
    // its own.
    assert_eq!(a.query("commit"), Ok(vec![]));
    assert_eq!(b.read_result(), Ok(vec!["t".to_owned()]));
    assert_eq!(a.query("select 'a'"), Ok(vec!["a".to_owned()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_of_some_clients_never_stop_the_statements_of_the_others() {
    // Clients that cancel every statement as soon as it is sent share two busy
    // connections with clients that never cancel. Each cancel lands on whatever runs
    // on its server connection when it arrives: often the canceller's own statement,
    // sometimes one sent behind it.
    let cfg = pgmux_config(
        shared_primary(),
        "server_pipelining = true\nserver_pipelining_threshold = \"0s\"",
        "pool_size = 2",
    );
    let px = start_pgmux(&cfg);
    let url = px.url(APP_USER, APP_PASSWORD, APP_DB);
    let mut tasks = Vec::new();
    for id in 0..10 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let client = connect(&url).await;
            for i in 0..200 {
                let expected = format!("{id}:{i}");
                // Both protocols; the extended one with a named statement each time.
                let text = if i % 2 == 0 {
                    let rows = client
                        .simple_query(&format!("select '{expected}' from pg_sleep(0.002)"))
                        .await
                        .unwrap_or_else(|e| panic!("client {id} never cancels, yet: {e}"));
                    rows.iter().find_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                        _ => None,
                    })
                } else {
                    let row = client
                        .query_one("select $1::text from pg_sleep(0.002)", &[&expected])
                        .await
                        .unwrap_or_else(|e| panic!("client {id} never cancels, yet: {e}"));
                    row.get(0)
                };
                assert_eq!(text, Some(expected), "client {id}");
            }
            0
        }));
    }
    for id in 0..4 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let client = connect(&url).await;
            let token = client.cancel_token();
            let mut cancelled = 0;
            for _ in 0..100 {
                let (result, sent) = tokio::join!(
                    client.simple_query("select 1 from pg_sleep(0.004)"),
                    token.cancel_query(tokio_postgres::NoTls)
                );
                sent.expect("send a cancel");
                match result {
                    Ok(_) => {}
                    Err(e)
                        if e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) =>
                    {
                        cancelled += 1;
                    }
                    Err(e) => panic!("cancelling client {id}: {e}"),
                }
            }
            cancelled
        }));
    }
    let mut cancelled = 0;
    for t in tasks {
        cancelled += tokio::time::timeout(PATIENCE * 4, t)
            .await
            .expect("the clients finish")
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    }
    assert!(
        cancelled > 0,
        "no cancel stopped a statement: the test tested nothing"
    );
}

#[test]
fn only_a_statement_known_to_be_short_has_another_sent_behind_it() {
    // "Short" is under a second here, so that no machine makes `select 1` long or
    // `pg_sleep(1.5)` short.
    let metrics_port = support::process::free_port();
    let cfg = pgmux_config(
        shared_primary(),
        &format!(
            "auth_method = \"trust\"\nserver_pipelining = true\n\
             server_pipelining_threshold = \"1s\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\""
        ),
        "pool_size = 1",
    )
    .replacen("metrics_listen = \"\"\n", "", 1);
    let px = start_pgmux(&with_workers(&cfg, 1));
    let mut c = RawClient::login_trust(px.port, APP_USER, APP_DB);
    let long = "select 'a' from pg_sleep(1.5) /* pipelining_known_long */";
    let short = "select 'a' /* pipelining_known_short */";
    // The client holding the connection ends its transaction with a statement new to
    // pgmux each time, which it does not hand on: a's is the only hand-over counted.
    let release_anew = |mut x: RawClient, round: &str| {
        let commit = format!("commit /* pipelining_round_{round} */");
        assert_eq!(x.query(&commit), Ok(vec![]));
    };
    for (sql, handed, round) in [(long, false, "long"), (short, true, "short")] {
        // Run once, so that pgmux knows how long it takes.
        assert_eq!(c.query(sql), Ok(vec!["a".to_owned()]));
        let before = pipelined_total(metrics_port);
        let x = holder(&px);
        let mut a = queued(&px, sql);
        let mut b = queued(&px, "select 'b'");
        release_anew(x, round);
        assert_eq!(a.read_result(), Ok(vec!["a".to_owned()]));
        assert_eq!(b.read_result(), Ok(vec!["b".to_owned()]));
        assert_eq!(
            pipelined_total(metrics_port) > before,
            handed,
            "{sql}: handed on while it ran"
        );
    }
    // A statement seen for the first time is not known to be short.
    let before = pipelined_total(metrics_port);
    let x = holder(&px);
    let mut a = queued(&px, "select 'a' /* pipelining_never_seen */");
    let mut b = queued(&px, "select 'b'");
    release_anew(x, "new");
    assert_eq!(a.read_result(), Ok(vec!["a".to_owned()]));
    assert_eq!(b.read_result(), Ok(vec!["b".to_owned()]));
    assert_eq!(
        pipelined_total(metrics_port),
        before,
        "a new statement was handed on"
    );
}

/// pgmux with `auth_method = "trust"` over a pool of two, a client of it, and a
/// connection to it for a hand-written client.
async fn trusting_pgmux() -> (Pgmux, tokio_postgres::Client, tokio::net::TcpStream) {
    let px = start_pgmux(&pgmux_config(
        shared_primary(),
        "auth_method = \"trust\"",
        "pool_size = 2",
    ));
    let other = connect(&px.url(APP_USER, APP_PASSWORD, APP_DB)).await;
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", px.port))
        .await
        .expect("connect to pgmux");
    (px, other, stream)
}

/// A driver's batch (pgx's `SendBatch`, JDBC's `executeBatch`) is one unit of many
/// unnamed statements, sent before any reply is read: every statement is answered,
/// and other clients meanwhile. Over TLS, where pgmux reads furthest ahead of the
/// server, its cost per statement is checked too (tests/tls.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_100000_unnamed_statements_in_one_unit_is_answered_whole() {
    let (_px, other, stream) = trusting_pgmux().await;
    support::protocol::unnamed_batch(stream, 100_000, support::protocol::Batch::OneUnit, &other)
        .await;
}

/// Units pipelined by the thousand, each failing: at each ErrorResponse pgmux asks
/// whether the unit answered has a skip mark, and read every unit's fixups behind it
/// to answer, so 100,000 failing units took 32 s instead of 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_failing_units_pipelined_are_all_answered() {
    let (_px, other, stream) = trusting_pgmux().await;
    let failing = support::protocol::Batch::FailingUnits;
    support::protocol::unnamed_batch(stream, 100_000, failing, &other).await;
}

/// Settings changes pipelined by the thousand: pgmux follows each until its reply
/// says it ran and its implicit transaction committed. Each reply read all the changes
/// pending behind it: 60,000 pipelined `SET`s took 9 s instead of 1.2. The last one
/// is the client's setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_pipelined_sets_are_followed_to_the_last() {
    let (_px, _other, stream) = trusting_pgmux().await;
    let n = 100_000;
    let shown = support::protocol::pipelined_sets(stream, n).await;
    assert_eq!(shown, format!("{}kB", 64 + (n - 1) % 100));
}
