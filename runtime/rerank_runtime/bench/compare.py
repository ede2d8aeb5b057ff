"""Same-machine comparison in one run: raw OpenVINO on the same IR, this server, Hugging Face in-process.

- raw OpenVINO: the exact rows the server would build (same tokenizer, same windows), pre-tokenized, sorted by
  length into batches and run through an AsyncInferQueue with every infer request busy: the stack's ceiling;
- the server: `rerank-serve` in its own process, the same workload sent by concurrent clients over HTTP;
- one small request (the classic "welcome" example, two short documents) through the server vs Hugging Face
  transformers and sentence-transformers' CrossEncoder called in-process (torch on CPU);
- optionally Infinity (`infinity-emb`, installed on its own, `--infinity-bin`): started on 127.0.0.1 with the
  Hugging Face folder after the server has stopped, sent the same workload and the same small request.

Measurements alternate (raw, server, raw, server, ...) and the best of each is kept, so a burst of load from
other processes on a shared machine does not decide the ratio.
"""

from __future__ import annotations

import asyncio
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openvino as ov

from rerank_runtime.bench.client import BenchResult, run_workload
from rerank_runtime.bench.workload import Workload, synthetic
from rerank_runtime.engine.chunking import PairTemplate, Row, pad_rows
from rerank_runtime.engine.inference import InferenceRunner, Precision
from rerank_runtime.engine.tokenizer import TextTokenizer
from rerank_runtime.repository import ModelRepository, ModelVersion

SMALL_QUERY = "welcome"
SMALL_DOCUMENTS = ["good morning", "farewell"]
INFINITY_MODEL = "reranker"


@dataclass
class Comparison:
    """Every figure of one comparison run."""

    command: str
    model: str
    version: int
    precision: str
    workload: str
    raw_tokens_per_s: list[float] = field(default_factory=list)
    server_runs: list[BenchResult] = field(default_factory=list)
    server_small_ms: float = 0.0
    hf_small_ms: float | None = None
    cross_encoder_small_ms: float | None = None
    hf_tokens_per_s: float | None = None
    inference_precision: str = ""
    max_batch_tokens: int = 8192
    infinity_run: BenchResult | None = None
    infinity_small_ms: float | None = None
    infinity_version: str = ""
    infinity_command: str = ""

    def round_ratios(self) -> list[float]:
        """Server over raw throughput of each round (both measured back to back)."""
        return [
            run.tokens_per_second / raw
            for raw, run in zip(self.raw_tokens_per_s, self.server_runs, strict=True)
        ]

    def median_round(self) -> int:
        """Index of the round with the median ratio: the figure least moved by load from other processes."""
        ratios = self.round_ratios()
        return sorted(range(len(ratios)), key=lambda i: ratios[i])[(len(ratios) - 1) // 2]


def _rows_for(workload: Workload, tokenizer: TextTokenizer, template: PairTemplate) -> list[list[Row]]:
    rows: list[list[Row]] = []
    for query, documents in workload.requests:
        ids = tokenizer.encode([query, *documents])
        request_rows: list[Row] = []
        for doc_ids in ids[1:]:
            request_rows += template.rows(ids[0], doc_ids, max_tokens=4096)
        rows.append(request_rows)
    return rows


def measure_raw_openvino(
    version: ModelVersion, workload: Workload, precision: Precision, max_batch_tokens: int
) -> tuple[float, str]:
    """Tokens/s of the IR alone on pre-tokenized, length-sorted batches with all infer requests busy.

    Batches are packed under the same padded-token budget the server uses, so both run the same shapes.
    """
    core = ov.Core()
    info = version.manifest.tokenizer
    template = PairTemplate(
        info.kind, info.cls_token_id, info.sep_token_id, info.pad_token_id, version.manifest.max_length
    )
    tokenizer = TextTokenizer(core, version.path / "text_tokenizer.xml")
    rows = sorted((row for request in _rows_for(workload, tokenizer, template) for row in request), key=len)
    tokens = sum(len(row) for row in rows)
    bert = info.kind == "bert"
    groups: list[list[Row]] = [[]]
    for row in rows:  # ascending length: the newest row is the longest of its group
        if groups[-1] and (len(groups[-1]) + 1) * len(row) > max_batch_tokens:
            groups.append([])
        groups[-1].append(row)
    batches = [pad_rows(group, info.pad_token_id, bert) for group in groups]
    runner = InferenceRunner(core, version.path / "model.xml", precision)
    runner.warm_up([batches[0], batches[-1]])
    started = time.perf_counter()
    for batch in batches:
        runner.start(batch, lambda logits, error: None)
    runner.wait_all()
    elapsed = time.perf_counter() - started
    precision_used = runner.inference_precision
    runner.close()
    return tokens / elapsed, precision_used


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """A server in a child process on 127.0.0.1, started and stopped around its measurements."""

    def __init__(
        self, name: str, command: list[str], port: int, ready_path: str, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.command = command
        self.ready_path = ready_path
        self.process = subprocess.Popen(command, env=env)

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Block until the server reports ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}{self.ready_path}", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} did not become ready")

    def stop(self) -> None:
        """SIGTERM and wait (the server drains and exits 0)."""
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_rerank_serve(repository: Path, model: str, precision: str, extra: list[str]) -> ServerProcess:
    """`rerank-serve` from this environment on a free loopback port."""
    port = _free_port()
    executable = Path(sys.executable).with_name("rerank-serve")
    command = [
        str(executable), "--repository", str(repository), "--model", model, "--host", "127.0.0.1",
        "--port", str(port), "--precision", precision, "--log-level", "warning", *extra,
    ]  # fmt: skip
    return ServerProcess("rerank-serve", command, port, "/v2/health/ready")


