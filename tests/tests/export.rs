//! End-to-end tests of the SIEM export: the real agent exporting its audit log
//! to a real rsyslog over UDP, TCP, a unix datagram socket and a unix stream
//! socket, and to an HTTP collector; collectors stopped and started again
//! while traffic flows, and the agent restarted in the middle of the outage.
//! Every record of the log must arrive (duplicates allowed: consumers dedupe
//! by event id), and `portcullis status` must show the lag and the failure.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use portcullis_tests::siem::{
    HttpCollector, HttpsCollector, Rsyslog, log_records, private_ca, rsyslog_available,
};
use portcullis_tests::{
    Agent, AgentOpts, Reply, Server, TempDir, TestCgroup, client, client_py, in_cgroup, policy,
    privileged,
};
use serde_json::Value;

const ALLOW_PY: &str = "  - name: py\n    match: { exe: \"*python3*\" }";
const RULE_PY: &str =
    "  - id: py-allow\n    workloads: [py]\n    targets: [svc]\n    effect: allow";

fn sink_status(agent: &Agent, name: &str) -> Value {
    let st = agent.status();
    st["exports"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no export sink `{name}` in status: {st}"))
}

/// Waits until every named sink has exported everything up to `seq`.
fn wait_exported(agent: &Agent, names: &[&str], seq: u64) {
    wait_exported_within(agent, names, seq, 60);
}

fn wait_exported_within(agent: &Agent, names: &[&str], seq: u64, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    for name in names {
        loop {
            let s = sink_status(agent, name);
            if s["exported_seq"].as_u64().is_some_and(|e| e >= seq) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "sink {name} did not export up to seq {seq} within {secs} s: {s}\nagent log:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// (seq, event_id) of every record of the log up to `head`.
fn expected(agent: &Agent, head: u64) -> BTreeMap<u64, Value> {
    log_records(&agent.audit_dir())
        .into_iter()
        .filter_map(|r| Some((r["seq"].as_u64()?, r)))
        .filter(|(s, _)| *s <= head)
        .collect()
}

fn head(agent: &Agent) -> u64 {
    agent.status()["audit"]["head_seq"]
        .as_u64()
        .expect("audit head_seq in status")
}

/// The SD parameters `event_id` and `seq` of `[portcullis@32473 …]`.
fn sd_params(sd: &str) -> (String, u64) {
    let get = |k: &str| {
        sd.split(&format!("{k}=\""))
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_else(|| panic!("no {k} in structured data {sd}"))
            .to_string()
    };
    assert!(sd.starts_with("[portcullis@32473 "), "SD-ID: {sd}");
    (get("event_id"), get("seq").parse().expect("numeric seq"))
}

/// Checks that rsyslog got every expected record on `input`, each well formed.
fn check_syslog(rsyslog: &Rsyslog, input: &str, ocsf: bool, want: &BTreeMap<u64, Value>) {
    let got = rsyslog.received(input);
    let mut seen = BTreeSet::new();
    for m in &got {
        let (event_id, seq) = sd_params(m["sd"].as_str().unwrap_or(""));
        let msg: Value = serde_json::from_str(m["msg"].as_str().unwrap_or(""))
            .unwrap_or_else(|e| panic!("{input}: MSG is not JSON ({e}): {m}"));
        assert_eq!(m["app"], "portcullis", "{input}: APP-NAME: {m}");
        if let Some(rec) = want.get(&seq) {
            assert_eq!(
                rec["event_id"],
                event_id.as_str(),
                "{input}: SD event_id: {m}"
            );
            assert_eq!(
                m["msgid"], rec["event"],
                "{input}: MSGID is the event type: {m}"
            );
            assert_eq!(m["hostname"], rec["host"], "{input}: HOSTNAME: {m}");
            let pri: u64 = m["pri"].as_str().and_then(|p| p.parse().ok()).expect("PRI");
            assert_eq!(pri / 8, 16, "{input}: facility local0: {m}");
            let sev = pri % 8;
            if rec["decision"] == "deny" {
                assert_eq!(sev, 4, "{input}: a denial is a warning: {m}");
            } else if rec["decision"] == "allow" {
                assert_eq!(sev, 6, "{input}: allowed access is info: {m}");
            }
            if ocsf {
                assert_eq!(msg["metadata"]["uid"], rec["event_id"], "{input}: {msg}");
                assert_eq!(msg["metadata"]["sequence"], seq, "{input}: {msg}");
                assert!(msg["class_uid"].as_u64().is_some(), "{input}: {msg}");
            } else {
                assert_eq!(&msg, rec, "{input}: MSG is the record as logged");
            }
            seen.insert(seq);
        }
    }
    let missing: Vec<u64> = want.keys().filter(|s| !seen.contains(s)).copied().collect();
    assert!(
        missing.is_empty(),
        "{input}: {} of {} records never reached rsyslog (seq {:?}…); it got {} messages",
        missing.len(),
        want.len(),
        &missing[..missing.len().min(10)],
        got.len()
    );
}

#[test]
fn rsyslog_receives_every_record_over_udp_tcp_and_unix_sockets() {
    if !privileged("rsyslog_receives_every_record_over_udp_tcp_and_unix_sockets")
        || !rsyslog_available("rsyslog_receives_every_record_over_udp_tcp_and_unix_sockets")
    {
        return;
    }
    let rsyslog = Rsyslog::start();
    let cg = TestCgroup::new();
    let server = Server::start("127.0.0.1:0", Reply::Echo, None);
    let exports = format!(
        "exports:\n\
         - name: udp\n  syslog: {{ transport: udp, address: \"127.0.0.1:{}\" }}\n\
         - name: tcp\n  format: ocsf\n  syslog: {{ transport: tcp, address: \"127.0.0.1:{}\" }}\n\
         - name: dgram\n  syslog: {{ transport: unix-dgram, address: \"{}\" }}\n\
         - name: stream\n  syslog: {{ transport: unix-stream, address: \"{}\" }}\n",
        rsyslog.udp_port,
        rsyslog.tcp_port,
        rsyslog.dgram_socket().display(),
        rsyslog.stream_socket().display(),
    );
    let agent = Agent::start(
        &cg.slice,
        &policy(&["127.0.0.1"], &[server.port()], ALLOW_PY, RULE_PY),
        AgentOpts {
            extra_config: exports,
            ..AgentOpts::default()
        },
    );
    // Allowed connections (python) and denied ones (bash, which no rule names).
    let unit = cg.unit("client");
    let port = server.port().to_string();
    for _ in 0..3 {
        let r = client(&unit, &["concurrent", "127.0.0.1", &port, "20"]);
        assert_eq!(r["ok"], true, "{r}");
    }
    for _ in 0..3 {
        let _ = in_cgroup(
            &unit,
            &["bash", "-c", &format!("echo x >/dev/tcp/127.0.0.1/{port}")],
        )
        .stderr(Stdio::null())
        .status();
    }
    let logged = agent.connections(63).len();
    assert!(logged >= 63, "63 connections logged, found {logged}");
    let h = head(&agent);
    wait_exported(&agent, &["udp", "tcp", "dgram", "stream"], h);
    let want = expected(&agent, h);
    assert!(
        want.values().any(|r| r["decision"] == "deny"),
        "denied connections logged"
    );
    check_syslog(&rsyslog, "udp", false, &want);
    check_syslog(&rsyslog, "tcp", true, &want);
    check_syslog(&rsyslog, "unix-dgram", false, &want);
    check_syslog(&rsyslog, "unix-stream", false, &want);
    for name in ["udp", "tcp", "dgram", "stream"] {
        let s = sink_status(&agent, name);
        assert_eq!(s["failing"], false, "{s}");
        assert!(s["last_success_at"].is_string(), "{s}");
    }
    // The cursors survive the agent: each names the last record exported.
    for name in ["udp", "tcp", "dgram", "stream"] {
        let p = agent
            .state_dir
            .join("export")
            .join(format!("{name}.cursor"));
        let c: Value =
            serde_json::from_slice(&std::fs::read(&p).expect("cursor file")).expect("cursor JSON");
        assert!(c["seq"].as_u64().is_some_and(|s| s >= h), "{name}: {c}");
    }
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

/// Waits until `cond` holds for the sink's status; returns that status.
fn wait_status(agent: &Agent, name: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = sink_status(agent, name);
        if cond(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "sink {name}: {what} not seen within 60 s: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn collector_outages_and_an_agent_restart_lose_no_record() {
    if !privileged("collector_outages_and_an_agent_restart_lose_no_record")
        || !rsyslog_available("collector_outages_and_an_agent_restart_lose_no_record")
    {
        return;
    }
    let mut rsyslog = Rsyslog::start();
    let mut http = HttpCollector::start();
    let cg = TestCgroup::new();
    let server = Server::start("127.0.0.1:0", Reply::Echo, None);
    let scratch = TempDir::new("portcullis-test-export");
    let token = scratch.0.join("token");
    std::fs::write(&token, "t0ken-for-test\n").expect("write token");
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod token");
    let exports = format!(
        "exports:\n\
         - name: tcp\n  batch: 50\n  backoff_max_ms: 1000\n  syslog: {{ transport: tcp, address: \"127.0.0.1:{}\" }}\n\
         - name: http\n  batch: 50\n  backoff_max_ms: 1000\n  http: {{ url: \"{}\", token_file: {} }}\n",
        rsyslog.tcp_port,
        http.url(),
        token.display(),
    );
    let mut agent = Agent::start(
        &cg.slice,
        &policy(&["127.0.0.1"], &[server.port()], ALLOW_PY, RULE_PY),
        AgentOpts {
            extra_config: exports,
            ..AgentOpts::default()
        },
    );
    let unit = cg.unit("load");
    let port = server.port().to_string();
    let stop = scratch.0.join("stop");
    let mut load = spawn_loop(&unit, &port, &stop);
    wait_exported(&agent, &["tcp", "http"], head(&agent));

    // Both collectors go away while connections go on being logged.
    rsyslog.stop();
    http.stop();
    let tcp = wait_status(&agent, "tcp", "failure and lag", |s| {
        s["failing"] == true && s["lag_records"].as_u64() > Some(0)
    });
    let web = wait_status(&agent, "http", "failure and lag", |s| {
        s["failing"] == true && s["lag_records"].as_u64() > Some(0)
    });
    assert!(
        tcp["last_error"].is_string() && web["last_error"].is_string(),
        "{tcp}\n{web}"
    );
    let printed = agent.cli(&["status"]);
    let text = String::from_utf8_lossy(&printed.stdout);
    assert!(
        text.contains("export:    tcp") && text.contains("FAILING"),
        "{text}"
    );

    // The agent restarts in the middle of the outage: its cursors stay.
    agent.sigterm();
    agent.spawn();
    wait_status(&agent, "tcp", "failure after restart", |s| {
        s["failing"] == true
    });

    // The collectors come back; traffic stops; everything arrives.
    rsyslog.spawn();
    http.start_again();
    std::fs::write(&stop, b"").expect("stop the load");
    let out = load.wait().expect("load client exits");
    assert!(out.success(), "load client failed");
    let _ = load.stdout.take();
    let h = head(&agent);
    wait_exported(&agent, &["tcp", "http"], h);
    let want = expected(&agent, h);
    let connections = want.values().filter(|r| r["event"] == "connection").count();
    assert!(connections > 0, "traffic was logged");

    // rsyslog: every event id at least once.
    let got_tcp: BTreeSet<String> = rsyslog
        .received("tcp")
        .iter()
        .map(|m| sd_params(m["sd"].as_str().unwrap_or("")).0)
        .collect();
    let got_http: BTreeSet<String> = http
        .records()
        .iter()
        .filter_map(|r| r["event_id"].as_str().map(str::to_string))
        .collect();
    for (sink, got) in [("tcp", &got_tcp), ("http", &got_http)] {
        let missing: Vec<u64> = want
            .iter()
            .filter(|(_, r)| !got.contains(r["event_id"].as_str().unwrap_or("")))
            .map(|(s, _)| *s)
            .collect();
        assert!(
            missing.is_empty(),
            "{sink}: {} of {} records lost in the outage (seq {:?}…)",
            missing.len(),
            want.len(),
            &missing[..missing.len().min(10)]
        );
    }
    assert!(
        http.auth_headers()
            .iter()
            .all(|a| a.as_deref() == Some("Bearer t0ken-for-test")),
        "every batch carries the bearer token"
    );
    // The outage is in the log itself: failures (rate limited) and recoveries.
    for sink in ["tcp", "http"] {
        let failures = want
            .values()
            .filter(|r| r["event"] == "export_failure" && r["sink"] == sink)
            .count();
        assert!(failures >= 1, "{sink}: an export_failure record");
        assert!(
            failures <= 4,
            "{sink}: failures are rate limited ({failures})"
        );
    }
    let recovered = log_records(&agent.audit_dir())
        .into_iter()
        .filter(|r| r["event"] == "export_recovered")
        .count();
    assert!(recovered >= 2, "export_recovered for both sinks");
    let dups = http.records().len() - got_http.len();
    eprintln!(
        "outage: {} records, {} connections; HTTP duplicates {dups}; rsyslog tcp messages {}",
        want.len(),
        connections,
        rsyslog.received("tcp").len()
    );
}

#[test]
fn audit_export_prints_records_in_seq_order_filtered() {
    if !privileged("audit_export_prints_records_in_seq_order_filtered") {
        return;
    }
    let cg = TestCgroup::new();
    let server = Server::start("127.0.0.1:0", Reply::Echo, None);
    let mut agent = Agent::start(
        &cg.slice,
        &policy(&["127.0.0.1"], &[server.port()], ALLOW_PY, RULE_PY),
        AgentOpts {
            extra_config: "audit_rotate_bytes: 65536\n".into(),
            ..AgentOpts::default()
        },
    );
    let unit = cg.unit("client");
    let port = server.port().to_string();
    for _ in 0..6 {
        let r = client(&unit, &["concurrent", "127.0.0.1", &port, "40"]);
        assert_eq!(r["ok"], true, "{r}");
    }
    agent.sigterm();
    // Offline, on a copy.
    let copy = TempDir::new("portcullis-test-export-copy");
    for e in std::fs::read_dir(agent.audit_dir())
        .expect("audit dir")
        .flatten()
    {
        std::fs::copy(e.path(), copy.0.join(e.file_name())).expect("copy");
    }
    let segs = std::fs::read_dir(&copy.0)
        .expect("copy dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("audit-"))
        .count();
    assert!(segs >= 1, "the log rotated");
    let run = |args: &[&str]| -> Vec<Value> {
        let out = std::process::Command::new(portcullis_tests::agent_bin())
            .args(["audit", "export"])
            .args(args)
            .arg(&copy.0)
            .output()
            .expect("run audit export");
        assert!(
            out.status.success(),
            "audit export {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect()
    };
    let all = run(&[]);
    let logged = log_records(&copy.0);
    assert_eq!(all, logged, "every record, as logged, in seq order");
    let conns = run(&["--type", "connection", "--since", "1h"]);
    assert_eq!(conns.len(), 240);
    assert!(conns.iter().all(|r| r["event"] == "connection"));
    let later = run(&["--until", "2000-01-01T00:00:00Z"]);
    assert!(later.is_empty(), "nothing before 2000");
    let ocsf = run(&["--format", "ocsf", "--type", "connection_start,agent_start"]);
    assert!(ocsf.len() >= 241, "{}", ocsf.len());
    assert!(
        ocsf.iter()
            .all(|e| e["class_uid"] == 4001 || e["class_uid"] == 6002)
    );
    let bad = std::process::Command::new(portcullis_tests::agent_bin())
        .args(["audit", "export", "--since", "yesterday"])
        .arg(&copy.0)
        .output()
        .expect("run audit export");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--since"));
}

/// A log written beforehand (realistic `connection` records from `portcullis
/// audit bench`) is exported whole by each transport
/// and format: every record arrives. Prints each sink's rate (records per
/// second), which is what `docs/benchmarks.md` reports; asserts nothing about
/// time. `PORTCULLIS_EXPORT_RATE_RECORDS` sets the log's size (default 20,000;
/// the published figures use 100,000):
/// `PORTCULLIS_EXPORT_RATE_RECORDS=100000 cargo test -p portcullis-tests --test export export_rate -- --nocapture`
#[test]
fn export_rate_per_transport() {
    if !privileged("export_rate_per_transport") || !rsyslog_available("export_rate_per_transport") {
        return;
    }
    let records: u64 = std::env::var("PORTCULLIS_EXPORT_RATE_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let scratch = TempDir::new("portcullis-test-export-rate");
    let out = std::process::Command::new(portcullis_tests::agent_bin())
        .args(["audit", "bench", "--part", "writer", "--sync", "none"])
        .args(["--records", &records.to_string(), "--dir"])
        .arg(&scratch.0)
        .output()
        .expect("run audit bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let template = scratch.0.join("none-writer");
    let rsyslog = Rsyslog::start();
    let http = HttpCollector::start();
    let sinks = [
        (
            "tcp-json",
            format!(
                "syslog: {{ transport: tcp, address: \"127.0.0.1:{}\" }}",
                rsyslog.tcp_port
            ),
            "json",
        ),
        (
            "tcp-ocsf",
            format!(
                "syslog: {{ transport: tcp, address: \"127.0.0.1:{}\" }}",
                rsyslog.tcp_port
            ),
            "ocsf",
        ),
        (
            "unix-stream",
            format!(
                "syslog: {{ transport: unix-stream, address: \"{}\" }}",
                rsyslog.stream_socket().display()
            ),
            "json",
        ),
        (
            "http-json",
            format!("http: {{ url: \"{}\" }}", http.url()),
            "json",
        ),
        (
            "http-ocsf",
            format!("http: {{ url: \"{}\" }}", http.url()),
            "ocsf",
        ),
    ];
    let cg = TestCgroup::new();
    for (name, transport, format) in sinks {
        let state = scratch.0.join(name);
        let copy = std::process::Command::new("cp")
            .arg("-a")
            .arg(&template)
            .arg(&state)
            .status()
            .expect("cp");
        assert!(copy.success());
        let agent = Agent::start(
            &cg.slice,
            &policy(&["127.0.0.1"], &[1], ALLOW_PY, RULE_PY),
            AgentOpts {
                state_dir: Some(state),
                extra_config: format!(
                    "exports:\n- name: {name}\n  format: {format}\n  {transport}\n"
                ),
                ..AgentOpts::default()
            },
        );
        let t0 = Instant::now();
        let h = head(&agent);
        wait_exported_within(&agent, &[name], h, 900);
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "export rate {name:<12} {h:>7} records in {secs:6.2} s: {:>8.0} records/s",
            h as f64 / secs
        );
    }
    let got: BTreeSet<String> = http
        .records()
        .iter()
        .filter_map(|r| {
            r["event_id"]
                .as_str()
                .or(r["metadata"]["uid"].as_str())
                .map(str::to_string)
        })
        .collect();
    assert!(
        got.len() as u64 >= records,
        "HTTP got {} distinct records",
        got.len()
    );
}

#[test]
fn https_sink_trusts_its_private_ca_and_no_other_certificate() {
    if !privileged("https_sink_trusts_its_private_ca_and_no_other_certificate") {
        return;
    }
    let scratch = TempDir::new("portcullis-test-export-tls");
    let (ca, cert, key) = private_ca(&scratch.0);
    let https = HttpsCollector::start(&cert, &key, &scratch.0.join("bodies"));
    let cg = TestCgroup::new();
    let server = Server::start("127.0.0.1:0", Reply::Echo, None);
    let exports = format!(
        "exports:\n\
         - name: private\n  format: ocsf\n  http: {{ url: \"{url}\", ca_file: {} }}\n\
         - name: public\n  backoff_max_ms: 500\n  http: {{ url: \"{url}\" }}\n",
        ca.display(),
        url = https.url(),
    );
    let agent = Agent::start(
        &cg.slice,
        &policy(&["127.0.0.1"], &[server.port()], ALLOW_PY, RULE_PY),
        AgentOpts {
            extra_config: exports,
            ..AgentOpts::default()
        },
    );
    let unit = cg.unit("client");
    let r = client(
        &unit,
        &["concurrent", "127.0.0.1", &server.port().to_string(), "10"],
    );
    assert_eq!(r["ok"], true, "{r}");
    assert!(agent.connections(10).len() >= 10);
    let h = head(&agent);
    wait_exported(&agent, &["private"], h);
    let got: BTreeSet<String> = https
        .records()
        .iter()
        .filter_map(|e| e["metadata"]["uid"].as_str().map(str::to_string))
        .collect();
    for (seq, rec) in expected(&agent, h) {
        assert!(
            got.contains(rec["event_id"].as_str().unwrap_or("")),
            "seq {seq} not received over HTTPS"
        );
    }
    // The sink without the CA refuses the collector's certificate.
    let public = wait_status(&agent, "public", "a certificate failure", |s| {
        s["failing"] == true && s["last_error"].is_string()
    });
    assert_eq!(public["exported_seq"], Value::Null, "{public}");
    let err = public["last_error"].as_str().unwrap_or("");
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );
}
