"""Shared helpers: run a document on a simulated call, read audio back, a real local HTTP server."""

from __future__ import annotations

import contextlib
import http.server
import json
import subprocess
import threading
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from swml_engine.document.loader import load_text
from swml_engine.methods import REGISTRY
from swml_engine.session import SimResult, Simulation, simulate

RATE = 8000
#: Seconds a test waits for what should happen: polled, so a quick machine waits no longer; only a hang
#: reaches it, so a busy machine (another `make test` beside this one) does not fail a test.
PATIENCE = 30.0


@pytest.fixture(autouse=True)
def _port_leases() -> Iterator[None]:
    """The ports a test took with free_port() are leased to it until it ends (tests/interop/peers.py)."""
    yield
    from interop.peers import release_ports

    release_ports()


def wait_for(predicate: Callable[[], object], timeout: float = PATIENCE) -> bool:
    """Poll ``predicate`` until it is true (True), or until ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def run_doc(text: str, tmp_path: Path | None = None, **sim: Any) -> SimResult:
    """Load a YAML/JSON document and run it on a simulated call (virtual clock)."""
    out = tmp_path / "out" if tmp_path is not None else None
    return simulate(load_text(text, methods=REGISTRY), Simulation(out=out, **sim))


def vars_set(res: SimResult, name: str) -> list[Any]:
    return [e["value"] for e in res.events if e["type"] == "vars.set" and e["name"] == name]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a JSON-lines file another process may be appending to (the last line can
    be half written when read mid-write)."""
    complete = path.read_text().rpartition("\n")[0]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return data.reshape(-1, w.getnchannels()) if w.getnchannels() > 1 else data, w.getframerate()


def tone(freq: float, seconds: float, rate: int = RATE, level: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (np.sin(2 * np.pi * freq * t) * level * 32767).astype(np.int16)


def dtmf_tones(
    digits: str,
    rate: int = RATE,
    *,
    on: float = 0.08,
    off: float = 0.08,
    level: float = 0.3,
    twist_db: float = 0.0,
    snr_db: float | None = None,
    seed: int = 1,
) -> np.ndarray:
    """Digits as DTMF tone pairs (``level`` of full scale per tone, the high one ``twist_db`` louder),
    with ``off`` seconds of silence after each (and 50 ms before the first); white noise at ``snr_db``."""
    from swml_engine.media.inband_dtmf import HIGH, KEYS, LOW

    rng = np.random.default_rng(seed)
    parts = [np.zeros(int(0.05 * rate))]
    for d in digits:
        row = next(i for i, k in enumerate(KEYS) if d in k)
        col = KEYS[row].index(d)
        t = np.arange(int(on * rate)) / rate
        high = level * 10 ** (twist_db / 20)
        parts.append(level * np.sin(2 * np.pi * LOW[row] * t) + high * np.sin(2 * np.pi * HIGH[col] * t + 1.0))
        parts.append(np.zeros(int(off * rate)))
    x = np.concatenate(parts) * 32767
    if snr_db is not None:
        x = x + rng.normal(0, np.sqrt(np.mean(x[x != 0] ** 2) / 10 ** (snr_db / 10)), len(x))
    return np.clip(x, -32768, 32767).astype(np.int16)


def spectrum_peaks(samples: np.ndarray, rate: int, count: int = 2) -> list[float]:
    """The strongest frequencies (Hz) of a stretch of audio."""
    x = samples.astype(np.float64) * np.hanning(len(samples))
    mag = np.abs(np.fft.rfft(x))
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    order = np.argsort(mag)[::-1]
    peaks: list[float] = []
    for i in order:
        if all(abs(freqs[i] - p) > 20 for p in peaks):
            peaks.append(float(freqs[i]))
        if len(peaks) == count:
            break
    return peaks


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if len(samples) else 0.0


def window(samples: np.ndarray, rate: int, start: float, end: float) -> np.ndarray:
    return samples[round(start * rate) : round(end * rate)]


@dataclass
class HttpServer:
    """A real HTTP server on loopback: serves files, records every request, can fail on purpose."""

    base: str
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    #: path → list of status codes to answer, one per request, before the normal answer.
    failures: dict[str, list[int]] = field(default_factory=dict)
    #: path → seconds to wait before answering (a list: one per request, then none).
    delays: dict[str, float | list[float]] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture
def http_server() -> Iterator[HttpServer]:
    state = HttpServer(base="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _answer(self, body: bytes | None) -> None:
            import time

            path = self.path.split("?")[0]
            req: dict[str, Any] = {"method": self.command, "path": path, "headers": dict(self.headers)}
            if body is not None:
                req["body"] = body
                with contextlib.suppress(ValueError):
                    req["json"] = json.loads(body)
            state.requests.append(req)
            delay = state.delays.get(path)
            if isinstance(delay, list):
                delay = delay.pop(0) if delay else None
            if delay:
                time.sleep(delay)
            fails = state.failures.get(path)
            if fails:
                self.send_response(fails.pop(0))
                self.end_headers()
                return
            if path in state.files:
                data, ctype = state.files[path]
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            self.send_response(404 if self.command == "GET" else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            self._answer(None)

        def do_POST(self) -> None:
            n = int(self.headers.get("Content-Length", "0"))
            self._answer(self.rfile.read(n))

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def wav_bytes(samples: np.ndarray, rate: int = RATE) -> bytes:
    import io

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return buf.getvalue()


@contextlib.contextmanager
def small_filesystem(root: Path, size: str) -> Iterator[Path]:
    """A real filesystem of ``size`` (tmpfs, e.g. "96k") mounted at ``root``: writes there fail with
    ENOSPC once it fills, as on a full disk. Skips the test where mounting is not allowed."""
    root.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(root)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)
