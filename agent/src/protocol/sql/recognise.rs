//! Valid PostgreSQL that sqlparser 0.61 does not parse, understood by the
//! agent's own recognisers, and the name of a construct the agent refuses.
//!
//! Each recogniser reads one statement (a piece of the agent's split at
//! semicolons, see `analyze::split_statements`) token by token and accepts
//! only the grammar it knows to the end of the statement: a token it does not
//! expect makes it give up, and the statement stays unparseable (refused unless
//! the target's `defaults.unparseable` is `allow`). Invariants:
//! - Nothing is under-reported: every token of the statement is either a
//!   keyword, a name or literal whose meaning the recogniser states, or part of
//!   an expression that sqlparser parses on its own and whose facts (functions,
//!   tables, dangerous features, pinned settings) are taken whole.
//! - Names are folded as the server folds them (quoted as written, unquoted
//!   ASCII lower-cased); the objects a statement acts on are named in its
//!   privileges (`alter` on the type), what it reaches beyond them and cannot
//!   name (typed tables under `CASCADE`, the columns a domain check scans) is an
//!   unnamed privilege that only a rule listing no object grants.
//! - Expressions are parsed from the statement's own text, never from tokens
//!   rendered again (sqlparser renders some tokens differently from how they
//!   were written).
//!
//! The constructs: `MOVE` and the `FETCH` directions sqlparser lacks; `ALTER
//! TYPE` attribute actions, `OWNER TO`, `SET SCHEMA`; `CREATE DOMAIN` with
//! `NULL` / `NOT NULL` constraints or without `AS`; `ALTER DOMAIN`; `COPY ...
//! FROM ... WHERE`; `CREATE ROLE` / `USER` / `GROUP` with the options sqlparser
//! does not read; and, before any parse, an empty target list (`SELECT;`,
//! `SELECT WHERE ...`, `SELECT INTO t FROM ...`), which sqlparser rejects or
//! misreads (`SELECT INTO t FROM u` as a column named `into`).

use std::ops::ControlFlow;

use sqlparser::ast::{self, Expr, SelectItem, SetExpr, Statement, VisitMut, VisitorMut};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Location, Token, Tokenizer};

use super::analyze::{
    Piece, StatementInfo, byte_offset, complete_privileges, copy_without_options,
    fingerprint_tokens, line_starts, push_unique, statement_info, word,
};
use crate::policy::StatementFacts;
use crate::policy::grants::{self, On, Privilege};
use crate::policy::spec::StatementKind as K;

// ---- the name of a construct ---------------------------------------------------------------

/// Words that qualify the object type after CREATE / ALTER / DROP and are
/// skipped in a construct's name.
const MODIFIERS: &[&str] = &[
    "OR",
    "REPLACE",
    "TEMP",
    "TEMPORARY",
    "UNLOGGED",
    "GLOBAL",
    "LOCAL",
    "TRUSTED",
    "PROCEDURAL",
    "RECURSIVE",
    "CONCURRENTLY",
];

/// Object types written in two words (`MATERIALIZED VIEW`, `TEXT SEARCH ...`).
const TWO_WORD_TYPES: &[&str] = &[
    "MATERIALIZED",
    "FOREIGN",
    "EVENT",
    "TEXT",
    "OPERATOR",
    "DEFAULT",
    "ACCESS",
    "USER",
    "UNIQUE",
    "SEARCH",
];

/// How the agent names a statement's construct in a refusal and in the
/// coverage report: its leading keyword, and for DDL the object type
/// (`ALTER TYPE`, `CREATE MATERIALIZED VIEW`, `MOVE`, `SELECT`).
pub fn construct(tokens: &[Token]) -> String {
    // Unquoted words: the first two whatever they are (`MOVE`, `ALTER
    // PUBLICATION`), later ones while they are keywords.
    let words: Vec<String> = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .enumerate()
        .map_while(|(i, t)| match t {
            Token::Word(w)
                if w.quote_style.is_none() && (i < 2 || w.keyword != Keyword::NoKeyword) =>
            {
                Some(w.value.to_ascii_uppercase())
            }
            _ => None,
        })
        .take(8)
        .collect();
    let Some(first) = words.first() else {
        return match tokens.iter().find(|t| !matches!(t, Token::Whitespace(_))) {
            Some(t) => format!("a statement starting with `{t}`"),
            None => "an empty statement".into(),
        };
    };
    let mut out = vec![first.clone()];
    if matches!(
        first.as_str(),
        "CREATE" | "ALTER" | "DROP" | "COMMENT" | "SECURITY" | "IMPORT" | "REFRESH"
    ) {
        let mut rest = words[1..].iter().skip_while(|w| {
            MODIFIERS.contains(&w.as_str()) || (first == "COMMENT" && w.as_str() == "ON")
        });
        if let Some(w) = rest.next() {
            out.push(w.clone());
            if TWO_WORD_TYPES.contains(&w.as_str())
                && let Some(w2) = rest.next()
            {
                out.push(w2.clone());
                if w2 == "SEARCH"
                    && let Some(w3) = rest.next()
                {
                    out.push(w3.clone());
                }
            }
        }
    }
    out.join(" ")
}

