"""Runs one SWML document on one call: sections, steps, ``execute``/``return``, ``goto``/``label``.

Each step: its placeholders are filled, its parameters parsed, then its method runs. A step that fails
(a bad value at run time, an expression error, an unreachable URL) emits an ``error`` event, sets its
method's result variable to ``failed`` and the script goes on with the next step: one mistake never
drops the call. When the script runs out of steps the call is hung up (``script_end``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from swml_engine.call import Call
from swml_engine.document.model import Document, Step
from swml_engine.document.params import shorten
from swml_engine.errors import ParamError, SwmlError
from swml_engine.script.context import Variables
from swml_engine.script.expressions import JsEngine
from swml_engine.script.flow import EndScript, Goto, Return, ScriptStopped
from swml_engine.script.step import SectionRun, StepContext
from swml_engine.script.templating import Templater
from swml_engine.vocabulary import EndReason
from swml_engine.waiting import unless

if TYPE_CHECKING:
    from swml_engine.methods.base import Method

#: Deepest chain of ``execute`` calls before the runner refuses (a section that executes itself).
MAX_EXECUTE_DEPTH = 100

#: Steps a script may run at once with nothing to wait for, and how many each second of the call's clock
#: gives back. A 100-pass goto loop of ten steps is 1,000; a menu or a sleep loop runs a few a second. A
#: goto loop around an execute of a section with a goto loop of its own (and so on) multiplies its passes:
#: without this it ran for hours at 0 s of call time, writing hundreds of MB of events a minute.
STEP_BURST = 10_000
STEPS_PER_SECOND = 100


@dataclass
class StepBudget:
    """How many steps the script may still run now: :data:`STEP_BURST` at most, refilled at
    :data:`STEPS_PER_SECOND` of the call's clock (a step that waits — a play, a prompt, a sleep — earns
    steps back; a loop that never waits runs out)."""

    left: float = STEP_BURST
    at: float = 0.0

    def take(self, now: float) -> bool:
        self.left = min(STEP_BURST, self.left + (now - self.at) * STEPS_PER_SECOND)
        self.at = now
        if self.left < 1:
            return False
        self.left -= 1
        return True


@dataclass
class RunResult:
    #: Why the call ended.
    reason: EndReason
    #: Set when the script could not go on (a document fetched at run time failed, ...).
    error: str | None = None


class Runner:
    """Runs ``doc`` on ``call`` with the methods of ``methods`` (``swml_engine.methods.REGISTRY``: the
    table the document was loaded against)."""

    def __init__(
        self,
        doc: Document,
        call: Call,
        variables: Variables,
        methods: Mapping[str, Method[Any]],
        js: JsEngine | None = None,
    ) -> None:
        self.doc = doc
        self.call = call
        self.variables = variables
        self.js = js or JsEngine()
        self.templater = Templater(variables, self.js, call.wall)  # @{strftime_tz} wants Unix time
        self.methods = methods
        self.budget = StepBudget(at=call.now())

    def set_var(self, name: str, value: Any) -> None:
        self.variables.vars[name] = value
        self.call.events.emit("vars.set", name=name, value=value)

    # --- running ----------------------------------------------------------------------------------

    async def run(self) -> RunResult:
        """Run ``sections.main``, then end the call; always returns, never raises for script errors."""
        error: str | None = None
        try:
            await self.run_section(SectionRun(self.doc, "main", self.doc.labels("main")))
        except Return as r:
            # return.mdx: "Return from execute or exit script"; its value is return_value either way.
            self.set_var("return_value", r.value)
        except ScriptStopped as e:
            error = e.message
        except EndScript:
            pass
        except SwmlError as e:
            error = str(e)
            self.call.events.emit("error", where="script", message=error)
        finally:
            self.js.close()
        if not self.call.is_ended:
            await self.call.hangup("error" if error else "script_end")
        return RunResult(self.call.end_reason or "script_end", error)

    async def run_section(self, section_run: SectionRun) -> None:
        """Run a section's steps; a goto raised anywhere inside (a nested cond, say) lands here."""
        steps = section_run.doc.sections[section_run.section]
        i = 0
        while i < len(steps):
            try:
                await self.run_step(steps[i], section_run)
            except Goto as g:
                i = g.index
                continue
            i += 1

    async def run_steps(self, steps: list[Step], section_run: SectionRun) -> None:
        for step in steps:
            await self.run_step(step, section_run)

    async def run_step(self, step: Step, section_run: SectionRun) -> StepContext:
        if self.call.is_ended:
            raise EndScript
        method = self.methods[step.method]
        events = self.call.events
        if not self.budget.take(self.call.now()):
            message = (
                f"{step.where}: more than {STEP_BURST:,} steps with nothing to wait for (at most "
                f"{STEPS_PER_SECOND} a second beyond them): the script is stopped (loops inside loops?)"
            )
            events.emit("error", where=step.where, message=message)
            raise ScriptStopped(message)
        events.emit("step.start", section=section_run.section, index=step.index, path=step.path, method=step.method)
        # call.call_state is "the current state of the call" (calling-overview.mdx): what the call is now,
        # in placeholders, expressions and the payload a URL is sent, not what it was when it came in.
        self.variables.call["call_state"] = self.call.state
        ctx = StepContext(self, step, section_run)
        self.js.begin_step()
        raw: object = None
        try:
            raw = await self.templater.render_params(step.params, step.where) if method.substitute else step.params
            params = method.parse(raw, step.where)
            await method.run(ctx, params)
        except ParamError as e:
            self._fail(ctx, method.result_var, str(e))
            method.failed(ctx, raw, e)
            try:
                await method.after_failure(ctx)
            except (Goto, Return, EndScript):  # (a goto, return or hangup in those steps, as in run's)
                self._step_end(section_run, step, ctx)
                raise
        except (Goto, Return, EndScript):
            self._step_end(section_run, step, ctx)
            raise
        except SwmlError as e:
            self._fail(ctx, method.result_var, f"{step.where}: {e}")
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug in a method must not drop the call; say where it happened
            self._fail(ctx, method.result_var, f"{step.where}: internal error: {type(e).__name__}: {e}")
        self._step_end(section_run, step, ctx)
        pause = self.templater.take_pending_sleep()
        if pause > 0:
            await self.call_sleep(pause)
        # Let the media and other calls run between steps, even in a tight goto loop.
        await asyncio.sleep(0)
        if self.call.is_ended:
            raise EndScript
        return ctx

    def _step_end(self, section_run: SectionRun, step: Step, ctx: StepContext) -> None:
        self.call.events.emit(
            "step.end",
            section=section_run.section,
            index=step.index,
            path=step.path,
            method=step.method,
            result=ctx.result,
        )

    def _fail(self, ctx: StepContext, result_var: str | None, message: str) -> None:
        ctx.result = "failed"
        self.call.events.emit("error", where=ctx.step.where, message=shorten(message, 1000))
        if result_var is not None:
            self.set_var(result_var, "failed")

    async def call_sleep(self, seconds: float | None) -> None:
        """Wait on the call's clock; returns early when the call ends (``None`` waits until then)."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.call.ended.wait(), seconds)

    async def call_sleep_until(self, event: asyncio.Event) -> None:
        """Wait for ``event`` or the end of the call, whichever comes first."""
        await unless(self.call.ended, event.wait())

    async def execute_section(self, section_run: SectionRun, params: dict[str, Any]) -> Any:
        """Run a section with its own ``params``; the caller's params come back afterwards."""
        if section_run.depth > MAX_EXECUTE_DEPTH:
            # Not a ParamError: the place is the execute step's own, which the step's error leads with.
            raise SwmlError(
                f"execute nested more than {MAX_EXECUTE_DEPTH} deep (section {section_run.section!r} calls itself?)"
            )
        saved = self.variables.params
        self.variables.params = dict(params)
        try:
            await self.run_section(section_run)
        except Return as r:
            return r.value
        finally:
            self.variables.params = saved
        return None
