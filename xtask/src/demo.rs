//! `cargo xtask demo`: a throwaway PostgreSQL on 127.0.0.1:15432, the agent attached
//! at the root of the cgroup v2 hierarchy (the production default) with
//! policies/demo.yaml, and a short workload: psql whose statements are decided one
//! by one (the agent logs in upstream with a credential the operator never holds),
//! a denied Python script, a default-denied shell, and a raw-socket bypass attempt
//! (refused by the kernel when the socket is created, or dropped by the backstop).
//! Prints what was allowed, denied and recorded (audit records and the session
//! recording), then detaches explicitly (audited) and cleans up.
//!
//! Only 127.0.0.1:15432 is protected, so attaching at the root touches nothing else.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::setup;
use crate::util::{cargo, is_root, output, repo_root, run, target_dir};

/// Outside the ephemeral port range (32768-60999 by default), so a client socket
/// of some other program cannot be holding it.
const PG_PORT: u16 = 15432;
const AGENT_PORT: u16 = 1543;
const BPFFS: &str = "/sys/fs/bpf/portcullis-demo";

struct Demo {
    dir: PathBuf,
    pg_bin: PathBuf,
    agent: Option<Child>,
    agent_bin: PathBuf,
    config: PathBuf,
    pg_started: bool,
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
        // Enforcement is only ever removed explicitly; the demo does it on the way out.
        let _ = Command::new(&self.agent_bin)
            .args(["detach", "--yes", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .status();
        if self.pg_started {
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.pg_bin.join("pg_ctl"))
                .args(["-D"])
                .arg(self.dir.join("pg"))
                .args(["-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn port_busy(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_err()
}

pub fn demo(smoke: bool) -> Result<()> {
    if !is_root() {
        bail!("the demo attaches eBPF programs and starts a database: run it as root");
    }
    setup::setup()?;
    let pg_bin = setup::postgres_bin()?;
    cargo(&["build", "-p", "portcullis"])?;
    let agent_bin = target_dir().join("debug").join("portcullis");
    for (port, what) in [(PG_PORT, "demo PostgreSQL"), (AGENT_PORT, "agent listener")] {
        if port_busy(port) {
            bail!("port {port} ({what}) is in use on 127.0.0.1: stop whatever holds it and retry");
        }
    }
    if Path::new(BPFFS).exists() {
        println!("demo: removing enforcement left by an earlier demo run");
        let _ = Command::new(&agent_bin)
            .args(["detach", "--yes", "--socket", "/nonexistent"])
            .status();
        crate::util::remove_tree(Path::new(BPFFS));
    }

    let dir = std::env::temp_dir().join(format!("portcullis-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut d = Demo {
        dir: dir.clone(),
        pg_bin: pg_bin.clone(),
        agent: None,
        agent_bin: agent_bin.clone(),
        config: dir.join("agent.yaml"),
        pg_started: false,
    };

    // 1. A throwaway PostgreSQL (initdb refuses root: run it as `postgres`).
    step("starting a throwaway PostgreSQL on 127.0.0.1:15432");
    let app_password = {
        let mut raw = [0u8; 12];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut raw))
            .context("reading /dev/urandom")?;
        raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let pg = dir.join("pg");
    let sock = dir.join("sock");
    std::fs::create_dir_all(&sock)?;
    run(Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(&dir))?;
    run(Command::new("chmod").arg("755").arg(&dir))?;
    let as_pg = |bin: &str| {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(pg_bin.join(bin));
        c
    };
    // Over TCP the server asks for a password (SCRAM); only the agent has one.
    output(as_pg("initdb").args(["-D"]).arg(&pg).args([
        "--auth-local=trust",
        "--auth-host=scram-sha-256",
        "-U",
        "postgres",
        "--no-sync",
    ]))
    .context("initdb")?;
    output(
        as_pg("pg_ctl")
            .args(["-D"])
            .arg(&pg)
            .args(["-l"])
            .arg(dir.join("pg.log"))
            .args([
                "-o",
                &format!(
                    "-p {PG_PORT} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                    sock.display()
                ),
                "-w",
                "start",
            ]),
    )
    .context("starting PostgreSQL")?;
    d.pg_started = true;
    // Seed over the unix socket (not a protected destination).
    output(
        Command::new(pg_bin.join("psql"))
            .args(["-X", "-q", "-h"])
            .arg(&sock)
            .args(["-p", &PG_PORT.to_string(), "-U", "postgres", "-c"])
            .arg(format!(
                "CREATE TABLE accounts(id int primary key, owner text, balance numeric);
                 INSERT INTO accounts SELECT g, 'customer-' || g, g * 100 FROM generate_series(1, 42) g;
                 CREATE ROLE app LOGIN PASSWORD '{app_password}';
                 GRANT SELECT, UPDATE, DELETE ON accounts TO app;"
            )),
    )
    .context("seeding the demo database")?;
    // The agent's credential for the database: a file only root can read.
    let creds = dir.join("credentials");
    std::fs::create_dir_all(&creds)?;
    let cred = creds.join("demo-app.yaml");
    std::fs::write(&cred, format!("user: app\npassword: \"{app_password}\"\n"))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(0o600))?;
    }

    // 2. The agent at the cgroup v2 root, with policies/demo.yaml.
    step("starting the agent (cgroup v2 root, policies/demo.yaml)");
    let pol = dir.join("policies");
    std::fs::create_dir_all(&pol)?;
    std::fs::copy(
        repo_root().join("policies").join("demo.yaml"),
        pol.join("demo.yaml"),
    )?;
    std::fs::write(
        &d.config,
        format!(
            "policy_dir: {}\nstate_dir: {}\nruntime_dir: {}\nbpffs_dir: {BPFFS}\ncgroup: auto\nlisten_port: {AGENT_PORT}\ncredentials_dir: {}\n",
            pol.display(),
            dir.join("state").display(),
            dir.join("run").display(),
            creds.display()
        ),
    )?;
    let mut child = Command::new(&agent_bin)
        .args(["run", "--config"])
        .arg(&d.config)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("agent.log"))?)
        .spawn()
        .context("starting the agent")?;
    let stdout = child.stdout.take().context("agent stdout")?;
    d.agent = Some(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("ready") {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(Duration::from_secs(30)).is_err() {
        bail!(
            "the agent did not become ready; its log:\n{}",
            std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
        );
    }
    let status = |args: &[&str]| -> Result<String> {
        output(
            Command::new(&agent_bin)
                .args(args)
                .arg("--config")
                .arg(&d.config),
        )
    };
    println!("{}", status(&["status"])?);

    // 3. The workload, with unchanged clients pointed at the database's real address.
    step("psql (root, no password) → 127.0.0.1:15432: connection allowed, each statement decided");
    let statements = [
        "SELECT count(*) AS accounts, sum(balance) AS total FROM accounts",
        "DELETE FROM accounts",
        "SELECT pg_read_file('/etc/hostname')",
        "UPDATE accounts SET balance = balance + 1 WHERE id = 7",
    ];
    let mut psql_cmd = Command::new(pg_bin.join("psql"));
    psql_cmd
        .args(["-X", "-h", "127.0.0.1", "-p", &PG_PORT.to_string()])
        .args(["-U", "ops", "-d", "postgres"])
        .env_remove("PGPASSWORD")
        .env("PGSSLMODE", "disable");
    for st in statements {
        println!("  {st}");
        psql_cmd.args(["-c", st]);
    }
    let psql = psql_cmd.output()?;
    print!("{}", String::from_utf8_lossy(&psql.stdout));
    eprint!("{}", String::from_utf8_lossy(&psql.stderr));
    let psql_stdout = String::from_utf8_lossy(&psql.stdout);
    let psql_ok = psql_stdout.contains("42") && psql_stdout.contains("UPDATE 1");

    step("python3 script → 127.0.0.1:15432: denied by rule no-python-to-primary");
    let py = Command::new("python3")
        .arg(repo_root().join("tests").join("clients").join("client.py"))
        .args(["echo", "127.0.0.1", &PG_PORT.to_string()])
        .output()?;
    let py_reply = String::from_utf8_lossy(&py.stdout).to_string();
    println!("client saw: {}", py_reply.trim());
    let py_denied =
        !py_reply.contains("\"reply\": \"ping\"") || py_reply.contains("\"reply\": \"\"");

    step("bash /dev/tcp → 127.0.0.1:15432: no rule matches, default-deny");
    let sh = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "exec 3<>/dev/tcp/127.0.0.1/{PG_PORT} && printf 'hello' >&3 && timeout 2 cat <&3; echo \"bash exit: $?\""
        ))
        .output()?;
    println!("{}", String::from_utf8_lossy(&sh.stdout).trim());

