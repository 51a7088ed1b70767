//! `portcullis policy explain`: which selectors matched, which rules were
//! candidates, which won and why.

use std::fmt::Write as _;

use super::{Action, CompiledPolicy, Decision, Mode, Request, Subject, effect_name, evaluate};

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Enforce => "enforce",
        Mode::Monitor => "monitor",
    }
}

/// Parses `key=value,key=value` into a subject (keys: uid, gid, user, group, exe,
/// exe_sha256, comm, cgroup, unit, slice).
pub fn subject_from_pairs(s: &str) -> Result<Subject, String> {
    let mut out = Subject::default();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("`{pair}` is not key=value"))?;
        let v = v.to_string();
        let num = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| format!("`{k}={v}`: not a number"))
        };
        match k {
            "uid" => out.uid = Some(num(&v)?),
            "gid" => out.gid = Some(num(&v)?),
            "user" => out.user = Some(v),
            "group" => out.group = Some(v),
            "exe" => out.exe = Some(v),
            "exe_sha256" => out.exe_sha256 = Some(v),
            "comm" => out.comm = Some(v),
            "cgroup" => out.cgroup = Some(v),
            "unit" => out.unit = Some(v),
            "slice" => out.slice = Some(v),
            other => {
                return Err(format!(
                    "unknown workload fact `{other}` (known: uid, gid, user, group, exe, exe_sha256, comm, cgroup, unit, slice)"
                ));
            }
        }
    }
    Ok(out)
}

/// A readable account of one decision.
pub fn explain(
    policy: &CompiledPolicy,
    subject: &Subject,
    target: &str,
    now_unix: u64,
) -> Result<(String, Decision), String> {
    let t = policy.target_by_name(target).ok_or_else(|| {
        let names: Vec<&str> = policy.targets.iter().map(|t| t.name.as_str()).collect();
        format!(
            "target `{target}` is not defined (targets: {})",
            names.join(", ")
        )
    })?;
    let mut s = String::new();
    let addrs: Vec<String> = t.prefixes.iter().map(|p| p.display()).collect();
    let ports = if t.ports.is_empty() {
        "every port".to_string()
    } else {
        "port ".to_string()
            + &t.ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ")
    };
    let _ = writeln!(
        s,
        "target {} ({}; {}; {}; defined in {} mode)",
        t.name,
        t.protocol.name(),
        addrs.join(", "),
        ports,
        mode_name(t.mode)
    );
    let _ = writeln!(s, "\nworkloads:");
    for w in &policy.workloads {
        let ok = w.selector.matches(subject);
        let fields: Vec<String> = w
            .selector
            .field_results(subject)
            .iter()
            .map(|(f, m)| format!("{f} {}", if *m { "✓" } else { "✗" }))
            .collect();
        let _ = writeln!(
            s,
            "  {} {:<24} {}   ({})",
            if ok { "✓" } else { "✗" },
            w.name,
            fields.join("  "),
            w.file.display()
        );
    }
    let _ = writeln!(s, "\nrules naming {} (load order):", t.name);
    let rules = policy.rules_for(t.id);
    if rules.is_empty() {
        let _ = writeln!(s, "  (none)");
    }
    for &ri in rules {
        let r = &policy.rules[ri];
        let names: Vec<&str> = r
            .workloads
            .iter()
            .map(|w| policy.workloads[*w].name.as_str())
            .collect();
        let matched: Vec<&str> = r
            .workloads
            .iter()
            .filter(|w| policy.workloads[**w].selector.matches(subject))
            .map(|w| policy.workloads[*w].name.as_str())
            .collect();
        let status = if r.request_conditions.is_some() && r.effect != super::Effect::Allow {
            "decides requests, not connections".to_string()
        } else if r.time.as_ref().is_some_and(|w| !w.contains(now_unix)) {
            "outside its time window".to_string()
        } else if matched.is_empty() {
            format!("not a candidate: none of [{}] matched", names.join(", "))
        } else {
            format!("candidate: {} matched", matched.join(", "))
        };
        let approval = r
            .approval
            .as_ref()
            .map(|a| {
                format!(
                    " [approvers {}, {} needed, {}s]",
                    a.approvers.join("/"),
                    a.min_approvals,
                    a.timeout.as_secs()
                )
            })
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  {:<28} {:<16} {:<8} {status}{approval}   ({}:{}){}",
            r.id,
            effect_name(r.effect),
            if r.mode == Mode::Monitor {
                "monitor"
            } else {
                "enforce"
            },
            r.file.display(),
            r.line,
            r.description
                .as_ref()
                .map(|d| format!("\n      {d}"))
                .unwrap_or_default()
        );
    }
    let masks: Vec<&str> = policy
        .masks
        .iter()
        .filter(|m| m.targets.contains(&t.id))
        .filter(|m| {
            m.workloads.as_ref().is_none_or(|ws| {
                ws.iter()
                    .any(|w| policy.workloads[*w].selector.matches(subject))
            })
        })
        .map(|m| m.id.as_str())
        .collect();
    if !masks.is_empty() {
        let _ = writeln!(
            s,
            "\nmasks that would apply to responses: {}",
            masks.join(", ")
        );
    }
    let d = evaluate(
        policy,
        &Request {
            subject,
            target: t.id,
            action: Action::Connect,
            now_unix,
        },
    );
    let why = if d.rule == super::DEFAULT_DENY {
        "no rule decided this connection, so the default applies".to_string()
    } else {
        "precedence is deny > require_approval > allow, then load order; only enforce-mode rules decide, monitor-mode rules are recorded as what would have happened".to_string()
    };
    let _ = writeln!(
        s,
        "\ndecision: {} by rule {} ({} mode) → {}\n  {why}",
        effect_name(d.decided),
        d.rule,
        mode_name(d.mode),
        match d.label() {
            "held" => "held for approval (refused until approvals are available)",
            other => other,
        }
    );
    Ok((s, d))
}

