//! The parse cache: applications send the same few statement texts over and over
//! (prepared or not), so an analysis is kept per exact text.
//!
//! Bounded: two generations of at most `cap / 2` entries each. A lookup that hits
//! the old generation moves the entry to the new one; when the new generation is
//! full it becomes the old one and the previous old one is dropped. Texts longer
//! than [`MAX_CACHED_TEXT`] are analysed every time (they are rarely repeated and
//! would dominate the memory bound).
//!
//! Texts that differ only in their literals (`... WHERE aid = 17` and `... WHERE
//! aid = 42`, as simple-protocol clients send them) share one entry, keyed by the
//! text's *shape* (literals replaced by `?`). That is sound only where the
//! analysis does not depend on a literal's value; where it does, the analysis
//! says so ([`StatementInfo::literal_dependent`](super::StatementInfo)) and is
//! kept under its exact text only. The analyser reads a literal's value at
//! these sites, each marking the statement: EXPLAIN options (`ANALYZE 0` does not
//! run the statement, `ANALYZE 1` does), every `SET` value (`search_path`, the
//! pinned lexing settings, `SET NAMES`), and the arguments of `set_config(...)`.
//! The shape is computed by a small scanner that gives up (and the exact text is
//! the key) on anything where a literal's place is not certain: backslashes,
//! dollar signs (quoting and parameters), prefixed strings (`E''`, `U&''`,
//! `B''`, `X''`), numbers glued to what precedes or follows them (`1x1`,
//! `1from`, `0x1F`, `1_000`, `1e`, `"a"1`, `'a'1`, `t.5`: lexed differently by
//! different server versions and by the parser), quoted identifiers that hold
//! doubled quotes or are empty, operator characters other than plain
//! punctuation (`!` but in `!=`, `&`, `?`, `#`, `@`, `~`, ...), whitespace other
//! than space, tab and newlines, non-ASCII text outside quotes, strings where
//! the parser may read a name or an alias (`AS 'x'`, `FROM 'x'`, `1 'x'`: a
//! string is shaped only after an operator, a bracket, a comma or a keyword that
//! takes a value), unterminated quotes or comments.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::analyze::{Analysis, analyze_text};

/// Longest text kept in the cache, in bytes.
pub const MAX_CACHED_TEXT: usize = 8 * 1024;

struct Generations {
    young: HashMap<Box<str>, Arc<Analysis>>,
    old: HashMap<Box<str>, Arc<Analysis>>,
}

/// Analyses SQL text; `Send + Sync`, shared by every session of the proxy.
pub struct Analyzer {
    half: usize,
    cache: Mutex<Generations>,
}

impl Analyzer {
    /// `cache_entries`: at most this many texts are cached (0: no cache).
    pub fn new(cache_entries: usize) -> Self {
        let half = cache_entries / 2;
        Analyzer {
            half,
            cache: Mutex::new(Generations {
                young: HashMap::with_capacity(half.min(4096)),
                old: HashMap::new(),
            }),
        }
    }

    /// The analysis of `sql`. Never panics.
    pub fn analyze(&self, sql: &str) -> Arc<Analysis> {
        let cacheable = self.half > 0 && sql.len() <= MAX_CACHED_TEXT;
        if !cacheable {
            return Arc::new(analyze_text(sql));
        }
        if let Some(a) = self.lookup(sql) {
            return a;
        }
        // A NUL never occurs in statement text (the protocol ends strings with
        // it), so it marks shape keys apart from exact ones. Computed only when
        // the exact text missed.
        let shape_key = shape(sql).map(|s| format!("\0{s}"));
        if let Some(a) = shape_key.as_deref().and_then(|k| self.lookup(k)) {
            return a;
        }
        let a = Arc::new(analyze_text(sql));
        let shareable = a.error.is_none()
            && !a
                .statements
                .iter()
                .any(|s| s.literal_dependent || s.set_search_path.is_some());
        let key: Box<str> = match shape_key {
            Some(k) if shareable => k.into(),
            _ => sql.into(),
        };
        let mut g = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        Self::insert(&mut g, self.half, key, a.clone());
        a
    }

