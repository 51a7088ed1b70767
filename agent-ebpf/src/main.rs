//! Portcullis kernel programs.
//!
//! - `pc_connect4` / `pc_connect6` (cgroup/connect4, cgroup/connect6): every connect()
//!   emits an attribution event; a connect to a protected destination is rewritten to
//!   the agent's listener and remembered by socket cookie.
//! - `pc_sockops` (sockops): when a redirected connection is established, re-keys that
//!   record by the client's own address and port, which the agent sees as the peer of
//!   the accepted connection.
//! - `pc_egress` (cgroup_skb/egress): drops any packet to a protected destination that
//!   does not come from the agent's own cgroup with the agent's mark (raw sockets,
//!   unconnected UDP, sockets connected before enforcement began) and counts it as a
//!   bypass attempt.
//! - `pc_sock_create` (cgroup/sock_create) and `pc_socket_create` (lsm_cgroup
//!   socket_create): refuse raw IP sockets, and packet and XDP sockets, to processes
//!   in the enforced cgroup (they skip the connect hooks or the egress hook).
//! - `pc_exec` (tp_btf sched_process_exec): records the device and inode of the
//!   file the kernel executed, the path it ran it as, the script when an
//!   interpreter runs one, and the process start time, so attribution survives a
//!   client that exits at once; the agent accepts a path only when it resolves to
//!   that device and inode.
//! - `pc_fork` (tp_btf sched_process_fork): a forked child inherits its parent's
//!   record (it runs the same program).
//!
//! None of these needs tracefs. Kernel structure offsets (linux_binprm, file,
//! task_struct) are read from /sys/kernel/btf/vmlinux by the agent and set as
//! read-only globals before loading, which the verifier treats as constants.
//!
//! Maps are declared unpinned; the agent chooses their pin paths.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod prog {
    use agent_common::{
        AF_INET, AF_INET6, AF_PACKET, AF_XDP, COMM_LEN, Config, ConnInfo, Event, ExecInfo,
        IPPROTO_TCP, IPPROTO_UDP, PACKET_QDISC_BYPASS, SOCK_PACKET, SOCK_RAW, SOL_PACKET, SOL_XDP,
        TargetKey, TargetValue, TupleKey, config_flags, counter, event_kind, mapped_v4, verdict,
    };
    use aya_ebpf::{
        bindings::__sk_buff,
        helpers::{
            bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_probe_read_kernel,
            bpf_probe_read_kernel_str_bytes,
            generated::{
                self, bpf_get_current_cgroup_id, bpf_get_current_task, bpf_get_netns_cookie,
                bpf_get_socket_cookie, bpf_ktime_get_boot_ns, bpf_skb_cgroup_id,
            },
        },
        macros::{
            btf_tracepoint, cgroup_skb, cgroup_sock, cgroup_sock_addr, cgroup_sockopt, classifier,
            lsm_cgroup, map, sock_ops,
        },
        maps::{
            Array, LruHashMap, PerCpuArray, RingBuf,
            lpm_trie::{Key, LpmTrie},
        },
        programs::{
            BtfTracePointContext, LsmContext, SkBuffContext, SockAddrContext, SockContext,
            SockOpsContext, SockoptContext, TcContext,
        },
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

    /// Per-CPU scratch for the fork program's copy of its parent's record.
    #[map(name = "PC_FORK_SCRATCH")]
    static FORK_SCRATCH: PerCpuArray<ExecInfo> = PerCpuArray::with_max_entries(1, 0);

    // Kernel structure offsets, set by the agent from the running kernel's BTF
    // before loading (read-only data: the verifier sees them as constants).
    /// `offsetof(struct linux_binprm, file)`.
    #[unsafe(no_mangle)]
    static PC_OFF_BPRM_FILE: u32 = 0;
    /// `offsetof(struct linux_binprm, filename)`.
    #[unsafe(no_mangle)]
    static PC_OFF_BPRM_FILENAME: u32 = 0;
    /// `offsetof(struct linux_binprm, interp)`.
    #[unsafe(no_mangle)]
    static PC_OFF_BPRM_INTERP: u32 = 0;
    /// `offsetof(struct file, f_inode)`.
    #[unsafe(no_mangle)]
    static PC_OFF_FILE_INODE: u32 = 0;
    /// `offsetof(struct inode, i_ino)`.
    #[unsafe(no_mangle)]
    static PC_OFF_INODE_INO: u32 = 0;
    /// `offsetof(struct inode, i_sb)`.
    #[unsafe(no_mangle)]
    static PC_OFF_INODE_SB: u32 = 0;
    /// `offsetof(struct super_block, s_dev)`.
    #[unsafe(no_mangle)]
    static PC_OFF_SB_DEV: u32 = 0;
    /// `offsetof(struct task_struct, tgid)`.
    #[unsafe(no_mangle)]
    static PC_OFF_TASK_TGID: u32 = 0;
    /// `offsetof(struct task_struct, group_leader)`.
    #[unsafe(no_mangle)]
    static PC_OFF_TASK_GROUP_LEADER: u32 = 0;
    /// `offsetof(struct task_struct, start_boottime)`.
    #[unsafe(no_mangle)]
    static PC_OFF_TASK_START_BOOTTIME: u32 = 0;

    /// `offsetof(struct sock, __sk_common.skc_net.net)`.
    #[unsafe(no_mangle)]
    static PC_OFF_SOCK_NET: u32 = 0;
    /// `offsetof(struct net, ns.inum)`.
    #[unsafe(no_mangle)]
    static PC_OFF_NET_INUM: u32 = 0;

    /// Inode number of a socket's network namespace (what stat(2) shows for
    /// /proc/<pid>/ns/net). 0 if it cannot be read.
    #[inline(always)]
    fn sock_netns_ino(sk: *mut aya_ebpf::bindings::bpf_sock) -> u64 {
        if sk.is_null() {
            return 0;
        }
        // A BTF pointer (the verifier refuses arithmetic on a plain socket pointer);
        // struct sock is at offset 0 of struct tcp_sock.
        let tp = unsafe { generated::bpf_skc_to_tcp_sock(sk.cast()) } as *const u8;
        if tp.is_null() {
            return 0;
        }
        let net: *const u8 =
            unsafe { read_volatile(tp.add(off(&PC_OFF_SOCK_NET)) as *const *const u8) };
        if net.is_null() {
            return 0;
        }
        u64::from(unsafe { read_volatile(net.add(off(&PC_OFF_NET_INUM)) as *const u32) })
    }

    #[inline(always)]
    fn off(v: &u32) -> usize {
        // Volatile: the compiler must not fold the placeholder 0 into the code.
        unsafe { read_volatile(v) as usize }
    }

    /// Start time (CLOCK_BOOTTIME ns) of the current process: its thread group
    /// leader's `start_boottime`. 0 when it cannot be read.
    #[inline(always)]
    fn current_process_start_ns() -> u64 {
        let task = unsafe { bpf_get_current_task() } as *const u8;
        if task.is_null() {
            return 0;
        }
        let leader: *const u8 = match unsafe {
            bpf_probe_read_kernel(task.add(off(&PC_OFF_TASK_GROUP_LEADER)) as *const *const u8)
        } {
            Ok(p) => p,
            Err(_) => return 0,
        };
        if leader.is_null() {
            return 0;
        }
        unsafe { bpf_probe_read_kernel(leader.add(off(&PC_OFF_TASK_START_BOOTTIME)) as *const u64) }
            .unwrap_or(0)
    }

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

    /// No protected target (a target id no policy uses).
    const NO_TARGET: u32 = u32::MAX;

    /// The protected target's id, or [`NO_TARGET`]. A plain integer rather than an
    /// `Option<TargetValue>`: LLVM may spill the undefined payload of a `None`,
    /// which the verifier refuses as a read of an uninitialised register.
    #[inline(always)]
    fn lookup_target(addr: &[u8; 16], port: u16) -> u32 {
        let exact = Key::new(
            FULL_PREFIX,
            TargetKey {
                port: port.to_be_bytes(),
                addr: *addr,
            },
        );
        if let Some(v) = TARGETS.get(&exact) {
            return unsafe { read_volatile(&v.target_id) };
        }
        let any = Key::new(
            FULL_PREFIX,
            TargetKey {
                port: [0, 0],
                addr: *addr,
            },
        );
        match TARGETS.get(&any) {
            Some(v) => unsafe { read_volatile(&v.target_id) },
            None => NO_TARGET,
        }
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
        conn.start_ns = current_process_start_ns();
        // An exec record counts only for the process that made it: after a pid was
        // reused (while no exec hook ran) the start times differ.
        conn.exec_ktime_ns = match unsafe { EXECS.get(&tgid) } {
            Some(e) if e.start_ns != 0 && e.start_ns == conn.start_ns => e.ktime_ns,
            _ => 0,
        };
        unsafe {
            generated::bpf_get_current_comm(conn.comm.as_mut_ptr().cast(), COMM_LEN as u32);
        }

        // Most connects are to unprotected destinations: one address-only lookup
        // settles them before the (port, address) lookups.
        let target = if TARGET_ADDRS.get(&Key::new(128, *addr)).is_some() {
            lookup_target(addr, port)
        } else {
            NO_TARGET
        };
        // Only the agent's own cgroup is exempt, and (defence in depth) only
        // sockets that also carry the agent's mark: a workload can set a mark with
        // CAP_NET_RAW, it cannot choose its cgroup without write access to cgroupfs.
        let exempt = {
            let sk = unsafe { (*sa).__bindgen_anon_1.sk };
            let mark = unsafe { read_volatile(&(*sk).mark) };
            cfg.agent_cgroup_id != 0
                && conn.cgroup_id == cfg.agent_cgroup_id
                && (cfg.mark == 0 || mark == cfg.mark)
        };
        out.verdict = match target {
            NO_TARGET => verdict::PASS,
            _ if exempt => verdict::EXEMPT,
            t => {
                conn.target_id = t;
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
        // local_port is in host byte order. The key carries the socket's network
        // namespace: the agent looks up in its own.
        let sk = unsafe { read_volatile(&(*ctx.ops).__bindgen_anon_2.sk) };
        let netns = sock_netns_ino(sk);
        if netns == 0 {
            bump(counter::ESTABLISHED_UNKNOWN);
            return 1;
        }
        let key = TupleKey::new(addr, ctx.local_port() as u16, netns);
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
            lookup_target(&addr, dport) != NO_TARGET
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
        if cfg.agent_cgroup_id != 0
            && unsafe { bpf_skb_cgroup_id(skb) } == cfg.agent_cgroup_id
            && (cfg.mark == 0 || mark == cfg.mark)
        {
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
                    start_ns: 0,
                    comm: [0u8; COMM_LEN],
                };
                emit(event_kind::BYPASS, verdict::BYPASS_DROP, l4_proto, &conn);
            }
        }
        Ok(0)
    }

    #[inline(always)]
    fn refuse_raw() -> bool {
        match CONFIG.get(0) {
            Some(c) => c.flags & config_flags::REFUSE_RAW_SOCKETS != 0,
            // Not configured yet: refuse (fail closed).
            None => true,
        }
    }

    /// Raw IP sockets in the enforced cgroup: refused (EPERM) unless configured.
    /// They can forge packets that the connect hooks never see.
    #[cgroup_sock(sock_create)]
    pub fn pc_sock_create(ctx: SockContext) -> i32 {
        let sk = ctx.sock;
        let ty = unsafe { (*sk).type_ };
        let family = unsafe { (*sk).family };
        if (family == AF_INET as u32 || family == AF_INET6 as u32)
            && (ty == SOCK_RAW || ty == SOCK_PACKET)
            && refuse_raw()
        {
            bump(counter::RAW_SOCKETS_REFUSED);
            return 0;
        }
        1
    }

    /// Packet and XDP sockets in the enforced cgroup: refused (EPERM) unless
    /// configured. Their packets skip the cgroup egress hook altogether.
    #[lsm_cgroup(hook = "socket_create")]
    pub fn pc_socket_create(ctx: LsmContext) -> i32 {
        // socket_create(int family, int type, int protocol, int kern)
        let family: i32 = ctx.arg(0);
        let kern: i32 = ctx.arg(3);
        if kern == 0 && (family as u32 == AF_PACKET || family as u32 == AF_XDP) && refuse_raw() {
            bump(counter::RAW_SOCKETS_REFUSED);
            return 0;
        }
        1
    }

    /// Is this address and port (port 0: unknown) a protected destination?
    #[inline(always)]
    fn protected(addr: &[u8; 16], port: Option<u16>) -> bool {
        if TARGET_ADDRS.get(&Key::new(128, *addr)).is_none() {
            return false;
        }
        match port {
            Some(p) => lookup_target(addr, p) != NO_TARGET,
            // No readable port: the address alone decides, biased toward drop.
            None => true,
        }
    }

    /// Interface egress (tcx), on every interface: frames that a socket of the
    /// enforced cgroup hands to a device without passing the cgroup egress hook
    /// (packet sockets) are dropped when they go to a protected destination and do
    /// not come from the agent. Everything else passes untouched (forwarded
    /// traffic, other cgroups, kernel-made packets).
    #[classifier]
    pub fn pc_tc_egress(ctx: TcContext) -> i32 {
        const TC_ACT_OK: i32 = 0;
        const TC_ACT_SHOT: i32 = 2;
        match tc_guard(&ctx) {
            Ok(true) => TC_ACT_SHOT,
            _ => TC_ACT_OK,
        }
    }

    #[inline(always)]
    fn tc_guard(ctx: &TcContext) -> Result<bool, i64> {
        let Some(cfg) = CONFIG.get(0) else {
            return Ok(false);
        };
        if cfg.flags & config_flags::REFUSE_RAW_SOCKETS == 0 || cfg.enforced_cgroup_id == 0 {
            return Ok(false);
        }
        let skb: *mut __sk_buff = ctx.skb.skb;
        // The sending socket's cgroup: 0 when there is no full socket.
        let in_enforced =
            unsafe { generated::bpf_skb_ancestor_cgroup_id(skb, cfg.enforced_level as i32) }
                == cfg.enforced_cgroup_id;
        if !in_enforced {
            return Ok(false);
        }
        let mut l3 = 14usize;
        let mut ethertype = u16::from_be(ctx.load::<u16>(12)?);
        if ethertype == 0x8100 || ethertype == 0x88a8 {
            ethertype = u16::from_be(ctx.load::<u16>(16)?);
            l3 = 18;
        }
        let (addr, l4_proto, l4_off, frag) = match ethertype {
            0x0800 => {
                let first: u8 = ctx.load(l3)?;
                let ihl = ((first & 0x0f) as usize) * 4;
                let proto: u8 = ctx.load(l3 + 9)?;
                let frag_off: u16 = u16::from_be(ctx.load::<u16>(l3 + 6)?);
                let dst: [u8; 4] = ctx.load(l3 + 16)?;
                (
                    mapped_v4(dst),
                    proto as u32,
                    l3 + ihl,
                    (frag_off & 0x1fff) != 0,
                )
            }
            0x86dd => {
                let next: u8 = ctx.load(l3 + 6)?;
                let dst: [u8; 16] = ctx.load(l3 + 24)?;
                (dst, next as u32, l3 + 40, false)
            }
            _ => return Ok(false),
        };
        let port = if (l4_proto == IPPROTO_TCP || l4_proto == IPPROTO_UDP) && !frag {
            Some(u16::from_be(ctx.load::<u16>(l4_off + 2)?))
        } else {
            None
        };
        if !protected(&addr, port) {
            return Ok(false);
        }
        let mark = unsafe { read_volatile(&(*skb).mark) };
        if cfg.agent_cgroup_id != 0
            && unsafe { bpf_skb_cgroup_id(skb) } == cfg.agent_cgroup_id
            && (cfg.mark == 0 || mark == cfg.mark)
        {
            return Ok(false);
        }
        bump(counter::BYPASS_DROPS);
        bump(counter::PACKET_FRAMES_DROPPED);
        Ok(true)
    }

    /// setsockopt in the enforced cgroup: a packet socket may not skip the
    /// qdisc layer (PACKET_QDISC_BYPASS hands frames to the driver past the
    /// interface egress guard), and XDP sockets are not set up (SOL_XDP).
    #[cgroup_sockopt(setsockopt)]
    pub fn pc_setsockopt(ctx: SockoptContext) -> i32 {
        let so = ctx.sockopt;
        let level = unsafe { (*so).level };
        let optname = unsafe { (*so).optname };
        if ((level == SOL_PACKET && optname == PACKET_QDISC_BYPASS) || level == SOL_XDP)
            && refuse_raw()
        {
            bump(counter::RAW_SOCKETS_REFUSED);
            return 0;
        }
        1
    }

    #[inline(always)]
    fn read_ptr(base: *const u8, offset: &u32) -> *const u8 {
        if base.is_null() {
            return core::ptr::null();
        }
        unsafe { bpf_probe_read_kernel(base.add(off(offset)) as *const *const u8) }
            .unwrap_or(core::ptr::null())
    }

    /// sched_process_exec(p, old_pid, bprm), in the context of the process that
    /// exec'd: records the device and inode of the file the kernel runs
    /// (`bprm->file`, symlinks resolved by the kernel), the path it was run as
    /// (`bprm->interp`), the script named by exec when an interpreter runs it
    /// (`bprm->filename`), and the process start time.
    #[btf_tracepoint(function = "sched_process_exec")]
    pub fn pc_exec(ctx: BtfTracePointContext) -> u32 {
        let bprm: *const u8 = ctx.arg(2);
        if bprm.is_null() {
            return 0;
        }
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        let Some(info) = SCRATCH.get_ptr_mut(0) else {
            return 0;
        };
        let info = unsafe { &mut *info };
        info.ktime_ns = unsafe { bpf_ktime_get_boot_ns() };
        info.start_ns = current_process_start_ns();
        info.dev = 0;
        info._pad = 0;
        info.ino = 0;
        info.exe[0] = 0;
        info.script[0] = 0;
        let file = read_ptr(bprm, &PC_OFF_BPRM_FILE);
        let inode = read_ptr(file, &PC_OFF_FILE_INODE);
        if !inode.is_null() {
            info.ino =
                unsafe { bpf_probe_read_kernel(inode.add(off(&PC_OFF_INODE_INO)) as *const u64) }
                    .unwrap_or(0);
            let sb = read_ptr(inode, &PC_OFF_INODE_SB);
            if !sb.is_null() {
                info.dev =
                    unsafe { bpf_probe_read_kernel(sb.add(off(&PC_OFF_SB_DEV)) as *const u32) }
                        .unwrap_or(0);
            }
        }
        let interp = read_ptr(bprm, &PC_OFF_BPRM_INTERP);
        let filename = read_ptr(bprm, &PC_OFF_BPRM_FILENAME);
        if !interp.is_null()
            && unsafe { bpf_probe_read_kernel_str_bytes(interp, &mut info.exe) }.is_err()
        {
            info.exe[0] = 0;
        }
        // binfmt_script (and binfmt_misc) point interp elsewhere; filename stays the
        // file exec was asked to run.
        if !filename.is_null()
            && filename != interp
            && unsafe { bpf_probe_read_kernel_str_bytes(filename, &mut info.script) }.is_err()
        {
            info.script[0] = 0;
        }
        let _ = EXECS.insert(&tgid, info, 0);
        0
    }

    /// sched_process_fork(parent, child): the child inherits the parent's record (a
    /// fork without exec runs the same program) with its own start time, and any
    /// stale record of a dead process that had the same pid is replaced or removed.
    #[btf_tracepoint(function = "sched_process_fork")]
    pub fn pc_fork(ctx: BtfTracePointContext) -> u32 {
        let child: *const u8 = ctx.arg(1);
        if child.is_null() {
            return 0;
        }
        let child_tgid: u32 =
            match unsafe { bpf_probe_read_kernel(child.add(off(&PC_OFF_TASK_TGID)) as *const u32) }
            {
                Ok(v) => v,
                Err(_) => return 0,
            };
        // This tracepoint fires in the parent's context.
        let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
        if child_tgid == parent || child_tgid == 0 {
            // A new thread of the same process.
            return 0;
        }
        let start = unsafe {
            bpf_probe_read_kernel(child.add(off(&PC_OFF_TASK_START_BOOTTIME)) as *const u64)
        }
        .unwrap_or(0);
        match EXECS.get_ptr(&parent) {
            Some(p) => {
                let Some(s) = FORK_SCRATCH.get_ptr_mut(0) else {
                    return 0;
                };
                unsafe {
                    core::ptr::copy_nonoverlapping(p, s, 1);
                    (*s).start_ns = start;
                    let _ = EXECS.insert(&child_tgid, &*s, 0);
                }
            }
            None => {
                let _ = EXECS.remove(&child_tgid);
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
