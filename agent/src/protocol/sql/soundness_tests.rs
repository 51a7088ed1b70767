//! Analysis the server cannot disagree with: role changes in every spelling,
//! the pinned lexing settings, names folded as the server folds them.

use super::*;
use crate::policy::spec::StatementKind as K;

fn first(sql: &str) -> Arc<StatementInfo> {
    let a = Analyzer::new(0).analyze(sql);
    assert!(a.error.is_none(), "{sql}: {:?}", a.error);
    a.statements
        .first()
        .cloned()
        .unwrap_or_else(|| panic!("{sql}: no statement"))
}

use std::sync::Arc;

#[test]
fn every_spelling_of_a_role_change_is_set_role() {
    for t in [
        "SET ROLE admin",
        "SET role = admin",
        "SET role = 'admin'",
        "SET role TO admin",
        "SET \"role\" = admin",
        "SET LOCAL role admin",
        "SET LOCAL ROLE admin",
        "SET SESSION ROLE admin",
        "SET ROLE NONE",
        "SET SESSION AUTHORIZATION admin",
        "SET LOCAL SESSION AUTHORIZATION admin",
        "SET session_authorization = admin",
        "SET session_authorization TO DEFAULT",
        "RESET ROLE",
        "RESET role",
        "RESET SESSION AUTHORIZATION",
        "RESET session_authorization",
    ] {
        assert_eq!(first(t).facts.kinds, vec![K::SetRole], "{t}");
    }
    for t in [
        "SELECT set_config('role', 'admin', false)",
        "SELECT pg_catalog.set_config('ROLE', 'admin', true)",
        "SELECT set_config('session_authorization', 'admin', false)",
    ] {
        assert!(first(t).facts.kinds.contains(&K::SetRole), "{t}");
    }
    // Not role changes.
    assert_eq!(first("SET work_mem = '1MB'").facts.kinds, vec![K::Set]);
    assert_eq!(first("RESET work_mem").facts.kinds, vec![K::Reset]);
}

#[test]
fn changes_of_the_lexing_settings_are_pinned() {
    for t in [
        "SET standard_conforming_strings = off",
        "SET standard_conforming_strings TO 'off'",
        "SET standard_conforming_strings = false",
        "SET standard_conforming_strings = 0",
        "SET LOCAL standard_conforming_strings = off",
        "SET SESSION standard_conforming_strings = of",
        "SET Standard_Conforming_Strings = off",
        "SET client_encoding = 'SJIS'",
        "SET client_encoding TO gbk",
        "SET LOCAL client_encoding = 'BIG5'",
        "SET client_encoding = 'LATIN1'",
        "SET NAMES 'SJIS'",
        "SET NAMES sjis",
        "SET backslash_quote = on",
        "SET backslash_quote = 'safe_encoding'",
        "SELECT set_config('standard_conforming_strings', 'off', false)",
        "SELECT set_config('client_encoding', 'SJIS', true)",
        "SELECT set_config('backslash_quote', 'on', false)",
        "SELECT set_config(name, 'off', false) FROM t",
        "SELECT * FROM set_config('standard_conforming_strings', 'off', false)",
        "SELECT * FROM t, LATERAL pg_catalog.set_config('client_encoding', 'SJIS', false) x",
        "SELECT set_config('search_path', v, false) FROM t",
        "UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'",
        "UPDATE pg_catalog.pg_settings SET setting = 'x' WHERE name = 'search_path'",
        "PREPARE p AS SELECT set_config('client_encoding', 'SJIS', false)",
        "EXPLAIN ANALYZE SELECT set_config('client_encoding', 'SJIS', false)",
    ] {
        let i = first(t);
        let why = i
            .pinned_setting
            .as_deref()
            .unwrap_or_else(|| panic!("{t}: not refused"));
        assert!(
            why.contains("standard_conforming_strings")
                || why.contains("client_encoding")
                || why.contains("backslash_quote")
                || why.contains("set_config")
                || why.contains("pg_settings"),
            "{t}: {why}"
        );
    }
    for t in [
        "SET standard_conforming_strings = on",
        "SET standard_conforming_strings TO true",
        "SET standard_conforming_strings = 'yes'",
        "SET standard_conforming_strings TO DEFAULT",
        "SET client_encoding = 'UTF8'",
        "SET client_encoding TO 'utf-8'",
        "SET client_encoding = unicode",
        "SET client_encoding TO DEFAULT",
        "SET NAMES 'UTF8'",
        "RESET standard_conforming_strings",
        "RESET client_encoding",
        "RESET ALL",
        "SELECT set_config('application_name', 'x', false)",
        "SELECT set_config('client_encoding', 'UTF8', false)",
        "EXPLAIN SELECT set_config('client_encoding', 'SJIS', false)",
        "SELECT * FROM pg_settings WHERE name = 'standard_conforming_strings'",
    ] {
        assert_eq!(first(t).pinned_setting, None, "{t}");
    }
}

#[test]
fn set_config_of_search_path_is_followed() {
    let i = first("SELECT pg_catalog.set_config('search_path', '', false)");
    assert_eq!(i.set_search_path.as_deref(), Some(&[][..]));
    let i = first("SELECT * FROM set_config('search_path', 'private', false)");
    assert_eq!(
        i.set_search_path.as_deref(),
        Some(&["private".to_string()][..])
    );
    let i = first("SELECT set_config('search_path', 'private, \"Mixed\"', false)");
    assert_eq!(
        i.set_search_path.as_deref(),
        Some(&["private".to_string(), "Mixed".to_string()][..])
    );
}

#[test]
fn table_names_are_folded_in_every_position() {
    for (t, want) in [
        ("SELECT 1 UNION TABLE Orders", vec!["orders", "Orders"]),
        (
            "SELECT a FROM t EXCEPT TABLE ORDERS",
            vec!["orders", "ORDERS"],
        ),
        (
            "WITH x AS (TABLE Public.Orders) SELECT * FROM x",
            vec![
                "public.orders",
                "public.Orders",
                "Public.orders",
                "Public.Orders",
            ],
        ),
        ("INSERT INTO t TABLE orders", vec!["orders"]),
    ] {
        let i = first(t);
        for w in &want {
            assert!(
                i.facts.tables_read.iter().any(|r| r == w),
                "{t}: {w} not among {:?}",
                i.facts.tables_read
            );
        }
    }
    // Only ASCII letters fold, as in the server (UTF8): `ÄCCOUNTS` is `Äccounts`.
    let i = first("SELECT * FROM ÄCCOUNTS");
    assert_eq!(i.facts.tables_read, vec!["Äccounts"]);
}
