//! What `portcullis policy check` warns about in a policy set that loads: settings
//! that are valid but that some clients cannot work with.

use super::CompiledPolicy;
use super::spec::{ClientTls, Protocol, UpstreamTls};

/// A PostgreSQL target that relays the client's own login (no agent-held
/// `credentials`) to a TLS server while clients may use TLS to the agent: a
/// client that offers SCRAM channel binding (libpq's default
/// `channel_binding=prefer`, and so psycopg and psql) cannot log in, since the
/// binding cannot pass through the agent's TLS. One message per such target.
pub fn channel_binding_warnings(policy: &CompiledPolicy) -> Vec<String> {
    policy
        .targets
        .iter()
        .filter(|t| {
            t.protocol == Protocol::Postgres
                && t.credentials.is_none()
                && t.tls.client != ClientTls::Refuse
                && t.tls.upstream != UpstreamTls::Disable
        })
        .map(|t| {
            format!(
                "target {}: clients log in with their own password over TLS to the agent and \
                 the agent speaks TLS to the server, so SCRAM channel binding cannot be offered; \
                 libpq-based clients (psql, psycopg) with the default channel_binding=prefer are \
                 refused at login. Give the target agent-held `credentials`, set `tls.client: \
                 refuse` or `tls.upstream: disable`, or have those clients connect with \
                 channel_binding=disable",
                t.name
            )
        })
        .collect()
}
