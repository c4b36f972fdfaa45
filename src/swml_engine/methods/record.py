"""``record``: record in the foreground; the script waits until the recording ends.

Defaults differ from ``record_call`` (record.mdx): direction speak, terminators ``#``, initial_timeout
4 s, end_silence_timeout 5 s. Sets ``record_url`` and ``record_result``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from swml_engine.document.params import Chars, Str, param
from swml_engine.errors import ParamError
from swml_engine.methods.record_call import TIMEOUT, RecordingMethod, RecordParams, start_recording
from swml_engine.script.step import StepContext


@dataclass(frozen=True, kw_only=True)
class RecordForegroundParams(RecordParams):
    # record.mdx and the schema offer speak and listen only (record_call adds both).
    direction: str = param(Str(choices=("speak", "listen")), default="speak")
    terminators: str = param(Chars("0123456789*#ABCD", "DTMF digits"), default="#")
    initial_timeout: float = param(TIMEOUT, default=4.0)
    end_silence_timeout: float = param(TIMEOUT, default=5.0)


class Record(RecordingMethod[RecordForegroundParams]):
    name = "record"
    params = RecordForegroundParams
    result_var = "record_result"
    url_var = "record_url"

    async def run(self, ctx: StepContext, p: RecordForegroundParams) -> None:
        if ctx.call.link is not None:
            # record waits for its recording to end, but a bridged call's script is waiting in connect:
            # refused rather than a second, competing wait (record_call records the conversation).
            raise ParamError(
                ctx.where, "cannot record in the foreground while the call is bridged (connect); use record_call"
            )
        rec = await start_recording(ctx, p, "record", str(uuid.uuid4()))
        ctx.set_var(self.url_var, rec.url)
        await ctx.runner.call_sleep_until(rec.ended)
        if not rec.ended.is_set():  # the call ended first: the recording ends with it
            await rec.stop("hangup")
        result = "failed" if rec.state == "error" else "success"
        ctx.set_var("record_result", result)
        ctx.result = rec.end_reason or result
