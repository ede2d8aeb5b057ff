"""`rerank-operator` runs kopf on the handlers module with a liveness endpoint; kopf flags pass through."""

from __future__ import annotations

from rerank_operator.cli import kopf_arguments
from rerank_operator.settings import OperatorSettings


def test_defaults_watch_every_namespace_with_liveness() -> None:
    args = kopf_arguments([], OperatorSettings(liveness_endpoint="http://0.0.0.0:9999/healthz"))
    assert args == [
        "run",
        "-m",
        "rerank_operator.handlers",
        "--liveness=http://0.0.0.0:9999/healthz",
        "--all-namespaces",
    ]


def test_kopf_flags_pass_through() -> None:
    args = kopf_arguments(
        ["--namespace=team-a", "--standalone", "--liveness=http://127.0.0.1:1/h"], OperatorSettings()
    )
    assert args == [
        "run",
        "-m",
        "rerank_operator.handlers",
        "--namespace=team-a",
        "--standalone",
        "--liveness=http://127.0.0.1:1/h",
    ]
