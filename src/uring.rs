//! io_uring for the relay's plain sockets (TCP, and Unix-domain towards Postgres).
//!
//! On epoll, every message costs a system call of its own, and each `send()` wakes its
//! peer (a Postgres backend, a client) which then preempts pgmux at the exit of that
//! call: on two shared cores that is most of what a proxy costs per transaction (see
//! BENCHMARKS.md, "the floor"). Here the sends and receives that one pass of the event
//! loop produces are queued in the thread's ring and handed to the kernel together,
//! once, when the thread is about to sleep ([`submit_local`], the runtime's park
//! hook): one `io_uring_enter` for many transactions, and one preemption point.
//!
//! - Each runtime thread has a ring; a socket's operations go to the ring of the
//!   thread that issues them. A ring's completions are reaped by a task of its own,
//!   woken through the tokio reactor, wherever that task runs.
//! - Receives take a buffer from the ring's provided-buffer pool only when data
//!   arrives, so an idle client with a receive armed holds no buffer. What arrives is
//!   moved to the socket's inbox; a reader whose buffer is empty takes the inbox whole.
//! - A send hands the caller's buffer to the kernel (the caller gets an empty one
//!   back); while one is in flight, more output is queued behind it. Callers wait only
//!   when more than [`HIGH_WATER`] bytes are queued.
//! - A socket's state is shared between its owner and the ring that runs its
//!   operations, and the file descriptor closes only when the last of them lets go, so
//!   a descriptor number is never reused while an operation may still name it.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BytesMut};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use parking_lot::Mutex;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

mod buf_ring;

#[cfg(test)]
use buf_ring::{buffers_per_ring, BUF_COUNT};
use buf_ring::{BufRing, BUF_GROUP, BUF_SIZE};

/// Output queued on one socket above which writers wait for the kernel to take it.
pub const HIGH_WATER: usize = 256 * 1024;

/// Submission queue entries; the completion queue has four times as many. Ten
/// thousand clients that all send at once re-arm ten thousand receives in one pass:
/// a full queue is submitted on the spot.
const RING_ENTRIES: u32 = 4096;

static MODE: AtomicU8 = AtomicU8::new(OFF);
const OFF: u8 = 0;
const ON: u8 = 1;

/// Turns io_uring on for sockets converted from now on, if this kernel allows it:
/// `PGMUX_IO=epoll` keeps every socket on the tokio reactor. Returns whether it is on.
///
/// Every runtime is a single-threaded event loop (`workers`). A ring's completions are
/// delivered in the context of the thread that submitted (io_uring task work); on a
/// work-stealing runtime that thread is often asleep while another one polls the
/// reactor, and each batch then costs a wake-up of both (measured with 2 tokio
/// workers: 39–45 µs per select-only transaction against 25–30 µs on epoll).
pub fn init(workers: usize) -> bool {
    let wanted = std::env::var("PGMUX_IO").unwrap_or_default();
    if wanted == "epoll" {
        return false;
    }
    buf_ring::size_for(workers);
    match Driver::new() {
        Ok(_) => {
            MODE.store(ON, Ordering::Relaxed);
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "io_uring is not available; sockets use epoll");
            false
        }
    }
}

pub fn enabled() -> bool {
    MODE.load(Ordering::Relaxed) == ON
}

