//! Least privilege for SQL: a statement is decomposed (by `protocol::sql`) into
//! the privileges it exercises, each an action on an object as PostgreSQL itself
//! checks them; an `allow` rule *grants* privileges, and a statement runs only if
//! every privilege it exercises is granted by some allow rule in force.
//!
//! Invariants:
//! - An analysed statement exercises at least one privilege: a statement that
//!   touches no object exercises its kind (`SELECT 1` → `select`).
//! - An unqualified name carries every name it may resolve to on the session's
//!   search_path; a grant must cover each of them (the agent does not know which
//!   schemas hold the name, so any of them may be the one the server uses).
//! - Deny, kill and approval rules do not look at privileges: they keep matching
//!   the statement's facts (any listed kind, table or function).

use std::fmt;

use serde::{Serialize, Serializer};

use super::CompiledSql;
use super::catalog::is_catalog_relation;
use super::spec::StatementKind as K;

/// What a privilege is exercised on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum On {
    /// The statement itself, when it touches no object (`SELECT 1`, `BEGIN`,
    /// `SET x = 1`, `DO`), or the part of it no object privilege stands for
    /// (`COPY`, `MERGE`, `EXPLAIN`, `PREPARE`).
    Statement,
    /// A table, view, sequence or other object in a schema (`schema.name`;
    /// `schema.*` for a whole schema). Several names: an unqualified name that may
    /// resolve to any of them.
    Table(Vec<String>),
    /// The execution of a function (`schema.name`; a dangerous feature such as
    /// `copy_program` by its own name).
    Function(Vec<String>),
    /// An object the analysis does not name (a role, a database, an extension,
    /// every table): only a rule that lists no object grants it.
    Unnamed(String),
    /// An unqualified call of a function `pg_catalog` has (as analysed, before a
    /// session qualifies it): the built-in when `pg_catalog` is searched first,
    /// so a privilege only if the built-in is privileged; when the search_path
    /// names `pg_catalog` after other schemas, possibly a function of theirs.
    Builtin { name: String, privileged: bool },
}

/// One privilege a statement exercises.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Privilege {
    /// The action (for a function: the kind of the statement calling it, shown as
    /// `execute`).
    pub action: K,
    pub on: On,
}

/// The kind as policy files spell it (`select`, `set_role`).
pub fn kind_name(k: K) -> &'static str {
    match k {
        K::Select => "select",
        K::Insert => "insert",
        K::Update => "update",
        K::Delete => "delete",
        K::Merge => "merge",
        K::Truncate => "truncate",
        K::Copy => "copy",
        K::Create => "create",
        K::Alter => "alter",
        K::Drop => "drop",
        K::Grant => "grant",
        K::Revoke => "revoke",
        K::Set => "set",
        K::Reset => "reset",
        K::SetRole => "set_role",
        K::Begin => "begin",
        K::Commit => "commit",
        K::Rollback => "rollback",
        K::Savepoint => "savepoint",
        K::Call => "call",
        K::Do => "do",
        K::Explain => "explain",
        K::Prepare => "prepare",
        K::Execute => "execute",
        K::Listen => "listen",
        K::Notify => "notify",
        K::Vacuum => "vacuum",
        K::Other => "other",
    }
}

impl Privilege {
    pub fn statement(action: K) -> Self {
        Privilege {
            action,
            on: On::Statement,
        }
    }

    pub fn table(action: K, name: String) -> Self {
        Privilege {
            action,
            on: On::Table(vec![name]),
        }
    }

    pub fn function(name: String) -> Self {
        Privilege {
            action: K::Call,
            on: On::Function(vec![name]),
        }
    }

    pub fn unnamed(action: K, what: impl Into<String>) -> Self {
        Privilege {
            action,
            on: On::Unnamed(what.into()),
        }
    }

    /// Whether a name of it depends on the search_path (unqualified).
    pub fn unqualified(&self) -> bool {
        match &self.on {
            On::Table(n) | On::Function(n) => n.iter().any(|x| !x.contains('.')),
            On::Builtin { .. } => true,
            On::Statement | On::Unnamed(_) => false,
        }
    }

    /// The names a grant must cover (none for a statement or an unnamed object).
    pub fn names(&self) -> &[String] {
        match &self.on {
            On::Table(n) | On::Function(n) => n,
            On::Statement | On::Unnamed(_) | On::Builtin { .. } => &[],
        }
    }

