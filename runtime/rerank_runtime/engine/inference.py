"""The cross-encoder IR compiled for CPU and driven through OpenVINO's AsyncInferQueue.

Two compilations of the same IR serve two kinds of work:

- the throughput model (THROUGHPUT hint: several streams, each on its own cores) runs the batcher's batches,
  one per infer request, so all cores work on large requests;
- the latency model (LATENCY hint: one stream using every core) runs a small request alone when the
  throughput model is idle. Under the throughput hint a single small batch runs on one stream, i.e. on a
  fraction of the cores, which roughly doubles its latency on a 2-core machine.

OpenVINO's model cache (`CACHE_DIR`) stores both compiled blobs, so a restart imports them instead of
compiling again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import openvino as ov

from rerank_runtime.engine.chunking import RowBatch

Precision = Literal["auto", "f32", "bf16"]
Hint = Literal["THROUGHPUT", "LATENCY"]
Logits = npt.NDArray[np.float32]
BatchDone = Callable[[Logits | None, BaseException | None], None]


def compile_config(
    precision: Precision,
    num_streams: int | None = None,
    *,
    hint: Hint = "THROUGHPUT",
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """OpenVINO CPU properties: the performance hint, the precision unless `auto`, and the model cache."""
    config: dict[str, Any] = {"PERFORMANCE_HINT": hint}
    if precision != "auto":
        config["INFERENCE_PRECISION_HINT"] = precision
    if num_streams is not None and hint == "THROUGHPUT":
        config["NUM_STREAMS"] = num_streams
    if cache_dir is not None:
        config["CACHE_DIR"] = str(cache_dir)
    return config


class InferenceRunner:
    """A compiled cross-encoder with a pool of async infer requests (one per OpenVINO stream, as advised),
    and optionally a second, latency-compiled model with one infer request for small requests."""

    def __init__(
        self,
        core: ov.Core,
        xml_path: Path,
        precision: Precision,
        num_streams: int | None = None,
        *,
        latency_model: bool = False,
        cache_dir: Path | None = None,
    ) -> None:
        # Compiling from the path (not a read ov.Model) lets a cache hit skip reading the IR altogether.
        self.compiled = core.compile_model(
            str(xml_path), "CPU", compile_config(precision, num_streams, cache_dir=cache_dir)
        )
        self.input_names = {name for port in self.compiled.inputs for name in port.get_names()}
        missing = {"input_ids", "attention_mask"} - self.input_names
        if missing:
            raise ValueError(f"model inputs lack {sorted(missing)}")
        self.capacity = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.inference_precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        self._queue = ov.AsyncInferQueue(self.compiled, self.capacity)
        self._queue.set_callback(self._on_done)
        self.latency_compiled: ov.CompiledModel | None = None
        self._latency_queue: ov.AsyncInferQueue | None = None
        if latency_model:
            self.latency_compiled = core.compile_model(
                str(xml_path), "CPU", compile_config(precision, hint="LATENCY", cache_dir=cache_dir)
            )
            self._latency_queue = ov.AsyncInferQueue(self.latency_compiled, 1)
            self._latency_queue.set_callback(self._on_done)

    @property
    def uses_token_type_ids(self) -> bool:
        """True when the IR takes a token_type_ids input."""
        return "token_type_ids" in self.input_names

    @property
    def has_latency_model(self) -> bool:
        """True when a latency-compiled model is available for small requests."""
        return self._latency_queue is not None

    def inputs(self, batch: RowBatch) -> dict[str, npt.NDArray[np.int64]]:
        """The input tensors this IR declares, taken from a padded batch."""
        tensors = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if self.uses_token_type_ids:
            tensors["token_type_ids"] = batch.token_type_ids
        return tensors

    @staticmethod
    def _on_done(request: Any, userdata: BatchDone | None) -> None:
        if userdata is None:
            return
        try:
            # The output buffer belongs to the infer request and is reused by its next job: copy it.
            logits = np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)
        except Exception as exc:
            userdata(None, exc)
            return
        userdata(logits, None)

    def start(self, batch: RowBatch, done: BatchDone) -> None:
        """Start inference of `batch` on an idle infer request; `done` is called from an OpenVINO thread."""
        self._queue.start_async(self.inputs(batch), done)

    def try_start_latency(self, batch: RowBatch, done: BatchDone) -> bool:
        """Start `batch` on the latency model if it is idle; False (nothing started) when busy or absent."""
        queue = self._latency_queue
        if queue is None or not queue.is_ready():
            return False
        queue.start_async(self.inputs(batch), done)
        return True

    def infer(self, batch: RowBatch) -> Logits:
        """Synchronous inference (warm-up, benchmarks)."""
        request = self.compiled.create_infer_request()
        request.infer(self.inputs(batch))
        return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    def warm_up(self, batches: list[RowBatch], *, latency_model: bool = True) -> None:
        """Run every pooled infer request (and the latency model unless told not to) once per batch."""
        for batch in batches:
            for _ in range(self.capacity):
                self._queue.start_async(self.inputs(batch), None)
            if latency_model and self._latency_queue is not None:
                self._latency_queue.start_async(self.inputs(batch), None)
                self._latency_queue.wait_all()
            self._queue.wait_all()

    def wait_all(self) -> None:
        """Block until every started job has finished."""
        self._queue.wait_all()
        if self._latency_queue is not None:
            self._latency_queue.wait_all()

    def close(self) -> None:
        """Wait for running jobs and drop the compiled models so their memory can be released."""
        self.wait_all()
        del self._queue
        del self.compiled
        self._latency_queue = None
        self.latency_compiled = None
