//! `portcullis sql coverage`: of the statements in SQL files (psql scripts such
//! as PostgreSQL's regression suite, migration scripts, or lists of statements
//! a driver sends), how many the agent analyses and how many it refuses
//! whatever the policy says, with the constructs it refuses grouped by their
//! leading keywords. Tells an operator beforehand what `defaults.unparseable:
//! deny` will refuse.
//!
//! Each file is one session (the statements in order, each assumed to succeed,
//! so that `PREPARE` / `EXECUTE` and `SET search_path` carry over). A file ending
//! in `.sql` is a psql script ([`super::script`]); any other file has one
//! statement per line (a line that is a JSON string is decoded, so a statement
//! may hold newlines; empty lines and lines starting with `--` or `#` are
//! skipped). A directory stands for the `.sql` files in it.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde_json::{Value, json};

use super::script::split_psql_script;
use super::{Analyzer, SqlSession};

#[derive(clap::Args)]
pub struct CoverageArgs {
    /// SQL files or directories of `.sql` files; each argument is reported as
    /// one source.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// How many constructs to list.
    #[arg(long, default_value_t = 30)]
    top: usize,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
}

/// One statement to analyse, and where it came from.
struct Input {
    file: String,
    line: usize,
    text: String,
    uses_variables: bool,
}

#[derive(Default, Clone, Copy)]
struct Tally {
    statements: usize,
    analysed: usize,
    unparseable: usize,
    refused_other: usize,
    skipped: usize,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.statements += o.statements;
        self.analysed += o.analysed;
        self.unparseable += o.unparseable;
        self.refused_other += o.refused_other;
        self.skipped += o.skipped;
    }

    fn json(&self) -> Value {
        json!({
            "statements": self.statements,
            "analysed": self.analysed,
            "unparseable": self.unparseable,
            "refused_other": self.refused_other,
            "skipped_psql_variables": self.skipped,
        })
    }
}

#[derive(Default)]
struct Group {
    count: usize,
    /// Where the parser gave up (`found: X`), with counts.
    stops: HashMap<String, usize>,
    example: Option<(String, usize, String)>,
}

impl Group {
    fn add(&mut self, i: &Input, stop: Option<String>) {
        self.count += 1;
        if let Some(s) = stop {
            *self.stops.entry(s).or_default() += 1;
        }
        if self.example.is_none() {
            self.example = Some((i.file.clone(), i.line, without_comments(&i.text)));
        }
    }

    fn top_stops(&self, n: usize) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = self.stops.iter().map(|(k, c)| (k.clone(), *c)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }
}

/// `text` without the comment lines before the statement (psql sends them
/// with it; they make poor examples).
fn without_comments(text: &str) -> String {
    let mut rest = text.trim_start();
    while let Some(r) = rest.strip_prefix("--") {
        rest = r
            .split_once('\n')
            .map_or("", |(_, after)| after)
            .trim_start();
    }
    rest.to_string()
}

/// The token sqlparser stopped at, from its message (`... found: ADD at Line: 1`).
fn stop_of(error: &str) -> Option<String> {
    let rest = &error[error.find("found: ")? + 7..];
    let end = rest.find(" at Line").unwrap_or(rest.len());
    let s = rest[..end].trim();
    (!s.is_empty()).then(|| s.chars().take(24).collect())
}

fn files_of(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading directory {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "sql") && p.is_file())
            .collect();
        v.sort();
        if v.is_empty() {
            anyhow::bail!("{}: no .sql files in this directory", path.display());
        }
        Ok(v)
    } else {
        Ok(vec![path.to_path_buf()])
    }
}

fn inputs_of(file: &Path) -> anyhow::Result<Vec<Input>> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    // Regression scripts hold text in other encodings on purpose: read lossily.
    let text = String::from_utf8_lossy(&bytes);
    let name = file.display().to_string();
    if file.extension().is_some_and(|x| x == "sql") {
        return Ok(split_psql_script(&text)
            .into_iter()
            .map(|s| Input {
                file: name.clone(),
                line: s.line,
                text: s.text,
                uses_variables: s.uses_variables,
            })
            .collect());
    }
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with("--") || l.starts_with('#') {
            continue;
        }
        let sql = if l.starts_with('"') {
            serde_json::from_str::<String>(l)
                .with_context(|| format!("{name}:{}: not a JSON string", n + 1))?
        } else {
            l.to_string()
        };
        out.push(Input {
            file: name.clone(),
            line: n + 1,
            text: sql,
            uses_variables: false,
        });
    }
    Ok(out)
}

/// What the agent makes of one statement in `session`: analysed (Ok), or why
/// it is refused whatever the policy says (Err: unparseable with its construct
/// and error, or another reason).
enum Verdict {
    Analysed,
    Unparseable { construct: String, error: String },
    Refused(String),
}

fn verdict(analyzer: &Analyzer, session: &mut SqlSession, sql: &str) -> Verdict {
    let a = analyzer.analyze(sql);
    if let Some(e) = &a.error {
        return Verdict::Unparseable {
            construct: a
                .unanalysed
                .clone()
                .unwrap_or_else(|| "a text the agent cannot split or read".into()),
            error: e.clone(),
        };
    }
    let mut refused = None;
    for st in &a.statements {
        if let Some(p) = &st.pinned_setting
            && refused.is_none()
        {
            let setting = p.split('`').nth(1).unwrap_or("a setting");
            refused = Some(format!("changes the pinned setting {setting}"));
        }
        if let Err(e) = session.facts_for(st)
            && refused.is_none()
        {
            refused = Some(e.split(':').next().unwrap_or(&e).to_string());
        }
        session.completed(st);
    }
    match refused {
        Some(r) => Verdict::Refused(r),
        None => Verdict::Analysed,
    }
}

