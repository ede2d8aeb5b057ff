"""`rerank-bench suite` (what `make bench` runs): every speed and memory figure in one run, as ratios.

Sections, each measured back to back on this machine so a ratio compares figures taken minutes apart at most:

1. small-request latency: the server vs raw OpenVINO (LATENCY hint, sync infer, same tokenizer and rows);
2. throughput on 20 x ~500-word and 20 x ~80-word requests for the MiniLM, XLM-R-base and XLM-R-large shapes,
   the server vs raw OpenVINO (THROUGHPUT hint, length-sorted batches, every infer request busy);
3. int8 vs fp32 IR (both at precision `auto`) on the same workload, with the ranking agreement;
4. cold start (a version folder appears -> first 200) without and with OpenVINO's compiled-model cache;
5. peak RSS during a hot swap, against one loaded version;
6. scaling curves (documents per request, document length) as tables and PNG plots;
7. anchors: Hugging Face transformers and sentence-transformers' CrossEncoder (OpenVINO backend) in-process,
   Infinity (torch, and optimum when installed) over HTTP.

`--quick` shrinks every section to a CI smoke run (MiniLM only) that still writes every file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from rerank_runtime.bench import measure, models
from rerank_runtime.bench.client import BenchResult, run_workload
from rerank_runtime.bench.compare import INFINITY_MODEL, ServerProcess, start_infinity, truncated_token_counts
from rerank_runtime.bench.models import MINILM, XLMR_BASE, XLMR_LARGE, ModelShape
from rerank_runtime.bench.workload import Workload, synthetic
from rerank_runtime.engine.inference import Precision

PRECISION: Precision = "auto"
LONG_WORDS = 500
SHORT_WORDS = 80
DOCS_PER_REQUEST = 20


@dataclass(frozen=True)
class Plan:
    """How much of everything one run measures."""

    quick: bool
    shapes: tuple[ModelShape, ...]
    long_requests: dict[str, int]
    short_requests: dict[str, int]
    rounds: int
    small_repeats: int
    small_rounds: int
    int8_shapes: tuple[ModelShape, ...]
    cold_shapes: tuple[ModelShape, ...]
    swap_shape: ModelShape
    scaling_documents: tuple[int, ...]
    scaling_lengths: tuple[int, ...]
    anchor_requests: int

    @staticmethod
    def make(quick: bool) -> Plan:
        """The full plan (<= 20 min on 2 cores once models are built) or the quick CI smoke plan."""
        if quick:
            return Plan(
                quick=True,
                shapes=(MINILM,),
                long_requests={"minilm": 2},
                short_requests={"minilm": 4},
                rounds=1,
                small_repeats=60,
                small_rounds=1,
                int8_shapes=(MINILM,),
                cold_shapes=(MINILM,),
                swap_shape=MINILM,
                scaling_documents=(1, 10, 100),
                scaling_lengths=(50, 500, 2000),
                anchor_requests=1,
            )
        return Plan(
            quick=False,
            shapes=(MINILM, XLMR_BASE, XLMR_LARGE),
            long_requests={"minilm": 16, "xlmr-base": 4, "xlmr-large": 2},
            short_requests={"minilm": 40, "xlmr-base": 12, "xlmr-large": 4},
            rounds=2,
            small_repeats=300,
            small_rounds=3,
            int8_shapes=(MINILM, XLMR_BASE),
            cold_shapes=(MINILM, XLMR_LARGE),
            swap_shape=XLMR_LARGE,
            scaling_documents=(1, 10, 100, 1000),
            scaling_lengths=(50, 200, 500, 1000, 2000, 5000, 10000),
            anchor_requests=4,
        )


@dataclass
class Report:
    """Markdown sections and the raw figures behind them."""

    sections: list[list[str]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    targets: list[tuple[str, str, bool | None]] = field(default_factory=list)

    def target(self, name: str, measured: str, met: bool | None) -> None:
        """Record one issue target with its measured ratio (None: not measured in this run)."""
        self.targets.append((name, measured, met))
        status = "n/a" if met is None else ("met" if met else "NOT met")
        print(f"target: {name}: {measured} -> {status}", file=sys.stderr, flush=True)


def log(message: str) -> None:
    """Progress on stderr (the report goes to files)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _workload(shape: ModelShape, plan: Plan, kind: str) -> Workload:
    if kind == "long":
        return synthetic(plan.long_requests[shape.key], DOCS_PER_REQUEST, LONG_WORDS)
    return synthetic(plan.short_requests[shape.key], DOCS_PER_REQUEST, SHORT_WORDS, seed=1)


def _serve_workload(server: ServerProcess, model: str, workload: Workload) -> BenchResult:
    result = asyncio.run(run_workload(server.url, model, workload, progress=None))
    if result.succeeded != result.requests:
        raise RuntimeError(f"server failed {result.requests - result.succeeded} requests: {result.errors}")
    return result


# -- 1. small requests ----------------------------------------------------------------------------------


