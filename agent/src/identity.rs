//! Who made a connection: the kernel's record at connect time, completed from
//! the exec map and /proc.
//!
//! What the kernel captured (tgid, tid, uid, gid, cgroup id, comm, time) is always
//! right, even when the client has already exited. The executable comes from the
//! exec hook's record when its exec time matches the one the connect saw (the
//! kernel checks that the record belongs to the process that connected, by its
//! start time). That record holds the device and inode of the file the kernel
//! ran; a path is reported only when it resolves to that very file (the live
//! process's /proc/<pid>/exe, or the path it was run as with every symlink
//! resolved), so no name a workload gives a file or a symlink reaches `exe`.
//! Without an exec record, /proc is used, and only if that process started no
//! later than the connect: a reused pid is never mistaken for the original.
//!
//! `unit` and `slice` come only from the system manager's part of the cgroup
//! tree: the outermost unit below the slices. Below a unit the tree belongs to
//! that unit's processes (delegation); below `user@<uid>.service` it belongs to
//! the user's own manager, whose slice and unit are reported as `user_slice` and
//! `user_unit`.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use agent_common::{ConnInfo, ExecInfo};
use serde::Serialize;

use crate::policy::Subject;

#[derive(Debug, Clone, Serialize, Default)]
pub struct Attribution {
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub user: Option<String>,
    pub gid: u32,
    pub group: Option<String>,
    pub comm: String,
    pub exe: Option<String>,
    /// Where `exe` came from: `exec` (the kernel's exec record: the file's device
    /// and inode, with a path that resolves to it), `proc`, or absent.
    pub exe_source: Option<&'static str>,
    /// The name the program was run as, when it could not be tied to the file the
    /// kernel ran (a relative path of a process gone, a path replaced since): not
    /// used for policy.
    pub exe_unverified: Option<String>,
    /// The script an interpreter runs (`exe` is then the interpreter), as named to
    /// exec and resolved by the agent.
    pub script: Option<String>,
    pub cmdline: Option<Vec<String>>,
    pub cgroup_id: u64,
    pub cgroup: Option<String>,
    /// The system manager's unit (for a user's services: `user@<uid>.service`).
    pub unit: Option<String>,
    /// The system manager's innermost slice above `unit`.
    pub slice: Option<String>,
    /// The unit inside a user manager (`user@<uid>.service/...`): the user's
    /// choice, never a system unit.
    pub user_unit: Option<String>,
    /// The slice inside a user manager.
    pub user_slice: Option<String>,
    pub container_id: Option<String>,
    /// Process start, nanoseconds since boot, when known.
    pub start_boot_ns: Option<u64>,
    pub netns_cookie: u64,
    pub socket_cookie: u64,
    /// Connect time, nanoseconds since boot.
    pub connect_boot_ns: u64,
    /// True when the process had exited (or its pid was reused) before we looked.
    pub exited: bool,
    /// True when the process ran exec after connecting: /proc describes another program.
    pub exec_changed: bool,
    /// sha256 of the executable (only when the policy selects on it, and the
    /// process was still alive when the agent looked).
    pub exe_sha256: Option<String>,
}

impl Attribution {
    pub fn subject(&self) -> Subject {
        Subject {
            uid: Some(self.uid),
            user: self.user.clone(),
            gid: Some(self.gid),
            group: self.group.clone(),
            exe: self.exe.clone(),
            exe_sha256: self.exe_sha256.clone(),
            comm: Some(self.comm.clone()),
            cgroup: self.cgroup.clone(),
            unit: self.unit.clone(),
            slice: self.slice.clone(),
            token: None,
        }
    }
}

pub fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Resolves cgroup ids to paths (relative to the cgroup v2 root), with a cache.
pub struct CgroupResolver {
    root: PathBuf,
    cache: Mutex<HashMap<u64, String>>,
}

