#!/usr/bin/env python3
"""Record `examples/example.pcap`: real traffic made on this machine, captured as it crossed a link.

The script creates a network namespace with a veth pair (MTU 1500, so TCP segments look like
they do on a real Ethernet link), runs small servers inside the namespace (HTTP, HTTPS with a
self-signed certificate, a DNS-like UDP responder, an RTP-like UDP sink, NTP-like UDP), drives
clients against them from the host side over IPv4 and IPv6, and records every frame seen on the
host end of the veth with an AF_PACKET socket and kernel timestamps (nanoseconds).

Needs root (network namespaces, AF_PACKET), `ip` (iproute2), `ethtool` and `openssl`. Run:

    sudo python scripts/make_example_capture.py -o examples/example.pcap

Nothing in it is random except what the kernel chooses (ports, sequence numbers, timings), so
reruns give captures of the same shape, not the same bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

NETNS = "nm-example"
HOST_IF, PEER_IF = "nmex0", "nmex1"
HOST_V4, PEER_V4 = "10.77.0.1", "10.77.0.2"
HOST_V6, PEER_V6 = "fd77::1", "fd77::2"
PORTS = {"http": 8080, "https": 8443, "dns": 5353, "rtp": 40000, "ntp": 12300, "chat": 9443}

SERVER_CODE = r"""
import http.server, socketserver, ssl, socket, struct, sys, threading, time
certfile, keyfile = sys.argv[1], sys.argv[2]
P = dict(http=8080, https=8443, dns=5353, rtp=40000, ntp=12300, chat=9443)

