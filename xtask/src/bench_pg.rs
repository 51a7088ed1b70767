//! `cargo xtask bench pg`: pgbench -S against a real PostgreSQL, three ways side by
//! side in the same run:
//!
//! - **direct**: pgbench → PostgreSQL;
//! - **pgbouncer**: pgbench → pgbouncer (session pooling, its own ini and userlist in
//!   a temp dir) → PostgreSQL;
//! - **portcullis**: pgbench, inside a child cgroup the release agent is attached to,
//!   → (kernel redirect) → agent → PostgreSQL, with a policy protecting the
//!   database with `protocol: <--protocol>`.
//!
//! For each query protocol (`-M simple`, `-M prepared`) and client count (1, 8, 32):
//! `--rounds` rounds of `--secs` seconds per path, the order of the paths rotated
//! every round so machine noise hits all of them alike; medians over the rounds.
//! TPS from pgbench's summary (without initial connection time); p50 and p99
//! latency from pgbench's per-transaction logs (`-l`), all transactions of the run.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::util::{cargo, cgroup2_root, is_root, output, run, target_dir};
use crate::{pgtools, setup};

const USAGE: &str = "usage: cargo xtask bench pg [--protocol tcp|postgres] [--rounds N] [--secs S] [--clients 1,8,32] [--scale N]";
const PATHS: [&str; 3] = ["direct", "pgbouncer", "portcullis"];
const MODES: [&str; 2] = ["simple", "prepared"];
const ROLE: &str = "bench";
const PASSWORD: &str = "bench-Secret-1";

