"""A recording is a tap on a call's speak and listen streams, owned by the call.

``record_call`` starts one and the script goes on; ``record`` starts one and waits for it to end. The
call ends each recording at ``stop_record_call``, a terminator digit, a VAD timeout, ``max_length``,
hangup or script end, then finalises its file, metadata and callbacks. Several recordings may run at
once on one call, each with its own settings.

Channels (docs/recording.md): stereo puts speak on the left and listen on the right (the channel not recorded
stays silent); mono ``both`` is their sum, clipped.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from swml_engine.callbacks import NODE_ID, StatusReporter
from swml_engine.media.frame import FRAME_SECONDS, FRAMES_PER_SECOND, Frame, mix
from swml_engine.media.vad import VoiceDetector
from swml_engine.recording.encoders import EncoderError, Writer, open_writer, part_path
from swml_engine.recording.recovery import repair, stored_size
from swml_engine.recording.store import RecordingStore
from swml_engine.vocabulary import RecordingEndReason, RecordingState

if TYPE_CHECKING:
    from swml_engine.call import Call


@dataclass(frozen=True)
class RecordSettings:
    method: str  # record_call | record
    control_id: str
    format: str = "wav"
    stereo: bool = False
    direction: str = "both"
    terminators: str = ""
    beep: bool = False
    input_sensitivity: float = 44.0
    initial_timeout: float = 0.0
    end_silence_timeout: float = 0.0
    max_length: float | None = None
    status_url: str | None = None


PAUSE_BEHAVIORS = ("silence", "skip")
#: Live recordings one call may have at once. Each holds files, an encoder (about 1 MB for MP4) and its
#: share of every media tick: a document of 3,000 record_call steps took 2.7 GB, every file descriptor of
#: the process and the media of every call with it (docs/security.md: a document is not trusted to
#: exhaust the process).
MAX_LIVE_PER_CALL = 10
#: Recordings one call may make in all: a loop of record_call and stop_record_call otherwise makes some
#: 50 a second for as long as the call lasts (up to 4 h), each two files and its metadata kept in memory.
#: A call recorded in one-minute segments for four hours makes 240.
MAX_PER_CALL = 1000


def channel_layout(direction: str, stereo: bool) -> dict[str, str]:
    if stereo:  # a side not recorded is a silent channel, and says so
        return {
            "left": "speak" if direction != "listen" else "silence",
            "right": "listen" if direction != "speak" else "silence",
        }
    return {"mono": "speak+listen" if direction == "both" else direction}


class Recording:
    def __init__(self, call: Call, store: RecordingStore, settings: RecordSettings) -> None:
        self.call = call
        self.store = store
        self.settings = settings
        self.recording_id = store.new_id()
        self.url = store.url_for(self.recording_id, settings.format)
        self.path = store.audio_path(self.recording_id, settings.format)
        #: ``new`` until the file is open (never written anywhere), then a RecordingState.
        self.state: RecordingState | Literal["new"] = "new"
        self.end_reason: RecordingEndReason | None = None
        self.terminator: str | None = None
        self.start_time: float | None = None
        self.end_time: float | None = None
        self.size = 0
        self.frames = 0  # written to the file
        self._received = 0
        # One frame is held back: when the recording stops at time T, the frame starting at T (whose tick
        # may run just before the stop at the same instant) is dropped, so durations are exact to a frame.
        self._pending: Frame | tuple[Frame | None, Frame | None] | None = None
        self._t0 = 0.0
        self.ended = asyncio.Event()
        self._writer: Writer | None = None
        self._vad: VoiceDetector | None = None
        self._heard_speech = False
        self._silent_frames = 0
        self._ending = False
        #: ``silence`` or ``skip`` while paused (HTTP API): silence keeps the timeline, skip leaves it out.
        self.paused: str | None = None
        self._skipped = 0  # frames left out while paused with skip
        self._silence = np.zeros(call.rate // FRAMES_PER_SECOND, dtype=np.int16)
        self._status = StatusReporter(call, settings.status_url, "calling.call.record", settings.control_id)
        s = settings
        self._max_frames = round(s.max_length * FRAMES_PER_SECOND) if s.max_length else None
        self._initial_frames = round(s.initial_timeout * FRAMES_PER_SECOND)
        self._silence_frames = round(s.end_silence_timeout * FRAMES_PER_SECOND)

    @property
    def duration(self) -> float:
        return self.frames / FRAMES_PER_SECOND

    # --- start ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the file and attach the tap; raises EncoderError if storage is unusable."""
        s = self.settings
        self.store.ensure()
        if self._initial_frames or self._silence_frames:
            try:
                self._vad = VoiceDetector(self.call.rate, s.input_sensitivity)
            except Exception as e:  # the model could not load: the recording fails, the call goes on
                raise EncoderError(f"voice activity detection unavailable: {type(e).__name__}: {e}") from None
        self._writer = open_writer(s.format, self.path, self.call.rate, 2 if s.stereo else 1, self.store.keyring)
        self.state = "recording"
        # Where its first sample is on the call's time line: the next frame's start (up to 20 ms on).
        self._t0 = self.call.next_frame_at()
        self.start_time = self.call.wall() + (self._t0 - self.call.now())
        try:
            self.store.write_metadata(self.metadata())
        except OSError as e:
            # Without its metadata no one would know the file (no API, no recovery, no upload): a
            # recording that cannot have it does not start, and leaves no file behind (a full disk).
            self._writer.discard()
            self._writer = None
            self.store.remove_local(self.recording_id, s.format)
            self.state = "error"
            raise EncoderError(f"cannot write {self.recording_id}.json: {e.strerror or e}") from None
        self.call.add_tap(self)
        if s.terminators:
            self.call.dtmf_listeners.append(self._on_digit)
        self._report("recording")

    # --- media (in the media tick: keep it lean) ----------------------------------------------------

    def on_frame(self, speak: Frame, listen: Frame) -> None:
        if self._ending or self._writer is None:
            return
        if self.paused is not None:
            if self.paused == "skip":
                self._skipped += 1
                return
            speak = listen = self._silence  # the file keeps the call's timeline, with nothing in it
        s = self.settings
        judged: Frame | None = None
        pending: Frame | tuple[Frame | None, Frame | None]
        if s.stereo:  # the two sides go straight into the writer's block (no stereo frame built here)
            pending = (speak if s.direction != "listen" else None, listen if s.direction != "speak" else None)
        else:
            pending = judged = (
                speak if s.direction == "speak" else listen if s.direction == "listen" else mix(speak, listen)
            )
        if self._pending is not None and not self._write_pending():
            return
        self._pending = pending
        self._received += 1
        if self._vad is not None and self.paused is None:  # VAD judges the recorded direction(s), mixed
            if judged is None:
                judged = speak if s.direction == "speak" else listen if s.direction == "listen" else mix(speak, listen)
            self._judge(judged)
        if self._max_frames is not None and self._received >= self._max_frames:
            self._end_soon("max_length")

    def on_gap(self, frames: int) -> None:
        """The call skipped ``frames`` ticks (an overloaded loop): silence of that length keeps the file whole."""
        if self._ending or self._writer is None or frames <= 0:
            return
        if self.paused == "skip":
            self._skipped += frames
            return
        if self._max_frames is not None:
            frames = min(frames, max(0, self._max_frames - self._received))
        if self._pending is not None and not self._write_pending():
            return
        channels = 2 if self.settings.stereo else 1
        pcm = np.zeros((frames * (self.call.rate // FRAMES_PER_SECOND), channels), dtype=np.int16)
        self._pending = pcm if channels == 2 else pcm[:, 0]
        if not self._write_pending():
            return
        self.frames += frames - 1  # (_write_pending counted one)
        self._received += frames
        self._silent_frames += frames
        if self._max_frames is not None and self._received >= self._max_frames:
            self._end_soon("max_length")

    def _write_pending(self) -> bool:
        pending = self._pending
        assert self._writer is not None and pending is not None
        try:
            if isinstance(pending, tuple):
                self._writer.write_channels(*pending)
            else:
                self._writer.write(pending)
        except EncoderError as e:
            self._pending = None
            self._end_soon("error", str(e))
            return False
        self._pending = None
        self.frames += 1
        return True

    def _judge(self, frame: Frame) -> None:
        assert self._vad is not None
        self._vad.feed(frame)
        if self._vad.heard:  # end_silence counts from the last frame that held speech, not its hangover
            self._heard_speech = True
            self._silent_frames = 0
            return
        self._silent_frames += 1
        if not self._heard_speech:
            if self._initial_frames and self._received >= self._initial_frames:
                self._end_soon("no_input")
        elif self._silence_frames and self._silent_frames >= self._silence_frames:
            self._end_soon("end_silence")

    def _on_digit(self, digit: str) -> None:
        if digit in self.settings.terminators and not self._ending:
            self.terminator = digit
            self._end_soon("terminator")

    def _end_soon(self, reason: RecordingEndReason, error: str | None = None) -> None:
        if self._ending:
            return
        self._ending = True
        self.call.remove_tap(self)
        if reason in ("max_length", "no_input", "end_silence") and self._pending is not None:
            self._write_pending()  # counted in frames: the frame that reached the limit belongs in the file
        if error:
            self._error(error)
        self.call.loop.create_task(self.stop(reason))

    # --- live control (HTTP API) -------------------------------------------------------------------

    def pause(self, behavior: str = "silence") -> bool:
        """Pause: ``silence`` writes silence meanwhile, ``skip`` leaves the time out of the file. False
        when there is nothing to pause (ended, or already paused)."""
        if behavior not in PAUSE_BEHAVIORS:
            raise ValueError(f"pause behavior {behavior!r} is not one of {', '.join(PAUSE_BEHAVIORS)}")
        if self.state != "recording" or self._ending or self.paused is not None:
            return False
        self.paused = behavior
        self._report("paused")
        return True

    def resume(self) -> bool:
        if self.paused is None or self._ending:
            return False
        self.paused = None
        self._report("recording")
        return True

    # --- end --------------------------------------------------------------------------------------

    async def stop(self, reason: RecordingEndReason) -> None:
        """End the recording (idempotent) and finalise file, metadata and callbacks."""
        if self.state not in ("recording",) or self.end_reason is not None:
            await self.ended.wait()
            return
        self.end_reason = reason
        self._ending = True
        self.call.remove_tap(self)
        with contextlib.suppress(ValueError):
            self.call.dtmf_listeners.remove(self._on_digit)
        state: RecordingState = "no_input" if reason == "no_input" else "error" if reason == "error" else "finished"
        # Ticks gone by since the start, against those accounted for (written, or left out by a skip
        # pause): a pending frame from the stop's own instant is one too many.
        due = round((self.call.now() - self._t0) / FRAME_SECONDS)
        if self._pending is not None and self._writer is not None and self.frames + self._skipped < due:
            self._write_pending()
        self._pending = None
        # The file covers [start_time, start_time + duration] exactly (frames, not the wall clock's jitter).
        self.end_time = (self.start_time or self.call.wall()) + (self.frames + self._skipped) / FRAMES_PER_SECOND
        try:
            if self._writer is not None:
                broken = self._writer.broken
                try:
                    self.path = self._writer.close()
                except Exception as e:  # an encoder's own failure too: the call and its other recordings go on
                    state, broken = "error", True
                    self._error(str(e) if isinstance(e, OSError | EncoderError) else f"{type(e).__name__}: {e}")
                for warning in self._writer.warnings:
                    self._error(warning)
                if broken:
                    self._salvage()
                self.size = stored_size(self.path, self.store.keyring)  # what is on disk, even after an error
            self.state = state
            self._save_metadata()
            self._report(state)
        finally:
            # What only a live recording needs goes with it (a voice detector is about 10 MB, given back
            # for the next recording): the call keeps its ended recordings, as many as its script made,
            # until it ends.
            if self._vad is not None:
                self._vad.close()
            self._vad = None
            self._writer = None
            self.ended.set()

    def _salvage(self) -> None:
        """A write failed: make what reached the disk playable, as recovery does after a crash, and say
        how long it is (the frames handed to the writer after the failure are not in it)."""
        s = self.settings
        self.path = self.store.audio_path(self.recording_id, s.format)
        try:
            seconds, _ = repair(s.format, self.path, self.call.rate, 2 if s.stereo else 1, self.store.keyring)
        except Exception as e:
            self._error(f"the part written could not be made playable: {type(e).__name__}: {e}")
            return
        self.frames = min(self.frames, round(seconds * FRAMES_PER_SECOND))

    def _error(self, message: str) -> None:
        self.call.events.emit("error", where=f"recording {self.recording_id}", message=message)

    # --- reporting ---------------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        s = self.settings
        return {
            "recording_id": self.recording_id,
            "call_id": self.call.call_id,
            "control_id": s.control_id,
            "method": s.method,
            "state": self.state,
            "format": s.format,
            "sample_rate": self.call.rate,
            "channels": 2 if s.stereo else 1,
            "channel_layout": channel_layout(s.direction, s.stereo),
            "direction": s.direction,
            "stereo": s.stereo,
            "duration": round(self.duration, 3),
            "size": self.size,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "end_reason": self.end_reason,
            "terminator": self.terminator,
            "url": self.url,
            "call_time": round(self._t0, 3),
            "bridges": self.bridges(),
        }

    def live_metadata(self) -> dict[str, Any]:
        """``metadata()`` as the HTTP API shows a recording while it runs, with ``pause_behavior``: how it is
        paused (``silence`` or ``skip``, as the ``paused`` status callback says), or None while it records.
        (``state`` stays ``recording`` while paused, as it always has in the API and in the metadata file,
        where recovery and uploads read it as "not finished"); ``size`` is the bytes on disk so far."""
        live = self.end_reason is None
        growing = part_path(self.path) if self.settings.format == "mp4" else self.path  # (an MP4 grows as its part)
        size = stored_size(growing, self.store.keyring) if live else self.size  # the bytes written so far
        return {**self.metadata(), "size": size, "pause_behavior": self.paused if live else None}

    def bridges(self) -> list[dict[str, Any]]:
        """The far parties bridged to the call while this recording ran (on the right channel of a
        stereo one, or in the mix): ``{to, call_id, start, end}`` on the call's clock, ``end`` None
        while still bridged. A bridge that ended before the recording started is not listed."""
        if self.end_reason is not None:
            end = self._t0 + (self.frames + self._skipped) / FRAMES_PER_SECOND
        else:
            end = self.call.now()
        return [
            asdict(leg) for leg in self.call.bridges if leg.start <= end and (leg.end is None or leg.end > self._t0)
        ]

    def _save_metadata(self) -> None:
        try:
            self.store.write_metadata(self.metadata())
        except OSError as e:
            self._error(f"metadata: {e}")

    def _params(self, state: RecordingState) -> dict[str, Any]:
        """A callback's ``params`` in this state: the union of what record.mdx and record_call.mdx show,
        each field present when the pages say it is (lengths once there is a file, times once it ended)."""
        s = self.settings
        params: dict[str, Any] = {"state": state, "url": self.url, "recording_id": self.recording_id}
        record: dict[str, Any] = {
            "format": s.format,
            "audio": {"format": s.format, "direction": s.direction, "stereo": s.stereo},
        }
        if state in ("finished", "no_input"):
            duration = round(self.duration, 3)
            params |= {"duration": duration, "size": self.size}
            record |= {"url": self.url, "duration": duration, "size": self.size}
        if state == "paused":
            params["pause_behavior"] = self.paused
        if self.end_reason is not None:
            params |= {"start_time": self.start_time, "end_time": self.end_time, "end_reason": self.end_reason}
        params["record"] = record
        return params

    def _report(self, state: RecordingState) -> None:
        params = self._params(state)
        # The same params as the status callback (docs/recording.md), which adds these three itself.
        ids = {"call_id": self.call.call_id, "node_id": NODE_ID, "control_id": self.settings.control_id}
        self.call.events.emit("record.state", **ids, **params)
        self._status.send(params)


class Recordings:
    """Every recording of one call; the call finalises the live ones when it ends."""

    def __init__(self, call: Call, store: RecordingStore) -> None:
        self.call = call
        self.store = store
        self.all: list[Recording] = []
        call.finalizers.append(self.stop_all)

    def live(self) -> list[Recording]:
        return [r for r in self.all if r.state == "recording" and r.end_reason is None]

    def start(self, settings: RecordSettings) -> Recording:
        if len(self.all) >= MAX_PER_CALL:
            raise EncoderError(f"this call has made {MAX_PER_CALL} recordings, the most one call may make")
        if len(self.live()) >= MAX_LIVE_PER_CALL:
            raise EncoderError(
                f"this call has {MAX_LIVE_PER_CALL} recordings live already, the most it may have at once: "
                "stop one first (stop_record_call)"
            )
        rec = Recording(self.call, self.store, settings)
        rec.start()
        self.all.append(rec)
        return rec

    def find(self, control_id: str | None) -> Recording | None:
        live = self.live()
        if control_id is None:
            return live[-1] if live else None
        for rec in reversed(live):
            if rec.settings.control_id == control_id:
                return rec
        return None

    def bridges_changed(self) -> None:
        """A bridge of the call started or ended: live recordings say so in their metadata at once
        (the service's index and API show who is on the line while the recording runs)."""
        for rec in self.live():
            rec._save_metadata()

    async def stop_all(self) -> None:
        reason: RecordingEndReason = "script_end" if self.call.end_reason == "script_end" else "hangup"
        for rec in self.live():
            try:
                await rec.stop(reason)
            except Exception as e:  # one recording's trouble never keeps the others unfinished
                rec._error(f"{type(e).__name__}: {e}")


def recordings_of(call: Call) -> Recordings:
    """The call's recordings (created on first use, in ``<data_dir>/recordings``)."""
    if call.recordings is None:
        store = call.options.recording_store
        if store is None:
            store = RecordingStore((call.options.data_dir or Path.cwd()) / "recordings")
        call.recordings = Recordings(call, store)
    recordings: Recordings = call.recordings
    return recordings
