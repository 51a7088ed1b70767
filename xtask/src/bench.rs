//! `cargo xtask bench [datapath]`: data-path benchmarks, printed as ratios of
//! figures measured side by side in the same run (never asserted in tests).
//!
//! Two sibling cgroups: `plain` (no programs) and `hooked` (the agent's programs
//! attached, release build). Every measurement alternates plain / hooked / peer for
//! several rounds and reports the median, so machine noise hits all sides alike.
//!
//! - connect() p50 to an unprotected destination: what every process on the host
//!   pays for the hooks (goal ≤ 1.05×).
//! - L4 throughput, 1 GiB through one connection: direct vs through the agent vs
//!   socat as a peer userspace proxy (goal ≥ 0.8× direct).
//! - 1-byte ping-pong p50: latency the agent adds (goal ≤ 25 µs).
//!
//! `cargo xtask bench audit` (no root needed) times the audit writer through the
//! hidden `portcullis audit bench` command: see [`audit`].

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::setup;
use crate::util::{cargo, is_root, output, target_dir};

const ROUNDS: usize = 3;
/// The protected server's address; unprotected traffic uses 127.0.0.1, as an
/// unprotected destination on a real host has an address no target covers.
const PROTECTED_IP: &str = "127.0.0.2";
const CONNECT_ROUNDS: usize = 9;

