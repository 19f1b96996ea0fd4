//! A minimal blocking Postgres client speaking the extended protocol directly, for
//! tests that need to choose statement names (drivers pick their own).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

use super::{APP_DB, APP_PASSWORD, APP_USER};

pub struct Wire {
    stream: TcpStream,
    /// The ParameterStatus values of the login, in the order they came.
    pub login_params: Vec<(String, String)>,
}

/// What came back for one Sync or simple Query.
#[derive(Debug, Default)]
pub struct Reply {
    /// The first column of each row, as text.
    pub values: Vec<String>,
    /// SQLSTATE and message of an ErrorResponse.
    pub error: Option<(String, String)>,
    /// The transaction status ReadyForQuery gave.
    pub status: char,
    /// Column names of a RowDescription.
    pub columns: Vec<String>,
}

impl Reply {
    /// The SQLSTATE of its error, if any.
    pub fn code(&self) -> Option<&str> {
        self.error.as_ref().map(|e| e.0.as_str())
    }
}

/// Appends message `tag` with `body` to `out`.
pub fn message(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
}

/// Appends a Parse of `sql` as statement `name`, with no parameter types, to `out`.
pub fn parse(out: &mut Vec<u8>, name: &str, sql: &str) {
    let mut body = Vec::new();
    cstr(&mut body, name);
    cstr(&mut body, sql);
    body.extend_from_slice(&0i16.to_be_bytes());
    message(out, b'P', &body);
}

/// Appends a Bind of statement `name` to the unnamed portal (text parameters), its
/// Execute and a Sync to `out`.
pub fn bind_execute_sync(out: &mut Vec<u8>, name: &str, params: &[&str]) {
    bind_execute(out, name, params);
    message(out, b'S', &[]);
}

/// Appends a Bind of statement `name` to the unnamed portal (text parameters) and
/// its Execute to `out`.
pub fn bind_execute(out: &mut Vec<u8>, name: &str, params: &[&str]) {
    let mut body = Vec::new();
    cstr(&mut body, "");
    cstr(&mut body, name);
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        body.extend_from_slice(&(p.len() as i32).to_be_bytes());
        body.extend_from_slice(p.as_bytes());
    }
    body.extend_from_slice(&0i16.to_be_bytes());
    message(out, b'B', &body);
    let mut exec = Vec::new();
    cstr(&mut exec, "");
    exec.extend_from_slice(&0i32.to_be_bytes());
    message(out, b'E', &exec);
}

/// Appends `s` and its terminating zero to `out`.
pub fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

impl Wire {
    /// Connects to pgmux on `port` as the app user (SCRAM-SHA-256).
    pub fn connect(port: u16) -> Wire {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to pgmux");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut wire = Wire {
            stream,
            login_params: Vec::new(),
        };
        let mut body = 196608i32.to_be_bytes().to_vec();
        for s in ["user", APP_USER, "database", APP_DB] {
            cstr(&mut body, s);
        }
        body.push(0);
        let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        wire.send(&out);

        let mut scram = None;
        loop {
            let (tag, body) = wire.read_message();
            match tag {
                b'R' => {
                    let code = i32::from_be_bytes(body[..4].try_into().unwrap());
                    let data = &body[4..];
                    match code {
                        0 => {}
                        10 => {
                            let s = ScramSha256::new(
                                APP_PASSWORD.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            let mut b = Vec::new();
                            cstr(&mut b, "SCRAM-SHA-256");
                            b.extend_from_slice(&(s.message().len() as i32).to_be_bytes());
                            b.extend_from_slice(s.message());
                            let mut out = Vec::new();
                            message(&mut out, b'p', &b);
                            wire.send(&out);
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().expect("SASL started");
                            s.update(data).expect("SCRAM server-first");
                            let mut out = Vec::new();
                            message(&mut out, b'p', s.message());
                            wire.send(&out);
                        }
                        12 => {
                            scram
                                .take()
                                .expect("SASL started")
                                .finish(data)
                                .expect("SCRAM server-final");
                        }
                        other => panic!("unexpected authentication request {other}"),
                    }
                }
                b'E' => panic!("login failed: {:?}", error_fields(&body)),
                b'S' => {
                    let mut parts = body.split(|&b| b == 0);
                    let name = String::from_utf8_lossy(parts.next().unwrap_or(b"")).into_owned();
                    let value = String::from_utf8_lossy(parts.next().unwrap_or(b"")).into_owned();
                    wire.login_params.push((name, value));
                }
                b'Z' => return wire,
                _ => {}
            }
        }
    }