impl CgroupResolver {
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn path_of(&self, id: u64) -> Option<String> {
        if let Ok(c) = self.cache.lock()
            && let Some(p) = c.get(&id)
        {
            return Some(p.clone());
        }
        // Walk the hierarchy once, filling the cache with every directory seen.
        let mut found = None;
        let mut stack = vec![self.root.clone()];
        let mut seen = HashMap::new();
        while let Some(dir) = stack.pop() {
            if seen.len() > 100_000 {
                break;
            }
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            let rel = dir
                .strip_prefix(&self.root)
                .map(|p| format!("/{}", p.display()))
                .unwrap_or_else(|_| "/".into());
            let rel = if rel == "/" {
                rel
            } else {
                rel.trim_end_matches('/').to_string()
            };
            if meta.ino() == id {
                found = Some(rel.clone());
            }
            seen.insert(meta.ino(), rel);
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        stack.push(e.path());
                    }
                }
            }
        }
        if let Ok(mut c) = self.cache.lock() {
            if c.len() > 50_000 {
                c.clear();
            }
            c.extend(seen);
        }
        found
    }
}

/// systemd units and slices of a cgroup path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Units {
    pub unit: Option<String>,
    pub slice: Option<String>,
    pub user_unit: Option<String>,
    pub user_slice: Option<String>,
}

/// The first unit below the slices of `parts`, and the innermost of those slices.
/// Returns how many components were consumed up to and including the unit.
fn first_unit(parts: &[&str]) -> (Option<String>, Option<String>, usize) {
    let mut slice = None;
    for (i, c) in parts.iter().enumerate() {
        if c.ends_with(".slice") {
            slice = Some((*c).to_string());
        } else if c.ends_with(".service") || c.ends_with(".scope") {
            return (Some((*c).to_string()), slice, i + 1);
        } else {
            // Not systemd's naming: whatever is below is not the manager's.
            break;
        }
    }
    (None, slice, parts.len())
}

/// systemd units from a cgroup path. systemd places units only directly in
/// slices; the tree below a unit is the unit's own (what a service with
/// `Delegate=` or any process with write access there creates). So the system
/// unit is the outermost unit, never a deeper `*.service` directory, and below
/// `user@<uid>.service` the user manager's slice and unit are reported apart.
pub fn units(cgroup: &str) -> Units {
    let parts: Vec<&str> = cgroup.split('/').filter(|c| !c.is_empty()).collect();
    let (unit, slice, used) = first_unit(&parts);
    let mut out = Units {
        unit,
        slice,
        ..Default::default()
    };
    let is_user_manager = out
        .unit
        .as_deref()
        .is_some_and(|u| u.starts_with("user@") && u.ends_with(".service"));
    if is_user_manager {
        let (uu, us, _) = first_unit(parts.get(used..).unwrap_or(&[]));
        out.user_unit = uu;
        out.user_slice = us;
    }
    out
}

/// A 64-hex-digit container id in a cgroup path (docker, containerd, cri-o, podman).
pub fn container_id(cgroup: &str) -> Option<String> {
    cgroup.split('/').rev().find_map(|c| {
        let c = c.trim_end_matches(".scope");
        let id = c.rsplit(['-', ':']).next().unwrap_or(c);
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
    })
}

fn ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map(|v| v as u64)
        .filter(|v| *v > 0)
        .unwrap_or(100)
}

/// Process start time (ns since boot) from /proc/<pid>/stat.
fn proc_start_ns(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parentheses: fields start after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let start_ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    Some(start_ticks.saturating_mul(1_000_000_000) / ticks_per_second())
}

/// Builds the attribution of a connection from the kernel record.
/// sha256 of executables, cached by (device, inode, size, mtime): a binary is
/// hashed once, and a replaced binary (new inode or mtime) is hashed again.
#[derive(Default)]
pub struct ExeHasher {
    cache: Mutex<HashMap<(u64, u64, u64, i64), String>>,
}

impl ExeHasher {
    /// Hashes the executable of a live process through /proc/<pid>/exe (the file
    /// the process runs, even if its path was replaced or deleted since).
    pub fn hash_of(&self, pid: u32) -> Option<String> {
        use sha2::Digest;
        use std::io::Read;
        let mut f = std::fs::File::open(format!("/proc/{pid}/exe")).ok()?;
        let m = f.metadata().ok()?;
        let key = (m.dev(), m.ino(), m.len(), m.mtime());
        if let Some(h) = self.cache.lock().ok()?.get(&key) {
            return Some(h.clone());
        }
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf).ok()?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        if let Ok(mut c) = self.cache.lock() {
            if c.len() > 4096 {
                c.clear();
            }
            c.insert(key, hex.clone());
        }
        Some(hex)
    }
}

