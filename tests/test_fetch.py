"""What a slow, hostile or nosy HTTP server can cost a call: deadlines, sizes, redirects, cookies, secrets.

Every server here is real (tests/http_peers.py, on loopback); calls are simulated (swml run's engine).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import read_wav, rms, run_doc, tone, wait_for, wav_bytes
from http_peers import drip, endless, file, http_peer, redirect, self_signed, status, swml
from swml_engine.document.loader import load_text
from swml_engine.errors import DocumentError
from swml_engine.fetch import CallFetches, FetchControl, FetchStopped
from swml_engine.methods import REGISTRY
from swml_engine.session import SimResult, Simulation, run_simulation
from swml_engine.urls import UrlError, parse_http_url, redact

WAV = wav_bytes(tone(1000, 0.5))


def errors(res: SimResult) -> list[str]:
    return [e["message"] for e in res.events if e["type"] == "error"]


def in_thread(fn: Any, timeout: float) -> Any:
    """Run ``fn`` in a thread and give its result, failing if it takes longer than ``timeout`` (a hang)."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["result"] = fn()
        except BaseException as e:
            out["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still running after {timeout} s"
    if "error" in out:
        raise out["error"]
    return out["result"]


# --- URLs ------------------------------------------------------------------------------------------


def test_urls_parse_strictly_and_never_show_their_password() -> None:
    v6 = parse_http_url("http://u:p@[::1]:3001/swml")
    assert (v6.url, v6.auth, v6.port) == ("http://[::1]:3001/swml", ("u", "p"), 3001)
    assert parse_http_url("https://u:p%40ss%23@host/cb").auth == ("u", "p@ss#")
    assert parse_http_url("https://host/a.wav#frag").url == "https://host/a.wav"
    for bad in (
        "https://user:p@ss:w/rd#x@host/cb",  # an SDK's unencoded password
        "https://user:p#ss@host/cb",
        "https://user:pa/ss@host/cb",
        "http://host:99999/x",
        "http://[::1/x",
        "http:///x",
        "ftp://host/x",
        "http://ho st/x",
    ):
        with pytest.raises(UrlError) as info:
            parse_http_url(bad)
        message = str(info.value)
        assert "ss:w" not in message and "p#ss" not in message and "pa/ss" not in message, message
    with pytest.raises(UrlError, match="percent-encode"):
        parse_http_url("https://user:p@ss:w/rd#x@host/cb")
    assert redact("https://user:secret@host/a.wav") == "https://***@host/a.wav"
    assert redact("https://user:p@ss:w/rd#x@host/cb") == "https://***@host/cb"


# --- time: one deadline per fetch, separate pools, a few per call, stopped at hangup ----------------------


def test_a_dripping_play_url_fails_at_its_deadline_and_the_script_goes_on(tmp_path: Path) -> None:
    with http_peer() as peer:
        peer.routes["/drip.wav"] = drip(total=10_000, every=0.5)  # 83 minutes for the whole file
        doc = f"sections: {{main: [{{play: '{peer.url('/drip.wav')}'}}, {{set: {{after: ok}}}}]}}"
        res = in_thread(lambda: run_doc(doc, tmp_path), timeout=90)
        assert res.vars["after"] == "ok"
        [message] = errors(res)
        assert "did not finish within 10 s" in message, message
        assert wait_for(lambda: peer.stats["aborted"] == 1)  # the download was cut, not left running
        assert peer.stats["completed"] == 0


def _call(doc: str, hangup_at: float | None, out: Path) -> Any:
    return run_simulation(load_text(doc, methods=REGISTRY), Simulation(hangup_at=hangup_at, out=out, realtime=True))


def test_calls_stuck_on_dripping_urls_neither_starve_other_calls_nor_outlive_their_hangup(tmp_path: Path) -> None:
    """Seven calls play a URL that sends a byte every 0.3 s (and whose deadline is far off); their
    callers hang up at 1.5 s. An eighth call on the same loop speaks with say: meanwhile."""
    with http_peer() as peer:
        peer.routes["/drip.wav"] = drip(total=100_000, every=0.3)
        stuck = f"sections: {{main: [answer, {{play: '{peer.url('/drip.wav')}'}}]}}"
        speaking = "sections: {main: [answer, {play: 'say:Other calls are still served.'}, hangup]}"

        async def calls() -> list[SimResult]:
            drips = [_call(stuck, 1.5, tmp_path / f"drip{i}") for i in range(7)]
            return await asyncio.wait_for(asyncio.gather(_call(speaking, 30.0, tmp_path / "say"), *drips), 120)

        results = in_thread(lambda: asyncio.run(calls()), timeout=150)
        said, drips = results[0], results[1:]
        assert [e["result"] for e in said.events if e["type"] == "play.end"] == ["finished"]
        heard, _ = read_wav(tmp_path / "say" / "heard.wav")
        assert rms(heard) > 300  # the words were heard
        for res in drips:
            ended = [e for e in res.events if e["type"] == "call.state" and e["state"] == "ended"]
            assert ended and ended[0]["reason"] == "remote_hangup"
            assert not errors(res)  # the play ended with the call, not with a failure
        # every download was stopped when its call ended, none ran to its end
        assert wait_for(lambda: peer.stats["aborted"] == 7), peer.stats
        assert peer.stats["completed"] == 0


def test_a_call_runs_at_most_two_fetches_at_once_and_its_end_stops_them() -> None:
    running: list[int] = []
    peak: list[int] = []
    release = threading.Event()
    lock = threading.Lock()

    def fetch(control: FetchControl) -> str:
        with lock:
            running.append(1)
            peak.append(len(running))
        try:
            while not release.is_set():
                control.check()  # raises once the call has ended
                time.sleep(0.01)
            return "body"
        finally:
            with lock:
                running.pop()

    async def until(predicate: Any) -> None:
        for _ in range(1500):  # 30 s at most: a hang, not a slow machine
            if predicate():
                return
            await asyncio.sleep(0.02)
        raise AssertionError("never happened")

    async def main() -> list[object]:
        fetches = CallFetches()
        release.set()
        assert await asyncio.gather(*(fetches.run(fetch, 30, f"u{i}") for i in range(2))) == ["body", "body"]
        release.clear()
        peak.clear()
        ended = asyncio.Event()
        fetches.bind(ended)
        pending = [asyncio.ensure_future(fetches.run(fetch, 30, f"v{i}")) for i in range(4)]
        await until(lambda: len(running) == 2)
        # a caller that gives up (a prefetch cancelled) stops its fetch; its slot goes to the next one
        pending[0].cancel()
        await until(lambda: len(peak) == 3)
        ended.set()  # the call ends: the others stop
        return await asyncio.gather(*pending[1:], return_exceptions=True)

    done = in_thread(lambda: asyncio.run(main()), timeout=60)
    assert max(peak) == 2
    assert all(isinstance(d, FetchStopped) for d in done), done
    assert wait_for(lambda: not running)  # the threads stopped too


# --- size ----------------------------------------------------------------------------------------------


def test_an_endless_document_stops_at_4_mib(tmp_path: Path) -> None:
    with http_peer() as peer:
        peer.routes["/doc"] = endless(limit=1 << 30)
        doc = f"sections: {{main: [{{execute: '{peer.url('/doc')}'}}, {{set: {{after: ok}}}}]}}"
        res = in_thread(lambda: run_doc(doc, tmp_path), timeout=120)
        [message] = errors(res)
        assert "larger than 4 MiB" in message and res.vars["after"] == "ok"
        assert peer.stats["sent"] < 64 << 20, peer.stats  # the download stopped near the limit


# --- redirects -----------------------------------------------------------------------------------------


def test_execute_does_not_post_the_call_to_another_origin(tmp_path: Path) -> None:
    with http_peer() as a, http_peer() as b:
        b.routes["/doc"] = swml({"sections": {"main": [{"set": {"from_b": "yes"}}]}})
        a.routes["/doc"] = redirect(b.url("/doc"), 307)
        a.routes["/moved"] = redirect("/doc2", 308)
        a.routes["/doc2"] = swml({"sections": {"main": [{"set": {"from_a": "yes"}}]}})
        doc = (
            f"sections: {{main: [{{execute: '{a.url('/doc')}'}}, {{execute: '{a.url('/moved')}'}}, "
            "{set: {after: ok}}]}"
        )
        res = run_doc(doc, tmp_path, envs={"API_KEY": "k-123"})
        assert b.requests == []  # nothing reached the other origin, envs least of all
        [message] = errors(res)
        assert "redirected to another origin" in message and b.url("/doc") in message
        assert res.vars.get("from_a") == "yes" and res.vars["after"] == "ok"  # same origin: followed
        [moved] = a.hits("/doc2")
        assert moved["method"] == "POST" and json.loads(moved["body"])["envs"] == {"API_KEY": "k-123"}


def test_audio_redirects_keep_credentials_on_their_own_origin(tmp_path: Path) -> None:
    with http_peer() as a, http_peer() as cdn:
        cdn.routes["/a.wav"] = file(WAV, "audio/wav")
        a.routes["/a.wav"] = redirect(cdn.url("/a.wav"), 302)
        res = run_doc(f"sections: {{main: [{{play: '{a.url('/a.wav', 'user:pw')}'}}]}}", tmp_path)
        assert [e["result"] for e in res.events if e["type"] == "play.end"] == ["finished"]
        [first] = a.hits("/a.wav")
        assert first["headers"]["Authorization"] == "Basic " + base64.b64encode(b"user:pw").decode()
        [second] = cdn.hits("/a.wav")
        assert "Authorization" not in second["headers"]


# --- secrets: redacted everywhere, cookies kept by nobody ------------------------------------------------


def test_credentials_in_urls_never_reach_events_or_messages(tmp_path: Path) -> None:
    with http_peer() as peer:
        peer.routes["/cb"] = status(204)
        auth = "user:secretpw"
        doc = (
            "sections: {main: ["
            f"{{play: {{url: '{peer.url('/missing.wav', auth)}', status_url: '{peer.url('/cb', auth)}'}}}}, "
            f"{{play: {{urls: ['silence:0.1', '{peer.url('/gone.wav', auth)}']}}}}, "
            f"{{execute: '{peer.url('/nodoc', auth)}'}}"
            "]}"
        )
        res = run_doc(doc, tmp_path)
        assert len(errors(res)) == 3 and all("***@" in m for m in errors(res)), errors(res)
        assert [e["status"] for e in res.events if e["type"] == "callback"] == [204, 204]
        assert "secretpw" not in json.dumps(res.events)
        assert "secretpw" not in (tmp_path / "out" / "events.jsonl").read_text()
        assert peer.hits("/cb")[0]["headers"]["Authorization"].startswith("Basic ")  # (sent, as auth)
    with pytest.raises(DocumentError) as info:  # and validation does not print it either
        load_text("sections: {main: [{play: 'https://user:secretpw@[::1/a.wav'}]}", methods=REGISTRY)
    assert "secretpw" not in str(info.value) and "***@" in str(info.value)


def test_no_cookie_set_by_one_call_reaches_another(tmp_path: Path) -> None:
    def setting_cookie(h: Any, peer: Any) -> None:
        body = WAV if h.path.startswith("/a.wav") else b""
        h.send_response(200)
        h.send_header("Set-Cookie", "session=call-one; Path=/")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    with http_peer() as peer:
        peer.routes["/cb"] = setting_cookie
        peer.routes["/a.wav"] = setting_cookie
        doc = f"sections: {{main: [{{play: {{url: '{peer.url('/a.wav')}', status_url: '{peer.url('/cb')}'}}}}]}}"
        for i in range(2):  # two calls of one process, one after the other
            run_doc(doc, tmp_path / str(i))
        assert len(peer.hits("/cb")) == 4 and len(peer.hits("/a.wav")) == 2
        assert not [r for r in peer.requests if "Cookie" in r["headers"]], peer.requests


def test_heard_audio_of_a_redirected_play_is_the_file(tmp_path: Path) -> None:
    # (guards the manual redirect handling: the body after a 301 is the target's, decoded as audio)
    with http_peer() as a:
        a.routes["/old.wav"] = redirect("/new.wav", 301)
        a.routes["/new.wav"] = file(WAV, "audio/wav")
        run_doc(f"sections: {{main: [{{play: '{a.url('/old.wav')}'}}]}}", tmp_path)
        heard, rate = read_wav(tmp_path / "out" / "heard.wav")
        assert rms(heard) > 5000 and abs(len(heard) / rate - 0.5) < 0.03


def test_https_servers_are_verified_and_ssl_cert_file_adds_a_private_authority(tmp_path: Path) -> None:
    """A play URL on a server whose certificate no known authority signed fails, naming the reason; with
    ``SSL_CERT_FILE`` naming that certificate (an operator's private authority) it plays. `swml run`
    processes, since the certificate store is read once per process."""
    context, cert = self_signed(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}

    def play(url: str, extra: dict[str, str], out: Path) -> tuple[str, float]:
        script = tmp_path / "play.yaml"
        script.write_text(f"sections: {{main: [{{play: '{url}'}}]}}")
        cmd = [sys.executable, "-m", "swml_engine", "run", str(script), "--out", str(out)]
        done = subprocess.run(cmd, env={**env, **extra}, capture_output=True, text=True, timeout=120)
        heard, _ = read_wav(out / "heard.wav")
        return done.stdout + done.stderr, rms(heard)

    with http_peer(tls=context) as peer:
        peer.routes["/tone.wav"] = file(WAV, "audio/wav")
        told, heard = play(peer.url("/tone.wav"), {}, tmp_path / "untrusted")
        assert "errors: 1" in told and "certificate verify failed" in told, told
        assert heard < 10
        told, heard = play(peer.url("/tone.wav"), {"SSL_CERT_FILE": str(cert)}, tmp_path / "trusted")
        assert "errors: 0" in told, told
        assert heard > 5000


def test_an_egress_proxy_in_the_environment_carries_the_fetches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A machine whose only way out is its operator's proxy: ``HTTP_PROXY``/``HTTPS_PROXY`` (and
    ``NO_PROXY``) are honoured as curl does. A play URL on a host this machine cannot resolve is asked of
    the proxy — which here is the one that answers it — and plays."""
    with http_peer() as proxy:
        proxy.routes["http://audio.invalid/tone.wav"] = file(WAV, "audio/wav")  # (a proxy is asked the whole URL)
        monkeypatch.setenv("HTTP_PROXY", proxy.url(""))
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        res = run_doc("sections: {main: [{play: 'http://audio.invalid/tone.wav'}]}", tmp_path)
        assert [e for e in res.events if e["type"] == "error"] == []
        heard, rate = read_wav(tmp_path / "out" / "heard.wav")
        assert rms(heard) > 5000 and abs(len(heard) / rate - 0.5) < 0.03
        # NO_PROXY names the hosts reached directly: that one is not reachable so, and fails as it is
        monkeypatch.setenv("NO_PROXY", "audio.invalid")
        res = run_doc("sections: {main: [{play: 'http://audio.invalid/tone.wav'}]}", tmp_path / "direct")
        [error] = [e["message"] for e in res.events if e["type"] == "error"]
        assert "cannot fetch" in error, error
