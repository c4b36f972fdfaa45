"""Locating the SIP server a URI names (RFC 3263 §4): the transports, ports and names to try, in order.

- A URI whose host is an address, or that gives a port: that host and port (5060), over the transport
  it names (UDP when none); no SRV, as §4.2 says.
- Otherwise, with ``;transport=udp|tcp``: the SRV records of ``_sip._udp.DOMAIN`` / ``_sip._tcp.DOMAIN``.
  Without: the domain's NAPTR records for ``SIP+D2U`` and ``SIP+D2T`` (in order and preference; their
  replacement is an SRV name), or, when it has none we can use (we speak UDP and TCP, no TLS), the SRV
  records of ``_sip._udp`` then ``_sip._tcp``.
- No SRV records either: the domain itself, port 5060 (its A/AAAA records, looked up by the system's
  resolver as before, so /etc/hosts still counts). The same when DNS does not answer or fails (said in
  the log): a name /etc/hosts knows still works with no DNS server in reach. A name without a dot (a LAN
  host, ``localhost``), or under a special-use domain (``.invalid``, ``.localhost``, ``.local``), is no
  DNS domain a provider publishes: it goes there directly.

SRV targets come in priority order, weighted at random within a priority (RFC 2782); each is a name
whose addresses (:func:`addresses`) are looked up in DNS when the leg gets to it, so a leg fails over to
the next target (§4.3) without waiting for the rest to resolve.

What DNS answers is untrusted: at most :data:`MAX_RECORDS` NAPTR and :data:`MAX_TARGETS` SRV records are
used, a NAPTR record is followed one step only (to its SRV name: no chains of NAPTR records, so no loops),
and every look-up together must finish within :data:`~swml_engine.transports.sip.names.LOOKUP_TIMEOUT`.
The queries go out through dnspython's resolver on the threads of names.py (``names.off_loop``): an
answer may be 64 KB (a truncated one is asked again over TCP), whose parse would stall the event loop;
each query's own lifetime is the same deadline, so a thread is never held longer.

The DNS servers are those of /etc/resolv.conf, or, when :data:`SERVERS_VARIABLE` is set, the ones it
names (``ADDRESS[:PORT]``, comma-separated; read once): how the tests point the engine at a DNS server of
their own on loopback (docs/serve.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from dataclasses import dataclass, replace

import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
from dns.rdtypes.IN.NAPTR import NAPTR
from dns.rdtypes.IN.SRV import SRV

from swml_engine.transports.sip.names import LOOKUP_TIMEOUT, is_address, off_loop
from swml_engine.transports.sip.useragent import Transport

log = logging.getLogger(__name__)

#: NAPTR services we speak (RFC 3263 §4.1; ``SIPS+D2T`` needs TLS).
SERVICES = {"SIP+D2U": Transport.UDP, "SIP+D2T": Transport.TCP}
#: SRV owner names' prefixes per transport (RFC 3263 §4.1).
SRV_PREFIX = {Transport.UDP: "_sip._udp.", Transport.TCP: "_sip._tcp."}
#: The port when none is given and none comes from SRV.
DEFAULT_PORT = 5060
#: NAPTR records considered, and SRV targets used, per look-up (DNS answers are untrusted input).
MAX_RECORDS = 16
MAX_TARGETS = 16
#: Addresses tried per target.
MAX_ADDRESSES = 4
#: How a place says it was found (``Hop.found``) when it is the URI's host and port, and when it is the
#: domain on 5060 because it has no SRV records.
AS_GIVEN = "the URI"
NO_SRV = "A/AAAA (no SRV records)"
#: Special-use names no DNS server publishes records for (RFC 6761 §6.3, §6.4; RFC 6762 for .local):
#: asking would only wait on the resolver.
NOT_IN_DNS = (".invalid", ".localhost", ".local")
#: The environment variable naming the DNS servers to ask instead of /etc/resolv.conf's.
SERVERS_VARIABLE = "SWML_DNS_SERVERS"


@dataclass(frozen=True)
class Hop:
    """One place to send a request: over ``transport`` to ``host`` (a name or an address) on ``port``.
    ``srv``: a target an SRV record named (its addresses come from DNS, :func:`addresses`); else the
    URI's own host (looked up by the system's resolver). ``found`` says how, for logs."""

    transport: Transport
    host: str
    port: int
    srv: bool
    found: str


# --- the resolver -------------------------------------------------------------------------------------------


def servers_from(text: str) -> list[dns.nameserver.Nameserver]:
    """``ADDRESS[:PORT],...`` (IPv6 in brackets) → name servers; ValueError naming what is wrong."""
    found: list[dns.nameserver.Nameserver] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        host, port = item, "53"
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = rest.removeprefix(":") or "53"
        elif item.count(":") == 1:
            host, port = item.split(":")
        if not is_address(host) or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{SERVERS_VARIABLE}: {item!r} is not ADDRESS[:PORT] (IPv6 in brackets)")
        found.append(dns.nameserver.Do53Nameserver(host, int(port)))
    if not found:
        raise ValueError(f"{SERVERS_VARIABLE} names no server: give ADDRESS[:PORT],...")
    return found


class _Resolvers:
    """The one resolver per process, made at its first use (reading /etc/resolv.conf, or the variable)."""

    def __init__(self) -> None:
        self._made: dns.resolver.Resolver | None = None
        self._failed = ""

    def get(self) -> dns.resolver.Resolver | None:
        """The resolver; None when there is none to be had (said once in the log)."""
        if self._made is None and not self._failed:
            given = os.environ.get(SERVERS_VARIABLE)
            try:
                if given is not None:
                    made = dns.resolver.Resolver(configure=False)
                    made.nameservers = servers_from(given)
                else:
                    made = dns.resolver.Resolver()
            except (ValueError, OSError, dns.exception.DNSException) as e:
                self._failed = str(e) or type(e).__name__
                log.warning("no DNS resolver for SRV/NAPTR look-ups (%s): host names get A/AAAA only", self._failed)
                return None
            made.cache = None  # (each dial asks anew, as getaddrinfo did)
            self._made = made
        return self._made

    def reset(self) -> None:
        """Read the configuration again at the next use (tests that change the variable)."""
        self._made, self._failed = None, ""


RESOLVERS = _Resolvers()


async def _query(resolver: dns.resolver.Resolver, name: str, rdtype: str) -> list[object]:
    """The records of one type at ``name`` (absolute: no search domains); [] for none or no such name."""
    qname = dns.name.from_text(name)

    def ask() -> list[object]:
        try:
            answer = resolver.resolve(qname, rdtype, search=False, raise_on_no_answer=False, lifetime=LOOKUP_TIMEOUT)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        return list(answer.rrset) if answer.rrset is not None else []

    return await off_loop(ask, f"{rdtype} {name!r}")


def _name(value: dns.name.Name) -> str:
    return value.to_text(omit_final_dot=True)


# --- ordering -----------------------------------------------------------------------------------------------


def srv_order(records: list[SRV], rng: random.Random) -> list[SRV]:
    """RFC 2782's order: by priority; within one, by weight at random (a zero weight rarely first)."""
    ordered: list[SRV] = []
    for priority in sorted({r.priority for r in records}):
        left = sorted((r for r in records if r.priority == priority), key=lambda r: r.weight != 0)
        while left:
            pick = rng.randint(0, sum(r.weight for r in left))
            total = 0
            for i, r in enumerate(left):
                total += r.weight
                if total >= pick:
                    ordered.append(left.pop(i))
                    break
    return ordered


