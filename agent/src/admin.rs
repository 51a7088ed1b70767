//! Local admin API: a unix socket (mode 0600, root only) answering one command per
//! connection with one JSON document. Commands: `status`, `flows`, `reload`, `detach`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::state::Shared;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "admin socket {path}: {source}\nhint: is the agent running (systemctl status portcullis)? are you root?"
    )]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("admin socket {path}: {message}")]
    Protocol { path: String, message: String },
}

pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A stale socket from a previous run: replace it (a live agent would own the pins).
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

pub async fn serve(shared: Arc<Shared>, listener: UnixListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = handle(shared, stream).await;
        });
    }
}

async fn handle(shared: Arc<Shared>, stream: UnixStream) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut r = BufReader::new(r).take(4096);
    tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no command"))??;
    let reply = match line.trim() {
        "status" => status(&shared),
        "flows" => json!({"flows": shared.flows.lock().map(|f| f.snapshot()).unwrap_or_default()}),
        "reload" => match crate::run::reload(&shared, "admin") {
            Ok(hash) => json!({"ok": true, "policy_hash": hash}),
            Err(e) => json!({"ok": false, "error": e}),
        },
        "detach" => match crate::run::detach(&shared) {
            Ok(removed) => json!({"ok": true, "removed": removed}),
            Err(e) => json!({"ok": false, "error": e}),
        },
        other => {
            json!({"ok": false, "error": format!("unknown command `{other}`; known: status, flows, reload, detach")})
        }
    };
    let mut body = serde_json::to_vec(&reply).unwrap_or_default();
    body.push(b'\n');
    w.write_all(&body).await?;
    w.shutdown().await
}

fn status(shared: &Shared) -> Value {
    let policy = shared.policy();
    let (programs, counters, cgroup, cgroup_id, adopted, dir, hash) =
        match shared.enforcement.lock() {
            Ok(e) => (
                e.programs(),
                e.counters(),
                e.cgroup.display().to_string(),
                e.cgroup_id,
                e.adopted,
                e.dir.display().to_string(),
                e.object_hash.clone(),
            ),
            Err(_) => Default::default(),
        };
    let s = &shared.stats;
    json!({
        "ok": true,
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "uptime_secs": shared.started.elapsed().as_secs(),
        "enforcement": {
            "cgroup": cgroup,
            "cgroup_id": cgroup_id,
            "bpffs_dir": dir,
            "object_sha256": hash,
            "adopted_from_pins": adopted,
            "programs": programs,
        },
        "listen": {
            "v4": format!("{}:{}", shared.cfg.listen_v4, shared.cfg.listen_port),
            "v6": format!("[{}]:{}", shared.cfg.listen_v6, shared.cfg.listen_port),
        },
        "kernel_counters": counters,
        "sessions": {
            "total": s.sessions_total.load(Ordering::Relaxed),
            "active": s.active.load(Ordering::Relaxed),
            "allowed": s.allowed.load(Ordering::Relaxed),
            "denied": s.denied.load(Ordering::Relaxed),
        },
        "bypass_events": s.bypass_events.load(Ordering::Relaxed),
        "policy": {
            "sha256": policy.hash,
            "files": policy.files,
            "targets": policy.targets.iter().map(|t| json!({
                "name": t.name,
                "addresses": t.prefixes.iter().map(|p| p.display()).collect::<Vec<_>>(),
                "ports": t.ports,
            })).collect::<Vec<_>>(),
            "rules": policy.rules.len(),
            "reloads": s.policy_reloads.load(Ordering::Relaxed),
            "rejected_reloads": s.policy_rejects.load(Ordering::Relaxed),
        },
        "audit": {
            "path": shared.audit.path,
            "healthy": shared.audit.healthy(),
            "problem": shared.audit.problem(),
            "written": shared.audit.written(),
            "queued": shared.audit.queued(),
            "dropped": shared.audit.dropped(),
            "head_seq": shared.audit.head_seq(),
        },
        "exports": shared.exports.status(),
    })
}

/// Sends one command and returns the agent's JSON reply (CLI side).
pub fn request(socket: &Path, command: &str) -> Result<Value, AdminError> {
    use std::io::{Read, Write};
    let path = socket.display().to_string();
    let mut s =
        std::os::unix::net::UnixStream::connect(socket).map_err(|source| AdminError::Connect {
            path: path.clone(),
            source,
        })?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    s.write_all(format!("{command}\n").as_bytes())
        .map_err(|source| AdminError::Connect {
            path: path.clone(),
            source,
        })?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)
        .map_err(|source| AdminError::Connect {
            path: path.clone(),
            source,
        })?;
    serde_json::from_str(&buf).map_err(|e| AdminError::Protocol {
        path,
        message: format!("unreadable reply: {e}"),
    })
}
