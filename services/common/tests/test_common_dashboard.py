"""The Grafana dashboard (k8s/observability/grafana-dashboard.json) queries only metrics that the
platform exports (`lomas_common.metrics.PROMETHEUS_NAMES`, a scrape of which the telemetry tests
check), and shows each of them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lomas_common.metrics import PROMETHEUS_NAMES

DASHBOARD = Path(__file__).resolve().parents[3] / "k8s" / "observability" / "grafana-dashboard.json"
# PromQL's functions, aggregations and keywords that the dashboard's expressions may use.
PROMQL_WORDS = frozenset(
    {
        "sum", "max", "min", "avg", "count", "topk", "rate", "irate", "increase",
        "histogram_quantile", "clamp_min", "by", "without", "on", "ignoring", "and", "or",
        "unless", "bool", "offset",
    }
)  # fmt: skip
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: the words left once strings, label
    matchers, ranges, grouping labels and Grafana variables are taken out, PromQL's own words
    set aside."""
    for pattern in (
        r'"[^"]*"',
        r"\{[^}]*\}",
        r"\[[^\]]*\]",
        r"\b(by|without|on|ignoring)\s*\([^)]*\)",
        r"\$\w+",
    ):
        expr = re.sub(pattern, " ", expr)
    return set(re.findall(r"\b[A-Za-z_:][A-Za-z0-9_:]*", expr)) - PROMQL_WORDS


def exported_family(name: str) -> str | None:
    """The exported metric `name` belongs to (a histogram's series belong to the histogram)."""
    if name in PROMETHEUS_NAMES:
        return name
    for suffix in HISTOGRAM_SERIES:
        family = name.removesuffix(suffix)
        if family != name and family in PROMETHEUS_NAMES and family.endswith("_seconds"):
            return family
    return None


def expressions() -> list[str]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_parser_finds_metric_names() -> None:
    expr = 'histogram_quantile(0.95, sum by (le, method) (rate(x_seconds_bucket{code!="OK"}[5m])))'
    assert metric_names(expr) == {"x_seconds_bucket"}
    assert metric_names("max by (queue) (up) / on (queue) other_total") == {"up", "other_total"}
    assert exported_family("lomas_rpc_server_duration_seconds_bucket") is not None
    assert exported_family("lomas_queries_total_count") is None
    assert exported_family("process_cpu_seconds_total") is None


def test_the_dashboard_uses_only_exported_metrics_and_all_of_them() -> None:
    used: set[str] = set()
    for expr in expressions():
        names = metric_names(expr)
        assert names, expr
        unknown = {name for name in names if exported_family(name) is None}
        assert not unknown, f"{expr}: not exported by the platform: {sorted(unknown)}"
        used |= {family for name in names if (family := exported_family(name))}
    assert used == PROMETHEUS_NAMES
