//! `portcullis audit bench` (hidden; run by `cargo xtask bench audit`): how fast
//! the audit writer appends records, and what a record costs the thread that
//! makes it. Records are shaped and sized like real `connection` records.
//!
//! For each `audit_sync` mode, on fresh logs:
//!
//! - `writer_one_core`: the writer's own work on one thread: `--records` records,
//!   already in canonical form as callers hand them over, numbered, linked,
//!   hashed, signed (a checkpoint per 1000), batched (4096 per write), written
//!   and, with `batch`, fdatasync'ed, by the writer's code, timed on the wall
//!   clock (`records_per_sec`: fsync and page-cache throttling waits included)
//!   and in thread CPU time (`records_per_cpu_sec`: the core's work, the
//!   kernel's copy into the page cache included). Preparing each batch of
//!   records is timed apart (`prepare_ns_single_thread`: what `record()` does,
//!   with nothing else running).
//! - `end_to_end`: `--records` records built and passed to [`AuditLog::record`]
//!   from one thread while the writer thread runs, plus the final
//!   [`AuditLog::flush`]. When the bounded queue is full the producer waits
//!   for room. Over the first records (while the queue has room), with their
//!   bodies built beforehand: `record_call_ns`, the wall time per
//!   [`AuditLog::record`] call (envelope, canonical form, queueing), and
//!   `body_build_ns`, the time to build a body as proxy.rs does (a struct made
//!   into a JSON value). Together: what a proxy task pays per record; a proxied
//!   connection writes two (`connection_start`, `connection`).
//!   `writer_cpu_secs` is the process CPU time minus the producer thread's.
//!
//! The log files are left in `--dir/<mode>-writer/audit` and
//! `--dir/<mode>/audit` (keys next to them): they verify like any other log.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::time::{ClockId, clock_gettime};
use serde::Serialize;
use serde_json::json;

use super::{AuditLog, AuditOptions, segments};
use crate::config::AuditSync;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Modes {
    Batch,
    None,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Parts {
    Writer,
    EndToEnd,
    Both,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Which measurement(s) to run.
    #[arg(long, value_enum, default_value_t = Parts::Both)]
    pub part: Parts,
    /// Records appended per mode.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Scratch directory: each mode writes `<dir>/<mode>/audit`. Left in place.
    #[arg(long)]
    pub dir: PathBuf,
    /// Which `audit_sync` mode(s) to measure.
    #[arg(long, value_enum, default_value_t = Modes::Both)]
    pub sync: Modes,
    /// Queue between the producer and the writer (as `audit_queue`).
    #[arg(long, default_value_t = 65_536)]
    pub queue: usize,
    /// Rotation size in bytes (as `audit_rotate_bytes`; 0: never).
    #[arg(long, default_value_t = 64 << 20)]
    pub rotate_bytes: u64,
    /// Retention by total size in bytes (as `audit_retain_bytes`; 0: keep all).
    #[arg(long, default_value_t = 0)]
    pub retain_bytes: u64,
}

/// The shape of a `connection` record (see proxy.rs), with typical values.
#[derive(Serialize)]
struct Body<'a> {
    session_id: String,
    client: &'a str,
    original_destination: &'a str,
    target: &'a str,
    attribution: &'a serde_json::Value,
    decision: &'a str,
    policy_decision: &'a str,
    rule: &'a str,
    mode: &'a str,
    workloads: &'a [&'a str],
    policy_hash: &'a str,
    bytes_client_to_upstream: u64,
    bytes_upstream_to_client: u64,
    duration_ms: u64,
    end: &'a str,
    error: Option<String>,
}

fn cpu(clock: ClockId) -> Duration {
    clock_gettime(clock).map_or(Duration::ZERO, Duration::from)
}

/// Waits until the queue has room (this is its only producer, so the record
/// that follows fits), then queues. Returns how many times it found it full.
fn record_waiting(log: &AuditLog, room: usize, body: serde_json::Value) -> anyhow::Result<u64> {
    let mut waits = 0;
    while log.queued() >= room {
        waits += 1;
        std::thread::sleep(Duration::from_micros(50));
    }
    log.record("connection", body)?;
    Ok(waits)
}

