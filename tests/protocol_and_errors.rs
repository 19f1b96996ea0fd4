//! Transaction pooling at the protocol level, and the errors a client can see
//! (CONTRACT.md sections 3 and 4).
//!
//! Every test starts its own pgmux with the configuration it needs, against the
//! primary shared by this test binary, and uses tables of its own. Most use
//! `pool_size = 1`: with a single server connection, "who holds the server" is
//! visible from the outside — the backend pid every client sees is the same, and a
//! client that should wait either waits or, with a short `query_wait_timeout`, gets
//! `ERROR 53300`.
//!
//! Drivers never send some things a proxy must survive: statement names of our
//! choosing, a batch without Sync, malformed messages. [`Raw`] is a small
//! hand-written protocol client for those; pgmux runs with `auth_method = "trust"`
//! for it, so it logs in with a bare StartupMessage.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::error::{DbError, SqlState};
use tokio_postgres::{Client, SimpleQueryMessage};

use support::wire::{self, tagged, Message, RawClient};
use support::*;

/// The longest any single step may take before the test fails: a safety net
/// against hangs, never an assertion about speed.
const DEADLINE: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------ harness glue

/// pgmux in front of the shared primary, with `extra_proxy` lines in `[proxy]` and
/// `extra_db` lines in `[databases.app]`.
fn pgmux(extra_proxy: &str, extra_db: &str) -> Pgmux {
    start_pgmux(&pgmux_config(shared_primary(), extra_proxy, extra_db))
}

fn app_url(px: &Pgmux) -> String {
    px.url(APP_USER, APP_PASSWORD, APP_DB)
}

/// A fresh, empty table `name (id int primary key, v text)` owned by the app user.
fn fresh_table(name: &str) {
    shared_primary().sql(
        APP_DB,
        &format!(
            "drop table if exists {name}; \
             create table {name} (id int primary key, v text); \
             alter table {name} owner to {APP_USER}"
        ),
    );
}

/// Rows in `table`, counted by the superuser directly on the primary.
fn rows_in(table: &str) -> i64 {
    shared_primary()
        .sql(APP_DB, &format!("select count(*) from {table}"))
        .parse()
        .expect("count(*) is a number")
}

/// `pg_stat_activity.state` of backend `pid`, read directly on the primary.
fn backend_state(pid: i32) -> String {
    shared_primary().sql(
        "postgres",
        &format!("select state from pg_stat_activity where pid = {pid}"),
    )
}

/// The backend pid serving this statement, over the extended protocol.
async fn backend_pid(client: &Client) -> i32 {
    client
        .query_one("select pg_backend_pid()", &[])
        .await
        .expect("select pg_backend_pid()")
        .get(0)
}

/// The first column of the first row of `sql`, over the simple protocol.
async fn simple_value(client: &Client, sql: &str) -> String {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("`{sql}`: {e}"));
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or("NULL").to_owned()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("`{sql}` returned no row"))
}

/// Whether the statement that asks runs outside any transaction block: no
/// transaction id assigned, and the transaction began with this very statement.
async fn runs_in_a_fresh_transaction(client: &Client) -> bool {
    simple_value(
        client,
        "select txid_current_if_assigned() is null and now() = statement_timestamp()",
    )
    .await
        == "t"
}

/// The error the server (or pgmux) sent, from a tokio-postgres error.
fn db_error(err: &tokio_postgres::Error) -> &DbError {
    err.as_db_error()
        .unwrap_or_else(|| panic!("expected an ErrorResponse, got: {err:?}"))
}

#[track_caller]
fn assert_error(err: &tokio_postgres::Error, severity: &str, code: SqlState) {
    let db = db_error(err);
    assert_eq!(
        (db.severity(), db.code()),
        (severity, &code),
        "unexpected error: {db:?}"
    );
}

// ------------------------------------------------------------------ raw protocol

fn tags(msgs: &[Message]) -> String {
    msgs.iter().map(|m| m.tag as char).collect()
}

/// A hand-written protocol client.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(port: u16) -> Raw {
        let stream = tokio::time::timeout(DEADLINE, TcpStream::connect(("127.0.0.1", port)))
            .await
            .expect("connect within the deadline")
            .expect("connect to pgmux");
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connects and logs in as the app user (pgmux must use `auth_method = "trust"`).
    async fn login(port: u16) -> Raw {
        let mut raw = Raw::connect(port).await;
        let mut body = 196_608_i32.to_be_bytes().to_vec();
        for s in ["user", APP_USER, "database", APP_DB, ""] {
            body.extend_from_slice(s.as_bytes());
            body.push(0);
        }
        let mut packet = (body.len() as i32 + 4).to_be_bytes().to_vec();
        packet.extend_from_slice(&body);
        raw.send(&packet).await;
        let msgs = raw.until_ready().await;
        assert!(
            msgs.iter().any(|m| m.tag == b'R' && m.body == [0, 0, 0, 0]),
            "no AuthenticationOk: {msgs:?}"
        );
        raw
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write to pgmux");
    }

    /// The next message, or `None` once pgmux has closed the connection.
    async fn recv(&mut self) -> Option<Message> {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes(self.buf[1..5].try_into().expect("4 bytes"));
                let total = 1 + usize::try_from(len).expect("a sane length from pgmux");
                if self.buf.len() >= total {
                    let frame: Vec<u8> = self.buf.drain(..total).collect();
                    return Some(Message {
                        tag: frame[0],
                        body: frame[5..].to_vec(),
                    });
                }
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(DEADLINE, self.stream.read(&mut chunk))
                .await
                .expect("pgmux answered within the deadline");
            match n {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Messages up to and including the next ReadyForQuery.
    async fn until_ready(&mut self) -> Vec<Message> {
        let mut msgs = Vec::new();
        loop {
            let msg = self
                .recv()
                .await
                .unwrap_or_else(|| panic!("connection closed before ReadyForQuery: {msgs:?}"));
            let ready = msg.tag == b'Z';
            msgs.push(msg);
            if ready {
                return msgs;
            }
        }
    }

    /// The next `n` messages.
    async fn take(&mut self, n: usize) -> Vec<Message> {
        let mut msgs = Vec::new();
        while msgs.len() < n {
            let msg = self
                .recv()
                .await
                .unwrap_or_else(|| panic!("connection closed early: {msgs:?}"));
            msgs.push(msg);
        }
        msgs
    }

    /// Everything until pgmux closes the connection.
    async fn until_closed(&mut self) -> Vec<Message> {
        let mut msgs = Vec::new();
        while let Some(msg) = self.recv().await {
            msgs.push(msg);
        }
        msgs
    }
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

fn query(sql: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, sql);
    tagged(b'Q', &body)
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, name);
    cstr(&mut body, sql);
    body.extend_from_slice(&0_i16.to_be_bytes());
    tagged(b'P', &body)
}

/// Bind of the unnamed portal, no parameters, text results.
fn bind(statement: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, "");
    cstr(&mut body, statement);
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    tagged(b'B', &body)
}

/// Execute of the unnamed portal, all rows.
fn execute() -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, "");
    body.extend_from_slice(&0_i32.to_be_bytes());
    tagged(b'E', &body)
}

fn sync() -> Vec<u8> {
    tagged(b'S', &[])
}

fn flush() -> Vec<u8> {
    tagged(b'H', &[])
}

fn concat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

// ======================================================= 5. transaction pooling

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

// ======================================================= 9. errors

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
