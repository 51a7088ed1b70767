//! SQL inspection for PostgreSQL: what a statement does, in the terms the policy
//! decides on ([`StatementFacts`]), a literal-free fingerprint for the audit log,
//! recognised dangerous functions and features, and the per-session state
//! (SQL-level prepared statements, `search_path`) needed to decide later
//! statements.
//!
//! - [`Analyzer`]: parses text (sqlparser, PostgreSQL dialect) into an
//!   [`Analysis`], one [`StatementInfo`] per statement, behind a bounded cache
//!   keyed by the exact text, or by its shape when only literals differ.
//! - [`SqlSession`]: qualifies unqualified tables with every schema the session's
//!   `search_path` may name, and resolves `EXECUTE name` to what was prepared.
//!
//! Nothing here panics on any input: text the parser does not understand becomes
//! `Analysis::error`, which the policy decides as `Action::Unparseable`.

mod analyze;
mod cache;
pub mod cli;
mod coverage;
mod decide;
mod recognise;
mod script;
mod session;

#[cfg(test)]
mod corpus;
#[cfg(test)]
mod soundness_tests;
#[cfg(test)]
mod tests;

// The API the PostgreSQL proxy (agent/src/protocol/postgres) calls.
pub use analyze::{Analysis, StatementInfo, is_utf8_name, pinned_violation};
pub use cache::{Analyzer, measure};
pub use decide::{UNKNOWN_PREPARED, decide_message, most_restrictive};
pub use session::{Prepared, SqlSession};
