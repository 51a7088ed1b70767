//! Export of the audit log to SIEMs: syslog (RFC 5424 over UDP, TCP and unix
//! sockets) and HTTP(S) batches, as native JSON records or OCSF events.
//!
//! Each sink runs on a thread of its own, never on the proxy's path. It reads
//! the durable log itself ([`reader`]), from the record after its cursor
//! (`<state_dir>/export/<sink>.cursor`, replaced atomically after each batch
//! the collector took), so a collector outage or an agent restart loses
//! nothing: the log is the spool. Failed sends are retried with exponential
//! back-off; delivery is at least once (a record may arrive twice, with the
//! same `event_id`). Failures are audited (`export_failure`, at most one per
//! sink per minute, then `export_recovered`), and so are records retention
//! removed before a sink exported them (`export_gap`). `portcullis status`
//! shows each sink's position, lag, last error and last success.

pub mod cli;
pub mod config;
mod http;
pub mod ocsf;
pub mod reader;
pub mod syslog;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use serde_json::{Value, json};

pub use self::config::{ExportFormat, ExportSink};
use self::reader::{Cursor, LogReader, Record};
use super::{AuditLog, now_rfc3339};

/// Audit event of a failed export (rate limited).
pub const FAILURE_EVENT: &str = "export_failure";
/// Audit event of an export that works again after failures.
pub const RECOVERED_EVENT: &str = "export_recovered";
/// Audit event of records a sink can no longer export (removed by retention).
pub const GAP_EVENT: &str = "export_gap";

/// How often a caught-up sink looks for new records.
const POLL: Duration = Duration::from_millis(100);
/// At most one `export_failure` record per sink this often.
const FAILURE_RECORD_EVERY: Duration = Duration::from_secs(60);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The cursor file is written at most this often while records flow (and
/// whenever the sink catches up).
const CURSOR_EVERY: Duration = Duration::from_millis(200);

/// Failure to send a batch.
#[derive(Debug)]
pub struct SendError {
    pub message: String,
    /// Records from this seq on may not have arrived (a stream broke after
    /// they were written): send them again.
    pub resend_from: Option<u64>,
    /// The collector refused the batch as too large (HTTP 413): send fewer
    /// records at a time.
    pub too_large: bool,
}

/// A way to deliver a batch to a collector.
pub trait Transport: Send {
    fn describe(&self) -> String;
    /// Delivers `records`, each as its formatted `payloads` entry.
    fn send(&mut self, records: &[Record], payloads: &[String]) -> Result<(), SendError>;
}

/// A record as the sink's format wants it.
pub fn payload(rec: &Record, format: ExportFormat) -> String {
    match format {
        ExportFormat::Json => rec.line.clone(),
        ExportFormat::Ocsf => ocsf::map(&rec.value()).to_string(),
    }
}

/// What `portcullis status` shows of one sink.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SinkStatus {
    pub name: String,
    pub format: &'static str,
    pub destination: String,
    /// `seq` of the last record the collector took.
    pub exported_seq: Option<u64>,
    pub head_seq: Option<u64>,
    /// Records written to the log and not exported yet.
    pub lag_records: u64,
    /// Age of the oldest record not exported yet (0 when caught up).
    pub lag_secs: f64,
    pub exported: u64,
    pub failures: u64,
    pub failing: bool,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    pub last_success_at: Option<String>,
    /// Records the sink could not export because they were gone from the log.
    pub gap_records: u64,
    pub last_gap: Option<String>,
    /// `time` (µs since the epoch) of the oldest record read and not exported yet.
    #[serde(skip)]
    oldest_pending_us: Option<i64>,
}

struct Sink {
    cfg: ExportSink,
    transport: Box<dyn Transport>,
    audit: AuditLog,
    reader: LogReader,
    cursor_path: PathBuf,
    status: Arc<Mutex<SinkStatus>>,
}

/// The running sinks; cheap to clone.
#[derive(Clone, Default)]
pub struct Exports {
    sinks: Vec<(Arc<Mutex<SinkStatus>>, AuditLog)>,
}

