"""The ``swml`` command: ``validate`` documents, ``run`` one on a simulated call (``serve`` comes with SIP)."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from swml_engine.errors import DocumentError

if TYPE_CHECKING:  # (the run's modules load when it runs: swml validate starts fast)
    from swml_engine.media.frame import Samples
    from swml_engine.session import CtrlC

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_UNSUPPORTED = 0, 1, 2, 3
#: Ctrl-C (SIGINT) ended the run: 128 + the signal's number, as shells report it.
EXIT_INTERRUPTED = 130
#: The reader of the output went away (``swml validate doc.yaml | head -1``): 128 + SIGPIPE, as a shell
#: reports a command that a closed pipe stopped.
EXIT_BROKEN_PIPE = 141


def _seconds(text: str) -> float:
    """A time on the call: a finite number of seconds, not negative."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds from the call's start (0 or more)")
    return value


def _pairs(values: list[str], option: str) -> list[tuple[str, str]]:
    """``NAME=VALUE`` options in the order given, a name given twice kept twice (a SIP INVITE's headers
    may repeat a name: ``swml serve`` gives the script each one)."""
    out: list[tuple[str, str]] = []
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            print(f"swml run: {option} {item!r}: write NAME=VALUE", file=sys.stderr)
            raise SystemExit(EXIT_USAGE)
        out.append((name.strip(), value))
    return out


def _refused(file: str, e: DocumentError) -> int:
    """Say every error of a document, then every method it uses that this engine does not run; the exit
    code: invalid, else unsupported."""
    for err in (*e.errors, *e.unsupported):
        print(f"{file}: {err}", file=sys.stderr)
    return EXIT_INVALID if e.errors else EXIT_UNSUPPORTED


def cmd_validate(args: argparse.Namespace) -> int:
    from swml_engine.document.loader import load_file
    from swml_engine.methods import REGISTRY

    worst = EXIT_OK
    for file in args.files:
        try:
            load_file(file, methods=REGISTRY)
        except DocumentError as e:
            if _refused(file, e) == EXIT_INVALID:
                worst = EXIT_INVALID  # invalid outranks unsupported
            elif worst == EXIT_OK:
                worst = EXIT_UNSUPPORTED
            continue
        if not args.quiet:
            print(f"{file}: ok")
    return worst


class Progress:
    """A one-line progress bar on stderr, shown once a run has taken more than a couple of seconds.

    Events say how far the call is; a redraw thread keeps the line moving between them (on the wall
    clock's pace when the run follows it, ``--realtime``). Once the call is over, the run may still wait
    for status callbacks (up to ``callback_wait`` s): after a couple of seconds of that, one line says so
    (``notes``), so a receiver that is down does not look like a hang.
    """

    def __init__(
        self, total: float | None, enabled: bool, realtime: bool = False, notes: bool = False, callback_wait: float = 0
    ) -> None:
        self.total = total
        self.enabled = enabled
        self.realtime = realtime
        self.notes = notes
        self.callback_wait = callback_wait
        self.start = time.monotonic()
        self.shown = False
        self._t = 0.0  # call time of the latest event
        self._at = self.start  # when it came
        self._ended_at: float | None = None  # when the call's end came
        self._noted = False
        self._done = threading.Event()
        self._lock = threading.Lock()
        if enabled or notes:
            threading.Thread(target=self._redraw, name="swml-progress", daemon=True).start()

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("type") == "call.state" and event.get("state") == "ended":
            self._ended_at = time.monotonic()
        if self.enabled:
            self._t, self._at = float(event.get("t", self._t)), time.monotonic()

    def _note_wait(self, now: float, ended_at: float) -> None:
        if not self.notes or self._noted or now - ended_at < 2.0:
            return
        with self._lock:
            if not self._done.is_set():
                sys.stderr.write(
                    ("\n" if self.shown else "") + "the call is over; waiting for status callbacks still being "
                    f"delivered (up to {self.callback_wait:g} s; each attempt is a callback event; "
                    "Ctrl-C stops waiting)\n"
                )
                sys.stderr.flush()
                self.shown = False
            self._noted = True

    def _redraw(self) -> None:
        while not self._done.wait(0.25):
            now = time.monotonic()
            ended_at = self._ended_at
            if ended_at is not None:
                self._note_wait(now, ended_at)
                continue
            if not self.enabled or now - self.start < 2.0:
                continue
            t = self._t + (now - self._at if self.realtime else 0.0)
            if self.total:
                t = min(t, self.total)
                bar = "#" * int(t / self.total * 30)
                line = f"\r[{bar:<30}] call time {t:7.1f} s of {self.total:.0f} s"
            else:
                line = f"\rcall time {t:7.1f} s ({now - self.start:.0f} s wall)"
            with self._lock:
                if not self._done.is_set():
                    sys.stderr.write(line)
                    sys.stderr.flush()
                    self.shown = True

    def close(self) -> None:
        with self._lock:
            self._done.set()
            if self.shown:
                sys.stderr.write("\n")