    /// The privilege on one of its names, as shown to people: `select on
    /// public.orders`, `execute public.f`, `begin`.
    pub fn describe(&self, name: Option<&str>) -> String {
        let all = self.names().join(" or ");
        let n = name.unwrap_or(&all);
        match &self.on {
            On::Statement => kind_name(self.action).to_string(),
            On::Table(_) => format!("{} on {n}", kind_name(self.action)),
            On::Function(_) => format!("execute {n}"),
            On::Unnamed(w) => format!("{} on {w}", kind_name(self.action)),
            On::Builtin { name, privileged } => {
                if *privileged {
                    format!("execute pg_catalog.{name}")
                } else {
                    format!("execute {name} (a pg_catalog built-in)")
                }
            }
        }
    }
}

impl fmt::Display for Privilege {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(None))
    }
}

/// In audit records and JSON output, a privilege is its description.
impl Serialize for Privilege {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.describe(None))
    }
}

/// A privilege (on one name) and the rule that granted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    pub privilege: String,
    pub rule: String,
}

/// Pushes `p` unless it is there already.
pub fn push(v: &mut Vec<Privilege>, p: Privilege) {
    if !v.contains(&p) {
        v.push(p);
    }
}

/// Qualifies the unqualified names of `ps` with the schemas a session's
/// search_path may resolve them to (`candidates`, `pg_catalog` first).
/// `catalog_on_path`: the search_path names `pg_catalog` explicitly, so it may
/// be searched after another schema.
///
/// - A table name is looked up in `pg_catalog` only if it is a catalog relation
///   (or starts with `pg_`, the prefix the catalog uses); a catalog relation
///   resolves to `pg_catalog` alone unless the path names `pg_catalog` later.
/// - Objects are created in a schema of the path, never in `pg_catalog`.
/// - An unqualified function that is not a `pg_catalog` function is looked up in
///   the other schemas. An unqualified call of a `pg_catalog` function is the
///   built-in (no privilege if harmless, `pg_catalog.name` if privileged), and,
///   when the path names `pg_catalog` explicitly, possibly a function of that
///   name in any other schema of the path.
pub fn qualify(ps: &[Privilege], candidates: &[String], catalog_on_path: bool) -> Vec<Privilege> {
    let mut out = Vec::with_capacity(ps.len());
    for p in ps {
        let one = |names: &[String], function: bool| -> Vec<String> {
            let mut v = Vec::new();
            for n in names {
                if n.contains('.') {
                    if !v.contains(n) {
                        v.push(n.clone());
                    }
                    continue;
                }
                let catalog = !function
                    && p.action != K::Create
                    && (is_catalog_relation(n) || n.starts_with("pg_"));
                if catalog && !catalog_on_path && is_catalog_relation(n) {
                    let q = format!("pg_catalog.{n}");
                    if !v.contains(&q) {
                        v.push(q);
                    }
                    continue;
                }
                for s in candidates {
                    if s == "pg_catalog" && !catalog {
                        continue;
                    }
                    let q = format!("{s}.{n}");
                    if !v.contains(&q) {
                        v.push(q);
                    }
                }
            }
            v
        };
        let on = match &p.on {
            On::Table(n) => On::Table(one(n, false)),
            On::Function(n) => On::Function(one(n, true)),
            On::Builtin { name, privileged } => {
                let mut v = Vec::new();
                if *privileged {
                    v.push(format!("pg_catalog.{name}"));
                }
                if catalog_on_path {
                    for s in candidates.iter().filter(|s| *s != "pg_catalog") {
                        v.push(format!("{s}.{name}"));
                    }
                }
                if v.is_empty() {
                    // The harmless built-in: no privilege.
                    continue;
                }
                On::Function(v)
            }
            other => other.clone(),
        };
        // A name with no candidate at all (an empty search_path) resolves to
        // nothing the agent can name.
        let on = match on {
            On::Table(n) if n.is_empty() => {
                On::Unnamed("a name the search_path does not resolve".into())
            }
            On::Function(n) if n.is_empty() => {
                On::Unnamed("a function the search_path does not resolve".into())
            }
            other => other,
        };
        push(
            &mut out,
            Privilege {
                action: p.action,
                on,
            },
        );
    }
    out
}

