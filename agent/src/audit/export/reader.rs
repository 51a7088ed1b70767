//! Reads the durable audit log in `seq` order, from any point, across
//! rotation: the log is the exporter's spool.
//!
//! The reader keeps one file open. At the end of it, it checks whether the
//! file is still the live file; if the writer has renamed it into a segment, it
//! reads what is left and moves on to the next file. A line without its newline
//! (a record being written) is read again later. Segments that retention
//! removed before they were read show up as a [`Gap`].

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::audit::segments;

/// The fields of a record the exporter needs for every record (the syslog
/// header, severity, filters), read without building the whole JSON tree.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Meta {
    pub seq: u64,
    #[serde(default)]
    pub event: String,
    #[serde(default)]
    pub event_id: String,
    #[serde(default)]
    pub time: String,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub decision: Option<String>,
    /// Present and not null.
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

impl Meta {
    pub fn has_error(&self) -> bool {
        self.error.is_some()
    }
}

/// One record of the log.
#[derive(Debug, Clone)]
pub struct Record {
    pub seq: u64,
    /// The line as written (without its newline): the record whose hash verifies.
    pub line: String,
    pub meta: Meta,
}

impl Record {
    /// A record from one line of the log; `None` for a line that is not a
    /// JSON object with a `seq` (a torn line, a damaged one).
    pub fn parse(line: String) -> Option<Self> {
        let meta: Meta = serde_json::from_str(&line).ok()?;
        Some(Self {
            seq: meta.seq,
            line,
            meta,
        })
    }

    /// The whole record as a JSON value (parsed again: only OCSF needs it).
    pub fn value(&self) -> Value {
        serde_json::from_str(&self.line).unwrap_or(Value::Null)
    }

    pub fn event(&self) -> &str {
        &self.meta.event
    }

    pub fn event_id(&self) -> &str {
        &self.meta.event_id
    }

    pub fn time(&self) -> &str {
        &self.meta.time
    }
}

/// Records `first..=last` are not in the log any more (removed by retention,
/// or missing from the files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub first: u64,
    pub last: u64,
}

#[derive(Debug, Default)]
pub struct Batch {
    pub records: Vec<Record>,
    pub gaps: Vec<Gap>,
}

struct Open {
    reader: BufReader<File>,
    ino: u64,
    /// Offset of the next line.
    pos: u64,
    /// `seq` of the file's first record, when known.
    first_seq: Option<u64>,
    /// The file was seen renamed away from the live name: this is the last
    /// read to its end.
    final_pass: bool,
}

pub struct LogReader {
    dir: PathBuf,
    /// `seq` of the next record wanted; `None`: the oldest one in the log.
    next_seq: Option<u64>,
    cur: Option<Open>,
    /// First seq of the newest file read to its end (never reopened).
    done_first: Option<u64>,
}

impl LogReader {
    /// A reader of the log in `dir` that starts at `next_seq` (`None`: at the
    /// oldest record there is).
    pub fn new(dir: &Path, next_seq: Option<u64>) -> Self {
        Self {
            dir: dir.to_owned(),
            next_seq,
            cur: None,
            done_first: None,
        }
    }

    /// Starts again at `seq` (records sent on a broken connection).
    pub fn rewind(&mut self, seq: u64) {
        self.next_seq = Some(seq);
        self.cur = None;
        self.done_first = None;
    }

    /// Up to `max` records after the last one returned, in seq order; fewer
    /// (or none) when the reader is at the end of the log.
    pub fn read(&mut self, max: usize) -> std::io::Result<Batch> {
        self.read_before(max, None)
    }

