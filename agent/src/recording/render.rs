//! Rendering a recording for people: a timeline of frames (time offset, event,
//! decoded request, result tables as psql prints them, errors), the same frames as
//! an asciicast v2 file for the asciinema player.
//!
//! Every statement and every result row is on a line of its own, in the order they
//! happened, so the output is easy to read and to search.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::read::{Event, Session, parse_rfc3339};

/// What appears at one moment of a session.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Microseconds since the session started.
    pub elapsed_us: u64,
    /// One or more lines, without a final newline.
    pub text: String,
}

/// The session's description, printed before its events.
pub fn header(s: &Session) -> String {
    let m = s.meta();
    let a = &m["attribution"];
    let st = |v: &Value| v.as_str().unwrap_or("?").to_string();
    let mut out = String::new();
    let _ = writeln!(out, "session   {}", s.id);
    let _ = writeln!(out, "host      {}", s.host);
    let _ = writeln!(out, "started   {}", s.start.time);
    let _ = writeln!(
        out,
        "client    {} -> {} (target {}, protocol {})",
        st(&m["client"]),
        st(&m["original_destination"]),
        st(&m["target"]),
        st(&m["protocol"]),
    );
    let workloads: Vec<String> = m["workloads"]
        .as_array()
        .map(|w| w.iter().map(st).collect())
        .unwrap_or_default();
    let mut who = format!(
        "workload  {}",
        if workloads.is_empty() {
            "(none matched)".to_string()
        } else {
            workloads.join(", ")
        }
    );
    if a.is_object() {
        let _ = write!(who, "; pid {} uid {}", a["pid"], a["uid"]);
        for (k, label) in [
            ("user", "user"),
            ("exe", "exe"),
            ("unit", "unit"),
            ("comm", "comm"),
        ] {
            if let Some(v) = a[k].as_str() {
                let _ = write!(who, " {label} {v}");
            }
        }
    }
    let _ = writeln!(out, "{who}");
    let _ = writeln!(
        out,
        "decision  {} by rule {} (policy sha256 {})",
        st(&m["decision"]),
        st(&m["rule"]),
        st(&m["policy_hash"]),
    );
    let _ = write!(out, "file      {}", s.path.display());
    out
}

/// The timeline: the header at 0, then one frame per event.
pub fn frames(s: &Session) -> Vec<Frame> {
    let mut out = vec![Frame {
        elapsed_us: 0,
        text: format!("{}\n", header(s)),
    }];
    let mut last = 0;
    for e in &s.events {
        // Never backwards, even in a hand-edited or damaged file.
        last = last.max(e.elapsed_us);
        out.push(Frame {
            elapsed_us: last,
            text: event(e),
        });
    }
    out
}

/// The whole timeline as text (what `sessions show` prints).
pub fn text(s: &Session) -> String {
    let mut out = String::new();
    for f in frames(s) {
        out.push_str(&f.text);
        out.push('\n');
    }
    out
}

fn offset(us: u64) -> String {
    format!("+{}.{:06}s", us / 1_000_000, us % 1_000_000)
}

