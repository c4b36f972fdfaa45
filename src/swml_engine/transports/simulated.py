"""Simulated parties for ``swml run`` and the tests: a caller, and the far parties ``connect`` dials.

The caller's audio (``--caller-audio``) starts when the call is answered; digits (``--dtmf``) and the
hangup (``--hangup-at``) happen at fixed seconds from the start of the call. Everything the caller
hears is written to ``heard.wav`` from the first frame, so a time in ``events.jsonl`` is the same
time in ``heard.wav``.

A far party (``--peer``, :func:`parse_peer`) is a :class:`PeerScript`: what happens when it is dialled
(it rings, answers, is busy, rejects, never answers) and, once answered, what it says, presses and when
it hangs up. :class:`SimulatedDialer` gives ``connect`` one :class:`SimulatedFarTransport` per dial, on
the call's clock (virtual in ``swml run``), so a bridged script runs offline and the same every time.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import wave
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from swml_engine.dialing import CannotDial, DialFailure, DialTarget, FarTransport
from swml_engine.media.audio import AudioError, decode
from swml_engine.media.frame import Frame, Samples, samples_per_frame
from swml_engine.transports.base import CallSide, ReferStatus, Transport
from swml_engine.transports.sip.refer import TRANSFER_WAIT
from swml_engine.vocabulary import EndReason, FailReason

#: Gap between digits pressed in one group (``--dtmf 3:123``).
DIGIT_GAP = 0.25
_DTMF_ITEM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*:\s*([0-9A-Da-d*#]+)\s*$")
_DIGITS = re.compile(r"\s*[0-9A-Da-d*#]+\s*")


def parse_dtmf_schedule(text: str) -> list[tuple[float, str]]:
    """``"3:12#,10.5:9"`` → [(3.0, '1'), (3.25, '2'), (3.5, '#'), (10.5, '9')]; ValueError says what is wrong."""
    out: list[tuple[float, str]] = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        m = _DTMF_ITEM.match(item)
        if m is None:
            raise ValueError(f"{item!r} is not T:DIGITS (seconds, a colon, then digits 0-9 * # A-D)")
        t = float(m.group(1))
        out.extend((t + i * DIGIT_GAP, d.upper()) for i, d in enumerate(m.group(2)))
    return sorted(out)


@dataclass
class CallerScript:
    audio: Samples | None = None  # mono int16 at the call's rate, starts at answer
    dtmf: list[tuple[float, str]] = field(default_factory=list)
    hangup_at: float | None = None
    #: The parties the caller reaches when ``sip_refer`` transfers it (``--peer``, as ``connect`` dials them).
    peers: tuple[PeerScript, ...] = ()


#: Audio bytes a plain WAV can hold (its sizes are 32-bit).
_WAV_LIMIT = 0xFFFFFFFF - 64


class HeardWriter:
    """Writes what the caller hears to a mono 16-bit WAV, a second at a time (flat memory).

    A failed write (a full disk) stops the file where it is and says so once in :attr:`error`; the call
    goes on, it only loses its transcript of what was heard.
    """

    def __init__(self, path: Path, rate: int) -> None:
        self._wav = wave.open(str(path), "wb")  # noqa: SIM115 - closed in close()
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(rate)
        self._pending: list[Frame] = []
        self._bytes = 0
        self.error: str | None = None

    def write(self, frame: Frame) -> None:
        if self.error is None:
            self._pending.append(frame)
            if len(self._pending) >= 50:
                self.flush()

    def flush(self) -> None:
        if self._pending:
            data = np.concatenate(self._pending).astype("<i2").tobytes()
            self._pending.clear()
            self._bytes += len(data)
            if self._bytes > _WAV_LIMIT:
                self.error = (
                    "heard.wav reached the 4 GiB a WAV file can hold; what the caller heard is no longer written"
                )
                return
            try:
                self._wav.writeframes(data)
            except OSError as e:
                self.error = f"heard.wav: {e.strerror or e}; what the caller heard is no longer written"

    def close(self) -> None:
        self.flush()
        with contextlib.suppress(OSError):
            self._wav.close()


class Voice:
    """What a simulated party says: a sound played from its start, 20 ms at each read, then nothing."""

    def __init__(self, rate: int) -> None:
        self._n = samples_per_frame(rate)
        self._audio: Samples | None = None
        self._pos = 0

    def say(self, audio: Samples | None) -> None:
        """Say ``audio`` from its first sample on (None: fall silent)."""
        self._audio, self._pos = audio, 0

    def read(self) -> Frame | None:
        audio = self._audio
        if audio is None or self._pos >= len(audio):
            return None
        frame = audio[self._pos : self._pos + self._n]
        self._pos += self._n
        if len(frame) < self._n:  # its end, padded with silence
            frame = np.concatenate([frame, np.zeros(self._n - len(frame), dtype=np.int16)])
        return frame

    def skip(self, frames: int) -> None:
        self._pos += frames * self._n


def hear(writer: HeardWriter | None, frame: Frame, call: CallSide | None, name: str) -> HeardWriter | None:
    """Write what a simulated party heard; a file that fails is closed once, with one ``error`` event
    on the call (None is given back: nothing more is written)."""
    if writer is None:
        return None
    writer.write(frame)
    if writer.error is None:
        return writer
    if call is not None:
        call.events.emit("error", where=name, message=writer.error)
    writer.close()
    return None


class SimulatedTransport(Transport):
    kind = "phone"

    def __init__(self, rate: int = 8000, script: CallerScript | None = None, heard: Path | None = None) -> None:
        self.rate = rate
        self.script = script or CallerScript()
        self._heard = HeardWriter(heard, rate) if heard is not None else None
        self._voice = Voice(rate)  # the caller's audio, from the answer
        self._timers: list[asyncio.TimerHandle] = []
        self.sent_digits: list[str] = []
        self.answered = False
        self.hangup_reason: EndReason | None = None

    def on_call_start(self) -> None:
        call = self.call
        assert call is not None
        loop = call.loop
        t0 = loop.time() - call.now()  # the call's start on the loop's clock
        for t, digit in self.script.dtmf:
            self._timers.append(loop.call_at(t0 + t, call.on_dtmf, digit))
        if self.script.hangup_at is not None:
            self._timers.append(loop.call_at(t0 + self.script.hangup_at, self.caller_hangs_up))

    def caller_hangs_up(self) -> None:
        """The caller goes (``--hangup-at``, a first Ctrl-C): a hangup once answered, before that a cancel
        (``remote_cancel``), as a SIP caller's BYE or CANCEL ends a call of ``swml serve``."""
        if self.call is not None:
            self.call.on_remote_hangup("hangup" if self.answered else "cancel")

    def read_speak(self) -> Frame | None:
        return self._voice.read()

    def write_listen(self, frame: Frame) -> None:
        self._heard = hear(self._heard, frame, self.call, "heard.wav")

    async def answer(self) -> None:
        self.answered = True
        self._voice.say(self.script.audio)

    async def hangup(self, reason: EndReason) -> None:
        self.hangup_reason = reason

    async def send_dtmf(self, digit: str, duration: float) -> None:
        self.sent_digits.append(digit)
        await asyncio.sleep(duration)

    async def refer(
        self, to_uri: str, credentials: tuple[str, str] | None, progress: Callable[[ReferStatus], None]
    ) -> ReferStatus:
        """The simulated caller takes the REFER (202) and calls ``to_uri``, which does what its ``--peer``
        says, told as a SIP caller's NOTIFYs would tell it: 100 at once, 180 at its ring, then 200 at its
        answer, 486 busy, its reject code, 503 unreachable, or nothing final before the 180 s a transfer
        may take (no-answer). A destination with no peer answers 404."""
        progress(ReferStatus("pending", 202))
        peer = next((p for p in self.script.peers if p.to == to_uri), None)
        if peer is None:
            why = f"no simulated party answers {to_uri}: add --peer '{to_uri}=answer@1s' to swml run"
            return _told(progress, ReferStatus("failed", 202, 404, why))
        progress(ReferStatus("pending", 202, 100))
        end = TRANSFER_WAIT if peer.outcome == "no-answer" else peer.at
        ring = peer.ring_time if peer.ring_time is not None and peer.ring_time < end else None
        if ring is not None:
            await asyncio.sleep(ring)
            progress(ReferStatus("pending", 202, 180))
        await asyncio.sleep(end - (ring or 0.0))
        if peer.outcome == "answer":
            return _told(progress, ReferStatus("success", 202, 200))
        if peer.outcome == "no-answer":
            return _told(progress, ReferStatus("failed", 202, 180, f"no final NOTIFY within {TRANSFER_WAIT:.0f} s"))
        code = {"busy": 486, "unreachable": 503}.get(peer.outcome, peer.code or 603)
        why = f"the target answered {code} {_REJECT_TEXT.get(code, 'Rejected')}"
        return _told(progress, ReferStatus("failed", 202, code, why))

    async def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        if self._heard is not None:
            self._heard.close()
            self._heard = None


