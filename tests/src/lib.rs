//! Harness for the privileged end-to-end tests: a unique child cgroup per test,
//! the real agent binary attached to it with its own bpffs pin directory, real
//! servers on loopback, and real client processes moved into the cgroup before
//! they create a socket.
//!
//! Safety rules (see docs/testing.md): tests never attach at the cgroup v2 root,
//! protect only loopback addresses, pin under `/sys/fs/bpf/portcullis-test-*`,
//! and clean up in `Drop` even when the test fails.

pub mod siem;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

/// True when running under CI (CI=true): a privileged test that cannot run fails.
pub fn ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"))
}

/// Runs the openssl CLI in `dir`; panics with its stderr if it fails.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Returns false (after printing why) when the agent binary is not built;
/// panics under CI. For tests that run the binary without root.
pub fn agent_built(test: &str) -> bool {
    if agent_bin().exists() {
        return true;
    }
    let w = format!(
        "agent binary {} not built (run `cargo build -p portcullis`)",
        agent_bin().display()
    );
    if ci() {
        panic!("{test}: cannot run under CI=true: {w}");
    }
    eprintln!("SKIP {test}: {w}");
    false
}

/// Returns false (after printing why) when this test cannot run here; panics under CI.
pub fn privileged(test: &str) -> bool {
    let why = if !nix::unistd::geteuid().is_root() {
        Some("needs root (eBPF programs, cgroups)".to_string())
    } else if cgroup2_root().is_none() {
        Some("no cgroup v2 hierarchy is mounted".to_string())
    } else if !agent_bin().exists() {
        Some(format!(
            "agent binary {} not built (run `cargo xtask test`)",
            agent_bin().display()
        ))
    } else {
        None
    };
    match why {
        None => true,
        Some(w) if ci() => panic!("{test}: cannot run under CI=true: {w}"),
        Some(w) => {
            eprintln!("SKIP {test}: {w}");
            false
        }
    }
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PORTCULLIS_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    target.join("debug").join("portcullis")
}

pub fn client_py() -> PathBuf {
    repo_root().join("tests").join("clients").join("client.py")
}

pub fn cgroup2_root() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mnt = pre.split_whitespace().nth(4)?;
            (post.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mnt))
        })
        .collect();
    found.sort_by_key(|p| p.components().count());
    found.into_iter().next()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let p = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `portcullis-test-<pid>-<n>.slice` with child `<name>.service` cgroups. The agent
/// attaches to the slice; clients run in the units.
pub struct TestCgroup {
    pub slice: PathBuf,
}

impl TestCgroup {
    pub fn new() -> Self {
        let root = cgroup2_root().expect("cgroup v2 root");
        let slice = root.join(format!("{}.slice", unique("portcullis-test")));
        std::fs::create_dir_all(&slice).expect("create test cgroup");
        Self { slice }
    }

    /// A child cgroup named `<name>.service` (created on first use).
    pub fn unit(&self, name: &str) -> PathBuf {
        let p = self.slice.join(format!("{name}.service"));
        std::fs::create_dir_all(&p).expect("create unit cgroup");
        p
    }

    pub fn id(path: &Path) -> u64 {
        std::fs::metadata(path).map(|m| m.ino()).expect("cgroup id")
    }

