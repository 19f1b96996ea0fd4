//! Session settings (GUCs) in force on a connection, as the statements that set them.
//!
//! A client's settings must follow it from one server connection to the next. Each
//! side keeps the settings that differ from the server's defaults, keyed by lower-case
//! name, with the statement that applies them; [`Settings::sync_sql`] gives the SQL that
//! turns one connection's settings into another's. The map is behind an `Arc` so that
//! "nothing changed" is usually a pointer comparison.

use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    map: Arc<BTreeMap<String, Arc<str>>>,
}

impl Settings {
    /// Settings from a startup packet (`options=-c ...` already expanded). Names that
    /// are not plain (possibly dotted) identifiers are dropped: they could not be set
    /// safely and Postgres would refuse them anyway.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Settings {
        let mut map = BTreeMap::new();
        for (name, value) in pairs {
            let name = name.to_ascii_lowercase();
            if is_guc_name(&name) {
                let stmt = set_statement(&name, value);
                map.insert(name, Arc::from(stmt));
            }
        }
        Settings { map: Arc::new(map) }
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.map.get(name).map(|s| &**s)
    }

    pub fn same_as(&self, other: &Settings) -> bool {
        Arc::ptr_eq(&self.map, &other.map) || self.map == other.map
    }

    pub fn set(&mut self, name: &str, statement: &str) {
        if self.get(name) != Some(statement) {
            Arc::make_mut(&mut self.map).insert(name.to_string(), Arc::from(statement));
        }
    }

    /// Records a value the server reported in a ParameterStatus.
    pub fn set_reported(&mut self, name: &str, value: &str) {
        let name = name.to_ascii_lowercase();
        if is_guc_name(&name) && !READ_ONLY_REPORTED.contains(&name.as_str()) {
            let stmt = set_statement(&name, value);
            self.set(&name, &stmt);
        }
    }

    pub fn reset(&mut self, name: &str) {
        if self.map.contains_key(name) {
            Arc::make_mut(&mut self.map).remove(name);
        }
    }

    pub fn clear(&mut self) {
        if !self.map.is_empty() {
            self.map = Arc::default();
        }
    }

    /// The SQL that makes a connection with settings `from` have settings `self`, or
    /// `None` when they already match.
    pub fn sync_sql(&self, from: &Settings) -> Option<String> {
        if self.same_as(from) {
            return None;
        }
        let mut sql = String::new();
        for (name, stmt) in self.map.iter() {
            if from.map.get(name) != Some(stmt) {
                sql.push_str(stmt);
                sql.push_str(";\n");
            }
        }
        for name in from.map.keys() {
            if !self.map.contains_key(name) {
                sql.push_str(&reset_statement(name));
                sql.push_str(";\n");
            }
        }
        (!sql.is_empty()).then_some(sql)
    }
}

/// Reported parameters no client can set: they follow from other settings (a role,
/// the server itself), so re-applying them elsewhere would fail.
const READ_ONLY_REPORTED: &[&str] = &[
    "is_superuser",
    "server_version",
    "server_encoding",
    "integer_datetimes",
    "in_hot_standby",
    "session_authorization",
];

fn is_guc_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        && !name.starts_with('.')
}

/// The statement that gives setting `name` the text `value` as Postgres reads it from
/// `options=-c name=value` or reports it in a ParameterStatus. That is
/// `set_config(name, value, false)`, not `SET name TO 'value'`: for a list such as
/// `search_path`, SET would take the one quoted literal `'a,b'` as a single schema
/// named "a,b", where `-c search_path=a,b` means the two schemas a and b.
pub fn set_statement(name: &str, value: &str) -> String {
    match name {
        "role" => format!("SET ROLE {}", quote_literal(value)),
        "session_authorization" => format!("SET SESSION AUTHORIZATION {}", quote_literal(value)),
        _ => format!(
            "SELECT pg_catalog.set_config({}, {}, false)",
            quote_literal(name),
            quote_literal(value)
        ),
    }
}

pub fn reset_statement(name: &str) -> String {
    match name {
        "role" => "RESET ROLE".to_string(),
        "session_authorization" => "RESET SESSION AUTHORIZATION".to_string(),
        _ => format!("RESET {name}"),
    }
}

pub fn quote_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 3);
    if value.contains('\\') {
        out.push('E');
    }
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_settings_need_no_sql() {
        let a = Settings::from_pairs([("application_name", "x")]);
        let b = Settings::from_pairs([("Application_Name", "x")]);
        assert_eq!(a.sync_sql(&b), None);
    }

    #[test]
    fn sync_sets_missing_and_resets_extra() {
        let client = Settings::from_pairs([("search_path", "a")]);
        let server = Settings::from_pairs([("work_mem", "1MB")]);
        let sql = client.sync_sql(&server).unwrap();
        assert!(
            sql.contains("SELECT pg_catalog.set_config('search_path', 'a', false)"),
            "{sql}"
        );
        assert!(sql.contains("RESET work_mem"), "{sql}");
    }

    #[test]
    fn values_are_quoted_and_bad_names_dropped() {
        let s = Settings::from_pairs([("application_name", "it's"), ("x; drop", "1")]);
        assert_eq!(
            s.get("application_name"),
            Some("SELECT pg_catalog.set_config('application_name', 'it''s', false)")
        );
        assert_eq!(s.get("x; drop"), None);
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
    }
}

#[cfg(test)]
mod read_only_tests {
    use super::*;

    #[test]
    fn reported_read_only_parameters_are_not_tracked() {
        let mut s = Settings::default();
        s.set_reported("is_superuser", "on");
        s.set_reported("TimeZone", "UTC");
        assert_eq!(s.get("is_superuser"), None);
        assert!(s.get("timezone").is_some());
    }
}
