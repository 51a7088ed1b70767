//! A real PostgreSQL for the end-to-end tests, and real clients to run against it
//! from inside a test cgroup: psql, pgbench, `pc-pgclient` (tokio-postgres) and
//! `tests/clients/pg_client.py` (psycopg 3).
//!
//! The server runs from the Debian package's binaries (`/usr/lib/postgresql/*/bin`,
//! installed by `cargo xtask setup`) as user `postgres` (initdb refuses root), in a
//! temp dir, on 127.0.0.1 only, on a free port in 20000-30000 (outside the
//! ephemeral range, so no client socket holds it), with its unix socket in the
//! temp dir and fsync off. It is stopped (`pg_ctl stop -m immediate`, then kill)
//! and its directory removed on drop.
//!
//! Roles: `app` (SCRAM-SHA-256), `legacy` (MD5 password and `md5` in pg_hba),
//! `plain` (cleartext `password` in pg_hba), all with [`password`] as password;
//! `postgres` (superuser) by trust on the unix socket only. Database `app`, owned
//! by `app`: `public.accounts(id, owner, balance, ssn, card)`, `public.orders`,
//! `reports.daily`, a few rows each.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{TempDir, in_cgroup, openssl, repo_root};

/// The roles created at start, with their pg_hba method.
pub const ROLES: [(&str, &str); 3] = [
    ("app", "scram-sha-256"),
    ("legacy", "md5"),
    ("plain", "password"),
];

/// Rows in `public.accounts` after start.
pub const ACCOUNTS: usize = 5;

/// The password of a role created at start.
pub fn password(role: &str) -> String {
    format!("{role}-Secret-1")
}

/// How to start the server.
#[derive(Clone, Debug, Default)]
pub struct PgOpts {
    /// `ssl = on` with a server certificate signed by a CA made for this server.
    pub tls: bool,
    /// pg_hba accepts TCP connections only over TLS (`hostssl`); implies `tls`.
    pub hostssl_only: bool,
    /// More `postgresql.conf` lines, appended as given.
    pub extra_conf: Vec<String>,
}

/// What a client process did.
#[derive(Debug)]
pub struct CmdOut {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOut {
    pub fn ok(&self) -> bool {
        self.status.success()
    }

