"""Players write into a call's listen stream: what the party hears.

A :class:`Playback` pulls 20 ms frames from an iterator. It looks one frame ahead, so it reports
``done`` together with its last frame: the step after a ``play`` starts on the very next frame, with no
gap, on the virtual clock and on the real one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from swml_engine.media.frame import Frame, gain, mix, silence


class Playback:
    def __init__(self, frames: Iterator[Frame], volume_db: float = 0.0) -> None:
        self._frames = frames
        self._gain = 10 ** (volume_db / 20.0)
        self._next: Frame | None = next(frames, None)
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.frames_played = 0
        if self._next is None:
            self._finish("finished")

    def _finish(self, how: str) -> None:
        if not self.done.done():
            self.done.set_result(how)

    def stop(self) -> None:
        """Stop now (barge-in, hangup); ``done`` resolves to ``"stopped"``."""
        self._next = None
        self._finish("stopped")

    @property
    def active(self) -> bool:
        return self._next is not None

    def pull(self) -> Frame | None:
        frame = self._next
        if frame is None:
            return None
        self._next = next(self._frames, None)
        self.frames_played += 1
        if self._next is None:
            self._finish("finished")
        return gain(frame, self._gain)


class Player:
    """Mixes every active playback into the listen stream; silence when nothing plays."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.playbacks: list[Playback] = []

    def start(self, frames: Iterator[Frame], volume_db: float = 0.0) -> Playback:
        pb = Playback(frames, volume_db)
        if pb.active:
            self.playbacks.append(pb)
        return pb

    def stop_all(self) -> None:
        for pb in self.playbacks:
            pb.stop()
        self.playbacks.clear()

    def next_frame(self) -> Frame:
        if not self.playbacks:
            return silence(self.rate)
        out: Frame | None = None
        for pb in self.playbacks:
            frame = pb.pull()
            if frame is not None:
                out = frame if out is None else mix(out, frame)
        self.playbacks = [pb for pb in self.playbacks if pb.active]
        return out if out is not None else silence(self.rate)
