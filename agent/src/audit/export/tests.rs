//! The reader against a real log (rotation, retention, records being
//! written) and the cursor file.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use super::reader::{Cursor, Gap, LogReader, cursor_path, load_cursor, store_cursor};
use crate::audit::testutil::TempDir;
use crate::audit::{AuditLog, AuditOptions, segments};
use crate::config::AuditSync;

fn opts(rotate_bytes: u64, retain_bytes: u64) -> AuditOptions {
    AuditOptions {
        checkpoint_every: 50,
        rotate_bytes,
        retain_bytes,
        min_free_bytes: 0,
        ..AuditOptions::default()
    }
}

fn write(log: &AuditLog, from: usize, n: usize) {
    for i in from..from + n {
        log.record("test", json!({"i": i, "pad": "x".repeat(200)}))
            .expect("queued");
    }
    assert!(log.flush(Duration::from_secs(10)), "flush");
}

/// Everything the reader returns until it is caught up, 7 at a time.
fn drain(r: &mut LogReader) -> (Vec<u64>, Vec<Gap>) {
    let (mut seqs, mut gaps) = (Vec::new(), Vec::new());
    loop {
        let b = r.read(7).expect("read");
        gaps.extend(b.gaps);
        if b.records.is_empty() {
            return (seqs, gaps);
        }
        seqs.extend(b.records.iter().map(|r| r.seq));
    }
}

fn contiguous(seqs: &[u64], from: u64) {
    for (i, s) in seqs.iter().enumerate() {
        assert_eq!(*s, from + i as u64, "seq order without holes: {seqs:?}");
    }
}

#[test]
fn reads_in_seq_order_across_segments_and_follows_rotation() {
    let tmp = TempDir::new("export-read");
    let dir = tmp.0.join("audit");
    let log = AuditLog::open_with(&dir, 1024, AuditSync::None, opts(64 * 1024, 0)).expect("open");
    write(&log, 0, 300);
    assert!(segments::list(&dir).expect("list").len() >= 2, "rotated");
    let mut r = LogReader::new(&dir, None);
    let (first, gaps) = drain(&mut r);
    assert!(gaps.is_empty(), "{gaps:?}");
    contiguous(&first, 0);
    // While the reader holds the live file, it is rotated away: the reader
    // finishes it and goes on in the new one.
    write(&log, 300, 600);
    let (more, gaps) = drain(&mut r);
    assert!(gaps.is_empty(), "{gaps:?}");
    contiguous(&more, first.len() as u64);
    let head = log.head_seq().expect("head");
    assert_eq!(
        more.last().copied(),
        Some(head),
        "caught up with the writer"
    );
    // A new reader from the middle (a cursor) starts exactly there.
    let mut mid = LogReader::new(&dir, Some(123));
    let (seqs, _) = drain(&mut mid);
    contiguous(&seqs, 123);
    assert_eq!(seqs.last().copied(), Some(head));
}

#[test]
fn a_record_being_written_is_read_once_complete() {
    let tmp = TempDir::new("export-torn");
    let dir = tmp.0.join("audit");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let live = dir.join(segments::LIVE_FILE);
    std::fs::write(&live, "{\"seq\":0,\"event\":\"a\"}\n{\"seq\":1,\"ev").expect("write");
    let mut r = LogReader::new(&dir, None);
    let (seqs, _) = drain(&mut r);
    assert_eq!(seqs, [0]);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&live)
        .expect("open");
    std::io::Write::write_all(&mut f, b"ent\":\"b\"}\n").expect("append");
    let b = r.read(10).expect("read");
    assert_eq!(b.records.len(), 1);
    assert_eq!((b.records[0].seq, b.records[0].event()), (1, "b"));
}

#[test]
fn only_durable_records_are_read_when_asked() {
    let tmp = TempDir::new("export-durable");
    let dir = tmp.0.join("audit");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let lines: String = (0..5)
        .map(|i| format!("{{\"seq\":{i},\"event\":\"e\"}}\n"))
        .collect();
    std::fs::write(dir.join(segments::LIVE_FILE), lines).expect("write");
    let mut r = LogReader::new(&dir, None);
    let seqs = |b: super::reader::Batch| b.records.iter().map(|r| r.seq).collect::<Vec<_>>();
    assert_eq!(seqs(r.read_before(10, Some(2)).expect("read")), [0, 1]);
    assert!(r.read_before(10, Some(2)).expect("read").records.is_empty());
    assert_eq!(seqs(r.read_before(10, Some(4)).expect("read")), [2, 3]);
    assert_eq!(seqs(r.read(10).expect("read")), [4]);
}

