//! The contract's other drivers through pgmux in transaction mode, each with ten times
//! more clients than server connections: psycopg2 (simple protocol, client-side
//! parameters, a server-side cursor) and node-postgres (named prepared statements);
//! and JDBC's less travelled features, compared with what Postgres itself gives.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::process::run;
use support::*;

fn pool_of_two() -> Pgmux {
    start_pgmux(&pgmux_config(shared_primary(), "", "pool_size = 2"))
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn psycopg2_with_20_threads_on_2_server_connections() {
    let px = pool_of_two();
    let url = px.url(APP_USER, APP_PASSWORD, APP_DB);
    let out = run(
        Command::new(python())
            .arg(repo().join("tests/python/psycopg2_pool.py"))
            .arg(&url),
        Duration::from_secs(180),
        "psycopg2_pool.py",
    );
    assert!(
        out.status.success(),
        "psycopg2 run failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Installs node-postgres next to the test script once (npm registry).
fn node_modules(dir: &Path) {
    if dir.join("node_modules/pg/package.json").exists() {
        return;
    }
    let out = run(
        Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent"])
            .current_dir(dir),
        Duration::from_secs(300),
        "npm install pg",
    );
    assert!(
        out.status.success(),
        "npm install pg failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn node_postgres_named_statements_with_20_clients_on_2_server_connections() {
    let dir = repo().join("target/node-tests");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        repo().join("tests/node/package.json"),
        dir.join("package.json"),
    )
    .unwrap();
    std::fs::copy(repo().join("tests/node/pg_pool.js"), dir.join("pg_pool.js")).unwrap();
    node_modules(&dir);

    let px = pool_of_two();
    let url = px.url(APP_USER, APP_PASSWORD, APP_DB);
    let out = run(
        Command::new("node").arg(dir.join("pg_pool.js")).arg(&url),
        Duration::from_secs(180),
        "node pg_pool.js",
    );
    assert!(
        out.status.success(),
        "node-postgres run failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

/// A driver that logs in while no server was ever reached still connects: pgmux
/// answers the login itself with stand-in parameters, `server_version` among them,
/// which asyncpg and JDBC need, and the statement then fails with 08006.
#[test]
fn asyncpg_logs_in_while_the_server_was_never_reachable_and_gets_08006() {
    let pg = shared_primary();
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("127.0.0.1:{}", listener.local_addr().unwrap().port())
    };
    let config = pgmux_config(pg, "server_connect_timeout = \"1s\"", "")
        .replace(&pg.addr(APP_DB), &format!("{dead}/{APP_DB}"));
    let px = start_pgmux(&config);
    let url = px.url(APP_USER, APP_PASSWORD, APP_DB);
    let script = r#"
import asyncio, sys
import asyncpg

async def main():
    conn = await asyncpg.connect(sys.argv[1])
    print("version", conn.get_server_version().major)
    try:
        await conn.fetchval("select 1")
    except asyncpg.PostgresError as e:
        print("sqlstate", e.sqlstate)
    await conn.close()

asyncio.run(main())
"#;
    let out = run(
        Command::new(python()).arg("-c").arg(script).arg(&url),
        Duration::from_secs(120),
        "asyncpg login with no server",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "asyncpg failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("version 12"), "{stdout}");
    assert!(stdout.contains("sqlstate 08006"), "{stdout}");
}

/// JDBC features that take the protocol's less travelled paths (tests/java/
/// JdbcFeatures.java: fastpath calls for large objects, a cursor read in batches,
/// autosave savepoints, every query mode, batches, COPY, a query timeout, a callable
/// statement, notifications, binary transfer) give through pgmux, in both pool
/// modes, what they give straight from Postgres.
#[test]
fn jdbc_features_through_pgmux_give_what_postgres_gives() {
    let (java, jar) = jdbc();
    let pg = shared_primary();
    let features = |port: u16| {
        let out = run(
            Command::new(&java)
                .arg("-cp")
                .arg(&jar)
                .arg(repo().join("tests/java/JdbcFeatures.java"))
                .arg(format!("jdbc:postgresql://127.0.0.1:{port}/{APP_DB}"))
                .args([APP_USER, APP_PASSWORD]),
            Duration::from_secs(180),
            "JdbcFeatures.java",
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() && stdout.ends_with("done\n"),
            "JdbcFeatures.java failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let direct = features(pg.port);
    assert!(direct.contains("lo read: hello large object"), "{direct}");
    for mode in ["transaction", "session"] {
        let px = start_pgmux(&pgmux_config(
            pg,
            &format!("pool_mode = \"{mode}\""),
            "pool_size = 4",
        ));
        assert_eq!(features(px.port), direct, "{mode} mode");
    }
}
