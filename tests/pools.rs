//! Server connection pools (bounds, warm-up, idle and lifetime limits, the wait
//! queue, `max_client_conn`, broken connections, servers on a Unix-domain socket,
//! databases dropped through pgmux), and clients dealt to several event loops.
//! Query cancellation is in `cancel.rs`.
//!
//! Tests share one Postgres primary; each one that counts server connections gives
//! pgmux a Postgres role of its own, so `pg_stat_activity` rows of that role are
//! exactly the server connections of the pool under test.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::cancel::{cancel_long_sleep, start_long_sleep};
use support::wire::{self, RawClient};
use support::*;
use tokio_postgres::error::SqlState;

/// How long a test waits for something pgmux does in the background.
const PATIENCE: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------ helpers

/// `[proxy]` keys, then a `[[users]]` entry for `role`: the `extra_proxy` of
/// [`pgmux_config`].
fn proxy_with_user(proxy_keys: &str, role: &str, password: &str) -> String {
    format!("{proxy_keys}\n\n[[users]]\nname = \"{role}\"\npassword = \"{password}\"\n")
}

/// Server connections of `role`: its backends on the shared primary.
fn backends_of(role: &str) -> Vec<i32> {
    let out = shared_primary().sql(
        "postgres",
        &format!(
            "select pid from pg_stat_activity where usename = '{role}' \
             and backend_type = 'client backend' order by pid"
        ),
    );
    out.lines().map(|l| l.trim().parse().unwrap()).collect()
}

/// [`backends_of`] from async code, off the runtime's threads.
async fn backends_of_async(role: &'static str) -> Vec<i32> {
    tokio::task::spawn_blocking(move || backends_of(role))
        .await
        .unwrap()
}

/// Waits until pgmux has read every byte `client` sent: its query has reached
/// the client's session, which now waits for a server connection.
fn wait_until_read_by_pgmux(px: &Pgmux, client: &RawClient) {
    let read = poll_until(PATIENCE, || {
        wire::unread_bytes(px.port, client.local_port()) == Some(0)
    });
    assert!(read, "pgmux did not read the client's query");
}