def section_small(report: Report, plan: Plan) -> None:
    """Server vs raw OpenVINO on the classic 2-document request, alternating rounds."""
    log("small requests: server vs raw OpenVINO (LATENCY hint)")
    root = models.repository(MINILM, "fp32")
    version = measure.only_version(root, MINILM.served_name)
    raw = measure.RawModel(version, PRECISION)
    rounds: list[dict[str, float]] = []
    with measure.running_server(root, MINILM.served_name, PRECISION) as server:
        for _ in range(plan.small_rounds):
            raw_samples = raw.small_latencies(plan.small_repeats, "LATENCY")
            throughput_samples = raw.small_latencies(plan.small_repeats, "THROUGHPUT")
            server_samples = measure.small_request_latencies(
                server.port, MINILM.served_name, plan.small_repeats
            )
            rounds.append(
                {
                    "raw_p50": measure.percentile_ms(raw_samples, 50),
                    "raw_p99": measure.percentile_ms(raw_samples, 99),
                    "raw_tput_p50": measure.percentile_ms(throughput_samples, 50),
                    "server_p50": measure.percentile_ms(server_samples, 50),
                    "server_p99": measure.percentile_ms(server_samples, 99),
                }
            )
            log(f"  round: {rounds[-1]}")
    raw.close()
    report.figures["small"] = rounds
    # The round with the median p50 difference stands for the run; every round is listed.
    order = sorted(range(len(rounds)), key=lambda i: rounds[i]["server_p50"] - rounds[i]["raw_p50"])
    chosen = rounds[order[(len(order) - 1) // 2]]
    p50_gap = chosen["server_p50"] - chosen["raw_p50"]
    p99_gap = chosen["server_p99"] - chosen["raw_p99"]
    report.target(
        "small request p50 <= raw LATENCY p50 + 1 ms",
        f"server {chosen['server_p50']:.2f} ms vs raw {chosen['raw_p50']:.2f} ms ({p50_gap:+.2f} ms, "
        f"{chosen['server_p50'] / chosen['raw_p50']:.2f}x)",
        p50_gap <= 1.0,
    )
    report.target(
        "small request p99 <= raw LATENCY p99 + 3 ms",
        f"server {chosen['server_p99']:.2f} ms vs raw {chosen['raw_p99']:.2f} ms ({p99_gap:+.2f} ms)",
        p99_gap <= 3.0,
    )
    lines = [
        "## 1. Small requests: server vs raw OpenVINO",
        "",
        f"Query `{measure.SMALL_QUERY}`, documents {measure.SMALL_DOCUMENTS}, {MINILM.description}, fp32 "
        "IR at "
        f"precision `{PRECISION}`, {plan.small_repeats} requests one at a time per leg after 20 warm-up "
        "requests. The server is measured from a minimal HTTP/1.1 client over one keep-alive connection (the "
        "round trip is included); raw OpenVINO is in-process: tokenize with the same tokenizer IR, build the "
        "same rows, pad, synchronous infer on a LATENCY-hint compiled model, copy the logits.",
        "",
        "| round | raw LATENCY p50 ms | raw LATENCY p99 ms | raw THROUGHPUT-hint p50 ms | server p50 ms | "
        "server p99 ms | p50 gap ms | p99 gap ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for number, r in enumerate(rounds, 1):
        lines.append(
            f"| {number} | {r['raw_p50']:.2f} | {r['raw_p99']:.2f} | {r['raw_tput_p50']:.2f} | "
            f"{r['server_p50']:.2f} | {r['server_p99']:.2f} | {r['server_p50'] - r['raw_p50']:+.2f} | "
            f"{r['server_p99'] - r['raw_p99']:+.2f} |"
        )
    lines += [
        "",
        f"The targets use round {order[(len(order) - 1) // 2] + 1} (the median p50 gap). The server runs a "
        "request this small on its latency-compiled model (LATENCY hint, every core on one request) when "
        "nothing else is queued; large requests and concurrent load go through the batcher on the "
        "throughput-compiled model, in the same server configuration as section 2.",
        "",
    ]
    report.sections.append(lines)


# -- 2. throughput ------------------------------------------------------------------------------------------


def throughput_rounds(
    shape: ModelShape, weight_format: str, workloads: dict[str, Workload], rounds: int
) -> tuple[dict[str, list[tuple[float, BenchResult]]], str]:
    """(raw tokens/s, server result) per round and workload, raw and server back to back; and the
    inference precision OpenVINO chose."""
    root = models.repository(shape, weight_format)
    version = measure.only_version(root, shape.served_name)
    raw = measure.RawModel(version, PRECISION)
    results: dict[str, list[tuple[float, BenchResult]]] = {kind: [] for kind in workloads}
    with measure.running_server(root, shape.served_name, PRECISION) as server:
        for kind, workload in workloads.items():
            _serve_workload(server, shape.served_name, Workload("warm", workload.requests[:1]))
            for _ in range(rounds):
                raw_rate = raw.throughput(workload)
                run = _serve_workload(server, shape.served_name, workload)
                results[kind].append((raw_rate, run))
                log(
                    f"  {shape.key} {weight_format} {kind}: raw {raw_rate:,.0f} tokens/s, server "
                    f"{run.tokens_per_second:,.0f} tokens/s ({run.tokens_per_second / raw_rate:.2f})"
                )
    precision = raw.runner.inference_precision
    raw.close()
    return results, precision


def _median_round(pairs: list[tuple[float, BenchResult]]) -> tuple[float, BenchResult, float]:
    ratios = sorted(((run.tokens_per_second / raw, raw, run) for raw, run in pairs), key=lambda t: t[0])
    ratio, raw, run = ratios[(len(ratios) - 1) // 2]
    return raw, run, ratio


def section_throughput(report: Report, plan: Plan) -> dict[str, dict[str, list[tuple[float, BenchResult]]]]:
    """Server vs raw OpenVINO for every shape on the long and the short workload."""
    everything: dict[str, dict[str, list[tuple[float, BenchResult]]]] = {}
    lines = [
        "## 2. Throughput: server vs raw OpenVINO, per model shape",
        "",
        f"Requests of {DOCS_PER_REQUEST} documents of ~{LONG_WORDS} words (long; documents over the context "
        f"are split into windows) and of ~{SHORT_WORDS} words (short), all sent at once; fp32 IR at "
        "precision "
        f"`{PRECISION}`; raw OpenVINO runs the same rows in length-sorted batches of at most 8192 padded "
        "tokens "
        "with every infer request busy. Rounds alternate raw and server; the table shows the round with the "
        "median ratio, and every round's ratio is listed.",
        "",
        "| model | workload | requests | tokens | raw tokens/s | server tokens/s | ratio | ratios per round "
        "| server p50 / p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    worst: list[tuple[str, float]] = []
    for shape in plan.shapes:
        log(f"throughput: {shape.key}")
        workloads = {"long": _workload(shape, plan, "long"), "short": _workload(shape, plan, "short")}
        results, precision = throughput_rounds(shape, "fp32", workloads, plan.rounds)
        everything[shape.key] = results
        for kind in ("long", "short"):
            raw, run, ratio = _median_round(results[kind])
            per_round = ", ".join(f"{r.tokens_per_second / w:.2f}" for w, r in results[kind])
            worst.append((f"{shape.key} {kind}", ratio))
            lines.append(
                f"| {shape.key} | {DOCS_PER_REQUEST} x ~{LONG_WORDS if kind == 'long' else SHORT_WORDS} "
                "words "
                f"| {run.requests} | {run.input_tokens:,} | {raw:,.0f} | {run.tokens_per_second:,.0f} | "
                f"{ratio:.2f} | {per_round} | {run.latency(0.5) * 1000:,.0f} / "
                f"{run.latency(0.99) * 1000:,.0f} |"
            )
        report.figures.setdefault("inference_precision", {})[shape.key] = str(precision)
    report.figures["throughput"] = {
        shape: {
            kind: [{"raw": raw, "server": run.tokens_per_second} for raw, run in pairs]
            for kind, pairs in per_kind.items()
        }
        for shape, per_kind in everything.items()
    }
    for name, ratio in worst:
        report.target(f"throughput >= 0.95x raw ({name})", f"{ratio:.2f}x", ratio >= 0.95)
    lines += [
        "",
        "OpenVINO inference precision at `auto` on this CPU: "
        + ", ".join(f"{k} {v}" for k, v in report.figures["inference_precision"].items())
        + ". The server cannot be faster than the IR on the same shapes: a ratio above 1 shows the noise "
        "of this shared machine. The XLM-R shapes have seeded random weights (speed and memory are those of "
        "the real models; their scores mean nothing).",
        "",
    ]
    report.sections.append(lines)
    return everything


# -- 3. int8 vs fp32 ----------------------------------------------------------------------------------------


def ranking_agreement(fp32: np.ndarray, int8: np.ndarray) -> tuple[float, float]:
    """(share of document pairs ordered alike, top-1 agreement) for one request."""
    n = len(fp32)
    same = total = 0
    for i in range(n):
        for j in range(i + 1, n):
            a, b = fp32[i] - fp32[j], int8[i] - int8[j]
            total += 1
            same += int(np.sign(a) == np.sign(b))
    return (same / total if total else 1.0), float(np.argmax(fp32) == np.argmax(int8))


def agreement_requests() -> list[tuple[str, list[str]]]:
    """Each known query against every known passage (one relevant, the rest not): rankings with real
    differences, unlike word-salad documents whose scores are near ties."""
    from rerank_runtime.exporter.testmodels import _HEAD_TRIPLES

    passages = [text for _, relevant, irrelevant in _HEAD_TRIPLES for text in (relevant, irrelevant)]
    queries = [query for query, _, _ in _HEAD_TRIPLES]
    queries += [
        "capital city population",
        "how fast does light travel",
        "healthy habits for sleep",
        "sorting in python",
    ]
    return [(query, passages) for query in queries]


def section_int8(report: Report, plan: Plan) -> None:
    """int8 IR vs fp32 IR at precision auto: raw tokens/s back to back, server tokens/s, ranking agreement."""
    lines = [
        "## 3. int8 vs fp32 (precision `auto`)",
        "",
        "The int8 IR is the exporter's default (`--weight-format int8`: nncf 8-bit asymmetric weights). Raw "
        "OpenVINO of both IRs runs back to back in each round on the long workload of section 2; the server "
        "figure is the int8 IR served the same way. Ranking agreement compares the two IRs' scores on the "
        "same requests: the share of document pairs ordered alike, and how often the top document is the "
        "same.",
        "",
        "| model | fp32 raw tokens/s | int8 raw tokens/s | int8 / fp32 | ratios per round | int8 server "
        "tokens/s "
        "| server / raw (int8) | pairs ordered alike | same top-1 |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    figures: dict[str, Any] = {}
    for shape in plan.int8_shapes:
        log(f"int8 vs fp32: {shape.key}")
        workload = _workload(shape, plan, "long")
        fp32 = measure.RawModel(
            measure.only_version(models.repository(shape, "fp32"), shape.served_name), PRECISION
        )
        int8_root = models.repository(shape, "int8")
        int8 = measure.RawModel(measure.only_version(int8_root, shape.served_name), PRECISION)
        ratios = []
        pairs = []
        for _ in range(plan.rounds):
            a = fp32.throughput(workload)
            b = int8.throughput(workload)
            pairs.append((a, b))
            ratios.append(b / a)
            log(f"  fp32 {a:,.0f} tokens/s, int8 {b:,.0f} tokens/s ({b / a:.2f})")
        alike, top1 = [], []
        for query, documents in agreement_requests():
            pair_share, top = ranking_agreement(fp32.scores(query, documents), int8.scores(query, documents))
            alike.append(pair_share)
            top1.append(top)
        fp32.close()
        with measure.running_server(int8_root, shape.served_name, PRECISION) as server:
            _serve_workload(server, shape.served_name, Workload("warm", workload.requests[:1]))
            run = _serve_workload(server, shape.served_name, workload)
        int8_raw_again = int8.throughput(workload)
        int8.close()
        order = sorted(range(len(ratios)), key=lambda i: ratios[i])
        a, b = pairs[order[(len(order) - 1) // 2]]
        ratio = b / a
        figures[shape.key] = {
            "rounds": pairs,
            "agreement": float(np.mean(alike)),
            "top1": float(np.mean(top1)),
        }
        lines.append(
            f"| {shape.key} | {a:,.0f} | {b:,.0f} | {ratio:.2f} | {', '.join(f'{r:.2f}' for r in ratios)} | "
            f"{run.tokens_per_second:,.0f} | {run.tokens_per_second / int8_raw_again:.2f} | "
            f"{np.mean(alike):.3f} | {np.mean(top1):.2f} |"
        )
        report.target(
            f"int8 >= 1.4x fp32 throughput ({shape.key})",
            f"{ratio:.2f}x (pairs ordered alike {np.mean(alike):.3f}, same top-1 {np.mean(top1):.2f})",
            ratio >= 1.4,
        )
    report.figures["int8"] = figures
    lines += [
        "",
        f"Agreement is over {len(agreement_requests())} queries, each ranking the same "
        f"{len(agreement_requests()[0][1])} passages (the MiniLM head's fitting set: one relevant passage "
        "per "
        "topic). For the XLM-R shapes (random weights) scores are near ties, so their agreement says little "
        "about a trained model.",
        "",
    ]
    report.sections.append(lines)


# -- 4. cold start ------------------------------------------------------------------------------------------


def _cold_load(shape: ModelShape, source_root: Path, workdir: Path, cache: Path | None, label: str) -> float:
    """Seconds from a version folder appearing in a watched repository to the first 200 from it."""
    root = workdir / f"repo-{shape.key}-{label}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    version = measure.only_version(source_root, shape.served_name)
    extra = ["--poll-interval", "0.1"]
    if cache is not None:
        extra += ["--cache-dir", str(cache)]
    with measure.running_server(root, shape.served_name, PRECISION, extra, ready=False) as server:
        appeared = measure.publish_copy(version, root, shape.served_name, 1)
        answered = measure.wait_for_version(server.port, shape.served_name, 1, timeout=900)
    shutil.rmtree(root, ignore_errors=True)
    return answered - appeared


def _process_restart(shape: ModelShape, source_root: Path, cache: Path) -> float:
    """Seconds from starting a server process (version present, cache warm) to its first 200."""
    started = time.perf_counter()
    with measure.running_server(
        source_root, shape.served_name, PRECISION, ["--cache-dir", str(cache)], ready=False
    ) as server:
        answered = measure.wait_for_version(server.port, shape.served_name, 1, timeout=900)
    return answered - started


def section_cold_start(report: Report, plan: Plan, workdir: Path) -> None:
    """First load vs a load with the compiled-model cache filled, and a whole process restart."""
    lines = [
        "## 4. Cold start and the compiled-model cache",
        "",
        "A running server watches an empty repository (poll every 0.1 s); the version folder is renamed into "
        "place the way the exporter publishes it, and the clock stops at the first 200 from that version. "
        "This includes the checksum verification of every file, compiling the throughput and the latency "
        "model, and the warm-up. `first load` has an empty `--cache-dir`; `cached load` repeats it with a "
        "new server process and the cache the first one filled (what a restarted pod or a second replica "
        "sees when the cache is on the repository volume); `process restart` is a new `rerank-serve` with "
        "the version present and the cache filled, timed from spawning the process (Python start included).",
        "",
        "| model | IR size | first load s | cached load s | first / cached | process restart s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    figures: dict[str, Any] = {}
    for shape in plan.cold_shapes:
        log(f"cold start: {shape.key}")
        source_root = models.repository(shape, "fp32")
        version = measure.only_version(source_root, shape.served_name)
        cache = workdir / f"ov-cache-{shape.key}"
        shutil.rmtree(cache, ignore_errors=True)
        first = _cold_load(shape, source_root, workdir, cache, "first")
        cached = _cold_load(shape, source_root, workdir, cache, "cached")
        restart = _process_restart(shape, source_root, cache)
        size = version.size_bytes()
        figures[shape.key] = {"first_s": first, "cached_s": cached, "restart_s": restart, "bytes": size}
        lines.append(
            f"| {shape.key} | {size / 2**20:,.0f} MiB | {first:.2f} | {cached:.2f} | {first / cached:.2f} | "
            f"{restart:.2f} |"
        )
        report.target(
            f"restart with compiled-model cache >= 3x faster than first load ({shape.key})",
            f"first {first:.2f} s, cached {cached:.2f} s: {first / cached:.2f}x (process restart "
            f"{restart:.2f} s)",
            first / cached >= 3.0,
        )
        shutil.rmtree(cache, ignore_errors=True)
    report.figures["cold_start"] = figures
    lines += [
        "",
        "The cache is OpenVINO's `CACHE_DIR`, set by `rerank-serve --cache-dir` / `RERANK_RUNTIME_CACHE_DIR` "
        "(off by default). Each version gets its own sub-folder named after its model files' checksums, so a "
        "re-used version number never picks up a stale blob.",
        "",
    ]
    report.sections.append(lines)


# -- 5. hot-swap memory ----------------------------------------------------------------------------------


def section_swap_memory(report: Report, plan: Plan, workdir: Path) -> None:
    """Peak RSS of the server while version 2 replaces version 1, under a trickle of requests."""
    shape = plan.swap_shape
    log(f"hot-swap memory: {shape.key}")
    source = measure.only_version(models.repository(shape, "fp32"), shape.served_name)
    root = workdir / f"swap-{shape.key}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    name = shape.served_name
    with measure.running_server(root, name, PRECISION, ["--poll-interval", "0.2"], ready=False) as server:
        pid = server.process.pid
        time.sleep(1.0)
        base = measure.rss_bytes(pid)
        measure.publish_copy(source, root, name, 1)
        measure.wait_for_version(server.port, name, 1, timeout=900)
        for _ in range(3):
            measure.post_rerank(server.port, name, "what is the capital of france", ["paris"] * 20)
        time.sleep(1.0)
        one = measure.rss_bytes(pid)
        reset = measure.reset_peak_rss(pid)
        sampler = measure.RssSampler(pid).start()
        measure.publish_copy(source, root, name, 2)
        # Requests keep arriving during the swap: in-flight ones finish on version 1.
        deadline = time.monotonic() + 900
        swapped = False
        while time.monotonic() < deadline and not swapped:
            measure.post_rerank(server.port, name, "what is the capital of france", ["paris"] * 4)
            swapped = _version_state(server.port, name, 1) == "UNLOADED"
        time.sleep(1.0)
        sampler.stop()
        peak = sampler.peak() if reset else max((rss for _, rss in sampler.samples), default=0)
        after = measure.rss_bytes(pid)
    shutil.rmtree(root, ignore_errors=True)
    version_bytes = one - base
    limit = base + 2 * version_bytes + 300 * 2**20
    mib = 2**20
    report.figures["swap"] = {"base": base, "one": one, "peak": peak, "after": after, "swapped": swapped}
    report.target(
        f"hot-swap peak RSS <= 2x one loaded version + 300 MB ({shape.key})",
        f"peak {peak / mib:,.0f} MiB vs limit {limit / mib:,.0f} MiB (process without a model "
        f"{base / mib:,.0f} MiB + 2 x {version_bytes / mib:,.0f} MiB + 300 MiB): "
        f"{(peak - base) / version_bytes:.2f} versions at peak",
        swapped and peak <= limit,
    )
    report.sections.append(
        [
            "## 5. Hot-swap memory",
            "",
            f"{shape.description}, fp32 IR, precision `{PRECISION}`. The server starts on an empty "
            "repository "
            "(RSS without a model), loads version 1 (RSS with one loaded version, after a few requests), "
            "then "
            "version 2 appears while requests keep coming. RSS (VmRSS) is sampled every 20 ms and the "
            "kernel's "
            "peak (VmHWM, reset just before the swap) is read at the end; the swap is over when version 1 is "
            "reported UNLOADED.",
            "",
            "| | MiB |",
            "|---|---:|",
            f"| process, no model loaded | {base / mib:,.0f} |",
            f"| serving one version | {one / mib:,.0f} |",
            f"| one loaded version (difference) | {version_bytes / mib:,.0f} |",
            f"| peak during the swap | {peak / mib:,.0f} |",
            f"| limit: no-model process + 2 x one version + 300 MB | {limit / mib:,.0f} |",
            f"| after the old version was released | {after / mib:,.0f} |",
            "",
            f"Peak / (2 x one version + 300 MB + no-model process) = {peak / limit:.2f}; swap completed: "
            f"{'yes' if swapped else 'NO'}.",
            "",
        ]
    )


def _version_state(port: int, name: str, number: int) -> str | None:
    import http.client
    import urllib.parse

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", f"/v2/models/{urllib.parse.quote(name, safe='')}")
        response = connection.getresponse()
        body = json.loads(response.read() or b"{}")
    except (OSError, ValueError):
        return None
    finally:
        connection.close()
    for item in body.get("versions", []):
        if int(item.get("version", -1)) == number:
            return str(item.get("state"))
    return None


# -- 6. scaling curves ---------------------------------------------------------------------------------------


def _scaling_point(port: int, model: str, documents: int, words: int, repeats: int) -> dict[str, float]:
    workload = synthetic(1, documents, words, seed=documents * 100_003 + words)
    query, docs = workload.requests[0]
    latencies, tokens = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        status, body = measure.post_rerank(port, model, query, docs)
        if status != 200:
            raise RuntimeError(f"{documents} x {words} words answered {status}")
        latencies.append(time.perf_counter() - started)
        tokens = int(body["meta"]["tokens"]["input_tokens"])
    latency = measure.median(latencies)
    return {
        "documents": documents,
        "words": words,
        "latency_ms": latency * 1000,
        "tokens": tokens,
        "tokens_per_s": tokens / latency,
    }


def section_scaling(report: Report, plan: Plan, output_dir: Path) -> list[str]:
    """Latency and tokens/s against documents per request and against document length (MiniLM)."""
    log("scaling curves")
    root = models.repository(MINILM, "fp32")
    by_documents, by_length = [], []
    with measure.running_server(root, MINILM.served_name, PRECISION) as server:
        measure.post_rerank(server.port, MINILM.served_name, "warm", ["up"] * 20)
        for documents in plan.scaling_documents:
            repeats = 3 if documents * SHORT_WORDS < 20_000 else 1
            by_documents.append(
                _scaling_point(server.port, MINILM.served_name, documents, SHORT_WORDS, repeats)
            )
            log(f"  {by_documents[-1]}")
        for words in plan.scaling_lengths:
            repeats = 3 if words * 10 < 20_000 else 1
            by_length.append(_scaling_point(server.port, MINILM.served_name, 10, words, repeats))
            log(f"  {by_length[-1]}")
    report.figures["scaling"] = {"documents": by_documents, "length": by_length}
    files = _plot_scaling(output_dir, by_documents, by_length)
    lines = [
        "## 6. Scaling curves",
        "",
        f"{MINILM.description}, fp32 IR, precision `{PRECISION}`; one request at a time (median of 3, of 1 "
        "for requests over 20,000 words); tokens are the server's count of real (unpadded) tokens, "
        "windows included.",
        "",
        f"![latency and tokens/s against documents per request]({files[0]})",
        "",
        f"| documents per request (~{SHORT_WORDS} words each) | tokens | latency ms | tokens/s |",
        "|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {p['documents']:,} | {p['tokens']:,} | {p['latency_ms']:,.1f} | {p['tokens_per_s']:,.0f} |"
        for p in by_documents
    ]
    lines += [
        "",
        f"![latency and tokens/s against document length]({files[1]})",
        "",
        "| words per document (10 documents) | tokens | latency ms | tokens/s |",
        "|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {p['words']:,} | {p['tokens']:,} | {p['latency_ms']:,.1f} | {p['tokens_per_s']:,.0f} |"
        for p in by_length
    ]
    lines += [
        "",
        "Documents longer than the 512-token context are split into windows beside the query (from ~500 "
        "words on), so tokens grow a little faster than words there.",
        "",
    ]
    report.sections.append(lines)
    return files


def _plot_scaling(
    output_dir: Path, by_documents: list[dict[str, float]], by_length: list[dict[str, float]]
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for points, key, label, filename in (
        (
            by_documents,
            "documents",
            f"documents per request (~{SHORT_WORDS} words each)",
            "bench-scaling-documents.png",
        ),
        (by_length, "words", "words per document (10 documents per request)", "bench-scaling-length.png"),
    ):
        figure, left = plt.subplots(figsize=(7, 4))
        xs = [p[key] for p in points]
        left.plot(xs, [p["latency_ms"] for p in points], "o-", color="tab:blue", label="latency")
        left.set_xscale("log")
        left.set_yscale("log")
        left.set_xlabel(label)
        left.set_ylabel("latency (ms)", color="tab:blue")
        right = left.twinx()
        right.plot(xs, [p["tokens_per_s"] for p in points], "s--", color="tab:orange", label="tokens/s")
        right.set_ylabel("tokens/s", color="tab:orange")
        right.set_ylim(bottom=0)
        figure.suptitle(f"rerank-serve, {MINILM.key}, one request at a time")
        figure.tight_layout()
        figure.savefig(output_dir / filename, dpi=100)
        plt.close(figure)
        names.append(filename)
    return names


# -- 7. anchors ----------------------------------------------------------------------------------------------


def _median_ms(call: Callable[[], object], repeats: int) -> tuple[float, float]:
    for _ in range(5):
        call()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return measure.percentile_ms(samples, 50), measure.percentile_ms(samples, 99)


def section_anchors(
    report: Report, plan: Plan, server_long: list[tuple[float, BenchResult]], infinity_bin: Path | None
) -> None:
    """Hugging Face, CrossEncoder (OpenVINO backend) and Infinity against the server on the same work."""
    log("anchors")
    hf = models.hf_dir(MINILM)
    root = models.repository(MINILM, "fp32")
    workload = _workload(MINILM, plan, "long")
    anchor_workload = Workload(workload.name, workload.requests[: plan.anchor_requests])
    counts = truncated_token_counts(hf, anchor_workload)
    rows: list[tuple[str, float | None, float | None, float | None, str]] = []

    # The server: small-request latency (again, right before the anchors) and its long-workload tokens/s.
    _, server_run, _ = _median_round(server_long)
    with measure.running_server(root, MINILM.served_name, PRECISION) as server:
        samples = measure.small_request_latencies(server.port, MINILM.served_name, plan.small_repeats)
    server_p50 = measure.percentile_ms(samples, 50)
    rows.append(
        (
            "rerank-serve over HTTP (chunks long documents)",
            server_run.tokens_per_second,
            server_p50,
            measure.percentile_ms(samples, 99),
            "section 2 long workload",
        )
    )

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    tokenizer = AutoTokenizer.from_pretrained(str(hf))
    model = AutoModelForSequenceClassification.from_pretrained(str(hf)).eval()

    def hf_score(query: str, documents: list[str]) -> None:
        batch = tokenizer(
            [query] * len(documents), documents, padding=True, truncation=True, return_tensors="pt"
        )
        with torch.no_grad():
            torch.sigmoid(model(**batch).logits.double())

    p50, p99 = _median_ms(lambda: hf_score(measure.SMALL_QUERY, measure.SMALL_DOCUMENTS), plan.small_repeats)
    started = time.perf_counter()
    for query, documents in anchor_workload.requests:
        hf_score(query, documents)
    rows.append(
        (
            "Hugging Face transformers in-process (torch CPU, truncates)",
            sum(counts) / (time.perf_counter() - started),
            p50,
            p99,
            "",
        )
    )

    try:
        from sentence_transformers import CrossEncoder

        encoder = CrossEncoder(str(hf), device="cpu", backend="openvino")
        pairs = [(measure.SMALL_QUERY, doc) for doc in measure.SMALL_DOCUMENTS]
        p50, p99 = _median_ms(lambda: encoder.predict(pairs), plan.small_repeats)
        started = time.perf_counter()
        for query, documents in anchor_workload.requests:
            encoder.predict([(query, doc) for doc in documents], batch_size=32)
        rows.append(
            (
                'sentence-transformers CrossEncoder, backend="openvino", in-process (truncates)',
                sum(counts) / (time.perf_counter() - started),
                p50,
                p99,
                "",
            )
        )
    except Exception as exc:  # an anchor that cannot run is reported, not fatal
        rows.append(
            (
                'sentence-transformers CrossEncoder, backend="openvino"',
                None,
                None,
                None,
                f"did not run: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}",
            )
        )

    if infinity_bin is not None and infinity_bin.exists():
        for engine in ("torch", "optimum"):
            rows.append(_infinity_row(infinity_bin, hf, engine, anchor_workload, counts, plan))
    else:
        rows.append(
            (
                "Infinity (infinity-emb)",
                None,
                None,
                None,
                "not installed (hack/bench-venvs.sh failed or skipped)",
            )
        )

    lines = [
        "## 7. Anchors: what a user would run instead",
        "",
        f"{MINILM.description}. Throughput: the first {plan.anchor_requests} requests of the long workload "
        f"({DOCS_PER_REQUEST} x ~{LONG_WORDS} words; anchors truncate each pair at 512 tokens, their tokens "
        "are counted with the Hugging Face tokenizer after truncation; Infinity gets them all at once). "
        "Small request: the section 1 request, one at a time (HTTP round trip included for servers).",
        "",
        "| | tokens/s | server / anchor tokens/s | small p50 ms | small p99 ms | anchor / server p50 | "
        "note |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    server_tps = rows[0][1] or 1.0
    for label, tps, p50_ms, p99_ms, note in rows:
        tps_ratio = f"{server_tps / tps:.2f}" if tps else "n/a"
        lat_ratio = f"{p50_ms / server_p50:.2f}" if p50_ms else "n/a"
        lines.append(
            f"| {label} | {f'{tps:,.0f}' if tps else 'n/a'} | {tps_ratio} | "
            f"{f'{p50_ms:.2f}' if p50_ms else 'n/a'} | {f'{p99_ms:.2f}' if p99_ms else 'n/a'} | "
            f"{lat_ratio} | {note} |"
        )
        if label.startswith("rerank-serve") or tps is None or p50_ms is None:
            continue
        report.target(
            f"server beats anchor: {label.split(' (')[0].split(',')[0]}",
            f"throughput {server_tps / tps:.2f}x, small-request p50 {p50_ms / server_p50:.2f}x the server's",
            server_tps > tps and server_p50 < p50_ms,
        )
    lines.append("")
    report.figures["anchors"] = rows
    report.sections.append(lines)


def _infinity_row(
    binary: Path, hf: Path, engine: str, workload: Workload, counts: list[int], plan: Plan
) -> tuple[str, float | None, float | None, float | None, str]:
    label = f"Infinity ({engine} engine) over HTTP (truncates)"
    server = start_infinity(binary, hf, [], engine)
    try:
        server.wait_ready(timeout=300)
        version = str(json.loads(_get(server.port, "/openapi.json"))["info"]["version"])
        asyncio.run(
            run_workload(
                server.url,
                INFINITY_MODEL,
                Workload("warm", workload.requests[:1]),
                path="/rerank",
                progress=None,
                token_counts=counts[:1],
            )
        )
        run = asyncio.run(
            run_workload(
                server.url, INFINITY_MODEL, workload, path="/rerank", progress=None, token_counts=counts
            )
        )
        samples = measure.small_request_latencies(server.port, INFINITY_MODEL, plan.small_repeats, "/rerank")
        return (
            f"Infinity {version} ({engine} engine) over HTTP (truncates)",
            run.tokens_per_second,
            measure.percentile_ms(samples, 50),
            measure.percentile_ms(samples, 99),
            " ".join(shlex.quote(a) for a in server.command).replace(str(Path.home()), "~"),
        )
    except Exception as exc:
        return (
            label,
            None,
            None,
            None,
            f"did not run: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}",
        )
    finally:
        server.stop()


def _get(port: int, path: str) -> bytes:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        return connection.getresponse().read()
    finally:
        connection.close()


# -- the report -------------------------------------------------------------------------------------------


def _versions() -> str:
    names = [
        "openvino",
        "openvino-tokenizers",
        "fastapi",
        "uvicorn",
        "torch",
        "transformers",
        "sentence-transformers",
        "optimum-intel",
        "nncf",
    ]
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def render(report: Report, plan: Plan, command: str, duration: float, extra_markdown: Path | None) -> str:
    """docs/benchmarks.md."""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    lines = [
        "# Benchmarks",
        "",
        "Every figure below comes from ONE run of the command below on one machine, and every target is a "
        "ratio of figures measured in that run, minutes apart at most. Absolute numbers on this shared "
        "machine swing by up to 3x between hours (other jobs share its cores), so only the ratios are "
        "meaningful, and even they carry that run's noise.",
        "",
        "- Run: "
        f"{'QUICK (CI smoke: MiniLM only, tiny workloads; not for conclusions)' if plan.quick else 'full'}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, took {duration / 60:.1f} min",
        f"- Machine: {os.cpu_count()} vCPU ({_cpu_model()}), {mem:.0f} GiB RAM, shared with other jobs; "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}",
        f"- Versions: {_versions()}",
        f"- Models: {'; '.join(s.description for s in plan.shapes)}",
        "",
        "```",
        command,
        "```",
        "",
        "Servers run with their defaults except `RERANK_RUNTIME_LATENCY_BUDGET=3600` (workloads arrive "
        "all at "
        "once and must be queued, not refused) and the poll interval and cache folder the cold-start and "
        "swap "
        "sections set.",
        "",
        "## Targets (issue 11)",
        "",
        "| target | measured in this run | |",
        "|---|---|---|",
    ]
    for name, measured, met in report.targets:
        lines.append(
            f"| {name} | {measured} | {'n/a' if met is None else ('met' if met else '**not met**')} |"
        )
    lines.append("")
    for section in report.sections:
        lines += section
    lines += ["## 8. Operator scale", ""]
    if extra_markdown is not None and extra_markdown.is_file():
        lines += [extra_markdown.read_text(encoding="utf-8").strip(), ""]
    else:
        lines += [
            "**Not measured in this run.** The operator-scale measurement (200 RerankModels on the test "
            "control "
            "plane: reconcile latency of a spec change, operator CPU and API requests/s idle and after a "
            "change) is a separate command that `make bench` runs when it exists in the checkout.",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `rerank-bench suite`."""
    parser = argparse.ArgumentParser(
        prog="rerank-bench suite", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--quick", action="store_true", help="CI smoke: MiniLM only, tiny workloads")
    parser.add_argument(
        "--output-dir", type=Path, default=Path("docs"), help="where benchmarks.md and PNGs go"
    )
    parser.add_argument("--infinity-bin", type=Path, help="infinity_emb executable (its own venv)")
    parser.add_argument("--include-markdown", type=Path, help="a section to append (operator scale)")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        help="section to leave out (small, throughput, int8, cold, swap, scaling, anchors)",
    )
    args = parser.parse_args(argv)
    plan = Plan.make(args.quick)
    # Every workload is sent all at once, like OVMS's benchmark client: the servers started here queue it
    # instead of refusing what would wait longer than the default 10 s latency budget.
    os.environ.setdefault("RERANK_RUNTIME_LATENCY_BUDGET", "3600")
    output_dir: Path = args.output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report = Report()
    command = "rerank-bench suite " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    command = command.replace(str(Path.home()), "~")
    log("building or reusing the benchmark models")
    for shape in plan.shapes:
        models.repository(shape, "fp32")
    for shape in plan.int8_shapes:
        models.repository(shape, "int8")
    report.figures["model_build_s"] = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="rerank-bench-") as tmp:
        workdir = Path(tmp)
        throughput: dict[str, dict[str, list[tuple[float, BenchResult]]]] = {}
        if "small" not in args.skip:
            section_small(report, plan)
        if "throughput" not in args.skip:
            throughput = section_throughput(report, plan)
        if "int8" not in args.skip:
            section_int8(report, plan)
        if "cold" not in args.skip:
            section_cold_start(report, plan, workdir)
        if "swap" not in args.skip:
            section_swap_memory(report, plan, workdir)
        if "scaling" not in args.skip:
            section_scaling(report, plan, output_dir)
        if "anchors" not in args.skip and "minilm" in throughput:
            section_anchors(report, plan, throughput["minilm"]["long"], args.infinity_bin)
    duration = time.perf_counter() - started
    markdown = render(report, plan, command, duration, args.include_markdown)
    (output_dir / "benchmarks.md").write_text(markdown, encoding="utf-8")
    (output_dir / "bench-results.json").write_text(
        json.dumps(
            {
                "quick": plan.quick,
                "duration_s": duration,
                "figures": report.figures,
                "targets": report.targets,
            },
            indent=1,
            default=str,
        )
        + "\n",
        encoding="utf-8",
    )
    log(f"wrote {output_dir / 'benchmarks.md'} in {duration:.0f} s")
    return 0
