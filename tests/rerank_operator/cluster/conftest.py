"""Fixtures of the operator's cluster tier: the CRD installed once per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

CRD_PATH = Path(__file__).resolve().parents[3] / "crds" / "rerankmodel.yaml"


@pytest.fixture(scope="session")
def rerankmodel_crd(install_crds: Callable[..., list[str]]) -> str:
    """The RerankModel CRD from crds/, applied and Established."""
    return install_crds(CRD_PATH)[0]
