//! Named prepared statements in transaction mode (CONTRACT.md section 3): a statement
//! a client prepared runs on whichever server connection its next transaction gets,
//! two clients' statements of the same name never meet, a bounded server-side cache
//! evicts and re-prepares transparently, and `DEALLOCATE`/`DISCARD ALL` forget the
//! client's statements. Real drivers — tokio-postgres, pgbench `-M prepared`,
//! asyncpg, psycopg 3 and JDBC — run many clients on a pool of two.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::extended;
use support::session::Steering;
use support::*;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

/// Clients per test that runs many of them.
const CLIENTS: i32 = 20;
/// How long one driver script (Python, Java) may run.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(600);

fn app_url(px: &Pgmux) -> String {
    px.url(APP_USER, APP_PASSWORD, APP_DB)
}

/// A fresh table `name (client int, i int)` owned by the app role.
fn fresh_table(pg: &PgServer, name: &str) {
    pg.sql(
        APP_DB,
        &format!(
            "drop table if exists {name}; create table {name} (client int, i int); \
             alter table {name} owner to {APP_USER}"
        ),
    );
}

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Runs `cmd`, and fails the test with its output unless it exits 0.
fn run_script(cmd: &mut Command, what: &str, px: &Pgmux) -> String {
    let out = support::process::run(cmd, SCRIPT_DEADLINE, what);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{}\n--- pgmux log ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        px.log()
    );
    stdout
}

