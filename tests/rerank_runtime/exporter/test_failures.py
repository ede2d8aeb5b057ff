"""Every export failure is one clear line, the termination log, no visible version, and an exit code that says
whether a retry can help: 1 for failures only a change fixes, 75 (EX_TEMPFAIL) for failures of the moment."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rerank_runtime.exporter.testmodels import minilm_encoder_dir
from rerank_runtime.repository import ModelRepository
from tests.rerank_runtime.exporter.conftest import RERANK_REPO, CliResult, RunCli, cli_env
from tests.support.fake_hub import FakeHub
from tests.support.model_fixtures import HUB_EMBEDDING, HUB_XLMR


def assert_failed_cleanly(result: CliResult, root: Path, expected: str, exit_code: int = 1) -> None:
    """Exit ``exit_code``, exactly one ``error:`` line containing ``expected``, mirrored to the termination
    log, nothing published and no staging folder left behind."""
    assert result.returncode == exit_code, result.stdout + result.stderr
    line = result.error_line()
    assert expected in line, line
    assert result.termination_log.strip() == line
    assert result.stdout == ""
    assert ModelRepository(root).served_names() == []
    assert list(root.rglob(".staging-*")) == [], "no staging folder is left behind"


def test_unknown_hub_repo(run_cli: RunCli, tmp_path: Path) -> None:
    root = tmp_path / "models"
    result = run_cli("export", "--source", "test-org/no-such-model", "--repository", str(root))
    assert_failed_cleanly(result, root, "Hugging Face repo 'test-org/no-such-model' not found")


def test_unknown_revision(run_cli: RunCli, tmp_path: Path) -> None:
    root = tmp_path / "models"
    result = run_cli(
        "export", "--source", HUB_XLMR, "--repository", str(root), "--revision", "no-such-branch"
    )
    assert_failed_cleanly(result, root, "revision 'no-such-branch' not found")


def test_bad_token_and_missing_token(run_cli: RunCli, fake_hub: FakeHub, tmp_path: Path) -> None:
    root = tmp_path / "models"
    token_file = tmp_path / "token"
    token_file.write_text("hf_wrong")
    with fake_hub.token_required("hf_right"):
        bad_env = run_cli(
            "export", "--source", HUB_XLMR, "--repository", str(root), env={"HF_TOKEN": "hf_wrong"}
        )
        bad_file = run_cli(
            "export", "--source", HUB_XLMR, "--repository", str(root), "--token-file", str(token_file)
        )
        missing = run_cli("export", "--source", HUB_XLMR, "--repository", str(root))
    for result in (bad_env, bad_file):
        assert_failed_cleanly(result, root, "the Hugging Face token was rejected (401)")
    assert_failed_cleanly(missing, root, "not found (or private without a valid token; HTTP 401)")


def test_not_a_sequence_classification_model(run_cli: RunCli, fake_hub: FakeHub, tmp_path: Path) -> None:
    """all-MiniLM-L6-v2 itself is a BertModel (embeddings), not a cross-encoder: refused before weights."""
    root = tmp_path / "models"
    fake_hub.requests.clear()
    from_hub = run_cli("export", "--source", HUB_EMBEDDING, "--repository", str(root))
    assert_failed_cleanly(from_hub, root, "not a sequence-classification model: architectures ['BertModel']")
    downloaded = {path.rsplit("/", 1)[-1] for method, path in fake_hub.requests if "/resolve/" in path}
    assert "model.safetensors" not in downloaded
    local = run_cli("export", "--source", str(minilm_encoder_dir()), "--repository", str(root), "--name", "x")
    assert_failed_cleanly(local, root, "not a sequence-classification model")


def test_unsupported_architecture(run_cli: RunCli, tmp_path: Path) -> None:
    source = tmp_path / "gpt2-classifier"
    source.mkdir()
    config = {"architectures": ["GPT2ForSequenceClassification"], "model_type": "gpt2", "num_labels": 1}
    (source / "config.json").write_text(json.dumps(config))
    root = tmp_path / "models"
    result = run_cli("export", "--source", str(source), "--repository", str(root), "--name", "gpt2")
    assert_failed_cleanly(result, root, "unsupported architecture 'gpt2'")


def test_bad_arguments(run_cli: RunCli, tmp_path: Path) -> None:
    root = tmp_path / "models"
    cases = [
        (
            ["export", "--source", HUB_XLMR, "--repository", str(root), "--weight-format", "int3"],
            "invalid choice",
        ),
        (["export", "--source", "not a repo id", "--repository", str(root)], "neither a local model folder"),
        (
            ["export", "--source", HUB_XLMR, "--repository", str(root), "--name", "a/../b"],
            "invalid served name",
        ),
        (
            ["export", "--source", HUB_XLMR, "--repository", str(root), "--max-length", "4096"],
            "exceeds the model",
        ),
        (["verify", "--repository", str(root), "--name", "nothing"], "has no versions"),
    ]
    for args, expected in cases:
        assert_failed_cleanly(run_cli(*args), root, expected)


@pytest.fixture
def tiny_volume(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: big enough to start an export, too small for the model."""
    mount_point = tmp_path / "volume"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.mark.slow
