//! Recent outbound connects, aggregated by workload and destination, from the
//! kernel's attribution events: what a security team looks at to write policy.

use std::collections::HashMap;

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
pub struct FlowKey {
    pub exe: String,
    pub uid: u32,
    pub cgroup: String,
    pub destination: String,
    pub protocol: &'static str,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct FlowCounts {
    pub connects: u64,
    pub redirected: u64,
    pub passed: u64,
    pub kernel_denied: u64,
    pub exempt: u64,
    pub last_seen: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Flow {
    #[serde(flatten)]
    pub key: FlowKey,
    #[serde(flatten)]
    pub counts: FlowCounts,
}

pub struct Flows {
    max: usize,
    map: HashMap<FlowKey, FlowCounts>,
    pub evicted: u64,
}

impl Flows {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            map: HashMap::new(),
            evicted: 0,
        }
    }

    pub fn add(&mut self, key: FlowKey, verdict: u32, now: String) {
        if !self.map.contains_key(&key) && self.map.len() >= self.max {
            // Bounded: forget the stalest flow.
            if let Some(oldest) = self
                .map
                .iter()
                .min_by(|a, b| a.1.last_seen.cmp(&b.1.last_seen))
                .map(|(k, _)| k.clone())
            {
                self.map.remove(&oldest);
                self.evicted += 1;
            }
        }
        let c = self.map.entry(key).or_default();
        c.connects += 1;
        match verdict {
            agent_common::verdict::REDIRECT => c.redirected += 1,
            agent_common::verdict::DENY => c.kernel_denied += 1,
            agent_common::verdict::EXEMPT => c.exempt += 1,
            _ => c.passed += 1,
        }
        c.last_seen = now;
    }

    pub fn snapshot(&self) -> Vec<Flow> {
        let mut v: Vec<Flow> = self
            .map
            .iter()
            .map(|(k, c)| Flow {
                key: k.clone(),
                counts: c.clone(),
            })
            .collect();
        v.sort_by(|a, b| {
            b.counts
                .connects
                .cmp(&a.counts.connects)
                .then(a.key.cmp(&b.key))
        });
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(d: &str) -> FlowKey {
        FlowKey {
            exe: "/usr/bin/psql".into(),
            uid: 0,
            cgroup: "/".into(),
            destination: d.into(),
            protocol: "tcp",
        }
    }

    #[test]
    fn aggregates_and_bounds() {
        let mut f = Flows::new(2);
        f.add(key("a:1"), agent_common::verdict::REDIRECT, "t1".into());
        f.add(key("a:1"), agent_common::verdict::PASS, "t2".into());
        let s = f.snapshot();
        assert_eq!(s[0].key.destination, "a:1");
        assert_eq!(
            (
                s[0].counts.connects,
                s[0].counts.redirected,
                s[0].counts.passed
            ),
            (2, 1, 1)
        );
        f.add(key("b:1"), agent_common::verdict::PASS, "t3".into());
        f.add(key("c:1"), agent_common::verdict::PASS, "t4".into());
        let s = f.snapshot();
        // Bounded: the flow seen longest ago is forgotten first.
        assert_eq!(s.len(), 2);
        assert_eq!(f.evicted, 1);
        assert!(s.iter().all(|x| x.key.destination != "a:1"));
    }
}
