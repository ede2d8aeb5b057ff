"""`rerank-bench`: load a rerank endpoint like OVMS's benchmark client, or run the same-machine comparison.

    rerank-bench --url http://127.0.0.1:8000 --model NAME --dataset synthetic --synthetic-length 500 \\
        --batch-size 20 --requests 50 --request-rate inf
    rerank-bench compare --repository DIR --model NAME --hf-dir DIR [--infinity-bin PATH] \\
        [--write-markdown docs/benchmarks.md]
    rerank-bench suite [--quick] [--output-dir docs] [--infinity-bin PATH]   (what `make bench` runs)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from rerank_runtime.bench.client import run_workload
from rerank_runtime.bench.compare import command_line, render_markdown, run_comparison
from rerank_runtime.bench.workload import short_documents, synthetic


def _load_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rerank-bench", description="Load a rerank endpoint and measure it."
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    parser.add_argument("--model", help="served model name (optional when the server serves one)")
    parser.add_argument("--api-key", help="sent as 'Authorization: Bearer'")
    parser.add_argument("--endpoint", default="/v2/rerank", help="rerank path (e.g. /v3/rerank)")
    parser.add_argument("--dataset", choices=["synthetic", "short"], default="synthetic")
    parser.add_argument("--synthetic-length", type=int, default=500, help="words (~tokens) per document")
    parser.add_argument("--batch-size", type=int, default=20, help="documents per request")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument(
        "--request-rate", type=float, default=float("inf"), help="requests/s (inf: all at once)"
    )
    parser.add_argument("--max-concurrency", type=int, help="requests in flight at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


def _compare_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rerank-bench compare",
        description="Raw OpenVINO vs rerank-serve vs Hugging Face in-process (and Infinity), in one run on "
        "this machine.",
    )
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--hf-dir", type=Path, help="the Hugging Face folder the IR was exported from")
    parser.add_argument("--precision", choices=["auto", "f32", "bf16"], default="auto")
    parser.add_argument("--synthetic-length", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2, help="alternating raw/server rounds (best kept)")
    parser.add_argument("--small-repeats", type=int, default=50)
    parser.add_argument("--max-batch-tokens", type=int, default=8192, help="padded tokens per batch (both)")
    parser.add_argument("--server-arg", action="append", default=[], help="extra rerank-serve argument")
    parser.add_argument(
        "--infinity-bin",
        type=Path,
        help="infinity_emb executable (its own venv): also measure Infinity serving --hf-dir",
    )
    parser.add_argument("--infinity-arg", action="append", default=[], help="extra infinity_emb v2 argument")
    parser.add_argument("--write-markdown", type=Path, help="write the report (e.g. docs/benchmarks.md)")
    return parser


def _print_load_report(args: argparse.Namespace) -> int:
    if args.dataset == "synthetic":
        workload = synthetic(args.requests, args.batch_size, args.synthetic_length, args.seed)
    else:
        workload = short_documents(args.requests, args.batch_size, args.seed)
    print(f"Dataset: {workload.name}, {args.requests} requests x {args.batch_size} documents")
    print(f"Documents: {workload.documents}")
    result = asyncio.run(
        run_workload(
            args.url,
            args.model,
            workload,
            request_rate=args.request_rate,
            max_concurrency=args.max_concurrency,
            api_key=args.api_key,
            path=args.endpoint,
            seed=args.seed,
        )
    )
    summary = result.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"Tokens: {result.input_tokens}")
        print(f"Success rate: {result.success_rate:.1%} ({result.succeeded}/{result.requests})")
        if result.errors:
            print(f"Errors: {result.errors}")
        print(f"Duration: {result.duration:.2f} s")
        print(
            f"Throughput: {result.tokens_per_second:,.0f} tokens/s, "
            f"{summary['throughput_requests_per_s']:.2f} req/s"
        )
        if result.latencies:
            print(
                f"Latency: mean {summary['latency_mean_ms']:.0f} ms, "
                f"median {summary['latency_median_ms']:.0f} ms, "
                f"p99 {summary['latency_p99_ms']:.0f} ms"
            )
    return 0 if result.succeeded == result.requests else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of `rerank-bench`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "suite":
        from rerank_runtime.bench import suite

        return suite.main(argv[1:])
    if argv and argv[0] == "compare":
        args = _compare_parser().parse_args(argv[1:])
        result = run_comparison(
            repository=args.repository,
            model=args.model,
            hf_dir=args.hf_dir,
            precision=args.precision,
            requests=args.requests,
            batch_size=args.batch_size,
            length=args.synthetic_length,
            repeats=args.repeats,
            small_repeats=args.small_repeats,
            server_args=args.server_arg,
            max_batch_tokens=args.max_batch_tokens,
            infinity_bin=args.infinity_bin,
            infinity_args=args.infinity_arg,
            command=command_line(argv),
        )
        report = render_markdown(result)
        print(report)
        if args.write_markdown is not None:
            args.write_markdown.write_text(report, encoding="utf-8")
        return 0
    return _print_load_report(_load_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
