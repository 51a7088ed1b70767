//! The client's startup parameters, read as PostgreSQL reads them, and what the
//! agent sends upstream in their place.
//!
//! PostgreSQL applies the `options` parameter first (`-c name=value`,
//! `-cname=value` and `--name=value` switches, split at unescaped white space,
//! a backslash escaping the next character), then every other parameter in the
//! order of the packet; names are case-insensitive (and `-` is `_` in switch
//! names); the last value of a setting wins. The agent computes the effective
//! settings that way and sends them upstream as plain parameters (never the
//! client's `options` text), followed by the settings it pins:
//! `standard_conforming_strings=on` and `client_encoding=UTF8`, which therefore
//! win over any role or database default (`ALTER ROLE ... SET`).
//!
//! Refused, with an error naming the parameter: switches in `options` other
//! than `-c` and `--`; names that are not setting names; settings that change
//! who the session is (`role`, `session_authorization`), load code
//! (`*_preload_libraries`), ask for replication, or change how statement text
//! is read (`standard_conforming_strings` other than on, `backslash_quote`, a
//! `client_encoding` other than UTF8; `SQL_ASCII`, which psql asks for under the
//! C locale, is served as UTF8: for ASCII the bytes are the same).

use crate::protocol::sql::pinned_violation;

/// Settings the agent sends upstream after the client's: they win.
pub const PINNED: &[(&str, &str)] = &[
    ("standard_conforming_strings", "on"),
    ("client_encoding", "UTF8"),
];

/// What the startup packet asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effective {
    pub user: Option<String>,
    pub database: Option<String>,
    /// Settings (lower-case names) with their effective values, in the order of
    /// their last appearance; the pinned settings are not among them.
    pub settings: Vec<(String, String)>,
}

impl Effective {
    /// The value of setting `name` (lower case), if the client set it.
    #[cfg(test)]
    pub fn get(&self, name: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn set(&mut self, name: String, value: String) {
        self.settings.retain(|(n, _)| *n != name);
        self.settings.push((name, value));
    }

    /// The parameters of the upstream startup packet: user and database, the
    /// client's settings, then the pinned ones.
    pub fn upstream(&self, user: &str, database: &str) -> Vec<(String, String)> {
        let mut out = vec![
            ("user".to_string(), user.to_string()),
            ("database".to_string(), database.to_string()),
        ];
        out.extend(self.settings.iter().cloned());
        out.extend(PINNED.iter().map(|(n, v)| (n.to_string(), v.to_string())));
        out
    }
}

/// A startup parameter the agent refuses: the message for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Splits `options` as PostgreSQL's `pg_split_opts` does.
fn split_options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_token = false;
    let mut escape = false;
    for c in s.chars() {
        if escape {
            cur.push(c);
            escape = false;
            in_token = true;
        } else if c == '\\' {
            escape = true;
            in_token = true;
        } else if c.is_ascii_whitespace() {
            if in_token {
                out.push(std::mem::take(&mut cur));
                in_token = false;
            }
        } else {
            cur.push(c);
            in_token = true;
        }
    }
    if in_token {
        out.push(cur);
    }
    out
}

/// A setting name as the server looks it up (`-` is `_` in switches).
fn setting_name(raw: &str, from_switch: bool) -> Result<String, Refused> {
    let n: String = raw
        .chars()
        .map(|c| if from_switch && c == '-' { '_' } else { c })
        .collect::<String>()
        .to_ascii_lowercase();
    let ok = !n.is_empty()
        && n.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '$');
    if ok {
        Ok(n)
    } else {
        Err(Refused(format!(
            "startup parameter `{raw}` is not a setting name; Portcullis refuses what it cannot read"
        )))
    }
}

