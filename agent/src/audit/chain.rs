//! The hash chain: canonical serialisation, record hashes, event ids and the
//! signed checkpoint message. Shared by the writer and the offline verifier, so
//! both compute exactly the same bytes.
//!
//! Canonical form of a record: the JSON object with the keys of every object
//! (at any depth) sorted by their UTF-8 bytes, no whitespace, strings and
//! numbers as serde_json writes them (strings escape only `"`, `\` and control
//! characters; integers in decimal). The sort is done here, explicitly, so the
//! bytes do not depend on whether serde_json's `preserve_order` feature is
//! enabled somewhere in the dependency graph. (This is close to, but not, RFC 8785
//! JCS: JCS sorts by UTF-16 code units and formats floats differently; records
//! hold no floats, and keys are ASCII.)
//!
//! `hash` = lowercase hex SHA-256 of the canonical form of the record without
//! its `hash` key. The line written to the file is the canonical form of the
//! record *with* `hash`, so a verifier can demand the line be byte-for-byte
//! canonical (which rules out duplicate keys and re-encodings that different
//! JSON readers would show differently).

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// `prev_hash` of the first record of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `event` of a signed checkpoint record.
pub const CHECKPOINT_EVENT: &str = "checkpoint";

/// `event` of the record written when the writer created a new signing key.
pub const KEY_CREATED_EVENT: &str = "audit_key_created";

/// Domain separation for checkpoint signatures; changes if the message does.
pub const SIGNATURE_DOMAIN: &str = "portcullis-audit-checkpoint-v1";

/// The exact bytes a checkpoint signs:
/// `portcullis-audit-checkpoint-v1:<head_hash>:<head_seq>`, ASCII, where
/// `head_hash` is the 64 lowercase hex digits of the head record's `hash` and
/// `head_seq` its `seq` in decimal without leading zeros. No trailing newline.
pub fn checkpoint_message(head_hash: &str, head_seq: u64) -> Vec<u8> {
    format!("{SIGNATURE_DOMAIN}:{head_hash}:{head_seq}").into_bytes()
}

/// Lowercase hex of `bytes` into `out` (twice as long).
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (b, o) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        o[0] = DIGITS[usize::from(b >> 4)];
        o[1] = DIGITS[usize::from(b & 0x0f)];
    }
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Decodes exactly `N` bytes of hex (either case). `None` on any other input.
pub fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != N * 2 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nibble(s[2 * i])? << 4) | nibble(s[2 * i + 1])?;
    }
    Some(out)
}

/// True for 64 lowercase hex digits (the form of every hash we write).
pub fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn write_value(v: &Value, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    match v {
        Value::Object(m) => write_object(m, out),
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(x, out)?;
            }
            out.push(b']');
            Ok(())
        }
        scalar => serde_json::to_writer(&mut *out, scalar),
    }
}

/// The entries of `m` sorted by key: in the map's own order, which is already
/// sorted for serde_json's default map, and sorted here otherwise.
fn sorted_entries(m: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut v: Vec<(&String, &Value)> = m.iter().collect();
    if !v.is_sorted_by(|a, b| a.0 <= b.0) {
        v.sort_unstable_by(|a, b| a.0.cmp(b.0));
    }
    v
}

fn write_object(m: &Map<String, Value>, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    out.push(b'{');
    for (i, (k, v)) in sorted_entries(m).into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut *out, k)?;
        out.push(b':');
        write_value(v, out)?;
    }
    out.push(b'}');
    Ok(())
}

/// The canonical form of any JSON value (see the module documentation); the
/// writer and verifier use [`seal`], which produces the same bytes.
#[cfg(test)]
pub fn canonical(v: &Value) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::new();
    write_value(v, &mut out)?;
    Ok(out)
}

/// Hashes a record and writes its line (canonical, `hash` included, no newline)
/// to `out`. Any `hash` key already in `rec` is ignored. `scratch` is reused
/// between calls to avoid an allocation per record. Returns the hash.
pub fn seal(
    rec: &Map<String, Value>,
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<String, serde_json::Error> {
    scratch.clear();
    let mut entries = sorted_entries(rec);
    entries.retain(|(k, _)| k.as_str() != "hash");
    let keys_empty = entries.is_empty();
    // Where `"hash":…` goes in the line: before the first key that sorts after it.
    let mut insert_at = None;
    scratch.push(b'{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            scratch.push(b',');
        }
        if insert_at.is_none() && k.as_str() > "hash" {
            insert_at = Some(scratch.len());
        }
        serde_json::to_writer(&mut *scratch, k)?;
        scratch.push(b':');
        write_value(v, scratch)?;
    }
    scratch.push(b'}');
    let hash = hex(&Sha256::digest(&scratch[..]));
    let field = format!("\"hash\":\"{hash}\"");
    match insert_at {
        Some(at) => {
            out.extend_from_slice(&scratch[..at]);
            out.extend_from_slice(field.as_bytes());
            out.push(b',');
            out.extend_from_slice(&scratch[at..]);
        }
        None => {
            out.extend_from_slice(&scratch[..scratch.len() - 1]);
            if !keys_empty {
                out.push(b',');
            }
            out.extend_from_slice(field.as_bytes());
            out.push(b'}');
        }
    }
    Ok(hash)
}