async fn int(client: &Client, stmt: &tokio_postgres::Statement, arg: i32) -> i32 {
    client.query_one(stmt, &[&arg]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_are_reused_across_transactions_by_20_clients_on_2_connections() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", "pool_size = 2"));
    let url = app_url(&px);

    let mut tasks = Vec::new();
    for n in 0..CLIENTS {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = connect(&url).await;
            // Text unique to this client: a mix-up with another client's statement of
            // the same name would give another client's answer.
            let add = client
                .prepare(&format!("select $1::int + {}", n * 1000))
                .await
                .unwrap();
            let tag = client
                .prepare(&format!("select $1::text || '-client-{n}'"))
                .await
                .unwrap();
            // The same text in every client: one server-side statement, shared.
            let double = client.prepare("select $1::int * 2").await.unwrap();
            for i in 0..25 {
                assert_eq!(int(&client, &add, i).await, i + n * 1000);
                let row = client.query_one(&tag, &[&i.to_string()]).await.unwrap();
                assert_eq!(row.get::<_, String>(0), format!("{i}-client-{n}"));
                assert_eq!(int(&client, &double, i).await, 2 * i);
                // Pipelined: both go out before either is answered.
                let next = i + 1;
                let params: [&(dyn ToSql + Sync); 1] = [&next];
                let (a, d) = tokio::join!(
                    client.query_one(&add, &params),
                    client.query_one(&double, &params)
                );
                assert_eq!(a.unwrap().get::<_, i32>(0), i + 1 + n * 1000);
                assert_eq!(d.unwrap().get::<_, i32>(0), 2 * (i + 1));
                if i % 5 == 0 {
                    let txn = client.transaction().await.unwrap();
                    let a: i32 = txn.query_one(&add, &[&i]).await.unwrap().get(0);
                    let d: i32 = txn.query_one(&double, &[&i]).await.unwrap().get(0);
                    txn.commit().await.unwrap();
                    assert_eq!((a, d), (i + n * 1000, 2 * i));
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("a client task failed");
    }
}

#[tokio::test]
async fn a_statement_prepared_on_one_connection_runs_on_the_other() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", "pool_size = 2"));
    let url = app_url(&px);
    let steer = Steering::new(&url).await;
    let client = connect(&url).await;

    steer.free(0).await;
    let stmt = client
        .prepare("select $1::int + 5, pg_backend_pid()")
        .await
        .unwrap();
    let row = client.query_one(&stmt, &[&1i32]).await.unwrap();
    assert_eq!(
        (row.get::<_, i32>(0), row.get::<_, i32>(1)),
        (6, steer.pids[0])
    );
    steer.retake(0, &[]).await;

    for round in 0..3 {
        for conn in [1, 0] {
            steer.free(conn).await;
            let row = client.query_one(&stmt, &[&round]).await.unwrap();
            assert_eq!(
                (row.get::<_, i32>(0), row.get::<_, i32>(1)),
                (round + 5, steer.pids[conn]),
                "round {round} on connection {conn}"
            );
            steer.retake(conn, &[]).await;
        }
    }
}

#[test]
fn two_clients_statements_of_the_same_name_never_collide() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", "pool_size = 1"));
    let mut a = extended::Wire::connect(px.port);
    let mut b = extended::Wire::connect(px.port);

    a.prepare("s", "select 1000 + $1::int");
    b.prepare("s", "select 2000 + $1::int");
    a.prepare("t", "select 'a:' || $1::text");
    b.prepare("t", "select 'b:' || $1::text");
    for i in 0..20 {
        let arg = i.to_string();
        assert_eq!(a.execute("s", &[&arg]), vec![(1000 + i).to_string()]);
        assert_eq!(b.execute("s", &[&arg]), vec![(2000 + i).to_string()]);
        assert_eq!(b.execute("t", &[&arg]), vec![format!("b:{i}")]);
        assert_eq!(a.execute("t", &[&arg]), vec![format!("a:{i}")]);
        if i % 4 == 0 {
            // Inside transactions, both clients still get their own statements.
            a.simple("begin");
            assert_eq!(a.execute("s", &[&arg]), vec![(1000 + i).to_string()]);
            a.simple("commit");
            b.simple("begin");
            assert_eq!(b.execute("s", &[&arg]), vec![(2000 + i).to_string()]);
            b.simple("commit");
        }
    }

    // A name closed by one client may be prepared again with another text; the
    // other client's statement of that name is untouched.
    a.close_statement("s");
    a.prepare("s", "select 3000 + $1::int");
    assert_eq!(a.execute("s", &["1"]), vec!["3001".to_string()]);
    assert_eq!(b.execute("s", &["1"]), vec!["2001".to_string()]);
    assert_eq!(a.execute("t", &["1"]), vec!["a:1".to_string()]);
}

/// `DEALLOCATE` of a protocol-level statement reaches the server under the name the
/// server knows it by: over the extended protocol (libpq's `PQexecParams`, psycopg in
/// pipeline mode) and pipelined behind another statement, inside a transaction that
/// still commits afterwards.
#[test]
fn deallocate_of_a_protocol_statement_works_over_the_extended_protocol_and_pipelined() {
    let pg = shared_primary();
    fresh_table(pg, "dealloc_ext");
    let px = start_pgmux(&pgmux_config(pg, "", "pool_size = 1"));
    let mut w = extended::Wire::connect(px.port);
    let code = |r: extended::Reply| r.error.map(|e| e.0);

    w.prepare("s1", "select 11");
    assert_eq!(w.execute("s1", &[]), ["11"]);
    w.prepare("", "DEALLOCATE s1");
    assert_eq!(code(w.try_execute("", &[])), None);
    assert_eq!(code(w.try_execute("s1", &[])).as_deref(), Some("26000"));
    w.prepare("s1", "select 12");
    assert_eq!(w.execute("s1", &[]), ["12"]);

    w.simple("begin");
    w.simple("insert into dealloc_ext values (1, 1)");
    w.prepare("", "DEALLOCATE PREPARE s1");
    let reply = w.try_execute("", &[]);
    assert_eq!((reply.error, reply.status), (None, 'T'));
    w.prepare("s2", "select 21");
    let replies = w.pipeline_simple(&["select 1", "DEALLOCATE s2"]);
    for r in &replies {
        assert_eq!((&r.error, r.status), (&None, 'T'));
    }
    w.simple("commit");
    assert_eq!(pg.sql(APP_DB, "select count(*) from dealloc_ext"), "1");
    assert_eq!(code(w.try_execute("s2", &[])).as_deref(), Some("26000"));
    assert_eq!(code(w.try_execute("s1", &[])).as_deref(), Some("26000"));
}

/// Clients whose `search_path` differ get the same text prepared as different
/// statements, each against its own schema's table, on the one server connection
/// they share. Sharing one, Postgres would parse it again under the other path and
/// refuse to run it when its columns then differ (0A000), which it never does to a
/// client of its own. Likewise for `DateStyle`, which Postgres applies when it parses
/// a literal date: a shared statement would give one client the other's date.
#[test]
fn the_same_text_under_other_parse_settings_is_another_statement() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", "pool_size = 1"));
    let (mut a, mut b) = (
        extended::Wire::connect(px.port),
        extended::Wire::connect(px.port),
    );
    a.simple(
        "drop schema if exists path_a, path_b cascade; \
         create schema path_a; create table path_a.t (x int); insert into path_a.t values (1); \
         create schema path_b; create table path_b.t (y text, z text); \
         insert into path_b.t values ('b', 'bb')",
    );
    a.simple("set search_path = path_a");
    b.simple("set search_path = path_b");
    a.prepare("s", "select * from t");
    b.prepare("s", "select * from t");
    for _ in 0..3 {
        assert_eq!(a.execute("s", &[]), ["1"]);
        assert_eq!(b.execute("s", &[]), ["b"]);
    }
    a.simple("drop schema path_a, path_b cascade");

    let (mut dmy, mut mdy) = (
        extended::Wire::connect(px.port),
        extended::Wire::connect(px.port),
    );
    dmy.simple("set datestyle = 'ISO, DMY'");
    mdy.simple("set datestyle = 'ISO, MDY'");
    dmy.prepare("d", "select '01/02/2020'::date::text");
    mdy.prepare("d", "select '01/02/2020'::date::text");
    for _ in 0..3 {
        assert_eq!(dmy.execute("d", &[]), ["2020-02-01"]);
        assert_eq!(mdy.execute("d", &[]), ["2020-01-02"]);
    }
}