#[cfg(test)]
pub fn resolve(conn: &ConnInfo, exec: Option<ExecInfo>, cgroups: &CgroupResolver) -> Attribution {
    resolve_with(conn, exec, cgroups, None)
}

/// As [`resolve`]; with a hasher, also the executable's sha256 (live processes only).
pub fn resolve_with(
    conn: &ConnInfo,
    exec: Option<ExecInfo>,
    cgroups: &CgroupResolver,
    hasher: Option<&ExeHasher>,
) -> Attribution {
    let pid = conn.tgid;
    let mut a = Attribution {
        pid,
        tid: conn.tid,
        uid: conn.uid,
        gid: conn.gid,
        comm: cstr(&conn.comm),
        cgroup_id: conn.cgroup_id,
        netns_cookie: conn.netns_cookie,
        socket_cookie: conn.sock_cookie,
        connect_boot_ns: conn.ktime_ns,
        ..Default::default()
    };
    a.user = nix::unistd::User::from_uid(conn.uid.into())
        .ok()
        .flatten()
        .map(|u| u.name);
    a.group = nix::unistd::Group::from_gid(conn.gid.into())
        .ok()
        .flatten()
        .map(|g| g.name);
    let exec_rec = exec.filter(|e| conn.exec_ktime_ns != 0 && e.ktime_ns == conn.exec_ktime_ns);
    // The program may have changed since the connect: a later exec (or a reused pid
    // that exec'd) shows as an exec record newer than the one the connect saw. Then
    // /proc describes another program and is not used for exe or cmdline.
    let execd_since = exec.is_some_and(|e| {
        if conn.exec_ktime_ns != 0 {
            e.ktime_ns != conn.exec_ktime_ns
        } else {
            e.ktime_ns > conn.ktime_ns
        }
    });
    // /proc is trusted only for the process that connected: same pid, started
    // no later than the connect (10 ms of slack for tick rounding).
    let start = proc_start_ns(pid);
    // With the start time the kernel read at connect, the process in /proc must
    // have started then (to the clock tick /proc reports in); without it, no later
    // than the connect.
    let same_process = match (start, conn.start_ns) {
        (Some(s), 0) => s <= conn.ktime_ns.saturating_add(10_000_000),
        (Some(s), k) => s <= k.saturating_add(1_000_000) && k.saturating_sub(s) < 20_000_000,
        (None, _) => false,
    };
    a.exec_changed = execd_since;
    let alive = same_process && !execd_since;
    if let Some(e) = &exec_rec {
        let (exe, unverified) = exec_path(e, alive.then_some(pid));
        a.exe = exe;
        a.exe_source = a.exe.is_some().then_some("exec");
        a.exe_unverified = unverified;
        a.script = script_path(e, alive.then_some(pid));
    }
    if alive {
        a.start_boot_ns = if conn.start_ns != 0 {
            Some(conn.start_ns)
        } else {
            start
        };
        a.exe_sha256 = hasher.and_then(|h| h.hash_of(pid));
        let base = PathBuf::from(format!("/proc/{pid}"));
        // No exec record (the process predates the agent): the kernel's own link.
        if exec_rec.is_none()
            && let Ok(exe) = std::fs::read_link(base.join("exe"))
        {
            let exe = exe
                .to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_string();
            a.exe = Some(exe);
            a.exe_source = Some("proc");
        }
        if let Ok(raw) = std::fs::read(base.join("cmdline")) {
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| redact_arg(&String::from_utf8_lossy(s)))
                .collect();
            if !args.is_empty() {
                a.cmdline = Some(args);
            }
        }
    } else {
        a.exited = true;
    }
    a.cgroup = cgroups.path_of(conn.cgroup_id).or_else(|| {
        if same_process {
            proc_cgroup_v2(Path::new(&format!("/proc/{pid}/cgroup")))
        } else {
            None
        }
    });
    if let Some(cg) = &a.cgroup {
        let u = units(cg);
        a.unit = u.unit;
        a.slice = u.slice;
        a.user_unit = u.user_unit;
        a.user_slice = u.user_slice;
        a.container_id = container_id(cg);
    }
    a
}

