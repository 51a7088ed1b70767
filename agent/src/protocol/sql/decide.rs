//! Deciding a whole simple-query message: every statement is decided, and the
//! most restrictive decision among them decides the message.

use serde::Serialize;

use super::analyze::Analysis;
use super::session::SqlSession;
use crate::policy::{
    Action, CompiledPolicy, DEFAULT_DENY, Decision, Effect, Mode, Outcome, Request, StatementFacts,
    Subject, UNPARSEABLE, evaluate,
};

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
                Err(e) => out.push(StatementDecision {
                    facts: None,
                    error: Some(e),
                    decision: refused(policy, target),
                }),
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