fn options(args: &BenchArgs) -> AuditOptions {
    AuditOptions {
        rotate_bytes: args.rotate_bytes,
        retain_bytes: args.retain_bytes,
        // A scratch directory may sit on a small file system: measure, do not refuse.
        min_free_bytes: 0,
        ..AuditOptions::default()
    }
}

/// Builds the body of record `i`, as proxy.rs does for a connection.
struct Maker {
    attribution: serde_json::Value,
}

impl Maker {
    fn new() -> Self {
        Self {
            attribution: json!({
                "pid": 48211, "tid": 48211, "uid": 994, "user": "svc-batch", "gid": 994,
                "group": "svc-batch", "comm": "psql", "exe": "/usr/lib/postgresql/16/bin/psql",
                "exe_source": "exec",
                "cmdline": ["psql", "-h", "10.0.4.12", "-U", "batch", "ledger"],
                "cgroup_id": 11234, "cgroup": "/system.slice/batch-report.service",
                "unit": "batch-report.service", "slice": "system.slice", "container_id": null,
                "start_boot_ns": 81_234_567_890_u64, "netns_cookie": 4096,
                "socket_cookie": 120_034, "connect_boot_ns": 81_334_567_890_u64,
                "exited": false, "exec_changed": false, "exe_sha256": null,
            }),
        }
    }

    fn make(&self, i: u64) -> serde_json::Result<serde_json::Value> {
        serde_json::to_value(Body {
            session_id: format!("{i:032x}"),
            client: "127.0.0.1:51324",
            original_destination: "10.0.4.12:5432",
            target: "ledger-db",
            attribution: &self.attribution,
            decision: "allow",
            policy_decision: "allow",
            rule: "batch-reads-ledger",
            mode: "enforce",
            workloads: &["batch-report"],
            policy_hash: "6c0f4b3a2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7ee91a",
            bytes_client_to_upstream: 1_234 + i % 97,
            bytes_upstream_to_client: 56_789 + i % 89,
            duration_ms: 12 + i % 7,
            end: "closed",
            error: None,
        })
    }
}

fn log_bytes(dir: &std::path::Path) -> anyhow::Result<(usize, u64)> {
    let files = segments::log_files(dir)?;
    let bytes = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    Ok((files.len(), bytes))
}

/// The writer's work alone, on this thread.
fn writer_one_core(
    args: &BenchArgs,
    sync: AuditSync,
    name: &str,
) -> anyhow::Result<serde_json::Value> {
    let dir = args.dir.join(format!("{name}-writer")).join("audit");
    let (log, mut w) = AuditLog::open_parts(&dir, 16, sync, options(args))?;
    w.start();
    let maker = Maker::new();
    let n = args.records.max(1);
    let mut timed = Duration::ZERO;
    let mut cpu_time = Duration::ZERO;
    let mut prepare_time = Duration::ZERO;
    let mut done = 0;
    while done < n {
        let k = (n - done).min(super::MAX_BATCH as u64);
        let bodies = (done..done + k)
            .map(|i| maker.make(i))
            .collect::<serde_json::Result<Vec<_>>>()?;
        let t = Instant::now();
        let batch = bodies
            .into_iter()
            .map(|b| log.prepare("connection", b))
            .collect::<Result<Vec<_>, _>>()?;
        prepare_time += t.elapsed();
        let (t, c) = (Instant::now(), cpu(ClockId::CLOCK_THREAD_CPUTIME_ID));
        for rec in &batch {
            w.take(rec);
        }
        w.write_batch();
        drop(batch);
        timed += t.elapsed();
        cpu_time += cpu(ClockId::CLOCK_THREAD_CPUTIME_ID).saturating_sub(c);
        done += k;
    }
    let (t, c) = (Instant::now(), cpu(ClockId::CLOCK_THREAD_CPUTIME_ID));
    w.checkpoint();
    w.write_batch();
    timed += t.elapsed();
    cpu_time += cpu(ClockId::CLOCK_THREAD_CPUTIME_ID).saturating_sub(c);
    let secs = timed.as_secs_f64();
    drop(w);
    let (files, bytes) = log_bytes(&dir)?;
    Ok(json!({
        "records": n,
        "secs": secs,
        "records_per_sec": n as f64 / secs,
        "us_per_record": secs * 1e6 / n as f64,
        "cpu_secs": cpu_time.as_secs_f64(),
        "records_per_cpu_sec": n as f64 / cpu_time.as_secs_f64(),
        "prepare_ns_single_thread": prepare_time.as_nanos() as f64 / n as f64,
        "files": files,
        "line_bytes": (args.retain_bytes == 0).then(|| bytes as f64 / n as f64),
        "dir": dir,
    }))
}

