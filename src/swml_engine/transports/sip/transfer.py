"""A SIP caller's transfer by REFER on ``swml serve``: the asyncio side of refer.py's :class:`Referral`.

``SipCallTransport.refer`` (the ``sip_refer`` method's :meth:`Transport.refer`) runs one
:class:`LegTransfer`: it waits for the caller's ACK (a REFER goes only in a confirmed dialog: our 2xx
is resent until the ACK, for 64*T1 at most), starts the referral in the core, and turns each
:class:`ReferUpdate` the service hands it (``SipCallTransport.refer_update``) into the engine's
:class:`ReferStatus` until the outcome. Cancelled (the call ended, nobody waits any more), it stops the
referral: later NOTIFYs get 481.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from swml_engine.transports.base import ReferStatus
from swml_engine.transports.sip.auth import Credentials
from swml_engine.transports.sip.refer import ReferCore, ReferError, Referral, ReferState, ReferUpdate
from swml_engine.transports.sip.uri import UriError, parse_uri
from swml_engine.transports.sip.useragent import ServerCall, UasState
from swml_engine.vocabulary import ReferState as Step

#: How often the wait for the caller's ACK looks (s): the ACK normally follows our 200 within a round trip.
ACK_POLL = 0.02

#: The core's referral states as the engine names them (SENT is never told: nothing was answered yet).
_STEPS: dict[ReferState, Step] = {
    ReferState.SENT: "pending",
    ReferState.ACCEPTED: "pending",
    ReferState.TRANSFERRED: "success",
    ReferState.FAILED: "failed",
}


class SipSide(Protocol):
    """What a transfer needs of the endpoint: the core, its clock, and a flush after acting on it."""

    @property
    def ua(self) -> ReferCore: ...

    @property
    def now(self) -> float: ...

    def flush(self) -> None: ...


class LegTransfer:
    """One transfer of the caller of ``sip`` (a call we answered); ``progress`` hears each step."""

    def __init__(self, endpoint: SipSide, sip: ServerCall, progress: Callable[[ReferStatus], None]) -> None:
        self.endpoint = endpoint
        self.sip = sip
        self.progress = progress
        self.referral: Referral | None = None
        self._outcome: asyncio.Future[ReferStatus] | None = None

    async def run(self, to_uri: str, credentials: tuple[str, str] | None) -> ReferStatus:
        """The transfer's outcome (``success`` or ``failed``)."""
        try:
            uri = parse_uri(to_uri)
        except UriError as e:
            return self._told(ReferStatus("failed", reason=f"{to_uri[:40]!r} is not a SIP URI: {e}"))
        ua = self.endpoint.ua
        acked_by = self.endpoint.now + ua.timing.timeout
        while self.sip.state is UasState.ACCEPTED and self.endpoint.now < acked_by:
            await asyncio.sleep(ACK_POLL)  # our 200 is out; the dialog is confirmed by the caller's ACK
        try:
            referral = Referral(ua, self.sip, uri, credentials=Credentials(*credentials) if credentials else None)
        except ReferError as e:
            return self._told(ReferStatus("failed", reason=str(e)))
        self.referral = referral
        self._outcome = asyncio.get_running_loop().create_future()
        referral.start(self.endpoint.now)
        self.endpoint.flush()  # (its updates come back through the service: update())
        try:
            return await self._outcome
        finally:
            if not referral.done:
                referral.stop(self.endpoint.now)
                self.endpoint.flush()

    def update(self, event: ReferUpdate) -> None:
        """A step of the core's referral (the service routes the caller's :class:`ReferUpdate` here)."""
        outcome = self._outcome
        if event.referral is not self.referral or outcome is None or outcome.done():
            return  # another referral's, or after the outcome (a "stopped" after a cancelled wait)
        status = ReferStatus(_STEPS[event.state], event.referral.refer_code, event.referral.notify_code, event.reason)
        self.progress(status)
        if event.done:
            outcome.set_result(status)

    def _told(self, status: ReferStatus) -> ReferStatus:
        self.progress(status)
        return status
