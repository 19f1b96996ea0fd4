use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// io_uring may be switched off (`kernel.io_uring_disabled`, a container's seccomp
/// profile); pgmux then runs on epoll, and these tests have nothing to test.
fn available() -> bool {
    match Driver::new() {
        Ok(_) => true,
        Err(e) => {
            eprintln!("io_uring is not available here ({e}); skipped");
            false
        }
    }
}

fn runtime(workers: usize) -> tokio::runtime::Runtime {
    let mut b = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    b.enable_all().on_thread_park(submit_local).build().unwrap()
}

/// A connected pair: pgmux's side on io_uring, the peer on tokio.
async fn pair() -> (UringStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (ours, theirs) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let ours = UringStream::new(ours.unwrap().into_std().unwrap().into());
    (ours, theirs.unwrap().0)
}

async fn read_some(s: &UringStream, buf: &mut BytesMut) -> usize {
    let read = std::future::poll_fn(|cx| s.poll_read_buf(cx, buf));
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("data within 30 s")
        .unwrap()
}

fn round_trip(workers: usize) {
    runtime(workers).block_on(async {
        let (ours, mut peer) = pair().await;
        let mut out = BytesMut::from(&b"hello"[..]);
        assert_eq!(ours.send_buf(&mut out).unwrap(), 5);
        assert!(out.is_empty(), "the buffer went to the kernel");
        let mut got = [0u8; 5];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");

        peer.write_all(b"world").await.unwrap();
        let mut buf = BytesMut::new();
        let mut n = 0;
        while n < 5 {
            n += read_some(&ours, &mut buf).await;
        }
        assert_eq!(&buf[..], b"world");

        drop(peer);
        assert_eq!(read_some(&ours, &mut buf).await, 0, "end of stream");
    });
}

#[test]
fn bytes_go_both_ways_on_one_worker() {
    if !available() {
        return;
    }
    round_trip(1);
}

#[test]
fn bytes_go_both_ways_on_two_workers() {
    if !available() {
        return;
    }
    round_trip(2);
}

#[test]
fn a_peer_that_does_not_read_holds_writers_back_and_loses_nothing() {
    if !available() {
        return;
    }
    runtime(1).block_on(async {
        let (ours, mut peer) = pair().await;
        let chunk: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        // Queue until the socket says too much waits: the peer reads nothing yet.
        let mut sent = 0usize;
        loop {
            let backlog = ours.send_slice(&chunk).unwrap();
            sent += chunk.len();
            if backlog > HIGH_WATER {
                break;
            }
            assert!(sent < 1 << 30, "backlog never grew");
            tokio::task::yield_now().await;
        }
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            let mut buf = vec![0u8; 1 << 16];
            while all.len() < sent {
                let n = peer.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed early");
                all.extend_from_slice(&buf[..n]);
            }
            all
        });
        let drained = std::future::poll_fn(|cx| ours.poll_backlog(cx, 0));
        tokio::time::timeout(Duration::from_secs(30), drained)
            .await
            .expect("drained within 30 s")
            .unwrap();
        let all = reader.await.unwrap();
        assert_eq!(all.len(), sent);
        assert!(all.chunks(chunk.len()).all(|c| c == &chunk[..c.len()]));
    });
}

/// A send the kernel took in part, then failed (the peer reset the connection):
/// what was left is dropped, the backlog reads zero, and writers hear the error.
#[test]
fn a_send_that_fails_midway_leaves_no_backlog() {
    if !available() {
        return;
    }
    runtime(1).block_on(async {
        let (ours, peer) = pair().await;
        // More than any socket buffer holds: the kernel takes a part of it.
        let total = 64 << 20;
        ours.send_slice(&vec![7u8; total]).unwrap();
        let taken = std::future::poll_fn(|cx| ours.poll_backlog(cx, total - 1));
        tokio::time::timeout(Duration::from_secs(30), taken)
            .await
            .expect("the kernel takes a part within 30 s")
            .unwrap();
        assert!(
            ours.backlog() > 0,
            "the peer reads nothing: not all of it fits"
        );
        // A reset, not an orderly close: SO_LINGER with a zero timeout.
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a valid descriptor and a `linger` of the size given.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&peer),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        drop(peer);
        let failed = std::future::poll_fn(|cx| ours.poll_backlog(cx, 0));
        let result = tokio::time::timeout(Duration::from_secs(30), failed)
            .await
            .expect("the failure within 30 s");
        assert!(result.is_err(), "the reset reaches the writer");
        assert_eq!(ours.backlog(), 0);
        assert!(ours.send_slice(b"more").is_err());
    });
}