def test_disk_full(run_cli: RunCli, xlmr_hf_dir: Path, tiny_volume: Path) -> None:
    """Both ways a volume runs out: refused up front (local source, known size) and a real ENOSPC while
    writing (hub download into the staging folder)."""
    local_root = tiny_volume / "local"
    local = run_cli(
        "export",
        "--source",
        str(xlmr_hf_dir),
        "--repository",
        str(local_root),
        "--name",
        "m",
        "--weight-format",
        "fp32",
    )
    assert_failed_cleanly(local, local_root, "no space left on device")
    hub_root = tiny_volume / "hub"
    from_hub = run_cli("export", "--source", HUB_XLMR, "--repository", str(hub_root), "--name", "m")
    assert_failed_cleanly(from_hub, hub_root, "no space left on device")
    for root in (local_root, hub_root):
        assert [p.name for p in (root / "m").iterdir() if p.name != ".lock"] == [], "partial export removed"


def _start_export(fake_hub: FakeHub, source: Path, root: Path, log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [RERANK_REPO, "export", "--source", str(source), "--repository", str(root), "--name", "m",
         "--weight-format", "fp32"],
        env=cli_env(fake_hub, log),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _wait_for_staging(root: Path, proc: subprocess.Popen[str]) -> Path:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = [p for p in root.glob("m/.staging-*") if any(p.iterdir())] if root.exists() else []
        if found:
            return found[0]
        assert proc.poll() is None, "the export finished before it could be interrupted"
        time.sleep(0.05)
    raise AssertionError("no staging folder appeared")


@pytest.mark.slow
def test_sigterm_interrupted_export_cleans_up(fake_hub: FakeHub, xlmr_hf_dir: Path, tmp_path: Path) -> None:
    """Kubernetes stops a Job with SIGTERM: the export reports it and removes its staging folder."""
    root, log = tmp_path / "models", tmp_path / "termination-log"
    log.touch()
    proc = _start_export(fake_hub, xlmr_hf_dir, root, log)
    staging = _wait_for_staging(root, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    result = CliResult(proc.returncode, stdout, stderr, log.read_text())
    assert_failed_cleanly(result, root, "export interrupted by SIGTERM; nothing was published", 75)
    assert not staging.exists()


@pytest.mark.slow
def test_killed_export_is_invisible_and_cleaned_by_the_next_run(
    fake_hub: FakeHub, run_cli: RunCli, xlmr_hf_dir: Path, tmp_path: Path
) -> None:
    """SIGKILL (OOM, node loss) runs no cleanup: the half export stays invisible until a retry removes it."""
    root, log = tmp_path / "models", tmp_path / "termination-log"
    log.touch()
    proc = _start_export(fake_hub, xlmr_hf_dir, root, log)
    staging = _wait_for_staging(root, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert staging.is_dir()
    assert ModelRepository(root).served_names() == []
    assert ModelRepository(root).resolve("m") is None

    retry = run_cli(
        "export",
        "--source",
        str(xlmr_hf_dir),
        "--repository",
        str(root),
        "--name",
        "m",
        "--weight-format",
        "fp32",
    )
    assert retry.returncode == 0, retry.stderr
    assert retry.summary()["version"] == 1
    assert not staging.exists()
    assert sorted(p.name for p in (root / "m").iterdir()) == [".lock", "1"]
    ModelRepository(root).verify("m", 1)
    shutil.rmtree(root)


def test_stalled_download_times_out(run_cli: RunCli, fake_hub: FakeHub, tmp_path: Path) -> None:
    root = tmp_path / "models"
    started = time.monotonic()
    with fake_hub.stalled_downloads():
        result = run_cli(
            "export", "--source", HUB_XLMR, "--repository", str(root), "--timeout", "2", timeout=120
        )
    assert_failed_cleanly(result, root, "stalled for repo 'test-org/xlmr-reranker': no data for 2 s", 75)
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("status", [503, 429])
def test_unavailable_hub_is_transient(
    run_cli: RunCli, fake_hub: FakeHub, tmp_path: Path, status: int
) -> None:
    """An overloaded hub or proxy (5xx, 429) exits 75: the operator retries it later, unlike a 404."""
    root = tmp_path / "models"
    with fake_hub.unavailable(status):
        result = run_cli("export", "--source", HUB_XLMR, "--repository", str(root), "--timeout", "5")
    assert_failed_cleanly(result, root, f"the Hugging Face Hub answered HTTP {status}", 75)