# --- simulated far parties (``swml run --peer``) ---------------------------------------------------

#: What a far party does when dialled.
PeerOutcome = Literal["answer", "busy", "no-answer", "reject", "unreachable"]

#: Longest time a peer spec may name (the 4 h a call may last at most).
PEER_MAX_SECONDS = 14400.0
#: Longest --peer text.
PEER_MAX_TEXT = 4096
#: What-the-far-party-heard files one --peer writes at most (a script dialling it in a loop).
PEER_HEARD_FILES = 20
#: The names of those files (``peer-<n>-heard.wav``, ``peer-<n>-heard-<k>.wav``): an earlier run's are
#: removed from ``--out`` before a run, as its heard.wav is replaced.
PEER_HEARD_NAME = re.compile(r"peer-[1-9][0-9]*-heard(?:-[1-9][0-9]*)?\.wav")

_OUTCOMES: dict[str, PeerOutcome] = {w: w for w in get_args(PeerOutcome)}
_TIME = re.compile(r"^(\d+(?:\.\d+)?)(ms|s)?$")
_ITEM_WORDS = (
    "answer",
    "busy",
    "no-answer",
    "reject",
    "unreachable",
    "ring",
    "early",
    "audio",
    "hangup",
    "dtmf",
    "rate",
    "events",
)
#: The ``=`` that ends the destination: the first one followed by an item (a SIP URI's ``;p=v`` is not).
_SPLIT = re.compile(r"=(?=(?:" + "|".join(re.escape(w) for w in _ITEM_WORDS) + r")(?:[@:,]|$))")

