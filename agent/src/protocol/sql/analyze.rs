//! From SQL text to [`StatementInfo`]s.

use std::collections::HashSet;
use std::ops::ControlFlow;

use serde::Serialize;
use sqlparser::ast::{
    self, CopySource, CopyTarget, Expr, FromTable, GrantObjects, ObjectName, ObjectNamePart,
    ObjectType, Query, Set, SetExpr, Statement, TableFactor, TableObject, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Location, Token, Tokenizer};

use super::recognise;
use crate::policy::StatementFacts;
use crate::policy::catalog::is_catalog_function;
use crate::policy::grants::{self, On, Privilege};
use crate::policy::spec::StatementKind as K;

/// What one text holds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Analysis {
    /// One per statement in the text.
    pub statements: Vec<std::sync::Arc<StatementInfo>>,
    /// Some: the text did not parse (statements then empty).
    pub error: Option<String>,
    /// The construct of the statement the agent could not analyse (`ALTER
    /// TYPE`, `MOVE`), where one statement is to blame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unanalysed: Option<String>,
}

/// One statement.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StatementInfo {
    /// What the policy looks at (tables not yet qualified by a session's search_path).
    pub facts: StatementFacts,
    /// The statement with literals replaced by `?`.
    pub fingerprint: String,
    /// Recognised dangerous functions and features (`copy_program`, `copy_file`, ...).
    pub dangerous: Vec<String>,
    /// SQL-level `PREPARE name AS <stmt>`: the name and the inner statement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prepare: Option<(String, Box<StatementInfo>)>,
    /// SQL-level `EXECUTE name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execute: Option<String>,
    /// `DEALLOCATE name` (Some(Some)), `DEALLOCATE ALL` (Some(None)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deallocate: Option<Option<String>>,
    /// `SET search_path TO ...`: the schemas, normalised (`$user` kept as `$user`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set_search_path: Option<Vec<String>>,
    /// `RESET search_path`, `RESET ALL`, `DISCARD ALL`: back to the startup value.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reset_search_path: bool,
    /// The analysis read the value of a literal (an EXPLAIN option, a `SET`
    /// value, an argument of `set_config`): a text of the same shape with other
    /// literals may do something else, so the cache never shares this analysis
    /// by shape.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub literal_dependent: bool,
    /// The statement changes a setting the agent pins (one that changes how the
    /// server reads statement text, see [`LEXING_SETTINGS`]), or a setting the
    /// agent cannot name: why it is refused, naming the setting. Refused
    /// whatever the policy says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pinned_setting: Option<String>,
}

/// Settings that change how the server splits and reads statement text: with
/// `standard_conforming_strings` off a backslash escapes a quote in `'...'`;
/// client encodings such as SJIS, BIG5 or GBK have multibyte characters whose
/// second byte is a backslash or a quote. The agent forces
/// `standard_conforming_strings=on` and `client_encoding=UTF8` at login and
/// refuses every change of these.
pub const LEXING_SETTINGS: &[&str] = &[
    "standard_conforming_strings",
    "client_encoding",
    "backslash_quote",
];

