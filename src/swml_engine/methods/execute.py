"""``execute``: run a section of this document, a document at a URL, or an inline JSON document, then return.

``params`` become the ``params`` scope inside (restored afterwards); the value given to ``return``
becomes ``return_value``; ``on_return`` steps run after. ``result`` acts on ``return_value`` as a
``switch`` (an object; its ``variable`` defaults to ``return_value``) or a ``cond`` (a list).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from swml_engine.document.loader import load_text
from swml_engine.document.model import Block, BlockLoader, Document, MethodTable, Step, Verbatim
from swml_engine.document.params import Any_, MapOf, Steps, Str, describe, is_templated, param
from swml_engine.document.remote import fetch_remote
from swml_engine.errors import DocumentError, ParamError
from swml_engine.fetch import FetchStopped
from swml_engine.methods.base import Method
from swml_engine.methods.cond import Cond
from swml_engine.methods.switch import Switch
from swml_engine.script.flow import EndScript
from swml_engine.script.step import SectionRun, StepContext


@dataclass(frozen=True, kw_only=True)
class ExecuteParams:
    dest: str = param(Str(allow_empty=False), required=True)
    params: dict[str, Any] = param(MapOf(), default={})
    meta: dict[str, Any] = param(MapOf(), default={})
    on_return: Block | None = param(Steps())
    result: Any = param(Any_())


#: ``result`` is read as one of these (an object as a switch, a list as a cond).
_SWITCH, _COND = Switch(), Cond()


def _is_url(dest: str) -> bool:
    return dest.lower().startswith(("http://", "https://"))


def _is_inline(dest: str) -> bool:
    return dest.lstrip().startswith("{")


def with_inline_dest(raw: dict[str, Any]) -> dict[str, Any]:
    """``execute``/``transfer`` parameters with an inline document's ``dest`` kept as written: its
    placeholders belong to its own steps, filled as they run (``${params.x}`` reads the ``params`` given
    to it), not to the calling step."""
    out = dict(raw)
    if isinstance(raw.get("dest"), str) and _is_inline(raw["dest"]):
        out["dest"] = Verbatim(raw["dest"])
    return out


class Execute(Method[ExecuteParams]):
    name = "execute"
    params = ExecuteParams

    def prepare(self, raw: object, where: str, blocks: BlockLoader) -> object:
        if isinstance(raw, str):
            raw = {"dest": raw}
        if not isinstance(raw, dict):
            raise ParamError(where, f"{describe(raw)} is not an object with dest")
        out = with_inline_dest(raw)
        if "on_return" in raw:
            out["on_return"] = blocks(raw["on_return"], f"{where}.on_return")
        result = raw.get("result")
        if isinstance(result, dict):
            result = dict(result)
            result.setdefault("variable", "return_value")
            out["result"] = (_SWITCH.name, _SWITCH.prepare(result, f"{where}.result", blocks))
        elif isinstance(result, list):
            out["result"] = (_COND.name, _COND.prepare(result, f"{where}.result", blocks))
        elif result is not None:
            raise ParamError(f"{where}.result", f"{describe(result)} is not a switch object or a cond list")
        return out

    def check_references(
        self, step: Step, doc: Document, labels: dict[str, int], methods: MethodTable
    ) -> list[ParamError]:
        dest = step.params.get("dest") if isinstance(step.params, dict) else None
        if isinstance(dest, int | float) and not isinstance(dest, bool):
            dest = Str().check(dest, f"{step.where}.dest")  # a number is its text, as when the step runs
        if not isinstance(dest, str) or is_templated(dest) or _is_url(dest):
            return []
        dest = dest.strip()  # as when the step runs
        if _is_inline(dest):
            try:
                load_text(dest, f"{step.where}.dest", methods=methods)
            except DocumentError as e:
                return [ParamError(f"{step.where}.dest", f"inline SWML: {e}")]
            return []
        if dest not in doc.sections:
            known = ", ".join(sorted(doc.sections))
            return [ParamError(f"{step.where}.dest", f"no section {dest!r} (sections: {known})")]
        return []

    async def run(self, ctx: StepContext, p: ExecuteParams) -> None:
        section_run = await self.target(ctx, p)
        value = await ctx.runner.execute_section(section_run, p.params)
        ctx.set_var("return_value", value)
        ctx.result = "returned"
        if p.on_return is not None:
            await ctx.run_block(p.on_return)
        if p.result is not None:
            kind, params = p.result
            await ctx.runner.run_step(Step(kind, params, f"{ctx.step.path}.execute.result"), ctx.section_run)

    async def target(self, ctx: StepContext, p: ExecuteParams) -> SectionRun:
        dest = p.dest.strip()
        depth = ctx.section_run.depth + 1
        if _is_url(dest):
            payload = ctx.variables.payload()
            payload["params"] = p.params
            try:
                doc = await fetch_remote(dest, payload, ctx.call.options, ctx.runner.methods)
            except FetchStopped:
                raise EndScript from None  # the call ended while its next document was on the way
            except DocumentError as e:
                # (the message names the URL, redacted: credentials never reach events or logs)
                raise ParamError(f"{ctx.where}.dest", str(e)) from None
            return SectionRun(doc, "main", doc.labels("main"), depth)
        if _is_inline(dest):
            try:
                doc = load_text(dest, f"{ctx.where}.dest", methods=ctx.runner.methods)
            except DocumentError as e:
                raise ParamError(f"{ctx.where}.dest", f"inline SWML: {e}") from None
            return SectionRun(doc, "main", doc.labels("main"), depth)
        doc = ctx.section_run.doc
        if dest not in doc.sections:
            raise ParamError(f"{ctx.where}.dest", f"no section {dest!r} (sections: {', '.join(sorted(doc.sections))})")
        return SectionRun(doc, dest, doc.labels(dest), depth)