#: A reject code → the dial plan's reason for it (connect_failed_reason).
_REJECT_REASON: dict[int, FailReason] = {486: "busy", 600: "busy", 408: "no_answer", 480: "no_answer"}
_REJECT_TEXT = {
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    480: "Temporarily Unavailable",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    500: "Server Internal Error",
    503: "Service Unavailable",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
}

PEER_SYNTAX = (
    "DEST=ITEM[,ITEM...] with one outcome: answer[@T], busy[@T], no-answer, reject:CODE[@T] or "
    "unreachable[@T] (T seconds from the dial); and optionally ring@T, early:WAV, audio:WAV, "
    "dtmf:T:DIGITS, hangup@T (T seconds from its answer) or hangup@end, rate:8000|16000, events"
)


@dataclass(frozen=True)
class PeerScript:
    """One simulated far party: what it does when dialled, and once answered.

    Times of the dial (``at``, ``ring_at``) count from the moment it is dialled; times of the
    conversation (``dtmf``, ``hangup``) from its answer.
    """

    to: str
    outcome: PeerOutcome = "answer"
    #: When the outcome happens (answer, busy, reject, unreachable); none for no-answer.
    at: float = 0.0
    #: The SIP status of a reject (400-699).
    code: int | None = None
    #: When it starts ringing; None: at once for answer/no-answer, never for the others.
    ring_at: float | None = None
    #: What it sends before its answer (early media: a 183 with SDP), from the ring on.
    early: Path | Samples | None = None
    #: What it says from its answer.
    audio: Path | Samples | None = None
    #: Digits it presses, seconds after its answer (250 ms apart within a group).
    dtmf: tuple[tuple[float, str], ...] = ()
    #: When it hangs up: seconds after its answer, ``"end"`` when its audio has played, None never.
    hangup: float | Literal["end"] | None = None
    #: Its sample rate (16000: a G.722 far party); None: the caller's.
    rate: int | None = None
    #: It takes digits as events (a SIP party that negotiated telephone-event): a caller's in-band
    #: digits are sent to it as events too. Without it, as a party that takes none, those reach it only
    #: as the tones in the caller's audio (key presses still cross: ``sent_digits``).
    events: bool = False

    @property
    def ring_time(self) -> float | None:
        if self.ring_at is not None:
            return self.ring_at
        return 0.0 if self.outcome in ("answer", "no-answer") else None


