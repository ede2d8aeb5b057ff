"""PodDisruptionBudget and NetworkPolicy builders."""

from __future__ import annotations

from rerank_operator import builders
from rerank_operator.settings import OperatorSettings
from rerank_operator.spec import ModelIdentity
from tests.rerank_operator.conftest import make_spec

RWX = {"accessMode": "ReadWriteMany"}


def test_budget_only_with_more_than_one_replica(model: ModelIdentity) -> None:
    assert builders.build_pdb(model, make_spec()) is None
    assert builders.build_pdb(model, make_spec(runtime={"replicas": 0})) is None
    pdb = builders.build_pdb(model, make_spec(runtime={"replicas": 3}, storage=RWX))
    assert pdb is not None
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == {
        "serving.rerank.dev/model": "minilm",
        "app.kubernetes.io/component": "runtime",
    }
    assert pdb["metadata"]["ownerReferences"][0]["uid"] == model.uid
    scaled = builders.build_pdb(
        model, make_spec(autoscaling={"minReplicas": 1, "maxReplicas": 4}, storage=RWX)
    )
    assert scaled is not None and scaled["spec"]["maxUnavailable"] == 1


def test_network_policy_is_off_by_default(model: ModelIdentity, settings: OperatorSettings) -> None:
    assert builders.build_network_policy(model, make_spec(), settings) is None


def test_network_policy_admits_the_operator_and_the_clients_only(model: ModelIdentity) -> None:
    settings = OperatorSettings(
        _env_file=None,  # type: ignore[call-arg]
        network_policy=True,
        operator_namespace="rerank-system",
        operator_pod_labels="app.kubernetes.io/name=rerank-operator,app.kubernetes.io/instance=ops",
    )
    policy = builders.build_network_policy(model, make_spec(), settings)
    assert policy is not None
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "runtime"
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]
    operator, clients = rule["from"]
    assert operator == {
        "podSelector": {
            "matchLabels": {"app.kubernetes.io/name": "rerank-operator", "app.kubernetes.io/instance": "ops"}
        },
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "rerank-system"}},
    }
    assert clients == {"podSelector": {}}  # default: the model's own namespace

    peers = [{"namespaceSelector": {"matchLabels": {"team": "search"}}}]
    chosen = make_spec(networkPolicy={"from": peers})
    policy = builders.build_network_policy(model, chosen, settings)
    assert policy is not None and policy["spec"]["ingress"][0]["from"][1:] == peers
    assert builders.build_network_policy(model, make_spec(networkPolicy={"enabled": False}), settings) is None
