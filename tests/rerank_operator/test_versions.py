"""Spec fingerprint -> version mapping, export results, retention mirror."""

from __future__ import annotations

from rerank_operator.versions import (
    ExportResult,
    desired_version,
    export_fingerprint,
    failure_line,
    parse_export_result,
    record_version,
    retained,
    version_for,
)
from tests.rerank_operator.conftest import make_spec


def test_fingerprint_changes_only_with_export_relevant_fields() -> None:
    base = export_fingerprint(make_spec())
    assert base == export_fingerprint(make_spec(runtime={"replicas": 5}, export={"image": "other:1"}))
    assert base == export_fingerprint(make_spec(export={"weightFormat": "int8"}))
    changed = {
        export_fingerprint(make_spec(export={"weightFormat": "fp32"})),
        export_fingerprint(make_spec(export={"maxLength": 256})),
        export_fingerprint(
            make_spec(source={"huggingFace": {"repo": "test-org/minilm-reranker", "revision": "x"}})
        ),
        export_fingerprint(make_spec(servedName="other")),
        export_fingerprint(make_spec(source={"huggingFace": {"repo": "test-org/other"}})),
    }
    assert base not in changed and len(changed) == 5


def test_export_result_is_the_last_json_line() -> None:
    message = 'exported version 2\n{"name": "m", "version": 2, "reused": false, "export_hash": "ab"}\n'
    assert parse_export_result(message) == ExportResult(version=2, reused=False, export_hash="ab")
    assert parse_export_result("error: repository not found") is None
    assert parse_export_result(None) is None


def test_failure_line_prefers_the_error_line() -> None:
    assert (
        failure_line("Traceback...\nerror: revision 'nope' not found\n") == "error: revision 'nope' not found"
    )
    assert failure_line("killed") == "killed"
    assert "without a termination message" in failure_line("")


def test_reverted_spec_maps_back_to_its_version() -> None:
    int8, fp32 = make_spec(), make_spec(export={"weightFormat": "fp32"})
    versions = record_version(
        [],
        spec=int8,
        fingerprint=export_fingerprint(int8),
        result=ExportResult(1, False, "h1"),
        job_name="j1",
        now="t",
    )
    versions = record_version(
        versions,
        spec=fp32,
        fingerprint=export_fingerprint(fp32),
        result=ExportResult(2, False, "h2"),
        job_name="j2",
        now="t",
    )
    assert desired_version(int8, versions, export_fingerprint(int8)) == 1
    assert desired_version(fp32, versions, export_fingerprint(fp32)) == 2
    pinned = make_spec(versionPolicy={"pin": 2})
    assert desired_version(pinned, versions, export_fingerprint(pinned)) == 2
    assert versions[1]["weightFormat"] == "fp32" and versions[1]["exportHash"] == "h2"


def test_reused_version_gains_the_fingerprint() -> None:
    spec = make_spec()
    versions = record_version(
        [], spec=spec, fingerprint="aaa", result=ExportResult(1, False, "h"), job_name="j1", now="t"
    )
    versions = record_version(
        versions, spec=spec, fingerprint="bbb", result=ExportResult(1, True, "h"), job_name="j2", now="t"
    )
    assert len(versions) == 1
    assert version_for(versions, "aaa") == version_for(versions, "bbb") == 1


def test_retention_keeps_newest_and_protected() -> None:
    versions = [{"version": n, "fingerprints": [str(n)]} for n in range(1, 6)]
    assert [r["version"] for r in retained(versions, 2, set())] == [4, 5]
    assert [r["version"] for r in retained(versions, 2, {1})] == [1, 4, 5]
