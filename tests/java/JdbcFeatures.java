// JDBC features that take the protocol's less travelled paths: large objects over
// fastpath function calls, a cursor read in batches (fetch size) inside a
// transaction, autosave savepoints around a failing statement, every
// preferQueryMode, batches (rewritten or not) with generated keys, COPY in and out
// (and a COPY that fails), a query timeout (CancelRequest), a CallableStatement,
// LISTEN/NOTIFY, savepoints, and binary transfer of a large result. It prints one
// line per feature; run straight against Postgres and through pgmux, the two
// outputs must be the same.
//
//   java -cp /usr/share/java/postgresql.jar tests/java/JdbcFeatures.java JDBC_URL USER PASSWORD

import java.sql.*;
import java.util.*;
import java.io.*;
import org.postgresql.PGConnection;
import org.postgresql.copy.CopyManager;
import org.postgresql.largeobject.*;

public class JdbcFeatures {
    static String user;
    static String password;

    static Connection conn(String url, Properties extra) throws SQLException {
        Properties p = new Properties();
        p.setProperty("user", user);
        p.setProperty("password", password);
        if (extra != null) p.putAll(extra);
        return DriverManager.getConnection(url, p);
    }
    static void out(String s) { System.out.println(s); }
    public static void main(String[] a) throws Exception {
        String url = a[0];
        user = a[1];
        password = a[2];
        try (Connection c = conn(url, null); Statement s = c.createStatement()) {
            s.execute("drop table if exists jdbc_features; create table jdbc_features(id serial primary key, v text)");
        }
        // 1. Large objects over fastpath, in a transaction.
        try (Connection c = conn(url, null)) {
            c.setAutoCommit(false);
            LargeObjectManager lom = c.unwrap(PGConnection.class).getLargeObjectAPI();
            long oid = lom.createLO();
            LargeObject lo = lom.open(oid, LargeObjectManager.WRITE);
            lo.write("hello large object".getBytes());
            lo.close();
            lo = lom.open(oid, LargeObjectManager.READ);
            out("lo read: " + new String(lo.read(100)));
            lo.close();
            lom.delete(oid);
            c.commit();
        } catch (Exception e) { out("lo error: " + e); }
        // 2. fetchSize cursor inside a transaction, interleaved with another statement.
        try (Connection c = conn(url, null)) {
            c.setAutoCommit(false);
            try (Statement s = c.createStatement(); Statement s2 = c.createStatement()) {
                s.setFetchSize(7);
                int n = 0; long sum = 0;
                try (ResultSet rs = s.executeQuery("select g from generate_series(1,100) g")) {
                    while (rs.next()) { n++; sum += rs.getLong(1); if (n % 20 == 0) { try (ResultSet r2 = s2.executeQuery("select 1")) { r2.next(); } } }
                }
                out("cursor rows " + n + " sum " + sum);
            }
            c.commit();
        } catch (Exception e) { out("cursor error: " + e); }
        // 3. autosave=always: a failing statement in a transaction, then go on.
        Properties as = new Properties(); as.setProperty("autosave", "always");
        try (Connection c = conn(url, as)) {
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                s.executeUpdate("insert into jdbc_features(v) values ('a')");
                try { s.executeQuery("select 1/0"); } catch (SQLException e) { out("autosave error: " + e.getSQLState()); }
                s.executeUpdate("insert into jdbc_features(v) values ('b')");
            }
            c.commit();
            try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("select string_agg(v, ',' order by id) from jdbc_features")) { rs.next(); out("autosave rows: " + rs.getString(1)); }
        } catch (Exception e) { out("autosave error: " + e); }
        // 4. preferQueryMode variants with a prepared statement used many times.
        for (String mode : new String[]{"simple", "extendedForPrepared", "extendedCacheEverything", "extended"}) {
            Properties pm = new Properties(); pm.setProperty("preferQueryMode", mode); pm.setProperty("prepareThreshold", "2");
            try (Connection c = conn(url, pm); PreparedStatement ps = c.prepareStatement("select ?::int * 3, ?::text")) {
                long sum = 0;
                for (int i = 0; i < 10; i++) { ps.setInt(1, i); ps.setString(2, "x" + i); try (ResultSet rs = ps.executeQuery()) { rs.next(); sum += rs.getInt(1); } }
                out("mode " + mode + " sum " + sum);
            } catch (Exception e) { out("mode " + mode + " error: " + e); }
        }
        // 5. Batches, rewritten and not, with generated keys.
        for (String rw : new String[]{"false", "true"}) {
            Properties bp = new Properties(); bp.setProperty("reWriteBatchedInserts", rw);
            try (Connection c = conn(url, bp); PreparedStatement ps = c.prepareStatement("insert into jdbc_features(v) values (?)", Statement.RETURN_GENERATED_KEYS)) {
                for (int i = 0; i < 25; i++) { ps.setString(1, "r" + rw + i); ps.addBatch(); }
                int[] counts = ps.executeBatch();
                int keys = 0; try (ResultSet rs = ps.getGeneratedKeys()) { while (rs.next()) keys++; }
                out("batch rewrite=" + rw + " counts " + counts.length + " keys " + keys);
            } catch (Exception e) { out("batch error: " + e); }
        }
        // 6. COPY in and out.
        try (Connection c = conn(url, null)) {
            CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
            long in = cm.copyIn("copy jdbc_features(v) from stdin", new StringReader("c1\nc2\nc3\n"));
            StringWriter w = new StringWriter();
            long outn = cm.copyOut("copy (select v from jdbc_features where v like 'c%' order by v) to stdout", w);
            out("copy in " + in + " out " + outn + " " + w.toString().replace("\n", "|"));
            try { cm.copyIn("copy jdbc_features(id) from stdin", new StringReader("notanint\n")); } catch (SQLException e) { out("copy bad: " + e.getSQLState()); }
            try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("select 5")) { rs.next(); out("after copy " + rs.getInt(1)); }
        } catch (Exception e) { out("copy error: " + e); }
        // 7. Query timeout (CancelRequest).
        try (Connection c = conn(url, null); Statement s = c.createStatement()) {
            s.setQueryTimeout(1);
            try { s.execute("select pg_sleep(5)"); out("timeout: none"); } catch (SQLException e) { out("timeout: " + e.getSQLState()); }
            try (ResultSet rs = s.executeQuery("select 6")) { rs.next(); out("after timeout " + rs.getInt(1)); }
        } catch (Exception e) { out("timeout error: " + e); }
        // 8. CallableStatement with OUT parameter, and a function returning a set.
        try (Connection c = conn(url, null)) {
            try (Statement s = c.createStatement()) { s.execute("create or replace function jdbc_features_add(a int, b int, out c int) as $$ select a + b $$ language sql"); }
            try (CallableStatement cs = c.prepareCall("{call jdbc_features_add(?, ?, ?)}")) {
                cs.setInt(1, 2); cs.setInt(2, 40); cs.registerOutParameter(3, Types.INTEGER); cs.execute(); out("callable " + cs.getInt(3));
            }
        } catch (Exception e) { out("callable error: " + e); }
        // 9. Notifications.
        try (Connection l = conn(url, null); Connection n = conn(url, null)) {
            try (Statement s = l.createStatement()) { s.execute("listen jdbc_features"); }
            try (Statement s = n.createStatement()) { s.execute("notify jdbc_features, 'p1'"); }
            org.postgresql.PGNotification[] ns = null;
            for (int i = 0; i < 50 && (ns == null || ns.length == 0); i++) ns = l.unwrap(PGConnection.class).getNotifications(100);
            out("notify " + (ns == null ? 0 : ns.length) + " " + (ns != null && ns.length > 0 ? ns[0].getParameter() : ""));
        } catch (Exception e) { out("notify error: " + e); }
        // 10. Savepoints and rollback to savepoint through the JDBC API.
        try (Connection c = conn(url, null)) {
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                s.executeUpdate("insert into jdbc_features(v) values ('s1')");
                Savepoint sp = c.setSavepoint();
                s.executeUpdate("insert into jdbc_features(v) values ('s2')");
                c.rollback(sp);
                s.executeUpdate("insert into jdbc_features(v) values ('s3')");
            }
            c.commit();
            try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("select string_agg(v, ',' order by id) from jdbc_features where v like 's%'")) { rs.next(); out("savepoints: " + rs.getString(1)); }
        } catch (Exception e) { out("savepoint error: " + e); }
        // 11. Binary transfer, arrays, large result.
        Properties bt = new Properties(); bt.setProperty("binaryTransfer", "true"); bt.setProperty("prepareThreshold", "-1");
        try (Connection c = conn(url, bt); PreparedStatement ps = c.prepareStatement("select array[1,2,3]::int[], now()::timestamptz, 1.5::numeric, g from generate_series(1, 20000) g where g > ?")) {
            ps.setInt(1, 10);
            int n = 0; try (ResultSet rs = ps.executeQuery()) { while (rs.next()) { n++; rs.getArray(1); } }
            out("binary rows " + n);
        } catch (Exception e) { out("binary error: " + e); }
        out("done");
    }
}
