"""``record_call``: start recording in the background; the script goes on at once (after the beep).

Sets ``record_call_url``, ``record_control_id`` and ``record_call_result`` (``success``, or ``failed``
when the recording could not start: bad storage, a bad value at run time). See docs/recording.md.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass

from swml_engine.document.params import Bool, Chars, HttpUrl, Num, Str, param
from swml_engine.errors import ParamError
from swml_engine.media.sources.tones import beep_frames
from swml_engine.methods.base import Method
from swml_engine.recording.encoders import FORMATS, EncoderError
from swml_engine.recording.recorder import Recording, RecordSettings, recordings_of
from swml_engine.script.step import StepContext

DIRECTIONS = ("speak", "listen", "both")
#: Longest recording a script may ask for (24 h); longer is almost certainly a unit mistake (ms).
MAX_LENGTH = 86400.0
TIMEOUT = Num(minimum=0, maximum=MAX_LENGTH, unit="seconds")


@dataclass(frozen=True, kw_only=True)
class RecordParams:
    stereo: bool = param(Bool(), default=False)
    format: str = param(Str(choices=FORMATS), default="wav")
    direction: str = param(Str(choices=DIRECTIONS), default="both")
    terminators: str = param(Chars("0123456789*#ABCD", "DTMF digits"), default="")
    beep: bool = param(Bool(), default=False)
    input_sensitivity: float = param(Num(minimum=0, maximum=100), default=44.0)
    initial_timeout: float = param(TIMEOUT, default=0.0)
    end_silence_timeout: float = param(TIMEOUT, default=0.0)
    max_length: float | None = param(Num(minimum=0.02, maximum=MAX_LENGTH, unit="seconds"))
    status_url: str | None = param(HttpUrl())


@dataclass(frozen=True, kw_only=True)
class RecordCallParams(RecordParams):
    control_id: str | None = param(Str(allow_empty=False))


async def start_recording(ctx: StepContext, p: RecordParams, method: str, control_id: str) -> Recording:
    """Answer, beep if asked, start the recording right after the beep (so the beep is not in the file)."""
    await ctx.call.answer()
    if p.beep:
        await ctx.call.play_frames(beep_frames(ctx.call.rate))
    # The settings are the parameters of RecordParams, field for field, plus who started it.
    common = {f.name: getattr(p, f.name) for f in dataclasses.fields(RecordParams)}
    settings = RecordSettings(method=method, control_id=control_id, **common)
    try:
        return recordings_of(ctx.call).start(settings)
    except (EncoderError, OSError) as e:
        ctx.events.emit("record.state", control_id=control_id, state="error", url="", duration=0, size=0, error=str(e))
        raise ParamError(ctx.where, f"cannot start the recording: {e}") from None


class RecordCall(Method[RecordCallParams]):
    name = "record_call"
    params = RecordCallParams
    result_var = "record_call_result"

    async def run(self, ctx: StepContext, p: RecordCallParams) -> None:
        control_id = p.control_id or str(uuid.uuid4())
        ctx.set_var("record_control_id", control_id)
        rec = await start_recording(ctx, p, "record_call", control_id)
        ctx.set_var("record_call_url", rec.url)
        ctx.set_var("record_call_result", "success")
        ctx.result = "success"
