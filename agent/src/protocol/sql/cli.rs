//! `portcullis sql analyze`: how the agent reads SQL text, without a policy or a
//! server. Each text is one simple-query message on a new session: the
//! statements the agent splits it into, each statement's kinds, tables (as
//! written and as the session's search_path qualifies them) and functions, or
//! why the agent refuses the text. Used by people writing policies and by the
//! differential test against PostgreSQL (tests/tests/differential.rs).

use std::io::{BufRead, Read, Write};
use std::process::ExitCode;

use serde_json::{Value, json};

use super::{Analyzer, SqlSession};

#[derive(clap::Subcommand)]
pub enum SqlCommand {
    /// Show how the agent splits and analyses SQL text read on stdin: statement
    /// boundaries, kinds, tables and functions, or why it refuses the text.
    /// Exit status 1 when the text (any line, with --lines) is refused.
    Analyze(AnalyzeArgs),
    /// Of the statements in SQL files (psql scripts, or one statement per line),
    /// how many the agent analyses and how many it refuses whatever the policy
    /// says, with the constructs it cannot analyse grouped by leading keywords.
    Coverage(super::coverage::CoverageArgs),
}

#[derive(clap::Args)]
pub struct AnalyzeArgs {
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
    /// Read one message per line, each a JSON string (`"SELECT 1; SELECT 2"`),
    /// and print one JSON document per line, in order. The messages are one
    /// session (each assumed to succeed) until a line `null`, which starts a
    /// new session; the analysis cache is shared by all, as in the proxy.
    #[arg(long)]
    lines: bool,
    /// Database user of the session (for `"$user"` on the search_path).
    #[arg(long, default_value = "postgres")]
    db_user: String,
    /// The session's search_path as a startup option would give it
    /// (default: `"$user", public`).
    #[arg(long)]
    search_path: Option<String>,
    /// Entries of the analysis cache (0: none); the agent's default is 4096.
    #[arg(long, default_value_t = 4096)]
    cache: usize,
}

fn new_session(args: &AnalyzeArgs) -> SqlSession {
    SqlSession::new(&args.db_user, args.search_path.as_deref())
}

/// The agent's view of one message in `session`, as JSON: `refused` is true
/// when the proxy would refuse the message whatever the policy says (the text
/// does not parse, or a statement's facts cannot be established). The
/// session then holds the message's effects, as if every statement succeeded.
fn analyze_message(analyzer: &Analyzer, session: &mut SqlSession, sql: &str) -> Value {
    let analysis = analyzer.analyze(sql);
    let mut refused = analysis.error.is_some();
    let mut statements = Vec::new();
    for st in &analysis.statements {
        // As the proxy decides a message: each statement in a session that has
        // seen the earlier ones complete.
        let (facts, facts_error) = match session.facts_for(st) {
            Ok(f) => (serde_json::to_value(&f).unwrap_or(Value::Null), Value::Null),
            Err(e) => {
                refused = true;
                (Value::Null, Value::String(e))
            }
        };
        statements.push(json!({
            "analysis": serde_json::to_value(&**st).unwrap_or(Value::Null),
            "facts": facts,
            "facts_error": facts_error,
        }));
        session.completed(st);
    }
    json!({
        "refused": refused,
        "error": analysis.error,
        "statements": statements,
        "search_path_candidates": session.candidate_schemas(),
    })
}

fn list(v: &Value) -> String {
    let items: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| match x {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect();
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

fn print_text(out: &mut impl Write, v: &Value) -> std::io::Result<()> {
    if let Some(e) = v["error"].as_str() {
        writeln!(out, "refused: the text does not parse: {e}")?;
        return Ok(());
    }
    let statements = v["statements"].as_array().cloned().unwrap_or_default();
    if statements.is_empty() {
        writeln!(out, "no statement (empty or only comments)")?;
    }
    for (i, s) in statements.iter().enumerate() {
        let a = &s["analysis"];
        writeln!(
            out,
            "statement {}: {}",
            i + 1,
            a["fingerprint"].as_str().unwrap_or("")
        )?;
        if let Some(e) = s["facts_error"].as_str() {
            writeln!(out, "  refused: {e}")?;
            continue;
        }
        let f = &s["facts"];
        writeln!(out, "  kinds:          {}", list(&f["kinds"]))?;
        writeln!(out, "  tables read:    {}", list(&f["tables_read"]))?;
        writeln!(out, "  tables written: {}", list(&f["tables_written"]))?;
        writeln!(out, "  functions:      {}", list(&f["functions"]))?;
        if a["dangerous"].as_array().is_some_and(|d| !d.is_empty()) {
            writeln!(out, "  dangerous:      {}", list(&a["dangerous"]))?;
        }
    }
    writeln!(
        out,
        "search_path candidates after the message: {}",
        list(&v["search_path_candidates"])
    )
}

pub fn run(command: SqlCommand) -> anyhow::Result<ExitCode> {
    match analyze(command) {
        // The reader went away (`| head`): nothing more to say.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(ExitCode::SUCCESS)
        }
        other => other,
    }
}

fn analyze(command: SqlCommand) -> anyhow::Result<ExitCode> {
    let args = match command {
        SqlCommand::Analyze(args) => args,
        SqlCommand::Coverage(args) => return super::coverage::run(args),
    };
    let analyzer = Analyzer::new(args.cache);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut any_refused = false;
    let mut session = new_session(&args);
    if args.lines {
        for (n, line) in std::io::stdin().lock().lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let sql: Option<String> = serde_json::from_str(&line).map_err(|e| {
                anyhow::anyhow!("stdin line {}: not a JSON string or null ({e})", n + 1)
            })?;
            let Some(sql) = sql else {
                session = new_session(&args);
                continue;
            };
            let v = analyze_message(&analyzer, &mut session, &sql);
            any_refused |= v["refused"].as_bool() == Some(true);
            writeln!(out, "{v}")?;
        }
    } else {
        let mut sql = String::new();
        std::io::stdin()
            .read_to_string(&mut sql)
            .map_err(|e| anyhow::anyhow!("stdin is not UTF-8 text: {e}"))?;
        let v = analyze_message(&analyzer, &mut session, &sql);
        any_refused = v["refused"].as_bool() == Some(true);
        if args.json {
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        } else {
            print_text(&mut out, &v)?;
        }
    }
    out.flush()?;
    Ok(if any_refused {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_split_and_a_session_carries_its_effects() {
        let analyzer = Analyzer::new(16);
        let mut session = SqlSession::new("app", None);
        let v = analyze_message(
            &analyzer,
            &mut session,
            "PREPARE p AS DELETE FROM t WHERE id = $1; SELECT 1",
        );
        assert_eq!(v["refused"], false, "{v}");
        assert_eq!(v["statements"].as_array().map(Vec::len), Some(2), "{v}");
        let v = analyze_message(&analyzer, &mut session, "EXECUTE p(1)");
        assert_eq!(v["refused"], false, "{v}");
        let kinds = &v["statements"][0]["facts"]["kinds"];
        assert_eq!(kinds, &serde_json::json!(["execute", "delete"]), "{v}");
        // A new session has not prepared it.
        let mut fresh = SqlSession::new("app", None);
        let v = analyze_message(&analyzer, &mut fresh, "EXECUTE p(1)");
        assert_eq!(v["refused"], true, "{v}");
        assert!(v["statements"][0]["facts_error"].is_string(), "{v}");
        let v = analyze_message(&analyzer, &mut fresh, "SELEC 1");
        assert_eq!(v["refused"], true, "{v}");
        assert!(v["error"].is_string(), "{v}");
    }
}
