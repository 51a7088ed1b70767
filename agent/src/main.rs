//! `portcullis`: the host enforcement agent and its CLI, in one binary.
#![forbid(unsafe_code)]

mod admin;
mod audit;
mod cli_docs;
mod config;
mod credentials;
mod ebpf;
mod flows;
mod identity;
mod policy;
mod protocol;
mod proxy;
mod recording;
mod run;
mod state;
mod systemd;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use crate::config::{AgentConfig, DEFAULT_ADMIN_SOCKET, DEFAULT_CONFIG, LogFormat};

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Host enforcement agent: kernel redirect, policy, audit"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (as root, usually from systemd).
    Run {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Programs attached, cgroup, counters, sessions, policy and audit state.
    Status {
        #[command(flatten)]
        target: AgentTarget,
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Recent outbound connects by workload and destination (from kernel events).
    Flows {
        #[command(flatten)]
        target: AgentTarget,
        #[arg(long)]
        json: bool,
    },
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Audit log tools (work offline, on a copy of the files).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Recorded sessions (work offline, on the recording directory or a copy).
    Sessions {
        #[command(subcommand)]
        command: recording::cli::SessionsCommand,
    },
    /// SQL tools: how the agent reads statements (no policy, no server).
    Sql {
        #[command(subcommand)]
        command: protocol::sql::cli::SqlCommand,
    },
    /// Play a recorded session back with its original timing.
    Replay(recording::cli::ReplayArgs),
    /// Remove enforcement (unpin all programs and maps). Audited. Stops the agent.
    Detach {
        #[command(flatten)]
        target: AgentTarget,
        /// Required: removing enforcement is never implicit.
        #[arg(long)]
        yes: bool,
    },
    /// Print the shell completion script for SHELL (the Debian package installs
    /// bash, zsh and fish completions already).
    Completions { shell: clap_complete::Shell },
    /// Write the man pages and completion scripts under DIR (`cargo xtask manpages`).
    #[command(hide = true)]
    GenerateDocs {
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the hash chain and signed checkpoints of an audit log: reports the
    /// first modified, deleted, inserted, reordered or truncated record.
    Verify {
        /// Public key file (audit-signing.pub) to check checkpoint signatures
        /// against; without it, the key embedded in the checkpoints is used.
        #[arg(long)]
        pubkey: Option<PathBuf>,
        /// Audit directory or audit.jsonl file.
        #[arg(default_value = "/var/lib/portcullis/audit")]
        path: PathBuf,
    },
    /// Print records in seq order (filtered by time and type) as JSON lines or
    /// OCSF events, e.g. to load into a SIEM by hand.
    Export(audit::export::cli::ExportArgs),
    /// Append throughput of the audit writer (for `cargo xtask bench audit`).
    #[command(hide = true)]
    Bench(audit::bench::BenchArgs),
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Check policy files or directories; prints every error; exits non-zero on any.
    Check {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Ask the running agent to reload its policy directory.
    Reload {
        #[command(flatten)]
        target: AgentTarget,
    },
    /// Decision time of the policy engine on a synthetic policy (for `cargo xtask bench policy`).
    #[command(hide = true)]
    Bench {
        #[arg(long, default_value_t = 10)]
        rules: usize,
        #[arg(long, default_value_t = 200_000)]
        iterations: usize,
        /// Measure SQL analysis instead (pgbench's statement: uncached, cached,
        /// cached by shape, facts).
        #[arg(long)]
        sql: bool,
    },
    /// Draft a policy (monitor mode) from the flows the running agent observed.
    Suggest {
        #[command(flatten)]
        target: AgentTarget,
        /// Leave out flows seen fewer times than this.
        #[arg(long, default_value_t = 1)]
        min_connects: u64,
    },
    /// Print the JSON Schema of the policy format (for editors).
    Schema,
    /// Run the policy unit tests (`*.test.yaml`) kept next to the policies.
    Test {
        /// Directory holding the policies and their tests.
        dir: PathBuf,
    },
    /// Show how a request is decided: selectors, candidate rules, the winner and why.
    Explain {
        /// Policy directory or files.
        #[arg(long, default_value = "/etc/portcullis/policies.d")]
        policy: Vec<PathBuf>,
        /// The workload, as key=value pairs: uid, gid, user, group, exe, exe_sha256,
        /// comm, cgroup, unit, slice (e.g. `uid=0,exe=/usr/bin/psql`).
        #[arg(long)]
        workload: String,
        /// Target name.
        #[arg(long)]
        target: String,
        /// Decide at this UTC time (e.g. 2026-01-05T12:00:00Z) instead of now.
        #[arg(long)]
        at: Option<String>,
        /// Also decide this SQL text, sent as one simple-query message on a new
        /// session: the analysis and the decision of every statement.
        #[arg(long)]
        sql: Option<String>,
        /// Database user of that session (for `"$user"` on the search_path);
        /// default: the workload's `user`, else `postgres`.
        #[arg(long)]
        db_user: Option<String>,
    },
}

#[derive(clap::Args)]
struct AgentTarget {
    /// Agent config (to find the admin socket and, for detach, the pins).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Admin socket (overrides the config's).
    #[arg(long)]
    socket: Option<PathBuf>,
}

impl AgentTarget {
    fn config(&self) -> Result<Option<AgentConfig>, config::ConfigError> {
        match &self.config {
            Some(p) => AgentConfig::load(p).map(Some),
            None if Path::new(DEFAULT_CONFIG).exists() => {
                AgentConfig::load(Path::new(DEFAULT_CONFIG)).map(Some)
            }
            None => Ok(None),
        }
    }

    fn socket(&self) -> Result<PathBuf, config::ConfigError> {
        if let Some(s) = &self.socket {
            return Ok(s.clone());
        }
        Ok(match self.config()? {
            Some(c) => c.admin_socket(),
            None => PathBuf::from(DEFAULT_ADMIN_SOCKET),
        })
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("PORTCULLIS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => b.json().try_init(),
        LogFormat::Text => b.try_init(),
    };
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("portcullis: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config } => {
            let cfg = AgentConfig::load(&config)?;
            init_tracing(cfg.log_format);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            match rt.block_on(run::run(cfg))? {
                run::Outcome::Stopped => Ok(ExitCode::SUCCESS),
                run::Outcome::Detached => Ok(ExitCode::from(run::EXIT_DETACHED)),
            }
        }
        Command::Status { target, json } => {
            let v = admin::request(&target.socket()?, "status")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_status(&v);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Flows { target, json } => {
            let v = admin::request(&target.socket()?, "flows")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_flows(&v);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy {
            command: PolicyCommand::Check { paths },
        } => match policy::CompiledPolicy::load(&paths) {
            Ok(p) => {
                println!(
                    "ok: {} file(s), {} workload(s), {} target(s), {} rule(s), {} mask(s); sha256 {}",
                    p.files.len(),
                    p.workloads.len(),
                    p.targets.len(),
                    p.rules.len(),
                    p.masks.len(),
                    p.hash
                );
                let warnings = policy::grants::migration_warnings(&p);
                for w in &warnings {
                    eprintln!("warning: {w}");
                }
                if !warnings.is_empty() {
                    eprintln!(
                        "  hint: these say what allow rules no longer allow since allow rules grant privileges (docs/policy-reference.md, \"Changing from the earlier meaning\"); review each once"
                    );
                }
                for w in policy::lint::channel_binding_warnings(&p) {
                    eprintln!("warning: {w} (docs/policy-reference.md, \"TLS\")");
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(errs) => {
                for e in &errs.0 {
                    eprintln!("error: {e}");
                }
                eprintln!(
                    "{} error(s); the policy set is refused as a whole",
                    errs.0.len()
                );
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Policy {
            command:
                PolicyCommand::Bench {
                    rules,
                    iterations,
                    sql,
                },
        } => {
            if sql {
                println!("{}", protocol::sql::measure(iterations.min(50_000)));
                return Ok(ExitCode::SUCCESS);
            }
            let t = std::time::Instant::now();
            let p = policy::bench::synthetic(rules.max(1)).map_err(|e| anyhow::anyhow!(e))?;
            let compile_ms = t.elapsed().as_millis();
            let (p50, p99) = policy::bench::run(&p, rules.max(1), iterations.max(1));
            println!(
                "{{\"rules\":{rules},\"compile_ms\":{compile_ms},\"p50_ns\":{p50},\"p99_ns\":{p99}}}"
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy {
            command:
                PolicyCommand::Suggest {
                    target,
                    min_connects,
                },
        } => {
            let v = admin::request(&target.socket()?, "flows")?;
            let flows = v["flows"].as_array().cloned().unwrap_or_default();
            print!("{}", policy::suggest::suggest(&flows, min_connects));
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy {
            command: PolicyCommand::Schema,
        } => {
            print!("{}", policy::spec::json_schema());
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy {
            command: PolicyCommand::Test { dir },
        } => {
            let policy = match policy::CompiledPolicy::load(std::slice::from_ref(&dir)) {
                Ok(p) => p,
                Err(errs) => {
                    for e in &errs.0 {
                        eprintln!("error: {e}");
                    }
                    eprintln!("the policy set does not load; no test was run");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let report = policy::testing::run_dir(&policy, &dir);
            println!("{report}");
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Policy {
            command:
                PolicyCommand::Explain {
                    policy: paths,
                    workload,
                    target,
                    at,
                    sql,
                    db_user,
                },
        } => {
            let p = policy::CompiledPolicy::load(&paths)
                .map_err(|e| anyhow::anyhow!("the policy set does not load:\n{e}"))?;
            let subject = policy::explain::subject_from_pairs(&workload)
                .map_err(|e| anyhow::anyhow!("--workload: {e}"))?;
            let now = match at {
                Some(t) => {
                    policy::testing::parse_utc(&t).map_err(|e| anyhow::anyhow!("--at: {e}"))?
                }
                None => std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            };
            let (text, _) = policy::explain::explain(&p, &subject, &target, now)
                .map_err(|e| anyhow::anyhow!(e))?;
            print!("{text}");
            if let Some(sql) = sql {
                let user = db_user
                    .or_else(|| subject.user.clone())
                    .unwrap_or_else(|| "postgres".into());
                let (text, _) =
                    policy::explain::explain_sql(&p, &subject, &target, now, &sql, &user)
                        .map_err(|e| anyhow::anyhow!(e))?;
                print!("{text}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy {
            command: PolicyCommand::Reload { target },
        } => {
            let v = admin::request(&target.socket()?, "reload")?;
            reply_ok(&v, |v| {
                println!(
                    "reloaded; policy sha256 {}",
                    v["policy_hash"].as_str().unwrap_or("?")
                )
            })
        }
        Command::Audit {
            command: AuditCommand::Verify { pubkey, path },
        } => audit::verify::cli_verify(&path, pubkey.as_deref()),
        Command::Audit {
            command: AuditCommand::Export(args),
        } => audit::export::cli::run(&args),
        Command::Audit {
            command: AuditCommand::Bench(args),
        } => audit::bench::run(&args),
        Command::Sessions { command } => recording::cli::sessions(command),
        Command::Replay(args) => recording::cli::replay(args),
        Command::Sql { command } => protocol::sql::cli::run(command),
        Command::Detach { target, yes } => {
            if !yes {
                anyhow::bail!(
                    "detach removes enforcement from this host: protected targets become reachable without the agent.\n\
                     Re-run with --yes to confirm. The action is written to the audit log."
                );
            }
            detach(&target)
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            use std::io::Write;
            std::io::stdout().write_all(&cli_docs::completion(Cli::command(), shell))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::GenerateDocs { out } => {
            use clap::CommandFactory;
            for p in cli_docs::write_all(Cli::command(), &out)? {
                println!("wrote {}", p.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn reply_ok(v: &Value, on_ok: impl FnOnce(&Value)) -> anyhow::Result<ExitCode> {
    if v["ok"].as_bool() == Some(true) {
        on_ok(v);
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "portcullis: the agent refused: {}",
            v["error"].as_str().unwrap_or("unknown error")
        );
        Ok(ExitCode::FAILURE)
    }
}

/// Through the running agent if there is one; otherwise directly on the pins, with
/// an audit record appended to the log.
fn detach(target: &AgentTarget) -> anyhow::Result<ExitCode> {
    let socket = target.socket()?;
    match admin::request(&socket, "detach") {
        Ok(v) => reply_ok(&v, |v| {
            println!("enforcement detached; the agent is stopping");
            if let Some(r) = v["removed"].as_array() {
                println!("removed {} pin(s)", r.len());
            }
        }),
        Err(admin::AdminError::Connect { .. }) => {
            let cfg = target.config()?.unwrap_or_default();
            // The log first: if it cannot be written, enforcement stays.
            let log = audit::AuditLog::open_with(
                &cfg.audit_dir(),
                16,
                cfg.audit_sync,
                audit::AuditOptions::from_config(&cfg),
            )?;
            let removed = ebpf::remove_pins(&cfg.bpffs_dir)?;
            let _ = log.record(
                "enforcement_detached",
                json!({
                    "by": "cli (agent not running)",
                    "uid": nix::unistd::getuid().as_raw(),
                    "bpffs_dir": cfg.bpffs_dir,
                    "removed_pins": removed,
                }),
            );
            log.flush(std::time::Duration::from_secs(5));
            println!(
                "agent not running; removed {} pin(s) under {} (audited in {})",
                removed.len(),
                cfg.bpffs_dir.display(),
                log.path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e.into()),
    }
}

fn print_status(v: &Value) {
    let e = &v["enforcement"];
    println!(
        "portcullis {} (pid {}), up {}s",
        v["version"].as_str().unwrap_or("?"),
        v["pid"],
        v["uptime_secs"]
    );
    println!(
        "cgroup:    {} (id {})",
        e["cgroup"].as_str().unwrap_or("?"),
        e["cgroup_id"]
    );
    println!(
        "pins:      {} (adopted: {})",
        e["bpffs_dir"].as_str().unwrap_or("?"),
        e["adopted_from_pins"]
    );
    if let Some(progs) = e["programs"].as_array() {
        for p in progs {
            let state = if p["pinned"].as_bool() == Some(true) {
                "attached, pinned"
            } else {
                "NOT PINNED"
            };
            println!("  {:<12} {state}", p["name"].as_str().unwrap_or("?"));
        }
    }
    println!(
        "listen:    {} {}",
        v["listen"]["v4"].as_str().unwrap_or(""),
        v["listen"]["v6"].as_str().unwrap_or("")
    );
    if let Some(c) = v["kernel_counters"].as_object() {
        let parts: Vec<String> = c.iter().map(|(k, n)| format!("{k}={n}")).collect();
        println!("kernel:    {}", parts.join(" "));
    }
    let s = &v["sessions"];
    println!(
        "sessions:  total={} active={} allowed={} denied={}  bypass events={}",
        s["total"], s["active"], s["allowed"], s["denied"], v["bypass_events"]
    );
    let p = &v["policy"];
    println!(
        "policy:    sha256 {} ({} rules, reloads={} rejected={})",
        p["sha256"].as_str().unwrap_or("?"),
        p["rules"],
        p["reloads"],
        p["rejected_reloads"]
    );
    let a = &v["audit"];
    println!(
        "audit:     {} healthy={} written={} queued={}",
        a["path"].as_str().unwrap_or("?"),
        a["healthy"],
        a["written"],
        a["queued"]
    );
    for e in v["exports"].as_array().into_iter().flatten() {
        println!(
            "export:    {} ({} -> {}) exported={} head={} lag={} records/{:.1}s{}{}",
            e["name"].as_str().unwrap_or("?"),
            e["format"].as_str().unwrap_or("?"),
            e["destination"].as_str().unwrap_or("?"),
            e["exported_seq"],
            e["head_seq"],
            e["lag_records"],
            e["lag_secs"].as_f64().unwrap_or(0.0),
            match e["last_error"].as_str() {
                Some(err) if e["failing"].as_bool() == Some(true) => format!(" FAILING: {err}"),
                _ => String::new(),
            },
            match e["gap_records"].as_u64() {
                Some(n) if n > 0 => format!(" GAP: {n} records lost to retention"),
                _ => String::new(),
            },
        );
    }
}

fn print_flows(v: &Value) {
    let Some(flows) = v["flows"].as_array().filter(|f| !f.is_empty()) else {
        println!("no flows observed yet");
        return;
    };
    println!(
        "{:>8} {:>6} {:>6} {:>6} {:>6}  {:<5} {:<28} {:>6}  {:<40} CGROUP",
        "CONNECTS", "REDIR", "PASS", "DENY", "EXEMPT", "PROTO", "DESTINATION", "UID", "EXE"
    );
    for f in flows {
        println!(
            "{:>8} {:>6} {:>6} {:>6} {:>6}  {:<5} {:<28} {:>6}  {:<40} {}",
            f["connects"].as_u64().unwrap_or(0),
            f["redirected"].as_u64().unwrap_or(0),
            f["passed"].as_u64().unwrap_or(0),
            f["kernel_denied"].as_u64().unwrap_or(0),
            f["exempt"].as_u64().unwrap_or(0),
            f["protocol"].as_str().unwrap_or(""),
            f["destination"].as_str().unwrap_or(""),
            f["uid"].as_u64().unwrap_or(0),
            f["exe"].as_str().unwrap_or(""),
            f["cgroup"].as_str().unwrap_or(""),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The man pages and completions in packaging/ (shipped in the Debian package)
    /// are what this binary generates.
    #[test]
    fn packaged_man_pages_and_completions_are_current() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging");
        let stale = cli_docs::stale(Cli::command(), &dir).expect("generate");
        assert!(
            stale.is_empty(),
            "packaging/ is not what the CLI generates; run `cargo xtask manpages`:\n{}",
            stale.join("\n")
        );
    }
}
