//! PostgreSQL targets: the protocol-aware proxy. The client connected to the
//! database's real address and was redirected here; the agent speaks the v3
//! protocol to both sides, logs in upstream with credentials only it holds,
//! decides every statement with the policy, and audits each one.
//!
//! `codec` is framing and messages (no state), `session` the state machine,
//! `auth` the upstream password exchanges, `tls` both TLS sides, `cancel` the
//! mapping of the client's cancel keys to the server's, `opening` the client's
//! first packets (encryption negotiation, startup or cancel), `startup` the
//! client's startup parameters as the server reads them, `refusal` the answer
//! to a connection refused before its session.

pub mod auth;
pub mod cancel;
pub mod codec;
pub mod opening;
pub mod refusal;
pub mod session;
pub mod startup;
pub mod stream;
pub mod tls;

use std::sync::Arc;

use crate::config::AgentConfig;
use crate::policy::Target;
use crate::policy::spec::ClientTls;
use crate::protocol::sql::Analyzer;

/// What PostgreSQL sessions share across the agent.
pub struct Global {
    /// The agent's host certificate towards clients, if configured.
    pub tls_server: Option<Arc<rustls::ServerConfig>>,
    pub upstream_tls: tls::UpstreamConfigs,
    pub cancels: cancel::Registry,
    pub analyzer: Analyzer,
    /// Refused connections being answered (their startup read, a FATAL sent):
    /// bounded apart from `max_connections`, so refusals never take a slot of
    /// a served session and a flood of them costs a bounded number of sockets.
    pub refusals: Arc<tokio::sync::Semaphore>,
}

/// The agent's certificate towards clients of `target`, if it terminates
/// client TLS for it (a certificate configured and the target's `tls.client`
/// not `disable`).
pub fn client_tls(g: &Global, target: &Target) -> Option<Arc<rustls::ServerConfig>> {
    match (&g.tls_server, target.tls.client) {
        (Some(cfg), ClientTls::Allow | ClientTls::Require) => Some(cfg.clone()),
        _ => None,
    }
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
            refusals: Arc::new(tokio::sync::Semaphore::new(refusal::MAX_PENDING)),
        })
    }
}
