//! Audit records: one JSON object per line in `<state_dir>/audit/audit.jsonl`,
//! hash-chained and periodically signed, verifiable offline (`verify`).
//!
//! Writing is off the proxy's path: records go through a bounded channel to one
//! writer thread that appends, flushes and (by default) fsyncs per batch. If the
//! writer cannot write, or the queue is full, the log reports unhealthy and the
//! proxy refuses new connections until it recovers: no access without evidence.
//!
//! The writer thread alone gives each record its `seq`, `event_id`, `prev_hash`
//! and `hash` (see [`chain`]), so sequence order, file order and chain order are
//! the same. It continues the chain from the last complete record when the log is
//! reopened. Every `checkpoint_every` records, `checkpoint_interval` after the last
//! checkpoint if records were written since, on [`AuditLog::flush`] and when the
//! last handle is dropped, it appends a `checkpoint` record signing the chain head
//! with the host key ([`key`]). An exclusive lock on the log file keeps a second
//! writer (the CLI while the agent runs) from forking the chain.

mod chain;
mod key;
pub mod verify;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;
use serde_json::{Map, Value};

use self::chain::{CHECKPOINT_EVENT, EventIds, GENESIS, KEY_CREATED_EVENT};
use self::key::HostKey;
pub use self::key::KeyError;
use crate::config::AuditSync;

/// Version 2: records carry `event_id`, `prev_hash` and `hash`, and the log has
/// `checkpoint` records. Version 1 records (before chaining) have none of these.
pub const SCHEMA_VERSION: u32 = 2;

/// Name of the log file in the audit directory.
pub const LOG_FILE: &str = "audit.jsonl";

/// Records per batch written (and fsynced) at most.
const MAX_BATCH: usize = 4096;

/// How long `open` waits for another writer of the same log to finish.
const LOCK_WAIT: Duration = Duration::from_secs(if cfg!(test) { 1 } else { 5 });

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "audit log {path} is in use by another process (an agent is running?): two writers would \
         fork its hash chain"
    )]
    Locked { path: PathBuf },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("no randomness from the kernel for audit event ids: {0}")]
    Random(String),
    #[error("`{0}` records are written by the audit writer itself")]
    ReservedEvent(String),
    #[error("audit log is not accepting records ({0}); requests are refused until it recovers")]
    Unavailable(&'static str),
}

/// When the writer appends signed checkpoints.
#[derive(Debug, Clone)]
pub struct ChainOptions {
    /// A checkpoint after this many records since the last one (0 counts as 1).
    pub checkpoint_every: u64,
    /// A checkpoint this long after the last one, if records were written since.
    pub checkpoint_interval: Duration,
}

impl Default for ChainOptions {
    fn default() -> Self {
        Self {
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(10),
        }
    }
}

enum Msg {
    Record(Map<String, Value>),
    /// Checkpoint now (if anything is unsigned), then acknowledge.
    Flush(Sender<()>),
}

#[derive(Default)]
struct Stats {
    written: AtomicU64,
    dropped: AtomicU64,
}

/// Handle to the audit log; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: Sender<Msg>,
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

/// Where the signing key lives for an audit directory: `<audit dir>/../keys`.
pub fn keys_dir(audit_dir: &Path) -> PathBuf {
    audit_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("keys")
}

/// The fields every record starts with. The writer adds `seq`, `event_id`,
/// `prev_hash` and `hash`.
fn envelope(rec: &mut Map<String, Value>, host: &str, event: &str) {
    rec.insert("schema".into(), SCHEMA_VERSION.into());
    rec.insert("time".into(), now_rfc3339().into());
    rec.insert("host".into(), host.into());
    rec.insert("agent_version".into(), env!("CARGO_PKG_VERSION").into());
    rec.insert("event".into(), event.into());
}

impl AuditLog {
    /// Opens (creating if needed) the log directory and starts the writer thread,
    /// with the default checkpoint schedule.
    pub fn open(dir: &Path, queue: usize, sync: AuditSync) -> Result<Self, AuditError> {
        Self::open_with(dir, queue, sync, ChainOptions::default())
    }

