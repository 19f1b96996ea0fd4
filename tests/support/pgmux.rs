//! Running the pgmux binary under test.
//!
//! [`pgmux_config`] writes the usual configuration in front of a [`PgServer`];
//! [`start_pgmux`] writes a configuration to a temp dir, starts
//! `pgmux --config FILE` with stdout and stderr going to a log file there, and
//! returns once pgmux listens on its `[proxy].listen` address. The
//! log is printed when a test panics while a [`Pgmux`] is alive.

use std::fs::{self, File};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::postgres::PgServer;
use super::process::{free_port, spawn_watchdog, stop_watchdog, wait_with_deadline};
use super::{
    poll_until, ADMIN_PASSWORD, ADMIN_USER, APP_DB, APP_PASSWORD, APP_USER, MD5_PASSWORD, MD5_USER,
};

/// How long pgmux may take to start listening.
const READY_DEADLINE: Duration = Duration::from_secs(30);

/// Placeholder a caller may write instead of an address (`listen = "{listen}"`);
/// [`start_pgmux`] replaces it with `127.0.0.1:<free port>`.
pub const LISTEN_PLACEHOLDER: &str = "{listen}";

/// Start attempts when the chosen port is taken before pgmux binds it.
const PORT_ATTEMPTS: usize = 3;

/// The path of the pgmux binary Cargo built for these tests; `PGMUX_TEST_BIN`
/// overrides it (e.g. to run the suite against a release build).
pub fn pgmux_bin() -> PathBuf {
    std::env::var_os("PGMUX_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_pgmux")))
}

/// A command for the pgmux binary, for subcommands (`check`, `shard`,
/// `--version`) run to completion with [`super::process::run`].
pub fn pgmux_command() -> Command {
    Command::new(pgmux_bin())
}

/// A complete configuration: `[proxy]` listening on a free 127.0.0.1 port with
/// metrics off, then `extra_proxy` (more `[proxy]` keys; it may end with further
/// top-level tables such as `[tls]`), users `app`, `md5user` and `admin`, and
/// `[databases.app]` with `extra_db` (more keys of that table) and one shard whose
/// primary is `pg`.
pub fn pgmux_config(pg: &PgServer, extra_proxy: &str, extra_db: &str) -> String {
    pgmux_config_with_replicas(pg, &[], extra_proxy, extra_db)
}

/// [`pgmux_config`] with `replicas` listed as the shard's replicas.
pub fn pgmux_config_with_replicas(
    primary: &PgServer,
    replicas: &[&PgServer],
    extra_proxy: &str,
    extra_db: &str,
) -> String {
    let replicas = replicas
        .iter()
        .map(|r| format!("{:?}", r.addr(APP_DB)))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"[proxy]
listen = "127.0.0.1:{listen_port}"
metrics_listen = ""
workers = {workers}
{pipeline}{extra_proxy}

[[users]]
name = "{APP_USER}"
password = "{APP_PASSWORD}"

[[users]]
name = "{MD5_USER}"
password = "{MD5_PASSWORD}"

[[users]]
name = "{ADMIN_USER}"
password = "{ADMIN_PASSWORD}"

[databases.{APP_DB}]
{extra_db}

[[databases.{APP_DB}.shards]]
primary = "{primary}"
replicas = [{replicas}]
"#,
        listen_port = free_port(),
        primary = primary.addr(APP_DB),
        workers = test_workers(),
        pipeline = test_pipeline(extra_proxy),
    )
}

/// `server_pipelining`, on by default, as `PGMUX_TEST_PIPELINE` says, unless the test
/// sets it itself: `off`, or `any` to send statements behind statements of any
/// duration, not only those known to be short (`scripts/test.sh` runs the suites of
/// clients' protocols once more so, to hand connections on as often as it can).
fn test_pipeline(extra_proxy: &str) -> &'static str {
    if extra_proxy.contains("server_pipelining") {
        return "";
    }
    match std::env::var("PGMUX_TEST_PIPELINE").as_deref() {
        Ok("off") => "server_pipelining = false\n",
        Ok("any") => "server_pipelining_threshold = \"0s\"\n",
        _ => "",
    }
}