// ---- empty target lists --------------------------------------------------------------------

/// Tokens after which a `SELECT` has an empty target list: reserved words that
/// never start an expression (FROM aside: sqlparser reads `SELECT FROM t`).
fn ends_target_list(t: Option<&Token>) -> bool {
    match t {
        None | Some(Token::SemiColon) | Some(Token::RParen) | Some(Token::EOF) => true,
        Some(Token::Word(w)) if w.quote_style.is_none() => matches!(
            w.keyword,
            Keyword::WHERE
                | Keyword::INTO
                | Keyword::GROUP
                | Keyword::HAVING
                | Keyword::WINDOW
                | Keyword::ORDER
                | Keyword::LIMIT
                | Keyword::OFFSET
                | Keyword::FETCH
                | Keyword::FOR
                | Keyword::UNION
                | Keyword::INTERSECT
                | Keyword::EXCEPT
        ),
        _ => false,
    }
}

fn is_kw(t: Option<&Token>, k: Keyword) -> bool {
    matches!(t, Some(Token::Word(w)) if w.quote_style.is_none() && w.keyword == k)
}

/// Indices (into `sig`, the significant tokens) of the `SELECT` (or `SELECT
/// ALL`) tokens that begin a query with an empty target list. `SELECT` as a
/// privilege (`GRANT SELECT`, `FOR SELECT` of a policy, `ON SELECT` of a rule)
/// is not a query.
fn empty_targets(sig: &[&Token]) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, t) in sig.iter().enumerate() {
        if !is_kw(Some(t), Keyword::SELECT) {
            continue;
        }
        let prev = i.checked_sub(1).map(|k| sig[k]);
        let prev2 = i.checked_sub(2).map(|k| sig[k]);
        let privilege = is_kw(prev, Keyword::GRANT)
            || is_kw(prev, Keyword::REVOKE)
            || is_kw(prev, Keyword::ON)
            || matches!(prev, Some(Token::Comma))
            || (is_kw(prev, Keyword::FOR)
                && !(is_kw(prev2, Keyword::CURSOR) || is_kw(prev2, Keyword::HOLD)));
        if privilege {
            continue;
        }
        let mut at = i;
        if is_kw(sig.get(i + 1).copied(), Keyword::ALL) {
            at = i + 1;
        }
        if ends_target_list(sig.get(at + 1).copied()) {
            out.push(at);
        }
    }
    out
}

/// Whether a text (its tokens, whitespace included or not) has an empty
/// target list: only those texts pay for [`parse_filled`].
pub(super) fn has_empty_target(tokens: &[Token]) -> bool {
    let sig: Vec<&Token> = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_) | Token::EOF))
        .collect();
    !empty_targets(&sig).is_empty()
}

/// Removes the placeholders [`parse_filled`] put in empty target lists.
struct Unfill<'a>(&'a [Location]);

impl Unfill<'_> {
    fn clear(&self, e: &mut SetExpr) {
        match e {
            SetExpr::Select(s) => {
                if let [SelectItem::UnnamedExpr(Expr::Value(v))] = s.projection.as_slice()
                    && v.value == ast::Value::Null
                    && self.0.contains(&v.span.start)
                {
                    s.projection.clear();
                }
            }
            SetExpr::SetOperation { left, right, .. } => {
                self.clear(left);
                self.clear(right);
            }
            _ => {}
        }
    }
}

impl VisitorMut for Unfill<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, q: &mut ast::Query) -> ControlFlow<()> {
        self.clear(&mut q.body);
        ControlFlow::Continue(())
    }
}

