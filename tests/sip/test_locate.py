"""RFC 3263 look-ups (locate.py) against a real DNS server on loopback (tests/dns_server.py): which
records are asked for, and the order of the places a URI's request goes."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from dns.nameserver import Do53Nameserver

from dns_server import Serve, dns_zone_fixture  # noqa: F401  (the fixture)
from swml_engine.transports.sip import locate as locating
from swml_engine.transports.sip.locate import Hop, addresses, locate, looked_up
from swml_engine.transports.sip.useragent import Transport

UDP, TCP = Transport.UDP, Transport.TCP


def where(hops: list[Hop]) -> list[tuple[str, str, int]]:
    return [(h.transport.value, h.host, h.port) for h in hops]


def test_a_uri_with_a_port_or_an_address_goes_there_without_dns(dns_zone: Serve) -> None:
    dns = dns_zone({"_sip._udp.pbx.test": [("SRV", "0 0 5999 other.pbx.test")]})
    assert where(asyncio.run(locate("pbx.test", 5070, None))) == [("udp", "pbx.test", 5070)]
    assert where(asyncio.run(locate("127.0.0.1", None, TCP))) == [("tcp", "127.0.0.1", 5060)]
    assert where(asyncio.run(locate("::1", None, None))) == [("udp", "::1", 5060)]
    assert where(asyncio.run(locate("localhost", None, None))) == [("udp", "localhost", 5060)]  # no DNS domain
    # special-use names (RFC 6761, 6762): no DNS server has records for them, asking would only wait
    for name in ("no-such-host.invalid", "pbx.localhost", "printer.local"):
        assert where(asyncio.run(locate(name, None, None))) == [("udp", name, 5060)]
    assert dns.asked == []


def test_naptr_records_choose_the_transports_in_order_and_lead_to_srv(dns_zone: Serve) -> None:
    dns = dns_zone(
        {
            "pbx.test": [
                ("NAPTR", '5 50 "s" "SIPS+D2T" "" _sips._tcp.pbx.test.'),  # TLS: not ours
                ("NAPTR", '20 50 "s" "SIP+D2U" "" _sip._udp.pbx.test.'),
                ("NAPTR", '10 50 "s" "SIP+D2T" "" _sip._tcp.pbx.test.'),
                ("NAPTR", '15 50 "u" "E2U+sip" "!^.*$!sip:x@y!" .'),  # an ENUM-style rewrite: not followed
            ],
            "_sip._tcp.pbx.test": [("SRV", "0 0 5080 t.pbx.test.")],
            "_sip._udp.pbx.test": [("SRV", "0 0 5070 u.pbx.test.")],
            "t.pbx.test": [("A", "127.0.0.7")],
            "_sips._tcp.pbx.test": [("SRV", "0 0 5061 s.pbx.test.")],
        }
    )
    hops = asyncio.run(locate("pbx.test", None, None))
    assert where(hops) == [("tcp", "t.pbx.test", 5080), ("udp", "u.pbx.test", 5070)]
    assert all(h.srv for h in hops)
    assert ("_sips._tcp.pbx.test", "SRV") not in dns.asked
    assert asyncio.run(addresses("t.pbx.test", bound="::")) == ["127.0.0.7"]


def test_without_naptr_records_srv_for_udp_then_tcp(dns_zone: Serve) -> None:
    dns = dns_zone(
        {
            "pbx.test": [("A", "127.0.0.9")],
            "_sip._tcp.pbx.test": [("SRV", "0 0 5080 t.pbx.test.")],
        }
    )
    assert where(asyncio.run(locate("pbx.test", None, None))) == [("tcp", "t.pbx.test", 5080)]
    assert dns.asked == [("pbx.test", "NAPTR"), ("_sip._udp.pbx.test", "SRV"), ("_sip._tcp.pbx.test", "SRV")]


def test_a_transport_in_the_uri_asks_its_srv_only(dns_zone: Serve) -> None:
    dns = dns_zone(
        {
            "pbx.test": [("NAPTR", '10 50 "s" "SIP+D2U" "" _sip._udp.pbx.test.')],
            "_sip._udp.pbx.test": [("SRV", "0 0 5070 u.pbx.test.")],
            "_sip._tcp.pbx.test": [("SRV", "0 0 5080 t.pbx.test.")],
        }
    )
    assert where(asyncio.run(locate("pbx.test", None, TCP))) == [("tcp", "t.pbx.test", 5080)]
    assert dns.asked == [("_sip._tcp.pbx.test", "SRV")]


def test_srv_targets_go_by_priority_then_weight_at_random(dns_zone: Serve) -> None:
    dns_zone(
        {
            "_sip._udp.pbx.test": [
                ("SRV", "20 10 5001 late.pbx.test."),
                ("SRV", "10 0 5002 never-first.pbx.test."),
                ("SRV", "10 65535 5003 heavy.pbx.test."),
                ("SRV", "30 0 5004 down.pbx.test."),
                ("SRV", "5 0 5005 ."),  # "not available here": never used
            ]
        }
    )
    rng = random.Random(7)
    orders = {tuple(h.host for h in asyncio.run(locate("pbx.test", None, UDP, rng=rng))) for _ in range(30)}
    assert orders == {("heavy.pbx.test", "never-first.pbx.test", "late.pbx.test", "down.pbx.test")}

    dns_zone({"_sip._udp.even.test": [("SRV", "0 1 5001 a.even.test."), ("SRV", "0 1 5002 b.even.test.")]})
    firsts = {asyncio.run(locate("even.test", None, UDP, rng=rng))[0].host for _ in range(40)}
    assert firsts == {"a.even.test", "b.even.test"}


def test_a_domain_with_no_records_goes_to_its_own_name_on_5060(dns_zone: Serve) -> None:
    dns_zone({"bare.test": [("A", "127.0.0.1")]})
    [hop] = asyncio.run(locate("bare.test", None, None))
    assert (hop.transport, hop.host, hop.port, hop.srv) == (UDP, "bare.test", 5060, False)
    [hop] = asyncio.run(locate("nowhere.test", None, TCP))  # NXDOMAIN: the same, A/AAAA says the rest
    assert (hop.transport, hop.host, hop.port) == (TCP, "nowhere.test", 5060)
    assert looked_up("nowhere.test", None) == (
        "NAPTR nowhere.test, SRV _sip._udp.nowhere.test and _sip._tcp.nowhere.test, A/AAAA nowhere.test"
    )
    with pytest.raises(OSError, match=r"'nowhere\.test' has no A/AAAA record"):
        asyncio.run(addresses("nowhere.test", bound="::"))


def test_what_dns_answers_is_capped_and_a_silent_server_is_given_up_on_in_time(dns_zone: Serve) -> None:
    many = [("SRV", f"{i % 3} {i} {6000 + i} t{i}.pbx.test.") for i in range(100)]
    dns_zone(
        {"_sip._udp.pbx.test": many, "t1.pbx.test": [("A", f"127.0.0.{i}") for i in range(1, 30)]}, silent=("x.test",)
    )
    hops = asyncio.run(locate("pbx.test", None, UDP))
    assert len(hops) == locating.MAX_TARGETS
    assert all((h.port - 6000) % 3 == 0 for h in hops)  # all of priority 0
    assert len(asyncio.run(addresses("t1.pbx.test", bound="0.0.0.0"))) == locating.MAX_ADDRESSES
    start = time.monotonic()  # a DNS server that does not answer: the name itself, by the system's resolver
    [hop] = asyncio.run(locate("x.test", None, None, timeout=0.5))
    assert (hop.host, hop.port, hop.srv) == ("x.test", 5060, False) and "no answer from DNS in 0.5 s" in hop.found
    assert time.monotonic() - start < 3


def test_names_through_cnames_are_followed_and_a_cname_loop_is_a_failed_look_up(dns_zone: Serve) -> None:
    dns_zone(
        {
            "_sip._udp.pbx.test": [("CNAME", "_sip._udp.hosted.test.")],
            "_sip._udp.hosted.test": [("SRV", "0 0 5070 edge.hosted.test.")],
            "edge.hosted.test": [("CNAME", "box.hosted.test.")],
            "box.hosted.test": [("A", "127.0.0.5")],
            "_sip._udp.loop.test": [("CNAME", "_sip._udp.pool.test.")],
            "_sip._udp.pool.test": [("CNAME", "_sip._udp.loop.test.")],
        }
    )
    assert where(asyncio.run(locate("pbx.test", None, UDP))) == [("udp", "edge.hosted.test", 5070)]
    assert asyncio.run(addresses("edge.hosted.test", bound="0.0.0.0")) == ["127.0.0.5"]
    [hop] = asyncio.run(locate("loop.test", None, UDP))
    assert (hop.host, hop.srv) == ("loop.test", False) and "the NAPTR/SRV look-up failed" in hop.found


def test_the_servers_variable_is_read_as_addresses_and_ports() -> None:
    [one, two] = locating.servers_from("127.0.0.1:5353, [::1]:53")
    assert [(s.address, s.port) for s in (one, two) if isinstance(s, Do53Nameserver)] == [
        ("127.0.0.1", 5353),
        ("::1", 53),
    ]
    with pytest.raises(ValueError, match=r"'dns\.example:53' is not ADDRESS"):
        locating.servers_from("dns.example:53")
