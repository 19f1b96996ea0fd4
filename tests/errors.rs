//! The errors a client can see (CONTRACT.md section 4): too many clients, no server
//! within `query_wait_timeout`, `query_timeout`, `idle_transaction_timeout`, servers
//! that are down or never answer, malformed messages, and clients that leave in the
//! middle of things.
//!
//! Every test starts its own pgmux with the configuration it needs, against the
//! primary shared by this test binary, and uses tables of its own; malformed input
//! goes through `Raw` (tests/support/protocol.rs).

mod support;

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio_postgres::error::SqlState;

use support::protocol::*;
use support::wire::{self, tagged, RawClient};
use support::*;

#[tokio::test]
async fn more_clients_than_max_client_conn_get_fatal_53300_at_startup() {
    let px = pgmux("max_client_conn = 2", "");
    let url = app_url(&px);
    let first = connect(&url).await;
    let second = connect(&url).await;

    let err = try_connect(&url)
        .await
        .expect_err("a third client is refused");
    assert_error(&err, "FATAL", SqlState::TOO_MANY_CONNECTIONS);
    assert!(
        db_error(&err).message().contains("max_client_conn"),
        "{err}"
    );

    assert_eq!(simple_value(&first, "select 1").await, "1");
    drop(first);
    let admitted = poll_until_async(DEADLINE, || async { try_connect(&url).await.is_ok() }).await;
    assert!(admitted, "a client is admitted once another has left");
    assert_eq!(simple_value(&second, "select 2").await, "2");
}