    pub fn procs(&self) -> Vec<u32> {
        let mut out = Vec::new();
        let mut stack = vec![self.slice.clone()];
        while let Some(d) = stack.pop() {
            if let Ok(t) = std::fs::read_to_string(d.join("cgroup.procs")) {
                out.extend(t.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
            if let Ok(rd) = std::fs::read_dir(&d) {
                for e in rd.flatten() {
                    if e.path().is_dir() {
                        stack.push(e.path());
                    }
                }
            }
        }
        out
    }
}

impl Default for TestCgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            let procs = self.procs();
            if procs.is_empty() {
                break;
            }
            for p in procs {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        remove_cgroup_tree(&self.slice);
    }
}

/// Removes a cgroup directory and every cgroup below it, deepest first (the
/// agent's own cgroup may sit below a unit of the test).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// A command prefix that runs its arguments in a private mount namespace where
/// tracefs is not mounted (as on a freshly booted machine of this kind); the
/// host's own mounts are not touched. Fails (exit 97) if tracefs is still there.
pub fn without_tracefs() -> Vec<String> {
    [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "umount -l /sys/kernel/debug/tracing 2>/dev/null; umount -l /sys/kernel/tracing 2>/dev/null; \
         if grep -q ' tracefs ' /proc/self/mounts; then echo 'tracefs still mounted' >&2; exit 97; fi; \
         exec \"$@\"",
        "without-tracefs",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Mounts bpffs at /sys/fs/bpf if nothing is mounted there (what the agent
/// does itself), for tests whose agent runs in another mount namespace: pins it
/// makes must be visible to the test.
pub fn ensure_bpffs() {
    let mounted = std::fs::read_to_string("/proc/self/mounts")
        .map(|t| {
            t.lines()
                .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
        })
        .unwrap_or(false);
    if !mounted {
        let st = Command::new("mount")
            .args(["-t", "bpf", "bpffs", "/sys/fs/bpf"])
            .status()
            .expect("run mount");
        assert!(st.success(), "mounting bpffs at /sys/fs/bpf failed");
    }
}

/// Runs `args` inside cgroup `cg`: the shell joins the cgroup, then execs, so the
/// client's sockets are created inside it.
pub fn in_cgroup(cg: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
        .arg(cg)
        .args(args);
    c
}

/// Runs the python client in `cg` and returns its JSON line.
pub fn client(cg: &Path, args: &[&str]) -> Value {
    let py = client_py();
    let mut all = vec!["python3", py.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    let out = in_cgroup(cg, &all)
        .stdin(Stdio::null())
        .output()
        .expect("run python client");
    last_json_line(&out, &format!("client {args:?}"))
}

/// The last line of `out`'s stdout that is a JSON object (what the test clients
/// print as their result); panics naming `what`, with both outputs, if none.
pub fn last_json_line(out: &std::process::Output, what: &str) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| {
            panic!(
                "{what} printed no JSON (status {:?}); stdout: {stdout}; stderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("{what}: its JSON line does not parse: {e}"))
}

/// How the test server answers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Read to EOF, write everything back, close.
    Echo,
    /// Read to EOF, reply with the hex sha256 of what was read.
    Sha256,
}

/// A loopback TCP server in the test process (outside the test cgroup). It counts
/// connections and flags any whose client socket belongs to a process inside the
/// watched cgroup: such a connection reached the server without the agent.
pub struct Server {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicU64>,
    pub direct_from_cgroup: Arc<AtomicU64>,
    pub bytes: Arc<AtomicU64>,
}

impl Server {
    pub fn start(bind: &str, reply: Reply, watch: Option<PathBuf>) -> Self {
        let l = TcpListener::bind(bind).unwrap_or_else(|e| panic!("bind test server {bind}: {e}"));
        let addr = l.local_addr().expect("server addr");
        let accepted = Arc::new(AtomicU64::new(0));
        let direct = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let (a, d, b) = (accepted.clone(), direct.clone(), bytes.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                a.fetch_add(1, Ordering::Relaxed);
                if let (Some(cg), Ok(peer)) = (&watch, s.peer_addr())
                    && peer_owned_by_cgroup(peer, cg)
                {
                    d.fetch_add(1, Ordering::Relaxed);
                }
                let b = b.clone();
                std::thread::spawn(move || serve_one(&mut s, reply, &b));
            }
        });
        Self {
            addr,
            accepted,
            direct_from_cgroup: direct,
            bytes,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

fn serve_one(s: &mut TcpStream, reply: Reply, bytes: &AtomicU64) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let mut buf = vec![0u8; 64 * 1024];
    let mut all = Vec::new();
    let mut h = Sha256::new();
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                bytes.fetch_add(n as u64, Ordering::Relaxed);
                match reply {
                    Reply::Echo => all.extend_from_slice(&buf[..n]),
                    Reply::Sha256 => h.update(&buf[..n]),
                }
            }
            Err(_) => return,
        }
    }
    let _ = match reply {
        Reply::Echo => s.write_all(&all),
        Reply::Sha256 => {
            let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
            s.write_all(hex.as_bytes())
        }
    };
}

/// Is the socket at `peer` (the client end of a connection to us) owned by a
/// process in cgroup `cg` (or below)?
fn peer_owned_by_cgroup(peer: SocketAddr, cg: &Path) -> bool {
    // /proc/net/tcp is read in pages while sockets come and go: an entry can be
    // missed under churn, so look a few times before concluding.
    for _ in 0..20 {
        if let Some(inode) = socket_inode(peer) {
            return inode_owned_by_cgroup(inode, cg);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

fn inode_owned_by_cgroup(inode: u64, cg: &Path) -> bool {
    let needle = format!("socket:[{inode}]");
    let mut pids = Vec::new();
    let mut stack = vec![cg.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(t) = std::fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(t.lines().map(str::to_string));
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            stack.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
    }
    pids.iter().any(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|rd| {
                rd.flatten().any(|e| {
                    std::fs::read_link(e.path())
                        .map(|l| l.to_string_lossy() == needle)
                        .unwrap_or(false)
                })
            })
            .unwrap_or(false)
    })
}

/// Inode of the local socket bound to `addr`, from /proc/net/tcp{,6}.
fn socket_inode(addr: SocketAddr) -> Option<u64> {
    let (file, want) = match addr {
        SocketAddr::V4(a) => (
            "/proc/net/tcp",
            format!(
                "{:08X}:{:04X}",
                u32::from_le_bytes(a.ip().octets()),
                a.port()
            ),
        ),
        SocketAddr::V6(a) => {
            let o = a.ip().octets();
            let words: String = o
                .chunks(4)
                .map(|c| format!("{:08X}", u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect();
            ("/proc/net/tcp6", format!("{words}:{:04X}", a.port()))
        }
    };
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1)? == &want)
            .then(|| f.get(9)?.parse().ok())
            .flatten()
    })
}

/// Options for one agent run.
pub struct AgentOpts {
    /// Run the agent itself inside this cgroup (proves its upstream sockets are exempt).
    pub agent_cgroup: Option<PathBuf>,
    pub idle_timeout_secs: u64,
    /// Extra environment for the agent process (e.g. NOTIFY_SOCKET).
    pub env: Vec<(String, String)>,
    /// State directory (audit log, keys); default: `state/` in the agent's temp dir.
    pub state_dir: Option<PathBuf>,
    /// More `agent.yaml` lines, appended as given.
    pub extra_config: String,
    /// A command the agent is started through (it ends by running its
    /// arguments), e.g. [`without_tracefs`].
    pub exec_prefix: Vec<String>,
}

impl Default for AgentOpts {
    fn default() -> Self {
        Self {
            agent_cgroup: None,
            idle_timeout_secs: 60,
            env: Vec::new(),
            state_dir: None,
            extra_config: String::new(),
            exec_prefix: Vec::new(),
        }
    }
}

/// The real agent binary attached to a test cgroup, with its own pins and state.
pub struct Agent {
    pub child: Option<Child>,
    pub dir: TempDir,
    pub config: PathBuf,
    pub bpffs: PathBuf,
    pub port: u16,
    pub cgroup: PathBuf,
    pub state_dir: PathBuf,
    opts_cgroup: Option<PathBuf>,
    env: Vec<(String, String)>,
    exec_prefix: Vec<String>,
}

impl Agent {
    pub fn start(cgroup: &Path, policy: &str, opts: AgentOpts) -> Self {
        let dir = TempDir::new("portcullis-test-agent");
        let bpffs = PathBuf::from("/sys/fs/bpf").join(unique("portcullis-test"));
        let port = free_port();
        let pol = dir.0.join("policies");
        std::fs::create_dir_all(&pol).expect("policy dir");
        std::fs::write(pol.join("test.yaml"), policy).expect("write policy");
        let config = dir.0.join("agent.yaml");
        let state_dir = opts.state_dir.unwrap_or_else(|| dir.0.join("state"));
        std::fs::write(
            &config,
            format!(
                "policy_dir: {}\nstate_dir: {}\nruntime_dir: {}\nbpffs_dir: {}\ncgroup: {}\nlisten_port: {port}\nidle_timeout_secs: {}\n{}",
                pol.display(),
                state_dir.display(),
                dir.0.join("run").display(),
                bpffs.display(),
                cgroup.display(),
                opts.idle_timeout_secs,
                opts.extra_config,
            ),
        )
        .expect("write agent config");
        let mut a = Self {
            child: None,
            dir,
            config,
            bpffs,
            port,
            cgroup: cgroup.to_owned(),
            state_dir,
            opts_cgroup: opts.agent_cgroup,
            env: opts.env,
            exec_prefix: opts.exec_prefix,
        };
        a.spawn();
        a
    }

