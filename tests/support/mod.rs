//! The integration-test harness: real Postgres topologies, the pgmux binary, and
//! real clients, each owned by a guard whose `Drop` stops it.
//!
//! Every test file starts with `mod support;` and uses a subset of this module.
//!
//! - [`postgres`]: [`start_primary`], [`start_replica`], the per-binary shared
//!   fixtures [`shared_primary`] / [`shared_replica`], and [`PgServer`] (port,
//!   dirs, superuser SQL over the unix socket, stop/start).
//! - [`pgmux`]: [`pgmux_config`] and [`start_pgmux`], returning a [`Pgmux`] guard
//!   (signals, exit status, log).
//! - [`clients`]: tokio-postgres [`connect`], [`psql`], [`pgbench`], and a
//!   [`python`] with the drivers installed.
//! - [`wire`]: raw protocol messages (GSSENCRequest, CancelRequest, a trust-login
//!   client) and how many bytes pgmux has not read yet from a connection.
//! - [`poll_until`] / [`poll_until_async`]: tests wait for conditions with a
//!   deadline, never for a fixed time.
//!
//! Every server a primary starts with: role [`APP_USER`] (SCRAM), role
//! [`MD5_USER`] (MD5 verifier, `md5` in pg_hba), database [`APP_DB`] owned by
//! `app` with table `t(id int primary key, v text)`.

// Each test binary uses a subset of the harness: what it leaves out is neither
// dead code nor an unused re-export.
#![allow(dead_code, unused_imports)]

pub mod cancel;
pub mod clients;
pub mod extended;
pub mod link;
pub mod pgmux;
pub mod postgres;
pub mod process;
pub mod protocol;
pub mod session;
pub mod wire;

use std::future::Future;
use std::time::{Duration, Instant};

pub use clients::{
    connect, connect_with_task, current_user_through, db_message, jdbc, pgbench, psql,
    psql_with_input, python, run_python, try_connect, url,
};
pub use pgmux::{
    pgmux_bin, pgmux_command, pgmux_config, pgmux_config_with_replicas, start_pgmux, with_workers,
    Pgmux, LISTEN_PLACEHOLDER,
};
pub use postgres::{
    create_role, shared_primary, shared_replica, start_primary, start_replica, PgServer, Role,
};

/// The application role; logs in over TCP with SCRAM-SHA-256.
pub const APP_USER: &str = "app";
pub const APP_PASSWORD: &str = "app-secret";
/// The application database, owned by [`APP_USER`], with table `t`.
pub const APP_DB: &str = "app";
/// A role whose stored password is an MD5 hash; logs in over TCP with MD5.
pub const MD5_USER: &str = "md5user";
pub const MD5_PASSWORD: &str = "md5-secret";
/// The admin-console user in [`pgmux_config`] (no such Postgres role exists).
pub const ADMIN_USER: &str = "admin";
pub const ADMIN_PASSWORD: &str = "admin-secret";
/// The Postgres superuser; the harness uses it over the unix socket only.
pub const SUPERUSER: &str = "postgres";

/// The pause between two checks: short at first, then at most 100 ms.
fn backoff(pause: Duration) -> Duration {
    (pause * 2).min(Duration::from_millis(100))
}

/// Calls `f` until it returns true (then true) or `deadline` has passed (then
/// false).
pub fn poll_until(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    let mut pause = Duration::from_millis(5);
    loop {
        if f() {
            return true;
        }
        let now = Instant::now();
        if now >= end {
            return false;
        }
        std::thread::sleep(pause.min(end - now));
        pause = backoff(pause);
    }
}

/// [`poll_until`] for async checks, sleeping on the tokio timer.
pub async fn poll_until_async<F, Fut>(deadline: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    let mut pause = Duration::from_millis(5);
    loop {
        if f().await {
            return true;
        }
        let now = Instant::now();
        if now >= end {
            return false;
        }
        tokio::time::sleep(pause.min(end - now)).await;
        pause = backoff(pause);
    }
}