/// Refuses settings a session may not start with through the agent; returns
/// the value to send upstream (None: dropped, the pinned value takes its place).
fn check(name: &str, value: &str) -> Result<Option<String>, Refused> {
    match name {
        // The protocol's own keys, spelled so that the server would take them for
        // settings: sent as settings they would replace the agent's user.
        "user" | "database" | "options" => Err(Refused(format!(
            "startup setting `{name}` is not a setting; Portcullis refuses it"
        ))),
        "role" | "session_authorization" | "is_superuser" => Err(Refused(format!(
            "startup parameter `{name}` changes who the session is; Portcullis refuses it (the session runs as the user the agent logs in as)"
        ))),
        "session_preload_libraries" | "local_preload_libraries" | "shared_preload_libraries" => {
            Err(Refused(format!(
                "startup parameter `{name}` loads code into the server; Portcullis refuses it"
            )))
        }
        "replication" => Err(Refused(
            "replication connections are not proxied by Portcullis".into(),
        )),
        "client_encoding" if value.eq_ignore_ascii_case("sql_ascii") => Ok(None),
        "standard_conforming_strings" | "client_encoding" | "backslash_quote" => {
            match pinned_violation(name, Some(value), false) {
                Some(why) => Err(Refused(format!("startup parameter {why}"))),
                None => Ok(None),
            }
        }
        _ => Ok(Some(value.to_string())),
    }
}

