//! Audit records: one JSON object per line under `<state_dir>/audit/`,
//! hash-chained and periodically signed, verifiable offline (`verify`).
//!
//! Writing is off the proxy's path: records go through a bounded channel to one
//! writer thread that appends, flushes and (by default) fsyncs per batch. If the
//! writer cannot write, the file system is nearly full, or the queue is full, the
//! log reports unhealthy and the proxy refuses new connections until it
//! recovers: no access without evidence.
//!
//! The writer thread alone gives each record its `seq`, `event_id`, `prev_hash`
//! and `hash` (see [`chain`]), so sequence order, file order and chain order are
//! the same. It continues the chain from the last complete record when the log is
//! reopened. Every `checkpoint_every` records, `checkpoint_interval` after the last
//! checkpoint if records were written since, on [`AuditLog::flush`], at each
//! rotation and when the last handle is dropped, it appends a `checkpoint` record
//! signing the chain head with the host key ([`key`]).
//!
//! The log is the live file `audit.jsonl` plus closed segments
//! `audit-<first seq>.jsonl` ([`segments`]): the writer renames the live file
//! into a segment when it reaches `rotate_bytes` or `rotate_age`, after signing
//! its end, and the chain continues in a new live file. Retention removes the
//! oldest segments by age or total size, after writing (and syncing) an
//! `audit_retention` record that names each one with its last hash, so that the
//! verifier can tell a log shortened by retention from one cut by hand.
//!
//! An exclusive lock on `audit.lock` in the directory keeps a second writer (the
//! CLI while the agent runs) from forking the chain.

pub mod bench;
mod chain;
pub mod export;
mod key;
pub mod segments;
pub mod time;

/// Lower-case hex of bytes (hashes, keys, signatures).
pub use chain::hex;
pub mod verify;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;
use serde_json::{Map, Value};

use self::chain::{CHECKPOINT_EVENT, EventIds, GENESIS, KEY_CREATED_EVENT};
use self::key::HostKey;
pub use self::key::KeyError;
use self::segments::RETENTION_EVENT;
use crate::config::{AgentConfig, AuditSync};

/// Version 2: records carry `event_id`, `prev_hash` and `hash`, and the log has
/// `checkpoint` records. Version 1 records (before chaining) have none of these.
pub const SCHEMA_VERSION: u32 = 2;

/// Name of the live log file in the audit directory.
pub const LOG_FILE: &str = segments::LIVE_FILE;

/// The writer's lock file in the audit directory. The lock is on a file of its
/// own, not on the live file, because the live file is renamed at rotation.
pub const LOCK_FILE: &str = "audit.lock";

/// Records per batch written (and fsynced) at most.
const MAX_BATCH: usize = 4096;

/// Within a batch, the writer writes (without syncing) whenever this much is
/// buffered, so that what it copies to the kernel is still in the CPU cache.
const WRITE_CHUNK: usize = 256 * 1024;

/// After waking for a record, the writer waits this long before taking the
/// batch, so that records arriving together are written together and the
/// threads that queue them find it awake (no wake-up system call per record).
/// A record reaches the file at most this much later. Not when this many
/// records are already waiting (the writer is behind: no point in waiting).
const LINGER: Duration = Duration::from_millis(1);
const LINGER_BELOW: usize = 256;

/// How long `open` waits for another writer of the same log to finish.
const LOCK_WAIT: Duration = Duration::from_secs(if cfg!(test) { 1 } else { 5 });

/// The idle writer wakes up this often to check free space and the age of the live file.
const TICK: Duration = Duration::from_secs(1);

/// Free space is checked at most this often while records are being written.
const SPACE_CHECK_EVERY: Duration = Duration::from_millis(250);

/// Retention is checked at start, after every rotation and this often.
const RETENTION_CHECK_EVERY: Duration = Duration::from_secs(60);

/// After a failed rotation, the writer tries again this much later.
const ROTATE_RETRY: Duration = Duration::from_secs(60);

/// Events only the writer itself writes.
const RESERVED_EVENTS: [&str; 3] = [CHECKPOINT_EVENT, KEY_CREATED_EVENT, RETENTION_EVENT];

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
    #[error("audit record `{event}` could not be serialised: {source}")]
    Serialize {
        event: String,
        source: serde_json::Error,
    },
}

/// How the writer signs, rotates and prunes the log, and how much free space
/// it needs to report healthy.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// A checkpoint after this many records since the last one (0 counts as 1).
    pub checkpoint_every: u64,
    /// A checkpoint this long after the last one, if records were written since.
    pub checkpoint_interval: Duration,
    /// Rotate the live file once it holds this many bytes (0: never by size).
    pub rotate_bytes: u64,
    /// Rotate the live file once its first record is this old (zero: never by
    /// age). An empty live file is never rotated.
    pub rotate_age: Duration,
    /// Remove segments whose last record is older than this (zero: keep forever).
    pub retain_age: Duration,
    /// Remove the oldest segments while the log's files total more than this
    /// (0: no limit).
    pub retain_bytes: u64,
    /// Report unhealthy while the file system holding the log has less free space
    /// than this (0: only when a write fails).
    pub min_free_bytes: u64,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(10),
            rotate_bytes: 64 << 20,
            rotate_age: Duration::from_secs(86_400),
            retain_age: Duration::ZERO,
            retain_bytes: 0,
            min_free_bytes: 1 << 20,
        }
    }
}

