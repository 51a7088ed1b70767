//! Privileged end-to-end tests of session recording through the real agent: L4
//! sessions recorded with byte counts that match what the server received, the
//! recording's sha256 in the `connection` audit record, `sessions list` filters,
//! `sessions show --audit` verification, asciicast export, `replay`, and the size
//! bound.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use portcullis_tests::{
    Agent, AgentOpts, Reply, Server, TempDir, TestCgroup, agent_bin, client, policy, privileged,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

const WORKLOADS: &str =
    "  - name: billing\n    match: { unit: \"billing.service\", exe: \"*python3*\" }";
const RULES: &str =
    "  - id: billing-allow\n    workloads: [billing]\n    targets: [svc]\n    effect: allow";

fn sha256_hex(path: &Path) -> String {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("read recording {}: {e}", path.display()));
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read recording {}: {e}", path.display()))
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("recording line is not JSON ({e}): {l}"))
        })
        .collect()
}

/// `portcullis <args>` (no config): (success, stdout, stderr).
fn cli(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(agent_bin())
        .args(args)
        .output()
        .expect("run portcullis");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Session ids printed by `sessions list --json` with extra filter arguments.
fn listed(dir: &Path, filter: &[&str]) -> Vec<String> {
    let d = dir.to_str().expect("utf-8 path");
    let mut args = vec!["sessions", "list", "--json", "--dir", d];
    args.extend_from_slice(filter);
    let (ok, out, err) = cli(&args);
    assert!(ok, "sessions list {filter:?} failed: {err}");
    let mut ids: Vec<String> = out
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("list --json line is not JSON ({e}): {l}"));
            v["id"].as_str().expect("id").to_string()
        })
        .collect();
    ids.sort();
    ids
}

