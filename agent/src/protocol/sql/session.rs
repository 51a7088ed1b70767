//! Per-session SQL state: SQL-level prepared statements and the search_path.

use std::collections::HashMap;

use super::analyze::StatementInfo;
use crate::policy::StatementFacts;
use crate::policy::spec::StatementKind as K;

/// At most this many SQL-level prepared statements are remembered per session;
/// beyond it, a PREPARE is still decided but its EXECUTE is refused (unknown name).
pub const MAX_PREPARED: usize = 1024;
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
    /// SQL-level prepared statements: name → facts qualified when prepared
    /// (PostgreSQL keeps the search_path of PREPARE with the statement).
    prepared: HashMap<String, StatementFacts>,
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
    /// search_path may name.
    pub fn facts_for(&self, s: &StatementInfo) -> Result<StatementFacts, String> {
        if let Some(name) = &s.execute {
            let Some(p) = self.prepared.get(name) else {
                return Err(format!(
                    "EXECUTE of `{name}`, which this session has not prepared (as far as the agent saw)"
                ));
            };
            let mut f = p.clone();
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

    /// After the server completed the statement successfully.
    pub fn completed(&mut self, s: &StatementInfo) {
        if let Some((name, inner)) = &s.prepare
            && (self.prepared.len() < MAX_PREPARED || self.prepared.contains_key(name))
        {
            match self.qualify(&inner.facts) {
                Ok(f) => {
                    self.prepared.insert(name.clone(), f);
                }
                Err(_) => {
                    self.prepared.remove(name);
                }
            }
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

    /// Names of the SQL-level prepared statements (for tests and the proxy).
    #[allow(dead_code)]
    pub fn prepared_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.prepared.keys().cloned().collect();
        v.sort();
        v
    }
}

/// A search_path as the startup option gives it: `"$user", public`.
fn parse_path_list(p: &str) -> Vec<String> {
    p.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
                s[1..s.len() - 1].to_string()
            } else {
                s.to_lowercase()
            }
        })
        .collect()
}
