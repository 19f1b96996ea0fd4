//! Session settings (GUCs) in force on a connection, as the statements that set them.
//!
//! A client's settings must follow it from one server connection to the next. Each
//! side keeps the settings that differ from the server's defaults, keyed by lower-case
//! name, with the statement that applies them; [`Settings::sync_sql`] gives the SQL that
//! turns one connection's settings into another's. The map is behind an `Arc` so that
//! "nothing changed" is usually a pointer comparison.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
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

    /// These settings but `application_name`, which Postgres takes whatever its value
    /// (it was cleaned at login as Postgres would).
    fn without_free_text(&self) -> Settings {
        if !self.map.contains_key("application_name") {
            return self.clone();
        }
        let mut next = self.clone();
        next.reset("application_name");
        next
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.map.get(name).map(|s| &**s)
    }

    /// The value `name` has, when it was set from a value (a startup parameter, a
    /// reported value) rather than by the client's own statement.
    pub fn value(&self, name: &str) -> Option<String> {
        let stmt = self.get(name)?;
        let literal = match name {
            "role" => stmt.strip_prefix("SET ROLE ")?,
            "session_authorization" => stmt.strip_prefix("SET SESSION AUTHORIZATION ")?,
            _ => {
                let args = stmt.strip_prefix("SELECT pg_catalog.set_config(")?;
                let (_, rest) = unquote_literal(args)?;
                rest.strip_prefix(", ")?
            }
        };
        unquote_literal(literal).map(|(value, _)| value)
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

    /// What `RESET ALL` leaves of these settings: `startup`'s, except the identity
    /// (`session_authorization`, `role`), which Postgres' RESET ALL does not touch.
    pub fn after_reset_all(&self, startup: &Settings) -> Settings {
        let mut next = startup.clone();
        for name in IDENTITY {
            match self.get(name) {
                Some(stmt) => next.set(name, stmt),
                None => next.reset(name),
            }
        }
        next
    }

    /// The SQL that makes a connection with settings `from` have settings `self`, or
    /// `None` when they already match.
    ///
    /// The identity goes back to the login's first, and the client's is taken last,
    /// session authorization before role: setting or resetting the session
    /// authorization drops a `SET ROLE`, and the identity decides which settings may
    /// be changed (the login user may change what the client could).
    pub fn sync_sql(&self, from: &Settings) -> Option<String> {
        if self.same_as(from) {
            return None;
        }
        let identity_differs = IDENTITY
            .iter()
            .any(|name| self.map.get(*name) != from.map.get(*name));
        let mut sql = String::new();
        let mut push = |stmt: &str| {
            sql.push_str(stmt);
            sql.push_str(";\n");
        };
        if identity_differs {
            for name in IDENTITY.iter().filter(|n| from.map.contains_key(**n)) {
                push(&reset_statement(name));
            }
        }
        for (name, stmt) in self.map.iter() {
            if !IDENTITY.contains(&name.as_str()) && from.map.get(name) != Some(stmt) {
                push(stmt);
            }
        }
        for name in from.map.keys() {
            if !IDENTITY.contains(&name.as_str()) && !self.map.contains_key(name) {
                push(&reset_statement(name));
            }
        }
        if identity_differs {
            for name in IDENTITY {
                if let Some(stmt) = self.map.get(name) {
                    push(stmt);
                }
            }
        }
        (!sql.is_empty()).then_some(sql)
    }
}

/// One shared copy of each distinct set of startup settings. The clients of an
/// application usually log in with the same parameters, and every idle client would
/// otherwise hold its own copy of them (a B-tree node, about half a kilobyte); shared,
/// they also compare equal by pointer at each checkout ([`Settings::same_as`]).
#[derive(Default)]
pub struct Interner {
    inner: Mutex<Interned>,
}

#[derive(Default)]
struct Interned {
    set: HashSet<Settings>,
    /// Size at which copies that no client or connection holds any more are dropped.
    sweep_at: usize,
    /// The last login's startup pairs and their settings: the next login of the same
    /// application sends the same pairs, and is spared building and hashing them.
    last: Option<(Vec<(String, String)>, Settings)>,
}

/// Most distinct sets a pool remembers as taken; past it the memory starts over, and
/// a login with a forgotten set is checked again.
const MAX_TAKEN: usize = 1024;

