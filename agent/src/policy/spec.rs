//! The policy file format (what security teams write), as serde types. Every
//! struct refuses unknown fields; validation beyond types happens in `compile`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The format version this agent reads.
pub const API_VERSION: &str = "portcullis.dev/v1";

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Decisions are enforced.
    #[default]
    Enforce,
    /// Decisions are recorded (`would_deny`, `would_hold`); nothing is blocked.
    Monitor,
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    PartialOrd,
    Ord,
    Hash,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    Allow,
    RequireApproval,
    Deny,
    /// Refuse the request and end the session (for a connection: refuse it).
    Kill,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Postgres,
    Mysql,
    Http,
    Kubernetes,
    Ssh,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Postgres => "postgres",
            Protocol::Mysql => "mysql",
            Protocol::Http => "http",
            Protocol::Kubernetes => "kubernetes",
            Protocol::Ssh => "ssh",
        }
    }
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    #[serde(default)]
    pub mode: Mode,
    /// For readers of the file; not used by the engine.
    #[serde(default)]
    #[allow(dead_code)]
    pub description: Option<String>,
    #[serde(default)]
    pub workloads: Vec<WorkloadSpec>,
    #[serde(default)]
    pub targets: Vec<TargetSpec>,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    #[serde(default)]
    pub masks: Vec<MaskSpec>,
}

/// Selectors over what the kernel and /proc say about a process, and over the
/// verified claims of a token it presents. Every field given must match (all of
/// them); `any` / `all` combine nested selectors. String fields are globs.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    pub unit: Option<String>,
    pub slice: Option<String>,
    pub cgroup: Option<String>,
    pub uid: Option<u32>,
    pub user: Option<String>,
    pub gid: Option<u32>,
    pub group: Option<String>,
    pub exe: Option<String>,
    /// Lower-case hex sha256 of the executable's contents.
    pub exe_sha256: Option<String>,
    pub comm: Option<String>,
    pub token: Option<TokenSelector>,
    pub any: Option<Vec<Selector>>,
    pub all: Option<Vec<Selector>>,
}

