//! Deciding a whole simple-query message: every statement is decided, and the
//! most restrictive decision among them decides the message.

use serde::Serialize;

use super::analyze::Analysis;
use super::session::SqlSession;
use crate::policy::{
    Action, CompiledPolicy, DEFAULT_DENY, Decision, Effect, Mode, Outcome, Request, StatementFacts,
    Subject, UNPARSEABLE, evaluate,
};

/// Rule id of an `EXECUTE` of a name the session has not prepared (as far as
/// the agent saw): refused, and told as the server tells it (SQLSTATE 26000).
pub const UNKNOWN_PREPARED: &str = "unknown-prepared-statement";

/// One statement of a message, as decided.
#[derive(Debug, Clone, Serialize)]
pub struct StatementDecision {
    /// The facts decided on (None: the statement could not be decided on its facts,
    /// see `error`).
    pub facts: Option<StatementFacts>,
    /// Why the facts could not be established (unknown prepared statement, ...).
    pub error: Option<String>,
    pub decision: Decision,
}

/// A message, as decided.
#[derive(Debug, Clone, Serialize)]
pub struct MessageDecision {
    pub statements: Vec<StatementDecision>,
    /// The most restrictive decision among the statements (the first of equals).
    pub decision: Decision,
}

fn rank(d: &Decision) -> (u8, u8, bool) {
    let o = match d.outcome {
        Outcome::Allow => 0,
        Outcome::Hold => 1,
        Outcome::Deny => 2,
    };
    let e = match d.decided {
        Effect::Allow => 0,
        Effect::RequireApproval => 1,
        Effect::Kill => 3,
        Effect::Deny => 2,
    };
    // Among equals, a rule's decision says more than the default's.
    (o, e, d.rule != DEFAULT_DENY)
}

/// The most restrictive of `ds` (by outcome, then by what the policy said, then a
/// rule's decision over `default-deny`; the first among equals). None when `ds` is empty.
pub fn most_restrictive(ds: &[Decision]) -> Option<&Decision> {
    let mut best: Option<&Decision> = None;
    for d in ds {
        if best.is_none_or(|b| rank(d) > rank(b)) {
            best = Some(d);
        }
    }
    best
}

/// A statement whose facts cannot be established is refused (rule
/// `unparseable`), whatever `defaults.unparseable` says: the agent cannot know
/// what it would do.
fn refused(policy: &CompiledPolicy, target: u32) -> Decision {
    let mode = policy
        .targets
        .get(target as usize)
        .map(|t| t.mode)
        .unwrap_or(Mode::Enforce);
    Decision {
        outcome: if mode == Mode::Enforce {
            Outcome::Deny
        } else {
            Outcome::Allow
        },
        decided: Effect::Deny,
        rule: UNPARSEABLE.into(),
        mode,
        ..Decision::default()
    }
}

/// Decides every statement of one message in `session`. Statements are decided
/// in order, each with the effects of the earlier ones applied to a copy of the
/// session as if they succeed (a `SET search_path` or `PREPARE` earlier in the
/// same message is taken into account); `session` itself is not changed: call
/// [`SqlSession::completed`] for each statement the server completes.
///
/// An unparseable text is decided as `Action::Unparseable`; a statement whose
/// facts cannot be established (an EXECUTE of an unknown name) is refused. A message
/// with no statement (empty, or only comments) is decided as one statement that
/// matches no condition.
pub fn decide_message(
    policy: &CompiledPolicy,
    subject: &Subject,
    target: u32,
    now_unix: u64,
    session: &SqlSession,
    analysis: &Analysis,
) -> MessageDecision {
    let req = |action: Action<'_>| -> Decision {
        evaluate(
            policy,
            &Request {
                subject,
                target,
                action,
                now_unix,
            },
        )
    };
    let mut out = Vec::new();
    if let Some(e) = &analysis.error {
        out.push(StatementDecision {
            facts: None,
            error: Some(e.clone()),
            decision: req(Action::Unparseable),
        });
    } else if analysis.statements.is_empty() {
        let f = StatementFacts::default();
        let decision = req(Action::Statement(&f));
        out.push(StatementDecision {
            decision,
            facts: Some(f),
            error: None,
        });
    } else {
        // Later statements of the message see the earlier ones' effects, on a
        // copy of the session; a single statement (the usual case) needs none.
        let mut copy = (analysis.statements.len() > 1).then(|| session.clone());
        for st in &analysis.statements {
            let s = copy.as_ref().unwrap_or(session);
            match s.facts_for(st) {
                Ok(f) => {
                    let decision = req(Action::Statement(&f));
                    out.push(StatementDecision {
                        facts: Some(f),
                        error: None,
                        decision,
                    });
                }
                Err(e) => {
                    let mut decision = refused(policy, target);
                    if st.execute.as_ref().is_some_and(|n| s.prepared(n).is_none()) {
                        decision.rule = UNKNOWN_PREPARED.into();
                    }
                    out.push(StatementDecision {
                        facts: None,
                        error: Some(e),
                        decision,
                    })
                }
            }
            if let Some(c) = copy.as_mut() {
                c.completed(st);
            }
        }
    }
    let decision = most_restrictive(&out.iter().map(|d| d.decision.clone()).collect::<Vec<_>>())
        .cloned()
        .unwrap_or_else(|| req(Action::Unparseable));
    MessageDecision {
        statements: out,
        decision,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::sql::{Analyzer, Prepared};
    use std::sync::Arc;

    const POLICY: &str = r#"
apiVersion: portcullis.dev/v1
workloads:
  - name: w
    match: { uid: 1000 }
targets:
  - name: pg
    addresses: ["10.0.0.1"]
    ports: [5432]
    protocol: postgres
rules:
  - id: w-all
    workloads: [w]
    targets: [pg]
    effect: allow
"#;

    #[test]
    fn an_execute_of_a_name_never_prepared_is_refused_as_unknown() {
        let p = CompiledPolicy::from_sources_with(
            &[(std::path::PathBuf::from("p.yaml"), POLICY.to_string())],
            &|_| Err("no DNS in tests".into()),
        )
        .unwrap_or_else(|e| panic!("policy: {e}"));
        let subject = Subject {
            uid: Some(1000),
            ..Default::default()
        };
        let analyzer = Analyzer::new(0);
        let mut session = SqlSession::new("app", None);
        let decide = |session: &SqlSession, sql: &str| {
            decide_message(&p, &subject, 0, 0, session, &analyzer.analyze(sql)).decision
        };
        let d = decide(&session, "EXECUTE _pg3_0(1)");
        assert_eq!(
            (d.outcome, d.rule.as_str()),
            (Outcome::Deny, UNKNOWN_PREPARED)
        );
        // Prepared by the protocol's Parse: decided on what it prepared.
        let text = "SELECT 1";
        session
            .prepare(
                "_pg3_0",
                Arc::new(Prepared {
                    text: Arc::from(text),
                    analysis: analyzer.analyze(text),
                }),
            )
            .expect("prepare");
        let d = decide(&session, "EXECUTE _pg3_0(1)");
        assert_eq!((d.outcome, d.rule.as_str()), (Outcome::Allow, "w-all"));
        // Known but not analysable is not "unknown": it stays unparseable.
        let bad = "SELEC 1";
        session
            .prepare(
                "bad",
                Arc::new(Prepared {
                    text: Arc::from(bad),
                    analysis: analyzer.analyze(bad),
                }),
            )
            .expect("prepare");
        let d = decide(&session, "EXECUTE bad");
        assert_eq!(d.rule, UNPARSEABLE);
    }
}
