"""``record_call``: start recording in the background; the script goes on at once (after the beep).

Sets ``record_call_url``, ``record_control_id`` and ``record_call_result`` (``success``, or ``failed``
when the recording could not start: bad storage, a bad value at run time). See docs/recording.md.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from swml_engine.callbacks import NODE_ID, StatusReporter, callback_target
from swml_engine.document.params import Bool, Chars, HttpUrl, Num, Str, param
from swml_engine.errors import ParamError
from swml_engine.media.sources.tones import beep_frames
from swml_engine.methods.base import Method
from swml_engine.recording.encoders import FORMATS, EncoderError
from swml_engine.recording.recorder import Recording, RecordSettings, recordings_of
from swml_engine.script.step import StepContext

DIRECTIONS = ("speak", "listen", "both")
P = TypeVar("P", bound="RecordParams")
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
    where = f"{ctx.where}.status_url"
    if callback_target(ctx.events, p.status_url, where) is None:
        common["status_url"] = None  # none, or one that does not parse: record without callbacks
    settings = RecordSettings(method=method, control_id=control_id, **common)
    try:
        return recordings_of(ctx.call).start(settings)
    except (EncoderError, OSError) as e:
        error = StartFailed(ctx.where, f"cannot start the recording: {e}")
        report_failure(ctx, {"status_url": common["status_url"]}, str(error), control_id)
        raise error from None


class StartFailed(ParamError):
    """The recording could not start, and has said so (events, status callback)."""


def report_failure(ctx: StepContext, raw: object, message: str, control_id: str | None = None) -> None:
    """A recording that could not start (a bad value at run time, unusable storage) still reports its
    ``error`` state: in the events, and to ``status_url`` when that value itself is usable."""
    given = raw if isinstance(raw, dict) else {}
    if control_id is None:
        written = given.get("control_id")
        control_id = written if isinstance(written, str) and written else str(uuid.uuid4())
    url = given.get("status_url")
    params = {"control_id": control_id, "state": "error", "end_reason": "error"}
    # The event carries what the callback's params will (StatusReporter adds the ids to those).
    ids = {"call_id": ctx.call.call_id, "node_id": NODE_ID}
    ctx.events.emit("record.state", **ids, **params, error=message)
    where = f"{ctx.where}.status_url"
    StatusReporter(ctx.call, url if isinstance(url, str) else None, "calling.call.record", control_id, where).send(
        params
    )


class RecordingMethod(Method[P]):
    """``record_call`` and ``record``: a step that fails before its recording starts reports ``error``."""

    #: The variable holding the URL of the recording the step started.
    url_var: ClassVar[str]

    def failed(self, ctx: StepContext, raw: object, error: ParamError) -> None:
        # No recording was started: an earlier one's URL left here would be played or posted in its place.
        ctx.set_var(self.url_var, "")
        if not isinstance(error, StartFailed):  # (that one reported itself, with its control_id)
            report_failure(ctx, raw, str(error))


class RecordCall(RecordingMethod[RecordCallParams]):
    name = "record_call"
    params = RecordCallParams
    result_var = "record_call_result"
    url_var = "record_call_url"

    async def run(self, ctx: StepContext, p: RecordCallParams) -> None:
        control_id = p.control_id or str(uuid.uuid4())
        rec = await start_recording(ctx, p, "record_call", control_id)
        # Set once it started: stop_record_call's default is the last recording that did (a failed
        # start, whatever failed, leaves the variable naming that one).
        ctx.set_var("record_control_id", control_id)
        ctx.set_var(self.url_var, rec.url)
        ctx.set_var("record_call_result", "success")
        ctx.result = "success"
