//! Loads, attaches, pins and adopts the kernel programs, and owns their maps.
//!
//! Pin layout under the bpffs directory (default `/sys/fs/bpf/portcullis`):
//!
//! ```text
//! maps-v2/PC_*                              maps (layout version in the name)
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
        BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock,
        CgroupSockAddr, CgroupSockopt, LinkOrder, LsmCgroup, SchedClassifier, SockOps,
        TcAttachType,
        links::{FdLink, PinnedLink},
        tc::TcAttachOptions,
    },
};
use sha2::{Digest, Sha256};

use crate::policy::CompiledPolicy;

/// The kernel object, built by build.rs.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portcullis-ebpf"));

/// Bumped whenever a map's key or value layout changes, so an upgrade never reuses
/// a pinned map of another layout.
const MAP_LAYOUT: &str = "maps-v2";
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
pub const PROGRAMS: [&str; 5] = [
    "pc_connect4",
    "pc_connect6",
    "pc_sockops",
    "pc_egress",
    "pc_sock_create",
];
/// The packet/XDP socket guard (lsm_cgroup socket_create): pinned like the
/// others, but it needs BPF LSM programs, which some kernels refuse to load
/// (e.g. under lockdown, or without `bpf` in `lsm=`). Without it the agent runs,
/// says so at start, in the audit log and in `portcullis status`.
pub const PACKET_GUARD: &str = "pc_socket_create";
/// The interface egress guard (tcx on every interface, pinned per interface):
/// drops frames of packet sockets of the enforced cgroup to protected targets.
pub const TC_GUARD: &str = "pc_tc_egress";

/// (name, ifindex) of every network interface of the agent's network namespace.
fn interfaces() -> Vec<(String, u32)> {
    let mut v: Vec<(String, u32)> = nix::net::if_::if_nameindex()
        .map(|l| {
            l.iter()
                .map(|i| (i.name().to_string_lossy().into_owned(), i.index()))
                .collect()
        })
        .unwrap_or_default();
    v.sort_by_key(|(_, i)| *i);
    v
}

