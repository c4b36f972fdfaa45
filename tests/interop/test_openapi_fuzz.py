"""The acceptance's check of the HTTP API against its own OpenAPI schema: schemathesis generates requests
for every operation /openapi.json describes (the schema's examples, edge values, then random ones) and
sends them to a real `swml serve` with the token; no answer may be a 5xx. The event streams never end by
design, so they are left out here (tests/interop/test_console_api.py reads them)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from .peers import Engine, free_port
from .test_console_api import SCRIPT, TOKEN, recording_files

EngineFactory = Callable[..., Engine]
KEPT, DELETED = "11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"


def test_no_request_the_schema_allows_gets_a_server_error(engine: EngineFactory, tmp_path: Path) -> None:
    # Two recordings for the generated requests to reach past a 404: one they read (audio, waveform,
    # live control), one the DELETE may remove.
    recording_files(tmp_path / "data-0", KEPT, "mp3", start=1000.0)
    recording_files(tmp_path / "data-0", DELETED, "wav", start=2000.0)
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        f'[parameters]\nrecording_id = "{KEPT}"\nname = "{KEPT}.mp3"\n\n'
        f'[[operations]]\ninclude-name = "DELETE /api/recordings/{{recording_id}}"\n'
        f'parameters = {{ recording_id = "{DELETED}" }}\n'
    )
    port = free_port()
    engine(SCRIPT, "--http", f"127.0.0.1:{port}", "--api-token", TOKEN)
    schemathesis = Path(sys.executable).parent / "schemathesis"  # (installed with the dev extra)
    run = subprocess.run(
        [
            str(schemathesis),
            "--config-file",
            str(config),
            "run",
            f"http://127.0.0.1:{port}/openapi.json",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--checks",
            "not_a_server_error",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "25",
            "--exclude-path-regex",
            "/events$",
            "--request-timeout",
            "10",
            "--workers",
            "1",
            "--seed",
            "1",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