impl Exports {
    /// Starts one thread per configured sink.
    pub fn start(sinks: &[ExportSink], state_dir: &Path, audit: &AuditLog) -> anyhow::Result<Self> {
        let export_dir = state_dir.join("export");
        if !sinks.is_empty() {
            std::fs::create_dir_all(&export_dir).map_err(|e| {
                anyhow::anyhow!("export state directory {}: {e}", export_dir.display())
            })?;
        }
        let audit_dir = audit
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut out = Self::default();
        for cfg in sinks {
            let transport: Box<dyn Transport> = match (&cfg.syslog, &cfg.http) {
                (Some(s), _) => Box::new(syslog::Syslog::new(s)),
                (None, Some(h)) => Box::new(http::Http::new(h)),
                (None, None) => anyhow::bail!("export sink `{}` has no transport", cfg.name),
            };
            let cursor_path = reader::cursor_path(&export_dir, &cfg.name);
            let start = match reader::load_cursor(&cursor_path) {
                // A cursor past the end of the log belongs to another log (the
                // audit directory was replaced): export this one from its start.
                Ok(Some(c)) if audit.head_seq().is_none_or(|h| c.seq > h) => {
                    tracing::warn!(sink = %cfg.name, cursor_seq = c.seq, head_seq = ?audit.head_seq(), "export cursor is past the end of the audit log; exporting this log from its oldest record");
                    None
                }
                Ok(Some(c)) => Some(c.seq + 1),
                Ok(None) => match cfg.start {
                    config::StartAt::Oldest => None,
                    config::StartAt::Now => Some(audit.head_seq().map_or(0, |h| h + 1)),
                },
                Err(e) => {
                    tracing::warn!(sink = %cfg.name, error = %e, "export cursor unreadable; exporting again from the oldest record (duplicates, nothing lost)");
                    None
                }
            };
            let status = Arc::new(Mutex::new(SinkStatus {
                name: cfg.name.clone(),
                format: cfg.format.as_str(),
                destination: transport.describe(),
                exported_seq: start.and_then(|s| s.checked_sub(1)),
                ..SinkStatus::default()
            }));
            let sink = Sink {
                cfg: cfg.clone(),
                transport,
                audit: audit.clone(),
                reader: LogReader::new(&audit_dir, start),
                cursor_path,
                status: status.clone(),
            };
            std::thread::Builder::new()
                .name(format!("export-{}", cfg.name))
                .spawn(move || sink.run())
                .map_err(|e| anyhow::anyhow!("starting export sink `{}`: {e}", cfg.name))?;
            tracing::info!(sink = %cfg.name, destination = %status.lock().map(|s| s.destination.clone()).unwrap_or_default(), "audit export started");
            out.sinks.push((status, audit.clone()));
        }
        Ok(out)
    }

