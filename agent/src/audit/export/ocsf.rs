//! Audit records as OCSF 1.5 events.
//!
//! | record `event` | OCSF class | activity |
//! | --- | --- | --- |
//! | `statement` | Datastore Activity (6005) | from the statement kind: Read/Query, Update, Write, Create, Delete, Other |
//! | `connection_start` | Network Activity (4001) | Open (1) |
//! | `connection` | Network Activity (4001) | Close (2); Refuse (5) when denied; Fail (4) when the upstream was unreachable |
//! | `bypass_drop`, `kernel_deny` | Network Activity (4001) | Refuse (5) |
//! | `authentication`, `auth_*` | Authentication (3002) | Logon (1) |
//! | `agent_start` / `agent_stop` | Application Lifecycle (6002) | Start (3) / Stop (4) |
//! | `policy_load` | Application Lifecycle (6002) | Update (8) |
//! | `enforcement_detached` | Application Lifecycle (6002) | Disable (7) |
//! | anything else | Application Lifecycle (6002) | Other (99) |
//!
//! Every event has `metadata` (OCSF version, product, `uid` = the record's
//! `event_id`, `original_time`, `sequence` = `seq`), `time` in milliseconds,
//! `severity_id`, `status_id`, the actor's process where the record names
//! one, endpoints where it has addresses, and every field not mapped under
//! `unmapped`, so nothing of the record is lost.

use serde_json::{Map, Value, json};

pub const OCSF_VERSION: &str = "1.5.0";

struct Class {
    category_uid: u64,
    category_name: &'static str,
    class_uid: u64,
    class_name: &'static str,
}

const DATASTORE: Class = Class {
    category_uid: 6,
    category_name: "Application Activity",
    class_uid: 6005,
    class_name: "Datastore Activity",
};
const NETWORK: Class = Class {
    category_uid: 4,
    category_name: "Network Activity",
    class_uid: 4001,
    class_name: "Network Activity",
};
const AUTHENTICATION: Class = Class {
    category_uid: 3,
    category_name: "Identity & Access Management",
    class_uid: 3002,
    class_name: "Authentication",
};
const LIFECYCLE: Class = Class {
    category_uid: 6,
    category_name: "Application Activity",
    class_uid: 6002,
    class_name: "Application Lifecycle",
};

/// Record fields of the envelope and chain, consumed by `metadata`.
const ENVELOPE: [&str; 9] = [
    "schema",
    "time",
    "host",
    "agent_version",
    "event",
    "seq",
    "event_id",
    "prev_hash",
    "hash",
];

fn str_of<'a>(rec: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    rec.get(k).and_then(Value::as_str)
}

/// Milliseconds since the epoch of an RFC 3339 UTC time as the log writes it
/// (`2026-11-23T15:25:15.123456Z`), or with an offset.
pub fn time_ms(s: &str) -> Option<i64> {
    crate::audit::time::parse_rfc3339_micros(s).map(|us| us.div_euclid(1000))
}

/// `host:port` or `[v6]:port` as an OCSF endpoint.
fn endpoint(addr: &str) -> Option<Value> {
    let sa: std::net::SocketAddr = addr.parse().ok()?;
    Some(json!({"ip": sa.ip().to_string(), "port": sa.port()}))
}

fn activity_for_statement(rec: &Map<String, Value>) -> (u64, &'static str) {
    let kind = rec
        .get("kinds")
        .and_then(|k| match k {
            Value::Array(a) => a.first().and_then(Value::as_str),
            Value::String(s) => Some(s.as_str()),
            _ => None,
        })
        .or_else(|| str_of(rec, "kind"))
        .unwrap_or("")
        .to_ascii_lowercase();
    match kind.as_str() {
        "select" | "show" | "explain" => (4, "Query"),
        "copy_to" | "read" => (1, "Read"),
        "update" => (2, "Update"),
        "insert" | "copy" | "copy_from" | "merge" => (5, "Write"),
        "create" | "create_table" | "create_index" => (6, "Create"),
        "delete" | "drop" | "truncate" => (7, "Delete"),
        _ => (99, "Other"),
    }
}