def start_infinity(binary: Path, hf_dir: Path, extra: list[str], engine: str = "torch") -> ServerProcess:
    """`infinity_emb v2` (CPU, `engine` torch or optimum) serving `hf_dir` on a free loopback port, offline,
    without telemetry."""
    port = _free_port()
    command = [
        str(binary), "v2", "--model-id", str(hf_dir), "--served-model-name", INFINITY_MODEL,
        "--host", "127.0.0.1", "--port", str(port), "--url-prefix", "", "--engine", engine,
        "--device", "cpu", "--log-level", "warning", *extra,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
    return ServerProcess("infinity", command, port, "/health", env)


def measure_small_server(url: str, model: str, repeats: int, path: str = "/v2/rerank") -> float:
    """Median latency (ms) of the classic two-document request, one at a time."""
    body = {"model": model, "query": SMALL_QUERY, "documents": SMALL_DOCUMENTS}
    latencies = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(5):
            client.post(path, json=body).raise_for_status()
        for _ in range(repeats):
            started = time.perf_counter()
            client.post(path, json=body).raise_for_status()
            latencies.append(time.perf_counter() - started)
    return statistics.median(latencies) * 1000


def measure_hf(hf_dir: Path, workload: Workload, repeats: int, throughput_requests: int) -> dict[str, float]:
    """Hugging Face transformers and CrossEncoder in-process: small-request median latency and tokens/s."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(hf_dir)).eval()

    def score(query: str, documents: list[str]) -> tuple[Any, int]:
        batch = tokenizer(
            [query] * len(documents), documents, padding=True, truncation=True, return_tensors="pt"
        )
        with torch.no_grad():
            logits = model(**batch).logits
        return torch.sigmoid(logits.double()), int(batch["attention_mask"].sum())

    def median_ms(call: Any) -> float:
        for _ in range(5):
            call()
        latencies = []
        for _ in range(repeats):
            started = time.perf_counter()
            call()
            latencies.append(time.perf_counter() - started)
        return statistics.median(latencies) * 1000

    figures = {"hf_small_ms": median_ms(lambda: score(SMALL_QUERY, SMALL_DOCUMENTS))}
    try:
        from sentence_transformers import CrossEncoder

        encoder = CrossEncoder(str(hf_dir), device="cpu")
        pairs = [(SMALL_QUERY, doc) for doc in SMALL_DOCUMENTS]
        figures["cross_encoder_small_ms"] = median_ms(lambda: encoder.predict(pairs))
    except ImportError:
        pass
    started = time.perf_counter()
    tokens = 0
    for query, documents in workload.requests[:throughput_requests]:
        tokens += score(query, documents)[1]
    figures["hf_tokens_per_s"] = tokens / (time.perf_counter() - started)
    return figures


def truncated_token_counts(hf_dir: Path, workload: Workload) -> list[int]:
    """Tokens per request as a server that truncates each pair at the model's length (Infinity) sees them."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    return [
        sum(len(ids) for ids in tokenizer([query] * len(documents), documents, truncation=True)["input_ids"])
        for query, documents in workload.requests
    ]


