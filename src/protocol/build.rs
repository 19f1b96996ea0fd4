//! The messages pgmux originates itself, written straight into an output buffer.
//!
//! Each function appends one complete message (header included) to `out`; none of them
//! allocates beyond growing `out`.

use bytes::{BufMut, BytesMut};

use super::{SqlState, TxStatus};

/// Appends a message whose body is written by `body`, patching the length afterwards.
#[inline]
pub fn message(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let len_at = out.len();
    out.put_i32(0);
    body(out);
    let len = (out.len() - len_at) as i32;
    out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

#[inline]
pub fn put_cstr(out: &mut BytesMut, s: &[u8]) {
    out.put_slice(s);
    out.put_u8(0);
}

/// Severity of an ErrorResponse: FATAL closes the connection after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// An error as the client sees it: one place holds every field pgmux sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    pub severity: Severity,
    pub code: SqlState,
    pub message: String,
    pub hint: Option<String>,
}

impl PgError {
    pub fn error(code: SqlState, message: impl Into<String>) -> PgError {
        PgError {
            severity: Severity::Error,
            code,
            message: message.into(),
            hint: None,
        }
    }

    pub fn fatal(code: SqlState, message: impl Into<String>) -> PgError {
        PgError {
            severity: Severity::Fatal,
            code,
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> PgError {
        self.hint = Some(hint.into());
        self
    }

    pub fn encode(&self, out: &mut BytesMut) {
        error_response(
            out,
            self.severity,
            self.code,
            &self.message,
            self.hint.as_deref(),
        );
    }
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.severity.as_str(),
            self.code,
            self.message
        )
    }
}

pub fn error_response(
    out: &mut BytesMut,
    severity: Severity,
    code: SqlState,
    text: &str,
    hint: Option<&str>,
) {
    message(out, b'E', |b| {
        b.put_u8(b'S');
        put_cstr(b, severity.as_str().as_bytes());
        b.put_u8(b'V');
        put_cstr(b, severity.as_str().as_bytes());
        b.put_u8(b'C');
        put_cstr(b, code.0.as_bytes());
        b.put_u8(b'M');
        put_cstr(b, text.as_bytes());
        if let Some(hint) = hint {
            b.put_u8(b'H');
            put_cstr(b, hint.as_bytes());
        }
        b.put_u8(0);
    });
}

/// Re-encodes ErrorResponse `body` with `from` replaced by `to` in its message field
/// (`M`); the other fields pass unchanged. False, with nothing written, when the
/// message does not contain `from`.
pub fn error_renaming(out: &mut BytesMut, body: &[u8], from: &[u8], to: &[u8]) -> bool {
    if from.is_empty() {
        return false;
    }
    let fields = super::msg::ErrorFields::parse(body);
    let Some(at) = fields
        .message
        .and_then(|m| m.windows(from.len()).position(|w| w == from))
    else {
        return false;
    };
    message(out, b'E', |out| {
        let mut rest = body;
        while let Some((&kind, tail)) = rest.split_first() {
            let Some((value, tail)) = super::msg::cstr(tail).filter(|_| kind != 0) else {
                break;
            };
            out.put_u8(kind);
            if kind == b'M' {
                out.put_slice(&value[..at]);
                out.put_slice(to);
                put_cstr(out, &value[at + from.len()..]);
            } else {
                put_cstr(out, value);
            }
            rest = tail;
        }
        out.put_u8(0);
    });
    true
}

/// Re-encodes ErrorResponse `body` with `message` as its message (`M`) and `hint` as
/// its hint (`H`, added when it had none); the other fields pass unchanged.
pub fn error_restated(out: &mut BytesMut, body: &[u8], message: &str, hint: &str) {
    self::message(out, b'E', |out| {
        let mut rest = body;
        while let Some((&kind, tail)) = rest.split_first() {
            let Some((value, tail)) = super::msg::cstr(tail).filter(|_| kind != 0) else {
                break;
            };
            if kind != b'H' {
                out.put_u8(kind);
                put_cstr(
                    out,
                    if kind == b'M' {
                        message.as_bytes()
                    } else {
                        value
                    },
                );
            }
            rest = tail;
        }
        out.put_u8(b'H');
        put_cstr(out, hint.as_bytes());
        out.put_u8(0);
    });
}