    /// Opens the log as [`AuditLog::open`] does, with a given checkpoint schedule.
    /// Loads (or creates) the signing key in [`keys_dir`] and refuses one that
    /// others may read.
    pub fn open_with(
        dir: &Path,
        queue: usize,
        sync: AuditSync,
        opts: ChainOptions,
    ) -> Result<Self, AuditError> {
        std::fs::create_dir_all(dir).map_err(|source| AuditError::Open {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(LOG_FILE);
        let mut file = open_append(&path)?;
        let lock = lock_log(&path)?;
        let open_err = |source| AuditError::Open {
            path: path.clone(),
            source,
        };
        // A crash can leave a torn last line: start on a fresh line so the next
        // record is never glued to it (the torn fragment stays, visibly invalid,
        // and the chain continues from the last complete record before it).
        if ends_without_newline(&path).map_err(open_err)? {
            file.write_all(b"\n").map_err(open_err)?;
        }
        let head = chain_head(&path).map_err(open_err)?;
        let key = HostKey::load_or_create(&keys_dir(dir))?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| AuditError::Random(e.to_string()))?;

        let (tx, rx) = bounded(queue);
        let healthy = Arc::new(AtomicBool::new(true));
        let stats = Arc::new(Stats::default());
        let host: Arc<str> = hostname().into();
        let (next_seq, head, unsigned) = head.map_or((0, GENESIS.to_string(), 0), |h| {
            (h.seq + 1, h.hash, u64::from(!h.signed))
        });
        let w = Writer {
            rx,
            file,
            _lock: lock,
            path: path.clone(),
            sync,
            healthy: healthy.clone(),
            stats: stats.clone(),
            host: host.clone(),
            key,
            ids: EventIds::new(seed),
            every: opts.checkpoint_every.max(1),
            interval: opts.checkpoint_interval,
            next_seq,
            head,
            since_checkpoint: unsigned,
            last_checkpoint: Instant::now(),
            buf: Vec::with_capacity(64 * 1024),
            scratch: Vec::with_capacity(4096),
            batch_records: 0,
        };
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || w.run())
            .map_err(open_err)?;
        Ok(Self {
            tx,
            healthy,
            stats,
            host,
            path,
        })
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Queues a record. `event` names its type; `body` (a struct or JSON object)
    /// is merged into the envelope. Envelope and chain fields cannot be
    /// overridden by the body.
    pub fn record(&self, event: &str, body: impl Serialize) -> Result<(), AuditError> {
        if event == CHECKPOINT_EVENT || event == KEY_CREATED_EVENT {
            return Err(AuditError::ReservedEvent(event.to_string()));
        }
        let mut rec = match serde_json::to_value(body) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        for k in ["seq", "event_id", "prev_hash", "hash"] {
            rec.remove(k);
        }
        envelope(&mut rec, &self.host, event);
        match self.tx.try_send(Msg::Record(rec)) {
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

    /// Records written to the file, checkpoints included.
    pub fn written(&self) -> u64 {
        self.stats.written.load(Ordering::Relaxed)
    }

    pub fn dropped(&self) -> u64 {
        self.stats.dropped.load(Ordering::Relaxed)
    }

    pub fn queued(&self) -> usize {
        self.tx.len()
    }

    /// Waits (bounded) until everything queued so far is written (and synced per
    /// `audit_sync`) and signed by a checkpoint. Returns false on timeout.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (ack_tx, ack_rx) = bounded(1);
        let done = self.tx.send_deadline(Msg::Flush(ack_tx), deadline).is_ok()
            && ack_rx.recv_deadline(deadline).is_ok();
        if !done {
            tracing::warn!(
                path = %self.path.display(),
                timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                "audit log flush timed out; records may still be queued"
            );
        }
        done
    }
}

/// Exclusive `flock` on the log for the writer's lifetime. Waits a little for a
/// writer that is finishing (its last handle was just dropped).
fn lock_log(path: &Path) -> Result<Flock<File>, AuditError> {
    let mut f = File::open(path).map_err(|source| AuditError::Open {
        path: path.to_owned(),
        source,
    })?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(l) => return Ok(l),
            Err((back, Errno::EAGAIN)) if Instant::now() < deadline => {
                f = back;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err((_, Errno::EAGAIN)) => {
                return Err(AuditError::Locked {
                    path: path.to_owned(),
                });
            }
            Err((_, e)) => {
                return Err(AuditError::Open {
                    path: path.to_owned(),
                    source: e.into(),
                });
            }
        }
    }
}

fn ends_without_newline(path: &Path) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(path)?;
    if f.metadata()?.len() == 0 {
        return Ok(false);
    }
    f.seek(SeekFrom::End(-1))?;
    let mut b = [0u8; 1];
    f.read_exact(&mut b)?;
    Ok(b[0] != b'\n')
}