/// Does `m` describe the file the exec record says the kernel ran?
fn same_file(m: &std::fs::Metadata, e: &ExecInfo) -> bool {
    // The kernel encodes dev_t as major << 20 | minor.
    let (major, minor) = (u64::from(e.dev >> 20), u64::from(e.dev & 0xf_ffff));
    e.ino != 0
        && m.ino() == e.ino
        && nix::sys::stat::major(m.dev()) == major
        && nix::sys::stat::minor(m.dev()) == minor
}

/// The path of the file an exec record names, verified by device and inode:
/// (verified path, the unverified name when no path could be verified).
///
/// A live process: its /proc/<pid>/exe link (the kernel's path of the file it
/// runs). A process gone: the path it was run as, with every symlink resolved,
/// if that is still the same file. A relative name of a process gone cannot be
/// resolved (its working directory is gone with it).
pub fn exec_path(e: &ExecInfo, live_pid: Option<u32>) -> (Option<String>, Option<String>) {
    let named = cstr(&e.exe);
    if let Some(pid) = live_pid {
        let link = format!("/proc/{pid}/exe");
        if let (Ok(m), Ok(p)) = (std::fs::metadata(&link), std::fs::read_link(&link))
            && same_file(&m, e)
        {
            let p = p.to_string_lossy();
            return (Some(p.trim_end_matches(" (deleted)").to_string()), None);
        }
    }
    if named.starts_with('/')
        && let Ok(real) = std::fs::canonicalize(&named)
        && let Ok(m) = std::fs::metadata(&real)
        && same_file(&m, e)
    {
        return (Some(real.to_string_lossy().into_owned()), None);
    }
    (None, (!named.is_empty()).then_some(named))
}

/// The script of an exec record (when an interpreter runs one), resolved against
/// the live process's working directory when relative.
fn script_path(e: &ExecInfo, live_pid: Option<u32>) -> Option<String> {
    let named = cstr(&e.script);
    if named.is_empty() {
        return None;
    }
    let full = if named.starts_with('/') {
        PathBuf::from(&named)
    } else {
        match live_pid {
            Some(pid) => PathBuf::from(format!("/proc/{pid}/cwd")).join(&named),
            None => return Some(named),
        }
    };
    Some(
        std::fs::canonicalize(&full)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or(named),
    )
}

