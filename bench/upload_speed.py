"""Upload throughput of ``swml serve --storage`` against a local S3 server (moto, its own process), and the
CPU an upload adds to each call.

A spool of N finished recordings (stereo 8 kHz WAV of S seconds: what a recorded call leaves) is uploaded
by the service's own uploader (service/uploads.py: hash, stream up, confirm, metadata, local removal),
as at a start after the storage was down. Reference in the same run: copying the same files on the local
disk. "CPU per call" is this process's CPU time (every thread: obstore streams on threads of its own)
per recording, also as a share of one core over the call's length; the S3 server's own CPU is not ours
and is left out.

    .venv/bin/python bench/upload_speed.py --recordings 40 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from swml_engine.recording.objectstore import ObjectStore
from swml_engine.recording.store import RecordingStore
from swml_engine.service.uploads import Uploader


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def wav(seconds: float) -> bytes:
    """A stereo 8 kHz 16-bit WAV of noise-like content (so nothing compresses it on the way)."""
    frames = int(seconds * 8000)
    data = os.urandom(frames * 4)
    header = b"RIFF" + (36 + len(data)).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little")
    header += (1).to_bytes(2, "little") + (2).to_bytes(2, "little") + (8000).to_bytes(4, "little")
    header += (32000).to_bytes(4, "little") + (4).to_bytes(2, "little") + (16).to_bytes(2, "little")
    return header + b"data" + len(data).to_bytes(4, "little") + data


def spool(root: Path, n: int, audio: bytes) -> None:
    root.mkdir(parents=True)
    for i in range(n):
        rid = f"bench-{i:04d}"
        (root / f"{rid}.wav").write_bytes(audio)
        meta = {"recording_id": rid, "format": "wav", "state": "finished", "end_reason": "hangup", "storage": None}
        (root / f"{rid}.json").write_text(json.dumps(meta))


def start_moto(port: int, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("moto server did not start (pip install 'moto[server]')")


async def upload_all(root: Path, n: int, concurrency: int) -> None:
    bucket = ObjectStore.from_option("s3://bench/spool")
    await bucket.check()
    uploader = Uploader(bucket, lambda: RecordingStore(root), concurrency=concurrency)
    uploader.start()
    while uploader.uploaded < n:
        await asyncio.sleep(0.01)
    await uploader.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recordings", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=60.0, help="each recording's length")
    parser.add_argument("--concurrency", type=int, default=2, help="uploads at once (the service's default: 2)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        moto = start_moto(port, work / "moto.log")
        try:
            os.environ.update(
                AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
                AWS_REGION="us-east-1",
                AWS_ACCESS_KEY_ID="bench",
                AWS_SECRET_ACCESS_KEY="bench",
            )
            import boto3

            boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1").create_bucket(
                Bucket="bench"
            )
            audio = wav(args.seconds)
            n = args.recordings
            mb = n * len(audio) / 1e6

            spool(work / "copy-src", n, audio)
            (work / "copy-dst").mkdir()
            t0, c0 = time.perf_counter(), cpu()
            for path in (work / "copy-src").iterdir():
                shutil.copyfile(path, work / "copy-dst" / path.name)
            copy_wall, copy_cpu = time.perf_counter() - t0, cpu() - c0

            spool(work / "spool", n, audio)
            t0, c0 = time.perf_counter(), cpu()
            asyncio.run(upload_all(work / "spool", n, args.concurrency))
            wall, used = time.perf_counter() - t0, cpu() - c0
            assert not list((work / "spool").iterdir()), "the spool should be empty"
        finally:
            moto.terminate()
            moto.wait(10)

    per_call = used / n
    print(f"{n} recordings of {args.seconds:g} s ({len(audio) / 1e6:.2f} MB each, {mb:.1f} MB in all)")
    print(f"upload to S3 (moto): {wall:.2f} s  {n / wall:.1f} recordings/s  {mb / wall:.1f} MB/s  CPU {used:.2f} s")
    print(f"reference: local copy {copy_wall:.2f} s  {mb / copy_wall:.0f} MB/s  CPU {copy_cpu:.2f} s")
    print(f"ratio upload / copy (wall): {wall / copy_wall:.1f}")
    print(
        f"extra CPU per call: {per_call * 1000:.1f} ms for a {args.seconds:g} s call "
        f"({per_call / args.seconds * 100:.3f} % of a core over the call)"
    )


if __name__ == "__main__":
    main()
