"""The service's index on both backends — a SQLite file and a real PostgreSQL server
(tests/pg_server.py) — through one interface: rows written and read back, rebuilt from metadata files,
writes after close, rows that wait while the index cannot be written, migrations, start errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pg_server import PgServer, pg_server  # noqa: F401  (the session fixture)
from s3_server import S3Server, s3_server_fixture  # noqa: F401  (the session fixture)
from swml_engine.service import migrations
from swml_engine.service.index import (
    LOST_AFTER,
    MAX_TEXT,
    Index,
    IndexOpenError,
    IndexState,
    IndexUnavailable,
    RecordingQuery,
    SqliteIndex,
    index_url,
    keep_alive,
    local_documents,
)
from swml_engine.service.indexes import open_index

Opener = Callable[[str], Awaitable[Index]]  # a node's name → that node's index on the shared database


@pytest.fixture(params=["sqlite", "postgresql"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens indexes on one fresh database of the backend (several nodes may open it)."""
    url = request.getfixturevalue("pg_server").database() if request.param == "postgresql" else None

    async def open_(node: str) -> Index:
        return await open_index(url, tmp_path, node)

    yield open_


def run(work: Awaitable[Any]) -> Any:
    return asyncio.run(work)  # type: ignore[arg-type]


def meta(
    recording_id: str, call_id: str = "c1", state: str = "finished", start: float = 1.0, **more: Any
) -> dict[str, Any]:
    end = None if state == "recording" else start + 5
    return {
        "recording_id": recording_id,
        "call_id": call_id,
        "state": state,
        "start_time": start,
        "end_time": end,
        **more,
    }


async def settle(index: Index) -> None:
    """Until the queued writes are written (PostgreSQL writes on a task of its own)."""
    for _ in range(500):
        if index.pending == 0 and index.state is IndexState.OPEN:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"index still has {index.pending} row(s) waiting ({index.state})")


def test_rows_written_and_read_back(opener: Opener) -> None:
    async def go() -> None:
        index = await opener("node-a")
        index.put_recording(meta("r1", start=1.0))
        index.put_recording(meta("r2", start=2.0, call_id="c2"))
        index.put_recording(meta("r3", start=3.0, state="recording"))
        index.put_recording(meta("r1", start=1.0, size=99))  # the newest for a row wins
        index.put_call({"call_id": "c1", "state": "ended", "start_time": 1.0}, "http://w1")
        index.put_call({"call_id": "c2", "state": "answered", "start_time": 2.0}, "http://w2")
        await settle(index)
        assert [r["recording_id"] for r in await index.recordings()] == ["r3", "r2", "r1"]
        assert [r["recording_id"] for r in await index.recordings(state="finished", limit=1, offset=1)] == ["r1"]
        assert [r["recording_id"] for r in await index.recordings(call_id="c2")] == ["r2"]
        assert await index.recording("r1") == meta("r1", start=1.0, size=99)
        assert await index.recording("nope") is None
        assert await index.call("c2") == ({"call_id": "c2", "state": "answered", "start_time": 2.0}, "http://w2")
        assert [c["call_id"] for c in await index.calls()] == ["c2", "c1"]
        assert [c["call_id"] for c in await index.calls(state="ended")] == ["c1"]
        assert (await index.count_calls(), await index.count_calls(state="ended")) == (2, 1)  # (the list's total)
        index.delete_recording("r2")
        index.delete_recording("r2")  # twice (two nodes deleting one recording): harmless
        await settle(index)
        assert await index.recording("r2") is None
        assert [r["recording_id"] for r in await index.ended_before(7.0, limit=10, own=True)] == ["r1"]
        # What a request can put in a read finds nothing, never an error (PostgreSQL refuses NUL in a value).
        assert await index.recordings(call_id="c1\x00") == [] and await index.recording("r1\x00") is None
        assert await index.call("c\x00") is None and await index.calls(state="\x00") == []
        assert await index.recordings(offset=10**30) == [] and await index.calls(offset=10**30) == []
        # A hand-edited metadata file with odd values is indexed, and the rows behind it too.
        index.put_recording(meta("odd", call_id={"not": "text"}, state="fin\x00ished", start=10**400))  # type: ignore[arg-type]
        index.put_recording(meta("after"))
        await settle(index)
        assert {r["recording_id"] for r in await index.recordings(state="finished")} == {"r1", "odd", "after"}
        await asyncio.to_thread(index.put_recording, meta("threaded"))  # (written on another thread)
        await settle(index)
        assert await index.recording("threaded") == meta("threaded")
        await index.close()

    run(go())


