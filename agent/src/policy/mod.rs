//! Host policy: the files security teams write, compiled into a form that makes
//! evaluation cheap, and the pure decision function.
//!
//! - `spec`: the file format (serde types, unknown fields refused).
//! - `locate`: line and column of every node, for errors found after parsing.
//! - this module: loading a directory (all or nothing), validation with
//!   `file:line:column` and a hint for every error, the compiled model, and
//!   [`evaluate`].
//! - `testing`: `*.test.yaml` policy unit tests (`portcullis policy test`).
//! - `explain`: `portcullis policy explain`.

pub mod bench;
pub mod catalog;
pub mod explain;
pub mod grants;
pub mod lint;
pub mod locate;
pub mod spec;
pub mod suggest;
pub mod testing;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};

pub use spec::{API_VERSION, Effect, Mode, Protocol};
use spec::{Conditions, PolicyFile, Selector, TokenSelector};

use locate::Locations;

/// Rule id reported when no rule matched.
pub const DEFAULT_DENY: &str = "default-deny";

// ---- errors ---------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy directory {path}: {source}")]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An error at a place in a file.
    #[error("{}:{line}:{column}: {message}{}", path.display(), hint.as_ref().map(|h| format!("\n  hint: {h}")).unwrap_or_default())]
    At {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
        hint: Option<String>,
    },
    #[error("no policy files (*.yaml, *.yml) in {0}: refusing to run without a policy")]
    Empty(PathBuf),
}

/// Every error of one load; loading fails if there is any.
#[derive(Debug)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

// ---- compiled model ---------------------------------------------------------------

/// An address prefix in IPv6 form (IPv4 as `::ffff:a.b.c.d/96+n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Prefix {
    pub addr: [u8; 16],
    /// Prefix length in IPv6 bits.
    pub len: u8,
}

impl Prefix {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let ip: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR"))?;
        let (addr, max, offset) = match ip {
            IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), 32u8, 96u8),
            IpAddr::V6(v6) => (v6.octets(), 128u8, 0u8),
        };
        let len = match len {
            None => max,
            Some(l) => {
                let l: u8 = l
                    .trim()
                    .parse()
                    .map_err(|_| format!("`{s}`: prefix length is not a number"))?;
                if l > max {
                    return Err(format!("`{s}`: prefix length {l} is longer than {max}"));
                }
                l
            }
        };
        let total = offset + len;
        let p = Prefix {
            addr: mask(addr, total),
            len: total,
        };
        if p.addr != addr {
            return Err(format!(
                "`{s}` has host bits set beyond /{len}; did you mean {}?",
                p.display()
            ));
        }
        Ok(p)
    }

    pub fn host(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Prefix {
                addr: v4.to_ipv6_mapped().octets(),
                len: 128,
            },
            IpAddr::V6(v6) => Prefix {
                addr: v6.octets(),
                len: 128,
            },
        }
    }

    pub fn contains(&self, addr: &[u8; 16]) -> bool {
        mask(*addr, self.len) == self.addr
    }

    pub fn display(&self) -> String {
        let v6 = std::net::Ipv6Addr::from(self.addr);
        match v6.to_ipv4_mapped() {
            Some(v4) if self.len >= 96 => format!("{v4}/{}", self.len - 96),
            _ => format!("{v6}/{}", self.len),
        }
    }
}

fn mask(mut addr: [u8; 16], len: u8) -> [u8; 16] {
    for (i, b) in addr.iter_mut().enumerate() {
        let bit = (i * 8) as u8;
        if bit >= len {
            *b = 0;
        } else if len - bit < 8 {
            *b &= 0xffu8 << (8 - (len - bit));
        }
    }
    addr
}

/// A compiled selector: globs parsed once.
#[derive(Debug, Clone)]
pub struct CompiledSelector {
    pub spec: Selector,
    unit: Option<glob::Pattern>,
    slice: Option<glob::Pattern>,
    cgroup: Option<glob::Pattern>,
    user: Option<glob::Pattern>,
    group: Option<glob::Pattern>,
    exe: Option<glob::Pattern>,
    comm: Option<glob::Pattern>,
    token: Option<CompiledToken>,
    any: Vec<CompiledSelector>,
    all: Vec<CompiledSelector>,
}

#[derive(Debug, Clone)]
struct CompiledToken {
    issuer: Option<glob::Pattern>,
    subject: Option<glob::Pattern>,
    audience: Option<glob::Pattern>,
    claims: Vec<(String, glob::Pattern)>,
}

#[derive(Debug, Clone)]
pub struct Workload {
    pub name: String,
    pub selector: CompiledSelector,
    pub file: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub id: u32,
    pub name: String,
    pub prefixes: Vec<Prefix>,
    /// Host names as written, with what they resolved to at load.
    pub hostnames: Vec<(String, Vec<IpAddr>)>,
    /// Empty = every port.
    pub ports: Vec<u16>,
    pub protocol: Protocol,
    /// Mode of the file that defines the target: decides what `default-deny` does.
    pub mode: Mode,
    pub credentials: Option<String>,
    pub tls: spec::TlsSpec,
    pub unparseable: spec::Unparseable,
    /// Full statements or fingerprints in statement audit records.
    pub statement_text: spec::StatementText,
}

#[derive(Debug, Clone, Serialize)]
pub struct Approval {
    pub approvers: Vec<String>,
    pub timeout: Duration,
    pub min_approvals: u32,
}

/// A daily UTC window: minutes since midnight, `from` inclusive, `to` exclusive.
#[derive(Debug, Clone, Serialize)]
pub struct TimeWindow {
    /// Bit i set: weekday i (0 = Monday) allowed. 0x7f when no days were given.
    pub days: u8,
    pub from_min: u16,
    pub to_min: u16,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub workloads: Vec<usize>,
    pub targets: Vec<u32>,
    pub effect: Effect,
    pub mode: Mode,
    pub approval: Option<Approval>,
    pub time: Option<TimeWindow>,
    /// Conditions on requests (SQL, HTTP, Kubernetes): the rule decides requests,
    /// not connections.
    pub request_conditions: Option<Conditions>,
    /// `when.sql`, with its globs compiled.
    pub sql: Option<CompiledSql>,
    pub description: Option<String>,
    pub file: PathBuf,
    pub line: usize,
}

/// A compiled mask rule. Validated and carried with the policy now; applied to
/// responses by the protocol handlers that parse them (PostgreSQL first).
#[derive(Debug, Clone)]
#[allow(dead_code)]
pub struct Mask {
    pub id: String,
    pub workloads: Option<Vec<usize>>,
    pub targets: Vec<u32>,
    pub columns: Vec<glob::Pattern>,
    pub detectors: Vec<spec::Detector>,
    pub strategy: spec::MaskStrategy,
}

/// The merged, validated policy set.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    pub workloads: Vec<Workload>,
    pub targets: Vec<Target>,
    pub rules: Vec<Rule>,
    pub masks: Vec<Mask>,
    /// sha256 over the file names and contents, in name order.
    pub hash: String,
    pub files: Vec<PathBuf>,
    /// Rule indexes per target id, in precedence order.
    by_target: Vec<Vec<usize>>,
    /// Some selector looks at `exe_sha256`: the agent must hash executables.
    pub needs_exe_sha256: bool,
}

/// Verified token claims presented by a workload.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenClaims {
    pub issuer: String,
    pub subject: String,
    #[serde(default)]
    pub audience: Vec<String>,
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
}

/// The facts about a workload a selector can look at (also how a policy test
/// describes its workload).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subject {
    pub uid: Option<u32>,
    pub user: Option<String>,
    pub gid: Option<u32>,
    pub group: Option<String>,
    pub exe: Option<String>,
    pub exe_sha256: Option<String>,
    pub comm: Option<String>,
    pub cgroup: Option<String>,
    pub unit: Option<String>,
    pub slice: Option<String>,
    pub token: Option<TokenClaims>,
}

