//! Shared prepared statements across a schema change (CONTRACT.md section 3): pgmux
//! shares one server-side copy of a statement text among clients, and Postgres fixes
//! a statement's parameter types when it parses it. A client that prepares its
//! statement again after a table changed gets it parsed against the new table on
//! every server connection, never a copy another connection kept from before (which
//! would read a text parameter's bytes as an int).

mod support;

use support::session::Steering;
use support::*;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

/// A table `name (v int)` owned by the app role, pgmux with a pool of two, a
/// [`Steering`] over its two connections, and one client.
struct Rig {
    pg: &'static PgServer,
    table: &'static str,
    _px: Pgmux,
    steer: Steering,
    client: Client,
}

impl Rig {
    async fn new(table: &'static str) -> Rig {
        let pg = shared_primary();
        pg.sql(APP_DB, &recreate(table, "int"));
        let px = start_pgmux(&pgmux_config(pg, "", "pool_size = 2"));
        let url = px.url(APP_USER, APP_PASSWORD, APP_DB);
        let steer = Steering::new(&url).await;
        let client = connect(&url).await;
        Rig {
            pg,
            table,
            _px: px,
            steer,
            client,
        }
    }

    fn insert(&self) -> String {
        format!("insert into {} (v) values ($1)", self.table)
    }

    /// Both server connections get the statement, its parameter an int.
    async fn prepare_on_both(&self) {
        for conn in [0, 1] {
            self.steer.free(conn).await;
            let stmt = self.client.prepare(&self.insert()).await.unwrap();
            assert_eq!(stmt.params(), &[Type::INT4]);
            self.client.execute(&stmt, &[&1i32]).await.unwrap();
            self.steer.retake(conn, &[]).await;
        }
    }

    /// Prepares the statement again on connection `conn`, runs it there with `value`,
    /// and returns it with the parameter type the server gave it.
    async fn prepare_again_on(
        &self,
        conn: usize,
        value: &(dyn ToSql + Sync),
    ) -> (tokio_postgres::Statement, Type) {
        self.steer.free(conn).await;
        let stmt = self.client.prepare(&self.insert()).await.unwrap();
        let ty = stmt.params()[0].clone();
        self.client.execute(&stmt, &[value]).await.unwrap();
        self.steer.retake(conn, &[]).await;
        (stmt, ty)
    }

    /// Runs `stmt` with `value` on connection `conn`, which prepared it before.
    async fn run_on(
        &self,
        conn: usize,
        stmt: &tokio_postgres::Statement,
        value: &(dyn ToSql + Sync),
    ) {
        self.steer.free(conn).await;
        self.client
            .execute(stmt, &[value])
            .await
            .expect("the statement on the connection that had an older copy");
        self.steer.retake(conn, &[]).await;
    }

    /// The table's values, sorted, comma-separated.
    fn values(&self) -> String {
        self.pg.sql(
            APP_DB,
            &format!(
                "select string_agg(v::text, ',' order by v) from {}",
                self.table
            ),
        )
    }
}

/// SQL that drops `table` and makes it again with column `v` of type `ty`.
fn recreate(table: &str, ty: &str) -> String {
    format!(
        "drop table if exists {table}; create table {table} (v {ty}); \
         alter table {table} owner to {APP_USER}"
    )
}

/// The change made through pgmux (psycopg 3 prepares again after a DROP).
#[tokio::test]
async fn a_statement_prepared_again_after_a_schema_change_is_parsed_afresh_on_every_connection() {
    let rig = Rig::new("ps_schema_change").await;
    rig.prepare_on_both().await;

    rig.steer.free(0).await;
    rig.client
        .batch_execute(&recreate(rig.table, "text"))
        .await
        .unwrap();
    rig.steer.retake(0, &[]).await;
    let (stmt, ty) = rig.prepare_again_on(0, &"on 0").await;
    assert_eq!(ty, Type::TEXT, "the statement parsed again");

    rig.run_on(1, &stmt, &"on 1").await;
    assert_eq!(rig.values(), "on 0,on 1");
}

/// The change made past pgmux (a migration run straight against Postgres): the
/// client's new Parse is what tells pgmux that copies parsed before it may be stale.
#[tokio::test]
async fn a_statement_prepared_again_after_a_schema_change_made_past_pgmux_is_parsed_afresh() {
    let rig = Rig::new("ps_schema_past").await;
    rig.prepare_on_both().await;

    rig.pg.sql(APP_DB, &recreate(rig.table, "text"));
    let (stmt, ty) = rig.prepare_again_on(0, &"on 0").await;
    assert_eq!(ty, Type::TEXT, "the statement parsed again");

    rig.run_on(1, &stmt, &"on 1").await;
    assert_eq!(rig.values(), "on 0,on 1");
}

/// A schema change rolled back is a change too: a statement prepared inside that
/// transaction is not the one a client prepares after the rollback.
#[tokio::test]
async fn a_statement_prepared_in_a_transaction_whose_schema_change_rolled_back_is_not_reused() {
    let rig = Rig::new("ps_schema_rollback").await;

    rig.steer.free(0).await;
    rig.client
        .batch_execute(&format!("begin; {}", recreate(rig.table, "text")))
        .await
        .unwrap();
    let inside = rig.client.prepare(&rig.insert()).await.unwrap();
    assert_eq!(inside.params(), &[Type::TEXT]);
    rig.client.batch_execute("rollback").await.unwrap();
    rig.steer.retake(0, &[]).await;

    let (stmt, ty) = rig.prepare_again_on(1, &5i32).await;
    assert_eq!(ty, Type::INT4, "the table as it was again");

    rig.run_on(0, &stmt, &7i32).await;
    assert_eq!(rig.values(), "5,7");
}
