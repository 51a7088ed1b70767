//! Reading recordings back: whole sessions (for show, replay, export), one-line
//! summaries (for list), filters, lookup by id prefix, and the audit log's record
//! of a recording's sha256. Works on copied files; never writes.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

/// Bytes read from the end of a file to find its `session_end` line for `list`
/// (the line is a few hundred bytes).
const TAIL: u64 = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path} is not a session recording: {reason}")]
    NotRecording { path: PathBuf, reason: String },
    #[error("no session recording with id or prefix `{id}` under {dir}")]
    NotFound { id: String, dir: PathBuf },
    #[error("`{id}` is ambiguous: {} recordings start with it ({}); give more of the id", .matches.len(), .matches.join(", "))]
    Ambiguous { id: String, matches: Vec<String> },
    #[error("{0}")]
    BadTime(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReadError + '_ {
    move |error| ReadError::Io {
        path: path.to_owned(),
        error,
    }
}

/// One line of a recording.
#[derive(Debug, Clone)]
pub struct Event {
    pub seq: u64,
    pub time: String,
    pub elapsed_us: u64,
    pub kind: String,
    pub data: Value,
}

/// A whole recording, with what was wrong with the file, if anything.
#[derive(Debug)]
pub struct Session {
    pub path: PathBuf,
    pub id: String,
    pub host: String,
    /// The `session_start` line.
    pub start: Event,
    /// Every line, `session_start` first.
    pub events: Vec<Event>,
    /// Problems found while reading (torn last line, lines that are not events).
    pub warnings: Vec<String>,
}

impl Session {
    pub fn meta(&self) -> &Value {
        &self.start.data
    }
}

fn event_of(v: &Value) -> Result<Event, String> {
    let kind = v["event"].as_str().ok_or("no `event` field")?.to_string();
    Ok(Event {
        seq: v["seq"].as_u64().ok_or("no `seq` field")?,
        time: v["time"].as_str().unwrap_or("").to_string(),
        elapsed_us: v["elapsed_us"].as_u64().unwrap_or(0),
        kind,
        data: v.get("data").cloned().unwrap_or(Value::Null),
    })
}

/// Reads a whole recording. A torn last line (what a crash or a kill during a
/// write leaves) is reported as a warning and left out; so is any line that is not
/// an event, with its line number. A file that does not start with a
/// `session_start` header is refused.
pub fn load(path: &Path) -> Result<Session, ReadError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let not = |reason: String| ReadError::NotRecording {
        path: path.to_owned(),
        reason,
    };
    if bytes.is_empty() {
        return Err(not("the file is empty".into()));
    }
    let ends_with_newline = bytes.last() == Some(&b'\n');
    let pieces: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    // split() yields an empty last piece after a final newline.
    let n = if ends_with_newline {
        pieces.len() - 1
    } else {
        pieces.len()
    };
    let mut events: Vec<Event> = Vec::new();
    let mut warnings = Vec::new();
    for (i, raw) in pieces.iter().take(n).enumerate() {
        let line = i + 1;
        let last = line == n;
        let torn = last && !ends_with_newline;
        let parsed = serde_json::from_slice::<Value>(raw)
            .map_err(|e| e.to_string())
            .and_then(|v| event_of(&v));
        match parsed {
            Ok(e) => {
                if torn {
                    warnings.push(format!(
                        "line {line}: the last line has no final newline (the agent stopped while writing it); it parses and is shown"
                    ));
                }
                if let Some(prev) = events.last()
                    && e.seq != prev.seq + 1
                {
                    warnings.push(format!(
                        "line {line}: seq {} follows seq {}: events are missing or out of order",
                        e.seq, prev.seq
                    ));
                }
                events.push(e);
            }
            Err(e) if i == 0 => return Err(not(format!("line 1 is not a recording header: {e}"))),
            Err(_) if last => {
                warnings.push(format!(
                    "line {line}: torn last line ({} bytes, cut while it was being written, e.g. by a crash); ignored",
                    raw.len()
                ));
            }
            Err(e) => warnings.push(format!(
                "line {line}: not a recording event ({e}): skipped: {}",
                String::from_utf8_lossy(&raw[..raw.len().min(80)])
            )),
        }
    }
    let Some(start) = events.first().cloned() else {
        return Err(not("no complete line".into()));
    };
    if start.kind != "session_start" {
        return Err(not(format!(
            "the first line is a `{}` event, not `session_start`",
            start.kind
        )));
    }
    let head: Value = serde_json::from_slice(pieces[0]).unwrap_or(Value::Null);
    if events.iter().all(|e| e.kind != "session_end") {
        warnings.push(
            "no session_end: the session was still open, or the agent stopped before it ended"
                .into(),
        );
    }
    Ok(Session {
        path: path.to_owned(),
        id: head["session_id"].as_str().unwrap_or("?").to_string(),
        host: head["host"].as_str().unwrap_or("?").to_string(),
        start,
        events,
        warnings,
    })
}

