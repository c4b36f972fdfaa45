"""service/events_stream.py without a server: a slow client's bounded queue and its last message, and
event logs read only by complete lines."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from swml_engine.service.events_stream import (
    CONNECTED,
    KEEP_ALIVE,
    EventFeed,
    LogTail,
    Subscriber,
    feed_messages,
    sse,
)
from swml_engine.service.index import SqliteIndex


def test_a_client_too_slow_for_its_queue_is_emptied_and_told_once() -> None:
    async def go() -> None:
        sub = Subscriber(limit=3)
        sub.put([{"type": "a"}, {"type": "b"}])
        assert await sub.take(1) == [{"type": "a"}, {"type": "b"}]
        sub.put([{"type": "c"}, {"type": "d"}])
        sub.put([{"type": "e"}, {"type": "f"}])  # 4 would wait: over the limit
        assert sub.dropped is not None and "3 events" in sub.dropped
        assert await sub.take(1) == []  # nothing kept for it
        sub.put([{"type": "g"}])
        assert not sub.queue
        idle = Subscriber()
        assert await idle.take(0.01) is None  # (the stream then sends a keep-alive)

    asyncio.run(go())


def test_a_log_is_read_by_complete_lines_from_where_the_last_read_ended(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"t": 0, "type": "call.state", "state": "ringing"}\n{"t": 0.1, "ty')
    tail = LogTail(path)
    assert tail.read() == [{"t": 0, "type": "call.state", "state": "ringing"}]
    assert tail.read() == []  # the half line waits
    with path.open("a") as f:
        f.write('pe": "dtmf"}\nnot json\n')
    assert tail.read() == [{"t": 0.1, "type": "dtmf"}]
    assert (
        sse({"type": "x", "text": "a\nb"}) == b"data: " + json.dumps({"type": "x", "text": "a\nb"}).encode() + b"\n\n"
    )


def test_the_feed_keeps_an_idle_stream_alive_and_follows_a_call_that_appears(tmp_path: Path) -> None:
    async def go() -> None:
        calls = tmp_path / "calls"
        calls.mkdir()
        index = SqliteIndex(tmp_path / "index.sqlite3")
        feed = EventFeed(calls, lambda: index, lambda: False)
        messages = feed_messages(feed, keepalive=0.05)
        assert await anext(messages) == CONNECTED
        assert await anext(messages) == KEEP_ALIVE  # nothing happens: a comment, not silence

        lines = [
            {"t": 0, "type": "call.state", "state": "ringing"},
            {"t": 0.5, "type": "call.state", "state": "answered"},
            {"t": 2.0, "type": "call.state", "state": "ended", "reason": "hangup"},
        ]
        (calls / "c1.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
        index.put_call({"call_id": "c1", "state": "ended", "start_time": time.time()}, "http://w")
        got: list[bytes] = []
        async with asyncio.timeout(30):
            while len([m for m in got if m.startswith(b"data:")]) < 1 or b'"ended"' not in b"".join(got):
                got.append(await anext(messages))
        streamed = [json.loads(line[6:]) for m in got for line in m.split(b"\n\n") if line.startswith(b"data: ")]
        assert streamed == [{**e, "call_id": "c1"} for e in lines]
        await messages.aclose()  # type: ignore[attr-defined]
        await index.close()

    asyncio.run(go())
