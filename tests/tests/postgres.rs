//! Privileged end-to-end tests with a real PostgreSQL and real clients (psql,
//! pgbench, tokio-postgres, psycopg 3) running inside a test cgroup, every
//! connection redirected through the real agent.
//!
//! The target's protocol comes from [`protocol()`]: `postgres` (the protocol-aware
//! proxy, relaying each client's own login) unless `PORTCULLIS_PG_PROTOCOL` says
//! otherwise (`tcp`: the L4 relay), so the same clients prove both paths.
//!
//! Every test proves the path two ways: the server's `log_connections` count of TCP
//! connections equals the agent's `connection` records for the database (nothing
//! reached it directly), and every record is an allow attributed to the client
//! program that made it.

use std::path::PathBuf;

use portcullis_tests::pg::{self, ACCOUNTS, PgOpts, PgServer, pgbench_counts, socket_owner};
use portcullis_tests::{Agent, AgentOpts, TempDir, TestCgroup, ci, privileged};
use serde_json::{Value, json};

/// The target protocol the policies use unless `PORTCULLIS_PG_PROTOCOL` is set.
const PROTOCOL: &str = "postgres";
const RULE: &str = "clients-may-use-app-db";

fn protocol() -> String {
    std::env::var("PORTCULLIS_PG_PROTOCOL").unwrap_or_else(|_| PROTOCOL.to_string())
}

fn pg_policy(pg: &PgServer) -> String {
    let port = pg.port;
    // The protocol-aware proxy speaks TLS to a server that requires it, checking
    // its certificate against the test CA.
    let tls = match (&pg.ca, protocol().as_str()) {
        (Some(ca), "postgres") => format!(
            "    tls: {{ upstream: verify-full, ca_file: {} }}\n",
            ca.display()
        ),
        _ => String::new(),
    };
    format!(
        "apiVersion: portcullis.dev/v1\nworkloads:\n  - name: pg-clients\n    match: {{ unit: \"pgclients.service\" }}\ntargets:\n  - name: app-db\n    addresses: [\"127.0.0.1\"]\n    ports: [{port}]\n    protocol: {}\n{tls}rules:\n  - id: {RULE}\n    workloads: [pg-clients]\n    targets: [app-db]\n    effect: allow\n",
        protocol()
    )
}

fn pc_pgclient() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pc-pgclient"))
}

/// One test's world. Fields drop in order: agent, server, cgroup.
struct Env {
    agent: Agent,
    pg: PgServer,
    unit: PathBuf,
    cg: TestCgroup,
}

fn env(test: &str, opts: PgOpts) -> Option<Env> {
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
    let agent = Agent::start(&cg.slice, &pg_policy(&pg), AgentOpts::default());
    Some(Env {
        agent,
        pg,
        unit,
        cg,
    })
}

/// Every TCP connection the server accepted came through the agent, allowed by
/// the rule, from a program whose path contains `exe`; returns the records.
fn assert_all_through_agent(e: &Env, at_least: usize, exe: &str) -> Vec<Value> {
    let received = e.pg.tcp_connections_received();
    assert!(
        received >= at_least,
        "the server accepted {received} TCP connections, expected at least {at_least}; log:\n{}",
        e.pg.log()
    );
    let dst = format!("127.0.0.1:{}", e.pg.port);
    let recs: Vec<Value> = e
        .agent
        .connections(received)
        .into_iter()
        .filter(|r| r["original_destination"] == dst.as_str())
        .collect();
    assert_eq!(
        recs.len(),
        received,
        "the server accepted {received} TCP connections but the agent recorded {} to {dst}: some did not go through it\nrecords: {recs:#?}\nagent log:\n{}",
        recs.len(),
        e.agent.log()
    );
    for r in &recs {
        assert_eq!(r["decision"], "allow", "{r:#}");
        assert_eq!(r["rule"], RULE, "{r:#}");
        assert_eq!(r["attribution"]["unit"], "pgclients.service", "{r:#}");
        assert!(
            r["attribution"]["exe"]
                .as_str()
                .is_some_and(|x| x.contains(exe)),
            "expected a connection from {exe}: {r:#}"
        );
        assert!(
            !r.to_string().contains("-Secret-1"),
            "a password reached the audit log: {r:#}"
        );
    }
    recs
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect()
}

