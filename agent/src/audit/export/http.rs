//! HTTP(S) sink: batches of records POSTed as one JSON array. A 2xx answer
//! acknowledges the whole batch; anything else is retried (at least once:
//! collectors deduplicate by `event_id`, or `metadata.uid` in OCSF).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use super::config::HttpSink;
use super::reader::Record;
use super::{SendError, Transport};

pub struct Http {
    cfg: HttpSink,
    /// `Err`: the sink cannot work as configured (an unusable `ca_file`); every
    /// send fails with this message, visible in status and the audit log.
    agent: Result<ureq::Agent, String>,
}

impl Http {
    pub fn new(cfg: &HttpSink) -> Self {
        let agent = (|| {
            let mut b = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_millis(cfg.timeout_ms)))
                .http_status_as_error(true)
                .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")));
            if let Some(ca) = &cfg.ca_file {
                let tls = ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&read_ca(ca)?))
                    .build();
                b = b.tls_config(tls);
            }
            Ok(b.build().into())
        })();
        Self {
            cfg: cfg.clone(),
            agent,
        }
    }
}

/// The certificates of a PEM file (at least one).
fn read_ca(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => return Err(format!("ca_file {}: {e}", path.display())),
        }
    }
    if certs.is_empty() {
        return Err(format!(
            "ca_file {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certs)
}

/// The bearer token in `path`, refused unless the file is owned by root (or
/// the agent's user) and readable by nobody else.
pub fn read_token(path: &Path) -> Result<String, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("token file {}: {e}", path.display()))?;
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(format!(
            "token file {} is owned by uid {}: it must be owned by root",
            path.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "token file {} has mode {:04o}: others may read it; chmod 0600",
            path.display(),
            meta.mode() & 0o7777
        ));
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("token file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() || token.chars().any(|c| c.is_control() || c == ' ') {
        return Err(format!(
            "token file {} must hold one token on one line",
            path.display()
        ));
    }
    Ok(token.to_string())
}

/// `[p1,p2,…]` from payloads that are each one JSON value.
pub fn json_array(payloads: &[String]) -> String {
    let mut body = String::with_capacity(payloads.iter().map(|p| p.len() + 1).sum::<usize>() + 2);
    body.push('[');
    for (i, p) in payloads.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(p);
    }
    body.push(']');
    body
}

impl Transport for Http {
    fn describe(&self) -> String {
        self.cfg.url.clone()
    }

    fn send(&mut self, _records: &[Record], payloads: &[String]) -> Result<(), SendError> {
        let fail = |message: String| SendError {
            message,
            resend_from: None,
            too_large: false,
        };
        // Read on every batch: a rotated token is picked up without a restart.
        let token = match &self.cfg.token_file {
            Some(p) => Some(read_token(p).map_err(fail)?),
            None => None,
        };
        let agent = self.agent.as_ref().map_err(|e| fail(e.clone()))?;
        let mut req = agent
            .post(&self.cfg.url)
            .header("Content-Type", "application/json");
        if let Some(t) = token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        match req.send(json_array(payloads)) {
            Ok(_) => Ok(()),
            Err(ureq::Error::StatusCode(code)) => Err(SendError {
                too_large: code == 413,
                ..fail(format!("POST {}: HTTP status {code}", self.cfg.url))
            }),
            Err(e) => Err(fail(format!("POST {}: {e}", self.cfg.url))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_json_arrays() {
        assert_eq!(json_array(&[]), "[]");
        let body = json_array(&["{\"a\":1}".into(), "{\"b\":2}".into()]);
        let v: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
        assert_eq!(v.as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn a_token_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::audit::testutil::TempDir::new("token");
        let p = dir.0.join("t");
        std::fs::write(&p, "s3cret\n").expect("write token");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = read_token(&p).expect_err("0644 must be refused");
        assert!(err.contains("0644"), "{err}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(read_token(&p).as_deref(), Ok("s3cret"));
    }
}
