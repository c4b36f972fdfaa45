"""Errors that name the place in the document and say what to do.

Every error a user sees carries a path such as ``sections.main[2].record_call.format`` so that
the offending value can be found in the script without reading a traceback.
"""

from __future__ import annotations


class SwmlError(Exception):
    """Base class of every error the engine reports to a user."""


class ParamError(SwmlError):
    """A value in a document is wrong: the path says where, the message says what and how to fix it."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class DocumentError(SwmlError):
    """A document could not be loaded or is invalid; holds every error found, not only the first."""

    def __init__(self, errors: list[ParamError], unsupported: list[ParamError] | None = None) -> None:
        self.errors = errors
        self.unsupported = unsupported or []
        lines = [str(e) for e in errors] or [str(e) for e in self.unsupported]
        super().__init__("\n".join(lines))


class ExpressionError(SwmlError):
    """A ${...} JavaScript expression failed: syntax error, exception, timeout or memory limit."""