/// Where the chain continues from.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    seq: u64,
    /// The record's `hash`; [`GENESIS`] after a record from before chaining, so
    /// a new chain starts there.
    hash: String,
    /// False if the last record is not a checkpoint: the previous writer stopped
    /// (crashed) before signing it, and this one signs it with its first checkpoint.
    signed: bool,
}

/// The last complete record of a log file (a torn last line is skipped). Reads
/// backwards in growing windows, so a long file costs one small read.
fn chain_head(path: &Path) -> std::io::Result<Option<Head>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let mut window: u64 = 256 * 1024;
    loop {
        let from = len.saturating_sub(window);
        f.seek(SeekFrom::Start(from))?;
        let mut tail = Vec::new();
        (&mut f).take(len - from).read_to_end(&mut tail)?;
        let mut lines: Vec<&[u8]> = tail.split(|b| *b == b'\n').collect();
        if from > 0 {
            lines.remove(0); // starts mid-line
        }
        let found = lines.iter().rev().find_map(|l| {
            let v: Value = serde_json::from_slice(l).ok()?;
            let seq = v.get("seq")?.as_u64()?;
            let hash = v
                .get("hash")
                .and_then(Value::as_str)
                .filter(|h| chain::is_hash(h))
                .unwrap_or(GENESIS);
            Some(Head {
                seq,
                hash: hash.to_string(),
                signed: hash == GENESIS
                    || v.get("event").and_then(Value::as_str) == Some(CHECKPOINT_EVENT),
            })
        });
        if found.is_some() || from == 0 {
            return Ok(found);
        }
        window = window.saturating_mul(4);
    }
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
    rx: Receiver<Msg>,
    file: File,
    _lock: Flock<File>,
    path: PathBuf,
    sync: AuditSync,
    healthy: Arc<AtomicBool>,
    stats: Arc<Stats>,
    host: Arc<str>,
    key: HostKey,
    ids: EventIds,
    every: u64,
    interval: Duration,
    /// `seq` of the next record.
    next_seq: u64,
    /// `hash` of the last record ([`GENESIS`] before the first).
    head: String,
    /// Records since the last checkpoint.
    since_checkpoint: u64,
    last_checkpoint: Instant,
    /// The batch being built: sealed lines.
    buf: Vec<u8>,
    scratch: Vec<u8>,
    batch_records: u64,
}

