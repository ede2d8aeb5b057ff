"""One export: resolve the source, reuse an identical version, or convert into staging and publish."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from rerank_runtime.exporter import conversion, source
from rerank_runtime.exporter.errors import ExportError
from rerank_runtime.exporter.progress import NullProgress
from rerank_runtime.repository import (
    Manifest,
    ModelRepository,
    ModelVersion,
    RepositoryError,
    TokenizerInfo,
    WeightFormat,
    validate_served_name,
)

log = logging.getLogger(__name__)

# Bump when the exporter's output changes for the same inputs (it is part of every export hash).
EXPORT_FORMAT = 1
_VERSIONED_PACKAGES = (
    "rerank-operator",
    "openvino",
    "openvino-tokenizers",
    "optimum-intel",
    "nncf",
    "transformers",
    "torch",
)


def exporter_version() -> str:
    """Identifies everything that shapes the artifact: format revision and converter library versions."""
    parts = [f"format {EXPORT_FORMAT}"]
    for package in _VERSIONED_PACKAGES:
        try:
            parts.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{package} none")
    return "; ".join(parts)


@dataclass(frozen=True)
class ExportSpec:
    """What to export and where (the CLI's ``export`` arguments)."""

    source: str
    repository: Path
    name: str
    revision: str | None = None
    weight_format: WeightFormat = "int8"
    max_length: int | None = None
    promote: bool = False
    keep: int | None = None
    protect: tuple[int, ...] = ()
    token: str | None = None
    timeout: float = 60.0


@dataclass(frozen=True)
class ExportResult:
    """The version an export produced or reused."""

    version: ModelVersion
    reused: bool
    pruned: list[int]
    seconds: float

    def summary(self) -> dict[str, object]:
        """The JSON object printed as the last stdout line and written to the termination log."""
        return {
            "name": self.version.name,
            "version": self.version.number,
            "reused": self.reused,
            "export_hash": self.version.manifest.export_hash,
            "size_bytes": self.version.size_bytes(),
        }


def export_hash(resolved: source.ResolvedSource, spec: ExportSpec, version: str) -> str:
    """sha256 over everything that changes the artifact (not the served name or the time)."""
    payload = {
        "source": resolved.source if resolved.local_dir is None else "local",
        "content": resolved.content_key,
        "weight_format": spec.weight_format,
        "max_length": spec.max_length,
        "exporter_version": version,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _resolve(spec: ExportSpec) -> source.ResolvedSource:
    path = Path(spec.source)
    if path.is_dir():
        return source.resolve_local(path)
    if conversion.looks_like_repo_id(spec.source) and not spec.source.startswith((".", "/")):
        return source.resolve_hub(spec.source, spec.revision, spec.token, spec.timeout)
    raise ExportError(
        f"source {spec.source!r} is neither a local model folder nor a Hugging Face repo id (owner/name)"
    )


def _finish(repo: ModelRepository, spec: ExportSpec, version: ModelVersion) -> list[int]:
    if spec.promote:
        repo.promote(spec.name, version.number)
    if spec.keep is not None:
        return repo.prune(spec.name, spec.keep, spec.protect)
    return []


def _convert_into(
    staging: Path, model_dir: Path, spec: ExportSpec, progress: NullProgress
) -> tuple[conversion.ModelInspection, TokenizerInfo]:
    inspection = conversion.inspect_model(model_dir, spec.max_length)
    _check_free_space(staging, model_dir, spec)
    hf_tokenizer = conversion.load_hf_tokenizer(model_dir)
    # Detect the row template before the slow conversion so an odd tokenizer fails fast.
    conversion.tokenizer_info(hf_tokenizer, uses_token_type_ids=False)
    log.info("converting %s (%s) to %s", spec.source, inspection.model_type, spec.weight_format)
    progress.stage("convert", inspection.model_type)
    model = conversion.load_ov_model(model_dir)
    inputs = [name for port in model.inputs for name in port.get_names()]
    progress.stage("compress", spec.weight_format)
    conversion.save_model(conversion.compress_weights(model, spec.weight_format), staging, spec.weight_format)
    del model
    progress.stage("tokenizers", f"max length {inspection.max_length}")
    conversion.convert_tokenizers(hf_tokenizer, staging, inspection.max_length)
    shutil.copyfile(model_dir / conversion.CONFIG_JSON, staging / conversion.CONFIG_JSON)
    info = conversion.tokenizer_info(hf_tokenizer, uses_token_type_ids="token_type_ids" in inputs)
    progress.stage("verify")
    conversion.smoke_test(staging, info.uses_token_type_ids, inspection.num_labels)
    return inspection, info


# Artifact size relative to the source's fp32 weights, per weight format (with some headroom).
_SIZE_RATIO = {"fp32": 1.05, "fp16": 0.55, "int8": 0.3, "int4": 0.25}
_TOKENIZER_HEADROOM = 32 << 20


def estimated_artifact_bytes(model_dir: Path, weight_format: WeightFormat) -> int:
    """Roughly how much disk a version of this model takes in ``weight_format``."""
    weights = sum(
        p.stat().st_size
        for p in model_dir.iterdir()
        if p.is_file() and (p.suffix == ".safetensors" or p.name.startswith("pytorch_model"))
    )
    return int(weights * _SIZE_RATIO[weight_format]) + _TOKENIZER_HEADROOM


def _check_free_space(staging: Path, model_dir: Path, spec: ExportSpec) -> None:
    """Fail before a long conversion that cannot be written (OpenVINO's own write errors are opaque)."""
    needed = estimated_artifact_bytes(model_dir, spec.weight_format)
    free = shutil.disk_usage(staging).free
    if free < needed:
        raise ExportError(
            f"no space left on device: exporting into {spec.repository} needs about {needed >> 20} MiB, "
            f"{free >> 20} MiB free; free space or enlarge the volume"
        )


def _is_disk_full(exc: BaseException, repository: Path | None) -> bool:
    """ENOSPC anywhere in the exception chain, or (given ``repository``) the volume is (nearly) full."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    if repository is None:
        return False
    try:
        return shutil.disk_usage(repository).free < 1 << 20
    except OSError:
        return False


def _build_in_staging(
    staging: Path,
    resolved: source.ResolvedSource,
    spec: ExportSpec,
    digest: str,
    version_string: str,
    progress: NullProgress,
) -> Manifest:
    """Download (hub sources) and convert into ``staging``; returns the manifest to publish with."""
    download_dir = staging / ".download"
    if resolved.local_dir is not None:
        model_dir = resolved.local_dir
    else:
        progress.stage("download")
        configs = source.download_hub(resolved, spec.token, spec.timeout, download_dir, config_only=True)
        conversion.inspect_model(configs, spec.max_length)  # refuse unsuitable models before the weights
        model_dir = source.download_hub(resolved, spec.token, spec.timeout, download_dir, progress=progress)
    inspection, tokenizer = _convert_into(staging, model_dir, spec, progress)
    shutil.rmtree(download_dir, ignore_errors=True)  # only the artifacts are published
    return Manifest(
        source=resolved.source,
        revision=resolved.revision,
        weight_format=spec.weight_format,
        max_length=inspection.max_length,
        model_type=inspection.model_type,
        num_labels=inspection.num_labels,
        positive_label=inspection.positive_label,
        tokenizer=tokenizer,
        export_hash=digest,
        exporter_version=version_string,
        created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    )


_CONVERSION_STAGES = ["convert", "compress", "tokenizers", "verify", "publish"]


def run_export(spec: ExportSpec, progress: NullProgress | None = None) -> ExportResult:
    """Export ``spec`` into its repository (idempotent by export hash); raises ExportError.

    ``progress`` hears about each stage and the download's bytes (see exporter/progress.py).
    """
    progress = progress or NullProgress()
    hub = not Path(spec.source).is_dir()
    progress.plan(["resolve", *(["download"] if hub else []), *_CONVERSION_STAGES])
    outcome = "failed"
    try:
        result = _run_export(spec, progress)
        outcome = "reused" if result.reused else "done"
        return result
    finally:
        progress.close(outcome)


def _run_export(spec: ExportSpec, progress: NullProgress) -> ExportResult:
    started = time.monotonic()
    try:
        validate_served_name(spec.name)
        if spec.keep is not None and spec.keep < 1:
            raise ExportError(f"--keep must be at least 1, got {spec.keep}")
        repo = ModelRepository(spec.repository)
        cleaned = repo.clean_stale_staging(spec.name)
        if cleaned:
            log.info("removed %d staging folder(s) left by an interrupted export", cleaned)
        progress.stage("resolve", spec.source)
        resolved = _resolve(spec)
        version_string = exporter_version()
        digest = export_hash(resolved, spec, version_string)
        existing = repo.find_by_export_hash(spec.name, digest)
        if existing is not None:
            pruned = _finish(repo, spec, existing)
            return ExportResult(existing, True, pruned, time.monotonic() - started)

        with repo.staging(spec.name) as staging:
            try:
                manifest = _build_in_staging(staging, resolved, spec, digest, version_string, progress)
                progress.stage("publish", spec.name)
                version = repo.publish(spec.name, staging, manifest)
            except Exception as exc:
                # Judge "disk full" now: leaving the block deletes the staging folder and frees the space.
                if not isinstance(exc, ExportError) and _is_disk_full(exc, staging):
                    raise _disk_full_error(spec) from exc
                raise
        # publish returns an equal-hash version that a racing export published first instead of ours.
        reused = version.manifest.created_at != manifest.created_at
        pruned = _finish(repo, spec, version)
        return ExportResult(version, reused, pruned, time.monotonic() - started)
    except ExportError as exc:
        if _is_disk_full(exc, None):
            raise _disk_full_error(spec) from exc
        raise
    except RepositoryError as exc:
        raise ExportError(str(exc)) from exc
    except Exception as exc:
        if _is_disk_full(exc, spec.repository):
            raise _disk_full_error(spec) from exc
        if isinstance(exc, OSError):
            raise ExportError(f"{exc.strerror or exc}: {exc.filename or spec.repository}") from exc
        raise


def _disk_full_error(spec: ExportSpec) -> ExportError:
    return ExportError(
        f"no space left on device while exporting into {spec.repository}; "
        "free space or enlarge the volume (the partial export was removed)"
    )
