//! Transaction pooling at the protocol level (CONTRACT.md section 3): clients taking
//! turns on one server connection, pipelines and batches with errors, COPY in both
//! protocols.
//!
//! Every test starts its own pgmux with the configuration it needs, against the
//! primary shared by this test binary, and uses tables of its own. Most use
//! `pool_size = 1`: with a single server connection, "who holds the server" is
//! visible from the outside — the backend pid every client sees is the same, and a
//! client that should wait either waits or, with a short `query_wait_timeout`, gets
//! `ERROR 53300`.
//!
//! Drivers never send some things a proxy must survive: statement names of our
//! choosing, a batch without Sync. `Raw` (tests/support/protocol.rs) is a small
//! hand-written protocol client for those; pgmux runs with `auth_method = "trust"`
//! for it, so it logs in with a bare StartupMessage.

mod support;

use std::collections::HashSet;

use bytes::Bytes;
use futures_util::{SinkExt, TryStreamExt};
use tokio_postgres::error::SqlState;

use support::protocol::*;
use support::wire::tagged;
use support::*;

#[tokio::test]
async fn outside_transactions_clients_take_turns_on_one_server_connection_statement_by_statement() {
    // With one server connection and a short wait, a client that kept the server
    // between statements would make the other fail with 53300.
    let px = pgmux("query_wait_timeout = \"1s\"", "pool_size = 1");
    let a = connect(&app_url(&px)).await;
    let b = connect(&app_url(&px)).await;

    let mut pids = HashSet::new();
    for _ in 0..3 {
        for client in [&a, &b] {
            pids.insert(simple_value(client, "select pg_backend_pid()").await);
            pids.insert(backend_pid(client).await.to_string());
        }
    }
    assert_eq!(
        pids.len(),
        1,
        "both clients, simple and extended protocol, run on the one server: {pids:?}"
    );
}

#[tokio::test]
async fn a_client_in_a_transaction_keeps_the_server_and_the_other_proceeds_after_commit() {
    fresh_table("pool_txn_hold");
    let px = pgmux("", "pool_size = 1");
    let a = connect(&app_url(&px)).await;
    let b = connect(&app_url(&px)).await;

    // BEGIN over the extended protocol, COMMIT below over the simple one.
    a.execute("begin", &[]).await.unwrap();
    let a_pid = backend_pid(&a).await;
    a.execute("insert into pool_txn_hold values (1, 'a')", &[])
        .await
        .unwrap();

    let waiting = tokio::spawn(async move {
        let row = b
            .query_one(
                "select pg_backend_pid(), (select count(*) from pool_txn_hold)",
                &[],
            )
            .await
            .expect("b's statement runs once a commits");
        (row.get::<_, i32>(0), row.get::<_, i64>(1))
    });

    // a's statements keep running on its server while b waits for it.
    for _ in 0..5 {
        assert_eq!(backend_pid(&a).await, a_pid);
        assert_eq!(
            simple_value(&a, "select pg_backend_pid()").await,
            a_pid.to_string()
        );
    }
    assert!(
        !waiting.is_finished(),
        "b ran while a's transaction held the only server connection"
    );

    a.batch_execute("commit").await.unwrap();
    let (b_pid, rows) = tokio::time::timeout(DEADLINE, waiting)
        .await
        .expect("b runs after a's commit")
        .unwrap();
    assert_eq!(b_pid, a_pid, "b got the server connection a released");
    assert_eq!(rows, 1, "b ran after a's commit, and sees its row");
}

