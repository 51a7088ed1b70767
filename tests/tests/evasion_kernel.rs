//! Red-team tests of the kernel data path and attribution: each one is a way
//! around enforcement or around attribution that worked before, tried here with
//! real processes, real privileges dropped with setpriv, real network namespaces
//! and real cgroups, and shown to fail now.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_tests::{
    Agent, AgentOpts, Reply, Server, TempDir, TestCgroup, client, client_py, free_port, in_cgroup,
    policy, privileged,
};
use serde_json::Value;

const ALLOW_PY: &str = "  - name: py\n    match: { exe: \"*python3*\" }";
const RULE_PY: &str =
    "  - id: py-allow\n    workloads: [py]\n    targets: [svc]\n    effect: allow";
/// The mark the agent used by default before it was random, and that the
/// documentation published: what an attacker would try first.
const PUBLISHED_MARK: &str = "0x70630001";
const CAP_NET_RAW: u64 = 1 << 13;

/// What a workload running as `nobody` with CAP_NET_RAW only tries; prints one
/// JSON line.
const ATTACK_PY: &str = r#"
import json, os, socket, sys
mode = sys.argv[1]
cap = [int(l.split()[1], 16) for l in open("/proc/self/status") if l.startswith("CapEff")][0]
res = {"uid": os.getuid(), "cap_eff": cap, "pid": os.getpid()}
try:
    if mode == "mark-echo":
        host, port, mark = sys.argv[2], int(sys.argv[3]), int(sys.argv[4], 0)
        s = socket.socket()
        s.settimeout(5)
        s.setsockopt(socket.SOL_SOCKET, 36, mark)  # SO_MARK
        res["mark_set"] = s.getsockopt(socket.SOL_SOCKET, 36) == mark
        s.connect((host, port))
        s.sendall(b"ping")
        s.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            c = s.recv(65536)
            if not c:
                break
            data += c
        res["reply"] = data.decode(errors="replace")
    elif mode == "raw4":
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    elif mode == "raw6":
        socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_TCP)
    elif mode == "packet":
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    elif mode == "packet-udp":
        # A hand-made Ethernet/IPv4/UDP frame on lo, through a packet socket.
        import struct
        host, port, payload = sys.argv[2], int(sys.argv[3]), sys.argv[4].encode()
        def csum(b):
            t = 0
            for i in range(0, len(b), 2):
                t += (b[i] << 8) + (b[i + 1] if i + 1 < len(b) else 0)
            while t >> 16:
                t = (t & 0xFFFF) + (t >> 16)
            return (~t) & 0xFFFF
        udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
        # From 127.0.0.2: a source that is one of the host's own addresses is a
        # martian on input.
        src, dst = socket.inet_aton("127.0.0.2"), socket.inet_aton(host)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src, dst)
        ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
        s.bind(("lo", 0))
        res["sent"] = s.send(b"\0" * 12 + b"\x08\x00" + ip + udp)
    elif mode == "qdisc-bypass":
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
        s.setsockopt(263, 20, 1)  # SOL_PACKET, PACKET_QDISC_BYPASS
    elif mode == "xdp":
        s = socket.socket(44, socket.SOCK_RAW)  # AF_XDP
        s.setsockopt(283, 4, b"\0" * 24)  # SOL_XDP, XDP_UMEM_REG
    res["ok"] = True
except OSError as e:
    res["ok"] = False
    res["errno"] = e.errno
    res["error"] = str(e)
print(json.dumps(res), flush=True)
"#;

fn json_line(out: &std::process::Output, what: &str) -> Value {
    portcullis_tests::last_json_line(out, what)
}

