//! pgmux's life as a process: the command line (CONTRACT.md section 1), the
//! configuration's validation (section 2), and the signals (section 8): SIGHUP
//! reloads without dropping clients, SIGTERM drains open transactions, SIGINT
//! stops at once.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use support::process::run;
use support::*;
use tokio_postgres::error::SqlState;

/// How long a test waits for something pgmux does in the background.
const PATIENCE: Duration = Duration::from_secs(30);
/// How long a pgmux may take to exit once it should; far below any
/// `shutdown_timeout` a test sets when it checks that pgmux did not wait for it.
const EXIT_DEADLINE: Duration = Duration::from_secs(60);

// ------------------------------------------------------------------ helpers

fn pgmux_run(args: &[&str]) -> Output {
    run(
        pgmux_command().args(args).env_remove("PGMUX_CONFIG"),
        Duration::from_secs(60),
        "pgmux subcommand",
    )
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn shipped_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pgmux.toml")
}

/// Writes `body` to a file in a fresh temp dir.
fn config_file(body: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgmux.toml");
    std::fs::write(&path, body).unwrap();
    (dir, path)
}

/// The running pgmux's config file, as it is now.
fn current_config(px: &Pgmux) -> String {
    std::fs::read_to_string(&px.config_path).unwrap()
}

// ------------------------------------------------------------------ command line

#[test]
fn version_prints_the_version() {
    let out = pgmux_run(&["--version"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("pgmux {}", env!("CARGO_PKG_VERSION"))),
        "{stdout}"
    );
}

#[test]
fn check_accepts_the_shipped_config() {
    let config = shipped_config();
    let out = pgmux_run(&["check", "--config", config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "pgmux check refused the shipped config:\n{}",
        text(&out.stderr)
    );
}

#[test]
fn check_prints_every_problem_with_its_key_path_and_exits_1() {
    let (_dir, path) = config_file(
        r#"
[proxy]
listen = "127.0.0.1:6432"
pool_mode = "sesion"
unix_socket_dir = "/nonexistent/pgmux-sockets"

[upstream_tls]
mode = "always"

[[users]]
name = "app"
password = "pw"

[databases.app]
pool_size = 0
[[databases.app.shards]]
primary = "127.0.0.1:5432/app"
"#,
    );
    let out = pgmux_run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    for key in [
        "proxy.pool_mode",
        "proxy.unix_socket_dir",
        "upstream_tls.mode",
        "databases.app.pool_size",
    ] {
        assert!(all.contains(key), "{key} is not named:\n{all}");
    }
    let problems = all.lines().filter(|l| !l.trim().is_empty()).count();
    assert_eq!(problems, 4, "one line per problem:\n{all}");
}

#[test]
fn an_unknown_key_is_an_error_for_check_and_for_the_proxy() {
    let (_dir, path) = config_file(
        r#"
[proxy]
listne = "127.0.0.1:6432"

[[users]]
name = "app"
password = "pw"

[databases.app]
[[databases.app.shards]]
primary = "127.0.0.1:5432/app"
"#,
    );
    let out = pgmux_run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("proxy.listne"), "{stderr}");
    assert!(
        stderr.contains("listen"),
        "a hint names the right key: {stderr}"
    );

    let out = pgmux_run(&["--config", path.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the proxy must not start: {out:?}"
    );
    assert!(text(&out.stderr).contains("proxy.listne"), "{out:?}");
}

/// `log_format = "json"`: every line pgmux writes is one JSON object, with the
/// event's time, level and message, and its fields (a refused login's error here).
#[tokio::test]
async fn json_logs_are_one_object_a_line() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "log_format = \"json\"", ""));
    let refused = try_connect(&px.url(APP_USER, "not the password", APP_DB)).await;
    assert!(refused.is_err(), "a wrong password logs in");
    assert!(
        px.wait_for_log("login refused", PATIENCE),
        "no refused login logged:\n{}",
        px.log()
    );
    let log = px.log();
    let mut refusals = 0;
    for line in log.lines() {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}\n{log}"));
        for key in ["timestamp", "level"] {
            assert!(event[key].is_string(), "no {key}: {line}");
        }
        assert!(event["fields"]["message"].is_string(), "no message: {line}");
        if event["fields"]["message"] == "login refused" {
            refusals += 1;
            let error = event["fields"]["error"].as_str().unwrap_or_default();
            assert!(error.contains("28P01"), "{line}");
        }
    }
    assert_eq!(refusals, 1, "{log}");
}