/// Attribution programs (BTF tracepoints, not cgroup-attached): re-attached on
/// every start. (program, tracepoint)
const ATTRIBUTION_PROGRAMS: [(&str, &str); 2] = [
    ("pc_exec", "sched_process_exec"),
    ("pc_fork", "sched_process_fork"),
];
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
    #[error("kernel BTF ({path}): {reason}")]
    Btf { path: &'static str, reason: String },
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
    /// Keeps freshly loaded programs and the exec and fork hooks alive.
    ebpf: Ebpf,
    /// The running kernel's BTF (to load BTF tracepoints and LSM programs).
    btf: aya::Btf,
    pub dir: PathBuf,
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    pub object_hash: String,
    /// True when every program was adopted from existing pins.
    pub adopted: bool,
    /// The SO_MARK the kernel programs expect on the agent's upstream sockets.
    pub mark: u32,
    /// Whether the packet/XDP socket guard is attached (why not, if not).
    pub packet_guard: Result<(), String>,
    /// Interfaces whose egress drops packet-socket frames to protected targets.
    pub tc_guarded: Vec<String>,
    /// Interface indexes the guard was tried on (guarded or not).
    tc_guarded_index: Vec<u32>,
    /// Whether the setsockopt guard is attached (why not, if not).
    pub sockopt_guard: Result<(), String>,
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

/// Pins `link` at `pin`, replacing what is there in one rename: the old pin (and
/// the enforcement it holds) stays until the new one is in place. bpffs refuses
/// names with a dot, hence the `_new` suffix of the temporary name.
fn pin_replacing(link: FdLink, pin: &Path) -> Result<(), EbpfError> {
    let tmp = PathBuf::from(format!("{}_new", pin.display()));
    let _ = std::fs::remove_file(&tmp);
    link.pin(&tmp).map_err(|e| EbpfError::Pin {
        path: tmp.clone(),
        reason: e.to_string(),
    })?;
    std::fs::rename(&tmp, pin).map_err(|e| EbpfError::Pin {
        path: pin.to_path_buf(),
        reason: e.to_string(),
    })
}

impl Enforcement {
    /// Opens (or creates) the pinned maps and writes the agent settings. Nothing is
    /// attached yet: call [`Enforcement::sync_targets`], then [`Enforcement::attach`].
    ///
    /// With `auto_mark`, `cfg.mark` is replaced by the mark kept in the pinned
    /// config map, or a new random one on first start; [`Enforcement::mark`] tells
    /// which.
    pub fn open(
        dir: &Path,
        cgroup: &Path,
        cfg: Config,
        auto_mark: bool,
    ) -> Result<Self, EbpfError> {
        ensure_bpffs(dir)?;
        let maps_dir = dir.join(MAP_LAYOUT);
        for d in [&maps_dir, &dir.join("links")] {
            std::fs::create_dir_all(d)
                .map_err(|e| EbpfError::Bpffs(format!("creating {}: {e}", d.display())))?;
        }
        let cgroup_id = cgroup_id(cgroup)?;
        let offsets = kernel_btf::Offsets::from_sys_fs()?;
        // The kernel's BTF, parsed once: for the loader and for BTF/LSM programs.
        let btf = kernel_btf::aya_btf()?;
        let mut loader = EbpfLoader::new();
        loader.btf(Some(&btf));
        for name in MAP_NAMES {
            loader.map_pin_path(name, maps_dir.join(name));
        }
        let globals = offsets.globals();
        for (name, value) in &globals {
            loader.override_global(name, value, true);
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
        let mut cfg = cfg;
        cfg.enforced_cgroup_id = cgroup_id;
        cfg.enforced_level = cgroup2_root()
            .ok()
            .and_then(|r| cgroup.strip_prefix(r).ok().map(|p| p.components().count()))
            .unwrap_or(0) as u32;
        if auto_mark {
            // Kept with the pins: an agent adopting them (or running next to a newer
            // generation during an upgrade) uses the same mark.
            let kept = config.get(&0, 0).map(|c| c.mark).unwrap_or(0);
            cfg.mark = if kept != 0 { kept } else { random_mark()? };
        }
        config.set(0, cfg, 0).map_err(map_err("PC_CONFIG"))?;
        let mut me = Self {
            ebpf,
            btf,
            _config: config,
            dir: dir.to_owned(),
            cgroup: cgroup.to_owned(),
            cgroup_id,
            object_hash: object_hash(),
            adopted: false,
            mark: cfg.mark,
            packet_guard: Err("not attached yet".into()),
            tc_guarded: Vec::new(),
            tc_guarded_index: Vec::new(),
            sockopt_guard: Err("not attached yet".into()),
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

    /// Puts the interface egress guard on every interface that appeared since the
    /// last call (a container's veth, a new VLAN): returns the names of those now
    /// guarded, and of those that could not be (with the reason).
    #[allow(clippy::type_complexity)]
    pub fn guard_new_interfaces(&mut self) -> (Vec<String>, Vec<(String, String)>) {
        let hash = self.object_hash.clone();
        let mut added = Vec::new();
        let mut failed = Vec::new();
        for (ifname, ifindex) in interfaces() {
            if self.tc_guarded_index.contains(&ifindex) {
                continue;
            }
            let pin = self.link_pin(&format!("{TC_GUARD}-if{ifindex}"), &hash);
            let res = if pin.exists() && PinnedLink::from_pin(&pin).is_ok() {
                Ok(())
            } else {
                self.attach_tc(&ifname, &pin)
            };
            // Tried once per interface index: a failure is reported once, not on
            // every scan.
            self.tc_guarded_index.push(ifindex);
            match res {
                Ok(()) => {
                    self.tc_guarded.push(ifname.clone());
                    added.push(ifname);
                }
                Err(e) => failed.push((ifname, e.to_string())),
            }
        }
        (added, failed)
    }

    /// Attaches the interface egress guard (tcx) to `ifname` and pins the link.
    fn attach_tc(&mut self, ifname: &str, pin: &Path) -> Result<(), EbpfError> {
        let name = TC_GUARD;
        let prog_err = |source| EbpfError::Program { name, source };
        let p: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .ok_or(EbpfError::MissingProgram(name))?
            .try_into()
            .map_err(prog_err)?;
        if p.fd().is_err() {
            p.load().map_err(prog_err)?;
        }
        let id = p
            .attach_with_options(
                ifname,
                TcAttachType::Egress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(prog_err)?;
        let link = p.take_link(id).map_err(prog_err)?;
        let fd_link = FdLink::try_from(link).map_err(|e| EbpfError::Pin {
            path: pin.to_path_buf(),
            reason: e.to_string(),
        })?;
        pin_replacing(fd_link, pin)
    }

    /// Loads `name`, attaches it to the enforced cgroup and pins its link at `pin`.
    fn attach_pinned(
        &mut self,
        name: &'static str,
        pin: &Path,
        cgroup_file: &std::fs::File,
    ) -> Result<(), EbpfError> {
        let pin = pin.to_path_buf();
        let prog_err = |source| EbpfError::Program { name, source };
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or(EbpfError::MissingProgram(name))?;
        let link_err = |e: aya::programs::links::LinkError| EbpfError::Pin {
            path: pin.clone(),
            reason: e.to_string(),
        };
        // Load, attach to the cgroup, take the link: the same steps for each
        // program type, with the type's own attach arguments.
        macro_rules! cgroup_link {
            ($ty:ty, |$p:ident| $attach:expr) => {{
                let $p: &mut $ty = program.try_into().map_err(prog_err)?;
                $p.load().map_err(prog_err)?;
                let id = $attach.map_err(prog_err)?;
                FdLink::try_from($p.take_link(id).map_err(prog_err)?).map_err(link_err)?
            }};
        }
        let fd_link: FdLink = match name {
            "pc_connect4" | "pc_connect6" => cgroup_link!(CgroupSockAddr, |p| p
                .attach(cgroup_file, CgroupAttachMode::Single)),
            "pc_sockops" => {
                cgroup_link!(SockOps, |p| p.attach(cgroup_file, CgroupAttachMode::Single))
            }
            "pc_egress" => cgroup_link!(CgroupSkb, |p| p.attach(
                cgroup_file,
                CgroupSkbAttachType::Egress,
                CgroupAttachMode::Single,
            )),
            "pc_sock_create" => cgroup_link!(CgroupSock, |p| p
                .attach(cgroup_file, CgroupAttachMode::Single)),
            _ => {
                let p: &mut LsmCgroup = program.try_into().map_err(prog_err)?;
                p.load("socket_create", &self.btf).map_err(prog_err)?;
                let id = p.attach(cgroup_file).map_err(prog_err)?;
                FdLink::from(p.take_link(id).map_err(prog_err)?)
            }
        };
        pin_replacing(fd_link, &pin)
    }

    /// Attaches (or adopts) the enforcement programs and pins their links, then
    /// removes pins of other generations. Also attaches the exec and fork hooks.
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
            self.attach_pinned(name, &pin, &cgroup_file)?;
        }
        // The packet socket guard: optional (see PACKET_GUARD).
        let guard_pin = self.link_pin(PACKET_GUARD, &hash);
        self.packet_guard = if guard_pin.exists() && PinnedLink::from_pin(&guard_pin).is_ok() {
            Ok(())
        } else {
            self.attach_pinned(PACKET_GUARD, &guard_pin, &cgroup_file)
                .map_err(|e| e.to_string())
        };
        if let Err(e) = &self.packet_guard {
            tracing::warn!(
                error = %e,
                "packet and XDP sockets are NOT refused in the enforced cgroup: the kernel refused the BPF LSM program"
            );
        }
        // The interface egress guard, on every interface present now.
        let mut keep: Vec<PathBuf> = PROGRAMS
            .iter()
            .chain(std::iter::once(&PACKET_GUARD))
            .map(|n| self.link_pin(n, &hash))
            .collect();
        self.tc_guarded = Vec::new();
        self.tc_guarded_index = Vec::new();
        for (ifname, ifindex) in interfaces() {
            self.tc_guarded_index.push(ifindex);
            let pin = self.link_pin(&format!("{TC_GUARD}-if{ifindex}"), &hash);
            let res = if pin.exists() && PinnedLink::from_pin(&pin).is_ok() {
                Ok(())
            } else {
                self.attach_tc(&ifname, &pin)
            };
            match res {
                Ok(()) => {
                    keep.push(pin);
                    self.tc_guarded.push(ifname);
                }
                Err(e) => tracing::warn!(
                    interface = %ifname,
                    error = %e,
                    "packet socket frames to protected targets are not dropped on this interface"
                ),
            }
        }
        // The setsockopt guard (not pinned: aya cannot pin a sockopt link).
        let sockopt = (|| -> Result<(), EbpfError> {
            let prog_err = |source| EbpfError::Program {
                name: "pc_setsockopt",
                source,
            };
            let p: &mut CgroupSockopt = self
                .ebpf
                .program_mut("pc_setsockopt")
                .ok_or(EbpfError::MissingProgram("pc_setsockopt"))?
                .try_into()
                .map_err(prog_err)?;
            p.load().map_err(prog_err)?;
            p.attach(&cgroup_file, CgroupAttachMode::Single)
                .map_err(prog_err)?;
            Ok(())
        })();
        if let Err(e) = &sockopt {
            tracing::warn!(error = %e, "PACKET_QDISC_BYPASS and SOL_XDP are NOT refused in the enforced cgroup");
        }
        self.sockopt_guard = sockopt.map_err(|e| e.to_string());
        // Only now that every program of this generation is pinned: drop the others.
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
        // The exec and fork hooks feed attribution only; they are re-attached on
        // every start. BTF programs: no tracefs is needed.
        for (name, hook) in ATTRIBUTION_PROGRAMS {
            let prog_err = |source| EbpfError::Program { name, source };
            let program = self
                .ebpf
                .program_mut(name)
                .ok_or(EbpfError::MissingProgram(name))?;
            let p: &mut BtfTracePoint = program.try_into().map_err(prog_err)?;
            p.load(hook, &self.btf).map_err(prog_err)?;
            p.attach().map_err(prog_err)?;
        }
        Ok(())
    }

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
            .chain(std::iter::once(&PACKET_GUARD))
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

/// Upper half of every automatic mark (`pc`); the lower bits are random. Bits
/// 0x4000 and 0x8000 stay clear: kube-proxy gives them meaning.
const AUTO_MARK_BASE: u32 = 0x7063_0000;

/// A fresh random mark for a first start with `upstream_mark: auto`.
fn random_mark() -> Result<u32, EbpfError> {
    use std::io::Read;
    let mut b = [0u8; 2];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| EbpfError::Map {
            name: "PC_CONFIG",
            reason: format!("reading /dev/urandom for the upstream mark: {e}"),
        })?;
    let low = u32::from(u16::from_ne_bytes(b)) & 0x3fff;
    Ok(AUTO_MARK_BASE | low.max(1))
}

/// Member offsets of kernel structures, from the running kernel's BTF
/// (/sys/kernel/btf/vmlinux). The kernel programs get them as read-only globals.
pub mod kernel_btf {
    use super::EbpfError;

    const PATH: &str = "/sys/kernel/btf/vmlinux";

    /// The kernel's BTF as aya takes it (to load BTF and LSM programs).
    pub fn aya_btf() -> Result<aya::Btf, EbpfError> {
        aya::Btf::from_sys_fs().map_err(|e| EbpfError::Btf {
            path: PATH,
            reason: format!("{e} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)"),
        })
    }

    /// The offsets the kernel programs need.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Offsets {
        pub bprm_file: u32,
        pub bprm_filename: u32,
        pub bprm_interp: u32,
        pub file_inode: u32,
        pub inode_ino: u32,
        pub inode_sb: u32,
        pub sb_dev: u32,
        pub task_tgid: u32,
        pub task_group_leader: u32,
        pub task_start_boottime: u32,
        pub sock_net: u32,
        pub net_inum: u32,
    }

    impl Offsets {
        pub fn from_sys_fs() -> Result<Self, EbpfError> {
            let data = std::fs::read(PATH).map_err(|e| EbpfError::Btf {
                path: PATH,
                reason: format!("{e} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)"),
            })?;
            Self::from_btf(&data).map_err(|reason| EbpfError::Btf { path: PATH, reason })
        }

        pub fn from_btf(data: &[u8]) -> Result<Self, String> {
            let btf = Types::parse(data)?;
            Ok(Self {
                bprm_file: btf.member_offset("linux_binprm", "file")?,
                bprm_filename: btf.member_offset("linux_binprm", "filename")?,
                bprm_interp: btf.member_offset("linux_binprm", "interp")?,
                file_inode: btf.member_offset("file", "f_inode")?,
                inode_ino: btf.member_offset("inode", "i_ino")?,
                inode_sb: btf.member_offset("inode", "i_sb")?,
                sb_dev: btf.member_offset("super_block", "s_dev")?,
                task_tgid: btf.member_offset("task_struct", "tgid")?,
                task_group_leader: btf.member_offset("task_struct", "group_leader")?,
                task_start_boottime: btf.member_offset("task_struct", "start_boottime")?,
                sock_net: btf.member_offset("sock", "__sk_common.skc_net.net")?,
                net_inum: btf.member_offset("net", "ns.inum")?,
            })
        }

        /// (global name in the kernel object, value)
        pub fn globals(&self) -> [(&'static str, u32); 12] {
            [
                ("PC_OFF_BPRM_FILE", self.bprm_file),
                ("PC_OFF_BPRM_FILENAME", self.bprm_filename),
                ("PC_OFF_BPRM_INTERP", self.bprm_interp),
                ("PC_OFF_FILE_INODE", self.file_inode),
                ("PC_OFF_INODE_INO", self.inode_ino),
                ("PC_OFF_INODE_SB", self.inode_sb),
                ("PC_OFF_SB_DEV", self.sb_dev),
                ("PC_OFF_TASK_TGID", self.task_tgid),
                ("PC_OFF_TASK_GROUP_LEADER", self.task_group_leader),
                ("PC_OFF_TASK_START_BOOTTIME", self.task_start_boottime),
                ("PC_OFF_SOCK_NET", self.sock_net),
                ("PC_OFF_NET_INUM", self.net_inum),
            ]
        }
    }

    const KIND_INT: u32 = 1;
    const KIND_ARRAY: u32 = 3;
    const KIND_STRUCT: u32 = 4;
    const KIND_UNION: u32 = 5;
    const KIND_ENUM: u32 = 6;
    const KIND_TYPEDEF: u32 = 8;
    const KIND_VOLATILE: u32 = 9;
    const KIND_CONST: u32 = 10;
    const KIND_RESTRICT: u32 = 11;
    const KIND_FUNC_PROTO: u32 = 13;
    const KIND_VAR: u32 = 14;
    const KIND_DATASEC: u32 = 15;
    const KIND_DECL_TAG: u32 = 17;
    const KIND_TYPE_TAG: u32 = 18;
    const KIND_ENUM64: u32 = 19;

    struct Member {
        name_off: u32,
        ty: u32,
        /// Bit offset within the enclosing struct.
        bit_offset: u32,
    }

    struct Type {
        name_off: u32,
        kind: u32,
        kind_flag: bool,
        /// Referenced type (typedef, const, ...), for modifiers.
        ty: u32,
        /// Where a struct's or union's members start in the type section.
        members_at: u32,
        vlen: u16,
    }

    /// The types of a BTF blob, with members read from the type section only
    /// when asked for (start-up parses the kernel's BTF, ~150,000 types).
    struct Types<'a> {
        tsec: &'a [u8],
        strings: &'a [u8],
        types: Vec<Type>,
    }

    fn u32_at(b: &[u8], o: usize) -> Result<u32, String> {
        b.get(o..o + 4)
            .and_then(|s| s.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| format!("truncated at byte {o}"))
    }

    impl<'a> Types<'a> {
        fn parse(data: &'a [u8]) -> Result<Self, String> {
            if data.get(0..2) != Some(&[0x9f, 0xeb]) {
                return Err("not little-endian BTF (bad magic)".into());
            }
            let hdr_len = u32_at(data, 4)? as usize;
            let type_off = u32_at(data, 8)? as usize;
            let type_len = u32_at(data, 12)? as usize;
            let str_off = u32_at(data, 16)? as usize;
            let str_len = u32_at(data, 20)? as usize;
            let tsec = data
                .get(hdr_len + type_off..hdr_len + type_off + type_len)
                .ok_or("type section out of bounds")?;
            let strings = data
                .get(hdr_len + str_off..hdr_len + str_off + str_len)
                .ok_or("string section out of bounds")?;
            // Type id 0 is void.
            let mut types = Vec::with_capacity(tsec.len() / 24);
            types.push(Type {
                name_off: 0,
                kind: 0,
                kind_flag: false,
                ty: 0,
                members_at: 0,
                vlen: 0,
            });
            let mut o = 0;
            while o < tsec.len() {
                let name_off = u32_at(tsec, o)?;
                let info = u32_at(tsec, o + 4)?;
                let size_or_type = u32_at(tsec, o + 8)?;
                o += 12;
                let vlen = (info & 0xffff) as usize;
                let kind = (info >> 24) & 0x1f;
                let members_at = o as u32;
                match kind {
                    KIND_INT | KIND_VAR | KIND_DECL_TAG => o += 4,
                    KIND_ARRAY => o += 12,
                    KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => o += 12 * vlen,
                    KIND_ENUM | KIND_FUNC_PROTO => o += 8 * vlen,
                    _ => {}
                }
                if o > tsec.len() {
                    return Err(format!("type section truncated at byte {o}"));
                }
                types.push(Type {
                    name_off,
                    kind,
                    kind_flag: info >> 31 == 1,
                    ty: size_or_type,
                    members_at,
                    vlen: vlen as u16,
                });
            }
            Ok(Self {
                tsec,
                strings,
                types,
            })
        }

        fn members(&self, t: &Type) -> impl Iterator<Item = Member> + '_ {
            let (at, flag) = (t.members_at as usize, t.kind_flag);
            (0..usize::from(t.vlen)).filter_map(move |i| {
                let o = at + 12 * i;
                let off = u32_at(self.tsec, o + 8).ok()?;
                Some(Member {
                    name_off: u32_at(self.tsec, o).ok()?,
                    ty: u32_at(self.tsec, o + 4).ok()?,
                    bit_offset: if flag { off & 0x00ff_ffff } else { off },
                })
            })
        }

        fn name(&self, off: u32) -> &[u8] {
            let s = self.strings.get(off as usize..).unwrap_or(&[]);
            let end = s.iter().position(|c| *c == 0).unwrap_or(s.len());
            &s[..end]
        }

        /// Follows typedefs and qualifiers to the underlying type id.
        fn resolve(&self, mut id: u32) -> u32 {
            for _ in 0..32 {
                match self.types.get(id as usize) {
                    Some(t)
                        if matches!(
                            t.kind,
                            KIND_TYPEDEF
                                | KIND_VOLATILE
                                | KIND_CONST
                                | KIND_RESTRICT
                                | KIND_TYPE_TAG
                        ) =>
                    {
                        id = t.ty
                    }
                    _ => break,
                }
            }
            id
        }

        /// Bit offset and type of `member` in type `id`, looking into anonymous
        /// structs and unions.
        fn find(&self, id: u32, member: &[u8], depth: u32) -> Option<(u32, u32)> {
            let t = self.types.get(self.resolve(id) as usize)?;
            if depth > 8 || !matches!(t.kind, KIND_STRUCT | KIND_UNION) {
                return None;
            }
            if let Some(m) = self
                .members(t)
                .find(|m| m.name_off != 0 && self.name(m.name_off) == member)
            {
                return Some((m.bit_offset, m.ty));
            }
            self.members(t).filter(|m| m.name_off == 0).find_map(|m| {
                let (bits, ty) = self.find(m.ty, member, depth + 1)?;
                Some((m.bit_offset + bits, ty))
            })
        }

        /// Byte offset of `a.b.c` (members of nested, embedded structs) in `strukt`.
        fn member_offset(&self, strukt: &str, path: &str) -> Result<u32, String> {
            let mut id =
                self.types
                    .iter()
                    .position(|t| {
                        t.kind == KIND_STRUCT
                            && t.vlen != 0
                            && self.name(t.name_off) == strukt.as_bytes()
                    })
                    .ok_or_else(|| format!("struct {strukt} not found"))? as u32;
            let mut bits = 0;
            for member in path.split('.') {
                let (b, ty) = self
                    .find(id, member.as_bytes(), 0)
                    .ok_or_else(|| format!("struct {strukt} has no member {path}"))?;
                bits += b;
                id = ty;
            }
            if bits % 8 != 0 {
                return Err(format!("{strukt}.{path} is a bit field"));
            }
            Ok(bits / 8)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// A hand-made BTF blob: struct s { int a; union { long b; int c; }; }.
        fn blob() -> Vec<u8> {
            let strings = b"\0s\0a\0b\0c\0int\0long\0".to_vec();
            let (s, a, b, c, int, long) = (1u32, 3, 5, 7, 9, 13);
            let mut t = Vec::new();
            let mut push = |v: u32| t.extend_from_slice(&v.to_le_bytes());
            // 1: int
            push(int);
            push(KIND_INT << 24);
            push(4);
            push(32);
            // 2: long
            push(long);
            push(KIND_INT << 24);
            push(8);
            push(64);
            // 3: anonymous union { long b; int c; }
            push(0);
            push((KIND_UNION << 24) | 2);
            push(8);
            push(b);
            push(2);
            push(0);
            push(c);
            push(1);
            push(0);
            // 4: struct s { int a; <union> at 64 bits }
            push(s);
            push((KIND_STRUCT << 24) | 2);
            push(16);
            push(a);
            push(1);
            push(0);
            push(0);
            push(3);
            push(64);
            let mut out = vec![0x9f, 0xeb, 1, 0];
            out.extend_from_slice(&24u32.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&(t.len() as u32).to_le_bytes());
            out.extend_from_slice(&(t.len() as u32).to_le_bytes());
            out.extend_from_slice(&(strings.len() as u32).to_le_bytes());
            out.extend_from_slice(&t);
            out.extend_from_slice(&strings);
            out
        }

        #[test]
        fn member_offsets_including_anonymous_unions() {
            let data = blob();
            let t = Types::parse(&data).expect("parses");
            assert_eq!(t.member_offset("s", "a"), Ok(0));
            assert_eq!(t.member_offset("s", "b"), Ok(8));
            assert_eq!(t.member_offset("s", "c"), Ok(8));
            assert!(t.member_offset("s", "d").is_err());
            assert!(t.member_offset("s", "a.b").is_err());
            assert!(t.member_offset("nope", "a").is_err());
            assert!(Types::parse(&data[..10]).is_err());
        }

        #[test]
        fn running_kernel_offsets() {
            // Every machine of this kind has BTF; the offsets must be plausible.
            let Ok(o) = Offsets::from_sys_fs() else {
                panic!("no kernel BTF at {PATH}");
            };
            assert!(o.bprm_file > 0 && o.bprm_file < 512, "{o:?}");
            assert!(
                o.task_tgid > 0 && o.task_start_boottime > o.task_tgid,
                "{o:?}"
            );
            assert!(o.net_inum > 0, "{o:?}");
        }
    }
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
    comm.copy_from_slice(b.get(c + 88..c + 104)?);
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
            start_ns: u64_at(c + 80)?,
            comm,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_layout_matches_parser() {
        assert_eq!(std::mem::size_of::<ConnInfo>(), 104);
        assert_eq!(std::mem::size_of::<Event>(), 120);
        assert_eq!(std::mem::offset_of!(ConnInfo, cgroup_id), 40);
        assert_eq!(std::mem::offset_of!(ConnInfo, start_ns), 80);
        assert_eq!(std::mem::offset_of!(ConnInfo, comm), 88);
        assert_eq!(std::mem::offset_of!(Event, conn), 16);
        assert_eq!(std::mem::size_of::<TupleKey>(), 32);
        let mut b = vec![0u8; 120];
        b[0] = 1;
        b[16 + 24] = 7; // tgid
        b[16 + 80] = 9; // start_ns
        b[16 + 88] = b'x';
        let e = parse_event(&b).expect("parses");
        assert_eq!(
            (e.kind, e.conn.tgid, e.conn.start_ns, e.conn.comm[0]),
            (1, 7, 9, b'x')
        );
        assert!(parse_event(&b[..110]).is_none());
    }

    #[test]
    fn object_is_embedded() {
        assert!(EBPF_OBJECT.len() > 1000);
        assert_eq!(object_hash().len(), 64);
    }
}