/// One line of `sessions list`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub id: String,
    pub file: String,
    pub start: String,
    #[serde(skip)]
    pub start_us: i64,
    pub duration_ms: Option<u64>,
    pub host: String,
    pub workloads: Vec<String>,
    pub exe: Option<String>,
    pub unit: Option<String>,
    pub user: Option<String>,
    pub uid: Option<u64>,
    pub client: Option<String>,
    pub target: Option<String>,
    pub destination: Option<String>,
    pub protocol: Option<String>,
    pub decision: Option<String>,
    pub rule: Option<String>,
    /// Lines written (from `session_end`), None while the session has no end.
    pub events: Option<u64>,
    pub dropped_events: Option<u64>,
    pub truncated: bool,
    pub ended: bool,
}

/// The header and the end of a recording, without reading all of it.
pub fn summarize(path: &Path) -> Result<Summary, ReadError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let len = f.metadata().map_err(io(path))?.len();
    let not = |reason: String| ReadError::NotRecording {
        path: path.to_owned(),
        reason,
    };
    let mut first = String::new();
    BufReader::new(&mut f)
        .read_line(&mut first)
        .map_err(io(path))?;
    let head: Value = serde_json::from_str(first.trim_end())
        .map_err(|e| not(format!("line 1 is not a recording header: {e}")))?;
    if head["event"] != "session_start" {
        return Err(not("the first line is not `session_start`".into()));
    }
    f.seek(SeekFrom::Start(len.saturating_sub(TAIL)))
        .map_err(io(path))?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).map_err(io(path))?;
    let end: Option<Value> = tail
        .split(|b| *b == b'\n')
        .rev()
        .filter(|l| !l.is_empty())
        .take(2)
        .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
        .find(|v| v["event"] == "session_end");
    let meta = &head["data"];
    let attr = &meta["attribution"];
    let s = |v: &Value| v.as_str().map(str::to_string);
    let start = head["time"].as_str().unwrap_or("").to_string();
    let end_data = end.as_ref().map(|e| &e["data"]);
    Ok(Summary {
        id: head["session_id"].as_str().unwrap_or("?").to_string(),
        file: path.display().to_string(),
        start_us: parse_rfc3339(&start).unwrap_or(0),
        start,
        duration_ms: end.as_ref().map(|e| {
            e["data"]["duration_ms"]
                .as_u64()
                .unwrap_or_else(|| e["elapsed_us"].as_u64().unwrap_or(0) / 1000)
        }),
        host: head["host"].as_str().unwrap_or("?").to_string(),
        workloads: meta["workloads"]
            .as_array()
            .map(|a| a.iter().filter_map(s).collect())
            .unwrap_or_default(),
        exe: s(&attr["exe"]),
        unit: s(&attr["unit"]),
        user: s(&attr["user"]),
        uid: attr["uid"].as_u64(),
        client: s(&meta["client"]),
        target: s(&meta["target"]),
        destination: s(&meta["original_destination"]),
        protocol: s(&meta["protocol"]),
        decision: s(&meta["decision"]),
        rule: s(&meta["rule"]),
        events: end_data.and_then(|d| d["events"].as_u64()),
        dropped_events: end_data.and_then(|d| d["dropped_events"].as_u64()),
        truncated: end_data.is_some_and(|d| d["truncated"] == true),
        ended: end.is_some(),
    })
}

