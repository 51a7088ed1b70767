//! PostgreSQL protocol v3 framing and messages: pure functions over byte buffers,
//! no I/O and no session state (that is `session.rs`).
//!
//! Every length is checked against a maximum before anything is allocated; bytes
//! the codec does not understand are an error, never guessed at.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Protocol version 3.0 in a startup message.
pub const PROTOCOL_3_0: i32 = 196_608;
pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;
/// Largest startup packet accepted (the server's own limit is 10,000 bytes).
pub const MAX_STARTUP: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("message of {len} bytes is larger than the maximum of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("message length {0} is invalid")]
    BadLength(i64),
    #[error("unsupported protocol version {major}.{minor}")]
    Version { major: i32, minor: i32 },
    #[error("malformed {what} message: {why}")]
    Malformed {
        what: &'static str,
        why: &'static str,
    },
    #[error("unexpected message type {0:?}")]
    Unexpected(char),
}

fn malformed(what: &'static str, why: &'static str) -> CodecError {
    CodecError::Malformed { what, why }
}

/// One typed message: its tag byte and its body (without tag and length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

impl Frame {
    /// Bytes on the wire: tag, length, body.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(5 + self.body.len());
        out.put_u8(self.tag);
        out.put_i32(self.body.len() as i32 + 4);
        out.put_slice(&self.body);
    }
}

/// Splits the next complete typed message off `buf`, if there is one.
pub fn try_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, CodecError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as i64;
    if len < 4 {
        return Err(CodecError::BadLength(len));
    }
    let len = len as usize;
    if len > max {
        return Err(CodecError::TooLarge { len, max });
    }
    if buf.len() < 1 + len {
        buf.reserve(1 + len - buf.len());
        return Ok(None);
    }
    let tag = buf[0];
    let mut msg = buf.split_to(1 + len);
    msg.advance(5);
    Ok(Some(Frame {
        tag,
        body: msg.freeze(),
    }))
}

/// The first packet of a connection (it has no tag byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    Ssl,
    GssEnc,
    Cancel {
        pid: i32,
        secret: i32,
    },
    /// Protocol 3.x with its parameters in the order sent.
    Params {
        version: i32,
        params: Vec<(String, String)>,
    },
}

/// Splits the startup packet off `buf` if it is complete.
pub fn try_startup(buf: &mut BytesMut) -> Result<Option<Startup>, CodecError> {
    if buf.len() < 8 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as i64;
    if !(8..=MAX_STARTUP as i64).contains(&len) {
        return Err(if len > MAX_STARTUP as i64 {
            CodecError::TooLarge {
                len: len as usize,
                max: MAX_STARTUP,
            }
        } else {
            CodecError::BadLength(len)
        });
    }
    let len = len as usize;
    if buf.len() < len {
        return Ok(None);
    }
    let mut body = buf.split_to(len).freeze();
    body.advance(4);
    let code = body.get_i32();
    match code {
        SSL_REQUEST if len == 8 => Ok(Some(Startup::Ssl)),
        GSSENC_REQUEST if len == 8 => Ok(Some(Startup::GssEnc)),
        CANCEL_REQUEST if len == 16 => {
            let pid = body.get_i32();
            let secret = body.get_i32();
            Ok(Some(Startup::Cancel { pid, secret }))
        }
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => Err(malformed(
            "startup",
            "request code with a wrong packet length",
        )),
        v if v >> 16 == 3 => {
            let mut r = Reader::new(&body);
            let mut params = Vec::new();
            loop {
                let k = r.cstr("startup")?;
                if k.is_empty() {
                    break;
                }
                let v = r.cstr("startup")?;
                params.push((k.to_string(), v.to_string()));
            }
            if r.remaining() != 0 {
                return Err(malformed("startup", "bytes after the parameter list"));
            }
            Ok(Some(Startup::Params { version: v, params }))
        }
        v => Err(CodecError::Version {
            major: v >> 16,
            minor: v & 0xffff,
        }),
    }
}

