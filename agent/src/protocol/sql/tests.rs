use super::*;
use crate::policy::StatementFacts;
use crate::policy::spec::StatementKind as K;

fn facts(sql: &str) -> Vec<StatementFacts> {
    let a = Analyzer::new(0).analyze(sql);
    assert!(a.error.is_none(), "{sql}: {:?}", a.error);
    let s = SqlSession::new("alice", None);
    a.statements
        .iter()
        .map(|st| s.facts_for(st).unwrap())
        .collect()
}

fn one(sql: &str) -> StatementFacts {
    let mut v = facts(sql);
    assert_eq!(v.len(), 1, "{sql}");
    v.remove(0)
}

fn info(sql: &str) -> StatementInfo {
    let a = Analyzer::new(0).analyze(sql);
    assert!(a.error.is_none(), "{sql}: {:?}", a.error);
    a.statements[0].clone()
}

#[test]
fn dump() {
    for sql in [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 12345",
        "WITH d AS (DELETE FROM accounts RETURNING *) SELECT * FROM d",
        "EXPLAIN ANALYZE DELETE FROM accounts",
        "EXPLAIN DELETE FROM accounts",
        "COPY (SELECT * FROM accounts) TO STDOUT",
        "INSERT INTO public.log SELECT * FROM accounts",
        "UPDATE accounts SET x = 1 FROM b WHERE accounts.id = b.id",
        "SELECT a.x, y FROM accounts a JOIN \"Weird\".\"T\" t ON a.id = t.id",
        "SELECT pg_catalog.pg_read_file('/etc/passwd')",
        "SELECT * FROM (SELECT lo_import('/x')) s",
        "CREATE RULE r AS ON INSERT TO accounts DO INSTEAD DELETE FROM audit",
        "CREATE TRIGGER t BEFORE INSERT ON accounts FOR EACH ROW EXECUTE FUNCTION f()",
        "DO $$ BEGIN DELETE FROM accounts; END $$",
        "WITH accounts AS (SELECT 1) SELECT * FROM accounts",
        "WITH x AS (SELECT * FROM accounts) SELECT * FROM x",
        "WITH accounts AS (SELECT * FROM accounts) SELECT * FROM accounts",
        "TABLE accounts",
        "DELETE FROM accounts WHERE 1 = 1",
        "PREPARE p AS DELETE FROM accounts",
        "MERGE INTO accounts a USING src s ON a.id = s.id WHEN MATCHED THEN DELETE",
        "SELECT * INTO x FROM accounts",
        "GRANT ALL ON ALL TABLES IN SCHEMA public TO bob",
    ] {
        let a = Analyzer::new(0).analyze(sql);
        println!("{sql}\n  {}", serde_json::to_string(&*a).unwrap());
    }
}
