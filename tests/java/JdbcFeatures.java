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

import java.io.StringReader;
import java.io.StringWriter;
import java.sql.CallableStatement;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Savepoint;
import java.sql.Statement;
import java.sql.Types;
import java.util.Properties;
import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.copy.CopyManager;
import org.postgresql.largeobject.LargeObject;
import org.postgresql.largeobject.LargeObjectManager;

public class JdbcFeatures {
    static String url;
    static String user;
    static String password;

    // A connection with the driver settings `kv` (name, value, name, value, ...).
    static Connection connect(String... kv) throws SQLException {
        Properties p = new Properties();
        p.setProperty("user", user);
        p.setProperty("password", password);
        for (int i = 0; i < kv.length; i += 2) {
            p.setProperty(kv[i], kv[i + 1]);
        }
        return DriverManager.getConnection(url, p);
    }

    // The first column of the first row of `sql`.
    static String scalar(Connection c, String sql) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery(sql)) {
            rs.next();
            return rs.getString(1);
        }
    }

    static void say(String line) {
        System.out.println(line);
    }

    public static void main(String[] args) throws Exception {
        url = args[0];
        user = args[1];
        password = args[2];
        try (Connection c = connect(); Statement s = c.createStatement()) {
            s.execute("drop table if exists jdbc_features");
            s.execute("create table jdbc_features (id serial primary key, v text)");
        }
        largeObjects();
        cursor();
        autosave();
        for (String mode : new String[] {"simple", "extendedForPrepared", "extendedCacheEverything", "extended"}) {
            queryMode(mode);
        }
        for (String rewrite : new String[] {"false", "true"}) {
            batch(rewrite);
        }
        copy();
        timeout();
        callable();
        notifications();
        savepoints();
        binary();
        say("done");
    }

    // The large object API runs on fastpath FunctionCall messages, in a transaction.
    static void largeObjects() {
        try (Connection c = connect()) {
            c.setAutoCommit(false);
            LargeObjectManager lom = c.unwrap(PGConnection.class).getLargeObjectAPI();
            long oid = lom.createLO();
            LargeObject lo = lom.open(oid, LargeObjectManager.WRITE);
            lo.write("hello large object".getBytes());
            lo.close();
            lo = lom.open(oid, LargeObjectManager.READ);
            say("lo read: " + new String(lo.read(100)));
            lo.close();
            lom.delete(oid);
            c.commit();
        } catch (Exception e) {
            say("lo error: " + e);
        }
    }

    // A fetch size reads a portal 7 rows at a time (PortalSuspended), across Syncs,
    // with another statement run between the fetches.
    static void cursor() {
        try (Connection c = connect()) {
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                s.setFetchSize(7);
                int n = 0;
                long sum = 0;
                try (ResultSet rs = s.executeQuery("select g from generate_series(1, 100) g")) {
                    while (rs.next()) {
                        n++;
                        sum += rs.getLong(1);
                        if (n % 20 == 0) {
                            scalar(c, "select 1");
                        }
                    }
                }
                say("cursor rows " + n + " sum " + sum);
            }
            c.commit();
        } catch (Exception e) {
            say("cursor error: " + e);
        }
    }

    // autosave=always wraps each statement in a savepoint and rolls back to it when
    // the statement fails, so the transaction goes on.
    static void autosave() {
        try (Connection c = connect("autosave", "always")) {
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                s.executeUpdate("insert into jdbc_features (v) values ('a')");
                try {
                    s.executeQuery("select 1/0");
                } catch (SQLException e) {
                    say("autosave error: " + e.getSQLState());
                }
                s.executeUpdate("insert into jdbc_features (v) values ('b')");
            }
            c.commit();
            say("autosave rows: " + scalar(c, "select string_agg(v, ',' order by id) from jdbc_features"));
        } catch (Exception e) {
            say("autosave error: " + e);
        }
    }

    // A prepared statement run ten times; from the second run on, server-prepared
    // where the mode prepares at all.
    static void queryMode(String mode) {
        try (Connection c = connect("preferQueryMode", mode, "prepareThreshold", "2");
                PreparedStatement ps = c.prepareStatement("select ?::int * 3, ?::text")) {
            long sum = 0;
            for (int i = 0; i < 10; i++) {
                ps.setInt(1, i);
                ps.setString(2, "x" + i);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    sum += rs.getInt(1);
                }
            }
            say("mode " + mode + " sum " + sum);
        } catch (Exception e) {
            say("mode " + mode + " error: " + e);
        }
    }

    // Many Bind/Execute pairs before one Sync, or one rewritten multi-row INSERT.
    static void batch(String rewrite) {
        try (Connection c = connect("reWriteBatchedInserts", rewrite);
                PreparedStatement ps = c.prepareStatement(
                        "insert into jdbc_features (v) values (?)", Statement.RETURN_GENERATED_KEYS)) {
            for (int i = 0; i < 25; i++) {
                ps.setString(1, "r" + rewrite + i);
                ps.addBatch();
            }
            int[] counts = ps.executeBatch();
            int keys = 0;
            try (ResultSet rs = ps.getGeneratedKeys()) {
                while (rs.next()) {
                    keys++;
                }
            }
            say("batch rewrite=" + rewrite + " counts " + counts.length + " keys " + keys);
        } catch (Exception e) {
            say("batch error: " + e);
        }
    }

    static void copy() {
        try (Connection c = connect()) {
            CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
            long in = cm.copyIn("copy jdbc_features (v) from stdin", new StringReader("c1\nc2\nc3\n"));
            StringWriter w = new StringWriter();
            long out = cm.copyOut(
                    "copy (select v from jdbc_features where v like 'c%' order by v) to stdout", w);
            say("copy in " + in + " out " + out + " " + w.toString().replace("\n", "|"));
            try {
                cm.copyIn("copy jdbc_features (id) from stdin", new StringReader("notanint\n"));
            } catch (SQLException e) {
                say("copy bad: " + e.getSQLState());
            }
            say("after copy " + scalar(c, "select 5"));
        } catch (Exception e) {
            say("copy error: " + e);
        }
    }

    // The driver cancels the statement with a CancelRequest after a second.
    static void timeout() {
        try (Connection c = connect(); Statement s = c.createStatement()) {
            s.setQueryTimeout(1);
            try {
                s.execute("select pg_sleep(5)");
                say("timeout: none");
            } catch (SQLException e) {
                say("timeout: " + e.getSQLState());
            }
            say("after timeout " + scalar(c, "select 6"));
        } catch (Exception e) {
            say("timeout error: " + e);
        }
    }

    static void callable() {
        try (Connection c = connect()) {
            try (Statement s = c.createStatement()) {
                s.execute("create or replace function jdbc_features_add(a int, b int, out c int)"
                        + " as $$ select a + b $$ language sql");
            }
            try (CallableStatement cs = c.prepareCall("{call jdbc_features_add(?, ?, ?)}")) {
                cs.setInt(1, 2);
                cs.setInt(2, 40);
                cs.registerOutParameter(3, Types.INTEGER);
                cs.execute();
                say("callable " + cs.getInt(3));
            }
        } catch (Exception e) {
            say("callable error: " + e);
        }
    }

    static void notifications() {
        try (Connection listener = connect(); Connection notifier = connect()) {
            try (Statement s = listener.createStatement()) {
                s.execute("listen jdbc_features");
            }
            try (Statement s = notifier.createStatement()) {
                s.execute("notify jdbc_features, 'p1'");
            }
            PGNotification[] got = new PGNotification[0];
            for (int i = 0; i < 50 && got.length == 0; i++) {
                PGNotification[] n = listener.unwrap(PGConnection.class).getNotifications(100);
                if (n != null) {
                    got = n;
                }
            }
            say("notify " + got.length + " " + (got.length > 0 ? got[0].getParameter() : ""));
        } catch (Exception e) {
            say("notify error: " + e);
        }
    }

    static void savepoints() {
        try (Connection c = connect()) {
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                s.executeUpdate("insert into jdbc_features (v) values ('s1')");
                Savepoint sp = c.setSavepoint();
                s.executeUpdate("insert into jdbc_features (v) values ('s2')");
                c.rollback(sp);
                s.executeUpdate("insert into jdbc_features (v) values ('s3')");
            }
            c.commit();
            say("savepoints: " + scalar(c,
                    "select string_agg(v, ',' order by id) from jdbc_features where v like 's%'"));
        } catch (Exception e) {
            say("savepoint error: " + e);
        }
    }

    // Binary results of a statement prepared at once, 20,000 rows of them.
    static void binary() {
        try (Connection c = connect("binaryTransfer", "true", "prepareThreshold", "-1");
                PreparedStatement ps = c.prepareStatement("select array[1, 2, 3]::int[], now(), 1.5::numeric, g"
                        + " from generate_series(1, 20000) g where g > ?")) {
            ps.setInt(1, 10);
            int n = 0;
            try (ResultSet rs = ps.executeQuery()) {
                while (rs.next()) {
                    n++;
                    rs.getArray(1);
                }
            }
            say("binary rows " + n);
        } catch (Exception e) {
            say("binary error: " + e);
        }
    }
}
