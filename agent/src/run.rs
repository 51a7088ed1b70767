//! `portcullis run`: start-up order, signals, reload, detach, shutdown.
//!
//! Start-up: config → policy (refuse to start if broken) → audit log → listeners →
//! maps filled → programs attached/adopted → READY. SIGHUP reloads the policy
//! (a broken one is refused and the last good one stays). SIGTERM stops the agent
//! and leaves enforcement pinned: protected connects then fail closed until the
//! agent is back. Only `portcullis detach` removes enforcement.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use agent_common::{Config, config_flags, event_kind, verdict};
use anyhow::Context;
use serde_json::json;
use tokio::io::unix::AsyncFd;

use crate::audit::AuditLog;
use crate::config::{AgentConfig, CgroupSetting, MarkSetting, RawSockets};
use crate::ebpf::{self, Enforcement};
use crate::flows::FlowKey;
use crate::identity::{self, CgroupResolver};
use crate::policy::CompiledPolicy;
use crate::proxy;
use crate::state::Shared;
use crate::systemd;

/// The settings the kernel programs read. With `upstream_mark: auto` the mark is
/// filled in by [`Enforcement::open`] (kept with the pins, or random).
pub fn kernel_config(cfg: &AgentConfig, agent_cgroup_id: u64) -> Config {
    Config {
        listen_v6: cfg.listen_v6.octets(),
        listen_v4: cfg.listen_v4.octets(),
        listen_port: cfg.listen_port,
        _pad0: 0,
        mark: match cfg.upstream_mark_setting {
            MarkSetting::Value(v) => v,
            MarkSetting::Keyword(_) => 0,
        },
        flags: match cfg.raw_sockets {
            RawSockets::Refuse => config_flags::REFUSE_RAW_SOCKETS,
            RawSockets::Allow => 0,
        },
        agent_cgroup_id,
        // Filled in by Enforcement::open from the cgroup it attaches to.
        enforced_cgroup_id: 0,
        enforced_level: 0,
        _pad1: 0,
    }
}

/// Prefix of the cgroups the agent creates for itself outside systemd.
const OWN_CGROUP_PREFIX: &str = "portcullis-agent-";

/// The agent's own cgroup v2: the only cgroup whose sockets the kernel programs
/// exempt, so no workload may share it.
///
/// Under systemd (`INVOCATION_ID` set, in a `*.service` cgroup holding no other
/// process) it is the unit's cgroup. Otherwise the agent creates
/// `<its cgroup>/portcullis-agent-<pid>` and moves itself in; on a clean stop it
/// moves back and removes it, and empty leftovers of killed agents are removed at
/// the next start.
pub struct OwnCgroup {
    pub path: PathBuf,
    pub id: u64,
    /// Created by this agent (removed on a clean stop).
    created: bool,
}

fn proc_self_cgroup_v2() -> anyhow::Result<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("/proc/self/cgroup has no cgroup v2 entry (0::)"))
}