/// What `sessions list` keeps.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Sessions that started at or after this (µs since the epoch).
    pub since_us: Option<i64>,
    /// Sessions that started at or before this.
    pub until_us: Option<i64>,
    pub workload: Option<String>,
    pub target: Option<String>,
    pub decision: Option<String>,
    pub host: Option<String>,
}

impl Filter {
    pub fn keeps(&self, s: &Summary) -> bool {
        let eq = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_deref() == Some(w))
        };
        self.since_us.is_none_or(|t| s.start_us >= t)
            && self.until_us.is_none_or(|t| s.start_us <= t)
            && self
                .workload
                .as_ref()
                .is_none_or(|w| s.workloads.iter().any(|x| x == w))
            && eq(&self.target, &s.target)
            && eq(&self.decision, &s.decision)
            && self.host.as_ref().is_none_or(|h| &s.host == h)
    }
}

/// Every `*.jsonl` file in `dir` and in its direct subdirectories (the per-day
/// directories), sorted by path.
pub fn files(dir: &Path) -> Result<Vec<PathBuf>, ReadError> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(io(dir))?;
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Ok(sub) = std::fs::read_dir(&p) {
                out.extend(sub.flatten().map(|e| e.path()).filter(|p| is_jsonl(p)));
            }
        } else if is_jsonl(&p) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

fn is_jsonl(p: &Path) -> bool {
    p.is_file() && p.extension().is_some_and(|e| e == "jsonl")
}

/// Summaries of every recording under `dir` that `filter` keeps, oldest first.
/// Files that are not recordings are returned as errors beside the list.
pub fn list(dir: &Path, filter: &Filter) -> Result<(Vec<Summary>, Vec<ReadError>), ReadError> {
    let mut out = Vec::new();
    let mut errs = Vec::new();
    for p in files(dir)? {
        if !day_may_match(&p, filter) {
            continue;
        }
        match summarize(&p) {
            Ok(s) if filter.keeps(&s) => out.push(s),
            Ok(_) => {}
            Err(e) => errs.push(e),
        }
    }
    out.sort_by(|a, b| (a.start_us, &a.id).cmp(&(b.start_us, &b.id)));
    Ok((out, errs))
}

/// False when `path` is in a per-day directory (`YYYY-MM-DD`, the UTC day the
/// session started) that lies wholly outside the filter's time range: such files
/// are not opened at all.
fn day_may_match(path: &Path, filter: &Filter) -> bool {
    const DAY_US: i64 = 86_400 * 1_000_000;
    let Some(day) = path
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|n| n.to_str())
        .filter(|n| n.len() == 10)
        .and_then(|n| parse_rfc3339(&format!("{n}T00:00:00Z")).ok())
    else {
        return true;
    };
    filter.since_us.is_none_or(|t| day + DAY_US > t) && filter.until_us.is_none_or(|t| day <= t)
}

/// The recording for `id`: an existing file path, a full id, or a unique prefix.
pub fn find(dir: &Path, id: &str) -> Result<PathBuf, ReadError> {
    let as_path = Path::new(id);
    if (id.contains('/') || id.ends_with(".jsonl")) && as_path.is_file() {
        return Ok(as_path.to_owned());
    }
    let matches: Vec<PathBuf> = files(dir)?
        .into_iter()
        .filter(|p| {
            p.file_stem()
                .and_then(|s| s.to_str())
                .is_some_and(|s| !id.is_empty() && s.starts_with(id))
        })
        .collect();
    match matches.len() {
        0 => Err(ReadError::NotFound {
            id: id.into(),
            dir: dir.to_owned(),
        }),
        1 => Ok(matches.into_iter().next().unwrap_or_default()),
        _ => {
            let exact: Vec<&PathBuf> = matches
                .iter()
                .filter(|p| p.file_stem().and_then(|s| s.to_str()) == Some(id))
                .collect();
            if let [one] = exact.as_slice() {
                return Ok((*one).clone());
            }
            Err(ReadError::Ambiguous {
                id: id.into(),
                matches: matches
                    .iter()
                    .filter_map(|p| p.file_stem().and_then(|s| s.to_str()).map(str::to_string))
                    .collect(),
            })
        }
    }
}

