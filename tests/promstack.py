"""Real Prometheus and Alertmanager processes (Debian's packages) for the tests, on free ports."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx2
import yaml

from tierguard.sim.servers import free_port

MISSING = ("{name} is not installed: the tests use Debian's prometheus and prometheus-alertmanager "
           "packages (./scripts/test installs them when it runs as root: apt-get install prometheus "
           "prometheus-alertmanager)")


def binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError(MISSING.format(name=names[0]))


class Process:
    def __init__(self, args: list[str], ready_url: str, folder: Path):
        self.log = folder / "server.log"
        self.proc = subprocess.Popen(args, stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
                                     cwd=folder)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{args[0]} exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx2.get(ready_url, timeout=1).status_code == 200:
                    return
            except httpx2.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{args[0]} not ready:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Prometheus(Process):
    def __init__(self, targets: list[str], rules: Path | None = None,
                 alertmanager: str | None = None):
        folder = Path(tempfile.mkdtemp(prefix="tg-prometheus-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "scrape_configs": [{"job_name": "tierguard", "static_configs": [{"targets": targets}]}]}
        if rules is not None:
            config["rule_files"] = [str(rules)]
        if alertmanager is not None:
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        super().__init__([binary("prometheus"), f"--config.file={folder / 'prometheus.yml'}",
                          f"--storage.tsdb.path={folder / 'data'}",
                          f"--web.listen-address=127.0.0.1:{self.port}"], self.url + "/-/ready", folder)

    def query(self, promql: str) -> list[dict]:
        body = httpx2.get(self.url + "/api/v1/query", params={"query": promql}, timeout=5).json()
        assert body["status"] == "success", body
        return body["data"]["result"]


class Alertmanager(Process):
    def __init__(self):
        folder = Path(tempfile.mkdtemp(prefix="tg-alertmanager-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (folder / "alertmanager.yml").write_text(yaml.safe_dump(
            {"route": {"receiver": "null"}, "receivers": [{"name": "null"}]}))
        super().__init__([binary("prometheus-alertmanager", "alertmanager"),
                          f"--config.file={folder / 'alertmanager.yml'}",
                          f"--storage.path={folder / 'data'}",
                          f"--web.listen-address=127.0.0.1:{self.port}",
                          "--cluster.listen-address="], self.url + "/-/ready", folder)

    def alerts(self) -> list[dict]:
        return httpx2.get(self.url + "/api/v2/alerts", timeout=5).json()
