//! The untagged first packet of a connection: StartupMessage, SSLRequest,
//! GSSENCRequest or CancelRequest (Postgres docs, "Start-up" and "Canceling Requests in
//! Progress"). All four begin with a length and a 32-bit code.

pub const PROTOCOL_3_0: i32 = 196_608;
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;

/// Postgres itself refuses startup packets above 10000 bytes (MAX_STARTUP_PACKET_LENGTH).
pub const MAX_STARTUP_LEN: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstPacket {
    Startup(StartupParams),
    SslRequest,
    GssEncRequest,
    Cancel { pid: i32, secret: i32 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    #[error("invalid startup packet length {0}")]
    BadLength(i32),
    #[error("unsupported frontend protocol {major}.{minor}: pgmux speaks 3.0")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("malformed startup packet: {0}")]
    Malformed(&'static str),
}

/// The parameters of a StartupMessage, in the order the client sent them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartupParams {
    pub pairs: Vec<(String, String)>,
    /// The protocol minor version the client asked for (pgmux speaks 3.0).
    pub minor_version: u16,
}

impl StartupParams {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Protocol options (`_pq_.*`) the client asked for; pgmux supports none.
    pub fn protocol_options(&self) -> impl Iterator<Item = &str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k.starts_with("_pq_."))
            .map(|(k, _)| k.as_str())
    }

    pub fn user(&self) -> Option<&str> {
        self.get("user")
    }

    /// The database defaults to the user name, as in Postgres, also when it is given
    /// empty.
    pub fn database(&self) -> Option<&str> {
        self.get("database")
            .filter(|d| !d.is_empty())
            .or_else(|| self.user())
    }

    /// Whether the client asked for a replication connection (`replication=database`,
    /// or a true boolean): a walsender speaks its own commands, which a pooled session
    /// cannot serve. `None` for a value Postgres would refuse, which is neither.
    pub fn wants_replication(&self) -> Option<bool> {
        match self.get("replication") {
            None => Some(false),
            // Case-sensitive, as in Postgres' startup code.
            Some("database") => Some(true),
            Some(v) => parse_bool(v),
        }
    }

    /// Session settings the client asked for: every parameter except the ones that
    /// select the connection, with `options=-c name=value` (and `--name=value`) expanded.
    /// One entry a setting, with the value Postgres would keep: it applies `options`
    /// first and the other parameters after them, wherever `options` stands in the
    /// packet (drivers such as Go's lib/pq send their parameters in random order), and
    /// a later value over an earlier one.
    pub fn session_settings(&self) -> Vec<(String, String)> {
        let options = self
            .pairs
            .iter()
            .filter(|(k, _)| k == "options")
            .flat_map(|(_, v)| parse_options(v));
        let parameters = self
            .pairs
            .iter()
            .filter(|(k, _)| {
                !matches!(k.as_str(), "user" | "database" | "replication" | "options")
                    && !k.starts_with("_pq_.")
            })
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()));
        let mut out: Vec<(String, String)> = Vec::new();
        for (name, value) in options.chain(parameters) {
            match out.iter_mut().find(|(k, _)| k.eq_ignore_ascii_case(&name)) {
                Some(kept) => kept.1 = value,
                None => out.push((name, value)),
            }
        }
        out
    }

    /// What Postgres would refuse in the `options` parameter (FATAL 42601, after the
    /// login): a setting without a value, or a word that is no switch at all.
    pub fn options_error(&self) -> Option<String> {
        let mut options = self.pairs.iter().filter(|(k, _)| k == "options");
        options.find_map(|(_, v)| options_error(v))
    }
}

fn options_error(options: &str) -> Option<String> {
    let words = split_options(options);
    let mut it = words.iter();
    while let Some(w) = it.next() {
        if w == "--" {
            // getopt's end of the switches: whatever follows is an argument.
            return it
                .next()
                .map(|w| format!("invalid command-line argument for server process: {w}"));
        }
        let (shown, setting) = if w == "-c" {
            match it.next() {
                Some(s) => (format!("-c {s}"), s.as_str()),
                None => return Some("invalid command-line argument for server process: -c".into()),
            }
        } else if let Some(s) = w.strip_prefix("--") {
            (w.clone(), s)
        } else if let Some(s) = w.strip_prefix("-c") {
            (format!("-c {s}"), s)
        } else if let Some(flag) = w.strip_prefix('-').filter(|f| !f.is_empty()) {
            // Postgres' other switches (getopt's "B:bC:D:d:EeFf:h:ijk:lN:nOPp:r:S:sTt:v:W:"),
            // left alone here: those that take an argument take the next word.
            if flag.len() == 1 && "BCDdfhkNprStvW".contains(flag) {
                it.next();
            }
            continue;
        } else {
            return Some(format!(
                "invalid command-line argument for server process: {w}"
            ));
        };
        if !setting.contains('=') {
            return Some(format!("{shown} requires a value"));
        }
    }
    None
}

