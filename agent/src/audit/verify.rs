//! Offline verification of an audit log (`portcullis audit verify`).
//!
//! Pure file reading: it works on a copy of the audit directory (or of one
//! file) on another machine. It walks the log's files in chain order (the
//! segments `audit-<seq>.jsonl` by their first seq, then the live `audit.jsonl`)
//! line by line as one stream, recomputes every record's hash, checks that each
//! record links to the one before (`prev_hash`) with `seq` one higher, across
//! file boundaries too, and checks each checkpoint's Ed25519 signature over the
//! chain head, then reports the first problem with its file, line, sequence
//! number and class.
//!
//! A log whose oldest segments were removed by retention starts at a seq above 0
//! with a `prev_hash` that is not the genesis hash. That start is accepted only
//! if an `audit_retention` record that is itself part of the verified chain
//! names the removed segment with exactly that last seq and hash; the report
//! says so. Any other missing start is `deleted`.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ed25519_dalek::{Signature, VerifyingKey};
use serde_json::{Map, Value};

use super::chain::{self, CHECKPOINT_EVENT, GENESIS, hex, is_hash, unhex};
use super::key;
use super::segments::{self, LIVE_FILE, RETENTION_EVENT};

/// Lines longer than this are not records (a record is a few KiB at most).
const MAX_LINE: usize = 16 << 20;

/// What kind of problem the verifier found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TamperClass {
    /// A record's content does not match its hash, or a record was changed and
    /// re-hashed so that the next record no longer links to it.
    Modified,
    /// Records are missing: a gap in `seq` where the chain does not link.
    Deleted,
    /// A record that is not part of the chain: a duplicate `seq`, a copy, or a
    /// forged record the chain continues around.
    Inserted,
    /// Records are in the file in another order than they were written.
    Reordered,
    /// The file ends in the middle of a record.
    Truncated,
    /// The chain is consistent but a checkpoint's signature does not verify with
    /// the key in use: the log was re-hashed and re-signed, or signed by another key.
    Resigned,
    /// A line in the middle of the file is not a JSON record and the chain does
    /// not continue around it.
    Unparseable,
    /// The file could not be read.
    Unreadable,
}

impl TamperClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Modified => "modified",
            Self::Deleted => "deleted",
            Self::Inserted => "inserted",
            Self::Reordered => "reordered",
            Self::Truncated => "truncated",
            Self::Resigned => "resigned",
            Self::Unparseable => "unparseable",
            Self::Unreadable => "unreadable",
        }
    }

    /// One sentence for the auditor.
    pub fn meaning(self) -> &'static str {
        match self {
            Self::Modified => "a record was changed after it was written",
            Self::Deleted => "one or more records were removed",
            Self::Inserted => "a record that the agent did not write in this place was added",
            Self::Reordered => "records were moved out of the order they were written in",
            Self::Truncated => {
                "the file ends in the middle of a record (a crash while writing, or a copy taken mid-write)"
            }
            Self::Resigned => {
                "the records are consistent with each other but not with the signing key: the log was rebuilt and signed with another key, or re-hashed after signing"
            }
            Self::Unparseable => "a line is not a record, and the records around it do not link",
            Self::Unreadable => "the file could not be read",
        }
    }
}

impl fmt::Display for TamperClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The first problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub class: TamperClass,
    /// The file the problem is in (the log as a whole if `line` is 0).
    pub file: PathBuf,
    /// 1-based line in `file` (0: the file or log as a whole).
    pub line: u64,
    /// The sequence number the problem is about (for `deleted`, the first missing one).
    pub seq: Option<u64>,
    pub detail: String,
}

/// Which key checkpoint signatures were checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// The key the auditor gave (`--pubkey`): proves who signed.
    Given([u8; 32]),
    /// The key embedded in the log's first checkpoint (`None`: no checkpoint
    /// seen): proves internal consistency only.
    Embedded(Option<[u8; 32]>),
}

/// The chain starts after segments that retention removed, as an
/// `audit_retention` record in the verified chain says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionStart {
    /// The removed segment the remaining chain continues from.
    pub removed_file: String,
    pub removed_first_seq: Option<u64>,
    /// Its last record: the first remaining record links to it.
    pub removed_last_seq: u64,
    pub removed_last_hash: String,
    /// `seq` and `time` of the `audit_retention` record.
    pub record_seq: u64,
    pub record_time: Option<String>,
}

/// What the verifier found. `Display` prints it for an auditor.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// What was verified: the path given (a directory or a file).
    pub file: PathBuf,
    /// The files read, in chain order.
    pub files: Vec<PathBuf>,
    /// Chained records verified (checkpoints included), up to the problem if any.
    pub records: u64,
    /// Checkpoints whose signature verified.
    pub checkpoints: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// `hash` of the last verified record: note it to detect later truncation.
    pub last_hash: Option<String>,
    pub last_time: Option<String>,
    /// Highest `seq` covered by a verified checkpoint signature.
    pub last_signed_seq: Option<u64>,
    /// Records after the last verified checkpoint (not signed yet).
    pub unsigned_tail: u64,
    /// `time` of the first of them.
    pub unsigned_since: Option<String>,
    pub key: KeySource,
    /// Records written before hash chaining (schema 1) at the start of the file.
    pub unchained: u64,
    /// Lines (file, 1-based line) holding a torn record left by a crash, which
    /// the chain continues around (nothing is missing).
    pub torn: Vec<(PathBuf, u64)>,
    /// Set when the chain legitimately starts after segments removed by retention.
    pub retention_start: Option<RetentionStart>,
    /// `*.jsonl` files in the directory that are not named as part of the log,
    /// and so were not read.
    pub ignored: Vec<PathBuf>,
    pub problem: Option<Problem>,
}

impl VerifyReport {
    /// True if the log verifies (warnings aside).
    pub fn ok(&self) -> bool {
        self.problem.is_none()
    }

    /// What an auditor should know even when the log verifies.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if let KeySource::Embedded(Some(_)) = self.key {
            w.push(
                "signatures were checked against the key stored in the log itself: this shows the \
                 log is consistent, not that this host signed it. Verify with --pubkey and the \
                 public key exported from the host at enrolment."
                    .to_string(),
            );
        }
        if self.records > 0 && self.checkpoints == 0 && self.problem.is_none() {
            w.push(
                "no checkpoint: nothing in this log is signed; its records are chained but could \
                 have been rewritten together"
                    .to_string(),
            );
        } else if self.unsigned_tail > 0 && self.problem.is_none() {
            let from = self
                .last_seq
                .map_or(0, |l| l.saturating_sub(self.unsigned_tail - 1));
            w.push(format!(
                "the last {} record(s) (seq {}..={}, since {}) come after the last checkpoint and \
                 are not signed yet: they are chained, but could have been rewritten together. \
                 With the defaults the agent signs after every 1000 records, within 10 s of an \
                 unsigned record, and when it stops: a longer or older unsigned tail is suspect \
                 unless the agent crashed.",
                self.unsigned_tail,
                from,
                self.last_seq.unwrap_or(0),
                self.unsigned_since.as_deref().unwrap_or("?"),
            ));
        }
        if !self.torn.is_empty() {
            let lines: Vec<String> = self.torn.iter().map(|(f, l)| self.at(f, *l)).collect();
            w.push(format!(
                "torn record(s) at {}: cut short by a crash while writing; the chain \
                 continues across them, so no record is missing",
                lines.join(", ")
            ));
        }
        if !self.ignored.is_empty() {
            let names: Vec<String> = self.ignored.iter().map(|p| file_name(p)).collect();
            w.push(format!(
                "not read, as their names are not those of the log's files (audit.jsonl, \
                 audit-<20-digit seq>.jsonl): {}",
                names.join(", ")
            ));
        }
        if self.unchained > 0 {
            w.push(format!(
                "{} record(s) at the start of the file were written before hash chaining \
                 (schema 1) and cannot be verified",
                self.unchained
            ));
        }
        if self.records == 0 && self.problem.is_none() {
            w.push("the log holds no chained record".to_string());
        }
        w
    }
}

