"""A running `kiln-agent serve` (real model) and a real Prometheus scraping it, for test_monitoring.py."""

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import CHART, ROOT

CACHE = Path(os.environ.get("KILN_CACHE", Path.home() / ".cache" / "kiln"))
MODEL = Path(os.environ.get("KILN_TEST_MODEL", CACHE / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
AGENT_BIN = Path(os.environ.get("KILN_AGENT_BIN", TARGET / "release" / "kiln-agent"))

# The labels the chart's PodMonitor gives every agent series; the static scrape config below sets the same.
NAMESPACE, SERVICE, POD = "kiln-test", "smollm2", "smollm2-0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, check, timeout=60.0, interval=0.25):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = check()
            if last:
                return last
        except (httpx.HTTPError, OSError) as e:
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


# A fake device for the node layer's memory watch (`--memory-source fake:FILE`, one `USED TOTAL` line: bytes
# other processes use, and the card's size; the agent adds its own bytes to USED like a real GPU would).
FAKE_TOTAL = 100 * 10**9
HEADROOM = 512 << 20


def write_device_memory(path: Path, used_by_others: int):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"# used-by-others total\n{used_by_others} {FAKE_TOTAL}\n")
    tmp.replace(path)


def write_amd_sysfs(root: Path) -> Path:
    """A sysfs tree with one RX 7900 XTX as amdgpu exposes it (the files the agent's sysfs memory source
    reads: VRAM, busy percent, the hwmon edge temperature and average power), so an agent run with
    `--memory-source sysfs --sysfs-root ROOT` exports every per-GPU series on a machine without the card."""
    device = root / "sys" / "class" / "drm" / "card0" / "device"
    files = {
        "vendor": "0x1002", "device": "0x744c",
        "uevent": "DRIVER=amdgpu\nPCI_ID=1002:744C\nPCI_SLOT_NAME=0000:03:00.0",
        "mem_info_vram_total": str(24 << 30), "mem_info_vram_used": str(3 << 30),
        "gpu_busy_percent": "37",
        "hwmon/hwmon0/temp1_input": "45000", "hwmon/hwmon0/temp1_label": "edge",
        "hwmon/hwmon0/power1_average": "211000000",
    }
    for name, text in files.items():
        (device / name).parent.mkdir(parents=True, exist_ok=True)
        (device / name).write_text(text + "\n")
    (device / "drm" / "renderD128").mkdir(parents=True, exist_ok=True)
    return root


class Agent:
    """`kiln-agent serve` with one slot and a one-request queue, so saturation is easy to create; on a build
    with the node layer's memory watch, on a fake device whose memory the test controls."""

    def __init__(self, log_dir: Path, model: Path = MODEL, extra_args=(), watch_memory=True):
        if not AGENT_BIN.exists():
            pytest.fail(f"{AGENT_BIN} is missing: build it with `cargo build --release -p kiln-agent`")
        if not model.exists():
            pytest.fail(f"{model} is missing: run scripts/fetch-models.sh")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_dir / "kiln-agent.log", "w")
        env = {k: v for k, v in os.environ.items() if k != "KILN_API_KEY"}
        args = [AGENT_BIN, "serve", "--model", model, "--port", str(self.port), "--ctx", "2048",
                "--parallel", "1", "--queue", "1", "--threads", "1", *extra_args]
        help_text = subprocess.run([AGENT_BIN, "serve", "--help"], capture_output=True, text=True).stdout
        self.device_memory = None
        if watch_memory and "--memory-source" in help_text:
            self.device_memory = log_dir / "device-memory"
            write_device_memory(self.device_memory, 0)
            args += ["--memory-source", f"fake:{self.device_memory}", "--memory-poll-ms", "100",
                     "--vram-headroom", str(HEADROOM), "--ctx-min", "512", "--grow-after-s", "3600"]
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        wait_for("kiln-agent /readyz", lambda: self._alive() and
                 httpx.get(self.url + "/readyz", timeout=2).status_code == 200, timeout=120)

    def _alive(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"kiln-agent serve exited with {self.proc.returncode}; see {self.log.name}")
        return True

    def status(self) -> dict:
        return httpx.get(self.url + "/status", timeout=10).json()

    def exported_metric_names(self) -> set:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}

    def metric(self, name: str) -> float:
        """The value of `name`'s first sample on /metrics (the single-series gauges)."""
        text = httpx.get(self.url + "/metrics", timeout=10).text
        for line in text.splitlines():
            if line.split("{")[0].split(" ")[0] == name:
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name} is not on /metrics")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            finally:
                if self.proc.poll() is None:
                    self.proc.kill()
        self.log.close()
        return self.proc.returncode


def live_rules(for_duration: str) -> dict:
    """The chart's rules with every alert's `for` shortened, so a condition held for seconds fires. The
    expressions are the shipped ones, unchanged."""
    rules = yaml.safe_load((CHART / "rules" / "kiln.rules.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule and "for" in rule:
                rule["for"] = for_duration
    return rules


class Prometheus:
    def __init__(self, bin_dir: Path, work: Path, agent_port: int, more_agents: dict[str, int] | None = None):
        """Scrapes the agent at `agent_port` as pod POD, and each of `more_agents` (pod name → port)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (work / "live.rules.yaml").write_text(yaml.safe_dump(live_rules("2s")))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["live.rules.yaml"],
            "scrape_configs": [{
                "job_name": "kiln-agent",
                "static_configs": [{"targets": [f"127.0.0.1:{port}"],
                                    "labels": {"namespace": NAMESPACE, "inferenceservice": SERVICE, "pod": pod}}
                                   for pod, port in {POD: agent_port, **(more_agents or {})}.items()],
            }],
        }
        (work / "prometheus.yml").write_text(yaml.safe_dump(config))
        subprocess.run([bin_dir / "promtool", "check", "config", work / "prometheus.yml"], check=True,
                       capture_output=True)
        self.log = open(work / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            [bin_dir / "prometheus", "--config.file", work / "prometheus.yml",
             "--storage.tsdb.path", work / "data", "--web.listen-address", f"127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=work)
        wait_for("Prometheus /-/ready", lambda: self.proc.poll() is None and
                 httpx.get(self.url + "/-/ready", timeout=2).status_code == 200)

    def query(self, expr: str) -> list:
        r = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=30)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{expr}\n{json.dumps(body)}"
        return body["data"]["result"]

    def alerts(self) -> list:
        return httpx.get(self.url + "/api/v1/alerts", timeout=10).json()["data"]["alerts"]

    def firing(self, name: str) -> list:
        return [a for a in self.alerts() if a["labels"]["alertname"] == name and a["state"] == "firing"]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self.log.close()