/// Postgres keeps `application_name` to an identifier's length, NAMEDATALEN - 1
/// bytes, cut at a character boundary, and says so in a notice; then it replaces each
/// byte that is not printable ASCII with `?`. The same here, since pgmux reports the
/// value at login. Returns the name as given and as cut, when it was cut.
pub fn clean_application_name(settings: &mut [(String, String)]) -> Option<(String, String)> {
    const MAX: usize = 63;
    let (_, value) = settings.iter_mut().find(|(k, _)| k == "application_name")?;
    let mut clipped = None;
    if value.len() > MAX {
        let mut end = MAX;
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        let given = value.clone();
        value.truncate(end);
        clipped = Some((given, value.clone()));
    }
    if !value.bytes().all(|b| (32..=126).contains(&b)) {
        *value = value
            .bytes()
            .map(|b| {
                if (32..=126).contains(&b) {
                    b as char
                } else {
                    '?'
                }
            })
            .collect();
    }
    clipped
}

/// Expands a libpq `options` string: `-c name=value`, `-cname=value` and
/// `--name=value`, with backslash escaping spaces as Postgres' pg_split_opts does.
pub fn parse_options(options: &str) -> Vec<(String, String)> {
    let words = split_options(options);
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next()
        } else if let Some(s) = w.strip_prefix("-c") {
            Some(s.to_string())
        } else {
            w.strip_prefix("--").map(str::to_string)
        };
        if let Some(s) = setting {
            if let Some((name, value)) = s.split_once('=') {
                out.push((
                    name.replace('-', "_").to_ascii_lowercase(),
                    value.to_string(),
                ));
            }
        }
    }
    out
}

/// The words of an `options` string, split at unescaped whitespace.
fn split_options(options: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    let mut in_word = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                    in_word = true;
                }
            }
            c if c.is_ascii_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// Reads the length of the first packet from its first four bytes.
pub fn packet_len(head: [u8; 4]) -> Result<usize, StartupError> {
    let len = i32::from_be_bytes(head);
    if len < 8 || len as usize > MAX_STARTUP_LEN {
        return Err(StartupError::BadLength(len));
    }
    Ok(len as usize)
}

/// A boolean as Postgres reads one (`parse_bool`): any case, any unambiguous prefix
/// of `true`, `false`, `yes`, `no`, and `on`, `off`, `1`, `0` in full.
fn parse_bool(v: &str) -> Option<bool> {
    let l = v.to_ascii_lowercase();
    let prefix_of = |word: &str, min: usize| l.len() >= min && word.starts_with(l.as_str());
    if prefix_of("true", 1) || prefix_of("yes", 1) || l == "1" || l == "on" {
        Some(true)
    } else if prefix_of("false", 1) || prefix_of("no", 1) || l == "0" || prefix_of("off", 2) {
        Some(false)
    } else {
        None
    }
}

/// Decodes a whole first packet (length prefix included).
pub fn parse_first_packet(packet: &[u8]) -> Result<FirstPacket, StartupError> {
    if packet.len() < 8 {
        return Err(StartupError::Malformed("shorter than 8 bytes"));
    }
    let code = i32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    let body = &packet[8..];
    match code {
        SSL_REQUEST_CODE if body.is_empty() => Ok(FirstPacket::SslRequest),
        GSSENC_REQUEST_CODE if body.is_empty() => Ok(FirstPacket::GssEncRequest),
        CANCEL_REQUEST_CODE if body.len() == 8 => Ok(FirstPacket::Cancel {
            pid: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
            secret: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
        }),
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE | CANCEL_REQUEST_CODE => Err(
            StartupError::Malformed("request code with a body of the wrong size"),
        ),
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major != 3 {
                return Err(StartupError::UnsupportedProtocol { major, minor });
            }
            parse_params(body).map(|mut p| {
                p.minor_version = minor;
                FirstPacket::Startup(p)
            })
        }
    }
}

