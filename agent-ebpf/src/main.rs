//! Portcullis kernel programs.
//!
//! - `pc_connect4` / `pc_connect6` (cgroup/connect4, cgroup/connect6): every connect()
//!   emits an attribution event; a connect to a protected destination is rewritten to
//!   the agent's listener and remembered by socket cookie.
//! - `pc_sockops` (sockops): when a redirected connection is established, re-keys that
//!   record by the client's own address and port, which the agent sees as the peer of
//!   the accepted connection.
//! - `pc_egress` (cgroup_skb/egress): drops any packet to a protected destination that
//!   does not carry the agent's mark (raw sockets, unconnected UDP, sockets connected
//!   before enforcement began) and counts it as a bypass attempt.
//! - `pc_exec` (tracepoint sched/sched_process_exec): records the executable of each
//!   process at exec time, so attribution survives a client that exits at once.
//!
//! Maps are declared unpinned; the agent chooses their pin paths.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod prog {
    use agent_common::{
        AF_INET, AF_INET6, COMM_LEN, Config, ConnInfo, Event, ExecInfo, IPPROTO_TCP, IPPROTO_UDP,
        TargetKey, TargetValue, TupleKey, counter, event_kind, mapped_v4, verdict,
    };
    use aya_ebpf::{
        EbpfContext,
        bindings::__sk_buff,
        helpers::{
            bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_probe_read_kernel_str_bytes,
            generated::{
                self, bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie,
                bpf_ktime_get_boot_ns, bpf_skb_cgroup_id,
            },
        },
        macros::{cgroup_skb, cgroup_sock_addr, map, sock_ops, tracepoint},
        maps::{
            Array, LruHashMap, PerCpuArray, RingBuf,
            lpm_trie::{Key, LpmTrie},
        },
        programs::{SkBuffContext, SockAddrContext, SockOpsContext, TracePointContext},
    };
    use core::ptr::{read_volatile, write_volatile};

    /// Agent settings, index 0.
    #[map(name = "PC_CONFIG")]
    static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

    /// Protected destinations: (port, address) prefixes.
    #[map(name = "PC_TARGETS")]
    static TARGETS: LpmTrie<TargetKey, TargetValue> =
        LpmTrie::with_max_entries(16384, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

    /// Protected addresses regardless of port, for packets whose port cannot be read.
    #[map(name = "PC_TARGET_ADDRS")]
    static TARGET_ADDRS: LpmTrie<[u8; 16], u32> =
        LpmTrie::with_max_entries(16384, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

    /// Redirected connects not yet established, by socket cookie.
    #[map(name = "PC_PENDING")]
    static PENDING: LruHashMap<u64, ConnInfo> = LruHashMap::with_max_entries(65536, 0);

    /// Redirected connections, by the client's (address, port).
    #[map(name = "PC_TUPLES")]
    static TUPLES: LruHashMap<TupleKey, ConnInfo> = LruHashMap::with_max_entries(65536, 0);

    /// Executable of each process, by tgid, captured at exec.
    #[map(name = "PC_EXECS")]
    static EXECS: LruHashMap<u32, ExecInfo> = LruHashMap::with_max_entries(65536, 0);

    /// Per-CPU scratch for building an ExecInfo (too big for the stack).
    #[map(name = "PC_SCRATCH")]
    static SCRATCH: PerCpuArray<ExecInfo> = PerCpuArray::with_max_entries(1, 0);

    /// Per-CPU counters, indexed by `agent_common::counter`.
    #[map(name = "PC_COUNTERS")]
    static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

    /// Per-CPU time of the last bypass event, for rate limiting.
    #[map(name = "PC_BYPASS_RL")]
    static BYPASS_RL: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

    /// Attribution and bypass events.
    #[map(name = "PC_EVENTS")]
    static EVENTS: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);

    /// At most one bypass event per CPU in this many nanoseconds (drops are always counted).
    const BYPASS_EVENT_INTERVAL_NS: u64 = 100_000_000;
    use aya_ebpf::bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
    const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: u32 = 4;
    /// Full prefix of a TargetKey: 16 port bits and 128 address bits.
    const FULL_PREFIX: u32 = 16 + 128;

    #[inline(always)]
    fn bump(idx: u32) {
        if let Some(p) = COUNTERS.get_ptr_mut(idx) {
            // Per-CPU slot: no other writer on this CPU while we run.
            unsafe { *p += 1 };
        }
    }

    #[inline(always)]
    fn lookup_target(addr: &[u8; 16], port: u16) -> Option<TargetValue> {
        let exact = Key::new(
            FULL_PREFIX,
            TargetKey {
                port: port.to_be_bytes(),
                addr: *addr,
            },
        );
        if let Some(v) = TARGETS.get(&exact) {
            return Some(*v);
        }
        let any = Key::new(
            FULL_PREFIX,
            TargetKey {
                port: [0, 0],
                addr: *addr,
            },
        );
        TARGETS.get(&any).copied()
    }

    #[inline(always)]
    fn emit(kind: u32, verdict: u32, proto: u32, conn: &ConnInfo) {
        match EVENTS.reserve::<Event>(0) {
            Some(mut slot) => {
                // Filled in place: an Event on the BPF stack would not fit next to
                // the rest of the connect path.
                let p = slot.as_mut_ptr();
                unsafe {
                    (*p).kind = kind;
                    (*p).verdict = verdict;
                    (*p).proto = proto;
                    (*p)._pad = 0;
                    core::ptr::copy_nonoverlapping(conn, &mut (*p).conn, 1);
                }
                // No wake-up per event: the agent drains the ring every 50 ms (1 MiB
                // holds ~9,000 events). A bypass event wakes it at once.
                let flags = if kind == event_kind::BYPASS {
                    BPF_RB_FORCE_WAKEUP as u64
                } else {
                    BPF_RB_NO_WAKEUP as u64
                };
                slot.submit(flags);
            }
            None => bump(counter::EVENTS_LOST),
        }
    }

    /// Per-CPU scratch ConnInfo for the connect path (kept off the 512-byte stack).
    #[map(name = "PC_CONN_SCRATCH")]
    static CONN_SCRATCH: PerCpuArray<ConnInfo> = PerCpuArray::with_max_entries(1, 0);

    /// What a connect hook must do after `decide`.
    struct Outcome {
        verdict: u32,
        listen_v4: [u8; 4],
        listen_v6: [u8; 16],
        listen_port: u16,
    }

    /// Shared connect logic: attribution event, protected-target lookup, exemption.
    #[inline(always)]
    fn decide(ctx: &SockAddrContext, addr: &[u8; 16], port: u16, family: u16) -> Outcome {
        let sa = ctx.sock_addr;
        let mut out = Outcome {
            verdict: verdict::PASS,
            listen_v4: [0; 4],
            listen_v6: [0; 16],
            listen_port: 0,
        };
        let Some(cfg) = CONFIG.get(0) else {
            return out;
        };
        let Some(conn) = CONN_SCRATCH.get_ptr_mut(0) else {
            return out;
        };
        let conn = unsafe { &mut *conn };
        bump(counter::CONNECTS);
        let proto = unsafe { (*sa).protocol };
        let pid_tgid = bpf_get_current_pid_tgid();
        let uid_gid = bpf_get_current_uid_gid();
        let tgid = (pid_tgid >> 32) as u32;
        conn.orig_addr = *addr;
        conn.orig_port = port;
        conn.family = family;
        conn.target_id = u32::MAX;
        conn.tgid = tgid;
        conn.tid = pid_tgid as u32;
        conn.uid = uid_gid as u32;
        conn.gid = (uid_gid >> 32) as u32;
        conn.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
        conn.netns_cookie = unsafe { bpf_get_netns_cookie(sa.cast()) };
        conn.sock_cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
        conn.ktime_ns = unsafe { bpf_ktime_get_boot_ns() };
        conn.exec_ktime_ns = match unsafe { EXECS.get(&tgid) } {
            Some(e) => e.ktime_ns,
            None => 0,
        };
        unsafe {
            generated::bpf_get_current_comm(conn.comm.as_mut_ptr().cast(), COMM_LEN as u32);
        }

        // Most connects are to unprotected destinations: one address-only lookup
        // settles them before the (port, address) lookups.
        let target = if TARGET_ADDRS.get(&Key::new(128, *addr)).is_some() {
            lookup_target(addr, port)
        } else {
            None
        };
        let exempt = {
            let sk = unsafe { (*sa).__bindgen_anon_1.sk };
            let mark = unsafe { read_volatile(&(*sk).mark) };
            (cfg.mark != 0 && mark == cfg.mark)
                || (cfg.agent_cgroup_id != 0 && conn.cgroup_id == cfg.agent_cgroup_id)
        };
        out.verdict = match target {
            None => verdict::PASS,
            Some(_) if exempt => verdict::EXEMPT,
            Some(t) => {
                conn.target_id = t.target_id;
                if proto != IPPROTO_TCP || cfg.listen_port == 0 {
                    verdict::DENY
                } else {
                    verdict::REDIRECT
                }
            }
        };
        match out.verdict {
            verdict::REDIRECT => {
                bump(counter::REDIRECTS);
                let _ = PENDING.insert(&conn.sock_cookie, &*conn, 0);
                out.listen_v4 = cfg.listen_v4;
                out.listen_v6 = cfg.listen_v6;
                out.listen_port = cfg.listen_port;
            }
            verdict::DENY => bump(counter::DENIES),
            verdict::EXEMPT => bump(counter::EXEMPT),
            _ => {}
        }
        emit(event_kind::CONNECT, out.verdict, proto, conn);
        out
    }

    #[cgroup_sock_addr(connect4)]
    pub fn pc_connect4(ctx: SockAddrContext) -> i32 {
        let sa = ctx.sock_addr;
        let ip = unsafe { (*sa).user_ip4 };
        let port = u16::from_be(unsafe { (*sa).user_port } as u16);
        let addr = mapped_v4(ip.to_ne_bytes());
        let out = decide(&ctx, &addr, port, AF_INET);
        match out.verdict {
            verdict::DENY => 0,
            verdict::REDIRECT => {
                unsafe {
                    write_volatile(&mut (*sa).user_ip4, u32::from_ne_bytes(out.listen_v4));
                    write_volatile(&mut (*sa).user_port, out.listen_port.to_be() as u32);
                }
                1
            }
            _ => 1,
        }
    }

    #[cgroup_sock_addr(connect6)]
    pub fn pc_connect6(ctx: SockAddrContext) -> i32 {
        let sa = ctx.sock_addr;
        let words = unsafe {
            [
                read_volatile(&(*sa).user_ip6[0]),
                read_volatile(&(*sa).user_ip6[1]),
                read_volatile(&(*sa).user_ip6[2]),
                read_volatile(&(*sa).user_ip6[3]),
            ]
        };
        let mut addr = [0u8; 16];
        let mut i = 0;
        while i < 4 {
            let b = words[i].to_ne_bytes();
            addr[i * 4] = b[0];
            addr[i * 4 + 1] = b[1];
            addr[i * 4 + 2] = b[2];
            addr[i * 4 + 3] = b[3];
            i += 1;
        }
        let port = u16::from_be(unsafe { (*sa).user_port } as u16);
        let out = decide(&ctx, &addr, port, AF_INET6);
        match out.verdict {
            verdict::DENY => 0,
            verdict::REDIRECT => {
                // An IPv4-mapped destination stays IPv4-mapped: point it at the IPv4
                // listener; a native IPv6 destination goes to the IPv6 listener.
                let is_mapped = words[0] == 0
                    && words[1] == 0
                    && addr[8] == 0
                    && addr[9] == 0
                    && addr[10] == 0xff
                    && addr[11] == 0xff;
                let new = if is_mapped {
                    mapped_v4(out.listen_v4)
                } else {
                    out.listen_v6
                };
                unsafe {
                    let mut j = 0;
                    while j < 4 {
                        let w = u32::from_ne_bytes([
                            new[j * 4],
                            new[j * 4 + 1],
                            new[j * 4 + 2],
                            new[j * 4 + 3],
                        ]);
                        write_volatile(&mut (*sa).user_ip6[j], w);
                        j += 1;
                    }
                    write_volatile(&mut (*sa).user_port, out.listen_port.to_be() as u32);
                }
                1
            }
            _ => 1,
        }
    }

    #[sock_ops]
    pub fn pc_sockops(ctx: SockOpsContext) -> u32 {
        if ctx.op() != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
            return 1;
        }
        // Only a redirected socket is connected to the agent's listener: skip the
        // cookie and map lookup for every other connection.
        let Some(cfg) = CONFIG.get(0) else {
            return 1;
        };
        // remote_port: network-order port in the upper 16 bits on little-endian.
        if (ctx.remote_port() >> 16) as u16 != cfg.listen_port.to_be()
            && ctx.remote_port() as u16 != cfg.listen_port.to_be()
        {
            return 1;
        }
        let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
        let conn = match unsafe { PENDING.get(&cookie) } {
            Some(c) => *c,
            None => return 1,
        };
        let family = ctx.family();
        let addr = if family == AF_INET as u32 {
            mapped_v4(ctx.local_ip4().to_ne_bytes())
        } else {
            // Each word read on its own: the verifier refuses a load through a
            // ctx pointer that was offset first.
            let ops = ctx.ops;
            let w = unsafe {
                [
                    read_volatile(&(*ops).local_ip6[0]),
                    read_volatile(&(*ops).local_ip6[1]),
                    read_volatile(&(*ops).local_ip6[2]),
                    read_volatile(&(*ops).local_ip6[3]),
                ]
            };
            let mut a = [0u8; 16];
            let mut i = 0;
            while i < 4 {
                let b = w[i].to_ne_bytes();
                a[i * 4] = b[0];
                a[i * 4 + 1] = b[1];
                a[i * 4 + 2] = b[2];
                a[i * 4 + 3] = b[3];
                i += 1;
            }
            a
        };
        // local_port is in host byte order.
        let key = TupleKey::new(addr, ctx.local_port() as u16);
        if TUPLES.insert(&key, &conn, 0).is_ok() {
            bump(counter::ESTABLISHED_REKEYED);
        } else {
            bump(counter::ESTABLISHED_UNKNOWN);
        }
        let _ = PENDING.remove(&cookie);
        1
    }

    #[cgroup_skb(egress)]
    pub fn pc_egress(ctx: SkBuffContext) -> i32 {
        match try_egress(&ctx) {
            Ok(v) => v,
            Err(_) => 1,
        }
    }

    fn try_egress(ctx: &SkBuffContext) -> Result<i32, i64> {
        let skb: *mut __sk_buff = ctx.skb.skb;
        let first: u8 = ctx.load(0)?;
        let (addr, l4_proto, l4_off, frag) = match first >> 4 {
            4 => {
                let ihl = ((first & 0x0f) as usize) * 4;
                let proto: u8 = ctx.load(9)?;
                let frag_off: u16 = u16::from_be(ctx.load::<u16>(6)?);
                let dst: [u8; 4] = ctx.load(16)?;
                (mapped_v4(dst), proto as u32, ihl, (frag_off & 0x1fff) != 0)
            }
            6 => {
                let next: u8 = ctx.load(6)?;
                let dst: [u8; 16] = ctx.load(24)?;
                (dst, next as u32, 40usize, false)
            }
            _ => return Ok(1),
        };
        // Quick reject: is the address protected on any port?
        if TARGET_ADDRS.get(&Key::new(128, addr)).is_none() {
            return Ok(1);
        }
        let has_ports = (l4_proto == IPPROTO_TCP || l4_proto == IPPROTO_UDP) && !frag;
        let protected = if has_ports {
            let dport = u16::from_be(ctx.load::<u16>(l4_off + 2)?);
            lookup_target(&addr, dport).is_some()
        } else {
            // No readable port (other protocol, extension header, fragment): the
            // address alone decides, biased toward drop.
            true
        };
        if !protected {
            return Ok(1);
        }
        let cfg = match CONFIG.get(0) {
            Some(c) => *c,
            None => Config::default(),
        };
        let mark = unsafe { read_volatile(&(*skb).mark) };
        if cfg.mark != 0 && mark == cfg.mark {
            return Ok(1);
        }
        if cfg.agent_cgroup_id != 0 && unsafe { bpf_skb_cgroup_id(skb) } == cfg.agent_cgroup_id {
            return Ok(1);
        }
        bump(counter::BYPASS_DROPS);
        let now = unsafe { bpf_ktime_get_boot_ns() };
        if let Some(last) = BYPASS_RL.get_ptr_mut(0) {
            if now.wrapping_sub(unsafe { *last }) >= BYPASS_EVENT_INTERVAL_NS {
                unsafe { *last = now };
                let dport = if has_ports {
                    u16::from_be(ctx.load::<u16>(l4_off + 2).unwrap_or(0))
                } else {
                    0
                };
                let conn = ConnInfo {
                    orig_addr: addr,
                    orig_port: dport,
                    family: if first >> 4 == 4 { AF_INET } else { AF_INET6 },
                    target_id: u32::MAX,
                    tgid: 0,
                    tid: 0,
                    uid: ctx.get_socket_uid(),
                    gid: 0,
                    cgroup_id: unsafe { bpf_skb_cgroup_id(skb) },
                    netns_cookie: 0,
                    sock_cookie: unsafe { bpf_get_socket_cookie(skb.cast()) },
                    ktime_ns: now,
                    exec_ktime_ns: 0,
                    comm: [0u8; COMM_LEN],
                };
                emit(event_kind::BYPASS, verdict::BYPASS_DROP, l4_proto, &conn);
            }
        }
        Ok(0)
    }

    /// sched_process_exec: `__data_loc char[] filename` at offset 8 (stable since 3.x).
    #[tracepoint(category = "sched", name = "sched_process_exec")]
    pub fn pc_exec(ctx: TracePointContext) -> u32 {
        let loc: u32 = match unsafe { ctx.read_at::<u32>(8) } {
            Ok(v) => v,
            Err(_) => return 0,
        };
        let off = (loc & 0xffff) as usize;
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        let Some(info) = SCRATCH.get_ptr_mut(0) else {
            return 0;
        };
        let info = unsafe { &mut *info };
        info.ktime_ns = unsafe { bpf_ktime_get_boot_ns() };
        let src = unsafe { (ctx.as_ptr() as *const u8).add(off) };
        if unsafe { bpf_probe_read_kernel_str_bytes(src, &mut info.exe) }.is_err() {
            info.exe[0] = 0;
        }
        let _ = EXECS.insert(&tgid, info, 0);
        0
    }

    /// sched_process_fork: the child inherits the parent's executable (a fork without
    /// exec runs the same program) and any stale record of a dead process that had
    /// the same pid is replaced or removed.
    #[tracepoint(category = "sched", name = "sched_process_fork")]
    pub fn pc_fork(ctx: TracePointContext) -> u32 {
        let Some(cfg) = CONFIG.get(0) else {
            return 0;
        };
        let off = cfg.fork_child_pid_offset as usize;
        if off == 0 || off > 64 {
            return 0;
        }
        let child: u32 = match unsafe { ctx.read_at::<u32>(off) } {
            Ok(v) => v,
            Err(_) => return 0,
        };
        // This tracepoint fires in the parent's context.
        let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
        if child == parent {
            return 0;
        }
        match EXECS.get_ptr(&parent) {
            Some(p) => {
                let _ = EXECS.insert(&child, unsafe { &*p }, 0);
            }
            None => {
                let _ = EXECS.remove(&child);
            }
        }
        0
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
}

/// Host builds (clippy, `cargo check`) see an empty program.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
