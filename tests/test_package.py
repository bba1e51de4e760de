"""The wheel, as ``pip install tierguard`` gets it: built, installed in a fresh venv, exercised.

The fresh venv borrows the test venv's third-party packages (a ``.pth`` line, which
does not run the editable install's own ``.pth``), so tierguard itself can only come
from the wheel: a file the wheel lacks fails here.
"""

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp),
                           str(ROOT)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    [wheel] = tmp.glob("tierguard-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    [site] = (venv / "lib").glob("python3*/site-packages")
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)  # a wheel install is an unpack (plus the console script below)
    script = venv / "bin" / "tierguard"
    script.write_text(f"#!{venv / 'bin' / 'python'}\nfrom tierguard.cli import main\nmain()\n")
    script.chmod(0o755)
    return wheel, venv


def run(venv, *args, env=None, cwd=None):
    return subprocess.run([str(venv / "bin" / "tierguard"), *args], capture_output=True, text=True,
                          env=env or os.environ, cwd=cwd, timeout=120)


def test_the_wheel_holds_migrations_dashboard_and_types(installed):
    wheel, venv = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "tierguard/dashboards/tierguard.json" in names
    assert "tierguard/store/migrations/script.py.mako" in names and "tierguard/py.typed" in names
    versions = {f"tierguard/store/migrations/versions/{p.name}"
                for p in (ROOT / "worker/tierguard/store/migrations/versions").glob("0*.py")}
    assert len(versions) >= 12 and versions <= names
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import tierguard; print(tierguard.__file__)"],
                           capture_output=True, text=True, check=True,
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}).stdout
    assert where.startswith(str(venv)), where


def test_installed_cli_upgrades_sqlite_and_pushes_the_dashboard(installed, tmp_path, receiver):
    _, venv = installed
    assert "Usage" in run(venv, "--help").stdout
    env = {**os.environ, "TIERGUARD_DATABASE_URL": f"sqlite:///{tmp_path / 'tg.db'}"}
    env.pop("TIERGUARD_DASHBOARD", None)
    done = run(venv, "db", "upgrade", env=env, cwd=tmp_path)
    assert done.returncode == 0 and "database at revision" in done.stdout, done.stderr
    receiver.routes.update({
        ("GET", "/api/frontend/settings"): lambda req: (200, {"buildInfo": {"version": "11.3.0"}}),
        ("GET", "/api/dashboards/uid/tierguard"): lambda req: (404, {"message": "not found"}),
        ("GET", "/api/folders/tierguard"): lambda req: (200, {"uid": "tierguard"}),
        ("POST", "/api/dashboards/db"): lambda req: (200, {"uid": "tierguard", "version": 1,
                                                           "url": "/d/tierguard/tierguard"}),
    })
    env.update(GRAFANA_URL=receiver.url, GRAFANA_TOKEN="glsa_test")
    done = run(venv, "grafana", "push", "--json", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["uid"] == "tierguard"
    [upsert] = [r for r in receiver.requests if r.path == "/api/dashboards/db"]
    assert len(upsert.json["dashboard"]["panels"]) >= 7


def test_the_sdist_carries_the_license_tests_and_deploy_files(tmp_path):
    import tarfile

    done = subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(tmp_path), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    [sdist] = tmp_path.glob("tierguard-*.tar.gz")
    names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
    assert {"LICENSE", "README.md", "tests/conftest.py", "tests/helpers.py", "tests/receiver.py",
            "deploy/compose.yaml", "deploy/.env.example", "worker/tierguard/dashboards/tierguard.json",
            "scripts/test"} <= names
    assert not [n for n in names if "__pycache__" in n]