#[tokio::test]
async fn pipelined_statements_with_an_error_in_the_middle_each_get_their_own_result() {
    let px = pgmux("query_wait_timeout = \"1s\"", "pool_size = 1");
    let client = connect(&app_url(&px)).await;
    let other = connect(&app_url(&px)).await;

    // Joined futures are pipelined by tokio-postgres: all three Parse/Describe/Sync
    // go out before the first answer comes back, then the Bind/Execute/Syncs.
    let (first, second, third) = tokio::join!(
        client.query_one("select 1::int", &[]),
        client.query_one("select 1 / 0", &[]),
        client.query_one("select $1::int + 1", &[&2_i32]),
    );
    assert_eq!(first.unwrap().get::<_, i32>(0), 1);
    assert_error(&second.unwrap_err(), "ERROR", SqlState::DIVISION_BY_ZERO);
    assert_eq!(third.unwrap().get::<_, i32>(0), 3);

    // The same again in the simple protocol.
    let (first, second, third) = tokio::join!(
        client.simple_query("select 1"),
        client.simple_query("select 1 / 0"),
        client.simple_query("select 3"),
    );
    assert!(first.is_ok() && third.is_ok(), "{first:?} {third:?}");
    assert_error(&second.unwrap_err(), "ERROR", SqlState::DIVISION_BY_ZERO);

    assert_eq!(simple_value(&client, "select 4").await, "4");
    assert_eq!(
        simple_value(&other, "select 5").await,
        "5",
        "the pipelining client gave its server connection back"
    );
}

#[tokio::test]
async fn a_pipeline_that_fails_inside_a_transaction_keeps_the_server_until_rollback() {
    let px = pgmux("query_wait_timeout = \"300ms\"", "pool_size = 1");
    let client = connect(&app_url(&px)).await;
    let other = connect(&app_url(&px)).await;

    // Prepared first, so that the three Bind/Execute/Syncs go out in this order.
    let one = client.prepare("select 1::int").await.unwrap();
    let fails = client
        .prepare("select 1 / (random() * 0)::int")
        .await
        .unwrap();
    let three = client.prepare("select 3::int").await.unwrap();

    client.batch_execute("begin").await.unwrap();
    let (first, second, third) = tokio::join!(
        client.query_one(&one, &[]),
        client.query_one(&fails, &[]),
        client.query_one(&three, &[]),
    );
    assert_eq!(first.unwrap().get::<_, i32>(0), 1);
    assert_error(&second.unwrap_err(), "ERROR", SqlState::DIVISION_BY_ZERO);
    assert_error(
        &third.unwrap_err(),
        "ERROR",
        SqlState::IN_FAILED_SQL_TRANSACTION,
    );

    let err = other.simple_query("select 1").await.unwrap_err();
    assert_error(&err, "ERROR", SqlState::TOO_MANY_CONNECTIONS);

    client.batch_execute("rollback").await.unwrap();
    assert_eq!(simple_value(&other, "select 1").await, "1");
    assert!(runs_in_a_fresh_transaction(&other).await);
}

#[tokio::test]
async fn an_error_in_a_batch_skips_the_rest_until_sync_and_releases_the_server() {
    let px = pgmux(
        "auth_method = \"trust\"\nquery_wait_timeout = \"1s\"",
        "pool_size = 1",
    );
    let mut raw = Raw::login(px.port).await;
    let other = connect(&app_url(&px)).await;

    raw.send(&concat(&[
        parse("", "select 1"),
        bind(""),
        execute(),
        parse("", "select 1 / (random() * 0)::int"),
        bind(""),
        execute(),
        parse("", "select 3"),
        bind(""),
        execute(),
        sync(),
    ]))
    .await;
    let msgs = raw.until_ready().await;
    assert_eq!(tags(&msgs), "12DC12EZ", "{msgs:?}");
    assert_eq!(msgs[2].first_column(), "1");
    assert_eq!(msgs[6].error(), ("ERROR".into(), "22012".into()));
    assert_eq!(msgs[7].tx_status(), 'I');

    assert_eq!(simple_value(&other, "select 2").await, "2");
    raw.send(&query("select 6")).await;
    let msgs = raw.until_ready().await;
    assert_eq!(tags(&msgs), "TDCZ", "{msgs:?}");
    assert_eq!(msgs[1].first_column(), "6");
}