    step(
        "raw-socket SYN → 127.0.0.1:15432: the kernel refuses the raw socket (or the backstop drops it)",
    );
    let raw = Command::new("python3")
        .arg(repo_root().join("tests").join("clients").join("client.py"))
        .args(["raw-syn", "127.0.0.1", &PG_PORT.to_string()])
        .output()?;
    let raw_out = String::from_utf8_lossy(&raw.stdout).to_string();
    println!("client saw: {}", raw_out.trim());

    std::thread::sleep(Duration::from_millis(300));
    step("what was recorded");
    let st: Value = serde_json::from_str(&status(&["status", "--json"])?)?;
    let bypass = st["kernel_counters"]["bypass_drops"].as_u64().unwrap_or(0)
        + st["kernel_counters"]["raw_sockets_refused"]
            .as_u64()
            .unwrap_or(0);
    println!(
        "kernel: redirects={} bypass_drops={} raw_sockets_refused={} | sessions: allowed={} denied={}",
        st["kernel_counters"]["redirects"],
        st["kernel_counters"]["bypass_drops"],
        st["kernel_counters"]["raw_sockets_refused"],
        st["sessions"]["allowed"],
        st["sessions"]["denied"]
    );
    let flows = status(&["flows"])?;
    println!("\nflows to the demo database (portcullis flows):");
    for (i, l) in flows.lines().enumerate() {
        if i == 0 || l.contains(&format!(":{PG_PORT}")) {
            println!("{l}");
        }
    }
    let audit_path = dir.join("state").join("audit").join("audit.jsonl");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut recs: Vec<Value>;
    loop {
        recs = std::fs::read_to_string(&audit_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let n = recs.iter().filter(|r| r["event"] == "connection").count();
        if n >= 3 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("\naudit log ({}):", audit_path.display());
    println!(
        "{:<8} {:<7} {:<36} {:<18} {:<10} {:<24} {:>6} {:>6}",
        "EVENT", "PID", "EXE", "DESTINATION", "DECISION", "RULE", "UP", "DOWN"
    );
    for r in &recs {
        match r["event"].as_str() {
            Some("connection") => println!(
                "{:<8} {:<7} {:<36} {:<18} {:<10} {:<24} {:>6} {:>6}",
                "conn",
                r["attribution"]["pid"],
                r["attribution"]["exe"].as_str().unwrap_or("?"),
                r["original_destination"].as_str().unwrap_or("?"),
                r["decision"].as_str().unwrap_or("?"),
                r["rule"].as_str().unwrap_or("?"),
                r["bytes_client_to_upstream"],
                r["bytes_upstream_to_client"]
            ),
            Some("statement") => println!(
                "{:<8} {:<7} {:<36} {:<18} {:<10} {:<24} {}",
                "stmt",
                r["attribution"]["pid"],
                r["statement"].as_str().unwrap_or("?"),
                format!("as {}", r["upstream_user"].as_str().unwrap_or("?")),
                r["decision"].as_str().unwrap_or("?"),
                r["rule"].as_str().unwrap_or("?"),
                {
                    // A forwarded statement's result is in its statement_outcome record.
                    let done = recs
                        .iter()
                        .find(|o| {
                            o["event"] == "statement_outcome"
                                && o["session_id"] == r["session_id"]
                                && o["statement_seq"] == r["statement_seq"]
                        })
                        .unwrap_or(r);
                    match done["rows"].as_u64() {
                        Some(n) => format!("{n} row(s)"),
                        None => done["outcome"].as_str().unwrap_or("").to_string(),
                    }
                }
            ),
            Some("statement_outcome") => {}
            Some(other) => println!("{other:<8} {}", short(r)),
            None => {}
        }
    }
    // The psql session as recorded: what an incident responder replays.
    let psql_session = recs
        .iter()
        .find(|r| {
            r["event"] == "connection"
                && r["session"]["protocol"] == "postgres"
                && r["attribution"]["exe"]
                    .as_str()
                    .is_some_and(|e| e.ends_with("/psql"))
        })
        .and_then(|r| r["session_id"].as_str())
        .map(str::to_string);
    let mut replay_ok = false;
    if let Some(id) = &psql_session {
        step(&format!(
            "the psql session as recorded: portcullis sessions show {}",
            &id[..id.len().min(12)]
        ));
        let show = Command::new(&agent_bin)
            .args(["sessions", "show", "--dir"])
            .arg(dir.join("state").join("sessions"))
            .arg(id)
            .output()?;
        let text = String::from_utf8_lossy(&show.stdout);
        print!("{text}");
        replay_ok = show.status.success()
            && text.contains("DELETE FROM accounts")
            && text.contains("42501");
    }
    step("removing enforcement explicitly (portcullis detach --yes; audited)");
    if let Some(mut a) = d.agent.take() {
        let out = status(&["detach", "--yes"]);
        println!("{}", out.as_deref().unwrap_or("detach failed"));
        let _ = a.wait();
    }

    step("what an auditor checks: portcullis audit verify --pubkey <host key> <log>");
    let kept = target_dir().join("demo-audit");
    let _ = std::fs::remove_dir_all(&kept);
    std::fs::create_dir_all(&kept)?;
    std::fs::copy(&audit_path, kept.join("audit.jsonl"))?;
    let pubkey = dir.join("state").join("keys").join("audit-signing.pub");
    std::fs::copy(&pubkey, kept.join("audit-signing.pub"))?;
    let verify = Command::new(&agent_bin)
        .args(["audit", "verify", "--pubkey"])
        .arg(kept.join("audit-signing.pub"))
        .arg(&kept)
        .output()?;
    print!("{}", String::from_utf8_lossy(&verify.stdout));
    println!(
        "(the log and the host's public key are kept in {})",
        kept.display()
    );
    let verified = verify.status.success();

    let allowed_rec = recs.iter().any(|r| {
        r["event"] == "connection"
            && r["decision"] == "allow"
            && r["rule"] == "ops-psql-may-connect"
            && r["attribution"]["exe"]
                .as_str()
                .is_some_and(|e| e.ends_with("/psql"))
    });
    let stmt = |decision: &str, rule: &str| {
        recs.iter().any(|r| {
            r["event"] == "statement"
                && r["decision"] == decision
                && r["rule"] == rule
                && r["upstream_user"] == "app"
        })
    };
    let statements_ok = stmt("allow", "ops-psql-may-connect")
        && stmt("deny", "no-where-less-writes")
        && stmt("deny", "no-server-files");
    let denied_rec = recs.iter().any(|r| {
        r["event"] == "connection" && r["decision"] == "deny" && r["rule"] == "no-python-to-primary"
    });
    let default_rec = recs.iter().any(|r| {
        r["event"] == "connection" && r["decision"] == "deny" && r["rule"] == "default-deny"
    });
    println!(
        "\ndemo summary: psql allowed={} statements decided={} session recorded={} python denied={} shell default-denied={} bypass drops={}",
        psql_ok && allowed_rec,
        statements_ok,
        replay_ok,
        py_denied && denied_rec,
        default_rec,
        bypass
    );
    if smoke {
        let mut problems = Vec::new();
        if !(psql_ok && allowed_rec) {
            problems.push("psql was not allowed and recorded");
        }
        if !statements_ok {
            problems.push("the psql statements were not decided and audited (allow, no-where-less-writes, no-server-files)");
        }
        if !replay_ok {
            problems.push("the psql session recording does not show the refused DELETE");
        }
        if !(py_denied && denied_rec) {
            problems.push("the python client was not denied by no-python-to-primary");
        }
        if !default_rec {
            problems.push("the shell was not default-denied");
        }
        if bypass == 0 {
            problems.push("the raw-socket bypass was not counted");
        }
        if !verified {
            problems.push("the audit log did not verify");
        }
        if !problems.is_empty() {
            bail!(
                "demo smoke test failed: {}\nagent log:\n{}",
                problems.join("; "),
                std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
            );
        }
        println!("demo smoke: 7 passed, 0 failed");
    }
    drop(d);
    Ok(())
}

fn step(s: &str) {
    println!("\n==> {s}");
}

fn short(r: &Value) -> String {
    let mut o = r.clone();
    if let Some(m) = o.as_object_mut() {
        for k in [
            "schema",
            "seq",
            "host",
            "agent_version",
            "event",
            "policy_files",
            "event_id",
            "prev_hash",
            "hash",
        ] {
            m.remove(k);
        }
    }
    let s = o.to_string();
    if s.len() > 160 {
        format!("{}…", &s[..s.floor_char_boundary(160)])
    } else {
        s
    }
}