/// One event: `+<secs>s  <event>  <what>`, then any continuation lines (statement
/// lines after the first, result tables).
pub fn event(e: &Event) -> String {
    let d = &e.data;
    let (line, more) = match e.kind.as_str() {
        "session_start" => (
            format!(
                "{} {} by {}",
                str_of(&d["target"]),
                str_of(&d["decision"]),
                str_of(&d["rule"])
            ),
            None,
        ),
        "request" => {
            let text = str_of(&d["text"]);
            let mut lines = text.lines();
            let first = lines.next().unwrap_or("").to_string();
            let rest: Vec<&str> = lines.collect();
            let mut tag = String::new();
            if let Some(dec) = d["decision"].as_str() {
                tag = format!("  [{dec}");
                if let Some(r) = d["rule"].as_str() {
                    let _ = write!(tag, " by {r}");
                }
                tag.push(']');
            }
            let more = (!rest.is_empty()).then(|| {
                rest.iter()
                    .map(|l| format!("    {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            (format!("{first}{tag}"), more)
        }
        "response" => {
            let cols: Vec<String> = d["columns"]
                .as_array()
                .map(|c| {
                    c.iter()
                        .map(|v| match v {
                            Value::String(s) => s.clone(),
                            Value::Object(o) => str_of(o.get("name").unwrap_or(&Value::Null)),
                            other => other.to_string(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            let rows: Vec<Vec<Option<String>>> = d["rows"]
                .as_array()
                .map(|rs| {
                    rs.iter()
                        .map(|r| {
                            r.as_array()
                                .map(|cells| cells.iter().map(cell).collect())
                                .unwrap_or_default()
                        })
                        .collect()
                })
                .unwrap_or_default();
            let mut body = String::new();
            if !cols.is_empty() {
                body = table(&cols, &rows);
                let total = d["rows_total"].as_u64().unwrap_or(rows.len() as u64);
                let omitted = d["rows_omitted"].as_u64().unwrap_or(0);
                let _ = write!(
                    body,
                    "\n({} row{}",
                    total,
                    if total == 1 { "" } else { "s" }
                );
                if omitted > 0 {
                    let _ = write!(body, "; {omitted} not recorded");
                }
                body.push(')');
            }
            (
                d["tag"].as_str().unwrap_or("").to_string(),
                (!body.is_empty()).then_some(body),
            )
        }
        "error" | "notice" => {
            let sev = d["severity"].as_str().unwrap_or(if e.kind == "error" {
                "ERROR"
            } else {
                "NOTICE"
            });
            let code = d["sqlstate"]
                .as_str()
                .map(|c| format!(" {c}"))
                .unwrap_or_default();
            (format!("{sev}{code}: {}", str_of(&d["message"])), None)
        }
        "decision" => {
            let what = d["decision"]
                .as_str()
                .or(d["effect"].as_str())
                .unwrap_or("?");
            let mut s = what.to_string();
            if let Some(r) = d["rule"].as_str() {
                let _ = write!(s, " by {r}");
            }
            if let Some(r) = d["reason"].as_str() {
                let _ = write!(s, ": {r}");
            }
            (s, None)
        }
        "copy" => (
            format!(
                "{} {} bytes",
                str_of(&d["direction"]),
                d["bytes"].as_u64().unwrap_or(0)
            ),
            None,
        ),
        "bytes" => (
            format!(
                "client->upstream {}, upstream->client {}",
                d["client_to_upstream"].as_u64().unwrap_or(0),
                d["upstream_to_client"].as_u64().unwrap_or(0)
            ),
            None,
        ),
        "half_close" => (
            format!(
                "{} finished sending after {} bytes",
                str_of(&d["from"]),
                d["bytes"].as_u64().unwrap_or(0)
            ),
            None,
        ),
        "truncated" => (
            format!(
                "the recording reached its limit of {} bytes; later events were counted, not recorded",
                d["max_bytes"].as_u64().unwrap_or(0)
            ),
            None,
        ),
        "session_end" => {
            let mut s = format!(
                "{}; {} bytes client->upstream, {} upstream->client; {} ms; {} events",
                d["end"].as_str().unwrap_or("ended"),
                d["bytes_client_to_upstream"].as_u64().unwrap_or(0),
                d["bytes_upstream_to_client"].as_u64().unwrap_or(0),
                d["duration_ms"].as_u64().unwrap_or(e.elapsed_us / 1000),
                d["events"].as_u64().unwrap_or(0),
            );
            if let Some(n) = d["dropped_events"].as_u64().filter(|n| *n > 0) {
                let _ = write!(s, ", {n} dropped");
            }
            if let Some(err) = d["error"].as_str() {
                let _ = write!(s, "; error: {err}");
            }
            (s, None)
        }
        _ => (compact(d), None),
    };
    let mut out = format!("{:<12} {:<14} {line}", offset(e.elapsed_us), e.kind);
    let out_len = out.trim_end().len();
    out.truncate(out_len);
    if let Some(m) = more {
        out.push('\n');
        out.push_str(&m);
    }
    out
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "?".into(),
        other => other.to_string(),
    }
}

fn cell(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn compact(v: &Value) -> String {
    if v.is_null() {
        String::new()
    } else {
        v.to_string()
    }
}

/// A result table as psql prints it (aligned format): centred headers, a rule of
/// dashes and `+`, values left-aligned, SQL NULL as `NULL`. No final newline.
pub fn table(columns: &[String], rows: &[Vec<Option<String>>]) -> String {
    let n = columns.len();
    let shown = |c: &Option<String>| c.clone().unwrap_or_else(|| "NULL".into());
    let mut width: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().take(n).enumerate() {
            width[i] = width[i].max(shown(c).chars().count());
        }
    }
    let mut out = String::new();
    let head: Vec<String> = columns
        .iter()
        .zip(&width)
        .map(|(c, w)| {
            let pad = w - c.chars().count();
            let left = pad / 2;
            format!(" {}{}{} ", " ".repeat(left), c, " ".repeat(pad - left))
        })
        .collect();
    out.push_str(head.join("|").trim_end());
    out.push('\n');
    let rule: Vec<String> = width.iter().map(|w| "-".repeat(w + 2)).collect();
    out.push_str(&rule.join("+"));
    for r in rows {
        out.push('\n');
        let cells: Vec<String> = (0..n)
            .map(|i| {
                let v = r.get(i).map(shown).unwrap_or_default();
                let pad = width[i] - v.chars().count();
                format!(" {v}{} ", " ".repeat(pad))
            })
            .collect();
        out.push_str(cells.join("|").trim_end());
    }
    out
}

/// The session as an asciicast v2 file: a header line, then one
/// `[seconds, "o", text]` line per frame, with `\r\n` line ends.
pub fn asciicast(s: &Session) -> String {
    let frames = frames(s);
    let widest = frames
        .iter()
        .flat_map(|f| f.text.lines())
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(80);
    let timestamp = parse_rfc3339(&s.start.time)
        .map(|us| us / 1_000_000)
        .unwrap_or(0);
    let title = format!(
        "portcullis session {} ({} on {})",
        s.id,
        str_of(&s.meta()["target"]),
        s.host
    );
    let head = json!({
        "version": 2,
        "width": (widest + 1).clamp(80, 240),
        "height": 40,
        "timestamp": timestamp,
        "title": title,
        "env": {"TERM": "xterm-256color", "SHELL": "/bin/sh"},
    });
    let mut out = head.to_string();
    out.push('\n');
    for f in frames {
        let text = format!("{}\r\n", f.text.replace('\n', "\r\n"));
        let t = f.elapsed_us as f64 / 1_000_000.0;
        out.push_str(&json!([t, "o", text]).to_string());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::read::load;
    use super::super::{Recorder, RecordingConfig};
    use super::*;

    #[test]
    fn a_response_renders_like_psql() {
        let t = table(
            &["id".into(), "name".into()],
            &[
                vec![Some("1".into()), Some("alice".into())],
                vec![Some("22".into()), None],
            ],
        );
        assert_eq!(t, " id | name\n----+-------\n 1  | alice\n 22 | NULL");
    }

    fn session() -> (std::path::PathBuf, Session) {
        let dir = super::super::tests::temp("render");
        let cfg = RecordingConfig {
            dir: dir.clone(),
            max_bytes: 0,
            enabled: true,
        };
        let mut r = Recorder::start(
            &cfg,
            "r1",
            json!({"target": "db", "decision": "allow", "rule": "ops", "protocol": "postgres",
                   "attribution": {"pid": 7, "uid": 0, "exe": "/usr/bin/psql"}, "workloads": ["ops"]}),
        )
        .expect("start");
        r.event(
            "request",
            json!({"protocol": "postgres", "text": "SELECT id, name\nFROM users", "kinds": ["select"], "decision": "allow", "rule": "ops"}),
        );
        r.event(
            "response",
            json!({"columns": ["id", "name"], "rows": [["1", "alice"], ["2", null]], "tag": "SELECT 2", "rows_total": 2, "rows_omitted": 0}),
        );
        r.event(
            "error",
            json!({"severity": "ERROR", "sqlstate": "42P01", "message": "relation \"x\" does not exist"}),
        );
        r.event("custom_thing", json!({"k": 1}));
        let sum = r.finish(json!({"end": "closed"}));
        let s = load(std::path::Path::new(&sum.file)).expect("load");
        (dir, s)
    }

    #[test]
    fn show_puts_statements_rows_and_errors_in_order() {
        let (dir, s) = session();
        let out = text(&s);
        let at = |needle: &str| {
            out.find(needle)
                .unwrap_or_else(|| panic!("`{needle}` missing from:\n{out}"))
        };
        let order = [
            "exe /usr/bin/psql",
            "request        SELECT id, name  [allow by ops]",
            "\n    FROM users\n",
            "response       SELECT 2\n id | name\n----+-------\n 1  | alice\n 2  | NULL\n(2 rows)",
            "error          ERROR 42P01: relation \"x\" does not exist",
            "custom_thing   {\"k\":1}",
            "session_end    closed;",
        ];
        let pos: Vec<usize> = order.iter().map(|n| at(n)).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "out of order:\n{out}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn asciicast_is_valid_v2_with_monotonic_times() {
        let (dir, s) = session();
        let cast = asciicast(&s);
        let mut lines = cast.lines();
        let head: Value = serde_json::from_str(lines.next().expect("header")).expect("JSON");
        assert_eq!(head["version"], 2);
        assert!(head["width"].as_u64().expect("width") >= 80);
        assert!(head["height"].as_u64().expect("height") > 0);
        assert!(head["timestamp"].as_i64().expect("timestamp") > 1_700_000_000);
        assert!(head["title"].as_str().expect("title").contains("r1"));
        let mut last = -1.0;
        let mut n = 0;
        for l in lines {
            let v: Value = serde_json::from_str(l).expect("event line is JSON");
            let a = v.as_array().expect("array");
            assert_eq!(a.len(), 3);
            let t = a[0].as_f64().expect("time");
            assert!(t >= last, "times go backwards: {t} after {last}");
            last = t;
            assert_eq!(a[1], "o");
            let text = a[2].as_str().expect("text");
            assert!(text.ends_with("\r\n"));
            assert!(
                !text.replace("\r\n", "").contains('\n'),
                "bare \\n in {text:?}"
            );
            n += 1;
        }
        assert_eq!(
            n,
            s.events.len() + 1,
            "one frame per event, plus the header"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
