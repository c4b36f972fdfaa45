"""A small asyncio WebSocket client (wsproto over a TCP stream): the page's side of /api/phone."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from conftest import PATIENCE


@dataclass
class Refused(Exception):
    """The handshake was answered with an HTTP status instead of 101."""

    status: int
    body: bytes


@dataclass
class Closed:
    code: int
    reason: str


class PhoneSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ws: WSConnection) -> None:
        self._reader, self._writer, self._ws = reader, writer, ws
        self._events: list[Event] = []
        self._text = ""

    @classmethod
    async def open(cls, port: int, headers: dict[str, str], path: str = "/api/phone") -> PhoneSocket:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        ws = WSConnection(ConnectionType.CLIENT)
        extra = [(k.encode(), v.encode()) for k, v in headers.items()]
        writer.write(ws.send(Request(host=f"127.0.0.1:{port}", target=path, extra_headers=extra)))
        sock = cls(reader, writer, ws)
        event = await sock._next()
        if isinstance(event, RejectConnection):
            body = b""
            while event.has_body:
                data = await sock._next()
                assert isinstance(data, RejectData)
                body += data.data
                if data.body_finished:
                    break
            writer.close()
            raise Refused(event.status_code, body)
        assert isinstance(event, AcceptConnection), event
        return sock

    async def _next(self) -> Event:
        while not self._events:
            data = await asyncio.wait_for(self._reader.read(65536), PATIENCE)
            self._ws.receive_data(data or None)
            self._events.extend(self._ws.events())
        return self._events.pop(0)

    async def send(self, message: dict[str, Any]) -> None:
        self._writer.write(self._ws.send(Message(data=json.dumps(message))))
        await self._writer.drain()

    async def send_raw(self, text: str) -> None:
        self._writer.write(self._ws.send(Message(data=text)))
        await self._writer.drain()

    async def receive(self) -> dict[str, Any] | Closed:
        """The server's next message, or how it closed."""
        while True:
            event = await self._next()
            if isinstance(event, TextMessage):
                self._text += event.data
                if event.message_finished:
                    text, self._text = self._text, ""
                    return dict(json.loads(text))
            elif isinstance(event, Ping):
                self._writer.write(self._ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                with_reply = self._ws.send(event.response())
                self._writer.write(with_reply)
                self._writer.close()
                return Closed(event.code, event.reason or "")

    async def until_closed(self) -> tuple[list[dict[str, Any]], Closed]:
        """Every message the server sends from now until it closes, and the close."""
        messages: list[dict[str, Any]] = []
        while not isinstance(got := await self.receive(), Closed):
            messages.append(got)
        return messages, got

    async def flood_pings(self, total: int) -> None:
        """Send ``total`` bytes of pings, reading nothing meanwhile (a page that stopped reading its socket)."""
        chunk = self._ws.send(Ping(payload=b"p" * 125)) * 1000
        for _ in range(total // len(chunk) + 1):
            self._writer.write(chunk)
            await asyncio.wait_for(self._writer.drain(), PATIENCE)

    async def abort(self) -> None:
        """Drop the connection without a closing handshake (a tab closed, a network gone)."""
        self._writer.transport.abort()

    async def close(self) -> None:
        self._writer.write(self._ws.send(CloseConnection(code=1000)))
        await self._writer.drain()
        self._writer.close()
