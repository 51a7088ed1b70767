//! The `exports:` settings of `agent.yaml`: one entry per SIEM sink.
//!
//! ```yaml
//! exports:
//!   - name: siem                # [A-Za-z0-9_-], names the cursor file
//!     format: json              # json (native records) | ocsf
//!     syslog:
//!       transport: tcp          # udp | tcp | unix-dgram | unix-stream
//!       address: 10.0.0.5:514   # host:port, or a socket path for unix-*
//!       facility: local0
//!   - name: lake
//!     format: ocsf
//!     http:
//!       url: https://collector.example/ingest
//!       token_file: /etc/portcullis/lake.token
//! ```

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Record format sent to a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// The audit record exactly as written to the log (its hash still verifies).
    #[default]
    Json,
    /// An OCSF 1.x event (see `ocsf`).
    Ocsf,
}

impl ExportFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Ocsf => "ocsf",
        }
    }
}

/// Where a sink without a cursor (a new sink) starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// The oldest record in the log (default): the SIEM gets the whole log.
    #[default]
    Oldest,
    /// The first record written after the agent starts.
    Now,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyslogTransport {
    /// One datagram per record (RFC 5426); no delivery guarantee.
    Udp,
    /// Octet-counted frames (RFC 6587) on a TCP connection.
    Tcp,
    /// One datagram per record on a unix datagram socket (like /dev/log).
    UnixDgram,
    /// Octet-counted frames on a unix stream socket.
    UnixStream,
}

impl SyslogTransport {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::UnixDgram => "unix-dgram",
            Self::UnixStream => "unix-stream",
        }
    }

    pub fn is_stream(self) -> bool {
        matches!(self, Self::Tcp | Self::UnixStream)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogSink {
    pub transport: SyslogTransport,
    /// `host:port` for udp and tcp; a socket path for the unix transports.
    pub address: String,
    /// Syslog facility name (`kern` … `local7`); default `local0`.
    #[serde(default = "default_facility")]
    pub facility: String,
    /// Stream transports: after a broken connection, records sent on it during
    /// this many seconds before the failure are sent again (syslog has no
    /// acknowledgements; duplicates carry the same event id). Default 10.
    #[serde(default = "default_resend_secs")]
    pub resend_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSink {
    /// `http://` or `https://` URL the batches are POSTed to.
    pub url: String,
    /// File holding a bearer token (owned by root, mode 0600 or stricter).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Per-request timeout, milliseconds. Default 10000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// PEM file of the CA certificate(s) to trust for an `https://` URL instead
    /// of the public roots (a private collector's CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportSink {
    /// Unique name: shown in status and audit records, names the cursor file.
    pub name: String,
    #[serde(default)]
    pub format: ExportFormat,
    /// Where the sink starts when it has no cursor yet: `oldest` or `now`.
    #[serde(default)]
    pub start: StartAt,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syslog: Option<SyslogSink>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSink>,
    /// Records per batch (one HTTP request, or one write on a stream). Default 500.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Upper bound of the exponential back-off between retries, milliseconds.
    /// Default 30000 (starts at 100).
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
}

fn default_facility() -> String {
    "local0".into()
}
fn default_resend_secs() -> u64 {
    10
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_batch() -> usize {
    500
}
fn default_backoff_max_ms() -> u64 {
    30_000
}

/// Facility names of RFC 5424 (section 6.2.1) and their codes.
pub const FACILITIES: [(&str, u8); 24] = [
    ("kern", 0),
    ("user", 1),
    ("mail", 2),
    ("daemon", 3),
    ("auth", 4),
    ("syslog", 5),
    ("lpr", 6),
    ("news", 7),
    ("uucp", 8),
    ("cron", 9),
    ("authpriv", 10),
    ("ftp", 11),
    ("ntp", 12),
    ("security", 13),
    ("console", 14),
    ("solaris-cron", 15),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

pub fn facility_code(name: &str) -> Option<u8> {
    FACILITIES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, c)| *c)
}

/// A problem with one sink's settings: (the setting, its value, why).
pub type Invalid = (&'static str, String, &'static str);

/// Checks every sink: a valid unique name, exactly one transport, a known
/// facility, a usable address or URL.
pub fn validate(sinks: &[ExportSink]) -> Result<(), Invalid> {
    let mut names = std::collections::HashSet::new();
    for s in sinks {
        let valid_name = !s.name.is_empty()
            && s.name.len() <= 64
            && s.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_name {
            return Err((
                "exports[].name",
                s.name.clone(),
                "must be 1 to 64 characters of A-Z, a-z, 0-9, `-` and `_` (it names the cursor file)",
            ));
        }
        if !names.insert(s.name.as_str()) {
            return Err((
                "exports[].name",
                s.name.clone(),
                "is used by two sinks: each needs its own cursor",
            ));
        }
        if s.batch == 0 || s.batch > 100_000 {
            return Err((
                "exports[].batch",
                format!("{}: {}", s.name, s.batch),
                "must be between 1 and 100000",
            ));
        }
        if s.backoff_max_ms < 100 {
            return Err((
                "exports[].backoff_max_ms",
                format!("{}: {}", s.name, s.backoff_max_ms),
                "must be at least 100",
            ));
        }
        match (&s.syslog, &s.http) {
            (Some(sys), None) => {
                if facility_code(&sys.facility).is_none() {
                    return Err((
                        "exports[].syslog.facility",
                        format!("{}: {}", s.name, sys.facility),
                        "is not a syslog facility (kern, user, daemon, auth, authpriv, local0 … local7, …)",
                    ));
                }
                let ok = match sys.transport {
                    SyslogTransport::Udp | SyslogTransport::Tcp => {
                        sys.address.rsplit_once(':').is_some_and(|(h, p)| {
                            !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0)
                        })
                    }
                    SyslogTransport::UnixDgram | SyslogTransport::UnixStream => {
                        sys.address.starts_with('/')
                    }
                };
                if !ok {
                    return Err((
                        "exports[].syslog.address",
                        format!("{}: {}", s.name, sys.address),
                        "must be host:port for udp and tcp, an absolute socket path for unix-dgram and unix-stream",
                    ));
                }
            }
            (None, Some(h)) => {
                if !(h.url.starts_with("http://") || h.url.starts_with("https://")) {
                    return Err((
                        "exports[].http.url",
                        format!("{}: {}", s.name, h.url),
                        "must start with http:// or https://",
                    ));
                }
                if h.timeout_ms == 0 {
                    return Err((
                        "exports[].http.timeout_ms",
                        format!("{}: 0", s.name),
                        "must be at least 1",
                    ));
                }
            }
            _ => {
                return Err((
                    "exports[]",
                    s.name.clone(),
                    "needs exactly one transport: `syslog:` or `http:`",
                ));
            }
        }
    }
    Ok(())
}
