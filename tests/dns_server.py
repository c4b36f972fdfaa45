"""A small authoritative DNS server for tests: real DNS over UDP on loopback, answering from a zone the
test writes (``{"_sip._udp.pbx.test": [("SRV", "0 0 5070 a.pbx.test")], "a.pbx.test": [("A", "127.0.0.1")]}``).

A name in the zone with none of the type asked gets an empty answer (NOERROR), a name not in it NXDOMAIN,
a CNAME its chain (followed in the zone) and the records at its end;
``silent`` names get no answer at all (a server that never answers). It runs on a thread of its own;
``address`` is what ``SWML_DNS_SERVERS`` takes (``with DnsServer(zone) as dns: ...``). ``asked`` lists the
questions it got, as ``(name, type)``.

The ``dns_zone`` fixture (import it into a test module: ``from dns_server import dns_zone_fixture  # noqa: F401``)
starts one for a zone and points this process's look-ups at it (locate.py's ``RESOLVERS``); ``swml serve``
processes a test starts find it by the variable, which the fixture sets.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from types import TracebackType

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from swml_engine.transports.sip.locate import RESOLVERS, SERVERS_VARIABLE

Zone = dict[str, list[tuple[str, str]]]
#: Links of a CNAME chain the server puts in one answer.
MAX_CHAIN = 30


class DnsServer:
    def __init__(self, zone: Zone, *, silent: tuple[str, ...] = ()) -> None:
        self.zone = {name.lower().rstrip("."): records for name, records in zone.items()}
        self.silent = {name.lower().rstrip(".") for name in silent}
        self.asked: list[tuple[str, str]] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.05)  # (how soon a stop is seen)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)

    @property
    def address(self) -> str:
        host, port = self._sock.getsockname()
        return f"{host}:{port}"

    def __enter__(self) -> DnsServer:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = self.answer(data)
            if reply is not None:
                self._sock.sendto(reply, peer)

    def answer(self, data: bytes) -> bytes | None:
        query = dns.message.from_wire(data)
        [question] = query.question
        name = question.name.to_text(omit_final_dot=True).lower()
        kind = dns.rdatatype.to_text(question.rdtype)
        self.asked.append((name, kind))
        if name in self.silent:
            return None
        reply = dns.message.make_response(query)
        reply.flags |= dns.flags.AA
        owner = question.name
        # A CNAME is followed within the zone, as a recursive server would, its links in the answer (a
        # loop gives a chain as long as MAX_CHAIN).
        for _ in range(MAX_CHAIN):
            records = self.zone.get(owner.to_text(omit_final_dot=True).lower())
            aliases = [text for rtype, text in records or () if rtype == "CNAME"]
            if not aliases or kind == "CNAME":
                break
            reply.answer.append(dns.rrset.from_text_list(owner, 60, dns.rdataclass.IN, "CNAME", aliases[:1]))
            owner = dns.name.from_text(aliases[0])
        if records is None:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        else:
            texts = [text for rtype, text in records if rtype == kind]
            if texts:
                reply.answer.append(dns.rrset.from_text_list(owner, 60, dns.rdataclass.IN, kind, texts))
        return reply.to_wire()


#: What the ``dns_zone`` fixture gives: ``dns_zone(zone, silent=...)``.
Serve = Callable[..., DnsServer]


@pytest.fixture(name="dns_zone")
def dns_zone_fixture(monkeypatch: pytest.MonkeyPatch) -> Iterator[Serve]:
    """``dns_zone(zone, silent=...)``: a DNS server for the zone, the one the engine asks from then on."""
    servers: list[DnsServer] = []

    def start(zone: Zone, *, silent: tuple[str, ...] = ()) -> DnsServer:
        server = DnsServer(zone, silent=silent).__enter__()
        servers.append(server)
        monkeypatch.setenv(SERVERS_VARIABLE, server.address)
        RESOLVERS.reset()
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)
    RESOLVERS.reset()
