//! Loads, attaches, pins and adopts the kernel programs, and owns their maps.
//!
//! Pin layout under the bpffs directory (default `/sys/fs/bpf/portcullis`):
//!
//! ```text
//! maps-v1/PC_*                              maps (layout version in the name)
//! links/<program>-<cgroup id>-<object hash> one pinned link per attached program
//! ```
//!
//! Start-up with pins of the same object and cgroup adopts them (no re-attach).
//! Otherwise the new programs are attached and pinned first, and the old pins
//! removed after: two generations may run side by side for an instant, never none.
//! Maps are filled (config, protected targets) before any program is attached, and
//! with `listen_port` 0 the programs refuse protected connects: fail closed.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use agent_common::{
    COMM_LEN, Config, ConnInfo, Event, ExecInfo, TargetKey, TargetValue, TupleKey, counter,
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, MapData, PerCpuArray, RingBuf,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, SockOps, TracePoint,
        links::{FdLink, PinnedLink},
    },
};
use sha2::{Digest, Sha256};

use crate::policy::CompiledPolicy;

/// The kernel object, built by build.rs.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portcullis-ebpf"));

/// Bumped whenever a map's key or value layout changes, so an upgrade never reuses
/// a pinned map of another layout.
const MAP_LAYOUT: &str = "maps-v1";
const MAP_NAMES: [&str; 10] = [
    "PC_CONFIG",
    "PC_TARGETS",
    "PC_TARGET_ADDRS",
    "PC_PENDING",
    "PC_TUPLES",
    "PC_EXECS",
    "PC_SCRATCH",
    "PC_COUNTERS",
    "PC_BYPASS_RL",
    "PC_EVENTS",
];
/// Pinned enforcement programs, in attach order.
pub const PROGRAMS: [&str; 4] = ["pc_connect4", "pc_connect6", "pc_sockops", "pc_egress"];
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Capacity of the protected-target maps (see agent-ebpf).
pub const MAX_TARGET_ENTRIES: usize = 16_384;
/// Oldest connection record the proxy accepts (connect to accept).
const MAX_RECORD_AGE_NS: u64 = 30_000_000_000;

/// CLOCK_BOOTTIME in nanoseconds (the clock of every kernel timestamp here).
pub fn boot_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("bpffs: {0}")]
    Bpffs(String),
    #[error("cgroup {path}: {reason}")]
    Cgroup { path: PathBuf, reason: String },
    #[error("loading the kernel programs failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("program {0} is missing from the kernel object")]
    MissingProgram(&'static str),
    #[error("map {name}: {reason}")]
    Map { name: &'static str, reason: String },
    #[error("pin {path}: {reason}")]
    Pin { path: PathBuf, reason: String },
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> EbpfError {
    move |e| EbpfError::Map {
        name,
        reason: e.to_string(),
    }
}

/// Status of one enforcement program.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProgramStatus {
    pub name: &'static str,
    pub pin: PathBuf,
    pub pinned: bool,
}

pub struct Enforcement {
    /// Keeps freshly loaded programs and the exec tracepoint alive.
    ebpf: Ebpf,
    pub dir: PathBuf,
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    pub object_hash: String,
    /// True when every program was adopted from existing pins.
    pub adopted: bool,
    /// Held open: programs loaded after `open` reference every map by fd.
    _config: Array<MapData, Config>,
    targets: LpmTrie<MapData, TargetKey, TargetValue>,
    target_addrs: LpmTrie<MapData, [u8; 16], u32>,
    tuples: HashMap<MapData, TupleKey, ConnInfo>,
    execs: HashMap<MapData, u32, ExecInfo>,
    counters: PerCpuArray<MapData, u64>,
    events: Option<RingBuf<MapData>>,
    /// What is currently in the targets maps (to remove stale entries on reload).
    installed: BTreeMap<(u16, [u8; 16], u8), TargetValue>,
    installed_addrs: BTreeMap<([u8; 16], u8), u32>,
}

/// sha256 of the embedded kernel object (first 12 hex digits name the link pins).
pub fn object_hash() -> String {
    Sha256::digest(EBPF_OBJECT)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Mounts bpffs at /sys/fs/bpf if nothing is mounted there, and checks `dir` is on bpffs.
pub fn ensure_bpffs(dir: &Path) -> Result<(), EbpfError> {
    let root = Path::new("/sys/fs/bpf");
    if dir.starts_with(root) && !is_bpffs(root) {
        nix::mount::mount(
            Some("bpffs"),
            root,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| EbpfError::Bpffs(format!("mounting bpffs at /sys/fs/bpf: {e}")))?;
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| EbpfError::Bpffs(format!("creating {}: {e}", dir.display())))?;
    if !is_bpffs(dir) {
        return Err(EbpfError::Bpffs(format!(
            "{} is not on a bpffs mount; set bpffs_dir to a directory under /sys/fs/bpf",
            dir.display()
        )));
    }
    Ok(())
}

fn is_bpffs(p: &Path) -> bool {
    nix::sys::statfs::statfs(p)
        .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// The cgroup v2 mount point, from /proc/self/mountinfo (pure v2 or hybrid).
pub fn cgroup2_root() -> Result<PathBuf, EbpfError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| EbpfError::Cgroup {
        path: "/proc/self/mountinfo".into(),
        reason: e.to_string(),
    })?;
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split_whitespace().next()?;
            let mnt = pre.split_whitespace().nth(4)?;
            (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount(mnt)))
        })
        .collect();
    found.sort_by_key(|p| p.components().count());
    found.into_iter().next().ok_or_else(|| EbpfError::Cgroup {
        path: "/proc/self/mountinfo".into(),
        reason: "no cgroup2 filesystem is mounted (mount it, e.g. at /sys/fs/cgroup/unified)"
            .into(),
    })
}

fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\134", "\\")
}

/// The cgroup v2 id of a cgroup directory (its inode number).
pub fn cgroup_id(path: &Path) -> Result<u64, EbpfError> {
    std::fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|e| EbpfError::Cgroup {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

impl Enforcement {
    /// Opens (or creates) the pinned maps and writes the agent settings. Nothing is
    /// attached yet: call [`Enforcement::sync_targets`], then [`Enforcement::attach`].
    pub fn open(dir: &Path, cgroup: &Path, cfg: Config) -> Result<Self, EbpfError> {
        ensure_bpffs(dir)?;
        let maps_dir = dir.join(MAP_LAYOUT);
        for d in [&maps_dir, &dir.join("links")] {
            std::fs::create_dir_all(d)
                .map_err(|e| EbpfError::Bpffs(format!("creating {}: {e}", d.display())))?;
        }
        let cgroup_id = cgroup_id(cgroup)?;
        let mut loader = EbpfLoader::new();
        for name in MAP_NAMES {
            loader.map_pin_path(name, maps_dir.join(name));
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(EbpfError::Map {
                name,
                reason: "missing from the kernel object".into(),
            })
        };
        let mut config: Array<MapData, Config> =
            Array::try_from(take(&mut ebpf, "PC_CONFIG")?).map_err(map_err("PC_CONFIG"))?;
        let targets =
            LpmTrie::try_from(take(&mut ebpf, "PC_TARGETS")?).map_err(map_err("PC_TARGETS"))?;
        let target_addrs = LpmTrie::try_from(take(&mut ebpf, "PC_TARGET_ADDRS")?)
            .map_err(map_err("PC_TARGET_ADDRS"))?;
        let tuples =
            HashMap::try_from(take(&mut ebpf, "PC_TUPLES")?).map_err(map_err("PC_TUPLES"))?;
        let execs = HashMap::try_from(take(&mut ebpf, "PC_EXECS")?).map_err(map_err("PC_EXECS"))?;
        let counters = PerCpuArray::try_from(take(&mut ebpf, "PC_COUNTERS")?)
            .map_err(map_err("PC_COUNTERS"))?;
        let events =
            RingBuf::try_from(take(&mut ebpf, "PC_EVENTS")?).map_err(map_err("PC_EVENTS"))?;
        config.set(0, cfg, 0).map_err(map_err("PC_CONFIG"))?;
        let mut me = Self {
            ebpf,
            _config: config,
            dir: dir.to_owned(),
            cgroup: cgroup.to_owned(),
            cgroup_id,
            object_hash: object_hash(),
            adopted: false,
            targets,
            target_addrs,
            tuples,
            execs,
            counters,
            events: Some(events),
            installed: BTreeMap::new(),
            installed_addrs: BTreeMap::new(),
        };
        me.read_installed_targets();
        me.clear_tuples();
        Ok(me)
    }

    fn read_installed_targets(&mut self) {
        self.installed = self
            .targets
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| {
                (
                    (
                        u16::from_be_bytes(k.data().port),
                        k.data().addr,
                        k.prefix_len() as u8,
                    ),
                    v,
                )
            })
            .collect();
        self.installed_addrs = self
            .target_addrs
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| ((k.data(), k.prefix_len() as u8), v))
            .collect();
    }

    /// Makes the kernel's protected-target maps equal to the policy's targets. New
    /// entries go in before stale ones come out, so a target present in both the old
    /// and the new policy is never unprotected.
    pub fn sync_targets(&mut self, policy: &CompiledPolicy) -> Result<(), EbpfError> {
        let mut want = BTreeMap::new();
        let mut want_addrs = BTreeMap::new();
        for t in &policy.targets {
            let ports: Vec<u16> = if t.ports.is_empty() {
                vec![0]
            } else {
                t.ports.clone()
            };
            for p in &t.prefixes {
                want_addrs.insert((p.addr, p.len), 1u32);
                for port in &ports {
                    want.insert(
                        (*port, p.addr, 16 + p.len),
                        TargetValue {
                            target_id: t.id,
                            flags: 0,
                        },
                    );
                }
            }
        }
        if let Err(e) = self.insert_targets(&want, &want_addrs) {
            // Roll back what this call added, so a refused reload leaves the
            // kernel exactly as it was.
            for (port, addr, len) in want.keys() {
                if !self.installed.contains_key(&(*port, *addr, *len)) {
                    let _ = self.targets.remove(&Key::new(
                        u32::from(*len),
                        TargetKey {
                            port: port.to_be_bytes(),
                            addr: *addr,
                        },
                    ));
                }
            }
            for (addr, len) in want_addrs.keys() {
                if !self.installed_addrs.contains_key(&(*addr, *len)) {
                    let _ = self.target_addrs.remove(&Key::new(u32::from(*len), *addr));
                }
            }
            return Err(e);
        }
        for (port, addr, len) in self.installed.keys() {
            if !want.contains_key(&(*port, *addr, *len)) {
                let key = Key::new(
                    u32::from(*len),
                    TargetKey {
                        port: port.to_be_bytes(),
                        addr: *addr,
                    },
                );
                let _ = self.targets.remove(&key);
            }
        }
        for (addr, len) in self.installed_addrs.keys() {
            if !want_addrs.contains_key(&(*addr, *len)) {
                let _ = self.target_addrs.remove(&Key::new(u32::from(*len), *addr));
            }
        }
        self.installed = want;
        self.installed_addrs = want_addrs;
        Ok(())
    }

    #[allow(clippy::type_complexity)]
    fn insert_targets(
        &mut self,
        want: &BTreeMap<(u16, [u8; 16], u8), TargetValue>,
        want_addrs: &BTreeMap<([u8; 16], u8), u32>,
    ) -> Result<(), EbpfError> {
        for ((addr, len), v) in want_addrs {
            self.target_addrs
                .insert(&Key::new(u32::from(*len), *addr), *v, 0)
                .map_err(map_err("PC_TARGET_ADDRS"))?;
        }
        for ((port, addr, len), v) in want {
            let key = Key::new(
                u32::from(*len),
                TargetKey {
                    port: port.to_be_bytes(),
                    addr: *addr,
                },
            );
            self.targets
                .insert(&key, *v, 0)
                .map_err(map_err("PC_TARGETS"))?;
        }
        Ok(())
    }

    fn link_pin(&self, prog: &str, hash: &str) -> PathBuf {
        let short = hash.get(..12).unwrap_or(hash);
        self.dir
            .join("links")
            .join(format!("{prog}-{}-{short}", self.cgroup_id))
    }

    /// Attaches (or adopts) the enforcement programs and pins their links, then
    /// removes pins of other generations. Also attaches the exec tracepoint.
    pub fn attach(&mut self) -> Result<(), EbpfError> {
        let cgroup_file = std::fs::File::open(&self.cgroup).map_err(|e| EbpfError::Cgroup {
            path: self.cgroup.clone(),
            reason: e.to_string(),
        })?;
        let hash = self.object_hash.clone();
        let mut adopted_all = true;
        for name in PROGRAMS {
            let pin = self.link_pin(name, &hash);
            if pin.exists() && PinnedLink::from_pin(&pin).is_ok() {
                continue;
            }
            adopted_all = false;
            let prog_err = |source| EbpfError::Program { name, source };
            let program = self
                .ebpf
                .program_mut(name)
                .ok_or(EbpfError::MissingProgram(name))?;
            let fd_link: FdLink = match name {
                "pc_connect4" | "pc_connect6" => {
                    let p: &mut CgroupSockAddr = program.try_into().map_err(prog_err)?;
                    p.load().map_err(prog_err)?;
                    let id = p
                        .attach(&cgroup_file, CgroupAttachMode::Single)
                        .map_err(prog_err)?;
                    let link = p.take_link(id).map_err(prog_err)?;
                    FdLink::try_from(link).map_err(|e| EbpfError::Pin {
                        path: pin.clone(),
                        reason: e.to_string(),
                    })?
                }
                "pc_sockops" => {
                    let p: &mut SockOps = program.try_into().map_err(prog_err)?;
                    p.load().map_err(prog_err)?;
                    let id = p
                        .attach(&cgroup_file, CgroupAttachMode::Single)
                        .map_err(prog_err)?;
                    let link = p.take_link(id).map_err(prog_err)?;
                    FdLink::try_from(link).map_err(|e| EbpfError::Pin {
                        path: pin.clone(),
                        reason: e.to_string(),
                    })?
                }
                _ => {
                    let p: &mut CgroupSkb = program.try_into().map_err(prog_err)?;
                    p.load().map_err(prog_err)?;
                    let id = p
                        .attach(
                            &cgroup_file,
                            CgroupSkbAttachType::Egress,
                            CgroupAttachMode::Single,
                        )
                        .map_err(prog_err)?;
                    let link = p.take_link(id).map_err(prog_err)?;
                    FdLink::try_from(link).map_err(|e| EbpfError::Pin {
                        path: pin.clone(),
                        reason: e.to_string(),
                    })?
                }
            };
            // bpffs refuses names with a dot.
            let tmp = PathBuf::from(format!("{}_new", pin.display()));
            let _ = std::fs::remove_file(&tmp);
            fd_link.pin(&tmp).map_err(|e| EbpfError::Pin {
                path: tmp.clone(),
                reason: e.to_string(),
            })?;
            std::fs::rename(&tmp, &pin).map_err(|e| EbpfError::Pin {
                path: pin.clone(),
                reason: e.to_string(),
            })?;
        }
        // Only now that every program of this generation is pinned: drop the others.
        let keep: Vec<PathBuf> = PROGRAMS.iter().map(|n| self.link_pin(n, &hash)).collect();
        if let Ok(rd) = std::fs::read_dir(self.dir.join("links")) {
            for e in rd.flatten() {
                let p = e.path();
                if !keep.contains(&p) {
                    tracing::info!(pin = %p.display(), "removing link of a previous generation");
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
        self.adopted = adopted_all;
        // The exec tracepoint feeds attribution only; it is re-attached on every start.
        let tp: &mut TracePoint = self
            .ebpf
            .program_mut("pc_exec")
            .ok_or(EbpfError::MissingProgram("pc_exec"))?
            .try_into()
            .map_err(|source| EbpfError::Program {
                name: "pc_exec",
                source,
            })?;
        tp.load().map_err(|source| EbpfError::Program {
            name: "pc_exec",
            source,
        })?;
        tp.attach("sched", "sched_process_exec")
            .map_err(|source| EbpfError::Program {
                name: "pc_exec",
                source,
            })?;
        // Fork tracking (children inherit the parent's executable record).
        let tp: &mut TracePoint = self
            .ebpf
            .program_mut("pc_fork")
            .ok_or(EbpfError::MissingProgram("pc_fork"))?
            .try_into()
            .map_err(|source| EbpfError::Program {
                name: "pc_fork",
                source,
            })?;
        tp.load().map_err(|source| EbpfError::Program {
            name: "pc_fork",
            source,
        })?;
        tp.attach("sched", "sched_process_fork")
            .map_err(|source| EbpfError::Program {
                name: "pc_fork",
                source,
            })?;
        Ok(())
    }

    /// Takes the kernel's record of an accepted connection (by the client's address).
    /// Takes the kernel's record of an accepted connection (by the client's address).
    /// A record older than [`MAX_RECORD_AGE_NS`] is refused: the handshake it belongs
    /// to is long gone, and a new socket on the same port is someone else.
    pub fn take_conn(&mut self, key: &TupleKey) -> Option<ConnInfo> {
        let v = self.tuples.get(key, 0).ok()?;
        let _ = self.tuples.remove(key);
        let now = boot_ns();
        if now.saturating_sub(v.ktime_ns) > MAX_RECORD_AGE_NS {
            tracing::warn!(
                pid = v.tgid,
                age_ms = now.saturating_sub(v.ktime_ns) / 1_000_000,
                "stale connection record refused"
            );
            return None;
        }
        Some(v)
    }

    /// Forgets every re-keyed connection: called at start, when no connection to a
    /// previous listener can still be waiting.
    fn clear_tuples(&mut self) {
        let keys: Vec<TupleKey> = self.tuples.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = self.tuples.remove(&k);
        }
    }

    pub fn exec_of(&self, tgid: u32) -> Option<ExecInfo> {
        self.execs.get(&tgid, 0).ok()
    }

    /// Sums of the per-CPU counters, by name.
    pub fn counters(&self) -> BTreeMap<&'static str, u64> {
        let mut out = BTreeMap::new();
        for (i, name) in counter::NAMES.iter().enumerate() {
            let sum = self
                .counters
                .get(&(i as u32), 0)
                .map(|v| v.iter().sum::<u64>())
                .unwrap_or(0);
            out.insert(*name, sum);
        }
        out
    }

    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    pub fn programs(&self) -> Vec<ProgramStatus> {
        PROGRAMS
            .iter()
            .map(|n| {
                let pin = self.link_pin(n, &self.object_hash);
                ProgramStatus {
                    name: n,
                    pinned: pin.exists(),
                    pin,
                }
            })
            .collect()
    }
}

/// Removes every pin under `dir` (links first, then maps): enforcement stops once
/// no process holds the links. This is the explicit `portcullis detach`.
pub fn remove_pins(dir: &Path) -> Result<Vec<PathBuf>, EbpfError> {
    let mut removed = Vec::new();
    let links = dir.join("links");
    if let Ok(rd) = std::fs::read_dir(&links) {
        for e in rd.flatten() {
            std::fs::remove_file(e.path()).map_err(|err| EbpfError::Pin {
                path: e.path(),
                reason: err.to_string(),
            })?;
            removed.push(e.path());
        }
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                if let Ok(inner) = std::fs::read_dir(&p) {
                    for f in inner.flatten() {
                        let _ = std::fs::remove_file(f.path());
                        removed.push(f.path());
                    }
                }
                let _ = std::fs::remove_dir(&p);
            } else {
                let _ = std::fs::remove_file(&p);
                removed.push(p);
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
    Ok(removed)
}

/// Decodes a ring-buffer record without unsafe code. `None` if it is too short.
pub fn parse_event(b: &[u8]) -> Option<Event> {
    if b.len() < std::mem::size_of::<Event>() {
        return None;
    }
    let u32_at =
        |o: usize| -> Option<u32> { Some(u32::from_ne_bytes(b.get(o..o + 4)?.try_into().ok()?)) };
    let u64_at =
        |o: usize| -> Option<u64> { Some(u64::from_ne_bytes(b.get(o..o + 8)?.try_into().ok()?)) };
    let u16_at =
        |o: usize| -> Option<u16> { Some(u16::from_ne_bytes(b.get(o..o + 2)?.try_into().ok()?)) };
    let c = 16;
    let mut comm = [0u8; COMM_LEN];
    comm.copy_from_slice(b.get(c + 80..c + 96)?);
    Some(Event {
        kind: u32_at(0)?,
        verdict: u32_at(4)?,
        proto: u32_at(8)?,
        _pad: 0,
        conn: ConnInfo {
            orig_addr: b.get(c..c + 16)?.try_into().ok()?,
            orig_port: u16_at(c + 16)?,
            family: u16_at(c + 18)?,
            target_id: u32_at(c + 20)?,
            tgid: u32_at(c + 24)?,
            tid: u32_at(c + 28)?,
            uid: u32_at(c + 32)?,
            gid: u32_at(c + 36)?,
            cgroup_id: u64_at(c + 40)?,
            netns_cookie: u64_at(c + 48)?,
            sock_cookie: u64_at(c + 56)?,
            ktime_ns: u64_at(c + 64)?,
            exec_ktime_ns: u64_at(c + 72)?,
            comm,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_layout_matches_parser() {
        assert_eq!(std::mem::size_of::<ConnInfo>(), 96);
        assert_eq!(std::mem::size_of::<Event>(), 112);
        assert_eq!(std::mem::offset_of!(ConnInfo, cgroup_id), 40);
        assert_eq!(std::mem::offset_of!(ConnInfo, comm), 80);
        assert_eq!(std::mem::offset_of!(Event, conn), 16);
        let mut b = vec![0u8; 112];
        b[0] = 1;
        b[16 + 24] = 7; // tgid
        b[16 + 80] = b'x';
        let e = parse_event(&b).expect("parses");
        assert_eq!((e.kind, e.conn.tgid, e.conn.comm[0]), (1, 7, b'x'));
        assert!(parse_event(&b[..100]).is_none());
    }

    #[test]
    fn object_is_embedded() {
        assert!(EBPF_OBJECT.len() > 1000);
        assert_eq!(object_hash().len(), 64);
    }
}
