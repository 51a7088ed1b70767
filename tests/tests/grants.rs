//! Least privilege through the real proxy: an allow rule grants privileges, and
//! a statement runs only if every privilege it exercises is granted. A real
//! PostgreSQL server, psql in a test cgroup, redirected by the kernel programs
//! to the real agent, which logs in upstream as `app` with its own credentials.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;

use portcullis_tests::pg::{self, PgOpts, PgServer};
use portcullis_tests::{Agent, AgentOpts, TempDir, TestCgroup, ci, in_cgroup, privileged};
use serde_json::Value;

/// "clients may select reading public.orders", and nothing else.
fn policy(port: u16) -> String {
    format!(
        "apiVersion: portcullis.dev/v1
mode: enforce
workloads:
  - name: clients
    match: {{ unit: \"pgclients.service\" }}
targets:
  - name: app-db
    addresses: [\"127.0.0.1\"]
    ports: [{port}]
    protocol: postgres
    credentials: app-db
rules:
  - id: clients-read-orders
    workloads: [clients]
    targets: [app-db]
    effect: allow
    when: {{ sql: {{ statements: [select], tables_read: [\"public.orders\"] }} }}
"
    )
}

fn write_credential(dir: &Path, name: &str, user: &str, password: &str) {
    let p = dir.join(format!("{name}.yaml"));
    std::fs::write(&p, format!("user: {user}\npassword: \"{password}\"\n"))
        .expect("write credential");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod credential");
}

/// Runs `script` with psql inside the cgroup; returns (stdout, stderr).
fn psql(pg: &PgServer, unit: &Path, script: &str) -> (String, String) {
    let conn = format!(
        "host=127.0.0.1 port={} user=whoever dbname=app connect_timeout=10",
        pg.port
    );
    let bin = pg.bin.join("psql");
    let mut cmd = in_cgroup(unit, &[bin.to_str().expect("utf-8"), "-X", "-d", &conn]);
    cmd.env_remove("PGPASSWORD")
        .env("PGSSLMODE", "disable")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run psql");
    if let Some(mut i) = child.stdin.take() {
        i.write_all(script.as_bytes()).expect("write psql input");
    }
    let out = child.wait_with_output().expect("psql output");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn record<'a>(recs: &'a [Value], text: &str) -> &'a Value {
    recs.iter()
        .find(|r| r["statement"] == text)
        .unwrap_or_else(|| panic!("no statement record for {text:?} in {recs:#?}"))
}

#[test]
fn a_least_privilege_policy_refuses_what_it_does_not_grant() {
    let test = "a_least_privilege_policy_refuses_what_it_does_not_grant";
    if !privileged(test) {
        return;
    }
    if let Some(why) = pg::missing() {
        if ci() {
            panic!("{test}: cannot run under CI=true: {why}");
        }
        eprintln!("SKIP {test}: {why}");
        return;
    }
    let cg = TestCgroup::new();
    let unit = cg.unit("pgclients");
    let pg = PgServer::start(PgOpts::default());
    let creds = TempDir::new("portcullis-test-creds");
    write_credential(&creds.0, "app-db", "app", &pg::password("app"));
    let agent = Agent::start(
        &cg.slice,
        &policy(pg.port),
        AgentOpts {
            extra_config: format!("credentials_dir: {}\n", creds.0.display()),
            ..AgentOpts::default()
        },
    );

    let granted = "SELECT item FROM public.orders WHERE id = 1;";
    let join = "SELECT o.item, a.owner FROM public.orders o JOIN public.accounts a ON a.id = o.account_id;";
    let cte_delete = "WITH x AS (DELETE FROM public.orders RETURNING *) SELECT count(*) FROM x;";
    let union = "SELECT item FROM public.orders UNION SELECT ssn FROM public.accounts;";
    let unqualified = "SELECT count(*) FROM orders;";
    let script = format!(
        "{granted}\n{join}\n{cte_delete}\n{union}\n{unqualified}\nSELECT 'still here' AS s;\n"
    );
    let orders_before = pg.superuser_sql("SELECT count(*) FROM public.orders");
    let (out, err) = psql(&pg, &unit, &script);

    // The granted SELECT ran; the session stayed usable after each refusal.
    assert!(out.contains("book"), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("still here"), "stdout:\n{out}\nstderr:\n{err}");
    let refusals: Vec<&str> = err.lines().filter(|l| l.contains("refused")).collect();
    assert_eq!(refusals.len(), 4, "stdout:\n{out}\nstderr:\n{err}");
    for (line, missing) in refusals.iter().zip([
        "select on public.accounts is granted by no rule",
        "delete on public.orders is granted by no rule",
        "select on public.accounts is granted by no rule",
        // `$user` is app: the unqualified name may resolve to app.orders.
        "select on app.orders (an unqualified name may resolve to it on the search_path) is granted by no rule",
    ]) {
        assert!(
            line.contains("rule `default-deny`") && line.contains(missing),
            "expected a refusal naming {missing:?}, got {line:?}\nstderr:\n{err}"
        );
    }
    // Nothing was deleted: the server never saw the DELETE.
    assert_eq!(
        pg.superuser_sql("SELECT count(*) FROM public.orders"),
        orders_before
    );

    let recs: Vec<Value> = agent
        .audit()
        .into_iter()
        .filter(|r| r["event"] == "statement")
        .collect();
    let ok = record(&recs, granted);
    assert_eq!(ok["decision"], "allow", "{ok:#}");
    assert_eq!(ok["rule"], "clients-read-orders", "{ok:#}");
    assert_eq!(
        ok["grants"][0]["privilege"], "select on public.orders",
        "{ok:#}"
    );
    assert_eq!(ok["grants"][0]["rule"], "clients-read-orders", "{ok:#}");
    let j = record(&recs, join);
    assert_eq!(j["decision"], "deny", "{j:#}");
    assert_eq!(j["rule"], "default-deny", "{j:#}");
    assert_eq!(
        j["reason"], "select on public.accounts is granted by no rule",
        "{j:#}"
    );
    assert_eq!(j["outcome"], "refused", "{j:#}");
    // The extended protocol (a driver's prepared statements) is decided the
    // same way: the granted one runs, the join is refused when it is parsed.
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_pc-pgclient"));
    let r = pg.tokio_client(
        &unit,
        &bin,
        "app",
        &serde_json::json!([
            {"prepared": "SELECT item FROM public.orders WHERE id = $1", "params": [1]},
            {"prepared": "SELECT o.item, a.ssn FROM public.orders o JOIN public.accounts a ON a.id = o.account_id WHERE o.id = $1", "params": [1]},
        ]),
    );
    assert_eq!(r["failed_step"], 1, "{r:#}");
    assert_eq!(r["sqlstate"], "42501", "{r:#}");
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("select on public.accounts is granted by no rule")),
        "{r:#}"
    );
    assert!(r["steps"][0].to_string().contains("book"), "{r:#}");

    let d = record(&recs, cte_delete);
    assert_eq!(
        d["reason"], "delete on public.orders is granted by no rule",
        "{d:#}"
    );
    assert!(
        d["privileges"]
            .as_array()
            .is_some_and(|p| p.iter().any(|x| x == "delete on public.orders")),
        "{d:#}"
    );
}
