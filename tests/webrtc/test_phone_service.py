"""Browser calls through a real ``swml serve``: the /api/phone WebSocket (service/phone.py) signals a call
whose media an aiortc peer in the test carries, as a browser would (see peer.py)."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import HttpServer, read_wav, spectrum_peaks, tone, wait_for, wav_bytes
from interop.peers import Engine, free_port
from swml_engine.service.phone import NORMAL, POLICY, TRY_LATER

from .peer import MIC_HZ, Browser, wait_until
from .websocket import Closed, PhoneSocket, Refused

TOKEN = "phone-test-token-0123456789abcdef"
PROMPT_HZ = 1000.0
BEARER = {"Authorization": f"Bearer {TOKEN}"}

#: The script: the prompt, then a key decides how the call ends (the end reason tells the page).
SCRIPT = """
version: 1.0.0
sections:
  main:
    - answer
    - record_call: {{stereo: true, format: wav}}
    - prompt: {{play: '{prompt}', max_digits: 1, digit_timeout: 10, initial_timeout: 10}}
    - switch:
        variable: prompt_value
        case:
          '5': [{{hangup: {{reason: busy}}}}]
        default: [{{hangup: {{}}}}]
"""


def serve(engine: Callable[..., Engine], http_server: HttpServer, *extra: str) -> tuple[Engine, int]:
    http_server.files["/prompt.wav"] = (wav_bytes(tone(PROMPT_HZ, 1.5, 8000, level=0.4), 8000), "audio/wav")
    http = free_port()
    script = SCRIPT.format(prompt=http_server.url("/prompt.wav"))
    return engine(script, "--http", f"127.0.0.1:{http}", "--api-token", TOKEN, *extra), http


def api(http: int, path: str) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{http}{path}", headers=BEARER)
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def heard_seconds(browser: Browser) -> float:
    return sum(len(h) for h in browser.heard) / browser.heard_rate if browser.heard else 0.0


async def follow(
    sock: PhoneSocket, browser: Browser, on_answer: Callable[[], Awaitable[None]] | None = None
) -> tuple[list[dict[str, Any]], Closed]:
    """Every message until the service closes the WebSocket, each passed to the browser (the answer to its
    peer connection); ``on_answer`` once the answer came."""
    messages: list[dict[str, Any]] = []
    while not isinstance(got := await sock.receive(), Closed):
        messages.append(got)
        browser.signal(got)
        if got["type"] == "answer" and on_answer is not None:
            await on_answer()
    await browser.pc.close()
    return messages, got


async def call(http: int, browser: Browser, *, press: str | None = None) -> tuple[list[dict[str, Any]], Closed]:
    """A browser's call: the offer, the answer applied, ``press`` once a second of the prompt is heard;
    every message until the service closes the WebSocket."""
    sock = await PhoneSocket.open(http, BEARER)
    await sock.send({"type": "offer", "sdp": await browser.offer()})

    async def pressed() -> None:
        if press is not None:
            await wait_until(lambda: heard_seconds(browser) > 1.0, "the browser hears a second of the prompt")
            await sock.send({"type": "dtmf", "digits": press})

    return await follow(sock, browser, pressed)


def test_a_browser_call_runs_the_script_and_is_recorded_like_any_call(
    engine: Callable[..., Engine], http_server: HttpServer, tmp_path: Path
) -> None:
    eng, http = serve(engine, http_server)
    browser = Browser()
    messages, closed = asyncio.run(call(http, browser, press="5"))
    kinds = [m["type"] for m in messages]
    assert kinds == ["ringing", "answer", "ended"], messages
    assert messages[1]["early"] is False
    assert messages[2]["reason"] == "busy"  # the key reached the script's prompt
    assert closed.code == NORMAL
    call_id = messages[0]["call_id"]
    # The browser heard the prompt.
    heard = np.concatenate(browser.heard)
    assert abs(spectrum_peaks(heard, browser.heard_rate, count=1)[0] - PROMPT_HZ) < 15
    # The recording: 16 kHz (Opus), the browser's microphone left, the prompt right; listed by the API.
    [meta] = eng.recordings(1)
    assert meta["call_id"] == call_id
    with urllib.request.urlopen(str(meta["url"]), timeout=10) as got:  # its signed URL, as a program fetches it
        (tmp_path / "got.wav").write_bytes(got.read())
    audio, rate = read_wav(tmp_path / "got.wav")
    assert rate == 16000 and audio.shape[1] == 2
    assert abs(spectrum_peaks(audio[:, 0], rate, count=1)[0] - MIC_HZ) < 15
    assert abs(spectrum_peaks(audio[:, 1], rate, count=1)[0] - PROMPT_HZ) < 15
    row = api(http, f"/api/calls/{call_id}")
    assert row["from"].startswith("webrtc:") and row["end_reason"] == "busy", row
    assert [r["recording_id"] for r in row["recordings"]] == [meta["recording_id"]]
    events = [json.loads(line) for line in (eng.data / "calls" / f"{call_id}.jsonl").read_text().splitlines()]
    assert events[0]["type"] == "webrtc.offer"
    assert any(e["type"] == "webrtc.answer" and e["codec"] == "opus" for e in events)
    # at --log-level info the call's lines are its start and end: not one of aioice's per candidate pair
    assert "aioice" not in eng.log(), eng.log()[-2000:]


def test_closing_the_socket_hangs_up_and_the_recording_is_finished(
    engine: Callable[..., Engine], http_server: HttpServer
) -> None:
    eng, http = serve(engine, http_server)

    async def hang_up_by_closing() -> str:
        browser = Browser()
        sock = await PhoneSocket.open(http, BEARER)
        await sock.send({"type": "offer", "sdp": await browser.offer()})
        call_id = ""
        while True:
            got = await sock.receive()
            assert not isinstance(got, Closed), got
            browser.signal(got)
            call_id = call_id or got.get("call_id", "")
            if got["type"] == "answer":
                break
        await wait_until(lambda: heard_seconds(browser) > 0.5, "the browser hears the prompt")
        await sock.close()  # the page is closed mid-prompt
        await browser.pc.close()
        return call_id

    call_id = asyncio.run(hang_up_by_closing())
    [meta] = eng.recordings(1)
    assert meta["call_id"] == call_id and meta["state"] == "finished"
    assert api(http, f"/api/calls/{call_id}")["end_reason"] == "remote_hangup"


#: First messages that break the protocol, and the start of what the page is told.
BROKEN = [
    ('{"type": "dtmf", "digits": "1"}', "the first message must be the offer"),
    ("{not json", "a message must be a JSON object"),
    ('{"type": "hangup", "sdp": 1}', "the first message must be the offer"),
    ('{"type": "offer", "sdp": "v=0 and nothing else"}', "the offer cannot be taken: "),
]


def test_a_page_without_credentials_or_keeping_to_the_protocol_is_refused_and_told_why(
    engine: Callable[..., Engine], http_server: HttpServer
) -> None:
    eng, http = serve(engine, http_server)
    for headers in ({}, {"Authorization": "Bearer not-the-token-0123456789abcdef"}):
        with pytest.raises(Refused) as refused:
            asyncio.run(PhoneSocket.open(http, headers))
        assert refused.value.status == 401

    async def send_first(text: str) -> tuple[list[dict[str, Any]], Closed]:
        sock = await PhoneSocket.open(http, BEARER)
        await sock.send_raw(text)
        return await sock.until_closed()

    for first, says in BROKEN:
        messages, closed = asyncio.run(send_first(first))
        assert closed.code == POLICY, (first, closed)
        errors = [m["message"] for m in messages if m["type"] == "error"]
        assert len(errors) == 1 and errors[0].startswith(says), (first, messages)

    async def offer_and_go() -> None:  # a tab closed right after Call: its call had not begun
        sock = await PhoneSocket.open(http, BEARER)
        await sock.send({"type": "offer", "sdp": await Browser().offer()})
        await sock.abort()

    asyncio.run(offer_and_go())
    # Gone while its offer was being taken (the usual case), or — on a busy machine, where the service
    # took the offer before it saw the socket close — a call that ends at once as hung up: either way
    # one info line, no traceback, no error.
    gone = ("hung up before its call started", "ended after 0.0 s: remote_hangup")
    assert wait_for(lambda: any(said in eng.log() for said in gone)), eng.log()[-3000:]
    assert "Traceback" not in eng.log() and " ERROR " not in eng.log(), eng.log()[-3000:]


def test_a_page_that_sends_pings_and_reads_nothing_does_not_grow_the_service(
    engine: Callable[..., Engine], http_server: HttpServer
) -> None:
    """uvicorn answered every ping, whatever it held for the page already: a page that sent pings and read
    nothing made the service keep every pong — its memory grew by more than the pings sent."""
    eng, http = serve(engine, http_server)
    assert eng.proc is not None
    status = Path(f"/proc/{eng.proc.pid}/status")

    def resident() -> int:  # bytes
        return int(status.read_text().split("VmRSS:")[1].split()[0]) * 1024

    sent = 32 * 1024 * 1024  # (beyond what the kernel buffers of both ends take in)

    async def flood() -> tuple[int, list[dict[str, Any]]]:
        browser = Browser()
        sock = await PhoneSocket.open(http, BEARER)
        await sock.send({"type": "offer", "sdp": await browser.offer()})
        ringing = await sock.receive()
        assert not isinstance(ringing, Closed) and ringing["type"] == "ringing", ringing
        before = resident()
        await sock.flood_pings(sent)
        grown = resident() - before
        # The page reads again: the call's answer is there, and the call goes on to its hang-up.
        answer = await sock.receive()
        await sock.send({"type": "hangup"})
        messages, _ = await sock.until_closed()
        await browser.pc.close()
        return grown, [ringing, answer, *messages]

    grown, messages = asyncio.run(flood())
    assert grown < sent // 2, f"the service grew by {grown / 1e6:.0f} MB for {sent / 1e6:.0f} MB of pings"
    assert [m["type"] for m in messages] == ["ringing", "answer", "ended"], messages


def test_a_call_over_max_calls_is_refused_1013_and_the_live_one_goes_on(
    engine: Callable[..., Engine], http_server: HttpServer
) -> None:
    eng, http = serve(engine, http_server, "--max-calls", "1")

    async def two_calls() -> tuple[list[dict[str, Any]], Closed, list[dict[str, Any]], Closed]:
        first_browser = Browser()
        first = await PhoneSocket.open(http, BEARER)
        await first.send({"type": "offer", "sdp": await first_browser.offer()})
        ringing = await first.receive()
        assert not isinstance(ringing, Closed) and ringing["type"] == "ringing", ringing
        second = await PhoneSocket.open(http, BEARER)
        await second.send({"type": "offer", "sdp": await Browser().offer()})
        refused, refused_close = await second.until_closed()
        # the first call goes on to its end: answered, the key pressed, ended

        async def press() -> None:
            await wait_until(lambda: heard_seconds(first_browser) > 1.0, "the first browser hears the prompt")
            await first.send({"type": "dtmf", "digits": "5"})

        messages, closed = await follow(first, first_browser, press)
        return refused, refused_close, messages, closed

    refused, refused_close, messages, closed = asyncio.run(two_calls())
    assert refused_close.code == TRY_LATER
    assert [m["type"] for m in refused] == ["error"]
    assert "--max-calls" in refused[0]["message"], refused
    assert [m["type"] for m in messages] == ["answer", "ended"] and messages[-1]["reason"] == "busy", messages
    assert closed.code == NORMAL
    assert len(eng.recordings(1)) == 1


def test_a_stopped_service_hangs_up_a_browser_call_and_tells_the_page(
    engine: Callable[..., Engine], http_server: HttpServer
) -> None:
    eng, http = serve(engine, http_server)

    async def call_until_stopped() -> tuple[list[dict[str, Any]], Closed]:
        browser = Browser()
        sock = await PhoneSocket.open(http, BEARER)
        await sock.send({"type": "offer", "sdp": await browser.offer()})

        async def stop() -> None:
            await wait_until(lambda: heard_seconds(browser) > 0.5, "the browser hears the prompt")
            assert eng.proc is not None
            eng.proc.send_signal(signal.SIGTERM)  # the service is stopped mid-call

        return await follow(sock, browser, stop)

    messages, closed = asyncio.run(call_until_stopped())
    assert [m["type"] for m in messages] == ["ringing", "answer", "ended"], messages
    assert messages[-1]["reason"] == "shutdown" and closed.code == NORMAL
    assert eng.stop() == 0, eng.log()[-3000:]  # a clean stop (it had already begun)
    [meta] = eng.recordings(1)
    assert meta["state"] == "finished"
