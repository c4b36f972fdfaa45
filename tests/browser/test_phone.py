"""The phone page (docs/phone.md) as a developer uses it: headless Chromium, its microphone a WAV file, calls a
real ``swml serve`` from ``/phone`` over WebRTC, with Opus and with G.711. The script plays early media,
answers, records the call in stereo, plays a prompt and collects two keys; the test sees each state on the
page, hears the prompt in the browser, presses one key on the keypad and types the other, hangs up from the
page, and finds in the recording what the browser's microphone said. Also: a call refused because the
session ended sends the page back to the sign-in, the page's headers, and a call from Firefox."""

from __future__ import annotations

import io
import json
import re
import urllib.request
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from conftest import read_jsonl, wait_for
from interop.peers import engines, free_port
from swml_engine.media.frame import FRAME_SECONDS
from swml_engine.service.console import CONTENT_SECURITY_POLICY

from .conftest import CHROMIUM, CHROMIUM_ARGS, TOKEN, Browsing, Console, keep_screenshot, watched
from .firefox import Firefox

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, WebSocketRoute

#: Early media first (US ring tone), then the answer. The prompt is UK ring tone (400 + 450 Hz): the browser
#: must hear those, and the keys end it (barge-in). Keys 99 make the script hang up.
PROMPT_HZ = (400.0, 450.0)
SCRIPT = """version: 1.0.0
sections:
  main:
    - play: {url: 'ring:1.5:us', auto_answer: false}
    - answer
    - record_call: {stereo: true, format: wav}
    - prompt: {play: 'ring:60:uk', max_digits: 2, digit_timeout: 60, initial_timeout: 60}
    - cond:
        - when: "prompt_value == '99'"
          then: [hangup: {}]
    - sleep: 120000
"""
#: The fake microphone's file, looped by Chromium: 20 s of bursts of two tones each (300-3000 Hz, so they
#: pass G.711 and Opus alike), each pair drawn once, so the recording aligns with the file at one place only.
#: 20 s, because Chromium's fake capture skips about 6 ms each time it starts the file again: the stretch
#: compared must not hold such a seam.
MIC_RATE, MIC_SECONDS, BURST, GAP = 48000, 20.0, 0.2, 0.05
#: Which stretch of the caller's side to compare with the file (seconds of the recording), past the first
#: moments, in pieces each aligned by itself: on a busy machine the engine may drop frames of a caller it
#: could not keep up with (a media tick ran late), which moves what follows by 20 ms a frame — no fault
#: of the audio recorded around it. Quarter seconds: a half second holding such a jump read 0.78-0.80
#: (two make test runs side by side), its two quarters 1.00 and 0.57.
COMPARED, PIECE = (1.0, 5.0), 0.25  # (a quarter second holds one burst: it aligns at one place only)
#: Three pieces in four must correlate this well with the file, after resampling and alignment.
MIN_CORRELATION = 0.8

#: Captures each RTCPeerConnection the page makes, for getStats: run before the page's own scripts.
KEEP_PEERS = """(() => {
  const Native = window.RTCPeerConnection;
  window.peers = [];
  window.RTCPeerConnection = class extends Native {
    constructor(...args) { super(...args); window.peers.push(this); }
  };
})();"""
#: What the browser received: inbound RTP bytes and audio energy (getStats), and the loudest frequency of the
#: remote audio the page plays (a WebAudio analyser on its <audio> element's stream).
HEARD = """async () => {
  let inbound = null;
  (await window.peers.at(-1).getStats()).forEach((r) => { if (r.type === 'inbound-rtp' && r.kind === 'audio') inbound = r; });
  if (!window.analyser) {
    const context = new AudioContext();
    window.analyser = context.createAnalyser();
    window.analyser.fftSize = 16384;
    context.createMediaStreamSource(document.getElementById('remote').srcObject).connect(window.analyser);
  }
  const bins = new Float32Array(window.analyser.frequencyBinCount);
  window.analyser.getFloatFrequencyData(bins);
  let loudest = 0;
  for (let i = 1; i < bins.length; i++) if (bins[i] > bins[loudest]) loudest = i;
  return {
    bytes: inbound ? inbound.bytesReceived : 0,
    energy: inbound ? inbound.totalAudioEnergy : 0,
    codec: inbound && inbound.codecId ? (await window.peers.at(-1).getStats()).get(inbound.codecId).mimeType : null,
    hz: loudest * window.analyser.context.sampleRate / window.analyser.fftSize,
    db: bins[loudest],
  };
}"""


