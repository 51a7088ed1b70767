//! Runs tests/corpus/sql-evasion.yaml through Analyzer + SqlSession + evaluate.

use std::collections::HashMap;

use serde::Deserialize;

use super::{Analyzer, SqlSession, decide_message};
use crate::policy::{CompiledPolicy, Subject, effect_name};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Corpus {
    target: String,
    db_user: String,
    policy: String,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    sql: String,
    expect: String,
    rule: String,
    why: String,
    #[serde(default)]
    session: Option<String>,
}

const UID: u32 = 4242;

fn load() -> (Corpus, CompiledPolicy) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/corpus/sql-evasion.yaml"
    );
    let text = std::fs::read_to_string(path).expect("read the corpus");
    let corpus: Corpus = serde_yaml_ng::from_str(&text).expect("parse the corpus");
    let policy_text = corpus
        .policy
        .replace("{{ADDRESS}}", "127.0.0.1")
        .replace("{{PORT}}", "5432")
        .replace("{{UID}}", &UID.to_string());
    let dir = std::env::temp_dir().join(format!("portcullis-corpus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("corpus.yaml");
    std::fs::write(&file, policy_text).unwrap();
    let policy = CompiledPolicy::load(&[file]).unwrap_or_else(|e| panic!("corpus policy: {e}"));
    let _ = std::fs::remove_dir_all(&dir);
    (corpus, policy)
}

#[test]
fn sql_evasion_corpus() {
    let (corpus, policy) = load();
    assert!(corpus.cases.len() >= 45, "{} cases", corpus.cases.len());
    let target = policy.target_by_name(&corpus.target).expect("target").id;
    let subject = Subject {
        uid: Some(UID),
        ..Default::default()
    };
    let analyzer = Analyzer::new(1024);
    let mut sessions: HashMap<String, SqlSession> = HashMap::new();
    let mut failures = Vec::new();
    for (i, c) in corpus.cases.iter().enumerate() {
        let mut fresh = SqlSession::new(&corpus.db_user, None);
        let session = match &c.session {
            Some(k) => sessions
                .entry(k.clone())
                .or_insert_with(|| SqlSession::new(&corpus.db_user, None)),
            None => &mut fresh,
        };
        let a = analyzer.analyze(&c.sql);
        let m = decide_message(&policy, &subject, target, 0, session, &a);
        let got = effect_name(m.decision.decided);
        if got != c.expect || m.decision.rule != c.rule {
            failures.push(format!(
                "case {i} ({}): {:?}\n  expected {} by {}, got {got} by {}\n  analysis: {}\n  decided: {}",
                c.why,
                c.sql,
                c.expect,
                c.rule,
                m.decision.rule,
                serde_json::to_string(&*a).unwrap(),
                serde_json::to_string(&m.statements).unwrap(),
            ));
        }
        if m.decision.outcome == crate::policy::Outcome::Allow {
            for st in &a.statements {
                session.completed(st);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus cases failed:\n{}",
        failures.len(),
        corpus.cases.len(),
        failures.join("\n")
    );
}
