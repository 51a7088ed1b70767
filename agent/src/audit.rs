//! Audit records: one JSON object per line in `<state_dir>/audit/audit.jsonl`.
//!
//! Writing is off the proxy's path: records go through a bounded channel to one
//! writer thread that appends, flushes and (by default) fsyncs per batch. If the
//! writer cannot write, or the queue is full, the log reports unhealthy and the
//! proxy refuses new connections until it recovers: no access without evidence.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use serde::Serialize;
use serde_json::{Value, json};

use crate::config::AuditSync;

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit log is not accepting records ({0}); requests are refused until it recovers")]
    Unavailable(&'static str),
}

#[derive(Default)]
struct Stats {
    written: AtomicU64,
    dropped: AtomicU64,
    seq: AtomicU64,
}

/// Handle to the audit log; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: Sender<Value>,
    healthy: Arc<AtomicBool>,
    stats: Arc<Stats>,
    host: Arc<str>,
    pub path: PathBuf,
}

pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// RFC 3339 UTC with microseconds, without a date-time crate.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_micros()
    )
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into())
}

impl AuditLog {
    /// Opens (creating if needed) the log directory and starts the writer thread.
    pub fn open(dir: &Path, queue: usize, sync: AuditSync) -> Result<Self, AuditError> {
        std::fs::create_dir_all(dir).map_err(|source| AuditError::Open {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join("audit.jsonl");
        let mut file = open_append(&path)?;
        // A crash can leave a torn last line: start on a fresh line so the next
        // record is never glued to it (the torn fragment stays, visibly invalid).
        if ends_without_newline(&path) {
            file.write_all(b"\n").map_err(|source| AuditError::Open {
                path: path.clone(),
                source,
            })?;
        }
        let (tx, rx) = bounded(queue);
        let healthy = Arc::new(AtomicBool::new(true));
        let stats = Arc::new(Stats::default());
        // Sequence numbers continue across restarts.
        stats
            .seq
            .store(last_seq(&path).map_or(0, |s| s + 1), Ordering::Relaxed);
        let w = Writer {
            rx,
            file,
            path: path.clone(),
            sync,
            healthy: healthy.clone(),
            stats: stats.clone(),
        };
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || w.run())
            .map_err(|source| AuditError::Open {
                path: path.clone(),
                source,
            })?;
        Ok(Self {
            tx,
            healthy,
            stats,
            host: hostname().into(),
            path,
        })
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Queues a record. `event` names its type; `body` is merged into the envelope.
    pub fn record(&self, event: &str, body: impl Serialize) -> Result<(), AuditError> {
        let mut v = json!({
            "schema": SCHEMA_VERSION,
            "seq": self.stats.seq.fetch_add(1, Ordering::Relaxed),
            "time": now_rfc3339(),
            "host": &*self.host,
            "agent_version": env!("CARGO_PKG_VERSION"),
            "event": event,
        });
        if let (Some(obj), Ok(Value::Object(extra))) =
            (v.as_object_mut(), serde_json::to_value(body))
        {
            obj.extend(extra);
        }
        match self.tx.try_send(v) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                self.healthy.store(false, Ordering::Relaxed);
                Err(AuditError::Unavailable("queue full"))
            }
            Err(TrySendError::Disconnected(_)) => {
                self.healthy.store(false, Ordering::Relaxed);
                Err(AuditError::Unavailable("writer stopped"))
            }
        }
    }

    pub fn written(&self) -> u64 {
        self.stats.written.load(Ordering::Relaxed)
    }

    pub fn dropped(&self) -> u64 {
        self.stats.dropped.load(Ordering::Relaxed)
    }

    pub fn queued(&self) -> usize {
        self.tx.len()
    }

    /// Waits (bounded) until everything queued so far is written.
    pub fn flush(&self, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while !self.tx.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ends_without_newline(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = File::open(path) else {
        return false;
    };
    if f.seek(SeekFrom::End(-1)).is_err() {
        return false; // empty file
    }
    let mut b = [0u8; 1];
    f.read_exact(&mut b).is_ok() && b[0] != b'\n'
}

/// The `seq` of the last complete record in a log file (a torn last line is skipped).
fn last_seq(path: &Path) -> Option<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let from = len.saturating_sub(256 * 1024);
    f.seek(SeekFrom::Start(from)).ok()?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).ok()?;
    tail.split(|b| *b == b'\n')
        .rev()
        .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
        .find_map(|v| v.get("seq").and_then(Value::as_u64))
}

fn open_append(path: &Path) -> Result<File, AuditError> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| AuditError::Open {
            path: path.to_owned(),
            source,
        })
}

struct Writer {
    rx: Receiver<Value>,
    file: File,
    path: PathBuf,
    sync: AuditSync,
    healthy: Arc<AtomicBool>,
    stats: Arc<Stats>,
}

impl Writer {
    fn run(mut self) {
        let mut buf = Vec::with_capacity(64 * 1024);
        while let Ok(first) = self.rx.recv() {
            buf.clear();
            let mut n = 0u64;
            for rec in std::iter::once(first).chain(self.rx.try_iter().take(4095)) {
                if serde_json::to_writer(&mut buf, &rec).is_ok() {
                    buf.push(b'\n');
                    n += 1;
                }
            }
            // Retry until the batch is on disk: a record is never dropped once queued.
            loop {
                let res = self.file.write_all(&buf).and_then(|_| match self.sync {
                    AuditSync::Batch => self.file.sync_data(),
                    AuditSync::None => Ok(()),
                });
                match res {
                    Ok(()) => {
                        self.stats.written.fetch_add(n, Ordering::Relaxed);
                        if self.rx.len() < self.rx.capacity().unwrap_or(usize::MAX) / 2 {
                            self.healthy.store(true, Ordering::Relaxed);
                        }
                        break;
                    }
                    Err(e) => {
                        self.healthy.store(false, Ordering::Relaxed);
                        tracing::error!(path = %self.path.display(), error = %e, "audit write failed; refusing new connections until it recovers");
                        std::thread::sleep(Duration::from_millis(500));
                        if let Ok(f) = open_append(&self.path) {
                            self.file = f;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_values() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123456Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn records_are_written_as_json_lines() {
        let dir = std::env::temp_dir().join(format!("pc-audit-{}", std::process::id()));
        let log = AuditLog::open(&dir, 64, AuditSync::None).expect("open");
        log.record("test", json!({"a": 1})).expect("queued");
        log.record("test", json!({"a": 2})).expect("queued");
        log.flush(Duration::from_secs(5));
        let text = std::fs::read_to_string(&log.path).expect("read back");
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["a"], 2);
        assert_eq!(lines[0]["event"], "test");
        assert!(lines[0]["seq"].as_u64() < lines[1]["seq"].as_u64());
        drop(log);
        // Reopened: the sequence continues, even after a torn last line.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("audit.jsonl"))
            .and_then(|mut f| f.write_all(b"{\"seq\": 99, \"tor"))
            .expect("append torn line");
        let log = AuditLog::open(&dir, 64, AuditSync::None).expect("reopen");
        log.record("test", json!({})).expect("queued");
        log.flush(Duration::from_secs(5));
        let text = std::fs::read_to_string(&log.path).expect("read back");
        let last: Value = text
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .expect("a record");
        assert_eq!(last["seq"], lines[1]["seq"].as_u64().expect("seq") + 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
