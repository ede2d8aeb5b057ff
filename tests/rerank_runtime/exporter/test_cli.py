"""``rerank-repo`` end to end: hub export at a resolved revision, reuse, promote, list, prune, verify."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rerank_runtime.repository import ModelRepository
from tests.rerank_runtime.exporter.conftest import RunCli
from tests.support.fake_hub import FakeHub
from tests.support.model_fixtures import HUB_XLMR

pytestmark = pytest.mark.slow

EXPECTED_FILES = {
    "model.xml",
    "model.bin",
    "tokenizer.xml",
    "tokenizer.bin",
    "text_tokenizer.xml",
    "text_tokenizer.bin",
    "config.json",
}


def test_hub_export_versions_promote_list_prune_verify(
    run_cli: RunCli, fake_hub: FakeHub, xlmr_hf_dir: Path, tmp_path: Path
) -> None:
    repo_id = "test-org/xlmr-lifecycle"
    main_sha = fake_hub.add_revision(repo_id, xlmr_hf_dir, ref="main")
    v2_sha = fake_hub.add_revision(repo_id, xlmr_hf_dir, ref="v2")
    root = tmp_path / "models"
    name = "BAAI/bge-reranker-test"

    # Default weight format (int8), revision main resolved to its commit sha.
    first = run_cli("export", "--source", repo_id, "--repository", str(root), "--name", name)
    assert first.returncode == 0, first.stderr
    assert first.summary() == {
        "name": name,
        "version": 1,
        "reused": False,
        "export_hash": first.summary()["export_hash"],
        "size_bytes": first.summary()["size_bytes"],
    }
    assert json.loads(first.termination_log) == first.summary()
    assert "exported" in first.stdout.splitlines()[0]
    repo = ModelRepository(root)
    (version,) = repo.versions(name)
    assert first.summary()["size_bytes"] == version.size_bytes() > 0
    manifest = version.manifest
    assert manifest.revision == main_sha
    assert manifest.source == repo_id
    assert manifest.weight_format == "int8"
    assert manifest.max_length == 512, "XLM-R's 514 positions leave 512 usable tokens"
    assert manifest.model_type == "xlm-roberta"
    assert (manifest.num_labels, manifest.positive_label) == (1, 0)
    assert manifest.tokenizer.kind == "roberta"
    assert not manifest.tokenizer.uses_token_type_ids
    assert set(manifest.files) == EXPECTED_FILES
    assert sorted(p.name for p in (root / name).iterdir()) == [".lock", "1"], "no staging or download left"
    repo.verify(name, 1)

    # Same spec again (also by explicit sha): nothing new, the same version is reported and promoted.
    again = run_cli(
        "export",
        "--source",
        repo_id,
        "--repository",
        str(root),
        "--name",
        name,
        "--revision",
        main_sha,
        "--promote",
    )
    assert again.returncode == 0, again.stderr
    assert again.summary() == {**first.summary(), "reused": True}
    assert repo.current_pointer(name) == 1
    assert [v.number for v in repo.versions(name)] == [1]

    # Another revision is another artifact.
    second = run_cli(
        "export", "--source", repo_id, "--repository", str(root), "--name", name,
        "--revision", "v2", "--weight-format", "fp32",
    )  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert second.summary()["version"] == 2
    assert repo.get(name, 2).manifest.revision == v2_sha
    assert repo.resolve(name).number == 1, "current still pins version 1"  # type: ignore[union-attr]

    listing = run_cli("list", "--repository", str(root), "--json")
    rows = json.loads(listing.stdout)
    assert [(r["version"], r["current"], r["weight_format"], r["revision"]) for r in rows] == [
        (1, True, "int8", main_sha),
        (2, False, "fp32", v2_sha),
    ]
    assert rows[1]["size_bytes"] > rows[0]["size_bytes"] * 2, "int8 weights are smaller than fp32"
    table = run_cli("list", "--repository", str(root)).stdout.splitlines()
    assert table[0].split() == [
        "NAME",
        "VERSION",
        "CURRENT",
        "SOURCE",
        "REVISION",
        "FORMAT",
        "MAX_LEN",
        "SIZE",
        "CREATED",
    ]
    assert len(table) == 3 and main_sha[:12] in table[1] and "*" in table[1]

    # Retention never removes the current version.
    pruned = run_cli("prune", "--repository", str(root), "--name", name, "--keep", "1")
    assert pruned.returncode == 0 and pruned.summary() == {"pruned": {name: []}}
    promoted = run_cli("promote", "--repository", str(root), "--name", name, "--version", "2")
    assert promoted.returncode == 0 and repo.current_pointer(name) == 2
    pruned = run_cli("prune", "--repository", str(root), "--name", name, "--keep", "1")
    assert pruned.summary() == {"pruned": {name: [1]}}
    assert [v.number for v in repo.versions(name)] == [2]

    verified = run_cli("verify", "--repository", str(root))
    assert verified.returncode == 0 and verified.summary() == {"verified": [{"name": name, "version": 2}]}
    model_bin = root / name / "2" / "model.bin"
    data = bytearray(model_bin.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_bin.write_bytes(bytes(data))
    broken = run_cli("verify", "--repository", str(root), "--name", name, "--version", "2")
    assert broken.returncode == 1
    assert broken.error_line() == f"error: {name} version 2: model.bin does not match its checksum"
    assert broken.termination_log.strip() == broken.error_line()

    missing = run_cli("promote", "--repository", str(root), "--name", name, "--version", "1")
    assert missing.returncode == 1 and "no complete version 1" in missing.error_line()
    assert repo.current_pointer(name) == 2


def test_token_from_env_or_file_reaches_a_private_repo(
    run_cli: RunCli, fake_hub: FakeHub, tmp_path: Path
) -> None:
    """Token handling on the idempotent path (resolution needs the token; no conversion runs)."""
    root = tmp_path / "models"
    public = run_cli("export", "--source", HUB_XLMR, "--repository", str(root), "--weight-format", "fp32")
    assert public.returncode == 0, public.stderr
    token_file = tmp_path / "token"
    token_file.write_text("hf_secret\n")
    with fake_hub.token_required("hf_secret"):
        from_env = run_cli(
            "export", "--source", HUB_XLMR, "--repository", str(root), "--weight-format", "fp32",
            env={"HF_TOKEN": "hf_secret"},
        )  # fmt: skip
        from_file = run_cli(
            "export", "--source", HUB_XLMR, "--repository", str(root), "--weight-format", "fp32",
            "--token-file", str(token_file),
        )  # fmt: skip
    for result in (from_env, from_file):
        assert result.returncode == 0, result.stderr
        assert result.summary() == {**public.summary(), "reused": True}


def test_local_folder_export_is_keyed_by_content(run_cli: RunCli, xlmr_hf_dir: Path, tmp_path: Path) -> None:
    """A local source has no revision; changing its files must not reuse the old version."""
    source = tmp_path / "model"
    shutil.copytree(xlmr_hf_dir, source)
    root = tmp_path / "models"
    first = run_cli(
        "export",
        "--source",
        str(source),
        "--repository",
        str(root),
        "--name",
        "local",
        "--weight-format",
        "fp32",
    )
    assert first.returncode == 0, first.stderr
    manifest = ModelRepository(root).get("local", 1).manifest
    assert manifest.revision is None and manifest.source == str(source)
    assert run_cli(
        "export",
        "--source",
        str(source),
        "--repository",
        str(root),
        "--name",
        "local",
        "--weight-format",
        "fp32",
    ).summary()["reused"]
    config = json.loads((source / "config.json").read_text())
    config["classifier_dropout"] = 0.2  # any change to the source's files
    (source / "config.json").write_text(json.dumps(config))
    changed = run_cli(
        "export", "--source", str(source), "--repository", str(root), "--name", "local",
        "--weight-format", "fp32", "--max-length", "128", "--keep", "1",
    )  # fmt: skip
    assert changed.returncode == 0, changed.stderr
    assert changed.summary()["version"] == 2 and not changed.summary()["reused"]
    assert "pruned versions 1" in changed.stdout
    assert ModelRepository(root).get("local", 2).manifest.max_length == 128
