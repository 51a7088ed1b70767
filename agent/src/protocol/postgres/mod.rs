//! PostgreSQL targets: the protocol-aware proxy. The client connected to the
//! database's real address and was redirected here; the agent speaks the v3
//! protocol to both sides, logs in upstream with credentials only it holds,
//! decides every statement with the policy, and audits each one.
//!
//! `codec` is framing and messages (no state), `session` the state machine,
//! `auth` the upstream password exchanges, `tls` both TLS sides, `cancel` the
//! mapping of the client's cancel keys to the server's, `startup` the client's
//! startup parameters as the server reads them.

pub mod auth;
pub mod cancel;
pub mod codec;
pub mod session;
pub mod startup;
pub mod stream;
pub mod tls;

use std::sync::Arc;

use crate::config::AgentConfig;
use crate::protocol::sql::Analyzer;

/// What PostgreSQL sessions share across the agent.
pub struct Global {
    /// The agent's host certificate towards clients, if configured.
    pub tls_server: Option<Arc<rustls::ServerConfig>>,
    pub upstream_tls: tls::UpstreamConfigs,
    pub cancels: cancel::Registry,
    pub analyzer: Analyzer,
}

impl Global {
    pub fn new(cfg: &AgentConfig) -> Result<Self, String> {
        let tls_server = match (&cfg.tls_cert_file, &cfg.tls_key_file) {
            (Some(c), Some(k)) => Some(tls::server_config(c, k)?),
            (None, None) => None,
            _ => {
                return Err(
                    "tls_cert_file and tls_key_file must be given together (or neither)".into(),
                );
            }
        };
        Ok(Self {
            tls_server,
            upstream_tls: Default::default(),
            cancels: Default::default(),
            analyzer: Analyzer::new(cfg.sql_parse_cache),
        })
    }
}
