"""The console in a real browser: Debian's chromium, driven by Playwright from PyPI (no browser download),
against one real ``swml serve --http`` on loopback with sipp callers; one browser and one service for the
whole session, a fresh browser context (no cookies) per test.

Every test collects the page's console errors and uncaught exceptions (a refused Content-Security-Policy
shows there too) and fails on any it did not expect.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import PATIENCE, tone, wait_for
from interop.peers import Engine, engines, free_port, have, scenario, sip_host
from swml_engine.transports.sip.codecs import Pcma

from .firefox import FIREFOX, Firefox

CHROMIUM = Path("/usr/bin/chromium")
#: Headless, and nothing reaching out to the network on its own.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",  # the player test starts playback from a script
]
TOKEN = "browser-test-token-0123456789"
BENCH = Path(__file__).resolve().parents[2] / "bench"
#: Set to a directory (docs/images) to keep the screenshots the tests take there.
SCREENSHOTS_ENV = "SWML_CONSOLE_SCREENSHOTS"
#: The caller's tone, and its level (of full scale) before A-law.
CALLER_HZ, CALLER_LEVEL = 440, 0.37
#: Every call records both sides in stereo: the caller's tone on the left; on the right what it hears — a
#: second of silence, two seconds of US ring tone, then silence — so the waveform has sound and silence.
SCRIPT = """version: 1.0.0
sections:
  main:
    - answer
    - record_call: {stereo: true, format: wav}
    - play: {url: 'silence:1'}
    - play: {url: 'ring:2:us'}
    - sleep: 120000
"""

try:
    from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright
except ImportError:  # (the dev extra brings it: pip install -e '.[dev]')
    sync_playwright = None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skipped, with the reason, where a part is missing: sipp for every test (the calls), Chromium and
    Playwright for the tests it drives (Firefox's skip themselves without Firefox)."""
    no_sipp = None if have("sipp") else "sipp (Debian sip-tester) is not installed: run make test"
    no_chromium = None
    if sync_playwright is None:
        no_chromium = "playwright is not installed: pip install -e '.[dev]'"
    elif not CHROMIUM.exists():
        no_chromium = f"{CHROMIUM} is missing: apt-get install chromium (make test does)"
    for item in items:
        if "browser" not in str(item.fspath):
            continue
        uses_chromium = {"browser", "browsing"} & set(getattr(item, "fixturenames", ()))
        why = no_sipp or (no_chromium if uses_chromium else None)
        if why is not None:
            item.add_marker(pytest.mark.skip(reason=why))


