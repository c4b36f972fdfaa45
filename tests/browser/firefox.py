"""Debian's Firefox ESR, headless, driven over its own Marionette protocol (no driver to download, no package
beyond the browser): a length-prefixed JSON exchange on a local port, a few WebDriver commands, and the
browser's console read from its chrome context (page errors and Content-Security-Policy refusals)."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

FIREFOX = shutil.which("firefox-esr") or shutil.which("firefox")
#: The profile's settings: Marionette on our port, and nothing reaching out to the network on its own.
PREFS = {
    "browser.shell.checkDefaultBrowser": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "app.update.disabledForTesting": True,
    "browser.safebrowsing.update.enabled": False,
    "extensions.update.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "media.autoplay.default": 0,  # the player may start from a script
}
#: Errors (not warnings or notes) in the browser's console that came from pages of ``base``.
CONSOLE_ERRORS = """
const base = arguments[0];
return Services.console.getMessageArray()
  .filter((m) => m instanceof Ci.nsIScriptError && !(m.flags & (Ci.nsIScriptError.warningFlag | Ci.nsIScriptError.infoFlag)))
  .filter((m) => (m.sourceName || '').startsWith(base) || (m.errorMessage || '').includes(base))
  .map((m) => `${m.category}: ${m.errorMessage} (${m.sourceName}:${m.lineNumber})`);
"""


class Firefox:
    """One headless Firefox and one Marionette session with it."""

    def __init__(self, profile: Path, port: int) -> None:
        assert FIREFOX is not None
        profile.mkdir(parents=True, exist_ok=True)
        prefs = {**PREFS, "marionette.port": port}
        (profile / "user.js").write_text(
            "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in prefs.items())
        )
        # (system access: the console's messages are read from the browser's chrome context)
        cmd = [
            FIREFOX,
            "--headless",
            "--marionette",
            "-remote-allow-system-access",
            "-no-remote",
            "-profile",
            str(profile),
        ]
        self._process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._buffer = b""
        self._id = 0
        deadline = time.monotonic() + 60
        while True:
            try:
                self._socket = socket.create_connection(("127.0.0.1", port), timeout=30)
                break
            except OSError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    self.close()
                    raise RuntimeError("Firefox's Marionette port never opened") from None
                time.sleep(0.1)
        self._read()  # its greeting: {"applicationType": "gecko", ...}
        self.version = self.command("WebDriver:NewSession", {"capabilities": {}})["capabilities"]["browserVersion"]

    def _read(self) -> Any:
        while b":" not in self._buffer:
            self._buffer += self._receive()
        length, _, rest = self._buffer.partition(b":")
        size = int(length)
        while len(rest) < size:
            rest += self._receive()
        self._buffer = rest[size:]
        return json.loads(rest[:size])

    def _receive(self) -> bytes:
        data = self._socket.recv(65536)
        if not data:
            raise RuntimeError("Firefox closed its Marionette connection")
        return data

    def command(self, name: str, params: dict[str, Any]) -> Any:
        self._id += 1
        data = json.dumps([0, self._id, name, params]).encode()
        self._socket.sendall(str(len(data)).encode() + b":" + data)
        _kind, _id, error, result = self._read()
        if error:
            raise RuntimeError(f"Firefox: {name}: {error.get('error')}: {error.get('message')}")
        return result

    def go(self, url: str) -> None:
        self.command("WebDriver:Navigate", {"url": url})

    def run(self, script: str, *args: Any) -> Any:
        """A script in the page (its ``return`` value back), as if a person's action: not under the page's CSP."""
        return self.command("WebDriver:ExecuteScript", {"script": script, "args": list(args)}).get("value")

    def until(self, script: str, *args: Any, timeout: float = 30.0) -> Any:
        """The first truthy value ``script`` returns, polled; a RuntimeError naming it after ``timeout``."""
        return poll(lambda: self.run(script, *args), timeout, script)

    def console_errors(self, base: str) -> list[str]:
        self.command("Marionette:SetContext", {"value": "chrome"})
        try:
            return list(self.run(CONSOLE_ERRORS, base))
        finally:
            self.command("Marionette:SetContext", {"value": "content"})

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.command("Marionette:Quit", {"flags": ["eForceQuit"]})
        with contextlib.suppress(Exception):
            self._socket.close()
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


def poll(read: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"not within {timeout:g} s: {what}")
        time.sleep(0.05)
