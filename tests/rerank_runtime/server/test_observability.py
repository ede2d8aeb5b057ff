"""What operators of the runtime look at: the chart's Grafana dashboard and JSON log lines.

One real `rerank-serve --log-format json` process serves requests, hot-swaps to version 2 and refuses a
corrupt version 3, so every metric family has samples; then
- every PromQL query of charts/rerank-operator/dashboards/rerank-runtime.json names only metrics that this
  server's /metrics really exposes (as samples or declared families), and the dashboard covers what the
  issue asks for;
- every line the process wrote is one JSON object with time, level, logger and message.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from rerank_runtime.repository import ModelRepository
from tests.rerank_runtime.server.live_server import free_port, wait_until
from tests.rerank_runtime.server.test_hot_swap import publish_copy

DASHBOARD = (
    Path(__file__).resolve().parents[3] / "charts" / "rerank-operator" / "dashboards" / "rerank-runtime.json"
)

# PromQL words that are not metric names: aggregations, functions are recognised by their "(".
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or"}
_KEYWORDS |= {"unless", "inf", "nan"}


def metric_names_in(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (Grafana variables and label matchers removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals (label values, regexes)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        following = text[match.end() :].lstrip()
        if following.startswith("(") or match.group() in _KEYWORDS:
            continue
        names.add(match.group())
    return names


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable."""
    queries = [
        (f"panel {panel['title']!r}", target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", variable["definition"])
            assert inner, variable["definition"]
            queries.append((f"variable {variable['name']!r}", inner.group(1)))
    return queries


def exposed_metric_names(text: str) -> set[str]:
    """Names a Prometheus text exposition offers: its samples, and the series of every declared family.

    A labelled family has no sample until its first event (no request refused yet, say) but is declared by
    its ``# TYPE`` line; a histogram family ``x`` offers ``x_bucket``, ``x_sum`` and ``x_count``.
    """
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
            names.update(name + suffix for suffix in suffixes)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


SERVE_ARGS = ["--poll-interval", "0.3", "--log-format", "json", "--log-level", "info", "--host", "127.0.0.1"]
SERVE_ARGS += ["--port"]


@dataclass
class ServerRun:
    metrics: str
    log_lines: list[str]
    name: str


@pytest.fixture(scope="module")
def server_run(minilm_repository: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> ServerRun:
    """A JSON-logging `rerank-serve` that answered requests, swapped to v2 and refused a corrupt v3."""
    source_root, name = minilm_repository
    root = tmp_path_factory.mktemp("observability") / "repository"
    shutil.copytree(source_root, root)
    repository = ModelRepository(root)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = root.parent / "rerank-serve.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("rerank-serve")),
                "--repository",
                str(root),
                *SERVE_ARGS,
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            model_url = f"{base_url}/v2/models/{name.replace('/', '%2F')}"

            def served() -> int:
                try:
                    response = httpx.get(model_url, timeout=2)
                except httpx.TransportError:
                    assert process.poll() is None, log_path.read_text()
                    return 0
                return int(response.json().get("served_version") or 0) if response.status_code == 200 else 0

            wait_until(lambda: served() == 1, 300, "version 1 served")
            body = {"model": name, "query": "welcome", "documents": ["good morning", "farewell"]}
            for route in ("/v1/rerank", "/v2/rerank", "/rerank"):
                assert httpx.post(base_url + route, json=body, timeout=60).status_code == 200
            assert httpx.post(f"{base_url}/v2/rerank", json={"query": 1}).status_code == 422

            publish_copy(repository, name, "v2")
            wait_until(lambda: served() == 2, 300, "hot swap to version 2")
            broken = publish_copy(repository, name, "v3-corrupt")
            (broken.path / "model.bin").write_bytes(b"not a model")

            def failed() -> bool:
                versions = httpx.get(model_url, timeout=2).json()["versions"]
                return any(v["version"] == 3 and v["state"] == "FAILED" for v in versions)

            wait_until(failed, 300, "version 3 reported as failed")
            assert httpx.post(f"{base_url}/v2/rerank", json=body, timeout=60).status_code == 200
            metrics = httpx.get(f"{base_url}/metrics", timeout=10).text
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    return ServerRun(metrics, log_path.read_text().splitlines(), name)


def test_every_dashboard_query_names_a_metric_the_runtime_exports(server_run: ServerRun) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exposed = exposed_metric_names(server_run.metrics)
    queries = dashboard_queries(dashboard)
    used: set[str] = set()
    for where, expr in queries:
        names = metric_names_in(expr)
        assert names, f"{where}: no metric in {expr!r}"
        assert names <= exposed, f"{where}: {sorted(names - exposed)} not exported by the runtime"
        used |= names
    print(f"\n{len(queries)} dashboard queries, {len(used)} metrics, all exported: {sorted(used)}")
    # What the dashboard must show: requests, latency histogram, queue depth, tokens/s, served version per
    # pod, load failures, swaps.
    required = {
        "rerank_requests_total",
        "rerank_request_duration_seconds_bucket",
        "rerank_queue_depth",
        "rerank_input_tokens_total",
        "rerank_served_version",
        "rerank_model_load_failures_total",
        "rerank_model_swaps_total",
    }
    assert required <= used
    served_by_pod = [
        p for p in dashboard["panels"] if any("rerank_served_version" in t["expr"] for t in p["targets"])
    ]
    assert any("pod" in t["expr"] for p in served_by_pod for t in p["targets"])
    assert any(p["type"] == "heatmap" for p in dashboard["panels"])
    # The scenario really happened, so the panels would not be empty.
    assert f'rerank_model_swaps_total{{model="{server_run.name}"}} 1.0' in server_run.metrics
    assert (
        f'rerank_model_load_failures_total{{model="{server_run.name}",version="3"}} 1.0' in server_run.metrics
    )


def test_exposition_parsing_knows_families_without_samples() -> None:
    text = (
        "# HELP a_total x\n# TYPE a_total counter\n"
        '# HELP h x\n# TYPE h histogram\nh_bucket{le="1.0"} 1.0\nh_sum 0.5\nh_count 1.0\n'
        'g{model="m"} 2.0\n'
    )
    assert exposed_metric_names(text) == {"a_total", "h_bucket", "h_sum", "h_count", "g"}


def test_metric_name_extraction_sees_through_promql_syntax() -> None:
    """The check above is only as good as this parser: it must find names, not label values or functions."""
    expr = (
        'histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{route=~".*rerank", x="b_total"}'
        "[$__rate_interval]))) / ignoring(code) group_left c_total + on(pod) d"
    )
    assert metric_names_in(expr) == {"a_bucket", "c_total", "d"}


def test_json_log_lines(server_run: ServerRun) -> None:
    """Every line is a JSON object a log collector can index; the swap and the failure are in them."""
    assert server_run.log_lines, "rerank-serve logged nothing"
    entries = []
    for line in server_run.log_lines:
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        assert {"time", "level", "logger", "message"} <= entry.keys(), line
        entries.append(entry)
    messages = [(e["level"], e["message"]) for e in entries]
    assert any("serving version 2" in m for _, m in messages), messages
    assert any(level in {"warning", "error"} and "3" in m for level, m in messages), messages
    assert any(e["logger"].startswith("uvicorn") for e in entries), "uvicorn's lines must be JSON too"
