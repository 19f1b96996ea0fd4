//! `floor-uring LISTEN UPSTREAM`: the same forwarder on io_uring. Each socket always
//! has one receive or one send in flight; every operation that completions ask for
//! is queued and submitted together with the next wait, so one `io_uring_enter`
//! carries the sends and receives of many transactions. An UPSTREAM that starts with
//! `/` is the path of a Unix-domain socket.

use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use io_uring::{opcode, squeue, types, IoUring};

const BUF: usize = 16384;
const ACCEPT: u64 = u64::MAX;
const RECV: u64 = 1;
const SEND: u64 = 2;

/// One direction of a forwarded connection: what `fd` received, on its way to the
/// other side.
struct Side {
    fd: RawFd,
    buf: Vec<u8>,
    len: usize,
    sent: usize,
}

fn token(pair: usize, side: usize, op: u64) -> u64 {
    ((pair as u64) << 8) | ((side as u64) << 4) | op
}

fn push(ring: &mut IoUring, e: squeue::Entry) {
    // SAFETY: every buffer handed to the kernel lives in `pairs`, which only grows,
    // and a side has at most one operation in flight.
    unsafe {
        while ring.submission().push(&e).is_err() {
            ring.submit().expect("submit");
        }
    }
}

fn recv(ring: &mut IoUring, s: &mut Side, pair: usize, side: usize) {
    let e = opcode::Recv::new(types::Fd(s.fd), s.buf.as_mut_ptr(), BUF as u32)
        .build()
        .user_data(token(pair, side, RECV));
    push(ring, e);
}

/// A connection to UPSTREAM: TCP (Nagle off), or a Unix-domain socket path.
fn dial(upstream: &str) -> std::io::Result<OwnedFd> {
    if upstream.starts_with('/') {
        return Ok(UnixStream::connect(upstream)?.into());
    }
    let tcp = TcpStream::connect(upstream)?;
    tcp.set_nodelay(true)?;
    Ok(tcp.into())
}

fn main() {
    // A script's background job starts with SIGINT ignored; the benchmark stops its
    // proxies with SIGINT.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, upstream] = args.as_slice() else {
        eprintln!("usage: floor-uring LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    let listener = TcpListener::bind(listen).expect("bind");
    let mut ring = IoUring::new(4096).expect("io_uring (is kernel.io_uring_disabled set?)");
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
        done.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        for &(data, res) in &done {
            if data == ACCEPT {
                if res >= 0 {
                    if let Ok(server) = dial(upstream) {
                        let client =
                            unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(res) };
                        let _ = client.set_nodelay(true);
                        let pair = pairs.len();
                        let side = |fd| Side {
                            fd,
                            buf: vec![0; BUF],
                            len: 0,
                            sent: 0,
                        };
                        pairs.push([side(client.into_raw_fd()), side(server.into_raw_fd())]);
                        for s in 0..2 {
                            recv(&mut ring, &mut pairs[pair][s], pair, s);
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
            let peer_fd = pairs[pair][1 - side].fd;
            let s = &mut pairs[pair][side];
            if s.fd < 0 {
                continue;
            }
            if res <= 0 {
                // End of stream or an error: close both sides.
                for s in pairs[pair].iter_mut() {
                    let fd = std::mem::replace(&mut s.fd, -1);
                    drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
                }
                continue;
            }
            if op == RECV {
                s.len = res as usize;
                s.sent = 0;
            } else {
                s.sent += res as usize;
                if s.sent == s.len {
                    recv(&mut ring, s, pair, side);
                    continue;
                }
            }
            let e = opcode::Send::new(
                types::Fd(peer_fd),
                s.buf[s.sent..].as_ptr(),
                (s.len - s.sent) as u32,
            )
            .build()
            .user_data(token(pair, side, SEND));
            push(&mut ring, e);
        }
    }
}
