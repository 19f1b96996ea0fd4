//! The harness works without pgmux: servers start, real authentication happens,
//! replicas replay, and guards clean up. When these fail, every other integration
//! test would fail for reasons that have nothing to do with pgmux.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::*;
use tokio_postgres::error::SqlState;

#[tokio::test]
async fn app_logs_in_to_the_primary_over_tcp_with_scram() {
    let pg = shared_primary();
    let verifier = pg.sql(
        "postgres",
        &format!("select rolpassword from pg_authid where rolname = '{APP_USER}'"),
    );
    assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");

    let client = connect(&url(pg.port, APP_USER, APP_PASSWORD, APP_DB)).await;
    let row = client
        .query_one(
            "select inet_server_port(), current_user, current_database(), pg_is_in_recovery()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), i32::from(pg.port));
    assert_eq!(row.get::<_, &str>(1), APP_USER);
    assert_eq!(row.get::<_, &str>(2), APP_DB);
    assert!(!row.get::<_, bool>(3));
}

#[tokio::test]
async fn md5user_logs_in_to_the_primary_over_tcp_with_md5() {
    let pg = shared_primary();
    let verifier = pg.sql(
        "postgres",
        &format!("select rolpassword from pg_authid where rolname = '{MD5_USER}'"),
    );
    assert!(verifier.starts_with("md5"), "{verifier}");

    let client = connect(&url(pg.port, MD5_USER, MD5_PASSWORD, APP_DB)).await;
    let row = client
        .query_one("select inet_server_port(), current_user", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), i32::from(pg.port));
    assert_eq!(row.get::<_, &str>(1), MD5_USER);
    client.query("select count(*) from t", &[]).await.unwrap();
}

#[tokio::test]
async fn a_wrong_password_is_refused_with_28p01() {
    let pg = shared_primary();
    let err = try_connect(&url(pg.port, APP_USER, "not-the-password", APP_DB))
        .await
        .expect_err("a wrong password must not log in");
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
}

#[tokio::test]
async fn the_replica_is_in_recovery_and_replays_rows_written_on_the_primary() {
    let primary = shared_primary();
    let replica = shared_replica();
    assert_ne!(primary.port, replica.port);
    assert_eq!(replica.role, Role::Replica);

    let on_primary = connect(&primary.url(APP_USER, APP_PASSWORD, APP_DB)).await;
    let on_replica = connect(&replica.url(APP_USER, APP_PASSWORD, APP_DB)).await;
    let row = on_replica
        .query_one("select inet_server_port(), pg_is_in_recovery()", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), i32::from(replica.port));
    assert!(row.get::<_, bool>(1), "the replica must be in recovery");

    // An id far from the small ones other tests use, and a value unique to this run.
    let id = 2_000_000_000 - (std::process::id() % 1_000_000) as i32;
    let token = format!(
        "smoke-{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    on_primary
        .execute(
            "insert into t (id, v) values ($1, $2) on conflict (id) do update set v = excluded.v",
            &[&id, &token],
        )
        .await
        .unwrap();

    let replica_client = &on_replica;
    let token_ref = token.as_str();
    let replayed = poll_until_async(Duration::from_secs(30), || async move {
        replica_client
            .query_opt("select v from t where id = $1", &[&id])
            .await
            .ok()
            .flatten()
            .is_some_and(|row| row.get::<_, &str>(0) == token_ref)
    })
    .await;
    on_primary
        .execute("delete from t where id = $1", &[&id])
        .await
        .unwrap();
    assert!(
        replayed,
        "the replica did not replay the insert within 30 s"
    );
}

#[test]
fn psql_reaches_the_primary_over_tcp() {
    let pg = shared_primary();
    let out = psql(
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            APP_USER,
            "-d",
            APP_DB,
            "-At",
            "-c",
            "select inet_server_port()",
        ],
        &[("PGPASSWORD", APP_PASSWORD)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        pg.port.to_string()
    );
}

#[test]
fn a_dropped_server_is_stopped_and_its_directory_removed() {
    let pg = start_primary();
    assert!(pg.accepts_tcp());
    let (port, dir) = (pg.port, pg.dir.clone());
    let pid = pg
        .postmaster_pid()
        .expect("a running server has a postmaster.pid");
    drop(pg);

    assert!(!dir.exists(), "{} still exists", dir.display());
    // SAFETY: signal 0 only checks whether the process exists.
    let alive = || unsafe { libc::kill(pid, 0) == 0 };
    assert!(
        poll_until(Duration::from_secs(10), || !alive()),
        "postmaster {pid} still runs"
    );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert!(std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err());
}

#[test]
fn poll_until_gives_up_at_its_deadline() {
    let start = std::time::Instant::now();
    assert!(!poll_until(Duration::from_millis(200), || false));
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert!(start.elapsed() < Duration::from_secs(2));
    let mut calls = 0;
    assert!(poll_until(Duration::from_secs(5), || {
        calls += 1;
        calls == 3
    }));
}

#[test]
fn python_has_psycopg_asyncpg_and_psycopg2() {
    let out = support::process::run(
        std::process::Command::new(python())
            .args(["-c", "import psycopg, asyncpg, psycopg2; print('ok')"]),
        Duration::from_secs(60),
        "python imports",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