def test_what_a_caller_wrote_is_kept_to_a_bound_in_a_calls_row(opener: Opener) -> None:
    """A caller writes its Call-ID, From and To, up to a 64 KB message: a call's row keeps each to
    MAX_TEXT characters (a legitimate one is far shorter), not tens of kilobytes per call."""

    async def go() -> None:
        index = await opener("node-a")
        long = "x" * 60_000
        index.put_call(
            {"call_id": "c1", "state": "ended", "start_time": 1.0, "sip_call_id": long, "from": long, "to": "sip:b@h"},
            "w",
        )
        await settle(index)
        found = await index.call("c1")
        assert found is not None
        row, _ = found
        assert row["sip_call_id"] == row["from"] == "x" * MAX_TEXT and row["to"] == "sip:b@h"
        assert [c["from"] for c in await index.calls()] == ["x" * MAX_TEXT]
        await index.close()

    run(go())


def test_every_node_lists_every_nodes_rows_and_ends_only_its_own_orphaned_calls(opener: Opener) -> None:
    """Two nodes on one index (PostgreSQL: two servers; SQLite: two services on one data directory)."""

    async def go() -> None:
        a, b = await opener("node-a"), await opener("node-b")
        a.put_recording(meta("ra", call_id="ca"))
        b.put_recording(meta("rb", call_id="cb", start=2.0))
        a.put_call({"call_id": "ca", "state": "answered", "start_time": 1.0}, "http://a")
        b.put_call({"call_id": "cb", "state": "answered", "start_time": 2.0}, "http://b")
        await settle(a)
        await settle(b)
        for index in (a, b):
            assert [r["recording_id"] for r in await index.recordings()] == ["rb", "ra"]
            assert (await index.call("ca"), await index.call("cb")) == (
                ({"call_id": "ca", "state": "answered", "start_time": 1.0}, "http://a"),
                ({"call_id": "cb", "state": "answered", "start_time": 2.0}, "http://b"),
            )
        assert await a.end_orphaned_calls(before=10.0) == 1  # node a restarted: its own call is over
        ended = await b.call("ca")
        assert ended is not None and ended[0]["state"] == "ended" and ended[0]["end_reason"] == "service_stopped"
        still = await b.call("cb")
        assert still is not None and still[0]["state"] == "answered"  # node b's call goes on
        # Retention on local storage: each node finds only the recordings it wrote.
        assert [r["recording_id"] for r in await b.ended_before(100.0, limit=10, own=True)] == ["rb"]
        assert [r["recording_id"] for r in await b.ended_before(100.0, limit=10, own=False)] == ["ra", "rb"]
        await a.close()
        await b.close()

    run(go())