    /// As [`LogReader::read`], stopping before the first record whose `seq` is
    /// `before` or more (records written but not yet durable).
    pub fn read_before(&mut self, max: usize, before: Option<u64>) -> std::io::Result<Batch> {
        let mut out = Batch::default();
        let mut line = Vec::new();
        while out.records.len() < max {
            if self.cur.is_none() && !self.open_next(&mut out)? {
                break;
            }
            let Some(cur) = self.cur.as_mut() else { break };
            let mut at_end = false;
            while out.records.len() < max {
                line.clear();
                let n = cur.reader.read_until(b'\n', &mut line)?;
                if n == 0 {
                    at_end = true;
                    break;
                }
                if line.last() != Some(&b'\n') {
                    // Being written: read it again next time.
                    cur.reader.seek(SeekFrom::Start(cur.pos))?;
                    at_end = true;
                    break;
                }
                let line_start = cur.pos;
                cur.pos += n as u64;
                let text = String::from_utf8_lossy(&line[..n - 1]).into_owned();
                let Some(rec) = Record::parse(text) else {
                    continue; // a torn line left by a crash: not a record
                };
                let seq = rec.seq;
                if before.is_some_and(|b| seq >= b) {
                    // Not durable yet: read it again next time.
                    cur.reader.seek(SeekFrom::Start(line_start))?;
                    cur.pos = line_start;
                    return Ok(out);
                }
                cur.first_seq.get_or_insert(seq);
                match self.next_seq {
                    Some(want) if seq < want => continue,
                    Some(want) if seq > want => out.gaps.push(Gap {
                        first: want,
                        last: seq - 1,
                    }),
                    _ => {}
                }
                self.next_seq = Some(seq + 1);
                out.records.push(rec);
            }
            if !at_end {
                break;
            }
            if cur.final_pass {
                self.done_first = cur.first_seq.max(self.done_first);
                self.cur = None;
                continue;
            }
            let live_ino = std::fs::metadata(self.dir.join(segments::LIVE_FILE))
                .ok()
                .map(|m| m.ino());
            if live_ino == Some(cur.ino) {
                break; // at the end of the live file: caught up
            }
            // Renamed into a segment (or a segment all along): what it holds
            // now is all it will ever hold; read to its end once more.
            cur.final_pass = true;
        }
        Ok(out)
    }

    /// Opens the file holding `next_seq` (or the oldest file). Returns false
    /// when the log has no file to read.
    fn open_next(&mut self, out: &mut Batch) -> std::io::Result<bool> {
        let mut files: Vec<(Option<u64>, PathBuf)> = match segments::list(&self.dir) {
            Ok(s) => s.into_iter().map(|s| (Some(s.first_seq), s.path)).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let live = self.dir.join(segments::LIVE_FILE);
        match segments::first_seq(&live) {
            Ok(first) => files.push((first, live)),
            // Between a rotation's rename and the new live file: look again later.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some(done) = self.done_first {
            files.retain(|(f, _)| f.is_none_or(|f| f > done));
        }
        let with_records: Vec<&(Option<u64>, PathBuf)> =
            files.iter().filter(|(f, _)| f.is_some()).collect();
        let pick = match self.next_seq {
            None => with_records.first().copied(),
            Some(want) => match with_records
                .iter()
                .rev()
                .find(|(f, _)| f.is_some_and(|f| f <= want))
            {
                Some(found) => Some(*found),
                None => match with_records.first() {
                    Some(oldest @ (Some(first), _)) => {
                        // Everything from `want` up to the oldest file is gone.
                        out.gaps.push(Gap {
                            first: want,
                            last: first - 1,
                        });
                        self.next_seq = Some(*first);
                        Some(*oldest)
                    }
                    _ => None,
                },
            },
        };
        // No file with records (yet): wait on the empty live file, if any.
        let (first_seq, path) = match pick {
            Some((f, p)) => (*f, p.clone()),
            None => match files.last() {
                Some((None, p)) => (None, p.clone()),
                _ => return Ok(false),
            },
        };
        let f = match File::open(&path) {
            Ok(f) => f,
            // Renamed or removed between listing and opening: look again later.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let ino = f.metadata()?.ino();
        self.cur = Some(Open {
            reader: BufReader::with_capacity(256 * 1024, f),
            ino,
            pos: 0,
            first_seq,
            final_pass: false,
        });
        Ok(true)
    }
}

/// Where a sink stands: the last record it exported, kept in
/// `<state_dir>/export/<sink>.cursor` and replaced atomically.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    pub sink: String,
    /// `seq` of the last record the sink accepted.
    pub seq: u64,
    pub event_id: String,
    /// When the cursor was written (RFC 3339).
    pub updated: String,
}

pub fn cursor_path(export_dir: &Path, sink: &str) -> PathBuf {
    export_dir.join(format!("{sink}.cursor"))
}

/// The sink's cursor; `Ok(None)` if it has none yet. An unreadable cursor is an
/// error: the caller starts over from the oldest record (duplicates, no loss).
pub fn load_cursor(path: &Path) -> Result<Option<Cursor>, String> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("cursor file {} is not valid: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cursor file {}: {e}", path.display())),
    }
}

/// Writes the cursor to a temporary file, syncs it and renames it over the
/// old one: a crash leaves the old cursor or the new one, never half of one.
pub fn store_cursor(path: &Path, c: &Cursor) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("cursor.tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    let mut body = serde_json::to_vec(c).map_err(std::io::Error::other)?;
    body.push(b'\n');
    f.write_all(&body)?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)
}