/// An encoding name as PostgreSQL compares them (letters and digits only, lower case).
fn clean_encoding(v: &str) -> String {
    v.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Whether `v` names UTF8 (`UTF8`, `utf-8`, `Unicode`, ...).
pub fn is_utf8_name(v: &str) -> bool {
    matches!(clean_encoding(v).as_str(), "utf8" | "unicode")
}

/// Whether PostgreSQL reads `v` as boolean true (`on`, `true`, `yes`, `1` and
/// the prefixes of `true` and `yes` it accepts).
fn is_true(v: &str) -> bool {
    let v = v.to_ascii_lowercase();
    !v.is_empty() && ("true".starts_with(&v) || "yes".starts_with(&v) || v == "on" || v == "1")
}

/// Why setting `name` to `value` is refused (None: allowed). `value` None: a
/// value the agent cannot read; `default`: `SET name TO DEFAULT`, which goes
/// back to the value the agent forced at login.
pub fn pinned_violation(name: &str, value: Option<&str>, default: bool) -> Option<String> {
    let name = name.to_ascii_lowercase();
    if !LEXING_SETTINGS.contains(&name.as_str()) || default {
        return None;
    }
    let ok = match (name.as_str(), value) {
        ("standard_conforming_strings", Some(v)) => is_true(v),
        ("client_encoding", Some(v)) => is_utf8_name(v),
        _ => false,
    };
    if ok {
        return None;
    }
    Some(format!(
        "`{name}` cannot be changed through Portcullis (to {}): the agent reads statements with standard_conforming_strings=on and client_encoding=UTF8, which it sets at login, and refuses what would make the server read them otherwise",
        value.map_or("a value it cannot read".to_string(), |v| format!("`{v}`"))
    ))
}

/// A `SET` value as written (identifier, string, number, boolean), for the
/// settings whose value the agent checks.
fn setting_value(e: &Expr) -> Option<String> {
    match e {
        Expr::Identifier(id) => Some(id.value.clone()),
        Expr::Value(v) => match &v.value {
            ast::Value::SingleQuotedString(s) => Some(s.clone()),
            ast::Value::Number(n, _) => Some(n.clone()),
            ast::Value::Boolean(b) => Some(b.to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// `SET name TO DEFAULT` (the keyword, not the string `'default'`).
fn is_default(values: &[Expr]) -> bool {
    matches!(values, [Expr::Identifier(id)] if id.quote_style.is_none() && id.value.eq_ignore_ascii_case("default"))
}

/// Settings whose change is a change of role (`set_role`).
fn is_role_setting(name: &str) -> bool {
    name.eq_ignore_ascii_case("role") || name.eq_ignore_ascii_case("session_authorization")
}

/// Functions whose call is dangerous whatever the table rules say: server files,
/// other servers, other sessions, configuration, and SQL run from text (which the
/// agent cannot see). Compared with the unqualified, lower-cased name.
const DANGEROUS_FUNCTIONS: &[&str] = &[
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_ls_logdir",
    "pg_ls_waldir",
    "pg_ls_tmpdir",
    "pg_ls_archive_statusdir",
    "pg_ls_logicalsnapdir",
    "pg_ls_logicalmapdir",
    "pg_ls_replslotdir",
    "pg_stat_file",
    "pg_file_write",
    "pg_file_rename",
    "pg_file_unlink",
    "pg_file_sync",
    "pg_logdir_ls",
    "lo_import",
    "lo_export",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_promote",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_backup_start",
    "pg_backup_stop",
    "set_config",
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    "ts_stat",
    "ts_rewrite",
    "pg_drop_replication_slot",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_copy_physical_replication_slot",
    "pg_copy_logical_replication_slot",
    "pg_replication_slot_advance",
];

/// Prefixes of dangerous function families.
const DANGEROUS_PREFIXES: &[&str] = &["dblink", "pg_logical_slot_", "pg_replication_origin_"];

/// Built-in functions whose execution is a privilege besides the dangerous ones:
/// they change state outside the tables a statement names (sequences, large
/// objects, notifications, statistics, indexes, WAL) or act on the server.
const PRIVILEGED_BUILTINS: &[&str] = &[
    "nextval",
    "setval",
    // Reads of a sequence's state (the server checks USAGE or SELECT on it).
    "currval",
    "lastval",
    // Hold a backend or a lock shared with every other session.
    "pg_sleep",
    "pg_sleep_for",
    "pg_sleep_until",
    "loread",
    "lowrite",
    "pg_notify",
    "pg_logical_emit_message",
    "pg_log_backend_memory_contexts",
    "pg_import_system_collations",
    "brin_summarize_new_values",
    "brin_summarize_range",
    "brin_desummarize_range",
    "gin_clean_pending_list",
    "pg_wal_replay_pause",
    "pg_wal_replay_resume",
];

/// Prefixes of privileged built-in families (large objects, statistics resets,
/// replication slots and origins, server files).
const PRIVILEGED_BUILTIN_PREFIXES: &[&str] = &[
    "lo_",
    "pg_advisory_",
    "pg_try_advisory_",
    "pg_stat_reset",
    "pg_create_",
    "pg_drop_",
    "pg_copy_",
    "pg_read_",
    "pg_ls_",
    "pg_replication_",
    "pg_logical_slot_",
];

/// SQL constructs written like function calls that are not functions of
/// `pg_catalog` (the parser turns them into expressions of their own).
const SQL_FUNCTION_SYNTAX: &[&str] = &[
    "coalesce",
    "nullif",
    "greatest",
    "least",
    "current_date",
    "current_time",
    "current_timestamp",
    "localtime",
    "localtimestamp",
    "current_user",
    "current_role",
    "session_user",
    "system_user",
    "user",
    "current_catalog",
    "grouping",
    "xmlconcat",
    "xmlelement",
    "xmlexists",
    "xmlforest",
    "xmlparse",
    "xmlpi",
    "xmlroot",
    "xmlserialize",
    "row",
];

/// How a call of `name` (folded, as written) counts as a privilege:
/// - a harmless built-in (a `pg_catalog` function, or SQL syntax written like a
///   call), unqualified or qualified `pg_catalog.`: no privilege;
/// - a privileged built-in (dangerous, or changing state: see
///   [`PRIVILEGED_BUILTINS`]): `execute pg_catalog.<name>`;
/// - anything else is user-defined: `execute <name>`, qualified as written or,
///   unqualified, by the session's search_path.
fn function_privilege(name: &str) -> Option<Privilege> {
    let (schema, bare) = match name.rsplit_once('.') {
        Some((s, b)) => (Some(s), b),
        None => (None, name),
    };
    let builtin_scope = schema.is_none_or(|s| s == "pg_catalog");
    if builtin_scope && is_catalog_function(bare) {
        let privileged = is_dangerous_function(bare)
            || PRIVILEGED_BUILTINS.contains(&bare)
            || PRIVILEGED_BUILTIN_PREFIXES
                .iter()
                .any(|p| bare.starts_with(p));
        if schema.is_none() {
            // Unqualified: the built-in unless the search_path puts another
            // schema before pg_catalog (decided when the session qualifies it).
            return Some(Privilege {
                action: K::Call,
                on: On::Builtin {
                    name: bare.to_string(),
                    privileged,
                },
            });
        }
        return privileged.then(|| Privilege::function(format!("pg_catalog.{bare}")));
    }
    if schema.is_none() && SQL_FUNCTION_SYNTAX.contains(&bare) {
        return None;
    }
    Some(Privilege::function(name.to_string()))
}

fn is_dangerous_function(unqualified: &str) -> bool {
    DANGEROUS_FUNCTIONS.contains(&unqualified)
        || DANGEROUS_PREFIXES
            .iter()
            .any(|p| unqualified.starts_with(p))
}

/// An identifier as PostgreSQL folds it: lower case unless quoted. Only ASCII
/// letters are folded, as the server does in a UTF8 session (`ÄBC` is `Äbc`).
fn fold(id: &ast::Ident) -> String {
    if id.quote_style.is_some() {
        id.value.clone()
    } else {
        id.value.to_ascii_lowercase()
    }
}

/// `schema.table` (or `table`, `db.schema.table`) as PostgreSQL would resolve the
/// spelling: folded parts joined by dots.
fn name_of(n: &ObjectName) -> String {
    let mut s = String::new();
    for (i, p) in n.0.iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        match p {
            ObjectNamePart::Identifier(id) => s.push_str(&fold(id)),
            ObjectNamePart::Function(f) => s.push_str(&fold(&f.name)),
        }
    }
    s
}

/// `db.schema.table` → `schema.table`: PostgreSQL only accepts the current
/// database there, so the catalog part carries no policy meaning.
fn table_name(n: &ObjectName) -> String {
    let full = name_of(n);
    if n.0.len() >= 3 {
        let parts: Vec<&str> = full.rsplitn(3, '.').collect();
        // rsplitn: [table, schema, rest]
        return format!("{}.{}", parts[1], parts[0]);
    }
    full
}

pub(super) fn push_unique(v: &mut Vec<String>, s: String) {
    if !v.contains(&s) {
        v.push(s);
    }
}

fn push_kind(v: &mut Vec<K>, k: K) {
    if !v.contains(&k) {
        v.push(k);
    }
}

// ---- the collector ------------------------------------------------------------------

/// Walks one top-level statement.
struct Collector {
    facts: StatementFacts,
    dangerous: Vec<String>,
    /// What the statement exercises (`facts.privileges` when finished).
    privileges: Vec<Privilege>,
    /// A query locks rows (`FOR UPDATE`, `FOR SHARE`, ...), which PostgreSQL
    /// allows only with `update` on the tables it locks.
    locks_rows: bool,
    /// The nested statement does not run (plain EXPLAIN): its writes are reported
    /// as reads and its kinds are not added.
    executes: bool,
    root: usize,
    /// Table factors that are the target of a DML statement (reported as written).
    targets: HashSet<usize>,
    /// CTE names visible, per query being visited.
    scopes: Vec<Vec<String>>,
    /// CTE bodies: query address → CTE names visible inside it.
    cte_bodies: Vec<(usize, Vec<String>)>,
    /// Aliases → table names, for qualifying columns.
    aliases: Vec<(String, String)>,
    /// Column references as written (qualifier, column).
    raw_columns: Vec<(Option<String>, String)>,
    /// See [`StatementInfo::literal_dependent`].
    literal_dependent: bool,
    /// See [`StatementInfo::pinned_setting`].
    pinned: Option<String>,
    /// `set_config('search_path', '...')`: the schemas.
    set_config_path: Option<Vec<String>>,
}

fn addr<T>(t: &T) -> usize {
    t as *const T as usize
}

impl Collector {
    fn new(root: &Statement, executes: bool) -> Self {
        Collector {
            facts: StatementFacts::default(),
            dangerous: Vec::new(),
            privileges: Vec::new(),
            locks_rows: false,
            executes,
            root: addr(root),
            targets: HashSet::new(),
            scopes: Vec::new(),
            cte_bodies: Vec::new(),
            aliases: Vec::new(),
            raw_columns: Vec::new(),
            literal_dependent: false,
            pinned: None,
            set_config_path: None,
        }
    }

    fn pin(&mut self, why: Option<String>) {
        if self.pinned.is_none() {
            self.pinned = why;
        }
    }

    /// `SET name TO values`: lexing settings checked, role changes classified.
    fn set_assignment(&mut self, name: &str, values: &[Expr]) {
        self.literal_dependent = true;
        if is_role_setting(name) {
            self.kind(K::SetRole);
        }
        let value = match values {
            [v] => setting_value(v),
            _ => None,
        };
        self.pin(pinned_violation(name, value.as_deref(), is_default(values)));
    }

    /// `set_config(name, value, is_local)`: read like the `SET` it is, when its
    /// name and value are literals; refused when the agent cannot read the name.
    fn set_config(&mut self, f: &ast::Function) {
        match &f.args {
            ast::FunctionArguments::List(l) => self.set_config_args(&l.args),
            _ => self.set_config_args(&[]),
        }
    }

    /// `set_config` with these arguments (in an expression or in FROM).
    fn set_config_args(&mut self, args: &[ast::FunctionArg]) {
        self.literal_dependent = true;
        let lit = |a: &ast::FunctionArg| match a {
            ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(Expr::Value(v))) => {
                match &v.value {
                    ast::Value::SingleQuotedString(s) => Some(s.clone()),
                    _ => None,
                }
            }
            _ => None,
        };
        let (name, value) = (args.first().and_then(lit), args.get(1).and_then(lit));
        let Some(name) = name else {
            self.pin(Some(
                "set_config with a setting name that is not a string literal: the agent cannot tell which setting it changes".into(),
            ));
            return;
        };
        if is_role_setting(&name) {
            self.kind(K::SetRole);
        }
        if name.eq_ignore_ascii_case("search_path") {
            match value.as_deref().map(path_list) {
                Some(Some(v)) => self.set_config_path = Some(v),
                Some(None) => self.pin(Some(
                    "set_config of search_path to a list the agent cannot read with certainty (the server rejects it or reads it differently by version)".into(),
                )),
                None => self.pin(Some(
                    "set_config of search_path to a value that is not a string literal: the agent cannot tell which schemas names resolve to".into(),
                )),
            }
        }
        self.pin(pinned_violation(&name, value.as_deref(), false));
    }

    fn is_cte(&self, n: &ObjectName) -> bool {
        if n.0.len() != 1 {
            return false;
        }
        let name = name_of(n);
        self.scopes.last().is_some_and(|s| s.contains(&name))
    }

    /// A table read by the statement (`select` on it).
    fn read(&mut self, t: String) {
        self.privilege(K::Select, t.clone());
        push_unique(&mut self.facts.tables_read, t);
    }

    /// The privilege of `action` on table `t`. A statement that does not run
    /// (plain EXPLAIN) only reads what it names.
    fn privilege(&mut self, action: K, t: String) {
        let action = if self.executes { action } else { K::Select };
        grants::push(&mut self.privileges, Privilege::table(action, t));
    }

    /// An object the analysis does not name (a role, a database, every table).
    fn unnamed(&mut self, action: K, what: &str) {
        let action = if self.executes { action } else { K::Select };
        grants::push(&mut self.privileges, Privilege::unnamed(action, what));
    }

    fn written(&mut self, t: String) {
        if self.executes && t.rsplit('.').next() == Some("pg_settings") {
            // An UPDATE of pg_settings calls set_config (the view's rule).
            self.pin(Some(
                "a write to pg_settings changes settings (its rule calls set_config), which the agent cannot follow".into(),
            ));
        }
        if self.executes {
            push_unique(&mut self.facts.tables_written, t);
        } else {
            push_unique(&mut self.facts.tables_read, t);
        }
    }

    fn kind(&mut self, k: K) {
        if self.executes {
            push_kind(&mut self.facts.kinds, k);
        }
    }

    fn function(&mut self, n: &ObjectName) {
        let name = name_of(n);
        let bare = name.rsplit('.').next().unwrap_or(&name).to_string();
        if is_dangerous_function(&bare) {
            push_unique(&mut self.dangerous, bare.clone());
        }
        if let Some(p) = function_privilege(&name) {
            grants::push(&mut self.privileges, p);
        }
        if let Some(rest) = name.strip_prefix("pg_catalog.") {
            push_unique(&mut self.facts.functions, rest.to_string());
        }
        push_unique(&mut self.facts.functions, name);
    }

    /// A dangerous feature (not a function call): reported in `dangerous` and, so
    /// that a `functions` condition can refuse it, among the functions too; its
    /// use is a privilege under its own name (`execute copy_program`).
    fn danger(&mut self, what: &str) {
        push_unique(&mut self.dangerous, what.to_string());
        push_unique(&mut self.facts.functions, what.to_string());
        grants::push(&mut self.privileges, Privilege::function(what.to_string()));
    }

    /// The DML target table factor: written with `actions` (and read when the
    /// statement reads it). Anything but a plain table as the target is not
    /// decomposed: an unnamed object.
    fn target_factor(&mut self, tf: &TableFactor, actions: &[K], reads: bool) {
        if let TableFactor::Table { name, alias, .. } = tf {
            self.targets.insert(addr(tf));
            let t = table_name(name);
            if let Some(a) = alias {
                self.aliases.push((fold(&a.name), t.clone()));
            }
            for a in actions {
                self.privilege(*a, t.clone());
            }
            self.written(t.clone());
            if reads {
                self.read(t);
            }
        } else {
            for a in actions {
                self.unnamed(*a, "a target the agent does not analyse");
            }
        }
    }

    /// Statement-level facts, for every statement in the tree (top level and nested).
    fn statement(&mut self, s: &Statement) {
        let top = addr(s) == self.root;
        match s {
            Statement::Insert(i) => {
                if !top {
                    self.kind(K::Insert);
                }
                if let TableObject::TableName(n) = &i.table {
                    let t = table_name(n);
                    if let Some(a) = &i.table_alias {
                        self.aliases.push((fold(a), t.clone()));
                    }
                    self.privilege(K::Insert, t.clone());
                    // ON CONFLICT DO UPDATE updates the conflicting rows.
                    if let Some(ast::OnInsert::OnConflict(oc)) = &i.on
                        && matches!(oc.action, ast::OnConflictAction::DoUpdate(_))
                    {
                        self.privilege(K::Update, t.clone());
                    }
                    if let Some(ast::OnInsert::DuplicateKeyUpdate(_)) = &i.on {
                        self.privilege(K::Update, t.clone());
                    }
                    self.written(t.clone());
                    if i.returning.is_some() || i.on.is_some() {
                        self.read(t);
                    }
                } else {
                    self.unnamed(K::Insert, "a target the agent does not analyse");
                }
            }
            Statement::Update(u) => {
                if !top {
                    self.kind(K::Update);
                }
                // The target is read by a WHERE, a RETURNING, or a SET reading
                // columns (`SET a = b`).
                let mut set_reads = false;
                for a in &u.assignments {
                    let _ = ast::visit_expressions(&a.value, |x| {
                        if matches!(x, Expr::Identifier(_) | Expr::CompoundIdentifier(_)) {
                            set_reads = true;
                            ControlFlow::Break(())
                        } else {
                            ControlFlow::Continue(())
                        }
                    });
                }
                let reads = u.selection.is_some() || u.returning.is_some() || set_reads;
                self.target_factor(&u.table.relation, &[K::Update], reads);
                for j in &u.table.joins {
                    self.target_factor(&j.relation, &[K::Update], reads);
                }
                if self.executes && where_less(u.selection.as_ref()) {
                    self.facts.where_less = true;
                }
            }
            Statement::Delete(d) => {
                if !top {
                    self.kind(K::Delete);
                }
                let reads = d.selection.is_some() || d.returning.is_some();
                let from = match &d.from {
                    FromTable::WithFromKeyword(v) | FromTable::WithoutKeyword(v) => v,
                };
                for twj in from {
                    self.target_factor(&twj.relation, &[K::Delete], reads);
                }
                for n in &d.tables {
                    self.privilege(K::Delete, table_name(n));
                    self.written(table_name(n));
                }
                if self.executes && where_less(d.selection.as_ref()) {
                    self.facts.where_less = true;
                }
            }
            Statement::Merge(m) => {
                if !top {
                    self.kind(K::Merge);
                }
                // The actions of its WHEN clauses, on the target it always reads.
                let mut actions = Vec::new();
                for c in &m.clauses {
                    let a = match c.action {
                        ast::MergeAction::Insert(_) => K::Insert,
                        ast::MergeAction::Update(_) => K::Update,
                        ast::MergeAction::Delete { .. } => K::Delete,
                    };
                    if !actions.contains(&a) {
                        actions.push(a);
                    }
                }
                self.target_factor(&m.table, &actions, true);
            }
            Statement::Truncate(t) => {
                for n in &t.table_names {
                    self.privilege(K::Truncate, table_name(&n.name));
                    self.written(table_name(&n.name));
                }
                if matches!(t.cascade, Some(ast::CascadeOption::Cascade)) {
                    self.unnamed(K::Truncate, "the tables that reference it (CASCADE)");
                }
            }
            Statement::Copy {
                source, to, target, ..
            } => {
                match source {
                    CopySource::Table { table_name: n, .. } => {
                        if *to {
                            self.read(table_name(n));
                        } else {
                            self.privilege(K::Insert, table_name(n));
                            self.written(table_name(n));
                        }
                    }
                    CopySource::Query(_) => self.kind(K::Select),
                }
                match target {
                    CopyTarget::Program { .. } => self.danger("copy_program"),
                    CopyTarget::File { .. } => self.danger("copy_file"),
                    CopyTarget::Stdin | CopyTarget::Stdout => {}
                }
            }
            Statement::CreateTable(c) => {
                self.privilege(K::Create, table_name(&c.name));
                // LIKE, INHERITS, PARTITION OF: other tables the new one is made
                // from, which the analysis does not follow.
                if c.like.is_some()
                    || c.inherits.is_some()
                    || c.partition_of.is_some()
                    || c.clone.is_some()
                {
                    self.unnamed(K::Create, "a table it copies or inherits from");
                }
                // The tables it is made from are named too, so a rule on them matches.
                let mut sources: Vec<&ObjectName> = Vec::new();
                if let Some(
                    ast::CreateTableLikeKind::Parenthesized(l) | ast::CreateTableLikeKind::Plain(l),
                ) = &c.like
                {
                    sources.push(&l.name);
                }
                sources.extend(c.inherits.iter().flatten());
                sources.extend(c.partition_of.iter());
                sources.extend(c.clone.iter());
                for n in sources {
                    push_unique(&mut self.facts.tables_read, table_name(n));
                }
                // The PostgreSQL dialect reads `(LIKE t)` as a column named LIKE of
                // type t: LIKE is reserved, so unquoted it is always the clause.
                for col in &c.columns {
                    if col.name.quote_style.is_none() && col.name.value.eq_ignore_ascii_case("like")
                    {
                        self.unnamed(K::Create, "a table it copies or inherits from");
                        match &col.data_type {
                            ast::DataType::Custom(n, _) => {
                                push_unique(&mut self.facts.tables_read, table_name(n));
                            }
                            other => push_unique(
                                &mut self.facts.tables_read,
                                other.to_string().to_lowercase(),
                            ),
                        }
                    }
                }
                self.written(table_name(&c.name));
                if c.query.is_some() {
                    self.kind(K::Select);
                }
            }
            Statement::CreateView(v) => {
                // The view reads its query's tables with the privileges of its
                // owner, the session's role: those reads are exercised here.
                self.privilege(K::Create, table_name(&v.name));
                self.written(table_name(&v.name));
            }
            Statement::CreateIndex(i) => {
                self.privilege(K::Create, table_name(&i.table_name));
                self.written(table_name(&i.table_name));
            }
            Statement::AlterTable(a) => {
                self.privilege(K::Alter, table_name(&a.name));
                self.written(table_name(&a.name));
            }
            Statement::AlterView { name, .. } | Statement::AlterIndex { name, .. } => {
                self.privilege(K::Alter, table_name(name));
                self.written(table_name(name));
            }
            Statement::CreateFunction(f) => self.privilege(K::Create, table_name(&f.name)),
            Statement::CreateSequence { name, .. } | Statement::CreateType { name, .. } => {
                self.privilege(K::Create, table_name(name))
            }
            Statement::CreateDomain(d) => self.privilege(K::Create, table_name(&d.name)),
            Statement::DropFunction(d) => {
                for f in &d.func_desc {
                    self.privilege(K::Drop, table_name(&f.name));
                }
            }
            Statement::CreateTrigger(t) => {
                self.privilege(K::Create, table_name(&t.table_name));
                self.written(table_name(&t.table_name));
                if let Some(b) = &t.exec_body {
                    self.function(&b.func_desc.name);
                }
            }
            Statement::DropTrigger(t) => {
                if let Some(n) = &t.table_name {
                    self.privilege(K::Drop, table_name(n));
                    self.written(table_name(n));
                }
            }
            Statement::Drop {
                object_type,
                names,
                table,
                cascade,
                ..
            } => {
                if *cascade {
                    self.unnamed(K::Drop, "the objects that depend on it (CASCADE)");
                }
                for n in names {
                    match object_type {
                        ObjectType::Schema => {
                            self.privilege(K::Drop, format!("{}.*", name_of(n)));
                            self.written(format!("{}.*", name_of(n)));
                        }
                        ObjectType::Table
                        | ObjectType::View
                        | ObjectType::MaterializedView
                        | ObjectType::Index
                        | ObjectType::Sequence
                        | ObjectType::Type => {
                            self.privilege(K::Drop, table_name(n));
                            self.written(table_name(n));
                        }
                        // Roles, databases, extensions, ...: not objects in a schema.
                        other => {
                            self.unnamed(
                                K::Drop,
                                &format!("{other} {}", name_of(n)).to_lowercase(),
                            );
                            self.written(table_name(n));
                        }
                    }
                }
                if let Some(t) = table {
                    self.privilege(K::Drop, table_name(t));
                    self.written(table_name(t));
                }
            }
            Statement::CreateSchema { schema_name, .. } => {
                self.privilege(K::Create, format!("{}.*", schema_name_str(schema_name)));
                self.written(format!("{}.*", schema_name_str(schema_name)));
            }
            Statement::Grant(g) => self.grant_objects(K::Grant, g.objects.as_ref()),
            Statement::Revoke(r) => self.grant_objects(K::Revoke, r.objects.as_ref()),
            Statement::Vacuum(v) => match &v.table_name {
                Some(n) => {
                    self.privilege(K::Vacuum, table_name(n));
                    self.written(table_name(n));
                }
                None => self.unnamed(K::Vacuum, "every table"),
            },
            Statement::Analyze(a) => match &a.table_name {
                Some(n) => {
                    self.privilege(K::Vacuum, table_name(n));
                    push_unique(&mut self.facts.tables_read, table_name(n));
                }
                None => self.unnamed(K::Vacuum, "every table"),
            },
            Statement::Call(f) => self.function(&f.name),
            Statement::Load { .. } => self.danger("load"),
            Statement::Declare { .. } => self.kind(K::Select),
            Statement::Comment {
                object_type,
                object_name,
                ..
            } => {
                match object_type {
                    ast::CommentObject::Table => self.privilege(K::Other, table_name(object_name)),
                    other => self.unnamed(
                        K::Other,
                        &format!("{other} {}", name_of(object_name)).to_lowercase(),
                    ),
                }
                // COMMENT ON COLUMN t.c (or s.t.c) is on table t.
                let table = match object_type {
                    ast::CommentObject::Column if object_name.0.len() > 1 => {
                        ObjectName(object_name.0[..object_name.0.len() - 1].to_vec())
                    }
                    _ => object_name.clone(),
                };
                self.written(table_name(&table));
            }
            Statement::Set(Set::SingleAssignment {
                variable, values, ..
            }) => {
                let v = name_of(variable).to_ascii_lowercase();
                self.set_assignment(&v, values);
                if matches!(
                    v.as_str(),
                    "session_preload_libraries"
                        | "local_preload_libraries"
                        | "shared_preload_libraries"
                        | "dynamic_library_path"
                ) {
                    self.danger("set_preload_libraries");
                }
            }
            Statement::Set(Set::MultipleAssignments { assignments }) => {
                for a in assignments {
                    let v = name_of(&a.name).to_ascii_lowercase();
                    self.set_assignment(&v, std::slice::from_ref(&a.value));
                }
            }
            Statement::Set(Set::ParenthesizedAssignments { variables, .. }) => {
                for n in variables {
                    let v = name_of(n).to_ascii_lowercase();
                    self.set_assignment(&v, &[]);
                }
            }
            Statement::Set(Set::SetNames { charset_name, .. }) => {
                self.literal_dependent = true;
                self.pin(pinned_violation(
                    "client_encoding",
                    Some(&charset_name.value),
                    false,
                ));
            }
            Statement::Reset(r) => {
                if let ast::Reset::ConfigurationParameter(n) = &r.reset
                    && is_role_setting(&name_of(n))
                {
                    self.kind(K::SetRole);
                }
            }
            _ => {}
        }
    }

    fn grant_objects(&mut self, action: K, o: Option<&GrantObjects>) {
        match o {
            Some(GrantObjects::Tables(v))
            | Some(GrantObjects::Views(v))
            | Some(GrantObjects::Sequences(v)) => {
                for n in v {
                    self.privilege(action, table_name(n));
                    self.written(table_name(n));
                }
            }
            Some(GrantObjects::AllTablesInSchema { schemas })
            | Some(GrantObjects::AllSequencesInSchema { schemas })
            | Some(GrantObjects::Schemas(schemas)) => {
                for s in schemas {
                    self.privilege(action, format!("{}.*", name_of(s)));
                    self.written(format!("{}.*", name_of(s)));
                }
            }
            // Roles, functions, databases, ...
            _ => self.unnamed(
                action,
                "objects the agent does not analyse (roles, functions, databases, ...)",
            ),
        }
    }

    /// `SELECT ... INTO t` and `TABLE t`, which are not table factors.
    fn set_expr(&mut self, e: &SetExpr) {
        match e {
            SetExpr::Select(s) => {
                if let Some(into) = &s.into {
                    self.kind(K::Create);
                    self.privilege(K::Create, table_name(&into.name));
                    self.written(table_name(&into.name));
                }
            }
            SetExpr::SetOperation { left, right, .. } => {
                self.set_expr(left);
                self.set_expr(right);
            }
            SetExpr::Table(t) => {
                // sqlparser keeps `TABLE x`'s names without their quoting, so
                // `TABLE Orders` (the server reads `orders`) and `TABLE "Orders"`
                // look alike: a name with upper case is reported in both
                // spellings, so that a rule naming either applies.
                let spellings = |n: &str| {
                    let folded = n.to_ascii_lowercase();
                    if folded == n {
                        vec![folded]
                    } else {
                        vec![folded, n.to_string()]
                    }
                };
                if let Some(name) = &t.table_name {
                    let names = spellings(name);
                    let is_cte = t.schema_name.is_none()
                        && names
                            .iter()
                            .all(|n| self.scopes.last().is_some_and(|s| s.contains(n)));
                    if !is_cte {
                        let schemas = t.schema_name.as_deref().map(spellings);
                        for n in &names {
                            match &schemas {
                                Some(ss) => {
                                    for s in ss {
                                        self.read(format!("{s}.{n}"));
                                    }
                                }
                                None => self.read(n.clone()),
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

fn schema_name_str(s: &ast::SchemaName) -> String {
    match s {
        ast::SchemaName::Simple(n) => name_of(n),
        ast::SchemaName::UnnamedAuthorization(i) => fold(i),
        ast::SchemaName::NamedAuthorization(n, _) => name_of(n),
    }
}

/// No WHERE, or a WHERE that names no column at all (`WHERE true`, `WHERE 1 = 1`):
/// every row.
fn where_less(selection: Option<&Expr>) -> bool {
    let Some(e) = selection else {
        return true;
    };
    let mut names_column = false;
    let _ = ast::visit_expressions(e, |x| {
        if matches!(x, Expr::Identifier(_) | Expr::CompoundIdentifier(_)) {
            names_column = true;
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    !names_column
}

impl Visitor for Collector {
    type Break = ();

    fn pre_visit_statement(&mut self, s: &Statement) -> ControlFlow<()> {
        self.statement(s);
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        let here = addr(q);
        let base = match self.cte_bodies.iter().position(|(a, _)| *a == here) {
            Some(i) => self.cte_bodies.swap_remove(i).1,
            None => self.scopes.last().cloned().unwrap_or_default(),
        };
        let mut visible = base.clone();
        if let Some(w) = &q.with {
            let names: Vec<String> = w.cte_tables.iter().map(|c| fold(&c.alias.name)).collect();
            for (i, c) in w.cte_tables.iter().enumerate() {
                let mut inner = base.clone();
                inner.extend(names[..i].iter().cloned());
                if w.recursive {
                    inner.push(names[i].clone());
                }
                self.cte_bodies.push((addr(&*c.query), inner));
            }
            visible.extend(names);
        }
        self.scopes.push(visible);
        if !q.locks.is_empty() {
            self.locks_rows = true;
        }
        self.set_expr(&q.body);
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
        self.scopes.pop();
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, tf: &TableFactor) -> ControlFlow<()> {
        match tf {
            TableFactor::Table {
                name, args, alias, ..
            } => {
                if let Some(a) = args {
                    // A set-returning function in FROM.
                    self.function(name);
                    if name_of(name).rsplit('.').next() == Some("set_config") && self.executes {
                        self.set_config_args(&a.args);
                    }
                } else if !self.targets.contains(&addr(tf)) && !self.is_cte(name) {
                    let t = table_name(name);
                    if let Some(a) = alias {
                        self.aliases.push((fold(&a.name), t.clone()));
                    }
                    self.read(t);
                }
            }
            TableFactor::Function { name, args, .. } => {
                self.function(name);
                if name_of(name).rsplit('.').next() == Some("set_config") && self.executes {
                    self.set_config_args(args);
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        match e {
            Expr::Function(f) => {
                self.function(&f.name);
                let name = name_of(&f.name);
                if name.rsplit('.').next() == Some("set_config") && self.executes {
                    self.set_config(f);
                }
            }
            Expr::Identifier(id) => self.raw_columns.push((None, fold(id))),
            Expr::CompoundIdentifier(ids) if ids.len() >= 2 => {
                let col = fold(&ids[ids.len() - 1]);
                let q: Vec<String> = ids[..ids.len() - 1].iter().map(fold).collect();
                self.raw_columns.push((Some(q.join(".")), col));
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

impl Collector {
    /// Columns as `table.column` where the table is known, else `column`.
    fn finish_columns(&mut self) {
        let tables: Vec<String> = {
            let mut t = self.facts.tables_read.clone();
            for w in &self.facts.tables_written {
                push_unique(&mut t, w.clone());
            }
            t
        };
        let raw = std::mem::take(&mut self.raw_columns);
        for (q, c) in raw {
            let col = match q {
                Some(q) => {
                    let table = self
                        .aliases
                        .iter()
                        .find(|(a, _)| *a == q)
                        .map(|(_, t)| t.clone())
                        .unwrap_or(q);
                    format!("{table}.{c}")
                }
                None if tables.len() == 1 => format!("{}.{c}", tables[0]),
                None => c,
            };
            push_unique(&mut self.facts.columns, col);
        }
    }
}

// ---- per statement ------------------------------------------------------------------

fn top_kind(s: &Statement) -> K {
    use Statement as S;
    match s {
        // `WITH ... DELETE` is a query whose body is the DML statement.
        S::Query(q) => match &*q.body {
            SetExpr::Insert(_) => K::Insert,
            SetExpr::Update(_) => K::Update,
            SetExpr::Delete(_) => K::Delete,
            SetExpr::Merge(_) => K::Merge,
            _ => K::Select,
        },
        S::Insert(_) => K::Insert,
        S::Update(_) => K::Update,
        S::Delete(_) => K::Delete,
        S::Merge(_) => K::Merge,
        S::Truncate(_) => K::Truncate,
        S::Copy { .. } => K::Copy,
        S::Grant(_) => K::Grant,
        S::Revoke(_) => K::Revoke,
        S::Set(Set::SetRole { .. }) | S::Set(Set::SetSessionAuthorization(_)) => K::SetRole,
        S::Set(Set::SingleAssignment { variable, .. }) if is_role_setting(&name_of(variable)) => {
            K::SetRole
        }
        S::Set(_) => K::Set,
        S::Reset(r) => match &r.reset {
            ast::Reset::ConfigurationParameter(n) if is_role_setting(&name_of(n)) => K::SetRole,
            _ => K::Reset,
        },
        S::StartTransaction { .. } => K::Begin,
        S::Commit { .. } => K::Commit,
        S::Rollback { .. } => K::Rollback,
        S::Savepoint { .. } | S::ReleaseSavepoint { .. } => K::Savepoint,
        S::Call(_) => K::Call,
        S::Explain { .. } | S::ExplainTable { .. } => K::Explain,
        S::Prepare { .. } => K::Prepare,
        S::Execute { .. } => K::Execute,
        S::LISTEN { .. } => K::Listen,
        S::NOTIFY { .. } | S::UNLISTEN { .. } => K::Notify,
        S::Vacuum(_) | S::Analyze(_) => K::Vacuum,
        S::Drop { .. }
        | S::DropFunction(_)
        | S::DropDomain(_)
        | S::DropProcedure { .. }
        | S::DropSecret { .. }
        | S::DropPolicy(_)
        | S::DropConnector { .. }
        | S::DropExtension(_)
        | S::DropOperator(_)
        | S::DropOperatorFamily(_)
        | S::DropOperatorClass(_)
        | S::DropTrigger(_) => K::Drop,
        _ => {
            // CREATE ... / ALTER ... by their text: the AST has many variants.
            let text = s.to_string();
            let first = text
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            match first.as_str() {
                "CREATE" => K::Create,
                "ALTER" => K::Alter,
                "DROP" => K::Drop,
                _ => K::Other,
            }
        }
    }
}

/// Whether EXPLAIN runs its statement (ANALYZE, as a keyword or an option that is
/// not explicitly false).
fn explain_executes(analyze: bool, options: Option<&Vec<ast::UtilityOption>>) -> bool {
    if analyze {
        return true;
    }
    options.is_some_and(|opts| {
        opts.iter().any(|o| {
            o.name.value.eq_ignore_ascii_case("analyze")
                && !o.arg.as_ref().is_some_and(|a| {
                    let v = a.to_string().to_ascii_lowercase();
                    let v = v.trim_matches('\'');
                    matches!(v, "false" | "off" | "0" | "no")
                })
        })
    })
}

fn fingerprint(s: &Statement) -> String {
    let mut s = s.clone();
    let _ = ast::visit_expressions_mut(&mut s, |e| {
        if let Expr::Value(v) = e {
            *v = ast::Value::Placeholder("?".into()).with_empty_span();
        }
        ControlFlow::<()>::Continue(())
    });
    s.to_string()
}

/// PostgreSQL truncates a name to NAMEDATALEN - 1 bytes (at a character boundary).
const MAX_NAME_BYTES: usize = 63;

fn truncate_name(mut s: String) -> String {
    if s.len() > MAX_NAME_BYTES {
        let mut end = MAX_NAME_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// A search_path written as one string (`set_config('search_path', '"$user",
/// public', ...)`): its names as the server splits the list
/// (`SplitIdentifierString`): a quoted name as it stands with `""` read as `"`,
/// an unquoted one up to a comma or whitespace and folded, each truncated. A
/// name that is `$user` once unquoted is the special `$user`. None where the
/// server rejects the list or reads it differently by version (a vertical tab).
pub(super) fn path_list(s: &str) -> Option<Vec<String>> {
    if s.contains('\x0b') {
        return None;
    }
    let space = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c');
    let mut out = Vec::new();
    let mut rest = s.trim_start_matches(space);
    if rest.is_empty() {
        return Some(out);
    }
    loop {
        let name = if let Some(mut r) = rest.strip_prefix('"') {
            let mut n = String::new();
            loop {
                let end = r.find('"')?;
                n.push_str(&r[..end]);
                let after = &r[end + 1..];
                match after.strip_prefix('"') {
                    Some(a) => {
                        n.push('"');
                        r = a;
                    }
                    None => {
                        rest = after;
                        break;
                    }
                }
            }
            n
        } else {
            let end = rest
                .find(|c: char| c == ',' || space(c))
                .unwrap_or(rest.len());
            if end == 0 {
                return None;
            }
            let n = rest[..end].to_ascii_lowercase();
            rest = &rest[end..];
            n
        };
        out.push(truncate_name(name));
        rest = rest.trim_start_matches(space);
        if let Some(r) = rest.strip_prefix(',') {
            rest = r.trim_start_matches(space);
        } else if rest.is_empty() {
            return Some(out);
        } else {
            return None;
        }
    }
}

/// The schemas of `SET search_path TO values`, as the server reads them: each
/// value is one name (the server quotes every value before it splits the list),
/// so a string is one name as it stands, commas and double quotes included
/// (`'"$user"'` is a schema named `"$user"`, `'$user'` is `$user`), an
/// identifier is folded unless quoted, an integer is its decimal value. Err:
/// why the agent cannot read a value with certainty (E'', U&'', dollar quotes,
/// any other form), for the statement to be refused.
fn search_path_values(values: &[Expr]) -> Result<Vec<String>, String> {
    let refuse = |what: &dyn std::fmt::Display| {
        format!(
            "SET search_path to `{what}`: the agent cannot tell with certainty which schema that names (write the schema as an identifier or a plain '...' string)"
        )
    };
    let mut out = Vec::with_capacity(values.len());
    for v in values {
        let name = match v {
            Expr::Identifier(id) => fold(id),
            Expr::Value(x) => match &x.value {
                ast::Value::SingleQuotedString(s) => s.clone(),
                ast::Value::Boolean(b) => b.to_string(),
                ast::Value::Number(n, false)
                    if !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()) =>
                {
                    // An integer that fits is printed back (`007` is `7`); a
                    // larger one is kept as written.
                    n.parse::<i32>()
                        .map_or_else(|_| n.clone(), |i| i.to_string())
                }
                other => return Err(refuse(other)),
            },
            other => return Err(refuse(other)),
        };
        out.push(truncate_name(name));
    }
    Ok(out)
}

/// Analyses one parsed statement.
pub(super) fn statement_info(s: &Statement) -> StatementInfo {
    let kind = top_kind(s);
    let mut info = StatementInfo {
        fingerprint: fingerprint(s),
        ..Default::default()
    };
    // PREPARE: the inner statement, analysed on its own; the PREPARE itself is
    // decided as the inner statement (so a denied statement is refused when it is
    // prepared, not only when executed).
    if let Statement::Prepare {
        name, statement, ..
    } = s
    {
        let inner = statement_info(statement);
        let mut facts = inner.facts.clone();
        facts.kinds.insert(0, K::Prepare);
        dedup_kinds(&mut facts.kinds);
        grants::push(&mut facts.privileges, Privilege::statement(K::Prepare));
        info.facts = facts;
        info.dangerous = inner.dangerous.clone();
        info.literal_dependent = inner.literal_dependent;
        info.pinned_setting = inner.pinned_setting.clone();
        info.prepare = Some((fold(name), Box::new(inner)));
        return info;
    }
    let executes = match s {
        Statement::Explain {
            analyze,
            options,
            statement,
            ..
        } => {
            let runs = explain_executes(*analyze, options.as_ref());
            // Whether it runs is read from the options' literals.
            info.literal_dependent = options.is_some();
            if runs {
                let inner = top_kind(statement);
                let mut c = Collector::new(s, true);
                c.facts.kinds.push(K::Explain);
                c.facts.kinds.push(inner);
                let _ = s.visit(&mut c);
                return finish(info, c);
            }
            false
        }
        _ => true,
    };
    let mut c = Collector::new(s, executes);
    c.facts.kinds.push(kind);
    // The collector only adds kinds of nested statements when they execute.
    let _ = s.visit(&mut c);
    match s {
        Statement::Execute { name: Some(n), .. } => info.execute = Some(name_of(n)),
        Statement::Deallocate { name, .. } => {
            info.deallocate = Some(
                if name.value.eq_ignore_ascii_case("all") && name.quote_style.is_none() {
                    None
                } else {
                    Some(fold(name))
                },
            );
        }
        // Setting names are case-insensitive (`SET "Search_Path" = x` too).
        Statement::Set(Set::SingleAssignment {
            variable, values, ..
        }) if name_of(variable).eq_ignore_ascii_case("search_path") => {
            if is_default(values) {
                info.reset_search_path = true;
            } else {
                match search_path_values(values) {
                    Ok(v) => info.set_search_path = Some(v),
                    Err(why) => c.pin(Some(why)),
                }
            }
        }
        Statement::Reset(r) => match &r.reset {
            ast::Reset::ALL => info.reset_search_path = true,
            ast::Reset::ConfigurationParameter(n)
                if name_of(n).eq_ignore_ascii_case("search_path") =>
            {
                info.reset_search_path = true;
            }
            _ => {}
        },
        Statement::Discard { object_type } => {
            if matches!(object_type, ast::DiscardObject::ALL) {
                info.reset_search_path = true;
                info.deallocate = Some(None);
            }
        }
        _ => {}
    }
    finish(info, c)
}

fn dedup_kinds(v: &mut Vec<K>) {
    let mut seen = Vec::new();
    v.retain(|k| {
        if seen.contains(k) {
            false
        } else {
            seen.push(*k);
            true
        }
    });
}

fn finish(mut info: StatementInfo, mut c: Collector) -> StatementInfo {
    c.finish_columns();
    if c.locks_rows {
        // Every table read may be locked (the analysis does not follow `OF t`).
        let read: Vec<String> = c
            .privileges
            .iter()
            .filter(|p| p.action == K::Select && matches!(p.on, On::Table(_)))
            .flat_map(|p| p.names().to_vec())
            .collect();
        // A row lock needs UPDATE on the table, as a write does: a rule on the
        // tables written matches it too.
        for t in read {
            c.privilege(K::Update, t.clone());
            if c.executes {
                push_unique(&mut c.facts.tables_written, t);
            }
        }
    }
    dedup_kinds(&mut c.facts.kinds);
    info.facts = c.facts;
    complete_privileges(&mut info.facts, c.privileges);
    info.dangerous = c.dangerous;
    info.literal_dependent |= c.literal_dependent;
    info.pinned_setting = c.pinned;
    if info.set_search_path.is_none() {
        info.set_search_path = c.set_config_path;
    }
    info
}

/// Sets `facts.privileges` to `ps` plus what the statement's kinds exercise
/// beyond the objects they touch:
/// - `select`, `insert`, `update`, `delete`, `truncate` are the privileges on
///   their tables; a kind touching no table (`SELECT 1`) is a privilege of its own;
/// - `create`, `alter`, `drop`, `grant`, `revoke`, `vacuum` with no object the
///   analysis names act on an unnamed object;
/// - every other kind (`copy`, `merge`, `explain`, `prepare`, `execute`, `call`,
///   `do`, `set`, `begin`, ...) is a privilege of its own, besides its objects.
///
/// The result is never empty: every statement has a kind.
pub(super) fn complete_privileges(facts: &mut StatementFacts, ps: Vec<Privilege>) {
    // The statement's own kinds come first: a decision names the rule granting
    // the first privilege.
    let mut own = Vec::new();
    for k in facts.kinds.clone() {
        let on_object = ps
            .iter()
            .any(|p| p.action == k && matches!(p.on, On::Table(_) | On::Unnamed(_)));
        match k {
            K::Select | K::Insert | K::Update | K::Delete | K::Truncate => {
                if !on_object {
                    grants::push(&mut own, Privilege::statement(k));
                }
            }
            K::Create | K::Alter | K::Drop | K::Grant | K::Revoke | K::Vacuum => {
                if !on_object {
                    grants::push(
                        &mut own,
                        Privilege::unnamed(k, "an object the agent does not name"),
                    );
                }
            }
            _ => grants::push(&mut own, Privilege::statement(k)),
        }
    }
    let mut ps: Vec<Privilege> = own.into_iter().chain(ps).fold(Vec::new(), |mut v, p| {
        grants::push(&mut v, p);
        v
    });
    if ps.is_empty() {
        ps.push(Privilege::unnamed(
            K::Other,
            "a statement the agent does not decompose",
        ));
    }
    facts.privileges = ps;
}

// ---- text → statements ----------------------------------------------------------------

/// Deepest nesting of calls, casts and subscripts (`f(`, `CAST(`, `ARRAY[`, `x[`)
/// the agent parses. sqlparser 0.61 backtracks on them, at a cost that triples
/// per level on crafted input (`CAST(CAST(...1)))`: 18 ms at 8 levels, 0.9 s at
/// 12); deeper text is refused as unparseable.
pub const MAX_CALL_NESTING: usize = 8;
/// At most this many such openers nested 4 or more levels deep in one text.
pub const MAX_DEEP_CALLS: usize = 64;

/// Most tokens in one chain (see [`chain_depth`]) the agent analyses.
pub const MAX_CHAIN: usize = 50_000;
/// Stack per token of chain, beyond the fixed part (release frames of the
/// parser, the tree walks and the drop of a left-deep tree are under 2 KiB a level).
const STACK_PER_CHAIN_TOKEN: usize = 4 << 10;

/// An upper bound of the depth of the expression tree sqlparser builds: operator
/// chains (`a + b + c`, `x::t::u`, `p OR q OR r`) become left-deep trees as deep
/// as they are long, and walking, printing or dropping such a tree recurses once
/// per level. Counts the significant tokens of each comma-separated segment, summed
/// over the open brackets.
fn chain_depth(tokens: &[Token]) -> usize {
    let mut stack: Vec<usize> = vec![0];
    let mut max = 0;
    for t in tokens {
        match t {
            Token::Whitespace(_) => continue,
            Token::LParen | Token::LBracket => stack.push(0),
            Token::RParen | Token::RBracket => {
                if stack.len() > 1 {
                    stack.pop();
                }
            }
            Token::Comma => {
                if let Some(top) = stack.last_mut() {
                    *top = 0;
                }
            }
            Token::SemiColon => {
                stack.clear();
                stack.push(0);
            }
            _ => {
                if let Some(top) = stack.last_mut() {
                    *top += 1;
                }
                let total: usize = stack.iter().sum();
                max = max.max(total);
            }
        }
    }
    max
}

/// Refuses texts whose parse could take unbounded time (see [`MAX_CALL_NESTING`]).
/// How many statements the text has between top-level semicolons (empty ones
/// not counted), as the server splits a simple-query message.
fn top_level_statements(tokens: &[Token]) -> usize {
    let mut n = 0;
    let mut depth = 0i32;
    let mut open = false;
    for t in tokens {
        match t {
            Token::Whitespace(_) | Token::EOF => continue,
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            Token::SemiColon if depth <= 0 => {
                depth = 0;
                open = false;
                continue;
            }
            _ => {}
        }
        if !open {
            open = true;
            n += 1;
        }
    }
    n
}

fn guard(tokens: &[Token]) -> Result<(), String> {
    // `U&"..."`: a Unicode-escaped identifier, which sqlparser reads as the name
    // `U` followed by `&` and a quoted name.
    for w in tokens.windows(3) {
        if let [Token::Word(u), Token::Ampersand, Token::Word(q)] = w
            && u.quote_style.is_none()
            && u.value.eq_ignore_ascii_case("u")
            && q.quote_style == Some('"')
        {
            return Err(
                "a Unicode-escaped identifier (U&\"...\") is not read by the agent; write the name plainly".into(),
            );
        }
    }
    let mut stack: Vec<bool> = Vec::new();
    let mut risky = 0usize;
    let mut deep = 0usize;
    let mut prev_word = false;
    for t in tokens {
        match t {
            Token::Whitespace(_) => continue,
            Token::LParen | Token::LBracket => {
                let r = matches!(t, Token::LBracket) || prev_word;
                stack.push(r);
                if r {
                    risky += 1;
                    if risky > MAX_CALL_NESTING {
                        return Err(format!(
                            "calls, casts or subscripts nested more than {MAX_CALL_NESTING} deep"
                        ));
                    }
                    if risky >= 4 {
                        deep += 1;
                        if deep > MAX_DEEP_CALLS {
                            return Err(format!(
                                "more than {MAX_DEEP_CALLS} calls, casts or subscripts nested 4 or more deep"
                            ));
                        }
                    }
                }
            }
            Token::RParen | Token::RBracket if stack.pop() == Some(true) => {
                risky -= 1;
            }
            _ => {}
        }
        prev_word = matches!(t, Token::Word(_));
    }
    Ok(())
}

/// Parses and analyses a text. Never panics.
pub fn analyze_text(sql: &str) -> Analysis {
    // The parser and the walks over its tree recurse (at most 50 levels, the
    // parser's limit): with less than RED_ZONE of stack left, the analysis runs on
    // a stack of its own. Switching stacks costs tens of microseconds, so it is
    // only done when needed (debug builds have much larger frames).
    const RED_ZONE: usize = if cfg!(debug_assertions) {
        32 << 20
    } else {
        1 << 20
    };
    let run = || {
        let dialect = PostgreSqlDialect {};
        let tokens = match Tokenizer::new(&dialect, sql).tokenize() {
            Ok(t) => t,
            Err(e) => {
                return Analysis {
                    statements: Vec::new(),
                    error: Some(e.to_string()),
                    unanalysed: None,
                };
            }
        };
        let chain = chain_depth(&tokens);
        if chain > MAX_CHAIN {
            return Analysis {
                statements: Vec::new(),
                error: Some(format!(
                    "an expression chain of more than {MAX_CHAIN} tokens (the agent refuses it rather than recurse that deep)"
                )),
                unanalysed: None,
            };
        }
        let need = RED_ZONE + chain * STACK_PER_CHAIN_TOKEN;
        stacker::maybe_grow(need, need + (16 << 20), || analyze_inner(sql, tokens))
    };
    match std::panic::catch_unwind(run) {
        Ok(a) => a,
        Err(_) => Analysis {
            statements: Vec::new(),
            error: Some("the SQL analyser failed on this text".into()),
            unanalysed: None,
        },
    }
}

/// sqlparser's parse of `sql` (whose tokens are `tokens`), with empty target
/// lists read as the server reads them (see [`recognise::parse_filled`]).
fn parse(sql: &str, tokens: &[Token]) -> Result<Vec<Statement>, sqlparser::parser::ParserError> {
    if recognise::has_empty_target(tokens) {
        recognise::parse_filled(sql)
    } else {
        Parser::parse_sql(&PostgreSqlDialect {}, sql)
    }
}

fn analyze_inner(sql: &str, tokens: Vec<Token>) -> Analysis {
    if let Err(e) = guard(&tokens) {
        return Analysis {
            statements: Vec::new(),
            error: Some(e),
            unanalysed: None,
        };
    }
    // sqlparser reads whatever follows `COPY ... FROM STDIN;` as the COPY's inline
    // data, while the server runs it as further statements: such texts are split
    // at semicolons by the agent and parsed statement by statement.
    let whole = parse(sql, &tokens).and_then(|stmts| {
        if stmts.iter().any(|s| {
            matches!(
                s,
                Statement::Copy {
                    to: false,
                    target: CopyTarget::Stdin,
                    ..
                }
            )
        }) {
            Err(sqlparser::parser::ParserError::ParserError(
                "COPY FROM STDIN".into(),
            ))
        } else {
            Ok(stmts)
        }
    });
    // The parser must see as many statements as the text has between top-level
    // semicolons, as the server does: a statement the parser swallowed (it read
    // `CREATE VIEW v AS TABLE a; CHECKPOINT` as one) would never be decided.
    let whole = whole.and_then(|stmts| {
        let pieces = top_level_statements(&tokens);
        if stmts.len() != pieces {
            return Err(sqlparser::parser::ParserError::ParserError(format!(
                "the SQL parser read {} statement(s) where the text has {pieces} between semicolons",
                stmts.len()
            )));
        }
        Ok(stmts)
    });
    // A parse the analysis cannot trust is no parse.
    let whole = whole.and_then(|stmts| match uncertain(&stmts) {
        Some(e) => Err(sqlparser::parser::ParserError::ParserError(e)),
        None => Ok(stmts),
    });
    match whole {
        Ok(stmts) => Analysis {
            statements: stmts
                .iter()
                .map(|s| std::sync::Arc::new(statement_info(s)))
                .collect(),
            error: None,
            unanalysed: None,
        },
        Err(_) => {
            // Statements sqlparser does not know (DO, CREATE RULE, ABORT, ...): split
            // the text at top-level semicolons and recognise them one by one.
            let pieces = match split_statements(sql) {
                Ok(p) => p,
                Err(e) => {
                    return Analysis {
                        statements: Vec::new(),
                        error: Some(e),
                        unanalysed: None,
                    };
                }
            };
            let mut out = Vec::new();
            for p in pieces {
                // The terminating semicolon (which the split removed) is what
                // sqlparser needs after `COPY ... FROM STDIN`.
                // A newline first: the piece may end in a line comment.
                match parse(&format!("{}\n;", p.text), &p.tokens) {
                    Ok(stmts) if uncertain(&stmts).is_some() => {
                        return Analysis {
                            statements: Vec::new(),
                            error: uncertain(&stmts),
                            unanalysed: Some(recognise::construct(&p.tokens)),
                        };
                    }
                    Ok(stmts) => out.extend(stmts.iter().map(statement_info)),
                    Err(e) => match fallback(&p) {
                        Some(info) => out.push(info),
                        None => {
                            let construct = recognise::construct(&p.tokens);
                            return Analysis {
                                statements: Vec::new(),
                                error: Some(format!(
                                    "the agent cannot analyse this `{construct}` statement ({e}); the target's `defaults.unparseable: allow` lets statements it cannot analyse through unchecked"
                                )),
                                unanalysed: Some(construct),
                            };
                        }
                    },
                }
            }
            Analysis {
                statements: out.into_iter().map(std::sync::Arc::new).collect(),
                error: None,
                unanalysed: None,
            }
        }
    }
}

/// Why a parsed text cannot be analysed with certainty, if it cannot: the
/// parser reads `FROM ONLY t` (PostgreSQL: table `t` without its children) as
/// a table named `only` with the alias `t`, so the table read would be missed.
/// `ONLY` is reserved in PostgreSQL: unquoted, it is never a table name.
fn uncertain(stmts: &[Statement]) -> Option<String> {
    let mut found = None;
    for st in stmts {
        let _ = ast::visit_relations(st, |n| {
            if let [ObjectNamePart::Identifier(id)] = n.0.as_slice()
                && id.quote_style.is_none()
                && id.value.eq_ignore_ascii_case("only")
            {
                found = Some("`ONLY` before a table name is not analysed".to_string());
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        });
    }
    found
}

pub(super) struct Piece {
    pub(super) text: String,
    /// Significant tokens (no whitespace or comments).
    pub(super) tokens: Vec<Token>,
}

/// Byte offsets of the starts of the lines of `sql`.
pub(super) fn line_starts(sql: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(sql.match_indices('\n').map(|(i, _)| i + 1))
        .collect()
}

/// The byte offset in `sql` of a tokenizer location (lines and columns count
/// from 1, columns in characters); `lines` from [`line_starts`].
pub(super) fn byte_offset(sql: &str, lines: &[usize], loc: Location) -> Result<usize, String> {
    let bad = || format!("the SQL text could not be split at {loc}");
    let start = *lines
        .get((loc.line as usize).checked_sub(1).ok_or_else(bad)?)
        .ok_or_else(bad)?;
    let line = sql.get(start..).ok_or_else(bad)?;
    let col = (loc.column as usize).checked_sub(1).ok_or_else(bad)?;
    match line.char_indices().nth(col) {
        Some((i, _)) => Ok(start + i),
        None if line.chars().count() == col => Ok(start + line.len()),
        None => Err(bad()),
    }
}

/// Splits `sql` at top-level semicolons. Each piece's text is the original text
/// between the semicolons, never the tokens rendered again: sqlparser renders
/// some tokens differently from how they were written (`'it''s'` as `'it's'`,
/// `E'\\''` unescaped), and a re-rendered piece would be parsed as other SQL than
/// the server runs. A piece whose text does not tokenize to the same tokens is
/// refused (Err).
fn split_statements(sql: &str) -> Result<Vec<Piece>, String> {
    let dialect = PostgreSqlDialect {};
    let spanned = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| e.to_string())?;
    let lines = line_starts(sql);
    // Byte offset of a token's start.
    let offset = |loc: Location| byte_offset(sql, &lines, loc);
    let mut out = Vec::new();
    let mut sig: Vec<Token> = Vec::new();
    let mut from: Option<usize> = None;
    let mut depth = 0i32;
    let mut push = |from: usize, to: usize, sig: Vec<Token>| -> Result<(), String> {
        let text = sql
            .get(from..to)
            .ok_or_else(|| "the SQL text could not be split".to_string())?
            .to_string();
        // The piece must read as exactly the tokens the split saw.
        let again: Vec<Token> = Tokenizer::new(&dialect, &text)
            .tokenize()
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|t| !matches!(t, Token::Whitespace(_)))
            .collect();
        if again != sig {
            return Err("the SQL text could not be split into statements with certainty".into());
        }
        out.push(Piece { text, tokens: sig });
        Ok(())
    };
    for t in spanned {
        match &t.token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            _ => {}
        }
        if matches!(t.token, Token::SemiColon) && depth <= 0 {
            if let Some(f) = from.take() {
                push(f, offset(t.span.start)?, std::mem::take(&mut sig))?;
            }
            depth = 0;
            continue;
        }
        if matches!(t.token, Token::Whitespace(_) | Token::EOF) {
            continue;
        }
        if from.is_none() {
            from = Some(offset(t.span.start)?);
        }
        sig.push(t.token);
    }
    if let Some(f) = from {
        push(f, sql.len(), sig)?;
    }
    Ok(out)
}

pub(super) fn word(t: Option<&Token>) -> Option<String> {
    match t {
        Some(Token::Word(w)) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
        _ => None,
    }
}

/// Statements sqlparser does not parse, recognised by their leading keywords,
/// with the privileges they exercise.
fn fallback(p: &Piece) -> Option<StatementInfo> {
    let mut info = recognise::recognise(p).or_else(|| fallback_facts(p))?;
    if info.facts.privileges.is_empty() {
        complete_privileges(&mut info.facts, Vec::new());
    }
    Some(info)
}

fn fallback_facts(p: &Piece) -> Option<StatementInfo> {
    let t = &p.tokens;
    let w = |i: usize| word(t.get(i));
    let simple = |k: K| {
        Some(StatementInfo {
            facts: StatementFacts {
                kinds: vec![k],
                ..Default::default()
            },
            fingerprint: fingerprint_tokens(t),
            ..Default::default()
        })
    };
    match w(0).as_deref() {
        Some("DO") => simple(K::Do),
        // Spellings of a role change sqlparser does not read (`SET role TO x`,
        // `SET LOCAL SESSION AUTHORIZATION x`, `RESET SESSION AUTHORIZATION`).
        Some("SET") | Some("RESET") => {
            let mut i = 1;
            if w(0).as_deref() == Some("SET")
                && matches!(w(1).as_deref(), Some("LOCAL" | "SESSION"))
            {
                i = 2;
            }
            let role = match w(i).as_deref() {
                Some("ROLE") | Some("SESSION_AUTHORIZATION") => true,
                Some("SESSION") => w(i + 1).as_deref() == Some("AUTHORIZATION"),
                _ => {
                    matches!(t.get(i), Some(Token::Word(x)) if x.quote_style.is_some() && is_role_setting(&x.value))
                }
            };
            if role { simple(K::SetRole) } else { None }
        }
        Some("COPY") => copy_without_options(t),
        Some("VACUUM") | Some("ANALYZE") | Some("ANALYSE") => vacuum(t),
        Some("ABORT") => simple(K::Rollback),
        Some("CHECKPOINT") => simple(K::Other),
        Some("ALTER") if w(1).as_deref() == Some("SYSTEM") => {
            let mut i = simple(K::Alter)?;
            i.dangerous.push("alter_system".into());
            i.facts.functions.push("alter_system".into());
            complete_privileges(
                &mut i.facts,
                vec![
                    Privilege::function("alter_system".into()),
                    Privilege::unnamed(K::Alter, "the server configuration"),
                ],
            );
            Some(i)
        }
        Some("CREATE") => {
            let mut i = 1;
            if w(1).as_deref() == Some("OR") && w(2).as_deref() == Some("REPLACE") {
                i = 3;
            }
            if w(i).as_deref() == Some("RULE") {
                create_rule(t, i + 1)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// `CREATE RULE name AS ON event TO table [WHERE cond] DO [ALSO|INSTEAD] action`:
/// the table and everything the actions touch count as written.
/// VACUUM / ANALYZE [options] [table [(columns)], ...]: maintenance of the
/// tables named (reported as written), or of every table when none is named.
fn vacuum(t: &[Token]) -> Option<StatementInfo> {
    let mut i = 1;
    if matches!(t.get(i), Some(Token::LParen)) {
        while i < t.len() && !matches!(t[i], Token::RParen) {
            i += 1;
        }
        i += 1;
    }
    while matches!(
        word(t.get(i)).as_deref(),
        Some("FULL" | "FREEZE" | "VERBOSE" | "ANALYZE" | "ANALYSE")
    ) {
        i += 1;
    }
    let mut tables = Vec::new();
    let mut name = String::new();
    let mut depth = 0i32;
    for tok in &t[i.min(t.len())..] {
        match tok {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            _ if depth > 0 => {}
            Token::Word(w) => name.push_str(&if w.quote_style.is_some() {
                w.value.clone()
            } else {
                w.value.to_ascii_lowercase()
            }),
            Token::Period => name.push('.'),
            Token::Comma => tables.push(std::mem::take(&mut name)),
            // Anything else is not a table list this recogniser understands.
            _ => return None,
        }
    }
    if !name.is_empty() {
        tables.push(name);
    }
    if tables
        .iter()
        .any(|n| n.is_empty() || n.starts_with('.') || n.ends_with('.'))
    {
        return None;
    }
    let privileges = if tables.is_empty() {
        vec![Privilege::unnamed(K::Vacuum, "every table")]
    } else {
        tables
            .iter()
            .map(|n| Privilege::table(K::Vacuum, n.clone()))
            .collect()
    };
    let mut facts = StatementFacts {
        kinds: vec![K::Vacuum],
        tables_written: tables,
        ..Default::default()
    };
    complete_privileges(&mut facts, privileges);
    Some(StatementInfo {
        facts,
        fingerprint: fingerprint_tokens(t),
        ..Default::default()
    })
}

/// A COPY whose option list sqlparser does not read (`WITH (FREEZE ON)`, as
/// pgbench sends): options only shape the data format, so the statement is
/// analysed without them. A `WHERE` clause (an expression, which could call
/// functions) is never dropped: such a text stays unparsed.
pub(super) fn copy_without_options(t: &[Token]) -> Option<StatementInfo> {
    let mut depth = 0i32;
    let mut end = None;
    for (i, tok) in t.iter().enumerate() {
        match tok {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            _ => {}
        }
        if depth == 0 && matches!(word(Some(tok)).as_deref(), Some("FROM") | Some("TO")) {
            end = Some(match word(t.get(i + 1)).as_deref() {
                Some("PROGRAM") => i + 3,
                _ => i + 2,
            });
            break;
        }
    }
    let end = end?;
    if end > t.len()
        || t[end..]
            .iter()
            .any(|x| word(Some(x)).as_deref() == Some("WHERE"))
    {
        return None;
    }
    let text: Vec<String> = t[..end].iter().map(|x| x.to_string()).collect();
    let stmts = Parser::parse_sql(&PostgreSqlDialect {}, &format!("{};", text.join(" "))).ok()?;
    let mut info = statement_info(stmts.first()?);
    info.fingerprint = fingerprint_tokens(t);
    Some(info)
}

fn create_rule(t: &[Token], mut i: usize) -> Option<StatementInfo> {
    // Find `TO` after `ON event`.
    while i < t.len() && word(t.get(i)).as_deref() != Some("TO") {
        i += 1;
    }
    i += 1;
    let mut name = String::new();
    while let Some(tok) = t.get(i) {
        match tok {
            Token::Word(w) => {
                name.push_str(&if w.quote_style.is_some() {
                    w.value.clone()
                } else {
                    w.value.to_ascii_lowercase()
                });
            }
            Token::Period => name.push('.'),
            _ => break,
        }
        i += 1;
        if !matches!(t.get(i), Some(Token::Period)) && !matches!(tok, Token::Period) {
            break;
        }
    }
    if name.is_empty() {
        return None;
    }
    // The actions after DO [ALSO|INSTEAD].
    while i < t.len() && word(t.get(i)).as_deref() != Some("DO") {
        i += 1;
    }
    i += 1;
    if matches!(word(t.get(i)).as_deref(), Some("ALSO") | Some("INSTEAD")) {
        i += 1;
    }
    let mut privileges = vec![Privilege::table(K::Create, name.clone())];
    let mut facts = StatementFacts {
        kinds: vec![K::Create],
        tables_written: vec![name],
        ..Default::default()
    };
    let mut dangerous = Vec::new();
    let rest: String = t[i.min(t.len())..]
        .iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let rest = rest.trim();
    let rest = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or(rest);
    if !rest.eq_ignore_ascii_case("NOTHING") {
        let stmts = recognise::parse_filled(rest).ok()?;
        if uncertain(&stmts).is_some() {
            return None;
        }
        for s in &stmts {
            let inner = statement_info(s);
            for x in inner
                .facts
                .tables_read
                .into_iter()
                .chain(inner.facts.tables_written)
            {
                // `new` and `old` are the rule's row variables, not tables.
                if x != "new" && x != "old" {
                    push_unique(&mut facts.tables_written, x);
                }
            }
            for f in inner.facts.functions {
                push_unique(&mut facts.functions, f);
            }
            for d in inner.dangerous {
                push_unique(&mut dangerous, d);
            }
            // The rule's actions run whenever the table is touched: what they
            // exercise is exercised by creating it (`new` and `old` aside).
            for p in inner.facts.privileges {
                if p.names().iter().any(|n| n == "new" || n == "old") {
                    continue;
                }
                grants::push(&mut privileges, p);
            }
        }
    }
    complete_privileges(&mut facts, privileges);
    Some(StatementInfo {
        facts,
        fingerprint: fingerprint_tokens(t),
        dangerous,
        ..Default::default()
    })
}

pub(super) fn fingerprint_tokens(t: &[Token]) -> String {
    t.iter()
        .map(|x| match x {
            Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::HexStringLiteral(_) => "?".to_string(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod copy_option_tests {
    use super::*;

    #[test]
    fn copy_with_options_sqlparser_does_not_read_is_analysed_without_them() {
        let a = analyze_text("copy pgbench_accounts from stdin with (freeze on)");
        assert!(a.error.is_none(), "{:?}", a.error);
        assert_eq!(a.statements.len(), 1);
        let f = &a.statements[0].facts;
        assert_eq!(f.kinds, vec![K::Copy]);
        assert!(
            f.tables_written
                .iter()
                .any(|t| t.ends_with("pgbench_accounts")),
            "{f:?}"
        );
        let a = analyze_text("COPY \"Weird\".t TO PROGRAM 'id' WITH (FORMAT csv, FREEZE on)");
        assert!(a.error.is_none(), "{:?}", a.error);
        assert!(
            a.statements[0]
                .dangerous
                .iter()
                .any(|d| d == "copy_program")
        );
        // A WHERE clause may call functions: never dropped, its facts are taken.
        let a = analyze_text(
            "copy t from stdin with (freeze on) where pg_read_file('/etc/passwd') is not null",
        );
        assert!(a.error.is_none(), "{:?}", a.error);
        assert!(
            a.statements[0]
                .dangerous
                .iter()
                .any(|d| d == "pg_read_file")
        );
    }

    #[test]
    fn vacuum_and_analyze_name_their_tables() {
        let a = analyze_text("vacuum analyze pgbench_branches");
        assert!(a.error.is_none(), "{:?}", a.error);
        assert_eq!(a.statements[0].facts.kinds, vec![K::Vacuum]);
        assert!(
            a.statements[0]
                .facts
                .tables_written
                .iter()
                .any(|t| t.ends_with("pgbench_branches"))
        );
        let a = analyze_text("VACUUM (VERBOSE, ANALYZE) public.a, \"B\"(x)");
        assert!(a.error.is_none(), "{:?}", a.error);
        let w = &a.statements[0].facts.tables_written;
        assert!(
            w.iter().any(|t| t == "public.a") && w.iter().any(|t| t.ends_with("B")),
            "{w:?}"
        );
        assert!(analyze_text("vacuum").error.is_none());
    }
}

#[cfg(test)]
mod stack_tests {
    /// The worst inputs analyse on a 2 MiB thread (the default of Rust and tokio
    /// threads) without overflowing the stack.
    #[test]
    fn worst_inputs_do_not_overflow_the_stack() {
        let inputs = vec![
            "SELECT 1 FROM t WHERE a = ".to_string() + &"NOT ".repeat(10_000) + "true",
            "SELECT ".to_string() + &"(".repeat(10_000) + "1",
            "SELECT ".to_string() + &"(SELECT ".repeat(10_000),
            "SELECT ".to_string() + &"- ".repeat(10_000) + "1",
            "SELECT 1".to_string() + &" + 1".repeat(10_000),
            "SELECT 1".to_string() + &" + 1".repeat(100_000),
            "SELECT * FROM t WHERE ".to_string() + &"a = 1 OR ".repeat(5_000) + "true",
            "SELECT ".to_string() + &"CASE WHEN ".repeat(1000),
            "WITH ".to_string() + &"a AS (WITH ".repeat(1000),
            "SELECT * FROM t WHERE a IN (".to_string()
                + &"SELECT a FROM t WHERE a IN (".repeat(1000),
            "SELECT ".to_string() + &"f(".repeat(8) + &"g(1), ".repeat(60) + &")".repeat(8),
            "SELECT 1".to_string() + &"::int".repeat(10_000),
            "SELECT a".to_string() + &" COLLATE \"C\"".repeat(10_000),
            "SELECT ".to_string() + &"a AND ".repeat(10_000) + "b",
            "SELECT ".to_string() + &"EXISTS (SELECT ".repeat(1000),
        ];
        let h = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                for i in &inputs {
                    let _ = super::analyze_text(i);
                }
            })
            .unwrap();
        h.join().unwrap();
    }
}
