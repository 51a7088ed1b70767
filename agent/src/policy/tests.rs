use super::*;

fn compile(text: &str) -> Result<CompiledPolicy, PolicyErrors> {
    CompiledPolicy::from_sources_with(&[(PathBuf::from("p.yaml"), text.to_string())], &fake_dns)
}

fn fake_dns(host: &str) -> Result<Vec<IpAddr>, String> {
    match host {
        "db.internal" => Ok(vec!["10.9.9.9".parse().map_err(|_| "bad")?]),
        _ => Err("no such host".into()),
    }
}

fn req(s: &Subject, target: u32) -> Request<'_> {
    Request {
        subject: s,
        target,
        action: Action::Connect,
        now_unix: testing::DEFAULT_TEST_TIME,
    }
}

const BASE: &str = r#"
apiVersion: portcullis.dev/v1
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
    protocol: postgres
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
    let d = evaluate(&p, &req(&s, 0));
    assert_eq!(
        (d.outcome, d.rule.as_str()),
        (Outcome::Allow, "reporter-pg")
    );
    let s = Subject {
        uid: Some(0),
        ..Default::default()
    };
    assert_eq!(evaluate(&p, &req(&s, 0)).rule, "reporter-pg");
}

#[test]
fn deny_beats_allow_and_default_deny() {
    let p = compile(BASE).expect("valid");
    let s = Subject {
        uid: Some(0),
        exe: Some("/usr/bin/python3.11".into()),
        ..Default::default()
    };
    let d = evaluate(&p, &req(&s, 0));
    assert_eq!((d.outcome, d.rule.as_str()), (Outcome::Deny, "no-python"));
    let s = Subject {
        uid: Some(1),
        ..Default::default()
    };
    let d = evaluate(&p, &req(&s, 0));
    assert_eq!((d.outcome, d.rule.as_str()), (Outcome::Deny, DEFAULT_DENY));
    // A selector on an unknown fact does not match.
    assert_eq!(
        evaluate(&p, &req(&Subject::default(), 0)).rule,
        DEFAULT_DENY
    );
}

#[test]
fn approval_sits_between_deny_and_allow() {
    let text = format!(
        "{BASE}  - id: root-needs-approval\n    workloads: [root]\n    targets: [any-port]\n    effect: require_approval\n    approval: {{ approvers: [dba], timeout: 5m }}\n    when: {{ time: {{ days: [mon, tue, wed, thu, fri] }} }}\n  - id: root-any\n    workloads: [root]\n    targets: [any-port]\n    effect: allow\n"
    );
    let p = compile(&text).expect("valid");
    let s = Subject {
        uid: Some(0),
        ..Default::default()
    };
    let d = evaluate(&p, &req(&s, 1));
    assert_eq!(
        (d.outcome, d.decided, d.rule.as_str()),
        (
            Outcome::Hold,
            Effect::RequireApproval,
            "root-needs-approval"
        )
    );
    assert_eq!(d.label(), "held");
    let r = &p.rules[2];
    let a = r.approval.as_ref().expect("approval");
    assert_eq!((a.timeout, a.min_approvals), (Duration::from_secs(300), 1));
    // deny still beats approval
    let s = Subject {
        uid: Some(0),
        exe: Some("/usr/bin/python3".into()),
        ..Default::default()
    };
    assert_eq!(evaluate(&p, &req(&s, 1)).rule, "no-python");
}

#[test]
fn kill_outranks_deny_and_monitor_mode_reports_it() {
    let text = format!(
        "{BASE}  - id: root-killed\n    workloads: [root]\n    targets: [any-port]\n    effect: kill\n"
    );
    let p = compile(&text).expect("valid");
    let s = Subject {
        uid: Some(0),
        exe: Some("/usr/bin/python3".into()),
        ..Default::default()
    };
    // Both no-python (deny) and root-killed (kill) match: kill wins.
    let d = evaluate(&p, &req(&s, 1));
    assert_eq!(
        (d.outcome, d.decided, d.rule.as_str(), d.label()),
        (Outcome::Deny, Effect::Kill, "root-killed", "kill")
    );
    let p = compile(&text.replace(
        "apiVersion: portcullis.dev/v1\n",
        "apiVersion: portcullis.dev/v1\nmode: monitor\n",
    ))
    .expect("valid");
    let d = evaluate(&p, &req(&s, 1));
    assert_eq!((d.outcome, d.label()), (Outcome::Allow, "would_kill"));
}

#[test]
fn time_windows() {
    let text = format!(
        "{BASE}  - id: weekday-office\n    workloads: [python]\n    targets: [any-port]\n    effect: allow\n    when:\n      time: {{ days: [mon, tue, wed, thu, fri], from: \"08:00\", to: \"18:00\" }}\n  - id: night\n    workloads: [reporter]\n    targets: [any-port]\n    effect: allow\n    when:\n      time: {{ from: \"22:00\", to: \"02:00\" }}\n"
    );
    // `no-python` denies python on any-port whatever the time: drop it for this test.
    let text = text.replace("targets: [pg, any-port]", "targets: [pg]");
    let p = compile(&text).expect("valid");
    let py = Subject {
        exe: Some("/usr/bin/python3".into()),
        ..Default::default()
    };
    let at = |t: &str| testing::parse_utc(t).expect("time");
    let mut r = req(&py, 1);
    r.now_unix = at("2026-01-05T09:00:00Z"); // Monday 09:00
    assert_eq!(evaluate(&p, &r).rule, "weekday-office");
    r.now_unix = at("2026-01-05T18:00:00Z"); // end is exclusive
    assert_eq!(evaluate(&p, &r).rule, DEFAULT_DENY);
    r.now_unix = at("2026-01-10T09:00:00Z"); // Saturday
    assert_eq!(evaluate(&p, &r).rule, DEFAULT_DENY);
    let rep = Subject {
        unit: Some("reporting.service".into()),
        ..Default::default()
    };
    let mut r = req(&rep, 1);
    r.now_unix = at("2026-01-05T23:30:00Z");
    assert_eq!(evaluate(&p, &r).rule, "night");
    r.now_unix = at("2026-01-06T01:59:00Z");
    assert_eq!(evaluate(&p, &r).rule, "night");
    r.now_unix = at("2026-01-06T02:00:00Z");
    assert_eq!(evaluate(&p, &r).rule, DEFAULT_DENY);
}

