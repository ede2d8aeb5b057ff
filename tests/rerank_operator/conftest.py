"""Shared data for the operator's unit tests."""

from __future__ import annotations

from typing import Any

import pytest

from rerank_operator.settings import OperatorSettings
from rerank_operator.spec import ModelIdentity, RerankModelSpec


@pytest.fixture
def model() -> ModelIdentity:
    """A RerankModel's identity at generation 3."""
    return ModelIdentity(name="minilm", namespace="team-a", uid="0b5c7b1e-uid", generation=3)


@pytest.fixture
def settings() -> OperatorSettings:
    """Operator settings with their defaults (environment ignored)."""
    return OperatorSettings(_env_file=None)  # type: ignore[call-arg]


def make_spec(**overrides: Any) -> RerankModelSpec:
    """A spec for `test-org/minilm-reranker` with top-level fields replaced by `overrides`."""
    raw: dict[str, Any] = {"source": {"huggingFace": {"repo": "test-org/minilm-reranker"}}}
    raw.update(overrides)
    return RerankModelSpec.model_validate(raw)
