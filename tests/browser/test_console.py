"""The web console (docs/console.md) as an operator uses it, in headless Chromium against a real ``swml serve``:
sign-in (a wrong token refused), the recordings list with a recording a real sipp call made, its page (the
waveform of both channels drawn, the player playing, delete), a live call stopped from the calls page, a
finished call's event timeline, and the page's own headers."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conftest import wait_for
from interop.peers import engines, free_port
from swml_engine.service.console import CONTENT_SECURITY_POLICY

from .conftest import CALLER_LEVEL, CHROMIUM, CHROMIUM_ARGS, TOKEN, Browsing, Console, keep_screenshot, watched

if TYPE_CHECKING:
    from playwright.sync_api import Browser

#: Reads back what the waveform canvas shows: per lane (one per channel), how many pixels have each lane's
#: wave colour (waveform.js draws lane 1 in #1f6f8b, lane 2 in #b4543a).
COUNT_WAVE_PIXELS = """(canvas) => {
  const ctx = canvas.getContext('2d');
  const lanes = Number(canvas.dataset.channels);
  const colours = [[0x1f, 0x6f, 0x8b], [0xb4, 0x54, 0x3a]];
  const laneHeight = Number(canvas.dataset.laneHeight);
  const counts = [];
  for (let lane = 0; lane < lanes; lane++) {
    const data = ctx.getImageData(0, lane * laneHeight, canvas.width, laneHeight).data;
    const [r, g, b] = colours[lane % 2];
    let n = 0;
    for (let i = 0; i < data.length; i += 4) {
      if (Math.abs(data[i] - r) < 8 && Math.abs(data[i + 1] - g) < 8 && Math.abs(data[i + 2] - b) < 8) n++;
    }
    counts.push(n / (canvas.width * laneHeight));
  }
  return counts;
}"""

#: A Unix time as a ``datetime-local`` field's value: its minute, in the browser's time zone.
LOCAL_MINUTE = """(unix) => {
  const d = new Date(unix * 1000);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}"""


def fetch(url: str) -> tuple[int, Message, bytes]:
    """Status, headers (any case) and body of a GET without credentials."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def test_the_page_and_its_files_are_served_with_a_strict_content_security_policy(console: Console) -> None:
    code, headers, page = fetch(console.base + "/")
    assert code == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    policy = dict(part.strip().split(" ", 1) for part in headers["Content-Security-Policy"].split(";"))
    assert policy["default-src"] == "'none'" and policy["script-src"] == "'self'" and policy["style-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'" and policy["connect-src"] == "'self'"
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"
    # No inline script or style anywhere: every script is a file, no handler or style attribute.
    html = page.decode()
    assert all("src=" in tag for tag in re.findall(r"<script[^>]*>", html))
    assert not re.search(r"\sstyle=|\son[a-z]+=", html)
    code, headers, _ = fetch(console.base + "/console/app.js")
    assert code == 200 and headers["Content-Type"].startswith("text/javascript")
    assert "Content-Security-Policy" in headers
    # Only the console's own files: nothing else is reachable under /console/.
    # A refusal there carries the console's headers too.
    for name in ("nosuch.js", "..%2F__init__.py", "%2e%2e%2fapi.py", "__init__.py", "static/app.js", "a/b/c"):
        code, headers, _ = fetch(f"{console.base}/console/{name}")
        assert code == 404 and headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY, name
        assert headers["X-Content-Type-Options"] == "nosniff", name


def test_a_wrong_token_is_refused_and_the_right_one_opens_a_session_until_sign_out(
    browsing: Browsing, console: Console
) -> None:
    page = browsing.page
    browsing.expected.append("status of 401")  # Chromium logs the refused sign-in's answer
    browsing.sign_in("not-the-token-at-all-0000")
    page.wait_for_selector("[role=alert] >> text=not the API token")
    assert not [c for c in browsing.context.cookies() if c["name"] == "swml_session"]
    assert page.evaluate("document.getElementById('token').value") == ""  # the token is not kept in the form

    browsing.expected.clear()
    page.keyboard.type(TOKEN)  # the field has the focus again
    page.keyboard.press("Enter")
    page.wait_for_selector("h1 >> text=Recordings")
    [cookie] = [c for c in browsing.context.cookies() if c["name"] == "swml_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert TOKEN not in page.url and page.evaluate("localStorage.length + sessionStorage.length") == 0
    # A reload keeps the session (the page asks the service, not its storage).
    page.reload()
    page.wait_for_selector("#recordings tbody tr")

    page.click("#sign-out")
    page.wait_for_selector("h1 >> text=Sign in")
    # The session is over on the service too: its cookie, sent again, is refused.
    answer = browsing.context.request.get(
        console.base + "/api/recordings", headers={"Cookie": f"swml_session={cookie['value']}"}
    )
    assert answer.status == 401


def test_a_tab_left_open_while_another_signed_in_anew_still_signs_out(browsing: Browsing, console: Console) -> None:
    """The tabs of a browser share the cookie: another tab signs out and in again (a new session, whose CSRF
    token this tab never saw). Every change this tab asked for was then refused 403 — its Sign out said
    'Sign-out failed: ... needs the x-csrf-token header' — until it was reloaded."""
    page = browsing.page
    browsing.sign_in()
    page.wait_for_selector("h1 >> text=Recordings")
    other = browsing.context.new_page()
    other.goto(console.base + "/")
    other.wait_for_selector("h1 >> text=Recordings")
    other.click("#sign-out")
    other.wait_for_selector("#token:focus")
    other.keyboard.type(TOKEN)
    other.keyboard.press("Enter")
    other.wait_for_selector("h1 >> text=Recordings")
    [cookie] = [c for c in browsing.context.cookies() if c["name"] == "swml_session"]

    browsing.expected.append("status of 403")  # (Chromium logs the first try, with the old session's token)
    page.click("#sign-out")
    page.wait_for_selector("h1 >> text=Sign in")
    assert page.get_by_text("Signed out.").is_visible()
    answer = browsing.context.request.get(
        console.base + "/api/recordings", headers={"Cookie": f"swml_session={cookie['value']}"}
    )
    assert answer.status == 401  # the session the tabs shared is over


def test_a_recording_of_a_real_call_is_listed_drawn_for_both_channels_played_and_deleted(
    browsing: Browsing, console: Console, tmp_path: Path
) -> None:
    page = browsing.page
    recording_id = console.toned[0]
    browsing.sign_in()
    row = page.wait_for_selector(f"#recordings tr[data-recording='{recording_id}']")
    assert "finished" in row.inner_text() and "stereo" in row.inner_text()
    # The row says who called whom: the call's From and To, as the API lists them.
    listed = console.api("GET", "/api/recordings")[1]["recordings"]
    parties = next((r["caller"], r["callee"]) for r in listed if r["recording_id"] == recording_id)
    assert all(parties) and all(party in row.inner_text() for party in parties), parties
    keep_screenshot(page, tmp_path, "console-recordings.png")

    # The filters narrow the list: a format it is not in hides it, its own format shows it.
    page.select_option("#filter-format", "mp3")
    page.click("button[type=submit]")
    page.wait_for_selector("#no-recordings")
    page.select_option("#filter-format", "wav")
    page.fill("#filter-longer", "1")
    page.click("button[type=submit]")
    page.wait_for_selector(f"#recordings tr[data-recording='{recording_id}']")
    assert "format=wav" in page.url and "longer=1" in page.url
    # From and To the minute it started (the fields give minutes, in the browser's time): it is in it.
    started = console.api("GET", f"/api/recordings/{recording_id}")[1]["start_time"]
    minute = page.evaluate(LOCAL_MINUTE, started)
    page.fill("#filter-since", minute)
    page.fill("#filter-until", minute)
    page.click("button[type=submit]")
    page.wait_for_selector(f"#recordings tr[data-recording='{recording_id}']")
    assert "until=" in page.url

    page.click(f"#recordings tr[data-recording='{recording_id}'] a")
    canvas = page.wait_for_selector("#waveform[data-channels='2']")
    peaks = page.evaluate("JSON.parse(document.getElementById('waveform').dataset.peaks)")
    silent = page.evaluate("JSON.parse(document.getElementById('waveform').dataset.silent)")
    # Left: the caller's 440 Hz tone all along; right: what it heard — a second of silence, then ring tone.
    assert 0.6 * CALLER_LEVEL < peaks[0] < 1.3 * CALLER_LEVEL, peaks
    assert peaks[1] > 0.02 and silent[1] > 0.15 and silent[0] < 0.15, (peaks, silent)
    drawn = page.evaluate(COUNT_WAVE_PIXELS, canvas)
    assert drawn[0] > 0.05 and drawn[1] > 0.01, drawn
    labels = canvas.get_attribute("aria-label") or ""
    assert "left: caller" in labels and "right: heard" in labels
    keep_screenshot(page, tmp_path, "console-recording.png")

    # The player plays the recording (from the audio route, with the cookie).
    page.evaluate("document.getElementById('player').play()")
    assert wait_for(lambda: page.evaluate("document.getElementById('player').currentTime") > 0.5)
    assert page.get_attribute("#download", "href") == f"/api/recordings/{recording_id}/audio"

    # Delete asks first; "Keep it" keeps it, "Delete" deletes it.
    page.click("#delete")
    page.click("dialog[open] >> text=Keep it")
    assert console.api("GET", f"/api/recordings/{recording_id}")[0] == 200
    page.click("#delete")
    page.click("#confirm-delete")
    page.wait_for_selector("text=Recording deleted.")
    assert console.api("GET", f"/api/recordings/{recording_id}")[0] == 404
    assert page.query_selector(f"#recordings tr[data-recording='{recording_id}']") is None


def test_a_live_call_appears_and_its_buttons_pause_resume_and_stop_its_recording(
    browsing: Browsing, console: Console, tmp_path: Path
) -> None:
    page = browsing.page
    browsing.sign_in()
    page.wait_for_selector("h1 >> text=Recordings")
    page.click("nav >> text=Calls")
    page.wait_for_selector("h1 >> text=Calls")
    page.wait_for_selector("#live-calls >> text=Loading…", state="detached")
    before = {r["recording_id"] for r in console.recordings()}
    console.call(60.0)
    assert wait_for(lambda: {r["recording_id"] for r in console.recordings()} - before)
    [recording_id] = {r["recording_id"] for r in console.recordings()} - before
    # It appears without a reload, with its recording and the recording's buttons.
    card = page.wait_for_selector(f".live-call:has(li[data-recording='{recording_id}'])")
    assert wait_for(lambda: card.query_selector(".elapsed").inner_text() not in ("–", "0:00"))
    keep_screenshot(page, tmp_path, "console-calls.png")

    def state() -> Any:
        """As the API says it: a live recording that is paused has a pause_behavior."""
        meta = console.api("GET", f"/api/recordings/{recording_id}")[1]
        return "paused" if meta["pause_behavior"] else meta["state"]

    page.click(f"li[data-recording='{recording_id}'] button[data-action=pause]")
    page.wait_for_selector(f"li[data-recording='{recording_id}'] button[data-action=resume]")
    assert state() == "paused"
    # The recordings page's State filter offers only states the API lists by (a paused recording is listed
    # as `recording`), and finds the paused recording under that one.
    page.click("nav >> text=Recordings")
    offered = page.eval_on_selector_all("#filter-state option", "os => os.map(o => o.value).filter(Boolean)")
    assert set(offered) == {"recording", "finished", "no_input", "error"}, offered
    page.select_option("#filter-state", "recording")
    page.click("button[type=submit]")
    row = page.wait_for_selector(f"#recordings tr[data-recording='{recording_id}']")
    assert "live" in row.inner_text() and "0.0 s" not in row.inner_text(), row.inner_text()  # (no duration yet)
    page.click("nav >> text=Calls")
    page.click(f"li[data-recording='{recording_id}'] button[data-action=resume]")
    page.wait_for_selector(f"li[data-recording='{recording_id}'] button[data-action=pause]")
    assert state() == "recording"
    page.click(f"li[data-recording='{recording_id}'] button[data-action=stop]")
    page.wait_for_selector(f"li[data-recording='{recording_id}']", state="detached")
    code, meta = console.api("GET", f"/api/recordings/{recording_id}")
    assert code == 200 and meta["state"] == "finished" and meta["end_reason"] == "api"


def test_a_live_calls_page_follows_its_recordings_as_they_end(browsing: Browsing, console: Console) -> None:
    page = browsing.page
    browsing.sign_in()
    page.wait_for_selector("h1 >> text=Recordings")
    before = {r["recording_id"] for r in console.recordings()}
    console.call(60.0)
    assert wait_for(lambda: {r["recording_id"] for r in console.recordings()} - before)
    [recording] = [r for r in console.recordings() if r["recording_id"] not in before]
    page.goto(f"{console.base}/#/calls/{recording['call_id']}")
    item = f"ul.recordings li:has(a[href='#/recordings/{recording['recording_id']}'])"
    row = page.wait_for_selector(item)
    assert "recording" in row.inner_text() and "0.0 s" not in row.inner_text(), row.inner_text()
    # Stopped elsewhere (the API): the page, open all along, shows it finished, with its duration.
    code, meta = console.api("POST", f"/api/recordings/{recording['recording_id']}/stop")
    assert code == 200 and meta["state"] == "finished", meta
    page.wait_for_selector(f"{item} >> text=finished")
    assert "live" not in page.inner_text(item)


def test_a_finished_calls_event_timeline(browsing: Browsing, console: Console, tmp_path: Path) -> None:
    code, body = console.api("GET", "/api/calls?state=ended")
    assert code == 200 and body["calls"], body
    call_id = body["calls"][-1]["call_id"]  # the session's first call
    page = browsing.page
    browsing.sign_in()
    page.wait_for_selector("h1 >> text=Recordings")
    page.goto(f"{console.base}/#/calls/{call_id}")
    page.wait_for_selector("#timeline-state >> text=the call has ended")
    types = page.eval_on_selector_all("#timeline tbody tr", "rows => rows.map(r => r.dataset.type)")
    assert types[0] in ("sip.invite", "call.state") and "record.state" in types, types
    states = page.eval_on_selector_all(
        "#timeline tbody tr[data-type='call.state'] td:last-child", "cells => cells.map(c => c.textContent)"
    )
    assert states[0] == "ringing" and "answered" in states and states[-1].startswith("ended"), states
    keep_screenshot(page, tmp_path, "console-call.png")


def test_usable_at_phone_width(browsing: Browsing, console: Console, tmp_path: Path) -> None:
    page = browsing.page
    page.set_viewport_size({"width": 375, "height": 740})
    browsing.sign_in()
    page.wait_for_selector("h1 >> text=Recordings")
    page.click("nav >> text=Calls")
    page.wait_for_selector("h1 >> text=Calls")
    # Nothing wider than the screen but the tables, which scroll inside their own box.
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than a phone's screen"
    assert page.is_visible("#sign-out")
    page.click("nav >> text=Recordings")
    page.click("#recordings tbody tr a")
    page.wait_for_selector("#waveform[data-channels]")
    assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0
    keep_screenshot(page, tmp_path, "console-phone.png")


def test_keyboard_alone_reaches_everything_and_every_field_is_labelled(browsing: Browsing, console: Console) -> None:
    page = browsing.page
    browsing.sign_in()  # (typed, and Enter)
    page.wait_for_selector("#recordings tbody tr a")
    unlabelled = "[...document.querySelectorAll('input, select')].filter(e => !e.labels.length).map(e => e.name)"
    assert page.evaluate(unlabelled) == []
    focused = "document.activeElement.id || document.activeElement.textContent.trim()"

    def tab_to(predicate: str, limit: int = 40) -> None:
        for _ in range(limit):
            page.keyboard.press("Tab")
            if page.evaluate(predicate):
                return
        raise AssertionError(f"Tab never reached {predicate}; the focus is on {page.evaluate(focused)!r}")

    # The page opens with the focus on its heading; Tab goes through the filters in reading order (a date
    # field takes several presses: one per part of the date).
    assert page.evaluate("document.activeElement.tagName") == "H1"
    order: list[str] = []
    while len(order) < 11:
        page.keyboard.press("Tab")
        now = page.evaluate(focused)
        if not order or order[-1] != now:
            order.append(now)
    fields = ["since", "until", "caller", "callee", "call", "state", "format", "longer", "shorter"]
    assert order == [*(f"filter-{f}" for f in fields), "Search", "Clear"], order
    # A recording opens from the keyboard, and its delete asks first: Escape keeps it.
    tab_to("document.activeElement.closest('#recordings tbody') !== null")
    page.keyboard.press("Enter")
    page.wait_for_selector("#waveform[data-channels]")
    tab_to("document.activeElement.id === 'delete'")
    page.keyboard.press("Enter")
    page.wait_for_selector("dialog[open]")
    assert page.evaluate("document.activeElement.textContent") == "Keep it"
    page.keyboard.press("Escape")
    page.wait_for_selector("dialog", state="hidden")
    assert page.evaluate("document.querySelector('dialog').open") is False


def test_a_session_cookie_the_browser_refuses_is_said_so_at_sign_in(browser: Browser, tmp_path: Path) -> None:
    # An https --public-url (behind a TLS proxy, docs/deploy.md) makes the cookie Secure; a page on the node's
    # own plain-HTTP address cannot keep it. The sign-in says so, rather than "your session has ended".
    with engines(tmp_path) as start:
        http = free_port()
        script = "version: 1.0.0\nsections:\n  main:\n    - hangup\n"
        start(script, "--http", f"127.0.0.1:{http}", "--api-token", TOKEN, "--public-url", "https://rec.example.com")
        # (a name of its own for loopback: http://127.0.0.1 is a secure context, where the cookie is kept)
        named = browser.browser_type.launch(
            executable_path=str(CHROMIUM), args=[*CHROMIUM_ARGS, "--host-resolver-rules=MAP node.test 127.0.0.1"]
        )
        try:
            with watched(named, f"http://node.test:{http}", 1100, 800) as seen:
                seen.expected.append("401")  # (the check that finds no cookie)
                seen.sign_in()
                seen.page.wait_for_selector("[role=alert] >> text=did not keep the session cookie")
                assert "session has ended" not in seen.page.inner_text("main")
        finally:
            named.close()
