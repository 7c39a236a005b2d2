#!/usr/bin/env python3
"""A userspace impairment wire between two network namespaces (netem's job, without sch_netem).

The kernels these tests run on have no `sch_netem` qdisc (nor NFQUEUE), so delay, jitter, loss,
reordering and a rate cap are applied here: one TUN device in each namespace, and this process
moves every IP packet from one to the other after the impairment of its direction. TCP in both
namespaces sees a real lossy, slow link: retransmissions, RTT estimates and congestion control
behave as on a WAN.

    wire.py --ns-a A --ip-a 10.77.0.1 --ns-b B --ip-b 10.77.0.2 --delay-ms 25 \
            [--jitter-ms J] [--loss PCT] [--reorder PCT] [--rate-mbit R] [--limit N] [--mtu M]

A namespace is a name from `ip netns add` (/run/netns/NAME) or a path such as /proc/PID/ns/net.
Each side gets a point-to-point device `--dev` (default `wire0`) with its address and a /32 route
to the other side. `ready` is printed on stdout once both ends are up; the wire runs until
SIGTERM/SIGINT, then prints its counters on stderr. SIGUSR1 drops every packet from then on (a
dead link), SIGUSR2 restores the configured impairment.

Semantics (close to netem's):
* delay + jitter: each packet is held `delay ± jitter` (uniform), but never released before the
  previous packet of its direction, so jitter alone does not reorder (a real path rarely does).
* reorder PCT: that share of packets skips the delay and overtakes the queue (netem's `reorder`).
* loss PCT: independent random drops.
* rate R Mbit/s: each packet occupies the link for len*8/R; packets queue behind it (serialisation
  delay before propagation delay), and a packet is dropped when `--limit` packets are already
  queued in its direction (a router's tail drop; netem's default limit is 1000).

`wire.py --self-test` builds two namespaces, checks the round trip, the loss and the rate against
the configuration, and exits non-zero if the wire does not impair as told.
"""

import argparse
import ctypes
import fcntl
import heapq
import os
import random
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000

libc = ctypes.CDLL(None, use_errno=True)


def ns_path(ns):
    return ns if ns.startswith("/") else f"/run/netns/{ns}"


