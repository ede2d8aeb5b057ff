"""Progress of an export: tqdm bars on a terminal, one plain log line per stage otherwise (Job logs).

An export runs through named stages (resolve, download, convert, compress, tokenizers, verify, publish);
downloads also report bytes. ``run_export`` reports to an ``ExportProgress``; the default ``NullProgress``
reports nothing, so library callers and tests stay quiet.
"""

from __future__ import annotations

import time
from typing import Any, TextIO

from rerank_runtime.terminal import progress_bar

STAGE_TITLES = {
    "resolve": "resolve the source",
    "download": "download the model",
    "convert": "convert to OpenVINO IR",
    "compress": "apply the weight format",
    "tokenizers": "convert the tokenizers",
    "verify": "verify the artifact",
    "publish": "publish the version",
}


def _size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


class NullProgress:
    """Reports nothing (library use, tests)."""

    def plan(self, stages: list[str]) -> None:
        """The stages this export will go through, in order."""

    def stage(self, name: str, detail: str = "") -> None:
        """Stage ``name`` (a key of STAGE_TITLES) starts; the previous one is done."""

    def download_started(self, total_bytes: int | None, files: int) -> None:
        """A download of ``files`` files, ``total_bytes`` in all when known, begins."""

    def download_advanced(self, done_bytes: int) -> None:
        """``done_bytes`` of the download are on disk."""

    def download_finished(self) -> None:
        """The download is complete."""

    def close(self, outcome: str = "done") -> None:
        """The export ended (``outcome``: done, reused or failed)."""


class ExportProgress(NullProgress):
    """Writes to ``stream``: live tqdm bars when ``interactive`` (a terminal), else one line per stage."""

    def __init__(self, stream: TextIO, interactive: bool) -> None:
        self._stream = stream
        self._interactive = interactive
        self._stages: list[str] = []
        self._index = 0
        self._started = time.monotonic()
        self._stage_bar: Any = None
        self._download_bar: Any = None

    def plan(self, stages: list[str]) -> None:
        self._stages = list(stages)
        if self._interactive and self._stage_bar is None:
            self._stage_bar = progress_bar(
                self._stream,
                total=len(self._stages),
                unit="stage",
                bar_format="{desc:<32} {bar} {n_fmt}/{total_fmt} stages [{elapsed}]",
                desc="export",
            )

    def stage(self, name: str, detail: str = "") -> None:
        if name not in self._stages:
            self._stages.append(name)
        done = self._stages.index(name)
        self._index = done + 1
        title = STAGE_TITLES.get(name, name)
        if self._stage_bar is not None:
            self._stage_bar.total = len(self._stages)
            self._stage_bar.n = done
            self._stage_bar.set_description_str(f"[{self._index}/{len(self._stages)}] {title}")
            self._stage_bar.refresh()
            return
        if name == "download" and not detail:
            return  # its line comes with the file count and size (download_started)
        self._stage_line(title, detail)

    def _stage_line(self, title: str, detail: str) -> None:
        elapsed = time.monotonic() - self._started
        suffix = f": {detail}" if detail else ""
        self._line(f"[{self._index}/{len(self._stages)}] {title}{suffix} (at {elapsed:.1f} s)")

    def download_started(self, total_bytes: int | None, files: int) -> None:
        if self._interactive:
            self._download_bar = progress_bar(
                self._stream,
                total=total_bytes,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"download ({files} files)",
                position=1 if self._stage_bar is not None else None,
                leave=True,
            )
        else:
            total = _size(total_bytes) if total_bytes is not None else "size unknown"
            self._stage_line(STAGE_TITLES["download"], f"{files} files, {total}")

    def download_advanced(self, done_bytes: int) -> None:
        if self._download_bar is not None:
            total = self._download_bar.total
            self._download_bar.n = min(done_bytes, int(total)) if total else done_bytes
            self._download_bar.refresh()

    def download_finished(self) -> None:
        if self._download_bar is not None:
            if self._download_bar.total:
                self._download_bar.n = int(self._download_bar.total)
            self._download_bar.close()
            self._download_bar = None

    def close(self, outcome: str = "done") -> None:
        if self._download_bar is not None:
            self._download_bar.close()
            self._download_bar = None
        if self._stage_bar is not None:
            if outcome != "failed":
                self._stage_bar.n = self._stage_bar.total
                self._stage_bar.set_description_str(f"export {outcome}")
            self._stage_bar.close()
            self._stage_bar = None

    def _line(self, text: str) -> None:
        self._stream.write(f"rerank-repo: {text}\n")
        self._stream.flush()
