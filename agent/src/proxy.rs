//! The L4 transparent proxy: accepts redirected connections, finds who made them
//! and where they were going, asks the policy, dials the original destination from
//! an exempt (marked) socket, and copies bytes both ways with half-close and an
//! idle timeout. One audit record per connection, and one session recording per
//! decided connection (metadata, half-closes, periodic byte counts, the end).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agent_common::TupleKey;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::identity::{self, Attribution};
use crate::policy::{self, Decision, Outcome};
use crate::protocol::postgres::refusal::{self, Refusal};
use crate::recording::{Recorder, RecordingConfig};
use crate::state::Shared;

/// Opaque per-connection id, unique on this host across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub u128);

impl SessionId {
    pub fn new() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed) as u128;
        let pid = std::process::id() as u128;
        Self((now << 40) ^ (pid << 20) ^ n)
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl Default for SessionId {
    fn default() -> Self {
        Self::new()
    }
}

/// The audit record of one connection.
#[derive(Debug, Serialize)]
struct ConnectionRecord<'a> {
    session_id: String,
    client: String,
    original_destination: Option<String>,
    target: Option<&'a str>,
    attribution: Option<&'a Attribution>,
    decision: &'a str,
    policy_decision: Option<&'a str>,
    rule: &'a str,
    mode: Option<policy::Mode>,
    workloads: &'a [String],
    policy_hash: &'a str,
    bytes_client_to_upstream: u64,
    bytes_upstream_to_client: u64,
    duration_ms: u64,
    end: &'a str,
    error: Option<String>,
    /// The session recording's summary (file, sha256, size, truncated), or the
    /// error that prevented it.
    #[serde(skip_serializing_if = "Option::is_none")]
    recording: Option<Value>,
    /// Protocol sessions: what the protocol handler saw (upstream user, database,
    /// TLS on each side, statements and refusals).
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<serde_json::Value>,
}

/// How often an L4 session's recording gets a `bytes` event while bytes move.
const BYTES_EVENT_INTERVAL: Duration = Duration::from_secs(10);