/// Runs ATTACK_PY in cgroup `cg` as nobody with CAP_NET_RAW as its only capability.
fn as_nobody_with_net_raw(cg: &Path, args: &[&str]) -> Value {
    let mut argv = vec![
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all,+net_raw",
        "--ambient-caps=-all,+net_raw",
        "--bounding-set=-all,+net_raw",
        "/usr/bin/python3",
        "-c",
        ATTACK_PY,
    ];
    argv.extend_from_slice(args);
    let out = in_cgroup(cg, &argv)
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv");
    let v = json_line(&out, "the unprivileged attacker");
    assert_eq!(v["uid"], 65534, "attacker must run as nobody: {v}");
    assert_eq!(
        v["cap_eff"].as_u64(),
        Some(CAP_NET_RAW),
        "attacker must hold CAP_NET_RAW and nothing else: {v}"
    );
    v
}

fn find_session(recs: &[Value], pid: u64) -> &Value {
    recs.iter()
        .find(|r| r["attribution"]["pid"].as_u64() == Some(pid))
        .unwrap_or_else(|| panic!("no connection record for pid {pid} in {recs:#?}"))
}

/// Before: SO_MARK set to the agent's mark exempted any socket, so `nobody` with
/// CAP_NET_RAW (granted by container runtimes by default) reached the protected
/// server directly. Now only sockets of the agent's own cgroup are exempt: the
/// forged mark is redirected to the agent like any other connect, and recorded.
/// That holds also for a workload in the very cgroup the agent was started in
/// (the agent moves into a cgroup of its own).
#[test]
fn forged_so_mark_as_nobody_with_cap_net_raw_is_redirected() {
    if !privileged("forged_so_mark_as_nobody_with_cap_net_raw_is_redirected") {
        return;
    }
    let cg = TestCgroup::new();
    let unit = cg.unit("forger");
    let agent_cg = cg.unit("agent");
    let server = Server::start("127.0.0.1:0", Reply::Echo, Some(unit.clone()));
    let port = server.port();
    // The attacker knows the mark: the agent is configured with the old
    // published value, the worst case for the defence. The agent runs inside the
    // enforced cgroup, so its own upstream connects must still be exempt.
    let agent = Agent::start(
        &cg.slice,
        &policy(&["127.0.0.1"], &[port], ALLOW_PY, RULE_PY),
        AgentOpts {
            agent_cgroup: Some(agent_cg.clone()),
            extra_config: format!("upstream_mark: {PUBLISHED_MARK}\n"),
            ..Default::default()
        },
    );
    let redirects0 = agent.counter("redirects");
    let args = ["mark-echo", "127.0.0.1", &port.to_string(), PUBLISHED_MARK];
    let r = as_nobody_with_net_raw(&unit, &args);
    assert_eq!(r["mark_set"], true, "SO_MARK was not even set: {r}");
    assert_eq!(
        server
            .direct_from_cgroup
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "a socket with a forged mark reached the protected server directly: {r}"
    );
    // From the cgroup the agent was started in.
    let r2 = as_nobody_with_net_raw(&agent_cg, &args);
    assert_eq!(r2["mark_set"], true, "SO_MARK was not even set: {r2}");
    assert!(
        agent.counter("redirects") >= redirects0 + 2,
        "the forged-mark connects were not redirected: {r} {r2}"
    );
    let recs = agent.connections(2);
    for r in [&r, &r2] {
        let rec = find_session(&recs, r["pid"].as_u64().expect("pid"));
        assert_eq!(rec["attribution"]["uid"], 65534, "{rec:#}");
        assert_eq!(rec["decision"], "allow", "{rec:#}");
        assert_eq!(r["reply"], "ping", "proxied by the agent: {r}");
    }
    assert!(
        agent.counter("exempt") >= 2,
        "the agent's own upstream connects must stay exempt"
    );
}

