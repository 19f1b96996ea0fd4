//! `set_config(name, value, is_local)` calls: one with `is_local` false changes a
//! session setting as `SET` does, so the setting must follow the client onto every
//! server connection it gets, and must never stay behind for the next client (the
//! usual way to hand a tenant id to row-level security policies).

use super::lex::Tokens;
use super::{Effects, PinReason, SetOp};
use crate::server::settings::set_statement;

/// Adds the effects of every `set_config` call in `stmt`. A session-wide call whose
/// arguments are literals becomes a tracked setting; one pgmux cannot read (a
/// parameter, an expression) pins the client, as the value it sets is unknown.
pub(super) fn set_config_calls(stmt: &[u8], fx: &mut Effects) {
    let tokens: Vec<&[u8]> = Tokens::new(stmt).collect();
    let mut i = 0;
    while i < tokens.len() {
        if !(tokens[i].eq_ignore_ascii_case(b"set_config") && tokens.get(i + 1) == Some(&&b"("[..]))
        {
            i += 1;
            continue;
        }
        let (args, end) = arguments(&tokens[i + 2..]);
        i += 2 + end;
        match call(&args) {
            Call::Local => {}
            Call::Session { name, value } => {
                if name == "search_path" && value.to_ascii_lowercase().contains("pg_temp") {
                    // Unqualified CREATEs now make temporary objects.
                    fx.pin.get_or_insert(PinReason::TempTable);
                }
                let statement = set_statement(&name, &value);
                fx.sets.push((0, SetOp::Set { name, statement }));
            }
            Call::Unknown => {
                fx.pin.get_or_insert(PinReason::SetConfig);
            }
        }
    }
}

enum Call {
    Local,
    Session { name: String, value: String },
    Unknown,
}

fn call(args: &[&[&[u8]]]) -> Call {
    let [name, value, local] = args else {
        return Call::Unknown;
    };
    match boolean(local) {
        Some(true) => Call::Local,
        Some(false) => match (literal(name), literal(value)) {
            (Some(name), Some(value)) if is_setting_name(&name) => Call::Session {
                name: name.to_ascii_lowercase(),
                value,
            },
            _ => Call::Unknown,
        },
        None => Call::Unknown,
    }
}

/// The tokens of each top-level argument, and how many tokens the list took with its
/// closing parenthesis (all of them when it is not closed).
fn arguments<'t, 'a>(tokens: &'t [&'a [u8]]) -> (Vec<&'t [&'a [u8]]>, usize) {
    let mut args = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (k, t) in tokens.iter().enumerate() {
        match *t {
            b"(" | b"[" => depth += 1,
            b")" if depth == 0 => {
                args.push(&tokens[start..k]);
                return (args, k + 1);
            }
            b")" | b"]" => depth = depth.saturating_sub(1),
            b"," if depth == 0 => {
                args.push(&tokens[start..k]);
                start = k + 1;
            }
            _ => {}
        }
    }
    (Vec::new(), tokens.len())
}

/// A standard string literal, maybe cast (`'x'`, `'x'::text`), as its value.
fn literal(arg: &[&[u8]]) -> Option<String> {
    let lit = match arg {
        [lit] | [lit, b"::", _] => *lit,
        _ => return None,
    };
    let inner = lit.strip_prefix(b"'")?.strip_suffix(b"'")?;
    let text = std::str::from_utf8(inner).ok()?;
    Some(text.replace("''", "'"))
}

/// `true`/`false`, or a string Postgres reads as a boolean (its common spellings).
fn boolean(arg: &[&[u8]]) -> Option<bool> {
    let word = match arg {
        [w] | [w, b"::", _] => *w,
        _ => return None,
    };
    let text = match literal(&[word]) {
        Some(s) => s,
        None => std::str::from_utf8(word).ok()?.to_owned(),
    };
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "t" | "on" | "yes" | "y" | "1" => Some(true),
        "false" | "f" | "off" | "no" | "n" | "0" => Some(false),
        _ => None,
    }
}

fn is_setting_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::super::{analyze, PinReason, SetOp};

    fn sets(sql: &str) -> Vec<(String, String)> {
        analyze(sql.as_bytes())
            .sets
            .into_iter()
            .map(|(_, op)| match op {
                SetOp::Set { name, statement } => (name, statement),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_session_wide_call_with_literals_is_a_setting() {
        assert_eq!(
            sets("select set_config('App.Tenant', '42', false)"),
            [(
                "app.tenant".to_string(),
                "SELECT pg_catalog.set_config('app.tenant', '42', false)".to_string()
            )]
        );
        assert_eq!(
            sets("SELECT pg_catalog.set_config('search_path', 'a, b'::text, 'off')")[0].1,
            "SELECT pg_catalog.set_config('search_path', 'a, b', false)"
        );
        let two =
            sets("select set_config('a.x', 'it''s', false), set_config('a.y', '', 'f') from t");
        assert_eq!(two.len(), 2);
        assert_eq!(two[0].0, "a.x");
        assert!(two[0].1.contains("'it''s'"), "{}", two[0].1);
        assert_eq!(analyze(b"select set_config('a.x', '1', false)").pin, None);
    }

    #[test]
    fn a_local_call_changes_nothing_after_its_transaction() {
        for sql in [
            "select set_config('a.x', '1', true)",
            "select set_config('a.x', $1, true)",
            "SELECT set_config('request.jwt.claims', $1, 'on')",
        ] {
            assert!(analyze(sql.as_bytes()).is_empty(), "{sql}");
        }
    }

    #[test]
    fn a_call_pgmux_cannot_read_pins() {
        for sql in [
            "select set_config('a.x', $1, false)",
            "select set_config($1, $2, $3)",
            "select set_config('a.x', 'v' || 'w', false)",
            "select set_config('a.x', E'\\\\x', false)",
            "select set_config('a.x', '1', is_local)",
            "select set_config('a x', '1', false)",
            "select set_config('a.x', '1')",
        ] {
            assert_eq!(
                analyze(sql.as_bytes()).pin,
                Some(PinReason::SetConfig),
                "{sql}"
            );
        }
    }

    #[test]
    fn pg_temp_in_search_path_pins_as_a_temporary_table() {
        let fx = analyze(b"select set_config('search_path', 'pg_temp, public', false)");
        assert_eq!(fx.pin, Some(PinReason::TempTable));
        assert_eq!(fx.sets.len(), 1);
    }

    #[test]
    fn text_that_only_mentions_set_config_is_no_call() {
        for sql in [
            "select 'set_config(x)' as s",
            "select * from set_config_log",
            "-- set_config(\nselect 1",
        ] {
            assert!(analyze(sql.as_bytes()).is_empty(), "{sql}");
        }
    }
}
