"""``label``: a named place in a section that ``goto`` jumps to; does nothing when run."""

from __future__ import annotations

from dataclasses import dataclass

from swml_engine.document.model import BlockLoader
from swml_engine.document.params import Str, param
from swml_engine.methods.base import Method
from swml_engine.script.step import StepContext


@dataclass(frozen=True, kw_only=True)
class LabelParams:
    name: str = param(Str(allow_empty=False), required=True)


class Label(Method[LabelParams]):
    name = "label"
    params = LabelParams

    def prepare(self, raw: object, where: str, blocks: BlockLoader) -> object:
        if isinstance(raw, str | int | float) and not isinstance(raw, bool):
            return {"name": str(raw)}  # the documented form: ``- label: name``
        return super().prepare(raw, where, blocks)

    async def run(self, ctx: StepContext, p: LabelParams) -> None:
        ctx.result = "success"