/// Raw IP sockets forge packets the connect hooks never see: refused (EPERM) in
/// the enforced cgroup and counted, unless `raw_sockets: allow`.
#[test]
fn raw_ip_sockets_are_refused_and_counted_unless_allowed() {
    if !privileged("raw_ip_sockets_are_refused_and_counted_unless_allowed") {
        return;
    }
    let cg = TestCgroup::new();
    let unit = cg.unit("raw");
    let server = Server::start("127.0.0.1:0", Reply::Echo, None);
    let pol = policy(&["127.0.0.1"], &[server.port()], ALLOW_PY, RULE_PY);
    {
        let agent = Agent::start(&cg.slice, &pol, AgentOpts::default());
        let before = agent.counter("raw_sockets_refused");
        for mode in ["raw4", "raw6"] {
            let r = as_nobody_with_net_raw(&unit, &[mode]);
            assert_eq!(r["ok"], false, "{mode} socket was created: {r}");
            assert_eq!(r["errno"], 1, "{mode}: EPERM expected: {r}");
        }
        assert!(
            agent.counter("raw_sockets_refused") >= before + 2,
            "refused raw sockets were not counted"
        );
    }
    // Configurable: with `raw_sockets: allow` the same socket is created (the
    // egress backstop still drops its packets to protected targets).
    let cg2 = TestCgroup::new();
    let unit2 = cg2.unit("raw");
    let _agent = Agent::start(
        &cg2.slice,
        &pol,
        AgentOpts {
            extra_config: "raw_sockets: allow\n".into(),
            ..Default::default()
        },
    );
    let r = as_nobody_with_net_raw(&unit2, &["raw4"]);
    assert_eq!(r["ok"], true, "raw_sockets: allow must allow it: {r}");
}

