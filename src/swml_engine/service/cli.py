"""``swml serve``: options, worker processes, signals."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sqlite3
import sys
from pathlib import Path

from swml_engine.errors import DocumentError
from swml_engine.service.server import Service, ServiceConfig
from swml_engine.transports.sip.registration import parse_target

EXIT_OK, EXIT_USAGE, EXIT_INVALID = 0, 2, 1


def host_port(text: str, default_port: int) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT``, ``HOST`` or ``[v6]:PORT`` → (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:
        host, port = text, str(default_port)
    host = host.strip("[]") or "0.0.0.0"
    try:
        value = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the port must be a number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: the port must be 0-65535")
    return host, value


def advertised_host(text: str) -> str:
    """``--advertise``: a host name or address (IPv6 with or without brackets), not a wildcard."""
    host = text.strip().removeprefix("[").removesuffix("]")
    if not host or host in ("0.0.0.0", "::") or any(c in host for c in " <>;,@"):
        raise argparse.ArgumentTypeError(f"{text!r}: give the host or address callers reach this service at")
    return host


def port_range(text: str) -> tuple[int, int]:
    low, sep, high = text.partition("-")
    try:
        lo, hi = int(low), int(high)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a range like 20000-30000") from None
    if not sep or not 1024 <= lo < hi <= 65535 or hi - lo < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: give a range like 20000-30000 within 1024-65535")
    return lo, hi


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser("serve", help="answer SIP calls and run a script for each")
    s.add_argument("--sip", type=lambda t: host_port(t, 5060), default=("0.0.0.0", 5060), metavar="HOST:PORT")
    s.add_argument(
        "--advertise",
        type=advertised_host,
        metavar="HOST",
        help="the address put in our Contact and SDP (behind NAT: the public one); default: the --sip "
        "address, or with a wildcard one the local address that routes to each caller",
    )
    s.add_argument(
        "--http",
        type=lambda t: host_port(t, 8080),
        metavar="HOST:PORT",
        help="the HTTP API (recordings, calls, live control; /health) and signed recording URLs",
    )
    s.add_argument(
        "--api-token",
        metavar="TOKEN",
        help="bearer token for /api (default: SWML_API_TOKEN, else one generated and kept under --data)",
    )
    s.add_argument(
        "--public-url",
        metavar="URL",
        help="where recording URLs point (e.g. https://rec.example.com); default http://HOST:PORT of --http",
    )
    s.add_argument(
        "--url-ttl", type=float, default=7 * 86400, metavar="S", help="how long a recording URL works (default 7 days)"
    )
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--script", metavar="FILE", help="the SWML document every call runs")
    src.add_argument("--script-url", metavar="URL", help="POST the call payload here and run the SWML it returns")
    s.add_argument("--data", default="swml-data", metavar="DIR", help="recordings and call logs (default swml-data)")
    s.add_argument("--rtp-ports", type=port_range, default=(20000, 30000), metavar="LOW-HIGH")
    s.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="an envs variable")
    s.add_argument("--workers", type=int, default=1, metavar="N", help="processes sharing the SIP port")
    s.add_argument("--max-calls", type=int, default=0, metavar="N", help="calls per worker before 503 (0: no limit)")
    s.add_argument(
        "--register",
        metavar="SIP-URI",
        help="register sip:USER@HOST[:PORT] at that registrar, so calls to USER come here; "
        "password from SWML_REGISTER_PASSWORD",
    )
    s.add_argument("--register-expires", type=int, default=300, metavar="S", help="binding interval (default 300)")
    s.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    s.set_defaults(func=cmd_serve)


def _config(args: argparse.Namespace) -> ServiceConfig:
    envs: dict[str, str] = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--env {item!r}: expected NAME=VALUE")
        envs[name] = value
    return ServiceConfig(
        sip=args.sip,
        http=args.http,
        script=Path(args.script) if args.script else None,
        script_url=args.script_url,
        data=Path(args.data),
        rtp_ports=args.rtp_ports,
        envs=envs,
        reuse_port=args.workers > 1,
        max_calls=max(0, args.max_calls),
        advertise=args.advertise,
        api_token=args.api_token,
        public_url=args.public_url,
        url_ttl=args.url_ttl,
        register=parse_target(args.register, os.environ.get("SWML_REGISTER_PASSWORD"), args.register_expires)
        if args.register
        else None,
    )


async def _serve(config: ServiceConfig, worker: int) -> int:
    service = Service(config)
    try:
        await service.start()
    except DocumentError as e:
        for err in e.errors or e.unsupported:
            print(f"{config.script}: {err}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as e:
        print(f"swml serve: cannot listen: {e}", file=sys.stderr)
        return EXIT_USAGE
    except sqlite3.Error as e:
        print(f"swml serve: cannot open the index under {config.data}: {e}", file=sys.stderr)
        return EXIT_USAGE
    # What exists now lives as long as the service: keep it out of every garbage collection from here on.
    gc.freeze()
    print(f"swml serve: worker {worker} ready, SIP on port {service.sip_port}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logging.getLogger("swml.serve").info("stopping: hanging up %d call(s)", len(service.calls))
    await service.stop()
    return EXIT_OK


def _loop_factory() -> type[asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # not on this platform: the standard loop works, slower
        return None
    return uvloop.Loop


def run_worker(config: ServiceConfig, worker: int) -> int:
    factory = _loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_serve(config, worker))


def cmd_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    if args.log_level != "debug":
        # aiosipua logs a warning per malformed packet: a flood at the port would flood the log.
        # Our transport logs the first bad packet of each address and counts the rest.
        logging.getLogger("aiosipua").setLevel(logging.ERROR)
    try:
        config = _config(args)
    except ValueError as e:
        print(f"swml serve: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.workers < 1:
        print("swml serve: --workers must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    if args.workers > 1 and config.register is not None:
        # The registrar's answers and calls all come from one address and port, which SO_REUSEPORT
        # hashes to one worker, maybe not the one that registered: see docs/serve.md.
        print(
            "swml serve: --register takes one worker (calls from a registrar all reach one process); "
            "for more cores run one engine per port, each with its own --register",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.workers > 1 and config.sip[1] == 0:
        print("swml serve: --workers needs a fixed --sip port to share", file=sys.stderr)
        return EXIT_USAGE
    children: list[int] = []
    for worker in range(1, args.workers):
        pid = os.fork()
        if pid == 0:  # a worker: same port (SO_REUSEPORT), its own calls and RTP ports
            lo, hi = config.rtp_ports
            span = (hi - lo) // args.workers
            config.rtp_ports = (lo + worker * span, lo + (worker + 1) * span)
            os._exit(run_worker(config, worker))
        children.append(pid)
    if args.workers > 1:
        lo, hi = config.rtp_ports
        config.rtp_ports = (lo, lo + (hi - lo) // args.workers)
    code = run_worker(config, 0)
    for pid in children:
        os.kill(pid, signal.SIGTERM)
    for pid in children:
        os.waitpid(pid, 0)
    return code
