"""The loaded form of a SWML document: sections of steps, each step one method with its parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Step:
    """One step: ``method`` with its parameters as written (after shorthands), placeholders not yet filled.

    ``params`` holds nested step lists (``cond``'s ``then``, ``switch``'s cases, ...) as :class:`Block`
    objects, already loaded and checked, so placeholders inside them are filled only when they run.
    """

    method: str
    params: Any
    path: str  # e.g. "sections.main[2]"

    @property
    def index(self) -> int:
        """The step's position in its list (``2`` for ``sections.main[2]`` or ``...cond[0].then[2]``)."""
        tail = self.path.rsplit("[", 1)
        return int(tail[1][:-1]) if len(tail) == 2 and tail[1][:-1].isdigit() and tail[1].endswith("]") else 0

    @property
    def where(self) -> str:
        """Path of the method's parameters, the prefix of every error about this step."""
        return f"{self.path}.{self.method}"


@dataclass
class Block:
    """A nested list of steps inside a step's parameters."""

    steps: list[Step]
    path: str


@dataclass
class Document:
    sections: dict[str, list[Step]]
    source: str = "<document>"
    version: str | None = None
    #: Methods used anywhere that this engine does not run (reported by ``swml validate`` with exit 3).
    unsupported: list[str] = field(default_factory=list)

    def labels(self, section: str) -> dict[str, int]:
        """Index of every ``label`` step at the top level of a section."""
        found: dict[str, int] = {}
        for i, step in enumerate(self.sections.get(section, [])):
            if step.method == "label" and isinstance(step.params, dict):
                name = step.params.get("name")
                if isinstance(name, str):
                    found.setdefault(name, i)
        return found
