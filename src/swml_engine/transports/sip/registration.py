"""Registering with a registrar (``swml serve --register``), so a PBX or SIP provider routes calls here.

The REGISTER dialogue itself — digest challenges, refresh before the binding expires, 423 Interval Too
Brief, retries with backoff, unregistering — is the SIP core's :class:`~swml_engine.transports.sip.register.Binding`.
This module adds what a service needs around it: the registrar located (a name without a port by its
``_sip._udp`` SRV records, RFC 3263: the first place they name; else its A/AAAA), a Contact address the
registrar can reach (not 0.0.0.0), one log line per change of state, the status /health shows, and the
unregister on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass

from swml_engine.transports.sip import names
from swml_engine.transports.sip.auth import Credentials
from swml_engine.transports.sip.endpoint import Endpoint
from swml_engine.transports.sip.locate import addresses, locate
from swml_engine.transports.sip.register import (
    Binding,
    Registered,
    RegistrationExpired,
    RegistrationFailed,
    Unregistered,
)
from swml_engine.transports.sip.uri import UriError, parse_uri
from swml_engine.transports.sip.useragent import SipEvent, Target, Transport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegisterTarget:
    aor: str  # sip:alice@pbx.example.com
    host: str
    port: int
    username: str
    password: str | None
    expires: int = 300
    #: Whether the URI gave the port (if not, a name's SRV records may give it).
    port_given: bool = True


def parse_target(uri: str, password: str | None, expires: int = 300) -> RegisterTarget:
    """``sip:USER@HOST[:PORT]`` → what to register; ValueError with what is wrong."""
    text = uri if uri.lower().startswith(("sip:", "sips:")) else f"sip:{uri}"
    try:
        parsed = parse_uri(text)
    except UriError:
        raise ValueError(f"--register {uri!r}: expected sip:USER@HOST[:PORT]") from None
    if not parsed.user or not parsed.host:
        raise ValueError(f"--register {uri!r}: expected sip:USER@HOST[:PORT] (a user and a registrar host)")
    if not 30 <= expires <= 86400:
        raise ValueError(f"--register-expires {expires}: expected 30..86400 seconds")
    host = parsed.host.strip("[]")
    aor = f"sip:{parsed.user}@{parsed.host}"
    return RegisterTarget(aor, host, parsed.port or 5060, parsed.user, password, expires, parsed.port is not None)


class SipRegistration:
    """Keeps the service registered at one registrar for as long as it runs."""

    def __init__(self, endpoint: Endpoint, target: RegisterTarget, user_agent: str) -> None:
        self.endpoint = endpoint
        self.target = target
        self.user_agent = user_agent
        self.state = "starting"
        #: Where the REGISTERs go: the URI's host and port, or the place its SRV records name.
        self.registrar = (target.host, target.port)
        self.detail = ""
        self.binding: Binding | None = None
        self._task: asyncio.Task[None] | None = None
        self._over = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._start())

    def status(self) -> dict[str, object]:
        binding = self.binding
        expires = binding.granted if binding is not None and self.state == "registered" else 0
        return {"aor": self.target.aor, "state": self.state, "detail": self.detail, "expires": expires}

    def _set(self, state: str, detail: str = "") -> None:
        if (state, detail) != (self.state, self.detail):
            level = logging.WARNING if state in ("failed", "expired") else logging.INFO
            log.log(level, "%s at %s:%s: %s %s", self.target.aor, *self.registrar, state, detail)
        self.state, self.detail = state, detail

    async def _start(self) -> None:
        """Find the address our Contact gives (the one that reaches the registrar), then register."""
        t = self.target
        try:
            self.registrar = host, port = await self._located(t)
            local = self.endpoint.advertise or await self._reaching(host, port)
        except OSError as e:  # the name does not resolve, the network is down: the binding cannot start
            self._set("failed", f"cannot reach {t.host}: {e}")
            return
        credentials = Credentials(t.username, t.password) if t.password is not None else None
        self.binding = Binding(
            self.endpoint.ua,
            t.aor,
            Target(Transport.UDP, host, port),
            (local, self.endpoint.local_addr[1]),
            expires=t.expires,
            credentials=credentials,
            user_agent=self.user_agent,
        )
        self._set("registering")
        self.binding.start(self.endpoint.now)
        self.endpoint.flush()

    async def _located(self, t: RegisterTarget) -> tuple[str, int]:
        """The registrar's host (a name, or an SRV target's address) and port: REGISTER goes over UDP, so
        a name without a port is looked up as ``_sip._udp`` SRV (no NAPTR to choose the transport)."""
        [hop, *_] = await locate(t.host, t.port if t.port_given else None, Transport.UDP)
        if not hop.srv:
            return hop.host, hop.port
        return (await addresses(hop.host, bound=self.endpoint.local_addr[0]))[0], hop.port

    async def _reaching(self, host: str, port: int) -> str:
        bound = self.endpoint.local_addr[0]
        family = socket.AF_INET6 if ":" in bound and bound != "::" else socket.AF_UNSPEC
        infos = await names.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM)
        return self.endpoint.local_host(str(infos[0][4][0]))

    def on_event(self, event: SipEvent) -> None:
        """The binding's events (the service passes them on)."""
        if isinstance(event, Registered):
            self._set("registered", f"for {event.expires} s")
        elif isinstance(event, RegistrationFailed):
            self._set("failed", event.detail)
        elif isinstance(event, RegistrationExpired):
            self._set("expired", "the binding ran out without a refresh")
        elif isinstance(event, Unregistered):
            self._set("unregistered" if event.removed else "failed", event.detail)
            self._over.set()

    async def stop(self, wait: float = 2.0) -> None:
        """Unregister (Expires: 0) and stop retrying."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        binding = self.binding
        if binding is None:
            return
        binding.unregister(self.endpoint.now)
        self.endpoint.flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._over.wait(), wait)
        self.endpoint.ua.remove_timed(binding)