impl VerifyReport {
    /// "line N" in a one-file log, "line N of NAME" when there are several.
    fn at(&self, file: &Path, line: u64) -> String {
        if self.files.len() > 1 {
            format!("line {line} of {}", file_name(file))
        } else {
            format!("line {line}")
        }
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "audit log:   {}", self.file.display())?;
        if self.files.len() > 1 {
            let names: Vec<String> = self.files.iter().map(|p| file_name(p)).collect();
            writeln!(
                f,
                "files:       {} in chain order: {}",
                names.len(),
                names.join(", ")
            )?;
        }
        match &self.problem {
            None => writeln!(f, "result:      VERIFIED")?,
            Some(p) => {
                let at = match (p.line, p.seq) {
                    (0, _) => String::new(),
                    (l, Some(s)) => format!(" at {}, seq {s}", self.at(&p.file, l)),
                    (l, None) => format!(" at {}", self.at(&p.file, l)),
                };
                writeln!(f, "result:      FAILED: {}{at}", p.class)?;
                writeln!(f, "meaning:     {}", p.class.meaning())?;
                writeln!(f, "detail:      {}", p.detail)?;
            }
        }
        let verified = if self.problem.is_some() {
            " verified before the problem"
        } else {
            ""
        };
        match (self.first_seq, self.last_seq) {
            (Some(a), Some(b)) => writeln!(
                f,
                "records:     {}{verified} (seq {a}..={b}), of which {} signed checkpoint(s)",
                self.records, self.checkpoints
            )?,
            _ => writeln!(f, "records:     none{verified}")?,
        }
        if let Some(r) = &self.retention_start {
            let range = match r.removed_first_seq {
                Some(a) => format!("seq {a}..={}", r.removed_last_seq),
                None => format!("up to seq {}", r.removed_last_seq),
            };
            writeln!(
                f,
                "start:       seq {} continues from {} ({range}, last hash {}), which the \
                 agent's retention removed: audit_retention record seq {}{}. Records before \
                 seq {} cannot be verified from these files; this start is legitimate.",
                r.removed_last_seq + 1,
                r.removed_file,
                r.removed_last_hash,
                r.record_seq,
                r.record_time
                    .as_deref()
                    .map(|t| format!(" at {t}"))
                    .unwrap_or_default(),
                r.removed_last_seq + 1,
            )?;
        }
        match self.key {
            KeySource::Given(k) => writeln!(
                f,
                "signatures:  checked with the given public key {}",
                hex(&k)
            )?,
            KeySource::Embedded(Some(k)) => writeln!(
                f,
                "signatures:  checked with the key embedded in the log {} (no --pubkey given)",
                hex(&k)
            )?,
            KeySource::Embedded(None) => {
                writeln!(f, "signatures:  none checked (no --pubkey, no checkpoint)")?
            }
        }
        match self.last_signed_seq {
            Some(s) => writeln!(
                f,
                "signed:      up to seq {s}; {} record(s) after it unsigned",
                self.unsigned_tail
            )?,
            None => writeln!(f, "signed:      nothing")?,
        }
        if let (Some(s), Some(h)) = (self.last_seq, &self.last_hash) {
            writeln!(
                f,
                "head:        seq {s}, hash {h}, time {}",
                self.last_time.as_deref().unwrap_or("?")
            )?;
        }
        let warnings = self.warnings();
        if !warnings.is_empty() {
            writeln!(f, "warnings:")?;
            for w in warnings {
                writeln!(f, "  - {w}")?;
            }
        }
        Ok(())
    }
}

/// The files of the log at `path` in chain order: the file itself, or the log
/// files in a directory (or in its `audit/` subdirectory, for a copied state
/// directory).
fn resolve(path: &Path) -> Result<Vec<PathBuf>, String> {
    if !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let list =
        |d: &Path| segments::log_files(d).map_err(|e| format!("cannot list {}: {e}", d.display()));
    let direct = list(path)?;
    if !direct.is_empty() {
        return Ok(direct);
    }
    let nested = path.join("audit");
    if nested.is_dir() {
        let files = list(&nested)?;
        if !files.is_empty() {
            return Ok(files);
        }
    }
    Err(format!(
        "no audit log in {}: expected {LIVE_FILE} and/or segments named \
         audit-<first seq, 20 digits>.jsonl",
        path.display()
    ))
}

/// Verifies an audit log: a file, or a directory holding `audit.jsonl` and the
/// segments rotated out of it. With `pubkey`, every checkpoint must be signed by
/// that key; without it, by the key embedded in the first checkpoint (the report
/// says which).
pub fn verify(dir_or_file: &Path, pubkey: Option<&[u8; 32]>) -> VerifyReport {
    let mut report = VerifyReport {
        file: dir_or_file.to_owned(),
        files: Vec::new(),
        records: 0,
        checkpoints: 0,
        first_seq: None,
        last_seq: None,
        last_hash: None,
        last_time: None,
        last_signed_seq: None,
        unsigned_tail: 0,
        unsigned_since: None,
        key: pubkey.map_or(KeySource::Embedded(None), |k| KeySource::Given(*k)),
        unchained: 0,
        torn: Vec::new(),
        retention_start: None,
        ignored: Vec::new(),
        problem: None,
    };
    let files = match resolve(dir_or_file) {
        Ok(f) => f,
        Err(detail) => {
            report.problem = Some(Problem {
                class: TamperClass::Unreadable,
                file: dir_or_file.to_owned(),
                line: 0,
                seq: None,
                detail,
            });
            return report;
        }
    };
    report.files.clone_from(&files);
    if let Some(dir) = files.first().and_then(|f| f.parent())
        && dir_or_file.is_dir()
    {
        report.ignored = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "jsonl") && !files.contains(p))
                    .collect()
            })
            .unwrap_or_default();
        report.ignored.sort();
    }
    let mut v = Verifier {
        report,
        entries: Entries::new(files),
        last: None,
        unchained_last_seq: None,
        claim: None,
    };
    v.run();
    v.report
}

