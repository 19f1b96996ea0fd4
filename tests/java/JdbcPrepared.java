// JDBC through pgmux in transaction mode: server-side named prepared statements
// (prepareThreshold=1: pgjdbc names them S_1, S_2, ... per connection) reused across
// transactions by many threads that share a small server pool.
//
//   java -cp /usr/share/java/postgresql.jar tests/java/JdbcPrepared.java JDBC_URL USER PASSWORD CLIENTS
//
// Statement texts hold a client-specific constant, so a statement run for the wrong
// client gives a wrong answer. Each client inserts 10 rows into
// jdbc_prepared(client, i). Prints "jdbc ok" and exits 0 when every answer was right.

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.postgresql.PGStatement;

public class JdbcPrepared {
    static final int ROUNDS = 30;

    public static void main(String[] args) throws Exception {
        String url = args[0];
        String user = args[1];
        String password = args[2];
        int clients = Integer.parseInt(args[3]);
        ExecutorService pool = Executors.newFixedThreadPool(clients);
        List<Future<Void>> done = new ArrayList<>();
        for (int n = 0; n < clients; n++) {
            final int client = n;
            done.add(pool.submit(() -> {
                work(url, user, password, client);
                return null;
            }));
        }
        try {
            for (Future<Void> f : done) {
                f.get();
            }
        } finally {
            pool.shutdownNow();
        }
        System.out.println("jdbc ok");
    }

    static void check(Object got, Object want, String what) {
        if (!got.equals(want)) {
            throw new AssertionError(what + ": got " + got + ", want " + want);
        }
    }

    static Object one(PreparedStatement stmt, Object param) throws SQLException {
        stmt.setObject(1, param);
        try (ResultSet rs = stmt.executeQuery()) {
            if (!rs.next()) {
                throw new AssertionError("no row");
            }
            return rs.getObject(1);
        }
    }

    static void work(String url, String user, String password, int n) throws SQLException {
        Properties props = new Properties();
        props.setProperty("user", user);
        props.setProperty("password", password);
        props.setProperty("prepareThreshold", "1");
        int base = n * 1000;
        try (Connection conn = DriverManager.getConnection(url, props);
                PreparedStatement add = conn.prepareStatement("select ?::int + " + base);
                PreparedStatement text = conn.prepareStatement("select ?::text || '-client-" + n + "'");
                PreparedStatement shared = conn.prepareStatement("select ?::int * 2");
                PreparedStatement insert = conn.prepareStatement(
                        "insert into jdbc_prepared (client, i) values (?, ?)");
                PreparedStatement touch = conn.prepareStatement(
                        "update jdbc_prepared set i = i where client = ? and i = ?")) {
            for (int i = 0; i < ROUNDS; i++) {
                check(one(add, i), i + base, "client " + n + " add");
                check(one(text, String.valueOf(i)), i + "-client-" + n, "client " + n + " text");
                check(one(shared, i), 2 * i, "client " + n + " shared");
                if (i % 3 == 0) {
                    conn.setAutoCommit(false);
                    check(one(add, i), i + base, "client " + n + " add in a transaction");
                    insert.setInt(1, n);
                    insert.setInt(2, i);
                    check(insert.executeUpdate(), 1, "client " + n + " insert");
                    check(one(shared, i), 2 * i, "client " + n + " shared in a transaction");
                    // A batch: many Bind/Execute pairs before one Sync.
                    for (int k = 0; k <= i; k += 3) {
                        touch.setInt(1, n);
                        touch.setInt(2, k);
                        touch.addBatch();
                    }
                    for (int count : touch.executeBatch()) {
                        check(count, 1, "client " + n + " batch update");
                    }
                    conn.commit();
                    conn.setAutoCommit(true);
                }
            }
            check(add.unwrap(PGStatement.class).isUseServerPrepare(), true,
                    "client " + n + " uses server-side prepared statements");
        }
    }
}