/// Two clients on one server connection that holds two prepared statements.
fn two_clients_on_two_slots() -> (Pgmux, extended::Wire, extended::Wire) {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(
        pg,
        "max_prepared_statements = 2",
        "pool_size = 1",
    ));
    let (a, b) = (
        extended::Wire::connect(px.port),
        extended::Wire::connect(px.port),
    );
    (px, a, b)
}

/// Prepares and runs three statements of `client`'s own, `other0` to `other2`.
fn prepare_three_others(client: &mut extended::Wire) {
    for k in 0..3 {
        client.prepare(&format!("other{k}"), &format!("select {k}"));
        assert_eq!(client.execute(&format!("other{k}"), &[]), [k.to_string()]);
    }
}

/// SQL `EXECUTE` of a protocol-level statement (asyncpg's `prepare(name=…)`, then
/// `fetchval('EXECUTE name')`) runs the client's own statement: by simple Query, and
/// inside unnamed and named statements, which prepare it again wherever it is gone.
#[test]
fn sql_execute_runs_the_clients_protocol_level_statement() {
    let (_px, mut a, mut b) = two_clients_on_two_slots();
    a.prepare("foobar", "select 'a' || $1::text");
    b.prepare("foobar", "select 'b'");

    assert_eq!(a.simple("EXECUTE foobar('x')"), ["ax"]);
    assert_eq!(b.simple("execute FOOBAR;"), ["b"]);
    a.prepare("", "EXECUTE foobar('y')");
    assert_eq!(a.execute("", &[]), ["ay"]);
    a.prepare("via_execute", "EXECUTE foobar('z')");
    assert_eq!(a.execute("via_execute", &[]), ["az"]);

    // Other statements push both of a's out of the connection's two slots.
    prepare_three_others(&mut b);
    assert_eq!(a.execute("via_execute", &[]), ["az"]);
    for k in 0..3 {
        assert_eq!(b.execute(&format!("other{k}"), &[]), [k.to_string()]);
    }
    assert_eq!(a.execute("", &[]), ["ay"]);

    // A name the client never prepared is Postgres' error.
    a.prepare("", "EXECUTE nobody_prepared_this");
    let missing = a.try_execute("", &[]);
    assert_eq!(missing.error.map(|e| e.0).as_deref(), Some("26000"));
    assert_eq!(a.simple("EXECUTE foobar('again')"), ["aagain"]);
}