#[tokio::test]
async fn no_server_within_query_wait_timeout_is_error_53300_and_the_client_carries_on() {
    let px = pgmux("query_wait_timeout = \"300ms\"", "pool_size = 1");
    let holder = connect(&app_url(&px)).await;
    let waiter = connect(&app_url(&px)).await;
    holder.batch_execute("begin").await.unwrap();

    let err = waiter.simple_query("select 1").await.unwrap_err();
    assert_error(&err, "ERROR", SqlState::TOO_MANY_CONNECTIONS);
    assert!(
        db_error(&err).message().contains("query_wait_timeout"),
        "{err}"
    );
    let err = waiter
        .query_one("select $1::int", &[&1_i32])
        .await
        .unwrap_err();
    assert_error(&err, "ERROR", SqlState::TOO_MANY_CONNECTIONS);

    holder.batch_execute("commit").await.unwrap();
    assert_eq!(simple_value(&waiter, "select 1").await, "1");
    let row = waiter.query_one("select $1::int", &[&7_i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 7);
}

#[tokio::test]
async fn a_statement_running_past_query_timeout_is_cancelled_with_57014() {
    let px = pgmux("query_timeout = \"300ms\"", "pool_size = 1");
    let client = connect(&app_url(&px)).await;

    let err = client.simple_query("select pg_sleep(5)").await.unwrap_err();
    assert_error(&err, "ERROR", SqlState::QUERY_CANCELED);
    let err = client.query("select pg_sleep(5)", &[]).await.unwrap_err();
    assert_error(&err, "ERROR", SqlState::QUERY_CANCELED);
    // The server's words ("due to user request") would send the user looking for a
    // cancel nobody made.
    let db = db_error(&err);
    assert_eq!(
        db.message(),
        "canceling statement due to query_timeout (300ms)"
    );
    assert!(
        db.hint().is_some_and(|h| h.contains("raise query_timeout")),
        "{db:?}"
    );

    assert_eq!(simple_value(&client, "select 1").await, "1");
    assert!(runs_in_a_fresh_transaction(&client).await);
}

#[tokio::test]
async fn a_client_idle_in_transaction_past_the_timeout_gets_fatal_25p03_and_its_work_is_rolled_back(
) {
    fresh_table("idle_txn_timeout");
    let px = pgmux("idle_transaction_timeout = \"300ms\"", "pool_size = 1");
    let (client, connection) = connect_with_task(&app_url(&px)).await.unwrap();

    client
        .batch_execute("begin; insert into idle_txn_timeout values (1, 'x')")
        .await
        .unwrap();
    let ended = tokio::time::timeout(DEADLINE, connection)
        .await
        .expect("pgmux closes the idle transaction")
        .unwrap();
    assert_error(
        &ended.unwrap_err(),
        "FATAL",
        SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
    );
    assert!(client.simple_query("select 1").await.is_err());

    let next = connect(&app_url(&px)).await;
    assert_eq!(
        simple_value(&next, "select count(*) from idle_txn_timeout").await,
        "0",
        "the idle transaction was rolled back"
    );
    assert!(runs_in_a_fresh_transaction(&next).await);
}

#[tokio::test]
async fn a_statement_for_a_server_nobody_listens_on_gets_error_08006_naming_it() {
    let pg = shared_primary();
    let dead_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let dead = format!("127.0.0.1:{dead_port}");
    let config = pgmux_config(pg, "server_connect_timeout = \"1s\"", "")
        .replace(&pg.addr(APP_DB), &format!("{dead}/{APP_DB}"));
    let px = start_pgmux(&config);
    let client = connect(&app_url(&px)).await;

    for _ in 0..2 {
        let err = client.simple_query("select 1").await.unwrap_err();
        assert_error(&err, "ERROR", SqlState::CONNECTION_FAILURE);
        assert!(db_error(&err).message().contains(&dead), "{err}");
        let err = client.query_one("select 1", &[]).await.unwrap_err();
        assert_error(&err, "ERROR", SqlState::CONNECTION_FAILURE);
    }
}

#[tokio::test]
async fn a_server_that_accepts_but_never_answers_gets_error_08006_instead_of_a_hang() {
    let pg = shared_primary();
    // The kernel completes the TCP handshake for a listener nobody accepts from;
    // the "server" then never says a word.
    let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mute_addr = format!("127.0.0.1:{}", mute.local_addr().unwrap().port());
    let config = pgmux_config(pg, "server_connect_timeout = \"500ms\"", "")
        .replace(&pg.addr(APP_DB), &format!("{mute_addr}/{APP_DB}"));
    let px = start_pgmux(&config);
    let client = connect(&app_url(&px)).await;

    let err = tokio::time::timeout(DEADLINE, client.simple_query("select 1"))
        .await
        .expect("pgmux gives up on the server instead of hanging")
        .unwrap_err();
    assert_error(&err, "ERROR", SqlState::CONNECTION_FAILURE);
    assert!(db_error(&err).message().contains(&mute_addr), "{err}");
    drop(mute);
}

#[tokio::test]
async fn a_server_that_goes_down_gets_error_08006_and_the_client_works_again_when_it_is_back() {
    let mut pg = start_primary();
    let px = start_pgmux(&pgmux_config(&pg, "server_connect_timeout = \"1s\"", ""));
    let client = connect(&app_url(&px)).await;
    assert_eq!(simple_value(&client, "select 1").await, "1");

    pg.stop();
    let err = client.simple_query("select 1").await.unwrap_err();
    assert_error(&err, "ERROR", SqlState::CONNECTION_FAILURE);
    assert!(
        db_error(&err)
            .message()
            .contains(&format!("127.0.0.1:{}", pg.port)),
        "{err}"
    );

    pg.start();
    let back = poll_until_async(DEADLINE, || async {
        client.simple_query("select 1").await.is_ok()
    })
    .await;
    assert!(back, "the same client works once the server is back");
}

#[tokio::test]
async fn a_message_above_max_message_size_gets_fatal_08p01_and_only_that_client_is_closed() {
    let px = pgmux("auth_method = \"trust\"\nmax_message_size = \"1KiB\"", "");
    let bystander = connect(&app_url(&px)).await;
    let mut raw = Raw::login(px.port).await;

    let big = query(&format!("select '{}'", "x".repeat(100 * 1024)));
    // pgmux may close before reading it all: a failed write is expected then.
    let _ = raw.stream.write_all(&big).await;
    let msgs = raw.until_closed().await;
    assert_eq!(tags(&msgs), "E", "{msgs:?}");
    assert_eq!(msgs[0].error(), ("FATAL".into(), "08P01".into()));
    assert!(
        msgs[0].field(b'M').unwrap().contains("max_message_size"),
        "{msgs:?}"
    );

    // A driver sees the same FATAL.
    let driver = connect(&app_url(&px)).await;
    let err = driver
        .simple_query(&format!("select '{}'", "x".repeat(100 * 1024)))
        .await
        .unwrap_err();
    assert_error(&err, "FATAL", SqlState::PROTOCOL_VIOLATION);
    assert!(driver.is_closed() || driver.simple_query("select 1").await.is_err());

    // A message just under the limit is fine.
    let fits = connect(&app_url(&px)).await;
    assert_eq!(
        simple_value(&fits, &format!("select length('{}')", "y".repeat(900))).await,
        "900"
    );
    assert_eq!(simple_value(&bystander, "select 1").await, "1");
}

#[tokio::test]
async fn a_message_of_unknown_type_gets_fatal_08p01_and_only_that_client_is_closed() {
    let px = pgmux("auth_method = \"trust\"", "pool_size = 1");
    let bystander = connect(&app_url(&px)).await;
    let mut raw = Raw::login(px.port).await;

    raw.send(&tagged(b'?', b"garbage")).await;
    let msgs = raw.until_closed().await;
    assert_eq!(tags(&msgs), "E", "{msgs:?}");
    assert_eq!(msgs[0].error(), ("FATAL".into(), "08P01".into()));

    assert_eq!(simple_value(&bystander, "select 1").await, "1");
    connect(&app_url(&px)).await;
}

/// What a confused client sends as if it were connecting again, a startup packet, an
/// SSLRequest or a CancelRequest, starts with a zero byte that starts no message. It
/// is refused as it comes (as Postgres refuses it), not read as the length of a
/// message that never ends; inside a transaction, that is rolled back and its server
/// freed.
#[tokio::test]
async fn a_startup_packet_or_ssl_request_after_login_gets_fatal_08p01_at_once() {
    fresh_table("connect_again");
    let px = pgmux("auth_method = \"trust\"", "pool_size = 1");
    let mut startup = 196_608_i32.to_be_bytes().to_vec();
    startup.extend_from_slice(b"user\0app\0\0");
    let startup = [&(startup.len() as i32 + 4).to_be_bytes()[..], &startup].concat();
    let ssl_request = [8_i32.to_be_bytes(), 80_877_103_i32.to_be_bytes()].concat();
    let cancel = [16, 80_877_102, 1, 2].map(i32::to_be_bytes).concat();
    for (what, bytes) in [
        ("startup", startup),
        ("SSLRequest", ssl_request),
        ("cancel", cancel),
    ] {
        let mut raw = Raw::login(px.port).await;
        raw.send(&query("begin; insert into connect_again values (1)"))
            .await;
        raw.until_ready().await;
        raw.send(&bytes).await;
        let msgs = raw.until_closed().await;
        assert_eq!(tags(&msgs), "E", "{what}: {msgs:?}");
        assert_eq!(msgs[0].error(), ("FATAL".into(), "08P01".into()), "{what}");
    }

    let client = connect(&app_url(&px)).await;
    assert_eq!(
        simple_value(&client, "select count(*) from connect_again").await,
        "0"
    );
}

/// Sync and Flush have no body; one with bytes after its tag is malformed.
#[tokio::test]
async fn a_sync_or_flush_with_a_body_gets_fatal_08p01() {
    let px = pgmux("auth_method = \"trust\"", "pool_size = 1");
    for tag in [b'S', b'H'] {
        let mut raw = Raw::login(px.port).await;
        raw.send(&tagged(tag, b"abcd")).await;
        let msgs = raw.until_closed().await;
        assert_eq!(tags(&msgs), "E", "{msgs:?}");
        assert_eq!(msgs[0].error(), ("FATAL".into(), "08P01".into()));
    }
    let client = connect(&app_url(&px)).await;
    assert_eq!(simple_value(&client, "select 1").await, "1");
}

#[tokio::test]
async fn garbage_instead_of_a_startup_packet_gets_fatal_08p01() {
    let px = pgmux("", "");
    let bystander = connect(&app_url(&px)).await;
    let mut raw = Raw::connect(px.port).await;

    raw.send(b"GET / HTTP/1.1\r\nHost: pgmux\r\n\r\n").await;
    let msgs = raw.until_closed().await;
    assert_eq!(tags(&msgs), "E", "{msgs:?}");
    assert_eq!(msgs[0].error(), ("FATAL".into(), "08P01".into()));

    assert_eq!(simple_value(&bystander, "select 1").await, "1");
}

#[tokio::test]
async fn a_negative_message_length_gets_fatal_08p01_and_only_that_client_is_closed() {
    let px = pgmux("auth_method = \"trust\"", "pool_size = 1");
    let bystander = connect(&app_url(&px)).await;
    let mut raw = Raw::login(px.port).await;

    raw.send(b"Q\xff\xff\xff\xf0select 1\0").await;
    let msgs = raw.until_closed().await;
    assert_eq!(tags(&msgs), "E", "{msgs:?}");
    assert_eq!(msgs[0].error(), ("FATAL".into(), "08P01".into()));

    assert_eq!(simple_value(&bystander, "select 1").await, "1");
    connect(&app_url(&px)).await;
}

#[tokio::test]
async fn a_truncated_message_then_close_in_a_transaction_rolls_it_back_and_frees_the_server() {
    fresh_table("truncated_close");
    let px = pgmux(
        "auth_method = \"trust\"\nquery_wait_timeout = \"10s\"",
        "pool_size = 1",
    );
    let mut raw = Raw::login(px.port).await;
    raw.send(&query("begin; insert into truncated_close values (1, 'x')"))
        .await;
    let msgs = raw.until_ready().await;
    assert_eq!(msgs.last().unwrap().tx_status(), 'T', "{msgs:?}");

    let whole = query("commit");
    raw.send(&whole[..whole.len() - 3]).await;
    raw.stream.shutdown().await.unwrap();
    assert!(raw.until_closed().await.is_empty());
    drop(raw);

    let next = connect(&app_url(&px)).await;
    assert_eq!(
        simple_value(&next, "select count(*) from truncated_close").await,
        "0",
        "the half-sent COMMIT did not commit"
    );
    assert!(runs_in_a_fresh_transaction(&next).await);
    assert!(px.accepts_tcp());
}

#[tokio::test]
async fn a_client_that_sends_nothing_is_closed_after_client_login_timeout() {
    let px = pgmux("client_login_timeout = \"300ms\"", "");
    let mut silent = Raw::connect(px.port).await;
    let mut half = Raw::connect(px.port).await;
    // Half a startup packet: a length, then nothing.
    half.send(&64_i32.to_be_bytes()).await;

    assert!(silent.until_closed().await.is_empty());
    assert!(half.until_closed().await.is_empty());
    let client = connect(&app_url(&px)).await;
    assert_eq!(simple_value(&client, "select 1").await, "1");
}

#[tokio::test]
async fn a_client_that_leaves_mid_transaction_has_it_rolled_back_and_the_next_client_gets_a_clean_server(
) {
    fresh_table("left_mid_txn");
    let px = pgmux("auth_method = \"trust\"", "pool_size = 1");

    // A driver that says goodbye (Terminate) ...
    let polite = connect(&app_url(&px)).await;
    polite
        .batch_execute("begin; insert into left_mid_txn values (1, 'terminate')")
        .await
        .unwrap();
    drop(polite);

    // ... and one that just closes its socket.
    let mut abrupt = Raw::login(px.port).await;
    abrupt
        .send(&query(
            "begin; insert into left_mid_txn values (2, 'close')",
        ))
        .await;
    let msgs = abrupt.until_ready().await;
    assert_eq!(msgs.last().unwrap().tx_status(), 'T', "{msgs:?}");
    drop(abrupt);

    let next = connect(&app_url(&px)).await;
    assert!(
        runs_in_a_fresh_transaction(&next).await,
        "the next client was handed a server still in a transaction"
    );
    assert_eq!(
        simple_value(&next, "select count(*) from left_mid_txn").await,
        "0"
    );
    assert_eq!(rows_in("left_mid_txn"), 0);
    next.execute("insert into left_mid_txn values (1, 'again')", &[])
        .await
        .expect("no lock is left behind on the rolled-back row");
}

#[tokio::test]
async fn a_client_that_leaves_during_a_statement_in_a_transaction_has_it_rolled_back() {
    fresh_table("left_mid_statement");
    let px = pgmux("auth_method = \"trust\"", "pool_size = 1");

    let mut raw = Raw::login(px.port).await;
    raw.send(&query(
        "begin; insert into left_mid_statement values (1, 'x'); select pg_backend_pid()",
    ))
    .await;
    let msgs = raw.until_ready().await;
    let pid: i32 = msgs
        .iter()
        .find(|m| m.tag == b'D')
        .expect("a DataRow")
        .first_column()
        .parse()
        .unwrap();
    raw.send(&query("select pg_sleep(1)")).await;
    let running = poll_until(DEADLINE, || backend_state(pid) == "active");
    assert!(running, "pg_sleep never started on {pid}");
    drop(raw);

    let next = connect(&app_url(&px)).await;
    assert!(runs_in_a_fresh_transaction(&next).await);
    let gone = poll_until(DEADLINE, || backend_state(pid).is_empty());
    assert!(gone, "the abandoned server connection {pid} was not closed");
    assert_eq!(rows_in("left_mid_statement"), 0);
    assert_ne!(backend_pid(&next).await, pid);
}

#[tokio::test]
async fn closing_a_statement_between_transactions_needs_no_server_connection() {
    let px = pgmux(
        "auth_method = \"trust\"\nquery_wait_timeout = \"300ms\"",
        "pool_size = 1",
    );
    let mut raw = Raw::login(px.port).await;
    raw.send(&concat(&[parse("s1", "select 7"), sync()])).await;
    assert_eq!(tags(&raw.until_ready().await), "1Z");

    // Another client holds the only server connection in a transaction.
    let holder = connect(&app_url(&px)).await;
    holder.batch_execute("begin; select 1").await.unwrap();

    raw.send(&concat(&[tagged(b'C', b"Ss1\0"), sync()])).await;
    let msgs = raw.until_ready().await;
    assert_eq!(
        tags(&msgs),
        "3Z",
        "answered without waiting for a server: {msgs:?}"
    );

    holder.batch_execute("commit").await.unwrap();
    // The statement is gone for this client, as Postgres would have it.
    raw.send(&concat(&[bind("s1"), execute(), sync()])).await;
    let msgs = raw.until_ready().await;
    assert!(
        msgs.iter().any(|m| m.tag == b'E'),
        "binding a closed statement fails: {msgs:?}"
    );
}

/// A result larger than both socket buffers, to a client that does not read until
/// pgmux's writes to it would block: pgmux must finish the write later, keep every
/// byte in order, and then give the server connection back.
#[test]
fn a_large_result_to_a_slow_reader_arrives_whole_and_frees_the_connection() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(
        pg,
        "auth_method = \"trust\"",
        "pool_size = 1",
    ));
    let mut client = RawClient::login_trust(px.port, APP_USER, APP_DB);
    let rows = 32_000;
    client.send_query(&format!(
        "select lpad(g::text, 1000, 'x') from generate_series(1, {rows}) g"
    ));
    // The client reads nothing, so pgmux's send queue to it fills (32 MB do not fit
    // in it): pgmux's writes are blocked.
    let port = client.local_port();
    let stalled = poll_until(Duration::from_secs(30), || {
        wire::unread_bytes(port, px.port).is_some_and(|n| n > 0)
            && wire::unsent_bytes(px.port, port).is_some_and(|n| n > 1 << 20)
    });
    assert!(
        stalled,
        "pgmux's writes to the slow client never backed up: unread {:?}, unsent {:?}",
        wire::unread_bytes(port, px.port),
        wire::unsent_bytes(px.port, port)
    );

    let got = client.read_result().expect("the large result");
    assert_eq!(got.len(), rows, "every row arrived");
    for (i, row) in got.iter().enumerate() {
        let n = (i + 1).to_string();
        assert!(
            row.len() == 1000
                && row.ends_with(&n)
                && row[..1000 - n.len()].bytes().all(|b| b == b'x'),
            "row {} arrived intact",
            i + 1
        );
    }
    // The only server connection went back: another client gets it.
    let mut other = RawClient::login_trust(px.port, APP_USER, APP_DB);
    assert_eq!(other.query("select 7"), Ok(vec!["7".to_owned()]));
    assert_eq!(client.query("select 8"), Ok(vec!["8".to_owned()]));
}

