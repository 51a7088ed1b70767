//! The drivers of the conformance tier (tests/tests/drivers.rs): asyncpg in the
//! test venv, node-postgres with pg-cursor and pg-copy-streams under
//! `<target>/drivers-node` (npm), pgjdbc from Debian
//! (`/usr/share/java/postgresql.jar`) with a JDK to run its scenario. When all is
//! present this is a handful of file checks.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::pgtools::venv_dir;
use crate::setup::apt_install;
use crate::util::{is_root, run, target_dir};

/// What npm installs, by major version (tests/drivers/node_pg_steps.js).
const NODE_PACKAGES: [(&str, &str); 3] = [
    ("pg", "pg@8"),
    ("pg-cursor", "pg-cursor@2"),
    ("pg-copy-streams", "pg-copy-streams@7"),
];

/// Debian's pgjdbc (package libpostgresql-jdbc-java).
const PGJDBC_JAR: &str = "/usr/share/java/postgresql.jar";

/// `<target>/drivers-asyncpg-suite/<version>`: the tests/ directory of the sdist
/// of the asyncpg installed in the venv (tests/drivers/asyncpg_suite.py runs it).
pub fn asyncpg_suite_dir(version: &str) -> PathBuf {
    target_dir().join("drivers-asyncpg-suite").join(version)
}

/// Downloads the sdist of the installed asyncpg from PyPI and unpacks its tests.
fn asyncpg_suite(venv: &Path) -> Result<bool> {
    let py = venv.join("bin").join("python");
    let version = crate::util::output(
        Command::new(&py).args(["-c", "import asyncpg; print(asyncpg.__version__)"]),
    )
    .context("asking the venv's asyncpg for its version")?;
    let dir = asyncpg_suite_dir(&version);
    if dir.join("tests").join("__init__.py").exists() {
        return Ok(false);
    }
    let dl = target_dir().join("drivers-asyncpg-suite").join("sdist");
    std::fs::create_dir_all(&dl).with_context(|| format!("creating {}", dl.display()))?;
    run(Command::new(&py)
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-binary",
            ":all:",
            &format!("asyncpg=={version}"),
            "-d",
        ])
        .arg(&dl))
    .context("downloading the asyncpg sdist (for its test suite) from PyPI")?;
    let sdist = dl.join(format!("asyncpg-{version}.tar.gz"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&sdist)
        .arg("-C")
        .arg(&dir)
        .arg("--strip-components=1")
        .arg(format!("asyncpg-{version}/tests")))
    .with_context(|| format!("unpacking the tests of {}", sdist.display()))?;
    Ok(true)
}

/// `<target>/drivers-node`: its `node_modules` is the scenario's NODE_PATH.
pub fn node_dir() -> PathBuf {
    target_dir().join("drivers-node")
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).exists()))
}

fn asyncpg_present(venv: &Path) -> bool {
    std::fs::read_dir(venv.join("lib")).is_ok_and(|rd| {
        rd.flatten().any(|e| {
            e.path()
                .join("site-packages")
                .join("asyncpg")
                .join("__init__.py")
                .exists()
        })
    })
}

/// Installs what is missing; returns what it installed. Missing Debian packages
/// without root are reported, not fatal (the tier says so when it runs).
pub fn ensure() -> Result<Vec<&'static str>> {
    let mut did = Vec::new();
    let venv = venv_dir();
    if !asyncpg_present(&venv) {
        run(Command::new(venv.join("bin").join("python")).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "asyncpg",
        ]))
        .context("installing asyncpg from PyPI into the test venv")?;
        if !asyncpg_present(&venv) {
            bail!("pip finished but asyncpg is not in {}", venv.display());
        }
        did.push("asyncpg");
    }
    if asyncpg_suite(&venv)? {
        did.push("asyncpg test suite");
    }

    let mut apt: Vec<&str> = Vec::new();
    if !on_path("node") || !on_path("npm") {
        apt.extend(["nodejs", "npm"]);
    }
    if !Path::new(PGJDBC_JAR).exists() {
        apt.push("libpostgresql-jdbc-java");
    }
    // The scenario runs as a single source file, which needs the JDK's compiler.
    if !on_path("javac") {
        apt.push("default-jdk-headless");
    }
    if !apt.is_empty() {
        if is_root() {
            apt_install(&apt).context("installing the drivers' Debian packages")?;
            did.push("node, pgjdbc or a JDK");
        } else {
            println!(
                "setup: not root: the driver tier needs `apt-get install {}`",
                apt.join(" ")
            );
        }
    }

    let modules = node_dir().join("node_modules");
    let have_node_packages = NODE_PACKAGES
        .iter()
        .all(|(name, _)| modules.join(name).join("package.json").exists());
    if !have_node_packages && on_path("npm") {
        std::fs::create_dir_all(node_dir())
            .with_context(|| format!("creating {}", node_dir().display()))?;
        run(Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(node_dir())
            .args(NODE_PACKAGES.iter().map(|(_, spec)| *spec)))
        .context("installing pg, pg-cursor and pg-copy-streams from npm")?;
        did.push("node-postgres");
    }
    Ok(did)
}