def cmd_run(args: argparse.Namespace) -> int:
    from swml_engine.document.loader import load_file
    from swml_engine.media.audio import AudioError, decode
    from swml_engine.methods import REGISTRY
    from swml_engine.recording.crypt_cli import load_keys
    from swml_engine.session import CtrlC, Simulation, simulate
    from swml_engine.transports.simulated import PeerScript, parse_dtmf_schedule, parse_peer

    try:
        doc = load_file(args.file, methods=REGISTRY)
    except DocumentError as e:
        return _refused(args.file, e)
    try:
        dtmf = parse_dtmf_schedule(args.dtmf or "")
    except ValueError as e:
        print(f"swml run: --dtmf: {e}", file=sys.stderr)
        return EXIT_USAGE
    peers: list[PeerScript] = []
    for text in args.peer:
        try:
            peer = parse_peer(text)
        except ValueError as e:
            print(f"swml run: --peer {e}", file=sys.stderr)
            return EXIT_USAGE
        try:  # its sounds decoded here, as --caller-audio is: a file FFmpeg cannot read is a bad option
            rate = peer.rate or args.rate  # (the far leg's rate, as the dialer would decode them)
            peer = replace(peer, early=_sound(peer.early, "early", rate), audio=_sound(peer.audio, "audio", rate))
        except ValueError as e:
            print(f"swml run: --peer {text!r}: {e}", file=sys.stderr)
            return EXIT_USAGE
        peers.append(peer)
    caller = Path(args.caller_audio) if args.caller_audio else None
    if caller is not None and not caller.is_file():
        print(f"swml run: --caller-audio: no such file: {caller}", file=sys.stderr)
        return EXIT_USAGE
    caller_audio = None
    if caller is not None:
        try:  # decoded here, so a file FFmpeg cannot read is named with its option
            caller_audio = decode(caller, args.rate)
        except (AudioError, OSError) as e:
            print(f"swml run: --caller-audio {caller}: {e}", file=sys.stderr)
            return EXIT_USAGE
    keyring = load_keys(args.encrypt_key_file, "run")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file of that name, a read-only place: say so before the call runs
        why = "a file of that name is in the way" if isinstance(e, FileExistsError) else e.strerror or str(e)
        print(f"swml run: --out {out}: cannot make the output directory: {why}", file=sys.stderr)
        return EXIT_USAGE
    progress = Progress(
        args.hangup_at,
        sys.stderr.isatty() and not args.quiet,
        args.realtime,
        notes=not args.quiet,
        callback_wait=Simulation.callback_wait,
    )

    def stop_now() -> None:  # a Ctrl-C after the one that hung up (the run's loop calls it)
        progress.close()
        sys.stdout.flush()
        print(
            f"swml run: stopped at once (Ctrl-C again); a recording left unfinished is repaired at the next "
            f"run into {out} (or by swml recover {out})",
            file=sys.stderr,
            flush=True,
        )
        os._exit(EXIT_INTERRUPTED)

    # A SIGINT ignored when the run started (a background job of a script) stays ignored, as POSIX has it.
    ctrl_c = CtrlC(stop_now) if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN else None
    sim = Simulation(
        caller_audio=caller_audio,
        dtmf=dtmf,
        hangup_at=args.hangup_at,
        from_=args.from_,
        to=args.to,
        headers=_pairs(args.header, "--header"),
        envs=dict(_pairs(args.env, "--env")),
        rate=args.rate,
        out=out,
        peers=peers,
        realtime=args.realtime,
        on_event=progress,
        keyring=keyring,
        ctrl_c=ctrl_c,
    )
    started = time.monotonic()
    try:
        res = simulate(doc, sim)
    except Exception as e:  # e.g. undecodable --caller-audio: one line, no traceback
        progress.close()
        print(f"swml run: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_INVALID
    progress.close()
    wall = time.monotonic() - started
    errors = [e for e in res.events if e["type"] == "error"]
    for ev in res.events:
        if ev["type"] == "record.recovered":  # said even with --quiet: files changed that this run did not make
            print(f"recovered recording {ev['recording_id']} of a killed run: {ev['duration']:.2f} s ({ev['note']})")
    if not args.quiet:
        print(f"call ended after {res.duration:.2f} s of call time ({wall:.2f} s wall): {res.result.reason}")
        print(f"steps run: {sum(1 for e in res.events if e['type'] == 'step.end')}, errors: {len(errors)}")
        for ev in errors[:10]:
            print(f"  error at {ev['t']:.2f} s: {_placed(ev)}")
        if len(errors) > 10:
            print(f"  ... and {len(errors) - 10} more errors in events.jsonl")
        notes = [(ev["t"], note) for ev in res.events if (note := _note(ev))]
        for t, note in notes[:10]:
            print(f"  note at {t:.2f} s: {note}")
        if len(notes) > 10:
            print(f"  ... and {len(notes) - 10} more notes in events.jsonl")
        for note in _not_reached(dtmf, caller_audio is not None, res.duration, res.events):
            print(f"  note: {note}")
        sent, delivered = _callbacks(res.events)
        if sent:
            print(f"status callbacks: {delivered} of {sent} delivered (each attempt is a callback event)")
            for url, why in _undelivered(res.events):
                print(f"  not delivered to {url}: {why}")
        made = _recordings(res.events, out / "recordings")
        for line in made[:10]:
            print(f"  {line}")
        if len(made) > 10:
            print(f"  ... and {len(made) - 10} more recordings in events.jsonl (record.state)")
        outputs = ["heard.wav", *(t.heard_path.name for t in res.dialer.placed if t.heard_path)]
        outputs += ["events.jsonl", "vars.json"]
        if made:
            outputs.append(f"recordings/ ({len(made)} made by this call)")
        print(f"outputs in {out}/: {', '.join(outputs)}")
    if res.result.error:
        print(f"swml run: {res.result.error}", file=sys.stderr)
        return EXIT_INVALID
    if ctrl_c is not None and ctrl_c.pressed:
        print(f"swml run: {_interrupted(ctrl_c, res.events)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK


def _sound(source: Path | Samples | None, item: str, rate: int) -> Samples | None:
    """A --peer item's sound file decoded at ``rate``; ValueError names the item and what is wrong."""
    from swml_engine.media.audio import AudioError, decode

    if not isinstance(source, Path):
        return source
    if not source.is_file():
        raise ValueError(f"no such file: {source}")
    try:
        return decode(source, rate)
    except (AudioError, OSError) as e:
        raise ValueError(f"{item}:{source}: {e}") from None


def _callbacks(events: list[dict[str, Any]]) -> tuple[int, int]:
    """How many status callbacks the run sent and how many of them were delivered. Each one's first event
    is its first attempt, or, when a Ctrl-C ended the wait before it had one, its attempt 0 given up (one
    given up while waiting to try again has a second event of the attempt before: not counted)."""
    from swml_engine.callbacks import STOPPING

    def first(event: dict[str, Any]) -> bool:
        given_up = event.get("status") == STOPPING
        return (event.get("attempt") == 1 and not given_up) or (event.get("attempt") == 0 and given_up)

    tried = [e for e in events if e["type"] == "callback"]
    return sum(1 for e in tried if first(e)), sum(1 for e in tried if e.get("delivered"))


def _not_reached(
    dtmf: list[tuple[float, str]], caller_audio: bool, duration: float, events: list[dict[str, Any]]
) -> list[str]:
    """What the simulated caller was given to do that never reached the call: digits pressed after its
    end (``--dtmf 2000:1``, as if in SWML's milliseconds), audio for a call never answered."""
    notes = []
    late = [t for t, _ in dtmf if t > duration]
    if late:
        digits = f"{len(late)} digit{'s' if len(late) > 1 else ''} from {late[0]:.2f} s on"
        notes.append(f"--dtmf: {digits} came after the call ended at {duration:.2f} s (times are seconds)")
    if caller_audio and not any(e["type"] == "call.state" and e.get("state") == "answered" for e in events):
        notes.append("--caller-audio was not heard: the script never answered the call")
    return notes


def _undelivered(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Each URL some status callbacks did not reach, with why: its last failed attempt's status."""
    from swml_engine.callbacks import STOPPING

    tried = [e for e in events if e["type"] == "callback"]
    why = {e["url"]: str(e.get("status")) for e in tried if not e.get("delivered") and e.get("status") != STOPPING}
    short = []
    for url, reason in why.items():
        sent, delivered = _callbacks([e for e in tried if e["url"] == url])
        if delivered < sent:
            short.append((url, reason))
    return short


def _recordings(events: list[dict[str, Any]], where: Path) -> list[str]:
    """A line for each recording the run made, in the order they started: where its first sample is on
    the call (its metadata's ``call_time``, as in heard.wav), its file under recordings/ (an ``--out``
    used before holds earlier runs' files too), its length and why it ended."""
    last: dict[str, dict[str, Any]] = {}
    started: dict[str, float] = {}
    for e in events:
        if e["type"] == "record.state" and e.get("recording_id"):
            started.setdefault(e["recording_id"], e["t"])
            last[e["recording_id"]] = e
    lines = []
    for rid, t in started.items():
        state = last[rid]
        name = unquote(urlsplit(str(state.get("url") or "")).path).rsplit("/", 1)[-1] or rid
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # (else its first event's time)
            t = float(json.loads((where / f"{rid}.json").read_text())["call_time"])
        length = f"{state['duration']:.2f} s, " if "duration" in state else ""
        lines.append(f"recording at {t:.2f} s: recordings/{name} ({length}ended: {state.get('end_reason')})")
    return lines


def _interrupted(ctrl_c: CtrlC, events: list[dict[str, Any]]) -> str:
    """The run's last line after a Ctrl-C: what it cut short."""
    if ctrl_c.hung_up_at is not None:
        what = f"the caller hung up at {ctrl_c.hung_up_at:.2f} s of call time"
    else:
        what = "the call was over"
    if ctrl_c.wait_cut:
        sent, delivered = _callbacks(events)
        what += f"; the wait for status callbacks stopped: {sent - delivered} of {sent} not delivered"
    return f"interrupted (Ctrl-C): {what}"


def _placed(error: dict[str, Any]) -> str:
    """An error event's message, led by its place when the message does not already start with it."""
    message, where = str(error.get("message")), str(error.get("where") or "")
    return message if not where or message.startswith(where) else f"{where}: {message}"


#: How the simulated far parties word their advice when a destination has no ``--peer`` (connect's far
#: leg, sip_refer's target): the run's own hint, worth a line of the summary.
_PEER_ADVICE = "add --peer "


def _note(event: dict[str, Any]) -> str | None:
    """What the summary says of an event that is not an error but explains an outcome: a warning, and a
    destination that failed for want of a ``--peer``."""
    if event["type"] == "warning":
        return _placed(event)
    if event.get("state") != "failed":
        return None
    text = event.get("text") if event["type"] == "connect.leg" else event.get("reason")
    if event["type"] in ("connect.leg", "sip.refer") and isinstance(text, str) and _PEER_ADVICE in text:
        return text
    return None


def cmd_recover(args: argparse.Namespace) -> int:
    from swml_engine.recording.crypt_cli import load_keys
    from swml_engine.recording.recovery import recover

    keyring = load_keys(args.key_file, "recover")
    total = 0
    for d in args.dirs:
        root = Path(d)
        if (root / "recordings").is_dir():
            root = root / "recordings"
        if not root.is_dir():
            print(f"swml recover: {d}: not a directory", file=sys.stderr)
            return EXIT_USAGE
        for rec in recover(root, keyring):
            total += 1
            print(f"{rec.path}: recovered {rec.duration:.2f} s ({rec.note})")
    if total == 0:
        print("nothing to recover")
    return EXIT_OK


#: The commands whose parsers this module holds. Any other (serve, index) is swml serve's side, whose
#: parser imports the SIP stack and FastAPI: about a second, most of a small document's validate.
_OWN_COMMANDS = ("validate", "run", "recover", "decrypt")


def _command(argv: list[str]) -> str | None:
    """The command a command line names: its first word (``swml -h run`` names none: the help lists all)."""
    return argv[0] if argv and not argv[0].startswith("-") else None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command's parser; when ``command`` is one of this module's own, swml serve's side is left
    out (it is not needed to parse that command line, and takes a second to load)."""
    p = argparse.ArgumentParser(prog="swml", description="Run SWML call scripts on your own machines.")
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check SWML documents (exit 0 ok, 1 invalid, 3 unsupported methods)")
    v.add_argument("files", nargs="+", metavar="FILE")
    v.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    v.set_defaults(func=cmd_validate)

    r = sub.add_parser("run", help="run a document on a simulated call")
    r.add_argument("file", metavar="FILE", help="the SWML document (YAML or JSON)")
    r.add_argument("--caller-audio", metavar="WAV", help="what the caller says, from the moment of answer")
    r.add_argument(
        "--dtmf",
        metavar="T:DIGITS[,T:DIGITS]",
        help="digits the caller presses at T seconds from the call's start, 250 ms apart",
    )
    r.add_argument("--hangup-at", type=_seconds, metavar="T", help="the caller hangs up at T seconds")
    r.add_argument(
        "--from", dest="from_", default="+15551230000", metavar="FROM", help="call.from (default %(default)s)"
    )
    r.add_argument("--to", default="+15557890000", help="call.to (default %(default)s)")
    r.add_argument(
        "--header", action="append", default=[], metavar="NAME=VALUE", help="a call header (repeat for several)"
    )
    r.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="an envs variable")
    r.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="DEST=ITEM[,ITEM...]",
        help="a far party connect can dial (repeat for several); ITEMs: one outcome answer[@T], busy[@T], "
        "no-answer, reject:CODE[@T], unreachable[@T] (T seconds from the dial, e.g. 3s or 500ms), then "
        "ring@T, early:WAV (audio before its answer), audio:WAV (from its answer), dtmf:T:DIGITS and "
        "hangup@T (T seconds from its answer), hangup@end (when its audio ends), rate:16000, events (it "
        "takes digits as RFC 4733 events, as a SIP phone that negotiated them); e.g. "
        "'sip:agent@example.com=answer@3s,audio:agent.wav'. Other destinations are unreachable. What "
        "the n-th peer hears goes to peer-<n>-heard.wav",
    )
    r.add_argument("--rate", type=int, choices=(8000, 16000), default=8000, help="call sample rate")
    r.add_argument("--out", default="swml-out", metavar="DIR", help="where outputs go (default swml-out)")
    r.add_argument("--realtime", action="store_true", help="follow the wall clock instead of virtual time")
    r.add_argument("-q", "--quiet", action="store_true", help="no summary")
    r.add_argument("--encrypt-key-file", metavar="KEYS", help="write recordings encrypted (docs/recording.md)")
    r.set_defaults(func=cmd_run)

    rc = sub.add_parser("recover", help="repair recordings left unfinished by a crash")
    rc.add_argument("dirs", nargs="+", metavar="DIR", help="a recordings directory (or the --out/--data directory)")
    rc.add_argument("--key-file", metavar="KEYS", help="the key file of encrypted recordings (--encrypt-key-file)")
    rc.set_defaults(func=cmd_recover)

    from swml_engine.recording.crypt_cli import add_decrypt_parser

    add_decrypt_parser(sub)
    if command in _OWN_COMMANDS:
        return p

    from swml_engine.service.cli import add_parser as add_serve
    from swml_engine.service.indexcli import add_parser as add_index

    add_serve(sub)
    add_index(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser(_command(sys.argv[1:] if argv is None else argv)).parse_args(argv)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except KeyboardInterrupt:  # before or after a run's call (during one, CtrlC takes it)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `swml run doc.yaml | head -2`: only printing was left (a run's outputs are written before its
        # summary). Python flushes both streams once more at exit: point them at /dev/null, or that
        # flush fails too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.dup2(devnull, sys.stderr.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
