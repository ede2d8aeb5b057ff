"""Turning a Hugging Face cross-encoder folder into the repository's OpenVINO artifacts.

- ``inspect_model``: checks the folder is a supported sequence-classification model (config only, no weights)
  and works out the label convention, the row template of its tokenizer and the usable context length.
- ``convert_model``: optimum-intel export to an IR whose output is the logits, then the weight format
  (fp32, fp16 storage, nncf int8 / int4 weight compression).
- ``convert_tokenizers``: the openvino-tokenizers pair tokenizer (truncation on, made to match Hugging Face's
  longest-first pair truncation exactly) and the single-text tokenizer without special tokens.

The heavy libraries (torch, transformers, optimum, nncf, openvino) are imported inside the functions so
that the CLI answers fast for errors that need none of them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rerank_runtime.exporter.errors import ExportError
from rerank_runtime.repository import TokenizerInfo, WeightFormat

log = logging.getLogger(__name__)

MODEL_XML = "model.xml"
PAIR_TOKENIZER_XML = "tokenizer.xml"
TEXT_TOKENIZER_XML = "text_tokenizer.xml"
CONFIG_JSON = "config.json"

# Encoder families whose tokenizers build BERT or RoBERTa style pair rows and that optimum-intel exports for
# text classification. Others are refused up front rather than producing a model the runtime cannot feed.
SUPPORTED_MODEL_TYPES = ("bert", "xlm-roberta", "roberta", "camembert", "electra", "distilbert")
# RoBERTa-family position ids start after the padding index: max_position_embeddings - (pad + 1) are usable.
_OFFSET_POSITION_TYPES = ("xlm-roberta", "roberta", "camembert")
_POSITIVE_LABEL_NAMES = ("label_1", "1", "relevant", "positive", "true", "yes", "entailment")


@dataclass(frozen=True)
class ModelInspection:
    """What the exporter learned about a source model before converting it."""

    model_type: str
    num_labels: int
    positive_label: int
    max_length: int  # usable context length, in tokens, including special tokens


def _read_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / CONFIG_JSON
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{model_dir} has no config.json; is it a Hugging Face model folder?") from None
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise ExportError(f"{path} is not a JSON object")
    return config


def inspect_model(model_dir: Path, requested_max_length: int | None) -> ModelInspection:
    """Validate a model folder from its config and choose the context length; raises ExportError."""
    config = _read_config(model_dir)
    architectures = config.get("architectures") or []
    model_type = str(config.get("model_type", "unknown"))
    if not any(str(arch).endswith("ForSequenceClassification") for arch in architectures):
        raise ExportError(
            f"not a sequence-classification model: architectures {architectures or '(none)'}; "
            "a cross-encoder reranker has a *ForSequenceClassification head"
        )
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ExportError(
            f"unsupported architecture {model_type!r} ({', '.join(map(str, architectures))}); "
            f"supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )

    id2label = config.get("id2label") or {}
    num_labels = int(config.get("num_labels") or len(id2label) or 2)
    if num_labels == 1:
        positive_label = 0
    elif num_labels == 2:
        positive_label = 1
        for index, label in id2label.items():
            if str(label).lower() in _POSITIVE_LABEL_NAMES:
                positive_label = int(index)
                break
    else:
        raise ExportError(
            f"the model has {num_labels} labels; a reranker has 1 (relevance logit) "
            "or 2 (irrelevant, relevant)"
        )

    positions = int(config.get("max_position_embeddings") or 512)
    if model_type in _OFFSET_POSITION_TYPES:
        positions -= int(config.get("pad_token_id", 1)) + 1
    tokenizer_limit = _tokenizer_model_max_length(model_dir)
    usable = min(positions, tokenizer_limit) if tokenizer_limit else positions
    if requested_max_length is None:
        max_length = usable
    elif requested_max_length < 8:
        raise ExportError(f"--max-length {requested_max_length} is too small; use at least 8 tokens")
    elif requested_max_length > positions:
        raise ExportError(
            f"--max-length {requested_max_length} exceeds the model's usable context of {positions} tokens"
        )
    else:
        max_length = requested_max_length
    return ModelInspection(model_type, num_labels, positive_label, max_length)


def _tokenizer_model_max_length(model_dir: Path) -> int | None:
    try:
        value = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8")).get(
            "model_max_length"
        )
    except (OSError, ValueError, AttributeError):
        return None
    # Tokenizers without a limit store a huge sentinel (int(1e30)).
    if isinstance(value, int | float) and 0 < value < 1_000_000:
        return int(value)
    return None


def load_hf_tokenizer(model_dir: Path) -> Any:
    """The source model's (fast) Hugging Face tokenizer."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot load the tokenizer of {model_dir}: {_first_line(exc)}") from exc


