// Driver conformance scenario for pgjdbc (Debian's libpostgresql-jdbc-java,
// /usr/share/java/postgresql.jar); tests/tests/drivers.rs runs it direct and
// through the agent and compares the output line by line. Run as a single source
// file: java -cp /usr/share/java/postgresql.jar tests/drivers/PgjdbcSteps.java
//
// The connection comes from PGHOST, PGPORT, PGUSER, PGDATABASE and PGPASSWORD;
// DRIVERS_CA names the CA that signed the server's and the agent's certificates
// (for the TLS step).
//
// Prints one JSON line per step: {"step": NAME, "ok": true, ...} with values that
// hold on every run (pids and OIDs are replaced by comparisons), or {"step":
// NAME, "ok": false, "error": .., "sqlstate": ..}. A failed step does not stop
// the run; a broken connection is replaced for the next step.

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.StringReader;
import java.io.StringWriter;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.SQLWarning;
import java.sql.Savepoint;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.TreeMap;
import java.util.concurrent.atomic.AtomicReference;

import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.PGStatement;
import org.postgresql.copy.CopyManager;
import org.postgresql.largeobject.LargeObject;
import org.postgresql.largeobject.LargeObjectManager;
import org.postgresql.util.PGobject;
import org.postgresql.util.PSQLException;
import org.postgresql.util.PSQLWarning;
import org.postgresql.util.ServerErrorMessage;

public class PgjdbcSteps {
    static final String DRIVER = "pgjdbc";
    static final String T = "drv_jdbc_items";
    static final String MOOD = "drv_jdbc_mood";
    static final String PAIR = "drv_jdbc_pair";
    static final String CHANNEL = "drv_jdbc_chan";

    static class StepFailed extends Exception {
        StepFailed(String m) { super(m); }
    }

    interface Step { Map<String, Object> run(Connection c) throws Exception; }

    static String env(String k, String d) {
        String v = System.getenv(k);
        return v == null || v.isEmpty() ? d : v;
    }

    static Connection connect(String... extra) throws SQLException {
        String url = "jdbc:postgresql://" + env("PGHOST", "127.0.0.1") + ":" + env("PGPORT", "5432") + "/" + env("PGDATABASE", "app");
        Properties p = new Properties();
        p.setProperty("user", env("PGUSER", "app"));
        p.setProperty("password", env("PGPASSWORD", ""));
        p.setProperty("sslmode", "disable");
        p.setProperty("connectTimeout", "10");
        for (int i = 0; i + 1 < extra.length; i += 2) p.setProperty(extra[i], extra[i + 1]);
        return DriverManager.getConnection(url, p);
    }

    static Map<String, Object> m(Object... kv) {
        Map<String, Object> out = new LinkedHashMap<>();
        for (int i = 0; i + 1 < kv.length; i += 2) out.put((String) kv[i], kv[i + 1]);
        return out;
    }

    static List<List<Object>> rows(ResultSet rs) throws SQLException {
        List<List<Object>> out = new ArrayList<>();
        int n = rs.getMetaData().getColumnCount();
        while (rs.next()) {
            List<Object> r = new ArrayList<>();
            for (int i = 1; i <= n; i++) r.add(plain(rs.getObject(i)));
            out.add(r);
        }
        return out;
    }

