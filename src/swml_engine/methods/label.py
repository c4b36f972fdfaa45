"""``label``: a named place in a section that ``goto`` jumps to; does nothing when run."""

from __future__ import annotations

from dataclasses import dataclass

from swml_engine.document.model import BlockLoader, Document, MethodTable, Step
from swml_engine.document.params import Str, param
from swml_engine.errors import ParamError
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

    def check_references(
        self, step: Step, doc: Document, labels: dict[str, int], methods: MethodTable
    ) -> list[ParamError]:
        """A label given twice in a section: goto would jump to the first, never to this one (a copied block
        whose label was not renamed)."""
        name = step.params.get("name") if isinstance(step.params, dict) else None
        section = step.path.rsplit("[", 1)[0].removeprefix("sections.")
        steps = doc.sections.get(section, [])
        first = labels.get(name) if isinstance(name, str) else None
        if first is None or first == step.index or step.index >= len(steps) or steps[step.index] is not step:
            return []
        return [
            ParamError(
                f"{step.where}",
                f"{name!r} labels {steps[first].path} already: goto jumps there, never here; "
                "give each label of a section its own name",
            )
        ]

    async def run(self, ctx: StepContext, p: LabelParams) -> None:
        ctx.result = "success"
