//! Types shared by the kernel programs (`agent-ebpf`) and the userspace agent.
//!
//! Every type here is `#[repr(C)]`, `Copy`, and free of implicit padding so the
//! kernel and userspace agree on its layout byte for byte. Addresses are always
//! stored in IPv6 form in network byte order: an IPv4 address `a.b.c.d` is kept
//! as the IPv4-mapped `::ffff:a.b.c.d`, so one LPM trie serves both families.
#![no_std]
#![deny(unsafe_code)]

/// Length of a task's `comm` as the kernel keeps it.
pub const COMM_LEN: usize = 16;
/// Longest executable path captured at exec time (longer paths are cut).
pub const EXE_LEN: usize = 256;

/// Address families as the kernel numbers them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// IP protocol numbers.
pub const IPPROTO_TCP: u32 = 6;
pub const IPPROTO_UDP: u32 = 17;

/// Verdicts the connect hooks reach, reported in [`Event::verdict`].
pub mod verdict {
    /// Destination is not protected: the connect proceeds untouched.
    pub const PASS: u32 = 0;
    /// Protected destination rewritten to the agent's listener.
    pub const REDIRECT: u32 = 1;
    /// Protected destination refused in the kernel (EPERM): UDP, or no agent configured.
    pub const DENY: u32 = 2;
    /// The agent's own upstream socket (mark or cgroup): passed untouched.
    pub const EXEMPT: u32 = 3;
    /// Egress backstop dropped a packet to a protected destination.
    pub const BYPASS_DROP: u32 = 4;
}

/// Event kinds on the ring buffer.
pub mod event_kind {
    pub const CONNECT: u32 = 1;
    pub const BYPASS: u32 = 2;
}

/// Indexes of the per-CPU counters map.
pub mod counter {
    pub const CONNECTS: u32 = 0;
    pub const REDIRECTS: u32 = 1;
    pub const DENIES: u32 = 2;
    pub const EXEMPT: u32 = 3;
    pub const BYPASS_DROPS: u32 = 4;
    pub const EVENTS_LOST: u32 = 5;
    pub const ESTABLISHED_REKEYED: u32 = 6;
    pub const ESTABLISHED_UNKNOWN: u32 = 7;
    /// Raw IP, packet or XDP sockets refused in the enforced cgroup.
    pub const RAW_SOCKETS_REFUSED: u32 = 8;
    /// Frames of packet sockets to protected destinations dropped at interface
    /// egress (also counted in `BYPASS_DROPS`).
    pub const PACKET_FRAMES_DROPPED: u32 = 9;
    /// Number of counters.
    pub const COUNT: u32 = 10;
    /// Names in index order, for status output.
    pub const NAMES: [&str; COUNT as usize] = [
        "connects",
        "redirects",
        "kernel_denies",
        "exempt",
        "bypass_drops",
        "events_lost",
        "established_rekeyed",
        "established_unknown",
        "raw_sockets_refused",
        "packet_frames_dropped",
    ];
}

/// Data part of the protected-targets LPM trie key. The port comes first so that
/// every prefix covers it: a lookup matches the exact port, and a second lookup
/// with port 0 matches targets that protect every port of an address range.
/// Prefix length = 16 + address prefix in IPv6 bits (IPv4 /n → 16 + 96 + n).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetKey {
    /// Destination port, big-endian. 0 means every port.
    pub port: [u8; 2],
    /// Destination address, IPv6 form, network byte order.
    pub addr: [u8; 16],
}

/// Value of the protected-targets trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetValue {
    /// Index of the target in the policy set that filled the map.
    pub target_id: u32,
    /// Reserved, zero.
    pub flags: u32,
}

/// Agent settings the kernel programs read (array map, index 0).
///
/// While `listen_port` is 0 (no agent has configured the programs yet) a connect to
/// a protected destination is refused with EPERM: enforcement fails closed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// The agent's IPv6 listener address (network order); `::1` by default.
    pub listen_v6: [u8; 16],
    /// The agent's IPv4 listener address (network order); 127.0.0.1 by default.
    pub listen_v4: [u8; 4],
    /// The agent's listener port, host order, same on both families.
    pub listen_port: u16,
    pub _pad0: u16,
    /// SO_MARK the agent puts on its upstream sockets. A socket is exempt only when
    /// it belongs to `agent_cgroup_id` *and* carries this mark (0: the cgroup alone).
    pub mark: u32,
    /// Bits of [`config_flags`].
    pub flags: u32,
    /// cgroup v2 id of the agent's own dedicated cgroup: its sockets are the only
    /// ones exempt from redirection. 0: nothing is exempt.
    pub agent_cgroup_id: u64,
    /// cgroup v2 id of the enforced cgroup (where the programs are attached), for
    /// the interface-level packet guard, which is not attached to a cgroup.
    pub enforced_cgroup_id: u64,
    /// Depth of the enforced cgroup below the cgroup v2 root (0: the root).
    pub enforced_level: u32,
    pub _pad1: u32,
}

