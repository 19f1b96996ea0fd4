//! `floor-epoll LISTEN UPSTREAM`: forwards each accepted connection to its own
//! connection to UPSTREAM, one thread, edge-triggered epoll (mio). Per transaction it
//! makes the same system calls as a pooling proxy: two reads and two writes.

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX);

fn main() {
    // A script's background job starts with SIGINT ignored; the benchmark stops its
    // proxies with SIGINT.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, upstream] = args.as_slice() else {
        eprintln!("usage: floor-epoll LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    let upstream: SocketAddr = upstream.parse().expect("upstream address");
    let mut listener = TcpListener::bind(listen.parse().expect("listen address")).expect("bind");
    let mut poll = Poll::new().expect("epoll");
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .expect("register");
    // Socket 2k is a client, 2k + 1 its server connection.
    let mut socks: Vec<Option<TcpStream>> = Vec::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 16384];
    loop {
        poll.poll(&mut events, None).expect("poll");
        for ev in events.iter() {
            if ev.token() == LISTENER {
                while let Ok((mut client, _)) = listener.accept() {
                    let Ok(server) = std::net::TcpStream::connect(upstream) else {
                        continue;
                    };
                    let _ = server.set_nonblocking(true);
                    let mut server = TcpStream::from_std(server);
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let i = socks.len();
                    let r = poll.registry();
                    r.register(&mut client, Token(i), Interest::READABLE)
                        .expect("register");
                    r.register(&mut server, Token(i + 1), Interest::READABLE)
                        .expect("register");
                    socks.push(Some(client));
                    socks.push(Some(server));
                }
                continue;
            }
            let (from, to) = (ev.token().0, ev.token().0 ^ 1);
            loop {
                let Some(src) = socks[from].as_mut() else {
                    break;
                };
                match src.read(&mut buf) {
                    Ok(0) => {
                        socks[from] = None;
                        socks[to] = None;
                        break;
                    }
                    Ok(n) => {
                        // Replies of a request-response workload fit the socket
                        // buffer; a forwarder for real use would queue the rest.
                        if let Some(dst) = socks[to].as_mut() {
                            let _ = dst.write_all(&buf[..n]);
                        }
                        if n < buf.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        socks[from] = None;
                        socks[to] = None;
                        break;
                    }
                }
            }
        }
    }
}