/// A client that pipelines many statements with large results and reads nothing
/// must not make pgmux read, and hold, every reply the server makes: pgmux reads
/// ahead of its writes to the server only so far, then waits for the client as
/// Postgres itself would. The client still gets its replies whole and in order, and
/// when it leaves, the server connection serves the next client.
#[test]
fn a_client_that_pipelines_and_reads_nothing_holds_pgmux_to_bounded_memory() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(
        pg,
        "auth_method = \"trust\"",
        "pool_size = 1",
    ));
    let rss = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", px.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    };
    let mut client = RawClient::login_trust(px.port, APP_USER, APP_DB);
    // 8 MB of statements, more than the sockets between pgmux and the server hold,
    // each answered with 32 kB: 256 MB of replies. The first statement keeps the
    // server busy while pgmux queues the others towards it, so that pgmux has more
    // than it may queue when the replies start (without it, whether the old
    // unbounded read-ahead showed depended on timing). No step of the test waits
    // for it: the stall below is polled for.
    let statements = 8_000;
    let reply = 32 * 1024;
    let padding = "x".repeat(1000);
    let sql = format!("select repeat('y', {reply}) /* {padding} */");
    let before = rss();
    let mut batch = wire::query_message("select pg_sleep(1)");
    for _ in 0..statements {
        batch.extend(wire::query_message(&sql));
    }
    let mut writer = client.stream.try_clone().unwrap();
    // From a thread: once pgmux stops reading, the write blocks until the client
    // reads, or leaves.
    let sender = std::thread::spawn(move || std::io::Write::write_all(&mut writer, &batch));

    let port = client.local_port();
    let stalled = poll_until(Duration::from_secs(60), || {
        wire::unsent_bytes(px.port, port).is_some_and(|n| n > 1 << 20)
            && shared_primary()
                .sql(
                    "postgres",
                    "select count(*) from pg_stat_activity \
                     where usename = 'app' and wait_event = 'ClientWrite'",
                )
                .trim()
                == "1"
    });
    assert!(
        stalled,
        "the server never waited on pgmux to take its replies"
    );
    let grown = rss().saturating_sub(before);
    assert!(
        grown < 48 << 20,
        "pgmux grew by {} MB while its client read nothing",
        grown >> 20
    );

    assert_eq!(tags(&client.read_until_ready()), "TDCZ", "the pg_sleep");
    for i in 0..10 {
        let msgs = client.read_until_ready();
        let row = msgs.iter().find(|m| m.tag == b'D').unwrap_or_else(|| {
            panic!("statement {i} got no row: {:?}", tags(&msgs));
        });
        assert_eq!(row.first_column().len(), reply, "statement {i}");
    }
    // The client leaves. Shut the socket down rather than only close this handle:
    // the sender's clone keeps it open, and its write would then end only if the
    // sockets on the way happened to hold what is left of the 8 MB.
    client.stream.shutdown(std::net::Shutdown::Both).unwrap();
    drop(client);
    let _ = sender.join().unwrap();
    let mut other = RawClient::login_trust(px.port, APP_USER, APP_DB);
    assert_eq!(other.query("select 8"), Ok(vec!["8".to_owned()]));
}
