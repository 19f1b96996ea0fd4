//! Throwaway Postgres servers: a primary made with `initdb`, streaming replicas made
//! with `pg_basebackup`, each in its own temp dir on its own ephemeral port.
//!
//! Every server is configured so that pgmux meets real authentication: clients on
//! 127.0.0.1 log in with SCRAM-SHA-256 (`md5user` with MD5), while the harness
//! itself uses the unix socket in the server's temp dir as the `postgres` superuser
//! with `trust`. A server is stopped and its directory removed when its
//! [`PgServer`] is dropped, and by a watchdog process when the test binary exits
//! without dropping it (servers kept in statics, or a killed test run).

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::process::{
    as_postgres, free_port, give_to_postgres, hermetic_env, make_temp_dir, pg_bin, process_alive,
    run, run_ok, run_with_input, spawn_watchdog, stop_watchdog, wait_with_deadline, SLOW_STEP,
};
use super::{poll_until, APP_DB, APP_PASSWORD, APP_USER, MD5_PASSWORD, MD5_USER, SUPERUSER};

/// Which part a server plays in a topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
}

/// One running Postgres server owned by a test.
#[derive(Debug)]
pub struct PgServer {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// The temp dir holding everything below; removed on drop.
    pub dir: PathBuf,
    /// `PGDATA`.
    pub data_dir: PathBuf,
    /// Where the unix socket lives (the harness logs in there as `postgres`).
    pub socket_dir: PathBuf,
    pub role: Role,
    /// The server's log (`pg_ctl -l`).
    pub log_path: PathBuf,
    /// Stops the server if this process ends without dropping the `PgServer`.
    watchdog: Child,
}

/// Settings the harness owns, in a file `postgresql.conf` includes; rewritten for
/// every start attempt (a new port after a clash) and for each replica (which copies
/// its primary's files).
const HARNESS_CONF: &str = "pgmux_harness.conf";

/// How many times a start is retried on a fresh port when the port was taken
/// between choosing it and binding it.
const PORT_ATTEMPTS: usize = 5;

/// `pg_hba.conf`: the harness (the superuser, replication) uses the socket with
/// trust; everyone else must authenticate for real, over TCP or the socket. `md5user`
/// has an MD5 verifier, which the `scram-sha-256` method would refuse, so it gets the
/// `md5` method.
const PG_HBA: &str = "\
# TYPE  DATABASE     USER     ADDRESS        METHOD
local   all          postgres                trust
local   replication  all                     trust
local   all          md5user                 md5
local   all          all                     scram-sha-256
host    all          md5user  127.0.0.1/32   md5
host    all          all      127.0.0.1/32   scram-sha-256
host    replication  all      127.0.0.1/32   scram-sha-256
";

/// Roles, the database and the table every primary starts with. Run by psql, one
/// statement at a time (CREATE DATABASE cannot run inside a transaction block).
fn bootstrap_sql() -> String {
    format!(
        "\
CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}';
SET password_encryption = 'md5';
CREATE ROLE {MD5_USER} LOGIN PASSWORD '{MD5_PASSWORD}';
RESET password_encryption;
CREATE DATABASE {APP_DB} OWNER {APP_USER};
\\connect {APP_DB}
CREATE TABLE t (id int PRIMARY KEY, v text);
ALTER TABLE t OWNER TO {APP_USER};
GRANT SELECT, INSERT, UPDATE, DELETE ON t TO {MD5_USER};
"
    )
}

/// Starts a new primary (about 2 s): initdb, SCRAM/MD5 roles, database `app` with
/// table `t(id int primary key, v text)` owned by `app`.
pub fn start_primary() -> PgServer {
    let mut server = PgServer::new_dir("pgmux-primary-", Role::Primary);
    let out = run(
        as_postgres("initdb", &server.dir)
            .arg("-D")
            .arg(&server.data_dir)
            .args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8"])
            .args(["--locale=C", "--no-sync"]),
        SLOW_STEP,
        "initdb",
    );
    assert!(
        out.status.success(),
        "initdb failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(server.data_dir.join("pg_hba.conf"), PG_HBA).expect("write pg_hba.conf");
    let mut conf = fs::OpenOptions::new()
        .append(true)
        .open(server.data_dir.join("postgresql.conf"))
        .expect("open postgresql.conf");
    writeln!(conf, "\ninclude '{HARNESS_CONF}'").expect("append to postgresql.conf");
    drop(conf);

    server.start_on_a_free_port();
    let out = run_with_input(
        server
            .psql_command("postgres")
            .args(["-q", "-v", "ON_ERROR_STOP=1", "-f", "-"]),
        Some(&bootstrap_sql()),
        SLOW_STEP,
        "create roles, database and table",
    );
    assert!(
        out.status.success(),
        "bootstrap SQL failed on port {}: {}\nserver log:\n{}",
        server.port,
        String::from_utf8_lossy(&out.stderr),
        server.log_tail(40)
    );
    server
}

/// Starts a streaming replica of `primary` (pg_basebackup -R -X stream -c fast) on
/// its own port and returns once it accepts connections and is in recovery.
pub fn start_replica(primary: &PgServer) -> PgServer {
    let mut server = PgServer::new_dir("pgmux-replica-", Role::Replica);
    run_ok(
        as_postgres("pg_basebackup", &server.dir)
            .arg("-h")
            .arg(&primary.socket_dir)
            .arg("-p")
            .arg(primary.port.to_string())
            .args(["-U", SUPERUSER, "-D"])
            .arg(&server.data_dir)
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]),
        SLOW_STEP,
        "pg_basebackup",
    );
    server.start_on_a_free_port();
    let in_recovery = poll_until(SLOW_STEP, || {
        server
            .try_sql("postgres", "select pg_is_in_recovery()")
            .as_deref()
            == Ok("t")
    });
    assert!(
        in_recovery,
        "replica on port {} is not in recovery after {SLOW_STEP:?}; log:\n{}",
        server.port,
        server.log_tail(40)
    );
    server
}