/// Packet and XDP sockets skip the cgroup egress hook altogether. Before, a
/// process of the enforced cgroup with CAP_NET_RAW could hand a frame to a
/// device and reach a protected port. Now: the socket is refused where the
/// kernel loads the BPF LSM guard; everywhere, the interface egress guard drops
/// such frames to protected targets (counted), and the options that would skip
/// it (PACKET_QDISC_BYPASS) or set up an XDP socket are refused. The same frame
/// from outside the enforced cgroup arrives: the frame itself is good.
///
/// A frame to 127.0.0.1 handed to `lo` is delivered only with `route_localnet`
/// on, so the agent, the server and both senders run in a network namespace of
/// the test's own where it is on (the host's setting is not touched).
#[test]
fn packet_socket_frames_to_a_protected_target_are_dropped() {
    if !privileged("packet_socket_frames_to_a_protected_target_are_dropped") {
        return;
    }
    let cg = TestCgroup::new();
    let unit = cg.unit("packet");
    let port = free_port();
    let agent = agent_in_own_netns(
        &cg,
        port,
        "ip link set lo up && sysctl -qw net.ipv4.conf.lo.route_localnet=1",
    );
    let agent_pid = agent.child.as_ref().expect("agent runs").id();
    let netns = format!("/proc/{agent_pid}/ns/net");
    // The protected UDP port, served in the agent's network namespace.
    let server_py = format!(
        r#"
import socket, sys, time
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("127.0.0.1", {port}))
u.settimeout(0.2)
print("ready", flush=True)
end = time.time() + 30
while time.time() < end:
    try:
        print(u.recv(256).decode(errors="replace"), flush=True)
    except socket.timeout:
        pass
"#
    );
    let mut server = Command::new("nsenter")
        .args([
            &format!("--net={netns}"),
            "/usr/bin/python3",
            "-c",
            &server_py,
        ])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("start the UDP server");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = server.stdout.take().expect("server stdout");
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).as_deref(),
        Ok("ready"),
        "UDP server did not start"
    );
    let got = |want: &str, wait: Duration| -> bool {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Ok(m) = rx.recv_timeout(Duration::from_millis(100))
                && m == want
            {
                return true;
            }
        }
        false
    };
    let status = agent.status();
    let guard_pinned = status["enforcement"]["programs"]
        .as_array()
        .expect("status lists programs")
        .iter()
        .any(|p| p["name"] == "pc_socket_create" && p["pinned"] == true);
    let start = agent
        .audit()
        .into_iter()
        .find(|r| r["event"] == "agent_start")
        .expect("agent_start record");
    assert!(
        start["packet_frames_dropped_on"]
            .as_array()
            .is_some_and(|a| a.iter().any(|i| i == "lo")),
        "the interface guard must be on lo: {start:#}"
    );
    let nsenter = format!("--net={netns}");
    let in_ns = |args: &[&str]| -> Value {
        let mut argv = vec![
            "nsenter",
            nsenter.as_str(),
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all,+net_raw",
            "--ambient-caps=-all,+net_raw",
            "--bounding-set=-all,+net_raw",
            "/usr/bin/python3",
            "-c",
            ATTACK_PY,
        ];
        argv.extend_from_slice(args);
        let out = in_cgroup(&unit, &argv)
            .stdin(Stdio::null())
            .output()
            .expect("run the attacker");
        let v = json_line(&out, "the attacker");
        assert_eq!(
            (v["uid"].as_u64(), v["cap_eff"].as_u64()),
            (Some(65534), Some(CAP_NET_RAW)),
            "attacker must be nobody with CAP_NET_RAW only: {v}"
        );
        v
    };
    let dropped0 = agent.counter("packet_frames_dropped");
    let p = port.to_string();
    let r = in_ns(&["packet-udp", "127.0.0.1", &p, "from-inside"]);
    assert!(
        !got("from-inside", Duration::from_secs(1)),
        "a packet-socket frame from the enforced cgroup reached the protected port: {r}"
    );
    if guard_pinned {
        assert_eq!(
            (r["ok"].clone(), r["errno"].clone()),
            (false.into(), 1.into()),
            "{r}"
        );
        assert_eq!(start["packet_sockets_refused"], true, "{start:#}");
    } else {
        // Dropped at the device: the sender sees ENOBUFS (or nothing).
        assert!(
            r["ok"] == true || r["errno"] == 105,
            "the frame was not even sent: {r}"
        );
        assert!(
            agent.counter("packet_frames_dropped") > dropped0,
            "the dropped frame was not counted"
        );
        assert_eq!(start["packet_sockets_refused"], false, "{start:#}");
        assert!(
            start["packet_guard_error"].as_str().is_some(),
            "the audit record must say why packet sockets are not refused: {start:#}"
        );
    }
    // The options that would skip the guard, or set up an XDP socket.
    for mode in ["qdisc-bypass", "xdp"] {
        let r = in_ns(&[mode]);
        assert_eq!(r["ok"], false, "{mode} was allowed: {r}");
        assert_eq!(r["errno"], 1, "{mode}: EPERM expected: {r}");
    }
    // Control: the same frame, from outside the enforced cgroup, arrives.
    let out = Command::new("nsenter")
        .args([
            nsenter.as_str(),
            "/usr/bin/python3",
            "-c",
            ATTACK_PY,
            "packet-udp",
            "127.0.0.1",
            &p,
            "from-outside",
        ])
        .output()
        .expect("run control");
    let c = json_line(&out, "control");
    assert_eq!(c["ok"], true, "{c}");
    let arrived = got("from-outside", Duration::from_secs(3));
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        arrived,
        "the control frame never arrived, so the test proves nothing: {c}"
    );
}