/// A multi-statement text runs each `EXECUTE` of the client's own statements, whatever
/// else the text holds, as Postgres would.
#[test]
fn sql_execute_among_other_statements_runs_the_clients_statements() {
    let (_px, mut a, mut b) = two_clients_on_two_slots();
    a.prepare("foobar", "select 'a' || $1::text");
    a.prepare("two", "select 2");
    b.prepare("foobar", "select 'b'");

    assert_eq!(
        a.simple("select 'first'; EXECUTE foobar('x'); select 'execute foobar'"),
        ["first", "ax", "execute foobar"]
    );
    assert_eq!(a.simple("execute two; Execute FOOBAR('y');"), ["2", "ay"]);
    assert_eq!(b.simple("select 0; execute foobar"), ["0", "b"]);
    // Other statements push a's out of the connection's two slots.
    prepare_three_others(&mut b);
    assert_eq!(
        a.simple("explain (costs off) execute two; execute two"),
        ["Result", "2"]
    );
}

/// `EXPLAIN … EXECUTE name` of a protocol-level statement (what sqlx's `describe`
/// runs to learn which columns may be null) explains the client's own statement,
/// on whichever connection it runs, also after the statement left that connection.
#[test]
fn explain_execute_explains_the_clients_protocol_level_statement() {
    let (_px, mut a, mut b) = two_clients_on_two_slots();
    a.prepare("s_1", "select relname from pg_class where relname = $1");
    b.prepare("s_1", "select proname from pg_proc");
    let plan = |rows: Vec<String>| rows.join("\n");

    let a_plan = plan(a.simple("EXPLAIN (COSTS OFF) EXECUTE s_1('pg_type')"));
    assert!(a_plan.contains("pg_class"), "{a_plan}");
    let b_plan = plan(b.simple("explain execute S_1;"));
    assert!(b_plan.contains("pg_proc"), "{b_plan}");

    a.prepare(
        "explain_s_1",
        "EXPLAIN (VERBOSE, FORMAT JSON) EXECUTE s_1('pg_type')",
    );
    let json = plan(a.execute("explain_s_1", &[]));
    assert!(json.contains("\"pg_class\""), "{json}");
    // Other statements push both of a's out of the connection's two slots.
    prepare_three_others(&mut b);
    let again = plan(a.execute("explain_s_1", &[]));
    assert_eq!(again, json);
    let analyzed = plan(a.simple("EXPLAIN ANALYZE VERBOSE EXECUTE s_1('pg_proc')"));
    assert!(analyzed.contains("pg_class"), "{analyzed}");

    a.prepare("", "EXPLAIN EXECUTE nobody_prepared_this");
    let missing = a.try_execute("", &[]);
    assert_eq!(missing.error.map(|e| e.0).as_deref(), Some("26000"));
    assert!(plan(a.simple("EXPLAIN EXECUTE s_1('x')")).contains("pg_class"));
}

#[tokio::test]
async fn statements_beyond_max_prepared_statements_are_evicted_and_prepared_again() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(
        pg,
        "max_prepared_statements = 5",
        "pool_size = 1",
    ));
    let client = connect(&app_url(&px)).await;
    let mut stmts = Vec::new();
    for k in 0..20 {
        stmts.push(
            client
                .prepare(&format!("select $1::int + {}", k * 100))
                .await
                .unwrap(),
        );
    }
    let count_on_server = client
        .prepare("select count(*)::int from pg_prepared_statements")
        .await
        .unwrap();
    for round in 0..3 {
        for (k, stmt) in stmts.iter().enumerate() {
            assert_eq!(
                int(&client, stmt, round).await,
                round + k as i32 * 100,
                "statement {k} in round {round}"
            );
        }
        // Pipelined, in reverse order: every one of them evicts another.
        let reversed: Vec<_> = stmts.iter().rev().collect();
        let answers = pipelined(&client, &reversed, round).await;
        for (k, answer) in (0..stmts.len()).rev().zip(answers) {
            assert_eq!(answer, round + k as i32 * 100, "pipelined statement {k}");
        }
        let held: i32 = client
            .query_one(&count_on_server, &[])
            .await
            .unwrap()
            .get(0);
        assert!(
            (1..=5).contains(&held),
            "the server connection holds {held} prepared statements; max_prepared_statements is 5"
        );
    }
}

