"""Which repository version a spec means.

The operator cannot compute the exporter's export hash (it needs the resolved hub revision), so it keys
versions by a fingerprint of the export-relevant spec fields and records `fingerprint -> version` in
status.versions[]. A spec whose fingerprint is already recorded reuses that version without an export, which
makes reverting a Git commit an instant rollback.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from rerank_operator.spec import RerankModelSpec

FINGERPRINT_LENGTH = 16


def export_fingerprint(spec: RerankModelSpec) -> str:
    """Digest of every spec field that changes the exported artifact (not images or serving settings)."""
    hub = spec.source.hugging_face
    relevant = {
        "source": hub.repo if hub is not None else None,
        "localPath": spec.source.local_path,
        "revision": hub.revision if hub is not None else None,
        "servedName": spec.model_name,
        "weightFormat": spec.export.weight_format,
        "maxLength": spec.export.max_length,
    }
    canonical = json.dumps(relevant, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:FINGERPRINT_LENGTH]


@dataclass(frozen=True)
class ExportResult:
    """What a successful export Job reports (last stdout line / termination message)."""

    version: int
    reused: bool
    export_hash: str
    size_bytes: int | None = None


def parse_export_result(message: str | None) -> ExportResult | None:
    """The JSON result of `rerank-repo export` found in a termination message, or None if there is none."""
    if not message:
        return None
    for line in reversed(message.strip().splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and isinstance(data.get("version"), int):
            return ExportResult(
                version=data["version"],
                reused=bool(data.get("reused")),
                export_hash=str(data.get("export_hash", "")),
                size_bytes=data["size_bytes"] if isinstance(data.get("size_bytes"), int) else None,
            )
    return None


def failure_line(message: str | None) -> str:
    """The most useful line of a failed Job's termination message (the exporter's `error: ...` line)."""
    if not message or not message.strip():
        return "the Job failed without a termination message"
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error:"):
            return line
    return lines[-1]


def version_for(versions: list[dict[str, Any]], fingerprint: str) -> int | None:
    """The recorded version made from `fingerprint`, if any."""
    for record in versions:
        if fingerprint in record.get("fingerprints", []):
            return int(record["version"])
    return None


def record_version(
    versions: list[dict[str, Any]],
    *,
    spec: RerankModelSpec,
    fingerprint: str,
    result: ExportResult,
    job_name: str,
    now: str,
) -> list[dict[str, Any]]:
    """versions[] with the export result added (a reused version gains the fingerprint), sorted by number."""
    updated = [dict(record) for record in versions]
    for record in updated:
        if record["version"] == result.version:
            if fingerprint not in record.get("fingerprints", []):
                record["fingerprints"] = [*record.get("fingerprints", []), fingerprint]
            return sorted(updated, key=lambda r: int(r["version"]))
    hub = spec.source.hugging_face
    entry: dict[str, Any] = {
        "version": result.version,
        "exportHash": result.export_hash,
        "fingerprints": [fingerprint],
        "source": hub.repo if hub is not None else spec.source.local_path,
        "weightFormat": spec.export.weight_format,
        "jobName": job_name,
        "reused": result.reused,
        "exportedAt": now,
    }
    if result.size_bytes is not None:
        entry["sizeBytes"] = result.size_bytes
    if hub is not None and hub.revision:
        entry["revision"] = hub.revision
    if spec.export.max_length is not None:
        entry["maxLength"] = spec.export.max_length
    updated.append(entry)
    return sorted(updated, key=lambda r: int(r["version"]))


def retained(versions: list[dict[str, Any]], keep: int, protected: set[int]) -> list[dict[str, Any]]:
    """Mirror of the repository's retention: the newest `keep` versions plus protected ones (current, pin)."""
    newest = {int(r["version"]) for r in sorted(versions, key=lambda r: -int(r["version"]))[:keep]}
    return [r for r in versions if int(r["version"]) in newest | protected]


def largest_size(versions: list[dict[str, Any]]) -> int | None:
    """Size in bytes of the largest recorded version (what a hot swap may load beside another)."""
    sizes = [int(r["sizeBytes"]) for r in versions if isinstance(r.get("sizeBytes"), int)]
    return max(sizes) if sizes else None


def desired_version(spec: RerankModelSpec, versions: list[dict[str, Any]], fingerprint: str) -> int | None:
    """The version the spec asks for: the pin, else the version made from the current export settings."""
    if spec.version_policy.pin is not None:
        return spec.version_policy.pin
    return version_for(versions, fingerprint)
