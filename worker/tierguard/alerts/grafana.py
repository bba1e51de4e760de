"""Grafana over its HTTP API (grafana-client): push the dashboard, write route-change annotations.

``GRAFANA_URL`` and ``GRAFANA_TOKEN`` come from the environment (a channel may
name other variables); the token is sent as a bearer token and never logged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tierguard.errors import ConfigError, PermanentDelivery, RetryableDelivery, TierguardError
from tierguard.policy import Channel
from tierguard.store.tables import Event

FOLDER_UID = "tierguard"
FOLDER_TITLE = "tierguard"
DIRECTION = {"demoted": "demotion", "promoted": "promotion", "flap_guard": "demotion",
             "pin_expired": "pin", "test": "test"}


def dashboard_path() -> Path:
    """The dashboard JSON shipped in the package (or $TIERGUARD_DASHBOARD)."""
    env = os.environ.get("TIERGUARD_DASHBOARD")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "dashboards" / "tierguard.json"


def api(url_env: str = "GRAFANA_URL", token_env: str = "GRAFANA_TOKEN", timeout: float = 10.0):
    from grafana_client import GrafanaApi

    url = os.environ.get(url_env)
    if not url:
        raise ConfigError([f"{url_env}: set it to the Grafana base URL"])
    token = os.environ.get(token_env)
    if not token:
        raise ConfigError([f"{token_env}: set it to a Grafana service-account token"])
    return GrafanaApi.from_url(url, credential=token, timeout=timeout)


def _call(fn, *args: Any, **kwargs: Any) -> Any:
    from grafana_client.client import GrafanaClientError, GrafanaException

    try:
        return fn(*args, **kwargs)
    except GrafanaClientError as err:
        if err.status_code in (408, 429):
            raise RetryableDelivery(f"grafana answered {err.status_code}") from None
        raise PermanentDelivery(f"grafana rejected the request with {err.status_code}") from None
    except GrafanaException as err:
        raise RetryableDelivery(f"grafana unavailable ({err.status_code or type(err).__name__})") from None
    except OSError as err:
        raise RetryableDelivery(f"grafana unreachable ({type(err).__name__})") from None


def push(grafana=None, path: Path | None = None) -> dict[str, Any]:
    """Create the folder if missing and upsert the dashboard; returns the dashboard's uid and url.

    A dashboard Grafana loads from a provisioning file is left alone (``provisioned``)."""
    from grafana_client.client import GrafanaClientError

    path = path or dashboard_path()
    try:
        dashboard = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise TierguardError(f"cannot read the dashboard {path}: {err}") from None
    grafana = grafana or api()
    dashboard["id"] = None
    try:
        version = _call(lambda: grafana.version)
    except (RetryableDelivery, PermanentDelivery) as err:
        raise TierguardError(f"cannot push the dashboard: {err}") from None
    try:
        meta = grafana.dashboard.get_dashboard(dashboard["uid"]).get("meta", {})
    except GrafanaClientError as err:
        if err.status_code != 404:
            raise TierguardError(f"grafana: cannot read dashboard {dashboard['uid']} "
                                 f"({err.status_code})") from None
        meta = {}
    if meta.get("provisioned"):
        # Grafana refuses API writes to a file-provisioned dashboard: the file is its source.
        return {"uid": dashboard["uid"], "url": meta.get("url"), "version": None, "grafana": version,
                "provisioned": True}
    try:
        grafana.folder.get_folder(FOLDER_UID)
    except GrafanaClientError as err:
        if err.status_code != 404:
            raise TierguardError(f"grafana: cannot read folder ({err.status_code})") from None
        _call(grafana.folder.create_folder, FOLDER_TITLE, uid=FOLDER_UID)
    result = _call(grafana.dashboard.update_dashboard,
                   {"dashboard": dashboard, "folderUid": FOLDER_UID, "overwrite": True,
                    "message": "tierguard grafana push"})
    return {"uid": result.get("uid", dashboard.get("uid")), "url": result.get("url"),
            "version": result.get("version"), "grafana": version, "provisioned": False}


def annotate(ch: Channel, event: Event) -> None:
    """One annotation on the dashboard per route-change event."""
    try:
        grafana = api(ch.url_env or "GRAFANA_URL", ch.token_env or "GRAFANA_TOKEN", ch.timeout)
    except ConfigError as err:
        raise RetryableDelivery(str(err)) from None
    tags = ["tierguard", event.category or "all", DIRECTION.get(event.kind, event.kind)]
    _call(grafana.annotations.add_annotation, dashboard_uid=ch.dashboard_uid,
          time_from=int(event.created_at.timestamp() * 1000), tags=tags, text=event.summary)
