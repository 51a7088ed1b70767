//! Agent configuration (`agent.yaml`): strict parsing, explicit defaults.
//!
//! A missing or malformed file is refused with the file name and the reason; it is
//! never replaced by defaults. Every field that is absent takes the default
//! documented here and in docs/operations.md.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default location of the agent configuration.
pub const DEFAULT_CONFIG: &str = "/etc/portcullis/agent.yaml";
/// Default admin socket, used by the CLI when no `--config` is given.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/portcullis/admin.sock";
/// Smallest `audit_rotate_bytes` other than 0.
const MIN_ROTATE_BYTES: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read agent config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("agent config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("agent config {path}: setting `{setting}` = {value}: {reason}")]
    Invalid {
        path: PathBuf,
        setting: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// Where the enforcement programs are attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CgroupSetting {
    /// `auto`: the root of the cgroup v2 hierarchy, found from /proc/self/mountinfo.
    Keyword(CgroupKeyword),
    /// A cgroup v2 directory (a subtree: covers only processes started inside it).
    Path(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupKeyword {
    Auto,
}

/// `upstream_mark`: `auto` or a fixed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MarkSetting {
    /// `auto`: a random mark chosen at the first start and kept with the pins.
    Keyword(MarkKeyword),
    /// A fixed mark; 0 means no mark check (the agent's cgroup alone exempts).
    Value(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MarkKeyword {
    Auto,
}

/// `raw_sockets`: what processes in the enforced cgroup may do with raw IP,
/// packet and XDP sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RawSockets {
    /// Creating them fails with EPERM (default).
    #[default]
    Refuse,
    /// Allowed: the egress backstop still drops raw IP packets to protected
    /// targets, but packet and XDP sockets skip it.
    Allow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// When the audit writer calls fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuditSync {
    /// fsync after every batch written (default): a record is durable before the
    /// next batch starts.
    #[default]
    Batch,
    /// Leave flushing to the kernel (faster, loses the last seconds on power loss).
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Directory of policy files (`*.yaml`, `*.yml`; `*.test.yaml` are tests, not policy).
    pub policy_dir: PathBuf,
    /// State directory: the audit log lives in `<state_dir>/audit/`.
    pub state_dir: PathBuf,
    /// Runtime directory: the admin socket.
    pub runtime_dir: PathBuf,
    /// bpffs directory for pinned maps and links.
    pub bpffs_dir: PathBuf,
    /// `auto` (cgroup v2 root) or a cgroup v2 directory.
    pub cgroup: CgroupSetting,
    /// Port of the agent's listener; redirected connections arrive here.
    pub listen_port: u16,
    pub listen_v4: Ipv4Addr,
    pub listen_v6: Ipv6Addr,
    /// SO_MARK on the agent's upstream sockets: `auto` (random, kept with the
    /// pins) or a value. The kernel programs exempt a socket only when it belongs
    /// to the agent's own cgroup and carries this mark.
    #[serde(rename = "upstream_mark")]
    pub upstream_mark_setting: MarkSetting,
    /// The mark in force (from `upstream_mark` and the pins), set at start.
    #[serde(skip)]
    pub upstream_mark: u32,
    /// Raw IP, packet and XDP sockets in the enforced cgroup: `refuse` or `allow`.
    pub raw_sockets: RawSockets,
    /// Upstream connect timeout, milliseconds.
    pub connect_timeout_ms: u64,
    /// Close a proxied connection idle this long in both directions (seconds; 0 = never).
    pub idle_timeout_secs: u64,
    /// Connections served at once; more are refused and audited.
    pub max_connections: usize,
    pub log_format: LogFormat,
    pub audit_sync: AuditSync,
    /// Records buffered between the proxy and the audit writer.
    pub audit_queue: usize,
    /// Rotate the live audit file into a segment at this size (bytes; 0 = never by size).
    pub audit_rotate_bytes: u64,
    /// Rotate the live audit file when its first record is this old (seconds; 0 = never by age).
    pub audit_rotate_secs: u64,
    /// Remove audit segments whose last record is older than this (seconds; 0 = keep forever).
    pub audit_retain_secs: u64,
    /// Remove the oldest audit segments while the log is larger than this (bytes; 0 = no limit).
    pub audit_retain_bytes: u64,
    /// Report the audit log unhealthy (refusing new connections) while its file
    /// system has less free space than this (bytes; 0 = only when a write fails).
    pub audit_min_free_bytes: u64,
    /// Check the policy directory for changes this often (seconds; 0 = only on
    /// SIGHUP and `portcullis policy reload`). A change is loaded once the files
    /// have stayed the same for one more interval.
    pub policy_watch_secs: u64,
    // ---- session recording (agent/src/recording) ----
    /// Record every decided session to its own file.
    pub recording_enabled: bool,
    /// Directory of the recordings (absolute); absent = `<state_dir>/sessions`.
    pub recording_dir: Option<PathBuf>,
    /// Bytes per session recording; beyond it one `truncated` event, later events
    /// counted but not written (at least 512).
    pub recording_max_bytes: u64,
    /// Remove recordings last written longer ago than this (seconds; 0 = keep forever).
    pub recording_retain_secs: u64,
    // ---- protocol targets (PostgreSQL) ----
    /// Directory of agent-held target credentials (`<name>.yaml`, mode 0600).
    pub credentials_dir: PathBuf,
    /// The agent's host certificate (PEM chain) offered to clients that ask for
    /// TLS on protocol targets; with `tls_key_file`. Absent: clients asking for
    /// TLS are told it is not available.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Largest protocol message accepted from a client or a server (bytes).
    pub pg_max_message_bytes: usize,
    /// Distinct statement texts whose SQL analysis is kept (parse cache).
    pub sql_parse_cache: usize,
    /// SIEM export sinks (syslog RFC 5424, HTTP batches; native JSON or OCSF);
    /// none by default. See docs/operations.md and `audit::export::config`.
    pub exports: Vec<crate::audit::export::ExportSink>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            policy_dir: PathBuf::from("/etc/portcullis/policies.d"),
            state_dir: PathBuf::from("/var/lib/portcullis"),
            runtime_dir: PathBuf::from("/run/portcullis"),
            bpffs_dir: PathBuf::from("/sys/fs/bpf/portcullis"),
            cgroup: CgroupSetting::Keyword(CgroupKeyword::Auto),
            listen_port: 1001,
            listen_v4: Ipv4Addr::LOCALHOST,
            listen_v6: Ipv6Addr::LOCALHOST,
            upstream_mark_setting: MarkSetting::Keyword(MarkKeyword::Auto),
            upstream_mark: 0,
            raw_sockets: RawSockets::Refuse,
            connect_timeout_ms: 5_000,
            idle_timeout_secs: 3_600,
            max_connections: 4_096,
            log_format: LogFormat::Text,
            audit_sync: AuditSync::Batch,
            audit_queue: 65_536,
            audit_rotate_bytes: 64 << 20,
            audit_rotate_secs: 86_400,
            audit_retain_secs: 0,
            audit_retain_bytes: 0,
            audit_min_free_bytes: 1 << 20,
            policy_watch_secs: 2,
            recording_enabled: true,
            recording_dir: None,
            recording_max_bytes: 64 << 20,
            recording_retain_secs: 0,
            credentials_dir: PathBuf::from("/etc/portcullis/credentials"),
            tls_cert_file: None,
            tls_key_file: None,
            pg_max_message_bytes: 64 << 20,
            sql_parse_cache: 4096,
            exports: Vec::new(),
        }
    }
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let cfg: AgentConfig = if text.trim().is_empty() {
            AgentConfig::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.to_owned(),
                message: match e.location() {
                    Some(l) => format!("line {} column {}: {e}", l.line(), l.column()),
                    None => e.to_string(),
                },
            })?
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |setting, value: String, reason| ConfigError::Invalid {
            path: path.to_owned(),
            setting,
            value,
            reason,
        };
        if self.listen_port == 0 {
            return Err(invalid(
                "listen_port",
                "0".into(),
                "must be a fixed port: the kernel programs redirect to it",
            ));
        }
        if self.connect_timeout_ms == 0 {
            return Err(invalid(
                "connect_timeout_ms",
                "0".into(),
                "must be at least 1",
            ));
        }
        if self.max_connections == 0 {
            return Err(invalid("max_connections", "0".into(), "must be at least 1"));
        }
        if self.audit_queue < 16 {
            return Err(invalid(
                "audit_queue",
                self.audit_queue.to_string(),
                "must be at least 16",
            ));
        }
        if self.audit_rotate_bytes != 0 && self.audit_rotate_bytes < MIN_ROTATE_BYTES {
            return Err(invalid(
                "audit_rotate_bytes",
                self.audit_rotate_bytes.to_string(),
                "must be 0 (never rotate by size) or at least 65536",
            ));
        }
        if self.audit_rotate_secs != 0 && self.audit_rotate_secs < 60 {
            return Err(invalid(
                "audit_rotate_secs",
                self.audit_rotate_secs.to_string(),
                "must be 0 (never rotate by age) or at least 60",
            ));
        }
        let rotates = self.audit_rotate_bytes != 0 || self.audit_rotate_secs != 0;
        if !rotates && (self.audit_retain_secs != 0 || self.audit_retain_bytes != 0) {
            return Err(invalid(
                "audit_retain_secs/audit_retain_bytes",
                format!("{}/{}", self.audit_retain_secs, self.audit_retain_bytes),
                "retention removes rotated segments, but audit_rotate_bytes and \
                 audit_rotate_secs are both 0: nothing would ever be removed",
            ));
        }
        if self.audit_retain_bytes != 0 && self.audit_retain_bytes < self.audit_rotate_bytes {
            return Err(invalid(
                "audit_retain_bytes",
                self.audit_retain_bytes.to_string(),
                "must be 0 (no limit) or at least audit_rotate_bytes: a smaller limit would \
                 remove every segment as soon as it is rotated",
            ));
        }
        if self.recording_max_bytes < 512 {
            return Err(invalid(
                "recording_max_bytes",
                self.recording_max_bytes.to_string(),
                "must be at least 512: the session header alone takes several hundred bytes",
            ));
        }
        if let Some(d) = self.recording_dir.as_ref().filter(|d| !d.is_absolute()) {
            return Err(invalid(
                "recording_dir",
                d.display().to_string(),
                "must be an absolute path (or left out for <state_dir>/sessions)",
            ));
        }
        if self.pg_max_message_bytes < 64 * 1024 {
            return Err(invalid(
                "pg_max_message_bytes",
                self.pg_max_message_bytes.to_string(),
                "must be at least 65536: clients send statements and COPY data larger than that",
            ));
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(invalid(
                "tls_cert_file/tls_key_file",
                "one of them".into(),
                "give both the certificate and its private key, or neither",
            ));
        }
        if let Err((setting, value, reason)) = crate::audit::export::config::validate(&self.exports)
        {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                setting,
                value,
                reason,
            });
        }
        if !self.bpffs_dir.is_absolute() {
            return Err(invalid(
                "bpffs_dir",
                self.bpffs_dir.display().to_string(),
                "must be an absolute path under a bpffs mount",
            ));
        }
        Ok(())
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.runtime_dir.join("admin.sock")
    }

    pub fn audit_dir(&self) -> PathBuf {
        self.state_dir.join("audit")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = AgentConfig::parse(Path::new("a.yaml"), "").expect("empty config is valid");
        assert_eq!(c.listen_port, 1001);
        assert_eq!(c.cgroup, CgroupSetting::Keyword(CgroupKeyword::Auto));
    }

    #[test]
    fn unknown_field_is_refused_with_location() {
        let err = AgentConfig::parse(Path::new("a.yaml"), "listen_port: 1\nlisten_prot: 2\n")
            .expect_err("typo must be refused");
        let msg = err.to_string();
        assert!(msg.contains("listen_prot"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn cgroup_path_and_auto() {
        let c = AgentConfig::parse(Path::new("a"), "cgroup: /sys/fs/cgroup/x\n").expect("path");
        assert_eq!(c.cgroup, CgroupSetting::Path("/sys/fs/cgroup/x".into()));
        let c = AgentConfig::parse(Path::new("a"), "cgroup: auto\n").expect("auto");
        assert_eq!(c.cgroup, CgroupSetting::Keyword(CgroupKeyword::Auto));
    }

    #[test]
    fn audit_rotation_and_retention_defaults_and_limits() {
        let c = AgentConfig::parse(Path::new("a"), "").expect("defaults");
        assert_eq!(
            (
                c.audit_rotate_bytes,
                c.audit_rotate_secs,
                c.audit_retain_secs,
                c.audit_retain_bytes,
                c.audit_min_free_bytes
            ),
            (64 << 20, 86_400, 0, 0, 1 << 20)
        );
        let c = AgentConfig::parse(
            Path::new("a"),
            "audit_rotate_bytes: 1048576\naudit_retain_bytes: 10485760\naudit_retain_secs: 7776000\n",
        )
        .expect("valid retention");
        assert_eq!(
            (c.audit_retain_bytes, c.audit_retain_secs),
            (10 << 20, 7_776_000)
        );
        for (text, setting) in [
            ("audit_rotate_bytes: 100\n", "audit_rotate_bytes"),
            ("audit_rotate_secs: 5\n", "audit_rotate_secs"),
            ("audit_retain_bytes: 1000\n", "audit_retain_bytes"),
            (
                "audit_rotate_bytes: 0\naudit_rotate_secs: 0\naudit_retain_secs: 60\n",
                "audit_retain_secs",
            ),
        ] {
            let err = AgentConfig::parse(Path::new("a.yaml"), text).expect_err(text);
            let msg = err.to_string();
            assert!(
                msg.contains(setting) && msg.contains("a.yaml"),
                "{text}: {msg}"
            );
        }
        let err = AgentConfig::parse(Path::new("a"), "audit_rotate_bytes: -1\n")
            .expect_err("negative size");
        assert!(err.to_string().contains("audit_rotate_bytes"), "{err}");
    }

    #[test]
    fn the_shipped_agent_yaml_lists_every_setting_at_its_default() {
        let text = include_str!("../../systemd/agent.yaml");
        let shipped = AgentConfig::parse(Path::new("systemd/agent.yaml"), text)
            .expect("the shipped agent.yaml is valid");
        let as_json = |c: &AgentConfig| serde_json::to_value(c).expect("config as JSON");
        assert_eq!(as_json(&shipped), as_json(&AgentConfig::default()));
        let serde_json::Value::Object(fields) = as_json(&shipped) else {
            panic!("config is an object")
        };
        for k in fields.keys() {
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{k}:"))),
                "systemd/agent.yaml does not show `{k}`"
            );
        }
    }

    #[test]
    fn recording_defaults_and_limits() {
        let c = AgentConfig::parse(Path::new("a"), "").expect("defaults");
        assert!(c.recording_enabled);
        assert_eq!(
            (c.recording_dir.clone(), c.recording_max_bytes),
            (None, 64 << 20)
        );
        let c = AgentConfig::parse(
            Path::new("a"),
            "recording_dir: /srv/rec\nrecording_max_bytes: 4096\n",
        )
        .expect("valid");
        assert_eq!(c.recording_dir, Some(PathBuf::from("/srv/rec")));
        for (text, setting) in [
            ("recording_max_bytes: 10\n", "recording_max_bytes"),
            ("recording_dir: rec\n", "recording_dir"),
        ] {
            let err = AgentConfig::parse(Path::new("a"), text).expect_err(text);
            assert!(err.to_string().contains(setting), "{err}");
        }
    }

    #[test]
    fn mark_and_raw_socket_settings() {
        let c = AgentConfig::parse(Path::new("a"), "").expect("defaults");
        assert_eq!(
            (c.upstream_mark_setting, c.raw_sockets),
            (MarkSetting::Keyword(MarkKeyword::Auto), RawSockets::Refuse)
        );
        let c = AgentConfig::parse(
            Path::new("a"),
            "upstream_mark: 0x70630002\nraw_sockets: allow\n",
        )
        .expect("valid");
        assert_eq!(
            (c.upstream_mark_setting, c.raw_sockets),
            (MarkSetting::Value(0x7063_0002), RawSockets::Allow)
        );
        let c = AgentConfig::parse(Path::new("a"), "upstream_mark: 0\n").expect("no mark");
        assert_eq!(c.upstream_mark_setting, MarkSetting::Value(0));
        for text in ["upstream_mark: random\n", "raw_sockets: maybe\n"] {
            AgentConfig::parse(Path::new("a"), text).expect_err(text);
        }
    }
}
