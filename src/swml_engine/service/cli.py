"""``swml serve``: options, worker processes, signals.

At start, before any file is made: the process's umask becomes ``--umask`` (077: recordings, call logs
with their SIP headers, the index with its signed URLs, and the secrets are the owner's alone), the data
directory gets the matching mode, and the soft limit on open files is lifted to the hard one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import logging
import math
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from swml_engine.connections import ConnectionLimits, raise_descriptor_limit
from swml_engine.errors import DocumentError
from swml_engine.logs import CallIdFilter, JsonFormatter, TextFormatter
from swml_engine.recording.crypt import CryptError, Keyring
from swml_engine.recording.objectstore import ObjectStore, StorageError
from swml_engine.service import metrics
from swml_engine.service.auth import SecretError, UrlSigner, api_token, given_token
from swml_engine.service.index import INDEX_URL_VARIABLE, IndexOpenError, index_url
from swml_engine.service.server import Service, ServiceConfig
from swml_engine.service.supervisor import STOP_SIGNALS, Supervisor
from swml_engine.transports.sip.outbound import parse_trunk
from swml_engine.transports.sip.registration import parse_target
from swml_engine.transports.sip.relay import RelayGroup, RelaySlot
from swml_engine.urls import UrlError, parse_http_url

EXIT_OK, EXIT_USAGE, EXIT_INVALID = 0, 2, 1

#: A log line: when, which process (worker), how grave, the engine's id of the call it is about (the
#: name of the call's event log, the HTTP API's call_id; "-" for none), the module, the message.
LOG_FORMAT = "%(asctime)s %(process)d %(levelname)s [%(call_id)s] %(name)s: %(message)s"

log = logging.getLogger(__name__)

#: Where the script URL may come from instead of the command line (which ``ps`` shows to every user).
SCRIPT_URL_VARIABLE = "SWML_SCRIPT_URL"
#: The --trunk's credentials: from the environment only (``ps`` shows the command line to every user).
TRUNK_USERNAME, TRUNK_PASSWORD = "SWML_TRUNK_USERNAME", "SWML_TRUNK_PASSWORD"
YEAR = 365 * 86400
#: Stop signals closer together than this (seconds) are one stop (StopSignals).
SAME_SIGNAL = 1.0


def number(low: float, high: float, unit: str = "", *, integer: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number from ``low`` to ``high`` (argparse names the option and exits 2)."""
    span = f"{low:g} to {high:g}{unit}"

    def parse(text: str) -> float:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: give a {'whole ' if integer else ''}number, {span}") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is out of range: give {span}")
        return value

    return parse


