//! Real Postgres clients for tests: tokio-postgres, psql, pgbench and a Python
//! virtualenv with the drivers that break proxies most often (psycopg 3, asyncpg,
//! psycopg2).

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

use super::process::{hermetic_env, pg_bin, run_ok, run_with_input};

/// How long one psql invocation may take before the test fails.
const PSQL_DEADLINE: Duration = Duration::from_secs(60);
/// How long one pgbench invocation may take before the test fails.
const PGBENCH_DEADLINE: Duration = Duration::from_secs(300);

/// Python packages in the test virtualenv. Changing this list rebuilds the venv.
const PY_REQUIREMENTS: &[&str] = &["psycopg[binary]", "asyncpg", "psycopg2-binary"];

/// `postgres://USER:PASSWORD@127.0.0.1:PORT/DB`.
pub fn url(port: u16, user: &str, password: &str, db: &str) -> String {
    format!("postgres://{user}:{password}@127.0.0.1:{port}/{db}")
}

/// Connects with tokio-postgres (no TLS) and spawns the connection task on the
/// current tokio runtime. Panics when the connection fails.
pub async fn connect(url: &str) -> Client {
    try_connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// Like [`connect`], returning the error (to check a SQLSTATE, e.g. with
/// `e.code() == Some(&SqlState::INVALID_PASSWORD)`).
pub async fn try_connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    connect_with_task(url).await.map(|(client, _task)| client)
}

/// Like [`try_connect`], also returning the connection task: its result carries
/// errors the server sends outside any query, such as a FATAL before closing
/// (`idle_transaction_timeout`, shutdown).
pub async fn connect_with_task(
    url: &str,
) -> Result<(Client, JoinHandle<Result<(), tokio_postgres::Error>>), tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    Ok((client, tokio::spawn(connection)))
}

/// The server's message of a database error (tokio-postgres' Display says only
/// "db error").
pub fn db_message(err: &tokio_postgres::Error) -> String {
    err.as_db_error()
        .map_or_else(|| err.to_string(), |e| e.message().to_owned())
}

/// `current_user` as a session logged in through `url` sees it.
pub async fn current_user_through(url: &str) -> String {
    connect(url)
        .await
        .query_one("select current_user::text", &[])
        .await
        .expect("select current_user")
        .get(0)
}

/// Runs psql (`-X`: no psqlrc) with `args` and extra environment `env` (e.g.
/// `[("PGPASSWORD", "app-secret")]`); libpq variables of the test environment are
/// ignored. Panics when psql runs longer than 60 s.
pub fn psql(args: &[&str], env: &[(&str, &str)]) -> Output {
    psql_with_input(args, env, None)
}

/// [`psql`] with `stdin` fed to it (e.g. with `-f -`).
pub fn psql_with_input(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(pg_bin("psql"));
    hermetic_env(&mut cmd);
    cmd.arg("-X").args(args).envs(env.iter().copied());
    run_with_input(&mut cmd, stdin, PSQL_DEADLINE, "psql")
}

/// Runs pgbench with `args` and extra environment `env`. Panics when it runs
/// longer than 300 s.
pub fn pgbench(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(pg_bin("pgbench"));
    hermetic_env(&mut cmd);
    cmd.args(args).envs(env.iter().copied());
    run_with_input(&mut cmd, None, PGBENCH_DEADLINE, "pgbench")
}

/// A Python interpreter with psycopg 3, asyncpg and psycopg2 installed: a
/// virtualenv under the target dir (`target/pyvenv`), made on first use by
/// `python3 -m venv` + pip (needs network once), then reused by every test binary.
/// A file lock keeps concurrent test binaries from building it twice.
/// `PGMUX_TEST_PYTHON` names the interpreter that creates the venv.
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(make_venv).clone()
}

/// Runs a Python `script` with [`python`]; panics with its stderr unless it succeeds,
/// and returns what it printed, trimmed.
pub fn run_python(script: &str) -> String {
    let out = run_with_input(
        Command::new(python()).args(["-c", script]),
        None,
        Duration::from_secs(120),
        "python",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn make_venv() -> PathBuf {
    let target = target_dir();
    fs::create_dir_all(&target).expect("create the target dir");
    let venv = target.join("pyvenv");
    let python = venv.join("bin").join("python");
    let marker = venv.join(".pgmux-requirements");
    let wanted = PY_REQUIREMENTS.join("\n");

    let lock = File::create(target.join("pyvenv.lock")).expect("create pyvenv.lock");
    // SAFETY: flock on a descriptor we own; released when `lock` is closed.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(
        rc,
        0,
        "flock pyvenv.lock: {}",
        std::io::Error::last_os_error()
    );

    if python.exists() && fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) {
        return python;
    }
    let _ = fs::remove_dir_all(&venv);
    let creator = std::env::var("PGMUX_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    run_ok(
        Command::new(&creator).args(["-m", "venv"]).arg(&venv),
        Duration::from_secs(300),
        "python3 -m venv",
    );
    run_ok(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(PY_REQUIREMENTS),
        Duration::from_secs(900),
        "pip install the Python drivers",
    );
    fs::write(&marker, wanted).expect("write the venv marker");
    drop(lock);
    python
}

/// The Cargo target dir (or `target/<triple>`) this test binary was built in:
/// the binary lives in `<target>/<profile>/deps/`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// The JDBC driver and a Java runtime, installed from Debian's packages when missing.
pub fn jdbc() -> (PathBuf, PathBuf) {
    let jar = PathBuf::from("/usr/share/java/postgresql.jar");
    let has_java = Command::new("java")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_java || !jar.exists() {
        let install = || {
            super::process::run(
                Command::new("apt-get")
                    .args(["install", "-y", "--no-install-recommends"])
                    .args(["default-jre-headless", "libpostgresql-jdbc-java"])
                    .env("DEBIAN_FRONTEND", "noninteractive"),
                Duration::from_secs(900),
                "apt-get install java and the JDBC driver",
            )
        };
        let mut out = install();
        if !out.status.success() {
            // The package lists may be missing or stale.
            super::process::run(
                Command::new("apt-get").arg("update"),
                Duration::from_secs(900),
                "apt-get update",
            );
            out = install();
        }
        assert!(
            out.status.success(),
            "installing java and libpostgresql-jdbc-java failed (run scripts/install-deps.sh): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (PathBuf::from("java"), jar)
}