/// Parses a text with empty target lists: a `NULL` is put in each (which
/// reads nothing and calls nothing), the text is parsed, and the `NULL`s are
/// taken out of the trees again, so that the analysis and the fingerprint are
/// those of the text as written.
pub(super) fn parse_filled(sql: &str) -> Result<Vec<Statement>, ParserError> {
    let dialect = PostgreSqlDialect {};
    let fail = |e: String| ParserError::ParserError(e);
    let spanned = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| fail(e.to_string()))?;
    let sig: Vec<_> = spanned
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_) | Token::EOF))
        .collect();
    let toks: Vec<&Token> = sig.iter().map(|t| &t.token).collect();
    let lines = line_starts(sql);
    let mut inserts = Vec::new();
    for i in empty_targets(&toks) {
        inserts.push(byte_offset(sql, &lines, sig[i].span.end).map_err(fail)?);
    }
    if inserts.is_empty() {
        return Parser::parse_sql(&dialect, sql);
    }
    let mut text = String::with_capacity(sql.len() + 5 * inserts.len());
    let mut placed = Vec::new();
    let mut from = 0;
    for at in inserts {
        let head = sql
            .get(from..at)
            .ok_or_else(|| fail("cannot place a target".into()))?;
        text.push_str(head);
        text.push(' ');
        placed.push(text.len());
        text.push_str("NULL");
        from = at;
    }
    text.push_str(sql.get(from..).unwrap_or(""));
    // Where the NULLs are, as the parser's spans say it.
    let new_lines = line_starts(&text);
    let mut at = Vec::new();
    for t in Tokenizer::new(&dialect, &text)
        .tokenize_with_location()
        .map_err(|e| fail(e.to_string()))?
    {
        if placed.contains(&byte_offset(&text, &new_lines, t.span.start).map_err(fail)?) {
            at.push(t.span.start);
        }
    }
    let mut stmts = Parser::parse_sql(&dialect, &text)?;
    for s in &mut stmts {
        let _ = s.visit(&mut Unfill(&at));
    }
    Ok(stmts)
}

// ---- helpers ------------------------------------------------------------------------------

/// A token of a piece with where it is in the piece's text (bytes).
struct Spanned {
    tok: Token,
    start: usize,
    end: usize,
}

/// The significant tokens of `text` with their byte ranges; None unless they
/// are exactly `expect` (the piece's own tokens).
fn spans(text: &str, expect: &[Token]) -> Option<Vec<Spanned>> {
    let dialect = PostgreSqlDialect {};
    let lines = line_starts(text);
    let mut out = Vec::new();
    for t in Tokenizer::new(&dialect, text)
        .tokenize_with_location()
        .ok()?
    {
        if matches!(t.token, Token::Whitespace(_) | Token::EOF) {
            continue;
        }
        let start = byte_offset(text, &lines, t.span.start).ok()?;
        let end = byte_offset(text, &lines, t.span.end).ok()?;
        out.push(Spanned {
            tok: t.token,
            start,
            end,
        });
    }
    let same = out.len() == expect.len() && out.iter().zip(expect).all(|(a, b)| a.tok == *b);
    same.then_some(out)
}

/// A name part as the server folds it.
fn folded(t: Option<&Token>) -> Option<String> {
    match t {
        Some(Token::Word(w)) if w.quote_style == Some('"') => Some(w.value.clone()),
        Some(Token::Word(w)) if w.quote_style.is_none() => Some(w.value.to_ascii_lowercase()),
        _ => None,
    }
}

/// `name`, `schema.name` or `db.schema.name` at `i` (the catalog part dropped,
/// as the analysis does for tables): the name and the index after it.
fn qualified_name(t: &[Token], mut i: usize) -> Option<(String, usize)> {
    let mut parts = vec![folded(t.get(i))?];
    i += 1;
    while matches!(t.get(i), Some(Token::Period)) {
        parts.push(folded(t.get(i + 1))?);
        i += 2;
    }
    if parts.len() > 3 {
        return None;
    }
    let n = parts.len();
    Some((parts[n.saturating_sub(2)..].join("."), i))
}

/// A signed integer at `i` (`5`, `-1`, `+2`): the index after it.
fn signed_int(t: &[Token], i: usize) -> Option<usize> {
    let j = match t.get(i) {
        Some(Token::Minus | Token::Plus) => i + 1,
        _ => i,
    };
    match t.get(j) {
        Some(Token::Number(n, false)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            Some(j + 1)
        }
        _ => None,
    }
}

fn is_string(t: Option<&Token>) -> bool {
    matches!(
        t,
        Some(Token::SingleQuotedString(_) | Token::EscapedStringLiteral(_))
    )
}

/// The end of a data type starting at `i`: names, dots, numbers and brackets
/// (`varchar(10)`, `numeric(10, 2)`, `int[]`, `double precision`,
/// `pg_catalog.int4`, `timestamp with time zone`), up to a word of `stop` or a
/// comma outside brackets. None when it holds anything else (an expression
/// cannot be written there) or is empty.
fn type_end(t: &[Token], mut i: usize, stop: &[&str]) -> Option<usize> {
    let start = i;
    // Inside the brackets of a type modifier or an array bound.
    let mut inside = false;
    while let Some(tok) = t.get(i) {
        match tok {
            Token::LParen | Token::LBracket if !inside => inside = true,
            Token::RParen | Token::RBracket if inside => inside = false,
            Token::Comma if !inside => break,
            Token::Comma | Token::Number(..) if inside => {}
            Token::Period if !inside => {}
            Token::Word(w) => {
                if !inside
                    && w.quote_style.is_none()
                    && stop.contains(&w.value.to_ascii_uppercase().as_str())
                {
                    break;
                }
            }
            _ => return None,
        }
        i += 1;
    }
    (!inside && i > start).then_some(i)
}