def umask(text: str) -> int:
    """``--umask``: octal, at least as strict as 077 for others (027, 007, 077)."""
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give an octal mask such as 077 or 027") from None
    if not 0 <= value <= 0o777 or value & 0o007 != 0o007:
        raise argparse.ArgumentTypeError(f"{text!r}: others must get nothing (end in 7: 077, 027, 007)")
    return value


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
        "--url-ttl",
        type=number(1, YEAR, " seconds (1 s to 1 year)"),
        default=7 * 86400,
        metavar="S",
        help="how long a recording URL works (default 7 days)",
    )
    src = s.add_mutually_exclusive_group()
    src.add_argument("--script", metavar="FILE", help="the SWML document every call runs")
    src.add_argument(
        "--script-url",
        metavar="URL",
        help=f"POST the call payload here and run the SWML it returns (default: {SCRIPT_URL_VARIABLE}, "
        "which keeps credentials in the URL out of the process list)",
    )
    s.add_argument("--data", default="swml-data", metavar="DIR", help="recordings and call logs (default swml-data)")
    s.add_argument(
        "--umask",
        type=umask,
        default=0o077,
        metavar="MASK",
        help="mode mask for the data directory and every file in it (default 077: owner only; 027: a group reads)",
    )
    s.add_argument("--rtp-ports", type=port_range, default=(20000, 30000), metavar="LOW-HIGH")
    s.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="an envs variable")
    s.add_argument(
        "--workers", type=number(1, 64, integer=True), default=1, metavar="N", help="processes sharing the SIP port"
    )
    s.add_argument(
        "--max-calls",
        type=number(0, 100_000, integer=True),
        default=0,
        metavar="N",
        help="calls per worker before 503 (0: no limit)",
    )
    s.add_argument(
        "--max-lag",
        type=number(0, 10, " seconds"),
        default=0.06,
        metavar="S",
        help="new calls (and connect's far legs) get 503 while a worker's media ticks run S late: "
        "its CPU carries no more (default 0.06; 0: never refused for it)",
    )
    s.add_argument(
        "--drain-timeout",
        type=number(0, 86400, " seconds"),
        default=30.0,
        metavar="S",
        help="at SIGTERM, new calls are refused and live calls may go on for up to S before they are hung up "
        "(default 30: a stop stays within systemd's 90 s; a second SIGTERM hangs up at once)",
    )
    s.add_argument(
        "--stop-grace",
        type=number(0, 3600, " seconds"),
        default=10.0,
        metavar="S",
        help="after the drain, how long the calls hung up may take to end, and their BYEs to be answered, "
        "before they are cancelled and the ports closed (default 10)",
    )
    limits = ConnectionLimits()
    for flag, parse, default, what in (
        (
            "--header-timeout",
            number(0.1, 600, " seconds"),
            limits.header_timeout,
            "an HTTP request's headers (a SIP/TCP message) must arrive within S of the connection or its first byte",
        ),
        (
            "--idle-timeout",
            number(1, 3600, " seconds"),
            limits.idle_timeout,
            "an idle HTTP or SIP/TCP connection is closed after S (not while a call on it is up)",
        ),
        (
            "--max-connections",
            number(1, 1_000_000, integer=True),
            limits.max_total,
            "HTTP (and SIP/TCP) connections open at once, each",
        ),
        (
            "--max-connections-per-address",
            number(1, 1_000_000, integer=True),
            limits.max_per_source,
            "HTTP (and SIP/TCP) connections open at once from one address, each",
        ),
    ):
        metavar = "S" if "timeout" in flag else "N"
        s.add_argument(flag, type=parse, default=default, metavar=metavar, help=f"{what} (default {default:g})")
    s.add_argument(
        "--register",
        metavar="SIP-URI",
        help="register sip:USER@HOST[:PORT] at that registrar, so calls to USER come here; "
        "password from SWML_REGISTER_PASSWORD",
    )
    s.add_argument("--register-expires", type=int, default=300, metavar="S", help="binding interval (default 300)")
    s.add_argument(
        "--trunk",
        metavar="SIP-URI",
        help="where connect sends phone numbers (E.164): sip:HOST[:PORT][;transport=tcp]; credentials from "
        f"{TRUNK_USERNAME} and {TRUNK_PASSWORD}",
    )
    s.add_argument(
        "--outbound-port",
        type=number(1, 65535, integer=True),
        metavar="PORT",
        help="the port (UDP and TCP) the calls connect places go out from, e.g. for a firewall rule; with "
        "--workers N, worker i uses PORT+i (default: the --sip port with one worker; with several, a port "
        "the system picks for each worker)",
    )
    s.add_argument(
        "--rtp-timeout",
        type=number(0, 3600, " seconds"),
        default=60.0,
        metavar="S",
        help="a call or far leg whose peer sends no RTP for S (not on hold) is hung up (default 60; 0: never)",
    )
    s.add_argument(
        "--encrypt-key-file",
        metavar="KEYS",
        help="write recordings encrypted under the last key of this file, one 'KEY_ID BASE64_KEY' a line "
        "(docs/recording.md, 'Encryption at rest'); the older keys still decrypt the recordings they sealed",
    )
    s.add_argument(
        "--storage",
        metavar="s3://BUCKET/PREFIX",
        help="upload finished recordings to this S3-compatible bucket (endpoint, region and credentials from "
        "AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY); --data is the spool",
    )
    s.add_argument(
        "--index",
        metavar="URL",
        help="keep the recordings and calls index in PostgreSQL, postgresql://USER@HOST[:PORT]/DATABASE, shared "
        f"by every node (default: {INDEX_URL_VARIABLE}, else SQLite under --data); the password from the URL, "
        "PGPASSWORD or ~/.pgpass",
    )
    s.add_argument(
        "--retention-days",
        type=number(0, 100 * 365, " days"),
        default=0.0,
        metavar="N",
        help="delete recordings that ended, and this node's calls (event logs) that started, more than N days ago "
        "(default 0: keep them)",
    )
    s.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    s.add_argument(
        "--log-format",
        default="text",
        choices=("text", "json"),
        help="text lines (default), or one JSON object a line for a log collector",
    )
    s.add_argument(
        "--metrics-auth",
        default="token",
        choices=("token", "none"),
        help="/metrics needs the API token as /api does (default), or none (a Prometheus on a private network)",
    )
    s.set_defaults(func=cmd_serve)


