//! Named statements prepared on one server connection, bounded, least recently used
//! first out.
//!
//! pgmux prepares a client's named statement under a server-side name derived from the
//! statement's content (`pgmux_<128-bit keyed hash>`), so every client preparing the
//! same text shares it and no two different texts ever share a name.
//!
//! Sharing must not outlive a schema change. Postgres fixes a statement's parameter
//! types when it parses it, and a client that prepares its statement again after a
//! table changed expects the new types: a copy another connection parsed before would
//! read the client's parameters as the old types (an int's four bytes where text is
//! now sent). pgmux cannot see every change (a migration may run straight against
//! Postgres), but a client's Parse says the client wants the statement parsed now:
//! each Parse takes a tick of its database's [`ParseClock`], each copy records the
//! tick it was parsed at, and a copy parsed before the client's Parse is closed and
//! parsed again, once per connection.

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

/// What every name pgmux gives a statement on servers starts with.
pub const SERVER_NAME_PREFIX: &[u8] = b"pgmux_";
/// The length of those names: the prefix and 32 hex digits.
pub const SERVER_NAME_LEN: usize = SERVER_NAME_PREFIX.len() + 32;

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
    /// What each run of it does to the client's session (settings it changes,
    /// statements it drops).
    pub on_run: Option<Box<crate::client::sql::Effects>>,
    /// The [`ParseClock`] tick of the client's Parse.
    pub epoch: u64,
}

impl Statement {
    /// The statement of a Parse body, for clients whose settings make Postgres parse
    /// it the same way (`scope`: see `Session::parse_scope`). The same text under
    /// another `search_path` or `DateStyle` is another statement on the server: its
    /// names may mean other tables, its literal dates other days.
    pub fn new(parse_rest: &[u8], scope: &[u8], epoch: u64) -> Statement {
        let (a, b) = keys();
        let hash = |state: &std::collections::hash_map::RandomState| {
            let mut h = state.build_hasher();
            h.write(parse_rest);
            // With its length, a scope never runs into the text of another pair.
            h.write_usize(scope.len());
            h.write(scope);
            h.finish()
        };
        let id = ((hash(a) as u128) << 64) | hash(b) as u128;
        let mut name = BytesMut::with_capacity(SERVER_NAME_LEN);
        name.put_slice(SERVER_NAME_PREFIX);
        name.put_slice(format!("{id:032x}").as_bytes());
        Statement {
            id,
            server_name: name.freeze(),
            parse_rest: Bytes::copy_from_slice(parse_rest),
            runs: None,
            plain: false,
            on_run: None,
            epoch,
        }
    }
}

/// Orders the Parses of statements to one database against the copies servers hold.
#[derive(Debug, Default)]
pub struct ParseClock(AtomicU64);

impl ParseClock {
    /// The tick of a client's Parse: later than every copy parsed so far.
    pub fn tick(&self) -> u64 {
        self.0.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The tick a copy parsed now records.
    pub fn now(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

struct Entry {
    last_use: u64,
    server_name: Bytes,
    /// The [`ParseClock`] tick it was parsed at.
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

    /// Records that the server now has `stmt`, parsed at tick `epoch`; returns
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

    /// Takes out every entry (`None`) or the one of `id`, to put back with
    /// [`PreparedSet::put_back`] if the server turns out to keep them after all.
    pub fn take(&mut self, id: Option<StatementId>) -> PreparedSet {
        let entries = match id {
            None => std::mem::take(&mut self.entries),
            Some(id) => self.entries.remove_entry(&id).into_iter().collect(),
        };
        PreparedSet {
            capacity: self.capacity,
            tick: self.tick,
            entries,
        }
    }

    /// Puts back what [`PreparedSet::take`] took, except statements recorded again
    /// since.
    pub fn put_back(&mut self, taken: PreparedSet) {
        for (id, entry) in taken.entries {
            self.entries.entry(id).or_insert(entry);
        }
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
        let a = Statement::new(b"select 1\0\0\0", b"", 0);
        let b = Statement::new(b"select 1\0\0\0", b"", 3);
        let c = Statement::new(b"select 2\0\0\0", b"", 0);
        assert_eq!(a.server_name, b.server_name);
        assert_ne!(a.server_name, c.server_name);
        assert_eq!(a.server_name.len(), 38);
        let d = Statement::new(b"select 1\0\0\0", b"SET search_path = a", 0);
        assert_ne!(a.server_name, d.server_name);
        assert_ne!(a.id, d.id);
    }

    #[test]
    fn least_recently_used_is_evicted() {
        let mut set = PreparedSet::new(2);
        let s: Vec<Statement> = (0..3)
            .map(|i| Statement::new(format!("q{i}\0\0\0").as_bytes(), b"", 0))
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
    fn a_copy_parsed_before_the_clients_parse_is_stale() {
        let mut set = PreparedSet::new(4);
        let before = Statement::new(b"insert into t values ($1)\0\0\0", b"", 2);
        assert_eq!(set.insert(&before, 2), None);
        assert!(set.touch(&before));
        let after = Statement::new(b"insert into t values ($1)\0\0\0", b"", 3);
        assert!(!set.touch(&after), "parsed before the client's Parse");
        assert_eq!(set.insert(&after, 3), None, "replaced, not evicted");
        assert!(set.touch(&after));
        assert!(set.touch(&before), "a newer copy serves an older Parse");
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn what_was_taken_goes_back_unless_recorded_again() {
        let mut set = PreparedSet::new(4);
        let s: Vec<Statement> = (0..3)
            .map(|i| Statement::new(format!("q{i}\0\0\0").as_bytes(), b"", 0))
            .collect();
        set.insert(&s[0], 0);
        set.insert(&s[1], 0);
        let one = set.take(Some(s[0].id));
        assert!(!set.touch(&s[0]) && set.touch(&s[1]));
        set.put_back(one);
        assert!(set.touch(&s[0]));
        let all = set.take(None);
        assert!(set.is_empty());
        set.insert(&s[2], 0);
        set.insert(&s[1], 5);
        set.put_back(all);
        assert_eq!(set.len(), 3);
        let newer = Statement::new(b"q1\0\0\0", b"", 5);
        assert!(set.touch(&newer), "the entry recorded since is kept");
    }
}