class Page(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        last = self.path.strip("/").split("/")[-1]
        size = int(last) if last.isdigit() else 2048
        body = (b"<html><body>" + b"netmamba example page " * (size // 22 + 1))[:size]
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

class V6Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()

def serve_http(server):
    server.serve_forever()

servers = [http.server.ThreadingHTTPServer(("0.0.0.0", P["http"]), Page),
           V6Server(("::", P["http"]), Page)]
tls_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
tls_ctx.load_cert_chain(certfile, keyfile)
https = http.server.ThreadingHTTPServer(("0.0.0.0", P["https"]), Page)
https.socket = tls_ctx.wrap_socket(https.socket, server_side=True)
servers.append(https)
for s in servers:
    threading.Thread(target=serve_http, args=(s,), daemon=True).start()

def chat_server():
    ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", P["chat"])); ls.listen()
    while True:
        conn, _ = ls.accept()
        def talk(c):
            try:
                t = tls_ctx.wrap_socket(c, server_side=True)
                while True:
                    msg = t.recv(4096)
                    if not msg:
                        break
                    t.sendall(b"ack:" + msg[:64])
            except OSError:
                pass
        threading.Thread(target=talk, args=(conn,), daemon=True).start()
threading.Thread(target=chat_server, daemon=True).start()

def udp_loop(port, reply):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
    while True:
        data, addr = s.recvfrom(65535)
        out = reply(data)
        if out:
            s.sendto(out, addr)

def dns_reply(q):
    # Answer any A query with 10.77.0.2: header (id, flags, counts) + question + one answer.
    qid = q[:2]; question = q[12:]
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4) + socket.inet_aton("10.77.0.2")
    return qid + b"\x81\x80" + struct.pack("!HHHH", 1, 1, 0, 0) + question + answer

def ntp_reply(q):
    now = time.time() + 2208988800
    ts = struct.pack("!II", int(now), int((now % 1) * 2**32))
    return b"\x24\x02\x06\xe9" + b"\x00" * 12 + b"LOCL" + ts + q[40:48] + ts + ts

for port, fn in ((P["dns"], dns_reply), (P["ntp"], ntp_reply), (P["rtp"], lambda d: None)):
    threading.Thread(target=udp_loop, args=(port, fn), daemon=True).start()
print("ready", flush=True)
time.sleep(3600)
"""


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


@contextlib.contextmanager
def veth_namespace():
    sh("ip", "netns", "del", NETNS, check=False)
    sh("ip", "link", "del", HOST_IF, check=False)
    sh("ip", "netns", "add", NETNS)
    try:
        sh("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", PEER_IF)
        sh("ip", "link", "set", PEER_IF, "netns", NETNS)
        sh("ip", "addr", "add", f"{HOST_V4}/24", "dev", HOST_IF)
        sh("ip", "-6", "addr", "add", f"{HOST_V6}/64", "dev", HOST_IF, "nodad")
        sh("ip", "link", "set", HOST_IF, "mtu", "1500", "up")
        ns = ("ip", "netns", "exec", NETNS)
        sh(*ns, "ip", "addr", "add", f"{PEER_V4}/24", "dev", PEER_IF)
        sh(*ns, "ip", "-6", "addr", "add", f"{PEER_V6}/64", "dev", PEER_IF, "nodad")
        sh(*ns, "ip", "link", "set", PEER_IF, "mtu", "1500", "up")
        sh(*ns, "ip", "link", "set", "lo", "up")
        # No segmentation offloads: the capture must show wire-sized packets, not 64 KB blobs.
        for cmd in (("ethtool", "-K", HOST_IF), (*ns, "ethtool", "-K", PEER_IF)):
            sh(*cmd, "tso", "off", "gso", "off", "gro", "off", "tx", "off", "rx", "off")
        yield
    finally:
        sh("ip", "link", "del", HOST_IF, check=False)
        sh("ip", "netns", "del", NETNS, check=False)


class Recorder(threading.Thread):
    """AF_PACKET capture of one interface with kernel nanosecond timestamps."""

    SO_TIMESTAMPNS = 35

    def __init__(self, ifname: str) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        self.sock.setsockopt(socket.SOL_SOCKET, self.SO_TIMESTAMPNS, 1)
        self.sock.bind((ifname, 0))
        self.sock.settimeout(0.2)
        self.frames: list[tuple[int, bytes]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                data, anc, _, _ = self.sock.recvmsg(65535, 64)
            except TimeoutError:
                continue
            ts = time.time_ns()
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == self.SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", value[:16])
                    ts = sec * 1_000_000_000 + nsec
            self.frames.append((ts, data))


def write_pcap(path: Path, frames: list[tuple[int, bytes]]) -> None:
    """Classic pcap, little-endian, nanosecond timestamps, Ethernet."""
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1))
        for ts, data in sorted(frames, key=lambda f: f[0]):
            sec, nsec = divmod(ts, 1_000_000_000)
            out.write(struct.pack("<IIII", sec, nsec, len(data), len(data)))
            out.write(data)


def make_cert(folder: Path) -> tuple[str, str]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    sh(
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
        "-subj", "/CN=www.example.test", "-keyout", str(key), "-out", str(cert),
    )  # fmt: skip
    return str(cert), str(key)


def drive_clients() -> None:
    """The traffic of the example: web, TLS web, DNS, a VoIP-like stream, NTP, chat, bulk."""
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE

    def http_get(host: str, paths: list[str], sni: str | None = None) -> None:
        """Requests on one keep-alive connection; with `sni`, over TLS presenting that name."""
        if sni:
            conn = http.client.HTTPConnection(sni, PORTS["https"], timeout=5)
            raw = socket.create_connection((host, PORTS["https"]), timeout=5)
            conn.sock = insecure.wrap_socket(raw, server_hostname=sni)
        else:
            conn = http.client.HTTPConnection(host, PORTS["http"], timeout=5)
        for path in paths:
            conn.request("GET", path, headers={"User-Agent": "netmamba-example/1.0"})
            conn.getresponse().read()
            time.sleep(0.05)
        conn.close()

    def dns_query(name: str, qid: int) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
        s.sendto(struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + b"\x00\x01\x00\x01",
                 (PEER_V4, PORTS["dns"]))  # fmt: skip
        s.recvfrom(512)
        s.close()

    def rtp_stream(seconds: float, ssrc: int) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for seq in range(int(seconds / 0.02)):
            header = struct.pack("!BBHII", 0x80, 0x00, seq, seq * 160, ssrc)
            s.sendto(header + bytes(160), (PEER_V4, PORTS["rtp"]))
            time.sleep(0.02)
        s.close()

    def ntp_query() -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        s.sendto(b"\x23" + bytes(47), (PEER_V4, PORTS["ntp"]))
        s.recvfrom(512)
        s.close()

    def chat(messages: int) -> None:
        raw = socket.create_connection((PEER_V4, PORTS["chat"]), timeout=5)
        t = insecure.wrap_socket(raw, server_hostname="chat.example.test")
        for i in range(messages):
            t.sendall(f"message {i}: hello from the example capture".encode())
            t.recv(4096)
            time.sleep(0.15)
        t.close()

    jobs = [
        lambda: http_get(PEER_V4, ["/", "/index.html", "/1200", "/300"]),
        lambda: http_get(PEER_V4, ["/4000", "/800"], sni="www.example.test"),
        lambda: http_get(PEER_V6, ["/", "/2500"]),
        lambda: http_get(PEER_V4, ["/200000"], sni="files.example.test"),
        lambda: rtp_stream(2.0, 0x1234ABCD),
        lambda: chat(8),
    ]
    jobs += [lambda i=i: dns_query(f"host{i}.example.test", 0x4000 + i) for i in range(6)]
    jobs += [ntp_query, ntp_query]
    jobs += [lambda: http_get(PEER_V4, ["/640", "/64"], sni="api.example.test")] * 3
    threads = []
    for job in jobs:
        t = threading.Thread(target=job)
        t.start()
        threads.append(t)
        time.sleep(0.1)
    for t in threads:
        t.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=Path("examples/example.pcap"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("error: needs root (network namespace and AF_PACKET capture)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp, veth_namespace():
        cert, key = make_cert(Path(tmp))
        server_py = Path(tmp) / "server.py"
        server_py.write_text(SERVER_CODE)
        server = subprocess.Popen(
            ["ip", "netns", "exec", NETNS, sys.executable, str(server_py), cert, key],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            if server.stdout.readline().strip() != "ready":
                raise RuntimeError("example servers did not start")
            recorder = Recorder(HOST_IF)
            recorder.start()
            time.sleep(0.3)
            drive_clients()
            time.sleep(0.5)
            recorder.stop.set()
            recorder.join()
        finally:
            server.terminate()
            server.wait()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_pcap(args.output, recorder.frames)
    print(f"wrote {args.output}: {len(recorder.frames)} frames, {args.output.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