pub fn to_v6(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

pub fn from_v6(addr: [u8; 16], port: u16) -> SocketAddr {
    let v6 = Ipv6Addr::from(addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => SocketAddr::new(IpAddr::V4(v4), port),
        None => SocketAddr::new(IpAddr::V6(v6), port),
    }
}

/// Inode number of the agent's network namespace: the namespace of every socket
/// it accepts, and so the only one whose connection records it may match.
fn own_netns_ino() -> u64 {
    use std::os::unix::fs::MetadataExt;
    static INO: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *INO.get_or_init(|| {
        std::fs::metadata("/proc/self/ns/net")
            .map(|m| m.ino())
            .unwrap_or(0)
    })
}

pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let shared = shared.clone();
                tokio::spawn(async move { handle(shared, stream, peer).await });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(shared: Arc<Shared>, client: TcpStream, peer: SocketAddr) {
    let started = Instant::now();
    let session = SessionId::new();
    // The accepted socket lives in the agent's network namespace; so did the
    // client's socket, if this connection is what the kernel record says.
    let key = TupleKey::new(to_v6(peer.ip()), peer.port(), own_netns_ino());
    let conn = shared
        .enforcement
        .lock()
        .ok()
        .and_then(|mut e| e.take_conn(&key));
    let policy = shared.policy();
    let mut rec = ConnectionRecord {
        session_id: session.to_string(),
        client: peer.to_string(),
        original_destination: None,
        target: None,
        attribution: None,
        decision: "deny",
        policy_decision: None,
        rule: policy::DEFAULT_DENY,
        mode: None,
        workloads: &[],
        policy_hash: &policy.hash,
        bytes_client_to_upstream: 0,
        bytes_upstream_to_client: 0,
        duration_ms: 0,
        end: "refused",
        error: None,
        session: None,
        recording: None,
    };
    shared.stats.sessions_total.fetch_add(1, Ordering::Relaxed);

    let Some(conn) = conn else {
        // Not redirected by our programs (or the record was lost): we cannot say who
        // this is or where it was going, so it goes nowhere.
        rec.rule = "unattributed";
        rec.error = Some("no kernel record for this connection".into());
        shared.stats.denied.fetch_add(1, Ordering::Relaxed);
        finish(&shared, &rec, started);
        drop(client);
        return;
    };
    let exec = shared
        .enforcement
        .lock()
        .ok()
        .and_then(|e| e.exec_of(conn.tgid));
    // /proc reads and user lookups block: keep them off the async workers.
    let s2 = shared.clone();
    let policy_needs_hash = policy.needs_exe_sha256;
    let attribution = match tokio::task::spawn_blocking(move || {
        let hasher = policy_needs_hash.then_some(&s2.exe_hasher);
        identity::resolve_with(&conn, exec, &s2.cgroups, hasher)
    })
    .await
    {
        Ok(a) => a,
        Err(e) => {
            rec.rule = "unattributed";
            rec.error = Some(format!("attribution failed: {e}"));
            shared.stats.denied.fetch_add(1, Ordering::Relaxed);
            finish(&shared, &rec, started);
            return;
        }
    };
    let dst = from_v6(conn.orig_addr, conn.orig_port);
    rec.original_destination = Some(dst.to_string());

    let target = policy.target_for(&conn.orig_addr, conn.orig_port);
    let protocol = target.map(|t| t.protocol.name()).unwrap_or("tcp");
    // Targets whose protocol the agent speaks are served by its handler.
    let pg_target = target
        .filter(|t| t.protocol == policy::spec::Protocol::Postgres)
        .cloned();
    let decision: Decision;
    match target {
        None => {
            rec.rule = "no-target";
            rec.error =
                Some("destination is no longer a protected target of the policy in force".into());
            rec.attribution = Some(&attribution);
            shared.stats.denied.fetch_add(1, Ordering::Relaxed);
            finish(&shared, &rec, started);
            return;
        }
        Some(t) => {
            rec.target = Some(&t.name);
            let subject = attribution.subject();
            let now_unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            decision = policy::evaluate(
                &policy,
                &policy::Request {
                    subject: &subject,
                    target: t.id,
                    action: policy::Action::Connect,
                    now_unix,
                },
            );
        }
    }
    rec.attribution = Some(&attribution);
    rec.rule = &decision.rule;
    rec.mode = Some(decision.mode);
    rec.workloads = &decision.workloads;
    rec.policy_decision = Some(policy::effect_name(decision.decided));
    let target_name = rec.target.unwrap_or_default().to_string();
    if !shared.audit.healthy() {
        rec.decision = "deny";
        rec.rule = AUDIT_UNAVAILABLE;
        rec.error = Some("the audit log is not accepting records".into());
        shared.stats.denied.fetch_add(1, Ordering::Relaxed);
        // Refused: the client is answered while the recording is written.
        let why = no_evidence(&target_name);
        tokio::join!(
            tell_refused(&shared, client, pg_target.as_ref(), why, session),
            finish_recorded(&shared, &mut rec, started, None, protocol)
        );
        return;
    }
    if decision.outcome == Outcome::Hold {
        // Approvals are not available yet: a held connection is refused, saying why.
        tracing::info!(session = %session, pid = attribution.pid, destination = %dst, rule = %decision.rule, "connection requires approval; refused");
        rec.decision = "deny";
        rec.error = Some(format!(
            "rule {} requires approval, which this agent cannot grant yet",
            decision.rule
        ));
        shared.stats.denied.fetch_add(1, Ordering::Relaxed);
        let why = policy_refusal(&decision, &attribution, &target_name);
        tokio::join!(
            tell_refused(&shared, client, pg_target.as_ref(), why, session),
            finish_recorded(&shared, &mut rec, started, None, protocol)
        );
        return;
    }
    if decision.outcome == Outcome::Deny {
        tracing::info!(session = %session, pid = attribution.pid, comm = %attribution.comm, destination = %dst, rule = %decision.rule, "connection denied");
        shared.stats.denied.fetch_add(1, Ordering::Relaxed);
        let why = policy_refusal(&decision, &attribution, &target_name);
        tokio::join!(
            tell_refused(&shared, client, pg_target.as_ref(), why, session),
            finish_recorded(&shared, &mut rec, started, None, protocol)
        );
        return;
    }
    let Ok(permit) = shared.conn_limit.clone().try_acquire_owned() else {
        rec.decision = "deny";
        rec.rule = MAX_CONNECTIONS;
        rec.error = Some(format!(
            "more than {} connections at once",
            shared.cfg.max_connections
        ));
        shared.stats.denied.fetch_add(1, Ordering::Relaxed);
        let why = Refusal {
            sqlstate: "53300",
            message: format!(
                "Portcullis: connection refused by rule `{MAX_CONNECTIONS}` (target {target_name}): the agent serves at most {} connections at once",
                shared.cfg.max_connections
            ),
        };
        tokio::join!(
            tell_refused(&shared, client, pg_target.as_ref(), why, session),
            finish_recorded(&shared, &mut rec, started, None, protocol)
        );
        return;
    };
    rec.decision = decision.label();
    // The recording exists before any byte flows. Without it there is no evidence
    // of what the session did: refuse, like an unwritable audit log.
    let rcfg = RecordingConfig::from_agent(&shared.cfg);
    let (meta, id) = (recording_meta(&rec, protocol), rec.session_id.clone());
    let mut recorder = match tokio::task::spawn_blocking(move || {
        Recorder::start_if_enabled(&rcfg, &id, meta)
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r.map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(session = %session, error = %e, "cannot create the session recording; refusing the connection");
            rec.decision = "deny";
            rec.rule = RECORDING_UNAVAILABLE;
            rec.error = Some(format!("session recording: {e}"));
            rec.recording = Some(json!({ "error": e }));
            shared.stats.denied.fetch_add(1, Ordering::Relaxed);
            finish(&shared, &rec, started);
            // The refusal is answered without holding a connection slot.
            drop(permit);
            let why = Refusal {
                sqlstate: "53000",
                message: format!(
                    "Portcullis: connection refused by rule `{RECORDING_UNAVAILABLE}` (target {target_name}): the session recording cannot be created, and no access is given without it; the operator must fix it (see the agent's log)"
                ),
            };
            tell_refused(&shared, client, pg_target.as_ref(), why, session).await;
            return;
        }
    };
    shared.stats.allowed.fetch_add(1, Ordering::Relaxed);
    // Evidence of access exists before any byte flows: if the agent dies mid-session,
    // the start record is still there.
    let start = serde_json::json!({
        "session_id": rec.session_id,
        "client": rec.client,
        "original_destination": rec.original_destination,
        "target": rec.target,
        "attribution": rec.attribution,
        "decision": rec.decision,
        "rule": rec.rule,
        "mode": rec.mode,
        "policy_hash": rec.policy_hash,
        "recording": recorder.as_ref().map(|r| r.path().display().to_string()),
    });
    if let Err(e) = shared.audit.record("connection_start", start) {
        tracing::error!(error = %e, "audit record refused; refusing the connection");
        rec.decision = "deny";
        rec.rule = AUDIT_UNAVAILABLE;
        rec.error = Some(e.to_string());
        drop(permit);
        let why = no_evidence(&target_name);
        tokio::join!(
            tell_refused(&shared, client, pg_target.as_ref(), why, session),
            finish_recorded(&shared, &mut rec, started, recorder, protocol)
        );
        return;
    }

    let _permit = permit;
    if let Some(t) = pg_target {
        shared.stats.active.fetch_add(1, Ordering::Relaxed);
        let ctx = crate::protocol::postgres::session::Ctx {
            shared: shared.clone(),
            session_id: rec.session_id.clone(),
            target: t,
            dst,
            attribution: attribution.clone(),
            subject: attribution.subject(),
            workloads: decision.workloads.clone(),
            recorder: recorder.take(),
        };
        let mut s = crate::protocol::postgres::session::serve(ctx, client).await;
        shared.stats.active.fetch_sub(1, Ordering::Relaxed);
        rec.bytes_client_to_upstream = s.bytes_client_to_upstream;
        rec.bytes_upstream_to_client = s.bytes_upstream_to_client;
        rec.end = s.end;
        rec.error = s.error.clone();
        rec.session = Some(serde_json::json!({
            "protocol": "postgres",
            "upstream_user": s.upstream_user,
            "database": s.database,
            "client_tls": s.client_tls,
            "upstream_tls": s.upstream_tls,
            "statements": s.statements,
            "refused": s.denied,
        }));
        finish_recorded(&shared, &mut rec, started, s.recorder.take(), protocol).await;
        return;
    }

    let upstream = match dial(
        dst,
        shared.cfg.upstream_mark,
        Duration::from_millis(shared.cfg.connect_timeout_ms),
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            rec.end = "upstream_unreachable";
            rec.error = Some(e);
            drop(client);
            finish_recorded(&shared, &mut rec, started, recorder, protocol).await;
            return;
        }
    };
    shared.stats.active.fetch_add(1, Ordering::Relaxed);
    let idle = match shared.cfg.idle_timeout_secs {
        0 => None,
        s => Some(Duration::from_secs(s)),
    };
    let (up, down, end, err) = {
        let mut observe = |kind: &'static str, body: Value| {
            if let Some(r) = recorder.as_mut() {
                r.event(kind, body);
            }
        };
        relay_observed(
            client,
            upstream,
            idle,
            Some(BYTES_EVENT_INTERVAL),
            &mut observe,
        )
        .await
    };
    shared.stats.active.fetch_sub(1, Ordering::Relaxed);
    rec.bytes_client_to_upstream = up;
    rec.bytes_upstream_to_client = down;
    rec.end = end;
    rec.error = err;
    finish_recorded(&shared, &mut rec, started, recorder, protocol).await;
}