def mic_signal() -> np.ndarray:
    """The fake microphone's loop (at MIC_RATE): tone pairs with 10 ms ramps, each followed by a gap."""
    draw = np.random.default_rng(15)
    t = np.arange(round(BURST * MIC_RATE)) / MIC_RATE
    ramp = np.minimum(1.0, np.minimum(t, BURST - t) / 0.01)
    parts: list[np.ndarray] = []
    for _ in range(round(MIC_SECONDS / (BURST + GAP))):
        low, high = draw.uniform(300, 1200), draw.uniform(1300, 3000)
        parts.append(0.2 * ramp * (np.sin(2 * np.pi * low * t) + np.sin(2 * np.pi * high * t)))
        parts.append(np.zeros(round(GAP * MIC_RATE)))
    return np.concatenate(parts)


def resampled(loop: np.ndarray, rate: int, to: int) -> np.ndarray:
    """A periodic signal at another rate, through its spectrum (exact for a loop: no edges to filter)."""
    spectrum = np.fft.rfft(loop)
    size = round(len(loop) * to / rate)
    kept = np.zeros(size // 2 + 1, dtype=complex)
    n = min(len(kept), len(spectrum))
    kept[:n] = spectrum[:n]
    return np.fft.irfft(kept, size) * size / len(loop)


def correlation(heard: np.ndarray, loop: np.ndarray) -> float:
    """The best normalised correlation of ``heard`` with the looped ``loop``, over every alignment."""
    tiled = np.tile(loop, len(heard) // len(loop) + 2)
    size = 1 << (len(tiled) + len(heard)).bit_length()
    products = np.fft.irfft(np.fft.rfft(tiled, size) * np.conj(np.fft.rfft(heard, size)), size)[: len(loop)]
    running = np.concatenate([[0.0], np.cumsum(tiled**2)])
    energy = (running[len(heard) :] - running[: -len(heard)])[: len(loop)]  # each alignment's energy
    best = products / np.sqrt(energy * float(np.sum(heard**2)) + 1e-12)
    return float(best.max())


def wav_channels(data: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(data)) as w:
        samples = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, w.getnchannels())
        return samples.astype(np.float64) / 32768, w.getframerate()


@pytest.fixture(scope="module")
def phone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """A ``swml serve --http`` running SCRIPT for each call (no calls at the start)."""
    work = tmp_path_factory.mktemp("phone")
    with engines(work) as start:
        http = free_port()
        eng = start(SCRIPT, "--http", f"127.0.0.1:{http}", "--api-token", TOKEN)
        yield Console(eng, f"http://127.0.0.1:{http}", work)


@pytest.fixture(scope="module")
def microphone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("microphone") / "mic.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(MIC_RATE)
        w.writeframes((mic_signal() * 32767).astype("<i2").tobytes())
    return path


@pytest.fixture(scope="module")
def chromium(browser: Browser, microphone: Path) -> Iterator[Browser]:
    """A Chromium of its own (the fake microphone is set when a browser starts), launched through the
    package's Playwright: one test process can run only one."""
    fake = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
    args = [*CHROMIUM_ARGS, *fake, f"--use-file-for-fake-audio-capture={microphone}"]
    launched = browser.browser_type.launch(executable_path=str(CHROMIUM), args=args, headless=True)
    yield launched
    launched.close()


@pytest.fixture
def calling(chromium: Browser, phone: Console) -> Iterator[Browsing]:
    """A page of its own in that browser, phone-sized, its peer connections kept for the test to read."""
    with watched(chromium, phone.base, 420, 860, init_script=KEEP_PEERS) as seen:
        yield seen


def events_of(phone: Console, call_id: str) -> list[dict[str, Any]]:
    path = phone.engine.data / "calls" / f"{call_id}.jsonl"
    return read_jsonl(path) if path.exists() else []


def open_phone(calling: Browsing) -> Page:
    """/phone, signed in through the console's form on it (with the keyboard: the field has the focus)."""
    page = calling.page
    page.goto(calling.base + "/phone")
    page.wait_for_selector("#token:focus")
    page.keyboard.type(TOKEN)
    page.keyboard.press("Enter")
    page.wait_for_selector("#call:not([disabled])")
    return page


#: The page's codec choices: what the service then chose (its answer, as the status line says), and the rate
#: the call runs and records at.
CODECS = {"opus": ("opus", 16000), "g711": ("PCMU", 8000)}


@pytest.mark.parametrize("choice", CODECS)
def test_a_browser_calls_the_script_hears_its_prompt_presses_keys_and_is_recorded(
    calling: Browsing, phone: Console, choice: str, tmp_path: Path
) -> None:
    codec, rate_expected = CODECS[choice]
    page = open_phone(calling)
    assert page.locator(".key[disabled]").count() == 12  # no call: the keypad has nothing to send to

    # The microphone as it is: no gain riding, no noise suppression (docs/phone.md).
    if choice == "opus":
        page.select_option("#codec", choice)
        page.check("#raw")
        page.click("#call")
    else:  # the keyboard alone, from the heading: the codec, the box, Call, in reading order
        for key, then in (("Tab", "codec"), ("ArrowDown", "codec"), ("Tab", "raw"), ("Space", "raw"), ("Tab", "call")):
            page.keyboard.press(key)
            assert page.evaluate("document.activeElement.id") == then, (key, then)
        assert page.input_value("#codec") == choice and page.is_checked("#raw")
        page.keyboard.press("Enter")
    page.wait_for_selector("#status.state-early")
    page.wait_for_selector("#status.state-answered")
    assert page.text_content("#status") == f"Answered. Codec: {codec}."
    call_id = page.text_content("#call-id a")
    assert call_id and page.get_attribute("#call-id a", "href") == f"/#/calls/{call_id}"
    if choice == "opus":  # the link opens the call's page in the console beside the call, which goes on
        with calling.context.expect_page() as opened:
            page.click("#call-id a")
        opened.value.wait_for_selector(f"dd:has-text('{call_id}')")
        opened.value.close()
        # Leaving the page during the call asks first; staying keeps the call.
        asked: list[str] = []
        page.once("dialog", lambda dialog: (asked.append(dialog.type), dialog.dismiss()))
        page.click("nav a[href='/#/calls']")
        assert wait_for(lambda: asked == ["beforeunload"]), asked
        assert page.text_content("#status") == f"Answered. Codec: {codec}."

    # The browser hears the prompt: RTP arrives, its audio has energy, and its loudest tone is the ring's.
    heard: dict[str, Any] = {}

    def hears_the_prompt() -> bool:
        heard.update(page.evaluate(HEARD))
        near = min(abs(float(heard["hz"]) - f) for f in PROMPT_HZ)
        return heard["bytes"] > 0 and heard["energy"] > 0 and near < 8

    assert wait_for(hears_the_prompt), heard

    # One key of the keypad pressed (clicked; or reached with Tab from Hang up and pressed with Enter), one
    # typed: the script's prompt collects both.
    focused_key = "document.activeElement.dataset.key || document.activeElement.id"
    if choice == "opus":
        page.click(".key[data-key='4']")
    else:
        assert page.evaluate(focused_key) == "hangup"  # (where the focus went when the call started)
        for _ in range(4):  # keys 1, 2, 3, 4
            page.keyboard.press("Tab")
        assert page.evaluate(focused_key) == "4"
        page.keyboard.press("Enter")
    page.keyboard.press("2")
    page.wait_for_selector("#sent:has-text('4 2')")

    def collected() -> list[str]:
        return [
            e["value"] for e in events_of(phone, call_id) if e["type"] == "vars.set" and e.get("name") == "prompt_value"
        ]

    assert wait_for(lambda: collected() != []), events_of(phone, call_id)
    assert collected() == ["42"]
    # A phone-sized screen: nothing wider than it (the viewport is 420 px wide).
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    if choice == "opus":
        page.wait_for_selector(".key.pressed", state="detached")  # (a typed key lights up for a moment)
        keep_screenshot(page, tmp_path, "phone.png")

    # Enough of the caller's side recorded to compare, then hang up from the page.
    def recording() -> dict[str, Any]:
        found = phone.recordings(call_id=call_id)
        assert len(found) == 1, found
        return found[0]

    audio = phone.engine.data / "recordings" / f"{recording()['recording_id']}.wav"
    enough = (COMPARED[1] + 1) * rate_expected * 4  # (stereo, 16 bits: 4 bytes a sample)
    assert wait_for(lambda: audio.exists() and audio.stat().st_size > enough), audio
    if choice == "opus":
        page.click("#hangup")
    else:  # back from the key to Hang up
        for _ in range(4):
            page.keyboard.press("Shift+Tab")
        assert page.evaluate(focused_key) == "hangup"
        page.keyboard.press("Enter")
    page.wait_for_selector("#status:has-text('Call ended: you hung up (remote_hangup)')")
    assert wait_for(lambda: recording()["state"] == "finished"), recording()
    assert page.evaluate("document.activeElement.id") == "call"

    # What the microphone said is on the caller's side (left) of the recording.
    kept = tmp_path / "recording.wav"  # (kept for a look when the test fails)
    kept.write_bytes(fetch_audio(phone, recording()["recording_id"]))
    channels, rate = wav_channels(kept.read_bytes())
    assert rate == rate_expected and str(heard["codec"]).lower() == f"audio/{codec}".lower(), (rate, heard)
    loop = resampled(mic_signal(), MIC_RATE, rate)
    pieces = [channels[round(t * rate) : round((t + PIECE) * rate), 0] for t in np.arange(*COMPARED, PIECE)]
    # Pieces of digital silence are frames the engine did not have: a sender's burst after a stall (the
    # browser or the engine starved on a busy machine) beyond the 200 ms it keeps. It counts them in its
    # webrtc.stats; those it did not count, or too many of them, fail.
    [stats] = [e for e in events_of(phone, call_id) if e["type"] == "webrtc.stats"]
    silent = sum(1 for piece in pieces if not piece.any())
    dropped_s = stats["frames_dropped_in"] * FRAME_SECONDS
    assert silent <= len(pieces) // 2 and silent * PIECE <= dropped_s + PIECE, (silent, stats, kept)
    scores = [correlation(piece, loop) for piece in pieces if piece.any()]
    shown = " ".join(f"{score:.3f}" for score in scores)
    assert sorted(scores)[len(scores) // 4] > MIN_CORRELATION, f"{shown} at {rate} Hz ({heard['codec']}): {kept}"


def fetch_audio(phone: Console, recording_id: str) -> bytes:
    req = urllib.request.Request(f"{phone.base}/api/recordings/{recording_id}/audio")
    req.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(req, timeout=10) as r:
        return bytes(r.read())


def test_the_phone_page_is_served_as_the_console_is(phone: Console) -> None:
    """Same sign-in mark, same strict policy (its WebSocket is same-origin: connect-src 'self' covers it)."""
    with urllib.request.urlopen(phone.base + "/phone", timeout=10) as r:
        page, headers = r.read().decode(), r.headers
    assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY and headers["X-Frame-Options"] == "DENY"
    assert '<meta name="swml-session" content="none">' in page and 'src="/console/phone.js"' in page
    assert all("src=" in tag for tag in re.findall(r"<script[^>]*>", page))
    req = urllib.request.Request(phone.base + "/phone", headers={"Cookie": "swml_session=anything"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert '<meta name="swml-session" content="cookie">' in r.read().decode()


def test_a_call_refused_because_the_session_ended_asks_to_sign_in_again(calling: Browsing) -> None:
    page = open_phone(calling)
    calling.context.clear_cookies()  # (as a sign-out in another tab, or the session's 12 hours, would)
    # (Chromium logs the refused handshake, and the check of the session: a 401)
    calling.expected += ["/api/phone' failed", "status of 401"]
    page.click("#call")
    page.wait_for_selector("[role=status] >> text=Your session has ended: sign in again.")
    page.wait_for_selector("#token:focus")
    assert page.is_hidden("#nav")


def test_the_script_hanging_up_ends_the_call_on_the_page(calling: Browsing) -> None:
    """With the browser's own audio processing (the page's default) and its default codec."""
    page = open_phone(calling)
    page.click("#call")
    page.wait_for_selector("#status.state-answered")
    page.keyboard.type("99")
    page.wait_for_selector("#status:has-text('Call ended: the script hung up (hangup).')")
    assert page.locator(".key[disabled]").count() == 12 and page.is_enabled("#call") and page.is_disabled("#hangup")
    assert page.evaluate("document.activeElement.id") == "call"  # (Hang up had it, and is disabled now)


#: An address that answers nothing (TEST-NET-2, RFC 5737), put in place of every ICE candidate's and the
#: connection line's as the signalling passes: as a firewall dropping the UDP between the browser and the
#: service would, the call is signalled and answered, and its media never connects.
NOWHERE = "198.51.100.1"


def through_a_firewall(ws: WebSocketRoute) -> None:
    server = ws.connect_to_server()

    def unreachable(text: str | bytes) -> str:
        message = json.loads(text)
        if isinstance(message.get("sdp"), str):
            sdp = re.sub(r"^(a=candidate:\S+ \d+ \S+ \d+) \S+ ", rf"\1 {NOWHERE} ", message["sdp"], flags=re.M)
            message["sdp"] = re.sub(r"^c=IN IP4 .*$", f"c=IN IP4 {NOWHERE}", sdp, flags=re.M)
        return json.dumps(message)

    ws.on_message(lambda text: server.send(unreachable(text)))
    server.on_message(lambda text: ws.send(unreachable(text)))


def test_media_that_never_connects_is_said_so_on_the_page(calling: Browsing) -> None:
    """The service ends a call whose media did not connect within 15 s of its answer as a remote hang-up
    (the browser is taken for gone); the page said 'Call ended: you hung up (remote_hangup)', though
    nobody had hung up, where docs/phone.md promises 'The media connection failed'."""
    page = open_phone(calling)
    page.route_web_socket(re.compile(r"/api/phone$"), through_a_firewall)
    page.click("#call")
    page.wait_for_selector("#status.state-early")  # (the script's early media: the service has answered)
    page.wait_for_selector("#status[role=alert]:has-text('The media connection failed')")
    assert page.is_enabled("#call") and page.is_disabled("#hangup")


#: Firefox's own fake microphone (a tone) and no permission prompt, set at run time in its chrome context;
#: its host candidates hidden behind mDNS names (…local), as a user's Firefox does without a persistent
#: microphone permission (its default, set here lest the prompt's absence change it): it answers for the
#: names only once it has the service's answer (docs/phone.md, "Networks").
FIREFOX_FAKE_MEDIA = """
Services.prefs.setBoolPref('media.navigator.streams.fake', true);
Services.prefs.setBoolPref('media.navigator.permission.disabled', true);
Services.prefs.setBoolPref('media.peerconnection.ice.obfuscate_host_addresses', true);
"""


#: The page's peer connection, kept where the test can read its offer (set from outside the page).
KEEP_THE_PEER_CONNECTION = """
const set = RTCPeerConnection.prototype.setLocalDescription;
RTCPeerConnection.prototype.setLocalDescription = function (...args) { window.offered = this; return set.apply(this, args); };
"""


def test_firefox_calls_from_the_phone_page(firefox: Firefox, phone: Console) -> None:
    """Firefox's WebSocket to /api/phone passes the page's connect-src 'self', and its call is answered
    though its offer names its addresses by mDNS."""
    fx = firefox
    fx.command("Marionette:SetContext", {"value": "chrome"})
    fx.run(FIREFOX_FAKE_MEDIA)
    fx.command("Marionette:SetContext", {"value": "content"})
    fx.go(phone.base + "/phone")
    fx.until("return document.activeElement && document.activeElement.id === 'token'")
    fx.run("const t = document.getElementById('token'); t.value = arguments[0]; t.form.requestSubmit();", TOKEN)
    fx.until("return document.querySelector('#call:not([disabled])')")
    fx.run(KEEP_THE_PEER_CONNECTION)
    fx.run("document.getElementById('call').click();")
    answered = "return document.querySelector('#status.state-answered')"
    assert wait_for(lambda: fx.run(answered)), fx.run("return document.getElementById('status').textContent")
    offered = fx.run("return window.offered.localDescription.sdp.split('\\r\\n')")
    hosts = [line.split(" ")[4] for line in offered if line.startswith("a=candidate:")]
    assert hosts and all(host.endswith(".local") for host in hosts), hosts
    fx.until("return document.getElementById('remote').srcObject !== null")
    fx.run("document.getElementById('hangup').click();")
    fx.until("return document.getElementById('status').textContent.includes('you hung up')")
    assert fx.console_errors(phone.base) == []
