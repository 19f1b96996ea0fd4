//! Session pool mode: a client keeps one server connection from its first statement
//! until it disconnects, everything it sends passes through as written, and the
//! connection is reset before the next client gets it.

mod support;

use support::*;
use tokio_postgres::error::SqlState;

fn session_mode_pgmux() -> Pgmux {
    start_pgmux(&pgmux_config(
        shared_primary(),
        "query_wait_timeout = \"300ms\"",
        "pool_mode = \"session\"\npool_size = 1",
    ))
}

async fn one_value(client: &tokio_postgres::Client, sql: &str) -> String {
    let rows = client.simple_query(sql).await.expect("query runs");
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .expect("one row")
}

#[tokio::test]
async fn a_session_keeps_its_server_connection_until_it_disconnects() {
    let px = session_mode_pgmux();
    let url = px.url(APP_USER, APP_PASSWORD, APP_DB);
    let first = connect(&url).await;
    let pid = one_value(&first, "select pg_backend_pid()").await;
    first
        .batch_execute(
            "create temp table session_mode_scratch(a int); set statement_timeout = '4321ms'",
        )
        .await
        .unwrap();

    // Between its transactions the connection stays the client's: another client waits.
    let second = connect(&url).await;
    let err = second.simple_query("select 1").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err}");

    for _ in 0..3 {
        assert_eq!(one_value(&first, "select pg_backend_pid()").await, pid);
        assert_eq!(one_value(&first, "show statement_timeout").await, "4321ms");
        first
            .batch_execute("insert into session_mode_scratch values (1)")
            .await
            .unwrap();
    }

    // Named statements are the client's own on its own connection: not renamed.
    let stmt = first.prepare("select 1").await.unwrap();
    let names = one_value(
        &first,
        "select string_agg(name, ',') from pg_prepared_statements",
    )
    .await;
    assert!(
        !names.contains("pgmux_") && !names.is_empty(),
        "statement names pass through in session mode: {names}"
    );
    assert_eq!(
        first.query_one(&stmt, &[]).await.unwrap().get::<_, i32>(0),
        1
    );

    drop(first);
    // The next client gets the same server connection, reset.
    let got = poll_until_async(std::time::Duration::from_secs(30), || async {
        second.simple_query("select 1").await.is_ok()
    })
    .await;
    assert!(
        got,
        "the second client gets the connection once the first leaves"
    );
    assert_eq!(one_value(&second, "select pg_backend_pid()").await, pid);
    assert_eq!(one_value(&second, "show statement_timeout").await, "0");
    assert_eq!(
        one_value(
            &second,
            "select count(*) from pg_class where relname = 'session_mode_scratch'"
        )
        .await,
        "0",
        "the temporary table is gone"
    );
    assert_eq!(
        one_value(&second, "select count(*) from pg_prepared_statements").await,
        "0"
    );
}
