"""Running the real ``rerank-repo`` console script against the fake hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_hub import FakeHub

RERANK_REPO = str(Path(sys.executable).with_name("rerank-repo"))


@dataclass
class CliResult:
    """Outcome of one ``rerank-repo`` run."""

    returncode: int
    stdout: str
    stderr: str
    termination_log: str

    def summary(self) -> dict[str, Any]:
        """The JSON object on the last stdout line."""
        result: dict[str, Any] = json.loads(self.stdout.strip().splitlines()[-1])
        return result

    def error_line(self) -> str:
        """The single ``error:`` line on stderr (asserts there is exactly one)."""
        lines = [line for line in self.stderr.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1, self.stderr
        return lines[0]


def cli_env(hub: FakeHub, termination_log: Path, **extra: str) -> dict[str, str]:
    """Environment for a CLI run: hub endpoint, termination log, no inherited token or cache."""
    env = {k: v for k, v in os.environ.items() if k not in {"HF_TOKEN", "HF_HOME", "HF_HUB_CACHE"}}
    env.update(
        HF_ENDPOINT=hub.endpoint, RERANK_TERMINATION_LOG=str(termination_log), HF_HUB_DISABLE_TELEMETRY="1"
    )
    env.update(extra)
    return env


RunCli = Callable[..., CliResult]


@pytest.fixture
def run_cli(fake_hub: FakeHub, tmp_path: Path) -> RunCli:
    """``run_cli(*args, env={...}, timeout=...)`` runs ``rerank-repo`` and captures everything it reports."""
    counter = iter(range(1_000_000))

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> CliResult:
        log = tmp_path / f"termination-log-{next(counter)}"
        log.touch()
        proc = subprocess.run(
            [RERANK_REPO, *args],
            env=cli_env(fake_hub, log, **(env or {})),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr, log.read_text())

    return run