// ------------------------------------------------------------------ pool bounds

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_size_bounds_the_server_connections_of_a_pool() {
    const ROLE: &str = "pools_bounded";
    let password = create_role(ROLE);
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(
        pg,
        &proxy_with_user("", ROLE, &password),
        "pool_size = 3",
    ));

    let done = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (done, most) = (done.clone(), most.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Acquire) {
                most.fetch_max(backends_of(ROLE).len(), Ordering::AcqRel);
            }
        })
    };

    let url = px.url(ROLE, &password, APP_DB);
    let mut clients = Vec::new();
    for _ in 0..20 {
        let url = url.clone();
        clients.push(tokio::spawn(async move {
            let client = connect(&url).await;
            for _ in 0..5 {
                client.simple_query("select pg_sleep(0.05)").await?;
            }
            Ok::<_, tokio_postgres::Error>(())
        }));
    }
    for c in clients {
        c.await.unwrap().expect("every client's queries succeed");
    }
    done.store(true, Ordering::Release);
    sampler.join().unwrap();

    let most = most.load(Ordering::Acquire);
    assert!(most <= 3, "{most} server connections with pool_size = 3");
    assert!(most >= 1, "the sampler never saw a server connection");
    assert!(backends_of(ROLE).len() <= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_pool_size_keeps_server_connections_open_without_clients() {
    const ROLE: &str = "pools_warm";
    let password = create_role(ROLE);
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(
        pg,
        &proxy_with_user("", ROLE, &password),
        "pool_size = 5\nmin_pool_size = 3",
    ));

    // The pool exists once a client has used it; then the client leaves.
    let client = connect(&px.url(ROLE, &password, APP_DB)).await;
    client.simple_query("select 1").await.unwrap();
    drop(client);

    let warm = poll_until_async(PATIENCE, || async {
        backends_of_async(ROLE).await.len() == 3
    })
    .await;
    assert!(
        warm,
        "min_pool_size = 3 but {} server connections",
        backends_of(ROLE).len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_idle_timeout_closes_idle_server_connections() {
    const ROLE: &str = "pools_idle";
    let password = create_role(ROLE);
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(
        pg,
        &proxy_with_user("server_idle_timeout = \"1s\"", ROLE, &password),
        "",
    ));

    let client = connect(&px.url(ROLE, &password, APP_DB)).await;
    let first: i32 = client
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);

    // The client stays connected, but holds no server between transactions.
    let closed = poll_until_async(PATIENCE, || async {
        backends_of_async(ROLE).await.is_empty()
    })
    .await;
    assert!(
        closed,
        "the idle server connection (pid {first}) was not closed"
    );

    let row = client.query_one("select 1 + 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 2, "the client gets a new connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_lifetime_replaces_old_server_connections() {
    const ROLE: &str = "pools_lifetime";
    let password = create_role(ROLE);
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(
        pg,
        &proxy_with_user("server_lifetime = \"1s\"", ROLE, &password),
        "pool_size = 1",
    ));

    let client = connect(&px.url(ROLE, &password, APP_DB)).await;
    let backend_pid = || async {
        client
            .query_one("select pg_backend_pid()", &[])
            .await
            .unwrap()
            .get::<_, i32>(0)
    };
    let first = backend_pid().await;
    let replaced = poll_until_async(PATIENCE, || async { backend_pid().await != first }).await;
    assert!(replaced, "the server connection was never replaced");
    let gone = poll_until_async(PATIENCE, || async {
        !backends_of_async(ROLE).await.contains(&first)
    })
    .await;
    assert!(
        gone,
        "the old server connection (pid {first}) is still open"
    );
}

/// On one worker the order is strict. With several, a waiter of the worker that
/// returns the connection may overtake one of another worker that arrived a little
/// earlier (bounded relative to its wait: `pool::gate`, unit-tested there).
#[test]
fn waiting_clients_are_served_in_arrival_order() {
    const ROLE: &str = "pools_fifo";
    let password = create_role(ROLE);
    let pg = shared_primary();
    pg.sql(
        APP_DB,
        &format!(
            "CREATE SEQUENCE pools_fifo_seq; GRANT USAGE ON SEQUENCE pools_fifo_seq TO {ROLE}"
        ),
    );
    let px = start_pgmux(&with_workers(
        &pgmux_config(
            pg,
            &proxy_with_user("auth_method = \"trust\"", ROLE, &password),
            "pool_size = 1",
        ),
        1,
    ));

    // The holder keeps the only server connection inside a transaction.
    let mut holder = RawClient::login_trust(px.port, ROLE, APP_DB);
    holder.query("BEGIN").unwrap();

    // Each waiter sends its query only once pgmux has read the previous one's:
    // the arrival order is certain.
    let mut waiters = Vec::new();
    for _ in 0..5 {
        let mut w = RawClient::login_trust(px.port, ROLE, APP_DB);
        w.send_query("select nextval('pools_fifo_seq')");
        wait_until_read_by_pgmux(&px, &w);
        waiters.push(w);
    }
    holder.query("COMMIT").unwrap();

    // With one server connection, the sequence numbers are the serving order.
    let served: Vec<i64> = waiters
        .iter_mut()
        .map(|w| w.read_result().unwrap()[0].parse().unwrap())
        .collect();
    let mut sorted = served.clone();
    sorted.sort_unstable();
    assert_eq!(served, sorted, "served out of arrival order");
}

/// pgmux (trust) for a new role that Postgres lets hold one connection, with
/// `query_wait_timeout` `wait` and a larger `pool_size`.
fn pgmux_for_a_role_limited_to_one(role: &str, wait: &str, pool_size: usize) -> Pgmux {
    let password = create_role(role);
    let pg = shared_primary();
    pg.sql("postgres", &format!("ALTER ROLE {role} CONNECTION LIMIT 1"));
    start_pgmux(&pgmux_config(
        pg,
        &proxy_with_user(
            &format!("auth_method = \"trust\"\nquery_wait_timeout = \"{wait}\""),
            role,
            &password,
        ),
        &format!("pool_size = {pool_size}"),
    ))
}

/// A server that takes fewer connections than `pool_size` (here the role's
/// connection limit; `max_connections` alike) refuses the pool's next one with
/// 53300. A client that needs it waits, as for a full pool, for a connection another
/// client returns; past `query_wait_timeout` it gets 53300 saying why, not 08006, and
/// carries on.
#[test]
fn a_server_connection_limit_below_pool_size_makes_clients_wait_not_fail() {
    const ROLE: &str = "pools_limited";
    let px = pgmux_for_a_role_limited_to_one(ROLE, "2s", 2);

    let mut holder = RawClient::login_trust(px.port, ROLE, APP_DB);
    holder.query("BEGIN").unwrap();
    let mut waiter = RawClient::login_trust(px.port, ROLE, APP_DB);
    waiter.send_query("select 'waited'");
    wait_until_read_by_pgmux(&px, &waiter);
    holder.query("COMMIT").unwrap();
    assert_eq!(waiter.read_result().unwrap(), ["waited"]);

    // Held past query_wait_timeout: 53300, and the client is still usable.
    holder.query("BEGIN").unwrap();
    waiter.send_query("select 'in vain'");
    let messages = waiter.read_until_ready();
    let error = messages.iter().find(|m| m.tag == b'E').expect("an error");
    assert_eq!(error.sqlstate().as_deref(), Some("53300"), "{messages:?}");
    let said = error.field(b'M').unwrap();
    assert!(said.contains("refuses more connections"), "{said}");
    holder.query("COMMIT").unwrap();
    assert_eq!(waiter.query("select 'again'").unwrap(), ["again"]);
    assert_eq!(backends_of(ROLE).len(), 1);
}

/// After the server's limit is raised, the pool asks it again (within seconds of its
/// last refusal) and grows back: a client waiting while another holds the pool's one
/// connection gets a second connection, not a timeout.
#[test]
fn a_pool_held_back_by_a_server_connection_limit_grows_back_when_it_is_raised() {
    const ROLE: &str = "pools_limit_raised";
    let px = pgmux_for_a_role_limited_to_one(ROLE, "25s", 3);
    let pg = shared_primary();

    let mut holder = RawClient::login_trust(px.port, ROLE, APP_DB);
    holder.query("BEGIN").unwrap();
    let mut waiter = RawClient::login_trust(px.port, ROLE, APP_DB);
    waiter.send_query("select 'second connection'");
    wait_until_read_by_pgmux(&px, &waiter);
    pg.sql("postgres", &format!("ALTER ROLE {ROLE} CONNECTION LIMIT 3"));
    assert_eq!(waiter.read_result().unwrap(), ["second connection"]);
    assert_eq!(backends_of(ROLE).len(), 2, "the holder's and the waiter's");
    holder.query("COMMIT").unwrap();
}

#[tokio::test]
async fn max_client_conn_refuses_extra_clients_with_53300_until_one_leaves() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "max_client_conn = 2", ""));
    let url = px.url(APP_USER, APP_PASSWORD, APP_DB);

    let first = connect(&url).await;
    let second = connect(&url).await;
    let err = try_connect(&url)
        .await
        .expect_err("a third client is one too many");
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err}");
    second.simple_query("select 1").await.unwrap();

    drop(first);
    let admitted = poll_until_async(PATIENCE, || async { try_connect(&url).await.is_ok() }).await;
    assert!(admitted, "no client admitted after one left");
    second.simple_query("select 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_idle_server_connection_is_replaced_not_handed_out() {
    const ROLE: &str = "pools_broken";
    let password = create_role(ROLE);
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(
        pg,
        &proxy_with_user("", ROLE, &password),
        "pool_size = 1",
    ));
    let client = connect(&px.url(ROLE, &password, APP_DB)).await;
    // The simple protocol: a prepared statement would be closed by tokio-postgres
    // afterwards, on the server, possibly just as the backend is killed.
    let first = simple_backend_pid(&client).await;

    tokio::task::spawn_blocking(move || {
        shared_primary().sql("postgres", &format!("select pg_terminate_backend({first})"))
    })
    .await
    .unwrap();
    let gone = poll_until_async(PATIENCE, || async {
        !backends_of_async(ROLE).await.contains(&first)
    })
    .await;
    assert!(gone, "the terminated backend is still there");

    let rows = client
        .simple_query("select pg_backend_pid()")
        .await
        .expect("the next query runs on a fresh server connection");
    assert_ne!(first_value(&rows), first.to_string());
}

