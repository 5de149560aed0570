"""A real Prometheus (Debian's 2.42) scrapes a real `kiln-agent serve` (SmolLM2-135M) after real traffic from the
official openai client: the rules pass promtool, every dashboard and rule expression whose metrics the agent
exports returns data through the query API, and alerts fire when their condition is created for real (queue
saturated, requests refused, agent down). Tests run in file order and share one agent and one Prometheus."""

import threading
import time

import httpx
import pytest

from conftest import CHART, ROOT, run
from exprs import (PROMETHEUS_SYNTHETIC, base_metrics, dashboard_exprs,
                   metric_names, rules, substitute)
SPEC_POD = "qwen35-mtp-0"

from live import (FAKE_TOTAL, HEADROOM, NAMESPACE, POD, SERVICE, Agent, Prometheus, wait_for, write_amd_sysfs,
                  write_device_memory)
from test_dashboard import SERVE_EXPORTS


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    a = Agent(tmp_path_factory.mktemp("agent"))
    yield a
    a.stop()


@pytest.fixture(scope="module")
def spec_agent(tmp_path_factory):
    """A second replica that decodes speculatively (the tiny qwen35 model has an MTP head), so the
    speculation panels and recording rules have data (see `prom`). It runs on the CPU but watches a fake
    sysfs tree of an RX 7900 XTX through the real sysfs memory source, so the GPU busy, temperature and
    power series the dashboard reads have data too."""
    work = tmp_path_factory.mktemp("spec-agent")
    sysfs = write_amd_sysfs(work / "root")
    a = Agent(work, model=ROOT / "tests" / "models" / "qwen35-tiny-q8_0.gguf", watch_memory=False,
              extra_args=["--spec", "mtp", "--spec-draft-n-max", "3", "--device", "cpu",
                          "--memory-source", "sysfs", "--sysfs-root", str(sysfs), "--memory-poll-ms", "200"])
    yield a
    a.stop()


@pytest.fixture(scope="module")
def prom(prometheus_bin, agent, spec_agent, tmp_path_factory):
    p = Prometheus(prometheus_bin, tmp_path_factory.mktemp("prometheus"), agent.port,
                   more_agents={SPEC_POD: spec_agent.port})
    # Drafting only after Prometheus has scraped the counters at zero, so their rates are above zero.
    wait_for("a scrape of the speculative replica",
             lambda: p.query(f'kiln_spec_drafted_tokens_total{{pod="{SPEC_POD}"}}'), timeout=30)
    r = httpx.post(spec_agent.url + "/v1/completions", json={"prompt": "Hello", "max_tokens": 16}, timeout=60)
    assert r.status_code == 200, r.text
    yield p
    p.stop()


@pytest.fixture(scope="module")
def client(agent):
    from openai import OpenAI

    return OpenAI(base_url=agent.url + "/v1", api_key="unused", timeout=120, max_retries=0)


def test_promtool_checks_and_unit_tests_the_rules(prometheus_bin):
    run([prometheus_bin / "promtool", "check", "rules", CHART / "rules" / "kiln.rules.yaml"])
    run([prometheus_bin / "promtool", "test", "rules", "kiln.rules.test.yaml"], cwd=ROOT / "tests" / "chart")


def exported(*agents) -> set:
    """What the agents export once their memory watch has sampled a device (the per-GPU series appear
    with the first sample)."""
    names = set()
    for a in agents:
        names |= wait_for("the per-GPU series", lambda: (n := a.exported_metric_names()) and
                          "kiln_gpu_vram_used_bytes" in n and n, timeout=30)
    return names


def test_agents_export_what_the_dashboard_expects(agent, spec_agent):
    names = exported(agent, spec_agent)
    missing = SERVE_EXPORTS - names
    assert not missing, f"serve no longer exports {missing}: update the dashboard and test_dashboard.py"
    unexpected = {n for n in names if n.startswith("kiln_")} - SERVE_EXPORTS
    assert not unexpected, f"serve exports {unexpected} that the dashboard's list does not know: add them"
    assert agent.metric("kiln_ready") == 1 and spec_agent.metric("kiln_ready") == 1
    # The sysfs tree's card, read through the real sysfs memory source.
    assert spec_agent.metric("kiln_gpu_temperature_celsius") == 45.0
    assert spec_agent.metric("kiln_gpu_power_watts") == 211.0
    assert spec_agent.metric("kiln_gpu_busy_ratio") == 0.37


def test_traffic_is_scraped(agent, prom, client):
    model = client.models.list().data[0].id
    for prompt in ("The capital of France is", "Write a haiku about kilns.", "List three colours."):
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                           max_tokens=24, temperature=0)
        assert r.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(model=model, stream=True, max_tokens=16,
                                                 messages=[{"role": "user", "content": "Say hello."}]))
    assert chunks
    assert client.completions.create(model=model, prompt="Once upon a time", max_tokens=16).choices[0].text
    # A client error, for the error panels.
    bad = httpx.post(agent.url + "/v1/chat/completions", json={"model": model, "messages": "not a list"})
    assert 400 <= bad.status_code < 500
    wait_for("the traffic in Prometheus", lambda: prom.query(
        f'kiln_generated_tokens_total{{namespace="{NAMESPACE}", pod="{POD}"}} > 0')
        and prom.query('sum(kiln_requests_total{status=~"4.."}) > 0'), timeout=30)


