//! Thread per core: `[proxy].workers` event loops, each a single-threaded tokio runtime
//! on a thread of its own, with its own reactor, timers and io_uring ring.
//!
//! A client's session runs from login to goodbye on the worker it was dealt to, so a
//! transaction's reads, writes and wake-ups stay on one thread: no work stealing, no
//! task migrating between cores, and each ring's completions run on the thread that
//! submitted them. Each worker accepts on a listener of its own (`SO_REUSEPORT`, see
//! `proxy::bind_tcp`) and keeps what it accepts unless it already runs clearly more
//! sessions than another worker, which then gets the connection; the Unix-domain
//! socket has one listener, on worker 0 (the main thread), which deals each
//! connection to the worker with the fewest live sessions. Pools are shared
//! by all workers; a checkout prefers a connection that was last used on its own
//! worker (see `pool`), so in steady state a server connection stays on one thread too.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::net::{TcpStream, UnixStream};
use tokio::runtime::{Handle, Runtime};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// How long a stopping worker waits for the sends its ring still holds.
const DRAIN: Duration = Duration::from_secs(2);

/// The period of each event loop's standing timer (see [`keep_a_timer_due`]): shorter
/// than any timeout worth setting, long enough to cost nothing.
const STANDING_TIMER: Duration = Duration::from_secs(1);

/// The worker this thread runs (0 on the main thread and on threads that are none).
#[inline]
pub fn current() -> usize {
    INDEX.with(|i| i.get())
}

/// Makes this thread count as worker `index`, for tests of per-worker choices.
#[cfg(test)]
pub fn pretend(index: usize) {
    INDEX.with(|i| i.set(index));
}

/// `[proxy].workers`, with 0 meaning one per core.
pub fn count(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A single-threaded runtime whose park hook submits the thread's io_uring queue:
/// the operations a pass of the event loop queued go to the kernel together, when
/// the thread has nothing left to run.
pub fn runtime() -> io::Result<Runtime> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(crate::uring::submit_local)
        .build()?;
    rt.spawn(keep_a_timer_due());
    Ok(rt)
}

/// Keeps a timer due within [`STANDING_TIMER`] on the event loop. Tokio's timer wakes
/// its thread's reactor (an `eventfd` write, and a wasted pass of the loop) whenever a
/// timer is set to expire before every timer that was pending when the thread last
/// went to sleep. With none pending, that was every client that began to wait for a
/// server connection and armed its `query_wait_timeout`: most of the wake-ups left
/// with 256 clients on 20 connections (BENCHMARKS.md, finding 23).
async fn keep_a_timer_due() {
    let mut tick = tokio::time::interval(STANDING_TIMER);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// The event loops: the threads besides the main thread's, and the dealer that
/// hands connections to every loop.
pub struct Workers {
    threads: Vec<JoinHandle<()>>,
    dealer: Arc<Dealer>,
    stop: CancellationToken,
}

/// Hands accepted connections to event loops. Shared by the accept loops of every
/// worker.
pub struct Dealer {
    /// Every worker's runtime, index 0 being the main thread's.
    handles: Vec<Handle>,
    /// Live sessions per worker.
    live: Arc<[AtomicUsize]>,
    next: AtomicUsize,
}

impl Workers {
    /// Starts `n - 1` worker threads; the caller's thread (inside its runtime) is
    /// worker 0.
    pub fn start(n: usize) -> io::Result<Workers> {
        let n = n.max(1);
        let stop = CancellationToken::new();
        let mut threads = Vec::with_capacity(n - 1);
        let mut handles = Vec::with_capacity(n);
        handles.push(Handle::current());
        for index in 1..n {
            let (tx, rx) = std::sync::mpsc::channel();
            let stop = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("pgmux-worker-{index}"))
                .spawn(move || {
                    INDEX.with(|i| i.set(index));
                    let rt = match runtime() {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(rt.handle().clone()));
                    rt.block_on(async {
                        stop.cancelled().await;
                        crate::uring::drain(DRAIN).await;
                    });
                    rt.shutdown_timeout(Duration::from_millis(200));
                })?;
            let handle = rx
                .recv()
                .map_err(|_| io::Error::other("a worker thread died while starting"))??;
            handles.push(handle);
            threads.push(thread);
        }
        Ok(Workers {
            threads,
            dealer: Arc::new(Dealer {
                handles,
                live: (0..n).map(|_| AtomicUsize::new(0)).collect(),
                next: AtomicUsize::new(0),
            }),
            stop,
        })
    }

    /// How many event loops there are, the main thread's included.
    pub fn count(&self) -> usize {
        self.dealer.handles.len()
    }

    pub fn dealer(&self) -> &Arc<Dealer> {
        &self.dealer
    }

    /// Stops the worker threads once each has sent what its ring still holds.
    /// Blocks: call it outside the main runtime.
    pub fn stop(self) {
        self.stop.cancel();
        for t in self.threads {
            let _ = t.join();
        }
    }
}

