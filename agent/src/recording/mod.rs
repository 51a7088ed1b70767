//! Session recording: one JSON Lines file per proxied session, written by the
//! session's own task, read back offline by `portcullis sessions` and `replay`.
//!
//! File: `<dir>/<YYYY-MM-DD>/<session_id>.jsonl`, mode 0600, one event per line:
//!
//! ```text
//! {"seq":0,"time":"2026-…Z","elapsed_us":0,"event":"session_start","format":"portcullis-recording/1","session_id":"…","host":"…","agent_version":"…","data":{…meta…}}
//! {"seq":1,"time":"…","elapsed_us":812,"event":"request","data":{"protocol":"postgres","text":"SELECT 1",…}}
//! {"seq":9,"time":"…","elapsed_us":91022,"event":"session_end","data":{…end…,"events":9,"dropped_events":0,"truncated":false}}
//! ```
//!
//! `seq` grows by one per line; `elapsed_us` is measured on the monotonic clock from
//! the start of the session, so it never goes backwards even if the wall clock does.
//! A session that reaches `max_bytes` gets one `truncated` event and later events are
//! counted, not written; `session_end` is always written.
//!
//! Protocol handlers emit, with values already masked (nothing regulated is
//! written in clear): `request` {protocol, text, kinds, decision, rule},
//! `response` {columns, rows (strings or null), tag, rows_total, rows_omitted},
//! `error` {severity, sqlstate, message}, `notice` {severity, message},
//! `decision` {decision, rule, reason}, `copy` {direction, bytes}. The L4 relay
//! emits `half_close` {from, bytes} and `bytes` {client_to_upstream,
//! upstream_to_client}. Any other kind is kept and shown generically.

pub mod cli;
pub mod read;
pub mod render;
pub mod retention;

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

use serde::Serialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// Value of the header's `format` field.
pub const FORMAT: &str = "portcullis-recording/1";
/// Buffered bytes per recorder before a write(2).
const BUFFER: usize = 64 * 1024;

/// Where and how much to record (from `agent.yaml`).
#[derive(Debug, Clone)]
pub struct RecordingConfig {
    pub dir: PathBuf,
    /// Bytes per session file; beyond it, one `truncated` event and later events
    /// dropped (0: no bound; agent.yaml requires at least 512).
    pub max_bytes: u64,
    pub enabled: bool,
}

impl RecordingConfig {
    /// The recording settings of `agent.yaml`.
    pub fn from_agent(cfg: &crate::config::AgentConfig) -> Self {
        Self {
            dir: recording_dir(cfg),
            max_bytes: cfg.recording_max_bytes,
            enabled: cfg.recording_enabled,
        }
    }
}

/// `recording_dir`, or `<state_dir>/sessions` when it is not set.
pub fn recording_dir(cfg: &crate::config::AgentConfig) -> PathBuf {
    cfg.recording_dir
        .clone()
        .unwrap_or_else(|| cfg.state_dir.join("sessions"))
}

/// What the audit log says about a finished recording.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RecordingSummary {
    pub file: String,
    /// Hex sha256 of the whole file as written.
    pub sha256: String,
    pub bytes: u64,
    /// Lines written, `session_start` and `session_end` included.
    pub events: u64,
    /// Events not written because the size bound was reached or a write failed.
    pub dropped_events: u64,
    pub truncated: bool,
    /// The first I/O error, if any: the file is then incomplete.
    pub error: Option<String>,
}

/// Writer of one session's recording. Owned by the session's task; every call is
/// a buffered append (the file is flushed and fsynced by [`Recorder::finish`]).
pub struct Recorder {
    out: BufWriter<File>,
    path: PathBuf,
    hash: Sha256,
    started: Instant,
    seq: u64,
    bytes: u64,
    max_bytes: u64,
    dropped: u64,
    truncated: bool,
    error: Option<String>,
}

