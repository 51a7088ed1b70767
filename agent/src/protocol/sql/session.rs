//! Per-session SQL state: prepared statements and the search_path.
//!
//! Prepared statements have one namespace, as in the server: a name prepared
//! by SQL `PREPARE` can be bound by the protocol's Bind, and one prepared by the
//! protocol's Parse can be run by SQL `EXECUTE`; `DEALLOCATE`, `DISCARD ALL` and
//! Close remove names from it whichever way they were prepared. What a
//! prepared statement names is qualified when it runs, with the search_path in
//! force then: the server re-analyses a prepared statement when the search_path
//! changed since its last use.

use std::collections::HashMap;
use std::sync::Arc;

use super::analyze::{Analysis, StatementInfo};
use crate::policy::StatementFacts;
use crate::policy::spec::StatementKind as K;

/// At most this many prepared statements are remembered per session; beyond it,
/// a SQL PREPARE is still decided but its EXECUTE is refused (unknown name), and
/// a protocol Parse is refused.
pub const MAX_PREPARED: usize = 1024;

/// A prepared statement, by SQL `PREPARE` or the protocol's Parse.
#[derive(Debug)]
pub struct Prepared {
    /// The statement's text (for SQL `PREPARE`: its fingerprint, literal-free).
    pub text: Arc<str>,
    /// Its analysis (one statement, or none for an empty text); unqualified.
    pub analysis: Arc<Analysis>,
}
/// At most this many distinct schemas are tracked as possibly on the search_path;
/// beyond it every statement naming an unqualified table is refused.
pub const MAX_SCHEMAS: usize = 64;

/// The SQL state of one client session, kept by the proxy.
#[derive(Debug, Clone)]
pub struct SqlSession {
    user: String,
    /// Every schema any search_path of this session has named, in order of first
    /// appearance (`$user` resolved). A `SET` inside a transaction that is rolled
    /// back, or a `SET LOCAL`, reverts in the server without a trace on the wire
    /// the agent could rely on, so the agent assumes that any search_path the
    /// session ever set may still be in effect.
    schemas: Vec<String>,
    /// `pg_catalog`, then `schemas`: what an unqualified name may resolve to.
    candidates: Vec<String>,
    overflow: bool,
    /// Prepared statements of both protocols, by name.
    prepared: HashMap<String, Arc<Prepared>>,
}

impl SqlSession {
    /// `user`: the database user of the session (for `"$user"`); `search_path`:
    /// the `search_path` startup option, if the client sent one (`options=-c
    /// search_path=...` or the parameter itself).
    pub fn new(user: &str, search_path: Option<&str>) -> Self {
        let mut s = SqlSession {
            user: user.to_string(),
            schemas: Vec::new(),
            candidates: vec!["pg_catalog".to_string()],
            overflow: false,
            prepared: HashMap::new(),
        };
        match search_path {
            Some(p) => {
                let list = parse_path_list(p);
                s.add_schemas(&list);
            }
            None => s.add_schemas(&["$user".to_string(), "public".to_string()]),
        }
        s
    }

    fn add_schemas(&mut self, list: &[String]) {
        for n in list {
            let n = if n == "$user" {
                self.user.clone()
            } else {
                n.clone()
            };
            if n.is_empty() || self.schemas.contains(&n) {
                continue;
            }
            if self.schemas.len() >= MAX_SCHEMAS {
                self.overflow = true;
                continue;
            }
            if !self.candidates.contains(&n) {
                self.candidates.push(n.clone());
            }
            self.schemas.push(n);
        }
    }

    /// Schemas an unqualified name may resolve to (pg_catalog first, as the server
    /// searches it first unless the path names it).
    pub fn candidate_schemas(&self) -> &[String] {
        &self.candidates
    }

    fn qualify(&self, facts: &StatementFacts) -> Result<StatementFacts, String> {
        let schemas = &self.candidates;
        fn join(a: &str, b: &str) -> String {
            let mut n = String::with_capacity(a.len() + 1 + b.len());
            n.push_str(a);
            n.push('.');
            n.push_str(b);
            n
        }
        let unqualified = facts
            .tables_read
            .iter()
            .chain(&facts.tables_written)
            .any(|t| !t.contains('.'))
            || facts.privileges.iter().any(|p| p.unqualified());
        if unqualified && self.overflow {
            return Err(format!(
                "the session set more than {MAX_SCHEMAS} schemas on its search_path; unqualified names are refused"
            ));
        }
        let q = |list: &[String]| {
            let mut out: Vec<String> = Vec::with_capacity(list.len() * schemas.len());
            for t in list {
                if t.contains('.') {
                    if !out.contains(t) {
                        out.push(t.clone());
                    }
                } else {
                    for s in schemas {
                        let n = join(s, t);
                        if !out.contains(&n) {
                            out.push(n);
                        }
                    }
                }
            }
            out
        };
        let mut columns = Vec::new();
        for c in &facts.columns {
            // `table.column` → `schema.table.column` per candidate; `column` and
            // `schema.table.column` as they are.
            if c.matches('.').count() == 1 {
                for s in schemas {
                    let n = join(s, c);
                    if !columns.contains(&n) {
                        columns.push(n);
                    }
                }
            }
            if !columns.contains(c) {
                columns.push(c.clone());
            }
        }
        Ok(StatementFacts {
            kinds: facts.kinds.clone(),
            tables_read: q(&facts.tables_read),
            tables_written: q(&facts.tables_written),
            columns,
            functions: facts.functions.clone(),
            where_less: facts.where_less,
            privileges: crate::policy::grants::qualify(
                &facts.privileges,
                schemas,
                self.schemas.iter().any(|s| s == "pg_catalog"),
            ),
        })
    }