fn cgroup_pids(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

impl OwnCgroup {
    pub fn enter(root: &Path) -> anyhow::Result<Self> {
        let rel = proc_self_cgroup_v2()?;
        let current = root.join(rel.trim_start_matches('/'));
        let me = std::process::id();
        let is_unit = current
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".service"));
        if std::env::var_os("INVOCATION_ID").is_some() && is_unit {
            let others: Vec<u32> = cgroup_pids(&current)
                .into_iter()
                .filter(|p| *p != me)
                .collect();
            if others.is_empty() {
                let id = ebpf::cgroup_id(&current)?;
                return Ok(Self {
                    path: current,
                    id,
                    created: false,
                });
            }
            tracing::warn!(
                cgroup = %current.display(),
                other_pids = ?others,
                "the unit's cgroup holds other processes; the agent moves into a cgroup of its own"
            );
        }
        // Leftovers of agents that were killed: rmdir removes only empty cgroups.
        if let Ok(rd) = std::fs::read_dir(&current) {
            for e in rd.flatten() {
                let name = e.file_name();
                if name.to_string_lossy().starts_with(OWN_CGROUP_PREFIX) {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        let path = current.join(format!("{OWN_CGROUP_PREFIX}{me}"));
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "creating the agent's own cgroup {}: {e}",
                    path.display()
                ));
            }
        }
        std::fs::write(path.join("cgroup.procs"), me.to_string())
            .with_context(|| format!("moving the agent into its own cgroup {}", path.display()))?;
        let others: Vec<u32> = cgroup_pids(&path)
            .into_iter()
            .filter(|p| *p != me)
            .collect();
        if !others.is_empty() {
            anyhow::bail!(
                "the agent's own cgroup {} also holds pids {others:?}: their sockets would be exempt",
                path.display()
            );
        }
        let id = ebpf::cgroup_id(&path)?;
        Ok(Self {
            path,
            id,
            created: true,
        })
    }

    /// On a clean stop: back to the parent cgroup, and the agent's cgroup removed.
    pub fn leave(&self) {
        if !self.created {
            return;
        }
        if let Some(parent) = self.path.parent() {
            let _ = std::fs::write(parent.join("cgroup.procs"), std::process::id().to_string());
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

pub fn resolve_cgroup(cfg: &AgentConfig) -> anyhow::Result<(PathBuf, PathBuf)> {
    let root = ebpf::cgroup2_root()?;
    let path = match &cfg.cgroup {
        CgroupSetting::Keyword(_) => root.clone(),
        CgroupSetting::Path(p) => p.clone(),
    };
    Ok((root, path))
}

/// How often the agent looks for network interfaces that appeared since start.
const INTERFACE_SCAN: Duration = Duration::from_secs(2);

/// How the agent ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped by a signal: enforcement stays pinned.
    Stopped,
    /// Enforcement was removed on request (`portcullis detach`).
    Detached,
}

/// Exit status after a detach; the unit file lists it in RestartPreventExitStatus=
/// so systemd does not start the agent again (which would re-attach).
pub const EXIT_DETACHED: u8 = 10;

/// Checks a policy against what this agent can enforce: map capacity, and no target
/// may cover the agent's own listener (the backstop would then drop the agent's
/// own handshakes and every redirected client would hang).
pub fn check_policy_for_agent(policy: &CompiledPolicy, cfg: &AgentConfig) -> Result<(), String> {
    let n = crate::policy::kernel_entries(policy);
    if n > ebpf::MAX_TARGET_ENTRIES {
        return Err(format!(
            "the policy needs {n} kernel target entries (addresses x ports); at most {} fit",
            ebpf::MAX_TARGET_ENTRIES
        ));
    }
    let listeners = [
        (
            cfg.listen_v4.to_ipv6_mapped().octets(),
            cfg.listen_v4.to_string(),
        ),
        (cfg.listen_v6.octets(), format!("[{}]", cfg.listen_v6)),
    ];
    for t in &policy.targets {
        let port_hit = t.ports.is_empty() || t.ports.contains(&cfg.listen_port);
        for (addr, shown) in &listeners {
            if port_hit && t.prefixes.iter().any(|p| p.contains(addr)) {
                return Err(format!(
                    "target `{}` covers the agent's own listener {shown}:{}: list the target's ports, \
                     or move the listener (listen_port in the agent config)",
                    t.name, cfg.listen_port
                ));
            }
        }
    }
    Ok(())
}

fn warn_if_unprivileged_port(port: u16) {
    let start: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024);
    if u32::from(port) >= start {
        tracing::warn!(
            port,
            "listen_port is an unprivileged port: while the agent is down any local user could bind it \
             and receive redirected connections; use a port below {start}"
        );
    }
}