/// What a SQL statement does, in the terms of `when.sql` conditions (built by
/// `protocol::sql`). Tables are `schema.table`; an unqualified name appears once
/// per schema the session's search_path may resolve it to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StatementFacts {
    /// The statement's kind first, then kinds of statements it contains that will
    /// execute (`EXPLAIN ANALYZE DELETE` → explain, delete).
    pub kinds: Vec<spec::StatementKind>,
    pub tables_read: Vec<String>,
    pub tables_written: Vec<String>,
    /// Best effort: `schema.table.column`, `table.column` or `column`.
    pub columns: Vec<String>,
    /// Lower-cased; schema-qualified as written, and without `pg_catalog.`.
    pub functions: Vec<String>,
    /// UPDATE or DELETE of every row (no WHERE, or a WHERE naming no column).
    pub where_less: bool,
    /// The privileges the statement exercises, each an action on an object as
    /// PostgreSQL checks them: what `allow` rules must grant, every one of them
    /// (see [`grants`]).
    pub privileges: Vec<grants::Privilege>,
}

/// What is being decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// A new connection to the target.
    Connect,
    /// One SQL statement on a connection.
    Statement(&'a StatementFacts),
    /// A request the agent could not parse.
    Unparseable,
}

/// Rule id of the decision for an unparseable request when the target's
/// `defaults.unparseable` is `deny`.
pub const UNPARSEABLE: &str = "unparseable";

#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub subject: &'a Subject,
    pub target: u32,
    pub action: Action<'a>,
    /// Seconds since the Unix epoch (UTC), for time windows.
    pub now_unix: u64,
}

/// What happens to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Allow,
    Deny,
    /// Held for approval (until approvals exist: refused, saying approval is required).
    Hold,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// What happens: monitor mode turns a deny or hold into an allow.
    pub outcome: Outcome,
    /// What the policy said.
    pub decided: Effect,
    pub rule: String,
    pub mode: Mode,
    /// Workload names whose selectors matched.
    pub workloads: Vec<String>,
    /// Why, where the rule alone does not say: for a statement refused by
    /// `default-deny`, the privilege no rule grants.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For a statement allowed by grants: each privilege and the rule that
    /// granted it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<grants::Grant>,
}

impl Default for Decision {
    /// A refusal by `default-deny` in enforce mode: what is left when nothing else is said.
    fn default() -> Self {
        Decision {
            outcome: Outcome::Deny,
            decided: Effect::Deny,
            rule: DEFAULT_DENY.into(),
            mode: Mode::Enforce,
            workloads: Vec::new(),
            reason: None,
            grants: Vec::new(),
        }
    }
}

impl Decision {
    /// The word for audit records: allow, deny, kill, held, would_deny,
    /// would_hold, would_kill.
    pub fn label(&self) -> &'static str {
        match (self.outcome, self.decided) {
            (Outcome::Allow, Effect::Deny) => "would_deny",
            (Outcome::Allow, Effect::RequireApproval) => "would_hold",
            (Outcome::Allow, Effect::Kill) => "would_kill",
            (Outcome::Deny, Effect::Kill) => "kill",
            (Outcome::Allow, _) => "allow",
            (Outcome::Deny, _) => "deny",
            (Outcome::Hold, _) => "held",
        }
    }
}

/// A compiled `when.sql` condition: every field given must hold.
#[derive(Debug, Clone, Default)]
pub struct CompiledSql {
    pub statements: Vec<spec::StatementKind>,
    pub tables: Vec<glob::Pattern>,
    pub tables_read: Vec<glob::Pattern>,
    pub tables_written: Vec<glob::Pattern>,
    pub columns: Vec<glob::Pattern>,
    pub functions: Vec<glob::Pattern>,
    pub where_less: Option<bool>,
}

impl CompiledSql {
    pub fn compile(s: &spec::SqlCondition) -> Result<Self, String> {
        let g = |v: &Vec<String>| -> Result<Vec<glob::Pattern>, String> {
            v.iter()
                .map(|p| glob::Pattern::new(p).map_err(|e| format!("`{p}`: {e}")))
                .collect()
        };
        Ok(CompiledSql {
            statements: s.statements.clone(),
            tables: g(&s.tables)?,
            tables_read: g(&s.tables_read)?,
            tables_written: g(&s.tables_written)?,
            columns: g(&s.columns)?,
            functions: g(&s.functions)?,
            where_less: s.where_less,
        })
    }

    /// Which fields hold for `f` (name, held), in a fixed order; the condition
    /// holds when all of them do.
    pub fn field_results(&self, f: &StatementFacts) -> Vec<(&'static str, bool)> {
        fn any(ps: &[glob::Pattern], vs: &[String]) -> bool {
            ps.iter().any(|p| vs.iter().any(|v| p.matches(v)))
        }
        let mut out = Vec::new();
        if !self.statements.is_empty() {
            out.push((
                "statements",
                self.statements.iter().any(|k| f.kinds.contains(k)),
            ));
        }
        if !self.tables.is_empty() {
            out.push((
                "tables",
                any(&self.tables, &f.tables_read) || any(&self.tables, &f.tables_written),
            ));
        }
        if !self.tables_read.is_empty() {
            out.push(("tables_read", any(&self.tables_read, &f.tables_read)));
        }
        if !self.tables_written.is_empty() {
            out.push((
                "tables_written",
                any(&self.tables_written, &f.tables_written),
            ));
        }
        if !self.columns.is_empty() {
            out.push(("columns", any(&self.columns, &f.columns)));
        }
        if !self.functions.is_empty() {
            out.push(("functions", any(&self.functions, &f.functions)));
        }
        if let Some(w) = self.where_less {
            out.push(("where_less", f.where_less == w));
        }
        out
    }

    pub fn matches(&self, f: &StatementFacts) -> bool {
        fn any(ps: &[glob::Pattern], vs: &[String]) -> bool {
            ps.iter().any(|p| vs.iter().any(|v| p.matches(v)))
        }
        (self.statements.is_empty() || self.statements.iter().any(|k| f.kinds.contains(k)))
            && (self.tables.is_empty()
                || any(&self.tables, &f.tables_read)
                || any(&self.tables, &f.tables_written))
            && (self.tables_read.is_empty() || any(&self.tables_read, &f.tables_read))
            && (self.tables_written.is_empty() || any(&self.tables_written, &f.tables_written))
            && (self.columns.is_empty() || any(&self.columns, &f.columns))
            && (self.functions.is_empty() || any(&self.functions, &f.functions))
            && self.where_less.is_none_or(|w| f.where_less == w)
    }
}

// ---- matching -------------------------------------------------------------------------

fn glob_match(p: &Option<glob::Pattern>, v: &Option<String>) -> bool {
    match (p, v) {
        (None, _) => true,
        (Some(p), Some(v)) => p.matches(v),
        // A selector on a fact we could not establish never matches.
        (Some(_), None) => false,
    }
}

impl CompiledSelector {
    pub fn matches(&self, s: &Subject) -> bool {
        let n = |want: Option<u32>, have: Option<u32>| want.is_none_or(|w| have == Some(w));
        n(self.spec.uid, s.uid)
            && n(self.spec.gid, s.gid)
            && glob_match(&self.unit, &s.unit)
            && glob_match(&self.slice, &s.slice)
            && glob_match(&self.cgroup, &s.cgroup)
            && glob_match(&self.user, &s.user)
            && glob_match(&self.group, &s.group)
            && glob_match(&self.exe, &s.exe)
            && glob_match(&self.comm, &s.comm)
            && self
                .spec
                .exe_sha256
                .as_ref()
                .is_none_or(|h| s.exe_sha256.as_ref() == Some(h))
            && self
                .token
                .as_ref()
                .is_none_or(|t| t.matches(s.token.as_ref()))
            && (self.any.is_empty() || self.any.iter().any(|x| x.matches(s)))
            && self.all.iter().all(|x| x.matches(s))
    }

