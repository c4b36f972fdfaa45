"""Loggers are named by module, and a line about one call carries the call's ids (swml_engine.logs)."""

from __future__ import annotations

import ast
import io
import logging
from pathlib import Path

from swml_engine.logs import MAX_VALUE_CHARS, CallIdFilter, CallLog, JsonFormatter

SRC = Path(__file__).resolve().parent.parent / "src" / "swml_engine"

#: Modules allowed to name their logger by hand for a while: none (add one only with the reason and what
#: ends it; a test that greps a logger's name follows its module's name).
PENDING: set[str] = set()


def handler_output(logger: logging.Logger, fmt: str) -> tuple[logging.Handler, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter(fmt))
    handler.addFilter(CallIdFilter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return handler, out


def test_a_call_log_line_carries_the_call_ids_and_keeps_its_text() -> None:
    logger = logging.getLogger("tests.test_logs.call")
    handler, out = handler_output(logger, "%(call_id)s %(sip_call_id)s %(name)s: %(message)s")
    try:
        log = CallLog(logger, "c-1", "abc@10.0.0.1")
        log.info("call %s rejected %s: %s", "abc@10.0.0.1", 403, "wrong credentials")
        log.info("with extra", extra={"peer": "10.0.0.1"})
        logger.info("not about a call")
        CallLog(logger, "c-2").warning("no SIP id")
        CallLog(logger, None, "def@10.0.0.2").info("refused before its script")
    finally:
        logger.removeHandler(handler)
    assert out.getvalue().splitlines() == [
        "c-1 abc@10.0.0.1 tests.test_logs.call: call abc@10.0.0.1 rejected 403: wrong credentials",
        "c-1 abc@10.0.0.1 tests.test_logs.call: with extra",
        "- - tests.test_logs.call: not about a call",
        "c-2 - tests.test_logs.call: no SIP id",
        "- def@10.0.0.2 tests.test_logs.call: refused before its script",
    ]


def test_the_caller_extra_is_kept_beside_the_call_ids() -> None:
    records: list[logging.LogRecord] = []
    logger = logging.getLogger("tests.test_logs.extra")
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        CallLog(logger, "c-1").info("x", extra={"peer": "10.0.0.1"})
    finally:
        logger.removeHandler(handler)
    (record,) = records
    assert (record.call_id, record.peer, record.getMessage()) == ("c-1", "10.0.0.1", "x")  # type: ignore[attr-defined]


def logger_names(path: Path) -> list[tuple[int, str]]:
    """Each ``getLogger("swml...")`` in a file: a logger of ours named by hand rather than by module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "getLogger"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and node.args[0].value.startswith("swml")
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def test_loggers_are_named_by_module() -> None:
    named = {str(p.relative_to(SRC)): logger_names(p) for p in sorted(SRC.rglob("*.py"))}
    by_hand = {
        f"{path}:{line} {name!r}" for path, found in named.items() if path not in PENDING for line, name in found
    }
    assert not by_hand, f"use logging.getLogger(__name__): {sorted(by_hand)}"
    done = {path for path in PENDING if not named.get(path)}
    assert not done, f"named by module now: remove from PENDING: {sorted(done)}"


def test_json_lines_parse_and_carry_the_call_ids_and_the_fields_given() -> None:
    import json

    logger = logging.getLogger("tests.test_logs.json")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(CallIdFilter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        CallLog(logger, "c-1", "abc@10.0.0.1").info("call %s ended after %.1f s: %s", "c-1", 2.0, "remote_hangup")
        logger.warning('two\nlines and "quotes"', extra={"peer": ("10.0.0.1", 5060), "huge": "x" * 5000})
        try:
            raise ValueError("broken")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 3  # a message with a newline stays on its line
    call, plain, failed = lines
    assert call["call_id"] == "c-1" and call["sip_call_id"] == "abc@10.0.0.1"
    assert call["message"] == "call c-1 ended after 2.0 s: remote_hangup"
    assert call["level"] == "INFO" and call["logger"] == "tests.test_logs.json"
    assert call["time"].endswith("Z") and isinstance(call["pid"], int) and call["worker"] is None
    assert plain["call_id"] is None and plain["message"] == 'two\nlines and "quotes"'
    assert plain["peer"] == "('10.0.0.1', 5060)" and len(plain["huge"]) == MAX_VALUE_CHARS + 1
    assert "ValueError: broken" in failed["exception"]