#[test]
fn psql_statements_copy_and_every_password_method_through_the_agent() {
    let Some(e) = env(
        "psql_statements_copy_and_every_password_method_through_the_agent",
        PgOpts::default(),
    ) else {
        return;
    };
    let u = &e.unit;

    // Several statements in one -c: psql sends them as one simple-protocol query.
    let out = e.pg.psql(
        u,
        &[
            "-A",
            "-t",
            "-c",
            "SELECT count(*) FROM accounts; SELECT owner FROM accounts WHERE id = 2; SELECT revenue FROM reports.daily ORDER BY day LIMIT 1",
        ],
        None,
    );
    out.assert_ok("psql -c with three statements");
    assert_eq!(
        lines(&out.stdout),
        [ACCOUNTS.to_string().as_str(), "bob", "53.50"],
        "{out:?}"
    );

    // A script on stdin: a transaction, then a query.
    let out = e.pg.psql(
        u,
        &["-q", "-A", "-t"],
        Some(
            "BEGIN;\nINSERT INTO orders (account_id, item, amount) VALUES (3, 'cup', 2.50);\nUPDATE accounts SET balance = balance - 2.50 WHERE id = 3;\nCOMMIT;\nSELECT count(*) FROM orders;\nSELECT balance FROM accounts WHERE id = 3;\n",
        ),
    );
    out.assert_ok("psql script on stdin");
    assert_eq!(lines(&out.stdout), ["5", "-2.50"], "{out:?}");

    // \copy out to a client-side file, and \copy in from one.
    let dir = TempDir::new("portcullis-test-pgcopy");
    let out_file = dir.0.join("accounts.tsv");
    let out = e.pg.psql(
        u,
        &[
            "-c",
            &format!(
                "\\copy (SELECT id, owner FROM accounts ORDER BY id) TO '{}'",
                out_file.display()
            ),
        ],
        None,
    );
    out.assert_ok("psql \\copy out");
    let copied = std::fs::read_to_string(&out_file).expect("\\copy output file");
    assert_eq!(
        copied.lines().collect::<Vec<_>>(),
        ["1\talice", "2\tbob", "3\tcarol", "4\tdave", "5\terin"]
    );
    let in_file = dir.0.join("new.tsv");
    std::fs::write(
        &in_file,
        "10\tzed\t1.00\t\\N\t\\N\n11\tyan\t2.00\t000-00-0000\t4000000000000002\n",
    )
    .expect("write \\copy input");
    let out = e.pg.psql(
        u,
        &[
            "-c",
            &format!("\\copy accounts FROM '{}'", in_file.display()),
        ],
        None,
    );
    out.assert_ok("psql \\copy in");
    assert!(out.stdout.contains("COPY 2"), "{out:?}");
    assert_eq!(
        e.pg.superuser_sql(
            "SELECT string_agg(owner, ',' ORDER BY id) FROM accounts WHERE id >= 10"
        ),
        "zed,yan"
    );

    // SCRAM (app, above), MD5 (legacy) and cleartext (plain), each through the agent.
    for role in ["legacy", "plain"] {
        let out =
            e.pg.psql_as(u, role, &["-A", "-t", "-c", "SELECT current_user"], None);
        out.assert_ok(&format!("psql as {role}"));
        assert_eq!(lines(&out.stdout), [role], "{out:?}");
        assert_eq!(e.pg.sessions_authorized(role), 1, "{}", e.pg.log());
    }
    // A wrong password is the server's refusal, relayed to the client.
    let mut cmd = e.pg.psql_command(u, "app", &["-c", "SELECT 1"]);
    cmd.env("PGPASSWORD", "wrong");
    let out = cmd.output().expect("run psql");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("password authentication failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert_all_through_agent(&e, 7, "/psql");
}

#[test]
fn psql_cancel_of_a_long_query_goes_through_the_agent() {
    let Some(e) = env(
        "psql_cancel_of_a_long_query_goes_through_the_agent",
        PgOpts::default(),
    ) else {
        return;
    };
    let child =
        e.pg.psql_command(&e.unit, "app", &["-c", "SELECT pg_sleep(30)"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start psql");
    let (_backend, client_port) = e.pg.wait_for_active_query("app", "pg_sleep");
    // The server's peer is the agent's upstream socket, not psql's.
    let agent_pid = e.agent.child.as_ref().map(|c| c.id());
    assert_eq!(
        socket_owner(client_port),
        agent_pid,
        "the session's client end at the server (port {client_port}) is not the agent's"
    );
    // SIGINT: psql sends a CancelRequest on a new connection to the same address.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("signal psql");
    let out = child.wait_with_output().expect("psql exit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "psql succeeded after the cancel");
    assert!(
        stderr.contains("canceling statement due to user request"),
        "psql: {stderr}"
    );
    // The session and the cancel request, both through the agent.
    assert_all_through_agent(&e, 2, "/psql");
}

#[test]
fn pgbench_simple_extended_and_prepared_through_the_agent() {
    let Some(e) = env(
        "pgbench_simple_extended_and_prepared_through_the_agent",
        PgOpts::default(),
    ) else {
        return;
    };
    e.pg.pgbench_init(&e.unit, 1).assert_ok("pgbench -i");
    let before = e.pg.tcp_connections_received();
    for mode in ["simple", "extended", "prepared"] {
        let out = e.pg.pgbench(
            &e.unit,
            &["-S", "-M", mode, "-c", "4", "-j", "2", "-t", "50", "-n"],
        );
        out.assert_ok(&format!("pgbench -S -M {mode}"));
        assert_eq!(
            pgbench_counts(&out.stdout),
            (200, 0),
            "pgbench -M {mode}: all 200 transactions processed, none failed:\n{}",
            out.stdout
        );
    }
    assert!(
        e.pg.tcp_connections_received() >= before + 12,
        "4 clients per run"
    );
    assert_all_through_agent(&e, 13, "/pgbench");
}

fn driver_steps(placeholder: &str) -> Value {
    json!([
        {"query": "SELECT count(*)::text FROM accounts; SELECT 'two'"},
        {"prepared": format!("SELECT owner, balance::text FROM accounts WHERE id = {placeholder}"), "params": [2]},
        {"transaction": [
            "INSERT INTO orders (account_id, item, amount) VALUES (4, 'kept', 1.00)",
            "UPDATE accounts SET balance = balance + 1 WHERE id = 4"], "commit": true},
        {"transaction": ["INSERT INTO orders (account_id, item, amount) VALUES (4, 'gone', 1.00)"], "commit": false},
        {"copy_in": "COPY orders (account_id, item, amount) FROM STDIN", "data": "1\tmug\t3.00\n2\tink\t4.00\n"},
        {"copy_out": "COPY (SELECT item FROM orders WHERE account_id = 4 OR item IN ('mug', 'ink') ORDER BY item) TO STDOUT"},
        {"cancel": "SELECT pg_sleep(30)"},
        {"expect_error": "SELECT * FROM no_such_table", "sqlstate": "42P01"},
        {"query": "SELECT 'still usable'"}
    ])
}

/// The checks shared by both drivers on the report of [`driver_steps`].
fn check_driver_report(r: &Value) {
    assert_eq!(r["ok"], true, "{r:#}");
    let s = &r["steps"];
    // Both statements of the simple query came back.
    assert_eq!(s[0]["rows"], json!([["5"], ["two"]]), "{r:#}");
    assert_eq!(s[1]["rows"][0], json!(["bob", "310.00"]), "{r:#}");
    assert_eq!(s[2]["affected"], json!([1, 1]), "{r:#}");
    assert_eq!(s[3]["committed"], false, "{r:#}");
    assert_eq!(s[4]["rows"], 2, "{r:#}");
    assert_eq!(s[5]["data"], "ink\nkept\nmug\n", "{r:#}");
    assert_eq!(s[6]["cancelled"], true, "{r:#}");
    assert_eq!(s[6]["sqlstate"], "57014", "{r:#}");
    assert_eq!(s[7]["sqlstate"], "42P01", "{r:#}");
}

#[test]
fn tokio_postgres_steps_through_the_agent() {
    let Some(e) = env("tokio_postgres_steps_through_the_agent", PgOpts::default()) else {
        return;
    };
    let bin = pc_pgclient();
    let r = e.pg.tokio_client(&e.unit, &bin, "app", &driver_steps("$1"));
    check_driver_report(&r);
    // MD5 and cleartext authentication with the same driver.
    for role in ["legacy", "plain"] {
        let r = e.pg.tokio_client(
            &e.unit,
            &bin,
            role,
            &json!([{"prepared": "SELECT current_user::text, $1::int8 + 1", "params": [41]}]),
        );
        assert_eq!(r["ok"], true, "{role}: {r:#}");
        assert_eq!(r["steps"][0]["rows"][0], json!([role, 42]), "{r:#}");
    }
    // Sessions: app's main and watcher, the cancel request, legacy, plain.
    assert_all_through_agent(&e, 5, "pc-pgclient");
}

#[test]
fn psycopg_steps_through_the_agent() {
    let Some(e) = env("psycopg_steps_through_the_agent", PgOpts::default()) else {
        return;
    };
    let r = e.pg.psycopg_client(&e.unit, "app", &driver_steps("%s"));
    check_driver_report(&r);
    for role in ["legacy", "plain"] {
        let r = e.pg.psycopg_client(
            &e.unit,
            role,
            &json!([{"prepared": "SELECT current_user::text, %s::int8 + 1", "params": [41]}]),
        );
        assert_eq!(r["ok"], true, "{role}: {r:#}");
        assert_eq!(r["steps"][0]["rows"][0], json!([role, 42]), "{r:#}");
    }
    assert_all_through_agent(&e, 5, "python");
}

#[test]
fn tls_to_a_hostssl_only_server_through_the_agent() {
    let Some(e) = env(
        "tls_to_a_hostssl_only_server_through_the_agent",
        PgOpts {
            hostssl_only: true,
            ..PgOpts::default()
        },
    ) else {
        return;
    };
    let ca = e.pg.ca.clone().expect("server started with TLS has a CA");
    if protocol() == "postgres" {
        // The agent terminates the client side (plain here: no agent certificate
        // configured) and opens verified TLS to the server itself.
        let mut cmd = e.pg.psql_command(
            &e.unit,
            "app",
            &[
                "-A",
                "-t",
                "-c",
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            ],
        );
        cmd.env("PGSSLMODE", "prefer");
        let out = cmd.output().expect("run psql");
        assert!(
            out.status.success(),
            "psql through the agent's TLS to the server: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t");
        let recs = assert_all_through_agent(&e, 1, "/psql");
        assert!(
            recs.iter().any(|r| r["session"]["upstream_tls"] == true),
            "{recs:#?}"
        );
        return;
    }
    let mut cmd = e.pg.psql_command(
        &e.unit,
        "app",
        &[
            "-A",
            "-t",
            "-c",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ],
    );
    cmd.env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", &ca);
    let out = cmd.output().expect("run psql");
    assert!(
        out.status.success(),
        "psql over verified TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t");
    // Without TLS, hostssl refuses the session.
    let mut cmd = e.pg.psql_command(&e.unit, "app", &["-c", "SELECT 1"]);
    cmd.env("PGSSLMODE", "disable");
    let out = cmd.output().expect("run psql");
    assert!(!out.status.success(), "plaintext must be refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no encryption"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_all_through_agent(&e, 2, "/psql");
}

#[test]
fn psql_from_a_workload_the_policy_does_not_name_is_refused_before_the_server() {
    let Some(e) = env(
        "psql_from_a_workload_the_policy_does_not_name_is_refused_before_the_server",
        PgOpts::default(),
    ) else {
        return;
    };
    let other = e.cg.unit("other");
    let out = e.pg.psql(&other, &["-c", "SELECT 1"], None);
    assert!(
        !out.ok(),
        "a workload no rule allows reached the database: {out:?}"
    );
    if protocol() == "postgres" {
        // Told as a server tells it: a FATAL naming the rule.
        assert!(
            out.stderr.contains("FATAL:")
                && out
                    .stderr
                    .contains("connection refused by rule `default-deny` (target app-db)"),
            "{}",
            out.stderr
        );
    } else {
        // The L4 relay only closes the connection.
        assert!(!out.stderr.contains("FATAL"), "{}", out.stderr);
    }
    let recs = e.agent.connections(1);
    let rec = recs
        .iter()
        .find(|r| r["attribution"]["unit"] == "other.service")
        .unwrap_or_else(|| panic!("no record of the refused session: {recs:#?}"));
    assert_eq!(rec["decision"], "deny", "{rec:#}");
    assert_eq!(rec["rule"], "default-deny", "{rec:#}");
    assert_eq!(
        e.pg.tcp_connections_received(),
        0,
        "the server saw the refused session; log:\n{}",
        e.pg.log()
    );
    // The allowed unit still gets through.
    e.pg.psql(&e.unit, &["-c", "SELECT 1"], None)
        .assert_ok("psql from the allowed unit");
    assert_eq!(e.pg.tcp_connections_received(), 1);
}
