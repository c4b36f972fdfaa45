"""Registering with a registrar (``swml serve --register``), so a PBX or SIP provider routes calls here.

The REGISTER dialogue itself — digest challenges, refresh before the binding expires, 423 Interval
Too Brief, unregistering — is aiosipua's :class:`~aiosipua.registration.Registration`. This module
adds what a service needs around it: the registrar's name resolved, a Contact address the registrar
can reach (not 0.0.0.0), a retry with backoff when the registrar does not answer or refuses, one
log line per change of state, and the unregister on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass

from aiosipua.auth import SipDigestAuth
from aiosipua.header_codec import parse_uri
from aiosipua.registration import Registration, RegistrationState
from aiosipua.uac import SipUAC

from swml_engine.transports.sip.signalling import SipServer

log = logging.getLogger("swml.register")

#: Without an answer this long, a REGISTER is sent again.
ANSWER_WAIT = 32.0
#: After a refusal or silence, the next try waits this long, doubling up to RETRY_MAX.
RETRY_FIRST = 10.0
RETRY_MAX = 300.0


@dataclass(frozen=True)
class RegisterTarget:
    aor: str  # sip:alice@pbx.example.com
    host: str
    port: int
    username: str
    password: str | None
    expires: int = 300


def parse_target(uri: str, password: str | None, expires: int = 300) -> RegisterTarget:
    """``sip:USER@HOST[:PORT]`` → what to register; ValueError with what is wrong."""
    text = uri if uri.lower().startswith(("sip:", "sips:")) else f"sip:{uri}"
    try:
        parsed = parse_uri(text)
    except (ValueError, IndexError):
        raise ValueError(f"--register {uri!r}: expected sip:USER@HOST[:PORT]") from None
    if not parsed.user or not parsed.host:
        raise ValueError(f"--register {uri!r}: expected sip:USER@HOST[:PORT] (a user and a registrar host)")
    if not 30 <= expires <= 86400:
        raise ValueError(f"--register-expires {expires}: expected 30..86400 seconds")
    host = parsed.host.strip("[]")
    aor = f"sip:{parsed.user}@{parsed.host}"
    return RegisterTarget(aor, host, parsed.port or 5060, parsed.user, password, expires)


def _reaching_address(host: str, port: int, family: int) -> str:
    """The local address the kernel would send from to reach ``host`` (no packet is sent)."""
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((host, port))
        return str(s.getsockname()[0])


class SipRegistration:
    """Keeps the service registered at one registrar for as long as it runs."""

    def __init__(self, server: SipServer, target: RegisterTarget, user_agent: str) -> None:
        self.server = server
        self.target = target
        self.user_agent = user_agent
        self.state = "starting"
        self.detail = ""
        self._reg: Registration | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._keep())

    def status(self) -> dict[str, object]:
        reg = self._reg
        return {
            "aor": self.target.aor,
            "state": self.state,
            "detail": self.detail,
            "expires": reg.granted_expires if reg is not None and self.state == "registered" else 0,
        }

    def _set(self, state: str, detail: str = "") -> None:
        if (state, detail) != (self.state, self.detail):
            level = logging.WARNING if state in ("failed", "expired") else logging.INFO
            log.log(level, "%s at %s:%s: %s %s", self.target.aor, self.target.host, self.target.port, state, detail)
        self.state, self.detail = state, detail
        self._changed.set()

    async def _registration(self) -> Registration:
        t = self.target
        loop = asyncio.get_running_loop()
        local_host, local_port = self.server.transport.local_addr[:2]
        family = socket.AF_INET6 if ":" in local_host else socket.AF_INET
        infos = await loop.getaddrinfo(t.host, t.port, family=family, type=socket.SOCK_DGRAM)
        registrar = (str(infos[0][4][0]), t.port)
        if self.server.advertise:  # --advertise: behind NAT, the registrar must be given the public address
            local_host = self.server.advertise
        elif local_host in ("0.0.0.0", "::"):
            local_host = _reaching_address(registrar[0], registrar[1], family)
        contact_host = f"[{local_host}]" if ":" in local_host else local_host
        uac = SipUAC(self.server.transport, advertised_addr=(local_host, local_port))
        self.server.uac = uac
        reg = Registration(
            uac,
            t.aor,
            registrar,
            expires=t.expires,
            auth=SipDigestAuth(t.username, t.password) if t.password is not None else None,
            contact_uri=f"sip:{t.username}@{contact_host}:{local_port}",
            user_agent=self.user_agent,
        )
        reg.on_registered = lambda r: self._set("registered", f"for {r.granted_expires} s")
        reg.on_failed = lambda r, status, reason: self._set("failed", f"{status} {reason}")
        reg.on_expired = lambda r: self._set("expired", "the binding ran out without a refresh")
        return reg

    async def _keep(self) -> None:
        """Register; when refused, expired or unanswered, try again with backoff."""
        retry = RETRY_FIRST
        while True:
            try:
                if self._reg is None:
                    self._reg = await self._registration()
                self._reg.register()
                self._set("registering")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wait_while("registering"), ANSWER_WAIT)
                if self.state == "registering":
                    self._set("failed", f"no answer from the registrar within {ANSWER_WAIT:.0f} s")
            except OSError as e:  # the name does not resolve, the network is down
                self._set("failed", str(e))
            if self.state == "registered":
                retry = RETRY_FIRST
                # aiosipua refreshes the binding itself; come back when that fails or it expires
                await self._wait_while("registered")
                continue
            await asyncio.sleep(retry)
            retry = min(retry * 2, RETRY_MAX)

    async def _wait_while(self, state: str) -> None:
        while self.state == state:
            self._changed.clear()
            await self._changed.wait()

    async def stop(self, wait: float = 2.0) -> None:
        """Unregister (Expires: 0) and stop retrying."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        reg = self._reg
        if reg is None or reg.state != RegistrationState.REGISTERED:
            return
        with contextlib.suppress(OSError, RuntimeError):
            reg.unregister()
            deadline = asyncio.get_running_loop().time() + wait
            # aiosipua marks the binding UNREGISTERED when the registrar answers (challenges included)
            while reg.state == RegistrationState.REGISTERED and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
        if reg.state.value == "unregistered":  # (a value compare: mypy narrows the enum after the loop)
            self._set("unregistered")
        if self.server.uac is not None:
            self.server.uac.close()