async def _srv(resolver: dns.resolver.Resolver, name: str, transport: Transport, rng: random.Random) -> list[Hop]:
    records = [r for r in await _query(resolver, name, "SRV") if isinstance(r, SRV)]
    # A target of "." says the service is decidedly not there (RFC 2782).
    usable = [r for r in records if r.target != dns.name.root and r.port > 0]
    usable = sorted(usable, key=lambda r: r.priority)[: MAX_TARGETS * 4]  # (the weighing is quadratic)
    return [Hop(transport, _name(r.target), r.port, True, f"SRV {name}") for r in srv_order(usable, rng)[:MAX_TARGETS]]


async def _naptr(resolver: dns.resolver.Resolver, domain: str, rng: random.Random) -> list[Hop]:
    records = [r for r in await _query(resolver, domain, "NAPTR") if isinstance(r, NAPTR)]
    hops: list[Hop] = []
    for r in sorted(records, key=lambda r: (r.order, r.preference))[:MAX_RECORDS]:
        transport = SERVICES.get(r.service.decode("ascii", "replace").upper())
        # Only "S" records lead to SRV names; a regexp is not ours to apply (RFC 3263 §4.1).
        if transport is None or r.flags.lower() != b"s" or r.regexp or r.replacement == dns.name.root:
            continue
        hops += await _srv(resolver, _name(r.replacement), transport, rng)
        if len(hops) >= MAX_TARGETS:
            break
    return hops[:MAX_TARGETS]