/// A cursor over a message body.
pub struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Self { b }
    }

    pub fn remaining(&self) -> usize {
        self.b.len()
    }

    /// A NUL-terminated UTF-8 string.
    pub fn cstr(&mut self, what: &'static str) -> Result<&'a str, CodecError> {
        let n = self
            .b
            .iter()
            .position(|&c| c == 0)
            .ok_or_else(|| malformed(what, "string without its terminating NUL"))?;
        let s = std::str::from_utf8(&self.b[..n])
            .map_err(|_| malformed(what, "string is not UTF-8"))?;
        self.b = &self.b[n + 1..];
        Ok(s)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, CodecError> {
        let (&x, rest) = self
            .b
            .split_first()
            .ok_or_else(|| malformed(what, "ends early"))?;
        self.b = rest;
        Ok(x)
    }

    pub fn i16(&mut self, what: &'static str) -> Result<i16, CodecError> {
        let s = self.bytes(2, what)?;
        Ok(i16::from_be_bytes([s[0], s[1]]))
    }

    pub fn i32(&mut self, what: &'static str) -> Result<i32, CodecError> {
        let s = self.bytes(4, what)?;
        Ok(i32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }

    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CodecError> {
        if self.b.len() < n {
            return Err(malformed(what, "ends early"));
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(a)
    }

    /// A count (int16) that must not be negative.
    pub fn count(&mut self, what: &'static str) -> Result<usize, CodecError> {
        let n = self.i16(what)?;
        usize::try_from(n).map_err(|_| malformed(what, "negative count"))
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.b)
    }
}

/// Frontend messages after startup, decoded as far as the session needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Front<'a> {
    Query(&'a str),
    Parse {
        name: &'a str,
        query: &'a str,
    },
    Bind {
        portal: &'a str,
        statement: &'a str,
        /// Result column format codes (0 text, 1 binary); empty: all text; one: all.
        result_formats: Vec<i16>,
    },
    Describe {
        kind: u8,
        name: &'a str,
    },
    Execute {
        portal: &'a str,
        max_rows: i32,
    },
    Close {
        kind: u8,
        name: &'a str,
    },
    Sync,
    Flush,
    Terminate,
    CopyData,
    CopyDone,
    CopyFail,
    FunctionCall {
        oid: i32,
    },
    /// PasswordMessage, SASLInitialResponse, SASLResponse and GSSResponse all use `p`.
    Password,
}

/// Decodes a frontend message. Unknown tags and malformed bodies are errors.
pub fn front(f: &Frame) -> Result<Front<'_>, CodecError> {
    let mut r = Reader::new(&f.body);
    let m = match f.tag {
        b'Q' => {
            let q = r.cstr("Query")?;
            Front::Query(q)
        }
        b'P' => {
            let name = r.cstr("Parse")?;
            let query = r.cstr("Parse")?;
            let n = r.count("Parse")?;
            r.bytes(4 * n, "Parse")?;
            Front::Parse { name, query }
        }
        b'B' => {
            let portal = r.cstr("Bind")?;
            let statement = r.cstr("Bind")?;
            let nf = r.count("Bind")?;
            r.bytes(2 * nf, "Bind")?;
            let np = r.count("Bind")?;
            for _ in 0..np {
                let len = r.i32("Bind")?;
                if len > 0 {
                    r.bytes(len as usize, "Bind")?;
                } else if len < -1 {
                    return Err(malformed("Bind", "negative parameter length"));
                }
            }
            let nr = r.count("Bind")?;
            let mut result_formats = Vec::with_capacity(nr.min(64));
            for _ in 0..nr {
                result_formats.push(r.i16("Bind")?);
            }
            Front::Bind {
                portal,
                statement,
                result_formats,
            }
        }
        b'D' | b'C' => {
            let what = if f.tag == b'D' { "Describe" } else { "Close" };
            let kind = r.u8(what)?;
            if kind != b'S' && kind != b'P' {
                return Err(malformed(what, "target is neither S nor P"));
            }
            let name = r.cstr(what)?;
            if f.tag == b'D' {
                Front::Describe { kind, name }
            } else {
                Front::Close { kind, name }
            }
        }
        b'E' => {
            let portal = r.cstr("Execute")?;
            let max_rows = r.i32("Execute")?;
            Front::Execute { portal, max_rows }
        }
        b'S' => Front::Sync,
        b'H' => Front::Flush,
        b'X' => Front::Terminate,
        b'd' => Front::CopyData,
        b'c' => Front::CopyDone,
        b'f' => Front::CopyFail,
        b'F' => {
            let oid = r.i32("FunctionCall")?;
            Front::FunctionCall { oid }
        }
        b'p' => Front::Password,
        t => return Err(CodecError::Unexpected(t as char)),
    };
    // Messages whose whole body was read must not carry trailing bytes.
    if matches!(
        f.tag,
        b'Q' | b'P' | b'B' | b'D' | b'C' | b'E' | b'S' | b'H' | b'X'
    ) && r.remaining() != 0
    {
        return Err(malformed("frontend", "bytes after the end of the message"));
    }
    Ok(m)
}

// ---- backend message helpers ------------------------------------------------------

/// Fields of an ErrorResponse or NoticeResponse (`S` severity, `C` code, `M` message).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Notice {
    pub severity: String,
    pub sqlstate: String,
    pub message: String,
}

