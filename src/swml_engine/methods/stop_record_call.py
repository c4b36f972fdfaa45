"""``stop_record_call``: stop the recording with ``control_id``, or the last started one without it."""

from __future__ import annotations

from dataclasses import dataclass

from swml_engine.document.params import Str, param
from swml_engine.methods.base import Method
from swml_engine.recording.recorder import recordings_of
from swml_engine.script.step import StepContext


@dataclass(frozen=True, kw_only=True)
class StopRecordCallParams:
    control_id: str | None = param(Str())


class StopRecordCall(Method[StopRecordCallParams]):
    name = "stop_record_call"
    params = StopRecordCallParams
    result_var = "stop_record_call_result"

    async def run(self, ctx: StepContext, p: StopRecordCallParams) -> None:
        rec = recordings_of(ctx.call).find(p.control_id or None)
        if rec is None:
            which = f"with control_id {p.control_id!r}" if p.control_id else "at all"
            ctx.events.emit("warning", where=ctx.where, message=f"no live recording {which} to stop")
            result = "failed"
        else:
            await rec.stop("stop_record_call")
            result = "success"
        ctx.set_var("stop_record_call_result", result)
        ctx.result = result
