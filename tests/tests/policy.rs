//! End-to-end tests of policy behaviour: on the real data path (privileged),
//! monitor mode and reloads under load; through the real CLI, the SQL grants of
//! the shipped policies.

use std::sync::atomic::Ordering;
use std::time::Duration;

use portcullis_tests::{
    Agent, AgentOpts, Reply, Server, TempDir, TestCgroup, agent_bin, agent_built, client,
    privileged, repo_root,
};
use serde_json::Value;

fn policy(mode: &str, port: u16, rule_id: &str, effect: &str) -> String {
    format!(
        "apiVersion: portcullis.dev/v1\nmode: {mode}\nworkloads:\n  - name: py\n    match: {{ exe: \"*python3*\" }}\ntargets:\n  - name: svc\n    addresses: [\"127.0.0.1\"]\n    ports: [{port}]\n    protocol: tcp\nrules:\n  - id: {rule_id}\n    workloads: [py]\n    targets: [svc]\n    effect: {effect}\n"
    )
}

/// The sha256 the agent will report for a policy directory holding `text` as test.yaml.
fn policy_hash(text: &str) -> String {
    let dir = TempDir::new("portcullis-test-hash");
    std::fs::write(dir.0.join("test.yaml"), text).expect("write");
    let out = std::process::Command::new(agent_bin())
        .args(["policy", "check"])
        .arg(&dir.0)
        .output()
        .expect("policy check");
    let s = String::from_utf8_lossy(&out.stdout);
    s.split("sha256 ")
        .nth(1)
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|| panic!("no hash in `{s}`"))
}

#[test]
fn monitor_mode_lets_a_denied_connection_through_and_says_so() {
    if !privileged("monitor_mode_lets_a_denied_connection_through_and_says_so") {
        return;
    }
    let cg = TestCgroup::new();
    let unit = cg.unit("m");
    let server = Server::start("127.0.0.1:0", Reply::Echo, Some(unit.clone()));
    let agent = Agent::start(
        &cg.slice,
        &policy("monitor", server.port(), "py-would-be-denied", "deny"),
        AgentOpts::default(),
    );
    let r = client(&unit, &["echo", "127.0.0.1", &server.port().to_string()]);
    assert_eq!(r["ok"], true, "monitor mode must not block: {r}");
    assert_eq!(r["reply"], "ping");
    let recs = agent.connections(1);
    let rec = &recs[0];
    assert_eq!(rec["decision"], "would_deny", "{rec:#}");
    assert_eq!(rec["policy_decision"], "deny");
    assert_eq!(rec["rule"], "py-would-be-denied");
    assert_eq!(rec["mode"], "monitor");
    assert_eq!(
        server.direct_from_cgroup.load(Ordering::Relaxed),
        0,
        "it went through the agent"
    );
}

