"""deploy/: every file parses; every path, image and variable it references exists; compose and k8s agree."""

import re
from pathlib import Path

import yaml
from typer.main import get_command

from tierguard.cli import app
from tierguard.config import Settings
from tierguard.policy import parse_policy

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
K8S = [doc for f in sorted((DEPLOY / "k8s").glob("*.yaml"))
       for doc in yaml.safe_load_all(f.read_text()) if doc]
ENV_EXAMPLE = (DEPLOY / ".env.example").read_text()
DOCUMENTED = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE, re.M))


def k8s(kind, name):
    [obj] = [d for d in K8S if d["kind"] == kind and d["metadata"]["name"] == name]
    return obj


def test_dockerfile_copies_what_exists():
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), src


def test_compose_references_exist():
    services = COMPOSE["services"]
    assert set(services) == {"redis", "postgres", "migrate", "worker", "beat", "flower", "grafana",
                             "gateway"}
    for name, svc in services.items():
        image = svc["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image"
        if "build" in svc:
            assert (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).exists()
        for volume in svc.get("volumes", []):
            src = volume.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"{name}: {src}"
        if "env_file" in svc:
            assert (DEPLOY / (svc["env_file"] + ".example")).exists()
    text = (DEPLOY / "compose.yaml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)\}", text))
    assert used <= DOCUMENTED, used - DOCUMENTED
    depends = services["worker"]["depends_on"]
    assert depends["migrate"]["condition"] == "service_completed_successfully"


def test_grafana_provisioning_variables_are_set_by_compose():
    text = (DEPLOY / "grafana" / "provisioning" / "datasources" / "tierguard.yaml").read_text()
    wanted = set(re.findall(r"\$\{([A-Z0-9_]+)\}", text))
    assert wanted <= set(COMPOSE["services"]["grafana"]["environment"])


def test_every_setting_and_secret_is_documented():
    settings = {"TIERGUARD_" + name.upper() for name in Settings.model_fields}
    assert settings <= DOCUMENTED | {"TIERGUARD_DATABASE_URL", "TIERGUARD_REDIS_URL"}
    assert {"TIERGUARD_DATABASE_URL", "TIERGUARD_REDIS_URL"} <= set(
        COMPOSE["x-tierguard"]["environment"])
    for policy_text in [(DEPLOY / "tierguard.yaml").read_text(),
                        k8s("ConfigMap", "tierguard-policy")["data"]["tierguard.yaml"]]:
        policy = parse_policy(yaml.safe_load(policy_text))
        for ch in policy.alerts.channels:
            for field in ("secret_env", "webhook_url_env", "routing_key_env"):
                if getattr(ch, field):
                    assert getattr(ch, field) in DOCUMENTED
    secret_keys = set(k8s("Secret", "tierguard-secrets")["stringData"])
    config_keys = set(k8s("ConfigMap", "tierguard-config")["data"])
    assert (secret_keys | config_keys) <= DOCUMENTED | {"TIERGUARD_DATABASE_URL", "TIERGUARD_REDIS_URL"}


def test_compose_and_k8s_agree():
    services = COMPOSE["services"]
    worker, beat = k8s("Deployment", "tierguard-worker"), k8s("Deployment", "tierguard-beat")
    job = k8s("Job", "tierguard-migrate")
    gateway = k8s("Deployment", "tierguard-gateway")
    pairs = [(worker, "worker"), (beat, "beat"), (job, "migrate"), (gateway, "gateway")]
    for obj, service in pairs:
        [container] = obj["spec"]["template"]["spec"]["containers"]
        assert container["args"] == services[service]["command"], service
        assert container["image"] == services[service]["image"]
        for ref in container["envFrom"]:
            kind, name = ("ConfigMap", ref["configMapRef"]["name"]) if "configMapRef" in ref \
                else ("Secret", ref["secretRef"]["name"])
            assert k8s(kind, name)
        for volume in obj["spec"]["template"]["spec"].get("volumes", []):
            assert k8s("ConfigMap", volume["configMap"]["name"])
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"]["type"] == "Recreate"
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > Settings().shadow_timeout
    assert int(services["worker"]["stop_grace_period"].rstrip("s")) == grace
    [container] = worker["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["exec"]["command"][:2] == ["tierguard", "ping"]
    [container] = gateway["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    port = int(services["gateway"]["command"][services["gateway"]["command"].index("--port") + 1])
    assert container["ports"][0]["containerPort"] == port
    assert k8s("Service", "tierguard-gateway")["spec"]["ports"][0]["port"] == port


def test_commands_the_deploy_files_run_exist():
    cli = get_command(app)
    for args in (["worker"], ["beat"], ["ping"], ["db", "upgrade"], ["gateway"]):
        command = cli
        for word in args:
            command = command.commands[word]
        assert command is not None
