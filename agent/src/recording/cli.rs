//! `portcullis sessions list|show|export` and `portcullis replay`: offline, on the
//! recording directory or a copy of it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};

use super::read::{self, Filter};
use super::render;
use crate::config::{AgentConfig, DEFAULT_CONFIG};

#[derive(Args, Debug)]
pub struct Location {
    /// Recording directory (or a copy of it). Default: `recording_dir` of the agent
    /// config.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Agent config to take the recording directory from.
    #[arg(long)]
    config: Option<PathBuf>,
}

impl Location {
    fn dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(d) = &self.dir {
            return Ok(d.clone());
        }
        let cfg = match &self.config {
            Some(p) => AgentConfig::load(p)?,
            None if Path::new(DEFAULT_CONFIG).exists() => {
                AgentConfig::load(Path::new(DEFAULT_CONFIG))?
            }
            None => AgentConfig::default(),
        };
        Ok(super::recording_dir(&cfg))
    }
}

#[derive(Subcommand, Debug)]
pub enum SessionsCommand {
    /// One line per recorded session, oldest first.
    List {
        #[command(flatten)]
        at: Location,
        /// Sessions that started at or after this: RFC 3339, a date, or an age (`1h`, `2d`).
        #[arg(long)]
        since: Option<String>,
        /// Sessions that started at or before this (same forms as --since).
        #[arg(long)]
        until: Option<String>,
        /// Sessions of this workload (one of the workloads the policy matched).
        #[arg(long)]
        workload: Option<String>,
        /// Sessions to this target (its policy name).
        #[arg(long)]
        target: Option<String>,
        /// Sessions with this connection decision (allow, deny, would_deny, ...).
        #[arg(long)]
        decision: Option<String>,
        /// Sessions recorded on this host.
        #[arg(long)]
        host: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A session's timeline: time offsets, requests, result tables, errors.
    Show {
        /// Session id, a unique prefix of one, or a recording file.
        id: String,
        #[command(flatten)]
        at: Location,
        /// Audit directory: check the file's sha256 against the session's
        /// `connection` record; exits non-zero if they differ.
        #[arg(long)]
        audit: Option<PathBuf>,
    },
    /// Write a session as JSON Lines (the recording itself) or as an asciicast v2
    /// file for the asciinema player.
    Export {
        /// Session id, a unique prefix of one, or a recording file.
        id: String,
        #[command(flatten)]
        at: Location,
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
        /// Output file (default: standard output).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ExportFormat {
    Jsonl,
    Asciicast,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// Session id, a unique prefix of one, or a recording file.
    id: String,
    #[command(flatten)]
    at: Location,
    /// Playback speed: 2 is twice as fast; 0 prints everything at once.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Print everything at once (same as --speed 0).
    #[arg(long)]
    no_wait: bool,
    /// Never wait longer than this many seconds between two events.
    #[arg(long)]
    idle_limit: Option<f64>,
}

pub fn sessions(cmd: SessionsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SessionsCommand::List {
            at,
            since,
            until,
            workload,
            target,
            decision,
            host,
            json,
        } => {
            let now = read::now_us();
            let filter = Filter {
                since_us: since
                    .map(|t| read::parse_time(&t, now))
                    .transpose()
                    .context("--since")?,
                until_us: until
                    .map(|t| read::parse_time(&t, now))
                    .transpose()
                    .context("--until")?,
                workload,
                target,
                decision,
                host,
            };
            let dir = at.dir()?;
            let (found, errs) = read::list(&dir, &filter)?;
            for e in &errs {
                eprintln!("warning: {e}");
            }
            let mut out = std::io::stdout().lock();
            if json {
                for s in &found {
                    writeln!(out, "{}", serde_json::to_string(s)?)?;
                }
            } else {
                print_table(&mut out, &found)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        SessionsCommand::Show { id, at, audit } => {
            let path = read::find(&at.dir()?, &id)?;
            let session = read::load(&path)?;
            print!("{}", render::text(&session));
            for w in &session.warnings {
                eprintln!("warning: {}: {w}", path.display());
            }
            let Some(audit_dir) = audit else {
                return Ok(ExitCode::SUCCESS);
            };
            let actual = read::file_sha256(&path)?;
            match read::audit_sha256(&audit_dir, &session.id)? {
                Some((want, seq)) if want == actual => {
                    println!(
                        "verified: sha256 {actual} matches the audit log's connection record (seq {seq})"
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Some((want, seq)) => {
                    println!(
                        "VERIFY FAILED: the file's sha256 is {actual}, the audit log's connection record (seq {seq}) says {want}: the recording was changed after the session ended"
                    );
                    Ok(ExitCode::FAILURE)
                }
                None => {
                    println!(
                        "NOT VERIFIED: no connection record with a recording for session {} in {} (the session may still be open, or the record is in another copy of the log)",
                        session.id,
                        audit_dir.display()
                    );
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        SessionsCommand::Export {
            id,
            at,
            format,
            output,
        } => {
            let path = read::find(&at.dir()?, &id)?;
            let bytes = match format {
                ExportFormat::Jsonl => {
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?
                }
                ExportFormat::Asciicast => {
                    let session = read::load(&path)?;
                    for w in &session.warnings {
                        eprintln!("warning: {}: {w}", path.display());
                    }
                    render::asciicast(&session).into_bytes()
                }
            };
            match output {
                Some(o) => {
                    std::fs::write(&o, bytes).with_context(|| format!("writing {}", o.display()))?
                }
                None => std::io::stdout().lock().write_all(&bytes)?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    if !(args.speed >= 0.0 && args.speed.is_finite()) {
        anyhow::bail!(
            "--speed {}: must be 0 (no waiting) or a positive number",
            args.speed
        );
    }
    let path = read::find(&args.at.dir()?, &args.id)?;
    let session = read::load(&path)?;
    for w in &session.warnings {
        eprintln!("warning: {}: {w}", path.display());
    }
    let wait = !(args.no_wait || args.speed == 0.0);
    let mut out = std::io::stdout().lock();
    let mut prev = 0u64;
    for f in render::frames(&session) {
        if wait && f.elapsed_us > prev {
            let mut secs = (f.elapsed_us - prev) as f64 / 1_000_000.0 / args.speed;
            if let Some(limit) = args.idle_limit {
                secs = secs.min(limit.max(0.0));
            }
            out.flush()?;
            std::thread::sleep(Duration::from_secs_f64(secs));
        }
        prev = f.elapsed_us;
        writeln!(out, "{}", f.text)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn print_table(out: &mut impl Write, found: &[read::Summary]) -> std::io::Result<()> {
    let rows: Vec<[String; 10]> = found
        .iter()
        .map(|s| {
            let who = [
                s.exe.clone(),
                s.unit.clone(),
                s.user.clone().or_else(|| s.uid.map(|u| format!("uid {u}"))),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
            [
                s.id.clone(),
                s.start.clone(),
                s.duration_ms
                    .map(|d| format!("{}.{:03}s", d / 1000, d % 1000))
                    .unwrap_or_else(|| "open".into()),
                s.host.clone(),
                if s.workloads.is_empty() {
                    "-".into()
                } else {
                    s.workloads.join(",")
                },
                if who.is_empty() { "-".into() } else { who },
                format!(
                    "{} {}",
                    s.target.as_deref().unwrap_or("-"),
                    s.destination.as_deref().unwrap_or("")
                )
                .trim_end()
                .to_string(),
                s.decision.clone().unwrap_or_else(|| "-".into()),
                s.events
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "-".into()),
                match (s.ended, s.truncated) {
                    (_, true) => "truncated".into(),
                    (false, _) => "no end".into(),
                    _ => "".into(),
                },
            ]
        })
        .collect();
    if rows.is_empty() {
        return writeln!(out, "no recorded sessions match");
    }
    let head = [
        "SESSION", "START", "DURATION", "HOST", "WORKLOAD", "PROCESS", "TARGET", "DECISION",
        "EVENTS", "",
    ];
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    writeln!(out, "{}", line(head.to_vec()))?;
    for r in &rows {
        writeln!(out, "{}", line(r.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}
