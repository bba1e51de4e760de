"""A real ``tierguard gateway`` process for the tests of a bounded gateway (issue 25): starting one
(its open-file limit too), raw requests, and what the simulator and the gateway saw."""

import os
import resource
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx2
import psutil

from tests import forkserver
from tests.helpers import API_KEY, wait_until
from tierguard.sim.servers import free_port

LABELS = ["POSITIVE", "NEGATIVE"]
SCENARIO = {"categories": {"sentiment": {"kind": "label", "labels": LABELS, "agreement": 1.0}}}
POLICY = {"defaults": {"sample_rate": 1.0},
          "categories": {"sentiment": {"comparator": {"type": "label", "labels": LABELS}}}}
HEADERS = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01",
           "content-type": "application/json", "x-tierguard-category": "sentiment"}
BODY = {"model": "claude-opus-4-7", "max_tokens": 8, "system": "sentiment: classify",
        "messages": [{"role": "user", "content": "The parcel arrived damaged."}]}
ROUTED = "claude-haiku-4-5"


@dataclass
class Running:
    base: str
    proc: subprocess.Popen
    log: Path

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.base.removeprefix("http://").split(":")
        return host, int(port)

    def stats(self) -> dict:
        return httpx2.get(self.base + "/tierguard/stats").json()

    def errors(self) -> list[str]:
        """Lines of the gateway's log at ERROR, or with a traceback."""
        return [line for line in self.log.read_text().splitlines()
                if " ERROR " in line or line.startswith("Traceback")]


def start(stack, tmp_path, nofile: int | tuple[int, int] | None = None, **env: str) -> Running:
    """A ``tierguard gateway`` process, as tests/conftest.py starts one; ``nofile``: its soft
    open-file limit at start (the hard one unchanged), or both."""
    port = free_port()
    log = tmp_path / f"gateway-{port}.log"

    limit = None
    if nofile is not None:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        limit = nofile if isinstance(nofile, tuple) else (nofile, hard)
    proc = forkserver.start(["gateway", "--port", str(port)], env={**os.environ, **stack.env, **env},
                            cwd=tmp_path, log=log, nofile=limit)
    stack.others.append(proc)
    running = Running(f"http://127.0.0.1:{port}", proc, log)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"gateway exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            return httpx2.get(running.base + "/readyz", timeout=1).status_code == 200
        except httpx2.TransportError:
            return False

    wait_until(ready, 90, "the gateway to be ready")
    stack.gateways.append(running.base)  # (its stats and log shown if the test fails)
    return running


def sim_stats(sim) -> dict:
    return httpx2.get(sim.base_url + "/_sim/stats").json()


def seen(sim) -> list[bytes]:
    """The bodies of the /v1/messages requests the simulator received."""
    return [r["body"].encode() for r in httpx2.get(sim.base_url + "/_sim/requests").json()["requests"]]


def request_bytes(body: bytes, headers: dict = HEADERS, length: int | None = None) -> bytes:
    head = f"POST /v1/messages HTTP/1.1\r\nhost: gateway\r\ncontent-length: {length or len(body)}\r\n"
    return (head + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode() + body


def closed_at(sock: socket.socket, until: float) -> float | None:
    """When the peer closed ``sock`` (monotonic), or None if it is still open at ``until``."""
    while (left := until - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return time.monotonic()
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic()
        except TimeoutError:
            return None
    return None


def upstream_connections(proc: subprocess.Popen, sim) -> int:
    """The gateway's open connections to the simulator."""
    port = int(sim.base_url.rsplit(":", 1)[1])
    return sum(1 for c in psutil.Process(proc.pid).net_connections(kind="tcp")
               if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED)