/// A server that ends its connection says why in a FATAL error, which reaches the
/// client as it is; pgmux adds no error of its own after it.
#[test]
fn a_server_fatal_reaches_the_client_alone() {
    for mode in ["transaction", "session"] {
        let px = start_pgmux(&pgmux_config(
            shared_primary(),
            "auth_method = \"trust\"",
            &format!("pool_mode = \"{mode}\""),
        ));
        let marker = format!("pools_server_fatal_{mode}");
        let mut client = RawClient::login_trust(px.port, APP_USER, APP_DB);
        client.query("begin").unwrap();
        client.query(&format!("select 1 /* {marker} */")).unwrap();
        let terminated = shared_primary().sql(
            "postgres",
            &format!(
                "select count(pg_terminate_backend(pid)) from pg_stat_activity \
                 where query like '%{marker}%' and pid <> pg_backend_pid()"
            ),
        );
        assert_eq!(terminated.trim(), "1", "{mode} mode");
        let mut replies = Vec::new();
        while let Ok(m) = wire::read_message(&mut client.stream) {
            replies.push(m);
        }
        let errors: Vec<_> = replies
            .iter()
            .filter(|m| m.tag == b'E')
            .map(|m| m.sqlstate())
            .collect();
        assert_eq!(errors, [Some("57P01".to_owned())], "{mode} mode");
    }
}