    fn lookup(&self, key: &str) -> Option<Arc<Analysis>> {
        let mut g = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = g.young.get(key) {
            return Some(a.clone());
        }
        let (k, a) = g.old.remove_entry(key)?;
        Self::insert(&mut g, self.half, k, a.clone());
        Some(a)
    }

    fn insert(g: &mut Generations, half: usize, k: Box<str>, a: Arc<Analysis>) {
        if g.young.len() >= half {
            g.old = std::mem::take(&mut g.young);
            g.young.reserve(half.min(4096));
        }
        g.young.insert(k, a);
    }

    /// Texts currently cached (for tests and metrics).
    #[allow(dead_code)]
    pub fn cached(&self) -> usize {
        let g = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        g.young.len() + g.old.len()
    }
}

/// `portcullis policy bench --sql`: nanoseconds per analysis of pgbench's
/// statement, uncached, cached (same text), cached by shape (the literal
/// changes every time), and per `SqlSession::facts_for` (used by `cargo xtask
/// bench policy`; never by tests).
pub fn measure(iterations: usize) -> serde_json::Value {
    use std::hint::black_box;
    use std::time::Instant;
    let n = iterations.max(1);
    let sql = "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;";
    let per = |t: Instant, k: usize| t.elapsed().as_nanos() as f64 / k as f64;
    let cold = Analyzer::new(0);
    let t = Instant::now();
    for _ in 0..n {
        black_box(cold.analyze(sql));
    }
    let uncached = per(t, n);
    let warm = Analyzer::new(10_000);
    warm.analyze(sql);
    let t = Instant::now();
    for _ in 0..n * 20 {
        black_box(warm.analyze(sql));
    }
    let cached = per(t, n * 20);
    let texts: Vec<String> = (0..n)
        .map(|i| format!("SELECT abalance FROM pgbench_accounts WHERE aid = {i};"))
        .collect();
    let t = Instant::now();
    for q in &texts {
        black_box(warm.analyze(q));
    }
    let by_shape = per(t, n);
    let sess = super::SqlSession::new("bench", None);
    let a = warm.analyze(sql);
    let t = Instant::now();
    let mut facts_ok = true;
    for _ in 0..n * 10 {
        if let Some(s) = a.statements.first() {
            facts_ok &= black_box(sess.facts_for(s)).is_ok();
        }
    }
    let facts = per(t, n * 10);
    serde_json::json!({
        "statement": sql,
        "uncached_ns": uncached,
        "cached_ns": cached,
        "cached_by_shape_ns": by_shape,
        "facts_for_ns": facts,
        "facts_ok": facts_ok,
    })
}

