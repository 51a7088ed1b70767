//! Splits a psql script into the messages psql would send, one per statement,
//! for `portcullis sql coverage` (what share of a script the agent analyses).
//!
//! As psql's own scanner does: a statement ends at a semicolon outside quotes,
//! comments, parentheses and the `BEGIN ... END` body of a `CREATE FUNCTION` /
//! `CREATE PROCEDURE` (SQL-standard bodies, `BEGIN ATOMIC`); `'...'` strings
//! (`E'...'` with backslash escapes), `"..."` identifiers, `$tag$...$tag$`
//! dollar quotes, `--` and nested `/* */` comments are skipped whole;
//! backslash meta-commands (`\set`, `\d`, ...) run to the end of their line and
//! are not statements, except that `\g` and its relatives send what is in the
//! buffer and `\;` is a semicolon that does not; the data lines after
//! `COPY ... FROM STDIN` up to a line `\.` are data, not statements.
//!
//! A statement that uses a psql variable (`:name`, `:'name'`, `:"name"`) is
//! marked: psql would send it with the variable's value in place, which only
//! running psql knows.

/// One statement of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptStatement {
    /// The line (from 1) the statement starts on.
    pub line: usize,
    /// The statement as psql sends it (without the terminating semicolon).
    pub text: String,
    /// It refers to a psql variable, so psql would send other text.
    pub uses_variables: bool,
}

fn ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || !c.is_ascii()
}

fn ident_char(c: char) -> bool {
    ident_start(c) || c.is_ascii_digit() || c == '$'
}

/// The statements of a psql script, in order.
pub fn split_psql_script(script: &str) -> Vec<ScriptStatement> {
    Splitter::new(script).run()
}

struct Splitter<'a> {
    s: &'a str,
    chars: Vec<(usize, char)>,
    i: usize,
    line: usize,
    out: Vec<ScriptStatement>,
    buf: String,
    start_line: usize,
    depth: i32,
    begin_depth: u32,
    /// First letters of the statement's first words (psql's test for
    /// `CREATE [OR REPLACE] FUNCTION|PROCEDURE`).
    initials: Vec<char>,
    words: usize,
    /// Unquoted words at parenthesis depth 0, upper case (at most a few).
    head: Vec<String>,
    uses_variables: bool,
}

impl<'a> Splitter<'a> {
    fn new(s: &'a str) -> Self {
        Splitter {
            s,
            chars: s.char_indices().collect(),
            i: 0,
            line: 1,
            out: Vec::new(),
            buf: String::new(),
            start_line: 1,
            depth: 0,
            begin_depth: 0,
            initials: Vec::new(),
            words: 0,
            head: Vec::new(),
            uses_variables: false,
        }
    }

    fn peek(&self, k: usize) -> Option<char> {
        self.chars.get(self.i + k).map(|&(_, c)| c)
    }

    /// Takes one character into the statement buffer.
    fn take(&mut self) {
        if let Some(&(_, c)) = self.chars.get(self.i) {
            if self.buf.trim().is_empty() && !c.is_whitespace() {
                self.start_line = self.line;
            }
            self.buf.push(c);
            if c == '\n' {
                self.line += 1;
            }
            self.i += 1;
        }
    }

    fn take_until(&mut self, end: &str) {
        while self.i < self.chars.len() {
            if self.rest().starts_with(end) {
                for _ in 0..end.chars().count() {
                    self.take();
                }
                return;
            }
            self.take();
        }
    }