pub fn ready_for_query(out: &mut BytesMut, status: TxStatus) {
    out.put_slice(&[b'Z', 0, 0, 0, 5, status.as_byte()]);
}

pub fn auth_ok(out: &mut BytesMut) {
    out.put_slice(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0]);
}

pub fn auth_md5(out: &mut BytesMut, salt: [u8; 4]) {
    out.put_slice(&[b'R', 0, 0, 0, 12, 0, 0, 0, 5]);
    out.put_slice(&salt);
}

pub fn auth_sasl(out: &mut BytesMut, mechanisms: &[&str]) {
    message(out, b'R', |b| {
        b.put_i32(10);
        for m in mechanisms {
            put_cstr(b, m.as_bytes());
        }
        b.put_u8(0);
    });
}

pub fn auth_sasl_continue(out: &mut BytesMut, data: &[u8]) {
    message(out, b'R', |b| {
        b.put_i32(11);
        b.put_slice(data);
    });
}

pub fn auth_sasl_final(out: &mut BytesMut, data: &[u8]) {
    message(out, b'R', |b| {
        b.put_i32(12);
        b.put_slice(data);
    });
}

pub fn parameter_status(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    message(out, b'S', |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}

pub fn backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    out.put_slice(&[b'K', 0, 0, 0, 12]);
    out.put_i32(pid);
    out.put_i32(secret);
}

/// NegotiateProtocolVersion: the newest version pgmux speaks (3.0) and the protocol
/// options it did not recognise. The version goes out whole, major and minor, as
/// Postgres sends it: libpq reads a bare minor 0 as a downgrade below 3.0 and fails.
pub fn negotiate_protocol_version<'a>(
    out: &mut BytesMut,
    unsupported: impl Iterator<Item = &'a str>,
) {
    message(out, b'v', |b| {
        b.put_i32(3 << 16);
        let count_at = b.len();
        b.put_i32(0);
        let mut n = 0i32;
        for name in unsupported {
            put_cstr(b, name.as_bytes());
            n += 1;
        }
        b[count_at..count_at + 4].copy_from_slice(&n.to_be_bytes());
    });
}

pub fn command_complete(out: &mut BytesMut, tag: &str) {
    message(out, b'C', |b| put_cstr(b, tag.as_bytes()));
}

pub fn parse_complete(out: &mut BytesMut) {
    out.put_slice(&[b'1', 0, 0, 0, 4]);
}

pub fn close_complete(out: &mut BytesMut) {
    out.put_slice(&[b'3', 0, 0, 0, 4]);
}

pub fn notice(out: &mut BytesMut, message_text: &str) {
    notice_with_code(out, "00000", message_text);
}

/// A NoticeResponse with its SQLSTATE.
pub fn notice_with_code(out: &mut BytesMut, code: &str, message_text: &str) {
    message(out, b'N', |b| {
        b.put_u8(b'S');
        put_cstr(b, b"NOTICE");
        b.put_u8(b'V');
        put_cstr(b, b"NOTICE");
        b.put_u8(b'C');
        put_cstr(b, code.as_bytes());
        b.put_u8(b'M');
        put_cstr(b, message_text.as_bytes());
        b.put_u8(0);
    });
}

// ---- frontend messages pgmux sends to servers ----

pub fn query(out: &mut BytesMut, sql: &str) {
    message(out, b'Q', |b| put_cstr(b, sql.as_bytes()));
}

/// A Parse for `name` whose body after the name (query, parameter types) is `rest`,
/// taken verbatim from the client's own Parse.
pub fn parse_with_rest(out: &mut BytesMut, name: &[u8], rest: &[u8]) {
    message(out, b'P', |b| {
        put_cstr(b, name);
        b.put_slice(rest);
    });
}

pub fn close_statement(out: &mut BytesMut, name: &[u8]) {
    message(out, b'C', |b| {
        b.put_u8(b'S');
        put_cstr(b, name);
    });
}

pub fn close_portal(out: &mut BytesMut, name: &[u8]) {
    message(out, b'C', |b| {
        b.put_u8(b'P');
        put_cstr(b, name);
    });
}

