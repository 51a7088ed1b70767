//! `cargo xtask`: toolchain set-up, build, test tiers, demo, benchmarks, install.
//!
//! Every command installs what it needs first (`setup` is idempotent and takes well
//! under a second when everything is present).

mod bench;
mod bench_pg;
mod demo;
mod drivers;
mod fuzz;
mod manpages;
mod pgtools;
mod setup;
mod sql_coverage;
mod util;

use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use crate::util::{cargo, is_root, repo_root, run, running_in_ci};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  setup            install what is missing (nightly rust-src, LLVM-matched bpf-linker)
  build [--release] build the agent (kernel programs included)
  test             run every test tier: lint, unit, policies, fuzz (20 s a target), privileged end-to-end,
                   drivers (psycopg, asyncpg, node-postgres, pgjdbc direct vs through the agent), demo smoke
  demo [--smoke]   throwaway PostgreSQL + the agent at the cgroup v2 root + a short workload
  bench [NAME]     benchmarks printing ratios (NAME: datapath, policy, audit; default all)
  bench pg [--protocol tcp|postgres] [--rounds N] [--secs S] [--clients 1,8,32] [--scale N]
                   pgbench -S: direct vs pgbouncer vs the agent (root)
  fuzz [--secs N] [TARGET ...]
                   the cargo-fuzz targets in fuzz/ (default: all, 300 s each; docs/fuzzing.md)
  sql-coverage [--top N] [--json] [--no-regress] [FILES...]
                   how much of PostgreSQL's regression SQL, tests/corpus/driver-statements.txt
                   and FILES the agent analyses (a report; fetches the regression SQL once)
  install          build release and install binary, unit file and config (as root)
  manpages         regenerate packaging/man and packaging/completions from the CLI
  sweep            remove pins and cgroups left by crashed test runs";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match dispatch(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(args: &[String]) -> Result<()> {
    let cmd = args.first().map(String::as_str).unwrap_or("help");
    let rest = &args[args.len().min(1)..];
    match cmd {
        "setup" => setup::setup(),
        "build" => {
            setup::setup()?;
            let mut a = vec!["build", "-p", "portcullis"];
            if rest.iter().any(|r| r == "--release") {
                a.push("--release");
            }
            cargo(&a)
        }
        "test" => test(),
        "demo" => demo::demo(rest.iter().any(|r| r == "--smoke")),
        "bench" => match rest.first().map(String::as_str) {
            Some("pg") => bench_pg::bench_pg(&rest[1..]),
            name => bench::bench(name),
        },
        "fuzz" => fuzz::fuzz(rest),
        "sql-coverage" => sql_coverage::sql_coverage(rest),
        "install" => install(),
        "manpages" => manpages::manpages(),
        "sweep" => {
            util::sweep_test_leftovers();
            Ok(())
        }
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command `{other}`\n{USAGE}"),
    }
}

/// The name prefix of the driver conformance tests (tests/tests/drivers.rs): the
/// drivers tier runs them, the privileged e2e tier skips them.
const DRIVER_TESTS: &str = "driver_conformance_";