def tokenizer_info(hf_tokenizer: Any, uses_token_type_ids: bool) -> TokenizerInfo:
    """Detect the pair row template ([CLS] q [SEP] d [SEP] or <s> q </s></s> d </s>) from the tokenizer."""
    query = hf_tokenizer("alpha", add_special_tokens=False)["input_ids"]
    document = hf_tokenizer("beta", add_special_tokens=False)["input_ids"]
    pair = hf_tokenizer(["alpha"], ["beta"])["input_ids"][0]
    cls, sep = hf_tokenizer.cls_token_id, hf_tokenizer.sep_token_id
    if cls is None or sep is None:
        raise ExportError("unsupported architecture: the tokenizer has no CLS/SEP tokens for pair rows")
    kind: Literal["bert", "roberta"]
    if pair == [cls, *query, sep, *document, sep]:
        kind = "bert"
    elif pair == [cls, *query, sep, sep, *document, sep]:
        kind = "roberta"
    else:
        raise ExportError(
            "unsupported architecture: the tokenizer's pair template is neither BERT nor RoBERTa style"
        )
    pad = hf_tokenizer.pad_token_id
    return TokenizerInfo(
        kind=kind,
        cls_token_id=int(cls),
        sep_token_id=int(sep),
        pad_token_id=int(pad if pad is not None else 0),
        uses_token_type_ids=uses_token_type_ids,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def load_ov_model(model_dir: Path) -> Any:
    """Export the PyTorch model to an in-memory OpenVINO model (fp32) with optimum-intel."""
    from optimum.intel import OVModelForSequenceClassification

    try:
        exported = OVModelForSequenceClassification.from_pretrained(
            str(model_dir), export=True, compile=False, load_in_8bit=False
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ExportError(f"conversion of {model_dir} failed: {_first_line(exc)}") from exc
    model = exported.model
    outputs = [name for out in model.outputs for name in out.get_names()]
    if "logits" not in outputs:
        raise ExportError(f"the exported model has no logits output (outputs: {outputs})")
    return model


def _group_size(model: Any) -> int:
    """Largest of 128/64/32 dividing every compressible weight's input channels (else per-channel)."""
    from openvino import Type

    sizes = set()
    for node in model.get_ops():
        if node.get_type_name() == "Constant" and node.get_element_type() == Type.f32:
            shape = list(node.get_output_shape(0))
            if len(shape) == 2 and min(shape) >= 32:
                sizes.add(shape[1])
    for group in (128, 64, 32):
        if all(size % group == 0 for size in sizes):
            return group
    return -1


def compress_weights(model: Any, weight_format: WeightFormat) -> Any:
    """Apply the weight format: fp32/fp16 are handled when saving; int8/int4 use nncf weight compression."""
    if weight_format in ("fp32", "fp16"):
        return model
    # nncf resets its logger on import and draws tables/progress bars on stdout, where the CLI's JSON line
    # goes: send them to stderr when progress was asked for (INFO), else nowhere.
    level = log.getEffectiveLevel()
    import nncf

    nncf.set_log_level(max(level, logging.INFO))
    with contextlib.ExitStack() as stack:
        if level <= logging.INFO:
            stack.enter_context(contextlib.redirect_stdout(sys.stderr))
        else:
            nncf.set_log_level(logging.ERROR)
            sink = stack.enter_context(Path(os.devnull).open("w"))
            stack.enter_context(contextlib.redirect_stdout(sink))
            stack.enter_context(contextlib.redirect_stderr(sink))
        if weight_format == "int8":
            # Asymmetric 8-bit weights, activations stay fp32: what optimum-intel and OVMS call int8.
            return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        return nncf.compress_weights(
            model, mode=nncf.CompressWeightsMode.INT4_SYM, group_size=_group_size(model), ratio=1.0
        )


def save_model(model: Any, out_dir: Path, weight_format: WeightFormat) -> None:
    """Write ``model.xml``/``model.bin``; fp16 stores weights as f16 (compute stays f32 on CPU)."""
    import openvino as ov

    ov.save_model(model, str(out_dir / MODEL_XML), compress_to_fp16=weight_format == "fp16")


def convert_model(model_dir: Path, out_dir: Path, weight_format: WeightFormat) -> list[str]:
    """Convert and write the cross-encoder IR; returns the IR's input names."""
    model = load_ov_model(model_dir)
    inputs = [name for port in model.inputs for name in port.get_names()]
    save_model(compress_weights(model, weight_format), out_dir, weight_format)
    return inputs


def _match_hf_longest_first(pair_tokenizer: Any) -> None:
    """Make the pair tokenizer's truncation equal Hugging Face's ``longest_first`` on ties.

    With two equally long inputs that together overflow an odd token budget, Hugging Face keeps
    ``budget // 2`` query tokens and ``budget - budget // 2`` document tokens; openvino-tokenizers' Truncate
    keeps them the other way round. Trimming one query token first in exactly that case turns it into an
    unequal pair, which both implementations truncate identically (query floor, document ceil).
    """
    from openvino import Type
    from openvino import opset15 as opset

    truncates = [node for node in pair_tokenizer.get_ops() if node.get_type_name() == "Truncate"]
    pair_truncates = [node for node in truncates if node.get_input_size() >= 9]
    if len(pair_truncates) != 1:
        raise ExportError("unsupported tokenizer: its pair tokenizer has no single two-input truncation step")
    truncate = pair_truncates[0]
    begins_q, ends_q = truncate.input_value(0), truncate.input_value(1)
    begins_d, ends_d = truncate.input_value(3), truncate.input_value(4)
    budget = truncate.input_value(6)
    one = opset.constant(1, Type.i32)
    two = opset.constant(2, Type.i32)
    len_q = opset.subtract(ends_q, begins_q)
    len_d = opset.subtract(ends_d, begins_d)
    tie = opset.logical_and(
        opset.logical_and(opset.equal(len_q, len_d), opset.greater(opset.add(len_q, len_d), budget)),
        opset.equal(opset.floor_mod(budget, two), one),
    )
    adjusted = opset.subtract(ends_q, opset.convert(tie, Type.i32))
    truncate.input(1).replace_source_output(adjusted.output(0))
    pair_tokenizer.validate_nodes_and_infer_types()


def convert_tokenizers(hf_tokenizer: Any, out_dir: Path, max_length: int) -> None:
    """Write ``tokenizer.xml`` (pair, truncating to ``max_length``) and ``text_tokenizer.xml``."""
    import openvino as ov
    from openvino_tokenizers import convert_tokenizer

    if getattr(hf_tokenizer, "truncation_side", "right") != "right":
        raise ExportError("unsupported tokenizer: truncation_side must be 'right'")
    try:
        pair = convert_tokenizer(hf_tokenizer, number_of_inputs=2, truncation=True, max_length=max_length)
        if len(pair.inputs) != 2:
            raise ExportError("unsupported tokenizer: it cannot be converted to a two-input pair tokenizer")
        _match_hf_longest_first(pair)
        # The runtime assembles rows itself from single-text ids (it chunks long documents), so this one
        # adds no special tokens and never truncates.
        text = convert_tokenizer(hf_tokenizer, add_special_tokens=False, truncation=False)
    except ExportError:
        raise
    except Exception as exc:  # openvino-tokenizers raises a variety of types for unsupported pipelines
        raise ExportError(f"unsupported tokenizer: {_first_line(exc)}") from exc
    ov.save_model(pair, str(out_dir / PAIR_TOKENIZER_XML))
    ov.save_model(text, str(out_dir / TEXT_TOKENIZER_XML))


def smoke_test(out_dir: Path, uses_token_type_ids: bool, num_labels: int) -> None:
    """Compile the written tokenizer and model and score one pair; refuse to publish a broken export."""
    import numpy as np
    import openvino as ov
    import openvino_tokenizers  # noqa: F401  (registers the tokenizer operations)

    core = ov.Core()
    tokenizer = core.compile_model(str(out_dir / PAIR_TOKENIZER_XML), "CPU")
    model = core.compile_model(str(out_dir / MODEL_XML), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    encoded = tokenizer([np.array(["what is a reranker"]), np.array(["it orders documents by relevance"])])
    feed = {
        name: encoded[name]
        for name in ("input_ids", "attention_mask", "token_type_ids")
        if name in {n for port in model.inputs for n in port.get_names()}
    }
    if uses_token_type_ids and "token_type_ids" not in feed:
        raise ExportError("the pair tokenizer produces no token_type_ids but the model needs them")
    logits = model(feed)["logits"]
    if logits.shape != (1, num_labels) or not np.isfinite(logits).all():
        raise ExportError(f"the exported model produced unusable logits {logits!r}")


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def looks_like_repo_id(source: str) -> bool:
    """True for ``owner/name`` Hugging Face repo ids."""
    return bool(_REPO_ID.match(source)) and ".." not in source
