"""The console in Firefox ESR too (driven over Marionette: tests/browser/firefox.py), against the same
``swml serve`` as the Chromium tests: sign in, the list, a recording's waveform for both channels and its
player, the calls page — and no error in Firefox's console (a script error or a refused
Content-Security-Policy would be one)."""

from __future__ import annotations

import json

from .conftest import CALLER_LEVEL, TOKEN, Console
from .firefox import Firefox


def test_the_console_works_in_firefox(firefox: Firefox, console: Console) -> None:
    fx = firefox
    fx.go(console.base + "/")
    fx.until("return document.activeElement && document.activeElement.id === 'token'")
    fx.run("const t = document.getElementById('token'); t.value = arguments[0]; t.form.requestSubmit();", TOKEN)
    row = f"#recordings tr[data-recording='{console.toned[-1]}'] a"  # (the one no test deletes)
    fx.until("return document.querySelector(arguments[0])", row)
    fx.run("document.querySelector(arguments[0]).click();", row)
    fx.until("return document.querySelector('#waveform[data-channels=\"2\"]')")
    peaks = json.loads(fx.run("return document.getElementById('waveform').dataset.peaks;"))
    assert peaks[0] > 0.6 * CALLER_LEVEL and peaks[1] > 0.02, peaks
    fx.run("document.getElementById('player').play();")
    fx.until("return document.getElementById('player').currentTime > 0.5;")
    fx.run("location.hash = '#/calls';")
    fx.until("return document.querySelector('#recent-calls table');")
    assert fx.console_errors(console.base) == []
