//! Protocol handlers: what the proxy understands of the requests it relays.

pub mod postgres;
pub mod sql;