struct Opts {
    protocol: String,
    rounds: usize,
    secs: u32,
    clients: Vec<u32>,
    scale: u32,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        protocol: "postgres".into(),
        rounds: 5,
        secs: 3,
        clients: vec![1, 8, 32],
        scale: 10,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |name: &str| {
            it.next()
                .cloned()
                .with_context(|| format!("{name} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--protocol" => o.protocol = val("--protocol")?,
            "--rounds" => o.rounds = val("--rounds")?.parse().context("--rounds: a number")?,
            "--secs" => o.secs = val("--secs")?.parse().context("--secs: a number")?,
            "--scale" => o.scale = val("--scale")?.parse().context("--scale: a number")?,
            "--clients" => {
                o.clients = val("--clients")?
                    .split(',')
                    .map(|c| c.trim().parse::<u32>())
                    .collect::<Result<_, _>>()
                    .context("--clients: comma-separated numbers, e.g. 1,8,32")?
            }
            other => bail!("unknown option `{other}`\n{USAGE}"),
        }
    }
    if !["tcp", "postgres"].contains(&o.protocol.as_str()) {
        bail!("--protocol must be tcp or postgres, not `{}`", o.protocol);
    }
    if o.rounds == 0 || o.secs == 0 || o.clients.is_empty() || o.clients.contains(&0) {
        bail!("--rounds, --secs and every --clients value must be at least 1");
    }
    Ok(o)
}

/// Everything started, removed on drop (also on error).
struct Guard {
    dir: PathBuf,
    pg_bin: PathBuf,
    pg_data: Option<PathBuf>,
    children: Vec<Child>,
    agent_bin: PathBuf,
    agent_config: Option<PathBuf>,
    bpffs: PathBuf,
    cgroups: Vec<PathBuf>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(cfg) = &self.agent_config {
            // Enforcement is only removed explicitly (audited).
            let _ = Command::new(&self.agent_bin)
                .args(["detach", "--yes", "--config"])
                .arg(cfg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        crate::util::remove_tree(&self.bpffs);
        for cg in self.cgroups.iter().rev() {
            if let Ok(p) = std::fs::read_to_string(cg.join("cgroup.procs")) {
                for pid in p.lines() {
                    let _ = Command::new("kill").args(["-9", pid.trim()]).status();
                }
            }
            std::thread::sleep(Duration::from_millis(50));
            let _ = std::fs::remove_dir(cg);
        }
        if let Some(data) = &self.pg_data {
            let _ = as_postgres(&self.pg_bin.join("pg_ctl"))
                .arg("-D")
                .arg(data)
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn as_postgres(bin: &Path) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(bin);
    c
}

/// A port in 20000-30000 nobody listens on (outside the ephemeral range, so no
/// client socket holds it).
fn free_port(taken: &[u16]) -> Result<u16> {
    let seed = std::process::id() as usize;
    for i in 0..10_000usize {
        let p = 20000 + ((seed * 7919 + i * 131) % 10000) as u16;
        if !taken.contains(&p) && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return Ok(p);
        }
    }
    bail!("no free port in 20000-30000 on 127.0.0.1")
}

fn wait_port(port: u16, what: &str, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "{what} did not listen on 127.0.0.1:{port} within 15 s; its log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    )
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

struct RunResult {
    tps: f64,
    p50_ms: f64,
    p99_ms: f64,
    transactions: u64,
    failed: u64,
}

pub fn bench_pg(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    if !is_root() {
        bail!("the pg benchmark attaches eBPF programs and starts PostgreSQL: run it as root");
    }
    let t0 = Instant::now();
    setup::setup()?;
    let pg_bin = setup::postgres_bin()?;
    let pgbouncer = pgtools::pgbouncer_bin()?;
    cargo(&["build", "--release", "-p", "portcullis"])?;
    let agent_bin = target_dir().join("release").join("portcullis");
    let root = cgroup2_root().context("no cgroup v2 hierarchy is mounted")?;
    let pid = std::process::id();
    let base = root.join(format!("portcullis-test-{pid}-benchpg"));
    let plain = base.join("plain");
    let hooked = base.join("hooked");
    let dir = std::env::temp_dir().join(format!("portcullis-bench-pg-{pid}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut g = Guard {
        dir: dir.clone(),
        pg_bin: pg_bin.clone(),
        pg_data: None,
        children: Vec::new(),
        agent_bin: agent_bin.clone(),
        agent_config: None,
        bpffs: PathBuf::from(format!("/sys/fs/bpf/portcullis-test-{pid}-benchpg")),
        cgroups: vec![base.clone(), plain.clone(), hooked.clone()],
    };
    for c in [&base, &plain, &hooked] {
        std::fs::create_dir_all(c).with_context(|| format!("creating cgroup {}", c.display()))?;
    }

    // PostgreSQL, as `postgres` (initdb refuses root), 127.0.0.1 only.
    let pg_port = free_port(&[])?;
    let data = dir.join("pg");
    let sock = dir.join("sock");
    std::fs::create_dir_all(&sock)?;
    run(Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(&dir))?;
    run(Command::new("chmod").arg("755").arg(&dir))?;
    output(
        as_postgres(&pg_bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "--no-instructions",
            ]),
    )
    .context("initdb")?;
    std::fs::write(
        data.join("pg_hba.conf"),
        format!("local all postgres trust\nhost all {ROLE} 127.0.0.1/32 scram-sha-256\n"),
    )?;
    output(
        as_postgres(&pg_bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.join("postgres.log"))
            .args([
                "-o",
                &format!(
                    "-p {pg_port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_connections=200",
                    sock.display()
                ),
                "-w",
                "-t",
                "60",
                "start",
            ]),
    )
    .context("starting PostgreSQL")?;
    g.pg_data = Some(data.clone());
    output(
        Command::new(pg_bin.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&sock)
            .args(["-p", &pg_port.to_string(), "-U", "postgres", "-d", "postgres", "-c"])
            .arg(format!(
                "SET password_encryption = 'scram-sha-256'; CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'"
            )),
    )
    .context("creating the bench role")?;
    output(
        Command::new(pg_bin.join("psql"))
            .args(["-X", "-q", "-h"])
            .arg(&sock)
            .args([
                "-p",
                &pg_port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
            ])
            .arg(format!("CREATE DATABASE {ROLE} OWNER {ROLE}")),
    )
    .context("creating the bench database")?;
    println!("bench pg: pgbench -i -s {} (direct)", o.scale);
    output(
        Command::new(pg_bin.join("pgbench"))
            .args(["-i", "-q", "-s", &o.scale.to_string(), "-h", "127.0.0.1"])
            .args(["-p", &pg_port.to_string(), "-U", ROLE, ROLE])
            .env("PGPASSWORD", PASSWORD),
    )
    .context("pgbench -i")?;

    // pgbouncer, session pooling, as `postgres` (it refuses to run as root).
    let bouncer_port = free_port(&[pg_port])?;
    let bdir = dir.join("pgbouncer");
    std::fs::create_dir_all(&bdir)?;
    std::fs::write(
        bdir.join("userlist.txt"),
        format!("\"{ROLE}\" \"{PASSWORD}\"\n"),
    )?;
    let max_clients = o.clients.iter().copied().max().unwrap_or(32);
    std::fs::write(
        bdir.join("pgbouncer.ini"),
        format!(
            "[databases]\n{ROLE} = host=127.0.0.1 port={pg_port} dbname={ROLE}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {bouncer_port}\nunix_socket_dir =\nauth_type = scram-sha-256\nauth_file = {}\npool_mode = session\nmax_client_conn = {}\ndefault_pool_size = {}\nlogfile = {}\npidfile = {}\nlog_connections = 0\nlog_disconnections = 0\n",
            bdir.join("userlist.txt").display(),
            max_clients + 20,
            max_clients + 4,
            bdir.join("pgbouncer.log").display(),
            bdir.join("pgbouncer.pid").display(),
        ),
    )?;
    run(Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(&bdir))?;
    let bouncer = Command::new(&pgbouncer)
        .args(["-u", "postgres"])
        .arg(bdir.join("pgbouncer.ini"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting pgbouncer")?;
    g.children.push(bouncer);
    wait_port(bouncer_port, "pgbouncer", &bdir.join("pgbouncer.log"))?;

    // The agent, attached to the bench cgroup, protecting the database.
    let pol = dir.join("policies");
    std::fs::create_dir_all(&pol)?;
    std::fs::write(
        pol.join("bench.yaml"),
        format!(
            "apiVersion: portcullis.dev/v1\nworkloads:\n  - name: pgbench\n    match: {{ exe: \"*/pgbench\" }}\ntargets:\n  - name: bench-db\n    addresses: [\"127.0.0.1\"]\n    ports: [{pg_port}]\n    protocol: {}\nrules:\n  - id: pgbench-may-query\n    workloads: [pgbench]\n    targets: [bench-db]\n    effect: allow\n",
            o.protocol
        ),
    )?;
    let check = Command::new(&agent_bin)
        .args(["policy", "check"])
        .arg(&pol)
        .output()
        .context("running portcullis policy check")?;
    if !check.status.success() {
        bail!(
            "the agent rejects a `protocol: {}` target:\n{}{}\nmeasure the L4 relay with `cargo xtask bench pg --protocol tcp`",
            o.protocol,
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
    }
    let agent_port = free_port(&[pg_port, bouncer_port])?;
    let cfg = dir.join("agent.yaml");
    std::fs::write(
        &cfg,
        format!(
            "policy_dir: {}\nstate_dir: {}\nruntime_dir: {}\nbpffs_dir: {}\ncgroup: {}\nlisten_port: {agent_port}\naudit_sync: batch\n",
            pol.display(),
            dir.join("state").display(),
            dir.join("run").display(),
            g.bpffs.display(),
            hooked.display()
        ),
    )?;
    g.agent_config = Some(cfg.clone());
    let agent_log = dir.join("agent.log");
    let mut agent = Command::new(&agent_bin)
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&agent_log)?)
        .spawn()
        .context("starting the agent")?;
    let stdout = agent.stdout.take().context("agent stdout")?;
    g.children.push(agent);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if l.contains("ready") {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(Duration::from_secs(30)).is_err() {
        bail!(
            "the agent did not become ready with a `protocol: {}` target; its log:\n{}{}",
            o.protocol,
            std::fs::read_to_string(&agent_log).unwrap_or_default(),
            if o.protocol == "postgres" {
                "\nmeasure the L4 relay with `cargo xtask bench pg --protocol tcp`"
            } else {
                ""
            }
        );
    }

    let runs = o.rounds * MODES.len() * o.clients.len() * PATHS.len();
    println!(
        "bench pg: {} rounds × {} modes × {} client counts × 3 paths, {} s each ({} runs, about {} s)",
        o.rounds,
        MODES.len(),
        o.clients.len(),
        o.secs,
        runs,
        runs as u32 * (o.secs + 1)
    );
    // results[mode][clients][path] = per-round results
    let mut results: Vec<Vec<Vec<Vec<RunResult>>>> = MODES
        .iter()
        .map(|_| {
            o.clients
                .iter()
                .map(|_| PATHS.iter().map(|_| Vec::new()).collect())
                .collect()
        })
        .collect();
    let logs = dir.join("logs");
    let audit_path = dir.join("state").join("audit").join("audit.jsonl");
    let load_before = loadavg();
    for round in 0..o.rounds {
        for (mi, mode) in MODES.iter().enumerate() {
            for (ci, &clients) in o.clients.iter().enumerate() {
                for k in 0..PATHS.len() {
                    let pi = (k + round + ci) % PATHS.len();
                    let (cg, port) = match PATHS[pi] {
                        "direct" => (&plain, pg_port),
                        "pgbouncer" => (&plain, bouncer_port),
                        _ => (&hooked, pg_port),
                    };
                    let recorded_before =
                        (round == 0 && PATHS[pi] == "direct").then(|| agent_sessions(&audit_path));
                    let r = pgbench_run(&pg_bin, cg, port, mode, clients, o.secs, &logs)
                        .with_context(|| {
                            format!(
                                "pgbench -M {mode} -c {clients} via {} (agent log: {})",
                                PATHS[pi],
                                std::fs::read_to_string(&agent_log)
                                    .unwrap_or_default()
                                    .lines()
                                    .rev()
                                    .take(5)
                                    .collect::<Vec<_>>()
                                    .join(" | ")
                            )
                        })?;
                    if let Some(before) = recorded_before {
                        std::thread::sleep(Duration::from_millis(300));
                        let after = agent_sessions(&audit_path);
                        if after != before {
                            bail!(
                                "the direct run went through the agent ({before} -> {after} sessions recorded): the benchmark's cgroups are wrong"
                            );
                        }
                    }
                    if r.failed > 0 {
                        println!(
                            "WARNING: {} failed transactions via {} (-M {mode} -c {clients})",
                            r.failed, PATHS[pi]
                        );
                    }
                    results[mi][ci][pi].push(r);
                }
            }
        }
        println!("bench pg: round {}/{} done", round + 1, o.rounds);
    }

    let load_after = loadavg();
    // What the agent did: its audit records by event.
    let audit = std::fs::read_to_string(&audit_path).unwrap_or_default();
    let mut events: std::collections::BTreeMap<String, u64> = Default::default();
    for l in audit.lines() {
        if let Ok(v) = serde_json::from_str::<Value>(l)
            && let Some(e) = v["event"].as_str()
        {
            *events.entry(e.to_string()).or_default() += 1;
        }
    }

    println!(
        "\npgbench -S (scale {}), {} rounds × {} s, medians; TPS without connection time; latency p50/p99 from pgbench -l per-transaction logs; portcullis with `protocol: {}`",
        o.scale, o.rounds, o.secs, o.protocol
    );
    println!(
        "{:<9} {:>7} {:>11} {:>11} {:>11} {:>9} {:>9}   {:>17} {:>17} {:>17}",
        "mode",
        "clients",
        "direct tps",
        "pgbouncer",
        "portcullis",
        "pc/direct",
        "pc/pgb",
        "direct p50/p99",
        "pgbouncer p50/p99",
        "portcullis p50/p99"
    );
    let mut rows = Vec::new();
    for (mi, mode) in MODES.iter().enumerate() {
        for (ci, clients) in o.clients.iter().enumerate() {
            let m = |pi: usize, f: &dyn Fn(&RunResult) -> f64| {
                median(results[mi][ci][pi].iter().map(f).collect())
            };
            let tps: Vec<f64> = (0..3).map(|pi| m(pi, &|r| r.tps)).collect();
            let p50: Vec<f64> = (0..3).map(|pi| m(pi, &|r| r.p50_ms)).collect();
            let p99: Vec<f64> = (0..3).map(|pi| m(pi, &|r| r.p99_ms)).collect();
            let lat = |i: usize| format!("{:.3}/{:.3} ms", p50[i], p99[i]);
            println!(
                "{:<9} {:>7} {:>11.0} {:>11.0} {:>11.0} {:>8.3}x {:>8.3}x   {:>17} {:>17} {:>17}",
                mode,
                clients,
                tps[0],
                tps[1],
                tps[2],
                tps[2] / tps[0],
                tps[2] / tps[1],
                lat(0),
                lat(1),
                lat(2)
            );
            let per_path: serde_json::Map<String, Value> = PATHS
                .iter()
                .enumerate()
                .map(|(pi, p)| {
                    (
                        p.to_string(),
                        json!({
                            "tps": tps[pi], "p50_ms": p50[pi], "p99_ms": p99[pi],
                            "rounds": results[mi][ci][pi].iter().map(|r| json!({
                                "tps": r.tps, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms,
                                "transactions": r.transactions, "failed": r.failed,
                            })).collect::<Vec<_>>(),
                        }),
                    )
                })
                .collect();
            rows.push(json!({
                "mode": mode,
                "clients": clients,
                "median": per_path,
                "tps_ratio_portcullis_direct": tps[2] / tps[0],
                "tps_ratio_portcullis_pgbouncer": tps[2] / tps[1],
                "p50_added_ms_vs_direct": p50[2] - p50[0],
            }));
        }
    }
    println!(
        "agent audit records during the run: {}",
        events
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    const L4_EVENTS: [&str; 5] = [
        "agent_start",
        "audit_key_created",
        "checkpoint",
        "connection",
        "connection_start",
    ];
    if o.protocol == "postgres" && events.keys().all(|e| L4_EVENTS.contains(&e.as_str())) {
        println!(
            "NOTE: the agent accepted `protocol: postgres` but wrote only connection-level records: it relayed these sessions at L4, so this run measures the L4 relay"
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "load average (1 min) before / after: {load_before:.1} / {load_after:.1} on {cores} cores"
    );
    if load_before.max(load_after) > cores as f64 {
        println!(
            "WARNING: other work was running (load above the core count): expect noisy figures; rerun on a quiet machine"
        );
    }
    let report = json!({
        "load_average_1m": {"before": load_before, "after": load_after, "cores": cores},
        "benchmark": "pgbench -S",
        "protocol": o.protocol,
        "rounds": o.rounds,
        "secs": o.secs,
        "scale": o.scale,
        "clients": o.clients,
        "latency_source": "pgbench -l per-transaction logs (all transactions of each run)",
        "tps_source": "pgbench summary, without initial connection time",
        "pgbouncer_pool_mode": "session",
        "agent_audit_events": events,
        "results": rows,
        "elapsed_s": t0.elapsed().as_secs_f64(),
    });
    let out = target_dir().join("bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("pg.json"), serde_json::to_string_pretty(&report)?)?;
    println!(
        "(written to {}; {:.0} s in all)",
        out.join("pg.json").display(),
        t0.elapsed().as_secs_f64()
    );
    drop(g);
    Ok(())
}

/// Sessions the agent has recorded so far (`connection_start` records).
fn agent_sessions(audit: &Path) -> usize {
    std::fs::read_to_string(audit)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "connection_start")
        .count()
}

fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// One pgbench -S run inside cgroup `cg` against 127.0.0.1:`port`.
fn pgbench_run(
    pg_bin: &Path,
    cg: &Path,
    port: u16,
    mode: &str,
    clients: u32,
    secs: u32,
    logs: &Path,
) -> Result<RunResult> {
    let _ = std::fs::remove_dir_all(logs);
    std::fs::create_dir_all(logs)?;
    let prefix = logs.join("tx");
    let threads = clients.min(2);
    let out = Command::new("sh")
        .arg("-c")
        .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
        .arg(cg)
        .arg(pg_bin.join("pgbench"))
        .args(["-n", "-S", "-M", mode])
        .args(["-c", &clients.to_string(), "-j", &threads.to_string()])
        .args(["-T", &secs.to_string(), "-l", "--log-prefix"])
        .arg(&prefix)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", ROLE, ROLE])
        .env("PGPASSWORD", PASSWORD)
        .current_dir(logs)
        .output()
        .context("running pgbench")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let field = |prefix: &str| -> Option<f64> {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.split('/').next())
            .and_then(|n| n.parse().ok())
    };
    let tps = field("tps = ").context("pgbench printed no `tps = ` line")?;
    let transactions = field("number of transactions actually processed:").unwrap_or(0.0) as u64;
    let failed = field("number of failed transactions:").unwrap_or(0.0) as u64;
    // Per-transaction log lines: client_id transaction_no time_us script_no epoch us.
    let mut lat = Vec::new();
    for e in std::fs::read_dir(logs)?.flatten() {
        let text = std::fs::read_to_string(e.path())
            .with_context(|| format!("reading {}", e.path().display()))?;
        lat.extend(
            text.lines()
                .filter_map(|l| l.split_whitespace().nth(2)?.parse::<f64>().ok())
                .map(|us| us / 1000.0),
        );
    }
    if lat.is_empty() {
        bail!(
            "pgbench wrote no per-transaction log under {}",
            logs.display()
        );
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok(RunResult {
        tps,
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        transactions,
        failed,
    })
}