/// What a recogniser found, turned into a [`StatementInfo`] at the end.
struct Found {
    facts: StatementFacts,
    privileges: Vec<Privilege>,
    dangerous: Vec<String>,
    literal_dependent: bool,
    pinned: Option<String>,
}

impl Found {
    fn new(kind: K) -> Self {
        Found {
            facts: StatementFacts {
                kinds: vec![kind],
                ..Default::default()
            },
            privileges: Vec::new(),
            dangerous: Vec::new(),
            literal_dependent: false,
            pinned: None,
        }
    }

    /// `action` on a named object in a schema, which the statement changes.
    fn on_object(&mut self, action: K, name: String) {
        grants::push(&mut self.privileges, Privilege::table(action, name.clone()));
        push_unique(&mut self.facts.tables_written, name);
    }

    fn unnamed(&mut self, action: K, what: impl Into<String>) {
        grants::push(&mut self.privileges, Privilege::unnamed(action, what));
    }

    /// Takes the facts of an expression (see [`expression`]): what it calls and
    /// reads, its dangers and pinned settings; not the `select` it was analysed as.
    fn absorb(&mut self, e: StatementInfo) {
        for t in e.facts.tables_read {
            push_unique(&mut self.facts.tables_read, t);
        }
        for f in e.facts.functions {
            push_unique(&mut self.facts.functions, f);
        }
        for p in e.facts.privileges {
            if p.action == K::Select && p.on == On::Statement {
                continue;
            }
            grants::push(&mut self.privileges, p);
        }
        for d in e.dangerous {
            push_unique(&mut self.dangerous, d);
        }
        self.literal_dependent |= e.literal_dependent;
        if self.pinned.is_none() {
            self.pinned = e.pinned_setting;
        }
    }

    fn finish(mut self, t: &[Token]) -> StatementInfo {
        complete_privileges(&mut self.facts, self.privileges);
        StatementInfo {
            facts: self.facts,
            fingerprint: fingerprint_tokens(t),
            dangerous: self.dangerous,
            literal_dependent: self.literal_dependent,
            pinned_setting: self.pinned,
            ..Default::default()
        }
    }
}

/// The facts of one expression written in `text` (a CHECK, a DEFAULT, a
/// WHERE), parsed by sqlparser on its own: None unless the whole text is one
/// expression.
fn expression(text: &str) -> Option<StatementInfo> {
    let dialect = PostgreSqlDialect {};
    let mut p = Parser::new(&dialect).try_with_sql(text).ok()?;
    p.parse_expr().ok()?;
    if p.peek_token().token != Token::EOF {
        return None;
    }
    // Parenthesised, so that nothing in it can read as a clause of the SELECT.
    let stmts = parse_filled(&format!("SELECT ({text}\n)")).ok()?;
    let info = match stmts.as_slice() {
        [s @ Statement::Query(_)] => statement_info(s),
        _ => return None,
    };
    // A change of the search_path in a condition is not followed.
    (info.set_search_path.is_none() && !info.reset_search_path).then_some(info)
}

/// The index of the token closing the bracket opened at `i`.
fn closing(t: &[Token], i: usize) -> Option<usize> {
    let mut depth = 0i32;
    for (k, tok) in t.iter().enumerate().skip(i) {
        match tok {
            Token::LParen => depth += 1,
            Token::RParen => {
                depth -= 1;
                if depth == 0 {
                    return Some(k);
                }
            }
            _ => {}
        }
    }
    None
}

// ---- the recognisers -----------------------------------------------------------------------

/// The statement `p`, if one of the recognisers understands it.
pub(super) fn recognise(p: &Piece) -> Option<StatementInfo> {
    let t = &p.tokens;
    let w = |i: usize| word(t.get(i));
    match (w(0).as_deref(), w(1).as_deref()) {
        (Some("MOVE" | "FETCH"), _) => cursor_move(t),
        (Some("ALTER"), Some("TYPE")) => alter_type(t),
        (Some("ALTER"), Some("DOMAIN")) => alter_domain(p),
        (Some("CREATE"), Some("DOMAIN")) => create_domain(p),
        (Some("CREATE"), Some("ROLE" | "USER" | "GROUP")) => create_role(t),
        (Some("COPY"), _) => copy_where(p),
        _ => None,
    }
}