    /// Facts to decide for a statement in this session: `EXECUTE name` → the
    /// prepared statement's facts (an unknown name is an error, which the proxy
    /// turns into a deny); unqualified tables qualified by every schema the
    /// search_path may name now.
    pub fn facts_for(&self, s: &StatementInfo) -> Result<StatementFacts, String> {
        // A change of a pinned setting is refused whatever it touches (the
        // PostgreSQL proxy refuses it in monitor mode too).
        if let Some(why) = &s.pinned_setting {
            return Err(why.clone());
        }
        if let Some(name) = &s.execute {
            let Some(p) = self.prepared.get(name) else {
                return Err(format!(
                    "EXECUTE of `{name}`, which this session has not prepared (as far as the agent saw)"
                ));
            };
            if let Some(e) = &p.analysis.error {
                return Err(format!(
                    "EXECUTE of `{name}`, whose statement the agent could not analyse ({e})"
                ));
            }
            let mut f = match p.analysis.statements.as_slice() {
                [] => StatementFacts::default(),
                [one] => self.qualify(&one.facts)?,
                _ => {
                    return Err(format!(
                        "EXECUTE of `{name}`, which holds several statements"
                    ));
                }
            };
            // Kinds: execute, then what the prepared statement does.
            f.kinds.retain(|k| *k != K::Prepare);
            f.kinds.insert(0, K::Execute);
            // Parameters of EXECUTE are expressions too (functions in them run).
            for x in &s.facts.functions {
                if !f.functions.contains(x) {
                    f.functions.push(x.clone());
                }
            }
            // Privileges: what the prepared statement exercises, `execute`, and
            // the functions of the parameters.
            f.privileges
                .retain(|p| *p != crate::policy::grants::Privilege::statement(K::Prepare));
            for p in self.qualify(&s.facts)?.privileges {
                crate::policy::grants::push(&mut f.privileges, p);
            }
            return Ok(f);
        }
        self.qualify(&s.facts)
    }

    /// The prepared statement `name`, whichever way it was prepared.
    pub fn prepared(&self, name: &str) -> Option<&Arc<Prepared>> {
        self.prepared.get(name)
    }

    /// Remembers `p` under `name` (a protocol Parse, before the server
    /// answers); returns what the name meant before, to put back with
    /// [`restore`](Self::restore) if the server does not carry it out. `Err`
    /// beyond [`MAX_PREPARED`] names.
    pub fn prepare(
        &mut self,
        name: &str,
        p: Arc<Prepared>,
    ) -> Result<Option<Arc<Prepared>>, String> {
        if self.prepared.len() >= MAX_PREPARED && !self.prepared.contains_key(name) {
            return Err(format!(
                "the session has {MAX_PREPARED} prepared statements, the most the agent follows; close some first"
            ));
        }
        Ok(self.prepared.insert(name.to_string(), p))
    }

    /// Puts back what `name` meant before a Parse the server did not carry out.
    pub fn restore(&mut self, name: String, before: Option<Arc<Prepared>>) {
        match before {
            Some(p) => {
                self.prepared.insert(name, p);
            }
            None => {
                self.prepared.remove(&name);
            }
        }
    }

    /// A protocol Close of statement `name`.
    pub fn close(&mut self, name: &str) {
        self.prepared.remove(name);
    }

    /// After the server completed the statement successfully.
    pub fn completed(&mut self, s: &StatementInfo) {
        if let Some((name, inner)) = &s.prepare
            && (self.prepared.len() < MAX_PREPARED || self.prepared.contains_key(name))
        {
            let p = Prepared {
                text: Arc::from(inner.fingerprint.as_str()),
                analysis: Arc::new(Analysis {
                    statements: vec![Arc::new((**inner).clone())],
                    error: None,
                    unanalysed: None,
                }),
            };
            self.prepared.insert(name.clone(), Arc::new(p));
        }
        match &s.deallocate {
            Some(Some(name)) => {
                self.prepared.remove(name);
            }
            Some(None) => self.prepared.clear(),
            None => {}
        }
        if let Some(p) = &s.set_search_path {
            self.add_schemas(p);
        }
        // RESET / DISCARD ALL go back to the startup path, already among the schemas.
    }

    /// A search_path the server reported (ParameterStatus, from servers that
    /// report it): its schemas may be in effect from now on.
    pub fn server_search_path(&mut self, path: &str) {
        let list = parse_path_list(path);
        self.add_schemas(&list);
    }