    static List<List<Object>> query(Connection c, String sql) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery(sql)) { return rows(rs); }
    }

    static Object scalar(Connection c, String sql) throws SQLException {
        List<List<Object>> r = query(c, sql);
        return r.isEmpty() ? null : r.get(0).get(0);
    }

    static void exec(Connection c, String sql) throws SQLException {
        try (Statement s = c.createStatement()) { s.execute(sql); }
    }

    static Object plain(Object v) throws SQLException {
        if (v == null || v instanceof Boolean || v instanceof String || v instanceof Integer || v instanceof Long) return v;
        if (v instanceof byte[]) {
            StringBuilder sb = new StringBuilder("\\x");
            for (byte b : (byte[]) v) sb.append(String.format("%02x", b));
            return sb.toString();
        }
        if (v instanceof java.sql.Array) {
            Object[] a = (Object[]) ((java.sql.Array) v).getArray();
            List<Object> out = new ArrayList<>();
            for (Object x : a) out.add(plain(x));
            return out;
        }
        if (v instanceof PGobject) return m("type", ((PGobject) v).getType(), "value", ((PGobject) v).getValue());
        return v.toString();
    }

    static Map<String, Object> errorOf(SQLException e) {
        Map<String, Object> out = m("sqlstate", e.getSQLState());
        ServerErrorMessage s = e instanceof PSQLException ? ((PSQLException) e).getServerErrorMessage()
            : e instanceof PSQLWarning ? ((PSQLWarning) e).getServerErrorMessage() : null;
        if (s != null) {
            out.put("severity", s.getSeverity());
            out.put("message", s.getMessage());
            out.put("detail", s.getDetail());
            out.put("constraint", s.getConstraint());
            out.put("table", s.getTable());
            out.put("position", s.getPosition());
        } else {
            out.put("message", e.getMessage());
        }
        return out;
    }

    static void waitActive(int pid) throws Exception {
        try (Connection w = connect()) {
            for (int i = 0; i < 400; i++) {
                if (!query(w, "SELECT 1 FROM pg_stat_activity WHERE pid = " + pid + " AND state = 'active'").isEmpty()) return;
                Thread.sleep(50);
            }
        }
        throw new StepFailed("the query never showed as active within 20 s");
    }

    static Map<String, Object> connectStep(Connection c) throws Exception {
        PGConnection pc = c.unwrap(PGConnection.class);
        int pid = ((Number) scalar(c, "SELECT pg_backend_pid()")).intValue();
        Map<String, String> ps = pc.getParameterStatuses();
        Map<String, Object> params = new TreeMap<>();
        for (String k : Arrays.asList("server_encoding", "client_encoding", "DateStyle", "integer_datetimes", "standard_conforming_strings", "TimeZone"))
            params.put(k, ps.get(k));
        return m("user", scalar(c, "SELECT current_user"), "dbname", c.getCatalog(),
                "server_version_major", c.getMetaData().getDatabaseMajorVersion(),
                "driver_pid_matches_pg_backend_pid", pc.getBackendPID() == pid, "parameters", params);
    }

    static Map<String, Object> setup(Connection c) throws Exception {
        for (String sql : new String[] {
            "DROP TABLE IF EXISTS " + T, "DROP TYPE IF EXISTS " + PAIR, "DROP TYPE IF EXISTS " + MOOD,
            "CREATE TYPE " + MOOD + " AS ENUM ('sad', 'ok', 'happy')",
            "CREATE TYPE " + PAIR + " AS (label text, amount numeric(10,2))",
            "CREATE TABLE " + T + " (id int PRIMARY KEY, name text NOT NULL, mood " + MOOD + ", pair " + PAIR
                + ", data bytea, CONSTRAINT " + T + "_name_short CHECK (length(name) < 40))",
        }) exec(c, sql);
        return m("created", Arrays.asList(T, MOOD, PAIR));
    }

    static Map<String, Object> simpleQuery(Connection ignored) throws Exception {
        // preferQueryMode=simple: Statement text goes as one simple-protocol Query.
        try (Connection c = connect("preferQueryMode", "simple"); Statement s = c.createStatement()) {
            List<Object> results = new ArrayList<>();
            boolean isRs = s.execute("INSERT INTO " + T + " (id, name) VALUES (1, 'one'), (2, 'two'); SELECT id, name FROM " + T + " ORDER BY id; SELECT 'x' AS x");
            while (true) {
                if (isRs) {
                    try (ResultSet rs = s.getResultSet()) { results.add(rows(rs)); }
                } else {
                    int n = s.getUpdateCount();
                    if (n == -1) break;
                    results.add(m("update_count", n));
                }
                isRs = s.getMoreResults();
            }
            return m("results", results, "protocol", "simple");
        }
    }

    static Map<String, Object> extendedQuery(Connection c) throws Exception {
        try (PreparedStatement ps = c.prepareStatement("SELECT ?::int, ?::text, ?::numeric, ?::bytea, ?::jsonb, ?::timestamptz, ?::text, ?::bool, ?::int[]")) {
            ps.setInt(1, 42);
            ps.setString(2, "text ü");
            ps.setBigDecimal(3, new java.math.BigDecimal("12.50"));
            ps.setBytes(4, new byte[] {0, 1, (byte) 255});
            ps.setString(5, "{\"k\": [1, 2]}");
            ps.setString(6, "2026-01-02 03:04:05+00");
            ps.setNull(7, java.sql.Types.VARCHAR);
            ps.setBoolean(8, true);
            ps.setArray(9, c.createArrayOf("int4", new Integer[] {1, 2, 3}));
            try (ResultSet rs = ps.executeQuery()) { return m("row", rows(rs)); }
        }
    }

    static Map<String, Object> batch(Connection c) throws Exception {
        // executeBatch sends every Bind/Execute before reading any result.
        try (PreparedStatement ps = c.prepareStatement("INSERT INTO " + T + " (id, name, mood) VALUES (?, ?, ?::" + MOOD + ")")) {
            String[] moods = {"sad", "ok", "happy"};
            for (int i = 3; i < 13; i++) {
                ps.setInt(1, i);
                ps.setString(2, "item " + i);
                ps.setString(3, moods[i % 3]);
                ps.addBatch();
            }
            int[] counts = ps.executeBatch();
            Object failed = null;
            c.setAutoCommit(false);
            try (PreparedStatement bad = c.prepareStatement("INSERT INTO " + T + " (id, name) VALUES (?, ?)")) {
                for (int id : new int[] {100, 3, 101}) { bad.setInt(1, id); bad.setString(2, "batch"); bad.addBatch(); }
                bad.executeBatch();
            } catch (BatchUpdateException e) {
                failed = e.getNextException() != null ? e.getNextException().getSQLState() : e.getSQLState();
            }
            c.rollback();
            c.setAutoCommit(true);
            return m("counts", Arrays.stream(counts).boxed().toList(), "failed_batch_sqlstate", failed,
                    "count", scalar(c, "SELECT count(*) FROM " + T), "rows_of_failed_batch", scalar(c, "SELECT count(*) FROM " + T + " WHERE id IN (100, 101)"));
        }
    }

    static Map<String, Object> copyText(Connection c) throws Exception {
        CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
        long in = cm.copyIn("COPY " + T + " (id, name) FROM STDIN", new StringReader("200\tcopied a\n201\tcopied b\n202\twith \\t tab\n"));
        StringWriter out = new StringWriter();
        long outRows = cm.copyOut("COPY (SELECT id, name FROM " + T + " WHERE id >= 200 ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)", out);
        return m("copied_in", in, "copied_out", outRows, "out", out.toString());
    }

    static Map<String, Object> copyBinary(Connection c) throws Exception {
        CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
        ByteArrayOutputStream raw = new ByteArrayOutputStream();
        cm.copyOut("COPY (SELECT id, name, data FROM " + T + " WHERE id >= 200 ORDER BY id) TO STDOUT (FORMAT binary)", raw);
        byte[] b = raw.toByteArray();
        exec(c, "CREATE TEMP TABLE drv_jdbc_copy (id int, name text, data bytea)");
        long back = cm.copyIn("COPY drv_jdbc_copy FROM STDIN (FORMAT binary)", new ByteArrayInputStream(b));
        Object same = scalar(c, "SELECT count(*) FROM drv_jdbc_copy d JOIN " + T + " t ON t.id = d.id AND t.name = d.name");
        exec(c, "DROP TABLE drv_jdbc_copy");
        StringBuilder sha = new StringBuilder();
        for (byte x : MessageDigest.getInstance("SHA-256").digest(b)) sha.append(String.format("%02x", x));
        return m("out_bytes", b.length, "out_sha256", sha.toString(), "copied_back", back, "back_rows_equal", same);
    }

    static Map<String, Object> cursors(Connection c) throws Exception {
        c.setAutoCommit(false);
        try {
            List<Object> batches = new ArrayList<>();
            // A fetch size inside a transaction: a portal read 3 rows at a time.
            try (PreparedStatement ps = c.prepareStatement("SELECT id FROM " + T + " WHERE id < ? ORDER BY id")) {
                ps.setFetchSize(3);
                ps.setInt(1, 10);
                try (ResultSet rs = ps.executeQuery()) {
                    List<Object> ids = new ArrayList<>();
                    while (rs.next()) ids.add(rs.getInt(1));
                    batches.add(ids);
                }
            }
            exec(c, "DECLARE drv_sql CURSOR FOR SELECT id FROM " + T + " ORDER BY id");
            List<List<Object>> fetched = query(c, "FETCH 2 FROM drv_sql");
            exec(c, "CLOSE drv_sql");
            List<Object> scrolled = new ArrayList<>();
            try (Statement s = c.createStatement(ResultSet.TYPE_SCROLL_INSENSITIVE, ResultSet.CONCUR_READ_ONLY);
                 ResultSet rs = s.executeQuery("SELECT id FROM " + T + " ORDER BY id LIMIT 5")) {
                rs.last(); scrolled.add(rs.getInt(1));
                rs.absolute(2); scrolled.add(rs.getInt(1));
                rs.previous(); scrolled.add(rs.getInt(1));
            }
            c.commit();
            return m("fetch_size_rows", batches, "sql_fetch", fetched, "scrollable", scrolled);
        } finally {
            c.setAutoCommit(true);
        }
    }

    static Map<String, Object> listenNotify(Connection ignored) throws Exception {
        try (Connection listener = connect(); Connection notifier = connect()) {
            PGConnection pl = listener.unwrap(PGConnection.class);
            PGConnection pn = notifier.unwrap(PGConnection.class);
            exec(listener, "LISTEN " + CHANNEL);
            int npid = ((Number) scalar(notifier, "SELECT pg_backend_pid()")).intValue();
            int own = ((Number) scalar(listener, "SELECT pg_backend_pid()")).intValue();
            exec(notifier, "NOTIFY " + CHANNEL + ", 'hello'");
            exec(notifier, "SELECT pg_notify('" + CHANNEL + "', 'via pg_notify')");
            exec(listener, "NOTIFY " + CHANNEL + ", 'to myself'");
            List<PGNotification> got = new ArrayList<>();
            long deadline = System.currentTimeMillis() + 10000;
            while (got.size() < 3 && System.currentTimeMillis() < deadline) {
                PGNotification[] n = pl.getNotifications(500);
                if (n != null) got.addAll(Arrays.asList(n));
            }
            if (got.size() < 3) throw new StepFailed(got.size() + " of 3 notifications arrived within 10 s");
            exec(listener, "UNLISTEN " + CHANNEL);
            got.sort(Comparator.comparing(PGNotification::getParameter));
            List<Object> out = new ArrayList<>();
            for (PGNotification n : got) {
                boolean mine = n.getParameter().equals("to myself");
                out.add(m("channel", n.getName(), "payload", n.getParameter(),
                        "pid_matches_sender_pg_backend_pid", n.getPID() == (mine ? own : npid),
                        "pid_matches_sender_driver_pid", n.getPID() == (mine ? pl : pn).getBackendPID()));
            }
            return m("notifications", out);
        }
    }

    static Map<String, Object> cancel(Connection c) throws Exception {
        int pid = ((Number) scalar(c, "SELECT pg_backend_pid()")).intValue();
        AtomicReference<Object> result = new AtomicReference<>("not finished");
        try (Statement s = c.createStatement()) {
            Thread t = new Thread(() -> {
                try { s.execute("SELECT pg_sleep(30)"); result.set(null); } catch (SQLException e) { result.set(e.getSQLState()); }
            });
            t.start();
            waitActive(pid);
            s.cancel();
            t.join(30000);
            if (t.isAlive()) throw new StepFailed("the query did not end within 30 s of the cancel");
        }
        return m("sqlstate", result.get(), "after", scalar(c, "SELECT 'usable'"));
    }

    static Map<String, Object> largeObjectsApi(Connection c) throws Exception {
        // pgjdbc's LargeObjectManager: FunctionCall (fast-path) messages.
        c.setAutoCommit(false);
        try {
            LargeObjectManager lom = c.unwrap(PGConnection.class).getLargeObjectAPI();
            long oid = lom.createLO(LargeObjectManager.READWRITE);
            LargeObject lo = lom.open(oid, LargeObjectManager.READWRITE);
            lo.write("hello large object".getBytes(StandardCharsets.UTF_8));
            lo.seek(6);
            lo.write("LARGE".getBytes(StandardCharsets.UTF_8));
            lo.seek(0);
            String read = new String(lo.read(100), StandardCharsets.UTF_8);
            int size = lo.size();
            lo.close();
            lom.delete(oid);
            c.commit();
            return m("oid_is_positive", oid > 0, "read", read, "size", size);
        } finally {
            try { c.rollback(); } catch (SQLException e) { /* already ended */ }
            c.setAutoCommit(true);
        }
    }

    static Map<String, Object> largeObjectsSql(Connection c) throws Exception {
        c.setAutoCommit(false);
        try {
            long oid = ((Number) scalar(c, "SELECT lo_from_bytea(0, 'hello large object'::bytea)")).longValue();
            int fd = ((Number) scalar(c, "SELECT lo_open(" + oid + ", " + (0x20000 | 0x40000) + ")")).intValue();
            scalar(c, "SELECT lo_lseek(" + fd + ", 6, 0)");
            scalar(c, "SELECT lowrite(" + fd + ", 'LARGE'::bytea)");
            scalar(c, "SELECT lo_lseek(" + fd + ", 0, 0)");
            Object read = scalar(c, "SELECT convert_from(loread(" + fd + ", 100), 'UTF8')");
            scalar(c, "SELECT lo_close(" + fd + ")");
            c.commit();
            Object gone = scalar(c, "SELECT lo_unlink(" + oid + ")");
            c.commit();
            return m("oid_is_positive", oid > 0, "after_write", read, "unlinked", gone);
        } finally {
            c.setAutoCommit(true);
        }
    }

    static Map<String, Object> preparedByName(Connection c) throws Exception {
        String sql = "SELECT name FROM " + T + " WHERE id = ?";
        Object a;
        try (PreparedStatement ps = c.prepareStatement(sql)) {
            ps.unwrap(PGStatement.class).setPrepareThreshold(1);
            ps.setInt(1, 1);
            try (ResultSet rs = ps.executeQuery()) { a = rows(rs); }
            ps.setInt(1, 2);
            try (ResultSet rs = ps.executeQuery()) { rows(rs); }
            Object name = scalar(c, "SELECT name FROM pg_prepared_statements WHERE statement = 'SELECT name FROM " + T + " WHERE id = $1' AND NOT from_sql");
            if (name == null) throw new StepFailed("no protocol-level prepared statement on the server");
            Object bySql = query(c, "EXECUTE \"" + name + "\"(2)");
            exec(c, "PREPARE drv_sql_prepared(int) AS SELECT name FROM " + T + " WHERE id = $1");
            Object sqlPrepared = query(c, "EXECUTE drv_sql_prepared(3)");
            exec(c, "DEALLOCATE drv_sql_prepared");
            return m("protocol_prepared", a, "execute_by_sql", bySql, "sql_prepared", sqlPrepared);
        }
    }

    static Map<String, Object> types(Connection c) throws Exception {
        exec(c, "UPDATE " + T + " SET pair = ROW('x, y', 1.5)::" + PAIR + ", mood = 'happy' WHERE id = 3");
        Map<String, Object> out = new LinkedHashMap<>();
        try (PreparedStatement ps = c.prepareStatement("SELECT mood, pair, ARRAY['ok', 'sad']::" + MOOD + "[] AS moods FROM " + T + " WHERE id = ?")) {
            ps.setInt(1, 3);
            try (ResultSet rs = ps.executeQuery()) {
                ResultSetMetaData md = rs.getMetaData();
                List<Object> cols = new ArrayList<>();
                for (int i = 1; i <= md.getColumnCount(); i++) cols.add(Arrays.asList(md.getColumnName(i), md.getColumnTypeName(i), md.getColumnType(i)));
                out.put("columns", cols);
                out.put("rows", rows(rs));
            }
        }
        DatabaseMetaData dm = c.getMetaData();
        List<Object> cols = new ArrayList<>();
        try (ResultSet rs = dm.getColumns(null, "public", T, "%")) {
            while (rs.next()) cols.add(Arrays.asList(rs.getString("COLUMN_NAME"), rs.getString("TYPE_NAME"), rs.getInt("DATA_TYPE")));
        }
        out.put("metadata_columns", cols);
        List<Object> udts = new ArrayList<>();
        try (ResultSet rs = dm.getUDTs(null, "public", "drv_jdbc_%", null)) {
            while (rs.next()) udts.add(rs.getString("TYPE_NAME"));
        }
        out.put("udts", udts);
        try (PreparedStatement ps = c.prepareStatement("SELECT ?::" + PAIR)) {
            PGobject o = new PGobject();
            o.setType(PAIR);
            o.setValue("(y,2)");
            ps.setObject(1, o);
            try (ResultSet rs = ps.executeQuery()) { out.put("composite_param", rows(rs)); }
        }
        return out;
    }

    static Map<String, Object> transactions(Connection c) throws Exception {
        c.setAutoCommit(false);
        exec(c, "INSERT INTO " + T + " (id, name) VALUES (400, 'outer')");
        Savepoint sp = c.setSavepoint("s1");
        Object dup = null;
        try { exec(c, "INSERT INTO " + T + " (id, name) VALUES (400, 'duplicate')"); } catch (SQLException e) { dup = e.getSQLState(); }
        c.rollback(sp);
        exec(c, "INSERT INTO " + T + " (id, name) VALUES (401, 'after savepoint')");
        Savepoint unnamed = c.setSavepoint();
        exec(c, "INSERT INTO " + T + " (id, name) VALUES (402, 'released')");
        c.releaseSavepoint(unnamed);
        c.commit();
        c.setTransactionIsolation(Connection.TRANSACTION_SERIALIZABLE);
        c.setReadOnly(true);
        Object iso = scalar(c, "SHOW transaction_isolation");
        Object ro = null;
        try { exec(c, "DELETE FROM " + T + " WHERE id = 401"); } catch (SQLException e) { ro = e.getSQLState(); }
        c.rollback();
        c.setReadOnly(false);
        c.setTransactionIsolation(Connection.TRANSACTION_READ_COMMITTED);
        exec(c, "INSERT INTO " + T + " (id, name) VALUES (403, 'rolled back')");
        c.rollback();
        c.setAutoCommit(true);
        return m("duplicate", dup, "isolation", iso, "read_only_write", ro, "rows", query(c, "SELECT id, name FROM " + T + " WHERE id BETWEEN 400 AND 403 ORDER BY id"));
    }

    static Map<String, Object> errors(Connection c) throws Exception {
        List<Object> out = new ArrayList<>();
        for (String sql : new String[] {
            "INSERT INTO " + T + " (id, name) VALUES (1, 'again')",
            "INSERT INTO " + T + " (id, name) VALUES (999, repeat('x', 50))",
            "SELECT * FROM drv_no_such_table", "SELECT 1/0", "SELECT 'abc'::int",
        }) {
            try { exec(c, sql); out.add(m("sql", sql, "error", null)); } catch (SQLException e) {
                Map<String, Object> e2 = errorOf(e);
                e2.put("sql", sql);
                out.add(e2);
            }
        }
        out.add(m("after", scalar(c, "SELECT 'usable'")));
        return m("errors", out);
    }

    static Map<String, Object> syntaxError(Connection c) throws Exception {
        try { exec(c, "SELEC 1"); return m("error", null); } catch (SQLException e) { return errorOf(e); }
    }

    static Map<String, Object> notice(Connection c) throws Exception {
        List<Object> got = new ArrayList<>();
        try (Statement s = c.createStatement()) {
            s.execute("DO $$BEGIN RAISE NOTICE 'hello %', 42; RAISE WARNING 'careful'; END$$");
            for (SQLWarning w = s.getWarnings(); w != null; w = w.getNextWarning()) {
                Map<String, Object> e = errorOf(w);
                got.add(m("sqlstate", e.get("sqlstate"), "severity", e.get("severity"), "message", e.get("message")));
            }
        }
        return m("notices", got);
    }

    static Map<String, Object> tls(Connection ignored) throws Exception {
        // verify-full fails unless the connection is TLS with a certificate from the CA.
        try (Connection c = connect("sslmode", "verify-full", "sslrootcert", env("DRIVERS_CA", ""))) {
            return m("connected_with_verify_full", true, "server_sees_ssl", scalar(c, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"), "query", scalar(c, "SELECT 'over tls'"));
        }
    }

    static String json(Object v) {
        if (v == null) return "null";
        if (v instanceof Boolean || v instanceof Integer || v instanceof Long) return v.toString();
        if (v instanceof Map) {
            StringBuilder sb = new StringBuilder("{");
            for (Map.Entry<?, ?> e : new TreeMap<>((Map<?, ?>) v).entrySet()) {
                if (sb.length() > 1) sb.append(", ");
                sb.append(json(e.getKey().toString())).append(": ").append(json(e.getValue()));
            }
            return sb.append("}").toString();
        }
        if (v instanceof List) {
            StringBuilder sb = new StringBuilder("[");
            for (Object x : (List<?>) v) {
                if (sb.length() > 1) sb.append(", ");
                sb.append(json(x));
            }
            return sb.append("]").toString();
        }
        String s = v.toString();
        StringBuilder sb = new StringBuilder("\"");
        for (char ch : s.toCharArray()) {
            switch (ch) {
                case '"': sb.append("\\\""); break;
                case '\\': sb.append("\\\\"); break;
                case '\n': sb.append("\\n"); break;
                case '\r': sb.append("\\r"); break;
                case '\t': sb.append("\\t"); break;
                default:
                    if (ch < 0x20 || ch > 0x7e) sb.append(String.format("\\u%04x", (int) ch)); else sb.append(ch);
            }
        }
        return sb.append("\"").toString();
    }

    public static void main(String[] args) throws Exception {
        Map<String, Step> steps = new LinkedHashMap<>();
        steps.put("connect", PgjdbcSteps::connectStep);
        steps.put("setup", PgjdbcSteps::setup);
        steps.put("simple_query", PgjdbcSteps::simpleQuery);
        steps.put("extended_query", PgjdbcSteps::extendedQuery);
        steps.put("batch", PgjdbcSteps::batch);
        steps.put("copy_text", PgjdbcSteps::copyText);
        steps.put("copy_binary", PgjdbcSteps::copyBinary);
        steps.put("cursors", PgjdbcSteps::cursors);
        steps.put("listen_notify", PgjdbcSteps::listenNotify);
        steps.put("cancel", PgjdbcSteps::cancel);
        steps.put("large_objects_api", PgjdbcSteps::largeObjectsApi);
        steps.put("large_objects_sql", PgjdbcSteps::largeObjectsSql);
        steps.put("prepared_by_name", PgjdbcSteps::preparedByName);
        steps.put("types", PgjdbcSteps::types);
        steps.put("transactions", PgjdbcSteps::transactions);
        steps.put("errors", PgjdbcSteps::errors);
        steps.put("syntax_error", PgjdbcSteps::syntaxError);
        steps.put("notice", PgjdbcSteps::notice);
        steps.put("tls", PgjdbcSteps::tls);
        int failed = 0;
        Connection c = null;
        for (Map.Entry<String, Step> e : steps.entrySet()) {
            Map<String, Object> line = new TreeMap<>();
            line.put("driver", DRIVER);
            line.put("step", e.getKey());
            try {
                if (c == null || c.isClosed() || !c.isValid(5)) c = connect();
                line.putAll(e.getValue().run(c));
                line.put("ok", true);
            } catch (Exception x) {
                failed++;
                line.put("ok", false);
                line.put("error", x.getClass().getSimpleName() + ": " + x.getMessage());
                line.put("sqlstate", x instanceof SQLException ? ((SQLException) x).getSQLState() : null);
                try { if (c != null && !c.getAutoCommit()) { c.rollback(); c.setAutoCommit(true); } } catch (SQLException y) { c = null; }
            }
            System.out.println(json(line));
            System.out.flush();
        }
        if (c != null) c.close();
        System.exit(failed == 0 ? 0 : 1);
    }
}
