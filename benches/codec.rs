//! Micro-benchmarks of the per-message work on pgmux's hot path.
//!
//! `cargo bench --bench codec` (about 30 s); `cargo bench --bench codec -- sql/` runs
//! one group. Under `cargo test --all-targets` each benchmark runs once, as a test.
//!
//! The inputs are what pgbench sends and receives:
//! - a select-only reply (RowDescription + DataRow + CommandComplete + ReadyForQuery),
//!   framed message by message as the relay does;
//! - the statements `client::sql::analyze` sees on every simple Query, and the
//!   fingerprint a pipelining pool keys its duration estimate by;
//! - the text of the unnamed Parse a `-M extended` client sends for every statement,
//!   read anew and as remembered (`client::sql::analyze_parse`);
//! - the Parse body a `-M prepared` client sends, named by `prepared::Statement::new`;
//! - the settings check made each time a client gets a server connection;
//! - an ErrorResponse pgmux writes itself.

use std::hint::black_box;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgmux::client::sql::{analyze, analyze_parse, fingerprint, leaves_idle};
use pgmux::protocol::build::{self, PgError};
use pgmux::protocol::{complete_frame, peek_header, SqlState};
use pgmux::server::prepared::Statement;
use pgmux::server::Settings;

const MAX_MESSAGE: usize = 64 << 20;

const SELECT_ONLY: &[u8] = b"SELECT abalance FROM pgbench_accounts WHERE aid = 12345;";
const SET: &[u8] = b"SET statement_timeout = '5s';";
const SELECT_PARSE: &[u8] = b"SELECT abalance FROM pgbench_accounts WHERE aid = $1;";
/// pgbench's TPC-B-like transaction body: five statements in one text.
const TPCB: &[u8] = b"UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 12345;\n\
SELECT abalance FROM pgbench_accounts WHERE aid = 12345;\n\
UPDATE pgbench_tellers SET tbalance = tbalance + -1234 WHERE tid = 42;\n\
UPDATE pgbench_branches SET bbalance = bbalance + -1234 WHERE bid = 7;\n\
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (42, 7, 12345, -1234, CURRENT_TIMESTAMP);";

/// What Postgres answers to pgbench's select-only Query.
fn select_only_reply() -> BytesMut {
    let mut out = BytesMut::new();
    // RowDescription: one int4 column "abalance".
    build::message(&mut out, b'T', |b| {
        b.put_i16(1);
        build::put_cstr(b, b"abalance");
        b.put_i32(16_397); // table oid
        b.put_i16(3); // column number
        b.put_i32(23); // int4
        b.put_i16(4);
        b.put_i32(-1);
        b.put_i16(0); // text
    });
    // DataRow: one value.
    build::message(&mut out, b'D', |b| {
        b.put_i16(1);
        b.put_i32(5);
        b.put_slice(b"-4711");
    });
    build::command_complete(&mut out, "SELECT 1");
    out.put_slice(&[b'Z', 0, 0, 0, 5, b'I']);
    out
}

fn framing(c: &mut Criterion) {
    let reply = select_only_reply();
    let buf: &[u8] = &reply;
    let mut g = c.benchmark_group("framing");
    g.bench_function("peek_header", |b| {
        b.iter(|| peek_header(black_box(buf), MAX_MESSAGE))
    });
    g.bench_function("complete_frame", |b| {
        b.iter(|| complete_frame(black_box(buf), MAX_MESSAGE))
    });
    g.throughput(Throughput::Bytes(buf.len() as u64));
    // Walk the whole reply message by message, noting the tag of each, the way the
    // relay finds the ReadyForQuery that ends a transaction.
    g.bench_function("scan_select_reply", |b| {
        b.iter(|| {
            let mut rest = black_box(buf);
            let mut messages = 0u32;
            let mut last_tag = 0u8;
            while let Ok(Some((tag, len))) = complete_frame(rest, MAX_MESSAGE) {
                messages += 1;
                last_tag = tag;
                rest = &rest[len..];
            }
            (messages, last_tag, rest.len())
        })
    });
    g.finish();
}

fn sql(c: &mut Criterion) {
    let mut g = c.benchmark_group("sql");
    g.bench_function("analyze_select", |b| {
        b.iter(|| analyze(black_box(SELECT_ONLY)))
    });
    g.bench_function("analyze_set", |b| b.iter(|| analyze(black_box(SET))));
    // The duration estimate's key, taken on every unit a pipelining pool sends.
    g.bench_function("fingerprint_select", |b| {
        b.iter(|| fingerprint(black_box(SELECT_ONLY)))
    });
    g.bench_function("analyze_tpcb_5_statements", |b| {
        b.iter(|| analyze(black_box(TPCB)))
    });
    // What a Parse's text costs when read anew, and when it was seen before.
    g.bench_function("parse_text_read", |b| {
        b.iter(|| {
            let text = black_box(SELECT_PARSE);
            (analyze(text), leaves_idle(text), fingerprint(text))
        })
    });
    g.bench_function("parse_text_remembered", |b| {
        b.iter(|| analyze_parse(black_box(SELECT_PARSE)))
    });
    g.finish();
}

fn prepared(c: &mut Criterion) {
    // Parse body after the statement name: query, NUL, one parameter of unspecified type.
    let mut rest = BytesMut::new();
    build::put_cstr(
        &mut rest,
        b"SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
    );
    rest.put_i16(1);
    rest.put_i32(0);
    c.bench_function("prepared/statement_new", |b| {
        b.iter(|| Statement::new(black_box(&rest), b"", 0))
    });
}

fn settings(c: &mut Criterion) {
    let pairs = [
        ("application_name", "pgbench"),
        ("client_encoding", "UTF8"),
        ("datestyle", "ISO, MDY"),
    ];
    let client = Settings::from_pairs(pairs);
    let same_arc = client.clone();
    let equal = Settings::from_pairs(pairs);
    let mut g = c.benchmark_group("settings");
    // The server connection last served this very client: a pointer comparison.
    g.bench_function("sync_sql_equal_shared", |b| {
        b.iter(|| black_box(&client).sync_sql(black_box(&same_arc)))
    });
    // Another client with the same settings: the maps are compared.
    g.bench_function("sync_sql_equal_separate", |b| {
        b.iter(|| black_box(&client).sync_sql(black_box(&equal)))
    });
    g.finish();
}

fn errors(c: &mut Criterion) {
    let err = PgError::error(
        SqlState::TOO_MANY_CONNECTIONS,
        "no server connection for database \"bench\" became free within query_wait_timeout (30s)",
    )
    .with_hint("raise pool_size or query_wait_timeout, or make transactions shorter");
    let mut out = BytesMut::with_capacity(512);
    c.bench_function("errors/error_response_encode", |b| {
        b.iter(|| {
            out.clear();
            black_box(&err).encode(&mut out);
            out.len()
        })
    });
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = framing, sql, prepared, settings, errors
}
criterion_main!(benches);