thread_local! {
    static LOCAL: RefCell<Option<Arc<Ring>>> = const { RefCell::new(None) };
    /// Whether this thread submits at park; other threads submit at each push.
    static PARKS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// A reap's lists, kept so that a reap allocates nothing. The park hook and the
    /// reaper task of a thread never run inside one another.
    static SCRATCH: RefCell<(Vec<Waker>, Vec<Op>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    /// Sockets given output this pass whose send is not in the ring yet: it goes in
    /// at park, with everything written to the socket until then (see `State::send_pushed`).
    static DEFERRED: RefCell<Vec<Arc<Sock>>> = const { RefCell::new(Vec::new()) };
}

/// Puts the sends deferred this pass into the ring.
fn push_deferred() {
    let socks = DEFERRED.with(|d| std::mem::take(&mut *d.borrow_mut()));
    if socks.is_empty() {
        return;
    }
    for sock in &socks {
        let due = {
            let mut st = sock.state.lock();
            let due = st.send_armed && !st.send_pushed;
            st.send_pushed |= due;
            due
        };
        if due {
            if let Err(e) = sock.clone().push_send() {
                let mut st = sock.state.lock();
                st.drop_output();
                st.error
                    .get_or_insert(e.raw_os_error().unwrap_or(libc::EIO));
                let w = (st.reader.take(), st.writer.take());
                drop(st);
                w.0.into_iter().chain(w.1).for_each(Waker::wake);
            }
        }
    }
    // Keep the list's allocation for the next pass.
    DEFERRED.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_empty() {
            let mut socks = socks;
            socks.clear();
            *d = socks;
        }
    });
}

/// The runtime's park hook: hands the thread's queued operations to the kernel, then
/// hands out the completions already in the ring. Tasks woken here run before the
/// thread would sleep (a current-thread runtime does not park while it has tasks), so
/// a batch whose replies are back needs no trip through the reactor.
pub fn submit_local() {
    PARKS.with(|p| p.set(true));
    push_deferred();
    LOCAL.with(|l| {
        if let Some(ring) = &*l.borrow() {
            ring.submit();
            ring.reap();
            // The reap re-arms partial sends and receives that ran out of buffers,
            // and may wake no task: the thread would then sleep with them queued,
            // and nothing but the ring could wake it.
            ring.submit();
        }
    });
}

/// Waits, at most `limit`, until this thread's ring has sent everything it was given:
/// at exit, the last replies and FATAL notices would otherwise stay unsubmitted.
pub async fn drain(limit: std::time::Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let pending = LOCAL.with(|l| l.borrow().as_ref().map_or(0, |r| r.inner.lock().sends))
            + DEFERRED.with(|d| d.borrow().len());
        if pending == 0 || tokio::time::Instant::now() >= deadline {
            return;
        }
        // The park hook submits; the reaper counts the completions.
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// Runs `f` on this thread's ring, created on first use.
fn with_local_ring<R>(f: impl FnOnce(&Ring) -> io::Result<R>) -> io::Result<R> {
    LOCAL.with(|l| {
        if let Some(r) = &*l.borrow() {
            return f(r);
        }
        let ring = new_local_ring()?;
        let r = f(&ring);
        *l.borrow_mut() = Some(ring);
        r
    })
}

#[cold]
fn new_local_ring() -> io::Result<Arc<Ring>> {
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|_| io::Error::other("io_uring socket used outside the runtime"))?;
    let driver = Driver::new()?;
    let fd = driver.ring.as_raw_fd();
    let ring = Arc::new(Ring {
        inner: Mutex::new(driver),
    });
    let afd = {
        let _guard = handle.enter();
        // SAFETY: the descriptor is the ring's, which `RingFd` keeps alive.
        unsafe {
            AsyncFd::register_with_interest(RingFd(ring.clone(), fd), tokio::io::Interest::READABLE)
        }
        .map_err(|e| io::Error::other(e.to_string()))?
    };
    handle.spawn(reap_forever(afd));
    Ok(ring)
}

fn push(sqe: squeue::Entry, op: Op) -> io::Result<()> {
    let parks = PARKS.with(|p| p.get());
    with_local_ring(|ring| {
        let mut d = ring.inner.lock();
        let idx = match d.free.pop() {
            Some(i) => {
                d.ops[i as usize] = Some(op);
                i
            }
            None => {
                d.ops.push(Some(op));
                (d.ops.len() - 1) as u32
            }
        };
        let send = matches!(d.ops[idx as usize], Some(Op::Send(_)));
        let sqe = sqe.user_data(idx as u64);
        // SAFETY: every buffer an entry names lives in a socket state that the
        // entry's `Op` keeps alive, and is not touched until the operation completes.
        while unsafe { d.ring.submission().push(&sqe) }.is_err() {
            // The queue is full: hand it to the kernel now to make room.
            if let Err(e) = d.ring.submit() {
                d.ops[idx as usize] = None;
                d.free.push(idx);
                return Err(e);
            }
        }
        d.sends += usize::from(send);
        if !parks {
            // Queued either way: a failed submit is retried with the next one.
            if let Err(e) = d.ring.submit() {
                tracing::debug!(error = %e, "io_uring submit deferred");
            }
        }
        Ok(())
    })
}

