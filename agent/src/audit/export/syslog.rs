//! Syslog (RFC 5424) messages and their transports: UDP (RFC 5426), TCP with
//! octet-counted framing (RFC 6587), unix datagram and unix stream sockets.
//!
//! `<PRI>1 TIMESTAMP HOSTNAME portcullis PROCID MSGID [portcullis@32473
//! event_id="…" seq="…"] MSG`: PRI from the configured facility and a severity
//! derived from the record, TIMESTAMP the record's time, MSGID its event type,
//! MSG the record (native JSON or OCSF).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs, UdpSocket};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::config::{SyslogSink, SyslogTransport, facility_code};
use super::reader::Record;
use super::{SendError, Transport};

/// SD-ID of the structured data element (name@private enterprise number).
pub const SD_ID: &str = "portcullis@32473";
pub const APP_NAME: &str = "portcullis";
/// Datagram transports cut a message longer than this (a UDP datagram holds
/// at most 65507 bytes); use a stream transport or HTTP for larger records.
pub const MAX_DATAGRAM: usize = 65_000;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// RFC 5424 severities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Err = 3,
    Warning = 4,
    Notice = 5,
    Info = 6,
}

/// Severity of a record: errors and failures `err`, denials and bypass
/// attempts `warning`, lifecycle changes `notice`, allowed access `info`.
pub fn severity_of(event: &str, decision: Option<&str>, has_error: bool) -> Severity {
    let decision = decision.unwrap_or("");
    if event.ends_with("_failure")
        || event.ends_with("_reject")
        || event == "export_gap"
        || decision == "error"
    {
        Severity::Err
    } else if decision == "deny"
        || event == "bypass_drop"
        || event == "kernel_deny"
        || event == "enforcement_detached"
    {
        Severity::Warning
    } else if has_error
        || matches!(
            event,
            "agent_start" | "agent_stop" | "policy_load" | "audit_retention"
        )
    {
        Severity::Notice
    } else {
        Severity::Info
    }
}

/// [`severity_of`] a record as a JSON value.
pub fn severity(rec: &Value) -> Severity {
    severity_of(
        rec.get("event").and_then(Value::as_str).unwrap_or(""),
        rec.get("decision").and_then(Value::as_str),
        rec.get("error").is_some_and(|e| !e.is_null()),
    )
}

/// PRINTUSASCII (33..=126) only, at most `max` characters; `-` if empty.
fn header_field(s: &str, max: usize) -> String {
    let v: String = s
        .chars()
        .filter(|c| ('!'..='~').contains(c))
        .take(max)
        .collect();
    if v.is_empty() { "-".into() } else { v }
}

/// An SD-PARAM value with `"`, `\` and `]` escaped (RFC 5424 section 6.3.3).
fn sd_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

/// One RFC 5424 message for `rec`, carrying `msg`.
pub fn format(rec: &Record, facility: u8, procid: u32, msg: &str) -> String {
    let m = &rec.meta;
    let sev = severity_of(&m.event, m.decision.as_deref(), m.has_error());
    let pri = u16::from(facility) * 8 + sev as u16;
    format!(
        "<{pri}>1 {} {} {APP_NAME} {procid} {} [{SD_ID} event_id=\"{}\" seq=\"{}\"] {msg}",
        header_field(&m.time, 64),
        header_field(&m.host, 255),
        header_field(rec.event(), 32),
        sd_escape(rec.event_id()),
        rec.seq,
    )
}