    /// Starts (or restarts) the agent process and waits until it says ready.
    pub fn spawn(&mut self) {
        let bin = agent_bin();
        let bin_s = bin.to_str().expect("utf-8 path");
        let cfg_s = self.config.to_str().expect("utf-8 path");
        let mut argv: Vec<&str> = self.exec_prefix.iter().map(String::as_str).collect();
        argv.extend([bin_s, "run", "--config", cfg_s]);
        let mut cmd = match &self.opts_cgroup {
            Some(cg) => in_cgroup(cg, &argv),
            None => {
                let mut c = Command::new(argv[0]);
                c.args(&argv[1..]);
                c
            }
        };
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.0.join("agent.log"))
            .expect("agent log");
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn agent");
        let stdout = child.stdout.take().expect("agent stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                if line.contains("ready") {
                    let _ = tx.send(());
                }
                line.clear();
            }
        });
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            panic!("agent did not become ready in 30 s; log:\n{}", self.log());
        }
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("agent.log")).unwrap_or_default()
    }

    /// Stops the agent with SIGTERM and waits for it (enforcement stays pinned).
    pub fn sigterm(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("agent is running");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        c.wait().expect("agent exit")
    }

    /// Names of the link pins currently under this agent's bpffs directory.
    pub fn link_pins(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.bpffs.join("links"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(agent_bin())
            .args(args)
            .args(["--config", self.config.to_str().expect("utf-8 path")])
            .output()
            .expect("run portcullis CLI")
    }

    pub fn status(&self) -> Value {
        let out = self.cli(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.status()["kernel_counters"][name].as_u64().unwrap_or(0)
    }

    /// The live audit file.
    pub fn audit_path(&self) -> PathBuf {
        self.audit_dir().join("audit.jsonl")
    }

    /// The audit directory: the live file and its rotated segments.
    pub fn audit_dir(&self) -> PathBuf {
        self.state_dir.join("audit")
    }

    /// The host's audit public key, as an auditor takes it at enrolment.
    pub fn audit_pubkey(&self) -> PathBuf {
        self.state_dir.join("keys").join("audit-signing.pub")
    }

    /// All audit records so far (waits briefly for the writer). A torn last line
    /// (a record being written, or cut by a kill -9) is left out; any other line
    /// that is not JSON fails the test.
    pub fn audit(&self) -> Vec<Value> {
        std::thread::sleep(Duration::from_millis(150));
        let text = std::fs::read_to_string(self.audit_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let n = lines.len();
        lines
            .iter()
            .enumerate()
            .filter_map(|(i, l)| match serde_json::from_str(l) {
                Ok(v) => Some(v),
                Err(_) if i + 1 == n => None,
                Err(e) => panic!("audit line {} is not JSON ({e}): {l}", i + 1),
            })
            .collect()
    }

    /// Connection records, waiting up to 5 s until at least `n` exist.
    pub fn connections(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v: Vec<Value> = self
                .audit()
                .into_iter()
                .filter(|r| r["event"] == "connection")
                .collect();
            if v.len() >= n || Instant::now() > deadline {
                return v;
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // Explicit, audited removal of this test's enforcement.
        let _ = self.cli(&["detach", "--yes"]);
        remove_tree(&self.bpffs);
    }
}

/// `portcullis audit verify --pubkey PUB DIR`: (success, printed report).
pub fn verify_audit(pubkey: &Path, dir: &Path) -> (bool, String) {
    let out = Command::new(agent_bin())
        .args(["audit", "verify", "--pubkey"])
        .arg(pubkey)
        .arg(dir)
        .output()
        .expect("run portcullis audit verify");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The lines of every file of an audit directory in chain order: segments
/// `audit-<20-digit seq>.jsonl` by name, then `audit.jsonl`.
pub fn audit_lines(dir: &Path) -> Vec<String> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .and_then(|n| n.strip_prefix("audit-"))
                        .and_then(|n| n.strip_suffix(".jsonl"))
                        .is_some_and(|d| d.len() == 20 && d.bytes().all(|b| b.is_ascii_digit()))
                })
                .collect()
        })
        .unwrap_or_default();
    segs.sort();
    segs.push(dir.join("audit.jsonl"));
    segs.iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| t.lines().map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

