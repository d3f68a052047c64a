"""A real Prometheus scrapes examples/observability_app.py running on the real API server.

The app runs 3 job loops on a semaphore of 2 permits (each job holds its permit
for an hour) and holds the Lease ``scheduler``. Prometheus (the Debian
package's binary, started here on loopback with a config and storage of its
own, stopped by pid) scrapes it every second and evaluates
examples/prometheus-alerts.yml. PromQL through Prometheus's HTTP API must
then see 2 held and 1 waiting, the leader, a lost grant when the semaphore is
deleted under its holders, the lost-grant alert firing, and every query of
examples/grafana-dashboard.json valid and answering.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from konductor._store._kinds import SEMAPHORE
from konductor.store import KubernetesStore
from tests.store.conftest import fresh_namespace

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.kubernetes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` and the last value."""
    end = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < end:
        try:
            last = check()
        except (OSError, ValueError) as exc:  # not up yet
            last = exc
        else:
            if last:
                return last
        time.sleep(0.5)
    pytest.fail(f"{what}: not within {timeout:g}s (last: {last!r})")


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of ``expr``; fails the test if Prometheus rejects it."""
        q = urllib.parse.urlencode({"query": expr})
        try:
            answer = get_json(f"{self.url}/api/v1/query?{q}")
        except urllib.error.HTTPError as exc:
            pytest.fail(f"Prometheus rejected {expr!r}: {exc.read().decode()}")
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None


@pytest.fixture
def app(kube_crds: Any) -> Iterator[tuple[str, int]]:
    ns = fresh_namespace(kube_crds)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "examples/observability_app.py", "--port", str(port)],
        cwd=ROOT,
        env={
            **os.environ,
            "KONDUCTOR_STORE": "kubernetes",
            "KUBECONFIG": str(kube_crds.admin_kubeconfig),
            "KONDUCTOR_NAMESPACE": ns,
            "WORKERS": "3",
            "PERMITS": "2",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for("the app's /healthz", lambda: get_json(f"http://127.0.0.1:{port}/healthz"))
        yield ns, port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def prometheus(app: tuple[str, int], tmp_path: Path) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    assert binary, "the prometheus binary is missing: apt-get install -y prometheus"
    _ns, app_port = app
    port = free_port()
    rules = tmp_path / "alerts.yml"
    shutil.copy(ROOT / "examples" / "prometheus-alerts.yml", rules)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(rules)],
                "scrape_configs": [
                    {
                        "job_name": "app",
                        "metrics_path": "/metrics/",
                        "static_configs": [{"targets": [f"127.0.0.1:{app_port}"]}],
                    }
                ],
            }
        )
    )
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            "Prometheus ready",
            lambda: urllib.request.urlopen(f"{url}/-/ready", timeout=5).status == 200,
        )
        yield Prometheus(url)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def dashboard_queries() -> list[str]:
    doc = json.loads((ROOT / "examples" / "grafana-dashboard.json").read_text())
    return [t["expr"] for panel in doc["panels"] for t in panel["targets"]]


def stuck_waiters_expr(window: str, step: str) -> str:
    """The KonductorWaitersStuck expression of the alert file, with a shorter window."""
    import yaml

    doc = yaml.safe_load((ROOT / "examples" / "prometheus-alerts.yml").read_text())
    [rule] = [r for g in doc["groups"] for r in g["rules"] if r["alert"] == "KonductorWaitersStuck"]
    expr: str = rule["expr"]
    assert "[15m:1m]" in expr
    assert "[15m]" in expr
    return expr.replace("[15m:1m]", f"[{window}:{step}]").replace("[15m]", f"[{window}]")


def test_prometheus_sees_held_waiting_leader_and_a_lost_grant(
    kube_crds: Any, app: tuple[str, int], prometheus: Prometheus
) -> None:
    ns, _port = app
    sel = f'primitive="semaphore", name="jobs", namespace="{ns}"'
    wait_for(
        "2 permits held and 1 waiter",
        lambda: (
            prometheus.scalar(f"sum(konductor_held{{{sel}}})") == 2
            and prometheus.scalar(f"sum(konductor_waiting{{{sel}}})") == 1
        ),
    )
    wait_for(
        "the leader",
        lambda: prometheus.scalar('leader_election_master_status{name="scheduler"}') == 1,
    )
    assert prometheus.scalar(f'sum(konductor_acquisitions_total{{{sel}, result="granted"}})') == 2
    assert prometheus.scalar(f"sum(konductor_lost_total{{{sel}}})") == 0
    assert (prometheus.scalar('sum(konductor_api_requests_total{outcome="ok"})') or 0) > 0

    # The stuck-waiter alert's logic, on a 20 s window: one waiter all along, no grant.
    time.sleep(22)
    stuck = prometheus.query(stuck_waiters_expr("20s", "1s"))
    assert [(r["metric"]["name"], r["metric"]["namespace"]) for r in stuck] == [("jobs", ns)]

    # Delete the semaphore under its holders: each loses its permit at its next renewal.
    async def delete() -> None:
        async with KubernetesStore(ns, kubeconfig=kube_crds.admin_kubeconfig) as admin:
            await admin.delete(SEMAPHORE, "jobs")

    asyncio.run(delete())
    # Each holder finds the object gone ("deleted"), or already made anew by the
    # waiter without its entry ("removed_by_other"), whichever it sees first.
    wait_for(
        "2 grants lost",
        lambda: prometheus.scalar(f"sum(konductor_lost_total{{{sel}}})") == 2,
    )
    by_reason = {
        r["metric"]["reason"]: float(r["value"][1])
        for r in prometheus.query(f"sum by (reason) (konductor_lost_total{{{sel}}}) > 0")
    }
    assert set(by_reason) <= {"deleted", "removed_by_other"}, by_reason
    wait_for(
        "the KonductorGrantLost alert firing",
        lambda: [
            a
            for a in get_json(f"{prometheus.url}/api/v1/alerts")["data"]["alerts"]
            if a["labels"]["alertname"] == "KonductorGrantLost"
            and a["labels"].get("name") == "jobs"
            and a["state"] == "firing"
        ],
    )
    # The jobs start again (the object is created anew): 2 held again, 1 waiting.
    wait_for(
        "2 held again",
        lambda: (
            prometheus.scalar(f"sum(konductor_held{{{sel}}})") == 2
            and prometheus.scalar(f"sum(konductor_waiting{{{sel}}})") == 1
        ),
    )

    # Every query of the dashboard is valid PromQL and answers with data.
    for expr in dashboard_queries():
        assert prometheus.query(expr), f"the dashboard query {expr!r} returned nothing"
    rules = get_json(f"{prometheus.url}/api/v1/rules")["data"]["groups"]
    assert {r["name"]: r["health"] for g in rules for r in g["rules"]} == {
        "KonductorGrantLost": "ok",
        "KonductorWaitersStuck": "ok",
    }
