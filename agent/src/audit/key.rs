//! The host's audit signing key (Ed25519).
//!
//! `<state_dir>/keys/audit-signing.key`: the 32-byte secret seed as 64 hex digits
//! and a newline, mode 0600, owned by the agent's user (root), in a 0700
//! directory. Created on first open from getrandom(2). A key file that group or
//! others may access, that is not a regular file, or that another user owns, is
//! refused: the agent does not start until it is fixed.
//!
//! `<state_dir>/keys/audit-signing.pub`: the public key as 64 hex digits and a
//! newline, mode 0644, rewritten from the secret key on every open. This is the
//! file an auditor takes off the host once, at enrolment, and passes to
//! `portcullis audit verify --pubkey`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey};
use nix::fcntl::OFlag;

use super::chain::{hex, unhex};

pub const KEY_FILE: &str = "audit-signing.key";
pub const PUB_FILE: &str = "audit-signing.pub";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("audit signing key {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "audit signing key {path} has mode {mode:04o}: group or others may access it, so it may \
         have been read. Refusing to sign with it. If you are sure it was not copied, run \
         `chmod 600 {path}`; otherwise move it away and restart the agent, which creates a new \
         key (auditors must then be given the new public key)"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error(
        "audit signing key {path} is owned by uid {owner}, not by the agent's uid {euid}; \
         refusing to sign with a key another user controls (chown it, or move it away to get a new key)"
    )]
    Owner {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    #[error("audit signing key {path} is not a regular file (symbolic links are refused)")]
    NotAFile { path: PathBuf },
    #[error(
        "audit signing key {path} is not 64 hex digits; it is damaged: move it away and restart \
         the agent, which creates a new key"
    )]
    Format { path: PathBuf },
    #[error("no randomness from the kernel for a new audit signing key: {0}")]
    Random(String),
}

/// The loaded key.
pub struct HostKey {
    signing: SigningKey,
    /// Hex public key, as written in checkpoints and in the `.pub` file.
    pub public_hex: String,
    pub path: PathBuf,
    /// True if this open created the key.
    pub created: bool,
}

impl HostKey {
    /// Loads the key from `dir`, creating `dir` and the key if there is none.
    pub fn load_or_create(dir: &Path) -> Result<Self, KeyError> {
        let path = dir.join(KEY_FILE);
        let (seed, created) = match read_seed(&path)? {
            Some(seed) => (seed, false),
            None => (create(dir, &path)?, true),
        };
        let signing = SigningKey::from_bytes(&seed);
        let public_hex = hex(signing.verifying_key().as_bytes());
        write_public(dir, &public_hex)?;
        Ok(Self {
            signing,
            public_hex,
            path,
            created,
        })
    }

    /// Hex Ed25519 signature of `msg`.
    pub fn sign_hex(&self, msg: &[u8]) -> String {
        hex(&self.signing.sign(msg).to_bytes())
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `Ok(None)` if there is no key file yet.
fn read_seed(path: &Path) -> Result<Option<[u8; 32]>, KeyError> {
    let mut f = match OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        // O_NOFOLLOW on a symbolic link fails with ELOOP.
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(KeyError::NotAFile {
                path: path.to_owned(),
            });
        }
        Err(e) => return Err(io(path)(e)),
    };
    // Checked on the open descriptor, so the file checked is the file read.
    let meta = f.metadata().map_err(io(path))?;
    check_metadata(path, &meta)?;
    let mut text = String::new();
    (&mut f)
        .take(1024)
        .read_to_string(&mut text)
        .map_err(|_| KeyError::Format {
            path: path.to_owned(),
        })?;
    unhex::<32>(text.trim())
        .map(Some)
        .ok_or_else(|| KeyError::Format {
            path: path.to_owned(),
        })
}

fn check_metadata(path: &Path, meta: &std::fs::Metadata) -> Result<(), KeyError> {
    if !meta.is_file() {
        return Err(KeyError::NotAFile {
            path: path.to_owned(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(KeyError::Owner {
            path: path.to_owned(),
            owner: meta.uid(),
            euid,
        });
    }
    Ok(())
}

/// Creates a new key without ever exposing a partial file under the final name:
/// written and synced under a temporary name, then hard-linked into place (which
/// fails if another process won the race; its key is then used).
fn create(dir: &Path, path: &Path) -> Result<[u8; 32], KeyError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
    let tmp = dir.join(format!(".{KEY_FILE}.{}.tmp", std::process::id()));
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(OFlag::O_NOFOLLOW.bits())
            .open(&tmp)?;
        f.write_all(format!("{}\n", hex(&seed)).as_bytes())?;
        f.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    match res {
        Ok(()) => {
            sync_dir(dir);
            tracing::info!(path = %path.display(), "created the audit signing key");
            Ok(seed)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read_seed(path)?.ok_or_else(|| KeyError::Format {
                path: path.to_owned(),
            })
        }
        Err(e) => Err(io(path)(e)),
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Keeps the `.pub` file equal to the secret key's public half.
fn write_public(dir: &Path, public_hex: &str) -> Result<(), KeyError> {
    let path = dir.join(PUB_FILE);
    let want = format!("{public_hex}\n");
    match std::fs::read_to_string(&path) {
        Ok(have) if have == want => return Ok(()),
        Ok(_) => tracing::warn!(
            path = %path.display(),
            "the audit public key file did not match the signing key; rewriting it"
        ),
        Err(_) => {}
    }
    let tmp = dir.join(format!(".{PUB_FILE}.{}.tmp", std::process::id()));
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .custom_flags(OFlag::O_NOFOLLOW.bits())
            .open(&tmp)?;
        f.write_all(want.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map_err(io(&path))?;
    sync_dir(dir);
    Ok(())
}

/// Reads a public key file (64 hex digits; blank lines and `#` comments ignored).
pub fn read_public(path: &Path) -> Result<[u8; 32], String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    match (lines.next().and_then(unhex::<32>), lines.next()) {
        (Some(k), None) => Ok(k),
        _ => Err(format!(
            "{}: not an audit public key (expected one line of 64 hex digits, as in {PUB_FILE})",
            path.display()
        )),
    }
}
