//! Readers for the message bodies pgmux must look inside. Each takes the body (the bytes
//! after the 5-byte header) and borrows from it; none allocates. Malformed bodies give
//! `None`, which callers turn into a protocol violation.

/// Splits a NUL-terminated string off the front of `b`.
#[inline]
pub fn cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = memchr::memchr(0, b)?;
    Some((&b[..nul], &b[nul + 1..]))
}

/// Query: the SQL text (without its terminating NUL).
#[inline]
pub fn query_text(body: &[u8]) -> Option<&[u8]> {
    cstr(body).map(|(sql, _)| sql)
}

/// Parse: statement name, then the rest (query text, parameter type OIDs) untouched.
pub struct Parse<'a> {
    pub name: &'a [u8],
    pub rest: &'a [u8],
    pub query: &'a [u8],
}

impl<'a> Parse<'a> {
    pub fn decode(body: &'a [u8]) -> Option<Parse<'a>> {
        let (name, rest) = cstr(body)?;
        let (query, types) = cstr(rest)?;
        if types.len() < 2 {
            return None;
        }
        // Counts are unsigned on the wire, as Postgres reads them: up to 65535.
        let n = usize::from(u16::from_be_bytes([types[0], types[1]]));
        if types.len() != 2 + 4 * n {
            return None;
        }
        Some(Parse { name, rest, query })
    }
}

/// Bind: portal name, statement name, then the rest (formats, values) untouched.
pub struct Bind<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    pub rest: &'a [u8],
}

impl<'a> Bind<'a> {
    pub fn decode(body: &'a [u8]) -> Option<Bind<'a>> {
        let (portal, rest) = cstr(body)?;
        let (statement, rest) = cstr(rest)?;
        Some(Bind {
            portal,
            statement,
            rest,
        })
    }
}

impl<'a> Bind<'a> {
    /// Parameter `index` (0-based): its format code (0 text, 1 binary) and its value,
    /// `None` for NULL.
    pub fn param(&self, index: usize) -> Option<(i16, Option<&'a [u8]>)> {
        let i16_at = |b: &[u8], at: usize| -> Option<i16> {
            Some(i16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
        };
        // Counts are unsigned on the wire (up to 65535); format codes are signed.
        let count_at = |b: &[u8], at: usize| -> Option<usize> {
            Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?).into())
        };
        let r = self.rest;
        let nfmt = count_at(r, 0)?;
        let format = match nfmt {
            0 => 0,
            1 => i16_at(r, 2)?,
            _ => i16_at(r, 2 + 2 * index)?,
        };
        let mut at = 2 + 2 * nfmt;
        let nparams = count_at(r, at)?;
        if index >= nparams {
            return None;
        }
        at += 2;
        for i in 0..=index {
            let len = i32::from_be_bytes(r.get(at..at + 4)?.try_into().ok()?);
            at += 4;
            let value = if len < 0 {
                None
            } else {
                let v = r.get(at..at + len as usize)?;
                at += len as usize;
                Some(v)
            };
            if i == index {
                return Some((format, value));
            }
        }
        None
    }
}

/// Describe and Close share a shape: `'S'` (statement) or `'P'` (portal), then a name.
pub struct Target<'a> {
    pub kind: u8,
    pub name: &'a [u8],
}

impl<'a> Target<'a> {
    pub fn decode(body: &'a [u8]) -> Option<Target<'a>> {
        let (&kind, rest) = body.split_first()?;
        if kind != b'S' && kind != b'P' {
            return None;
        }
        let (name, tail) = cstr(rest)?;
        if !tail.is_empty() {
            return None;
        }
        Some(Target { kind, name })
    }
}

/// ParameterStatus: name and value.
#[inline]
pub fn parameter_status(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let (name, rest) = cstr(body)?;
    let (value, _) = cstr(rest)?;
    Some((name, value))
}

/// BackendKeyData: process id and secret key.
#[inline]
pub fn backend_key_data(body: &[u8]) -> Option<(i32, i32)> {
    if body.len() != 8 {
        return None;
    }
    Some((
        i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
        i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
    ))
}

/// CommandComplete: the command tag, e.g. `SELECT 1`, `ROLLBACK`.
#[inline]
pub fn command_tag(body: &[u8]) -> Option<&[u8]> {
    cstr(body).map(|(t, _)| t)
}

/// The fields of an ErrorResponse or NoticeResponse that pgmux uses.
#[derive(Debug, Default)]
pub struct ErrorFields<'a> {
    pub severity: Option<&'a [u8]>,
    pub code: Option<&'a [u8]>,
    pub message: Option<&'a [u8]>,
}

impl<'a> ErrorFields<'a> {
    pub fn parse(mut body: &'a [u8]) -> ErrorFields<'a> {
        let mut f = ErrorFields::default();
        while let Some((&kind, rest)) = body.split_first() {
            if kind == 0 {
                break;
            }
            let Some((value, rest)) = cstr(rest) else {
                break;
            };
            match kind {
                b'V' => f.severity = Some(value),
                b'S' if f.severity.is_none() => f.severity = Some(value),
                b'C' => f.code = Some(value),
                b'M' => f.message = Some(value),
                _ => {}
            }
            body = rest;
        }
        f
    }

    pub fn message_lossy(&self) -> String {
        String::from_utf8_lossy(self.message.unwrap_or_default()).into_owned()
    }

    pub fn code_str(&self) -> &str {
        std::str::from_utf8(self.code.unwrap_or_default()).unwrap_or("XX000")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_keeps_the_query_and_types_as_one_slice() {
        let body = b"s1\0select $1\0\0\x01\0\0\0\x17";
        let p = Parse::decode(body).unwrap();
        assert_eq!(p.name, b"s1");
        assert_eq!(p.query, b"select $1");
        assert_eq!(p.rest, &body[3..]);
    }

    #[test]
    fn parse_with_a_wrong_type_count_is_malformed() {
        assert!(Parse::decode(b"s\0q\0\0\x02\0\0\0\x17").is_none());
        assert!(Parse::decode(b"s\0q\0").is_none());
    }

    /// Postgres reads the counts unsigned: a statement may have 65535 parameters.
    #[test]
    fn counts_up_to_65535() {
        let mut body = b"s\0q\0\xff\xff".to_vec();
        body.extend(std::iter::repeat_n(0u8, 4 * 65535));
        assert!(Parse::decode(&body).is_some());

        let mut bind = b"\0s\0\0\x01\0\x01\xff\xff".to_vec();
        for i in 0..65535u32 {
            bind.extend_from_slice(&4i32.to_be_bytes());
            bind.extend_from_slice(&i.to_be_bytes());
        }
        bind.extend_from_slice(&[0, 0]);
        let b = Bind::decode(&bind).unwrap();
        assert_eq!(b.param(65534), Some((1, Some(&65534u32.to_be_bytes()[..]))));
        assert_eq!(b.param(65535), None);
    }

    #[test]
    fn bind_names() {
        let b = Bind::decode(b"p\0s1\0\0\0\0\0\0\0").unwrap();
        assert_eq!(b.portal, b"p");
        assert_eq!(b.statement, b"s1");
    }

    #[test]
    fn close_target_must_be_s_or_p() {
        assert!(Target::decode(b"Sname\0").is_some());
        assert!(Target::decode(b"Xname\0").is_none());
        assert!(Target::decode(b"Sname").is_none());
    }
}