/// A simple Query sent among extended-protocol messages, before their Sync, runs
/// only if the messages before it succeeded: after an error Postgres skips it, and
/// everything else up to the Sync, and answers all of it with one ReadyForQuery.
/// pgmux keeps count either way, so the client gives its server connection back at
/// the Sync and its next statements get their own answers.
#[tokio::test]
async fn a_query_inside_a_failed_extended_batch_is_skipped_up_to_the_sync() {
    let px = pgmux(
        "auth_method = \"trust\"\nquery_wait_timeout = \"1s\"",
        "pool_size = 1",
    );
    let mut raw = Raw::login(px.port).await;
    let other = connect(&app_url(&px)).await;

    // The Parse fails: both Queries are skipped, and so is the error in the second.
    raw.send(&concat(&[
        parse("", "selec"),
        bind(""),
        execute(),
        query("select 2"),
        query("select 1/0"),
        sync(),
    ]))
    .await;
    let msgs = raw.until_ready().await;
    assert_eq!(tags(&msgs), "EZ", "{msgs:?}");
    assert_eq!(msgs[0].error(), ("ERROR".into(), "42601".into()));
    assert_eq!(
        simple_value(&other, "select 3").await,
        "3",
        "the server is free"
    );

    // Sent in two writes, the Query after the error has reached the client.
    raw.send(&concat(&[parse("", "select 1/0"), bind(""), execute()]))
        .await;
    raw.send(&flush()).await;
    let msgs = raw.take(2).await;
    assert_eq!(tags(&msgs), "1E", "{msgs:?}");
    raw.send(&concat(&[query("select 4"), sync()])).await;
    let msgs = raw.until_ready().await;
    assert_eq!(tags(&msgs), "Z", "{msgs:?}");
    assert_eq!(
        simple_value(&other, "select 5").await,
        "5",
        "the server is free"
    );

    // Nothing fails: the Query gets its own ReadyForQuery, then the Sync.
    raw.send(&concat(&[
        parse("", "select 6"),
        bind(""),
        execute(),
        query("select 7"),
        sync(),
    ]))
    .await;
    let mut msgs = raw.until_ready().await;
    msgs.extend(raw.until_ready().await);
    assert_eq!(tags(&msgs), "12DCTDCZZ", "{msgs:?}");
    assert_eq!(msgs[2].first_column(), "6");
    assert_eq!(msgs[5].first_column(), "7");

    // Only the Query fails: its error is its own, and the Sync still answers.
    raw.send(&concat(&[
        parse("", "select 8"),
        bind(""),
        execute(),
        query("select 1/0"),
        sync(),
    ]))
    .await;
    let mut msgs = raw.until_ready().await;
    msgs.extend(raw.until_ready().await);
    assert_eq!(tags(&msgs), "12DCEZZ", "{msgs:?}");
    assert_eq!(msgs[4].error(), ("ERROR".into(), "22012".into()));

    assert_eq!(
        simple_value(&other, "select 9").await,
        "9",
        "the server is free"
    );
    raw.send(&query("select 10")).await;
    let msgs = raw.until_ready().await;
    assert_eq!(tags(&msgs), "TDCZ", "{msgs:?}");
    assert_eq!(msgs[1].first_column(), "10");
}

#[tokio::test]
async fn a_failed_parse_can_be_retried_with_the_same_statement_name() {
    let px = pgmux("auth_method = \"trust\"", "pool_size = 1");
    let mut raw = Raw::login(px.port).await;

    raw.send(&concat(&[parse("s1", "selec 42"), sync()])).await;
    let msgs = raw.until_ready().await;
    assert_eq!(tags(&msgs), "EZ", "{msgs:?}");
    assert_eq!(msgs[0].error(), ("ERROR".into(), "42601".into()));

    raw.send(&concat(&[
        parse("s1", "select 42"),
        bind("s1"),
        execute(),
        sync(),
    ]))
    .await;
    let msgs = raw.until_ready().await;
    assert_eq!(tags(&msgs), "12DCZ", "{msgs:?}");
    assert_eq!(msgs[2].first_column(), "42");

    // Another client's turn in between, then s1 again without a Parse.
    let other = connect(&app_url(&px)).await;
    assert_eq!(simple_value(&other, "select 1").await, "1");
    raw.send(&concat(&[bind("s1"), execute(), sync()])).await;
    let msgs = raw.until_ready().await;
    assert_eq!(tags(&msgs), "2DCZ", "{msgs:?}");
    assert_eq!(msgs[1].first_column(), "42");
}

