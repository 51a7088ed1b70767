//! `cargo xtask fuzz [--secs N] [TARGET ...]`: the libFuzzer targets in fuzz/
//! (see docs/fuzzing.md), built with cargo-fuzz on nightly and run one after the
//! other for N seconds each. `cargo xtask test` runs each for [`TEST_SECS`].
//!
//! cargo-fuzz is installed with `cargo install` when missing (once). Inputs
//! found are kept in `target/fuzz-corpus/<target>` (the committed seeds in
//! `fuzz/seeds/<target>` are read too); a crash is written to
//! `target/fuzz-artifacts/<target>/` and fails the run with its path.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{output, repo_root, target_dir};

/// Every fuzz target, in the order they run.
pub const TARGETS: &[&str] = &["sql_analyze", "sql_shape_cache", "pg_codec"];
/// Seconds per target in `cargo xtask test`.
pub const TEST_SECS: u64 = 20;
/// Seconds per target of `cargo xtask fuzz` without `--secs`.
pub const DEFAULT_SECS: u64 = 300;

/// `cargo` through rustup, so that `+nightly` applies; the variables cargo set
/// for xtask itself name the stable toolchain and are dropped.
fn nightly_cargo() -> Command {
    let mut c = Command::new("cargo");
    c.arg("+nightly")
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN")
        .current_dir(repo_root());
    c
}

/// Installs cargo-fuzz unless `cargo fuzz` already runs.
pub fn ensure_cargo_fuzz() -> Result<()> {
    if output(nightly_cargo().args(["fuzz", "--version"])).is_ok() {
        return Ok(());
    }
    println!("fuzz: installing cargo-fuzz (cargo install cargo-fuzz --locked)");
    crate::util::run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
        .context("installing cargo-fuzz")?;
    output(nightly_cargo().args(["fuzz", "--version"]))
        .map(|_| ())
        .context("cargo-fuzz installed but `cargo +nightly fuzz --version` fails")
}

fn fuzz_dir() -> PathBuf {
    repo_root().join("fuzz")
}

fn fuzz_target_dir() -> PathBuf {
    target_dir().join("fuzz")
}

/// What one run did.
pub struct Run {
    pub target: String,
    pub executions: u64,
    pub secs: u64,
}

/// Builds every target, then runs `targets` for `secs` seconds each; fails
/// after the last one if any failed.
pub fn run(secs: u64, targets: &[String]) -> Result<Vec<Run>> {
    crate::setup::setup()?;
    ensure_cargo_fuzz()?;
    for t in targets {
        if !TARGETS.contains(&t.as_str()) {
            bail!(
                "unknown fuzz target `{t}` (targets: {})",
                TARGETS.join(", ")
            );
        }
    }
    crate::util::run(
        nightly_cargo()
            .args(["fuzz", "build", "--fuzz-dir"])
            .arg(fuzz_dir())
            .arg("--target-dir")
            .arg(fuzz_target_dir()),
    )
    .context("building the fuzz targets")?;
    let mut runs = Vec::new();
    let mut failures = Vec::new();
    for t in targets {
        let corpus = target_dir().join("fuzz-corpus").join(t);
        let artifacts = target_dir().join("fuzz-artifacts").join(t);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("creating {}", corpus.display()))?;
        std::fs::create_dir_all(&artifacts)
            .with_context(|| format!("creating {}", artifacts.display()))?;
        println!("fuzz: {t} for {secs} s");
        let out = nightly_cargo()
            .args(["fuzz", "run", t, "--fuzz-dir"])
            .arg(fuzz_dir())
            .arg("--target-dir")
            .arg(fuzz_target_dir())
            .arg(&corpus)
            .arg(fuzz_dir().join("seeds").join(t))
            .arg("--")
            .arg(format!("-max_total_time={secs}"))
            // One input taking this long is reported as a hang.
            .arg("-timeout=30")
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .output()
            .with_context(|| format!("running cargo fuzz run {t}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            // The panic or sanitizer report and where libFuzzer wrote the input,
            // without cargo-fuzz's own backtrace.
            let lines: Vec<&str> = stderr.lines().collect();
            let mut why: Vec<&str> = Vec::new();
            for (i, l) in lines.iter().enumerate() {
                if l.contains("panicked at") {
                    why.extend(lines.iter().skip(i).take(2).copied());
                } else if l.contains("ERROR: AddressSanitizer")
                    || l.contains("ERROR: libFuzzer")
                    || l.starts_with("SUMMARY:")
                    || l.contains("Test unit written to")
                    || l.starts_with("Base64:")
                {
                    why.push(l);
                }
            }
            if why.is_empty() {
                why = lines.iter().rev().take(20).rev().copied().collect();
            }
            let failure = format!(
                "fuzz target {t} failed ({}); the input is under {}:\n{}",
                out.status,
                artifacts.display(),
                why.join("\n")
            );
            eprintln!("fuzz: {failure}");
            failures.push(failure);
            continue;
        }
        // libFuzzer's last line: "Done N runs in S second(s)".
        let done = stderr
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("Done "))
            .unwrap_or("");
        let mut words = done.split_whitespace();
        let executions = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        let secs_run = words.nth(2).and_then(|n| n.parse().ok()).unwrap_or(secs);
        println!("fuzz: {t}: {executions} executions in {secs_run} s, no crash");
        runs.push(Run {
            target: t.clone(),
            executions,
            secs: secs_run,
        });
    }
    if !failures.is_empty() {
        bail!(
            "{} of {} fuzz targets failed:\n{}",
            failures.len(),
            targets.len(),
            failures.join("\n")
        );
    }
    Ok(runs)
}

/// `cargo xtask fuzz [--secs N] [TARGET ...]`.
pub fn fuzz(args: &[String]) -> Result<()> {
    let mut secs = DEFAULT_SECS;
    let mut targets = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--secs" => {
                secs = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .context("--secs needs a number of seconds")?;
            }
            t if !t.starts_with('-') => targets.push(t.to_string()),
            other => bail!("unknown option `{other}` (cargo xtask fuzz [--secs N] [TARGET ...])"),
        }
    }
    if targets.is_empty() {
        targets = TARGETS.iter().map(|t| t.to_string()).collect();
    }
    let runs = run(secs, &targets)?;
    println!();
    for r in &runs {
        println!(
            "fuzz: {:<16} {:>12} executions in {:>5} s",
            r.target, r.executions, r.secs
        );
    }
    Ok(())
}
