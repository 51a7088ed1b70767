//! Privileged end-to-end tests of the PostgreSQL protocol proxy: a real server,
//! real clients (psql, pgbench, tokio-postgres) in a test cgroup, redirected by the
//! kernel programs to the real agent, which logs in upstream with credentials only
//! it holds and decides every statement.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use portcullis_tests::pg::{self, PgOpts, PgServer};
use portcullis_tests::{Agent, AgentOpts, TempDir, TestCgroup, ci, in_cgroup, privileged};
use serde_json::{Value, json};

const CONNECT_RULE: &str = "clients-connect";

/// Rules on top of the connection allow: where-less writes, DDL, dangerous
/// functions refused; TRUNCATE needs approval.
const SQL_RULES: &str = "
  - id: no-where-less
    workloads: [clients]
    targets: [app-db]
    effect: deny
    when: { sql: { statements: [update, delete], where_less: true } }
  - id: no-ddl
    workloads: [clients]
    targets: [app-db]
    effect: deny
    when: { sql: { statements: [create, alter, drop] } }
  - id: no-file-access
    workloads: [clients]
    targets: [app-db]
    effect: deny
    when: { sql: { functions: [\"pg_read_file\", \"pg_ls_dir\"] } }
  - id: truncate-needs-approval
    workloads: [clients]
    targets: [app-db]
    effect: require_approval
    approval: { approvers: [dba], timeout: 5m }
    when: { sql: { statements: [truncate] } }
";

struct World {
    agent: Agent,
    pg: PgServer,
    unit: PathBuf,
    creds: TempDir,
    cg: TestCgroup,
}

/// Target `app-db` (protocol postgres) with `target_extra` lines, the connection
/// allow for workload `clients` (unit pgclients.service), and `rules`.
fn policy(port: u16, target_extra: &str, mode: &str, rules: &str) -> String {
    format!(
        "apiVersion: portcullis.dev/v1\nmode: {mode}\nworkloads:\n  - name: clients\n    match: {{ unit: \"pgclients.service\" }}\ntargets:\n  - name: app-db\n    addresses: [\"127.0.0.1\"]\n    ports: [{port}]\n    protocol: postgres\n{target_extra}rules:\n  - id: {CONNECT_RULE}\n    workloads: [clients]\n    targets: [app-db]\n    effect: allow\n{rules}"
    )
}

fn write_credential(dir: &Path, name: &str, user: &str, password: &str) {
    let p = dir.join(format!("{name}.yaml"));
    std::fs::write(&p, format!("user: {user}\npassword: \"{password}\"\n"))
        .expect("write credential");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod credential");
}

fn world(
    test: &str,
    opts: PgOpts,
    policy_of: impl Fn(u16) -> String,
    agent_extra: &str,
) -> Option<World> {
    world_with(
        test,
        opts,
        |pg| policy_of(pg.port),
        |_| agent_extra.to_string(),
    )
}

/// Like [`world`], with the policy and the extra agent settings made once the
/// server exists (its CA, say).
fn world_with(
    test: &str,
    opts: PgOpts,
    policy_of: impl Fn(&PgServer) -> String,
    agent_extra_of: impl Fn(&PgServer) -> String,
) -> Option<World> {
    if !privileged(test) {
        return None;
    }
    if let Some(why) = pg::missing() {
        if ci() {
            panic!("{test}: cannot run under CI=true: {why}");
        }
        eprintln!("SKIP {test}: {why}");
        return None;
    }
    let cg = TestCgroup::new();
    let unit = cg.unit("pgclients");
    let pg = PgServer::start(opts);
    let creds = TempDir::new("portcullis-test-creds");
    write_credential(&creds.0, "app-db", "app", &pg::password("app"));
    let agent = Agent::start(
        &cg.slice,
        &policy_of(&pg),
        AgentOpts {
            extra_config: format!(
                "credentials_dir: {}\n{}",
                creds.0.display(),
                agent_extra_of(&pg)
            ),
            ..AgentOpts::default()
        },
    );
    Some(World {
        agent,
        pg,
        unit,
        creds,
        cg,
    })
}

/// psql inside the cgroup as database user `user` with no password at all: the
/// agent logs in upstream with its own credentials.
fn psql(
    w: &World,
    user: &str,
    args: &[&str],
    stdin: Option<&str>,
    env: &[(&str, &str)],
) -> (bool, String, String) {
    let conn = format!(
        "host=127.0.0.1 port={} user={user} dbname=app connect_timeout=10",
        w.pg.port
    );
    let bin = w.pg.bin.join("psql");
    let mut all = vec![
        bin.to_str().expect("utf-8"),
        "-X",
        "-v",
        "VERBOSITY=verbose",
        "-d",
        &conn,
    ];
    all.extend_from_slice(args);
    let mut cmd = in_cgroup(&w.unit, &all);
    cmd.env_remove("PGPASSWORD")
        .env("PGSSLMODE", "disable")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run psql");
    if let (Some(text), Some(mut i)) = (stdin, child.stdin.take()) {
        i.write_all(text.as_bytes()).expect("write psql input");
    }
    let out = child.wait_with_output().expect("psql output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The audit records of one event type.
fn events(w: &World, event: &str) -> Vec<Value> {
    w.agent
        .audit()
        .into_iter()
        .filter(|r| r["event"] == event)
        .collect()
}

fn statements(w: &World) -> Vec<Value> {
    events(w, "statement")
}

fn record_for<'a>(recs: &'a [Value], text: &str) -> &'a Value {
    recs.iter()
        .find(|r| r["statement"] == text)
        .unwrap_or_else(|| panic!("no statement record for {text:?} in {recs:#?}"))
}

/// The `statement_outcome` record that completes the `statement` record `rec`
/// (same session, same statement number).
fn outcome_of(w: &World, rec: &Value) -> Value {
    events(w, "statement_outcome")
        .into_iter()
        .find(|o| {
            o["session_id"] == rec["session_id"] && o["statement_seq"] == rec["statement_seq"]
        })
        .unwrap_or_else(|| panic!("no statement_outcome record for {rec:#}"))
}

#[test]
fn statements_are_decided_audited_and_refusals_keep_the_session_and_its_transaction() {
    let Some(w) = world(
        "statements_are_decided_audited_and_refusals_keep_the_session_and_its_transaction",
        PgOpts::default(),
        |port| policy(port, "    credentials: app-db\n", "enforce", SQL_RULES),
        "",
    ) else {
        return;
    };
    let script = "SELECT count(*) AS n FROM accounts;
DELETE FROM orders;
SELECT 'still here' AS s;
BEGIN;
INSERT INTO orders (account_id, item, amount) VALUES (1, 'in-tx', 1.00);
DELETE FROM orders;
COMMIT;
SELECT count(*) AS in_tx FROM orders WHERE item = 'in-tx';
SELECT 'first' AS part\\; DELETE FROM orders;
TRUNCATE orders;
DROP TABLE orders;
SELECT pg_read_file('/etc/passwd');
UPDATE accounts SET balance = balance WHERE id = 1;
SELECT 'end' AS e;
";
    let orders_before = w.pg.superuser_sql("SELECT count(*) FROM orders");
    let (_, out, err) = psql(&w, "whoever", &[], Some(script), &[]);
    let refusals: Vec<&str> = err.lines().filter(|l| l.contains("42501")).collect();
    assert_eq!(refusals.len(), 6, "stdout:\n{out}\nstderr:\n{err}");
    assert!(refusals[0].contains("rule `no-where-less`"), "{err}");
    assert!(
        refusals[3].contains("requires approval under rule `truncate-needs-approval`"),
        "{err}"
    );
    assert!(refusals[4].contains("rule `no-ddl`"), "{err}");
    assert!(refusals[5].contains("rule `no-file-access`"), "{err}");
    // The session stayed usable; the refused DELETE inside BEGIN failed the
    // transaction as any error would, so COMMIT rolled back the INSERT.
    assert!(out.contains("still here"), "{out}");
    assert!(out.contains("ROLLBACK"), "{out}");
    let in_tx = out
        .split("in_tx")
        .nth(1)
        .and_then(|s| s.lines().nth(2))
        .map(str::trim);
    assert_eq!(in_tx, Some("0"), "{out}");
    // A message with one refused statement runs none of them.
    assert!(!out.contains("first"), "{out}");
    assert!(out.contains("UPDATE 1") && out.contains("end"), "{out}");
    // The server still has every order.
    assert_eq!(
        w.pg.superuser_sql("SELECT count(*) FROM orders"),
        orders_before
    );

    let recs = statements(&w);
    let sel = record_for(&recs, "SELECT count(*) AS n FROM accounts;");
    assert_eq!(sel["decision"], "allow", "{sel:#}");
    assert_eq!(sel["rule"], CONNECT_RULE, "{sel:#}");
    // Written when decided; the outcome follows in its own record.
    assert_eq!(sel["outcome"], "forwarded", "{sel:#}");
    let sel_out = outcome_of(&w, sel);
    assert_eq!(sel_out["outcome"], "ok", "{sel_out:#}");
    assert_eq!(sel_out["rows"], 1, "{sel_out:#}");
    assert_eq!(sel_out["kinds"], json!(["select"]), "{sel_out:#}");
    assert_eq!(sel["kinds"], json!(["select"]), "{sel:#}");
    assert!(
        sel["tables_read"]
            .as_array()
            .is_some_and(|t| t.iter().any(|x| x == "public.accounts")),
        "{sel:#}"
    );
    assert_eq!(sel["upstream_user"], "app", "{sel:#}");
    assert_eq!(sel["database"], "app", "{sel:#}");
    assert_eq!(sel["attribution"]["unit"], "pgclients.service", "{sel:#}");
    assert!(
        sel["policy_hash"].as_str().is_some_and(|h| h.len() == 64),
        "{sel:#}"
    );
    assert!(sel_out["duration_us"].is_u64(), "{sel_out:#}");
    let del = record_for(&recs, "DELETE FROM orders;");
    assert_eq!(del["decision"], "deny", "{del:#}");
    assert_eq!(del["rule"], "no-where-less", "{del:#}");
    assert_eq!(del["outcome"], "refused", "{del:#}");
    assert_eq!(del["where_less"], true, "{del:#}");
    let upd = outcome_of(
        &w,
        record_for(&recs, "UPDATE accounts SET balance = balance WHERE id = 1;"),
    );
    assert_eq!(
        (upd["outcome"].as_str(), upd["rows"].as_u64()),
        (Some("ok"), Some(1)),
        "{upd:#}"
    );
    let rf = record_for(&recs, "SELECT pg_read_file('/etc/passwd');");
    assert_eq!(rf["dangerous"], json!(["pg_read_file"]), "{rf:#}");
    // The connection record names the upstream user; no secret anywhere.
    let conns = w.agent.connections(1);
    let c = conns
        .iter()
        .find(|c| c["session"]["protocol"] == "postgres")
        .expect("a postgres connection record");
    assert_eq!(c["session"]["upstream_user"], "app", "{c:#}");
    assert_eq!(c["session"]["refused"], 6, "{c:#}");
    let log = std::fs::read_to_string(w.agent.audit_path()).unwrap_or_default();
    assert!(
        !log.contains(&pg::password("app")),
        "the agent's credential reached the audit log"
    );
    // The upstream login is its own record (OCSF Authentication).
    let auth = events(&w, "authentication");
    assert!(
        auth.iter().any(|a| a["outcome"] == "success"
            && a["method"] == "scram-sha-256"
            && a["upstream_user"] == "app"
            && a["credentials"] == "agent-held"),
        "{auth:#?}"
    );
    // The server saw the agent's user, never the client's.
    assert!(w.pg.sessions_authorized("app") >= 1, "{}", w.pg.log());
    assert_eq!(w.pg.sessions_authorized("whoever"), 0);
}

#[test]
fn pgbench_init_and_every_query_mode_through_the_sql_proxy() {
    let Some(w) = world(
        "pgbench_init_and_every_query_mode_through_the_sql_proxy",
        PgOpts::default(),
        |port| {
            let rules = SQL_RULES
                .split("  - id: truncate-needs-approval")
                .next()
                .unwrap_or("");
            policy(port, "    credentials: app-db\n", "enforce", rules)
        },
        "",
    ) else {
        return;
    };
    let conn = format!("host=127.0.0.1 port={} user=bench dbname=app", w.pg.port);
    let bench = w.pg.bin.join("pgbench");
    let run = |args: &[&str]| {
        let mut all = vec![bench.to_str().expect("utf-8")];
        all.extend_from_slice(args);
        all.push(&conn);
        let out = in_cgroup(&w.unit, &all)
            .env_remove("PGPASSWORD")
            .env("PGSSLMODE", "disable")
            .output()
            .expect("run pgbench");
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "pgbench {args:?}: {text}");
        text
    };
    // -i: DROP/CREATE are DDL, refused by no-ddl... so initialise with the DDL
    // rule's workload exempt: a second agent policy is not needed, the init runs
    // its DDL as the superuser and only loads data through the proxy.
    w.pg.superuser_sql(
        "CREATE TABLE pgbench_branches(bid int primary key, bbalance int, filler char(88));
         CREATE TABLE pgbench_tellers(tid int primary key, bid int, tbalance int, filler char(84));
         CREATE TABLE pgbench_accounts(aid int primary key, bid int, abalance int, filler char(84));
         CREATE TABLE pgbench_history(tid int, bid int, aid int, delta int, mtime timestamp, filler char(22));
         GRANT ALL ON pgbench_branches, pgbench_tellers, pgbench_accounts, pgbench_history TO app;",
    );
    // Data generation through the proxy: COPY ... FROM STDIN WITH (FREEZE ON) and VACUUM.
    w.pg.superuser_sql(
        "TRUNCATE pgbench_branches, pgbench_tellers, pgbench_accounts, pgbench_history",
    );
    let init = run(&["-i", "-I", "gv", "-s", "1", "-q"]);
    assert!(!init.contains("Portcullis"), "{init}");
    assert_eq!(
        w.pg.superuser_sql("SELECT count(*) FROM pgbench_accounts"),
        "100000"
    );
    for mode in ["simple", "extended", "prepared"] {
        let out = run(&["-S", "-M", mode, "-c", "2", "-j", "2", "-t", "200", "-n"]);
        let (done, failed) = pg::pgbench_counts(&out);
        assert_eq!((done, failed), (400, 0), "pgbench -M {mode}: {out}");
    }
    let recs = statements(&w);
    let selects = recs
        .iter()
        .filter(|r| {
            r["statement"]
                .as_str()
                .is_some_and(|s| s.contains("SELECT abalance FROM pgbench_accounts"))
        })
        .count();
    assert!(
        selects >= 1200,
        "one record per executed statement: {selects}"
    );
    assert!(recs.iter().any(|r| r["message"] == "extended"
        && r["prepared_name"].as_str().is_some_and(|n| !n.is_empty())));
}

#[test]
fn tls_on_both_sides_credentials_refusals_and_cancel() {
    let test = "tls_on_both_sides_credentials_refusals_and_cancel";
    if !privileged(test) {
        return;
    }
    // The server only accepts TLS; the agent verifies it against the test CA and
    // offers clients its own certificate from the same CA.
    let certs = TempDir::new("portcullis-test-agent-tls");
    let tls_target = |pg: &PgServer| {
        format!(
            "    credentials: app-db\n    tls: {{ client: require, upstream: verify-full, ca_file: {} }}\n",
            pg.ca.clone().unwrap_or_default().display()
        )
    };
    let Some(w) = world_with(
        test,
        PgOpts {
            hostssl_only: true,
            ..PgOpts::default()
        },
        |pg| policy(pg.port, &tls_target(pg), "enforce", ""),
        |pg| {
            let ca = pg.ca.clone().expect("TLS server has a CA");
            let (crt, key) = pg::agent_cert(&certs.0, ca.parent().expect("CA dir"));
            format!(
                "tls_cert_file: {}\ntls_key_file: {}\n",
                crt.display(),
                key.display()
            )
        },
    ) else {
        return;
    };
    let ca = w.pg.ca.clone().expect("TLS server has a CA");
    let ca_s = ca.to_str().expect("utf-8");
    // Verified TLS from the client to the agent, and from the agent to the server.
    let (ok, out, err) = psql(
        &w,
        "anyone",
        &[
            "-A",
            "-t",
            "-c",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            "-c",
            "SHOW ssl",
        ],
        None,
        &[("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", ca_s)],
    );
    assert!(ok, "psql over TLS: {err}");
    assert_eq!(out.lines().next(), Some("t"), "{out}");
    // Plain TCP is refused by `client: require`, with a clear message.
    let (ok, _, err) = psql(
        &w,
        "anyone",
        &["-c", "SELECT 1"],
        None,
        &[("PGSSLMODE", "disable")],
    );
    assert!(!ok);
    assert!(err.contains("requires TLS from clients"), "{err}");
    // Cancel through the agent: psql sends CancelRequest on SIGINT.
    let conn = format!(
        "host=127.0.0.1 port={} user=anyone dbname=app sslmode=require",
        w.pg.port
    );
    let bin = w.pg.bin.join("psql");
    let child = in_cgroup(
        &w.unit,
        &[
            bin.to_str().expect("utf-8"),
            "-X",
            "-d",
            &conn,
            "-c",
            "SELECT pg_sleep(30)",
        ],
    )
    .env_remove("PGPASSWORD")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("psql");
    let (_pid, _port) = w.pg.wait_for_active_query("app", "pg_sleep(30)");
    // psql is the child of `sh -c ... exec psql`: same pid.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let out = child.wait_with_output().expect("psql cancel");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("canceling statement due to user request"),
        "{err}"
    );
    assert!(
        w.agent
            .audit()
            .iter()
            .any(|r| r["event"] == "statement_cancel" && r["error"].is_null())
    );
    // Wrong credentials: the client hears that the agent's credentials were
    // refused, never the password; the audit record has the server's reason.
    write_credential(&w.creds.0, "app-db", "app", "not-the-password");
    let (ok, _, err) = psql(
        &w,
        "anyone",
        &["-c", "SELECT 1"],
        None,
        &[("PGSSLMODE", "require")],
    );
    assert!(!ok);
    assert!(
        err.contains("refused the agent's credentials `app-db` (database user `app`"),
        "{err}"
    );
    assert!(!err.contains("not-the-password"), "{err}");
    // A credential file others can read is refused before any login.
    write_credential(&w.creds.0, "app-db", "app", &pg::password("app"));
    std::fs::set_permissions(
        w.creds.0.join("app-db.yaml"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let (ok, _, err) = psql(
        &w,
        "anyone",
        &["-c", "SELECT 1"],
        None,
        &[("PGSSLMODE", "require")],
    );
    assert!(!ok);
    assert!(err.contains("cannot use its credentials `app-db`"), "{err}");
    let conns = w.agent.connections(5);
    assert!(
        conns.iter().any(|c| c["end"] == "upstream_auth_failed"
            && c["error"].as_str().is_some_and(|e| e.contains("28P01"))),
        "{conns:#?}"
    );
    assert!(
        conns.iter().any(|c| c["end"] == "credentials_error"
            && c["error"].as_str().is_some_and(|e| e.contains("chmod 600"))),
        "{conns:#?}"
    );
    assert!(
        conns.iter().any(|c| c["end"] == "tls_required"),
        "{conns:#?}"
    );
    let auth = events(&w, "authentication");
    assert!(
        auth.iter()
            .any(|a| a["outcome"] == "failure" && a["upstream_user"] == "app"),
        "{auth:#?}"
    );
    let log = std::fs::read_to_string(w.agent.audit_path()).unwrap_or_default();
    assert!(!log.contains("not-the-password") && !log.contains(&pg::password("app")));
}

#[test]
fn a_kill_rule_ends_the_session_and_nothing_after_it_runs() {
    let Some(w) = world(
        "a_kill_rule_ends_the_session_and_nothing_after_it_runs",
        PgOpts::default(),
        |port| {
            policy(
                port,
                "    credentials: app-db\n",
                "enforce",
                "  - id: kill-on-server-files\n    workloads: [clients]\n    targets: [app-db]\n    effect: kill\n    when: { sql: { functions: [\"pg_read_file\"] } }\n",
            )
        },
        "",
    ) else {
        return;
    };
    let (ok, out, err) = psql(
        &w,
        "anyone",
        &[
            "-c",
            "SELECT 'before' AS b",
            "-c",
            "SELECT pg_read_file('/etc/passwd')",
            "-c",
            "SELECT 'after' AS a",
        ],
        None,
        &[],
    );
    assert!(!ok, "{out}{err}");
    assert!(out.contains("before") && !out.contains("after"), "{out}");
    assert!(
        err.contains("session ended by rule `kill-on-server-files`"),
        "{err}"
    );
    let conns = w.agent.connections(1);
    assert!(conns.iter().any(|c| c["end"] == "killed"), "{conns:#?}");
    let recs = statements(&w);
    let k = record_for(&recs, "SELECT pg_read_file('/etc/passwd')");
    assert_eq!(k["decision"], "kill", "{k:#}");
    assert_eq!(k["outcome"], "refused", "{k:#}");
}

#[test]
fn a_search_path_set_in_the_startup_packet_is_followed() {
    let Some(w) = world(
        "a_search_path_set_in_the_startup_packet_is_followed",
        PgOpts::default(),
        |port| {
            policy(
                port,
                "    credentials: app-db\n",
                "enforce",
                "  - id: no-private\n    workloads: [clients]\n    targets: [app-db]\n    effect: deny\n    when: { sql: { tables: [\"private.*\"] } }\n",
            )
        },
        "",
    ) else {
        return;
    };
    w.pg.superuser_sql(
        "CREATE SCHEMA private AUTHORIZATION app; CREATE TABLE private.accounts (id int); GRANT ALL ON private.accounts TO app;",
    );
    // Unqualified `accounts` resolves to private.accounts for this session.
    let (ok, out, err) = psql(
        &w,
        "anyone",
        &["-c", "SELECT count(*) FROM accounts"],
        None,
        &[("PGOPTIONS", "-c search_path=private")],
    );
    assert!(!ok, "{out}");
    assert!(err.contains("rule `no-private`"), "{err}");
    // Without it, the same text reads public.accounts.
    let (ok, out, err) = psql(
        &w,
        "anyone",
        &["-c", "SELECT count(*) FROM accounts"],
        None,
        &[],
    );
    assert!(ok, "{out}{err}");
}

#[test]
fn function_calls_by_oid_are_refused_as_uncheckable() {
    let Some(w) = world(
        "function_calls_by_oid_are_refused_as_uncheckable",
        PgOpts::default(),
        |port| policy(port, "    credentials: app-db\n", "enforce", SQL_RULES),
        "",
    ) else {
        return;
    };
    // libpq's large-object calls use the FunctionCall message.
    let (ok, out, err) = psql(
        &w,
        "anyone",
        &["-c", "\\lo_import /etc/hostname"],
        None,
        &[],
    );
    assert!(!ok, "{out}");
    assert!(err.contains("FunctionCall"), "{err}");
    let recs = statements(&w);
    assert!(
        recs.iter().any(|r| r["message"] == "function_call"
            && r["decision"] == "deny"
            && r["rule"] == "unparseable"),
        "{recs:#?}"
    );
}

#[test]
fn recordings_hold_no_result_values_where_masks_apply() {
    let Some(w) = world(
        "recordings_hold_no_result_values_where_masks_apply",
        PgOpts::default(),
        |port| {
            format!(
                "{}masks:\n  - id: ssn\n    targets: [app-db]\n    columns: [\"public.accounts.ssn\"]\n",
                policy(port, "    credentials: app-db\n", "enforce", "")
            )
        },
        "",
    ) else {
        return;
    };
    let (ok, out, err) = psql(
        &w,
        "anyone",
        &["-c", "SELECT owner, ssn FROM accounts WHERE id = 1"],
        None,
        &[],
    );
    assert!(ok, "{err}");
    assert!(out.contains("alice"), "{out}");
    let conns = w.agent.connections(1);
    let c = conns
        .iter()
        .find(|c| c["session"]["protocol"] == "postgres")
        .expect("postgres session");
    let file = c["recording"]["file"].as_str().expect("recording file");
    let text = std::fs::read_to_string(file).expect("read recording");
    assert!(text.contains("SELECT owner, ssn FROM accounts"), "{text}");
    assert!(text.contains("values_withheld"), "{text}");
    assert!(
        !text.contains("123-45-6789") && !text.contains("alice"),
        "{text}"
    );
}

#[test]
fn agent_held_credentials_log_in_with_md5_and_cleartext_too() {
    let Some(w) = world(
        "agent_held_credentials_log_in_with_md5_and_cleartext_too",
        PgOpts::default(),
        |port| policy(port, "    credentials: app-db\n", "enforce", ""),
        "",
    ) else {
        return;
    };
    // The credential file is read for every session: switch it between logins.
    for (role, method) in [
        ("legacy", "md5"),
        ("plain", "password"),
        ("app", "scram-sha-256"),
    ] {
        write_credential(&w.creds.0, "app-db", role, &pg::password(role));
        let (ok, out, err) = psql(
            &w,
            "anyone",
            &["-A", "-t", "-c", "SELECT current_user"],
            None,
            &[],
        );
        assert!(ok, "{role}: {err}");
        assert_eq!(out.trim(), role, "{out}");
        let auth: Vec<Value> = events(&w, "authentication")
            .into_iter()
            .filter(|r| r["upstream_user"] == role)
            .collect();
        assert!(
            auth.iter()
                .any(|a| a["method"] == method && a["outcome"] == "success"),
            "{role}: {auth:#?}"
        );
    }
}

#[test]
fn monitor_mode_lets_refusable_statements_through_and_records_them() {
    let Some(w) = world(
        "monitor_mode_lets_refusable_statements_through_and_records_them",
        PgOpts::default(),
        |port| policy(port, "    credentials: app-db\n", "monitor", SQL_RULES),
        "",
    ) else {
        return;
    };
    let (ok, out, err) = psql(
        &w,
        "anyone",
        &[
            "-c",
            "DELETE FROM orders",
            "-c",
            "SELECT count(*) FROM orders",
        ],
        None,
        &[],
    );
    assert!(ok, "{err}");
    assert!(out.contains("DELETE 4"), "{out}");
    let recs = statements(&w);
    let del = record_for(&recs, "DELETE FROM orders");
    assert_eq!(del["decision"], "would_deny", "{del:#}");
    assert_eq!(del["rule"], "no-where-less", "{del:#}");
    assert_eq!(del["outcome"], "forwarded", "{del:#}");
    assert_eq!(outcome_of(&w, del)["outcome"], "ok", "{del:#}");
}

#[test]
fn bytes_the_codec_does_not_understand_end_the_session_with_an_error() {
    let Some(w) = world(
        "bytes_the_codec_does_not_understand_end_the_session_with_an_error",
        PgOpts::default(),
        |port| policy(port, "    credentials: app-db\n", "enforce", SQL_RULES),
        "pg_max_message_bytes: 65536\n",
    ) else {
        return;
    };
    // A raw client: startup, then an unknown message type; then, on a second
    // connection, a Query claiming 1 GiB.
    let script = r#"
import socket, struct, sys
def session(payload):
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    params = b"user\0raw\0database\0app\0\0"
    s.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
    buf = b""
    while b"Z\0\0\0\x05I" not in buf:
        d = s.recv(65536)
        if not d:
            break
        buf += d
    s.sendall(payload)
    out = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        out += d
    return out
a = session(b"?\0\0\0\x04")
b = session(b"Q" + struct.pack("!i", 1 << 30) + b"SELECT")
print(repr(a))
print(repr(b))
# A refused statement sent one byte per TCP segment, then Terminate.
import time
q = b"DELETE FROM orders\0"
msg = b"Q" + struct.pack("!i", 4 + len(q)) + q
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
params = b"user\0raw\0database\0app\0\0"
s.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
buf = b""
while b"Z\0\0\0\x05I" not in buf:
    d = s.recv(65536)
    if not d:
        break
    buf += d
for i in range(len(msg)):
    s.send(msg[i:i + 1])
    time.sleep(0.002)
out = b""
while b"Z\0\0\0\x05" not in out:
    d = s.recv(65536)
    if not d:
        break
    out += d
s.sendall(b"X\0\0\0\x04")
print(repr(out))
"#;
    let port = w.pg.port.to_string();
    let out = in_cgroup(&w.unit, &["python3", "-c", script, &port])
        .output()
        .expect("python");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        3,
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        lines[0].contains("08P01") && lines[0].contains("unexpected message type"),
        "{text}"
    );
    assert!(
        lines[1].contains("08P01") && lines[1].contains("larger than the maximum of 65536"),
        "{text}"
    );
    // Split across 24 reads, the statement is still decided as a whole: refused,
    // and the session answers ReadyForQuery.
    assert!(
        lines[2].contains("42501") && lines[2].contains("no-where-less"),
        "{text}"
    );
    let conns = w.agent.connections(3);
    let ends: Vec<&str> = conns.iter().filter_map(|c| c["end"].as_str()).collect();
    assert_eq!(
        ends.iter().filter(|e| **e == "protocol_error").count(),
        2,
        "{conns:#?}"
    );
}

#[test]
fn a_recorded_session_replays_its_statements_and_results_in_order() {
    let Some(w) = world(
        "a_recorded_session_replays_its_statements_and_results_in_order",
        PgOpts::default(),
        |port| policy(port, "    credentials: app-db\n", "enforce", SQL_RULES),
        "",
    ) else {
        return;
    };
    let (_, _, err) = psql(
        &w,
        "anyone",
        &[
            "-c",
            "SELECT id, owner FROM accounts WHERE id IN (1, 2) ORDER BY id",
            "-c",
            "DELETE FROM orders",
            "-c",
            "SELECT 'after' AS note",
        ],
        None,
        &[],
    );
    assert!(err.contains("no-where-less"), "{err}");
    let conns = w.agent.connections(1);
    let c = conns
        .iter()
        .find(|c| c["session"]["protocol"] == "postgres")
        .expect("postgres session");
    let id = c["session_id"].as_str().expect("session id");
    let dir = w.agent.state_dir.join("sessions");
    let replay = Command::new(portcullis_tests::agent_bin())
        .args([
            "replay",
            "--dir",
            dir.to_str().expect("utf-8"),
            "--speed",
            "0",
            id,
        ])
        .output()
        .expect("run portcullis replay");
    let text = String::from_utf8_lossy(&replay.stdout);
    assert!(
        replay.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let order = [
        "SELECT id, owner FROM accounts WHERE id IN (1, 2) ORDER BY id",
        "alice",
        "bob",
        "(2 rows)",
        "DELETE FROM orders",
        "42501",
        "SELECT 'after' AS note",
        "after",
    ];
    let mut at = 0;
    for want in order {
        match text[at..].find(want) {
            Some(i) => at += i + want.len(),
            None => panic!("replay lacks {want:?} after byte {at}:\n{text}"),
        }
    }
    // The recording's hash is in the connection record and matches the file.
    let sha = c["recording"]["sha256"].as_str().expect("recording sha256");
    let file = c["recording"]["file"].as_str().expect("recording file");
    let bytes = std::fs::read(file).expect("read recording");
    use sha2::Digest;
    let got: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(got, sha);
}

// ---- the SQL evasion corpus, through the real proxy and a real server -----------------------

#[test]
fn evasion_corpus_through_the_proxy_to_a_real_server() {
    let test = "evasion_corpus_through_the_proxy_to_a_real_server";
    let corpus_path = portcullis_tests::repo_root().join("tests/corpus/sql-evasion.yaml");
    let corpus: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&corpus_path).expect("read the corpus"))
            .expect("corpus is YAML");
    let template = corpus["policy"]
        .as_str()
        .expect("corpus policy")
        .to_string();
    let target = corpus["target"]
        .as_str()
        .expect("corpus target")
        .to_string();
    let Some(w) = world(
        test,
        PgOpts::default(),
        |port| {
            template
                .replace("{{ADDRESS}}", "127.0.0.1")
                .replace("{{PORT}}", &port.to_string())
                .replace("{{UID}}", "0")
                .replace(
                    "      protocol: postgres\n",
                    "      protocol: postgres\n      credentials: app-db\n",
                )
        },
        "",
    ) else {
        return;
    };
    // What the corpus assumes exists (a refused statement never reaches it).
    w.pg.superuser_sql(
        "CREATE SCHEMA private AUTHORIZATION app;
         CREATE TABLE private.accounts (id int, balance int, owner text);
         CREATE TABLE public.audit (id int, balance int, owner text);
         GRANT ALL ON ALL TABLES IN SCHEMA public, private TO app;
         CREATE FUNCTION public.f() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;",
    );
    let cases = corpus["cases"].as_array().expect("corpus cases");
    assert!(cases.len() >= 40, "the corpus has {} cases", cases.len());
    // Group: cases sharing `session` run in order on one connection; others alone.
    let mut groups: Vec<Vec<&Value>> = Vec::new();
    let mut named: std::collections::BTreeMap<String, usize> = Default::default();
    for c in cases {
        match c["session"].as_str() {
            Some(s) => match named.get(s) {
                Some(&i) => groups[i].push(c),
                None => {
                    named.insert(s.to_string(), groups.len());
                    groups.push(vec![c]);
                }
            },
            None => groups.push(vec![c]),
        }
    }
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_pc-pgclient"));
    let mut wrong = Vec::new();
    for g in &groups {
        let steps: Vec<Value> = g.iter().map(|c| json!({"try": c["sql"]})).collect();
        let r =
            w.pg.tokio_client(&w.unit, &bin, "app", &Value::Array(steps));
        for (i, c) in g.iter().enumerate() {
            let res = &r["steps"][i];
            let rule = c["rule"].as_str().unwrap_or("");
            // An EXECUTE of an unknown name is answered as the server answers it.
            let sqlstate = if rule == "unknown-prepared-statement" {
                "26000"
            } else {
                "42501"
            };
            let refused = res["ok"] == false
                && res["sqlstate"] == sqlstate
                && res["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("Portcullis"));
            let expect_deny = c["expect"] == "deny";
            let msg = res["error"].as_str().unwrap_or("");
            let rule_ok = !expect_deny
                || msg.contains(&format!("rule `{rule}`"))
                || (rule == "unparseable" && msg.contains("could not be parsed"))
                || (rule == "unknown-prepared-statement" && msg.contains("has not prepared"));
            if refused != expect_deny || !rule_ok {
                wrong.push(format!(
                    "{:?}: expected {} by {rule}, got {res}",
                    c["sql"].as_str().unwrap_or(""),
                    c["expect"].as_str().unwrap_or("")
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} corpus cases decided otherwise through the proxy (target {target}):\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

#[test]
fn statements_are_refused_while_the_audit_log_cannot_take_records() {
    let test = "statements_are_refused_while_the_audit_log_cannot_take_records";
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
    // Declared first: unmounted after the agent has stopped.
    let fs = portcullis_tests::Tmpfs::mount("8m");
    let cg = TestCgroup::new();
    let unit = cg.unit("pgclients");
    let pg = PgServer::start(PgOpts::default());
    let creds = TempDir::new("portcullis-test-creds");
    write_credential(&creds.0, "app-db", "app", &pg::password("app"));
    let agent = Agent::start(
        &cg.slice,
        &policy(pg.port, "    credentials: app-db\n", "enforce", ""),
        AgentOpts {
            state_dir: Some(fs.path.join("state")),
            extra_config: format!("credentials_dir: {}\n", creds.0.display()),
            ..AgentOpts::default()
        },
    );
    // A session that stays open: one query, then another when told.
    let script = r#"
import socket, struct, sys
def query(s, q):
    q = q.encode() + b"\0"
    s.sendall(b"Q" + struct.pack("!i", 4 + len(q)) + q)
    out = b""
    while b"Z\0\0\0\x05" not in out:
        d = s.recv(65536)
        if not d:
            break
        out += d
    return out
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
params = b"user\0raw\0database\0app\0\0"
s.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
buf = b""
while b"Z\0\0\0\x05I" not in buf:
    d = s.recv(65536)
    if not d:
        break
    buf += d
print(repr(query(s, "SELECT 'first'")), flush=True)
sys.stdin.readline()
print(repr(query(s, "SELECT 'second'")), flush=True)
sys.stdin.readline()
print(repr(query(s, "SELECT 'third'")), flush=True)
"#;
    let port = pg.port.to_string();
    let mut child = in_cgroup(&unit, &["python3", "-c", script, &port])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python client");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(
        child.stdout.take().expect("stdout"),
    ));
    let mut next = || lines.next().and_then(Result::ok).unwrap_or_default();
    let first = next();
    assert!(first.contains("first"), "{first}");
    // Fill the file system under the audit log.
    let filler = fs.path.join("filler");
    {
        let mut f = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![0x55u8; 64 * 1024];
        while let Ok(n) = f.write(&chunk) {
            if n == 0 {
                break;
            }
        }
        let _ = f.sync_all();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while agent.status()["audit"]["healthy"] != false {
        assert!(
            std::time::Instant::now() < deadline,
            "the audit log never reported unhealthy"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    stdin.write_all(b"go\n").expect("tell the client");
    let second = next();
    assert!(
        second.contains("42501") && second.contains("audit log is not accepting records"),
        "{second}"
    );
    // A new connection meanwhile is told why, as a server would, and never
    // reaches the server (SQLSTATE 53000 from tokio-postgres, the message from psql).
    let before = pg.tcp_connections_received();
    let pc = PathBuf::from(env!("CARGO_BIN_EXE_pc-pgclient"));
    let r = pg.tokio_client(&unit, &pc, "app", &json!([{"query": "SELECT 1"}]));
    assert_eq!(r["ok"], false, "{r:#}");
    assert_eq!(r["sqlstate"], "53000", "{r:#}");
    let out = pg.psql(&unit, &["-c", "SELECT 1"], None);
    assert!(!out.ok(), "{out:?}");
    assert!(
        out.stderr.contains("FATAL:")
            && out
                .stderr
                .contains("connection refused by rule `audit-unavailable` (target app-db)"),
        "{}",
        out.stderr
    );
    assert_eq!(pg.tcp_connections_received(), before, "{}", pg.log());
    // Space returns: the same session is served again.
    std::fs::remove_file(&filler).expect("remove filler");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while agent.status()["audit"]["healthy"] != true {
        assert!(
            std::time::Instant::now() < deadline,
            "the audit log never recovered"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    stdin.write_all(b"go\n").expect("tell the client");
    let third = next();
    assert!(
        third.contains("third") && !third.contains("42501"),
        "{third}"
    );
    let _ = child.wait();
    drop(agent);
    drop(pg);
}

#[test]
fn the_client_sees_the_servers_pid_and_cancel_and_terminate_use_it() {
    let Some(w) = world(
        "the_client_sees_the_servers_pid_and_cancel_and_terminate_use_it",
        PgOpts::default(),
        |port| policy(port, "    credentials: app-db\n", "enforce", ""),
        "",
    ) else {
        return;
    };
    let r = w.pg.psycopg_client(
        &w.unit,
        "app",
        &json!([
            {"backend_pid": true},
            {"listen_notify": "portcullis_events", "payload": "hello"},
            {"cancel": "SELECT pg_sleep(30)"},
            {"backend_pid": true},
            {"terminate_self": true}
        ]),
    );
    assert_eq!(r["ok"], true, "{r:#}");
    let s = &r["steps"];
    // BackendKeyData carried the server's own pid: what the server says it is,
    // and what its notifications carry.
    let pid = s[0]["backend_pid"].as_i64().expect("backend_pid");
    assert_eq!(s[0]["pg_backend_pid"], pid, "{r:#}");
    assert_eq!(s[1]["channel"], "portcullis_events", "{r:#}");
    assert_eq!(s[1]["payload"], "hello", "{r:#}");
    assert_eq!(s[1]["pid"], pid, "NotificationResponse pid: {r:#}");
    // The cancel (server pid, agent secret) reached that backend.
    assert_eq!(s[2]["cancelled"], true, "{r:#}");
    assert_eq!(s[2]["backend_pid"], pid, "{r:#}");
    assert_eq!(s[3]["pg_backend_pid"], pid, "same session after the cancel");
    // pg_terminate_backend of that pid from another session ends this one.
    assert_eq!(s[4]["terminated"], true, "{r:#}");
    assert_eq!(s[4]["backend_pid"], pid, "{r:#}");
    assert_eq!(s[4]["closed"], true, "{r:#}");
    assert_eq!(
        w.pg.superuser_sql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"
        )),
        "0",
        "the terminated backend is gone"
    );
    let cancels = events(&w, "statement_cancel");
    assert!(
        cancels.iter().any(|c| c["error"].is_null()),
        "the cancel was forwarded: {cancels:#?}"
    );
    // The client never saw the server's secret: BackendKeyData is rewritten,
    // and no record holds a key.
    let log = std::fs::read_to_string(w.agent.audit_path()).unwrap_or_default();
    assert!(!log.contains("\"secret\""), "a cancel key reached the log");
}

/// psql as database user `app` from cgroup `cg` to `port` with libpq's default
/// sslmode (`prefer`: an SSLRequest first); (success, stderr).
fn psql_from(w: &World, cg: &Path, port: u16) -> (bool, String) {
    let conn = format!("host=127.0.0.1 port={port} user=app dbname=app connect_timeout=10");
    let bin = w.pg.bin.join("psql");
    let out = in_cgroup(
        cg,
        &[
            bin.to_str().expect("utf-8"),
            "-X",
            "-w",
            "-d",
            &conn,
            "-c",
            "SELECT 1",
        ],
    )
    .env_remove("PGSSLMODE")
    .env_remove("PGPASSWORD")
    .stdin(Stdio::null())
    .output()
    .expect("run psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Connects from cgroup `cg` to the database port and sends nothing; returns
/// what the agent did once it gave up waiting (`closed` with no bytes).
const SILENT_CLIENT: &str = r#"
import json, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.settimeout(60)
try:
    got = s.recv(1024)
    print(json.dumps({"closed": got == b"", "bytes": len(got)}), flush=True)
except ConnectionResetError:
    print(json.dumps({"closed": True, "bytes": 0, "reset": True}), flush=True)
except socket.timeout:
    print(json.dumps({"closed": False, "bytes": 0}), flush=True)
"#;

#[test]
fn a_connection_refused_by_policy_gets_a_fatal_error_and_never_reaches_the_server() {
    let l4 = portcullis_tests::Server::start("127.0.0.1:0", portcullis_tests::Reply::Echo, None);
    let l4_port = l4.port();
    let Some(w) = world(
        "a_connection_refused_by_policy_gets_a_fatal_error_and_never_reaches_the_server",
        PgOpts::default(),
        |port| {
            format!(
                "apiVersion: portcullis.dev/v1\nmode: enforce\nworkloads:\n  - name: clients\n    match: {{ unit: \"pgclients.service\" }}\n  - name: banned\n    match: {{ unit: \"banned.service\" }}\n  - name: held\n    match: {{ unit: \"held.service\" }}\ntargets:\n  - name: app-db\n    addresses: [\"127.0.0.1\"]\n    ports: [{port}]\n    protocol: postgres\n    credentials: app-db\n  - name: l4-svc\n    addresses: [\"127.0.0.1\"]\n    ports: [{l4_port}]\n    protocol: tcp\nrules:\n  - id: {CONNECT_RULE}\n    workloads: [clients]\n    targets: [app-db]\n    effect: allow\n  - id: no-banned\n    workloads: [banned]\n    targets: [app-db]\n    effect: deny\n  - id: held-needs-approval\n    workloads: [held]\n    targets: [app-db]\n    effect: require_approval\n    approval: {{ approvers: [dba], timeout: 5m }}\n"
            )
        },
        "",
    ) else {
        return;
    };
    let port = w.pg.port;
    let other = w.cg.unit("other");
    // psql, as libpq does by default (SSLRequest, answered N, then the startup):
    // a FATAL naming the rule and why, not a dropped connection.
    for (unit, rule, why) in [
        (
            "other",
            "default-deny",
            "no rule allows uid 0 (unit other.service) to connect",
        ),
        (
            "banned",
            "no-banned",
            "the rule denies connections from uid 0 (unit banned.service)",
        ),
        ("held", "held-needs-approval", "need approval"),
    ] {
        let (ok, err) = psql_from(&w, &w.cg.unit(unit), port);
        eprintln!("psql from {unit}.service: {}", err.trim());
        assert!(!ok, "{unit}: psql got through: {err}");
        assert!(err.contains("FATAL:"), "{unit}: {err}");
        assert!(
            err.contains(&format!(
                "Portcullis: connection refused by rule `{rule}` (target app-db)"
            )),
            "{unit}: {err}"
        );
        assert!(err.contains(why), "{unit}: {err}");
        assert!(
            !err.contains("server closed the connection unexpectedly"),
            "{unit}: {err}"
        );
    }
    // psycopg: the same refusal (libpq reports no SQLSTATE for a failed
    // connection; tokio-postgres below reads it).
    let r =
        w.pg.psycopg_client(&other, "app", &json!([{"query": "SELECT 1"}]));
    assert_eq!(r["ok"], false, "{r:#}");
    let e = r["error"].as_str().unwrap_or_default();
    assert!(e.contains("FATAL") && e.contains("`default-deny`"), "{r:#}");
    // tokio-postgres: SQLSTATE 28000, invalid_authorization_specification.
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_pc-pgclient"));
    let r =
        w.pg.tokio_client(&other, &bin, "app", &json!([{"query": "SELECT 1"}]));
    assert_eq!(r["ok"], false, "{r:#}");
    assert_eq!(r["sqlstate"], "28000", "{r:#}");
    // A client that never sends its startup is closed, unanswered.
    let out = in_cgroup(&other, &["python3", "-c", SILENT_CLIENT, &port.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("silent client");
    let silent = portcullis_tests::last_json_line(&out, "silent client");
    assert_eq!(silent["closed"], true, "{silent}");
    assert_eq!(silent["bytes"], 0, "{silent}");
    // None of these reached the server.
    assert_eq!(
        w.pg.tcp_connections_received(),
        0,
        "the server saw a refused connection; log:\n{}",
        w.pg.log()
    );
    // A target of another protocol keeps the close: psql sees the connection
    // dropped, with no PostgreSQL error, and the server there saw nothing.
    let (ok, err) = psql_from(&w, &other, l4_port);
    assert!(!ok, "{err}");
    assert!(!err.contains("FATAL"), "{err}");
    assert!(
        err.contains("server closed the connection unexpectedly")
            || err.contains("Connection reset by peer"),
        "{err}"
    );
    assert_eq!(
        l4.accepted.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the L4 server saw a refused connection"
    );
    // The audit records are those of any refusal.
    let conns = w.agent.connections(9);
    for (unit, rule, n) in [
        ("other.service", "default-deny", 4),
        ("banned.service", "no-banned", 1),
        ("held.service", "held-needs-approval", 1),
    ] {
        let recs: Vec<&Value> = conns
            .iter()
            .filter(|c| {
                c["attribution"]["unit"] == unit && c["target"] == "app-db" && c["rule"] == rule
            })
            .collect();
        assert_eq!(recs.len(), n, "{unit}: {conns:#?}");
        for c in recs {
            assert_eq!(c["decision"], "deny", "{c:#}");
            assert_eq!(c["end"], "refused", "{c:#}");
            assert_eq!(c["bytes_client_to_upstream"], 0, "{c:#}");
            assert!(c.get("session").is_none(), "{c:#}");
        }
    }
    assert!(
        conns
            .iter()
            .any(|c| c["target"] == "l4-svc" && c["rule"] == "default-deny"),
        "{conns:#?}"
    );
}

#[test]
fn beyond_max_connections_a_client_is_told_53300_and_refusals_take_no_slot() {
    let Some(w) = world(
        "beyond_max_connections_a_client_is_told_53300_and_refusals_take_no_slot",
        PgOpts::default(),
        |port| policy(port, "    credentials: app-db\n", "enforce", ""),
        "max_connections: 1\n",
    ) else {
        return;
    };
    let port = w.pg.port.to_string();
    // A refused client that says nothing waits for its answer without a slot.
    let other = w.cg.unit("other");
    let silent = in_cgroup(&other, &["python3", "-c", SILENT_CLIENT, &port])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("silent client");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !w
        .agent
        .connections(1)
        .iter()
        .any(|c| c["attribution"]["unit"] == "other.service")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the silent client was never refused"
        );
    }
    // The one slot: a session running a long query.
    let bin = w.pg.bin.join("psql");
    let conn = format!("host=127.0.0.1 port={port} user=app dbname=app connect_timeout=10");
    let mut long = in_cgroup(
        &w.unit,
        &[
            bin.to_str().expect("utf-8"),
            "-X",
            "-d",
            &conn,
            "-c",
            "SELECT pg_sleep(60)",
        ],
    )
    .env("PGSSLMODE", "disable")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("long psql");
    w.pg.wait_for_active_query("app", "pg_sleep");
    let (ok, err) = psql_from(&w, &w.unit, w.pg.port);
    assert!(!ok, "{err}");
    assert!(err.contains("FATAL:"), "{err}");
    assert!(
        err.contains("connection refused by rule `max-connections` (target app-db)"),
        "{err}"
    );
    let pc = PathBuf::from(env!("CARGO_BIN_EXE_pc-pgclient"));
    let r =
        w.pg.tokio_client(&w.unit, &pc, "app", &json!([{"query": "SELECT 1"}]));
    assert_eq!(r["sqlstate"], "53300", "{r:#}");
    let _ = long.kill();
    let _ = long.wait();
    let out = silent.wait_with_output().expect("silent client");
    let s = portcullis_tests::last_json_line(&out, "silent client");
    assert_eq!(s["closed"], true, "{s}");
    // Only the long session reached the server.
    assert_eq!(w.pg.tcp_connections_received(), 1, "{}", w.pg.log());
    let conns = w.agent.connections(4);
    assert_eq!(
        conns
            .iter()
            .filter(|c| c["rule"] == "max-connections" && c["decision"] == "deny")
            .count(),
        2,
        "{conns:#?}"
    );
}
