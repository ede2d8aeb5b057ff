"""The exported single-input text tokenizer (no special tokens, no truncation) run on OpenVINO.

Tokenization runs on worker threads, never on the event loop; OpenVINO infer requests are not safe to share
between threads, so every thread gets its own.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import openvino_tokenizers  # noqa: F401  # registers the tokenizer operations with OpenVINO

from rerank_runtime.engine.chunking import TokenIds

# Texts are tokenized in groups of similar length so one very long text does not pad a whole group.
_GROUP_CHARS = 200_000
_GROUP_TEXTS = 64


class TextTokenizer:
    """Turns texts into token id arrays (without special tokens) with an openvino-tokenizers model."""

    def __init__(self, core: ov.Core, xml_path: Path, cache_dir: Path | None = None) -> None:
        config = {"CACHE_DIR": str(cache_dir)} if cache_dir is not None else {}
        self._compiled = core.compile_model(str(xml_path), "CPU", config)
        self._local = threading.local()

    def _request(self) -> Any:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._compiled.create_infer_request()
            self._local.request = request
        return request

    def _encode_group(self, texts: list[str]) -> list[TokenIds]:
        outputs = self._request().infer([np.array(texts)])
        ids = outputs["input_ids"]
        mask = outputs["attention_mask"].astype(bool)
        # Padding side depends on the source tokenizer; the mask says which positions are real tokens.
        return [np.ascontiguousarray(ids[i][mask[i]], dtype=np.int64) for i in range(len(texts))]

    def encode(self, texts: Sequence[str]) -> list[TokenIds]:
        """Token ids of each text, in input order."""
        # Empty texts have no tokens; a group of only empty strings also trips the tokenizer model.
        order = sorted((i for i in range(len(texts)) if texts[i]), key=lambda i: len(texts[i]))
        result: list[TokenIds] = [np.empty(0, dtype=np.int64)] * len(texts)
        group: list[int] = []
        group_chars = 0
        for index in order:
            group.append(index)
            group_chars += len(texts[index])
            if len(group) >= _GROUP_TEXTS or group_chars >= _GROUP_CHARS:
                self._store(texts, group, result)
                group, group_chars = [], 0
        if group:
            self._store(texts, group, result)
        return result

    def _store(self, texts: Sequence[str], group: list[int], result: list[TokenIds]) -> None:
        for index, ids in zip(group, self._encode_group([texts[i] for i in group]), strict=True):
            result[index] = ids