#[test]
fn segments_removed_before_export_are_reported_as_a_gap() {
    let tmp = TempDir::new("export-gap");
    let dir = tmp.0.join("audit");
    let log = AuditLog::open_with(&dir, 4096, AuditSync::None, opts(64 * 1024, 192 * 1024))
        .expect("open");
    write(&log, 0, 2000);
    let oldest = segments::list(&dir).expect("list")[0].first_seq;
    assert!(oldest > 10, "retention removed the oldest segments");
    // A sink that had exported up to seq 9.
    let mut r = LogReader::new(&dir, Some(10));
    let (seqs, gaps) = drain(&mut r);
    assert_eq!(
        gaps,
        [Gap {
            first: 10,
            last: oldest - 1
        }]
    );
    contiguous(&seqs, oldest);
    // A sink with no cursor starts at the oldest record: nothing is missing.
    let (_, gaps) = drain(&mut LogReader::new(&dir, None));
    assert!(gaps.is_empty());
}

#[test]
fn rewind_reads_again_from_a_seq() {
    let tmp = TempDir::new("export-rewind");
    let dir = tmp.0.join("audit");
    let log = AuditLog::open_with(&dir, 1024, AuditSync::None, opts(64 * 1024, 0)).expect("open");
    write(&log, 0, 400);
    let mut r = LogReader::new(&dir, None);
    let (all, _) = drain(&mut r);
    r.rewind(5);
    let (again, _) = drain(&mut r);
    contiguous(&again, 5);
    assert_eq!(again.last(), all.last());
}

#[test]
fn the_cursor_is_replaced_atomically_and_a_bad_one_is_an_error() {
    let tmp = TempDir::new("export-cursor");
    let p = cursor_path(&tmp.0, "siem");
    assert_eq!(load_cursor(&p), Ok(None), "no cursor yet");
    let c = Cursor {
        sink: "siem".into(),
        seq: 41,
        event_id: "id".into(),
        updated: "2026-01-01T00:00:00.000000Z".into(),
    };
    store_cursor(&p, &c).expect("store");
    store_cursor(
        &p,
        &Cursor {
            seq: 42,
            ..c.clone()
        },
    )
    .expect("store again");
    assert_eq!(load_cursor(&p).expect("load").map(|c| c.seq), Some(42));
    assert!(
        !Path::new(&p.with_extension("cursor.tmp")).exists(),
        "no temporary left"
    );
    std::fs::write(&p, "{\"seq\": 4").expect("damage");
    let err = load_cursor(&p).expect_err("damaged cursor");
    assert!(err.contains("siem.cursor"), "{err}");
}