/// RFC 6587 octet counting: `MSG-LEN SP SYSLOG-MSG`.
pub fn frame(msg: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(msg.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(msg.as_bytes());
}

/// `msg` cut to at most `max` bytes, at a character boundary.
fn cut(msg: &str, max: usize) -> &str {
    if msg.len() <= max {
        return msg;
    }
    let mut end = max;
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    &msg[..end]
}

enum Conn {
    Udp(UdpSocket),
    Tcp(TcpStream),
    UnixDgram(UnixDatagram),
    UnixStream(UnixStream),
}

pub struct Syslog {
    cfg: SyslogSink,
    facility: u8,
    procid: u32,
    conn: Option<Conn>,
    /// Stream transports: (first seq, when) of each batch sent on this connection.
    sent: VecDeque<(u64, Instant)>,
}

impl Syslog {
    pub fn new(cfg: &SyslogSink) -> Self {
        Self {
            facility: facility_code(&cfg.facility).unwrap_or(16),
            cfg: cfg.clone(),
            procid: std::process::id(),
            conn: None,
            sent: VecDeque::new(),
        }
    }

    fn connect(&self) -> std::io::Result<Conn> {
        let addr = &self.cfg.address;
        Ok(match self.cfg.transport {
            SyslogTransport::Udp => {
                let mut last = None;
                for a in addr.to_socket_addrs()? {
                    let bind = if a.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
                    match UdpSocket::bind(bind).and_then(|s| s.connect(a).map(|()| s)) {
                        Ok(s) => return Ok(Conn::Udp(s)),
                        Err(e) => last = Some(e),
                    }
                }
                return Err(last.unwrap_or_else(|| {
                    std::io::Error::other(format!("{addr} resolves to no address"))
                }));
            }
            SyslogTransport::Tcp => {
                let mut last = None;
                for a in addr.to_socket_addrs()? {
                    match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                        Ok(s) => {
                            s.set_write_timeout(Some(WRITE_TIMEOUT))?;
                            let _ = s.set_nodelay(true);
                            return Ok(Conn::Tcp(s));
                        }
                        Err(e) => last = Some(e),
                    }
                }
                return Err(last.unwrap_or_else(|| {
                    std::io::Error::other(format!("{addr} resolves to no address"))
                }));
            }
            SyslogTransport::UnixDgram => {
                let s = UnixDatagram::unbound()?;
                s.connect(addr)?;
                s.set_write_timeout(Some(WRITE_TIMEOUT))?;
                Conn::UnixDgram(s)
            }
            SyslogTransport::UnixStream => {
                let s = UnixStream::connect(addr)?;
                s.set_write_timeout(Some(WRITE_TIMEOUT))?;
                Conn::UnixStream(s)
            }
        })
    }

    /// Where to start again after the connection broke: the first batch sent
    /// within `resend_secs` before now, and at least the last batch before
    /// the failing one.
    fn resend_from(&self, failed_first: u64) -> u64 {
        let window = Duration::from_secs(self.cfg.resend_secs);
        let mut from = failed_first;
        for (i, (seq, at)) in self.sent.iter().rev().enumerate() {
            if i == 0 || at.elapsed() <= window {
                from = from.min(*seq);
            } else {
                break;
            }
        }
        from
    }
}

/// Streams the exporter only writes to.
trait Stream {
    fn set_nonblocking(&self, on: bool) -> std::io::Result<()>;
    fn read_some(&self, buf: &mut [u8]) -> std::io::Result<usize>;
}

impl Stream for TcpStream {
    fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        TcpStream::set_nonblocking(self, on)
    }
    fn read_some(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&mut &*self).read(buf)
    }
}

impl Stream for UnixStream {
    fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        UnixStream::set_nonblocking(self, on)
    }
    fn read_some(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&mut &*self).read(buf)
    }
}

/// True if the peer has closed a stream we only write to: an orderly close
/// shows as end of file before a write would fail.
fn peer_closed(s: &impl Stream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return false;
    }
    let mut b = [0u8; 256];
    let closed = loop {
        match s.read_some(&mut b) {
            Ok(0) => break true,
            Ok(_) => continue, // a collector has nothing to say; ignore it
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break true,
        }
    };
    closed || s.set_nonblocking(false).is_err()
}

impl Transport for Syslog {
    fn describe(&self) -> String {
        format!(
            "syslog+{}://{}",
            self.cfg.transport.as_str(),
            self.cfg.address
        )
    }