def _config(args: argparse.Namespace) -> ServiceConfig:
    envs: dict[str, str] = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--env {item!r}: expected NAME=VALUE")
        envs[name] = value
    # --script given on the command line wins over a script URL in the environment.
    script_url = args.script_url or (None if args.script else os.environ.get(SCRIPT_URL_VARIABLE) or None)
    if not args.script and not script_url:
        raise ValueError(f"give --script FILE or --script-url URL (or set {SCRIPT_URL_VARIABLE})")
    if script_url is not None:
        try:
            parse_http_url(script_url)  # at start, not at the first call (the message hides a password)
        except UrlError as e:
            raise ValueError(f"--script-url: {e}") from None
    if args.max_connections_per_address > args.max_connections:
        raise ValueError("--max-connections-per-address cannot be more than --max-connections")
    outbound = None if args.outbound_port is None else int(args.outbound_port)
    if outbound is not None:
        last = outbound + int(args.workers) - 1
        if last > 65535:
            raise ValueError(f"--outbound-port {outbound}: with --workers {args.workers} it needs ports up to {last}")
        if outbound <= args.sip[1] <= last:
            raise ValueError(f"--outbound-port {outbound}: give ports apart from the --sip port {args.sip[1]}")
    if args.storage is not None:
        try:
            ObjectStore.from_option(args.storage)  # the value and the environment, before any worker starts
        except StorageError as e:
            raise ValueError(str(e)) from None
    index = index_url(args.index, os.environ)  # ValueError names --index
    if (index is not None or args.retention_days) and args.http is None:
        raise ValueError("--index and --retention-days need --http (the index is the HTTP API's)")
    trunk = None
    if args.trunk:
        trunk = parse_trunk(args.trunk, os.environ.get(TRUNK_USERNAME) or None, os.environ.get(TRUNK_PASSWORD) or None)
    keyring = None
    if args.encrypt_key_file:
        try:
            keyring = Keyring.load(Path(args.encrypt_key_file))
        except CryptError as e:
            raise ValueError(f"--encrypt-key-file: {e}") from None
    return ServiceConfig(
        keyring=keyring,
        sip=args.sip,
        http=args.http,
        script=Path(args.script) if args.script else None,
        script_url=script_url,
        # Absolute from the start: audio is served by path, and file URLs need one.
        data=Path(args.data).expanduser().absolute(),
        rtp_ports=args.rtp_ports,
        envs=envs,
        reuse_port=args.workers > 1,
        max_calls=int(args.max_calls),
        max_lag=float(args.max_lag),
        advertise=args.advertise,
        api_token=args.api_token,
        public_url=args.public_url,
        url_ttl=args.url_ttl,
        register=parse_target(args.register, os.environ.get("SWML_REGISTER_PASSWORD"), args.register_expires)
        if args.register
        else None,
        connections=ConnectionLimits(
            max_total=int(args.max_connections),
            max_per_source=int(args.max_connections_per_address),
            header_timeout=args.header_timeout,
            idle_timeout=args.idle_timeout,
        ),
        stop_grace=args.stop_grace,
        drain_timeout=args.drain_timeout,
        trunk=trunk,
        rtp_timeout=args.rtp_timeout,
        outbound_port=outbound,
        index_url=index,
        retention_days=float(args.retention_days),
        storage=args.storage,
        metrics_token=args.metrics_auth == "token",
    )


def _prepare_data(config: ServiceConfig, mask: int) -> None:
    """Make the data directory private (the umask is already set), and the secrets once, before the
    workers start: SecretError or OSError when that cannot be done."""
    config.data.mkdir(parents=True, exist_ok=True)
    # A directory made by an older version (755) holds files made readable to all: closing the directory
    # closes them all, whatever their own modes.
    os.chmod(config.data, 0o777 & ~mask)
    if config.http is None:
        return
    token, generated = api_token(config.data, given_token(config.api_token, os.environ.get("SWML_API_TOKEN")))
    if generated:
        print(f"swml serve: API token (kept in {config.data / 'api-token'}): {token}", file=sys.stderr, flush=True)
    UrlSigner(config.data)


async def _serve(config: ServiceConfig, worker: int, ready: int = -1) -> int:
    service = Service(config)
    # Signals are taken from before the start: a stop that comes while the service starts (a worker
    # started again just as the supervisor is stopped) is a clean stop once it has started, not a death
    # by SIGTERM halfway through its recovery.
    loop = asyncio.get_running_loop()
    signals = StopSignals(loop.time)
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, signals.received)
    # A worker is born with them blocked (supervisor.py): one that came meanwhile is taken now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    try:
        await service.start()
    except DocumentError as e:
        for err in e.errors or e.unsupported:
            print(f"{config.script}: {err}", file=sys.stderr)
        return EXIT_INVALID
    except (SecretError, OSError) as e:
        print(f"swml serve: {_start_error(e)}", file=sys.stderr)
        return EXIT_USAGE
    except IndexOpenError as e:
        print(f"swml serve: {e}", file=sys.stderr)
        return EXIT_USAGE
    except StorageError as e:
        print(f"swml serve: {e}", file=sys.stderr)  # (checked before any port was opened)
        return EXIT_USAGE
    # What exists now lives as long as the service: keep it out of every garbage collection from here on.
    gc.freeze()
    print(f"swml serve: worker {worker} ready, SIP on port {service.sip_port}", file=sys.stderr, flush=True)
    if ready >= 0:
        with contextlib.suppress(OSError):
            os.write(ready, b"!")
            os.close(ready)
    await signals.first.wait()
    await service.drain(config.drain_timeout, signals.again)
    log.info("stopping: hanging up %d call(s)", len(service.calls))
    await service.stop()
    return EXIT_OK