impl Writer {
    fn run(mut self) {
        if self.key.created {
            let mut rec = Map::new();
            rec.insert("public_key".into(), self.key.public_hex.clone().into());
            rec.insert(
                "key_file".into(),
                self.key.path.display().to_string().into(),
            );
            if self.append_new(KEY_CREATED_EVENT, rec) {
                self.since_checkpoint += 1;
            }
            self.write_batch();
        }
        loop {
            let first = if self.since_checkpoint > 0 {
                let wait = self.interval.saturating_sub(self.last_checkpoint.elapsed());
                match self.rx.recv_timeout(wait) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match self.rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => break,
                }
            };
            let mut acks = Vec::new();
            let batch = first
                .into_iter()
                .chain(self.rx.try_iter().take(MAX_BATCH - 1))
                .collect::<Vec<_>>();
            for m in batch {
                match m {
                    Msg::Record(rec) => {
                        if self.append(rec) {
                            self.since_checkpoint += 1;
                        }
                        if self.since_checkpoint >= self.every {
                            self.checkpoint();
                        }
                    }
                    Msg::Flush(ack) => {
                        self.checkpoint();
                        acks.push(ack);
                    }
                }
            }
            if self.last_checkpoint.elapsed() >= self.interval {
                self.checkpoint();
            }
            self.write_batch();
            for a in acks {
                let _ = a.send(());
            }
        }
        // Every handle is gone: sign what is left.
        self.checkpoint();
        self.write_batch();
    }

    /// Seals a record into the batch: gives it its chain fields and moves the head.
    fn append(&mut self, mut rec: Map<String, Value>) -> bool {
        rec.insert("seq".into(), self.next_seq.into());
        rec.insert("event_id".into(), self.ids.next().into());
        rec.insert("prev_hash".into(), self.head.clone().into());
        let start = self.buf.len();
        match chain::seal(&rec, &mut self.scratch, &mut self.buf) {
            Ok(hash) => {
                self.buf.push(b'\n');
                self.head = hash;
                self.next_seq += 1;
                self.batch_records += 1;
                true
            }
            Err(e) => {
                self.buf.truncate(start);
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "audit record could not be serialised; dropped");
                false
            }
        }
    }

    /// A record made by the writer itself.
    fn append_new(&mut self, event: &str, mut body: Map<String, Value>) -> bool {
        envelope(&mut body, &self.host, event);
        self.append(body)
    }

    /// Signs the head, if any record is not covered by a checkpoint yet.
    fn checkpoint(&mut self) {
        if self.since_checkpoint == 0 {
            return;
        }
        let head_seq = self.next_seq.saturating_sub(1);
        let signature = self
            .key
            .sign_hex(&chain::checkpoint_message(&self.head, head_seq));
        let mut rec = Map::new();
        rec.insert("head_seq".into(), head_seq.into());
        rec.insert("head_hash".into(), self.head.clone().into());
        rec.insert("signature".into(), signature.into());
        rec.insert("public_key".into(), self.key.public_hex.clone().into());
        if self.append_new(CHECKPOINT_EVENT, rec) {
            self.since_checkpoint = 0;
            self.last_checkpoint = Instant::now();
        }
    }

    /// Writes the batch, retrying until it is on disk: a record is never dropped
    /// once queued. A partial write resumes where it stopped, so a retry never
    /// duplicates a record.
    fn write_batch(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let mut done = 0;
        loop {
            match self.write_from(&mut done) {
                Ok(()) => {
                    self.stats
                        .written
                        .fetch_add(self.batch_records, Ordering::Relaxed);
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
        self.buf.clear();
        self.batch_records = 0;
    }

    fn write_from(&mut self, done: &mut usize) -> std::io::Result<()> {
        while *done < self.buf.len() {
            match self.file.write(&self.buf[*done..]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => *done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        match self.sync {
            AuditSync::Batch => self.file.sync_data(),
            AuditSync::None => Ok(()),
        }
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A directory removed when dropped.
    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new(tag: &str) -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "pc-audit-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("create temp dir");
            Self(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub fn opts(every: u64) -> ChainOptions {
        ChainOptions {
            checkpoint_every: every,
            checkpoint_interval: Duration::from_secs(3600),
        }
    }

    /// Writes `n` connection-like records to `<root>/audit` and returns the
    /// audit directory and the host's public key.
    pub fn write_log(root: &Path, n: u64, every: u64) -> (PathBuf, [u8; 32]) {
        let dir = root.join("audit");
        let q = usize::try_from(n).expect("small n") + 16;
        let log = AuditLog::open_with(&dir, q, AuditSync::None, opts(every)).expect("open log");
        for i in 0..n {
            log.record(
                "connection",
                serde_json::json!({"n": i, "workload": "svc-batch", "decision": "allow"}),
            )
            .expect("record queued");
        }
        assert!(log.flush(Duration::from_secs(60)), "flush timed out");
        drop(log);
        let pk = key::read_public(&keys_dir(&dir).join(key::PUB_FILE)).expect("public key");
        (dir, pk)
    }

    pub fn lines(dir: &Path) -> Vec<String> {
        std::fs::read_to_string(dir.join(LOG_FILE))
            .expect("read log")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn parse(line: &str) -> Map<String, Value> {
        match serde_json::from_str(line) {
            Ok(Value::Object(m)) => m,
            other => panic!("expected a JSON object, got {other:?}: {line}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc3339_known_values() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123456Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn records_are_chained_json_lines() {
        let tmp = TempDir::new("lines");
        let dir = tmp.0.join("audit");
        let log = AuditLog::open(&dir, 64, AuditSync::None).expect("open");
        log.record("test", json!({"a": 1, "seq": 999, "hash": "forged"}))
            .expect("queued");
        log.record("test", json!({"a": 2})).expect("queued");
        assert!(log.flush(Duration::from_secs(5)), "flush");
        let recs: Vec<_> = lines(&dir).iter().map(|l| parse(l)).collect();
        let events: Vec<&str> = recs
            .iter()
            .map(|r| r["event"].as_str().expect("event"))
            .collect();
        assert_eq!(events, ["audit_key_created", "test", "test", "checkpoint"]);
        assert_eq!(recs[0]["prev_hash"], GENESIS);
        for (i, r) in recs.iter().enumerate() {
            assert_eq!(r["seq"], i as u64, "seq is assigned by the writer: {r:?}");
            assert_eq!(r["schema"], SCHEMA_VERSION);
            let id = r["event_id"].as_str().expect("event_id");
            assert_eq!((id.len(), &id[14..15]), (36, "7"), "UUIDv7: {id}");
            if i > 0 {
                assert_eq!(r["prev_hash"], recs[i - 1]["hash"]);
            }
        }
        assert_eq!(recs[1]["a"], 1);
        assert_eq!(recs[3]["head_seq"], 2);
        assert_eq!(recs[3]["head_hash"], recs[2]["hash"]);
        assert_eq!(log.written(), 4);
    }

    #[test]
    fn reopening_after_a_torn_tail_continues_the_chain() {
        let tmp = TempDir::new("torn");
        let (dir, pk) = write_log(&tmp.0, 20, 8);
        let before = lines(&dir);
        let last = parse(before.last().expect("a record"));
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join(LOG_FILE))
            .and_then(|mut f| f.write_all(b"{\"agent_version\":\"0.1.0\",\"ev"))
            .expect("append torn line");
        let torn_line = before.len() as u64 + 1;
        // As the crash left it: the torn record is reported, everything before it verified.
        let r = verify::verify(&dir, Some(&pk));
        let p = r.problem.clone().expect("a torn tail is reported");
        assert_eq!(
            (p.class, p.line, p.seq),
            (
                verify::TamperClass::Truncated,
                torn_line,
                Some(last["seq"].as_u64().expect("seq") + 1)
            ),
            "{r}"
        );
        assert_eq!(r.last_seq, last["seq"].as_u64(), "{r}");

        let log = AuditLog::open_with(&dir, 64, AuditSync::None, opts(8)).expect("reopen");
        log.record("after_restart", json!({})).expect("queued");
        assert!(log.flush(Duration::from_secs(5)), "flush");
        drop(log);
        let after = lines(&dir);
        let next = parse(&after[before.len() + 1]);
        assert_eq!(next["event"], "after_restart");
        assert_eq!(next["seq"], last["seq"].as_u64().expect("seq") + 1);
        assert_eq!(next["prev_hash"], last["hash"]);
        let r = verify::verify(&dir, Some(&pk));
        assert!(r.ok(), "{r}");
        assert_eq!(r.torn, [torn_line], "{r}");
        assert_eq!(r.unsigned_tail, 0, "{r}");
        assert_eq!(r.records, after.len() as u64 - 1, "{r}");
    }

    #[test]
    fn an_unsigned_tail_left_by_a_crash_is_signed_after_restart() {
        let tmp = TempDir::new("crash-tail");
        let (dir, pk) = write_log(&tmp.0, 5, 100);
        let mut l = lines(&dir);
        l.pop(); // the final checkpoint, as if the agent died before writing it
        std::fs::write(
            dir.join(LOG_FILE),
            l.iter().map(|x| format!("{x}\n")).collect::<String>(),
        )
        .expect("rewrite log");
        let r = verify::verify(&dir, Some(&pk));
        assert_eq!(
            (r.ok(), r.checkpoints, r.unsigned_tail),
            (true, 0, 6),
            "{r}"
        );
        let log = AuditLog::open(&dir, 16, AuditSync::None).expect("reopen");
        assert!(log.flush(Duration::from_secs(5)), "flush");
        let r = verify::verify(&dir, Some(&pk));
        assert!(r.ok(), "{r}");
        assert_eq!(
            (r.checkpoints, r.unsigned_tail, r.last_signed_seq),
            (1, 0, Some(5)),
            "{r}"
        );
    }

    #[test]
    fn a_key_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = TempDir::new("keymode");
        let (dir, _) = write_log(&tmp.0, 1, 10);
        let key_file = keys_dir(&dir).join(key::KEY_FILE);
        let mode = std::fs::metadata(&key_file)
            .expect("key file")
            .permissions();
        assert_eq!(mode.mode() & 0o777, 0o600, "a new key is 0600");
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = match AuditLog::open(&dir, 16, AuditSync::None) {
            Err(e) => e,
            Ok(_) => panic!("a world-readable key must be refused"),
        };
        assert!(
            matches!(
                err,
                AuditError::Key(KeyError::Permissions { mode: 0o644, .. })
            ),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&key_file.display().to_string()) && msg.contains("0644"),
            "{msg}"
        );
    }

    #[test]
    fn checkpoints_every_n_records_on_a_timer_and_on_flush() {
        let tmp = TempDir::new("cp");
        let dir = tmp.0.join("audit");
        let opts = ChainOptions {
            checkpoint_every: 10,
            checkpoint_interval: Duration::from_secs(1),
        };
        let log = AuditLog::open_with(&dir, 64, AuditSync::None, opts).expect("open");
        for i in 0..24 {
            log.record("test", json!({"i": i})).expect("queued");
        }
        // No flush: the timer signs the tail of 5 records (24 + the key record = 25).
        let deadline = Instant::now() + Duration::from_secs(10);
        let count = |dir: &Path| {
            lines(dir)
                .iter()
                .filter(|l| parse(l)["event"] == "checkpoint")
                .count()
        };
        while count(&dir) < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let recs: Vec<_> = lines(&dir).iter().map(|l| parse(l)).collect();
        let heads: Vec<u64> = recs
            .iter()
            .filter(|r| r["event"] == "checkpoint")
            .map(|r| r["head_seq"].as_u64().expect("head_seq"))
            .collect();
        assert_eq!(heads, [9, 20, 26], "after 10, 10, then 5 records (timer)");
        log.record("test", json!({})).expect("queued");
        assert!(log.flush(Duration::from_secs(5)), "flush");
        let last = parse(lines(&dir).last().expect("a record"));
        assert_eq!(
            (last["event"].as_str(), last["head_seq"].as_u64()),
            (Some("checkpoint"), Some(28))
        );
        assert!(log.flush(Duration::from_secs(5)), "an idle flush");
        assert_eq!(count(&dir), 4, "nothing new to sign: no checkpoint");
    }

    #[test]
    fn reserved_events_are_refused_and_a_second_writer_is_locked_out() {
        let tmp = TempDir::new("reserved");
        let dir = tmp.0.join("audit");
        let log = AuditLog::open(&dir, 16, AuditSync::None).expect("open");
        assert!(matches!(
            log.record("checkpoint", json!({})),
            Err(AuditError::ReservedEvent(_))
        ));
        assert!(matches!(
            AuditLog::open(&dir, 16, AuditSync::None),
            Err(AuditError::Locked { .. })
        ));
    }

    #[test]
    fn a_log_from_before_chaining_is_continued_by_a_new_chain() {
        let tmp = TempDir::new("legacy");
        let dir = tmp.0.join("audit");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(
            dir.join(LOG_FILE),
            "{\"event\":\"agent_start\",\"schema\":1,\"seq\":0}\n{\"event\":\"agent_stop\",\"schema\":1,\"seq\":1}\n",
        )
        .expect("write schema 1 records");
        let log = AuditLog::open(&dir, 16, AuditSync::None).expect("open");
        log.record("test", json!({})).expect("queued");
        assert!(log.flush(Duration::from_secs(5)), "flush");
        let first = parse(&lines(&dir)[2]);
        assert_eq!(
            (first["seq"].as_u64(), first["prev_hash"].as_str()),
            (Some(2), Some(GENESIS))
        );
        let r = verify::verify(&dir, None);
        assert!(r.ok(), "{r}");
        assert_eq!(r.unchained, 2, "{r}");
        assert_eq!(r.first_seq, Some(2), "{r}");
    }
}
