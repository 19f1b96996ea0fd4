//! Helpers of the protocol-level tests (`tests/protocol.rs`, `tests/errors.rs`):
//! pgmux in front of the shared primary, small queries against it, and [`Raw`], a
//! hand-written protocol client for what drivers never send.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::error::{DbError, SqlState};
use tokio_postgres::{Client, SimpleQueryMessage};

use super::wire::{self, tagged, Message};
use super::*;

/// The longest any single step may take before the test fails: a safety net
/// against hangs, never an assertion about speed.
pub const DEADLINE: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------ harness glue

/// pgmux in front of the shared primary, with `extra_proxy` lines in `[proxy]` and
/// `extra_db` lines in `[databases.app]`.
pub fn pgmux(extra_proxy: &str, extra_db: &str) -> Pgmux {
    start_pgmux(&pgmux_config(shared_primary(), extra_proxy, extra_db))
}

pub fn app_url(px: &Pgmux) -> String {
    px.url(APP_USER, APP_PASSWORD, APP_DB)
}

/// A fresh, empty table `name (id int primary key, v text)` owned by the app user.
pub fn fresh_table(name: &str) {
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
pub fn rows_in(table: &str) -> i64 {
    shared_primary()
        .sql(APP_DB, &format!("select count(*) from {table}"))
        .parse()
        .expect("count(*) is a number")
}

/// `pg_stat_activity.state` of backend `pid`, read directly on the primary.
pub fn backend_state(pid: i32) -> String {
    shared_primary().sql(
        "postgres",
        &format!("select state from pg_stat_activity where pid = {pid}"),
    )
}

/// The backend pid serving this statement, over the extended protocol.
pub async fn backend_pid(client: &Client) -> i32 {
    client
        .query_one("select pg_backend_pid()", &[])
        .await
        .expect("select pg_backend_pid()")
        .get(0)
}

/// The first column of the first row of `sql`, over the simple protocol.
pub async fn simple_value(client: &Client, sql: &str) -> String {
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
pub async fn runs_in_a_fresh_transaction(client: &Client) -> bool {
    simple_value(
        client,
        "select txid_current_if_assigned() is null and now() = statement_timestamp()",
    )
    .await
        == "t"
}

/// The error the server (or pgmux) sent, from a tokio-postgres error.
pub fn db_error(err: &tokio_postgres::Error) -> &DbError {
    err.as_db_error()
        .unwrap_or_else(|| panic!("expected an ErrorResponse, got: {err:?}"))
}

#[track_caller]
pub fn assert_error(err: &tokio_postgres::Error, severity: &str, code: SqlState) {
    let db = db_error(err);
    assert_eq!(
        (db.severity(), db.code()),
        (severity, &code),
        "unexpected error: {db:?}"
    );
}

// ------------------------------------------------------------------ raw protocol

pub fn tags(msgs: &[Message]) -> String {
    msgs.iter().map(|m| m.tag as char).collect()
}

/// A hand-written protocol client.
pub struct Raw {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
}

impl Raw {
    pub async fn connect(port: u16) -> Raw {
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
    pub async fn login(port: u16) -> Raw {
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

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write to pgmux");
    }

    /// The next message, or `None` once pgmux has closed the connection.
    pub async fn recv(&mut self) -> Option<Message> {
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
    pub async fn until_ready(&mut self) -> Vec<Message> {
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
    pub async fn take(&mut self, n: usize) -> Vec<Message> {
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
    pub async fn until_closed(&mut self) -> Vec<Message> {
        let mut msgs = Vec::new();
        while let Some(msg) = self.recv().await {
            msgs.push(msg);
        }
        msgs
    }
}

pub fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

pub fn query(sql: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, sql);
    tagged(b'Q', &body)
}

pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, name);
    cstr(&mut body, sql);
    body.extend_from_slice(&0_i16.to_be_bytes());
    tagged(b'P', &body)
}

/// Bind of the unnamed portal, no parameters, text results.
pub fn bind(statement: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, "");
    cstr(&mut body, statement);
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    tagged(b'B', &body)
}

/// Execute of the unnamed portal, all rows.
pub fn execute() -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, "");
    body.extend_from_slice(&0_i32.to_be_bytes());
    tagged(b'E', &body)
}

pub fn sync() -> Vec<u8> {
    tagged(b'S', &[])
}

pub fn flush() -> Vec<u8> {
    tagged(b'H', &[])
}

pub fn concat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// How [`unnamed_batch`] sends its statements.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// One unit, one Sync at its end, as a driver's batch.
    OneUnit,
    /// A unit each, pipelined, each failing (division by zero) on execution.
    FailingUnits,
}