impl AuditOptions {
    /// The settings of `agent.yaml` (`audit_rotate_bytes`, `audit_rotate_secs`,
    /// `audit_retain_secs`, `audit_retain_bytes`, `audit_min_free_bytes`).
    pub fn from_config(cfg: &AgentConfig) -> Self {
        Self {
            rotate_bytes: cfg.audit_rotate_bytes,
            rotate_age: Duration::from_secs(cfg.audit_rotate_secs),
            retain_age: Duration::from_secs(cfg.audit_retain_secs),
            retain_bytes: cfg.audit_retain_bytes,
            min_free_bytes: cfg.audit_min_free_bytes,
            ..Self::default()
        }
    }
}

enum Msg {
    Record(chain::Prepared),
    /// Checkpoint now (if anything is unsigned), then acknowledge.
    Flush(Sender<()>),
}

#[derive(Default)]
struct Stats {
    written: AtomicU64,
    dropped: AtomicU64,
    /// `seq` of the next record to be written (all before it are in the file).
    next_seq: AtomicU64,
    /// All records before this `seq` are on disk as `audit_sync` promises
    /// (synced with `batch`, written with `none`): what export may send.
    durable_next_seq: AtomicU64,
}

/// Whether the log accepts records, and why not.
struct Health {
    healthy: AtomicBool,
    problem: Mutex<Option<String>>,
}

impl Health {
    fn new() -> Self {
        Self {
            healthy: AtomicBool::new(true),
            problem: Mutex::new(None),
        }
    }

    fn set_unhealthy(&self, why: String) {
        let mut p = self.problem.lock().unwrap_or_else(|e| e.into_inner());
        *p = Some(why);
        self.healthy.store(false, Ordering::Relaxed);
    }

    /// Returns true if this changed the state.
    fn set_healthy(&self) -> bool {
        if self.healthy.load(Ordering::Relaxed) {
            return false;
        }
        let mut p = self.problem.lock().unwrap_or_else(|e| e.into_inner());
        *p = None;
        self.healthy.store(true, Ordering::Relaxed);
        true
    }

    fn problem(&self) -> Option<String> {
        if self.healthy.load(Ordering::Relaxed) {
            return None;
        }
        self.problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .or_else(|| Some("unknown".into()))
    }
}

