//! The parse cache: applications send the same few statement texts over and over
//! (prepared or not), so an analysis is kept per exact text.
//!
//! Bounded: two generations of at most `cap / 2` entries each. A lookup that hits
//! the old generation moves the entry to the new one; when the new generation is
//! full it becomes the old one and the previous old one is dropped. Texts longer
//! than [`MAX_CACHED_TEXT`] are analysed every time (they are rarely repeated and
//! would dominate the memory bound).

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
        if cacheable {
            let mut g = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(a) = g.young.get(sql) {
                return a.clone();
            }
            if let Some((k, a)) = g.old.remove_entry(sql) {
                Self::insert(&mut g, self.half, k, a.clone());
                return a;
            }
        }
        let a = Arc::new(analyze_text(sql));
        if cacheable {
            let mut g = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            Self::insert(&mut g, self.half, sql.into(), a.clone());
        }
        a
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
