"""`connect` to a SIP domain on `swml serve` (RFC 3263): the engine asks a DNS server on loopback
(tests/dns_server.py, named to it by SWML_DNS_SERVERS) where `sip:far@far.test.domain` is, and sipp is
where its SRV records say. What is checked is what a user would: the far sipp got the call and it was
bridged (sipp's own scenario checks the INVITE, ACK and BYE), connect's outcome."""

from __future__ import annotations

import socket
from pathlib import Path

from dns_server import Serve, dns_zone_fixture  # noqa: F401  (the fixture)

from .peers import scenario, sipp_errors
from .test_outbound import CALLER_TONE, CONNECT, FAR_TONE, EngineFactory, FarSipp, caller, connect_states, far_parties
from .test_outbound import pulses as write_pulses

DOMAIN = "far.test.domain"


def answering(tmp_path: Path) -> FarSipp:
    far_pcap = tmp_path / "far.pcap"
    write_pulses(far_pcap, "PCMU", FAR_TONE, 3.0)
    media = "0\na=rtpmap:0 PCMU/8000"
    xml = scenario("far_answers", offer="0 8 9 101", ring=300, far_media=media, pcap=str(far_pcap), bye_timeout=40000)
    return FarSipp(tmp_path / "far", xml)


def call_in(tmp_path: Path, engine: EngineFactory, far: FarSipp, *others: FarSipp) -> list[object]:
    """A sipp caller the engine connects to sip:far@DOMAIN; both ends well; connect's states."""
    eng = engine(CONNECT.format(connect=f"{{to: 'sip:far@{DOMAIN}'}}", after=0))
    caller_pcap = tmp_path / "caller.pcap"
    write_pulses(caller_pcap, "PCMA", CALLER_TONE, 4.0)
    with far_parties(far, *others):
        res = caller(tmp_path, eng, caller_pcap, 2.0)
        assert res.returncode == 0, res.stdout[-2000:] + sipp_errors(tmp_path / "caller") + eng.log()[-3000:]
        for party in (far, *others):
            assert party.wait() == 0, party.errors() + eng.log()[-3000:]
    [events] = eng.call_events()
    answered = [e for e in events if e["type"] == "connect.leg" and e.get("state") == "answered"]
    assert [e.get("to") for e in answered] == [f"sip:far@{DOMAIN}"], answered
    return connect_states(eng)


def test_a_domain_is_reached_where_its_srv_record_points(
    dns_zone: Serve, engine: EngineFactory, tmp_path: Path
) -> None:
    far = answering(tmp_path)
    dns = dns_zone(
        {f"_sip._udp.{DOMAIN}": [("SRV", f"10 10 {far.port} sbc.{DOMAIN}.")], f"sbc.{DOMAIN}": [("A", "127.0.0.1")]}
    )
    assert "connected" in call_in(tmp_path, engine, far)
    assert (DOMAIN, "NAPTR") in dns.asked and (f"_sip._udp.{DOMAIN}", "SRV") in dns.asked


def test_a_dead_place_and_a_503_are_passed_over_for_the_next_srv_target(
    dns_zone: Serve, engine: EngineFactory, tmp_path: Path
) -> None:
    far = answering(tmp_path)
    busy = FarSipp(tmp_path / "busy", scenario("far_refuses", status=503, phrase="Service Unavailable"))
    with socket.socket() as dead:  # TCP, bound and not listening: the connection is refused at once
        dead.bind(("127.0.0.1", 0))
        zone = {
            DOMAIN: [
                ("NAPTR", f'10 50 "s" "SIP+D2T" "" _sip._tcp.{DOMAIN}.'),
                ("NAPTR", f'20 50 "s" "SIP+D2U" "" _sip._udp.{DOMAIN}.'),
            ],
            f"_sip._tcp.{DOMAIN}": [("SRV", f"10 10 {dead.getsockname()[1]} sbc.{DOMAIN}.")],
            f"_sip._udp.{DOMAIN}": [
                ("SRV", f"10 10 {busy.port} sbc.{DOMAIN}."),
                ("SRV", f"20 10 {far.port} sbc.{DOMAIN}."),
            ],
            f"sbc.{DOMAIN}": [("A", "127.0.0.1")],
        }
        dns_zone(zone)
        assert "connected" in call_in(tmp_path, engine, far, busy)