/// Runs every statement with `arg`, all sent before any answer is read.
async fn pipelined(client: &Client, stmts: &[&tokio_postgres::Statement], arg: i32) -> Vec<i32> {
    let params: [&(dyn ToSql + Sync); 1] = [&arg];
    let futs: Vec<_> = stmts
        .iter()
        .map(|s| Box::pin(client.query_one(*s, &params)))
        .collect();
    join_all(futs)
        .await
        .into_iter()
        .map(|r| r.unwrap().get(0))
        .collect()
}

/// Polls every future together until all are done (a tiny `join_all`): tokio-postgres
/// sends a request when its future is first polled, so they share one pipeline.
async fn join_all<F: std::future::Future + Unpin>(mut futs: Vec<F>) -> Vec<F::Output> {
    let mut outs: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (fut, out) in futs.iter_mut().zip(outs.iter_mut()) {
            if out.is_none() {
                match std::pin::Pin::new(fut).poll(cx) {
                    std::task::Poll::Ready(v) => *out = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outs.into_iter().map(|o| o.expect("all done")).collect()
}

/// The protocol-level name tokio-postgres gave `stmt` (`s0`, `s1`, ...), which it
/// shows only in its `Debug` output.
fn name_of(stmt: &tokio_postgres::Statement) -> String {
    let debug = format!("{stmt:?}");
    let name = debug
        .split("name: \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no statement name in {debug}"));
    assert!(name.starts_with('s'), "unexpected statement name {name:?}");
    name.to_string()
}

fn assert_gone(result: Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>, what: &str) {
    let err = result.expect_err(&format!("{what} must no longer exist"));
    assert_eq!(
        err.code(),
        Some(&SqlState::INVALID_SQL_STATEMENT_NAME),
        "{what}: {err}"
    );
    let db = err.as_db_error().expect("a server error");
    assert!(
        db.message().contains("does not exist"),
        "{what}: {}",
        db.message()
    );
}

#[tokio::test]
async fn deallocate_forgets_that_statement_only() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", "pool_size = 2"));
    let client = connect(&app_url(&px)).await;
    let gone = client.prepare("select $1::int + 1").await.unwrap();
    let kept = client.prepare("select $1::int + 2").await.unwrap();
    assert_eq!(int(&client, &gone, 1).await, 2);

    client
        .batch_execute(&format!("DEALLOCATE {}", name_of(&gone)))
        .await
        .unwrap();
    assert_gone(
        client.query(&gone, &[&1i32]).await,
        "the deallocated statement",
    );
    assert_eq!(int(&client, &kept, 1).await, 3);
    // The same text prepared again works.
    let again = client.prepare("select $1::int + 1").await.unwrap();
    assert_eq!(int(&client, &again, 5).await, 6);
}

#[tokio::test]
async fn deallocate_prepare_name_inside_a_transaction_forgets_the_statement() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", "pool_size = 2"));
    let client = connect(&app_url(&px)).await;
    let gone = client.prepare("select $1::int + 11").await.unwrap();
    let kept = client.prepare("select $1::int + 12").await.unwrap();
    assert_eq!(int(&client, &gone, 1).await, 12);

    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute(&format!("DEALLOCATE PREPARE {}", name_of(&gone)))
        .await
        .unwrap();
    assert_eq!(int(&client, &kept, 1).await, 13);
    client.batch_execute("COMMIT").await.unwrap();

    assert_gone(
        client.query(&gone, &[&1i32]).await,
        "the deallocated statement",
    );
    assert_eq!(int(&client, &kept, 2).await, 14);
}

