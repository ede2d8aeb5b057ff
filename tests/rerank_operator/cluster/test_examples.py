"""The RerankModels in examples/ pass admission on the real API server, defaults filled in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.kubelet import KubeRest

pytestmark = pytest.mark.cluster

EXAMPLES = sorted((Path(__file__).resolve().parents[3] / "examples").glob("rerankmodel*.yaml"))


def test_examples_exist() -> None:
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_passes_admission(
    kube_rest: KubeRest, rerankmodel_crd: str, namespace: str, path: Path
) -> None:
    manifest: dict[str, Any] = yaml.safe_load(path.read_text())
    stored = kube_rest.request(
        "POST",
        f"/apis/serving.rerank.dev/v1alpha1/namespaces/{namespace}/rerankmodels",
        manifest,
        params={"dryRun": "All"},
    )
    spec = stored["spec"]
    # What the user wrote survives, and the schema's defaults are filled in.
    assert spec["source"] == manifest["spec"]["source"]
    assert spec["storage"]["accessMode"] == "ReadWriteOnce"
    assert spec["service"]["port"] == 8000
    assert spec["export"]["weightFormat"] == manifest["spec"]["export"]["weightFormat"]