    fn rest(&self) -> &'a str {
        match self.chars.get(self.i) {
            Some(&(b, _)) => &self.s[b..],
            None => "",
        }
    }

    /// Ends the statement in the buffer. A buffer of only whitespace and
    /// comments is dropped: the server sees no statement in it.
    fn flush(&mut self) {
        let text = std::mem::take(&mut self.buf);
        let copy_from_stdin = self.head.first().is_some_and(|w| w == "COPY")
            && self
                .head
                .windows(2)
                .any(|w| w[0] == "FROM" && (w[1] == "STDIN" || w[1] == "PSTDIN"));
        if has_sql(&text) {
            self.out.push(ScriptStatement {
                line: self.start_line,
                text: text.trim().to_string(),
                uses_variables: self.uses_variables,
            });
        }
        self.depth = 0;
        self.begin_depth = 0;
        self.initials.clear();
        self.words = 0;
        self.head.clear();
        self.uses_variables = false;
        if copy_from_stdin {
            self.skip_copy_data();
        }
    }

    /// After `COPY ... FROM STDIN;`: the rest of the line, then data lines up
    /// to and including a line `\.`.
    fn skip_copy_data(&mut self) {
        self.skip_line();
        while self.i < self.chars.len() {
            let line_end = self.rest().find('\n').unwrap_or(self.rest().len());
            let is_end = self.rest()[..line_end].trim_end_matches('\r') == "\\.";
            self.skip_line();
            if is_end {
                break;
            }
        }
    }

    fn skip_line(&mut self) {
        while let Some(c) = self.peek(0) {
            self.i += 1;
            if c == '\n' {
                self.line += 1;
                break;
            }
        }
    }

    fn word(&mut self, w: &str) {
        let upper = w.to_ascii_uppercase();
        if self.depth == 0 && self.head.len() < 16 {
            self.head.push(upper.clone());
        }
        if upper == "BEGIN" || upper == "CASE" {
            let i = &self.initials;
            let create_routine = i.first() == Some(&'c')
                && (matches!(i.get(1), Some('f' | 'p'))
                    || (i.get(1) == Some(&'o')
                        && i.get(2) == Some(&'r')
                        && matches!(i.get(3), Some('f' | 'p'))));
            if create_routine && self.depth == 0 {
                self.begin_depth += 1;
            }
        } else if upper == "END" && self.begin_depth > 0 {
            self.begin_depth -= 1;
        }
        if self.initials.len() < 4 {
            self.initials
                .push(w.chars().next().unwrap_or(' ').to_ascii_lowercase());
        }
        self.words += 1;
    }

    /// A backslash command: to the end of the line (or to the next backslash
    /// command on the same line, which psql also allows; taken as one here).
    fn meta(&mut self) {
        // `\;`: a semicolon in the buffer that does not send it.
        if self.peek(1) == Some(';') {
            self.take();
            self.take();
            return;
        }
        let line_end = self.rest().find('\n').unwrap_or(self.rest().len());
        let cmd = &self.rest()[1..line_end];
        let name: String = cmd
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '\\')
            .collect();
        // These send the buffer, as `;` does.
        let sends = matches!(
            name.as_str(),
            "g" | "gx" | "gset" | "gexec" | "gdesc" | "crosstabview" | "watch" | "bind"
        );
        self.skip_line();
        if sends {
            self.flush();
        } else if self.buf.trim().is_empty() {
            self.buf.clear();
        } else {
            // A meta-command in the middle of a statement: the statement goes on
            // on the next line.
            self.buf.push('\n');
        }
    }

    fn run(mut self) -> Vec<ScriptStatement> {
        while let Some(c) = self.peek(0) {
            match c {
                '-' if self.peek(1) == Some('-') => {
                    while self.peek(0).is_some_and(|c| c != '\n') {
                        self.take();
                    }
                }
                '/' if self.peek(1) == Some('*') => {
                    let mut nest = 0;
                    while self.i < self.chars.len() {
                        if self.peek(0) == Some('/') && self.peek(1) == Some('*') {
                            nest += 1;
                            self.take();
                            self.take();
                        } else if self.peek(0) == Some('*') && self.peek(1) == Some('/') {
                            nest -= 1;
                            self.take();
                            self.take();
                            if nest == 0 {
                                break;
                            }
                        } else {
                            self.take();
                        }
                    }
                }
                '\'' => {
                    let escapes = self.buf.ends_with(['e', 'E'])
                        && !self.buf[..self.buf.len() - 1].ends_with(ident_char);
                    self.take();
                    loop {
                        match self.peek(0) {
                            None => break,
                            Some('\\') if escapes => {
                                self.take();
                                self.take();
                            }
                            Some('\'') if self.peek(1) == Some('\'') => {
                                self.take();
                                self.take();
                            }
                            Some('\'') => {
                                self.take();
                                break;
                            }
                            Some(_) => self.take(),
                        }
                    }
                }
                '"' => {
                    self.take();
                    loop {
                        match self.peek(0) {
                            None => break,
                            Some('"') if self.peek(1) == Some('"') => {
                                self.take();
                                self.take();
                            }
                            Some('"') => {
                                self.take();
                                break;
                            }
                            Some(_) => self.take(),
                        }
                    }
                }
                '$' if !self.buf.ends_with(ident_char) => {
                    // `$tag$` or `$$`; `$1` is a parameter.
                    let rest = self.rest();
                    let tag_len = rest[1..]
                        .char_indices()
                        .find(|&(k, c)| {
                            !(if k == 0 {
                                ident_start(c)
                            } else {
                                ident_char(c) && c != '$'
                            })
                        })
                        .map(|(k, _)| k)
                        .unwrap_or(rest.len() - 1);
                    if rest[1..].get(tag_len..).is_some_and(|r| r.starts_with('$')) {
                        let tag = rest[..tag_len + 2].to_string();
                        for _ in 0..tag.chars().count() {
                            self.take();
                        }
                        self.take_until(&tag);
                    } else {
                        self.take();
                    }
                }
                ':' => {
                    let prev_ok = !self
                        .buf
                        .ends_with(|p: char| ident_char(p) || matches!(p, ':' | ']' | ')'));
                    let next = self.peek(1);
                    if prev_ok
                        && (matches!(next, Some('\'' | '"'))
                            || next.is_some_and(|n| n.is_ascii_alphabetic() || n == '_'))
                    {
                        self.uses_variables = true;
                    }
                    self.take();
                }
                '\\' => self.meta(),
                '(' => {
                    self.depth += 1;
                    self.take();
                }
                ')' => {
                    self.depth -= 1;
                    self.take();
                }
                ';' if self.depth <= 0 && self.begin_depth == 0 => {
                    self.i += 1;
                    self.flush();
                }
                c if ident_start(c) && !self.buf.ends_with(ident_char) => {
                    let start = self.i;
                    while self.peek(0).is_some_and(ident_char) {
                        self.take();
                    }
                    let w: String = self.chars[start..self.i].iter().map(|&(_, c)| c).collect();
                    self.word(&w);
                }
                _ => self.take(),
            }
        }
        self.flush();
        self.out
    }
}

