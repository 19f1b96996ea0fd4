//! Running external programs from tests: binaries of Postgres, commands as the
//! `postgres` OS user, deadlines on every child, free ports and orphan watchdogs.
//!
//! Postgres refuses to run as root, and these machines run tests as root, so the
//! server tools are started through `runuser -u postgres --` (and run directly when
//! the tests themselves are not root).

use std::collections::HashSet;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::Duration;

/// Where Debian puts the Postgres 15 tools; `PGMUX_PG_BIN` overrides it.
pub const PG_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// Environment variables that would make libpq tools connect somewhere else than
/// the command line says.
const LIBPQ_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGDATABASE",
    "PGDATA",
    "PGOPTIONS",
    "PGSERVICE",
    "PGSSLMODE",
    "PGTARGETSESSIONATTRS",
];

/// The path of a Postgres tool (`initdb`, `psql`, ...): `$PGMUX_PG_BIN/NAME`, else
/// the Postgres 15 directory, else the bare name looked up in `PATH`.
pub fn pg_bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("PGMUX_PG_BIN") {
        return Path::new(&dir).join(name);
    }
    let candidate = Path::new(PG_BIN_DIR).join(name);
    if candidate.exists() {
        candidate
    } else {
        PathBuf::from(name)
    }
}

pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// uid and gid of the `postgres` OS user.
fn postgres_ids() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| {
        let name = std::ffi::CString::new("postgres").expect("no NUL in a literal");
        // SAFETY: getpwnam gets a valid C string; the result is read before any
        // other getpw* call (OnceLock serialises callers within this process).
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        assert!(
            !pw.is_null(),
            "there is no `postgres` OS user; install Postgres (scripts/install-deps.sh)"
        );
        // SAFETY: pw is non-null and points to a valid passwd struct.
        unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
    })
}

/// Hands `path` to the `postgres` user when the tests run as root (Postgres needs
/// to own its data directory and the directory its unix socket lives in).
pub fn give_to_postgres(path: &Path) {
    if running_as_root() {
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", path.display()));
    }
}

/// A command for the Postgres tool `name`, run as the `postgres` OS user when the
/// tests run as root, in `cwd` (which that user must be able to enter).
pub fn as_postgres(name: &str, cwd: &Path) -> Command {
    let mut cmd = if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(pg_bin(name));
        c
    } else {
        Command::new(pg_bin(name))
    };
    cmd.current_dir(cwd);
    hermetic_env(&mut cmd);
    cmd
}

/// Removes libpq environment variables so a command goes where its arguments say.
pub fn hermetic_env(cmd: &mut Command) {
    for var in LIBPQ_ENV {
        cmd.env_remove(var);
    }
}

/// Runs `cmd` to completion with its stdout and stderr captured. Panics, naming
/// `what`, when it has not finished within `deadline` (the child is killed first).
pub fn run(cmd: &mut Command, deadline: Duration, what: &str) -> Output {
    run_with_input(cmd, None, deadline, what)
}

/// Like [`run`], feeding `input` to the command's stdin.
pub fn run_with_input(
    cmd: &mut Command,
    input: Option<&str>,
    deadline: Duration,
    what: &str,
) -> Output {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start {cmd:?}: {e}"));

    if let Some(text) = input {
        let mut stdin = child.stdin.take().expect("stdin was piped");
        let text = text.to_owned();
        thread::spawn(move || {
            use std::io::Write;
            // A command that exits without reading all of its input is not an
            // error of ours; its exit status tells.
            let _ = stdin.write_all(text.as_bytes());
        });
    }
    let stdout = drain(child.stdout.take().expect("stdout was piped"));
    let stderr = drain(child.stderr.take().expect("stderr was piped"));

    let status = match wait_with_deadline(&mut child, deadline) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            let out = String::from_utf8_lossy(&stdout.join().unwrap_or_default()).into_owned();
            let err = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
            panic!(
                "{what}: {cmd:?} did not finish within {deadline:?}; killed it.\n\
                 --- stdout ---\n{out}\n--- stderr ---\n{err}"
            );
        }
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// Like [`run`], and panics with the command's output unless it exits 0.
pub fn run_ok(cmd: &mut Command, deadline: Duration, what: &str) -> Output {
    let out = run(cmd, deadline, what);
    assert!(
        out.status.success(),
        "{what} failed ({}): {cmd:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    out
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Waits for `child` to exit, at most `deadline`. `None` when it is still running.
pub fn wait_with_deadline(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let mut status = None;
    super::poll_until(deadline, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    status
}

/// A TCP port on 127.0.0.1 that nothing listens on right now, and that this test
/// process has not handed out before. Another process may still take it before it
/// is used, so starters retry on "address in use".
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(|| Mutex::new(HashSet::new()));
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        drop(listener);
        if given
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(port)
        {
            return port;
        }
    }
}

/// Starts a watchdog: a shell that waits for this test process to go away (however
/// it ends: normal exit with servers in statics, panic, SIGKILL) and then runs
/// `cleanup` (a shell script; `$1`, `$2`, ... are `args`). It lives in its own
/// process group, so a Ctrl-C aimed at the test run does not kill it before it has
/// cleaned up. The owner kills it once it has cleaned up itself.
pub fn spawn_watchdog(cleanup: &str, args: &[&std::ffi::OsStr]) -> Child {
    let script = format!("while kill -0 $PPID 2>/dev/null; do sleep 1; done\n{cleanup}\n");
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("pgmux-test-watchdog")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start a watchdog shell: {e}"))
}

/// Stops a watchdog whose work its owner has done itself.
pub fn stop_watchdog(watchdog: &mut Child) {
    let _ = watchdog.kill();
    let _ = watchdog.wait();
}

/// True while `pid` names a live process (or a zombie not yet reaped).
pub fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// A fresh directory under the system temp dir whose name starts with `prefix`.
/// The caller removes it.
pub fn make_temp_dir(prefix: &str) -> PathBuf {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"))
        .keep()
}

/// How long a test may wait for a slow step (server start, pgmux start) before it
/// fails; generous because the machine is shared and noisy.
pub const SLOW_STEP: Duration = Duration::from_secs(120);
