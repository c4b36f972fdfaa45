from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .peers import Engine, have


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Callable[..., Engine]]:
    """Start ``swml serve`` with a script text; every engine started is stopped (SIGTERM) at the end."""
    started: list[Engine] = []

    def start(script: str | None, *extra: str, host: str = "127.0.0.1", nofile: int | None = None) -> Engine:
        """``script`` is the SWML text for --script; None when ``extra`` has --script-url; ``nofile``
        limits the process's open files (as ``ulimit -n``)."""
        path = None
        if script is not None:
            path = tmp_path / f"script-{len(started)}.yaml"
            path.write_text(script)
        eng = Engine(path, tmp_path / f"data-{len(started)}", extra=list(extra), host=host, nofile=nofile).start()
        started.append(eng)
        return eng

    yield start
    for eng in started:
        code = eng.stop()
        assert code == 0, f"swml serve exited {code} on SIGTERM:\n{eng.log()[-3000:]}"
        assert "Traceback" not in eng.log(), eng.log()[-5000:]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "interop" in str(item.fspath):
            item.add_marker(pytest.mark.interop)
            if not have("sipp"):
                item.add_marker(pytest.mark.skip(reason="sipp (Debian sip-tester) not installed: run make test"))