/// Whether `text` holds anything but whitespace and comments.
fn has_sql(text: &str) -> bool {
    let mut rest = text;
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix("--") {
            rest = r.split_once('\n').map_or("", |(_, after)| after);
        } else if rest.starts_with("/*") {
            let mut nest = 0;
            let mut end = rest.len();
            let b = rest.as_bytes();
            let mut k = 0;
            while k + 1 < b.len() {
                if b[k] == b'/' && b[k + 1] == b'*' {
                    nest += 1;
                    k += 2;
                } else if b[k] == b'*' && b[k + 1] == b'/' {
                    nest -= 1;
                    k += 2;
                    if nest == 0 {
                        end = k;
                        break;
                    }
                } else {
                    k += 1;
                }
            }
            rest = &rest[end..];
        } else {
            return !rest.is_empty();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(s: &str) -> Vec<String> {
        split_psql_script(s).into_iter().map(|x| x.text).collect()
    }

    #[test]
    fn statements_end_at_semicolons_outside_quotes_comments_and_parentheses() {
        assert_eq!(
            texts("SELECT 'a;b', \"c;d\" -- e;f\n; /* g; /* h; */ */ SELECT (1;2);"),
            vec![
                "SELECT 'a;b', \"c;d\" -- e;f",
                "/* g; /* h; */ */ SELECT (1;2)"
            ]
        );
        assert_eq!(
            texts("SELECT $$a;$$, $x$ $$; $x$; SELECT E'\\';', 'it''s;'; SELECT a$$b; SELECT $1;"),
            vec![
                "SELECT $$a;$$, $x$ $$; $x$",
                "SELECT E'\\';', 'it''s;'",
                "SELECT a$$b",
                "SELECT $1"
            ]
        );
        // A plain string has no backslash escapes.
        assert_eq!(
            texts("SELECT '\\'; SELECT 2"),
            vec!["SELECT '\\'", "SELECT 2"]
        );
        // Comment-only remainders are not statements.
        assert_eq!(texts("SELECT 1; -- done\n/* end */\n"), vec!["SELECT 1"]);
    }

    #[test]
    fn meta_commands_and_copy_data_are_not_statements() {
        let s = "\\set x 1\nCOPY t FROM stdin;\n1\ta;b\n\\.\nSELECT 1 \\gset\n\\d t\nSELECT 2\\; SELECT 3;\nCOPY t TO stdout;\nSELECT :x, :'x', a::int, b[1:2];\n";
        let v = split_psql_script(s);
        let t: Vec<&str> = v.iter().map(|x| x.text.as_str()).collect();
        assert_eq!(
            t,
            vec![
                "COPY t FROM stdin",
                "SELECT 1",
                "SELECT 2\\; SELECT 3",
                "COPY t TO stdout",
                "SELECT :x, :'x', a::int, b[1:2]"
            ]
        );
        assert_eq!(v[0].line, 2);
        assert_eq!(v[1].line, 5);
        assert!(v[4].uses_variables);
        assert!(!v[3].uses_variables);
        assert!(!split_psql_script("SELECT a::int, b[1:2], f(a := 1)")[0].uses_variables);
    }

    #[test]
    fn sql_standard_function_bodies_keep_their_semicolons() {
        let s = "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 1 END; END; SELECT 2; BEGIN; END;";
        assert_eq!(
            texts(s),
            vec![
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 1 END; END",
                "SELECT 2",
                "BEGIN",
                "END"
            ]
        );
        assert_eq!(
            texts("create or replace procedure p() begin atomic select 1; end; select 3"),
            vec![
                "create or replace procedure p() begin atomic select 1; end",
                "select 3"
            ]
        );
    }
}
