//! What the agent's tasks share: configuration, enforcement maps, the policy in
//! force, the audit log, counters.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use tokio::sync::{Notify, Semaphore};

use crate::audit::AuditLog;
use crate::config::AgentConfig;
use crate::ebpf::Enforcement;
use crate::flows::Flows;
use crate::identity::CgroupResolver;
use crate::policy::CompiledPolicy;

#[derive(Default)]
pub struct Stats {
    pub sessions_total: AtomicU64,
    pub active: AtomicU64,
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
    pub bypass_events: AtomicU64,
    pub policy_reloads: AtomicU64,
    pub policy_rejects: AtomicU64,
}

pub struct Shared {
    pub cfg: AgentConfig,
    pub enforcement: Mutex<Enforcement>,
    policy: RwLock<Arc<CompiledPolicy>>,
    pub audit: AuditLog,
    /// SIEM export sinks (their status; they run on threads of their own).
    pub exports: crate::audit::export::Exports,
    pub cgroups: CgroupResolver,
    pub exe_hasher: crate::identity::ExeHasher,
    pub flows: Mutex<Flows>,
    pub stats: Stats,
    pub started: Instant,
    pub conn_limit: Arc<Semaphore>,
    /// Notified to stop the agent (SIGTERM, detach).
    pub shutdown: Notify,
    /// PostgreSQL sessions: TLS, cancel keys, SQL analysis cache.
    pub pg: crate::protocol::postgres::Global,
}

impl Shared {
    pub fn new(
        cfg: AgentConfig,
        enforcement: Enforcement,
        policy: CompiledPolicy,
        audit: AuditLog,
        exports: crate::audit::export::Exports,
        cgroups: CgroupResolver,
        pg: crate::protocol::postgres::Global,
    ) -> Self {
        let max = cfg.max_connections;
        Self {
            cfg,
            enforcement: Mutex::new(enforcement),
            policy: RwLock::new(Arc::new(policy)),
            audit,
            exports,
            cgroups,
            exe_hasher: Default::default(),
            flows: Mutex::new(Flows::new(10_000)),
            stats: Stats::default(),
            started: Instant::now(),
            conn_limit: Arc::new(Semaphore::new(max)),
            shutdown: Notify::new(),
            pg,
        }
    }

    /// The policy in force. A connection takes it once and keeps it: it never sees
    /// half of an old and half of a new policy.
    pub fn policy(&self) -> Arc<CompiledPolicy> {
        match self.policy.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn set_policy(&self, p: CompiledPolicy) {
        match self.policy.write() {
            Ok(mut g) => *g = Arc::new(p),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(p),
        }
    }
}