/// `MOVE` / `FETCH [direction] [FROM | IN] cursor`: moves a cursor declared
/// earlier (its query was decided then) and returns its rows. Kind `other`,
/// as sqlparser's FETCH.
fn cursor_move(t: &[Token]) -> Option<StatementInfo> {
    let w = |i: usize| word(t.get(i));
    let mut i = 1;
    match w(i).as_deref() {
        Some("NEXT" | "PRIOR" | "FIRST" | "LAST" | "ALL") => i += 1,
        Some("ABSOLUTE" | "RELATIVE") => i = signed_int(t, i + 1)?,
        Some("FORWARD" | "BACKWARD") => {
            i += 1;
            if w(i).as_deref() == Some("ALL") {
                i += 1;
            } else if let Some(j) = signed_int(t, i) {
                i = j;
            }
        }
        _ => {
            if let Some(j) = signed_int(t, i) {
                i = j;
            }
        }
    }
    if matches!(w(i).as_deref(), Some("FROM" | "IN")) {
        i += 1;
    }
    folded(t.get(i))?;
    if i + 1 != t.len() {
        return None;
    }
    Some(Found::new(K::Other).finish(t))
}

/// `[CASCADE | RESTRICT]` at `i`: the index after it, and whether it cascades.
fn drop_behaviour(t: &[Token], i: usize) -> (usize, bool) {
    match word(t.get(i)).as_deref() {
        Some("CASCADE") => (i + 1, true),
        Some("RESTRICT") => (i + 1, false),
        _ => (i, false),
    }
}

/// `ALTER TYPE name` with attribute actions (`ADD ATTRIBUTE a type [COLLATE c]`,
/// `DROP ATTRIBUTE [IF EXISTS] a`, `ALTER ATTRIBUTE a [SET DATA] TYPE type
/// [COLLATE c]`, each `[CASCADE | RESTRICT]`, separated by commas), `RENAME
/// ATTRIBUTE a TO b`, `RENAME TO n`, `OWNER TO role`, `SET SCHEMA s`, `ADD VALUE
/// [IF NOT EXISTS] 'v' [BEFORE | AFTER 'w']`, `RENAME VALUE 'a' TO 'b'`.
/// `alter` on the type; `CASCADE` also alters the tables typed by it (unnamed);
/// `SET SCHEMA` creates in the new schema.
fn alter_type(t: &[Token]) -> Option<StatementInfo> {
    let w = |i: usize| word(t.get(i));
    let (name, mut i) = qualified_name(t, 2)?;
    let mut f = Found::new(K::Alter);
    f.on_object(K::Alter, name);
    let end = |i: usize| (i == t.len()).then_some(());
    match (w(i).as_deref(), w(i + 1).as_deref()) {
        (Some("RENAME"), Some("ATTRIBUTE")) => {
            folded(t.get(i + 2))?;
            if w(i + 3).as_deref() != Some("TO") {
                return None;
            }
            folded(t.get(i + 4))?;
            let (j, cascade) = drop_behaviour(t, i + 5);
            if cascade {
                f.unnamed(K::Alter, "the tables typed by it (CASCADE)");
            }
            end(j)?;
        }
        (Some("RENAME"), Some("TO")) => {
            folded(t.get(i + 2))?;
            end(i + 3)?;
        }
        (Some("RENAME"), Some("VALUE")) => {
            if !(is_string(t.get(i + 2))
                && w(i + 3).as_deref() == Some("TO")
                && is_string(t.get(i + 4)))
            {
                return None;
            }
            end(i + 5)?;
        }
        (Some("OWNER"), Some("TO")) => {
            folded(t.get(i + 2))?;
            end(i + 3)?;
        }
        (Some("SET"), Some("SCHEMA")) => {
            let s = folded(t.get(i + 2))?;
            grants::push(
                &mut f.privileges,
                Privilege::table(K::Create, format!("{s}.*")),
            );
            end(i + 3)?;
        }
        (Some("ADD"), Some("VALUE")) => {
            i += 2;
            if w(i).as_deref() == Some("IF") {
                if !(w(i + 1).as_deref() == Some("NOT") && w(i + 2).as_deref() == Some("EXISTS")) {
                    return None;
                }
                i += 3;
            }
            if !is_string(t.get(i)) {
                return None;
            }
            i += 1;
            if matches!(w(i).as_deref(), Some("BEFORE" | "AFTER")) {
                if !is_string(t.get(i + 1)) {
                    return None;
                }
                i += 2;
            }
            end(i)?;
        }
        _ => loop {
            let stop = ["COLLATE", "CASCADE", "RESTRICT"];
            match (w(i).as_deref(), w(i + 1).as_deref()) {
                (Some("ADD"), Some("ATTRIBUTE")) => {
                    folded(t.get(i + 2))?;
                    i = type_end(t, i + 3, &stop)?;
                }
                (Some("DROP"), Some("ATTRIBUTE")) => {
                    i += 2;
                    if w(i).as_deref() == Some("IF") {
                        if w(i + 1).as_deref() != Some("EXISTS") {
                            return None;
                        }
                        i += 2;
                    }
                    folded(t.get(i))?;
                    i += 1;
                }
                (Some("ALTER"), Some("ATTRIBUTE")) => {
                    folded(t.get(i + 2))?;
                    i += 3;
                    if w(i).as_deref() == Some("SET") {
                        if w(i + 1).as_deref() != Some("DATA") {
                            return None;
                        }
                        i += 2;
                    }
                    if w(i).as_deref() != Some("TYPE") {
                        return None;
                    }
                    i = type_end(t, i + 1, &stop)?;
                }
                _ => return None,
            }
            if w(i).as_deref() == Some("COLLATE") {
                let (_, j) = qualified_name(t, i + 1)?;
                i = j;
            }
            let (j, cascade) = drop_behaviour(t, i);
            i = j;
            if cascade {
                f.unnamed(K::Alter, "the tables typed by it (CASCADE)");
            }
            match t.get(i) {
                None => break,
                Some(Token::Comma) => i += 1,
                Some(_) => return None,
            }
        },
    }
    Some(f.finish(t))
}

