//! Collectors for the export tests: a real rsyslog started with its own
//! configuration in a temporary directory (imudp, imtcp, imuxsock and imptcp on
//! private ports and sockets, each into its own file through omfile), and a
//! small HTTP collector that stores every POSTed body.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{TempDir, ci, free_port, openssl};

/// The rsyslogd binary, if installed (`cargo xtask setup` installs it).
pub fn rsyslogd() -> Option<PathBuf> {
    ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Returns false (after printing why) when rsyslog is missing; panics under CI.
pub fn rsyslog_available(test: &str) -> bool {
    if rsyslogd().is_some() {
        return true;
    }
    let why = "rsyslogd not installed (run `cargo xtask setup`, or apt-get install rsyslog)";
    if ci() {
        panic!("{test}: cannot run under CI=true: {why}");
    }
    eprintln!("SKIP {test}: {why}");
    false
}

/// What rsyslog received on one input: one JSON object per message with the
/// parsed RFC 5424 fields (`pri`, `hostname`, `app`, `procid`, `msgid`, `sd`,
/// `msg`).
pub const INPUTS: [&str; 4] = ["udp", "tcp", "unix-dgram", "unix-stream"];

pub struct Rsyslog {
    pub dir: TempDir,
    pub udp_port: u16,
    pub tcp_port: u16,
    child: Option<Child>,
}

impl Rsyslog {
    pub fn start() -> Self {
        let dir = TempDir::new("portcullis-test-rsyslog");
        let (udp_port, tcp_port) = (free_port(), free_port());
        let d = dir.0.display().to_string();
        std::fs::create_dir_all(dir.0.join("work")).expect("rsyslog work dir");
        let rulesets: String = INPUTS
            .iter()
            .map(|i| {
                format!(
                    "ruleset(name=\"{i}\") {{ action(type=\"omfile\" file=\"{d}/{i}.log\" template=\"rec\") }}\n"
                )
            })
            .collect();
        let conf = format!(
            r#"global(workDirectory="{d}/work" maxMessageSize="256k")
module(load="imudp")
module(load="imtcp")
module(load="imptcp")
module(load="imuxsock" SysSock.Use="off")
template(name="rec" type="list" option.jsonf="on") {{
  property(outname="pri" name="pri" format="jsonf")
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app" name="app-name" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="sd" name="structured-data" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
}}
{rulesets}
input(type="imudp" address="127.0.0.1" port="{udp_port}" ruleset="udp")
input(type="imtcp" address="127.0.0.1" port="{tcp_port}" ruleset="tcp")
input(type="imuxsock" Socket="{d}/dgram.sock" UseSpecialParser="off" ParseHostname="on" Ruleset="unix-dgram")
input(type="imptcp" path="{d}/stream.sock" unlink="on" ruleset="unix-stream")
"#
        );
        std::fs::write(dir.0.join("rsyslog.conf"), conf).expect("write rsyslog.conf");
        let mut r = Self {
            dir,
            udp_port,
            tcp_port,
            child: None,
        };
        r.spawn();
        r
    }

    pub fn dgram_socket(&self) -> PathBuf {
        self.dir.0.join("dgram.sock")
    }

    pub fn stream_socket(&self) -> PathBuf {
        self.dir.0.join("stream.sock")
    }

    /// Starts rsyslogd in the foreground and waits until its inputs listen.
    pub fn spawn(&mut self) {
        let bin = rsyslogd().expect("rsyslogd installed");
        let _ = std::fs::remove_file(self.dir.0.join("rsyslogd.pid"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.0.join("rsyslogd.stderr"))
            .expect("rsyslog log file");
        let child = Command::new(bin)
            .arg("-n")
            .arg("-f")
            .arg(self.dir.0.join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.0.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn rsyslogd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = TcpStream::connect(("127.0.0.1", self.tcp_port)).is_ok()
                && self.dgram_socket().exists()
                && self.stream_socket().exists();
            if up {
                return;
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "rsyslogd exited ({st}) at start; stderr:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "rsyslogd inputs not listening after 20 s; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("rsyslogd.stderr")).unwrap_or_default()
    }

    /// SIGTERM, then waits for it to exit (the collector goes away).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The messages rsyslog wrote for one input, parsed.
    pub fn received(&self, input: &str) -> Vec<Value> {
        let text =
            std::fs::read_to_string(self.dir.0.join(format!("{input}.log"))).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("rsyslog {input}.log line is not JSON ({e}): {l}"))
            })
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An HTTP/1.1 collector on loopback storing every POSTed body (with its
/// Authorization header) and answering 200. `stop` closes it, connections
/// included; `start_again` listens on the same port.
/// Bodies received, each with its Authorization header.
pub type Bodies = Arc<Mutex<Vec<(Option<String>, String)>>>;

pub struct HttpCollector {
    pub port: u16,
    pub bodies: Bodies,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpCollector {
    pub fn start() -> Self {
        let mut c = Self {
            port: free_port(),
            bodies: Arc::default(),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        };
        c.start_again();
        c
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/ingest", self.port)
    }

    pub fn start_again(&mut self) {
        self.stop = Arc::new(AtomicBool::new(false));
        let l = TcpListener::bind(("127.0.0.1", self.port))
            .unwrap_or_else(|e| panic!("bind HTTP collector on {}: {e}", self.port));
        l.set_nonblocking(true).expect("nonblocking listener");
        let (stop, bodies) = (self.stop.clone(), self.bodies.clone());
        self.thread = Some(std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        let (stop, bodies) = (stop.clone(), bodies.clone());
                        conns.push(std::thread::spawn(move || serve(s, &stop, &bodies)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            drop(l);
            for c in conns {
                let _ = c.join();
            }
        }));
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Every record received, in arrival order (each body is a JSON array).
    pub fn records(&self) -> Vec<Value> {
        let bodies = self.bodies.lock().map(|b| b.clone()).unwrap_or_default();
        bodies
            .iter()
            .flat_map(|(_, b)| match serde_json::from_str::<Value>(b) {
                Ok(Value::Array(a)) => a,
                other => panic!("HTTP body is not a JSON array: {other:?}: {b}"),
            })
            .collect()
    }

    pub fn auth_headers(&self) -> Vec<Option<String>> {
        let bodies = self.bodies.lock().map(|b| b.clone()).unwrap_or_default();
        bodies.into_iter().map(|(a, _)| a).collect()
    }
}

impl Drop for HttpCollector {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One keep-alive connection: requests until EOF or stop.
fn serve(s: TcpStream, stop: &AtomicBool, bodies: &Mutex<Vec<(Option<String>, String)>>) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let mut w = match s.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut r = BufReader::new(s);
    loop {
        // Request line and headers.
        let mut auth = None;
        let mut len = 0usize;
        let mut started = false;
        let mut line = String::new();
        loop {
            match r.read_line(&mut line) {
                Ok(0) => return,
                Ok(_) if !line.ends_with('\n') => continue,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    continue; // a partial line stays in `line`
                }
                Err(_) => return,
            }
            let t = std::mem::take(&mut line);
            let t = t.trim_end();
            if !started {
                started = !t.is_empty();
                continue;
            }
            if t.is_empty() {
                break;
            }
            if let Some((k, v)) = t.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                } else if k.eq_ignore_ascii_case("authorization") {
                    auth = Some(v.trim().to_string());
                }
            }
        }
        let mut body = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match r.read(&mut body[got..]) {
                Ok(0) => return,
                Ok(n) => got += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
        if stop.load(Ordering::Relaxed) {
            return; // closed before answering: the batch is not acknowledged
        }
        if let Ok(mut b) = bodies.lock() {
            b.push((auth, String::from_utf8_lossy(&body).into_owned()));
        }
        if w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}

/// The records of an audit directory, every file in chain order, parsed.
pub fn log_records(dir: &Path) -> Vec<Value> {
    crate::audit_lines(dir)
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A private CA and a server certificate for 127.0.0.1 signed by it, made
/// with openssl(1) in `dir`: (ca.pem, server.pem, server.key).
pub fn private_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| openssl(dir, args);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("write ext");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=portcullis test CA",
        "-days",
        "2",
    ]);
    run(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// `tests/clients/https_collector.py`: an HTTPS collector (Python's ssl and
/// http.server) writing each POSTed body as one line of `out`.
pub struct HttpsCollector {
    pub port: u16,
    pub out: PathBuf,
    child: Child,
}

impl HttpsCollector {
    pub fn start(cert: &Path, key: &Path, out: &Path) -> Self {
        let port = free_port();
        let script = crate::repo_root()
            .join("tests")
            .join("clients")
            .join("https_collector.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .args([cert, key, out])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn https_collector.py");
        let stdout = child.stdout.take().expect("collector stdout");
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        assert!(
            line.contains("ready"),
            "https_collector.py did not start: {line}"
        );
        Self {
            port,
            out: out.to_owned(),
            child,
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/ingest", self.port)
    }

    pub fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .flat_map(|l| match serde_json::from_str::<Value>(l) {
                Ok(Value::Array(a)) => a,
                other => panic!("HTTPS body is not a JSON array: {other:?}"),
            })
            .collect()
    }
}

impl Drop for HttpsCollector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
