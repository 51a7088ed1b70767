//! The files of an audit log and which of them retention removes.
//!
//! An audit directory holds the live file, `audit.jsonl`, which the writer
//! appends to, and closed segments, `audit-<seq>.jsonl`, where `<seq>` is the
//! `seq` of the segment's first record as 20 decimal digits (so names sort in
//! chain order). A segment is the live file renamed at rotation: it ends with a
//! signed checkpoint, and the first record of the next file links to that
//! checkpoint. Retention removes closed segments, oldest first and only as a
//! prefix of the log, so what remains always starts where a removed segment ended.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::Value;

/// Name of the live file, the one the writer appends to.
pub const LIVE_FILE: &str = "audit.jsonl";

/// `event` of the record written before a segment is removed by retention.
pub const RETENTION_EVENT: &str = "audit_retention";

const PREFIX: &str = "audit-";
const SUFFIX: &str = ".jsonl";
const SEQ_DIGITS: usize = 20;

/// File name of the segment whose first record has `first_seq`.
pub fn segment_name(first_seq: u64) -> String {
    format!("{PREFIX}{first_seq:0SEQ_DIGITS$}{SUFFIX}")
}

/// The first `seq` a segment name stands for; `None` for any other name.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.len() != SEQ_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A closed segment on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub path: PathBuf,
    pub first_seq: u64,
    pub bytes: u64,
    /// Last modification: when its last record was written.
    pub modified: SystemTime,
}

impl Segment {
    pub fn name(&self) -> String {
        segment_name(self.first_seq)
    }
}

/// The closed segments in `dir`, oldest (lowest first seq) first. Names that
/// are not segment names, and anything that is not a regular file, are left out.
pub fn list(dir: &Path) -> std::io::Result<Vec<Segment>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let Some(first_seq) = e.file_name().to_str().and_then(parse_segment_name) else {
            continue;
        };
        let meta = match e.metadata() {
            Ok(m) if m.is_file() => m,
            _ => continue,
        };
        out.push(Segment {
            path: e.path(),
            first_seq,
            bytes: meta.len(),
            modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        });
    }
    out.sort_by_key(|s| s.first_seq);
    Ok(out)
}

/// Every file of the log in chain order: the segments, then the live file if
/// it exists.
pub fn log_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = list(dir)?.into_iter().map(|s| s.path).collect();
    let live = dir.join(LIVE_FILE);
    if live.is_file() {
        files.push(live);
    }
    Ok(files)
}

/// The `seq` of the first line of `path` that is a JSON object with one (a torn
/// or damaged line before it is skipped), looking at the first 1000 lines only.
pub fn first_seq(path: &Path) -> std::io::Result<Option<u64>> {
    let f = File::open(path)?;
    let mut r = BufReader::new(f.take(16 << 20));
    let mut line = Vec::new();
    for _ in 0..1000 {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if let Ok(v) = serde_json::from_slice::<Value>(&line)
            && let Some(seq) = v.get("seq").and_then(Value::as_u64)
        {
            return Ok(Some(seq));
        }
    }
    Ok(None)
}

/// Why retention removes a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Its last record is older than `audit_retain_secs`.
    Age,
    /// The log's files together are larger than `audit_retain_bytes`.
    Size,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Age => "age",
            Self::Size => "size",
        }
    }
}

/// Which segments retention removes: the oldest ones, in order, while the
/// oldest remaining one is older than `retain_age` (if not zero) or the log
/// (segments plus `live_bytes`) is larger than `retain_bytes` (if not zero).
/// It stops at the first segment it keeps, so what is removed is always a
/// prefix of the log and what remains is a contiguous chain. The live file is
/// never removed. Returns indexes into `segments` (sorted oldest first).
pub fn plan_retention(
    segments: &[Segment],
    live_bytes: u64,
    now: SystemTime,
    retain_age: Duration,
    retain_bytes: u64,
) -> Vec<(usize, Reason)> {
    let mut total = segments
        .iter()
        .fold(live_bytes, |t, s| t.saturating_add(s.bytes));
    let mut out = Vec::new();
    for (i, s) in segments.iter().enumerate() {
        let too_old = !retain_age.is_zero()
            && now
                .duration_since(s.modified)
                .is_ok_and(|age| age >= retain_age);
        let too_big = retain_bytes > 0 && total > retain_bytes;
        let reason = match (too_old, too_big) {
            (true, _) => Reason::Age,
            (false, true) => Reason::Size,
            (false, false) => break,
        };
        out.push((i, reason));
        total = total.saturating_sub(s.bytes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_sort_in_seq_order() {
        assert_eq!(segment_name(42), "audit-00000000000000000042.jsonl");
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        for bad in [
            "audit.jsonl",
            "audit-42.jsonl",
            "audit-0000000000000000004x.jsonl",
            "audit-00000000000000000042.jsonl.gz",
            "xaudit-00000000000000000042.jsonl",
        ] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
        let mut names = [segment_name(1000), segment_name(99), segment_name(5)];
        names.sort();
        assert_eq!(
            names,
            [segment_name(5), segment_name(99), segment_name(1000)]
        );
    }

    fn seg(first_seq: u64, bytes: u64, age_secs: u64, now: SystemTime) -> Segment {
        Segment {
            path: PathBuf::from(segment_name(first_seq)),
            first_seq,
            bytes,
            modified: now - Duration::from_secs(age_secs),
        }
    }

    #[test]
    fn retention_removes_a_prefix_by_age_or_size() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let segs = [
            seg(0, 100, 500, now),
            seg(10, 100, 400, now),
            seg(20, 100, 300, now),
        ];
        let none = plan_retention(&segs, 50, now, Duration::ZERO, 0);
        assert!(none.is_empty(), "keep forever by default: {none:?}");
        assert_eq!(
            plan_retention(&segs, 50, now, Duration::from_secs(350), 0),
            [(0, Reason::Age), (1, Reason::Age)]
        );
        // 350 bytes in all: down to 200 means removing the two oldest.
        assert_eq!(
            plan_retention(&segs, 50, now, Duration::ZERO, 200),
            [(0, Reason::Size), (1, Reason::Size)]
        );
        assert_eq!(
            plan_retention(&segs, 50, now, Duration::from_secs(450), 240),
            [(0, Reason::Age), (1, Reason::Size)]
        );
        // The live file alone over the limit: every segment goes, never the live file.
        assert_eq!(
            plan_retention(&segs, 1000, now, Duration::ZERO, 500).len(),
            3
        );
        // An old segment behind a newer one (touched by hand) is not removed
        // out of order: what remains stays contiguous.
        let odd = [seg(0, 100, 10, now), seg(10, 100, 900, now)];
        assert!(plan_retention(&odd, 0, now, Duration::from_secs(60), 0).is_empty());
    }
}