/// Records from a caller thread through the queue to the writer thread.
fn end_to_end(args: &BenchArgs, sync: AuditSync, name: &str) -> anyhow::Result<serde_json::Value> {
    let dir = args.dir.join(name).join("audit");
    let log = AuditLog::open_with(&dir, args.queue.max(16), sync, options(args))?;
    if !log.flush(Duration::from_secs(60)) {
        anyhow::bail!("the audit writer did not start");
    }
    let maker = Maker::new();
    let n = args.records.max(1);
    // The first records, while the queue has room: what a caller pays per record.
    let calls = n
        .min(u64::try_from(args.queue / 2).unwrap_or(u64::MAX))
        .max(1);
    // Building the bodies, as the proxy does before it records (timed apart).
    let t = Instant::now();
    let bodies = (0..calls)
        .map(|i| maker.make(i))
        .collect::<serde_json::Result<Vec<_>>>()?;
    let build_ns = t.elapsed().as_nanos() as f64 / calls as f64;
    let (cpu0, main0, t0) = (
        cpu(ClockId::CLOCK_PROCESS_CPUTIME_ID),
        cpu(ClockId::CLOCK_THREAD_CPUTIME_ID),
        Instant::now(),
    );
    let room = args.queue.max(16);
    let mut waits = 0;
    for body in bodies {
        waits += record_waiting(&log, room, body)?;
    }
    let call_ns = t0.elapsed().as_nanos() as f64 / calls as f64;
    for i in calls..n {
        waits += record_waiting(&log, room, maker.make(i)?)?;
    }
    if !log.flush(Duration::from_secs(600)) {
        anyhow::bail!("the audit writer did not finish within 10 minutes");
    }
    let wall = t0.elapsed().as_secs_f64();
    let process = cpu(ClockId::CLOCK_PROCESS_CPUTIME_ID).saturating_sub(cpu0);
    let main = cpu(ClockId::CLOCK_THREAD_CPUTIME_ID).saturating_sub(main0);
    let writer_cpu = process.saturating_sub(main).as_secs_f64();
    drop(log);
    let (files, _) = log_bytes(&dir)?;
    Ok(json!({
        "records": n,
        "wall_secs": wall,
        "records_per_sec": n as f64 / wall,
        "writer_cpu_secs": writer_cpu,
        "producer_cpu_secs": main.as_secs_f64(),
        "record_call_ns": call_ns,
        "body_build_ns": build_ns,
        "queue_full_waits": waits,
        "files": files,
        "dir": dir,
    }))
}

/// Runs the benchmark and prints one JSON object.
pub fn run(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let modes: &[(AuditSync, &str)] = match args.sync {
        Modes::Batch => &[(AuditSync::Batch, "batch")],
        Modes::None => &[(AuditSync::None, "none")],
        Modes::Both => &[(AuditSync::Batch, "batch"), (AuditSync::None, "none")],
    };
    let mut out = Vec::new();
    for (sync, name) in modes {
        let mut m = json!({ "sync": name });
        if args.part != Parts::EndToEnd {
            m["writer_one_core"] = writer_one_core(args, *sync, name)?;
        }
        if args.part != Parts::Writer {
            m["end_to_end"] = end_to_end(args, *sync, name)?;
        }
        out.push(m);
    }
    println!(
        "{}",
        json!({"records": args.records, "queue": args.queue, "modes": out})
    );
    Ok(ExitCode::SUCCESS)
}