impl CompiledSql {
    /// Whether the rule lists any object (tables or functions).
    pub fn lists_objects(&self) -> bool {
        !self.tables.is_empty()
            || !self.tables_read.is_empty()
            || !self.tables_written.is_empty()
            || !self.functions.is_empty()
    }

    /// Whether an allow rule with this condition is in force for a statement: its
    /// `columns` and `where_less` conditions (which are filters, not grants) hold.
    pub fn in_force(&self, f: &super::StatementFacts) -> bool {
        (self.columns.is_empty()
            || self
                .columns
                .iter()
                .any(|p| f.columns.iter().any(|c| p.matches(c))))
            && self.where_less.is_none_or(|w| f.where_less == w)
    }

    /// Whether this condition, on an allow rule, grants `p` on `name` (one of its
    /// names; None for a statement or an unnamed object).
    ///
    /// - `statements` are the actions granted (every action when absent);
    /// - `tables` (any action), `tables_read` (`select`) and `tables_written`
    ///   (every other action) are the tables they are granted on; with no table
    ///   list, every table, unless the rule lists `functions` only;
    /// - `functions` are the functions whose execution is granted (none when
    ///   absent). A glob without a dot also matches a `pg_catalog` function by
    ///   its bare name;
    /// - a statement privilege needs its kind in `statements`; an unnamed object
    ///   needs a rule that lists no object.
    ///
    /// (An allow rule naming neither statements nor objects is refused when the
    /// policy is loaded: it would grant nothing.)
    pub fn grants(&self, p: &Privilege, name: Option<&str>) -> bool {
        let action_ok = self.statements.is_empty() || self.statements.contains(&p.action);
        match &p.on {
            On::Statement => self.statements.contains(&p.action),
            On::Unnamed(_) => action_ok && !self.lists_objects(),
            On::Table(_) => {
                let Some(n) = name else { return false };
                if !action_ok {
                    return false;
                }
                if self.tables.is_empty()
                    && self.tables_read.is_empty()
                    && self.tables_written.is_empty()
                {
                    return self.functions.is_empty();
                }
                let any = |ps: &[glob::Pattern]| ps.iter().any(|g| g.matches(n));
                any(&self.tables)
                    || (p.action == K::Select && any(&self.tables_read))
                    || (p.action != K::Select && any(&self.tables_written))
            }
            On::Builtin { name, privileged } => {
                !privileged || {
                    let n = format!("pg_catalog.{name}");
                    self.functions
                        .iter()
                        .any(|g| g.matches(&n) || (!g.as_str().contains('.') && g.matches(name)))
                }
            }
            On::Function(_) => {
                let Some(n) = name else { return false };
                let bare = n.strip_prefix("pg_catalog.");
                self.functions.iter().any(|g| {
                    g.matches(n)
                        || (!g.as_str().contains('.') && bare.is_some_and(|b| g.matches(b)))
                })
            }
        }
    }
}

/// How the privileges of a statement fare against a set of allow rules.
pub struct Coverage<'a> {
    /// Each privilege (on each of its names) and the first rule granting it.
    pub granted: Vec<(String, &'a str)>,
    /// The privileges (on one name) no rule grants, in order.
    pub missing: Vec<String>,
}

/// Checks every privilege of `ps` against `rules` (allow rules in force, in
/// load order, with their `sql` conditions).
pub fn cover<'a>(ps: &[Privilege], rules: &[(&'a str, &'a CompiledSql)]) -> Coverage<'a> {
    let mut granted = Vec::new();
    let mut missing = Vec::new();
    for p in ps {
        let names: Vec<Option<&str>> = if p.names().is_empty() {
            vec![None]
        } else {
            p.names().iter().map(|n| Some(n.as_str())).collect()
        };
        let several = names.len() > 1;
        for n in names {
            let d = p.describe(n);
            match rules.iter().find(|(_, c)| c.grants(p, n)) {
                Some((id, _)) => granted.push((d, *id)),
                None if several => missing.push(format!(
                    "{d} (an unqualified name may resolve to it on the search_path)"
                )),
                None => missing.push(d),
            }
        }
    }
    Coverage { granted, missing }
}