#[test]
fn reload_under_load_never_mixes_policies() {
    if !privileged("reload_under_load_never_mixes_policies") {
        return;
    }
    let cg = TestCgroup::new();
    let unit = cg.unit("flip");
    let server = Server::start("127.0.0.1:0", Reply::Echo, Some(unit.clone()));
    let port = server.port();
    let a = policy("enforce", port, "version-a-allows", "allow");
    let b = policy("enforce", port, "version-b-denies", "deny");
    let (hash_a, hash_b) = (policy_hash(&a), policy_hash(&b));
    assert_ne!(hash_a, hash_b);
    let agent = Agent::start(&cg.slice, &a, AgentOpts::default());
    let file = agent.dir.0.join("policies").join("test.yaml");
    let dir = TempDir::new("portcullis-test-flip");
    let stop = dir.0.join("stop");
    let py = portcullis_tests::client_py();
    let looper = portcullis_tests::in_cgroup(
        &unit,
        &[
            "python3",
            py.to_str().expect("path"),
            "loop",
            "127.0.0.1",
            &port.to_string(),
            stop.to_str().expect("path"),
        ],
    )
    .stdout(std::process::Stdio::piped())
    .spawn()
    .expect("loop client");
    for i in 0..20 {
        let text = if i % 2 == 0 { &b } else { &a };
        std::fs::write(&file, text).expect("write policy");
        let out = agent.cli(&["policy", "reload"]);
        assert!(
            out.status.success(),
            "reload {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(60));
    }
    std::fs::write(&stop, "1").expect("stop");
    let _ = looper.wait_with_output();
    let recs = agent.connections(10);
    assert!(
        recs.len() >= 10,
        "too few connections to say anything: {}",
        recs.len()
    );
    let (mut seen_a, mut seen_b) = (0, 0);
    for r in &recs {
        let hash = r["policy_hash"].as_str().unwrap_or("");
        let (rule, decision) = (
            r["rule"].as_str().unwrap_or(""),
            r["decision"].as_str().unwrap_or(""),
        );
        if hash == hash_a {
            assert_eq!((rule, decision), ("version-a-allows", "allow"), "{r:#}");
            seen_a += 1;
        } else if hash == hash_b {
            assert_eq!((rule, decision), ("version-b-denies", "deny"), "{r:#}");
            seen_b += 1;
        } else {
            panic!("a record names a policy hash that was never in force: {r:#}");
        }
    }
    assert!(
        seen_a > 0 && seen_b > 0,
        "both versions should have decided connections: a={seen_a} b={seen_b}"
    );
    let loads: Vec<Value> = agent
        .audit()
        .into_iter()
        .filter(|r| r["event"] == "policy_load")
        .collect();
    assert!(
        loads.len() >= 20,
        "every reload is audited: {}",
        loads.len()
    );
}

#[test]
fn a_policy_file_change_is_picked_up_without_a_signal() {
    if !privileged("a_policy_file_change_is_picked_up_without_a_signal") {
        return;
    }
    let cg = TestCgroup::new();
    let unit = cg.unit("w");
    let server = Server::start("127.0.0.1:0", Reply::Echo, Some(unit.clone()));
    let port = server.port();
    let agent = Agent::start(
        &cg.slice,
        &policy("enforce", port, "deny-first", "deny"),
        AgentOpts::default(),
    );
    let r = client(&unit, &["echo", "127.0.0.1", &port.to_string()]);
    assert_ne!(r["reply"], "ping", "denied at first: {r}");
    std::fs::write(
        agent.dir.0.join("policies").join("test.yaml"),
        policy("enforce", port, "allow-now", "allow"),
    )
    .expect("write");
    // The watcher loads a change once it has been stable for one interval (2 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = client(&unit, &["echo", "127.0.0.1", &port.to_string()]);
        if r["reply"] == "ping" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new policy was never loaded:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let loads = agent
        .audit()
        .into_iter()
        .filter(|r| r["event"] == "policy_load" && r["trigger"] == "file-change")
        .count();
    assert!(loads >= 1, "the reload was not audited as a file change");
}

#[test]
fn a_workload_selected_by_executable_hash() {
    if !privileged("a_workload_selected_by_executable_hash") {
        return;
    }
    // The file python3 really runs (PATH may hold a wrapper script).
    let real = std::process::Command::new("python3")
        .args([
            "-c",
            "import os, sys; print(os.path.realpath(sys.executable))",
        ])
        .output()
        .expect("python3");
    let real = String::from_utf8_lossy(&real.stdout).trim().to_string();
    let bytes = std::fs::read(&real).unwrap_or_else(|e| panic!("{real}: {e}"));
    let hex: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let cg = TestCgroup::new();
    let unit = cg.unit("h");
    let server = Server::start("127.0.0.1:0", Reply::Echo, Some(unit.clone()));
    let port = server.port();
    let text = format!(
        "apiVersion: portcullis.dev/v1\nworkloads:\n  - name: exact-python\n    match: {{ exe_sha256: \"{hex}\" }}\ntargets:\n  - name: svc\n    addresses: [\"127.0.0.1\"]\n    ports: [{port}]\n    protocol: tcp\nrules:\n  - id: by-hash\n    workloads: [exact-python]\n    targets: [svc]\n    effect: allow\n"
    );
    let agent = Agent::start(&cg.slice, &text, AgentOpts::default());
    let r = client(&unit, &["echo", "127.0.0.1", &port.to_string()]);
    assert_eq!(
        r["reply"],
        "ping",
        "the python binary's hash should be allowed: {r}\n{}",
        agent.log()
    );
    let recs = agent.connections(1);
    assert_eq!(recs[0]["rule"], "by-hash");
    assert_eq!(recs[0]["attribution"]["exe_sha256"], hex.as_str());
    // Another program (bash) does not have that hash.
    let out = portcullis_tests::in_cgroup(
        &unit,
        &[
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/127.0.0.1/{port}; printf ping >&3; timeout 3 cat <&3"),
        ],
    )
    .output()
    .expect("bash");
    assert_ne!(String::from_utf8_lossy(&out.stdout), "ping");
}

/// The shipped policies through the real CLI: `policy check` warns about each
/// allow rule whose meaning grants changed, `policy test` runs their SQL cases,
/// and `policy explain --sql` names the privilege no rule grants.
#[test]
fn the_cli_reports_grants_on_the_shipped_policies() {
    if !agent_built("the_cli_reports_grants_on_the_shipped_policies") {
        return;
    }
    let policies = repo_root().join("policies");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(agent_bin())
            .args(args)
            .output()
            .expect("run portcullis");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let dir = policies.to_str().expect("utf-8 path");
    let (ok, out, err) = run(&["policy", "check", dir]);
    assert!(
        ok && out.starts_with("ok: "),
        "stdout:\n{out}\nstderr:\n{err}"
    );
    assert!(
        err.lines().any(|l| l.starts_with("warning: ")
            && l.contains("allow rule `ac6-payments-api-reads-and-writes` now grants privileges")
            && l.contains("a JOIN, a subquery")),
        "stderr:\n{err}"
    );
    let (ok, out, err) = run(&["policy", "test", dir]);
    assert!(ok, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("PASS")
            && out.contains("AC-6 a join with a table the service is not granted is refused"),
        "{out}"
    );
    let (ok, out, err) = run(&[
        "policy",
        "explain",
        "--policy",
        dir,
        "--workload",
        "unit=payments-api.service,user=payments",
        "--target",
        "payments-db",
        "--sql",
        "SELECT p.amount, u.password_hash FROM public.payments p JOIN public.users u ON u.id = p.user_id",
    ]);
    assert!(ok, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("select on public.payments")
            && out.contains("granted by ac6-payments-api-reads-and-writes"),
        "{out}"
    );
    assert!(
        out.contains("select on public.users") && out.contains("MISSING: granted by no rule"),
        "{out}"
    );
    assert!(
        out.contains("select on public.users is granted by no rule"),
        "{out}"
    );
}
