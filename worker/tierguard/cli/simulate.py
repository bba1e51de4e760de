"""``tierguard simulate``: the simulated Messages API."""

from __future__ import annotations

from pathlib import Path

import typer

from tierguard.cli.apps import sim_app
from tierguard.cli.common import console


@sim_app.command("serve")
def simulate_serve(port: int = 8765, host: str = "127.0.0.1",
                   scenario: Path | None = typer.Option(None, help="scenario YAML")) -> None:
    """Serve simulated models on HOST:PORT (POST /v1/messages, streaming included)."""
    from tierguard.sim.models import Scenario
    from tierguard.sim.server import SimServer

    sc = Scenario.load(scenario) if scenario else Scenario()
    server = SimServer(sc, host, port)
    console.print(f"simulated Messages API on http://{host}:{server.server_address[1]} "
                  f"(set ANTHROPIC_BASE_URL to it)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.server_close()