struct Guard {
    children: Vec<Child>,
    cgroups: Vec<PathBuf>,
    agent_bin: PathBuf,
    config: Option<PathBuf>,
    bpffs: PathBuf,
    dir: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(cfg) = &self.config {
            let _ = Command::new(&self.agent_bin)
                .args(["detach", "--yes", "--config"])
                .arg(cfg)
                .stdout(Stdio::null())
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
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn_ready(cmd: &mut Command, marker: &str) -> Result<Child> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("{cmd:?}"))?;
    let out = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let m = marker.to_string();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if l.contains(&m) {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .with_context(|| format!("{cmd:?} did not print `{marker}`"))?;
    Ok(child)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn in_cg(cg: &Path, bin: &Path, args: &[&str]) -> Result<Value> {
    let out = output(
        Command::new("sh")
            .arg("-c")
            .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
            .arg(cg)
            .arg(bin)
            .args(args),
    )?;
    serde_json::from_str(out.lines().last().unwrap_or(""))
        .with_context(|| format!("loadgen output: {out}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

pub fn bench(name: Option<&str>) -> Result<()> {
    match name.unwrap_or("all") {
        "datapath" => datapath(),
        "policy" => policy(),
        "audit" => audit(),
        "all" => {
            policy()?;
            audit()?;
            datapath()
        }
        other => {
            bail!("unknown benchmark `{other}` (available: datapath, policy, audit, all; and `pg`)")
        }
    }
}

/// Decision time of the policy engine (pure, no I/O) at 10, 1,000 and 10,000
/// rules; goal: p50 ≤ 2 µs at 10,000 rules.
fn policy() -> Result<()> {
    setup::setup()?;
    cargo(&["build", "--release", "-p", "portcullis"])?;
    let bin = target_dir().join("release").join("portcullis");
    println!(
        "\n{:<10} {:>12} {:>12} {:>12}  goal",
        "rules", "compile", "p50", "p99"
    );
    let mut report = Vec::new();
    for rules in [10, 1_000, 10_000] {
        let out =
            output(Command::new(&bin).args(["policy", "bench", "--rules", &rules.to_string()]))?;
        let v: Value = serde_json::from_str(out.lines().last().unwrap_or(""))
            .with_context(|| format!("policy bench output: {out}"))?;
        let (p50, p99) = (
            v["p50_ns"].as_f64().unwrap_or(f64::NAN),
            v["p99_ns"].as_f64().unwrap_or(f64::NAN),
        );
        println!(
            "{:<10} {:>9} ms {:>9.2} µs {:>9.2} µs  {}",
            rules,
            v["compile_ms"],
            p50 / 1000.0,
            p99 / 1000.0,
            if rules == 10_000 { "p50 <= 2 µs" } else { "" }
        );
        report.push(v);
    }
    // SQL analysis of pgbench's statement (what a PostgreSQL session pays per
    // statement before the decision).
    let out =
        output(Command::new(&bin).args(["policy", "bench", "--sql", "--iterations", "20000"]))?;
    let v: Value = serde_json::from_str(out.lines().last().unwrap_or(""))
        .with_context(|| format!("policy bench --sql output: {out}"))?;
    let ns = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "\nSQL analysis ({}): uncached {:.1} µs, cached {:.0} ns, cached by shape (literal changes) {:.0} ns, facts_for {:.0} ns",
        v["statement"].as_str().unwrap_or("?"),
        ns("uncached_ns") / 1000.0,
        ns("cached_ns"),
        ns("cached_by_shape_ns"),
        ns("facts_for_ns")
    );
    report.push(v);
    let out = target_dir().join("bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("policy.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("(written to {})", out.join("policy.json").display());
    Ok(())
}

/// Audit writer throughput: records appended per second with hashing, signing
/// and batching by the writer on one core, with `audit_sync: batch` and
/// `none`; records through the queue from a caller thread; and what recording
/// costs the proxy per request (two records per proxied connection). Goal:
/// >= 200,000 records/s on one core. No root needed.
fn audit() -> Result<()> {
    const RECORDS: u64 = 500_000;
    const ROUNDS: usize = 3;
    const GOAL: f64 = 200_000.0;
    setup::setup()?;
    cargo(&["build", "--release", "-p", "portcullis"])?;
    let bin = target_dir().join("release").join("portcullis");
    // On the build's file system (a real disk, as /var/lib is), not /tmp.
    let scratch = target_dir()
        .join("bench")
        .join(format!("audit-scratch-{}", std::process::id()));
    // One process per mode and round, on an empty directory after `sync`, so
    // that one run's dirty pages are not another's write-back; the order of the
    // modes flips every round.
    let mut rounds: Vec<Value> = Vec::new();
    for round in 1..=ROUNDS {
        let order = if round % 2 == 1 {
            ["batch", "none"]
        } else {
            ["none", "batch"]
        };
        let mut modes = Vec::new();
        for mode in order {
            let _ = std::fs::remove_dir_all(&scratch);
            let _ = Command::new("sync").status();
            let out = output(
                Command::new(&bin)
                    .args(["audit", "bench", "--records", &RECORDS.to_string()])
                    .args(["--sync", mode, "--dir"])
                    .arg(&scratch),
            );
            let _ = std::fs::remove_dir_all(&scratch);
            let out = out?;
            let v: Value = serde_json::from_str(out.lines().last().unwrap_or(""))
                .with_context(|| format!("audit bench output: {out}"))?;
            modes.extend(v["modes"].as_array().cloned().unwrap_or_default());
        }
        println!("bench: round {round}/{ROUNDS} done");
        rounds.push(json!({ "modes": modes }));
    }
    // Median over the rounds of modes[sync=mode][part][field].
    let pick = |mode: &str, part: &str, field: &str| -> f64 {
        median(
            rounds
                .iter()
                .filter_map(|r| r["modes"].as_array())
                .flatten()
                .filter(|m| m["sync"] == mode)
                .filter_map(|m| m[part][field].as_f64())
                .collect(),
        )
    };
    let both = |part: &str, field: &str| (pick("batch", part, field), pick("none", part, field));
    println!(
        "\n{RECORDS} records per part and round, {ROUNDS} rounds, medians; records shaped like `connection` records"
    );
    println!(
        "{:<50} {:>15} {:>15}  goal",
        "scenario", "sync: batch", "sync: none"
    );
    let one_core = both("writer_one_core", "records_per_sec");
    println!(
        "{:<50} {:>9.0} rec/s {:>9.0} rec/s  >= 200,000/s",
        "writer alone, one core (wall, fsync included)", one_core.0, one_core.1
    );
    let one_core_cpu = both("writer_one_core", "records_per_cpu_sec");
    println!(
        "{:<50} {:>9.0} rec/s {:>9.0} rec/s  (info: its CPU time)",
        "writer alone, one core (thread CPU time)", one_core_cpu.0, one_core_cpu.1
    );
    let e2e = both("end_to_end", "records_per_sec");
    println!(
        "{:<50} {:>9.0} rec/s {:>9.0} rec/s  (info: caller + writer threads)",
        "end to end: record() on one thread -> writer", e2e.0, e2e.1
    );
    let us = |v: f64| v / 1000.0;
    let w = both("writer_one_core", "us_per_record");
    println!(
        "{:<50} {:>12.2} µs {:>12.2} µs",
        "writer time per record", w.0, w.1
    );
    let call = both("end_to_end", "record_call_ns");
    println!(
        "{:<50} {:>12.2} µs {:>12.2} µs  (info: caller's thread)",
        "record() per record, writer running",
        us(call.0),
        us(call.1)
    );
    let single = both("writer_one_core", "prepare_ns_single_thread");
    println!(
        "{:<50} {:>12.2} µs {:>12.2} µs  (info: nothing else running)",
        "record()'s own work per record",
        us(single.0),
        us(single.1)
    );
    let build = both("end_to_end", "body_build_ns");
    println!(
        "{:<50} {:>12.2} µs {:>12.2} µs  (info: as proxy.rs builds it)",
        "building a record body",
        us(build.0),
        us(build.1)
    );
    println!(
        "{:<50} {:>12.2} µs {:>12.2} µs  (info: 2 records: build + record())",
        "per proxied request, on the proxy's thread",
        2.0 * us(build.0 + call.0),
        2.0 * us(build.1 + call.1)
    );
    println!(
        "{:<50} {:>12.0} B",
        "average line",
        pick("batch", "writer_one_core", "line_bytes")
    );
    if one_core.0 < GOAL || one_core.1 < GOAL {
        println!(
            "BELOW GOAL: the writer appends {:.0} (batch) / {:.0} (none) records/s on one core",
            one_core.0, one_core.1
        );
    }
    let report = json!({
        "records": RECORDS,
        "goal_records_per_sec": GOAL,
        "median": {
            "writer_one_core_records_per_sec": {"batch": one_core.0, "none": one_core.1},
            "writer_one_core_records_per_cpu_sec": {"batch": one_core_cpu.0, "none": one_core_cpu.1},
            "end_to_end_records_per_sec": {"batch": e2e.0, "none": e2e.1},
            "writer_us_per_record": {"batch": w.0, "none": w.1},
            "record_call_ns": {"batch": call.0, "none": call.1},
            "record_own_work_ns": {"batch": single.0, "none": single.1},
            "body_build_ns": {"batch": build.0, "none": build.1},
            "per_request_proxy_thread_us": {
                "batch": 2.0 * us(build.0 + call.0),
                "none": 2.0 * us(build.1 + call.1),
            },
        },
        "rounds": rounds,
    });
    let out = target_dir().join("bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("audit.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("(written to {})", out.join("audit.json").display());
    Ok(())
}

fn datapath() -> Result<()> {
    if !is_root() {
        bail!("the data-path benchmark attaches eBPF programs: run it as root");
    }
    setup::setup()?;
    cargo(&[
        "build",
        "--release",
        "-p",
        "portcullis",
        "-p",
        "portcullis-tests",
        "--bins",
    ])?;
    let rel = target_dir().join("release");
    let agent_bin = rel.join("portcullis");
    let loadgen = rel.join("pc-loadgen");
    let socat = which("socat").or_else(|| {
        let _ = Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends", "socat"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
        which("socat")
    });

    let root = crate::util::cgroup2_root().context("no cgroup v2 hierarchy is mounted")?;
    let base = root.join(format!("portcullis-test-{}-bench", std::process::id()));
    let plain = base.join("plain");
    let hooked = base.join("hooked");
    let dir = std::env::temp_dir().join(format!("portcullis-bench-{}", std::process::id()));
    let mut g = Guard {
        children: Vec::new(),
        cgroups: vec![base.clone(), plain.clone(), hooked.clone()],
        agent_bin: agent_bin.clone(),
        config: None,
        bpffs: PathBuf::from(format!(
            "/sys/fs/bpf/portcullis-test-{}-bench",
            std::process::id()
        )),
        dir: dir.clone(),
    };
    for c in [&base, &plain, &hooked] {
        std::fs::create_dir_all(c).with_context(|| format!("creating {}", c.display()))?;
    }
    std::fs::create_dir_all(dir.join("policies"))?;

    let (p_port, u_port, agent_port, socat_port) =
        (free_port()?, free_port()?, free_port()?, free_port()?);
    for (mode, addr) in [
        ("server", format!("{PROTECTED_IP}:{p_port}")),
        ("acceptor", format!("127.0.0.1:{u_port}")),
        ("acceptor", format!("{PROTECTED_IP}:{u_port}")),
    ] {
        let c = spawn_ready(Command::new(&loadgen).args([mode, &addr]), "listening")?;
        g.children.push(c);
    }
    std::fs::write(
        dir.join("policies").join("bench.yaml"),
        format!(
            "apiVersion: portcullis.dev/v1\nworkloads:\n  - name: loadgen\n    match: {{ comm: \"pc-loadgen\" }}\ntargets:\n  - name: sink\n    addresses: [\"{PROTECTED_IP}\"]\n    ports: [{p_port}]\n    protocol: tcp\nrules:\n  - id: loadgen-allow\n    workloads: [loadgen]\n    targets: [sink]\n    effect: allow\n"
        ),
    )?;
    let cfg = dir.join("agent.yaml");
    std::fs::write(
        &cfg,
        format!(
            "policy_dir: {}\nstate_dir: {}\nruntime_dir: {}\nbpffs_dir: {}\ncgroup: {}\nlisten_port: {agent_port}\naudit_sync: batch\n",
            dir.join("policies").display(),
            dir.join("state").display(),
            dir.join("run").display(),
            g.bpffs.display(),
            hooked.display()
        ),
    )?;
    let agent = spawn_ready(
        Command::new(&agent_bin)
            .args(["run", "--config"])
            .arg(&cfg)
            .stderr(Stdio::null()),
        "ready",
    )?;
    g.config = Some(cfg);
    g.children.push(agent);
    if let Some(s) = &socat {
        let c = Command::new(s)
            .args([
                &format!("TCP-LISTEN:{socat_port},bind=127.0.0.1,reuseaddr,fork"),
                &format!("TCP:{PROTECTED_IP}:{p_port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        g.children.push(c);
        std::thread::sleep(Duration::from_millis(300));
    }

    let p = format!("{PROTECTED_IP}:{p_port}");
    let u = format!("127.0.0.1:{u_port}");
    let u_same = format!("{PROTECTED_IP}:{u_port}");
    let mut conn_same_plain = Vec::new();
    let mut conn_same_hooked = Vec::new();
    let s = format!("127.0.0.1:{socat_port}");
    let mut conn_plain = Vec::new();
    let mut conn_hooked = Vec::new();
    let mut conn_redirect = Vec::new();
    let mut tp = (Vec::new(), Vec::new(), Vec::new());
    let mut pp = (Vec::new(), Vec::new(), Vec::new());
    let mut intact = true;
    let connect_p50 = |cg: &Path, n: &str, a: &str| -> Result<f64> {
        Ok(in_cg(cg, &loadgen, &["connect", n, a])?["p50_us"]
            .as_f64()
            .unwrap_or(f64::NAN))
    };
    // connect() differences are around a microsecond: many short runs, the order
    // flipped every round so neither side always runs first.
    let _warm_up = connect_p50(&plain, "2000", &u)?;
    for r in 0..CONNECT_ROUNDS {
        if r % 2 == 0 {
            conn_plain.push(connect_p50(&plain, "10000", &u)?);
            conn_hooked.push(connect_p50(&hooked, "10000", &u)?);
            conn_same_plain.push(connect_p50(&plain, "10000", &u_same)?);
            conn_same_hooked.push(connect_p50(&hooked, "10000", &u_same)?);
        } else {
            conn_same_hooked.push(connect_p50(&hooked, "10000", &u_same)?);
            conn_same_plain.push(connect_p50(&plain, "10000", &u_same)?);
            conn_hooked.push(connect_p50(&hooked, "10000", &u)?);
            conn_plain.push(connect_p50(&plain, "10000", &u)?);
        }
    }
    println!("bench: {ROUNDS} rounds, alternating direct / portcullis / socat");
    for round in 1..=ROUNDS {
        conn_redirect.push(
            in_cg(&hooked, &loadgen, &["connect", "3000", &p])?["p50_us"]
                .as_f64()
                .unwrap_or(f64::NAN),
        );
        let mut t = |cg: &Path, a: &str| -> Result<f64> {
            let v = in_cg(cg, &loadgen, &["throughput", "1024", a])?;
            if v["intact"] != true {
                intact = false;
            }
            Ok(v["mb_per_s"].as_f64().unwrap_or(f64::NAN))
        };
        tp.0.push(t(&plain, &p)?);
        tp.1.push(t(&hooked, &p)?);
        if socat.is_some() {
            tp.2.push(t(&plain, &s)?);
        }
        let q = |cg: &Path, a: &str| -> Result<f64> {
            Ok(in_cg(cg, &loadgen, &["pingpong", "20000", a])?["p50_us"]
                .as_f64()
                .unwrap_or(f64::NAN))
        };
        pp.0.push(q(&plain, &p)?);
        pp.1.push(q(&hooked, &p)?);
        if socat.is_some() {
            pp.2.push(q(&plain, &s)?);
        }
        println!("bench: round {round}/{ROUNDS} done");
    }
    let (c0, c1, cr) = (
        median(conn_plain),
        median(conn_hooked),
        median(conn_redirect),
    );
    let (s0, s1) = (median(conn_same_plain), median(conn_same_hooked));
    let (t0, t1, t2) = (median(tp.0), median(tp.1), median(tp.2));
    let (q0, q1, q2) = (median(pp.0), median(pp.1), median(pp.2));
    println!();
    println!(
        "{:<44} {:>12} {:>12} {:>12} {:>10}  goal",
        "scenario", "direct", "portcullis", "socat", "ratio"
    );
    println!(
        "{:<44} {:>9.2} µs {:>9.2} µs {:>12} {:>9.3}x  <= 1.05x",
        "connect() p50, unprotected destination",
        c0,
        c1,
        "-",
        c1 / c0
    );
    println!(
        "{:<44} {:>9.2} µs {:>9.2} µs {:>12} {:>9.3}x  (info: other port of a protected address)",
        "connect() p50, unprotected port, same addr",
        s0,
        s1,
        "-",
        s1 / s0
    );
    println!(
        "{:<44} {:>9.2} µs {:>9.2} µs {:>12} {:>9.3}x  (info: connect lands on the agent)",
        "connect() p50, protected destination",
        c0,
        cr,
        "-",
        cr / c0
    );
    println!(
        "{:<44} {:>7.0} MB/s {:>7.0} MB/s {:>7.0} MB/s {:>9.3}x  >= 0.8x",
        "L4 throughput, 1 GiB, one connection",
        t0,
        t1,
        t2,
        t1 / t0
    );
    println!(
        "{:<44} {:>9.2} µs {:>9.2} µs {:>9.2} µs {:>+8.2}µs  <= +25 µs",
        "1-byte ping-pong p50",
        q0,
        q1,
        q2,
        q1 - q0
    );
    if !intact {
        println!("WARNING: a throughput run did not arrive intact");
    }
    let report = json!({
        "rounds": ROUNDS,
        "connect_p50_us": {"direct": c0, "hooked": c1, "ratio": c1 / c0, "protected_redirected": cr,
            "same_address_direct": s0, "same_address_hooked": s1},
        "throughput_mb_s": {"direct": t0, "portcullis": t1, "socat": t2, "ratio": t1 / t0},
        "pingpong_p50_us": {"direct": q0, "portcullis": q1, "socat": q2, "added_us": q1 - q0},
        "intact": intact,
    });
    let out = target_dir().join("bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("datapath.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("\n(written to {})", out.join("datapath.json").display());
    drop(g);
    Ok(())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}
