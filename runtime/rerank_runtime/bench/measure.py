"""Single measurements the benchmark suite combines: raw OpenVINO, the server, anchors, memory, cold start.

Every function measures one thing on this machine and returns plain numbers; `suite.py` decides what runs
when and renders the report. Raw OpenVINO figures use the server's own tokenizer, pair template and padding,
so both run exactly the same rows.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from rerank_runtime.bench.compare import ServerProcess, start_rerank_serve
from rerank_runtime.bench.workload import Workload
from rerank_runtime.engine.chunking import PairTemplate, Row, RowBatch, pad_rows
from rerank_runtime.engine.inference import InferenceRunner, Precision, compile_config
from rerank_runtime.engine.tokenizer import TextTokenizer
from rerank_runtime.repository import ModelRepository, ModelVersion

SMALL_QUERY = "welcome"
SMALL_DOCUMENTS = ["good morning", "farewell"]


def percentile_ms(samples: list[float], q: float) -> float:
    """The q-th percentile (0-100) of `samples` (seconds) in milliseconds."""
    return float(np.percentile(np.asarray(samples) * 1000.0, q)) if samples else float("nan")


def only_version(root: Path, name: str) -> ModelVersion:
    """The servable version of `name` in the repository at `root`."""
    version = ModelRepository(root).resolve(name)
    if version is None:
        raise SystemExit(f"error: {name!r} has no servable version in {root}")
    return version


def template_of(version: ModelVersion) -> PairTemplate:
    """The pair template the server builds for `version`."""
    info = version.manifest.tokenizer
    return PairTemplate(
        info.kind, info.cls_token_id, info.sep_token_id, info.pad_token_id, version.manifest.max_length
    )


def request_rows(
    tokenizer: TextTokenizer, template: PairTemplate, query: str, documents: list[str]
) -> list[Row]:
    """The rows the server builds for one request (default 4096-token cap per document)."""
    ids = tokenizer.encode([query, *documents])
    rows: list[Row] = []
    for doc_ids in ids[1:]:
        rows += template.rows(ids[0], doc_ids, max_tokens=4096)
    return rows


# -- raw OpenVINO ---------------------------------------------------------------------------------------


class RawModel:
    """The IR of one version compiled like the server compiles it, for the raw OpenVINO legs."""

    def __init__(self, version: ModelVersion, precision: Precision) -> None:
        self.version = version
        self.precision = precision
        self.core = ov.Core()
        self.tokenizer = TextTokenizer(self.core, version.path / "text_tokenizer.xml")
        self.template = template_of(version)
        self.bert = self.template.kind == "bert"
        self._runner: InferenceRunner | None = None

    @property
    def runner(self) -> InferenceRunner:
        """The THROUGHPUT-hint model and its infer request pool (compiled on first use)."""
        if self._runner is None:
            self._runner = InferenceRunner(self.core, self.version.path / "model.xml", self.precision)
        return self._runner

    def pad(self, rows: list[Row]) -> RowBatch:
        """Right-padded batch of rows, as the server pads."""
        return pad_rows(rows, self.template.pad_token_id, self.bert)

    def batches(self, workload: Workload, max_batch_tokens: int) -> tuple[list[RowBatch], int]:
        """Length-sorted batches under the padded-token budget, and the real token count."""
        rows = sorted(
            (
                row
                for query, documents in workload.requests
                for row in request_rows(self.tokenizer, self.template, query, documents)
            ),
            key=len,
        )
        groups: list[list[Row]] = [[]]
        for row in rows:  # ascending length: the newest row is the longest of its group
            if groups[-1] and (len(groups[-1]) + 1) * len(row) > max_batch_tokens:
                groups.append([])
            groups[-1].append(row)
        return [self.pad(group) for group in groups], sum(len(row) for row in rows)

    def throughput(self, workload: Workload, max_batch_tokens: int = 8192) -> float:
        """Tokens/s on pre-tokenized, length-sorted batches with every infer request busy (the ceiling)."""
        batches, tokens = self.batches(workload, max_batch_tokens)
        runner = self.runner
        runner.warm_up([batches[0], batches[-1]])
        started = time.perf_counter()
        for batch in batches:
            runner.start(batch, lambda logits, error: None)
        runner.wait_all()
        return tokens / (time.perf_counter() - started)

    def scores(self, query: str, documents: list[str]) -> np.ndarray:
        """Max-over-windows logits per document (for ranking agreement)."""
        ids = self.tokenizer.encode([query, *documents])
        best = np.full(len(documents), -np.inf)
        for index, doc_ids in enumerate(ids[1:]):
            rows = self.template.rows(ids[0], doc_ids, max_tokens=4096)
            logits = self.runner.infer(self.pad(rows))
            best[index] = float(logits[:, 0].max())
        return best

    def small_latencies(self, repeats: int, hint: str = "LATENCY") -> list[float]:
        """Seconds per small request: tokenize, build rows, pad, synchronous infer, copy the logits."""
        compiled = self.core.compile_model(
            str(self.version.path / "model.xml"),
            "CPU",
            compile_config(self.precision, hint="LATENCY" if hint == "LATENCY" else "THROUGHPUT"),
        )
        request = compiled.create_infer_request()
        names = {name for port in compiled.inputs for name in port.get_names()}

        def once() -> None:
            rows = request_rows(self.tokenizer, self.template, SMALL_QUERY, SMALL_DOCUMENTS)
            batch = self.pad(rows)
            inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
            if "token_type_ids" in names:
                inputs["token_type_ids"] = batch.token_type_ids
            request.infer(inputs)
            np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)

        for _ in range(20):
            once()
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            once()
            samples.append(time.perf_counter() - started)

        return samples

    def close(self) -> None:
        """Release the compiled models."""
        if self._runner is not None:
            self._runner.close()
            self._runner = None


# -- the server -------------------------------------------------------------------------------------------


def small_request_latencies(
    port: int, model: str | None, repeats: int, path: str = "/v2/rerank", warm: int = 20
) -> list[float]:
    """Seconds per small request, one at a time over one keep-alive connection (a minimal HTTP client)."""
    body: dict[str, Any] = {"query": SMALL_QUERY, "documents": SMALL_DOCUMENTS}
    if model is not None:
        body["model"] = model
    payload = json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    samples = []
    try:
        for index in range(warm + repeats):
            started = time.perf_counter()
            connection.request("POST", path, payload, headers)
            response = connection.getresponse()
            response.read()
            elapsed = time.perf_counter() - started
            if response.status != 200:
                raise RuntimeError(f"small request answered {response.status}")
            if index >= warm:
                samples.append(elapsed)
    finally:
        connection.close()
    return samples


def post_rerank(port: int, model: str | None, query: str, documents: list[str]) -> tuple[int, dict[str, Any]]:
    """One rerank request; (status, JSON body)."""
    body: dict[str, Any] = {"query": query, "documents": documents}
    if model is not None:
        body["model"] = model
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        connection.request(
            "POST", "/v2/rerank", json.dumps(body).encode(), {"content-type": "application/json"}
        )
        response = connection.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else {}
    except (ConnectionError, OSError):
        return 0, {}
    finally:
        connection.close()


@contextmanager
def running_server(
    repository: Path, model: str, precision: str, extra: list[str] | None = None, ready: bool = True
) -> Iterator[ServerProcess]:
    """`rerank-serve` on a free port for the duration of the block (ready when `ready`, else live)."""
    server = start_rerank_serve(repository, model, precision, extra or [])
    try:
        if ready:
            server.wait_ready(timeout=900)
        else:
            server.ready_path = "/v2/health/live"
            server.wait_ready(timeout=120)
        yield server
    finally:
        server.stop()


# -- memory -----------------------------------------------------------------------------------------------


def _status_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def rss_bytes(pid: int) -> int:
    """Current resident set size of `pid` (VmRSS)."""
    return _status_kib(pid, "VmRSS") * 1024


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM (the kernel's peak RSS) of `pid`; False when the kernel does not allow it."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass
class RssSampler:
    """Samples VmRSS of a process every `interval` seconds on a thread; `peak` also reads VmHWM."""

    pid: int
    interval: float = 0.02
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> RssSampler:
        """Begin sampling."""

        def run() -> None:
            started = time.perf_counter()
            while not self._stop.is_set():
                try:
                    self.samples.append((time.perf_counter() - started, rss_bytes(self.pid)))
                except OSError:
                    return
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """End sampling."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def peak(self) -> int:
        """Highest RSS seen: the larger of the samples and the kernel's VmHWM."""
        sampled = max((rss for _, rss in self.samples), default=0)
        try:
            return max(sampled, _status_kib(self.pid, "VmHWM") * 1024)
        except OSError:
            return sampled


