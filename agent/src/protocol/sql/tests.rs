use std::sync::Arc;

use super::*;
use crate::policy::StatementFacts;
use crate::policy::spec::StatementKind as K;

fn analysis(sql: &str) -> Arc<Analysis> {
    let a = Analyzer::new(0).analyze(sql);
    assert!(a.error.is_none(), "{sql}: {:?}", a.error);
    a
}

/// Facts of each statement, unqualified (as analysed).
fn raw(sql: &str) -> Vec<StatementFacts> {
    analysis(sql)
        .statements
        .iter()
        .map(|s| s.facts.clone())
        .collect()
}

fn one(sql: &str) -> StatementFacts {
    let mut v = raw(sql);
    assert_eq!(v.len(), 1, "{sql}");
    v.remove(0)
}

fn info(sql: &str) -> StatementInfo {
    (*analysis(sql).statements[0]).clone()
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn kinds() {
    let cases: &[(&str, &[K])] = &[
        ("SELECT 1", &[K::Select]),
        ("INSERT INTO t VALUES (1)", &[K::Insert]),
        ("UPDATE t SET a = 1 WHERE b = 2", &[K::Update]),
        ("DELETE FROM t WHERE a = 1", &[K::Delete]),
        (
            "MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE",
            &[K::Merge],
        ),
        ("TRUNCATE t", &[K::Truncate]),
        ("COPY t TO STDOUT", &[K::Copy]),
        ("COPY (SELECT * FROM t) TO STDOUT", &[K::Copy, K::Select]),
        ("CREATE TABLE t (a int)", &[K::Create]),
        ("CREATE INDEX i ON t (a)", &[K::Create]),
        (
            "CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql",
            &[K::Create],
        ),
        ("ALTER TABLE t ADD COLUMN b int", &[K::Alter]),
        ("DROP TABLE t", &[K::Drop]),
        ("DROP FUNCTION f", &[K::Drop]),
        ("GRANT SELECT ON t TO bob", &[K::Grant]),
        ("REVOKE SELECT ON t FROM bob", &[K::Revoke]),
        ("SET work_mem = '1MB'", &[K::Set]),
        ("RESET work_mem", &[K::Reset]),
        ("SET ROLE admin", &[K::SetRole]),
        ("SET SESSION AUTHORIZATION admin", &[K::SetRole]),
        ("BEGIN", &[K::Begin]),
        ("START TRANSACTION", &[K::Begin]),
        ("COMMIT", &[K::Commit]),
        ("END", &[K::Commit]),
        ("ROLLBACK", &[K::Rollback]),
        ("ABORT", &[K::Rollback]),
        ("ROLLBACK TO SAVEPOINT s", &[K::Rollback]),
        ("SAVEPOINT s", &[K::Savepoint]),
        ("RELEASE SAVEPOINT s", &[K::Savepoint]),
        ("CALL p(1)", &[K::Call]),
        ("DO $$ BEGIN END $$", &[K::Do]),
        ("EXPLAIN SELECT 1", &[K::Explain]),
        ("EXPLAIN DELETE FROM t", &[K::Explain]),
        ("EXPLAIN ANALYZE DELETE FROM t", &[K::Explain, K::Delete]),
        ("EXPLAIN (ANALYZE) DELETE FROM t", &[K::Explain, K::Delete]),
        ("EXPLAIN (ANALYZE false) DELETE FROM t", &[K::Explain]),
        ("PREPARE p AS SELECT 1", &[K::Prepare, K::Select]),
        ("EXECUTE p", &[K::Execute]),
        ("LISTEN c", &[K::Listen]),
        ("NOTIFY c", &[K::Notify]),
        ("UNLISTEN c", &[K::Notify]),
        ("VACUUM t", &[K::Vacuum]),
        ("ANALYZE t", &[K::Vacuum]),
        ("SHOW search_path", &[K::Other]),
        (
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            &[K::Select, K::Delete],
        ),
        (
            "WITH x AS (SELECT 1) DELETE FROM t WHERE a IN (SELECT * FROM x)",
            &[K::Delete],
        ),
        ("INSERT INTO t SELECT * FROM u", &[K::Insert]),
        ("SELECT * INTO n FROM t", &[K::Select, K::Create]),
        ("CREATE TABLE n AS SELECT * FROM t", &[K::Create, K::Select]),
        (
            "CREATE RULE r AS ON INSERT TO t DO INSTEAD NOTHING",
            &[K::Create],
        ),
        (
            "CREATE TRIGGER g BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
            &[K::Create],
        ),
    ];
    for (sql, want) in cases {
        assert_eq!(one(sql).kinds, *want, "{sql}");
    }
}

#[test]
fn tables_read_and_written() {
    let cases: &[(&str, &[&str], &[&str])] = &[
        ("SELECT * FROM a JOIN b ON a.id = b.id", &["a", "b"], &[]),
        (
            "SELECT * FROM s.a, (SELECT * FROM b) x WHERE EXISTS (SELECT 1 FROM c)",
            &["s.a", "b", "c"],
            &[],
        ),
        ("SELECT * FROM \"Mixed\".\"Case\"", &["Mixed.Case"], &[]),
        ("SELECT * FROM db.s.t", &["s.t"], &[]),
        ("INSERT INTO t SELECT * FROM u", &["u"], &["t"]),
        ("INSERT INTO t VALUES (1) RETURNING *", &["t"], &["t"]),
        (
            "UPDATE t SET a = 1 FROM u WHERE t.id = u.id",
            &["t", "u"],
            &["t"],
        ),
        ("UPDATE t SET a = 1", &[], &["t"]),
        (
            "DELETE FROM t USING u WHERE t.id = u.id",
            &["t", "u"],
            &["t"],
        ),
        ("DELETE FROM t", &[], &["t"]),
        (
            "MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE",
            &["t", "u"],
            &["t"],
        ),
        ("COPY t TO STDOUT", &["t"], &[]),
        ("COPY t FROM STDIN", &[], &["t"]),
        ("TRUNCATE a, s.b", &[], &["a", "s.b"]),
        ("DROP TABLE a, s.b", &[], &["a", "s.b"]),
        ("DROP SCHEMA s CASCADE", &[], &["s.*"]),
        ("ALTER TABLE a ADD COLUMN c int", &[], &["a"]),
        ("CREATE INDEX i ON a (c)", &[], &["a"]),
        ("GRANT SELECT ON a TO bob", &[], &["a"]),
        (
            "GRANT SELECT ON ALL TABLES IN SCHEMA s TO bob",
            &[],
            &["s.*"],
        ),
        ("WITH x AS (SELECT * FROM a) SELECT * FROM x", &["a"], &[]),
        ("WITH a AS (SELECT 1) SELECT * FROM a", &[], &[]),
        // A CTE body does not see its own name (non-recursive): the real table.
        ("WITH a AS (SELECT * FROM a) SELECT * FROM a", &["a"], &[]),
        // A CTE is only visible in its query: the outer `a` is the table.
        (
            "SELECT * FROM a, (WITH a AS (SELECT 1) SELECT * FROM a) x",
            &["a"],
            &[],
        ),
        // A qualified name is never a CTE.
        (
            "WITH a AS (SELECT 1) SELECT * FROM public.a",
            &["public.a"],
            &[],
        ),
        (
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            &["t"],
            &["t"],
        ),
        ("EXPLAIN DELETE FROM t", &["t"], &[]),
        ("EXPLAIN ANALYZE DELETE FROM t", &[], &["t"]),
        (
            "CREATE RULE r AS ON INSERT TO t DO ALSO INSERT INTO log SELECT * FROM new",
            &[],
            &["t", "log"],
        ),
        (
            "CREATE TRIGGER g BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
            &[],
            &["t"],
        ),
    ];
    for (sql, r, w) in cases {
        let f = one(sql);
        assert_eq!((f.tables_read, f.tables_written), (s(r), s(w)), "{sql}");
    }
}

#[test]
fn functions_and_dangerous() {
    let i = info("SELECT pg_catalog.pg_read_file('/etc/passwd'), upper(x) FROM t");
    assert_eq!(
        i.facts.functions,
        s(&["pg_read_file", "pg_catalog.pg_read_file", "upper"])
    );
    assert_eq!(i.dangerous, s(&["pg_read_file"]));
    for (sql, d) in [
        ("SELECT * FROM pg_ls_dir('/')", "pg_ls_dir"),
        (
            "SELECT x FROM t WHERE y IN (SELECT lo_import('/x'))",
            "lo_import",
        ),
        ("SELECT dblink_exec('x', 'y')", "dblink_exec"),
        (
            "SELECT query_to_xml('select 1', true, false, '')",
            "query_to_xml",
        ),
        ("SELECT \"set_config\"('a', 'b', false)", "set_config"),
        ("COPY t TO PROGRAM 'x'", "copy_program"),
        ("COPY t FROM '/etc/passwd'", "copy_file"),
        ("LOAD 'x'", "load"),
        ("ALTER SYSTEM SET a = 1", "alter_system"),
        ("CALL pg_catalog.pg_reload_conf()", "pg_reload_conf"),
    ] {
        let i = info(sql);
        assert!(
            i.dangerous.iter().any(|x| x == d),
            "{sql}: {:?}",
            i.dangerous
        );
        // Features are functions too, so a `functions` condition can refuse them.
        assert!(
            i.facts.functions.iter().any(|x| x == d),
            "{sql}: {:?}",
            i.facts.functions
        );
    }
    assert!(info("SELECT upper('a')").dangerous.is_empty());
}

#[test]
fn where_less_and_columns() {
    assert!(one("DELETE FROM t").where_less);
    assert!(one("UPDATE t SET a = 1").where_less);
    assert!(one("DELETE FROM t WHERE true").where_less);
    assert!(one("DELETE FROM t WHERE 1 = 1").where_less);
    assert!(!one("DELETE FROM t WHERE id = 1").where_less);
    assert!(one("WITH d AS (DELETE FROM t RETURNING *) SELECT 1").where_less);
    assert!(!one("EXPLAIN DELETE FROM t").where_less);
    assert!(!one("SELECT * FROM t").where_less);
    let f = one("SELECT a.x, y FROM people a WHERE a.ssn = '1'");
    assert_eq!(f.columns, s(&["people.x", "people.y", "people.ssn"]));
}

#[test]
fn fingerprints_replace_literals() {
    assert_eq!(
        info("select abalance from pgbench_accounts where aid = 12345").fingerprint,
        "SELECT abalance FROM pgbench_accounts WHERE aid = ?"
    );
    assert_eq!(
        info("SELECT 'secret', 1.5, $1 FROM t WHERE a IN (1, 2)").fingerprint,
        "SELECT ?, ?, ? FROM t WHERE a IN (?, ?)"
    );
    // The same statement with other literals has the same fingerprint.
    assert_eq!(
        info("SELECT * FROM t WHERE a = 1").fingerprint,
        info("SELECT  *  FROM t WHERE a = 'x'").fingerprint
    );
    assert_eq!(info("DO $$ secret $$").fingerprint, "DO ?");
}

#[test]
fn multiple_statements_comments_and_unparseable() {
    let a = analysis("SELECT 1; /* ; */ DELETE FROM t -- ;\n; SELECT 2");
    assert_eq!(a.statements.len(), 3);
    let a = Analyzer::new(0).analyze("SELECT 1; SELEKT 2");
    assert!(a.error.is_some() && a.statements.is_empty());
    // sqlparser would read what follows COPY FROM STDIN as data.
    let f = raw("COPY t FROM STDIN; DELETE FROM accounts");
    assert_eq!(f.len(), 2);
    assert_eq!(f[1].tables_written, s(&["accounts"]));
    let a = analysis("");
    assert!(a.statements.is_empty());
}

#[test]
fn prepare_execute_deallocate_and_search_path() {
    let p = info("PREPARE q(int) AS DELETE FROM t WHERE id = $1");
    let (name, inner) = p.prepare.clone().expect("prepare");
    assert_eq!(name, "q");
    assert_eq!(inner.facts.kinds, vec![K::Delete]);
    assert_eq!(info("EXECUTE q(1)").execute.as_deref(), Some("q"));
    assert_eq!(info("DEALLOCATE q").deallocate, Some(Some("q".into())));
    assert_eq!(info("DEALLOCATE ALL").deallocate, Some(None));
    assert_eq!(
        info("SET search_path TO \"$user\", Public, \"Odd\"").set_search_path,
        Some(s(&["$user", "public", "Odd"]))
    );
    // A string is one name as it stands: the server quotes each value.
    assert_eq!(
        info("SET search_path = 'a, b'").set_search_path,
        Some(s(&["a, b"]))
    );
    assert!(info("RESET search_path").reset_search_path);
}

/// `SET search_path` values read as the server reads them, or refused.
#[test]
fn search_path_values_are_read_as_the_server_reads_them() {
    let long = "x".repeat(70);
    let cases: &[(&str, &[&str])] = &[
        ("SET search_path = private", &["private"]),
        ("SET search_path = PRIVATE, \"Odd\"", &["private", "Odd"]),
        ("SET search_path TO 'Private'", &["Private"]),
        // A string holding quotes names a schema with quotes in its name.
        (
            "SET search_path = '\"$user\"', private",
            &["\"$user\"", "private"],
        ),
        ("SET search_path = '$user', \"$user\"", &["$user", "$user"]),
        ("SET search_path = 'it''s'", &["it's"]),
        ("SET search_path = ''", &[""]),
        ("SET \"Search_Path\" = private", &["private"]),
        ("SET search_path = \"default\"", &["default"]),
        ("SET search_path = 'default'", &["default"]),
        ("SET search_path = 007", &["7"]),
        ("SET search_path = 99999999999", &["99999999999"]),
    ];
    for (t, want) in cases {
        assert_eq!(info(t).set_search_path, Some(s(want)), "{t}");
        assert_eq!(info(t).pinned_setting, None, "{t}");
        assert!(!info(t).reset_search_path, "{t}");
    }
    // Names are truncated to 63 bytes, as the server truncates them.
    let t = format!("SET search_path = '{long}', {long}");
    assert_eq!(
        info(&t).set_search_path,
        Some(vec!["x".repeat(63), "x".repeat(63)])
    );
    assert!(info("SET search_path TO DEFAULT").reset_search_path);
    // Forms the agent does not read with certainty are refused, whatever the
    // policy says.
    for t in [
        r"SET search_path = E'priv\x61te'",
        r"SET search_path = e'private'",
        r"SET search_path = U&'priv\0061te'",
        "SET search_path = $$private$$",
        "SET search_path = $x$private$x$",
        "SET search_path = private, $$public$$",
        "SET search_path = 1.5",
    ] {
        let a = Analyzer::new(0).analyze(t);
        if a.error.is_some() {
            continue;
        }
        let i = &a.statements[0];
        assert!(i.pinned_setting.is_some(), "{t}: {i:?}");
        assert!(i.set_search_path.is_none(), "{t}");
        let sess = SqlSession::new("app", None);
        assert!(sess.facts_for(i).is_err(), "{t}");
    }
}

/// `set_config('search_path', list, ...)`: the list split as the server splits it.
#[test]
fn set_config_search_path_lists_are_split_as_the_server_splits_them() {
    let cases: &[(&str, &[&str])] = &[
        ("'\"$user\", public'", &["$user", "public"]),
        ("'Private,\"A, \"\"b\"\"\"'", &["private", "A, \"b\""]),
        ("'  a ,\tb  '", &["a", "b"]),
        ("''", &[]),
        ("'\"\"'", &[""]),
    ];
    for (list, want) in cases {
        let t = format!("SELECT set_config('search_path', {list}, false)");
        assert_eq!(info(&t).set_search_path, Some(s(want)), "{t}");
        assert_eq!(info(&t).pinned_setting, None, "{t}");
    }
    // Lists the server rejects (or reads by version) are refused.
    for list in ["'a,'", "'a b'", "'\"a'", "',a'", "'a\u{b}'", "E'a'"] {
        let t = format!("SELECT set_config('search_path', {list}, false)");
        let i = info(&t);
        assert!(i.pinned_setting.is_some(), "{t}");
    }
}

#[test]
fn session_qualifies_and_resolves_prepared() {
    let mut sess = SqlSession::new("alice", None);
    let sel = info("SELECT * FROM accounts, x.y");
    let f = sess.facts_for(&sel).unwrap();
    assert_eq!(
        f.tables_read,
        s(&[
            "pg_catalog.accounts",
            "alice.accounts",
            "public.accounts",
            "x.y"
        ])
    );
    // EXECUTE of an unknown name is an error.
    assert!(sess.facts_for(&info("EXECUTE q")).is_err());
    let prep = info("PREPARE q AS DELETE FROM accounts WHERE id = 1");
    sess.completed(&prep);
    let f = sess.facts_for(&info("EXECUTE q")).unwrap();
    assert_eq!(f.kinds, vec![K::Execute, K::Delete]);
    assert!(f.tables_written.contains(&"public.accounts".to_string()));
    // The server re-analyses a prepared statement under the search_path in
    // force when it runs: EXECUTE is qualified with it...
    sess.completed(&info("SET search_path TO private"));
    let f = sess.facts_for(&info("EXECUTE q")).unwrap();
    assert!(f.tables_written.contains(&"private.accounts".to_string()));
    // ...and so are plain statements (every path ever set counts).
    let f = sess.facts_for(&sel).unwrap();
    assert!(f.tables_read.contains(&"private.accounts".to_string()));
    assert!(f.tables_read.contains(&"public.accounts".to_string()));
    sess.completed(&info("DEALLOCATE q"));
    assert!(sess.facts_for(&info("EXECUTE q")).is_err());
    sess.completed(&prep);
    sess.completed(&info("DISCARD ALL"));
    assert!(sess.prepared_names().is_empty());
    // A startup search_path replaces the default.
    let sess = SqlSession::new("bob", Some("\"App\", audit"));
    assert_eq!(sess.candidate_schemas(), s(&["pg_catalog", "App", "audit"]));
}

#[test]
fn cache_is_bounded_and_shared() {
    let a = Analyzer::new(100);
    let first = a.analyze("SELECT 1");
    assert!(Arc::ptr_eq(&first, &a.analyze("SELECT 1")));
    for i in 0..10_000 {
        a.analyze(&format!("SELECT {i}"));
        assert!(a.cached() <= 100);
    }
    // Long texts are not cached.
    let long = format!("SELECT '{}'", "x".repeat(cache::MAX_CACHED_TEXT));
    let before = a.cached();
    a.analyze(&long);
    assert!(a.cached() <= before.max(100));
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Analyzer>();
}

#[test]
fn never_panics() {
    let a = Analyzer::new(0);
    let nasty = [
        "(".repeat(10_000),
        "SELECT ".to_string() + &"(".repeat(5_000) + "1" + &")".repeat(5_000),
        "\0\u{ffff}'".to_string(),
        "$$".to_string(),
        "/* unterminated".to_string(),
        "'unterminated".to_string(),
        "CREATE RULE".to_string(),
        "CREATE RULE r AS ON".to_string(),
        "CREATE RULE r AS ON INSERT TO t DO INSTEAD (".to_string(),
        ";;;".to_string(),
        "U&'\\".to_string(),
        "SELECT 1 FROM t WHERE a = ".to_string() + &"NOT ".repeat(10_000) + "true",
        "SELECT ".to_string() + &"-".repeat(10_001) + "1",
        "SELECT ".to_string() + &"ARRAY[".repeat(10_000),
        "SELECT ".to_string() + &"CAST(".repeat(40) + "1" + &")".repeat(40),
        "SELECT ".to_string() + &"ROW(".repeat(40),
    ];
    for n in &nasty {
        let _ = a.analyze(n);
    }
    // Every prefix of some real statements.
    let text = "WITH d AS (DELETE FROM t WHERE id = $1 RETURNING *) SELECT pg_catalog.f(x, 'y') FROM d; COPY t FROM STDIN; DO $x$ a $x$";
    for i in 0..=text.len() {
        if text.is_char_boundary(i) {
            let _ = a.analyze(&text[..i]);
        }
    }
}

#[test]
fn crafted_nesting_is_refused_quickly() {
    let a = Analyzer::new(0);
    for text in [
        "SELECT ".to_string() + &"CAST(".repeat(16) + "1" + &")".repeat(16),
        "SELECT ".to_string() + &"CAST(".repeat(16),
        "SELECT ".to_string() + &"ARRAY[".repeat(25),
        format!("SELECT {}", vec!["f(g(h(i(j(1)))))"; 100].join(", ")),
    ] {
        let t = std::time::Instant::now();
        let r = a.analyze(&text);
        assert!(r.error.is_some(), "{text}");
        assert!(
            t.elapsed() < std::time::Duration::from_millis(500),
            "{text}"
        );
    }
    // Ordinary nesting still parses.
    assert!(
        a.analyze("SELECT coalesce(nullif(trim(lower(x)), ''), 'n/a') FROM t")
            .error
            .is_none()
    );
}

// ---- grants: least privilege ------------------------------------------------------

/// "W may select reading public.orders", plus the session statements it needs.
const LEAST_PRIVILEGE: &str = r#"
apiVersion: portcullis.dev/v1
workloads:
  - name: w
    match: { uid: 1000 }
targets:
  - name: pg
    addresses: ["127.0.0.1"]
    ports: [5432]
    protocol: postgres
rules:
  - id: w-reads-orders
    workloads: [w]
    targets: [pg]
    effect: allow
    when: { sql: { statements: [select], tables_read: ["public.orders"] } }
  - id: w-session
    workloads: [w]
    targets: [pg]
    effect: allow
    when: { sql: { statements: [begin, commit, prepare, execute] } }
"#;

fn grants_policy(text: &str) -> crate::policy::CompiledPolicy {
    crate::policy::CompiledPolicy::from_sources_with(
        &[(std::path::PathBuf::from("grants.yaml"), text.to_string())],
        &|_| Err("no DNS in tests".into()),
    )
    .unwrap_or_else(|e| panic!("policy: {e}"))
}

/// Decides `sql` as one message on `session`, as the proxy does.
fn decide_on(
    p: &crate::policy::CompiledPolicy,
    session: &SqlSession,
    sql: &str,
) -> crate::policy::Decision {
    let subject = crate::policy::Subject {
        uid: Some(1000),
        ..Default::default()
    };
    let a = Analyzer::new(0).analyze(sql);
    decide_message(p, &subject, 0, 0, session, &a).decision
}

/// Each statement: refused by `default-deny`, naming the privilege no rule grants.
#[test]
fn an_allow_grants_only_what_it_names() {
    let p = grants_policy(LEAST_PRIVILEGE);
    // The search_path names public only, so unqualified names are public.x.
    let session = SqlSession::new("app", Some("public"));
    for sql in [
        "SELECT * FROM orders",
        "SELECT id, total FROM public.orders WHERE id = 1",
        "SELECT 1",
        "SELECT count(*), sum(total), now(), coalesce(max(id), 0) FROM orders",
        "SELECT * FROM orders, LATERAL generate_series(1, 2)",
        "SELECT o.id FROM orders o WHERE o.id IN (SELECT id FROM public.orders)",
        "WITH recent AS (SELECT * FROM orders) SELECT * FROM recent",
        "EXPLAIN SELECT * FROM orders",
    ] {
        let d = decide_on(&p, &session, sql);
        if sql.starts_with("EXPLAIN") {
            // explain is not granted.
            assert_eq!(d.rule, "default-deny", "{sql}: {d:?}");
            assert_eq!(d.reason.as_deref(), Some("explain is granted by no rule"));
            continue;
        }
        assert_eq!(
            (d.outcome, d.rule.as_str()),
            (crate::policy::Outcome::Allow, "w-reads-orders"),
            "{sql}: {d:?}"
        );
        assert!(!d.grants.is_empty(), "{sql}: the grants used are recorded");
    }
    let refused: &[(&str, &str)] = &[
        (
            "SELECT * FROM orders o JOIN customers c ON c.id = o.customer_id",
            "select on public.customers",
        ),
        (
            "SELECT id FROM orders UNION SELECT id FROM customers",
            "select on public.customers",
        ),
        (
            "SELECT id FROM orders EXCEPT SELECT id FROM public.customers",
            "select on public.customers",
        ),
        (
            "SELECT * FROM orders WHERE customer_id IN (SELECT id FROM customers)",
            "select on public.customers",
        ),
        (
            "SELECT (SELECT max(id) FROM customers) FROM orders",
            "select on public.customers",
        ),
        (
            "SELECT * FROM orders WHERE EXISTS (SELECT 1 FROM customers)",
            "select on public.customers",
        ),
        (
            "SELECT * FROM (SELECT * FROM customers) AS s, orders",
            "select on public.customers",
        ),
        (
            "WITH c AS (SELECT * FROM customers) SELECT * FROM orders, c",
            "select on public.customers",
        ),
        (
            "SELECT * FROM customer_view",
            "select on public.customer_view",
        ),
        (
            "WITH x AS (DELETE FROM orders RETURNING *) SELECT * FROM x",
            "delete on public.orders",
        ),
        (
            "WITH x AS (UPDATE orders SET total = 0 WHERE id = 1 RETURNING *) SELECT * FROM x",
            "update on public.orders",
        ),
        ("SELECT * INTO t3 FROM orders", "create on public.t3"),
        (
            "CREATE TABLE t2 AS SELECT * FROM orders",
            "create on public.t2",
        ),
        (
            "CREATE VIEW v AS SELECT * FROM customers",
            "create on public.v",
        ),
        (
            "INSERT INTO orders SELECT * FROM customers",
            "insert on public.orders",
        ),
        (
            "MERGE INTO orders o USING customers c ON o.id = c.id WHEN MATCHED THEN DELETE",
            "merge",
        ),
        ("COPY orders TO STDOUT", "copy"),
        ("COPY (SELECT * FROM orders) TO STDOUT", "copy"),
        ("SELECT * FROM orders FOR UPDATE", "update on public.orders"),
        ("EXPLAIN ANALYZE DELETE FROM orders WHERE id = 1", "explain"),
        (
            "SELECT transfer_funds(1, 2) FROM orders",
            "execute public.transfer_funds",
        ),
        (
            "SELECT * FROM orders WHERE audit.log_access(id)",
            "execute audit.log_access",
        ),
        ("SELECT * FROM orders, my_srf(1)", "execute public.my_srf"),
        (
            "SELECT pg_read_file('/etc/passwd') FROM orders",
            "execute pg_catalog.pg_read_file",
        ),
        (
            "SELECT nextval('orders_id_seq')",
            "execute pg_catalog.nextval",
        ),
        ("SELECT lo_get(16384)", "execute pg_catalog.lo_get"),
        (
            "SELECT currval('orders_id_seq')",
            "execute pg_catalog.currval",
        ),
        ("SELECT pg_sleep(600)", "execute pg_catalog.pg_sleep"),
        (
            "SELECT pg_advisory_lock(1)",
            "execute pg_catalog.pg_advisory_lock",
        ),
        ("DO $$ BEGIN DELETE FROM orders; END $$", "do"),
        ("SET ROLE admin", "set_role"),
        ("CALL archive_orders()", "call"),
    ];
    for (sql, missing) in refused {
        let d = decide_on(&p, &session, sql);
        assert_eq!(
            (d.outcome, d.rule.as_str()),
            (crate::policy::Outcome::Deny, "default-deny"),
            "{sql}: {d:?}"
        );
        assert_eq!(
            d.reason.as_deref(),
            Some(format!("{missing} is granted by no rule").as_str()),
            "{sql}: {d:?}"
        );
    }
    // `TABLE customers` is refused: unparseable, or (where it parses) for the
    // select on public.customers no rule grants.
    let d = decide_on(&p, &session, "TABLE customers");
    assert_eq!(d.outcome, crate::policy::Outcome::Deny, "{d:?}");
    assert!(
        d.rule == "unparseable"
            || d.reason.as_deref() == Some("select on public.customers is granted by no rule"),
        "{d:?}"
    );
    // `ONLY customers` (the parser would read a table `only`) and `customers*`
    // (inheritance syntax) are not analysed: refused as unparseable.
    for sql in [
        "SELECT * FROM ONLY customers",
        "SELECT * FROM orders JOIN ONLY customers ON true",
        "DELETE FROM ONLY orders WHERE id = 1",
        "SELECT * FROM customers*",
    ] {
        let d = decide_on(&p, &session, sql);
        assert_eq!(
            (d.outcome, d.rule.as_str()),
            (crate::policy::Outcome::Deny, "unparseable"),
            "{sql}: {d:?}"
        );
    }
}

/// With a grant for each table, the join runs; the decision names the first
/// grant and records every grant used.
#[test]
fn several_grants_cover_one_statement() {
    let text = LEAST_PRIVILEGE.to_string()
        + r#"
  - id: w-reads-customers
    workloads: [w]
    targets: [pg]
    effect: allow
    when: { sql: { statements: [select], tables: ["public.customers"] } }
  - id: no-card-numbers
    workloads: [w]
    targets: [pg]
    effect: deny
    when: { sql: { columns: ["public.customers.pan"] } }
"#;
    let p = grants_policy(&text);
    let session = SqlSession::new("app", Some("public"));
    let d = decide_on(
        &p,
        &session,
        "SELECT * FROM orders o JOIN customers c ON c.id = o.customer_id",
    );
    assert_eq!(
        (d.outcome, d.rule.as_str()),
        (crate::policy::Outcome::Allow, "w-reads-orders"),
        "{d:?}"
    );
    let used: Vec<(&str, &str)> = d
        .grants
        .iter()
        .map(|g| (g.privilege.as_str(), g.rule.as_str()))
        .collect();
    assert_eq!(
        used,
        vec![
            ("select on public.orders", "w-reads-orders"),
            ("select on public.customers", "w-reads-customers"),
        ]
    );
    // Deny keeps its any-match meaning: one denied column refuses the statement.
    let d = decide_on(
        &p,
        &session,
        "SELECT o.id, c.pan FROM orders o JOIN customers c ON c.id = o.customer_id",
    );
    assert_eq!(
        (d.outcome, d.rule.as_str()),
        (crate::policy::Outcome::Deny, "no-card-numbers"),
        "{d:?}"
    );
}

/// An unqualified name may resolve to any schema of the search_path: every one
/// of them must be granted (here `$user` is `app`, which no rule grants).
#[test]
fn an_unqualified_name_needs_every_schema_it_may_resolve_to() {
    let p = grants_policy(LEAST_PRIVILEGE);
    let session = SqlSession::new("app", None);
    let d = decide_on(&p, &session, "SELECT * FROM orders");
    assert_eq!(d.rule, "default-deny", "{d:?}");
    assert_eq!(
        d.reason.as_deref(),
        Some(
            "select on app.orders (an unqualified name may resolve to it on the search_path) is granted by no rule"
        )
    );
    // Qualified, it is the granted table.
    let d = decide_on(&p, &session, "SELECT * FROM public.orders");
    assert_eq!(d.rule, "w-reads-orders", "{d:?}");
    // A catalog relation resolves to pg_catalog (searched first), and a
    // built-in function is the built-in.
    let show = |f: &StatementFacts| -> Vec<String> {
        f.privileges.iter().map(|p| p.to_string()).collect()
    };
    let sql = "SELECT lower(relname), nextval('s') FROM pg_class";
    let f = session.facts_for(&info(sql)).unwrap();
    assert_eq!(
        show(&f),
        vec![
            "execute pg_catalog.nextval",
            "select on pg_catalog.pg_class"
        ]
    );
    // A search_path naming pg_catalog after another schema lets that schema's
    // tables and functions shadow the catalog's: each is a candidate.
    let mut shadowed = SqlSession::new("app", Some("public"));
    shadowed.completed(&info("SET search_path = public, pg_catalog"));
    let f = shadowed.facts_for(&info(sql)).unwrap();
    assert_eq!(
        show(&f),
        vec![
            "execute public.lower",
            "execute pg_catalog.nextval or public.nextval",
            "select on pg_catalog.pg_class or public.pg_class",
        ]
    );
}

/// PREPARE is decided on what it prepares, EXECUTE on what was prepared.
#[test]
fn prepared_statements_carry_their_privileges() {
    let p = grants_policy(LEAST_PRIVILEGE);
    let mut session = SqlSession::new("app", Some("public"));
    let prep = "PREPARE q AS SELECT * FROM orders WHERE id = $1";
    let d = decide_on(&p, &session, prep);
    assert_eq!(d.outcome, crate::policy::Outcome::Allow, "{d:?}");
    session.completed(&info(prep));
    let d = decide_on(&p, &session, "EXECUTE q(1)");
    assert_eq!(d.outcome, crate::policy::Outcome::Allow, "{d:?}");
    let d = decide_on(
        &p,
        &session,
        "PREPARE r AS DELETE FROM orders WHERE id = $1",
    );
    assert_eq!(
        d.reason.as_deref(),
        Some("delete on public.orders is granted by no rule"),
        "{d:?}"
    );
    // A parameter of EXECUTE calling a function exercises it too.
    let d = decide_on(&p, &session, "EXECUTE q(transfer_funds(1, 2))");
    assert_eq!(
        d.reason.as_deref(),
        Some("execute public.transfer_funds is granted by no rule"),
        "{d:?}"
    );
}

#[test]
fn privileges_of_statements() {
    let cases: &[(&str, &[&str])] = &[
        ("SELECT 1", &["select"]),
        ("SELECT * FROM s.t", &["select on s.t"]),
        ("INSERT INTO t VALUES (1)", &["insert on t"]),
        (
            "INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET a = 2 RETURNING id",
            &["insert on t", "update on t", "select on t"],
        ),
        ("UPDATE t SET a = 1", &["update on t"]),
        ("UPDATE t SET a = b", &["update on t", "select on t"]),
        (
            "UPDATE t SET a = 1 FROM u WHERE t.id = u.id",
            &["update on t", "select on t", "select on u"],
        ),
        ("DELETE FROM t WHERE a = 1", &["delete on t", "select on t"]),
        (
            "DELETE FROM t USING u WHERE t.id = u.id",
            &["delete on t", "select on t", "select on u"],
        ),
        (
            "MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN UPDATE SET a = 1 WHEN NOT MATCHED THEN INSERT (id) VALUES (u.id)",
            &[
                "merge",
                "update on t",
                "insert on t",
                "select on t",
                "select on u",
            ],
        ),
        ("TRUNCATE a, b", &["truncate on a", "truncate on b"]),
        ("COPY t TO STDOUT", &["copy", "select on t"]),
        ("COPY t FROM STDIN", &["copy", "insert on t"]),
        (
            "COPY t TO PROGRAM 'id'",
            &["copy", "select on t", "execute copy_program"],
        ),
        ("CREATE TABLE s.t (a int)", &["create on s.t"]),
        ("CREATE INDEX i ON t (a)", &["create on t"]),
        ("CREATE SCHEMA s", &["create on s.*"]),
        ("ALTER TABLE t ADD COLUMN b int", &["alter on t"]),
        ("DROP TABLE t, s.u", &["drop on t", "drop on s.u"]),
        (
            "DROP SCHEMA s CASCADE",
            &[
                "drop on the objects that depend on it (CASCADE)",
                "drop on s.*",
            ],
        ),
        (
            "TRUNCATE a CASCADE",
            &[
                "truncate on a",
                "truncate on the tables that reference it (CASCADE)",
            ],
        ),
        ("DROP ROLE bob", &["drop on role bob"]),
        ("GRANT SELECT ON t TO bob", &["grant on t"]),
        (
            "GRANT EXECUTE ON FUNCTION f() TO bob",
            &["grant on objects the agent does not analyse (roles, functions, databases, ...)"],
        ),
        ("VACUUM", &["vacuum on every table"]),
        ("BEGIN", &["begin"]),
        ("SET work_mem = '64MB'", &["set"]),
        ("SELECT f(1)", &["select", "execute f"]),
        (
            "SELECT pg_catalog.upper('a'), lower('b'), now()",
            &["select"],
        ),
        (
            "SELECT pg_catalog.pg_read_file('x')",
            &["select", "execute pg_catalog.pg_read_file"],
        ),
        ("SELECT dblink('x', 'y')", &["select", "execute dblink"]),
        ("CALL p()", &["call", "execute p"]),
        (
            "EXPLAIN DELETE FROM t WHERE a = 1",
            &["explain", "select on t"],
        ),
        (
            "EXPLAIN ANALYZE DELETE FROM t WHERE a = 1",
            &["explain", "delete on t", "select on t"],
        ),
        ("DO $$ BEGIN NULL; END $$", &["do"]),
        (
            "ALTER SYSTEM SET work_mem = '1GB'",
            &["execute alter_system", "alter on the server configuration"],
        ),
    ];
    for (sql, want) in cases {
        // Harmless built-ins are dropped when a session qualifies the statement.
        let got: Vec<String> = one(sql)
            .privileges
            .iter()
            .filter(|p| {
                !matches!(
                    p.on,
                    crate::policy::grants::On::Builtin {
                        privileged: false,
                        ..
                    }
                )
            })
            .map(|p| p.to_string())
            .collect();
        assert_eq!(got, *want, "{sql}");
    }
}

/// "W may insert into public.orders" no longer lets it copy an ungranted table
/// into orders, and a write granted on orders does not grant writing elsewhere.
#[test]
fn a_write_grant_does_not_grant_what_the_write_reads() {
    let text = r#"
apiVersion: portcullis.dev/v1
workloads:
  - name: w
    match: { uid: 1000 }
targets:
  - name: pg
    addresses: ["127.0.0.1"]
    ports: [5432]
    protocol: postgres
rules:
  - id: w-inserts-orders
    workloads: [w]
    targets: [pg]
    effect: allow
    when: { sql: { statements: [insert], tables_written: ["public.orders"] } }
"#;
    let p = grants_policy(text);
    let session = SqlSession::new("app", Some("public"));
    let d = decide_on(&p, &session, "INSERT INTO orders (id) VALUES (1)");
    assert_eq!(d.rule, "w-inserts-orders", "{d:?}");
    for (sql, missing) in [
        (
            "INSERT INTO orders SELECT * FROM customers",
            "select on public.customers",
        ),
        (
            "INSERT INTO orders (id) VALUES (1) RETURNING *",
            "select on public.orders",
        ),
        (
            "WITH c AS (DELETE FROM customers RETURNING id) INSERT INTO orders (id) SELECT id FROM c",
            "delete on public.customers",
        ),
        (
            "INSERT INTO orders (id) VALUES ((SELECT max(id) FROM customers))",
            "select on public.customers",
        ),
    ] {
        let d = decide_on(&p, &session, sql);
        assert_eq!(
            d.reason.as_deref(),
            Some(format!("{missing} is granted by no rule").as_str()),
            "{sql}: {d:?}"
        );
    }
}

/// `FROM ONLY t` was read as a table named `only`: a deny on `t` did not match.
#[test]
fn from_only_cannot_slip_past_a_deny() {
    let text = r#"
apiVersion: portcullis.dev/v1
workloads:
  - name: w
    match: { uid: 1000 }
targets:
  - name: pg
    addresses: ["127.0.0.1"]
    ports: [5432]
    protocol: postgres
rules:
  - id: w-connects
    workloads: [w]
    targets: [pg]
    effect: allow
  - id: no-customers
    workloads: [w]
    targets: [pg]
    effect: deny
    when: { sql: { tables: ["public.customers"] } }
"#;
    let p = grants_policy(text);
    let session = SqlSession::new("app", Some("public"));
    let d = decide_on(&p, &session, "SELECT * FROM customers");
    assert_eq!(d.rule, "no-customers", "{d:?}");
    for sql in [
        "SELECT * FROM ONLY customers",
        "SELECT * FROM orders, ONLY customers",
        "UPDATE orders SET total = 0 FROM ONLY customers WHERE customers.id = orders.id",
    ] {
        let d = decide_on(&p, &session, sql);
        assert_eq!(
            (d.outcome, d.rule.as_str()),
            (crate::policy::Outcome::Deny, "unparseable"),
            "{sql}: {d:?}"
        );
    }
}

/// Texts that sqlparser cannot parse whole (DO, CHECKPOINT, CREATE RULE, ...) are
/// split at semicolons; each piece is the text as written, so strings with
/// doubled quotes or escapes keep hiding nothing and showing nothing extra.
#[test]
fn the_split_at_semicolons_reads_each_piece_as_written() {
    for sql in [
        "DO $$BEGIN END$$; SELECT E'\\'--', * FROM accounts",
        "DO $$BEGIN END$$; SELECT 'a'';--', * FROM accounts",
        "DO $$BEGIN END$$; SELECT \"a\"\";--\" FROM accounts",
        "DO $$BEGIN END$$; SELECT U&'\\0027;--', * FROM accounts",
        "CHECKPOINT; SELECT 'x'';DELETE FROM orders;--' FROM accounts -- c",
    ] {
        let f = raw(sql);
        assert_eq!(f.len(), 2, "{sql}: two statements, got {f:?}");
        assert_eq!(f[1].tables_read, s(&["accounts"]), "{sql}: {f:?}");
        assert!(f[1].tables_written.is_empty(), "{sql}: {f:?}");
    }
    let i = analysis("DO $$BEGIN END$$; DELETE FROM audit WHERE what = E'\\'--' OR true");
    assert_eq!(i.statements.len(), 2);
    assert!(
        i.statements[1].fingerprint.ends_with("OR ?"),
        "the condition after the string is read: {}",
        i.statements[1].fingerprint
    );
    let f =
        raw("DO $$BEGIN END$$; SELECT E'esc\\'; DELETE FROM orders; --' ; SELECT 2; CHECKPOINT");
    assert_eq!(f.len(), 4, "{f:?}");
    assert!(
        f.iter().all(|x| x.tables_written.is_empty()),
        "no DELETE runs: {f:?}"
    );
}

/// Where the parser sees fewer statements than the text has between semicolons,
/// or reads a Unicode-escaped identifier as other names, the text is refused.
#[test]
fn statements_the_parser_would_miss_are_refused() {
    // The parser reads this as two statements: the text is read piece by piece.
    let f = raw("CREATE TEMP VIEW vv3 AS TABLE accounts; CHECKPOINT; SELECT 1");
    assert_eq!(f.len(), 3, "{f:?}");
    assert_eq!(f[1].kinds, vec![K::Other], "{f:?}");
    for sql in [
        "SELECT * FROM orders o LEFT JOIN LATERAL (TABLE U&\"\\0061ccounts\") x ON true",
        "SELECT * FROM u&\"\\0061ccounts\"",
    ] {
        let a = Analyzer::new(0).analyze(sql);
        assert!(a.error.is_some(), "{sql}: refused, got {a:?}");
    }
    // Empty statements and a trailing semicolon are no statements.
    assert_eq!(raw("SELECT 1;; SELECT 2;").len(), 2);
    // `U & "x"` with spaces is an operator, not an identifier.
    assert_eq!(raw("SELECT u & \"x\" FROM t").len(), 1);
}

/// Tables a statement reaches without reading or writing rows are named too, so
/// a rule on them matches: LIKE and INHERITS sources, the table of a column
/// comment, and every table whose rows are locked (a lock needs UPDATE, as a
/// write does).
#[test]
fn tables_reached_by_ddl_comments_and_row_locks_are_named() {
    let f = one("CREATE TEMP TABLE t_like (LIKE accounts)");
    assert!(f.tables_read.contains(&"accounts".to_string()), "{f:?}");
    let f = one("CREATE TEMP TABLE t_inh () INHERITS (PRIVATE.Accounts)");
    assert!(
        f.tables_read.contains(&"private.accounts".to_string()),
        "{f:?}"
    );
    let f = one("COMMENT ON COLUMN audit.id IS 'x'");
    assert_eq!(f.tables_written, s(&["audit"]), "{f:?}");
    // (FOR NO KEY UPDATE and FOR KEY SHARE do not parse: refused as unparseable.)
    for lock in ["FOR UPDATE", "FOR SHARE", "FOR UPDATE NOWAIT"] {
        let f = one(&format!("SELECT * FROM orders {lock}"));
        assert_eq!(f.tables_written, s(&["orders"]), "{lock}: {f:?}");
    }
    // A plain EXPLAIN locks nothing.
    let f = one("EXPLAIN SELECT * FROM orders FOR UPDATE");
    assert!(f.tables_written.is_empty(), "{f:?}");
}

// ---- statements sqlparser does not parse, read by the agent's recognisers -----------------

fn privileges(f: &StatementFacts) -> Vec<String> {
    f.privileges.iter().map(|p| p.to_string()).collect()
}

fn refused(sql: &str) -> String {
    let a = Analyzer::new(0).analyze(sql);
    a.error
        .clone()
        .unwrap_or_else(|| panic!("{sql}: expected a refusal, got {:?}", a.statements))
}

#[test]
fn move_and_fetch_in_every_direction() {
    for t in [
        "MOVE c",
        "MOVE FORWARD 5 c",
        "MOVE FORWARD ALL FROM c",
        "MOVE BACKWARD IN c",
        "MOVE BACKWARD -2 c",
        "MOVE NEXT FROM c",
        "MOVE PRIOR c",
        "MOVE FIRST IN \"Cur\"",
        "MOVE LAST c",
        "MOVE ABSOLUTE -1 c",
        "MOVE RELATIVE +3 IN c",
        "MOVE ALL c",
        "MOVE 10 c",
        "FETCH c",
        "FETCH -1 c",
        "FETCH ALL c",
        "FETCH PRIOR c",
        "FETCH ABSOLUTE -1 c",
        "FETCH FORWARD c",
    ] {
        let f = one(t);
        assert_eq!(f.kinds, vec![K::Other], "{t}");
        assert!(
            f.tables_read.is_empty() && f.tables_written.is_empty(),
            "{t}"
        );
        assert_eq!(privileges(&f), vec!["other"], "{t}");
    }
    // Nothing may follow the cursor's name; a statement after a semicolon is
    // decided on its own.
    for t in [
        "MOVE FORWARD 5 c DELETE FROM t",
        "MOVE c d",
        "MOVE FORWARD x c",
        "MOVE ABSOLUTE c",
        "MOVE 1.5 c",
        "MOVE FROM",
    ] {
        let e = refused(t);
        assert!(
            e.contains("`MOVE`") && e.contains("defaults.unparseable: allow"),
            "{t}: {e}"
        );
    }
    let v = raw("MOVE c; DELETE FROM t WHERE id = 1");
    assert_eq!(v.len(), 2);
    assert_eq!(v[1].kinds, vec![K::Delete]);
}

#[test]
fn alter_type_names_the_type_and_what_cascade_reaches() {
    let f = one(
        "ALTER TYPE s.t ADD ATTRIBUTE a varchar(10) COLLATE \"C\", DROP ATTRIBUTE IF EXISTS b, ALTER ATTRIBUTE c SET DATA TYPE numeric(10, 2)",
    );
    assert_eq!(f.kinds, vec![K::Alter]);
    assert_eq!(f.tables_written, s(&["s.t"]));
    assert_eq!(privileges(&f), vec!["alter on s.t"]);
    let f = one("alter type \"T\" drop attribute b cascade");
    assert_eq!(f.tables_written, s(&["T"]));
    assert_eq!(
        privileges(&f),
        vec!["alter on T", "alter on the tables typed by it (CASCADE)"]
    );
    assert_eq!(
        privileges(&one("ALTER TYPE t SET SCHEMA private")),
        vec!["alter on t", "create on private.*"]
    );
    for t in [
        "ALTER TYPE t RENAME ATTRIBUTE a TO b",
        "ALTER TYPE t OWNER TO app",
        "ALTER TYPE t ADD ATTRIBUTE a double precision[]",
        "ALTER TYPE t ALTER ATTRIBUTE a TYPE timestamp with time zone",
    ] {
        assert_eq!(one(t).kinds, vec![K::Alter], "{t}");
    }
    // Expressions cannot be written there: anything like one is not read.
    for t in [
        "ALTER TYPE t ADD ATTRIBUTE a int DEFAULT 1",
        "ALTER TYPE t ADD ATTRIBUTE a int CHECK (f(1) > 0)",
        "ALTER TYPE t ADD ATTRIBUTE a text COLLATE 'x'",
        "ALTER TYPE t SET (storage = extended)",
        "ALTER TYPE t ADD ATTRIBUTE a int,",
    ] {
        assert!(refused(t).contains("`ALTER TYPE`"), "{t}");
    }
}

#[test]
fn create_and_alter_domain_take_the_facts_of_their_expressions() {
    let f = one("CREATE DOMAIN d int NOT NULL");
    assert_eq!(f.kinds, vec![K::Create]);
    assert_eq!(privileges(&f), vec!["create on d"]);
    let f = one(
        "create domain s.d as int constraint nn not null default public.next_id() check (pg_read_file('/etc/passwd') is not null) null",
    );
    assert_eq!(privileges(&f)[0], "create on s.d");
    assert!(f.functions.contains(&"public.next_id".to_string()), "{f:?}");
    assert!(f.functions.contains(&"pg_read_file".to_string()), "{f:?}");
    assert!(
        info("CREATE DOMAIN d AS text NOT NULL CHECK (length(pg_read_file('x')) > 0)")
            .dangerous
            .contains(&"pg_read_file".to_string())
    );
    // A subquery in a DEFAULT is read (the server refuses it, the agent reports it).
    let f = one("CREATE DOMAIN d int NOT NULL DEFAULT (SELECT max(id) FROM private.accounts)");
    assert!(
        f.tables_read.contains(&"private.accounts".to_string()),
        "{f:?}"
    );
    for t in [
        "CREATE DOMAIN d AS int NOT NULL DEFAULT 1 DEFAULT 2",
        "CREATE DOMAIN d AS int NOT NULL CHECK",
        "CREATE DOMAIN d AS int NOT NULL UNIQUE",
        "CREATE DOMAIN d AS int NOT NULL CHECK (a) NO INHERIT",
    ] {
        assert!(refused(t).contains("`CREATE DOMAIN`"), "{t}");
    }

    let scans = "select on the columns of every table that uses the domain (checked against the constraint)";
    let f = one("ALTER DOMAIN d ADD CONSTRAINT c CHECK (VALUE > public.lim())");
    assert_eq!(f.kinds, vec![K::Alter]);
    assert_eq!(f.tables_written, s(&["d"]));
    assert!(privileges(&f).contains(&scans.to_string()), "{f:?}");
    assert!(f.functions.contains(&"public.lim".to_string()), "{f:?}");
    let f = one("ALTER DOMAIN d ADD CHECK (VALUE > 0) NOT VALID");
    assert!(!privileges(&f).contains(&scans.to_string()), "{f:?}");
    assert!(privileges(&one("ALTER DOMAIN d SET NOT NULL")).contains(&scans.to_string()));
    assert!(privileges(&one("ALTER DOMAIN d VALIDATE CONSTRAINT c")).contains(&scans.to_string()));
    assert!(
        one("ALTER DOMAIN d SET DEFAULT pg_read_file('x')")
            .functions
            .contains(&"pg_read_file".to_string())
    );
    for t in [
        "ALTER DOMAIN d DROP DEFAULT",
        "ALTER DOMAIN d DROP NOT NULL",
        "ALTER DOMAIN d DROP CONSTRAINT IF EXISTS c CASCADE",
        "ALTER DOMAIN d RENAME CONSTRAINT a TO b",
        "ALTER DOMAIN d RENAME TO e",
        "ALTER DOMAIN d OWNER TO app",
        "ALTER DOMAIN d SET SCHEMA private",
    ] {
        assert_eq!(one(t).kinds, vec![K::Alter], "{t}");
    }
    for t in [
        "ALTER DOMAIN d SET DEFAULT 1 2",
        "ALTER DOMAIN d ADD CHECK (VALUE > 0) extra",
        "ALTER DOMAIN d SET DEFAULT set_config('search_path', 'private', false)",
    ] {
        assert!(refused(t).contains("`ALTER DOMAIN`"), "{t}");
    }
}

#[test]
fn copy_where_takes_the_facts_of_its_condition() {
    let i = info(
        "COPY orders FROM STDIN (FORMAT binary) WHERE pg_read_file('/etc/passwd') IS NOT NULL",
    );
    assert_eq!(i.facts.kinds, vec![K::Copy]);
    assert_eq!(i.facts.tables_written, s(&["orders"]));
    assert!(i.dangerous.contains(&"pg_read_file".to_string()), "{i:?}");
    assert!(
        privileges(&i.facts).contains(&"execute pg_catalog.pg_read_file".to_string()),
        "{i:?}"
    );
    let f = one(
        "copy t (a, b) from stdin with (format csv, freeze on) where a in (select id from private.accounts)",
    );
    assert!(
        f.tables_read.contains(&"private.accounts".to_string()),
        "{f:?}"
    );
    assert!(
        info("COPY t FROM PROGRAM 'id' WHERE a > 1")
            .dangerous
            .contains(&"copy_program".to_string())
    );
    for t in [
        "COPY t TO STDOUT WHERE a > 1",
        "COPY t FROM STDIN WHERE",
        "COPY t FROM STDIN WHERE a > 1 WHERE b",
        "COPY t FROM STDIN WHERE a > 1 b",
    ] {
        assert!(refused(t).contains("`COPY`"), "{t}");
    }
}

#[test]
fn create_role_with_the_options_of_the_server_grammar() {
    let f = one(
        "CREATE USER \"we\"\"ird; DROP TABLE t; --\" WITH PASSWORD 'a'';DELETE FROM t;--' IN ROLE admin, \"Ops\" CONNECTION LIMIT -1",
    );
    assert_eq!(f.kinds, vec![K::Create]);
    assert_eq!(
        privileges(&f),
        vec![
            "create on role we\"ird; DROP TABLE t; --",
            "grant on membership in role admin",
            "grant on membership in role Ops"
        ]
    );
    for t in [
        "CREATE USER u PASSWORD 'x'",
        "CREATE USER u ENCRYPTED PASSWORD 'x' VALID UNTIL 'infinity' SUPERUSER",
        "CREATE ROLE u PASSWORD NULL NOLOGIN SYSID 7",
        "CREATE GROUP g USER a, b",
        "create role r admin a role b",
    ] {
        assert_eq!(one(t).kinds, vec![K::Create], "{t}");
    }
    for t in [
        "CREATE USER u \"v\" PASSWORD 'x'",
        "CREATE USER u WITH \"SUPERUSER\" PASSWORD 'x'",
        "CREATE USER u PASSWORD 'x' DELETE",
        "CREATE USER u PASSWORD x",
        "CREATE USER s.u PASSWORD 'x'",
    ] {
        assert!(refused(t).contains("`CREATE USER`"), "{t}");
    }
}

#[test]
fn empty_target_lists_are_read_as_the_server_reads_them() {
    assert_eq!(one("SELECT").kinds, vec![K::Select]);
    assert_eq!(raw("SELECT; SELECT;").len(), 2);
    let i = info("SELECT WHERE pg_read_file('/etc/passwd') IS NOT NULL");
    assert!(i.dangerous.contains(&"pg_read_file".to_string()));
    // The fingerprint is the text as written, with no placeholder target.
    assert_eq!(i.fingerprint, "SELECT WHERE pg_read_file(?) IS NOT NULL");
    // `SELECT INTO t FROM u` creates t (sqlparser alone reads a column `into`).
    let f = one("SELECT INTO private.stolen FROM accounts");
    assert!(f.kinds.contains(&K::Create), "{f:?}");
    assert_eq!(f.tables_written, s(&["private.stolen"]));
    let f = one("select all into temp x from t where a > 1");
    assert_eq!(f.tables_written, s(&["x"]));
    for t in [
        "SELECT GROUP BY 1",
        "SELECT HAVING true",
        "SELECT ORDER BY 1",
        "SELECT LIMIT 1",
        "SELECT OFFSET 1",
        "SELECT UNION SELECT",
        "SELECT a FROM t WHERE EXISTS (SELECT WHERE t.a = 1)",
        "WITH x AS (SELECT) SELECT",
        "DECLARE c CURSOR FOR SELECT",
    ] {
        assert!(!raw(t).is_empty(), "{t}");
    }
    // SELECT as a privilege is not a query.
    let f = one("GRANT SELECT ON t TO u");
    assert_eq!(f.kinds, vec![K::Grant]);
}

#[test]
fn ddl_scripts_mixing_recognised_statements_are_decided_statement_by_statement() {
    let v = raw(
        "CREATE TYPE ct AS (a int); ALTER TYPE ct ADD ATTRIBUTE b text; CREATE DOMAIN d int NOT NULL; \
         ALTER DOMAIN d SET DEFAULT 0; CREATE USER u PASSWORD 'p'; SELECT; MOVE c; DELETE FROM accounts WHERE id = 1",
    );
    let kinds: Vec<K> = v.iter().map(|f| f.kinds[0]).collect();
    assert_eq!(
        kinds,
        vec![
            K::Create,
            K::Alter,
            K::Create,
            K::Alter,
            K::Create,
            K::Select,
            K::Other,
            K::Delete
        ]
    );
    // One statement the agent cannot read refuses the whole text, naming it.
    let e = refused("CREATE DOMAIN d int NOT NULL; ALTER TYPE t SET (storage = plain); SELECT 1");
    assert!(
        e.contains("cannot analyse this `ALTER TYPE` statement")
            && e.contains("`defaults.unparseable: allow`"),
        "{e}"
    );
    assert_eq!(
        Analyzer::new(0)
            .analyze("ALTER TYPE t SET (storage = plain)")
            .unanalysed
            .as_deref(),
        Some("ALTER TYPE")
    );
}