impl Recorder {
    /// Creates `<dir>/<YYYY-MM-DD>/<session_id>.jsonl` (0600, directories 0700) and
    /// writes the `session_start` header carrying `meta`. Fails if recording is
    /// disabled, the id is not a plain file name, or the file cannot be created
    /// (an existing file is never overwritten).
    pub fn start(cfg: &RecordingConfig, session_id: &str, meta: Value) -> std::io::Result<Self> {
        use std::io::{Error, ErrorKind};
        if !cfg.enabled {
            return Err(Error::new(ErrorKind::Unsupported, "recording is disabled"));
        }
        if session_id.is_empty()
            || !session_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("session id `{session_id}` is not usable as a file name"),
            ));
        }
        let now = SystemTime::now();
        let day = &crate::audit::rfc3339(now)[..10];
        let day_dir = cfg.dir.join(day);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&day_dir)
            .map_err(|e| annotate(e, "creating", &day_dir))?;
        let path = day_dir.join(format!("{session_id}.jsonl"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| annotate(e, "creating", &path))?;
        let mut r = Self {
            out: BufWriter::with_capacity(BUFFER, file),
            path,
            hash: Sha256::new(),
            started: Instant::now(),
            seq: 0,
            bytes: 0,
            max_bytes: cfg.max_bytes,
            dropped: 0,
            truncated: false,
            error: None,
        };
        let mut head = Map::new();
        head.insert("format".into(), FORMAT.into());
        head.insert("session_id".into(), session_id.into());
        head.insert("host".into(), hostname().into());
        head.insert("agent_version".into(), env!("CARGO_PKG_VERSION").into());
        r.write("session_start", head, meta, now);
        match r.error.take() {
            Some(e) => Err(Error::other(e)),
            None => Ok(r),
        }
    }

    /// [`Recorder::start`] when recording is enabled; `Ok(None)` when it is not.
    pub fn start_if_enabled(
        cfg: &RecordingConfig,
        session_id: &str,
        meta: Value,
    ) -> std::io::Result<Option<Self>> {
        if !cfg.enabled {
            return Ok(None);
        }
        Self::start(cfg, session_id, meta).map(Some)
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event. Never panics; an I/O error is kept for [`Recorder::finish`]
    /// and later events are counted as dropped. When the next line would take the
    /// file past `max_bytes`, one `truncated` event is written instead and every
    /// later event is counted as dropped.
    pub fn event(&mut self, kind: &str, body: Value) {
        if self.truncated || self.error.is_some() {
            self.dropped += 1;
            return;
        }
        let line = self.line(kind, Map::new(), body, SystemTime::now());
        if self.max_bytes > 0 && self.bytes + line.len() as u64 > self.max_bytes {
            self.truncated = true;
            self.dropped += 1;
            let note = json!({
                "max_bytes": self.max_bytes,
                "bytes_written": self.bytes,
                "reason": "the recording reached recording_max_bytes; later events are counted in session_end, not written",
            });
            // Dropped events take no seq: the numbering stays gapless.
            self.write("truncated", Map::new(), note, SystemTime::now());
            return;
        }
        self.put(&line);
    }

    /// Writes `session_end` (with `end` and the event counts), flushes, fsyncs, and
    /// returns the summary for the audit log. Blocks on fsync: call it from a
    /// blocking context.
    pub fn finish(mut self, end: Value) -> RecordingSummary {
        let mut end = match end {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => {
                let mut m = Map::new();
                m.insert("end".into(), other);
                m
            }
        };
        // Counts as of this line: events before it, plus itself.
        end.insert("events".into(), (self.seq + 1).into());
        end.insert("dropped_events".into(), self.dropped.into());
        end.insert("truncated".into(), self.truncated.into());
        if self.error.is_none() {
            self.write(
                "session_end",
                Map::new(),
                Value::Object(end),
                SystemTime::now(),
            );
        }
        if self.error.is_none() {
            let synced = self
                .out
                .flush()
                .and_then(|()| self.out.get_ref().sync_all());
            if let Err(e) = synced {
                self.error = Some(format!("writing {}: {e}", self.path.display()));
            }
            if let Some(dir) = self.path.parent() {
                // The file's directory entry must survive a crash as well.
                let _ = File::open(dir).and_then(|d| d.sync_all());
            }
        }
        RecordingSummary {
            file: self.path.display().to_string(),
            sha256: hex(&std::mem::take(&mut self.hash).finalize()),
            bytes: self.bytes,
            events: self.seq,
            dropped_events: self.dropped,
            truncated: self.truncated,
            error: self.error,
        }
    }

    fn line(&self, kind: &str, head: Map<String, Value>, body: Value, now: SystemTime) -> Vec<u8> {
        let mut m = Map::new();
        m.insert("seq".into(), self.seq.into());
        m.insert("time".into(), crate::audit::rfc3339(now).into());
        m.insert(
            "elapsed_us".into(),
            (self.started.elapsed().as_micros() as u64).into(),
        );
        m.insert("event".into(), kind.into());
        m.extend(head);
        m.insert("data".into(), body);
        let mut line = serde_json::to_vec(&Value::Object(m)).unwrap_or_else(|e| {
            format!(
                "{{\"seq\":{},\"event\":\"unrecordable\",\"data\":{{\"error\":{:?}}}}}",
                self.seq,
                e.to_string()
            )
            .into_bytes()
        });
        line.push(b'\n');
        line
    }

    fn write(&mut self, kind: &str, head: Map<String, Value>, body: Value, now: SystemTime) {
        let line = self.line(kind, head, body, now);
        self.put(&line);
    }

    fn put(&mut self, line: &[u8]) {
        match self.out.write_all(line) {
            Ok(()) => {
                self.hash.update(line);
                self.bytes += line.len() as u64;
                self.seq += 1;
            }
            Err(e) => {
                self.dropped += 1;
                self.error = Some(format!("writing {}: {e}", self.path.display()));
            }
        }
    }
}

