"""Fixtures of the operator's cluster tier: the CRD installed once per session."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

CRD_PATH = Path(__file__).resolve().parents[3] / "crds" / "rerankmodel.yaml"


@pytest.fixture(scope="session")
def rerankmodel_crd(install_crds: Callable[..., list[str]]) -> str:
    """The RerankModel CRD from crds/, applied and Established."""
    for _ in range(50):
        try:
            return install_crds(CRD_PATH)[0]
        except TypeError:
            # A freshly created CRD can briefly report `conditions: null`; applying again is idempotent.
            time.sleep(0.1)
    return install_crds(CRD_PATH)[0]