#[tokio::test]
async fn an_extended_batch_without_sync_keeps_its_server_until_the_sync() {
    let px = pgmux(
        "auth_method = \"trust\"\nquery_wait_timeout = \"300ms\"",
        "pool_size = 1",
    );
    let mut raw = Raw::login(px.port).await;
    let other = connect(&app_url(&px)).await;

    raw.send(&concat(&[
        parse("", "select pg_backend_pid()"),
        bind(""),
        execute(),
        flush(),
    ]))
    .await;
    let msgs = raw.take(4).await;
    assert_eq!(tags(&msgs), "12DC", "{msgs:?}");
    let raw_pid = msgs[2].first_column();

    let err = other.simple_query("select 1").await.unwrap_err();
    assert_error(&err, "ERROR", SqlState::TOO_MANY_CONNECTIONS);

    raw.send(&sync()).await;
    let msgs = raw.until_ready().await;
    assert_eq!(tags(&msgs), "Z", "{msgs:?}");
    assert_eq!(
        simple_value(&other, "select pg_backend_pid()").await,
        raw_pid,
        "after the Sync the other client gets the same server connection"
    );
}

#[tokio::test]
async fn a_client_that_leaves_before_syncing_a_batch_has_it_rolled_back() {
    fresh_table("left_unsynced");
    let px = pgmux("auth_method = \"trust\"", "pool_size = 1");
    let mut raw = Raw::login(px.port).await;

    // Without Sync, the insert runs in an implicit transaction that only the Sync
    // would commit.
    raw.send(&concat(&[
        parse("", "insert into left_unsynced values (1, 'never synced')"),
        bind(""),
        execute(),
        flush(),
    ]))
    .await;
    let msgs = raw.take(3).await;
    assert_eq!(tags(&msgs), "12C", "{msgs:?}");
    drop(raw);

    let next = connect(&app_url(&px)).await;
    assert!(runs_in_a_fresh_transaction(&next).await);
    assert_eq!(
        simple_value(&next, "select count(*) from left_unsynced").await,
        "0",
        "the batch the client never synced was committed for it"
    );
}

/// A statement may have 65535 parameters: Postgres reads the counts of Parse and
/// Bind as unsigned. pgmux took the count for a negative one and closed the
/// connection as a protocol violation.
#[test]
fn a_statement_with_65535_parameters_runs_unnamed_and_prepared() {
    let px = pgmux("", "pool_size = 1");
    let script = format!(
        "import psycopg\n\
         c = psycopg.connect('{}', autocommit=True)\n\
         n = 65535\n\
         q = 'select array_length(array[' + ','.join(['%s::int'] * n) + '], 1)'\n\
         print(c.execute(q, list(range(n))).fetchone()[0], \
               c.execute(q, list(range(n)), prepare=True).fetchone()[0])\n",
        app_url(&px)
    );
    assert_eq!(run_python(&script), "65535 65535");
}