/// Handle to the audit log; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: Sender<Msg>,
    health: Arc<Health>,
    stats: Arc<Stats>,
    host: Arc<str>,
    /// The live file.
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
    /// with the default checkpoint, rotation and retention settings.
    #[cfg(test)]
    pub fn open(dir: &Path, queue: usize, sync: AuditSync) -> Result<Self, AuditError> {
        Self::open_with(dir, queue, sync, AuditOptions::default())
    }

    /// Opens the log in the configuration's audit directory with every audit
    /// setting of the configuration.
    pub fn open_config(cfg: &AgentConfig) -> Result<Self, AuditError> {
        Self::open_with(
            &cfg.audit_dir(),
            cfg.audit_queue,
            cfg.audit_sync,
            AuditOptions::from_config(cfg),
        )
    }

    /// Opens the log as [`AuditLog::open`] does, with the given options.
    /// Loads (or creates) the signing key in [`keys_dir`] and refuses one that
    /// others may read.
    pub fn open_with(
        dir: &Path,
        queue: usize,
        sync: AuditSync,
        opts: AuditOptions,
    ) -> Result<Self, AuditError> {
        let (log, w) = Self::open_parts(dir, queue, sync, opts)?;
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || w.run())
            .map_err(|source| AuditError::Open {
                path: log.path.clone(),
                source,
            })?;
        Ok(log)
    }

    /// The handle and the writer, not started (the benchmark drives the writer
    /// on its own thread).
    fn open_parts(
        dir: &Path,
        queue: usize,
        sync: AuditSync,
        opts: AuditOptions,
    ) -> Result<(Self, Writer), AuditError> {
        std::fs::create_dir_all(dir).map_err(|source| AuditError::Open {
            path: dir.to_owned(),
            source,
        })?;
        let lock = lock_log(&dir.join(LOCK_FILE))?;
        let path = dir.join(LOG_FILE);
        let mut file = open_append(&path)?;
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
        // The live file may hold no record yet (a crash right after rotation):
        // the chain then continues from the newest segment.
        let head = match chain_head(&path).map_err(open_err)? {
            Some(h) => Some(h),
            None => match segments::list(dir)
                .map_err(|source| AuditError::Open {
                    path: dir.to_owned(),
                    source,
                })?
                .last()
            {
                Some(seg) => chain_head(&seg.path).map_err(|source| AuditError::Open {
                    path: seg.path.clone(),
                    source,
                })?,
                None => None,
            },
        };
        let key = HostKey::load_or_create(&keys_dir(dir))?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| AuditError::Random(e.to_string()))?;
        let meta = file.metadata().map_err(open_err)?;
        let seg_first_seq = segments::first_seq(&path).map_err(open_err)?;

        let (tx, rx) = bounded(queue);
        let health = Arc::new(Health::new());
        let stats = Arc::new(Stats::default());
        let host: Arc<str> = hostname().into();
        let (next_seq, head, unsigned) = head.map_or((0, GENESIS.to_string(), 0), |h| {
            (h.seq + 1, h.hash, u64::from(!h.signed))
        });
        stats.next_seq.store(next_seq, Ordering::Relaxed);
        stats.durable_next_seq.store(next_seq, Ordering::Relaxed);
        let now = Instant::now();
        let w = Writer {
            rx,
            file,
            _lock: lock,
            dir: dir.to_owned(),
            path: path.clone(),
            sync,
            health: health.clone(),
            stats: stats.clone(),
            host: host.clone(),
            key,
            ids: EventIds::new(seed),
            every: opts.checkpoint_every.max(1),
            next_seq,
            head,
            since_checkpoint: unsigned,
            last_checkpoint: now,
            buf: Vec::with_capacity(WRITE_CHUNK + 64 * 1024),
            unsynced: false,
            scratch: Vec::with_capacity(4096),
            batch_records: 0,
            seg_first_seq: seg_first_seq.unwrap_or(next_seq),
            seg_bytes: meta.len(),
            // Age counts from the live file's creation (its first record, once
            // the writer made it); a file with no record yet has no age.
            seg_started: seg_first_seq
                .map(|_| meta.created().unwrap_or_else(|_| SystemTime::now())),
            rotate_after: now,
            space_checked: None,
            space_problem: None,
            write_problem: None,
            next_retention: now,
            opts,
        };
        let log = Self {
            tx,
            health,
            stats,
            host,
            path,
        };
        Ok((log, w))
    }

    pub fn healthy(&self) -> bool {
        self.health.healthy.load(Ordering::Relaxed)
    }

    /// Why the log is unhealthy (`None` while it is healthy).
    pub fn problem(&self) -> Option<String> {
        self.health.problem()
    }

    /// Queues a record. `event` names its type; `body` (a struct or JSON object)
    /// is merged into the envelope. Envelope and chain fields cannot be
    /// overridden by the body.
    pub fn record(&self, event: &str, body: impl Serialize + 'static) -> Result<(), AuditError> {
        if RESERVED_EVENTS.contains(&event) {
            return Err(AuditError::ReservedEvent(event.to_string()));
        }
        let prepared = self.prepare(event, body)?;
        match self.tx.try_send(Msg::Record(prepared)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                if self.healthy() {
                    self.health
                        .set_unhealthy("the writer is behind: its queue is full".into());
                }
                Err(AuditError::Unavailable("queue full"))
            }
            Err(TrySendError::Disconnected(_)) => {
                self.health
                    .set_unhealthy("the writer thread has stopped".into());
                Err(AuditError::Unavailable("writer stopped"))
            }
        }
    }

    /// The record in canonical form, made here, on the caller's thread (chain
    /// fields in the body are left out): the writer only numbers, links and hashes.
    fn prepare(
        &self,
        event: &str,
        body: impl Serialize + 'static,
    ) -> Result<chain::Prepared, AuditError> {
        // A body that is already a JSON value (most are) is used as it is,
        // not copied through the serialiser.
        let mut slot = Some(body);
        let value = match (&mut slot as &mut dyn std::any::Any).downcast_mut::<Option<Value>>() {
            Some(v) => v.take(),
            None => slot.map(serde_json::to_value).and_then(Result::ok),
        };
        let mut rec = match value {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        envelope(&mut rec, &self.host, event);
        chain::prepare(&rec).map_err(|source| AuditError::Serialize {
            event: event.to_string(),
            source,
        })
    }

    /// Records written to the file, checkpoints included.
    pub fn written(&self) -> u64 {
        self.stats.written.load(Ordering::Relaxed)
    }

    /// `seq` of the newest record in the file (`None` while the log is empty).
    pub fn head_seq(&self) -> Option<u64> {
        self.stats.next_seq.load(Ordering::Relaxed).checked_sub(1)
    }

    /// Every record with a lower `seq` is durable (see `audit_sync`).
    pub fn durable_next_seq(&self) -> u64 {
        self.stats.durable_next_seq.load(Ordering::Relaxed)
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

/// Exclusive `flock` on the lock file for the writer's lifetime. Waits a little
/// for a writer that is finishing (its last handle was just dropped).
fn lock_log(path: &Path) -> Result<Flock<File>, AuditError> {
    let mut f = open_append(path)?;
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
                    path: path.with_file_name(LOG_FILE),
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

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn to_u64<T: TryInto<u64>>(v: T) -> u64 {
    v.try_into().unwrap_or(u64::MAX)
}

/// Free bytes on the file system holding `file`, as the agent's user may use
/// them (root may use the blocks reserved for root).
fn free_bytes(file: &File) -> nix::Result<u64> {
    let s = nix::sys::statvfs::fstatvfs(file)?;
    let blocks = if nix::unistd::geteuid().is_root() {
        to_u64(s.blocks_free())
    } else {
        to_u64(s.blocks_available())
    };
    Ok(blocks.saturating_mul(to_u64(s.fragment_size())))
}

struct Writer {
    rx: Receiver<Msg>,
    file: File,
    _lock: Flock<File>,
    dir: PathBuf,
    /// The live file.
    path: PathBuf,
    sync: AuditSync,
    health: Arc<Health>,
    stats: Arc<Stats>,
    host: Arc<str>,
    key: HostKey,
    ids: EventIds,
    every: u64,
    /// `seq` of the next record.
    next_seq: u64,
    /// `hash` of the last record ([`GENESIS`] before the first).
    head: String,
    /// Records since the last checkpoint.
    since_checkpoint: u64,
    last_checkpoint: Instant,
    /// The batch being built: sealed lines.
    buf: Vec<u8>,
    /// Written but not synced yet (`audit_sync: batch` only).
    unsynced: bool,
    scratch: Vec<u8>,
    batch_records: u64,
    /// `seq` the live file starts with (its name once rotated).
    seg_first_seq: u64,
    /// Bytes in the live file (written, not counting `buf`).
    seg_bytes: u64,
    /// When the first record of the live file was written (`None`: none yet).
    seg_started: Option<SystemTime>,
    /// No rotation before this (set after a failed one).
    rotate_after: Instant,
    space_checked: Option<Instant>,
    /// Set while free space is below `min_free_bytes`.
    space_problem: Option<String>,
    /// Set while writing fails.
    write_problem: Option<String>,
    next_retention: Instant,
    opts: AuditOptions,
}

impl Writer {
    /// First things after opening: the `audit_key_created` record for a new key,
    /// then free space, rotation and retention.
    fn start(&mut self) {
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
        self.housekeeping(true);
    }

    /// One queued record into the batch, with the checkpoint and the rotation
    /// it makes due.
    fn take(&mut self, rec: &chain::Prepared) {
        self.append(rec);
        if self.buf.len() >= WRITE_CHUNK {
            // Out while the bytes are still in the CPU cache; synced with the batch.
            self.write_out(false);
        }
        self.since_checkpoint += 1;
        if self.since_checkpoint >= self.every {
            self.checkpoint();
        }
        if self.opts.rotate_bytes > 0
            && self.seg_bytes + to_u64(self.buf.len()) >= self.opts.rotate_bytes
        {
            self.rotate("size");
        }
    }

    fn run(mut self) {
        self.start();
        loop {
            let mut wait = TICK;
            if self.since_checkpoint > 0 {
                wait = wait.min(
                    self.opts
                        .checkpoint_interval
                        .saturating_sub(self.last_checkpoint.elapsed()),
                );
            }
            let first = match self.rx.recv_timeout(wait) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if first.is_some() && self.rx.len() < LINGER_BELOW {
                std::thread::sleep(LINGER);
            }
            let mut acks = Vec::new();
            let batch = first
                .into_iter()
                .chain(self.rx.try_iter().take(MAX_BATCH - 1))
                .collect::<Vec<_>>();
            let busy = !batch.is_empty();
            for m in batch {
                match m {
                    Msg::Record(rec) => self.take(&rec),
                    Msg::Flush(ack) => {
                        self.checkpoint();
                        acks.push(ack);
                    }
                }
            }
            if self.last_checkpoint.elapsed() >= self.opts.checkpoint_interval {
                self.checkpoint();
            }
            self.write_batch();
            // Before the acknowledgements: a flush also waits for the rotation
            // and retention this batch made due.
            self.housekeeping(!busy);
            for a in acks {
                let _ = a.send(());
            }
        }
        // Every handle is gone: sign what is left.
        self.checkpoint();
        self.write_batch();
    }

    /// Between batches: free space, rotation by age, retention, health.
    /// `idle`: woken by the tick rather than by records.
    fn housekeeping(&mut self, idle: bool) {
        if idle
            || self
                .space_checked
                .is_none_or(|t| t.elapsed() >= SPACE_CHECK_EVERY)
        {
            self.check_space();
        }
        if !self.opts.rotate_age.is_zero()
            && self.seg_started.is_some_and(|t| {
                SystemTime::now()
                    .duration_since(t)
                    .is_ok_and(|age| age >= self.opts.rotate_age)
            })
        {
            self.rotate("age");
        }
        if Instant::now() >= self.next_retention {
            self.retention();
        }
        self.refresh_health();
    }

    fn check_space(&mut self) {
        self.space_checked = Some(Instant::now());
        let min = self.opts.min_free_bytes;
        if min == 0 {
            self.space_problem = None;
            return;
        }
        match free_bytes(&self.file) {
            Ok(free) if free < min => {
                if self.space_problem.is_none() {
                    tracing::error!(
                        dir = %self.dir.display(),
                        free_bytes = free,
                        min_free_bytes = min,
                        "audit file system nearly full; refusing new connections until space is freed"
                    );
                }
                self.space_problem = Some(format!(
                    "the file system holding {} has {free} bytes free, less than \
                     audit_min_free_bytes ({min}): free space or enlarge it",
                    self.dir.display()
                ));
            }
            Ok(_) => {
                if self.space_problem.take().is_some() {
                    tracing::info!(dir = %self.dir.display(), "audit file system has free space again");
                }
            }
            // The space cannot be measured: writes themselves still tell.
            Err(e) => tracing::debug!(error = %e, "statvfs on the audit log failed"),
        }
    }

    fn refresh_health(&self) {
        let problem = self.write_problem.as_ref().or(self.space_problem.as_ref());
        match problem {
            Some(p) => {
                if self.health.problem().as_ref() != Some(p) {
                    self.health.set_unhealthy(p.clone());
                }
            }
            None => {
                let half = self.rx.capacity().unwrap_or(usize::MAX) / 2;
                if self.rx.len() < half && self.health.set_healthy() {
                    tracing::info!(path = %self.path.display(), "audit log healthy again; accepting connections");
                }
            }
        }
    }

    /// Seals a record into the batch: gives it its chain fields and moves the head.
    fn append(&mut self, rec: &chain::Prepared) {
        let id = self.ids.next();
        rec.seal(
            self.next_seq,
            &id,
            &mut self.head,
            &mut self.scratch,
            &mut self.buf,
        );
        self.buf.push(b'\n');
        if self.seg_started.is_none() {
            self.seg_started = Some(SystemTime::now());
        }
        self.next_seq += 1;
        self.batch_records += 1;
    }

    /// A record made by the writer itself.
    fn append_new(&mut self, event: &str, mut body: Map<String, Value>) -> bool {
        envelope(&mut body, &self.host, event);
        match chain::prepare(&body) {
            Ok(p) => {
                self.append(&p);
                true
            }
            Err(e) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(event, error = %e, "audit record could not be serialised; dropped");
                false
            }
        }
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

    /// Closes the live file into the segment `audit-<first seq>.jsonl`: signs its
    /// end, writes it out, renames it, and starts a new live file in which the
    /// chain continues. A crash at any point leaves a log that reopens and
    /// verifies: the chain head is found in the live file or, if it holds no
    /// record yet, in the newest segment.
    fn rotate(&mut self, why: &'static str) {
        if self.next_seq <= self.seg_first_seq || Instant::now() < self.rotate_after {
            return; // nothing in the live file yet, or a failed attempt just now
        }
        self.checkpoint();
        self.write_batch();
        let name = segments::segment_name(self.seg_first_seq);
        let seg = self.dir.join(&name);
        let fail = |w: &mut Self, what: String| {
            tracing::error!(path = %w.path.display(), segment = %seg.display(), error = %what, "audit log rotation failed; the live file keeps growing, retrying in a minute");
            w.rotate_after = Instant::now() + ROTATE_RETRY;
        };
        if seg.exists() {
            return fail(self, "a file with the segment's name already exists".into());
        }
        if let Err(e) = std::fs::rename(&self.path, &seg) {
            return fail(self, e.to_string());
        }
        let file = match open_append(&self.path) {
            Ok(f) => f,
            Err(e) => {
                // Put the live file back; if even that fails, the writer keeps
                // appending to the open file under its segment name, which
                // verifies the same.
                let _ = std::fs::rename(&seg, &self.path);
                return fail(self, e.to_string());
            }
        };
        sync_dir(&self.dir);
        self.file = file;
        tracing::info!(
            segment = %seg.display(),
            first_seq = self.seg_first_seq,
            last_seq = self.next_seq - 1,
            bytes = self.seg_bytes,
            reason = why,
            "audit log rotated"
        );
        self.seg_first_seq = self.next_seq;
        self.seg_bytes = 0;
        self.seg_started = None;
        self.next_retention = Instant::now();
    }

    /// Removes the segments retention no longer keeps, oldest first. Each
    /// removal is announced by an `audit_retention` record (the segment's name,
    /// seq range, last hash), signed and synced before the file is removed, so
    /// the verifier can start the remaining chain where the removed one ended.
    fn retention(&mut self) {
        self.next_retention = Instant::now() + RETENTION_CHECK_EVERY;
        if self.opts.retain_age.is_zero() && self.opts.retain_bytes == 0 {
            return;
        }
        let segs = match segments::list(&self.dir) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "cannot list audit segments for retention");
                return;
            }
        };
        // Only segments before the live file: never one the writer is using.
        let segs: Vec<_> = segs
            .into_iter()
            .filter(|s| s.first_seq < self.seg_first_seq)
            .collect();
        let live = self.seg_bytes + to_u64(self.buf.len());
        let plan = segments::plan_retention(
            &segs,
            live,
            SystemTime::now(),
            self.opts.retain_age,
            self.opts.retain_bytes,
        );
        if plan.is_empty() {
            return;
        }
        let mut remove = Vec::new();
        for (i, reason) in plan {
            let s = &segs[i];
            let head = match chain_head(&s.path) {
                Ok(h) => h,
                Err(e) => {
                    tracing::error!(segment = %s.path.display(), error = %e, "cannot read audit segment for retention; keeping it and the ones after it");
                    break;
                }
            };
            let mut rec = Map::new();
            rec.insert("removed_file".into(), s.name().into());
            rec.insert("first_seq".into(), s.first_seq.into());
            if let Some(h) = &head {
                rec.insert("last_seq".into(), h.seq.into());
                rec.insert("last_hash".into(), h.hash.clone().into());
            }
            rec.insert("bytes".into(), s.bytes.into());
            rec.insert("last_modified".into(), rfc3339(s.modified).into());
            rec.insert("reason".into(), reason.as_str().into());
            match reason {
                segments::Reason::Age => rec.insert(
                    "audit_retain_secs".into(),
                    self.opts.retain_age.as_secs().into(),
                ),
                segments::Reason::Size => {
                    rec.insert("audit_retain_bytes".into(), self.opts.retain_bytes.into())
                }
            };
            if self.append_new(RETENTION_EVENT, rec) {
                self.since_checkpoint += 1;
                remove.push(s);
            }
        }
        if remove.is_empty() {
            return;
        }
        self.checkpoint();
        self.write_batch();
        // The records must be on disk before the evidence they describe goes.
        if self.sync == AuditSync::None
            && let Err(e) = self.file.sync_data()
        {
            tracing::error!(path = %self.path.display(), error = %e, "cannot sync the audit log; retention removes nothing this time");
            return;
        }
        for s in remove {
            match std::fs::remove_file(&s.path) {
                Ok(()) => tracing::info!(
                    segment = %s.path.display(),
                    bytes = s.bytes,
                    "audit segment removed by retention"
                ),
                Err(e) => {
                    tracing::error!(segment = %s.path.display(), error = %e, "cannot remove audit segment");
                    break;
                }
            }
        }
        sync_dir(&self.dir);
    }

    /// Writes the batch and, with `audit_sync: batch`, syncs it, retrying until
    /// it is on disk: a record is never dropped once queued.
    fn write_batch(&mut self) {
        self.write_out(true);
    }

    /// Writes what is buffered, retrying until it is written (and, if `sync`,
    /// synced per `audit_sync`). A partial write resumes where it stopped, so a
    /// retry never duplicates a record.
    fn write_out(&mut self, sync: bool) {
        if self.buf.is_empty() && !(sync && self.unsynced) {
            return;
        }
        let mut done = 0;
        loop {
            match self.write_from(&mut done, sync) {
                Ok(()) => {
                    self.stats
                        .written
                        .fetch_add(self.batch_records, Ordering::Relaxed);
                    self.stats.next_seq.store(self.next_seq, Ordering::Relaxed);
                    if sync || self.sync == AuditSync::None {
                        self.stats
                            .durable_next_seq
                            .store(self.next_seq, Ordering::Relaxed);
                    }
                    if self.write_problem.take().is_some() {
                        tracing::info!(path = %self.path.display(), "audit log writable again");
                        self.check_space();
                    }
                    self.refresh_health();
                    break;
                }
                Err(e) => {
                    let why = format!("cannot write {}: {e}", self.path.display());
                    if self.write_problem.as_ref() != Some(&why) {
                        tracing::error!(path = %self.path.display(), error = %e, "audit write failed; refusing new connections until it recovers");
                    }
                    self.write_problem = Some(why);
                    self.refresh_health();
                    std::thread::sleep(Duration::from_millis(500));
                    if let Ok(f) = open_append(&self.path) {
                        self.file = f;
                    }
                }
            }
        }
        self.seg_bytes += to_u64(self.buf.len());
        self.buf.clear();
        self.batch_records = 0;
    }

    fn write_from(&mut self, done: &mut usize, sync: bool) -> std::io::Result<()> {
        while *done < self.buf.len() {
            match self.file.write(&self.buf[*done..]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    *done += n;
                    self.unsynced = self.sync == AuditSync::Batch;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if sync && self.unsynced {
            self.file.sync_data()?;
            self.unsynced = false;
        }
        Ok(())
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

    /// Checkpoints every `every` records (and not on a timer), no rotation.
    pub fn opts(every: u64) -> AuditOptions {
        AuditOptions {
            checkpoint_every: every,
            checkpoint_interval: Duration::from_secs(3600),
            rotate_bytes: 0,
            rotate_age: Duration::ZERO,
            ..AuditOptions::default()
        }
    }

    /// Writes `n` connection-like records to `<root>/audit` and returns the
    /// audit directory and the host's public key.
    pub fn write_log(root: &Path, n: u64, every: u64) -> (PathBuf, [u8; 32]) {
        write_log_with(root, n, opts(every))
    }

    /// As [`write_log`], with the given options (rotation, retention).
    pub fn write_log_with(root: &Path, n: u64, o: AuditOptions) -> (PathBuf, [u8; 32]) {
        let dir = root.join("audit");
        let q = usize::try_from(n).expect("small n") + 16;
        let log = AuditLog::open_with(&dir, q, AuditSync::None, o).expect("open log");
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

    /// The lines of every file of the log in `dir`, in chain order, with the
    /// file each is in.
    pub fn all_lines(dir: &Path) -> Vec<(PathBuf, String)> {
        let mut out = Vec::new();
        for f in segments::log_files(dir).expect("list log files") {
            let text = std::fs::read_to_string(&f).expect("read log file");
            out.extend(text.lines().map(|l| (f.clone(), l.to_owned())));
        }
        out
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
        assert_eq!(r.torn, [(dir.join(LOG_FILE), torn_line)], "{r}");
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
        let opts = AuditOptions {
            checkpoint_every: 10,
            checkpoint_interval: Duration::from_secs(1),
            ..AuditOptions::default()
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
        for event in ["checkpoint", "audit_key_created", "audit_retention"] {
            assert!(
                matches!(
                    log.record(event, json!({})),
                    Err(AuditError::ReservedEvent(_))
                ),
                "{event} must be refused"
            );
        }
        assert!(matches!(
            AuditLog::open(&dir, 16, AuditSync::None),
            Err(AuditError::Locked { .. })
        ));
    }

    fn file_lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .expect("read log file")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Checkpoints every `every` records, segments of about 16 KiB.
    fn small_segments(every: u64) -> AuditOptions {
        AuditOptions {
            rotate_bytes: 16 * 1024,
            ..opts(every)
        }
    }

    #[test]
    fn rotation_by_size_closes_signed_segments_and_the_chain_continues() {
        let tmp = TempDir::new("rotate");
        let (dir, pk) = write_log_with(&tmp.0, 400, small_segments(100));
        let segs = segments::list(&dir).expect("list segments");
        assert!(
            segs.len() >= 3,
            "400 records make several segments: {segs:?}"
        );
        let mut prev: Option<Map<String, Value>> = None;
        for s in &segs {
            let l = file_lines(&s.path);
            let (first, last) = (parse(&l[0]), parse(l.last().expect("a record")));
            assert_eq!(
                first["seq"], s.first_seq,
                "named after its first seq: {s:?}"
            );
            assert_eq!(last["event"], "checkpoint", "a segment ends signed: {s:?}");
            assert_eq!(
                last["head_seq"].as_u64(),
                first["seq"].as_u64().map(|f| f + l.len() as u64 - 2)
            );
            assert!(
                (16 * 1024..16 * 1024 + 2048).contains(&s.bytes),
                "rotated at the size: {s:?}"
            );
            if let Some(p) = prev {
                assert_eq!(first["prev_hash"], p["hash"], "chained across files");
                assert_eq!(first["seq"].as_u64(), p["seq"].as_u64().map(|x| x + 1));
            }
            prev = Some(last);
        }
        let live = lines(&dir);
        let first_live = parse(&live[0]);
        assert_eq!(first_live["prev_hash"], prev.expect("a segment")["hash"]);
        let r = verify::verify(&dir, Some(&pk));
        assert!(r.ok(), "{r}");
        assert_eq!(r.files.len(), segs.len() + 1, "{r}");
        assert_eq!(r.records, all_lines(&dir).len() as u64, "{r}");
        assert_eq!((r.first_seq, r.unsigned_tail), (Some(0), 0), "{r}");
        assert!(r.retention_start.is_none(), "{r}");
        assert!(r.to_string().contains("files:"), "{r}");
    }

    #[test]
    fn a_crash_between_rename_and_new_live_file_continues_from_the_segment() {
        let tmp = TempDir::new("rotate-crash");
        let (dir, pk) = write_log_with(&tmp.0, 100, small_segments(100));
        // As if the writer died right after renaming the live file.
        let live_first = segments::first_seq(&dir.join(LOG_FILE))
            .expect("read live file")
            .expect("live file has records");
        let last = parse(lines(&dir).last().expect("a record"));
        std::fs::rename(
            dir.join(LOG_FILE),
            dir.join(segments::segment_name(live_first)),
        )
        .expect("rename");
        let log =
            AuditLog::open_with(&dir, 16, AuditSync::None, small_segments(100)).expect("reopen");
        log.record("after_crash", json!({})).expect("queued");
        assert!(log.flush(Duration::from_secs(5)), "flush");
        drop(log);
        let first = parse(&lines(&dir)[0]);
        assert_eq!(first["event"], "after_crash");
        assert_eq!(first["prev_hash"], last["hash"]);
        assert_eq!(first["seq"].as_u64(), last["seq"].as_u64().map(|s| s + 1));
        let r = verify::verify(&dir, Some(&pk));
        assert!(r.ok(), "{r}");
    }

    #[test]
    fn rotation_by_age_counts_from_the_first_record() {
        let tmp = TempDir::new("rotate-age");
        let dir = tmp.0.join("audit");
        let o = AuditOptions {
            rotate_age: Duration::from_secs(1),
            ..opts(100)
        };
        let log = AuditLog::open_with(&dir, 64, AuditSync::None, o).expect("open");
        for i in 0..3 {
            log.record("test", json!({"i": i})).expect("queued");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while segments::list(&dir).expect("list").is_empty() {
            assert!(Instant::now() < deadline, "no rotation by age within 10 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        // An empty live file is not rotated, however old.
        std::thread::sleep(Duration::from_millis(2500));
        assert_eq!(segments::list(&dir).expect("list").len(), 1);
        let seg = &segments::list(&dir).expect("list")[0];
        assert_eq!(
            parse(file_lines(&seg.path).last().expect("a record"))["event"],
            "checkpoint"
        );
        log.record("test", json!({"i": 3})).expect("queued");
        assert!(log.flush(Duration::from_secs(5)), "flush");
        drop(log);
        let r = verify::verify(&dir, None);
        assert!(r.ok(), "{r}");
        assert_eq!(r.files.len(), 2, "{r}");
    }

    #[test]
    fn retention_by_size_removes_oldest_segments_and_audits_each_removal() {
        let tmp = TempDir::new("retain-size");
        let o = AuditOptions {
            retain_bytes: 48 * 1024,
            ..small_segments(100)
        };
        let (dir, pk) = write_log_with(&tmp.0, 600, o);
        let segs = segments::list(&dir).expect("list");
        assert!(
            segs[0].first_seq > 0,
            "the oldest segments are gone: {segs:?}"
        );
        let total: u64 = segments::log_files(&dir)
            .expect("files")
            .iter()
            .map(|f| std::fs::metadata(f).expect("stat").len())
            .sum();
        assert!(total <= 52 * 1024, "{total} bytes kept for a 48 KiB limit");
        let removals: Vec<_> = all_lines(&dir)
            .iter()
            .map(|(_, l)| parse(l))
            .filter(|r| r["event"] == "audit_retention")
            .collect();
        assert!(!removals.is_empty());
        for r in &removals {
            let name = r["removed_file"].as_str().expect("removed_file");
            assert!(!dir.join(name).exists(), "{name} still there");
            assert_eq!(r["reason"], "size");
            assert_eq!(
                segments::parse_segment_name(name),
                r["first_seq"].as_u64(),
                "{r:?}"
            );
            assert!(chain::is_hash(r["last_hash"].as_str().expect("last_hash")));
        }
        let newest_removed = removals.last().expect("a removal");
        let first_kept = parse(&file_lines(&segs[0].path)[0]);
        assert_eq!(first_kept["prev_hash"], newest_removed["last_hash"]);
        assert_eq!(
            first_kept["seq"].as_u64(),
            newest_removed["last_seq"].as_u64().map(|s| s + 1)
        );
        let r = verify::verify(&dir, Some(&pk));
        assert!(r.ok(), "{r}");
        let start = r.retention_start.clone().expect("start after retention");
        assert_eq!(Some(start.removed_last_seq + 1), r.first_seq, "{r}");
        assert_eq!(start.removed_file, newest_removed["removed_file"], "{r}");
        assert!(r.to_string().contains("retention removed"), "{r}");
    }

    #[test]
    fn retention_by_age_at_start_removes_old_segments() {
        let tmp = TempDir::new("retain-age");
        let (dir, pk) = write_log_with(&tmp.0, 200, small_segments(100));
        let old = SystemTime::now() - Duration::from_secs(3 * 86_400);
        let segs = segments::list(&dir).expect("list");
        assert!(segs.len() >= 2, "{segs:?}");
        for s in &segs {
            File::options()
                .write(true)
                .open(&s.path)
                .and_then(|f| f.set_modified(old))
                .expect("age the segment");
        }
        let o = AuditOptions {
            retain_age: Duration::from_secs(86_400),
            ..small_segments(100)
        };
        let log = AuditLog::open_with(&dir, 16, AuditSync::Batch, o).expect("reopen");
        assert!(log.flush(Duration::from_secs(5)), "flush");
        drop(log);
        assert!(
            segments::list(&dir).expect("list").is_empty(),
            "all were old"
        );
        let reasons: Vec<String> = lines(&dir)
            .iter()
            .map(|l| parse(l))
            .filter(|r| r["event"] == "audit_retention")
            .map(|r| r["reason"].as_str().unwrap_or("").to_string())
            .collect();
        assert_eq!(reasons, vec!["age".to_string(); segs.len()]);
        let r = verify::verify(&dir, Some(&pk));
        assert!(r.ok(), "{r}");
        assert!(r.retention_start.is_some(), "{r}");
    }

    #[test]
    fn too_little_free_space_reports_unhealthy_but_keeps_writing() {
        let tmp = TempDir::new("space");
        let dir = tmp.0.join("audit");
        let o = AuditOptions {
            min_free_bytes: u64::MAX,
            ..opts(10)
        };
        let log = AuditLog::open_with(&dir, 64, AuditSync::None, o).expect("open");
        let deadline = Instant::now() + Duration::from_secs(5);
        while log.healthy() {
            assert!(
                Instant::now() < deadline,
                "still healthy with no free space"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let why = log.problem().expect("a reason");
        assert!(why.contains("audit_min_free_bytes"), "{why}");
        // Records that arrive anyway (refusals) are still written.
        log.record("connection", json!({"decision": "deny"}))
            .expect("queued");
        assert!(log.flush(Duration::from_secs(5)), "flush");
        assert!(lines(&dir).iter().any(|l| l.contains("\"deny\"")));
        assert!(!log.healthy());
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
