//! PostgreSQL-side tools the tests and the pg benchmark need beyond the server:
//! a Python venv with psycopg 3 (for tests/clients/pg_client.py) and pgbouncer.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::setup::apt_install;
use crate::util::{run, target_dir};

/// The venv the tests run psycopg from: `<target>/pyenv` (tests/src/pg.rs looks
/// for it in the same place).
pub fn venv_dir() -> PathBuf {
    target_dir().join("pyenv")
}

fn psycopg_present(venv: &Path) -> bool {
    let Ok(rd) = std::fs::read_dir(venv.join("lib")) else {
        return false;
    };
    rd.flatten().any(|e| {
        let site = e.path().join("site-packages");
        site.join("psycopg").join("__init__.py").exists() && site.join("psycopg_binary").exists()
    })
}

/// Creates `<target>/pyenv` with `psycopg[binary]` from PyPI unless it is already
/// there (then this is a few file checks). Returns whether it installed anything.
pub fn python_env() -> Result<bool> {
    let venv = venv_dir();
    if psycopg_present(&venv) {
        return Ok(false);
    }
    // The distribution's interpreter, not whatever shim is first on PATH, so the
    // venv keeps working for every user of the machine.
    let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("python3"));
    if !venv.join("bin").join("python").exists() {
        let made = run(Command::new(&python).args(["-m", "venv"]).arg(&venv));
        if made.is_err() {
            // Debian splits venv/ensurepip into python3-venv.
            let _ = std::fs::remove_dir_all(&venv);
            apt_install(&["python3-venv"]).context("installing python3-venv")?;
            run(Command::new(&python).args(["-m", "venv"]).arg(&venv))
                .with_context(|| format!("creating the Python venv {}", venv.display()))?;
        }
    }
    run(Command::new(venv.join("bin").join("python")).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "psycopg[binary]",
    ]))
    .context("installing psycopg[binary] from PyPI into the test venv")?;
    if !psycopg_present(&venv) {
        bail!(
            "pip finished but psycopg is not in {}: remove that directory and rerun `cargo xtask setup`",
            venv.display()
        );
    }
    Ok(true)
}

/// The pgbouncer binary (Debian package `pgbouncer`, installed if missing).
pub fn pgbouncer_bin() -> Result<PathBuf> {
    let p = PathBuf::from("/usr/sbin/pgbouncer");
    if p.exists() {
        return Ok(p);
    }
    apt_install(&["pgbouncer"]).context("installing pgbouncer")?;
    if p.exists() {
        Ok(p)
    } else {
        bail!("pgbouncer installed but {} is missing", p.display())
    }
}