/// A ring's descriptor, registered with the tokio reactor: readable when completions
/// wait.
struct RingFd(Arc<Ring>, RawFd);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.1
    }
}

async fn reap_forever(afd: AsyncFd<RingFd>) {
    loop {
        let Ok(mut guard) = afd.readable().await else {
            return;
        };
        // Cleared before reaping: a completion that comes after this reap marks the
        // descriptor readable again.
        guard.clear_ready();
        afd.get_ref().0.reap();
    }
}

struct Ring {
    inner: Mutex<Driver>,
}

enum Op {
    Recv(Arc<Sock>),
    Send(Arc<Sock>),
}

struct Driver {
    ring: IoUring,
    ops: Vec<Option<Op>>,
    free: Vec<u32>,
    bufs: BufRing,
    /// Sends queued or in the kernel: output that exit must wait for.
    sends: usize,
}

impl Driver {
    fn new() -> io::Result<Driver> {
        let ring = IoUring::builder()
            // Only this thread submits to its ring.
            .setup_single_issuer()
            // A completion waits for the thread's next system call rather than
            // interrupting it (it makes one soon: the next submit, or the reactor's
            // wait, which the completion's notification ends). Measured: 22 → 18 µs
            // of pgmux CPU per select-only transaction with both flags.
            .setup_coop_taskrun()
            .setup_cqsize(RING_ENTRIES * 4)
            .build(RING_ENTRIES)
            .or_else(|_| IoUring::new(RING_ENTRIES))?;
        let bufs = BufRing::new(&ring)?;
        Ok(Driver {
            ring,
            ops: Vec::new(),
            free: Vec::new(),
            bufs,
            sends: 0,
        })
    }
}

impl Ring {
    fn submit(&self) {
        let mut d = self.inner.lock();
        if d.ring.submission().is_empty() {
            return;
        }
        // EBUSY (completions not yet reaped) leaves the entries queued for the next
        // park; the reaper is already due.
        if let Err(e) = d.ring.submit() {
            tracing::debug!(error = %e, "io_uring submit deferred");
        }
    }

    /// Hands out the completions waiting in the ring: data to inboxes, progress to
    /// send queues, and wakes whoever waits on them.
    fn reap(&self) {
        SCRATCH.with(|s| {
            let (wake, rearm) = &mut *s.borrow_mut();
            self.reap_into(wake, rearm);
        });
    }

