//! PostgreSQL-side tools the tests and the pg benchmark need: the server and its
//! clients, the openssl CLI (test certificates), pgbouncer (the benchmark's peer)
//! and a Python venv with psycopg 3 (for tests/clients/pg_client.py).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::setup::{apt_install, postgres_bin};
use crate::util::{is_root, run, target_dir};

/// What `cargo xtask setup` makes sure of for PostgreSQL work; returns what it
/// installed. Without root, missing Debian packages are reported, not fatal (the
/// tests that need them say so when they run).
pub fn ensure() -> Result<Vec<&'static str>> {
    let mut did = Vec::new();
    let have_pg = std::fs::read_dir("/usr/lib/postgresql").is_ok_and(|mut rd| {
        rd.any(|e| e.is_ok_and(|e| e.path().join("bin").join("initdb").exists()))
    });
    let have_bouncer = Path::new("/usr/sbin/pgbouncer").exists();
    let have_openssl = Path::new("/usr/bin/openssl").exists();
    if is_root() {
        if !have_pg {
            postgres_bin()?;
            did.push("PostgreSQL");
        }
        if !have_bouncer {
            pgbouncer_bin()?;
            did.push("pgbouncer");
        }
        if !have_openssl {
            apt_install(&["openssl"]).context("installing the openssl CLI")?;
            did.push("openssl");
        }
    } else if !(have_pg && have_bouncer && have_openssl) {
        println!(
            "setup: not root: PostgreSQL, pgbouncer or openssl is missing (run `cargo xtask setup` as root)"
        );
    }
    if python_env()? {
        did.push("psycopg venv");
    }
    Ok(did)
}

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