def _peer_time(text: str, item: str) -> float:
    m = _TIME.match(text.strip())
    if m is None:
        raise ValueError(f"{item!r}: {text!r} is not a time (seconds: 3, 2.5s or 500ms)")
    value = float(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0)
    if value > PEER_MAX_SECONDS:
        raise ValueError(f"{item!r}: {text!r} is longer than the {PEER_MAX_SECONDS:.0f} s a call may last")
    return value


def parse_peer(text: str) -> PeerScript:
    """``'sip:agent@example.com=answer@3s,audio:agent.wav'`` → a :class:`PeerScript`; ValueError says
    what is wrong (see :data:`PEER_SYNTAX`). Audio files are named, not read: see :class:`SimulatedDialer`."""
    if len(text) > PEER_MAX_TEXT:
        raise ValueError(f"{text[:40]!r}...: longer than {PEER_MAX_TEXT} characters")
    m = _SPLIT.search(text)
    if m is None:
        raise ValueError(f"{text!r}: write {PEER_SYNTAX}")
    to, items = text[: m.start()].strip(), [i.strip() for i in text[m.end() :].split(",")]
    if not to:
        raise ValueError(f"{text!r}: the destination before '=' is empty")
    peer = PeerScript(to=to)
    outcome: PeerOutcome | None = None
    dtmf: list[tuple[float, str]] = []
    for item in items:
        word, _, arg = item.partition(":")
        word, _, at = word.partition("@")
        if word in _OUTCOMES:
            if outcome is not None:
                raise ValueError(f"{item!r}: the peer already has an outcome ({outcome}); give one")
            outcome = _OUTCOMES[word]
            if word == "reject":
                arg, _, at = arg.partition("@")
                if not arg.isdigit() or not 400 <= int(arg) <= 699:
                    raise ValueError(f"{item!r}: reject:CODE takes a SIP status from 400 to 699")
                peer = replace(peer, code=int(arg))
            elif arg:
                raise ValueError(f"{item!r}: {word} takes no ':' argument")
            if at:
                if word == "no-answer":
                    raise ValueError(f"{item!r}: no-answer rings until the dial plan gives up; it takes no time")
                peer = replace(peer, at=_peer_time(at, item))
        elif word == "ring" and at and not arg:
            peer = replace(peer, ring_at=_peer_time(at, item))
        elif word == "early" and arg and not at:
            peer = replace(peer, early=Path(arg))
        elif word == "audio" and arg and not at:
            peer = replace(peer, audio=Path(arg))
        elif word == "hangup" and at and not arg:
            peer = replace(peer, hangup="end" if at == "end" else _peer_time(at, item))
        elif word == "dtmf" and arg and not at:
            when, _, digits = arg.partition(":")
            if not _TIME.match(when.strip()) or not _DIGITS.fullmatch(digits.strip()):
                raise ValueError(f"{item!r} is not T:DIGITS (T: 2, 2.5s or 500ms after its answer; digits 0-9 * # A-D)")
            dtmf.extend(parse_dtmf_schedule(f"{_peer_time(when, item):f}:{digits}"))
            if dtmf[-1][0] > PEER_MAX_SECONDS:
                raise ValueError(f"{item!r}: later than the {PEER_MAX_SECONDS:.0f} s a call may last")
        elif word == "rate" and arg in ("8000", "16000") and not at:
            peer = replace(peer, rate=int(arg))
        elif word == "events" and not arg and not at:
            peer = replace(peer, events=True)
        else:
            raise ValueError(f"{item!r} is not an item of {PEER_SYNTAX}")
    if outcome is None:
        raise ValueError(f"{text!r}: say what the peer does: answer[@T], busy, no-answer, reject:CODE or unreachable")
    if outcome != "answer" and (peer.audio is not None or peer.hangup is not None or dtmf):
        raise ValueError(f"{text!r}: audio, dtmf and hangup happen after an answer; this peer does not answer")
    peer = replace(peer, outcome=outcome, dtmf=tuple(sorted(dtmf)))
    ring = peer.ring_time
    if peer.early is not None and outcome != "no-answer" and (ring is None or ring >= peer.at):
        # (a carrier's announcement before a busy: its 183 is a ring, which busy and reject do not give)
        raise ValueError(
            f"{text!r}: early:WAV plays from its ring until its {outcome} at {peer.at:g} s, and it does not ring "
            "before then: give ring@T earlier (ring@0: at once)"
        )
    return peer


