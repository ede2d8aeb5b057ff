"""`rerank-bench` (OVMS-style load client) against the real server: it reports what it measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rerank_runtime.bench.cli import main
from tests.rerank_runtime.server.conftest import API_KEY
from tests.rerank_runtime.server.live_server import LiveServer


@pytest.mark.parametrize("dataset", ["synthetic", "short"])
def test_bench_client_reports_throughput_and_latency(
    f32_server: LiveServer,
    minilm_repository: tuple[Path, str],
    dataset: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """All requests succeed; tokens come from the server's `meta`; the summary has every OVMS figure."""
    args = [
        "--url", f32_server.base_url, "--model", minilm_repository[1], "--api-key", API_KEY,
        "--dataset", dataset, "--synthetic-length", "40", "--batch-size", "4", "--requests", "6",
        "--request-rate", "inf", "--json",
    ]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[1] == "Documents: 24"
    summary = json.loads(out[-1])
    assert summary["success_rate"] == 1.0 and summary["succeeded"] == 6
    assert summary["input_tokens"] > 24
    assert summary["throughput_tokens_per_s"] > 0
    assert summary["latency_median_ms"] <= summary["latency_p99_ms"]


def test_bench_client_counts_failures(f32_server: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    """Requests the server refuses (here: a wrong key) count as failures and the exit code says so."""
    args = [
        "--url",
        f32_server.base_url,
        "--api-key",
        "wrong",
        "--requests",
        "2",
        "--batch-size",
        "2",
        "--json",
    ]
    assert main(args) == 1
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["success_rate"] == 0.0 and summary["errors"] == {"401": 2}
