//! Named statements prepared on one server connection, bounded, least recently used
//! first out.
//!
//! pgmux prepares a client's named statement under a server-side name derived from the
//! statement's content (`pgmux_<128-bit keyed hash>`), so every client preparing the
//! same text shares it and no two different texts ever share a name.
//!
//! Sharing must not outlive a schema change. Postgres fixes a statement's parameter
//! types when it parses it, and a client that prepares its statement again after
//! changing a table expects the new types: the copy another connection parsed before
//! the change would read the client's parameters as the old types (an int's four
//! bytes where text is now sent). So each copy records the [`SchemaEpoch`] it was
//! parsed in, and serves only clients that parsed their statement no later.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use bytes::{BufMut, Bytes, BytesMut};

/// Content identity of a prepared statement: a keyed 128-bit hash of the Parse body
/// after the name (query text and parameter types).
pub type StatementId = u128;

fn keys() -> &'static (
    std::collections::hash_map::RandomState,
    std::collections::hash_map::RandomState,
) {
    static KEYS: OnceLock<(
        std::collections::hash_map::RandomState,
        std::collections::hash_map::RandomState,
    )> = OnceLock::new();
    KEYS.get_or_init(Default::default)
}

/// A client's named statement, as pgmux will prepare it on servers.
#[derive(Debug)]
pub struct Statement {
    pub id: StatementId,
    /// `pgmux_<32 hex digits>`, without the trailing NUL.
    pub server_name: Bytes,
    /// The client's Parse body after the name: query, NUL, parameter types.
    pub parse_rest: Bytes,
    /// The statement a SQL `EXECUTE` in this one's text runs, which must be prepared
    /// on the same connection first.
    pub runs: Option<std::sync::Arc<Statement>>,
    /// Its text leaves the connection idle and unchanged (`client::sql::leaves_idle`).
    pub plain: bool,
    /// The schema epoch the client parsed it in.
    pub epoch: u64,
}

impl Statement {
    pub fn new(parse_rest: &[u8], epoch: u64) -> Statement {
        let (a, b) = keys();
        let mut h1 = a.build_hasher();
        h1.write(parse_rest);
        let mut h2 = b.build_hasher();
        h2.write(parse_rest);
        let id = ((h1.finish() as u128) << 64) | h2.finish() as u128;
        let mut name = BytesMut::with_capacity(38);
        name.put_slice(b"pgmux_");
        name.put_slice(format!("{id:032x}").as_bytes());
        Statement {
            id,
            server_name: name.freeze(),
            parse_rest: Bytes::copy_from_slice(parse_rest),
            runs: None,
            plain: false,
            epoch,
        }
    }
}

/// Counts the schema changes made through pgmux to one database: every `CREATE`,
/// `DROP`, `ALTER`, `IMPORT FOREIGN SCHEMA` and `DO`, and the end of a transaction
/// that made one (whose rollback undoes it, and whose commit shows it to other
/// connections).
#[derive(Debug, Default)]
pub struct SchemaEpoch(AtomicU64);

