"""Browser calls: the ``/api/phone`` WebSocket, where a browser's call is signalled (docs/phone.md).

One WebSocket is one call. The browser sends its SDP offer (every ICE candidate gathered: no
trickle); the service answers ``ringing`` with the call's id and runs the script on a
:class:`~swml_engine.transports.webrtc.WebRtcCallTransport`, which sends the SDP answer when the
script answers (or starts early media). Keypad digits come as ``dtmf`` messages; ``hangup`` — or the
WebSocket closing — ends the call, and a call that ends by itself says ``ended`` and closes the
WebSocket. Signalling rides on the HTTP port, so the HTTP server's guard has checked the token or the
session (and the page's Origin) before this module sees anything, and its connection caps count it.

What a page can make the service spend is bounded: one call per WebSocket, messages of at most
:data:`MAX_MESSAGE` (the HTTP server closes beyond), the offer within :data:`OFFER_TIMEOUT`, keypad
digits by the burst and by the second (:class:`DigitBudget`), and the call counts towards
``--max-calls`` like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Literal, Protocol

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from swml_engine.call import Call
from swml_engine.service.arrival import Arrival, CallRefused
from swml_engine.service.httpd import MAX_WS_MESSAGE
from swml_engine.transports.sip.call import SipReject
from swml_engine.transports.webrtc import (
    KEYPAD,
    MAX_PRESS_DIGITS,
    WebRtcCallTransport,
    WebRtcGone,
    WebRtcReject,
    WebRtcUnavailable,
)

log = logging.getLogger(__name__)

#: The largest message taken (an offer with its candidates is a few KiB): the HTTP server's WebSocket limit.
MAX_MESSAGE = MAX_WS_MESSAGE
#: Seconds the page has, once connected, to send its offer.
OFFER_TIMEOUT = 10.0
#: Digits in one ``dtmf`` message (the transport's own bound), and in any one second of a call: more than
#: fingers press.
MAX_DIGITS = MAX_PRESS_DIGITS
DIGITS_PER_SECOND = 20

#: WebSocket close codes (RFC 6455 §7.4.1).
NORMAL, POLICY, TRY_LATER, OURS = 1000, 1008, 1013, 1011

MessageType = Literal["offer", "dtmf", "hangup"]


class BadMessage(Exception):
    """The page sent something the protocol does not allow; the message says what, for a person."""


class SessionState(StrEnum):
    WAITING_OFFER = "waiting_offer"
    IN_CALL = "in_call"
    ENDED = "ended"


class PhoneService(Protocol):
    """What the signalling needs of the service."""

    def start_browser_call(self, arrival: Arrival) -> asyncio.Task[None]:
        """Run the call's script (raises :class:`CallRefused` when no call is taken now)."""
        ...

    #: The service's public address behind a one-to-one NAT (``--advertise``, as an IP address), offered
    #: to browsers beside its own (transports/webrtc.py's ``announced``); None without one.
    @property
    def browser_announce(self) -> str | None: ...


class DigitBudget:
    """At most :data:`DIGITS_PER_SECOND` digits a second on average, in bursts of :data:`MAX_DIGITS`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens = float(MAX_DIGITS)
        self._at = clock()

    def take(self, count: int) -> bool:
        now = self._clock()
        self._tokens = min(float(MAX_DIGITS), self._tokens + (now - self._at) * DIGITS_PER_SECOND)
        self._at = now
        if count > self._tokens:
            return False
        self._tokens -= count
        return True


def parse_message(text: str) -> dict[str, Any]:
    """One message of the page, checked: a JSON object with a known ``type`` and its fields."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):  # (RecursionError: arrays nested thousands deep, in 64 KiB)
        raise BadMessage("a message must be a JSON object") from None
    if not isinstance(message, dict):
        raise BadMessage("a message must be a JSON object")
    kind = message.get("type")
    if kind == "offer":
        sdp = message.get("sdp")
        if not isinstance(sdp, str) or not sdp.strip():
            raise BadMessage("offer.sdp: the SDP offer (a string) is missing")
    elif kind == "dtmf":
        digits = message.get("digits")
        if not isinstance(digits, str) or not digits:
            raise BadMessage("dtmf.digits: a string of keys is missing")
        if len(digits) > MAX_DIGITS:
            raise BadMessage(f"dtmf.digits: at most {MAX_DIGITS} keys in one message")
        wrong = sorted(set(digits) - KEYPAD)
        if wrong:
            raise BadMessage(f"dtmf.digits: {''.join(wrong)!r} is not a key (0-9 * # A-D)")
    elif kind != "hangup":
        raise BadMessage(f"type: {kind!r} is not a message the phone takes (offer, dtmf, hangup)")
    return message


