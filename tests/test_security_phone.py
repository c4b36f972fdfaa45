"""What a signed-in page (or a bearer token's holder) may send the /api/phone WebSocket of a real
`swml serve` (docs/security.md, *WebSockets*): a message the JSON reader cannot take is a protocol error
the page is told of, never an exception in the server."""

from __future__ import annotations

import asyncio
from pathlib import Path

from interop.peers import engines, free_port
from swml_engine.service.phone import POLICY
from webrtc.websocket import PhoneSocket

TOKEN = "phone-security-token-0123456789"
SCRIPT = "version: 1.0.0\nsections:\n  main:\n    - answer\n    - hangup\n"


def test_json_nested_thousands_deep_is_a_bad_message_not_a_traceback(tmp_path: Path) -> None:
    """32,000 nested arrays fit a 64 KiB message; reading them raised RecursionError, which no handler
    took: a traceback in the log for each such message, and the page closed without a word."""
    http = free_port()
    with engines(tmp_path) as start:
        eng = start(SCRIPT, "--http", f"127.0.0.1:{http}", "--api-token", TOKEN)

        async def send(text: str) -> tuple[list[dict[str, object]], int]:
            sock = await PhoneSocket.open(http, {"Authorization": f"Bearer {TOKEN}"})
            await sock.send_raw(text)
            messages, closed = await sock.until_closed()
            return messages, closed.code

        for text in ("[" * 32000 + "]" * 32000, '{"type": "offer", "sdp": ' + "[" * 20000 + "]" * 20000 + "}"):
            messages, code = asyncio.run(send(text))
            assert code == POLICY and messages == [{"type": "error", "message": "a message must be a JSON object"}]
        assert "Traceback" not in eng.log() and "RecursionError" not in eng.log()
