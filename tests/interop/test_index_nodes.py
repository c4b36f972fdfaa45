"""`swml serve` with the shared index: two nodes on one PostgreSQL database (tests/pg_server.py), each
API listing both nodes' recordings and calls and passing live control to the node that records; and
--retention-days deleting a recording whose signed URL then answers 404."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import HttpServer
from pg_server import PgServer, pg_server  # noqa: F401  (the session fixture)
from s3_server import S3Server, s3_server_fixture  # noqa: F401  (the session fixture)

from .peers import Engine, free_port, wait_for
from .test_api import TOKEN, call_in_background, request

EngineFactory = Callable[..., Engine]


def api(node: str, path: str, method: str = "GET") -> tuple[int, Any]:
    status, _, body = request(method, f"{node}{path}")
    return status, json.loads(body) if body else None


def callbacks(http_server: HttpServer, state: str) -> list[dict[str, Any]]:
    return [
        r["json"]["params"]
        for r in http_server.requests
        if r["path"] == "/status" and r["json"]["params"]["state"] == state
    ]


def test_two_nodes_on_one_postgresql_index_list_and_control_each_others_recordings_and_calls(
    engine: EngineFactory,
    http_server: HttpServer,
    pg_server: PgServer,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SWML_INDEX_URL", pg_server.database())  # (kept out of the process list)
    status = http_server.url("/status")
    script = (
        "version: 1.0.0\nsections:\n  main:\n    - answer\n    - record_call: {{status_url: '{}'}}\n    - sleep: {}\n"
    )
    ports = free_port(), free_port()
    a, b = (
        engine(script.format(status, ms), "--http", f"127.0.0.1:{port}", "--api-token", TOKEN, "--log-level", "debug")
        for ms, port in ((4000, ports[0]), (300, ports[1]))
    )
    nodes = [f"http://127.0.0.1:{port}" for port in ports]
    call_a = call_in_background(a, tmp_path / "sipp-a")
    assert wait_for(lambda: len(callbacks(http_server, "recording")) == 1, 20)
    rid_a = callbacks(http_server, "recording")[0]["recording_id"]
    # Node b lists node a's live recording and call, and its pause and resume reach node a.
    code, listed = api(nodes[1], "/api/recordings")
    assert code == 200 and [(r["recording_id"], r["state"]) for r in listed["recordings"]] == [(rid_a, "recording")]
    code, calls = api(nodes[1], "/api/calls")
    assert code == 200 and [c["state"] for c in calls["calls"]] == ["answered"]
    assert [api(nodes[1], f"/api/recordings/{rid_a}/{act}", "POST")[0] for act in ("pause", "resume")] == [200, 200]
    assert "passed to the worker at http://127.0.0.1:" in b.log()
    call_in_background(b, tmp_path / "sipp-b").join(30)
    call_a.join(30)
    assert wait_for(lambda: len(callbacks(http_server, "finished")) == 2, 20)
    rids = {p["recording_id"] for p in callbacks(http_server, "finished")}

    def both_listed(node: str) -> bool:
        recordings = api(node, "/api/recordings")[1]["recordings"]
        calls = api(node, "/api/calls")[1]["calls"]
        return {r["recording_id"] for r in recordings} == rids and [c["state"] for c in calls] == ["ended"] * 2

    for node in nodes:  # every node lists every node's finished recordings and ended calls
        assert wait_for(lambda node=node: both_listed(node), 20), api(node, "/api/recordings")  # type: ignore[misc]
        for rid in rids:
            code, meta = api(node, f"/api/recordings/{rid}")
            assert code == 200 and meta["state"] == "finished" and meta["end_reason"]
    assert [p["state"] for p in callbacks(http_server, "paused")] == ["paused"]
    # PostgreSQL away during a call: the API says 503, the call is recorded all the same, and its rows
    # are written once the server is back.
    pg_server.stop()
    try:
        code, away = api(nodes[0], "/api/recordings")
        assert code == 503 and "cannot be read now" in away["detail"]
        assert api(nodes[0], "/health")[1]["index"] == "behind"  # (at once: not at its next write)
        call_in_background(b, tmp_path / "sipp-c").join(30)
        assert wait_for(lambda: len(callbacks(http_server, "finished")) == 3, 20)
        assert wait_for(lambda: api(nodes[1], "/health")[1]["index"] == "behind", 20)
    finally:
        pg_server.start()
    rids = {p["recording_id"] for p in callbacks(http_server, "finished")}
    for node in nodes:
        assert wait_for(
            lambda node=node: {r["recording_id"] for r in api(node, "/api/recordings")[1]["recordings"]} == rids, 30
        )  # type: ignore[misc]
    assert api(nodes[1], "/health")[1]["index"] == "open"
    assert [c["state"] for c in api(nodes[0], "/api/calls")[1]["calls"]] == ["ended"] * 3
    assert api(nodes[0], "/api/recordings?offset=" + "9" * 30)[0] == 422
    assert api(nodes[0], "/api/recordings/x%00y")[0] == 404 and api(nodes[0], "/api/calls/x%00y")[0] == 404
    # Without --storage a recording's files are on its node's disk alone: only that node deletes it.
    code, refused = api(nodes[1], f"/api/recordings/{rid_a}", "DELETE")
    assert code == 409 and "delete it through that node's API" in refused["detail"]
    assert api(nodes[0], f"/api/recordings/{rid_a}", "DELETE")[0] == 204
    assert not list((a.data / "recordings").glob(f"{rid_a}.*"))
    assert wait_for(lambda: all(api(node, f"/api/recordings/{rid_a}")[0] == 404 for node in nodes), 20)


def test_retention_deletes_a_recording_and_its_signed_url_then_answers_404(
    engine: EngineFactory, http_server: HttpServer, tmp_path: Path
) -> None:
    http = free_port()
    status = http_server.url("/status")
    script = f"version: 1.0.0\nsections:\n  main:\n    - answer\n    - record_call: {{status_url: '{status}'}}\n    - sleep: 300\n"
    days = 5 / 86400  # five seconds (fractions of a day are taken), swept every 1.25 s
    eng = engine(script, "--http", f"127.0.0.1:{http}", "--api-token", TOKEN, "--retention-days", f"{days:.8f}")
    base = f"http://127.0.0.1:{http}"
    call_in_background(eng, tmp_path / "sipp").join(30)
    assert wait_for(lambda: len(callbacks(http_server, "finished")) == 1, 20)
    finished = callbacks(http_server, "finished")[0]
    rid, url = finished["recording_id"], finished["url"]
    assert request("GET", url, token=None)[0] == 200  # (the signed URL works while the recording is kept)
    assert wait_for(lambda: api(base, f"/api/recordings/{rid}")[0] == 404, 30), "the recording was never deleted"
    assert request("GET", url, token=None)[0] == 404
    assert api(base, "/api/recordings")[1]["recordings"] == []
    assert list((eng.data / "recordings").iterdir()) == []
    assert wait_for(lambda: api(base, "/api/calls")[1]["calls"] == [], 30)  # the call, its event log too
    assert list((eng.data / "calls").iterdir()) == []
    assert "retention: 1 recording(s) older than" in eng.log() and "retention: 1 call(s) older than" in eng.log()


def test_a_recording_waiting_in_another_nodes_spool_is_not_deleted_to_come_back(
    engine: EngineFactory,
    http_server: HttpServer,
    pg_server: PgServer,  # noqa: F811
    s3_server: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two nodes on one index and one bucket; node a cannot reach the storage, so its recording waits in
    its spool. A DELETE through node b answers 503 (ask again): it answered 204, and node a's upload put
    the recording back, listed and served, once the storage answered it. Node b's retention leaves it too
    (and says why), for the same reason."""
    monkeypatch.setenv("SWML_INDEX_URL", pg_server.database())
    bucket = s3_server.bucket()
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    status = http_server.url("/status")
    script = f"version: 1.0.0\nsections:\n  main:\n    - answer\n    - record_call: {{status_url: '{status}'}}\n    - sleep: 300\n"
    ports = free_port(), free_port()
    storage = ("--storage", f"s3://{bucket}/nodes", "--api-token", TOKEN)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # node a's: nothing answers there
    a = engine(script, "--http", f"127.0.0.1:{ports[0]}", *storage)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    node_b = engine(script, "--http", f"127.0.0.1:{ports[1]}", *storage, "--retention-days", f"{3 / 86400:.8f}")
    call_in_background(a, tmp_path / "sipp").join(30)
    assert wait_for(lambda: len(callbacks(http_server, "finished")) == 1, 20)
    rid = callbacks(http_server, "finished")[0]["recording_id"]
    b = f"http://127.0.0.1:{ports[1]}"
    assert wait_for(lambda: api(b, f"/api/recordings/{rid}")[0] == 200, 20)
    code, headers, body = request("DELETE", f"{b}/api/recordings/{rid}")
    assert code == 503 and headers["retry-after"] == "30", (code, body)
    assert "waits in the spool of node " in json.loads(body)["detail"]
    assert wait_for(lambda: f"{rid} (it waits in the spool of node " in node_b.log(), 20), node_b.log()[-3000:]
    assert api(b, f"/api/recordings/{rid}")[0] == 200 and list((a.data / "recordings").glob(f"{rid}.*"))


