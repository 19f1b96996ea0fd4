//! `floor-uring LISTEN UPSTREAM`: the same forwarder on io_uring. Each socket always
//! has one receive or one send in flight; every operation that completions ask for
//! is queued and submitted together with the next wait, so one `io_uring_enter`
//! carries the sends and receives of many transactions. An UPSTREAM that starts with
//! `/` is the path of a Unix-domain socket.
//!
//! Knobs (environment, `1` to set), to measure what each io_uring feature would save
//! a proxy (BENCHMARKS.md, finding 13):
//! - `FLOOR_COOP`: `IORING_SETUP_COOP_TASKRUN` with `SINGLE_ISSUER`, as pgmux's rings;
//! - `FLOOR_DEFER`: `IORING_SETUP_DEFER_TASKRUN` (completions run only when the thread
//!   waits for them);
//! - `FLOOR_MULTI`: multishot receives into a provided-buffer ring, armed once per
//!   socket instead of once per message;
//! - `FLOOR_FIXED`: sockets in the ring's registered file table.
use std::collections::VecDeque;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

const BUF: usize = 16384;
const NBUF: u16 = 512;
const ACCEPT: u64 = u64::MAX;
const RECV: u64 = 1;
const SEND: u64 = 2;

struct Side {
    fd: RawFd,
    fixed: u32,
    buf: Vec<u8>,
    len: usize,
    sent: usize,
    // multishot: queued (bid, len), head being sent
    q: VecDeque<(u16, usize)>,
}