#[test]
fn a_watched_idle_socket_notices_the_peer_closing() {
    if !available() {
        return;
    }
    runtime(1).block_on(async {
        let (ours, peer) = pair().await;
        ours.watch();
        assert!(ours.is_quiet());
        drop(peer);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while ours.is_quiet() {
            assert!(tokio::time::Instant::now() < deadline, "close not seen");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
}

#[test]
fn dropping_a_socket_with_a_receive_armed_closes_it() {
    if !available() {
        return;
    }
    runtime(1).block_on(async {
        let (ours, mut peer) = pair().await;
        ours.watch();
        ours.send_slice(b"bye").unwrap();
        drop(ours);
        let mut got = Vec::new();
        let read = peer.read_to_end(&mut got);
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .expect("closed within 30 s")
            .unwrap();
        assert_eq!(got, b"bye", "output queued before the drop still goes out");
    });
}

#[test]
fn async_read_and_write_work_for_the_slow_paths() {
    if !available() {
        return;
    }
    runtime(1).block_on(async {
        let (mut ours, mut peer) = pair().await;
        ours.write_all(b"ping").await.unwrap();
        ours.flush().await.unwrap();
        let mut got = [0u8; 4];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        peer.write_all(b"pong!").await.unwrap();
        let mut got = [0u8; 5];
        ours.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong!");
    });
}

/// More receives complete in one pass than the ring has buffers: the rest get
/// ENOBUFS, are armed again after the reap, and deliver their data.
#[test]
fn more_arrivals_than_receive_buffers_lose_nothing() {
    if !available() {
        return;
    }
    runtime(1).block_on(async {
        let count = usize::from(BUF_COUNT) + 72;
        let mut pairs = Vec::with_capacity(count);
        for _ in 0..count {
            let (ours, peer) = pair().await;
            ours.watch();
            pairs.push((ours, peer));
        }
        // Every receive in the kernel before any data arrives.
        submit_local();
        // All written in one pass: no reap between them recycles a buffer.
        for (i, (_, peer)) in pairs.iter().enumerate() {
            let byte = [(i % 251) as u8];
            assert_eq!(peer.try_write(&byte).unwrap(), 1);
        }
        for (i, (ours, _)) in pairs.iter().enumerate() {
            let mut buf = BytesMut::new();
            assert_eq!(read_some(ours, &mut buf).await, 1, "socket {i}");
            assert_eq!(buf[0], (i % 251) as u8, "socket {i}");
        }
    });
}

#[test]
fn rings_hold_fewer_buffers_as_workers_grow() {
    assert_eq!(buffers_per_ring(0), 128);
    assert_eq!(buffers_per_ring(1), 128);
    assert_eq!(buffers_per_ring(2), 128);
    assert_eq!(buffers_per_ring(3), 64);
    assert_eq!(buffers_per_ring(4), 64);
    assert_eq!(buffers_per_ring(5), 32);
    assert_eq!(buffers_per_ring(8), 32);
    assert_eq!(buffers_per_ring(64), 32);
    for w in 1..100 {
        let n = buffers_per_ring(w);
        assert!(n.is_power_of_two());
        // 256 buffers of 16 KiB (4 MiB) in all, or 32 a ring where that is more.
        assert!(usize::from(n) * w <= 256.max(32 * w), "{w} workers");
    }
}

/// Large output to a peer outside the runtime (as Postgres is): partial sends are
/// re-armed from the park hook's reap, and the only thing left to wake the thread is
/// the ring itself. A re-arm left unsubmitted when the thread sleeps stalls the
/// transfer for good.
#[test]
fn large_output_to_a_peer_outside_the_runtime_all_arrives() {
    if !available() {
        return;
    }
    const TOTAL: usize = 2 << 20;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    // One runtime for every round: a thread's ring reports to the reactor of the
    // runtime that made it.
    runtime(1).block_on(async {
        for round in 0..3 {
            let (ours, peer) = pair().await;
            // A small send buffer: thousands of partial sends, each re-armed.
            let size: libc::c_int = 16 * 1024;
            // SAFETY: setsockopt on an open socket with an int option value.
            let set = unsafe {
                libc::setsockopt(
                    ours.sock.fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_SNDBUF,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(set, 0, "SO_SNDBUF");
            let mut peer = peer.into_std().unwrap();
            peer.set_nonblocking(false).unwrap();
            let reader = std::thread::spawn(move || {
                use std::io::Read;
                let mut got = 0usize;
                let mut buf = vec![0u8; 1 << 16];
                while got < TOTAL {
                    let n = peer.read(&mut buf).unwrap();
                    assert!(n > 0, "closed early");
                    got += n;
                }
                got
            });
            let mut out = BytesMut::from(&vec![7u8; TOTAL][..]);
            ours.send_buf(&mut out).unwrap();
            let drained = std::future::poll_fn(|cx| ours.poll_backlog(cx, 0));
            tokio::time::timeout_at(deadline, drained)
                .await
                .unwrap_or_else(|_| panic!("round {round}: output stalled"))
                .unwrap();
            assert_eq!(reader.join().unwrap(), TOTAL);
        }
    });
}