    /// Panics with everything the process printed unless it succeeded.
    pub fn assert_ok(&self, what: &str) -> &Self {
        assert!(
            self.ok(),
            "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// A running PostgreSQL server.
pub struct PgServer {
    pub port: u16,
    /// Directory of the unix socket (superuser access, never redirected).
    pub socket_dir: PathBuf,
    pub data_dir: PathBuf,
    /// `initdb`, `pg_ctl`, `psql`, `pgbench` live here.
    pub bin: PathBuf,
    /// The CA that signed the server certificate, when started with TLS.
    pub ca: Option<PathBuf>,
    pub opts: PgOpts,
    log: PathBuf,
    running: bool,
    // Last: removed after the server is stopped.
    dir: TempDir,
}

/// `/usr/lib/postgresql/<newest>/bin`, as `cargo xtask setup` installs it.
pub fn pg_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists() && p.join("pgbench").exists())
        .collect();
    dirs.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop()
}

/// The psycopg venv's interpreter (`<target>/pyenv/bin/python`, made by
/// `cargo xtask setup`).
pub fn venv_python() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join("pyenv")
        .join("bin")
        .join("python")
}

pub fn pg_client_py() -> PathBuf {
    repo_root()
        .join("tests")
        .join("clients")
        .join("pg_client.py")
}

/// Why the PostgreSQL tests cannot run here (missing server binaries or psycopg
/// venv), with what to run; `None` when they can.
pub fn missing() -> Option<String> {
    if pg_bin().is_none() {
        return Some(
            "PostgreSQL is not installed (/usr/lib/postgresql/*/bin): run `cargo xtask setup`"
                .into(),
        );
    }
    if !venv_python().exists() {
        return Some(format!(
            "the psycopg venv {} is missing: run `cargo xtask setup`",
            venv_python().display()
        ));
    }
    None
}

static PORT_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A port in 20000-30000 that nobody listens on right now, spread by pid so
/// concurrent test processes rarely try the same one.
fn candidate_port() -> u16 {
    loop {
        let n = PORT_SEQ.fetch_add(1, Ordering::Relaxed);
        let p = 20000 + ((std::process::id() as usize * 7919 + n * 131) % 10000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn as_postgres(bin: &Path) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(bin);
    c
}

impl PgServer {
    /// Starts a fresh server; panics with its log if it does not come up.
    pub fn start(opts: PgOpts) -> Self {
        let bin = pg_bin().unwrap_or_else(|| {
            panic!(
                "PostgreSQL is not installed (/usr/lib/postgresql/*/bin): run `cargo xtask setup`"
            )
        });
        let dir = TempDir::new("portcullis-test-pg");
        let data_dir = dir.0.join("data");
        let socket_dir = dir.0.join("sock");
        std::fs::create_dir_all(&socket_dir).expect("create socket dir");
        run_ok(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir.0),
            "chown the server directory",
        );
        run_ok(
            Command::new("chmod").arg("755").arg(&dir.0),
            "chmod the server directory",
        );
        run_ok(
            as_postgres(&bin.join("initdb"))
                .arg("-D")
                .arg(&data_dir)
                .args([
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "--no-sync",
                    "--no-instructions",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ]),
            "initdb",
        );
        let mut s = Self {
            port: 0,
            socket_dir,
            data_dir,
            bin,
            ca: None,
            opts: opts.clone(),
            log: dir.0.join("postgres.log"),
            running: false,
            dir,
        };
        let tls = opts.tls || opts.hostssl_only;
        if tls {
            s.ca = Some(s.make_certs());
        }
        s.write_conf(tls);
        s.start_server();
        s.seed();
        s
    }

    /// A CA and a server certificate for `localhost` / `127.0.0.1`, made with the
    /// openssl CLI in the server's directory; returns the CA path.
    fn make_certs(&self) -> PathBuf {
        let d = &self.dir.0;
        let ossl = |args: &[&str], what: &str| {
            run_ok(Command::new("openssl").args(args).current_dir(d), what);
        };
        ossl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=portcullis-test-ca",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
            ],
            "openssl: test CA",
        );
        ossl(
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
            "openssl: server key",
        );
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write server.ext");
        ossl(
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "server.ext",
                "-out",
                "server.crt",
            ],
            "openssl: server certificate",
        );
        run_ok(
            Command::new("chown")
                .args(["postgres:postgres", "server.key", "server.crt", "ca.crt"])
                .current_dir(d),
            "chown certificates",
        );
        run_ok(
            Command::new("chmod")
                .args(["600", "server.key"])
                .current_dir(d),
            "chmod server key",
        );
        d.join("ca.crt")
    }

    fn write_conf(&self, tls: bool) {
        let mut conf = format!(
            "\n# portcullis test server\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 120\nlog_connections = on\nlog_disconnections = on\nlog_line_prefix = '%m [%p] %u@%d '\n",
            self.socket_dir.display()
        );
        if tls {
            conf.push_str(&format!(
                "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
                self.dir.0.join("server.crt").display(),
                self.dir.0.join("server.key").display()
            ));
        }
        for l in &self.opts.extra_conf {
            conf.push_str(l);
            conf.push('\n');
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data_dir.join("postgresql.conf"))
            .expect("open postgresql.conf");
        f.write_all(conf.as_bytes())
            .expect("append to postgresql.conf");
        let host = if self.opts.hostssl_only {
            "hostssl"
        } else {
            "host"
        };
        let mut hba = String::from("# portcullis test server\nlocal all postgres trust\n");
        for (role, method) in ROLES {
            hba.push_str(&format!("{host} all {role} 127.0.0.1/32 {method}\n"));
        }
        std::fs::write(self.data_dir.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
    }

    fn start_server(&mut self) {
        // A port found free can be taken before the server binds it: retry.
        for attempt in 1..=5 {
            let port = candidate_port();
            let out = as_postgres(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&self.data_dir)
                .arg("-l")
                .arg(&self.log)
                .args(["-o", &format!("-p {port}"), "-w", "-t", "60", "start"])
                .stdin(Stdio::null())
                .output()
                .expect("run pg_ctl start");
            if out.status.success() {
                self.port = port;
                self.running = true;
                return;
            }
            if attempt == 5 {
                panic!(
                    "PostgreSQL did not start ({}): {}\nserver log:\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr),
                    self.log()
                );
            }
        }
    }

    fn seed(&self) {
        let mut sql = String::new();
        for (role, method) in ROLES {
            let enc = if method == "md5" {
                "md5"
            } else {
                "scram-sha-256"
            };
            sql.push_str(&format!(
                "SET password_encryption = '{enc}';\nCREATE ROLE {role} LOGIN PASSWORD '{}';\n",
                password(role)
            ));
        }
        sql.push_str("CREATE DATABASE app OWNER app;\n");
        self.superuser_sql_in("postgres", &sql);
        self.superuser_sql_in(
            "app",
            "SET ROLE app;
             CREATE TABLE public.accounts (id int PRIMARY KEY, owner text NOT NULL,
                 balance numeric(12,2) NOT NULL, ssn text, card text);
             INSERT INTO public.accounts VALUES
                 (1, 'alice', 1200.50, '123-45-6789', '4111111111111111'),
                 (2, 'bob', 310.00, '987-65-4321', '5500005555555559'),
                 (3, 'carol', 0.00, '555-12-3456', '340000000000009'),
                 (4, 'dave', 99.99, NULL, NULL),
                 (5, 'erin', 4500.00, '111-22-3333', '6011000000000004');
             CREATE TABLE public.orders (id serial PRIMARY KEY,
                 account_id int NOT NULL REFERENCES public.accounts(id),
                 item text NOT NULL, amount numeric(12,2) NOT NULL,
                 placed_at timestamptz NOT NULL DEFAULT now());
             INSERT INTO public.orders (account_id, item, amount) VALUES
                 (1, 'book', 12.00), (1, 'lamp', 40.00), (2, 'pen', 1.50), (5, 'desk', 300.00);
             CREATE SCHEMA reports;
             CREATE TABLE reports.daily (day date PRIMARY KEY, orders int NOT NULL, revenue numeric(12,2) NOT NULL);
             INSERT INTO reports.daily VALUES ('2026-01-01', 3, 53.50), ('2026-01-02', 1, 300.00);
             GRANT USAGE ON SCHEMA reports TO legacy, plain;
             GRANT SELECT ON ALL TABLES IN SCHEMA public, reports TO legacy, plain;",
        );
    }

    /// Runs SQL as the superuser over the unix socket (never redirected: the
    /// protected destination is the TCP address) in database `app`; returns
    /// psql's unaligned, tuples-only output. Panics on error.
    pub fn superuser_sql(&self, sql: &str) -> String {
        self.superuser_sql_in("app", sql)
    }

    fn superuser_sql_in(&self, db: &str, sql: &str) -> String {
        let mut child = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run psql as superuser");
        if let Some(mut i) = child.stdin.take() {
            i.write_all(sql.as_bytes()).expect("write SQL to psql");
        }
        let out = child.wait_with_output().expect("superuser psql");
        assert!(
            out.status.success(),
            "superuser SQL failed: {}\nSQL:\n{sql}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The server log (log_connections and log_disconnections are on).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// TCP connections the server accepted (`connection received: host=127.0.0.1`),
    /// cancel requests included; unix-socket sessions are not counted.
    pub fn tcp_connections_received(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("connection received: host=127.0.0.1 "))
            .count()
    }

    /// Sessions the server authorized for `role` (over TCP or the socket).
    pub fn sessions_authorized(&self, role: &str) -> usize {
        let needle = format!("connection authorized: user={role} ");
        self.log().lines().filter(|l| l.contains(&needle)).count()
    }

    /// `host=127.0.0.1 port=… user=… dbname=app` for `role`, without the password:
    /// the clients take it from `PGPASSWORD`, never from their command line
    /// (which the agent records with every connection).
    pub fn conninfo(&self, role: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={role} dbname=app connect_timeout=10",
            self.port
        )
    }

    fn client_env(&self, cmd: &mut Command, role: &str) {
        cmd.env("PGPASSWORD", password(role))
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGSERVICE")
            .env_remove("PGSSLMODE")
            .env_remove("PGHOST")
            .env_remove("PGPORT");
    }

    fn run_client(&self, mut cmd: Command, stdin: Option<&str>) -> CmdOut {
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        if let (Some(text), Some(mut i)) = (stdin, child.stdin.take()) {
            // A client that exits early closes its end: what it did is in its output.
            let _ = i.write_all(text.as_bytes());
        }
        let out = child.wait_with_output().expect("wait for client");
        CmdOut {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The psql command line (without running it) for `role` to database `app`
    /// over TCP, run inside cgroup `cg`: `-X -w -v ON_ERROR_STOP=1 -h 127.0.0.1 -p … -U role -d app`
    /// then `args`.
    pub fn psql_command(&self, cg: &Path, role: &str, args: &[&str]) -> Command {
        let psql = self.bin.join("psql");
        let port = self.port.to_string();
        let mut all = vec![
            psql.to_str().expect("utf-8 path"),
            "-X",
            "-w",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            role,
            "-d",
            "app",
        ];
        all.extend_from_slice(args);
        let mut cmd = in_cgroup(cg, &all);
        self.client_env(&mut cmd, role);
        cmd
    }

    /// psql as `app` inside cgroup `cg`, with `stdin` as its input.
    pub fn psql(&self, cg: &Path, args: &[&str], stdin: Option<&str>) -> CmdOut {
        self.psql_as(cg, "app", args, stdin)
    }

    pub fn psql_as(&self, cg: &Path, role: &str, args: &[&str], stdin: Option<&str>) -> CmdOut {
        self.run_client(self.psql_command(cg, role, args), stdin)
    }

    fn pgbench_command(&self, cg: &Path, args: &[&str]) -> Command {
        let pgbench = self.bin.join("pgbench");
        let port = self.port.to_string();
        let mut all = vec![
            pgbench.to_str().expect("utf-8 path"),
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "app",
        ];
        all.extend_from_slice(args);
        all.push("app");
        let mut cmd = in_cgroup(cg, &all);
        self.client_env(&mut cmd, "app");
        cmd
    }

    /// `pgbench -i -s <scale> --quiet` as `app` inside cgroup `cg`.
    pub fn pgbench_init(&self, cg: &Path, scale: u32) -> CmdOut {
        let s = scale.to_string();
        self.run_client(self.pgbench_command(cg, &["-i", "-s", &s, "--quiet"]), None)
    }

    /// pgbench as `app` against database `app` inside cgroup `cg`.
    pub fn pgbench(&self, cg: &Path, args: &[&str]) -> CmdOut {
        self.run_client(self.pgbench_command(cg, args), None)
    }

    /// `pc-pgclient` (tokio-postgres, binary `bin`) inside cgroup `cg`, connecting
    /// as `role` with [`conninfo`](Self::conninfo) and running `steps` (see
    /// tests/src/bin/pc-pgclient.rs); its JSON report.
    pub fn tokio_client(&self, cg: &Path, bin: &Path, role: &str, steps: &Value) -> Value {
        let script = steps.to_string();
        let conn = self.conninfo(role);
        let mut cmd = in_cgroup(cg, &[bin.to_str().expect("utf-8 path"), &conn, &script]);
        self.client_env(&mut cmd, role);
        json_report("pc-pgclient", &self.run_client(cmd, None))
    }

    /// `tests/clients/pg_client.py` (psycopg 3, from the venv) inside cgroup `cg`,
    /// as `role`, running `steps`; its JSON report.
    pub fn psycopg_client(&self, cg: &Path, role: &str, steps: &Value) -> Value {
        let py = venv_python();
        assert!(
            py.exists(),
            "the psycopg venv {} is missing: run `cargo xtask setup`",
            py.display()
        );
        let script = pg_client_py();
        let steps = steps.to_string();
        let conn = self.conninfo(role);
        let mut cmd = in_cgroup(
            cg,
            &[
                py.to_str().expect("utf-8 path"),
                script.to_str().expect("utf-8 path"),
                &conn,
                &steps,
            ],
        );
        self.client_env(&mut cmd, role);
        json_report("pg_client.py", &self.run_client(cmd, None))
    }

    /// Waits (up to 20 s) for a backend of `role` running a query containing
    /// `needle`; returns (backend pid, client port the server sees).
    pub fn wait_for_active_query(&self, role: &str, needle: &str) -> (u32, u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let row = self.superuser_sql(&format!(
                "SELECT pid, client_port FROM pg_stat_activity WHERE usename = '{role}' AND state = 'active' AND query LIKE '%{needle}%' AND pid <> pg_backend_pid() LIMIT 1"
            ));
            if let Some((pid, port)) = row.split_once('|')
                && let (Ok(pid), Ok(port)) = (pid.parse(), port.parse())
            {
                return (pid, port);
            }
            assert!(
                Instant::now() < deadline,
                "no active query of {role} containing `{needle}` within 20 s; server log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let stopped = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "immediate", "-w", "-t", "20", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !stopped
            && let Some(pid) = std::fs::read_to_string(self.data_dir.join("postmaster.pid"))
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn json_report(what: &str, out: &CmdOut) -> Value {
    let line = out
        .stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| {
            panic!(
                "{what} printed no JSON ({}); stdout:\n{}\nstderr:\n{}",
                out.status, out.stdout, out.stderr
            )
        });
    serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "{what} printed bad JSON ({e}): {line}\nstderr:\n{}",
            out.stderr
        )
    })
}

/// Pid of the process holding the local TCP socket 127.0.0.1:`port`, from
/// /proc/net/tcp and /proc/*/fd (for a connection that stays open while looked at).
pub fn socket_owner(port: u16) -> Option<u32> {
    let want = format!("0100007F:{port:04X}");
    let text = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode: u64 = text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1)? == &want)
            .then(|| f.get(9)?.parse().ok())
            .flatten()
    })?;
    let needle = format!("socket:[{inode}]");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let owns = std::fs::read_dir(e.path().join("fd"))
            .ok()?
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == needle));
        owns.then_some(pid)
    })
}

