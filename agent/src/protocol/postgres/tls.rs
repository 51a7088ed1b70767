//! TLS for PostgreSQL sessions: the agent's host certificate towards clients, and
//! verified TLS towards targets that require it (rustls, ring provider).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig};

use crate::policy::spec::UpstreamTls;

/// Where system trust anchors are looked for when a target names no `ca_file`.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server side towards clients, from PEM files (certificate chain, private key).
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<Arc<ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| format!("reading certificate {}: {e}", cert_file.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("reading certificate {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", cert_file.display()));
    }
    crate::credentials::check_private(key_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("reading private key {}: {e}", key_file.display()))?;
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "certificate {} and key {}: {e}",
                cert_file.display(),
                key_file.display()
            )
        })?;
    Ok(Arc::new(cfg))
}

fn roots(ca_file: Option<&str>) -> Result<RootCertStore, String> {
    let path = ca_file.unwrap_or(SYSTEM_CA_BUNDLE);
    let mut store = RootCertStore::empty();
    let certs =
        CertificateDer::pem_file_iter(path).map_err(|e| format!("reading CA file {path}: {e}"))?;
    for c in certs {
        let c = c.map_err(|e| format!("reading CA file {path}: {e}"))?;
        store.add(c).map_err(|e| format!("CA file {path}: {e}"))?;
    }
    if store.is_empty() {
        return Err(format!("no CA certificate in {path}"));
    }
    Ok(store)
}

/// Verifies the chain but not the host name (the `require` setting).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// (CA file, host name verified) of a client configuration.
type UpstreamKey = (Option<String>, bool);

/// Client configurations towards targets, built once per (CA file, mode).
#[derive(Default)]
pub struct UpstreamConfigs {
    cache: Mutex<HashMap<UpstreamKey, Arc<ClientConfig>>>,
}

impl UpstreamConfigs {
    pub fn get(
        &self,
        ca_file: Option<&str>,
        mode: UpstreamTls,
    ) -> Result<Arc<ClientConfig>, String> {
        let full = mode == UpstreamTls::VerifyFull;
        let key = (ca_file.map(str::to_string), full);
        if let Ok(c) = self.cache.lock()
            && let Some(cfg) = c.get(&key)
        {
            return Ok(cfg.clone());
        }
        let roots = Arc::new(roots(ca_file)?);
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?;
        let cfg = if full {
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            let v = WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| format!("certificate verifier: {e}"))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(v)))
                .with_no_client_auth()
        };
        let cfg = Arc::new(cfg);
        if let Ok(mut c) = self.cache.lock() {
            c.insert(key, cfg.clone());
        }
        Ok(cfg)
    }
}

/// The name the target's certificate is checked against.
pub fn server_name(configured: Option<&str>, ip: IpAddr) -> Result<ServerName<'static>, String> {
    match configured {
        Some(n) => {
            ServerName::try_from(n.to_string()).map_err(|e| format!("server_name `{n}`: {e}"))
        }
        None => Ok(ServerName::IpAddress(ip.into())),
    }
}
