"""SIP signalling on aiosipua, with the gaps DESIGN §4 lists closed in this thin layer of ours.

- Retransmissions: every response we send is remembered by its server transaction (Call-ID, top Via
  branch, CSeq); a request that matches one again is a retransmission and gets the same response,
  never a second call (INVITE) or a 500 (in-dialog requests aiosipua sees as a CSeq replay).
- TCP: responses go back over the connection the request came on (RFC 3261 §18.2.2), not to the
  Via address, which a TCP client rarely listens on.
- BYE from our side goes along the route set or to the peer's Contact (RFC 3261 §12.2.1.1), carries
  a Reason, and is retransmitted over UDP until answered.
- Several processes may share the SIP port (SO_REUSEPORT) for ``--workers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiosipua.dialog import dialog_matches
from aiosipua.header_codec import parse_uri
from aiosipua.incoming_call import IncomingCall
from aiosipua.message import SipMessage, SipRequest, SipResponse
from aiosipua.transaction import T1, T2, TIMER_H
from aiosipua.transport import (
    TcpSipTransport,
    UdpSipTransport,
    _read_sip_message,
    _stamp_via_received,
)
from aiosipua.uas import SipUAS

log = logging.getLogger(__name__)

TxnKey = tuple[str, str, str]  # (Call-ID, top Via branch, CSeq as written)


def transaction_key(msg: SipMessage) -> TxnKey | None:
    vias = msg.headers.get("via")
    cseq = msg.headers.get_first("cseq")
    call_id = msg.headers.get_first("call-id")
    if not vias or not cseq or not call_id:
        return None
    branch = ""
    for part in vias[0].split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.lower() == "branch":
            branch = value
    return (call_id, branch, " ".join(cseq.split()).upper())


@dataclass
class ReplyCache:
    """Last response per server transaction, kept for Timer H (32 s) to answer retransmissions."""

    responses: dict[TxnKey, tuple[SipResponse, float]] = field(default_factory=dict)
    sources: dict[TxnKey, tuple[str, int]] = field(default_factory=dict)
    _swept: float = 0.0

    def remember(self, response: SipResponse) -> None:
        key = transaction_key(response)
        if key is not None:
            self.responses[key] = (response, time.monotonic())
        self._sweep()

    def lookup(self, request: SipRequest) -> SipResponse | None:
        key = transaction_key(request)
        hit = self.responses.get(key) if key is not None else None
        return hit[0] if hit is not None else None

    def _sweep(self) -> None:
        now = time.monotonic()
        if now - self._swept < 5.0:
            return
        self._swept = now
        for key in [k for k, (_, t) in self.responses.items() if now - t > TIMER_H]:
            self.responses.pop(key, None)
            self.sources.pop(key, None)


class _Dispatch:
    """Parsing as aiosipua's, but junk is counted and logged once per source, not a traceback per packet."""

    on_message: Callable[[SipRequest | SipResponse, tuple[str, int]], None] | None
    malformed: int = 0
    current_source: tuple[str, int] | None = None

    def __init__(self, local_addr: tuple[str, int], *, reuse_port: bool = False) -> None:
        super().__init__(local_addr=local_addr)  # type: ignore[call-arg]  # (the aiosipua transport's)
        self.replies = ReplyCache()
        self.reuse_port = reuse_port
        self._noisy: set[str] = set()

    def _dispatch(self, data: bytes, addr: tuple[str, int]) -> None:
        if not data.strip():
            return  # CRLF keep-alive (RFC 5626)
        try:
            msg = SipMessage.parse(data)
            if isinstance(msg, SipRequest):
                _stamp_via_received(msg, addr)
        except Exception as e:  # any parse failure of hostile bytes: drop the packet
            self.malformed += 1
            if addr[0] not in self._noisy and len(self._noisy) < 1000:
                self._noisy.add(addr[0])
                log.warning("unparsable SIP from %s:%s dropped (%s); further ones are counted", *addr, e)
            return
        if self.on_message is not None:
            self.current_source = addr  # where a reply to this message goes on a connection
            try:
                self.on_message(msg, addr)
            except Exception:
                log.exception("error handling %s from %s:%s", getattr(msg, "method", "response"), *addr)