#[test]
fn copy_from_stdin_and_to_stdout_work_in_the_simple_protocol() {
    fresh_table("copy_simple");
    let px = pgmux("query_wait_timeout = \"1s\"", "pool_size = 1");
    let port = px.port.to_string();
    let psql_args = [
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-U",
        APP_USER,
        "-d",
        APP_DB,
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-f",
        "-",
    ];
    let script = "COPY copy_simple (id, v) FROM STDIN;\n\
                  1\tone\n2\ttwo\n3\tthree\n\\.\n\
                  COPY (select * from copy_simple order by id) TO STDOUT;\n\
                  \\copy copy_simple from pstdin\n";
    // `\copy ... from pstdin` reads psql's stdin, which is the script itself.
    let script = format!("{script}4\tfour\n\\.\nselect count(*) from copy_simple;\n");
    let out = psql_with_input(&psql_args, &[("PGPASSWORD", APP_PASSWORD)], Some(&script));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "psql failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("1\tone\n2\ttwo\n3\tthree\n"),
        "COPY TO STDOUT: {stdout:?}"
    );
    assert_eq!(rows_in("copy_simple"), 4);

    let out = psql(
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            APP_USER,
            "-d",
            APP_DB,
            "-At",
            "-c",
            "select 1",
        ],
        &[("PGPASSWORD", APP_PASSWORD)],
    );
    assert!(
        out.status.success(),
        "the server connection came back after COPY: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn copy_in_and_copy_out_work_in_the_extended_protocol() {
    fresh_table("copy_extended");
    let px = pgmux("query_wait_timeout = \"1s\"", "pool_size = 1");
    let client = connect(&app_url(&px)).await;

    let sink = client
        .copy_in::<_, Bytes>("copy copy_extended (id, v) from stdin")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    sink.send(Bytes::from_static(b"1\tone\n2\ttwo\n"))
        .await
        .unwrap();
    sink.send(Bytes::from_static(b"3\tthree\n")).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 3);

    let stream = client
        .copy_out("copy (select * from copy_extended order by id) to stdout")
        .await
        .unwrap();
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    assert_eq!(chunks.concat(), b"1\tone\n2\ttwo\n3\tthree\n");

    let other = connect(&app_url(&px)).await;
    assert_eq!(
        simple_value(&other, "select count(*) from copy_extended").await,
        "3"
    );
}

#[test]
fn a_bad_row_in_copy_from_stdin_fails_the_copy_and_leaves_a_clean_server_simple_protocol() {
    fresh_table("copy_bad_simple");
    let px = pgmux("query_wait_timeout = \"1s\"", "pool_size = 1");
    let port = px.port.to_string();
    let script = "COPY copy_bad_simple (id, v) FROM STDIN;\n\
                  1\tone\nnot-a-number\ttwo\n3\tthree\n\\.\n";
    let out = psql_with_input(
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            APP_USER,
            "-d",
            APP_DB,
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            "-",
        ],
        &[("PGPASSWORD", APP_PASSWORD)],
        Some(script),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the bad row must fail the COPY");
    assert!(
        stderr.contains("invalid input syntax for type integer"),
        "{stderr}"
    );
    assert_eq!(rows_in("copy_bad_simple"), 0, "the failed COPY left no row");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(assert_the_one_server_is_clean(&px));
}

#[tokio::test]
async fn a_bad_row_in_copy_in_fails_the_copy_and_leaves_a_clean_server_extended_protocol() {
    fresh_table("copy_bad_extended");
    let px = pgmux("query_wait_timeout = \"1s\"", "pool_size = 1");
    let client = connect(&app_url(&px)).await;

    let sink = client
        .copy_in::<_, Bytes>("copy copy_bad_extended (id, v) from stdin")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    let result = async {
        sink.send(Bytes::from_static(b"1\tone\nnot-a-number\ttwo\n"))
            .await?;
        sink.send(Bytes::from_static(b"3\tthree\n")).await?;
        sink.as_mut().finish().await
    }
    .await;
    assert_error(
        &result.unwrap_err(),
        "ERROR",
        SqlState::INVALID_TEXT_REPRESENTATION,
    );
    assert_eq!(
        rows_in("copy_bad_extended"),
        0,
        "the failed COPY left no row"
    );

    assert_eq!(simple_value(&client, "select 1").await, "1");
    assert_the_one_server_is_clean(&px).await;
}