/// Postgres drops, renames or copies a database only when nobody is connected to it;
/// pgmux's idle server connections to it are nobody's, and go first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_database_is_not_blocked_by_idle_pooled_connections() {
    const DB: &str = "pools_drop_me";
    let pg = shared_primary();
    pg.sql("postgres", &format!("drop database if exists {DB}"));
    pg.sql(
        "postgres",
        &format!("create database {DB} owner {APP_USER}"),
    );
    // Renaming takes CREATEDB as well as ownership.
    pg.sql("postgres", &format!("alter role {APP_USER} createdb"));
    let config = format!(
        "{}\n[databases.{DB}]\n[[databases.{DB}.shards]]\nprimary = \"{}\"\n",
        pgmux_config(pg, "", ""),
        pg.addr(DB)
    );
    let px = start_pgmux(&config);
    for round in 0..2 {
        let user = connect(&px.url(APP_USER, APP_PASSWORD, DB)).await;
        user.simple_query("select 1").await.unwrap();
        drop(user);
        // The client's server connection stays in the pool, idle.
        let pooled = poll_until_async(PATIENCE, || async {
            let n = tokio::task::spawn_blocking(|| {
                shared_primary().sql(
                    "postgres",
                    &format!("select count(*) from pg_stat_activity where datname = '{DB}'"),
                )
            })
            .await
            .unwrap();
            n.trim() == "1"
        })
        .await;
        assert!(pooled, "round {round}: no pooled connection to {DB}");

        let admin = connect(&px.url(APP_USER, APP_PASSWORD, APP_DB)).await;
        if round == 0 {
            admin
                .batch_execute(&format!("ALTER DATABASE {DB} RENAME TO {DB}_renamed"))
                .await
                .unwrap();
            admin
                .batch_execute(&format!("ALTER DATABASE {DB}_renamed RENAME TO {DB}"))
                .await
                .unwrap();
        } else {
            admin
                .batch_execute(&format!("DROP DATABASE {DB}"))
                .await
                .unwrap();
        }
    }
}

