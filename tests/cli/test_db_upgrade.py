"""``tierguard db upgrade``: waits for a database that starts late, refuses placeholder
passwords, and creates the read-only role the dashboards use."""

import os
import subprocess
import sys
import time

import psycopg

from tests.helpers import tg
from tierguard.sim.servers import PostgresServer, free_port


def test_waits_for_a_database_that_starts_late(tmp_path):
    port = free_port()
    env = {**os.environ, "TIERGUARD_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/postgres"}
    upgrade = subprocess.Popen([sys.executable, "-m", "tierguard", "db", "upgrade", "--wait", "90"],
                               env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    time.sleep(3)
    assert upgrade.poll() is None  # still waiting, not failed at once
    server = PostgresServer(port=port).start()  # initdb and start: the slow first boot
    try:
        out, err = upgrade.communicate(timeout=120)
        assert upgrade.returncode == 0, err
        assert "database at revision" in out
    finally:
        server.destroy()


def test_gives_up_after_the_wait_with_one_line(tmp_path):
    env = {**os.environ, "TIERGUARD_DATABASE_URL": f"postgresql://tg@127.0.0.1:{free_port()}/tg",
           "TIERGUARD_DATABASE_PASSWORD": "s3cret"}
    t0 = time.monotonic()
    done = tg("db", "upgrade", "--wait", "2", env=env, cwd=tmp_path, check=False)
    assert done.returncode == 1 and 2 <= time.monotonic() - t0 < 30
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert lines[0].startswith("error: cannot reach the database postgresql://tg:***@127.0.0.1:")
    assert "after 2 s" in lines[0] and "s3cret" not in done.stderr + done.stdout


def test_placeholder_passwords_are_refused(tmp_path):
    base = {**os.environ, "TIERGUARD_DATABASE_URL": f"sqlite:///{tmp_path / 't.db'}"}
    for extra, name in ((
            {"TIERGUARD_DATABASE_URL": "postgresql://tg:change-me@127.0.0.1:1/tg"}, "TIERGUARD_DATABASE_URL"),
            ({"TIERGUARD_DATABASE_URL": "postgresql://tg@127.0.0.1:1/tg",
              "TIERGUARD_DATABASE_PASSWORD": "change-me"}, "TIERGUARD_DATABASE_URL"),
            ({"TIERGUARD_REDIS_PASSWORD": "change-me"}, "TIERGUARD_REDIS_URL"),
            ({"TIERGUARD_READER_PASSWORD": "change-me"}, "TIERGUARD_READER_PASSWORD"),
            ({"GF_SECURITY_ADMIN_PASSWORD": "change-me"}, "GF_SECURITY_ADMIN_PASSWORD")):
        done = tg("db", "upgrade", env={**base, **extra}, cwd=tmp_path, check=False)
        assert done.returncode == 2 and name in done.stderr and "placeholder" in done.stderr
    assert not (tmp_path / "t.db").exists()  # refused before touching anything
    assert tg("db", "upgrade", env=base, cwd=tmp_path).returncode == 0  # no password: fine (SQLite)


def test_create_reader(tmp_path, postgres_url):
    env = {**os.environ, "TIERGUARD_DATABASE_URL": postgres_url, "TIERGUARD_READER_PASSWORD": "r3ad"}
    done = tg("db", "upgrade", "--create-reader", env=env, cwd=tmp_path)
    assert "tierguard_reader" in done.stdout and "r3ad" not in done.stdout
    reader = postgres_url.replace("postgresql://postgres@", "postgresql://tierguard_reader@")
    with psycopg.connect(reader) as conn:
        assert conn.execute("SELECT count(*) FROM category").fetchone() == (0,)
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
    with psycopg.connect(postgres_url) as conn:  # a SCRAM verifier was sent, not the password
        [(stored,)] = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'tierguard_reader'")
        assert stored.startswith("SCRAM-SHA-256$") and "r3ad" not in stored
    missing = {k: v for k, v in env.items() if k != "TIERGUARD_READER_PASSWORD"}
    done = tg("db", "upgrade", "--create-reader", env=missing, cwd=tmp_path, check=False)
    assert done.returncode == 2 and "TIERGUARD_READER_PASSWORD is not set" in done.stderr
    sqlite = {**env, "TIERGUARD_DATABASE_URL": f"sqlite:///{tmp_path / 't.db'}"}
    done = tg("db", "upgrade", "--create-reader", env=sqlite, cwd=tmp_path, check=False)
    assert done.returncode == 2 and "needs PostgreSQL" in done.stderr


def test_concurrent_upgrades_wait_for_each_other(tmp_path, postgres_url):
    env = {**os.environ, "TIERGUARD_DATABASE_URL": postgres_url}
    procs = [subprocess.Popen([sys.executable, "-m", "tierguard", "db", "upgrade"], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert "database at revision" in out