    /// Per sink: position, head, lag, last error, last success.
    pub fn status(&self) -> Value {
        let v: Vec<SinkStatus> = self
            .sinks
            .iter()
            .map(|(s, audit)| {
                let mut st = s.lock().map(|g| g.clone()).unwrap_or_default();
                let head = audit.head_seq();
                if head > st.head_seq {
                    st.head_seq = head;
                }
                let next = st.exported_seq.map_or(0, |s| s + 1);
                st.lag_records = st.head_seq.map_or(0, |h| (h + 1).saturating_sub(next));
                st.lag_secs = match st.oldest_pending_us {
                    Some(t) if st.lag_records > 0 => (now_us() - t).max(0) as f64 / 1e6,
                    _ => 0.0,
                };
                st
            })
            .collect();
        json!(v)
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Sink {
    fn update(&self, f: impl FnOnce(&mut SinkStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        let max_backoff = Duration::from_millis(self.cfg.backoff_max_ms);
        let mut pending: Vec<Record> = Vec::new();
        let mut payloads: Vec<String> = Vec::new();
        let mut last_failure_record: Option<Instant> = None;
        let mut suppressed = 0u64;
        let mut failing_since: Option<Instant> = None;
        let mut failures_in_outage = 0u64;
        let mut cursor_dirty: Option<Cursor> = None;
        let mut cursor_written = Instant::now();
        let mut batch = self.cfg.batch;
        loop {
            if pending.is_empty() {
                match self
                    .reader
                    .read_before(batch, Some(self.audit.durable_next_seq()))
                {
                    Ok(b) => {
                        for g in b.gaps {
                            self.gap(g);
                        }
                        pending = b.records;
                        payloads = pending
                            .iter()
                            .map(|r| payload(r, self.cfg.format))
                            .collect();
                    }
                    Err(e) => {
                        let msg = format!("reading the audit log: {e}");
                        self.update(|s| {
                            s.last_error = Some(msg.clone());
                            s.last_error_at = Some(now_rfc3339());
                        });
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(max_backoff);
                        continue;
                    }
                }
                if pending.is_empty() {
                    if let Some(c) = cursor_dirty.take() {
                        self.store(&c);
                        cursor_written = Instant::now();
                    }
                    self.update(|s| s.oldest_pending_us = None);
                    std::thread::sleep(POLL);
                    continue;
                }
            }
            match self.transport.send(&pending, &payloads) {
                Ok(()) => {
                    let Some(last) = pending.last() else { continue };
                    let c = Cursor {
                        sink: self.cfg.name.clone(),
                        seq: last.seq,
                        event_id: last.event_id().to_string(),
                        updated: now_rfc3339(),
                    };
                    let n = pending.len() as u64;
                    let seq = last.seq;
                    self.update(|s| {
                        s.exported_seq = Some(seq);
                        s.exported += n;
                        s.failing = false;
                        s.last_success_at = Some(c.updated.clone());
                        s.oldest_pending_us = None;
                    });
                    if let Some(since) = failing_since.take() {
                        let _ = self.audit.record(
                            RECOVERED_EVENT,
                            json!({
                                "sink": self.cfg.name,
                                "destination": self.transport.describe(),
                                "failures": failures_in_outage,
                                "outage_secs": since.elapsed().as_secs_f64(),
                            }),
                        );
                        tracing::info!(sink = %self.cfg.name, failures = failures_in_outage, "audit export recovered");
                        failures_in_outage = 0;
                        suppressed = 0;
                        last_failure_record = None;
                    }
                    cursor_dirty = Some(c);
                    if cursor_written.elapsed() >= CURSOR_EVERY
                        && let Some(c) = cursor_dirty.take()
                    {
                        self.store(&c);
                        cursor_written = Instant::now();
                    }
                    pending.clear();
                    payloads.clear();
                    backoff = BACKOFF_MIN;
                }
                Err(e) => {
                    failing_since.get_or_insert_with(Instant::now);
                    failures_in_outage += 1;
                    self.update(|s| {
                        s.failures += 1;
                        s.failing = true;
                        s.last_error = Some(e.message.clone());
                        s.last_error_at = Some(now_rfc3339());
                    });
                    if last_failure_record.is_none_or(|t| t.elapsed() >= FAILURE_RECORD_EVERY) {
                        tracing::warn!(sink = %self.cfg.name, error = %e.message, "audit export failed; retrying with back-off");
                        let exported = self.status.lock().ok().and_then(|s| s.exported_seq);
                        let _ = self.audit.record(
                            FAILURE_EVENT,
                            json!({
                                "sink": self.cfg.name,
                                "destination": self.transport.describe(),
                                "error": e.message,
                                "exported_seq": exported,
                                "pending_from_seq": pending.first().map(|r| r.seq),
                                "failures_not_recorded": suppressed,
                            }),
                        );
                        last_failure_record = Some(Instant::now());
                        suppressed = 0;
                    } else {
                        suppressed += 1;
                    }
                    let from = match (e.resend_from, pending.first()) {
                        (Some(from), _) => Some(from),
                        (None, Some(first)) if e.too_large && pending.len() > 1 => {
                            batch = (pending.len() / 2).max(1);
                            tracing::warn!(sink = %self.cfg.name, batch, "the collector refused a batch as too large; sending fewer records at a time");
                            Some(first.seq)
                        }
                        _ => None,
                    };
                    if let Some(from) = from {
                        self.reader.rewind(from);
                        pending.clear();
                        payloads.clear();
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(max_backoff);
                }
            }
        }
    }

    fn store(&self, c: &Cursor) {
        if let Err(e) = reader::store_cursor(&self.cursor_path, c) {
            tracing::warn!(sink = %self.cfg.name, path = %self.cursor_path.display(), error = %e, "cannot write the export cursor; records may be exported again after a restart");
        }
    }

    fn gap(&self, g: reader::Gap) {
        let n = g.last - g.first + 1;
        tracing::error!(sink = %self.cfg.name, first_seq = g.first, last_seq = g.last, "audit records removed from the log before this sink exported them");
        let _ = self.audit.record(
            GAP_EVENT,
            json!({
                "sink": self.cfg.name,
                "destination": self.transport.describe(),
                "missing_first_seq": g.first,
                "missing_last_seq": g.last,
                "records": n,
                "reason": "removed from the log (retention) before the sink exported them",
            }),
        );
        self.update(|s| {
            s.gap_records += n;
            s.last_gap = Some(format!("seq {}..={} at {}", g.first, g.last, now_rfc3339()));
        });
    }
}

#[cfg(test)]
mod tests;
