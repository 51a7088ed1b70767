//! End-to-end tests of the audit log under failure: the real agent killed with
//! SIGKILL again and again while it writes, a writer killed while it rotates
//! and prunes segments, and a state directory on a real tmpfs that runs full.
//! Everything is checked with `portcullis audit verify` and the host's public key,
//! as an auditor would.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_tests::{
    Agent, AgentOpts, Reply, Server, TempDir, TestCgroup, Tmpfs, agent_bin, agent_built,
    audit_lines, client, client_py, in_cgroup, policy, privileged, verify_audit,
};
use serde_json::Value;

const ALLOW_PY: &str = "  - name: py\n    match: { exe: \"*python3*\" }";
const RULE_PY: &str =
    "  - id: py-allow\n    workloads: [py]\n    targets: [svc]\n    effect: allow";

const KILLS: usize = 20;

/// Small deterministic jitter (xorshift), so kills land at varied points of a write.
struct Jitter(u64);

impl Jitter {
    fn new() -> Self {
        Self(u64::from(std::process::id()) | 1)
    }

    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(lo + self.0 % (hi - lo))
    }
}

/// Parses the audit lines, checks that the complete records form one chain
/// (`seq` one higher each time, `prev_hash` the hash before) and returns them
/// with the number of lines that are not records (torn by a kill).
fn chain(lines: &[String]) -> (Vec<Value>, usize) {
    let mut recs: Vec<Value> = Vec::new();
    let mut torn = 0;
    for l in lines {
        match serde_json::from_str::<Value>(l) {
            Ok(v) => {
                if let Some(prev) = recs.last() {
                    assert_eq!(
                        v["seq"].as_u64(),
                        prev["seq"].as_u64().map(|s| s + 1),
                        "seq must grow by one across restarts and files:\n{prev}\n{v}"
                    );
                    assert_eq!(
                        v["prev_hash"], prev["hash"],
                        "the chain must continue across restarts and files:\n{prev}\n{v}"
                    );
                }
                recs.push(v);
            }
            Err(_) => torn += 1,
        }
    }
    (recs, torn)
}

/// A record cut short, as a SIGKILL in the middle of write(2) leaves it: the
/// first half of `line`, without newline.
fn tear(path: &Path) {
    let text = std::fs::read_to_string(path).expect("read live audit file");
    let Some(last) = text.lines().last() else {
        return;
    };
    let half = last.len() / 2;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(&last.as_bytes()[..half]))
        .expect("append a torn record");
}

fn spawn_loop(unit: &Path, port: &str, stop: &Path) -> Child {
    let py = client_py();
    in_cgroup(
        unit,
        &[
            "python3",
            py.to_str().expect("utf-8 path"),
            "loop",
            "127.0.0.1",
            port,
            stop.to_str().expect("utf-8 path"),
        ],
    )
    .stdout(Stdio::piped())
    .spawn()
    .expect("spawn loop client")
}

