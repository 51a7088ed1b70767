//! Host policy, version 0: workloads, targets, connection-level allow/deny rules.
//!
//! Files are YAML, loaded from a directory and merged into one policy set. Loading
//! is all-or-nothing: one bad file refuses the whole set. Evaluation is a pure
//! function ([`evaluate`]) over the compiled set; precedence is deny over allow,
//! and nothing matched means `default-deny`.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const API_VERSION: &str = "portcullis.dev/v0";
/// Rule id reported when no rule matched.
pub const DEFAULT_DENY: &str = "default-deny";

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
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("no policy files (*.yaml, *.yml) in {0}: refusing to run without a policy")]
    Empty(PathBuf),
}

/// A list of errors from one load; loading fails if it is non-empty.
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

// ---- the file format -------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Decisions are enforced.
    #[default]
    Enforce,
    /// Decisions are logged as `would_deny`; nothing is blocked.
    Monitor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(rename = "apiVersion")]
    api_version: String,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    workloads: Vec<WorkloadSpec>,
    #[serde(default)]
    targets: Vec<TargetSpec>,
    #[serde(default)]
    rules: Vec<RuleSpec>,
}

/// Selectors over what the kernel and /proc say about a process. Every field given
/// must match (all-of). String fields are globs (`*`, `?`, `[..]`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
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
    pub comm: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkloadSpec {
    name: String,
    #[serde(rename = "match")]
    selector: Selector,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetSpec {
    name: String,
    addresses: Vec<String>,
    /// Empty = every port.
    #[serde(default)]
    ports: Vec<u16>,
    protocol: Protocol,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    id: String,
    workloads: Vec<String>,
    targets: Vec<String>,
    effect: Effect,
    #[serde(default)]
    description: Option<String>,
}

// ---- compiled form -----------------------------------------------------------

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

#[derive(Debug, Clone)]
pub struct Workload {
    pub name: String,
    pub selector: CompiledSelector,
}

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
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub id: u32,
    pub name: String,
    pub prefixes: Vec<Prefix>,
    /// Empty = every port.
    pub ports: Vec<u16>,
    pub protocol: Protocol,
    /// Mode of the file that defines the target: decides what `default-deny` does.
    pub mode: Mode,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub workloads: Vec<usize>,
    pub targets: Vec<u32>,
    pub effect: Effect,
    pub mode: Mode,
}

/// The merged, validated policy set.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    pub workloads: Vec<Workload>,
    pub targets: Vec<Target>,
    pub rules: Vec<Rule>,
    /// sha256 over the file names and contents, in name order.
    pub hash: String,
    pub files: Vec<PathBuf>,
}

/// The facts about a workload a selector can look at.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Subject {
    pub uid: Option<u32>,
    pub user: Option<String>,
    pub gid: Option<u32>,
    pub group: Option<String>,
    pub exe: Option<String>,
    pub comm: Option<String>,
    pub cgroup: Option<String>,
    pub unit: Option<String>,
    pub slice: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// What happens: monitor mode turns a deny into an allow.
    pub effect: Effect,
    /// What the policy said.
    pub decided: Effect,
    pub rule: String,
    pub mode: Mode,
    /// Workload names whose selectors matched.
    pub workloads: Vec<String>,
}

impl CompiledSelector {
    fn compile(spec: Selector) -> Result<Self, String> {
        let pat = |field: &str, v: &Option<String>| -> Result<Option<glob::Pattern>, String> {
            v.as_deref()
                .map(|s| {
                    glob::Pattern::new(s)
                        .map_err(|e| format!("`{field}: {s}` is not a valid glob: {e}"))
                })
                .transpose()
        };
        if spec == Selector::default() {
            return Err(
                "`match` is empty: a workload must name at least one selector (use `uid`, `unit`, `exe`, ...)"
                    .into(),
            );
        }
        Ok(Self {
            unit: pat("unit", &spec.unit)?,
            slice: pat("slice", &spec.slice)?,
            cgroup: pat("cgroup", &spec.cgroup)?,
            user: pat("user", &spec.user)?,
            group: pat("group", &spec.group)?,
            exe: pat("exe", &spec.exe)?,
            comm: pat("comm", &spec.comm)?,
            spec,
        })
    }