/// A connection record planted from another network namespace: a workload in
/// its own netns "connects" to a protected address, which is redirected to its
/// own listener on the agent's port there; then a process in the agent's netns
/// connects straight to the agent from the same address and port. Before, the
/// agent matched the planted record (identity and destination of the other
/// namespace's process). Now records are keyed by network namespace: refused.
#[test]
fn a_record_planted_from_another_netns_is_not_matched() {
    if !privileged("a_record_planted_from_another_netns_is_not_matched") {
        return;
    }
    let cg = TestCgroup::new();
    let unit = cg.unit("planter");
    let server = Server::start("127.0.0.1:0", Reply::Echo, None);
    let agent = Agent::start(
        &cg.slice,
        &policy(&["127.0.0.1"], &[server.port()], ALLOW_PY, RULE_PY),
        AgentOpts::default(),
    );
    let dir = TempDir::new("portcullis-test-netns");
    let ready = dir.0.join("ready");
    let go = dir.0.join("go");
    let src_port = free_port();
    let plant = format!(
        r#"
import os, socket, sys, time
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", {agent_port})); l.listen(8)
c = socket.socket(); c.bind(("127.0.0.1", {src_port}))
c.connect(("127.0.0.1", {server_port}))
a, _ = l.accept()
open("{ready}", "w").write("1")
deadline = time.time() + 30
while not os.path.exists("{go}") and time.time() < deadline:
    time.sleep(0.02)
"#,
        agent_port = agent.port,
        src_port = src_port,
        server_port = server.port(),
        ready = ready.display(),
        go = go.display(),
    );
    let rekeyed0 = agent.counter("established_rekeyed");
    let mut planter = in_cgroup(
        &unit,
        &[
            "unshare",
            "--net",
            "sh",
            "-c",
            "ip link set lo up && exec /usr/bin/python3 -c \"$1\"",
            "planter",
            &plant,
        ],
    )
    .stdin(Stdio::null())
    .spawn()
    .expect("spawn the planter");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ready.exists() {
        if let Ok(Some(st)) = planter.try_wait() {
            panic!("the planter exited early: {st:?}");
        }
        assert!(Instant::now() < deadline, "the planter never connected");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        agent.counter("established_rekeyed") > rekeyed0,
        "the planted connection was not re-keyed: the test did not plant anything"
    );
    let accepted0 = server.accepted.load(std::sync::atomic::Ordering::Relaxed);
    // From the agent's network namespace, the same source address and port.
    let probe = format!(
        r#"
import json, socket
s = socket.socket(); s.settimeout(5)
s.bind(("127.0.0.1", {src_port})); s.connect(("127.0.0.1", {agent_port}))
try:
    s.sendall(b"ping"); s.shutdown(socket.SHUT_WR)
    data = s.recv(100)
except OSError as e:
    data = b""
print(json.dumps({{"reply": data.decode(errors="replace")}}), flush=True)
"#,
        src_port = src_port,
        agent_port = agent.port,
    );
    let out = Command::new("/usr/bin/python3")
        .args(["-c", &probe])
        .output()
        .expect("run the probe");
    let r = json_line(&out, "the probe");
    std::fs::write(&go, "1").expect("release the planter");
    let _ = planter.wait();
    assert_eq!(
        r["reply"], "",
        "the agent served a connection on a record planted from another netns: {r}"
    );
    assert_eq!(
        server.accepted.load(std::sync::atomic::Ordering::Relaxed),
        accepted0,
        "the protected server was reached on a planted record"
    );
    let recs = agent.connections(1);
    let client_addr = format!("127.0.0.1:{src_port}");
    let rec = recs
        .iter()
        .find(|r| r["client"] == client_addr.as_str())
        .unwrap_or_else(|| panic!("no record for {client_addr}: {recs:#?}"));
    assert_eq!(rec["rule"], "unattributed", "{rec:#}");
}