@dataclass
class Console:
    """The service under test: its engine, where its HTTP API is, and a place for sipp's files."""

    engine: Engine
    base: str
    work: Path
    callers: list[subprocess.Popen[str]] = field(default_factory=list)
    #: The recordings of the session's first two calls (3 s of the caller's tone each), newest first.
    toned: list[str] = field(default_factory=list)

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A request with the bearer token: the status and the JSON answer (None when there is none)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, method=method, data=data)
        req.add_header("Authorization", f"Bearer {TOKEN}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                raw = r.read()
                return r.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            return e.code, json.loads(raw) if raw.startswith(b"{") else None

    def call(self, seconds: float) -> subprocess.Popen[str]:
        """A sipp caller sending a 440 Hz tone for ``seconds``, then hanging up; stopped at the session's end."""
        work = self.work / f"caller-{len(self.callers)}"
        work.mkdir(parents=True)
        (work / "tone.alaw").write_bytes(Pcma().encode(tone(CALLER_HZ, 1.0, 8000, level=CALLER_LEVEL)))
        (work / "call.xml").write_text(scenario(BENCH / "load_call.xml", stream="tone.alaw", pause=int(seconds * 1000)))
        host = "127.0.0.1"
        cmd = ["sipp", f"{sip_host(host)}:{self.engine.port}", "-sf", "call.xml", "-m", "1", "-l", "1", "-i", host]
        cmd += ["-p", str(free_port()), "-t", "u1", "-nostdin", "-timeout", f"{int(seconds + 60)}s", "-trace_err"]
        caller = subprocess.Popen(cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, text=True)
        self.callers.append(caller)
        return caller

    def recordings(self, **query: str) -> list[dict[str, Any]]:
        path = "/api/recordings" + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
        code, body = self.api("GET", path)
        assert code == 200, body
        return list(body["recordings"])


@pytest.fixture(scope="package")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """One ``swml serve --http`` for the session, with two finished recordings of 3 s sipp calls in it."""
    work = tmp_path_factory.mktemp("console")
    with engines(work) as start:
        http = free_port()
        eng = start(SCRIPT, "--http", f"127.0.0.1:{http}", "--api-token", TOKEN)
        served = Console(eng, f"http://127.0.0.1:{http}", work)
        # Two such calls at once: one recording to delete, one that stays for the tests after that.
        first = [served.call(3.0), served.call(3.0)]
        assert [caller.wait(PATIENCE) for caller in first] == [0, 0], "the first sipp calls failed"
        assert wait_for(lambda: [r["state"] for r in served.recordings()] == ["finished"] * 2), served.recordings()
        served.toned = [r["recording_id"] for r in served.recordings()]
        try:
            yield served
        finally:
            for caller in served.callers:
                if caller.poll() is None:
                    caller.terminate()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        caller.wait(5)


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    assert sync_playwright is not None
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture(scope="package")
def firefox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Firefox]:
    """Debian's Firefox ESR, headless, driven over Marionette (tests/browser/firefox.py)."""
    if FIREFOX is None:
        pytest.skip("Firefox is not installed: apt-get install firefox-esr (make test does)")
    browser = Firefox(tmp_path_factory.mktemp("firefox"), free_port())
    try:
        yield browser
    finally:
        browser.close()


@dataclass
class Browsing:
    """One test's browser context and page, and what the page said was wrong."""

    context: BrowserContext
    page: Page
    base: str
    #: Errors the page logged that no test expected.
    errors: list[str] = field(default_factory=list)
    #: Console errors the test expects while it is set (a refused sign-in's 401), by a part of their text.
    expected: list[str] = field(default_factory=list)

    def logged(self, text: str) -> None:
        if not any(part in text for part in self.expected):
            self.errors.append(text)

    def sign_in(self, token: str = TOKEN) -> None:
        """Through the form, with the keyboard: the field has the focus, Enter submits."""
        self.page.goto(self.base + "/")
        self.page.wait_for_selector("#token:focus")
        self.page.keyboard.type(token)
        self.page.keyboard.press("Enter")


@contextlib.contextmanager
def watched(browser: Browser, base: str, width: int, height: int, init_script: str = "") -> Iterator[Browsing]:
    """A fresh context (no cookies) and page of ``browser`` for pages of ``base``; on leaving, it fails on
    any error the page logged that was not expected. ``init_script`` runs in every page before its own."""
    context = browser.new_context(viewport={"width": width, "height": height})
    if init_script:
        context.add_init_script(init_script)
    page = context.new_page()
    page.set_default_timeout(PATIENCE * 1000)
    seen = Browsing(context, page, base)
    page.on("console", lambda m: seen.logged(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: seen.logged(f"uncaught: {e}"))
    try:
        yield seen
    finally:
        context.close()
    assert seen.errors == [], f"the page logged errors: {seen.errors}"


@pytest.fixture
def browsing(browser: Browser, console: Console) -> Iterator[Browsing]:
    with watched(browser, console.base, 1100, 800) as seen:
        yield seen


def keep_screenshot(page: Page, tmp_path: Path, name: str) -> Path:
    """A screenshot of the page as shown, in the test's directory, and copied to $SWML_CONSOLE_SCREENSHOTS."""
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keep = os.environ.get(SCREENSHOTS_ENV)
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(keep) / name)
    return path
