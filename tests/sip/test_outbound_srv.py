"""Legs to a domain (RFC 3263): the service in the test's event loop asks a DNS server on loopback
(tests/dns_server.py) where ``sip:bob@pbx.test`` is, and places the call there; a place that does not
answer, or answers 503, is passed over for the next one the SRV records name."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from dns_server import Serve, dns_zone_fixture  # noqa: F401  (the fixture)
from swml_engine.service.server import Service
from swml_engine.transports.sip.outbound import parse_trunk

from .far_party import FarParty, Step, running_service, until
from .test_outbound import Leg, run


def srv(name: str, *records: tuple[int, int, str]) -> dict[str, list[tuple[str, str]]]:
    """SRV records (priority, port, target) at ``name``, and each target's A record (loopback)."""
    zone = {name: [("SRV", f"{priority} 10 {port} {target}.") for priority, port, target in records]}
    zone.update({target: [("A", "127.0.0.1")] for _, _, target in records})
    return zone


def test_a_domain_is_called_where_its_srv_records_say(
    dns_zone: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(service: Service) -> None:
        async with FarParty() as party:
            dns_zone(srv("_sip._udp.pbx.test", (10, party.port, "edge.pbx.test")))
            leg = Leg(service, "sip:bob@pbx.test")
            assert await leg.until_state("answered", "failed") == ["ringing", "answered"], leg.far.failure
            assert party.invite is not None and party.invite.uri == "sip:bob@pbx.test"  # whom we call, as given
            await leg.end()

    run(body, tmp_path, monkeypatch)


def test_a_place_that_refuses_the_connection_or_answers_503_is_passed_over(
    dns_zone: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(service: Service) -> None:
        with socket.socket() as dead:  # a port bound and not listening: the connection is refused at once
            dead.bind(("127.0.0.1", 0))
            async with FarParty((Step(503, reason="Overloaded"),)) as busy, FarParty() as party:
                zone = srv("_sip._tcp.pbx.test", (10, dead.getsockname()[1], "dead.pbx.test"))
                zone.update(
                    srv("_sip._udp.pbx.test", (10, busy.port, "busy.pbx.test"), (20, party.port, "up.pbx.test"))
                )
                zone["pbx.test"] = [
                    ("NAPTR", '10 50 "s" "SIP+D2T" "" _sip._tcp.pbx.test.'),
                    ("NAPTR", '20 50 "s" "SIP+D2U" "" _sip._udp.pbx.test.'),
                ]
                dns_zone(zone)
                leg = Leg(service, "sip:bob@pbx.test")
                assert await leg.until_state("answered", "failed") == ["ringing", "answered"], leg.far.failure
                assert busy.methods() == ["INVITE", "ACK"]  # its 503 acknowledged, and not called again
                await leg.end()

    run(body, tmp_path, monkeypatch)


def test_when_every_place_fails_the_leg_fails_as_the_last_one_did(
    dns_zone: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(service: Service) -> None:
        async with FarParty((Step(503),)) as one, FarParty((Step(503),)) as two:
            dns_zone(srv("_sip._udp.pbx.test", (10, one.port, "one.pbx.test"), (20, two.port, "two.pbx.test")))
            leg = Leg(service, "sip:bob@pbx.test")
            assert await leg.until_state("failed") == ["failed"]
            failure = leg.far.failure
            assert failure is not None and (failure.reason, failure.code) == ("rejected", 503)
            assert await until(lambda: one.methods() == two.methods() == ["INVITE", "ACK"]), two.methods()
            await leg.end()

    run(body, tmp_path, monkeypatch)


def test_a_redirect_to_a_domain_is_located_as_well(
    dns_zone: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(service: Service) -> None:
        async with FarParty() as there:
            dns_zone(srv("_sip._udp.moved.test", (10, there.port, "edge.moved.test")))
            async with FarParty((Step(302, headers=(("Contact", "<sip:bob@moved.test>"),)),)) as here:
                leg = Leg(service, here.uri)
                assert await leg.until_state("answered", "failed") == ["ringing", "answered"], leg.far.failure
                assert there.invite is not None and there.invite.uri == "sip:bob@moved.test"
                await leg.end()

    run(body, tmp_path, monkeypatch)


def test_a_domain_with_no_records_fails_unreachable_naming_what_was_looked_up(
    dns_zone: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(service: Service) -> None:
        dns = dns_zone({})
        leg = Leg(service, "sip:bob@nothing.test")
        assert await leg.until_state("failed") == ["failed"]
        failure = leg.far.failure
        assert failure is not None and failure.reason == "unreachable"
        assert "nothing.test" in failure.text and "looked up: NAPTR nothing.test, SRV _sip._udp" in failure.text
        assert ("_sip._tcp.nothing.test", "SRV") in dns.asked
        await leg.end()

    run(body, tmp_path, monkeypatch)


def test_the_trunk_may_be_a_domain_its_srv_records_locate(
    dns_zone: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        async with FarParty() as party:
            dns_zone(srv("_sip._udp.trunk.test", (10, party.port, "sbc.trunk.test")))
            async with running_service(tmp_path, monkeypatch, trunk=parse_trunk("sip:trunk.test")) as service:
                leg = Leg(service, "+15557654321")
                assert await leg.until_state("answered", "failed") == ["ringing", "answered"], leg.far.failure
                assert party.invite is not None and party.invite.uri == "sip:+15557654321@trunk.test"
                await leg.end()

    asyncio.run(main())


def test_a_redirect_to_an_address_the_trunks_srv_records_name_is_not_followed(
    dns_zone: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        async with FarParty() as trunk_party:
            dns_zone(srv("_sip._udp.trunk.test", (10, trunk_party.port, "sbc.trunk.test")))
            to_trunk = Step(302, headers=(("Contact", f"<sip:+19005551234@127.0.0.1:{trunk_party.port}>"),))
            async with (
                FarParty((to_trunk,)) as far,
                running_service(tmp_path, monkeypatch, trunk=parse_trunk("sip:trunk.test")) as service,
            ):
                leg = Leg(service, far.uri)
                assert await leg.until_state("answered", "failed") == ["failed"]
                failure = leg.far.failure
                assert failure is not None and (failure.reason, failure.code) == ("rejected", 302)
                assert "redirect to the trunk" in failure.text and trunk_party.requests == []
                await leg.end()

    asyncio.run(main())