/// A readable account of how a SQL text would be decided, statement by statement
/// (`portcullis policy explain --sql`): the analysis, every rule's conditions, and
/// the decision of each statement and of the whole message.
pub fn explain_sql(
    policy: &CompiledPolicy,
    subject: &Subject,
    target: &str,
    now_unix: u64,
    sql: &str,
    db_user: &str,
) -> Result<(String, Decision), String> {
    use crate::protocol::sql::{Analyzer, SqlSession, decide_message};
    let t = policy
        .target_by_name(target)
        .ok_or_else(|| format!("target `{target}` is not defined"))?;
    let analysis = Analyzer::new(0).analyze(sql);
    let session = SqlSession::new(db_user, None);
    let m = decide_message(policy, subject, t.id, now_unix, &session, &analysis);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nsql (database user {db_user}; search_path candidates {}):",
        session.candidate_schemas().join(", ")
    );
    if let Some(e) = &analysis.error {
        let _ = writeln!(
            s,
            "  the text does not parse: {e}\n  defaults.unparseable of {} is {:?}",
            t.name, t.unparseable
        );
    }
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(", ")
        }
    };
    for (i, d) in m.statements.iter().enumerate() {
        let info = analysis.statements.get(i);
        if let Some(info) = info {
            let _ = writeln!(s, "\n  [{}] {}", i + 1, info.fingerprint);
            if !info.dangerous.is_empty() {
                let _ = writeln!(s, "      dangerous: {}", info.dangerous.join(", "));
            }
        }
        if let Some(e) = &d.error {
            let _ = writeln!(s, "      cannot be decided on its facts: {e}");
        }
        if let Some(f) = &d.facts {
            let kinds: Vec<String> = f
                .kinds
                .iter()
                .map(|k| {
                    serde_json::to_value(k)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                })
                .collect();
            let _ = writeln!(s, "      kinds:          {}", list(&kinds));
            let _ = writeln!(s, "      tables read:    {}", list(&f.tables_read));
            let _ = writeln!(s, "      tables written: {}", list(&f.tables_written));
            let _ = writeln!(s, "      columns:        {}", list(&f.columns));
            let _ = writeln!(s, "      functions:      {}", list(&f.functions));
            let _ = writeln!(s, "      where_less:     {}", f.where_less);
            privileges(&mut s, policy, subject, t.id, now_unix, f);
            let _ = writeln!(s, "      rules:");
            for &ri in policy.rules_for(t.id) {
                let r = &policy.rules[ri];
                let matched = r
                    .workloads
                    .iter()
                    .any(|w| policy.workloads[*w].selector.matches(subject));
                let status = if !matched {
                    "not a candidate: no workload matched".to_string()
                } else if r.time.as_ref().is_some_and(|w| !w.contains(now_unix)) {
                    "outside its time window".to_string()
                } else if r.request_conditions.is_none() {
                    "no conditions: applies to every statement".to_string()
                } else if let (Some(c), super::Effect::Allow) = (&r.sql, r.effect) {
                    if c.in_force(f) {
                        "grants privileges (see above)".to_string()
                    } else {
                        "not in force: its columns or where_less condition does not hold"
                            .to_string()
                    }
                } else if let Some(c) = &r.sql {
                    let fields: Vec<String> = c
                        .field_results(f)
                        .iter()
                        .map(|(n, ok)| format!("{n} {}", if *ok { "✓" } else { "✗" }))
                        .collect();
                    format!(
                        "{}: {}",
                        if c.matches(f) {
                            "holds"
                        } else {
                            "does not hold"
                        },
                        fields.join("  ")
                    )
                } else {
                    "conditions for another protocol".to_string()
                };
                let _ = writeln!(
                    s,
                    "        {:<28} {:<16} {status}",
                    r.id,
                    effect_name(r.effect)
                );
            }
        }
        let _ = writeln!(
            s,
            "      decision: {} by rule {} → {}{}",
            effect_name(d.decision.decided),
            d.decision.rule,
            d.decision.label(),
            d.decision
                .reason
                .as_ref()
                .map(|r| format!("\n        {r}"))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(
        s,
        "\nmessage decision: {} by rule {} → {}\n  a message is decided as a whole: the most restrictive decision among its statements",
        effect_name(m.decision.decided),
        m.decision.rule,
        m.decision.label()
    );
    Ok((s, m.decision))
}

/// The privileges of a statement, each with the allow rule in force that
/// grants it, or `MISSING`.
fn privileges(
    s: &mut String,
    policy: &CompiledPolicy,
    subject: &Subject,
    target: u32,
    now_unix: u64,
    f: &super::StatementFacts,
) {
    let mut connection_allow = None;
    let mut granting: Vec<(String, &super::CompiledSql)> = Vec::new();
    for &ri in policy.rules_for(target) {
        let r = &policy.rules[ri];
        let matched = r
            .workloads
            .iter()
            .any(|w| policy.workloads[*w].selector.matches(subject));
        if r.effect != super::Effect::Allow
            || !matched
            || r.time.as_ref().is_some_and(|w| !w.contains(now_unix))
        {
            continue;
        }
        match (&r.request_conditions, &r.sql) {
            (None, _) => {
                connection_allow.get_or_insert(r.id.as_str());
            }
            (Some(_), Some(c)) if c.in_force(f) => granting.push((
                match r.mode {
                    Mode::Enforce => r.id.clone(),
                    Mode::Monitor => format!("{} (monitor mode)", r.id),
                },
                c,
            )),
            _ => {}
        }
    }
    // As the decision does: enforce-mode grants first, then monitor-mode ones,
    // each in load order.
    granting.sort_by_key(|(id, _)| id.ends_with("(monitor mode)"));
    let _ = writeln!(
        s,
        "      privileges (each must be granted by an allow rule in force):"
    );
    if let Some(id) = connection_allow {
        let _ = writeln!(
            s,
            "        every privilege: granted by {id} (an allow with no `sql` conditions)"
        );
    }
    for p in &f.privileges {
        let names: Vec<Option<&str>> = if p.names().is_empty() {
            vec![None]
        } else {
            p.names().iter().map(|n| Some(n.as_str())).collect()
        };
        for n in names {
            let by = granting
                .iter()
                .find(|(_, c)| c.grants(p, n))
                .map(|(id, _)| format!("granted by {id}"))
                .or_else(|| connection_allow.map(|id| format!("granted by {id}")))
                .unwrap_or_else(|| "MISSING: granted by no rule".to_string());
            let _ = writeln!(s, "        {:<40} {by}", p.describe(n));
        }
    }
}