/// `config` with `[proxy].workers` set to `n`.
pub fn with_workers(config: &str, n: usize) -> String {
    let current = format!("\nworkers = {}\n", test_workers());
    assert!(config.contains(&current), "not a pgmux_config: {config}");
    config.replacen(&current, &format!("\nworkers = {n}\n"), 1)
}

/// `[proxy].workers` of every test configuration: 2, so that sessions are dealt to two
/// event loops sharing the pools (what `workers = 0` gives on a two-core machine),
/// unless `PGMUX_TEST_WORKERS` says otherwise (`scripts/test.sh` runs some suites
/// again with 1, and with `PGMUX_IO=epoll`).
fn test_workers() -> String {
    std::env::var("PGMUX_TEST_WORKERS").unwrap_or_else(|_| "2".to_string())
}

/// A running pgmux process owned by a test; SIGKILLed on drop.
#[derive(Debug)]
pub struct Pgmux {
    /// The port of `[proxy].listen` on 127.0.0.1.
    pub port: u16,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    child: Child,
    /// Kills pgmux if this process ends without dropping the `Pgmux`.
    watchdog: Child,
    /// Holds the config and the log; removed on drop.
    _dir: tempfile::TempDir,
}

/// Writes `toml_body` to a temp dir and starts pgmux with it; returns once pgmux
/// listens on `[proxy].listen` (which must be a 127.0.0.1 address,
/// or [`LISTEN_PLACEHOLDER`]). Panics with pgmux's log when it exits first or is
/// not listening within 30 s. When the port turns out to be taken, it retries on a
/// fresh one — so always use [`Pgmux::port`], not the port in the text.
pub fn start_pgmux(toml_body: &str) -> Pgmux {
    let dir = tempfile::Builder::new()
        .prefix("pgmux-proxy-")
        .tempdir()
        .expect("create a temp dir for pgmux");
    let mut body = toml_body.replace(LISTEN_PLACEHOLDER, &format!("127.0.0.1:{}", free_port()));
    let config_path = dir.path().join("pgmux.toml");
    let log_path = dir.path().join("pgmux.log");

    for attempt in 1..=PORT_ATTEMPTS {
        let port = listen_port(&body);
        fs::write(&config_path, &body).expect("write the pgmux config");
        let (mut child, mut watchdog) = spawn(&config_path, &log_path);
        let why = match wait_listening(&mut child, port, READY_DEADLINE) {
            Ok(()) => {
                return Pgmux {
                    port,
                    config_path,
                    log_path,
                    child,
                    watchdog,
                    _dir: dir,
                }
            }
            Err(why) => why,
        };
        stop_watchdog(&mut watchdog);
        let _ = child.kill();
        let _ = child.wait();
        let log = String::from_utf8_lossy(&fs::read(&log_path).unwrap_or_default()).into_owned();
        if attempt < PORT_ATTEMPTS && log.contains("in use") {
            body = body.replace(
                &format!("127.0.0.1:{port}"),
                &format!("127.0.0.1:{}", free_port()),
            );
            continue;
        }
        panic!(
            "pgmux did not start: {why}\n--- config {} ---\n{body}\n--- pgmux log ---\n{log}",
            config_path.display()
        );
    }
    unreachable!("the last attempt returns or panics")
}

/// Polls until pgmux itself listens on `port`, or exits, or `deadline` passes.
/// A successful connect alone would not do: when another process holds the port,
/// the connect succeeds while pgmux fails to bind.
fn wait_listening(child: &mut Child, port: u16, deadline: Duration) -> Result<(), String> {
    let pid = child.id();
    let mut exited = None;
    let listening = poll_until(deadline, || {
        if let Ok(Some(status)) = child.try_wait() {
            exited = Some(status);
            return true;
        }
        listens_on(pid, port).unwrap_or_else(|| accepts_tcp(port))
    });
    match (exited, listening) {
        (Some(status), _) => Err(format!("pgmux exited ({status}) before listening")),
        (None, true) => Ok(()),
        (None, false) => Err(format!(
            "pgmux is not listening on 127.0.0.1:{port} after {deadline:?}"
        )),
    }
}

