"""``swml decrypt FILE --key-file K``: a sealed recording's audio, by hand (docs/recording.md).

Every block is checked before a byte is written, so a file that was altered gives an error naming the
block and no audio at all, never audio with a hole or garbage in it. An unfinished file (a crash cut it
short) gives every block that was completed, with a warning: ``swml recover`` repairs it in place.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import BinaryIO

from swml_engine.recording.crypt import CryptError, Keyring, SealedFile, is_sealed

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_decrypt_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = sub.add_parser("decrypt", help="write an encrypted recording's audio (to stdout, or -o FILE)")
    d.add_argument("file", metavar="FILE", help="a recording written under --encrypt-key-file")
    d.add_argument("--key-file", required=True, metavar="KEYS", help="the key file it was sealed with (or a newer one)")
    d.add_argument("-o", "--output", metavar="OUT", help="where the audio goes (default: stdout)")
    d.set_defaults(func=cmd_decrypt)


def load_keys(path: str | None, command: str) -> Keyring | None:
    """The keyring of ``--key-file`` (None when not given); SystemExit with the reason when unusable."""
    if path is None:
        return None
    try:
        return Keyring.load(Path(path))
    except CryptError as e:
        print(f"swml {command}: {e}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def cmd_decrypt(args: argparse.Namespace) -> int:
    keyring = load_keys(args.key_file, "decrypt")
    assert keyring is not None
    source = Path(args.file)
    if not source.is_file():
        print(f"swml decrypt: {source}: no such file", file=sys.stderr)
        return EXIT_USAGE
    if not is_sealed(source):
        print(f"swml decrypt: {source}: not encrypted; it plays as it is", file=sys.stderr)
        return EXIT_FAILED
    if args.output is None and sys.stdout.isatty():
        print("swml decrypt: the audio is binary: redirect stdout (> out.wav) or give -o OUT", file=sys.stderr)
        return EXIT_USAGE
    try:
        with SealedFile.open(source, keyring) as sealed:
            sealed.verify()  # all of it first: an altered file gives no audio at all
            if args.output is None:
                _copy(sealed, sys.stdout.buffer)
                sys.stdout.buffer.flush()
            else:
                _write_file(sealed, Path(args.output))
    except CryptError as e:
        print(f"swml decrypt: {e}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        raise  # (`swml decrypt F | head -c 44`: its reader had enough; cli.main says nothing, exits 141)
    except OSError as e:
        print(f"swml decrypt: {e.filename or source}: {e.strerror or e}", file=sys.stderr)
        return EXIT_FAILED
    if sealed.state == "unfinished":
        cut = " (its last block, cut in the middle, left out)" if sealed.torn else ""
        print(
            f"swml decrypt: {source}: unfinished — the recording was cut short (no final block){cut}; "
            f"{sealed.size} bytes written. `swml recover DIR --key-file KEYS` repairs it in place",
            file=sys.stderr,
        )
    return EXIT_OK


def _copy(sealed: SealedFile, out: BinaryIO) -> None:
    for piece in sealed.chunks(0, sealed.size):
        out.write(piece)


def _write_file(sealed: SealedFile, target: Path) -> None:
    """Write the audio beside ``target`` first and move it into place: no half file under that name.
    A target that is not a plain file (``-o /dev/null``, ``/dev/stdout``, a pipe, a link) is written
    through as it is: moving a file over it would replace the device or the link itself (as root,
    /dev/null for the whole machine)."""
    if target.is_symlink() or (target.exists() and not target.is_file()):
        with target.open("wb") as out:
            _copy(sealed, out)
        return
    tmp = target.with_name(f".{target.name}.part")
    try:
        with tmp.open("wb") as out:
            _copy(sealed, out)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