/// Words that end a DEFAULT expression of a domain (a `b_expr` in the
/// server's grammar: none of them can continue it at the top level).
const DOMAIN_CLAUSES: &[&str] = &["COLLATE", "DEFAULT", "CONSTRAINT", "CHECK", "NULL", "NOT"];

/// The end of a DEFAULT expression starting at `i` (its first token always
/// belongs to it: `DEFAULT NULL`).
fn default_end(t: &[Token], i: usize) -> usize {
    let mut depth = 0i32;
    let mut case = 0i32;
    let mut k = i;
    while let Some(tok) = t.get(k) {
        match tok {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket => depth -= 1,
            _ => {}
        }
        let w = word(Some(tok));
        match w.as_deref() {
            Some("CASE") => case += 1,
            Some("END") => case -= 1,
            Some(x) if k > i && depth == 0 && case <= 0 && DOMAIN_CLAUSES.contains(&x) => break,
            _ => {}
        }
        k += 1;
    }
    k
}

/// `CREATE DOMAIN name [AS] type [COLLATE c] [DEFAULT expr] [[CONSTRAINT n]
/// {NOT NULL | NULL | CHECK (expr)}] ...` in any order: read by sqlparser
/// once the clauses it lacks are taken out (the NULL constraints, which run
/// nothing, and COLLATE, a name) and the rest put in its order, each from the
/// statement's own text; `create` on the domain, and what its DEFAULT and
/// CHECK expressions call.
fn create_domain(p: &Piece) -> Option<StatementInfo> {
    let t = &p.tokens;
    let sp = spans(&p.text, t)?;
    let text = |a: usize, b: usize| p.text.get(sp.get(a)?.start..sp.get(b)?.end);
    let w = |i: usize| word(t.get(i));
    let (_, mut i) = qualified_name(t, 2)?;
    let name = text(2, i - 1)?;
    if w(i).as_deref() == Some("AS") {
        i += 1;
    }
    let ty_start = i;
    i = type_end(t, i, DOMAIN_CLAUSES)?;
    if matches!(t.get(i), Some(Token::Comma)) {
        return None;
    }
    let ty = text(ty_start, i - 1)?;
    let mut default = None;
    let mut checks = Vec::new();
    while i < t.len() {
        match (w(i).as_deref(), w(i + 1).as_deref()) {
            (Some("COLLATE"), _) => {
                let (_, j) = qualified_name(t, i + 1)?;
                i = j;
            }
            (Some("DEFAULT"), _) => {
                if default.is_some() {
                    return None;
                }
                let end = default_end(t, i + 1);
                if end == i + 1 {
                    return None;
                }
                default = Some(text(i + 1, end - 1)?);
                i = end;
            }
            (Some("CONSTRAINT"), _) => {
                folded(t.get(i + 1))?;
                i += 2;
                if !matches!(w(i).as_deref(), Some("NOT" | "NULL" | "CHECK")) {
                    return None;
                }
            }
            (Some("NOT"), Some("NULL")) => i += 2,
            (Some("NULL"), _) => i += 1,
            (Some("CHECK"), _) if matches!(t.get(i + 1), Some(Token::LParen)) => {
                let close = closing(t, i + 1)?;
                checks.push(text(i + 1, close)?);
                i = close + 1;
            }
            _ => return None,
        }
    }
    let mut sql = format!("CREATE DOMAIN {name} AS {ty}");
    if let Some(d) = default {
        sql.push_str(&format!(" DEFAULT ({d}\n)"));
    }
    for c in checks {
        sql.push_str(&format!(" CHECK {c}"));
    }
    let stmts = parse_filled(&sql).ok()?;
    let [s @ Statement::CreateDomain(_)] = stmts.as_slice() else {
        return None;
    };
    let mut info = statement_info(s);
    info.fingerprint = fingerprint_tokens(t);
    Some(info)
}