def measure_infinity(
    result: Comparison, binary: Path, hf_dir: Path, workload: Workload, small_repeats: int, extra: list[str]
) -> None:
    """Infinity's tokens/s on `workload` and its small-request latency, into `result`."""
    counts = truncated_token_counts(hf_dir, workload)
    server = start_infinity(binary, hf_dir, extra)
    result.infinity_command = " ".join(shlex.quote(arg) for arg in server.command)
    try:
        server.wait_ready()
        result.infinity_version = str(httpx.get(f"{server.url}/openapi.json").json()["info"]["version"])
        warm = workload.requests[:2]
        asyncio.run(
            run_workload(
                server.url, INFINITY_MODEL, Workload(workload.name, warm), path="/rerank", progress=None,
                token_counts=counts[:2],
            )
        )  # fmt: skip
        print("Infinity ...", file=sys.stderr)
        result.infinity_run = asyncio.run(
            run_workload(server.url, INFINITY_MODEL, workload, path="/rerank", token_counts=counts)
        )
        print(f"  Infinity {result.infinity_run.tokens_per_second:,.0f} tokens/s", file=sys.stderr)
        result.infinity_small_ms = measure_small_server(server.url, INFINITY_MODEL, small_repeats, "/rerank")
    finally:
        server.stop()


