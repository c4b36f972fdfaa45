"""What a play URL's fetch costs in CPU: the engine's fetch (one TLS context per process) against the
same fetch with a TLS context built for it, as every fetch did before.

    .venv/bin/python bench/fetch_cost.py [--fetches 200]

A real HTTPS server on loopback (a self-signed certificate, trusted through SSL_CERT_FILE: certifi's
authorities with it added, the store a fetch loads by default plus an operator's own) serves a 1 s WAV;
each fetch is a new connection, as a call's fetches are. CPU is this process's (both ends: the server
runs in a thread of it), per fetch; the plain HTTP fetch is the reference.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import certifi
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import tone, wav_bytes
from http_peers import file, http_peer, self_signed
from swml_engine.fetch import FetchControl, Redirects, http_fetch, no_cookies
from swml_engine.urls import parse_http_url

WAV = wav_bytes(tone(440, 1.0))


def cpu_per_call(fn: Callable[[], object], n: int) -> float:
    """CPU seconds of this process per call of ``fn`` (best of 3 runs of ``n``)."""
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, (time.process_time() - start) / n)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fetches", type=int, default=200, help="fetches per run (default 200)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        context, cert = self_signed(Path(tmp))
        bundle = Path(tmp) / "authorities.pem"  # certifi's, as by default, and ours
        bundle.write_bytes(Path(certifi.where()).read_bytes() + b"\n" + cert.read_bytes())
        os.environ["SSL_CERT_FILE"] = str(bundle)
        with http_peer() as plain, http_peer(tls=context) as tls:
            for peer in (plain, tls):
                peer.routes["/a.wav"] = file(WAV, "audio/wav")

            def engine(url: str) -> Callable[[], object]:
                target = parse_http_url(url)
                return lambda: http_fetch(target, FetchControl(10.0), limit=1 << 20, redirects=Redirects.ANY_ORIGIN)

            def context_each_time() -> object:
                with httpx.Client(cookies=no_cookies()) as client:  # (httpx builds a TLS context per client)
                    return client.get(tls.url("/a.wav")).content

            rows = [
                ("http:// (reference)", cpu_per_call(engine(plain.url("/a.wav")), args.fetches)),
                ("https://, the engine's fetch", cpu_per_call(engine(tls.url("/a.wav")), args.fetches)),
                ("https://, a TLS context per fetch", cpu_per_call(context_each_time, args.fetches)),
            ]
    reference = rows[0][1]
    print(f"{'fetch of a 1 s WAV (16 KB)':36} {'CPU per fetch':>14} {'vs reference':>13}")
    for name, seconds in rows:
        print(f"{name:36} {seconds * 1000:11.2f} ms {seconds / reference:12.1f}x")


if __name__ == "__main__":
    main()