async fn simple_backend_pid(client: &tokio_postgres::Client) -> i32 {
    let rows = client
        .simple_query("select pg_backend_pid()")
        .await
        .unwrap();
    first_value(&rows).parse().unwrap()
}

/// The first column of the first row of a simple-protocol result.
fn first_value(messages: &[tokio_postgres::SimpleQueryMessage]) -> String {
    messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .expect("a row")
}

// ------------------------------------------------------------------ Unix-domain sockets

/// A server given by the directory of its socket (`/dir:port/db`, libpq's `host=/dir`)
/// is reached over that socket: logged in with SCRAM, pooled, and cancelled there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_given_by_its_socket_directory_is_pooled_over_the_unix_socket() {
    const ROLE: &str = "pools_unix";
    let password = create_role(ROLE);
    let pg = shared_primary();
    let tcp_addr = format!("\"{}\"", pg.addr(APP_DB));
    let config = pgmux_config(pg, &proxy_with_user("", ROLE, &password), "pool_size = 2");
    assert!(config.contains(&tcp_addr));
    let px = start_pgmux(&config.replace(&tcp_addr, &format!("{:?}", pg.socket_addr(APP_DB))));
    let url = px.url(ROLE, &password, APP_DB);

    // More clients than server connections, each with transactions in the extended
    // protocol; every server connection they see has no client address: a socket.
    let mut clients = Vec::new();
    for i in 0..8 {
        let url = url.clone();
        clients.push(tokio::spawn(async move {
            let mut client = connect(&url).await;
            for j in 0..10 {
                let n: i32 = i * 100 + j;
                let tx = client.transaction().await?;
                let row = tx
                    .query_one(
                        "select $1::int + 1, client_addr is null, client_port \
                         from pg_stat_activity where pid = pg_backend_pid()",
                        &[&n],
                    )
                    .await?;
                tx.commit().await?;
                assert_eq!(row.get::<_, i32>(0), n + 1);
                assert!(row.get::<_, bool>(1), "a server connection over TCP");
                assert_eq!(row.get::<_, i32>(2), -1, "a server connection over TCP");
            }
            Ok::<_, tokio_postgres::Error>(())
        }));
    }
    for c in clients {
        c.await
            .unwrap()
            .expect("every client's transactions succeed");
    }
    let backends = backends_of_async(ROLE).await;
    assert!(
        (1..=2).contains(&backends.len()),
        "{} server connections with pool_size = 2",
        backends.len()
    );

    let (token, sleeper) = start_long_sleep(connect(&url).await, "pools_unix_cancel").await;
    cancel_long_sleep(token, sleeper).await;
}

/// CPU time (utime + stime, in clock ticks) of the thread of process `pid` named
/// `name`, or None if it has no such thread.
fn thread_cpu_ticks(pid: u32, name: &str) -> Option<u64> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        return Some(utime + stime);
    }
    None
}

/// With `workers = 2`, clients are dealt to both event loops: the second loop's
/// thread relays their traffic (all on one thread, it would stay asleep).
#[tokio::test]
async fn clients_are_dealt_to_every_worker() {
    let pg = shared_primary();
    let px = start_pgmux(&with_workers(&pgmux_config(pg, "", ""), 2));
    let url = px.url(APP_USER, APP_PASSWORD, APP_DB);
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(connect(&url).await);
    }
    let before = thread_cpu_ticks(px.pid(), "pgmux-worker-1").expect("a second event loop thread");
    let worked = poll_until_async(PATIENCE, || async {
        for c in &clients {
            for _ in 0..200 {
                c.simple_query("select 1").await.unwrap();
            }
        }
        thread_cpu_ticks(px.pid(), "pgmux-worker-1").unwrap_or(0) > before
    })
    .await;
    assert!(
        worked,
        "the second worker relayed none of the clients' traffic"
    );
}