#[test]
fn exports_in_agent_yaml_with_defaults_and_clear_errors() {
    use super::config::{ExportFormat, SyslogTransport};
    use crate::config::AgentConfig;
    let text = "exports:\n  - name: siem\n    syslog: { transport: tcp, address: \"127.0.0.1:514\" }\n  - name: lake\n    format: ocsf\n    http: { url: \"https://c.example/in\", token_file: /etc/t }\n";
    let c = AgentConfig::parse(Path::new("a.yaml"), text).expect("valid exports");
    assert_eq!(c.exports.len(), 2);
    let s = &c.exports[0];
    let sys = s.syslog.as_ref().expect("syslog");
    assert_eq!(
        (
            s.format,
            sys.transport,
            sys.facility.as_str(),
            sys.resend_secs,
            s.batch,
            s.backoff_max_ms
        ),
        (
            ExportFormat::Json,
            SyslogTransport::Tcp,
            "local0",
            10,
            500,
            30_000
        )
    );
    assert_eq!(
        c.exports[1].http.as_ref().map(|h| h.timeout_ms),
        Some(10_000)
    );
    assert_eq!(c.exports[0].start, super::config::StartAt::Oldest);
    let now = AgentConfig::parse(
        Path::new("a.yaml"),
        "exports:\n  - name: n\n    start: now\n    http: { url: \"http://h/\" }\n",
    )
    .expect("start: now");
    assert_eq!(now.exports[0].start, super::config::StartAt::Now);
    for (bad, setting) in [
        (
            "exports:\n  - name: a b\n    syslog: { transport: udp, address: \"h:1\" }\n",
            "exports[].name",
        ),
        (
            "exports:\n  - name: a\n    syslog: { transport: udp, address: \"h:1\" }\n  - name: a\n    syslog: { transport: udp, address: \"h:1\" }\n",
            "exports[].name",
        ),
        ("exports:\n  - name: a\n", "exports[]"),
        (
            "exports:\n  - name: a\n    syslog: { transport: tcp, address: \"nohost\" }\n",
            "exports[].syslog.address",
        ),
        (
            "exports:\n  - name: a\n    syslog: { transport: unix-dgram, address: \"rel/sock\" }\n",
            "exports[].syslog.address",
        ),
        (
            "exports:\n  - name: a\n    syslog: { transport: udp, address: \"h:1\", facility: nope }\n",
            "exports[].syslog.facility",
        ),
        (
            "exports:\n  - name: a\n    http: { url: \"ftp://x\" }\n",
            "exports[].http.url",
        ),
    ] {
        let err = AgentConfig::parse(Path::new("a.yaml"), bad).expect_err(bad);
        let msg = err.to_string();
        assert!(
            msg.contains(setting) && msg.contains("a.yaml"),
            "{bad}: {msg}"
        );
    }
    let err = AgentConfig::parse(
        Path::new("a.yaml"),
        "exports:\n  - name: a\n    syslog: { transport: tcp, adress: \"h:1\" }\n",
    )
    .expect_err("typo");
    assert!(err.to_string().contains("adress"), "{err}");
}

#[test]
fn a_sink_behind_retention_records_the_gap_and_exports_the_rest() {
    use super::Exports;
    use super::config::{ExportSink, SyslogSink, SyslogTransport};
    let tmp = TempDir::new("export-sink-gap");
    let state = tmp.0.clone();
    let dir = state.join("audit");
    let log = AuditLog::open_with(&dir, 4096, AuditSync::None, opts(64 * 1024, 192 * 1024))
        .expect("open");
    write(&log, 0, 2000);
    let oldest = segments::list(&dir).expect("list")[0].first_seq;
    // The sink had exported up to seq 9 before the outage.
    std::fs::create_dir_all(state.join("export")).expect("mkdir");
    store_cursor(
        &cursor_path(&state.join("export"), "s"),
        &Cursor {
            sink: "s".into(),
            seq: 9,
            event_id: String::new(),
            updated: String::new(),
        },
    )
    .expect("cursor");
    let collector = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    collector
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let port = collector.local_addr().expect("addr").port();
    let sink = ExportSink {
        name: "s".into(),
        format: super::ExportFormat::Json,
        syslog: Some(SyslogSink {
            transport: SyslogTransport::Udp,
            address: format!("127.0.0.1:{port}"),
            facility: "local3".into(),
            resend_secs: 10,
        }),
        start: super::config::StartAt::Oldest,
        http: None,
        batch: 100,
        backoff_max_ms: 1000,
    };
    let exports = Exports::start(&[sink], &state, &log).expect("start");
    let mut got = std::collections::BTreeSet::new();
    let mut buf = vec![0u8; 70_000];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(n) = collector.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            assert!(m.starts_with("<15"), "local3 (19*8=152): {m}");
            let seq: u64 = m
                .split("seq=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .and_then(|s| s.parse().ok())
                .expect("seq in SD");
            got.insert(seq);
        }
        let st = exports.status();
        let s = &st[0];
        if s["gap_records"].as_u64() > Some(0)
            && s["exported_seq"].as_u64() >= log.head_seq()
            && s["lag_records"] == 0
        {
            assert_eq!(s["gap_records"].as_u64(), Some(oldest - 10), "{s}");
            assert!(
                s["last_gap"]
                    .as_str()
                    .is_some_and(|g| g.contains("seq 10..=")),
                "{s}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not caught up: {s}");
    }
    // The gap is in the log itself.
    assert!(log.flush(Duration::from_secs(5)));
    let mut all = LogReader::new(&dir, None);
    let mut found = None;
    loop {
        let b = all.read(1000).expect("read");
        if b.records.is_empty() {
            break;
        }
        if let Some(r) = b.records.iter().find(|r| r.event() == super::GAP_EVENT) {
            found = Some(r.value());
        }
    }
    let found = found.expect("an export_gap record");
    assert_eq!(
        (
            found["sink"].as_str(),
            found["missing_first_seq"].as_u64(),
            found["missing_last_seq"].as_u64()
        ),
        (Some("s"), Some(10), Some(oldest - 1)),
        "{found}"
    );
    assert!(
        got.contains(&oldest),
        "export resumed at the oldest record kept"
    );
}