/// Claims of a verified token (the token verification is configured elsewhere).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenSelector {
    pub issuer: Option<String>,
    pub subject: Option<String>,
    pub audience: Option<String>,
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    pub name: String,
    #[serde(rename = "match")]
    pub selector: Selector,
    /// For readers of the file; not used by the engine.
    #[serde(default)]
    #[allow(dead_code)]
    pub description: Option<String>,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ClientTls {
    /// Terminate TLS if the client asks for it.
    #[default]
    Allow,
    /// Refuse clients that do not use TLS.
    Require,
    /// Refuse clients that ask for TLS.
    Refuse,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTls {
    /// Plain connection to the target.
    #[default]
    Disable,
    /// TLS, certificate verified against `ca_file` (or the system roots).
    Require,
    /// TLS, certificate and host name (`server_name`) verified.
    VerifyFull,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    #[serde(default)]
    pub client: ClientTls,
    #[serde(default)]
    pub upstream: UpstreamTls,
    pub ca_file: Option<String>,
    pub server_name: Option<String>,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Unparseable {
    /// Requests the agent cannot parse are refused (the default).
    #[default]
    Deny,
    /// Requests the agent cannot parse are decided as if they matched no condition.
    Allow,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetDefaults {
    #[serde(default)]
    pub unparseable: Unparseable,
}

/// What statement audit records hold.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum StatementText {
    /// The statement as the client sent it (the default).
    #[default]
    Full,
    /// The statement with its literals replaced by `?`: no values at rest.
    Fingerprint,
}

/// What the agent writes about requests to this target.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetAudit {
    #[serde(default)]
    pub statement_text: StatementText,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    pub name: String,
    /// IP addresses, CIDRs, or host names (resolved at load and on every reload).
    pub addresses: Vec<String>,
    /// Empty or absent: every port.
    #[serde(default)]
    pub ports: Vec<u16>,
    pub protocol: Protocol,
    /// Name of an agent-held credential used upstream (the client never sees it).
    #[serde(default)]
    pub credentials: Option<String>,
    #[serde(default)]
    pub tls: Option<TlsSpec>,
    #[serde(default)]
    pub defaults: Option<TargetDefaults>,
    /// What audit records of this target's requests hold.
    #[serde(default)]
    pub audit: Option<TargetAudit>,
    /// For readers of the file; not used by the engine.
    #[serde(default)]
    #[allow(dead_code)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalSpec {
    /// Groups whose members may approve.
    pub approvers: Vec<String>,
    /// How long to hold the request before it is refused (e.g. `90s`, `5m`, `1h`).
    pub timeout: String,
    /// Approvals needed (default 1).
    #[serde(default = "one")]
    pub min_approvals: u32,
}

fn one() -> u32 {
    1
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    PartialOrd,
    Ord,
    Hash,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

/// A daily window in UTC (`from` inclusive, `to` exclusive, `HH:MM`; `to` earlier
/// than `from` spans midnight), optionally only on some days.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeWindow {
    #[serde(default)]
    pub days: Vec<Weekday>,
    pub from: Option<String>,
    pub to: Option<String>,
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    PartialOrd,
    Ord,
    Hash,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum StatementKind {
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    Truncate,
    Copy,
    Create,
    Alter,
    Drop,
    Grant,
    Revoke,
    Set,
    Reset,
    SetRole,
    Begin,
    Commit,
    Rollback,
    Savepoint,
    Call,
    Do,
    Explain,
    Prepare,
    Execute,
    Listen,
    Notify,
    Vacuum,
    Other,
}

/// Conditions on SQL statements. On a deny, kill or require_approval rule: every
/// field given must hold (any listed value matching is enough). On an allow
/// rule: the privileges it grants (`statements` the actions, the table lists and
/// `functions` the objects); a statement runs only if every privilege it
/// exercises is granted.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlCondition {
    /// Statement kinds; on an allow rule, the actions granted (every action when absent).
    #[serde(default)]
    pub statements: Vec<StatementKind>,
    /// Tables read or written (`schema.table`, globs); on an allow rule, granted for every action listed.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Tables read; on an allow rule, granted for `select`.
    #[serde(default)]
    pub tables_read: Vec<String>,
    /// Tables written; on an allow rule, granted for the actions other than `select`.
    #[serde(default)]
    pub tables_written: Vec<String>,
    /// Columns (`schema.table.column`, globs); on an allow rule, when it is in force.
    #[serde(default)]
    pub columns: Vec<String>,
    /// Functions called (globs, e.g. `pg_read_*`); on an allow rule, the functions whose execution is granted.
    #[serde(default)]
    pub functions: Vec<String>,
    /// UPDATE or DELETE without a WHERE clause; on an allow rule, when it is in force.
    pub where_less: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpCondition {
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KubernetesCondition {
    #[serde(default)]
    pub verbs: Vec<String>,
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub subresources: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub names: Vec<String>,
}

/// Optional conditions of a rule; all given must hold.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Conditions {
    pub time: Option<TimeWindow>,
    pub sql: Option<SqlCondition>,
    pub http: Option<HttpCondition>,
    pub kubernetes: Option<KubernetesCondition>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub id: String,
    pub workloads: Vec<String>,
    pub targets: Vec<String>,
    pub effect: Effect,
    #[serde(default)]
    pub approval: Option<ApprovalSpec>,
    #[serde(default)]
    pub when: Option<Conditions>,
    /// For readers of the file; not used by the engine.
    #[serde(default)]
    #[allow(dead_code)]
    pub description: Option<String>,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum MaskStrategy {
    /// Replace the value with `****`.
    #[default]
    Redact,
    /// Replace with a keyed hash (stable, not reversible).
    Hash,
    /// Keep the last four characters.
    Last4,
    /// Replace with SQL NULL.
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Detector {
    /// Payment card numbers (Luhn-checked).
    Pan,
    /// US social security numbers.
    Ssn,
    Email,
    Iban,
    Phone,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MaskSpec {
    pub id: String,
    /// Absent: every workload.
    #[serde(default)]
    pub workloads: Option<Vec<String>>,
    pub targets: Vec<String>,
    /// `schema.table.column` globs.
    #[serde(default)]
    pub columns: Vec<String>,
    #[serde(default)]
    pub detectors: Vec<Detector>,
    #[serde(default)]
    pub strategy: MaskStrategy,
    /// For readers of the file; not used by the engine.
    #[serde(default)]
    #[allow(dead_code)]
    pub description: Option<String>,
}

/// JSON Schema of a policy file, for editors (published as docs/policy-schema.json).
pub fn json_schema() -> String {
    let mut schema = serde_json::to_value(schemars::schema_for!(PolicyFile)).unwrap_or_default();
    if let Some(o) = schema.as_object_mut() {
        o.insert("title".into(), "Portcullis host policy".into());
        o.insert(
            "description".into(),
            format!("A policy file, apiVersion {API_VERSION}. See docs/policy-reference.md.")
                .into(),
        );
    }
    let mut s = serde_json::to_string_pretty(&schema).unwrap_or_default();
    s.push('\n');
    s
}