class _UdpProtocol(asyncio.DatagramProtocol):
    # aiosipua's asserts an asyncio.DatagramTransport, which uvloop's UDP transport is not.
    def __init__(self, owner: UdpTransport) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.owner._dispatch(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP/UDP socket error: %s", exc)


class UdpTransport(_Dispatch, UdpSipTransport):
    """aiosipua's UDP transport, remembering responses and able to share its port with other workers."""

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self), local_addr=self.local_addr, reuse_port=self.reuse_port or None
        )
        self._udp_transport = transport
        self.local_addr = transport.get_extra_info("sockname")[:2]

    def send_reply(self, response: SipResponse) -> None:
        self.replies.remember(response)
        try:
            super().send_reply(response)
        except (ValueError, OSError) as e:  # no usable Via: nowhere to answer
            log.debug("SIP response not sent: %s", e)


class TcpTransport(_Dispatch, TcpSipTransport):
    """aiosipua's TCP transport; responses return over the request's own connection."""

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve_connection, host=self.local_addr[0], port=self.local_addr[1], reuse_port=self.reuse_port
        )
        self.local_addr = self._server.sockets[0].getsockname()[:2]

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # As aiosipua's, but a malformed frame only drops this connection, with a log line.
        peer = writer.get_extra_info("peername")
        addr = (str(peer[0]), int(peer[1])) if peer else ("0.0.0.0", 0)
        self._connections[addr] = (reader, writer)
        try:
            while True:
                data = await _read_sip_message(reader)
                if data is None:
                    break
                self._dispatch(data, addr)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, UnicodeError) as e:
            log.info("SIP/TCP connection from %s:%s dropped: %s", *addr, e or type(e).__name__)
        finally:
            self._connections.pop(addr, None)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 5)

    def send_reply(self, response: SipResponse) -> None:
        self.replies.remember(response)
        key = transaction_key(response)
        source = self.replies.sources.get(key) if key is not None else None
        for addr in (source, self.current_source):
            if addr is not None and addr in self._connections:
                self.send(response, addr)
                return
        try:
            super().send_reply(response)
        except (ValueError, RuntimeError, OSError) as e:  # the connection is gone: nowhere to answer
            log.debug("SIP response not sent: %s", e)


SipTransportT = UdpTransport | TcpTransport


def uri_target(uri: str) -> tuple[str, int] | None:
    """(host, port) a request to ``uri`` goes to (port 5060 when the URI has none)."""
    try:
        parsed = parse_uri(uri.strip().lstrip("<").split(">")[0])
    except (ValueError, IndexError):
        return None
    if not parsed.host:
        return None
    return (parsed.host.strip("[]"), parsed.port or 5060)