const AUDIT_UNAVAILABLE: &str = "audit-unavailable";
const MAX_CONNECTIONS: &str = "max-connections";
const RECORDING_UNAVAILABLE: &str = "recording-unavailable";

/// What a client refused by the connection policy is told: the rule, and why
/// in the terms of the request (who asked, for which target), nothing of the
/// rest of the policy.
fn policy_refusal(d: &Decision, a: &Attribution, target: &str) -> Refusal {
    let mut who = format!("uid {}", a.uid);
    if let Some(u) = &a.unit {
        who.push_str(&format!(" (unit {u})"));
    }
    let why = match (d.outcome, d.rule.as_str()) {
        (Outcome::Hold, _) => {
            "connections need approval, which this agent cannot grant yet".to_string()
        }
        (_, policy::DEFAULT_DENY) => format!("no rule allows {who} to connect"),
        _ => format!("the rule denies connections from {who}"),
    };
    Refusal {
        sqlstate: "28000",
        message: format!(
            "Portcullis: connection refused by rule `{}` (target {target}): {why}",
            d.rule
        ),
    }
}

/// What a client is told while the audit log cannot take records.
fn no_evidence(target: &str) -> Refusal {
    Refusal {
        sqlstate: "53000",
        message: format!(
            "Portcullis: connection refused by rule `{AUDIT_UNAVAILABLE}` (target {target}): the audit log is not accepting records, and no access is given without evidence; access resumes when it recovers"
        ),
    }
}