pub async fn run(mut cfg: AgentConfig) -> anyhow::Result<Outcome> {
    let policy = CompiledPolicy::load(std::slice::from_ref(&cfg.policy_dir))
        .map_err(|e| anyhow::anyhow!("refusing to start: the policy set is invalid:\n{e}"))?;
    check_policy_for_agent(&policy, &cfg).map_err(|e| anyhow::anyhow!("refusing to start: {e}"))?;
    warn_if_unprivileged_port(cfg.listen_port);
    let pg = crate::protocol::postgres::Global::new(&cfg)
        .map_err(|e| anyhow::anyhow!("refusing to start: {e}"))?;
    let audit = AuditLog::open_config(&cfg)?;
    let exports = crate::audit::export::Exports::start(&cfg.exports, &cfg.state_dir, &audit)?;
    let (root, cgroup) = resolve_cgroup(&cfg)?;
    let listeners = proxy::bind(cfg.listen_v4, cfg.listen_v6, cfg.listen_port)
        .with_context(|| format!("binding the agent listener on port {}", cfg.listen_port))?;
    let admin = crate::admin::bind(&cfg.admin_socket())
        .with_context(|| format!("binding the admin socket {}", cfg.admin_socket().display()))?;

    // Before any upstream socket exists: the agent's sockets are recognised by the
    // cgroup they were created in.
    let own = OwnCgroup::enter(&root)?;
    let auto_mark = matches!(cfg.upstream_mark_setting, MarkSetting::Keyword(_));
    let mut enforcement = Enforcement::open(
        &cfg.bpffs_dir,
        &cgroup,
        kernel_config(&cfg, own.id),
        auto_mark,
    )?;
    cfg.upstream_mark = enforcement.mark;
    enforcement.sync_targets(&policy)?;
    enforcement.attach()?;
    let events = enforcement.take_events();
    let _ = audit.record(
        "agent_start",
        json!({
            "pid": std::process::id(),
            "cgroup": cgroup,
            "bpffs_dir": cfg.bpffs_dir,
            "adopted_from_pins": enforcement.adopted,
            "agent_cgroup": own.path,
            "agent_cgroup_id": own.id,
            "raw_sockets": format!("{:?}", cfg.raw_sockets).to_lowercase(),
            "packet_sockets_refused": enforcement.packet_guard.is_ok()
                && cfg.raw_sockets == RawSockets::Refuse,
            "packet_guard_error": enforcement.packet_guard.as_ref().err(),
            "packet_frames_dropped_on": enforcement.tc_guarded,
            "sockopt_guard_error": enforcement.sockopt_guard.as_ref().err(),
            "object_sha256": enforcement.object_hash,
            "policy_hash": policy.hash,
            "policy_files": policy.files,
        }),
    );
    tracing::info!(
        cgroup = %cgroup.display(),
        adopted = enforcement.adopted,
        policy_hash = %policy.hash,
        port = cfg.listen_port,
        "enforcement active"
    );
    let shared = Arc::new(Shared::new(
        cfg,
        enforcement,
        policy,
        audit,
        exports,
        CgroupResolver::new(root),
        pg,
    ));

    for l in listeners {
        tokio::spawn(proxy::serve(shared.clone(), l));
    }
    tokio::spawn(crate::admin::serve(shared.clone(), admin));
    if let Some(rb) = events {
        let s = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = consume_events(s, rb).await {
                tracing::error!(error = %e, "attribution event reader stopped");
            }
        });
    }
    if shared.cfg.recording_enabled && shared.cfg.recording_retain_secs > 0 {
        tokio::spawn(crate::recording::retention::run(shared.clone()));
    }
    if shared.cfg.policy_watch_secs > 0 {
        let s = shared.clone();
        tokio::spawn(async move { watch_policy_dir(s).await });
    }
    // Interfaces that appear later (a container's veth) get the packet-socket
    // guard within INTERFACE_SCAN of appearing.
    {
        let s = shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(INTERFACE_SCAN).await;
                let (added, failed) = match s.enforcement.lock() {
                    Ok(mut e) => e.guard_new_interfaces(),
                    Err(_) => continue,
                };
                for ifname in added {
                    tracing::info!(interface = %ifname, "packet socket guard attached to a new interface");
                    if let Err(e) = s
                        .audit
                        .record("interface_guarded", json!({ "interface": ifname }))
                    {
                        tracing::error!(error = %e, "interface_guarded record lost");
                    }
                }
                for (ifname, error) in failed {
                    tracing::warn!(
                        interface = %ifname,
                        error = %error,
                        "packet socket frames to protected targets are not dropped on this new interface"
                    );
                    if let Err(e) = s.audit.record(
                        "interface_unguarded",
                        json!({ "interface": ifname, "error": error }),
                    ) {
                        tracing::error!(error = %e, "interface_unguarded record lost");
                    }
                }
            }
        });
    }
    if let Some(every) = systemd::watchdog_interval() {
        tokio::spawn(async move {
            loop {
                systemd::notify("WATCHDOG=1");
                tokio::time::sleep(every).await;
            }
        });
    }
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    systemd::notify("READY=1\nSTATUS=enforcing");
    println!("portcullis: ready (pid {})", std::process::id());

    let reason = loop {
        tokio::select! {
            _ = hup.recv() => {
                if let Err(e) = reload(&shared, "SIGHUP") {
                    tracing::error!(error = %e, "policy reload refused; the last good policy stays in force");
                }
            }
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = shared.shutdown.notified() => break "detach",
        }
    };
    systemd::notify("STOPPING=1");
    let _ = shared.audit.record(
        "agent_stop",
        json!({
            "reason": reason,
            "enforcement_left_pinned": reason != "detach",
            "policy_hash": shared.policy().hash,
        }),
    );
    shared.audit.flush(Duration::from_secs(5));
    own.leave();
    tracing::info!(reason, "agent stopped");
    Ok(if reason == "detach" {
        Outcome::Detached
    } else {
        Outcome::Stopped
    })
}