    /// Names of the prepared statements (for tests and the proxy).
    #[allow(dead_code)]
    pub fn prepared_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.prepared.keys().cloned().collect();
        v.sort();
        v
    }
}

/// A search_path as the startup option or the server gives it (`"$user", public`),
/// split as the server splits it (`"a,b"` is one schema). A list the server's
/// rules would not accept is split at every comma (the candidates then include
/// more names, never fewer).
fn parse_path_list(p: &str) -> Vec<String> {
    if let Some(list) = super::analyze::path_list(p) {
        return list;
    }
    p.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
                s[1..s.len() - 1].to_string()
            } else {
                s.to_ascii_lowercase()
            }
        })
        .collect()
}

#[cfg(test)]
mod path_tests {
    use super::parse_path_list;

    #[test]
    fn a_reported_search_path_is_split_as_the_server_splits_it() {
        assert_eq!(
            parse_path_list("\"a,b\", Public, \"$user\""),
            vec!["a,b".to_string(), "public".to_string(), "$user".to_string()]
        );
        assert_eq!(parse_path_list("\"x\"\"y\""), vec!["x\"y".to_string()]);
    }
}

#[cfg(test)]
mod namespace_tests {
    use super::*;
    use crate::protocol::sql::Analyzer;

    fn info(sql: &str) -> Arc<StatementInfo> {
        let a = Analyzer::new(0).analyze(sql);
        assert!(a.error.is_none(), "{sql}: {:?}", a.error);
        a.statements[0].clone()
    }

    fn parsed(sql: &str) -> Arc<Prepared> {
        Arc::new(Prepared {
            text: Arc::from(sql),
            analysis: Analyzer::new(0).analyze(sql),
        })
    }

    #[test]
    fn protocol_and_sql_prepared_statements_share_one_namespace() {
        let mut s = SqlSession::new("app", None);
        // Parse "p" by the protocol, EXECUTE p by SQL: decided on what p does.
        let before = s
            .prepare("p", parsed("DELETE FROM orders WHERE id = $1"))
            .expect("prepare");
        assert!(before.is_none());
        let f = s.facts_for(&info("EXECUTE p(1)")).expect("known");
        assert_eq!(f.kinds, vec![K::Execute, K::Delete]);
        assert!(f.tables_written.contains(&"public.orders".to_string()));
        // SQL PREPARE q, then the protocol binds q: found, with its statement.
        s.completed(&info("PREPARE q AS SELECT * FROM accounts"));
        let q = s
            .prepared("q")
            .expect("SQL-prepared name is visible to Bind");
        assert_eq!(q.analysis.statements[0].facts.kinds, vec![K::Select]);
        // DEALLOCATE removes a protocol-prepared name; Close an SQL-prepared one.
        s.completed(&info("DEALLOCATE p"));
        assert!(s.facts_for(&info("EXECUTE p")).is_err());
        s.close("q");
        assert!(s.prepared("q").is_none());
        // DEALLOCATE ALL and DISCARD ALL clear both kinds.
        s.prepare("x", parsed("SELECT 1")).expect("prepare");
        s.completed(&info("PREPARE y AS SELECT 2"));
        s.completed(&info("DEALLOCATE ALL"));
        assert!(s.prepared_names().is_empty());
        s.prepare("x", parsed("SELECT 1")).expect("prepare");
        s.completed(&info("DISCARD ALL"));
        assert!(s.prepared_names().is_empty());
        // A Parse the server did not carry out is undone.
        let before = s.prepare("z", parsed("SELECT 3")).expect("prepare");
        s.restore("z".into(), before);
        assert!(s.prepared("z").is_none());
    }

    #[test]
    fn a_prepared_statement_is_qualified_with_the_search_path_at_execute() {
        let mut s = SqlSession::new("app", None);
        s.prepare("p", parsed("SELECT * FROM secrets"))
            .expect("prepare");
        let f = s.facts_for(&info("EXECUTE p")).expect("known");
        assert!(!f.tables_read.contains(&"private.secrets".to_string()));
        s.completed(&info("SET search_path TO private"));
        let f = s.facts_for(&info("EXECUTE p")).expect("known");
        assert!(
            f.tables_read.contains(&"private.secrets".to_string()),
            "{f:?}"
        );
    }

    #[test]
    fn pinned_settings_cannot_be_decided_and_a_reported_path_is_followed() {
        let mut s = SqlSession::new("app", None);
        let e = s
            .facts_for(&info("SET client_encoding = 'SJIS'"))
            .expect_err("refused");
        assert!(e.contains("client_encoding"), "{e}");
        s.server_search_path("\"$user\", Private");
        assert!(s.candidate_schemas().contains(&"private".to_string()));
    }

    #[test]
    fn prepared_statements_are_bounded() {
        let mut s = SqlSession::new("app", None);
        for i in 0..MAX_PREPARED {
            s.prepare(&format!("s{i}"), parsed("SELECT 1"))
                .expect("prepare");
        }
        assert!(s.prepare("one-more", parsed("SELECT 1")).is_err());
        // Replacing a known name (the unnamed statement, say) is fine.
        assert!(s.prepare("s0", parsed("SELECT 2")).is_ok());
    }
}
