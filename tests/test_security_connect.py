"""What a far party that `connect` dials may not make the engine do (docs/security.md, *Calls the engine
places*): real SIP on loopback, the service's own dialer, far parties of tests/sip/far_party.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sip.far_party import FarParty, Step, running_service
from sip.test_outbound import CALLER_ID, Leg
from swml_engine.transports.sip.outbound import parse_trunk


def test_a_far_ends_redirect_to_the_trunk_is_not_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 302 from any far end sent the leg to the --trunk with whatever number it named (a premium one,
    say): a trunk that knows the engine by its address carried it, at the operator's expense. Now such a
    leg fails `rejected` with the 302 and the trunk hears nothing; the script's own numbers still go."""

    async def main() -> None:
        trunk_party = await FarParty().start()
        trunk = parse_trunk(f"sip:127.0.0.1:{trunk_party.port}")
        to_trunk = Step(302, headers=(("Contact", f"<sip:+19005551234@127.0.0.1:{trunk_party.port}>"),))
        # (its host on another port is the trunk too: a provider knows the engine by its address)
        to_its_host = Step(301, headers=(("Contact", f"<sip:+19005551234@127.0.0.1:{trunk_party.port + 1}>"),))
        async with (
            trunk_party,
            FarParty((to_trunk,)) as far,
            FarParty((to_its_host,)) as other,
            running_service(tmp_path, monkeypatch, trunk=trunk) as service,
        ):
            for party, status in ((far, 302), (other, 301)):
                leg = Leg(service, party.uri)
                assert await leg.until_state("answered", "failed") == ["failed"]
                failure = leg.far.failure
                assert failure is not None and (failure.reason, failure.code) == ("rejected", status)
                assert "redirect to the trunk" in failure.text
                await leg.end()
            assert trunk_party.requests == []

            dialled = Leg(service, "+15557654321")
            assert (await dialled.until_state("answered", "failed"))[-1] == "answered", dialled.far.failure
            assert [r.uri for r in trunk_party.requests if r.method == "INVITE"] == [
                f"sip:+15557654321@127.0.0.1:{trunk_party.port}"
            ]
            assert dialled.far.target.from_ == CALLER_ID
            await dialled.end()

    asyncio.run(main())
