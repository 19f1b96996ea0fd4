//! The Postgres frontend/backend protocol, version 3.0, as far as pgmux needs it.
//!
//! After the startup phase every message is `tag: u8, len: i32 (counting itself), body`
//! (Postgres docs, "Message Formats"). pgmux frames messages by peeking at that 5-byte
//! header and forwards the raw bytes unchanged; it decodes a body only when a decision
//! needs it (see [`msg`]), and builds the few messages it originates itself (see
//! [`build`]). Nothing here allocates per forwarded message.

pub mod build;
pub mod msg;
pub mod sqlstate;
pub mod startup;

pub use sqlstate::SqlState;

/// Bytes in a regular message header: the tag and the length.
pub const HEADER_LEN: usize = 5;

/// Why a byte stream cannot be framed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("message length {len} is invalid (must be at least 4)")]
    BadLength { len: i32 },
    #[error("message of {len} bytes is larger than max_message_size ({max} bytes)")]
    TooLarge { len: usize, max: usize },
}

/// The header of the first message in `buf`: its tag and its total length (header
/// included). `Ok(None)` when fewer than five bytes are buffered.
#[inline]
pub fn peek_header(buf: &[u8], max: usize) -> Result<Option<(u8, usize)>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::BadLength { len });
    }
    let total = len as usize + 1;
    if total > max {
        return Err(FrameError::TooLarge { len: total, max });
    }
    Ok(Some((buf[0], total)))
}

/// Total length of the first message in `buf` when it is completely buffered.
#[inline]
pub fn complete_frame(buf: &[u8], max: usize) -> Result<Option<(u8, usize)>, FrameError> {
    match peek_header(buf, max)? {
        Some((tag, total)) if buf.len() >= total => Ok(Some((tag, total))),
        _ => Ok(None),
    }
}

/// Frontend (client → server) message tags that pgmux looks at.
pub mod fe {
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const CLOSE: u8 = b'C';
    pub const SYNC: u8 = b'S';
    pub const FLUSH: u8 = b'H';
    pub const TERMINATE: u8 = b'X';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const PASSWORD: u8 = b'p';

    /// A message a client may send once logged in.
    #[inline]
    pub fn is_known(tag: u8) -> bool {
        matches!(
            tag,
            QUERY
                | PARSE
                | BIND
                | DESCRIBE
                | EXECUTE
                | CLOSE
                | SYNC
                | FLUSH
                | TERMINATE
                | COPY_DATA
                | COPY_DONE
                | COPY_FAIL
                | FUNCTION_CALL
        )
    }
}

/// Backend (server → client) message tags that pgmux looks at.
pub mod be {
    pub const AUTHENTICATION: u8 = b'R';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const DATA_ROW: u8 = b'D';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    pub const ROW_DESCRIPTION: u8 = b'T';
    pub const NO_DATA: u8 = b'n';
    pub const PORTAL_SUSPENDED: u8 = b's';
    pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
    pub const PARAMETER_DESCRIPTION: u8 = b't';
}

/// Transaction status carried by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    Idle,
    InTransaction,
    Failed,
}

impl TxStatus {
    pub fn from_byte(b: u8) -> Option<TxStatus> {
        match b {
            b'I' => Some(TxStatus::Idle),
            b'T' => Some(TxStatus::InTransaction),
            b'E' => Some(TxStatus::Failed),
            _ => None,
        }
    }

    pub fn as_byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InTransaction => b'T',
            TxStatus::Failed => b'E',
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_needs_five_bytes() {
        assert_eq!(peek_header(b"Q\0\0\0", 100), Ok(None));
    }

    #[test]
    fn complete_frame_waits_for_the_body() {
        let msg = b"Q\0\0\0\x09abcd\0";
        assert_eq!(complete_frame(&msg[..8], 100), Ok(None));
        assert_eq!(complete_frame(msg, 100), Ok(Some((b'Q', 10))));
    }

    #[test]
    fn negative_and_short_lengths_are_refused() {
        assert_eq!(
            peek_header(b"Q\xff\xff\xff\xff", 100),
            Err(FrameError::BadLength { len: -1 })
        );
        assert_eq!(
            peek_header(b"Q\0\0\0\x03", 100),
            Err(FrameError::BadLength { len: 3 })
        );
    }

    #[test]
    fn oversized_messages_are_refused_from_the_header() {
        assert!(matches!(
            peek_header(b"d\0\x10\0\0", 1024),
            Err(FrameError::TooLarge { .. })
        ));
    }
}
