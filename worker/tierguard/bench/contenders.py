"""The proxies ``bench gateway`` puts beside tierguard's gateway, each started on a loopback port.

- ``nginx`` (when an ``nginx`` binary is on ``PATH``; Debian's package): a plain reverse proxy,
  the floor any gateway is held to. A generated configuration in a temporary prefix (its own
  pid, log and temp paths), one worker process, ``proxy_buffering off`` and a kept-alive
  upstream.
- ``litellm`` (LiteLLM's proxy, when it can run): its ``/v1/messages`` endpoint with the bench's
  model pointed at the simulator. Its proxy needs the ``litellm[proxy]`` extras, which may not
  install beside tierguard's own pins: ``TIERGUARD_BENCH_LITELLM`` may name a ``litellm``
  executable from a virtualenv of its own; else the one beside this Python is tried.

A contender that cannot run is reported ``{"unavailable": REASON}``, never silently left out.
The CPU a contender spends is read with ``psutil`` from its process and its children (nginx's
worker).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

NGINX_INSTALL = "apt-get install -y nginx"
_NGINX_CONF = """daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    client_max_body_size 32m;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream messages_api {{ server 127.0.0.1:{upstream}; keepalive 128; keepalive_requests 1000000; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://messages_api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"""
_LITELLM_CONF = """model_list:
  - model_name: {model}
    litellm_params:
      model: anthropic/{model}
      api_base: http://127.0.0.1:{upstream}
      api_key: sk-bench
litellm_settings:
  telemetry: false
general_settings:
  master_key: {key}
"""


class Unavailable(RuntimeError):
    """A contender that cannot run here; its message says why."""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
                                          if os.access(p, os.X_OK)), None)


def start_nginx(folder: Path, port: int, upstream: int) -> subprocess.Popen:
    """nginx in front of ``upstream`` on ``port``; Unavailable without a binary."""
    binary = nginx_binary()
    if binary is None:
        raise Unavailable(f"no nginx binary on PATH (Debian: {NGINX_INSTALL})")
    prefix = folder / "nginx"
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(_NGINX_CONF.format(prefix=prefix, port=port, upstream=upstream))
    log = prefix / "stdout.log"
    return subprocess.Popen([binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def litellm_binary() -> str | None:
    named = os.environ.get("TIERGUARD_BENCH_LITELLM")
    if named:
        return named
    beside = Path(sys.executable).with_name("litellm")
    return str(beside) if beside.exists() else shutil.which("litellm")


def start_litellm(folder: Path, port: int, upstream: int, model: str, key: str) -> subprocess.Popen:
    """LiteLLM's proxy in front of ``upstream`` on ``port``, checking callers' keys against ``key``
    (the bench's own, sent as ``x-api-key``); Unavailable if it cannot start."""
    binary = litellm_binary()
    if binary is None:
        raise Unavailable("no litellm executable (pip install 'litellm[proxy]', or name one with "
                          "TIERGUARD_BENCH_LITELLM)")
    if not os.access(binary, os.X_OK):
        raise Unavailable(f"the litellm executable {binary} does not exist or cannot run "
                          f"(TIERGUARD_BENCH_LITELLM)")
    python = Path(binary).with_name("python")
    if python.exists():  # its proxy imports fastapi & co.: tell why now rather than time out later
        probe = subprocess.run([str(python), "-c", "import fastapi, backoff, apscheduler, litellm.proxy"],
                               capture_output=True, text=True, timeout=120)
        if probe.returncode:
            last = (probe.stderr.strip().splitlines() or ["?"])[-1]
            raise Unavailable(f"LiteLLM's proxy cannot run with {binary} ({last}); its extras "
                              f"(litellm[proxy]) are missing: install them in a virtualenv of its own "
                              f"and name its litellm with TIERGUARD_BENCH_LITELLM")
    conf = folder / "litellm.yaml"
    conf.write_text(_LITELLM_CONF.format(model=model, upstream=upstream, key=key))
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
           "LITELLM_LOG": "ERROR", "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true"}
    env.pop("ANTHROPIC_BASE_URL", None)
    log = folder / "litellm.log"
    return subprocess.Popen([binary, "--config", str(conf), "--host", "127.0.0.1", "--port", str(port),
                             "--num_workers", "1"], env=env, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live children (nginx's worker)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        total = sum(proc.cpu_times()[:2])
        for child in proc.children(recursive=True):
            try:
                total += sum(child.cpu_times()[:2])
            except psutil.NoSuchProcess:
                pass
        return total
    except psutil.NoSuchProcess:
        return 0.0


def wait_serving(port: int, proc: subprocess.Popen, log: Path, timeout: float,
                 probe: Any) -> None:
    """Until ``probe()`` (a request through the contender) succeeds; RuntimeError with its log's tail
    if the process exits or the time runs out."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Unavailable(f"it exited ({proc.returncode}): {_tail(log)}")
        try:
            probe()
            return
        except Exception as err:  # not serving yet
            last = err
        time.sleep(0.2)
    raise Unavailable(f"not serving after {timeout:g} s ({last}): {_tail(log)}")


def _tail(log: Path) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])[-600:]
    except OSError:
        return "no log"