    /// Writes `bytes` as they are.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to pgmux");
    }

    /// The next message: its tag and body.
    pub fn read_message(&mut self) -> (u8, Vec<u8>) {
        let mut head = [0u8; 5];
        self.stream.read_exact(&mut head).expect("read from pgmux");
        let len = i32::from_be_bytes(head[1..].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len - 4];
        self.stream.read_exact(&mut body).expect("read from pgmux");
        (head[0], body)
    }

    /// Reads replies up to and including ReadyForQuery.
    pub fn until_ready(&mut self) -> Reply {
        let mut reply = Reply::default();
        loop {
            let (tag, body) = self.read_message();
            match tag {
                b'D' => {
                    let len = i32::from_be_bytes(body[2..6].try_into().unwrap());
                    let value = if len < 0 {
                        "NULL".to_string()
                    } else {
                        String::from_utf8_lossy(&body[6..6 + len as usize]).into_owned()
                    };
                    reply.values.push(value);
                }
                b'E' => reply.error = Some(error_fields(&body)),
                b'T' => {
                    let mut rest = &body[2..];
                    for _ in 0..i16::from_be_bytes([body[0], body[1]]) {
                        let end = rest.iter().position(|&b| b == 0).unwrap();
                        reply
                            .columns
                            .push(String::from_utf8_lossy(&rest[..end]).into_owned());
                        rest = &rest[end + 1 + 18..];
                    }
                }
                b'Z' => {
                    reply.status = body[0] as char;
                    return reply;
                }
                _ => {}
            }
        }
    }

    /// Parse + Sync.
    pub fn try_prepare(&mut self, name: &str, sql: &str) -> Reply {
        let mut out = Vec::new();
        parse(&mut out, name, sql);
        message(&mut out, b'S', &[]);
        self.send(&out);
        self.until_ready()
    }

    /// Describe (statement) + Sync.
    pub fn describe_statement(&mut self, name: &str) -> Reply {
        let mut body = vec![b'S'];
        cstr(&mut body, name);
        let mut out = Vec::new();
        message(&mut out, b'D', &body);
        message(&mut out, b'S', &[]);
        self.send(&out);
        self.until_ready()
    }

    /// [`Wire::try_prepare`], panicking on an error.
    pub fn prepare(&mut self, name: &str, sql: &str) {
        let reply = self.try_prepare(name, sql);
        assert!(reply.error.is_none(), "Parse {name}: {:?}", reply.error);
    }

    /// Bind (text parameters) + Execute + Sync of statement `name`.
    pub fn try_execute(&mut self, name: &str, params: &[&str]) -> Reply {
        let mut out = Vec::new();
        bind_execute_sync(&mut out, name, params);
        self.send(&out);
        self.until_ready()
    }

    /// [`Wire::try_execute`], panicking on an error; the first column of each row.
    pub fn execute(&mut self, name: &str, params: &[&str]) -> Vec<String> {
        let reply = self.try_execute(name, params);
        assert!(reply.error.is_none(), "Execute {name}: {:?}", reply.error);
        reply.values
    }

    /// Close (statement) + Sync.
    pub fn close_statement(&mut self, name: &str) {
        let mut body = vec![b'S'];
        cstr(&mut body, name);
        let mut out = Vec::new();
        message(&mut out, b'C', &body);
        message(&mut out, b'S', &[]);
        self.send(&out);
        let reply = self.until_ready();
        assert!(reply.error.is_none(), "Close {name}: {:?}", reply.error);
    }

    /// Simple Queries sent in one write, without waiting for replies in between.
    pub fn pipeline_simple(&mut self, sqls: &[&str]) -> Vec<Reply> {
        let mut out = Vec::new();
        for sql in sqls {
            let mut body = Vec::new();
            cstr(&mut body, sql);
            message(&mut out, b'Q', &body);
        }
        self.send(&out);
        sqls.iter().map(|_| self.until_ready()).collect()
    }

    /// A simple Query; panics on an error.
    pub fn simple(&mut self, sql: &str) -> Vec<String> {
        let mut body = Vec::new();
        cstr(&mut body, sql);
        let mut out = Vec::new();
        message(&mut out, b'Q', &body);
        self.send(&out);
        let reply = self.until_ready();
        assert!(reply.error.is_none(), "{sql}: {:?}", reply.error);
        reply.values
    }
}

/// SQLSTATE and message of an ErrorResponse or NoticeResponse body.
pub fn error_fields(body: &[u8]) -> (String, String) {
    let (mut code, mut text) = (String::new(), String::new());
    for field in body.split(|&b| b == 0) {
        match field.first() {
            Some(b'C') => code = String::from_utf8_lossy(&field[1..]).into_owned(),
            Some(b'M') => text = String::from_utf8_lossy(&field[1..]).into_owned(),
            _ => {}
        }
    }
    (code, text)
}