/// With `pool_size = 1`: a new client gets the server connection, outside any
/// transaction, and Postgres reports that connection idle once it is released.
async fn assert_the_one_server_is_clean(px: &Pgmux) {
    let next = connect(&app_url(px)).await;
    assert_eq!(simple_value(&next, "select 1").await, "1");
    assert!(
        runs_in_a_fresh_transaction(&next).await,
        "the next client landed in a transaction left open"
    );
    let pid = backend_pid(&next).await;
    let idle = poll_until(DEADLINE, || backend_state(pid) == "idle");
    assert!(idle, "server {pid} is {:?}, not idle", backend_state(pid));
}

#[tokio::test]
async fn a_failed_extended_copy_ends_at_the_clients_sync_even_without_copy_done() {
    fresh_table("copy_fail_sync");
    let px = pgmux(
        "auth_method = \"trust\"\nquery_wait_timeout = \"1s\"",
        "pool_size = 1",
    );
    let mut raw = Raw::login(px.port).await;

    // Like tokio-postgres: the Sync right after Execute is ignored by the server
    // once it is in COPY mode.
    raw.send(&concat(&[
        parse("", "copy copy_fail_sync from stdin"),
        bind(""),
        execute(),
        sync(),
    ]))
    .await;
    let msgs = raw.take(3).await;
    assert_eq!(tags(&msgs), "12G", "{msgs:?}");
    raw.send(&tagged(b'd', b"not-a-number\tx\n")).await;
    let msgs = raw.take(1).await;
    assert_eq!(msgs[0].error(), ("ERROR".into(), "22P02".into()));

    // The server now discards everything up to a Sync, and answers that.
    raw.send(&sync()).await;
    let msgs = raw.until_ready().await;
    assert_eq!(tags(&msgs), "Z", "{msgs:?}");
    assert_eq!(msgs[0].tx_status(), 'I');

    assert_the_one_server_is_clean(&px).await;
    raw.send(&query("select 2")).await;
    let msgs = raw.until_ready().await;
    assert_eq!(tags(&msgs), "TDCZ", "{msgs:?}");
    assert_eq!(rows_in("copy_fail_sync"), 0);
}

/// A Query in the middle of an extended-protocol COPY ends the session, as in
/// Postgres, whose error names the Query as the message it did not expect (not a
/// message of pgmux's own); the server connection goes, and the pool makes another.
#[tokio::test]
async fn a_query_inside_an_extended_copy_ends_the_session_as_postgres_ends_it() {
    fresh_table("copy_then_query");
    let px = pgmux("auth_method = \"trust\"", "pool_size = 1");
    let mut raw = Raw::login(px.port).await;
    raw.send(&concat(&[
        parse("", "copy copy_then_query from stdin"),
        bind(""),
        execute(),
    ]))
    .await;
    let msgs = raw.take(3).await;
    assert_eq!(tags(&msgs), "12G", "{msgs:?}");
    raw.send(&concat(&[tagged(b'd', b"1\tx\n"), query("select 1")]))
        .await;
    ended_naming(&mut raw, &px, "0x51", "copy_then_query").await;
}

/// The same for a named Parse during a simple-protocol COPY: pgmux sends a Parse of a
/// name as a Close and a Parse under its own name, and the server would name the Close.
#[tokio::test]
async fn a_named_parse_inside_a_copy_ends_the_session_naming_the_parse() {
    fresh_table("copy_then_parse");
    let px = pgmux("auth_method = \"trust\"", "pool_size = 1");
    let mut raw = Raw::login(px.port).await;
    raw.send(&query("copy copy_then_parse from stdin")).await;
    let msgs = raw.take(1).await;
    assert_eq!(tags(&msgs), "G", "{msgs:?}");
    raw.send(&concat(&[
        tagged(b'd', b"1\tx\n"),
        parse("s1", "select 1"),
        sync(),
    ]))
    .await;
    ended_naming(&mut raw, &px, "0x50", "copy_then_parse").await;
}

