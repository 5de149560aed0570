"""The PromQL of the dashboard and of the rules file, and the metric names each expression reads."""

import json
import re

import yaml

from conftest import CHART

# Prometheus' own per-target series.
PROMETHEUS_SYNTHETIC = {"up"}

NAME = re.compile(r"(?<![\w:])(kiln_[a-z0-9_]+|kiln:[a-z0-9_:]+|kube_[a-z0-9_]+|up)(?![\w:(])")


def metric_names(expr: str) -> set:
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    # `by (...)`, `on (...)`, `ignoring (...)`, `group_left (...)` list label names, not metrics.
    without_label_lists = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", without_strings)
    return set(NAME.findall(without_label_lists))


def dashboard() -> dict:
    return json.loads((CHART / "dashboards" / "kiln.json").read_text())


def dashboard_exprs() -> list:
    """(where, expr, kind) for every panel target, annotation and variable query."""
    d = dashboard()
    out = []
    for p in d["panels"]:
        for t in p.get("targets", []):
            out.append((f"panel {p['title']!r} {t['refId']}", t["expr"], "panel"))
    for a in d["annotations"]["list"]:
        if "expr" in a:
            out.append((f"annotation {a['name']!r}", a["expr"], "annotation"))
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", v["query"]["query"])
            assert m, f"variable {v['name']}: unexpected query {v['query']['query']}"
            out.append((f"variable ${v['name']}", m.group(1), "variable"))
    return out


def rules() -> list:
    return [r for g in yaml.safe_load((CHART / "rules" / "kiln.rules.yaml").read_text())["groups"]
            for r in g["rules"]]


def recorded_names() -> dict:
    """Recording rule name -> the metric names its expression reads."""
    return {r["record"]: metric_names(r["expr"]) for r in rules() if "record" in r}


def base_metrics(names: set) -> set:
    """The raw metric names behind a set of names, recording rules resolved."""
    rec = recorded_names()
    out = set()
    for n in names:
        out |= base_metrics(rec[n]) if n in rec else {n}
    return out


def substitute(expr: str, namespace: str, service: str) -> str:
    return (expr.replace("$namespace", namespace).replace("$service", service)
            .replace("$__rate_interval", "5m").replace("$__range", "15m").replace("$__interval", "15s"))