fn annotate(e: std::io::Error, what: &str, path: &Path) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

pub use crate::audit::hex;

fn hostname() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "unknown".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path, max_bytes: u64) -> RecordingConfig {
        RecordingConfig {
            dir: dir.to_owned(),
            max_bytes,
            enabled: true,
        }
    }

    pub(crate) fn temp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "portcullis-rec-{name}-{}-{}",
            std::process::id(),
            crate::proxy::SessionId::new()
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        p
    }

    fn lines(path: &str) -> Vec<Value> {
        std::fs::read_to_string(path)
            .expect("read recording")
            .lines()
            .map(|l| serde_json::from_str(l).expect("every line is JSON"))
            .collect()
    }

    #[test]
    fn events_are_ordered_and_the_summary_matches_the_file() {
        let dir = temp("order");
        let mut r =
            Recorder::start(&cfg(&dir, 0), "abc123", json!({"target": "db"})).expect("start");
        for i in 0..50 {
            r.event("request", json!({"text": format!("SELECT {i}")}));
        }
        let s = r.finish(json!({"end": "closed"}));
        let v = lines(&s.file);
        assert_eq!(v.len(), 52);
        assert_eq!(s.events, 52);
        assert_eq!(
            (s.dropped_events, s.truncated, s.error.clone()),
            (0, false, None)
        );
        let mut last = 0;
        for (i, e) in v.iter().enumerate() {
            assert_eq!(e["seq"], i as u64, "{e}");
            let t = e["elapsed_us"].as_u64().expect("elapsed_us");
            assert!(t >= last, "elapsed_us went backwards at {i}");
            last = t;
        }
        assert_eq!(v[0]["event"], "session_start");
        assert_eq!(v[0]["format"], FORMAT);
        assert_eq!(v[0]["data"]["target"], "db");
        assert_eq!(v[1]["data"]["text"], "SELECT 0");
        assert_eq!(v[50]["data"]["text"], "SELECT 49");
        assert_eq!(v[51]["event"], "session_end");
        assert_eq!(v[51]["data"]["end"], "closed");
        let bytes = std::fs::read(&s.file).expect("read");
        assert_eq!(s.bytes, bytes.len() as u64);
        assert_eq!(s.sha256, hex(&Sha256::digest(&bytes)));
        let mode = std::fs::metadata(&s.file)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .expect("stat");
        assert_eq!(mode, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn truncation_is_marked_exactly_once_and_drops_are_counted() {
        let dir = temp("trunc");
        let mut r = Recorder::start(&cfg(&dir, 2048), "t1", json!({})).expect("start");
        for i in 0..200 {
            r.event(
                "request",
                json!({"text": format!("SELECT {i} -- padding padding")}),
            );
        }
        let s = r.finish(json!({"end": "closed"}));
        let v = lines(&s.file);
        let marks: Vec<&Value> = v.iter().filter(|e| e["event"] == "truncated").collect();
        assert_eq!(marks.len(), 1, "exactly one truncated event");
        let written = v.iter().filter(|e| e["event"] == "request").count() as u64;
        assert_eq!(
            written + s.dropped_events,
            200,
            "every event written or counted"
        );
        assert!(s.truncated && s.dropped_events > 0);
        let end = v.last().expect("end");
        assert_eq!(end["event"], "session_end");
        assert_eq!(end["data"]["dropped_events"], s.dropped_events);
        assert_eq!(end["data"]["truncated"], true);
        // Only the marker and the end line go beyond the bound.
        let before_marker: u64 = std::fs::read_to_string(&s.file)
            .expect("read")
            .lines()
            .take_while(|l| !l.contains("\"event\":\"truncated\""))
            .map(|l| l.len() as u64 + 1)
            .sum();
        assert!(before_marker <= 2048, "{before_marker}");
        for (i, e) in v.iter().enumerate() {
            assert_eq!(e["seq"], i as u64);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refuses_bad_ids_existing_files_and_disabled_config() {
        let dir = temp("bad");
        for id in ["", "../x", "a/b", "a b"] {
            assert!(
                Recorder::start(&cfg(&dir, 0), id, json!({})).is_err(),
                "{id:?}"
            );
        }
        let r = Recorder::start(&cfg(&dir, 0), "dup", json!({})).expect("first");
        let _ = r.finish(Value::Null);
        assert!(Recorder::start(&cfg(&dir, 0), "dup", json!({})).is_err());
        let mut off = cfg(&dir, 0);
        off.enabled = false;
        assert!(Recorder::start(&off, "x", json!({})).is_err());
        assert!(
            Recorder::start_if_enabled(&off, "x", json!({}))
                .expect("disabled is not an error")
                .is_none()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