fn proc_cgroup_v2(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

/// A command-line argument as the audit log may keep it: secrets clients put on
/// their command line (`password=` in a libpq connection string, the password of
/// a `scheme://user:password@host` URL, `--password=...`) replaced by `****`.
pub fn redact_arg(arg: &str) -> String {
    let mut out = arg.to_string();
    // key=value pairs: password=..., PGPASSWORD=..., --password=..., sslpassword=...
    let lower = out.to_ascii_lowercase();
    let mut spans = Vec::new();
    let mut from = 0;
    while let Some(i) = lower[from..].find("password=") {
        let start = from + i + "password=".len();
        let rest = &out[start..];
        let end = if let Some(q) = rest.strip_prefix('\'') {
            q.find('\'').map_or(out.len(), |e| start + 1 + e + 1)
        } else {
            rest.find([' ', '&', ';']).map_or(out.len(), |e| start + e)
        };
        spans.push((start, end));
        from = end.max(start);
        if from >= out.len() {
            break;
        }
    }
    // URL user info: scheme://user:password@host
    if let Some(scheme) = out.find("://") {
        let auth_start = scheme + 3;
        let auth_end = out[auth_start..]
            .find(['/', '?', '#'])
            .map_or(out.len(), |e| auth_start + e);
        if let Some(at) = out[auth_start..auth_end].rfind('@') {
            let userinfo = &out[auth_start..auth_start + at];
            if let Some(colon) = userinfo.find(':') {
                spans.push((auth_start + colon + 1, auth_start + at));
            }
        }
    }
    spans.sort();
    for (s, e) in spans.into_iter().rev() {
        if s < e && e <= out.len() {
            out.replace_range(s..e, "****");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_slice_container() {
        let p = "/system.slice/reporting.service";
        let u = units(p);
        assert_eq!(
            (u.unit.as_deref(), u.slice.as_deref()),
            (Some("reporting.service"), Some("system.slice"))
        );
        assert_eq!((u.user_unit, u.user_slice), (None, None));
        let id = "a".repeat(64);
        let p = format!("/system.slice/docker-{id}.scope");
        assert_eq!(container_id(&p), Some(id.clone()));
        assert_eq!(units(&p).unit, Some(format!("docker-{id}.scope")));
        assert_eq!(
            container_id("/user.slice/user-0.slice/session-1.scope"),
            None
        );
    }

    #[test]
    fn a_user_manager_or_a_delegated_subtree_never_names_a_system_unit() {
        // systemd-run --user --slice=system --unit=etl.service
        let u = units("/user.slice/user-1000.slice/user@1000.service/system.slice/etl.service");
        assert_eq!(
            u,
            Units {
                unit: Some("user@1000.service".into()),
                slice: Some("user-1000.slice".into()),
                user_unit: Some("etl.service".into()),
                user_slice: Some("system.slice".into()),
            }
        );
        // A delegated service making a child named like another service.
        let u = units("/system.slice/app.service/payroll.service");
        assert_eq!(
            (u.unit.as_deref(), u.slice.as_deref(), u.user_unit),
            (Some("app.service"), Some("system.slice"), None)
        );
        // Slices inside a unit are not the manager's either.
        let u = units("/system.slice/app.service/x.slice/y.service");
        assert_eq!(
            (u.unit.as_deref(), u.slice.as_deref()),
            (Some("app.service"), Some("system.slice"))
        );
        // A plain directory under a slice ends the manager's part.
        let u = units("/system.slice/mine/etl.service");
        assert_eq!((u.unit, u.slice.as_deref()), (None, Some("system.slice")));
        assert_eq!(units("/"), Units::default());
    }

    #[test]
    fn an_exec_path_counts_only_when_it_is_the_file_the_kernel_ran() {
        use std::os::unix::fs::symlink;
        let dir = std::env::temp_dir().join(format!("pc-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let real = dir.join("real-tool");
        std::fs::write(&real, b"x").expect("file");
        let link = dir.join("psql");
        symlink(&real, &link).expect("symlink");
        let m = std::fs::metadata(&real).expect("stat");
        let dev = ((nix::sys::stat::major(m.dev()) << 20) | nix::sys::stat::minor(m.dev())) as u32;
        let mut rec = ExecInfo {
            ktime_ns: 1,
            start_ns: 1,
            dev,
            _pad: 0,
            ino: m.ino(),
            exe: [0; agent_common::EXE_LEN],
            script: [0; agent_common::EXE_LEN],
        };
        let named = link.to_string_lossy().into_owned();
        rec.exe[..named.len()].copy_from_slice(named.as_bytes());
        // Run through a symlink: reported as the file it points to.
        let real_s = std::fs::canonicalize(&real)
            .expect("canonical")
            .to_string_lossy()
            .into_owned();
        assert_eq!(exec_path(&rec, None), (Some(real_s), None));
        // The symlink now points elsewhere: the name no longer proves anything.
        let other = dir.join("other");
        std::fs::write(&other, b"y").expect("file");
        std::fs::remove_file(&link).expect("rm");
        symlink(&other, &link).expect("symlink");
        assert_eq!(exec_path(&rec, None), (None, Some(named.clone())));
        // A relative name of a process gone cannot be tied to the file.
        let mut rel = rec;
        rel.exe = [0; agent_common::EXE_LEN];
        rel.exe[..6].copy_from_slice(b"./psql");
        assert_eq!(exec_path(&rel, None), (None, Some("./psql".into())));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn cstr_stops_at_nul() {
        assert_eq!(cstr(b"psql\0\0junk"), "psql");
        assert_eq!(cstr(b"full"), "full");
    }

    #[test]
    fn own_process_resolves_from_proc() {
        let me = std::process::id();
        let conn = ConnInfo {
            orig_addr: [0; 16],
            orig_port: 1,
            family: 2,
            target_id: 0,
            tgid: me,
            tid: me,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            cgroup_id: 0,
            netns_cookie: 0,
            sock_cookie: 0,
            ktime_ns: u64::MAX / 2,
            exec_ktime_ns: 0,
            start_ns: 0,
            comm: [0; 16],
        };
        let a = resolve(&conn, None, &CgroupResolver::new("/nonexistent".into()));
        assert!(!a.exited);
        assert!(a.exe.is_some());
        // A connect that happened before this process started is not ours.
        let early = ConnInfo {
            ktime_ns: 1,
            ..conn
        };
        let a = resolve(&early, None, &CgroupResolver::new("/nonexistent".into()));
        assert!(a.exited && a.exe.is_none() && a.cmdline.is_none());
        // The kernel's start time of the process that connected decides: another
        // start time (a reused pid) is not this process, this one's is.
        let own_start = proc_start_ns(me).expect("own start");
        let reused = ConnInfo {
            start_ns: own_start + 5_000_000_000,
            ..conn
        };
        let a = resolve(&reused, None, &CgroupResolver::new("/nonexistent".into()));
        assert!(a.exited && a.exe.is_none(), "{a:?}");
        let same = ConnInfo {
            start_ns: own_start + 3_000_000,
            ..conn
        };
        let a = resolve(&same, None, &CgroupResolver::new("/nonexistent".into()));
        assert!(!a.exited && a.exe.is_some(), "{a:?}");
    }

    #[test]
    fn exec_record_decides_and_a_later_exec_is_not_trusted() {
        let me = std::process::id();
        // The record names the file this test runs, under a name of the
        // workload's choosing: the kernel's file wins over the name.
        let m = std::fs::metadata("/proc/self/exe").expect("stat own exe");
        let dev = ((nix::sys::stat::major(m.dev()) << 20) | nix::sys::stat::minor(m.dev())) as u32;
        let mut exe = [0u8; agent_common::EXE_LEN];
        exe[..13].copy_from_slice(b"/usr/bin/psql");
        let conn = ConnInfo {
            orig_addr: [0; 16],
            orig_port: 1,
            family: 2,
            target_id: 0,
            tgid: me,
            tid: me,
            uid: 0,
            gid: 0,
            cgroup_id: 0,
            netns_cookie: 0,
            sock_cookie: 0,
            ktime_ns: u64::MAX / 2,
            exec_ktime_ns: 100,
            start_ns: 0,
            comm: [0; 16],
        };
        let cg = CgroupResolver::new("/nonexistent".into());
        let same = ExecInfo {
            ktime_ns: 100,
            start_ns: 0,
            dev,
            _pad: 0,
            ino: m.ino(),
            exe,
            script: [0; agent_common::EXE_LEN],
        };
        let own = std::fs::read_link("/proc/self/exe")
            .expect("own exe")
            .to_string_lossy()
            .into_owned();
        let a = resolve(&conn, Some(same), &cg);
        assert_eq!(
            (a.exe.as_deref(), a.exe_source),
            (Some(own.as_str()), Some("exec"))
        );
        assert!(!a.exec_changed);
        // A newer exec record: the process runs another program now, so neither the
        // record nor /proc tells what connected.
        let later = ExecInfo {
            ktime_ns: 200,
            ..same
        };
        let a = resolve(&conn, Some(later), &cg);
        assert!(a.exec_changed);
        assert!(a.exe.is_none() && a.cmdline.is_none(), "{a:?}");
    }

    #[test]
    fn secrets_on_command_lines_are_redacted() {
        assert_eq!(
            redact_arg("host=db port=5432 user=app password=s3cret dbname=x"),
            "host=db port=5432 user=app password=**** dbname=x"
        );
        assert_eq!(
            redact_arg("password='a b c' user=u"),
            "password=**** user=u"
        );
        assert_eq!(
            redact_arg("postgresql://app:s3cret@db:5432/app?sslmode=require"),
            "postgresql://app:****@db:5432/app?sslmode=require"
        );
        assert_eq!(redact_arg("--password=hunter2"), "--password=****");
        assert_eq!(redact_arg("PGPASSWORD=x"), "PGPASSWORD=****");
        assert_eq!(
            redact_arg("postgresql://app@db/app"),
            "postgresql://app@db/app"
        );
        assert_eq!(redact_arg("select 1"), "select 1");
    }
}