/// `ALTER DOMAIN name` with `SET DEFAULT expr`, `DROP DEFAULT`, `SET | DROP NOT
/// NULL`, `ADD [CONSTRAINT n] {CHECK (expr) | NOT NULL} [NOT VALID]`, `DROP
/// CONSTRAINT [IF EXISTS] n [CASCADE | RESTRICT]`, `RENAME CONSTRAINT a TO b`,
/// `VALIDATE CONSTRAINT n`, `RENAME TO n`, `OWNER TO role`, `SET SCHEMA s`.
/// `alter` on the domain; a constraint checked against the existing data
/// (`SET NOT NULL`, `ADD` without `NOT VALID`, `VALIDATE`) reads every column
/// of the domain in every table (unnamed); what its expressions call.
fn alter_domain(p: &Piece) -> Option<StatementInfo> {
    let t = &p.tokens;
    let w = |i: usize| word(t.get(i));
    let (name, i) = qualified_name(t, 2)?;
    let mut f = Found::new(K::Alter);
    f.on_object(K::Alter, name);
    let scans = "the columns of every table that uses the domain (checked against the constraint)";
    let end = |j: usize| (j == t.len()).then_some(());
    match (w(i).as_deref(), w(i + 1).as_deref()) {
        (Some("SET"), Some("DEFAULT")) => {
            let sp = spans(&p.text, t)?;
            if i + 2 >= t.len() {
                return None;
            }
            let text = p.text.get(sp[i + 2].start..sp[t.len() - 1].end)?;
            f.absorb(expression(text)?);
        }
        (Some("DROP"), Some("DEFAULT")) => end(i + 2)?,
        (Some("SET" | "DROP"), Some("NOT")) => {
            if w(i + 2).as_deref() != Some("NULL") {
                return None;
            }
            end(i + 3)?;
            if w(i).as_deref() == Some("SET") {
                f.unnamed(K::Select, scans);
            }
        }
        (Some("ADD"), _) => {
            let mut j = i + 1;
            if w(j).as_deref() == Some("CONSTRAINT") {
                folded(t.get(j + 1))?;
                j += 2;
            }
            match (w(j).as_deref(), w(j + 1).as_deref()) {
                (Some("CHECK"), _) if matches!(t.get(j + 1), Some(Token::LParen)) => {
                    let close = closing(t, j + 1)?;
                    let sp = spans(&p.text, t)?;
                    let text = p.text.get(sp[j + 1].start..sp[close].end)?;
                    f.absorb(expression(text)?);
                    j = close + 1;
                }
                (Some("NOT"), Some("NULL")) => j += 2,
                _ => return None,
            }
            if w(j).as_deref() == Some("NOT") && w(j + 1).as_deref() == Some("VALID") {
                j += 2;
            } else {
                f.unnamed(K::Select, scans);
            }
            end(j)?;
        }
        (Some("DROP"), Some("CONSTRAINT")) => {
            let mut j = i + 2;
            if w(j).as_deref() == Some("IF") {
                if w(j + 1).as_deref() != Some("EXISTS") {
                    return None;
                }
                j += 2;
            }
            folded(t.get(j))?;
            let (j, cascade) = drop_behaviour(t, j + 1);
            if cascade {
                f.unnamed(
                    K::Drop,
                    "the objects that depend on the constraint (CASCADE)",
                );
            }
            end(j)?;
        }
        (Some("RENAME"), Some("CONSTRAINT")) => {
            folded(t.get(i + 2))?;
            if w(i + 3).as_deref() != Some("TO") {
                return None;
            }
            folded(t.get(i + 4))?;
            end(i + 5)?;
        }
        (Some("VALIDATE"), Some("CONSTRAINT")) => {
            folded(t.get(i + 2))?;
            end(i + 3)?;
            f.unnamed(K::Select, scans);
        }
        (Some("RENAME" | "OWNER"), Some("TO")) => {
            folded(t.get(i + 2))?;
            end(i + 3)?;
        }
        (Some("SET"), Some("SCHEMA")) => {
            let s = folded(t.get(i + 2))?;
            grants::push(
                &mut f.privileges,
                Privilege::table(K::Create, format!("{s}.*")),
            );
            end(i + 3)?;
        }
        _ => return None,
    }
    Some(f.finish(t))
}

