//! Policy unit tests kept next to the policies (`*.test.yaml`), run by
//! `portcullis policy test DIR`: "as workload W on target T, this request → expect
//! effect E by rule R".
//!
//! ```yaml
//! apiVersion: portcullis.dev/v1
//! tests:
//!   - name: operators may connect with psql
//!     workload: { uid: 0, exe: /usr/lib/postgresql/15/bin/psql }
//!     target: demo-postgres
//!     expect: { effect: allow, rule: ops-psql-may-connect }
//!   - name: the service never deletes every row
//!     workload: { unit: payments-api.service }
//!     target: payments-db
//!     sql: "DELETE FROM payments"
//!     expect: { effect: deny, rule: no-where-less-writes }
//! ```
//!
//! With `sql`, the case decides that text as one simple-query message on a new
//! session (database user `db_user`, default the workload's `user`, else
//! `postgres`; default search_path): every statement is decided and the most
//! restrictive decision is the one compared with `expect`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::locate::Locations;
use super::spec::Effect;
use super::{
    API_VERSION, Action, CompiledPolicy, Outcome, PolicyError, Protocol, Request, Subject, evaluate,
};
use crate::protocol::sql::{Analyzer, SqlSession, decide_message};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(rename = "apiVersion")]
    api_version: String,
    tests: Vec<TestCase>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RequestKind {
    Connect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    effect: Effect,
    rule: Option<String>,
    outcome: Option<Outcome>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    name: String,
    workload: Subject,
    target: String,
    #[serde(default = "connect")]
    request: RequestKind,
    /// RFC 3339 UTC time the request is decided at (default: a Monday, 12:00 UTC).
    at: Option<String>,
    /// SQL text sent as one simple-query message: the statements are decided
    /// instead of the connection.
    sql: Option<String>,
    /// Database user of the session (for `"$user"` on the search_path).
    db_user: Option<String>,
    expect: Expect,
}

fn connect() -> RequestKind {
    RequestKind::Connect
}

/// A Monday at 12:00 UTC: the default time of a policy test.
pub const DEFAULT_TEST_TIME: u64 = 1_767_614_400; // 2026-01-05T12:00:00Z

/// Parses `YYYY-MM-DDTHH:MM:SSZ` (UTC only) to seconds since the epoch.
pub fn parse_utc(s: &str) -> Result<u64, String> {
    let bad = || format!("`{s}` is not a UTC time like 2026-01-05T12:00:00Z");
    let b = s.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        s[r].parse::<i64>().map_err(|_| bad())
    };
    let (y, m, d, hh, mm, ss) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m)
        || d < 1
        || d > month_days[(m - 1) as usize]
        || hh > 23
        || mm > 59
        || ss > 59
    {
        return Err(bad());
    }
    // Days from civil (Howard Hinnant).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let t = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(t).map_err(|_| bad())
}

#[derive(Debug)]
pub struct CaseResult {
    pub file: PathBuf,
    pub line: usize,
    pub name: String,
    /// None: passed.
    pub failure: Option<String>,
}

#[derive(Debug, Default)]
pub struct TestReport {
    pub cases: Vec<CaseResult>,
    /// Test files that could not be read or parsed.
    pub errors: Vec<PolicyError>,
}

impl TestReport {
    pub fn passed(&self) -> usize {
        self.cases.iter().filter(|c| c.failure.is_none()).count()
    }
    pub fn failed(&self) -> usize {
        self.cases.len() - self.passed()
    }
    pub fn ok(&self) -> bool {
        self.failed() == 0 && self.errors.is_empty() && !self.cases.is_empty()
    }
}

impl fmt::Display for TestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.cases {
            match &c.failure {
                None => writeln!(f, "PASS {}:{} {}", c.file.display(), c.line, c.name)?,
                Some(why) => writeln!(
                    f,
                    "FAIL {}:{} {}\n     {why}",
                    c.file.display(),
                    c.line,
                    c.name
                )?,
            }
        }
        for e in &self.errors {
            writeln!(f, "ERROR {e}")?;
        }
        if self.cases.is_empty() && self.errors.is_empty() {
            writeln!(f, "no policy tests (*.test.yaml) found")?;
        }
        write!(
            f,
            "policy tests: {} passed, {} failed",
            self.passed(),
            self.failed() + self.errors.len()
        )
    }
}

/// Runs every `*.test.yaml` in `dir` against `policy`.
pub fn run_dir(policy: &CompiledPolicy, dir: &Path) -> TestReport {
    let mut report = TestReport::default();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| super::is_test_file(p))
            .collect(),
        Err(source) => {
            report.errors.push(PolicyError::ReadDir {
                path: dir.to_owned(),
                source,
            });
            return report;
        }
    };
    files.sort();
    for f in files {
        match std::fs::read_to_string(&f) {
            Ok(text) => run_text(policy, &f, &text, &mut report),
            Err(source) => report.errors.push(PolicyError::Read { path: f, source }),
        }
    }
    report
}