class PhoneArrival(Arrival):
    """A browser's call on its way to the script."""

    def __init__(self, transport: WebRtcCallTransport, session: PhoneSession) -> None:
        self.transport = self.webrtc = transport
        self.session = session
        self.label = f"webrtc from {transport.peer}"

    async def prepare(self) -> None:
        try:
            await self.webrtc.prepare()
        except WebRtcUnavailable as e:  # ours, not the page's: no address a browser could reach
            raise SipReject(503, "Service Unavailable", f"browser calls cannot be taken here: {e}") from None
        except WebRtcGone as e:  # (as a SIP caller's CANCEL: no one is left to tell)
            raise SipReject(487, "Request Terminated", str(e)) from None
        except WebRtcReject as e:
            raise SipReject(488, "Not Acceptable Here", f"the offer cannot be taken: {e}") from None

    def info(self) -> dict[str, Any]:
        return {"from": f"webrtc:{self.webrtc.peer}", "to": "phone", "headers": []}

    def started(self, call: Call) -> None:
        call.events.emit("webrtc.offer", source=self.webrtc.peer)
        self.session.send({"type": "ringing", "call_id": call.call_id})

    def refuse(self, rejection: SipReject) -> None:
        self.session.fail(rejection.why, POLICY if rejection.status < 500 else OURS)

    def fail(self) -> None:
        self.session.fail("the call failed on the service's side (its log says why)", OURS)


class PhoneSession:
    """One WebSocket, one call: the page's messages in, the transport's and ours out (in order)."""

    def __init__(self, ws: WebSocket, service: PhoneService, *, offer_timeout: float = OFFER_TIMEOUT) -> None:
        self.ws = ws
        self.service = service
        self.offer_timeout = offer_timeout
        self.state = SessionState.WAITING_OFFER
        self.peer = ws.client.host if ws.client is not None else "?"
        #: What goes to the page, in order; None closes the WebSocket with ``_close_code``.
        self._outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._close_code = NORMAL
        self._said_end = False
        self.digits = DigitBudget()
        self.transport: WebRtcCallTransport | None = None

    # --- out ---------------------------------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        """Queue a message for the page (the transport's ``signal``: never blocks)."""
        if self._said_end:
            return
        if message.get("type") in ("ended", "error"):
            self._said_end = True
        self._outbox.put_nowait(message)

    def fail(self, why: str, code: int) -> None:
        """Tell the page what went wrong and close the WebSocket after it."""
        self.send({"type": "error", "message": why})
        self.close(code)

    def close(self, code: int = NORMAL) -> None:
        if self.state is not SessionState.ENDED:
            self.state = SessionState.ENDED
            self._close_code = code
            self._outbox.put_nowait(None)

    async def _sender(self) -> None:
        try:
            while (message := await self._outbox.get()) is not None:
                await self.ws.send_text(json.dumps(message))
            await self.ws.close(self._close_code)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the page went away: nothing more can be told to it

    # --- in ----------------------------------------------------------------------------------------

    async def _receive(self) -> dict[str, Any] | None:
        """The page's next message, checked; None when the WebSocket has closed."""
        packet = await self.ws.receive()
        if packet["type"] == "websocket.disconnect":
            return None
        text = packet.get("text")
        if text is None:
            raise BadMessage("messages are JSON text, not binary")
        if len(text) > MAX_MESSAGE:  # (the HTTP server closes sooner: this is the protocol's own word)
            raise BadMessage(f"a message is at most {MAX_MESSAGE} bytes")
        return parse_message(text)

    async def run(self) -> None:
        """The whole session: wait for the offer, run the call, relay the page's messages to it."""
        sender = asyncio.get_running_loop().create_task(self._sender(), name="phone sender")
        call: asyncio.Task[None] | None = None
        try:
            try:
                async with asyncio.timeout(self.offer_timeout):
                    first = await self._receive()
                if first is None:
                    return
                if first["type"] != "offer":
                    raise BadMessage("the first message must be the offer")
                self.transport = WebRtcCallTransport(
                    first["sdp"], self.send, peer=self.peer, announce=self.service.browser_announce
                )
                call = self.service.start_browser_call(PhoneArrival(self.transport, self))
                self.state = SessionState.IN_CALL
                await self._relay(call)
            except TimeoutError:
                self.fail(f"no offer within {self.offer_timeout:g} s", POLICY)
            except BadMessage as e:
                self.fail(str(e), POLICY)
            except CallRefused as e:
                self.fail(f"no call can be taken now: {e}", TRY_LATER)
            except WebSocketDisconnect:
                pass
        finally:
            if self.transport is not None:
                self.transport.remote_hangup()  # (nothing if the call has ended)
            if call is not None:
                await asyncio.shield(call)  # its recordings are finalised before the WebSocket goes
            self.close()
            if self.ws.application_state is WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(sender, 5)
            sender.cancel()

    async def _relay(self, call: asyncio.Task[None]) -> None:
        """The page's messages to the call until either ends."""
        assert self.transport is not None
        while not call.done():
            reading = asyncio.ensure_future(self._receive())
            await asyncio.wait({reading, call}, return_when=asyncio.FIRST_COMPLETED)
            if not reading.done():
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect):
                    await reading
                break
            message = reading.result()  # BadMessage: the caller tells the page
            if message is None or message["type"] == "hangup":
                self.transport.remote_hangup()
                break
            if message["type"] == "dtmf":
                digits = str(message["digits"])
                if not self.digits.take(len(digits)):
                    raise BadMessage(f"more than {DIGITS_PER_SECOND} keys a second")
                self.transport.press(digits)
            else:
                raise BadMessage("the offer was sent already: one call per WebSocket")


async def phone_session(ws: WebSocket, service: PhoneService) -> None:
    """The ``/api/phone`` route: the HTTP server's guard let the WebSocket in (token or session)."""
    if not ws.scope.get("state", {}).get("principal"):  # (never without the guard: a second lock)
        await ws.close(POLICY)
        return
    await ws.accept()
    await PhoneSession(ws, service).run()
