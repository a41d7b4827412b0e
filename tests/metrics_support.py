"""Helpers of the metrics and deployment tests (no tests here): HTTP scraping of a running
``ctrguard run``, and the metric names that ``deploy/`` refers to."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus-rules.yaml"
DASHBOARD = DEPLOY / "grafana-dashboard.json"

#: Series Prometheus makes itself for every target (not exported by ctrguard).
PROMETHEUS_SERIES = {"up"}


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Scrape:
    """One ``/metrics`` answer: every sample by name and labels."""

    def __init__(self, text: str):
        self.text = text
        self.samples: dict[tuple[str, frozenset], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.samples[(s.name, frozenset(s.labels.items()))] = s.value

    @property
    def names(self) -> set[str]:
        return {name for name, _ in self.samples}

    def get(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def total(self, name: str, **labels: str) -> float:
        """Sum over the samples of ``name`` that carry ``labels`` (and any others)."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= ls)

    def by(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for (n, ls), v in self.samples.items():
            if n == name:
                key = dict(ls).get(label, "")
                out[key] = out.get(key, 0.0) + v
        return out


def scrape(port: int) -> Scrape:
    status, body = http_get(port, "/metrics")
    assert status == 200, body
    return Scrape(body)


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.25,
             alive: Callable[[], bool] | None = None) -> Any:
    """``check()``'s first truthy value, or an AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, AssertionError) as exc:  # endpoint not up yet
            last = exc
        else:
            if last:
                return last
        if alive is not None and not alive():
            raise AssertionError(f"the process ended while waiting for {what}")
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


# --------------------------------------------------------------------------- PromQL

_KEYWORDS = {
    # aggregations, functions and operators used in deploy/ (a name missing here shows up
    # as an unknown metric and fails the test: add it when you use a new function)
    "sum", "min", "max", "avg", "count", "rate", "irate", "increase", "delta", "changes",
    "histogram_quantile", "clamp_min", "clamp_max", "time", "absent", "topk", "bottomk",
    "quantile", "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "vector", "scalar", "abs", "round",
}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression reads.

    >>> sorted(promql_metric_names(
    ...     'sum by (le) (rate(a_bucket{x="y"}[5m])) / clamp_min(b_total, 1e-9) > 0.5'))
    ['a_bucket', 'b_total']
    """
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"(?<![\w:])\d+(?:\.\d+)?(?:e[+-]?\d+)?", " ", s)
    return {n for n in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", s) if n not in _KEYWORDS}


def rule_exprs() -> list[str]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = []

    def walk(panels: list[dict]) -> None:
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", ()) if t.get("expr"))
            walk(p.get("panels", []))

    walk(doc["panels"])
    return exprs


def grafana_to_promql(expr: str) -> str:
    """A dashboard expression with Grafana's interval variables replaced."""
    return re.sub(r"\$__(rate_interval|interval|range)", "5m", expr)


def deploy_metric_names() -> set[str]:
    """Every metric the alert rules and the dashboard read, Prometheus' own excluded."""
    names: set[str] = set()
    for expr in rule_exprs() + [grafana_to_promql(e) for e in dashboard_exprs()]:
        names |= promql_metric_names(expr)
    return names - PROMETHEUS_SERIES
