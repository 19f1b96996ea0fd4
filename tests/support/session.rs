//! Helpers of the session-state suites (`session_state.rs`, `session_pinning.rs`):
//! steering clients onto a chosen server connection of a two-connection pool, clients
//! that keep the pool busy, and the check that a pinned client keeps its connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::*;

/// Postgres 15's defaults for the settings the tests change.
pub const DEFAULT_STATEMENT_TIMEOUT: &str = "0";
pub const DEFAULT_SEARCH_PATH: &str = "\"$user\", public";
pub const DEFAULT_WORK_MEM: &str = "4MB";
/// How long a cleanup pgmux does after a client leaves may take to show.
pub const CLEANUP_DEADLINE: Duration = Duration::from_secs(30);

pub fn app_url(px: &Pgmux) -> String {
    px.url(APP_USER, APP_PASSWORD, APP_DB)
}

/// pgmux with a pool of `pool_size` connections to the shared primary.
pub fn pgmux_with_pool(pool_size: usize) -> Pgmux {
    start_pgmux(&pgmux_config(
        shared_primary(),
        "",
        &format!("pool_size = {pool_size}"),
    ))
}

/// Runs one simple query and returns the first column of its rows as text.
pub async fn simple(client: &Client, sql: &str) -> Vec<String> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or("NULL").to_string()),
            _ => None,
        })
        .collect()
}

pub async fn pid(client: &Client) -> i32 {
    client
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// `current_setting(name)` and the backend pid, in one statement (one transaction).
pub async fn setting_and_pid(client: &Client, name: &str) -> (String, i32) {
    let row = client
        .query_one(
            "select current_setting($1), pg_backend_pid()",
            &[&name.to_string()],
        )
        .await
        .unwrap_or_else(|e| panic!("current_setting({name}): {e}"));
    (row.get(0), row.get(1))
}

/// Steers clients onto a chosen server connection of a `pool_size = 2` pool: two
/// holder clients keep both connections in open transactions, and [`Steering::free`]
/// commits one of them so that connection is the only one anybody can get. The
/// holders are clients too: [`Steering::retake`] checks that they see `settings`
/// (name, value) on the connection they take back — another client's settings must
/// not leak to them.
pub struct Steering {
    pub holders: [Client; 2],
    /// The backend pid of each of the two server connections.
    pub pids: [i32; 2],
}

impl Steering {
    pub async fn new(url: &str) -> Steering {
        let holders = [connect(url).await, connect(url).await];
        let mut pids = [0; 2];
        for (h, pid) in holders.iter().zip(pids.iter_mut()) {
            h.batch_execute("BEGIN").await.unwrap();
            *pid = self::pid(h).await;
        }
        assert_ne!(pids[0], pids[1], "the holders share a server connection");
        Steering { holders, pids }
    }

    /// Makes connection `i` the only free one.
    pub async fn free(&self, i: usize) {
        self.holders[i].batch_execute("COMMIT").await.unwrap();
    }

    /// Takes connection `i` back (the only one its holder can get) and checks what
    /// the holder sees of `settings` there.
    pub async fn retake(&self, i: usize, settings: &[(&str, &str)]) {
        let holder = &self.holders[i];
        holder.batch_execute("BEGIN").await.unwrap();
        assert_eq!(pid(holder).await, self.pids[i], "holder {i} moved");
        for (name, want) in settings {
            let (got, _) = setting_and_pid(holder, name).await;
            assert_eq!(
                &got, want,
                "another client sees {name} = {got:?} on connection {i}"
            );
        }
    }

    /// Runs `sql` (simple protocol) as `client` on connection `i`; the first column of
    /// its rows, or the error.
    pub async fn run_on(
        &self,
        i: usize,
        client: &Client,
        sql: &str,
        defaults: &[(&str, &str)],
    ) -> Result<Vec<String>, tokio_postgres::Error> {
        self.free(i).await;
        let result = client.simple_query(sql).await.map(|messages| {
            messages
                .into_iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or("NULL").to_string()),
                    _ => None,
                })
                .collect()
        });
        self.retake(i, defaults).await;
        result
    }

    /// Ends both holders' transactions, leaving the pool to everybody else.
    pub async fn release(&self) {
        self.free(0).await;
        self.free(1).await;
    }

    /// Checks `client`'s view of `name` on each of the two connections in turn, and
    /// the holders' view of `defaults` after it.
    pub async fn expect_on_both(
        &self,
        client: &Client,
        name: &str,
        want: &str,
        defaults: &[(&str, &str)],
    ) {
        for i in [0, 1] {
            self.free(i).await;
            let (got, pid) = setting_and_pid(client, name).await;
            assert_eq!(pid, self.pids[i], "the client did not get connection {i}");
            assert_eq!(got, want, "{name} on connection {i}");
            self.retake(i, defaults).await;
        }
    }
}

/// Clients running short transactions until stopped, each checking it sees the
/// `defaults`; they keep the pool busy around the client under test.
pub struct Competitors {
    pub stop: Arc<AtomicBool>,
    pub tasks: Vec<JoinHandle<u64>>,
}

impl Competitors {
    pub async fn start(
        url: &str,
        n: usize,
        defaults: &'static [(&'static str, &'static str)],
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..n {
            let client = connect(url).await;
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut done = 0u64;
                loop {
                    for (name, want) in defaults {
                        let (got, _) = setting_and_pid(&client, name).await;
                        assert_eq!(&got, want, "a competitor sees {name} = {got:?}");
                    }
                    client
                        .batch_execute("BEGIN; SELECT pg_backend_pid(); COMMIT")
                        .await
                        .unwrap();
                    done += 1;
                    if stop.load(Ordering::Relaxed) {
                        return done;
                    }
                }
            }));
        }
        Competitors { stop, tasks }
    }

    /// Stops them; panics if any of them failed.
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let done = task.await.expect("a competitor failed");
            assert!(done > 0);
        }
    }
}

/// Checks that a pinned client stays on its server connection while another client
/// runs transactions: the other client must get the other connection (the pinned one
/// is never free), and the pinned client always its own.
pub struct PinCheck {
    pub other: Client,
    pub pinned_pid: i32,
}

/// Rounds of transactions each pinning test runs.
pub const ROUNDS: usize = 5;

impl PinCheck {
    pub async fn new(url: &str, pinned: &Client) -> PinCheck {
        PinCheck {
            other: connect(url).await,
            pinned_pid: pid(pinned).await,
        }
    }

    pub async fn round(&self, pinned: &Client, round: usize) {
        self.other.batch_execute("BEGIN").await.unwrap();
        assert_ne!(
            pid(&self.other).await,
            self.pinned_pid,
            "round {round}: another client got the pinned client's server connection"
        );
        assert_eq!(
            pid(pinned).await,
            self.pinned_pid,
            "round {round}: the pinned client moved"
        );
        self.other.batch_execute("COMMIT").await.unwrap();
    }
}