    fn reap_into(&self, wake: &mut Vec<Waker>, rearm: &mut Vec<Op>) {
        {
            let mut guard = self.inner.lock();
            let d = &mut *guard;
            let mut cq = d.ring.completion();
            cq.sync();
            for cqe in &mut cq {
                let idx = cqe.user_data() as usize;
                let Some(op) = d.ops[idx].take() else {
                    continue;
                };
                d.free.push(idx as u32);
                let res = cqe.result();
                match op {
                    Op::Recv(sock) => {
                        let mut st = sock.state.lock();
                        st.recv_armed = false;
                        if res > 0 {
                            match cqueue::buffer_select(cqe.flags()) {
                                Some(bid) => {
                                    crate::stash::fill(&mut st.inbox);
                                    st.inbox.extend_from_slice(d.bufs.get(bid, res as usize));
                                    d.bufs.recycle(bid);
                                }
                                None => st.error = Some(libc::EIO),
                            }
                        } else if res == 0 {
                            st.eof = true;
                        } else if res == -libc::ENOBUFS {
                            // Every buffer was in use in this batch; they are back now.
                            st.recv_armed = true;
                            drop(st);
                            rearm.push(Op::Recv(sock));
                            continue;
                        } else {
                            st.error = Some(-res);
                        }
                        if let Some(w) = st.reader.take() {
                            wake.push(w);
                        }
                    }
                    Op::Send(sock) => {
                        d.sends -= 1;
                        let mut st = sock.state.lock();
                        if res <= 0 {
                            // A send that moves nothing would be retried forever.
                            st.error = Some(if res == 0 { libc::EPIPE } else { -res });
                            st.drop_output();
                        } else {
                            st.sent += res as usize;
                            if st.sent == st.sending.len() {
                                st.sending.clear();
                                st.sent = 0;
                                if st.queued.is_empty() {
                                    st.send_armed = false;
                                    st.send_pushed = false;
                                    if std::mem::take(&mut st.trim_after_send) {
                                        crate::stash::give(&mut st.sending);
                                        crate::stash::give(&mut st.queued);
                                    }
                                } else {
                                    let st = &mut *st;
                                    std::mem::swap(&mut st.sending, &mut st.queued);
                                }
                            }
                            if st.send_armed {
                                rearm.push(Op::Send(sock.clone()));
                            }
                        }
                        if st.backlog() <= st.writer_limit || st.error.is_some() {
                            if let Some(w) = st.writer.take() {
                                wake.push(w);
                            }
                        }
                    }
                }
            }
            cq.sync();
        }
        for op in rearm.drain(..) {
            let (sock, recv, result) = match op {
                Op::Recv(sock) => (sock.clone(), true, sock.push_recv()),
                Op::Send(sock) => (sock.clone(), false, sock.push_send()),
            };
            if let Err(e) = result {
                // The socket fails rather than wait forever for an operation that
                // is not in the ring.
                tracing::warn!(error = %e, "io_uring resubmission failed");
                let mut st = sock.state.lock();
                st.error
                    .get_or_insert(e.raw_os_error().unwrap_or(libc::EIO));
                if recv {
                    st.recv_armed = false;
                } else {
                    st.drop_output();
                }
                wake.extend(st.reader.take());
                wake.extend(st.writer.take());
            }
        }
        for w in wake.drain(..) {
            w.wake();
        }
    }
}

#[derive(Default)]
struct State {
    recv_armed: bool,
    /// Received and not yet taken by the reader.
    inbox: BytesMut,
    eof: bool,
    /// The first error of either direction; reported to both.
    error: Option<i32>,
    reader: Option<Waker>,

    send_armed: bool,
    /// The armed send's entry is in the ring: `sending` is the kernel's to read, and
    /// more output waits in `queued`. Until then (the rest of the event loop's pass)
    /// output joins `sending`, so what a pass writes to a socket goes out in one send
    /// — the messages two clients queue on one server connection in the same pass
    /// reach it together.
    send_pushed: bool,
    /// In the kernel's hands from `sent` on while `send_armed`.
    sending: BytesMut,
    sent: usize,
    /// Output behind the send in flight.
    queued: BytesMut,
    /// Waits for the backlog to fall to `writer_limit`.
    writer: Option<Waker>,
    writer_limit: usize,
    /// The owner went idle while a send was in flight: drop the buffers after it.
    trim_after_send: bool,
}

impl State {
    fn backlog(&self) -> usize {
        self.sending.len() - self.sent + self.queued.len()
    }

    /// Drops the output a failed send leaves: nothing more goes to this socket.
    fn drop_output(&mut self) {
        self.send_armed = false;
        self.send_pushed = false;
        self.sending.clear();
        self.sent = 0;
        self.queued.clear();
    }

    fn error(&self) -> Option<io::Error> {
        self.error.map(io::Error::from_raw_os_error)
    }
}

struct Sock {
    fd: OwnedFd,
    state: Mutex<State>,
}

impl Sock {
    fn push_recv(self: Arc<Self>) -> io::Result<()> {
        let sqe = opcode::Recv::new(
            types::Fd(self.fd.as_raw_fd()),
            std::ptr::null_mut(),
            BUF_SIZE as u32,
        )
        .buf_group(BUF_GROUP)
        .build()
        .flags(squeue::Flags::BUFFER_SELECT);
        push(sqe, Op::Recv(self))
    }