/// What `portcullis policy check` says about allow rules whose decisions the
/// grant model changes: before, an allow rule with `sql` conditions allowed a
/// statement when any of its kinds, tables or functions was listed; now it
/// grants privileges, and a statement runs only if every privilege it exercises
/// is granted. One message per rule with `sql` conditions, naming what differs.
pub fn migration_warnings(policy: &super::CompiledPolicy) -> Vec<String> {
    let mut out = Vec::new();
    for r in &policy.rules {
        let (super::spec::Effect::Allow, Some(c)) = (r.effect, &r.sql) else {
            continue;
        };
        let mut notes = Vec::new();
        let tables =
            !c.tables.is_empty() || !c.tables_read.is_empty() || !c.tables_written.is_empty();
        let kinds: Vec<&str> = c.statements.iter().map(|k| kind_name(*k)).collect();
        if tables {
            notes.push(
                "a statement touching a listed table was allowed whatever else it touched; now every other table it reads or writes (a JOIN, a subquery, a UNION, INSERT ... SELECT) needs a grant of its own".to_string(),
            );
        }
        // Kinds that can carry other statements, tables or function calls; a
        // rule listing only session statements (begin, set, ...) means what it meant.
        let carrying: Vec<&str> = c
            .statements
            .iter()
            .filter(|k| {
                matches!(
                    k,
                    K::Select
                        | K::Insert
                        | K::Update
                        | K::Delete
                        | K::Merge
                        | K::Copy
                        | K::Create
                        | K::Explain
                        | K::Prepare
                        | K::Execute
                        | K::Call
                        | K::Other
                )
            })
            .map(|k| kind_name(*k))
            .collect();
        if !carrying.is_empty() {
            notes.push(format!(
                "a statement with one of the kinds [{}] was allowed whatever else it did; now a data-modifying CTE, SELECT INTO, CREATE TABLE AS or a call of a user-defined or privileged function in it needs a grant of its own",
                carrying.join(", ")
            ));
        }
        const ON_TABLES: &[K] = &[
            K::Select,
            K::Insert,
            K::Update,
            K::Delete,
            K::Truncate,
            K::Create,
            K::Alter,
            K::Drop,
            K::Grant,
            K::Revoke,
            K::Vacuum,
        ];
        if tables && !c.statements.is_empty() && !c.statements.iter().any(|k| ON_TABLES.contains(k))
        {
            notes.push(format!(
                "its table lists grant nothing: [{}] act on tables through select, insert, update or delete (COPY t TO reads with select, COPY t FROM writes with insert), which this rule does not list",
                kinds.join(", ")
            ));
        }
        let writes = c.statements.is_empty()
            || c.statements
                .iter()
                .any(|k| matches!(k, K::Update | K::Delete | K::Insert));
        let grants_select = (c.statements.is_empty() || c.statements.contains(&K::Select))
            && (!c.tables.is_empty() || !c.tables_read.is_empty());
        if writes && !c.tables_written.is_empty() && !grants_select {
            notes.push(
                "an UPDATE or DELETE with a WHERE or RETURNING (and an INSERT with RETURNING or ON CONFLICT) also reads its table, as PostgreSQL checks: select on it must be granted too, which this rule does not do".to_string(),
            );
        }
        if !c.functions.is_empty() {
            notes.push(
                "a statement calling a listed function was allowed whatever else it did; now the rule grants the execution of those functions only".to_string(),
            );
        }
        if !c.columns.is_empty() || c.where_less.is_some() {
            notes.push(
                "`columns` and `where_less` now decide when the rule is in force; they grant nothing".to_string(),
            );
        }
        if notes.is_empty() {
            continue;
        }
        out.push(format!(
            "{}:{}: allow rule `{}` now grants privileges, and a statement runs only if every privilege it exercises is granted: {}",
            r.file.display(),
            r.line,
            r.id,
            notes.join("; ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn kind_names_are_the_policy_spelling() {
        use crate::policy::spec::StatementKind as K;
        for k in [
            K::Select,
            K::Insert,
            K::Update,
            K::Delete,
            K::Merge,
            K::Truncate,
            K::Copy,
            K::Create,
            K::Alter,
            K::Drop,
            K::Grant,
            K::Revoke,
            K::Set,
            K::Reset,
            K::SetRole,
            K::Begin,
            K::Commit,
            K::Rollback,
            K::Savepoint,
            K::Call,
            K::Do,
            K::Explain,
            K::Prepare,
            K::Execute,
            K::Listen,
            K::Notify,
            K::Vacuum,
            K::Other,
        ] {
            let serde = serde_json::to_value(k).unwrap();
            assert_eq!(serde.as_str(), Some(super::kind_name(k)));
        }
    }
}
