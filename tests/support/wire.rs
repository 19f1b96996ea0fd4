//! Raw Postgres wire messages, for tests that must do what no driver does: send a
//! GSSENCRequest or a CancelRequest with a made-up key, cut a message short, or
//! know exactly when a message has left the test and when pgmux has read it.
//!
//! Everything here is blocking `std::net` with a read timeout, so a test that
//! waits for a reply that never comes fails instead of hanging.

use std::fs;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The request codes of the Postgres docs, "Message Formats".
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;
/// Protocol 3.0.
pub const PROTOCOL_VERSION: i32 = 196_608;

/// How long a read on a raw connection may block before the test fails.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The 8-byte SSLRequest.
pub fn ssl_request() -> Vec<u8> {
    request(SSL_REQUEST_CODE, &[])
}

/// The 8-byte GSSENCRequest.
pub fn gssenc_request() -> Vec<u8> {
    request(GSSENC_REQUEST_CODE, &[])
}

/// The 16-byte CancelRequest for backend key (`pid`, `secret`).
pub fn cancel_request(pid: i32, secret: i32) -> Vec<u8> {
    let mut key = pid.to_be_bytes().to_vec();
    key.extend_from_slice(&secret.to_be_bytes());
    request(CANCEL_REQUEST_CODE, &key)
}

/// A StartupMessage (protocol 3.0) with `params` (`user`, `database`, ...).
pub fn startup_message(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    request(PROTOCOL_VERSION, &body)
}

/// A simple-protocol Query message.
pub fn query_message(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    tagged(b'Q', &body)
}

/// `sql` through the extended protocol as one unit, without parameters: Parse of the
/// unnamed statement, Bind, Describe of the portal, Execute, Sync.
pub fn extended_messages(sql: &str) -> Vec<u8> {
    let mut parse = vec![0];
    parse.extend_from_slice(sql.as_bytes());
    parse.extend_from_slice(&[0, 0, 0]);
    let mut out = tagged(b'P', &parse);
    out.extend(tagged(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]));
    out.extend(tagged(b'D', b"P\0"));
    out.extend(tagged(b'E', &[0, 0, 0, 0, 0]));
    out.extend(tagged(b'S', &[]));
    out
}

/// A Terminate message.
pub fn terminate_message() -> Vec<u8> {
    tagged(b'X', &[])
}

pub fn request(code: i32, rest: &[u8]) -> Vec<u8> {
    let len = i32::try_from(8 + rest.len()).expect("a small packet");
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(rest);
    out
}

/// A frontend message: its type byte, its length and `body`.
pub fn tagged(tag: u8, body: &[u8]) -> Vec<u8> {
    let len = i32::try_from(4 + body.len()).expect("a small message");
    let mut out = vec![tag];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// One backend message: its type byte and its body (without the length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub tag: u8,
    pub body: Vec<u8>,
}

/// The values the ParameterStatus messages among `said` report for `name`, in order.
pub fn parameter_statuses(said: &[Message], name: &str) -> Vec<String> {
    said.iter()
        .filter(|m| m.tag == b'S')
        .filter_map(|m| {
            let mut fields = m.body.split(|&b| b == 0);
            (fields.next()? == name.as_bytes())
                .then(|| String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned())
        })
        .collect()
}

impl Message {
    /// The SQLSTATE of an ErrorResponse (`E`) or NoticeResponse (`N`).
    pub fn sqlstate(&self) -> Option<String> {
        self.field(b'C')
    }

    /// A field of an ErrorResponse or NoticeResponse (`b'M'` message, `b'S'`
    /// severity, ...).
    pub fn field(&self, code: u8) -> Option<String> {
        if self.tag != b'E' && self.tag != b'N' {
            return None;
        }
        self.body
            .split(|&b| b == 0)
            .find(|f| f.first() == Some(&code))
            .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
    }

    /// `(severity, SQLSTATE)` of an ErrorResponse.
    pub fn error(&self) -> (String, String) {
        assert_eq!(self.tag, b'E', "not an ErrorResponse: {self:?}");
        (
            self.field(b'V').unwrap_or_default(),
            self.field(b'C').unwrap_or_default(),
        )
    }

    /// The first column of a DataRow, as text ("NULL" for null).
    pub fn first_column(&self) -> String {
        assert_eq!(self.tag, b'D', "not a DataRow: {self:?}");
        first_column(&self.body)
    }

    /// The transaction status of a ReadyForQuery.
    pub fn tx_status(&self) -> char {
        assert_eq!(self.tag, b'Z', "not a ReadyForQuery: {self:?}");
        self.body[0] as char
    }

    /// The request code of an Authentication message (`R`): 0 ok, 5 md5, 10 SASL.
    pub fn auth_code(&self) -> Option<i32> {
        (self.tag == b'R' && self.body.len() >= 4)
            .then(|| i32::from_be_bytes([self.body[0], self.body[1], self.body[2], self.body[3]]))
    }
}

/// Reads one backend message.
pub fn read_message(r: &mut impl Read) -> io::Result<Message> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head)?;
    let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l >= 4)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad message length"))?;
    let mut body = vec![0u8; len - 4];
    r.read_exact(&mut body)?;
    Ok(Message { tag: head[0], body })
}

/// Reads the one-byte answer to an SSLRequest or GSSENCRequest (`S`, `G` or `N`).
pub fn read_byte(r: &mut impl Read) -> io::Result<u8> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    Ok(b[0])
}