/// Prints the report for `path` and returns success only if the log verifies.
/// `pubkey_file` holds the host's public key (`audit-signing.pub`: 64 hex digits).
#[allow(dead_code)] // wired to `portcullis audit verify [--pubkey FILE] [DIR]` in main.rs
pub fn cli_verify(path: &Path, pubkey_file: Option<&Path>) -> anyhow::Result<ExitCode> {
    let key = pubkey_file
        .map(key::read_public)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let report = verify(path, key.as_ref());
    print!("{report}");
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[derive(Debug)]
enum Integrity {
    Ok,
    HashMismatch { computed: String },
    NonCanonical,
}

#[derive(Debug)]
struct Checkpoint {
    head_seq: Option<u64>,
    head_hash: Option<String>,
    signature: Option<String>,
    public_key: Option<String>,
}

#[derive(Debug)]
struct Rec {
    line: u64,
    seq: u64,
    prev_hash: String,
    hash: String,
    integrity: Integrity,
    time: Option<String>,
    checkpoint: Option<Checkpoint>,
}

#[derive(Debug)]
enum Entry {
    /// A record with its chain fields.
    Record(Rec),
    /// A JSON object without valid chain fields; `legacy` if it has none at all
    /// (a schema 1 record).
    Unchained {
        line: u64,
        seq: Option<u64>,
        legacy: bool,
    },
    /// Not a JSON object.
    Garbage {
        line: u64,
        /// Ended with a newline (false: the last bytes of the file).
        terminated: bool,
        /// Starts like a record (`{`), as a torn one does.
        brace: bool,
        len: usize,
        why: String,
    },
}

impl Entry {
    /// True if this is a record that continues the chain from `seq`/`prev`.
    fn continues(&self, seq: u64, prev: &str) -> bool {
        matches!(self, Entry::Record(r) if r.seq == seq && r.prev_hash == prev)
    }
}

fn classify(line: u64, bytes: &[u8], terminated: bool, overlong: bool) -> Entry {
    let garbage = |why: String| Entry::Garbage {
        line,
        terminated,
        brace: bytes.first() == Some(&b'{'),
        len: bytes.len(),
        why,
    };
    if overlong {
        return garbage(format!("longer than {MAX_LINE} bytes"));
    }
    let obj: Map<String, Value> = match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return garbage("not a JSON object".into()),
        Err(e) => return garbage(format!("not JSON: {e}")),
    };
    let text = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
    let seq = obj.get("seq").and_then(Value::as_u64);
    let (prev_hash, hash) = (
        text("prev_hash").filter(|h| is_hash(h)),
        text("hash").filter(|h| is_hash(h)),
    );
    let (Some(seq), Some(prev_hash), Some(hash)) = (seq, prev_hash, hash) else {
        return Entry::Unchained {
            line,
            seq,
            legacy: !obj.contains_key("hash") && !obj.contains_key("prev_hash"),
        };
    };
    let (mut scratch, mut canon) = (Vec::new(), Vec::with_capacity(bytes.len()));
    let integrity = match chain::seal(&obj, &mut scratch, &mut canon) {
        Ok(_) if canon == bytes => Integrity::Ok,
        Ok(computed) if computed != hash => Integrity::HashMismatch { computed },
        Ok(_) => Integrity::NonCanonical,
        Err(_) => Integrity::NonCanonical,
    };
    let checkpoint =
        (obj.get("event").and_then(Value::as_str) == Some(CHECKPOINT_EVENT)).then(|| Checkpoint {
            head_seq: obj.get("head_seq").and_then(Value::as_u64),
            head_hash: text("head_hash"),
            signature: text("signature"),
            public_key: text("public_key"),
        });
    Entry::Record(Rec {
        line,
        seq,
        prev_hash,
        hash,
        integrity,
        time: text("time"),
        checkpoint,
    })
}

/// The lines of the log's files, read one file after the other as a single
/// stream of entries, with one entry of look-ahead (across file boundaries too).
/// Entries are numbered by a line count over the whole stream; [`Entries::locate`]
/// turns it back into a file and a line in it.
struct Entries {
    files: Vec<PathBuf>,
    /// For each file opened so far, the lines of the stream before its first line.
    starts: Vec<u64>,
    r: Option<BufReader<File>>,
    line: u64,
    peeked: Option<Option<Entry>>,
    buf: Vec<u8>,
    /// File index, line in the stream, what went wrong.
    error: Option<(usize, u64, String)>,
}

impl Entries {
    fn new(files: Vec<PathBuf>) -> Self {
        Self {
            files,
            starts: Vec::new(),
            r: None,
            line: 0,
            peeked: None,
            buf: Vec::new(),
            error: None,
        }
    }

    /// The file (index) and the 1-based line in it of stream line `line`.
    fn locate(&self, line: u64) -> (usize, u64) {
        let i = self.starts.iter().rposition(|s| *s < line).unwrap_or(0);
        (i, line - self.starts.get(i).copied().unwrap_or(0))
    }

    fn read(&mut self) -> Option<Entry> {
        loop {
            if self.error.is_some() {
                return None;
            }
            if self.r.is_none() {
                let i = self.starts.len();
                let path = self.files.get(i)?;
                match File::open(path) {
                    Ok(f) => self.r = Some(BufReader::with_capacity(1 << 20, f)),
                    Err(e) => {
                        self.starts.push(self.line);
                        self.error =
                            Some((i, self.line, format!("cannot open {}: {e}", path.display())));
                        return None;
                    }
                }
                self.starts.push(self.line);
            }
            match self.read_line() {
                Some(e) => return Some(e),
                None if self.error.is_some() => return None,
                None => self.r = None, // end of this file: on to the next
            }
        }
    }

    fn read_line(&mut self) -> Option<Entry> {
        let r = self.r.as_mut()?;
        self.buf.clear();
        let mut overlong = false;
        let mut any = false;
        let terminated = loop {
            let avail = match r.fill_buf() {
                Ok(a) => a,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let i = self.starts.len().saturating_sub(1);
                    self.error = Some((i, self.line + 1, format!("read error: {e}")));
                    return None;
                }
            };
            if avail.is_empty() {
                break false;
            }
            any = true;
            let (chunk, found) = match avail.iter().position(|b| *b == b'\n') {
                Some(i) => (&avail[..i], true),
                None => (avail, false),
            };
            if self.buf.len() + chunk.len() > MAX_LINE {
                overlong = true;
            } else {
                self.buf.extend_from_slice(chunk);
            }
            let used = chunk.len() + usize::from(found);
            r.consume(used);
            if found {
                break true;
            }
        };
        if !any {
            return None;
        }
        self.line += 1;
        Some(classify(self.line, &self.buf, terminated, overlong))
    }

    fn next(&mut self) -> Option<Entry> {
        match self.peeked.take() {
            Some(e) => e,
            None => self.read(),
        }
    }

    fn peek(&mut self) -> Option<&Entry> {
        if self.peeked.is_none() {
            let e = self.read();
            self.peeked = Some(e);
        }
        self.peeked.as_ref().and_then(Option::as_ref)
    }

    /// The first later record matching `pred` (consumes the file).
    fn find_later(&mut self, pred: impl Fn(&Rec) -> bool) -> Option<u64> {
        while let Some(e) = self.next() {
            if let Entry::Record(r) = e
                && pred(&r)
            {
                return Some(r.line);
            }
        }
        None
    }
}

/// The last record accepted into the chain.
struct Accepted {
    line: u64,
    seq: u64,
    prev_hash: String,
    hash: String,
}

/// The `audit_retention` record the chain's start relies on, until the chain
/// reaches it.
struct Claim {
    /// Stream line of the first record (where a problem is reported).
    start_line: u64,
    start_seq: u64,
    seq: u64,
    hash: String,
    confirmed: bool,
}

struct Verifier {
    report: VerifyReport,
    entries: Entries,
    last: Option<Accepted>,
    /// `seq` of the last schema 1 record before the chain started.
    unchained_last_seq: Option<u64>,
    claim: Option<Claim>,
}

/// A problem at stream line `line`; [`Verifier::run`] sets its file and line.
fn problem(class: TamperClass, line: u64, seq: Option<u64>, detail: String) -> Problem {
    Problem {
        class,
        file: PathBuf::new(),
        line,
        seq,
        detail,
    }
}

impl Verifier {
    /// "line N" in a one-file log, "line N of NAME" when there are several.
    fn at(&self, line: u64) -> String {
        let (i, l) = self.entries.locate(line);
        match self.entries.files.get(i) {
            Some(f) if self.entries.files.len() > 1 => format!("line {l} of {}", file_name(f)),
            _ => format!("line {l}"),
        }
    }

    /// Gives a problem found at a stream line its file and line in that file.
    fn place(&self, mut p: Problem) -> Problem {
        if p.line == 0 {
            p.file.clone_from(&self.report.file);
            return p;
        }
        let (i, l) = self.entries.locate(p.line);
        p.file = self
            .entries
            .files
            .get(i)
            .cloned()
            .unwrap_or_else(|| self.report.file.clone());
        p.line = l;
        p
    }

    /// The `seq` and `prev_hash` the next record must have.
    fn expected(&self) -> (u64, String) {
        match &self.last {
            Some(l) => (l.seq + 1, l.hash.clone()),
            None => (
                self.unchained_last_seq.map_or(0, |s| s + 1),
                GENESIS.to_string(),
            ),
        }
    }