struct Bufs {
    entries: *mut types::BufRingEntry,
    mem: Vec<u8>,
    tail: u16,
}
impl Bufs {
    fn add(&mut self, bid: u16) {
        let slot = (self.tail & (NBUF - 1)) as usize;
        let e = unsafe { &mut *self.entries.add(slot) };
        e.set_addr(self.mem[bid as usize * BUF..].as_ptr() as u64);
        e.set_len(BUF as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }
    fn publish(&self) {
        let tail = unsafe { &*((self.entries as *const u8).add(14) as *const AtomicU16) };
        tail.store(self.tail, Ordering::Release);
    }
}

fn env(k: &str) -> bool {
    std::env::var(k).map(|v| v == "1").unwrap_or(false)
}

fn token(pair: usize, side: usize, op: u64) -> u64 {
    ((pair as u64) << 8) | ((side as u64) << 4) | op
}

fn push(ring: &mut IoUring, e: squeue::Entry) {
    unsafe {
        while ring.submission().push(&e).is_err() {
            ring.submit().expect("submit");
        }
    }
}

struct Cfg {
    multi: bool,
    fixed: bool,
}

fn recv(ring: &mut IoUring, cfg: &Cfg, s: &mut Side, pair: usize, side: usize) {
    let e = if cfg.multi {
        if cfg.fixed {
            opcode::RecvMulti::new(types::Fixed(s.fixed), 0).build()
        } else {
            opcode::RecvMulti::new(types::Fd(s.fd), 0).build()
        }
    } else if cfg.fixed {
        opcode::Recv::new(types::Fixed(s.fixed), s.buf.as_mut_ptr(), BUF as u32).build()
    } else {
        opcode::Recv::new(types::Fd(s.fd), s.buf.as_mut_ptr(), BUF as u32).build()
    };
    push(ring, e.user_data(token(pair, side, RECV)));
}

fn send(
    ring: &mut IoUring,
    cfg: &Cfg,
    peer: (RawFd, u32),
    ptr: *const u8,
    len: usize,
    pair: usize,
    side: usize,
) {
    let e = if cfg.fixed {
        opcode::Send::new(types::Fixed(peer.1), ptr, len as u32).build()
    } else {
        opcode::Send::new(types::Fd(peer.0), ptr, len as u32).build()
    };
    push(ring, e.user_data(token(pair, side, SEND)));
}

fn dial(upstream: &str) -> std::io::Result<OwnedFd> {
    if upstream.starts_with('/') {
        return Ok(UnixStream::connect(upstream)?.into());
    }
    let tcp = TcpStream::connect(upstream)?;
    tcp.set_nodelay(true)?;
    Ok(tcp.into())
}

fn main() {
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, upstream] = args.as_slice() else {
        eprintln!("usage: floor-uring LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    let cfg = Cfg {
        multi: env("FLOOR_MULTI"),
        fixed: env("FLOOR_FIXED"),
    };
    let listener = TcpListener::bind(listen).expect("bind");
    let mut b = IoUring::builder();
    if env("FLOOR_COOP") {
        b.setup_coop_taskrun().setup_single_issuer();
    }
    if env("FLOOR_DEFER") {
        b.setup_single_issuer().setup_defer_taskrun();
    }
    let mut ring: IoUring = b.build(4096).expect("io_uring");
    eprintln!(
        "floor-uring coop={} defer={} multi={} fixed={}",
        env("FLOOR_COOP"),
        env("FLOOR_DEFER"),
        cfg.multi,
        cfg.fixed
    );
    let mut bufs = None;
    if cfg.multi {
        let layout = std::alloc::Layout::from_size_align(NBUF as usize * 16, 4096).unwrap();
        let entries = unsafe { std::alloc::alloc_zeroed(layout) } as *mut types::BufRingEntry;
        let mut br = Bufs {
            entries,
            mem: vec![0u8; BUF * NBUF as usize],
            tail: 0,
        };
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(entries as u64, NBUF, 0, 0)
                .expect("buf ring");
        }
        for bid in 0..NBUF {
            br.add(bid);
        }
        br.publish();
        bufs = Some(br);
    }
    if cfg.fixed {
        ring.submitter()
            .register_files_sparse(4096)
            .expect("sparse");
    }
    let accept = opcode::Accept::new(
        types::Fd(listener.as_raw_fd()),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
    )
    .build()
    .user_data(ACCEPT);
    push(&mut ring, accept.clone());
    let mut pairs: Vec<[Side; 2]> = Vec::new();
    let mut done = Vec::new();
    loop {
        ring.submit_and_wait(1).expect("io_uring_enter");
        done.clear();
        done.extend(
            ring.completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for &(data, res, flags) in &done {
            if data == ACCEPT {
                if res >= 0 {
                    if let Ok(server) = dial(upstream) {
                        let client = unsafe { TcpStream::from_raw_fd(res) };
                        let _ = client.set_nodelay(true);
                        let pair = pairs.len();
                        let side = |fd: RawFd, fixed: u32| Side {
                            fd,
                            fixed,
                            buf: vec![0; BUF],
                            len: 0,
                            sent: 0,
                            q: VecDeque::new(),
                        };
                        let (cfd, sfd) = (client.into_raw_fd(), server.into_raw_fd());
                        if cfg.fixed {
                            ring.submitter()
                                .register_files_update((pair * 2) as u32, &[cfd, sfd])
                                .expect("update");
                        }
                        pairs.push([
                            side(cfd, (pair * 2) as u32),
                            side(sfd, (pair * 2 + 1) as u32),
                        ]);
                        for s in 0..2 {
                            recv(&mut ring, &cfg, &mut pairs[pair][s], pair, s);
                        }
                    }
                }
                push(&mut ring, accept.clone());
                continue;
            }
            let (pair, side, op) = (
                (data >> 8) as usize,
                ((data >> 4) & 0xf) as usize,
                data & 0xf,
            );
            let peer = (pairs[pair][1 - side].fd, pairs[pair][1 - side].fixed);
            let s = &mut pairs[pair][side];
            if s.fd < 0 {
                continue;
            }
            if cfg.multi && op == RECV && res == -libc::ENOBUFS {
                recv(&mut ring, &cfg, s, pair, side);
                continue;
            }
            if res <= 0 {
                for s in pairs[pair].iter_mut() {
                    let fd = std::mem::replace(&mut s.fd, -1);
                    drop(unsafe { OwnedFd::from_raw_fd(fd) });
                }
                continue;
            }
            if cfg.multi {
                let br = bufs.as_mut().unwrap();
                if op == RECV {
                    let bid = cqueue::buffer_select(flags).expect("bid");
                    s.q.push_back((bid, res as usize));
                    if !cqueue::more(flags) {
                        recv(&mut ring, &cfg, s, pair, side);
                    }
                    if s.q.len() == 1 {
                        s.sent = 0;
                        let p = br.mem[bid as usize * BUF..].as_ptr();
                        send(&mut ring, &cfg, peer, p, res as usize, pair, side);
                    }
                } else {
                    s.sent += res as usize;
                    let (bid, len) = *s.q.front().unwrap();
                    if s.sent == len {
                        s.q.pop_front();
                        br.add(bid);
                        br.publish();
                        s.sent = 0;
                        if let Some(&(bid, len)) = s.q.front() {
                            let p = br.mem[bid as usize * BUF..].as_ptr();
                            send(&mut ring, &cfg, peer, p, len, pair, side);
                        }
                    } else {
                        let p = unsafe { br.mem[bid as usize * BUF..].as_ptr().add(s.sent) };
                        send(&mut ring, &cfg, peer, p, len - s.sent, pair, side);
                    }
                }
                continue;
            }
            if op == RECV {
                s.len = res as usize;
                s.sent = 0;
            } else {
                s.sent += res as usize;
                if s.sent == s.len {
                    recv(&mut ring, &cfg, s, pair, side);
                    continue;
                }
            }
            let p = s.buf[s.sent..].as_ptr();
            let l = s.len - s.sent;
            send(&mut ring, &cfg, peer, p, l, pair, side);
        }
    }
}
