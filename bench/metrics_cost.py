"""What /metrics costs a call: the work the metrics add, timed piece by piece, as CPU per call.

    .venv/bin/python bench/metrics_cost.py [--calls 600] [--workers]

The pieces: the SIP core counting each message it reads or writes (a dictionary add), each call's event
sink (a few events per call: its end, its recordings', its callbacks), the sampler that reads every live
call's figures once a second (with --workers: written to the shared files), and the media ticker's
lateness histogram (50 observations a second per worker, whatever the number of calls). The reference,
measured in the same run: parsing one SIP message, which every message costs anyway.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from swml_engine.service import metrics as service_metrics
from swml_engine.service.metrics import ServiceMetrics, Snapshot
from swml_engine.transports.sip.counts import MessageCounts
from swml_engine.transports.sip.message import parse_message
from swml_engine.transports.sip.rtpstream import TALLY, RtpFigures, RtpStream

INVITE = (
    b"INVITE sip:record@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n"
    b"From: <sip:alice@127.0.0.1>;tag=1\r\nTo: <sip:record@127.0.0.1>\r\nCall-ID: bench\r\nCSeq: 1 INVITE\r\n"
    b"Contact: <sip:alice@127.0.0.1:5070>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)
#: A recorded call with a status callback: INVITE, 100, 180, 200, ACK, BYE, 200 on the wire; events the
#: sink looks at: call.state x3, record.state x2, callback x2, plus some it ignores.
MESSAGES_PER_CALL, EVENTS_PER_CALL = 7, 12


def per_op(fn: Callable[[], object], n: int) -> float:
    """Seconds per call of ``fn`` (best of 3 runs of ``n``)."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n)
    return best


async def open_streams(n: int) -> list[RtpStream]:
    return [RtpStream(8000, lambda digit: None) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=600, help="live calls per worker (default 600)")
    parser.add_argument("--workers", action="store_true", help="multiprocess mode (values in shared files)")
    args = parser.parse_args()
    if args.workers:
        service_metrics.use_directory(Path(tempfile.mkdtemp(prefix="swml-metrics-")))
    metrics = ServiceMetrics()
    message = parse_message(INVITE)
    counts = MessageCounts()
    sink = metrics.call_sink()
    events = [
        {"type": "call.state", "state": "answered"},
        {"type": "record.state", "state": "finished", "size": 160044},
        {"type": "callback", "delivered": True},
        {"type": "step.start", "method": "play"},
        {"type": "call.state", "state": "ended", "reason": "remote_hangup"},
    ]
    snapshot = Snapshot(
        calls=args.calls,
        recording_states=["recording"] * args.calls,
        sip=[counts],
        rtp=RtpFigures(received=10**6, sent=10**6),
    )
    parse = per_op(lambda: parse_message(INVITE), 20_000)
    count = per_op(lambda: counts.received(message), 200_000)
    event = per_op(lambda: [sink(e) for e in events], 20_000) / len(events)
    grow = iter(range(1, 10**9))

    def sample() -> None:
        snapshot.rtp.received += next(grow)  # counters move on every second, as on a live worker
        metrics.sample(snapshot)

    streams = asyncio.run(open_streams(args.calls))  # the live calls' RTP, in the tally
    sample_s = per_op(sample, 2_000) + per_op(TALLY.figures, 500)
    del streams
    observe = per_op(lambda: metrics.tick_lateness.observe(0.003), 100_000)

    per_call_once = MESSAGES_PER_CALL * count + EVENTS_PER_CALL * event  # seconds, once per call
    per_call_second = (sample_s + 50 * observe) / args.calls  # seconds of CPU per second of each call
    mode = "--workers (multiprocess files)" if args.workers else "one process"
    print(f"metrics cost, {mode}, {args.calls} live calls per worker")
    print(f"  reference: parsing one SIP INVITE       {parse * 1e6:8.2f} µs")
    print(f"  counting one SIP message                {count * 1e6:8.2f} µs  ({count / parse:.1%} of parsing it)")
    print(f"  one call event through the sink         {event * 1e6:8.2f} µs")
    print(f"  one sample of {args.calls} calls (RTP included) {sample_s * 1e6:8.2f} µs  (once a second)")
    print(f"  one tick lateness observation           {observe * 1e6:8.2f} µs  (50 a second)")
    print(f"  per call, once: {per_call_once * 1e6:.1f} µs; per second of call: {per_call_second * 1e6:.2f} µs")
    print(f"  = {per_call_second * 100:.5f} % of a core per live call (a recorded call costs about 0.16-0.2 %)")


if __name__ == "__main__":
    main()
