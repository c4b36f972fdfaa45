"""A one-to-one NAT in front of this machine, made with nftables: packets this machine sends to a public
address (198.51.100.7, a documentation address nothing routes) are sent on to one of its own addresses,
port for port, and the answers come back from the public address — what a cloud host's NAT does for a
service whose interface has only a private address. Its own table, removed at the end; the test is
skipped where the kernel or the container refuses NAT rules.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest

PUBLIC = "198.51.100.7"


def _nft(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nft", *args], capture_output=True, text=True, timeout=10)


class Nat:
    """The rules of one test, in a table of their own."""

    def __init__(self, table: str, public: str) -> None:
        self.table, self.public = table, public

    def apply(self, *command: str) -> None:
        done = _nft(*command)
        if done.returncode != 0:
            pytest.skip(f"cannot make NAT rules here: {done.stderr.strip()}")

    def shield(self, ports: list[int]) -> None:
        """UDP to these ports (the browser's) gets in only as an answer to what was sent from them, as
        through the browser's own NAT: the service cannot reach the browser first."""
        listed = ", ".join(str(p) for p in ports)
        self.apply(
            "add", "rule", "ip", self.table, "guard", "udp", "dport", f"{{ {listed} }}", "ct", "state", "new", "drop"
        )


@contextlib.contextmanager
def one_to_one_nat(private: str, public: str = PUBLIC) -> Iterator[Nat]:
    """Packets to ``public`` reach ``private`` (an address of this machine), and the answers come back
    from ``public``."""
    if shutil.which("nft") is None:
        pytest.skip("nft (nftables) is not installed: `make test` installs it")
    nat = Nat(f"swml_nat_{uuid.uuid4().hex[:8]}", public)
    made = _nft("add", "table", "ip", nat.table)
    if made.returncode != 0:
        pytest.skip(f"cannot make NAT rules here: {made.stderr.strip()}")
    try:
        nat.apply("add", "chain", "ip", nat.table, "out", "{ type nat hook output priority -100 ; }")
        nat.apply("add", "rule", "ip", nat.table, "out", "ip", "daddr", public, "dnat", "to", private)
        nat.apply("add", "chain", "ip", nat.table, "guard", "{ type filter hook output priority 0 ; }")
        yield nat
    finally:
        _nft("delete", "table", "ip", nat.table)
