"""``stop_record_call``: stop the recording with ``control_id``; without one, the recording named by the
``record_control_id`` variable (stop_record_call.mdx: "read by the method"), which ``record_call`` sets
to the last started one. A script that unset that variable gets the last started live recording."""

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
        control_id = p.control_id
        if control_id is None:
            last = ctx.variables.vars.get("record_control_id")
            control_id = str(last) if last is not None and last != "" else None
        rec = recordings_of(ctx.call).find(control_id)  # an empty id matches none: failed, never "the last"
        if rec is None:
            which = f"with control_id {control_id!r}" if control_id is not None else "at all"
            ended = [
                r for r in recordings_of(ctx.call).all if control_id is None or r.settings.control_id == control_id
            ]
            # Said plainly when it already ended by itself (a terminator, a silence timeout): not a fault.
            why = f" (it already ended: {ended[-1].end_reason})" if ended and ended[-1].end_reason else ""
            ctx.events.emit("warning", where=ctx.where, message=f"no live recording {which} to stop{why}")
            result = "failed"
        else:
            await rec.stop("stop_record_call")
            result = "success"
        ctx.set_var("stop_record_call_result", result)
        ctx.result = result
