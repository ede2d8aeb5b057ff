"""The cross-encoder IR compiled for CPU throughput and driven through OpenVINO's AsyncInferQueue."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import openvino as ov

from rerank_runtime.engine.chunking import RowBatch

Precision = Literal["auto", "f32", "bf16"]
Logits = npt.NDArray[np.float32]
BatchDone = Callable[[Logits | None, BaseException | None], None]


def compile_config(precision: Precision, num_streams: int | None = None) -> dict[str, Any]:
    """OpenVINO CPU properties: throughput hint, and the inference precision unless it is `auto`."""
    config: dict[str, Any] = {"PERFORMANCE_HINT": "THROUGHPUT"}
    if precision != "auto":
        config["INFERENCE_PRECISION_HINT"] = precision
    if num_streams is not None:
        config["NUM_STREAMS"] = num_streams
    return config


class InferenceRunner:
    """A compiled cross-encoder with a pool of async infer requests (one per OpenVINO stream, as advised)."""

    def __init__(
        self, core: ov.Core, xml_path: Path, precision: Precision, num_streams: int | None = None
    ) -> None:
        model = core.read_model(xml_path)
        self.input_names = {port.get_any_name() for port in model.inputs}
        missing = {"input_ids", "attention_mask"} - self.input_names
        if missing:
            raise ValueError(f"model inputs lack {sorted(missing)}")
        self.compiled = core.compile_model(model, "CPU", compile_config(precision, num_streams))
        self.capacity = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.inference_precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        self._queue = ov.AsyncInferQueue(self.compiled, self.capacity)
        self._queue.set_callback(self._on_done)

    @property
    def uses_token_type_ids(self) -> bool:
        """True when the IR takes a token_type_ids input."""
        return "token_type_ids" in self.input_names

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

    def infer(self, batch: RowBatch) -> Logits:
        """Synchronous inference (warm-up, benchmarks)."""
        request = self.compiled.create_infer_request()
        request.infer(self.inputs(batch))
        return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    def warm_up(self, batches: list[RowBatch]) -> None:
        """Run every pooled infer request once per batch shape so the first real request pays no setup."""
        for batch in batches:
            for _ in range(self.capacity):
                self._queue.start_async(self.inputs(batch), None)
            self._queue.wait_all()

    def wait_all(self) -> None:
        """Block until every started job has finished."""
        self._queue.wait_all()

    def close(self) -> None:
        """Wait for running jobs and drop the compiled model so its memory can be released."""
        self._queue.wait_all()
        del self._queue
        del self.compiled