/// Postgres ended the session at a message it did not expect during a COPY, naming
/// `message_type` (the client's, not one pgmux sent in its place); the pool serves
/// the next client, and none of the copy's rows were kept.
async fn ended_naming(raw: &mut Raw, px: &Pgmux, message_type: &str, table: &str) {
    let msgs = raw.until_closed().await;
    assert_eq!(tags(&msgs), "EE", "{msgs:?}");
    assert_eq!(msgs[0].error(), ("ERROR".into(), "08P01".into()));
    assert!(
        msgs[0].field(b'M').unwrap().contains(message_type),
        "{message_type} is named: {msgs:?}"
    );
    assert_eq!(msgs[1].error(), ("FATAL".into(), "08P01".into()));

    let client = connect(&app_url(px)).await;
    let two: i32 = client.query_one("select 2", &[]).await.unwrap().get(0);
    assert_eq!(two, 2);
    assert_eq!(rows_in(table), 0);
}

/// The protocol lets a client send a COPY's data right behind its Execute, before the
/// server asks for it, with the Sync after the CopyDone: that Sync is answered (only
/// Syncs sent during the copy are ignored), and the replies of the units after it
/// stay in step.
#[tokio::test]
async fn an_extended_copy_sent_whole_in_one_write_is_answered_once() {
    fresh_table("copy_one_write");
    let px = pgmux(
        "auth_method = \"trust\"\nquery_wait_timeout = \"1s\"",
        "pool_size = 1",
    );
    let mut raw = Raw::login(px.port).await;
    for (rows, want) in [(&b"1\tone\n2\ttwo\n"[..], "12GCZ"), (b"x\tbad\n", "12GEZ")] {
        raw.send(&concat(&[
            parse("", "copy copy_one_write from stdin"),
            bind(""),
            execute(),
            tagged(b'd', rows),
            tagged(b'c', &[]),
            sync(),
            parse("", "select 7"),
            bind(""),
            execute(),
            sync(),
        ]))
        .await;
        let msgs = raw.until_ready().await;
        assert_eq!(tags(&msgs), want, "{msgs:?}");
        assert_eq!(msgs.last().unwrap().tx_status(), 'I');
        let msgs = raw.until_ready().await;
        assert_eq!(tags(&msgs), "12DCZ", "{msgs:?}");
        assert_the_one_server_is_clean(&px).await;
    }
    assert_eq!(rows_in("copy_one_write"), 2);
}

#[tokio::test]
async fn a_copy_the_client_abandons_with_copy_fail_leaves_a_clean_server() {
    fresh_table("copy_abandoned");
    let px = pgmux(
        "auth_method = \"trust\"\nquery_wait_timeout = \"1s\"",
        "pool_size = 1",
    );

    // Simple protocol: CopyFail ends the COPY with an error and ReadyForQuery.
    let mut raw = Raw::login(px.port).await;
    raw.send(&query("copy copy_abandoned from stdin")).await;
    let msgs = raw.take(1).await;
    assert_eq!(tags(&msgs), "G", "{msgs:?}");
    raw.send(&tagged(b'd', b"1\tone\n")).await;
    let mut body = Vec::new();
    cstr(&mut body, "changed my mind");
    raw.send(&tagged(b'f', &body)).await;
    let msgs = raw.until_ready().await;
    assert_eq!(tags(&msgs), "EZ", "{msgs:?}");
    assert_eq!(msgs[0].error(), ("ERROR".into(), "57014".into()));
    assert_the_one_server_is_clean(&px).await;

    // Extended protocol: tokio-postgres sends CopyFail and Sync for a sink dropped
    // before `finish`.
    let client = connect(&app_url(&px)).await;
    let mut sink = Box::pin(
        client
            .copy_in::<_, Bytes>("copy copy_abandoned from stdin")
            .await
            .unwrap(),
    );
    sink.send(Bytes::from_static(b"2\ttwo\n")).await.unwrap();
    drop(sink);
    assert_eq!(simple_value(&client, "select 1").await, "1");
    assert_the_one_server_is_clean(&px).await;
    assert_eq!(rows_in("copy_abandoned"), 0);
}