pub fn parse_notice(body: &[u8]) -> Notice {
    let mut n = Notice::default();
    let mut r = Reader::new(body);
    while let Ok(code) = r.u8("ErrorResponse") {
        if code == 0 {
            break;
        }
        let Ok(v) = r.cstr("ErrorResponse") else {
            break;
        };
        match code {
            b'V' => n.severity = v.to_string(),
            b'S' if n.severity.is_empty() => n.severity = v.to_string(),
            b'C' => n.sqlstate = v.to_string(),
            b'M' => n.message = v.to_string(),
            _ => {}
        }
    }
    n
}

/// The command tag of a CommandComplete and the row count it carries, if any.
pub fn command_tag(body: &[u8]) -> (&str, Option<u64>) {
    let s = body.strip_suffix(&[0]).unwrap_or(body);
    let tag = std::str::from_utf8(s).unwrap_or("");
    let rows = tag
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|_| tag.contains(' '));
    (tag, rows)
}

/// Column names and format codes of a RowDescription.
pub fn row_description(body: &[u8]) -> Result<Vec<(String, i16)>, CodecError> {
    let mut r = Reader::new(body);
    let n = r.count("RowDescription")?;
    let mut cols = Vec::with_capacity(n.min(1600));
    for _ in 0..n {
        let name = r.cstr("RowDescription")?.to_string();
        r.bytes(16, "RowDescription")?;
        let fmt = r.i16("RowDescription")?;
        cols.push((name, fmt));
    }
    Ok(cols)
}

/// The values of a DataRow (`None` for NULL).
pub fn data_row(body: &[u8]) -> Result<Vec<Option<&[u8]>>, CodecError> {
    let mut r = Reader::new(body);
    let n = r.count("DataRow")?;
    let mut vals = Vec::with_capacity(n.min(1600));
    for _ in 0..n {
        let len = r.i32("DataRow")?;
        if len < 0 {
            vals.push(None);
        } else {
            vals.push(Some(r.bytes(len as usize, "DataRow")?));
        }
    }
    Ok(vals)
}

// ---- message builders ------------------------------------------------------------------

