//! Idempotent toolchain set-up: nightly with rust-src (kernel programs are built
//! with -Z build-std=core) and a bpf-linker whose LLVM matches nightly's.
//! When all is present this is a handful of file checks and one `rustc -vV`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::util::{is_root, output, run};

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
        })
}

fn nightly_llvm_major() -> Result<Option<u32>> {
    let Ok(vv) = output(Command::new("rustc").args(["+nightly", "-vV"])) else {
        return Ok(None);
    };
    let major = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .context("`rustc +nightly -vV` printed no LLVM version")?;
    Ok(Some(major))
}

/// LLVM major of the installed bpf-linker, from cargo's install record.
fn bpf_linker_llvm() -> Option<u32> {
    let text = std::fs::read_to_string(cargo_home().join(".crates2.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let installs = v.get("installs")?.as_object()?;
    let (_, entry) = installs
        .iter()
        .find(|(k, _)| k.starts_with("bpf-linker "))?;
    let features = entry.get("features")?.as_array()?;
    let linker = cargo_home().join("bin").join("bpf-linker");
    if !linker.exists() {
        return None;
    }
    features
        .iter()
        .filter_map(|f| f.as_str()?.strip_prefix("llvm-")?.parse().ok())
        .max()
}

pub fn apt_install(pkgs: &[&str]) -> Result<()> {
    if !is_root() {
        bail!(
            "missing Debian packages {pkgs:?}: run `apt-get install {}` as root",
            pkgs.join(" ")
        );
    }
    let install = |c: &mut Command| {
        run(c
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(pkgs)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    if install(&mut Command::new("apt-get")).is_err() {
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        install(&mut Command::new("apt-get"))?;
    }
    Ok(())
}

pub fn setup() -> Result<()> {
    let t0 = Instant::now();
    let mut did = Vec::new();

    let major = match nightly_llvm_major()? {
        Some(m) => m,
        None => {
            run(Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))
            .context("installing the nightly toolchain (the kernel programs need it)")?;
            did.push("nightly toolchain");
            nightly_llvm_major()?.context("nightly installed but `rustc +nightly -vV` fails")?
        }
    };

    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let core_src = PathBuf::from(&sysroot).join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if !core_src.exists() {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))
        .context("installing rust-src for nightly")?;
        did.push("rust-src");
    }

    match bpf_linker_llvm() {
        Some(m) if m >= major => {}
        found => {
            if let Some(m) = found {
                println!("setup: bpf-linker uses LLVM {m}, nightly needs >= {major}: reinstalling");
            }
            let llvm_bin = PathBuf::from(format!("/usr/lib/llvm-{major}/bin"));
            if !llvm_bin.join("llvm-config").exists() {
                apt_install(&[
                    &format!("llvm-{major}-dev"),
                    &format!("libpolly-{major}-dev"),
                    "libzstd-dev",
                    "zlib1g-dev",
                ])
                .with_context(|| format!("installing LLVM {major} for bpf-linker"))?;
            }
            let path = format!(
                "{}:{}",
                llvm_bin.display(),
                std::env::var("PATH").unwrap_or_default()
            );
            run(Command::new("cargo")
                .args([
                    "install",
                    "bpf-linker",
                    "--locked",
                    "--force",
                    "--no-default-features",
                    "--features",
                    &format!("llvm-{major},llvm-link-static"),
                ])
                .env("PATH", path))
            .context("building bpf-linker")?;
            did.push("bpf-linker");
        }
    }
    did.extend(crate::pgtools::ensure()?);
    // The driver tier's drivers: a failure here leaves that tier to say what is
    // missing; the other tiers do not need them.
    match crate::drivers::ensure() {
        Ok(d) => did.extend(d),
        Err(e) => println!("setup: drivers for the driver tier not installed: {e:#}"),
    }
    // The evasion tests drop privileges with setpriv and capsh and start the agent
    // in a private mount namespace with unshare.
    let have = |p: &[&str]| p.iter().any(|p| std::path::Path::new(p).exists());
    if !have(&["/usr/bin/setpriv", "/bin/setpriv"]) || !have(&["/usr/bin/unshare", "/bin/unshare"])
    {
        apt_install(&["util-linux"]).context("installing util-linux (setpriv, unshare)")?;
        did.push("util-linux");
    }
    if !have(&["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]) {
        apt_install(&["iproute2"]).context("installing iproute2 (ip, for the netns tests)")?;
        did.push("iproute2");
    }
    if !have(&["/usr/sbin/capsh", "/sbin/capsh"]) {
        apt_install(&["libcap2-bin"]).context("installing libcap2-bin (capsh)")?;
        did.push("libcap2-bin");
    }
    // The export tests start a real rsyslog with their own configuration.
    if !["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
        .iter()
        .any(|p| std::path::Path::new(p).exists())
    {
        apt_install(&["rsyslog"]).context("installing rsyslog (the export tests need it)")?;
        did.push("rsyslog");
    }
    if did.is_empty() {
        println!(
            "setup: ok (nightly LLVM {major}, rust-src, bpf-linker, PostgreSQL, pgbouncer, psycopg venv, drivers, rsyslog, setpriv, capsh) in {} ms",
            t0.elapsed().as_millis()
        );
    } else {
        println!(
            "setup: installed {} in {:.1} s",
            did.join(", "),
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// PostgreSQL server binaries (initdb, pg_ctl, postgres) and clients (psql, pgbench).
pub fn postgres_bin() -> Result<PathBuf> {
    let find = || -> Option<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists() && p.join("psql").exists())
            .collect();
        dirs.sort();
        dirs.pop()
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    apt_install(&["postgresql", "postgresql-client", "postgresql-contrib"])?;
    find().context("PostgreSQL installed but no /usr/lib/postgresql/*/bin/initdb found")
}