/// Reads the startup parameters as the server would.
pub fn read(params: &[(String, String)]) -> Result<Effective, Refused> {
    let mut e = Effective::default();
    let apply = |e: &mut Effective, name: String, value: &str| -> Result<(), Refused> {
        if let Some(v) = check(&name, value)? {
            e.set(name, v);
        } else {
            e.settings.retain(|(n, _)| *n != name);
        }
        Ok(())
    };
    // `options` first, wherever it stands (the last `options` parameter is the one
    // the server reads).
    if let Some((_, o)) = params.iter().rev().find(|(k, _)| k == "options") {
        let toks = split_options(o);
        let mut i = 0;
        while i < toks.len() {
            let t = &toks[i];
            let assignment = if let Some(rest) = t.strip_prefix("--") {
                (rest.to_string(), true)
            } else if let Some(rest) = t.strip_prefix("-c") {
                if rest.is_empty() {
                    i += 1;
                    match toks.get(i) {
                        Some(n) => (n.clone(), true),
                        None => {
                            return Err(Refused("startup option `-c` without a setting".into()));
                        }
                    }
                } else {
                    (rest.to_string(), true)
                }
            } else {
                return Err(Refused(format!(
                    "startup option `{t}` is not a `-c name=value` or `--name=value` setting; Portcullis refuses what it cannot read"
                )));
            };
            let (a, switch) = assignment;
            let Some((n, v)) = a.split_once('=') else {
                return Err(Refused(format!(
                    "startup option `{a}` has no value (`name=value`)"
                )));
            };
            let name = setting_name(n, switch)?;
            apply(&mut e, name, v)?;
            i += 1;
        }
    }
    for (k, v) in params {
        let lk = k.to_ascii_lowercase();
        match lk.as_str() {
            // The protocol's own keys are case-sensitive in the server.
            _ if k == "user" => e.user = Some(v.clone()),
            _ if k == "database" => e.database = Some(v.clone()),
            _ if k == "options" => {}
            _ if k == "replication" => {
                if !matches!(
                    v.to_ascii_lowercase().as_str(),
                    "false" | "off" | "0" | "no"
                ) {
                    return Err(Refused(
                        "replication connections are not proxied by Portcullis".into(),
                    ));
                }
            }
            _ if k.starts_with("_pq_.") => {}
            _ => {
                let name = setting_name(k, false)?;
                apply(&mut e, name, v)?;
            }
        }
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn options_are_split_and_applied_before_parameters_last_one_winning() {
        let e = read(&p(&[
            ("user", "a"),
            ("user", "b"),
            ("database", "d"),
            (
                "options",
                "-c search_path=x -csearch_path=y --search-path=z\\ w -c Application_Name=a\\\\b",
            ),
            ("application_name", "top"),
        ]))
        .expect("read");
        assert_eq!(e.user.as_deref(), Some("b"));
        assert_eq!(e.get("search_path"), Some("z w"));
        // Parameters come after options: the parameter wins.
        assert_eq!(e.get("application_name"), Some("top"));
        let e = read(&p(&[("options", "-c application_name=a\\\\b")])).expect("read");
        assert_eq!(e.get("application_name"), Some("a\\b"));
        let e = read(&p(&[("Search_Path", "q"), ("search_path", "r")])).expect("read");
        assert_eq!(e.get("search_path"), Some("r"));
    }

    #[test]
    fn dangerous_and_unreadable_parameters_are_refused() {
        for bad in [
            p(&[("role", "admin")]),
            p(&[("ROLE", "admin")]),
            p(&[("options", "-c role=admin")]),
            p(&[("options", "--session-authorization=admin")]),
            p(&[("options", "-c session_authorization=admin")]),
            p(&[("replication", "database")]),
            p(&[("replication", "true")]),
            p(&[("options", "-c replication=true")]),
            p(&[("standard_conforming_strings", "off")]),
            p(&[("options", "-c standard_conforming_strings=off")]),
            p(&[("options", "--standard-conforming-strings=off")]),
            p(&[("client_encoding", "SJIS")]),
            p(&[("options", "-c client_encoding=GBK")]),
            p(&[("client_encoding", "LATIN1")]),
            p(&[("backslash_quote", "on")]),
            p(&[("options", "-c local_preload_libraries=x")]),
            p(&[("options", "-B 100")]),
            p(&[("options", "-e")]),
            p(&[("options", "-c")]),
            p(&[("options", "-c search_path")]),
            p(&[("bad name", "x")]),
            p(&[("USER", "postgres")]),
            p(&[("options", "-c user=postgres")]),
            p(&[("options", "--database=other")]),
        ] {
            let r = read(&bad);
            assert!(r.is_err(), "{bad:?} was accepted: {r:?}");
        }
        let Err(Refused(m)) = read(&p(&[("options", "-c standard_conforming_strings=off")])) else {
            panic!("accepted")
        };
        assert!(m.contains("standard_conforming_strings"), "{m}");
    }

    #[test]
    fn safe_values_of_pinned_settings_are_replaced_by_the_pinned_ones() {
        let e = read(&p(&[
            ("user", "u"),
            ("client_encoding", "SQL_ASCII"),
            (
                "options",
                "-c standard_conforming_strings=on -c client_encoding=utf-8",
            ),
            ("replication", "false"),
            ("application_name", "psql"),
        ]))
        .expect("read");
        assert_eq!(e.get("client_encoding"), None);
        let up = e.upstream("app", "appdb");
        assert_eq!(
            up,
            p(&[
                ("user", "app"),
                ("database", "appdb"),
                ("application_name", "psql"),
                ("standard_conforming_strings", "on"),
                ("client_encoding", "UTF8"),
            ])
        );
    }
}

/// A ParameterStatus from the server showing a pinned setting with a value the
/// agent does not read statements under: why the session must end.
pub fn unsafe_parameter_status(body: &[u8]) -> Option<String> {
    let mut r = super::codec::Reader::new(body);
    let (Ok(name), Ok(value)) = (r.cstr("ParameterStatus"), r.cstr("ParameterStatus")) else {
        return Some("the server sent a malformed ParameterStatus".into());
    };
    let safe = match name {
        "standard_conforming_strings" => value == "on",
        "client_encoding" => crate::protocol::sql::is_utf8_name(value),
        _ => true,
    };
    (!safe).then(|| {
        format!(
            "the server reports {name}={value}; the agent reads statements only with standard_conforming_strings=on and client_encoding=UTF8"
        )
    })
}

#[cfg(test)]
mod status_tests {
    use super::*;

    fn body(n: &str, v: &str) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(n.as_bytes());
        b.push(0);
        b.extend_from_slice(v.as_bytes());
        b.push(0);
        b
    }

    #[test]
    fn unsafe_values_are_recognised() {
        assert!(unsafe_parameter_status(&body("standard_conforming_strings", "off")).is_some());
        assert!(unsafe_parameter_status(&body("client_encoding", "SJIS")).is_some());
        assert!(unsafe_parameter_status(b"client_encoding").is_some());
        assert_eq!(
            unsafe_parameter_status(&body("standard_conforming_strings", "on")),
            None
        );
        assert_eq!(
            unsafe_parameter_status(&body("client_encoding", "UTF8")),
            None
        );
        assert_eq!(
            unsafe_parameter_status(&body("DateStyle", "ISO, MDY")),
            None
        );
    }
}