def test_rebuild_from_the_metadata_files_gives_the_same_rows(opener: Opener, tmp_path: Path) -> None:
    root = tmp_path / "recordings"
    root.mkdir()
    docs = [meta(f"r{i}", call_id=f"c{i % 3}", start=float(i), format="wav") for i in range(7)]
    for doc in docs:
        (root / f"{doc['recording_id']}.json").write_text(json.dumps(doc))
    (root / "broken.json").write_text("{not json")
    (root / "other.json").write_text(json.dumps(["not", "a", "recording"]))

    async def go() -> None:
        live = await opener("node-a")  # written as the recordings were made
        for doc in docs:
            live.put_recording(doc)
        await settle(live)
        expected = await live.recordings()
        await live.close()
        rebuilt = await open_index(None, tmp_path / "fresh", "node-a") if isinstance(live, SqliteIndex) else None
        if rebuilt is None:  # PostgreSQL: empty the table, then rebuild into it
            rebuilt = await opener("node-a")
            for doc in docs:
                rebuilt.delete_recording(doc["recording_id"])
            await settle(rebuilt)
            assert await rebuilt.recordings() == []
        assert await rebuilt.rebuild(local_documents(root)) == 7
        assert await rebuilt.recordings() == expected
        assert await rebuilt.rebuild(local_documents(root)) == 7  # again: nothing changes
        assert await rebuilt.recordings() == expected
        await rebuilt.close()

    (tmp_path / "fresh").mkdir()
    run(go())


