"""Pure builders of the objects a RerankModel owns: spec in, manifest (a dict) out, no I/O."""

from rerank_operator.builders.jobs import build_export_job, build_promote_job, export_command
from rerank_operator.builders.policy import build_network_policy, build_pdb
from rerank_operator.builders.runtime import build_deployment, build_hpa, build_service, readiness_path
from rerank_operator.builders.storage import build_pvc

__all__ = [
    "build_deployment",
    "build_export_job",
    "build_hpa",
    "build_network_policy",
    "build_pdb",
    "build_promote_job",
    "build_pvc",
    "build_service",
    "export_command",
    "readiness_path",
]
