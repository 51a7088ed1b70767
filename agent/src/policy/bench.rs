//! `portcullis policy bench`: decision time of [`evaluate`] on a synthetic policy
//! (used by `cargo xtask bench policy`; never by tests).
//!
//! Shape: `rules` rules, one workload each (selected by unit, uid and an exe glob),
//! spread over `rules / 10` targets (at least one), half allow, a tenth deny. The
//! requests cycle through subjects that match, and subjects that match nothing.

use std::path::PathBuf;
use std::time::Instant;

use super::{Action, CompiledPolicy, Request, Subject, evaluate};

pub fn synthetic(rules: usize) -> Result<CompiledPolicy, String> {
    let targets = (rules / 10).max(1);
    let mut y = String::from("apiVersion: portcullis.dev/v1\nworkloads:\n");
    for i in 0..rules {
        y.push_str(&format!(
            "  - name: w{i}\n    match: {{ unit: \"svc-{i}.service\", uid: {}, exe: \"/opt/app{i}/bin/*\" }}\n",
            1000 + i % 50
        ));
    }
    y.push_str("targets:\n");
    for t in 0..targets {
        y.push_str(&format!(
            "  - name: t{t}\n    addresses: [\"10.{}.{}.0/24\"]\n    ports: [5432]\n    protocol: tcp\n",
            t / 256,
            t % 256
        ));
    }
    y.push_str("rules:\n");
    for i in 0..rules {
        let effect = if i % 10 == 0 { "deny" } else { "allow" };
        y.push_str(&format!(
            "  - id: r{i}\n    workloads: [w{i}]\n    targets: [t{}]\n    effect: {effect}\n",
            i % targets
        ));
    }
    CompiledPolicy::from_sources_with(&[(PathBuf::from("bench.yaml"), y)], &|_| {
        Err("no DNS in the benchmark".into())
    })
    .map_err(|e| e.to_string())
}

/// Runs `iterations` decisions and returns (p50, p99) in nanoseconds.
pub fn run(policy: &CompiledPolicy, rules: usize, iterations: usize) -> (u64, u64) {
    let targets = (rules / 10).max(1);
    let subjects: Vec<Subject> = (0..64)
        .map(|k| {
            let i = (k * 7919) % rules;
            Subject {
                uid: Some(1000 + (i % 50) as u32),
                unit: Some(if k % 4 == 3 {
                    "other.service".to_string()
                } else {
                    format!("svc-{i}.service")
                }),
                exe: Some(format!("/opt/app{i}/bin/server")),
                comm: Some("server".into()),
                ..Default::default()
            }
        })
        .collect();
    let mut samples = Vec::with_capacity(iterations);
    for n in 0..iterations {
        let s = &subjects[n % subjects.len()];
        let i = (n % subjects.len() * 7919) % rules;
        let req = Request {
            subject: s,
            target: (i % targets) as u32,
            action: Action::Connect,
            now_unix: 1_767_614_400,
        };
        let t = Instant::now();
        let d = evaluate(policy, &req);
        let ns = t.elapsed().as_nanos() as u64;
        std::hint::black_box(d);
        samples.push(ns);
    }
    samples.sort_unstable();
    let at = |q: f64| {
        samples
            .get(((samples.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0)
    };
    (at(0.5), at(0.99))
}