/// Parses pgbench's summary: (transactions processed, failed transactions).
pub fn pgbench_counts(stdout: &str) -> (u64, u64) {
    let num = |prefix: &str| {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.split('/').next())
            .and_then(|n| n.parse().ok())
    };
    (
        num("number of transactions actually processed:").unwrap_or(0),
        num("number of failed transactions:").unwrap_or(0),
    )
}

/// A certificate for the agent (SAN `127.0.0.1`, `localhost`) signed by the CA
/// of a server started with TLS (`ca_dir`: the directory of [`PgServer::ca`]),
/// made with the openssl CLI in `dir`: (certificate, key).
pub fn agent_cert(dir: &Path, ca_dir: &Path) -> (PathBuf, PathBuf) {
    let run = |args: &[&str]| openssl(dir, args);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        "/CN=portcullis-agent",
        "-keyout",
        "agent.key",
        "-out",
        "agent.csr",
    ]);
    std::fs::write(
        dir.join("agent.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write ext");
    let ca = ca_dir.join("ca.crt");
    let ca_key = ca_dir.join("ca.key");
    run(&[
        "x509",
        "-req",
        "-in",
        "agent.csr",
        "-CA",
        ca.to_str().expect("utf-8"),
        "-CAkey",
        ca_key.to_str().expect("utf-8"),
        "-CAcreateserial",
        "-CAserial",
        "agent.srl",
        "-days",
        "2",
        "-extfile",
        "agent.ext",
        "-out",
        "agent.crt",
    ]);
    std::fs::set_permissions(
        dir.join("agent.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod key");
    (dir.join("agent.crt"), dir.join("agent.key"))
}