    fn push_send(self: Arc<Self>) -> io::Result<()> {
        let (ptr, len) = {
            let st = self.state.lock();
            let rest = &st.sending[st.sent..];
            (rest.as_ptr(), rest.len() as u32)
        };
        let sqe = opcode::Send::new(types::Fd(self.fd.as_raw_fd()), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build();
        push(sqe, Op::Send(self))
    }
}

/// A plain TCP connection whose reads and writes go through io_uring.
pub struct UringStream {
    sock: Arc<Sock>,
    /// A second handle on a socket another handle owns (see [`UringStream::share`]):
    /// dropping it leaves the socket alone.
    shared: bool,
}

impl std::fmt::Debug for UringStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringStream")
            .field("fd", &self.sock.fd.as_raw_fd())
            .finish()
    }
}

impl UringStream {
    /// Takes over a connected stream socket (already non-blocking, as tokio leaves it).
    pub fn new(fd: OwnedFd) -> UringStream {
        UringStream {
            sock: Arc::new(Sock {
                fd,
                state: Mutex::new(State::default()),
            }),
            shared: false,
        }
    }

    /// Another handle on this socket, for reading replies while the owner writes
    /// (see `pool::follow`). The two must not read at the same time.
    pub fn share(&self) -> UringStream {
        UringStream {
            sock: self.sock.clone(),
            shared: true,
        }
    }

    /// Moves what has arrived into `buf` (whole, when `buf` is empty); otherwise makes
    /// sure a receive is armed. `Ok(0)` at end of stream.
    pub fn poll_read_buf(
        &self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        self.poll_recv(
            cx,
            |inbox| {
                let n = inbox.len();
                if buf.is_empty() {
                    std::mem::swap(buf, inbox);
                } else {
                    buf.extend_from_slice(inbox);
                    inbox.clear();
                }
                n
            },
            0,
        )
    }

    /// Hands the inbox to `take` when something has arrived, `at_eof` at end of
    /// stream; otherwise registers the waker and makes sure a receive is armed.
    fn poll_recv<T>(
        &self,
        cx: &mut Context<'_>,
        take: impl FnOnce(&mut BytesMut) -> T,
        at_eof: T,
    ) -> Poll<io::Result<T>> {
        let arm = {
            let mut st = self.sock.state.lock();
            if !st.inbox.is_empty() {
                return Poll::Ready(Ok(take(&mut st.inbox)));
            }
            if st.eof {
                return Poll::Ready(Ok(at_eof));
            }
            if let Some(e) = st.error() {
                return Poll::Ready(Err(e));
            }
            match &st.reader {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => st.reader = Some(cx.waker().clone()),
            }
            !std::mem::replace(&mut st.recv_armed, true)
        };
        if arm {
            if let Err(e) = self.sock.clone().push_recv() {
                self.sock.state.lock().recv_armed = false;
                return Poll::Ready(Err(e));
            }
        }
        Poll::Pending
    }

    /// Arms a receive with no reader waiting: an idle pooled server connection then
    /// learns of a close or an unexpected message without a system call.
    pub fn watch(&self) {
        let arm = {
            let mut st = self.sock.state.lock();
            st.reader = None;
            !st.eof && st.error.is_none() && !std::mem::replace(&mut st.recv_armed, true)
        };
        if arm && self.sock.clone().push_recv().is_err() {
            self.sock.state.lock().recv_armed = false;
        }
    }

    /// False once the peer closed, failed or sent something nobody read.
    pub fn is_quiet(&self) -> bool {
        let st = self.sock.state.lock();
        st.inbox.is_empty() && !st.eof && st.error.is_none()
    }