#[test]
fn any_all_and_token_selectors() {
    let text = r#"
apiVersion: portcullis.dev/v1
workloads:
  - name: ci
    match:
      any:
        - { unit: "gitlab-runner.service" }
        - all:
            - { user: "ci" }
            - { token: { issuer: "https://idp.example", claims: { team: "payments" } } }
targets:
  - name: t
    addresses: ["10.0.0.1"]
    protocol: tcp
rules:
  - id: ci-allow
    workloads: [ci]
    targets: [t]
    effect: allow
"#;
    let p = compile(text).expect("valid");
    let runner = Subject {
        unit: Some("gitlab-runner.service".into()),
        ..Default::default()
    };
    assert_eq!(evaluate(&p, &req(&runner, 0)).rule, "ci-allow");
    let mut tok = Subject {
        user: Some("ci".into()),
        token: Some(TokenClaims {
            issuer: "https://idp.example".into(),
            subject: "job-1".into(),
            audience: vec![],
            claims: [("team".to_string(), "payments".to_string())].into(),
        }),
        ..Default::default()
    };
    assert_eq!(evaluate(&p, &req(&tok, 0)).rule, "ci-allow");
    if let Some(t) = tok.token.as_mut() {
        t.claims.insert("team".into(), "growth".into());
    }
    assert_eq!(evaluate(&p, &req(&tok, 0)).rule, DEFAULT_DENY);
}

#[test]
fn monitor_mode_observes_and_enforced_deny_wins() {
    let monitor = BASE.replace(
        "apiVersion: portcullis.dev/v1",
        "apiVersion: portcullis.dev/v1\nmode: monitor",
    );
    let p = compile(&monitor).expect("valid");
    let d = evaluate(
        &p,
        &req(
            &Subject {
                uid: Some(5),
                ..Default::default()
            },
            0,
        ),
    );
    assert_eq!(
        (d.outcome, d.label(), d.rule.as_str()),
        (Outcome::Allow, "would_deny", DEFAULT_DENY)
    );
    let extra = "apiVersion: portcullis.dev/v1\nmode: monitor\nworkloads:\n  - name: all-root\n    match: { uid: 0 }\nrules:\n  - id: m-deny\n    workloads: [all-root]\n    targets: [pg]\n    effect: deny\n";
    let p = CompiledPolicy::from_sources_with(
        &[
            (PathBuf::from("a-monitor.yaml"), extra.to_string()),
            (PathBuf::from("b-enforce.yaml"), BASE.to_string()),
        ],
        &fake_dns,
    )
    .expect("valid");
    let s = Subject {
        uid: Some(0),
        exe: Some("/usr/bin/python3".into()),
        ..Default::default()
    };
    let d = evaluate(&p, &req(&s, 0));
    assert_eq!((d.outcome, d.rule.as_str()), (Outcome::Deny, "no-python"));
}