def run_comparison(
    *,
    repository: Path,
    model: str,
    hf_dir: Path | None,
    precision: Precision,
    requests: int,
    batch_size: int,
    length: int,
    repeats: int,
    small_repeats: int,
    server_args: list[str],
    command: str,
    max_batch_tokens: int = 8192,
    infinity_bin: Path | None = None,
    infinity_args: list[str] | None = None,
) -> Comparison:
    """Measure everything (see the module docstring) and return the figures."""
    if infinity_bin is not None and hf_dir is None:
        raise SystemExit("error: --infinity-bin needs --hf-dir (the folder Infinity serves)")
    version = ModelRepository(repository).resolve(model)
    if version is None:
        raise SystemExit(f"error: {model!r} has no servable version in {repository}")
    workload = synthetic(requests, batch_size, length)
    result = Comparison(
        command=command,
        model=model,
        version=version.number,
        precision=precision,
        workload=f"{requests} requests x {batch_size} docs x {length} words",
        max_batch_tokens=max_batch_tokens,
    )
    server = start_rerank_serve(
        repository, model, precision, ["--max-batch-tokens", str(max_batch_tokens), *server_args]
    )
    try:
        server.wait_ready()
        warm = synthetic(2, batch_size, length, seed=1)
        asyncio.run(run_workload(server.url, model, warm, progress=None))
        for round_number in range(repeats):
            print(f"round {round_number + 1}/{repeats}: raw OpenVINO ...", file=sys.stderr)
            raw, result.inference_precision = measure_raw_openvino(
                version, workload, precision, max_batch_tokens
            )
            result.raw_tokens_per_s.append(raw)
            print(f"  raw OpenVINO {raw:,.0f} tokens/s; server ...", file=sys.stderr)
            run = asyncio.run(run_workload(server.url, model, workload))
            result.server_runs.append(run)
            print(f"  server {run.tokens_per_second:,.0f} tokens/s", file=sys.stderr)
        result.server_small_ms = measure_small_server(server.url, model, small_repeats)
    finally:
        server.stop()
    if infinity_bin is not None and hf_dir is not None:
        measure_infinity(result, infinity_bin, hf_dir, workload, small_repeats, infinity_args or [])
    if hf_dir is not None:
        figures = measure_hf(hf_dir, workload, small_repeats, throughput_requests=min(3, requests))
        result.hf_small_ms = figures["hf_small_ms"]
        result.cross_encoder_small_ms = figures.get("cross_encoder_small_ms")
        result.hf_tokens_per_s = figures["hf_tokens_per_s"]
    return result


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def render_markdown(result: Comparison) -> str:
    """docs/benchmarks.md content for one comparison run."""
    median = result.median_round()
    best = result.server_runs[median]
    raw = result.raw_tokens_per_s[median]
    ratio = best.tokens_per_second / raw
    lines = [
        "# Benchmarks",
        "",
        "All figures come from one run of the command below on one machine; the server and raw OpenVINO",
        "use the same IR and the same rows (same tokenizer, same windows). Ratios matter more than absolute",
        "numbers: the machine is shared and small.",
        "",
        f"- Machine: {os.cpu_count()} vCPU ({_cpu_model()}), Python {platform.python_version()}, "
        f"OpenVINO {ov.get_version().split('-')[0]}",
        f"- Model: `{result.model}` version {result.version}, precision `{result.precision}` "
        f"(OpenVINO inference precision {result.inference_precision}), batches of at most "
        f"{result.max_batch_tokens} padded tokens for both",
        f"- Workload: {result.workload} (synthetic; documents over the context are chunked)",
        "",
        "```",
        result.command,
        "```",
        "",
        "## Throughput: server vs raw OpenVINO (same IR)",
        "",
        "| | tokens/s | ratio to raw |",
        "|---|---:|---:|",
        f"| raw OpenVINO, pre-tokenized length-sorted batches, all infer requests busy | {raw:,.0f} | 1.00 |",
        f"| rerank-serve over HTTP, {best.requests} concurrent requests "
        f"| {best.tokens_per_second:,.0f} | {ratio:.2f} |",
    ]
    if result.hf_tokens_per_s:
        lines.append(
            f"| Hugging Face transformers in-process (torch CPU, truncates instead of chunking) | "
            f"{result.hf_tokens_per_s:,.0f} | {result.hf_tokens_per_s / raw:.2f} |"
        )
    infinity = result.infinity_run
    if infinity is not None:
        lines.append(
            f"| Infinity {result.infinity_version} over HTTP (torch CPU float32, its `--dtype auto` on CPU; "
            "truncates instead of chunking), "
            f"{infinity.requests} concurrent requests | {infinity.tokens_per_second:,.0f} | "
            f"{infinity.tokens_per_second / raw:.2f} |"
        )
    summary = best.summary()
    lines += [
        "",
        f"Server run: {best.succeeded}/{best.requests} succeeded, {best.input_tokens:,} input tokens in "
        f"{best.duration:.1f} s; latency mean {summary['latency_mean_ms']:.0f} ms, median "
        f"{summary['latency_median_ms']:.0f} ms, p99 {summary['latency_p99_ms']:.0f} ms.",
        "Rounds (raw tokens/s, server tokens/s, ratio): "
        + "; ".join(
            f"{round_raw:,.0f}, {run.tokens_per_second:,.0f}, {run.tokens_per_second / round_raw:.2f}"
            for round_raw, run in zip(result.raw_tokens_per_s, result.server_runs, strict=True)
        )
        + f". The table shows round {median + 1}, the round with the median ratio: raw and server run "
        "back to back in each round because other processes share this machine's cores. The server cannot be",
        "faster than the IR on the same shapes: ratios above 1 show the size of that noise.",
        "",
    ]
    if infinity is not None:
        lines += [
            "Infinity run (once, after the server rounds, while nothing else of this run was running): "
            f"{infinity.succeeded}/{infinity.requests} succeeded, {infinity.input_tokens:,} input tokens "
            "(the pairs truncated at the model's length, counted with its tokenizer: Infinity's `usage` "
            f"counts characters) in {infinity.duration:.1f} s; latency median "
            f"{infinity.latency(0.5) * 1000:.0f} ms. rerank-serve vs Infinity on the same "
            f"{infinity.requests} requests: "
            f"{best.tokens_per_second / infinity.tokens_per_second:.2f}x Infinity's tokens/s; Infinity took "
            f"{infinity.duration / best.duration:.2f}x the server's wall time. Infinity was started as:",
            "",
            "```",
            result.infinity_command,
            "```",
            "",
        ]
    lines += [
        "## Small request latency (query `welcome`, 2 short documents, one request at a time)",
        "",
        "| | median ms | ratio to Hugging Face |",
        "|---|---:|---:|",
    ]
    hf = result.hf_small_ms
    server_ratio = f"{result.server_small_ms / hf:.2f}" if hf else "n/a"
    lines.append(
        "| rerank-serve over HTTP (includes the HTTP round trip) "
        f"| {result.server_small_ms:.1f} | {server_ratio} |"
    )
    if hf:
        lines.append(f"| Hugging Face transformers in-process | {hf:.1f} | 1.00 |")
    if hf and result.cross_encoder_small_ms:
        lines.append(
            f"| sentence-transformers CrossEncoder in-process | {result.cross_encoder_small_ms:.1f} | "
            f"{result.cross_encoder_small_ms / hf:.2f} |"
        )
    if result.infinity_small_ms is not None:
        infinity_ratio = f"{result.infinity_small_ms / hf:.2f}" if hf else "n/a"
        lines.append(
            f"| Infinity {result.infinity_version} over HTTP (includes the HTTP round trip) "
            f"| {result.infinity_small_ms:.1f} | {infinity_ratio} |"
        )
    lines.append("")
    if result.infinity_small_ms is None:
        lines += ["Infinity (infinity-emb) was not measured in this run (no `--infinity-bin`).", ""]
    else:
        lines += [
            f"rerank-serve answers this request in {result.server_small_ms / result.infinity_small_ms:.2f}x "
            "Infinity's median time.",
            "",
        ]
    return "\n".join(lines)


def command_line(argv: list[str]) -> str:
    """The command as typed, for the report."""
    return "rerank-bench " + " ".join(shlex.quote(arg) for arg in argv)
