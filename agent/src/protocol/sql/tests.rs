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
    assert_eq!(
        info("SET search_path = 'a, b'").set_search_path,
        Some(s(&["a", "b"]))
    );
    assert!(info("RESET search_path").reset_search_path);
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