    pub fn matches(&self, s: &Subject) -> bool {
        fn g(p: &Option<glob::Pattern>, v: &Option<String>) -> bool {
            match (p, v) {
                (None, _) => true,
                (Some(p), Some(v)) => p.matches(v),
                // A selector on a fact we could not establish never matches.
                (Some(_), None) => false,
            }
        }
        fn n(want: Option<u32>, have: Option<u32>) -> bool {
            match want {
                None => true,
                Some(w) => have == Some(w),
            }
        }
        n(self.spec.uid, s.uid)
            && n(self.spec.gid, s.gid)
            && g(&self.unit, &s.unit)
            && g(&self.slice, &s.slice)
            && g(&self.cgroup, &s.cgroup)
            && g(&self.user, &s.user)
            && g(&self.group, &s.group)
            && g(&self.exe, &s.exe)
            && g(&self.comm, &s.comm)
    }
}

impl CompiledPolicy {
    /// Loads every `*.yaml` / `*.yml` file (not `*.test.yaml`) of a directory, or the
    /// given files. All errors are reported, not just the first.
    pub fn load(paths: &[PathBuf]) -> Result<Self, PolicyErrors> {
        let mut files = Vec::new();
        let mut errors = Vec::new();
        for p in paths {
            if p.is_dir() {
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
        Self::from_sources(&sources)
    }

    /// Compiles a set of (file name, contents).
    pub fn from_sources(sources: &[(PathBuf, String)]) -> Result<Self, PolicyErrors> {
        let mut errors = Vec::new();
        let mut hasher = Sha256::new();
        let mut parsed = Vec::new();
        for (path, text) in sources {
            hasher.update(
                path.file_name()
                    .map(|n| n.as_encoded_bytes())
                    .unwrap_or_default(),
            );
            hasher.update([0]);
            hasher.update(text.as_bytes());
            hasher.update([0]);
            match serde_yaml_ng::from_str::<PolicyFile>(text) {
                Ok(pf) => parsed.push((path.clone(), pf)),
                Err(e) => {
                    let (line, column) = e
                        .location()
                        .map(|l| (l.line(), l.column()))
                        .unwrap_or((0, 0));
                    errors.push(PolicyError::Syntax {
                        path: path.clone(),
                        line,
                        column,
                        message: e.to_string(),
                    });
                }
            }
        }
        let invalid = |path: &Path, message: String| PolicyError::Invalid {
            path: path.to_owned(),
            message,
        };

        let mut workloads: Vec<Workload> = Vec::new();
        let mut wl_index: BTreeMap<String, usize> = BTreeMap::new();
        let mut targets: Vec<Target> = Vec::new();
        let mut tg_index: BTreeMap<String, u32> = BTreeMap::new();
        for (path, pf) in &parsed {
            if pf.api_version != API_VERSION {
                errors.push(invalid(
                    path,
                    format!(
                        "apiVersion `{}` is not supported; this agent reads `{API_VERSION}`",
                        pf.api_version
                    ),
                ));
            }
            for w in &pf.workloads {
                if wl_index.contains_key(&w.name) {
                    errors.push(invalid(
                        path,
                        format!("workload `{}` is defined twice", w.name),
                    ));
                    continue;
                }
                let _ = &w.description;
                match CompiledSelector::compile(w.selector.clone()) {
                    Ok(selector) => {
                        wl_index.insert(w.name.clone(), workloads.len());
                        workloads.push(Workload {
                            name: w.name.clone(),
                            selector,
                        });
                    }
                    Err(m) => errors.push(invalid(path, format!("workload `{}`: {m}", w.name))),
                }
            }
            for t in &pf.targets {
                if tg_index.contains_key(&t.name) {
                    errors.push(invalid(
                        path,
                        format!("target `{}` is defined twice", t.name),
                    ));
                    continue;
                }
                let _ = &t.description;
                if t.addresses.is_empty() {
                    errors.push(invalid(
                        path,
                        format!("target `{}` has no addresses", t.name),
                    ));
                    continue;
                }
                let mut prefixes = Vec::new();
                for a in &t.addresses {
                    match Prefix::parse(a) {
                        Ok(p) => prefixes.push(p),
                        Err(m) => errors.push(invalid(path, format!("target `{}`: {m}", t.name))),
                    }
                }
                if t.ports.contains(&0) {
                    errors.push(invalid(
                        path,
                        format!("target `{}`: port 0 is not a port (leave `ports` out to protect every port)", t.name),
                    ));
                }
                let id = targets.len() as u32;
                tg_index.insert(t.name.clone(), id);
                targets.push(Target {
                    id,
                    name: t.name.clone(),
                    prefixes,
                    ports: t.ports.clone(),
                    protocol: t.protocol,
                    mode: pf.mode,
                });
            }
        }
        let mut rules = Vec::new();
        let mut rule_ids = HashSet::new();
        for (path, pf) in &parsed {
            for r in &pf.rules {
                let _ = &r.description;
                if r.id == DEFAULT_DENY || !rule_ids.insert(r.id.clone()) {
                    errors.push(invalid(
                        path,
                        format!("rule id `{}` is used twice or reserved", r.id),
                    ));
                }
                let mut ws = Vec::new();
                for w in &r.workloads {
                    match wl_index.get(w) {
                        Some(i) => ws.push(*i),
                        None => errors.push(invalid(
                            path,
                            format!("rule `{}` names workload `{w}`, which is not defined", r.id),
                        )),
                    }
                }
                let mut ts = Vec::new();
                for t in &r.targets {
                    match tg_index.get(t) {
                        Some(i) => ts.push(*i),
                        None => errors.push(invalid(
                            path,
                            format!("rule `{}` names target `{t}`, which is not defined", r.id),
                        )),
                    }
                }
                if r.workloads.is_empty() || r.targets.is_empty() {
                    errors.push(invalid(
                        path,
                        format!(
                            "rule `{}` must name at least one workload and one target",
                            r.id
                        ),
                    ));
                }
                rules.push(Rule {
                    id: r.id.clone(),
                    workloads: ws,
                    targets: ts,
                    effect: r.effect,
                    mode: pf.mode,
                });
            }
        }
        if !errors.is_empty() {
            return Err(PolicyErrors(errors));
        }
        let hash = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        Ok(CompiledPolicy {
            workloads,
            targets,
            rules,
            hash,
            files: sources.iter().map(|(p, _)| p.clone()).collect(),
        })
    }

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
}

fn is_policy_file(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    p.is_file()
        && (name.ends_with(".yaml") || name.ends_with(".yml"))
        && !name.ends_with(".test.yaml")
        && !name.ends_with(".test.yml")
        && !name.starts_with('.')
}

/// Decides a connection of `subject` to `target`. Pure: no I/O.
///
/// Precedence: a matching `deny` beats a matching `allow`; nothing matched is
/// `default-deny`. Among denies, one from an enforce-mode file wins over one from a
/// monitor-mode file, so a file in monitor mode never weakens an enforced deny.
/// Monitor mode turns a deny into `effect: allow` with `decided: deny` (logged as
/// `would_deny`); for `default-deny` the mode of the file defining the target counts,
/// so a target rolled out in monitor mode is observed, not blocked.
pub fn evaluate(policy: &CompiledPolicy, subject: &Subject, target: u32) -> Decision {
    let matched: Vec<usize> = policy
        .workloads
        .iter()
        .enumerate()
        .filter(|(_, w)| w.selector.matches(subject))
        .map(|(i, _)| i)
        .collect();
    let names = matched
        .iter()
        .map(|i| policy.workloads[*i].name.clone())
        .collect();
    let candidates = policy
        .rules
        .iter()
        .filter(|r| r.targets.contains(&target) && r.workloads.iter().any(|w| matched.contains(w)));
    let mut allow: Option<&Rule> = None;
    let mut deny: Option<&Rule> = None;
    for r in candidates {
        match r.effect {
            Effect::Deny => {
                let better = match deny {
                    None => true,
                    Some(d) => d.mode == Mode::Monitor && r.mode == Mode::Enforce,
                };
                if better {
                    deny = Some(r);
                }
            }
            Effect::Allow if allow.is_none() => allow = Some(r),
            _ => {}
        }
    }
    let soften = |mode: Mode| {
        if mode == Mode::Monitor {
            Effect::Allow
        } else {
            Effect::Deny
        }
    };
    match (deny, allow) {
        (Some(r), _) => Decision {
            effect: soften(r.mode),
            decided: Effect::Deny,
            rule: r.id.clone(),
            mode: r.mode,
            workloads: names,
        },
        (None, Some(r)) => Decision {
            effect: Effect::Allow,
            decided: Effect::Allow,
            rule: r.id.clone(),
            mode: r.mode,
            workloads: names,
        },
        (None, None) => {
            let mode = policy
                .targets
                .get(target as usize)
                .map(|t| t.mode)
                .unwrap_or(Mode::Enforce);
            Decision {
                effect: soften(mode),
                decided: Effect::Deny,
                rule: DEFAULT_DENY.into(),
                mode,
                workloads: names,
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(text: &str) -> Result<CompiledPolicy, PolicyErrors> {
        CompiledPolicy::from_sources(&[(PathBuf::from("p.yaml"), text.to_string())])
    }

    const BASE: &str = r#"
apiVersion: portcullis.dev/v0
workloads:
  - name: reporter
    match: { unit: "reporting*.service" }
  - name: root
    match: { uid: 0 }
  - name: python
    match: { exe: "/usr/bin/python3*" }
targets:
  - name: pg
    addresses: ["127.0.0.1", "10.0.4.0/24"]
    ports: [5432]
    protocol: tcp
  - name: any-port
    addresses: ["::1"]
    protocol: tcp
rules:
  - id: reporter-pg
    workloads: [reporter, root]
    targets: [pg]
    effect: allow
  - id: no-python
    workloads: [python]
    targets: [pg, any-port]
    effect: deny
"#;

    fn v4(a: [u8; 4]) -> [u8; 16] {
        std::net::Ipv4Addr::from(a).to_ipv6_mapped().octets()
    }

    #[test]
    fn allow_by_unit_and_uid() {
        let p = compile(BASE).expect("valid");
        let s = Subject {
            unit: Some("reporting-nightly.service".into()),
            uid: Some(1000),
            ..Default::default()
        };
        let d = evaluate(&p, &s, 0);
        assert_eq!(d.effect, Effect::Allow);
        assert_eq!(d.rule, "reporter-pg");
        let s = Subject {
            uid: Some(0),
            ..Default::default()
        };
        assert_eq!(evaluate(&p, &s, 0).rule, "reporter-pg");
    }

    #[test]
    fn deny_beats_allow_and_default_deny() {
        let p = compile(BASE).expect("valid");
        let s = Subject {
            uid: Some(0),
            exe: Some("/usr/bin/python3.11".into()),
            ..Default::default()
        };
        let d = evaluate(&p, &s, 0);
        assert_eq!((d.effect, d.rule.as_str()), (Effect::Deny, "no-python"));
        let s = Subject {
            uid: Some(1),
            ..Default::default()
        };
        let d = evaluate(&p, &s, 0);
        assert_eq!((d.effect, d.rule.as_str()), (Effect::Deny, DEFAULT_DENY));
        // A selector on an unknown fact does not match.
        let d = evaluate(&p, &Subject::default(), 0);
        assert_eq!(d.rule, DEFAULT_DENY);
    }

    #[test]
    fn monitor_mode_lets_through_but_records() {
        let text = BASE.replace(
            "apiVersion: portcullis.dev/v0",
            "apiVersion: portcullis.dev/v0\nmode: monitor",
        );
        let p = compile(&text).expect("valid");
        let d = evaluate(
            &p,
            &Subject {
                uid: Some(5),
                ..Default::default()
            },
            0,
        );
        // Nothing matched, target defined in a monitor-mode file: observed, not blocked.
        assert_eq!(
            (d.effect, d.decided, d.rule.as_str()),
            (Effect::Allow, Effect::Deny, DEFAULT_DENY)
        );
        let s = Subject {
            exe: Some("/usr/bin/python3".into()),
            ..Default::default()
        };
        let d = evaluate(&p, &s, 0);
        assert_eq!(
            (d.effect, d.decided, d.mode),
            (Effect::Allow, Effect::Deny, Mode::Monitor)
        );
    }

    #[test]
    fn enforced_deny_beats_monitored_deny() {
        let monitor = "apiVersion: portcullis.dev/v0\nmode: monitor\nworkloads:\n  - name: all\n    match: { uid: 0 }\nrules:\n  - id: m-deny\n    workloads: [all]\n    targets: [pg]\n    effect: deny\n";
        let p = CompiledPolicy::from_sources(&[
            (PathBuf::from("a-monitor.yaml"), monitor.to_string()),
            (PathBuf::from("b-enforce.yaml"), BASE.to_string()),
        ])
        .expect("valid");
        let s = Subject {
            uid: Some(0),
            exe: Some("/usr/bin/python3".into()),
            ..Default::default()
        };
        let d = evaluate(&p, &s, 0);
        assert_eq!((d.effect, d.rule.as_str()), (Effect::Deny, "no-python"));
        // Enforce-mode target: default-deny is enforced.
        let d = evaluate(
            &p,
            &Subject {
                uid: Some(7),
                ..Default::default()
            },
            0,
        );
        assert_eq!((d.effect, d.mode), (Effect::Deny, Mode::Enforce));
    }

    #[test]
    fn target_lookup_longest_prefix_and_ports() {
        let p = compile(BASE).expect("valid");
        assert_eq!(
            p.target_for(&v4([10, 0, 4, 9]), 5432).map(|t| t.id),
            Some(0)
        );
        assert!(p.target_for(&v4([10, 0, 4, 9]), 5433).is_none());
        assert!(p.target_for(&v4([10, 0, 5, 9]), 5432).is_none());
        let v6 = std::net::Ipv6Addr::LOCALHOST.octets();
        assert_eq!(p.target_for(&v6, 1).map(|t| t.id), Some(1));
    }

    #[test]
    fn errors_are_all_reported() {
        let text = r#"
apiVersion: portcullis.dev/v0
workloads:
  - name: a
    match: {}
targets:
  - name: t
    addresses: ["10.0.0.1/24", "nope"]
    ports: [0]
    protocol: tcp
rules:
  - id: r
    workloads: [missing]
    targets: [t]
    effect: allow
"#;
        let errs = compile(text).expect_err("invalid").to_string();
        for want in [
            "`match` is empty",
            "host bits",
            "not an IP",
            "port 0",
            "workload `missing`",
        ] {
            assert!(errs.contains(want), "missing `{want}` in:\n{errs}");
        }
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let text = "apiVersion: portcullis.dev/v0\nrules:\n  - id: r\n    effect: maybe\n    workloads: []\n    targets: []\n";
        let errs = compile(text).expect_err("bad effect");
        let msg = errs.to_string();
        assert!(msg.starts_with("p.yaml:4:"), "{msg}");
    }

    #[test]
    fn unknown_field_refused() {
        let text =
            "apiVersion: portcullis.dev/v0\nworkloads:\n  - name: a\n    match: { uidd: 1 }\n";
        let msg = compile(text).expect_err("typo").to_string();
        assert!(msg.contains("uidd"), "{msg}");
    }

    #[test]
    fn prefix_parse() {
        assert_eq!(Prefix::parse("10.0.0.0/8").map(|p| p.len), Ok(104));
        assert_eq!(Prefix::parse("::1").map(|p| p.len), Ok(128));
        assert!(Prefix::parse("10.0.0.0/33").is_err());
        assert_eq!(
            Prefix::parse("10.1.0.0/16").map(|p| p.display()),
            Ok("10.1.0.0/16".to_string())
        );
    }
}
