"""Benchmark workloads: synthetic long documents (OVMS's `--dataset synthetic`) and short documents."""

from __future__ import annotations

import random
from dataclasses import dataclass

# Common English words: each is one WordPiece / SentencePiece token in the usual vocabularies, so a document
# of N words is close to N tokens.
_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "his",
    "her",
    "an",
    "are",
    "this",
    "which",
    "be",
    "or",
    "have",
    "not",
    "had",
    "but",
    "one",
    "all",
    "were",
    "they",
    "their",
    "when",
    "who",
    "will",
    "more",
    "no",
    "if",
    "out",
    "so",
    "said",
    "what",
    "up",
    "its",
    "about",
    "into",
    "than",
    "them",
    "can",
    "only",
    "other",
    "new",
    "some",
    "could",
    "time",
    "these",
    "two",
    "may",
    "then",
    "do",
    "first",
    "any",
    "my",
    "now",
    "such",
    "like",
    "our",
    "over",
    "man",
    "me",
    "even",
    "most",
    "made",
    "after",
    "also",
    "did",
    "many",
    "before",
    "must",
    "through",
    "back",
    "years",
    "where",
    "much",
    "your",
    "way",
    "well",
    "down",
    "should",
    "because",
    "each",
    "just",
    "those",
    "people",
    "how",
    "too",
    "little",
    "state",
    "good",
    "very",
    "make",
    "world",
    "still",
    "own",
    "see",
    "men",
    "work",
    "long",
    "get",
    "here",
    "between",
    "both",
    "life",
    "being",
    "under",
    "never",
    "day",
    "same",
    "another",
    "know",
    "while",
    "last",
    "might",
    "us",
    "great",
    "old",
    "year",
    "off",
    "come",
    "since",
    "against",
    "go",
    "came",
    "right",
    "used",
    "take",
    "three",
    "city",
    "river",
    "model",
    "search",
    "query",
    "answer",
    "paris",
    "france",
    "engine",
]

QUERIES = (
    "what is the capital of france",
    "how do search engines rank documents",
    "where does the river meet the city",
    "which model answers the query best",
)


@dataclass(frozen=True)
class Workload:
    """Requests to send: each a query and its documents."""

    name: str
    requests: list[tuple[str, list[str]]]

    @property
    def documents(self) -> int:
        """Documents over all requests."""
        return sum(len(docs) for _, docs in self.requests)


def synthetic(requests: int, batch_size: int, length: int, seed: int = 0) -> Workload:
    """`requests` requests of `batch_size` documents of `length` words each."""
    rng = random.Random(seed)
    return Workload(
        f"synthetic-{length}",
        [
            (
                QUERIES[i % len(QUERIES)],
                [" ".join(rng.choices(_WORDS, k=length)) for _ in range(batch_size)],
            )
            for i in range(requests)
        ],
    )


def short_documents(requests: int, batch_size: int, seed: int = 0) -> Workload:
    """`requests` requests of `batch_size` sentence-long documents (8-24 words)."""
    rng = random.Random(seed)
    return Workload(
        "short",
        [
            (
                QUERIES[i % len(QUERIES)],
                [" ".join(rng.choices(_WORDS, k=rng.randint(8, 24))) for _ in range(batch_size)],
            )
            for i in range(requests)
        ],
    )