class Flood:
    """Keeps `threads` chat requests in flight against a one-slot, one-queue agent: one decodes, one waits,
    the rest are refused with 503 and retry."""

    def __init__(self, client, threads=4):
        self.client, self.stop, self.refused, self.served = client, threading.Event(), 0, 0
        self.errors = []
        self.model = client.models.list().data[0].id
        self.threads = [threading.Thread(target=self.loop, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def loop(self):
        from openai import APIStatusError

        while not self.stop.is_set():
            try:
                self.client.chat.completions.create(
                    model=self.model, max_tokens=120, temperature=0.8,
                    messages=[{"role": "user", "content": "Count slowly from one to one hundred in words."}])
                self.served += 1
            except APIStatusError as e:
                if e.status_code != 503:
                    self.errors.append(e)
                    return
                self.refused += 1
                time.sleep(0.2)
            except Exception as e:  # noqa: BLE001 - reported by the test, not lost in a thread
                self.errors.append(e)
                return

    def join(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)


def test_saturation_fires_the_queue_alerts(prom, client):
    flood = Flood(client)
    try:
        saturated = wait_for("KilnQueueSaturated firing", lambda: prom.firing("KilnQueueSaturated"), timeout=90)
        rejected = wait_for("KilnRequestsRejected firing", lambda: prom.firing("KilnRequestsRejected"), timeout=90)
    finally:
        flood.join()
    assert not flood.errors, flood.errors
    assert flood.refused > 0 and flood.served > 0
    for alert in saturated + rejected:
        assert alert["labels"]["namespace"] == NAMESPACE and alert["labels"]["pod"] == POD
        assert alert["labels"]["inferenceservice"] == SERVICE and alert["annotations"]["summary"]
    assert "all slots busy" in saturated[0]["annotations"]["summary"]


def test_downsize_fires_the_memory_alerts(agent, prom):
    """Another process takes the fake card's memory: the agent shrinks its context for real, and the VRAM,
    downsize and below-requested alerts fire."""
    if agent.device_memory is None:
        pytest.skip("this kiln-agent has no --memory-source (the node layer's memory watch)")
    # increase() needs a sample from before the downsize: a counter first seen at 1 shows no increase.
    wait_for("a scrape of the downsize counter at 0", lambda: prom.query(
        f'kiln_context_downsizes_total{{pod="{POD}"}} == 0'), timeout=30)
    resident = agent.status()["memory"]["resident_bytes"]
    write_device_memory(agent.device_memory, FAKE_TOTAL - resident - HEADROOM + 1)
    wait_for("the downsize", lambda: agent.status()["context"]["effective"] < 2048, timeout=60)
    downsized = wait_for("KilnContextDownsized firing", lambda: prom.firing("KilnContextDownsized"), timeout=60)
    full = wait_for("KilnGpuVramNearlyFull firing", lambda: prom.firing("KilnGpuVramNearlyFull"), timeout=60)
    below = wait_for("KilnContextBelowRequested firing", lambda: prom.firing("KilnContextBelowRequested"),
                     timeout=60)
    assert downsized[0]["labels"]["pod"] == POD and full[0]["labels"]["gpu"] == "0"
    assert "serves a context of" in below[0]["annotations"]["summary"]


def test_every_expression_returns_data(agent, spec_agent, prom):
    names = exported(agent, spec_agent) | PROMETHEUS_SYNTHETIC
    checked = 0
    exprs = [(w, substitute(e, NAMESPACE, SERVICE), k) for w, e, k in dashboard_exprs()]
    for r in rules():
        kind = "record" if "record" in r else "alert"
        exprs.append((f"{kind} {r.get('record') or r['alert']}", r["expr"], kind))
        if kind == "record":
            exprs.append((f"series {r['record']}", r["record"], "record"))
    for where, expr, kind in exprs:
        needed = base_metrics(metric_names(expr))
        unknown = needed - names
        assert not unknown, f"{where}: metrics nobody exports: {unknown}"
        if kind == "alert":
            # An alert's expression returns series only while it fires (test the forced ones below and with
            # promtool); here each metric it reads must have data.
            probes = [f'count({{__name__="{n}"}})' for n in needed]
        elif kind == "annotation":
            # An annotation query is a condition (`> 0`): its input must have data.
            probes = [expr.rsplit(">", 1)[0]]
        else:
            probes = [expr]
        for probe in probes:
            result = wait_for(f"data for {where}: {probe}", lambda: prom.query(probe), timeout=20)
            assert result, f"{where}: no data"
            checked += 1
    assert checked >= 25


def test_agent_down_fires(agent, prom):
    assert not prom.firing("KilnAgentDown")
    assert agent.stop() == 0, "kiln-agent serve must exit 0 on SIGTERM"
    down = wait_for("KilnAgentDown firing", lambda: prom.firing("KilnAgentDown"), timeout=60)
    assert down[0]["labels"]["pod"] == POD and down[0]["labels"]["severity"] == "critical"
