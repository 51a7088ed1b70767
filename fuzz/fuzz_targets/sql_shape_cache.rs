//! The shape cache shares one analysis between texts that differ only in their
//! literals. That is sound only if no fact the policy reads depends on a
//! literal: for each input, a sibling with every digit changed is analysed first
//! on the same cache; if the two texts have one shape, the input gets the
//! sibling's analysis, which must equal the input's own.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_fuzz::protocol::sql::{Analysis, Analyzer};

/// What the policy, the session and the audit log read: facts, dangerous
/// features, PREPARE/EXECUTE/DEALLOCATE, search_path changes and the audit
/// fingerprint (literals replaced, so equal for one shape). Not the error
/// message (errors are never shared).
fn json(a: &Analysis) -> String {
    if a.error.is_some() {
        return "error".into();
    }
    serde_json::to_value(&a.statements)
        .unwrap_or_default()
        .to_string()
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
