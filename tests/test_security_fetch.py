"""What a hostile server behind a fetched URL may make the engine spend (docs/security.md, *Remote
documents and fetched URLs*): a compressed reply nobody asked for is inflated a piece at a time, never
a read's worth at once. Real `swml run` processes fetching from a real HTTP server on loopback; their
peak memory comes from the kernel (wait4)."""

from __future__ import annotations

import contextlib
import gzip
import http.server
import io
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest


def gzipped(head: bytes, spaces: int = 0) -> bytes:
    """``head`` then ``spaces`` spaces, gzip-compressed (made a MiB at a time: the test holds no more)."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as f:
        f.write(head)
        for _ in range(spaces >> 20):
            f.write(b" " * (1 << 20))
    return out.getvalue()


#: What the engine fetches, by path, gzip-compressed on the wire.
REPLIES: dict[str, bytes] = {
    "/small.yaml": gzipped(b"version: 1.0.0\nsections:\n  main:\n    - set: {fetched: 'yes'}\n"),
    # 256 MiB of spaces: gzip takes them to 250 KiB, and httpx inflated a read of 64 KiB (64 MiB) at once.
    "/bomb.yaml": gzipped(b"version: 1.0.0\nsections:\n  main:\n    - set: {a: '", 256 << 20),
}

#: `swml run ARGS` in a process that says its peak resident memory last (VmHWM: its own, since its exec).
RUN = """
import sys
from pathlib import Path
from swml_engine.cli import main
try:
    main(sys.argv[1:])
finally:
    print(next(l for l in Path('/proc/self/status').read_text().splitlines() if l.startswith('VmHWM:')))
"""


@pytest.fixture(scope="module")
def gzip_server() -> Iterator[str]:

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # (execute posts the call's payload) compressed, whatever was asked for
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path.startswith("/receiver/"):  # a status callback's receiver: 200, then MiB after MiB
                self.answer_at_length(int(self.path.rsplit("/", 1)[1]))
                return
            body = REPLIES[self.path]
            self.send_response(200)
            self.send_header("Content-Type", "application/yaml")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def answer_at_length(self, mib: int) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(mib << 20))
            self.end_headers()
            with contextlib.suppress(OSError):  # (the engine may close once it has read enough)
                for _ in range(mib):
                    self.wfile.write(b" " * (1 << 20))

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def run_peak(steps: str, out: Path) -> tuple[list[dict[str, object]], int]:
    """`swml run` of a document of ``steps`` (YAML lines of its main section): its events, and its peak
    resident memory (KiB)."""
    doc = out.with_suffix(".yaml")
    doc.write_text(f"version: 1.0.0\nsections:\n  main:\n{steps}")
    said = subprocess.run(
        [sys.executable, "-c", RUN, "run", str(doc), "--out", str(out)], capture_output=True, text=True, timeout=120
    ).stdout
    peak = int(said.rsplit("VmHWM:", 1)[1].split()[0])
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    return events, peak


def run_executing(url: str, out: Path) -> tuple[list[dict[str, object]], int]:
    return run_peak(f"    - execute: {{dest: '{url}'}}\n", out)


def test_a_gzip_reply_is_inflated_a_piece_at_a_time(gzip_server: str, tmp_path: Path) -> None:
    """A 250 KiB gzip reply of 256 MiB took `swml run` from 115 MB to 378 MB before the 4 MiB document
    limit was counted (httpx inflates each read whole). Now it is refused as before, the process near
    its size for a small document — which is still fetched and run when compressed."""
    events, small = run_executing(f"{gzip_server}/small.yaml", tmp_path / "small")
    assert any(e["type"] == "vars.set" and e["name"] == "fetched" and e["value"] == "yes" for e in events)
    events, bomb = run_executing(f"{gzip_server}/bomb.yaml", tmp_path / "bomb")
    assert any(e["type"] == "error" and "is larger than 4 MiB" in str(e["message"]) for e in events)
    assert bomb - small < 24 * 1024, f"peak memory {small} KiB for a small document, {bomb} KiB for the bomb"


def test_a_status_callbacks_receiver_answering_at_length_is_not_read(gzip_server: str, tmp_path: Path) -> None:
    """Callbacks read their receiver's whole answer, which nothing uses: a receiver answering each with
    256 MiB took `swml run` to a gigabyte (1.5 GiB each: 4.7 GB). Now at most 64 KiB of it is read."""

    def recording_to(receiver: str) -> str:
        return f"    - answer\n    - record_call: {{status_url: '{gzip_server}/receiver/{receiver}'}}\n    - hangup\n"

    def delivered(events: list[dict[str, object]]) -> list[object]:
        return [e["state"] for e in events if e["type"] == "callback" and e["delivered"]]

    events, small = run_peak(recording_to("0"), tmp_path / "small")
    assert delivered(events) == ["recording", "finished"]
    events, huge = run_peak(recording_to("256"), tmp_path / "huge")
    assert delivered(events) == ["recording", "finished"]
    assert huge - small < 24 * 1024, f"peak memory {small} KiB with an empty answer, {huge} KiB with 256 MiB"