#[test]
fn host_names_resolve_at_load() {
    let text = BASE.replace("\"10.0.4.0/24\"", "\"db.internal\"");
    let p = compile(&text).expect("valid");
    assert_eq!(
        p.target_for(&v4([10, 9, 9, 9]), 5432).map(|t| t.id),
        Some(0)
    );
    assert_eq!(p.targets[0].hostnames[0].0, "db.internal");
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
fn request_condition_rules_do_not_decide_connections() {
    let text = format!(
        "{BASE}  - id: reads-only\n    workloads: [reporter]\n    targets: [pg]\n    effect: deny\n    when: {{ sql: {{ statements: [delete] }} }}\n"
    );
    let p = compile(&text).expect("valid");
    let s = Subject {
        unit: Some("reporting.service".into()),
        ..Default::default()
    };
    assert_eq!(evaluate(&p, &req(&s, 0)).rule, "reporter-pg");
}

#[test]
fn all_errors_are_reported_together() {
    let text = r#"
apiVersion: portcullis.dev/v1
workloads:
  - name: a
    match: {}
targets:
  - name: t
    addresses: ["10.0.0.1/24", "not an address"]
    ports: [0]
    protocol: tcp
rules:
  - id: r
    workloads: [missing]
    targets: [t]
    effect: allow
"#;
    let errs = compile(text).expect_err("invalid");
    assert_eq!(errs.0.len(), 5, "{errs}");
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

#[test]
fn policy_unit_tests_run() {
    let p = compile(BASE).expect("valid");
    let tests = r#"
apiVersion: portcullis.dev/v1
tests:
  - name: root may reach pg
    workload: { uid: 0 }
    target: pg
    expect: { effect: allow, rule: reporter-pg }
  - name: python is refused
    workload: { uid: 0, exe: /usr/bin/python3 }
    target: pg
    expect: { effect: deny, rule: no-python, outcome: deny }
  - name: a deliberately wrong expectation
    workload: { uid: 7 }
    target: pg
    expect: { effect: allow }
"#;
    let mut report = testing::TestReport::default();
    testing::run_text(&p, Path::new("p.test.yaml"), tests, &mut report);
    assert_eq!((report.passed(), report.failed()), (2, 1), "{report}");
    let text = report.to_string();
    assert!(
        text.contains("FAIL p.test.yaml:12 a deliberately wrong expectation"),
        "{text}"
    );
    assert!(text.contains("got effect deny"), "{text}");
}

#[test]
fn explain_names_the_winner() {
    let p = compile(BASE).expect("valid");
    let s = explain::subject_from_pairs("uid=0,exe=/usr/bin/python3").expect("pairs");
    let (text, d) = explain::explain(&p, &s, "pg", testing::DEFAULT_TEST_TIME).expect("explain");
    assert_eq!(d.rule, "no-python");
    assert!(text.contains("candidate: python matched"), "{text}");
    assert!(text.contains("decision: deny by rule no-python"), "{text}");
    assert!(explain::subject_from_pairs("pid=1").is_err());
}

/// Malformed policy sets: each must be refused with this exact first error
/// (file:line:column and message). The corpus is what a security team gets
/// wrong; every message must say what and where.
#[test]
fn malformed_corpus() {
    const H: &str = "apiVersion: portcullis.dev/v1\n";
    const W: &str = "workloads:\n  - name: w\n    match: { uid: 0 }\n";
    const T: &str = "targets:\n  - name: t\n    addresses: [\"10.0.0.1\"]\n    ports: [5432]\n    protocol: postgres\n";
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "wrong version",
            "apiVersion: portcullis.dev/v9\n".into(),
            "p.yaml:1:13: apiVersion `portcullis.dev/v9` is not supported",
        ),
        (
            "missing version",
            "workloads: []\n".into(),
            "p.yaml:1:1: missing field `apiVersion`",
        ),
        (
            "unknown top-level field",
            format!("{H}rulez: []\n"),
            "p.yaml:2:1: unknown field `rulez`",
        ),
        (
            "unknown selector field",
            format!("{H}workloads:\n  - name: w\n    match: {{ uidd: 0 }}\n"),
            "p.yaml:4:14: workloads[0].match: unknown field `uidd`, expected one of `unit`",
        ),
        (
            "uid not a number",
            format!("{H}workloads:\n  - name: w\n    match: {{ uid: root }}\n"),
            "p.yaml:4:19: workloads[0].match.uid: invalid type: string \"root\", expected u32",
        ),
        (
            "empty selector",
            format!("{H}workloads:\n  - name: w\n    match: {{}}\n"),
            "p.yaml:4:12: the selector is empty",
        ),
        (
            "empty any",
            format!("{H}workloads:\n  - name: w\n    match: {{ any: [] }}\n"),
            "p.yaml:4:19: `any` is an empty list",
        ),
        (
            "bad glob",
            format!("{H}workloads:\n  - name: w\n    match: {{ exe: \"/usr/bin/[\" }}\n"),
            "p.yaml:4:19: `/usr/bin/[` is not a valid glob",
        ),
        (
            "bad sha256",
            format!("{H}workloads:\n  - name: w\n    match: {{ exe_sha256: abc }}\n"),
            "p.yaml:4:26: `abc` is not a sha256",
        ),
        (
            "duplicate workload",
            format!("{H}{W}  - name: w\n    match: {{ uid: 1 }}\n"),
            "p.yaml:5:11: workload `w` is defined twice",
        ),
        (
            "bad workload name",
            format!("{H}workloads:\n  - name: \"a b\"\n    match: {{ uid: 0 }}\n"),
            "p.yaml:3:11: workload name `a b` is not valid",
        ),
        (
            "no addresses",
            format!("{H}targets:\n  - name: t\n    addresses: []\n    protocol: tcp\n"),
            "p.yaml:4:5: target `t` has no addresses",
        ),
        (
            "bad address",
            format!(
                "{H}targets:\n  - name: t\n    addresses: [\"10.0.0.300\"]\n    protocol: tcp\n"
            ),
            "p.yaml:4:17: `10.0.0.300` is not an IP address or CIDR",
        ),
        (
            "host bits set",
            format!(
                "{H}targets:\n  - name: t\n    addresses: [\"10.0.0.1/24\"]\n    protocol: tcp\n"
            ),
            "p.yaml:4:17: `10.0.0.1/24` has host bits set beyond /24; did you mean 10.0.0.0/24?",
        ),
        (
            "prefix too long",
            format!(
                "{H}targets:\n  - name: t\n    addresses: [\"10.0.0.0/40\"]\n    protocol: tcp\n"
            ),
            "p.yaml:4:17: `10.0.0.0/40`: prefix length 40 is longer than 32",
        ),
        (
            "unresolvable host",
            format!(
                "{H}targets:\n  - name: t\n    addresses: [nowhere.invalid]\n    protocol: tcp\n"
            ),
            "p.yaml:4:17: host name `nowhere.invalid` does not resolve",
        ),
        (
            "port zero",
            format!(
                "{H}targets:\n  - name: t\n    addresses: [\"10.0.0.1\"]\n    ports: [0]\n    protocol: tcp\n"
            ),
            "p.yaml:5:13: port 0 is not a port",
        ),
        (
            "port out of range",
            format!(
                "{H}targets:\n  - name: t\n    addresses: [\"10.0.0.1\"]\n    ports: [70000]\n    protocol: tcp\n"
            ),
            "p.yaml:5:13: targets[0].ports[0]: invalid value: integer `70000`, expected u16",
        ),
        (
            "duplicate port",
            format!(
                "{H}targets:\n  - name: t\n    addresses: [\"10.0.0.1\"]\n    ports: [22, 22]\n    protocol: tcp\n"
            ),
            "p.yaml:5:17: port 22 is listed twice",
        ),
        (
            "unknown protocol",
            format!("{H}targets:\n  - name: t\n    addresses: [\"10.0.0.1\"]\n    protocol: ftp\n"),
            "p.yaml:5:15: targets[0].protocol: unknown variant `ftp`, expected one of `tcp`, `postgres`",
        ),
        (
            "duplicate target",
            format!("{H}{T}  - name: t\n    addresses: [\"10.0.0.2\"]\n    protocol: tcp\n"),
            "p.yaml:7:11: target `t` is defined twice\n  hint: first defined at p.yaml:3:11",
        ),
        (
            "credentials on tcp",
            format!(
                "{H}targets:\n  - name: t\n    addresses: [\"10.0.0.1\"]\n    protocol: tcp\n    credentials: pg-main\n"
            ),
            "p.yaml:6:18: credentials need a protocol the agent speaks",
        ),
        (
            "server_name without verify-full",
            format!(
                "{H}targets:\n  - name: t\n    addresses: [\"10.0.0.1\"]\n    protocol: postgres\n    tls: {{ upstream: require, server_name: db }}\n"
            ),
            "p.yaml:6:44: `server_name` is only checked with `upstream: verify-full`",
        ),
        (
            "undefined workload",
            format!(
                "{H}{W}{T}rules:\n  - id: r\n    workloads: [wx]\n    targets: [t]\n    effect: allow\n"
            ),
            "p.yaml:12:17: rule `r` names workload `wx`, which is not defined",
        ),
        (
            "undefined target",
            format!(
                "{H}{W}{T}rules:\n  - id: r\n    workloads: [w]\n    targets: [tt]\n    effect: allow\n"
            ),
            "p.yaml:13:15: rule `r` names target `tt`, which is not defined",
        ),
        (
            "unknown effect",
            format!(
                "{H}{W}{T}rules:\n  - id: r\n    workloads: [w]\n    targets: [t]\n    effect: maybe\n"
            ),
            "p.yaml:14:13: rules[0].effect: unknown variant `maybe`, expected one of `allow`, `require_approval`, `deny`",
        ),
        (
            "no workloads",
            format!(
                "{H}{W}{T}rules:\n  - id: r\n    workloads: []\n    targets: [t]\n    effect: allow\n"
            ),
            "p.yaml:12:5: rule `r` names no workload",
        ),
        (
            "duplicate rule id",
            format!(
                "{H}{W}{T}rules:\n  - id: r\n    workloads: [w]\n    targets: [t]\n    effect: allow\n  - id: r\n    workloads: [w]\n    targets: [t]\n    effect: deny\n    when: {{ time: {{ days: [sun] }} }}\n"
            ),
            "p.yaml:15:9: rule id `r` is used twice\n  hint: first used at p.yaml:11:9",
        ),
        (
            "reserved rule id",
            format!(
                "{H}{W}{T}rules:\n  - id: default-deny\n    workloads: [w]\n    targets: [t]\n    effect: allow\n"
            ),
            "p.yaml:11:9: rule id `default-deny` is reserved",
        ),
        (
            "approval missing",
            format!(
                "{H}{W}{T}rules:\n  - id: r\n    workloads: [w]\n    targets: [t]\n    effect: require_approval\n"
            ),
            "p.yaml:14:13: rule `r` requires approval but has no `approval` block",
        ),
        (
            "approval on allow",
            format!(
                "{H}{W}{T}rules:\n  - id: r\n    workloads: [w]\n    targets: [t]\n    effect: allow\n    approval: {{ approvers: [dba], timeout: 5m }}\n"
            ),
            "p.yaml:15:5: rule `r` has an `approval` block but its effect is not `require_approval`",
        ),
        (
            "bad approval timeout",
            format!(
                "{H}{W}{T}rules:\n  - id: r\n    workloads: [w]\n    targets: [t]\n    effect: require_approval\n    approval: {{ approvers: [dba], timeout: 5 minutes }}\n"
            ),
            "p.yaml:15:44: `5 minutes`: unit must be s, m or h",
        ),
        (
            "approval without approvers",
            format!(
                "{H}{W}{T}rules:\n  - id: r\n    workloads: [w]\n    targets: [t]\n    effect: require_approval\n    approval: {{ approvers: [], timeout: 5m }}\n"
            ),
            "p.yaml:15:17: `approvers` is empty: nobody could approve",
        ),
        (
            "bad time of day",
            format!(
                "{H}{W}{T}rules:\n  - id: r\n    workloads: [w]\n    targets: [t]\n    effect: allow\n    when: {{ time: {{ from: \"8am\", to: \"18:00\" }} }}\n"
            ),
            "p.yaml:15:27: `8am` is not a time of day (HH:MM)",
        ),
        (
            "half a time window",
            format!(
                "{H}{W}{T}rules:\n  - id: r\n    workloads: [w]\n    targets: [t]\n    effect: allow\n    when: {{ time: {{ from: \"08:00\" }} }}\n"
            ),
            "p.yaml:15:13: give both `from` and `to`, or neither",
        ),
        (
            "unknown weekday",
            format!(
                "{H}{W}{T}rules:\n  - id: r\n    workloads: [w]\n    targets: [t]\n    effect: allow\n    when: {{ time: {{ days: [funday] }} }}\n"
            ),
            "p.yaml:15:28: rules[0].when.time.days[0]: unknown variant `funday`",
        ),
        (
            "sql on a tcp target",
            format!(
                "{H}{W}targets:\n  - name: t\n    addresses: [\"10.0.0.1\"]\n    protocol: tcp\nrules:\n  - id: r\n    workloads: [w]\n    targets: [t]\n    effect: deny\n    when: {{ sql: {{ statements: [delete] }} }}\n"
            ),
            "p.yaml:14:13: `sql` conditions do not apply to target `t` (protocol tcp)",
        ),
        (
            "empty sql condition",
            format!(
                "{H}{W}{T}rules:\n  - id: r\n    workloads: [w]\n    targets: [t]\n    effect: deny\n    when: {{ sql: {{}} }}\n"
            ),
            "p.yaml:15:13: `sql` has no conditions: it would match every request",
        ),
        (
            "unknown statement kind",
            format!(
                "{H}{W}{T}rules:\n  - id: r\n    workloads: [w]\n    targets: [t]\n    effect: deny\n    when: {{ sql: {{ statements: [destroy] }} }}\n"
            ),
            "p.yaml:15:33: rules[0].when.sql.statements[0]: unknown variant `destroy`",
        ),
        (
            "lower-case http method",
            format!(
                "{H}{W}targets:\n  - name: t\n    addresses: [\"10.0.0.1\"]\n    protocol: http\nrules:\n  - id: r\n    workloads: [w]\n    targets: [t]\n    effect: deny\n    when: {{ http: {{ methods: [get] }} }}\n"
            ),
            "p.yaml:14:31: `get` is not an HTTP method\n  hint: methods are upper case",
        ),
        (
            "shadowed allow",
            format!(
                "{H}{W}{T}rules:\n  - id: deny-all\n    workloads: [w]\n    targets: [t]\n    effect: deny\n  - id: allow-w\n    workloads: [w]\n    targets: [t]\n    effect: allow\n"
            ),
            "p.yaml:15:9: rule `allow-w` can never decide anything: rule `deny-all` (deny) beats `allow` on every connection `allow-w` matches\n  hint: rule `deny-all` is at p.yaml:11:9",
        ),
        (
            "mask on tcp",
            format!(
                "{H}{W}targets:\n  - name: t\n    addresses: [\"10.0.0.1\"]\n    protocol: tcp\nmasks:\n  - id: m\n    targets: [t]\n    detectors: [pan]\n"
            ),
            "p.yaml:11:15: mask `m` applies to target `t` of protocol tcp",
        ),
        (
            "mask of nothing",
            format!("{H}{T}masks:\n  - id: m\n    targets: [t]\n"),
            "p.yaml:8:9: mask `m` masks nothing",
        ),
        (
            "bad mask column",
            format!("{H}{T}masks:\n  - id: m\n    targets: [t]\n    columns: [ssn]\n"),
            "p.yaml:10:15: column `ssn` is not schema.table.column",
        ),
        (
            "unterminated quote",
            "apiVersion: \"portcullis.dev/v1\nrules: []\n".into(),
            "p.yaml:3:1: found unexpected end of stream at line 3 column 1, while scanning a quoted scalar at line 1 column 13",
        ),
        (
            "tab indentation",
            format!("{H}workloads:\n\t- name: w\n"),
            "p.yaml:3:1: found character that cannot start any token",
        ),
    ];
    assert!(cases.len() >= 30);
    let mut failures = Vec::new();
    for (name, text, want) in &cases {
        match compile(text) {
            Ok(_) => failures.push(format!("{name}: accepted, expected `{want}`")),
            Err(errs) => {
                let first = errs.0.first().map(|e| e.to_string()).unwrap_or_default();
                if !first.starts_with(want) {
                    failures.push(format!("{name}:\n    want {want}\n    got  {first}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn duplicate_across_files_points_to_both() {
    let a = "apiVersion: portcullis.dev/v1\nworkloads:\n  - name: w\n    match: { uid: 0 }\n";
    let errs = CompiledPolicy::from_sources_with(
        &[
            (PathBuf::from("a.yaml"), a.to_string()),
            (PathBuf::from("b.yaml"), a.to_string()),
        ],
        &fake_dns,
    )
    .expect_err("duplicate");
    let msg = errs.to_string();
    assert!(
        msg.starts_with("b.yaml:3:11: workload `w` is defined twice"),
        "{msg}"
    );
    assert!(msg.contains("first defined at a.yaml:3:11"), "{msg}");
}

#[test]
fn misspelt_names_get_a_suggestion() {
    let text = "apiVersion: portcullis.dev/v1\nworkloads:\n  - name: billing\n    match: { uid: 0 }\ntargets:\n  - name: t\n    addresses: [\"10.0.0.1\"]\n    protocol: tcp\nrules:\n  - id: r\n    workloads: [biling]\n    targets: [t]\n    effect: allow\n";
    let msg = compile(text).expect_err("typo").to_string();
    assert!(msg.contains("hint: did you mean `billing`?"), "{msg}");
}

/// Every ```yaml block in the policy docs is a complete policy file that compiles,
/// so the examples readers copy are never stale; every ```yaml policy-test block
/// is a policy test file whose tests pass against the policy block before it, so
/// the decisions the docs state are the decisions the agent makes.
#[test]
fn documentation_examples_compile() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    let mut checked = 0;
    let mut tests_run = 0;
    for name in ["policy-reference.md", "policy-rollout.md"] {
        let path = docs.join(name);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // (is a policy-test block, text, first line)
        let mut open: Option<bool> = None;
        let mut block = String::new();
        let mut start = 0;
        let mut last_policy: Option<CompiledPolicy> = None;
        for (i, line) in text.lines().enumerate() {
            let fence = line.trim_start();
            if open.is_none() && (fence == "```yaml" || fence == "```yaml policy-test") {
                open = Some(fence == "```yaml policy-test");
                block.clear();
                start = i + 2;
            } else if open.is_some() && fence == "```" {
                let file = PathBuf::from(format!("{name}:{start}"));
                if open == Some(true) {
                    let p = last_policy.as_ref().unwrap_or_else(|| {
                        panic!("{name}:{start}: a policy-test block with no policy block before it")
                    });
                    let mut report = testing::TestReport::default();
                    testing::run_text(p, &file, &block, &mut report);
                    assert!(
                        report.ok() && report.passed() > 0,
                        "{name}: the policy tests starting at line {start} fail:\n{report}"
                    );
                    tests_run += report.passed();
                } else {
                    match CompiledPolicy::from_sources_with(&[(file, block.clone())], &fake_dns) {
                        Ok(p) => last_policy = Some(p),
                        Err(e) => panic!(
                            "{name}: the yaml example starting at line {start} does not compile:\n{e}"
                        ),
                    }
                    checked += 1;
                }
                open = None;
            } else if open.is_some() {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    assert!(
        checked >= 5,
        "expected the policy docs to carry examples, found {checked}"
    );
    assert!(
        tests_run >= 8,
        "expected the policy docs to carry policy tests, ran {tests_run}"
    );
}

#[test]
fn a_window_spanning_midnight_belongs_to_the_day_it_starts() {
    let text = "apiVersion: portcullis.dev/v1\nworkloads:\n  - name: w\n    match: { uid: 0 }\ntargets:\n  - name: t\n    addresses: [\"10.0.0.1\"]\n    protocol: tcp\nrules:\n  - id: monday-night\n    workloads: [w]\n    targets: [t]\n    effect: allow\n    when: { time: { days: [mon], from: \"22:00\", to: \"02:00\" } }\n";
    let p = compile(text).expect("valid");
    let s = Subject {
        uid: Some(0),
        ..Default::default()
    };
    let at = |t: &str| {
        let mut r = req(&s, 0);
        r.now_unix = testing::parse_utc(t).expect("time");
        evaluate(&p, &r).rule
    };
    assert_eq!(at("2026-01-05T23:00:00Z"), "monday-night"); // Monday evening
    assert_eq!(at("2026-01-06T01:00:00Z"), "monday-night"); // Tuesday morning: Monday's window
    assert_eq!(at("2026-01-05T01:00:00Z"), DEFAULT_DENY); // Monday morning: Sunday's window
}

#[test]
fn a_monitor_mode_rule_never_weakens_an_enforced_hold() {
    let enforce = "apiVersion: portcullis.dev/v1\nworkloads:\n  - name: w\n    match: { uid: 0 }\ntargets:\n  - name: t\n    addresses: [\"10.0.0.1\"]\n    protocol: tcp\nrules:\n  - id: hold\n    workloads: [w]\n    targets: [t]\n    effect: require_approval\n    approval: { approvers: [sec], timeout: 1m }\n";
    let monitor = "apiVersion: portcullis.dev/v1\nmode: monitor\nrules:\n  - id: observe-deny\n    workloads: [w]\n    targets: [t]\n    effect: deny\n";
    let p = CompiledPolicy::from_sources_with(
        &[
            (PathBuf::from("a.yaml"), monitor.to_string()),
            (PathBuf::from("b.yaml"), enforce.to_string()),
        ],
        &fake_dns,
    )
    .expect("valid");
    let s = Subject {
        uid: Some(0),
        ..Default::default()
    };
    let d = evaluate(&p, &req(&s, 0));
    assert_eq!((d.outcome, d.rule.as_str()), (Outcome::Hold, "hold"));
}

#[test]
fn more_corpus_cases() {
    let cases = [
        (
            "apiVersion: portcullis.dev/v1\ntargets:\n  - name: a\n    addresses: [\"10.0.0.1\"]\n    ports: [5432]\n    protocol: tcp\n  - name: b\n    addresses: [\"10.0.0.1\"]\n    protocol: tcp\n",
            "p.yaml:8:16: target `b` and target `a` both protect 10.0.0.1/32 on the same port",
        ),
        (
            "apiVersion: portcullis.dev/v1\nworkloads:\n  - name: w\n    match: { uid: 0 }\ntargets:\n  - name: t\n    addresses: [\"10.0.0.1\"]\n    protocol: tcp\nrules:\n  - id: r\n    workloads: [w]\n    targets: [t]\n    effect: require_approval\n    approval: { approvers: [x], timeout: 9999999999999999h }\n",
            "p.yaml:14:42: `9999999999999999h` is too long",
        ),
        (
            "apiVersion: portcullis.dev/v1\ntargets:\n  - name: t\n    addresses: [\"10.0.0.1\"]\n    protocol: tcp\n    defaults: { unparseable: allow }\n",
            "p.yaml:6:5: `defaults` apply to requests the agent parses",
        ),
        (
            "apiVersion: portcullis.dev/v1\ntargets:\n  - name: t\n    addresses: [\"10.0.0.1\"]\n    protocol: postgres\nmasks:\n  - id: m\n    workloads: []\n    targets: [t]\n    detectors: [pan]\n",
            "p.yaml:8:5: mask `m` lists no workload, so it masks for nobody",
        ),
    ];
    for (text, want) in cases {
        let got = compile(text).expect_err(want).to_string();
        assert!(got.starts_with(want), "want {want}\ngot  {got}");
    }
}

/// The published schema is the one the code generates.
#[test]
fn published_schema_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/policy-schema.json");
    let published = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        published == spec::json_schema(),
        "{} is stale: regenerate it with `portcullis policy schema > docs/policy-schema.json`",
        path.display()
    );
    let v: serde_json::Value = serde_json::from_str(&published).expect("schema is JSON");
    assert!(v["properties"]["rules"].is_object(), "rules are described");
}

// ---- statements (`when.sql`) -----------------------------------------------------------

const SQL_POLICY: &str = r#"
apiVersion: portcullis.dev/v1
workloads:
  - name: app
    match: { uid: 1000 }
  - name: ops
    match: { uid: 0 }
targets:
  - name: pg
    addresses: ["127.0.0.1"]
    ports: [5432]
    protocol: postgres
  - name: lenient
    addresses: ["127.0.0.2"]
    ports: [5432]
    protocol: postgres
    defaults: { unparseable: allow }
rules:
  - id: app-connects
    workloads: [app]
    targets: [pg, lenient]
    effect: allow
  - id: no-accounts-writes
    workloads: [app]
    targets: [pg]
    effect: deny
    when: { sql: { tables_written: ["public.accounts"] } }
  - id: no-where-less
    workloads: [app]
    targets: [pg]
    effect: deny
    when: { sql: { statements: [update, delete], where_less: true } }
  - id: ddl-needs-approval
    workloads: [app]
    targets: [pg]
    effect: require_approval
    approval: { approvers: [dba], timeout: 5m }
    when: { sql: { statements: [create, alter, drop] } }
  - id: no-file-reads
    workloads: [app]
    targets: [pg]
    effect: deny
    when: { sql: { functions: ["pg_read_*"] } }
  - id: no-ssn
    workloads: [app]
    targets: [pg]
    effect: deny
    when: { sql: { columns: ["*.people.ssn"] } }
  - id: reads-of-secrets-need-both
    workloads: [app]
    targets: [pg]
    effect: deny
    when: { sql: { statements: [select], tables_read: ["secret.*"] } }
  - id: ops-selects-only
    workloads: [ops]
    targets: [pg]
    effect: allow
    when: { sql: { statements: [select] } }
"#;

fn facts(kinds: &[spec::StatementKind]) -> StatementFacts {
    StatementFacts {
        kinds: kinds.to_vec(),
        privileges: kinds
            .iter()
            .map(|k| grants::Privilege::statement(*k))
            .collect(),
        ..Default::default()
    }
}

fn decide(p: &CompiledPolicy, uid: u32, target: u32, action: Action<'_>) -> Decision {
    let s = Subject {
        uid: Some(uid),
        ..Default::default()
    };
    evaluate(
        p,
        &Request {
            subject: &s,
            target,
            action,
            now_unix: testing::DEFAULT_TEST_TIME,
        },
    )
}

#[test]
fn connection_level_allow_applies_to_every_statement() {
    use spec::StatementKind as K;
    let p = compile(SQL_POLICY).expect("valid");
    let f = StatementFacts {
        tables_read: vec!["public.orders".into()],
        ..facts(&[K::Select])
    };
    let d = decide(&p, 1000, 0, Action::Statement(&f));
    assert_eq!(
        (d.outcome, d.rule.as_str()),
        (Outcome::Allow, "app-connects")
    );
}

#[test]
fn each_sql_condition_field() {
    use spec::StatementKind as K;
    let p = compile(SQL_POLICY).expect("valid");
    let cases: Vec<(StatementFacts, &str)> = vec![
        (
            StatementFacts {
                tables_written: vec!["public.accounts".into()],
                ..facts(&[K::Update])
            },
            "no-accounts-writes",
        ),
        // Read, not written: the tables_written condition does not hold.
        (
            StatementFacts {
                tables_read: vec!["public.accounts".into()],
                ..facts(&[K::Select])
            },
            "app-connects",
        ),
        (
            StatementFacts {
                where_less: true,
                tables_written: vec!["public.orders".into()],
                ..facts(&[K::Delete])
            },
            "no-where-less",
        ),
        // where_less must equal: a DELETE with a WHERE passes.
        (
            StatementFacts {
                tables_written: vec!["public.orders".into()],
                ..facts(&[K::Delete])
            },
            "app-connects",
        ),
        // where_less on a statement of another kind: `statements` does not hold.
        (
            StatementFacts {
                where_less: true,
                ..facts(&[K::Insert])
            },
            "app-connects",
        ),
        (
            StatementFacts {
                functions: vec!["pg_read_file".into()],
                ..facts(&[K::Select])
            },
            "no-file-reads",
        ),
        (
            StatementFacts {
                columns: vec!["public.people.ssn".into(), "people.ssn".into()],
                ..facts(&[K::Select])
            },
            "no-ssn",
        ),
        // All fields of a condition must hold: secret.* read by a SELECT...
        (
            StatementFacts {
                tables_read: vec!["secret.keys".into()],
                ..facts(&[K::Select])
            },
            "reads-of-secrets-need-both",
        ),
        // ...but not by a COPY (statements does not hold).
        (
            StatementFacts {
                tables_read: vec!["secret.keys".into()],
                ..facts(&[K::Copy])
            },
            "app-connects",
        ),
        // Any of the kinds: EXPLAIN ANALYZE DELETE is [explain, delete].
        (
            StatementFacts {
                where_less: true,
                ..facts(&[K::Explain, K::Delete])
            },
            "no-where-less",
        ),
    ];
    for (f, want) in cases {
        let d = decide(&p, 1000, 0, Action::Statement(&f));
        assert_eq!(d.rule, want, "{f:?}");
    }
}

#[test]
fn statement_precedence_deny_over_approval_over_allow() {
    use spec::StatementKind as K;
    let p = compile(SQL_POLICY).expect("valid");
    let ddl = StatementFacts {
        tables_written: vec!["public.orders".into()],
        ..facts(&[K::Alter])
    };
    let d = decide(&p, 1000, 0, Action::Statement(&ddl));
    assert_eq!(
        (d.outcome, d.rule.as_str()),
        (Outcome::Hold, "ddl-needs-approval")
    );
    let ddl_accounts = StatementFacts {
        tables_written: vec!["public.accounts".into()],
        ..facts(&[K::Drop])
    };
    let d = decide(&p, 1000, 0, Action::Statement(&ddl_accounts));
    assert_eq!(
        (d.outcome, d.rule.as_str()),
        (Outcome::Deny, "no-accounts-writes")
    );
}

#[test]
fn conditional_allow_decides_only_matching_statements() {
    use spec::StatementKind as K;
    let p = compile(SQL_POLICY).expect("valid");
    // ops may connect (a conditional allow lets the workload connect)...
    let d = decide(&p, 0, 0, Action::Connect);
    assert_eq!(d.rule, "ops-selects-only");
    // ...and its SELECTs are allowed, anything else falls to the default.
    let d = decide(&p, 0, 0, Action::Statement(&facts(&[K::Select])));
    assert_eq!(
        (d.outcome, d.rule.as_str()),
        (Outcome::Allow, "ops-selects-only")
    );
    let d = decide(&p, 0, 0, Action::Statement(&facts(&[K::Insert])));
    assert_eq!((d.outcome, d.rule.as_str()), (Outcome::Deny, DEFAULT_DENY));
}

#[test]
fn unparseable_follows_the_target_default() {
    let p = compile(SQL_POLICY).expect("valid");
    // pg: defaults.unparseable is deny (the default).
    let d = decide(&p, 1000, 0, Action::Unparseable);
    assert_eq!((d.outcome, d.rule.as_str()), (Outcome::Deny, UNPARSEABLE));
    // lenient: allow → decided as a statement matching no condition.
    let d = decide(&p, 1000, 1, Action::Unparseable);
    assert_eq!(
        (d.outcome, d.rule.as_str()),
        (Outcome::Allow, "app-connects")
    );
    // ops has only a conditional allow, which an unparseable request never matches.
    let d = decide(&p, 0, 0, Action::Unparseable);
    assert_eq!(d.rule, UNPARSEABLE);
}

#[test]
fn monitor_mode_sql_rules_annotate_only() {
    use spec::StatementKind as K;
    let text = SQL_POLICY.to_string();
    let monitor = r#"
apiVersion: portcullis.dev/v1
mode: monitor
rules:
  - id: watch-truncate
    workloads: [app]
    targets: [pg]
    effect: deny
    when: { sql: { statements: [truncate] } }
"#;
    let p = CompiledPolicy::from_sources_with(
        &[
            (PathBuf::from("a.yaml"), text),
            (PathBuf::from("b.yaml"), monitor.to_string()),
        ],
        &fake_dns,
    )
    .expect("valid");
    let f = StatementFacts {
        tables_written: vec!["public.orders".into()],
        ..facts(&[K::Truncate])
    };
    let d = decide(&p, 1000, 0, Action::Statement(&f));
    assert_eq!(
        (d.outcome, d.rule.as_str(), d.label()),
        (Outcome::Allow, "watch-truncate", "would_deny")
    );
}

#[test]
fn sql_policy_tests_and_explain() {
    let p = compile(SQL_POLICY).expect("valid");
    let tests = r#"
apiVersion: portcullis.dev/v1
tests:
  - name: a where-less delete in a CTE is refused
    workload: { uid: 1000 }
    target: pg
    sql: "WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d"
    expect: { effect: deny, rule: no-where-less }
  - name: unqualified accounts is public.accounts
    workload: { uid: 1000 }
    target: pg
    sql: "SELECT 1; UPDATE accounts SET x = 1 WHERE id = 2"
    expect: { effect: deny, rule: no-accounts-writes }
  - name: reads pass
    workload: { uid: 1000 }
    target: pg
    sql: "SELECT * FROM orders"
    expect: { effect: allow, rule: app-connects }
  - name: unparseable
    workload: { uid: 1000 }
    target: pg
    sql: "SELEKT"
    expect: { effect: deny, rule: unparseable }
"#;
    let mut report = testing::TestReport::default();
    testing::run_text(&p, Path::new("t.test.yaml"), tests, &mut report);
    assert!(report.ok(), "{report}");
    assert_eq!(report.passed(), 4);
    let s = Subject {
        uid: Some(1000),
        ..Default::default()
    };
    let (text, d) = explain::explain_sql(
        &p,
        &s,
        "pg",
        testing::DEFAULT_TEST_TIME,
        "SELECT pg_read_file('/etc/passwd')",
        "app",
    )
    .unwrap();
    assert_eq!(d.rule, "no-file-reads");
    assert!(text.contains("functions ✓"), "{text}");
    assert!(text.contains("dangerous: pg_read_file"), "{text}");
}

const GRANTS_POLICY: &str = r#"
apiVersion: portcullis.dev/v1
workloads:
  - name: app
    match: { uid: 1000 }
targets:
  - name: pg
    addresses: ["192.0.2.10"]
    ports: [5432]
    protocol: postgres
rules:
  - id: app-reads-orders
    workloads: [app]
    targets: [pg]
    effect: allow
    when: { sql: { statements: [select], tables_read: ["public.orders"] } }
  - id: app-session
    workloads: [app]
    targets: [pg]
    effect: allow
    when: { sql: { statements: [begin, commit] } }
  - id: app-copies
    workloads: [app]
    targets: [pg]
    effect: allow
    when: { sql: { statements: [copy], tables_read: ["public.*"] } }
  - id: app-writes-items
    workloads: [app]
    targets: [pg]
    effect: allow
    when: { sql: { statements: [update, delete], tables_written: ["public.items"] } }
  - id: app-calls
    workloads: [app]
    targets: [pg]
    effect: allow
    when: { sql: { functions: ["public.audit_*"] } }
"#;

fn privileges(ps: &[(spec::StatementKind, Option<&str>)]) -> Vec<grants::Privilege> {
    ps.iter()
        .map(|(k, n)| match n {
            None => grants::Privilege::statement(*k),
            Some(n) => grants::Privilege::table(*k, n.to_string()),
        })
        .collect()
}

#[test]
fn an_allow_rule_grants_each_privilege_it_names() {
    use spec::StatementKind as K;
    let p = compile(GRANTS_POLICY).expect("valid");
    let with = |ps: &[(K, Option<&str>)]| StatementFacts {
        kinds: vec![ps[0].0],
        privileges: privileges(ps),
        ..Default::default()
    };
    // Every privilege granted, by one rule or several.
    let d = decide(
        &p,
        1000,
        0,
        Action::Statement(&with(&[(K::Select, Some("public.orders"))])),
    );
    assert_eq!(
        (d.outcome, d.rule.as_str()),
        (Outcome::Allow, "app-reads-orders")
    );
    let f = with(&[
        (K::Delete, Some("public.items")),
        (K::Select, Some("public.orders")),
    ]);
    let d = decide(&p, 1000, 0, Action::Statement(&f));
    assert_eq!(
        (d.outcome, d.rule.as_str()),
        (Outcome::Allow, "app-writes-items")
    );
    assert_eq!(d.grants.len(), 2, "{d:?}");
    // One privilege missing: refused by the default, saying which.
    let f = with(&[
        (K::Select, Some("public.orders")),
        (K::Select, Some("public.customers")),
    ]);
    let d = decide(&p, 1000, 0, Action::Statement(&f));
    assert_eq!((d.outcome, d.rule.as_str()), (Outcome::Deny, DEFAULT_DENY));
    assert_eq!(
        d.reason.as_deref(),
        Some("select on public.customers is granted by no rule")
    );
    // The action must be listed: update on orders is not granted by the select rule.
    let f = with(&[(K::Update, Some("public.orders"))]);
    assert_eq!(
        decide(&p, 1000, 0, Action::Statement(&f)).rule,
        DEFAULT_DENY
    );
    // tables_written does not grant select: an UPDATE ... WHERE reads its table.
    let f = with(&[
        (K::Update, Some("public.items")),
        (K::Select, Some("public.items")),
    ]);
    let d = decide(&p, 1000, 0, Action::Statement(&f));
    assert_eq!(
        d.reason.as_deref(),
        Some("select on public.items is granted by no rule")
    );
    // A kind touching nothing needs only the kind: SELECT 1, BEGIN.
    for k in [K::Select, K::Begin] {
        let d = decide(&p, 1000, 0, Action::Statement(&with(&[(k, None)])));
        assert_eq!(d.outcome, Outcome::Allow, "{k:?}: {d:?}");
    }
    // `statements: [copy]` grants the copy statement, not reading the tables.
    let f = with(&[(K::Copy, None), (K::Select, Some("public.items"))]);
    let d = decide(&p, 1000, 0, Action::Statement(&f));
    assert_eq!(
        d.reason.as_deref(),
        Some("select on public.items is granted by no rule")
    );
    // `functions` grants execution only, by qualified glob.
    let call = |n: &str| StatementFacts {
        kinds: vec![K::Select],
        privileges: vec![
            grants::Privilege::statement(K::Select),
            grants::Privilege::function(n.into()),
        ],
        ..Default::default()
    };
    let d = decide(&p, 1000, 0, Action::Statement(&call("public.audit_log")));
    assert_eq!(d.outcome, Outcome::Allow, "{d:?}");
    let d = decide(&p, 1000, 0, Action::Statement(&call("other.audit_log")));
    assert_eq!(
        d.reason.as_deref(),
        Some("execute other.audit_log is granted by no rule")
    );
    // An unnamed object needs a rule that lists no object.
    let f = StatementFacts {
        kinds: vec![K::Drop],
        privileges: vec![grants::Privilege::unnamed(K::Drop, "role bob")],
        ..Default::default()
    };
    assert_eq!(
        decide(&p, 1000, 0, Action::Statement(&f)).rule,
        DEFAULT_DENY
    );
    // An empty privilege list (a message with no statement) is granted by
    // connection-level rules only, never vacuously.
    let d = decide(&p, 1000, 0, Action::Statement(&StatementFacts::default()));
    assert_eq!(d.rule, DEFAULT_DENY);
}

#[test]
fn monitor_mode_grants_are_reported_not_enforced() {
    use spec::StatementKind as K;
    let base = r#"
apiVersion: portcullis.dev/v1
mode: MODE
workloads:
  - name: app
    match: { uid: 1000 }
targets:
  - name: pg
    addresses: ["192.0.2.10"]
    ports: [5432]
    protocol: postgres
"#;
    let monitor_rules = r#"
apiVersion: portcullis.dev/v1
mode: monitor
rules:
  - id: watch-reads
    workloads: [app]
    targets: [pg]
    effect: allow
    when: { sql: { statements: [select] } }
"#;
    let f = StatementFacts {
        kinds: vec![K::Select],
        privileges: privileges(&[(K::Select, Some("public.orders"))]),
        ..Default::default()
    };
    for (mode, outcome, rule) in [
        ("enforce", Outcome::Deny, DEFAULT_DENY),
        ("monitor", Outcome::Allow, "watch-reads"),
    ] {
        let p = CompiledPolicy::from_sources_with(
            &[
                (PathBuf::from("a.yaml"), base.replace("MODE", mode)),
                (PathBuf::from("b.yaml"), monitor_rules.to_string()),
            ],
            &fake_dns,
        )
        .expect("valid");
        let d = decide(&p, 1000, 0, Action::Statement(&f));
        assert_eq!(
            (d.outcome, d.rule.as_str()),
            (outcome, rule),
            "{mode}: {d:?}"
        );
        if mode == "enforce" {
            assert_eq!(
                d.reason.as_deref(),
                Some("select on public.orders is granted only by monitor-mode rules")
            );
        }
    }
}

#[test]
fn policy_check_warns_where_grants_change_an_allow_rule() {
    let p = compile(GRANTS_POLICY).expect("valid");
    let w = grants::migration_warnings(&p);
    let of = |id: &str| {
        w.iter()
            .find(|x| x.contains(&format!("rule `{id}`")))
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        of("app-reads-orders").contains("every other table it reads or writes"),
        "{w:#?}"
    );
    assert!(of("app-reads-orders").contains("kinds [select]"), "{w:#?}");
    // Session statements only: their meaning did not change.
    assert_eq!(of("app-session"), "", "{w:#?}");
    assert!(
        of("app-copies").contains("its table lists grant nothing"),
        "{w:#?}"
    );
    assert!(
        of("app-writes-items").contains("select on it must be granted too"),
        "{w:#?}"
    );
    assert!(
        of("app-calls").contains("execution of those functions only"),
        "{w:#?}"
    );
    // Connection-level rules and deny rules: no warning.
    let p = compile(SQL_POLICY).expect("valid");
    let w = grants::migration_warnings(&p);
    assert!(
        w.iter().all(|x| x.contains("rule `ops-selects-only`")),
        "{w:#?}"
    );
}

#[test]
fn an_allow_rule_that_grants_nothing_is_refused() {
    let text = r#"
apiVersion: portcullis.dev/v1
workloads:
  - name: app
    match: { uid: 1000 }
targets:
  - name: pg
    addresses: ["192.0.2.10"]
    ports: [5432]
    protocol: postgres
rules:
  - id: app-where-clauses
    workloads: [app]
    targets: [pg]
    effect: allow
    when: { sql: { columns: ["public.orders.id"], where_less: false } }
"#;
    let e = compile(text)
        .expect_err("an allow that grants nothing")
        .to_string();
    assert!(
        e.contains("allow rule `app-where-clauses` grants nothing: its `sql` names no statement, table or function"),
        "{e}"
    );
    // As a deny condition it is meaningful.
    assert!(compile(&text.replace("effect: allow", "effect: deny")).is_ok());
}

#[test]
fn policy_check_warns_where_a_relayed_login_cannot_use_channel_binding() {
    let target = |name: &str, extra: &str| {
        format!(
            "  - name: {name}\n    addresses: [\"10.0.0.{}\"]\n    protocol: postgres\n{extra}",
            name.len()
        )
    };
    let text = format!(
        "apiVersion: portcullis.dev/v1\ntargets:\n{}{}{}{}{}",
        target(
            "relayed",
            "    tls: { upstream: verify-full, ca_file: /ca.pem }\n"
        ),
        target(
            "held",
            "    credentials: pg-main\n    tls: { upstream: require }\n"
        ),
        target(
            "plainclient",
            "    tls: { client: refuse, upstream: require }\n"
        ),
        target("plainupstream", "    tls: { client: require }\n"),
        target("both-tls-but-tcp", "")
    );
    let p = compile(&text).expect("valid");
    let w = lint::channel_binding_warnings(&p);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].starts_with("target relayed:"), "{w:?}");
    assert!(w[0].contains("channel_binding=disable"), "{w:?}");
}
