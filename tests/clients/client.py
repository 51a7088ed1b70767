#!/usr/bin/env python3
"""Real client behaviours for the end-to-end tests: each mode makes real sockets
and prints one JSON line with what happened. Used from inside a test cgroup."""
import errno
import hashlib
import json
import os
import socket
import struct
import sys
import threading
import time


def out(**kw):
    print(json.dumps(kw), flush=True)


def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def echo(host, port, payload=b"ping", timeout=5.0):
    s = socket.socket(family_of(host), socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect((host, port))
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return data


def mode_echo(host, port):
    try:
        data = echo(host, int(port))
        out(ok=True, reply=data.decode(errors="replace"), pid=os.getpid())
    except OSError as e:
        out(ok=False, errno=e.errno, error=str(e), pid=os.getpid())


def mode_exit_fast(host, port):
    """Connect, send, and exit at once without waiting for anything."""
    s = socket.socket(family_of(host), socket.SOCK_STREAM)
    s.connect((host, int(port)))
    s.sendall(b"bye")
    out(ok=True, pid=os.getpid())
    os._exit(0)


def mode_tfo(host, port):
    s = socket.socket(family_of(host), socket.SOCK_STREAM)
    try:
        # Blocking: a socket with a timeout is non-blocking and gets EINPROGRESS.
        s.sendto(b"tfo", socket.MSG_FASTOPEN, (host, int(port)))
        s.settimeout(5)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            c = s.recv(65536)
            if not c:
                break
            data += c
        out(ok=True, reply=data.decode(errors="replace"), pid=os.getpid())
    except OSError as e:
        out(ok=False, errno=e.errno, error=str(e), pid=os.getpid())


def checksum(ip_header_or_pseudo):
    s = 0
    b = ip_header_or_pseudo
    if len(b) % 2:
        b += b"\0"
    for i in range(0, len(b), 2):
        s += (b[i] << 8) + b[i + 1]
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def mode_raw_syn(host, port):
    """Hand-made TCP SYN on a raw socket (bypasses connect())."""
    port = int(port)
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
        src = socket.inet_aton("127.0.0.1")
        dst = socket.inet_aton(host)
        tcp = struct.pack("!HHLLBBHHH", 40000, port, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
        pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
        csum = checksum(pseudo + tcp)
        tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
        sent = s.sendto(tcp, (host, 0))
        out(ok=True, sent=sent)
    except OSError as e:
        out(ok=False, errno=e.errno, error=str(e))


def mode_udp(host, port):
    try:
        s = socket.socket(family_of(host), socket.SOCK_DGRAM)
        n = s.sendto(b"udp", (host, int(port)))
        out(ok=True, sent=n)
    except OSError as e:
        out(ok=False, errno=e.errno, error=str(e))


def mode_udp_connect(host, port):
    try:
        s = socket.socket(family_of(host), socket.SOCK_DGRAM)
        s.connect((host, int(port)))
        out(ok=True)
    except OSError as e:
        out(ok=False, errno=e.errno, error=str(e))


def mode_preexisting(host, port, ready_file, go_file):
    """Connect now, wait until told, then send on the old socket."""
    s = socket.socket(family_of(host), socket.SOCK_STREAM)
    s.connect((host, int(port)))
    open(ready_file, "w").write("1")
    while not os.path.exists(go_file):
        time.sleep(0.05)
    s.settimeout(3)
    try:
        s.sendall(b"late data")
        s.shutdown(socket.SHUT_WR)
        data = s.recv(100)
        out(ok=True, reply=data.decode(errors="replace"))
    except OSError as e:
        out(ok=False, errno=e.errno, error=str(e))


def mode_bulk(host, port, megabytes):
    """Send N MiB (deterministic pseudo-random), read the server's sha256 back."""
    total = int(megabytes) * 1024 * 1024
    block = hashlib.sha256(b"seed").digest() * 2048  # 64 KiB
    h = hashlib.sha256()
    s = socket.socket(family_of(host), socket.SOCK_STREAM)
    s.settimeout(60)
    s.connect((host, int(port)))
    sent = 0
    while sent < total:
        chunk = block[: min(len(block), total - sent)]
        s.sendall(chunk)
        h.update(chunk)
        sent += len(chunk)
    s.shutdown(socket.SHUT_WR)
    reply = b""
    while True:
        c = s.recv(4096)
        if not c:
            break
        reply += c
    out(ok=reply.decode() == h.hexdigest(), sent=sent, local=h.hexdigest(), remote=reply.decode())


def mode_concurrent(host, port, n):
    n = int(n)
    results = [None] * n
    barrier = threading.Barrier(n)

    def one(i):
        try:
            s = socket.socket(family_of(host), socket.SOCK_STREAM)
            s.settimeout(20)
            s.connect((host, int(port)))
            barrier.wait(timeout=20)  # all n connections open at once
            msg = ("conn-%d" % i).encode()
            s.sendall(msg)
            s.shutdown(socket.SHUT_WR)
            data = b""
            while True:
                c = s.recv(4096)
                if not c:
                    break
                data += c
            results[i] = data == msg
        except Exception as e:  # noqa: BLE001
            results[i] = str(e)

    ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    good = sum(1 for r in results if r is True)
    errors = [r for r in results if r is not True][:5]
    out(ok=good == n, good=good, errors=errors)


def mode_loop(host, port, stop_file):
    """Connect repeatedly until stop_file exists; count outcomes."""
    ok = refused = other = 0
    while not os.path.exists(stop_file):
        try:
            data = echo(host, int(port), b"loop", timeout=1.0)
            if data == b"loop":
                ok += 1
            else:
                other += 1
        except ConnectionRefusedError:
            refused += 1
            time.sleep(0.01)
        except OSError:
            other += 1
            time.sleep(0.01)
    out(ok=True, good=ok, refused=refused, other=other)


def mode_fork_exit_fast(host, port):
    """A child forked without exec connects, sends, and exits at once."""
    pid = os.fork()
    if pid == 0:
        s = socket.socket(family_of(host), socket.SOCK_STREAM)
        s.connect((host, int(port)))
        s.sendall(b"forked")
        out(ok=True, pid=os.getpid(), parent=os.getppid())
        os._exit(0)
    os.waitpid(pid, 0)


def mode_setuid_echo(uid, host, port):
    os.setgid(int(uid))
    os.setuid(int(uid))
    mode_echo(host, port)


MODES = {
    "echo": mode_echo,
    "exit-fast": mode_exit_fast,
    "tfo": mode_tfo,
    "raw-syn": mode_raw_syn,
    "udp": mode_udp,
    "udp-connect": mode_udp_connect,
    "preexisting": mode_preexisting,
    "bulk": mode_bulk,
    "concurrent": mode_concurrent,
    "loop": mode_loop,
    "setuid-echo": mode_setuid_echo,
    "fork-exit-fast": mode_fork_exit_fast,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in MODES:
        sys.stderr.write("usage: client.py {%s} ARGS...\n" % "|".join(MODES))
        sys.exit(2)
    MODES[sys.argv[1]](*sys.argv[2:])