/// The primary shared by all tests of one test binary, started on first use and
/// stopped when the binary exits (by its watchdog).
pub fn shared_primary() -> &'static PgServer {
    static PRIMARY: OnceLock<PgServer> = OnceLock::new();
    PRIMARY.get_or_init(start_primary)
}

/// A streaming replica of [`shared_primary`], shared the same way.
pub fn shared_replica() -> &'static PgServer {
    static REPLICA: OnceLock<PgServer> = OnceLock::new();
    REPLICA.get_or_init(|| start_replica(shared_primary()))
}

impl PgServer {
    /// Makes the temp dir and its watchdog; the server is not started yet, but
    /// dropping the value already cleans up.
    fn new_dir(prefix: &str, role: Role) -> PgServer {
        let dir = make_temp_dir(prefix);
        give_to_postgres(&dir);
        let data_dir = dir.join("data");
        let watchdog = spawn_watchdog(
            // $1 pg_ctl, $2 data dir, $3 temp dir; runs as root when tests do.
            r#"if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$1" -D "$2" stop -m immediate -w -t 30
else "$1" -D "$2" stop -m immediate -w -t 30; fi
rm -rf "$3""#,
            &[
                pg_bin("pg_ctl").as_os_str(),
                data_dir.as_os_str(),
                dir.as_os_str(),
            ],
        );
        PgServer {
            port: 0,
            socket_dir: dir.clone(),
            log_path: dir.join("postgres.log"),
            data_dir,
            dir,
            role,
            watchdog,
        }
    }

    /// `host:port/dbname` as pgmux's `[[databases.X.shards]]` entries spell it.
    pub fn addr(&self, db: &str) -> String {
        format!("127.0.0.1:{}/{db}", self.port)
    }

    /// `host:port/dbname` with the host the directory of this server's Unix-domain
    /// socket.
    pub fn socket_addr(&self, db: &str) -> String {
        format!("{}:{}/{db}", self.socket_dir.display(), self.port)
    }