    /// Hands all of `buf` to the socket (`buf` is left empty, possibly with another
    /// buffer's capacity); returns the bytes now waiting to be sent.
    pub fn send_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        self.send_with(|st| {
            if st.send_pushed {
                crate::stash::fill(&mut st.queued);
                st.queued.extend_from_slice(buf);
            } else if st.sending.is_empty() {
                std::mem::swap(&mut st.sending, buf);
            } else {
                st.sending.extend_from_slice(buf);
            }
            buf.clear();
            crate::stash::fill(buf);
        })
    }

    /// Like [`UringStream::send_buf`], for bytes the caller keeps.
    pub fn send_slice(&self, data: &[u8]) -> io::Result<usize> {
        self.send_with(|st| {
            let out = if st.send_pushed {
                &mut st.queued
            } else {
                &mut st.sending
            };
            crate::stash::fill(out);
            out.extend_from_slice(data);
        })
    }

    fn send_with(&self, put: impl FnOnce(&mut State)) -> io::Result<usize> {
        let (arm, backlog) = {
            let mut st = self.sock.state.lock();
            if let Some(e) = st.error() {
                return Err(e);
            }
            let armed = st.send_armed;
            put(&mut st);
            let arm = !armed && !st.sending.is_empty();
            if arm {
                st.sent = 0;
                st.send_armed = true;
            }
            (arm, st.backlog())
        };
        if arm {
            if PARKS.with(|p| p.get()) {
                DEFERRED.with(|d| d.borrow_mut().push(self.sock.clone()));
                return Ok(backlog);
            }
            self.sock.state.lock().send_pushed = true;
            if let Err(e) = self.sock.clone().push_send() {
                let mut st = self.sock.state.lock();
                st.drop_output();
                st.error = e.raw_os_error().or(Some(libc::EIO));
                return Err(e);
            }
        }
        Ok(backlog)
    }

    /// Bytes handed to this socket and not yet taken by the kernel.
    pub fn backlog(&self) -> usize {
        self.sock.state.lock().backlog()
    }

    /// Ready once at most `limit` bytes wait to be sent; an error of the socket ends
    /// the wait.
    pub fn poll_backlog(&self, cx: &mut Context<'_>, limit: usize) -> Poll<io::Result<()>> {
        let mut st = self.sock.state.lock();
        if let Some(e) = st.error() {
            return Poll::Ready(Err(e));
        }
        if st.backlog() <= limit {
            return Poll::Ready(Ok(()));
        }
        st.writer = Some(cx.waker().clone());
        st.writer_limit = limit;
        Poll::Pending
    }

    /// Lets go of the socket's buffers (now, or once the send in flight is done), to
    /// the thread's [`crate::stash`]: an idle client holds none.
    pub fn trim(&self) {
        let mut st = self.sock.state.lock();
        if st.inbox.is_empty() {
            crate::stash::give(&mut st.inbox);
        }
        if st.send_armed {
            st.trim_after_send = true;
        } else {
            crate::stash::give(&mut st.sending);
            crate::stash::give(&mut st.queued);
        }
    }
}

impl Drop for UringStream {
    fn drop(&mut self) {
        if self.shared {
            return;
        }
        let st = self.sock.state.lock();
        if st.recv_armed {
            // A receive would keep the socket open until the peer spoke; shutting
            // down the read side completes it. Output in flight still goes out before
            // the close, which comes when the last operation lets go of the socket.
            // SAFETY: shutdown on a descriptor this socket owns.
            unsafe { libc::shutdown(self.sock.fd.as_raw_fd(), libc::SHUT_RD) };
        }
    }
}

impl AsyncRead for UringStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.poll_recv(
            cx,
            |inbox| {
                let n = inbox.len().min(buf.remaining());
                buf.put_slice(&inbox[..n]);
                inbox.advance(n);
            },
            (),
        )
    }
}

impl AsyncWrite for UringStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_backlog(cx, HIGH_WATER))?;
        self.send_slice(buf)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_backlog(cx, 0)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_backlog(cx, 0))?;
        // SAFETY: shutdown on a descriptor this socket owns.
        unsafe { libc::shutdown(self.sock.fd.as_raw_fd(), libc::SHUT_WR) };
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests;