/// `sql` with numeric and plain string literals replaced by `?`, everything else
/// (identifiers, quoted identifiers, comments, operators, spacing) kept as it is;
/// `None` when the text holds anything this scanner does not handle with
/// certainty.
pub fn shape(sql: &str) -> Option<String> {
    let b = sql.as_bytes();
    if b.iter().any(|&c| c == b'\\' || c == b'$' || c == 0) {
        return None;
    }
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    // The previous token (not whitespace or a comment), as written.
    let mut prev: &[u8] = &[];
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        let start = i;
        match c {
            b'\'' => {
                // A prefixed string (E'', B'', X'', N'', U&'') is left alone,
                // and so is a string where the parser may read a name (`AS 'x'`,
                // `FROM 'x'`, `1 'x'`, `'a' 'b'`).
                if i > 0 && (ident(b[i - 1]) || b[i - 1] == b'&' || b[i - 1] == b'"') {
                    return None;
                }
                if !value_follows(prev) {
                    return None;
                }
                let mut j = i + 1;
                loop {
                    match b.get(j) {
                        None => return None,
                        Some(b'\'') if b.get(j + 1) == Some(&b'\'') => j += 2,
                        Some(b'\'') => break,
                        Some(_) => j += 1,
                    }
                }
                out.push(b'?');
                i = j + 1;
                prev = &b[start..i];
            }
            b'"' => {
                // A quoted identifier without `""` in it (sqlparser renders one
                // that has them with the quotes undoubled, and the text re-read
                // from that rendering may put a literal inside an identifier).
                let end = b[i + 1..].iter().position(|&x| x == b'"')? + i + 1;
                if end == i + 1 || b.get(end + 1) == Some(&b'"') {
                    return None;
                }
                out.extend_from_slice(&b[i..=end]);
                i = end + 1;
                prev = &b[start..i];
            }
            b'-' if next == Some(b'-') => {
                let end = b[i..]
                    .iter()
                    .position(|&x| x == b'\n')
                    .map_or(b.len(), |e| i + e);
                out.extend_from_slice(&b[i..end]);
                i = end;
            }
            b'/' if next == Some(b'*') => {
                // Comments nest in PostgreSQL.
                let (mut depth, mut j) = (0usize, i);
                loop {
                    match (b.get(j), b.get(j + 1)) {
                        (Some(b'/'), Some(b'*')) => {
                            depth += 1;
                            j += 2;
                        }
                        (Some(b'*'), Some(b'/')) => {
                            depth -= 1;
                            j += 2;
                            if depth == 0 {
                                break;
                            }
                        }
                        (Some(_), _) => j += 1,
                        (None, _) => return None,
                    }
                }
                out.extend_from_slice(&b[i..j]);
                i = j;
            }
            b'0'..=b'9' | b'.' if c != b'.' || next.is_some_and(|n| n.is_ascii_digit()) => {
                // A number glued to what precedes it (`"a"1`, `'x'2`, `t.5`,
                // `)1`) is read differently by different lexers.
                if i > 0
                    && (ident(b[i - 1]) || matches!(b[i - 1], b'"' | b'\'' | b')' | b']' | b'.'))
                {
                    return None;
                }
                i = number(b, i)?;
                out.push(b'?');
                prev = &b[start..i];
            }
            _ if ident(c) => {
                let mut j = i;
                while j < b.len() && ident(b[j]) {
                    j += 1;
                }
                out.extend_from_slice(&b[i..j]);
                i = j;
                prev = &b[start..i];
            }
            b' ' | b'\t' | b'\n' | b'\r' => {
                out.push(c);
                i += 1;
            }
            // Plain punctuation only: other operator characters (`&` of
            // `U&""`, `!`, `?`, `#`, `@`, ...), other whitespace and non-ASCII
            // text outside quotes are lexed differently by different lexers.
            b'(' | b')' | b',' | b';' | b'.' | b'*' | b'=' | b'<' | b'>' | b'+' | b'-' | b'/'
            | b'%' | b':' | b'[' | b']' | b'|' => {
                out.push(c);
                i += 1;
                prev = &b[start..i];
            }
            b'!' if next == Some(b'=') => {
                out.extend_from_slice(b"!=");
                i += 2;
                prev = b"=";
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// Whether a string after `prev` (the token before it) is certainly a value:
/// after an operator, an opening bracket or a comma, or after a keyword that
/// takes a value (`SET x TO 'y'`, `SET NAMES 'y'`, `EXPLAIN (ANALYZE 'on')`) or
/// the type name of a typed literal (`date '2020-01-01'`).
/// Elsewhere the parser may read a string as a name (`AS 'x'`, `FROM 'x'`) or
/// an alias (`1 'x'`), which the server rejects.
fn value_follows(prev: &[u8]) -> bool {
    const WORDS: &[&str] = &[
        "select",
        "where",
        "and",
        "or",
        "not",
        "like",
        "ilike",
        "similar",
        "then",
        "else",
        "when",
        "case",
        "between",
        "escape",
        "returning",
        "having",
        "date",
        "time",
        "timestamp",
        "timestamptz",
        "interval",
        "to",
        "names",
        "analyze",
    ];
    match prev {
        [c] if b"=<>(,+-*/%|[".contains(c) => true,
        w => WORDS.iter().any(|k| k.as_bytes().eq_ignore_ascii_case(w)),
    }
}

/// The end of the plain decimal number at `i` (`12`, `1.5`, `.5`, `1.`, `1e-3`,
/// `2.5E+10`); `None` when letters, digits, dots or underscores follow it, which
/// PostgreSQL versions lex differently (`1from` is `1 from` before 15 and an
/// error since; `0x1F` and `1_000` are numbers since 16).
fn number(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |b: &[u8], mut i: usize| {
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    i = digits(b, i);
    if b.get(i) == Some(&b'.') && b.get(i + 1) != Some(&b'.') {
        let end = digits(b, i + 1);
        // `1.e5`: not every lexer reads an exponent after a bare dot.
        if end == i + 1 && matches!(b.get(end), Some(b'e' | b'E')) {
            return None;
        }
        i = end;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let mut j = i + 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        if !b.get(j).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        i = digits(b, j);
    }
    match b.get(i) {
        Some(c)
            if c.is_ascii_alphanumeric()
                || matches!(*c, b'_' | b'.' | b'"' | b'\'' | b'$')
                || *c >= 0x80 =>
        {
            None
        }
        _ => Some(i),
    }
}

#[cfg(test)]
mod shape_tests {
    use super::*;

    #[test]
    fn literals_are_replaced_and_nothing_else() {
        let s = |t: &str| shape(t);
        assert_eq!(
            s("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;").as_deref(),
            Some("SELECT abalance FROM pgbench_accounts WHERE aid = ?;")
        );
        assert_eq!(
            s("select 'it''s', 1.5e3, .5 from t1").as_deref(),
            Some("select ?, ?, ? from t1")
        );
        assert_eq!(
            s("select \"x'1\" -- it's\n, 2").as_deref(),
            Some("select \"x'1\" -- it's\n, ?")
        );
        assert_eq!(
            s("select /* a /* 'b' */ 1 */ 3").as_deref(),
            Some("select /* a /* 'b' */ 1 */ ?")
        );
        // Left to the exact cache.
        for t in [
            "select E'a\\'b'",
            "select $$x$$",
            "select $1",
            "select U&'d'",
            "select 'open",
            "select /* open",
            "select \"open",
        ] {
            assert_eq!(s(t), None, "{t}");
        }
    }

    #[test]
    fn texts_of_one_shape_share_an_analysis_except_search_path() {
        let a = Analyzer::new(64);
        let x = a.analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 1");
        let y = a.analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 2");
        assert!(Arc::ptr_eq(&x, &y));
        let p = a.analyze("SET search_path TO 'private'");
        let q = a.analyze("SET search_path TO 'public'");
        assert!(!Arc::ptr_eq(&p, &q));
        assert_eq!(
            q.statements[0].set_search_path.as_deref(),
            Some(&["public".to_string()][..])
        );
        // Different tables never share.
        let t1 = a.analyze("DELETE FROM t1 WHERE id = 1");
        let t2 = a.analyze("DELETE FROM t2 WHERE id = 1");
        assert!(!Arc::ptr_eq(&t1, &t2));
        assert_ne!(
            t1.statements[0].facts.tables_written,
            t2.statements[0].facts.tables_written
        );
    }
}

#[cfg(test)]
mod literal_site_tests {
    //! Every site where the analyser reads a literal's value: two texts of one
    //! shape that differ there get their own analyses.
    use super::*;
    use crate::policy::spec::StatementKind as K;

    /// Analyses `a` then `b` (one shape) in one cache; asserts they were not shared.
    fn apart(a: &str, b: &str) -> (Arc<Analysis>, Arc<Analysis>) {
        assert_eq!(shape(a), shape(b), "{a} / {b}: the test needs one shape");
        assert!(shape(a).is_some(), "{a}: the shape scanner gave up");
        let c = Analyzer::new(64);
        let x = c.analyze(a);
        let y = c.analyze(b);
        assert!(!Arc::ptr_eq(&x, &y), "{a} / {b} shared one analysis");
        assert!(x.statements[0].literal_dependent, "{a}");
        (x, y)
    }

    #[test]
    fn explain_options() {
        let (x, y) = apart(
            "EXPLAIN (ANALYZE 0) DELETE FROM orders WHERE id = 2",
            "EXPLAIN (ANALYZE 1) DELETE FROM orders WHERE id = 2",
        );
        assert_eq!(x.statements[0].facts.kinds, vec![K::Explain]);
        assert_eq!(y.statements[0].facts.kinds, vec![K::Explain, K::Delete]);
        assert_eq!(y.statements[0].facts.tables_written, vec!["orders"]);
        let (_, y) = apart(
            "EXPLAIN (ANALYZE 'off') DELETE FROM orders",
            "EXPLAIN (ANALYZE 'on') DELETE FROM orders",
        );
        assert!(y.statements[0].facts.kinds.contains(&K::Delete));
        // Inside PREPARE too.
        let (_, y) = apart(
            "PREPARE p AS EXPLAIN (ANALYZE 0) DELETE FROM orders",
            "PREPARE p AS EXPLAIN (ANALYZE 1) DELETE FROM orders",
        );
        assert!(y.statements[0].facts.kinds.contains(&K::Delete));
    }

    #[test]
    fn set_values() {
        let (x, y) = apart(
            "SET standard_conforming_strings = 'on'",
            "SET standard_conforming_strings = 'off'",
        );
        assert_eq!(x.statements[0].pinned_setting, None);
        assert!(y.statements[0].pinned_setting.is_some());
        let (x, y) = apart(
            "SET client_encoding = 'UTF8'",
            "SET client_encoding = 'SJIS'",
        );
        assert_eq!(x.statements[0].pinned_setting, None);
        assert!(y.statements[0].pinned_setting.is_some());
        let (x, y) = apart("SET NAMES 'UTF8'", "SET NAMES 'BIG5'");
        assert_eq!(x.statements[0].pinned_setting, None);
        assert!(y.statements[0].pinned_setting.is_some());
        let (x, y) = apart(
            "SET search_path TO 'public'",
            "SET search_path TO 'private'",
        );
        assert_eq!(
            x.statements[0].set_search_path.as_deref(),
            Some(&["public".to_string()][..])
        );
        assert_eq!(
            y.statements[0].set_search_path.as_deref(),
            Some(&["private".to_string()][..])
        );
        // Any other setting's value is not read, but SET is never shared.
        apart("SET work_mem = '1MB'", "SET work_mem = '2MB'");
    }

    #[test]
    fn set_config_arguments() {
        let (x, y) = apart(
            "SELECT set_config('search_path', 'public', false)",
            "SELECT set_config('search_path', 'private', false)",
        );
        assert_eq!(
            x.statements[0].set_search_path.as_deref(),
            Some(&["public".to_string()][..])
        );
        assert_eq!(
            y.statements[0].set_search_path.as_deref(),
            Some(&["private".to_string()][..])
        );
        let (x, y) = apart(
            "SELECT set_config('client_encoding', 'UTF8', false)",
            "SELECT set_config('client_encoding', 'GBK', false)",
        );
        assert_eq!(x.statements[0].pinned_setting, None);
        assert!(y.statements[0].pinned_setting.is_some());
        let (x, y) = apart(
            "SELECT set_config('application_name', 'x', false)",
            "SELECT set_config('role', 'x', false)",
        );
        assert!(!x.statements[0].facts.kinds.contains(&K::SetRole));
        assert!(y.statements[0].facts.kinds.contains(&K::SetRole));
    }

    #[test]
    fn numbers_that_servers_lex_differently_are_not_shaped() {
        // `1from t` is `1 FROM t` before PostgreSQL 15: it must never share the
        // analysis of `1 t` (no table).
        for t in [
            "SELECT 1from t",
            "SELECT 0x1F",
            "SELECT 1_000",
            "SELECT 1e",
            "SELECT 1.2.3",
            "SELECT 1..2",
        ] {
            assert_eq!(shape(t), None, "{t}");
        }
        for (t, want) in [
            ("SELECT 1 t", "SELECT ? t"),
            ("SELECT 1.5e-3, 2E+4, .5, 3.", "SELECT ?, ?, ?, ?"),
        ] {
            assert_eq!(shape(t).as_deref(), Some(want), "{t}");
        }
    }

    /// The committed seeds of the `sql_shape_cache` fuzz target (fuzz/seeds/),
    /// each with its sibling (every digit changed), as the target checks them.
    #[test]
    fn fuzz_seeds_get_their_own_analysis() {
        let sibling = |t: &str| -> String {
            t.chars()
                .map(|c| match c {
                    '0'..='8' => char::from(c as u8 + 1),
                    '9' => '0',
                    c => c,
                })
                .collect()
        };
        let facts = |a: &Analysis| {
            a.error.as_ref().map_or_else(
                || {
                    a.statements
                        .iter()
                        .map(|s| format!("{:?} {:?}", s.facts, s.set_search_path))
                        .collect::<Vec<_>>()
                        .join("; ")
                },
                |_| "error".to_string(),
            )
        };
        for (t, shaped) in [
            (
                "SELECT E! &id&\"\"\"\"\"\"\"\"DouW*(0)\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"PIVOWI\"\"\"\"\"= 1",
                false,
            ),
            (
                "SELECT E! &id&\"\"\"\"\"\"\"\"DouW*(0)\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"PIVOWI\"\"\"\"\"= 1",
                false,
            ),
            ("EXPLAIN (ANALYZE 0) DELETE FROM orders WHERE id = 2", true),
            ("SET search_path TO 'a1'", true),
            ("SELECT * FROM t WHERE a = 1 AND b = 'x'", true),
            ("SELECT 1x1", false),
        ] {
            let s = sibling(t);
            assert_eq!(shape(t).is_some(), shaped, "{t}");
            let c = Analyzer::new(16);
            c.analyze(&s);
            let shared = c.analyze(t);
            let own = Analyzer::new(0).analyze(t);
            assert_eq!(facts(&own), facts(&shared), "{t} got the analysis of {s}");
        }
    }

    #[test]
    fn literals_whose_place_is_not_certain_are_not_shaped() {
        for t in [
            // Doubled quotes in a quoted identifier, an empty one, quotes glued
            // to numbers or to each other.
            "SELECT \"a\"\"b\" = 1",
            "SELECT \"\"\"\"\"\"\"\"x*(0)\"\"\"\" = 1",
            "SELECT \"\" = 1",
            "SELECT \"a\"1",
            "SELECT 1\"a\"",
            "SELECT 'a'1",
            "SELECT 1'a'",
            "SELECT \"a\"'b'",
            // Numbers glued to identifiers, dots or brackets.
            "SELECT 1x1",
            "SELECT t.5",
            "SELECT (a)1",
            "SELECT 1.e5",
            // Operator characters and text the lexers may read apart.
            "SELECT E! &id& 1",
            "SELECT U&\"a\" = 1",
            "SELECT a ? 1",
            "SELECT a # 1",
            "SELECT a @> '{1}'",
            "SELECT \u{e4} = 1",
            // Strings where the parser may read a name or an alias.
            "SELECT F = 00  'x3'",
            "SELECT 1 AS 'x'",
            "SELECT * FROM 'a1'",
            "SELECT 'a'\n'b'",
            "SELECT count(*) 'x'",
            "'x'",
            "SELECT a\u{a0}= 1",
            "SELECT a\x0b= 1",
        ] {
            assert_eq!(shape(t), None, "{t}");
        }
        let c = Analyzer::new(16);
        let x = c.analyze("SELECT 1x1");
        let y = c.analyze("SELECT 2x2");
        assert!(!Arc::ptr_eq(&x, &y));
        // The common case is still shaped.
        for (t, want) in [
            (
                "SELECT \"Name\", a.b FROM t a WHERE id = 42 AND s != 'it''s'",
                "SELECT \"Name\", a.b FROM t a WHERE id = ? AND s != ?",
            ),
            (
                "UPDATE t SET n = n + 1, s = s || 'x' WHERE id IN (1, 2) AND v::int <> -3;",
                "UPDATE t SET n = n + ?, s = s || ? WHERE id IN (?, ?) AND v::int <> -?;",
            ),
            (
                "SELECT a[1], b % 2 FROM \"t\" WHERE c >= 1.5 -- 'x' 1\n",
                "SELECT a[?], b % ? FROM \"t\" WHERE c >= ? -- 'x' 1\n",
            ),
            ("SELECT 'h\u{e4}' = \"\u{e4}\"", "SELECT ? = \"\u{e4}\""),
            (
                "SELECT 'a', x FROM t WHERE d > date '2020-01-01' AND n LIKE 'a%' OR -- c\n 'b' = s",
                "SELECT ?, x FROM t WHERE d > date ? AND n LIKE ? OR -- c\n ? = s",
            ),
            (
                "INSERT INTO t (a, b) VALUES ('x', 1), ('y', 2) RETURNING a",
                "INSERT INTO t (a, b) VALUES (?, ?), (?, ?) RETURNING a",
            ),
        ] {
            assert_eq!(shape(t).as_deref(), Some(want), "{t}");
        }
    }
}
