//! A TCP link between pgmux and a Postgres server whose server-to-pgmux direction a
//! test can hold: what Postgres sends then waits in the link, as on a slow network,
//! while Postgres goes on with what pgmux sends it.
//!
//! With it a test can let Postgres finish a statement, and start the next one queued
//! behind it, before pgmux reads the first one's reply.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

#[derive(Default)]
struct Hold {
    held: Mutex<bool>,
    changed: Condvar,
}

impl Hold {
    fn wait_released(&self) {
        let mut held = self.held.lock().unwrap();
        while *held {
            held = self.changed.wait(held).unwrap();
        }
    }
}

/// A listener on 127.0.0.1 that connects each connection it accepts to `upstream`.
/// Its threads end with the connections they carry; the listener's thread lives as
/// long as the test process.
pub struct Link {
    /// The port pgmux is to connect to, in place of the server's.
    pub port: u16,
    hold: Arc<Hold>,
}

impl Link {
    pub fn to(upstream_port: u16) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the link");
        let port = listener.local_addr().expect("local_addr").port();
        let hold = Arc::new(Hold::default());
        let h = hold.clone();
        thread::spawn(move || {
            for down in listener.incoming() {
                let Ok(down) = down else { continue };
                let Ok(up) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
                    continue;
                };
                let _ = down.set_nodelay(true);
                let _ = up.set_nodelay(true);
                let (down2, up2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
                thread::spawn(move || pump(down, up, None));
                let h = h.clone();
                thread::spawn(move || pump(up2, down2, Some(h)));
            }
        });
        Link { port, hold }
    }

    /// From now on, what servers send waits in the link.
    pub fn hold(&self) {
        *self.hold.held.lock().unwrap() = true;
    }

    /// Lets what waited, and everything after it, through.
    pub fn release(&self) {
        *self.hold.held.lock().unwrap() = false;
        self.hold.changed.notify_all();
    }
}

/// Copies `from` to `to` until either side closes; waits for a release before each
/// write when `hold` is given.
fn pump(mut from: TcpStream, mut to: TcpStream, hold: Option<Arc<Hold>>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(h) = &hold {
            h.wait_released();
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}