class StopSignals:
    """SIGTERM and SIGINT as a worker reads them: the first (``first``) starts the drain; another one
    later (``again``) hangs up the calls left at once.

    Signals less than SAME_SIGNAL apart count as one: with --workers, a terminal's Ctrl-C and systemd's
    stop (KillMode=control-group) reach every worker and the parent, which passes its own on, so a
    worker gets two at once for one stop."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.first = asyncio.Event()
        self.again = asyncio.Event()
        self._first_at: float | None = None

    def received(self) -> None:
        now = self.clock()
        if self._first_at is None:
            self._first_at = now
            self.first.set()
        elif now - self._first_at >= SAME_SIGNAL:
            self.again.set()


def _start_error(e: SecretError | OSError) -> str:
    """What stopped the start: a secret that would leave the API open, a file (a full disk, a
    permission) or a port."""
    if isinstance(e, SecretError):
        return str(e)
    if e.filename is not None:
        return f"cannot write {e.filename}: {e.strerror or e}"
    return f"cannot listen: {e.strerror or e}" if e.strerror else f"cannot listen: {e}"


def _loop_factory() -> type[asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # not on this platform: the standard loop works, slower
        return None
    return uvloop.Loop


def run_worker(config: ServiceConfig, worker: int, ready: int = -1) -> int:
    """Run one worker's service until it is stopped; ``ready``: a pipe to write one byte to once it takes
    calls (the supervisor's), -1 for none."""
    JsonFormatter.worker = worker  # (JSON log lines name the worker)
    factory = _loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_serve(config, worker, ready))


def cmd_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format=LOG_FORMAT)
    for handler in logging.getLogger().handlers:
        handler.addFilter(CallIdFilter())  # the lines about no call show [-]
        # Either way what a caller sent is written escaped (logs.py): a line is one line, and no escapes
        # reach the terminal that shows it.
        handler.setFormatter(JsonFormatter() if args.log_format == "json" else TextFormatter(LOG_FORMAT))
    if args.log_level != "debug":
        # (The SIP core logs the first bad packet of each address and counts the rest.)
        # uvicorn warns once per malformed HTTP request ("Invalid HTTP request received."): a flood of
        # them would flood the log too (each client still gets its 400).
        logging.getLogger("uvicorn.error").setLevel(logging.ERROR)
        # aioice (a browser call's ICE) logs every candidate pair's every state at info: a dozen lines or
        # more a browser call, about no call. Its warnings stay.
        logging.getLogger("aioice").setLevel(logging.WARNING)
    try:
        config = _config(args)
    except ValueError as e:
        print(f"swml serve: {e}", file=sys.stderr)
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
    os.umask(args.umask)  # before any file is made: recordings, call logs, index, secrets
    try:
        _prepare_data(config, args.umask)
        if args.workers > 1:  # before the workers fork: each scrape adds up every worker's files (metrics.py)
            metrics.use_directory(config.data / "metrics")
    except (SecretError, OSError) as e:
        print(f"swml serve: {_start_error(e)}", file=sys.stderr)
        return EXIT_USAGE
    limit = raise_descriptor_limit()
    log.info("open files: up to %s per process", limit if limit is not None else "no limit known")
    if args.workers == 1:
        return run_worker(config, 0)
    try:  # held here, by the supervisor, for its life: a worker started again inherits its slot's socket
        relays = RelayGroup(args.workers)
    except OSError as e:
        print(f"swml serve: --workers: no UDP port on 127.0.0.1 to relay SIP between workers: {e}", file=sys.stderr)
        return EXIT_USAGE

    def worker(index: int, ready: int) -> int:
        return run_worker(worker_config(config, index, args.workers, relays.slot(index)), index, ready)

    return Supervisor(args.workers, worker).run()


def worker_config(config: ServiceConfig, index: int, workers: int, relay: RelaySlot | None = None) -> ServiceConfig:
    """Worker ``index``'s share: its slice of the RTP ports, and with --outbound-port its own port, so the
    far ends of the calls it places answer it (the same after a restart in its place); ``relay``: its
    relay socket, so datagrams of the shared SIP port for its dialogs reach it whichever worker the
    kernel hands them to."""
    lo, hi = config.rtp_ports
    span = (hi - lo) // workers
    outbound = None if config.outbound_port is None else config.outbound_port + index
    return dataclasses.replace(
        config, rtp_ports=(lo + index * span, lo + (index + 1) * span), outbound_port=outbound, relay=relay
    )
