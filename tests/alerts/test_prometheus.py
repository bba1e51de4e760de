"""Prometheus and Alertmanager, real processes: a worker scraped, a flip queried, an alert read back."""

import subprocess
from pathlib import Path

import anthropic
import httpx2

import tierguard
from tests.helpers import samples, wait_until
from tests.promstack import Alertmanager, Prometheus, binary
from tierguard.sim.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
QUEUES = ["BILLING", "SHIPPING", "TECHNICAL"]


def test_deploy_config_and_rules_pass_promtool():
    promtool = binary("promtool")
    for args in (["check", "config", str(ROOT / "deploy/prometheus/prometheus.yml")],
                 ["check", "rules", str(ROOT / "deploy/prometheus/rules.yml")]):
        done = subprocess.run([promtool, *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def test_prometheus_sees_a_flip_and_alertmanager_gets_the_page(stack, simulator, sqlite_url):
    alertmanager = Alertmanager()
    sim = simulator(categories={"race": {"kind": "label", "labels": QUEUES, "agreement": 0.0}})
    metrics_port = free_port()
    stack.configure(policy={"defaults": {"sample_rate": 1.0, "min_samples": 20},
                            "categories": {"race": {"comparator": {"type": "label", "labels": QUEUES}}},
                            "alerts": [{"type": "alertmanager", "url": alertmanager.url}]},
                    database_url=sqlite_url, base_url=sim.base_url, metrics_port=metrics_port)
    stack.start_worker(concurrency=4)
    prometheus = Prometheus([f"127.0.0.1:{metrics_port}"], rules=ROOT / "deploy/prometheus/rules.yml",
                            alertmanager=f"127.0.0.1:{alertmanager.port}")
    try:
        client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
        for i in range(40):
            client.messages.create(category="race", max_tokens=8, system="race: route it",
                                   messages=[{"role": "user", "content": f"ticket {i}"}])
        assert client.tierguard_flush(10)
        wait_until(lambda: samples(sqlite_url) == 40, 60, "40 samples")
        text = httpx2.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        assert 'tierguard_shadow_results_total{category="race",outcome="disagree"} 40.0' in text
        assert "tierguard_queue_depth" in text
        wait_until(lambda: prometheus.query('tierguard_route{category="race",model="claude-opus-4-7"} == 1'),
                   30, "Prometheus to see the flip")
        [changes] = prometheus.query('tierguard_route_changes_total{category="race"}')
        assert changes["metric"]["rule"] == "cusum" and float(changes["value"][1]) == 1
        assert prometheus.query('tierguard_route{category="race",model="claude-haiku-4-5"}')[0][
            "value"][1] == "0"
        # The rule file's demotion alert fires in Prometheus …
        wait_until(lambda: prometheus.query('ALERTS{alertname="TierguardDemoted",alertstate="firing"}'),
                   30, "the TierguardDemoted rule to fire")

        # … and tierguard's own alertmanager channel reached the real Alertmanager.
        def paged():
            return [a for a in alertmanager.alerts() if a["labels"].get("alertname") == "TierguardDemoted"
                    and a["labels"].get("service") == "tierguard"]

        wait_until(paged, 30, "tierguard's demotion alert in Alertmanager")
        [alert] = paged()
        assert alert["labels"]["category"] == "race" and alert["labels"]["severity"] == "critical"
        assert "race demoted" in alert["annotations"]["summary"]
        # Prometheus' own alert arrives too (it sends what fires).
        wait_until(lambda: [a for a in alertmanager.alerts()
                            if a["labels"].get("alertname") == "TierguardDemoted"
                            and a["labels"].get("to") == "claude-opus-4-7"], 30,
                   "Prometheus' alert in Alertmanager")
        client.tierguard_close()
    finally:
        prometheus.stop()
        alertmanager.stop()
