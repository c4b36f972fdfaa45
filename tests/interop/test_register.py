"""`swml serve --register`: a registrar (sipp) challenges, checks the digest and the Contact, binds, and
takes the unregister when the engine stops; refusals show in /health and are retried."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .peers import Engine, free_port, scenario, sipp_errors, start_sipp_uas

SCRIPT = "version: 1.0.0\nsections:\n  main:\n    - answer\n"


def health(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3) as r:
        result: dict[str, Any] = json.loads(r.read())
    return result


def wait_registration(port: int, state: str, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        reg = health(port)["registration"]
        if reg["state"] == state or time.monotonic() > deadline:
            return dict(reg)
        time.sleep(0.1)


@pytest.mark.parametrize(("password", "registered"), [("s3cret", True), ("guess", False)])
def test_register_with_digest_and_unregister_on_stop(
    password: str, registered: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registrar, http, sip = free_port(), free_port(), free_port()
    sipp = start_sipp_uas(tmp_path / "sipp", scenario("registrar", contact_port=sip), registrar)
    time.sleep(0.5)
    monkeypatch.setenv("SWML_REGISTER_PASSWORD", password)
    eng = Engine(None, tmp_path / "data", port=sip)
    eng.script = tmp_path / "s.yaml"
    eng.script.write_text(SCRIPT)
    eng.extra = ["--http", f"127.0.0.1:{http}", "--register", f"sip:alice@127.0.0.1:{registrar}"]
    eng.extra += ["--register-expires", "60"]
    eng.start()
    try:
        if registered:
            reg = wait_registration(http, "registered")
            assert reg == {"aor": "sip:alice@127.0.0.1", "state": "registered", "detail": "for 60 s", "expires": 60}
        else:
            reg = wait_registration(http, "failed")
            assert (reg["state"], reg["detail"]) == ("failed", "403 Forbidden")
    finally:
        assert eng.stop() == 0 and "Traceback" not in eng.log(), eng.log()[-3000:]
    out, _ = sipp.communicate(timeout=30)
    if registered:  # the registrar saw the right credentials and Contact, then the unregister
        assert sipp.returncode == 0, out[-2000:] + sipp_errors(tmp_path / "sipp") + eng.log()[-2000:]
        assert "unregistered" in eng.log()
    else:
        assert sipp.returncode != 0
        assert "403 Forbidden" in eng.log()


def test_register_usage_errors() -> None:
    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "swml_engine", "serve", "--sip", "127.0.0.1:0", "--script", "x.yaml", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30)

    r = serve("--register", "pbx.example.com")
    assert r.returncode == 2 and "expected sip:USER@HOST[:PORT]" in r.stderr
    r = serve("--register", "sip:alice@pbx.example.com", "--register-expires", "5")
    assert r.returncode == 2 and "30..86400" in r.stderr
    r = serve("--register", "sip:alice@pbx.example.com", "--workers", "2")
    assert r.returncode == 2 and "--register takes one worker" in r.stderr