/// A TCP connection to 127.0.0.1:`port` whose reads time out after 60 s.
pub fn tcp(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .expect("set a read timeout");
    stream.set_nodelay(true).expect("set TCP_NODELAY");
    stream
}

/// A client speaking the protocol by hand. It logs in only where pgmux asks for
/// no password (`auth_method = "trust"`).
pub struct RawClient {
    pub stream: TcpStream,
    /// The BackendKeyData pgmux gave this client.
    pub pid: i32,
    pub secret: i32,
}

impl RawClient {
    /// Logs in as `user` to `database` at 127.0.0.1:`port` (trust); panics on
    /// anything but AuthenticationOk ... ReadyForQuery.
    pub fn login_trust(port: u16, user: &str, database: &str) -> RawClient {
        Self::login_trust_with(port, &[("user", user), ("database", database)]).0
    }

    /// [`RawClient::login_trust`] with the startup parameters `params`; also returns
    /// the ParameterStatus and notice messages of the login.
    pub fn login_trust_with(port: u16, params: &[(&str, &str)]) -> (RawClient, Vec<Message>) {
        let mut stream = tcp(port);
        stream
            .write_all(&startup_message(params))
            .expect("send the startup message");
        let (mut pid, mut secret) = (0, 0);
        let mut said = Vec::new();
        loop {
            let m = read_message(&mut stream).expect("read a login reply");
            match m.tag {
                b'R' => assert_eq!(m.auth_code(), Some(0), "expected AuthenticationOk"),
                b'K' => {
                    pid = i32::from_be_bytes([m.body[0], m.body[1], m.body[2], m.body[3]]);
                    secret = i32::from_be_bytes([m.body[4], m.body[5], m.body[6], m.body[7]]);
                }
                b'Z' => break,
                b'S' | b'N' => said.push(m),
                b'E' => panic!("login refused: {:?} {:?}", m.sqlstate(), m.field(b'M')),
                other => panic!("unexpected message {:?} during login", other as char),
            }
        }
        let client = RawClient {
            stream,
            pid,
            secret,
        };
        (client, said)
    }

    /// The client's own port: the remote port of pgmux's end of the connection.
    pub fn local_port(&self) -> u16 {
        self.stream.local_addr().expect("local_addr").port()
    }

    /// Sends a simple Query; returns once the bytes are handed to the kernel.
    pub fn send_query(&mut self, sql: &str) {
        self.stream
            .write_all(&query_message(sql))
            .expect("send a query");
    }

    /// Sends `sql` as one extended-protocol unit ([`extended_messages`]).
    pub fn send_extended(&mut self, sql: &str) {
        self.stream
            .write_all(&extended_messages(sql))
            .expect("send an extended-protocol unit");
    }

    /// Reads messages up to and including ReadyForQuery.
    pub fn read_until_ready(&mut self) -> Vec<Message> {
        let mut out = Vec::new();
        loop {
            let m = read_message(&mut self.stream).expect("read a reply");
            let done = m.tag == b'Z';
            out.push(m);
            if done {
                return out;
            }
        }
    }

    /// Runs `sql` and returns the first column of each DataRow as text, or the
    /// SQLSTATE of the error.
    pub fn query(&mut self, sql: &str) -> Result<Vec<String>, String> {
        self.send_query(sql);
        self.read_result()
    }

    /// Reads the replies to one query sent before: the first column of each
    /// DataRow as text, or the SQLSTATE of the error.
    pub fn read_result(&mut self) -> Result<Vec<String>, String> {
        let replies = self.read_until_ready();
        if let Some(e) = replies.iter().find(|m| m.tag == b'E') {
            return Err(e.sqlstate().unwrap_or_default());
        }
        Ok(replies
            .iter()
            .filter(|m| m.tag == b'D')
            .map(|m| first_column(&m.body))
            .collect())
    }
}

/// The first column of a DataRow body, as text ("NULL" for null).
fn first_column(body: &[u8]) -> String {
    let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
    match usize::try_from(len) {
        Ok(len) => String::from_utf8_lossy(&body[6..6 + len]).into_owned(),
        Err(_) => "NULL".to_owned(),
    }
}

/// How many bytes sent by the peer on 127.0.0.1:`peer_port` wait unread in the
/// receive queue of the socket on 127.0.0.1:`local_port` (from
/// `/proc/net/tcp`). `None` when no such connection exists.
///
/// With it a test knows that a process (pgmux) has read a message, e.g. that a
/// client's query has reached its session and it is now waiting for a server.
pub fn unread_bytes(local_port: u16, peer_port: u16) -> Option<u64> {
    tcp_queue(local_port, peer_port, 1)
}

/// How many bytes the socket on 127.0.0.1:`local_port` has queued for its peer on
/// 127.0.0.1:`peer_port` that the peer has not yet acknowledged (its send queue).
pub fn unsent_bytes(local_port: u16, peer_port: u16) -> Option<u64> {
    tcp_queue(local_port, peer_port, 0)
}

/// Column `which` (0 = tx_queue, 1 = rx_queue) of a loopback connection in
/// `/proc/net/tcp`.
fn tcp_queue(local_port: u16, peer_port: u16, which: usize) -> Option<u64> {
    let text = fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!("0100007F:{local_port:04X}");
    let peer = format!("0100007F:{peer_port:04X}");
    // Columns: sl local_address rem_address st tx_queue:rx_queue ...
    text.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.get(1) != Some(&local.as_str()) || cols.get(2) != Some(&peer.as_str()) {
            return None;
        }
        let n = cols.get(4)?.split(':').nth(which)?;
        u64::from_str_radix(n, 16).ok()
    })
}
