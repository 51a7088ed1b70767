//! Load generator and server for `cargo xtask bench`.
//!
//! server ADDR               accept loop; the first byte of each connection picks the mode:
//!                           'S' sink (count to EOF, reply with the count), 'E' echo,
//!                           EOF (connect-only) closes.
//! acceptor ADDR             accept and close at once, no thread per connection (for connect)
//! connect N ADDR            N sequential connects; prints connect() latency percentiles
//! throughput MIB ADDR       sends MIB MiB through one connection; prints MB/s
//! pingpong N ADDR           N one-byte round trips on one connection; prints RTT percentiles
//!
//! Output is one JSON line.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn percentiles(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let at = |q: f64| {
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v.get(i).map(|d| d.as_secs_f64() * 1e6).unwrap_or(0.0)
    };
    (at(0.5), at(0.99))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| {
        eprintln!("bad address {s}: {e}");
        std::process::exit(2)
    })
}

/// A listener with a deep accept queue: a full queue drops SYNs, and the client then
/// waits a whole retransmit timeout, which is not what is being measured.
fn listen(a: &str) -> TcpListener {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, listen, setsockopt, socket,
        sockopt,
    };
    let sa = match addr(a) {
        SocketAddr::V4(v4) => SockaddrIn::from(v4),
        SocketAddr::V6(_) => {
            eprintln!("IPv4 only: {a}");
            std::process::exit(2)
        }
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .and_then(|fd| {
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
        bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &sa)?;
        listen(&fd, Backlog::new(4096).unwrap_or(Backlog::MAXCONN))?;
        Ok(fd)
    })
    .unwrap_or_else(|e| {
        eprintln!("listen {a}: {e}");
        std::process::exit(1)
    });
    TcpListener::from(fd)
}

fn acceptor(a: &str) {
    let l = listen(a);
    println!(
        "{{\"listening\":\"{}\"}}",
        l.local_addr().map(|x| x.to_string()).unwrap_or_default()
    );
    let _ = std::io::stdout().flush();
    for s in l.incoming() {
        drop(s);
    }
}

fn serve(a: &str) {
    let l = listen(a);
    println!(
        "{{\"listening\":\"{}\"}}",
        l.local_addr().map(|x| x.to_string()).unwrap_or_default()
    );
    let _ = std::io::stdout().flush();
    for s in l.incoming() {
        let Ok(mut s) = s else { continue };
        std::thread::spawn(move || {
            let _ = s.set_nodelay(true);
            let mut mode = [0u8; 1];
            if s.read(&mut mode).unwrap_or(0) == 0 {
                return;
            }
            let mut buf = vec![0u8; 256 * 1024];
            match mode[0] {
                b'S' => {
                    let mut total = 0u64;
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        total += n as u64;
                    }
                    let _ = s.write_all(&total.to_le_bytes());
                }
                b'E' => {
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
                _ => {}
            }
        });
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> &str {
        args.get(i).map(String::as_str).unwrap_or_else(|| {
            eprintln!("usage: pc-loadgen server ADDR | connect N ADDR | throughput MIB ADDR | pingpong N ADDR");
            std::process::exit(2)
        })
    };
    let num = |i: usize| -> u64 {
        arg(i).parse().unwrap_or_else(|_| {
            eprintln!("not a number: {}", arg(i));
            std::process::exit(2)
        })
    };
    match arg(0) {
        "server" => serve(arg(1)),
        "acceptor" => acceptor(arg(1)),
        "connect" => {
            let n = num(1);
            let a = addr(arg(2));
            let mut lat = Vec::with_capacity(n as usize);
            let mut errors = 0u64;
            for _ in 0..n {
                let t = Instant::now();
                match TcpStream::connect(a) {
                    Ok(s) => {
                        lat.push(t.elapsed());
                        // Close with RST: thousands of TIME_WAIT sockets would
                        // exhaust ephemeral ports and skew later samples.
                        let _ = nix::sys::socket::setsockopt(
                            &s,
                            nix::sys::socket::sockopt::Linger,
                            &nix::libc::linger {
                                l_onoff: 1,
                                l_linger: 0,
                            },
                        );
                        drop(s);
                    }
                    Err(_) => errors += 1,
                }
            }
            let (p50, p99) = percentiles(lat);
            println!("{{\"p50_us\":{p50:.2},\"p99_us\":{p99:.2},\"errors\":{errors}}}");
        }
        "throughput" => {
            let mib = num(1);
            let a = addr(arg(2));
            let t = Instant::now();
            let mut s = TcpStream::connect(a).unwrap_or_else(|e| {
                eprintln!("connect {a}: {e}");
                std::process::exit(1)
            });
            let block = vec![0x5au8; 256 * 1024];
            let total = mib * 1024 * 1024;
            let mut sent = 0u64;
            let ok = s.write_all(b"S").is_ok() && {
                let mut ok = true;
                while sent < total {
                    let n = block.len().min((total - sent) as usize);
                    if s.write_all(&block[..n]).is_err() {
                        ok = false;
                        break;
                    }
                    sent += n as u64;
                }
                ok
            };
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut cnt = [0u8; 8];
            let got = ok && s.read_exact(&mut cnt).is_ok();
            let secs = t.elapsed().as_secs_f64();
            let received = u64::from_le_bytes(cnt);
            println!(
                "{{\"mb_per_s\":{:.1},\"secs\":{secs:.3},\"intact\":{}}}",
                total as f64 / 1e6 / secs,
                got && received == total
            );
        }
        "pingpong" => {
            let n = num(1);
            let a = addr(arg(2));
            let mut s = TcpStream::connect(a).unwrap_or_else(|e| {
                eprintln!("connect {a}: {e}");
                std::process::exit(1)
            });
            let _ = s.set_nodelay(true);
            let _ = s.write_all(b"E");
            let mut lat = Vec::with_capacity(n as usize);
            let mut b = [0u8; 1];
            for _ in 0..n {
                let t = Instant::now();
                if s.write_all(b"x").is_err() || s.read_exact(&mut b).is_err() {
                    break;
                }
                lat.push(t.elapsed());
            }
            let done = lat.len();
            let (p50, p99) = percentiles(lat);
            println!("{{\"p50_us\":{p50:.2},\"p99_us\":{p99:.2},\"round_trips\":{done}}}");
        }
        other => {
            eprintln!("unknown mode {other}");
            std::process::exit(2)
        }
    }
}
