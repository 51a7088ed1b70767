//! Driver conformance: unchanged drivers behave through Portcullis exactly as they
//! do on a direct connection. Each test runs one driver's scenario
//! (tests/drivers/) twice against the same real PostgreSQL (started with TLS):
//! direct, from outside the test cgroup, and through the redirect, from a unit of
//! the cgroup the agent is attached to, with a policy that allows the workload
//! everything on the target (an unconditional allow rule grants every privilege,
//! the dangerous functions large objects use included; unparseable text stays
//! refused, as by default). Both results are printed side by side, step by step,
//! and any difference or failed step fails the test.
//!
//! `cargo xtask test` runs these as the `drivers` tier; the privileged e2e tier
//! skips them (their names start with `driver_conformance_`).
//! `PORTCULLIS_DRIVERS_UNPARSEABLE=allow` sets `defaults.unparseable: allow` on the
//! target, to tell the parser's gaps from other differences.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_tests::pg::{self, PgOpts, PgServer, venv_python};
use portcullis_tests::{
    Agent, AgentOpts, TempDir, TestCgroup, ci, in_cgroup, privileged, repo_root,
};
use serde_json::Value;

const RULE: &str = "drivers-may-do-anything";
const PGJDBC_JAR: &str = "/usr/share/java/postgresql.jar";
/// Differences that follow from a documented decision of the agent, not from a
/// defect: (driver or `*`, step, why, what the step's error through the agent
/// must contain, if it is pinned). They are printed as known and do not fail
/// the test; an entry that no run matches any more is printed so it can go.
/// Everything else that differs fails, including what is being fixed.
const KNOWN: &[(&str, &str, &str, Option<&str>)] = &[
    (
        "*",
        "syntax_error",
        "text the parser rejects is refused by the agent (42501, rule `unparseable`, \
         `defaults.unparseable: deny`) before the server could call it a syntax error (42601)",
        None,
    ),
    (
        "pgjdbc",
        "large_objects_api",
        "LargeObjectManager sends FunctionCall messages, which name the function by OID only \
         and are refused as uncheckable unless `defaults.unparseable: allow`",
        None,
    ),
    (
        "psycopg",
        "tls",
        "libpq offers SCRAM channel binding over TLS (channel_binding=prefer); a relayed login \
         to a TLS server cannot carry it through the agent's TLS, so the agent refuses the \
         login and says what fixes it (docs/policy-reference.md, TLS)",
        Some(
            "FATAL:  Portcullis: target app-db relays the client's own SCRAM login to a TLS \
             server, and SCRAM channel binding cannot pass through the agent's TLS; the client \
             asked for it (gs2 flag `y`), which the server would refuse. Fix one of: connect \
             with channel_binding=disable, give target app-db agent-held `credentials`, or set \
             `tls.client: refuse` or `tls.upstream: disable` for it",
        ),
    ),
];

/// Tests of asyncpg's own suite whose result through the agent differs for a
/// reason that is understood, with that reason.
const KNOWN_SUITE: &[(&str, &str)] = &[(
    "tests.test_execute.TestExecuteMany.test_executemany_server_failure_during_writes",
    "through the agent the server's error reaches the client only after it wrote all 128 \
     pipelined messages (direct, it sees the error while writing and stops early); the \
     relay's buffering between client reads and upstream writes is the suspected cause",
)];

fn known(driver: &str, step: &str) -> Option<(&'static str, Option<&'static str>)> {
    KNOWN
        .iter()
        .find(|(d, s, _, _)| (*d == "*" || *d == driver) && *s == step)
        .map(|(_, _, why, error)| (*why, *error))
}

/// A scenario still running after this long is killed (a hang is a failure);
/// this bounds the test, it asserts nothing about speed.
const HANG_LIMIT: Duration = Duration::from_secs(180);

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

fn scenario(file: &str) -> String {
    repo_root()
        .join("tests")
        .join("drivers")
        .join(file)
        .to_string_lossy()
        .into_owned()
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).exists()))
}

/// How to run one driver's scenario, or why it cannot run here.
struct Driver {
    name: &'static str,
    argv: Vec<String>,
    env: Vec<(String, String)>,
}

