"""``goto``: jump to a ``label`` of the current section, if ``when`` holds, at most ``max`` times."""

from __future__ import annotations

from dataclasses import dataclass

from swml_engine.document.model import Document, MethodTable, Step
from swml_engine.document.params import Any_, Num, Str, is_templated, param
from swml_engine.errors import ParamError
from swml_engine.methods.base import Method
from swml_engine.script.flow import Goto as GotoSignal
from swml_engine.script.step import StepContext


@dataclass(frozen=True, kw_only=True)
class GotoParams:
    label: str = param(Str(allow_empty=False), required=True)
    #: JavaScript; a ``${...}`` in it is filled first, and a whole-placeholder value is used as is.
    when: object = param(Any_())
    max: int = param(Num(minimum=1, maximum=100, integer=True), default=100)


class Goto(Method[GotoParams]):
    name = "goto"
    params = GotoParams

    def check_references(
        self, step: Step, doc: Document, labels: dict[str, int], methods: MethodTable
    ) -> list[ParamError]:
        label = step.params.get("label") if isinstance(step.params, dict) else None
        if isinstance(label, str) and not is_templated(label) and label not in labels:
            known = ", ".join(sorted(labels)) or "none"
            return [ParamError(f"{step.where}.label", f"no label {label!r} in this section (labels: {known})")]
        return []

    async def run(self, ctx: StepContext, p: GotoParams) -> None:
        label = p.label
        if p.when is not None and not await ctx.holds(p.when, f"{ctx.where}.when"):
            ctx.result = "not_taken"
            return
        index = ctx.section_run.labels.get(label)
        if index is None:
            raise ParamError(f"{ctx.where}.label", f"no label {label!r} in section {ctx.section_run.section!r}")
        key = ctx.step.path
        count = ctx.section_run.goto_counts.get(key, 0)
        if count >= p.max:
            ctx.result = "max_reached"
            return
        ctx.section_run.goto_counts[key] = count + 1
        ctx.result = "taken"
        raise GotoSignal(index)