fn parse_params(mut body: &[u8]) -> Result<StartupParams, StartupError> {
    let mut pairs = Vec::new();
    loop {
        let Some((name, rest)) = super::msg::cstr(body) else {
            return Err(StartupError::Malformed("parameter list is not terminated"));
        };
        if name.is_empty() {
            if !rest.is_empty() {
                return Err(StartupError::Malformed("bytes after the parameter list"));
            }
            break;
        }
        let Some((value, rest)) = super::msg::cstr(rest) else {
            return Err(StartupError::Malformed("parameter without a value"));
        };
        let name = std::str::from_utf8(name)
            .map_err(|_| StartupError::Malformed("parameter name is not UTF-8"))?;
        let value = String::from_utf8_lossy(value).into_owned();
        pairs.push((name.to_string(), value));
        body = rest;
    }
    Ok(StartupParams {
        pairs,
        minor_version: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::build;
    use bytes::BytesMut;

    #[test]
    fn a_long_application_name_is_clipped_at_a_character_boundary_then_cleaned() {
        let long = "x".repeat(65);
        let mut s = vec![("application_name".to_string(), long.clone())];
        let (given, kept) = clean_application_name(&mut s).expect("clipped");
        assert_eq!((given.as_str(), kept.len()), (long.as_str(), 63));
        assert_eq!(s[0].1, kept);
        // 'é' is two bytes: the 63rd byte would split the 32nd. The notice shows the
        // name as cut; the value kept has a '?' for each byte that is not ASCII.
        let mut s = vec![("application_name".to_string(), "é".repeat(40))];
        assert_eq!(clean_application_name(&mut s).unwrap().1, "é".repeat(31));
        assert_eq!(s[0].1, "?".repeat(62));
        let mut s = vec![("application_name".to_string(), "x".repeat(63))];
        assert_eq!(clean_application_name(&mut s), None);
        let mut s = vec![("application_name".to_string(), "caf\u{e9}\u{1}x".into())];
        assert_eq!(clean_application_name(&mut s), None);
        assert_eq!(s[0].1, "caf???x");
    }

    #[test]
    fn startup_round_trip() {
        let mut b = BytesMut::new();
        build::startup(&mut b, &[("user", "app"), ("options", "-c search_path=x")]);
        let FirstPacket::Startup(p) = parse_first_packet(&b).unwrap() else {
            panic!("not a startup packet");
        };
        assert_eq!(p.user(), Some("app"));
        assert_eq!(p.database(), Some("app"));
        let mut b = BytesMut::new();
        build::startup(&mut b, &[("user", "app"), ("database", "")]);
        let FirstPacket::Startup(empty) = parse_first_packet(&b).unwrap() else {
            panic!("not a startup packet");
        };
        assert_eq!(empty.database(), Some("app"), "an empty name is the user's");
        assert_eq!(
            p.session_settings(),
            vec![("search_path".to_string(), "x".to_string())]
        );
    }

    #[test]
    fn parameters_override_options_wherever_options_stand() {
        let mut b = BytesMut::new();
        build::startup(
            &mut b,
            &[
                ("user", "app"),
                ("client_encoding", "UTF8"),
                (
                    "options",
                    "-c client_encoding=SQL_ASCII -c work_mem=1MB -c Work_Mem=2MB",
                ),
                ("DateStyle", "ISO, DMY"),
                ("datestyle", "ISO, MDY"),
            ],
        );
        let FirstPacket::Startup(p) = parse_first_packet(&b).unwrap() else {
            panic!("not a startup packet");
        };
        let pairs = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            p.session_settings(),
            pairs(&[
                ("client_encoding", "UTF8"),
                ("work_mem", "2MB"),
                ("datestyle", "ISO, MDY"),
            ])
        );
    }

    #[test]
    fn options_postgres_would_refuse() {
        for (options, error) in [
            (
                "-c",
                Some("invalid command-line argument for server process: -c"),
            ),
            (
                "-c a=1 -c",
                Some("invalid command-line argument for server process: -c"),
            ),
            ("-c work_mem", Some("-c work_mem requires a value")),
            ("-cwork_mem", Some("-c work_mem requires a value")),
            ("--work-mem", Some("--work-mem requires a value")),
            (
                "search_path=x",
                Some("invalid command-line argument for server process: search_path=x"),
            ),
            (r"-c a=1 -cb=2 --c-d=3 -c e=x\ y", None),
            ("-e -c a=1", None),
            ("-B 100 -c a=1", None),
            ("-c a=1 --", None),
            (
                "-- -c a=1",
                Some("invalid command-line argument for server process: -c"),
            ),
            (
                "-",
                Some("invalid command-line argument for server process: -"),
            ),
            ("", None),
        ] {
            assert_eq!(options_error(options).as_deref(), error, "{options:?}");
        }
    }

    #[test]
    fn options_forms() {
        assert_eq!(
            parse_options(r"-c a=1 -cb=2 --c-d=3 -c e=x\ y"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "2".into()),
                ("c_d".into(), "3".into()),
                ("e".into(), "x y".into())
            ]
        );
    }

    #[test]
    fn cancel_and_ssl_requests() {
        let mut b = BytesMut::new();
        build::cancel_request(&mut b, 7, 9);
        assert_eq!(
            parse_first_packet(&b),
            Ok(FirstPacket::Cancel { pid: 7, secret: 9 })
        );
        let mut b = BytesMut::new();
        build::ssl_request(&mut b);
        assert_eq!(parse_first_packet(&b), Ok(FirstPacket::SslRequest));
    }

    #[test]
    fn bad_lengths_and_versions() {
        assert!(packet_len([0, 0, 0, 4]).is_err());
        assert!(packet_len([0, 1, 0, 0]).is_err());
        let mut b = BytesMut::new();
        b.extend_from_slice(&[0, 0, 0, 9, 0, 2, 0, 0, 0]);
        assert!(matches!(
            parse_first_packet(&b),
            Err(StartupError::UnsupportedProtocol { major: 2, .. })
        ));
    }

    #[test]
    fn booleans_read_as_postgres_reads_them() {
        for v in ["t", "TRUE", "tr", "y", "Yes", "on", "ON", "1"] {
            assert_eq!(parse_bool(v), Some(true), "{v}");
        }
        for v in ["f", "False", "n", "NO", "of", "off", "0"] {
            assert_eq!(parse_bool(v), Some(false), "{v}");
        }
        for v in ["", "o", "truee", "2", "database", "onn", " true"] {
            assert_eq!(parse_bool(v), None, "{v:?}");
        }
    }
}