/// The keys the writer adds to every record, in canonical (sorted) order.
const CHAIN_KEYS: [&str; 4] = ["event_id", "hash", "prev_hash", "seq"];

/// A record in canonical form without its chain fields, made on the thread that
/// records the event, so that the single writer thread only numbers, links and
/// hashes it (and frees one buffer, not a tree of JSON values).
///
/// [`Prepared::seal`] produces exactly the bytes [`seal`] produces for the
/// record with `seq`, `event_id` and `prev_hash` added.
#[derive(Debug)]
pub struct Prepared {
    /// The record's canonical entries (`"key":value`, sorted), joined by commas,
    /// without the enclosing braces.
    inner: Vec<u8>,
    /// For each of [`CHAIN_KEYS`], where its entry goes in `inner`: the start of
    /// the first entry whose key sorts after it, or `inner.len()`.
    at: [usize; 4],
}

/// Serialises `rec` canonically for [`Prepared::seal`]. Keys of the chain
/// fields (`seq`, `event_id`, `prev_hash`, `hash`) in `rec` are left out.
pub fn prepare(rec: &Map<String, Value>) -> Result<Prepared, serde_json::Error> {
    let mut entries = sorted_entries(rec);
    entries.retain(|(k, _)| !CHAIN_KEYS.contains(&k.as_str()));
    let mut inner = Vec::with_capacity(1024);
    let mut at = [usize::MAX; 4];
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            inner.push(b',');
        }
        for (c, pos) in CHAIN_KEYS.iter().zip(at.iter_mut()) {
            if *pos == usize::MAX && k.as_str() > *c {
                *pos = inner.len();
            }
        }
        serde_json::to_writer(&mut inner, k)?;
        inner.push(b':');
        write_value(v, &mut inner)?;
    }
    for pos in &mut at {
        if *pos == usize::MAX {
            *pos = inner.len();
        }
    }
    Ok(Prepared { inner, at })
}

impl Prepared {
    /// Writes `{`, the record's entries with the given chain entries (`Some` ones,
    /// in [`CHAIN_KEYS`] order) at their places, and `}` to `out`.
    fn assemble(&self, fields: [Option<&[u8]>; 4], out: &mut Vec<u8>) {
        out.push(b'{');
        let mut any = false;
        let mut piece = |p: &[u8], out: &mut Vec<u8>| {
            if p.is_empty() {
                return;
            }
            if any {
                out.push(b',');
            }
            out.extend_from_slice(p);
            any = true;
        };
        let mut from = 0;
        for (pos, field) in self.at.iter().zip(fields) {
            // The entries before this field, without the comma that ends them.
            let run = &self.inner[from..*pos];
            piece(run.strip_suffix(b",").unwrap_or(run), out);
            from = *pos;
            if let Some(f) = field {
                piece(f, out);
            }
        }
        piece(&self.inner[from..], out);
        out.push(b'}');
    }