/// The `recording.sha256` the audit log holds for session `id`, with the record's
/// seq, from every file of the audit directory (segments, then the live file).
pub fn audit_sha256(audit_dir: &Path, id: &str) -> Result<Option<(String, u64)>, ReadError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(audit_dir)
        .map_err(io(audit_dir))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit") && n.ends_with(".jsonl"))
        })
        .collect();
    files.sort();
    let mut found = None;
    for p in files {
        let text = std::fs::read_to_string(&p).map_err(io(&p))?;
        for l in text.lines().filter(|l| l.contains(id)) {
            let Ok(v) = serde_json::from_str::<Value>(l) else {
                continue;
            };
            if v["event"] == "connection"
                && v["session_id"] == id
                && let Some(h) = v["recording"]["sha256"].as_str()
            {
                found = Some((h.to_string(), v["seq"].as_u64().unwrap_or(0)));
            }
        }
    }
    Ok(found)
}

/// Hex sha256 of a file.
pub fn file_sha256(path: &Path) -> Result<String, ReadError> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(super::hex(&h.finalize()))
}

// ---- time -----------------------------------------------------------------------

/// `--since`/`--until` (see [`crate::audit::time::parse_time_arg`]).
pub fn parse_time(s: &str, now_us: i64) -> Result<i64, ReadError> {
    crate::audit::time::parse_time_arg(s, now_us).map_err(ReadError::BadTime)
}

/// RFC 3339 date-time to µs since the epoch.
pub fn parse_rfc3339(s: &str) -> Result<i64, ReadError> {
    crate::audit::time::parse_rfc3339_micros(s)
        .ok_or_else(|| ReadError::BadTime(format!("`{s}` is not an RFC 3339 time")))
}

pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::super::{Recorder, RecordingConfig};
    use super::*;
    use serde_json::json;

    fn temp(name: &str) -> PathBuf {
        super::super::tests::temp(name)
    }

    fn record(dir: &Path, id: &str, meta: Value) -> String {
        let cfg = RecordingConfig {
            dir: dir.to_owned(),
            max_bytes: 0,
            enabled: true,
        };
        let mut r = Recorder::start(&cfg, id, meta).expect("start");
        r.event("bytes", json!({"client_to_upstream": 1}));
        r.finish(json!({"end": "closed", "duration_ms": 7})).file
    }

    #[test]
    fn times_parse_in_every_accepted_form() {
        let t = parse_rfc3339("2026-01-05T12:00:00Z").expect("utc");
        assert_eq!(t, 1_767_614_400 * 1_000_000);
        assert_eq!(
            parse_rfc3339("2026-01-05T13:00:00.5+01:00").expect("offset"),
            t + 500_000
        );
        assert_eq!(
            parse_time("2026-01-05", 0).expect("date"),
            t - 12 * 3600 * 1_000_000
        );
        assert_eq!(parse_time("2h", t).expect("age"), t - 2 * 3600 * 1_000_000);
        assert_eq!(parse_time("1d", t).expect("age"), t - 86_400 * 1_000_000);
        for bad in [
            "",
            "yesterday",
            "5y",
            "2026-13-01T00:00:00Z",
            "2026-01-05T12:00:00",
        ] {
            let e = parse_time(bad, t).expect_err(bad).to_string();
            assert!(e.contains(bad) || e.contains("unit"), "{bad}: {e}");
        }
    }

    #[test]
    fn list_filters_and_prefix_lookup() {
        let dir = temp("list");
        let a = record(
            &dir,
            "aaaa1111",
            json!({"target": "db", "decision": "allow", "workloads": ["etl"], "attribution": {"exe": "/usr/bin/psql", "uid": 0}}),
        );
        let _b = record(
            &dir,
            "aaaa2222",
            json!({"target": "db", "decision": "deny", "workloads": ["bot"]}),
        );
        let _c = record(
            &dir,
            "bbbb3333",
            json!({"target": "api", "decision": "allow", "workloads": ["etl", "bot"]}),
        );
        let ids = |f: &Filter| -> Vec<String> {
            let (v, errs) = list(&dir, f).expect("list");
            assert!(errs.is_empty(), "{errs:?}");
            let mut ids: Vec<String> = v.into_iter().map(|s| s.id).collect();
            ids.sort();
            ids
        };
        assert_eq!(ids(&Filter::default()).len(), 3);
        let f = Filter {
            target: Some("db".into()),
            ..Filter::default()
        };
        assert_eq!(ids(&f), ["aaaa1111", "aaaa2222"]);
        let f = Filter {
            decision: Some("allow".into()),
            workload: Some("bot".into()),
            ..Filter::default()
        };
        assert_eq!(ids(&f), ["bbbb3333"]);
        let f = Filter {
            since_us: Some(now_us() + 60_000_000),
            ..Filter::default()
        };
        assert!(ids(&f).is_empty());
        let f = Filter {
            since_us: Some(now_us() - 60_000_000),
            host: Some(super::super::hostname().into()),
            ..Filter::default()
        };
        assert_eq!(ids(&f).len(), 3);
        let (v, _) = list(&dir, &Filter::default()).expect("list");
        let s = v.iter().find(|s| s.id == "aaaa1111").expect("a");
        assert_eq!(s.exe.as_deref(), Some("/usr/bin/psql"));
        assert_eq!((s.events, s.duration_ms, s.ended), (Some(3), Some(7), true));

        assert_eq!(
            find(&dir, "aaaa1").expect("unique").display().to_string(),
            a
        );
        assert_eq!(find(&dir, &a).expect("by path").display().to_string(), a);
        let e = find(&dir, "aaaa").expect_err("ambiguous").to_string();
        assert!(e.contains("aaaa1111") && e.contains("aaaa2222"), "{e}");
        let e = find(&dir, "cccc").expect_err("missing").to_string();
        assert!(e.contains("no session recording"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn day_directories_outside_the_range_are_skipped() {
        let day = |d: &str| PathBuf::from(format!("/r/{d}/x.jsonl"));
        let t = parse_rfc3339("2026-01-05T12:00:00Z").expect("time");
        let since = Filter {
            since_us: Some(t),
            ..Filter::default()
        };
        assert!(!day_may_match(&day("2026-01-04"), &since));
        assert!(day_may_match(&day("2026-01-05"), &since));
        assert!(day_may_match(&day("2026-01-06"), &since));
        let until = Filter {
            until_us: Some(t),
            ..Filter::default()
        };
        assert!(day_may_match(&day("2026-01-05"), &until));
        assert!(!day_may_match(&day("2026-01-06"), &until));
        assert!(
            day_may_match(Path::new("/r/copied.jsonl"), &until),
            "not a day directory"
        );
    }

    #[test]
    fn torn_and_corrupt_lines_are_reported_not_fatal() {
        let dir = temp("torn");
        let f = record(&dir, "torn1", json!({"target": "db"}));
        let full = std::fs::read_to_string(&f).expect("read");
        // A crash mid-write: the end line is cut in half.
        let cut = &full[..full.len() - 20];
        std::fs::write(&f, cut).expect("write");
        let s = load(Path::new(&f)).expect("a torn last line still loads");
        assert_eq!(s.events.len(), 2);
        assert!(
            s.warnings
                .iter()
                .any(|w| w.contains("line 3") && w.contains("torn")),
            "{:?}",
            s.warnings
        );
        assert!(s.warnings.iter().any(|w| w.contains("no session_end")));
        let sum = summarize(Path::new(&f)).expect("summary");
        assert!(!sum.ended);
        // Garbage in the middle: named by line, the rest is kept.
        let lines: Vec<&str> = full.lines().collect();
        std::fs::write(
            &f,
            format!("{}\nnot json\n{}\n{}\n", lines[0], lines[1], lines[2]),
        )
        .expect("write");
        let s = load(Path::new(&f)).expect("loads");
        assert_eq!(s.events.len(), 3);
        assert!(
            s.warnings
                .iter()
                .any(|w| w.starts_with("line 2: not a recording event")),
            "{:?}",
            s.warnings
        );
        // Not a recording at all.
        std::fs::write(&f, "hello\n").expect("write");
        let e = load(Path::new(&f))
            .expect_err("not a recording")
            .to_string();
        assert!(e.contains("not a session recording"), "{e}");
        std::fs::write(&f, "").expect("write");
        assert!(
            load(Path::new(&f))
                .expect_err("empty")
                .to_string()
                .contains("empty")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