fn python_driver(name: &'static str, module: &str, file: &str) -> Result<Driver, String> {
    let py = venv_python();
    let ok = Command::new(&py)
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return Err(format!(
            "{module} is not importable from {}: run `cargo xtask setup`",
            py.display()
        ));
    }
    Ok(Driver {
        name,
        argv: vec![py.to_string_lossy().into_owned(), scenario(file)],
        env: Vec::new(),
    })
}

fn driver(name: &str) -> Result<Driver, String> {
    match name {
        "psycopg" => python_driver("psycopg", "psycopg", "psycopg_steps.py"),
        "asyncpg" => python_driver("asyncpg", "asyncpg", "asyncpg_steps.py"),
        "node-pg" => {
            let modules = target_dir().join("drivers-node").join("node_modules");
            if !on_path("node") {
                return Err("node is not installed: run `cargo xtask setup`".into());
            }
            if let Some(m) = ["pg", "pg-cursor", "pg-copy-streams"]
                .into_iter()
                .find(|m| !modules.join(m).join("package.json").exists())
            {
                return Err(format!(
                    "{m} is not in {}: run `cargo xtask setup`",
                    modules.display()
                ));
            }
            Ok(Driver {
                name: "node-pg",
                argv: vec![
                    "node".into(),
                    "--no-deprecation".into(),
                    scenario("node_pg_steps.js"),
                ],
                env: vec![("NODE_PATH".into(), modules.to_string_lossy().into_owned())],
            })
        }
        "pgjdbc" => {
            if !Path::new(PGJDBC_JAR).exists() {
                return Err(format!("{PGJDBC_JAR} is missing: run `cargo xtask setup`"));
            }
            if !on_path("javac") || !on_path("java") {
                return Err("no JDK (java, javac): run `cargo xtask setup`".into());
            }
            Ok(Driver {
                name: "pgjdbc",
                argv: vec![
                    "java".into(),
                    "-cp".into(),
                    PGJDBC_JAR.into(),
                    scenario("PgjdbcSteps.java"),
                ],
                env: Vec::new(),
            })
        }
        other => Err(format!("no scenario for driver {other}")),
    }
}

fn policy(pg: &PgServer) -> String {
    let ca = pg.ca.clone().expect("the server was started with TLS");
    let unparseable = match std::env::var("PORTCULLIS_DRIVERS_UNPARSEABLE").as_deref() {
        Ok("allow") => "    defaults: { unparseable: allow }\n",
        _ => "",
    };
    format!(
        "apiVersion: portcullis.dev/v1
workloads:
  - name: drivers
    match: {{ unit: \"drivers.service\" }}
targets:
  - name: app-db
    addresses: [\"127.0.0.1\"]
    ports: [{}]
    protocol: postgres
    tls: {{ client: allow, upstream: verify-full, ca_file: {} }}
{unparseable}rules:
  - id: {RULE}
    workloads: [drivers]
    targets: [app-db]
    effect: allow
",
        pg.port,
        ca.display()
    )
}

/// One run of a scenario: its step lines in order, exit status, stderr, time.
struct Run {
    steps: Vec<Value>,
    ok_exit: bool,
    stderr: String,
    secs: f64,
}

/// The agent attached to `cg` with the allow-all policy for `pg`, terminating
/// client TLS with a certificate from the server's CA; also that CA (for
/// clients that verify) and the directory holding the agent's key.
fn tls_agent(cg: &TestCgroup, pg: &PgServer) -> (Agent, PathBuf, TempDir) {
    let certs = TempDir::new("portcullis-test-drivers-tls");
    let ca = pg.ca.clone().expect("the server was started with TLS");
    let (crt, key) = pg::agent_cert(&certs.0, ca.parent().expect("CA dir"));
    let agent = Agent::start(
        &cg.slice,
        &policy(pg),
        AgentOpts {
            extra_config: format!(
                "tls_cert_file: {}\ntls_key_file: {}\n",
                crt.display(),
                key.display()
            ),
            ..AgentOpts::default()
        },
    );
    (agent, ca, certs)
}

fn run_scenario(d: &Driver, pg: &PgServer, cg: Option<&Path>) -> Run {
    let argv: Vec<&str> = d.argv.iter().map(String::as_str).collect();
    let mut cmd = match cg {
        Some(cg) => in_cgroup(cg, &argv),
        None => {
            let mut c = Command::new(argv[0]);
            c.args(&argv[1..]);
            c
        }
    };
    let ca = pg.ca.clone().expect("the server was started with TLS");
    cmd.env("PGHOST", "127.0.0.1")
        .env("PGPORT", pg.port.to_string())
        .env("PGUSER", "app")
        .env("PGDATABASE", "app")
        .env("PGPASSWORD", pg::password("app"))
        .env("PGCONNECT_TIMEOUT", "10")
        .env("DRIVERS_CA", &ca)
        .env_remove("PGSSLMODE")
        .env_remove("PGSERVICE")
        .envs(d.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", d.argv));
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for the scenario") {
            break Some(st);
        }
        if t0.elapsed() > HANG_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let secs = t0.elapsed().as_secs_f64();
    let stdout = reader.join().unwrap_or_default();
    let mut stderr = err_reader.join().unwrap_or_default();
    if status.is_none() {
        stderr.push_str(&format!(
            "\n(killed: still running after {} s)",
            HANG_LIMIT.as_secs()
        ));
    }
    let steps = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}: a line that is not JSON ({e}): {l}", d.name))
        })
        .collect();
    Run {
        steps,
        ok_exit: status.is_some_and(|s| s.success()),
        stderr,
        secs,
    }
}