    /// Which top-level fields of this selector hold for `s` (for `policy explain`).
    pub fn field_results(&self, s: &Subject) -> Vec<(&'static str, bool)> {
        let mut out = Vec::new();
        let spec = &self.spec;
        if spec.uid.is_some() {
            out.push(("uid", s.uid == spec.uid));
        }
        if spec.gid.is_some() {
            out.push(("gid", s.gid == spec.gid));
        }
        for (name, p, v) in [
            ("unit", &self.unit, &s.unit),
            ("slice", &self.slice, &s.slice),
            ("cgroup", &self.cgroup, &s.cgroup),
            ("user", &self.user, &s.user),
            ("group", &self.group, &s.group),
            ("exe", &self.exe, &s.exe),
            ("comm", &self.comm, &s.comm),
        ] {
            if p.is_some() {
                out.push((name, glob_match(p, v)));
            }
        }
        if let Some(h) = &spec.exe_sha256 {
            out.push(("exe_sha256", s.exe_sha256.as_ref() == Some(h)));
        }
        if let Some(t) = &self.token {
            out.push(("token", t.matches(s.token.as_ref())));
        }
        if !self.any.is_empty() {
            out.push(("any", self.any.iter().any(|x| x.matches(s))));
        }
        if !self.all.is_empty() {
            out.push(("all", self.all.iter().all(|x| x.matches(s))));
        }
        out
    }
}

impl CompiledToken {
    fn matches(&self, t: Option<&TokenClaims>) -> bool {
        let Some(t) = t else {
            return false;
        };
        let one = |p: &Option<glob::Pattern>, v: &str| p.as_ref().is_none_or(|p| p.matches(v));
        one(&self.issuer, &t.issuer)
            && one(&self.subject, &t.subject)
            && self
                .audience
                .as_ref()
                .is_none_or(|p| t.audience.iter().any(|a| p.matches(a)))
            && self
                .claims
                .iter()
                .all(|(k, p)| t.claims.get(k).is_some_and(|v| p.matches(v)))
    }
}

impl TimeWindow {
    fn contains(&self, now_unix: u64) -> bool {
        let days = now_unix / 86_400;
        // 1970-01-01 was a Thursday (index 3 with Monday = 0).
        let weekday = ((days + 3) % 7) as u8;
        let minute = ((now_unix % 86_400) / 60) as u16;
        let day_ok = |d: u8| self.days & (1 << d) != 0;
        if self.from_min <= self.to_min {
            day_ok(weekday) && minute >= self.from_min && minute < self.to_min
        } else if minute >= self.from_min {
            // A window spanning midnight, in its evening part: starts today.
            day_ok(weekday)
        } else {
            // Its morning part belongs to the window that started yesterday.
            minute < self.to_min && day_ok((weekday + 6) % 7)
        }
    }
}

// ---- evaluation ---------------------------------------------------------------------------

/// Decides a request. Pure: no I/O, no clock (the time is in the request).
///
/// Candidates are the rules naming the target and a matching workload, whose time
/// window (if any) holds. For a connection, a `deny` or `require_approval` with
/// request conditions (SQL, HTTP, Kubernetes) does not decide (it decides the
/// requests made on the connection), while an `allow` with request conditions lets
/// the workload connect.
///
/// For a statement (`Action::Statement`), candidates are the rules without
/// request conditions (connection-level rules apply to every statement) and the
/// deny, kill and approval rules whose `sql` conditions all hold for the
/// statement's facts. Allow rules with `sql` conditions grant privileges
/// (see [`grants`]): together they are an allow candidate when every privilege
/// of the statement is granted by one of them, in force (workload, time window,
/// `columns` and `where_less`); the decision then names the rule granting the
/// first privilege and lists the grants used, and a refusal by `default-deny`
/// gives the first privilege no rule grants as its `reason`. For
/// `Action::Unparseable`, the target's `defaults.unparseable` decides: `deny`
/// refuses with rule id [`UNPARSEABLE`]; `allow` decides it as a statement that
/// matches no condition.
///
/// Precedence: `kill` > `deny` > `require_approval` > `allow` > `default-deny`; among rules
/// of the same effect, load order. Only enforce-mode rules (and the default, which
/// follows the mode of the file defining the target) decide what happens. A
/// monitor-mode rule never changes that: when the connection passes, a more
/// restrictive monitor-mode rule is recorded as what would have happened
/// (`would_deny`, `would_hold`), so a file can be observed before it is enforced.
pub fn evaluate(policy: &CompiledPolicy, req: &Request<'_>) -> Decision {
    if req.action == Action::Unparseable
        && let Some(t) = policy.targets.get(req.target as usize)
        && t.unparseable == spec::Unparseable::Deny
    {
        return Decision {
            outcome: if t.mode == Mode::Enforce {
                Outcome::Deny
            } else {
                Outcome::Allow
            },
            decided: Effect::Deny,
            rule: UNPARSEABLE.into(),
            mode: t.mode,
            ..Decision::default()
        };
    }
    // Selector results of the workloads examined (few: those the target's rules name).
    let mut matched_cache: Vec<(usize, bool)> = Vec::new();
    // Best candidate among enforce-mode rules, and among monitor-mode rules.
    let mut best_enforce: Option<&Rule> = None;
    let mut best_monitor: Option<&Rule> = None;
    // Allow rules with `sql` conditions in force for the statement: their grants.
    let mut grant_rules: Vec<(&Rule, &CompiledSql)> = Vec::new();
    for &ri in policy
        .by_target
        .get(req.target as usize)
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let r = &policy.rules[ri];
        // A rule with request conditions decides requests. For the connection
        // itself, only its `allow` counts: it says the workload may connect and
        // then have each request decided.
        match req.action {
            Action::Connect => {
                if r.request_conditions.is_some() && r.effect != Effect::Allow {
                    continue;
                }
            }
            // A statement: connection-level rules apply to every statement; a
            // deny, kill or approval rule with request conditions when its `sql`
            // conditions hold (any listed kind, table, function...); an allow rule
            // with `sql` conditions grants privileges (see below) when its filters
            // (`columns`, `where_less`) hold.
            Action::Statement(f) => {
                if r.request_conditions.is_some() {
                    let Some(sql) = r.sql.as_ref() else {
                        continue;
                    };
                    let holds = if r.effect == Effect::Allow {
                        sql.in_force(f)
                    } else {
                        sql.matches(f)
                    };
                    if !holds {
                        continue;
                    }
                }
            }
            // Unparseable (with `defaults.unparseable: allow`): matches no condition.
            Action::Unparseable => {
                if r.request_conditions.is_some() {
                    continue;
                }
            }
        }
        if r.time.as_ref().is_some_and(|t| !t.contains(req.now_unix)) {
            continue;
        }
        let mut any = false;
        for &w in &r.workloads {
            let m = match matched_cache.iter().find(|(i, _)| *i == w) {
                Some((_, m)) => *m,
                None => {
                    let m = policy.workloads[w].selector.matches(req.subject);
                    matched_cache.push((w, m));
                    m
                }
            };
            if m {
                any = true;
                break;
            }
        }
        if !any {
            continue;
        }
        if let (Action::Statement(_), Effect::Allow, Some(sql)) = (req.action, r.effect, &r.sql)
            && r.request_conditions.is_some()
        {
            grant_rules.push((r, sql));
            continue;
        }
        let slot = match r.mode {
            Mode::Enforce => &mut best_enforce,
            Mode::Monitor => &mut best_monitor,
        };
        // The most restrictive effect wins; among equals, load order.
        if slot.is_none_or(|b| r.effect > b.effect) {
            *slot = Some(r);
        }
    }
    // Grants: the statement is allowed by allow rules with `sql` conditions when
    // every privilege it exercises is granted by one of them. Enforce-mode rules
    // decide; monitor-mode ones are reported as what would have happened. A
    // connection-level allow (which grants everything) decides on its own.
    let mut enforce_grants: Option<Vec<grants::Grant>> = None;
    let mut monitor_grants: Option<Vec<grants::Grant>> = None;
    let mut reason = None;
    if let Action::Statement(f) = req.action
        && !f.privileges.is_empty()
    {
        let enforce: Vec<(&str, &CompiledSql)> = grant_rules
            .iter()
            .filter(|(r, _)| r.mode == Mode::Enforce)
            .map(|(r, s)| (r.id.as_str(), *s))
            .collect();
        let all: Vec<(&str, &CompiledSql)> = grant_rules
            .iter()
            .map(|(r, s)| (r.id.as_str(), *s))
            .collect();
        let to_grants = |c: grants::Coverage<'_>| -> Vec<grants::Grant> {
            c.granted
                .into_iter()
                .map(|(privilege, rule)| grants::Grant {
                    privilege,
                    rule: rule.to_string(),
                })
                .collect()
        };
        let ce = grants::cover(&f.privileges, &enforce);
        if ce.missing.is_empty() && !enforce.is_empty() {
            if best_enforce.is_none() {
                enforce_grants = Some(to_grants(ce));
            }
        } else if best_enforce.is_none() {
            let ca = grants::cover(&f.privileges, &all);
            if ca.missing.is_empty() && !all.is_empty() {
                if best_monitor.is_none() {
                    monitor_grants = Some(to_grants(ca));
                }
                if let Some(m) = ce.missing.first() {
                    reason = Some(format!("{m} is granted only by monitor-mode rules"));
                }
            } else if let Some(m) = ca.missing.first() {
                reason = Some(format!("{m} is granted by no rule"));
            }
        }
    }
    // The workloads reported are those the target's rules name and that matched:
    // the facts that made the decision, at a cost bounded by the target's rules
    // rather than by every workload of the policy.
    let workloads: Vec<String> = matched_cache
        .iter()
        .filter(|(_, m)| *m)
        .map(|(i, _)| policy.workloads[*i].name.clone())
        .collect();
    let target_mode = policy
        .targets
        .get(req.target as usize)
        .map(|t| t.mode)
        .unwrap_or(Mode::Enforce);
    // The binding decision comes from enforce-mode rules, or from the default
    // (which follows the mode of the file defining the target).
    let binding_is_rule = best_enforce.is_some() || enforce_grants.is_some();
    let binding = match (best_enforce, enforce_grants) {
        (Some(r), _) => Decision {
            outcome: match r.effect {
                Effect::Allow => Outcome::Allow,
                Effect::Deny | Effect::Kill => Outcome::Deny,
                Effect::RequireApproval => Outcome::Hold,
            },
            decided: r.effect,
            rule: r.id.clone(),
            mode: Mode::Enforce,
            ..Decision::default()
        },
        (None, Some(g)) => Decision {
            outcome: Outcome::Allow,
            decided: Effect::Allow,
            rule: g.first().map(|g| g.rule.clone()).unwrap_or_default(),
            mode: Mode::Enforce,
            grants: g,
            ..Decision::default()
        },
        (None, _) => Decision {
            outcome: if target_mode == Mode::Enforce {
                Outcome::Deny
            } else {
                Outcome::Allow
            },
            decided: Effect::Deny,
            rule: DEFAULT_DENY.into(),
            mode: target_mode,
            reason,
            ..Decision::default()
        },
    };
    // Monitor-mode rules never change the outcome; when it is a pass, they say
    // what they would have decided (would_deny, would_hold, or their allow).
    let reported = match (best_monitor, monitor_grants) {
        (Some(m), _)
            if binding.outcome == Outcome::Allow
                && (!binding_is_rule || m.effect > binding.decided) =>
        {
            Decision {
                outcome: Outcome::Allow,
                decided: m.effect,
                rule: m.id.clone(),
                mode: Mode::Monitor,
                ..Decision::default()
            }
        }
        (None, Some(g)) if binding.outcome == Outcome::Allow => Decision {
            outcome: Outcome::Allow,
            decided: Effect::Allow,
            rule: g.first().map(|g| g.rule.clone()).unwrap_or_default(),
            mode: Mode::Monitor,
            grants: g,
            ..Decision::default()
        },
        _ => binding,
    };
    Decision {
        workloads,
        ..reported
    }
}

