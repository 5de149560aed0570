"""charts/kiln/dashboards/kiln.json: a well-formed Grafana dashboard whose queries read only known metrics."""

import re

from exprs import (PROMETHEUS_SYNTHETIC, base_metrics, dashboard,
                   dashboard_exprs, metric_names, recorded_names)

# What `kiln-agent serve` exports on main (node-agent/src/server/metrics.rs); test_monitoring.py checks this
# list against a running agent's /metrics, so it cannot drift silently.
SERVE_EXPORTS = {
    "kiln_prompt_tokens_total", "kiln_prompt_cached_tokens_total", "kiln_generated_tokens_total",
    "kiln_prefill_seconds_total", "kiln_decode_seconds_total", "kiln_prefill_tokens_per_second",
    "kiln_decode_tokens_per_second", "kiln_queue_depth", "kiln_slots_busy", "kiln_slots",
    "kiln_requests_total", "kiln_context_size", "kiln_context_downsizes_total",
    "kiln_gpu_vram_used_bytes", "kiln_gpu_vram_total_bytes", "kiln_ready",
    "kiln_gpu_busy_ratio", "kiln_gpu_temperature_celsius", "kiln_gpu_power_watts",
    "kiln_spec_drafted_tokens_total", "kiln_spec_accepted_tokens_total",
    *(f"{h}_{s}" for h in ("kiln_time_to_first_token_seconds", "kiln_request_duration_seconds",
                            "kiln_decode_batch_rows")
      for s in ("bucket", "sum", "count")),
}
KNOWN = SERVE_EXPORTS | PROMETHEUS_SYNTHETIC


def test_structure():
    d = dashboard()
    assert d["title"] and d["uid"] and isinstance(d["schemaVersion"], int)
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "service"):
        assert variables[name]["type"] == "query" and variables[name]["datasource"]["uid"] == "${datasource}"
    occupied = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & occupied, f"panel {p['title']!r} overlaps another"
        occupied |= cells
        if p["type"] == "row":
            continue
        assert p["type"] in ("timeseries", "stat", "bargauge", "gauge", "table"), p["type"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and p.get("description"), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["refId"] and t["datasource"]["uid"] == "${datasource}"
            # Every kiln query is filtered by both dashboard variables.
            if any(n.startswith("kiln_") for n in metric_names(t["expr"])):
                assert '=~"$namespace"' in t["expr"] and '=~"$service"' in t["expr"], t["expr"]


def test_required_views_are_there():
    exprs = " ".join(e for _, e, _ in dashboard_exprs())
    for metric in ("kiln_gpu_vram_used_bytes", "kiln_gpu_vram_total_bytes", "kiln_context_size",
                   "kiln_decode_seconds_total", "kiln_prefill_seconds_total", "kiln_time_to_first_token_seconds_bucket",
                   "kiln_spec_accepted_tokens_total", "kiln_queue_depth", "kiln_slots_busy", "kiln_requests_total",
                   "kiln_ready"):
        assert metric in exprs, f"the dashboard shows nothing of {metric}"
    annotations = [a for a in dashboard()["annotations"]["list"] if "expr" in a]
    assert any("kiln_context_downsizes_total" in a["expr"] for a in annotations), "downsizes must be annotations"


def test_every_metric_name_is_known():
    for where, expr, _ in dashboard_exprs():
        names = metric_names(expr)
        assert names, f"{where}: no metric found in {expr}"
        unknown = base_metrics(names) - KNOWN
        assert not unknown, f"{where}: unknown metrics {unknown}"


def test_rules_read_only_known_metrics():
    for name, inputs in recorded_names().items():
        assert re.fullmatch(r"kiln:[a-z0-9_]+:[a-z0-9_]+", name), name
        assert not base_metrics(inputs) - KNOWN, (name, base_metrics(inputs) - KNOWN)


def test_metric_name_parser():
    assert metric_names('sum by (pod) (rate(kiln_requests_total{status=~"5..", job="kiln_x"}[5m]))') == \
        {"kiln_requests_total"}
    assert metric_names("kiln_a / on (namespace, pod) group_left (kiln_label) kiln:b:c") == {"kiln_a", "kiln:b:c"}
    assert metric_names('up{job="kiln-agent"} == 0') == {"up"}