impl SchemaEpoch {
    pub fn now(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    pub fn changed(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// Whether a CommandComplete tag (NUL-terminated or not) is that of a schema change,
/// or of a `DO` block, which may hold one.
pub fn is_schema_change(tag: &[u8]) -> bool {
    matches!(tag.first(), Some(b'C' | b'D' | b'A' | b'I'))
        && ([&b"CREATE "[..], b"DROP ", b"ALTER ", b"IMPORT "]
            .iter()
            .any(|p| tag.starts_with(p))
            || matches!(tag, b"DO" | b"DO\0"))
}

struct Entry {
    last_use: u64,
    server_name: Bytes,
    /// The schema epoch the server parsed it in.
    epoch: u64,
}

pub struct PreparedSet {
    capacity: usize,
    tick: u64,
    entries: HashMap<StatementId, Entry>,
}

impl PreparedSet {
    pub fn new(capacity: usize) -> PreparedSet {
        PreparedSet {
            capacity: capacity.max(1),
            tick: 0,
            entries: HashMap::new(),
        }
    }

    /// Marks `stmt` used; true when the server has it, parsed no earlier than the
    /// client parsed it.
    pub fn touch(&mut self, stmt: &Statement) -> bool {
        self.tick += 1;
        match self.entries.get_mut(&stmt.id) {
            Some(e) => {
                e.last_use = self.tick;
                e.epoch >= stmt.epoch
            }
            None => false,
        }
    }

    /// Records that the server now has `stmt`, parsed in schema epoch `epoch`; returns
    /// the server-side name of the statement to close to stay within capacity, if any.
    pub fn insert(&mut self, stmt: &Statement, epoch: u64) -> Option<Bytes> {
        self.tick += 1;
        let mut evicted = None;
        if !self.entries.contains_key(&stmt.id) && self.entries.len() >= self.capacity {
            if let Some((&victim, _)) = self.entries.iter().min_by_key(|(_, e)| e.last_use) {
                evicted = self.entries.remove(&victim).map(|e| e.server_name);
            }
        }
        let entry = Entry {
            last_use: self.tick,
            server_name: stmt.server_name.clone(),
            epoch,
        };
        self.entries.insert(stmt.id, entry);
        evicted
    }

    pub fn remove(&mut self, id: StatementId) {
        self.entries.remove(&id);
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_text_same_name_different_text_different_name() {
        let a = Statement::new(b"select 1\0\0\0", 0);
        let b = Statement::new(b"select 1\0\0\0", 3);
        let c = Statement::new(b"select 2\0\0\0", 0);
        assert_eq!(a.server_name, b.server_name);
        assert_ne!(a.server_name, c.server_name);
        assert_eq!(a.server_name.len(), 38);
    }

    #[test]
    fn least_recently_used_is_evicted() {
        let mut set = PreparedSet::new(2);
        let s: Vec<Statement> = (0..3)
            .map(|i| Statement::new(format!("q{i}\0\0\0").as_bytes(), 0))
            .collect();
        assert_eq!(set.insert(&s[0], 0), None);
        assert_eq!(set.insert(&s[1], 0), None);
        assert!(set.touch(&s[0]));
        assert_eq!(set.insert(&s[2], 0), Some(s[1].server_name.clone()));
        assert!(set.touch(&s[0]));
        assert!(!set.touch(&s[1]));
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn a_copy_parsed_before_the_clients_parse_and_a_schema_change_is_stale() {
        let mut set = PreparedSet::new(4);
        let before = Statement::new(b"insert into t values ($1)\0\0\0", 2);
        assert_eq!(set.insert(&before, 2), None);
        assert!(set.touch(&before));
        let after = Statement::new(b"insert into t values ($1)\0\0\0", 3);
        assert!(
            !set.touch(&after),
            "parsed before the change the client saw"
        );
        assert_eq!(set.insert(&after, 3), None, "replaced, not evicted");
        assert!(set.touch(&after));
        assert!(set.touch(&before), "a newer copy serves an older statement");
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn schema_changes_are_told_by_their_tag() {
        for (tag, want) in [
            (&b"CREATE TABLE"[..], true),
            (b"DROP TYPE", true),
            (b"ALTER TABLE", true),
            (b"CREATE INDEX", true),
            (b"DO\0", true),
            (b"IMPORT FOREIGN SCHEMA", true),
            (b"DROP TABLE\0", true),
            (b"DOMAIN", false),
            (b"DELETE 3", false),
            (b"COMMIT", false),
            (b"SELECT 1", false),
            (b"ANALYZE", false),
            (b"", false),
        ] {
            assert_eq!(
                is_schema_change(tag),
                want,
                "{}",
                String::from_utf8_lossy(tag)
            );
        }
    }
}
