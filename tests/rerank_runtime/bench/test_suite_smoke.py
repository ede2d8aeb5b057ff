"""`make bench`'s quick mode runs end to end and writes its report and plots (no timing is asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SECTIONS = [
    "## Targets (issue 11)",
    "## 1. Small requests",
    "## 2. Throughput",
    "## 3. int8 vs fp32",
    "## 4. Cold start",
    "## 5. Hot-swap memory",
    "## 6. Scaling curves",
    "## 7. Anchors",
    "## 8. Operator scale",
]


@pytest.mark.slow
def test_quick_bench_writes_every_file(tmp_path: Path) -> None:
    """`rerank-bench suite --quick` exits 0 and writes benchmarks.md (all sections), the PNGs and JSON."""
    executable = Path(sys.executable).with_name("rerank-bench")
    completed = subprocess.run(
        [str(executable), "suite", "--quick", "--output-dir", str(tmp_path)],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = (tmp_path / "benchmarks.md").read_text(encoding="utf-8")
    for heading in SECTIONS:
        assert heading in report, f"{heading!r} missing from the report"
    for plot in ("bench-scaling-documents.png", "bench-scaling-length.png"):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({plot})" in report
    assert (tmp_path / "bench-results.json").stat().st_size > 0