/// Fields of an `attribution` object that [`actor`] maps; the others go to
/// `unmapped.attribution`.
const ACTOR_FIELDS: [&str; 10] = [
    "pid",
    "comm",
    "exe",
    "exe_sha256",
    "cmdline",
    "uid",
    "user",
    "cgroup",
    "container_id",
    "unit",
];

/// The actor's process from an `attribution` object.
fn actor(attr: &Map<String, Value>) -> Value {
    let mut p = Map::new();
    if let Some(pid) = attr.get("pid") {
        p.insert("pid".into(), pid.clone());
    }
    if let Some(comm) = attr.get("comm") {
        p.insert("name".into(), comm.clone());
    }
    if let Some(exe) = attr.get("exe").and_then(Value::as_str) {
        let name = exe.rsplit('/').next().unwrap_or(exe);
        let mut file = json!({"path": exe, "name": name, "type_id": 1});
        if let Some(h) = attr.get("exe_sha256").and_then(Value::as_str) {
            file["hashes"] = json!([{"algorithm_id": 3, "algorithm": "SHA-256", "value": h}]);
        }
        p.insert("file".into(), file);
    }
    if let Some(cmd) = attr.get("cmdline").and_then(Value::as_array) {
        let parts: Vec<&str> = cmd.iter().filter_map(Value::as_str).collect();
        p.insert("cmd_line".into(), parts.join(" ").into());
    }
    let mut user = Map::new();
    if let Some(uid) = attr.get("uid") {
        user.insert("uid".into(), uid.to_string().into());
    }
    if let Some(name) = attr.get("user").filter(|v| !v.is_null()) {
        user.insert("name".into(), name.clone());
    }
    if !user.is_empty() {
        p.insert("user".into(), Value::Object(user));
    }
    if let Some(cg) = attr.get("cgroup").filter(|v| !v.is_null()) {
        p.insert(
            "container".into(),
            json!({"uid": attr.get("container_id"), "name": cg}),
        );
    }
    json!({"process": p, "app_name": attr.get("unit")})
}