class SimulatedFarTransport(FarTransport):
    """A far party played from a :class:`PeerScript`, on its call's clock.

    :meth:`dial` schedules the dial's steps (ringing, early media, the outcome) from now; at its answer
    the far party's audio starts, its digits and hangup are scheduled from then. What the far party
    hears is written to ``heard`` (mono WAV at its rate) from the far call's first frame.
    """

    kind = "sip"

    def __init__(
        self,
        target: DialTarget,
        peer: PeerScript,
        rate: int,
        *,
        audio: Samples | None = None,
        early: Samples | None = None,
        heard: Path | None = None,
    ) -> None:
        super().__init__(target)
        self.peer = peer
        self.rate = rate
        self.takes_dtmf_events = peer.events
        self._audio = audio
        self._early = early
        self._heard = HeardWriter(heard, rate) if heard is not None else None
        self.heard_path = heard
        #: What the far party sends now: its early media, then its audio from the answer.
        self._voice = Voice(rate)
        self._timers: list[asyncio.TimerHandle] = []
        self.sent_digits: list[str] = []
        self.hangup_reason: EndReason | None = None

    # --- dialling ----------------------------------------------------------------------------------

    def _at(self, delay: float, fn: object, *args: object) -> None:
        loop = self.call.loop if self.call is not None else asyncio.get_running_loop()
        self._timers.append(loop.call_later(delay, fn, *args))  # type: ignore[arg-type]

    def dial(self) -> None:
        peer = self.peer
        ring = peer.ring_time
        if ring is not None and (peer.outcome == "no-answer" or ring < peer.at):
            self._at(ring, self._ring)
        if peer.outcome == "answer":
            self._at(peer.at, self._answer)
        elif peer.outcome != "no-answer":
            self._at(peer.at, self._fail)

    @property
    def heard_from(self) -> bool:
        # An unreachable peer says nothing before its outcome; every other one is there from the dial.
        return self.peer.outcome != "unreachable" or self.state != "created"

    def _ring(self) -> None:
        if self.settled:
            return
        self.report("ringing")
        if self._early is not None:
            self._voice.say(self._early)
            self.report("early_media")

    def _answer(self) -> None:
        if self.settled:
            return
        self._voice.say(self._audio)
        self.report("answered")
        call = self.call
        if call is None:
            return
        for t, digit in self.peer.dtmf:
            self._at(t, self._press, digit)
        hangup = self.peer.hangup
        if hangup == "end":
            played = 0.0 if self._audio is None else len(self._audio) / self.rate
            self._at(played, self._hang_up)
        elif hangup is not None:
            self._at(hangup, self._hang_up)

    def _fail(self) -> None:
        if self.settled:
            return
        peer = self.peer
        if peer.outcome == "busy":
            failure = DialFailure("busy", 486, "Busy Here")
        elif peer.outcome == "reject" and peer.code is not None:
            reason = _REJECT_REASON.get(peer.code, "rejected")
            failure = DialFailure(reason, peer.code, _REJECT_TEXT.get(peer.code, "Rejected"))
        else:
            failure = DialFailure("unreachable", None, f"{peer.to} is unreachable (--peer ...=unreachable)")
        self._stop()
        self.report("failed", failure)

    def _press(self, digit: str) -> None:
        if self.call is not None and self.state == "answered":
            self.call.on_dtmf(digit)

    def _hang_up(self) -> None:
        if self.state != "answered":
            return
        self._stop()
        self.report("ended")
        if self.call is not None:
            self.call.on_remote_hangup("hangup")

    def cancel(self, *, elsewhere: bool = False) -> None:
        if self.state in ("failed", "ended"):
            return
        answered = self.state == "answered"
        self._stop()
        if answered:
            self.report("ended")
        else:
            self.report("failed", DialFailure("cancelled", 487, "Request Terminated"))

    def _stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._voice.say(None)

    # --- media ---------------------------------------------------------------------------------------

    def read_speak(self) -> Frame | None:
        return self._voice.read()

    def skip(self, frames: int) -> None:
        self._voice.skip(frames)

    def write_listen(self, frame: Frame) -> None:
        self._heard = hear(self._heard, frame, self.call, self.heard_path.name if self.heard_path else "")

    async def hangup(self, reason: EndReason) -> None:
        """Our side ends the far call (the dial plan or the bridge is done with it)."""
        self.hangup_reason = reason
        self.cancel()

    async def send_dtmf(self, digit: str, duration: float) -> None:
        self.sent_digits.append(digit)
        await asyncio.sleep(duration)

    async def close(self) -> None:
        self._stop()
        if self._heard is not None:
            self._heard.close()
            self._heard = None