/// A tmpfs of a given size mounted on a fresh directory, unmounted (and the
/// directory removed) on drop, also when the test fails. Create it before
/// anything that uses it (an [`Agent`]) so that it is dropped after.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    /// `size`: as mount(8) takes it, e.g. `4m`.
    pub fn mount(size: &str) -> Self {
        let path = std::env::temp_dir().join(unique("portcullis-test-tmpfs"));
        std::fs::create_dir_all(&path).expect("create tmpfs mount point");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&path)
            .output()
            .expect("run mount");
        if !out.status.success() {
            let _ = std::fs::remove_dir(&path);
            panic!(
                "mount -t tmpfs -o size={size} on {} failed: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Self { path }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        for _ in 0..50 {
            let ok = Command::new("umount")
                .arg(&self.path)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                let _ = std::fs::remove_dir(&self.path);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Still busy: detach it now; the kernel frees it when the last user goes.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Removes a bpffs pin tree (pins are files and directories).
pub fn remove_tree(p: &Path) {
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                remove_tree(&path);
            } else {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    let _ = std::fs::remove_dir(p);
}

/// A one-target, one-or-more-rule policy for tests.
pub fn policy(target_addrs: &[&str], ports: &[u16], workloads: &str, rules: &str) -> String {
    let addrs: Vec<String> = target_addrs.iter().map(|a| format!("\"{a}\"")).collect();
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!(
        "apiVersion: portcullis.dev/v1\nworkloads:\n{workloads}\ntargets:\n  - name: svc\n    addresses: [{}]\n    ports: [{}]\n    protocol: tcp\nrules:\n{rules}\n",
        addrs.join(", "),
        ports.join(", ")
    )
}
pub mod pg;
