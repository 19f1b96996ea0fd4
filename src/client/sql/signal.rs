//! Recognising a statement that is one call of `pg_cancel_backend` or
//! `pg_terminate_backend` (see `client::session::signal`).

use super::lex::{Tokens, Word};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalKind {
    Cancel,
    Terminate,
}

/// The process id a signal call names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalArg {
    Pid(i32),
    /// `$n`, 1-based, as written.
    Param(u16),
}

/// A statement that is one call of a backend-signalling function: the process id a
/// driver reports for its connection is pgmux's, not a server's, so pgmux acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal {
    pub kind: SignalKind,
    pub arg: SignalArg,
}

/// `SELECT [pg_catalog.]pg_cancel_backend(ARG)` or `pg_terminate_backend(ARG[, …])`,
/// with at most an alias after it; ARG an integer literal or `$n`, maybe cast.
pub(super) fn signal_call(stmt: &[u8]) -> Option<Signal> {
    let mut t = Tokens::new(stmt);
    if !t.next()?.eq_ignore_ascii_case(b"select") {
        return None;
    }
    let mut func = t.next()?;
    if func.eq_ignore_ascii_case(b"pg_catalog") {
        if t.next()? != b"." {
            return None;
        }
        func = t.next()?;
    }
    let kind = if func.eq_ignore_ascii_case(b"pg_cancel_backend") {
        SignalKind::Cancel
    } else if func.eq_ignore_ascii_case(b"pg_terminate_backend") {
        SignalKind::Terminate
    } else {
        return None;
    };
    if t.next()? != b"(" {
        return None;
    }
    let arg = t.next()?;
    let arg = if let Some(n) = arg.strip_prefix(b"$") {
        SignalArg::Param(std::str::from_utf8(n).ok()?.parse().ok()?)
    } else {
        SignalArg::Pid(std::str::from_utf8(arg).ok()?.parse().ok()?)
    };
    let mut next = t.next()?;
    if next == b"::" {
        let ty = t.next()?;
        let int = [&b"int"[..], b"int4", b"integer", b"int8", b"bigint"];
        if !int.iter().any(|i| ty.eq_ignore_ascii_case(i)) {
            return None;
        }
        next = t.next()?;
    }
    match next {
        // pg_terminate_backend's timeout: whatever it is, the call is the same.
        b"," => {
            let mut depth = 0;
            loop {
                match t.next()? {
                    b"(" => depth += 1,
                    b")" if depth == 0 => break,
                    b")" => depth -= 1,
                    _ => {}
                }
            }
        }
        b")" => {}
        _ => return None,
    }
    // An alias, and nothing else.
    let mut rest = t.by_ref().take(3);
    match (rest.next(), rest.next(), rest.next()) {
        (None, _, _) => {}
        (Some(a), None, _) if Word(a).is_plain_name() => {}
        (Some(a), Some(n), None) if a.eq_ignore_ascii_case(b"as") && Word(n).is_plain_name() => {}
        _ => return None,
    }
    Some(Signal { kind, arg })
}
