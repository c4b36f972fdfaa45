"""Messages the SIP core's unit tests share: an INVITE as a caller sends it, with extra headers."""

from __future__ import annotations

from swml_engine.transports.sip.message import Headers, Request


def invite(*headers: tuple[str, str]) -> Request:
    """An initial INVITE to sip:record@example.org (no To tag), with ``headers`` added after the base."""
    base = [
        ("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1"),
        ("From", "<sip:alice@example.com>;tag=a1"),
        ("To", "<sip:record@example.org>"),
        ("Call-ID", "c1"),
        ("CSeq", "1 INVITE"),
    ]
    return Request(headers=Headers([*base, *headers]), method="INVITE", uri="sip:record@example.org")