#[tokio::test]
async fn deallocate_all_forgets_every_statement_of_the_client() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", "pool_size = 2"));
    let client = connect(&app_url(&px)).await;
    let other = connect(&app_url(&px)).await;
    let s1 = client.prepare("select $1::int + 21").await.unwrap();
    let s2 = client.prepare("select $1::int + 22").await.unwrap();
    // Another client with the same text shares the server-side statement.
    let theirs = other.prepare("select $1::int + 21").await.unwrap();
    assert_eq!(int(&client, &s1, 0).await, 21);
    assert_eq!(int(&client, &s2, 0).await, 22);

    client.batch_execute("DEALLOCATE ALL").await.unwrap();
    assert_gone(client.query(&s1, &[&0i32]).await, "s1 after DEALLOCATE ALL");
    assert_gone(client.query(&s2, &[&0i32]).await, "s2 after DEALLOCATE ALL");
    assert_eq!(int(&other, &theirs, 1).await, 22);
    let again = client.prepare("select $1::int + 22").await.unwrap();
    assert_eq!(int(&client, &again, 1).await, 23);
}

#[tokio::test]
async fn deallocate_all_inside_a_transaction_leaves_other_clients_statements_working() {
    let pg = shared_primary();
    // One server connection: both clients' statements live on it.
    let px = start_pgmux(&pgmux_config(pg, "", "pool_size = 1"));
    let client = connect(&app_url(&px)).await;
    let other = connect(&app_url(&px)).await;
    let mine = client.prepare("select $1::int * 3").await.unwrap();
    let theirs = other.prepare("select $1::int * 3").await.unwrap();
    let theirs_too = other.prepare("select $1::int * 4").await.unwrap();
    assert_eq!(int(&client, &mine, 2).await, 6);
    assert_eq!(int(&other, &theirs, 2).await, 6);
    assert_eq!(int(&other, &theirs_too, 2).await, 8);

    client.batch_execute("BEGIN").await.unwrap();
    client.batch_execute("DEALLOCATE ALL").await.unwrap();
    client.batch_execute("COMMIT").await.unwrap();

    assert_gone(
        client.query(&mine, &[&1i32]).await,
        "the statement after DEALLOCATE ALL",
    );
    assert_eq!(int(&other, &theirs, 3).await, 9);
    assert_eq!(int(&other, &theirs_too, 3).await, 12);
    let again = client.prepare("select $1::int * 3").await.unwrap();
    assert_eq!(int(&client, &again, 4).await, 12);
}

#[tokio::test]
async fn a_refused_discard_all_inside_a_transaction_leaves_statements_working() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", "pool_size = 1"));
    let client = connect(&app_url(&px)).await;
    let other = connect(&app_url(&px)).await;
    let theirs = other.prepare("select $1::int * 5").await.unwrap();
    assert_eq!(int(&other, &theirs, 1).await, 5);

    client.batch_execute("BEGIN").await.unwrap();
    let err = client
        .batch_execute("DISCARD ALL")
        .await
        .expect_err("DISCARD ALL cannot run inside a transaction block");
    assert_eq!(err.code(), Some(&SqlState::ACTIVE_SQL_TRANSACTION), "{err}");
    client.batch_execute("ROLLBACK").await.unwrap();

    // The server connection still holds the statement: preparing the same text
    // again, or running the old one, must both work.
    assert_eq!(int(&other, &theirs, 2).await, 10);
    let again = client.prepare("select $1::int * 5").await.unwrap();
    assert_eq!(int(&client, &again, 3).await, 15);
}

#[tokio::test]
async fn discard_all_forgets_every_statement_of_the_client() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", "pool_size = 2"));
    let client = connect(&app_url(&px)).await;
    let other = connect(&app_url(&px)).await;
    let s1 = client.prepare("select $1::int + 31").await.unwrap();
    let s2 = client.prepare("select $1::text || 'x'").await.unwrap();
    let theirs = other.prepare("select $1::int + 31").await.unwrap();
    assert_eq!(int(&client, &s1, 0).await, 31);

    client.batch_execute("DISCARD ALL").await.unwrap();
    assert_gone(client.query(&s1, &[&0i32]).await, "s1 after DISCARD ALL");
    assert_gone(
        client.query(&s2, &[&"a".to_string()]).await,
        "s2 after DISCARD ALL",
    );
    assert_eq!(int(&other, &theirs, 1).await, 32);
    let again = client.prepare("select $1::int + 31").await.unwrap();
    assert_eq!(int(&client, &again, 1).await, 32);
}

