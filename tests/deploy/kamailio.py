"""Kamailio (the Debian package) as the tests' SIP dispatcher, started with docs/deploy/kamailio.cfg —
the file docs/deploy.md shows — and only its addresses, ports and files set from the command line."""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from conftest import PATIENCE
from interop.peers import free_port

#: The configuration docs/deploy.md shows; the tests run it as it is.
CONFIG = Path(__file__).resolve().parents[2] / "docs" / "deploy" / "kamailio.cfg"


def kamailio_binary() -> str | None:
    return shutil.which("kamailio") or next((p for p in ("/usr/sbin/kamailio",) if Path(p).exists()), None)


@dataclass
class Kamailio:
    """One Kamailio process dispatching to ``nodes`` (``host:port`` each, set 1 of its list)."""

    workdir: Path
    nodes: list[str]
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "kamailio.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> Kamailio:
        binary = kamailio_binary()
        assert binary is not None
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        dispatcher_list = self.workdir / "dispatcher.list"
        dispatcher_list.write_text("".join(f"1 sip:{node}\n" for node in self.nodes))
        defines = {
            "LISTEN_UDP": f"udp:127.0.0.1:{self.port}",
            "LISTEN_TCP": f"tcp:127.0.0.1:{self.port}",
            "DISPATCHER_LIST": f'"{dispatcher_list}"',
            "CTL_SOCKET": f'"unix:{self.workdir / "ctl"}"',
        }
        cmd = [binary, "-f", str(CONFIG), "-DD", "-E", "-Y", str(self.workdir), "-P", str(self.workdir / "pid")]
        # small shared and private memory, two workers: a test sends a few calls
        cmd += ["-m", "32", "-M", "4", "-n", "2", "-w", str(self.workdir)]
        for name, value in defines.items():
            cmd += ["-A", f"{name}={value}"]
        self.proc = subprocess.Popen(cmd, stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kamailio exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            if self._answers_options():
                return self
        raise RuntimeError(f"kamailio did not answer OPTIONS on port {self.port}:\n{self.log()[-3000:]}")

    def _answers_options(self) -> bool:
        import socket

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.settimeout(0.2)
            local = s.getsockname()[1]
            s.sendto(
                (
                    f"OPTIONS sip:127.0.0.1:{self.port} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK-up{time.monotonic_ns()}\r\n"
                    f"From: <sip:test@127.0.0.1>;tag=up\r\nTo: <sip:127.0.0.1:{self.port}>\r\n"
                    f"Call-ID: up-{time.monotonic_ns()}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                    "Content-Length: 0\r\n\r\n"
                ).encode(),
                ("127.0.0.1", self.port),
            )
            with contextlib.suppress(OSError):
                return s.recv(65535).startswith(b"SIP/2.0 200")
        return False

    def states(self) -> dict[str, str]:
        """Each node's dispatcher flags as ``kamcmd dispatcher.list`` shows them (``AP``: active and
        probed; ``IP``: inactive, probed until it answers 200 again)."""
        kamcmd = shutil.which("kamcmd") or "/usr/sbin/kamcmd"
        shown = subprocess.run(
            [kamcmd, "-s", f"unix:{self.workdir / 'ctl'}", "dispatcher.list"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        return {uri: flags for uri, flags in re.findall(r"URI: sip:(\S+)\s+FLAGS: (\w+)", shown)}

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(PATIENCE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def kamailio(workdir: Path, nodes: list[str]) -> Iterator[Kamailio]:
    proxy = Kamailio(workdir, nodes).start()
    try:
        yield proxy
    finally:
        proxy.stop()