async def locate(
    host: str,
    port: int | None,
    transport: Transport | None,
    *,
    rng: random.Random | None = None,
    timeout: float = LOOKUP_TIMEOUT,
) -> list[Hop]:
    """Where a URI with this host, port (None: none given) and ``;transport`` (None: none named) goes,
    in the order to try (never empty: the host itself on 5060 when DNS gives nothing, or fails)."""
    named = transport or Transport.UDP
    domain = host.rstrip(".")
    if port is not None or is_address(host) or "." not in domain or domain.lower().endswith(NOT_IN_DNS):
        return [Hop(named, host, port or DEFAULT_PORT, False, AS_GIVEN)]
    fallback = Hop(named, host, DEFAULT_PORT, False, NO_SRV)
    resolver = RESOLVERS.get()
    if resolver is None:
        return [fallback]
    rng = rng or random.Random()
    try:
        async with asyncio.timeout(timeout):
            if transport is not None:
                hops = await _srv(resolver, SRV_PREFIX[transport] + domain, transport, rng)
            else:
                hops = await _naptr(resolver, domain, rng)
                for each in (Transport.UDP, Transport.TCP):
                    if not hops:
                        hops = await _srv(resolver, SRV_PREFIX[each] + domain, each, rng)
    except TimeoutError:
        why = f"no answer from DNS in {timeout:g} s"
    except (OSError, dns.exception.DNSException, ValueError) as e:
        why = str(e) or type(e).__name__
    else:
        return hops or [fallback]
    log.warning("NAPTR/SRV look-up for %r failed (%s): trying its A/AAAA records on port 5060", domain, why)
    return [replace(fallback, found=f"A/AAAA (the NAPTR/SRV look-up failed: {why})")]


def looked_up(host: str, transport: Transport | None) -> str:
    """What :func:`locate` asked DNS for a name, for the error when nothing answers to it."""
    if transport is not None:
        return f"SRV {SRV_PREFIX[transport]}{host}, A/AAAA {host}"
    return f"NAPTR {host}, SRV _sip._udp.{host} and _sip._tcp.{host}, A/AAAA {host}"


async def addresses(name: str, *, bound: str, timeout: float = LOOKUP_TIMEOUT) -> list[str]:
    """An SRV target's addresses from DNS that a SIP socket bound to ``bound`` reaches (A for IPv4 and a
    dual-stack ``::``, AAAA for IPv6), at most MAX_ADDRESSES; OSError saying why when there are none."""
    resolver = RESOLVERS.get()
    if resolver is None:
        raise OSError(f"no DNS resolver to look up {name!r}")
    v6 = ":" in bound
    kinds = [kind for kind, wanted in (("A", not v6 or bound == "::"), ("AAAA", v6)) if wanted]
    try:
        async with asyncio.timeout(timeout):
            found = await asyncio.gather(*(_query(resolver, name, kind) for kind in kinds))
    except TimeoutError:
        raise OSError(f"no answer from DNS for {name!r} in {timeout:g} s") from None
    except (dns.exception.DNSException, ValueError) as e:
        raise OSError(f"DNS look-up of {name!r} failed: {e or type(e).__name__}") from None
    ips = [str(getattr(r, "address", "")) for records in found for r in records][:MAX_ADDRESSES]
    if not ips:
        raise OSError(f"{name!r} has no {'/'.join(kinds)} record")
    return ips