/// Bits of [`Config::flags`].
pub mod config_flags {
    /// Refuse raw IP sockets (cgroup/sock_create) and packet / XDP sockets
    /// (LSM socket_create) to processes in the enforced cgroup.
    pub const REFUSE_RAW_SOCKETS: u32 = 1;
}

/// Address families refused by the socket_create hook.
pub const AF_PACKET: u32 = 17;
pub const AF_XDP: u32 = 44;
/// SOCK_RAW as the kernel numbers it (the type without SOCK_NONBLOCK / SOCK_CLOEXEC).
pub const SOCK_RAW: u32 = 3;
/// SOCK_PACKET: the obsolete packet socket type of AF_INET.
pub const SOCK_PACKET: u32 = 10;
/// setsockopt levels and options the sockopt guard refuses.
pub const SOL_PACKET: i32 = 263;
pub const PACKET_QDISC_BYPASS: i32 = 20;
pub const SOL_XDP: i32 = 283;

/// What the kernel knew about a connect at the moment it happened.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// Original destination, IPv6 form, network order.
    pub orig_addr: [u8; 16],
    /// Original destination port, host order.
    pub orig_port: u16,
    /// Address family of the connecting socket (AF_INET or AF_INET6).
    pub family: u16,
    /// Protected target index (valid when the connect was redirected).
    pub target_id: u32,
    pub tgid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    /// cgroup v2 id of the connecting task.
    pub cgroup_id: u64,
    /// Network namespace cookie of the socket.
    pub netns_cookie: u64,
    /// Socket cookie.
    pub sock_cookie: u64,
    /// CLOCK_BOOTTIME nanoseconds at connect.
    pub ktime_ns: u64,
    /// CLOCK_BOOTTIME nanoseconds of the exec recorded for `tgid`, 0 if none was
    /// seen or the record belongs to an earlier process with the same pid.
    pub exec_ktime_ns: u64,
    /// CLOCK_BOOTTIME nanoseconds when the connecting process started (its thread
    /// group leader's `start_boottime`), 0 if it could not be read.
    pub start_ns: u64,
    pub comm: [u8; COMM_LEN],
}

/// Key of the established-connections map: the client's own address and port,
/// which is what the agent sees as the peer of an accepted connection, and the
/// network namespace of the client's socket (a record made in another network
/// namespace never matches a connection accepted in the agent's).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TupleKey {
    pub addr: [u8; 16],
    /// Port, host order.
    pub port: u32,
    pub _pad: u32,
    /// Inode number of the client socket's network namespace (as stat(2) shows
    /// /proc/<pid>/ns/net).
    pub netns_ino: u64,
}

/// Executable captured at exec (or inherited at fork), keyed by tgid.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecInfo {
    /// CLOCK_BOOTTIME nanoseconds when the exec (or fork) was seen.
    pub ktime_ns: u64,
    /// CLOCK_BOOTTIME nanoseconds when the process started: a record whose start
    /// differs from the process now holding the pid belongs to an earlier process.
    pub start_ns: u64,
    /// Device of the file the kernel executed (`bprm->file`), as the kernel
    /// encodes it (`MKDEV`: major << 20 | minor).
    pub dev: u32,
    pub _pad: u32,
    /// Inode number of the file the kernel executed.
    pub ino: u64,
    /// NUL-terminated path the kernel ran the file as (`bprm->interp`): the name
    /// given to exec, or the interpreter's path for a script. It may be relative or
    /// a symlink; the agent trusts it only when it resolves to `dev` and `ino`.
    pub exe: [u8; EXE_LEN],
    /// NUL-terminated name given to exec when an interpreter runs it (a script;
    /// `bprm->filename`), empty otherwise.
    pub script: [u8; EXE_LEN],
}

/// Ring buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// One of [`event_kind`].
    pub kind: u32,
    /// One of [`verdict`].
    pub verdict: u32,
    /// IPPROTO_TCP, IPPROTO_UDP, or another IP protocol number for bypass drops.
    pub proto: u32,
    pub _pad: u32,
    pub conn: ConnInfo,
}

impl TupleKey {
    pub const fn new(addr: [u8; 16], port: u16, netns_ino: u64) -> Self {
        Self {
            addr,
            port: port as u32,
            _pad: 0,
            netns_ino,
        }
    }
}

/// IPv4 → IPv4-mapped IPv6, both network order.
pub const fn mapped_v4(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

#[cfg(feature = "user")]
#[allow(unsafe_code)]
mod pod {
    use super::*;
    // aya::Pod is an unsafe marker trait: it is sound only for plain old data.
    // All of these are repr(C), Copy, and have no implicit padding.
    unsafe impl aya::Pod for TargetKey {}
    unsafe impl aya::Pod for TargetValue {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for ConnInfo {}
    unsafe impl aya::Pod for TupleKey {}
    unsafe impl aya::Pod for ExecInfo {}
    unsafe impl aya::Pod for Event {}
}
