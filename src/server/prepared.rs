//! Named statements prepared on one server connection, bounded, least recently used
//! first out.
//!
//! pgmux prepares a client's named statement under a server-side name derived from the
//! statement's content (`pgmux_<128-bit keyed hash>`), so every client preparing the
//! same text shares it and no two different texts ever share a name.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
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
}

impl Statement {
    pub fn new(parse_rest: &[u8]) -> Statement {
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
        }
    }
}

pub struct PreparedSet {
    capacity: usize,
    tick: u64,
    /// id → (last use, server-side name)
    entries: HashMap<StatementId, (u64, Bytes)>,
}

impl PreparedSet {
    pub fn new(capacity: usize) -> PreparedSet {
        PreparedSet {
            capacity: capacity.max(1),
            tick: 0,
            entries: HashMap::new(),
        }
    }

    /// Marks `id` used; true when the server has it.
    pub fn touch(&mut self, id: StatementId) -> bool {
        self.tick += 1;
        match self.entries.get_mut(&id) {
            Some(e) => {
                e.0 = self.tick;
                true
            }
            None => false,
        }
    }

    /// Records that the server now has `stmt`; returns the server-side name of the
    /// statement to close to stay within capacity, if any.
    pub fn insert(&mut self, stmt: &Statement) -> Option<Bytes> {
        self.tick += 1;
        let mut evicted = None;
        if !self.entries.contains_key(&stmt.id) && self.entries.len() >= self.capacity {
            if let Some((&victim, _)) = self.entries.iter().min_by_key(|(_, (t, _))| *t) {
                evicted = self.entries.remove(&victim).map(|(_, name)| name);
            }
        }
        self.entries
            .insert(stmt.id, (self.tick, stmt.server_name.clone()));
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
        let a = Statement::new(b"select 1\0\0\0");
        let b = Statement::new(b"select 1\0\0\0");
        let c = Statement::new(b"select 2\0\0\0");
        assert_eq!(a.server_name, b.server_name);
        assert_ne!(a.server_name, c.server_name);
        assert_eq!(a.server_name.len(), 38);
    }

    #[test]
    fn least_recently_used_is_evicted() {
        let mut set = PreparedSet::new(2);
        let s: Vec<Statement> = (0..3)
            .map(|i| Statement::new(format!("q{i}\0\0\0").as_bytes()))
            .collect();
        assert_eq!(set.insert(&s[0]), None);
        assert_eq!(set.insert(&s[1]), None);
        assert!(set.touch(s[0].id));
        assert_eq!(set.insert(&s[2]), Some(s[1].server_name.clone()));
        assert!(set.touch(s[0].id));
        assert!(!set.touch(s[1].id));
        assert_eq!(set.len(), 2);
    }
}