fn msg(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u8(tag);
    out.put_i32(0);
    body(out);
    let len = (out.len() - start - 1) as i32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(out: &mut BytesMut, s: &str) {
    // A NUL inside would end the string early on the other side.
    out.put_slice(s.replace('\0', " ").as_bytes());
    out.put_u8(0);
}

pub fn error_response(out: &mut BytesMut, severity: &str, sqlstate: &str, message: &str) {
    msg(out, b'E', |o| {
        o.put_u8(b'S');
        put_cstr(o, severity);
        o.put_u8(b'V');
        put_cstr(o, severity);
        o.put_u8(b'C');
        put_cstr(o, sqlstate);
        o.put_u8(b'M');
        put_cstr(o, message);
        o.put_u8(0);
    });
}

pub fn auth_ok(out: &mut BytesMut) {
    msg(out, b'R', |o| o.put_i32(0));
}

pub fn backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    msg(out, b'K', |o| {
        o.put_i32(pid);
        o.put_i32(secret);
    });
}

pub fn startup(out: &mut BytesMut, version: i32, params: &[(String, String)]) {
    let start = out.len();
    out.put_i32(0);
    out.put_i32(version);
    for (k, v) in params {
        put_cstr(out, k);
        put_cstr(out, v);
    }
    out.put_u8(0);
    let len = (out.len() - start) as i32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn ssl_request(out: &mut BytesMut) {
    out.put_i32(8);
    out.put_i32(SSL_REQUEST);
}

pub fn cancel_request(out: &mut BytesMut, pid: i32, secret: i32) {
    out.put_i32(16);
    out.put_i32(CANCEL_REQUEST);
    out.put_i32(pid);
    out.put_i32(secret);
}

pub fn query(out: &mut BytesMut, text: &str) {
    msg(out, b'Q', |o| put_cstr(o, text));
}

pub fn parse(out: &mut BytesMut, name: &str, text: &str) {
    msg(out, b'P', |o| {
        put_cstr(o, name);
        put_cstr(o, text);
        o.put_i16(0);
    });
}

pub fn password(out: &mut BytesMut, p: &str) {
    msg(out, b'p', |o| put_cstr(o, p));
}

pub fn sasl_initial(out: &mut BytesMut, mechanism: &str, data: &[u8]) {
    msg(out, b'p', |o| {
        put_cstr(o, mechanism);
        o.put_i32(data.len() as i32);
        o.put_slice(data);
    });
}

pub fn sasl_response(out: &mut BytesMut, data: &[u8]) {
    msg(out, b'p', |o| o.put_slice(data));
}

/// An AuthenticationSASL message listing `mechanisms`.
pub fn auth_sasl(out: &mut BytesMut, mechanisms: &[&str]) {
    msg(out, b'R', |o| {
        o.put_i32(10);
        for m in mechanisms {
            put_cstr(o, m);
        }
        o.put_u8(0);
    });
}

/// The authentication request code of an `R` message and what follows it.
pub fn auth_request(body: &[u8]) -> Result<(i32, &[u8]), CodecError> {
    let mut r = Reader::new(body);
    let code = r.i32("Authentication")?;
    Ok((code, r.rest()))
}

/// Mechanism names of an AuthenticationSASL body (after the code).
pub fn sasl_mechanisms(rest: &[u8]) -> Result<Vec<String>, CodecError> {
    let mut r = Reader::new(rest);
    let mut v = Vec::new();
    loop {
        let m = r.cstr("AuthenticationSASL")?;
        if m.is_empty() {
            break;
        }
        v.push(m.to_string());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(tag: u8, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        Frame {
            tag,
            body: Bytes::copy_from_slice(body),
        }
        .encode(&mut b);
        b
    }

    #[test]
    fn frames_split_across_reads_and_several_in_one() {
        let mut all = framed(b'Q', b"select 1\0");
        all.extend_from_slice(&framed(b'S', b""));
        let bytes = all.clone().freeze();
        // Byte by byte: nothing until complete.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in bytes.iter() {
            buf.put_u8(*b);
            while let Some(f) = try_frame(&mut buf, 1 << 20).expect("valid") {
                got.push(f);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(front(&got[0]).expect("query"), Front::Query("select 1"));
        assert_eq!(front(&got[1]).expect("sync"), Front::Sync);
    }

    #[test]
    fn oversized_and_bad_lengths_are_refused_before_allocating() {
        let mut b = BytesMut::from(&[b'Q', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            try_frame(&mut b, 1 << 20),
            Err(CodecError::TooLarge { .. })
        ));
        assert!(b.capacity() < 1 << 20);
        let mut b = BytesMut::from(&[b'Q', 0, 0, 0, 3][..]);
        assert_eq!(try_frame(&mut b, 1 << 20), Err(CodecError::BadLength(3)));
    }

    #[test]
    fn startup_packets() {
        let mut b = BytesMut::new();
        ssl_request(&mut b);
        assert_eq!(try_startup(&mut b), Ok(Some(Startup::Ssl)));
        cancel_request(&mut b, 7, -9);
        assert_eq!(
            try_startup(&mut b),
            Ok(Some(Startup::Cancel { pid: 7, secret: -9 }))
        );
        startup(
            &mut b,
            PROTOCOL_3_0,
            &[
                ("user".into(), "app".into()),
                ("database".into(), "d".into()),
            ],
        );
        match try_startup(&mut b) {
            Ok(Some(Startup::Params { version, params })) => {
                assert_eq!(version, PROTOCOL_3_0);
                assert_eq!(params[0], ("user".into(), "app".into()));
                assert_eq!(params.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        let mut b = BytesMut::from(&[0, 0, 0, 8, 0, 2, 0, 0][..]);
        assert_eq!(
            try_startup(&mut b),
            Err(CodecError::Version { major: 2, minor: 0 })
        );
        let mut b = BytesMut::from(&[0, 1, 0, 0, 0, 3, 0, 0][..]);
        assert!(matches!(
            try_startup(&mut b),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn extended_messages_decode() {
        let mut b = BytesMut::new();
        parse(&mut b, "s1", "select $1");
        let f = try_frame(&mut b, 1 << 20).expect("ok").expect("frame");
        assert_eq!(
            front(&f).expect("parse"),
            Front::Parse {
                name: "s1",
                query: "select $1"
            }
        );
        // Bind: portal "", statement s1, 0 param formats, 1 param "42", 1 result format (binary).
        let mut body = Vec::new();
        body.extend_from_slice(b"\0s1\0");
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&2i32.to_be_bytes());
        body.extend_from_slice(b"42");
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        let f = Frame {
            tag: b'B',
            body: Bytes::from(body),
        };
        assert_eq!(
            front(&f).expect("bind"),
            Front::Bind {
                portal: "",
                statement: "s1",
                result_formats: vec![1]
            }
        );
        // A Bind whose parameter length runs past the end is malformed.
        let mut body = Vec::new();
        body.extend_from_slice(b"\0s1\0");
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&100i32.to_be_bytes());
        let f = Frame {
            tag: b'B',
            body: Bytes::from(body),
        };
        assert!(front(&f).is_err());
        let f = Frame {
            tag: b'?',
            body: Bytes::new(),
        };
        assert_eq!(front(&f), Err(CodecError::Unexpected('?')));
    }

    #[test]
    fn backend_helpers() {
        let mut b = BytesMut::new();
        error_response(&mut b, "ERROR", "42501", "denied by rule x");
        let f = try_frame(&mut b, 1 << 20).expect("ok").expect("frame");
        let n = parse_notice(&f.body);
        assert_eq!(n.sqlstate, "42501");
        assert_eq!(n.message, "denied by rule x");
        assert_eq!(command_tag(b"INSERT 0 5\0"), ("INSERT 0 5", Some(5)));
        assert_eq!(command_tag(b"BEGIN\0"), ("BEGIN", None));
        let mut row = Vec::new();
        row.extend_from_slice(&2i16.to_be_bytes());
        row.extend_from_slice(&1i32.to_be_bytes());
        row.extend_from_slice(b"a");
        row.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(data_row(&row).expect("row"), vec![Some(&b"a"[..]), None]);
    }
}