/// Names, sizes and modification times of the policy directory's files.
fn dir_fingerprint(
    dir: &std::path::Path,
) -> Vec<(std::ffi::OsString, u64, Option<std::time::SystemTime>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let m = e.metadata().ok()?;
                    Some((e.file_name(), m.len(), m.modified().ok()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Reloads when the policy files change, once they have been stable for one
/// interval (an editor's half-written save is not loaded).
async fn watch_policy_dir(shared: Arc<Shared>) {
    let every = Duration::from_secs(shared.cfg.policy_watch_secs);
    let dir = shared.cfg.policy_dir.clone();
    let mut loaded = dir_fingerprint(&dir);
    let mut pending: Option<Vec<_>> = None;
    loop {
        tokio::time::sleep(every).await;
        let now = dir_fingerprint(&dir);
        if now == loaded {
            pending = None;
            continue;
        }
        if pending.as_ref() == Some(&now) {
            if let Err(e) = reload(&shared, "file-change") {
                tracing::error!(error = %e, "policy change refused; the last good policy stays in force");
            }
            loaded = now;
            pending = None;
        } else {
            pending = Some(now);
        }
    }
}

/// Reloads the policy directory: all or nothing. Returns the new policy hash.
pub fn reload(shared: &Shared, trigger: &str) -> Result<String, String> {
    match CompiledPolicy::load(std::slice::from_ref(&shared.cfg.policy_dir))
        .map_err(|e| e.to_string())
        .and_then(|p| check_policy_for_agent(&p, &shared.cfg).map(|()| p))
    {
        Ok(p) => {
            let res = shared
                .enforcement
                .lock()
                .map_err(|_| "enforcement state poisoned".to_string())
                .and_then(|mut e| e.sync_targets(&p).map_err(|e| e.to_string()));
            if let Err(e) = res {
                shared.stats.policy_rejects.fetch_add(1, Ordering::Relaxed);
                let _ = shared
                    .audit
                    .record("policy_reject", json!({"trigger": trigger, "error": e}));
                return Err(e);
            }
            let hash = p.hash.clone();
            let _ = shared.audit.record(
                "policy_load",
                json!({"trigger": trigger, "policy_hash": hash, "files": p.files}),
            );
            shared.set_policy(p);
            shared.stats.policy_reloads.fetch_add(1, Ordering::Relaxed);
            tracing::info!(policy_hash = %hash, trigger, "policy reloaded");
            Ok(hash)
        }
        Err(msg) => {
            shared.stats.policy_rejects.fetch_add(1, Ordering::Relaxed);
            let _ = shared.audit.record(
                "policy_reject",
                json!({"trigger": trigger, "error": msg, "kept_policy_hash": shared.policy().hash}),
            );
            Err(msg)
        }
    }
}

/// Explicit removal of enforcement: unpins everything, audits it, stops the agent.
pub fn detach(shared: &Shared) -> Result<Vec<String>, String> {
    let dir = shared.cfg.bpffs_dir.clone();
    let removed = ebpf::remove_pins(&dir).map_err(|e| e.to_string())?;
    let removed: Vec<String> = removed.iter().map(|p| p.display().to_string()).collect();
    let _ = shared.audit.record(
        "enforcement_detached",
        json!({
            "by": "admin socket",
            "bpffs_dir": dir,
            "removed_pins": removed,
            "policy_hash": shared.policy().hash,
        }),
    );
    tracing::warn!(dir = %dir.display(), "enforcement detached by admin request; stopping");
    shared.shutdown.notify_one();
    Ok(removed)
}

async fn consume_events(
    shared: Arc<Shared>,
    rb: aya::maps::RingBuf<aya::maps::MapData>,
) -> anyhow::Result<()> {
    // The ring buffer owns its fd for as long as the AsyncFd holds it, which is the
    // I/O-safety condition `AsyncFd::new` cannot check by itself.
    #[allow(deprecated)]
    let mut fd = AsyncFd::new(rb)?;
    // The kernel wakes us only when the ring fills or for bypass events; a short
    // timer drains the rest, so a connect never pays for a wake-up.
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let timer = tokio::select! {
            r = fd.readable_mut() => {
                let mut guard = r?;
                drain_events(&shared, guard.get_inner_mut());
                guard.clear_ready();
                false
            }
            _ = tick.tick() => true,
        };
        if timer {
            drain_events(&shared, fd.get_mut());
        }
    }
}

fn drain_events(shared: &Shared, rb: &mut aya::maps::RingBuf<aya::maps::MapData>) {
    while let Some(item) = rb.next() {
        let ev = ebpf::parse_event(&item);
        drop(item);
        if let Some(ev) = ev {
            handle_event(shared, &ev);
        }
    }
}

fn handle_event(shared: &Shared, ev: &agent_common::Event) {
    let dst = proxy::from_v6(ev.conn.orig_addr, ev.conn.orig_port);
    let cgroup = shared
        .cgroups
        .path_of(ev.conn.cgroup_id)
        .unwrap_or_else(|| format!("id:{}", ev.conn.cgroup_id));
    match ev.kind {
        event_kind::BYPASS => {
            shared.stats.bypass_events.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(destination = %dst, uid = ev.conn.uid, cgroup = %cgroup, ip_protocol = ev.proto, "bypass attempt dropped");
            let _ = shared.audit.record(
                "bypass_drop",
                json!({
                    "policy_hash": shared.policy().hash,
                    "destination": dst.to_string(),
                    "ip_protocol": ev.proto,
                    "uid": ev.conn.uid,
                    "cgroup_id": ev.conn.cgroup_id,
                    "cgroup": cgroup,
                    "socket_cookie": ev.conn.sock_cookie,
                    "note": "rate-limited: kernel_counters.bypass_drops counts every dropped packet",
                }),
            );
        }
        event_kind::CONNECT => {
            let exe = shared
                .enforcement
                .lock()
                .ok()
                .and_then(|e| e.exec_of(ev.conn.tgid))
                .filter(|x| ev.conn.exec_ktime_ns != 0 && x.ktime_ns == ev.conn.exec_ktime_ns)
                .and_then(|x| identity::exec_path(&x, None).0)
                .unwrap_or_else(|| format!("comm:{}", identity::cstr(&ev.conn.comm)));
            let key = FlowKey {
                exe,
                uid: ev.conn.uid,
                cgroup,
                destination: dst.to_string(),
                protocol: match ev.proto {
                    agent_common::IPPROTO_TCP => "tcp",
                    agent_common::IPPROTO_UDP => "udp",
                    _ => "other",
                },
            };
            if let Ok(mut f) = shared.flows.lock() {
                f.add(key, ev.verdict, crate::audit::now_rfc3339());
            }
            if ev.verdict == verdict::DENY {
                let _ = shared.audit.record(
                    "kernel_deny",
                    json!({
                        "policy_hash": shared.policy().hash,
                        "destination": dst.to_string(),
                        "pid": ev.conn.tgid,
                        "uid": ev.conn.uid,
                        "comm": identity::cstr(&ev.conn.comm),
                        "ip_protocol": ev.proto,
                        "reason": "protected destination over a protocol the proxy does not carry (EPERM)",
                    }),
                );
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn policy(addresses: &str, ports: &str) -> CompiledPolicy {
        let text = format!(
            "apiVersion: portcullis.dev/v1\ntargets:\n  - name: t\n    addresses: [{addresses}]\n    ports: [{ports}]\n    protocol: tcp\n"
        );
        CompiledPolicy::from_sources(&[(PathBuf::from("p.yaml"), text)]).expect("valid policy")
    }

    #[test]
    fn a_target_covering_the_listener_is_refused() {
        let cfg = AgentConfig::default();
        let err = check_policy_for_agent(&policy("\"127.0.0.0/8\"", ""), &cfg)
            .expect_err("covers listener");
        assert!(err.contains("covers the agent's own listener"), "{err}");
        let err = check_policy_for_agent(&policy("\"::1\"", &cfg.listen_port.to_string()), &cfg)
            .expect_err("covers v6 listener port");
        assert!(err.contains("[::1]"), "{err}");
        check_policy_for_agent(&policy("\"127.0.0.0/8\"", "5432"), &cfg)
            .expect("other port is fine");
    }

    #[test]
    fn capacity_is_checked() {
        let cfg = AgentConfig::default();
        let ports: Vec<String> = (2000..2000 + 5000).map(|p: u32| p.to_string()).collect();
        let p = policy(
            "\"10.0.0.1\", \"10.0.0.2\", \"10.0.0.3\", \"10.0.0.4\"",
            &ports.join(", "),
        );
        let err = check_policy_for_agent(&p, &cfg).expect_err("too many entries");
        assert!(err.contains("20000"), "{err}");
    }
}