    /// Gives the record its chain fields (`seq`, `event_id`, and `prev_hash` =
    /// `head`), appends its line (canonical, `hash` included, no newline) to
    /// `out` and sets `head` to its hash. `scratch` is reused between calls.
    /// Writes the fields itself, without allocating: this runs once per record
    /// on the writer thread.
    pub fn seal(
        &self,
        seq: u64,
        event_id: &[u8; 36],
        head: &mut String,
        scratch: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) {
        use std::io::Write as _;
        // The values are a UUID, hex digits and a decimal integer: nothing in
        // them needs escaping.
        const ID_KEY: &[u8] = b"\"event_id\":\"";
        const PREV_KEY: &[u8] = b"\"prev_hash\":\"";
        let mut id = [b'"'; ID_KEY.len() + 36 + 1];
        id[..ID_KEY.len()].copy_from_slice(ID_KEY);
        id[ID_KEY.len()..ID_KEY.len() + 36].copy_from_slice(event_id);
        let mut prev = [b'"'; PREV_KEY.len() + 64 + 1];
        let fallback: Vec<u8>;
        let prev_field: &[u8] = if is_hash(head) {
            prev[..PREV_KEY.len()].copy_from_slice(PREV_KEY);
            prev[PREV_KEY.len()..PREV_KEY.len() + 64].copy_from_slice(head.as_bytes());
            &prev
        } else {
            // Not a hash the writer made (cannot happen): escaped the general way.
            let mut f = b"\"prev_hash\":".to_vec();
            let _ = serde_json::to_writer(&mut f, head.as_str());
            fallback = f;
            &fallback
        };
        let mut seq_field = [0u8; 6 + 20];
        seq_field[..6].copy_from_slice(b"\"seq\":");
        let seq_len = {
            let mut w = &mut seq_field[6..];
            let room = w.len();
            let _ = write!(w, "{seq}");
            6 + room - w.len()
        };
        let seq_field = &seq_field[..seq_len];
        scratch.clear();
        self.assemble(
            [Some(&id), None, Some(prev_field), Some(seq_field)],
            scratch,
        );
        const HASH_KEY: &[u8] = b"\"hash\":\"";
        let mut h = [b'"'; HASH_KEY.len() + 64 + 1];
        h[..HASH_KEY.len()].copy_from_slice(HASH_KEY);
        hex_into(
            &Sha256::digest(&scratch[..]),
            &mut h[HASH_KEY.len()..HASH_KEY.len() + 64],
        );
        self.assemble(
            [Some(&id), Some(&h), Some(prev_field), Some(seq_field)],
            out,
        );
        head.clear();
        head.extend(
            h[HASH_KEY.len()..HASH_KEY.len() + 64]
                .iter()
                .map(|b| char::from(*b)),
        );
    }
}

/// UUIDv7 (RFC 9562) event ids, made by the single writer thread.
///
/// 48-bit Unix milliseconds, then a 12-bit counter in `rand_a` (RFC 9562 §6.2
/// method 1: seeded at random each new millisecond, incremented within one, the
/// timestamp borrowed forward on overflow), then 62 random bits. Ids therefore
/// sort in write order even if the clock steps back. The random bits come from a
/// SHA-256 counter-mode generator seeded once from getrandom(2), so making an id
/// needs no system call and cannot fail.
pub struct EventIds {
    seed: [u8; 32],
    block: u64,
    pool: [u8; 32],
    used: usize,
    last_ms: u64,
    counter: u16,
}

impl EventIds {
    pub fn new(seed: [u8; 32]) -> Self {
        Self {
            seed,
            block: 0,
            pool: [0; 32],
            used: 32,
            last_ms: 0,
            counter: 0,
        }
    }

    fn random(&mut self, out: &mut [u8]) {
        for o in out {
            if self.used == self.pool.len() {
                let mut h = Sha256::new();
                h.update(self.seed);
                h.update(self.block.to_le_bytes());
                self.pool = h.finalize().into();
                self.block += 1;
                self.used = 0;
            }
            *o = self.pool[self.used];
            self.used += 1;
        }
    }

    /// The next id, as its 36 ASCII characters.
    pub fn next(&mut self) -> [u8; 36] {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.next_at(now_ms)
    }

    #[cfg(test)]
    pub fn next_string_at(&mut self, now_ms: u64) -> String {
        self.next_at(now_ms)
            .iter()
            .map(|b| char::from(*b))
            .collect()
    }