#[test]
fn shard_of_an_unsharded_database_is_shard_0() {
    let config = shipped_config();
    let out = pgmux_run(&[
        "shard",
        "--config",
        config.to_str().unwrap(),
        "--database",
        "app",
        "42",
    ]);
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("not sharded"), "{stdout}");
    assert!(stdout.contains('0'), "{stdout}");
}

// ------------------------------------------------------------------ listening

/// `config` with `[proxy].workers` set to `n`, whatever the test run's default.
fn with_workers(config: &str, n: usize) -> String {
    config
        .lines()
        .map(|l| {
            if l.starts_with("workers = ") {
                format!("workers = {n}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// With several workers each one listens on the port itself; a second pgmux on
/// the same address must still fail as it would with one listener, not share the
/// port and take some of the first one's clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_pgmux_on_the_same_address_fails_and_the_first_serves_every_client() {
    let pg = shared_primary();
    let config = with_workers(&pgmux_config(pg, "", ""), 3);
    let px = start_pgmux(&config);
    let (_dir, path) = config_file(&current_config(&px));
    let out = run(
        pgmux_command().arg("--config").arg(&path),
        Duration::from_secs(60),
        "a second pgmux on a port in use",
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("in use"), "{stderr}");

    // Clients connecting at once spread over the workers' listeners; each one is
    // served, as many times as it asks.
    let url = px.url(APP_USER, APP_PASSWORD, APP_DB);
    let clients = futures_util::future::join_all((0..30).map(|_| connect(&url))).await;
    for round in 0..3 {
        let answers =
            futures_util::future::join_all(clients.iter().enumerate().map(|(i, c)| async move {
                c.query_one(&format!("select ({i} + {round})::text"), &[])
                    .await
                    .unwrap()
                    .get::<_, String>(0)
            }))
            .await;
        for (i, got) in answers.iter().enumerate() {
            assert_eq!(got, &(i + round).to_string());
        }
    }
}

// ------------------------------------------------------------------ SIGHUP

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_pool_size_new_databases_and_users_without_dropping_clients() {
    const ROLE: &str = "lifecycle_reload_user";
    let password = create_role(ROLE);
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(
        pg,
        "query_wait_timeout = \"1s\"",
        "pool_size = 1",
    ));
    let url = px.url(APP_USER, APP_PASSWORD, APP_DB);

    // `early` holds the only server connection inside a transaction, so
    // `other` cannot get one.
    let early = connect(&url).await;
    early.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let other = connect(&url).await;
    let err = other
        .simple_query("select 1")
        .await
        .expect_err("pool_size = 1 is taken");
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err}");

    let before = current_config(&px);
    assert!(before.contains("pool_size = 1\n"), "{before}");
    px.write_config(&format!(
        "{}\n[[users]]\nname = \"{ROLE}\"\npassword = \"{password}\"\n\n\
         [databases.other]\npool_size = 2\n[[databases.other.shards]]\nprimary = \"{}\"\n",
        before.replace("pool_size = 1\n", "pool_size = 2\n"),
        pg.addr(APP_DB)
    ));
    px.send_signal(libc::SIGHUP);
    assert!(
        px.wait_for_log("configuration reloaded", PATIENCE),
        "no reload in the log"
    );

    // pool_size = 2: a second server connection while `early` keeps its own.
    other
        .simple_query("select 1")
        .await
        .expect("pool_size = 2 after the reload");
    // The client connected before the reload was not dropped, nor its transaction.
    early.batch_execute("SELECT 2; COMMIT").await.unwrap();

    // The new user and the new database.
    let newcomer = connect(&px.url(ROLE, &password, "other")).await;
    let row = newcomer
        .query_one("select current_user::text, current_database()::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), ROLE);
    assert_eq!(row.get::<_, String>(1), APP_DB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_bad_file_is_refused_and_the_running_config_stays() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", ""));
    let url = px.url(APP_USER, APP_PASSWORD, APP_DB);
    let early = connect(&url).await;
    early.simple_query("select 1").await.unwrap();

    let good = current_config(&px);
    px.write_config(&format!(
        "{}\n[databases.other]\npool_sise = 2\n[[databases.other.shards]]\nprimary = \"{}\"\n",
        good,
        pg.addr(APP_DB)
    ));
    px.send_signal(libc::SIGHUP);
    assert!(
        px.wait_for_log("reload refused", PATIENCE),
        "the refusal is not logged"
    );
    assert!(
        px.log().contains("databases.other.pool_sise"),
        "the log names the bad key:\n{}",
        px.log()
    );

    // The running configuration stays: old clients and new ones are served, and
    // the database only the bad file had does not exist.
    early.simple_query("select 1").await.unwrap();
    let fresh = connect(&url).await;
    fresh.simple_query("select 1").await.unwrap();
    let err = try_connect(&px.url(APP_USER, APP_PASSWORD, "other"))
        .await
        .expect_err("the refused file's database must not appear");
    assert_eq!(err.code(), Some(&SqlState::INVALID_CATALOG_NAME), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_new_timeouts_to_connected_clients() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "query_timeout = \"0s\"", ""));
    let client = connect(&px.url(APP_USER, APP_PASSWORD, APP_DB)).await;
    client.simple_query("select 1").await.unwrap();

    let before = current_config(&px);
    px.write_config(&before.replace("query_timeout = \"0s\"", "query_timeout = \"1s\""));
    px.send_signal(libc::SIGHUP);
    assert!(
        px.wait_for_log("configuration reloaded", PATIENCE),
        "no reload in the log"
    );

    let err = client
        .simple_query("select pg_sleep(20)")
        .await
        .expect_err("query_timeout = 1s now applies to this client too");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_removing_a_database_refuses_new_clients_and_keeps_connected_ones() {
    let pg = shared_primary();
    let px = start_pgmux(&pgmux_config(pg, "", ""));
    let with_other = format!(
        "{}\n[databases.leaving]\n[[databases.leaving.shards]]\nprimary = \"{}\"\n",
        current_config(&px),
        pg.addr(APP_DB)
    );
    px.write_config(&with_other);
    px.send_signal(libc::SIGHUP);
    assert!(px.wait_for_log("configuration reloaded", PATIENCE));
    let url = px.url(APP_USER, APP_PASSWORD, "leaving");
    let staying = connect(&url).await;
    staying.simple_query("select 1").await.unwrap();

    let without = with_other.replace("[databases.leaving]", "[databases.left]");
    let without = without.replace("[[databases.leaving.shards]]", "[[databases.left.shards]]");
    px.write_config(&without);
    px.send_signal(libc::SIGHUP);
    let reloaded = poll_until(PATIENCE, || {
        px.log().matches("configuration reloaded").count() >= 2
    });
    assert!(reloaded, "no second reload in the log");

    let err = try_connect(&url)
        .await
        .expect_err("a removed database takes no new clients");
    assert_eq!(err.code(), Some(&SqlState::INVALID_CATALOG_NAME), "{err}");
    let row = staying
        .query_one("select current_database()::text", &[])
        .await
        .expect("a client of a removed database is not dropped");
    assert_eq!(row.get::<_, String>(0), APP_DB);
}

// ------------------------------------------------------------------ SIGTERM / SIGINT

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_open_transaction_commit_then_exits_0() {
    const ID: i32 = 7_310_001;
    let pg = shared_primary();
    let mut px = start_pgmux(&pgmux_config(pg, "shutdown_timeout = \"120s\"", ""));
    let url = px.url(APP_USER, APP_PASSWORD, APP_DB);

    let (busy, _busy_task) = connect_with_task(&url).await.unwrap();
    busy.batch_execute(&format!(
        "BEGIN; INSERT INTO t (id, v) VALUES ({ID}, 'drained')"
    ))
    .await
    .unwrap();
    let (idle, idle_task) = connect_with_task(&url).await.unwrap();
    idle.simple_query("select 1").await.unwrap();

    px.send_signal(libc::SIGTERM);

    // New connections are refused.
    let closed = poll_until_async(PATIENCE, || async { !px.accepts_tcp() }).await;
    assert!(closed, "pgmux still accepts connections after SIGTERM");
    // The idle client is told and closed.
    let idle_closed = poll_until_async(PATIENCE, || async { idle_task.is_finished() }).await;
    assert!(idle_closed, "the idle client was not closed");
    let err = idle_task
        .await
        .unwrap()
        .expect_err("the idle client's connection ends with an error");
    assert_eq!(err.code(), Some(&SqlState::ADMIN_SHUTDOWN), "{err}");

    // The open transaction is still served, and pgmux waits for it.
    assert!(
        px.wait_exit(Duration::ZERO).is_none(),
        "pgmux exited with a transaction open"
    );
    busy.batch_execute(&format!(
        "UPDATE t SET v = v || ' and committed' WHERE id = {ID}; COMMIT"
    ))
    .await
    .expect("the open transaction commits after SIGTERM");

    let status = px
        .wait_exit(EXIT_DEADLINE)
        .expect("pgmux exits once the transaction is done");
    assert!(status.success(), "exit status {status}");
    assert_eq!(
        pg.sql(APP_DB, &format!("select v from t where id = {ID}")),
        "drained and committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_0_after_shutdown_timeout_when_a_transaction_never_ends() {
    let pg = shared_primary();
    let mut px = start_pgmux(&pgmux_config(pg, "shutdown_timeout = \"1s\"", ""));
    let (stuck, stuck_task) = connect_with_task(&px.url(APP_USER, APP_PASSWORD, APP_DB))
        .await
        .unwrap();
    stuck.batch_execute("BEGIN; SELECT 1").await.unwrap();

    px.send_signal(libc::SIGTERM);
    let status = px
        .wait_exit(EXIT_DEADLINE)
        .expect("pgmux exits after shutdown_timeout");
    assert!(status.success(), "exit status {status}");
    assert!(
        px.log().contains("shutdown_timeout"),
        "the log says why connections were closed:\n{}",
        px.log()
    );
    let closed = poll_until_async(PATIENCE, || async { stuck_task.is_finished() }).await;
    assert!(closed, "the stuck client's connection is still open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_0_at_once_even_with_an_open_transaction() {
    let pg = shared_primary();
    // A shutdown_timeout far beyond EXIT_DEADLINE: exiting in time proves that
    // SIGINT did not wait for the transaction.
    let mut px = start_pgmux(&pgmux_config(pg, "shutdown_timeout = \"1h\"", ""));
    let (open, open_task) = connect_with_task(&px.url(APP_USER, APP_PASSWORD, APP_DB))
        .await
        .unwrap();
    open.batch_execute("BEGIN; SELECT 1").await.unwrap();

    px.send_signal(libc::SIGINT);
    let status = px
        .wait_exit(EXIT_DEADLINE)
        .expect("pgmux exits promptly on SIGINT");
    assert!(status.success(), "exit status {status}");
    let closed = poll_until_async(PATIENCE, || async { open_task.is_finished() }).await;
    assert!(closed, "the client's connection is still open");
    let err = open
        .simple_query("select 1")
        .await
        .expect_err("the connection is gone");
    assert!(err.is_closed() || err.code().is_some(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_idle_clients_that_hold_a_server_connection_at_once() {
    let pg = shared_primary();
    // Far beyond EXIT_DEADLINE: exiting in time proves pgmux did not wait for
    // clients that have no transaction open.
    let mut px = start_pgmux(&pgmux_config(pg, "shutdown_timeout = \"1h\"", ""));
    let url = px.url(APP_USER, APP_PASSWORD, APP_DB);
    // A session-mode database gives each client its own server connection; LISTEN
    // pins a transaction-mode client to one.
    let session_db = "lifecycle_session";
    let body = format!(
        "{}\n[databases.{session_db}]\npool_mode = \"session\"\n\
         [[databases.{session_db}.shards]]\nprimary = \"{}\"\n",
        current_config(&px),
        pg.addr(APP_DB)
    );
    px.write_config(&body);
    px.send_signal(libc::SIGHUP);
    assert!(px.wait_for_log("configuration reloaded", PATIENCE));

    let (session_client, session_task) =
        connect_with_task(&px.url(APP_USER, APP_PASSWORD, session_db))
            .await
            .unwrap();
    session_client.simple_query("select 1").await.unwrap();
    let (pinned, pinned_task) = connect_with_task(&url).await.unwrap();
    pinned
        .batch_execute("LISTEN lifecycle_channel")
        .await
        .unwrap();

    px.send_signal(libc::SIGTERM);
    let status = px
        .wait_exit(EXIT_DEADLINE)
        .expect("pgmux exits without waiting for idle clients");
    assert!(status.success(), "exit status {status}");
    for task in [session_task, pinned_task] {
        let err = task
            .await
            .unwrap()
            .expect_err("the client's connection ends with an error");
        assert_eq!(err.code(), Some(&SqlState::ADMIN_SHUTDOWN), "{err}");
    }
}
