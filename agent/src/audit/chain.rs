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

fn write_object(m: &Map<String, Value>, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort_unstable();
    out.push(b'{');
    for (i, k) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut *out, k)?;
        out.push(b':');
        write_value(&m[k], out)?;
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
    let mut keys: Vec<&String> = rec.keys().filter(|k| k.as_str() != "hash").collect();
    keys.sort_unstable();
    // Where `"hash":…` goes in the line: before the first key that sorts after it.
    let mut insert_at = None;
    scratch.push(b'{');
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            scratch.push(b',');
        }
        if insert_at.is_none() && k.as_str() > "hash" {
            insert_at = Some(scratch.len());
        }
        serde_json::to_writer(&mut *scratch, k)?;
        scratch.push(b':');
        write_value(&rec[k.as_str()], scratch)?;
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
            if !keys.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(field.as_bytes());
            out.push(b'}');
        }
    }
    Ok(hash)
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

    pub fn next(&mut self) -> String {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.next_at(now_ms)
    }

    pub fn next_at(&mut self, now_ms: u64) -> String {
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
        let h = hex(&b);
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
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
        let first = ids.next_at(0x0123_4567_89ab);
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
            let id = ids.next_at(ms);
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
