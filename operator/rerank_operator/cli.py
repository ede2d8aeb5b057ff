"""`rerank-operator`: runs `kopf run` of the handlers module with a liveness endpoint."""

from __future__ import annotations

import sys

import kopf.cli

from rerank_operator.settings import OperatorSettings

HANDLERS_MODULE = "rerank_operator.handlers"


def kopf_arguments(argv: list[str], settings: OperatorSettings) -> list[str]:
    """`kopf run` arguments: handlers module, liveness endpoint, all namespaces unless told otherwise.

    Any kopf flag (--namespace, --all-namespaces, --standalone, --verbose, --liveness, ...) passes through.
    """
    args = ["run", "-m", HANDLERS_MODULE]
    if not any(a == "--liveness" or a.startswith("--liveness=") for a in argv):
        args.append(f"--liveness={settings.liveness_endpoint}")
    scoped = any(a in ("-n", "-A", "--all-namespaces") or a.startswith(("--namespace", "-n=")) for a in argv)
    if not scoped:
        args.append("--all-namespaces")
    return [*args, *argv]


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `rerank-operator` console script."""
    arguments = kopf_arguments(sys.argv[1:] if argv is None else argv, OperatorSettings())
    kopf.cli.main(args=arguments, prog_name="rerank-operator")