    /// A `postgres://` URL for this server over TCP.
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        super::url(self.port, user, password, db)
    }

    /// psql connected as the superuser over the unix socket (trust), unaligned
    /// tuples-only output, no psqlrc.
    pub fn psql_command(&self, db: &str) -> Command {
        let mut cmd = Command::new(pg_bin("psql"));
        hermetic_env(&mut cmd);
        cmd.args(["-X", "-A", "-t", "-h"])
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-U", SUPERUSER, "-d", db]);
        cmd
    }

    /// Runs `sql` as the superuser in database `db`; the trimmed output, or the
    /// error text.
    pub fn try_sql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = run(
            self.psql_command(db)
                .args(["-v", "ON_ERROR_STOP=1", "-c", sql]),
            Duration::from_secs(60),
            "psql as superuser",
        );
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }

    /// Runs `sql` as the superuser in database `db` and returns the trimmed
    /// output (`-A -t`: one row a line, columns separated by `|`). Panics on error.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        self.try_sql(db, sql)
            .unwrap_or_else(|e| panic!("`{sql}` on port {} failed: {e}", self.port))
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Whether the server accepts TCP connections right now.
    pub fn accepts_tcp(&self) -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`), keeping its files:
    /// for tests of a server going down. [`PgServer::start`] brings it back.
    pub fn stop(&mut self) {
        // Never panics: Drop calls it, possibly while a test is unwinding.
        let spawned = as_postgres("pg_ctl", &self.dir)
            .arg("-D")
            .arg(&self.data_dir)
            .args(["stop", "-m", "immediate", "-w", "-t", "60"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let stopped = match spawned {
            Ok(mut child) => match wait_with_deadline(&mut child, Duration::from_secs(90)) {
                Some(status) => status.success(),
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    false
                }
            },
            Err(_) => false,
        };
        if !stopped {
            self.kill_postmaster();
        }
    }

    /// Starts a stopped server again on the same port.
    pub fn start(&mut self) {
        if let Err(log) = self.try_start() {
            panic!("restarting postgres on port {} failed:\n{log}", self.port);
        }
    }

    /// The postmaster's pid, from `postmaster.pid`.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    fn start_on_a_free_port(&mut self) {
        let mut last_log = String::new();
        for _ in 0..PORT_ATTEMPTS {
            self.port = free_port();
            match self.try_start() {
                Ok(()) => return,
                Err(log) if port_clash(&log) => last_log = log,
                Err(log) => panic!(
                    "postgres ({:?}) failed to start on port {}:\n{log}",
                    self.role, self.port
                ),
            }
        }
        panic!("postgres found its port taken {PORT_ATTEMPTS} times in a row:\n{last_log}");
    }

    /// Writes the harness settings for the current port and runs `pg_ctl start -w`.
    /// On failure, the part of the server log this attempt wrote.
    fn try_start(&mut self) -> Result<(), String> {
        let conf = self.data_dir.join(HARNESS_CONF);
        fs::write(&conf, harness_conf(self.port, &self.socket_dir)).expect("write harness conf");
        give_to_postgres(&conf);

        let log_before = fs::metadata(&self.log_path).map(|m| m.len()).unwrap_or(0) as usize;
        let out = run(
            as_postgres("pg_ctl", &self.dir)
                .arg("-D")
                .arg(&self.data_dir)
                .arg("-l")
                .arg(&self.log_path)
                .args(["-w", "-t", "120", "start"]),
            Duration::from_secs(180),
            "pg_ctl start",
        );
        if out.status.success() {
            return Ok(());
        }
        let log = fs::read(&self.log_path).unwrap_or_default();
        let new_part = String::from_utf8_lossy(log.get(log_before..).unwrap_or(&log[..]));
        Err(format!(
            "{}{}{new_part}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    fn kill_postmaster(&self) {
        if let Some(pid) = self.postmaster_pid() {
            if process_alive(pid) {
                // SAFETY: plain kill(2) on the pid Postgres recorded for itself.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

fn port_clash(log: &str) -> bool {
    log.contains("Address already in use") || log.contains("could not create any TCP/IP sockets")
}

fn harness_conf(port: u16, socket_dir: &Path) -> String {
    format!(
        "\
# Written by the pgmux test harness (tests/support/postgres.rs).
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{}'
password_encryption = 'scram-sha-256'
fsync = off
shared_buffers = 32MB
max_connections = 200
wal_level = replica
max_wal_senders = 5
hot_standby = on
",
        socket_dir.display()
    )
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- postgres {:?} on port {} (log {}), last lines ---\n{}\n---",
                self.role,
                self.port,
                self.log_path.display(),
                self.log_tail(30)
            );
        }
        if self.data_dir.join("postmaster.pid").exists() {
            self.stop();
        }
        stop_watchdog(&mut self.watchdog);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl PgServer {
    /// Turns TLS on: writes `cert_pem` and `key_pem` into the data directory as
    /// `server.crt` / `server.key` (owned by postgres, the key 0600), sets `ssl = on`
    /// with `ALTER SYSTEM`, and reloads. With `require_for_tcp`, pg_hba.conf lets TCP
    /// clients in only over TLS (`hostssl` lines), so a plain-text login is refused.
    /// Returns once new connections see the new settings.
    pub fn enable_tls(&self, cert_pem: &str, key_pem: &str, require_for_tcp: bool) {
        use std::os::unix::fs::PermissionsExt;
        for (name, pem, mode) in [
            ("server.crt", cert_pem, 0o644),
            ("server.key", key_pem, 0o600),
        ] {
            let path = self.data_dir.join(name);
            fs::write(&path, pem).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
            give_to_postgres(&path);
        }
        if require_for_tcp {
            let hba = PG_HBA.replace("\nhost ", "\nhostssl ");
            fs::write(self.data_dir.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        }
        for sql in [
            "ALTER SYSTEM SET ssl_cert_file = 'server.crt'",
            "ALTER SYSTEM SET ssl_key_file = 'server.key'",
            "ALTER SYSTEM SET ssl = on",
            "SELECT pg_reload_conf()",
        ] {
            self.sql("postgres", sql);
        }
        let on = poll_until(SLOW_STEP, || {
            self.try_sql("postgres", "SHOW ssl").as_deref() == Ok("on")
        });
        assert!(
            on,
            "ssl is not on after a reload on port {}; log:\n{}",
            self.port,
            self.log_tail(30)
        );
    }
}

/// Creates a login role `name` (SCRAM) on the shared primary; its password.
pub fn create_role(name: &str) -> String {
    let password = format!("{name}-secret");
    shared_primary().sql(
        "postgres",
        &format!("CREATE ROLE {name} LOGIN PASSWORD '{password}'"),
    );
    password
}