class SimulatedDialer:
    """The far parties of one simulated call (``swml run --peer``): a :class:`~swml_engine.dialing.Dialer`.

    A destination is matched exactly against each peer's (the first given wins). A destination with no
    peer cannot be dialled (``unreachable``). When ``out`` is given, what the n-th peer heard goes to
    ``peer-<n>-heard.wav`` there (``peer-<n>-heard-<k>.wav`` for its k-th dial, up to
    :data:`PEER_HEARD_FILES`). Audio files are decoded at the far leg's rate on first use.
    """

    def __init__(self, peers: list[PeerScript], out: Path | None = None) -> None:
        self.peers = list(peers)
        self.out = out
        self._dials = [0] * len(self.peers)
        self._decoded: dict[tuple[int, int, str], Samples] = {}
        #: Every far transport placed, in order (tests look at what each heard and was sent).
        self.placed: list[SimulatedFarTransport] = []

    def place(self, target: DialTarget, rate: int) -> SimulatedFarTransport:
        index = next((i for i, p in enumerate(self.peers) if p.to == target.to), None)
        if index is None:
            raise CannotDial(
                DialFailure(
                    "unreachable",
                    text=f"no simulated far party answers {target.to}: add --peer '{target.to}=answer@1s' to swml run",
                )
            )
        peer = self.peers[index]
        far_rate = peer.rate or rate
        self._dials[index] += 1
        heard = None
        dials = self._dials[index]
        if self.out is not None and dials <= PEER_HEARD_FILES:
            suffix = "" if dials == 1 else f"-{dials}"
            heard = self.out / f"peer-{index + 1}-heard{suffix}.wav"
        transport = SimulatedFarTransport(
            target,
            peer,
            far_rate,
            audio=self._samples(index, peer.audio, far_rate, "audio"),
            early=self._samples(index, peer.early, far_rate, "early"),
            heard=heard,
        )
        self.placed.append(transport)
        return transport

    def _samples(self, index: int, source: Path | Samples | None, rate: int, what: str) -> Samples | None:
        if source is None or not isinstance(source, Path):
            return source
        key = (index, rate, what)
        if key not in self._decoded:
            try:
                self._decoded[key] = decode(source, rate)
            except (AudioError, OSError) as e:
                raise CannotDial(
                    DialFailure("error", text=f"--peer {self.peers[index].to}: {what}:{source}: {e}")
                ) from None
        return self._decoded[key]


def _told(progress: Callable[[ReferStatus], None], status: ReferStatus) -> ReferStatus:
    """A simulated transfer's last step: told, and given back."""
    progress(status)
    return status