/// Tells a refused client why, then closes the connection. A PostgreSQL target's
/// client gets the FATAL ErrorResponse a server would send (after its startup;
/// see `protocol::postgres::refusal`); any other protocol's, or one beyond the
/// bound on refusals being answered, is closed at once. Never connects upstream.
async fn tell_refused(
    shared: &Shared,
    client: TcpStream,
    pg: Option<&policy::Target>,
    why: Refusal,
    session: SessionId,
) {
    let Some(t) = pg else {
        drop(client);
        return;
    };
    let Ok(_slot) = shared.pg.refusals.try_acquire() else {
        tracing::debug!(session = %session, "too many refusals being answered; closed at once");
        drop(client);
        return;
    };
    let tls = crate::protocol::postgres::client_tls(&shared.pg, t);
    match refusal::answer(client, tls, &why).await {
        Ok(how) => tracing::debug!(session = %session, answered = ?how, "refusal answered"),
        Err(e) => tracing::debug!(session = %session, error = %e, "refusal not answered"),
    }
}

/// The header of a session recording: who, where to, and what was decided.
fn recording_meta(rec: &ConnectionRecord<'_>, protocol: &str) -> Value {
    json!({
        "session_id": rec.session_id,
        "client": rec.client,
        "original_destination": rec.original_destination,
        "target": rec.target,
        "protocol": protocol,
        "attribution": rec.attribution,
        "workloads": rec.workloads,
        "decision": rec.decision,
        "policy_decision": rec.policy_decision,
        "rule": rec.rule,
        "mode": rec.mode,
        "policy_hash": rec.policy_hash,
    })
}

