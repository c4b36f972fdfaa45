"""What a method sees while its step runs: the call, the variables, and the runner's helpers.

The runner is seen through :class:`ScriptRunner` (script/runner.py's ``Runner`` is the one): the
runner imports the methods, the methods import this module, and this module does not import the runner.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from swml_engine.document.model import Block, Document, MethodTable, Step

if TYPE_CHECKING:
    from swml_engine.call import Call
    from swml_engine.events import EventLog
    from swml_engine.script.context import Variables
    from swml_engine.script.templating import Templater


@dataclass
class SectionRun:
    """One run of a section (``main``, or one ``execute`` of it): its document, its labels (goto
    targets), how deep in ``execute`` calls it is and its goto counts."""

    doc: Document
    section: str
    labels: dict[str, int] = field(default_factory=dict)
    depth: int = 0
    #: How many times each goto step of this run of the section has jumped (``goto.max``): counted per
    #: run, so a section executed again, or another document with the same step paths, starts afresh.
    goto_counts: dict[str, int] = field(default_factory=dict)


class ScriptRunner(Protocol):
    """What a running step may ask of the runner that runs it."""

    @property
    def call(self) -> Call: ...

    @property
    def variables(self) -> Variables: ...

    @property
    def templater(self) -> Templater: ...

    @property
    def methods(self) -> MethodTable:
        """The table the script runs with: documents loaded at run time (``execute``) use it too."""
        ...

    def set_var(self, name: str, value: Any) -> None: ...

    async def run_step(self, step: Step, section_run: SectionRun) -> StepContext: ...

    async def run_steps(self, steps: list[Step], section_run: SectionRun) -> None: ...

    async def execute_section(self, section_run: SectionRun, params: dict[str, Any]) -> Any: ...

    async def call_sleep(self, seconds: float | None) -> None: ...

    async def call_sleep_until(self, event: asyncio.Event) -> None: ...


@dataclass
class StepContext:
    runner: ScriptRunner
    step: Step
    section_run: SectionRun
    #: The step's outcome shown in ``step.end`` (``success``, ``failed``, ``no_input``...).
    result: str | None = None

    @property
    def call(self) -> Call:
        return self.runner.call

    @property
    def variables(self) -> Variables:
        return self.runner.variables

    @property
    def events(self) -> EventLog:
        return self.runner.call.events

    @property
    def templater(self) -> Templater:
        return self.runner.templater

    @property
    def where(self) -> str:
        return self.step.where

    def set_var(self, name: str, value: Any) -> None:
        self.runner.set_var(name, value)

    async def render(self, value: Any, path: str) -> Any:
        return await self.templater.render(value, path)

    async def evaluate(self, source: str, path: str) -> Any:
        return await self.templater.evaluate(source, path)

    async def holds(self, when: object, path: str) -> bool:
        """A ``when`` condition: JavaScript text is evaluated (its placeholders filled as literals); a
        value that is not text (``when: true``) is judged as is."""
        return truthy(await self.evaluate(when, path) if isinstance(when, str) else when)

    async def run_block(self, block: Block) -> None:
        """Run nested steps (``then``, a ``case``, ``on_return``) in the current section."""
        await self.runner.run_steps(block.steps, self.section_run)


def truthy(value: object) -> bool:
    """JavaScript truthiness of a JSON value."""
    if isinstance(value, float) and value != value:  # NaN
        return False
    return bool(value)