    fn run(&mut self) {
        while let Some(e) = self.entries.next() {
            let res = match e {
                Entry::Garbage {
                    line,
                    terminated,
                    brace,
                    len,
                    why,
                } => self.garbage(line, terminated, brace, len, &why),
                Entry::Unchained { line, seq, legacy } => self.unchained(line, seq, legacy),
                Entry::Record(r) => self.record(r),
            };
            if let Err(p) = res {
                self.report.problem = Some(self.place(p));
                break;
            }
        }
        if let Some((i, line, detail)) = self.entries.error.take() {
            let (_, l) = self.entries.locate(line);
            self.report.problem = Some(Problem {
                class: TamperClass::Unreadable,
                file: self.entries.files.get(i).cloned().unwrap_or_default(),
                line: l,
                seq: None,
                detail,
            });
        }
        if let Some(c) = self.claim.take()
            && !c.confirmed
        {
            // The record that explains the start was not verified as part of the chain.
            self.report.retention_start = None;
            if self.report.problem.is_none() {
                let p = problem(
                    TamperClass::Deleted,
                    c.start_line,
                    Some(c.start_seq.saturating_sub(1)),
                    format!(
                        "the chain starts at seq {} after records that are not in these files; \
                         an audit_retention record (seq {}) says retention removed them, but \
                         that record is not part of the verified chain",
                        c.start_seq, c.seq
                    ),
                );
                self.report.problem = Some(self.place(p));
            }
        }
    }

    fn garbage(
        &mut self,
        line: u64,
        terminated: bool,
        brace: bool,
        len: usize,
        why: &str,
    ) -> Result<(), Problem> {
        let (seq, prev) = self.expected();
        if !terminated {
            return Err(problem(
                TamperClass::Truncated,
                line,
                Some(seq),
                format!(
                    "the last line is an incomplete record ({len} bytes, no newline; {why}); \
                     records up to seq {} are complete",
                    seq.saturating_sub(1)
                ),
            ));
        }
        match self.entries.peek() {
            None => Err(problem(
                TamperClass::Truncated,
                line,
                Some(seq),
                format!("the last line is an incomplete record ({len} bytes; {why})"),
            )),
            Some(n) if brace && n.continues(seq, &prev) => {
                let (i, l) = self.entries.locate(line);
                let file = self.entries.files.get(i).cloned().unwrap_or_default();
                self.report.torn.push((file, l));
                Ok(())
            }
            Some(_) => Err(problem(
                TamperClass::Unparseable,
                line,
                Some(seq),
                format!(
                    "the line is not a record ({why}), and the next record does not continue \
                     the chain from seq {}: it probably held seq {seq}",
                    seq.saturating_sub(1)
                ),
            )),
        }
    }

    fn unchained(&mut self, line: u64, seq: Option<u64>, legacy: bool) -> Result<(), Problem> {
        if legacy && self.last.is_none() {
            self.report.unchained += 1;
            if let Some(s) = seq {
                self.unchained_last_seq = Some(s);
            }
            return Ok(());
        }
        let (exp, prev) = self.expected();
        if self.entries.peek().is_some_and(|n| n.continues(exp, &prev)) {
            return Err(problem(
                TamperClass::Inserted,
                line,
                seq,
                format!(
                    "a JSON object without valid chain fields (seq, prev_hash, hash) sits \
                     between seq {} and the record that continues from it",
                    exp.saturating_sub(1)
                ),
            ));
        }
        Err(problem(
            TamperClass::Modified,
            line,
            seq.or(Some(exp)),
            "the record's chain fields (seq, prev_hash, hash) are missing or damaged".into(),
        ))
    }

    fn record(&mut self, r: Rec) -> Result<(), Problem> {
        match &r.integrity {
            Integrity::Ok => {}
            Integrity::HashMismatch { computed } => {
                return Err(problem(
                    TamperClass::Modified,
                    r.line,
                    Some(r.seq),
                    format!(
                        "the record's content does not match its hash: it says {} but its \
                         content hashes to {computed}",
                        r.hash
                    ),
                ));
            }
            Integrity::NonCanonical => {
                return Err(problem(
                    TamperClass::Modified,
                    r.line,
                    Some(r.seq),
                    "the line is not in the exact form the agent writes (re-encoded, \
                     reformatted, or a key given twice), although its hash matches its content"
                        .into(),
                ));
            }
        }
        let (exp, prev) = self.expected();
        if r.seq == exp && r.prev_hash == prev {
            return self.accept(r);
        }
        if self.last.is_none()
            && self.unchained_last_seq.is_none()
            && r.seq > 0
            && r.prev_hash != GENESIS
            && let Some((start, claim_seq, claim_hash)) =
                self.retention_claim(r.seq - 1, &r.prev_hash)
        {
            self.report.retention_start = Some(start);
            self.claim = Some(Claim {
                start_line: r.line,
                start_seq: r.seq,
                seq: claim_seq,
                hash: claim_hash,
                confirmed: false,
            });
            return self.accept(r);
        }
        Err(match self.last.take() {
            None => self.bad_start(&r, exp),
            Some(l) => self.bad_link(&r, &l, exp),
        })
    }