/// A symlink of any name, anywhere, was attributed by that name: a symlink
/// called `psql` to python matched a rule for `*/psql`. Now `exe` is the file
/// the kernel ran (a venv's `bin/python` is the interpreter it points to), for a
/// client that exits at once and for one still running.
#[test]
fn a_symlinked_executable_is_attributed_by_the_file_it_runs() {
    if !privileged("a_symlinked_executable_is_attributed_by_the_file_it_runs") {
        return;
    }
    let cg = TestCgroup::new();
    let unit = cg.unit("links");
    let server = Server::start("127.0.0.1:0", Reply::Echo, Some(unit.clone()));
    let port = server.port().to_string();
    let psql_only = "  - name: psql\n    match: { exe: \"*/psql\" }";
    let rule = "  - id: psql-allow\n    workloads: [psql]\n    targets: [svc]\n    effect: allow";
    let agent = Agent::start(
        &cg.slice,
        &policy(&["127.0.0.1"], &[server.port()], psql_only, rule),
        AgentOpts::default(),
    );
    let dir = TempDir::new("portcullis-test-links");
    let psql = dir.0.join("psql");
    std::os::unix::fs::symlink("/usr/bin/python3", &psql).expect("symlink");
    let venv_bin = dir.0.join("venv").join("bin");
    std::fs::create_dir_all(&venv_bin).expect("venv dir");
    let venv_python = venv_bin.join("python");
    std::os::unix::fs::symlink("/usr/bin/python3", &venv_python).expect("symlink");
    let real = std::fs::canonicalize("/usr/bin/python3")
        .expect("python3")
        .to_string_lossy()
        .into_owned();
    let py = client_py();
    let py = py.to_str().expect("utf-8 path");

    let run = |exe: &Path, mode: &str| -> Value {
        let out = in_cgroup(
            &unit,
            &[exe.to_str().expect("utf-8"), py, mode, "127.0.0.1", &port],
        )
        .stdin(Stdio::null())
        .output()
        .expect("run client");
        json_line(&out, "client")
    };
    let fast = run(&psql, "exit-fast");
    let live = run(&venv_python, "echo");
    let recs = agent.connections(2);
    for (r, how) in [(&fast, "exited at once"), (&live, "still running")] {
        let pid = r["pid"].as_u64().expect("pid");
        let rec = find_session(&recs, pid);
        let a = &rec["attribution"];
        assert_eq!(a["exe"], real.as_str(), "client that {how}: {rec:#}");
        assert_eq!(a["exe_source"], "exec", "client that {how}: {rec:#}");
    }
    let rec = find_session(&recs, fast["pid"].as_u64().expect("pid"));
    assert_eq!(
        rec["decision"], "deny",
        "a symlink named psql must not pass as psql: {rec:#}"
    );
}