#[test]
fn pgbench_prepared_with_20_clients_on_2_connections_has_no_failures() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", "pool_size = 2"));
    let url = app_url(&px);
    let init = pgbench(
        &[
            "-i",
            "-q",
            "-s",
            "1",
            &pg.url(APP_USER, APP_PASSWORD, APP_DB),
        ],
        &[],
    );
    assert!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );

    // pgbench prepares a client's statements with a blocking PQprepare, which stalls
    // every client of that thread: with fewer threads than clients, a client holding a
    // server connection mid-transaction can wait on a thread blocked for a connection
    // (a deadlock any transaction pooler gets). Multi-statement transactions therefore
    // run one thread per client; single-statement ones hold no connection across
    // round trips and run on 2 threads.
    for script in [
        &["-b", "tpcb-like", "-j", "20"][..],
        &["-b", "select-only", "-j", "2"][..],
    ] {
        let mut args = vec!["-n", "-M", "prepared", "-c", "20", "-t", "50"];
        args.extend_from_slice(script);
        args.push(&url);
        let out = pgbench(&args, &[]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "pgbench {args:?} failed:\n{stdout}\n{stderr}\n--- pgmux log ---\n{}",
            px.log()
        );
        assert!(
            stdout.contains("number of transactions actually processed: 1000/1000"),
            "{stdout}\n{stderr}"
        );
        assert!(
            stdout.contains("number of failed transactions: 0 "),
            "{stdout}\n{stderr}"
        );
    }
}

#[test]
fn asyncpg_statement_cache_works_with_20_connections_on_2_server_connections() {
    let pg = shared_primary();
    fresh_table(pg, "asyncpg_prepared");
    let px = start_pgmux(&pgmux_config(pg, "", "pool_size = 2"));
    let stdout = run_script(
        Command::new(python())
            .arg(repo_file("tests/python/asyncpg_prepared.py"))
            .arg(app_url(&px))
            .arg(CLIENTS.to_string()),
        "tests/python/asyncpg_prepared.py",
        &px,
    );
    assert!(stdout.contains("asyncpg ok"), "{stdout}");
    let rows = pg.sql(
        APP_DB,
        "select count(*), count(distinct client) from asyncpg_prepared",
    );
    assert_eq!(rows, format!("{}|{CLIENTS}", CLIENTS * 10));
}

#[test]
fn psycopg3_prepared_statements_work_with_20_connections_on_2_server_connections() {
    let pg = shared_primary();
    fresh_table(pg, "psycopg_prepared");
    let px = start_pgmux(&pgmux_config(pg, "", "pool_size = 2"));
    let stdout = run_script(
        Command::new(python())
            .arg(repo_file("tests/python/psycopg_prepared.py"))
            .arg(app_url(&px))
            .arg(CLIENTS.to_string()),
        "tests/python/psycopg_prepared.py",
        &px,
    );
    assert!(stdout.contains("psycopg ok"), "{stdout}");
    let rows = pg.sql(
        APP_DB,
        "select count(*), count(distinct client) from psycopg_prepared",
    );
    assert_eq!(rows, format!("{}|{CLIENTS}", CLIENTS * 10));
}

#[test]
fn jdbc_server_prepared_statements_work_with_20_threads_on_2_server_connections() {
    let (java, jar) = jdbc();
    let pg = shared_primary();
    fresh_table(pg, "jdbc_prepared");
    let px = start_pgmux(&pgmux_config(pg, "", "pool_size = 2"));
    let jdbc_url = format!("jdbc:postgresql://127.0.0.1:{}/{APP_DB}", px.port);
    let stdout = run_script(
        Command::new(java)
            .arg("-cp")
            .arg(jar)
            .arg(repo_file("tests/java/JdbcPrepared.java"))
            .args([&jdbc_url, APP_USER, APP_PASSWORD])
            .arg(CLIENTS.to_string()),
        "tests/java/JdbcPrepared.java",
        &px,
    );
    assert!(stdout.contains("jdbc ok"), "{stdout}");
    let rows = pg.sql(
        APP_DB,
        "select count(*), count(distinct client) from jdbc_prepared",
    );
    assert_eq!(rows, format!("{}|{CLIENTS}", CLIENTS * 10));
}