pub fn run_text(policy: &CompiledPolicy, file: &Path, text: &str, report: &mut TestReport) {
    let locs = Locations::of(text);
    let at = |path: &str, message: String| {
        let (line, column) = locs.at(path);
        PolicyError::At {
            path: file.to_owned(),
            line,
            column,
            message,
            hint: None,
        }
    };
    let tf: TestFile = match serde_yaml_ng::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            let msg = e.to_string();
            let suffix = format!(" at line {line} column {column}");
            report.errors.push(PolicyError::At {
                path: file.to_owned(),
                line,
                column,
                message: msg.strip_suffix(&suffix).map(str::to_string).unwrap_or(msg),
                hint: None,
            });
            return;
        }
    };
    if tf.api_version != API_VERSION {
        report.errors.push(at(
            "apiVersion",
            format!(
                "apiVersion `{}` is not supported; use `{API_VERSION}`",
                tf.api_version
            ),
        ));
        return;
    }
    for (i, case) in tf.tests.iter().enumerate() {
        let (line, _) = locs.at(&format!("tests.{i}.name"));
        let fail = |why: String| CaseResult {
            file: file.to_owned(),
            line,
            name: case.name.clone(),
            failure: Some(why),
        };
        let Some(target) = policy.target_by_name(&case.target) else {
            report.cases.push(fail(format!(
                "target `{}` is not defined by the policy",
                case.target
            )));
            continue;
        };
        let now = match case.at.as_deref().map(parse_utc).transpose() {
            Ok(t) => t.unwrap_or(DEFAULT_TEST_TIME),
            Err(e) => {
                report.cases.push(fail(e));
                continue;
            }
        };
        let d = if let Some(sql) = &case.sql {
            if !matches!(target.protocol, Protocol::Postgres | Protocol::Mysql) {
                report.cases.push(fail(format!(
                    "`sql` is given but target `{}` is of protocol {}",
                    case.target,
                    target.protocol.name()
                )));
                continue;
            }
            let user = case
                .db_user
                .clone()
                .or_else(|| case.workload.user.clone())
                .unwrap_or_else(|| "postgres".into());
            let session = SqlSession::new(&user, None);
            let analysis = Analyzer::new(0).analyze(sql);
            decide_message(policy, &case.workload, target.id, now, &session, &analysis).decision
        } else {
            let action = match case.request {
                RequestKind::Connect => Action::Connect,
            };
            evaluate(
                policy,
                &Request {
                    subject: &case.workload,
                    target: target.id,
                    action,
                    now_unix: now,
                },
            )
        };
        let mut problems = Vec::new();
        if d.decided != case.expect.effect {
            problems.push(format!("effect {}", super::effect_name(d.decided)));
        }
        if let Some(r) = &case.expect.rule
            && *r != d.rule
        {
            problems.push(format!("rule {}", d.rule));
        }
        if let Some(o) = case.expect.outcome
            && o != d.outcome
        {
            problems.push(format!("outcome {:?}", d.outcome).to_lowercase());
        }
        if problems.is_empty() {
            report.cases.push(CaseResult {
                file: file.to_owned(),
                line,
                name: case.name.clone(),
                failure: None,
            });
        } else {
            report.cases.push(fail(format!(
                "expected effect {}{}{}, got {} (decided {} by rule {}, mode {:?}; matched workloads: {}){}",
                super::effect_name(case.expect.effect),
                case.expect.rule.as_ref().map(|r| format!(" by rule {r}")).unwrap_or_default(),
                case.expect.outcome.map(|o| format!(", outcome {o:?}").to_lowercase()).unwrap_or_default(),
                problems.join(", "),
                super::effect_name(d.decided),
                d.rule,
                d.mode,
                if d.workloads.is_empty() { "none".to_string() } else { d.workloads.join(", ") },
                d.reason.as_ref().map(|r| format!("; {r}")).unwrap_or_default()
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times() {
        assert_eq!(parse_utc("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_utc("2026-01-05T12:00:00Z"), Ok(DEFAULT_TEST_TIME));
        assert_eq!(parse_utc("2000-02-29T00:00:00Z"), Ok(951_782_400));
        assert!(parse_utc("2026-01-05 12:00:00").is_err());
        assert!(parse_utc("2026-02-31T00:00:00Z").is_err());
        assert!(parse_utc("2024-02-29T00:00:00Z").is_ok());
    }
}
