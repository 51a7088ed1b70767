//! Privileged end-to-end tests of ways around the PostgreSQL statement analysis,
//! each through the real agent to a real server: the statement the agent
//! decided must be the statement the server runs, and where the agent cannot be
//! sure it refuses.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use portcullis_tests::pg::{self, CmdOut, PgOpts, PgServer};
use portcullis_tests::{Agent, AgentOpts, TempDir, TestCgroup, ci, privileged};
use serde_json::{Value, json};

/// Workload `clients` may do anything on `app-db` but delete, touch schema
/// `private`, or change role.
const RULES: &str = "
  - id: no-delete
    workloads: [clients]
    targets: [app-db]
    effect: deny
    when: { sql: { statements: [delete] } }
  - id: no-private
    workloads: [clients]
    targets: [app-db]
    effect: deny
    when: { sql: { tables: [\"private.*\"] } }
  - id: no-role-change
    workloads: [clients]
    targets: [app-db]
    effect: deny
    when: { sql: { statements: [set_role] } }
";

struct World {
    agent: Agent,
    pg: PgServer,
    unit: PathBuf,
    _creds: TempDir,
    _cg: TestCgroup,
}

fn world(test: &str) -> Option<World> {
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
    let pg = PgServer::start(PgOpts::default());
    let creds = TempDir::new("portcullis-test-creds");
    let cred = creds.0.join("app-db.yaml");
    std::fs::write(
        &cred,
        format!("user: app\npassword: \"{}\"\n", pg::password("app")),
    )
    .expect("write credential");
    std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(0o600))
        .expect("chmod credential");
    let policy = format!(
        "apiVersion: portcullis.dev/v1\nmode: enforce\nworkloads:\n  - name: clients\n    match: {{ unit: \"pgclients.service\" }}\ntargets:\n  - name: app-db\n    addresses: [\"127.0.0.1\"]\n    ports: [{}]\n    protocol: postgres\n    credentials: app-db\nrules:\n  - id: clients-connect\n    workloads: [clients]\n    targets: [app-db]\n    effect: allow\n{RULES}",
        pg.port
    );
    let agent = Agent::start(
        &cg.slice,
        &policy,
        AgentOpts {
            extra_config: format!("credentials_dir: {}\n", creds.0.display()),
            ..AgentOpts::default()
        },
    );
    pg.superuser_sql(
        "CREATE SCHEMA private AUTHORIZATION app;
         CREATE TABLE private.secrets (id int, v text);
         INSERT INTO private.secrets VALUES (1, 'top');
         GRANT ALL ON ALL TABLES IN SCHEMA private TO app;",
    );
    Some(World {
        agent,
        pg,
        unit,
        _creds: creds,
        _cg: cg,
    })
}

/// tokio-postgres (pc-pgclient) in the cgroup running `steps` on one
/// connection; the result of each step.
fn steps(w: &World, steps: Vec<Value>) -> Vec<Value> {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_pc-pgclient"));
    let r =
        w.pg.tokio_client(&w.unit, &bin, "app", &Value::Array(steps));
    r["steps"].as_array().cloned().unwrap_or_default()
}

/// Each a simple query whose success or error is reported.
fn tries(w: &World, sqls: &[&str]) -> Vec<Value> {
    steps(w, sqls.iter().map(|s| json!({ "try": s })).collect())
}

fn refused_by(res: &Value, needle: &str) -> bool {
    res["ok"] == false
        && res["sqlstate"] == "42501"
        && res["error"]
            .as_str()
            .is_some_and(|e| e.contains("Portcullis") && e.contains(needle))
}

/// psql in the cgroup with extra environment.
fn psql(w: &World, env: &[(&str, &str)], sql: &str) -> CmdOut {
    let mut cmd: Command = w.pg.psql_command(&w.unit, "app", &["-A", "-t", "-c", sql]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run psql");
    CmdOut {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn order_exists(w: &World, id: u32) -> bool {
    w.pg.superuser_sql(&format!(
        "SELECT count(*) FROM public.orders WHERE id = {id}"
    )) == "1"
}

/// The statement that splits differently with standard_conforming_strings off:
/// a SELECT of two strings to the agent, a SELECT and a DELETE to such a server.
const SPLIT: &str = "SELECT 'a\\' , ' ; DELETE FROM orders WHERE id = 3; -- '";

#[test]
fn explain_analyze_by_literal_does_not_reuse_a_cached_analysis() {
    let Some(w) = world("explain_analyze_by_literal_does_not_reuse_a_cached_analysis") else {
        return;
    };
    let r = tries(
        &w,
        &[
            "EXPLAIN (ANALYZE 0) DELETE FROM orders WHERE id = 2",
            "EXPLAIN (ANALYZE 1) DELETE FROM orders WHERE id = 2",
        ],
    );
    assert_eq!(r[0]["ok"], true, "plain EXPLAIN runs nothing: {r:?}");
    assert!(
        refused_by(&r[1], "no-delete"),
        "EXPLAIN ANALYZE DELETE: {r:?}"
    );
    assert!(
        order_exists(&w, 2),
        "the DELETE ran under EXPLAIN (ANALYZE 1)"
    );
}

#[test]
fn lexing_settings_cannot_be_changed_by_statements() {
    let Some(w) = world("lexing_settings_cannot_be_changed_by_statements") else {
        return;
    };
    let mut all: Vec<Value> = [
        "SET standard_conforming_strings = off",
        SPLIT,
        "BEGIN",
        "SET LOCAL standard_conforming_strings TO 'off'",
        "ROLLBACK",
        "SET client_encoding = 'SJIS'",
        "SET NAMES 'GBK'",
        "SELECT set_config('client_encoding', 'BIG5', false)",
        "UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'",
        "SET backslash_quote = on",
        "SET client_encoding = 'UTF8'",
        "SELECT * FROM set_config('standard_conforming_strings', 'off', false)",
    ]
    .iter()
    .map(|s| json!({ "try": s }))
    .collect();
    all.push(json!({"query": "SHOW standard_conforming_strings"}));
    all.push(json!({"query": "SHOW client_encoding"}));
    let r = steps(&w, all);
    for (i, name) in [
        (0, "standard_conforming_strings"),
        (3, "standard_conforming_strings"),
        (5, "client_encoding"),
        (6, "client_encoding"),
        (7, "client_encoding"),
        (8, "pg_settings"),
        (9, "backslash_quote"),
        (11, "standard_conforming_strings"),
    ] {
        assert!(refused_by(&r[i], name), "step {i} ({name}): {:?}", r[i]);
    }
    assert_eq!(r[1]["ok"], true, "the split text is one SELECT: {:?}", r[1]);
    assert_eq!(r[10]["ok"], true, "setting UTF8 is allowed: {:?}", r[10]);
    assert_eq!(r[12]["rows"], json!([["on"]]), "{:?}", r[12]);
    assert_eq!(r[13]["rows"], json!([["UTF8"]]), "{:?}", r[13]);
    assert!(order_exists(&w, 3), "the DELETE hidden in a string ran");
}

#[test]
fn lexing_settings_cannot_be_changed_at_startup_and_role_defaults_lose() {
    let Some(w) = world("lexing_settings_cannot_be_changed_at_startup_and_role_defaults_lose")
    else {
        return;
    };
    // In the startup packet: refused before any login upstream.
    for (env, name) in [
        (
            vec![("PGOPTIONS", "-c standard_conforming_strings=off")],
            "standard_conforming_strings",
        ),
        (
            vec![("PGOPTIONS", "--standard-conforming-strings=off")],
            "standard_conforming_strings",
        ),
        (
            vec![("PGOPTIONS", "-c backslash_quote=on")],
            "backslash_quote",
        ),
        (vec![("PGCLIENTENCODING", "SJIS")], "client_encoding"),
        (vec![("PGOPTIONS", "-c role=postgres")], "role"),
        (
            vec![("PGOPTIONS", "-c session_authorization=postgres")],
            "session_authorization",
        ),
        (vec![("PGOPTIONS", "-B 100")], "-B"),
    ] {
        let out = psql(&w, &env, SPLIT);
        assert!(
            !out.ok() && out.stderr.contains("Portcullis") && out.stderr.contains(name),
            "{env:?}: psql should be refused naming {name}:\n{}{}",
            out.stdout,
            out.stderr
        );
    }
    assert!(order_exists(&w, 3), "the DELETE hidden in a string ran");
    // Role and database defaults take effect at the next login; the agent's
    // startup values win over them.
    w.pg.superuser_sql(
        "ALTER ROLE app SET standard_conforming_strings = off;
         ALTER DATABASE app SET client_encoding = 'SJIS';",
    );
    let out = psql(&w, &[], SPLIT);
    out.assert_ok("the split text under role defaults");
    assert!(order_exists(&w, 3), "the DELETE hidden in a string ran");
    let out = psql(&w, &[], "SHOW standard_conforming_strings");
    assert_eq!(out.stdout.trim(), "on", "{}", out.stderr);
    // A safe client_encoding (psql under the C locale asks for SQL_ASCII) is served as UTF8.
    let out = psql(
        &w,
        &[("PGCLIENTENCODING", "SQL_ASCII")],
        "SHOW client_encoding",
    );
    assert_eq!(out.stdout.trim(), "UTF8", "{}", out.stderr);
    let out = psql(&w, &[("PGCLIENTENCODING", "utf-8")], "SHOW client_encoding");
    assert_eq!(out.stdout.trim(), "UTF8", "{}", out.stderr);
}

#[test]
fn a_server_reporting_an_unsafe_setting_ends_the_session() {
    let Some(w) = world("a_server_reporting_an_unsafe_setting_ends_the_session") else {
        return;
    };
    // A function changes the setting where the agent cannot see it.
    w.pg.superuser_sql(
        "CREATE FUNCTION public.flip() RETURNS text LANGUAGE sql
             AS $$ SELECT set_config('standard_conforming_strings', 'off', false) $$;
         GRANT EXECUTE ON FUNCTION public.flip() TO app;",
    );
    let r = tries(&w, &["SELECT public.flip()", SPLIT]);
    let msg = r[0]["error"].as_str().unwrap_or("");
    assert!(
        r[0]["ok"] == false
            && r[0]["sqlstate"] == "42501"
            && msg.contains("Portcullis")
            && msg.contains("standard_conforming_strings=off"),
        "the session should end naming the setting: {r:?}"
    );
    assert!(
        r.len() < 2 || r[1]["ok"] == false,
        "nothing runs after it: {r:?}"
    );
    assert!(order_exists(&w, 3), "the DELETE hidden in a string ran");
    let conns = w.agent.connections(1);
    assert!(
        conns.iter().any(|c| c["end"] == "unsafe_setting"
            && c["error"]
                .as_str()
                .is_some_and(|e| e.contains("standard_conforming_strings"))),
        "no connection record ending with unsafe_setting: {conns:#?}"
    );
}

#[test]
fn the_search_path_is_learned_from_the_server() {
    let Some(w) = world("the_search_path_is_learned_from_the_server") else {
        return;
    };
    // A role default the client never mentions: `secrets` is private.secrets.
    w.pg.superuser_sql("ALTER ROLE app SET search_path = private, public;");
    let r = tries(
        &w,
        &[
            "SELECT * FROM secrets",
            "SELECT count(*) FROM public.accounts",
        ],
    );
    assert!(refused_by(&r[0], "no-private"), "{r:?}");
    assert_eq!(r[1]["ok"], true, "{r:?}");
    // set_config of search_path is followed like SET.
    w.pg.superuser_sql("ALTER ROLE app RESET search_path;");
    let r = tries(
        &w,
        &[
            "SELECT count(*) FROM secrets",
            "SELECT set_config('search_path', 'private', false)",
            "SELECT * FROM secrets",
        ],
    );
    assert_eq!(
        r[0]["ok"], false,
        "no secrets table on the default path: {r:?}"
    );
    assert_eq!(r[1]["ok"], true, "{r:?}");
    assert!(refused_by(&r[2], "no-private"), "{r:?}");
}

#[test]
fn role_changes_are_set_role_in_every_spelling() {
    let Some(w) = world("role_changes_are_set_role_in_every_spelling") else {
        return;
    };
    let spellings = [
        "SET ROLE app",
        "SET role = app",
        "SET role TO app",
        "SET SESSION AUTHORIZATION app",
        "SET session_authorization = app",
        "RESET ROLE",
        "RESET SESSION AUTHORIZATION",
        "SELECT set_config('role', 'app', false)",
    ];
    let r = tries(&w, &spellings);
    for (i, s) in spellings.iter().enumerate() {
        assert!(refused_by(&r[i], "no-role-change"), "{s}: {:?}", r[i]);
    }
}

/// psycopg's libpq binding, driving the protocol directly: steps
/// `["parse", name, sql]` (Parse), `["bind", name]` (Bind + Execute of the
/// prepared statement), `["query", sql]` (simple query).
const LIBPQ_STEPS: &str = r#"
import json, sys
import psycopg
from psycopg import pq
conn = psycopg.connect(sys.argv[1], autocommit=True)
pg = conn.pgconn
out = []
for step in json.loads(sys.argv[2]):
    if step[0] == "parse":
        r = pg.prepare(step[1].encode(), step[2].encode())
    elif step[0] == "bind":
        r = pg.exec_prepared(step[1].encode(), [])
    else:
        r = pg.exec_(step[1].encode())
    ok = r.status in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK)
    state = r.error_field(pq.DiagnosticField.SQLSTATE) or b""
    out.append({"ok": ok, "sqlstate": state.decode(), "error": r.error_message.decode("utf-8", "replace"), "rows": r.ntuples})
print(json.dumps(out))
"#;

/// A client speaking the protocol by hand: logs in (the agent holds the
/// credentials), runs each simple query of argv[2] (JSON), then sends a bare
/// Execute of portal argv[3] and Sync; prints what came back.
const RAW_EXECUTE: &str = r#"
import json, socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
def send(t, body):
    s.sendall(t + struct.pack("!I", len(body) + 4) + body)
def exact(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise SystemExit("closed")
        b += c
    return b
def until_ready():
    msgs = []
    while True:
        t = exact(1)
        n = struct.unpack("!I", exact(4))[0]
        body = exact(n - 4)
        if t == b"E":
            f = dict((x[:1].decode(), x[1:].decode("utf-8", "replace")) for x in body.split(b"\0") if x)
            msgs.append({"error": f.get("M"), "sqlstate": f.get("C")})
        elif t == b"D":
            msgs.append({"row": True})
        if t == b"Z":
            return msgs
p = b"user\0app\0database\0app\0\0"
s.sendall(struct.pack("!II", len(p) + 8, 196608) + p)
until_ready()
for q in json.loads(sys.argv[2]):
    send(b"Q", q.encode() + b"\0")
    until_ready()
send(b"E", sys.argv[3].encode() + b"\0" + struct.pack("!I", 0))
send(b"S", b"")
print(json.dumps(until_ready()))
"#;

fn python(w: &World, args: &[&str]) -> Value {
    let py = pg::venv_python();
    assert!(
        py.exists(),
        "the psycopg venv {} is missing: run `cargo xtask setup`",
        py.display()
    );
    let mut all = vec![py.to_str().expect("utf-8 path"), "-c"];
    all.extend_from_slice(args);
    let out = portcullis_tests::in_cgroup(&w.unit, &all)
        .env("PGPASSWORD", pg::password("app"))
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "python printed no JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn prepared_statements_share_one_namespace_and_follow_the_search_path() {
    let Some(w) = world("prepared_statements_share_one_namespace_and_follow_the_search_path")
    else {
        return;
    };
    // `secrets` is public.secrets on the default path, private.secrets after SET.
    w.pg.superuser_sql(
        "CREATE TABLE public.secrets (id int, v text);
         GRANT ALL ON public.secrets TO app;",
    );
    let steps = json!([
        // Parse by the protocol, EXECUTE by SQL.
        ["parse", "cnt", "SELECT count(*) FROM public.accounts"],
        ["query", "EXECUTE cnt"],
        ["parse", "look", "SELECT * FROM secrets"],
        // SQL PREPARE, Bind/Execute by the protocol.
        ["query", "PREPARE peek AS SELECT * FROM secrets"],
        ["bind", "peek"],
        ["query", "SET search_path TO private, public"],
        // Both now read private.secrets in the server.
        ["query", "EXECUTE look"],
        ["bind", "peek"],
        ["bind", "look"],
        // Gone whichever way it was prepared.
        ["query", "DEALLOCATE cnt"],
        ["bind", "cnt"],
    ]);
    let conn = w.pg.conninfo("app");
    let r = python(&w, &[LIBPQ_STEPS, &conn, &steps.to_string()]);
    let ok = |i: usize| r[i]["ok"] == true;
    assert!(
        ok(0) && ok(1),
        "EXECUTE of a protocol-prepared name runs: {r}"
    );
    assert_eq!(r[1]["rows"], 1, "{r}");
    assert!(ok(2) && ok(3) && ok(4) && ok(5), "{r}");
    for i in [6, 7, 8] {
        assert!(refused_by(&r[i], "no-private"), "step {i}: {r}");
    }
    assert!(ok(9), "{r}");
    assert_eq!(r[10]["ok"], false, "{r}");
}

fn statement_records(w: &World) -> Vec<Value> {
    w.agent
        .audit()
        .into_iter()
        .filter(|r| r["event"] == "statement")
        .collect()
}

/// The `statement` record of `text`.
fn recs_of(w: &World, text: &str) -> Value {
    let recs = statement_records(w);
    recs.iter()
        .find(|r| r["statement"] == text)
        .cloned()
        .unwrap_or_else(|| panic!("no statement record for {text:?}: {recs:#?}"))
}

#[test]
fn psycopg_prepared_statements_run_by_sql_execute_and_are_decided_by_what_they_prepared() {
    let Some(w) = world(
        "psycopg_prepared_statements_run_by_sql_execute_and_are_decided_by_what_they_prepared",
    ) else {
        return;
    };
    w.pg.superuser_sql(
        "CREATE TABLE public.secrets (id int, v text);
         INSERT INTO public.secrets VALUES (1, 'public');
         GRANT ALL ON public.secrets TO app;",
    );
    // psycopg's prepare=True names its statements `_pg3_0`, `_pg3_1`, ... (Parse
    // by the protocol); the simple-protocol EXECUTE runs them by SQL.
    let r = w.pg.psycopg_client(
        &w.unit,
        "app",
        &json!([
            {"prepared": "SELECT owner FROM public.accounts WHERE id = %s", "params": [2]},
            {"query": "EXECUTE _pg3_0(3)"},
            {"prepared": "SELECT v FROM secrets WHERE id = %s", "params": [1]},
            {"query": "EXECUTE _pg3_1(1)"},
            // From here `secrets` may be private.secrets: refused by SQL and by Bind.
            {"query": "SET search_path TO private, public"},
            {"expect_error": "EXECUTE _pg3_1(1)", "sqlstate": "42501"},
            {"prepared_error": "SELECT v FROM secrets WHERE id = %s", "params": [1], "sqlstate": "42501"},
            // DEALLOCATE by SQL of a name prepared by Parse: psycopg binds it
            // again, and hears what the server says of an unknown name.
            {"query": "DEALLOCATE _pg3_0"},
            {"prepared_error": "SELECT owner FROM public.accounts WHERE id = %s", "params": [2], "sqlstate": "26000"},
            // EXECUTE of a name the agent did not see prepared: refused, with
            // the SQLSTATE the server gives an unknown name.
            {"expect_error": "EXECUTE _pg3_0(2)", "sqlstate": "26000"},
            {"query": "SELECT 'still usable'"}
        ]),
    );
    assert_eq!(r["ok"], true, "{r:#}");
    let s = &r["steps"];
    assert_eq!(s[0]["rows"], json!([["bob"]]), "{r:#}");
    assert_eq!(s[1]["rows"], json!([["carol"]]), "{r:#}");
    assert_eq!(s[3]["rows"], json!([["public"]]), "{r:#}");
    for i in [5, 6] {
        let e = s[i]["error"].as_str().unwrap_or_default();
        assert!(
            e.contains("Portcullis") && e.contains("no-private"),
            "step {i}: {r:#}"
        );
    }
    assert!(
        s[8]["error"]
            .as_str()
            .is_some_and(|e| e.contains("_pg3_0") && e.contains("does not exist")),
        "the server's own answer: {r:#}"
    );
    assert!(
        s[9]["error"]
            .as_str()
            .is_some_and(|e| e.contains("Portcullis")
                && e.contains("_pg3_0")
                && e.contains("not prepared")),
        "{r:#}"
    );
    let unknown = recs_of(&w, "EXECUTE _pg3_0(2)");
    assert_eq!(unknown["decision"], "deny", "{unknown:#}");
    assert_eq!(unknown["rule"], "unknown-prepared-statement", "{unknown:#}");
    assert_eq!(s[10]["rows"], json!([["still usable"]]), "{r:#}");
    // The records: EXECUTE decided as what `_pg3_N` prepared.
    let recs = statement_records(&w);
    let ran = recs
        .iter()
        .find(|r| r["statement"] == "EXECUTE _pg3_0(3)")
        .unwrap_or_else(|| panic!("no record of the EXECUTE: {recs:#?}"));
    assert_eq!(ran["decision"], "allow", "{ran:#}");
    assert_eq!(ran["kinds"], json!(["execute", "select"]), "{ran:#}");
    assert!(
        ran["tables_read"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t == "public.accounts")),
        "{ran:#}"
    );
    let refused = recs
        .iter()
        .find(|r| r["statement"] == "EXECUTE _pg3_1(1)" && r["decision"] == "deny")
        .unwrap_or_else(|| panic!("no refusal of the EXECUTE: {recs:#?}"));
    assert_eq!(refused["rule"], "no-private", "{refused:#}");
    // Nothing of private.secrets came back.
    assert!(!r.to_string().contains("top"), "{r:#}");
}

#[test]
fn an_execute_of_a_portal_the_agent_did_not_see_bound_is_refused() {
    let Some(w) = world("an_execute_of_a_portal_the_agent_did_not_see_bound_is_refused") else {
        return;
    };
    let port = w.pg.port.to_string();
    let queries = json!([
        "BEGIN",
        "DECLARE c CURSOR FOR SELECT * FROM public.accounts"
    ]);
    let r = python(&w, &[RAW_EXECUTE, &port, &queries.to_string(), "c"]);
    let msgs = r.as_array().cloned().unwrap_or_default();
    assert!(
        !msgs.iter().any(|m| m["row"] == true),
        "the cursor's rows came back: {r}"
    );
    assert!(
        msgs.iter().any(|m| m["sqlstate"] == "42501"
            && m["error"]
                .as_str()
                .is_some_and(|e| e.contains("Portcullis") && e.contains("portal `c`"))),
        "no refusal naming the portal: {r}"
    );
}

/// Logs in by hand, sends the simple query argv[2], reads until the first
/// DataRow, and drops the connection (a client that goes away mid-result).
const RAW_DROP: &str = r#"
import socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
def exact(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise SystemExit("closed")
        b += c
    return b
def until(tag):
    while True:
        t = exact(1)
        n = struct.unpack("!I", exact(4))[0]
        exact(n - 4)
        if t == tag:
            return
p = b"user\0app\0database\0app\0\0"
s.sendall(struct.pack("!II", len(p) + 8, 196608) + p)
until(b"Z")
q = sys.argv[2].encode() + b"\0"
s.sendall(b"Q" + struct.pack("!I", len(q) + 4) + q)
until(b"D")
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()
print("[]")
"#;

#[test]
fn a_client_that_drops_mid_result_still_leaves_a_record() {
    let Some(w) = world("a_client_that_drops_mid_result_still_leaves_a_record") else {
        return;
    };
    let sql = "SELECT g, repeat('x', 100) FROM generate_series(1, 2000000) g";
    let port = w.pg.port.to_string();
    python(&w, &[RAW_DROP, &port, sql]);
    // The decision record was written before the statement was forwarded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let (decided, outcome) = loop {
        let recs = w.agent.audit();
        let decided = recs
            .iter()
            .find(|r| r["event"] == "statement" && r["statement"] == sql)
            .cloned();
        let outcome = decided.as_ref().and_then(|d| {
            recs.iter()
                .find(|o| {
                    o["event"] == "statement_outcome"
                        && o["session_id"] == d["session_id"]
                        && o["statement_seq"] == d["statement_seq"]
                })
                .cloned()
        });
        if outcome.is_some() || std::time::Instant::now() > deadline {
            break (decided, outcome);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let decided = decided.expect("no statement record for a statement the client dropped");
    assert_eq!(decided["outcome"], "forwarded", "{decided:#}");
    assert_eq!(decided["decision"], "allow", "{decided:#}");
    let outcome = outcome.expect("no statement_outcome record once the session ended");
    // 200 MB of rows cannot reach a client that is gone: the response never ended.
    assert_eq!(outcome["outcome"], "incomplete", "{outcome:#}");
    assert!(
        outcome["error"]
            .as_str()
            .is_some_and(|e| e.contains("session ended")),
        "{outcome:#}"
    );
}

#[test]
fn names_in_table_x_are_folded_like_every_other_name() {
    let Some(w) = world("names_in_table_x_are_folded_like_every_other_name") else {
        return;
    };
    // The server reads private.secrets; a rule on `private.*` must apply.
    let r = tries(
        &w,
        &[
            "SELECT 1, 'x' UNION ALL TABLE Private.Secrets",
            "SELECT 1, 'x' UNION ALL TABLE PRIVATE.secrets",
        ],
    );
    for (i, res) in r.iter().enumerate() {
        assert!(refused_by(res, "no-private"), "step {i}: {r:?}");
    }
}
