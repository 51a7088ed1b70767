//! The agent's pure parsers, compiled from the agent's own source files for the
//! fuzz targets in `fuzz_targets/`. `crate::policy` and `crate::protocol::sql`
//! resolve as in the agent, so the files compile unchanged. Parts the fuzz
//! targets do not call are dead code here.
#![allow(dead_code, unused_imports)]
#![forbid(unsafe_code)]

#[path = "../../agent/src/policy/mod.rs"]
pub mod policy;

#[path = "../../agent/src/protocol/sql/mod.rs"]
#[doc(hidden)]
pub mod sql;

#[path = "../../agent/src/protocol/postgres/codec.rs"]
#[doc(hidden)]
pub mod codec;

/// The agent's module paths.
pub mod protocol {
    pub use crate::sql;
    pub mod postgres {
        pub use crate::codec;
    }
}
