//! The choice of server for a client's work.
//!
//! Every choice goes through here so that read/write splitting and sharding can grow
//! behind one interface. Today a database's statements all go to its first shard's
//! primary.

use std::sync::Arc;

use crate::config::{Config, DatabaseConfig};
use crate::pool::{Pool, PoolKey, PoolSettings, Role, ShardId};
use crate::proxy::{Shared, UserEntry};
use crate::server::{ConnectOptions, ServerCredential};

/// The pool of `db`'s first primary for `user`.
pub fn primary_pool(
    shared: &Shared,
    cfg: &Config,
    db: &DatabaseConfig,
    user: &UserEntry,
) -> Arc<Pool> {
    let primary = &db.shards[0].primary;
    let last = shared.pools.last_if(|k| {
        k.shard == ShardId(0)
            && k.role == Role::Primary
            && *k.database == *db.name
            && *k.user == *user.config.name
            && *k.server == *primary
    });
    if let Some(pool) = last {
        return pool;
    }
    let server = Arc::new(primary.clone());
    let key = PoolKey {
        database: Arc::from(db.name.as_str()),
        user: Arc::from(user.config.name.as_str()),
        shard: ShardId(0),
        role: Role::Primary,
        server,
    };
    shared.pools.get_or_create(
        key.clone(),
        || pool_settings(cfg, db),
        || connect_options(shared, cfg, &key, user),
    )
}

fn pool_settings(cfg: &Config, db: &DatabaseConfig) -> PoolSettings {
    PoolSettings {
        size: db.pool_size,
        min_size: db.min_pool_size,
        idle_timeout: cfg.proxy.server_idle_timeout,
        lifetime: cfg.proxy.server_lifetime,
        max_prepared: cfg.proxy.max_prepared_statements,
    }
}

fn connect_options(
    shared: &Shared,
    cfg: &Config,
    key: &PoolKey,
    user: &UserEntry,
) -> ConnectOptions {
    let credential = match (&user.config.server_password, user.scram_keys()) {
        (Some(pw), _) => ServerCredential::Password(pw.clone()),
        (None, Some((client_key, server_key))) => ServerCredential::ScramKeys {
            client_key,
            server_key,
        },
        (None, None) => ServerCredential::None,
    };
    ConnectOptions {
        addr: key.server.clone(),
        user: user.config.server_user.clone(),
        credential,
        tls: shared.upstream_tls().map(|c| (*c).clone()),
        tls_mode: cfg
            .upstream_tls
            .as_ref()
            .map_or(crate::config::UpstreamTlsMode::Disable, |u| u.mode),
        connect_timeout: cfg.proxy.server_connect_timeout,
    }
}

/// After a reload: pools whose database, user or server is gone are closed (their
/// clients keep them until they leave); the others take the new settings.
pub fn reconcile_pools(shared: &Shared, cfg: &Config) {
    shared.pools.retain(|key| {
        let Some(db) = cfg.database(&key.database) else {
            return false;
        };
        cfg.user(&key.user).is_some()
            && db
                .shards
                .get(key.shard.0 as usize)
                .is_some_and(|s| s.primary == *key.server || s.replicas.contains(&key.server))
    });
    for pool in shared.pools.all() {
        let (Some(db), Some(user)) = (
            cfg.database(&pool.key.database),
            shared.user(&pool.key.user),
        ) else {
            continue;
        };
        pool.update(
            pool_settings(cfg, db),
            connect_options(shared, cfg, &pool.key, &user),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(users: &[&str]) -> Arc<Shared> {
        let mut text = String::new();
        for u in users {
            text += &format!("[[users]]\nname = \"{u}\"\npassword = \"p\"\n");
        }
        text += "[databases.d]\n[[databases.d.shards]]\nprimary = \"127.0.0.1:1/d\"\n";
        text += "[databases.e]\n[[databases.e.shards]]\nprimary = \"127.0.0.1:2/e\"\n";
        Shared::new(Config::from_toml_str(&text, None).unwrap()).unwrap()
    }

    fn pool(shared: &Shared, db: &str, user: &str) -> Arc<Pool> {
        let cfg = shared.config();
        primary_pool(
            shared,
            &cfg,
            cfg.database(db).unwrap(),
            &shared.user(user).unwrap(),
        )
    }

    #[tokio::test]
    async fn each_database_and_user_has_its_pool_however_logins_alternate() {
        let shared = shared(&["a", "b"]);
        let da = pool(&shared, "d", "a");
        assert!(Arc::ptr_eq(&da, &pool(&shared, "d", "a")));
        let db = pool(&shared, "d", "b");
        let ea = pool(&shared, "e", "a");
        assert!(!Arc::ptr_eq(&da, &db) && !Arc::ptr_eq(&da, &ea));
        assert_eq!((&*db.key.database, &*db.key.user), ("d", "b"));
        assert_eq!((&*ea.key.database, &*ea.key.server.dbname), ("e", "e"));
        assert!(Arc::ptr_eq(&da, &pool(&shared, "d", "a")));
        assert!(Arc::ptr_eq(&db, &pool(&shared, "d", "b")));
    }

    #[tokio::test]
    async fn a_pool_a_reload_closed_is_not_handed_out_again() {
        let shared = shared(&["a"]);
        let old = pool(&shared, "d", "a");
        // The user goes, and comes back in a later reload: a new pool.
        let cfg = shared.config();
        shared.pools.retain(|k| *k.user != *"a");
        reconcile_pools(&shared, &cfg);
        let new = pool(&shared, "d", "a");
        assert!(!Arc::ptr_eq(&old, &new), "the removed pool came back");
        assert!(Arc::ptr_eq(&new, &pool(&shared, "d", "a")));
    }
}