def test_a_node_started_while_postgresql_is_away_takes_calls_and_fills_the_index_when_it_is_back(
    engine: EngineFactory,
    http_server: HttpServer,
    pg_server: PgServer,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A node (re)started while its index server is down — a host rebooting, a database failover — exited
    with "cannot connect", and took no call until someone started it again. It starts now, records its
    calls, says "behind"; once the server answers, the database (a new one: no tables yet) gets its
    schema, the call and its recording, and a recording this node kept from before its start."""
    monkeypatch.setenv("SWML_INDEX_URL", pg_server.database())
    status = http_server.url("/status")
    script = f"version: 1.0.0\nsections:\n  main:\n    - answer\n    - record_call: {{status_url: '{status}'}}\n    - sleep: 300\n"
    spool = tmp_path / "data-0" / "recordings"  # (the first engine's data directory)
    spool.mkdir(parents=True)
    kept = {
        "recording_id": "kept-from-before",
        "call_id": "c0",
        "state": "finished",
        "start_time": 1.0,
        "end_time": 2.0,
    }
    (spool / "kept-from-before.json").write_text(json.dumps(kept))
    pg_server.stop()
    try:
        port = free_port()
        eng = engine(script, "--http", f"127.0.0.1:{port}", "--api-token", TOKEN)
        node = f"http://127.0.0.1:{port}"
        assert "cannot be reached" in eng.log() and "calls are taken and recorded" in eng.log()
        assert api(node, "/health")[1]["index"] == "behind"
        call_in_background(eng, tmp_path / "sipp").join(30)
        assert wait_for(lambda: len(callbacks(http_server, "finished")) == 1, 20)
        code, away = api(node, "/api/recordings")
        assert code == 503 and "cannot be read now" in away["detail"]
    finally:
        pg_server.start()
    [rid] = {p["recording_id"] for p in callbacks(http_server, "finished")}

    def listed() -> bool:
        code, found = api(node, "/api/recordings")
        return code == 200 and {r["recording_id"] for r in found["recordings"]} == {rid, "kept-from-before"}

    assert wait_for(listed, 30), api(node, "/api/recordings")
    # (the call's row may come in a later batch than the recordings': pair 24)
    assert wait_for(lambda: [c["state"] for c in api(node, "/api/calls")[1]["calls"]] == ["ended"], 30)
    assert wait_for(lambda: api(node, "/health")[1]["index"] == "open", 20)
    assert "brought up to date" in eng.log()
