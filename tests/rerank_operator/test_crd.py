"""The CRD file is the single source: described fields, agreed names, defaults equal to the operator's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from rerank_operator.settings import GROUP, KIND, PLURAL, VERSION
from rerank_operator.spec import RerankModelSpec

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / "rerankmodel.yaml"
CHART_CRD_PATH = REPO / "charts" / "rerank-operator" / "files" / "rerankmodel.yaml"


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return loaded


def _schema(crd: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _walk(schema: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    found = [(path, schema)]
    for name, child in (schema.get("properties") or {}).items():
        found += _walk(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        found += _walk(schema["items"], f"{path}[]")
    if (
        isinstance(schema.get("additionalProperties"), dict)
        and "properties" in schema["additionalProperties"]
    ):
        found += _walk(schema["additionalProperties"], f"{path}{{}}")
    return found


def test_chart_copy_is_byte_identical() -> None:
    assert CHART_CRD_PATH.read_bytes() == CRD_PATH.read_bytes(), "run: cp crds/rerankmodel.yaml " + str(
        CHART_CRD_PATH.relative_to(REPO)
    )


def test_names_match_the_operator(crd: dict[str, Any]) -> None:
    assert crd["spec"]["group"] == GROUP
    assert crd["spec"]["names"]["kind"] == KIND
    assert crd["spec"]["names"]["plural"] == PLURAL
    assert crd["spec"]["names"]["shortNames"] == ["rrm"]
    assert crd["spec"]["scope"] == "Namespaced"
    assert [v["name"] for v in crd["spec"]["versions"]] == [VERSION]


def test_every_field_is_described(crd: dict[str, Any]) -> None:
    undocumented = [
        path
        for path, node in _walk(_schema(crd), "")
        if path not in ("", ".metadata") and not node.get("description")
    ]
    assert undocumented == []


def test_subresources_and_printer_columns(crd: dict[str, Any]) -> None:
    version = crd["spec"]["versions"][0]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.runtime.replicas"
    assert version["subresources"]["scale"]["statusReplicasPath"] == ".status.replicas"
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Phase": ".status.phase",
        "Serving": ".status.servingVersion",
        "Latest": ".status.latestVersion",
        "Ready": ".status.readyReplicas",
        "Age": ".metadata.creationTimestamp",
    }


def test_every_validation_rule_has_a_message(crd: dict[str, Any]) -> None:
    rules = [
        (path, rule)
        for path, node in _walk(_schema(crd), "")
        for rule in node.get("x-kubernetes-validations") or []
    ]
    assert len(rules) >= 15
    assert [path for path, rule in rules if len(rule.get("message", "")) < 20] == []


def _crd_defaults(schema: dict[str, Any]) -> dict[str, Any]:
    """The object the API server's defaulting makes of `{}` for an object schema."""
    result: dict[str, Any] = {}
    for name, child in (schema.get("properties") or {}).items():
        if "default" in child:
            value = child["default"]
            if child.get("type") == "object":
                value = {**_crd_defaults(child), **value}
            result[name] = value
    return result


def test_operator_defaults_equal_crd_defaults(crd: dict[str, Any]) -> None:
    """A spec parsed without API-server defaulting (unit tests, old objects) behaves like a defaulted one."""
    spec_schema = _schema(crd)["properties"]["spec"]
    defaulted = {"source": {"huggingFace": {"repo": "o/m"}}, **_crd_defaults(spec_schema)}
    assert defaulted["export"]["weightFormat"] == "int8"
    assert defaulted["runtime"]["replicas"] == 1
    assert defaulted["storage"] == {"size": "10Gi", "accessMode": "ReadWriteOnce"}
    assert defaulted["service"] == {"type": "ClusterIP", "port": 8000}
    assert defaulted["versionPolicy"] == {"keep": 3}
    from_crd = RerankModelSpec.model_validate(defaulted)
    from_operator = RerankModelSpec.model_validate({"source": {"huggingFace": {"repo": "o/m"}}})
    assert from_crd == from_operator