fn pct(n: usize, of: usize) -> String {
    if of == 0 {
        "-".into()
    } else {
        format!("{:.1}%", 100.0 * n as f64 / of as f64)
    }
}

fn one_line(s: &str, max: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > max {
        format!("{}...", flat.chars().take(max).collect::<String>())
    } else {
        flat
    }
}

fn sorted(m: &HashMap<String, Group>) -> Vec<(&String, &Group)> {
    let mut v: Vec<(&String, &Group)> = m.iter().collect();
    v.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
    v
}

pub fn run(args: CoverageArgs) -> anyhow::Result<ExitCode> {
    let analyzer = Analyzer::new(4096);
    let mut sources = Vec::new();
    let mut total = Tally::default();
    let mut unparseable: HashMap<String, Group> = HashMap::new();
    let mut other: HashMap<String, Group> = HashMap::new();
    for path in &args.paths {
        let files = files_of(path)?;
        let mut tally = Tally::default();
        for f in &files {
            let mut session = SqlSession::new("postgres", None);
            for i in inputs_of(f)? {
                tally.statements += 1;
                if i.uses_variables {
                    tally.skipped += 1;
                    continue;
                }
                match verdict(&analyzer, &mut session, &i.text) {
                    Verdict::Analysed => tally.analysed += 1,
                    Verdict::Unparseable { construct, error } => {
                        tally.unparseable += 1;
                        unparseable
                            .entry(construct)
                            .or_default()
                            .add(&i, stop_of(&error));
                    }
                    Verdict::Refused(why) => {
                        tally.refused_other += 1;
                        other.entry(why).or_default().add(&i, None);
                    }
                }
            }
        }
        total.add(&tally);
        sources.push((path.display().to_string(), files.len(), tally));
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let unparseable = sorted(&unparseable);
    let other = sorted(&other);
    if args.json {
        let group = |(k, g): &(&String, &Group)| {
            let (file, line, text) = g.example.clone().unwrap_or_default();
            json!({
                "construct": k,
                "count": g.count,
                "parser_stops_at": g.top_stops(5),
                "example": {"file": file, "line": line, "text": text},
            })
        };
        let v = json!({
            "sources": sources.iter().map(|(name, files, t)| {
                let mut j = t.json();
                j["source"] = json!(name);
                j["files"] = json!(files);
                j
            }).collect::<Vec<_>>(),
            "total": total.json(),
            "unparseable": unparseable.iter().map(group).collect::<Vec<_>>(),
            "refused_other": other.iter().map(group).collect::<Vec<_>>(),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<48} {:>10} {:>16} {:>16} {:>9} {:>9}",
        "source", "statements", "analysed", "unparseable", "refused", "skipped"
    )?;
    let row = |out: &mut std::io::StdoutLock<'_>, name: &str, t: &Tally| -> std::io::Result<()> {
        let analysed_of = t.statements - t.skipped;
        writeln!(
            out,
            "{:<48} {:>10} {:>9} {:>6} {:>9} {:>6} {:>9} {:>9}",
            one_line(name, 48),
            t.statements,
            t.analysed,
            pct(t.analysed, analysed_of),
            t.unparseable,
            pct(t.unparseable, analysed_of),
            t.refused_other,
            t.skipped
        )
    };
    for (name, files, t) in &sources {
        row(&mut out, &format!("{name} ({files} files)"), t)?;
    }
    if sources.len() > 1 {
        row(&mut out, "total", &total)?;
    }
    writeln!(
        out,
        "(percentages of the statements not skipped; skipped: they use psql variables, whose values only psql knows; refused: analysed but refused whatever the policy says)"
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "refused as unparseable, by construct ({} constructs; top {}):",
        unparseable.len(),
        args.top.min(unparseable.len())
    )?;
    writeln!(
        out,
        "{:>7}  {:<28} {:<36} example",
        "count", "construct", "parser stops at"
    )?;
    for (k, g) in unparseable.iter().take(args.top) {
        let stops: Vec<String> = g
            .top_stops(3)
            .into_iter()
            .map(|(s, c)| format!("{s} ({c})"))
            .collect();
        let (file, line, text) = g.example.clone().unwrap_or_default();
        let file = Path::new(&file)
            .file_name()
            .map(|f| f.to_string_lossy().to_string())
            .unwrap_or(file);
        writeln!(
            out,
            "{:>7}  {:<28} {:<36} {file}:{line}: {}",
            g.count,
            one_line(k, 28),
            one_line(&stops.join(", "), 36),
            one_line(&text, 90)
        )?;
    }
    if !other.is_empty() {
        writeln!(out)?;
        writeln!(out, "refused whatever the policy says, though analysed:")?;
        for (k, g) in other.iter().take(args.top) {
            let (file, line, text) = g.example.clone().unwrap_or_default();
            let file = Path::new(&file)
                .file_name()
                .map(|f| f.to_string_lossy().to_string())
                .unwrap_or(file);
            writeln!(
                out,
                "{:>7}  {:<65} {file}:{line}: {}",
                g.count,
                one_line(k, 65),
                one_line(&text, 60)
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