/// Logs in to pgmux (`auth_method = "trust"`) over `stream`, then sends `n` unnamed
/// statements (Parse, Bind, Execute each) shaped as `batch` says, behind a
/// `pg_sleep(1)` that keeps the server busy while pgmux reads them; checks that
/// `other` is answered meanwhile and that every statement's reply comes, all within
/// [`DEADLINE`].
pub async fn unnamed_batch<S>(stream: S, n: usize, batch: Batch, other: &Client)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut replies, mut wr) = Replies::login(stream).await;

    let each_unit = batch == Batch::FailingUnits;
    let mut msgs = vec![parse("", "select pg_sleep(1)"), bind(""), execute()];
    for i in 0..n {
        if each_unit {
            msgs.push(sync());
            msgs.extend([parse("", &format!("select {i}/0")), bind(""), execute()]);
        } else {
            msgs.extend([parse("", &format!("select {i}")), bind(""), execute()]);
        }
    }
    msgs.push(sync());
    let bytes = concat(&msgs);
    let writer = tokio::spawn(async move {
        wr.write_all(&bytes).await.expect("send the batch");
        wr
    });
    let answer = tokio::time::timeout(DEADLINE, other.query_one("select 42", &[]))
        .await
        .expect("another client is answered while the batch is read")
        .expect("select 42");
    assert_eq!(answer.get::<_, i32>(0), 42);

    // The batch is one step for the deadline: a cost that grows with the square of
    // its size shows as replies that keep coming, too slowly.
    let units = if each_unit { n + 1 } else { 1 };
    let (completes, errors) = tokio::time::timeout(DEADLINE, async {
        let (mut completes, mut errors, mut readies) = (0, 0, 0);
        while readies < units {
            match replies.next().await {
                b'C' => completes += 1,
                b'E' => errors += 1,
                b'Z' => readies += 1,
                _ => {}
            }
        }
        (completes, errors)
    })
    .await
    .expect("the batch's replies all come within the deadline");
    match batch {
        Batch::OneUnit => assert_eq!((completes, errors), (n + 1, 0)),
        Batch::FailingUnits => assert_eq!((completes, errors), (1, n)),
    }
    drop(writer.await.expect("the batch's writer ends"));
}

/// Logs in to pgmux (`auth_method = "trust"`) over `stream` and pipelines `n`
/// autocommit `SET work_mem` Queries behind a `pg_sleep(1)`, then `SHOW work_mem`;
/// returns what that shows, once every reply has come within [`DEADLINE`].
pub async fn pipelined_sets<S>(stream: S, n: usize) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut replies, mut wr) = Replies::login(stream).await;
    let mut msgs = vec![query("select pg_sleep(1)")];
    msgs.extend((0..n).map(|i| query(&format!("set work_mem = '{}kB'", 64 + i % 100))));
    msgs.push(query("show work_mem"));
    let bytes = concat(&msgs);
    let writer = tokio::spawn(async move {
        wr.write_all(&bytes).await.expect("send the queries");
        wr
    });
    let shown = tokio::time::timeout(DEADLINE, async {
        let mut readies = 0;
        loop {
            match replies.next().await {
                b'Z' if readies == n + 1 => return replies.last_row.take(),
                b'Z' => readies += 1,
                b'E' => panic!("an error among the pipelined SETs"),
                _ => {}
            }
        }
    })
    .await
    .expect("the replies all come within the deadline");
    drop(writer.await.expect("the writer ends"));
    shown.expect("SHOW work_mem returned a row")
}

/// Messages read off a stream, each read within [`DEADLINE`].
struct Replies<R> {
    rd: R,
    buf: Vec<u8>,
    /// The first column of the last DataRow read, as text.
    last_row: Option<String>,
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite> Replies<tokio::io::ReadHalf<S>> {
    /// Logs in over `stream` (`auth_method = "trust"`): its replies, and its write half.
    async fn login(stream: S) -> (Self, tokio::io::WriteHalf<S>) {
        let (rd, mut wr) = tokio::io::split(stream);
        let mut replies = Replies {
            rd,
            buf: Vec::new(),
            last_row: None,
        };
        wr.write_all(&wire::startup_message(&[
            ("user", APP_USER),
            ("database", APP_DB),
        ]))
        .await
        .expect("send the startup message");
        while replies.next().await != b'Z' {}
        (replies, wr)
    }
}

impl<R: tokio::io::AsyncRead + Unpin> Replies<R> {
    /// The tag of the next message; panics on a close.
    async fn next(&mut self) -> u8 {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes(self.buf[1..5].try_into().expect("4 bytes"));
                let end = 1 + usize::try_from(len).expect("a sane length");
                if self.buf.len() >= end {
                    let tag = self.buf[0];
                    if tag == b'D' && end >= 11 {
                        // One column: its length (4 bytes) after the count (2).
                        self.last_row =
                            Some(String::from_utf8_lossy(&self.buf[11..end]).into_owned());
                    }
                    self.buf.drain(..end);
                    return tag;
                }
            }
            let mut chunk = [0u8; 65536];
            let read = tokio::time::timeout(DEADLINE, self.rd.read(&mut chunk))
                .await
                .expect("pgmux's replies keep coming")
                .expect("read pgmux's replies");
            assert!(read > 0, "pgmux closed the connection");
            self.buf.extend_from_slice(&chunk[..read]);
        }
    }
}