impl Interner {
    /// The shared copy of the settings a login's startup `pairs` make
    /// ([`Settings::from_pairs`]).
    pub fn intern_pairs(&self, pairs: &[(String, String)]) -> Settings {
        if let Some((last, settings)) = &self.inner.lock().last {
            if last.as_slice() == pairs {
                return settings.clone();
            }
        }
        let settings = self.intern(Settings::from_pairs(
            pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        ));
        self.inner.lock().last = Some((pairs.to_vec(), settings.clone()));
        settings
    }

    /// The shared copy of `settings`.
    pub fn intern(&self, settings: Settings) -> Settings {
        let mut inner = self.inner.lock();
        if let Some(shared) = inner.set.get(&settings) {
            return shared.clone();
        }
        if inner.set.len() >= inner.sweep_at {
            inner.set.retain(|s| Arc::strong_count(&s.map) > 1);
            inner.sweep_at = (inner.set.len() * 2).max(64);
        }
        inner.set.insert(settings.clone());
        settings
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().set.len()
    }
}

/// The login settings a pool's servers have taken. Postgres refuses a login whose
/// startup parameters it cannot apply, and a client should hear that at login, not as
/// a notice on every later statement; so a login with settings not known here has a
/// server try them first. `application_name` is left out: any value is taken. What
/// one user may set another may not, hence one memory per pool.
#[derive(Default)]
pub struct TakenSettings {
    taken: Mutex<HashSet<Settings>>,
}

impl TakenSettings {
    /// Whether a login with `settings` should first have a server try them.
    pub fn needs_check(&self, settings: &Settings) -> bool {
        // The usual login (a driver's application_name at most) copies nothing.
        if settings.map.keys().all(|k| k == "application_name") {
            return false;
        }
        let key = settings.without_free_text();
        !self.taken.lock().contains(&key)
    }

    /// Records that a server applied `settings` without an error.
    pub fn taken(&self, settings: &Settings) {
        let key = settings.without_free_text();
        let mut taken = self.taken.lock();
        if taken.len() >= MAX_TAKEN {
            taken.clear();
        }
        taken.insert(key);
    }
}

/// The settings that say who the session is, in the order they must be set.
const IDENTITY: [&str; 2] = ["session_authorization", "role"];

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

/// Reads back a literal [`quote_literal`] made: its value and what follows it.
fn unquote_literal(s: &str) -> Option<(String, &str)> {
    let (escaped, s) = match s.strip_prefix('E') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let mut chars = s.strip_prefix('\'')?.char_indices();
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '\'' => match chars.clone().next() {
                Some((_, '\'')) => {
                    chars.next();
                    out.push('\'');
                }
                _ => return Some((out, &s[i + 2..])),
            },
            '\\' if escaped => {
                chars.next();
                out.push('\\');
            }
            c => out.push(c),
        }
    }
    None
}