/// Every leaf where `a` and `b` differ, as (path, a, b).
fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<(String, String, String)>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let null = Value::Null;
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                diff(
                    &p,
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                diff(&format!("{path}[{i}]"), p, q, out);
            }
        }
        _ if a != b => out.push((path.to_string(), a.to_string(), b.to_string())),
        _ => {}
    }
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

fn status_of(step: Option<&Value>) -> &'static str {
    match step {
        None => "missing",
        Some(s) if s["ok"] == true => "ok",
        Some(_) => "FAILED",
    }
}

/// Prints both runs side by side; returns the problems found.
fn compare(name: &str, direct: &Run, agent: &Run) -> Vec<String> {
    let index = |r: &Run| -> BTreeMap<String, Value> {
        r.steps
            .iter()
            .map(|s| (s["step"].as_str().unwrap_or("?").to_string(), s.clone()))
            .collect()
    };
    let (d, a) = (index(direct), index(agent));
    let mut order: Vec<String> = direct
        .steps
        .iter()
        .map(|s| s["step"].as_str().unwrap_or("?").to_string())
        .collect();
    for s in &agent.steps {
        let n = s["step"].as_str().unwrap_or("?").to_string();
        if !order.contains(&n) {
            order.push(n);
        }
    }
    let count = |m: &BTreeMap<String, Value>| m.values().filter(|s| s["ok"] == true).count();
    println!();
    println!(
        "== driver {name}: {} steps; direct: {} ok, {} failed ({:.1} s); through the agent: {} ok, {} failed ({:.1} s)",
        order.len(),
        count(&d),
        d.len() - count(&d),
        direct.secs,
        count(&a),
        a.len() - count(&a),
        agent.secs
    );
    println!("   {:<22} {:<8} {:<8} result", "step", "direct", "agent");
    let mut problems = Vec::new();
    for step in &order {
        let (x, y) = (d.get(step), a.get(step));
        let mut diffs = Vec::new();
        if let (Some(x), Some(y)) = (x, y) {
            diff("", x, y, &mut diffs);
        }
        let same = x.is_some() && y.is_some() && diffs.is_empty();
        let expected = known(name, step);
        println!(
            "   {:<22} {:<8} {:<8} {}",
            step,
            status_of(x),
            status_of(y),
            match (same, expected) {
                (true, _) => "same".to_string(),
                (false, Some((why, _))) => format!("known difference: {why}"),
                (false, None) => "DIFFERENT".to_string(),
            }
        );
        for (p, u, v) in &diffs {
            println!("       {p}:");
            println!("         direct: {}", short(u, 400));
            println!("         agent:  {}", short(v, 400));
        }
        if status_of(x) != "ok" {
            problems.push(format!(
                "{step}: failed direct: {}",
                x.map(|s| s.to_string()).unwrap_or_default()
            ));
        }
        if same && expected.is_some() {
            println!("       (the known difference above is gone: remove it from KNOWN)");
        }
        if let (Some((_, Some(error))), Some(y)) = (expected, y)
            && !same
            && !y["error"].as_str().is_some_and(|e| e.contains(error))
        {
            problems.push(format!(
                "{step}: the known difference must fail through the agent with {error:?}, got {y}"
            ));
        }
        if expected.is_some() && x.is_some() && y.is_some() {
            continue;
        }
        if status_of(y) != "ok" {
            problems.push(format!(
                "{step}: failed through the agent: {}",
                y.map(|s| s.to_string()).unwrap_or_default()
            ));
        }
        if !same {
            problems.push(format!(
                "{step}: direct and through-the-agent results differ"
            ));
        }
    }
    for (what, r) in [("direct", direct), ("through the agent", agent)] {
        if !r.ok_exit && r.steps.iter().all(|s| s["ok"] == true) {
            problems.push(format!(
                "the scenario exited with failure {what}: {}",
                r.stderr
            ));
        }
    }
    problems
}