def setns(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def open_tun(ns, dev, ip, peer_ip, mtu):
    """Opens a TUN device inside namespace `ns` and gives it `ip` with a route to `peer_ip`.

    The fd stays bound to the device after we return to our own namespace; the device disappears
    when the fd is closed (it is not persistent), so a killed wire leaves nothing behind."""
    home = "/proc/self/ns/net"
    home_fd = os.open(home, os.O_RDONLY)
    try:
        setns(ns_path(ns))
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", dev.encode(), IFF_TUN | IFF_NO_PI))
    finally:
        if libc.setns(home_fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns(home)")
        os.close(home_fd)
    nsenter = ["nsenter", f"--net={ns_path(ns)}"]
    for cmd in (
        ["ip", "link", "set", "lo", "up"],
        ["ip", "addr", "add", ip, "peer", peer_ip, "dev", dev],
        ["ip", "link", "set", dev, "mtu", str(mtu), "up"],
    ):
        subprocess.run(nsenter + cmd, check=True)
    return fd


class Direction:
    """One way through the wire: a queue of packets ordered by release time."""

    def __init__(self, name, out_fd, cfg):
        self.name = name
        self.out_fd = out_fd
        self.cfg = cfg
        self.queue = []  # (release_time, seq, packet)
        self.seq = 0
        self.last_release = 0.0
        self.link_free_at = 0.0
        self.counts = dict(forwarded=0, lost=0, tail_dropped=0, reordered=0, write_dropped=0)

    def admit(self, packet, now, dead):
        cfg = self.cfg
        if dead or (cfg.loss and random.random() * 100 < cfg.loss):
            self.counts["lost"] += 1
            return
        if len(self.queue) >= cfg.limit:
            self.counts["tail_dropped"] += 1
            return
        start = now
        if cfg.rate_mbit:
            start = max(now, self.link_free_at) + len(packet) * 8 / (cfg.rate_mbit * 1e6)
            self.link_free_at = start
        if cfg.reorder and random.random() * 100 < cfg.reorder:
            release = start  # skips the propagation delay and overtakes what is queued
            self.counts["reordered"] += 1
        else:
            jitter = random.uniform(-cfg.jitter_ms, cfg.jitter_ms) if cfg.jitter_ms else 0.0
            release = max(start + max(cfg.delay_ms + jitter, 0.0) / 1000, self.last_release)
            self.last_release = release
        self.seq += 1
        heapq.heappush(self.queue, (release, self.seq, packet))

    def release_due(self, now):
        while self.queue and self.queue[0][0] <= now:
            _, _, packet = heapq.heappop(self.queue)
            try:
                os.write(self.out_fd, packet)
                self.counts["forwarded"] += 1
            except BlockingIOError:
                self.counts["write_dropped"] += 1

    def next_due(self):
        return self.queue[0][0] if self.queue else None


def run(cfg, ready_out=sys.stdout, stop=None):
    fd_a = open_tun(cfg.ns_a, cfg.dev, cfg.ip_a, cfg.ip_b, cfg.mtu)
    fd_b = open_tun(cfg.ns_b, cfg.dev, cfg.ip_b, cfg.ip_a, cfg.mtu)
    a_to_b = Direction("a->b", fd_b, cfg)
    b_to_a = Direction("b->a", fd_a, cfg)
    sel = selectors.DefaultSelector()
    sel.register(fd_a, selectors.EVENT_READ, a_to_b)
    sel.register(fd_b, selectors.EVENT_READ, b_to_a)
    state = {"dead": False, "stop": False}
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGUSR1, lambda *_: state.update(dead=True))
        signal.signal(signal.SIGUSR2, lambda *_: state.update(dead=False))
        signal.signal(signal.SIGTERM, lambda *_: state.update(stop=True))
        signal.signal(signal.SIGINT, lambda *_: state.update(stop=True))
    print("ready", file=ready_out, flush=True)
    while not state["stop"] and not (stop and stop.is_set()):
        now = time.monotonic()
        dues = [d for d in (a_to_b.next_due(), b_to_a.next_due()) if d is not None]
        timeout = max(min(dues) - now, 0) if dues else 0.2
        for key, _ in sel.select(min(timeout, 0.2)):
            direction = key.data
            # Drain what the kernel has queued for this device (bounded, so the other
            # direction and due releases are not starved).
            for _ in range(256):
                try:
                    packet = os.read(key.fd, 65536)
                except BlockingIOError:
                    break
                direction.admit(packet, time.monotonic(), state["dead"])
        now = time.monotonic()
        a_to_b.release_due(now)
        b_to_a.release_due(now)
    for d in (a_to_b, b_to_a):
        print(f"wire {d.name}: {d.counts}", file=sys.stderr, flush=True)
    os.close(fd_a)
    os.close(fd_b)
    return a_to_b.counts, b_to_a.counts


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ns-a")
    p.add_argument("--ip-a")
    p.add_argument("--ns-b")
    p.add_argument("--ip-b")
    p.add_argument("--dev", default="wire0")
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--jitter-ms", type=float, default=0.0)
    p.add_argument("--loss", type=float, default=0.0, help="percent")
    p.add_argument("--reorder", type=float, default=0.0, help="percent")
    p.add_argument("--rate-mbit", type=float, default=0.0, help="0 = unlimited")
    p.add_argument("--limit", type=int, default=1000, help="queued packets per direction")
    p.add_argument("--mtu", type=int, default=1500)
    p.add_argument("--seed", type=int, help="random seed (repeatable loss/jitter)")
    p.add_argument("--self-test", action="store_true")
    cfg = p.parse_args(argv)
    if not cfg.self_test and not all((cfg.ns_a, cfg.ip_a, cfg.ns_b, cfg.ip_b)):
        p.error("--ns-a, --ip-a, --ns-b and --ip-b are required")
    for name in ("loss", "reorder"):
        if not 0 <= getattr(cfg, name) <= 100:
            p.error(f"--{name} is a percentage (0-100)")
    if cfg.seed is not None:
        random.seed(cfg.seed)
    return cfg


def in_ns(ns, fn):
    """Runs fn() with this thread in namespace ns (sockets created there stay there)."""
    home_fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        setns(ns_path(ns))
        return fn()
    finally:
        libc.setns(home_fd, CLONE_NEWNET)
        os.close(home_fd)


def self_test():
    """Two namespaces, one wire; checks delay, loss and rate. Exits 1 on a mismatch."""
    tag = f"wst{os.getpid()}"
    ns_a, ns_b = f"{tag}a", f"{tag}b"
    for ns in (ns_a, ns_b):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    failures = []
    try:
        def check(name, **overrides):
            cfg = parse_args(["--ns-a", ns_a, "--ip-a", "10.77.0.1", "--ns-b", ns_b,
                              "--ip-b", "10.77.0.2", "--seed", "1"])
            for k, v in overrides.items():
                setattr(cfg, k, v)
            stop = threading.Event()
            ready = open(os.devnull, "w")
            t = threading.Thread(target=run, args=(cfg, ready, stop), daemon=True)
            t.start()
            time.sleep(0.5)
            try:
                return name, measure(ns_a, ns_b, cfg)
            finally:
                stop.set()
                t.join(5)

        results = [
            check("delay", delay_ms=20.0),
            check("loss", loss=100.0),
            check("rate", rate_mbit=40.0),
        ]
        for name, (rtt, connected, mbit) in results:
            print(f"self-test {name}: rtt={rtt} connected={connected} mbit={mbit}")
        (_, (rtt, ok, _)), (_, (_, lost_ok, _)), (_, (_, _, mbit)) = results
        if not ok or rtt is None or not 0.035 <= rtt <= 0.08:
            failures.append(f"delay 20 ms each way: TCP connect RTT {rtt}, expected 40-80 ms")
        if lost_ok:
            failures.append("loss 100%: a TCP connection was still established")
        if mbit is None or not 25 <= mbit <= 42:
            failures.append(f"rate 40 Mbit/s: measured {mbit} Mbit/s, expected 25-42")
    finally:
        for ns in (ns_a, ns_b):
            subprocess.run(["ip", "netns", "del", ns], check=False)
    for f in failures:
        print(f"self-test FAILED: {f}", file=sys.stderr)
    return 1 if failures else 0


def measure(ns_a, ns_b, cfg):
    """TCP connect RTT from a to b, whether a connection is possible, and bulk Mbit/s a->b."""
    server = in_ns(ns_b, lambda: socket.create_server(("10.77.0.2", 5201)))
    received = []

    def serve():
        server.settimeout(5)
        try:
            while True:
                conn, _ = server.accept()
                n = 0
                conn.settimeout(10)
                try:
                    while chunk := conn.recv(65536):
                        n += len(chunk)
                except OSError:
                    pass
                received.append(n)
                conn.close()
        except OSError:
            pass

    threading.Thread(target=serve, daemon=True).start()

    def connect(timeout):
        s = socket.socket()
        s.settimeout(timeout)
        return s

    rtt = None
    try:
        s = in_ns(ns_a, lambda: connect(2))
        t0 = time.monotonic()
        s.connect(("10.77.0.2", 5201))
        rtt = time.monotonic() - t0
        connected = True
        s.close()
    except OSError:
        connected = False
    mbit = None
    if connected and cfg.rate_mbit:
        s = in_ns(ns_a, lambda: connect(10))
        s.connect(("10.77.0.2", 5201))
        payload = b"x" * 65536
        before = len(received)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3:
            s.sendall(payload)
        # What the sender's buffers still hold drains at the link rate: time the whole transfer
        # to the receiver's end of stream, not the sender's last write.
        s.shutdown(socket.SHUT_WR)
        # The server records each connection when it ends; the RTT probe's empty connection may
        # be recorded late (a loaded machine), so wait for the one that carried the bulk.
        def bulk():
            return max(received[before:], default=0)
        while not bulk() and time.monotonic() - t0 < 30:
            time.sleep(0.01)
        s.close()
        if bulk():
            mbit = bulk() * 8 / (time.monotonic() - t0) / 1e6
    try:
        server.shutdown(socket.SHUT_RDWR)  # wakes the accept() in the server thread
    except OSError:
        pass
    server.close()
    return rtt, connected, round(mbit, 1) if mbit else mbit


def main():
    cfg = parse_args(sys.argv[1:])
    if cfg.self_test:
        sys.exit(self_test())
    run(cfg)


if __name__ == "__main__":
    main()