#[test]
fn kill9_twenty_times_under_load_leaves_a_verifiable_continuous_chain() {
    if !privileged("kill9_twenty_times_under_load_leaves_a_verifiable_continuous_chain") {
        return;
    }
    let cg = TestCgroup::new();
    let server = Server::start("127.0.0.1:0", Reply::Echo, Some(cg.slice.clone()));
    let port = server.port().to_string();
    let mut agent = Agent::start(
        &cg.slice,
        &policy(&["127.0.0.1"], &[server.port()], ALLOW_PY, RULE_PY),
        AgentOpts::default(),
    );
    let scratch = TempDir::new("portcullis-test-audit-load");
    let stop = scratch.0.join("stop");
    // Many short connections, each two records (connection_start, connection).
    let loops: Vec<Child> = (0..3)
        .map(|i| spawn_loop(&cg.unit(&format!("load{i}")), &port, &stop))
        .collect();
    let mut jitter = Jitter::new();
    let mut simulated_tears = 0;
    let mut written = Vec::new();
    for k in 0..KILLS {
        std::thread::sleep(jitter.ms(200, 700));
        written.push(agent.status()["audit"]["written"].as_u64().unwrap_or(0));
        agent.kill9();
        // SIGKILL rarely lands inside write(2); leave what it leaves when it
        // does in a few rounds, so torn tails are always exercised.
        if k % 7 == 3 {
            tear(&agent.audit_path());
            simulated_tears += 1;
        }
        agent.spawn();
    }
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&stop, "1").expect("stop the loops");
    let mut good = 0;
    for l in loops {
        let out = l.wait_with_output().expect("loop client");
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Value = serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("loop client output {text}: {e}"));
        good += v["good"].as_u64().unwrap_or(0);
    }
    assert!(
        written.iter().filter(|w| **w > 20).count() >= KILLS / 2,
        "the agent was not writing much when it was killed: {written:?}"
    );
    assert!(good >= 200, "only {good} connections got through the agent");
    let status = agent.sigterm();
    assert!(status.success(), "agent stop: {status}\n{}", agent.log());

    let (ok, report) = verify_audit(&agent.audit_pubkey(), &agent.audit_dir());
    assert!(ok, "audit verify after {KILLS} kills:\n{report}");
    eprintln!("{report}");
    assert!(report.contains("result:      VERIFIED"), "{report}");
    let (recs, torn) = chain(&audit_lines(&agent.audit_dir()));
    assert!(torn >= simulated_tears, "torn lines: {torn}");
    assert!(
        report.contains("torn record(s) at"),
        "torn tails must be reported as warnings:\n{report}"
    );
    let starts = recs.iter().filter(|r| r["event"] == "agent_start").count();
    assert_eq!(starts, KILLS + 1, "one agent_start per run");
    let connections = recs.iter().filter(|r| r["event"] == "connection").count();
    assert!(
        connections >= 200,
        "{connections} connection records for {good} good connections"
    );
    assert_eq!(
        recs.first().map(|r| r["seq"].as_u64()),
        Some(Some(0)),
        "the log starts at seq 0"
    );
    assert_eq!(
        recs.last().map(|r| r["event"].as_str()),
        Some(Some("checkpoint")),
        "a stopped agent leaves a signed head"
    );
}