/// Runs every tier, continuing past failures, and exits non-zero if any failed.
fn test() -> Result<()> {
    setup::setup()?;
    util::sweep_test_leftovers();
    let root = repo_root();
    let ci = running_in_ci();
    let mut passed = Vec::new();
    let mut failed = Vec::new();
    let mut skipped = Vec::new();
    let mut tier = |name: &str, r: Result<()>| match r {
        Ok(()) => passed.push(name.to_string()),
        Err(e) => {
            eprintln!("xtask: tier `{name}` failed: {e:#}");
            failed.push(name.to_string());
        }
    };

    tier("fmt", cargo(&["fmt", "--all", "--", "--check"]));
    tier(
        "clippy",
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    );
    tier(
        "unit",
        cargo(&["test", "--workspace", "--exclude", "portcullis-tests"]),
    );
    let build = cargo(&["build", "-p", "portcullis"]);
    let built = build.is_ok();
    tier("build", build);
    if built {
        let bin = util::target_dir().join("debug").join("portcullis");
        tier(
            "policies",
            run(std::process::Command::new(&bin)
                .args(["policy", "check"])
                .arg(root.join("policies")))
            .and_then(|()| {
                run(std::process::Command::new(&bin)
                    .args(["policy", "test"])
                    .arg(root.join("policies")))
            }),
        );
    }
    // libFuzzer targets (nightly, cargo-fuzz): a short run of each.
    match fuzz::ensure_cargo_fuzz() {
        Err(e) if !ci => {
            eprintln!("xtask: SKIP fuzz: cargo-fuzz is not available: {e:#}");
            skipped.push("fuzz".to_string());
        }
        _ => {
            let all: Vec<String> = fuzz::TARGETS.iter().map(|t| t.to_string()).collect();
            tier("fuzz", fuzz::run(fuzz::TEST_SECS, &all).map(|_| ()));
        }
    }
    if is_root() {
        // The driver conformance tests (tests/tests/drivers.rs) are the next tier.
        tier(
            "privileged e2e",
            cargo(&[
                "test",
                "-p",
                "portcullis-tests",
                "--",
                "--test-threads=2",
                "--skip",
                DRIVER_TESTS,
            ]),
        );
        // One driver at a time, output shown: each prints its results side by side.
        tier(
            "drivers",
            cargo(&[
                "test",
                "-p",
                "portcullis-tests",
                "--test",
                "drivers",
                "--",
                "--test-threads=1",
                "--nocapture",
                DRIVER_TESTS,
            ]),
        );
        tier("demo smoke", demo::demo(true));
    } else if ci {
        for name in ["privileged e2e", "drivers"] {
            tier(
                name,
                Err(anyhow::anyhow!(
                    "CI=true but not running as root: the privileged tests cannot run"
                )),
            );
        }
    } else {
        eprintln!(
            "xtask: SKIP privileged e2e, drivers and demo smoke: not root (they need eBPF and cgroups)"
        );
        skipped.push("privileged e2e".to_string());
        skipped.push("drivers".to_string());
        skipped.push("demo smoke".to_string());
    }
    println!();
    println!("tiers passed: {}", passed.join(", "));
    if !failed.is_empty() {
        println!("tiers FAILED: {}", failed.join(", "));
    }
    if !skipped.is_empty() {
        println!("tiers skipped: {}", skipped.join(", "));
    }
    println!(
        "tiers: {} passed, {} failed, {} skipped",
        passed.len(),
        failed.len(),
        skipped.len()
    );
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("{} tier(s) failed: {}", failed.len(), failed.join(", "))
    }
}

/// Installs the release binary, the unit file, the default config and policy dir.
fn install() -> Result<()> {
    if !is_root() {
        bail!("install writes to /usr/local/bin, /etc and /etc/systemd: run it as root");
    }
    setup::setup()?;
    cargo(&["build", "--release", "-p", "portcullis"])?;
    let root = repo_root();
    let bin = util::target_dir().join("release").join("portcullis");
    let copy = |from: &std::path::Path, to: &str, mode: u32| -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        if let Some(dir) = std::path::Path::new(to).parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = format!("{to}.new");
        std::fs::copy(from, &tmp)
            .with_context(|| format!("copying {} to {tmp}", from.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, to).with_context(|| format!("installing {to}"))?;
        println!("installed {to}");
        Ok(())
    };
    copy(&bin, "/usr/local/bin/portcullis", 0o755)?;
    copy(
        &root.join("systemd").join("portcullis.service"),
        "/etc/systemd/system/portcullis.service",
        0o644,
    )?;
    if std::path::Path::new("/etc/portcullis/agent.yaml").exists() {
        println!("kept existing /etc/portcullis/agent.yaml");
    } else {
        copy(
            &root.join("systemd").join("agent.yaml"),
            "/etc/portcullis/agent.yaml",
            0o600,
        )?;
    }
    std::fs::create_dir_all("/etc/portcullis/policies.d")?;
    println!(
        "\nnext:\n  write policies in /etc/portcullis/policies.d/ (examples: {}/policies/)\n  portcullis policy check /etc/portcullis/policies.d\n  systemctl daemon-reload && systemctl enable --now portcullis\n  portcullis status",
        root.display()
    );
    Ok(())
}