#[test]
fn a_cursor_past_the_end_of_the_log_starts_over_from_the_oldest_record() {
    use super::Exports;
    use super::config::{ExportSink, HttpSink, StartAt};
    let tmp = TempDir::new("export-cursor-past");
    let state = tmp.0.clone();
    let log =
        AuditLog::open_with(&state.join("audit"), 64, AuditSync::None, opts(0, 0)).expect("open");
    write(&log, 0, 5);
    std::fs::create_dir_all(state.join("export")).expect("mkdir");
    store_cursor(
        &cursor_path(&state.join("export"), "h"),
        &Cursor {
            sink: "h".into(),
            seq: 1_000_000,
            event_id: String::new(),
            updated: String::new(),
        },
    )
    .expect("cursor");
    // An HTTP sink to a port nobody listens on: it only has to start.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let sink = ExportSink {
        name: "h".into(),
        format: super::ExportFormat::Json,
        start: StartAt::Oldest,
        syslog: None,
        http: Some(HttpSink {
            url: format!("http://127.0.0.1:{port}/"),
            token_file: None,
            timeout_ms: 1000,
            ca_file: None,
        }),
        batch: 10,
        backoff_max_ms: 1000,
    };
    let exports = Exports::start(&[sink], &state, &log).expect("start");
    let st = exports.status();
    assert_eq!(st[0]["exported_seq"], serde_json::Value::Null, "{st}");
    assert!(st[0]["lag_records"].as_u64() >= Some(5), "{st}");
}

/// A collector on loopback that refuses bodies over `limit` bytes with 413
/// and stores the records of the others (one request per connection).
fn limited_collector(limit: usize) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<u64>>>) {
    use std::io::{BufRead, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let mut w = s.try_clone().expect("clone");
            let mut r = std::io::BufReader::new(s);
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let t = line.trim_end().to_ascii_lowercase();
                if t.is_empty() {
                    break;
                }
                if let Some(v) = t.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len];
            if r.read_exact(&mut body).is_err() {
                continue;
            }
            let status = if len > limit {
                "413 Payload Too Large"
            } else {
                let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON body");
                let mut g = g.lock().expect("lock");
                g.extend(
                    v.as_array()
                        .expect("array")
                        .iter()
                        .filter_map(|r| r["seq"].as_u64()),
                );
                "200 OK"
            };
            let _ = w.write_all(
                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
        }
    });
    (port, got)
}

#[test]
fn an_http_collector_refusing_large_batches_gets_smaller_ones_and_everything() {
    use super::Exports;
    use super::config::{ExportSink, HttpSink, StartAt};
    let tmp = TempDir::new("export-413");
    let state = tmp.0.clone();
    let log =
        AuditLog::open_with(&state.join("audit"), 1024, AuditSync::None, opts(0, 0)).expect("open");
    write(&log, 0, 300);
    // Records are about 500 bytes: at most about 20 fit in 10 KB.
    let (port, got) = limited_collector(10 * 1024);
    let sink = ExportSink {
        name: "h".into(),
        format: super::ExportFormat::Json,
        start: StartAt::Oldest,
        syslog: None,
        http: Some(HttpSink {
            url: format!("http://127.0.0.1:{port}/"),
            token_file: None,
            timeout_ms: 5000,
            ca_file: None,
        }),
        batch: 500,
        backoff_max_ms: 200,
    };
    let exports = Exports::start(&[sink], &state, &log).expect("start");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let head = log.head_seq().expect("head");
    loop {
        let st = exports.status();
        if st[0]["exported_seq"].as_u64() >= Some(head) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not exported: {st}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let got: std::collections::BTreeSet<u64> = got.lock().expect("lock").iter().copied().collect();
    assert!((0..=head).all(|s| got.contains(&s)), "every record arrived");
    assert!(
        exports.status()[0]["failures"].as_u64() >= Some(1),
        "the 413s were counted"
    );
}