impl Dealer {
    /// Runs `fut` on worker `w`'s event loop.
    pub fn spawn_on<Fut>(&self, w: usize, fut: Fut)
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.handles[w].spawn(fut);
    }

    /// The worker with the fewest live sessions, looking from a rotating start so
    /// that ties spread.
    fn least_busy(&self) -> usize {
        let n = self.live.len();
        if n == 1 {
            return 0;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .map(|k| (start + k) % n)
            .min_by_key(|&w| self.live[w].load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// Where a connection this worker accepted from its own listener runs: here,
    /// unless this worker already runs clearly more sessions than the least busy
    /// one. The kernel spreads connections over the listeners by a hash of their
    /// addresses, which evens out over many connections but not over a few
    /// long-lived ones; keeping a connection where it arrived saves waking another
    /// thread and moving the socket between reactors.
    fn keep_or_deal(&self) -> usize {
        let here = current();
        let least = self.least_busy();
        let mine = self.live[here].load(Ordering::Relaxed);
        let fewest = self.live[least].load(Ordering::Relaxed);
        if mine <= fewest + KEEP_SLACK + fewest / 16 {
            here
        } else {
            least
        }
    }

    /// Runs `serve(conn)` on the worker with the fewest live sessions, counted by
    /// `tracker`.
    pub fn deal<F, Fut>(&self, tracker: &TaskTracker, conn: Accepted, serve: F)
    where
        F: FnOnce(Accepted) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.spawn_session(self.least_busy(), tracker, conn, serve);
    }

    /// Runs `serve(conn)` for a connection this worker accepted on its own listener:
    /// here, or on a less busy worker ([`Dealer::keep_or_deal`]).
    pub fn keep<F, Fut>(&self, tracker: &TaskTracker, conn: Accepted, serve: F)
    where
        F: FnOnce(Accepted) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.spawn_session(self.keep_or_deal(), tracker, conn, serve);
    }

    fn spawn_session<F, Fut>(&self, w: usize, tracker: &TaskTracker, conn: Accepted, serve: F)
    where
        F: FnOnce(Accepted) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.live[w].fetch_add(1, Ordering::Relaxed);
        let live = Live {
            counts: self.live.clone(),
            index: w,
        };
        if w == current() {
            // `live` is dropped after the await rather than bound to a local: a local
            // would take room in the task beside the captured value.
            tokio::spawn(tracker.track_future(async move {
                serve(conn).await;
                drop(live);
            }));
            return;
        }
        // The socket is registered with this thread's reactor; it moves to the
        // worker's own.
        let std = match conn.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand a connection to a worker");
                return;
            }
        };
        self.handles[w].spawn(tracker.track_future(async move {
            match std.into_tokio() {
                Ok(conn) => serve(conn).await,
                Err(e) => tracing::warn!(error = %e, "cannot register a connection"),
            }
            drop(live);
        }));
    }
}

/// How many more sessions than the least busy worker a worker may run and still
/// keep a connection it accepted, plus a sixteenth of the least busy one's count.
/// Counted on two workers under connect-per-transaction (`pgbench -C -c 16`), the
/// share of connections that woke the other worker: about a third when a worker
/// keeps only while it is among the least busy, a fifth with this slack.
const KEEP_SLACK: usize = 1;

/// A client connection the accept loop took: over TCP or a Unix-domain socket.
pub enum Accepted {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// An [`Accepted`] between two threads' reactors.
enum AcceptedStd {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Accepted {
    fn into_std(self) -> io::Result<AcceptedStd> {
        Ok(match self {
            Accepted::Tcp(s) => AcceptedStd::Tcp(s.into_std()?),
            Accepted::Unix(s) => AcceptedStd::Unix(s.into_std()?),
        })
    }
}

impl AcceptedStd {
    fn into_tokio(self) -> io::Result<Accepted> {
        Ok(match self {
            AcceptedStd::Tcp(s) => Accepted::Tcp(TcpStream::from_std(s)?),
            AcceptedStd::Unix(s) => Accepted::Unix(UnixStream::from_std(s)?),
        })
    }
}

/// Counts a session against its worker while it lives.
struct Live {
    counts: Arc<[AtomicUsize]>,
    index: usize,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.counts[self.index].fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dealer(live: &[usize]) -> Dealer {
        Dealer {
            handles: Vec::new(),
            live: live.iter().map(|&n| AtomicUsize::new(n)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    #[test]
    fn a_worker_keeps_what_it_accepts_until_it_runs_clearly_more_than_another() {
        pretend(1);
        assert_eq!(dealer(&[0, 0]).keep_or_deal(), 1);
        assert_eq!(dealer(&[0, 1]).keep_or_deal(), 1);
        assert_eq!(dealer(&[0, 2]).keep_or_deal(), 0);
        assert_eq!(dealer(&[5, 4, 7]).keep_or_deal(), 1);
        assert_eq!(dealer(&[5, 6, 7]).keep_or_deal(), 1);
        assert_eq!(dealer(&[5, 7, 7]).keep_or_deal(), 0);
        // The slack grows with the load: a sixteenth of the least busy worker's count.
        assert_eq!(dealer(&[80, 86, 85]).keep_or_deal(), 1);
        assert_eq!(dealer(&[80, 87, 85]).keep_or_deal(), 0);
        pretend(0);
    }

    #[test]
    fn a_dealt_connection_goes_to_the_least_busy_worker() {
        assert_eq!(dealer(&[4, 1, 3]).least_busy(), 1);
        let d = dealer(&[2, 2]);
        let picks: Vec<usize> = (0..4).map(|_| d.least_busy()).collect();
        assert!(
            picks.contains(&0) && picks.contains(&1),
            "ties spread: {picks:?}"
        );
    }
}