/// Number of kernel map entries a policy needs (one per prefix and port).
pub fn kernel_entries(policy: &CompiledPolicy) -> usize {
    policy
        .targets
        .iter()
        .map(|t| t.prefixes.len() * t.ports.len().max(1))
        .sum()
}

impl CompiledPolicy {
    /// The protected target for an original destination: longest prefix wins, then
    /// an exact port over an every-port target.
    pub fn target_for(&self, addr: &[u8; 16], port: u16) -> Option<&Target> {
        self.targets
            .iter()
            .filter_map(|t| {
                let port_ok = t.ports.is_empty() || t.ports.contains(&port);
                let best = t
                    .prefixes
                    .iter()
                    .filter(|p| p.contains(addr))
                    .map(|p| p.len)
                    .max()?;
                port_ok.then_some((best, !t.ports.is_empty(), t))
            })
            .max_by_key(|(len, exact, _)| (*len, *exact))
            .map(|(_, _, t)| t)
    }

    pub fn target_by_name(&self, name: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.name == name)
    }

    /// Rule indexes that name a target, in load order.
    pub fn rules_for(&self, target: u32) -> &[usize] {
        self.by_target
            .get(target as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

// ---- loading ------------------------------------------------------------------------------

fn is_policy_file(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    p.is_file()
        && (name.ends_with(".yaml") || name.ends_with(".yml"))
        && !is_test_file(p)
        && !name.starts_with('.')
}

pub fn is_test_file(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.ends_with(".test.yaml") || name.ends_with(".test.yml")
}

/// How host names in target addresses are resolved (injectable for tests).
pub type Resolver<'a> = &'a dyn Fn(&str) -> Result<Vec<IpAddr>, String>;

/// Resolves with the system resolver (getaddrinfo).
pub fn system_resolver(host: &str) -> Result<Vec<IpAddr>, String> {
    let mut ips: Vec<IpAddr> = (host, 0u16)
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .map(|a| a.ip())
        .collect();
    ips.sort();
    ips.dedup();
    if ips.is_empty() {
        return Err("resolved to no address".into());
    }
    Ok(ips)
}

fn looks_like_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && !s.contains('/')
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
        && s.bytes().any(|b| b.is_ascii_alphabetic())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (use e.g. 90s, 5m, 1h)"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("`{s}`: unit must be s, m or h")),
    };
    let secs = n
        .checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too long"))?;
    Ok(Duration::from_secs(secs))
}