/// Whether process `pid` has a TCP socket listening on `port`, from
/// `/proc/net/tcp{,6}` and the socket inodes among `/proc/PID/fd`; `None` when
/// `/proc` cannot tell (not Linux).
fn listens_on(pid: u32, port: u16) -> Option<bool> {
    const LISTEN: &str = "0A";
    let mut inodes = Vec::new();
    let mut readable = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        readable = true;
        // Columns: sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|hex| u16::from_str_radix(hex, 16).ok());
            if *state == LISTEN && local_port == Some(port) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if !readable {
        return None;
    }
    if inodes.is_empty() {
        return Some(false);
    }
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(fds.flatten().any(|fd| {
        fs::read_link(fd.path())
            .map(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
            .unwrap_or(false)
    }))
}

fn accepts_tcp(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// The port of `[proxy].listen` in a configuration text.
fn listen_port(body: &str) -> u16 {
    let table: toml::Table = toml::from_str(body)
        .unwrap_or_else(|e| panic!("start_pgmux: the config is not valid TOML: {e}\n{body}"));
    let listen = table
        .get("proxy")
        .and_then(|p| p.get("listen"))
        .and_then(|l| l.as_str())
        .unwrap_or_else(|| panic!("start_pgmux: the config has no [proxy].listen:\n{body}"));
    let addr: SocketAddr = listen
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("start_pgmux: [proxy].listen = {listen:?} is not host:port"));
    addr.port()
}

fn spawn(config_path: &Path, log_path: &Path) -> (Child, Child) {
    let log = File::create(log_path).expect("create the pgmux log");
    let log_err = log.try_clone().expect("clone the pgmux log handle");
    let child = Command::new(pgmux_bin())
        .arg("--config")
        .arg(config_path)
        .env_remove("PGMUX_CONFIG")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", pgmux_bin().display()));
    let pid = child.id().to_string();
    let watchdog = spawn_watchdog(r#"kill -9 "$1" 2>/dev/null"#, &[pid.as_ref()]);
    (child, watchdog)
}

impl Pgmux {
    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A `postgres://` URL pointing at this pgmux.
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        super::url(self.port, user, password, db)
    }

    /// Sends a signal (`libc::SIGHUP`, `libc::SIGTERM`, ...) to pgmux.
    pub fn send_signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child, which we have not reaped while
        // `self.child` is alive (reaping happens only through `self.child`).
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(
            rc,
            0,
            "kill({}, {sig}): {}",
            self.child.id(),
            std::io::Error::last_os_error()
        );
    }

    /// Waits at most `deadline` for pgmux to exit; its status, or `None` while it
    /// still runs.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let status = wait_with_deadline(&mut self.child, deadline);
        if status.is_some() {
            // The pid may be reused from now on: the watchdog must not kill it.
            stop_watchdog(&mut self.watchdog);
        }
        status
    }

    /// Everything pgmux has logged so far (stdout and stderr).
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log_path).unwrap_or_default()).into_owned()
    }

    /// Waits at most `deadline` for `needle` to appear in the log.
    pub fn wait_for_log(&self, needle: &str, deadline: Duration) -> bool {
        poll_until(deadline, || self.log().contains(needle))
    }

    /// Replaces the configuration file (then `send_signal(libc::SIGHUP)` or the
    /// admin `RELOAD` makes pgmux read it).
    pub fn write_config(&self, toml_body: &str) {
        fs::write(&self.config_path, toml_body).expect("rewrite the pgmux config");
    }

    /// Whether pgmux accepts TCP connections right now.
    pub fn accepts_tcp(&self) -> bool {
        accepts_tcp(self.port)
    }

    fn kill(&mut self) {
        stop_watchdog(&mut self.watchdog);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Pgmux {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- pgmux log ({}) ---\n{}\n--- end of pgmux log ---",
                self.log_path.display(),
                self.log()
            );
        }
    }
}