fn conformance(test: &str, name: &str) {
    if !privileged(test) {
        return;
    }
    let why = pg::missing()
        .map(Err)
        .unwrap_or_else(|| driver(name).map(Some));
    let d = match why {
        Ok(Some(d)) => d,
        Ok(None) => unreachable!("pg::missing() gave no reason"),
        Err(w) if ci() => panic!("{test}: cannot run under CI=true: {w}"),
        Err(w) => {
            eprintln!("SKIP {test}: {w}");
            return;
        }
    };
    let cg = TestCgroup::new();
    let unit = cg.unit("drivers");
    let pg = PgServer::start(PgOpts {
        tls: true,
        ..PgOpts::default()
    });
    let (agent, _, _certs) = tls_agent(&cg, &pg);

    let direct = run_scenario(&d, &pg, None);
    let before = pg.tcp_connections_received();
    let through = run_scenario(&d, &pg, Some(&unit));
    let received = pg.tcp_connections_received() - before;

    let mut problems = compare(name, &direct, &through);

    // Every connection the server received during the second run came through
    // the agent, allowed by the rule.
    let dst = format!("127.0.0.1:{}", pg.port);
    let conns: Vec<Value> = agent
        .connections(received)
        .into_iter()
        .filter(|r| r["original_destination"] == dst.as_str())
        .collect();
    if received == 0 || conns.len() != received {
        problems.push(format!(
            "the server received {received} TCP connections during the run through the agent, the agent recorded {}",
            conns.len()
        ));
    }
    for r in &conns {
        if r["decision"] != "allow" || r["rule"] != RULE {
            problems.push(format!("a connection not allowed by {RULE}: {r}"));
        }
    }
    // What the agent refused, to tell its differences apart.
    let refused: Vec<Value> = agent
        .audit()
        .into_iter()
        .filter(|r| r["event"] == "statement" && r["decision"] != "allow")
        .collect();
    println!(
        "   through the agent: {} connections, {} statements refused",
        conns.len(),
        refused.len()
    );
    for r in &refused {
        println!(
            "     refused by {}: {} ({})",
            r["rule"].as_str().unwrap_or("?"),
            short(r["statement"].as_str().unwrap_or("?"), 200),
            short(
                r["reason"]
                    .as_str()
                    .or(r["parse_error"].as_str())
                    .unwrap_or(""),
                200
            )
        );
    }
    let report = target_dir().join("drivers-report");
    let _ = std::fs::create_dir_all(&report);
    for (suffix, r) in [("direct", &direct), ("agent", &through)] {
        let text: String = r.steps.iter().map(|s| format!("{s}\n")).collect();
        let _ = std::fs::write(report.join(format!("{name}-{suffix}.jsonl")), text);
    }
    println!(
        "   full results: {}/{name}-{{direct,agent}}.jsonl",
        report.display()
    );
    if !problems.is_empty() {
        panic!(
            "{name}: {} problem(s):\n  {}\ndirect stderr:\n{}\nthrough-the-agent stderr:\n{}\nagent log (tail):\n{}",
            problems.len(),
            problems.join("\n  "),
            short(&direct.stderr, 4000),
            short(&through.stderr, 4000),
            agent
                .log()
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// libpq's default `channel_binding=prefer` over TLS to an agent that relays the
/// client's own login to a TLS server: the agent refuses the login itself with
/// a FATAL that says why and what fixes it, sends nothing upstream the server
/// would take for a downgrade attack, and records why; with
/// `channel_binding=disable` the same psql gets TLS on both legs.
#[test]
fn driver_conformance_psql_channel_binding_over_relayed_tls() {
    let test = "driver_conformance_psql_channel_binding_over_relayed_tls";
    if !privileged(test) {
        return;
    }
    if let Some(w) = pg::missing() {
        if ci() {
            panic!("{test}: cannot run under CI=true: {w}");
        }
        eprintln!("SKIP {test}: {w}");
        return;
    }
    let cg = TestCgroup::new();
    let unit = cg.unit("drivers");
    let pg = PgServer::start(PgOpts {
        tls: true,
        ..PgOpts::default()
    });
    let (agent, ca, _certs) = tls_agent(&cg, &pg);
    let sql = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    let psql = |binding: Option<&str>| {
        let mut cmd = pg.psql_command(&unit, "app", &["-A", "-t", "-c", sql]);
        cmd.env("PGSSLMODE", "verify-full")
            .env("PGSSLROOTCERT", &ca);
        if let Some(b) = binding {
            cmd.env("PGCHANNELBINDING", b);
        }
        cmd.output().expect("run psql")
    };

    let refused = psql(None);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "psql logged in: {stderr}");
    for part in [
        "FATAL:  Portcullis: target app-db relays the client's own SCRAM login to a TLS server",
        "(gs2 flag `y`)",
        "channel_binding=disable",
        "agent-held `credentials`",
        "`tls.client: refuse` or `tls.upstream: disable`",
    ] {
        assert!(
            stderr.contains(part),
            "psql's error lacks {part:?}: {stderr}"
        );
    }
    assert!(
        !pg.log().contains("channel binding"),
        "the server saw a channel-binding failure:\n{}",
        pg.log()
    );
    let audit = agent.audit();
    let auth = audit
        .iter()
        .find(|r| r["event"] == "authentication" && r["outcome"] == "failure")
        .unwrap_or_else(|| panic!("no failed authentication record: {audit:#?}"));
    assert!(
        auth["error"]
            .as_str()
            .is_some_and(|e| e.contains("gs2 flag `y`") && e.contains("not sent upstream")),
        "{auth}"
    );
    assert_eq!(auth["client_tls"], true, "{auth}");
    assert_eq!(auth["upstream_tls"], true, "{auth}");
    assert!(
        audit.iter().any(
            |r| r["event"] == "connection" && r.to_string().contains("channel_binding_refused")
        ),
        "no connection record ending `channel_binding_refused`: {audit:#?}"
    );

    let ok = psql(Some("disable"));
    assert!(
        ok.status.success(),
        "psql with channel_binding=disable: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "t");
}

#[test]
fn driver_conformance_psycopg() {
    conformance("driver_conformance_psycopg", "psycopg");
}

#[test]
fn driver_conformance_asyncpg() {
    conformance("driver_conformance_asyncpg", "asyncpg");
}

#[test]
fn driver_conformance_node_pg() {
    conformance("driver_conformance_node_pg", "node-pg");
}

#[test]
fn driver_conformance_pgjdbc() {
    conformance("driver_conformance_pgjdbc", "pgjdbc");
}

/// The protocol-heavy modules of asyncpg's own test suite that run against an
/// existing server (those that start clusters of their own, or need a server
/// built with extensions this one lacks, are left out).
const ASYNCPG_SUITE: &[&str] = &[
    "test_execute",
    "test_prepare",
    "test_copy",
    "test_cursor",
    "test_listeners",
    "test_cancellation",
    "test_transaction",
    "test_exceptions",
    "test_introspection",
    "test_timeout",
    "test_codecs",
    "test_record",
];

/// `<target>/drivers-asyncpg-suite/<version>` for the venv's asyncpg, or why not.
fn asyncpg_suite_dir() -> Result<PathBuf, String> {
    let out = Command::new(venv_python())
        .args(["-c", "import asyncpg; print(asyncpg.__version__)"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", venv_python().display()))?;
    if !out.status.success() {
        return Err("asyncpg is not importable from the venv: run `cargo xtask setup`".into());
    }
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let dir = target_dir().join("drivers-asyncpg-suite").join(&version);
    if dir.join("tests").join("__init__.py").exists() {
        Ok(dir)
    } else {
        Err(format!(
            "asyncpg {version}'s test suite is not unpacked in {}: run `cargo xtask setup`",
            dir.display()
        ))
    }
}

/// asyncpg's own tests, module by module, direct and through the agent, compared
/// test by test. The suite logs in as the superuser over TCP (it creates roles,
/// databases and extensions), which the harness server allows for this test only.
#[test]
fn driver_conformance_asyncpg_suite() {
    let test = "driver_conformance_asyncpg_suite";
    if !privileged(test) {
        return;
    }
    let suite = match pg::missing().map(Err).unwrap_or_else(asyncpg_suite_dir) {
        Ok(d) => d,
        Err(w) if ci() => panic!("{test}: cannot run under CI=true: {w}"),
        Err(w) => {
            eprintln!("SKIP {test}: {w}");
            return;
        }
    };
    let cg = TestCgroup::new();
    let unit = cg.unit("drivers");
    let pg = PgServer::start(PgOpts {
        tls: true,
        ..PgOpts::default()
    });
    let superuser_password = pg::password("postgres");
    pg.superuser_sql(&format!(
        "ALTER ROLE postgres PASSWORD '{superuser_password}'"
    ));
    let hba = pg.data_dir.join("pg_hba.conf");
    let mut lines = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
    lines.push_str("host all postgres 127.0.0.1/32 scram-sha-256\n");
    std::fs::write(&hba, lines).expect("write pg_hba.conf");
    pg.superuser_sql("SELECT pg_reload_conf()");
    let (agent, _, _certs) = tls_agent(&cg, &pg);
    let mut argv = vec![
        venv_python().to_string_lossy().into_owned(),
        scenario("asyncpg_suite.py"),
        suite.to_string_lossy().into_owned(),
    ];
    argv.extend(ASYNCPG_SUITE.iter().map(|m| m.to_string()));
    let d = Driver {
        name: "asyncpg-suite",
        argv,
        env: vec![
            ("PGUSER".into(), "postgres".into()),
            ("PGDATABASE".into(), "postgres".into()),
            ("PGPASSWORD".into(), superuser_password.clone()),
        ],
    };
    let direct = run_scenario(&d, &pg, None);
    let through = run_scenario(&d, &pg, Some(&unit));
    let outcomes = |r: &Run| -> BTreeMap<String, (String, String)> {
        r.steps
            .iter()
            .filter_map(|s| {
                Some((
                    s["test"].as_str()?.to_string(),
                    (
                        s["outcome"].as_str().unwrap_or("?").to_string(),
                        s["detail"].as_str().unwrap_or("").to_string(),
                    ),
                ))
            })
            .collect()
    };
    let (a, b) = (outcomes(&direct), outcomes(&through));
    let tally = |m: &BTreeMap<String, (String, String)>| {
        let mut t: BTreeMap<String, usize> = BTreeMap::new();
        for (o, _) in m.values() {
            *t.entry(o.clone()).or_default() += 1;
        }
        t
    };
    println!();
    println!(
        "== asyncpg's own suite ({} modules): direct {:?} in {:.1} s; through the agent {:?} in {:.1} s",
        ASYNCPG_SUITE.len(),
        tally(&a),
        direct.secs,
        tally(&b),
        through.secs
    );
    let mut problems = Vec::new();
    let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let none = ("missing".to_string(), String::new());
    for n in names {
        let (x, y) = (a.get(n).unwrap_or(&none), b.get(n).unwrap_or(&none));
        let expected = KNOWN_SUITE
            .iter()
            .find(|(t, _)| t == n)
            .map(|(_, why)| *why);
        if x.0 != y.0 {
            println!("   {n:<90} direct {:<8} agent {}", x.0, y.0);
            if let Some(why) = expected {
                println!("       known difference: {why}");
                continue;
            }
            for (what, v) in [("direct", x), ("agent", y)] {
                if !v.1.is_empty() {
                    println!("       {what}: {}", short(&v.1, 300));
                }
            }
            problems.push(format!("{n}: direct {}, through the agent {}", x.0, y.0));
        } else if x.0 == "fail" || x.0 == "error" {
            println!("   {n:<90} fails both ways: {}", short(&x.1, 200));
        } else if expected.is_some() {
            println!("   {n:<90} (the known difference is gone: remove it from KNOWN_SUITE)");
        }
    }
    if a.is_empty() {
        problems.push(format!(
            "the suite ran no test direct: {}",
            short(&direct.stderr, 2000)
        ));
    }
    let refused = agent
        .audit()
        .into_iter()
        .filter(|r| r["event"] == "statement" && r["decision"] != "allow")
        .count();
    println!("   through the agent: {refused} statements refused");
    assert!(
        problems.is_empty(),
        "asyncpg's suite differs through the agent in {} test(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}