    pub fn next_at(&mut self, now_ms: u64) -> [u8; 36] {
        let mut r = [0u8; 10];
        self.random(&mut r);
        if now_ms > self.last_ms {
            self.last_ms = now_ms;
            // Seeded below 0x800 so a burst in one millisecond has room to count.
            self.counter = u16::from_be_bytes([r[8], r[9]]) & 0x07ff;
        } else if self.counter >= 0x0fff {
            self.last_ms += 1;
            self.counter = u16::from_be_bytes([r[8], r[9]]) & 0x07ff;
        } else {
            self.counter += 1;
        }
        let ms = self.last_ms & 0xffff_ffff_ffff;
        let mut b = [0u8; 16];
        b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        b[6] = 0x70 | (self.counter >> 8) as u8;
        b[7] = (self.counter & 0xff) as u8;
        b[8] = 0x80 | (r[0] & 0x3f);
        b[9..16].copy_from_slice(&r[1..8]);
        // 8-4-4-4-12 hex digits.
        let mut id = [b'-'; 36];
        hex_into(&b[..4], &mut id[..8]);
        hex_into(&b[4..6], &mut id[9..13]);
        hex_into(&b[6..8], &mut id[14..18]);
        hex_into(&b[8..10], &mut id[19..23]);
        hex_into(&b[10..], &mut id[24..]);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_sorts_keys_at_every_depth_whatever_the_map_order() {
        let v = json!({"b": {"z": 1, "a": [ {"y": true, "x": null} ]}, "a": "é\"\n"});
        assert_eq!(
            String::from_utf8(canonical(&v).expect("canonical")).expect("utf-8"),
            r#"{"a":"é\"\n","b":{"a":[{"x":null,"y":true}],"z":1}}"#
        );
    }

    #[test]
    fn sealed_line_is_the_canonical_record_with_its_hash() {
        for rec in [
            json!({"seq": 1, "event": "x", "prev_hash": GENESIS}),
            json!({"a": 1}),
            json!({"zzz": 1}),
            json!({}),
            json!({"hash": "stale", "host": "h", "ha": 2}),
        ] {
            let Value::Object(m) = rec else {
                panic!("test records are objects")
            };
            let (mut scratch, mut line) = (Vec::new(), Vec::new());
            let hash = seal(&m, &mut scratch, &mut line).expect("seal");
            let mut without = m.clone();
            without.remove("hash");
            let expect_hash = hex(&Sha256::digest(
                canonical(&Value::Object(without.clone())).expect("canonical"),
            ));
            assert_eq!(hash, expect_hash);
            without.insert("hash".into(), Value::String(hash));
            assert_eq!(
                String::from_utf8(line).expect("utf-8"),
                String::from_utf8(canonical(&Value::Object(without)).expect("canonical"))
                    .expect("utf-8")
            );
        }
    }

    #[test]
    fn a_prepared_record_seals_to_the_same_line_as_the_whole_record() {
        let id = "0190f1d2-7a3b-7c4d-8e5f-6a7b8c9d0e1f";
        let id_bytes: [u8; 36] = id.as_bytes().try_into().expect("36 bytes");
        let prev = "ab".repeat(32);
        for rec in [
            json!({}),
            json!({"a": 1}),
            json!({"zzz": 1}),
            json!({"hash": "stale", "seq": 99, "event_id": "x", "prev_hash": "y"}),
            json!({"event": "connection", "schema": 2, "time": "t", "host": "h",
                   "agent_version": "0.1.0", "attribution": {"pid": 1, "exe": "/bin/é\"x"},
                   "f": 1.5, "list": [1, {"b": 2, "a": null}], "ha": true, "hz": false,
                   "pa": "p", "pz": "q", "sa": 1, "sz": 2, "e": "", "ev": [], "événement": 3}),
            json!({"prev_hash0": 1, "seq0": 2, "event_id0": 3, "hash0": 4}),
            json!({"z": {"seq": 1}}),
        ] {
            let Value::Object(mut m) = rec else {
                panic!("test records are objects")
            };
            let prepared = prepare(&m).expect("prepare");
            let (mut scratch, mut line) = (Vec::new(), vec![b'x']);
            let mut hash = prev.clone();
            prepared.seal(42, &id_bytes, &mut hash, &mut scratch, &mut line);
            assert_eq!(line.remove(0), b'x', "appended to what was there");
            m.insert("seq".into(), 42.into());
            m.insert("event_id".into(), id.into());
            m.insert("prev_hash".into(), prev.clone().into());
            let (mut scratch2, mut expected) = (Vec::new(), Vec::new());
            let expected_hash = seal(&m, &mut scratch2, &mut expected).expect("seal");
            assert_eq!(
                String::from_utf8(line).expect("utf-8"),
                String::from_utf8(expected).expect("utf-8"),
                "{m:?}"
            );
            assert_eq!(hash, expected_hash);
        }
    }

    #[test]
    fn hex_round_trips() {
        let b = [0x00, 0x7f, 0x80, 0xff];
        assert_eq!(hex(&b), "007f80ff");
        assert_eq!(unhex::<4>("007F80ff"), Some(b));
        assert_eq!(unhex::<4>("007f80f"), None);
        assert_eq!(unhex::<4>("007f80fg"), None);
        assert!(is_hash(GENESIS));
        assert!(!is_hash(&"A".repeat(64)));
    }

    #[test]
    fn event_ids_are_uuid_v7_and_strictly_increasing() {
        let mut ids = EventIds::new([7; 32]);
        let first = ids.next_string_at(0x0123_4567_89ab);
        assert_eq!(&first[..13], "01234567-89ab");
        assert_eq!(&first[14..15], "7", "version nibble: {first}");
        assert!(
            matches!(&first[19..20], "8" | "9" | "a" | "b"),
            "variant bits: {first}"
        );
        let mut last = first;
        // Many ids in one millisecond, then the clock going back: still increasing.
        for i in 0..10_000u64 {
            let ms = if i < 9_000 { 0x0123_4567_89ab } else { 5 };
            let id = ids.next_string_at(ms);
            assert_eq!(id.len(), 36);
            assert!(id > last, "{id} after {last}");
            last = id;
        }
    }

    #[test]
    fn checkpoint_message_is_exact() {
        assert_eq!(
            checkpoint_message(GENESIS, 42),
            format!("portcullis-audit-checkpoint-v1:{GENESIS}:42").into_bytes()
        );
    }
}