def test_writes_after_close_are_dropped_with_a_debug_line(
    opener: Opener, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 11.19: a call ending past the stop's grace period wrote to the closed index: "call index:
    Cannot operate on a closed database" (an error line at every such stop)."""

    async def go() -> None:
        index = await opener("n")
        index.put_call({"call_id": "c1", "state": "answered", "start_time": 1.0}, "w")
        await index.close()  # what waits is written first
        with caplog.at_level(logging.DEBUG, logger="swml_engine.service.index"):
            index.put_call({"call_id": "c1", "state": "ended", "start_time": 1.0}, "w")
            index.put_recording({"recording_id": "r1", "call_id": "c1", "state": "finished"})
            index.delete_recording("r1")
        assert index.state is IndexState.CLOSED
        lines = [r for r in caplog.records if r.name == "swml_engine.service.index"]
        assert [r.levelno for r in lines] == [logging.DEBUG] * 3
        assert "index closed: call c1 not written" in lines[0].getMessage()
        reopened = await opener("n")
        assert await reopened.call("c1") == ({"call_id": "c1", "state": "answered", "start_time": 1.0}, "w")
        await reopened.close()

    run(go())


def test_rows_wait_while_the_file_is_locked_and_are_written_with_the_next_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A write that fails (here another process's exclusive lock, as a backup tool or an open `sqlite3`
    shell holds it) never raises: the row waits and is written with the next write that succeeds."""
    path = tmp_path / "index.sqlite3"
    index = SqliteIndex(path, busy_timeout=0.05, retry_interval=0.0)  # (no waiting in a test)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    index.put_recording({"recording_id": "r1", "call_id": "c1", "state": "recording", "start_time": 1.0})
    index.put_recording({"recording_id": "r1", "call_id": "c1", "state": "finished", "start_time": 1.0})
    assert index.state is IndexState.BEHIND and index.pending == 1
    assert any("cannot be written" in r.getMessage() for r in caplog.records)
    other.execute("ROLLBACK")
    other.close()
    index.put_call({"call_id": "c1", "state": "ended", "start_time": 1.0}, "w")
    assert index.state is IndexState.OPEN and index.pending == 0
    assert run(index.recording("r1")) == {"recording_id": "r1", "call_id": "c1", "state": "finished", "start_time": 1.0}
    run(index.close())


def test_an_index_file_an_older_version_made_is_migrated_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite3"
    old = sqlite3.connect(path)
    for statement in migrations.load("sqlite")[0].statements:  # the schema before numbered migrations
        old.execute(statement)
    old.execute("INSERT INTO recordings VALUES ('r1', 'c1', 'finished', 1.0, ?)", (json.dumps(meta("r1")),))
    old.commit()
    old.close()
    index = SqliteIndex(path, node="n")
    assert run(index.recording("r1")) == meta("r1")
    assert [r["recording_id"] for r in run(index.ended_before(10.0, limit=5, own=False))] == ["r1"]  # end_time filled
    run(index.close())
    versions = sqlite3.connect(path).execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()
    assert versions == [(m.version,) for m in migrations.load("sqlite")]


def test_two_nodes_starting_at_once_apply_the_migrations_once(pg_server: PgServer) -> None:  # noqa: F811
    import psycopg

    url = pg_server.database()

    async def go() -> None:
        # Without the advisory lock the second CREATE TABLE fails ("already exists") and its node with it.
        nodes = await asyncio.gather(*(open_index(url, Path("."), f"n{i}") for i in range(3)))
        for node in nodes:
            await node.close()

    run(go())
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
    assert rows == [(m.version, m.name) for m in migrations.load("postgresql")]


def test_a_bad_index_is_a_start_error_naming_the_option(pg_server: PgServer) -> None:  # noqa: F811
    with pytest.raises(ValueError, match=r"--index: give postgresql://"):
        index_url("mysql://x@y/z", {})
    assert index_url(None, {"SWML_INDEX_URL": "postgresql://u@h/d"}) == "postgresql://u@h/d"
    assert index_url(None, {}) is None
    wrong = pg_server.url("postgres", password=False).replace("swml@", "swml:not-the-password@")
    for url, why in (
        (wrong, "password authentication failed"),
        (pg_server.url().replace(str(pg_server.port), "1"), "refused"),
        (pg_server.url("no_such_database"), "does not exist"),
    ):
        with pytest.raises(IndexOpenError) as caught:
            run(open_index(url, Path("."), "n"))
        message = str(caught.value)
        assert message.startswith("--index postgresql://***@127.0.0.1:") and why in message, message
        assert "not-the-password" not in message and "check that the server is up" in message
        if why != "refused":  # a server that answered no is a mistake to fix, even for a service
            with pytest.raises(IndexOpenError, match=why):
                run(open_index(url, Path("."), "n", away_ok=True))


def test_a_service_starting_while_postgresql_is_away_starts_behind_and_writes_when_it_is_back(
    pg_server: PgServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A node restarted while its index server is down (a host rebooting, a failover) exited at once: it
    now starts behind — its calls are taken and recorded — and a fresh database gets its tables and the
    waiting rows as soon as the server answers."""
    url = pg_server.database()  # (made while the server is up: empty, no tables yet)

    async def go() -> None:
        await asyncio.to_thread(pg_server.stop)
        try:
            index = await open_index(url, Path("."), "n", away_ok=True)
            assert index.state is IndexState.BEHIND
            index.put_recording(meta("r1", start=1.0))
            index.put_call({"call_id": "c1", "state": "answered", "start_time": 1.0}, "w")
            with pytest.raises(IndexUnavailable, match="cannot be read now"):
                await index.recordings()
        finally:
            await asyncio.to_thread(pg_server.start)
        await settle(index)
        assert [r["recording_id"] for r in await index.recordings()] == ["r1"]
        assert [c["call_id"] for c in await index.calls()] == ["c1"]
        await index.close()

    run(go())
    assert "cannot be reached" in caplog.text and "calls are taken and recorded" in caplog.text
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    assert rows == [(m.version,) for m in migrations.load("postgresql")]


def test_rows_wait_while_postgresql_is_away_and_are_written_when_it_is_back(
    pg_server: PgServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = pg_server.database()

    async def go() -> None:
        index = await open_index(url, Path("."), "n")
        assert isinstance(index, Index)
        index.put_recording(meta("r0", start=0.0))
        await settle(index)
        await asyncio.to_thread(pg_server.stop)
        try:
            for i in range(1, 4):
                index.put_recording(meta(f"r{i}", start=float(i)))
                index.put_call({"call_id": f"c{i}", "state": "ended", "start_time": float(i)}, "w")
            for _ in range(1000):  # the writer finds the server gone
                if index.state is IndexState.BEHIND:
                    break
                await asyncio.sleep(0.01)
            assert index.state is IndexState.BEHIND and index.pending == 6
            with pytest.raises(IndexUnavailable, match="cannot be read now"):
                await index.recordings()
        finally:
            await asyncio.to_thread(pg_server.start)
        await settle(index)  # (retries at most MAX_RETRY apart)
        assert [r["recording_id"] for r in await index.recordings()] == ["r3", "r2", "r1", "r0"]
        assert len(await index.calls()) == 3
        # A restart between two writes: the idle connection fails once, a new one is made at once.
        await asyncio.to_thread(pg_server.stop)
        await asyncio.to_thread(pg_server.start)
        behind = len([r for r in caplog.records if "cannot be written" in r.getMessage()])
        index.put_recording(meta("r4", start=4.0))
        await settle(index)
        assert len([r for r in caplog.records if "cannot be written" in r.getMessage()]) == behind
        assert (await index.recording("r4")) == meta("r4", start=4.0)  # (the reader reconnects too)
        await index.close()

    run(go())


def test_retry_delays_double_up_to_a_cap() -> None:
    from swml_engine.service.pgindex import retry_delay

    assert [retry_delay(n, 0.5, 10.0) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert retry_delay(10_000, 0.5, 10.0) == 10.0


def test_swml_index_rebuild_indexes_the_stored_metadata(
    opener: Opener, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from swml_engine.cli import main

    (tmp_path / "recordings").mkdir()
    for i in range(3):
        (tmp_path / "recordings" / f"r{i}.json").write_text(json.dumps(meta(f"r{i}", start=float(i))))
    index = run(opener("n"))  # (the database the command is pointed at, and migrated)
    run(index.close())
    if index.shared:
        monkeypatch.setenv("SWML_INDEX_URL", index._url)  # type: ignore[attr-defined]
    assert main(["index", "rebuild", "--data", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith(f"3 recording(s) indexed from {tmp_path / 'recordings'} into ")
    reopened = run(opener("n"))
    assert [r["recording_id"] for r in run(reopened.recordings())] == ["r2", "r1", "r0"]
    run(reopened.close())
    assert main(["index", "rebuild", "--data", str(tmp_path / "nowhere")]) == 2
    assert "no recordings under" in capsys.readouterr().err


def test_swml_index_rebuild_from_object_storage_indexes_the_uploaded_recordings_too(
    s3_server: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from swml_engine.cli import main

    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.bucket()
    client = s3_server.client()
    uploaded = [meta(f"up{i}", start=float(10 + i), storage={"audio": f"s3://{bucket}/x/up{i}.wav"}) for i in range(2)]
    for doc in uploaded:
        client.put_object(Bucket=bucket, Key=f"x/{doc['recording_id']}.json", Body=json.dumps(doc).encode())
        client.put_object(Bucket=bucket, Key=f"x/{doc['recording_id']}.wav", Body=b"RIFF")
    (tmp_path / "recordings").mkdir()
    (tmp_path / "recordings" / "spooled.json").write_text(json.dumps(meta("spooled", start=1.0)))
    assert main(["index", "rebuild", "--data", str(tmp_path), "--storage", f"s3://{bucket}/x"]) == 0
    assert capsys.readouterr().out.startswith("3 recording(s) indexed from ")
    index = SqliteIndex(tmp_path / "index.sqlite3")
    assert run(index.recordings()) == [*reversed(uploaded), meta("spooled", start=1.0)]
    run(index.close())
    assert main(["index", "rebuild", "--data", str(tmp_path), "--storage", "s3://no-such-bucket-here"]) == 2
    assert "--storage s3://no-such-bucket-here: bucket 'no-such-bucket-here' not found" in capsys.readouterr().err


def test_swml_serve_with_a_wrong_index_password_exits_2_with_one_clear_line(
    pg_server: PgServer,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from swml_engine.cli import build_parser
    from swml_engine.service.cli import _config, _serve

    script = tmp_path / "s.yaml"
    script.write_text("version: 1.0.0\nsections:\n  main:\n    - hangup\n")

    def config(*options: str) -> Any:
        serve = ["serve", "--sip", "127.0.0.1:0", "--script", str(script), "--data", str(tmp_path), *options]
        return _config(build_parser().parse_args(serve))

    monkeypatch.setenv("SWML_INDEX_URL", pg_server.url().replace("swml-test-password", "wrong-secret"))
    assert run(_serve(config("--http", "127.0.0.1:0", "--api-token", "test-token-0123456789"), 0)) == 2
    said = capsys.readouterr().err
    assert said.startswith("swml serve: --index postgresql://***@127.0.0.1:") and said.count("\n") == 1, said
    assert "password authentication failed" in said and "wrong-secret" not in said
    with pytest.raises(ValueError, match=r"^--index: give postgresql://"):
        config("--http", ":0", "--index", "mysql://x@y/z")
    monkeypatch.delenv("SWML_INDEX_URL")
    with pytest.raises(ValueError, match="need --http"):
        config("--retention-days", "30")


def test_a_start_sends_a_shared_index_only_the_metadata_changed_since_its_last_mark(
    pg_server: PgServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Every worker of every node indexes its spool at start: with a shared index, only what changed
    since that node's last start crosses the network (a new database gets everything)."""
    import os

    from swml_engine.service.index import SYNC_MARGIN, SyncMark

    root = tmp_path / "recordings"
    root.mkdir()
    for name, age in (("old", 3600.0), ("new", 0.0)):
        path = root / f"{name}.json"
        path.write_text(json.dumps(meta(name)))
        os.utime(path, (NOW - age, NOW - age))
    url = pg_server.database()

    async def go() -> None:
        first = await open_index(url, tmp_path, "n")
        assert first.fresh  # (tables made now: a start indexes everything)
        mark = SyncMark(tmp_path, first.where)
        assert mark.since() is None
        mark.mark(NOW - 60)
        assert mark.since() == NOW - 60 - SYNC_MARGIN
        assert SyncMark(tmp_path, "postgresql://***@elsewhere/db").since() is None  # another index: everything
        assert [m["recording_id"] async for m in local_documents(root, changed_since=mark.since())] == ["new"]
        assert sorted([m["recording_id"] async for m in local_documents(root)]) == ["new", "old"]
        await first.close()
        again = await open_index(url, tmp_path, "n")
        assert not again.fresh
        await again.close()

    run(go())


NOW = 1_800_000_000.0


def test_the_live_calls_of_a_node_gone_for_good_are_ended_by_the_others(opener: Opener) -> None:
    async def go() -> None:
        a, b = await opener("node-a"), await opener("node-b")
        a.alive(1000.0)
        b.alive(1000.0)
        a.put_call({"call_id": "ca", "state": "answered", "start_time": 990.0}, "http://a")
        b.put_call({"call_id": "cb", "state": "answered", "start_time": 990.0}, "http://b")
        a.put_call({"call_id": "old", "state": "ended", "start_time": 900.0, "end_reason": "hangup"}, "http://a")
        await settle(a)
        await settle(b)
        assert await b.end_calls_of_lost_nodes(silent_since=1000.0) == 0  # a was seen at 1000: up
        b.alive(1200.0)  # b goes on; a said nothing since 1000 (killed, not back)
        await settle(b)
        assert await b.end_calls_of_lost_nodes(silent_since=1100.0) == 1
        ended = await b.call("ca")
        assert ended is not None and ended[0]["state"] == "ended" and ended[0]["end_reason"] == "service_stopped"
        assert ended[1] == "http://a" and await b.keeper("nope") is None
        still = await a.call("cb")
        assert still is not None and still[0]["state"] == "answered"  # b's own call goes on
        old = await a.call("old")
        assert old is not None and old[0]["end_reason"] == "hangup"  # an ended call keeps its reason
        assert await a.end_calls_of_lost_nodes(silent_since=1100.0) == 0  # (only others' calls)
        # The service's round: a notes it is up at 1300 with a call; b, at 1300 + LOST_AFTER, ends it.
        a.put_call({"call_id": "ca2", "state": "answered", "start_time": 1290.0}, "http://a")
        await one_round(a, 1300.0)
        await settle(a)
        await one_round(b, 1300.0 + LOST_AFTER - 1)
        assert (await b.call("ca2") or ({}, ""))[0]["state"] == "answered"
        await one_round(b, 1300.0 + LOST_AFTER + 1)  # (SQLite: one node alone, nothing to do)
        assert (await b.call("ca2") or ({}, ""))[0]["state"] == ("ended" if b.shared else "answered")
        await a.close()
        await b.close()

    async def one_round(index: Index, now: float) -> None:
        async def stop(seconds: float) -> None:
            raise asyncio.CancelledError

        with contextlib.suppress(asyncio.CancelledError):
            await keep_alive(index, clock=lambda: now, sleep=stop)
        await settle(index)

    run(go())


def test_search_filters_on_time_call_parties_state_format_and_duration_with_a_total(opener: Opener) -> None:
    async def go() -> None:
        index = await opener("node-a")
        index.put_call(
            {"call_id": "c1", "state": "ended", "start_time": 1.0, "from": "sip:Alice@x", "to": "sip:100@y"}, "w"
        )
        index.put_call(
            {"call_id": "c2", "state": "ended", "start_time": 2.0, "from": "sip:bob@x", "to": "sip:1_0@y"}, "w"
        )
        index.put_recording(meta("r1", "c1", start=10.0, format="wav", duration=3.0))
        index.put_recording(meta("r2", "c1", start=20.0, format="mp3", duration=30.0))
        index.put_recording(meta("r3", "c2", start=30.0, format="wav", duration=60.0, state="recording"))
        index.put_recording(meta("r4", "c2", start=40.0, format="mp4", duration=0.5))
        await settle(index)

        async def ids(**filters: Any) -> tuple[list[str], int]:
            rows, total = await index.search(RecordingQuery(**filters))
            return [r["recording_id"] for r in rows], total

        assert await ids() == (["r4", "r3", "r2", "r1"], 4)
        assert await ids(limit=2, offset=1) == (["r3", "r2"], 4)
        assert await ids(from_time=20.0, to_time=30.0) == (["r3", "r2"], 2)
        assert await ids(format="wav") == (["r3", "r1"], 2)
        assert await ids(min_duration=3.0, max_duration=30.0) == (["r2", "r1"], 2)
        assert await ids(state="recording") == (["r3"], 1)
        assert await ids(call_id="c2", format="mp4") == (["r4"], 1)
        assert await ids(caller="alice") == (["r2", "r1"], 2)  # any case, any part
        assert await ids(callee="1_0") == (["r4", "r3"], 2)  # _ is a character, not a wildcard
        assert await ids(callee="1%") == ([], 0)
        assert await ids(caller="\x00") == ([], 0)
        # Each row says who was on its call (the list shows them), None for a call the index lacks.
        index.put_recording(meta("r5", "gone", start=50.0, format="wav", duration=1.0))
        await settle(index)
        rows, _ = await index.search(RecordingQuery(limit=3))
        assert [(r["recording_id"], r["caller"], r["callee"]) for r in rows] == [
            ("r5", None, None),
            ("r4", "sip:bob@x", "sip:1_0@y"),
            ("r3", "sip:bob@x", "sip:1_0@y"),
        ]
        await index.close()

    run(go())


def test_sessions_are_seen_by_every_opener_until_ended_or_expired(opener: Opener) -> None:
    async def go() -> None:
        a, b = await opener("node-a"), await opener("node-b")
        await a.add_session("h1", "csrf1", expires_at=100.0, now=50.0)
        await a.add_session("h2", "csrf2", expires_at=60.0, now=50.0)
        assert await b.session("h1", now=55.0) == ("csrf1", 100.0)
        assert await b.session("h2", now=61.0) is None  # expired
        await b.end_session("h1")
        assert await a.session("h1", now=55.0) is None
        await a.add_session("h3", "csrf3", expires_at=200.0, now=70.0)  # clears h2
        assert await a.session("h2", now=0.0) is None
        await a.close()
        await b.close()

    run(go())
