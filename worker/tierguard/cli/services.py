"""The long-running processes: worker, beat, and the probe that asks workers if they are alive."""

from __future__ import annotations

import logging
import os
import threading

import typer

from tierguard.cli.apps import app
from tierguard.cli.common import JsonOpt, console, emit, env, redis_client


@app.command()
def worker(concurrency: int | None = typer.Option(
               None, "--concurrency", "-c",
               help="Celery task threads: batch messages in progress at once "
                    "(default TIERGUARD_WORKER_CONCURRENCY)"),
           pool: str = typer.Option("threads", help="threads (default) or another Celery pool"),
           loglevel: str = "INFO") -> None:
    """Run a Celery worker that executes shadow jobs (threads pool, at-least-once)."""
    from tierguard.contract.sealing import sealer
    from tierguard.otlp import exporter as otlp
    from tierguard.pipeline import collector
    from tierguard.pipeline.tasks import worker_app
    from tierguard.routing.routes import derive, ensure_categories

    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    settings, policy, engine = env()
    sealer(settings)  # a bad TIERGUARD_PAYLOAD_KEYS stops the worker here, with the reason
    otlp.use(otlp.from_settings(settings))  # so does a bad TIERGUARD_OTLP_ENDPOINT or _HEADERS
    ensure_categories(engine, policy)
    r = redis_client(settings)

    def sync_routes() -> None:  # repairs Redis after a missed post-commit update
        stop = threading.Event()
        while not stop.wait(5.0):
            try:
                derive(engine, r)  # the database's routes, whatever Redis held
            except Exception as err:
                logging.getLogger("tierguard.routing.routes").warning("route sync failed: %s", err)

    threading.Thread(target=sync_routes, name="tierguard-route-sync", daemon=True).start()
    celery = worker_app(settings)
    collector.install(settings.worker_gc_threshold)
    if settings.metrics_port:
        from tierguard import metrics
        from tierguard.pipeline.health import probes

        metrics.serve(settings.metrics_port, [metrics.QueueDepth(lambda: redis_client(settings),
                                                                 settings.queue)],
                      probes(celery, settings), host=settings.metrics_host)
    n = concurrency or settings.worker_concurrency
    celery.worker_main(["worker", "-P", pool, "-c", str(n), "-Q", settings.queue,
                        "-l", loglevel, "-n", f"tierguard-{os.getpid()}@%h",
                        "--without-gossip", "--without-mingle"])


@app.command()
def ping(timeout: float = typer.Option(5.0, help="seconds to wait for replies"),
         local: bool = typer.Option(True, help="only count workers on this host (k8s probes)"),
         as_json: bool = JsonOpt) -> None:
    """Ask the workers over the broker whether they are alive; exit 1 if none answers."""
    import socket

    from tierguard.config import get_settings
    from tierguard.contract.broker import make_celery

    replies = make_celery(get_settings()).control.ping(timeout=timeout) or []
    names = [name for reply in replies for name in reply]
    if local:
        names = [n for n in names if n.endswith("@" + socket.gethostname())]
    if as_json:
        emit({"workers": names})
    else:
        console.print("\n".join(names) or "[red]no worker answered[/]")
    if not names:
        raise typer.Exit(1)


@app.command()
def beat(loglevel: str = "INFO") -> None:
    """Run Celery beat (exactly one per deployment): alert redelivery and the periodic checks."""
    from tierguard.contract.broker import make_celery, send_at_start

    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings, _, _ = env()
    if settings.metrics_port:  # /livez for the image's HEALTHCHECK and the pod's liveness probe
        from tierguard import metrics

        metrics.serve(settings.metrics_port, probes={"/livez": lambda: (True, "alive")},
                      host=settings.metrics_host)
    # In-memory schedule: tierguard's tasks are periodic and idempotent, so nothing is worth a
    # schedule file (none is left in /tmp, and a read-only root filesystem works).
    app = make_celery(settings)
    send_at_start(app)  # the API's model list read now, then every TIERGUARD_MODELS_POLL_SECONDS
    app.start(["beat", "-l", loglevel, "--scheduler", "celery.beat:Scheduler"])


@app.command()
def gateway(host: str = typer.Option("127.0.0.1", help="interface to listen on"),
            port: int = typer.Option(8787, help="port to listen on"),
            workers: int = typer.Option(1, min=1, help="gateway processes (each with its own pools)"),
            loglevel: str = "INFO") -> None:
    """Serve Anthropic's API for any app: route and shadow by the x-tierguard-category header."""
    import uvicorn

    from tierguard.config import get_settings, mask_url, upstream_url

    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    logging.getLogger("tierguard.gateway").info(
        "gateway on http://%s:%d -> %s (category header %s)", host, port, mask_url(upstream_url(settings)),
        settings.category_header)
    # The guarded protocol times request heads out and caps caller connections (app/admission.py),
    # writes a head with its first body bytes (app/writes.py) and relays most unsampled calls without
    # the ASGI cycle (app/express.py); the gateway serves no WebSocket and reads no X-Forwarded-* headers.
    uvicorn.run("tierguard.app.gateway:create_app", factory=True, host=host, port=port,
                workers=workers, log_level=loglevel.lower(), access_log=False, lifespan="on",
                timeout_keep_alive=75, server_header=False, date_header=False,
                http="tierguard.app.express:ExpressProtocol", ws="none", proxy_headers=False)
