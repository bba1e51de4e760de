"""`tierguard grafana push` and annotations against a local server speaking Grafana's HTTP API."""

import json
import os

import pytest
from sqlmodel import select

from tests.helpers import flip, last_json, tg
from tierguard.alerts.outbox import deliver_due
from tierguard.policy import parse_policy
from tierguard.store.db import session
from tierguard.store.tables import Alert

TOKEN = "glsa_test_token_0123456789abcdef"


@pytest.fixture
def grafana(receiver, monkeypatch):
    folders = {}

    def get_folder(req):
        return (200, folders["tierguard"]) if "tierguard" in folders else (404, {"message": "not found"})

    def create_folder(req):
        folders[req.json["uid"]] = {"uid": req.json["uid"], "title": req.json["title"]}
        return 200, folders[req.json["uid"]]

    receiver.routes.update({
        ("GET", "/api/frontend/settings"): lambda req: (200, {"buildInfo": {"version": "11.3.0"}}),
        ("GET", "/api/folders/tierguard"): get_folder,
        ("POST", "/api/folders"): create_folder,
        ("POST", "/api/dashboards/db"): lambda req: (200, {
            "uid": req.json["dashboard"]["uid"], "url": "/d/tierguard/tierguard", "version": 3,
            "status": "success"}),
        ("POST", "/api/annotations"): lambda req: (200, {"id": 1, "message": "Annotation added"}),
        ("GET", "/api/dashboards/uid/tierguard"): lambda req: (404, {"message": "Dashboard not found"}),
    })
    monkeypatch.setenv("GRAFANA_URL", receiver.url)
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    return receiver


def test_push_creates_folder_and_upserts_dashboard(grafana, tmp_path):
    env = {**os.environ}
    first = last_json(tg("grafana", "push", "--json", env=env, cwd=tmp_path).stdout)
    assert first == {"uid": "tierguard", "url": "/d/tierguard/tierguard", "version": 3,
                     "grafana": "11.3.0", "provisioned": False}
    tg("grafana", "push", "--json", env=env, cwd=tmp_path)  # the second push finds the folder
    calls = [(r.method, r.path) for r in grafana.requests]
    assert calls.count(("POST", "/api/folders")) == 1
    assert calls.count(("POST", "/api/dashboards/db")) == 2
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in grafana.requests)
    [folder] = [r for r in grafana.requests if r.path == "/api/folders"]
    assert folder.json == {"title": "tierguard", "uid": "tierguard"}
    upsert = [r for r in grafana.requests if r.path == "/api/dashboards/db"][0].json
    assert upsert["folderUid"] == "tierguard" and upsert["overwrite"] is True
    assert upsert["dashboard"]["uid"] == "tierguard" and upsert["dashboard"]["id"] is None
    assert len(upsert["dashboard"]["panels"]) >= 7


def test_a_file_provisioned_dashboard_is_left_alone(grafana, tmp_path):
    grafana.routes[("GET", "/api/dashboards/uid/tierguard")] = lambda req: (200, {
        "dashboard": {"uid": "tierguard"}, "meta": {"provisioned": True, "url": "/d/tierguard/x"}})
    done = tg("grafana", "push", env={**os.environ}, cwd=tmp_path)
    assert "provisioned from a file" in done.stdout and "nothing pushed" in done.stdout
    assert last_json(tg("grafana", "push", "--json", env={**os.environ}, cwd=tmp_path).stdout)[
        "provisioned"] is True
    assert not [r for r in grafana.requests if r.method == "POST"]


def test_push_to_an_unreachable_grafana_or_a_missing_file_is_one_line(tmp_path):
    from tierguard.sim.servers import free_port

    env = {**os.environ, "GRAFANA_URL": f"http://127.0.0.1:{free_port()}", "GRAFANA_TOKEN": TOKEN}
    for args, wanted in ((["grafana", "push"], "cannot push the dashboard: grafana unreachable"),
                         (["grafana", "push", "--dashboard", str(tmp_path / "nope.json")],
                          "cannot read the dashboard")):
        done = tg(*args, env=env, cwd=tmp_path, check=False)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.startswith(f"error: {wanted}"), done.stderr


def test_push_without_token_is_a_clear_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAFANA_")}
    env["GRAFANA_URL"] = "http://127.0.0.1:9"
    done = tg("grafana", "push", env=env, cwd=tmp_path, check=False)
    assert done.returncode == 2 and "GRAFANA_TOKEN: set it" in done.stderr
    assert "Traceback" not in done.stderr


def test_route_changes_become_annotations(engine, grafana):
    policy = parse_policy({"defaults": {"min_samples": 5}, "alerts": [{"type": "grafana"}],
                           "categories": {"sentiment": {}}})
    flip(engine, policy)
    assert deliver_due(engine, policy) == {"delivered": 1}
    [note] = [r for r in grafana.requests if r.path == "/api/annotations"]
    assert note.headers["authorization"] == f"Bearer {TOKEN}"
    assert note.json["dashboardUID"] == "tierguard"
    assert note.json["tags"] == ["tierguard", "sentiment", "demotion"]
    assert note.json["text"].startswith("sentiment demoted: claude-haiku-4-5 → claude-opus-4-7")
    assert isinstance(note.json["time"], int)
    with session(engine) as s:
        assert s.exec(select(Alert)).one().channel == "grafana"
    assert TOKEN not in json.dumps([r.json for r in grafana.requests])