    /// An `audit_retention` record in the log's files that names a removed
    /// segment ending at `last_seq` with `last_hash`: what it says, and its own
    /// `seq` and `hash` (it must turn out to be part of the verified chain).
    fn retention_claim(
        &self,
        last_seq: u64,
        last_hash: &str,
    ) -> Option<(RetentionStart, u64, String)> {
        let needle = format!("\"event\":\"{RETENTION_EVENT}\"");
        for path in &self.entries.files {
            let Ok(f) = File::open(path) else { continue };
            for line in BufReader::new(f).split(b'\n').map_while(Result::ok) {
                if !line.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    continue;
                }
                let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                let text = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
                let num = |k: &str| m.get(k).and_then(Value::as_u64);
                if m.get("event").and_then(Value::as_str) != Some(RETENTION_EVENT)
                    || num("last_seq") != Some(last_seq)
                    || text("last_hash").as_deref() != Some(last_hash)
                {
                    continue;
                }
                let (Some(seq), Some(hash)) = (num("seq"), text("hash")) else {
                    continue;
                };
                let start = RetentionStart {
                    removed_file: text("removed_file").unwrap_or_else(|| "?".into()),
                    removed_first_seq: num("first_seq"),
                    removed_last_seq: last_seq,
                    removed_last_hash: last_hash.to_owned(),
                    record_seq: seq,
                    record_time: text("time"),
                };
                return Some((start, seq, hash));
            }
        }
        None
    }

    /// The first chained record does not start a chain.
    fn bad_start(&self, r: &Rec, exp: u64) -> Problem {
        if r.prev_hash != GENESIS {
            let hint = if self.entries.files.len() == 1 {
                " (if this file is one segment of a log, verify the directory holding all of \
                 them)"
            } else {
                ""
            };
            problem(
                TamperClass::Deleted,
                r.line,
                Some(r.seq.saturating_sub(1)),
                format!(
                    "the first record (seq {}) links to a previous record that is not in the \
                     files, and no audit_retention record in the chain says retention removed \
                     it: the records before it were removed{hint}",
                    r.seq
                ),
            )
        } else if r.seq > exp {
            problem(
                TamperClass::Deleted,
                r.line,
                Some(exp),
                format!(
                    "the chain starts at seq {}, not {exp}: seq {exp}..={} are missing",
                    r.seq,
                    r.seq - 1
                ),
            )
        } else {
            problem(
                TamperClass::Reordered,
                r.line,
                Some(r.seq),
                format!(
                    "the chain starts at seq {}, below the records before it (up to seq {})",
                    r.seq,
                    exp.saturating_sub(1)
                ),
            )
        }
    }

    /// `r` does not continue the chain from `l`: say what most likely happened.
    fn bad_link(&mut self, r: &Rec, l: &Accepted, exp: u64) -> Problem {
        use TamperClass::*;
        // Where r and l are, for the details ("line N", or "line N of FILE").
        let (at_r, at_l) = (self.at(r.line), self.at(l.line));
        let next_links_to =
            |n: Option<&Entry>, seq: u64, hash: &str| n.is_some_and(|n| n.continues(seq, hash));
        if r.seq == exp {
            // Right number, wrong link.
            if next_links_to(self.entries.peek(), exp + 1, &r.hash) {
                return problem(
                    Modified,
                    l.line,
                    Some(l.seq),
                    format!(
                        "the record was changed and its hash recomputed: the record after it \
                         (seq {exp}, {at_r}) was chained to a different hash"
                    ),
                );
            }
            return problem(
                Modified,
                r.line,
                Some(exp),
                format!(
                    "the record does not link to seq {} at {at_l} (prev_hash differs): it was \
                     replaced, or changed and re-hashed",
                    l.seq
                ),
            );
        }
        if r.seq > exp {
            let next = self.entries.peek();
            if next_links_to(next, exp, &l.hash) {
                if let Some(Entry::Record(n)) = next
                    && r.prev_hash == n.hash
                {
                    let n_line = n.line;
                    return problem(
                        Reordered,
                        r.line,
                        Some(r.seq),
                        format!(
                            "seq {} at {at_r} comes before seq {exp} at {}: the two records \
                             were swapped",
                            r.seq,
                            self.at(n_line)
                        ),
                    );
                }
                let (seq, hash) = (r.seq - 1, r.prev_hash.clone());
                let (rline, rseq) = (r.line, r.seq);
                return match self.entries.find_later(|x| x.seq == seq && x.hash == hash) {
                    Some(at) => problem(
                        Reordered,
                        rline,
                        Some(rseq),
                        format!(
                            "seq {rseq} was moved here; it belongs after {}",
                            self.at(at)
                        ),
                    ),
                    None => problem(
                        Inserted,
                        rline,
                        Some(rseq),
                        format!(
                            "the record (seq {rseq}) is not part of the chain: the next record \
                             continues from seq {} at {at_l}",
                            l.seq
                        ),
                    ),
                };
            }
            if r.prev_hash == l.hash {
                return problem(
                    Modified,
                    r.line,
                    Some(r.seq),
                    format!(
                        "the record links to seq {} but is numbered {}: its seq was changed and \
                         its hash recomputed",
                        l.seq, r.seq
                    ),
                );
            }
            let (rline, rseq) = (r.line, r.seq);
            let hash = l.hash.clone();
            return match self
                .entries
                .find_later(|x| x.seq == exp && x.prev_hash == hash)
            {
                Some(at) => problem(
                    Reordered,
                    rline,
                    Some(exp),
                    format!(
                        "seq {exp} should follow seq {} ({at_l}) but is at {}",
                        l.seq,
                        self.at(at)
                    ),
                ),
                None => {
                    let missing = if rseq - exp == 1 {
                        format!("seq {exp} is missing")
                    } else {
                        format!(
                            "{} records are missing (seq {exp}..={})",
                            rseq - exp,
                            rseq - 1
                        )
                    };
                    problem(
                        Deleted,
                        rline,
                        Some(exp),
                        format!(
                            "{missing}: seq {} at {at_l} is followed by seq {rseq} at {at_r}",
                            l.seq
                        ),
                    )
                }
            };
        }
        // r.seq <= l.seq: a duplicate, or the sequence going backwards.
        if r.seq == l.seq && r.hash == l.hash {
            return problem(
                Inserted,
                r.line,
                Some(r.seq),
                format!("the line repeats the record at {at_l} (seq {})", l.seq),
            );
        }
        if r.seq == l.seq && r.prev_hash == l.prev_hash {
            if next_links_to(self.entries.peek(), exp, &r.hash) {
                return problem(
                    Inserted,
                    l.line,
                    Some(l.seq),
                    format!(
                        "the record is not part of the chain: {at_r} has the same seq and \
                         the chain continues from it"
                    ),
                );
            }
            return problem(
                Inserted,
                r.line,
                Some(r.seq),
                format!(
                    "a second record with seq {} (the first is at {at_l})",
                    r.seq
                ),
            );
        }
        if next_links_to(self.entries.peek(), exp, &l.hash) {
            return problem(
                Inserted,
                r.line,
                Some(r.seq),
                format!(
                    "a record with seq {} does not belong after seq {} ({at_l}); the chain \
                     continues around it",
                    r.seq, l.seq
                ),
            );
        }
        problem(
            Reordered,
            r.line,
            Some(r.seq),
            format!(
                "the sequence goes backwards: seq {} after seq {} at {at_l}",
                r.seq, l.seq
            ),
        )
    }

    fn accept(&mut self, r: Rec) -> Result<(), Problem> {
        if let Some(c) = &mut self.claim
            && c.seq == r.seq
            && c.hash == r.hash
        {
            c.confirmed = true;
        }
        if let Some(cp) = &r.checkpoint {
            self.check_signature(&r, cp)?;
            self.report.checkpoints += 1;
            self.report.unsigned_tail = 0;
            self.report.unsigned_since = None;
        } else {
            self.report.unsigned_tail += 1;
            if self.report.unsigned_tail == 1 {
                self.report.unsigned_since.clone_from(&r.time);
            }
        }
        self.report.records += 1;
        self.report.first_seq.get_or_insert(r.seq);
        self.report.last_seq = Some(r.seq);
        self.report.last_hash = Some(r.hash.clone());
        self.report.last_time = r.time;
        self.last = Some(Accepted {
            line: r.line,
            seq: r.seq,
            prev_hash: r.prev_hash,
            hash: r.hash,
        });
        Ok(())
    }

    fn check_signature(&mut self, r: &Rec, cp: &Checkpoint) -> Result<(), Problem> {
        let fail = |detail: String| problem(TamperClass::Resigned, r.line, Some(r.seq), detail);
        let (Some(head_seq), Some(head_hash)) = (cp.head_seq, cp.head_hash.as_deref()) else {
            return Err(fail("the checkpoint has no head_seq or head_hash".into()));
        };
        if r.seq.checked_sub(1) != Some(head_seq) || head_hash != r.prev_hash {
            return Err(fail(format!(
                "the checkpoint signs seq {head_seq} (hash {head_hash}) but follows seq {} \
                 (hash {}): it was copied or moved",
                r.seq.saturating_sub(1),
                r.prev_hash
            )));
        }
        let (Some(sig), Some(pk)) = (
            cp.signature.as_deref().and_then(unhex::<64>),
            cp.public_key.as_deref().and_then(unhex::<32>),
        ) else {
            return Err(fail(
                "the checkpoint's signature or public_key is missing or malformed".into(),
            ));
        };
        let key = match self.report.key {
            KeySource::Given(k) if k != pk => {
                return Err(fail(format!(
                    "signed by key {}, not by the given public key {}: the log was re-signed \
                     by someone else (or the host's key was replaced)",
                    hex(&pk),
                    hex(&k)
                )));
            }
            KeySource::Embedded(Some(k)) if k != pk => {
                return Err(fail(format!(
                    "signed by key {}, but the earlier checkpoints by {}: part of the log was \
                     re-signed (or the host's key was replaced)",
                    hex(&pk),
                    hex(&k)
                )));
            }
            KeySource::Given(k) | KeySource::Embedded(Some(k)) => k,
            KeySource::Embedded(None) => {
                self.report.key = KeySource::Embedded(Some(pk));
                pk
            }
        };
        let vk = VerifyingKey::from_bytes(&key)
            .map_err(|_| fail(format!("{} is not a valid Ed25519 public key", hex(&key))))?;
        let msg = chain::checkpoint_message(head_hash, head_seq);
        vk.verify_strict(&msg, &Signature::from_bytes(&sig))
            .map_err(|_| {
                fail(format!(
                    "the signature over seq {head_seq} does not verify: the records up to it \
                     were re-hashed after they were signed"
                ))
            })?;
        self.report.last_signed_seq = Some(head_seq);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{TempDir, lines, parse, write_log};
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    const RECORDS: u64 = 3000;
    const EVERY: u64 = 500;
    /// A record in the middle of the log (not a checkpoint, nor the one after it).
    const TARGET: u64 = 1234;

    fn fixture(tag: &str) -> (TempDir, Vec<String>, [u8; 32]) {
        let tmp = TempDir::new(tag);
        let (dir, pk) = write_log(&tmp.0, RECORDS, EVERY);
        let l = lines(&dir);
        (tmp, l, pk)
    }

    fn idx_of_seq(lines: &[String], seq: u64) -> usize {
        lines
            .iter()
            .position(|l| parse(l)["seq"] == seq)
            .unwrap_or_else(|| panic!("no record with seq {seq}"))
    }

    fn check(tmp: &TempDir, name: &str, text: &str, pk: &[u8; 32]) -> (VerifyReport, Problem) {
        let file = tmp.0.join(name);
        std::fs::write(&file, text).expect("write tampered copy");
        let r = verify(&file, Some(pk));
        let p = r
            .problem
            .clone()
            .unwrap_or_else(|| panic!("tampering with {name} was not detected:\n{r}"));
        (r, p)
    }

    fn joined(lines: &[String]) -> String {
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    fn at(p: &Problem) -> (TamperClass, u64, Option<u64>) {
        (p.class, p.line, p.seq)
    }

    /// What an attacker without the host key can do: re-hash the chain from
    /// line `from` on, fixing checkpoint heads and, with `key`, re-signing them.
    fn rechain(lines: &mut [String], from: usize, key: Option<&SigningKey>) {
        let mut prev = parse(&lines[from - 1])["hash"]
            .as_str()
            .expect("hash")
            .to_string();
        let mut scratch = Vec::new();
        for l in &mut lines[from..] {
            let mut m = parse(l);
            m.insert("prev_hash".into(), prev.clone().into());
            if m["event"] == CHECKPOINT_EVENT {
                let head_seq = m["head_seq"].as_u64().expect("head_seq");
                m.insert("head_hash".into(), prev.clone().into());
                if let Some(k) = key {
                    let sig = k.sign(&chain::checkpoint_message(&prev, head_seq));
                    m.insert("signature".into(), hex(&sig.to_bytes()).into());
                    m.insert(
                        "public_key".into(),
                        hex(k.verifying_key().as_bytes()).into(),
                    );
                }
            }
            let mut out = Vec::new();
            prev = chain::seal(&m, &mut scratch, &mut out).expect("seal");
            *l = String::from_utf8(out).expect("utf-8");
        }
    }

    #[test]
    fn a_clean_log_verifies() {
        let (tmp, lines, pk) = fixture("clean");
        let r = verify(&tmp.0.join("audit"), Some(&pk));
        assert!(r.ok(), "{r}");
        // The key record, the records, and a checkpoint per 500 plus one on flush.
        let checkpoints = (RECORDS + 1).div_ceil(EVERY);
        assert_eq!(r.checkpoints, checkpoints, "{r}");
        assert_eq!(r.records, RECORDS + 1 + checkpoints, "{r}");
        assert_eq!(r.records, lines.len() as u64, "{r}");
        assert_eq!(r.first_seq, Some(0), "{r}");
        assert_eq!(r.last_seq, Some(r.records - 1), "{r}");
        assert_eq!(r.last_signed_seq, Some(r.records - 2), "{r}");
        assert_eq!(r.unsigned_tail, 0, "{r}");
        assert_eq!(r.key, KeySource::Given(pk));
        assert!(r.warnings().is_empty(), "{r}");
        let shown = r.to_string();
        assert!(
            shown.contains("VERIFIED") && shown.contains(&hex(&pk)),
            "{shown}"
        );

        // Without a key: verified against the embedded one, and said so.
        let r = verify(&tmp.0.join("audit"), None);
        assert!(r.ok(), "{r}");
        assert_eq!(r.key, KeySource::Embedded(Some(pk)));
        assert!(r.to_string().contains("no --pubkey given"), "{r}");

        // The CLI entry point: a pubkey file as exported from the host.
        let pub_file = tmp.0.join("keys").join(key::PUB_FILE);
        let code = cli_verify(&tmp.0.join("audit"), Some(&pub_file)).expect("cli verify");
        assert_eq!(format!("{code:?}"), format!("{:?}", ExitCode::SUCCESS));
        let err = cli_verify(&tmp.0.join("audit"), Some(&tmp.0.join("audit/audit.jsonl")))
            .expect_err("a log is not a public key file");
        assert!(err.to_string().contains("not an audit public key"), "{err}");

        // An unsigned tail is a warning, not a failure.
        let r = check_ok(&tmp, "tail.jsonl", &joined(&lines[..lines.len() - 1]), &pk);
        assert_eq!(r.unsigned_tail, 1, "{r}");
        assert_eq!(r.warnings().len(), 1, "{r}");
    }

    fn check_ok(tmp: &TempDir, name: &str, text: &str, pk: &[u8; 32]) -> VerifyReport {
        let file = tmp.0.join(name);
        std::fs::write(&file, text).expect("write copy");
        let r = verify(&file, Some(pk));
        assert!(r.ok(), "{r}");
        r
    }

    #[test]
    fn editing_one_byte_is_modified() {
        let (tmp, mut lines, pk) = fixture("edit");
        let i = idx_of_seq(&lines, TARGET);
        assert!(lines[i].contains("svc-batch"), "{}", lines[i]);
        lines[i] = lines[i].replacen("svc-batch", "svc-batcx", 1);
        let (r, p) = check(&tmp, "edit.jsonl", &joined(&lines), &pk);
        assert_eq!(
            at(&p),
            (TamperClass::Modified, i as u64 + 1, Some(TARGET)),
            "{r}"
        );
        assert!(p.detail.contains("does not match its hash"), "{r}");
        assert_eq!(
            r.last_seq,
            Some(TARGET - 1),
            "verified up to the record before: {r}"
        );

        // Changing the decision and the hash together breaks the link instead.
        let (tmp, mut lines, pk) = fixture("edit-rehash");
        let i = idx_of_seq(&lines, TARGET);
        let mut m = parse(&lines[i]);
        m.insert("decision".into(), "deny".into());
        let mut out = Vec::new();
        chain::seal(&m, &mut Vec::new(), &mut out).expect("seal");
        lines[i] = String::from_utf8(out).expect("utf-8");
        let (r, p) = check(&tmp, "rehash.jsonl", &joined(&lines), &pk);
        assert_eq!(
            at(&p),
            (TamperClass::Modified, i as u64 + 1, Some(TARGET)),
            "{r}"
        );
        assert!(p.detail.contains("hash recomputed"), "{r}");
    }

    #[test]
    fn deleting_a_record_is_deleted() {
        let (tmp, mut lines, pk) = fixture("delete");
        let i = idx_of_seq(&lines, TARGET);
        lines.remove(i);
        let (r, p) = check(&tmp, "delete.jsonl", &joined(&lines), &pk);
        assert_eq!(
            at(&p),
            (TamperClass::Deleted, i as u64 + 1, Some(TARGET)),
            "{r}"
        );
        assert!(
            p.detail.contains(&format!("seq {TARGET} is missing")),
            "{r}"
        );
    }

    #[test]
    fn a_forged_record_is_inserted() {
        let (tmp, mut lines, pk) = fixture("insert");
        let i = idx_of_seq(&lines, TARGET);
        // Well formed and correctly hashed, numbered and linked as the next record.
        let mut m = parse(&lines[i]);
        m.insert("seq".into(), (TARGET + 1).into());
        let prev = m["hash"].clone();
        m.insert("prev_hash".into(), prev);
        m.insert("workload".into(), "svc-forged".into());
        let mut out = Vec::new();
        chain::seal(&m, &mut Vec::new(), &mut out).expect("seal");
        lines.insert(i + 1, String::from_utf8(out).expect("utf-8"));
        let (r, p) = check(&tmp, "insert.jsonl", &joined(&lines), &pk);
        assert_eq!(
            at(&p),
            (TamperClass::Inserted, i as u64 + 2, Some(TARGET + 1)),
            "{r}"
        );

        // A copy of an earlier record replayed later.
        let (tmp, mut lines, pk) = fixture("replay");
        let i = idx_of_seq(&lines, TARGET);
        let copy = lines[idx_of_seq(&lines, 10)].clone();
        lines.insert(i + 1, copy);
        let (r, p) = check(&tmp, "replay.jsonl", &joined(&lines), &pk);
        assert_eq!(
            at(&p),
            (TamperClass::Inserted, i as u64 + 2, Some(10)),
            "{r}"
        );

        // A line that is not a chained record at all.
        let (tmp, mut lines, pk) = fixture("plain");
        let i = idx_of_seq(&lines, TARGET);
        lines.insert(i + 1, r#"{"event":"connection","seq":5}"#.into());
        let (r, p) = check(&tmp, "plain.jsonl", &joined(&lines), &pk);
        assert_eq!(
            at(&p),
            (TamperClass::Inserted, i as u64 + 2, Some(5)),
            "{r}"
        );
    }

    #[test]
    fn swapping_two_records_is_reordered() {
        let (tmp, mut lines, pk) = fixture("swap");
        let i = idx_of_seq(&lines, TARGET);
        lines.swap(i, i + 1);
        let (r, p) = check(&tmp, "swap.jsonl", &joined(&lines), &pk);
        assert_eq!(
            at(&p),
            (TamperClass::Reordered, i as u64 + 1, Some(TARGET + 1)),
            "{r}"
        );
        assert!(p.detail.contains("swapped"), "{r}");

        // Moved further down the file.
        let (tmp, mut lines, pk) = fixture("move");
        let i = idx_of_seq(&lines, TARGET);
        let moved = lines.remove(i);
        lines.insert(i + 5, moved);
        let (r, p) = check(&tmp, "move.jsonl", &joined(&lines), &pk);
        assert_eq!(
            at(&p),
            (TamperClass::Reordered, i as u64 + 1, Some(TARGET)),
            "{r}"
        );
        assert!(p.detail.contains(&format!("line {}", i + 6)), "{r}");
    }

    #[test]
    fn a_torn_last_record_is_truncated() {
        let (tmp, lines, pk) = fixture("truncate");
        let last = lines.last().expect("a record");
        let last_seq = parse(last)["seq"].as_u64().expect("seq");
        let mut text = joined(&lines[..lines.len() - 1]);
        text.push_str(&last[..last.len() / 2]);
        let (r, p) = check(&tmp, "truncate.jsonl", &text, &pk);
        assert_eq!(
            at(&p),
            (TamperClass::Truncated, lines.len() as u64, Some(last_seq)),
            "{r}"
        );
        assert_eq!(r.last_seq, Some(last_seq - 1), "{r}");
    }

    #[test]
    fn a_garbage_line_is_unparseable() {
        let (tmp, mut lines, pk) = fixture("garbage");
        let i = idx_of_seq(&lines, TARGET);
        lines[i] = "this is not json".into();
        let (r, p) = check(&tmp, "garbage.jsonl", &joined(&lines), &pk);
        assert_eq!(
            at(&p),
            (TamperClass::Unparseable, i as u64 + 1, Some(TARGET)),
            "{r}"
        );
    }

    #[test]
    fn a_rehashed_chain_signed_by_another_key_is_resigned() {
        let (tmp, lines, pk) = fixture("resign");
        // A whole log made elsewhere, with another key, in place of this host's.
        let other = TempDir::new("resign-other");
        let (other_dir, other_pk) = write_log(&other.0, RECORDS, EVERY);
        assert_ne!(pk, other_pk);
        let forged = lines_text(&other_dir);
        let (r, p) = check(&tmp, "replaced.jsonl", &forged, &pk);
        let first_cp = lines
            .iter()
            .position(|l| parse(l)["event"] == CHECKPOINT_EVENT)
            .expect("a checkpoint");
        assert_eq!(
            at(&p),
            (
                TamperClass::Resigned,
                first_cp as u64 + 1,
                Some(first_cp as u64)
            ),
            "{r}"
        );
        assert!(p.detail.contains(&hex(&other_pk)), "{r}");
        // Without the real key it is consistent: only the warning says so.
        let r = verify(&tmp.0.join("replaced.jsonl"), None);
        assert!(r.ok(), "{r}");
        assert_eq!(r.key, KeySource::Embedded(Some(other_pk)));

        // One record changed, everything after it re-hashed and re-signed.
        let mut edited = lines.clone();
        let i = idx_of_seq(&edited, TARGET);
        edited[i] = edited[i].replacen("\"allow\"", "\"deny\"", 1);
        let attacker = SigningKey::from_bytes(&[9; 32]);
        rechain(&mut edited, i, Some(&attacker));
        let next_cp = i + edited[i..]
            .iter()
            .position(|l| parse(l)["event"] == CHECKPOINT_EVENT)
            .expect("a later checkpoint");
        let (r, p) = check(&tmp, "resigned.jsonl", &joined(&edited), &pk);
        assert_eq!(
            at(&p),
            (
                TamperClass::Resigned,
                next_cp as u64 + 1,
                Some(next_cp as u64)
            ),
            "{r}"
        );
        // Even without --pubkey: the key changes in the middle of the log.
        let r = verify(&tmp.0.join("resigned.jsonl"), None);
        assert_eq!(
            r.problem.as_ref().map(at),
            Some((
                TamperClass::Resigned,
                next_cp as u64 + 1,
                Some(next_cp as u64)
            )),
            "{r}"
        );

        // Re-hashed without re-signing: the old signature no longer matches.
        let mut edited = lines.clone();
        edited[i] = edited[i].replacen("\"allow\"", "\"deny\"", 1);
        rechain(&mut edited, i, None);
        let (r, p) = check(&tmp, "rehashed.jsonl", &joined(&edited), &pk);
        assert_eq!(
            at(&p),
            (
                TamperClass::Resigned,
                next_cp as u64 + 1,
                Some(next_cp as u64)
            ),
            "{r}"
        );
        assert!(p.detail.contains("does not verify"), "{r}");
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("mkdir copy");
        for e in std::fs::read_dir(from).expect("read dir").flatten() {
            if e.path().is_file() {
                std::fs::copy(e.path(), to.join(e.file_name())).expect("copy file");
            }
        }
    }

    fn segmented(tag: &str, retain_bytes: u64) -> (TempDir, PathBuf, [u8; 32]) {
        let tmp = TempDir::new(tag);
        let o = super::super::AuditOptions {
            rotate_bytes: 16 * 1024,
            retain_bytes,
            ..super::super::testutil::opts(100)
        };
        let (dir, pk) = super::super::testutil::write_log_with(&tmp.0, 600, o);
        (tmp, dir, pk)
    }

    /// A fresh copy of `dir` for one tampering case.
    fn case(tmp: &TempDir, dir: &Path, name: &str) -> (PathBuf, Vec<segments::Segment>) {
        let copy = tmp.0.join(name);
        copy_dir(dir, &copy);
        let segs = segments::list(&copy).expect("list");
        (copy, segs)
    }

    fn at_file(p: &Problem) -> (TamperClass, String, u64) {
        (p.class, file_name(&p.file), p.line)
    }

    #[test]
    fn segments_verify_in_seq_order_and_tampering_across_them_is_found() {
        let (tmp, dir, pk) = segmented("segs", 0);
        let r = verify(&dir, Some(&pk));
        assert!(r.ok(), "{r}");
        let n = segments::list(&dir).expect("list").len();
        assert!(n >= 5, "{r}");
        assert_eq!(r.files.len(), n + 1, "{r}");
        // A copied state directory works too.
        let r = verify(&tmp.0, Some(&pk));
        assert!(r.ok() && r.files.len() == n + 1, "{r}");

        // A segment renamed out of the log's names is not read, and said so.
        let (c, segs) = case(&tmp, &dir, "renamed");
        std::fs::rename(&segs[1].path, c.join("old.jsonl")).expect("rename");
        let r = verify(&c, Some(&pk));
        assert_eq!(
            r.problem.as_ref().map(|p| (p.class, file_name(&p.file))),
            Some((TamperClass::Deleted, segs[2].name())),
            "{r}"
        );
        assert_eq!(r.ignored, [c.join("old.jsonl")], "{r}");
        assert!(r.to_string().contains("old.jsonl"), "{r}");

        // The oldest segment removed by hand: no audit_retention record names it.
        let (c, segs) = case(&tmp, &dir, "no-oldest");
        std::fs::remove_file(&segs[0].path).expect("rm");
        let r = verify(&c, Some(&pk));
        let p = r.problem.clone().expect("detected");
        assert_eq!(
            at_file(&p),
            (TamperClass::Deleted, segs[1].name(), 1),
            "{r}"
        );
        assert_eq!(p.seq, Some(segs[1].first_seq - 1), "{r}");
        assert!(p.detail.contains("no audit_retention record"), "{r}");
        assert!(
            r.to_string()
                .contains(&format!("line 1 of {}", segs[1].name())),
            "{r}"
        );

        // A segment in the middle removed.
        let (c, segs) = case(&tmp, &dir, "no-middle");
        std::fs::remove_file(&segs[2].path).expect("rm");
        let r = verify(&c, Some(&pk));
        let p = r.problem.clone().expect("detected");
        assert_eq!(
            at_file(&p),
            (TamperClass::Deleted, segs[3].name(), 1),
            "{r}"
        );
        assert_eq!(p.seq, Some(segs[2].first_seq), "{r}");

        // The end of a segment cut at a record boundary (its checkpoint and a record).
        let (c, segs) = case(&tmp, &dir, "cut");
        let l = lines_of(&segs[1].path);
        std::fs::write(&segs[1].path, joined(&l[..l.len() - 2])).expect("cut");
        let r = verify(&c, Some(&pk));
        let p = r.problem.clone().expect("detected");
        assert_eq!(
            at_file(&p),
            (TamperClass::Deleted, segs[2].name(), 1),
            "{r}"
        );

        // A segment cut in the middle of a record.
        let (c, segs) = case(&tmp, &dir, "torn-seg");
        let text = std::fs::read(&segs[1].path).expect("read");
        std::fs::write(&segs[1].path, &text[..text.len() - 100]).expect("truncate");
        let r = verify(&c, Some(&pk));
        let p = r.problem.clone().expect("detected");
        let l = lines_of(&segs[1].path).len() as u64;
        assert_eq!(
            at_file(&p),
            (TamperClass::Truncated, segs[1].name(), l),
            "{r}"
        );

        // Two segments swapped (their names too, so the files still sort).
        let (c, segs) = case(&tmp, &dir, "swap");
        let a = std::fs::read(&segs[1].path).expect("read");
        let b = std::fs::read(&segs[2].path).expect("read");
        std::fs::write(&segs[1].path, b).expect("write");
        std::fs::write(&segs[2].path, a).expect("write");
        let r = verify(&c, Some(&pk));
        assert!(!r.ok(), "{r}");
        assert_eq!(
            r.problem.as_ref().map(|p| file_name(&p.file)),
            Some(segs[1].name()),
            "{r}"
        );

        // A whole segment replaced with a consistent one, re-hashed and signed by
        // another key: the checkpoint at its end gives it away.
        let (c, segs) = case(&tmp, &dir, "resigned");
        let mut l = lines_of(&segs[2].path);
        l[3] = l[3].replacen("\"allow\"", "\"deny\"", 1);
        let first_prev = parse(&l[0])["prev_hash"].clone();
        let mut all = vec![format!("{{\"hash\":{first_prev}}}")];
        all.extend(l);
        rechain(&mut all, 1, Some(&SigningKey::from_bytes(&[7; 32])));
        std::fs::write(&segs[2].path, joined(&all[1..])).expect("write");
        let r = verify(&c, Some(&pk));
        let p = r.problem.clone().expect("detected");
        assert_eq!(
            (p.class, file_name(&p.file)),
            (TamperClass::Resigned, segs[2].name()),
            "{r}"
        );

        // One segment on its own: its start is not the chain's start.
        let r = verify(&segs[2].path, Some(&pk));
        let p = r.problem.clone().expect("a lone segment");
        assert_eq!(p.class, TamperClass::Deleted, "{r}");
        assert!(p.detail.contains("verify the directory"), "{r}");
    }

    #[test]
    fn a_log_shortened_by_retention_verifies_and_says_so() {
        let (tmp, dir, pk) = segmented("retained", 48 * 1024);
        let r = verify(&dir, Some(&pk));
        assert!(r.ok(), "{r}");
        let start = r.retention_start.clone().expect("retention start");
        assert_eq!(r.first_seq, Some(start.removed_last_seq + 1), "{r}");
        let shown = r.to_string();
        assert!(
            shown.contains(&start.removed_file) && shown.contains("legitimate"),
            "{shown}"
        );
        assert!(r.warnings().is_empty(), "{r}");

        // One more segment removed by hand: no retention record names it.
        let (c, segs) = case(&tmp, &dir, "retained-cut");
        std::fs::remove_file(&segs[0].path).expect("rm");
        let r = verify(&c, Some(&pk));
        let p = r.problem.clone().expect("detected");
        assert_eq!(
            at_file(&p),
            (TamperClass::Deleted, segs[1].name(), 1),
            "{r}"
        );
        assert!(r.retention_start.is_none(), "{r}");

        // The retention record itself edited: the chain breaks there.
        let (c, _) = case(&tmp, &dir, "retained-forged");
        let files = segments::log_files(&c).expect("files");
        let (f, i) = files
            .iter()
            .find_map(|f| {
                lines_of(f)
                    .iter()
                    .position(|l| l.contains("\"event\":\"audit_retention\""))
                    .map(|i| (f.clone(), i))
            })
            .expect("a retention record");
        let mut l = lines_of(&f);
        l[i] = l[i].replacen("\"reason\":\"size\"", "\"reason\":\"age!\"", 1);
        std::fs::write(&f, joined(&l)).expect("write");
        let r = verify(&c, Some(&pk));
        assert_eq!(
            r.problem.as_ref().map(|p| p.class),
            Some(TamperClass::Modified),
            "{r}"
        );
    }

    fn lines_of(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .expect("read")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn lines_text(dir: &Path) -> String {
        joined(&lines(dir))
    }

    #[test]
    fn a_missing_file_is_unreadable() {
        let tmp = TempDir::new("missing");
        let r = verify(&tmp.0, None);
        assert_eq!(
            r.problem.as_ref().map(|p| p.class),
            Some(TamperClass::Unreadable),
            "{r}"
        );
        assert!(r.to_string().contains("audit.jsonl"), "{r}");
    }
}
