//! Pinning in transaction mode (CONTRACT.md section 3): features that need one server
//! for the whole session (`LISTEN`, session advisory locks, temporary tables, `WITH
//! HOLD` cursors, SQL `PREPARE`) pin the client to its connection, keep working, and
//! are cleaned off the connection once the client leaves; `pgmux_pinned_clients`
//! counts the pinned clients.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::session::*;
use support::*;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

// ------------------------------------------------------------------- pinning

/// tokio-postgres with its connection polled here, so that notifications reach the
/// test (the harness's [`connect`] drops them).
async fn connect_listening(url: &str) -> (Client, mpsc::UnboundedReceiver<String>) {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    (client, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_pins_the_client_and_notifications_arrive() {
    let px = pgmux_with_pool(2);
    let url = app_url(&px);
    let competitors = Competitors::start(&url, 2, &[]).await;
    let (listener, mut notes) = connect_listening(&url).await;
    let notifier = connect(&url).await;

    listener
        .batch_execute("LISTEN pgmux_pin_listen")
        .await
        .unwrap();
    let pin = PinCheck::new(&url, &listener).await;
    for round in 0..ROUNDS {
        pin.round(&listener, round).await;
        let payload = format!("hello {round}");
        notifier
            .execute("select pg_notify('pgmux_pin_listen', $1)", &[&payload])
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(30), notes.recv())
            .await
            .expect("no notification within 30 s")
            .expect("the listener's connection ended");
        assert_eq!(got, payload);
    }
    competitors.stop().await;
}

/// The process id a notification names, as drivers compare it with BackendKeyData:
/// the sending client's, for its own NOTIFY and for another client's, in either pool
/// mode.
#[test]
fn notifications_name_the_process_id_pgmux_gave_the_sending_client() {
    for mode in ["transaction", "session"] {
        let px = start_pgmux(&pgmux_config(
            shared_primary(),
            "auth_method = \"trust\"",
            &format!("pool_size = 2\npool_mode = \"{mode}\""),
        ));
        let mut listener = support::wire::RawClient::login_trust(px.port, APP_USER, APP_DB);
        let mut other = support::wire::RawClient::login_trust(px.port, APP_USER, APP_DB);
        listener
            .stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        listener.query("LISTEN pgmux_own_pid").unwrap();

        listener.send_query("NOTIFY pgmux_own_pid, 'mine'");
        let replies = listener.read_until_ready();
        let own = notification_pid(&replies).expect("the own notification arrives");
        assert_eq!(
            own, listener.pid,
            "{mode} mode: the client's own notification"
        );

        other.query("NOTIFY pgmux_own_pid, 'theirs'").unwrap();
        let theirs = support::wire::read_message(&mut listener.stream)
            .expect("another client's notification arrives");
        assert_eq!(theirs.tag, b'A');
        let theirs = notification_pid(std::slice::from_ref(&theirs)).unwrap();
        assert_eq!(
            theirs, other.pid,
            "{mode} mode: another client's notification"
        );
    }
}

/// The sender's process id of the first NotificationResponse among `replies`.
fn notification_pid(replies: &[support::wire::Message]) -> Option<i32> {
    let m = replies.iter().find(|m| m.tag == b'A')?;
    Some(i32::from_be_bytes(m.body[..4].try_into().unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_advisory_lock_pins_the_client_and_stays_held() {
    const KEY: i64 = 7_310_001;
    let pg = shared_primary();
    let px = pgmux_with_pool(2);
    let url = app_url(&px);
    let competitors = Competitors::start(&url, 2, &[]).await;
    let locker = connect(&url).await;
    let other = connect(&url).await;

    locker
        .execute("select pg_advisory_lock($1)", &[&KEY])
        .await
        .unwrap();
    let pin = PinCheck::new(&url, &locker).await;
    for round in 0..ROUNDS {
        pin.round(&locker, round).await;
        let holder = pg.sql(
            APP_DB,
            &format!(
                "select pid from pg_locks where locktype = 'advisory' and granted \
                 and ((classid::bigint << 32) | objid::bigint) = {KEY}"
            ),
        );
        assert_eq!(holder, pin.pinned_pid.to_string(), "who holds the lock");
        let free: bool = other
            .query_one("select pg_try_advisory_xact_lock($1)", &[&KEY])
            .await
            .unwrap()
            .get(0);
        assert!(!free, "another client got the lock the pinned client holds");
    }
    let unlocked: bool = locker
        .query_one("select pg_advisory_unlock($1)", &[&KEY])
        .await
        .unwrap()
        .get(0);
    assert!(unlocked, "the pinned client no longer held its lock");
    competitors.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_table_pins_the_client_and_survives_between_transactions() {
    temp_table_survives("CREATE TEMP TABLE pgmux_pin_tmp (x int)", "pgmux_pin_tmp").await;
}

/// A table made in the `pg_temp` schema is a temporary table too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_created_in_pg_temp_pins_the_client_like_a_temp_table() {
    temp_table_survives(
        "CREATE TABLE pg_temp.pgmux_pin_tmp_schema (x int)",
        "pg_temp.pgmux_pin_tmp_schema",
    )
    .await;
}

async fn temp_table_survives(create: &str, table: &str) {
    let px = pgmux_with_pool(2);
    let url = app_url(&px);
    let competitors = Competitors::start(&url, 2, &[]).await;
    let client = connect(&url).await;

    client.batch_execute(create).await.unwrap();
    let pin = PinCheck::new(&url, &client).await;
    for round in 0..ROUNDS {
        pin.round(&client, round).await;
        let x = round as i32;
        client
            .execute(&format!("insert into {table} values ($1)"), &[&x])
            .await
            .unwrap();
        let n: i64 = client
            .query_one(&format!("select count(*) from {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, i64::from(x) + 1);
    }
    competitors.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_hold_cursor_pins_the_client_and_keeps_its_position() {
    let px = pgmux_with_pool(2);
    let url = app_url(&px);
    let competitors = Competitors::start(&url, 2, &[]).await;
    let client = connect(&url).await;

    client
        .batch_execute(
            "BEGIN; DECLARE pgmux_pin_cur CURSOR WITH HOLD FOR \
             SELECT g FROM generate_series(1, 100) g; COMMIT",
        )
        .await
        .unwrap();
    let pin = PinCheck::new(&url, &client).await;
    for round in 0..ROUNDS {
        pin.round(&client, round).await;
        let got = simple(&client, "FETCH 2 FROM pgmux_pin_cur").await;
        let first = round * 2 + 1;
        assert_eq!(got, [first.to_string(), (first + 1).to_string()]);
    }
    competitors.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_prepare_pins_the_client_and_execute_works() {
    let px = pgmux_with_pool(2);
    let url = app_url(&px);
    let competitors = Competitors::start(&url, 2, &[]).await;
    let client = connect(&url).await;

    client
        .batch_execute("PREPARE pgmux_pin_p (int) AS SELECT $1 + 100")
        .await
        .unwrap();
    let pin = PinCheck::new(&url, &client).await;
    for round in 0..ROUNDS {
        pin.round(&client, round).await;
        let got = simple(&client, &format!("EXECUTE pgmux_pin_p({round})")).await;
        assert_eq!(got, [(round + 100).to_string()]);
    }
    client
        .batch_execute("DEALLOCATE pgmux_pin_p")
        .await
        .unwrap();
    competitors.stop().await;
}

#[tokio::test]
async fn a_pinned_clients_server_connection_is_reset_when_it_leaves() {
    const KEY: i64 = 7_310_002;
    let pg = shared_primary();
    let px = pgmux_with_pool(1);
    let url = app_url(&px);
    let lock_held = format!(
        "select count(*) from pg_locks where locktype = 'advisory' \
         and ((classid::bigint << 32) | objid::bigint) = {KEY}"
    );
    let temp_table_exists = "select count(*) from pg_class where relname = 'pgmux_reset_tmp'";

    let pinned = connect(&url).await;
    pinned
        .batch_execute(
            "LISTEN pgmux_reset_chan; \
             CREATE TEMP TABLE pgmux_reset_tmp (x int); \
             PREPARE pgmux_reset_p AS SELECT 1",
        )
        .await
        .unwrap();
    pinned
        .execute("select pg_advisory_lock($1)", &[&KEY])
        .await
        .unwrap();
    pinned
        .batch_execute("BEGIN; DECLARE pgmux_reset_cur CURSOR WITH HOLD FOR SELECT 1; COMMIT")
        .await
        .unwrap();
    let pinned_pid = pid(&pinned).await;
    assert_eq!(pg.sql(APP_DB, &lock_held), "1");
    assert_eq!(pg.sql(APP_DB, temp_table_exists), "1");
    drop(pinned);

    let lock_query = lock_held.clone();
    let (lock_gone, table_gone) = blocking(move || {
        (
            poll_until(CLEANUP_DEADLINE, || pg.sql(APP_DB, &lock_query) == "0"),
            poll_until(CLEANUP_DEADLINE, || {
                pg.sql(APP_DB, temp_table_exists) == "0"
            }),
        )
    })
    .await;
    assert!(
        lock_gone,
        "the advisory lock is still held after the client left"
    );
    assert!(
        table_gone,
        "the temporary table still exists after the client left"
    );
    let next = connect(&url).await;
    assert_eq!(
        pid(&next).await,
        pinned_pid,
        "the server connection was not reused (pool_size = 1)"
    );
    for (what, sql) in [
        ("LISTEN", "select count(*) from pg_listening_channels()"),
        (
            "the WITH HOLD cursor",
            "select count(*) from pg_cursors where name = 'pgmux_reset_cur'",
        ),
        (
            "the SQL prepared statement",
            "select count(*) from pg_prepared_statements where name = 'pgmux_reset_p'",
        ),
        (
            "the temporary table",
            "select count(*) from pg_class where relname = 'pgmux_reset_tmp'",
        ),
        ("the advisory lock", lock_held.as_str()),
    ] {
        assert_eq!(simple(&next, sql).await, ["0"], "{what} survived");
    }
}

/// Runs blocking `f` (polls that sleep, psql) off the runtime, so that connection
/// tasks — a dropped client's goodbye — keep running meanwhile.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("a blocking check panicked")
}

/// `GET /metrics` from pgmux's HTTP endpoint; `None` while it does not answer.
fn fetch_metrics(port: u16) -> Option<String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// The value of `pgmux_pinned_clients{database="app"}`; 0 before it was ever set.
fn pinned_clients(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("pgmux_pinned_clients{"))
        .filter(|l| l.contains(&format!("database=\"{APP_DB}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .next()
        .unwrap_or(0.0)
}

#[tokio::test]
async fn pinned_clients_gauge_counts_clients_while_they_are_pinned() {
    let metrics_port = support::process::free_port();
    let config = pgmux_config(shared_primary(), "", "pool_size = 2").replace(
        "metrics_listen = \"\"",
        &format!("metrics_listen = \"127.0.0.1:{metrics_port}\""),
    );
    let px = start_pgmux(&config);
    let url = app_url(&px);
    let gauge_becomes = |want: f64| async move {
        let last = blocking(move || {
            let mut last = None;
            poll_until(Duration::from_secs(30), || {
                last = fetch_metrics(metrics_port).map(|m| pinned_clients(&m));
                last == Some(want)
            });
            last
        })
        .await;
        assert_eq!(last, Some(want), "pgmux_pinned_clients");
    };

    let plain = connect(&url).await;
    simple(&plain, "SELECT 1").await;
    gauge_becomes(0.0).await;

    let listener = connect(&url).await;
    listener
        .batch_execute("LISTEN pgmux_gauge_chan")
        .await
        .unwrap();
    gauge_becomes(1.0).await;
    let temp = connect(&url).await;
    temp.batch_execute("CREATE TEMP TABLE pgmux_gauge_tmp (x int)")
        .await
        .unwrap();
    gauge_becomes(2.0).await;

    drop(listener);
    gauge_becomes(1.0).await;
    drop(temp);
    gauge_becomes(0.0).await;
    simple(&plain, "SELECT 1").await;
}