class SipServer(SipUAS):
    """One listening transport (UDP or TCP) and its calls."""

    def __init__(self, transport: SipTransportT, *, user_agent: str) -> None:
        super().__init__(transport, user_agent=user_agent)
        self.sip_transport = transport
        self.protocol = "TCP" if isinstance(transport, TcpTransport) else "UDP"
        #: BYE retransmission tasks by Call-ID, ended by the BYE's response.
        self._byes: dict[str, asyncio.Task[None]] = {}
        #: Called with every ACK of a call's dialog (a delayed offer's answer comes in one).
        self.on_ack: Callable[[IncomingCall, SipRequest], None] | None = None

    # --- incoming ---------------------------------------------------------------------------------

    def _on_message(self, msg: SipRequest | SipResponse, addr: tuple[str, int]) -> None:
        if isinstance(msg, SipResponse):
            cseq = msg.headers.get_first("cseq") or ""
            if cseq.upper().endswith("BYE") and msg.status_code >= 200:
                task = self._byes.pop(msg.call_id or "", None)
                if task is not None:
                    task.cancel()
            elif self.uac is not None:  # our REGISTERs' answers (swml serve --register)
                try:
                    self.uac.handle_response(msg, addr)
                except (ValueError, IndexError, KeyError) as e:
                    log.info("bad response from %s:%s: %s", addr[0], addr[1], e)
            return
        super()._on_message(msg, addr)

    def _handle_request(self, request: SipRequest, addr: tuple[str, int]) -> None:
        key = transaction_key(request)
        if key is not None:
            self.sip_transport.replies.sources[key] = addr
        acked: IncomingCall | None = None
        if request.method.upper() == "ACK":
            call = self._calls.get(request.call_id or "")
            with contextlib.suppress(ValueError, IndexError, KeyError):  # hostile headers: not our dialog
                if call is not None and dialog_matches(call.dialog, request):
                    acked = call
        else:
            cached = self.sip_transport.replies.lookup(request)
            if cached is not None:  # a retransmission: same answer again, nothing new happens
                self.transport.send_reply(cached)
                return
        try:
            super()._handle_request(request, addr)
        except (ValueError, IndexError, KeyError) as e:
            # aiosipua's header accessors raise on garbage (a CSeq of letters, say): answer 400.
            log.info("bad %s from %s:%s: %s", request.method, addr[0], addr[1], e)
            with contextlib.suppress(Exception):
                self._send_error(request, 400, "Bad Request")
        if acked is not None and self.on_ack is not None:
            self.on_ack(acked, request)

    # --- outgoing ---------------------------------------------------------------------------------

    def send_provisional(self, call: IncomingCall, status: int, reason: str, sdp: str | None = None) -> None:
        call._send_response(status, reason, body=sdp or "", content_type="application/sdp" if sdp else "")

    def reply_in_dialog(
        self, call: IncomingCall, request: SipRequest, status: int, reason: str, sdp: str | None = None
    ) -> None:
        """Answer an in-dialog request (re-INVITE) on the call's dialog."""
        host, port = self.transport.local_addr
        resp = call.dialog.create_response(request, status, reason, contact=f"<sip:{host}:{port}>")
        if sdp:
            resp.text = sdp
            resp.headers.set_single("Content-Type", "application/sdp")
        if self.user_agent:
            resp.headers.set_single("User-Agent", self.user_agent)
        self.transport.send_reply(resp)

    def bye(self, call: IncomingCall, reason: str | None = None) -> None:
        """End an answered call from our side."""
        host, port = self.transport.local_addr
        request = call.dialog.create_request("BYE", via_host=host, via_port=port, via_transport=self.protocol)
        call.dialog.terminate()
        call._stop_retransmissions()
        self._calls.pop(call.call_id, None)
        if reason:
            request.headers.set_single("Reason", f'SIP;cause=200;text="{reason}"')
        if self.user_agent:
            request.headers.set_single("User-Agent", self.user_agent)
        dest = self._request_destination(call)
        try:
            self.transport.send(request, dest)
        except (RuntimeError, OSError) as e:
            log.info("BYE for %s not sent to %s:%s: %s", call.call_id, dest[0], dest[1], e)
            return
        if self.protocol == "UDP":
            self._byes[call.call_id] = asyncio.get_running_loop().create_task(self._retransmit(request, dest))

    def _request_destination(self, call: IncomingCall) -> tuple[str, int]:
        if self.protocol == "TCP":
            return call.source_addr  # the connection the dialog lives on
        dialog = call.dialog
        if dialog.route_set:
            target = uri_target(dialog.route_set[0])
            if target is not None:
                return target
        target = uri_target(dialog.remote_target) if dialog.remote_target else None
        return target or call.source_addr

    async def _retransmit(self, request: SipRequest, dest: tuple[str, int]) -> None:
        interval, elapsed = T1, 0.0
        with contextlib.suppress(asyncio.CancelledError):
            while elapsed < TIMER_H:
                await asyncio.sleep(interval)
                elapsed += interval
                with contextlib.suppress(OSError, RuntimeError):
                    self.transport.send(request, dest)
                interval = min(interval * 2, T2)
        self._byes.pop(request.call_id or "", None)

    async def stop(self) -> None:
        for task in self._byes.values():
            task.cancel()
        self._byes.clear()
        await super().stop()
