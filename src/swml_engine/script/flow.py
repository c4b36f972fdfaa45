"""Control flow raised by methods and caught by the runner: jump, return from a section, end the script."""

from __future__ import annotations

from typing import Any


class Flow(Exception):
    """Base of the control-flow signals; never reaches a user."""


class Goto(Flow):
    """Jump to a label at the top level of the section being run."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


class Return(Flow):
    """Leave the current section (``return``); the value becomes ``return_value``."""

    def __init__(self, value: Any = None) -> None:
        super().__init__("return")
        self.value = value


class EndScript(Flow):
    """The call is over (``hangup``, remote hangup): stop running steps."""


class ScriptStopped(EndScript):
    """The script may not go on (it ran away: steps with nothing to wait for); the call ends ``error``.
    The error event, at the step, is already written."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
