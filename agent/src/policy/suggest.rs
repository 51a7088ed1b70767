//! `portcullis policy suggest`: a draft policy from the flows the agent observed
//! (`portcullis flows`), for the discover → monitor → enforce roll-out. The draft
//! is in monitor mode and allows exactly what was seen; a person reviews it.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

fn slug(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    while out.contains("--") {
        out = out.replace("--", "-");
    }
    out.trim_matches('-').chars().take(48).collect()
}

/// Builds a draft v1 policy from `flows` (the `flows` array of the admin API).
/// Flows with fewer than `min_connects` connects are left out.
pub fn suggest(flows: &[Value], min_connects: u64) -> String {
    // destination → set of (exe, uid)
    let mut by_dest: BTreeMap<String, BTreeSet<(String, u64)>> = BTreeMap::new();
    let mut seen: BTreeMap<(String, u64), u64> = BTreeMap::new();
    for f in flows {
        let connects = f["connects"].as_u64().unwrap_or(0);
        if connects < min_connects || f["protocol"] != "tcp" {
            continue;
        }
        // The agent's own upstream connects are not workloads.
        if f["exempt"].as_u64().unwrap_or(0) == connects {
            continue;
        }
        let (Some(dest), Some(exe)) = (f["destination"].as_str(), f["exe"].as_str()) else {
            continue;
        };
        let uid = f["uid"].as_u64().unwrap_or(u64::MAX);
        by_dest
            .entry(dest.to_string())
            .or_default()
            .insert((exe.to_string(), uid));
        *seen.entry((exe.to_string(), uid)).or_default() += connects;
    }
    let mut y = String::from(
        "# Draft policy from observed flows (portcullis policy suggest). Review every\n\
         # line: it allows exactly what was seen, nothing else. It starts in monitor\n\
         # mode: nothing is blocked, and what would be denied is recorded as would_deny.\n\
         apiVersion: portcullis.dev/v1\nmode: monitor\nworkloads:\n",
    );
    let mut wl_names = BTreeMap::new();
    for ((exe, uid), n) in &seen {
        let base = exe
            .rsplit('/')
            .next()
            .unwrap_or(exe)
            .trim_start_matches("comm:");
        let name = format!("{}-uid{uid}", slug(base));
        let sel = if let Some(comm) = exe.strip_prefix("comm:") {
            format!("{{ comm: \"{comm}\", uid: {uid} }}")
        } else {
            format!("{{ exe: \"{exe}\", uid: {uid} }}")
        };
        y.push_str(&format!(
            "  - name: {name}\n    description: seen {n} time(s)\n    match: {sel}\n"
        ));
        wl_names.insert((exe.clone(), *uid), name);
    }
    y.push_str("targets:\n");
    let mut tg_names = BTreeMap::new();
    for dest in by_dest.keys() {
        let (addr, port) = match dest.rsplit_once(':') {
            Some((a, p)) => (a.trim_start_matches('[').trim_end_matches(']'), p),
            None => continue,
        };
        let name = slug(&format!("{addr}-{port}"));
        y.push_str(&format!(
            "  - name: {name}\n    addresses: [\"{addr}\"]\n    ports: [{port}]\n    protocol: tcp   # set postgres, http, ... for protocol-aware decisions\n"
        ));
        tg_names.insert(dest.clone(), name);
    }
    y.push_str("rules:\n");
    for (dest, clients) in &by_dest {
        for c in clients {
            let (w, t) = (&wl_names[c], &tg_names[dest]);
            y.push_str(&format!(
                "  - id: {}\n    workloads: [{w}]\n    targets: [{t}]\n    effect: allow\n",
                slug(&format!("{w}-to-{t}"))
            ));
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn draft_compiles_and_allows_what_was_seen() {
        let flows: Vec<Value> = serde_json::from_str(
            r#"[
              {"exe":"/usr/lib/postgresql/15/bin/psql","uid":0,"cgroup":"/","destination":"127.0.0.1:55432","protocol":"tcp","connects":3,"redirected":3,"passed":0,"kernel_denied":0,"exempt":0},
              {"exe":"comm:tokio-rt-worker","uid":0,"cgroup":"/","destination":"127.0.0.1:55432","protocol":"tcp","connects":3,"redirected":0,"passed":0,"kernel_denied":0,"exempt":3},
              {"exe":"/usr/bin/curl","uid":1000,"cgroup":"/user.slice","destination":"[2001:db8::1]:443","protocol":"tcp","connects":1,"redirected":0,"passed":1,"kernel_denied":0,"exempt":0},
              {"exe":"/usr/bin/dig","uid":0,"cgroup":"/","destination":"192.0.2.53:53","protocol":"udp","connects":9,"redirected":0,"passed":9,"kernel_denied":0,"exempt":0}
            ]"#,
        )
        .expect("json");
        let y = suggest(&flows, 1);
        let p = crate::policy::CompiledPolicy::from_sources_with(
            &[(PathBuf::from("draft.yaml"), y.clone())],
            &|_| Err("no DNS".into()),
        )
        .unwrap_or_else(|e| panic!("draft does not compile:\n{e}\n{y}"));
        assert_eq!(p.targets.len(), 2, "{y}");
        assert_eq!(p.rules.len(), 2, "{y}");
        assert!(y.contains("mode: monitor"));
        assert!(
            !y.contains("tokio"),
            "the agent's own connects are not workloads:\n{y}"
        );
    }
}
