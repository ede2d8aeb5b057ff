"""`rerank-repo export` tells the user where it is: bars on a terminal, one line per stage in a Job log."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path

import pytest

from tests.rerank_runtime.exporter.conftest import RERANK_REPO, RunCli, cli_env
from tests.support.fake_hub import FakeHub
from tests.support.model_fixtures import HUB_XLMR

pytestmark = pytest.mark.slow

STAGES = [
    "resolve the source",
    "download the model",
    "convert to OpenVINO IR",
    "apply the weight format",
    "convert the tokenizers",
    "verify the artifact",
    "publish the version",
]


def test_log_output_has_one_line_per_stage(run_cli: RunCli, tmp_path: Path) -> None:
    """Without a terminal (an export Job's log): one plain line per stage, the download's size included."""
    args = ["export", "--source", HUB_XLMR, "--repository", str(tmp_path / "repo"), "--weight-format", "fp32"]
    result = run_cli(*args, timeout=900)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("rerank-repo: [")]
    assert len(lines) == len(STAGES), result.stderr
    for number, (line, title) in enumerate(zip(lines, STAGES, strict=True), start=1):
        assert line.startswith(f"rerank-repo: [{number}/{len(STAGES)}] {title}"), line
    assert re.search(r"download the model: \d+ files, [\d.]+ MiB", lines[1]), lines[1]
    assert "\r" not in result.stderr, "no bar redraws in a log"
    assert result.summary()["version"] == 1

    again = run_cli(*args, timeout=900)
    assert again.summary()["reused"] is True
    # An identical version exists: resolving is the only stage that runs.
    reused = [line for line in again.stderr.splitlines() if line.startswith("rerank-repo: [")]
    assert len(reused) == 1 and reused[0].startswith(f"rerank-repo: [1/7] resolve the source: {HUB_XLMR}")


def _run_on_terminal(args: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run with stdout and stderr on a pseudo-terminal (as in an interactive shell); returns its output."""
    master, slave = pty.openpty()
    process = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the terminal closed: the process is gone
                    break
                if not chunk:
                    break
                output += chunk
        else:
            raise AssertionError(f"timed out; output so far: {output.decode(errors='replace')}")
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
    return process.wait(timeout=30), output.decode(errors="replace")


def test_terminal_output_shows_progress_bars(fake_hub: FakeHub, tmp_path: Path) -> None:
    """On a terminal: a stage bar that ends at 7/7 and a byte-counting download bar (tqdm)."""
    log = tmp_path / "termination-log"
    log.touch()
    env = cli_env(fake_hub, log)
    args = [RERANK_REPO, "export", "--source", HUB_XLMR, "--repository", str(tmp_path / "repo")]
    code, output = _run_on_terminal(args, env, timeout=900)
    assert code == 0, output
    frames = [frame.strip() for frame in re.split(r"[\r\n]", output) if frame.strip()]
    download = [f for f in frames if f.startswith("download (5 files)")]
    assert download and re.search(r"100%\|.*\| [\d.]+M/[\d.]+M \[", download[-1]), frames
    stage_frames = [f for f in frames if "stages [" in f]
    assert any("[3/7] convert to OpenVINO IR" in f for f in stage_frames), frames
    assert re.search(r"export done .* 7/7 stages", stage_frames[-1]), stage_frames[-1]
    assert "rerank-repo: [" not in output, "no log lines on a terminal"
    assert output.rstrip().splitlines()[-1].startswith("{"), "the JSON summary stays the last line"