/// Postgres' name for a `client_encoding` value, as it reports the setting back:
/// `'utf-8'`, `unicode` and `UTF8` are all `UTF8`. Like Postgres, it ignores case and
/// everything but letters and digits. `None` for a name Postgres does not know.
pub fn canonical_client_encoding(value: &str) -> Option<&'static str> {
    /// The server-side names, then the aliases Postgres accepts for them.
    const NAMES: &[&str] = &[
        "SQL_ASCII",
        "EUC_JP",
        "EUC_CN",
        "EUC_KR",
        "EUC_TW",
        "EUC_JIS_2004",
        "UTF8",
        "MULE_INTERNAL",
        "LATIN1",
        "LATIN2",
        "LATIN3",
        "LATIN4",
        "LATIN5",
        "LATIN6",
        "LATIN7",
        "LATIN8",
        "LATIN9",
        "LATIN10",
        "WIN1256",
        "WIN1258",
        "WIN866",
        "WIN874",
        "KOI8R",
        "WIN1251",
        "WIN1252",
        "ISO_8859_5",
        "ISO_8859_6",
        "ISO_8859_7",
        "ISO_8859_8",
        "WIN1250",
        "WIN1253",
        "WIN1254",
        "WIN1255",
        "WIN1257",
        "KOI8U",
        "SJIS",
        "BIG5",
        "GBK",
        "UHC",
        "GB18030",
        "JOHAB",
        "SHIFT_JIS_2004",
    ];
    const ALIASES: &[(&str, &str)] = &[
        ("unicode", "UTF8"),
        ("abc", "WIN1258"),
        ("tcvn", "WIN1258"),
        ("tcvn5712", "WIN1258"),
        ("vscii", "WIN1258"),
        ("alt", "WIN866"),
        ("win", "WIN1251"),
        ("koi8", "KOI8R"),
        ("mskanji", "SJIS"),
        ("shiftjis", "SJIS"),
        ("iso88591", "LATIN1"),
        ("iso88592", "LATIN2"),
        ("iso88593", "LATIN3"),
        ("iso88594", "LATIN4"),
        ("iso88599", "LATIN5"),
        ("iso885910", "LATIN6"),
        ("iso885913", "LATIN7"),
        ("iso885914", "LATIN8"),
        ("iso885915", "LATIN9"),
        ("iso885916", "LATIN10"),
        ("cp866", "WIN866"),
        ("cp874", "WIN874"),
        ("cp932", "SJIS"),
        ("cp936", "GBK"),
        ("cp949", "UHC"),
        ("win932", "SJIS"),
        ("win936", "GBK"),
        ("win949", "UHC"),
        ("win950", "BIG5"),
    ];
    // Postgres' clean_encoding_name: letters and digits, lower case.
    fn key(name: &str) -> impl Iterator<Item = char> + '_ {
        name.chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
    }
    let clean: String = key(value).collect();
    if let Some(name) = NAMES.iter().find(|n| key(n).eq(clean.chars())) {
        return Some(name);
    }
    if let Some((_, name)) = ALIASES.iter().find(|(alias, _)| *alias == clean) {
        return Some(name);
    }
    // cp1250..cp1258 and windows1250..windows1258, windows866, ...: WIN names.
    ["cp", "windows"]
        .iter()
        .find_map(|prefix| clean.strip_prefix(prefix))
        .and_then(|number| NAMES.iter().find(|n| n.strip_prefix("WIN") == Some(number)))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_set_from_a_value_reads_back() {
        for value in ["x", "", "it's", "a\\b", "'\\'", "über, ünter"] {
            for name in ["application_name", "role", "session_authorization"] {
                let s = Settings::from_pairs([(name, value)]);
                assert_eq!(s.value(name).as_deref(), Some(value), "{name} = {value:?}");
            }
        }
        let mut s = Settings::default();
        s.set("timezone", "SET TIME ZONE 'UTC'");
        assert_eq!(s.value("timezone"), None, "the client's own statement");
        assert_eq!(s.value("datestyle"), None);
    }

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

    /// Session authorization, set or reset, drops a SET ROLE: it goes first, role
    /// after it, and both after the other settings, which the login user changes.
    #[test]
    fn identity_is_reset_first_and_taken_last_session_authorization_before_role() {
        let mut client = Settings::default();
        client.set("role", "SET ROLE 'r'");
        client.set("work_mem", "SET work_mem = '5MB'");
        let mut server = Settings::default();
        server.set("session_authorization", "SET SESSION AUTHORIZATION 'u'");
        server.set("role", "SET ROLE 'r'");
        let sql = client.sync_sql(&server).unwrap();
        let order: Vec<&str> = sql.lines().collect();
        assert_eq!(
            order,
            [
                "RESET SESSION AUTHORIZATION;",
                "RESET ROLE;",
                "SET work_mem = '5MB';",
                "SET ROLE 'r';",
            ]
        );

        let mut both = client.clone();
        both.set("session_authorization", "SET SESSION AUTHORIZATION 'u'");
        let sql = both.sync_sql(&Settings::default()).unwrap();
        let sa = sql.find("SESSION AUTHORIZATION").unwrap();
        let role = sql.find("SET ROLE").unwrap();
        assert!(sa < role, "{sql}");

        // The same identity on both sides: nothing to redo.
        let mut same = server.clone();
        same.set("work_mem", "SET work_mem = '5MB'");
        assert_eq!(same.sync_sql(&server).unwrap(), "SET work_mem = '5MB';\n");
    }

    #[test]
    fn reset_all_keeps_the_identity() {
        let mut s = Settings::from_pairs([("application_name", "x")]);
        s.set("role", "SET ROLE 'r'");
        s.set("work_mem", "SET work_mem = '5MB'");
        let startup = Settings::from_pairs([("application_name", "a")]);
        let after = s.after_reset_all(&startup);
        assert_eq!(after.get("role"), Some("SET ROLE 'r'"));
        assert_eq!(after.get("work_mem"), None);
        assert_eq!(
            after.get("application_name"),
            startup.get("application_name")
        );
    }

    #[test]
    fn client_encodings_are_named_as_postgres_reports_them() {
        for (value, name) in [
            ("'utf-8'", "UTF8"),
            ("UTF8", "UTF8"),
            ("unicode", "UTF8"),
            ("sql_ascii", "SQL_ASCII"),
            ("latin1", "LATIN1"),
            ("ISO-8859-1", "LATIN1"),
            ("iso_8859_5", "ISO_8859_5"),
            ("euc-jp", "EUC_JP"),
            ("windows-1252", "WIN1252"),
            ("cp1251", "WIN1251"),
            ("Shift_JIS", "SJIS"),
            ("windows874", "WIN874"),
        ] {
            assert_eq!(canonical_client_encoding(value), Some(name), "{value}");
        }
        assert_eq!(canonical_client_encoding("klingon"), None);
        assert_eq!(canonical_client_encoding("cp9999"), None);
    }

    #[test]
    fn equal_startup_settings_share_one_copy_while_someone_holds_it() {
        let interner = Interner::default();
        let a = interner.intern(Settings::from_pairs([("application_name", "app")]));
        let b = interner.intern(Settings::from_pairs([("Application_Name", "app")]));
        assert!(Arc::ptr_eq(&a.map, &b.map), "equal settings share a copy");
        let other = interner.intern(Settings::from_pairs([("application_name", "x")]));
        assert!(!Arc::ptr_eq(&a.map, &other.map));

        // A client's SET changes its own settings only.
        let mut changed = b.clone();
        changed.set("work_mem", "SET work_mem = '1MB'");
        assert_eq!(a.get("work_mem"), None);
        assert_eq!(a, b);

        // Copies nobody holds go as the set grows; a held one stays shared.
        drop((b, other, changed));
        for i in 0..200 {
            interner.intern(Settings::from_pairs([(
                "application_name",
                &*format!("n{i}"),
            )]));
        }
        assert!(interner.len() < 64, "{} copies kept", interner.len());
        let again = interner.intern(Settings::from_pairs([("application_name", "app")]));
        assert!(
            Arc::ptr_eq(&a.map, &again.map),
            "a held copy is still shared"
        );
    }

    #[test]
    fn logins_with_the_same_pairs_share_one_copy_and_other_pairs_get_theirs() {
        let interner = Interner::default();
        let pairs = |app: &str| vec![("application_name".to_string(), app.to_string())];
        let a = interner.intern_pairs(&pairs("app"));
        let b = interner.intern_pairs(&pairs("app"));
        assert!(Arc::ptr_eq(&a.map, &b.map), "the same pairs share a copy");
        let other = interner.intern_pairs(&pairs("x"));
        assert_eq!(other.value("application_name").as_deref(), Some("x"));
        // After another application's login, the first one's pairs find their copy
        // again, also when written with other cases, as `intern` would.
        let again = interner.intern_pairs(&pairs("app"));
        assert!(Arc::ptr_eq(&a.map, &again.map));
        let upper = interner.intern_pairs(&[("Application_Name".into(), "app".into())]);
        assert!(Arc::ptr_eq(&a.map, &upper.map));
        assert!(interner.intern_pairs(&[]).is_empty());
    }

    #[test]
    fn a_set_is_checked_until_a_server_took_it_whatever_the_application_name() {
        let taken = TakenSettings::default();
        assert!(!taken.needs_check(&Settings::default()));
        assert!(!taken.needs_check(&Settings::from_pairs([("application_name", "a")])));

        let a = Settings::from_pairs([("application_name", "a"), ("work_mem", "7MB")]);
        let b = Settings::from_pairs([("application_name", "b"), ("work_mem", "7MB")]);
        let other = Settings::from_pairs([("work_mem", "8MB")]);
        assert!(taken.needs_check(&a));
        taken.taken(&a);
        assert!(!taken.needs_check(&a));
        assert!(!taken.needs_check(&b), "the name is not part of the check");
        assert!(taken.needs_check(&other));

        // The memory is bounded: past its size it starts over.
        for i in 0..MAX_TAKEN {
            taken.taken(&Settings::from_pairs([("work_mem", &*format!("{i}kB"))]));
        }
        assert!(taken.needs_check(&a));
        assert!(taken.taken.lock().len() <= MAX_TAKEN);
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
