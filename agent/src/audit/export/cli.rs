//! `portcullis audit export`: the records of an audit directory (a copy will
//! do; nothing is written) in seq order, filtered by time and type, as JSON
//! lines or OCSF events.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context;

use super::ExportFormat;
use super::reader::{LogReader, Record};

#[derive(clap::Args)]
pub struct ExportArgs {
    /// Only records at or after this time: RFC 3339 (2026-01-05T12:00:00Z) or
    /// an age such as 90s, 15m, 1h, 7d.
    #[arg(long)]
    pub since: Option<String>,
    /// Only records before this time (same forms as --since).
    #[arg(long)]
    pub until: Option<String>,
    /// Only records of this event type (repeat, or separate with commas).
    #[arg(long = "type", value_delimiter = ',')]
    pub types: Vec<String>,
    /// `jsonl`: the records as written (their hashes still verify); `ocsf`:
    /// one OCSF event per line.
    #[arg(long, default_value = "jsonl", value_parser = ["jsonl", "json", "ocsf"])]
    pub format: String,
    /// Audit directory (or one audit file).
    #[arg(default_value = "/var/lib/portcullis/audit")]
    pub path: PathBuf,
}

/// Which records to print.
pub struct Filter {
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub types: Vec<String>,
}

impl Filter {
    pub fn keep(&self, rec: &Record) -> bool {
        if !self.types.is_empty() && !self.types.iter().any(|t| t == rec.event()) {
            return false;
        }
        if self.since.is_none() && self.until.is_none() {
            return true;
        }
        let Some(t) = crate::audit::time::parse_rfc3339_micros(rec.time()) else {
            return false;
        };
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t < u)
    }
}

pub fn run(args: &ExportArgs) -> anyhow::Result<ExitCode> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    let filter = Filter {
        since: args
            .since
            .as_deref()
            .map(|s| crate::audit::time::parse_time_arg(s, now))
            .transpose()
            .map_err(|e| anyhow::anyhow!("--since: {e}"))?,
        until: args
            .until
            .as_deref()
            .map(|s| crate::audit::time::parse_time_arg(s, now))
            .transpose()
            .map_err(|e| anyhow::anyhow!("--until: {e}"))?,
        types: args.types.clone(),
    };
    let format = if args.format == "ocsf" {
        ExportFormat::Ocsf
    } else {
        ExportFormat::Json
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut emit = |rec: &Record| -> std::io::Result<()> {
        if filter.keep(rec) {
            out.write_all(super::payload(rec, format).as_bytes())?;
            out.write_all(b"\n")?;
        }
        Ok(())
    };
    let path = &args.path;
    let meta = std::fs::metadata(path).with_context(|| format!("audit log {}", path.display()))?;
    let mut gaps = 0u64;
    if meta.is_dir() {
        let mut reader = LogReader::new(path, None);
        loop {
            let b = reader
                .read(4096)
                .with_context(|| format!("reading {}", path.display()))?;
            for g in &b.gaps {
                gaps += g.last - g.first + 1;
                eprintln!(
                    "portcullis: warning: records {}..={} are missing from {}",
                    g.first,
                    g.last,
                    path.display()
                );
            }
            if b.records.is_empty() {
                break;
            }
            for r in &b.records {
                if let Err(e) = emit(r) {
                    return broken_pipe(e);
                }
            }
        }
    } else {
        for r in file_records(path)? {
            if let Err(e) = emit(&r) {
                return broken_pipe(e);
            }
        }
    }
    if let Err(e) = out.flush() {
        return broken_pipe(e);
    }
    let _ = gaps;
    Ok(ExitCode::SUCCESS)
}

/// A reader that went away (`| head`) ends the output quietly.
fn broken_pipe(e: std::io::Error) -> anyhow::Result<ExitCode> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(e.into())
    }
}

/// The records of one file, in file order; lines that are not records are skipped.
fn file_records(path: &Path) -> anyhow::Result<Vec<Record>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| Record::parse(l.to_string()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_with_fraction_and_offsets() {
        assert_eq!(
            crate::audit::time::parse_rfc3339_micros("1970-01-01T00:00:00Z"),
            Some(0)
        );
        assert_eq!(
            crate::audit::time::parse_rfc3339_micros("1970-01-01T00:00:01.5Z"),
            Some(1_500_000)
        );
        assert_eq!(
            crate::audit::time::parse_rfc3339_micros("1970-01-01T01:00:00+01:00"),
            Some(0)
        );
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_795_447_515_123_456);
        assert_eq!(
            crate::audit::time::parse_rfc3339_micros(&crate::audit::rfc3339(t)),
            Some(1_795_447_515_123_456),
            "what the writer writes parses back"
        );
        for bad in [
            "2026-01-01T00:00:00é1:00",
            "2026-01-01T00:00:00+é:00",
            "",
            "2026-13-01T00:00:00Z",
            "2026-01-01T00:00:00",
            "2026-01-01T00:00:00.Z",
            "yesterday",
        ] {
            assert_eq!(crate::audit::time::parse_rfc3339_micros(bad), None, "{bad}");
        }
    }

    #[test]
    fn relative_ages() {
        let now = 10_000_000_000;
        assert_eq!(
            crate::audit::time::parse_time_arg("90s", now),
            Ok(now - 90_000_000)
        );
        assert_eq!(
            crate::audit::time::parse_time_arg("1h", now),
            Ok(now - 3_600_000_000)
        );
        assert_eq!(
            crate::audit::time::parse_time_arg("2d", now),
            Ok(now - 172_800_000_000)
        );
        assert!(
            crate::audit::time::parse_time_arg("5y", now)
                .expect_err("unit")
                .contains("unknown unit")
        );
        assert!(crate::audit::time::parse_time_arg("soon", now).is_err());
    }
}
