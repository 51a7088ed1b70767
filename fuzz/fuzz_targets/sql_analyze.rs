//! SQL analysis of any text, as the proxy runs it (the cache, its shape scanner
//! and the analyser): never panics, never overflows the stack, and the same text
//! gets the same analysis cached and uncached.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_fuzz::protocol::sql::Analyzer;

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let uncached = Analyzer::new(0).analyze(sql);
    let cache = Analyzer::new(16);
    let first = cache.analyze(sql);
    let again = cache.analyze(sql);
    let json =
        |a: &portcullis_fuzz::protocol::sql::Analysis| serde_json::to_string(a).unwrap_or_default();
    assert_eq!(
        json(&uncached),
        json(&first),
        "cached analysis differs: {sql:?}"
    );
    assert_eq!(json(&first), json(&again), "second lookup differs: {sql:?}");
});
