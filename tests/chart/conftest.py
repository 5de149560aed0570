"""Fixtures for the chart, manifest, image and monitoring tests: the real tools, each installed by the project's
own script into $KILN_CACHE (helm and kubectl: scripts/k8s-tools.sh; Prometheus and promtool:
scripts/prometheus.sh; hadolint: scripts/hadolint.sh)."""

import os
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kiln"


def tool_dir(script: str) -> Path:
    out = subprocess.run([str(ROOT / "scripts" / script)], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def run(args, check=True, **kw):
    """Runs a command; on failure the assertion message carries its output."""
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)
    if check:
        assert p.returncode == 0, f"{' '.join(map(str, args))} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
    return p


@pytest.fixture(scope="session")
def helm():
    return tool_dir("k8s-tools.sh") / "helm"


@pytest.fixture(scope="session")
def kubectl():
    return tool_dir("k8s-tools.sh") / "kubectl"


@pytest.fixture(scope="session")
def prometheus_bin():
    return tool_dir("prometheus.sh")


@pytest.fixture(scope="session")
def hadolint():
    return tool_dir("hadolint.sh") / "hadolint"


def template(helm, *args, check=True):
    """`helm template` of the chart; returns the parsed documents (or the process when check=False)."""
    p = run([helm, "template", "kiln", CHART, "--namespace", "kiln-system", *args], check=check)
    if not check:
        return p
    return [d for d in yaml.safe_load_all(p.stdout) if d]


ALL_FEATURES = [
    "--set", "monitoring.force=true",
    "--set", "monitoring.labels.release=prometheus",
    "--set", "operator.replicas=2",
    "--set", "operator.nodeSelector.kubernetes\\.io/os=linux",
    "--set", "operator.tolerations[0].key=dedicated",
    "--set", "operator.tolerations[0].operator=Exists",
    "--set", "operator.image.tag=1.2.3",
    "--set", "operator.image.pullPolicy=Always",
    "--set", "networkPolicy.enabled=true",
    "--set", "networkPolicy.agentNamespaces={ai,ml}",
    "--set", "networkPolicy.allowedNamespaces={apps}",
    "--set", "networkPolicy.monitoringNamespace=monitoring",
    "--set", "monitoring.dashboard.namespace=grafana",
]


def by_kind(docs):
    out = {}
    for d in docs:
        out.setdefault(d["kind"], []).append(d)
    return out


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")