pub fn sync(out: &mut BytesMut) {
    out.put_slice(&[b'S', 0, 0, 0, 4]);
}

pub fn terminate(out: &mut BytesMut) {
    out.put_slice(&[b'X', 0, 0, 0, 4]);
}

pub fn password(out: &mut BytesMut, data: &[u8]) {
    message(out, b'p', |b| b.put_slice(data));
}

pub fn sasl_initial_response(out: &mut BytesMut, mechanism: &str, data: &[u8]) {
    message(out, b'p', |b| {
        put_cstr(b, mechanism.as_bytes());
        b.put_i32(data.len() as i32);
        b.put_slice(data);
    });
}

/// The startup packet (no tag): protocol 3.0 and `name\0value\0` pairs.
pub fn startup(out: &mut BytesMut, params: &[(&str, &str)]) {
    let start = out.len();
    out.put_i32(0);
    out.put_i32(super::startup::PROTOCOL_3_0);
    for (k, v) in params {
        put_cstr(out, k.as_bytes());
        put_cstr(out, v.as_bytes());
    }
    out.put_u8(0);
    let len = (out.len() - start) as i32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn ssl_request(out: &mut BytesMut) {
    out.put_i32(8);
    out.put_i32(super::startup::SSL_REQUEST_CODE);
}

pub fn cancel_request(out: &mut BytesMut, pid: i32, secret: i32) {
    out.put_i32(16);
    out.put_i32(super::startup::CANCEL_REQUEST_CODE);
    out.put_i32(pid);
    out.put_i32(secret);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::msg;

    #[test]
    fn error_response_round_trips_through_the_field_reader() {
        let mut out = BytesMut::new();
        PgError::error(SqlState::TOO_MANY_CONNECTIONS, "pool is full")
            .with_hint("raise pool_size")
            .encode(&mut out);
        assert_eq!(out[0], b'E');
        let len = i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        assert_eq!(len + 1, out.len());
        let fields = msg::ErrorFields::parse(&out[5..]);
        assert_eq!(fields.code, Some(&b"53300"[..]));
        assert_eq!(fields.message, Some(&b"pool is full"[..]));
        assert_eq!(fields.severity, Some(&b"ERROR"[..]));
    }

    #[test]
    fn startup_packet_has_its_length_first() {
        let mut out = BytesMut::new();
        startup(&mut out, &[("user", "u"), ("database", "d")]);
        let len = i32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize;
        assert_eq!(len, out.len());
        assert_eq!(out.last(), Some(&0));
    }

    #[test]
    fn error_renaming_changes_only_the_message() {
        let body = b"SERROR\0VERROR\0C42P05\0Mprepared statement \"pgmux_ab\" already exists\0Fprepare.c\0\0";
        let mut out = BytesMut::new();
        assert!(error_renaming(&mut out, body, b"pgmux_ab", b"s1"));
        let len = i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        assert_eq!(len + 1, out.len());
        let expected =
            b"SERROR\0VERROR\0C42P05\0Mprepared statement \"s1\" already exists\0Fprepare.c\0\0";
        assert_eq!(&out[5..], &expected[..]);
        let mut none = BytesMut::new();
        assert!(!error_renaming(&mut none, body, b"pgmux_cd", b"s1"));
        assert!(!error_renaming(&mut none, body, b"", b"s1"));
        assert!(none.is_empty());
    }

    #[test]
    fn error_restated_replaces_the_message_and_the_hint() {
        let restated = |body: &[u8]| {
            let mut out = BytesMut::new();
            error_restated(&mut out, body, "new words", "do this");
            let len = i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
            assert_eq!(len + 1, out.len());
            out[5..].to_vec()
        };
        assert_eq!(
            restated(b"SERROR\0C57014\0Mold words\0Hold hint\0Rproc\0\0"),
            b"SERROR\0C57014\0Mnew words\0Rproc\0Hdo this\0\0"
        );
        assert_eq!(
            restated(b"SERROR\0C57014\0Mold words\0\0"),
            b"SERROR\0C57014\0Mnew words\0Hdo this\0\0"
        );
    }
}