/// A script: `exe` is the interpreter the kernel ran and `script` the script.
#[test]
fn a_script_shows_interpreter_and_script() {
    if !privileged("a_script_shows_interpreter_and_script") {
        return;
    }
    let cg = TestCgroup::new();
    let unit = cg.unit("script");
    let server = Server::start("127.0.0.1:0", Reply::Echo, Some(unit.clone()));
    let agent = Agent::start(
        &cg.slice,
        &policy(&["127.0.0.1"], &[server.port()], ALLOW_PY, RULE_PY),
        AgentOpts::default(),
    );
    let dir = TempDir::new("portcullis-test-script");
    let script = dir.0.join("nightly-export");
    let real = std::fs::canonicalize("/usr/bin/python3")
        .expect("python3")
        .to_string_lossy()
        .into_owned();
    std::fs::write(
        &script,
        format!(
            "#!{real}\nimport runpy, sys\nsys.argv = [{py:?}] + sys.argv[1:]\nrunpy.run_path({py:?}, run_name=\"__main__\")\n",
            py = client_py().display().to_string()
        ),
    )
    .expect("write script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let port = server.port().to_string();
    let out = in_cgroup(
        &unit,
        &[
            script.to_str().expect("utf-8"),
            "exit-fast",
            "127.0.0.1",
            &port,
        ],
    )
    .stdin(Stdio::null())
    .output()
    .expect("run script");
    let r = json_line(&out, "script");
    let recs = agent.connections(1);
    let rec = find_session(&recs, r["pid"].as_u64().expect("pid"));
    let a = &rec["attribution"];
    assert_eq!(a["exe"], real.as_str(), "{rec:#}");
    let want = std::fs::canonicalize(&script)
        .expect("script")
        .to_string_lossy()
        .into_owned();
    assert_eq!(a["script"], want.as_str(), "{rec:#}");
}

/// `systemd-run --user --slice=system --unit=etl.service` makes
/// `user@<uid>.service/system.slice/etl.service`: it was read as the system unit
/// etl.service in system.slice. Now the unit is the user manager's, and the
/// user's own unit is reported apart; a rule for the system's etl.service does
/// not match it. (The cgroups are made as a user manager makes them.)
#[test]
fn a_user_manager_unit_is_not_read_as_a_system_unit() {
    if !privileged("a_user_manager_unit_is_not_read_as_a_system_unit") {
        return;
    }
    let cg = TestCgroup::new();
    let user_unit = cg
        .slice
        .join("user@4242.service")
        .join("system.slice")
        .join("etl.service");
    std::fs::create_dir_all(&user_unit).expect("user manager cgroups");
    let server = Server::start("127.0.0.1:0", Reply::Echo, None);
    let etl = "  - name: etl\n    match: { unit: \"etl.service\" }";
    let rule = "  - id: etl-allow\n    workloads: [etl]\n    targets: [svc]\n    effect: allow";
    let agent = Agent::start(
        &cg.slice,
        &policy(&["127.0.0.1"], &[server.port()], etl, rule),
        AgentOpts::default(),
    );
    let r = client(
        &user_unit,
        &["echo", "127.0.0.1", &server.port().to_string()],
    );
    let recs = agent.connections(1);
    let rec = find_session(&recs, r["pid"].as_u64().expect("pid"));
    let a = &rec["attribution"];
    assert_eq!(a["unit"], "user@4242.service", "{rec:#}");
    assert_eq!(a["user_unit"], "etl.service", "{rec:#}");
    assert_eq!(a["user_slice"], "system.slice", "{rec:#}");
    let slice = cg
        .slice
        .file_name()
        .expect("slice name")
        .to_string_lossy()
        .into_owned();
    assert_eq!(a["slice"], slice.as_str(), "{rec:#}");
    assert_eq!(
        rec["decision"], "deny",
        "a user's etl.service must not pass as the system's: {rec:#}"
    );
}

/// An interface created after the agent started (a container's veth, here a
/// veth pair) gets the packet-socket guard within seconds, and says so in the
/// audit log.
#[test]
fn an_interface_created_after_start_is_guarded() {
    if !privileged("an_interface_created_after_start_is_guarded") {
        return;
    }
    let cg = TestCgroup::new();
    let port = free_port();
    let agent = agent_in_own_netns(&cg, port, "ip link set lo up");
    let agent_pid = agent.child.as_ref().expect("agent runs").id();
    let netns = format!("--net=/proc/{agent_pid}/ns/net");
    let out = Command::new("nsenter")
        .args([
            &netns, "ip", "link", "add", "pcveth0", "type", "veth", "peer", "name", "pcveth1",
        ])
        .output()
        .expect("run ip link add");
    assert!(
        out.status.success(),
        "ip link add failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let guarded = loop {
        let hit = agent
            .audit()
            .into_iter()
            .find(|r| r["event"] == "interface_guarded" || r["event"] == "interface_unguarded");
        if let Some(r) = hit {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no interface_guarded record for the new veth within 20 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(guarded["event"], "interface_guarded", "{guarded:#}");
    assert!(
        guarded["interface"]
            .as_str()
            .is_some_and(|i| i.starts_with("pcveth")),
        "{guarded:#}"
    );
}

/// The agent protecting 127.0.0.1:`port`, started in a network namespace of its
/// own after the shell commands `setup` ran there.
fn agent_in_own_netns(cg: &TestCgroup, port: u16, setup: &str) -> Agent {
    Agent::start(
        &cg.slice,
        &policy(&["127.0.0.1"], &[port], ALLOW_PY, RULE_PY),
        AgentOpts {
            exec_prefix: vec![
                "unshare".into(),
                "--net".into(),
                "sh".into(),
                "-c".into(),
                format!("{setup} && exec \"$@\""),
                "own-netns".into(),
            ],
            ..Default::default()
        },
    )
}