#[test]
fn kill9_while_rotating_and_pruning_segments_leaves_a_verifiable_log() {
    if !agent_built("kill9_while_rotating_and_pruning_segments_leaves_a_verifiable_log") {
        return;
    }
    // The hidden bench command is a real writer process with rotation and
    // retention set small, so the kills land in every phase: appending,
    // signing, renaming, removing.
    let dir = TempDir::new("portcullis-test-audit-rotate");
    let mut jitter = Jitter::new();
    for _ in 0..KILLS {
        let mut child = Command::new(agent_bin())
            .args(["audit", "bench", "--part", "end-to-end", "--sync", "none"])
            .args(["--records", "100000000", "--queue", "256"])
            .args(["--rotate-bytes", "65536", "--retain-bytes", "524288"])
            .arg("--dir")
            .arg(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn audit bench");
        std::thread::sleep(jitter.ms(150, 600));
        let _ = child.kill();
        let _ = child.wait();
    }
    let audit = dir.0.join("none").join("audit");
    let pubkey = dir.0.join("none").join("keys").join("audit-signing.pub");
    let (ok, report) = verify_audit(&pubkey, &audit);
    assert!(ok, "audit verify after {KILLS} kills:\n{report}");
    eprintln!("{report}");
    let (recs, _) = chain(&audit_lines(&audit));
    let removed = recs
        .iter()
        .filter(|r| r["event"] == "audit_retention")
        .count();
    assert!(removed > 0, "retention never ran:\n{report}");
    assert!(
        report.contains("which the agent's retention removed"),
        "the report must say the start is after retention:\n{report}"
    );
    let segments = std::fs::read_dir(&audit)
        .expect("list audit dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("audit-"))
        .count();
    assert!(segments >= 2, "rotation never ran:\n{report}");
}

/// Waits until the status document satisfies `pred`.
fn wait_status(agent: &Agent, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let st = agent.status();
        if pred(&st) {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; status: {:#}\n{}",
            st["audit"],
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes to `path` until the file system is full.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).expect("create filler");
    let chunk = vec![0x55u8; 64 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // Partial pages too.
    let _ = f.write_all(&[0x55; 512]);
    let _ = f.sync_all();
}

#[test]
fn disk_full_refuses_new_connections_loses_nothing_and_recovers() {
    if !privileged("disk_full_refuses_new_connections_loses_nothing_and_recovers") {
        return;
    }
    // Declared first: dropped (unmounted) after the agent has stopped.
    let fs = Tmpfs::mount("4m");
    let cg = TestCgroup::new();
    let unit = cg.unit("client");
    let server = Server::start("127.0.0.1:0", Reply::Echo, Some(cg.slice.clone()));
    let port = server.port().to_string();
    let mut agent = Agent::start(
        &cg.slice,
        &policy(&["127.0.0.1"], &[server.port()], ALLOW_PY, RULE_PY),
        AgentOpts {
            state_dir: Some(fs.path.join("state")),
            ..Default::default()
        },
    );
    let r = client(&unit, &["echo", "127.0.0.1", &port]);
    assert_eq!(r["reply"], "ping", "before the disk fills: {r}");
    assert_eq!(agent.connections(1).len(), 1);
    // Everything so far signed and on disk.
    std::thread::sleep(Duration::from_millis(200));
    let before = std::fs::read(agent.audit_path()).expect("read audit log");

    let filler = fs.path.join("filler");
    fill(&filler);
    let st = wait_status(&agent, "the audit log to report unhealthy", |s| {
        s["audit"]["healthy"] == false
    });
    let problem = st["audit"]["problem"].as_str().unwrap_or("").to_string();
    eprintln!("unhealthy: {problem}");
    assert!(
        problem.contains("free") || problem.contains("No space"),
        "status must say why: {problem}"
    );
    let text = agent.cli(&["status"]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("healthy=false"),
        "portcullis status: {}",
        String::from_utf8_lossy(&text.stdout)
    );

    let mut refused = Vec::new();
    for _ in 0..3 {
        let r = client(&unit, &["echo", "127.0.0.1", &port]);
        assert_ne!(
            r["reply"], "ping",
            "a connection got through while the audit log could not be written: {r}"
        );
        refused.push(r["pid"].as_u64().expect("client pid"));
    }
    // Nothing already written was lost or changed.
    let during = std::fs::read(agent.audit_path()).expect("read audit log");
    assert!(
        during.starts_with(&before),
        "records written before the disk filled changed"
    );
    let copy = TempDir::new("portcullis-test-audit-full");
    let copy_audit = copy.0.join("audit");
    std::fs::create_dir_all(&copy_audit).expect("mkdir");
    std::fs::write(copy_audit.join("audit.jsonl"), &during).expect("copy");
    let (ok, report) = verify_audit(&agent.audit_pubkey(), &copy_audit);
    eprintln!("while full:\n{report}");
    // A batch cut short by the full disk shows as an incomplete last line.
    assert!(
        ok || report.contains("FAILED: truncated at line"),
        "what is on disk while full must verify up to its last line:\n{report}"
    );

    std::fs::remove_file(&filler).expect("free space");
    wait_status(&agent, "the audit log to recover", |s| {
        s["audit"]["healthy"] == true
    });
    let r = client(&unit, &["echo", "127.0.0.1", &port]);
    assert_eq!(r["reply"], "ping", "service did not resume: {r}");
    let resumed = r["pid"].as_u64().expect("client pid");

    let recs = agent.connections(5);
    for pid in &refused {
        let rec = recs
            .iter()
            .find(|r| r["attribution"]["pid"].as_u64() == Some(*pid))
            .unwrap_or_else(|| panic!("the refused connection of pid {pid} was not recorded"));
        assert_eq!(
            (rec["decision"].as_str(), rec["rule"].as_str()),
            (Some("deny"), Some("audit-unavailable")),
            "{rec}"
        );
    }
    let rec = recs
        .iter()
        .find(|r| r["attribution"]["pid"].as_u64() == Some(resumed))
        .unwrap_or_else(|| panic!("the connection after recovery was not recorded"));
    assert_eq!(rec["decision"], "allow", "{rec}");

    let status = agent.sigterm();
    assert!(status.success(), "agent stop: {status}\n{}", agent.log());
    let after = std::fs::read(agent.audit_path()).expect("read audit log");
    assert!(after.starts_with(&before), "earlier records changed");
    let (ok, report) = verify_audit(&agent.audit_pubkey(), &agent.audit_dir());
    assert!(ok, "audit verify after recovery:\n{report}");
    eprintln!("after recovery:\n{report}");
    drop(agent);
    drop(fs);
}
