//! Agent-held credentials for targets (a policy target's `credentials: NAME`):
//! `<credentials_dir>/NAME.yaml`, readable by the agent's user only. Clients
//! never see them; the agent logs in upstream with them.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// One credential file.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// The database user the agent logs in as.
    pub user: String,
    pub password: String,
    /// Database to connect to, overriding the one the client asked for.
    #[serde(default)]
    pub database: Option<String>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("database", &self.database)
            .finish()
    }
}

/// Refuses a secret file that others could read or replace: it must be a regular
/// file owned by the agent's user with no group or other permissions.
pub fn check_private(path: &Path) -> Result<(), String> {
    let md = std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !md.file_type().is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if md.uid() != me {
        return Err(format!(
            "{} is owned by uid {}, not by the agent's uid {me}",
            path.display(),
            md.uid()
        ));
    }
    if md.mode() & 0o077 != 0 {
        return Err(format!(
            "{} has mode {:o}: secrets must not be readable by group or others (chmod 600)",
            path.display(),
            md.mode() & 0o777
        ));
    }
    Ok(())
}

/// The file a credential name refers to. Names are plain file stems.
pub fn path_of(dir: &Path, name: &str) -> Result<PathBuf, String> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        || name.starts_with('.')
    {
        return Err(format!(
            "credential name `{name}` may hold letters, digits, `-`, `_` and `.` only"
        ));
    }
    Ok(dir.join(format!("{name}.yaml")))
}

/// Loads and checks a credential. Errors name the file and never the secret.
pub fn load(dir: &Path, name: &str) -> Result<Credential, String> {
    let path = path_of(dir, name)?;
    check_private(&path)?;
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let c: Credential = serde_yaml_ng::from_str(&text).map_err(|e| {
        // serde errors may quote the offending value: keep only where it is.
        let at = e
            .location()
            .map(|l| format!(" at line {}", l.line()))
            .unwrap_or_default();
        format!(
            "{}: not a credential file{at} (fields: user, password, database)",
            path.display()
        )
    })?;
    if c.user.is_empty() {
        return Err(format!("{}: `user` is empty", path.display()));
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "portcullis-cred-{}-{}",
            std::process::id(),
            crate::proxy::SessionId::new()
        ));
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    #[test]
    fn loads_a_private_file_and_refuses_open_ones() {
        let d = dir();
        let p = d.join("db.yaml");
        std::fs::write(&p, "user: app\npassword: s3cret\n").expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let c = load(&d, "db").expect("loads");
        assert_eq!(c.user, "app");
        assert!(!format!("{c:?}").contains("s3cret"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = load(&d, "db").expect_err("world readable");
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::write(&p, "user: app\npasswrd: s3cret\n").expect("write");
        let e = load(&d, "db").expect_err("typo");
        assert!(!e.contains("s3cret"), "{e}");
        assert!(load(&d, "../etc/passwd").is_err());
        assert!(load(&d, "missing").is_err());
        let _ = std::fs::remove_dir_all(&d);
    }
}
