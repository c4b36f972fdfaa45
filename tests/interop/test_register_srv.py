"""`swml serve --register sip:alice@DOMAIN` without a port: the registrar is found by the domain's
`_sip._udp` SRV record (RFC 3263), asked of a DNS server on loopback (tests/dns_server.py), and sipp
there takes the REGISTER (its digest and Contact checked), then the unregister at the stop."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dns_server import Serve, dns_zone_fixture  # noqa: F401  (the fixture)

from .peers import Engine, free_port, scenario, sipp_errors, start_sipp_uas
from .test_register import SCRIPT, wait_registration

DOMAIN = "reg.test.domain"


def test_a_registrar_known_by_its_srv_record_is_registered_with(
    dns_zone: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registrar, http, sip = free_port(), free_port(), free_port()
    sipp = start_sipp_uas(tmp_path / "sipp", scenario("registrar", contact_port=sip), registrar)
    dns_zone(
        {f"_sip._udp.{DOMAIN}": [("SRV", f"0 0 {registrar} sbc.{DOMAIN}.")], f"sbc.{DOMAIN}": [("A", "127.0.0.1")]}
    )
    time.sleep(0.5)
    script = tmp_path / "s.yaml"
    script.write_text(SCRIPT)
    eng = Engine(script, tmp_path / "data", port=sip)
    eng.extra = ["--http", f"127.0.0.1:{http}", "--register", f"sip:alice@{DOMAIN}", "--register-expires", "60"]
    monkeypatch.setenv("SWML_REGISTER_PASSWORD", "s3cret")
    eng.start()
    try:
        reg = wait_registration(http, "registered")
        assert (reg["aor"], reg["state"]) == (f"sip:alice@{DOMAIN}", "registered"), eng.log()[-3000:]
        assert f"at 127.0.0.1:{registrar}" in eng.log()
    finally:
        assert eng.stop() == 0 and "Traceback" not in eng.log(), eng.log()[-3000:]
    out, _ = sipp.communicate(timeout=30)
    assert sipp.returncode == 0, out[-2000:] + sipp_errors(tmp_path / "sipp") + eng.log()[-2000:]