#[test]
fn l4_sessions_are_recorded_listed_verified_exported_and_replayed() {
    if !privileged("l4_sessions_are_recorded_listed_verified_exported_and_replayed") {
        return;
    }
    let cg = TestCgroup::new();
    let billing = cg.unit("billing");
    let other = cg.unit("other");
    let server = Server::start("127.0.0.1:0", Reply::Echo, Some(cg.slice.clone()));
    let port = server.port().to_string();
    let agent = Agent::start(
        &cg.slice,
        &policy(&["127.0.0.1"], &[server.port()], WORKLOADS, RULES),
        AgentOpts::default(),
    );
    let allowed = client(&billing, &["echo", "127.0.0.1", &port]);
    assert_eq!(allowed["ok"], true, "billing is allowed: {allowed}");
    let denied = client(&other, &["echo", "127.0.0.1", &port]);
    assert_ne!(
        denied["reply"], "ping",
        "other is denied by default: {denied}"
    );

    let recs = agent.connections(2);
    assert_eq!(recs.len(), 2, "two connection records: {recs:#?}");
    let allow = recs
        .iter()
        .find(|r| r["decision"] == "allow")
        .unwrap_or_else(|| panic!("no allowed connection: {recs:#?}"));
    let deny = recs
        .iter()
        .find(|r| r["decision"] == "deny")
        .unwrap_or_else(|| panic!("no denied connection: {recs:#?}"));

    // The allowed session: metadata, byte counts as the server saw them, sha256.
    let file = PathBuf::from(
        allow["recording"]["file"]
            .as_str()
            .unwrap_or_else(|| panic!("the connection record carries no recording: {allow:#}")),
    );
    let sessions = agent.state_dir.join("sessions");
    assert!(
        file.starts_with(&sessions),
        "{} is under <state_dir>/sessions",
        file.display()
    );
    assert_eq!(
        allow["recording"]["sha256"].as_str(),
        Some(sha256_hex(&file).as_str()),
        "the audit record's sha256 is the file's"
    );
    assert_eq!(allow["recording"]["truncated"], false);
    eprintln!(
        "L4 session recording: {} bytes, {} events",
        allow["recording"]["bytes"], allow["recording"]["events"]
    );
    let ev = lines(&file);
    let head = &ev[0];
    assert_eq!(head["event"], "session_start", "{head:#}");
    assert_eq!(head["session_id"], allow["session_id"]);
    assert_eq!(head["data"]["target"], "svc");
    assert_eq!(head["data"]["decision"], "allow");
    assert_eq!(head["data"]["rule"], "billing-allow");
    assert_eq!(head["data"]["protocol"], "tcp");
    assert_eq!(head["data"]["workloads"][0], "billing");
    assert_eq!(head["data"]["attribution"]["pid"], allowed["pid"]);
    assert_eq!(head["data"]["policy_hash"], allow["policy_hash"]);
    let end = ev.last().expect("end line");
    assert_eq!(end["event"], "session_end", "{end:#}");
    let received = server.bytes.load(Ordering::Relaxed);
    assert_eq!(received, 4, "the server received the client's `ping`");
    assert_eq!(end["data"]["bytes_client_to_upstream"], received);
    assert_eq!(end["data"]["bytes_upstream_to_client"], 4);
    assert_eq!(end["data"]["end"], "closed");
    assert_eq!(
        end["data"]["bytes_client_to_upstream"],
        allow["bytes_client_to_upstream"]
    );
    let half: Vec<&Value> = ev.iter().filter(|e| e["event"] == "half_close").collect();
    assert_eq!(half.len(), 2, "both sides finished sending: {ev:#?}");
    for (i, e) in ev.iter().enumerate() {
        assert_eq!(e["seq"], i as u64, "seq is gapless");
    }

    // The denied session is recorded too, with its rule.
    let dfile = PathBuf::from(
        deny["recording"]["file"]
            .as_str()
            .expect("denied recording"),
    );
    let dev = lines(&dfile);
    assert_eq!(dev[0]["data"]["decision"], "deny");
    assert_eq!(dev[0]["data"]["rule"], "default-deny");
    assert_eq!(
        deny["recording"]["sha256"].as_str(),
        Some(sha256_hex(&dfile).as_str())
    );

    // list: filters, the configured directory by default.
    let (aid, did) = (
        allow["session_id"].as_str().expect("id").to_string(),
        deny["session_id"].as_str().expect("id").to_string(),
    );
    let mut both = vec![aid.clone(), did.clone()];
    both.sort();
    assert_eq!(listed(&sessions, &[]), both);
    assert_eq!(listed(&sessions, &["--target", "svc"]), both);
    assert!(listed(&sessions, &["--target", "nope"]).is_empty());
    assert_eq!(listed(&sessions, &["--decision", "deny"]), [did.as_str()]);
    assert_eq!(
        listed(&sessions, &["--decision", "allow", "--workload", "billing"]),
        [aid.as_str()]
    );
    assert_eq!(listed(&sessions, &["--since", "1h"]), both);
    assert!(listed(&sessions, &["--until", "1h"]).is_empty());
    assert!(listed(&sessions, &["--since", "2999-01-01T00:00:00Z"]).is_empty());
    let out = agent.cli(&["sessions", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(&aid) && text.contains("billing"),
        "list from the agent config: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, _, err) = cli(&[
        "sessions",
        "list",
        "--dir",
        sessions.to_str().expect("p"),
        "--since",
        "soon",
    ]);
    assert!(
        !ok && err.contains("--since") && err.contains("soon"),
        "{err}"
    );

    // show: by prefix, verified against the audit log.
    let s = sessions.to_str().expect("utf-8");
    let audit = agent.audit_dir();
    let a = audit.to_str().expect("utf-8");
    // Ids are time-ordered: sessions close in time share a long prefix.
    let differ = aid
        .bytes()
        .zip(did.bytes())
        .position(|(x, y)| x != y)
        .expect("ids differ");
    let prefix = &aid[..differ + 1];
    let (ok, _, err) = cli(&["sessions", "show", &aid[..differ], "--dir", s]);
    assert!(
        !ok && err.contains("ambiguous") && err.contains(&did),
        "{err}"
    );
    let (ok, out, err) = cli(&["sessions", "show", prefix, "--dir", s, "--audit", a]);
    assert!(ok, "show --audit: {out}{err}");
    assert!(out.contains(&format!("session   {aid}")), "{out}");
    assert!(
        out.contains("half_close") && out.contains("session_end"),
        "{out}"
    );
    assert!(out.contains("verified: sha256"), "{out}");
    // A changed copy no longer verifies.
    let copy = TempDir::new("portcullis-test-rec-copy");
    let day = copy.0.join("day");
    std::fs::create_dir_all(&day).expect("mkdir");
    let changed = day.join(file.file_name().expect("name"));
    let text = std::fs::read_to_string(&file).expect("read");
    std::fs::write(&changed, text.replace("billing-allow", "billing-alloW")).expect("write");
    let c = copy.0.to_str().expect("utf-8");
    let (ok, out, _) = cli(&["sessions", "show", &aid, "--dir", c, "--audit", a]);
    assert!(
        !ok && out.contains("VERIFY FAILED"),
        "a changed recording must fail: {out}"
    );
    let (ok, _, err) = cli(&["sessions", "show", "ffffffffffff", "--dir", s]);
    assert!(!ok && err.contains("no session recording"), "{err}");

    // export: asciicast v2.
    let (ok, cast, err) = cli(&[
        "sessions",
        "export",
        &aid,
        "--dir",
        s,
        "--format",
        "asciicast",
    ]);
    assert!(ok, "export: {err}");
    let mut it = cast.lines();
    let h: Value = serde_json::from_str(it.next().expect("header")).expect("header JSON");
    assert_eq!(h["version"], 2, "{h}");
    assert!(
        h["width"].as_u64().is_some() && h["height"].as_u64().is_some(),
        "{h}"
    );
    let mut last = 0.0;
    let mut frames = 0;
    for l in it {
        let f: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("cast line ({e}): {l}"));
        let t = f[0].as_f64().expect("time");
        assert!(t >= last, "time goes backwards in {cast}");
        last = t;
        assert_eq!(f[1], "o");
        frames += 1;
    }
    assert_eq!(frames, ev.len() + 1, "a frame per event and the header");
    let (ok, jsonl, _) = cli(&["sessions", "export", &aid, "--dir", s]);
    assert!(
        ok && jsonl == std::fs::read_to_string(&file).expect("read"),
        "jsonl export is the file"
    );

    // replay at once, through the agent's config.
    let out = agent.cli(&["replay", &aid, "--speed", "0"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "replay: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = text.find("session_start").expect("start in replay");
    let end = text.find("session_end").expect("end in replay");
    assert!(start < end, "{text}");
}

#[test]
fn the_size_bound_produces_one_truncated_event() {
    if !privileged("the_size_bound_produces_one_truncated_event") {
        return;
    }
    let cg = TestCgroup::new();
    let billing = cg.unit("billing");
    let server = Server::start("127.0.0.1:0", Reply::Echo, Some(cg.slice.clone()));
    let agent = Agent::start(
        &cg.slice,
        &policy(&["127.0.0.1"], &[server.port()], WORKLOADS, RULES),
        AgentOpts {
            extra_config: "recording_max_bytes: 512\n".into(),
            ..AgentOpts::default()
        },
    );
    let r = client(&billing, &["echo", "127.0.0.1", &server.port().to_string()]);
    assert_eq!(r["ok"], true, "{r}");
    let recs = agent.connections(1);
    let rec = &recs[0];
    assert_eq!(rec["recording"]["truncated"], true, "{rec:#}");
    let file = PathBuf::from(rec["recording"]["file"].as_str().expect("file"));
    let ev = lines(&file);
    let marks = ev.iter().filter(|e| e["event"] == "truncated").count();
    assert_eq!(marks, 1, "exactly one truncated event: {ev:#?}");
    let end = ev.last().expect("end");
    assert_eq!(end["event"], "session_end");
    // Both half-closes were dropped (the header alone passes 512 bytes).
    assert_eq!(end["data"]["dropped_events"], 2, "{end:#}");
    assert_eq!(rec["recording"]["dropped_events"], 2);
    assert_eq!(
        end["data"]["bytes_client_to_upstream"], 4,
        "the end still counts bytes"
    );
    assert_eq!(
        rec["recording"]["sha256"].as_str(),
        Some(sha256_hex(&file).as_str())
    );
    let out = agent.cli(&["sessions", "list"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("truncated"),
        "list shows it: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn expired_recordings_are_removed_after_an_audit_record() {
    if !privileged("expired_recordings_are_removed_after_an_audit_record") {
        return;
    }
    let cg = TestCgroup::new();
    let server = Server::start("127.0.0.1:0", Reply::Echo, None);
    // Declared before the agent, so it is removed after the agent stopped.
    let state = TempDir::new("portcullis-test-rec-state");
    let header = "{\"seq\":0,\"time\":\"2020-01-01T00:00:00.000000Z\",\"elapsed_us\":0,\"event\":\"session_start\",\"format\":\"portcullis-recording/1\",\"session_id\":\"old\",\"host\":\"h\",\"agent_version\":\"0\",\"data\":{}}\n";
    let old_day = state.0.join("sessions").join("2020-01-01");
    let new_day = state.0.join("sessions").join("2999-01-01");
    for d in [&old_day, &new_day] {
        std::fs::create_dir_all(d).expect("day dir");
    }
    let (old, fresh) = (old_day.join("old.jsonl"), new_day.join("fresh.jsonl"));
    std::fs::write(&old, header).expect("write old recording");
    std::fs::write(&fresh, header.replace("\"old\"", "\"fresh\"")).expect("write fresh");
    let touched = std::process::Command::new("touch")
        .args(["-d", "2020-01-01T00:00:00"])
        .arg(&old)
        .status()
        .expect("run touch");
    assert!(touched.success(), "touch -d failed");
    let agent = Agent::start(
        &cg.slice,
        &policy(&["127.0.0.1"], &[server.port()], WORKLOADS, RULES),
        AgentOpts {
            state_dir: Some(state.0.clone()),
            extra_config: "recording_retain_secs: 86400\n".into(),
            ..AgentOpts::default()
        },
    );
    // The first check runs at start-up; bounded only to turn a hang into a failure.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while old.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        !old.exists(),
        "the expired recording was not removed:\n{}",
        agent.log()
    );
    assert!(!old_day.exists(), "its emptied day directory goes too");
    assert!(fresh.exists(), "a recent recording stays");
    let rec = agent
        .audit()
        .into_iter()
        .find(|r| r["event"] == "recording_retention")
        .unwrap_or_else(|| panic!("no recording_retention audit record"));
    let files: Vec<&str> = rec["files"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert_eq!(files, [old.to_str().expect("utf-8")], "{rec:#}");
    assert_eq!(rec["retain_secs"], 86400);
}