# -- version publishing and waiting -------------------------------------------------------------------------


def publish_copy(source: ModelVersion, root: Path, name: str, number: int) -> float:
    """Copy `source` into `root` as version `number` the way the exporter publishes (a staging folder renamed
    into place); returns perf_counter() at the moment the folder appeared."""
    model_dir = root / name
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / f".staging-bench-{number}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source.path, staging)
    os.sync()
    appeared = time.perf_counter()
    staging.rename(model_dir / str(number))
    return appeared


def wait_for_version(port: int, model: str, number: int, timeout: float, poll: float = 0.02) -> float:
    """Block until a small request is answered 200 by version `number`; perf_counter() of that answer."""
    deadline = time.monotonic() + timeout
    body = json.dumps({"model": model, "query": SMALL_QUERY, "documents": SMALL_DOCUMENTS}).encode()
    while time.monotonic() < deadline:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            connection.request("POST", "/v2/rerank", body, {"content-type": "application/json"})
            response = connection.getresponse()
            response.read()
            if response.status == 200 and response.getheader("x-model-version") == str(number):
                return time.perf_counter()
        except (ConnectionError, OSError):
            pass
        finally:
            connection.close()
        time.sleep(poll)
    raise TimeoutError(f"version {number} of {model} did not answer within {timeout:.0f}s")


def wait_until(check: Callable[[], bool], timeout: float, poll: float = 0.05) -> bool:
    """Poll `check` until true or timeout; whether it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(poll)
    return False


def median(values: list[float]) -> float:
    """Median (nan for no values)."""
    return statistics.median(values) if values else float("nan")
