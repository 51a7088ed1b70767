//! Privileged end-to-end tests of the kernel data path and the L4 proxy.
//! Real programs in a real child cgroup, real agent binary, real client processes.

use std::time::{Duration, Instant};

use portcullis_tests::{Agent, AgentOpts, Reply, Server, TestCgroup, client, policy, privileged};
use serde_json::Value;

const ALLOW_PY: &str = "  - name: py\n    match: { exe: \"*python3*\" }";
const RULE_PY: &str =
    "  - id: py-allow\n    workloads: [py]\n    targets: [svc]\n    effect: allow";

fn find_session(recs: &[Value], pid: u64) -> &Value {
    recs.iter()
        .find(|r| r["attribution"]["pid"].as_u64() == Some(pid))
        .unwrap_or_else(|| panic!("no connection record for pid {pid} in {recs:#?}"))
}

#[test]
fn redirect_and_attribution_including_client_that_exits_at_once() {
    if !privileged("redirect_and_attribution") {
        return;
    }
    let cg = TestCgroup::new();
    let unit = cg.unit("reporting");
    // Watch the client's cgroup only: the agent itself runs in the slice here.
    let server = Server::start("127.0.0.1:0", Reply::Echo, Some(unit.clone()));
    let port = server.port();
    // The agent runs inside the enforced cgroup: its own upstream connects must be
    // exempt (by mark), or this would loop back into itself.
    let agent_cg = cg.unit("agent");
    let agent = Agent::start(
        &cg.slice,
        &policy(&["127.0.0.1"], &[port], ALLOW_PY, RULE_PY),
        AgentOpts {
            agent_cgroup: Some(agent_cg),
            ..Default::default()
        },
    );

    let r = client(&unit, &["echo", "127.0.0.1", &port.to_string()]);
    assert_eq!(
        r["ok"],
        true,
        "echo through the agent failed: {r}\n{}",
        agent.log()
    );
    assert_eq!(r["reply"], "ping");
    let pid = r["pid"].as_u64().expect("pid");

    let fast = client(&unit, &["exit-fast", "127.0.0.1", &port.to_string()]);
    let fast_pid = fast["pid"].as_u64().expect("pid");

    let recs = agent.connections(2);
    let rec = find_session(&recs, pid);
    let a = &rec["attribution"];
    assert_eq!(rec["decision"], "allow", "{rec:#}");
    assert_eq!(rec["rule"], "py-allow");
    assert_eq!(rec["original_destination"], format!("127.0.0.1:{port}"));
    assert_eq!(a["uid"], 0);
    assert_eq!(a["cgroup_id"].as_u64(), Some(TestCgroup::id(&unit)));
    assert_eq!(a["unit"], "reporting.service");
    assert!(
        a["slice"]
            .as_str()
            .is_some_and(|s| s.starts_with("portcullis-test")),
        "{a}"
    );
    assert!(
        a["exe"].as_str().is_some_and(|e| e.contains("python3")),
        "{a}"
    );
    assert!(rec["bytes_client_to_upstream"].as_u64() == Some(4), "{rec}");

    // The short-lived client: gone before the agent looked, yet fully attributed
    // from what the kernel captured at exec and connect.
    let rec = find_session(&recs, fast_pid);
    let a = &rec["attribution"];
    assert!(
        a["exe"].as_str().is_some_and(|e| e.contains("python3")),
        "exe lost for exited client: {a}"
    );
    assert_eq!(a["unit"], "reporting.service");
    assert_eq!(a["comm"], "python3");
    assert_eq!(rec["decision"], "allow");

    // A child forked without exec, gone before the agent looks: it runs its
    // parent's program, and the kernel's fork record says so.
    let forked = client(&unit, &["fork-exit-fast", "127.0.0.1", &port.to_string()]);
    assert_eq!(forked["ok"], true, "{forked}");
    let child_pid = forked["pid"].as_u64().expect("pid");
    let recs = agent.connections(3);
    let rec = find_session(&recs, child_pid);
    assert!(
        rec["attribution"]["exe"]
            .as_str()
            .is_some_and(|e| e.contains("python3")),
        "forked child not attributed to its program: {rec:#}"
    );
    assert_eq!(rec["attribution"]["exe_source"], "exec", "{rec:#}");

    assert_eq!(
        server
            .direct_from_cgroup
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert!(agent.counter("redirects") >= 2);
    assert!(
        agent.counter("exempt") >= 2,
        "agent upstream connects were not exempt"
    );
}

#[test]
fn ipv6_mapped_alias_and_fast_open() {
    if !privileged("ipv6_mapped_alias_and_fast_open") {
        return;
    }
    let cg = TestCgroup::new();
    let unit = cg.unit("client");
    let v4 = Server::start("0.0.0.0:0", Reply::Echo, Some(cg.slice.clone()));
    let port = v4.port();
    let v6 = Server::start(
        &format!("[::1]:{port}"),
        Reply::Echo,
        Some(cg.slice.clone()),
    );
    let agent = Agent::start(
        &cg.slice,
        &policy(
            &["127.0.1.0/24", "127.0.0.1", "::1"],
            &[port],
            ALLOW_PY,
            RULE_PY,
        ),
        AgentOpts::default(),
    );
    let p = port.to_string();
    for host in [
        "127.0.0.1",
        "::1",
        "::ffff:127.0.0.1",
        "127.0.1.7",
        "127.0.1.200",
    ] {
        let r = client(&unit, &["echo", host, &p]);
        assert_eq!(r["ok"], true, "{host}: {r}\n{}", agent.log());
        assert_eq!(r["reply"], "ping", "{host}");
    }
    let r = client(&unit, &["tfo", "127.0.0.1", &p]);
    assert_eq!(r["ok"], true, "TCP Fast Open: {r}");
    let recs = agent.connections(6);
    let dsts: Vec<&str> = recs
        .iter()
        .filter_map(|r| r["original_destination"].as_str())
        .collect();
    for want in [
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        format!("127.0.1.7:{port}"),
        format!("127.0.1.200:{port}"),
    ] {
        assert!(
            dsts.contains(&want.as_str()),
            "no record for {want}: {dsts:?}"
        );
    }
    assert_eq!(
        recs.len(),
        6,
        "every connect (including mapped and fast-open) went through the agent"
    );
    let direct = v4
        .direct_from_cgroup
        .load(std::sync::atomic::Ordering::Relaxed)
        + v6.direct_from_cgroup
            .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(direct, 0, "a connection reached a server without the agent");
}

#[test]
fn bypass_attempts_are_dropped_and_counted() {
    if !privileged("bypass_attempts_are_dropped_and_counted") {
        return;
    }
    let cg = TestCgroup::new();
    let unit = cg.unit("sneaky");
    let server = Server::start("127.0.0.1:0", Reply::Echo, Some(cg.slice.clone()));
    let port = server.port();
    let p = port.to_string();

    // A socket connected before enforcement began.
    let dir = portcullis_tests::TempDir::new("portcullis-test-pre");
    let ready = dir.0.join("ready");
    let go = dir.0.join("go");
    let py = portcullis_tests::client_py();
    let pre = portcullis_tests::in_cgroup(
        &unit,
        &[
            "python3",
            py.to_str().expect("path"),
            "preexisting",
            "127.0.0.1",
            &p,
            ready.to_str().expect("path"),
            go.to_str().expect("path"),
        ],
    )
    .stdout(std::process::Stdio::piped())
    .spawn()
    .expect("spawn pre-existing client");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.exists() {
        assert!(
            Instant::now() < deadline,
            "pre-existing client never connected"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let bytes_before = server.bytes.load(std::sync::atomic::Ordering::Relaxed);

    let agent = Agent::start(
        &cg.slice,
        &policy(&["127.0.0.1"], &[port], ALLOW_PY, RULE_PY),
        AgentOpts::default(),
    );
    let drops0 = agent.counter("bypass_drops");

    let raw = client(&unit, &["raw-syn", "127.0.0.1", &p]);
    assert_eq!(
        raw["ok"], false,
        "raw SYN to a protected target must fail: {raw}"
    );
    assert_eq!(raw["errno"], 1, "EPERM expected: {raw}");
    let udp = client(&unit, &["udp", "127.0.0.1", &p]);
    assert_eq!(
        udp["ok"], false,
        "UDP sendto to a protected target must fail: {udp}"
    );
    assert_eq!(udp["errno"], 1, "EPERM expected: {udp}");
    let udpc = client(&unit, &["udp-connect", "127.0.0.1", &p]);
    assert_eq!(
        udpc["ok"], false,
        "UDP connect to a protected target is refused: {udpc}"
    );

    std::fs::write(&go, "1").expect("signal pre-existing client");
    let out = pre.wait_with_output().expect("pre-existing client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("late data"),
        "the old socket's data got through: {text}"
    );
    assert_eq!(
        server.bytes.load(std::sync::atomic::Ordering::Relaxed),
        bytes_before,
        "bytes from a pre-existing socket reached the protected server"
    );
    let drops = agent.counter("bypass_drops") - drops0;
    assert!(
        drops >= 3,
        "expected raw, UDP and pre-existing-socket drops to be counted, got {drops}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let recs = agent.audit();
        if recs.iter().any(|r| r["event"] == "bypass_drop") {
            break;
        }
        assert!(Instant::now() < deadline, "no bypass_drop audit record");
    }
    let kd = agent
        .audit()
        .into_iter()
        .filter(|r| r["event"] == "kernel_deny")
        .count();
    assert!(kd >= 1, "UDP connect should be audited as a kernel deny");
}

#[test]
fn kill9_under_load_fails_closed_and_restart_adopts() {
    if !privileged("kill9_under_load_fails_closed_and_restart_adopts") {
        return;
    }
    let cg = TestCgroup::new();
    let unit = cg.unit("loop");
    let server = Server::start("127.0.0.1:0", Reply::Echo, Some(cg.slice.clone()));
    let p = server.port().to_string();
    let mut agent = Agent::start(
        &cg.slice,
        &policy(&["127.0.0.1"], &[server.port()], ALLOW_PY, RULE_PY),
        AgentOpts::default(),
    );
    let dir = portcullis_tests::TempDir::new("portcullis-test-loop");
    let stop = dir.0.join("stop");
    let py = portcullis_tests::client_py();
    let looper = portcullis_tests::in_cgroup(
        &unit,
        &[
            "python3",
            py.to_str().expect("path"),
            "loop",
            "127.0.0.1",
            &p,
            stop.to_str().expect("path"),
        ],
    )
    .stdout(std::process::Stdio::piped())
    .spawn()
    .expect("spawn loop client");
    std::thread::sleep(Duration::from_millis(700));
    agent.kill9();
    // While the agent is dead, enforcement stays pinned: connects are refused.
    std::thread::sleep(Duration::from_millis(700));
    let during = client(&unit, &["echo", "127.0.0.1", &p]);
    assert_eq!(
        during["ok"], false,
        "a connect succeeded while the agent was dead: {during}"
    );
    assert_eq!(
        during["errno"], 111,
        "ECONNREFUSED expected while the agent is down: {during}"
    );
    agent.spawn();
    let st = agent.status();
    assert_eq!(
        st["enforcement"]["adopted_from_pins"], true,
        "restart did not adopt the pins: {st:#}"
    );
    std::thread::sleep(Duration::from_millis(700));
    std::fs::write(&stop, "1").expect("stop loop");
    let out = looper.wait_with_output().expect("loop client");
    let line = String::from_utf8_lossy(&out.stdout);
    let v: Value =
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("loop output {line}: {e}"));
    assert!(
        v["good"].as_u64().unwrap_or(0) > 0,
        "no successful connects: {v}"
    );
    assert!(
        v["refused"].as_u64().unwrap_or(0) > 0,
        "the outage was not observed: {v}"
    );
    assert_eq!(
        server
            .direct_from_cgroup
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "a connection reached the server without the agent"
    );
    let after = client(&unit, &["echo", "127.0.0.1", &p]);
    assert_eq!(after["ok"], true, "restarted agent does not serve: {after}");
}

#[test]
fn l4_proxy_bulk_half_close_and_concurrency() {
    if !privileged("l4_proxy_bulk_half_close_and_concurrency") {
        return;
    }
    let cg = TestCgroup::new();
    let unit = cg.unit("bulk");
    let sha = Server::start("127.0.0.1:0", Reply::Sha256, Some(cg.slice.clone()));
    let echo = Server::start("127.0.0.1:0", Reply::Echo, Some(cg.slice.clone()));
    let agent = Agent::start(
        &cg.slice,
        &policy(
            &["127.0.0.1"],
            &[sha.port(), echo.port()],
            ALLOW_PY,
            RULE_PY,
        ),
        AgentOpts::default(),
    );
    // 100 MiB intact (sha256 compared end to end); the reply only comes after the
    // client's half-close reached the server, so this also proves half-close.
    let r = client(
        &unit,
        &["bulk", "127.0.0.1", &sha.port().to_string(), "100"],
    );
    assert_eq!(r["ok"], true, "bulk transfer corrupted or failed: {r}");
    let r = client(
        &unit,
        &["concurrent", "127.0.0.1", &echo.port().to_string(), "200"],
    );
    assert_eq!(
        r["ok"],
        true,
        "200 concurrent connections: {r}\n{}",
        agent.log()
    );
    let recs = agent.connections(201);
    let bulk = recs
        .iter()
        .find(|r| r["bytes_client_to_upstream"].as_u64() == Some(100 * 1024 * 1024))
        .unwrap_or_else(|| panic!("no record with 100 MiB upstream"));
    assert_eq!(bulk["bytes_upstream_to_client"], 64);
    assert_eq!(bulk["end"], "closed");
}

#[test]
fn allow_and_deny_by_unit_uid_and_exe() {
    if !privileged("allow_and_deny_by_unit_uid_and_exe") {
        return;
    }
    let cg = TestCgroup::new();
    let billing = cg.unit("billing");
    let other = cg.unit("other");
    let server = Server::start("127.0.0.1:0", Reply::Echo, Some(cg.slice.clone()));
    let port = server.port();
    let workloads = "  - name: billing\n    match: { unit: \"billing.service\", exe: \"*python3*\" }\n  - name: root-in-other\n    match: { unit: \"other.service\", uid: 0 }\n  - name: shells\n    match: { exe: \"*/bash\" }";
    let rules = "  - id: billing-allow\n    workloads: [billing]\n    targets: [svc]\n    effect: allow\n  - id: root-other-allow\n    workloads: [root-in-other]\n    targets: [svc]\n    effect: allow\n  - id: no-shells\n    workloads: [shells]\n    targets: [svc]\n    effect: deny";
    let agent = Agent::start(
        &cg.slice,
        &policy(&["127.0.0.1"], &[port], workloads, rules),
        AgentOpts::default(),
    );
    let p = port.to_string();
    // unit: billing allowed
    let r = client(&billing, &["echo", "127.0.0.1", &p]);
    assert_eq!(r["ok"], true, "billing should be allowed: {r}");
    // uid: root in `other` allowed, uid 65534 in `other` denied by default
    let r = client(&other, &["echo", "127.0.0.1", &p]);
    assert_eq!(r["ok"], true, "root in other should be allowed: {r}");
    let r = client(&other, &["setuid-echo", "65534", "127.0.0.1", &p]);
    assert_ne!(r["reply"], "ping", "uid 65534 must be denied: {r}");
    // exe: bash (root, in `other`) is denied by an explicit deny that beats the uid allow
    let out = portcullis_tests::in_cgroup(
        &other,
        &[
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/127.0.0.1/{port}; printf ping >&3; timeout 3 cat <&3"),
        ],
    )
    .output()
    .expect("bash client");
    assert_ne!(
        String::from_utf8_lossy(&out.stdout),
        "ping",
        "bash must be denied"
    );

    let recs = agent.connections(4);
    let by_rule = |rule: &str| recs.iter().filter(|r| r["rule"] == rule).count();
    assert_eq!(by_rule("billing-allow"), 1, "{recs:#?}");
    assert_eq!(by_rule("root-other-allow"), 1, "{recs:#?}");
    assert_eq!(by_rule("default-deny"), 1, "{recs:#?}");
    assert_eq!(by_rule("no-shells"), 1, "{recs:#?}");
    for r in &recs {
        let expect = if r["rule"].as_str().is_some_and(|x| x.ends_with("allow")) {
            "allow"
        } else {
            "deny"
        };
        assert_eq!(r["decision"], expect, "{r:#}");
    }
}

#[test]
fn policy_reload_keeps_last_good_and_updates_kernel_targets() {
    if !privileged("policy_reload_keeps_last_good_and_updates_kernel_targets") {
        return;
    }
    let cg = TestCgroup::new();
    let unit = cg.unit("r");
    let a = Server::start("127.0.0.1:0", Reply::Echo, Some(cg.slice.clone()));
    let b = Server::start("127.0.0.1:0", Reply::Echo, Some(cg.slice.clone()));
    let agent = Agent::start(
        &cg.slice,
        &policy(&["127.0.0.1"], &[a.port()], ALLOW_PY, RULE_PY),
        AgentOpts::default(),
    );
    let pol = agent.dir.0.join("policies").join("test.yaml");
    // b is not protected yet: the connection reaches it, and the agent has no
    // record of it (it was not redirected).
    let to_b = |recs: &[serde_json::Value]| {
        let want = format!("127.0.0.1:{}", b.port());
        recs.iter()
            .filter(|r| r["original_destination"].as_str() == Some(want.as_str()))
            .count()
    };
    let r = client(&unit, &["echo", "127.0.0.1", &b.port().to_string()]);
    assert_eq!(r["ok"], true);
    assert_eq!(b.accepted.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(to_b(&agent.connections(0)), 0, "b was not protected yet");
    // A broken policy is refused; the old one stays in force.
    std::fs::write(&pol, "apiVersion: portcullis.dev/v1\nrules: [oops").expect("write");
    let out = agent.cli(&["policy", "reload"]);
    assert!(!out.status.success(), "a broken policy must be refused");
    let r = client(&unit, &["echo", "127.0.0.1", &a.port().to_string()]);
    assert_eq!(r["ok"], true, "last good policy must stay in force: {r}");
    // A good policy protecting both ports.
    std::fs::write(
        &pol,
        policy(&["127.0.0.1"], &[a.port(), b.port()], ALLOW_PY, RULE_PY),
    )
    .expect("write");
    let out = agent.cli(&["policy", "reload"]);
    assert!(
        out.status.success(),
        "reload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = client(&unit, &["echo", "127.0.0.1", &b.port().to_string()]);
    assert_eq!(r["ok"], true);
    assert_eq!(
        to_b(&agent.connections(2)),
        1,
        "b is now protected: the agent carried it"
    );
    let events: Vec<String> = agent
        .audit()
        .iter()
        .map(|r| r["event"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(events.contains(&"policy_reject".to_string()), "{events:?}");
    assert!(events.contains(&"policy_load".to_string()), "{events:?}");
}

#[test]
fn detach_is_explicit_audited_and_stops_the_agent_with_status_10() {
    if !privileged("detach_is_explicit_audited_and_stops_the_agent_with_status_10") {
        return;
    }
    let cg = TestCgroup::new();
    let unit = cg.unit("d");
    let server = Server::start("127.0.0.1:0", Reply::Echo, Some(unit.clone()));
    let p = server.port().to_string();
    let mut agent = Agent::start(
        &cg.slice,
        &policy(&["127.0.0.1"], &[server.port()], ALLOW_PY, RULE_PY),
        AgentOpts::default(),
    );
    let refused = agent.cli(&["detach"]);
    assert!(
        !refused.status.success(),
        "detach without --yes must refuse"
    );
    let out = agent.cli(&["detach", "--yes"]);
    assert!(
        out.status.success(),
        "detach: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = agent.child.take().expect("agent process");
    let status = child.wait().expect("agent exit");
    assert_eq!(
        status.code(),
        Some(10),
        "detached agent must exit with status 10"
    );
    // Enforcement is gone: the client now reaches the server, and no agent is left
    // to have carried it (the agent exited above), so it went there directly.
    let r = client(&unit, &["echo", "127.0.0.1", &p]);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["reply"], "ping");
    assert_eq!(
        server.accepted.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the server saw the client's connection"
    );
    assert!(
        !agent.bpffs.join("links").exists(),
        "pins left behind after detach"
    );
    let recs = agent.audit();
    let d = recs
        .iter()
        .find(|r| r["event"] == "enforcement_detached")
        .unwrap_or_else(|| panic!("no enforcement_detached record"));
    assert!(d["removed_pins"].as_array().is_some_and(|a| !a.is_empty()));
}

#[test]
fn sigterm_leaves_enforcement_pinned_and_upgrade_swaps_generations_without_a_gap() {
    if !privileged("sigterm_leaves_enforcement_pinned_and_upgrade_swaps_generations_without_a_gap")
    {
        return;
    }
    let cg = TestCgroup::new();
    let unit = cg.unit("up");
    let server = Server::start("127.0.0.1:0", Reply::Echo, Some(unit.clone()));
    let p = server.port().to_string();
    let mut agent = Agent::start(
        &cg.slice,
        &policy(&["127.0.0.1"], &[server.port()], ALLOW_PY, RULE_PY),
        AgentOpts::default(),
    );
    let first = agent.link_pins();
    for prog in [
        "pc_connect4",
        "pc_connect6",
        "pc_sockops",
        "pc_egress",
        "pc_sock_create",
    ] {
        assert!(
            first.iter().any(|p| p.starts_with(&format!("{prog}-"))),
            "no pinned link for {prog}: {first:?}"
        );
    }

    // SIGTERM: orderly stop, enforcement stays, connects fail closed.
    let st = agent.sigterm();
    assert!(st.success(), "SIGTERM exit: {st:?}");
    assert_eq!(agent.link_pins(), first, "SIGTERM must leave the pins");
    let r = client(&unit, &["echo", "127.0.0.1", &p]);
    assert_eq!(
        r["errno"], 111,
        "fail closed (ECONNREFUSED) while stopped: {r}"
    );

    // Simulate a previous generation: rename the pins to another object hash. They
    // stay attached. The next start finds no pins of its own generation, attaches
    // and pins new programs, and only then removes the old ones.
    for name in &first {
        let old = name
            .rsplit_once('-')
            .map(|(a, _)| format!("{a}-000000000000"))
            .expect("pin name");
        std::fs::rename(
            agent.bpffs.join("links").join(name),
            agent.bpffs.join("links").join(&old),
        )
        .expect("rename pin");
    }
    let dir = portcullis_tests::TempDir::new("portcullis-test-upgrade");
    let stop = dir.0.join("stop");
    let py = portcullis_tests::client_py();
    let looper = portcullis_tests::in_cgroup(
        &unit,
        &[
            "python3",
            py.to_str().expect("path"),
            "loop",
            "127.0.0.1",
            &p,
            stop.to_str().expect("path"),
        ],
    )
    .stdout(std::process::Stdio::piped())
    .spawn()
    .expect("spawn loop client");
    std::thread::sleep(Duration::from_millis(300));
    agent.spawn();
    let st = agent.status();
    assert_eq!(
        st["enforcement"]["adopted_from_pins"], false,
        "a new generation must be attached: {st:#}"
    );
    assert_eq!(
        agent.link_pins(),
        first,
        "old generation pins must be replaced by the new ones"
    );
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&stop, "1").expect("stop loop");
    let out = looper.wait_with_output().expect("loop client");
    let v: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).expect("loop JSON");
    assert!(
        v["good"].as_u64().unwrap_or(0) > 0,
        "no connects served after the upgrade: {v}"
    );
    assert_eq!(
        server
            .direct_from_cgroup
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "a connection bypassed the agent during the generation swap"
    );
}

#[test]
fn systemd_notify_ready_and_watchdog() {
    if !privileged("systemd_notify_ready_and_watchdog") {
        return;
    }
    let cg = TestCgroup::new();
    let dir = portcullis_tests::TempDir::new("portcullis-test-notify");
    let sock_path = dir.0.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let server = Server::start("127.0.0.1:0", Reply::Echo, None);
    let _agent = Agent::start(
        &cg.slice,
        &policy(&["127.0.0.1"], &[server.port()], ALLOW_PY, RULE_PY),
        AgentOpts {
            env: vec![
                ("NOTIFY_SOCKET".into(), sock_path.display().to_string()),
                ("WATCHDOG_USEC".into(), "400000".into()),
            ],
            ..Default::default()
        },
    );
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while !(seen.iter().any(|m: &String| m.contains("READY=1"))
        && seen.iter().any(|m| m.contains("WATCHDOG=1")))
    {
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no sd_notify message ({e}); got {seen:?}"));
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
}

/// A fresh machine of this kind boots without tracefs: the agent must start and
/// enforce with /sys/kernel/tracing (and /sys/kernel/debug/tracing) unmounted.
/// It runs in a private mount namespace where both are unmounted, so the host's
/// mounts are left as they are.
#[test]
fn starts_and_enforces_without_tracefs() {
    if !privileged("starts_and_enforces_without_tracefs") {
        return;
    }
    portcullis_tests::ensure_bpffs();
    let cg = TestCgroup::new();
    let unit = cg.unit("notrace");
    let server = Server::start("127.0.0.1:0", Reply::Echo, Some(unit.clone()));
    let port = server.port();
    let agent = Agent::start(
        &cg.slice,
        &policy(&["127.0.0.1"], &[port], ALLOW_PY, RULE_PY),
        AgentOpts {
            exec_prefix: portcullis_tests::without_tracefs(),
            ..Default::default()
        },
    );
    let r = client(&unit, &["exit-fast", "127.0.0.1", &port.to_string()]);
    assert_eq!(
        r["ok"],
        true,
        "echo through the agent failed: {r}\n{}",
        agent.log()
    );
    let pid = r["pid"].as_u64().expect("pid");
    let recs = agent.connections(1);
    let rec = find_session(&recs, pid);
    assert_eq!(rec["decision"], "allow", "{rec:#}");
    assert_eq!(rec["attribution"]["exe_source"], "exec", "{rec:#}");
    assert_eq!(
        server
            .direct_from_cgroup
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert!(agent.counter("redirects") >= 1);
}