fn parse_hhmm(s: &str) -> Result<u16, String> {
    let (h, m) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}` is not a time of day (HH:MM)"))?;
    let h: u16 = h
        .parse()
        .map_err(|_| format!("`{s}` is not a time of day (HH:MM)"))?;
    let m: u16 = m
        .parse()
        .map_err(|_| format!("`{s}` is not a time of day (HH:MM)"))?;
    if h > 23 || m > 59 || s.len() != 5 {
        return Err(format!(
            "`{s}` is not a time of day (HH:MM, 00:00 to 23:59)"
        ));
    }
    Ok(h * 60 + m)
}

struct Ctx<'a> {
    errors: Vec<PolicyError>,
    files: &'a [(PathBuf, String)],
    locs: Vec<Locations>,
}

impl Ctx<'_> {
    fn err(&mut self, file: usize, path: &str, message: impl Into<String>, hint: Option<String>) {
        let (line, column) = self.locs[file].at(path);
        self.errors.push(PolicyError::At {
            path: self.files[file].0.clone(),
            line,
            column,
            message: message.into(),
            hint,
        });
    }

    fn err_key(
        &mut self,
        file: usize,
        path: &str,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        let (line, column) = self.locs[file].key(path);
        self.errors.push(PolicyError::At {
            path: self.files[file].0.clone(),
            line,
            column,
            message: message.into(),
            hint,
        });
    }

    /// Checks the name at `<path>.name` of a new `kind` (workload, target): reports
    /// an invalid name, and returns false for a duplicate (reported with where the
    /// first one is).
    fn new_name<V>(
        &mut self,
        file: usize,
        path: &str,
        kind: &str,
        name: &str,
        index: &HashMap<String, (V, usize, String)>,
    ) -> bool {
        let at = format!("{path}.name");
        if !valid_name(name) {
            self.err(
                file,
                &at,
                format!("{kind} name `{name}` is not valid"),
                Some("use letters, digits, `-`, `_` and `.`".into()),
            );
        }
        if let Some((_, _, first)) = index.get(name) {
            let hint = Some(format!("first defined at {first}"));
            self.err(file, &at, format!("{kind} `{name}` is defined twice"), hint);
            return false;
        }
        true
    }

    fn where_(&self, file: usize, path: &str) -> String {
        let (line, column) = self.locs[file].at(path);
        format!("{}:{line}:{column}", self.files[file].0.display())
    }

    fn glob(&mut self, file: usize, path: &str, v: &Option<String>) -> Option<glob::Pattern> {
        let s = v.as_deref()?;
        match glob::Pattern::new(s) {
            Ok(p) => Some(p),
            Err(e) => {
                self.err(
                    file,
                    path,
                    format!("`{s}` is not a valid glob: {e}"),
                    Some("globs use `*`, `?` and `[...]`; escape a literal `[` as `[[]`".into()),
                );
                None
            }
        }
    }

    fn selector(&mut self, file: usize, path: &str, spec: &Selector) -> CompiledSelector {
        if *spec == Selector::default() {
            self.err(
                file,
                path,
                "the selector is empty: it would match every process",
                Some("name at least one of unit, slice, cgroup, uid, user, gid, group, exe, exe_sha256, comm, token, any, all".into()),
            );
        }
        if let Some(h) = &spec.exe_sha256
            && (h.len() != 64
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        {
            self.err(
                file,
                &format!("{path}.exe_sha256"),
                format!("`{h}` is not a sha256 (64 lower-case hex digits)"),
                Some("compute it with `sha256sum /path/to/binary`".into()),
            );
        }
        let token = spec.token.as_ref().map(|t: &TokenSelector| {
            if t == &TokenSelector::default() {
                self.err(
                    file,
                    &format!("{path}.token"),
                    "the token selector is empty",
                    Some("name issuer, subject, audience or claims".into()),
                );
            }
            let tp = format!("{path}.token");
            let claims = t
                .claims
                .iter()
                .filter_map(|(k, v)| {
                    self.glob(file, &format!("{tp}.claims.{k}"), &Some(v.clone()))
                        .map(|p| (k.clone(), p))
                })
                .collect();
            CompiledToken {
                issuer: self.glob(file, &format!("{tp}.issuer"), &t.issuer),
                subject: self.glob(file, &format!("{tp}.subject"), &t.subject),
                audience: self.glob(file, &format!("{tp}.audience"), &t.audience),
                claims,
            }
        });
        let mut nested = |key: &str, list: &Option<Vec<Selector>>| -> Vec<CompiledSelector> {
            match list {
                None => Vec::new(),
                Some(l) if l.is_empty() => {
                    self.err(
                        file,
                        &format!("{path}.{key}"),
                        format!("`{key}` is an empty list"),
                        Some(format!("give `{key}` at least one selector, or remove it")),
                    );
                    Vec::new()
                }
                Some(l) => l
                    .iter()
                    .enumerate()
                    .map(|(i, s)| self.selector(file, &format!("{path}.{key}.{i}"), s))
                    .collect(),
            }
        };
        let any = nested("any", &spec.any);
        let all = nested("all", &spec.all);
        CompiledSelector {
            unit: self.glob(file, &format!("{path}.unit"), &spec.unit),
            slice: self.glob(file, &format!("{path}.slice"), &spec.slice),
            cgroup: self.glob(file, &format!("{path}.cgroup"), &spec.cgroup),
            user: self.glob(file, &format!("{path}.user"), &spec.user),
            group: self.glob(file, &format!("{path}.group"), &spec.group),
            exe: self.glob(file, &format!("{path}.exe"), &spec.exe),
            comm: self.glob(file, &format!("{path}.comm"), &spec.comm),
            token,
            any,
            all,
            spec: spec.clone(),
        }
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl CompiledPolicy {
    /// Loads every policy file of the given directories (and any files given
    /// directly). `*.test.yaml` files are policy tests, not policy. All errors are
    /// reported, not just the first.
    pub fn load(paths: &[PathBuf]) -> Result<Self, PolicyErrors> {
        Self::load_with(paths, &system_resolver)
    }

    pub fn load_with(paths: &[PathBuf], resolve: Resolver<'_>) -> Result<Self, PolicyErrors> {
        let mut files = Vec::new();
        let mut errors = Vec::new();
        for p in paths {
            if !p.exists() {
                errors.push(PolicyError::ReadDir {
                    path: p.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "it does not exist"),
                });
            } else if p.is_dir() {
                match std::fs::read_dir(p) {
                    Ok(rd) => {
                        let mut found: Vec<PathBuf> = rd
                            .filter_map(|e| e.ok().map(|e| e.path()))
                            .filter(|f| is_policy_file(f))
                            .collect();
                        found.sort();
                        if found.is_empty() {
                            errors.push(PolicyError::Empty(p.clone()));
                        }
                        files.extend(found);
                    }
                    Err(source) => errors.push(PolicyError::ReadDir {
                        path: p.clone(),
                        source,
                    }),
                }
            } else {
                files.push(p.clone());
            }
        }
        let mut sources = Vec::new();
        for f in &files {
            match std::fs::read_to_string(f) {
                Ok(t) => sources.push((f.clone(), t)),
                Err(source) => errors.push(PolicyError::Read {
                    path: f.clone(),
                    source,
                }),
            }
        }
        if !errors.is_empty() {
            return Err(PolicyErrors(errors));
        }
        Self::from_sources_with(&sources, resolve)
    }

    /// Compiles (file name, contents) pairs with the system resolver.
    #[cfg(test)]
    pub fn from_sources(sources: &[(PathBuf, String)]) -> Result<Self, PolicyErrors> {
        Self::from_sources_with(sources, &system_resolver)
    }

    pub fn from_sources_with(
        sources: &[(PathBuf, String)],
        resolve: Resolver<'_>,
    ) -> Result<Self, PolicyErrors> {
        let mut cx = Ctx {
            errors: Vec::new(),
            files: sources,
            locs: sources.iter().map(|(_, t)| Locations::of(t)).collect(),
        };
        let mut hasher = Sha256::new();
        let mut parsed: Vec<(usize, PolicyFile)> = Vec::new();
        for (i, (path, text)) in sources.iter().enumerate() {
            hasher.update(
                path.file_name()
                    .map(|n| n.as_encoded_bytes())
                    .unwrap_or_default(),
            );
            hasher.update([0]);
            hasher.update(text.as_bytes());
            hasher.update([0]);
            match serde_yaml_ng::from_str::<PolicyFile>(text) {
                Ok(pf) => parsed.push((i, pf)),
                Err(e) => {
                    let (line, column) = e
                        .location()
                        .map(|l| (l.line(), l.column()))
                        .unwrap_or((1, 1));
                    // serde_yaml_ng appends " at line L column C": we print it first.
                    let msg = e.to_string();
                    let suffix = format!(" at line {line} column {column}");
                    let msg = msg.strip_suffix(&suffix).map(str::to_string).unwrap_or(msg);
                    cx.errors.push(PolicyError::At {
                        path: path.clone(),
                        line,
                        column,
                        message: msg,
                        hint: None,
                    });
                }
            }
        }

        // Pass 1: names.
        let mut workloads: Vec<Workload> = Vec::new();
        let mut wl_index: HashMap<String, (usize, usize, String)> = HashMap::new();
        let mut targets: Vec<Target> = Vec::new();
        let mut tg_index: HashMap<String, (u32, usize, String)> = HashMap::new();
        for (fi, pf) in &parsed {
            let fi = *fi;
            if pf.api_version != API_VERSION {
                cx.err(
                    fi,
                    "apiVersion",
                    format!("apiVersion `{}` is not supported", pf.api_version),
                    Some(format!("this agent reads `{API_VERSION}`")),
                );
            }
            for (i, w) in pf.workloads.iter().enumerate() {
                let p = format!("workloads.{i}");
                if !cx.new_name(fi, &p, "workload", &w.name, &wl_index) {
                    continue;
                }
                let selector = cx.selector(fi, &format!("{p}.match"), &w.selector);
                let at = cx.where_(fi, &format!("{p}.name"));
                wl_index.insert(w.name.clone(), (workloads.len(), fi, at));
                workloads.push(Workload {
                    name: w.name.clone(),
                    selector,
                    file: sources[fi].0.clone(),
                });
            }
            for (i, t) in pf.targets.iter().enumerate() {
                let p = format!("targets.{i}");
                if !cx.new_name(fi, &p, "target", &t.name, &tg_index) {
                    continue;
                }
                if t.addresses.is_empty() {
                    cx.err_key(
                        fi,
                        &format!("{p}.addresses"),
                        format!("target `{}` has no addresses", t.name),
                        Some("list IP addresses, CIDRs or host names".into()),
                    );
                }
                let mut prefixes = Vec::new();
                let mut hostnames = Vec::new();
                for (ai, a) in t.addresses.iter().enumerate() {
                    let ap = format!("{p}.addresses.{ai}");
                    match Prefix::parse(a) {
                        Ok(px) => prefixes.push(px),
                        Err(m) if looks_like_hostname(a) => match resolve(a) {
                            Ok(ips) => {
                                prefixes.extend(ips.iter().map(|ip| Prefix::host(*ip)));
                                hostnames.push((a.clone(), ips));
                            }
                            Err(e) => {
                                let _ = m;
                                cx.err(fi, &ap, format!("host name `{a}` does not resolve: {e}"), Some("host names are resolved when the policy is loaded and on every reload; use an IP address if DNS is not reliable here".into()));
                            }
                        },
                        Err(m) => cx.err(fi, &ap, m, Some("write an IPv4 or IPv6 address, a CIDR such as 10.0.4.0/24, or a host name".into())),
                    }
                }
                let mut seen_ports = Vec::new();
                for (pi, port) in t.ports.iter().enumerate() {
                    if *port == 0 {
                        cx.err(
                            fi,
                            &format!("{p}.ports.{pi}"),
                            "port 0 is not a port",
                            Some("leave `ports` out to protect every port".into()),
                        );
                    } else if seen_ports.contains(port) {
                        cx.err(
                            fi,
                            &format!("{p}.ports.{pi}"),
                            format!("port {port} is listed twice"),
                            None,
                        );
                    }
                    seen_ports.push(*port);
                }
                if let Some(c) = &t.credentials {
                    if !valid_name(c) {
                        cx.err(fi, &format!("{p}.credentials"), format!("credential name `{c}` is not valid"), Some("a credential is named, not written here: use letters, digits, `-`, `_` and `.`".into()));
                    }
                    if t.protocol == Protocol::Tcp {
                        cx.err(fi, &format!("{p}.credentials"), "credentials need a protocol the agent speaks; a `tcp` target is relayed byte for byte", Some("set `protocol` (postgres, mysql, http, kubernetes, ssh) or remove `credentials`".into()));
                    }
                }
                if t.defaults.is_some() && t.protocol == Protocol::Tcp {
                    cx.err_key(fi, &format!("{p}.defaults"), "`defaults` apply to requests the agent parses; a `tcp` target is relayed byte for byte", None);
                }
                for other in &targets {
                    let port_overlap = t.ports.is_empty()
                        || other.ports.is_empty()
                        || t.ports.iter().any(|x| other.ports.contains(x));
                    if let Some(px) = prefixes.iter().find(|px| other.prefixes.contains(px))
                        && port_overlap
                    {
                        let first = tg_index
                            .get(&other.name)
                            .map(|(_, _, at)| at.clone())
                            .unwrap_or_default();
                        cx.err(
                            fi,
                            &format!("{p}.addresses"),
                            format!(
                                "target `{}` and target `{}` both protect {} on the same port",
                                t.name,
                                other.name,
                                px.display()
                            ),
                            Some(format!(
                                "`{}` is at {first}; one destination must belong to one target",
                                other.name
                            )),
                        );
                        break;
                    }
                }
                let tls = t.tls.clone().unwrap_or_default();
                if t.tls.is_some() && t.protocol == Protocol::Tcp {
                    cx.err_key(fi, &format!("{p}.tls"), "TLS settings need a protocol the agent speaks; a `tcp` target is relayed byte for byte", None);
                }
                if tls.server_name.is_some() && tls.upstream != spec::UpstreamTls::VerifyFull {
                    cx.err(
                        fi,
                        &format!("{p}.tls.server_name"),
                        "`server_name` is only checked with `upstream: verify-full`",
                        None,
                    );
                }
                if let Some(ca) = &tls.ca_file
                    && !ca.starts_with('/')
                {
                    cx.err(
                        fi,
                        &format!("{p}.tls.ca_file"),
                        format!("`{ca}` is not an absolute path"),
                        None,
                    );
                }
                let id = targets.len() as u32;
                let at = cx.where_(fi, &format!("{p}.name"));
                tg_index.insert(t.name.clone(), (id, fi, at));
                targets.push(Target {
                    id,
                    name: t.name.clone(),
                    prefixes,
                    hostnames,
                    ports: t.ports.clone(),
                    protocol: t.protocol,
                    mode: pf.mode,
                    credentials: t.credentials.clone(),
                    tls,
                    unparseable: t.defaults.clone().unwrap_or_default().unparseable,
                    statement_text: t.audit.clone().unwrap_or_default().statement_text,
                });
            }
        }

        // Pass 2: rules and masks.
        let mut rules: Vec<Rule> = Vec::new();
        let mut rule_at: HashMap<String, String> = HashMap::new();
        let mut rule_paths: Vec<(usize, String)> = Vec::new();
        let mut masks = Vec::new();
        for (fi, pf) in &parsed {
            let fi = *fi;
            for (i, r) in pf.rules.iter().enumerate() {
                let p = format!("rules.{i}");
                if r.id == DEFAULT_DENY {
                    cx.err(
                        fi,
                        &format!("{p}.id"),
                        format!("rule id `{DEFAULT_DENY}` is reserved"),
                        None,
                    );
                } else if !valid_name(&r.id) {
                    cx.err(
                        fi,
                        &format!("{p}.id"),
                        format!("rule id `{}` is not valid", r.id),
                        Some("use letters, digits, `-`, `_` and `.`".into()),
                    );
                } else if let Some(first) = rule_at.get(&r.id) {
                    let first = first.clone();
                    cx.err(
                        fi,
                        &format!("{p}.id"),
                        format!("rule id `{}` is used twice", r.id),
                        Some(format!("first used at {first}")),
                    );
                }
                rule_at
                    .entry(r.id.clone())
                    .or_insert_with(|| cx.where_(fi, &format!("{p}.id")));
                let mut ws = Vec::new();
                for (wi, w) in r.workloads.iter().enumerate() {
                    match wl_index.get(w) {
                        Some((i, _, _)) => ws.push(*i),
                        None => {
                            let known = suggest(w, wl_index.keys());
                            cx.err(
                                fi,
                                &format!("{p}.workloads.{wi}"),
                                format!(
                                    "rule `{}` names workload `{w}`, which is not defined",
                                    r.id
                                ),
                                known,
                            );
                        }
                    }
                }
                let mut ts = Vec::new();
                for (ti, t) in r.targets.iter().enumerate() {
                    match tg_index.get(t) {
                        Some((i, _, _)) => ts.push(*i),
                        None => {
                            let known = suggest(t, tg_index.keys());
                            cx.err(
                                fi,
                                &format!("{p}.targets.{ti}"),
                                format!("rule `{}` names target `{t}`, which is not defined", r.id),
                                known,
                            );
                        }
                    }
                }
                if r.workloads.is_empty() {
                    cx.err_key(
                        fi,
                        &format!("{p}.workloads"),
                        format!("rule `{}` names no workload", r.id),
                        Some("a rule must say who it is about".into()),
                    );
                }
                if r.targets.is_empty() {
                    cx.err_key(
                        fi,
                        &format!("{p}.targets"),
                        format!("rule `{}` names no target", r.id),
                        Some("a rule must say which targets it is about".into()),
                    );
                }
                let approval = match (r.effect, &r.approval) {
                    (Effect::RequireApproval, None) => {
                        cx.err(
                            fi,
                            &format!("{p}.effect"),
                            format!(
                                "rule `{}` requires approval but has no `approval` block",
                                r.id
                            ),
                            Some("add `approval: {approvers: [group], timeout: 5m}`".into()),
                        );
                        None
                    }
                    (Effect::RequireApproval, Some(a)) => {
                        let ap = format!("{p}.approval");
                        if a.approvers.is_empty() {
                            cx.err_key(
                                fi,
                                &format!("{ap}.approvers"),
                                "`approvers` is empty: nobody could approve",
                                None,
                            );
                        }
                        if a.min_approvals == 0 {
                            cx.err(
                                fi,
                                &format!("{ap}.min_approvals"),
                                "`min_approvals` must be at least 1",
                                None,
                            );
                        }
                        match parse_duration(&a.timeout) {
                            Ok(d) if d.is_zero() || d > Duration::from_secs(86_400) => {
                                cx.err(
                                    fi,
                                    &format!("{ap}.timeout"),
                                    format!("timeout `{}` must be between 1s and 24h", a.timeout),
                                    None,
                                );
                                None
                            }
                            Ok(d) => Some(Approval {
                                approvers: a.approvers.clone(),
                                timeout: d,
                                min_approvals: a.min_approvals,
                            }),
                            Err(m) => {
                                cx.err(fi, &format!("{ap}.timeout"), m, None);
                                None
                            }
                        }
                    }
                    (_, Some(_)) => {
                        cx.err_key(fi, &format!("{p}.approval"), format!("rule `{}` has an `approval` block but its effect is not `require_approval`", r.id), Some("remove the block, or set `effect: require_approval`".into()));
                        None
                    }
                    (_, None) => None,
                };
                let mut time = None;
                let mut request_conditions = None;
                if let Some(w) = &r.when {
                    let wp = format!("{p}.when");
                    if *w == Conditions::default() {
                        cx.err_key(
                            fi,
                            &wp,
                            "`when` is empty",
                            Some(
                                "remove it, or give time, sql, http or kubernetes conditions"
                                    .into(),
                            ),
                        );
                    }
                    if let Some(t) = &w.time {
                        let tp = format!("{wp}.time");
                        let mut days = 0u8;
                        for d in &t.days {
                            days |= 1 << (*d as u8);
                        }
                        if t.days.is_empty() {
                            days = 0x7f;
                        }
                        match (&t.from, &t.to) {
                            (Some(f), Some(to)) => match (parse_hhmm(f), parse_hhmm(to)) {
                                (Ok(a), Ok(b)) if a == b => cx.err(
                                    fi,
                                    &format!("{tp}.to"),
                                    "`from` and `to` are equal: the window is empty",
                                    None,
                                ),
                                (Ok(a), Ok(b)) => {
                                    time = Some(TimeWindow {
                                        days,
                                        from_min: a,
                                        to_min: b,
                                    })
                                }
                                (Err(m), _) => cx.err(fi, &format!("{tp}.from"), m, None),
                                (_, Err(m)) => cx.err(fi, &format!("{tp}.to"), m, None),
                            },
                            (None, None) if !t.days.is_empty() => {
                                time = Some(TimeWindow {
                                    days,
                                    from_min: 0,
                                    to_min: 24 * 60,
                                })
                            }
                            (None, None) => cx.err_key(
                                fi,
                                &tp,
                                "the time window is empty",
                                Some("give `days`, or `from` and `to` (HH:MM, UTC)".into()),
                            ),
                            _ => cx.err_key(fi, &tp, "give both `from` and `to`, or neither", None),
                        }
                    }
                    let mut check = |key: &str, present: bool, empty: bool, fits: &[Protocol]| {
                        if !present {
                            return;
                        }
                        let cp = format!("{wp}.{key}");
                        if empty {
                            cx.err_key(
                                fi,
                                &cp,
                                format!("`{key}` has no conditions: it would match every request"),
                                Some(format!("remove `{key}` or give it conditions")),
                            );
                        }
                        for t in &ts {
                            let proto = targets[*t as usize].protocol;
                            if !fits.contains(&proto) {
                                let name = targets[*t as usize].name.clone();
                                cx.err_key(fi, &cp, format!("`{key}` conditions do not apply to target `{name}` (protocol {})", proto.name()), Some(format!("`{key}` applies to {} targets", fits.iter().map(|p| p.name()).collect::<Vec<_>>().join(" and "))));
                            }
                        }
                    };
                    check(
                        "sql",
                        w.sql.is_some(),
                        w.sql
                            .as_ref()
                            .is_some_and(|s| *s == spec::SqlCondition::default()),
                        &[Protocol::Postgres, Protocol::Mysql],
                    );
                    check(
                        "http",
                        w.http.is_some(),
                        w.http
                            .as_ref()
                            .is_some_and(|s| *s == spec::HttpCondition::default()),
                        &[Protocol::Http, Protocol::Kubernetes],
                    );
                    check(
                        "kubernetes",
                        w.kubernetes.is_some(),
                        w.kubernetes
                            .as_ref()
                            .is_some_and(|s| *s == spec::KubernetesCondition::default()),
                        &[Protocol::Kubernetes],
                    );
                    if let Some(s) = &w.sql
                        && r.effect == Effect::Allow
                        && *s != spec::SqlCondition::default()
                        && s.statements.is_empty()
                        && s.tables.is_empty()
                        && s.tables_read.is_empty()
                        && s.tables_written.is_empty()
                        && s.functions.is_empty()
                    {
                        cx.err_key(
                            fi,
                            &format!("{wp}.sql"),
                            format!("allow rule `{}` grants nothing: its `sql` names no statement, table or function", r.id),
                            Some("an allow rule grants the privileges its `statements`, `tables`, `tables_read`, `tables_written` and `functions` name; `columns` and `where_less` only say when it is in force".into()),
                        );
                    }
                    if let Some(s) = &w.sql {
                        for (key, list) in [
                            ("tables", &s.tables),
                            ("tables_read", &s.tables_read),
                            ("tables_written", &s.tables_written),
                            ("columns", &s.columns),
                            ("functions", &s.functions),
                        ] {
                            for (gi, g) in list.iter().enumerate() {
                                let _ =
                                    cx.glob(fi, &format!("{wp}.sql.{key}.{gi}"), &Some(g.clone()));
                            }
                        }
                    }
                    if let Some(h) = &w.http {
                        for (mi, m) in h.methods.iter().enumerate() {
                            if !m.bytes().all(|b| b.is_ascii_uppercase()) || m.is_empty() {
                                cx.err(
                                    fi,
                                    &format!("{wp}.http.methods.{mi}"),
                                    format!("`{m}` is not an HTTP method"),
                                    Some("methods are upper case: GET, POST, ...".into()),
                                );
                            }
                        }
                        for (gi, g) in h.paths.iter().enumerate() {
                            if !g.starts_with('/') {
                                cx.err(
                                    fi,
                                    &format!("{wp}.http.paths.{gi}"),
                                    format!("path `{g}` does not start with `/`"),
                                    None,
                                );
                            }
                            let _ = cx.glob(fi, &format!("{wp}.http.paths.{gi}"), &Some(g.clone()));
                        }
                    }
                    if w.sql.is_some() || w.http.is_some() || w.kubernetes.is_some() {
                        request_conditions = Some(Conditions {
                            time: None,
                            ..w.clone()
                        });
                    }
                }
                let (line, _) = cx.locs[fi].at(&format!("{p}.id"));
                rule_paths.push((fi, p.clone()));
                rules.push(Rule {
                    id: r.id.clone(),
                    workloads: ws,
                    targets: ts,
                    effect: r.effect,
                    mode: pf.mode,
                    approval,
                    time,
                    sql: request_conditions
                        .as_ref()
                        .and_then(|c| c.sql.as_ref())
                        .and_then(|s| CompiledSql::compile(s).ok()),
                    request_conditions,
                    description: r.description.clone(),
                    file: sources[fi].0.clone(),
                    line,
                });
            }
            for (i, m) in pf.masks.iter().enumerate() {
                let p = format!("masks.{i}");
                if !valid_name(&m.id) {
                    cx.err(
                        fi,
                        &format!("{p}.id"),
                        format!("mask id `{}` is not valid", m.id),
                        None,
                    );
                } else if let Some(first) = rule_at.get(&m.id) {
                    let first = first.clone();
                    cx.err(
                        fi,
                        &format!("{p}.id"),
                        format!("id `{}` is used twice", m.id),
                        Some(format!("first used at {first}")),
                    );
                }
                rule_at
                    .entry(m.id.clone())
                    .or_insert_with(|| cx.where_(fi, &format!("{p}.id")));
                if m.workloads.as_ref().is_some_and(Vec::is_empty) {
                    cx.err_key(
                        fi,
                        &format!("{p}.workloads"),
                        format!("mask `{}` lists no workload, so it masks for nobody", m.id),
                        Some("leave `workloads` out to mask for every workload".into()),
                    );
                }
                let ws = m.workloads.as_ref().map(|list| {
                    list.iter()
                        .enumerate()
                        .filter_map(|(wi, w)| match wl_index.get(w) {
                            Some((i, _, _)) => Some(*i),
                            None => {
                                let known = suggest(w, wl_index.keys());
                                cx.err(
                                    fi,
                                    &format!("{p}.workloads.{wi}"),
                                    format!(
                                        "mask `{}` names workload `{w}`, which is not defined",
                                        m.id
                                    ),
                                    known,
                                );
                                None
                            }
                        })
                        .collect::<Vec<_>>()
                });
                let mut ts = Vec::new();
                for (ti, t) in m.targets.iter().enumerate() {
                    match tg_index.get(t) {
                        Some((id, _, _)) => {
                            let proto = targets[*id as usize].protocol;
                            if matches!(proto, Protocol::Tcp | Protocol::Ssh) {
                                cx.err(fi, &format!("{p}.targets.{ti}"), format!("mask `{}` applies to target `{t}` of protocol {}, whose responses the agent does not parse", m.id, proto.name()), Some("masking applies to postgres, mysql, http and kubernetes targets".into()));
                            }
                            ts.push(*id);
                        }
                        None => {
                            let known = suggest(t, tg_index.keys());
                            cx.err(
                                fi,
                                &format!("{p}.targets.{ti}"),
                                format!("mask `{}` names target `{t}`, which is not defined", m.id),
                                known,
                            );
                        }
                    }
                }
                if m.targets.is_empty() {
                    cx.err_key(
                        fi,
                        &format!("{p}.targets"),
                        format!("mask `{}` names no target", m.id),
                        None,
                    );
                }
                if m.columns.is_empty() && m.detectors.is_empty() {
                    cx.err(
                        fi,
                        &format!("{p}.id"),
                        format!("mask `{}` masks nothing", m.id),
                        Some("give `columns` (schema.table.column globs) or `detectors`".into()),
                    );
                }
                let columns = m
                    .columns
                    .iter()
                    .enumerate()
                    .filter_map(|(ci, c)| {
                        if c.split('.').count() != 3 {
                            cx.err(fi, &format!("{p}.columns.{ci}"), format!("column `{c}` is not schema.table.column"), Some("use globs for parts you do not want to name, e.g. `*.customers.ssn`".into()));
                        }
                        cx.glob(fi, &format!("{p}.columns.{ci}"), &Some(c.clone()))
                    })
                    .collect();
                masks.push(Mask {
                    id: m.id.clone(),
                    workloads: ws,
                    targets: ts,
                    columns,
                    detectors: m.detectors.clone(),
                    strategy: m.strategy,
                });
            }
        }

        // Pass 3: rules that can never decide anything. Only rules sharing a target
        // can shadow each other.
        let mut sharing: HashMap<u32, Vec<usize>> = HashMap::new();
        for (ri, r) in rules.iter().enumerate() {
            for t in &r.targets {
                sharing.entry(*t).or_default().push(ri);
            }
        }
        for (ri, r) in rules.iter().enumerate() {
            if r.workloads.is_empty() || r.targets.is_empty() {
                continue;
            }
            let Some(others) = sharing.get(&r.targets[0]) else {
                continue;
            };
            for &si in others {
                let s = &rules[si];
                if si == ri || s.time.is_some() || s.request_conditions.is_some() {
                    continue;
                }
                let covers = r.workloads.iter().all(|w| s.workloads.contains(w))
                    && r.targets.iter().all(|t| s.targets.contains(t));
                let beats = s.effect > r.effect || (s.effect == r.effect && si < ri);
                let mode_ok = s.mode == Mode::Enforce || r.mode == Mode::Monitor;
                if covers && beats && mode_ok {
                    let (fi, path) = rule_paths[ri].clone();
                    let (sfi, spath) = rule_paths[si].clone();
                    let at = cx.where_(sfi, &format!("{spath}.id"));
                    let why = if s.effect == r.effect {
                        "is the same rule earlier".to_string()
                    } else {
                        format!(
                            "({}) beats `{}` on every connection `{}` matches",
                            effect_name(s.effect),
                            effect_name(r.effect),
                            r.id
                        )
                    };
                    cx.err(
                        fi,
                        &format!("{path}.id"),
                        format!("rule `{}` can never decide anything: rule `{}` {why}", r.id, s.id),
                        Some(format!("rule `{}` is at {at}; remove one of them, narrow its workloads or targets, or add a `when` condition", s.id)),
                    );
                    break;
                }
            }
        }

        if !cx.errors.is_empty() {
            return Err(PolicyErrors(cx.errors));
        }
        let mut by_target = vec![Vec::new(); targets.len()];
        for (ri, r) in rules.iter().enumerate() {
            for t in &r.targets {
                by_target[*t as usize].push(ri);
            }
        }
        let hash = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        fn uses_hash(s: &Selector) -> bool {
            s.exe_sha256.is_some()
                || s.any.iter().flatten().any(uses_hash)
                || s.all.iter().flatten().any(uses_hash)
        }
        let needs_exe_sha256 = workloads.iter().any(|w| uses_hash(&w.selector.spec));
        Ok(CompiledPolicy {
            workloads,
            targets,
            rules,
            masks,
            hash,
            files: sources.iter().map(|(p, _)| p.clone()).collect(),
            by_target,
            needs_exe_sha256,
        })
    }
}

pub fn effect_name(e: Effect) -> &'static str {
    match e {
        Effect::Allow => "allow",
        Effect::RequireApproval => "require_approval",
        Effect::Deny => "deny",
        Effect::Kill => "kill",
    }
}

/// A "did you mean" hint for a misspelt name.
fn suggest<'a>(name: &str, known: impl Iterator<Item = &'a String>) -> Option<String> {
    let best = known
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, _)| *d <= 2.max(name.len() / 3))
        .min_by_key(|(d, _)| *d)?;
    Some(format!("did you mean `{}`?", best.1))
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests;
