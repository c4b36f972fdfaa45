"""Hostile and odd HTTP servers on loopback, for the fetch tests: each path answers as a test scripts it.

``with http_peer() as peer:`` starts a real threaded HTTP server (IPv4 or IPv6 loopback); ``peer.routes``
maps a path to an answer (:func:`file`, :func:`redirect`, :func:`drip`, :func:`endless`, :func:`swml`);
``peer.requests`` records every request (method, path, headers, body) and ``peer.stats`` what the
answers did (bytes sent, bodies cut short by the client).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Answer = Callable[["Handler", "Peer"], None]


@dataclass
class Peer:
    base: str
    routes: dict[str, Answer] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    #: counters the answers keep: "sent" bytes, "aborted" bodies (the client went away), "completed"
    stats: dict[str, int] = field(default_factory=lambda: {"sent": 0, "aborted": 0, "completed": 0})
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str, auth: str = "") -> str:
        scheme, _, rest = self.base.partition("://")
        return f"{scheme}://{auth + '@' if auth else ''}{rest}{path}"

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.stats[key] += n

    def hits(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == path]


class Handler(http.server.BaseHTTPRequestHandler):
    peer: Peer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _handle(self) -> None:
        n = int(self.headers.get("Content-Length", "0") or 0)
        body = self.rfile.read(n) if n else b""
        path = self.path.split("?")[0]
        self.peer.requests.append({"method": self.command, "path": path, "headers": dict(self.headers), "body": body})
        answer = self.peer.routes.get(path)
        if answer is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        try:
            answer(self, self.peer)
        except (BrokenPipeError, ConnectionResetError):
            self.peer.count("aborted")
            self.close_connection = True

    do_GET = _handle
    do_POST = _handle


@contextlib.contextmanager
def http_peer(host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> Iterator[Peer]:
    """A server on ``host``; HTTPS with ``tls`` (a server context, e.g. from :func:`self_signed`)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class Server(http.server.ThreadingHTTPServer):
        address_family = family
        daemon_threads = True

    peer = Peer(base="")
    handler = type("BoundHandler", (Handler,), {"peer": peer})
    server = Server((host, 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    shown = f"[{host}]" if ":" in host else host
    peer.base = f"{'https' if tls else 'http'}://{shown}:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield peer
    finally:
        server.shutdown()
        server.server_close()


def self_signed(directory: Path, host: str = "127.0.0.1") -> tuple[ssl.SSLContext, Path]:
    """A server TLS context for ``host`` with a fresh self-signed certificate, and the certificate's PEM
    file (what a client must be told to trust)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context, cert_file


# --- answers -----------------------------------------------------------------------------------------


def file(data: bytes, ctype: str = "application/octet-stream", headers: dict[str, str] | None = None) -> Answer:
    def answer(h: Handler, peer: Peer) -> None:
        h.send_response(200)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(data)
        peer.count("sent", len(data))
        peer.count("completed")

    return answer


def swml(doc: dict[str, Any] | str) -> Answer:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    ctype = "application/yaml" if isinstance(doc, str) else "application/json"
    return file(text.encode(), ctype)


def status(code: int) -> Answer:
    def answer(h: Handler, peer: Peer) -> None:
        h.send_response(code)
        h.send_header("Content-Length", "0")
        h.end_headers()

    return answer


def redirect(location: str, status: int = 307) -> Answer:
    def answer(h: Handler, peer: Peer) -> None:
        h.send_response(status)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()

    return answer


def drip(total: int, every: float, ctype: str = "audio/wav") -> Answer:
    """A body of ``total`` bytes, one byte every ``every`` seconds (the headers come at once)."""

    def answer(h: Handler, peer: Peer) -> None:
        h.send_response(200)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(total))
        h.end_headers()
        h.wfile.flush()
        for _ in range(total):
            h.wfile.write(b"\0")
            h.wfile.flush()
            peer.count("sent")
            time.sleep(every)
        peer.count("completed")

    return answer


def endless(limit: int, ctype: str = "application/yaml") -> Answer:
    """A chunked body with no end in sight (``limit`` bytes at most), as fast as the client reads."""
    chunk = b"#" * 65535 + b"\n"

    def answer(h: Handler, peer: Peer) -> None:
        h.send_response(200)
        h.send_header("Content-Type", ctype)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        sent = 0
        while sent < limit:
            h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
            peer.count("sent", len(chunk))
        h.wfile.write(b"0\r\n\r\n")
        peer.count("completed")

    return answer


def alias_bomb(levels: int = 12, fanout: int = 9) -> str:
    """A SWML document of ~600 bytes: twelve levels of nine YAML aliases under a ``set`` value, 9^12
    values once expanded."""
    lines = ["version: 1.0.0", "sections:", "  main:", "    - set:", "        v0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels + 1):
        lines.append(f"        v{i}: &a{i} [{', '.join([f'*a{i - 1}'] * fanout)}]")
    return "\n".join([*lines, "    - hangup", ""])


def hang(seconds: float = 120.0) -> Answer:
    """Read the request, then answer nothing for ``seconds`` (a receiver that accepts and stalls)."""

    def answer(h: Handler, peer: Peer) -> None:
        peer.count("completed")
        time.sleep(seconds)

    return answer