/// Ends the session's recording (creating it first for a session refused before
/// any byte moved), puts its summary in the connection record, and writes that
/// record. The recording is fsynced off the async workers.
async fn finish_recorded(
    shared: &Shared,
    rec: &mut ConnectionRecord<'_>,
    started: Instant,
    recorder: Option<Recorder>,
    protocol: &str,
) {
    let end = json!({
        "end": rec.end,
        "error": rec.error,
        "decision": rec.decision,
        "rule": rec.rule,
        "bytes_client_to_upstream": rec.bytes_client_to_upstream,
        "bytes_upstream_to_client": rec.bytes_upstream_to_client,
        "duration_ms": started.elapsed().as_millis() as u64,
    });
    let rcfg = RecordingConfig::from_agent(&shared.cfg);
    let (meta, id) = (recording_meta(rec, protocol), rec.session_id.clone());
    let done = tokio::task::spawn_blocking(move || {
        let r = match recorder {
            Some(r) => Some(r),
            None => Recorder::start_if_enabled(&rcfg, &id, meta).map_err(|e| e.to_string())?,
        };
        Ok::<_, String>(r.map(|r| r.finish(end)))
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    rec.recording = match done {
        Ok(Some(summary)) => {
            if let Some(e) = &summary.error {
                tracing::error!(session = %rec.session_id, error = %e, "session recording incomplete");
            }
            serde_json::to_value(summary).ok()
        }
        Ok(None) => None,
        Err(e) => {
            tracing::error!(session = %rec.session_id, error = %e, "cannot write the session recording");
            Some(json!({ "error": e }))
        }
    };
    finish(shared, rec, started);
}

fn finish(shared: &Shared, rec: &ConnectionRecord<'_>, started: Instant) {
    let mut rec_json = serde_json::to_value(rec).unwrap_or_default();
    if let Some(o) = rec_json.as_object_mut() {
        o.insert(
            "duration_ms".into(),
            (started.elapsed().as_millis() as u64).into(),
        );
    }
    if let Err(e) = shared.audit.record("connection", rec_json) {
        tracing::error!(error = %e, "audit record lost");
    }
}

/// Connects to the original destination from a socket carrying the agent's mark,
/// which the kernel programs let through untouched.
pub async fn dial(dst: SocketAddr, mark: u32, timeout: Duration) -> Result<TcpStream, String> {
    let sock = match dst {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("socket: {e}"))?;
    nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::Mark, &mark)
        .map_err(|e| format!("setting SO_MARK {mark:#x} (needs CAP_NET_ADMIN): {e}"))?;
    let stream = tokio::time::timeout(timeout, sock.connect(dst))
        .await
        .map_err(|_| {
            format!(
                "connect to {dst} timed out after {} ms",
                timeout.as_millis()
            )
        })?
        .map_err(|e| format!("connect to {dst}: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Copies both ways until both sides have finished. EOF on one side is passed on as
/// a write shutdown to the other (half-close). Returns bytes client→upstream,
/// upstream→client, how it ended, and an error if one ended it.
#[cfg_attr(not(test), allow(dead_code))]
pub async fn relay(
    client: TcpStream,
    upstream: TcpStream,
    idle: Option<Duration>,
) -> (u64, u64, &'static str, Option<String>) {
    relay_observed(client, upstream, idle, None, &mut |_, _| {}).await
}

/// [`relay`], telling `observe` when either side finishes sending (`half_close`)
/// and, every `tick` while bytes move, the counts so far (`bytes`).
pub async fn relay_observed(
    client: TcpStream,
    upstream: TcpStream,
    idle: Option<Duration>,
    tick: Option<Duration>,
    observe: &mut (dyn FnMut(&'static str, Value) + Send),
) -> (u64, u64, &'static str, Option<String>) {
    let _ = client.set_nodelay(true);
    let last = AtomicU64::new(0);
    let t0 = Instant::now();
    let up_bytes = AtomicU64::new(0);
    let down_bytes = AtomicU64::new(0);
    let up = pump(&client, &upstream, &last, t0, &up_bytes);
    let down = pump(&upstream, &client, &last, t0, &down_bytes);
    // A clean EOF half-closes and the other direction carries on; an error (a
    // reset, say) in either direction ends the whole session at once.
    let both = async {
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        let mut ticker = tick.map(|d| tokio::time::interval_at(tokio::time::Instant::now() + d, d));
        let mut reported = (0, 0);
        while !(up_done && down_done) {
            let next_tick = async {
                match ticker.as_mut() {
                    Some(t) => {
                        t.tick().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                r = &mut up, if !up_done => {
                    if r.is_some() {
                        return r;
                    }
                    up_done = true;
                    observe("half_close", json!({"from": "client", "bytes": up_bytes.load(Ordering::Relaxed)}));
                }
                r = &mut down, if !down_done => {
                    if r.is_some() {
                        return r;
                    }
                    down_done = true;
                    observe("half_close", json!({"from": "upstream", "bytes": down_bytes.load(Ordering::Relaxed)}));
                }
                _ = next_tick => {
                    let now = (up_bytes.load(Ordering::Relaxed), down_bytes.load(Ordering::Relaxed));
                    if now != reported {
                        reported = now;
                        observe("bytes", json!({"client_to_upstream": now.0, "upstream_to_client": now.1}));
                    }
                }
            }
        }
        None
    };
    tokio::pin!(both);
    let watchdog = async {
        let Some(idle) = idle else {
            return std::future::pending::<()>().await;
        };
        loop {
            tokio::time::sleep(idle / 4 + Duration::from_millis(1)).await;
            let last_ms = last.load(Ordering::Relaxed);
            let idle_for = t0.elapsed().saturating_sub(Duration::from_millis(last_ms));
            if idle_for >= idle {
                return;
            }
        }
    };
    tokio::select! {
        err = &mut both => {
            let end = if err.is_some() { "error" } else { "closed" };
            (up_bytes.load(Ordering::Relaxed), down_bytes.load(Ordering::Relaxed), end, err)
        }
        _ = watchdog => (
            up_bytes.load(Ordering::Relaxed),
            down_bytes.load(Ordering::Relaxed),
            "idle_timeout",
            None,
        ),
    }
}

/// Bytes moved per splice(2) call.
const SPLICE_CHUNK: usize = 1 << 20;

/// Moves bytes from `src` to `dst` until EOF, then shuts down `dst`'s write side
/// (half-close). Bytes go socket → pipe → socket with splice(2): the kernel moves
/// pages, no copy through userspace. Falls back to a buffered copy if no pipe
/// can be made.
async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    last: &AtomicU64,
    t0: Instant,
    total: &AtomicU64,
) -> Option<String> {
    use nix::fcntl::{FcntlArg, SpliceFFlags, fcntl, splice};
    use std::io::ErrorKind::WouldBlock;
    use tokio::io::Interest;

    let Ok((pr, pw)) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC)
    else {
        return copy_pump(src, dst, last, t0, total).await;
    };
    let _ = fcntl(&pw, FcntlArg::F_SETPIPE_SZ(SPLICE_CHUNK as i32));
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    loop {
        let n = loop {
            if let Err(e) = src.readable().await {
                return Some(format!("read: {e}"));
            }
            match src.try_io(Interest::READABLE, || {
                splice(src, None, &pw, None, SPLICE_CHUNK, flags).map_err(std::io::Error::from)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == WouldBlock => continue,
                Err(e) => return Some(format!("read: {e}")),
            }
        };
        if n == 0 {
            let _ = nix::sys::socket::shutdown(dst.as_raw_fd(), nix::sys::socket::Shutdown::Write);
            return None;
        }
        let mut left = n;
        while left > 0 {
            if let Err(e) = dst.writable().await {
                return Some(format!("write: {e}"));
            }
            match dst.try_io(Interest::WRITABLE, || {
                splice(&pr, None, dst, None, left, flags).map_err(std::io::Error::from)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == WouldBlock => continue,
                Err(e) => return Some(format!("write: {e}")),
            }
        }
        total.fetch_add(n as u64, Ordering::Relaxed);
        last.store(t0.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Buffered copy through userspace (used when splice is unavailable).
async fn copy_pump(
    src: &TcpStream,
    dst: &TcpStream,
    last: &AtomicU64,
    t0: Instant,
    total: &AtomicU64,
) -> Option<String> {
    use std::io::ErrorKind::WouldBlock;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = loop {
            if let Err(e) = src.readable().await {
                return Some(format!("read: {e}"));
            }
            match src.try_read(&mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == WouldBlock => continue,
                Err(e) => return Some(format!("read: {e}")),
            }
        };
        if n == 0 {
            let _ = nix::sys::socket::shutdown(dst.as_raw_fd(), nix::sys::socket::Shutdown::Write);
            return None;
        }
        let mut off = 0;
        while off < n {
            if let Err(e) = dst.writable().await {
                return Some(format!("write: {e}"));
            }
            match dst.try_write(&buf[off..n]) {
                Ok(m) => off += m,
                Err(e) if e.kind() == WouldBlock => continue,
                Err(e) => return Some(format!("write: {e}")),
            }
        }
        total.fetch_add(n as u64, Ordering::Relaxed);
        last.store(t0.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Binds the agent's listeners (IPv4 and, when the host has it, IPv6).
pub fn bind(v4: Ipv4Addr, v6: Ipv6Addr, port: u16) -> std::io::Result<Vec<TcpListener>> {
    let mut out = Vec::new();
    let l4 = TcpSocket::new_v4()?;
    l4.set_reuseaddr(true)?;
    l4.bind(SocketAddr::new(IpAddr::V4(v4), port))?;
    out.push(l4.listen(4096)?);
    match TcpSocket::new_v6().and_then(|s| {
        s.set_reuseaddr(true)?;
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Ipv6V6Only, &true)
            .map_err(std::io::Error::from)?;
        s.bind(SocketAddr::new(IpAddr::V6(v6), port))?;
        s.listen(4096)
    }) {
        Ok(l) => out.push(l),
        // Someone else holds our port: they would receive IPv6 redirects. Refuse.
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => return Err(e),
        Err(e) => {
            tracing::warn!(error = %e, "IPv6 listener unavailable (no IPv6 loopback?); IPv6 protected connects will be refused")
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn v6_roundtrip() {
        let a: SocketAddr = "10.1.2.3:5432".parse().expect("addr");
        assert_eq!(from_v6(to_v6(a.ip()), 5432), a);
        let b: SocketAddr = "[2001:db8::1]:443".parse().expect("addr");
        assert_eq!(from_v6(to_v6(b.ip()), 443), b);
    }

    #[tokio::test]
    async fn relay_half_close_and_counts() {
        let server = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let saddr = server.local_addr().expect("addr");
        // Echo server that replies after the client half-closes.
        tokio::spawn(async move {
            let (mut s, _) = server.accept().await.expect("accept");
            let mut all = Vec::new();
            s.read_to_end(&mut all).await.expect("read");
            s.write_all(&all).await.expect("write");
            s.shutdown().await.expect("shutdown");
        });
        let front = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let faddr = front.local_addr().expect("addr");
        let proxy = tokio::spawn(async move {
            let (c, _) = front.accept().await.expect("accept");
            let u = TcpStream::connect(saddr).await.expect("connect");
            relay(c, u, Some(Duration::from_secs(30))).await
        });
        let mut c = TcpStream::connect(faddr).await.expect("connect");
        c.write_all(b"hello world").await.expect("write");
        c.shutdown().await.expect("half-close");
        let mut back = Vec::new();
        c.read_to_end(&mut back).await.expect("read");
        assert_eq!(back, b"hello world");
        let (up, down, end, err) = proxy.await.expect("join");
        assert_eq!((up, down, end, err), (11, 11, "closed", None));
    }

    #[tokio::test]
    async fn relay_ends_when_the_client_resets_even_if_upstream_is_silent() {
        let server = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let saddr = server.local_addr().expect("addr");
        // Upstream accepts and never sends anything.
        tokio::spawn(async move {
            let (_s, _) = server.accept().await.expect("accept");
            std::future::pending::<()>().await;
        });
        let front = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let faddr = front.local_addr().expect("addr");
        let proxy = tokio::spawn(async move {
            let (c, _) = front.accept().await.expect("accept");
            let u = TcpStream::connect(saddr).await.expect("connect");
            relay(c, u, None).await
        });
        let c = TcpStream::connect(faddr).await.expect("connect");
        nix::sys::socket::setsockopt(
            &c,
            nix::sys::socket::sockopt::Linger,
            &nix::libc::linger {
                l_onoff: 1,
                l_linger: 0,
            },
        )
        .expect("linger");
        drop(c); // RST
        // Bounded only to turn a hang into a failure, not to measure anything.
        let (_, _, end, err) = tokio::time::timeout(Duration::from_secs(30), proxy)
            .await
            .expect("relay must end after a reset")
            .expect("join");
        assert_eq!(end, "error", "{err:?}");
    }
}
