//! The shape cache shares one analysis between texts that differ only in their
//! literals. That is sound only if no fact the policy reads depends on a
//! literal: for each input, a sibling with every digit changed is analysed first
//! on the same cache; if the two texts have one shape, the input gets the
//! sibling's analysis, which must equal the input's own.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_fuzz::protocol::sql::{Analysis, Analyzer};

/// What the policy and the session read: facts, dangerous features,
/// PREPARE/EXECUTE/DEALLOCATE and search_path changes. Not the error message
/// (errors are never shared) nor the audit fingerprint (literals replaced, so
/// equal for one shape except where the scanner's literal is wider than the
/// parser's: `SELECT 1x1`, a number then an alias, is one literal to it).
fn json(a: &Analysis) -> String {
    if a.error.is_some() {
        return "error".into();
    }
    let mut v = serde_json::to_value(&a.statements).unwrap_or_default();
    for s in v.as_array_mut().into_iter().flatten() {
        if let Some(o) = s.as_object_mut() {
            o.remove("fingerprint");
            if let Some(inner) = o
                .get_mut("prepare")
                .and_then(|p| p.get_mut(1))
                .and_then(|p| p.as_object_mut())
            {
                inner.remove("fingerprint");
            }
        }
    }
    v.to_string()
}

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let sibling: String = sql
        .chars()
        .map(|c| match c {
            '0'..='8' => char::from(c as u8 + 1),
            '9' => '0',
            c => c,
        })
        .collect();
    if sibling == sql {
        return;
    }
    let own = Analyzer::new(0).analyze(sql);
    let cache = Analyzer::new(16);
    cache.analyze(&sibling);
    let shared = cache.analyze(sql);
    assert_eq!(
        json(&own),
        json(&shared),
        "the cache gave {sql:?} the analysis of {sibling:?}"
    );
});