/// `COPY table [(columns)] FROM source [[WITH] (options)] WHERE condition`:
/// the COPY without its WHERE analysed as usual, and the condition (which is
/// evaluated for every row and may call functions) parsed on its own and its
/// facts added. Only `FROM`: the server rejects a WHERE on `COPY TO`.
fn copy_where(p: &Piece) -> Option<StatementInfo> {
    let t = &p.tokens;
    let mut depth = 0i32;
    let mut at = None;
    let mut from = false;
    for (i, tok) in t.iter().enumerate() {
        match tok {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            _ if depth != 0 => {}
            _ => match word(Some(tok)).as_deref() {
                Some("FROM") if !from && at.is_none() => from = true,
                Some("TO") if !from => return None,
                Some("WHERE") => {
                    if at.is_some() {
                        return None;
                    }
                    at = Some(i);
                }
                _ => {}
            },
        }
    }
    let at = at?;
    if !from || at + 1 >= t.len() {
        return None;
    }
    let sp = spans(&p.text, t)?;
    let head = p.text.get(..sp[at].start)?;
    let cond = p.text.get(sp[at + 1].start..)?;
    let mut info = match Parser::parse_sql(&PostgreSqlDialect {}, &format!("{head}\n;")) {
        Ok(stmts) => match stmts.as_slice() {
            [s @ Statement::Copy { .. }] => statement_info(s),
            _ => return None,
        },
        Err(_) => copy_without_options(&t[..at])?,
    };
    let mut f = Found::new(K::Copy);
    f.absorb(expression(cond)?);
    for x in f.facts.tables_read {
        push_unique(&mut info.facts.tables_read, x);
    }
    for x in f.facts.functions {
        push_unique(&mut info.facts.functions, x);
    }
    for x in f.privileges {
        grants::push(&mut info.facts.privileges, x);
    }
    for d in f.dangerous {
        push_unique(&mut info.dangerous, d);
    }
    info.literal_dependent |= f.literal_dependent;
    if info.pinned_setting.is_none() {
        info.pinned_setting = f.pinned;
    }
    info.fingerprint = fingerprint_tokens(t);
    Some(info)
}

/// A role list (`a, "B", CURRENT_USER`) at `i`: the names and the index after.
fn role_list(t: &[Token], mut i: usize) -> Option<(Vec<String>, usize)> {
    let mut out = vec![folded(t.get(i))?];
    i += 1;
    while matches!(t.get(i), Some(Token::Comma)) {
        out.push(folded(t.get(i + 1))?);
        i += 2;
    }
    Some((out, i))
}

/// `CREATE ROLE | USER | GROUP name [[WITH] option ...]` with the options of
/// the server's grammar (attributes such as `LOGIN` or `SUPERUSER`, `[ENCRYPTED]
/// PASSWORD 'p' | NULL`, `CONNECTION LIMIT n`, `VALID UNTIL 't'`, `SYSID n`,
/// `IN ROLE | IN GROUP | ROLE | ADMIN | USER roles`). `create` on the role (an
/// object outside any schema: unnamed); each membership it sets up is a
/// `grant` on an unnamed object.
fn create_role(t: &[Token]) -> Option<StatementInfo> {
    const ATTRIBUTES: &[&str] = &[
        "SUPERUSER",
        "NOSUPERUSER",
        "CREATEDB",
        "NOCREATEDB",
        "CREATEROLE",
        "NOCREATEROLE",
        "CREATEUSER",
        "NOCREATEUSER",
        "INHERIT",
        "NOINHERIT",
        "LOGIN",
        "NOLOGIN",
        "REPLICATION",
        "NOREPLICATION",
        "BYPASSRLS",
        "NOBYPASSRLS",
    ];
    let w = |i: usize| word(t.get(i));
    let name = folded(t.get(2))?;
    let mut f = Found::new(K::Create);
    f.unnamed(K::Create, format!("role {name}"));
    let mut i = 3;
    if w(i).as_deref() == Some("WITH") {
        i += 1;
    }
    while i < t.len() {
        let opt = w(i)?;
        match opt.as_str() {
            a if ATTRIBUTES.contains(&a) => i += 1,
            "CONNECTION" if w(i + 1).as_deref() == Some("LIMIT") => i = signed_int(t, i + 2)?,
            "ENCRYPTED" | "UNENCRYPTED" | "PASSWORD" => {
                if opt != "PASSWORD" {
                    i += 1;
                    if w(i).as_deref() != Some("PASSWORD") {
                        return None;
                    }
                }
                if is_string(t.get(i + 1))
                    || (opt == "PASSWORD" && w(i + 1).as_deref() == Some("NULL"))
                {
                    i += 2;
                } else {
                    return None;
                }
            }
            "VALID" if w(i + 1).as_deref() == Some("UNTIL") && is_string(t.get(i + 2)) => i += 3,
            "SYSID" => i = signed_int(t, i + 1)?,
            "IN" if matches!(w(i + 1).as_deref(), Some("ROLE" | "GROUP")) => {
                let (roles, j) = role_list(t, i + 2)?;
                for r in roles {
                    f.unnamed(K::Grant, format!("membership in role {r}"));
                }
                i = j;
            }
            "ROLE" | "ADMIN" | "USER" => {
                let (roles, j) = role_list(t, i + 1)?;
                for r in roles {
                    f.unnamed(K::Grant, format!("membership of role {r} in role {name}"));
                }
                i = j;
            }
            _ => return None,
        }
    }
    Some(f.finish(t))
}
