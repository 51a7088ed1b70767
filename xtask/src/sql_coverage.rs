//! `cargo xtask sql-coverage [--top N] [--json] [FILES...]`: how much of
//! PostgreSQL's own regression SQL, of the driver statements in
//! tests/corpus/driver-statements.txt and of FILES the agent analyses
//! (`portcullis sql coverage`, see docs/testing.md). A report, not a test tier.
//!
//! The regression SQL comes from the PostgreSQL source package of the
//! distribution (`apt-get source --download-only`), fetched once into
//! `target/pg-regress/` with an apt configuration of its own: the `deb`
//! sources the machine is set up with, as `deb-src`, and lists and cache under
//! `target/`, so the system's apt state is not touched. A later run finds the
//! files there and fetches nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{cargo, output, repo_root, run, target_dir};

pub fn sql_coverage(args: &[String]) -> Result<()> {
    let mut pass = Vec::new();
    let mut files = Vec::new();
    let mut no_regress = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => pass.push(a.clone()),
            "--top" => {
                let n = it.next().context("--top needs a number")?;
                pass.push(a.clone());
                pass.push(n.clone());
            }
            "--no-regress" => no_regress = true,
            f if f.starts_with("--") => bail!("sql-coverage: unknown option {f}"),
            f => files.push(PathBuf::from(f)),
        }
    }
    let mut inputs = Vec::new();
    if !no_regress {
        inputs.push(regress_sql()?);
    }
    let drivers = repo_root().join("tests/corpus/driver-statements.txt");
    if drivers.exists() {
        inputs.push(drivers);
    }
    inputs.extend(files);
    cargo(&["build", "-p", "portcullis"])?;
    let bin = target_dir().join("debug").join("portcullis");
    run(Command::new(bin)
        .args(["sql", "coverage"])
        .args(&pass)
        .args(&inputs))
}

/// The installed PostgreSQL major version (the harness's server), 15 if none.
fn pg_major() -> String {
    let mut v: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v.last().map_or_else(|| "15".to_string(), u32::to_string)
}

/// `src/test/regress/sql` of the PostgreSQL source package, fetched once.
pub fn regress_sql() -> Result<PathBuf> {
    let major = pg_major();
    let base = target_dir().join("pg-regress");
    let done = base.join(format!("postgresql-{major}")).join("sql");
    if done.is_dir() {
        return Ok(done);
    }
    let apt = base.join("apt");
    for d in [
        "lists/partial",
        "cache/archives/partial",
        "parts",
        "download",
    ] {
        std::fs::create_dir_all(apt.join(d))
            .with_context(|| format!("creating {}", apt.join(d).display()))?;
    }
    let sources = apt.join("sources.list");
    std::fs::write(&sources, source_lines()?)
        .with_context(|| format!("writing {}", sources.display()))?;
    let opts = |c: &mut Command| {
        c.arg("-q")
            .arg("-o")
            .arg(format!("Dir::Etc::SourceList={}", sources.display()))
            .arg("-o")
            .arg(format!(
                "Dir::Etc::SourceParts={}",
                apt.join("parts").display()
            ))
            .arg("-o")
            .arg(format!("Dir::State::Lists={}", apt.join("lists").display()))
            .arg("-o")
            .arg(format!("Dir::Cache={}", apt.join("cache").display()))
            .arg("-o")
            .arg("Debug::NoLocking=1");
    };
    let mut update = Command::new("apt-get");
    opts(&mut update);
    run(update.arg("update")).context("reading the source package lists")?;
    let download = apt.join("download");
    let package = format!("postgresql-{major}");
    // The newest version first; a suite may list a version whose files its
    // mirror does not hold, so each listed version is tried in turn.
    let mut showsrc = Command::new("apt-cache");
    opts(&mut showsrc);
    let listed = output(showsrc.args(["showsrc", &package]))?;
    let mut versions: Vec<String> = listed
        .lines()
        .filter_map(|l| l.strip_prefix("Version: ").map(str::to_string))
        .collect();
    versions.reverse();
    let mut got = false;
    for v in
        std::iter::once(package.clone()).chain(versions.iter().map(|v| format!("{package}={v}")))
    {
        let mut get = Command::new("apt-get");
        opts(&mut get);
        get.args(["source", "--download-only", &v])
            .current_dir(&download);
        if get.status().is_ok_and(|s| s.success()) {
            got = true;
            break;
        }
    }
    if !got {
        bail!("could not download the source package {package}");
    }
    let orig = std::fs::read_dir(&download)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&package) && n.contains(".orig.tar."))
        })
        .context("the source package has no .orig tarball")?;
    let unpack = base.join("unpack");
    let _ = std::fs::remove_dir_all(&unpack);
    std::fs::create_dir_all(&unpack)?;
    run(Command::new("tar")
        .arg("-xf")
        .arg(&orig)
        .arg("-C")
        .arg(&unpack)
        .args(["--wildcards", "*/src/test/regress/sql/*.sql"]))?;
    let top = std::fs::read_dir(&unpack)?
        .flatten()
        .map(|e| e.path())
        .next()
        .context("the tarball held no directory")?;
    let sql = top.join("src/test/regress/sql");
    std::fs::create_dir_all(done.parent().unwrap_or(&base))?;
    std::fs::rename(&sql, &done)
        .with_context(|| format!("moving {} to {}", sql.display(), done.display()))?;
    let _ = std::fs::remove_dir_all(&unpack);
    let _ = std::fs::remove_dir_all(&download);
    println!(
        "sql-coverage: PostgreSQL regression SQL in {}",
        done.display()
    );
    Ok(done)
}

/// The machine's `deb` sources as `deb-src` lines (one-line format), from
/// /etc/apt/sources.list and the `.list` and `.sources` files beside it.
fn source_lines() -> Result<String> {
    let mut out = String::new();
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut v: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        v.sort();
        files.extend(v);
    }
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        match f.extension().and_then(|e| e.to_str()) {
            Some("sources") => deb822(&text, &mut out),
            _ if f.ends_with("sources.list") || f.extension().is_some_and(|e| e == "list") => {
                for l in text.lines() {
                    if let Some(rest) = l.trim().strip_prefix("deb ") {
                        out.push_str(&format!("deb-src {rest}\n"));
                    }
                }
            }
            _ => {}
        }
    }
    if out.is_empty() {
        bail!("no apt `deb` sources are configured on this machine");
    }
    Ok(out)
}

/// One-line `deb-src` entries for the `deb` paragraphs of a deb822 file.
fn deb822(text: &str, out: &mut String) {
    for para in text.split("\n\n") {
        let field = |name: &str| -> Option<String> {
            para.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .map(|v| v.trim().to_string())
        };
        let enabled = field("Enabled").is_none_or(|v| v != "no");
        let Some(types) = field("Types") else {
            continue;
        };
        if !enabled || !types.split_whitespace().any(|t| t == "deb") {
            continue;
        }
        let (Some(uris), Some(suites)) = (field("URIs"), field("Suites")) else {
            continue;
        };
        let comps = field("Components").unwrap_or_default();
        let signed = field("Signed-By")
            .filter(|s| Path::new(s).is_absolute())
            .map(|s| format!("[signed-by={s}] "))
            .unwrap_or_default();
        for uri in uris.split_whitespace() {
            for suite in suites.split_whitespace() {
                out.push_str(&format!("deb-src {signed}{uri} {suite} {comps}\n"));
            }
        }
    }
}