    fn send(&mut self, records: &[Record], payloads: &[String]) -> Result<(), SendError> {
        let Some(first) = records.first().map(|r| r.seq) else {
            return Ok(());
        };
        if let Some(c) = self.conn.as_mut() {
            let closed = match c {
                Conn::Tcp(s) => peer_closed(s),
                Conn::UnixStream(s) => peer_closed(s),
                _ => false,
            };
            if closed {
                self.conn = None;
                let from = self.resend_from(first);
                self.sent.clear();
                return Err(SendError {
                    message: "the collector closed the connection".into(),
                    resend_from: (from < first).then_some(from),
                    too_large: false,
                });
            }
        }
        if self.conn.is_none() {
            let c = self.connect().map_err(|e| SendError {
                message: format!("connect to {}: {e}", self.cfg.address),
                resend_from: None,
                too_large: false,
            })?;
            self.sent.clear();
            self.conn = Some(c);
        }
        let mut msgs = records
            .iter()
            .zip(payloads)
            .map(|(r, p)| format(r, self.facility, self.procid, p));
        let res = match self.conn.as_mut() {
            Some(Conn::Tcp(s)) => {
                let mut buf = Vec::new();
                msgs.for_each(|m| frame(&m, &mut buf));
                s.write_all(&buf).and_then(|()| s.flush())
            }
            Some(Conn::UnixStream(s)) => {
                let mut buf = Vec::new();
                msgs.for_each(|m| frame(&m, &mut buf));
                s.write_all(&buf).and_then(|()| s.flush())
            }
            Some(Conn::Udp(s)) => {
                msgs.try_for_each(|m| s.send(cut(&m, MAX_DATAGRAM).as_bytes()).map(drop))
            }
            Some(Conn::UnixDgram(s)) => {
                msgs.try_for_each(|m| s.send(cut(&m, MAX_DATAGRAM).as_bytes()).map(drop))
            }
            None => Ok(()),
        };
        match res {
            Ok(()) => {
                if self.cfg.transport.is_stream() {
                    self.sent.push_back((first, Instant::now()));
                    let window = Duration::from_secs(self.cfg.resend_secs);
                    while self.sent.len() > 2
                        && self.sent.front().is_some_and(|(_, t)| t.elapsed() > window)
                    {
                        self.sent.pop_front();
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.conn = None;
                let from = self.resend_from(first);
                self.sent.clear();
                Err(SendError {
                    message: format!("send to {}: {e}", self.cfg.address),
                    resend_from: (from < first).then_some(from),
                    too_large: false,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(seq: u64, mut v: Value) -> Record {
        v["seq"] = seq.into();
        Record::parse(v.to_string()).expect("a record")
    }

    #[test]
    fn rfc5424_header_structured_data_and_severity() {
        let r = rec(
            42,
            json!({"event": "connection", "decision": "deny", "time": "2026-11-23T15:25:15.123456Z",
                   "host": "db-1", "event_id": "0190-ab\"c]", "seq": 42}),
        );
        let m = format(&r, 16, 77, "{}");
        // local0 (16) * 8 + warning (4) = 132
        assert_eq!(
            m,
            "<132>1 2026-11-23T15:25:15.123456Z db-1 portcullis 77 connection \
             [portcullis@32473 event_id=\"0190-ab\\\"c\\]\" seq=\"42\"] {}"
        );
        let allow = rec(1, json!({"event": "connection", "decision": "allow"}));
        assert!(format(&allow, 4, 1, "x").starts_with("<38>1 - - portcullis 1 connection "));
        assert_eq!(severity(&json!({"event": "export_failure"})), Severity::Err);
        assert_eq!(
            severity(&json!({"event": "bypass_drop"})),
            Severity::Warning
        );
        assert_eq!(severity(&json!({"event": "agent_start"})), Severity::Notice);
        assert_eq!(severity(&json!({"event": "checkpoint"})), Severity::Info);
        assert_eq!(
            severity(&json!({"event": "statement", "decision": "error"})),
            Severity::Err
        );
    }

    #[test]
    fn header_fields_are_printable_ascii_and_bounded() {
        assert_eq!(header_field("a b\tc", 10), "abc");
        assert_eq!(header_field("", 10), "-");
        assert_eq!(header_field(&"x".repeat(40), 32).len(), 32);
    }

    #[test]
    fn octet_counting_frames_count_bytes_not_characters() {
        let mut out = Vec::new();
        frame("héllo", &mut out);
        frame("", &mut out);
        assert_eq!(out, "6 héllo0 ".as_bytes());
    }

    #[test]
    fn datagrams_are_cut_at_a_character_boundary() {
        assert_eq!(cut("abc", 10), "abc");
        assert_eq!(cut("aé", 2), "a");
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;
    use serde_json::json;
    use std::io::BufRead;
    use std::net::TcpListener;

    fn recs(from: u64, n: u64) -> (Vec<Record>, Vec<String>) {
        let r: Vec<Record> = (from..from + n)
            .map(|seq| {
                let v = json!({"event": "test", "seq": seq, "event_id": format!("id-{seq}")});
                Record::parse(v.to_string()).expect("a record")
            })
            .collect();
        let p = r.iter().map(|r| r.line.clone()).collect();
        (r, p)
    }

    /// Reads octet-counted frames until EOF; returns the MSG parts.
    fn read_frames(s: TcpStream) -> Vec<String> {
        let mut r = std::io::BufReader::new(s);
        let mut out = Vec::new();
        loop {
            let mut len = Vec::new();
            if r.read_until(b' ', &mut len).unwrap_or(0) == 0 {
                return out;
            }
            let n: usize = String::from_utf8_lossy(&len[..len.len() - 1])
                .parse()
                .expect("frame length");
            let mut msg = vec![0u8; n];
            r.read_exact(&mut msg).expect("frame body");
            let m = String::from_utf8(msg).expect("utf-8");
            out.push(m.split_once("] ").map(|(_, m)| m.to_string()).unwrap_or(m));
        }
    }

    #[test]
    fn tcp_frames_reconnect_and_resend_what_a_closed_collector_may_have_lost() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let mut s = Syslog::new(&SyslogSink {
            transport: SyslogTransport::Tcp,
            address: addr,
            facility: "local0".into(),
            resend_secs: 60,
        });
        let (r1, p1) = recs(0, 3);
        s.send(&r1, &p1).expect("first batch");
        let (r2, p2) = recs(3, 2);
        s.send(&r2, &p2).expect("second batch");
        let (conn, _) = l.accept().expect("accept");
        conn.shutdown(std::net::Shutdown::Write)
            .expect("close our side");
        // The collector reads what was sent and goes away.
        conn.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let mut buf = vec![0u8; 65536];
        let n = (&conn).read(&mut buf).expect("read");
        assert!(n > 0);
        drop(conn);
        // The next batch notices the closed connection before writing, and
        // asks for everything sent on it within resend_secs again.
        let (r3, p3) = recs(5, 1);
        let err = s
            .send(&r3, &p3)
            .expect_err("collector closed the connection");
        assert_eq!(err.resend_from, Some(0), "{err:?}");
        // A new connection gets the resent records, framed.
        let (r, p) = recs(0, 6);
        s.send(&r, &p).expect("resend on a new connection");
        drop(s);
        let (conn, _) = l.accept().expect("accept again");
        let got = read_frames(conn);
        let seqs: Vec<u64> = got
            .iter()
            .map(|m| {
                serde_json::from_str::<Value>(m).expect("MSG is the record")["seq"]
                    .as_u64()
                    .expect("seq")
            })
            .collect();
        assert_eq!(seqs, [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn resend_covers_the_window_and_at_least_the_last_batch() {
        let mut s = Syslog::new(&SyslogSink {
            transport: SyslogTransport::Tcp,
            address: "127.0.0.1:1".into(),
            facility: "local0".into(),
            resend_secs: 5,
        });
        let old = Instant::now() - Duration::from_secs(60);
        s.sent.extend([(0, old), (10, old), (20, old)]);
        assert_eq!(s.resend_from(30), 20, "the last batch, however old");
        s.sent.push_back((30, Instant::now()));
        assert_eq!(s.resend_from(40), 30, "only what is in the window");
        s.sent.clear();
        assert_eq!(s.resend_from(40), 40, "nothing sent on this connection");
    }
}