/// The OCSF event for one audit record (a JSON object); `unmapped` keeps the
/// fields no OCSF attribute took.
pub fn map(record: &Value) -> Value {
    let empty = Map::new();
    let rec = record.as_object().unwrap_or(&empty);
    let event = str_of(rec, "event").unwrap_or("");
    let decision = str_of(rec, "decision");
    let mut used: Vec<&str> = ENVELOPE.to_vec();
    let mut out = Map::new();

    let (class, (activity_id, activity_name)) = match event {
        "statement" | "statement_outcome" => (DATASTORE, activity_for_statement(rec)),
        "connection_start" => (NETWORK, (1, "Open")),
        "connection" => (
            NETWORK,
            match (decision, str_of(rec, "end")) {
                (Some("deny"), _) => (5, "Refuse"),
                (_, Some("upstream_unreachable")) => (4, "Fail"),
                _ => (2, "Close"),
            },
        ),
        "bypass_drop" | "kernel_deny" => (NETWORK, (5, "Refuse")),
        e if e == "authentication" || e.starts_with("auth_") => (AUTHENTICATION, (1, "Logon")),
        "agent_start" => (LIFECYCLE, (3, "Start")),
        "agent_stop" => (LIFECYCLE, (4, "Stop")),
        "policy_load" => (LIFECYCLE, (8, "Update")),
        "enforcement_detached" => (LIFECYCLE, (7, "Disable")),
        _ => (LIFECYCLE, (99, "Other")),
    };
    out.insert("category_uid".into(), class.category_uid.into());
    out.insert("category_name".into(), class.category_name.into());
    out.insert("class_uid".into(), class.class_uid.into());
    out.insert("class_name".into(), class.class_name.into());
    out.insert("activity_id".into(), activity_id.into());
    out.insert("activity_name".into(), activity_name.into());
    out.insert(
        "type_uid".into(),
        (class.class_uid * 100 + activity_id).into(),
    );
    out.insert(
        "type_name".into(),
        format!("{}: {activity_name}", class.class_name).into(),
    );

    let time = str_of(rec, "time").unwrap_or("");
    out.insert("time".into(), time_ms(time).unwrap_or(0).into());
    out.insert(
        "metadata".into(),
        json!({
            "version": OCSF_VERSION,
            "product": {
                "name": "Portcullis",
                "vendor_name": "Portcullis",
                "version": rec.get("agent_version"),
            },
            "uid": rec.get("event_id"),
            "original_time": time,
            "sequence": rec.get("seq"),
            "log_name": "portcullis-audit",
            "event_code": event,
            "profiles": ["host", "security_control"],
        }),
    );
    out.insert(
        "device".into(),
        json!({"hostname": rec.get("host"), "type_id": 0}),
    );

    // Outcome: severity, status, action and disposition.
    let sev = super::syslog::severity(record);
    let (severity_id, severity) = match sev {
        super::syslog::Severity::Err => (4, "High"),
        super::syslog::Severity::Warning => (3, "Medium"),
        super::syslog::Severity::Notice => (2, "Low"),
        super::syslog::Severity::Info => (1, "Informational"),
    };
    out.insert("severity_id".into(), severity_id.into());
    out.insert("severity".into(), severity.into());
    let failed = decision == Some("deny")
        || decision == Some("error")
        || rec.get("error").is_some_and(|e| !e.is_null())
        || event.ends_with("_failure")
        || str_of(rec, "outcome") == Some("failure")
        || event.ends_with("_reject")
        || matches!(event, "bypass_drop" | "kernel_deny");
    out.insert("status_id".into(), if failed { 2 } else { 1 }.into());
    out.insert(
        "status".into(),
        if failed { "Failure" } else { "Success" }.into(),
    );
    if let Some(code) = str_of(rec, "sqlstate") {
        out.insert("status_code".into(), code.into());
        used.push("sqlstate");
    }
    if let Some(e) = rec.get("error").filter(|e| !e.is_null()) {
        out.insert("status_detail".into(), e.clone());
        used.push("error");
    }
    let denied = decision == Some("deny") || matches!(event, "bypass_drop" | "kernel_deny");
    if decision.is_some() || denied {
        out.insert("action_id".into(), if denied { 2 } else { 1 }.into());
        out.insert(
            "action".into(),
            if denied { "Denied" } else { "Allowed" }.into(),
        );
        out.insert("disposition_id".into(), if denied { 2 } else { 1 }.into());
        out.insert(
            "disposition".into(),
            if denied { "Blocked" } else { "Allowed" }.into(),
        );
        used.push("decision");
    }
    if let Some(rule) = str_of(rec, "rule") {
        let mut policy = json!({"name": rule, "uid": rule});
        if let Some(h) = rec.get("policy_hash") {
            policy["version"] = h.clone();
            used.push("policy_hash");
        }
        out.insert("policy".into(), policy);
        used.push("rule");
    }

    // Who: the attributed process.
    let mut attribution_rest = None;
    if let Some(attr) = rec.get("attribution").and_then(Value::as_object) {
        out.insert("actor".into(), actor(attr));
        used.push("attribution");
        let rest: Map<String, Value> = attr
            .iter()
            .filter(|(k, _)| !ACTOR_FIELDS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !rest.is_empty() {
            attribution_rest = Some(Value::Object(rest));
        }
    } else if rec.get("pid").is_some() || rec.get("uid").is_some() {
        let mut attr = Map::new();
        for k in ["pid", "uid", "comm", "exe"] {
            if let Some(v) = rec.get(k) {
                attr.insert(k.into(), v.clone());
                used.push(k);
            }
        }
        out.insert("actor".into(), actor(&attr));
    }

    // Where: endpoints.
    if let Some(src) = str_of(rec, "client").and_then(endpoint) {
        out.insert("src_endpoint".into(), src);
        used.push("client");
    }
    let dst_key = ["original_destination", "destination"]
        .into_iter()
        .find(|k| str_of(rec, k).is_some());
    if let Some(k) = dst_key
        && let Some(mut dst) = str_of(rec, k).and_then(endpoint)
    {
        if let Some(t) = str_of(rec, "target") {
            dst["name"] = t.into();
            used.push("target");
        }
        out.insert("dst_endpoint".into(), dst);
        used.push(k);
    }
    if let Some(s) = str_of(rec, "session_id") {
        out.insert("session".into(), json!({"uid": s}));
        used.push("session_id");
    }
    if let Some(d) = rec.get("duration_ms").and_then(Value::as_u64) {
        out.insert("duration".into(), d.into());
        used.push("duration_ms");
    }
    // Statements carry microseconds; OCSF durations are milliseconds.
    if let Some(d) = rec.get("duration_us").and_then(Value::as_u64) {
        out.entry("duration").or_insert_with(|| (d / 1000).into());
        used.push("duration_us");
    }

    match class.class_uid {
        3002 => {
            // The account logged in to (the agent's credential, or the client's own).
            if let Some(u) = str_of(rec, "upstream_user") {
                out.insert("user".into(), json!({"name": u, "type_id": 1}));
                used.push("upstream_user");
            }
            if let Some(m) = str_of(rec, "method") {
                out.insert("auth_protocol".into(), m.into());
                out.insert("auth_protocol_id".into(), 99.into());
                used.push("method");
            }
            out.insert("logon_type_id".into(), 3.into());
            out.insert("logon_type".into(), "Network".into());
        }
        4001 => {
            let mut traffic = Map::new();
            if let Some(b) = rec.get("bytes_client_to_upstream") {
                traffic.insert("bytes_out".into(), b.clone());
                used.push("bytes_client_to_upstream");
            }
            if let Some(b) = rec.get("bytes_upstream_to_client") {
                traffic.insert("bytes_in".into(), b.clone());
                used.push("bytes_upstream_to_client");
            }
            if !traffic.is_empty() {
                out.insert("traffic".into(), Value::Object(traffic));
            }
            if let Some(p) = rec.get("ip_protocol").and_then(Value::as_u64) {
                out.insert(
                    "connection_info".into(),
                    json!({"protocol_num": p, "direction_id": 2}),
                );
                used.push("ip_protocol");
            } else {
                out.insert(
                    "connection_info".into(),
                    json!({"protocol_num": 6, "direction_id": 2}),
                );
            }
        }
        6005 => {
            let text = str_of(rec, "statement").or_else(|| str_of(rec, "text"));
            let mut q = Map::new();
            if let Some(t) = text {
                q.insert("query_string".into(), t.into());
                used.extend(["statement", "text"]);
            }
            if let Some(f) = str_of(rec, "fingerprint") {
                q.insert("uid".into(), f.into());
                used.push("fingerprint");
            }
            if let Some(r) = rec.get("rows").and_then(Value::as_u64) {
                q.insert("data_size".into(), r.into());
            }
            if !q.is_empty() {
                out.insert("query_info".into(), Value::Object(q));
            }
            // The table written (what the statement changes) names the event,
            // else the first table read; all of them stay in `unmapped`.
            let first_of = |k: &str| {
                rec.get(k)
                    .and_then(Value::as_array)
                    .and_then(|t| t.iter().find_map(Value::as_str))
            };
            if let Some(first) = first_of("tables")
                .or_else(|| first_of("tables_written"))
                .or_else(|| first_of("tables_read"))
            {
                out.insert("table".into(), json!({"name": first}));
            }
            let mut db = json!({"type_id": 1, "type": "Relational"});
            if let Some(t) = str_of(rec, "target") {
                db["name"] = t.into();
                used.push("target");
            }
            if let Some(d) = str_of(rec, "database") {
                db["name"] = d.into();
                used.push("database");
            }
            out.insert("database".into(), db);
            out.insert("type_id".into(), 1.into());
        }
        6002 => {
            out.insert(
                "app".into(),
                json!({"name": "portcullis", "vendor_name": "Portcullis", "version": rec.get("agent_version")}),
            );
        }
        _ => {}
    }
    out.insert(
        "message".into(),
        match (event, decision, str_of(rec, "rule")) {
            (e, Some(d), Some(r)) => format!("{e}: {d} by rule {r}"),
            (e, Some(d), None) => format!("{e}: {d}"),
            (e, _, _) => e.to_string(),
        }
        .into(),
    );

    let mut unmapped: Map<String, Value> = rec
        .iter()
        .filter(|(k, _)| !used.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(rest) = attribution_rest {
        unmapped.insert("attribution".into(), rest);
    }
    if !unmapped.is_empty() {
        out.insert("unmapped".into(), Value::Object(unmapped));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(event: &str, body: Value) -> Value {
        let mut v = json!({
            "schema": 2, "time": "2026-11-23T15:25:15.123456Z", "host": "db-1",
            "agent_version": "0.1.0", "event": event, "seq": 7,
            "event_id": "019ab000-0000-7000-8000-000000000001",
            "prev_hash": "00", "hash": "11",
        });
        if let (Some(o), Value::Object(b)) = (v.as_object_mut(), body) {
            o.extend(b);
        }
        v
    }

    #[test]
    fn a_proxy_statement_record_names_its_table_and_duration() {
        let o = map(&json!({
            "event": "statement", "event_id": "01a2090a-4aa2-77c2-942b-3c47507e4e0d",
            "ts": "2026-11-23T15:33:15.102918Z", "seq": 9, "host": "vm",
            "statement": "DELETE FROM orders", "kinds": ["delete"],
            "tables_read": [], "tables_written": ["public.orders"],
            "decision": "deny", "rule": "no-where-less", "duration_us": 4200,
            "database": "app", "upstream_user": "app"
        }));
        assert_eq!(o["class_uid"], 6005, "{o:#}");
        assert_eq!(o["activity_id"], 7, "{o:#}");
        assert_eq!(o["table"]["name"], "public.orders", "{o:#}");
        assert_eq!(o["duration"], 4, "{o:#}");
        assert_eq!(o["database"]["name"], "app", "{o:#}");
    }

    #[test]
    fn a_statement_is_datastore_activity_with_query_and_actor() {
        let rec = envelope(
            "statement",
            json!({
                "session_id": "s-1", "target": "orders-db",
                "attribution": {"pid": 4242, "uid": 1000, "gid": 1000, "user": "etl", "comm": "psql",
                                "exe": "/usr/bin/psql", "cgroup": "/etl.service"},
                "statement": "DELETE FROM orders WHERE id = $1", "fingerprint": "ab12",
                "kinds": ["delete"], "tables": ["orders"], "decision": "deny",
                "rule": "no-deletes", "policy_hash": "ph", "sqlstate": "42501",
                "rows": 0, "duration_ms": 3, "custom": "kept",
            }),
        );
        let o = map(&rec);
        assert_eq!(o["class_uid"], 6005);
        assert_eq!(o["category_uid"], 6);
        assert_eq!(
            (o["activity_id"].as_u64(), o["type_uid"].as_u64()),
            (Some(7), Some(600507))
        );
        assert_eq!(o["time"], 1_795_447_515_123_i64, "2026-11-23T15:25:15.123Z");
        assert_eq!(o["metadata"]["uid"], rec["event_id"]);
        assert_eq!(o["metadata"]["version"], OCSF_VERSION);
        assert_eq!(o["metadata"]["original_time"], rec["time"]);
        assert_eq!(o["metadata"]["product"]["name"], "Portcullis");
        assert_eq!(o["actor"]["process"]["pid"], 4242);
        assert_eq!(o["actor"]["process"]["user"]["name"], "etl");
        assert_eq!(o["actor"]["process"]["file"]["path"], "/usr/bin/psql");
        assert_eq!(
            o["query_info"]["query_string"],
            "DELETE FROM orders WHERE id = $1"
        );
        assert_eq!(o["table"]["name"], "orders");
        assert_eq!(
            (o["type_id"].as_u64(), o["database"]["type_id"].as_u64()),
            (Some(1), Some(1))
        );
        assert_eq!(o["database"]["name"], "orders-db");
        assert_eq!(
            (o["status_id"].as_u64(), o["status_code"].as_str()),
            (Some(2), Some("42501"))
        );
        assert_eq!(
            (o["action_id"].as_u64(), o["disposition_id"].as_u64()),
            (Some(2), Some(2))
        );
        assert_eq!(o["severity_id"], 3);
        assert_eq!(o["policy"]["name"], "no-deletes");
        assert_eq!(o["unmapped"]["custom"], "kept");
        assert_eq!(o["unmapped"]["tables"], json!(["orders"]));
        assert_eq!(
            o["unmapped"]["attribution"],
            json!({"gid": 1000}),
            "attribution fields with no OCSF attribute are kept"
        );
        assert!(o["unmapped"].get("event_id").is_none());
    }

    #[test]
    fn connections_and_bypass_drops_are_network_activity() {
        let open = map(&envelope(
            "connection_start",
            json!({"client": "127.0.0.1:40000", "original_destination": "[::1]:5432",
                   "target": "svc", "decision": "allow", "rule": "r"}),
        ));
        assert_eq!(
            (open["class_uid"].as_u64(), open["activity_id"].as_u64()),
            (Some(4001), Some(1))
        );
        assert_eq!(
            open["src_endpoint"],
            json!({"ip": "127.0.0.1", "port": 40000})
        );
        assert_eq!(open["dst_endpoint"]["ip"], "::1");
        assert_eq!(open["dst_endpoint"]["name"], "svc");
        assert_eq!(
            (open["status_id"].as_u64(), open["severity_id"].as_u64()),
            (Some(1), Some(1))
        );
        let denied = map(&envelope(
            "connection",
            json!({"decision": "deny", "bytes_client_to_upstream": 0}),
        ));
        assert_eq!(denied["activity_id"], 5);
        assert_eq!(denied["traffic"]["bytes_out"], 0);
        let drop = map(&envelope(
            "bypass_drop",
            json!({"destination": "127.0.0.1:5432", "uid": 0, "ip_protocol": 17}),
        ));
        assert_eq!(
            (drop["class_uid"].as_u64(), drop["activity_id"].as_u64()),
            (Some(4001), Some(5))
        );
        assert_eq!(drop["connection_info"]["protocol_num"], 17);
        assert_eq!(drop["actor"]["process"]["user"]["uid"], "0");
    }

    #[test]
    fn lifecycle_authentication_and_the_rest() {
        let start = map(&envelope("agent_start", json!({"pid": 1})));
        assert_eq!(
            (start["class_uid"].as_u64(), start["activity_id"].as_u64()),
            (Some(6002), Some(3))
        );
        let stop = map(&envelope("agent_stop", json!({})));
        assert_eq!(stop["type_uid"], 600204);
        let load = map(&envelope("policy_load", json!({"files": ["a.yaml"]})));
        assert_eq!(load["activity_id"], 8);
        assert_eq!(load["unmapped"]["files"], json!(["a.yaml"]));
        let auth = map(&envelope("authentication", json!({"decision": "allow"})));
        assert_eq!(
            (auth["class_uid"].as_u64(), auth["category_uid"].as_u64()),
            (Some(3002), Some(3))
        );
        let cp = map(&envelope("checkpoint", json!({"head_seq": 6})));
        assert_eq!(
            (cp["class_uid"].as_u64(), cp["activity_id"].as_u64()),
            (Some(6002), Some(99))
        );
        assert_eq!(cp["unmapped"]["head_seq"], 6);
        let fail = map(&envelope("export_failure", json!({"error": "refused"})));
        assert_eq!(
            (fail["status_id"].as_u64(), fail["severity_id"].as_u64()),
            (Some(2), Some(4))
        );
        // Not an object: still an event, with nothing lost to mention.
        assert_eq!(map(&json!("x"))["class_uid"], 6002);
    }
}
