"""Per-source limits count an IPv6 sender by its /64 (connections.py's ``source_of``): one host or site
holds a whole /64, and counted address by address it never reached a limit. (Loopback offers one IPv6
address, so these check the gate and the limiter that the HTTP and SIP listeners use, as they use them.)"""

from __future__ import annotations

from swml_engine.connections import ConnectionGate, ConnectionLimits, GuessLimiter


def test_connections_from_one_ipv6_64_share_the_per_address_cap() -> None:
    gate = ConnectionGate(ConnectionLimits(max_per_source=4, reserve=0))
    assert [gate.admit(f"2001:db8:0:7::{i:x}") for i in range(1, 5)] == [None] * 4
    refused = gate.admit("2001:db8:0:7:ffff:ffff:ffff:1")
    assert refused == "4 connections open from 2001:db8:0:7::/64, the per-address limit"
    assert gate.admit("2001:db8:0:8::1") is None  # the next /64 is another source
    gate.release("2001:db8:0:7::3")
    assert gate.admit("2001:db8:0:7::99") is None
    # An IPv4 client of a dual-stack socket is its IPv4 address, as on an IPv4 socket.
    assert [gate.admit(a) for a in ("192.0.2.1", "::ffff:192.0.2.1", "192.0.2.1", "::ffff:192.0.2.1")] == [None] * 4
    assert gate.admit("192.0.2.1") is not None and gate.admit("192.0.2.2") is None


def test_wrong_guesses_from_one_ipv6_64_share_one_limit() -> None:
    limiter = GuessLimiter(failures=10, window=60.0)
    for i in range(10):  # a new address of the same /64 for each guess
        assert limiter.wait(f"2001:db8::{i + 1:x}", 100.0) == 0.0
        limiter.failed(f"2001:db8::{i + 1:x}", 100.0)
    assert limiter.wait("2001:db8::abcd", 101.0) == 59.0
    assert limiter.wait("2001:db8:1::1", 101.0) == 0.0
    assert limiter.wait("2001:db8::abcd", 160.0) == 0.0  # the minute is over
