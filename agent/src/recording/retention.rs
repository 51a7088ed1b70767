//! Retention of recordings by age: files whose last write is older than
//! `recording_retain_secs` are removed, then emptied per-day directories. Every
//! removal is first written to the audit log (`recording_retention`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::json;

use crate::state::Shared;

/// Recordings under `dir` last written before `cutoff`.
pub fn expired(dir: &Path, cutoff: SystemTime) -> Vec<PathBuf> {
    super::read::files(dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < cutoff)
        })
        .collect()
}

/// Removes `files`, then any per-day directory of `dir` left empty. Returns the
/// files removed and the errors met.
pub fn remove(dir: &Path, files: &[PathBuf]) -> (Vec<String>, Vec<String>) {
    let (mut done, mut errs) = (Vec::new(), Vec::new());
    for f in files {
        match std::fs::remove_file(f) {
            Ok(()) => done.push(f.display().to_string()),
            Err(e) => errs.push(format!("{}: {e}", f.display())),
        }
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                // Fails (and is left) unless empty.
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }
    (done, errs)
}

/// Checks for expired recordings once an hour (or every tenth of the retention
/// time, if shorter; at least every 10 s).
pub async fn run(shared: Arc<Shared>) {
    let cfg = super::RecordingConfig::from_agent(&shared.cfg);
    let keep = Duration::from_secs(shared.cfg.recording_retain_secs);
    let every = (keep / 10).clamp(Duration::from_secs(10), Duration::from_secs(3600));
    loop {
        let dir = cfg.dir.clone();
        let found = tokio::task::spawn_blocking(move || {
            let cutoff = SystemTime::now()
                .checked_sub(keep)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            expired(&dir, cutoff)
        })
        .await
        .unwrap_or_default();
        if !found.is_empty() {
            let names: Vec<String> = found.iter().map(|p| p.display().to_string()).collect();
            // The record first: a recording never disappears without a trace.
            let audited = shared.audit.record(
                "recording_retention",
                json!({
                    "dir": cfg.dir,
                    "retain_secs": keep.as_secs(),
                    "files": names,
                }),
            );
            if audited.is_ok() {
                let dir = cfg.dir.clone();
                let (done, errs) = tokio::task::spawn_blocking(move || remove(&dir, &found))
                    .await
                    .unwrap_or_default();
                tracing::info!(removed = done.len(), "expired session recordings removed");
                for e in errs {
                    tracing::warn!(error = %e, "cannot remove an expired session recording");
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_files_go_and_empty_days_with_them() {
        let dir = super::super::tests::temp("retain");
        let cfg = super::super::RecordingConfig {
            dir: dir.clone(),
            max_bytes: 0,
            enabled: true,
        };
        let r = super::super::Recorder::start(&cfg, "old1", serde_json::json!({})).expect("start");
        let s = r.finish(serde_json::Value::Null);
        let future = SystemTime::now() + Duration::from_secs(60);
        assert!(expired(&dir, SystemTime::now() - Duration::from_secs(60)).is_empty());
        let found = expired(&dir, future);
        assert_eq!(found.len(), 1);
        let (done, errs) = remove(&dir, &found);
        assert_eq!((done, errs.len()), (vec![s.file.clone()], 0));
        assert!(!Path::new(&s.file).exists());
        assert_eq!(
            std::fs::read_dir(&dir).expect("dir").count(),
            0,
            "day dir removed"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
